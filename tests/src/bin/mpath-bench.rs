//! mpath's benchmarks, run by `cargo xtask bench ...` (release build, as root).
//!
//! `datapath`: small UDP packets from the host namespace of a 4-NIC lab, in one run: no
//! program (the baseline), mpath spreading over 1, 2 and 4 NICs, and kernel ECMP multipath
//! routes with L4 hashing over the same NICs. Configurations are interleaved over several
//! rounds and the median is reported, so drift on the machine hits all of them alike.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    os::fd::AsRawFd,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::programs::{TestRun as _, TestRunOptions};
use mpath_common::NicInfo;
use mpath_ctl::{datapath::Datapath, spread::rebalance};
use mpath_lab::{Lab, ROUTER_NIC};
use mpath_tests::PinDir;

const SOURCE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 19);
const DESTINATION: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const NEXT_HOP: &str = "192.0.2.1";
const FIRST_PORT: u16 = 9000;
/// Distinct destination ports, i.e. flows.
const FLOWS: u16 = 64;
const PAYLOAD: usize = 18;
const BATCH: usize = 64;
const GROUP: u32 = 0;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Setup {
    Baseline,
    Mpath(usize),
    Ecmp(usize),
}

impl Setup {
    fn label(self) -> String {
        match self {
            Setup::Baseline => "no program (baseline)".into(),
            Setup::Mpath(n) => format!("mpath spreading, {n} NIC{}", if n > 1 { "s" } else { "" }),
            Setup::Ecmp(n) => format!("kernel ECMP (L4 hash), {n} NICs"),
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("datapath") => {
            let rounds = flag(&args, "--rounds").unwrap_or(5);
            let seconds = flag(&args, "--seconds").unwrap_or(1);
            let out = args
                .iter()
                .position(|a| a == "--out")
                .and_then(|i| args.get(i + 1))
                .map(PathBuf::from);
            datapath(rounds, Duration::from_secs(seconds), out)
        }
        _ => bail!("usage: mpath-bench datapath [--rounds N] [--seconds S] [--out BENCHMARKS.md]"),
    }
}

fn flag(args: &[String], name: &str) -> Option<u64> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1)?.parse().ok()
}

struct Bench {
    lab: Lab,
    datapath: Datapath,
    nics: Vec<(String, u32, [u8; 6])>,
    socket: UdpSocket,
    _pins: PinDir,
}

impl Bench {
    fn new() -> anyhow::Result<Self> {
        let mut builder = Lab::builder()
            .nics(4)
            .router_addrs(&["198.51.100.1/24"])
            .host_addr("h0", "192.0.2.19/24");
        for i in 1..4 {
            builder = builder.host_addr(&format!("h{i}"), &format!("192.0.2.{}/24", 19 + i));
        }
        let lab = builder.build()?;
        lab.host()
            .run(&["sysctl", "-qw", "net.ipv4.fib_multipath_hash_policy=1"])?;
        // Packets end at the switch: every port drops what it receives, and the host knows the
        // next hop's MAC without asking. The per-packet path is then the sender's stack, the
        // egress hook and the veth, which is what the configurations differ in.
        let link = lab
            .router()
            .ip(&["-o", "link", "show", "dev", ROUTER_NIC])?;
        let router_mac = link
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .context("router MAC")?
            .to_string();
        for nic in lab.nics() {
            lab.host().ip(&[
                "neigh",
                "replace",
                NEXT_HOP,
                "lladdr",
                &router_mac,
                "dev",
                &nic,
                "nud",
                "permanent",
            ])?;
            lab.drop_silently(&nic)?;
        }
        let pins = PinDir::new();
        let _inside = lab.host().enter()?;
        let datapath = Datapath::open(pins.path())?;
        let socket = UdpSocket::bind((SOURCE, 0))?;
        let nics = lab
            .nics()
            .into_iter()
            .map(|n| {
                let ifindex = lab.host().ifindex(&n)?;
                let mac = lab.mac(&n)?;
                Ok((n, ifindex, mac))
            })
            .collect::<anyhow::Result<_>>()?;
        drop(_inside);
        Ok(Bench {
            lab,
            datapath,
            nics,
            socket,
            _pins: pins,
        })
    }

