//! The files in dist/ that a host installs: checked with the tools the administrator has.

use std::{path::PathBuf, process::Command};

/// dist/ of this workspace.
fn dist(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../dist")
        .join(file)
}

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
    let score = exposure(&dist("mpathd.service"));
    assert!(score <= 3.0, "exposure {score}");
}

/// What mpathd's systemd support relies on (see mpath_ctl::service).
#[test]
fn the_unit_waits_for_readiness_feeds_a_watchdog_and_reloads_with_sighup() {
    let unit = std::fs::read_to_string(dist("mpathd.service")).unwrap();
    for line in [
        "Type=notify",
        "WatchdogSec=10s",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK AF_PACKET",
        "ProtectSystem=strict",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} missing");
    }
}
