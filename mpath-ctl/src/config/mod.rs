//! mpathd's configuration: the TOML file, the Solaris-style `/etc/default/mpathd`, validation
//! whose errors name file, line and column, and the difference a SIGHUP reload applies.
//!
//! Parsing is pure (`Config::parse`); only `Config::load` touches the filesystem, so a bad file
//! is refused before anything on the host is changed.
//!
//! The TOML file has an optional `[daemon]` table (`failure_detection_time_ms`, `failback`,
//! `track_interfaces_only_with_groups`, `metrics_listen`, `socket`, `bpf_pin_dir`) and any
//! number of `[[group]]` tables (`name`, optional `targets`), each with `[[group.interface]]`
//! tables (`name`, optional `test_address`, `data_addresses`, `standby`). Keys set in
//! `[daemon]` win over `/etc/default/mpathd`, which wins over the built-in defaults.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;
use toml::Spanned;

/// Where `mpathd --config` looks when no file is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/mpath/mpathd.toml";
/// The Solaris tunables file, read when present so existing IPMP hosts keep their settings.
pub const DEFAULT_DEFAULTS_PATH: &str = "/etc/default/mpathd";

/// in.mpathd's MIN_FAILURE_DETECTION_TIME: probes cannot be sent faster than this allows.
pub const MIN_FAILURE_DETECTION_TIME_MS: i64 = 100;
/// in.mpathd keeps the FDT in an `int`; the bound also keeps `Instant + fdt` from overflowing.
pub const MAX_FAILURE_DETECTION_TIME_MS: i64 = i32::MAX as i64;
/// Solaris LIFGRNAMSIZ (32) less the terminating NUL.
pub const MAX_GROUP_NAME_LEN: usize = 31;
/// Linux IFNAMSIZ (16) less the terminating NUL.
pub const MAX_INTERFACE_NAME_LEN: usize = 15;

const DEFAULT_FAILURE_DETECTION_TIME_MS: u64 = 10_000;
const DEFAULT_METRICS_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9798);
const DEFAULT_SOCKET: &str = "/run/mpath/mpathd.sock";
const DEFAULT_BPF_PIN_DIR: &str = "/sys/fs/bpf/mpath";

/// The validated configuration the daemon runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub daemon: DaemonConfig,
    pub groups: Vec<GroupConfig>,
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
        }
    }
}

/// An IPMP group: interfaces that back each other up, in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupConfig {
    pub name: String,
    /// Explicit probe targets; empty means routers, then multicast discovery.
    pub targets: Vec<IpAddr>,
    pub interfaces: Vec<InterfaceConfig>,
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

    /// What a reload from `self` to `new` must change; groups and interfaces are matched by
    /// name, so a renamed one is a removal plus an addition.
    pub fn diff(&self, new: &Config) -> ConfigDiff {
        ConfigDiff {
            daemon: self.daemon.diff(&new.daemon),
            groups_added: new
                .groups
                .iter()
                .filter(|group| self.group(&group.name).is_none())
                .cloned()
                .collect(),
            groups_removed: self
                .groups
                .iter()
                .filter(|group| new.group(&group.name).is_none())
                .cloned()
                .collect(),
            groups_changed: new
                .groups
                .iter()
                .filter_map(|group| self.group(&group.name)?.diff(group))
                .collect(),
        }
    }
}

impl DaemonConfig {
    fn diff(&self, new: &DaemonConfig) -> Vec<DaemonChange> {
        let mut changes = Vec::new();
        if let Some(change) =
            Change::between(&self.failure_detection_time, &new.failure_detection_time)
        {
            changes.push(DaemonChange::FailureDetectionTime(change));
        }
        if let Some(change) = Change::between(&self.failback, &new.failback) {
            changes.push(DaemonChange::Failback(change));
        }
        if let Some(change) = Change::between(
            &self.track_interfaces_only_with_groups,
            &new.track_interfaces_only_with_groups,
        ) {
            changes.push(DaemonChange::TrackInterfacesOnlyWithGroups(change));
        }
        if let Some(change) = Change::between(&self.metrics_listen, &new.metrics_listen) {
            changes.push(DaemonChange::MetricsListen(change));
        }
        if let Some(change) = Change::between(&self.socket, &new.socket) {
            changes.push(DaemonChange::Socket(change));
        }
        if let Some(change) = Change::between(&self.bpf_pin_dir, &new.bpf_pin_dir) {
            changes.push(DaemonChange::BpfPinDir(change));
        }
        changes
    }
}

impl GroupConfig {
    /// The member interface called `name`, if configured in this group.
    pub fn interface(&self, name: &str) -> Option<&InterfaceConfig> {
        self.interfaces
            .iter()
            .find(|interface| interface.name == name)
    }

    fn diff(&self, new: &GroupConfig) -> Option<GroupDiff> {
        let diff = GroupDiff {
            name: new.name.clone(),
            targets_added: missing_from(&new.targets, &self.targets),
            targets_removed: missing_from(&self.targets, &new.targets),
            interfaces_added: new
                .interfaces
                .iter()
                .filter(|interface| self.interface(&interface.name).is_none())
                .cloned()
                .collect(),
            interfaces_removed: self
                .interfaces
                .iter()
                .filter(|interface| new.interface(&interface.name).is_none())
                .cloned()
                .collect(),
            interfaces_changed: new
                .interfaces
                .iter()
                .filter_map(|interface| self.interface(&interface.name)?.diff(interface))
                .collect(),
        };
        let unchanged = diff.targets_added.is_empty()
            && diff.targets_removed.is_empty()
            && diff.interfaces_added.is_empty()
            && diff.interfaces_removed.is_empty()
            && diff.interfaces_changed.is_empty();
        (!unchanged).then_some(diff)
    }
}

impl InterfaceConfig {
    fn diff(&self, new: &InterfaceConfig) -> Option<InterfaceDiff> {
        let diff = InterfaceDiff {
            name: new.name.clone(),
            standby: Change::between(&self.standby, &new.standby),
            test_address: Change::between(&self.test_address, &new.test_address),
            data_addresses_added: missing_from(&new.data_addresses, &self.data_addresses),
            data_addresses_removed: missing_from(&self.data_addresses, &new.data_addresses),
        };
        let unchanged = diff.standby.is_none()
            && diff.test_address.is_none()
            && diff.data_addresses_added.is_empty()
            && diff.data_addresses_removed.is_empty();
        (!unchanged).then_some(diff)
    }
}

/// Items of `items` absent from `other`, in `items` order: order alone is not a change.
fn missing_from<T: PartialEq + Clone>(items: &[T], other: &[T]) -> Vec<T> {
    items
        .iter()
        .filter(|item| !other.contains(item))
        .cloned()
        .collect()
}

/// The changes a SIGHUP reload applies, so that untouched groups and interfaces keep running.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigDiff {
    pub daemon: Vec<DaemonChange>,
    pub groups_added: Vec<GroupConfig>,
    /// The old definitions: the daemon needs them to take the groups' addresses down.
    pub groups_removed: Vec<GroupConfig>,
    pub groups_changed: Vec<GroupDiff>,
}

impl ConfigDiff {
    pub fn is_empty(&self) -> bool {
        self.daemon.is_empty()
            && self.groups_added.is_empty()
            && self.groups_removed.is_empty()
            && self.groups_changed.is_empty()
    }
}

/// An old and a new value of a setting that differ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change<T> {
    pub old: T,
    pub new: T,
}

impl<T: PartialEq + Clone> Change<T> {
    fn between(old: &T, new: &T) -> Option<Change<T>> {
        (old != new).then(|| Change {
            old: old.clone(),
            new: new.clone(),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DaemonChange {
    FailureDetectionTime(Change<Duration>),
    Failback(Change<bool>),
    TrackInterfacesOnlyWithGroups(Change<bool>),
    MetricsListen(Change<SocketAddr>),
    Socket(Change<PathBuf>),
    BpfPinDir(Change<PathBuf>),
}

/// Changes inside a group present in both configurations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupDiff {
    pub name: String,
    pub targets_added: Vec<IpAddr>,
    pub targets_removed: Vec<IpAddr>,
    pub interfaces_added: Vec<InterfaceConfig>,
    /// The old definitions, whose addresses the daemon must remove.
    pub interfaces_removed: Vec<InterfaceConfig>,
    pub interfaces_changed: Vec<InterfaceDiff>,
}

/// Changes to an interface that stays in its group. A data address whose prefix length
/// changed is removed and added, as the kernel needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceDiff {
    pub name: String,
    pub standby: Option<Change<bool>>,
    pub test_address: Option<Change<Option<Ipv4Cidr>>>,
    pub data_addresses_added: Vec<IpCidr>,
    pub data_addresses_removed: Vec<IpCidr>,
}

/// One line for the reload log, e.g. `failback true -> false; group g1 added`.
impl fmt::Display for ConfigDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = self.daemon.iter().map(ToString::to_string).collect();
        parts.extend(
            self.groups_added
                .iter()
                .map(|g| format!("group {} added", g.name)),
        );
        parts.extend(
            self.groups_removed
                .iter()
                .map(|g| format!("group {} removed", g.name)),
        );
        parts.extend(self.groups_changed.iter().map(ToString::to_string));
        if parts.is_empty() {
            f.write_str("no changes")
        } else {
            f.write_str(&parts.join("; "))
        }
    }
}

impl fmt::Display for DaemonChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DaemonChange::FailureDetectionTime(c) => write!(
                f,
                "failure_detection_time_ms {} -> {}",
                c.old.as_millis(),
                c.new.as_millis()
            ),
            DaemonChange::Failback(c) => write!(f, "failback {} -> {}", c.old, c.new),
            DaemonChange::TrackInterfacesOnlyWithGroups(c) => write!(
                f,
                "track_interfaces_only_with_groups {} -> {}",
                c.old, c.new
            ),
            DaemonChange::MetricsListen(c) => write!(f, "metrics_listen {} -> {}", c.old, c.new),
            DaemonChange::Socket(c) => {
                write!(f, "socket {} -> {}", c.old.display(), c.new.display())
            }
            DaemonChange::BpfPinDir(c) => {
                write!(f, "bpf_pin_dir {} -> {}", c.old.display(), c.new.display())
            }
        }
    }
}

