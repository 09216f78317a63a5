//! `routes`: mpathd with many routes in `main` (issue 22, "Routes at any scale").
//!
//! The lab of the failover benchmark's off-link cases (3 group NICs, h1 holding the data
//! address 192.0.2.20 and the default route `via 192.0.2.1 dev h1 proto dhcp metric 100`,
//! networks behind the router), plus h3, a fourth NIC on the same link outside the group
//! (arp_ignore=1, no address). Before mpathd starts, `ip -batch` adds N host routes to `main`
//! via the router: through h1, which mpathd serves from its table through the group's
//! resilient nexthop group, or through h3, which its table must hand on to `main` with a
//! `throw` route (the group's default route covers them). Either way a route counts as
//! served once its entry (group route or throw) is in mpathd's table, counted by a netlink
//! dump filtered to that table by the kernel (strict checking).
//!
//! For each N and each NIC, in rounds that rotate the order of the configurations (each on a
//! fresh lab and mpathd), it measures:
//! - start: the time until mpathd answers on its socket, and until every route is served,
//!   every NIC is ok and the default route goes through the group (the served count must
//!   equal main's, and a lookup of one route must land where it should, before anything is
//!   timed);
//! - mpathd's RSS (/proc/<pid>/status VmRSS) with the routes served, and after they are
//!   deleted and their entries gone from its table;
//! - mpathd's idle CPU (all threads, /proc/<pid>/task/*/schedstat);
//! - one new route, and a burst of 1,000 (netlink, pipelined), from the request to its
//!   entry in mpathd's table (the table's notifications, read by a socket subscribed to
//!   them), and mpathd's CPU per change: from the request until mpathd is quiet again, less
//!   its idle rate; then the removal of the burst;
//! - the failover gap of off-link traffic (the failover benchmark's stream through the
//!   gateway, the NIC carrying it failed by carrier loss and by silent loss), checked to
//!   leave through h0 or h2 afterwards, and mpathd's CPU per failover and per repair (until
//!   it is quiet again, less its idle rate);
//! - at the largest N through the group, 1,000 route changes a second (adds and deletes of
//!   other host routes) for `--churn-seconds`: mpathd's CPU, and how long after the last
//!   change its table matched `main`.
//!
//! Where mpathd does not serve something within `--timeout-seconds` the table says so, and
//! the configuration's measurements that need a daemon that caught up are left out.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader, Write as _},
    net::Ipv4Addr,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::net::UnixStream,
    },
    path::PathBuf,
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use mpath_ctl::{
    api::{
        control::{Reply, Request},
        views::Status,
    },
    config::DEFAULT_ROUTE_TABLE,
    core::state::InterfaceStatus,
};
use mpath_lab::{BEHIND_ROUTER_V4, Lab, Netns, ROUTER_V4};
use mpath_tests::daemon::{Mpathd, inbound, state_of, three_nic_config};

use crate::{
    OFF_LINK_DATA, OFF_LINK_NIC, carrier::cpu_ns, cpus, datapath::spread_of, failover_timeout,
    load_average, off_link_failover, off_link_routes, undo_failure, write_section, yes,
};

/// The route counts of the issue.
pub(crate) const DEFAULT_SIZES: [u64; 4] = [0, 10_000, 100_000, 1_000_000];
/// The FDT of the silent-loss failovers (and of probing throughout). At 100 ms, on this
/// shared 2-CPU machine while another build ran, mpathd saw all its targets stop answering
/// at once several times a minute (a group failure, with its route updates): the
/// measurements of routes were then measurements of those.
pub(crate) const DEFAULT_FDT_MS: u64 = 1000;
/// The NIC outside the group that the second run's routes go through.
const OUTSIDE_NIC: &str = "h3";
/// Routes added at once in a burst.
const BURST: usize = 1000;
/// Route changes a second during the churn, and the host routes it keeps in `main` (each
/// change adds one or deletes the oldest).
const CHURN_RATE: u64 = 1000;
const CHURN_POOL: usize = 500;
/// The churn's pace: this many changes every 10 ms.
const CHURN_TICK: Duration = Duration::from_millis(10);
/// mpathd logs each route change at debug level; at a million routes that line would cost
/// more than the work measured (and fill the disk). The rest of its debug log stays: the
/// failover's milestones are read from it.
const RUST_LOG: &str = "debug,mpath_ctl::daemon::routes=info";

/// How long after the deletion mpathd is given before its RSS is read: it gives freed memory
/// back once its route work has been quiet for 2 s.
const RELEASE_WAIT: Duration = Duration::from_secs(3);

// The test routes are host routes in 10.0.0.0/8, which is no documentation range: they are
// only entries of the host's routing table, and no packet is ever sent to them (the
// benchmark's traffic goes to 198.51.100.1, behind the router). 10.0.0.0/9 holds the N
// routes present before mpathd starts, 10.128.0.0/10 those added one by one and in bursts,
// 10.192.0.0/10 the churn's.
const TABLE_BLOCK: u32 = 0x0a00_0000;
const ADDED_BLOCK: u32 = 0x0a80_0000;
const CHURN_BLOCK: u32 = 0x0ac0_0000;
/// The most routes one block holds.
const MAX_SIZE: u64 = 1 << 22;

fn in_test_prefix(address: Ipv4Addr) -> bool {
    address.octets()[0] == 10
}

fn host_route(block: u32, index: u32) -> Ipv4Addr {
    Ipv4Addr::from(block + index)
}

/// What the command line asked for.
pub(crate) struct Options {
    pub sizes: Vec<u64>,
    pub rounds: u64,
    /// One-route changes and failovers of each kind per configuration and round.
    pub reps: u64,
    pub churn: Duration,
    pub idle: Duration,
    /// How long mpathd may take to serve what it is given.
    pub timeout: Duration,
    pub fdt_ms: u64,
    /// Where the routes go: through the group's h1, through h3 outside it, or both.
    pub vias: Vec<Via>,
}

impl Options {
    pub(crate) fn check(&self) -> anyhow::Result<()> {
        ensure!(!self.sizes.is_empty(), "--sizes needs at least one size");
        ensure!(
            self.sizes.iter().all(|&n| n <= MAX_SIZE),
            "--sizes: at most {MAX_SIZE} routes"
        );
        ensure!(
            self.rounds > 0 && self.reps > 0 && !self.idle.is_zero() && !self.timeout.is_zero(),
            "--rounds, --reps, --idle-seconds and --timeout-seconds must be at least 1"
        );
        ensure!(self.fdt_ms >= 100, "--fdt-ms: mpathd's minimum is 100");
        ensure!(!self.vias.is_empty(), "--via needs group, outside or both");
        Ok(())
    }
}

/// Where the N routes go: through the group's NIC h1 or through h3, outside the group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Via {
    Group,
    Outside,
}

impl Via {
    /// `--via`: `group`, `outside` or `both`.
    pub(crate) fn parse(text: &str) -> anyhow::Result<Vec<Via>> {
        Ok(match text {
            "group" => vec![Via::Group],
            "outside" => vec![Via::Outside],
            "both" => vec![Via::Group, Via::Outside],
            _ => bail!("--via {text}: group, outside or both"),
        })
    }

    fn nic(self) -> &'static str {
        match self {
            Via::Group => OFF_LINK_NIC,
            Via::Outside => OUTSIDE_NIC,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Via::Group => "h1 (group)",
            Via::Outside => "h3 (outside)",
        }
    }
}

/// A wait that may not have ended: the time in ms, or the limit it ran into.
type Timed = Result<f64, Duration>;

/// One configuration's measurements in one round; `None` or empty: not measured (mpathd had
/// not caught up).
#[derive(Default)]
struct Sample {
    answered: Option<Timed>,
    served: Option<Timed>,
    rss_served_kb: Option<f64>,
    /// The largest RSS of the whole run (VmHWM): dumps of the routing table are transient.
    rss_peak_kb: Option<f64>,
    idle_us_per_s: Option<f64>,
    one: Vec<Timed>,
    one_cpu_us: Vec<f64>,
    burst: Option<Timed>,
    burst_cpu_us: Option<f64>,
    burst_removed: Option<Timed>,
    carrier_gaps: Vec<Timed>,
    silent_gaps: Vec<Timed>,
    carrier_cpu: FailoverCpu,
    silent_cpu: FailoverCpu,
    deleted: Option<Timed>,
    rss_deleted_kb: Option<f64>,
    unprovoked_failures: usize,
    /// Group failures (the benchmark fails no target, so all are false): during the start,
    /// while measured, while the routes are deleted.
    group_failures: [usize; 3],
    churn: Option<Churn>,
}

/// mpathd's CPU (µs, less its idle rate) for one kind of failure of h1: from the failure
/// until it is quiet after the failover, and from the undoing until it is quiet after the
/// repair (that one with the status requests that wait for the repair).
#[derive(Default)]
struct FailoverCpu {
    failure: Vec<f64>,
    repair: Vec<f64>,
}

/// The churn at the largest size.
struct Churn {
    rate: f64,
    /// mpathd's CPU in each second, in CPUs.
    cpu: Vec<f64>,
    caught_up: Timed,
}

