//! The shipped unit (dist/mpathd.service) under a real systemd as PID 1. `cargo xtask test`
//! boots a qemu guest whose systemd runs this test as a service (xtask's guest module); the
//! test installs what a host would have, drives it with systemctl, and reads journald.
//!
//! Installed: mpathd of this build in /usr/sbin and mpathctl in /usr/bin, where the package
//! puts them, the unit verbatim in
//! /etc/systemd/system, /etc/mpath/mpathd.toml for the lab group (default socket and pin
//! directory), and one drop-in, `NetworkNamespacePath=`, that puts mpathd in the lab's host
//! namespace: test traffic stays in namespaces the test creates, even in a guest.

use std::{
    fs,
    path::Path,
    process::Command,
    thread::sleep,
    time::{Duration, Instant},
};

use mpath_ctl::api::{
    control::{self, Reply, Request},
    views::Status,
};
use mpath_ctl::core::state::InterfaceStatus;
use mpath_lab::{Lab, scaled};
use mpath_tests::{
    daemon::{binary, data_addresses_missing, inbound, state_of, three_nic_config},
    dist_path,
    hooks::hooks,
    metrics::{sample, scrape},
};

const CONFIG: &str = "/etc/mpath/mpathd.toml";
const SOCKET: &str = "/run/mpath/mpathd.sock";
const PINS: &str = "/sys/fs/bpf/mpath";
const NICS: [&str; 3] = ["h0", "h1", "h2"];
const FDT_MS: u64 = 5000;
const RELOADED_FDT_MS: u64 = 6000;

/// Runs a command; panics with its output and mpathd's journal when it fails.
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}\nmpathd's journal:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        journal_text()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn journal_text() -> String {
    let out = Command::new("journalctl")
        .args(["-u", "mpathd", "--no-pager", "-o", "short-monotonic"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    out.unwrap_or_default()
}

/// One property of mpathd.service, as `systemctl show` gives it.
fn property(name: &str) -> String {
    run("systemctl", &["show", "mpathd", "-p", name, "--value"])
        .trim()
        .to_string()
}

/// The journal's records from `args` (e.g. `-u mpathd`), as JSON objects.
fn journal(args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["--no-pager", "-o", "json"];
    all.extend_from_slice(args);
    run("journalctl", &all)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a journal record"))
        .collect()
}

/// mpathd's own journal records.
fn mpathd_records() -> Vec<serde_json::Value> {
    journal(&["-u", "mpathd", "SYSLOG_IDENTIFIER=mpathd"])
}

/// A field of a journal record, empty when it is missing.
fn field(record: &serde_json::Value, key: &str) -> String {
    record[key].as_str().unwrap_or_default().to_string()
}

/// Records at `priority` or more urgent (warning 4, error 3).
fn at_least(records: &[serde_json::Value], priority: u8) -> Vec<&serde_json::Value> {
    records
        .iter()
        .filter(|r| {
            field(r, "PRIORITY")
                .parse::<u8>()
                .is_ok_and(|p| p <= priority)
        })
        .collect()
}

/// Records as `PRIORITY MESSAGE` lines, for assertion messages that fit CI's log.
fn messages(records: &[&serde_json::Value]) -> Vec<String> {
    records
        .iter()
        .map(|r| format!("{} {}", field(r, "PRIORITY"), field(r, "MESSAGE")))
        .collect()
}

/// The warnings and errors of a start on a healthy lab, save one: the emulated guest's round
/// trips can exceed what the FDT allows on a busy machine, and mpathd then rightly raises it
/// with in.mpathd's warning. The guest's speed is not what this test checks (the probe
/// tests check the FDT).
fn clean_start_warnings(records: &[serde_json::Value]) -> Vec<String> {
    let warnings: Vec<_> = at_least(records, 4)
        .into_iter()
        .filter(|r| {
            !field(r, "MESSAGE").starts_with("Cannot meet requested failure detection time")
        })
        .collect();
    messages(&warnings)
}

/// What PID 1 logged about mpathd.service (with its log level at debug: every notification
/// message it got, with its text).
fn systemd_lines() -> Vec<String> {
    journal(&["_PID=1", "UNIT=mpathd.service"])
        .iter()
        .filter_map(|r| r["MESSAGE"].as_str().map(str::to_string))
        .collect()
}

fn status() -> Option<Status> {
    match control::request(Path::new(SOCKET), &Request::Status {}) {
        Ok(Reply::Status(s)) => Some(s),
        _ => None,
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + scaled(Duration::from_secs(20));
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; mpathd's journal:\n{}",
            journal_text()
        );
        sleep(Duration::from_millis(100));
    }
}

