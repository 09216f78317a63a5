//! `soak`: mpathd on the 3-NIC lab under traffic both ways while random faults (cuts, silent
//! drops, flaps, offline/online, and their undoing; MAC changes, deleted test addresses,
//! kill -9 and restart while a NIC is failing, a second mpathd started on the same pins) are
//! injected from a seeded PRNG. After
//! each fault, once mpathd has settled, a checker asserts that every data address is on the
//! host exactly once, on a usable active NIC of its group, or where it was when the whole
//! group has failed; mpathd's memory and descriptors are sampled and must not grow.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    net::{IpAddr, SocketAddr, UdpSocket},
    path::PathBuf,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::{JoinHandle, sleep},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use mpath_ctl::{
    api::control::{Reply, Request},
    core::state::{GroupState, InterfaceStatus},
};
use mpath_lab::{Lab, ROUTER_V4, ROUTER_V6};
use mpath_tests::daemon::{Mpathd, state_of, three_nic_config};

use super::{cpus, load_average, write_section};

const FDT_MS: u64 = 1000;
const NICS: [&str; 3] = ["h0", "h1", "h2"];
/// The data addresses of [`three_nic_config`] and the NIC each starts on.
const DATA: [(&str, &str); 3] = [
    ("192.0.2.19/24", "h0"),
    ("2001:db8::19/64", "h0"),
    ("192.0.2.20/24", "h1"),
];
/// Test addresses never move.
const TEST: [(&str, &str); 3] = [
    ("192.0.2.21/32", "h0"),
    ("192.0.2.22/32", "h1"),
    ("192.0.2.23/32", "h2"),
];
const ECHO_PORT: u16 = 7100;
/// UDP flows per data address (router source ports), so replies spread over the NICs.
const FLOWS_PER_ADDRESS: usize = 4;
const PACKET_SPACING: Duration = Duration::from_millis(20);
/// A reply later than this after the traffic stops counts as lost.
const REPLY_GRACE: Duration = Duration::from_secs(1);
/// Longest wait for mpathd to reflect a fault: failure detection, then 10 answered probes
/// for a repair, with room for a busy machine.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long each settled state is kept under traffic before the next fault.
const DWELL: (Duration, Duration) = (Duration::from_millis(500), Duration::from_millis(2500));
/// Growth allowed between the first and the last quarter of the run.
const RSS_GROWTH_BOUND_KB: u64 = 2048;
const FD_GROWTH_BOUND: usize = 2;

/// SplitMix64: a tiny seeded generator, so a seed replays the same fault sequence.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn between(&mut self, low: Duration, high: Duration) -> Duration {
        low + (high - low).mul_f64(self.unit())
    }

    /// An index of `weights` drawn in proportion to them.
    fn weighted(&mut self, weights: &[f64]) -> usize {
        let mut x = self.unit() * weights.iter().sum::<f64>();
        for (i, w) in weights.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        weights.len() - 1
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Cut,
    Restore,
    Drop,
    Undrop,
    Flap,
    Offline,
    Online,
    MacChange,
    TestAddressDeleted,
    KillRestartWhileFailing,
    SecondInstance,
}

impl Kind {
    const ALL: [Kind; 11] = [
        Kind::Cut,
        Kind::Restore,
        Kind::Drop,
        Kind::Undrop,
        Kind::Flap,
        Kind::Offline,
        Kind::Online,
        Kind::MacChange,
        Kind::TestAddressDeleted,
        Kind::KillRestartWhileFailing,
        Kind::SecondInstance,
    ];

    fn label(self) -> &'static str {
        match self {
            Kind::Cut => "cut (carrier loss)",
            Kind::Restore => "restore (carrier back)",
            Kind::Drop => "silent drop",
            Kind::Undrop => "silent drop undone",
            Kind::Flap => "flap (2-6 times, faster than FDT)",
            Kind::Offline => "offline",
            Kind::Online => "online",
            Kind::MacChange => "MAC change",
            Kind::TestAddressDeleted => "test address deleted",
            Kind::KillRestartWhileFailing => "kill -9 and restart while a NIC fails silently",
            Kind::SecondInstance => "a second mpathd on the same pins (refused)",
        }
    }
}

/// The faults in force on one NIC.
#[derive(Clone, Copy, Debug, Default)]
struct Faults {
    cut: bool,
    dropped: bool,
    offline: bool,
}

impl Faults {
    fn usable(self) -> bool {
        !self.cut && !self.dropped && !self.offline
    }

