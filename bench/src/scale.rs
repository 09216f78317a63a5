//! `failover`, probing at scale: probe-based failure detection at FDT 100 ms with 1, 8 and 32
//! NICs probing, mpathd beside FRR's bfdd at the same detection time on the same lab.
//!
//! Each NIC count gets a fresh lab. mpathd probes the router from a test address on every NIC
//! (groups of [`NICS_PER_GROUP`]: mpathd takes at most 16 IPv4 test addresses per group); a
//! bfdd in the host namespace runs one single-hop BFD session per NIC, from the same test
//! address, to a bfdd in the router namespace (at a router address per NIC). Both run side by
//! side, so every fault and the saturating traffic hit them alike:
//! - detection: a NIC is dropped silently (`Lab::drop_silently`); the time from the drop to
//!   mpathd's failure line and to the host bfdd's `up -> down` line, both read off their logs
//!   (same clock); the NIC is restored and both must recover before the next repetition;
//! - CPU: each daemon's utime + stime from `/proc/<pid>/stat` over an idle window, then over
//!   the false-failure window;
//! - false failures: minutes of saturating UDP both ways (as in the 3-NIC false-failure run),
//!   counting the failures either declares.

use std::{
    fmt::Write as _,
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use mpath_ctl::core::state::InterfaceStatus;
use mpath_lab::{Lab, Netns, ROUTER_V4};
use mpath_tests::daemon::Mpathd;

use super::{
    DATA_V4, SATURATING_FLOWS, cpus, load_average, log_time_ns, percentile, saturate, state_of,
    strip_ansi, wire_counters, write_section,
};

/// Used when `--false-failure-minutes` is not given.
pub(crate) const DEFAULT_MINUTES: u64 = 10;
const NIC_COUNTS: [u32; 3] = [1, 8, 32];
const FDT_MS: u64 = 100;
/// mpathd refuses more than `MAX_TEST_ADDRESSES_PER_GROUP` (16) test addresses in a group:
/// larger labs are split into groups of this many NICs.
const NICS_PER_GROUP: u32 = 8;
/// BFD detection time = multiplier x interval = 100 ms, mpathd's FDT; 5 like in.mpathd's
/// NUM_PROBE_FAILS.
const BFD_MULTIPLIER: u64 = 5;
const BFD_INTERVAL_MS: u64 = 20;
const BFDD: &str = "/usr/lib/frr/bfdd";
const VTYSH: &str = "/usr/bin/vtysh";
/// bfdd drops root for this user (FRR's package creates it); its directories must be its own.
const FRR_USER: &str = "frr";
/// Successive repetitions fail NIC `rep * NIC_STRIDE mod n`: coprime with 8 and 32, so the
/// failures visit every NIC and group instead of the first few.
const NIC_STRIDE: u64 = 13;
/// The idle window the daemons' own CPU use is measured over: no traffic, no faults, no
/// requests.
const QUIET: Duration = Duration::from_secs(60);
const DETECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// bfdd sends at most one packet a second while a session is down (RFC 5880), so coming back
/// up and agreeing the fast timers again takes a few seconds.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// The second data address of the saturating traffic (the first is [`DATA_V4`]).
const DATA2_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 20);

/// The test address of NIC `hI`, used by mpathd's probes and by bfdd's session alike.
fn test_address(index: u32) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 100 + index as u8)
}

/// The router's end of NIC `hI`'s BFD session. bfdd keys a single-hop session by its peer
/// (the local address is left out of the key), so each NIC's session needs a peer address of
/// its own; mpathd probes the router's main address.
fn router_address(index: u32) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 200 + index as u8)
}

fn group_of(index: u32) -> String {
    format!("g{}", index / NICS_PER_GROUP)
}

/// The NIC of each of the two data addresses: h0 and h1, or h0 for both in a 1-NIC lab.
fn data_nics(nics: u32) -> [u32; 2] {
    [0, 1.min(nics - 1)]
}

/// mpathd at FDT 100 ms, every NIC probing the router from its test address, in groups of
/// [`NICS_PER_GROUP`]; the data addresses of the saturating traffic on [`data_nics`].
/// `SOCKET` and `PINS` are filled in by `Mpathd::start`.
fn mpathd_config(nics: u32) -> String {
    let mut toml = format!(
        "[daemon]\nfailure_detection_time_ms = {FDT_MS}\nfailback = true\n\
         socket = \"SOCKET\"\nbpf_pin_dir = \"PINS\"\n"
    );
    let data_nics = data_nics(nics);
    for index in 0..nics {
        if index % NICS_PER_GROUP == 0 {
            let _ = write!(
                toml,
                "\n[[group]]\nname = \"{}\"\ntargets = [\"{ROUTER_V4}\"]\n",
                group_of(index)
            );
        }
        let data: Vec<String> = [DATA_V4, DATA2_V4]
            .iter()
            .zip(data_nics)
            .filter(|(_, nic)| *nic == index)
            .map(|(address, _)| format!("\"{address}/24\""))
            .collect();
        let _ = write!(
            toml,
            "\n[[group.interface]]\nname = \"h{index}\"\ntest_address = \"{}/24\"\n\
             data_addresses = [{}]\n",
            test_address(index),
            data.join(", ")
        );
    }
    toml
}

/// One BFD session of a bfdd: the peer's address and the local one it is sent from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Session {
    peer: Ipv4Addr,
    local: Ipv4Addr,
}

/// bfdd's configuration: a log file with microsecond timestamps and state changes (`debug bfd
/// peer` logs them, nothing per packet), and one single-hop session per entry of `sessions`
/// at [`BFD_MULTIPLIER`] x [`BFD_INTERVAL_MS`] both ways.
fn bfdd_config(log: &Path, sessions: &[Session]) -> String {
    let mut text = format!(
        "log file {} debugging\nlog timestamp precision 6\ndebug bfd peer\nbfd\n",
        log.display()
    );
    for s in sessions {
        let _ = write!(
            text,
            " peer {} local-address {}\n  detect-multiplier {BFD_MULTIPLIER}\n  \
             receive-interval {BFD_INTERVAL_MS}\n  transmit-interval {BFD_INTERVAL_MS}\n exit\n",
            s.peer, s.local
        );
    }
    text.push_str("exit\n");
    text
}

