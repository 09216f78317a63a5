//! `bench datapath`, receiving: what the probe-reply matcher costs the host on bulk TCP coming
//! in through a group NIC, at tc ingress (the default) and as XDP (native and generic).
//!
//! The router sends to the host with iperf3 through a 1-NIC lab at MTU 1500 and 9000. What is
//! measured is the receiver's CPU time per Gbit: the iperf3 server's and that of the host NIC's
//! NAPI thread. A veth without NAPI, or one whose peer sends TSO super-packets, hands each
//! packet to the backlog of the CPU that sent it, which processes it in the sender's context:
//! the host's whole receive path (hooks, IP, TCP) would be billed to the router's iperf3
//! client. So both ends of h0's veth get GRO, threaded NAPI and TSO off, like a NIC that takes
//! frames off a wire into a poll loop of its own: h0's receive path then runs in one kernel
//! thread, `napi/h0-N`, whose CPU time is exact, and the ACKs it sends are forwarded (and
//! processed by the router) in the switch port's thread, not in h0's.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    fs,
    path::PathBuf,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::programs::{
    SchedClassifier, TcAttachType, XdpMode, tc::SchedClassifierLinkId, xdp::XdpLinkId,
};
use mpath_common::{BUCKETS_PER_GROUP, NIC_F_TEST_V4, NicInfo, Settings, program_names};
use mpath_ctl::datapath::{Datapath, ProbeRx};
use mpath_lab::Lab;
use mpath_tests::PinDir;

use super::{cpus, datapath::spread_of, load_average, write_section, yes};

const NIC: &str = "h0";
const DATA: &str = "192.0.2.19";
/// The NIC's test address, as mpathd would describe the NIC to the matcher.
const TEST: [u8; 4] = [192, 0, 2, 29];
const SLOT: u32 = 0;
const GROUP: u32 = 0;
const FLOWS: u32 = 4;
const MTUS: [u32; 2] = [1500, 9000];
const IPERF_PORT: &str = "5202";
/// The target: the tc matcher within this fraction of no program.
const MARGIN: f64 = 0.02;

/// What runs on h0's receive path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Config {
    None,
    /// `mpath_probe_rx` alone on tcx ingress.
    Tc,
    /// `mpath_probe_rx_xdp` in the driver.
    XdpNative,
    /// `mpath_probe_rx_xdp` as generic XDP.
    XdpGeneric,
    /// What a host running mpathd has: `Datapath::attach` with the tc matcher, which puts the
    /// spreading program on egress too, where the ACKs pass it.
    Mpathd,
}

const CONFIGS: [Config; 5] = [
    Config::None,
    Config::Tc,
    Config::XdpNative,
    Config::XdpGeneric,
    Config::Mpathd,
];

impl Config {
    fn label(self) -> &'static str {
        match self {
            Config::None => "no program",
            Config::Tc => "tc matcher (tcx ingress)",
            Config::XdpNative => "XDP matcher, native",
            Config::XdpGeneric => "XDP matcher, generic",
            Config::Mpathd => "as mpathd attaches: tc matcher + spreading on egress",
        }
    }

    /// What the kernel must show on h0 in this configuration: the XDP mode as `ip link`
    /// names it, then the programs on tcx ingress and egress.
    fn hooks(self) -> Hooks {
        let probe_rx = vec![program_names::PROBE_RX.to_string()];
        let (xdp, ingress, egress) = match self {
            Config::None => (None, vec![], vec![]),
            Config::Tc => (None, probe_rx, vec![]),
            Config::XdpNative => (Some("xdp"), vec![], vec![]),
            Config::XdpGeneric => (Some("xdpgeneric"), vec![], vec![]),
            Config::Mpathd => (None, probe_rx, vec![program_names::SPREAD.to_string()]),
        };
        Hooks {
            xdp,
            ingress,
            egress,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Hooks {
    xdp: Option<&'static str>,
    ingress: Vec<String>,
    egress: Vec<String>,
}

impl std::fmt::Display for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |p: &[String]| {
            if p.is_empty() {
                "-".to_string()
            } else {
                p.join(", ")
            }
        };
        write!(
            f,
            "ip link: {}; tcx ingress: {}; tcx egress: {}",
            self.xdp.unwrap_or("no xdp"),
            list(&self.ingress),
            list(&self.egress)
        )
    }
}