pub(crate) fn routes(o: &Options, out: Option<PathBuf>) -> anyhow::Result<()> {
    o.check()?;
    let started = Instant::now();
    let load_before = load_average();
    let largest = *o.sizes.iter().max().unwrap_or(&0);
    let configs: Vec<(Via, u64)> = o
        .vias
        .iter()
        .copied()
        .flat_map(|via| o.sizes.iter().map(move |&n| (via, n)))
        .collect();
    let mut results: BTreeMap<(Via, u64), Vec<Sample>> = BTreeMap::new();
    for round in 0..o.rounds {
        for i in 0..configs.len() {
            let (via, size) = configs[(i + round as usize) % configs.len()];
            let churn = via == Via::Group && size == largest && !o.churn.is_zero();
            eprintln!("round {}: {size} routes through {}", round + 1, via.label());
            let sample = measure(via, size, churn, o)
                .with_context(|| format!("round {round}, {size} routes via {}", via.label()))?;
            results.entry((via, size)).or_default().push(sample);
        }
    }
    let load_after = load_average();
    let tables = tables(o, largest, &results)?;
    println!("{tables}");
    eprintln!(
        "routes benchmark took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    if let Some(path) = out {
        let body = format!(
            "`cargo xtask bench routes`: mpathd with many routes in `main` (issue 22). The lab \
             is the failover benchmark's off-link one: 3 group NICs (h0 and h1 active, h2 \
             standby, FDT {fdt} ms: at 100 ms mpathd saw false group failures on this shared machine \
             while another build ran), h1 holding 192.0.2.20/24 and the default route `via \
             192.0.2.1 dev h1 proto dhcp metric 100`, plus h3 on the same link outside the \
             group (no address, arp_ignore=1). Before mpathd starts, `ip -batch` adds N host \
             routes (/32s in 10.0.0.0/8: table entries only, no packet is ever sent to them) \
             `via 192.0.2.1 onlink proto static` through h1, which mpathd serves from its table \
             {table} through the group's resilient nexthop group, or through h3, for which its \
             table needs a `throw` entry (the group's default route covers them). A route is \
             served once its entry (group route or throw) is in table {table}, as a netlink \
             dump filtered by the kernel counts; before anything else is timed the served \
             count must equal main's and a lookup of one route must land in table {table} \
             (through h1) or in `main` (through h3). Each of {rounds} round(s) builds each \
             configuration afresh, in an order rotated by the round: mpathd starts (RUST_LOG \
             debug, less its line per route change), is idle for {idle} s once quiet and \
             {release} s more have passed, when it has given back the memory its start took \
             (its RSS read then; the peak is VmHWM over the whole configuration), gets {reps} single \
             new route(s) and a burst of {BURST} (netlink requests, pipelined; the time is from \
             the request to the table's notification of the entry, read by a socket \
             subscribed to them; CPU per change is mpathd's, all threads from \
             /proc/<pid>/task/*/schedstat, from the request until it is quiet again, i.e. until \
             the start of 300 ms in which it used at most 1.5 times its idle rate + 10 ms/s, \
             less its idle rate over that time), then {reps} failover(s) of h1 by carrier loss and by silent loss \
             while a UDP stream (the failover benchmark's, a packet every 0.2 ms) goes \
             through the gateway on h1; its gap is the largest interval between arrivals \
             after the failure, and the stream must leave through h0 or h2 afterwards. \
             mpathd's CPU per failover is counted the same way, from the failure (mpathd quiet \
             before it) until it is quiet after the failover, and per repair from the undoing \
             until it is quiet after the repair (with the status requests that wait for the \
             repair, every 50 ms). Routes through {vias}. At the \
             largest size through h1, {CHURN_RATE} route changes a second (adds and deletes of \
             other host routes, {CHURN_POOL} of them kept) for {churn} s. Last, the N routes \
             are deleted (`ip route flush proto static`) and RSS read once mpathd's table has \
             none of them, it is quiet and {release} s more have passed (mpathd gives freed \
             memory back once its route work has been quiet for 2 s). Whatever mpathd had not done after {timeout} s (failovers: {ftimeout} \
             s) shows as \"not within\"; the measurements after a start that was not served in \
             time are left out. mpathd turns the kernel's `nexthop_compat_mode` off, so that a \
             change of the group's nexthops is not announced as a change of each of its \
             routes. Values are min / median / max over the rounds (and repetitions). {cpus} \
             CPUs, shared with other work (load average {load_before} before the run, \
             {load_after} after).\n\n{tables}",
            fdt = o.fdt_ms,
            table = DEFAULT_ROUTE_TABLE,
            rounds = o.rounds,
            idle = o.idle.as_secs(),
            reps = o.reps,
            churn = o.churn.as_secs(),
            timeout = o.timeout.as_secs(),
            ftimeout = failover_limit(o.fdt_ms).as_secs_f64(),
            release = RELEASE_WAIT.as_secs(),
            cpus = cpus(),
            vias = o
                .vias
                .iter()
                .map(|via| via.label())
                .collect::<Vec<_>>()
                .join(" and "),
        );
        write_section(&path, "Benchmark: routes at scale", &body)?;
        eprintln!("written to {}", path.display());
    }
    Ok(())
}

/// How long a failover may take before it counts as never: the failover benchmark's limit
/// and 5 s more.
fn failover_limit(fdt_ms: u64) -> Duration {
    failover_timeout(fdt_ms) + Duration::from_secs(5)
}

/// One configuration, on a lab and mpathd of its own.
fn measure(via: Via, size: u64, churn: bool, o: &Options) -> anyhow::Result<Sample> {
    let mut s = Sample::default();
    let lab = Lab::builder().nics(4).behind_router().build()?;
    let host = lab.host();
    // On the group's link but in no group: it must not answer ARP for the group's addresses.
    host.run(&[
        "sysctl",
        "-qw",
        &format!("net.ipv4.conf.{OUTSIDE_NIC}.arp_ignore=1"),
        &format!("net.ipv4.conf.{OUTSIDE_NIC}.arp_announce=2"),
    ])?;
    off_link_routes(&lab)?;
    let oif = host.ifindex(via.nic())?;
    fill(host, via.nic(), size)?;
    let mut ctl = Rtnl::open(host, 0)?;
    let in_main = ctl.count(libc::RT_TABLE_MAIN.into())?;
    ensure!(
        in_main.group + in_main.throw == 0 && in_main.other as u64 == size,
        "main holds {in_main:?} test routes instead of {size}"
    );

    let launched = Instant::now();
    let deadline = launched + o.timeout;
    let mut daemon = Mpathd::launch(host, &three_nic_config(o.fdt_ms), &[("RUST_LOG", RUST_LOG)]);
    // Where the log's lines of the measurements and of the deletion begin.
    let mut marks = [None; 2];
    let result = (|| -> anyhow::Result<()> {
        let pid = wait_for_pid(&daemon)?;
        s.answered = Some(match status_by(&daemon, deadline) {
            Some(_) => Ok(ms_since(launched)),
            None => Err(o.timeout),
        });
        let served = wait_until(deadline, pid, || {
            Ok(ctl.count(DEFAULT_ROUTE_TABLE)?.served(via) == size)
        })?;
        let served = served && settled(&daemon, &mut ctl, deadline)?;
        s.served = Some(if served {
            Ok(ms_since(launched))
        } else {
            Err(o.timeout)
        });
        if !served {
            eprintln!("  not served within {} s", o.timeout.as_secs());
            return Ok(());
        }
        check_served(&mut ctl, via, size)?;
        marks[0] = Some(daemon.log().len());
        eprintln!("  served after {:.0} ms", ms_since(launched));
        // Idle once the work of the start is over (its own changes make it read the table
        // again) and the memory it took given back (2 s after it, a walk of the heap: 0.1 s
        // of CPU at a million routes, once); RSS after that, in the steady state.
        quiet(pid, QUIET_BEFORE_IDLE_US_PER_S, Instant::now() + o.timeout)?;
        sleep(RELEASE_WAIT);
        quiet(pid, QUIET_BEFORE_IDLE_US_PER_S, Instant::now() + o.timeout)?;
        let before = cpu_ns(pid)?;
        sleep(o.idle);
        let idle = (cpu_ns(pid)? - before) as f64 / 1e3 / o.idle.as_secs_f64();
        s.idle_us_per_s = Some(idle);
        s.rss_served_kb = Some(memory_kb(pid, "VmRSS")?);
        eprintln!("  idle {idle:.0} us/s, RSS {:?} kB", s.rss_served_kb);

        let caught_up = changes(host, &mut ctl, pid, oif, idle, o, &mut s)?;
        if caught_up {
            failovers(&lab, &daemon, &mut ctl, pid, idle, o, &mut s)?;
            if churn {
                s.churn = Some(churn_at(host, &mut ctl, pid, oif, idle, o)?);
            }
        }
        s.unprovoked_failures =
            unprovoked(&daemon.log(), s.carrier_gaps.len() + s.silent_gaps.len());

        // Every test route goes (those added since too).
        marks[1] = Some(daemon.log().len());
        let deleting = Instant::now();
        host.ip(&["route", "flush", "proto", "static"])?;
        let gone = wait_until(deleting + o.timeout, pid, || {
            Ok(ctl.count(DEFAULT_ROUTE_TABLE)?.total() == 0)
        })?;
        s.deleted = Some(if gone {
            Ok(ms_since(deleting))
        } else {
            Err(o.timeout)
        });
        if gone {
            quiet(pid, quiet_limit(idle), Instant::now() + o.timeout)?;
            std::thread::sleep(RELEASE_WAIT);
            s.rss_deleted_kb = Some(memory_kb(pid, "VmRSS")?);
        }
        s.rss_peak_kb = Some(memory_kb(pid, "VmHWM")?);
        Ok(())
    })();
    stop(&mut daemon);
    s.group_failures = group_failures(&daemon.log(), marks);
    if let Some(dir) = std::env::var_os("ROUTES_DEBUG") {
        let _: Result<_, _> = fs::write(
            PathBuf::from(dir).join(format!("mpathd-{via:?}-{size}.log")),
            daemon.log(),
        );
    }
    result.map(|()| s)
}