/// Logs the time since `since` at a step of the test, for the guest run's timings (straight
/// to the descriptor: libtest keeps what eprintln! writes in a passing test).
fn step(since: Instant, what: &str) {
    use std::io::Write as _;
    let secs = since.elapsed().as_secs_f64();
    let _ = writeln!(std::io::stderr(), "under_systemd: {secs:5.1} s: {what}");
}

/// Whether the datapath is loaded and attached: programs and maps pinned, the tc programs
/// on h0.
fn datapath_in_place(lab: &Lab) -> bool {
    let pinned = fs::read_dir(PINS).is_ok_and(|d| d.count() > 0);
    pinned && hooks(lab.host(), "h0").has_tc_programs()
}

fn install(lab: &Lab) {
    for (name, dir) in [("mpathd", "/usr/sbin"), ("mpathctl", "/usr/bin")] {
        fs::copy(binary(name), Path::new(dir).join(name)).unwrap();
    }
    fs::copy(
        dist_path("mpathd.service"),
        "/etc/systemd/system/mpathd.service",
    )
    .unwrap();
    let dropins = Path::new("/etc/systemd/system/mpathd.service.d");
    fs::create_dir_all(dropins).unwrap();
    fs::write(
        dropins.join("lab.conf"),
        format!(
            "[Service]\nNetworkNamespacePath={}\n",
            lab.host().path().display()
        ),
    )
    .unwrap();
    // Probes every 714 ms: an emulated guest's round trips seldom make mpathd raise the FDT
    // (see `clean_start_warnings`).
    write_config(FDT_MS);
    run("systemctl", &["daemon-reload"]);
}

fn write_config(fdt_ms: u64) {
    fs::create_dir_all("/etc/mpath").unwrap();
    let text = three_nic_config(fdt_ms)
        .replace("SOCKET", SOCKET)
        .replace("PINS", PINS);
    fs::write(CONFIG, text).unwrap();
}

/// A command's exit status and what it printed, without asserting success.
fn try_run(program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The data addresses missing from h0 and h1 now.
fn addresses_missing(lab: &Lab) -> Vec<&'static str> {
    data_addresses_missing(
        &lab.host_addrs("h0").unwrap(),
        &lab.host_addrs("h1").unwrap(),
    )
}

/// Waits for systemd to have started mpathd again (after `previous` exited) with
/// `restarts` restarts of its own counted, running (READY=1 came), then checks what the new
/// mpathd adopted: the data addresses and the datapath where they were. Returns the new pid.
fn restarted(lab: &Lab, previous: &str, restarts: u32, why: &str) -> String {
    let mut pid = String::new();
    wait_until(why, || {
        let shown = run(
            "systemctl",
            &[
                "show",
                "mpathd",
                "-p",
                "NRestarts,MainPID,ActiveState,SubState",
            ],
        );
        let value = |key: &str| {
            shown
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .unwrap_or_default()
                .to_string()
        };
        pid = value("MainPID");
        pid != previous
            && value("NRestarts") == restarts.to_string()
            && value("ActiveState") == "active"
            && value("SubState") == "running"
    });
    let missing = addresses_missing(lab);
    assert!(missing.is_empty(), "{why}: {missing:?} missing");
    assert!(datapath_in_place(lab), "{why}: no datapath");
    pid
}

