//! Failover on real virtio_net NICs (issue 21, item 4), in the guest `cargo xtask test` boots
//! for them: a carrier cut comes from the device (QMP `set_link`) through linkwatch, which
//! does not hurry for a physical NIC as it does for a veth; the driver has its own limits on
//! native XDP (MTU, guest offload control) and its own offload features. Ignored elsewhere.

use std::{
    collections::BTreeMap,
    io::Write as _,
    process::{Child, Stdio},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use mpath_ctl::{
    api::views::Status,
    core::state::{GroupState, InterfaceStatus, LinkState, ProbeStatus},
};
use mpath_lab::{VIRTIO_NET_F_CTRL_GUEST_OFFLOADS, VirtioLab};
use mpath_tests::daemon::{
    Mpathd, data_addresses_missing, h1_failed_back, h1_failed_over, inbound, log_time_ns, state_of,
    three_nic_config,
};

/// The lab group (h0 and h1 active, h2 a standby) at FDT 1 s, with a route through the router
/// to the network behind it.
fn config() -> String {
    three_nic_config(1000) + mpath_lab::ROUTE_BEHIND_ROUTER
}

fn lab() -> VirtioLab {
    VirtioLab::new(&["h0", "h1", "h2"]).expect("virtio lab")
}

fn all_ok(nics: &'static [&'static str]) -> impl Fn(&Mpathd) -> bool {
    move |d| {
        d.try_status().is_some_and(|s| {
            nics.iter()
                .all(|n| state_of(&s, n) == Some(InterfaceStatus::Ok))
        })
    }
}

/// Starts mpathd on `config` and waits until each of `nics` is ok and its probes are
/// answered: the start of each scenario here.
fn start_answered(lab: &VirtioLab, config: &str, nics: &[&str]) -> Mpathd {
    let mut daemon = Mpathd::start(lab.host(), config);
    daemon.wait_until("all NICs ok, probes answered on each", |d| {
        d.try_status().is_some_and(|s| {
            nics.iter()
                .all(|n| state_of(&s, n) == Some(InterfaceStatus::Ok) && probes_answered(&s, n))
        })
    });
    daemon
}

/// Whether `nic` got answers from its IPv4 probe target.
fn probes_answered(status: &Status, nic: &str) -> bool {
    status.targets.iter().any(|t| {
        t.interface == nic
            && t.health
                .iter()
                .any(|h| h.address.is_ipv4() && h.answered > 0)
    })
}

/// Pings `target` from the host with source `from`; fails the test when nothing comes back.
fn ping_from_host(lab: &VirtioLab, from: &str, target: &str, size: u32) {
    lab.host()
        .run(&[
            "ping",
            "-c3",
            "-W2",
            "-M",
            "do",
            "-s",
            &size.to_string(),
            "-I",
            from,
            target,
        ])
        .unwrap_or_else(|e| panic!("{target} from {from}: {e:#}"));
}

/// Pings data address `address` from the router; fails the test when nothing comes back.
fn ping_from_router(lab: &VirtioLab, address: &str, size: u32) {
    lab.router()
        .run(&[
            "ping",
            "-c3",
            "-W2",
            "-M",
            "do",
            "-s",
            &size.to_string(),
            address,
        ])
        .unwrap_or_else(|e| panic!("{address} from the router: {e:#}"));
}