/// What `show bfd peers json` says of one session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PeerState {
    local: Ipv4Addr,
    up: bool,
    /// The intervals the other end asks for; 1000 ms until the fast timers are agreed after
    /// the session came up (a poll sequence).
    remote_receive_ms: u64,
    remote_transmit_ms: u64,
}

impl PeerState {
    /// Up, and on the fast timers: only then does the detection time hold.
    fn ready(&self) -> bool {
        self.up
            && self.remote_receive_ms == BFD_INTERVAL_MS
            && self.remote_transmit_ms == BFD_INTERVAL_MS
    }
}

fn parse_bfd_peers(json: &str) -> anyhow::Result<Vec<PeerState>> {
    let value: serde_json::Value =
        serde_json::from_str(json).with_context(|| format!("bfdd's peers: not JSON: {json}"))?;
    let peers = value
        .as_array()
        .with_context(|| format!("bfdd's peers: not a list: {json}"))?;
    peers
        .iter()
        .map(|p| {
            let text = |key: &str| {
                p.get(key)
                    .and_then(|v| v.as_str())
                    .with_context(|| format!("bfdd's peer without {key:?}: {p}"))
            };
            let number = |key: &str| {
                p.get(key)
                    .and_then(|v| v.as_u64())
                    .with_context(|| format!("bfdd's peer without {key:?}: {p}"))
            };
            Ok(PeerState {
                local: text("local")?
                    .parse()
                    .with_context(|| format!("bfdd's peer with a bad local address: {p}"))?,
                up: text("status")? == "up",
                remote_receive_ms: number("remote-receive-interval")?,
                remote_transmit_ms: number("remote-transmit-interval")?,
            })
        })
        .collect()
}

/// bfdd's log timestamp (`2026/11/23 13:41:52.513936`, local time, which is UTC as bfdd runs
/// with TZ=UTC) in ns since the epoch.
fn bfdd_log_time_ns(line: &str) -> Option<i64> {
    let mut words = line.split_whitespace();
    let (date, time) = (words.next()?, words.next()?);
    let mut ymd = date.split('/').map(|p| p.parse::<i64>().ok());
    let (y, m, d) = (ymd.next()??, ymd.next()??, ymd.next()??);
    log_time_ns(&format!("{y:04}-{m:02}-{d:02}T{time}Z"))
}

/// Whether `line` is bfdd's note of a session going from up to down.
fn is_bfd_down(line: &str) -> bool {
    line.contains("state-change:") && line.contains("] up -> down")
}

/// When bfdd first logged the session from `local` going down.
fn bfdd_down_ns(log: &str, local: Ipv4Addr) -> Option<i64> {
    let needle = format!(" local:{local} ");
    log.lines()
        .find(|l| is_bfd_down(l) && l.contains(&needle))
        .and_then(bfdd_log_time_ns)
}

/// Whether `line` (colours stripped) is mpathd declaring a probe failure: a NIC failure, or
/// in a group where no other NIC answers (a 1-NIC group) a target failure of the group.
fn mpathd_failure_of(line: &str) -> Option<(&str, &str)> {
    if let Some(rest) = line.split_once("NIC failure detected on ").map(|(_, r)| r) {
        let (nic, group) = rest.split_once(" of group ")?;
        return Some((nic, group.split_whitespace().next()?));
    }
    let rest = line.split_once("All probe targets of group ")?.1;
    let group = rest.split_once(" stopped answering")?.0;
    Some(("", group))
}

/// When mpathd first declared `nic` (of `group`) failed.
fn mpathd_detection_ns(log: &str, nic: &str, group: &str) -> Option<i64> {
    log.lines().map(strip_ansi).find_map(|line| {
        let (failed, in_group) = mpathd_failure_of(&line)?;
        let ours = in_group == group && (failed == nic || failed.is_empty());
        ours.then(|| log_time_ns(&line)).flatten()
    })
}

/// utime and stime (clock ticks) of a `/proc/<pid>/stat` line: all threads of the process.
fn parse_cpu_ticks(stat: &str) -> Option<(u64, u64)> {
    // The command name in parentheses may hold spaces: count fields after its last ')'.
    // There, field 3 (state) comes first and utime and stime are fields 14 and 15.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime, stime))
}

/// CPU seconds of a process, in user space and in the kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct CpuTime {
    user_s: f64,
    system_s: f64,
}

impl CpuTime {
    fn total(self) -> f64 {
        self.user_s + self.system_s
    }

    fn since(self, earlier: CpuTime) -> CpuTime {
        CpuTime {
            user_s: self.user_s - earlier.user_s,
            system_s: self.system_s - earlier.system_s,
        }
    }

    fn plus(self, other: CpuTime) -> CpuTime {
        CpuTime {
            user_s: self.user_s + other.user_s,
            system_s: self.system_s + other.system_s,
        }
    }
}

/// CPU time `pid` has used so far.
fn cpu_time(pid: u32) -> anyhow::Result<CpuTime> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let (utime, stime) =
        parse_cpu_ticks(&stat).with_context(|| format!("no CPU times in {path}: {stat}"))?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if per_second <= 0 {
        bail!("sysconf(_SC_CLK_TCK) gave {per_second}");
    }
    Ok(CpuTime {
        user_s: utime as f64 / per_second as f64,
        system_s: stime as f64 / per_second as f64,
    })
}

/// CPU time mpathd, the host bfdd and the router bfdd used over a window.
#[derive(Clone, Copy, Debug, PartialEq)]
struct CpuWindow {
    wall_s: f64,
    mpathd: CpuTime,
    host_bfdd: CpuTime,
    router_bfdd: CpuTime,
}

