//! mpathd's probing against a router whose echo replies the test controls (see
//! `mpath_tests::responder`): probe timing on the wire, self-tuning of the failure detection
//! time, target health, reply validation, the startup quiet period and link damping.

use std::{
    net::IpAddr,
    thread::sleep,
    time::{Duration, Instant, SystemTime},
};

use mpath_common::PROBE_ICMP_ID;
use mpath_ctl::{
    api::views::Status, core::probe::NUM_PROBE_REPAIRS, core::state::InterfaceStatus,
    core::target::MAX_PROBE_TARGETS,
};
use mpath_lab::{Lab, ROUTER_V4};
use mpath_tests::{
    daemon::{Mpathd, inbound, state_of, three_nic_config, two_nic_config},
    metrics::{sample, scrape},
    responder::{Answer, Fault, Request, Requests, Responder},
};

/// A second router address: another probe target, or the wrong source of a reply.
const ROUTER_V4_B: &str = "192.0.2.2";
const NICS: [&str; 3] = ["h0", "h1", "h2"];

/// The lab group over IPv4 only (no IPv6 data address, so no IPv6 probing): h0 and h1
/// active, h2 standby, each with a test address, probing `targets`.
fn ipv4_config(fdt_ms: u64, targets: &[&str]) -> String {
    let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    format!(
        r#"
[daemon]
failure_detection_time_ms = {fdt_ms}
socket = "SOCKET"
bpf_pin_dir = "PINS"

[[group]]
name = "g0"
targets = [{}]

[[group.interface]]
name = "h0"
test_address = "192.0.2.21/24"
data_addresses = ["192.0.2.19/24"]

[[group.interface]]
name = "h1"
test_address = "192.0.2.22/24"
data_addresses = ["192.0.2.20/24"]

[[group.interface]]
name = "h2"
standby = true
test_address = "192.0.2.23/24"
"#,
        targets.join(", ")
    )
}

/// The IPv4 test address of lab NIC `hN` in the configurations above.
fn test_address(nic: &str) -> IpAddr {
    let index: u8 = nic[1..].parse().expect("an hN name");
    IpAddr::from([192, 0, 2, 21 + index])
}

fn lab_with_two_router_addresses() -> Lab {
    Lab::builder()
        .nics(3)
        .router_addrs(&[&format!("{ROUTER_V4_B}/24")])
        .build()
        .expect("lab")
}

fn all_ok(status: &Status) -> bool {
    NICS.iter()
        .all(|n| state_of(status, n) == Some(InterfaceStatus::Ok))
}

fn is_active(status: &Status, nic: &str) -> bool {
    status
        .interfaces
        .iter()
        .any(|i| i.interface == nic && i.active)
}

fn fdt_ms(status: &Status) -> u64 {
    status.groups[0].fdt_ms
}

/// The active probe targets of `nic`'s IPv4 prober.
fn ipv4_targets(status: &Status, nic: &str) -> Vec<IpAddr> {
    status
        .targets
        .iter()
        .find(|t| t.interface == nic && t.test_address.is_some_and(|a| a.is_ipv4()))
        .map(|t| t.targets.clone())
        .unwrap_or_default()
}