/// `size` host routes through `nic` in `main`, by `ip -batch`.
fn fill(host: &Netns, nic: &str, size: u64) -> anyhow::Result<()> {
    if size == 0 {
        return Ok(());
    }
    let path = std::env::temp_dir().join(format!("mpath-bench-routes-{}", std::process::id()));
    let mut batch = String::with_capacity(size as usize * 64);
    for i in 0..size as u32 {
        let _ = writeln!(
            batch,
            "route add {}/32 via {ROUTER_V4} dev {nic} onlink proto static",
            host_route(TABLE_BLOCK, i)
        );
    }
    fs::write(&path, batch).with_context(|| path.display().to_string())?;
    let added = Instant::now();
    let result = host.ip(&["-batch", &path.display().to_string()]);
    let _: Result<_, _> = fs::remove_file(&path);
    result?;
    eprintln!(
        "  {size} routes added in {:.1} s",
        added.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Proves that what is counted as served is: mpathd's table holds an entry for each route
/// of `main`, and a lookup of one of them lands where it should (through h1: the group's
/// route in mpathd's table; through h3: the throw hands it on to `main`).
fn check_served(ctl: &mut Rtnl, via: Via, size: u64) -> anyhow::Result<()> {
    let main = ctl.count(libc::RT_TABLE_MAIN.into())?;
    let table = ctl.count(DEFAULT_ROUTE_TABLE)?;
    ensure!(
        main.other as u64 == size && table.served(via) == size && table.total() as u64 == size,
        "served {table:?} in table {DEFAULT_ROUTE_TABLE} for {main:?} in main"
    );
    if size == 0 {
        return Ok(());
    }
    let probe = host_route(TABLE_BLOCK, size as u32 / 2);
    let found = ctl
        .lookup(probe)?
        .with_context(|| format!("no route to {probe}"))?;
    let expected = match via {
        Via::Group => found.table == DEFAULT_ROUTE_TABLE && found.nhid.is_some(),
        Via::Outside => found.table == u32::from(libc::RT_TABLE_MAIN),
    };
    ensure!(expected, "the lookup of {probe} found {found:?}");
    Ok(())
}

/// One route at a time, then a burst and its removal. Returns whether mpathd kept up (the
/// failovers and churn need a daemon that has served what it was given).
fn changes(
    host: &Netns,
    ctl: &mut Rtnl,
    pid: u32,
    oif: u32,
    idle: f64,
    o: &Options,
    s: &mut Sample,
) -> anyhow::Result<bool> {
    let mut next = 0;
    let mut fresh = |n: usize| -> Vec<Ipv4Addr> {
        let routes = (next..next + n as u32)
            .map(|i| host_route(ADDED_BLOCK, i))
            .collect();
        next += n as u32;
        routes
    };
    for _ in 0..o.reps {
        let routes = fresh(1);
        let (time, cpu) = timed_change(host, ctl, pid, oif, idle, o, &routes, true)?;
        eprintln!("  one new route: {time:?} ms, {cpu:?} us of CPU");
        s.one.push(time);
        if let Some(cpu) = cpu {
            s.one_cpu_us.push(cpu);
        }
        if time.is_err() {
            return Ok(false);
        }
    }
    let routes = fresh(BURST);
    let (time, cpu) = timed_change(host, ctl, pid, oif, idle, o, &routes, true)?;
    eprintln!("  burst of {BURST}: {time:?} ms, {cpu:?} us of CPU");
    s.burst = Some(time);
    s.burst_cpu_us = cpu.map(|c| c / BURST as f64);
    if time.is_err() {
        return Ok(false);
    }
    let (time, _) = timed_change(host, ctl, pid, oif, idle, o, &routes, false)?;
    eprintln!("  burst removed: {time:?} ms");
    s.burst_removed = Some(time);
    Ok(time.is_ok())
}

/// Adds (or deletes) `routes` through `oif` in `main` once mpathd is quiet and times them to
/// their entries in (or out of) its table; and mpathd's CPU from the request until it is
/// quiet again, less its idle rate (`None` when it did not become quiet).
#[expect(clippy::too_many_arguments, reason = "one measurement's inputs")]
fn timed_change(
    host: &Netns,
    ctl: &mut Rtnl,
    pid: u32,
    oif: u32,
    idle: f64,
    o: &Options,
    routes: &[Ipv4Addr],
    add: bool,
) -> anyhow::Result<(Timed, Option<f64>)> {
    quiet(pid, quiet_limit(idle), Instant::now() + o.timeout)?;
    let mut monitor = Rtnl::open(host, RTMGRP_IPV4_ROUTE)?;
    let cpu_before = cpu_ns(pid)?;
    let asked = Instant::now();
    ctl.change(add, routes, oif)?;
    let mut waiting: BTreeSet<Ipv4Addr> = routes.iter().copied().collect();
    let deadline = asked + o.timeout;
    let done = monitor.watch(deadline, |event| {
        if event.route.table == DEFAULT_ROUTE_TABLE && event.added == add {
            waiting.remove(&event.route.dst);
        }
        waiting.is_empty()
    })?;
    let time = match done {
        Watched::Done => Ok(ms_since(asked)),
        Watched::TimedOut => Err(o.timeout),
        // Notifications were lost: the table itself says when.
        Watched::Overrun => {
            let there = wait_until(deadline, pid, || {
                let table: BTreeSet<Ipv4Addr> = ctl
                    .dump(DEFAULT_ROUTE_TABLE)?
                    .into_iter()
                    .map(|r| r.dst)
                    .collect();
                Ok(routes.iter().all(|r| table.contains(r) == add))
            })?;
            if there {
                Ok(ms_since(asked))
            } else {
                Err(o.timeout)
            }
        }
    };
    drop(monitor);
    let cpu = match time {
        Ok(_) => cpu_until_quiet(pid, idle, cpu_before, asked, o)?,
        Err(_) => None,
    };
    Ok((time, cpu))
}

/// mpathd's CPU (µs) from `asked` (when it had used `cpu_before`) until it is quiet again,
/// less its idle rate over that time; `None` when it did not become quiet.
fn cpu_until_quiet(
    pid: u32,
    idle_us_per_s: f64,
    cpu_before: i64,
    asked: Instant,
    o: &Options,
) -> anyhow::Result<Option<f64>> {
    Ok(
        quiet(pid, quiet_limit(idle_us_per_s), Instant::now() + o.timeout)?.map(|q| {
            let cpu = (q.cpu_ns - cpu_before) as f64 / 1e3;
            (cpu - idle_us_per_s * q.at.saturating_duration_since(asked).as_secs_f64()).max(0.0)
        }),
    )
}

/// `o.reps` failovers of h1 by carrier loss and by silent loss, alternating, each undone and
/// waited for before the next; with mpathd's CPU for each failover and repair.
fn failovers(
    lab: &Lab,
    daemon: &Mpathd,
    ctl: &mut Rtnl,
    pid: u32,
    idle: f64,
    o: &Options,
    s: &mut Sample,
) -> anyhow::Result<()> {
    let limit = failover_limit(o.fdt_ms);
    for _ in 0..o.reps {
        for silent in [false, true] {
            quiet(pid, quiet_limit(idle), Instant::now() + o.timeout)?;
            let cpu_before = cpu_ns(pid)?;
            let failed = Instant::now();
            let rep = off_link_failover(lab, daemon, silent, limit)?;
            let gap = rep.map(|r| r.gap_ms).ok_or(limit);
            let failure_cpu = match gap {
                Ok(_) => cpu_until_quiet(pid, idle, cpu_before, failed, o)?,
                Err(_) => None,
            };
            let kind = if silent { "silent" } else { "carrier" };
            eprintln!("  {kind} failover: {gap:?} ms, {failure_cpu:?} us of CPU");
            let (gaps, cpu) = if silent {
                (&mut s.silent_gaps, &mut s.silent_cpu)
            } else {
                (&mut s.carrier_gaps, &mut s.carrier_cpu)
            };
            gaps.push(gap);
            cpu.failure.extend(failure_cpu);
            let cpu_before = cpu_ns(pid)?;
            let undone = Instant::now();
            undo_failure(lab, silent)?;
            if !settled(daemon, ctl, Instant::now() + o.timeout)? {
                eprintln!("  h1 not repaired within {} s", o.timeout.as_secs());
                return Ok(());
            }
            let repair_cpu = cpu_until_quiet(pid, idle, cpu_before, undone, o)?;
            eprintln!("  {kind} repair: {repair_cpu:?} us of CPU");
            cpu.repair.extend(repair_cpu);
        }
    }
    Ok(())
}

/// [`CHURN_RATE`] route changes a second through `oif` for `o.churn`: mpathd's CPU in each
/// second, the rate reached, and how long after the last change mpathd's table held the
/// churn's routes that `main` holds.
fn churn_at(
    host: &Netns,
    ctl: &mut Rtnl,
    pid: u32,
    oif: u32,
    idle: f64,
    o: &Options,
) -> anyhow::Result<Churn> {
    quiet(pid, quiet_limit(idle), Instant::now() + o.timeout)?;
    let mut monitor = Rtnl::open(host, RTMGRP_IPV4_ROUTE)?;
    let mut present: VecDeque<Ipv4Addr> = VecDeque::new();
    let mut served: BTreeSet<Ipv4Addr> = BTreeSet::new();
    let mut overrun = false;
    let per_tick = (CHURN_RATE as u32 * CHURN_TICK.as_millis() as u32 / 1000).max(2);
    let started = Instant::now();
    let mut next_tick = started;
    let mut next_second = started + Duration::from_secs(1);
    let mut cpu_at = cpu_ns(pid)?;
    let mut cpu = Vec::new();
    let (mut next, mut made) = (0u32, 0u64);
    while started.elapsed() < o.churn {
        let (mut add, mut del) = (Vec::new(), Vec::new());
        for k in 0..per_tick {
            if present.len() >= CHURN_POOL && k % 2 == 1 {
                del.extend(present.pop_front());
            } else {
                let route = host_route(CHURN_BLOCK, next);
                next += 1;
                present.push_back(route);
                add.push(route);
            }
        }
        ctl.change(true, &add, oif)?;
        ctl.change(false, &del, oif)?;
        made += (add.len() + del.len()) as u64;
        overrun |= !monitor.drain(|e| track(e, &mut served))?;
        if Instant::now() >= next_second {
            let now = cpu_ns(pid)?;
            cpu.push((now - cpu_at) as f64 / 1e9);
            cpu_at = now;
            next_second += Duration::from_secs(1);
        }
        next_tick += CHURN_TICK;
        let now = Instant::now();
        if next_tick > now {
            sleep(next_tick - now);
        }
    }
    let elapsed = started.elapsed();
    let stopped = Instant::now();
    let wanted: BTreeSet<Ipv4Addr> = present.iter().copied().collect();
    let deadline = stopped + o.timeout;
    let caught_up = if overrun {
        wait_until(deadline, pid, || {
            let table: BTreeSet<Ipv4Addr> = ctl
                .dump(DEFAULT_ROUTE_TABLE)?
                .into_iter()
                .map(|r| r.dst)
                .filter(|d| churned(*d))
                .collect();
            Ok(table == wanted)
        })?
    } else {
        let mut ok = served == wanted;
        while !ok && Instant::now() < deadline {
            match monitor.watch(deadline, |e| {
                track(e, &mut served);
                served == wanted
            })? {
                Watched::Done => ok = true,
                Watched::TimedOut => break,
                Watched::Overrun => {
                    ok = wait_until(deadline, pid, || {
                        let table: BTreeSet<Ipv4Addr> = ctl
                            .dump(DEFAULT_ROUTE_TABLE)?
                            .into_iter()
                            .map(|r| r.dst)
                            .filter(|d| churned(*d))
                            .collect();
                        Ok(table == wanted)
                    })?;
                    break;
                }
            }
        }
        ok
    };
    let churn = Churn {
        rate: made as f64 / elapsed.as_secs_f64(),
        cpu,
        caught_up: if caught_up {
            Ok(ms_since(stopped))
        } else {
            Err(o.timeout)
        },
    };
    eprintln!(
        "  churn: {:.0} changes/s, mpathd CPU {:?}, caught up {:?} ms",
        churn.rate, churn.cpu, churn.caught_up
    );
    Ok(churn)
}

/// Follows the churn's routes in mpathd's table.
fn track(event: &Event, served: &mut BTreeSet<Ipv4Addr>) {
    if event.route.table == DEFAULT_ROUTE_TABLE && churned(event.route.dst) {
        if event.added {
            served.insert(event.route.dst);
        } else {
            served.remove(&event.route.dst);
        }
    }
}

fn churned(route: Ipv4Addr) -> bool {
    u32::from(route) & 0xffc0_0000 == CHURN_BLOCK
}

/// mpathd's group failures in each part of its log (before `marks[0]`, up to `marks[1]`, after
/// it; a mark not reached: the end).
fn group_failures(log: &str, marks: [Option<usize>; 2]) -> [usize; 3] {
    let end = log.len();
    let measured = marks[0].unwrap_or(end);
    let deleting = marks[1].unwrap_or(end).max(measured);
    let count = |part: Option<&str>| {
        part.unwrap_or_default()
            .lines()
            .filter(|l| l.contains("All Interfaces in group"))
            .count()
    };
    [
        count(log.get(..measured)),
        count(log.get(measured..deleting)),
        count(log.get(deleting..)),
    ]
}

/// NIC failures mpathd detected that the benchmark did not cause (`provoked` failovers of h1).
fn unprovoked(log: &str, provoked: usize) -> usize {
    let count = |nic: &str| {
        let line = format!("NIC failure detected on {nic} ");
        log.lines().filter(|l| l.contains(&line)).count()
    };
    count("h0") + count("h2") + count(OFF_LINK_NIC).saturating_sub(provoked)
}

// ----- mpathd -----

/// mpathd's pid, once the lab's wrappers have exec'd into it.
fn wait_for_pid(daemon: &Mpathd) -> anyhow::Result<u32> {
    let pid = daemon.pid().context("mpathd's pid")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "mpathd" {
            return Ok(pid);
        }
        sleep(Duration::from_millis(5));
    }
    bail!("process {pid} did not become mpathd:\n{}", daemon.log())
}

/// Whether `pid` runs (a child that exited stays a zombie until it is waited for).
fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}