/// A program attached for one configuration, to take off before the next.
enum Attachment {
    Tc(SchedClassifierLinkId),
    Xdp(XdpLinkId),
    Mpathd,
}

/// One iperf3 run.
struct Run {
    /// Gbit/s, and Gbit received in all.
    gbit: f64,
    received_gbit: f64,
    /// Receiver CPU ms per Gbit received, and the NAPI thread's part of it.
    ms_per_gbit: f64,
    napi_ms_per_gbit: f64,
    /// Packets the matcher counted on h0.
    matched: u64,
}

/// What a configuration's programs cost by themselves.
struct Cost {
    runs_per_gbit: f64,
    ns_per_run: f64,
    ms_per_gbit: f64,
}

/// A 1-NIC lab at one MTU with the datapath loaded in its host namespace.
struct Rig {
    mtu: u32,
    datapath: Datapath,
    lab: Lab,
    ifindex: u32,
    /// h0's NAPI thread.
    napi: u32,
    attached: Option<Attachment>,
    _pins: PinDir,
}

impl Rig {
    fn new(mtu: u32) -> anyhow::Result<Self> {
        let lab = Lab::builder()
            .nics(1)
            .mtu(mtu)
            .host_addr(NIC, &format!("{DATA}/24"))
            .build()?;
        // A veth hands a packet to its peer's NAPI only when the sending end has TSO off;
        // otherwise to the sending CPU's backlog, processed in the sender's context.
        let port = lab.switch_port(NIC)?;
        lab.switch()
            .run(&["ethtool", "-K", &port, "gro", "on", "tso", "off"])?;
        lab.switch().run(&[
            "sh",
            "-c",
            &format!("echo 1 > /sys/class/net/{port}/threaded"),
        ])?;
        lab.host()
            .run(&["ethtool", "-K", NIC, "gro", "on", "tso", "off"])?;
        // The thread is named after the NIC, which every lab calls h0: ours is the new one.
        let before = napi_threads(NIC)?;
        lab.host().run(&[
            "sh",
            "-c",
            &format!("echo 1 > /sys/class/net/{NIC}/threaded"),
        ])?;
        let new: Vec<u32> = napi_threads(NIC)?.difference(&before).copied().collect();
        let [napi] = new[..] else {
            bail!("expected one new NAPI thread for {NIC}, found {new:?}");
        };
        let pins = PinDir::new();
        let host = lab.host();
        let _inside = host.enter()?;
        let mut datapath = Datapath::open(pins.path())?;
        let ifindex = host.ifindex(NIC)?;
        datapath.maps.set_settings(Settings {
            probe_key: [0x6d70_6174_6862_656e, 0x6368_7265_6365_6976],
        })?;
        datapath.maps.set_nic(
            ifindex,
            NicInfo {
                slot: SLOT,
                group: GROUP,
                flags: NIC_F_TEST_V4,
                test_v4: TEST,
                mac: lab.mac(NIC)?,
                ..Default::default()
            },
        )?;
        drop(_inside);
        Ok(Rig {
            mtu,
            datapath,
            lab,
            ifindex,
            napi,
            attached: None,
            _pins: pins,
        })
    }