/// A per-NIC counter from the metrics, 0 when the series does not exist yet.
fn nic_counter(host: &mpath_lab::Netns, name: &str, nic: &str, extra: &str) -> f64 {
    let text = scrape(host).expect("metrics");
    sample(
        &text,
        &format!(r#"{name}{{group="g0",interface="{nic}"{extra}}}"#),
    )
    .unwrap_or(0.0)
}

/// The sum of every series in the metrics whose line starts with `prefix` (the name and
/// the first labels, in the encoder's order); there must be at least one.
fn sum_of(host: &mpath_lab::Netns, prefix: &str) -> f64 {
    let text = scrape(host).expect("metrics");
    let values: Vec<f64> = text
        .lines()
        .filter_map(|line| line.strip_prefix(prefix)?.rsplit_once(' '))
        .map(|(_, value)| value.parse().expect("a sample value"))
        .collect();
    assert!(
        !values.is_empty(),
        "no series {prefix}... in the metrics:\n{text}"
    );
    values.iter().sum()
}

/// NIC failures so far, of any NIC and cause.
fn failures(host: &mpath_lab::Netns) -> f64 {
    sum_of(host, "mpath_interface_failures_total{")
}

/// Polls `check` every 100 ms for `how_long`, panicking with the daemon's log on the first
/// poll where it does not hold.
fn holds_for(daemon: &Mpathd, how_long: Duration, what: &str, check: impl Fn(&Status) -> bool) {
    let end = Instant::now() + how_long;
    while Instant::now() < end {
        let status = daemon.status();
        assert!(
            check(&status),
            "{what} broke: {status:#?}\nlog:\n{}",
            daemon.log()
        );
        sleep(Duration::from_millis(100));
    }
}

/// Mean and standard deviation.
fn mean_and_deviation(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    (mean, variance.sqrt())
}

fn seconds_since(start: SystemTime, at: SystemTime) -> f64 {
    at.duration_since(start).unwrap_or_default().as_secs_f64()
}

/// Arrival times (s after `start`) of the unicast probes `from` sent.
fn probe_times(requests: &[Request], from: IpAddr, start: SystemTime) -> Vec<f64> {
    requests
        .iter()
        .filter(|r| r.from == from && !r.to.is_multicast())
        .map(|r| seconds_since(start, r.at))
        .collect()
}

/// Checks the probe times of one prober against in.mpathd's schedule: slots of one interval
/// each, strictly periodic, each probe at a random point in [0.5, 1.0] of its slot. So a gap
/// between probes is 0.5 to 1.5 intervals, 1 on average, and the probe's offset from the
/// periodic grid spreads over half an interval.
fn assert_probe_schedule(who: &str, times: &[f64], interval: f64) {
    assert!(times.len() >= 25, "{who}: only {} probes", times.len());
    let gaps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter().all(|gap| *gap > 0.0),
        "{who}: probes out of order: {gaps:.4?}"
    );
    // Scheduling delays of mpathd on a busy machine (the whole suite runs at once on two
    // CPUs) move a few probes late; a late probe shortens the next gap, the grid stays.
    let too_long = gaps.iter().filter(|gap| **gap >= 2.0 * interval).count();
    assert!(
        too_long <= 1,
        "{who}: {too_long} gaps of 2 intervals or more: {gaps:.4?}"
    );
    let slack = 0.005;
    let typical: Vec<f64> = gaps
        .iter()
        .copied()
        .filter(|g| *g >= 0.5 * interval - slack && *g <= 1.5 * interval + slack)
        .collect();
    assert!(
        typical.len() * 10 >= gaps.len() * 9,
        "{who}: only {} of {} gaps in [0.5, 1.5] intervals: {gaps:.4?}",
        typical.len(),
        gaps.len()
    );
    let mean_gap = (times[times.len() - 1] - times[0]) / gaps.len() as f64;
    assert!(
        (mean_gap - interval).abs() < 0.05 * interval,
        "{who}: mean gap {mean_gap:.4} s, interval {interval:.4} s"
    );
    // Independent uniform offsets in half an interval: gap deviation 0.20 intervals.
    let (_, deviation) = mean_and_deviation(&typical);
    assert!(
        (0.1 * interval..0.3 * interval).contains(&deviation),
        "{who}: gap deviation {deviation:.4} s, want about 0.2 intervals ({interval:.4} s)"
    );
    // Positions on the periodic grid, in intervals (a late or skipped probe leaves the
    // others' positions alone): 90% of them on an arc of half an interval plus slack, yet
    // spread over most of it.
    let mut phases: Vec<f64> = times
        .iter()
        .map(|t| ((t - times[0]) / interval).rem_euclid(1.0))
        .collect();
    phases.sort_by(f64::total_cmp);
    let n = phases.len();
    let covered = (n * 9).div_ceil(10);
    let arc = (0..n)
        .map(|first| {
            let last = first + covered - 1;
            if last < n {
                phases[last] - phases[first]
            } else {
                phases[last - n] + 1.0 - phases[first]
            }
        })
        .fold(f64::INFINITY, f64::min);
    assert!(
        arc <= 0.5 + slack / interval && arc >= 0.25,
        "{who}: 90% of the probes lie within {arc:.3} intervals of the periodic grid, want \
         0.25 to 0.5; times {times:.4?}"
    );
}