    fn configure(&mut self, setup: Setup) -> anyhow::Result<()> {
        let host = self.lab.host();
        let _ = host.ip(&["route", "del", "198.51.100.0/24"]);
        for (_, ifindex, _) in &self.nics {
            self.datapath.detach(*ifindex)?;
            self.datapath.maps.remove_nic(*ifindex)?;
        }
        match setup {
            Setup::Baseline => {
                host.ip(&[
                    "route",
                    "add",
                    "198.51.100.0/24",
                    "via",
                    NEXT_HOP,
                    "dev",
                    "h0",
                ])?;
            }
            Setup::Mpath(n) => {
                host.ip(&[
                    "route",
                    "add",
                    "198.51.100.0/24",
                    "via",
                    NEXT_HOP,
                    "dev",
                    "h0",
                ])?;
                let _inside = host.enter()?;
                for (slot, (name, ifindex, mac)) in self.nics.iter().enumerate() {
                    self.datapath.attach(name)?;
                    let info = NicInfo {
                        slot: slot as u32,
                        group: GROUP,
                        mac: *mac,
                        ..Default::default()
                    };
                    self.datapath.maps.set_nic(*ifindex, info)?;
                }
                let usable: Vec<u32> = self.nics[..n].iter().map(|n| n.1).collect();
                let table = rebalance(&self.datapath.maps.table(GROUP)?, &usable);
                let macs: BTreeMap<u32, [u8; 6]> = self.nics.iter().map(|n| (n.1, n.2)).collect();
                self.datapath
                    .maps
                    .write_table(GROUP, &table, |i| macs[&i])?;
            }
            Setup::Ecmp(n) => {
                let mut args = vec!["route", "add", "198.51.100.0/24"];
                for (name, _, _) in &self.nics[..n] {
                    args.extend(["nexthop", "via", NEXT_HOP, "dev", name.as_str()]);
                }
                host.ip(&args)?;
            }
        }
        Ok(())
    }

