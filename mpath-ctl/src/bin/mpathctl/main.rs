//! mpathctl: status views and commands for mpathd (ipmpstat and if_mpadm for Linux).
//!
//! Exit codes: 0 success, 1 refused or failed, 2 bad usage (clap), 3 mpathd not running.

#[cfg(test)]
mod json_fields;
mod table;

use std::{
    collections::BTreeMap,
    ffi::CStr,
    io::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser, Subcommand};
use mpath_common::{BUCKETS_PER_GROUP, MAX_GROUPS, RejectReason, sources::SourceClass};
use mpath_ctl::{
    api::control::{self, ControlError, Reply, Request},
    api::manpages,
    api::views::{ProbeRow, Status},
    config::{self, Config},
    core::state::InterfaceFlag,
    datapath::{maps::Maps, pins::PinLayout},
};
use serde::Serialize;
use table::{Table, UnknownField};

#[derive(Parser)]
#[command(
    name = "mpathctl",
    version,
    about = "Show and control mpathd's IP multipathing groups"
)]
struct Cli {
    /// mpathd's configuration, read for the control socket and pin directory paths (when it
    /// is missing or unreadable, the running mpathd's from /run/mpath/mpathd.paths).
    #[arg(long, global = true, default_value = config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Control socket (overrides the configuration's).
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// Print JSON for programs instead of columns.
    #[arg(long, global = true)]
    json: bool,
    /// Columns to print, comma-separated (e.g. -o interface,state).
    #[arg(short = 'o', long = "output", global = true, value_name = "FIELDS")]
    fields: Option<String>,
    /// Machine-parsable output, as ipmpstat -P: no header, the fields of `-o` separated by
    /// colons (a colon or backslash in a value is escaped with a backslash).
    #[arg(
        short = 'P',
        long = "parsable",
        global = true,
        requires = "fields",
        conflicts_with = "json"
    )]
    parsable: bool,
    /// Addresses as numbers, as ipmpstat -n: mpathctl never looks names up, so this is what
    /// it always prints; accepted for scripts written for ipmpstat.
    #[arg(short = 'n', long = "numeric", global = true)]
    numeric: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Groups: state, failure detection time, members (ipmpstat -g).
    Groups,
    /// Interfaces: activity, flags, link, probe and overall state (ipmpstat -i).
    Interfaces,
    /// Data addresses: state, inbound and outbound NICs (ipmpstat -a).
    Addresses,
    /// Probe targets per interface (ipmpstat -t).
    Targets,
    /// Multicast groups of out-of-use interfaces joined on the interfaces that took over.
    Memberships,
    /// Stream each probe as it completes, until interrupted (ipmpstat -p).
    Probes,
    /// Take an interface out of use; its addresses move to another (if_mpadm -d).
    Offline { interface: String },
    /// Bring an offlined interface back (if_mpadm -r).
    Online { interface: String },
    /// Make mpathd read its configuration again and wait for the result: fails (exit 1,
    /// with the reasons) when mpathd refused the file and kept the running configuration.
    /// The unit's ExecReload=, so that `systemctl reload mpathd` fails too.
    Reload,
    /// Dump the pinned BPF maps (works without mpathd running).
    Maps,
    /// Print a shell completion script.
    Completions { shell: clap_complete::Shell },
    /// Write the manual pages (mpathctl.1 and one per command) into DIR (for packaging).
    #[command(hide = true)]
    WriteMan { dir: PathBuf },
}

/// The parts of mpathctl(1) that clap does not know: the fields of `--json`, held to the
/// views by a test, and the rest.
const MAN_EXTRA: &str = concat!(
    include_str!("json.roff"),
    r#".SH EXIT STATUS
0 success, 1 refused or failed, 2 bad usage, 3 mpathd not running.
.SH FILES
.TP
\fI/etc/mpath/mpathd.toml\fR
Read for the control socket and pin directory paths.
.TP
\fI/run/mpath/mpathd.paths\fR
The paths the running mpathd uses, read when the configuration is missing or unreadable.
.SH SEE ALSO
\fBmpathd\fR(8), \fBmpathd.toml\fR(5), /usr/share/doc/mpath/README.md
"#
);

