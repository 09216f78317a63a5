//! The tc programs (the egress spreader and the ingress probe matcher) as classic cls_bpf
//! filters (`tc_attach = "legacy"`), the way kernels without tcx (before 6.6) run them, forced
//! on this kernel: attached at mpathd's priority and handle, kept by a killed mpathd, replaced
//! in place by a restarted one, removed by `--teardown` without touching anyone else's
//! filters (and past a part it cannot remove, which it names), and swapped for tcx links and
//! back.

use std::{collections::BTreeSet, net::Ipv4Addr};

use mpath_ctl::core::state::InterfaceStatus;
use mpath_ctl::datapath::{
    legacy_tc::{self, Filter, Hook},
    pins::PinLayout,
};
use mpath_lab::Lab;
use mpath_tests::{
    daemon::{Mpathd, all_ok, state_of, three_nic_config},
    flows::{Flows, Sniffer},
};

/// The lab group with the egress program spreading the flows itself (so that the spreading
/// seen proves the filter runs) and attached as `tc_attach`.
fn config(tc_attach: &str) -> String {
    three_nic_config(700)
        .replace(
            "[daemon]\n",
            &format!("[daemon]\ntc_attach = \"{tc_attach}\"\n"),
        )
        .replace("name = \"g0\"\n", "name = \"g0\"\nspread = \"datapath\"\n")
}

/// The filters on `hook` of `nic` in the lab host.
fn filters(lab: &Lab, nic: &str, hook: Hook) -> Vec<Filter> {
    let ifindex = lab.host().ifindex(nic).unwrap();
    let _inside = lab.host().enter().unwrap();
    legacy_tc::filters(ifindex, hook).unwrap()
}

/// Whether `nic` has a filter of mpathd's on either hook.
fn has_mpathd_filter(lab: &Lab, nic: &str) -> bool {
    Hook::ALL
        .into_iter()
        .any(|hook| filters(lab, nic, hook).iter().any(|f| f.is_mpathd(hook)))
}

/// The program ids of mpathd's filters on `nic`, egress and ingress, each the only one of
/// mpathd's on its hook.
fn mpathd_programs(lab: &Lab, nic: &str) -> [u32; 2] {
    Hook::ALL.map(|hook| {
        let ours: Vec<Filter> = filters(lab, nic, hook)
            .into_iter()
            .filter(|f| f.is_mpathd(hook))
            .collect();
        assert_eq!(
            ours.len(),
            1,
            "one {hook:?} filter of mpathd's on {nic}: {ours:?}"
        );
        ours[0].program_id.expect("the filter names its program")
    })
}

/// The pins of `nic`'s tcx links, egress and ingress.
fn tc_pins(daemon: &Mpathd, lab: &Lab, nic: &str) -> [std::path::PathBuf; 2] {
    let ifindex = lab.host().ifindex(nic).unwrap();
    let pins = PinLayout::new(daemon.pins.path());
    ["tc", "tc-ingress"].map(|kind| pins.link(kind, ifindex))
}

/// Source MACs of 64 UDP flows from 192.0.2.19 to the router, as the router sees them;
/// asserts that none was lost.
fn spread_macs(lab: &Lab) -> BTreeSet<[u8; 6]> {
    let mut flows = Flows::open(
        lab.host(),
        Ipv4Addr::new(192, 0, 2, 19),
        Ipv4Addr::new(192, 0, 2, 1),
        64,
    );
    let sniffer = Sniffer::start(lab.router(), mpath_lab::ROUTER_NIC);
    let sent = flows.send_round(2, &sniffer);
    let log = sniffer.finish(sent);
    assert_eq!(
        log.values().map(Vec::len).sum::<usize>(),
        128,
        "no packet lost"
    );
    log.values().flatten().map(|seen| seen.src_mac).collect()
}

