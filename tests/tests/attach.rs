//! Attaching mpathd's programs the way a production host needs it: the probe matcher at tc
//! ingress by default, which attaches at any MTU (jumbo frames) and leaves the receive path
//! alone; XDP only when asked for; a NIC the programs cannot attach to kept out of use, its
//! addresses elsewhere, until they attach; programs detached behind mpathd's back attached
//! again.

use aya::programs::XdpMode;
use mpath_ctl::core::state::InterfaceStatus;
use mpath_ctl::datapath::{Datapath, pins::PinLayout};
use mpath_lab::{BEHIND_ROUTER_V4, Lab};
use mpath_tests::{
    PinDir,
    daemon::{Mpathd, all_ok, inbound, state_of, three_nic_config},
    hooks::hooks,
    metrics::{sample, scrape},
};

const NICS: [&str; 3] = ["h0", "h1", "h2"];

/// The lab group (FDT 700 ms) with a route to the network behind the router, its probe
/// replies matched as `probe_rx` says (the default when `None`).
fn config(probe_rx: Option<&str>) -> String {
    let mut text = three_nic_config(700);
    if let Some(probe_rx) = probe_rx {
        text = text.replace(
            "[daemon]\n",
            &format!("[daemon]\nprobe_rx = \"{probe_rx}\"\n"),
        );
    }
    text + mpath_lab::ROUTE_BEHIND_ROUTER
}

/// Pings the network behind the router with `size`-byte payloads that must not fragment.
fn ping_behind_router(lab: &Lab, size: u32, when: &str) {
    let size = size.to_string();
    let ping = lab.host().run(&[
        "ping",
        "-c2",
        "-W2",
        "-M",
        "do",
        "-s",
        &size,
        BEHIND_ROUTER_V4,
    ]);
    assert!(ping.is_ok(), "{when}: {ping:?}");
}

#[test]
fn every_link_at_mtu_9000_carries_jumbo_frames_through_failovers_with_no_xdp_program() {
    let lab = Lab::builder()
        .nics(3)
        .mtu(9000)
        .behind_router()
        .build()
        .expect("lab");
    let mut daemon = Mpathd::start(lab.host(), &config(None));
    daemon.wait_until("every NIC ok, the addresses at home", |d| {
        all_ok(d)
            && d.try_status().is_some_and(|s| {
                inbound(&s, "192.0.2.19/24") == Some("h0")
                    && inbound(&s, "192.0.2.20/24") == Some("h1")
            })
    });
    for nic in NICS {
        let on_it = hooks(lab.host(), nic);
        assert!(on_it.has_tc_programs() && !on_it.xdp, "{nic}: {on_it:?}");
    }
    ping_behind_router(&lab, 8900, "with every NIC up");

    lab.cut("h0").unwrap();
    daemon.wait_until("h0 failed, its address moved", |d| {
        d.try_status().is_some_and(|s| {
            state_of(&s, "h0") == Some(InterfaceStatus::Failed)
                && inbound(&s, "192.0.2.19/24") != Some("h0")
        })
    });
    ping_behind_router(&lab, 8900, "after h0's cable was cut");
    lab.restore("h0").unwrap();
    daemon.wait_until("h0 repaired", all_ok);

    lab.drop_silently("h1").unwrap();
    daemon.wait_until("h1 failed by its probes, its address moved", |d| {
        d.try_status().is_some_and(|s| {
            state_of(&s, "h1") == Some(InterfaceStatus::Failed)
                && inbound(&s, "192.0.2.20/24") != Some("h1")
        })
    });
    ping_behind_router(&lab, 8900, "while h1 drops everything");
    lab.undrop("h1").unwrap();
    daemon.wait_until("h1 repaired, its address home", |d| {
        all_ok(d)
            && d.try_status()
                .is_some_and(|s| inbound(&s, "192.0.2.20/24") == Some("h1"))
    });
    assert!(!daemon.log().contains("cannot attach"), "{}", daemon.log());
}

