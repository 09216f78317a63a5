//! The TOML file as serde reads it, before validation: spans locate the errors the
//! validator finds, and unknown keys are refused here.

use serde::Deserialize;
use toml::Spanned;

use super::{ProbeRx, SourceSelection, SpreadMode, TcAttach};

/// The file as written, before validation; spans locate semantic errors.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) daemon: Option<RawDaemon>,
    #[serde(default, rename = "group")]
    pub(super) groups: Vec<Spanned<RawGroup>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDaemon {
    pub(super) failure_detection_time_ms: Option<Spanned<i64>>,
    pub(super) failback: Option<bool>,
    pub(super) track_interfaces_only_with_groups: Option<bool>,
    pub(super) metrics_listen: Option<Spanned<String>>,
    pub(super) socket: Option<Spanned<String>>,
    pub(super) bpf_pin_dir: Option<Spanned<String>>,
    // Integers as TOML has them, so out-of-range values get mpathd's message, not serde's.
    pub(super) route_table: Option<Spanned<i64>>,
    pub(super) route_rule_priority: Option<Spanned<i64>>,
    pub(super) tc_attach: Option<TcAttach>,
    pub(super) sources: Option<SourceSelection>,
    pub(super) probe_rx: Option<ProbeRx>,
    pub(super) carrier_hook: Option<bool>,
    pub(super) carrier_poll_ms: Option<Spanned<i64>>,
    pub(super) isolate_arp: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGroup {
    pub(super) name: Spanned<String>,
    #[serde(default)]
    pub(super) targets: Vec<Spanned<String>>,
    #[serde(default, rename = "interface")]
    pub(super) interfaces: Vec<Spanned<RawInterface>>,
    #[serde(default)]
    pub(super) spread: SpreadMode,
    #[serde(default, rename = "route")]
    pub(super) routes: Vec<Spanned<RawRoute>>,
    pub(super) probe_rx: Option<ProbeRx>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInterface {
    pub(super) name: Spanned<String>,
    pub(super) test_address: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) data_addresses: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) standby: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) to: Spanned<String>,
    pub(super) via: Option<Spanned<String>>,
    pub(super) metric: Option<Spanned<i64>>,
}

#[cfg(test)]
mod tests {
    use crate::config::error::Problem;
    use crate::config::testing::*;

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
}