impl CpuWindow {
    /// Measures the processes `pids` (mpathd, host bfdd, router bfdd) while `run` runs.
    fn during(
        pids: [u32; 3],
        run: impl FnOnce() -> anyhow::Result<()>,
    ) -> anyhow::Result<CpuWindow> {
        let sample = || -> anyhow::Result<[CpuTime; 3]> {
            Ok([cpu_time(pids[0])?, cpu_time(pids[1])?, cpu_time(pids[2])?])
        };
        let before = sample()?;
        let start = Instant::now();
        run()?;
        let wall_s = start.elapsed().as_secs_f64();
        let after = sample()?;
        Ok(CpuWindow {
            wall_s,
            mpathd: after[0].since(before[0]),
            host_bfdd: after[1].since(before[1]),
            router_bfdd: after[2].since(before[2]),
        })
    }
}

/// CPU use per NIC over a window: as % of one CPU, and as ms of CPU per second.
#[derive(Clone, Copy, Debug, PartialEq)]
struct PerNic {
    percent: f64,
    ms_per_second: f64,
}

impl PerNic {
    fn new(cpu_seconds: f64, wall_seconds: f64, nics: u32) -> PerNic {
        let share = cpu_seconds / wall_seconds / f64::from(nics);
        PerNic {
            percent: share * 100.0,
            ms_per_second: share * 1000.0,
        }
    }
}

fn realtime_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// Text of `log` from byte `offset` on (what was written since it was that long).
fn since(log: &str, offset: usize) -> &str {
    log.get(offset..).unwrap_or("")
}

/// FRR's bfdd running standalone (no zebra: sessions bound to a local address need nothing
/// from it) in a namespace, with its config, log, pid file and vty socket in its own
/// directory. Stopped and its directory removed on drop.
struct Bfdd {
    child: Child,
    dir: PathBuf,
    pid: u32,
}

impl Bfdd {
    fn start(ns: &Netns, role: &str, sessions: &[Session]) -> anyhow::Result<Bfdd> {
        for program in [BFDD, VTYSH] {
            if !Path::new(program).exists() {
                bail!(
                    "{program} is missing: the scale benchmark compares mpathd with FRR's bfdd; \
                     install FRR with `cargo xtask setup` (or `apt-get install frr`)"
                );
            }
        }
        // The lab's namespace names are unique per process and lab.
        let dir = std::env::temp_dir().join(format!("mpath-bench-bfdd-{}", ns.name()));
        let _: Result<_, _> = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let config = dir.join("bfdd.conf");
        fs::write(&config, bfdd_config(&dir.join("bfdd.log"), sessions))
            .with_context(|| format!("writing {}", config.display()))?;
        command_output(
            Command::new("chown")
                .args(["-R", &format!("{FRR_USER}:{FRR_USER}")])
                .arg(&dir),
        )
        .with_context(|| format!("handing {} to FRR's user {FRR_USER}", dir.display()))?;
        let output = fs::File::create(dir.join("bfdd.out"))?;
        let path = |name: &str| dir.join(name).display().to_string();
        let child = ns
            .cmd(BFDD)
            .args(["-f", &path("bfdd.conf")])
            .args(["--vty_socket", &path("")])
            .args(["-i", &path("bfdd.pid")])
            .args(["-z", &path("zserv.api")])
            .args(["--bfdctl", &path("bfdd.sock")])
            // No TCP vty: vtysh talks to the socket in `dir`.
            .args(["-P", "0"])
            .env("TZ", "UTC")
            .stdin(Stdio::null())
            .stdout(Stdio::from(output.try_clone()?))
            .stderr(Stdio::from(output))
            .spawn()
            .with_context(|| format!("starting {BFDD}"))?;
        let mut bfdd = Bfdd { child, dir, pid: 0 };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = bfdd.child.try_wait()? {
                bail!(
                    "bfdd ({role}) exited ({status}): {}",
                    fs::read_to_string(bfdd.dir.join("bfdd.out")).unwrap_or_default()
                );
            }
            let pid = fs::read_to_string(bfdd.dir.join("bfdd.pid")).unwrap_or_default();
            if let Ok(pid) = pid.trim().parse()
                && bfdd.peers().is_ok()
            {
                bfdd.pid = pid;
                return Ok(bfdd);
            }
            if Instant::now() > deadline {
                bail!("bfdd ({role}) did not answer on its vty socket within 10 s");
            }
            sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("bfdd.log")).unwrap_or_default()
    }

    fn peers(&self) -> anyhow::Result<Vec<PeerState>> {
        let json = command_output(
            Command::new(VTYSH)
                .arg("--vty_socket")
                .arg(&self.dir)
                .args(["-d", "bfdd", "-c", "show bfd peers json"]),
        )?;
        parse_bfd_peers(&json)
    }

    /// Every one of `sessions` up on the fast timers.
    fn ready(&self, sessions: usize) -> bool {
        self.peers()
            .is_ok_and(|p| p.len() == sessions && p.iter().all(PeerState::ready))
    }
}

impl Drop for Bfdd {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _: Result<_, _> = self.child.wait();
        let _: Result<_, _> = fs::remove_dir_all(&self.dir);
    }
}

/// bfdd's packets from NIC hI's test address leave through hI (source-based routing, as
/// mpathd's probes do by themselves), and only the NIC owning an address answers ARP for it
/// (what mpathd sets on its NICs anyway), so a session lives and dies with its NIC.
fn route_by_source(lab: &Lab, nics: u32) -> anyhow::Result<()> {
    let host = lab.host();
    let mut sysctls = vec!["sysctl".to_string(), "-qw".to_string()];
    for index in 0..nics {
        let nic = format!("h{index}");
        let table = (100 + index).to_string();
        let from = test_address(index).to_string();
        host.ip(&[
            "rule", "add", "from", &from, "table", &table, "priority", &table,
        ])?;
        host.ip(&["route", "add", "192.0.2.0/24", "dev", &nic, "table", &table])?;
        sysctls.push(format!("net.ipv4.conf.{nic}.arp_ignore=1"));
        sysctls.push(format!("net.ipv4.conf.{nic}.arp_announce=2"));
    }
    let args: Vec<&str> = sysctls.iter().map(String::as_str).collect();
    host.run(&args)?;
    Ok(())
}