    /// mpathd's state for a NIC with these faults, once it has noticed them.
    fn expected_state(self) -> InterfaceStatus {
        if self.offline {
            InterfaceStatus::Offline
        } else if self.cut || self.dropped {
            InterfaceStatus::Failed
        } else {
            InterfaceStatus::Ok
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Step {
    kind: Kind,
    nic: usize,
}

/// Whether mpathd must refuse to offline `nic`: no other member functions, and either the
/// group has not failed or no other member is online (state.rs `Group::offline`).
fn offline_refused(faults: &[Faults], nic: usize) -> bool {
    let others = || faults.iter().enumerate().filter(move |(i, _)| *i != nic);
    let group_failed = !faults.iter().any(|f| f.usable());
    let allowed =
        others().any(|(_, f)| f.usable()) || (group_failed && others().any(|(_, f)| !f.offline));
    !allowed
}

/// The next fault: a NIC that is not usable is repaired more often than it is hurt further,
/// and taking the last usable NIC (a group failure) is rarer than other faults.
fn choose(rng: &mut Rng, faults: &[Faults]) -> Step {
    let usable = faults.iter().filter(|f| f.usable()).count();
    let mut options = Vec::new();
    for (nic, f) in faults.iter().enumerate() {
        let hurt = match (f.usable(), usable) {
            (true, 1) => 0.25,
            (true, _) => 1.0,
            (false, _) => 0.3,
        };
        let repair = if usable <= 1 { 3.0 } else { 1.0 };
        let mut add = |weight, kind| options.push((weight, Step { kind, nic }));
        if f.cut {
            add(repair, Kind::Restore);
        } else {
            add(hurt, Kind::Cut);
            add(0.6, Kind::Flap);
        }
        if f.dropped {
            add(repair, Kind::Undrop);
        } else {
            add(hurt, Kind::Drop);
        }
        if f.offline {
            add(repair, Kind::Online);
        } else {
            add(0.5 * hurt, Kind::Offline);
        }
        add(0.3, Kind::MacChange);
        add(0.3, Kind::TestAddressDeleted);
        // Kept off the last usable NIC: a group failure on restart is the cut's business.
        if f.usable() && usable >= 2 {
            add(0.3, Kind::KillRestartWhileFailing);
        }
    }
    options.push((
        0.2,
        Step {
            kind: Kind::SecondInstance,
            nic: 0,
        },
    ));
    let weights: Vec<f64> = options.iter().map(|(w, _)| *w).collect();
    options[rng.weighted(&weights)].1
}

/// Data address -> the NIC it is on.
type Placement = BTreeMap<String, String>;

/// Checks the invariant against the host's addresses and mpathd's status; returns where the
/// data addresses are.
fn check(
    lab: &Lab,
    daemon: &Mpathd,
    faults: &[Faults],
    before: &Placement,
) -> Result<Placement, String> {
    let status = daemon
        .try_status()
        .ok_or("mpathd does not answer on its socket")?;
    let mut found: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for nic in NICS {
        let addrs = lab
            .host_addrs(nic)
            .map_err(|e| format!("reading {nic}'s addresses: {e:#}"))?;
        for a in addrs {
            found.entry(a).or_default().push(nic);
        }
    }
    for (address, home) in TEST {
        let on = found.get(address).cloned().unwrap_or_default();
        if on != [home] {
            return Err(format!(
                "test address {address} is on {on:?}, not on {home}"
            ));
        }
    }
    let group_failed = !faults.iter().any(|f| f.usable());
    let group = status.groups.first().ok_or("mpathd shows no group")?;
    let expected_group = if group_failed {
        GroupState::Failed
    } else if faults.iter().all(|f| f.usable()) {
        GroupState::Ok
    } else {
        GroupState::Degraded
    };
    if group.state != expected_group {
        return Err(format!(
            "group g0 is {}, expected {expected_group}",
            group.state
        ));
    }
    for (nic, f) in NICS.iter().zip(faults) {
        let state = state_of(&status, nic);
        if state != Some(f.expected_state()) {
            return Err(format!(
                "{nic} is {state:?} in mpathd's status, expected {:?} ({f:?})",
                f.expected_state()
            ));
        }
    }
    let mut placement = Placement::new();
    for (address, _) in DATA {
        let on = found.get(address).cloned().unwrap_or_default();
        let [nic] = on[..] else {
            return Err(format!(
                "data address {address} is on {} NICs: {on:?}",
                on.len()
            ));
        };
        let shown = status
            .addresses
            .iter()
            .find(|a| a.address == address)
            .and_then(|a| a.inbound.as_deref());
        if shown != Some(nic) {
            return Err(format!(
                "data address {address} is on {nic} but mpathd shows it on {shown:?}"
            ));
        }
        if group_failed {
            if before.get(address).map(String::as_str) != Some(nic) {
                return Err(format!(
                    "the whole group has failed, yet {address} moved from {:?} to {nic}",
                    before.get(address)
                ));
            }
        } else {
            let index = NICS.iter().position(|n| *n == nic).expect("lab NIC");
            if !faults[index].usable() || !group.active.iter().any(|a| a == nic) {
                return Err(format!(
                    "data address {address} is on {nic}, which is not a usable active NIC \
                     (faults {:?}, mpathd's active NICs {:?})",
                    faults[index], group.active
                ));
            }
        }
        placement.insert(address.to_string(), nic.to_string());
    }
    Ok(placement)
}

/// One packet sent to a data address: the step during which it left and whether its echo
/// came back.
#[derive(Clone, Copy)]
struct Sent {
    step: usize,
    answered: bool,
}

/// UDP echo traffic: the router sends to every data address over several flows, the host
/// echoes from the data address itself, so inbound and (spread) outbound paths both count.
struct Traffic {
    stop: Arc<AtomicBool>,
    step: Arc<AtomicUsize>,
    sent: Arc<Mutex<Vec<Sent>>>,
    threads: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl Traffic {
    fn start(lab: &Lab) -> anyhow::Result<Traffic> {
        let stop = Arc::new(AtomicBool::new(false));
        let step = Arc::new(AtomicUsize::new(0));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        for (cidr, _) in DATA {
            let address: IpAddr = cidr.split('/').next().expect("address").parse()?;
            let echo = {
                let _inside = lab.host().enter()?;
                UdpSocket::bind((address, ECHO_PORT))
                    .with_context(|| format!("echo socket on {address}"))?
            };
            echo.set_read_timeout(Some(Duration::from_millis(100)))?;
            let stop_echo = stop.clone();
            threads.push(std::thread::spawn(move || echo_until(&echo, &stop_echo)));
            let router: IpAddr = if address.is_ipv4() {
                ROUTER_V4.parse()?
            } else {
                ROUTER_V6.parse()?
            };
            for _ in 0..FLOWS_PER_ADDRESS {
                let socket = {
                    let _inside = lab.router().enter()?;
                    UdpSocket::bind((router, 0)).context("router flow socket")?
                };
                let (stop, step, sent) = (stop.clone(), step.clone(), sent.clone());
                let to = SocketAddr::new(address, ECHO_PORT);
                threads.push(std::thread::spawn(move || {
                    flow(&socket, to, &stop, &step, &sent)
                }));
            }
        }
        Ok(Traffic {
            stop,
            step,
            sent,
            threads,
        })
    }

    fn enter_step(&self, step: usize) {
        self.step.store(step, Ordering::Relaxed);
    }

    /// Why a traffic thread ended early, if one did.
    fn failure(&mut self) -> Option<String> {
        let index = self.threads.iter().position(JoinHandle::is_finished)?;
        Some(match self.threads.swap_remove(index).join() {
            Ok(Ok(())) => "a traffic thread ended".into(),
            Ok(Err(e)) => format!("{e:#}"),
            Err(_) => "a traffic thread panicked".into(),
        })
    }

    /// Stops sending, waits for late replies, and returns every packet sent.
    fn finish(mut self) -> anyhow::Result<Vec<Sent>> {
        self.stop.store(true, Ordering::Relaxed);
        for t in std::mem::take(&mut self.threads) {
            t.join()
                .map_err(|_panic| anyhow::anyhow!("a traffic thread panicked"))??;
        }
        Ok(std::mem::take(
            &mut *self.sent.lock().unwrap_or_else(PoisonError::into_inner),
        ))
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in std::mem::take(&mut self.threads) {
            let _: Result<_, _> = t.join();
        }
    }
}

fn echo_until(socket: &UdpSocket, stop: &AtomicBool) -> anyhow::Result<()> {
    let mut buf = [0u8; 64];
    while !stop.load(Ordering::Relaxed) {
        match socket.recv_from(&mut buf) {
            // A reply that cannot leave (no usable NIC) is part of the loss being counted.
            Ok((n, from)) => drop(socket.send_to(&buf[..n], from)),
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(e).context("echo receive"),
        }
    }
    Ok(())
}

/// A receive that only ran out of time or was interrupted by a signal: try again.
fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock
            | std::io::ErrorKind::TimedOut
            | std::io::ErrorKind::Interrupted
    )
}

/// Sends a numbered packet every [`PACKET_SPACING`] and marks the echoes that come back,
/// until `stop` and [`REPLY_GRACE`] after it.
fn flow(
    socket: &UdpSocket,
    to: SocketAddr,
    stop: &AtomicBool,
    step: &AtomicUsize,
    sent: &Mutex<Vec<Sent>>,
) -> anyhow::Result<()> {
    let lock = || sent.lock().unwrap_or_else(PoisonError::into_inner);
    let mut buf = [0u8; 64];
    let mut next = Instant::now();
    let mut stopped: Option<Instant> = None;
    loop {
        let now = Instant::now();
        match stopped {
            None if stop.load(Ordering::Relaxed) => stopped = Some(now),
            Some(at) if now > at + REPLY_GRACE => return Ok(()),
            _ => {}
        }
        if stopped.is_none() && now >= next {
            let id = {
                let mut sent = lock();
                sent.push(Sent {
                    step: step.load(Ordering::Relaxed),
                    answered: false,
                });
                sent.len() - 1
            };
            // Unreachable networks while the group has failed are loss, not an error.
            let _: Result<_, _> = socket.send_to(&(id as u64).to_be_bytes(), to);
            next += PACKET_SPACING;
            if now > next + PACKET_SPACING * 10 {
                next = now + PACKET_SPACING;
            }
        }
        let wait = next.saturating_duration_since(Instant::now());
        socket.set_read_timeout(Some(wait.max(Duration::from_millis(1))))?;
        match socket.recv_from(&mut buf) {
            Ok((8, _)) => {
                let id = u64::from_be_bytes(buf[..8].try_into().expect("8 bytes")) as usize;
                if let Some(s) = lock().get_mut(id) {
                    s.answered = true;
                }
            }
            Ok(_) => bail!("an echo of the wrong size came back"),
            Err(e) if is_timeout(&e) => {}
            // ICMP errors (unreachable) surface on the next receive: loss, counted anyway.
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {}
            Err(e) => return Err(e).context("flow receive"),
        }
    }
}

/// mpathd's process: the one whose command line names this daemon's configuration.
fn daemon_pid(daemon: &Mpathd) -> anyhow::Result<u32> {
    let config = daemon.config.display().to_string();
    for entry in fs::read_dir("/proc")? {
        let entry = entry?;
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse().ok()) else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.first().is_some_and(|a| a.ends_with("/mpathd")) && args.contains(&config) {
            return Ok(pid);
        }
    }
    bail!("no mpathd process runs with {config}")
}

/// mpathd's resident memory (kB) and open descriptors.
#[derive(Clone, Copy, Debug)]
struct Usage {
    rss_kb: u64,
    fds: usize,
}

fn usage(pid: u32) -> anyhow::Result<Usage> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("mpathd (pid {pid}) is gone"))?;
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS in /proc/PID/status")?;
    let fds = fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    Ok(Usage { rss_kb, fds })
}