/// mpathd's status, if it answers before `deadline`. The daemon answers between events: a
/// long piece of work delays the answer, which [`Mpathd::try_status`] would wait for without
/// limit.
fn status_by(daemon: &Mpathd, deadline: Instant) -> Option<Status> {
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        if left.is_zero() {
            return None;
        }
        let Ok(mut stream) = UnixStream::connect(&daemon.socket) else {
            sleep(Duration::from_millis(20));
            continue;
        };
        let mut line = serde_json::to_vec(&Request::Status {}).ok()?;
        line.push(b'\n');
        stream.set_read_timeout(Some(left)).ok()?;
        stream.write_all(&line).ok()?;
        let mut reply = String::new();
        if BufReader::new(stream).read_line(&mut reply).is_err() {
            return None;
        }
        if let Ok(Reply::Status(status)) = serde_json::from_str(&reply) {
            return Some(status);
        }
        sleep(Duration::from_millis(20));
    }
}

/// Every NIC ok, h1's data address on h1 and the group serving the default route, before
/// `deadline`.
fn settled(daemon: &Mpathd, ctl: &mut Rtnl, deadline: Instant) -> anyhow::Result<bool> {
    let pid = daemon.pid().context("mpathd's pid")?;
    wait_until(deadline, pid, || {
        let Some(status) = status_by(daemon, deadline) else {
            return Ok(false);
        };
        let ok = ["h0", "h1", "h2"]
            .iter()
            .all(|n| state_of(&status, n) == Some(InterfaceStatus::Ok))
            && inbound(&status, OFF_LINK_DATA) == Some(OFF_LINK_NIC);
        let gateway = ctl
            .lookup(BEHIND_ROUTER_V4.parse()?)?
            .is_some_and(|r| r.table == DEFAULT_ROUTE_TABLE && r.nhid.is_some());
        Ok(ok && gateway)
    })
}