fn all_nics_ok(daemon: &Mpathd, nics: u32) -> bool {
    daemon.try_status().is_some_and(|s| {
        (0..nics).all(|i| state_of(&s, &format!("h{i}")) == Some(InterfaceStatus::Ok))
    })
}

/// The NICs mpathd does not call ok, for an error message.
fn not_ok_nics(daemon: &Mpathd, nics: u32) -> String {
    let Some(status) = daemon.try_status() else {
        return "no status".into();
    };
    let bad: Vec<String> = (0..nics)
        .map(|i| format!("h{i}"))
        .filter_map(|nic| {
            let state = state_of(&status, &nic);
            (state != Some(InterfaceStatus::Ok)).then(|| format!("{nic} {state:?}"))
        })
        .collect();
    if bad.is_empty() {
        "every NIC ok".into()
    } else {
        bad.join(", ")
    }
}

/// bfdd's sessions that are not up on the fast timers, for an error message.
fn not_ready_sessions(bfdd: &Bfdd) -> String {
    match bfdd.peers() {
        Err(e) => format!("{e:#}"),
        Ok(peers) => {
            let bad: Vec<String> = peers
                .iter()
                .filter(|p| !p.ready())
                .map(|p| format!("{p:?}"))
                .collect();
            format!("{} sessions, not ready: [{}]", peers.len(), bad.join(", "))
        }
    }
}