/// Packets of the steps of one kind.
#[derive(Clone, Copy, Default)]
struct Tally {
    injected: u64,
    refused: u64,
    sent: u64,
    lost: u64,
}

impl Tally {
    fn loss(&self) -> String {
        if self.sent == 0 {
            "-".into()
        } else {
            format!("{:.2} %", 100.0 * self.lost as f64 / self.sent as f64)
        }
    }
}

/// What happened at each step, kept for the report and for a violation's context.
struct StepRecord {
    kind: Option<Kind>,
    group_failed: bool,
    line: String,
}

pub(crate) fn soak(minutes: u64, seed: u64, out: Option<PathBuf>) -> anyhow::Result<()> {
    let started = Instant::now();
    let duration = Duration::from_secs(minutes * 60);
    let load_before = load_average();
    let mut rng = Rng(seed);
    let lab = Lab::builder().nics(3).build()?;
    let mut daemon = Mpathd::start(lab.host(), &three_nic_config(FDT_MS));
    let home: Placement = DATA
        .iter()
        .map(|(a, n)| (a.to_string(), n.to_string()))
        .collect();
    let mut faults = [Faults::default(); 3];
    settle(&lab, &daemon, &faults, &home, Instant::now())
        .map_err(|e| violation(&[], &daemon, &format!("mpathd never settled at start: {e}")))?;
    let mut pid = daemon_pid(&daemon)?;
    let mut restarts = 0u32;
    let mut traffic = Traffic::start(&lab)?;
    eprintln!(
        "soak: seed {seed}, {minutes} min of random faults on h0, h1, h2 (FDT {FDT_MS} ms), \
         mpathd pid {pid}"
    );
    let mut placement = home;
    let mut records = vec![StepRecord {
        kind: None,
        group_failed: false,
        line: "step 0: start, all NICs ok".into(),
    }];
    let mut samples = vec![(Duration::ZERO, usage(pid)?)];
    let mut checks = 0u64;
    let mut tallies: BTreeMap<Kind, Tally> = BTreeMap::new();
    sleep(rng.between(DWELL.0, DWELL.1));
    while started.elapsed() < duration {
        let index = records.len();
        let step = choose(&mut rng, &faults);
        let nic = NICS[step.nic];
        traffic.enter_step(index);
        let applied = Instant::now();
        let refused = inject(&lab, &mut daemon, &mut rng, step, &mut faults)
            .map_err(|e| violation(&records, &daemon, &format!("{e:#}")))?;
        let tally = tallies.entry(step.kind).or_default();
        tally.injected += 1;
        tally.refused += u64::from(refused);
        let mut line = format!(
            "step {index} at {:.1} s: {:?} {nic}{}",
            started.elapsed().as_secs_f64(),
            step.kind,
            if refused {
                " (refused, as expected)"
            } else {
                ""
            }
        );
        // Settled: mpathd's view matches the faults and the invariant holds.
        let settled = settle(&lab, &daemon, &faults, &placement, applied).map_err(|e| {
            records.push(StepRecord {
                kind: Some(step.kind),
                group_failed: false,
                line: line.clone(),
            });
            violation(
                &records,
                &daemon,
                &format!("not settled {SETTLE_TIMEOUT:?} after the fault: {e}"),
            )
        })?;
        checks += 1;
        let _ = write!(
            line,
            "; settled in {:.2} s; faults {}; addresses {}",
            applied.elapsed().as_secs_f64(),
            describe_faults(&faults),
            describe_placement(&settled)
        );
        placement = settled;
        let group_failed = !faults.iter().any(|f| f.usable());
        eprintln!("{line}");
        records.push(StepRecord {
            kind: Some(step.kind),
            group_failed,
            line,
        });
        // Under traffic for a while; nothing may move meanwhile (no ping-pong).
        sleep(rng.between(DWELL.0, DWELL.1));
        let again = check(&lab, &daemon, &faults, &placement)
            .map_err(|e| violation(&records, &daemon, &format!("after the dwell: {e}")))?;
        if again != placement {
            return Err(violation(
                &records,
                &daemon,
                &format!(
                    "addresses moved without a fault: {} -> {}",
                    describe_placement(&placement),
                    describe_placement(&again)
                ),
            ));
        }
        checks += 1;
        if let Some(why) = traffic.failure() {
            return Err(violation(
                &records,
                &daemon,
                &format!("the traffic stopped: {why}"),
            ));
        }
        if step.kind == Kind::KillRestartWhileFailing {
            // Memory and descriptors are a process's: the samples start again with it.
            pid = daemon_pid(&daemon)?;
            restarts += 1;
            samples.clear();
        }
        samples.push((started.elapsed(), usage(pid)?));
    }
    let sent = traffic.finish()?;
    let (growth, usage_table) = usage_report(&samples);
    for s in &sent {
        let Some(kind) = records[s.step].kind else {
            continue;
        };
        let tally = tallies.entry(kind).or_default();
        tally.sent += 1;
        tally.lost += u64::from(!s.answered);
    }
    let failed_group =
        sent.iter()
            .filter(|s| records[s.step].group_failed)
            .fold(Tally::default(), |mut t, s| {
                t.sent += 1;
                t.lost += u64::from(!s.answered);
                t
            });
    let calm = sent.iter().filter(|s| records[s.step].kind.is_none()).fold(
        Tally::default(),
        |mut t, s| {
            t.sent += 1;
            t.lost += u64::from(!s.answered);
            t
        },
    );
    let table = soak_table(&tallies, failed_group, calm, checks);
    let steps = records.len() - 1;
    let summary = format!(
        "Seed {seed}, {:.1} min, {steps} faults, {checks} invariant checks passed, {restarts} \
         restarts of mpathd (the usage figures are of the last one's life). {usage_table}",
        started.elapsed().as_secs_f64() / 60.0
    );
    println!("{summary}\n\n{table}");
    if let Some(problem) = growth {
        return Err(violation(&records, &daemon, &problem));
    }
    if let Some(path) = out {
        let body = format!(
            "`cargo xtask soak --minutes {minutes} --seed {seed}`: mpathd (release, FDT {FDT_MS} \
             ms) on the 3-NIC lab (h0 and h1 active, h2 standby; data addresses 192.0.2.19 and \
             2001:db8::19 on h0, 192.0.2.20 on h1). The router sends a numbered UDP packet every \
             {} ms over {FLOWS_PER_ADDRESS} flows to each data address and the host echoes it \
             from that address, so inbound traffic and spread outbound traffic both count; a \
             packet is lost when its echo is not back. Faults come from a seeded PRNG \
             (SplitMix64): cut (carrier loss), silent drop (nftables on the switch port), flap \
             (2-6 times down and up, 10-150 ms each, faster than the FDT), offline and their undoing, \
             a MAC change, a deleted test address, a silent drop with mpathd killed (-9) \
             and restarted within the FDT, on any NIC, and a second mpathd started on the \
             same pins (which must be refused); a fault that \
             leaves no NIC usable is drawn less often than others, repairs more often while at \
             most one NIC is usable. After each fault the checker waits (up to {} s) until \
             mpathd's status matches the faults, then asserts that every data address is on \
             the host exactly once, on a usable active NIC (or where it was when the whole \
             group has failed), that mpathd shows it there and that test addresses never \
             move; after {}-{} s under traffic it asserts that nothing moved meanwhile. \
             Packets are counted to the fault in force when they were sent. mpathd's resident \
             memory and descriptors are sampled after each step; the last quarter of the run \
             may exceed the first by at most {RSS_GROWTH_BOUND_KB} kB and {FD_GROWTH_BOUND} \
             descriptors. {} CPUs, shared with other work (load average {load_before} before, \
             {} after).\n\n{summary}\n\n{table}",
            PACKET_SPACING.as_millis(),
            SETTLE_TIMEOUT.as_secs(),
            DWELL.0.as_secs_f64(),
            DWELL.1.as_secs_f64(),
            cpus(),
            load_average(),
        );
        write_section(&path, "Soak", &body)?;
        eprintln!("written to {}", path.display());
    }
    Ok(())
}