impl fmt::Display for GroupDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if !self.targets_added.is_empty() || !self.targets_removed.is_empty() {
            parts.push(format!(
                "targets {}",
                signed_list(&self.targets_added, &self.targets_removed)
            ));
        }
        parts.extend(
            self.interfaces_added
                .iter()
                .map(|i| format!("interface {} added", i.name)),
        );
        parts.extend(
            self.interfaces_removed
                .iter()
                .map(|i| format!("interface {} removed", i.name)),
        );
        parts.extend(self.interfaces_changed.iter().map(ToString::to_string));
        write!(f, "group {}: {}", self.name, parts.join(", "))
    }
}

impl fmt::Display for InterfaceDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(c) = &self.standby {
            parts.push(format!("standby {} -> {}", c.old, c.new));
        }
        if let Some(c) = &self.test_address {
            let show = |a: &Option<Ipv4Cidr>| a.map_or("none".to_string(), |a| a.to_string());
            parts.push(format!("test address {} -> {}", show(&c.old), show(&c.new)));
        }
        if !self.data_addresses_added.is_empty() || !self.data_addresses_removed.is_empty() {
            parts.push(format!(
                "data addresses {}",
                signed_list(&self.data_addresses_added, &self.data_addresses_removed)
            ));
        }
        write!(f, "interface {} {}", self.name, parts.join(", "))
    }
}

/// `+added -removed`, as a reload log shows set changes.
fn signed_list<T: fmt::Display>(added: &[T], removed: &[T]) -> String {
    let added = added.iter().map(|item| format!("+{item}"));
    let removed = removed.iter().map(|item| format!("-{item}"));
    added.chain(removed).collect::<Vec<_>>().join(" ")
}

/// An interface address with its prefix length, e.g. `192.0.2.19/24` or `2001:db8::19/64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpCidr {
    addr: IpAddr,
    prefix_len: u8,
}

impl IpCidr {
    pub fn new(addr: IpAddr, prefix_len: u8) -> Result<IpCidr, CidrError> {
        let max = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        if prefix_len > max {
            return Err(CidrError::PrefixLenOutOfRange {
                prefix_len: prefix_len.to_string(),
                max,
            });
        }
        Ok(IpCidr { addr, prefix_len })
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }
}

impl fmt::Display for IpCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for IpCidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<IpCidr, CidrError> {
        let (addr_text, prefix_text) = text.split_once('/').ok_or(CidrError::MissingPrefixLen)?;
        let addr: IpAddr = addr_text
            .parse()
            .map_err(|_| CidrError::BadAddress(addr_text.to_string()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let out_of_range = || CidrError::PrefixLenOutOfRange {
            prefix_len: prefix_text.to_string(),
            max,
        };
        if prefix_text.is_empty() || !prefix_text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(out_of_range());
        }
        let prefix_len = prefix_text.parse().map_err(|_| out_of_range())?;
        IpCidr::new(addr, prefix_len)
    }
}

/// An IPv4 interface address with prefix length: test addresses are IPv4 only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    addr: Ipv4Addr,
    prefix_len: u8,
}

impl Ipv4Cidr {
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Result<Ipv4Cidr, CidrError> {
        IpCidr::new(IpAddr::V4(addr), prefix_len)?;
        Ok(Ipv4Cidr { addr, prefix_len })
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }
}

impl From<Ipv4Cidr> for IpCidr {
    fn from(cidr: Ipv4Cidr) -> IpCidr {
        IpCidr {
            addr: IpAddr::V4(cidr.addr),
            prefix_len: cidr.prefix_len,
        }
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum CidrError {
    #[error("missing prefix length: write ADDRESS/LENGTH, e.g. 192.0.2.19/24")]
    MissingPrefixLen,
    #[error("{0:?} is not an IPv4 or IPv6 address")]
    BadAddress(String),
    #[error("bad prefix length {prefix_len:?}: must be 0 to {max}")]
    PrefixLenOutOfRange { prefix_len: String, max: u8 },
}

/// Why a configuration was refused.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{location}: {problem}")]
    Invalid {
        location: Location,
        problem: Problem,
    },
}

impl ConfigError {
    pub fn location(&self) -> Option<&Location> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Invalid { location, .. } => Some(location),
        }
    }

    pub fn problem(&self) -> Option<&Problem> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Invalid { problem, .. } => Some(problem),
        }
    }
}

/// A place in a configuration file; the position is missing only when the TOML parser could
/// not tell where an error is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    pub position: Option<Position>,
}

/// 1-based line and column (in characters), as editors count them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some(Position { line, column }) => write!(f, "{}:{line}:{column}", self.file),
            None => f.write_str(&self.file),
        }
    }
}

/// The reasons a file is refused; lines mentioned are in the same file.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum Problem {
    /// TOML syntax, unknown keys, wrong value types and missing keys, as the parser words them.
    #[error("{0}")]
    Toml(String),
    #[error(
        "failure detection time {0} ms is below the minimum of {MIN_FAILURE_DETECTION_TIME_MS} ms"
    )]
    FailureDetectionTimeTooSmall(i64),
    #[error(
        "failure detection time {0} ms is above the maximum of {MAX_FAILURE_DETECTION_TIME_MS} ms"
    )]
    FailureDetectionTimeTooLarge(i64),
    #[error("metrics_listen {0:?} is not an IP:PORT address such as 127.0.0.1:9798")]
    BadListenAddress(String),
    #[error("{key} {path:?} is not an absolute path")]
    RelativePath { key: &'static str, path: String },
    #[error("bad group name {name:?}: {reason}")]
    BadGroupName { name: String, reason: &'static str },
    #[error("group {name} is defined twice (first on line {first_line})")]
    DuplicateGroup { name: String, first_line: usize },
    #[error("group {0} has no interface")]
    EmptyGroup(String),
    #[error("every interface of group {0} is a standby: at least one must be active")]
    AllStandby(String),
    #[error(
        "group {group} has {count} interfaces with test addresses; the datapath keeps at most \
         {max} per group"
    )]
    TooManyTestAddresses {
        group: String,
        count: usize,
        max: usize,
    },
    #[error("bad interface name {name:?}: {reason}")]
    BadInterfaceName { name: String, reason: &'static str },
    #[error("interface {name} is listed twice in group {group} (first on line {first_line})")]
    DuplicateInterface {
        name: String,
        group: String,
        first_line: usize,
    },
    #[error("interface {name} is already in group {other_group} (line {first_line})")]
    InterfaceInTwoGroups {
        name: String,
        other_group: String,
        first_line: usize,
    },
    #[error("bad target {value:?}: not an IPv4 or IPv6 address")]
    BadTarget { value: String },
    #[error("target {0} is listed twice")]
    DuplicateTarget(IpAddr),
    #[error(
        "target {target} is an address of interface {interface} (line {line}): probes must reach another host"
    )]
    TargetIsLocal {
        target: IpAddr,
        interface: String,
        line: usize,
    },
    #[error("bad address {value:?}: {reason}")]
    BadAddress { value: String, reason: CidrError },
    #[error("{addr} cannot be an interface address: it is {why}")]
    UnusableAddress { addr: String, why: String },
    #[error(
        "test address {0} is IPv6: IPv6 probes are sent from the interface's link-local address, \
         so only an IPv4 test address is configured"
    )]
    Ipv6TestAddress(IpCidr),
    #[error("test address {addr} is also the test address of interface {interface} (line {line})")]
    DuplicateTestAddress {
        addr: IpCidr,
        interface: String,
        line: usize,
    },
    #[error(
        "data address {addr} is configured twice (first on interface {interface}, line {line})"
    )]
    DuplicateDataAddress {
        addr: IpCidr,
        interface: String,
        line: usize,
    },
    #[error(
        "data address {addr} is also the test address of interface {interface} (line {line}): \
         test addresses never fail over"
    )]
    DataAddressIsTestAddress {
        addr: IpCidr,
        interface: String,
        line: usize,
    },
    #[error(
        "test address {addr} is also a data address of interface {interface} (line {line}): \
         test addresses never fail over"
    )]
    TestAddressIsDataAddress {
        addr: IpCidr,
        interface: String,
        line: usize,
    },
    #[error(
        "data address {addr} is configured on standby interface {interface}: \
         a standby carries only a test address until an active interface fails"
    )]
    DataAddressOnStandby { addr: IpCidr, interface: String },
    #[error("expected KEY=VALUE")]
    NotKeyValue,
    #[error(
        "unknown key {0:?}: known keys are FAILURE_DETECTION_TIME, FAILBACK and \
         TRACK_INTERFACES_ONLY_WITH_GROUPS"
    )]
    UnknownDefaultsKey(String),
    #[error("{key} is set twice (first on line {first_line})")]
    DuplicateDefaultsKey {
        key: &'static str,
        first_line: usize,
    },
    #[error("bad value {value:?} for {key}: expected yes or no")]
    NotYesNo { key: &'static str, value: String },
    #[error("bad value {0:?} for FAILURE_DETECTION_TIME: expected a number of milliseconds")]
    NotMilliseconds(String),
}

/// A file being parsed: its name for messages and its text for turning offsets into lines.
struct Source<'a> {
    name: &'a str,
    text: &'a str,
}

impl Source<'_> {
    fn position(&self, offset: usize) -> Position {
        let before = &self.text.as_bytes()[..offset.min(self.text.len())];
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |newline| newline + 1);
        // Count characters, not bytes: continuation bytes are 0b10xx_xxxx.
        let column = before[line_start..]
            .iter()
            .filter(|&&b| b & 0xC0 != 0x80)
            .count();
        Position {
            line: before.iter().filter(|&&b| b == b'\n').count() + 1,
            column: column + 1,
        }
    }

    fn line(&self, span: &Range<usize>) -> usize {
        self.position(span.start).line
    }

    fn error(&self, span: &Range<usize>, problem: Problem) -> ConfigError {
        ConfigError::Invalid {
            location: Location {
                file: self.name.to_string(),
                position: Some(self.position(span.start)),
            },
            problem,
        }
    }

    fn toml_error(&self, error: &toml::de::Error) -> ConfigError {
        let message = error.message().trim();
        // The parser does not name the key it found twice; the span does.
        let message = match error.span().and_then(|span| self.text.get(span)) {
            Some(key) if message == "duplicate key" => format!("duplicate key `{key}`"),
            _ => message.to_string(),
        };
        ConfigError::Invalid {
            location: Location {
                file: self.name.to_string(),
                position: error.span().map(|span| self.position(span.start)),
            },
            problem: Problem::Toml(message),
        }
    }
}

