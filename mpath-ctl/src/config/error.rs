//! Why a configuration is refused, and where: every error names its file, line and column.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::ops::Range;
use std::path::PathBuf;

use thiserror::Error;

use super::{MAX_CARRIER_POLL_MS, MAX_FAILURE_DETECTION_TIME_MS, MIN_FAILURE_DETECTION_TIME_MS};
use crate::net::address::{CidrError, IpCidr};

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
    #[cfg(test)]
    pub(crate) fn location(&self) -> Option<&Location> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Invalid { location, .. } => Some(location),
        }
    }

    #[cfg(test)]
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
    #[error("socket {path:?} is a {kind}, not a socket; mpathd replaces only a socket")]
    SocketPathTaken { path: String, kind: &'static str },
    #[error("socket {path:?} is {len} bytes long; a Unix socket's path holds at most {max} bytes")]
    SocketPathTooLong {
        path: String,
        len: usize,
        max: usize,
    },
    #[error("more than {max} groups; the datapath holds at most {max}")]
    TooManyGroups { max: u32 },
    #[error("more than {max} interfaces in all groups; the datapath holds at most {max}")]
    TooManyInterfaces { max: u32 },
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
    #[error(
        "target {target} is outside the subnet of interface {interface}'s test address {test_address}: probes leave with TTL 1 and reach only hosts on the link"
    )]
    TargetOffLink {
        target: IpAddr,
        interface: String,
        test_address: IpCidr,
    },
    #[error(
        "IPv6 target {0} is not link-local: IPv6 probes leave from each interface's link-local address, so their targets are on-link routers' link-local addresses (fe80::/10)"
    )]
    Ipv6TargetNotLinkLocal(IpAddr),
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
    #[error("route_table {value} cannot be mpathd's table: {reason}")]
    BadRouteTable { value: i64, reason: &'static str },
    #[error(
        "route_rule_priority {0} is outside 1 to 32765: the rule must come after the local rule \
         (0) and ahead of the main rule (32766)"
    )]
    BadRouteRulePriority(i64),
    #[error(
        "carrier_poll_ms {0} is outside 0 to {MAX_CARRIER_POLL_MS}: 0 leaves carrier loss to \
         the kernel's link events, which can lag a physical NIC's carrier by a second"
    )]
    BadCarrierPoll(i64),
    #[error("bad route destination {value:?}: {reason}; write \"default\" or NETWORK/LENGTH")]
    BadRouteDestination { value: String, reason: CidrError },
    #[error("{to} has host bits set; did you mean {network}?")]
    RouteHostBits { to: IpCidr, network: IpCidr },
    #[error(
        "a default route needs a via: without a gateway only a network of the link can be \
         reached"
    )]
    DefaultRouteWithoutVia,
    #[error("bad via {value:?}: not an IPv4 or IPv6 address")]
    BadVia { value: String },
    #[error("via {via} cannot be a gateway: it is {why}")]
    UnusableVia { via: IpAddr, why: String },
    #[error(
        "via {via} is {} but {to} is {}: a route's gateway is of its family",
        family(.via),
        family(&.to.addr())
    )]
    ViaFamilyMismatch { to: IpCidr, via: IpAddr },
    #[error(
        "via {via} is an address of interface {interface} (line {line}): a gateway is another host"
    )]
    ViaIsLocal {
        via: IpAddr,
        interface: String,
        line: usize,
    },
    // No interface or line: a larger variant would make every `Result<_, ConfigError>` large.
    #[error(
        "via {via} is {role}, the subnet of data address {addr}: a gateway is a host of the \
         subnet"
    )]
    ViaIsSubnetAddress {
        via: IpAddr,
        role: String,
        addr: IpCidr,
    },
    #[error(
        "route to {to} is a route to an address of interface {interface} (line {line}): the \
         kernel's local table answers for the host's own addresses, so the route would never \
         be used"
    )]
    RouteToLocalAddress {
        to: IpCidr,
        interface: String,
        line: usize,
    },
    #[error("bad metric {0}: must be 0 to 4294967295")]
    BadRouteMetric(i64),
    #[error(
        "route to {to} metric {metric} is configured twice in group {group} (first on line \
         {first_line}): the kernel keeps one route per destination and metric"
    )]
    DuplicateRoute {
        to: IpCidr,
        metric: u32,
        group: String,
        first_line: usize,
    },
    #[error(
        "route to {to} metric {metric} is already in group {other_group} (line {first_line}): \
         the kernel keeps one route per destination and metric"
    )]
    RouteInTwoGroups {
        to: IpCidr,
        metric: u32,
        other_group: String,
        first_line: usize,
    },
    #[error("expected KEY=VALUE")]
    NotKeyValue,
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

fn family(addr: &IpAddr) -> &'static str {
    if addr.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// A file being parsed: its name for messages and its text for turning offsets into lines.
pub(super) struct Source<'a> {
    pub(super) name: &'a str,
    pub(super) text: &'a str,
}

impl Source<'_> {
    pub(super) fn position(&self, offset: usize) -> Position {
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

    pub(super) fn line(&self, span: &Range<usize>) -> usize {
        self.position(span.start).line
    }

    pub(super) fn error(&self, span: &Range<usize>, problem: Problem) -> ConfigError {
        ConfigError::Invalid {
            location: Location {
                file: self.name.to_string(),
                position: Some(self.position(span.start)),
            },
            problem,
        }
    }

    pub(super) fn toml_error(&self, error: &toml::de::Error) -> ConfigError {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::*;

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
    fn columns_count_characters_not_bytes() {
        let text = "# größe\n[daemon]\nmetrics_listen = \"ü\"\n";
        let (line, column, _, _) = refusal(text);
        assert_eq!((line, column), (3, 18));
        let text = "[daemon] # ü\nfailback = true # é\n  failure_detection_time_ms = 1 # ö\n";
        let (line, column, _, _) = refusal(text);
        assert_eq!((line, column), (3, 31));
    }
}