/// Polls `done` every few ms until it holds; fails naming `what` after `timeout`.
fn wait_for(
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !done()? {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// What one NIC count measured.
struct Measured {
    nics: u32,
    /// Per repetition: drop to mpathd's failure line, and to bfdd's `up -> down` (ms).
    mpathd_ms: Vec<f64>,
    bfdd_ms: Vec<f64>,
    /// How long `drop_silently` (an `nft` command) took each time (ms).
    inject_ms: Vec<f64>,
    /// The daemons' CPU on the idle lab, and under the saturating traffic.
    quiet: CpuWindow,
    loaded: CpuWindow,
    mpathd_false: usize,
    /// mpathd's other warnings and errors during the window (e.g. a raised FDT).
    mpathd_warnings: Vec<String>,
    bfdd_false_host: usize,
    bfdd_false_router: usize,
    /// Packets/s the host NICs sent to the switch and took from it during the window.
    out_pps: f64,
    in_pps: f64,
    load: (String, String),
}

fn measure(nics: u32, reps: u64, minutes: u64) -> anyhow::Result<Measured> {
    let load_before = load_average();
    let router_cidrs: Vec<String> = (0..nics)
        .map(|i| format!("{}/24", router_address(i)))
        .collect();
    let router_cidrs: Vec<&str> = router_cidrs.iter().map(String::as_str).collect();
    let lab = Lab::builder()
        .nics(nics)
        .router_addrs(&router_cidrs)
        .build()?;
    let mut mpathd = Mpathd::start(lab.host(), &mpathd_config(nics));
    mpathd.wait_until("every NIC ok", |d| all_nics_ok(d, nics));
    let mpathd_pid = mpathd.pid().context("mpathd is not running")?;
    let comm = fs::read_to_string(format!("/proc/{mpathd_pid}/comm")).unwrap_or_default();
    if comm.trim() != "mpathd" {
        bail!("process {mpathd_pid} is {comm:?}, not mpathd: its CPU time cannot be read");
    }
    route_by_source(&lab, nics)?;
    let host_sessions: Vec<Session> = (0..nics)
        .map(|i| Session {
            peer: router_address(i),
            local: test_address(i),
        })
        .collect();
    let router_sessions: Vec<Session> = host_sessions
        .iter()
        .map(|s| Session {
            peer: s.local,
            local: s.peer,
        })
        .collect();
    let host_bfdd = Bfdd::start(lab.host(), "host", &host_sessions)?;
    let router_bfdd = Bfdd::start(lab.router(), "router", &router_sessions)?;
    let count = nics as usize;
    let recovered = || -> anyhow::Result<bool> {
        Ok(all_nics_ok(&mpathd, nics) && host_bfdd.ready(count) && router_bfdd.ready(count))
    };
    let stragglers = || {
        format!(
            "mpathd: {}; host bfdd: {}; router bfdd: {}",
            not_ok_nics(&mpathd, nics),
            not_ready_sessions(&host_bfdd),
            not_ready_sessions(&router_bfdd)
        )
    };
    wait_for("every BFD session up", RECOVERY_TIMEOUT, recovered).with_context(stragglers)?;

    let (mut mpathd_ms, mut bfdd_ms, mut inject_ms) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 0..reps {
        let index = (rep * NIC_STRIDE % u64::from(nics)) as u32;
        let (nic, group, local) = (format!("h{index}"), group_of(index), test_address(index));
        let offsets = (mpathd.log().len(), host_bfdd.log().len());
        // A random phase against both daemons' timers.
        sleep(Duration::from_millis(
            500 + u64::from(realtime_ns() as u32 % 500),
        ));
        let started = Instant::now();
        lab.drop_silently(&nic)?;
        let injected_ns = realtime_ns();
        inject_ms.push(started.elapsed().as_secs_f64() * 1e3);
        let mut found = (None, None);
        wait_for(
            &format!("mpathd and bfdd to notice {nic} failing"),
            DETECTION_TIMEOUT,
            || {
                found.0 = found
                    .0
                    .or_else(|| mpathd_detection_ns(since(&mpathd.log(), offsets.0), &nic, &group));
                found.1 = found
                    .1
                    .or_else(|| bfdd_down_ns(since(&host_bfdd.log(), offsets.1), local));
                Ok(found.0.is_some() && found.1.is_some())
            },
        )?;
        let (Some(m), Some(b)) = found else {
            bail!("{nic}: a detection went missing after it was seen");
        };
        let (m, b) = (ms(m - injected_ns), ms(b - injected_ns));
        eprintln!(
            "{nics} NICs, repetition {}/{reps}, {nic}: mpathd {m:.1} ms, bfdd {b:.1} ms",
            rep + 1
        );
        mpathd_ms.push(m);
        bfdd_ms.push(b);
        lab.undrop(&nic)?;
        wait_for(
            &format!("mpathd and bfdd to recover {nic}"),
            RECOVERY_TIMEOUT,
            recovered,
        )
        .with_context(stragglers)?;
    }

    // The windows: no status or vtysh requests, only the traffic.
    let pids = [mpathd_pid, host_bfdd.pid, router_bfdd.pid];
    eprintln!("{nics} NICs: {} s idle", QUIET.as_secs());
    let quiet = CpuWindow::during(pids, || {
        sleep(QUIET);
        Ok(())
    })?;
    let window = Duration::from_secs(minutes * 60);
    let offsets = (
        mpathd.log().len(),
        host_bfdd.log().len(),
        router_bfdd.log().len(),
    );
    let nic_names: Vec<String> = (0..nics).map(|i| format!("h{i}")).collect();
    let wire_before = wire_counters(&lab, &nic_names)?;
    eprintln!("{nics} NICs: {minutes} min of saturating UDP both ways");
    let loaded = CpuWindow::during(pids, || saturate(&lab, [DATA_V4, DATA2_V4], window))?;
    let wall = loaded.wall_s;
    let wire_after = wire_counters(&lab, &nic_names)?;
    let (out_packets, in_packets) = wire_before
        .iter()
        .zip(&wire_after)
        .fold((0, 0), |(out, inbound), ((out0, in0), (out1, in1))| {
            (out + out1 - out0, inbound + in1 - in0)
        });

    let mpathd_log = mpathd.log();
    let lines: Vec<String> = since(&mpathd_log, offsets.0)
        .lines()
        .map(strip_ansi)
        .collect();
    let mpathd_false = lines
        .iter()
        .filter(|l| mpathd_failure_of(l).is_some())
        .count();
    let mpathd_warnings = lines
        .iter()
        .filter(|l| {
            (l.contains(" WARN ") || l.contains(" ERROR ")) && mpathd_failure_of(l).is_none()
        })
        .cloned()
        .collect();
    let downs = |log: &str, offset| {
        since(log, offset)
            .lines()
            .filter(|l| is_bfd_down(l))
            .count()
    };
    Ok(Measured {
        nics,
        mpathd_ms,
        bfdd_ms,
        inject_ms,
        quiet,
        loaded,
        mpathd_false,
        mpathd_warnings,
        bfdd_false_host: downs(&host_bfdd.log(), offsets.1),
        bfdd_false_router: downs(&router_bfdd.log(), offsets.2),
        out_pps: out_packets as f64 / wall,
        in_pps: in_packets as f64 / wall,
        load: (load_before, load_average()),
    })
}

fn ms(ns: i64) -> f64 {
    ns as f64 / 1e6
}

/// Runs a program of the host and returns its standard output; fails naming it otherwise.
fn command_output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs the scale part for every NIC count and writes its section of BENCHMARKS.md to `out`.
pub(crate) fn scale(reps: u64, minutes: u64, out: Option<PathBuf>) -> anyhow::Result<()> {
    if minutes == 0 {
        bail!(
            "the scale part needs --false-failure-minutes of at least 1: its CPU figures come \
             from that run"
        );
    }
    let started = Instant::now();
    let results = NIC_COUNTS
        .iter()
        .map(|&nics| measure(nics, reps, minutes))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let tables = tables(reps, minutes, &results)?;
    println!("{tables}");
    eprintln!(
        "scale benchmark took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    if let Some(path) = out {
        let body = format!(
            "`cargo xtask bench failover` (alone: `--only scale`): probe-based failure detection \
             at FDT {FDT_MS} ms with {} NICs probing, mpathd beside FRR's bfdd on the same lab \
             at the same detection time. Each NIC count gets a fresh lab (veths on one bridge, \
             the router behind it). mpathd (release build, RUST_LOG=debug, which logs events \
             only) probes the router from a test address on every NIC, in groups of \
             {NICS_PER_GROUP} (mpathd takes at most 16 IPv4 test addresses per group, so the \
             32-NIC lab has 4 groups); a 1-NIC group has no other NIC to compare with, so \
             mpathd takes its silence as a target failure of the group, which counts as its \
             detection here. FRR's bfdd ({}) runs standalone (no zebra) in the host namespace \
             with one single-hop BFD session per NIC from that NIC's test address (source-based \
             routing sends it out of that NIC) to a bfdd in the router namespace, at an \
             address of its own there (bfdd keys single-hop sessions by peer address alone), \
             detect multiplier {BFD_MULTIPLIER} x {BFD_INTERVAL_MS} ms both ways = {} ms, the \
             same as the FDT (5 like in.mpathd's 5 lost probes), FRR's defaults otherwise. Both \
             daemons run at the same time, so every fault and the traffic hit them alike.\n\n\
             Detection: {reps} repetitions per NIC count, each dropping a different NIC's frames \
             at the switch (nftables, carrier up) after a random 0.5-1 s; the time runs from \
             the end of that `nft` command (median {}; the rule takes hold during it, so the \
             times may be short by up to that much, for both alike) to mpathd's \"NIC failure \
             detected\" line and to the host bfdd's `up -> down` line, both stamped in their \
             logs with the same clock (bfdd logs microseconds with TZ=UTC). The NIC is \
             restored and both must have recovered (bfdd: every session up on the \
             {BFD_INTERVAL_MS} ms timers again) before the next one. Medians and p95 are nearest-rank.\n\n\
             False failures: {minutes} min per NIC count of saturating UDP both ways between \
             the router and two data addresses of group g0 ({} flows per direction and \
             address, as in the 3-NIC false-failure run; the packets/s are the host NICs' \
             totals). A false failure is any failure mpathd declares, or any session going \
             `up -> down` in either bfdd.\n\n\
             CPU: utime + stime of the process (all threads) from /proc/<pid>/stat over a \
             window, divided by the number of NICs; first {} s on the idle lab (after the \
             detection runs: no traffic, no faults), then over the saturating traffic. Counted: \
             for mpathd the daemon alone (the router answers its probes in the kernel; \
             mpathd's eBPF programs run in the packet path, not in the daemon, and are not \
             counted: the datapath benchmark measures them); for bfdd both processes, host and \
             router end, since BFD needs a daemon at each end, with the host end alone beside \
             it. Neither daemon is polled during a window. On a kernel without \
             CONFIG_IRQ_TIME_ACCOUNTING (this machine's), softirq packet processing is billed \
             to whatever task is on the CPU when it runs, and a veth sender processes the \
             receive backlog in its own context: each wake-up and each packet a daemon sends \
             can bill it for packets that are not its own (the saturating traffic, and on this \
             shared machine other engineers' test traffic). Both windows therefore overstate \
             the daemons' own work, the traffic window more, and the more so for the daemon \
             that wakes and sends more often; utime (in brackets) is free of that but leaves \
             out the kernel work of the daemon's own sockets. The ratios are mpathd / bfdd of \
             utime + stime.\n\n\
             **Caveats:** {} CPUs, shared with other engineers' builds and tests, and the \
             saturating traffic keeps both busy: timings are noisy, and the detection times \
             include the daemons' scheduling delay on a loaded machine (load average per NIC \
             count below). Veths are not NICs: no interrupts, no driver. This run took \
             {minutes} min of traffic per NIC count{}.\n\n{tables}",
            NIC_COUNTS.map(|n| n.to_string()).join(", "),
            frr_version(),
            BFD_MULTIPLIER * BFD_INTERVAL_MS,
            median_inject(&results),
            SATURATING_FLOWS,
            QUIET.as_secs(),
            cpus(),
            if minutes < DEFAULT_MINUTES {
                format!(" (the default is {DEFAULT_MINUTES})")
            } else {
                String::new()
            },
        );
        write_section(
            &path,
            "Benchmark: probing at scale, mpathd and FRR's bfdd",
            &body,
        )?;
        eprintln!("written to {}", path.display());
    }
    Ok(())
}

fn median_inject(results: &[Measured]) -> String {
    let all: Vec<f64> = results.iter().flat_map(|r| r.inject_ms.clone()).collect();
    if all.is_empty() {
        return "not measured".into();
    }
    format!("{:.1} ms", percentile(&all, 50.0))
}

/// FRR's version as the package reports it.
fn frr_version() -> String {
    command_output(Command::new("dpkg-query").args(["-W", "-f=${Version}", "frr"]))
        .map(|v| format!("FRR {}", v.trim()))
        .unwrap_or_else(|_| "FRR, version unknown".into())
}

fn tables(reps: u64, minutes: u64, results: &[Measured]) -> anyhow::Result<String> {
    let stat = |v: &[f64]| (percentile(v, 50.0), percentile(v, 95.0));
    let mut t = String::new();
    writeln!(
        t,
        "Detection at FDT {FDT_MS} ms / BFD {BFD_MULTIPLIER} x {BFD_INTERVAL_MS} ms, \
         {reps} repetitions per NIC count (ms from the drop):\n"
    )?;
    writeln!(
        t,
        "| NICs probing | mpathd median | mpathd p95 | bfdd median | bfdd p95 | \
         mpathd / bfdd, median | mpathd / bfdd, p95 |"
    )?;
    writeln!(t, "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")?;
    for r in results {
        let (m50, m95) = stat(&r.mpathd_ms);
        let (b50, b95) = stat(&r.bfdd_ms);
        writeln!(
            t,
            "| {} | {m50:.1} | {m95:.1} | {b50:.1} | {b95:.1} | {:.2} | {:.2} |",
            r.nics,
            m50 / b50,
            m95 / b95
        )?;
    }
    writeln!(
        t,
        "\nCPU per NIC (utime + stime over the window / NICs; in brackets utime alone, the \
         part in user space), idle lab ({} s) and under saturating traffic ({minutes} min):\n",
        QUIET.as_secs()
    )?;
    writeln!(
        t,
        "| NICs probing | window | mpathd % of one CPU | mpathd ms/s (user) | bfdd both ends % \
         of one CPU | bfdd both ends ms/s (user) | bfdd host end ms/s (user) | mpathd / bfdd \
         both ends | mpathd / bfdd host end |"
    )?;
    writeln!(
        t,
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )?;
    for r in results {
        for (window, cpu) in [("idle", r.quiet), ("saturating traffic", r.loaded)] {
            let per_nic = |time: CpuTime| {
                (
                    PerNic::new(time.total(), cpu.wall_s, r.nics),
                    PerNic::new(time.user_s, cpu.wall_s, r.nics),
                )
            };
            let (mpathd, mpathd_user) = per_nic(cpu.mpathd);
            let (both, both_user) = per_nic(cpu.host_bfdd.plus(cpu.router_bfdd));
            let (host, host_user) = per_nic(cpu.host_bfdd);
            writeln!(
                t,
                "| {} | {window} | {:.3} | {:.3} ({:.3}) | {:.3} | {:.3} ({:.3}) | {:.3} ({:.3}) \
                 | {} | {} |",
                r.nics,
                mpathd.percent,
                mpathd.ms_per_second,
                mpathd_user.ms_per_second,
                both.percent,
                both.ms_per_second,
                both_user.ms_per_second,
                host.ms_per_second,
                host_user.ms_per_second,
                ratio(mpathd.ms_per_second, both.ms_per_second),
                ratio(mpathd.ms_per_second, host.ms_per_second),
            )?;
        }
    }
    writeln!(
        t,
        "\nFalse failures in {minutes} min of saturating traffic per NIC count:\n"
    )?;
    writeln!(
        t,
        "| NICs probing | mpathd | bfdd host end | bfdd router end | traffic packets/s out, in \
         | load average before, after |"
    )?;
    writeln!(t, "| ---: | ---: | ---: | ---: | ---: | ---: |")?;
    for r in results {
        writeln!(
            t,
            "| {} | {} | {} | {} | {:.0}, {:.0} | {}, {} |",
            r.nics,
            r.mpathd_false,
            r.bfdd_false_host,
            r.bfdd_false_router,
            r.out_pps,
            r.in_pps,
            r.load.0,
            r.load.1,
        )?;
    }
    for r in results {
        for w in r.mpathd_warnings.iter().take(5) {
            writeln!(t, "\nmpathd warned during the {}-NIC run: `{w}`", r.nics)?;
        }
        if r.mpathd_warnings.len() > 5 {
            writeln!(
                t,
                "\n... and {} more warnings in that run",
                r.mpathd_warnings.len() - 5
            )?;
        }
    }
    Ok(t)
}

/// `a / b`, or a dash when b used no measurable CPU.
fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "-".into()
    }
}