fn main() -> ExitCode {
    // Output into a closed pipe (`mpathctl probes | head`) ends mpathctl quietly, as it ends
    // other Unix tools, instead of a panic on the failed write.
    // SAFETY: resetting a signal to its default action before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mpathctl: {e:#}");
            if e.downcast_ref::<UnknownField>().is_some() {
                return ExitCode::from(2);
            }
            match e.downcast_ref::<ControlError>() {
                Some(ControlError::NotRunning(_)) => ExitCode::from(3),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

/// The socket and pin directory: from the flags, else from the configuration, else from the
/// hint a running mpathd leaves in /run (its configuration may be elsewhere, or have a typo
/// it has not loaded), else the defaults. A configuration that cannot be read does not stop
/// the views: mpathctl says so and carries on.
fn paths(cli: &Cli) -> (PathBuf, PathBuf) {
    let needs_config = cli.socket.is_none() || matches!(cli.command, Cmd::Maps);
    let (socket, pin_dir) = if !needs_config {
        let defaults = config::DaemonConfig::default();
        (defaults.socket, defaults.bpf_pin_dir)
    } else {
        match cli.config.exists().then(|| Config::load(&cli.config, None)) {
            Some(Ok(c)) => (c.daemon.socket, c.daemon.bpf_pin_dir),
            Some(Err(e)) => {
                let (socket, pin_dir, whence) = fallback();
                eprintln!(
                    "mpathctl: warning: {e}; using the {whence} socket {} and pin directory {}",
                    socket.display(),
                    pin_dir.display()
                );
                (socket, pin_dir)
            }
            None => {
                let (socket, pin_dir, _) = fallback();
                (socket, pin_dir)
            }
        }
    };
    (cli.socket.clone().unwrap_or(socket), pin_dir)
}

/// The running mpathd's paths from its hint, else the defaults, and which it was.
fn fallback() -> (PathBuf, PathBuf, &'static str) {
    match control::Hint::read(Path::new(control::HINT_PATH)) {
        Some(hint) => (hint.socket, hint.bpf_pin_dir, "running mpathd's"),
        None => {
            let defaults = config::DaemonConfig::default();
            (defaults.socket, defaults.bpf_pin_dir, "default")
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let (socket, pin_dir) = paths(cli);
    match &cli.command {
        Cmd::Groups | Cmd::Interfaces | Cmd::Addresses | Cmd::Targets | Cmd::Memberships => {
            let status = match control::request(&socket, &Request::Status {})? {
                Reply::Status(s) => s,
                other => anyhow::bail!("unexpected reply {other:?}"),
            };
            show_status(cli, &status)
        }
        Cmd::Probes => stream_probes(cli, &socket),
        Cmd::Offline { interface } => command(
            &socket,
            Request::Offline {
                interface: interface.clone(),
            },
        ),
        Cmd::Online { interface } => command(
            &socket,
            Request::Online {
                interface: interface.clone(),
            },
        ),
        Cmd::Reload => command(&socket, Request::Reload {}),
        Cmd::Maps => show_maps(cli, &pin_dir),
        Cmd::WriteMan { dir } => manpages::write(
            Cli::command(),
            manpages::Section::UserCommands,
            MAN_EXTRA,
            dir,
        )
        .with_context(|| format!("writing the manual pages into {}", dir.display())),
        Cmd::Completions { shell } => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "mpathctl",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    }
}

fn command(socket: &Path, request: Request) -> anyhow::Result<()> {
    match control::request(socket, &request)? {
        Reply::Done { message } => {
            println!("{message}");
            Ok(())
        }
        Reply::Refused { message } => anyhow::bail!("{message}"),
        other => anyhow::bail!("unexpected reply {other:?}"),
    }
}

fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "--".into()
    } else {
        items.join(",")
    }
}

fn show_status(cli: &Cli, status: &Status) -> anyhow::Result<()> {
    let table = match &cli.command {
        Cmd::Groups if cli.json => return print_json(&status.groups),
        Cmd::Interfaces if cli.json => return print_json(&status.interfaces),
        Cmd::Addresses if cli.json => return print_json(&status.addresses),
        Cmd::Targets if cli.json => return print_json(&status.targets),
        Cmd::Memberships if cli.json => return print_json(&status.memberships),
        Cmd::Groups => Table {
            columns: &["GROUP", "STATE", "FDT", "INTERFACES"],
            rows: status
                .groups
                .iter()
                .map(|g| {
                    let mut members = g.active.clone();
                    if !g.inactive.is_empty() {
                        members.push(format!("({})", g.inactive.join(" ")));
                    }
                    if !g.unusable.is_empty() {
                        members.push(format!("[{}]", g.unusable.join(" ")));
                    }
                    vec![
                        g.group.clone(),
                        g.state.to_string(),
                        format!("{:.2}s", g.fdt_ms as f64 / 1000.0),
                        members.join(" "),
                    ]
                })
                .collect(),
        },
        Cmd::Interfaces => Table {
            columns: &[
                "INTERFACE",
                "ACTIVE",
                "GROUP",
                "FLAGS",
                "LINK",
                "PROBE",
                "PROBE4",
                "PROBE6",
                "STATE",
                "UNUSABLE",
            ],
            rows: status
                .interfaces
                .iter()
                .map(|i| {
                    vec![
                        i.interface.clone(),
                        if i.active { "yes" } else { "no" }.into(),
                        if i.group.is_empty() {
                            "--".into()
                        } else {
                            i.group.clone()
                        },
                        ipmpstat_flags(&i.flags),
                        i.link.to_string(),
                        i.probe.to_string(),
                        i.probe_ipv4.map_or("--".into(), |p| p.to_string()),
                        i.probe_ipv6.map_or("--".into(), |p| p.to_string()),
                        i.state.to_string(),
                        i.unusable.map_or("--".into(), |r| r.to_string()),
                    ]
                })
                .collect(),
        },
        Cmd::Addresses => Table {
            columns: &["ADDRESS", "STATE", "GROUP", "INBOUND", "OUTBOUND"],
            rows: status
                .addresses
                .iter()
                .map(|a| {
                    vec![
                        a.address.clone(),
                        a.state.to_string(),
                        a.group.clone(),
                        a.inbound.clone().unwrap_or_else(|| "--".into()),
                        if a.outbound.is_empty() {
                            "--".into()
                        } else {
                            a.outbound.join(" ")
                        },
                    ]
                })
                .collect(),
        },
        Cmd::Targets => Table {
            columns: &["INTERFACE", "MODE", "TESTADDR", "TARGETS"],
            rows: status
                .targets
                .iter()
                .map(|t| {
                    vec![
                        t.interface.clone(),
                        t.mode.to_string(),
                        t.test_address.map_or("--".into(), |a| a.to_string()),
                        if t.targets.is_empty() {
                            "--".into()
                        } else {
                            t.targets
                                .iter()
                                .map(|a| a.to_string())
                                .collect::<Vec<_>>()
                                .join(" ")
                        },
                    ]
                })
                .collect(),
        },
        Cmd::Memberships => Table {
            columns: &["ADDRESS", "GROUP", "FROM", "ON"],
            rows: status
                .memberships
                .iter()
                .map(|m| {
                    vec![
                        m.address.to_string(),
                        m.group.clone(),
                        m.from.clone(),
                        m.on.clone(),
                    ]
                })
                .collect(),
        },
        _ => unreachable!("only status views come here"),
    };
    print!("{}", render(cli, &table)?);
    Ok(())
}

/// The table as the flags ask: columns for people, or colon-separated for scripts (`-P`).
fn render(cli: &Cli, table: &Table) -> anyhow::Result<String> {
    match (&cli.fields, cli.parsable) {
        (Some(fields), true) => table.render_parsable(fields),
        (fields, _) => table.render(fields.as_deref()),
    }
}

/// ipmpstat's FLAGS column: one position per flag, `-` where it is not set. mpathd sets `i`
/// (inactive), `s` (standby) and `h` (offline for a duplicate hardware address), and adds
/// `x` (offline: mpathd's programs are not attached); `m`, `b` and `M` (nominated for IPv4
/// multicast, broadcast and IPv6 multicast) and `d` (down) are Solaris kernel states mpathd
/// does not track, always `-`.
fn ipmpstat_flags(flags: &[InterfaceFlag]) -> String {
    [
        (Some(InterfaceFlag::Inactive), 'i'),
        (Some(InterfaceFlag::Standby), 's'),
        (None, 'm'),
        (None, 'b'),
        (None, 'M'),
        (None, 'd'),
        (Some(InterfaceFlag::DuplicateMac), 'h'),
        (Some(InterfaceFlag::NoDatapath), 'x'),
    ]
    .iter()
    .map(|(flag, letter)| match flag {
        Some(flag) if flags.contains(flag) => *letter,
        _ => '-',
    })
    .collect()
}

fn us(v: Option<u64>) -> String {
    v.map_or("--".into(), |us| format!("{:.2}ms", us as f64 / 1000.0))
}

fn stream_probes(cli: &Cli, socket: &Path) -> anyhow::Result<()> {
    const COLUMNS: &[&str] = &[
        "TIME",
        "INTERFACE",
        "PROBE",
        "NETRTT",
        "RTT",
        "RTTAVG",
        "RTTDEV",
        "TARGET",
    ];
    // ipmpstat -p's widths: a stream's rows are rendered one at a time and must line up.
    const WIDTHS: &[usize] = &[8, 15, 10, 8, 8, 8, 8, 0];
    // TIME counts from this command's start, as ipmpstat's does.
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.as_millis() as u64);
    let row = |p: &ProbeRow| {
        vec![
            format!(
                "{:.2}s",
                p.time_unix_ms.saturating_sub(started) as f64 / 1000.0
            ),
            p.interface.clone(),
            p.seq.to_string(),
            us(p.net_rtt_us),
            us(p.rtt_us),
            us(p.rtt_avg_us),
            us(p.rtt_dev_us),
            p.target.to_string(),
        ]
    };
    let mut first = true;
    let mut failure = None;
    control::call(socket, &Request::Probes {}, |reply| {
        let Reply::Probe(p) = reply else {
            failure = Some(format!("unexpected reply {reply:?}"));
            return false;
        };
        let text = if cli.json {
            serde_json::to_string(&p)
                .map(|s| s + "\n")
                .map_err(anyhow::Error::from)
        } else {
            let table = Table {
                columns: COLUMNS,
                rows: vec![row(&p)],
            };
            let rendered = match (&cli.fields, cli.parsable) {
                (Some(fields), true) => table.render_parsable(fields),
                (fields, _) => table.render_padded(fields.as_deref(), WIDTHS),
            };
            rendered.map(|t| {
                if cli.parsable {
                    return t;
                }
                let mut lines = t.lines();
                let header = lines.next().unwrap_or_default().to_string();
                let body: String = lines.collect::<Vec<_>>().join("\n") + "\n";
                if std::mem::take(&mut first) {
                    header + "\n" + &body
                } else {
                    body
                }
            })
        };
        match text {
            Ok(t) => std::io::stdout().write_all(t.as_bytes()).is_ok(),
            Err(e) => {
                failure = Some(e.to_string());
                false
            }
        }
    })?;
    match failure {
        Some(f) => anyhow::bail!(f),
        None => Ok(()),
    }
}

/// `mpathctl maps --json` output.
#[derive(Serialize)]
struct MapsDump {
    nics: Vec<NicDump>,
    /// Per group id: buckets owned by each NIC (by name).
    buckets: BTreeMap<u32, BTreeMap<String, u32>>,
    sources: Vec<SourceDump>,
    /// The destinations the source hook knows: the group id serving each, none where it
    /// leaves the source to the kernel.
    source_routes: BTreeMap<String, Option<u32>>,
}

/// What the source hook offers one group's sockets, and what it did.
#[derive(Serialize)]
struct SourceDump {
    group: u32,
    ipv4: Vec<IpAddr>,
    global: Vec<IpAddr>,
    unique_local: Vec<IpAddr>,
    chosen: u64,
    bind_failed: u64,
}

#[derive(Serialize)]
struct NicDump {
    ifindex: u32,
    name: String,
    group: u32,
    slot: u32,
    /// `EGRESS_F_ROUTED`: the kernel's routes place this NIC's flows; no redirect.
    routed: bool,
    /// `EGRESS_F_NO_CARRIER`: the carrier hook saw the driver lose the carrier; the NIC's
    /// packets go to their flows' bucket NICs.
    carrier_lost: bool,
    test_v4: Option<Ipv4Addr>,
    test_v6: Option<Ipv6Addr>,
    tx_packets: u64,
    tx_bytes: u64,
    redirected_packets: u64,
    rx_packets: u64,
    probe_replies: u64,
    probe_replies_lost: u64,
    /// Probes sent with a wrong checksum (the fix-up after their send stamp failed): lost.
    probe_checksum_failed: u64,
    /// Link-layer probes of the group's alternates this NIC answered (transitive probing).
    link_probes_answered: u64,
    /// Matched replies dropped over the NIC's reply budget (a flood on this NIC).
    replies_over_budget: u64,
    rejected: BTreeMap<&'static str, u64>,
    last_reply: Option<LastReply>,
}

#[derive(Serialize)]
struct LastReply {
    seq: u32,
    /// The target of an ICMP probe.
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<IpAddr>,
    /// The NIC that answered a link-layer probe.
    #[serde(skip_serializing_if = "Option::is_none")]
    responder: Option<String>,
    received_ns: u64,
}

fn ifname(ifindex: u32) -> String {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: `buf` has IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr().cast()) };
    if p.is_null() {
        return format!("#{ifindex}");
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

fn show_maps(cli: &Cli, pin_dir: &Path) -> anyhow::Result<()> {
    let maps_dir = PinLayout::new(pin_dir).maps();
    let maps = Maps::open_pinned(&maps_dir).context("reading the pinned datapath")?;
    let mut nics = Vec::new();
    for (ifindex, info) in maps.nics()? {
        let c = maps.counters(info.slot)?;
        let egress = maps.egress_nic(ifindex)?;
        nics.push(NicDump {
            ifindex,
            name: ifname(ifindex),
            group: info.group,
            slot: info.slot,
            routed: egress.is_routed(),
            carrier_lost: !egress.has_carrier(),
            test_v4: info.ipv4_test(),
            test_v6: info.ipv6_test(),
            tx_packets: c.tx_packets,
            tx_bytes: c.tx_bytes,
            redirected_packets: c.redirected_packets,
            rx_packets: c.rx_packets,
            probe_replies: c.probe_replies,
            probe_replies_lost: c.probe_replies_lost,
            probe_checksum_failed: c.probe_checksum_failed,
            link_probes_answered: c.link_probes_answered,
            replies_over_budget: maps.replies_over_budget(info.slot)?,
            rejected: RejectReason::ALL
                .iter()
                .map(|r| (r.label(), c.rejected[*r as usize]))
                .collect(),
            last_reply: maps.last_reply(info.slot)?.map(|r| LastReply {
                seq: r.seq,
                target: r.responder().is_none().then(|| r.target()),
                responder: r.responder().map(|(ifindex, _)| ifname(ifindex)),
                received_ns: r.received_ns,
            }),
        });
    }
    let mut buckets = BTreeMap::new();
    for group in 0..MAX_GROUPS {
        let table = maps.table(group)?;
        if table.iter().all(|&i| i == 0) {
            continue;
        }
        let mut owners: BTreeMap<String, u32> = BTreeMap::new();
        for ifindex in table {
            *owners.entry(ifname(ifindex)).or_default() += 1;
        }
        buckets.insert(group, owners);
    }
    let mut sources = Vec::new();
    for group in 0..MAX_GROUPS {
        let s = &maps.sources;
        let (ipv4, global, unique_local) = (
            s.sources(group, SourceClass::Ipv4)?,
            s.sources(group, SourceClass::Global)?,
            s.sources(group, SourceClass::UniqueLocal)?,
        );
        let counters = s.counters(group)?;
        if ipv4.is_empty() && global.is_empty() && unique_local.is_empty() && counters.chosen == 0 {
            continue;
        }
        sources.push(SourceDump {
            group,
            ipv4,
            global,
            unique_local,
            chosen: counters.chosen,
            bind_failed: counters.bind_failed,
        });
    }
    let source_routes = maps
        .sources
        .routes()?
        .into_iter()
        .map(|(prefix, group)| (prefix.to_string(), group))
        .collect();
    let dump = MapsDump {
        nics,
        buckets,
        sources,
        source_routes,
    };
    if cli.json {
        return print_json(&dump);
    }
    let nic_table = Table {
        columns: &[
            "INTERFACE",
            "IFINDEX",
            "GROUP",
            "ROUTED",
            "CARRIER",
            "TESTADDR",
            "TXPKTS",
            "TXBYTES",
            "REDIRECTED",
            "RXPKTS",
            "REPLIES",
            "REJECTED",
        ],
        rows: dump
            .nics
            .iter()
            .map(|n| {
                let rejected: Vec<String> = n
                    .rejected
                    .iter()
                    .filter(|(_, v)| **v > 0)
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                vec![
                    n.name.clone(),
                    n.ifindex.to_string(),
                    n.group.to_string(),
                    if n.routed { "yes" } else { "no" }.into(),
                    if n.carrier_lost { "lost" } else { "--" }.into(),
                    n.test_v4.map_or("--".into(), |a| a.to_string()),
                    n.tx_packets.to_string(),
                    n.tx_bytes.to_string(),
                    n.redirected_packets.to_string(),
                    n.rx_packets.to_string(),
                    n.probe_replies.to_string(),
                    list(&rejected),
                ]
            })
            .collect(),
    };
    print!("{}", nic_table.render(cli.fields.as_deref())?);
    println!();
    let bucket_table = Table {
        columns: &["GROUPID", "BUCKETS"],
        rows: dump
            .buckets
            .iter()
            .map(|(g, owners)| {
                let shares: Vec<String> = owners
                    .iter()
                    .map(|(n, c)| format!("{n}={c}/{BUCKETS_PER_GROUP}"))
                    .collect();
                vec![g.to_string(), shares.join(" ")]
            })
            .collect(),
    };
    print!("{}", bucket_table.render(None)?);
    println!();
    let source_table = Table {
        columns: &["GROUPID", "SOURCES", "CHOSEN", "BINDFAILED", "DESTINATIONS"],
        rows: dump
            .sources
            .iter()
            .map(|s| {
                let addrs: Vec<String> = s
                    .ipv4
                    .iter()
                    .chain(&s.global)
                    .chain(&s.unique_local)
                    .map(ToString::to_string)
                    .collect();
                let destinations: Vec<&str> = dump
                    .source_routes
                    .iter()
                    .filter(|(_, g)| **g == Some(s.group))
                    .map(|(prefix, _)| prefix.as_str())
                    .collect();
                vec![
                    s.group.to_string(),
                    list(&addrs),
                    s.chosen.to_string(),
                    s.bind_failed.to_string(),
                    destinations.join(" "),
                ]
            })
            .collect(),
    };
    print!("{}", source_table.render(None)?);
    Ok(())
}
