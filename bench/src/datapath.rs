//! `bench datapath`: what spreading costs the sender per packet, and what it gives bulk TCP.
//!
//! Small UDP packets over 64 flows from the host namespace of a 4-NIC lab to the switch,
//! whose ports drop them at their ingress hook. Each configuration's cost is the sender
//! thread's own CPU time per packet (`CLOCK_THREAD_CPUTIME_ID`, which includes the softirq
//! work done in its context): wall-clock rates on a shared machine measure the neighbours.
//! Configurations run in interleaved rounds, the order rotated each round, so drift hits
//! them all alike. Every multipath row proves its spreading by the switch ports' counters.
//!
//! Bulk TCP: iperf3 with 16 flows to the network behind the router over 1, 2 and 4 NICs
//! shaped to 500 Mbit/s each, in routes mode.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    os::fd::AsRawFd,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::programs::{TestRun as _, TestRunOptions};
use mpath_common::NicInfo;
use mpath_ctl::{
    config::{DEFAULT_ROUTE_RULE_PRIORITY, DEFAULT_ROUTE_TABLE},
    core::spread::rebalance,
    datapath::{Datapath, ProbeRx},
};
use mpath_lab::{Lab, ROUTER_NIC};
use mpath_tests::PinDir;

use super::{BATCH, FIRST_PORT, PAYLOAD, blast, cpus, load_average, write_section};

const SOURCE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 19);
const DESTINATION: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const NEXT_HOP: &str = "192.0.2.1";
const PREFIX: &str = "198.51.100.0/24";
/// Distinct destination ports, i.e. flows.
const FLOWS: u16 = 64;
const GROUP: u32 = 0;
const NICS: usize = 4;
/// Nexthop object ids: NIC i's gateway nexthop is `1 + i`; groups over the first n NICs are
/// `RESILIENT + n` (routes mode, as mpathd builds them) and `ECMP + n` (plain multipath).
const RESILIENT: usize = 10;
const ECMP: usize = 20;
/// Per-NIC rate for bulk TCP, as `tc` reads it, and in Gbit/s.
const SHAPED_RATE: &str = "500mbit";
const SHAPED_GBIT: f64 = 0.5;
const BULK_FLOWS: u32 = 16;
const BULK_NICS: [usize; 3] = [1, 2, 4];
const IPERF_PORT: &str = "5201";

/// How the flows are sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Sockets {
    /// One socket, a destination per message: every packet is routed (and hashed).
    Unconnected,
    /// One connected socket per flow: the route is looked up at connect and cached.
    Connected,
}

/// Who spreads the flows over the NICs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Spreading {
    /// One NIC, no program.
    Baseline,
    /// mpathd's `spread = "routes"`: a resilient nexthop group over n NICs; the tc program
    /// attached with those NICs flagged routed (it counts and stamps, never redirects).
    Routes(usize),
    /// mpathd's `spread = "datapath"`: the route goes through h0, the tc program redirects
    /// each flow to its bucket's NIC.
    Datapath(usize),
    /// Kernel ECMP: a plain (`type mpath`) nexthop group over n NICs, no program.
    Ecmp(usize),
}

impl Spreading {
    fn nics(self) -> usize {
        match self {
            Spreading::Baseline => 1,
            Spreading::Routes(n) | Spreading::Datapath(n) | Spreading::Ecmp(n) => n,
        }
    }