#[cfg(test)]
mod tests {
    use mpath_ctl::config::Config;

    use super::*;

    #[test]
    fn the_mpathd_config_is_valid_for_every_nic_count_in_groups_of_eight() {
        for nics in NIC_COUNTS {
            let text = mpathd_config(nics)
                .replace("SOCKET", "/run/test/mpathd.sock")
                .replace("PINS", "/sys/fs/bpf/test");
            let config = Config::parse(&text, "scale.toml", None)
                .unwrap_or_else(|e| panic!("{nics} NICs: {e}\n{text}"));
            assert_eq!(
                config.daemon.failure_detection_time,
                Duration::from_millis(100)
            );
            let sizes: Vec<usize> = config.groups.iter().map(|g| g.interfaces.len()).collect();
            let expected = match nics {
                1 => vec![1],
                8 => vec![8],
                _ => vec![8; 4],
            };
            assert_eq!(sizes, expected, "{nics} NICs");
            let tested = config
                .groups
                .iter()
                .flat_map(|g| &g.interfaces)
                .filter(|i| i.test_address.is_some())
                .count();
            assert_eq!(tested, nics as usize);
            let data: usize = config
                .groups
                .iter()
                .flat_map(|g| &g.interfaces)
                .map(|i| i.data_addresses.len())
                .sum();
            assert_eq!(data, 2, "{nics} NICs: both data addresses placed once");
        }
    }

