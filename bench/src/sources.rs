//! `sources`: what the source hook costs. It runs for every `connect` and every unconnected
//! `sendmsg` on the host, IPv4 and IPv6, in every network namespace, so both sides are
//! measured: a sender in mpathd's namespace, which the hook serves (a lookup in its copy of
//! the table, a hash, a bind), and one in another namespace, which it only turns away (one
//! helper call for the namespace cookie). Each against the same sender with the hook
//! detached (`sources = "kernel"`), in interleaved rounds of one run.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
};

use anyhow::{Context as _, bail};
use mpath_ctl::core::state::InterfaceStatus;
use mpath_lab::{Lab, Netns};
use mpath_tests::daemon::{Mpathd, state_of, three_nic_config};

use crate::{
    cpus,
    datapath::{spread_of, thread_cpu_ns},
    write_section,
};

/// Destinations each measurement cycles through.
const DESTINATIONS: u16 = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    Kernel,
    Hook,
}

impl Mode {
    fn config_value(self) -> &'static str {
        match self {
            Mode::Kernel => "kernel",
            Mode::Hook => "spread",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Family {
    /// To hosts behind the router, through the group's IPv6 default route.
    V6,
    /// To peers on the group's own subnet, through its on-link route.
    V4,
}

impl Family {
    fn domain(self) -> socket2::Domain {
        match self {
            Family::V6 => socket2::Domain::IPV6,
            Family::V4 => socket2::Domain::IPV4,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Sender {
    /// In mpathd's namespace, to hosts behind the router: the hook picks their sources.
    Served,
    /// In the router's namespace, to the host: the hook turns them away.
    Other,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    /// A new unbound UDP socket connected (and closed): the connect hook.
    Connect,
    /// A datagram from one unconnected socket: the sendmsg hook.
    SendTo,
}

/// One configuration's results over the rounds.
#[derive(Default)]
struct Row {
    ns: Vec<f64>,
    /// Sockets and datagrams the hook gave a source during the measurements.
    chosen: u64,
    /// The sources 64 connections got after each measurement.
    seen: BTreeSet<IpAddr>,
}

fn config(mode: Mode) -> String {
    three_nic_config(1000)
        .replace(
            "[daemon]\n",
            &format!("[daemon]\nsources = \"{}\"\n", mode.config_value()),
        )
        .replace(
            "data_addresses = [\"192.0.2.20/24\"]",
            "data_addresses = [\"192.0.2.20/24\", \"2001:db8::20/64\"]",
        )
}

/// The first of the router's on-link addresses the IPv4 sender reaches.
const ON_LINK_PEERS: u8 = 100;

fn destination(family: Family, sender: Sender, i: u64) -> SocketAddr {
    let host = (i % u64::from(DESTINATIONS)) as u16;
    // The other namespace sends to the host's two data addresses.
    let data = [0x19u8, 0x20][i as usize % 2];
    let ip = match (family, sender) {
        (Family::V6, Sender::Served) => {
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, host + 1))
        }
        (Family::V6, Sender::Other) => {
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, data.into()))
        }
        (Family::V4, Sender::Served) => {
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, ON_LINK_PEERS + host as u8))
        }
        (Family::V4, Sender::Other) => {
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, [19, 20][i as usize % 2]))
        }
    };
    SocketAddr::new(ip, 9)
}

/// Runs `count` operations from `ns`; returns the thread's CPU ns per operation.
fn measure(
    ns: &Netns,
    (family, sender, op): (Family, Sender, Op),
    count: u64,
) -> anyhow::Result<f64> {
    let _inside = ns.enter()?;
    let new_socket =
        || socket2::Socket::new(family.domain(), socket2::Type::DGRAM, None).context("UDP socket");
    let destination = |i| destination(family, sender, i);
    let cpu = match op {
        Op::Connect => {
            let start = thread_cpu_ns();
            for i in 0..count {
                new_socket()?
                    .connect(&destination(i).into())
                    .context("connect")?;
            }
            thread_cpu_ns() - start
        }
        Op::SendTo => {
            let socket = new_socket()?;
            let payload = [0u8; 18];
            let start = thread_cpu_ns();
            for i in 0..count {
                socket
                    .send_to(&payload, &destination(i).into())
                    .context("sendto")?;
            }
            thread_cpu_ns() - start
        }
    };
    Ok(cpu as f64 / count as f64)
}

/// The sources `DESTINATIONS` connections from `ns` get.
fn sources_seen(ns: &Netns, family: Family, sender: Sender) -> anyhow::Result<BTreeSet<IpAddr>> {
    let _inside = ns.enter()?;
    let mut seen = BTreeSet::new();
    for i in 0..u64::from(DESTINATIONS) {
        let socket = socket2::Socket::new(family.domain(), socket2::Type::DGRAM, None)?;
        socket.connect(&destination(family, sender, i).into())?;
        if let Some(local) = socket.local_addr()?.as_socket() {
            seen.insert(local.ip());
        }
    }
    Ok(seen)
}

/// Sockets the hook gave a source in group id 0 so far.
fn chosen(daemon: &Mpathd, lab: &Lab) -> anyhow::Result<u64> {
    let out = daemon.ctl(lab.host(), &["--json", "maps"]);
    if !out.status.success() {
        bail!("mpathctl maps: {out:?}");
    }
    let maps: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(maps["sources"]
        .as_array()
        .and_then(|groups| groups.iter().find(|g| g["group"] == 0))
        .and_then(|g| g["chosen"].as_u64())
        .unwrap_or(0))
}

fn set_mode(daemon: &mut Mpathd, mode: Mode, reloads: &mut usize) {
    daemon.reload(&config(mode));
    *reloads += 1;
    let wanted = *reloads;
    daemon.wait_until("the reload applied", |d| {
        d.log().matches("reload: ").count() >= wanted
            && d.try_status()
                .is_some_and(|s| state_of(&s, "h1") == Some(InterfaceStatus::Ok))
    });
}