/// Waits until mpathd's view matches `faults` and the invariant holds, at most
/// [`SETTLE_TIMEOUT`] after `since`; returns the placement, or the last violation seen.
fn settle(
    lab: &Lab,
    daemon: &Mpathd,
    faults: &[Faults],
    before: &Placement,
    since: Instant,
) -> Result<Placement, String> {
    loop {
        match check(lab, daemon, faults, before) {
            Ok(placement) => return Ok(placement),
            Err(e) if since.elapsed() > SETTLE_TIMEOUT => {
                let fdt = daemon
                    .try_status()
                    .and_then(|s| s.groups.first().map(|g| g.fdt_ms));
                return Err(format!("{e} (mpathd's effective FDT: {fdt:?} ms)"));
            }
            Err(_) => sleep(Duration::from_millis(50)),
        }
    }
}

/// Injects `step` into the lab or mpathd and updates `faults`; returns whether mpathd
/// (rightly) refused an offline. A refusal or acceptance against the rule is an error.
fn inject(
    lab: &Lab,
    daemon: &mut Mpathd,
    rng: &mut Rng,
    step: Step,
    faults: &mut [Faults],
) -> anyhow::Result<bool> {
    let nic = NICS[step.nic];
    let f = &mut faults[step.nic];
    match step.kind {
        Kind::Cut => {
            lab.cut(nic)?;
            f.cut = true;
        }
        Kind::Restore => {
            lab.restore(nic)?;
            f.cut = false;
        }
        Kind::Drop => {
            lab.drop_silently(nic)?;
            f.dropped = true;
        }
        Kind::Undrop => {
            lab.undrop(nic)?;
            f.dropped = false;
        }
        Kind::Flap => {
            let times = 2 + (rng.next() % 5) as u32;
            let period = rng.between(Duration::from_millis(20), Duration::from_millis(300));
            lab.flap(nic, times, period)?;
        }
        Kind::MacChange => {
            // Locally administered and unique per NIC, so no two NICs share one.
            let r = rng.next().to_le_bytes();
            let mac = format!("02:6d:70:{:02x}:{:02x}:{:02x}", step.nic, r[0], r[1]);
            lab.host().ip(&["link", "set", nic, "address", &mac])?;
        }
        Kind::TestAddressDeleted => {
            let (address, _) = TEST[step.nic];
            lab.del_host_addr(nic, address)?;
        }
        Kind::KillRestartWhileFailing => {
            lab.drop_silently(nic)?;
            f.dropped = true;
            sleep(rng.between(Duration::ZERO, Duration::from_millis(FDT_MS)));
            daemon.kill();
            daemon.spawn(lab.host());
        }
        Kind::SecondInstance => second_instance_refused(lab, daemon)?,
        Kind::Offline | Kind::Online => {
            let offline = step.kind == Kind::Offline;
            let must_refuse = offline && offline_refused(faults, step.nic);
            let interface = nic.to_string();
            let request = if offline {
                Request::Offline { interface }
            } else {
                Request::Online { interface }
            };
            match (daemon.request(request), must_refuse) {
                (Reply::Done { .. }, false) => faults[step.nic].offline = offline,
                (Reply::Refused { .. }, true) => return Ok(true),
                (reply, _) => bail!(
                    "{:?} {nic} with faults {}: mpathd answered {reply:?}, expected {}",
                    step.kind,
                    describe_faults(faults),
                    if must_refuse { "a refusal" } else { "done" }
                ),
            }
        }
    }
    Ok(false)
}