#[test]
fn a_legacy_filter_outlives_a_killed_mpathd_is_replaced_in_place_and_torn_down_alone() {
    let lab = Lab::builder().nics(3).build().expect("lab");
    // Someone else's filter on h0, at a priority after mpathd's (one before it that ends
    // classification would keep mpathd's program from running).
    lab.host()
        .run(&["tc", "qdisc", "add", "dev", "h0", "clsact"])
        .unwrap();
    lab.host()
        .run(&[
            "tc", "filter", "add", "dev", "h0", "egress", "pref", "50000", "u32", "match", "u32",
            "0", "0", "flowid", "1:1",
        ])
        .unwrap();
    let foreign = |lab: &Lab| {
        filters(lab, "h0", Hook::Egress)
            .into_iter()
            .filter(|f| f.priority == 50000)
            .collect::<Vec<_>>()
    };
    let theirs = foreign(&lab);
    assert!(theirs.iter().any(|f| f.kind == "u32"), "{theirs:?}");

    let mut daemon = Mpathd::start_all_ok(lab.host(), &config("legacy"));
    let before: Vec<[u32; 2]> = ["h0", "h1", "h2"]
        .iter()
        .map(|nic| mpathd_programs(&lab, nic))
        .collect();
    assert!(
        tc_pins(&daemon, &lab, "h0").iter().all(|pin| !pin.exists()),
        "no tcx link"
    );
    let (h0, h1) = (lab.mac("h0").unwrap(), lab.mac("h1").unwrap());
    assert_eq!(spread_macs(&lab), [h0, h1].into(), "spread by the filter");

    // Killed: the filters stay with their programs and keep spreading.
    daemon.kill();
    for (nic, programs) in ["h0", "h1", "h2"].iter().zip(&before) {
        assert_eq!(
            mpathd_programs(&lab, nic),
            *programs,
            "{nic} kept its programs"
        );
    }
    assert_eq!(
        spread_macs(&lab),
        [h0, h1].into(),
        "spreading without mpathd"
    );

    // Restarted: the same filters, new programs, and flows still spread; no packet of a
    // ping stream through the restart is lost.
    let ping = lab
        .router()
        .cmd("ping")
        .args(["-q", "-i", "0.01", "-W", "1", "-c", "150", "192.0.2.19"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    daemon.spawn(lab.host());
    daemon.wait_until("all NICs ok after the restart", all_ok);
    let summary = String::from_utf8_lossy(&ping.wait_with_output().unwrap().stdout).into_owned();
    assert!(
        summary.contains("150 packets transmitted, 150 received"),
        "{summary}"
    );
    for (nic, programs) in ["h0", "h1", "h2"].iter().zip(&before) {
        let now = mpathd_programs(&lab, nic);
        for (hook, (now, before)) in Hook::ALL.iter().zip(now.iter().zip(programs)) {
            assert_ne!(now, before, "{nic}'s {hook:?} program replaced");
        }
    }
    assert_eq!(spread_macs(&lab), [h0, h1].into());
    assert_eq!(foreign(&lab), theirs, "the other filter untouched");

    daemon.stop();
    let teardown = daemon.teardown(lab.host());
    assert!(teardown.status.success(), "{teardown:?}");
    for nic in ["h0", "h1", "h2"] {
        assert!(
            !has_mpathd_filter(&lab, nic),
            "{nic}: mpathd's filters removed"
        );
    }
    assert_eq!(
        foreign(&lab),
        theirs,
        "the other filter survives the teardown"
    );
}

#[test]
fn switching_between_tcx_and_legacy_leaves_one_program_per_hook() {
    let tcx = mpath_ctl::datapath::has_tcx().expect("asking the kernel for tcx");
    if !mpath_lab::kernel_has("tcx links (Linux 6.6)", tcx) {
        return;
    }
    let lab = Lab::builder().nics(3).build().expect("lab");
    let mut daemon = Mpathd::start_all_ok(lab.host(), &config("tcx"));
    assert!(tc_pins(&daemon, &lab, "h0").iter().all(|pin| pin.exists()));
    assert!(!has_mpathd_filter(&lab, "h0"));

    // As after a kernel change: the next mpathd attaches the other kind.
    daemon.kill();
    std::fs::write(&daemon.config, {
        let text = std::fs::read_to_string(&daemon.config).unwrap();
        text.replace("tc_attach = \"tcx\"", "tc_attach = \"legacy\"")
    })
    .unwrap();
    daemon.spawn(lab.host());
    daemon.wait_until("all NICs ok on legacy tc", all_ok);
    for nic in ["h0", "h1", "h2"] {
        assert!(
            tc_pins(&daemon, &lab, nic).iter().all(|pin| !pin.exists()),
            "{nic}'s tcx links gone"
        );
        mpathd_programs(&lab, nic);
    }
    let (h0, h1) = (lab.mac("h0").unwrap(), lab.mac("h1").unwrap());
    assert_eq!(spread_macs(&lab), [h0, h1].into());

    daemon.kill();
    std::fs::write(&daemon.config, {
        let text = std::fs::read_to_string(&daemon.config).unwrap();
        text.replace("tc_attach = \"legacy\"", "tc_attach = \"tcx\"")
    })
    .unwrap();
    daemon.spawn(lab.host());
    daemon.wait_until("all NICs ok on tcx again", all_ok);
    for nic in ["h0", "h1", "h2"] {
        assert!(
            tc_pins(&daemon, &lab, nic).iter().all(|pin| pin.exists()),
            "{nic}'s tcx links"
        );
        assert!(!has_mpathd_filter(&lab, nic), "{nic}'s filters gone");
    }
    assert_eq!(spread_macs(&lab), [h0, h1].into());
    assert_eq!(
        state_of(&daemon.status(), "h0"),
        Some(InterfaceStatus::Ok),
        "mpathd runs on after the switches"
    );
}

/// A teardown that cannot remove a part goes on with the rest and names the failure: here a
/// directory among the pinned links, which is no link (bpffs takes directories).
#[test]
fn a_teardown_goes_on_past_a_part_it_cannot_remove_and_names_it() {
    let lab = Lab::builder().nics(3).build().expect("lab");
    let mut daemon = Mpathd::start_all_ok(lab.host(), &config("legacy"));
    daemon.stop();
    let pins = PinLayout::new(daemon.pins.path());
    let stray = pins.links().join("stray");
    std::fs::create_dir_all(&stray).unwrap();

    let teardown = daemon.teardown(lab.host());
    let stderr = String::from_utf8_lossy(&teardown.stderr);
    assert!(!teardown.status.success(), "{teardown:?}");
    assert!(
        stderr.contains(&stray.display().to_string())
            && stderr.contains("teardown incomplete: 1 step(s) failed"),
        "{stderr}"
    );
    for nic in ["h0", "h1", "h2"] {
        assert!(
            !has_mpathd_filter(&lab, nic),
            "{nic}: mpathd's filters removed"
        );
    }
    assert!(!pins.dir().exists(), "the pins went after the failure");
}
