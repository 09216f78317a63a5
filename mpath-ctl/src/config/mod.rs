//! mpathd's configuration: the TOML file, the Solaris-style `/etc/default/mpathd`, validation
//! whose errors name file, line and column, and the difference a SIGHUP reload applies.
//!
//! Parsing is pure (`Config::parse`); only `Config::load` touches the filesystem, so a bad file
//! is refused before anything on the host is changed.
//!
//! The TOML file has an optional `[daemon]` table (`failure_detection_time_ms`, `failback`,
//! `track_interfaces_only_with_groups`, `metrics_listen`, `socket`, `bpf_pin_dir`,
//! `route_table`, `route_rule_priority`, `tc_attach`, `sources`, `probe_rx`, `carrier_hook`,
//! `carrier_poll_ms`, `isolate_arp`) and any number of
//! `[[group]]` tables (`name`, optional `targets`, `spread` and `probe_rx`), each with `[[group.interface]]` tables (`name`, optional
//! `test_address`, `data_addresses`, `standby`) and optional `[[group.route]]` tables (`to`,
//! optional `via` and `metric`). Keys set in `[daemon]` win over `/etc/default/mpathd`, which
//! wins over the built-in defaults.
//!
//! Modules: `error` (refusals with their place), `raw` (the file as serde reads it),
//! `validate` (raw file to [`Config`]), `solaris` (`/etc/default/mpathd`) and `diff` (reload).

pub mod diff;
pub mod error;
#[cfg(test)]
mod fuzz;
mod raw;
mod solaris;
#[cfg(test)]
mod testing;
mod validate;

pub(crate) use validate::socket_path_problem;

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::net::address::{IpCidr, Ipv4Cidr};
use error::{ConfigError, Source};
use raw::RawConfig;
use solaris::{SolarisDefaults, parse_defaults_file};
use validate::Validator;

/// Where `mpathd --config` looks when no file is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/mpath/mpathd.toml";
/// The Solaris tunables file, read when present so existing IPMP hosts keep their settings.
pub const DEFAULT_DEFAULTS_PATH: &str = "/etc/default/mpathd";

/// in.mpathd's MIN_FAILURE_DETECTION_TIME: probes cannot be sent faster than this allows.
pub(crate) const MIN_FAILURE_DETECTION_TIME_MS: i64 = 100;
/// in.mpathd keeps the FDT in an `int`; the bound also keeps `Instant + fdt` from overflowing.
pub(crate) const MAX_FAILURE_DETECTION_TIME_MS: i64 = i32::MAX as i64;
/// Solaris LIFGRNAMSIZ (32) less the terminating NUL.
pub(crate) const MAX_GROUP_NAME_LEN: usize = 31;
/// Linux IFNAMSIZ (16) less the terminating NUL.
pub(crate) const MAX_INTERFACE_NAME_LEN: usize = 15;
/// mpathd's own routing table, 0x6d70 ("mp"): far from the small numbers administrators and
/// tools pick, so the routes in it are mpathd's alone.
pub const DEFAULT_ROUTE_TABLE: u32 = 28016;
/// The rule that consults mpathd's table sits just ahead of the main rule (32766), so group
/// routes win over `main` while rules an administrator put in front still come first.
pub const DEFAULT_ROUTE_RULE_PRIORITY: u32 = 32765;
/// The carrier of a physical NIC reaches the kernel's link events up to a second late
/// (linkwatch); read every 10 ms, a loss is seen within that, for about 2.5 us a NIC.
pub const DEFAULT_CARRIER_POLL_MS: u64 = 10;
/// Slower than this, polling would hardly beat linkwatch.
pub const MAX_CARRIER_POLL_MS: i64 = 500;

const DEFAULT_FAILURE_DETECTION_TIME_MS: u64 = 10_000;
const DEFAULT_METRICS_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9798);
const DEFAULT_SOCKET: &str = "/run/mpath/mpathd.sock";
const DEFAULT_BPF_PIN_DIR: &str = "/sys/fs/bpf/mpath";

/// The validated configuration the daemon runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub daemon: DaemonConfig,
    pub groups: Vec<GroupConfig>,
    /// What mpathd accepts with a message: in the Solaris defaults file what in.mpathd
    /// accepts so (unknown keys, a FAILURE_DETECTION_TIME below the minimum), in the TOML
    /// file probe targets off the link, which the probers skip. mpathd logs them at start
    /// and on reload, `--check` prints them.
    pub warnings: Vec<String>,
}