#[test]
fn the_xdp_opt_in_matches_replies_at_mtu_9000_and_a_reload_goes_back_to_tc() {
    let lab = Lab::builder()
        .nics(3)
        .mtu(9000)
        .behind_router()
        .build()
        .expect("lab");
    let mut daemon = Mpathd::start(lab.host(), &config(Some("xdp")));
    // Only matched replies make a NIC ok, and only the XDP matcher is there.
    daemon.wait_until("every NIC ok", all_ok);
    for nic in NICS {
        let on_it = hooks(lab.host(), nic);
        assert!(on_it.xdp, "{nic}: {on_it:?}");
        assert!(
            !on_it.ingress.iter().any(|p| p.starts_with("mpath_")),
            "{nic}: no tc matcher beside the XDP one: {on_it:?}"
        );
    }
    ping_behind_router(&lab, 8900, "with the XDP matcher");

    daemon.reload(&config(Some("tc")));
    daemon.wait_until("the tc matcher in place of the XDP one", |_| {
        NICS.iter().all(|nic| {
            let on_it = hooks(lab.host(), nic);
            on_it.has_tc_programs() && !on_it.xdp
        })
    });
    for nic in NICS {
        let on_it = hooks(lab.host(), nic);
        let matchers = on_it.ingress.iter().filter(|p| *p == "mpath_probe_rx");
        assert_eq!(matchers.count(), 1, "{nic}: {on_it:?}");
    }
    daemon.wait_until("every NIC ok on the tc matcher", all_ok);
    let log = daemon.log();
    assert!(log.contains("probe_rx xdp -> tc"), "{log}");
    assert!(
        !log.contains("refused native XDP"),
        "veth takes native XDP: {log}"
    );
}

#[test]
fn a_nic_the_programs_cannot_attach_to_is_offline_and_joins_once_they_attach() {
    let lab = Lab::builder().nics(3).build().expect("lab");
    // Someone else's XDP program on h1: mpathd's XDP matcher cannot go there, native or
    // generic.
    let foreign_pins = PinDir::new();
    let mut foreign = Datapath::open(foreign_pins.path()).expect("load a second datapath");
    let h1 = lab.host().ifindex("h1").unwrap();
    let foreign_link = {
        let _inside = lab.host().enter().unwrap();
        let program = foreign.probe_rx_xdp().expect("XDP program");
        program
            .attach_to_if_index(h1, XdpMode::Driver)
            .expect("attach the foreign XDP program")
    };
    let mut daemon = Mpathd::start(lab.host(), &config(Some("xdp")));
    daemon.wait_until("h1 offline, its address on the standby", |d| {
        d.try_status().is_some_and(|s| {
            state_of(&s, "h0") == Some(InterfaceStatus::Ok)
                && state_of(&s, "h1") == Some(InterfaceStatus::Offline)
                && inbound(&s, "192.0.2.20/24") == Some("h2")
        })
    });
    let status = daemon.status();
    let row = status
        .interfaces
        .iter()
        .find(|i| i.interface == "h1")
        .unwrap();
    assert_eq!(
        row.flags.iter().map(|f| f.as_str()).collect::<Vec<_>>(),
        ["offline", "no_datapath"]
    );
    assert_eq!(row.unusable.map(|r| r.as_str()), Some("no_datapath"));
    let error = row.datapath_error.as_deref().unwrap_or_default();
    assert!(
        error.contains("native XDP refused") && error.contains("generic XDP refused"),
        "{row:?}\n{}",
        daemon.log()
    );
    let log = daemon.log();
    assert!(
        log.contains("cannot attach mpathd's programs to h1")
            && log.contains("NIC h1 of group g0 is offline: mpathd's programs are not attached"),
        "{log}"
    );
    assert!(
        !log.contains("have failed"),
        "the group never failed: {log}"
    );
    assert!(!log.contains("is not a group NIC"), "{log}");
    let no_datapath = |nic: &str| {
        let text = scrape(lab.host()).expect("metrics");
        let series = format!(
            r#"mpath_interface_unusable{{group="g0",interface="{nic}",reason="no_datapath"}}"#
        );
        sample(&text, &series)
    };
    assert_eq!(no_datapath("h1"), Some(1.0));
    assert_eq!(no_datapath("h0"), Some(0.0));
    let table = daemon.ctl(lab.host(), &["interfaces"]);
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    let h1_line = table.lines().find(|l| l.starts_with("h1")).unwrap_or("");
    assert!(
        h1_line.contains("-------x")
            && h1_line
                .split_whitespace()
                .rev()
                .take(2)
                .eq(["no_datapath", "offline"]),
        "{table}"
    );
    lab.router()
        .run(&["ping", "-c1", "-W2", "192.0.2.20"])
        .expect("h1's address answers from the standby");

    // The foreign program goes: mpathd attaches on its next look and h1 takes its address
    // back.
    {
        let _inside = lab.host().enter().unwrap();
        let program = foreign.probe_rx_xdp().unwrap();
        program
            .detach(foreign_link)
            .expect("detach the foreign program");
    }
    daemon.wait_until("h1 ok with its address home", |d| {
        all_ok(d)
            && d.try_status()
                .is_some_and(|s| inbound(&s, "192.0.2.20/24") == Some("h1"))
    });
    assert!(hooks(lab.host(), "h1").xdp);
    daemon.wait_until("the metric says h1 has its programs", |_| {
        no_datapath("h1") == Some(0.0)
    });
    assert_eq!(
        state_of(&daemon.status(), "h1"),
        Some(InterfaceStatus::Ok),
        "{}",
        daemon.log()
    );
    let log = daemon.log();
    assert!(
        log.contains("mpathd's programs are attached to h1 now")
            && log.contains("mpathd's programs are attached to h1 of group g0; onlining it"),
        "{log}"
    );
}