    #[test]
    fn the_bfdd_config_has_one_session_per_nic_at_the_fdt() {
        let sessions = [
            Session {
                peer: router_address(0),
                local: test_address(0),
            },
            Session {
                peer: router_address(31),
                local: test_address(31),
            },
        ];
        let text = bfdd_config(Path::new("/tmp/x/bfdd.log"), &sessions);
        assert!(
            text.starts_with("log file /tmp/x/bfdd.log debugging\n"),
            "{text}"
        );
        assert!(
            text.contains(" peer 192.0.2.200 local-address 192.0.2.100\n"),
            "{text}"
        );
        assert!(
            text.contains(" peer 192.0.2.231 local-address 192.0.2.131\n"),
            "{text}"
        );
        assert_eq!(text.matches("detect-multiplier 5\n").count(), 2);
        assert_eq!(text.matches("receive-interval 20\n").count(), 2);
        assert_eq!(BFD_MULTIPLIER * BFD_INTERVAL_MS, FDT_MS);
    }

    #[test]
    fn bfdd_log_times_are_utc_with_microseconds() {
        let line = "2026/11/23 13:41:52.513936 BFD: [SEY1D-NT8EQ] state-change: [mhop:no \
                    peer:192.0.2.1 local:192.0.2.100 vrf:default] up -> down \
                    reason:control-expired";
        assert_eq!(
            bfdd_log_time_ns(line),
            log_time_ns("2026-11-23T13:41:52.513936Z")
        );
        assert_eq!(
            bfdd_log_time_ns("1970/01/01 00:00:01.000002 BFD: x"),
            Some(1_000_002_000)
        );
        assert_eq!(
            bfdd_log_time_ns("2026/11/23 13:41:52 BFD: x"),
            log_time_ns("2026-11-23T13:41:52Z")
        );
        assert_eq!(bfdd_log_time_ns("BFD: starting"), None);
        assert_eq!(bfdd_log_time_ns("2026/11 13:41:52.5 BFD"), None);
    }

    #[test]
    fn bfdd_down_is_the_first_up_to_down_of_that_local_address() {
        let log = "\
2026/11/23 13:41:50.000000 BFD: [J1C6V-VMRW5] state-change: [mhop:no peer:192.0.2.1 local:192.0.2.100 vrf:default] init -> up
2026/11/23 13:41:51.000000 BFD: [SEY1D-NT8EQ] state-change: [mhop:no peer:192.0.2.1 local:192.0.2.10 vrf:default] up -> down reason:control-expired
2026/11/23 13:41:51.000000 BFD: [SEY1D-NT8EQ] state-change: [mhop:no peer:192.0.2.1 local:192.0.2.100 vrf:default] init -> down reason:control-expired
2026/11/23 13:41:52.250000 BFD: [SEY1D-NT8EQ] state-change: [mhop:no peer:192.0.2.1 local:192.0.2.100 vrf:default] up -> down reason:control-expired
2026/11/23 13:41:53.000000 BFD: [SEY1D-NT8EQ] state-change: [mhop:no peer:192.0.2.1 local:192.0.2.100 vrf:default] up -> down reason:control-expired
";
        let base = bfdd_log_time_ns("2026/11/23 13:41:52.000000").unwrap();
        let local: Ipv4Addr = "192.0.2.100".parse().unwrap();
        assert_eq!(
            bfdd_down_ns(log, local).map(|t| t - base),
            Some(250_000_000)
        );
        assert_eq!(bfdd_down_ns(log, "192.0.2.101".parse().unwrap()), None);
        assert_eq!(log.lines().filter(|l| is_bfd_down(l)).count(), 3);
    }