/// Daemon-wide tunables, after merging `/etc/default/mpathd` under the TOML `[daemon]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonConfig {
    pub failure_detection_time: Duration,
    pub failback: bool,
    pub track_interfaces_only_with_groups: bool,
    pub metrics_listen: SocketAddr,
    pub socket: PathBuf,
    /// Where the datapath pins its maps, programs and links.
    pub bpf_pin_dir: PathBuf,
    /// The routing table mpathd owns: every route through a group NIC is served from it.
    pub route_table: u32,
    /// The priority of the policy rule that consults `route_table` ahead of `main`.
    pub route_rule_priority: u32,
    /// How the egress program is attached to the NICs.
    pub tc_attach: TcAttach,
    /// Who picks the source of IPv6 and on-link IPv4 connections through group routes.
    pub sources: SourceSelection,
    /// Where probe replies are matched, for groups that do not say.
    pub probe_rx: ProbeRx,
    /// Whether mpathd may load its tracing program on `netif_carrier_off` (the carrier
    /// hook): a host whose policy forbids tracing programs turns it off and has the carrier
    /// read every `carrier_poll` instead.
    pub carrier_hook: bool,
    /// How often the group NICs' carrier is read, ahead of the kernel's link events; `None`:
    /// never (the link events alone).
    pub carrier_poll: Option<Duration>,
    /// Whether NICs outside the groups get `arp_ignore=1`, `arp_announce=2`: Linux answers
    /// ARP for any local address on any NIC, so one on the groups' link would draw the
    /// replies to the test addresses and fail healthy NICs.
    pub isolate_arp: bool,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            failure_detection_time: Duration::from_millis(DEFAULT_FAILURE_DETECTION_TIME_MS),
            failback: true,
            track_interfaces_only_with_groups: true,
            metrics_listen: DEFAULT_METRICS_LISTEN,
            socket: PathBuf::from(DEFAULT_SOCKET),
            bpf_pin_dir: PathBuf::from(DEFAULT_BPF_PIN_DIR),
            route_table: DEFAULT_ROUTE_TABLE,
            route_rule_priority: DEFAULT_ROUTE_RULE_PRIORITY,
            tc_attach: TcAttach::Auto,
            sources: SourceSelection::Spread,
            probe_rx: ProbeRx::Tc,
            carrier_hook: true,
            carrier_poll: Some(Duration::from_millis(DEFAULT_CARRIER_POLL_MS)),
            isolate_arp: true,
        }
    }
}

/// How the egress program is attached to the NICs: `legacy` exists for kernels without tcx
/// (before 6.6), which `auto` detects, and for testing that path on newer ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TcAttach {
    /// tcx where the kernel has it, else a cls_bpf filter.
    #[default]
    Auto,
    /// A tcx link; refused on a kernel without tcx.
    Tcx,
    /// A direct-action cls_bpf filter on the clsact qdisc.
    Legacy,
}

impl fmt::Display for TcAttach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TcAttach::Auto => "auto",
            TcAttach::Tcx => "tcx",
            TcAttach::Legacy => "legacy",
        })
    }
}

/// Where the datapath matches replies to mpathd's probes on a group's NICs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeRx {
    /// tc ingress (tcx, or a cls_bpf filter before 6.6): after GRO, free for bulk traffic,
    /// any driver and MTU.
    #[default]
    Tc,
    /// XDP, native where the driver takes it, else generic: the earliest drop, at the price
    /// native XDP takes from every received packet (see the README).
    Xdp,
}

impl fmt::Display for ProbeRx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProbeRx::Tc => "tc",
            ProbeRx::Xdp => "xdp",
        })
    }
}

/// Who picks the source address of sockets that connect or send through a group route
/// without having bound one, where the kernel would give them all one address: IPv6 routes
/// and on-link IPv4 routes (see `core::sources`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceSelection {
    /// mpathd's source hook, per destination over the group's data addresses, so replies
    /// come back spread over the NICs as they do for IPv4 through a gateway.
    #[default]
    Spread,
    /// The kernel, which takes the data address of the first NIC of the route's nexthop
    /// group (IPv6) or the route's preferred source (IPv4 on-link) for every connection.
    Kernel,
}

impl fmt::Display for SourceSelection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SourceSelection::Spread => "spread",
            SourceSelection::Kernel => "kernel",
        })
    }
}

/// An IPMP group: interfaces that back each other up, in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupConfig {
    pub name: String,
    /// Explicit probe targets; empty means routers, then multicast discovery.
    pub targets: Vec<IpAddr>,
    pub interfaces: Vec<InterfaceConfig>,
    /// How routed flows are spread over the group's usable NICs.
    pub spread: SpreadMode,
    /// Routes mpathd adds itself, in file order, for hosts where mpathd is the only network
    /// configuration; they are served through the group like any other route.
    pub routes: Vec<RouteConfig>,
    /// Where its NICs' probe replies are matched: the group's own `probe_rx`, else the
    /// daemon's.
    pub probe_rx: ProbeRx,
}