/// Starts a second mpathd on the same pins with another socket; it must exit, refused,
/// before it touches anything (the checker then shows the first one unharmed).
fn second_instance_refused(lab: &Lab, daemon: &Mpathd) -> anyhow::Result<()> {
    let socket = daemon.dir.join("second.sock");
    let config = daemon.dir.join("second.toml");
    let text = fs::read_to_string(&daemon.config)?.replace(
        &daemon.socket.display().to_string(),
        &socket.display().to_string(),
    );
    fs::write(&config, text)?;
    let output = lab
        .host()
        .daemon_command(mpath_tests::daemon::binary("mpathd"))?
        .arg("--config")
        .arg(&config)
        .args(["--defaults", "/nonexistent"])
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.success() || !stderr.contains("another mpathd is running") {
        bail!(
            "a second mpathd on the same pins was not refused: {:?}, {stderr}",
            output.status
        );
    }
    Ok(())
}

fn describe_faults(faults: &[Faults]) -> String {
    let parts: Vec<String> = NICS
        .iter()
        .zip(faults)
        .map(|(nic, f)| {
            let mut on = Vec::new();
            if f.cut {
                on.push("cut");
            }
            if f.dropped {
                on.push("dropped");
            }
            if f.offline {
                on.push("offline");
            }
            if on.is_empty() {
                on.push("ok");
            }
            format!("{nic} {}", on.join("+"))
        })
        .collect();
    parts.join(", ")
}

