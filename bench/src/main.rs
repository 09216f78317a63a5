//! mpath's benchmarks, run by `cargo xtask bench ...` (release build, as root).
//!
//! `datapath`: the sender's CPU per packet with no program (the baseline), mpathd's routes
//! and datapath spreading modes and kernel ECMP over 2 and 4 NICs, for unconnected and
//! connected sockets; then bulk TCP over shaped NICs (see [`datapath`]); then bulk TCP into
//! the host with and without the probe-reply matcher at tc ingress and as XDP, and the
//! receiver's CPU per Gbit (see [`receive`]). `--only send|receive` runs one part.
//!
//! `failover`: a steady UDP stream to a data address while the NIC holding it fails, for
//! carrier loss and silent loss under mpathd and for kernel ECMP with
//! `ignore_routes_with_linkdown`; and off-link, a stream from the host through the gateway
//! while the NIC its default route named fails. The traffic gap, split by mpathd's log into
//! detection, map rewrite and address move. Optionally a false-failure run under saturating
//! traffic. Then probing at scale: detection, false failures and CPU per NIC with 1, 8 and 32
//! NICs, mpathd beside FRR's bfdd (see [`scale`]).
//!
//! `busy`: probing at FDT 100 ms while spinning threads keep every CPU busy, h0 dropped
//! silently over and over: false failures of the healthy NICs (see [`busy`]).
//!
//! `soak`: random faults under traffic with an invariant checker (see [`soak`]).
//!
//! `sources`: what the IPv6 source hook costs a sender it serves and one it turns away (see
//! [`sources`]).
//!
//! `carrier`: how soon a carrier loss the kernel reports late fails the NIC, with mpathd's
//! carrier poll and without, and what the poll costs (see [`carrier`]); with `--guest`, in
//! the virtio guest, how long the NIC's traffic stops with the carrier hook, the poll and the
//! link events alone (see [`carrier_guest`]).
//!
//! `routes`: mpathd with 0 to 1,000,000 routes in `main` through the group's gateway and
//! through a NIC outside the group: start time, time to serve one new route and a burst,
//! CPU per route change, idle and under churn, RSS, and the off-link failover gap at each
//! size (see [`routes`]).

mod busy;
mod carrier;
mod carrier_guest;
mod datapath;
mod receive;
mod routes;
mod scale;
mod soak;
mod sources;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    thread::{JoinHandle, sleep},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use mpath_ctl::config::DEFAULT_ROUTE_TABLE;
use mpath_ctl::core::state::InterfaceStatus;
use mpath_lab::{BEHIND_ROUTER_V4, Lab, Netns, ROUTER_V4};
use mpath_tests::daemon::{Mpathd, inbound, log_time_ns, state_of, three_nic_config};

const FIRST_PORT: u16 = 9000;
const PAYLOAD: usize = 18;
const BATCH: usize = 64;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from);
    if let Some(which) = args.first() {
        check_arguments(which, &args[1..])?;
    }
    match args.first().map(String::as_str) {
        Some("datapath") => {
            let rounds = flag(&args, "--rounds")?.unwrap_or(5);
            let seconds = flag(&args, "--seconds")?.unwrap_or(1);
            let bulk_seconds = flag(&args, "--bulk-seconds")?.unwrap_or(5);
            if rounds == 0 || bulk_seconds == 0 {
                bail!("--rounds and --bulk-seconds must be at least 1");
            }
            let (send, receive) = match text_flag(&args, "--only")? {
                None => (true, true),
                Some("send") => (true, false),
                Some("receive") => (false, true),
                Some(other) => bail!("--only {other}: the parts are `send` and `receive`"),
            };
            if send {
                datapath::datapath(
                    rounds,
                    Duration::from_secs(seconds),
                    bulk_seconds,
                    out.clone(),
                )?;
            }
            if receive {
                receive::receive(rounds, Duration::from_secs(bulk_seconds), out)?;
            }
            Ok(())
        }
        Some("failover") => {
            let reps = flag(&args, "--reps")?.unwrap_or(20);
            let minutes = flag(&args, "--false-failure-minutes")?;
            if reps == 0 {
                bail!("--reps must be at least 1");
            }
            let (cases, scale) = match text_flag(&args, "--only")? {
                None => (true, true),
                Some("cases") => (true, false),
                Some("scale") => (false, true),
                Some(other) => bail!("--only {other}: the parts are `cases` and `scale`"),
            };
            if cases {
                failover(reps, minutes.unwrap_or(0), out.clone())?;
            }
            if scale {
                scale::scale(reps, minutes.unwrap_or(scale::DEFAULT_MINUTES), out)?;
            }
            Ok(())
        }
        Some("soak") => {
            let minutes = flag(&args, "--minutes")?.unwrap_or(30);
            let seed = match flag(&args, "--seed")? {
                Some(seed) => seed,
                None => std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_nanos() as u64,
            };
            soak::soak(minutes, seed, out)
        }
        Some("sources") => {
            let rounds = flag(&args, "--rounds")?.unwrap_or(5);
            let count = flag(&args, "--count")?.unwrap_or(20_000);
            if rounds == 0 || count == 0 {
                bail!("--rounds and --count must be at least 1");
            }
            sources::sources(rounds, count, out)
        }
        Some("carrier") => {
            let rounds = flag(&args, "--rounds")?.unwrap_or(5);
            if rounds == 0 {
                bail!("--rounds must be at least 1");
            }
            if args.iter().any(|a| a == "--guest") {
                return carrier_guest::carrier_guest(rounds, out);
            }
            let idle = flag(&args, "--idle-seconds")?.unwrap_or(10);
            if idle == 0 {
                bail!("--idle-seconds must be at least 1");
            }
            carrier::carrier(rounds, Duration::from_secs(idle), out)
        }
        Some("busy") => {
            let minutes = flag(&args, "--minutes")?.unwrap_or(10);
            if minutes == 0 {
                bail!("--minutes must be at least 1");
            }
            busy::busy(minutes, out)
        }
        Some("routes") => {
            let sizes = match text_flag(&args, "--sizes")? {
                Some(list) => list
                    .split(',')
                    .map(|n| {
                        n.trim()
                            .parse()
                            .with_context(|| format!("--sizes {list}: {n} is not a whole number"))
                    })
                    .collect::<anyhow::Result<Vec<u64>>>()?,
                None => routes::DEFAULT_SIZES.to_vec(),
            };
            let options = routes::Options {
                sizes,
                rounds: flag(&args, "--rounds")?.unwrap_or(3),
                reps: flag(&args, "--reps")?.unwrap_or(3),
                churn: Duration::from_secs(flag(&args, "--churn-seconds")?.unwrap_or(60)),
                idle: Duration::from_secs(flag(&args, "--idle-seconds")?.unwrap_or(10)),
                timeout: Duration::from_secs(flag(&args, "--timeout-seconds")?.unwrap_or(120)),
                fdt_ms: flag(&args, "--fdt-ms")?.unwrap_or(routes::DEFAULT_FDT_MS),
                vias: routes::Via::parse(text_flag(&args, "--via")?.unwrap_or("both"))?,
            };
            routes::routes(&options, out)
        }
        _ => bail!(
            "usage: mpath-bench datapath [--rounds N] [--seconds S] [--bulk-seconds S] [--only send|receive] \
             [--out BENCHMARKS.md]\n       \
             mpath-bench failover [--reps N] [--false-failure-minutes M] [--only cases|scale] \
             [--out BENCHMARKS.md]\n       \
             (M: the 3-NIC false-failure run, none by default, and the scale part's run per \
             NIC count, 10 min by default)\n       \
             mpath-bench busy [--minutes N] [--out BENCHMARKS.md]\n       \
             mpath-bench soak [--minutes N] [--seed S] [--out BENCHMARKS.md]\n       \
             mpath-bench sources [--rounds N] [--count N] [--out BENCHMARKS.md]\n       \
             mpath-bench carrier [--rounds N] [--idle-seconds S] [--out BENCHMARKS.md]\n       \
             mpath-bench carrier --guest [--rounds N] [--out BENCHMARKS.md] (in the virtio \
             guest of `cargo xtask bench carrier --guest`)\n       \
             mpath-bench routes [--sizes 0,10000,100000,1000000] [--rounds N] [--reps N] \
             [--churn-seconds S] [--idle-seconds S] [--timeout-seconds S] [--fdt-ms MS] \
             [--via group|outside|both] [--out BENCHMARKS.md]"
        ),
    }
}

