//! Runs every test of the workspace, then checks that the tests left no lab namespace and no
//! pinned BPF object behind. Both carry their creator's PID: those of processes still running
//! (a benchmark, another test run on the same machine) are not this run's leftovers.

use std::{fs, process::Command};

use anyhow::bail;

use crate::exec;

/// Prefix of the tests' private pin directories under /sys/fs/bpf (see mpath-tests).
const TEST_PIN_PREFIX: &str = "mpath-test-";

pub(crate) fn run(args: &[String]) -> anyhow::Result<()> {
    // The lab tests run the daemon and the CLI as programs.
    exec(Command::new(env!("CARGO")).args(["build", "-p", "mpath-ctl", "--bins"]))?;
    let tests = exec(
        Command::new(env!("CARGO"))
            .args(["test", "--workspace", "--no-fail-fast"])
            .args(args)
            // This kernel must have every feature a test needs: none is passed over here.
            .env("MPATH_TEST_ALL_FEATURES", "1"),
    );
    let leftovers = leftovers();
    tests?;
    if !leftovers.is_empty() {
        bail!("the tests left behind: {}", leftovers.join(", "));
    }
    eprintln!("xtask: no lab namespace or pinned object left behind");
    Ok(())
}

fn leftovers() -> Vec<String> {
    let mut left: Vec<String> = mpath_lab::orphaned_namespaces()
        .into_iter()
        .map(|ns| format!("network namespace {ns}"))
        .collect();
    if let Ok(entries) = fs::read_dir("/sys/fs/bpf") {
        left.extend(
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| {
                    n.strip_prefix(TEST_PIN_PREFIX).is_some_and(|rest| {
                        rest.split('-')
                            .next()
                            .and_then(|pid| pid.parse().ok())
                            .is_none_or(|pid| !mpath_lab::is_running(pid))
                    })
                })
                .map(|n| format!("pin directory /sys/fs/bpf/{n}")),
        );
    }
    left
}