fn describe_placement(placement: &Placement) -> String {
    let parts: Vec<String> = placement.iter().map(|(a, n)| format!("{a}@{n}")).collect();
    parts.join(" ")
}

/// The failure report: the steps so far and the end of mpathd's log.
fn violation(records: &[StepRecord], daemon: &Mpathd, what: &str) -> anyhow::Error {
    eprintln!("\nsteps so far:");
    for r in records {
        eprintln!("  {}", r.line);
    }
    let log = daemon.log();
    let lines: Vec<&str> = log.lines().collect();
    eprintln!("\nmpathd's log, last 80 lines:");
    for l in &lines[lines.len().saturating_sub(80)..] {
        eprintln!("  {}", super::strip_ansi(l));
    }
    anyhow::anyhow!(
        "soak invariant violated at step {}: {what}",
        records.len().saturating_sub(1)
    )
}

/// Compares the first and last quarter of the samples; returns a growth beyond the bounds,
/// and a sentence with the figures.
fn usage_report(samples: &[(Duration, Usage)]) -> (Option<String>, String) {
    let quarter = (samples.len() / 4).max(1);
    let first = &samples[..quarter];
    let last = &samples[samples.len() - quarter..];
    let max_rss = |s: &[(Duration, Usage)]| s.iter().map(|(_, u)| u.rss_kb).max().unwrap_or(0);
    let max_fds = |s: &[(Duration, Usage)]| s.iter().map(|(_, u)| u.fds).max().unwrap_or(0);
    let (rss0, rss1) = (max_rss(first), max_rss(last));
    let (fds0, fds1) = (max_fds(first), max_fds(last));
    let text = format!(
        "mpathd's resident memory, highest sample of the first and last quarter of the run: \
         {rss0} kB and {rss1} kB; open descriptors: {fds0} and {fds1} ({} samples).",
        samples.len()
    );
    let growth = if rss1 > rss0 + RSS_GROWTH_BOUND_KB {
        Some(format!("mpathd's memory grew from {rss0} kB to {rss1} kB"))
    } else if fds1 > fds0 + FD_GROWTH_BOUND {
        Some(format!("mpathd's descriptors grew from {fds0} to {fds1}"))
    } else {
        None
    };
    (growth, text)
}