/// The value of `NAME N` on the command line, if given.
fn flag(args: &[String], name: &str) -> anyhow::Result<Option<u64>> {
    text_flag(args, name)?
        .map(|value| {
            value
                .parse()
                .with_context(|| format!("{name} {value}: not a whole number"))
        })
        .transpose()
}

/// The options each benchmark takes: every one but `--guest` with a value. `--out` goes with
/// all of them.
const OPTIONS: &[(&str, &[&str])] = &[
    (
        "datapath",
        &["--rounds", "--seconds", "--bulk-seconds", "--only"],
    ),
    ("failover", &["--reps", "--false-failure-minutes", "--only"]),
    ("soak", &["--minutes", "--seed"]),
    ("sources", &["--rounds", "--count"]),
    ("carrier", &["--rounds", "--idle-seconds", "--guest"]),
    ("busy", &["--minutes"]),
    (
        "routes",
        &[
            "--sizes",
            "--rounds",
            "--reps",
            "--churn-seconds",
            "--idle-seconds",
            "--timeout-seconds",
            "--fdt-ms",
            "--via",
        ],
    ),
];

/// Refuses an argument benchmark `which` does not take (a typo would otherwise run the whole
/// default benchmark for an hour), naming it and the options there are.
fn check_arguments(which: &str, args: &[String]) -> anyhow::Result<()> {
    let Some((_, options)) = OPTIONS.iter().find(|(name, _)| *name == which) else {
        // An unknown benchmark gets the usage.
        return Ok(());
    };
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        if arg == "--guest" && options.contains(&"--guest") {
            continue;
        }
        if arg == "--out" || options.contains(&arg.as_str()) {
            rest.next();
            continue;
        }
        bail!(
            "{which}: unknown argument {arg:?}; its options are {} and --out",
            options.join(", ")
        );
    }
    Ok(())
}

/// The value of `NAME VALUE` on the command line, if given.
fn text_flag<'a>(args: &'a [String], name: &str) -> anyhow::Result<Option<&'a str>> {
    let Some(i) = args.iter().position(|a| a == name) else {
        return Ok(None);
    };
    args.get(i + 1)
        .map(|value| Some(value.as_str()))
        .with_context(|| format!("{name} needs a value"))
}

/// Sends small UDP packets round-robin to `flows` as fast as sendmmsg goes, for `duration`;
/// returns how many were sent.
fn blast(socket: &UdpSocket, flows: &[SocketAddrV4], duration: Duration) -> anyhow::Result<u64> {
    let payload = [0u8; PAYLOAD];
    let addrs: Vec<libc::sockaddr_in> = (0..BATCH)
        .map(|i| {
            let a = flows[i % flows.len()];
            libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            }
        })
        .collect();
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut _,
        iov_len: PAYLOAD,
    };
    // SAFETY: mmsghdr is plain data; every pointer set below outlives the sends.
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    for (m, a) in msgs.iter_mut().zip(&addrs) {
        m.msg_hdr.msg_name = (a as *const libc::sockaddr_in).cast_mut().cast();
        m.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
        m.msg_hdr.msg_iov = &mut iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    let start = Instant::now();
    let mut sent: u64 = 0;
    while start.elapsed() < duration {
        // SAFETY: `msgs` holds BATCH initialised headers.
        let n = unsafe { libc::sendmmsg(socket.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOBUFS) || e.raw_os_error() == Some(libc::EAGAIN) {
                continue;
            }
            return Err(e).context("sendmmsg");
        }
        sent += n as u64;
    }
    Ok(sent)
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

/// Replaces (or appends) the `## TITLE` section of BENCHMARKS.md with `body`.
fn write_section(path: &Path, title: &str, body: &str) -> anyhow::Result<()> {
    let existing = fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".into());
    let heading = format!("## {title}");
    let section = format!("{heading}\n\n{}\n\n", body.trim_end());
    let mut sections: Vec<&str> = existing.split("\n## ").collect();
    let head = sections.remove(0).trim_end().to_string();
    let mut out = head + "\n\n";
    let mut replaced = false;
    for s in sections {
        // The whole title line: "failover" must not replace "failover, at scale".
        if s.lines().next() == Some(title) {
            out.push_str(&section);
            replaced = true;
        } else {
            out.push_str("## ");
            out.push_str(s.trim_end());
            out.push_str("\n\n");
        }
    }
    if !replaced {
        out.push_str(&section);
    }
    fs::write(path, out.trim_end().to_string() + "\n")
        .with_context(|| format!("{}", path.display()))
}

// ----- failover -----

/// The data address the stream goes to in the mpathd cases; configured on h0.
const DATA_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 19);
const DATA_CIDR: &str = "192.0.2.19/24";
/// The NIC that fails in every repetition (the one holding the stream's address).
const FAILING_NIC: &str = "h0";
pub(crate) const STREAM_PORT: u16 = 7000;
/// Spacing of the stream's packets: the resolution of every time measured from it.
const STREAM_SPACING: Duration = Duration::from_micros(200);
/// How long the stream runs undisturbed before a failure is injected, and on after it has
/// moved: the stream's own jitter is measured there.
const CALM: Duration = Duration::from_millis(150);
/// The FDT of the carrier-loss case: link-based detection does not depend on it, repair
/// after the cable is back does (10 answered probes).
const CARRIER_FDT_MS: u64 = 1000;
const SILENT_FDTS_MS: [u64; 2] = [100, 1000];
/// in.mpathd's probe interval is FDT / (NUM_PROBE_FAILS + 2).
const PROBE_INTERVALS_PER_FDT: u64 = 7;

/// ECMP comparison: the switch namespace routes to the host over one point-to-point link
/// per NIC; the data address sits on the host's loopback.
const ECMP_DATA: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 19);
const ECMP_SOURCE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const ECMP_NICS: u32 = 2;

/// Saturating traffic for the false-failure run: flows per direction and data address.
const SATURATING_FLOWS: u16 = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    /// The switch port goes down: h0 loses carrier.
    CarrierLoss,
    /// The switch drops h0's frames, carrier stays up: only probes can tell.
    SilentLoss { fdt_ms: u64 },
    /// A stream from the host through the gateway to the network behind it, while the NIC
    /// its default route named (h1, as a DHCP client set it) loses carrier or, when
    /// `silent`, its frames; mpathd's group routes must carry the stream on.
    OffLink { silent: bool, fdt_ms: u64 },
    /// No mpathd: the sender's ECMP route drops the next hop whose link lost carrier.
    Ecmp,
}

impl Case {
    fn label(self) -> String {
        match self {
            Case::CarrierLoss => format!("mpathd, carrier loss (FDT {CARRIER_FDT_MS} ms)"),
            Case::SilentLoss { fdt_ms } => format!("mpathd, silent loss, FDT {fdt_ms} ms"),
            Case::OffLink { silent, fdt_ms } => format!(
                "mpathd, off-link, {}, FDT {fdt_ms} ms",
                if silent {
                    "silent loss"
                } else {
                    "carrier loss"
                }
            ),
            Case::Ecmp => "kernel ECMP, ignore_routes_with_linkdown, carrier loss".into(),
        }
    }

    /// The on-link case whose gap an off-link case should match.
    fn on_link(self) -> Option<Case> {
        match self {
            Case::OffLink { silent: false, .. } => Some(Case::CarrierLoss),
            Case::OffLink {
                silent: true,
                fdt_ms,
            } => Some(Case::SilentLoss { fdt_ms }),
            _ => None,
        }
    }
}