/// How a group spreads routed flows over its usable NICs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SpreadMode {
    /// The kernel spreads flows through resilient nexthop groups, so a NIC change moves only
    /// the flows of that NIC.
    #[default]
    Routes,
    /// The eBPF egress program spreads flows; each group route then goes through a single
    /// usable NIC and the kernel's choice is overridden in the datapath.
    Datapath,
}

impl SpreadMode {
    #[cfg(test)]
    pub const ALL: [SpreadMode; 2] = [SpreadMode::Routes, SpreadMode::Datapath];

    /// The name used in the file, the logs and the views.
    pub fn as_str(self) -> &'static str {
        match self {
            SpreadMode::Routes => "routes",
            SpreadMode::Datapath => "datapath",
        }
    }
}

impl fmt::Display for SpreadMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A route of a group, kept in mpathd's table through the group's usable NICs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RouteConfig {
    /// The destination network, host bits clear; `0.0.0.0/0` or `::/0` for `default`.
    pub to: IpCidr,
    /// The gateway, same family as `to`; `None`: the network is on-link on the group's NICs.
    pub via: Option<IpAddr>,
    /// The kernel's route priority: with `to` it names the route, as it does in the kernel.
    pub metric: u32,
}

impl RouteConfig {
    /// A default route: `to` has prefix length 0.
    pub(crate) fn is_default(&self) -> bool {
        self.to.prefix_len() == 0
    }
}

/// As `ip route` writes it, e.g. `default via 192.0.2.1 metric 10`; a zero metric is omitted.
impl fmt::Display for RouteConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_default() {
            f.write_str("default")?;
        } else {
            write!(f, "{}", self.to)?;
        }
        if let Some(via) = self.via {
            write!(f, " via {via}")?;
        }
        if self.metric != 0 {
            write!(f, " metric {}", self.metric)?;
        }
        Ok(())
    }
}

/// One underlying interface of a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceConfig {
    pub name: String,
    /// Source of IPv4 probes; IPv6 probes use the link-local address. `None`: link-based only.
    pub test_address: Option<Ipv4Cidr>,
    /// Addresses applications use; they fail over to other interfaces of the group.
    pub data_addresses: Vec<IpCidr>,
    /// A standby carries no data address until an active interface fails.
    pub standby: bool,
}

impl Config {
    /// Reads and validates the TOML file and, when it exists, the Solaris defaults file.
    pub fn load(toml_path: &Path, defaults_path: Option<&Path>) -> Result<Config, ConfigError> {
        let read_error = |path: &Path, source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        let toml_text = std::fs::read_to_string(toml_path).map_err(|e| read_error(toml_path, e))?;
        let defaults = match defaults_path {
            Some(path) => match std::fs::read_to_string(path) {
                Ok(text) => Some((text, path.display().to_string())),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(read_error(path, e)),
            },
            None => None,
        };
        Config::parse(
            &toml_text,
            &toml_path.display().to_string(),
            defaults
                .as_ref()
                .map(|(text, name)| (text.as_str(), name.as_str())),
        )
    }

    /// Parses and validates configuration text; `defaults` is `(text, name)` of the Solaris
    /// defaults file. Names only label error messages.
    pub fn parse(
        toml_text: &str,
        toml_name: &str,
        defaults: Option<(&str, &str)>,
    ) -> Result<Config, ConfigError> {
        let defaults = match defaults {
            Some((text, name)) => parse_defaults_file(&Source { name, text })?,
            None => SolarisDefaults::default(),
        };
        let source = Source {
            name: toml_name,
            text: toml_text,
        };
        let raw: RawConfig = toml::from_str(toml_text).map_err(|e| source.toml_error(&e))?;
        Validator::new(source).config(raw, defaults)
    }

    /// The group called `name`, if configured.
    pub fn group(&self, name: &str) -> Option<&GroupConfig> {
        self.groups.iter().find(|group| group.name == name)
    }
}