/// Signed distance from each probe of `a` to the nearest probe of `b`: constant if the two
/// NICs probed in lockstep.
fn nearest_offsets(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter()
        .map(|t| {
            b.iter()
                .map(|u| u - t)
                .min_by(|x, y| x.abs().total_cmp(&y.abs()))
                .expect("probes of the other NIC")
        })
        .collect()
}

/// Whether one ping from `nic` to the router is answered.
fn ping_answered(lab: &Lab, nic: &str) -> bool {
    lab.host()
        .run(&["ping", "-c1", "-W1", "-I", nic, ROUTER_V4])
        .is_ok()
}

/// The router's `icmp_echo_ignore_all` switches, IPv4 then IPv6.
fn kernel_echo_ignored(lab: &Lab) -> Vec<String> {
    [
        "net.ipv4.icmp_echo_ignore_all",
        "net.ipv6.icmp.echo_ignore_all",
    ]
    .iter()
    .map(|key| {
        lab.router()
            .run(&["sysctl", "-n", key])
            .unwrap()
            .trim()
            .to_string()
    })
    .collect()
}

#[test]
fn the_responder_alone_answers_for_the_router_and_hands_back_even_on_panic() {
    let lab = Lab::builder()
        .nics(1)
        .host_addr("h0", "192.0.2.30/24")
        .build()
        .expect("lab");
    assert!(ping_answered(&lab, "h0"), "the kernel answers");
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let responder = Responder::start(lab.router()).expect("responder");
        assert_eq!(kernel_echo_ignored(&lab), ["1", "1"]);
        assert!(ping_answered(&lab, "h0"), "the responder answers");
        responder.set(Requests::All, Answer::faulty(Fault::Drop));
        assert!(!ping_answered(&lab, "h0"), "nobody else answers");
        let seen = responder.requests();
        assert!(
            seen.iter()
                .any(|r| r.from == "192.0.2.30".parse::<IpAddr>().unwrap() && r.hop_limit == 64),
            "{seen:?}"
        );
        panic!("a test failing while the responder runs");
    }));
    assert!(outcome.is_err());
    assert_eq!(
        kernel_echo_ignored(&lab),
        ["0", "0"],
        "restored while unwinding"
    );
    assert!(ping_answered(&lab, "h0"), "the kernel answers again");
}

#[test]
fn probes_leave_with_ttl_1_each_at_a_random_point_of_its_interval_and_nics_not_in_lockstep() {
    let lab = Lab::new(3).expect("lab");
    let responder = Responder::start(lab.router()).expect("responder");
    let mut daemon = Mpathd::start(lab.host(), &three_nic_config(1000));
    daemon.wait_until("all NICs ok, probing over IPv4 and IPv6", |d| {
        d.try_status().is_some_and(|s| {
            all_ok(&s)
                && NICS.iter().all(|nic| {
                    s.targets
                        .iter()
                        .filter(|t| t.interface == *nic && !t.targets.is_empty())
                        .count()
                        == 2
                })
        })
    });
    let start = SystemTime::now();
    sleep(Duration::from_secs(6));
    let requests: Vec<Request> = responder
        .requests()
        .into_iter()
        .filter(|r| r.at >= start && r.ident == PROBE_ICMP_ID)
        .collect();

    let link_locals: Vec<IpAddr> = NICS
        .iter()
        .map(|nic| {
            let listing = lab
                .host()
                .ip(&["-o", "-6", "addr", "show", "dev", nic, "scope", "link"])
                .unwrap();
            let cidr = listing
                .split_whitespace()
                .skip_while(|w| *w != "inet6")
                .nth(1)
                .unwrap_or_else(|| panic!("no link-local address on {nic}: {listing}"));
            cidr.split('/').next().unwrap().parse().unwrap()
        })
        .collect();
    let probers: Vec<(String, IpAddr)> = NICS
        .iter()
        .map(|nic| (format!("{nic} IPv4"), test_address(nic)))
        .chain(
            NICS.iter()
                .zip(&link_locals)
                .map(|(nic, ll)| (format!("{nic} IPv6"), *ll)),
        )
        .collect();
    for request in &requests {
        assert!(
            probers.iter().any(|(_, a)| *a == request.from),
            "a probe from an address that is no prober's: {request:?}"
        );
        assert_eq!(
            request.hop_limit, 1,
            "probes never leave the link: {request:?}"
        );
    }
    assert!(
        requests.iter().any(|r| r.to.is_multicast()),
        "IPv6 target discovery (to ff02::1) seen, hop limit 1 checked above"
    );

    let interval = 1.0 / 7.0;
    let times: Vec<Vec<f64>> = probers
        .iter()
        .map(|(_, from)| probe_times(&requests, *from, start))
        .collect();
    for ((who, _), times) in probers.iter().zip(&times) {
        assert_probe_schedule(who, times, interval);
    }
    for (a, b) in [(0, 1), (0, 2), (1, 2), (0, 3)] {
        let (_, deviation) = mean_and_deviation(&nearest_offsets(&times[a], &times[b]));
        assert!(
            deviation > 0.05 * interval,
            "{} and {} probe in lockstep: offset deviation {deviation:.4} s",
            probers[a].0,
            probers[b].0
        );
    }
}