/// Polls `done` until it holds (true) or `deadline` passes (false); fails when mpathd exits.
fn wait_until(
    deadline: Instant,
    pid: u32,
    mut done: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<bool> {
    loop {
        if done()? {
            return Ok(true);
        }
        if Instant::now() > deadline {
            return Ok(false);
        }
        ensure!(alive(pid), "mpathd exited");
        sleep(Duration::from_millis(50));
    }
}

/// CPU mpathd may use while quiet: before its idle rate is known, 5 % of a CPU (probing at
/// FDT 1000 ms costs it 20 to 30 ms a second here).
const QUIET_BEFORE_IDLE_US_PER_S: f64 = 50_000.0;

/// The CPU mpathd may use while quiet, given its idle rate: 1.5 times it and 10 ms a second
/// (its probing comes in bursts).
fn quiet_limit(idle_us_per_s: f64) -> f64 {
    idle_us_per_s * 1.5 + 10_000.0
}

/// When mpathd became quiet, and its CPU (ns, all threads) then.
#[derive(Clone, Copy)]
struct Quiet {
    at: Instant,
    cpu_ns: i64,
}

/// Waits until mpathd has used at most `limit_us_per_s` of CPU over the last 300 ms, for at
/// most until `deadline`. Returns when the quiet window began, with mpathd's CPU then (the
/// window's own CPU is no part of the work before it), or `None` when it never was.
fn quiet(pid: u32, limit_us_per_s: f64, deadline: Instant) -> anyhow::Result<Option<Quiet>> {
    const WINDOW: Duration = Duration::from_millis(300);
    let limit_ns = limit_us_per_s * 1e3 * WINDOW.as_secs_f64();
    let mut readings: VecDeque<(Instant, i64)> = VecDeque::new();
    loop {
        let now = Instant::now();
        readings.push_back((now, cpu_ns(pid)?));
        while readings.len() > 1 && now - readings[1].0 >= WINDOW {
            readings.pop_front();
        }
        let (first_at, first_cpu) = readings[0];
        if now - first_at >= WINDOW {
            let (_, last_cpu) = readings[readings.len() - 1];
            if ((last_cpu - first_cpu) as f64) <= limit_ns {
                return Ok(Some(Quiet {
                    at: first_at,
                    cpu_ns: first_cpu,
                }));
            }
        }
        if now > deadline {
            return Ok(None);
        }
        ensure!(alive(pid), "mpathd exited");
        sleep(Duration::from_millis(50));
    }
}

/// A memory figure of mpathd's /proc/<pid>/status (`VmRSS`, `VmHWM`), in kB.
fn memory_kb(pid: u32, field: &str) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).with_context(|| path.clone())?;
    let field = format!("{field}:");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field.as_str()))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse().ok())
        .with_context(|| format!("no {field} in {path}"))
}

/// Stops mpathd with SIGTERM, or SIGKILL when it does not exit within 5 s (it handles
/// signals between events, and a long piece of work can keep it from them for minutes).
fn stop(daemon: &mut Mpathd) {
    if let Some(pid) = daemon.pid() {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(pid) && Instant::now() < deadline {
            sleep(Duration::from_millis(20));
        }
    }
    daemon.kill();
}

fn ms_since(at: Instant) -> f64 {
    at.elapsed().as_secs_f64() * 1e3
}

// ----- netlink -----

const NLMSG_HDRLEN: usize = 16;
const RTMSG_LEN: usize = 12;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_GETROUTE: u16 = 26;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_DUMP: u16 = 0x300;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_TABLE: u16 = 15;
const RTA_NH_ID: u16 = 30;
const RTN_UNICAST: u8 = 1;
const RTN_THROW: u8 = 9;
const RTPROT_STATIC: u8 = 4;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_NOWHERE: u8 = 255;
const RTNH_F_ONLINK: u32 = 4;
const RTM_F_LOOKUP_TABLE: u32 = 0x1000;
const RTM_F_FIB_MATCH: u32 = 0x2000;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;
const NETLINK_GET_STRICT_CHK: libc::c_int = 12;

/// An IPv4 route as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Route {
    /// 0.0.0.0 for a default route.
    dst: Ipv4Addr,
    dst_len: u8,
    table: u32,
    kind: u8,
    nhid: Option<u32>,
}

/// A route notification.
struct Event {
    added: bool,
    route: Route,
}

/// One netlink message as far as the benchmark reads it.
enum Message {
    Route { kind: u16, route: Option<Route> },
    Error { seq: u32, errno: i32 },
    Done,
    Other,
}

/// How a watch of the notifications ended.
enum Watched {
    Done,
    TimedOut,
    /// The socket's buffer overflowed: notifications were lost.
    Overrun,
}

/// The test routes of one table, by kind: through a nexthop object, throws, and others
/// (those of `main`, through a device).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    group: usize,
    throw: usize,
    other: usize,
}

impl Counts {
    fn total(&self) -> usize {
        self.group + self.throw + self.other
    }

    /// How many test routes mpathd's table serves as it should for routes through `via`.
    fn served(&self, via: Via) -> u64 {
        match via {
            Via::Group => self.group as u64,
            Via::Outside => self.throw as u64,
        }
    }
}

/// A NETLINK_ROUTE socket in a lab namespace, with strict checking (so that dumps are
/// filtered by table in the kernel) and a large receive buffer.
struct Rtnl {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl Rtnl {
    /// A socket in `ns`, subscribed to the multicast `groups` (RTMGRP_* bits).
    fn open(ns: &Netns, groups: u32) -> anyhow::Result<Rtnl> {
        let _inside = ns.enter()?;
        // SAFETY: plain socket call; the descriptor is owned from here on.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(std::io::Error::last_os_error()).context("netlink socket");
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_nl is plain data.
        let mut address: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        address.nl_family = libc::AF_NETLINK as u16;
        address.nl_groups = groups;
        // SAFETY: `address` outlives the call and its size is given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&address as *const libc::sockaddr_nl).cast(),
                size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("binding a netlink socket");
        }
        set_int(&fd, libc::SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)?;
        set_int(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 256 << 20)?;
        Ok(Rtnl {
            fd,
            seq: 0,
            buf: vec![0; 1 << 20],
        })
    }