/// Detaches the link pinned at `pin` as an administrator would, leaving the pin in place.
fn bpftool_detach(pin: &std::path::Path) {
    let detach = std::process::Command::new("bpftool")
        .args(["link", "detach", "pinned"])
        .arg(pin)
        .output()
        .expect("run bpftool");
    assert!(detach.status.success(), "{detach:?}");
}

fn source_hook_attached(lab: &Lab) -> Option<f64> {
    sample(&scrape(lab.host())?, "mpath_source_hook_attached")
}

#[test]
fn programs_detached_behind_mpathd_s_back_are_attached_again() {
    let lab = Lab::builder().nics(3).build().expect("lab");
    let mut daemon = Mpathd::start(lab.host(), &config(None));
    daemon.wait_until("every NIC ok", all_ok);
    assert_eq!(source_hook_attached(&lab), Some(1.0));
    let h0 = lab.host().ifindex("h0").unwrap();
    let links = PinLayout::new(daemon.pins.path());
    for kind in ["tc", "tc-ingress"] {
        bpftool_detach(&links.link(kind, h0));
    }
    assert!(!hooks(lab.host(), "h0").has_any_mpath_program());
    bpftool_detach(&links.links().join("source-connect4"));
    daemon.wait_until("h0's programs back", |_| {
        hooks(lab.host(), "h0").has_tc_programs()
    });
    daemon.wait_until("every NIC ok", all_ok);
    daemon.wait_until("the source hook back", |d| {
        d.log()
            .contains("the source hook was taken off behind mpathd's back: attaching it again")
            && source_hook_attached(&lab) == Some(1.0)
    });
    let log = daemon.log();
    assert!(
        log.contains("mpathd's programs were taken off h0 behind its back: attaching them again"),
        "{log}"
    );
    // Every link of the hook is attached again, the one detached included.
    let connect4 = std::process::Command::new("bpftool")
        .args(["link", "show", "pinned"])
        .arg(links.links().join("source-connect4"))
        .output()
        .expect("run bpftool");
    let shown = String::from_utf8_lossy(&connect4.stdout);
    assert!(
        shown.contains("cgroup_id") && !shown.contains("cgroup_id 0"),
        "{shown}"
    );
}
