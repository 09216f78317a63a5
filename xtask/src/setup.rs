//! Installs what mpath's commands need, skipping what is already there, in three parts:
//! the build's (the pinned nightly toolchain with rust-src and clippy, for linting the
//! programs for the BPF target, the Debian LLVM whose major version matches that nightly's,
//! bpf-linker built against it), the lab's (the tools and daemons the tests, the demo and
//! the benchmarks drive) and the packaging's (cargo-deb, lintian). `cargo xtask package`
//! sets up the build and the packaging only: a build host gets none of the lab's daemons.

use std::{fs, os::unix::fs::PermissionsExt as _, path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::{capture, exec};

include!("../../mpath-ebpf/toolchain.rs");

/// Debian packages the tests, the demo and the benchmarks drive: ip, bridge, nft, ping,
/// nsenter/unshare, promtool (package prometheus), which validates the metrics, and FRR's
/// bfdd and vtysh (package frr), the BFD daemon the failover benchmark compares mpathd with,
/// systemd-analyze (package systemd), which rates the unit's hardening, systemd-networkd
/// (package systemd) with a D-Bus of its own (package dbus-daemon) for networkctl, and
/// netplan, whose example is rendered for it, NetworkManager and ifupdown, whose examples
/// are tested too, and iperf3, the bulk TCP load of the datapath benchmark, bpftool, which
/// detaches mpathd's links behind its back in a test; qemu, busybox,
/// cpio, xz, zstd and kmod (depmod, and modprobe for the guest's kernel) boot other kernels
/// for `cargo xtask test --kernel` (and systemd, as PID 1 in one of them); ethtool shows the
/// offload features of the guest's virtio NICs.
const LAB_PACKAGES: &[&str] = &[
    "iproute2",
    "nftables",
    "iputils-ping",
    "util-linux",
    "prometheus",
    "frr",
    "systemd",
    "dbus-daemon",
    "netplan.io",
    "network-manager",
    "ifupdown",
    "iperf3",
    "bpftool",
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "xz-utils",
    "zstd",
    "kmod",
    "ethtool",
];

/// Debian packages `cargo xtask package` needs besides the build's: lintian, which the
/// package must pass, dpkg-dev (dpkg-shlibdeps, for cargo-deb's `$auto` dependencies) and
/// binutils (readelf, which tells a stripped binary).
const PACKAGING_PACKAGES: &[&str] = &["lintian", "dpkg-dev", "binutils"];

/// Everything: `cargo xtask setup`.
pub(crate) fn run() -> anyhow::Result<()> {
    lab()?;
    packaging()
}

/// What the build needs, then the lab's tools and daemons: `test`, `demo`, `bench`, `soak`.
pub(crate) fn lab() -> anyhow::Result<()> {
    build()?;
    ensure_debian_packages(LAB_PACKAGES)
}

/// What the build needs, then the packaging's tools: `package`.
pub(crate) fn packaging() -> anyhow::Result<()> {
    build()?;
    ensure_debian_packages(PACKAGING_PACKAGES)?;
    ensure_cargo_deb()
}

/// The nightly, LLVM and bpf-linker that building the eBPF programs needs.
fn build() -> anyhow::Result<()> {
    ensure_nightly()?;
    let llvm = nightly_llvm_major()?;
    let packages = [
        format!("llvm-{llvm}-dev"),
        format!("libpolly-{llvm}-dev"),
        "zlib1g-dev".into(),
        "libzstd-dev".into(),
    ];
    ensure_debian_packages(&packages)?;
    ensure_bpf_linker(llvm)
}

/// Installs cargo-deb, which `cargo xtask package` builds the Debian package with, unless a
/// 3.x is there.
fn ensure_cargo_deb() -> anyhow::Result<()> {
    let version = capture(Command::new(env!("CARGO")).args(["deb", "--version"]));
    if version.is_ok_and(|v| v.split_whitespace().any(|w| w.starts_with("3."))) {
        return Ok(());
    }
    eprintln!("setup: installing cargo-deb (a few minutes)");
    exec(Command::new(env!("CARGO")).args(["install", "--locked", "cargo-deb", "--version", "^3"]))
}

/// Installs `EBPF_TOOLCHAIN` with the components the eBPF build and lints need, unless it
/// is there with them already.
fn ensure_nightly() -> anyhow::Result<()> {
    let toolchains = capture(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is needed to build the eBPF programs; install it from rustup.rs")?;
    let installed = toolchains.lines().any(|l| l.starts_with(EBPF_TOOLCHAIN));
    let components = if installed {
        capture(Command::new("rustup").args([
            "component",
            "list",
            "--toolchain",
            EBPF_TOOLCHAIN,
            "--installed",
        ]))?
    } else {
        String::new()
    };
    if ["rust-src", "clippy"]
        .iter()
        .all(|c| components.lines().any(|l| l.starts_with(c)))
    {
        return Ok(());
    }
    eprintln!("setup: installing the {EBPF_TOOLCHAIN} toolchain with rust-src and clippy");
    exec(Command::new("rustup").args([
        "toolchain",
        "install",
        EBPF_TOOLCHAIN,
        "--profile",
        "minimal",
        "--component",
        "rust-src",
        "--component",
        "clippy",
    ]))
}

/// The LLVM major version of the pinned nightly's rustc: bpf-linker must be built against
/// the same.
fn nightly_llvm_major() -> anyhow::Result<u32> {
    let version = capture(
        Command::new("rustc")
            .arg(format!("+{EBPF_TOOLCHAIN}"))
            .arg("-vV"),
    )?;
    parse_llvm_major(&version)
        .with_context(|| format!("no LLVM version in `rustc +{EBPF_TOOLCHAIN} -vV`:\n{version}"))
}

fn parse_llvm_major(rustc_vv: &str) -> Option<u32> {
    rustc_vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.trim().parse().ok())
}

/// Installs the packages among `packages` that are missing, without starting their daemons
/// or leaving them enabled at boot.
fn ensure_debian_packages(packages: &[impl AsRef<str>]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .map(AsRef::as_ref)
        .filter(|p| {
            capture(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .map(|s| s != "install ok installed")
                .unwrap_or(true)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || !Path::new("/usr/bin/apt-get").exists() {
        bail!("missing packages: {list}; install them by hand as root: apt-get install {list}");
    }
    eprintln!("setup: installing {list}");
    exec(Command::new("apt-get").arg("update").arg("-q"))?;
    // The tests run the daemons among these (NetworkManager, frr, prometheus) in labs: started
    // on the host, NetworkManager would take over its NICs. policy-rc.d(8) keeps the
    // packages from starting them, where no such policy is in place already.
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let own_policy = !policy.exists();
    if own_policy {
        fs::write(
            policy,
            "#!/bin/sh
# cargo xtask setup: no daemon starts while it installs.
exit 101
",
        )?;
        fs::set_permissions(policy, fs::Permissions::from_mode(0o755))?;
    }
    let enabled_before = enabled_units();
    let installed = exec(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    );
    if own_policy {
        fs::remove_file(policy)?;
    }
    installed?;
    // Nor at the next boot: what the packages enabled (prometheus.service and frr.service
    // would listen on the host; Debian's Prometheus on every address) is disabled again.
    let (before, now) = match (enabled_before, enabled_units()) {
        (Ok(before), Ok(now)) => (before, now),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("setup: cannot tell what the packages enabled at boot ({e:#}); check it");
            return Ok(());
        }
    };
    let newly: Vec<&String> = now.iter().filter(|u| !before.contains(u)).collect();
    if !newly.is_empty() {
        eprintln!("setup: disabling what the packages enabled at boot: {newly:?}");
        exec(
            Command::new("systemctl")
                .args(["--root=/", "disable"])
                .args(&newly),
        )?;
    }
    Ok(())
}

/// The units enabled at boot, read from the unit files (`--root=/`: no running systemd
/// needed, as in a container).
fn enabled_units() -> anyhow::Result<Vec<String>> {
    let listed = capture(Command::new("systemctl").args([
        "--root=/",
        "list-unit-files",
        "--state=enabled",
        "--no-legend",
    ]))?;
    Ok(enabled_unit_names(&listed))
}

/// The unit names of `systemctl list-unit-files --no-legend` lines (`NAME STATE PRESET`);
/// templates (`getty@.service`) are left out: they are enabled through their instances.
fn enabled_unit_names(listed: &str) -> Vec<String> {
    listed
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| !name.contains("@."))
        .map(str::to_string)
        .collect()
}

/// Installs bpf-linker unless one linked against LLVM `llvm` is on the PATH.
fn ensure_bpf_linker(llvm: u32) -> anyhow::Result<()> {
    if let Ok(path) = capture(Command::new("sh").args(["-c", "command -v bpf-linker"])) {
        let libs = capture(Command::new("ldd").arg(path.trim())).unwrap_or_default();
        if libs.contains(&format!("libLLVM.so.{llvm}")) || libs.contains(&format!("libLLVM-{llvm}"))
        {
            return Ok(());
        }
        eprintln!(
            "setup: {} is not built against LLVM {llvm}; rebuilding it",
            path.trim()
        );
    }
    eprintln!("setup: building bpf-linker against LLVM {llvm} (a few minutes)");
    exec(
        Command::new("cargo")
            .args([
                "install",
                "--force",
                "bpf-linker",
                "--no-default-features",
                "--features",
            ])
            .arg(format!("llvm-{llvm}"))
            .env("LLVM_PREFIX", format!("/usr/lib/llvm-{llvm}")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_llvm_major_from_rustc_version() {
        let vv = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nbinary: rustc\n\
                  host: x86_64-unknown-linux-gnu\nrelease: 1.97.0-nightly\nLLVM version: 22.1.4\n";
        assert_eq!(parse_llvm_major(vv), Some(22));
        assert_eq!(parse_llvm_major("rustc 1.0\n"), None);
    }

    #[test]
    fn reads_the_enabled_units_and_leaves_templates_out() {
        let listed = "frr.service               enabled enabled\n\
                      getty@.service            enabled enabled\n\
                      prometheus.service        enabled enabled\n\
                      apt-daily.timer           enabled enabled\n";
        assert_eq!(
            enabled_unit_names(listed),
            ["frr.service", "prometheus.service", "apt-daily.timer"]
        );
    }

    /// A build host gets none of the lab's daemons from `cargo xtask package`.
    #[test]
    fn packaging_installs_none_of_the_lab_s_packages() {
        for package in PACKAGING_PACKAGES {
            assert!(!LAB_PACKAGES.contains(package), "{package}");
        }
    }

    #[test]
    fn the_ebpf_toolchain_is_a_dated_nightly() {
        // A bare `nightly` would follow every new LLVM and break bpf-linker.
        let date = EBPF_TOOLCHAIN.strip_prefix("nightly-").unwrap();
        let parts: Vec<&str> = date.split('-').collect();
        assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), [4, 2, 2]);
        assert!(date.bytes().all(|b| b.is_ascii_digit() || b == b'-'));
    }
}
