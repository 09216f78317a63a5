//! The files in dist/ that a host installs: checked with the tools the administrator has,
//! and against what mpathd really does.

use std::{collections::BTreeSet, process::Command};

use mpath_lab::Lab;
use mpath_tests::{
    daemon::{Mpathd, three_nic_config},
    dist_path,
    metrics::scrape,
};

/// The unit's exposure as `systemd-analyze security --offline=yes` rates it (0 to 10,
/// lower is safer).
fn exposure(unit: &std::path::Path) -> f64 {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(unit)
        .output()
        .expect("systemd-analyze (package systemd, installed by `cargo xtask setup`)");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.split_once("Overall exposure level for mpathd.service: "))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|score| score.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no exposure level in:\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

#[test]
fn the_unit_is_hardened_to_an_exposure_of_at_most_3() {
    let score = exposure(&dist_path("mpathd.service"));
    assert!(score <= 3.0, "exposure {score}");
}

/// What mpathd's systemd support relies on (see mpath_ctl::daemon::service), and the
/// paths the package installs the binaries at.
#[test]
fn the_unit_waits_for_readiness_feeds_a_watchdog_and_reloads_through_mpathctl() {
    let unit = std::fs::read_to_string(dist_path("mpathd.service")).unwrap();
    for line in [
        "Type=notify",
        "WatchdogSec=10s",
        "ExecStart=/usr/sbin/mpathd --config /etc/mpath/mpathd.toml",
        "ExecReload=/usr/bin/mpathctl reload",
        "ConditionPathExists=/etc/mpath/mpathd.toml",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK AF_PACKET",
        "ProtectSystem=strict",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} missing");
    }
}

/// Runs promtool (Debian package prometheus, installed by `cargo xtask setup`) in dist/.
fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dist_path(""))
        .output()
        .expect("promtool (Debian package prometheus; `cargo xtask setup` installs it)");
    assert!(
        out.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_alert_rules_pass_their_promtool_tests() {
    promtool(&["check", "rules", "mpath-alerts.yml"]);
    promtool(&["test", "rules", "mpath-alerts.test.yml"]);
}

/// The `mpath_*` names in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("mpath_"))
        .map(str::to_string)
        .collect()
}

/// The rules' tests feed them made-up series: this holds them to the names a running
/// mpathd exports.
#[test]
fn the_alert_rules_read_metrics_that_mpathd_exports() {
    let rules = std::fs::read_to_string(dist_path("mpath-alerts.yml")).unwrap();
    let used = metric_names(&rules);
    assert!(used.len() >= 6, "{used:?}");
    let lab = Lab::builder().nics(3).build().expect("lab");
    let mut daemon = Mpathd::start(lab.host(), &three_nic_config(700));
    let exported = |_: &Mpathd| {
        scrape(lab.host()).map_or_else(BTreeSet::new, |t| {
            t.lines()
                .filter_map(|l| l.strip_prefix("# TYPE "))
                .filter_map(|l| l.split_whitespace().next())
                .map(str::to_string)
                .collect()
        })
    };
    daemon.wait_until("probes in the metrics", |d| {
        exported(d).contains("mpath_probes_answered_total")
    });
    let exported = exported(&daemon);
    let missing: Vec<&String> = used.difference(&exported).collect();
    assert!(missing.is_empty(), "not exported by mpathd: {missing:?}");
}
