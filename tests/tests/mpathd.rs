//! mpathd end to end in a lab: a group of two active NICs and a standby; failures injected
//! by cutting a cable or silently dropping a NIC's frames; addresses, bucket tables, views
//! and log lines checked against what IPMP does.

use std::sync::LazyLock;

use mpath_ctl::{
    api::control::{Reply, Request},
    api::views::{AddressRow, Status},
    core::state::{GroupState, InterfaceFlag, InterfaceStatus, LinkState, ProbeStatus},
    core::target::{TargetMode, TargetSource},
    datapath::{maps::Maps, pins::PinLayout},
};
use mpath_lab::Lab;
use mpath_tests::daemon::{
    Mpathd, all_ok, h1_failed_back, h1_failed_over, inbound, ipv6_only_config, log_time_ns,
    state_of, three_nic_config, two_nic_config,
};
use mpath_tests::hooks::hooks;

/// The lab group at FDT 700 ms (probe interval 100 ms).
static CONFIG: LazyLock<String> = LazyLock::new(|| three_nic_config(700));

fn lab() -> Lab {
    Lab::builder().nics(3).build().expect("lab")
}

/// Bucket shares per ifindex of group 0, read from the pinned maps.
fn shares(daemon: &Mpathd) -> std::collections::BTreeMap<u32, usize> {
    let maps = Maps::open_pinned(&PinLayout::new(daemon.pins.path()).maps()).unwrap();
    let mut m = std::collections::BTreeMap::new();
    for i in maps.table(0).unwrap() {
        *m.entry(i).or_default() += 1;
    }
    m
}

/// Whether every NIC probes over IPv6 from its link-local address and found a target.
fn v6_targets_found(d: &Mpathd) -> bool {
    d.try_status().is_some_and(|s| {
        ["h0", "h1", "h2"].iter().all(|nic| {
            s.targets.iter().any(|t| {
                t.interface == *nic
                    && t.test_address
                        .is_some_and(|a| a.to_string().starts_with("fe80::"))
                    && t.targets
                        .iter()
                        .any(|t| t.to_string().starts_with("fe80::"))
            })
        })
    })
}

#[test]
fn starts_with_addresses_at_home_and_spreads_over_the_active_nics() {
    let lab = lab();
    let daemon = Mpathd::start_all_ok(lab.host(), &CONFIG);
    let status = daemon.status();
    let group = &status.groups[0];
    assert_eq!(group.state, GroupState::Ok);
    assert_eq!(group.active, ["h0", "h1"]);
    assert_eq!(group.inactive, ["h2"]);
    assert_eq!(inbound(&status, "192.0.2.19/24"), Some("h0"));
    assert_eq!(inbound(&status, "2001:db8::19/64"), Some("h0"));
    assert_eq!(inbound(&status, "192.0.2.20/24"), Some("h1"));

    let h0 = lab.host_addrs("h0").unwrap();
    assert!(h0.contains(&"192.0.2.19/24".to_string()), "{h0:?}");
    assert!(
        h0.contains(&"192.0.2.21/32".to_string()),
        "test address on h0: {h0:?}"
    );
    assert_eq!(lab.host_addrs("h2").unwrap(), ["192.0.2.23/32"]);

    let (h0, h1) = (
        lab.host().ifindex("h0").unwrap(),
        lab.host().ifindex("h1").unwrap(),
    );
    assert_eq!(shares(&daemon), [(h0, 128), (h1, 128)].into());
    // Each member answers ARP only for its own addresses.
    for nic in ["h0", "h1", "h2"] {
        for (key, want) in [("arp_ignore", "1"), ("arp_announce", "2")] {
            let path = format!("/proc/sys/net/ipv4/conf/{nic}/{key}");
            assert_eq!(
                lab.host().run(&["cat", &path]).unwrap().trim(),
                want,
                "{path}"
            );
        }
    }
    // Probing works: targets known and the kernel matched replies.
    assert_eq!(
        status.targets[0].targets,
        ["192.0.2.1".parse::<std::net::IpAddr>().unwrap()]
    );
    let maps = daemon.ctl(lab.host(), &["maps", "--json"]);
    assert!(maps.status.success());
    let dump: serde_json::Value = serde_json::from_slice(&maps.stdout).unwrap();
    assert!(
        dump["nics"][0]["probe_replies"].as_u64().unwrap() > 0,
        "{dump}"
    );
}

#[test]
fn carrier_loss_fails_over_to_the_standby_and_back() {
    let lab = lab();
    let mut daemon = Mpathd::start_all_ok(lab.host(), &CONFIG);
    lab.router()
        .run(&["ping", "-c1", "-W2", "192.0.2.19"])
        .unwrap();

    lab.cut("h0").unwrap();
    daemon.wait_until("192.0.2.19 on h2", |d| {
        d.try_status()
            .is_some_and(|s| inbound(&s, "192.0.2.19/24") == Some("h2"))
    });
    let status = daemon.status();
    assert_eq!(state_of(&status, "h0"), Some(InterfaceStatus::Failed));
    assert_eq!(inbound(&status, "2001:db8::19/64"), Some("h2"));
    assert_eq!(inbound(&status, "192.0.2.20/24"), Some("h1"));
    assert_eq!(status.groups[0].state, GroupState::Degraded);
    let h2_addrs = lab.host_addrs("h2").unwrap();
    for a in ["192.0.2.19/24", "2001:db8::19/64", "192.0.2.23/32"] {
        assert!(
            h2_addrs.contains(&a.to_string()),
            "{a} not on h2: {h2_addrs:?}"
        );
    }
    assert!(
        !lab.host_addrs("h0")
            .unwrap()
            .contains(&"192.0.2.19/24".to_string())
    );
    let (h1, h2) = (
        lab.host().ifindex("h1").unwrap(),
        lab.host().ifindex("h2").unwrap(),
    );
    assert_eq!(shares(&daemon), [(h1, 128), (h2, 128)].into());
    // The router learnt the move from the gratuitous ARP and reaches the address via h2.
    lab.router()
        .run(&["ping", "-c1", "-W2", "192.0.2.19"])
        .unwrap();
    let log = daemon.log();
    assert!(
        log.contains("NIC failure detected on h0 of group g0"),
        "{log}"
    );
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
    let status = daemon.status();
    assert_eq!(
        status.groups[0].inactive,
        ["h2"],
        "the standby is inactive again"
    );
    assert_eq!(lab.host_addrs("h2").unwrap(), ["192.0.2.23/32"]);
    assert!(daemon.log().contains("Successfully failed back to NIC h0"));
    lab.router()
        .run(&["ping", "-c1", "-W2", "192.0.2.19"])
        .unwrap();
}

#[test]
fn silent_loss_is_caught_by_probes() {
    let lab = lab();
    let mut daemon = Mpathd::start_all_ok(lab.host(), &CONFIG);

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
    let log = daemon.log();
    assert!(
        log.contains("h1 has received nothing for at least"),
        "the failure is explained: {log}"
    );

    lab.undrop("h1").unwrap();
    daemon.wait_until("h1 repaired after 10 answered probes", h1_failed_back);
}

/// Issue 13, item 6: within ~40 s of mpathd starting, a probing NIC whose cable came back was
/// repaired 29-201 ms after link-up, on at most 2 answered probes. Each NIC in turn loses its
/// cable in the first seconds after start and gets it back; its repair (the log line) must
/// come after 10 answered probes of one family since the cable returned (in.mpathd's
/// NUM_PROBE_REPAIRS), as `mpathctl probes` reports them.
#[test]
fn a_nic_whose_cable_returns_soon_after_start_is_repaired_only_after_10_answered_probes() {
    use std::io::{BufRead as _, BufReader};
    use std::sync::{Arc, Mutex};
    let lab = lab();
    let mut daemon = Mpathd::start_all_ok(lab.host(), &CONFIG);
    let mut probes = daemon
        .ctl_command(lab.host(), &["probes", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let rows = Arc::new(Mutex::new(Vec::<serde_json::Value>::new()));
    let reader = {
        let rows = Arc::clone(&rows);
        let stdout = probes.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                rows.lock()
                    .unwrap()
                    .push(serde_json::from_str(&line).unwrap());
            }
        })
    };
    // The stream is live before the first cable is cut: no row after it may be missed.
    let deadline = std::time::Instant::now() + mpath_lab::scaled(std::time::Duration::from_secs(5));
    while rows.lock().unwrap().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    for nic in ["h1", "h2", "h0"] {
        lab.cut(nic).unwrap();
        daemon.wait_until("the NIC failed", |d| {
            d.try_status()
                .is_some_and(|s| state_of(&s, nic) == Some(InterfaceStatus::Failed))
        });
        let restored_ms = now_ms();
        lab.restore(nic).unwrap();
        daemon.wait_until("the NIC repaired", |d| {
            d.try_status()
                .is_some_and(|s| state_of(&s, nic) == Some(InterfaceStatus::Ok))
        });
        let log = daemon.log();
        let repaired_ms = log
            .lines()
            .filter(|l| l.contains(&format!("NIC repair detected on {nic} of group g0")))
            .filter_map(log_time_ns)
            .map(|ns| (ns / 1_000_000) as u64)
            .next_back()
            .unwrap_or_else(|| panic!("no repair of {nic} logged:\n{log}"));
        // The reply that completes the 10th probe is handled (and its row stamped) as the
        // repair is decided: allow the row a few ms past the log line, and wait until the
        // stream has delivered the rows after it.
        let streamed_past = || {
            rows.lock()
                .unwrap()
                .iter()
                .any(|r| r["time_unix_ms"].as_u64().unwrap() > repaired_ms + 5)
        };
        let deadline =
            std::time::Instant::now() + mpath_lab::scaled(std::time::Duration::from_secs(5));
        while !streamed_past() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let answered = |family_v4: bool| {
            rows.lock()
                .unwrap()
                .iter()
                .filter(|r| r["interface"] == nic && !r["rtt_us"].is_null())
                .filter(|r| r["target"].as_str().unwrap().contains('.') == family_v4)
                .filter(|r| {
                    let t = r["time_unix_ms"].as_u64().unwrap();
                    t > restored_ms && t <= repaired_ms + 5
                })
                .count()
        };
        let (v4, v6) = (answered(true), answered(false));
        assert!(
            v4.max(v6) >= 10,
            "{nic} repaired {} ms after its cable returned, on {v4} answered IPv4 and {v6} IPv6 probes",
            repaired_ms.saturating_sub(restored_ms)
        );
    }
    probes.kill().unwrap();
    probes.wait().unwrap();
    reader.join().unwrap();
}