/// The file as written, before validation; spans locate semantic errors.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    daemon: Option<RawDaemon>,
    #[serde(default, rename = "group")]
    groups: Vec<Spanned<RawGroup>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    failure_detection_time_ms: Option<Spanned<i64>>,
    failback: Option<bool>,
    track_interfaces_only_with_groups: Option<bool>,
    metrics_listen: Option<Spanned<String>>,
    socket: Option<Spanned<String>>,
    bpf_pin_dir: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    name: Spanned<String>,
    #[serde(default)]
    targets: Vec<Spanned<String>>,
    #[serde(default, rename = "interface")]
    interfaces: Vec<Spanned<RawInterface>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInterface {
    name: Spanned<String>,
    test_address: Option<Spanned<String>>,
    #[serde(default)]
    data_addresses: Vec<Spanned<String>>,
    #[serde(default)]
    standby: bool,
}

/// The tunables `/etc/default/mpathd` set; unset ones fall back to the built-in defaults.
#[derive(Default)]
struct SolarisDefaults {
    failure_detection_time: Option<Duration>,
    failback: Option<bool>,
    track_interfaces_only_with_groups: Option<bool>,
}

const FAILURE_DETECTION_TIME_KEY: &str = "FAILURE_DETECTION_TIME";
const FAILBACK_KEY: &str = "FAILBACK";
const TRACK_KEY: &str = "TRACK_INTERFACES_ONLY_WITH_GROUPS";

/// Parses KEY=VALUE lines as in.mpathd reads them: `#` comments, yes/no in any case, and
/// optional quotes around a value. Unlike in.mpathd, a bad value is refused, not logged.
fn parse_defaults_file(source: &Source) -> Result<SolarisDefaults, ConfigError> {
    let mut defaults = SolarisDefaults::default();
    let mut first_lines: HashMap<&'static str, usize> = HashMap::new();
    let mut line_start = 0;
    for line in source.text.split_inclusive('\n') {
        let start = line_start;
        line_start += line.len();
        let content = line.trim();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let content_start = start + (line.len() - line.trim_start().len());
        let content_span = content_start..content_start + content.len();
        let Some((key_text, value_text)) = content.split_once('=') else {
            return Err(source.error(&content_span, Problem::NotKeyValue));
        };
        let key = match key_text.trim() {
            FAILURE_DETECTION_TIME_KEY => FAILURE_DETECTION_TIME_KEY,
            FAILBACK_KEY => FAILBACK_KEY,
            TRACK_KEY => TRACK_KEY,
            other => {
                return Err(source.error(
                    &content_span,
                    Problem::UnknownDefaultsKey(other.to_string()),
                ));
            }
        };
        let line_number = source.line(&content_span);
        if let Some(&first_line) = first_lines.get(key) {
            return Err(source.error(
                &content_span,
                Problem::DuplicateDefaultsKey { key, first_line },
            ));
        }
        first_lines.insert(key, line_number);

        let value_offset = content_start + key_text.len() + 1;
        let value_span =
            value_offset + (value_text.len() - value_text.trim_start().len())..content_span.end;
        let value = unquote(value_text.trim());
        match key {
            FAILURE_DETECTION_TIME_KEY => {
                let millis = value.parse::<i64>().map_err(|_| {
                    source.error(&value_span, Problem::NotMilliseconds(value.into()))
                })?;
                let fdt = failure_detection_time(millis)
                    .map_err(|problem| source.error(&value_span, problem))?;
                defaults.failure_detection_time = Some(fdt);
            }
            FAILBACK_KEY => {
                defaults.failback =
                    Some(yes_no(key, value).map_err(|p| source.error(&value_span, p))?);
            }
            _ => {
                defaults.track_interfaces_only_with_groups =
                    Some(yes_no(key, value).map_err(|p| source.error(&value_span, p))?);
            }
        }
    }
    Ok(defaults)
}

fn unquote(value: &str) -> &str {
    ['"', '\'']
        .iter()
        .find_map(|&quote| value.strip_prefix(quote)?.strip_suffix(quote))
        .unwrap_or(value)
}

fn yes_no(key: &'static str, value: &str) -> Result<bool, Problem> {
    if value.eq_ignore_ascii_case("yes") {
        Ok(true)
    } else if value.eq_ignore_ascii_case("no") {
        Ok(false)
    } else {
        Err(Problem::NotYesNo {
            key,
            value: value.to_string(),
        })
    }
}

fn failure_detection_time(millis: i64) -> Result<Duration, Problem> {
    if millis < MIN_FAILURE_DETECTION_TIME_MS {
        Err(Problem::FailureDetectionTimeTooSmall(millis))
    } else if millis > MAX_FAILURE_DETECTION_TIME_MS {
        Err(Problem::FailureDetectionTimeTooLarge(millis))
    } else {
        Ok(Duration::from_millis(millis.unsigned_abs()))
    }
}

/// Who already uses a name or address, for "first on line N" messages.
struct Owner {
    name: String,
    line: usize,
}

/// Checks the raw file in file order, remembering what earlier items claimed so that a
/// conflict is reported at its second occurrence, naming the first.
struct Validator<'a> {
    source: Source<'a>,
    /// Group name → line of its name.
    groups: HashMap<String, usize>,
    /// Interface name → its group and line.
    interfaces: HashMap<String, Owner>,
    /// Test address → interface and line.
    test_addresses: HashMap<IpAddr, Owner>,
    /// Data address → interface and line.
    data_addresses: HashMap<IpAddr, Owner>,
    /// Every group's targets, checked against all local addresses once those are known.
    targets: Vec<(IpAddr, Range<usize>)>,
}

impl<'a> Validator<'a> {
    fn new(source: Source<'a>) -> Self {
        Validator {
            source,
            groups: HashMap::new(),
            interfaces: HashMap::new(),
            test_addresses: HashMap::new(),
            data_addresses: HashMap::new(),
            targets: Vec::new(),
        }
    }

    fn config(mut self, raw: RawConfig, defaults: SolarisDefaults) -> Result<Config, ConfigError> {
        let daemon = self.daemon(raw.daemon, defaults)?;
        let mut groups = Vec::with_capacity(raw.groups.len());
        for raw_group in raw.groups {
            groups.push(self.group(raw_group.span(), raw_group.into_inner())?);
        }
        for (target, span) in &self.targets {
            self.target_not_local(*target, span)?;
        }
        Ok(Config { daemon, groups })
    }

    fn daemon(
        &self,
        raw: Option<RawDaemon>,
        defaults: SolarisDefaults,
    ) -> Result<DaemonConfig, ConfigError> {
        let builtin = DaemonConfig::default();
        let raw = raw.unwrap_or_default();
        let failure_detection_time = match raw.failure_detection_time_ms {
            Some(millis) => failure_detection_time(*millis.get_ref())
                .map_err(|problem| self.source.error(&millis.span(), problem))?,
            None => defaults
                .failure_detection_time
                .unwrap_or(builtin.failure_detection_time),
        };
        let metrics_listen = match raw.metrics_listen {
            Some(text) => text.get_ref().parse().map_err(|_| {
                self.source.error(
                    &text.span(),
                    Problem::BadListenAddress(text.get_ref().clone()),
                )
            })?,
            None => builtin.metrics_listen,
        };
        Ok(DaemonConfig {
            failure_detection_time,
            failback: raw
                .failback
                .or(defaults.failback)
                .unwrap_or(builtin.failback),
            track_interfaces_only_with_groups: raw
                .track_interfaces_only_with_groups
                .or(defaults.track_interfaces_only_with_groups)
                .unwrap_or(builtin.track_interfaces_only_with_groups),
            metrics_listen,
            socket: self.absolute_path("socket", raw.socket, builtin.socket)?,
            bpf_pin_dir: self.absolute_path("bpf_pin_dir", raw.bpf_pin_dir, builtin.bpf_pin_dir)?,
        })
    }

    /// The daemon runs with `/` as its working directory, so a relative path is a mistake.
    fn absolute_path(
        &self,
        key: &'static str,
        raw: Option<Spanned<String>>,
        default: PathBuf,
    ) -> Result<PathBuf, ConfigError> {
        let Some(raw) = raw else {
            return Ok(default);
        };
        let path = PathBuf::from(raw.get_ref());
        if path.is_absolute() {
            Ok(path)
        } else {
            Err(self.source.error(
                &raw.span(),
                Problem::RelativePath {
                    key,
                    path: raw.into_inner(),
                },
            ))
        }
    }

    fn group(&mut self, span: Range<usize>, raw: RawGroup) -> Result<GroupConfig, ConfigError> {
        let name_span = raw.name.span();
        let name = raw.name.into_inner();
        if let Some(reason) = group_name_problem(&name) {
            return Err(self
                .source
                .error(&name_span, Problem::BadGroupName { name, reason }));
        }
        if let Some(&first_line) = self.groups.get(&name) {
            return Err(self
                .source
                .error(&name_span, Problem::DuplicateGroup { name, first_line }));
        }
        self.groups
            .insert(name.clone(), self.source.line(&name_span));

        let mut targets = Vec::with_capacity(raw.targets.len());
        for target in &raw.targets {
            let addr = self.target(target)?;
            if targets.contains(&addr) {
                return Err(self
                    .source
                    .error(&target.span(), Problem::DuplicateTarget(addr)));
            }
            targets.push(addr);
            self.targets.push((addr, target.span()));
        }

        if raw.interfaces.is_empty() {
            return Err(self.source.error(&span, Problem::EmptyGroup(name)));
        }
        let mut interfaces = Vec::with_capacity(raw.interfaces.len());
        for interface in raw.interfaces {
            interfaces.push(self.interface(&name, interface.into_inner())?);
        }
        if interfaces.iter().all(|interface| interface.standby) {
            return Err(self.source.error(&span, Problem::AllStandby(name)));
        }
        let tested = interfaces
            .iter()
            .filter(|i| i.test_address.is_some())
            .count();
        if tested > mpath_common::MAX_TEST_ADDRESSES_PER_GROUP {
            let problem = Problem::TooManyTestAddresses {
                group: name,
                count: tested,
                max: mpath_common::MAX_TEST_ADDRESSES_PER_GROUP,
            };
            return Err(self.source.error(&span, problem));
        }
        Ok(GroupConfig {
            name,
            targets,
            interfaces,
        })
    }