impl GroupConfig {
    /// The member interface called `name`, if configured in this group.
    pub fn interface(&self, name: &str) -> Option<&InterfaceConfig> {
        self.interfaces
            .iter()
            .find(|interface| interface.name == name)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use testing::*;

    #[test]
    fn issue_example_parses_to_expected_values() {
        let config = parse(ISSUE_EXAMPLE).unwrap();
        assert_eq!(config.daemon, DaemonConfig::default());
        assert_eq!(
            config.daemon.failure_detection_time,
            Duration::from_millis(10_000)
        );
        assert_eq!(
            config.groups,
            vec![GroupConfig {
                name: "g0".into(),
                targets: vec![ip("192.0.2.1")],
                interfaces: vec![
                    InterfaceConfig {
                        name: "h0".into(),
                        test_address: Some(v4cidr("192.0.2.21/24")),
                        data_addresses: vec![cidr("192.0.2.19/24"), cidr("2001:db8::19/64")],
                        standby: false,
                    },
                    InterfaceConfig {
                        name: "h2".into(),
                        test_address: Some(v4cidr("192.0.2.23/24")),
                        data_addresses: vec![],
                        standby: true,
                    },
                ],
                spread: SpreadMode::Routes,
                routes: vec![],
                probe_rx: ProbeRx::Tc,
            }]
        );
    }

    #[test]
    fn defaults_apply_to_an_empty_file() {
        let config = parse("").unwrap();
        assert!(config.groups.is_empty());
        let daemon = config.daemon;
        assert_eq!(daemon.failure_detection_time, Duration::from_secs(10));
        assert!(daemon.failback);
        assert!(daemon.track_interfaces_only_with_groups);
        assert_eq!(daemon.metrics_listen, "127.0.0.1:9798".parse().unwrap());
        assert_eq!(daemon.socket, Path::new("/run/mpath/mpathd.sock"));
        assert_eq!(daemon.bpf_pin_dir, Path::new("/sys/fs/bpf/mpath"));
        assert_eq!(daemon.route_table, 28016);
        assert_eq!(daemon.route_rule_priority, 32765);
        assert_eq!(daemon.tc_attach, TcAttach::Auto);
        assert_eq!(daemon.sources, SourceSelection::Spread);
        assert_eq!(daemon.probe_rx, ProbeRx::Tc);
        assert!(daemon.carrier_hook);
        assert_eq!(daemon.carrier_poll, Some(Duration::from_millis(10)));
        assert!(daemon.isolate_arp);
    }

    #[test]
    fn every_daemon_key_is_read() {
        let config = parse(
            "[daemon]\nfailure_detection_time_ms = 100\nfailback = false\n\
             track_interfaces_only_with_groups = false\nmetrics_listen = \"[::]:9100\"\n\
             socket = \"/tmp/t/mpathd.sock\"\nbpf_pin_dir = \"/sys/fs/bpf/test-1\"\n\
             route_table = 100\nroute_rule_priority = 1000\ntc_attach = \"legacy\"\n\
             sources = \"kernel\"\nprobe_rx = \"xdp\"\ncarrier_hook = false\n\
             carrier_poll_ms = 20\nisolate_arp = false\n",
        )
        .unwrap();
        assert_eq!(
            config.daemon,
            DaemonConfig {
                failure_detection_time: Duration::from_millis(100),
                failback: false,
                track_interfaces_only_with_groups: false,
                metrics_listen: "[::]:9100".parse().unwrap(),
                socket: "/tmp/t/mpathd.sock".into(),
                bpf_pin_dir: "/sys/fs/bpf/test-1".into(),
                route_table: 100,
                route_rule_priority: 1000,
                tc_attach: TcAttach::Legacy,
                sources: SourceSelection::Kernel,
                probe_rx: ProbeRx::Xdp,
                carrier_hook: false,
                carrier_poll: Some(Duration::from_millis(20)),
                isolate_arp: false,
            }
        );
    }

    #[test]
    fn carrier_hook_is_on_by_default_off_when_false_and_anything_else_is_refused() {
        let hook = |value: &str| parse(&format!("[daemon]\ncarrier_hook = {value}\n"));
        assert!(hook("true").unwrap().daemon.carrier_hook);
        assert!(!hook("false").unwrap().daemon.carrier_hook);
        for value in ["\"no\"", "0", "\"off\""] {
            let error = hook(value).unwrap_err();
            let text = error.to_string();
            assert!(
                matches!(error.problem(), Some(error::Problem::Toml(m)) if m.contains("invalid type")),
                "{text}"
            );
            // The place and the value written, so the operator sees what was refused.
            assert!(text.contains(":2:"), "{text}");
            assert!(text.contains(value.trim_matches('"')), "{text}");
        }
    }

    #[test]
    fn carrier_poll_ms_0_turns_polling_off_and_past_500_is_refused() {
        let poll = |ms: i64| parse(&format!("[daemon]\ncarrier_poll_ms = {ms}\n"));
        assert_eq!(poll(0).unwrap().daemon.carrier_poll, None);
        assert_eq!(
            poll(500).unwrap().daemon.carrier_poll,
            Some(Duration::from_millis(500))
        );
        for ms in [501, -1] {
            let error = poll(ms).unwrap_err();
            assert!(
                matches!(error.problem(), Some(error::Problem::BadCarrierPoll(n)) if *n == ms),
                "{error}"
            );
            assert!(error.to_string().contains("outside 0 to 500"), "{error}");
        }
    }

    #[test]
    fn a_group_s_probe_rx_wins_over_the_daemon_s() {
        let group = |name: &str, probe_rx: &str| {
            format!(
                "[[group]]\nname = \"{name}\"\n{probe_rx}[[group.interface]]\nname = \"{name}h\"\n"
            )
        };
        let text = format!(
            "[daemon]\nprobe_rx = \"xdp\"\n{}{}",
            group("g0", ""),
            group("g1", "probe_rx = \"tc\"\n")
        );
        let config = parse(&text).unwrap();
        assert_eq!(config.groups[0].probe_rx, ProbeRx::Xdp);
        assert_eq!(config.groups[1].probe_rx, ProbeRx::Tc);
        // Without either, tc.
        assert_eq!(
            parse(&group("g0", "")).unwrap().groups[0].probe_rx,
            ProbeRx::Tc
        );
    }

    #[test]
    fn load_reads_both_files_and_tolerates_a_missing_defaults_file() {
        let dir = std::env::temp_dir().join(format!("mpath-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let toml_path = dir.join("mpathd.toml");
        let defaults_path = dir.join("mpathd");
        std::fs::write(&toml_path, ISSUE_EXAMPLE.replace("failback = true", "")).unwrap();
        std::fs::write(&defaults_path, "FAILBACK=no\n").unwrap();

        let config = Config::load(&toml_path, Some(&defaults_path)).unwrap();
        assert!(!config.daemon.failback);
        let config = Config::load(&toml_path, Some(&dir.join("absent"))).unwrap();
        assert!(config.daemon.failback);

        std::fs::write(&defaults_path, "FAILBACK=perhaps\n").unwrap();
        let error = Config::load(&toml_path, Some(&defaults_path)).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with(&format!("{}:1:10: ", defaults_path.display())),
            "{error}"
        );

        let missing = dir.join("missing.toml");
        let error = Config::load(&missing, None).unwrap_err();
        assert!(matches!(error, ConfigError::Read { .. }));
        assert!(
            error
                .to_string()
                .starts_with(&format!("{}: ", missing.display())),
            "{error}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn spread_mode_names() {
        assert_eq!(SpreadMode::ALL, [SpreadMode::Routes, SpreadMode::Datapath]);
        assert_eq!(SpreadMode::default(), SpreadMode::Routes);
        for mode in SpreadMode::ALL {
            assert_eq!(mode.to_string(), mode.as_str());
            // serde's names are the file's names.
            let json = format!("\"{}\"", mode.as_str());
            assert_eq!(serde_json::to_string(&mode).unwrap(), json);
            assert_eq!(serde_json::from_str::<SpreadMode>(&json).unwrap(), mode);
        }
        assert_eq!(SpreadMode::Routes.as_str(), "routes");
        assert_eq!(SpreadMode::Datapath.as_str(), "datapath");
    }

    #[test]
    fn routes_display_as_ip_route_writes_them() {
        for (to, via, metric, text) in [
            ("0.0.0.0/0", Some("192.0.2.1"), 0, "default via 192.0.2.1"),
            ("::/0", Some("fe80::1"), 10, "default via fe80::1 metric 10"),
            ("198.51.100.0/24", None, 0, "198.51.100.0/24"),
            (
                "2001:db8:1::/48",
                Some("2001:db8::1"),
                5,
                "2001:db8:1::/48 via 2001:db8::1 metric 5",
            ),
        ] {
            let route = RouteConfig {
                to: cidr(to),
                via: via.map(ip),
                metric,
            };
            assert_eq!(route.to_string(), text);
            assert_eq!(route.is_default(), text.starts_with("default"));
        }
    }

    /// The README's example is what operators copy: it must stay valid.
    #[test]
    fn readme_example_parses() {
        let readme = include_str!("../../../README.md");
        let start = readme.find("```toml\n").expect("README has a TOML example") + 8;
        let end = start + readme[start..].find("```").unwrap();
        let config = parse(&readme[start..end]).unwrap_or_else(|e| panic!("README: {e}"));
        let g0 = config.group("g0").unwrap();
        assert_eq!(g0.spread, SpreadMode::Routes);
        assert!(!g0.routes.is_empty());
        assert_eq!(config.daemon.route_table, DEFAULT_ROUTE_TABLE);
    }
}