/// One arrival of the stream: the kernel's receive time (CLOCK_REALTIME, the clock mpathd's
/// log uses), the NIC it came in on, when it was sent (the sender's CLOCK_REALTIME, in its
/// payload: the same clock where both ends are on one machine) and its number in the stream,
/// which tells the packets lost from those only sent late.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Arrival {
    at_ns: i64,
    ifindex: u32,
    sent_ns: i64,
    seq: u64,
}

/// The stream's interruption by one failure: from the last packet through the failed NIC to
/// the first through another one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Gap {
    start_ns: i64,
    end_ns: i64,
    /// The largest interval between arrivals before the failure: the stream's own jitter.
    calm_max_ns: i64,
}

impl Gap {
    fn find(arrivals: &[Arrival], failed: u32) -> Option<Gap> {
        let last = arrivals.iter().rposition(|a| a.ifindex == failed)?;
        let next = arrivals.get(last + 1)?;
        let calm_max_ns = arrivals[..=last]
            .windows(2)
            .map(|w| w[1].at_ns - w[0].at_ns)
            .max()
            .unwrap_or(0);
        Some(Gap {
            start_ns: arrivals[last].at_ns,
            end_ns: next.at_ns,
            calm_max_ns,
        })
    }

    /// For a stream whose arrivals all come in on one NIC (off-link: through the router):
    /// the largest interval between arrivals that ends after the failure at `failed_ns`.
    fn across(arrivals: &[Arrival], failed_ns: i64) -> Option<Gap> {
        let interval = |w: &[Arrival]| w[1].at_ns - w[0].at_ns;
        let calm_max_ns = arrivals
            .windows(2)
            .filter(|w| w[1].at_ns <= failed_ns)
            .map(interval)
            .max()
            .unwrap_or(0);
        let gap = arrivals
            .windows(2)
            .filter(|w| w[1].at_ns > failed_ns)
            .max_by_key(|w| interval(w))?;
        Some(Gap {
            start_ns: gap[0].at_ns,
            end_ns: gap[1].at_ns,
            calm_max_ns,
        })
    }
}

/// When mpathd logged each step of one failover (ns since the epoch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Milestones {
    detected_ns: i64,
    table_written_ns: i64,
    failed_over_ns: i64,
}

impl Milestones {
    /// The first failover of `nic` in `log`: its "NIC failure detected" line, then the
    /// "Successfully failed over" line after it (mpathd moves addresses first), then the
    /// bucket table rewrite after that.
    fn find(log: &str, nic: &str) -> anyhow::Result<Milestones> {
        let detected = format!("NIC failure detected on {nic} ");
        let failed_over = format!("Successfully failed over from NIC {nic} ");
        let mut lines = log.lines().map(strip_ansi);
        let mut next = |needle: &str| -> anyhow::Result<i64> {
            let line = lines
                .find(|l| l.contains(needle))
                .with_context(|| format!("no {needle:?} line in mpathd's log:\n{log}"))?;
            log_time_ns(&line)
                .with_context(|| format!("no timestamp on mpathd's log line {line:?}"))
        };
        let detected_ns = next(&detected)?;
        let failed_over_ns = next(&failed_over)?;
        let table_written_ns = next(" buckets moved, ")?;
        Ok(Milestones {
            detected_ns,
            table_written_ns,
            failed_over_ns,
        })
    }
}

/// tracing's terminal colours, which it writes to files too.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters... final byte in @..~
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// One failure: the traffic gap and, under mpathd, its parts (ms).
#[derive(Clone, Copy, Debug)]
struct Rep {
    gap_ms: f64,
    calm_max_ms: f64,
    split: Option<Split>,
}

/// The gap is detection + traffic back. mpathd moves the addresses first (logged once all are
/// added, removed and announced) and rewrites the bucket table after; the first address and
/// its announcement bring the inbound traffic back, usually before the log line.
#[derive(Clone, Copy, Debug)]
struct Split {
    /// Gap start (the failure) to "NIC failure detected".
    detection_ms: f64,
    /// Detection to the first packet on the new NIC (address added, gratuitous ARP sent, the
    /// router's neighbour entry updated).
    traffic_back_ms: f64,
    /// Detection to "Successfully failed over".
    address_move_ms: f64,
    /// "Successfully failed over" to the bucket table rewritten (outbound flows of the
    /// failed NIC move then).
    rewrite_ms: f64,
}

fn ms(ns: i64) -> f64 {
    ns as f64 / 1e6
}

impl Rep {
    fn new(gap: Gap, milestones: Option<Milestones>) -> Rep {
        Rep {
            gap_ms: ms(gap.end_ns - gap.start_ns),
            calm_max_ms: ms(gap.calm_max_ns),
            split: milestones.map(|m| Split {
                detection_ms: ms(m.detected_ns - gap.start_ns),
                traffic_back_ms: ms(gap.end_ns - m.detected_ns),
                address_move_ms: ms(m.failed_over_ns - m.detected_ns),
                rewrite_ms: ms(m.table_written_ns - m.failed_over_ns),
            }),
        }
    }

    fn describe(&self) -> String {
        let mut s = format!("gap {:.2} ms", self.gap_ms);
        if let Some(p) = self.split {
            let _ = write!(
                s,
                " = detection {:.2} + traffic back {:.2}; address move {:.2}, then table {:.3}",
                p.detection_ms, p.traffic_back_ms, p.address_move_ms, p.rewrite_ms
            );
        }
        s
    }
}

/// Nearest-rank percentile of `values` (0 < p <= 100).
fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A UDP packet every `spacing` from one namespace to an address in another, every arrival
/// recorded. Stopped on drop.
struct Stream {
    stop: Arc<AtomicBool>,
    arrivals: Arc<Mutex<Vec<Arrival>>>,
    threads: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl Stream {
    fn start(
        from: &Netns,
        source: Ipv4Addr,
        to: &Netns,
        destination: Ipv4Addr,
        spacing: Duration,
    ) -> anyhow::Result<Stream> {
        let receiver = {
            let _inside = to.enter()?;
            UdpSocket::bind((Ipv4Addr::UNSPECIFIED, STREAM_PORT)).context("stream receiver")?
        };
        receiver.set_read_timeout(Some(Duration::from_millis(50)))?;
        set_flag(&receiver, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS)?;
        set_flag(&receiver, libc::IPPROTO_IP, libc::IP_PKTINFO)?;
        let sender = {
            let _inside = from.enter()?;
            UdpSocket::bind((source, 0)).context("stream sender")?
        };
        let stop = Arc::new(AtomicBool::new(false));
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let receiving = {
            let (stop, arrivals) = (stop.clone(), arrivals.clone());
            std::thread::spawn(move || receive(&receiver, &stop, &arrivals))
        };
        let sending = {
            let stop = stop.clone();
            let to = SocketAddrV4::new(destination, STREAM_PORT);
            std::thread::spawn(move || send_steadily(&sender, to, spacing, &stop))
        };
        Ok(Stream {
            stop,
            arrivals,
            threads: vec![receiving, sending],
        })
    }

    /// Removes and returns what arrived so far.
    fn take(&self) -> Vec<Arrival> {
        std::mem::take(&mut *self.arrivals.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn latest(&self) -> Option<Arrival> {
        self.arrivals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last()
            .copied()
    }

    /// Waits until the latest packet came in on a NIC for which `wanted` holds.
    fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        wanted: impl Fn(u32) -> bool,
    ) -> anyhow::Result<u32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(a) = self.latest().filter(|a| wanted(a.ifindex)) {
                return Ok(a.ifindex);
            }
            if Instant::now() > deadline {
                bail!(
                    "timed out after {timeout:?} waiting for {what} (latest arrival: {:?})",
                    self.latest()
                );
            }
            if self.threads.iter().any(JoinHandle::is_finished) {
                bail!("the stream stopped while waiting for {what}");
            }
            sleep(Duration::from_millis(2));
        }
    }

    /// Stops the stream, reporting an error of its threads.
    fn finish(mut self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        for t in std::mem::take(&mut self.threads) {
            t.join()
                .map_err(|_panic| anyhow::anyhow!("a stream thread panicked"))??;
        }
        Ok(())
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in std::mem::take(&mut self.threads) {
            let _: Result<_, _> = t.join();
        }
    }
}