    fn target(&self, raw: &Spanned<String>) -> Result<IpAddr, ConfigError> {
        let addr: IpAddr = raw.get_ref().parse().map_err(|_| {
            self.source.error(
                &raw.span(),
                Problem::BadTarget {
                    value: raw.get_ref().clone(),
                },
            )
        })?;
        match unusable_address(addr) {
            Some(why) => Err(self.source.error(
                &raw.span(),
                Problem::UnusableAddress {
                    addr: addr.to_string(),
                    why: why.to_string(),
                },
            )),
            None => Ok(addr),
        }
    }

    /// Probing one of our own addresses would test nothing but the local stack.
    fn target_not_local(&self, target: IpAddr, span: &Range<usize>) -> Result<(), ConfigError> {
        let owner = self
            .test_addresses
            .get(&target)
            .or_else(|| self.data_addresses.get(&target));
        match owner {
            Some(owner) => Err(self.source.error(
                span,
                Problem::TargetIsLocal {
                    target,
                    interface: owner.name.clone(),
                    line: owner.line,
                },
            )),
            None => Ok(()),
        }
    }

    fn interface(
        &mut self,
        group: &str,
        raw: RawInterface,
    ) -> Result<InterfaceConfig, ConfigError> {
        let name_span = raw.name.span();
        let name = raw.name.into_inner();
        if let Some(reason) = interface_name_problem(&name) {
            return Err(self
                .source
                .error(&name_span, Problem::BadInterfaceName { name, reason }));
        }
        if let Some(owner) = self.interfaces.get(&name) {
            let problem = if owner.name == group {
                Problem::DuplicateInterface {
                    name,
                    group: group.to_string(),
                    first_line: owner.line,
                }
            } else {
                Problem::InterfaceInTwoGroups {
                    name,
                    other_group: owner.name.clone(),
                    first_line: owner.line,
                }
            };
            return Err(self.source.error(&name_span, problem));
        }
        self.interfaces.insert(
            name.clone(),
            Owner {
                name: group.to_string(),
                line: self.source.line(&name_span),
            },
        );

        let test_address = match raw.test_address {
            Some(raw_test) => Some(self.test_address(&name, &raw_test)?),
            None => None,
        };
        let mut data_addresses = Vec::with_capacity(raw.data_addresses.len());
        for raw_data in &raw.data_addresses {
            data_addresses.push(self.data_address(&name, raw.standby, raw_data)?);
        }
        Ok(InterfaceConfig {
            name,
            test_address,
            data_addresses,
            standby: raw.standby,
        })
    }

    fn test_address(
        &mut self,
        interface: &str,
        raw: &Spanned<String>,
    ) -> Result<Ipv4Cidr, ConfigError> {
        let span = raw.span();
        let cidr = self.host_cidr(raw)?;
        let IpAddr::V4(addr) = cidr.addr() else {
            return Err(self.source.error(&span, Problem::Ipv6TestAddress(cidr)));
        };
        if let Some(owner) = self.test_addresses.get(&cidr.addr()) {
            return Err(self.source.error(
                &span,
                Problem::DuplicateTestAddress {
                    addr: cidr,
                    interface: owner.name.clone(),
                    line: owner.line,
                },
            ));
        }
        if let Some(owner) = self.data_addresses.get(&cidr.addr()) {
            return Err(self.source.error(
                &span,
                Problem::TestAddressIsDataAddress {
                    addr: cidr,
                    interface: owner.name.clone(),
                    line: owner.line,
                },
            ));
        }
        self.test_addresses.insert(
            cidr.addr(),
            Owner {
                name: interface.to_string(),
                line: self.source.line(&span),
            },
        );
        Ok(Ipv4Cidr {
            addr,
            prefix_len: cidr.prefix_len(),
        })
    }

    fn data_address(
        &mut self,
        interface: &str,
        standby: bool,
        raw: &Spanned<String>,
    ) -> Result<IpCidr, ConfigError> {
        let span = raw.span();
        let cidr = self.host_cidr(raw)?;
        if is_ipv6_link_local(cidr.addr()) {
            return Err(self.source.error(
                &span,
                Problem::UnusableAddress {
                    addr: cidr.to_string(),
                    why: "an IPv6 link-local address, which belongs to one link and cannot fail \
                          over"
                        .to_string(),
                },
            ));
        }
        if let Some(owner) = self.data_addresses.get(&cidr.addr()) {
            return Err(self.source.error(
                &span,
                Problem::DuplicateDataAddress {
                    addr: cidr,
                    interface: owner.name.clone(),
                    line: owner.line,
                },
            ));
        }
        if let Some(owner) = self.test_addresses.get(&cidr.addr()) {
            return Err(self.source.error(
                &span,
                Problem::DataAddressIsTestAddress {
                    addr: cidr,
                    interface: owner.name.clone(),
                    line: owner.line,
                },
            ));
        }
        if standby {
            return Err(self.source.error(
                &span,
                Problem::DataAddressOnStandby {
                    addr: cidr,
                    interface: interface.to_string(),
                },
            ));
        }
        self.data_addresses.insert(
            cidr.addr(),
            Owner {
                name: interface.to_string(),
                line: self.source.line(&span),
            },
        );
        Ok(cidr)
    }

    /// Parses an interface address and refuses ones no host can own.
    fn host_cidr(&self, raw: &Spanned<String>) -> Result<IpCidr, ConfigError> {
        let cidr: IpCidr = raw.get_ref().parse().map_err(|reason| {
            self.source.error(
                &raw.span(),
                Problem::BadAddress {
                    value: raw.get_ref().clone(),
                    reason,
                },
            )
        })?;
        match unusable_address(cidr.addr())
            .map(str::to_string)
            .or_else(|| subnet_role(cidr))
        {
            Some(why) => Err(self.source.error(
                &raw.span(),
                Problem::UnusableAddress {
                    addr: cidr.to_string(),
                    why,
                },
            )),
            None => Ok(cidr),
        }
    }
}

fn group_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("it is empty")
    } else if name.chars().count() > MAX_GROUP_NAME_LEN {
        Some("it is longer than 31 characters")
    } else if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        Some("only letters, digits, '_', '.' and '-' are allowed")
    } else {
        None
    }
}

/// The rules of the kernel's `dev_valid_name`, so a name that passes can exist on Linux.
fn interface_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_INTERFACE_NAME_LEN {
        Some("Linux interface names are at most 15 bytes")
    } else if name == "." || name == ".." {
        Some("\".\" and \"..\" are not interface names")
    } else if name.contains('/') {
        Some("'/' is not allowed in an interface name")
    } else if name.contains(':') {
        Some("':' is not allowed: Linux has no logical interfaces such as h0:1")
    } else if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("whitespace and control characters are not allowed in an interface name")
    } else {
        None
    }
}

/// Addresses that can be neither a probe target nor an interface address.
fn unusable_address(addr: IpAddr) -> Option<&'static str> {
    if addr.is_unspecified() {
        Some("the unspecified address")
    } else if addr.is_multicast() {
        Some("a multicast address")
    } else if addr.is_loopback() {
        Some("a loopback address")
    } else if addr == IpAddr::V4(Ipv4Addr::BROADCAST) {
        Some("the limited broadcast address")
    } else {
        None
    }
}

/// An IPv4 address that is its subnet's network or broadcast address (prefixes up to /30).
fn subnet_role(cidr: IpCidr) -> Option<String> {
    let IpAddr::V4(addr) = cidr.addr() else {
        return None;
    };
    if cidr.prefix_len() > 30 {
        return None;
    }
    let host_mask = u32::MAX >> cidr.prefix_len();
    let bits = u32::from(addr);
    let network = Ipv4Addr::from(bits & !host_mask);
    if bits & host_mask == 0 {
        Some(format!(
            "the network address of {network}/{}",
            cidr.prefix_len()
        ))
    } else if bits & host_mask == host_mask {
        Some(format!(
            "the broadcast address of {network}/{}",
            cidr.prefix_len()
        ))
    } else {
        None
    }
}