fn soak_table(
    tallies: &BTreeMap<Kind, Tally>,
    failed_group: Tally,
    calm: Tally,
    checks: u64,
) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| fault | injected | refused (as expected) | packets sent while in force | lost | loss |"
    );
    let _ = writeln!(t, "| --- | ---: | ---: | ---: | ---: | ---: |");
    let mut total = Tally::default();
    for kind in Kind::ALL {
        let x = tallies.get(&kind).copied().unwrap_or_default();
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} |",
            kind.label(),
            x.injected,
            x.refused,
            x.sent,
            x.lost,
            x.loss()
        );
        total.injected += x.injected;
        total.refused += x.refused;
        total.sent += x.sent;
        total.lost += x.lost;
    }
    let _ = writeln!(
        t,
        "| **all faults** | {} | {} | {} | {} | {} |",
        total.injected,
        total.refused,
        total.sent,
        total.lost,
        total.loss()
    );
    let _ = writeln!(
        t,
        "| no fault yet (start) | | | {} | {} | {} |",
        calm.sent,
        calm.lost,
        calm.loss()
    );
    let _ = writeln!(
        t,
        "| of all faults: while the whole group had failed | | | {} | {} | {} |",
        failed_group.sent,
        failed_group.lost,
        failed_group.loss()
    );
    let _ = writeln!(t, "\nInvariant checks passed: {checks}.");
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_the_same_faults() {
        let faults = [Faults::default(); 3];
        let draw = |seed| {
            let mut rng = Rng(seed);
            (0..20)
                .map(|_| {
                    let s = choose(&mut rng, &faults);
                    (s.kind, s.nic)
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn a_nic_with_every_fault_in_force_is_offered_no_fault_again() {
        let mut rng = Rng(1);
        let faults = [
            Faults {
                cut: true,
                dropped: true,
                offline: true,
            },
            Faults::default(),
            Faults::default(),
        ];
        for _ in 0..500 {
            let s = choose(&mut rng, &faults);
            // Undoing, or events that leave no fault in force (a MAC change, a deleted test
            // address, a refused second mpathd).
            if s.nic == 0 {
                assert!(
                    !matches!(
                        s.kind,
                        Kind::Cut
                            | Kind::Drop
                            | Kind::Offline
                            | Kind::Flap
                            | Kind::KillRestartWhileFailing
                    ),
                    "{:?}",
                    s.kind
                );
            }
        }
    }

    #[test]
    fn offline_is_refused_as_mpathd_refuses_it() {
        let ok = Faults::default();
        let cut = Faults { cut: true, ..ok };
        let off = Faults {
            offline: true,
            ..ok
        };
        assert!(!offline_refused(&[ok, ok, ok], 0));
        assert!(offline_refused(&[ok, cut, off], 0), "the last usable NIC");
        assert!(!offline_refused(&[cut, cut, ok], 0), "another one works");
        assert!(
            !offline_refused(&[cut, cut, off], 0),
            "group failed, h1 online"
        );
        assert!(offline_refused(&[cut, off, off], 0), "no other one online");
    }

    #[test]
    fn growth_beyond_the_bounds_is_reported() {
        let at = |rss_kb, fds| (Duration::ZERO, Usage { rss_kb, fds });
        assert!(
            usage_report(&[at(5000, 20), at(5100, 20), at(5200, 21), at(5300, 21)])
                .0
                .is_none()
        );
        assert!(
            usage_report(&[at(5000, 20), at(5000, 20), at(5000, 20), at(9000, 20)])
                .0
                .is_some()
        );
        assert!(
            usage_report(&[at(5000, 20), at(5000, 20), at(5000, 20), at(5000, 30)])
                .0
                .is_some()
        );
    }
}