fn set_flag(socket: &UdpSocket, level: libc::c_int, option: libc::c_int) -> anyhow::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads an int from a pointer that lives across the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            option,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as u32,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .context(format!("setsockopt {level}/{option}"));
    }
    Ok(())
}

/// Sends one small packet every `spacing` on an absolute schedule until `stop`.
fn send_steadily(
    socket: &UdpSocket,
    to: SocketAddrV4,
    spacing: Duration,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    // Timer slack (50 µs by default) would be a quarter of the spacing, and a busy machine
    // would delay a normal thread by milliseconds: real-time priority for a thread that
    // sleeps nearly all the time.
    // SAFETY: prctl and sched_setscheduler (0 = this thread) with plain arguments.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1u64);
        let param = libc::sched_param { sched_priority: 10 };
        if libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) != 0 {
            eprintln!(
                "stream sender stays at normal priority: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    let mut payload = [0u8; 16];
    let mut next = Instant::now();
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        payload[..8].copy_from_slice(&realtime_ns().to_ne_bytes());
        payload[8..].copy_from_slice(&seq.to_ne_bytes());
        seq += 1;
        // While no route leads anywhere (an ECMP route with every next hop down), sends fail:
        // that is part of the gap being measured, not an error of the stream.
        let _: Result<_, _> = socket.send_to(&payload, to);
        next += spacing;
        let now = Instant::now();
        if next > now {
            sleep(next - now);
        } else if now - next > spacing * 10 {
            // Descheduled for a while: resume the schedule instead of sending a burst.
            next = now;
        }
    }
    Ok(())
}

/// Records each packet's kernel receive time and arrival NIC until `stop`.
fn receive(
    socket: &UdpSocket,
    stop: &AtomicBool,
    arrivals: &Mutex<Vec<Arrival>>,
) -> anyhow::Result<()> {
    let mut buf = [0u8; 64];
    // u64s for cmsghdr alignment.
    let mut control = [0u64; 32];
    while !stop.load(Ordering::Relaxed) {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: msghdr is plain data; its pointers are set to buffers that outlive recvmsg.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of_val(&control);
        // SAFETY: `msg` describes valid buffers.
        let length = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, 0) };
        if length < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN | libc::EINTR) => continue,
                _ => return Err(e).context("receiving the stream"),
            }
        }
        if length < 16 {
            bail!("a stream packet of {length} bytes carries no send time and number");
        }
        let sent_ns = i64::from_ne_bytes(buf[..8].try_into()?);
        let seq = u64::from_ne_bytes(buf[8..16].try_into()?);
        let (mut at_ns, mut ifindex) = (None, None);
        // SAFETY: the CMSG_* macros walk the control buffer the kernel filled, within
        // msg_controllen; the payloads are read unaligned.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                let data = libc::CMSG_DATA(cmsg);
                match ((*cmsg).cmsg_level, (*cmsg).cmsg_type) {
                    (libc::SOL_SOCKET, libc::SO_TIMESTAMPNS) => {
                        let ts: libc::timespec = std::ptr::read_unaligned(data.cast());
                        at_ns = Some(ts.tv_sec * 1_000_000_000 + ts.tv_nsec);
                    }
                    (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                        let info: libc::in_pktinfo = std::ptr::read_unaligned(data.cast());
                        ifindex = Some(info.ipi_ifindex as u32);
                    }
                    _ => {}
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        let (Some(at_ns), Some(ifindex)) = (at_ns, ifindex) else {
            bail!("a stream packet came without receive time or arrival NIC");
        };
        arrivals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arrival {
                at_ns,
                ifindex,
                sent_ns,
                seq,
            });
    }
    Ok(())
}

/// Every NIC ok and the stream's address back on the NIC that fails: failback is done.
fn settled(daemon: &Mpathd) -> bool {
    daemon.try_status().is_some_and(|s| {
        ["h0", "h1", "h2"]
            .iter()
            .all(|n| state_of(&s, n) == Some(InterfaceStatus::Ok))
            && inbound(&s, DATA_CIDR) == Some(FAILING_NIC)
    })
}

/// How long a failover may take before the repetition counts as broken.
fn failover_timeout(fdt_ms: u64) -> Duration {
    Duration::from_millis(3 * fdt_ms) + Duration::from_secs(5)
}

/// `reps` failures of h0 under mpathd at `fdt_ms`, h0 restored and failed back between
/// them: cut when `case` is carrier loss, silently dropped otherwise.
fn mpathd_case(case: Case, fdt_ms: u64, reps: u64) -> anyhow::Result<Vec<Rep>> {
    let lab = Lab::builder().nics(3).build()?;
    let mut daemon = Mpathd::start(lab.host(), &three_nic_config(fdt_ms));
    daemon.wait_until("all NICs ok, the address on h0", settled);
    let home = lab.host().ifindex(FAILING_NIC)?;
    let stream = Stream::start(
        lab.router(),
        ROUTER_V4.parse()?,
        lab.host(),
        DATA_V4,
        STREAM_SPACING,
    )?;
    stream.wait_for("the stream on h0", Duration::from_secs(5), |i| i == home)?;
    let mut results = Vec::new();
    for rep in 1..=reps {
        let log_start = daemon.log().len();
        stream.take();
        sleep(CALM);
        if case == Case::CarrierLoss {
            lab.cut(FAILING_NIC)?;
        } else {
            lab.drop_silently(FAILING_NIC)?;
        }
        stream.wait_for("the stream to move off h0", failover_timeout(fdt_ms), |i| {
            i != home
        })?;
        sleep(CALM);
        let arrivals = stream.take();
        let log = daemon.log();
        let gap = Gap::find(&arrivals, home).context("the stream never left h0")?;
        let result = Rep::new(gap, Some(Milestones::find(&log[log_start..], FAILING_NIC)?));
        eprintln!("{} {rep}/{reps}: {}", case.label(), result.describe());
        results.push(result);

        if case == Case::CarrierLoss {
            lab.restore(FAILING_NIC)?;
        } else {
            lab.undrop(FAILING_NIC)?;
        }
        daemon.wait_until("h0 repaired and failed back", settled);
        stream.wait_for("the stream back on h0", Duration::from_secs(5), |i| {
            i == home
        })?;
    }
    stream.finish()?;
    Ok(results)
}

/// The NIC the off-link cases' default route names, as a DHCP client on it would set it.
const OFF_LINK_NIC: &str = "h1";
/// h1's data address in [`three_nic_config`].
const OFF_LINK_DATA: &str = "192.0.2.20/24";

/// The current CLOCK_REALTIME in ns, the clock of the stream's arrivals and mpathd's log.
fn realtime_ns() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    now.as_nanos() as i64
}

/// Every NIC ok, h1's data address back on it and mpathd serving the default route through
/// a nexthop group.
fn off_link_settled(lab: &Lab, daemon: &Mpathd) -> bool {
    let served = lab
        .host()
        .ip(&["route", "show", "table", &DEFAULT_ROUTE_TABLE.to_string()])
        .is_ok_and(|t| t.lines().any(|l| l.starts_with("default nhid")));
    served
        && daemon.try_status().is_some_and(|s| {
            ["h0", "h1", "h2"]
                .iter()
                .all(|n| state_of(&s, n) == Some(InterfaceStatus::Ok))
                && inbound(&s, OFF_LINK_DATA) == Some(OFF_LINK_NIC)
        })
}

