//! mpathd's Prometheus endpoint in a lab: the scrape is valid for promtool, and its values
//! follow a NIC's failure, failover, repair and failback.

use std::{
    io::Write as _,
    process::{Command, Stdio},
};

use mpath_lab::Lab;
use mpath_tests::{
    daemon::{Mpathd, inbound, three_nic_config},
    metrics::{METRICS, sample, scrape},
};

fn nic_state(text: &str, nic: &str, state: &str) -> Option<f64> {
    sample(
        text,
        &format!(r#"mpath_interface_state{{group="g0",interface="{nic}",state="{state}"}}"#),
    )
}

/// `promtool check metrics` (Debian package `prometheus`): Prometheus' own parser and
/// naming lints.
fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; `cargo xtask setup` installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool refused the metrics:\n{report}\n--- metrics ---\n{text}"
    );
}

#[test]
fn metrics_parse_and_follow_a_failover_and_failback() {
    let lab = Lab::builder().nics(3).build().expect("lab");
    let host = lab.host();
    let mut daemon = Mpathd::start(host, &three_nic_config(700));
    daemon.wait_until("every NIC ok in the metrics", |_| {
        scrape(host).is_some_and(|t| {
            ["h0", "h1", "h2"]
                .iter()
                .all(|n| nic_state(&t, n, "ok") == Some(1.0))
        })
    });
    let before = scrape(host).unwrap();
    promtool_check(&before);
    let h0 = r#"group="g0",interface="h0""#;
    let link_down =
        r#"mpath_interface_failures_total{cause="link_down",group="g0",interface="h0"}"#;
    assert_eq!(sample(&before, link_down), Some(0.0));
    assert_eq!(
        sample(&before, r#"mpath_group_state{group="g0",state="ok"}"#),
        Some(1.0)
    );
    let target = r#"group="g0",interface="h0",target="192.0.2.1""#;
    let sent = |t: &str| sample(t, &format!("mpath_probes_sent_total{{{target}}}"));
    assert!(sent(&before).is_some_and(|n| n > 0.0), "{before}");
    assert!(
        sample(
            &before,
            &format!("mpath_probe_rtt_seconds_count{{{target}}}")
        )
        .is_some_and(|n| n > 0.0),
        "{before}"
    );
    assert!(
        sample(
            &before,
            &format!("mpath_datapath_probe_replies_total{{{h0}}}")
        )
        .is_some_and(|n| n > 0.0),
        "{before}"
    );

    lab.cut("h0").unwrap();
    daemon.wait_until("h0 failed over in the metrics", |_| {
        scrape(host)
            .is_some_and(|t| sample(&t, &format!("mpath_failovers_total{{{h0}}}")) == Some(1.0))
    });
    let failed = scrape(host).unwrap();
    promtool_check(&failed);
    assert_eq!(sample(&failed, link_down), Some(1.0));
    assert_eq!(nic_state(&failed, "h0", "failed"), Some(1.0));
    assert_eq!(nic_state(&failed, "h0", "ok"), Some(0.0));
    assert_eq!(
        sample(
            &failed,
            r#"mpath_interface_link_state{group="g0",interface="h0",state="down"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&failed, r#"mpath_group_state{group="g0",state="degraded"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &failed,
            r#"mpath_interface_active{group="g0",interface="h2"}"#
        ),
        Some(1.0),
        "the standby took over"
    );

    lab.restore("h0").unwrap();
    daemon.wait_until("h0 failed back in the metrics", |_| {
        scrape(host)
            .is_some_and(|t| sample(&t, &format!("mpath_failbacks_total{{{h0}}}")) == Some(1.0))
    });
    let back = scrape(host).unwrap();
    assert_eq!(
        sample(&back, &format!("mpath_interface_repairs_total{{{h0}}}")),
        Some(1.0)
    );
    assert_eq!(nic_state(&back, "h0", "ok"), Some(1.0));
    assert!(sent(&back) > sent(&before), "probing went on");
}

#[test]
fn idle_connections_and_a_scrape_storm_starve_neither_scrapes_nor_failover() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let lab = Lab::builder().nics(3).build().expect("lab");
    let host = lab.host();
    let mut daemon = Mpathd::start(host, &three_nic_config(700));
    daemon.wait_until("every NIC ok in the metrics", |_| {
        scrape(host).is_some_and(|t| {
            ["h0", "h1", "h2"]
                .iter()
                .all(|n| nic_state(&t, n, "ok") == Some(1.0))
        })
    });
    // Any local user can open these, and send nothing.
    let idle: Vec<std::net::TcpStream> = {
        let _inside = host.enter().unwrap();
        (0..200)
            .map(|_| std::net::TcpStream::connect(METRICS).unwrap())
            .collect()
    };
    daemon.wait_until("a scrape answered beside 200 idle connections", |_| {
        scrape(host).is_some()
    });
    drop(idle);

    let storming = AtomicBool::new(true);
    std::thread::scope(|scope| {
        for _ in 0..3 {
            scope.spawn(|| {
                while storming.load(Ordering::Relaxed) {
                    scrape(host);
                }
            });
        }
        lab.router()
            .run(&["ping", "-c1", "-W2", "192.0.2.19"])
            .unwrap();
        lab.cut("h0").unwrap();
        daemon.wait_until("192.0.2.19 on h2 during the storm", |d| {
            d.try_status()
                .is_some_and(|s| inbound(&s, "192.0.2.19/24") == Some("h2"))
        });
        let ping = lab.router().run(&["ping", "-c1", "-W2", "192.0.2.19"]);
        storming.store(false, Ordering::Relaxed);
        assert!(ping.is_ok(), "the moved address unreachable: {ping:?}");
    });
}

/// With `track_interfaces_only_with_groups = false` (the Solaris TRACK_INTERFACES_ONLY_WITH_GROUPS=no),
/// a NIC outside the groups has its link in the metrics too, with an empty group label, and
/// the metrics follow it.
#[test]
fn a_nic_outside_the_groups_is_in_the_metrics_when_all_nics_are_tracked() {
    let lab = Lab::builder().nics(4).build().expect("lab");
    let host = lab.host();
    let config = three_nic_config(700).replace(
        "[daemon]\n",
        "[daemon]\ntrack_interfaces_only_with_groups = false\n",
    );
    let mut daemon = Mpathd::start(host, &config);
    let h3 = |state: &str| {
        format!(r#"mpath_interface_link_state{{group="",interface="h3",state="{state}"}}"#)
    };
    daemon.wait_until("h3's link up in the metrics", |_| {
        scrape(host).is_some_and(|t| sample(&t, &h3("up")) == Some(1.0))
    });
    let text = scrape(host).unwrap();
    promtool_check(&text);
    assert_eq!(sample(&text, &h3("down")), Some(0.0), "{text}");

    lab.cut("h3").unwrap();
    daemon.wait_until("h3's link down in the metrics", |_| {
        scrape(host).is_some_and(|t| {
            sample(&t, &h3("down")) == Some(1.0) && sample(&t, &h3("up")) == Some(0.0)
        })
    });
}