pub(crate) fn sources(rounds: u64, count: u64, out: Option<PathBuf>) -> anyhow::Result<()> {
    let lab = Lab::builder().nics(3).behind_router().build()?;
    lab.add_ra_default_route("h1")?;
    // On-link peers for the IPv4 sender, which answer ARP.
    for host in 0..DESTINATIONS as u8 {
        let peer = format!("192.0.2.{}/32", ON_LINK_PEERS + host);
        lab.router()
            .ip(&["addr", "add", &peer, "dev", mpath_lab::ROUTER_NIC])?;
    }
    let mut daemon = Mpathd::start(lab.host(), &config(Mode::Kernel));
    daemon.wait_until("all NICs ok", |d| {
        d.try_status().is_some_and(|s| {
            ["h0", "h1", "h2"]
                .iter()
                .all(|n| state_of(&s, n) == Some(InterfaceStatus::Ok))
        })
    });
    let mut reloads = 0;
    let cases: Vec<(Family, Sender, Op)> = [Family::V6, Family::V4]
        .into_iter()
        .flat_map(|f| [Sender::Served, Sender::Other].map(|s| (f, s)))
        .flat_map(|(f, s)| [Op::Connect, Op::SendTo].map(|o| (f, s, o)))
        .collect();
    let mut rows: BTreeMap<((Family, Sender, Op), Mode), Row> = BTreeMap::new();
    for round in 0..rounds {
        let mut modes = [Mode::Kernel, Mode::Hook];
        modes.rotate_left(round as usize % 2);
        for mode in modes {
            set_mode(&mut daemon, mode, &mut reloads);
            for &case in &cases {
                let (family, sender, op) = case;
                let ns = match sender {
                    Sender::Served => lab.host(),
                    Sender::Other => lab.router(),
                };
                let before = chosen(&daemon, &lab)?;
                let cost = measure(ns, case, count)?;
                let row = rows.entry((case, mode)).or_default();
                row.chosen += chosen(&daemon, &lab)? - before;
                row.seen.extend(sources_seen(ns, family, sender)?);
                row.ns.push(cost);
                eprintln!(
                    "round {}/{rounds}: {family:?} {sender:?} {op:?} {mode:?}: {cost:.0} ns",
                    round + 1
                );
            }
        }
    }

    let mut table = String::new();
    writeln!(
        table,
        "| family | sender | operation | kernel picks: ns/op min / median / max | hook attached: ns/op min / median / max | hook − kernel (medians) | given a source by the hook (kernel / hook) | sources of 64 connections (kernel / hook) |"
    )?;
    writeln!(
        table,
        "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |"
    )?;
    for &case in &cases {
        let (family, sender, op) = case;
        {
            let kernel = &rows[&(case, Mode::Kernel)];
            let hook = &rows[&(case, Mode::Hook)];
            let (kmin, kmid, kmax) = spread_of(&kernel.ns);
            let (hmin, hmid, hmax) = spread_of(&hook.ns);
            let seen = |row: &Row| {
                row.seen
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            // A difference smaller than either side's spread over the rounds is noise.
            let noise = (kmax - kmin).max(hmax - hmin);
            let verdict = if (hmid - kmid).abs() < noise {
                " (within the rounds' spread)"
            } else {
                ""
            };
            writeln!(
                table,
                "| {} | {} | {} | {kmin:.0} / {kmid:.0} / {kmax:.0} | {hmin:.0} / {hmid:.0} / {hmax:.0} | {:+.0} ns{verdict} | {} / {} | {} / {} |",
                match family {
                    Family::V6 => "IPv6",
                    Family::V4 => "IPv4",
                },
                match sender {
                    Sender::Served => "mpathd's namespace (served)",
                    Sender::Other => "another namespace (turned away)",
                },
                match op {
                    Op::Connect => "socket + connect + close",
                    Op::SendTo => "unconnected sendto",
                },
                hmid - kmid,
                kernel.chosen,
                hook.chosen,
                seen(kernel),
                seen(hook),
            )?;
        }
    }
    println!("{table}");
    if let Some(path) = out {
        let body = format!(
            "`cargo xtask bench sources`: the sender thread's own CPU time per operation \
             (CLOCK_THREAD_CPUTIME_ID around {count} operations; a datagram's transmission through \
             the veth and its receipt in the other namespace run in the sender's context and are \
             included) with mpathd's source hook detached (`sources = \"kernel\"`) \
             and attached (`\"spread\"`, switched by reload between measurements), in {rounds} \
             interleaved rounds, the order of the two modes alternating. Served, IPv6: UDP from \
             the lab's host namespace to {DESTINATIONS} addresses behind the router, through the \
             group's default route (group g0 with the data addresses 2001:db8::19 on h0 and \
             2001:db8::20 on h1). Served, IPv4: UDP to {DESTINATIONS} addresses of the router on \
             the group's subnet, through its on-link route (data addresses 192.0.2.19 and \
             192.0.2.20). Turned away: UDP from the router's namespace to the host's data \
             addresses, which the hook, attached to the root cgroup, sees too. The counts of \
             sockets and datagrams given a source and the sources 64 connections got after \
             each measurement (mpathctl maps) show that each row measured what it names. {} \
             CPUs, shared with other work: the per-round min / max show the noise. A served \
             socket can cost less with the hook than without: given its source, the kernel \
             skips its own source address selection.\n\n{table}",
            cpus()
        );
        write_section(&path, "Benchmark: source hook", &body)?;
        eprintln!("written to {}", path.display());
    }
    Ok(())
}