/// Starts a stream from the host (source chosen by the routes) to the network behind the
/// router whose flow leaves through h1: each new stream has a new source port and so a new
/// hash; `h1_packets` (a counter of the packets h1 sent the router) tells which NIC carries
/// it. Probes are a few packets a second, far under the 40 % of the stream asked for.
fn stream_through_h1(
    host: &Netns,
    router: &Netns,
    spacing: Duration,
    h1_packets: impl Fn() -> anyhow::Result<u64>,
) -> anyhow::Result<Stream> {
    const WINDOW: Duration = Duration::from_millis(200);
    let destination: Ipv4Addr = BEHIND_ROUTER_V4.parse()?;
    let wanted = (WINDOW.as_nanos() / spacing.as_nanos()) as u64 * 2 / 5;
    for _ in 0..50 {
        let stream = Stream::start(host, Ipv4Addr::UNSPECIFIED, router, destination, spacing)?;
        stream.wait_for("the off-link stream", Duration::from_secs(5), |_| true)?;
        let before = h1_packets()?;
        sleep(WINDOW);
        if h1_packets()? - before >= wanted {
            return Ok(stream);
        }
        stream.finish()?;
    }
    bail!("no stream of 50 hashed onto h1")
}

/// The off-link lab's routing before mpathd starts: h1's data address and a default route
/// `via 192.0.2.1 dev h1 proto dhcp metric 100`, as a DHCP client on h1 would set it.
fn off_link_routes(lab: &Lab) -> anyhow::Result<()> {
    lab.add_host_addr(OFF_LINK_NIC, OFF_LINK_DATA)?;
    lab.host().ip(&[
        "route",
        "add",
        "default",
        "via",
        ROUTER_V4,
        "dev",
        OFF_LINK_NIC,
        "proto",
        "dhcp",
        "metric",
        "100",
    ])?;
    Ok(())
}

/// `reps` failures of h1, the NIC the default route named, under mpathd at `fdt_ms` while
/// a stream goes through the gateway on h1; h1 restored and failed back between them.
fn off_link_case(case: Case, reps: u64) -> anyhow::Result<Vec<Rep>> {
    let Case::OffLink { silent, fdt_ms } = case else {
        bail!("{case:?} is no off-link case");
    };
    let lab = Lab::builder().nics(3).behind_router().build()?;
    off_link_routes(&lab)?;
    let mut daemon = Mpathd::start(lab.host(), &three_nic_config(fdt_ms));
    daemon.wait_until("all NICs ok, the default route served", |d| {
        off_link_settled(&lab, d)
    });
    let mut results = Vec::new();
    for rep in 1..=reps {
        let result = off_link_failover(&lab, &daemon, silent, failover_timeout(fdt_ms))?
            .with_context(|| {
                format!(
                    "{}: the stream did not come back:\n{}",
                    case.label(),
                    daemon.log()
                )
            })?;
        if silent && result.split.is_none() {
            bail!(
                "{}: mpathd's log has no failover of {OFF_LINK_NIC}:\n{}",
                case.label(),
                daemon.log()
            );
        }
        eprintln!("{} {rep}/{reps}: {}", case.label(), result.describe());
        results.push(result);
        undo_failure(&lab, silent)?;
        daemon.wait_until("h1 repaired and failed back", |d| off_link_settled(&lab, d));
    }
    Ok(results)
}

/// Undoes the failure of h1 that [`off_link_failover`] made.
fn undo_failure(lab: &Lab, silent: bool) -> anyhow::Result<()> {
    if silent {
        lab.undrop(OFF_LINK_NIC)
    } else {
        lab.restore(OFF_LINK_NIC)
    }
}

/// One failure of h1 (its frames dropped when `silent`, else its carrier cut) while a stream
/// from the host goes through the gateway on h1; h1 stays failed ([`undo_failure`] restores
/// it). Waits up to `timeout` for the stream to come back after mpathd logged the failure,
/// and checks that it then leaves through h0 or h2. `None`: no stream came back within
/// `timeout`. With the failure logged the silent case is split by the log; without it (a
/// busy mpathd that logged it late, while the kernel had already moved a carrier loss's
/// flows) the gap is still that of the stream.
fn off_link_failover(
    lab: &Lab,
    daemon: &Mpathd,
    silent: bool,
    timeout: Duration,
) -> anyhow::Result<Option<Rep>> {
    let detected = format!("NIC failure detected on {OFF_LINK_NIC} ");
    let stream = stream_through_h1(lab.host(), lab.router(), STREAM_SPACING, || {
        lab.switch_port_rx_packets(OFF_LINK_NIC)
    })?;
    let log_start = daemon.log().len();
    stream.take();
    sleep(CALM);
    let failed_ns = realtime_ns();
    if silent {
        lab.drop_silently(OFF_LINK_NIC)?;
    } else {
        lab.cut(OFF_LINK_NIC)?;
    }
    // Back once a packet arrived after mpathd detected the failure.
    let deadline = Instant::now() + timeout;
    let mut logged = false;
    while Instant::now() < deadline {
        let log = daemon.log();
        let detected_ns = log
            .get(log_start..)
            .unwrap_or_default()
            .lines()
            .map(strip_ansi)
            .find(|l| l.contains(&detected))
            .and_then(|l| log_time_ns(&l));
        if let (Some(at), Some(latest)) = (detected_ns, stream.latest())
            && latest.at_ns > at
        {
            logged = true;
            break;
        }
        sleep(Duration::from_millis(2));
    }
    sleep(CALM);
    // Flowing: the latest packet is recent, not one from before the failure.
    let flowing = stream
        .latest()
        .is_some_and(|a| realtime_ns() - a.at_ns < ms_ns(50) && a.at_ns > failed_ns);
    let moved = flowing && carried_by_others(lab)?;
    let arrivals = stream.take();
    stream.finish()?;
    if !flowing {
        return Ok(None);
    }
    if !moved {
        bail!("the stream came back after {OFF_LINK_NIC} failed, but not through h0 or h2");
    }
    let log = daemon.log();
    let gap = Gap::across(&arrivals, failed_ns).context("no arrivals after the failure")?;
    // On carrier loss the kernel itself drops h1's nexthops from the group, before
    // mpathd hears of it: the gap is the stream's jitter, and the log cannot split it.
    let milestones = if silent && logged {
        Milestones::find(log.get(log_start..).unwrap_or_default(), OFF_LINK_NIC).ok()
    } else {
        None
    };
    Ok(Some(Rep::new(gap, milestones)))
}

/// Whether the off-link stream (a packet every [`STREAM_SPACING`]) leaves through h0 or h2,
/// as their switch ports' counters show over 50 ms.
fn carried_by_others(lab: &Lab) -> anyhow::Result<bool> {
    let others = ["h0", "h2"];
    let count = |lab: &Lab| -> anyhow::Result<u64> {
        others
            .iter()
            .map(|nic| lab.switch_port_rx_packets(nic))
            .sum()
    };
    let before = count(lab)?;
    sleep(Duration::from_millis(50));
    // 250 packets of the stream in 50 ms; probes are a few.
    Ok(count(lab)? - before >= 100)
}

fn ms_ns(ms: i64) -> i64 {
    ms * 1_000_000
}

/// Turns the switch namespace into a router with a point-to-point link to each host NIC and
/// an ECMP route to [`ECMP_DATA`] (on the host's loopback) via each NIC's own address. With
/// the bridge in between, a router would never see a host NIC's carrier.
fn ecmp_lab() -> anyhow::Result<Lab> {
    let lab = Lab::builder().nics(ECMP_NICS).build()?;
    let (router, host) = (lab.switch(), lab.host());
    let mut sysctls = vec![
        "net.ipv4.conf.all.ignore_routes_with_linkdown=1".to_string(),
        "net.ipv4.conf.default.ignore_routes_with_linkdown=1".to_string(),
    ];
    let mut route = vec!["route", "add", "198.51.100.19/32"];
    let mut hops = Vec::new();
    for (i, nic) in lab.nics().iter().enumerate() {
        let port = lab.switch_port(nic)?;
        router.ip(&["link", "set", &port, "nomaster"])?;
        router.ip(&[
            "addr",
            "add",
            &format!("203.0.113.{}/30", 4 * i + 1),
            "dev",
            &port,
        ])?;
        host.ip(&[
            "addr",
            "add",
            &format!("203.0.113.{}/30", 4 * i + 2),
            "dev",
            nic,
        ])?;
        sysctls.push(format!(
            "net.ipv4.conf.{port}.ignore_routes_with_linkdown=1"
        ));
        host.run(&["sysctl", "-qw", &format!("net.ipv4.conf.{nic}.rp_filter=0")])?;
        hops.push((format!("203.0.113.{}", 4 * i + 2), port));
    }
    for (via, port) in &hops {
        route.extend(["nexthop", "via", via.as_str(), "dev", port.as_str()]);
    }
    let mut args = vec!["sysctl", "-qw"];
    args.extend(sysctls.iter().map(String::as_str));
    router.run(&args)?;
    // The stream arrives on one NIC for an address of the loopback, from a source the host
    // has no route back to: no reverse-path filtering.
    host.run(&[
        "sysctl",
        "-qw",
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.lo.rp_filter=0",
    ])?;
    router.ip(&["addr", "add", &format!("{ECMP_SOURCE}/32"), "dev", "lo"])?;
    host.ip(&["addr", "add", &format!("{ECMP_DATA}/32"), "dev", "lo"])?;
    router.ip(&route)?;
    Ok(lab)
}