    #[test]
    fn mpathd_detection_is_a_nic_failure_or_its_groups_target_failure() {
        let log = "\
2026-11-23T11:40:01.000100Z  WARN NIC failure detected on h10 of group g1
2026-11-23T11:40:01.000200Z  WARN NIC failure detected on h1 of group g0
2026-11-23T11:40:01.000300Z  WARN All probe targets of group g3 stopped answering at once: treating it as a target failure, no failover; flushing and rediscovering probe targets
";
        let at = |s| log_time_ns(s).unwrap();
        assert_eq!(
            mpathd_detection_ns(log, "h1", "g0"),
            Some(at("2026-11-23T11:40:01.000200Z"))
        );
        assert_eq!(
            mpathd_detection_ns(log, "h24", "g3"),
            Some(at("2026-11-23T11:40:01.000300Z"))
        );
        assert_eq!(mpathd_detection_ns(log, "h0", "g0"), None);
        assert_eq!(
            mpathd_failure_of("INFO NIC h0 of group g0 is now active"),
            None
        );
        let coloured = "\u{1b}[2m2026-11-23T11:40:01.000200Z\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m \
                        NIC failure detected on h2 of group g0";
        assert!(mpathd_detection_ns(coloured, "h2", "g0").is_some());
    }

    #[test]
    fn bfd_peers_are_read_from_vtysh_json() {
        let json = r#"[
  {"multihop":false,"peer":"192.0.2.1","local":"192.0.2.100","vrf":"default","status":"up",
   "receive-interval":20,"transmit-interval":20,"remote-receive-interval":20,
   "remote-transmit-interval":20,"detect-multiplier":5},
  {"multihop":false,"peer":"192.0.2.1","local":"192.0.2.101","vrf":"default","status":"up",
   "receive-interval":20,"transmit-interval":20,"remote-receive-interval":1000,
   "remote-transmit-interval":1000,"detect-multiplier":5},
  {"multihop":false,"peer":"192.0.2.1","local":"192.0.2.102","vrf":"default","status":"down",
   "receive-interval":20,"transmit-interval":20,"remote-receive-interval":20,
   "remote-transmit-interval":20,"detect-multiplier":5}
]"#;
        let peers = parse_bfd_peers(json).unwrap();
        assert_eq!(peers.len(), 3);
        assert_eq!(peers[0].local, test_address(0));
        let ready: Vec<bool> = peers.iter().map(PeerState::ready).collect();
        assert_eq!(ready, [true, false, false]);
        assert!(parse_bfd_peers("% Unknown command").is_err());
        let error = parse_bfd_peers(r#"[{"local":"192.0.2.100"}]"#).unwrap_err();
        assert!(error.to_string().contains("status"), "{error}");
    }

    #[test]
    fn cpu_ticks_are_utime_plus_stime_even_with_odd_command_names() {
        let stat = "4242 (bfdd) S 1 4242 4242 0 -1 4194560 1200 0 0 0 37 95 0 0 20 0 1 0 \
                    100 20000000 1000 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some((37, 95)));
        let odd = "77 (a) b (c) R 1 77 77 0 -1 0 0 0 0 0 5 6 0 0 20 0 1 0 1 1 1";
        assert_eq!(parse_cpu_ticks(odd), Some((5, 6)));
        assert_eq!(parse_cpu_ticks("77 (x) R 1 2"), None);
        assert_eq!(parse_cpu_ticks(""), None);
    }

    #[test]
    fn cpu_per_nic_is_a_share_of_one_cpu() {
        // 1.2 CPU seconds over 60 s on 8 NICs: 0.25 % of a CPU, 2.5 ms per second each.
        let p = PerNic::new(1.2, 60.0, 8);
        assert!((p.percent - 0.25).abs() < 1e-9, "{p:?}");
        assert!((p.ms_per_second - 2.5).abs() < 1e-9, "{p:?}");
        assert_eq!(ratio(1.0, 4.0), "0.25");
        assert_eq!(ratio(1.0, 0.0), "-");
    }

    #[test]
    fn repetitions_visit_every_nic_and_group() {
        for nics in NIC_COUNTS {
            let visited: std::collections::BTreeSet<u64> = (0..u64::from(nics))
                .map(|rep| rep * NIC_STRIDE % u64::from(nics))
                .collect();
            assert_eq!(visited.len(), nics as usize);
        }
        let groups: std::collections::BTreeSet<String> = (0..5)
            .map(|rep| group_of((rep * NIC_STRIDE % 32) as u32))
            .collect();
        assert_eq!(
            groups.len(),
            4,
            "the first 5 repetitions on 32 NICs: {groups:?}"
        );
    }

    #[test]
    fn test_addresses_are_distinct_and_data_addresses_fit_the_lab() {
        assert_eq!(test_address(0), Ipv4Addr::new(192, 0, 2, 100));
        assert_eq!(test_address(31), Ipv4Addr::new(192, 0, 2, 131));
        assert_eq!(data_nics(1), [0, 0]);
        assert_eq!(data_nics(8), [0, 1]);
        assert_eq!(since("abc", 1), "bc");
        assert_eq!(since("abc", 9), "");
    }
}