/// A ping every 20 ms from 192.0.2.19 to the network behind the router, `count` of them.
fn ping_stream(lab: &VirtioLab, count: u32) -> Child {
    lab.host()
        .cmd("ping")
        .args(["-q", "-i", "0.02", "-W", "1", "-c", &count.to_string()])
        .args(["-I", "192.0.2.19", "198.51.100.1"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for a `ping_stream` and returns (transmitted, received).
fn ping_result(ping: Child) -> (u32, u32) {
    let out = ping.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary in {text}"));
    let numbers: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

/// Prints a measurement past libtest's capture (xtask shows these lines in its summary).
fn measured(text: &str) {
    let _ = writeln!(std::io::stderr(), "mpath-test: measured {text}");
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

/// When mpathd logged the failure of `nic` (ns since the epoch).
fn failure_logged_ns(daemon: &Mpathd, nic: &str) -> i64 {
    let log = daemon.log();
    log.lines()
        .filter(|l| l.contains(&format!("NIC failure detected on {nic} of group g0")))
        .find_map(log_time_ns)
        .unwrap_or_else(|| panic!("no failure of {nic} logged:\n{log}"))
}

/// `ethtool -k NIC` as feature -> setting (`on`, `off [fixed]`, ...).
fn offloads(lab: &VirtioLab, nic: &str) -> BTreeMap<String, String> {
    lab.host()
        .run(&["ethtool", "-k", nic])
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (name, value) = l.split_once(':')?;
            Some((name.trim().to_string(), value.trim().to_string()))
        })
        .filter(|(_, value)| !value.is_empty())
        .collect()
}

#[test]
#[ignore = "needs the guest with virtio NICs: `cargo xtask test --virtio-only`"]
fn starts_with_addresses_at_home_and_probes_over_every_nic() {
    let lab = lab();
    let daemon = start_answered(&lab, &config(), &["h0", "h1", "h2"]);
    let status = daemon.status();
    let group = &status.groups[0];
    assert_eq!(group.state, GroupState::Ok);
    assert_eq!(group.active, ["h0", "h1"]);
    assert_eq!(group.inactive, ["h2"]);
    assert_eq!(inbound(&status, "192.0.2.19/24"), Some("h0"));
    assert_eq!(inbound(&status, "2001:db8::19/64"), Some("h0"));
    assert_eq!(inbound(&status, "192.0.2.20/24"), Some("h1"));
    let (h0, h1) = (lab.host_addrs("h0").unwrap(), lab.host_addrs("h1").unwrap());
    assert_eq!(data_addresses_missing(&h0, &h1), Vec::<&str>::new());
    assert_eq!(lab.host_addrs("h2").unwrap(), ["192.0.2.23/32"]);
    for address in ["192.0.2.19", "192.0.2.20", "2001:db8::19"] {
        ping_from_router(&lab, address, 56);
    }
    ping_from_host(&lab, "192.0.2.19", "198.51.100.1", 56);
}

#[test]
#[ignore = "needs the guest with virtio NICs: `cargo xtask test --virtio-only`"]
fn carrier_loss_fails_over_and_traffic_behind_the_router_keeps_flowing() {
    let lab = lab();
    let mut daemon = Mpathd::start(lab.host(), &config());
    daemon.wait_until("all NICs ok", all_ok(&["h0", "h1", "h2"]));
    ping_from_host(&lab, "192.0.2.19", "198.51.100.1", 56);

    // About 6 s of pings, the cut in their middle.
    let stream = ping_stream(&lab, 300);
    std::thread::sleep(Duration::from_secs(2));
    let cut_ns = now_ns();
    lab.cut("h0").unwrap();
    daemon.wait_until("192.0.2.19 on h2", |d| {
        d.try_status()
            .is_some_and(|s| inbound(&s, "192.0.2.19/24") == Some("h2"))
    });
    let (sent, received) = ping_result(stream);
    measured(&format!(
        "carrier loss of h0 logged by mpathd {} ms after the QMP cut was asked; \
         {received} of {sent} pings through it answered",
        (failure_logged_ns(&daemon, "h0") - cut_ns) / 1_000_000
    ));
    let status = daemon.status();
    let h0 = status
        .interfaces
        .iter()
        .find(|i| i.interface == "h0")
        .unwrap();
    assert_eq!(h0.link, LinkState::Down, "{h0:?}");
    assert_eq!(state_of(&status, "h0"), Some(InterfaceStatus::Failed));
    assert_eq!(inbound(&status, "2001:db8::19/64"), Some("h2"));
    assert_eq!(inbound(&status, "192.0.2.20/24"), Some("h1"));
    assert_eq!(status.groups[0].state, GroupState::Degraded);
    let h2 = lab.host_addrs("h2").unwrap();
    for a in ["192.0.2.19/24", "2001:db8::19/64", "192.0.2.23/32"] {
        assert!(h2.contains(&a.to_string()), "{a} not on h2: {h2:?}");
    }
    assert!(received > 0, "no ping answered at all");
    for from in ["192.0.2.19", "192.0.2.20"] {
        ping_from_host(&lab, from, "198.51.100.1", 56);
    }
    ping_from_router(&lab, "192.0.2.19", 56);
    let log = daemon.log();
    assert!(
        log.contains("Successfully failed over from NIC h0 to NIC h2"),
        "{log}"
    );

    lab.restore("h0").unwrap();
    daemon.wait_until("192.0.2.19 back on h0", |d| {
        d.try_status().is_some_and(|s| {
            inbound(&s, "192.0.2.19/24") == Some("h0")
                && state_of(&s, "h0") == Some(InterfaceStatus::Ok)
        })
    });
    assert_eq!(lab.host_addrs("h2").unwrap(), ["192.0.2.23/32"]);
    ping_from_host(&lab, "192.0.2.19", "198.51.100.1", 56);
}

#[test]
#[ignore = "needs the guest with virtio NICs: `cargo xtask test --virtio-only`"]
fn silent_loss_is_caught_by_probes() {
    let lab = lab();
    let mut daemon = Mpathd::start(lab.host(), &config());
    daemon.wait_until("all NICs ok", all_ok(&["h0", "h1", "h2"]));

    lab.drop_silently("h1").unwrap();
    daemon.wait_until("h1 failed by probes, 192.0.2.20 on h2", h1_failed_over);
    let status = daemon.status();
    let h1 = status
        .interfaces
        .iter()
        .find(|i| i.interface == "h1")
        .unwrap();
    assert_eq!(h1.link, LinkState::Up, "carrier stayed up: {h1:?}");
    assert_eq!(h1.probe, ProbeStatus::Failed);
    // The router drops h1's frames, but what other hosts flood over the switch may still
    // reach it: either explanation fits.
    let log = daemon.log();
    assert!(
        log.contains("h1 has received nothing for at least")
            || log.contains("h1 still receives: its transmit path, or the targets' replies"),
        "the failure is explained: {log}"
    );
    ping_from_host(&lab, "192.0.2.20", "198.51.100.1", 56);

    lab.undrop("h1").unwrap();
    daemon.wait_until("h1 repaired, 192.0.2.20 back on it", h1_failed_back);
}

#[test]
#[ignore = "needs the guest with virtio NICs: `cargo xtask test --virtio-only`"]
fn mpathd_leaves_the_offload_features_of_its_nics_unchanged() {
    let lab = lab();
    let nics = ["h0", "h1", "h2"];
    let before: Vec<_> = nics.iter().map(|n| offloads(&lab, n)).collect();
    assert!(
        before[0].contains_key("generic-receive-offload"),
        "ethtool -k lists no features: {:?}",
        before[0]
    );
    let mut daemon = start_answered(&lab, &config(), &nics);
    for (nic, before) in nics.iter().zip(&before) {
        assert_eq!(&offloads(&lab, nic), before, "{nic} while mpathd runs");
    }
    daemon.stop();
    for (nic, before) in nics.iter().zip(&before) {
        assert_eq!(&offloads(&lab, nic), before, "{nic} after mpathd stopped");
    }
}

/// linkwatch handles a physical NIC's link events at most once a second: a carrier cut within
/// a second of another link event reaches netlink (and mpathd) late. Correctness only: the
/// delays are printed, not bounded.
#[test]
#[ignore = "needs the guest with virtio NICs: `cargo xtask test --virtio-only`"]
fn a_carrier_cut_within_a_second_of_another_is_seen_and_fails_over() {
    let lab = lab();
    let mut daemon = Mpathd::start(lab.host(), &config());
    daemon.wait_until("all NICs ok", all_ok(&["h0", "h1", "h2"]));

    let first_ns = now_ns();
    lab.cut("h0").unwrap();
    // cut() returned once the kernel showed h0 down: linkwatch has just run.
    let second_ns = now_ns();
    lab.cut("h1").unwrap();
    daemon.wait_until("h0 and h1 failed, their addresses on h2", |d| {
        d.try_status().is_some_and(|s| {
            state_of(&s, "h0") == Some(InterfaceStatus::Failed)
                && state_of(&s, "h1") == Some(InterfaceStatus::Failed)
                && ["192.0.2.19/24", "2001:db8::19/64", "192.0.2.20/24"]
                    .iter()
                    .all(|a| inbound(&s, a) == Some("h2"))
        })
    });
    let (h0_ms, h1_ms) = (
        (failure_logged_ns(&daemon, "h0") - first_ns) / 1_000_000,
        (failure_logged_ns(&daemon, "h1") - second_ns) / 1_000_000,
    );
    measured(&format!(
        "carrier loss logged by mpathd {h0_ms} ms after the QMP cut of h0, {h1_ms} ms after \
         that of h1 ({} ms after h0's)",
        (second_ns - first_ns) / 1_000_000
    ));
    // Debian's kernels let mpathd load tracing programs: the hook, not the poll, runs.
    // Whether it or linkwatch's held-back event told of h1's loss first depends on how long
    // the emulated cuts took; the summary says which.
    let log = daemon.log();
    assert!(
        log.contains("carrier loss is reported by a tracing hook on netif_carrier_off"),
        "{log}"
    );
    measured(&format!(
        "h1's loss told first by {}",
        if log.contains("h1 has no carrier (seen ahead of the kernel's link event)") {
            "the carrier hook"
        } else {
            "the kernel's link event"
        }
    ));
    // From the driver's report (the hook's kernel time stamp) to the traffic moved.
    for nic in ["h0", "h1"] {
        let prefix = format!("{nic} failed over ");
        if let Some(line) = log.lines().find(|l| l.contains(&prefix)) {
            let rest = &line[line.find(&prefix).unwrap_or(0) + prefix.len()..];
            measured(&format!(
                "{nic}: traffic moved {} after the driver reported the carrier loss",
                rest.split(" after").next().unwrap_or(rest)
            ));
        }
    }
    let status = daemon.status();
    for nic in ["h0", "h1"] {
        let row = status
            .interfaces
            .iter()
            .find(|i| i.interface == nic)
            .unwrap();
        assert_eq!(row.link, LinkState::Down, "{row:?}");
    }
    assert_eq!(status.groups[0].active, ["h2"]);
    for from in ["192.0.2.19", "192.0.2.20"] {
        ping_from_host(&lab, from, "198.51.100.1", 56);
        ping_from_router(&lab, from, 56);
    }

    lab.restore("h0").unwrap();
    lab.restore("h1").unwrap();
    daemon.wait_until("192.0.2.19 and 192.0.2.20 back home", |d| {
        d.try_status().is_some_and(|s| {
            inbound(&s, "192.0.2.19/24") == Some("h0") && inbound(&s, "192.0.2.20/24") == Some("h1")
        })
    });
}

/// `carrier_hook = false` (a policy against tracing programs) takes effect at restart: a
/// reload says so and leaves the running hook, which still reports the second of two cuts
/// ahead of linkwatch's held-back event; restarted, mpathd reads the carrier instead.
#[test]
#[ignore = "needs the guest with virtio NICs: `cargo xtask test --virtio-only`"]
fn carrier_hook_false_takes_effect_at_restart_and_the_carrier_is_then_read() {
    let lab = lab();
    let mut daemon = Mpathd::start(lab.host(), &config());
    daemon.wait_until("all NICs ok", all_ok(&["h0", "h1", "h2"]));
    assert!(
        daemon
            .log()
            .contains("carrier loss is reported by a tracing hook on netif_carrier_off"),
        "{}",
        daemon.log()
    );
    let without_hook = config().replace("[daemon]\n", "[daemon]\ncarrier_hook = false\n");
    daemon.reload(&without_hook);
    daemon.wait_until("the reload's warning", |d| {
        d.log()
            .contains("reload: carrier_hook true -> false takes effect when mpathd restarts")
    });

    lab.cut("h0").unwrap();
    lab.cut("h1").unwrap();
    daemon.wait_until("h1 failed, 192.0.2.20 on h2", h1_failed_over);
    // Only a loss the hook reported logs the driver's report time.
    let log = daemon.log();
    assert!(
        log.contains("h1 failed over ") && log.contains("after its driver reported"),
        "the hook still runs after the reload: {log}"
    );
    lab.restore("h0").unwrap();
    lab.restore("h1").unwrap();
    daemon.wait_until("all NICs ok", all_ok(&["h0", "h1", "h2"]));

    daemon.stop();
    let before = daemon.log().len();
    daemon.spawn(lab.host());
    daemon.wait_until("all NICs ok after the restart", all_ok(&["h0", "h1", "h2"]));
    let log = daemon.log();
    let restarted = &log[before..];
    assert!(
        restarted.contains(
            "carrier loss is read from the drivers every 10 ms (sysfs), ahead of the kernel's \
             link events (the carrier hook is off: carrier_hook = false)"
        ),
        "{restarted}"
    );
    assert!(
        !restarted.contains("reported by a tracing hook"),
        "{restarted}"
    );
    lab.cut("h0").unwrap();
    lab.cut("h1").unwrap();
    daemon.wait_until("h1 failed, 192.0.2.20 on h2", h1_failed_over);
    let log = daemon.log();
    assert!(
        log[before..].contains("h1 has no carrier (seen ahead of the kernel's link event)"),
        "the poll read h1's loss ahead of linkwatch: {log}"
    );
    lab.restore("h0").unwrap();
    lab.restore("h1").unwrap();
}

/// virtio_net refuses a single-buffer XDP program above an MTU of about 3.5 KB; the tc matcher
/// has no such limit.
#[test]
#[ignore = "needs the guest with virtio NICs: `cargo xtask test --virtio-only`"]
fn at_mtu_9000_every_nic_gets_its_addresses_and_fails_over() {
    let lab = lab();
    lab.set_mtu(9000).unwrap();
    let mut daemon = start_answered(&lab, &config(), &["h0", "h1", "h2"]);
    let status = daemon.status();
    assert_eq!(inbound(&status, "192.0.2.19/24"), Some("h0"));
    assert_eq!(inbound(&status, "192.0.2.20/24"), Some("h1"));
    let (h0, h1) = (lab.host_addrs("h0").unwrap(), lab.host_addrs("h1").unwrap());
    assert_eq!(data_addresses_missing(&h0, &h1), Vec::<&str>::new());
    // Jumbo frames, unfragmented, both ways.
    ping_from_router(&lab, "192.0.2.19", 8972);
    ping_from_host(&lab, "192.0.2.20", "198.51.100.1", 8972);

    lab.cut("h0").unwrap();
    daemon.wait_until("192.0.2.19 on h2", |d| {
        d.try_status()
            .is_some_and(|s| inbound(&s, "192.0.2.19/24") == Some("h2"))
    });
    ping_from_router(&lab, "192.0.2.19", 8972);
    ping_from_host(&lab, "192.0.2.19", "198.51.100.1", 8972);
}

/// virtio_net refuses native XDP on a device whose receive offloads the guest cannot turn off
/// (`ctrl_guest_offloads=off`, as some hypervisors offer); the tc matcher needs nothing of it.
#[test]
#[ignore = "needs the guest with virtio NICs: `cargo xtask test --virtio-only`"]
fn a_nic_without_guest_offload_control_is_attached_and_used() {
    let lab = VirtioLab::new(&["h1", "h2", "h3"]).expect("virtio lab");
    assert!(
        !lab.has_virtio_feature("h3", VIRTIO_NET_F_CTRL_GUEST_OFFLOADS)
            .unwrap(),
        "h3 was meant to lack guest offload control"
    );
    // The lab group with h3 in h0's place.
    let config = config().replace("name = \"h0\"", "name = \"h3\"");
    let mut daemon = start_answered(&lab, &config, &["h3", "h1", "h2"]);
    let status = daemon.status();
    let mut active = status.groups[0].active.clone();
    active.sort();
    assert_eq!(active, ["h1", "h3"]);
    assert_eq!(inbound(&status, "192.0.2.19/24"), Some("h3"));
    let row = status
        .addresses
        .iter()
        .find(|a| a.address == "192.0.2.19/24")
        .unwrap();
    assert!(row.outbound.iter().any(|n| n == "h3"), "{row:?}");
    let maps = daemon.ctl(lab.host(), &["maps", "--json"]);
    assert!(maps.status.success(), "{maps:?}");
    let dump: serde_json::Value = serde_json::from_slice(&maps.stdout).unwrap();
    assert!(
        dump["nics"]
            .as_array()
            .is_some_and(|nics| nics.iter().any(|n| n["name"] == "h3")),
        "the datapath is not on h3: {dump}"
    );
    ping_from_router(&lab, "192.0.2.19", 56);
    ping_from_host(&lab, "192.0.2.19", "198.51.100.1", 56);

    lab.cut("h3").unwrap();
    daemon.wait_until("192.0.2.19 on h2", |d| {
        d.try_status()
            .is_some_and(|s| inbound(&s, "192.0.2.19/24") == Some("h2"))
    });
    ping_from_router(&lab, "192.0.2.19", 56);
}

/// With `probe_rx = "xdp"`, a NIC whose driver refuses native XDP gets the matcher in generic
/// mode, with a warning naming the refusal, and is used like the others.
#[test]
#[ignore = "needs the guest with virtio NICs: `cargo xtask test --virtio-only`"]
fn the_xdp_opt_in_falls_back_to_generic_xdp_where_the_driver_refuses_native() {
    let lab = VirtioLab::new(&["h1", "h2", "h3"]).expect("virtio lab");
    let config = config()
        .replace("name = \"h0\"", "name = \"h3\"")
        .replace("[daemon]\n", "[daemon]\nprobe_rx = \"xdp\"\n");
    let daemon = start_answered(&lab, &config, &["h3", "h1", "h2"]);
    let link = |nic: &str| lab.host().ip(&["link", "show", "dev", nic]).unwrap();
    assert!(link("h3").contains("xdpgeneric"), "{}", link("h3"));
    for nic in ["h1", "h2"] {
        let line = link(nic);
        assert!(
            line.contains("xdp") && !line.contains("xdpgeneric"),
            "{line}"
        );
    }
    let log = daemon.log();
    assert!(log.contains("h3: the driver refused native XDP"), "{log}");
    assert_eq!(inbound(&daemon.status(), "192.0.2.19/24"), Some("h3"));
    ping_from_router(&lab, "192.0.2.19", 56);
}

/// The UDP port of [`bound_stream`]'s packets, counted by the router per source MAC
/// ([`VirtioLab::count_packets_by_nic`]).
const MOVED_PORT: u16 = 4791;

/// Sends a UDP packet every 2 ms from h1's data address 192.0.2.20 to the router, from a
/// socket bound to h1 (SO_BINDTODEVICE): traffic the kernel keeps on h1 whatever its carrier
/// or the routes say, which only the egress program can move. Stops when `stop` is set.
fn bound_stream(
    lab: &VirtioLab,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let socket = {
        let _inside = lab.host().enter().unwrap();
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )
        .unwrap();
        socket.bind_device(Some(b"h1")).unwrap();
        let source: std::net::SocketAddr = "192.0.2.20:0".parse().unwrap();
        socket.bind(&source.into()).unwrap();
        socket
    };
    let router: std::net::SocketAddr = format!("192.0.2.1:{MOVED_PORT}").parse().unwrap();
    std::thread::spawn(move || {
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            // A send can fail while h1 has no carrier and nothing moves it: that is counted
            // as lost by the router, which is the point.
            let _: Result<_, _> = socket.send_to(b"mpath", &router.into());
            std::thread::sleep(Duration::from_millis(2));
        }
    })
}

/// `mpathctl maps`: whether the egress map marks `nic` as having lost its carrier.
fn carrier_marked_lost(daemon: &Mpathd, lab: &VirtioLab, nic: &str) -> bool {
    let out = daemon.ctl(lab.host(), &["maps", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let dump: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    dump["nics"]
        .as_array()
        .and_then(|nics| nics.iter().find(|n| n["name"] == nic))
        .and_then(|n| n["carrier_lost"].as_bool())
        .unwrap_or_else(|| panic!("no {nic} in {dump}"))
}

/// A process stopped (SIGSTOP) until this drops, also while a panic unwinds: a stopped
/// mpathd would never end on the SIGTERM of `Mpathd`'s drop.
struct Frozen(libc::pid_t);

impl Frozen {
    fn stop(pid: u32) -> Frozen {
        let pid = pid as libc::pid_t;
        // SAFETY: plain signal to the child this test started.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        // SAFETY: as in `Frozen::stop`.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// The carrier hook moves a NIC's outbound packets in the kernel the moment its driver
/// reports the carrier gone: with mpathd stopped (SIGSTOP), nothing else could. h1 is cut
/// within a second of another link event (h3's, outside the group), so the kernel itself
/// learns of it only when linkwatch runs a second later; meanwhile the packets of a socket
/// bound to h1 reach the router through another NIC. The egress map marks h1 until its
/// carrier returns, when the hook on `netif_carrier_on` clears the mark.
#[test]
#[ignore = "needs the guest with virtio NICs: `cargo xtask test --virtio-only`"]
fn with_mpathd_stopped_the_carrier_hook_alone_moves_a_lost_nics_outbound_packets() {
    let lab = VirtioLab::new(&["h0", "h1", "h2", "h3"]).expect("virtio lab");
    let mut daemon = Mpathd::start(lab.host(), &config());
    daemon.wait_until("all NICs ok", all_ok(&["h0", "h1", "h2"]));
    assert!(!carrier_marked_lost(&daemon, &lab, "h1"));
    lab.count_packets_by_nic(MOVED_PORT).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = bound_stream(&lab, stop.clone());
    let deadline = std::time::Instant::now() + mpath_lab::scaled(Duration::from_secs(10));
    let from = |nic| lab.packets_from(nic).unwrap();
    while from("h1") < 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "the stream never came through h1"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let frozen = Frozen::stop(daemon.pid().unwrap());
    let elsewhere = || from("h0") + from("h2");
    let before = elsewhere();

    // cut() returns once the guest shows h3 down: linkwatch has just run and holds h1's loss
    // back for a second, when only the hook knows of it (once the kernel knows, the bound
    // socket's packets may not even reach the egress program).
    lab.cut("h3").unwrap();
    lab.cut("h1").unwrap();
    std::thread::sleep(mpath_lab::scaled(Duration::from_secs(1)));
    let moved = elsewhere() - before;
    let marked = carrier_marked_lost(&daemon, &lab, "h1");
    drop(frozen);
    measured(&format!(
        "with mpathd stopped, {moved} of the bound stream's packets left through another NIC \
         before the kernel knew of h1's cut"
    ));
    assert!(marked, "the carrier hook did not mark h1");
    assert!(!carrier_marked_lost(&daemon, &lab, "h0"));
    assert!(
        moved >= 20,
        "only {moved} packets moved off h1 with mpathd stopped"
    );

    daemon.wait_until("h1 failed, 192.0.2.20 elsewhere", |d| {
        d.try_status().is_some_and(|s| {
            state_of(&s, "h1") == Some(InterfaceStatus::Failed)
                && inbound(&s, "192.0.2.20/24") != Some("h1")
        })
    });
    lab.restore("h3").unwrap();
    lab.restore("h1").unwrap();
    daemon.wait_until("h1 ok again", all_ok(&["h0", "h1", "h2"]));
    assert!(
        !carrier_marked_lost(&daemon, &lab, "h1"),
        "h1's mark outlived its carrier's return"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sender.join().unwrap();
}