/// `reps` carrier losses of the ECMP next hop carrying the stream, without mpathd.
fn ecmp_case(reps: u64) -> anyhow::Result<Vec<Rep>> {
    let lab = ecmp_lab()?;
    let (router, host) = (lab.switch(), lab.host());
    let nics: BTreeMap<u32, String> = lab
        .nics()
        .into_iter()
        .map(|n| Ok((host.ifindex(&n)?, n)))
        .collect::<anyhow::Result<_>>()?;
    let stream = Stream::start(router, ECMP_SOURCE, host, ECMP_DATA, STREAM_SPACING)?;
    let mut results = Vec::new();
    for rep in 1..=reps {
        // Both next hops' neighbours resolved, as on a router that carries many flows.
        for i in 0..ECMP_NICS {
            router.run(&["ping", "-c1", "-W1", &format!("203.0.113.{}", 4 * i + 2)])?;
        }
        let carrying = stream.wait_for("the stream", Duration::from_secs(5), |_| true)?;
        let nic = &nics[&carrying];
        let port = lab.switch_port(nic)?;
        stream.take();
        sleep(CALM);
        // Down at the host's end, so the router's end of the link loses carrier while it
        // stays administratively up: what ignore_routes_with_linkdown is for.
        host.ip(&["link", "set", nic, "down"])?;
        stream.wait_for(
            "the stream to move to the other next hop",
            Duration::from_secs(10),
            |i| i != carrying,
        )?;
        sleep(CALM);
        let arrivals = stream.take();
        let gap = Gap::find(&arrivals, carrying).context("the stream never left its NIC")?;
        let result = Rep::new(gap, None);
        eprintln!("{} {rep}/{reps}: {}", Case::Ecmp.label(), result.describe());
        results.push(result);

        host.ip(&["link", "set", nic, "up"])?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while !router.has_carrier(&port)? {
            if Instant::now() > deadline {
                bail!("{port} did not get its carrier back");
            }
            sleep(Duration::from_millis(5));
        }
        stream.wait_for(
            "the stream back on its next hop",
            Duration::from_secs(5),
            |i| i == carrying,
        )?;
    }
    stream.finish()?;
    Ok(results)
}

/// What the false-failure run saw.
struct FalseFailures {
    minutes: u64,
    /// Per active NIC: packets/s it sent to the switch and received from it.
    nics: Vec<(String, f64, f64)>,
    failures: usize,
    other_warnings: Vec<String>,
}

/// The active NICs the saturating traffic runs over.
const LOADED_NICS: [&str; 2] = ["h0", "h1"];

/// Packets each of `nics` put on the wire and took off it so far.
fn wire_counters(lab: &Lab, nics: &[impl AsRef<str>]) -> anyhow::Result<Vec<(u64, u64)>> {
    nics.iter()
        .map(|nic| {
            let nic = nic.as_ref();
            let counter = format!("/sys/class/net/{nic}/statistics/rx_packets");
            let received = lab.host().run(&["cat", &counter])?;
            let received = received
                .trim()
                .parse()
                .with_context(|| format!("bad counter in {counter}: {received:?}"))?;
            Ok((lab.switch_port_rx_packets(nic)?, received))
        })
        .collect()
}

/// As much UDP as the machine can send for `duration`, both ways between the router and the
/// host's `data` addresses: inbound to each, outbound from each (spread over the group's
/// NICs by mpathd).
fn saturate(lab: &Lab, data: [Ipv4Addr; 2], duration: Duration) -> anyhow::Result<()> {
    let router_v4: Ipv4Addr = ROUTER_V4.parse()?;
    // Receivers that never read: the kernel drops what overflows, no ICMP errors.
    let sinks = |ns: &Netns| -> anyhow::Result<Vec<UdpSocket>> {
        let _inside = ns.enter()?;
        (0..SATURATING_FLOWS)
            .map(|i| Ok(UdpSocket::bind((Ipv4Addr::UNSPECIFIED, FIRST_PORT + i))?))
            .collect()
    };
    let _sinks = (sinks(lab.host())?, sinks(lab.router())?);
    let flows_to = |ip: Ipv4Addr| -> Vec<SocketAddrV4> {
        (0..SATURATING_FLOWS)
            .map(|i| SocketAddrV4::new(ip, FIRST_PORT + i))
            .collect()
    };
    let mut senders = Vec::new();
    for address in data {
        let inbound = {
            let _inside = lab.router().enter()?;
            UdpSocket::bind((router_v4, 0))?
        };
        senders.push((inbound, flows_to(address)));
        let outbound = {
            let _inside = lab.host().enter()?;
            UdpSocket::bind((address, 0))?
        };
        senders.push((outbound, flows_to(router_v4)));
    }
    let threads: Vec<_> = senders
        .into_iter()
        .map(|(socket, flows)| std::thread::spawn(move || blast(&socket, &flows, duration)))
        .collect();
    for t in threads {
        t.join()
            .map_err(|_panic| anyhow::anyhow!("a sender panicked"))??;
    }
    Ok(())
}

/// mpathd at FDT 1000 ms for `minutes` while both active NICs carry as much UDP as the
/// machine can send in both directions; counts the failures it detects (none is right).
fn false_failures(minutes: u64) -> anyhow::Result<FalseFailures> {
    let lab = Lab::builder().nics(3).build()?;
    let mut daemon = Mpathd::start(lab.host(), &three_nic_config(1000));
    daemon.wait_until("all NICs ok, the address on h0", settled);
    let log_start = daemon.log().len();
    let duration = Duration::from_secs(minutes * 60);
    eprintln!(
        "false-failure run: {minutes} min of saturating UDP both ways over h0 and h1, FDT 1000 ms"
    );
    let before = wire_counters(&lab, &LOADED_NICS)?;
    saturate(&lab, [DATA_V4, Ipv4Addr::new(192, 0, 2, 20)], duration)?;
    let after = wire_counters(&lab, &LOADED_NICS)?;
    let seconds = duration.as_secs_f64();
    let nics = LOADED_NICS
        .iter()
        .zip(before.iter().zip(&after))
        .map(|(nic, ((sent0, received0), (sent1, received1)))| {
            (
                nic.to_string(),
                (sent1 - sent0) as f64 / seconds,
                (received1 - received0) as f64 / seconds,
            )
        })
        .collect();
    let log = daemon.log();
    let lines: Vec<String> = log[log_start..].lines().map(strip_ansi).collect();
    let failures = lines
        .iter()
        .filter(|l| l.contains("NIC failure detected"))
        .count();
    let other_warnings = lines
        .iter()
        .filter(|l| {
            (l.contains(" WARN ") || l.contains(" ERROR ")) && !l.contains("NIC failure detected")
        })
        .cloned()
        .collect();
    Ok(FalseFailures {
        minutes,
        nics,
        failures,
        other_warnings,
    })
}