    /// Sends one request and returns its sequence number.
    fn send(
        &mut self,
        kind: u16,
        flags: u16,
        rtm: [u8; RTMSG_LEN],
        attrs: &[(u16, &[u8])],
    ) -> anyhow::Result<u32> {
        self.seq += 1;
        let message = encode(kind, flags, self.seq, rtm, attrs);
        // SAFETY: the buffer outlives the call.
        let n = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                message.as_ptr().cast(),
                message.len(),
                0,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error()).context("netlink send");
        }
        Ok(self.seq)
    }

    /// The messages of the next datagram, waiting up to `wait`: `Ok(None)` when none came,
    /// an error of kind `ENOBUFS` when the socket overflowed.
    fn receive(&mut self, wait: Duration) -> std::io::Result<Option<Vec<Message>>> {
        let mut poll = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = wait.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one pollfd that outlives the call.
        let ready = unsafe { libc::poll(&mut poll, 1, ms) };
        if ready < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if ready == 0 {
            return Ok(None);
        }
        // SAFETY: the buffer outlives the call and its length is given.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                self.buf.as_mut_ptr().cast(),
                self.buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EAGAIN) {
                return Ok(Some(Vec::new()));
            }
            return Err(e);
        }
        Ok(Some(parse(&self.buf[..n as usize])))
    }

    /// The IPv4 routes of `table` (a dump the kernel filters by table); none when the table
    /// does not exist.
    fn dump(&mut self, table: u32) -> anyhow::Result<Vec<Route>> {
        let rtm = rtmsg(0, 0, 0, 0, 0, 0);
        let seq = self.send(
            RTM_GETROUTE,
            NLM_F_REQUEST | NLM_F_DUMP,
            rtm,
            &[(RTA_TABLE, &table.to_ne_bytes())],
        )?;
        let mut routes = Vec::new();
        loop {
            let messages = self
                .receive(Duration::from_secs(60))
                .context("reading a route dump")?
                .context("no answer to a route dump")?;
            for message in messages {
                match message {
                    Message::Route {
                        route: Some(route), ..
                    } if route.table == table => routes.push(route),
                    Message::Done => return Ok(routes),
                    Message::Error { seq: s, errno } if s == seq => {
                        if errno == libc::ENOENT {
                            return Ok(Vec::new());
                        }
                        bail!("route dump: {}", std::io::Error::from_raw_os_error(errno));
                    }
                    _ => {}
                }
            }
        }
    }

    /// The test routes of `table`, by kind.
    fn count(&mut self, table: u32) -> anyhow::Result<Counts> {
        let mut counts = Counts::default();
        for route in self.dump(table)? {
            if route.dst_len != 32 || !in_test_prefix(route.dst) {
                continue;
            }
            match (route.kind, route.nhid) {
                (RTN_THROW, _) => counts.throw += 1,
                (_, Some(_)) => counts.group += 1,
                _ => counts.other += 1,
            }
        }
        Ok(counts)
    }

    /// The route a packet to `dst` would take, as it is in its table (`ip route get fibmatch`
    /// with the table named): `None` when there is none.
    fn lookup(&mut self, dst: Ipv4Addr) -> anyhow::Result<Option<Route>> {
        let rtm = rtmsg(32, 0, 0, 0, 0, RTM_F_FIB_MATCH | RTM_F_LOOKUP_TABLE);
        let seq = self.send(
            RTM_GETROUTE,
            NLM_F_REQUEST,
            rtm,
            &[(RTA_DST, &dst.octets())],
        )?;
        loop {
            let messages = self
                .receive(Duration::from_secs(10))
                .context("reading a route lookup")?
                .context("no answer to a route lookup")?;
            for message in messages {
                match message {
                    Message::Route { route, .. } => return Ok(route),
                    Message::Error { seq: s, errno } if s == seq => {
                        if errno == libc::ENETUNREACH || errno == libc::EHOSTUNREACH {
                            return Ok(None);
                        }
                        bail!(
                            "route lookup of {dst}: {}",
                            std::io::Error::from_raw_os_error(errno)
                        );
                    }
                    _ => {}
                }
            }
        }
    }

    /// Adds (or deletes) host routes `via 192.0.2.1 dev OIF onlink proto static` in `main`,
    /// all requests sent before the acknowledgements are read.
    fn change(&mut self, add: bool, routes: &[Ipv4Addr], oif: u32) -> anyhow::Result<()> {
        let gateway: Ipv4Addr = ROUTER_V4.parse()?;
        let main = libc::RT_TABLE_MAIN;
        let mut first = None;
        for route in routes {
            let seq = if add {
                self.send(
                    RTM_NEWROUTE,
                    NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
                    rtmsg(
                        32,
                        main,
                        RTPROT_STATIC,
                        RT_SCOPE_UNIVERSE,
                        RTN_UNICAST,
                        RTNH_F_ONLINK,
                    ),
                    &[
                        (RTA_DST, &route.octets()),
                        (RTA_GATEWAY, &gateway.octets()),
                        (RTA_OIF, &oif.to_ne_bytes()),
                    ],
                )?
            } else {
                self.send(
                    RTM_DELROUTE,
                    NLM_F_REQUEST | NLM_F_ACK,
                    rtmsg(32, main, 0, RT_SCOPE_NOWHERE, 0, 0),
                    &[(RTA_DST, &route.octets())],
                )?
            };
            first.get_or_insert(seq);
        }
        let Some(first) = first else {
            return Ok(());
        };
        let mut acked = 0;
        while acked < routes.len() {
            let messages = self
                .receive(Duration::from_secs(60))
                .context("reading route acknowledgements")?
                .context("no acknowledgement of a route change")?;
            for message in messages {
                if let Message::Error { seq, errno } = message
                    && seq >= first
                {
                    ensure!(
                        errno == 0,
                        "{} a route: {}",
                        if add { "adding" } else { "deleting" },
                        std::io::Error::from_raw_os_error(errno)
                    );
                    acked += 1;
                }
            }
        }
        Ok(())
    }

    /// Reads route notifications until `done` says so or `deadline` passes.
    fn watch(
        &mut self,
        deadline: Instant,
        mut done: impl FnMut(&Event) -> bool,
    ) -> anyhow::Result<Watched> {
        loop {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return Ok(Watched::TimedOut);
            };
            let messages = match self.receive(left.min(Duration::from_millis(100))) {
                Ok(Some(messages)) => messages,
                Ok(None) => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => return Ok(Watched::Overrun),
                Err(e) => return Err(e).context("reading route notifications"),
            };
            for event in events(messages) {
                if done(&event) {
                    return Ok(Watched::Done);
                }
            }
        }
    }

    /// Hands every notification queued now to `each`; false when some were lost.
    fn drain(&mut self, mut each: impl FnMut(&Event)) -> anyhow::Result<bool> {
        loop {
            match self.receive(Duration::ZERO) {
                Ok(Some(messages)) if !messages.is_empty() => {
                    events(messages).iter().for_each(&mut each);
                }
                Ok(_) => return Ok(true),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => return Ok(false),
                Err(e) => return Err(e).context("reading route notifications"),
            }
        }
    }
}

fn events(messages: Vec<Message>) -> Vec<Event> {
    messages
        .into_iter()
        .filter_map(|m| match m {
            Message::Route {
                kind,
                route: Some(route),
            } => Some(Event {
                added: kind == RTM_NEWROUTE,
                route,
            }),
            _ => None,
        })
        .collect()
}

fn set_int(
    fd: &OwnedFd,
    level: libc::c_int,
    option: libc::c_int,
    value: libc::c_int,
) -> anyhow::Result<()> {
    // SAFETY: setsockopt reads an int from a pointer that lives across the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            option,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as u32,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .context(format!("setsockopt {level}/{option}"));
    }
    Ok(())
}

