//! Helpers the configuration tests share: sample files and refusal unpacking.

use std::net::IpAddr;

use super::Config;
use super::error::{ConfigError, Problem};
use crate::net::address::{IpCidr, Ipv4Cidr};

pub(super) const NAME: &str = "/etc/mpath/mpathd.toml";
pub(super) const DEFAULTS_NAME: &str = "/etc/default/mpathd";

/// The example of the controller issue, line for line.
pub(super) const ISSUE_EXAMPLE: &str = r#"[daemon]
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

pub(super) fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, NAME, None)
}

pub(super) fn cidr(text: &str) -> IpCidr {
    text.parse().unwrap()
}

pub(super) fn v4cidr(text: &str) -> Ipv4Cidr {
    let cidr = cidr(text);
    let IpAddr::V4(addr) = cidr.addr() else {
        panic!("{text} is not IPv4");
    };
    Ipv4Cidr::new(addr, cidr.prefix_len()).unwrap()
}

pub(super) fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// Parses `text`, expecting a refusal, and returns (line, column, problem, message).
pub(super) fn refusal(text: &str) -> (usize, usize, Problem, String) {
    refusal_with_defaults(text, None)
}

pub(super) fn refusal_with_defaults(
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
pub(super) fn with_group(extra: &str) -> String {
    format!(
        "[[group]]\nname = \"g0\"\n\n[[group.interface]]\nname = \"h0\"\n\
         data_addresses = [\"192.0.2.19/24\"]\n\n{extra}"
    )
}

pub(super) const SOLARIS_DEFAULTS: &str = "#\n# Time taken by mpathd to detect a NIC failure in ms.\n\
    FAILURE_DETECTION_TIME=10000\n#\n# Failback is enabled by default.\nFAILBACK=yes\n\
    \nTRACK_INTERFACES_ONLY_WITH_GROUPS=yes\n";