#[test]
fn slow_replies_raise_the_effective_fdt_which_comes_down_no_sooner_than_60_s_after_the_last_raise()
{
    let lab = Lab::new(3).expect("lab");
    let responder = Responder::start(lab.router()).expect("responder");
    let mut daemon = Mpathd::start(lab.host(), &ipv4_config(1000, &[ROUTER_V4]));
    daemon.wait_until("all NICs ok", |d| {
        d.try_status().is_some_and(|s| all_ok(&s))
    });
    assert_eq!(fdt_ms(&daemon.status()), 1000);

    responder.set(Requests::All, Answer::delayed(Duration::from_millis(400)));
    daemon.wait_until("the effective FDT raised", |d| {
        d.try_status().is_some_and(|s| fdt_ms(&s) > 1000)
    });
    let mut last_raise = Instant::now();
    let mut raised = fdt_ms(&daemon.status());
    // 400 ms replies need an RTT bound of about 400 ms, i.e. an FDT of several seconds.
    assert!(raised >= 4 * 1000, "raised to only {raised} ms");
    let log = daemon.log();
    assert!(
        log.contains("Cannot meet requested failure detection time of 1000 ms"),
        "{log}"
    );
    let groups = daemon.ctl(lab.host(), &["groups", "--json"]);
    assert!(groups.status.success(), "{groups:?}");
    let groups: serde_json::Value = serde_json::from_slice(&groups.stdout).unwrap();
    assert!(
        groups[0]["fdt_ms"].as_u64().is_some_and(|ms| ms > 1000),
        "mpathctl groups shows the effective FDT: {groups}"
    );

    // With slow replies nothing fails; a further raise only counts as the last raise.
    let slow_end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < slow_end {
        let status = daemon.status();
        assert!(all_ok(&status), "{status:#?}\n{}", daemon.log());
        if fdt_ms(&status) > raised {
            raised = fdt_ms(&status);
            last_raise = Instant::now();
        }
        sleep(Duration::from_millis(100));
    }

    responder.clear(Requests::All);
    let deadline = last_raise + Duration::from_secs(95);
    let lowered_at = loop {
        let status = daemon.status();
        assert!(all_ok(&status), "{status:#?}\n{}", daemon.log());
        if fdt_ms(&status) < raised {
            break Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "effective FDT still {} ms 95 s after the last raise, with fast replies; log:\n{}",
            fdt_ms(&status),
            daemon.log()
        );
        sleep(Duration::from_millis(100));
    };
    let after = lowered_at.duration_since(last_raise);
    assert!(
        after >= Duration::from_millis(59_500),
        "lowered {after:?} after the last raise, before the 60 s settling time"
    );
    daemon.wait_until("the effective FDT back at the configured one", |d| {
        d.try_status().is_some_and(|s| fdt_ms(&s) == 1000)
    });
    let log = daemon.log();
    assert!(
        log.contains("Improved failure detection time 1000 ms for group g0"),
        "{log}"
    );
    assert_eq!(failures(lab.host()), 0.0, "no NIC ever failed");
}