    /// Takes the previous configuration's program off h0 and attaches `config`'s.
    fn configure(&mut self, config: Config) -> anyhow::Result<()> {
        let _inside = self.lab.host().enter()?;
        match self.attached.take() {
            Some(Attachment::Tc(id)) => self.datapath.probe_rx()?.detach(id)?,
            Some(Attachment::Xdp(id)) => self.datapath.probe_rx_xdp()?.detach(id)?,
            Some(Attachment::Mpathd) => self.datapath.detach(self.ifindex)?,
            None => {}
        }
        self.attached = match config {
            Config::None => None,
            Config::Tc => Some(Attachment::Tc(
                self.datapath
                    .probe_rx()?
                    .attach(NIC, TcAttachType::Ingress)?,
            )),
            Config::XdpNative | Config::XdpGeneric => {
                let mode = match config {
                    Config::XdpNative => XdpMode::Driver,
                    _ => XdpMode::Skb,
                };
                Some(Attachment::Xdp(
                    self.datapath.probe_rx_xdp()?.attach(NIC, mode)?,
                ))
            }
            Config::Mpathd => {
                self.datapath.attach(NIC, ProbeRx::Tc)?;
                let table = [self.ifindex; BUCKETS_PER_GROUP as usize];
                let mac = self.lab.mac(NIC)?;
                self.datapath.maps.write_table(GROUP, &table, |_| mac)?;
                Some(Attachment::Mpathd)
            }
        };
        drop(_inside);
        let hooks = self.hooks()?;
        if hooks != config.hooks() {
            bail!(
                "MTU {}, {}: h0 shows {hooks}, expected {}",
                self.mtu,
                config.label(),
                config.hooks()
            );
        }
        Ok(())
    }

    /// What the kernel shows on h0: the XDP mode in `ip -d link` and the tcx programs.
    fn hooks(&self) -> anyhow::Result<Hooks> {
        let link = self
            .lab
            .host()
            .ip(&["-j", "-d", "link", "show", "dev", NIC])?;
        let link: serde_json::Value = serde_json::from_str(&link).context("ip -j link")?;
        // XDP_ATTACHED_DRV and XDP_ATTACHED_SKB, as `ip link` shows them.
        let xdp = match link[0]["xdp"]["mode"].as_u64() {
            None => None,
            Some(1) => Some("xdp"),
            Some(2) => Some("xdpgeneric"),
            Some(other) => bail!("h0: XDP attach mode {other}"),
        };
        let _inside = self.lab.host().enter()?;
        let names = |attach_type| -> anyhow::Result<Vec<String>> {
            let (_, programs) = SchedClassifier::query_tcx(NIC, attach_type)?;
            Ok(programs
                .iter()
                .map(|p| p.name_as_str().unwrap_or("?").to_string())
                .collect())
        };
        Ok(Hooks {
            xdp,
            ingress: names(TcAttachType::Ingress)?,
            egress: names(TcAttachType::Egress)?,
        })
    }

    /// h0's NAPI thread's CPU time so far (ns); fails once the thread is no longer h0's.
    fn napi_ns(&self) -> anyhow::Result<u64> {
        let comm = fs::read_to_string(format!("/proc/{}/comm", self.napi)).unwrap_or_default();
        if !comm.starts_with(&format!("napi/{NIC}-")) {
            bail!("h0's NAPI thread {} is gone", self.napi);
        }
        cpu_ns(self.napi)
    }

    /// Run time and runs so far of the programs `config` attaches, as the kernel counts them
    /// while its statistics are on (`BPF_ENABLE_STATS`).
    fn program_time(&mut self, config: Config) -> anyhow::Result<(Duration, u64)> {
        let infos = match config {
            Config::None => vec![],
            Config::Tc => vec![self.datapath.probe_rx()?.info()?],
            Config::XdpNative | Config::XdpGeneric => vec![self.datapath.probe_rx_xdp()?.info()?],
            Config::Mpathd => vec![
                self.datapath.probe_rx()?.info()?,
                self.datapath.spread()?.info()?,
            ],
        };
        Ok(infos
            .iter()
            .fold((Duration::ZERO, 0), |(time, runs), info| {
                (time + info.run_time(), runs + info.run_count())
            }))
    }

