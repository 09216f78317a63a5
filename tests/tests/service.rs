//! mpathd as a system service: what it writes to a log that is not a terminal, and its
//! readiness and watchdog messages to systemd.

use std::{
    os::unix::net::UnixDatagram,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use mpath_ctl::api::control::{self, Request};
use mpath_ctl::core::state::InterfaceStatus;
use mpath_lab::Lab;
use mpath_tests::{
    PinDir,
    daemon::{Mpathd, binary, data_addresses_missing, state_of, three_nic_config},
};

fn lab() -> Lab {
    Lab::builder().nics(3).build().expect("lab")
}

/// Whether every NIC is ok and probes over both families (IPv6 after the link-local
/// addresses' duplicate address detection, the start-up wait that must not look like an
/// error).
fn settled(d: &Mpathd) -> bool {
    d.try_status().is_some_and(|s| {
        ["h0", "h1", "h2"].iter().all(|nic| {
            state_of(&s, nic) == Some(InterfaceStatus::Ok)
                && s.targets.iter().any(|t| {
                    t.interface == *nic
                        && t.test_address
                            .is_some_and(|a| a.to_string().starts_with("fe80::"))
                })
        })
    })
}

#[test]
fn a_clean_start_logs_plain_text_without_errors() {
    let lab = lab();
    // As at boot: the NICs have just come up, their link-local addresses still tentative,
    // for 5 s (a second per DAD probe): a debug mpathd on a loaded machine takes more than
    // the usual one to get to them.
    for nic in ["h0", "h1", "h2"] {
        for (key, value) in [("accept_dad", "1"), ("dad_transmits", "5")] {
            let setting = format!("net.ipv6.conf.{nic}.{key}={value}");
            lab.host().run(&["sysctl", "-qw", &setting]).unwrap();
        }
        lab.host().ip(&["link", "set", nic, "down"]).unwrap();
        lab.host().ip(&["link", "set", nic, "up"]).unwrap();
    }
    let mut daemon = Mpathd::start(lab.host(), &three_nic_config(700));
    daemon.wait_until("all NICs ok, probing IPv6 too", settled);
    let log = daemon.log();
    assert!(
        log.contains("starts once its duplicate address detection ends"),
        "the wait for DAD was not met or not named:\n{log}"
    );
    assert!(!log.contains('\x1b'), "escape codes in a file log:\n{log}");
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(
        errors.is_empty(),
        "errors on a clean start: {errors:#?}\n{log}"
    );
    // Levels stay readable without colour.
    assert!(log.lines().any(|l| l.contains(" INFO ")), "{log}");
}

/// The notification socket systemd would listen on, removed on drop.
struct NotifySocket {
    path: std::path::PathBuf,
    socket: UnixDatagram,
}

impl NotifySocket {
    /// One per test: the tests of this binary run in parallel in one process.
    fn new() -> NotifySocket {
        static MADE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let serial = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("mpathd-notify-{}-{serial}", std::process::id()));
        let _: Result<_, _> = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        NotifySocket { path, socket }
    }

    /// The next datagram; panics after 20 s without one.
    fn next(&self) -> String {
        let mut buf = [0; 4096];
        let n = self
            .socket
            .recv(&mut buf)
            .expect("a notification from mpathd");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _: Result<_, _> = std::fs::remove_file(&self.path);
    }
}