    /// Sends UDP packets over `FLOWS` flows for `duration`; returns packets per second.
    fn blast(&self, duration: Duration) -> anyhow::Result<f64> {
        let payload = [0u8; PAYLOAD];
        let addrs: Vec<libc::sockaddr_in> = (0..BATCH)
            .map(|i| {
                let port = FIRST_PORT + (i as u16 % FLOWS);
                let a = SocketAddrV4::new(DESTINATION, port);
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
        let mut msgs: Vec<libc::mmsghdr> =
            (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
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
            let n = unsafe {
                libc::sendmmsg(self.socket.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0)
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ENOBUFS) || e.raw_os_error() == Some(libc::EAGAIN)
                {
                    continue;
                }
                return Err(e).context("sendmmsg");
            }
            sent += n as u64;
        }
        Ok(sent as f64 / start.elapsed().as_secs_f64())
    }
}

/// Test runs of the program alone per measurement.
const PROGRAM_RUNS: u32 = 1_000_000;

impl Bench {
    /// Average ns per run of the spreading program on a UDP frame leaving h0: with the flow's
    /// bucket on h0 itself, and on another NIC.
    fn program_cost(&mut self) -> anyhow::Result<(f64, f64)> {
        let h0 = self.nics[0].clone();
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
            let table = [owner; mpath_common::BUCKETS_PER_GROUP as usize];
            let macs: BTreeMap<u32, [u8; 6]> = self.nics.iter().map(|n| (n.1, n.2)).collect();
            self.datapath
                .maps
                .write_table(GROUP, &table, |i| macs[&i])?;
            let _inside = self.lab.host().enter()?;
            let mut opts = TestRunOptions::new();
            opts.data_in = Some(&frame);
            opts.ctx_in = Some(&ctx);
            opts.repeat = PROGRAM_RUNS;
            let result = self.datapath.spread()?.test_run(opts)?;
            Ok(result.duration.as_nanos() as f64)
        };
        let here = cost(h0.1)?;
        let away = cost(self.nics[1].1)?;
        Ok((here, away))
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn datapath(rounds: u64, duration: Duration, out: Option<PathBuf>) -> anyhow::Result<()> {
    let setups = [
        Setup::Baseline,
        Setup::Mpath(1),
        Setup::Mpath(2),
        Setup::Mpath(4),
        Setup::Ecmp(2),
        Setup::Ecmp(4),
    ];
    let mut bench = Bench::new()?;
    let mut pps: BTreeMap<Setup, Vec<f64>> = BTreeMap::new();
    for round in 1..=rounds {
        for &setup in &setups {
            bench.configure(setup)?;
            let rate = bench.blast(duration)?;
            eprintln!(
                "round {round}/{rounds}: {:<32} {rate:>12.0} packets/s",
                setup.label()
            );
            pps.entry(setup).or_default().push(rate);
        }
    }
    // Spreading really spread: in the last 4-NIC mpath run every NIC transmitted.
    bench.configure(Setup::Mpath(4))?;
    bench.blast(Duration::from_millis(200))?;
    for slot in 0..4 {
        let c = bench.datapath.maps.counters(slot)?;
        if c.tx_packets == 0 {
            bail!("NIC slot {slot} carried nothing while spreading over 4 NICs: {c:?}");
        }
    }
    let program_ns = bench.program_cost()?;
    bench.configure(Setup::Baseline)?;

    let base = median(pps.get_mut(&Setup::Baseline).expect("baseline measured"));
    let base_ns = 1e9 / base;
    let mut table = String::new();
    writeln!(
        table,
        "| configuration | packets/s (median of {rounds}) | ratio to baseline | ns/packet | added ns/packet |"
    )?;
    writeln!(table, "| --- | ---: | ---: | ---: | ---: |")?;
    for setup in setups {
        let rate = median(pps.get_mut(&setup).expect("measured"));
        let ns = 1e9 / rate;
        writeln!(
            table,
            "| {} | {rate:.0} | {:.3} | {ns:.0} | {:+.0} |",
            setup.label(),
            rate / base,
            ns - base_ns
        )?;
    }
    writeln!(
        table,
        "\nThe spreading program alone, run by the kernel on one UDP frame (BPF_PROG_TEST_RUN, \
         {PROGRAM_RUNS} runs, average): {:.0} ns when the flow stays on its NIC, {:.0} ns when \
         it is redirected (the redirect itself is not carried out by a test run).",
        program_ns.0, program_ns.1
    )?;
    println!("{table}");
    if let Some(path) = out {
        write_section(&path, "datapath", &table, rounds, duration)?;
        eprintln!("written to {}", path.display());
    }
    Ok(())
}

/// Replaces (or appends) the `## Benchmark: NAME` section of BENCHMARKS.md.
fn write_section(
    path: &PathBuf,
    name: &str,
    table: &str,
    rounds: u64,
    duration: Duration,
) -> anyhow::Result<()> {
    let existing = fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".into());
    let heading = format!("## Benchmark: {name}");
    let body = format!(
        "{heading}\n\n`cargo xtask bench {name}`: {PAYLOAD}-byte UDP payloads over {FLOWS} flows, \
         sent with sendmmsg from the host namespace of a 4-NIC veth lab to the switch, which \
         drops them (static next-hop neighbour, so no ARP), {rounds} interleaved rounds of {} s per configuration, on this machine \
         ({} CPUs). Throughput is sender-bound, so the added ns/packet is the cost of the \
         egress path (program, redirect, ECMP lookup) per packet.\n\n{table}\n",
        duration.as_secs_f64(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let mut sections: Vec<&str> = existing.split("\n## ").collect();
    let head = sections.remove(0).trim_end().to_string();
    let mut out = head + "\n\n";
    let mut replaced = false;
    for s in sections {
        if s.starts_with(&heading[3..]) {
            out.push_str(&body);
            replaced = true;
        } else {
            out.push_str("## ");
            out.push_str(s.trim_end());
            out.push_str("\n\n");
        }
    }
    if !replaced {
        out.push_str(&body);
    }
    fs::write(path, out.trim_end().to_string() + "\n")
        .with_context(|| format!("{}", path.display()))
}