#[test]
fn a_target_that_stops_answering_is_set_aside_without_failing_a_nic_and_recovers_step_by_step() {
    let lab = lab_with_two_router_addresses();
    let responder = Responder::start(lab.router()).expect("responder");
    let mut daemon = Mpathd::start(lab.host(), &ipv4_config(700, &[ROUTER_V4, ROUTER_V4_B]));
    let (a, b): (IpAddr, IpAddr) = (ROUTER_V4.parse().unwrap(), ROUTER_V4_B.parse().unwrap());
    daemon.wait_until("all NICs ok, probing both targets", |d| {
        d.try_status()
            .is_some_and(|s| all_ok(&s) && NICS.iter().all(|n| ipv4_targets(&s, n) == [a, b]))
    });
    let addresses_before = daemon.status().addresses;

    responder.set(Requests::To(b), Answer::faulty(Fault::Drop));
    daemon.wait_until("the deaf target set aside on every NIC", |d| {
        d.try_status().is_some_and(|s| {
            assert!(all_ok(&s), "a deaf target failed a NIC: {s:#?}");
            NICS.iter().all(|n| ipv4_targets(&s, n) == [a])
        })
    });
    let set_aside = Instant::now();
    let log = daemon.log();
    assert!(
        log.lines()
            .any(|l| l.contains(&format!("probe target {b} stopped answering"))),
        "no log line says why {b} was set aside:\n{log}"
    );

    // Probing goes on to the other target only, one probe per interval (100 ms) per NIC.
    sleep(Duration::from_secs(1));
    let window_start = SystemTime::now();
    holds_for(
        &daemon,
        Duration::from_secs(5),
        "the group while a target is dead",
        |s| all_ok(s) && s.addresses == addresses_before,
    );
    let requests: Vec<Request> = responder
        .requests()
        .into_iter()
        .filter(|r| r.at >= window_start)
        .collect();
    for nic in NICS {
        let to = |target| {
            requests
                .iter()
                .filter(|r| r.from == test_address(nic) && r.to == target)
                .count()
        };
        assert_eq!(to(b), 0, "{nic} still probes the dead target");
        assert!(
            to(a) >= 35,
            "{nic} sent only {} probes to {a} in 5 s",
            to(a)
        );
    }

    // Answering again, it climbs back from dead to slow to spare to active, a minute a step.
    responder.clear(Requests::To(b));
    let back_at = loop {
        let status = daemon.status();
        assert!(
            all_ok(&status) && status.addresses == addresses_before,
            "{status:#?}"
        );
        if NICS.iter().all(|n| ipv4_targets(&status, n) == [a, b]) {
            break Instant::now();
        }
        assert!(
            set_aside.elapsed() < Duration::from_secs(140),
            "the target is not back 140 s after it was set aside: {status:#?}\n{}",
            daemon.log()
        );
        sleep(Duration::from_millis(200));
    };
    let after = back_at.duration_since(set_aside);
    assert!(
        after >= Duration::from_millis(119_500),
        "back after {after:?}, sooner than its two recovery steps of a minute"
    );
    assert_eq!(failures(lab.host()), 0.0, "no NIC ever failed");
}