#[test]
fn systemd_hears_ready_once_the_addresses_are_placed_then_the_watchdog_and_status() {
    let lab = lab();
    let notify = NotifySocket::new();
    let path = notify.path.display().to_string();
    let env = [
        ("NOTIFY_SOCKET", path.as_str()),
        // 1 s: fed every 500 ms.
        ("WATCHDOG_USEC", "1000000"),
    ];
    let (daemon, (ready, ready_at, addresses)) = std::thread::scope(|s| {
        // Read the host's addresses the moment READY=1 arrives.
        let watcher = s.spawn(|| {
            let ready = notify.next();
            let ready_at = Instant::now();
            let addresses = [lab.host_addrs("h0").unwrap(), lab.host_addrs("h1").unwrap()];
            (ready, ready_at, addresses)
        });
        let daemon = Mpathd::start_with_env(lab.host(), &three_nic_config(700), &env);
        (daemon, watcher.join().unwrap())
    });
    let mut daemon = daemon;
    // The first message, READY=1 with the first status line, which calls no NIC "not ok"
    // (those without a probe target yet are "unconfirmed").
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert!(
        ready.contains("STATUS=g0 ok; NICs: ") && ready.contains(", 0 not ok"),
        "{ready:?}"
    );
    // The line follows the NICs as soon as they are confirmed (it was made again once a
    // second, and said "0 ok, 3 not ok" for that second).
    let all_ok = "STATUS=g0 ok; NICs: 3 ok, 0 not ok";
    if !ready.lines().any(|l| l == all_ok) {
        while !notify.next().lines().any(|l| l == all_ok) {
            assert!(ready_at.elapsed() < Duration::from_secs(5), "no {all_ok}");
        }
        let delay = ready_at.elapsed();
        eprintln!("mpath-test: measured every NIC ok in STATUS= {delay:?} after {ready:?}");
        // The old once-a-second line could not change before a second had passed.
        assert!(delay < Duration::from_millis(900), "{delay:?}");
    }
    let missing = data_addresses_missing(&addresses[0], &addresses[1]);
    assert!(
        missing.is_empty(),
        "{missing:?} not in place at READY=1: {addresses:?}"
    );

    // The watchdog keeps being fed: about 6 times in 3 s.
    let since = Instant::now();
    let mut watchdogs = 0;
    while since.elapsed() < Duration::from_secs(3) {
        if notify.next().lines().any(|l| l == "WATCHDOG=1") {
            watchdogs += 1;
        }
    }
    assert!(watchdogs >= 4, "{watchdogs} WATCHDOG=1 in 3 s");

    // A failure shows in the status line within a second or so.
    lab.cut("h1").unwrap();
    let since = Instant::now();
    let status = loop {
        let message = notify.next();
        if let Some(line) = message.lines().find(|l| l.contains("h1 failed")) {
            break line.to_string();
        }
        assert!(
            since.elapsed() < Duration::from_secs(5),
            "no failure in the status"
        );
    };
    assert_eq!(
        status,
        "STATUS=g0 degraded; NICs: 2 ok, 1 not ok (h1 failed)"
    );

    daemon.stop();
    let last = std::iter::repeat_with(|| notify.next())
        .find(|m| m.contains("STOPPING=1"))
        .unwrap();
    assert!(last.contains("STATUS=stopping"), "{last:?}");
}

/// The fields of one datagram of journald's native protocol: `KEY=VALUE\n`, or `KEY\n`, a
/// little-endian 64-bit length and the value's bytes, then `\n`.
fn journal_fields(mut rest: &[u8]) -> Vec<(String, String)> {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let mut fields = Vec::new();
    while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
        let line = &rest[..nl];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            fields.push((text(&line[..eq]), text(&line[eq + 1..])));
            rest = &rest[nl + 1..];
        } else {
            let len = u64::from_le_bytes(rest[nl + 1..nl + 9].try_into().unwrap()) as usize;
            fields.push((text(line), text(&rest[nl + 9..nl + 9 + len])));
            rest = &rest[nl + 9 + len + 1..];
        }
    }
    fields
}

/// Kills mpathd (SIGTERM) when the test ends, also on a panic.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _: Result<_, _> = self.0.wait();
    }
}