#[test]
#[ignore = "needs systemd as PID 1 on a root it may change: `cargo xtask test` boots one"]
fn the_unit_starts_reloads_keeps_its_watchdog_fails_over_restarts_and_stops_leaving_the_datapath() {
    let pid1 = fs::read_to_string("/proc/1/comm").unwrap();
    assert!(
        std::env::var_os("MPATH_UNDER_SYSTEMD").is_some() && pid1.trim() == "systemd",
        "this test installs mpathd into the root it runs on: it runs in the guest that \
         `cargo xtask test` (or `cargo xtask test --unit-only`) boots with systemd as PID 1"
    );
    let begin = Instant::now();
    let lab = Lab::builder().nics(3).build().expect("lab");
    install(&lab);
    step(begin, "lab made, mpathd and its unit installed");
    // PID 1 logs each notification message it gets (READY=1, RELOADING=1) at debug level.
    run("systemd-analyze", &["log-level", "debug"]);

    // Type=notify: `systemctl start` returns once READY=1 came, with the addresses placed.
    run("systemctl", &["start", "mpathd"]);
    let started = Instant::now();
    step(begin, "started");
    let addresses = [lab.host_addrs("h0").unwrap(), lab.host_addrs("h1").unwrap()];
    assert_eq!(property("ActiveState"), "active");
    let missing = data_addresses_missing(&addresses[0], &addresses[1]);
    assert!(
        missing.is_empty(),
        "{missing:?} not in place when `systemctl start` returned: {addresses:?}"
    );
    let pid = property("MainPID");
    let from = |message: &str| format!("Got notification message from PID {pid} ({message}");
    wait_until("systemd to log mpathd's READY=1", || {
        systemd_lines()
            .iter()
            .any(|l| l.contains(&from("READY=1, STATUS=g0 ")))
    });
    // STATUS= is right from READY=1 on: the NICs whose probe targets are not known yet are
    // not called "not ok" (it said "0 ok, 3 not ok" for a second).
    let ready = systemd_lines()
        .into_iter()
        .find(|l| l.contains(&from("READY=1, STATUS=g0 ")))
        .unwrap();
    assert!(
        ready.contains("g0 ok; NICs: ") && ready.contains(", 0 not ok"),
        "{ready}"
    );
    // The hardened unit loads and attaches the eBPF programs.
    assert!(datapath_in_place(&lab), "no datapath: {}", journal_text());
    let first_watchdog: u64 = property("WatchdogTimestampMonotonic").parse().unwrap();

    wait_until("every NIC ok", || {
        status().is_some_and(|s| {
            NICS.iter()
                .all(|n| state_of(&s, n) == Some(InterfaceStatus::Ok))
        })
    });
    wait_until("STATUS= with every NIC ok", || {
        property("StatusText") == "g0 ok; NICs: 3 ok, 0 not ok"
    });
    let groups = run("mpathctl", &["groups"]);
    assert!(
        groups
            .lines()
            .any(|l| l.starts_with("g0") && l.contains("ok")),
        "mpathctl groups:\n{groups}"
    );

    let warnings = clean_start_warnings(&mpathd_records());
    assert!(
        warnings.is_empty(),
        "warnings on a clean start:\n{}",
        warnings.join("\n")
    );
    step(begin, "every NIC ok");

    // Enabled at boot through its WantedBy=, as Debian's presets (no `disable *`) and the
    // package's postinst (deb-systemd-helper enable) enable it.
    run("systemctl", &["preset", "mpathd"]);
    assert_eq!(
        run("systemctl", &["is-enabled", "mpathd"]).trim(),
        "enabled"
    );
    let wanted = "/etc/systemd/system/multi-user.target.wants/mpathd.service";
    assert_eq!(
        fs::read_link(wanted).unwrap(),
        Path::new("/etc/systemd/system/mpathd.service")
    );
    step(begin, "enabled");

    // `systemctl reload`: `mpathctl reload`, RELOADING=1 and READY=1 to systemd, the new
    // file applied.
    write_config(RELOADED_FDT_MS);
    run("systemctl", &["reload", "mpathd"]);
    wait_until("the reload applied and the unit active", || {
        property("ActiveState") == "active"
            && status().is_some_and(|s| s.groups[0].fdt_ms >= RELOADED_FDT_MS)
    });
    let metrics = scrape(lab.host()).expect("metrics");
    assert_eq!(
        sample(&metrics, "mpath_config_reloads_total{result=\"applied\"}"),
        Some(1.0),
        "{metrics}"
    );
    // The hardening lets mpathd attach its source hook to the root cgroup too.
    assert_eq!(
        sample(&metrics, "mpath_source_hook_attached"),
        Some(1.0),
        "{metrics}"
    );
    wait_until("systemd to hear the reload's end", || {
        let lines = systemd_lines();
        let reloading = lines
            .iter()
            .position(|l| l.contains(&from("RELOADING=1, MONOTONIC_USEC=")));
        reloading.is_some_and(|at| lines[at..].iter().any(|l| l.contains(&from("READY=1"))))
    });

    step(begin, "reloaded");

    // A failover caused by taking h1 down: the address moves, STATUS= and the journal say so.
    lab.host().ip(&["link", "set", "h1", "down"]).unwrap();
    wait_until("h1 failed, its address on h2", || {
        status().is_some_and(|s| {
            state_of(&s, "h1") == Some(InterfaceStatus::Failed)
                && inbound(&s, "192.0.2.20/24") == Some("h2")
        }) && lab
            .host_addrs("h2")
            .unwrap()
            .iter()
            .any(|a| a == "192.0.2.20/24")
    });
    let degraded = "g0 degraded; NICs: 2 ok, 1 not ok (h1 failed)";
    wait_until("STATUS= with h1 failed", || {
        property("StatusText") == degraded
    });
    let shown = Command::new("systemctl")
        .args(["status", "mpathd", "--no-pager"])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains(&format!("Status: \"{degraded}\"")),
        "systemctl status:\n{shown}"
    );
    let records = mpathd_records();
    assert!(
        records
            .iter()
            .all(|r| r["MESSAGE"].as_str().is_some_and(|m| !m.contains('\x1b'))),
        "records that are not plain text: {records:#?}"
    );
    assert!(
        records.iter().any(|r| field(r, "PRIORITY") == "6"),
        "no info records: {records:#?}"
    );
    assert!(
        records.iter().any(|r| field(r, "PRIORITY") == "4"
            && field(r, "GROUP") == "g0"
            && field(r, "INTERFACE") == "h1"
            && field(r, "MESSAGE").contains("h1")),
        "no warning with GROUP=g0 INTERFACE=h1: {records:#?}"
    );
    let errors = messages(&at_least(&records, 3));
    assert!(
        errors.is_empty(),
        "errors in the journal:\n{}",
        errors.join("\n")
    );
    lab.host().ip(&["link", "set", "h1", "up"]).unwrap();
    wait_until("h1 repaired, its address back", || {
        status().is_some_and(|s| {
            state_of(&s, "h1") == Some(InterfaceStatus::Ok)
                && inbound(&s, "192.0.2.20/24") == Some("h1")
        })
    });

    step(begin, "failed over and back");

    // A refused file: `systemctl reload` fails with mpathd's reason, mpathd serves on with
    // the running configuration.
    fs::write(CONFIG, "[[group]\n").unwrap();
    let (reloaded, said) = try_run("systemctl", &["reload", "mpathd"]);
    assert!(
        !reloaded,
        "systemctl reload of a bad file succeeded: {said}"
    );
    assert_eq!(property("ActiveState"), "active");
    assert_eq!(property("MainPID"), pid);
    assert!(
        status().is_some_and(|s| s.groups[0].fdt_ms >= RELOADED_FDT_MS),
        "the running configuration was not kept"
    );
    let metrics = scrape(lab.host()).expect("metrics");
    assert_eq!(
        sample(&metrics, "mpath_config_reloads_total{result=\"refused\"}"),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        journal_text().contains("reload refused, the running configuration stays"),
        "{}",
        journal_text()
    );
    write_config(RELOADED_FDT_MS);
    step(begin, "a refused reload failed");

    // Three watchdog periods (WatchdogSec=10s): fed, never fired.
    let periods = Duration::from_secs(30);
    if let Some(rest) = periods.checked_sub(started.elapsed()) {
        sleep(rest);
    }
    assert_eq!(property("WatchdogUSec"), "10s");
    assert_eq!(property("ActiveState"), "active");
    assert_eq!(property("MainPID"), pid, "mpathd was restarted");
    assert_eq!(property("NRestarts"), "0");
    let last_watchdog: u64 = property("WatchdogTimestampMonotonic").parse().unwrap();
    assert!(
        last_watchdog > first_watchdog + 20_000_000,
        "the watchdog was not fed: last at {last_watchdog} µs, first at {first_watchdog} µs"
    );
    assert!(
        !systemd_lines()
            .iter()
            .any(|l| l.contains("Watchdog timeout")),
        "{:#?}",
        systemd_lines()
    );

    step(begin, "30 s without a watchdog timeout");

    // `systemctl restart`: the new mpathd adopts; the data addresses never leave meanwhile.
    let watching = std::sync::atomic::AtomicBool::new(true);
    let (missing, pid) = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            let mut gaps = Vec::new();
            while watching.load(std::sync::atomic::Ordering::Relaxed) {
                gaps.extend(addresses_missing(&lab));
                sleep(Duration::from_millis(50));
            }
            gaps
        });
        run("systemctl", &["restart", "mpathd"]);
        let pid = restarted(&lab, &pid, 0, "mpathd restarted by systemctl");
        watching.store(false, std::sync::atomic::Ordering::Relaxed);
        (watcher.join().unwrap(), pid)
    });
    assert!(
        missing.is_empty(),
        "missing during the restart: {missing:?}"
    );
    step(begin, "restarted, adopting");

    // A crash: Restart=on-failure starts it again (RestartSec=1s), and it adopts.
    run("kill", &["-KILL", &pid]);
    let pid = restarted(&lab, &pid, 1, "mpathd restarted after SIGKILL");
    step(begin, "restarted after a crash");

    // A stuck event loop: no WATCHDOG=1 for WatchdogSec, so systemd kills it (SIGABRT) and
    // restarts it.
    run("kill", &["-STOP", &pid]);
    let stopped = Instant::now();
    let pid = restarted(&lab, &pid, 2, "mpathd restarted by its watchdog");
    assert!(
        stopped.elapsed() >= Duration::from_secs(10),
        "restarted {:?} after SIGSTOP, before WatchdogSec=10s",
        stopped.elapsed()
    );
    assert!(
        systemd_lines()
            .iter()
            .any(|l| l.contains("Watchdog timeout")),
        "{:#?}",
        systemd_lines()
    );
    assert_eq!(property("MainPID"), pid);
    step(begin, "restarted by the watchdog");

    // `systemctl stop`: SIGTERM; the datapath stays pinned and attached, the addresses stay.
    run("systemctl", &["stop", "mpathd"]);
    assert_eq!(property("ActiveState"), "inactive");
    assert_eq!(property("Result"), "success");
    assert!(datapath_in_place(&lab), "the datapath went with mpathd");
    assert!(
        lab.host_addrs("h1")
            .unwrap()
            .iter()
            .any(|a| a == "192.0.2.20/24")
    );

    // Taking mpath off the host: `mpathd --teardown` removes the pins and programs.
    let netns = format!("--net={}", lab.host().path().display());
    run("nsenter", &[&netns, "mpathd", "--teardown"]);
    assert!(!Path::new(PINS).exists(), "pins left after --teardown");
    let left = hooks(lab.host(), "h0");
    assert!(
        !left.has_any_mpath_program(),
        "programs left on h0 after --teardown: {left:?}"
    );
    step(begin, "stopped and torn down");
}