#[test]
fn duplicate_wrong_source_and_stale_replies_count_as_unknown_and_cannot_keep_a_nic_up() {
    let lab = lab_with_two_router_addresses();
    let host = lab.host();
    let responder = Responder::start(lab.router()).expect("responder");
    let mut daemon = Mpathd::start(host, &ipv4_config(700, &[ROUTER_V4]));
    daemon.wait_until("all NICs ok", |d| {
        d.try_status().is_some_and(|s| all_ok(&s))
    });
    let h0 = Requests::From(test_address("h0"));
    let unknown = |nic: &str, reason: &str| {
        nic_counter(
            host,
            "mpath_probe_replies_unknown_total",
            nic,
            &format!(r#",reason="{reason}""#),
        )
    };
    let answered = |nic: &str| {
        nic_counter(
            host,
            "mpath_probes_answered_total",
            nic,
            &format!(r#",target="{ROUTER_V4}""#),
        )
    };

    // Every reply twice: the second copy is refused, the NIC stays up.
    let (dups_before, answered_before) = (unknown("h0", "duplicate"), answered("h0"));
    responder.set(h0, Answer::faulty(Fault::Duplicate));
    holds_for(&daemon, Duration::from_secs(3), "all NICs ok", all_ok);
    let dups = unknown("h0", "duplicate") - dups_before;
    let answers = answered("h0") - answered_before;
    assert!(dups >= 20.0, "{dups} duplicates counted");
    assert!(
        (dups - answers).abs() <= 2.0,
        "one duplicate per answer: {dups} duplicates, {answers} answers"
    );
    assert_eq!(unknown("h1", "duplicate"), 0.0);

    // Only replies from the wrong address: h0 fails.
    responder.set(
        h0,
        Answer::faulty(Fault::FromAddress(ROUTER_V4_B.parse().unwrap())),
    );
    daemon.wait_until("h0 failed, 192.0.2.19 moved to the standby", |d| {
        d.try_status().is_some_and(|s| {
            state_of(&s, "h0") == Some(InterfaceStatus::Failed)
                && inbound(&s, "192.0.2.19/24") == Some("h2")
        })
    });

    // None of the spoiled replies repairs it, though each kind comes many times more often
    // than the NUM_PROBE_REPAIRS replies a repair needs.
    let reply_window = NUM_PROBE_REPAIRS as usize * MAX_PROBE_TARGETS + 2;
    let rejected_in_the_datapath = || {
        sum_of(
            host,
            r#"mpath_datapath_probe_replies_rejected_total{group="g0",interface="h0",reason=""#,
        )
    };
    for (fault, counter) in [
        (
            Fault::FromAddress(ROUTER_V4_B.parse().unwrap()),
            Box::new(|| unknown("h0", "wrong_source")) as Box<dyn Fn() -> f64>,
        ),
        // The echo header's sequence number no longer matches the payload: the datapath
        // refuses it (as malformed) before mpathd sees it.
        (Fault::ShiftSequence(1), Box::new(rejected_in_the_datapath)),
        // Genuine replies, but to probes older than the window of outstanding ones.
        (
            Fault::Replay {
                behind: reply_window + 8,
            },
            Box::new(|| unknown("h0", "out_of_window")),
        ),
    ] {
        responder.set(h0, Answer::faulty(fault));
        sleep(Duration::from_millis(300));
        let before = counter();
        holds_for(&daemon, Duration::from_secs(3), "h0 failed", |s| {
            state_of(s, "h0") == Some(InterfaceStatus::Failed)
        });
        let refused = counter() - before;
        assert!(
            refused >= 2.0 * f64::from(NUM_PROBE_REPAIRS),
            "{fault:?}: only {refused} replies refused in 3 s"
        );
    }

    // Correct replies again: h0 is repaired, so only the spoiling kept it down.
    responder.clear(h0);
    daemon.wait_until("h0 repaired by correct replies", |d| {
        d.try_status()
            .is_some_and(|s| state_of(&s, "h0") == Some(InterfaceStatus::Ok))
    });
}

#[test]
fn a_nic_silent_from_the_start_is_not_failed_during_the_startup_quiet_period() {
    let lab = Lab::new(3).expect("lab");
    let host = lab.host();
    lab.drop_silently("h0").unwrap();
    lab.drop_silently("h1").unwrap();
    let started = Instant::now();
    let mut daemon = Mpathd::start(host, &ipv4_config(700, &[ROUTER_V4]));
    let lost = |nic: &str| {
        nic_counter(
            host,
            "mpath_probes_lost_total",
            nic,
            &format!(r#",target="{ROUTER_V4}""#),
        )
    };

    // Far more losses than fail a NIC, but the switch ports may still be learning.
    let at_home = |s: &Status| {
        ["h0", "h1"]
            .iter()
            .all(|nic| state_of(s, nic) != Some(InterfaceStatus::Failed) && is_active(s, nic))
            && inbound(s, "192.0.2.19/24") == Some("h0")
            && inbound(s, "192.0.2.20/24") == Some("h1")
    };
    holds_for(
        &daemon,
        Duration::from_secs(12),
        "both NICs active, not failed, addresses at home",
        at_home,
    );
    assert!(lost("h0") >= 50.0 && lost("h1") >= 50.0, "probes were lost");

    // h0's port comes up: its first reply ends its quiet period, so losing it now fails it
    // within the failure detection time.
    lab.undrop("h0").unwrap();
    daemon.wait_until("a reply on h0", |_| {
        nic_counter(
            host,
            "mpath_probes_answered_total",
            "h0",
            &format!(r#",target="{ROUTER_V4}""#),
        ) > 0.0
    });
    lab.drop_silently("h0").unwrap();
    let dropped = Instant::now();
    daemon.wait_until("h0 failed", |d| {
        d.try_status()
            .is_some_and(|s| state_of(&s, "h0") == Some(InterfaceStatus::Failed))
    });
    assert!(
        dropped.elapsed() < Duration::from_secs(3),
        "h0 failed only {:?} after it went silent",
        dropped.elapsed()
    );

    // h1 never answered: it fails once the 40 s quiet period is over, not before.
    let quiet_end = started + Duration::from_secs(40);
    holds_for(
        &daemon,
        quiet_end
            .saturating_duration_since(Instant::now())
            .saturating_sub(Duration::from_millis(500)),
        "h1 not failed during the quiet period",
        |s| state_of(s, "h1") != Some(InterfaceStatus::Failed) && is_active(s, "h1"),
    );
    daemon.wait_until("h1 failed after the quiet period", |d| {
        d.try_status()
            .is_some_and(|s| state_of(&s, "h1") == Some(InterfaceStatus::Failed))
    });
    assert!(
        started.elapsed() < Duration::from_secs(46),
        "h1 failed {:?} after the start",
        started.elapsed()
    );
    let log = daemon.log();
    assert!(
        log.contains("NIC failure detected on h1 of group g0"),
        "{log}"
    );
}

#[test]
fn a_link_that_comes_up_more_than_twice_a_minute_is_repaired_only_once_stable() {
    let lab = Lab::new(2).expect("lab");
    let mut daemon = Mpathd::start(lab.host(), &two_nic_config(""));
    let h0_is = |state: InterfaceStatus| {
        move |d: &Mpathd| {
            d.try_status()
                .is_some_and(|s| state_of(&s, "h0") == Some(state))
        }
    };
    daemon.wait_until("h0 ok", h0_is(InterfaceStatus::Ok));

    // Two link-ups within the minute are repaired at once.
    let mut second_up = Instant::now();
    for round in 0..2 {
        lab.cut("h0").unwrap();
        daemon.wait_until("h0 failed by its link", h0_is(InterfaceStatus::Failed));
        second_up = Instant::now();
        lab.restore("h0").unwrap();
        daemon.wait_until(
            &format!("h0 repaired after link-up {}", round + 1),
            h0_is(InterfaceStatus::Ok),
        );
    }
    // The third is not: the repair waits a minute from the link-up before it.
    lab.cut("h0").unwrap();
    daemon.wait_until("h0 failed by its link", h0_is(InterfaceStatus::Failed));
    lab.restore("h0").unwrap();
    daemon.wait_until("mpathd to say it damps h0", |d| {
        d.log().contains(
            "The link has come up on h0 more than 2 times in the last minute; disabling \
             repair until it stabilizes",
        )
    });
    let stable_at = second_up + Duration::from_secs(60);
    holds_for(
        &daemon,
        stable_at
            .saturating_duration_since(Instant::now())
            .saturating_sub(Duration::from_millis(500)),
        "h0 failed and its address on h1 while the link is damped",
        |s| {
            state_of(s, "h0") == Some(InterfaceStatus::Failed)
                && inbound(s, "192.0.2.19/24") == Some("h1")
        },
    );
    daemon.wait_until("h0 repaired once stable, its address back", |d| {
        d.try_status().is_some_and(|s| {
            state_of(&s, "h0") == Some(InterfaceStatus::Ok)
                && inbound(&s, "192.0.2.19/24") == Some("h0")
        })
    });
    assert!(
        second_up.elapsed() < Duration::from_secs(68),
        "repaired only {:?} after the second link-up",
        second_up.elapsed()
    );
}

#[test]
fn a_configured_target_off_the_link_is_skipped_and_the_rest_of_the_list_probed() {
    let lab = lab_with_two_router_addresses();
    let mut daemon = Mpathd::start(
        lab.host(),
        &ipv4_config(700, &[ROUTER_V4_B, "198.51.100.10"]),
    );
    daemon.wait_until("every NIC ok", |d| {
        d.try_status().is_some_and(|s| all_ok(&s))
    });
    let status = daemon.status();
    let b: IpAddr = ROUTER_V4_B.parse().unwrap();
    for nic in NICS {
        assert_eq!(ipv4_targets(&status, nic), [b], "{nic}");
    }
    let log = daemon.log();
    assert!(
        log.contains("h0 skips a configured probe target: ") && log.contains("198.51.100.10"),
        "{log}"
    );
}