/// Under systemd, with stderr connected to the journal, mpathd writes journal records with
/// priorities and GROUP=/INTERFACE= fields, and no text. journald is faked: in mpathd's
/// private mount namespace a tmpfs on /run holds /run/systemd/journal/socket, a link to a
/// socket of the test's.
#[test]
fn under_systemd_the_log_goes_to_the_journal_with_priorities_and_fields() {
    let lab = lab();
    let pins = PinDir::new();
    let dir = std::env::temp_dir().join(format!(
        "mpathd-journal-{}",
        pins.path().file_name().unwrap().to_string_lossy()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let journal_path = dir.join("journal.sock");
    let journal = UnixDatagram::bind(&journal_path).unwrap();
    // Drained from the start, as journald does: a datagram socket holds only a few records
    // (net.unix.max_dgram_qlen), and a full one blocks the writer.
    let (records_tx, records) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = vec![0; 65536];
        while let Ok(n) = journal.recv(&mut buf) {
            if records_tx.send(journal_fields(&buf[..n])).is_err() {
                break;
            }
        }
    });
    let socket = dir.join("mpathd.sock");
    let config = dir.join("mpathd.toml");
    let text = three_nic_config(700)
        .replace("SOCKET", &socket.display().to_string())
        .replace("PINS", &pins.path().display().to_string());
    std::fs::write(&config, text).unwrap();
    let stderr = std::fs::File::create(dir.join("stderr")).unwrap();
    // JOURNAL_STREAM names stderr's device and inode, as systemd sets it.
    let script = format!(
        "mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal && \
         ln -s {} /run/systemd/journal/socket && \
         JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) exec \"$@\"",
        journal_path.display()
    );
    let child = lab
        .host()
        .daemon_command("sh")
        .unwrap()
        .args(["-c", &script, "sh"])
        .arg(binary("mpathd"))
        .arg("--config")
        .arg(&config)
        .args(["--defaults", "/nonexistent"])
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let running = Running(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while control::request(&socket, &Request::Status {}).is_err() {
        assert!(Instant::now() < deadline, "mpathd did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    lab.cut("h1").unwrap();
    let mut failure = None;
    let mut failover = None;
    while failure.is_none() || failover.is_none() {
        let fields = records
            .recv_timeout(Duration::from_secs(20))
            .expect("journal records");
        let has = |k: &str, v: &str| fields.iter().any(|(fk, fv)| fk == k && fv == v);
        let says = |text: &str| {
            fields
                .iter()
                .any(|(k, v)| k == "MESSAGE" && v.contains(text))
        };
        if has("INTERFACE", "h1") && has("PRIORITY", "4") {
            failure = Some(fields);
        } else if says("Successfully failed over from NIC h1") {
            failover = Some(fields);
        }
    }
    let (failure, failover) = (failure.unwrap(), failover.unwrap());
    let value = |record: &[(String, String)], k: &str| {
        record
            .iter()
            .find(|(fk, _)| fk == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        value(&failure, "GROUP").as_deref(),
        Some("g0"),
        "{failure:?}"
    );
    assert_eq!(
        value(&failure, "SYSLOG_IDENTIFIER").as_deref(),
        Some("mpathd"),
        "{failure:?}"
    );
    assert!(
        value(&failure, "MESSAGE").is_some_and(|m| m.contains("h1")),
        "{failure:?}"
    );
    // `journalctl GROUP=g0 INTERFACE=h1` finds the failover, at INFO's priority (6).
    assert_eq!(
        value(&failover, "GROUP").as_deref(),
        Some("g0"),
        "{failover:?}"
    );
    assert_eq!(
        value(&failover, "INTERFACE").as_deref(),
        Some("h1"),
        "{failover:?}"
    );
    assert_eq!(
        value(&failover, "PRIORITY").as_deref(),
        Some("6"),
        "{failover:?}"
    );
    let text = std::fs::read_to_string(dir.join("stderr")).unwrap();
    assert!(text.is_empty(), "text written besides the journal: {text}");
    drop(running);
    let _: Result<_, _> = std::fs::remove_dir_all(&dir);
}

/// CLOCK_MONOTONIC in microseconds, as MONOTONIC_USEC= carries it.
fn monotonic_usec() -> u64 {
    // SAFETY: clock_gettime fills the zeroed timespec we pass.
    let mut now: libc::timespec = unsafe { std::mem::zeroed() };
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) },
        0
    );
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1000
}

/// systemd's reload protocol: RELOADING=1 with the monotonic time as SIGHUP is handled, then
/// READY=1 once the new configuration is applied (or refused), so that `systemctl reload`
/// returns after the reload rather than before.
#[test]
fn a_reload_is_announced_with_reloading_and_ends_with_ready() {
    let lab = lab();
    let notify = NotifySocket::new();
    let path = notify.path.display().to_string();
    let mut daemon = Mpathd::start_with_env(
        lab.host(),
        &three_nic_config(700),
        &[("NOTIFY_SOCKET", path.as_str())],
    );
    let ready = notify.next();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    daemon.wait_until("all NICs ok", |d| {
        d.try_status().is_some_and(|s| {
            ["h0", "h1", "h2"]
                .iter()
                .all(|n| state_of(&s, n) == Some(InterfaceStatus::Ok))
        })
    });

    // A reload that changes the failure detection time.
    let sent = monotonic_usec();
    daemon.reload(&three_nic_config(1400));
    let reloading = std::iter::repeat_with(|| notify.next())
        .find(|m| !m.starts_with("STATUS="))
        .unwrap();
    let lines: Vec<&str> = reloading.lines().collect();
    assert_eq!(lines[0], "RELOADING=1", "{reloading:?}");
    let usec: u64 = lines
        .iter()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC= in {reloading:?}"))
        .parse()
        .unwrap();
    assert!(
        (sent..=monotonic_usec()).contains(&usec),
        "MONOTONIC_USEC={usec} is not the time of the reload ({sent}..)"
    );
    let done = notify.next();
    assert!(done.lines().any(|l| l == "READY=1"), "{done:?}");
    assert!(done.contains("STATUS=g0 "), "{done:?}");
    // READY=1 came once the new configuration was in force.
    assert_eq!(daemon.status().groups[0].fdt_ms, 1400);

    // A refused reload (a broken file) ends with READY=1 too, on the running configuration.
    // (STATUS= alone may come before: the line follows the rebuilt group's NICs at once.)
    daemon.reload("[[group]\n");
    let reloading = std::iter::repeat_with(|| notify.next())
        .find(|m| !m.starts_with("STATUS="))
        .unwrap();
    assert!(reloading.starts_with("RELOADING=1\n"), "{reloading:?}");
    let done = notify.next();
    assert!(done.lines().any(|l| l == "READY=1"), "{done:?}");
    assert_eq!(daemon.status().groups[0].fdt_ms, 1400);
    let log = daemon.log();
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains("reload")),
        "the refusal was not logged:\n{log}"
    );
}