    fn label(self) -> String {
        match self {
            Spreading::Baseline => "baseline: 1 NIC, no program".into(),
            Spreading::Routes(n) => format!("routes mode, {n} NICs"),
            Spreading::Datapath(n) => format!("datapath mode, {n} NICs"),
            Spreading::Ecmp(n) => format!("kernel ECMP (nexthop group), {n} NICs"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Setup {
    spreading: Spreading,
    sockets: Sockets,
}

/// One configuration's measurements over all rounds.
#[derive(Default)]
struct Row {
    /// Sender thread CPU ns per packet, one per round.
    ns: Vec<f64>,
    /// Packets each NIC put on the wire (the switch port's rx counter), summed over rounds.
    wire: [u64; NICS],
}

struct Bench {
    lab: Lab,
    datapath: Datapath,
    nics: Vec<(String, u32, [u8; 6])>,
    _pins: PinDir,
}

impl Bench {
    fn new() -> anyhow::Result<Self> {
        let mut builder = Lab::builder()
            .nics(NICS as u32)
            .router_addrs(&["198.51.100.1/24"]);
        for i in 0..NICS {
            builder = builder.host_addr(&format!("h{i}"), &format!("192.0.2.{}/24", 19 + i));
        }
        let lab = builder.build()?;
        let host = lab.host();
        // Flows that differ only in ports spread (L4 hash), as mpathd sets it.
        host.run(&["sysctl", "-qw", "net.ipv4.fib_multipath_hash_policy=1"])?;
        // The host knows the next hop's MAC without asking: no ARP in any configuration.
        let link = lab
            .router()
            .ip(&["-o", "link", "show", "dev", ROUTER_NIC])?;
        let router_mac = link
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .context("router MAC")?
            .to_string();
        let names = lab.nics();
        for (i, nic) in names.iter().enumerate() {
            host.ip(&[
                "neigh",
                "replace",
                NEXT_HOP,
                "lladdr",
                &router_mac,
                "dev",
                nic,
                "nud",
                "permanent",
            ])?;
            host.ip(&[
                "nexthop",
                "add",
                "id",
                &(1 + i).to_string(),
                "via",
                NEXT_HOP,
                "dev",
                nic,
            ])?;
        }
        for n in [1, 2, 4] {
            let members = (1..=n).map(|i| i.to_string()).collect::<Vec<_>>().join("/");
            host.run(&[
                "ip",
                "nexthop",
                "add",
                "id",
                &(RESILIENT + n).to_string(),
                "group",
                &members,
                "type",
                "resilient",
                "buckets",
                "256",
                "idle_timer",
                "3",
            ])?;
            host.ip(&[
                "nexthop",
                "add",
                "id",
                &(ECMP + n).to_string(),
                "group",
                &members,
                "type",
                "mpath",
            ])?;
        }
        let pins = PinDir::new();
        let _inside = host.enter()?;
        let datapath = Datapath::open(pins.path())?;
        let nics = names
            .into_iter()
            .map(|n| {
                let ifindex = host.ifindex(&n)?;
                let mac = lab.mac(&n)?;
                Ok((n, ifindex, mac))
            })
            .collect::<anyhow::Result<_>>()?;
        drop(_inside);
        Ok(Bench {
            lab,
            datapath,
            nics,
            _pins: pins,
        })
    }

    /// Packets end at the switch: every port drops what it receives at its ingress hook
    /// (nftables netdev family: before the bridge, so the receiving side costs little and
    /// varies less). The per-packet path is then the sender's stack, the egress hook and the
    /// veth, which is what the configurations differ in.
    fn sink(&self, on: bool) -> anyhow::Result<()> {
        let switch = self.lab.switch();
        if !on {
            return switch.run(&["nft", "delete table netdev sink"]).map(drop);
        }
        switch.run(&["nft", "add table netdev sink"])?;
        for (nic, _, _) in &self.nics {
            let port = self.lab.switch_port(nic)?;
            switch.run(&[
                "nft",
                &format!(
                    "add chain netdev sink {port} {{ type filter hook ingress device {port} \
                     priority 0; policy drop; }}"
                ),
            ])?;
        }
        Ok(())
    }

    /// Routes [`PREFIX`] and sets the tc program up as `spreading` wants.
    fn configure(&mut self, spreading: Spreading) -> anyhow::Result<()> {
        for (_, ifindex, _) in &self.nics {
            self.datapath.detach(*ifindex)?;
            self.datapath.maps.remove_nic(*ifindex)?;
        }
        let host = self.lab.host();
        // Routes mode is laid out as mpathd lays it out: the per-NIC route stays in main and
        // the group route sits in mpathd's table, which a rule consults ahead of main; its
        // cost per packet is part of the row.
        let table = DEFAULT_ROUTE_TABLE.to_string();
        // Both fail when there is nothing to remove (no rule, no table yet).
        let _: Result<_, _> = host.ip(&["rule", "del", "lookup", &table]);
        let _: Result<_, _> = host.ip(&["route", "flush", "table", &table]);
        match spreading {
            Spreading::Baseline | Spreading::Datapath(_) => {
                host.ip(&["route", "replace", PREFIX, "via", NEXT_HOP, "dev", "h0"])?
            }
            Spreading::Routes(n) => {
                host.ip(&["route", "replace", PREFIX, "via", NEXT_HOP, "dev", "h0"])?;
                let id = (RESILIENT + n).to_string();
                host.ip(&["route", "replace", PREFIX, "nhid", &id, "table", &table])?;
                let priority = DEFAULT_ROUTE_RULE_PRIORITY.to_string();
                host.ip(&["rule", "add", "pref", &priority, "lookup", &table])?
            }
            Spreading::Ecmp(n) => {
                host.ip(&["route", "replace", PREFIX, "nhid", &(ECMP + n).to_string()])?
            }
        };
        let routed = match spreading {
            Spreading::Routes(_) => true,
            Spreading::Datapath(_) => false,
            Spreading::Baseline | Spreading::Ecmp(_) => return Ok(()),
        };
        let n = spreading.nics();
        let _inside = self.lab.host().enter()?;
        for (slot, (name, ifindex, mac)) in self.nics[..n].iter().enumerate() {
            self.datapath.attach(name, ProbeRx::Tc)?;
            let info = NicInfo {
                slot: slot as u32,
                group: GROUP,
                mac: *mac,
                ..Default::default()
            };
            self.datapath.maps.set_nic(*ifindex, info)?;
            self.datapath.maps.set_routed(*ifindex, routed)?;
        }
        let usable: Vec<u32> = self.nics[..n].iter().map(|n| n.1).collect();
        let table = rebalance(&self.datapath.maps.table(GROUP)?, &usable);
        drop(_inside);
        self.write_table(&table)
    }

    fn write_table(
        &mut self,
        table: &[u32; mpath_common::BUCKETS_PER_GROUP as usize],
    ) -> anyhow::Result<()> {
        let macs: BTreeMap<u32, [u8; 6]> = self.nics.iter().map(|n| (n.1, n.2)).collect();
        self.datapath.maps.write_table(GROUP, table, |i| macs[&i])?;
        Ok(())
    }

    /// What each NIC put on the wire so far (the switch port's rx counter).
    fn wire(&self) -> anyhow::Result<[u64; NICS]> {
        let mut out = [0; NICS];
        for (count, (nic, _, _)) in out.iter_mut().zip(&self.nics) {
            *count = self.lab.switch_port_rx_packets(nic)?;
        }
        Ok(out)
    }

    /// Sends for `duration`; returns the sender thread's CPU ns per packet.
    fn blast(&self, sockets: Sockets, duration: Duration) -> anyhow::Result<f64> {
        let flows: Vec<SocketAddrV4> = (0..FLOWS)
            .map(|i| SocketAddrV4::new(DESTINATION, FIRST_PORT + i))
            .collect();
        let (cpu, sent) = match sockets {
            Sockets::Unconnected => {
                let socket = {
                    let _inside = self.lab.host().enter()?;
                    UdpSocket::bind((SOURCE, 0))?
                };
                let cpu = thread_cpu_ns();
                let sent = blast(&socket, &flows, duration)?;
                (thread_cpu_ns() - cpu, sent)
            }
            Sockets::Connected => {
                // Connected now, after the route changed: each caches this configuration's.
                let sockets = {
                    let _inside = self.lab.host().enter()?;
                    flows
                        .iter()
                        .map(|flow| {
                            let s = UdpSocket::bind((SOURCE, 0))?;
                            s.connect(flow)?;
                            Ok(s)
                        })
                        .collect::<anyhow::Result<Vec<_>>>()?
                };
                let cpu = thread_cpu_ns();
                let sent = blast_connected(&sockets, duration)?;
                (thread_cpu_ns() - cpu, sent)
            }
        };
        if sent == 0 {
            bail!("nothing sent");
        }
        Ok(cpu as f64 / sent as f64)
    }
}

/// The calling thread's CPU time (user and system, softirqs run in its context included).
pub(crate) fn thread_cpu_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// Sends small packets on each connected socket in turn, [`BATCH`] per sendmmsg like the
/// unconnected sender, for `duration`; returns how many were sent.
fn blast_connected(sockets: &[UdpSocket], duration: Duration) -> anyhow::Result<u64> {
    let payload = [0u8; PAYLOAD];
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut _,
        iov_len: PAYLOAD,
    };
    // SAFETY: mmsghdr is plain data; the iovec set below outlives the sends.
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    for m in &mut msgs {
        m.msg_hdr.msg_iov = &mut iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    let start = Instant::now();
    let mut sent: u64 = 0;
    while start.elapsed() < duration {
        for socket in sockets {
            // SAFETY: `msgs` holds BATCH initialised headers.
            let n =
                unsafe { libc::sendmmsg(socket.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if matches!(e.raw_os_error(), Some(libc::ENOBUFS | libc::EAGAIN)) {
                    continue;
                }
                return Err(e).context("sendmmsg");
            }
            sent += n as u64;
        }
    }
    Ok(sent)
}

/// Test runs of the program alone per measurement.
const PROGRAM_RUNS: u32 = 1_000_000;

impl Bench {
    /// Average ns per run of the spreading program (datapath mode) on a UDP frame leaving
    /// h0: with the flow's bucket on h0 itself, and on another NIC.
    fn program_cost(&mut self) -> anyhow::Result<(f64, f64)> {
        self.configure(Spreading::Datapath(NICS))?;
        let h0 = self.nics[0].clone();
        let other = self.nics[1].1;
        let mut frame = vec![0u8; 14 + 20 + 8 + PAYLOAD];
        frame[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
        frame[6..12].copy_from_slice(&h0.2);
        frame[12..14].copy_from_slice(&[0x08, 0x00]);
        frame[14] = 0x45;
        frame[16..18].copy_from_slice(&((20 + 8 + PAYLOAD) as u16).to_be_bytes());
        frame[22] = 64;
        frame[23] = 17;
        frame[26..30].copy_from_slice(&SOURCE.octets());
        frame[30..34].copy_from_slice(&DESTINATION.octets());
        frame[34..36].copy_from_slice(&40000u16.to_be_bytes());
        frame[36..38].copy_from_slice(&FIRST_PORT.to_be_bytes());
        // struct __sk_buff: `ifindex` at byte 40 makes the run happen "on" h0.
        let mut ctx = [0u8; 192];
        ctx[40..44].copy_from_slice(&h0.1.to_ne_bytes());
        let mut cost = |owner: u32| -> anyhow::Result<f64> {
            self.write_table(&[owner; mpath_common::BUCKETS_PER_GROUP as usize])?;
            let _inside = self.lab.host().enter()?;
            let mut opts = TestRunOptions::new();
            opts.data_in = Some(&frame);
            opts.ctx_in = Some(&ctx);
            opts.repeat = PROGRAM_RUNS;
            let result = self.datapath.spread()?.test_run(opts)?;
            Ok(result.duration.as_nanos() as f64)
        };
        let here = cost(h0.1)?;
        let away = cost(other)?;
        Ok((here, away))
    }
}

/// (min, median, max) of `values`.
pub(crate) fn spread_of(values: &[f64]) -> (f64, f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

/// Each NIC's share of `wire` among the first `n`, and whether the traffic spread: every one
/// of the `n` NICs carried at least half its even share, and the others (nearly) nothing.
fn shares(wire: &[u64; NICS], n: usize) -> (Vec<f64>, bool) {
    let total: u64 = wire.iter().sum();
    let shares: Vec<f64> = wire
        .iter()
        .map(|&w| w as f64 / total.max(1) as f64)
        .collect();
    let even = 1.0 / n as f64;
    let spread =
        shares[..n].iter().all(|&s| s >= even / 2.0) && shares[n..].iter().all(|&s| s < 0.01);
    (shares, spread)
}

pub(crate) fn datapath(
    rounds: u64,
    duration: Duration,
    bulk_seconds: u64,
    out: Option<PathBuf>,
) -> anyhow::Result<()> {
    let load_before = load_average();
    // Routes mode next to kernel ECMP: the pairs the target compares run back to back.
    let spreadings = [
        Spreading::Baseline,
        Spreading::Routes(2),
        Spreading::Ecmp(2),
        Spreading::Routes(4),
        Spreading::Ecmp(4),
        Spreading::Datapath(2),
        Spreading::Datapath(4),
    ];
    let setups: Vec<Setup> = [Sockets::Unconnected, Sockets::Connected]
        .into_iter()
        .flat_map(|sockets| spreadings.map(|spreading| Setup { spreading, sockets }))
        .collect();
    let mut bench = Bench::new()?;
    bench.sink(true)?;
    let mut rows: BTreeMap<Setup, Row> = BTreeMap::new();
    for round in 0..rounds {
        let mut order = setups.clone();
        order.rotate_left(round as usize % setups.len());
        for setup in order {
            bench.configure(setup.spreading)?;
            let before = bench.wire()?;
            let ns = bench.blast(setup.sockets, duration)?;
            let after = bench.wire()?;
            let row = rows.entry(setup).or_default();
            for (total, (b, a)) in row.wire.iter_mut().zip(before.iter().zip(after)) {
                *total += a - b;
            }
            eprintln!(
                "round {}/{rounds}: {:<44} {:?} {ns:>8.0} ns/packet",
                round + 1,
                setup.spreading.label(),
                setup.sockets
            );
            row.ns.push(ns);
        }
    }
    let program_ns = bench.program_cost()?;
    bench.configure(Spreading::Baseline)?;

    let mut table = String::new();
    writeln!(
        table,
        "Sender CPU per packet, {rounds} rounds of {} s per configuration (ns of the sender \
         thread's CPU time per packet; ratio: median over the same socket kind's baseline \
         median):\n",
        duration.as_secs_f64()
    )?;
    writeln!(
        table,
        "| configuration | sockets | ns/packet min / median / max | ratio to baseline | share of packets per NIC (h0 / h1 / h2 / h3) | spread |"
    )?;
    writeln!(table, "| --- | --- | ---: | ---: | --- | --- |")?;
    let median_of = |setup: &Setup| spread_of(&rows[setup].ns).1;
    for setup in &setups {
        let row = &rows[setup];
        let (min, mid, max) = spread_of(&row.ns);
        let base = median_of(&Setup {
            spreading: Spreading::Baseline,
            sockets: setup.sockets,
        });
        let n = setup.spreading.nics();
        let (shares, spread) = shares(&row.wire, n);
        let shares: Vec<String> = shares
            .iter()
            .map(|s| format!("{:.0} %", s * 100.0))
            .collect();
        let verdict = match (n, spread) {
            (1, _) => "(one NIC)",
            (_, true) => "yes",
            (_, false) => "**no: did not spread**",
        };
        writeln!(
            table,
            "| {} | {} | {min:.0} / {mid:.0} / {max:.0} | {:.3} | {} | {verdict} |",
            setup.spreading.label(),
            match setup.sockets {
                Sockets::Unconnected => "unconnected",
                Sockets::Connected => "connected",
            },
            mid / base,
            shares.join(" / "),
        )?;
    }
    writeln!(
        table,
        "\nTarget: routes mode within 3 % of kernel ECMP in CPU per packet (per round, routes \
         mode's ns/packet over kernel ECMP's in the same round; min / median / max):\n"
    )?;
    writeln!(
        table,
        "| sockets | NICs | routes / ECMP per round | met (median <= 1.03) |"
    )?;
    writeln!(table, "| --- | ---: | ---: | --- |")?;
    for sockets in [Sockets::Unconnected, Sockets::Connected] {
        for n in [2, 4] {
            let routes = &rows[&Setup {
                spreading: Spreading::Routes(n),
                sockets,
            }];
            let ecmp = &rows[&Setup {
                spreading: Spreading::Ecmp(n),
                sockets,
            }];
            let ratios: Vec<f64> = routes.ns.iter().zip(&ecmp.ns).map(|(r, e)| r / e).collect();
            let (min, mid, max) = spread_of(&ratios);
            let spread = shares(&routes.wire, n).1 && shares(&ecmp.wire, n).1;
            // Rounds that disagree by more than the margin cannot settle it either way.
            let noise = if max - min > 0.06 {
                format!(
                    ", not settled: the rounds' ratios span {:.0} %, more than the 3 % margin",
                    (max - min) * 100.0
                )
            } else {
                String::new()
            };
            writeln!(
                table,
                "| {} | {n} | {min:.3} / {mid:.3} / {max:.3} | {}{noise}{} |",
                match sockets {
                    Sockets::Unconnected => "unconnected",
                    Sockets::Connected => "connected",
                },
                super::yes(mid <= 1.03),
                if spread {
                    ""
                } else {
                    " (a row did not spread)"
                },
            )?;
        }
    }
    writeln!(
        table,
        "\nThe spreading program alone, run by the kernel on one UDP frame (BPF_PROG_TEST_RUN, \
         {PROGRAM_RUNS} runs, average): {:.0} ns when the flow stays on its NIC; {:.0} ns for a \
         redirected packet's two passes, the choice on the NIC the kernel picked and the \
         short-cut on the NIC it is sent to (a test run alternates between the two, as the \
         redirect mark is kept between runs; the redirect itself is not carried out).\n",
        program_ns.0,
        2.0 * program_ns.1
    )?;
    // Shown before the bulk runs, so that a failure there does not lose it.
    println!("{table}");
    bench.sink(false)?;
    let bulk = bulk(&mut bench, rounds, Duration::from_secs(bulk_seconds))?;
    println!("{bulk}");
    let load_after = load_average();
    table.push_str(&bulk);
    if let Some(path) = out {
        let body = format!(
            "`cargo xtask bench datapath`: {PAYLOAD}-byte UDP payloads over {FLOWS} flows (destination \
             ports), sent with sendmmsg ({BATCH} per call) from the host namespace of a \
             {NICS}-NIC veth lab to the switch, whose ports drop them at their ingress hook \
             (nftables netdev family; static next-hop neighbour, so no ARP). Unconnected: one \
             socket, a destination per message, so every packet is routed; connected: one \
             connected socket per flow, called in turn, so the route is cached. Each row's cost is \
             the sender thread's own CPU time per packet (CLOCK_THREAD_CPUTIME_ID around the send \
             loop, which includes the softirq work of the veth, the bridge port's ingress hook and \
             the drop done in its context), not wall-clock time. Configurations run in {rounds} \
             interleaved rounds, the order rotated each round. Rows: the baseline (route via h0, \
             no program); routes mode (mpathd's `spread = \"routes\"`: the route `nhid` a \
             resilient nexthop group, 256 buckets, over the NICs' gateway nexthops, in mpathd's table \
             28016 behind its rule at priority 32765 (the per-NIC route via h0 stays in main), \
             and the tc \
             program attached with the NICs flagged routed, so it counts but never redirects); \
             datapath mode (`spread = \"datapath\"`: the route through h0, the tc program \
             redirects each flow to its bucket's NIC); kernel ECMP (the route `nhid` a plain \
             `type mpath` nexthop group, no program). fib_multipath_hash_policy=1 (L4 hash). \
             The shares are the switch ports' rx packet counters over all rounds: a multipath \
             row spread when each of its NICs carried at least half an even share. \
             {} CPUs, shared with other engineers' builds and tests (load average {load_before} \
             before, {load_after} after): the figures are noisy, the per-round min / max show \
             how much.\n\n{table}",
            cpus(),
        );
        write_section(&path, "Benchmark: datapath", &body)?;
        eprintln!("written to {}", path.display());
    }
    Ok(())
}

/// One iperf3 run.
struct Bulk {
    gbit: f64,
    /// The client's CPU time over the run (iperf3's own figure), in s.
    cpu_s: f64,
    wire: [u64; NICS],
}

/// Bulk TCP in routes mode over 1, 2 and 4 NICs, each NIC shaped to [`SHAPED_RATE`] by htb;
/// `rounds` interleaved runs of `duration` each. Returns the table.
fn bulk(bench: &mut Bench, rounds: u64, duration: Duration) -> anyhow::Result<String> {
    // Each NIC answers ARP for its own addresses only, as on a host mpathd runs: replies to a
    // flow come back on the NIC whose address it uses, a NIC of its group.
    bench.lab.host().run(&[
        "sysctl",
        "-qw",
        "net.ipv4.conf.all.arp_ignore=1",
        "net.ipv4.conf.all.arp_announce=2",
    ])?;
    for (nic, _, _) in &bench.nics {
        bench.lab.host().run(&[
            "tc", "qdisc", "replace", "dev", nic, "root", "handle", "1:", "htb", "default", "10",
        ])?;
        bench.lab.host().run(&[
            "tc",
            "class",
            "add",
            "dev",
            nic,
            "parent",
            "1:",
            "classid",
            "1:10",
            "htb",
            "rate",
            SHAPED_RATE,
        ])?;
    }
    let mut runs: BTreeMap<usize, Vec<Bulk>> = BTreeMap::new();
    let mut repeated = 0;
    for round in 0..rounds {
        let mut order = BULK_NICS;
        order.rotate_left(round as usize % BULK_NICS.len());
        for n in order {
            bench.configure(Spreading::Routes(n))?;
            let before = bench.wire()?;
            let (gbit, cpu_s, failed) = iperf(&bench.lab, duration)?;
            repeated += failed;
            let after = bench.wire()?;
            let mut wire = [0; NICS];
            for (w, (b, a)) in wire.iter_mut().zip(before.iter().zip(after)) {
                *w = a - b;
            }
            eprintln!(
                "bulk round {}/{rounds}: {n} NICs: {gbit:.3} Gbit/s, {cpu_s:.2} s CPU",
                round + 1
            );
            runs.entry(n).or_default().push(Bulk { gbit, cpu_s, wire });
        }
    }
    for (nic, _, _) in &bench.nics {
        bench
            .lab
            .host()
            .run(&["tc", "qdisc", "del", "dev", nic, "root"])?;
    }
    let one = spread_of(&runs[&1].iter().map(|r| r.gbit).collect::<Vec<_>>()).1;
    let mut t = String::new();
    writeln!(
        t,
        "Bulk TCP: iperf3 ({BULK_FLOWS} flows, {} s per run, {rounds} interleaved rounds) from \
         the host to the network behind the router, routes mode (as above), each host NIC shaped \
         to {SHAPED_RATE} by an htb root qdisc; the router's side is not shaped. Gbit/s is \
         iperf3's received rate; CPU is the sender's (iperf3's own user + system figure for the \
         client process, which includes the softirq work billed to it) per Gbit received; \
         shares are the switch ports' rx packets (the data segments; ACKs come back \
         unshaped).\n",
        duration.as_secs_f64()
    )?;
    writeln!(
        t,
        "| NICs | Gbit/s min / median / max | target (0.95 x N x one NIC's median) | met | sender CPU ms per Gbit, median | share of packets per NIC (h0 / h1 / h2 / h3) | spread |"
    )?;
    writeln!(t, "| ---: | ---: | ---: | --- | ---: | --- | --- |")?;
    for (&n, runs) in &runs {
        let (min, mid, max) = spread_of(&runs.iter().map(|r| r.gbit).collect::<Vec<_>>());
        let per_gbit = spread_of(
            &runs
                .iter()
                .map(|r| 1e3 * r.cpu_s / (r.gbit * duration.as_secs_f64()))
                .collect::<Vec<_>>(),
        )
        .1;
        let mut wire = [0; NICS];
        for r in runs {
            for (w, x) in wire.iter_mut().zip(r.wire) {
                *w += x;
            }
        }
        let (shares, spread) = shares(&wire, n);
        let shares: Vec<String> = shares
            .iter()
            .map(|s| format!("{:.0} %", s * 100.0))
            .collect();
        let target = 0.95 * n as f64 * one;
        writeln!(
            t,
            "| {n} | {min:.3} / {mid:.3} / {max:.3} | {target:.3} | {} | {per_gbit:.1} | {} | {} |",
            super::yes(mid >= target),
            shares.join(" / "),
            match (n, spread) {
                (1, _) => "(one NIC)",
                (_, true) => "yes",
                (_, false) => "**no: did not spread**",
            },
        )?;
    }
    writeln!(
        t,
        "\nOne shaped NIC's line rate is {SHAPED_GBIT} Gbit/s; one NIC's median here is \
         {one:.3} Gbit/s. iperf3 runs that stalled and were repeated: {repeated}."
    )?;
    Ok(t)
}

/// Tries of one iperf3 run before the benchmark gives up.
const IPERF_TRIES: u32 = 3;

/// One iperf3 run of [`BULK_FLOWS`] flows from the host to the router's network behind it:
/// (Gbit/s received, the client's CPU s, failed tries repeated). Now and then a run stalls
/// until its time limit (iperf3 3.12, cause not found); such a run is repeated and counted.
fn iperf(lab: &Lab, duration: Duration) -> anyhow::Result<(f64, f64, u32)> {
    let mut failed = 0;
    loop {
        match iperf_once(lab, duration) {
            Ok((gbit, cpu_s)) => return Ok((gbit, cpu_s, failed)),
            Err(e) if failed + 1 < IPERF_TRIES => {
                eprintln!("iperf3 run failed, repeating it: {e:#}");
                failed += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

fn iperf_once(lab: &Lab, duration: Duration) -> anyhow::Result<(f64, f64)> {
    let address = DESTINATION.to_string();
    // A run that hangs is an error, not a stuck benchmark.
    let limit = (duration.as_secs() + 10).to_string();
    let mut server = lab
        .router()
        .cmd("timeout")
        .args([
            &limit, "iperf3", "-s", "-1", "-B", &address, "-p", IPERF_PORT,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("iperf3 server (apt-get install iperf3)")?;
    let seconds = duration.as_secs().to_string();
    let flows = BULK_FLOWS.to_string();
    let client = (|| {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let output = lab
                .host()
                .cmd("timeout")
                .args([&limit, "iperf3", "-c", &address, "-p", IPERF_PORT])
                .args(["-P", &flows, "-t", &seconds, "-J"])
                .output()
                .context("iperf3 client")?;
            let json: serde_json::Value =
                serde_json::from_slice(&output.stdout).unwrap_or_default();
            if output.status.success() && json["error"].is_null() {
                return Ok(json);
            }
            // The server may not listen yet.
            if Instant::now() > deadline {
                bail!(
                    "iperf3 client failed ({}): {}",
                    output.status,
                    json["error"]
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })();
    if client.is_err() {
        let _: Result<_, _> = server.kill();
    }
    server.wait()?;
    let end = &client?["end"];
    let bits = end["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3: no end.sum_received.bits_per_second")?;
    let cpu_percent = end["cpu_utilization_percent"]["host_total"]
        .as_f64()
        .context("iperf3: no end.cpu_utilization_percent.host_total")?;
    Ok((bits / 1e9, cpu_percent / 100.0 * duration.as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traffic_spread_when_every_nic_carried_half_an_even_share() {
        assert!(shares(&[50, 50, 0, 0], 2).1);
        assert!(shares(&[30, 20, 25, 25], 4).1);
        assert!(!shares(&[100, 0, 0, 0], 2).1, "all on h0");
        assert!(!shares(&[80, 20, 0, 0], 2).1, "h1 under half its share");
        assert!(!shares(&[50, 30, 20, 0], 2).1, "outside the group");
        let (s, _) = shares(&[1, 3, 0, 0], 2);
        assert_eq!(s, vec![0.25, 0.75, 0.0, 0.0]);
    }

    #[test]
    fn min_median_max() {
        assert_eq!(spread_of(&[3.0, 1.0, 2.0]), (1.0, 2.0, 3.0));
        assert_eq!(spread_of(&[5.0]), (5.0, 5.0, 5.0));
    }
}