#[test]
fn a_nic_that_still_receives_but_cannot_send_fails_all_the_same() {
    let lab = lab();
    let mut daemon = Mpathd::start_all_ok(lab.host(), &CONFIG);
    // One-way fault: the switch takes nothing from h1 any more but still delivers to it,
    // and the router's broadcasts keep h1's receive counter moving the whole time.
    let port = lab.switch_port("h1").unwrap();
    for command in [
        "add table bridge one_way".to_string(),
        "add chain bridge one_way forward { type filter hook forward priority 0; }".into(),
        format!("add rule bridge one_way forward iifname {port} drop"),
    ] {
        lab.switch().run(&["nft", &command]).unwrap();
    }
    let mut broadcasts = lab
        .router()
        .cmd("ping")
        .args(["-q", "-b", "-i", "0.02", "-w", "20", "192.0.2.255"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let rx_before = h1_rx_packets(&lab, &daemon);

    daemon.wait_until("h1 failed by probes, 192.0.2.20 on h2", h1_failed_over);
    let rx_after = h1_rx_packets(&lab, &daemon);
    broadcasts.kill().unwrap();
    broadcasts.wait().unwrap();
    assert!(
        rx_after > rx_before + 10,
        "h1 kept receiving: {rx_before} -> {rx_after} frames"
    );
    let status = daemon.status();
    let h1 = status.interfaces.iter().find(|i| i.interface == "h1");
    assert_eq!(h1.map(|i| i.probe.as_str()), Some("failed"), "{h1:?}");
    let log = daemon.log();
    assert!(
        log.contains("h1 still receives: its transmit path"),
        "the failure is explained: {log}"
    );
}

/// Frames the datapath counted arriving on h1.
fn h1_rx_packets(lab: &Lab, daemon: &Mpathd) -> u64 {
    let maps = Maps::open_pinned(&PinLayout::new(daemon.pins.path()).maps()).unwrap();
    let h1 = lab.host().ifindex("h1").unwrap();
    let (_, info) = maps
        .nics()
        .unwrap()
        .into_iter()
        .find(|(ifindex, _)| *ifindex == h1)
        .expect("h1 in the datapath");
    maps.counters(info.slot).unwrap().rx_packets
}

#[test]
fn offline_and_online_with_refusal_of_the_last_usable_nic() {
    let lab = lab();
    let mut daemon = Mpathd::start_all_ok(lab.host(), &CONFIG);

    let offline = |nic: &str| Request::Offline {
        interface: nic.into(),
    };
    assert!(matches!(daemon.request(offline("h0")), Reply::Done { .. }));
    assert!(matches!(daemon.request(offline("h1")), Reply::Done { .. }));
    let status = daemon.status();
    for a in ["192.0.2.19/24", "192.0.2.20/24"] {
        assert_eq!(inbound(&status, a), Some("h2"), "{a}");
    }
    let refused = daemon.ctl(lab.host(), &["offline", "h2"]);
    assert!(
        !refused.status.success(),
        "offlining the last usable NIC must fail"
    );
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("cannot offline h2"), "{message}");
    // What the refusal could have changed; probing is left out, as IPv6 discovery goes on
    // meanwhile.
    let decided = |s: Status| {
        let nics: Vec<_> = s
            .interfaces
            .into_iter()
            .map(|i| (i.interface, i.active, i.flags, i.link, i.state))
            .collect();
        (s.groups, nics, s.addresses)
    };
    assert_eq!(
        decided(daemon.status()),
        decided(status),
        "a refusal changes nothing"
    );
    let unknown = daemon.ctl(lab.host(), &["offline", "eth9"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("eth9 is not in any group"));

    let online = daemon.ctl(lab.host(), &["online", "h0"]);
    assert!(online.status.success(), "{online:?}");
    daemon.wait_until("192.0.2.19 back on h0", |d| {
        d.try_status()
            .is_some_and(|s| inbound(&s, "192.0.2.19/24") == Some("h0"))
    });
}

#[test]
fn mpathctl_views_print_columns_and_json() {
    let lab = lab();
    let daemon = Mpathd::start_all_ok(lab.host(), &CONFIG);
    let groups = daemon.ctl(lab.host(), &["groups"]);
    assert!(groups.status.success());
    let text = String::from_utf8_lossy(&groups.stdout);
    let lines: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["GROUP", "STATE", "FDT", "INTERFACES"]);
    assert_eq!(lines[1], ["g0", "ok", "0.70s", "h0", "h1", "(h2)"]);

    let json = daemon.ctl(lab.host(), &["interfaces", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(rows[2]["interface"], "h2");
    assert_eq!(rows[2]["flags"], serde_json::json!(["standby", "inactive"]));
    assert_eq!(rows[2]["active"], false);

    let picked = daemon.ctl(lab.host(), &["addresses", "-o", "address,inbound"]);
    let text = String::from_utf8_lossy(&picked.stdout);
    assert!(text.starts_with("ADDRESS"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().eq(["192.0.2.20/24", "h1"]))
    );

    drop(daemon);
    let lab2 = lab;
    let not_running = std::process::Command::new(mpath_tests::daemon::binary("mpathctl"))
        .args(["--socket", "/nonexistent/mpathd.sock", "groups"])
        .output()
        .unwrap();
    assert_eq!(not_running.status.code(), Some(3));
    assert_eq!(
        String::from_utf8_lossy(&not_running.stderr).trim(),
        "mpathctl: mpathd is not running (nothing listens on /nonexistent/mpathd.sock)"
    );
    drop(lab2);
}

#[test]
fn a_killed_mpathd_leaves_traffic_flowing_and_its_successor_adopts_the_state() {
    use mpath_tests::flows::{Flows, Sniffer};
    use std::{net::Ipv4Addr, thread::sleep, time::Duration};

    let lab = lab();
    let mut daemon = Mpathd::start_all_ok(lab.host(), &CONFIG);
    lab.drop_silently("h1").unwrap();
    daemon.wait_until("192.0.2.20 failed over to h2", |d| {
        d.try_status()
            .is_some_and(|s| inbound(&s, "192.0.2.20/24") == Some("h2"))
    });
    let table_before = shares(&daemon);
    daemon.kill();

    // No daemon: the pinned programs keep spreading over h0 and h2, the table as it was.
    let mut flows = Flows::open(
        lab.host(),
        Ipv4Addr::new(192, 0, 2, 19),
        Ipv4Addr::new(192, 0, 2, 1),
        64,
    );
    let sniffer = Sniffer::start(lab.router(), mpath_lab::ROUTER_NIC);
    let sent = flows.send_round(2, &sniffer);
    let log = sniffer.finish(sent);
    let (h0, h2) = (lab.mac("h0").unwrap(), lab.mac("h2").unwrap());
    let macs: std::collections::BTreeSet<[u8; 6]> =
        log.values().flatten().map(|seen| seen.src_mac).collect();
    assert_eq!(macs, [h0, h2].into(), "spreading went on without mpathd");
    assert_eq!(
        log.values().map(Vec::len).sum::<usize>(),
        128,
        "no packet lost"
    );
    // The pinned maps can be read with no daemon running.
    let maps = daemon.ctl(lab.host(), &["maps", "--json"]);
    assert!(maps.status.success(), "{maps:?}");
    let dump: serde_json::Value = serde_json::from_slice(&maps.stdout).unwrap();
    assert_eq!(dump["nics"].as_array().unwrap().len(), 3, "{dump}");
    assert_eq!(dump["buckets"]["0"]["h0"], 128, "{dump}");

    let failbacks = daemon.log().matches("Successfully failed back").count();
    daemon.spawn(lab.host());
    let status = daemon.status();
    assert_eq!(inbound(&status, "192.0.2.20/24"), Some("h2"));
    assert_eq!(
        state_of(&status, "h1"),
        Some(InterfaceStatus::Failed),
        "adopted as failed"
    );
    assert_eq!(shares(&daemon), table_before, "no bucket moved");
    assert!(daemon.log().contains("192.0.2.20/24 of h1 is on h2"));
    // h1 still drops everything: a second of probing must not bring the address back.
    sleep(Duration::from_secs(1));
    let status = daemon.status();
    assert_eq!(inbound(&status, "192.0.2.20/24"), Some("h2"));
    assert_eq!(
        daemon.log().matches("Successfully failed back").count(),
        failbacks
    );

    lab.undrop("h1").unwrap();
    daemon.wait_until("h1 repaired by its probes and failed back", h1_failed_back);
}

#[test]
fn with_track_interfaces_only_with_groups_off_other_nics_are_tracked_too() {
    let lab = lab();
    let config = two_nic_config(
        "failure_detection_time_ms = 700\ntrack_interfaces_only_with_groups = false",
    );
    let mut daemon = Mpathd::start(lab.host(), &config);
    let h2 = |d: &Mpathd| {
        d.try_status().and_then(|s| {
            s.interfaces
                .into_iter()
                .find(|i| i.interface == "h2")
                .map(|i| (i.group, i.link, i.state))
        })
    };
    daemon.wait_until("h2 tracked", |d| h2(d).is_some());
    assert_eq!(
        h2(&daemon).unwrap(),
        ("".into(), LinkState::Up, InterfaceStatus::Ok)
    );
    lab.cut("h2").unwrap();
    daemon.wait_until("h2's link down reported", |d| {
        h2(d).is_some_and(|(_, link, state)| {
            link == LinkState::Down && state == InterfaceStatus::Failed
        })
    });
    assert!(daemon.log().contains("The link has gone down on h2"));
    let text = daemon.ctl(lab.host(), &["interfaces", "-o", "interface,group,link"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().eq(["h2", "--", "down"])),
        "{text}"
    );

    // With the default (on), NICs outside the groups are not even listed.
    let only_groups = Mpathd::start(lab.host(), &config.replace("= false", "= true"));
    let names: Vec<String> = only_groups
        .status()
        .interfaces
        .into_iter()
        .map(|i| i.interface)
        .collect();
    assert_eq!(names, ["h0", "h1"]);
}

#[test]
fn sighup_applies_the_difference_and_refuses_a_bad_file() {
    let lab = lab();
    let mut daemon = Mpathd::start_all_ok(lab.host(), &CONFIG);
    let h2 = lab.host().ifindex("h2").unwrap();

    // h1 gains an address, h0 loses its IPv6 one, h2 leaves the group.
    let changed = CONFIG
        .replace(
            r#"data_addresses = ["192.0.2.20/24"]"#,
            r#"data_addresses = ["192.0.2.20/24", "192.0.2.30/24"]"#,
        )
        .replace(r#", "2001:db8::19/64""#, "");
    let changed = &changed[..changed.find("[[group.interface]]\nname = \"h2\"").unwrap()];
    daemon.reload(changed);
    daemon.wait_until("192.0.2.30 on h1, h2 gone", |d| {
        d.try_status().is_some_and(|s| {
            inbound(&s, "192.0.2.30/24") == Some("h1")
                && s.interfaces.iter().all(|i| i.interface != "h2")
        })
    });
    assert!(
        lab.host_addrs("h1")
            .unwrap()
            .contains(&"192.0.2.30/24".to_string())
    );
    assert!(
        !lab.host_addrs("h0")
            .unwrap()
            .contains(&"2001:db8::19/64".to_string())
    );
    assert!(
        lab.host_addrs("h2").unwrap().is_empty(),
        "h2's test address removed"
    );
    let maps = Maps::open_pinned(&PinLayout::new(daemon.pins.path()).maps()).unwrap();
    assert!(
        maps.nics().unwrap().iter().all(|(i, _)| *i != h2),
        "h2 left the datapath"
    );
    assert_eq!(inbound(&daemon.status(), "192.0.2.19/24"), Some("h0"));

    // A broken file is refused and changes nothing (probing and target discovery go on, so
    // compare what a reload could change).
    let before = daemon.status();
    let before = (before.groups, before.addresses);
    daemon.reload("[daemon]\nfailure_detection_time_ms = 5\n");
    daemon.wait_until("the refusal logged", |d| d.log().contains("reload refused"));
    assert!(
        daemon
            .log()
            .contains("mpathd.toml:2:29: failure detection time 5 ms is below the minimum"),
        "{}",
        daemon.log()
    );
    let after = daemon.status();
    assert_eq!((after.groups, after.addresses), before);

    // `mpathctl reload` (the unit's ExecReload=) waits for the result: exit 1 with the
    // reason for the same file, exit 0 once it is fixed.
    let socket = daemon.socket.display().to_string();
    let refused = daemon.ctl(lab.host(), &["--socket", &socket, "reload"]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("reload refused, the running configuration stays")
            && stderr.contains("failure detection time 5 ms is below the minimum"),
        "{stderr}"
    );
    let after = daemon.status();
    assert_eq!((after.groups, after.addresses), before);
    daemon.reload(changed);
    let unchanged = daemon.ctl(lab.host(), &["--socket", &socket, "reload"]);
    assert!(unchanged.status.success(), "{unchanged:?}");
    assert_eq!(
        String::from_utf8_lossy(&unchanged.stdout).trim(),
        "the configuration is unchanged"
    );
}

#[test]
fn a_nic_that_disappears_fails_over_and_one_that_appears_late_joins() {
    let mut lab = Lab::builder().nics(2).build().expect("lab");
    // h2 is configured but missing at start.
    let mut daemon = Mpathd::start(lab.host(), &CONFIG);
    daemon.wait_until("h0 and h1 ok, h2 missing", |d| {
        d.try_status().is_some_and(|s| {
            state_of(&s, "h0") == Some(InterfaceStatus::Ok)
                && state_of(&s, "h1") == Some(InterfaceStatus::Ok)
                && state_of(&s, "h2") == Some(InterfaceStatus::Missing)
        })
    });
    assert_eq!(daemon.status().groups[0].unusable, ["h2"]);

    assert_eq!(lab.add_nic().unwrap(), "h2");
    daemon.wait_until("h2 joined as the standby", |d| {
        d.try_status().is_some_and(|s| {
            state_of(&s, "h2") == Some(InterfaceStatus::Ok) && s.groups[0].inactive == ["h2"]
        })
    });
    assert!(
        lab.host_addrs("h2")
            .unwrap()
            .contains(&"192.0.2.23/32".to_string())
    );

    lab.remove_nic("h0").unwrap();
    daemon.wait_until("h0's addresses on h2", |d| {
        d.try_status().is_some_and(|s| {
            state_of(&s, "h0") == Some(InterfaceStatus::Missing)
                && inbound(&s, "192.0.2.19/24") == Some("h2")
                && inbound(&s, "2001:db8::19/64") == Some("h2")
        })
    });
    lab.router()
        .run(&["ping", "-c1", "-W2", "192.0.2.19"])
        .unwrap();
    let log = daemon.log();
    assert!(
        log.contains("NIC h0 of group g0 has been removed from the system"),
        "{log}"
    );
    // The kernel takes a deleted NIC's addresses with it: no tampering, nothing to restore.
    assert!(
        !log.contains("behind mpathd's back") && !log.contains("cannot restore"),
        "{log}"
    );

    // Back under the same name (a new ifindex): it rejoins and takes its addresses back.
    assert_eq!(lab.add_nic().unwrap(), "h0");
    daemon.wait_until("h0 back home", |d| {
        d.try_status().is_some_and(|s| {
            state_of(&s, "h0") == Some(InterfaceStatus::Ok)
                && inbound(&s, "192.0.2.19/24") == Some("h0")
        })
    });
    lab.router()
        .run(&["ping", "-c1", "-W2", "192.0.2.19"])
        .unwrap();
}

#[test]
fn a_renamed_nic_leaves_its_group_with_what_mpathd_put_on_it_and_rejoins_under_its_name() {
    let lab = lab();
    let mut daemon = Mpathd::start_all_ok(lab.host(), &CONFIG);
    // While up, as Linux allows since 6.2 (an older kernel wants the link down first).
    let rename = |from: &str, to: &str| {
        if lab.host().ip(&["link", "set", from, "name", to]).is_err() {
            for args in [
                &["link", "set", from, "down"][..],
                &["link", "set", from, "name", to],
                &["link", "set", to, "up"],
            ] {
                lab.host().ip(args).unwrap();
            }
        }
    };
    rename("h0", "eth9");
    daemon.wait_until("h0 missing, its addresses moved", |d| {
        d.try_status().is_some_and(|s| {
            state_of(&s, "h0") == Some(InterfaceStatus::Missing)
                && inbound(&s, "192.0.2.19/24").is_some_and(|n| n != "h0")
        })
    });
    let log = daemon.log();
    assert!(
        log.contains("NIC h0 of group g0 was renamed eth9: it leaves the group"),
        "{log}"
    );
    // Under its new name it is nobody's group NIC: no address or program of mpathd's.
    let addrs = lab.host().ip(&["addr", "show", "dev", "eth9"]).unwrap();
    assert!(
        !addrs.contains("192.0.2.19") && !addrs.contains("192.0.2.21"),
        "{addrs}"
    );
    let on_it = hooks(lab.host(), "eth9");
    assert!(!on_it.has_any_mpath_program(), "{on_it:?}");
    lab.router()
        .run(&["ping", "-c1", "-W2", "192.0.2.19"])
        .unwrap();

    rename("eth9", "h0");
    daemon.wait_until("h0 back, its address home", |d| {
        d.try_status().is_some_and(|s| {
            state_of(&s, "h0") == Some(InterfaceStatus::Ok)
                && inbound(&s, "192.0.2.19/24") == Some("h0")
        })
    });
    assert!(has_address(&lab, "h0", "192.0.2.21/32"));
}

#[test]
fn a_nic_without_probe_targets_is_reported_and_so_is_its_first_target() {
    let lab = lab();
    // No `targets`, no route through the router, and a router that ignores echoes to
    // 224.0.0.1 (Linux's default): nothing for IPv4 probes to probe.
    lab.router()
        .run(&["sysctl", "-qw", "net.ipv4.icmp_echo_ignore_broadcasts=1"])
        .unwrap();
    let config = CONFIG.replace("targets = [\"192.0.2.1\"]\n", "");
    let mut daemon = Mpathd::start(lab.host(), &config);
    daemon.wait_until("the missing IPv4 targets reported", |d| {
        d.log().contains("h0 has had no IPv4 probe target for 10 s")
    });
    let log = daemon.log();
    assert!(log.contains("its IPv4 failures go unnoticed"), "{log}");
    assert!(!log.contains("no IPv6 probe target"), "{log}");
    lab.host()
        .ip(&["route", "add", "default", "via", "192.0.2.1", "dev", "h0"])
        .unwrap();
    daemon.wait_until("the router taken as a target", |d| {
        d.log().contains("h0 has an IPv4 probe target again")
    });
}

#[test]
fn probes_stream_and_the_socket_refuses_other_users() {
    use std::io::{BufRead as _, BufReader};
    let lab = lab();
    let daemon = Mpathd::start_all_ok(lab.host(), &CONFIG);
    let mut probes = daemon
        .ctl_command(lab.host(), &["probes", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(probes.stdout.take().unwrap()).lines();
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 3 {
        let row: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        // An emulated guest can be slow enough for a probe to count as lost: no round trip.
        if row["rtt_us"].is_null() && mpath_lab::time_scale() > 1 {
            continue;
        }
        // IPv4 probes go to the configured target, IPv6 ones to the router's link-local
        // address found by discovery.
        let target = row["target"].as_str().unwrap();
        assert!(
            target == "192.0.2.1" || target.starts_with("fe80::"),
            "{row}"
        );
        // The kernel's round trip (stamped as the probe left and as the reply arrived) is
        // inside the one mpathd saw (from its send to its handling of the reply).
        let net_rtt = row["net_rtt_us"].as_u64().expect("NETRTT");
        let rtt = row["rtt_us"].as_u64().expect("RTT");
        assert!(net_rtt <= rtt, "{row}");
        seen.insert(row["interface"].as_str().unwrap().to_string());
    }
    assert_eq!(seen, ["h0", "h1", "h2"].map(String::from).into());
    probes.kill().unwrap();
    probes.wait().unwrap();

    // Without a group mpath the socket is root's only: by mode, and by the daemon checking
    // the peer for the commands.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&daemon.socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let nobody = as_user(65534, &[], &daemon, &["groups"]);
    assert_eq!(nobody.status.code(), Some(1), "{nobody:?}");
    let stderr = String::from_utf8_lossy(&nobody.stderr);
    assert!(
        stderr.contains("no permission to connect to") && stderr.contains("group mpath"),
        "{stderr}"
    );

    // Even through a socket someone opened up, the daemon refuses commands by the peer's uid.
    std::fs::set_permissions(&daemon.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let nobody = as_user(65534, &[], &daemon, &["offline", "h0"]);
    assert!(!nobody.status.success());
    let stderr = String::from_utf8_lossy(&nobody.stderr);
    assert!(
        stderr.contains(
            "only root may take NICs offline or online or reload mpathd (you are uid 65534)"
        ),
        "{stderr}"
    );
    assert_eq!(
        state_of(&daemon.status(), "h0"),
        Some(InterfaceStatus::Ok),
        "nothing happened"
    );
}

/// mpathctl against `daemon`'s socket as user `uid` (its own group) in `groups`.
fn as_user(uid: u32, groups: &[u32], daemon: &Mpathd, args: &[&str]) -> std::process::Output {
    let groups = match groups {
        [] => "--clear-groups".to_string(),
        _ => format!(
            "--groups={}",
            groups
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ),
    };
    std::process::Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg(groups)
        .arg(mpath_tests::daemon::binary("mpathctl"))
        .arg("--socket")
        .arg(&daemon.socket)
        .args(args)
        .output()
        .unwrap()
}

/// With a group mpath (in mpathd's view of /etc/group) its members get the views, as
/// /proc/net/bonding is world-readable, and are refused the commands; others cannot connect.
#[test]
fn members_of_group_mpath_may_use_the_views_and_only_root_the_commands() {
    const MPATH_GID: u32 = 64_123;
    let lab = lab();
    let dir = std::env::temp_dir().join(format!("mpath-group-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let group_file = dir.join("group");
    let mut groups = std::fs::read_to_string("/etc/group").unwrap();
    groups += &format!("mpath:x:{MPATH_GID}:\n");
    std::fs::write(&group_file, groups).unwrap();
    let setup = format!("mount --bind {} /etc/group &&", group_file.display());
    let mut daemon = Mpathd::start_with_setup(lab.host(), &CONFIG, &[], &setup);
    daemon.wait_until("all NICs ok", all_ok);
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let socket = std::fs::metadata(&daemon.socket).unwrap();
    assert_eq!(socket.permissions().mode() & 0o777, 0o660);
    assert_eq!(socket.gid(), MPATH_GID);

    let member = 64_124;
    let interfaces = as_user(member, &[MPATH_GID], &daemon, &["interfaces"]);
    assert!(interfaces.status.success(), "{interfaces:?}");
    assert!(String::from_utf8_lossy(&interfaces.stdout).contains("h0"));
    let offline = as_user(member, &[MPATH_GID], &daemon, &["offline", "h0"]);
    assert_eq!(offline.status.code(), Some(1), "{offline:?}");
    assert_eq!(
        String::from_utf8_lossy(&offline.stderr).trim(),
        format!(
            "mpathctl: only root may take NICs offline or online or reload mpathd (you are \
             uid {member}); members of group mpath may use the views"
        )
    );
    assert_eq!(
        state_of(&daemon.status(), "h0"),
        Some(InterfaceStatus::Ok),
        "nothing happened"
    );
    let reload = as_user(member, &[MPATH_GID], &daemon, &["reload"]);
    assert_eq!(reload.status.code(), Some(1), "{reload:?}");
    assert!(
        String::from_utf8_lossy(&reload.stderr).contains("only root may"),
        "{reload:?}"
    );
    let outsider = as_user(64_125, &[], &daemon, &["groups"]);
    assert_eq!(outsider.status.code(), Some(1), "{outsider:?}");
    assert!(String::from_utf8_lossy(&outsider.stderr).contains("no permission to connect"));
    // Root may do both.
    let root = daemon.ctl(lab.host(), &["offline", "h0"]);
    assert!(root.status.success(), "{root:?}");
    assert_eq!(
        state_of(&daemon.status(), "h0"),
        Some(InterfaceStatus::Offline)
    );
    drop(daemon);
    std::fs::remove_dir_all(dir).unwrap();
}

fn addresses_at(status: &Status) -> Vec<(String, Option<String>)> {
    status
        .addresses
        .iter()
        .map(|a| (a.address.clone(), a.inbound.clone()))
        .collect()
}

#[test]
fn when_every_nic_fails_nothing_moves_and_the_first_one_back_takes_the_addresses() {
    let lab = lab();
    let mut daemon = Mpathd::start_all_ok(lab.host(), &CONFIG);
    let home = addresses_at(&daemon.status());
    lab.cut("h0").unwrap();
    lab.cut("h1").unwrap();
    daemon.wait_until("everything failed over to h2", |d| {
        d.try_status().is_some_and(|s| {
            s.addresses
                .iter()
                .all(|a| a.inbound.as_deref() == Some("h2"))
        })
    });
    let on_h2 = addresses_at(&daemon.status());
    lab.cut("h2").unwrap();
    daemon.wait_until("the group failed", |d| {
        d.try_status()
            .is_some_and(|s| s.groups[0].state == GroupState::Failed)
    });
    assert_eq!(
        addresses_at(&daemon.status()),
        on_h2,
        "nothing moved, nothing lost"
    );
    assert!(
        daemon
            .log()
            .contains("All Interfaces in group g0 have failed")
    );
    for a in ["192.0.2.19/24", "192.0.2.20/24", "2001:db8::19/64"] {
        assert!(
            lab.host_addrs("h2").unwrap().contains(&a.to_string()),
            "{a} kept"
        );
    }

    lab.restore("h0").unwrap();
    daemon.wait_until("every address on h0, the first NIC back", |d| {
        d.try_status().is_some_and(|s| {
            s.addresses
                .iter()
                .all(|a| a.inbound.as_deref() == Some("h0"))
        })
    });
    lab.router()
        .run(&["ping", "-c1", "-W2", "192.0.2.20"])
        .unwrap();
    lab.restore("h1").unwrap();
    lab.restore("h2").unwrap();
    daemon.wait_until("all home again", |d| {
        d.try_status()
            .is_some_and(|s| addresses_at(&s) == home && all_ok(d))
    });
}

/// The router ignores every echo request (both families); every link stays up.
fn deafen_router(lab: &Lab) {
    lab.router()
        .run(&[
            "nft",
            "add table inet deaf; add chain inet deaf input { type filter hook input priority 0; \
             icmp type echo-request drop; icmpv6 type echo-request drop; }",
        ])
        .unwrap();
}

#[test]
fn when_all_targets_stop_answering_no_address_moves() {
    let lab = lab();
    let mut daemon = Mpathd::start_all_ok(lab.host(), &CONFIG);
    let home = addresses_at(&daemon.status());
    deafen_router(&lab);
    daemon.wait_until("target failure noticed", |d| {
        d.log().contains("stopped answering at once")
    });
    assert_eq!(addresses_at(&daemon.status()), home, "nothing moved");
    assert!(!daemon.log().contains("Successfully failed over"));
    assert!(
        !daemon.log().contains("NIC failure detected"),
        "no NIC is blamed"
    );

    lab.router()
        .run(&["nft", "delete table inet deaf"])
        .unwrap();
    daemon.wait_until("probes answered again, all ok", all_ok);
    assert_eq!(addresses_at(&daemon.status()), home);
    // The NICs came back within a probe interval of each other: the first one repaired
    // took none of the others' addresses.
    assert!(
        !daemon.log().contains("Successfully failed over"),
        "{}",
        daemon.log()
    );
}

/// The Solaris guide: "If the default router is down, none of the interfaces in the IPMP
/// group will get a reply to the "ping," and no failover will occur. in.mpathd will then
/// ping the multicast-to-all address and choose a host from those that respond."
#[test]
fn hosts_that_answer_the_all_hosts_echo_stand_in_for_a_silent_router() {
    let mut lab = lab();
    let peer = "192.0.2.50";
    lab.add_peer(&format!("{peer}/24"))
        .unwrap()
        .run(&["sysctl", "-qw", "net.ipv6.conf.p0.disable_ipv6=1"])
        .unwrap();
    let mut daemon = Mpathd::start_all_ok(lab.host(), &CONFIG);
    let home = addresses_at(&daemon.status());
    deafen_router(&lab);
    daemon.wait_until("target failure noticed", |d| {
        d.log().contains("stopped answering at once")
    });
    let stands_in = |d: &Mpathd| {
        d.try_status().is_some_and(|s| {
            ["h0", "h1", "h2"].iter().all(|nic| {
                s.targets.iter().any(|t| {
                    t.interface == *nic
                        && t.mode == TargetMode::Multicast
                        && t.targets.contains(&peer.parse().unwrap())
                        && t.health.iter().any(|h| {
                            h.address.to_string() == peer && h.source == TargetSource::StandIn
                        })
                })
            })
        })
    };
    daemon.wait_until("the peer stands in on every NIC", stands_in);
    daemon.wait_until("every NIC repaired through the stand-in", all_ok);
    let status = daemon.status();
    assert_eq!(status.groups[0].state, GroupState::Ok);
    assert_eq!(addresses_at(&status), home, "nothing moved");
    let log = daemon.log();
    assert!(
        log.contains(&format!(
            "probe target {peer} on h0 stands in for the silent"
        )),
        "{log}"
    );
    assert!(!log.contains("Successfully failed over"), "{log}");
    assert!(
        !log.contains("NIC failure detected"),
        "no NIC is blamed: {log}"
    );
    // The stand-ins keep detecting: a NIC that goes silent now fails alone and its
    // addresses move.
    lab.drop_silently("h0").unwrap();
    daemon.wait_until("192.0.2.19 moved off h0", |d| {
        d.try_status().is_some_and(|s| {
            state_of(&s, "h0") == Some(InterfaceStatus::Failed)
                && inbound(&s, "192.0.2.19/24") != Some("h0")
        })
    });
    assert_eq!(daemon.status().groups[0].state, GroupState::Degraded);
}

#[test]
fn with_failback_off_a_repaired_nic_stays_inactive_and_its_addresses_stay_away() {
    let lab = lab();
    let mut daemon = Mpathd::start(
        lab.host(),
        &CONFIG.replace("failback = true", "failback = false"),
    );
    daemon.wait_until("all NICs ok", all_ok);
    lab.cut("h0").unwrap();
    daemon.wait_until("192.0.2.19 on h2", |d| {
        d.try_status()
            .is_some_and(|s| inbound(&s, "192.0.2.19/24") == Some("h2"))
    });
    lab.restore("h0").unwrap();
    daemon.wait_until("h0 repaired", |d| {
        d.try_status()
            .is_some_and(|s| state_of(&s, "h0") == Some(InterfaceStatus::Ok))
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    let status = daemon.status();
    assert_eq!(inbound(&status, "192.0.2.19/24"), Some("h2"), "no failback");
    let h0 = status
        .interfaces
        .iter()
        .find(|i| i.interface == "h0")
        .unwrap();
    assert_eq!(h0.flags, [InterfaceFlag::Inactive], "{h0:?}");
    assert_eq!(status.groups[0].active, ["h1", "h2"]);
    assert!(!daemon.log().contains("Successfully failed back"));
}

#[test]
fn ipv6_probes_from_link_local_addresses_and_one_family_alone_fails_no_nic() {
    let lab = lab();
    let mut daemon = Mpathd::start(lab.host(), &CONFIG);
    daemon.wait_until("IPv6 targets found on every NIC", v6_targets_found);
    let v6 = daemon
        .status()
        .targets
        .into_iter()
        .find(|t| t.interface == "h0" && t.mode == TargetMode::Multicast);
    assert!(
        v6.is_some(),
        "the IPv6 target was discovered by an echo to ff02::1"
    );
    daemon.wait_until("all NICs ok", all_ok);

    // The target stops answering IPv6 echoes only: IPv4 probes still answer, so no NIC fails.
    lab.router()
        .run(&[
            "nft",
            "add table inet deaf6; add chain inet deaf6 input { type filter hook input \\
             priority 0; icmpv6 type echo-request drop; }",
        ])
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(all_ok(&daemon), "{:?}", daemon.status().interfaces);
    assert!(!daemon.log().contains("NIC failure detected"));
    assert!(!daemon.log().contains("Successfully failed over"));
}

#[test]
fn a_family_that_fails_alone_is_shown_and_warned_about_while_the_other_holds_the_nic() {
    let lab = lab();
    let mut daemon = Mpathd::start(lab.host(), &CONFIG);
    daemon.wait_until("IPv6 targets found on every NIC", v6_targets_found);
    daemon.wait_until("all NICs ok", all_ok);
    let h0 = |d: &Mpathd| {
        d.try_status()
            .and_then(|s| s.interfaces.into_iter().find(|i| i.interface == "h0"))
    };
    // The router stops answering h0's IPv4 probes only: IPv6 keeps h0 up (in.mpathd's rule),
    // and its IPv4 traffic is at risk, which the views, the log and the metrics must show.
    lab.router()
        .run(&[
            "nft",
            "add table ip deaf4; add chain ip deaf4 input { type filter hook input \\
             priority 0; ip saddr 192.0.2.21 icmp type echo-request drop; }",
        ])
        .unwrap();
    daemon.wait_until("h0's IPv4 probing failed", |d| {
        h0(d).is_some_and(|i| i.probe_ipv4 == Some(ProbeStatus::Failed))
    });
    let row = h0(&daemon).unwrap();
    assert_eq!(
        (row.state, row.probe, row.probe_ipv6),
        (InterfaceStatus::Ok, ProbeStatus::Ok, Some(ProbeStatus::Ok)),
        "{row:?}"
    );
    assert!(daemon.log().contains(
        "IPv4 probes on h0 of group g0 have failed while IPv6 probes answer: h0 stays in use"
    ));
    assert!(!daemon.log().contains("NIC failure detected"));
    let out = daemon.ctl(
        lab.host(),
        &["-o", "interface,probe,probe4,probe6", "interfaces"],
    );
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["h0", "ok", "failed", "ok"]),
        "{out:?}"
    );

    lab.router().run(&["nft", "delete table ip deaf4"]).unwrap();
    daemon.wait_until("h0's IPv4 probing back", |d| {
        h0(d).is_some_and(|i| i.probe_ipv4 == Some(ProbeStatus::Ok))
    });
    assert!(
        daemon
            .log()
            .contains("IPv4 probes on h0 of group g0 answer again")
    );
}

#[test]
fn an_offlined_nic_stays_offline_across_kill_9_and_restart() {
    let lab = lab();
    let mut daemon = Mpathd::start_all_ok(lab.host(), &CONFIG);
    let offline = daemon.ctl(lab.host(), &["offline", "h1"]);
    assert!(offline.status.success(), "{offline:?}");
    daemon.wait_until("192.0.2.20 off h1", |d| {
        d.try_status()
            .is_some_and(|s| inbound(&s, "192.0.2.20/24").is_some_and(|nic| nic != "h1"))
    });
    daemon.kill();
    daemon.spawn(lab.host());
    let status = daemon.status();
    assert_eq!(
        state_of(&status, "h1"),
        Some(InterfaceStatus::Offline),
        "{:?}",
        status.interfaces
    );
    assert_ne!(inbound(&status, "192.0.2.20/24"), Some("h1"));
    assert!(
        daemon
            .log()
            .contains("h1 stays offline, as an operator left it")
    );
    // Back online by the operator: the mark goes, and another restart keeps it online.
    let online = daemon.ctl(lab.host(), &["online", "h1"]);
    assert!(online.status.success(), "{online:?}");
    daemon.wait_until("h1 ok again", all_ok);
    daemon.kill();
    daemon.spawn(lab.host());
    daemon.wait_until("all NICs ok after the second restart", all_ok);
}

/// Columns of a view as printed, with runs of spaces collapsed (widths are the table's
/// business; the cells and their order are the contract).
fn cells(text: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(text)
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

#[test]
fn golden_views_of_a_degraded_group() {
    use serde_json::json;
    let lab = lab();
    let mut daemon = Mpathd::start_all_ok(lab.host(), &CONFIG);
    daemon.wait_until("IPv6 targets found on every NIC", v6_targets_found);
    lab.cut("h0").unwrap();
    daemon.wait_until("h0's addresses on h2", |d| {
        d.try_status()
            .is_some_and(|s| inbound(&s, "2001:db8::19/64") == Some("h2"))
    });
    let view = |args: &[&str]| {
        let out = daemon.ctl(lab.host(), args);
        assert!(out.status.success(), "mpathctl {args:?}: {out:?}");
        out.stdout
    };

    assert_eq!(
        cells(&view(&["groups"])),
        ["GROUP STATE FDT INTERFACES", "g0 degraded 0.70s h1 h2 [h0]"]
    );
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&view(&["groups", "--json"])).unwrap(),
        json!([{"group": "g0", "state": "degraded", "fdt_ms": 700, "active": ["h1", "h2"],
                "inactive": [], "unusable": ["h0"], "held_routes": []}])
    );
    assert_eq!(
        cells(&view(&["interfaces"])),
        [
            "INTERFACE ACTIVE GROUP FLAGS LINK PROBE PROBE4 PROBE6 STATE UNUSABLE",
            "h0 no g0 -------- down unknown unknown unknown failed link_down",
            "h1 yes g0 -------- up ok ok ok ok --",
            "h2 yes g0 -s------ up ok ok ok ok --",
        ]
    );
    // ipmpstat -P: for scripts, the -o fields without a header, colons escaped.
    assert_eq!(
        String::from_utf8(view(&[
            "-P",
            "-o",
            "interface,flags,state",
            "interfaces",
            "-n"
        ]))
        .unwrap(),
        "h0:--------:failed\nh1:--------:ok\nh2:-s------:ok\n"
    );
    assert_eq!(
        String::from_utf8(view(&["addresses", "-Po", "address,inbound"])).unwrap(),
        "192.0.2.19/24:h2\n2001\\:db8\\:\\:19/64:h2\n192.0.2.20/24:h1\n"
    );
    let without_fields = daemon.ctl(lab.host(), &["interfaces", "-P"]);
    assert_eq!(without_fields.status.code(), Some(2), "{without_fields:?}");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&view(&["interfaces", "--json"])).unwrap(),
        json!([
            {"interface": "h0", "group": "g0", "active": false, "flags": ["failed"],
             "link": "down", "probe": "unknown", "probe_ipv4": "unknown",
             "probe_ipv6": "unknown", "state": "failed", "unusable": "link_down"},
            {"interface": "h1", "group": "g0", "active": true, "flags": [],
             "link": "up", "probe": "ok", "probe_ipv4": "ok", "probe_ipv6": "ok",
             "state": "ok", "unusable": null},
            {"interface": "h2", "group": "g0", "active": true, "flags": ["standby"],
             "link": "up", "probe": "ok", "probe_ipv4": "ok", "probe_ipv6": "ok",
             "state": "ok", "unusable": null},
        ])
    );
    assert_eq!(
        cells(&view(&["addresses"])),
        [
            "ADDRESS STATE GROUP INBOUND OUTBOUND",
            "192.0.2.19/24 up g0 h2 h1 h2",
            "2001:db8::19/64 up g0 h2 h1 h2",
            "192.0.2.20/24 up g0 h1 h1 h2",
        ]
    );
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&view(&["addresses", "--json"])).unwrap()[0],
        json!({"address": "192.0.2.19/24", "state": "up", "group": "g0", "inbound": "h2",
               "outbound": ["h1", "h2"]})
    );
    // Link-local addresses differ per run: compare the IPv4 rows and the shape of the rest.
    let targets = cells(&view(&["targets", "-o", "interface,mode,testaddr,targets"]));
    assert_eq!(targets[0], "INTERFACE MODE TESTADDR TARGETS");
    for nic in ["h0", "h1", "h2"] {
        let v4 = format!(
            "{nic} routes 192.0.2.{} 192.0.2.1",
            21 + (nic.as_bytes()[1] - b'0')
        );
        assert!(targets.contains(&v4), "{v4} in {targets:?}");
        assert!(
            targets
                .iter()
                .any(|l| l.starts_with(&format!("{nic} multicast fe80::"))),
            "{targets:?}"
        );
    }
    let json: serde_json::Value = serde_json::from_slice(&view(&["targets", "--json"])).unwrap();
    assert_eq!(json[0]["interface"], "h0");
    assert_eq!(json[0]["test_address"], "192.0.2.21");
    assert_eq!(json[0]["targets"], json!(["192.0.2.1"]));
    // Beyond ipmpstat: each target's health, set-aside ones included.
    let health = &json[0]["health"][0];
    assert_eq!(
        (&health["address"], &health["source"], &health["state"]),
        (&json!("192.0.2.1"), &json!("configured"), &json!("active"))
    );
    assert!(health["sent"].as_u64().unwrap() > 0, "{health}");
    assert!(json[0]["unknown_replies"].is_u64());

    let bash = view(&["completions", "bash"]);
    let bash = String::from_utf8_lossy(&bash);
    assert!(
        bash.contains("_mpathctl()") && bash.contains("offline"),
        "{bash}"
    );
}

#[test]
fn open_tcp_connections_survive_failover_and_failback_and_test_addresses_are_never_sources() {
    use std::{
        io::{Read as _, Write as _},
        net::{TcpListener, TcpStream, UdpSocket},
        time::Duration,
    };
    let lab = lab();
    let mut daemon = Mpathd::start_all_ok(lab.host(), &CONFIG);

    // Applications never get a test address as source: whatever they talk to, the kernel
    // picks a data address.
    {
        let _inside = lab.host().enter().unwrap();
        for peer in ["192.0.2.1:9", "192.0.2.77:9", "198.51.100.1:9"] {
            let probe = UdpSocket::bind("0.0.0.0:0").unwrap();
            if probe.connect(peer).is_ok() {
                let source = probe.local_addr().unwrap().ip().to_string();
                assert!(
                    ["192.0.2.19", "192.0.2.20"].contains(&source.as_str()),
                    "{peer}: source {source}"
                );
            }
        }
    }

    let listener = {
        let _inside = lab.host().enter().unwrap();
        TcpListener::bind("192.0.2.19:5001").unwrap()
    };
    let mut client = {
        let _inside = lab.router().enter().unwrap();
        TcpStream::connect_timeout(&"192.0.2.19:5001".parse().unwrap(), Duration::from_secs(5))
            .unwrap()
    };
    let (mut server, _) = listener.accept().unwrap();
    for s in [&client, &server] {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    }
    let mut exchange = |round: u8| {
        client.write_all(&[round; 1000]).unwrap();
        let mut buf = [0u8; 1000];
        server.read_exact(&mut buf).unwrap();
        assert!(buf.iter().all(|b| *b == round));
        server.write_all(&[round + 100; 1000]).unwrap();
        client.read_exact(&mut buf).unwrap();
        assert!(buf.iter().all(|b| *b == round + 100));
    };
    exchange(1);
    lab.cut("h0").unwrap();
    daemon.wait_until("192.0.2.19 on h2", |d| {
        d.try_status()
            .is_some_and(|s| inbound(&s, "192.0.2.19/24") == Some("h2"))
    });
    exchange(2);
    lab.restore("h0").unwrap();
    daemon.wait_until("192.0.2.19 back on h0", |d| {
        d.try_status()
            .is_some_and(|s| inbound(&s, "192.0.2.19/24") == Some("h0"))
    });
    exchange(3);
}

#[test]
fn a_data_address_deleted_behind_mpathds_back_is_restored() {
    let lab = lab();
    let mut daemon = Mpathd::start_all_ok(lab.host(), &CONFIG);
    lab.del_host_addr("h1", "192.0.2.20/24").unwrap();
    daemon.wait_until("192.0.2.20 back on h1", |_| {
        lab.host_addrs("h1")
            .unwrap()
            .contains(&"192.0.2.20/24".to_string())
    });
    assert!(
        daemon
            .log()
            .contains("192.0.2.20/24 was removed from h1 behind mpathd's back")
    );
    lab.router()
        .run(&["ping", "-c1", "-W2", "192.0.2.20"])
        .unwrap();
}

#[test]
fn a_data_address_added_to_another_nic_behind_mpathds_back_is_removed_there() {
    let lab = lab();
    let mut daemon = Mpathd::start_all_ok(lab.host(), &CONFIG);
    lab.add_host_addr("h1", "192.0.2.19/24").unwrap();
    wait_for_the_copy_on_h1_to_go(&lab, &mut daemon);
    assert!(
        daemon
            .log()
            .contains("192.0.2.19/24 was added to h1 behind mpathd's back; it lives on h0")
    );
    // mpathd's own moves are not taken for someone else's: a failover and a failback in
    // quick succession leave the address at home, once, and nothing restored.
    lab.cut("h0").unwrap();
    lab.restore("h0").unwrap();
    daemon.wait_until("192.0.2.19 back on h0", |d| {
        d.try_status()
            .is_some_and(|s| inbound(&s, "192.0.2.19/24") == Some("h0") && all_ok(d))
    });
    let log = daemon.log();
    assert!(!log.contains("restoring it"), "{log}");
    assert_eq!(log.matches("behind mpathd's back").count(), 1, "{log}");
    for nic in ["h1", "h2"] {
        assert!(!has_address(&lab, nic, "192.0.2.19/24"));
    }
}

fn has_address(lab: &Lab, nic: &str, cidr: &str) -> bool {
    lab.host_addrs(nic).unwrap().iter().any(|a| a == cidr)
}

/// Waits until mpathd removed the copy of 192.0.2.19/24 someone put on h1, and checks that
/// the one on h0, its place, stayed.
fn wait_for_the_copy_on_h1_to_go(lab: &Lab, daemon: &mut Mpathd) {
    daemon.wait_until("the copy on h1 removed", |_| {
        !has_address(lab, "h1", "192.0.2.19/24")
    });
    assert!(has_address(lab, "h0", "192.0.2.19/24"));
    assert_eq!(inbound(&daemon.status(), "192.0.2.19/24"), Some("h0"));
}

#[test]
fn a_second_mpathd_is_refused_before_it_touches_anything() {
    let lab = lab();
    let daemon = Mpathd::start_all_ok(lab.host(), &CONFIG);
    let second = lab
        .host()
        .daemon_command(mpath_tests::daemon::binary("mpathd"))
        .unwrap()
        .arg("--config")
        .arg(&daemon.config)
        .args(["--defaults", "/nonexistent"])
        .output()
        .unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("another mpathd is running"), "{stderr}");
    // The first one's probe key was not replaced: its probes keep being answered.
    std::thread::sleep(std::time::Duration::from_millis(1200));
    assert!(all_ok(&daemon), "{:?}", daemon.status().interfaces);
    assert!(!daemon.log().contains("NIC failure detected"));
}

/// Probe replies the datapath matched and rejected as bad_tag, summed over every NIC.
fn matched_and_bad_tag(lab: &Lab, daemon: &Mpathd) -> (u64, u64) {
    let maps = daemon.ctl(lab.host(), &["maps", "--json"]);
    assert!(maps.status.success(), "{maps:?}");
    let dump: serde_json::Value = serde_json::from_slice(&maps.stdout).unwrap();
    let nics = dump["nics"].as_array().unwrap();
    let sum = |field: &dyn Fn(&serde_json::Value) -> u64| nics.iter().map(field).sum::<u64>();
    (
        sum(&|n| n["probe_replies"].as_u64().unwrap()),
        sum(&|n| n["rejected"]["bad_tag"].as_u64().unwrap()),
    )
}

#[test]
fn a_second_mpathd_on_the_same_pins_with_another_socket_is_refused() {
    let lab = lab();
    let mut daemon = Mpathd::start_all_ok(lab.host(), &CONFIG);
    let other_socket = daemon.dir.join("second.sock");
    let other_config = daemon.dir.join("second.toml");
    let text = std::fs::read_to_string(&daemon.config).unwrap().replace(
        &daemon.socket.display().to_string(),
        &other_socket.display().to_string(),
    );
    std::fs::write(&other_config, text).unwrap();
    let second = lab
        .host()
        .daemon_command(mpath_tests::daemon::binary("mpathd"))
        .unwrap()
        .arg("--config")
        .arg(&other_config)
        .args(["--defaults", "/nonexistent"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let second = std::cell::RefCell::new(second);
    daemon.wait_until("the second mpathd to exit", |_| {
        second.borrow_mut().try_wait().unwrap().is_some()
    });
    let second = second.into_inner().wait_with_output().unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    let pins = daemon.pins.path().display().to_string();
    let pid = daemon.pid().unwrap();
    assert!(
        stderr.contains(&format!(
            "another mpathd is running with pin directory {pins} (pid {pid})"
        )),
        "{stderr}"
    );
    assert!(!other_socket.exists(), "the refused one made its socket");
    // The first one's probe key and maps are untouched: the kernel keeps matching its
    // replies, none is taken for forged, and its NICs stay ok.
    let (matched, bad_tag) = matched_and_bad_tag(&lab, &daemon);
    daemon.wait_until("30 more probe replies matched", |d| {
        matched_and_bad_tag(&lab, d).0 >= matched + 30
    });
    assert_eq!(matched_and_bad_tag(&lab, &daemon).1, bad_tag);
    assert!(all_ok(&daemon), "{:?}", daemon.status().interfaces);
    assert!(!daemon.log().contains("NIC failure detected"));
}

/// Opens up to `count` idle connections to `socket` (non-blocking, so a full backlog does not
/// hang the test), raising this process's descriptor limit to make room for them.
fn idle_clients(socket: &std::path::Path, count: usize) -> Vec<std::os::fd::OwnedFd> {
    use std::os::{fd::FromRawFd as _, unix::ffi::OsStrExt as _};
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a valid struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max.max(limit.rlim_cur);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    assert!(limit.rlim_cur as usize > count + 100, "{limit:?}");
    // SAFETY: an all-zero sockaddr_un is valid; the path fits (checked).
    let mut address: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    address.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let path = socket.as_os_str().as_bytes();
    assert!(path.len() < address.sun_path.len());
    for (i, b) in path.iter().enumerate() {
        address.sun_path[i] = *b as libc::c_char;
    }
    let mut clients = Vec::new();
    for _ in 0..count {
        // SAFETY: plain syscalls; the descriptor is owned at once.
        let fd = unsafe {
            libc::socket(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        assert!(fd >= 0, "{}", std::io::Error::last_os_error());
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let rc = unsafe {
            libc::connect(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                (&raw const address).cast(),
                size_of::<libc::sockaddr_un>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            clients.push(fd);
        }
    }
    clients
}

/// mpathctl's output for `args` against `daemon`, or None when it fails or gives no answer
/// within 5 s: an mpathd out of descriptors leaves clients waiting in its backlog for ever,
/// and the test must go on to fail rather than hang.
fn ctl_or_give_up(daemon: &Mpathd, args: &[&str]) -> Option<Vec<u8>> {
    let output = std::process::Command::new("timeout")
        .arg("5")
        .arg(mpath_tests::daemon::binary("mpathctl"))
        .arg("--config")
        .arg(&daemon.config)
        .args(args)
        .output()
        .unwrap();
    output.status.success().then_some(output.stdout)
}

#[test]
fn idle_control_clients_cannot_starve_a_failover_or_the_views() {
    let lab = lab();
    let mut daemon = Mpathd::start_all_ok(lab.host(), &CONFIG);
    // systemd's default soft limit, which the issue's host ran mpathd with.
    let limit = libc::rlimit {
        rlim_cur: 1024,
        rlim_max: 1024,
    };
    // SAFETY: prlimit on our own child with a valid struct.
    let rc = unsafe {
        libc::prlimit(
            daemon.pid().unwrap() as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &limit,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    // The router knows 192.0.2.19 at h0's MAC: only an announcement can change its mind.
    lab.router()
        .run(&["ping", "-c1", "-W2", "192.0.2.19"])
        .unwrap();

    let clients = idle_clients(&daemon.socket, 1100);
    lab.cut("h0").unwrap();
    daemon.wait_until("192.0.2.19 on h2", |d| {
        ctl_or_give_up(d, &["addresses", "--json"]).is_some_and(|json| {
            let rows: Vec<AddressRow> = serde_json::from_slice(&json).unwrap();
            rows.iter()
                .any(|r| r.address == "192.0.2.19/24" && r.inbound.as_deref() == Some("h2"))
        })
    });
    let ping = lab.router().run(&["ping", "-c1", "-W2", "192.0.2.19"]);
    assert!(ping.is_ok(), "the move was not announced: {ping:?}");
    daemon.wait_until("mpathctl groups answers", |d| {
        ctl_or_give_up(d, &["groups"]).is_some()
    });
    drop(clients);
    let log = daemon.log();
    assert!(!log.contains("Too many open files"), "{log}");
    let refusals = log.matches("control clients connected already").count();
    assert!(
        (1..10).contains(&refusals),
        "{refusals} refusal lines: {log}"
    );
}

#[test]
fn a_nic_added_after_the_pin_directory_was_removed_gets_the_datapath() {
    let mut lab = Lab::builder().nics(2).build().expect("lab");
    // h2 is configured but missing at start.
    let mut daemon = Mpathd::start(lab.host(), &CONFIG);
    daemon.wait_until("h0 and h1 ok", |d| {
        d.try_status().is_some_and(|s| {
            state_of(&s, "h0") == Some(InterfaceStatus::Ok)
                && state_of(&s, "h1") == Some(InterfaceStatus::Ok)
        })
    });
    std::fs::remove_dir_all(daemon.pins.path()).unwrap();

    assert_eq!(lab.add_nic().unwrap(), "h2");
    // Only replies matched by its probe matcher can make h2 ok.
    daemon.wait_until("h2 joined as the standby", |d| {
        d.try_status().is_some_and(|s| {
            state_of(&s, "h2") == Some(InterfaceStatus::Ok) && s.groups[0].inactive == ["h2"]
        })
    });
    // The tc programs: pinned tcx links, or mpathd's cls_bpf filters on kernels without tcx.
    let on_h2 = hooks(lab.host(), "h2");
    assert!(on_h2.has_tc_programs(), "{on_h2:?}");
    // h0 and h1 lost their programs with the pins; mpathd noticed and attached them again.
    daemon.wait_until("h0 and h1 have their programs again", |_| {
        ["h0", "h1"]
            .iter()
            .all(|nic| hooks(lab.host(), nic).has_tc_programs())
    });
    assert!(
        daemon
            .log()
            .contains("mpathd's programs were taken off h0 behind its back"),
        "{}",
        daemon.log()
    );
    // The maps are pinned again: mpathctl (and a restarted mpathd) find them.
    let (h0, h1) = (
        lab.host().ifindex("h0").unwrap(),
        lab.host().ifindex("h1").unwrap(),
    );
    assert_eq!(shares(&daemon), [(h0, 128), (h1, 128)].into());
    assert!(daemon.log().contains("were removed while mpathd runs"));
}

#[test]
fn a_reload_that_rebuilds_a_group_keeps_an_offline_nic_offline() {
    let lab = lab();
    let mut daemon = Mpathd::start_all_ok(lab.host(), &CONFIG);
    let offline = daemon.ctl(lab.host(), &["offline", "h1"]);
    assert!(offline.status.success(), "{offline:?}");
    // A new FDT rebuilds every group.
    daemon.reload(&CONFIG.replace(
        "failure_detection_time_ms = 700",
        "failure_detection_time_ms = 800",
    ));
    daemon.wait_until("the new FDT in force", |d| {
        d.try_status().is_some_and(|s| s.groups[0].fdt_ms == 800)
    });
    let status = daemon.status();
    assert_eq!(
        state_of(&status, "h1"),
        Some(InterfaceStatus::Offline),
        "{:?}",
        status.interfaces
    );
    assert_eq!(inbound(&status, "192.0.2.20/24"), Some("h2"));
}

#[test]
fn a_restarted_mpathd_removes_a_second_copy_of_a_data_address() {
    let lab = lab();
    let mut daemon = Mpathd::start_all_ok(lab.host(), &CONFIG);
    daemon.kill();
    // As if the old daemon died between adding 192.0.2.19 to h1 and removing it from h0.
    lab.add_host_addr("h1", "192.0.2.19/24").unwrap();
    daemon.spawn(lab.host());
    wait_for_the_copy_on_h1_to_go(&lab, &mut daemon);
    assert!(
        daemon
            .log()
            .contains("removing a second copy of data address 192.0.2.19/24")
    );
}

#[test]
fn without_configured_targets_the_on_link_router_of_a_route_is_probed() {
    let lab = lab();
    let config = CONFIG.replace("targets = [\"192.0.2.1\"]\n", "");
    assert!(!config.contains("targets ="));
    let mut daemon = Mpathd::start(lab.host(), &config);
    daemon.wait_until("IPv6 targets found on every NIC", v6_targets_found);
    let h0_v4 = |d: &Mpathd| {
        d.try_status().and_then(|s| {
            s.targets.into_iter().find(|t| {
                t.interface == "h0" && t.test_address == Some("192.0.2.21".parse().unwrap())
            })
        })
    };
    assert!(h0_v4(&daemon).unwrap().targets.is_empty(), "no route yet");
    // A route through the router: its next hop becomes h0's IPv4 target.
    lab.host()
        .ip(&[
            "route",
            "add",
            "198.51.100.0/24",
            "via",
            "192.0.2.1",
            "dev",
            "h0",
        ])
        .unwrap();
    daemon.wait_until("192.0.2.1 probed as h0's router", |d| {
        h0_v4(d).is_some_and(|t| {
            t.mode == TargetMode::Routes
                && t.targets == ["192.0.2.1".parse::<std::net::IpAddr>().unwrap()]
        })
    });
    // The group shares one link: the router a route names on h0 is every NIC's target whose
    // test subnet holds it, so a silent failure of h1 or h2 is caught too.
    let status = daemon.status();
    for nic in ["h1", "h2"] {
        let v4 = status
            .targets
            .iter()
            .find(|t| t.interface == nic && t.test_address.is_some_and(|a| a.is_ipv4()))
            .unwrap();
        assert_eq!(v4.mode, TargetMode::Routes, "{nic}");
        assert_eq!(
            v4.targets,
            ["192.0.2.1".parse::<std::net::IpAddr>().unwrap()],
            "{nic}"
        );
    }
    lab.drop_silently("h2").unwrap();
    daemon.wait_until("h2 failed by its probes to the router", |d| {
        d.try_status()
            .is_some_and(|s| state_of(&s, "h2") == Some(InterfaceStatus::Failed))
    });
}

/// Pings 192.0.2.19 from the router every 10 ms for `count` pings in the background.
fn ping_stream(lab: &Lab, count: u32) -> std::process::Child {
    lab.router()
        .cmd("ping")
        .args([
            "-q",
            "-i",
            "0.01",
            "-W",
            "1",
            "-c",
            &count.to_string(),
            "192.0.2.19",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for a `ping_stream` and returns (transmitted, received).
fn ping_result(ping: std::process::Child) -> (u32, u32) {
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

#[test]
fn a_clean_restart_and_a_reload_lose_no_packet() {
    let lab = lab();
    let mut daemon = Mpathd::start_all_ok(lab.host(), &CONFIG);
    lab.router()
        .run(&["ping", "-c1", "-W2", "192.0.2.19"])
        .unwrap();

    let ping = ping_stream(&lab, 150);
    std::thread::sleep(std::time::Duration::from_millis(300));
    daemon.stop();
    std::thread::sleep(std::time::Duration::from_millis(300));
    daemon.spawn(lab.host());
    daemon.wait_until("all NICs ok after the restart", all_ok);
    let (sent, received) = ping_result(ping);
    assert_eq!(received, sent, "packets lost over a restart");

    let ping = ping_stream(&lab, 150);
    std::thread::sleep(std::time::Duration::from_millis(300));
    // A new FDT rebuilds every group.
    daemon.reload(&CONFIG.replace(
        "failure_detection_time_ms = 700",
        "failure_detection_time_ms = 900",
    ));
    daemon.wait_until("the new FDT in force", |d| {
        d.try_status().is_some_and(|s| s.groups[0].fdt_ms == 900)
    });
    let (sent, received) = ping_result(ping);
    assert_eq!(received, sent, "packets lost over a reload");
    assert!(!daemon.log().contains("Successfully failed over"));
}

#[test]
fn without_bpffs_mpathd_mounts_one_and_runs() {
    use mpath_ctl::api::control;
    use std::time::{Duration, Instant};
    let lab = lab();
    let dir = std::env::temp_dir().join(format!("mpathd-nobpffs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("mpathd.sock");
    let config = dir.join("mpathd.toml");
    // The pins live in the daemon's own mount namespace and vanish with it.
    let pins = format!("/sys/fs/bpf/mpath-nobpffs-{}", std::process::id());
    std::fs::write(
        &config,
        CONFIG
            .replace("SOCKET", &socket.display().to_string())
            .replace("PINS", &pins),
    )
    .unwrap();
    // Only the lab's network, and a private mount namespace in which /sys/fs/bpf is not
    // mounted, as on a fresh machine.
    let mut child = std::process::Command::new("nsenter")
        .arg(format!("--net={}", lab.host().path().display()))
        .args(["unshare", "--mount", "--propagation", "private", "sh", "-c"])
        .arg("umount /sys/fs/bpf && exec \"$@\"")
        .arg("sh")
        .arg(mpath_tests::daemon::binary("mpathd"))
        .arg("--config")
        .arg(&config)
        .args(["--defaults", "/nonexistent"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut ok = false;
    while Instant::now() < deadline && !ok {
        if let Ok(control::Reply::Status(s)) = control::request(&socket, &Request::Status {}) {
            ok = s.interfaces.iter().all(|i| i.state == InterfaceStatus::Ok);
        }
        if !ok {
            assert!(child.try_wait().unwrap().is_none(), "mpathd exited");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // A probe answered and matched in the kernel: the programs are loaded and attached.
    let (tx, rx) = std::sync::mpsc::channel();
    let stream_socket = socket.clone();
    std::thread::spawn(move || {
        let _: Result<_, _> = control::call(&stream_socket, &Request::Probes {}, |reply| {
            let matched = matches!(&reply, control::Reply::Probe(p) if p.net_rtt_us.is_some());
            if matched {
                let _: Result<_, _> = tx.send(());
            }
            !matched
        });
    });
    let matched = ok && rx.recv_timeout(Duration::from_secs(10)).is_ok();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(ok, "mpathd did not start without a mounted bpffs");
    assert!(matched, "no probe reply was matched by the datapath");
}

#[test]
fn a_flapping_link_moves_the_addresses_once_each_way() {
    let lab = lab();
    let mut daemon = Mpathd::start_all_ok(lab.host(), &CONFIG);
    // Ten flaps, far faster than the 700 ms failure detection time.
    lab.flap("h0", 10, std::time::Duration::from_millis(60))
        .unwrap();
    daemon.wait_until("h0 repaired and its addresses home", |d| {
        d.try_status().is_some_and(|s| {
            state_of(&s, "h0") == Some(InterfaceStatus::Ok)
                && inbound(&s, "192.0.2.19/24") == Some("h0")
        })
    });
    let log = daemon.log();
    assert_eq!(
        log.matches("Successfully failed over from NIC h0").count(),
        1,
        "{log}"
    );
    assert_eq!(
        log.matches("Successfully failed back to NIC h0").count(),
        1,
        "{log}"
    );
    lab.router()
        .run(&["ping", "-c1", "-W2", "192.0.2.19"])
        .unwrap();
}

#[test]
fn losing_its_link_local_address_leaves_a_nic_to_ipv4_probing() {
    let lab = lab();
    let mut daemon = Mpathd::start(lab.host(), &CONFIG);
    // h1's IPv4 probes must have been answered first: until then the startup quiet period
    // (40 s) holds its losses back (a run that did not wait lost this race under load).
    daemon.wait_until("every NIC ok, IPv6 targets found on each", |d| {
        all_ok(d) && v6_targets_found(d)
    });
    let line = lab
        .host()
        .ip(&["-6", "-o", "addr", "show", "dev", "h1", "scope", "link"])
        .unwrap();
    let link_local = line
        .split_whitespace()
        .skip_while(|w| *w != "inet6")
        .nth(1)
        .unwrap()
        .to_string();
    lab.host()
        .ip(&["addr", "del", &link_local, "dev", "h1"])
        .unwrap();
    daemon.wait_until("IPv6 probing on h1 stopped", |d| {
        d.log().contains("h1 stops probing over IPv6")
    });
    // IPv4 probing alone now decides for h1.
    lab.drop_silently("h1").unwrap();
    daemon.wait_until("h1 failed by its IPv4 probes", h1_failed_over);
}

#[test]
fn after_the_kernel_drops_netlink_events_mpathd_resyncs_and_restores() {
    let lab = lab();
    let mut daemon = Mpathd::start_all_ok(lab.host(), &CONFIG);
    daemon.stop();
    // The smallest event buffer the kernel allows: a burst of changes overruns it.
    daemon.spawn_with(lab.host(), &[], &["--netlink-receive-buffer", "1"]);
    daemon.wait_until("all NICs ok", all_ok);

    let batch = std::env::temp_dir().join(format!("mpath-burst-{}", std::process::id()));
    let mut commands = String::from("address del 192.0.2.20/24 dev h1\n");
    for i in 0..250 {
        commands.push_str(&format!(
            "address add 203.0.113.{}/32 dev lo\n",
            i % 250 + 1
        ));
    }
    std::fs::write(&batch, commands).unwrap();
    lab.host()
        .ip(&["-batch", &batch.display().to_string()])
        .unwrap();
    std::fs::remove_file(&batch).unwrap();
    daemon.wait_until("the overrun noticed", |d| {
        d.log()
            .contains("the kernel dropped netlink events; resynchronising")
    });
    daemon.wait_until("192.0.2.20 restored on h1", |_| {
        lab.host_addrs("h1")
            .unwrap()
            .contains(&"192.0.2.20/24".to_string())
    });
    assert!(all_ok(&daemon));
}

#[test]
fn the_solaris_defaults_file_alone_is_enough_and_what_in_mpathd_tolerates_is_a_warning() {
    let dir = std::env::temp_dir().join(format!("mpathd-defaults-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("mpathd.toml");
    let defaults = dir.join("mpathd");
    std::fs::write(&config, "").unwrap();
    std::fs::write(
        &defaults,
        "# Debian keeps the daemon's options here too\nMPATHD_OPTS=\"\"\nFAILURE_DETECTION_TIME=50\nFAILBACK=no\n",
    )
    .unwrap();
    let out = std::process::Command::new(mpath_tests::daemon::binary("mpathd"))
        .args(["--check", "--config"])
        .arg(&config)
        .arg("--defaults")
        .arg(&defaults)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stderr.contains("MPATHD_OPTS is no in.mpathd tunable; ignored"),
        "{stderr}"
    );
    assert!(
        stderr.contains("Too small failure detection time of 50, assuming minimum 100"),
        "{stderr}"
    );
}

#[test]
fn the_probe_stream_numbers_lost_probes_lines_up_and_times_from_its_own_start() {
    use std::io::{BufRead as _, BufReader};
    let lab = lab();
    let daemon = Mpathd::start_all_ok(lab.host(), &CONFIG);
    lab.drop_silently("h1").unwrap();
    let stream = |args: &[&str], rows: usize| {
        let mut child = daemon
            .ctl_command(lab.host(), args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let lines: Vec<String> = BufReader::new(child.stdout.take().unwrap())
            .lines()
            .take(rows)
            .map(Result::unwrap)
            .collect();
        child.kill().unwrap();
        child.wait().unwrap();
        lines
    };
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let rows: Vec<serde_json::Value> = stream(&["probes", "--json"], 40)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let lost: Vec<u64> = rows
        .iter()
        .filter(|r| {
            r["interface"] == "h1" && r["target"] == "192.0.2.1" && r["net_rtt_us"].is_null()
        })
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert!(lost.len() >= 2, "h1's IPv4 probes are lost: {rows:?}");
    assert!(
        lost.windows(2).all(|w| w[1] == w[0] + 1),
        "lost probes keep their numbers: {lost:?}"
    );
    // Wall-clock time in JSON, from around now.
    let time = rows[0]["time_unix_ms"].as_u64().unwrap();
    assert!(
        time + 5_000 > started && time < started + 60_000,
        "{time} {started}"
    );

    let text = stream(&["probes"], 20);
    assert!(text[0].starts_with("TIME"), "{text:?}");
    let column = |line: &str| line.find(" h").or_else(|| line.find("INTERFACE"));
    let first = column(&text[0]).unwrap();
    for line in &text[1..] {
        assert_eq!(column(line), Some(first - 1), "columns line up: {text:#?}");
        // ipmpstat's TIME counts from the command's start: seconds, not mpathd's uptime.
        let seconds: f64 = line.split('s').next().unwrap().trim().parse().unwrap();
        assert!(seconds < 30.0, "{line}");
    }
}

#[test]
fn a_nic_without_an_ipv4_test_address_probes_over_ipv6_from_its_link_local_address() {
    let lab = lab();
    let config = ipv6_only_config(700);
    let mut daemon = Mpathd::start(lab.host(), &config);
    // An answered probe ends the startup quiet period, which holds failures back.
    daemon.wait_until("both NICs' probes to a link-local router answered", |d| {
        d.try_status().is_some_and(|s| {
            ["h0", "h1"].iter().all(|nic| {
                s.targets.iter().any(|t| {
                    t.interface == *nic
                        && t.test_address
                            .is_some_and(|a| a.to_string().starts_with("fe80::"))
                        && t.health.iter().any(|h| h.answered > 0)
                })
            })
        })
    });
    lab.drop_silently("h0").unwrap();
    daemon.wait_until("h0 failed by its IPv6 probes, its address on h1", |d| {
        d.try_status().is_some_and(|s| {
            state_of(&s, "h0") == Some(InterfaceStatus::Failed)
                && inbound(&s, "2001:db8::19/64") == Some("h1")
        })
    });
    lab.router()
        .run(&["ping", "-c1", "-W2", "2001:db8::19"])
        .unwrap();
}

#[test]
fn an_address_someone_puts_on_a_group_nic_fails_over_with_it() {
    let lab = lab();
    let mut daemon = Mpathd::start_all_ok(lab.host(), &CONFIG);
    lab.add_host_addr("h0", "192.0.2.50/24").unwrap();
    daemon.wait_until("192.0.2.50 adopted on h0", |d| {
        d.try_status()
            .is_some_and(|s| inbound(&s, "192.0.2.50/24") == Some("h0"))
    });

    lab.cut("h0").unwrap();
    daemon.wait_until("192.0.2.50 moved with h0's data addresses", |d| {
        d.try_status().is_some_and(|s| {
            inbound(&s, "192.0.2.50/24") == Some("h2") && inbound(&s, "192.0.2.19/24") == Some("h2")
        })
    });
    assert!(has_address(&lab, "h2", "192.0.2.50/24"));
    assert!(!has_address(&lab, "h0", "192.0.2.50/24"));
    lab.router()
        .run(&["ping", "-c1", "-W2", "192.0.2.50"])
        .unwrap();

    lab.restore("h0").unwrap();
    daemon.wait_until("192.0.2.50 back on h0", |d| {
        d.try_status()
            .is_some_and(|s| inbound(&s, "192.0.2.50/24") == Some("h0"))
    });
    // Its owner removes it: mpathd does not put it back.
    lab.del_host_addr("h0", "192.0.2.50/24").unwrap();
    daemon.wait_until("192.0.2.50 forgotten", |d| {
        d.try_status()
            .is_some_and(|s| !s.addresses.iter().any(|a| a.address == "192.0.2.50/24"))
    });
    assert!(
        ["h0", "h1", "h2"]
            .iter()
            .all(|nic| !has_address(&lab, nic, "192.0.2.50/24"))
    );
}

#[test]
fn an_adopted_address_survives_a_reload_that_rebuilds_its_group() {
    let lab = lab();
    let mut daemon = Mpathd::start_all_ok(lab.host(), &CONFIG);
    lab.add_host_addr("h0", "192.0.2.50/24").unwrap();
    daemon.wait_until("192.0.2.50 adopted on h0", |d| {
        d.try_status()
            .is_some_and(|s| inbound(&s, "192.0.2.50/24") == Some("h0"))
    });
    // Another data address for h1 changes the group: the reload rebuilds it.
    daemon.reload(&CONFIG.replace(
        r#"data_addresses = ["192.0.2.20/24"]"#,
        r#"data_addresses = ["192.0.2.20/24", "192.0.2.30/24"]"#,
    ));
    daemon.wait_until("the group rebuilt with 192.0.2.30 on h1", |d| {
        d.try_status()
            .is_some_and(|s| inbound(&s, "192.0.2.30/24") == Some("h1"))
    });
    // Someone else's address stays theirs, where they put it, and still fails over.
    let status = daemon.status();
    assert_eq!(inbound(&status, "192.0.2.50/24"), Some("h0"), "{status:?}");
    assert!(has_address(&lab, "h0", "192.0.2.50/24"));
    lab.router()
        .run(&["ping", "-c1", "-W2", "192.0.2.50"])
        .unwrap();
}

/// Waits until one of h1's probes to its target was answered since mpathd started (which
/// ends the startup quiet period).
fn h1_answered(d: &Mpathd) -> bool {
    d.try_status().is_some_and(|s| {
        s.targets.iter().any(|t| {
            t.interface == "h1"
                && t.test_address.is_some_and(|a| a.is_ipv4())
                && t.health.iter().any(|h| h.answered > 0)
        })
    })
}

#[test]
fn the_same_address_with_another_prefix_length_on_another_nic_is_removed() {
    let lab = lab();
    let mut daemon = Mpathd::start_all_ok(lab.host(), &CONFIG);
    lab.add_host_addr("h1", "192.0.2.19/25").unwrap();
    daemon.wait_until("the /25 copy gone from h1", |_| {
        !has_address(&lab, "h1", "192.0.2.19/25")
    });
    assert!(has_address(&lab, "h0", "192.0.2.19/24"));
    assert!(daemon.log().contains("192.0.2.19/25 was added to h1"));
}

#[test]
fn a_test_address_deleted_behind_mpathds_back_is_restored_and_the_nic_stays_ok() {
    let lab = lab();
    let mut daemon = Mpathd::start(lab.host(), &CONFIG);
    daemon.wait_until("all NICs ok, h1 answered", |d| all_ok(d) && h1_answered(d));
    lab.del_host_addr("h1", "192.0.2.22/32").unwrap();
    daemon.wait_until("h1's test address back", |_| {
        has_address(&lab, "h1", "192.0.2.22/32")
    });
    assert!(
        daemon
            .log()
            .contains("test address 192.0.2.22/32 was removed from h1 behind mpathd's back")
    );
    // Ten probe intervals later h1 is still ok: its probes kept getting answers.
    std::thread::sleep(std::time::Duration::from_secs(1));
    let status = daemon.status();
    assert_eq!(state_of(&status, "h1"), Some(InterfaceStatus::Ok));
    assert!(!daemon.log().contains("NIC failure detected on h1"));
}

#[test]
fn a_nic_whose_mac_changed_is_announced_with_its_new_mac_after_a_failover() {
    let lab = lab();
    let mut daemon = Mpathd::start_all_ok(lab.host(), &CONFIG);
    let new_mac = "02:00:5e:00:53:42";
    lab.host()
        .ip(&["link", "set", "h2", "address", new_mac])
        .unwrap();
    daemon.wait_until("the new MAC taken", |d| {
        d.log()
            .contains("the hardware address of h2 changed to 02:00:5e:00:53:42")
    });
    lab.cut("h0").unwrap();
    daemon.wait_until("192.0.2.19 on h2", |d| {
        d.try_status()
            .is_some_and(|s| inbound(&s, "192.0.2.19/24") == Some("h2"))
    });
    lab.router()
        .run(&["ping", "-c1", "-W2", "192.0.2.19"])
        .unwrap();
    let neighbour = lab.router().ip(&["neigh", "show", "192.0.2.19"]).unwrap();
    assert!(neighbour.contains(new_mac), "{neighbour}");
}

#[test]
fn a_restart_during_a_silent_failure_fails_the_nic_without_a_startup_quiet_period() {
    let lab = lab();
    let mut daemon = Mpathd::start(lab.host(), &CONFIG);
    daemon.wait_until("all NICs ok, h1 answered", |d| all_ok(d) && h1_answered(d));
    daemon.kill();
    lab.drop_silently("h1").unwrap();
    daemon.spawn(lab.host());
    // The 40 s quiet period of a cold start would hold this back past the wait's 20 s.
    daemon.wait_until("h1 failed by its probes", |d| {
        d.try_status()
            .is_some_and(|s| state_of(&s, "h1") == Some(InterfaceStatus::Failed))
    });
}

#[test]
fn a_nic_failed_before_a_reload_or_a_restart_stays_failed_with_no_new_failure() {
    let lab = lab();
    let mut daemon = Mpathd::start(lab.host(), &CONFIG);
    daemon.wait_until("all NICs ok, h1 answered", |d| all_ok(d) && h1_answered(d));
    lab.drop_silently("h1").unwrap();
    let h1_failed = |d: &Mpathd| {
        d.try_status().is_some_and(|s| {
            state_of(&s, "h1") == Some(InterfaceStatus::Failed)
                && inbound(&s, "192.0.2.20/24") != Some("h1")
        })
    };
    daemon.wait_until("h1 failed by its probes", h1_failed);
    let failures = || {
        let metrics = mpath_tests::metrics::scrape(lab.host()).expect("metrics");
        mpath_tests::metrics::sample(
            &metrics,
            r#"mpath_interface_failures_total{cause="probes_lost",group="g0",interface="h1"}"#,
        )
        .unwrap_or(0.0)
    };
    assert_eq!(failures(), 1.0);
    let still = "NIC h1 of group g0 stays failed (found failed before mpathd's restart or reload)";

    // A reload that rebuilds the group (another FDT) replays h1's failure, as a failure
    // already counted: an alert on failures per hour must not see a flapping NIC.
    daemon.reload(&three_nic_config(800));
    daemon.wait_until("the group rebuilt, h1 still failed", |d| {
        d.log().contains(still) && h1_failed(d)
    });
    assert_eq!(failures(), 1.0);
    // So does a restart.
    daemon.kill();
    daemon.spawn(lab.host());
    daemon.wait_until("h1 adopted as failed", |d| {
        d.log().matches(still).count() == 2 && h1_failed(d)
    });
    assert_eq!(failures(), 0.0, "a new process, and no new failure");
    let log = daemon.log();
    assert_eq!(
        log.matches("NIC failure detected on h1").count(),
        1,
        "{log}"
    );
}

#[test]
fn a_restart_with_a_smaller_configuration_removes_what_it_no_longer_names() {
    let lab = lab();
    let mut daemon = Mpathd::start_all_ok(lab.host(), &CONFIG);
    // An administrator's address, which mpathd adopts but did not put there.
    lab.add_host_addr("h0", "192.0.2.50/24").unwrap();
    daemon.wait_until("192.0.2.50 adopted", |d| {
        d.try_status()
            .is_some_and(|s| inbound(&s, "192.0.2.50/24") == Some("h0"))
    });
    daemon.stop();
    // h1 loses its data address and h2 leaves the group while mpathd is stopped.
    let smaller = CONFIG
        .replace("data_addresses = [\"192.0.2.20/24\"]", "data_addresses = []")
        .replace(
            "[[group.interface]]\nname = \"h2\"\nstandby = true\ntest_address = \"192.0.2.23/24\"\n",
            "",
        );
    assert!(!smaller.contains("h2") && !smaller.contains("192.0.2.20"));
    std::fs::write(
        &daemon.config,
        smaller
            .replace("SOCKET", &daemon.socket.display().to_string())
            .replace("PINS", &daemon.pins.path().display().to_string()),
    )
    .unwrap();
    daemon.spawn(lab.host());
    daemon.wait_until("192.0.2.20 and h2's test address removed", |_| {
        !has_address(&lab, "h1", "192.0.2.20/24") && !has_address(&lab, "h2", "192.0.2.23/32")
    });
    assert!(
        has_address(&lab, "h0", "192.0.2.50/24"),
        "the administrator's stays"
    );
    assert!(has_address(&lab, "h0", "192.0.2.19/24"));
    assert!(has_address(&lab, "h1", "192.0.2.22/32"));
}

#[test]
fn mpathctl_copes_with_a_broken_configuration_a_closed_pipe_and_a_bogus_field() {
    let lab = lab();
    let daemon = Mpathd::start_all_ok(lab.host(), &CONFIG);
    // A typo in the file the running daemon has not loaded: the views still answer (the
    // socket named on the command line; without it mpathctl warns and tries the default).
    std::fs::write(&daemon.config, "[[group]\n").unwrap();
    let socket = daemon.socket.display().to_string();
    let groups = daemon.ctl(lab.host(), &["--socket", &socket, "groups"]);
    assert!(groups.status.success(), "{groups:?}");
    assert!(String::from_utf8_lossy(&groups.stdout).contains("g0"));
    let fallback = daemon.ctl(lab.host(), &["groups"]);
    let stderr = String::from_utf8_lossy(&fallback.stderr);
    assert!(
        stderr.contains("warning") && stderr.contains("using the default socket"),
        "{fallback:?}"
    );
    // Where mpathd left its hint in /run (its own /run here), mpathctl finds it on its
    // socket without reading the file, broken or missing.
    let config = daemon.config.display().to_string();
    for args in [
        &["--config", &config, "groups"][..],
        &["--config", "/nonexistent/mpathd.toml", "groups"],
    ] {
        let hinted = daemon.ctl_beside(args);
        assert!(hinted.status.success(), "{args:?}: {hinted:?}");
        assert!(String::from_utf8_lossy(&hinted.stdout).contains("g0"));
    }
    let hinted = daemon.ctl_beside(&["--config", &config, "groups"]);
    assert!(
        String::from_utf8_lossy(&hinted.stderr).contains(&format!(
            "using the running mpathd's socket {socket} and pin directory {}",
            daemon.pins.path().display()
        )),
        "{hinted:?}"
    );
    // The hint names the socket, in /run/mpath/mpathd.paths.
    let pid = daemon.pid().unwrap();
    let hint = std::path::PathBuf::from(format!("/proc/{pid}/root/run/mpath/mpathd.paths"));
    assert!(
        std::fs::read_to_string(&hint)
            .unwrap()
            .contains(&format!("SOCKET={socket}\n"))
    );
    // `-o` with a field the view does not have is a usage error.
    let bogus = daemon.ctl(
        lab.host(),
        &["--socket", &socket, "interfaces", "-o", "bogus"],
    );
    assert_eq!(bogus.status.code(), Some(2), "{bogus:?}");
    assert!(String::from_utf8_lossy(&bogus.stderr).contains("unknown field \"bogus\""));
    // `mpathctl probes | head -1`: the stream ends quietly when its reader goes.
    let mut probes = daemon
        .ctl_command(lab.host(), &["--socket", &socket, "probes"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 4];
    std::io::Read::read_exact(probes.stdout.as_mut().unwrap(), &mut first).unwrap();
    drop(probes.stdout.take());
    let out = probes.wait_with_output().unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("panicked"),
        "{out:?}"
    );
    assert_ne!(out.status.code(), Some(101), "{out:?}");
}

/// Three active NICs, each with a test address and an IPv4 data address: the lab group with
/// h2 no standby and no IPv6 data address.
fn three_active() -> String {
    CONFIG
        .replace(r#", "2001:db8::19/64""#, "")
        .replace("standby = true", r#"data_addresses = ["192.0.2.24/24"]"#)
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

#[test]
fn a_nic_with_another_members_mac_is_taken_offline_until_its_mac_is_unique() {
    let lab = lab();
    let mut daemon = Mpathd::start_all_ok(lab.host(), &three_active());
    assert_eq!(
        lab.host_addrs("h2").unwrap().len(),
        2,
        "h2 carries its address"
    );
    let h1_mac = mac_text(lab.mac("h1").unwrap());
    lab.host()
        .ip(&["link", "set", "h2", "address", &h1_mac])
        .unwrap();
    daemon.wait_until("h2 offline, its address elsewhere", |d| {
        d.try_status().is_some_and(|s| {
            state_of(&s, "h2") == Some(InterfaceStatus::Offline)
                && inbound(&s, "192.0.2.24/24").is_some_and(|nic| nic != "h2")
        })
    });
    let status = daemon.status();
    assert_eq!(status.groups[0].unusable, ["h2"]);
    assert_eq!(
        state_of(&status, "h1"),
        Some(InterfaceStatus::Ok),
        "the first of the two stays"
    );
    assert_eq!(
        lab.host_addrs("h2").unwrap(),
        ["192.0.2.23/32"],
        "h2 carries no data address"
    );
    let (h0, h1) = (
        lab.host().ifindex("h0").unwrap(),
        lab.host().ifindex("h1").unwrap(),
    );
    let table = shares(&daemon);
    assert_eq!(
        table.keys().copied().collect::<Vec<_>>(),
        [h0, h1],
        "{table:?}"
    );
    let log = daemon.log();
    assert!(
        log.contains(&format!(
            "NIC h2 of group g0 has the hardware address {h1_mac} of h1, which is not unique in the group; offlining h2"
        )),
        "{log}"
    );
    let json = daemon.ctl(lab.host(), &["interfaces", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(rows[2]["interface"], "h2");
    assert_eq!(
        rows[2]["flags"],
        serde_json::json!(["offline", "duplicate_mac"])
    );
    let text = daemon.ctl(lab.host(), &["interfaces", "-o", "interface,flags,state"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().eq(["h2", "------h-", "offline"])),
        "{text}"
    );
    let online = daemon.ctl(lab.host(), &["online", "h2"]);
    assert!(!online.status.success());
    let message = String::from_utf8_lossy(&online.stderr);
    assert!(message.contains("duplicate hardware address"), "{message}");

    lab.host()
        .ip(&["link", "set", "h2", "address", "02:00:5e:00:53:24"])
        .unwrap();
    daemon.wait_until("h2 back with its address", |d| {
        d.try_status().is_some_and(|s| {
            state_of(&s, "h2") == Some(InterfaceStatus::Ok)
                && inbound(&s, "192.0.2.24/24") == Some("h2")
        })
    });
    assert!(
        daemon
            .log()
            .contains("NIC h2 now has a unique hardware address in group g0; onlining it")
    );
    assert_eq!(shares(&daemon).len(), 3);
    lab.router()
        .run(&["ping", "-c1", "-W2", "192.0.2.24"])
        .unwrap();
}