fn is_ipv6_link_local(addr: IpAddr) -> bool {
    matches!(addr, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAME: &str = "/etc/mpath/mpathd.toml";
    const DEFAULTS_NAME: &str = "/etc/default/mpathd";

    /// The example of the controller issue, line for line.
    const ISSUE_EXAMPLE: &str = r#"[daemon]
failure_detection_time_ms = 10000            # FAILURE_DETECTION_TIME, minimum 100
failback = true                              # FAILBACK
track_interfaces_only_with_groups = true     # TRACK_INTERFACES_ONLY_WITH_GROUPS
metrics_listen = "127.0.0.1:9798"
socket = "/run/mpath/mpathd.sock"

[[group]]
name = "g0"
targets = ["192.0.2.1"]                      # optional: explicit probe targets

[[group.interface]]
name = "h0"
test_address = "192.0.2.21/24"               # optional: without it, link-based only
data_addresses = ["192.0.2.19/24", "2001:db8::19/64"]

[[group.interface]]
name = "h2"
standby = true
test_address = "192.0.2.23/24"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, NAME, None)
    }

    fn cidr(text: &str) -> IpCidr {
        text.parse().unwrap()
    }

    fn v4cidr(text: &str) -> Ipv4Cidr {
        let cidr = cidr(text);
        let IpAddr::V4(addr) = cidr.addr() else {
            panic!("{text} is not IPv4");
        };
        Ipv4Cidr::new(addr, cidr.prefix_len()).unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// Parses `text`, expecting a refusal, and returns (line, column, problem, message).
    fn refusal(text: &str) -> (usize, usize, Problem, String) {
        refusal_with_defaults(text, None)
    }

    fn refusal_with_defaults(
        text: &str,
        defaults: Option<&str>,
    ) -> (usize, usize, Problem, String) {
        let error = Config::parse(text, NAME, defaults.map(|d| (d, DEFAULTS_NAME)))
            .expect_err("the configuration must be refused");
        let message = error.to_string();
        let position = error.location().unwrap().position.unwrap();
        (
            position.line,
            position.column,
            error.problem().unwrap().clone(),
            message,
        )
    }

    /// A valid two-interface group followed by `extra`, for error cases.
    fn with_group(extra: &str) -> String {
        format!(
            "[[group]]\nname = \"g0\"\n\n[[group.interface]]\nname = \"h0\"\n\
             data_addresses = [\"192.0.2.19/24\"]\n\n{extra}"
        )
    }

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
    }

    #[test]
    fn every_daemon_key_is_read() {
        let config = parse(
            "[daemon]\nfailure_detection_time_ms = 100\nfailback = false\n\
             track_interfaces_only_with_groups = false\nmetrics_listen = \"[::]:9100\"\n\
             socket = \"/tmp/t/mpathd.sock\"\nbpf_pin_dir = \"/sys/fs/bpf/test-1\"\n",
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
            }
        );
    }

    #[test]
    fn error_message_names_file_line_column_and_reason() {
        let text = with_group(
            "[[group.interface]]\nname = \"h2\"\nstandby = true\n\
             data_addresses = [\"192.0.2.20/24\"]\n",
        );
        let error = parse(&text).unwrap_err();
        assert_eq!(
            error.to_string(),
            "/etc/mpath/mpathd.toml:11:19: data address 192.0.2.20/24 is configured on standby \
             interface h2: a standby carries only a test address until an active interface fails"
        );
    }

    #[test]
    fn unknown_keys_are_refused_everywhere() {
        for (text, line) in [
            ("[daemon]\nfailback = true\nfail_back = true\n", 3),
            ("[deamon]\n", 1),
            ("[[group]]\nname = \"g0\"\ntarget = [\"192.0.2.1\"]\n", 3),
            (
                &with_group("[[group.interface]]\nname = \"h1\"\nstandbye = true\n") as &str,
                10,
            ),
        ] {
            let (got_line, _, problem, _) = refusal(text);
            assert_eq!(got_line, line, "{text}");
            let Problem::Toml(message) = problem else {
                panic!("{text}: {problem:?}");
            };
            assert!(message.starts_with("unknown field"), "{message}");
        }
    }

    #[test]
    fn toml_syntax_and_type_errors_have_positions() {
        let (line, column, problem, _) = refusal("[daemon]\nfailback = \"yes\"\n");
        assert_eq!((line, column), (2, 12));
        assert!(matches!(problem, Problem::Toml(m) if m.contains("invalid type")));

        let (line, _, problem, _) = refusal("[daemon]\nfailback = true\nfailback = false\n");
        assert_eq!(line, 3);
        assert_eq!(problem, Problem::Toml("duplicate key `failback`".into()));

        let (line, _, problem, _) = refusal("\n\n[[group]]\ntargets = []\n");
        assert_eq!(line, 3);
        assert!(matches!(problem, Problem::Toml(m) if m.contains("missing field `name`")));

        let (line, _, _, _) = refusal("[daemon\n");
        assert_eq!(line, 1);
    }

    #[test]
    fn failure_detection_time_bounds() {
        let (line, column, problem, message) =
            refusal("\n[daemon]\nfailure_detection_time_ms = 99\n");
        assert_eq!((line, column), (3, 29));
        assert_eq!(problem, Problem::FailureDetectionTimeTooSmall(99));
        assert!(message.contains("minimum of 100 ms"), "{message}");

        let (_, _, problem, _) = refusal("[daemon]\nfailure_detection_time_ms = -5\n");
        assert_eq!(problem, Problem::FailureDetectionTimeTooSmall(-5));
        let (_, _, problem, _) = refusal("[daemon]\nfailure_detection_time_ms = 2147483648\n");
        assert_eq!(
            problem,
            Problem::FailureDetectionTimeTooLarge(2_147_483_648)
        );

        let config = parse("[daemon]\nfailure_detection_time_ms = 100\n").unwrap();
        assert_eq!(
            config.daemon.failure_detection_time,
            Duration::from_millis(100)
        );
    }

    #[test]
    fn bad_daemon_values() {
        let (line, _, problem, _) = refusal("[daemon]\nmetrics_listen = \"localhost:9798\"\n");
        assert_eq!(line, 2);
        assert_eq!(problem, Problem::BadListenAddress("localhost:9798".into()));
        let (line, _, problem, _) = refusal("[daemon]\n\nsocket = \"run/mpathd.sock\"\n");
        assert_eq!(line, 3);
        assert!(matches!(
            problem,
            Problem::RelativePath { key: "socket", .. }
        ));
        let (line, _, problem, _) = refusal("[daemon]\nbpf_pin_dir = \"\"\n");
        assert_eq!(line, 2);
        assert!(matches!(
            problem,
            Problem::RelativePath {
                key: "bpf_pin_dir",
                ..
            }
        ));
    }

    #[test]
    fn non_loopback_metrics_address_is_kept_when_written() {
        let config = parse("[daemon]\nmetrics_listen = \"192.0.2.5:9798\"\n").unwrap();
        assert_eq!(
            config.daemon.metrics_listen,
            "192.0.2.5:9798".parse().unwrap()
        );
    }

    #[test]
    fn bad_group_names() {
        for (name, reason_part) in [
            ("", "empty"),
            ("g 0", "only letters"),
            ("g/0", "only letters"),
            ("abcdefghijabcdefghijabcdefghij12", "31 characters"),
        ] {
            let text = format!("[[group]]\n\nname = \"{name}\"\n");
            let (line, column, problem, message) = refusal(&text);
            assert_eq!((line, column), (3, 8), "{name:?}");
            assert!(
                matches!(problem, Problem::BadGroupName { .. }),
                "{problem:?}"
            );
            assert!(message.contains(reason_part), "{message}");
        }
        let longest = "abcdefghijabcdefghijabcdefghij1";
        let config = parse(&format!(
            "[[group]]\nname = \"{longest}\"\n[[group.interface]]\nname = \"h0\"\n"
        ))
        .unwrap();
        assert_eq!(config.groups[0].name, longest);
    }

    #[test]
    fn duplicate_group() {
        let text = with_group("[[group]]\nname = \"g0\"\n[[group.interface]]\nname = \"h1\"\n");
        let (line, _, problem, _) = refusal(&text);
        assert_eq!(line, 9);
        assert_eq!(
            problem,
            Problem::DuplicateGroup {
                name: "g0".into(),
                first_line: 2
            }
        );
    }

    #[test]
    fn group_without_interface() {
        let text = with_group("[[group]]\nname = \"g1\"\ntargets = [\"192.0.2.1\"]\n");
        let (line, column, problem, _) = refusal(&text);
        assert_eq!((line, column), (8, 1));
        assert_eq!(problem, Problem::EmptyGroup("g1".into()));
    }

    #[test]
    fn group_of_only_standbys() {
        let text = "[[group]]\nname = \"g0\"\n[[group.interface]]\nname = \"h0\"\nstandby = true\n\
                    [[group.interface]]\nname = \"h1\"\nstandby = true\n";
        let (line, _, problem, _) = refusal(text);
        assert_eq!(line, 1);
        assert_eq!(problem, Problem::AllStandby("g0".into()));
    }

    #[test]
    fn bad_interface_names() {
        for (name, reason_part) in [
            ("", "empty"),
            ("abcdefghijklmnop", "15 bytes"),
            (".", "\".\""),
            ("..", "\".\""),
            ("h/0", "'/'"),
            ("h0:1", "logical"),
            ("h 0", "whitespace"),
            ("h\\t0", "whitespace"),
            ("h\\u00000", "control"),
        ] {
            let text = with_group(&format!("[[group.interface]]\nname = \"{name}\"\n"));
            let (line, column, problem, message) = refusal(&text);
            assert_eq!((line, column), (9, 8), "{name:?}");
            assert!(
                matches!(problem, Problem::BadInterfaceName { .. }),
                "{problem:?}"
            );
            assert!(message.contains(reason_part), "{name:?}: {message}");
        }
        for name in [
            "abcdefghijklmno",
            "eth0.100",
            "enp0s31f6",
            "br-lan_1",
            "wlö0",
        ] {
            let text = with_group(&format!("[[group.interface]]\nname = \"{name}\"\n"));
            parse(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn interface_twice_in_one_group() {
        let text = with_group("[[group.interface]]\nname = \"h0\"\n");
        let (line, _, problem, message) = refusal(&text);
        assert_eq!(line, 9);
        assert_eq!(
            problem,
            Problem::DuplicateInterface {
                name: "h0".into(),
                group: "g0".into(),
                first_line: 5
            }
        );
        assert!(message.contains("listed twice in group g0"), "{message}");
    }

    #[test]
    fn interface_in_two_groups() {
        let text = with_group(
            "[[group]]\nname = \"g1\"\n\n[[group.interface]]\nname = \"h1\"\n\
             [[group.interface]]\nname = \"h0\"\n",
        );
        let (line, column, problem, _) = refusal(&text);
        assert_eq!((line, column), (14, 8));
        assert_eq!(
            problem,
            Problem::InterfaceInTwoGroups {
                name: "h0".into(),
                other_group: "g0".into(),
                first_line: 5
            }
        );
    }

    #[test]
    fn bad_addresses_and_prefix_lengths() {
        for (value, expected) in [
            (
                "192.0.2.300/24",
                CidrError::BadAddress("192.0.2.300".into()),
            ),
            ("h0.example/24", CidrError::BadAddress("h0.example".into())),
            ("192.0.2.19", CidrError::MissingPrefixLen),
            (
                "192.0.2.19/33",
                CidrError::PrefixLenOutOfRange {
                    prefix_len: "33".into(),
                    max: 32,
                },
            ),
            (
                "2001:db8::19/129",
                CidrError::PrefixLenOutOfRange {
                    prefix_len: "129".into(),
                    max: 128,
                },
            ),
            (
                "192.0.2.19/",
                CidrError::PrefixLenOutOfRange {
                    prefix_len: "".into(),
                    max: 32,
                },
            ),
            (
                "192.0.2.19/+24",
                CidrError::PrefixLenOutOfRange {
                    prefix_len: "+24".into(),
                    max: 32,
                },
            ),
            (
                "192.0.2.19/999999",
                CidrError::PrefixLenOutOfRange {
                    prefix_len: "999999".into(),
                    max: 32,
                },
            ),
        ] {
            let text = with_group(&format!(
                "[[group.interface]]\nname = \"h1\"\n\ndata_addresses = [\"192.0.2.40/24\", \"{value}\"]\n"
            ));
            let (line, column, problem, _) = refusal(&text);
            assert_eq!((line, column), (11, 36), "{value}");
            assert_eq!(
                problem,
                Problem::BadAddress {
                    value: value.into(),
                    reason: expected
                }
            );
        }
    }

    #[test]
    fn bad_test_address_and_target() {
        let text =
            with_group("[[group.interface]]\nname = \"h1\"\ntest_address = \"192.0.2.x/24\"\n");
        let (line, column, problem, _) = refusal(&text);
        assert_eq!((line, column), (10, 16));
        assert!(matches!(problem, Problem::BadAddress { .. }), "{problem:?}");

        let text = "[[group]]\nname = \"g0\"\ntargets = [\"192.0.2.1\", \"router\"]\n";
        let (line, column, problem, _) = refusal(text);
        assert_eq!((line, column), (3, 25));
        assert_eq!(
            problem,
            Problem::BadTarget {
                value: "router".into()
            }
        );
    }

    #[test]
    fn unusable_addresses() {
        for (value, why) in [
            ("0.0.0.0/24", "unspecified"),
            ("224.0.0.1/24", "multicast"),
            ("127.0.0.2/8", "loopback"),
            ("::1/128", "loopback"),
            ("192.0.2.0/24", "network address of 192.0.2.0/24"),
            ("192.0.2.255/24", "broadcast address of 192.0.2.0/24"),
            ("fe80::19/64", "link-local"),
        ] {
            let text = with_group(&format!(
                "[[group.interface]]\nname = \"h1\"\ndata_addresses = [\"{value}\"]\n"
            ));
            let (line, _, problem, message) = refusal(&text);
            assert_eq!(line, 10, "{value}");
            assert!(
                matches!(problem, Problem::UnusableAddress { .. }),
                "{problem:?}"
            );
            assert!(message.contains(why), "{message}");
        }
        // /31 and /32 have no network or broadcast address.
        for value in ["192.0.2.0/31", "192.0.2.255/32"] {
            let text = with_group(&format!(
                "[[group.interface]]\nname = \"h1\"\ndata_addresses = [\"{value}\"]\n"
            ));
            parse(&text).unwrap_or_else(|e| panic!("{value}: {e}"));
        }
        let (line, _, problem, _) = refusal("[[group]]\nname = \"g0\"\ntargets = [\"ff02::1\"]\n");
        assert_eq!(line, 3);
        assert!(matches!(problem, Problem::UnusableAddress { .. }));
    }

    #[test]
    fn ipv6_test_address_is_refused_with_explanation() {
        let text =
            with_group("[[group.interface]]\nname = \"h1\"\ntest_address = \"2001:db8::21/64\"\n");
        let (line, _, problem, message) = refusal(&text);
        assert_eq!(line, 10);
        assert_eq!(problem, Problem::Ipv6TestAddress(cidr("2001:db8::21/64")));
        assert!(message.contains("link-local"), "{message}");
    }

    #[test]
    fn duplicate_target() {
        let text = "[[group]]\nname = \"g0\"\ntargets = [\n  \"192.0.2.1\",\n  \"2001:db8::1\",\n  \"192.0.2.1\",\n]\n";
        let (line, column, problem, _) = refusal(text);
        assert_eq!((line, column), (6, 3));
        assert_eq!(problem, Problem::DuplicateTarget(ip("192.0.2.1")));
    }

    #[test]
    fn target_that_is_a_local_address() {
        let text = "[[group]]\nname = \"g0\"\ntargets = [\"192.0.2.1\", \"192.0.2.21\"]\n\
                    [[group.interface]]\nname = \"h0\"\ntest_address = \"192.0.2.21/24\"\n";
        let (line, _, problem, _) = refusal(text);
        assert_eq!(line, 3);
        assert_eq!(
            problem,
            Problem::TargetIsLocal {
                target: ip("192.0.2.21"),
                interface: "h0".into(),
                line: 6
            }
        );
    }

    #[test]
    fn same_data_address_twice_anywhere() {
        // Same interface, and a different prefix length is still the same address.
        let text = "[[group]]\nname = \"g0\"\n[[group.interface]]\nname = \"h0\"\n\
                    data_addresses = [\"192.0.2.19/24\",\n  \"192.0.2.19/25\"]\n";
        let (line, column, problem, _) = refusal(text);
        assert_eq!((line, column), (6, 3));
        assert_eq!(
            problem,
            Problem::DuplicateDataAddress {
                addr: cidr("192.0.2.19/25"),
                interface: "h0".into(),
                line: 5
            }
        );
        // Another group.
        let text = with_group(
            "[[group]]\nname = \"g1\"\n[[group.interface]]\nname = \"h5\"\n\
             data_addresses = [\"192.0.2.19/24\"]\n",
        );
        let (line, _, problem, _) = refusal(&text);
        assert_eq!(line, 12);
        assert_eq!(
            problem,
            Problem::DuplicateDataAddress {
                addr: cidr("192.0.2.19/24"),
                interface: "h0".into(),
                line: 6
            }
        );
    }

    #[test]
    fn data_address_equal_to_a_test_address() {
        let text = "[[group]]\nname = \"g0\"\n[[group.interface]]\nname = \"h0\"\n\
                    test_address = \"192.0.2.21/24\"\n[[group.interface]]\nname = \"h1\"\n\
                    data_addresses = [\"192.0.2.21/24\"]\n";
        let (line, _, problem, _) = refusal(text);
        assert_eq!(line, 8);
        assert_eq!(
            problem,
            Problem::DataAddressIsTestAddress {
                addr: cidr("192.0.2.21/24"),
                interface: "h0".into(),
                line: 5
            }
        );
        // The other order is refused at the test address.
        let text =
            with_group("[[group.interface]]\nname = \"h1\"\ntest_address = \"192.0.2.19/24\"\n");
        let (line, _, problem, _) = refusal(&text);
        assert_eq!(line, 10);
        assert_eq!(
            problem,
            Problem::TestAddressIsDataAddress {
                addr: cidr("192.0.2.19/24"),
                interface: "h0".into(),
                line: 6
            }
        );
    }

    #[test]
    fn same_test_address_on_two_interfaces() {
        let text = "[[group]]\nname = \"g0\"\n[[group.interface]]\nname = \"h0\"\n\
                    test_address = \"192.0.2.21/24\"\n[[group.interface]]\nname = \"h1\"\n\
                    test_address = \"192.0.2.21/24\"\n";
        let (line, _, problem, _) = refusal(text);
        assert_eq!(line, 8);
        assert_eq!(
            problem,
            Problem::DuplicateTestAddress {
                addr: cidr("192.0.2.21/24"),
                interface: "h0".into(),
                line: 5
            }
        );
    }

    #[test]
    fn data_address_on_standby() {
        let text = with_group(
            "[[group.interface]]\nname = \"h2\"\nstandby = true\ntest_address = \"192.0.2.23/24\"\n\
             data_addresses = [\"2001:db8::20/64\"]\n",
        );
        let (line, column, problem, _) = refusal(&text);
        assert_eq!((line, column), (12, 19));
        assert_eq!(
            problem,
            Problem::DataAddressOnStandby {
                addr: cidr("2001:db8::20/64"),
                interface: "h2".into()
            }
        );
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        let text = "# größe\n[daemon]\nmetrics_listen = \"ü\"\n";
        let (line, column, _, _) = refusal(text);
        assert_eq!((line, column), (3, 18));
        let text = "[daemon] # ü\nfailback = true # é\n  failure_detection_time_ms = 1 # ö\n";
        let (line, column, _, _) = refusal(text);
        assert_eq!((line, column), (3, 31));
    }

    const SOLARIS_DEFAULTS: &str = "#\n# Time taken by mpathd to detect a NIC failure in ms.\n\
        FAILURE_DETECTION_TIME=10000\n#\n# Failback is enabled by default.\nFAILBACK=yes\n\
        \nTRACK_INTERFACES_ONLY_WITH_GROUPS=yes\n";

    #[test]
    fn solaris_defaults_file_as_shipped_is_read() {
        let config = Config::parse("", NAME, Some((SOLARIS_DEFAULTS, DEFAULTS_NAME))).unwrap();
        assert_eq!(config.daemon, DaemonConfig::default());
    }

    #[test]
    fn solaris_defaults_apply_when_toml_is_silent() {
        let defaults = "FAILURE_DETECTION_TIME=2000\nFAILBACK=No\n TRACK_INTERFACES_ONLY_WITH_GROUPS = \"no\"\n";
        let config = Config::parse("", NAME, Some((defaults, DEFAULTS_NAME))).unwrap();
        assert_eq!(config.daemon.failure_detection_time, Duration::from_secs(2));
        assert!(!config.daemon.failback);
        assert!(!config.daemon.track_interfaces_only_with_groups);
        // A [daemon] table that sets other keys still lets the defaults file through.
        let config = Config::parse(
            "[daemon]\nsocket = \"/tmp/s\"\n",
            NAME,
            Some((defaults, DEFAULTS_NAME)),
        )
        .unwrap();
        assert_eq!(config.daemon.failure_detection_time, Duration::from_secs(2));
        assert!(!config.daemon.failback);
        assert!(!config.daemon.track_interfaces_only_with_groups);
    }

    #[test]
    fn toml_wins_over_solaris_defaults_key_by_key() {
        let defaults =
            "FAILURE_DETECTION_TIME=2000\nFAILBACK=no\nTRACK_INTERFACES_ONLY_WITH_GROUPS=no\n";
        let toml = "[daemon]\nfailure_detection_time_ms = 500\nfailback = true\n";
        let config = Config::parse(toml, NAME, Some((defaults, DEFAULTS_NAME))).unwrap();
        assert_eq!(
            config.daemon.failure_detection_time,
            Duration::from_millis(500)
        );
        assert!(config.daemon.failback);
        assert!(!config.daemon.track_interfaces_only_with_groups);
    }

    #[test]
    fn solaris_defaults_errors_name_the_defaults_file() {
        for (defaults, line, column, expected) in [
            (
                "# c\nFAILBACK=maybe\n",
                2,
                10,
                Problem::NotYesNo {
                    key: FAILBACK_KEY,
                    value: "maybe".into(),
                },
            ),
            (
                "\n\nFAILURE_DETECTION_TIME=50\n",
                3,
                24,
                Problem::FailureDetectionTimeTooSmall(50),
            ),
            (
                "FAILURE_DETECTION_TIME= 10s\n",
                1,
                25,
                Problem::NotMilliseconds("10s".into()),
            ),
            (
                "FAILBACK=yes\n  PROBE_TIME=5\n",
                2,
                3,
                Problem::UnknownDefaultsKey("PROBE_TIME".into()),
            ),
            ("FAILBACK yes\n", 1, 1, Problem::NotKeyValue),
            (
                "FAILBACK=yes\r\nFAILBACK=no\r\n",
                2,
                1,
                Problem::DuplicateDefaultsKey {
                    key: FAILBACK_KEY,
                    first_line: 1,
                },
            ),
        ] {
            let error = Config::parse("", NAME, Some((defaults, DEFAULTS_NAME))).unwrap_err();
            let location = error.location().unwrap();
            assert_eq!(location.file, DEFAULTS_NAME);
            assert_eq!(
                location.position,
                Some(Position { line, column }),
                "{defaults:?}"
            );
            assert_eq!(error.problem(), Some(&expected));
            assert!(
                error
                    .to_string()
                    .starts_with(&format!("{DEFAULTS_NAME}:{line}:{column}: ")),
                "{error}"
            );
        }
    }

    #[test]
    fn bad_defaults_file_is_refused_even_when_toml_sets_the_key() {
        let toml = "[daemon]\nfailback = true\n";
        let error =
            Config::parse(toml, NAME, Some(("FAILBACK=sometimes\n", DEFAULTS_NAME))).unwrap_err();
        assert_eq!(error.location().unwrap().file, DEFAULTS_NAME);
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
    fn more_test_addresses_than_the_datapath_keeps_are_refused() {
        let mut text = String::from("[[group]]\nname = \"big\"\n");
        for i in 0..17 {
            text.push_str(&format!(
                "[[group.interface]]\nname = \"h{i}\"\ntest_address = \"192.0.2.{}/24\"\n",
                100 + i
            ));
        }
        let error = Config::parse(&text, "big.toml", None).unwrap_err();
        assert_eq!(
            error.to_string(),
            "big.toml:1:1: group big has 17 interfaces with test addresses; the datapath keeps \
             at most 16 per group"
        );
        let sixteen = text[..text.rfind("[[group.interface]]").unwrap()].to_string();
        assert!(Config::parse(&sixteen, "ok.toml", None).is_ok());
    }

    #[test]
    fn cidr_round_trips_through_display() {
        for text in ["192.0.2.19/24", "2001:db8::19/64", "0.0.0.0/0", "::/128"] {
            assert_eq!(cidr(text).to_string(), text);
        }
        assert_eq!(v4cidr("192.0.2.21/24").to_string(), "192.0.2.21/24");
        assert_eq!(IpCidr::from(v4cidr("192.0.2.21/24")), cidr("192.0.2.21/24"));
        assert!(IpCidr::new(ip("2001:db8::1"), 129).is_err());
        assert!(Ipv4Cidr::new(Ipv4Addr::new(192, 0, 2, 1), 33).is_err());
    }

    // --- diff ---

    fn base() -> Config {
        parse(
            "[[group]]\nname = \"g0\"\ntargets = [\"192.0.2.1\", \"192.0.2.2\"]\n\
             [[group.interface]]\nname = \"h0\"\ntest_address = \"192.0.2.21/24\"\n\
             data_addresses = [\"192.0.2.19/24\", \"2001:db8::19/64\"]\n\
             [[group.interface]]\nname = \"h1\"\ndata_addresses = [\"192.0.2.20/24\"]\n\
             [[group.interface]]\nname = \"h2\"\nstandby = true\ntest_address = \"192.0.2.23/24\"\n\
             [[group]]\nname = \"g1\"\n[[group.interface]]\nname = \"h5\"\n\
             data_addresses = [\"198.51.100.5/24\"]\n",
        )
        .unwrap()
    }

    fn group_mut<'c>(config: &'c mut Config, name: &str) -> &'c mut GroupConfig {
        config.groups.iter_mut().find(|g| g.name == name).unwrap()
    }

    fn interface_mut<'c>(
        config: &'c mut Config,
        group: &str,
        name: &str,
    ) -> &'c mut InterfaceConfig {
        group_mut(config, group)
            .interfaces
            .iter_mut()
            .find(|i| i.name == name)
            .unwrap()
    }

    #[test]
    fn identical_configs_have_an_empty_diff() {
        let diff = base().diff(&base());
        assert!(diff.is_empty());
        assert_eq!(diff, ConfigDiff::default());
        assert_eq!(diff.to_string(), "no changes");
    }

    #[test]
    fn reordering_is_not_a_change() {
        let mut new = base();
        new.groups.reverse();
        group_mut(&mut new, "g0").interfaces.reverse();
        group_mut(&mut new, "g0").targets.reverse();
        interface_mut(&mut new, "g0", "h0").data_addresses.reverse();
        assert!(base().diff(&new).is_empty());
    }

    #[test]
    fn daemon_tunables_diff() {
        let mut new = base();
        new.daemon.failure_detection_time = Duration::from_millis(500);
        new.daemon.failback = false;
        new.daemon.bpf_pin_dir = "/sys/fs/bpf/other".into();
        let diff = base().diff(&new);
        assert_eq!(
            diff.daemon,
            vec![
                DaemonChange::FailureDetectionTime(Change {
                    old: Duration::from_secs(10),
                    new: Duration::from_millis(500)
                }),
                DaemonChange::Failback(Change {
                    old: true,
                    new: false
                }),
                DaemonChange::BpfPinDir(Change {
                    old: "/sys/fs/bpf/mpath".into(),
                    new: "/sys/fs/bpf/other".into()
                }),
            ]
        );
        assert!(diff.groups_added.is_empty() && diff.groups_removed.is_empty());
        assert!(diff.groups_changed.is_empty());
        assert_eq!(
            diff.to_string(),
            "failure_detection_time_ms 10000 -> 500; failback true -> false; \
             bpf_pin_dir /sys/fs/bpf/mpath -> /sys/fs/bpf/other"
        );

        let mut new = base();
        new.daemon.track_interfaces_only_with_groups = false;
        new.daemon.metrics_listen = "[::1]:9100".parse().unwrap();
        new.daemon.socket = "/tmp/s".into();
        assert_eq!(base().diff(&new).daemon.len(), 3);
    }

    #[test]
    fn groups_added_and_removed() {
        let old = base();
        let mut new = base();
        let g1 = new.groups.remove(1);
        let g2 = GroupConfig {
            name: "g2".into(),
            targets: vec![],
            interfaces: vec![InterfaceConfig {
                name: "h9".into(),
                test_address: None,
                data_addresses: vec![cidr("203.0.113.9/24")],
                standby: false,
            }],
        };
        new.groups.push(g2.clone());
        let diff = old.diff(&new);
        assert_eq!(diff.groups_added, vec![g2]);
        assert_eq!(diff.groups_removed, vec![g1]);
        assert!(diff.groups_changed.is_empty() && diff.daemon.is_empty());
        assert_eq!(diff.to_string(), "group g2 added; group g1 removed");
    }

    #[test]
    fn targets_diff() {
        let mut new = base();
        group_mut(&mut new, "g0").targets = vec![ip("192.0.2.2"), ip("2001:db8::1")];
        let diff = base().diff(&new);
        assert_eq!(
            diff.groups_changed,
            vec![GroupDiff {
                name: "g0".into(),
                targets_added: vec![ip("2001:db8::1")],
                targets_removed: vec![ip("192.0.2.1")],
                interfaces_added: vec![],
                interfaces_removed: vec![],
                interfaces_changed: vec![],
            }]
        );
        assert_eq!(
            diff.to_string(),
            "group g0: targets +2001:db8::1 -192.0.2.1"
        );
    }

    #[test]
    fn interfaces_added_removed_and_moved_between_groups() {
        let old = base();
        let mut new = base();
        let h1 = group_mut(&mut new, "g0").interfaces.remove(1);
        group_mut(&mut new, "g1").interfaces.push(h1.clone());
        let h3 = InterfaceConfig {
            name: "h3".into(),
            test_address: Some(v4cidr("192.0.2.24/24")),
            data_addresses: vec![],
            standby: false,
        };
        group_mut(&mut new, "g0").interfaces.push(h3.clone());
        let diff = old.diff(&new);
        assert_eq!(diff.groups_changed.len(), 2);
        let g0 = &diff.groups_changed[0];
        assert_eq!(g0.name, "g0");
        assert_eq!(g0.interfaces_added, vec![h3]);
        assert_eq!(g0.interfaces_removed, vec![h1.clone()]);
        assert!(g0.interfaces_changed.is_empty());
        let g1 = &diff.groups_changed[1];
        assert_eq!(g1.name, "g1");
        assert_eq!(g1.interfaces_added, vec![h1]);
        assert!(g1.interfaces_removed.is_empty() && g1.targets_added.is_empty());
        assert_eq!(
            diff.to_string(),
            "group g0: interface h3 added, interface h1 removed; group g1: interface h1 added"
        );
    }

    #[test]
    fn interface_changes_are_precise() {
        let mut new = base();
        let h0 = interface_mut(&mut new, "g0", "h0");
        h0.test_address = Some(v4cidr("192.0.2.31/24"));
        // 2001:db8::19 kept; 192.0.2.19/24 becomes /25: the kernel needs delete + add.
        h0.data_addresses = vec![
            cidr("2001:db8::19/64"),
            cidr("192.0.2.19/25"),
            cidr("192.0.2.29/24"),
        ];
        let h2 = interface_mut(&mut new, "g0", "h2");
        h2.standby = false;
        h2.test_address = None;
        let diff = base().diff(&new);
        assert_eq!(diff.groups_changed.len(), 1);
        assert_eq!(
            diff.groups_changed[0].interfaces_changed,
            vec![
                InterfaceDiff {
                    name: "h0".into(),
                    standby: None,
                    test_address: Some(Change {
                        old: Some(v4cidr("192.0.2.21/24")),
                        new: Some(v4cidr("192.0.2.31/24"))
                    }),
                    data_addresses_added: vec![cidr("192.0.2.19/25"), cidr("192.0.2.29/24")],
                    data_addresses_removed: vec![cidr("192.0.2.19/24")],
                },
                InterfaceDiff {
                    name: "h2".into(),
                    standby: Some(Change {
                        old: true,
                        new: false
                    }),
                    test_address: Some(Change {
                        old: Some(v4cidr("192.0.2.23/24")),
                        new: None
                    }),
                    data_addresses_added: vec![],
                    data_addresses_removed: vec![],
                },
            ]
        );
        assert_eq!(
            diff.to_string(),
            "group g0: interface h0 test address 192.0.2.21/24 -> 192.0.2.31/24, \
             data addresses +192.0.2.19/25 +192.0.2.29/24 -192.0.2.19/24, \
             interface h2 standby true -> false, test address 192.0.2.23/24 -> none"
        );
    }

    #[test]
    fn data_address_moving_between_interfaces() {
        let mut new = base();
        interface_mut(&mut new, "g0", "h1").data_addresses.clear();
        interface_mut(&mut new, "g0", "h0")
            .data_addresses
            .push(cidr("192.0.2.20/24"));
        let diff = base().diff(&new);
        let changed = &diff.groups_changed[0].interfaces_changed;
        assert_eq!(changed.len(), 2);
        assert_eq!(changed[0].name, "h0");
        assert_eq!(changed[0].data_addresses_added, vec![cidr("192.0.2.20/24")]);
        assert!(changed[0].data_addresses_removed.is_empty());
        assert_eq!(changed[1].name, "h1");
        assert_eq!(
            changed[1].data_addresses_removed,
            vec![cidr("192.0.2.20/24")]
        );
        assert!(changed[1].data_addresses_added.is_empty());
        assert!(
            changed
                .iter()
                .all(|c| c.standby.is_none() && c.test_address.is_none())
        );
    }

    // --- hostile input ---

    /// xorshift64*: a fixed seed makes every failure reproducible.
    struct Rng(u64);

    impl Rng {
        fn next_u64(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next_u64() % n.max(1) as u64) as usize
        }
    }

    /// Bytes that steer mutations toward TOML structure and the validator's edge cases.
    const INTERESTING: &[&[u8]] = &[
        b"\"",
        b"'",
        b"[",
        b"]",
        b"[[",
        b"]]",
        b"=",
        b"\n",
        b"#",
        b",",
        b".",
        b"/",
        b":",
        b"{",
        b"}",
        b"\\",
        b"\\u0000",
        b"0",
        b"9",
        b"-",
        b"99",
        b"255",
        b"/33",
        b"/129",
        b"::",
        b"fe80::1",
        b"true",
        b"false",
        b"1e9",
        b"\"\"\"",
        b"\xc3\xa9",
        b"\xff",
        b"\r\n",
        b" ",
        b"\t",
        b"standby = true\n",
        b"[[group]]\nname = \"g0\"\n",
        b"[[group.interface]]\n",
        b"name = \"h0\"\n",
        b"-9223372036854775808",
        b"9223372036854775807",
    ];

    fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
        let mut bytes = input.to_vec();
        for _ in 0..=rng.below(3) {
            let at = rng.below(bytes.len() + 1);
            match rng.below(7) {
                0 if !bytes.is_empty() => {
                    let at = at.min(bytes.len() - 1);
                    bytes[at] = rng.next_u64() as u8;
                }
                1 => bytes.insert(at, rng.next_u64() as u8),
                2 => {
                    let end = (at + rng.below(16)).min(bytes.len());
                    bytes.drain(at..end);
                }
                3 => {
                    let token = INTERESTING[rng.below(INTERESTING.len())];
                    bytes.splice(at..at, token.iter().copied());
                }
                4 => {
                    // Duplicate a slice elsewhere: repeats keys, tables and addresses.
                    let start = rng.below(bytes.len());
                    let end = (start + rng.below(64)).min(bytes.len());
                    let chunk = bytes[start..end].to_vec();
                    bytes.splice(at..at, chunk);
                }
                5 => bytes.truncate(at),
                _ => {
                    let digit = b'0' + rng.below(10) as u8;
                    if let Some(b) = bytes.iter_mut().skip(at).find(|b| b.is_ascii_digit()) {
                        *b = digit;
                    }
                }
            }
        }
        bytes
    }

    /// Checks the guarantees a successful parse gives the daemon.
    fn assert_invariants(text: &str, config: &Config) {
        assert!(
            config.daemon.failure_detection_time >= Duration::from_millis(100),
            "{text}"
        );
        let mut groups = Vec::new();
        let mut interfaces = Vec::new();
        let mut addresses = Vec::new();
        for group in &config.groups {
            assert!(group_name_problem(&group.name).is_none(), "{text}");
            assert!(!groups.contains(&&group.name), "{text}");
            groups.push(&group.name);
            assert!(group.interfaces.iter().any(|i| !i.standby), "{text}");
            for interface in &group.interfaces {
                assert!(interface_name_problem(&interface.name).is_none(), "{text}");
                assert!(!interfaces.contains(&&interface.name), "{text}");
                interfaces.push(&interface.name);
                assert!(
                    !interface.standby || interface.data_addresses.is_empty(),
                    "{text}"
                );
                let test = interface.test_address.map(|t| IpAddr::V4(t.addr()));
                for addr in interface
                    .data_addresses
                    .iter()
                    .map(|a| a.addr())
                    .chain(test)
                {
                    assert!(!addresses.contains(&addr), "{text}");
                    addresses.push(addr);
                }
            }
        }
    }

    /// An error from `parse` points inside the file it names.
    fn assert_error_is_located(toml_text: &str, defaults_text: Option<&str>, error: &ConfigError) {
        let location = error.location().expect("parse never reads files");
        let text = if location.file == NAME {
            toml_text
        } else {
            assert_eq!(location.file, DEFAULTS_NAME);
            defaults_text.expect("no defaults file was given")
        };
        if let Some(position) = location.position {
            let lines = text.split('\n').count();
            assert!(
                (1..=lines).contains(&position.line) && position.column >= 1,
                "{position:?} outside {text:?}"
            );
        }
    }

    #[test]
    fn mutated_inputs_never_panic() {
        let seeds = [
            ISSUE_EXAMPLE.to_string(),
            with_group(
                "[[group.interface]]\nname = \"h1\"\nstandby = true\ntest_address = \"192.0.2.22/24\"\n",
            ),
            "[daemon]\nfailure_detection_time_ms = 100\nmetrics_listen = \"[::1]:9798\"\n\
             bpf_pin_dir = \"/sys/fs/bpf/t\"\n[[group]]\nname = \"g.1-x\"\n\
             targets = [\"2001:db8::1\", \"192.0.2.1\"]\ngroup.interface = [{ name = \"h0\", \
             data_addresses = [\"2001:db8::5/64\"] }]\n"
                .to_string(),
        ];
        let defaults_seeds = [
            SOLARIS_DEFAULTS,
            "FAILBACK=no\nFAILURE_DETECTION_TIME=100\n",
        ];
        let mut rng = Rng(0x5EED_1234_ABCD_0001);
        let (mut accepted, mut refused) = (0, 0);
        for case in 0..20_000 {
            let seed = &seeds[case % seeds.len()];
            let mutated = mutate(&mut rng, seed.as_bytes());
            let text = String::from_utf8_lossy(&mutated);
            let defaults = (case % 5 == 0).then(|| {
                let seed = defaults_seeds[rng.below(defaults_seeds.len())];
                String::from_utf8_lossy(&mutate(&mut rng, seed.as_bytes())).into_owned()
            });
            let result = std::panic::catch_unwind(|| {
                Config::parse(&text, NAME, defaults.as_deref().map(|d| (d, DEFAULTS_NAME)))
            });
            match result {
                Ok(Ok(config)) => {
                    accepted += 1;
                    assert_invariants(&text, &config);
                }
                Ok(Err(error)) => {
                    refused += 1;
                    assert_error_is_located(&text, defaults.as_deref(), &error);
                }
                Err(_) => panic!("case {case}: parse panicked on {text:?} / {defaults:?}"),
            }
        }
        // Both outcomes must be exercised, or the mutations are too weak or too strong.
        assert!(
            accepted > 1_000 && refused > 10_000,
            "{accepted} accepted, {refused} refused"
        );
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = Rng(0xDEAD_BEEF_0BAD_F00D);
        for _ in 0..5_000 {
            let len = rng.below(200);
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    let token = INTERESTING[rng.below(INTERESTING.len())];
                    if rng.below(2) == 0 {
                        token[0]
                    } else {
                        rng.next_u64() as u8
                    }
                })
                .collect();
            let text = String::from_utf8_lossy(&bytes);
            if let Err(error) = Config::parse(&text, NAME, Some((&text, DEFAULTS_NAME))) {
                assert_error_is_located(&text, Some(&text), &error);
            }
        }
    }

    #[test]
    fn deep_nesting_is_refused_without_overflowing_the_stack() {
        for opener in ["[", "{b="] {
            let text = format!("a = {}", opener.repeat(100_000));
            let (line, _, problem, _) = refusal(&text);
            assert_eq!(line, 1);
            assert!(matches!(problem, Problem::Toml(_)), "{problem:?}");
        }
    }
}