/// An IPv4 `struct rtmsg`.
fn rtmsg(dst_len: u8, table: u8, protocol: u8, scope: u8, kind: u8, flags: u32) -> [u8; RTMSG_LEN] {
    let mut rtm = [0u8; RTMSG_LEN];
    rtm[0] = libc::AF_INET as u8;
    rtm[1] = dst_len;
    rtm[4] = table;
    rtm[5] = protocol;
    rtm[6] = scope;
    rtm[7] = kind;
    rtm[8..].copy_from_slice(&flags.to_ne_bytes());
    rtm
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// A netlink message: header, `rtm` and attributes.
fn encode(
    kind: u16,
    flags: u16,
    seq: u32,
    rtm: [u8; RTMSG_LEN],
    attrs: &[(u16, &[u8])],
) -> Vec<u8> {
    let mut message = vec![0u8; NLMSG_HDRLEN];
    message.extend_from_slice(&rtm);
    for (kind, data) in attrs {
        let len = 4 + data.len();
        message.extend_from_slice(&(len as u16).to_ne_bytes());
        message.extend_from_slice(&kind.to_ne_bytes());
        message.extend_from_slice(data);
        message.resize(align4(message.len()), 0);
    }
    let len = message.len() as u32;
    message[0..4].copy_from_slice(&len.to_ne_bytes());
    message[4..6].copy_from_slice(&kind.to_ne_bytes());
    message[6..8].copy_from_slice(&flags.to_ne_bytes());
    message[8..12].copy_from_slice(&seq.to_ne_bytes());
    message
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The messages of one datagram.
fn parse(buf: &[u8]) -> Vec<Message> {
    let mut messages = Vec::new();
    let mut at = 0;
    while at + NLMSG_HDRLEN <= buf.len() {
        let len = u32_at(buf, at) as usize;
        if len < NLMSG_HDRLEN || at + len > buf.len() {
            break;
        }
        let kind = u16_at(buf, at + 4);
        let seq = u32_at(buf, at + 8);
        let payload = &buf[at + NLMSG_HDRLEN..at + len];
        messages.push(match kind {
            NLMSG_ERROR if payload.len() >= 4 => Message::Error {
                seq,
                errno: -(u32_at(payload, 0) as i32),
            },
            NLMSG_DONE => Message::Done,
            RTM_NEWROUTE | RTM_DELROUTE => Message::Route {
                kind,
                route: parse_route(payload),
            },
            _ => Message::Other,
        });
        at += align4(len);
    }
    messages
}

/// An IPv4 route of an `rtmsg` and its attributes; `None` for another family.
fn parse_route(payload: &[u8]) -> Option<Route> {
    if payload.len() < RTMSG_LEN || payload[0] != libc::AF_INET as u8 {
        return None;
    }
    let mut route = Route {
        dst: Ipv4Addr::UNSPECIFIED,
        dst_len: payload[1],
        table: payload[4].into(),
        kind: payload[7],
        nhid: None,
    };
    let mut at = RTMSG_LEN;
    while at + 4 <= payload.len() {
        let len = u16_at(payload, at) as usize;
        if len < 4 || at + len > payload.len() {
            break;
        }
        let data = &payload[at + 4..at + len];
        // The upper bits are the nested and byte-order flags.
        match (u16_at(payload, at + 2) & 0x3fff, data.len()) {
            (RTA_DST, 4) => route.dst = Ipv4Addr::new(data[0], data[1], data[2], data[3]),
            (RTA_TABLE, 4) => route.table = u32_at(data, 0),
            (RTA_NH_ID, 4) => route.nhid = Some(u32_at(data, 0)),
            _ => {}
        }
        at += align4(len);
    }
    Some(route)
}

// ----- tables -----

/// min / median / max of the times that ended, and how many did not.
fn timed_cell(values: &[Timed], digits: usize) -> String {
    if values.is_empty() {
        return "not measured".into();
    }
    let ended: Vec<f64> = values
        .iter()
        .filter_map(|v| v.as_ref().ok().copied())
        .collect();
    let limit = values.iter().find_map(|v| v.as_ref().err().copied());
    let mut cell = if ended.is_empty() {
        String::new()
    } else {
        spread_cell(&ended, digits)
    };
    if let Some(limit) = limit {
        let missing = values.len() - ended.len();
        if !cell.is_empty() {
            cell.push_str("; ");
        }
        let _ = write!(
            cell,
            "{}not within {} s",
            if ended.is_empty() {
                String::new()
            } else {
                format!("{missing} of {} ", values.len())
            },
            limit.as_secs_f64()
        );
    }
    cell
}

fn spread_cell(values: &[f64], digits: usize) -> String {
    if values.is_empty() {
        return "not measured".into();
    }
    let (min, median, max) = spread_of(values);
    format!("{min:.digits$} / {median:.digits$} / {max:.digits$}")
}

fn median(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| spread_of(values).1)
}

fn oks(values: &[Timed]) -> Vec<f64> {
    values
        .iter()
        .filter_map(|v| v.as_ref().ok().copied())
        .collect()
}

fn tables(
    o: &Options,
    largest: u64,
    results: &BTreeMap<(Via, u64), Vec<Sample>>,
) -> anyhow::Result<String> {
    let all = |samples: &[Sample], f: fn(&Sample) -> Option<f64>| -> Vec<f64> {
        samples.iter().filter_map(f).collect::<Vec<_>>()
    };
    let timed = |samples: &[Sample], f: fn(&Sample) -> Option<Timed>| -> Vec<Timed> {
        samples.iter().filter_map(f).collect::<Vec<_>>()
    };
    let many = |samples: &[Sample], f: fn(&Sample) -> &Vec<Timed>| -> Vec<Timed> {
        samples.iter().flat_map(|s| f(s).iter().copied()).collect()
    };
    let mut t = String::new();
    writeln!(t, "Start, memory and idle CPU:\n")?;
    writeln!(
        t,
        "| routes | through | mpathd answers, ms | all served, ms | idle CPU, µs per s | RSS served, MB | RSS per served route, bytes | peak RSS, MB | RSS after deleting them, MB | routes gone from its table, ms |"
    )?;
    writeln!(
        t,
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )?;
    for ((via, size), samples) in results {
        let rss = all(samples, |s| s.rss_served_kb.map(|kb| kb / 1024.0));
        let empty = results
            .get(&(*via, 0))
            .and_then(|s| median(&all(s, |s| s.rss_served_kb)));
        let per_route = match (median(&all(samples, |s| s.rss_served_kb)), empty) {
            (Some(kb), Some(empty)) if *size > 0 => {
                format!("{:.0}", (kb - empty) * 1024.0 / *size as f64)
            }
            _ => "".into(),
        };
        writeln!(
            t,
            "| {size} | {} | {} | {} | {} | {} | {per_route} | {} | {} | {} |",
            via.label(),
            timed_cell(&timed(samples, |s| s.answered), 0),
            timed_cell(&timed(samples, |s| s.served), 0),
            spread_cell(&all(samples, |s| s.idle_us_per_s), 0),
            spread_cell(&rss, 1),
            spread_cell(&all(samples, |s| s.rss_peak_kb.map(|kb| kb / 1024.0)), 1),
            spread_cell(&all(samples, |s| s.rss_deleted_kb.map(|kb| kb / 1024.0)), 1),
            timed_cell(&timed(samples, |s| s.deleted), 0),
        )?;
    }
    writeln!(
        t,
        "\nRoute changes: new routes until mpathd's table has them, and mpathd's CPU per change:\n"
    )?;
    writeln!(
        t,
        "| routes | through | one new route, ms | its CPU, µs | burst of {BURST}, ms | CPU per route of the burst, µs | burst deleted, ms |"
    )?;
    writeln!(t, "| ---: | --- | ---: | ---: | ---: | ---: | ---: |")?;
    for ((via, size), samples) in results {
        let one_cpu: Vec<f64> = samples.iter().flat_map(|s| s.one_cpu_us.clone()).collect();
        writeln!(
            t,
            "| {size} | {} | {} | {} | {} | {} | {} |",
            via.label(),
            timed_cell(&many(samples, |s| &s.one), 1),
            spread_cell(&one_cpu, 0),
            timed_cell(&timed(samples, |s| s.burst), 1),
            spread_cell(&all(samples, |s| s.burst_cpu_us), 1),
            timed_cell(&timed(samples, |s| s.burst_removed), 1),
        )?;
    }
    writeln!(
        t,
        "\nFailover gap of the off-link stream when h1 fails (FDT {} ms), ms:\n",
        o.fdt_ms
    )?;
    writeln!(
        t,
        "| routes | through | carrier loss | silent loss | NIC failures nobody caused | group failures (all false) at start / measuring / deleting the routes |"
    )?;
    writeln!(t, "| ---: | --- | ---: | ---: | ---: | ---: |")?;
    for ((via, size), samples) in results {
        let unprovoked: usize = samples.iter().map(|s| s.unprovoked_failures).sum();
        let groups =
            |part: usize| -> usize { samples.iter().map(|s| s.group_failures[part]).sum() };
        writeln!(
            t,
            "| {size} | {} | {} | {} | {unprovoked} | {} / {} / {} |",
            via.label(),
            timed_cell(&many(samples, |s| &s.carrier_gaps), 2),
            timed_cell(&many(samples, |s| &s.silent_gaps), 2),
            groups(0),
            groups(1),
            groups(2),
        )?;
    }
    writeln!(
        t,
        "\nmpathd's CPU per failover of h1 and per repair (all threads, less its idle rate), ms:\n"
    )?;
    writeln!(
        t,
        "| routes | through | carrier loss | its repair | silent loss | its repair |"
    )?;
    writeln!(t, "| ---: | --- | ---: | ---: | ---: | ---: |")?;
    for ((via, size), samples) in results {
        let ms = |f: fn(&Sample) -> &Vec<f64>| -> String {
            let values: Vec<f64> = samples.iter().flat_map(f).map(|us| us / 1e3).collect();
            spread_cell(&values, 1)
        };
        writeln!(
            t,
            "| {size} | {} | {} | {} | {} | {} |",
            via.label(),
            ms(|s| &s.carrier_cpu.failure),
            ms(|s| &s.carrier_cpu.repair),
            ms(|s| &s.silent_cpu.failure),
            ms(|s| &s.silent_cpu.repair),
        )?;
    }
    let churns: Vec<&Churn> = results
        .get(&(Via::Group, largest))
        .map(|s| s.iter().filter_map(|s| s.churn.as_ref()).collect())
        .unwrap_or_default();
    if !churns.is_empty() {
        writeln!(
            t,
            "\nChurn at {largest} routes through h1: {CHURN_RATE} route changes a second for {} s:\n",
            o.churn.as_secs()
        )?;
        writeln!(
            t,
            "| changes a second reached | mpathd's CPU in each second, CPUs | its table matched `main` after the last change, ms |"
        )?;
        writeln!(t, "| ---: | ---: | ---: |")?;
        let rates: Vec<f64> = churns.iter().map(|c| c.rate).collect();
        let cpu: Vec<f64> = churns.iter().flat_map(|c| c.cpu.clone()).collect();
        let caught: Vec<Timed> = churns.iter().map(|c| c.caught_up).collect();
        writeln!(
            t,
            "| {} | {} | {} |",
            spread_cell(&rates, 0),
            spread_cell(&cpu, 3),
            timed_cell(&caught, 0)
        )?;
    }
    targets(&mut t, o, largest, results)?;
    Ok(t)
}

fn targets(
    t: &mut String,
    o: &Options,
    largest: u64,
    results: &BTreeMap<(Via, u64), Vec<Sample>>,
) -> anyhow::Result<()> {
    let smallest = *o.sizes.iter().min().unwrap_or(&0);
    let at = if largest == 1_000_000 {
        String::new()
    } else {
        format!(" (measured at {largest}, the largest size run)")
    };
    writeln!(t, "\nTargets:\n")?;
    writeln!(t, "| target | measured | met |")?;
    writeln!(t, "| --- | --- | --- |")?;
    for via in [Via::Group, Via::Outside] {
        let Some(empty) = results.get(&(via, 0)) else {
            continue;
        };
        for (fault, gaps) in [
            (
                "carrier loss",
                (|s: &Sample| s.carrier_gaps.clone()) as fn(&Sample) -> Vec<Timed>,
            ),
            ("silent loss", |s: &Sample| s.silent_gaps.clone()),
        ] {
            let Some(base) = median(&oks(&empty.iter().flat_map(gaps).collect::<Vec<_>>())) else {
                continue;
            };
            for size in o.sizes.iter().filter(|&&n| n > 0) {
                let Some(samples) = results.get(&(via, *size)) else {
                    continue;
                };
                let all: Vec<Timed> = samples.iter().flat_map(gaps).collect();
                let (measured, met) = match median(&oks(&all)) {
                    Some(m) if oks(&all).len() == all.len() => (
                        format!("median {m:.2} ms against {base:.2} ms"),
                        m <= base * 1.2 + 1.0,
                    ),
                    _ => (timed_cell(&all, 2), false),
                };
                writeln!(
                    t,
                    "| off-link gap on {fault} at {size} routes through {}: within 20 % + 1 ms of the empty table's | {measured} | {} |",
                    via.label(),
                    yes(met)
                )?;
            }
        }
    }
    for via in [Via::Group, Via::Outside] {
        let Some(empty) = results.get(&(via, 0)) else {
            continue;
        };
        for (fault, cpu) in [
            (
                "carrier loss",
                (|s: &Sample| s.carrier_cpu.failure.clone()) as fn(&Sample) -> Vec<f64>,
            ),
            ("silent loss", |s: &Sample| s.silent_cpu.failure.clone()),
        ] {
            let Some(base) = median(&empty.iter().flat_map(cpu).collect::<Vec<_>>()) else {
                continue;
            };
            for size in o.sizes.iter().filter(|&&n| n > 0) {
                let Some(samples) = results.get(&(via, *size)) else {
                    continue;
                };
                let (measured, met) =
                    match median(&samples.iter().flat_map(cpu).collect::<Vec<_>>()) {
                        Some(m) => (
                            format!("median {:.1} ms against {:.1} ms", m / 1e3, base / 1e3),
                            m <= base * 1.2 + 1000.0,
                        ),
                        None => ("not measured".into(), false),
                    };
                writeln!(
                    t,
                    "| mpathd CPU per failover on {fault} at {size} routes through {}: within 20 % + 1 ms of the empty table's | {measured} | {} |",
                    via.label(),
                    yes(met)
                )?;
            }
        }
    }
    for via in [Via::Group, Via::Outside] {
        let Some(samples) = results.get(&(via, largest)) else {
            continue;
        };
        let ones: Vec<Timed> = samples.iter().flat_map(|s| s.one.clone()).collect();
        let bursts: Vec<Timed> = samples.iter().filter_map(|s| s.burst).collect();
        let burst = format!("a burst of {BURST}");
        for (what, values) in [("one new route", ones), (burst.as_str(), bursts)] {
            let met = !values.is_empty()
                && oks(&values).len() == values.len()
                && median(&oks(&values)).is_some_and(|m| m < 100.0);
            writeln!(
                t,
                "| {what} through {} served in under 100 ms at 1000000 routes{at} | {} ms | {} |",
                via.label(),
                timed_cell(&values, 1),
                yes(met)
            )?;
        }
        // Flat: the largest size's median within 20 % (and a little absolute slack for the
        // noise of a shared machine) of the smallest's.
        let flat = |f: fn(&Sample) -> Vec<f64>, slack: f64| -> Option<(f64, f64, bool)> {
            let small = median(
                &results
                    .get(&(via, smallest))?
                    .iter()
                    .flat_map(f)
                    .collect::<Vec<_>>(),
            )?;
            let large = median(&samples.iter().flat_map(f).collect::<Vec<_>>())?;
            Some((small, large, large <= small * 1.2 + slack))
        };
        match flat(|s| s.burst_cpu_us.into_iter().collect(), 5.0) {
            Some((small, large, met)) => writeln!(
                t,
                "| mpathd CPU per route change through {} flat from {smallest} to 1000000 routes{at} (burst, within 20 % + 5 µs) | {small:.1} µs at {smallest}, {large:.1} µs at {largest} | {} |",
                via.label(),
                yes(met)
            )?,
            None => writeln!(
                t,
                "| mpathd CPU per route change through {} flat from {smallest} to 1000000 routes{at} | not measured at {largest} | no |",
                via.label()
            )?,
        }
        if let Some((small, large, met)) = flat(|s| s.idle_us_per_s.into_iter().collect(), 1000.0) {
            writeln!(
                t,
                "| idle mpathd CPU through {} flat from {smallest} to 1000000 routes{at} (within 20 % + 1 ms a second) | {small:.0} µs/s at {smallest}, {large:.0} µs/s at {largest} | {} |",
                via.label(),
                yes(met)
            )?;
        }
    }
    if let Some(samples) = results.get(&(Via::Group, largest))
        && !o.churn.is_zero()
    {
        let cpu: Vec<f64> = samples
            .iter()
            .filter_map(|s| s.churn.as_ref())
            .flat_map(|c| c.cpu.clone())
            .collect();
        let measured = match median(&cpu) {
            Some(_) => format!("{} CPUs (min / median / max)", spread_cell(&cpu, 3)),
            None => "not measured".into(),
        };
        let met = median(&cpu).is_some_and(|m| m < 0.5)
            && cpu.iter().all(|&c| c < 0.5)
            && o.churn >= Duration::from_secs(60);
        writeln!(
            t,
            "| mpathd under half a CPU during {CHURN_RATE} changes a second for 60 s at 1000000 routes{at}{} | {measured} | {} |",
            if o.churn < Duration::from_secs(60) {
                format!(" (ran {} s)", o.churn.as_secs())
            } else {
                String::new()
            },
            yes(met)
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_request_encodes_header_rtmsg_and_aligned_attributes() {
        let rtm = rtmsg(32, 254, RTPROT_STATIC, 0, RTN_UNICAST, RTNH_F_ONLINK);
        let message = encode(
            RTM_NEWROUTE,
            NLM_F_REQUEST,
            7,
            rtm,
            &[(RTA_DST, &[10, 0, 0, 1]), (RTA_OIF, &3u32.to_ne_bytes())],
        );
        assert_eq!(message.len(), 16 + 12 + 8 + 8);
        assert_eq!(u32_at(&message, 0) as usize, message.len());
        assert_eq!(u16_at(&message, 4), RTM_NEWROUTE);
        assert_eq!(u32_at(&message, 8), 7);
        assert_eq!(&message[16..20], &[libc::AF_INET as u8, 32, 0, 0]);
        assert_eq!(message[20], 254);
        assert_eq!(u16_at(&message, 28), 8);
        assert_eq!(&message[32..36], &[10, 0, 0, 1]);
    }

    #[test]
    fn route_notifications_parse_back_with_table_and_nexthop() {
        let table = DEFAULT_ROUTE_TABLE.to_ne_bytes();
        let nhid = 0x6d70_0001u32.to_ne_bytes();
        let mut datagram = encode(
            RTM_NEWROUTE,
            0,
            0,
            rtmsg(32, 252, 109, 0, RTN_UNICAST, 0),
            &[
                (RTA_TABLE, &table),
                (RTA_DST, &[10, 1, 2, 3]),
                (RTA_NH_ID, &nhid),
            ],
        );
        datagram.extend(encode(
            RTM_DELROUTE,
            0,
            0,
            rtmsg(32, 252, 109, 0, RTN_THROW, 0),
            &[(RTA_TABLE, &table), (RTA_DST, &[10, 1, 2, 4])],
        ));
        let events = events(parse(&datagram));
        assert_eq!(events.len(), 2);
        assert!(events[0].added);
        assert_eq!(
            events[0].route,
            Route {
                dst: Ipv4Addr::new(10, 1, 2, 3),
                dst_len: 32,
                table: DEFAULT_ROUTE_TABLE,
                kind: RTN_UNICAST,
                nhid: Some(0x6d70_0001),
            }
        );
        assert!(!events[1].added);
        assert_eq!(events[1].route.kind, RTN_THROW);
    }

    #[test]
    fn test_routes_stay_in_their_blocks() {
        assert_eq!(host_route(TABLE_BLOCK, 0), Ipv4Addr::new(10, 0, 0, 0));
        assert_eq!(
            host_route(TABLE_BLOCK, MAX_SIZE as u32 - 1),
            Ipv4Addr::new(10, 63, 255, 255)
        );
        assert_eq!(host_route(ADDED_BLOCK, 1), Ipv4Addr::new(10, 128, 0, 1));
        assert_eq!(host_route(CHURN_BLOCK, 2), Ipv4Addr::new(10, 192, 0, 2));
        assert!(in_test_prefix(host_route(CHURN_BLOCK, 5)));
    }

    #[test]
    fn a_time_not_reached_is_shown_with_its_limit() {
        let limit = Duration::from_secs(120);
        assert_eq!(
            timed_cell(&[Ok(1.0), Ok(3.0), Ok(2.0)], 1),
            "1.0 / 2.0 / 3.0"
        );
        assert_eq!(timed_cell(&[Err(limit)], 1), "not within 120 s");
        assert_eq!(
            timed_cell(&[Ok(1.0), Err(limit)], 1),
            "1.0 / 1.0 / 1.0; 1 of 2 not within 120 s"
        );
        assert_eq!(timed_cell(&[], 1), "not measured");
    }

    #[test]
    fn only_failures_of_the_other_nics_and_extra_ones_count_as_unprovoked() {
        let log = "\
t WARN NIC failure detected on h1 of group g0
t WARN NIC failure detected on h1 of group g0
t WARN NIC failure detected on h0 of group g0
t WARN NIC failure detected on h10 of group g0
";
        assert_eq!(unprovoked(log, 2), 1);
        assert_eq!(unprovoked(log, 1), 2);
    }

    #[test]
    fn group_failures_are_counted_in_the_part_of_the_log_they_are_in() {
        let log = "\
a WARN All Interfaces in group g0 have failed
b INFO served
c WARN All Interfaces in group g0 have failed
c WARN All Interfaces in group g0 have failed
d INFO deleting
";
        let served = log.find("b INFO").unwrap();
        let deleting = log.find("d INFO").unwrap();
        assert_eq!(
            group_failures(log, [Some(served), Some(deleting)]),
            [1, 2, 0]
        );
        assert_eq!(group_failures(log, [Some(served), None]), [1, 2, 0]);
        assert_eq!(group_failures(log, [None, None]), [3, 0, 0]);
    }
}