    /// One more run of `config` with the kernel's BPF statistics on: its programs' own run time
    /// per Gbit received, and runs per Gbit. The statistics cost each run a clock read or
    /// two, which is why the rounds run without them.
    fn program_cost(&mut self, config: Config, duration: Duration) -> anyhow::Result<(Cost, u32)> {
        self.configure(config)?;
        let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)?;
        let (time, runs) = self.program_time(config)?;
        let (run, failed) = run_with_retries(self, duration)?;
        let (time_after, runs_after) = self.program_time(config)?;
        let runs = runs_after - runs;
        let cost = Cost {
            runs_per_gbit: runs as f64 / run.received_gbit,
            ns_per_run: (time_after - time).as_nanos() as f64 / runs.max(1) as f64,
            ms_per_gbit: (time_after - time).as_secs_f64() * 1e3 / run.received_gbit,
        };
        Ok((cost, failed))
    }

    /// One iperf3 run of [`FLOWS`] flows from the router to h0's address, for `duration`.
    fn run(&self, duration: Duration) -> anyhow::Result<Run> {
        let limit = (duration.as_secs() + 10).to_string();
        let server = Server(
            self.lab
                .host()
                .cmd("iperf3")
                .args(["-s", "-B", DATA, "-p", IPERF_PORT])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("iperf3 server (apt-get install iperf3)")?,
        );
        // `ip netns exec` execs iperf3 in its own process: its CPU time is the server's.
        let deadline = Instant::now() + Duration::from_secs(5);
        while fs::read_to_string(format!("/proc/{}/comm", server.0.id()))?.trim() != "iperf3" {
            if Instant::now() > deadline {
                bail!("iperf3 server did not start");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let seconds = duration.as_secs().to_string();
        let flows = FLOWS.to_string();
        loop {
            let counted = self.datapath.maps.counters(SLOT)?.rx_packets;
            let (cpu, napi) = (cpu_ns(server.0.id())?, self.napi_ns()?);
            let output = self
                .lab
                .router()
                .cmd("timeout")
                .args([&limit, "iperf3", "-c", DATA, "-p", IPERF_PORT])
                .args(["-P", &flows, "-t", &seconds, "-J"])
                .output()
                .context("iperf3 client")?;
            let json: serde_json::Value =
                serde_json::from_slice(&output.stdout).unwrap_or_default();
            if !output.status.success() || !json["error"].is_null() {
                // The server may not listen yet.
                if Instant::now() > deadline {
                    bail!(
                        "iperf3 client failed ({}): {}",
                        output.status,
                        json["error"]
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            let cpu = cpu_ns(server.0.id())? - cpu;
            let napi = self.napi_ns()? - napi;
            let matched = self.datapath.maps.counters(SLOT)?.rx_packets - counted;
            let received = &json["end"]["sum_received"];
            let bytes = received["bytes"]
                .as_f64()
                .context("iperf3: no end.sum_received.bytes")?;
            let bits = received["bits_per_second"]
                .as_f64()
                .context("iperf3: no end.sum_received.bits_per_second")?;
            let gbits = bytes * 8.0 / 1e9;
            return Ok(Run {
                gbit: bits / 1e9,
                received_gbit: gbits,
                ms_per_gbit: (cpu + napi) as f64 / 1e6 / gbits,
                napi_ms_per_gbit: napi as f64 / 1e6 / gbits,
                matched,
            });
        }
    }
}

/// The iperf3 server, stopped when dropped (a run that fails leaves none behind).
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _: Result<_, _> = self.0.kill();
        let _: Result<_, _> = self.0.wait();
    }
}

/// Pids of the threaded-NAPI kernel threads of NICs named `nic` (`napi/NIC-ID`), in any
/// namespace.
fn napi_threads(nic: &str) -> anyhow::Result<BTreeSet<u32>> {
    let prefix = format!("napi/{nic}-");
    let mut pids = BTreeSet::new();
    for entry in fs::read_dir("/proc")? {
        let Ok(pid) = entry?.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.starts_with(&prefix)) {
            pids.insert(pid);
        }
    }
    Ok(pids)
}

/// CPU time (ns) of every thread of process `pid` so far: the scheduler's own count
/// (`/proc/PID/task/TID/schedstat`), which includes softirq work done in their context.
fn cpu_ns(pid: u32) -> anyhow::Result<u64> {
    let mut total = 0;
    let tasks = format!("/proc/{pid}/task");
    for entry in fs::read_dir(&tasks).with_context(|| tasks.clone())? {
        let path = entry?.path().join("schedstat");
        let stat = fs::read_to_string(&path).with_context(|| path.display().to_string())?;
        total += stat
            .split_whitespace()
            .next()
            .and_then(|ns| ns.parse::<u64>().ok())
            .with_context(|| format!("{}: {stat:?}", path.display()))?;
    }
    Ok(total)
}

/// Tries of one iperf3 run before the benchmark gives up: now and then a run stalls until its
/// time limit (iperf3 3.12); such a run is repeated and counted.
const IPERF_TRIES: u32 = 3;

fn run_with_retries(rig: &Rig, duration: Duration) -> anyhow::Result<(Run, u32)> {
    let mut failed = 0;
    loop {
        match rig.run(duration) {
            Ok(run) => return Ok((run, failed)),
            Err(e) if failed + 1 < IPERF_TRIES => {
                eprintln!("iperf3 run failed, repeating it: {e:#}");
                failed += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// `rounds` interleaved rounds of every configuration at every MTU, the order rotated each
/// round, `duration` per iperf3 run; the table goes to `out`'s receive section.
pub(crate) fn receive(rounds: u64, duration: Duration, out: Option<PathBuf>) -> anyhow::Result<()> {
    let load_before = load_average();
    let mut rigs = MTUS
        .map(Rig::new)
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    let setups: Vec<(usize, Config)> = (0..rigs.len())
        .flat_map(|m| CONFIGS.map(|c| (m, c)))
        .collect();
    let mut runs: BTreeMap<(usize, Config), Vec<Run>> = BTreeMap::new();
    let mut proofs: BTreeMap<(usize, Config), String> = BTreeMap::new();
    let mut repeated = 0;
    for round in 0..rounds {
        let mut order = setups.clone();
        order.rotate_left(round as usize % setups.len());
        for (m, config) in order {
            let rig = &mut rigs[m];
            rig.configure(config)?;
            let (run, failed) = run_with_retries(rig, duration)?;
            repeated += failed;
            // The matcher counts every packet it sees: none without it, some with it.
            if (config == Config::None) != (run.matched == 0) {
                bail!(
                    "MTU {}, {}: the matcher counted {} packets",
                    rig.mtu,
                    config.label(),
                    run.matched
                );
            }
            eprintln!(
                "receive round {}/{rounds}: MTU {} {:<54} {:>6.3} Gbit/s {:>6.1} ms/Gbit \
                 ({:.1} NAPI) {} matched",
                round + 1,
                rig.mtu,
                config.label(),
                run.gbit,
                run.ms_per_gbit,
                run.napi_ms_per_gbit,
                run.matched
            );
            proofs.insert((m, config), rig.hooks()?.to_string());
            runs.entry((m, config)).or_default().push(run);
        }
    }
    let mut costs = BTreeMap::new();
    for (m, rig) in rigs.iter_mut().enumerate() {
        for config in CONFIGS.into_iter().filter(|c| *c != Config::None) {
            let (cost, failed) = rig.program_cost(config, duration)?;
            repeated += failed;
            costs.insert((m, config), cost);
        }
        rig.configure(Config::None)?;
    }
    let load_after = load_average();
    let table = tables(&runs, &proofs, &costs, duration, repeated)?;
    println!("{table}");
    if let Some(path) = out {
        let body = format!(
            "`cargo xtask bench datapath` (alone: `--only receive`): bulk TCP into the host \
             through a group NIC, iperf3 ({FLOWS} flows, {} s per run) from the lab's router to \
             the data address {DATA} on h0, in a 1-NIC veth lab at MTU 1500 and at MTU 9000. \
             Configurations: no program; the tc matcher (`mpath_probe_rx` alone on tcx \
             ingress); the XDP matcher (`mpath_probe_rx_xdp`, multi-buffer) in native mode and \
             in generic mode; and h0 as mpathd attaches it (`Datapath::attach` with \
             `probe_rx = \"tc\"`: the tc matcher and the spreading program on egress, which \
             the ACKs pass, with a bucket table on h0). In every program row h0 is described \
             in the maps as mpathd describes it (slot, group, MAC, test address, probe key). \
             Each configuration runs in {rounds} interleaved rounds over both MTUs, the order \
             rotated each round.\n\n\
             Receiver CPU: a veth hands each packet to the receive backlog of the CPU that \
             sends it unless its peer has NAPI and the packet is a frame GRO may aggregate \
             (not a TSO super-packet), and that backlog is processed in the sender's context \
             (this kernel has no CONFIG_IRQ_TIME_ACCOUNTING, so softirq work is billed to \
             whatever task runs it): the host's whole receive path, hooks, IP and TCP, would \
             be billed to the router's iperf3 client. So both ends of h0's veth have GRO on, \
             TSO off and threaded NAPI, like a NIC that takes frames off a wire into a poll \
             loop of its own: the switch port segments the router's super-packets into \
             MTU-sized frames (in the sender's context, not counted) and h0's receive path \
             (the XDP program, GRO, tc ingress, IP and TCP up to the socket, and the ACKs \
             sent from there) runs in one kernel thread, `napi/h0-N`; the ACKs are forwarded \
             and processed by the router in the switch port's thread, not in h0's. The \
             receiver's CPU is the scheduler's run time (schedstat) of h0's NAPI thread and \
             of the iperf3 server process (the copy to user space, the segments that arrived \
             while it held the socket, its window updates), from just before the client \
             starts to just after it ends, per Gbit received. The matcher's packet count \
             shows where it runs: tc ingress after GRO, XDP on every frame; generic XDP \
             also turns GRO off on the NIC (`netif_elide_gro`), so TCP gets every frame. \
             Each row's programs are checked in every round (`ip -d link` for the XDP mode, \
             the tcx query for the tc programs), and the matcher's rx counter \
             (`maps.counters(slot).rx_packets`) must grow in every program row and stay put \
             without one. {} CPUs, shared with other engineers' builds and tests (load \
             average {load_before} before, {load_after} after): the per-round min / max show \
             the noise.\n\n{table}",
            duration.as_secs(),
            cpus(),
        );
        write_section(&path, "Benchmark: datapath, receiving", &body)?;
        eprintln!("written to {}", path.display());
    }
    Ok(())
}

fn tables(
    runs: &BTreeMap<(usize, Config), Vec<Run>>,
    proofs: &BTreeMap<(usize, Config), String>,
    costs: &BTreeMap<(usize, Config), Cost>,
    duration: Duration,
    repeated: u32,
) -> anyhow::Result<String> {
    let mut t = String::new();
    writeln!(
        t,
        "| MTU | configuration | Gbit/s min / median / max | receiver CPU ms per Gbit min / median / max | of it h0's NAPI thread, median | ratio to no program: Gbit/s, CPU per Gbit (medians) | packets the matcher saw per run, median | on h0 (checked each round) |"
    )?;
    writeln!(t, "| ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |")?;
    for (m, mtu) in MTUS.iter().enumerate() {
        let base = &runs[&(m, Config::None)];
        let base_gbit = spread_of(&base.iter().map(|r| r.gbit).collect::<Vec<_>>()).1;
        let base_ms = spread_of(&base.iter().map(|r| r.ms_per_gbit).collect::<Vec<_>>()).1;
        for config in CONFIGS {
            let rows = &runs[&(m, config)];
            let of = |f: fn(&Run) -> f64| spread_of(&rows.iter().map(f).collect::<Vec<_>>());
            let gbit = of(|r| r.gbit);
            let ms = of(|r| r.ms_per_gbit);
            let napi = of(|r| r.napi_ms_per_gbit).1;
            let matched = of(|r| r.matched as f64).1;
            writeln!(
                t,
                "| {mtu} | {} | {:.2} / {:.2} / {:.2} | {:.0} / {:.0} / {:.0} | {napi:.0} | {:.3}, {:.3} | {matched:.0} | {} |",
                config.label(),
                gbit.0,
                gbit.1,
                gbit.2,
                ms.0,
                ms.1,
                ms.2,
                gbit.1 / base_gbit,
                ms.1 / base_ms,
                proofs[&(m, config)],
            )?;
        }
    }
    writeln!(
        t,
        "\nTarget: the tc matcher within {:.0} % of no program in receiver CPU per Gbit and in \
         throughput (per round, the tc row over the no-program row of the same round and MTU; \
         min / median / max; met when the median CPU ratio is at most {:.2} and the median \
         throughput ratio at least {:.2}):\n",
        MARGIN * 100.0,
        1.0 + MARGIN,
        1.0 - MARGIN
    )?;
    writeln!(
        t,
        "| MTU | CPU per Gbit, tc / none per round | Gbit/s, tc / none per round | met |"
    )?;
    writeln!(t, "| ---: | ---: | ---: | --- |")?;
    for (m, mtu) in MTUS.iter().enumerate() {
        let (tc, none) = (&runs[&(m, Config::Tc)], &runs[&(m, Config::None)]);
        let ratio = |f: fn(&Run) -> f64| {
            spread_of(
                &tc.iter()
                    .zip(none)
                    .map(|(a, b)| f(a) / f(b))
                    .collect::<Vec<_>>(),
            )
        };
        let cpu = ratio(|r| r.ms_per_gbit);
        let gbit = ratio(|r| r.gbit);
        let met = cpu.1 <= 1.0 + MARGIN && gbit.1 >= 1.0 - MARGIN;
        // Rounds that disagree by more than the margin cannot settle it either way.
        let widest = (cpu.2 - cpu.0).max(gbit.2 - gbit.0);
        let noise = if widest > 2.0 * MARGIN {
            format!(
                ", not settled: the rounds' ratios span up to {:.0} %, more than the {:.0} % \
                 margin",
                widest * 100.0,
                MARGIN * 100.0
            )
        } else {
            String::new()
        };
        writeln!(
            t,
            "| {mtu} | {:.3} / {:.3} / {:.3} | {:.3} / {:.3} / {:.3} | {}{noise} |",
            cpu.0,
            cpu.1,
            cpu.2,
            gbit.0,
            gbit.1,
            gbit.2,
            yes(met)
        )?;
    }
    writeln!(
        t,
        "\nThe programs' own run time, as the kernel counts it (BPF_ENABLE_STATS, on for one \
         more run per row after the rounds, since it costs each program run a clock read or \
         two; as mpathd attaches: the matcher and the spreading program together), against \
         the median receiver CPU per Gbit without a program:\n"
    )?;
    writeln!(
        t,
        "| MTU | configuration | program runs per Gbit | ns per run | program ms per Gbit | share of no program's receiver CPU per Gbit |"
    )?;
    writeln!(t, "| ---: | --- | ---: | ---: | ---: | ---: |")?;
    for (&(m, config), cost) in costs {
        let base = &runs[&(m, Config::None)];
        let base_ms = spread_of(&base.iter().map(|r| r.ms_per_gbit).collect::<Vec<_>>()).1;
        writeln!(
            t,
            "| {} | {} | {:.0} | {:.0} | {:.3} | {:.2} % |",
            MTUS[m],
            config.label(),
            cost.runs_per_gbit,
            cost.ns_per_run,
            cost.ms_per_gbit,
            100.0 * cost.ms_per_gbit / base_ms
        )?;
    }
    writeln!(
        t,
        "\n{} s per run; iperf3 runs that stalled and were repeated: {repeated}.",
        duration.as_secs()
    )?;
    Ok(t)
}