fn failover(reps: u64, false_failure_minutes: u64, out: Option<PathBuf>) -> anyhow::Result<()> {
    let started = Instant::now();
    let load_before = load_average();
    let mut cases = vec![Case::CarrierLoss];
    cases.extend(SILENT_FDTS_MS.map(|fdt_ms| Case::SilentLoss { fdt_ms }));
    for fdt_ms in SILENT_FDTS_MS {
        cases.extend([false, true].map(|silent| Case::OffLink { silent, fdt_ms }));
    }
    cases.push(Case::Ecmp);
    let mut results = Vec::new();
    for case in cases {
        let reps = match case {
            Case::CarrierLoss => mpathd_case(case, CARRIER_FDT_MS, reps)?,
            Case::SilentLoss { fdt_ms } => mpathd_case(case, fdt_ms, reps)?,
            Case::OffLink { .. } => off_link_case(case, reps)?,
            Case::Ecmp => ecmp_case(reps)?,
        };
        results.push((case, reps));
    }
    let false_failures = match false_failure_minutes {
        0 => None,
        m => Some(false_failures(m)?),
    };
    let load_after = load_average();
    let tables = failover_tables(reps, &results, false_failures.as_ref())?;
    println!("{tables}");
    eprintln!(
        "failover benchmark took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    if let Some(path) = out {
        let body = format!(
            "`cargo xtask bench failover`: the lab's router sends a UDP packet every {} ms to a data \
             address of the host; the host timestamps each arrival in the kernel (SO_TIMESTAMPNS) \
             and notes the NIC it came in on (IP_PKTINFO). Each repetition fails the NIC holding \
             the address; the traffic gap runs from the last packet through that NIC to the first \
             through another. mpathd (3 NICs: h0 and h1 active, h2 standby, probe target the \
             router, RUST_LOG=debug) moves the address from h0 to h2; its log, stamped with the same \
             clock, splits the gap into detection (gap start to \"NIC failure detected\") and \
             traffic back (to the first packet on h2: address added, gratuitous ARP out, the \
             router's neighbour entry updated); beside it, the address move as mpathd logs it \
             (detection to \"Successfully failed over\", after every address is added, removed \
             and announced) and the bucket table rewrite that follows it (to \"group g0: N \
             buckets moved\"; outbound flows of the failed NIC move then). The stream's sender runs SCHED_FIFO \
             so that the machine's other work does not open gaps of its own; the largest interval \
             between arrivals before each failure is shown as the stream's jitter. \
             Between repetitions the NIC is restored and the run waits until mpathd has repaired it \
             and failed back. The in-kernel comparison runs without mpathd: the switch namespace \
             becomes a router with a point-to-point link to each of 2 host NICs and an ECMP route to \
             a /32 on the host's loopback via each NIC's own address, with \
             ignore_routes_with_linkdown=1; the host NIC carrying the stream is set down, so the \
             router's end of that link loses carrier (a router behind the lab's bridge would never \
             see a host NIC's carrier). Medians and p95 are nearest-rank over the repetitions; \
             {} CPUs, shared with other work (load average {load_before} before the run, \
             {load_after} after).\n\n\
             **Caveat:** veth carrier changes are \"urgent\" in the kernel's linkwatch and reach \
             netlink and the routing table at once, while a physical NIC's carrier change can take \
             up to a second to be reported: these figures flatter link-based detection, mpathd's \
             carrier-loss case and the ECMP case alike.\n\n\
             Off-link cases: the same 3-NIC lab and configuration with networks behind the router \
             and, before mpathd starts, a default route `via 192.0.2.1 dev h1 proto dhcp metric \
             100` as a DHCP client on h1 would add it (h1 holds the data address 192.0.2.20); \
             mpathd serves it from its own table through a resilient nexthop group over the \
             usable NICs (`spread = \"routes\"`, the default). The host sends the stream (source \
             chosen by the routes) through the gateway to {BEHIND_ROUTER_V4} behind the router; \
             each repetition starts a new stream (a new source port, so a new hash) until one \
             leaves through h1, as the switch port's counter shows, then fails h1. All packets \
             arrive on the router's one NIC, so the gap is the largest interval between arrivals \
             that ends after the failure, up to {} ms after the stream came back: on carrier \
             loss, where the kernel itself removes h1's nexthops from the group (it was seen \
             doing so before mpathd logged the failure), that is about the stream's own jitter \
             (an upper bound of the gap), and mpathd's log does not split it. The target compares each off-link case with the \
             on-link case of the same fault (and FDT).\n\n{tables}",
            STREAM_SPACING.as_secs_f64() * 1e3,
            cpus(),
            CALM.as_millis(),
        );
        write_section(&path, "Benchmark: failover", &body)?;
        eprintln!("written to {}", path.display());
    }
    Ok(())
}

fn failover_tables(
    reps: u64,
    results: &[(Case, Vec<Rep>)],
    false_failures: Option<&FalseFailures>,
) -> anyhow::Result<String> {
    let stat = |values: Vec<f64>| (percentile(&values, 50.0), percentile(&values, 95.0));
    let mut t = String::new();
    writeln!(t, "Traffic gap, {reps} repetitions per case (ms):\n")?;
    writeln!(
        t,
        "| case | median | p95 | max | stream jitter before the failure (p95 of per-repetition max) |"
    )?;
    writeln!(t, "| --- | ---: | ---: | ---: | ---: |")?;
    for (case, reps) in results {
        let gaps: Vec<f64> = reps.iter().map(|r| r.gap_ms).collect();
        let (median, p95) = stat(gaps.clone());
        let jitter = percentile(
            &reps.iter().map(|r| r.calm_max_ms).collect::<Vec<_>>(),
            95.0,
        );
        writeln!(
            t,
            "| {} | {median:.2} | {p95:.2} | {:.2} | {jitter:.2} |",
            case.label(),
            percentile(&gaps, 100.0)
        )?;
    }
    writeln!(t, "\nmpathd's gaps split by its log, median / p95 (ms):\n")?;
    writeln!(
        t,
        "| case | detection | traffic back | address move (logged) | then map rewrite |"
    )?;
    writeln!(t, "| --- | ---: | ---: | ---: | ---: |")?;
    for (case, reps) in results {
        let splits: Vec<Split> = reps.iter().filter_map(|r| r.split).collect();
        if splits.is_empty() {
            continue;
        }
        let cell = |f: fn(&Split) -> f64| {
            let (m, p) = stat(splits.iter().map(f).collect());
            format!("{m:.3} / {p:.3}")
        };
        writeln!(
            t,
            "| {} | {} | {} | {} | {} |",
            case.label(),
            cell(|s| s.detection_ms),
            cell(|s| s.traffic_back_ms),
            cell(|s| s.address_move_ms),
            cell(|s| s.rewrite_ms),
        )?;
    }
    writeln!(t, "\nTargets:\n")?;
    writeln!(t, "| target | measured | met |")?;
    writeln!(t, "| --- | --- | --- |")?;
    for (case, reps) in results {
        match *case {
            Case::CarrierLoss => {
                let median = percentile(&reps.iter().map(|r| r.gap_ms).collect::<Vec<_>>(), 50.0);
                writeln!(
                    t,
                    "| carrier-loss gap under 10 ms median | {median:.2} ms | {} |",
                    yes(median < 10.0)
                )?;
            }
            Case::SilentLoss { fdt_ms } => {
                let interval = fdt_ms as f64 / PROBE_INTERVALS_PER_FDT as f64;
                let bound = fdt_ms as f64 + interval;
                let detections: Vec<f64> = reps
                    .iter()
                    .filter_map(|r| r.split)
                    .map(|s| s.detection_ms)
                    .collect();
                let within = detections.iter().filter(|&&d| d <= bound).count();
                writeln!(
                    t,
                    "| silent loss at FDT {fdt_ms} ms detected within FDT + one probe interval ({bound:.1} ms) | \
                     median {:.1} ms, p95 {:.1} ms, max {:.1} ms; {within} of {} within | {} |",
                    percentile(&detections, 50.0),
                    percentile(&detections, 95.0),
                    percentile(&detections, 100.0),
                    detections.len(),
                    yes(within == detections.len()),
                )?;
            }
            Case::OffLink { .. } => {
                let Some((on, on_reps)) = case
                    .on_link()
                    .and_then(|on| results.iter().find(|(c, _)| *c == on))
                else {
                    continue;
                };
                let median = |reps: &[Rep]| {
                    percentile(&reps.iter().map(|r| r.gap_ms).collect::<Vec<_>>(), 50.0)
                };
                let (off_ms, on_ms) = (median(reps), median(on_reps));
                writeln!(
                    t,
                    "| {}: the gap of the on-link case ({}), median within 20 % + 1 ms | \
                     median {off_ms:.2} ms against {on_ms:.2} ms | {} |",
                    case.label(),
                    on.label(),
                    yes(off_ms <= on_ms * 1.2 + 1.0)
                )?;
            }
            Case::Ecmp => {}
        }
    }
    match false_failures {
        Some(f) => {
            let load: Vec<String> = f
                .nics
                .iter()
                .map(|(nic, sent, received)| {
                    format!("{nic} {sent:.0} packets/s out, {received:.0} in")
                })
                .collect();
            writeln!(
                t,
                "| no false failure in 10 minutes at FDT 1000 ms under saturating traffic | \
                 {} failures in {} min ({}) | {} |",
                f.failures,
                f.minutes,
                load.join("; "),
                if f.minutes < 10 {
                    format!("{} (shorter run)", yes(f.failures == 0))
                } else {
                    yes(f.failures == 0).to_string()
                },
            )?;
            for w in &f.other_warnings {
                writeln!(t, "\nmpathd warned during the run: `{w}`")?;
            }
        }
        None => writeln!(
            t,
            "| no false failure in 10 minutes at FDT 1000 ms under saturating traffic | not run \
             (`--false-failure-minutes 10`) | |"
        )?,
    }
    Ok(t)
}

/// The 1-minute load average, for the reader to judge how busy the machine was.
fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

fn yes(ok: bool) -> &'static str {
    if ok { "yes" } else { "no" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_are_stripped_before_parsing() {
        let line =
            "\u{1b}[2m2026-11-23T11:40:01.000002Z\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m NIC failure";
        assert_eq!(
            strip_ansi(line),
            "2026-11-23T11:40:01.000002Z  WARN NIC failure"
        );
    }

    #[test]
    fn milestones_are_the_first_failover_of_the_nic_in_order() {
        let log = "\
2026-11-23T11:40:00.000000Z DEBUG group g0: 0 buckets moved, 2 usable NICs
2026-11-23T11:40:01.000100Z  WARN NIC failure detected on h1 of group g0
2026-11-23T11:40:01.001000Z  WARN NIC failure detected on h0 of group g0
2026-11-23T11:40:01.001400Z  INFO Successfully failed over from NIC h1 to NIC h2
2026-11-23T11:40:01.001500Z  INFO Successfully failed over from NIC h0 to NIC h2
2026-11-23T11:40:01.001550Z DEBUG group g0: 128 buckets moved, 2 usable NICs
";
        let m = Milestones::find(log, "h0").unwrap();
        let base = log_time_ns("2026-11-23T11:40:01.000000Z").unwrap();
        assert_eq!(m.detected_ns - base, 1_000_000);
        assert_eq!(m.failed_over_ns - base, 1_500_000);
        assert_eq!(m.table_written_ns - base, 1_550_000);
        assert!(Milestones::find(log, "h2").is_err());
    }

    #[test]
    fn the_gap_runs_from_the_last_packet_on_the_failed_nic_to_the_next() {
        let a = |at_ns, ifindex| Arrival {
            at_ns,
            ifindex,
            sent_ns: at_ns,
            seq: 0,
        };
        let arrivals = [
            a(0, 2),
            a(200, 2),
            a(900, 2),
            a(1000, 2),
            a(9000, 4),
            a(9200, 4),
        ];
        let gap = Gap::find(&arrivals, 2).unwrap();
        assert_eq!(
            (gap.start_ns, gap.end_ns, gap.calm_max_ns),
            (1000, 9000, 700)
        );
        assert_eq!(Gap::find(&arrivals, 7), None);
        assert_eq!(Gap::find(&arrivals[..4], 2), None, "never moved");
    }

    #[test]
    fn an_off_link_gap_is_the_largest_interval_ending_after_the_failure() {
        let a = |at_ns| Arrival {
            at_ns,
            ifindex: 9,
            sent_ns: at_ns,
            seq: 0,
        };
        let arrivals = [a(0), a(700), a(900), a(1000), a(5000), a(5200), a(5300)];
        let gap = Gap::across(&arrivals, 950).unwrap();
        assert_eq!(
            (gap.start_ns, gap.end_ns, gap.calm_max_ns),
            (1000, 5000, 700)
        );
        assert_eq!(
            Gap::across(&arrivals, 950).unwrap(),
            Gap::across(&arrivals, 4000).unwrap(),
            "an interval that spans the failure counts"
        );
        assert_eq!(
            Gap::across(&arrivals, 6000),
            None,
            "nothing after the failure"
        );
    }

    #[test]
    fn the_split_adds_up_to_the_gap() {
        let gap = Gap {
            start_ns: 1_000_000,
            end_ns: 4_000_000,
            calm_max_ns: 0,
        };
        let m = Milestones {
            detected_ns: 1_500_000,
            failed_over_ns: 4_100_000,
            table_written_ns: 4_300_000,
        };
        let s = Rep::new(gap, Some(m)).split.unwrap();
        let sum = s.detection_ms + s.traffic_back_ms;
        assert!((sum - 3.0).abs() < 1e-9, "{s:?}");
        assert!((s.address_move_ms - 2.6).abs() < 1e-9, "{s:?}");
        assert!((s.rewrite_ms - 0.2).abs() < 1e-9, "{s:?}");
    }

    #[test]
    fn a_section_is_replaced_only_under_its_exact_title() {
        let path = std::env::temp_dir().join(format!("mpath-bench-{}.md", std::process::id()));
        fs::write(
            &path,
            "# Benchmarks\n\n## Benchmark: failover\n\nold\n\n## Benchmark: failover at scale\n\nkept\n",
        )
        .unwrap();
        write_section(&path, "Benchmark: failover", "new").unwrap();
        write_section(&path, "Soak", "added").unwrap();
        let text = fs::read_to_string(&path).unwrap();
        fs::remove_file(&path).unwrap();
        assert_eq!(
            text,
            "# Benchmarks\n\n## Benchmark: failover\n\nnew\n\n\
             ## Benchmark: failover at scale\n\nkept\n\n## Soak\n\nadded\n"
        );
    }

    #[test]
    fn a_benchmark_refuses_arguments_it_does_not_take() {
        let args = |words: &[&str]| words.iter().map(|w| w.to_string()).collect::<Vec<_>>();
        assert!(check_arguments("routes", &args(&["--sizes", "0", "--out", "B.md"])).is_ok());
        assert!(check_arguments("carrier", &args(&["--guest", "--rounds", "3"])).is_ok());
        let error = check_arguments("routes", &args(&["--help"])).unwrap_err();
        assert!(
            error.to_string().contains("unknown argument \"--help\""),
            "{error}"
        );
        assert!(check_arguments("routes", &args(&["--guest"])).is_err());
        // A flag's value is not taken for a flag.
        assert!(check_arguments("soak", &args(&["--seed", "--minutes"])).is_ok());
        assert!(check_arguments("busy", &args(&["3"])).is_err());
    }

    #[test]
    fn flags_take_the_word_after_them() {
        let args: Vec<String> = ["failover", "--only", "scale", "--reps", "3", "--x"]
            .map(String::from)
            .into();
        assert_eq!(text_flag(&args, "--only").unwrap(), Some("scale"));
        assert_eq!(flag(&args, "--reps").unwrap(), Some(3));
        assert_eq!(flag(&args, "--seconds").unwrap(), None);
        assert!(flag(&args, "--only").is_err(), "not a number");
        assert!(text_flag(&args, "--x").is_err(), "no value");
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 10.0);
        assert_eq!(percentile(&v, 95.0), 19.0);
        assert_eq!(percentile(&v, 100.0), 20.0);
        assert_eq!(percentile(&[3.0], 95.0), 3.0);
    }
}
