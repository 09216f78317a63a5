//! `cargo xtask package`: the Debian package, made by cargo-deb from
//! `[package.metadata.deb]` in mpath-ctl/Cargo.toml (maintainer scripts included: its
//! systemd-units support writes them), checked by lintian (no error or warning passes), then
//! by installing it into an empty root: its files are there, the binaries are stripped, the
//! unit's `Documentation=` points to files it installs, its postinst made group mpath and
//! enabled the unit there, its mpathd accepts the example configuration; installing it again
//! (an upgrade) keeps the enablement, and purging it removes the files and the enablement.
//! What needs a running systemd (daemon-reload, the restart on upgrade, the stop before
//! removal) is checked in the scripts' text: the empty root has no systemd.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail, ensure};

use crate::{build_daemon, capture, exec};

/// What the package must install, relative to the root.
const FILES: &[&str] = &[
    "usr/sbin/mpathd",
    "usr/bin/mpathctl",
    "usr/lib/systemd/system/mpathd.service",
    "etc/iproute2/rt_protos.d/mpathd.conf",
    "usr/lib/sysusers.d/mpath.conf",
    "usr/share/man/man8/mpathd.8.gz",
    "usr/share/man/man1/mpathctl.1.gz",
    "usr/share/man/man1/mpathctl-groups.1.gz",
    "usr/share/man/man5/mpathd.toml.5.gz",
    "usr/share/bash-completion/completions/mpathctl",
    "usr/share/zsh/vendor-completions/_mpathctl",
    "usr/share/fish/vendor_completions.d/mpathctl.fish",
    "usr/share/doc/mpath/README.md",
    "usr/share/doc/mpath/copyright",
    "usr/share/doc/mpath/changelog.gz",
    "usr/share/doc/mpath/examples/mpathd.toml",
    "usr/share/doc/mpath/examples/mpath-alerts.yml",
    "usr/share/doc/mpath/examples/grafana/mpath.json",
    "usr/share/doc/mpath/examples/networkd/50-mpath.network",
    "usr/share/doc/mpath/examples/networkd/mpath.conf",
    "usr/share/doc/mpath/examples/NetworkManager/mpath-eth0.nmconnection",
    "usr/share/doc/mpath/examples/NetworkManager/mpath.conf",
    "usr/share/doc/mpath/examples/ifupdown/mpath",
    "usr/share/doc/mpath/examples/netplan/60-mpath.yaml",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Builds the package and checks it; returns its path.
pub(crate) fn run() -> anyhow::Result<PathBuf> {
    build_daemon()?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"));
    let release = target.join("release");
    write_assets(&release)?;
    let out = target.join("debian");
    let printed = capture(
        Command::new(env!("CARGO"))
            .args(["deb", "-p", "mpath-ctl", "--no-build", "--output"])
            .arg(&out),
    )
    .context("cargo-deb (`cargo xtask setup` installs it)")?;
    let deb = PathBuf::from(printed.lines().last().unwrap_or_default().trim());
    ensure!(
        deb.is_file(),
        "cargo-deb printed no package path: {printed}"
    );
    lintian(&deb)?;
    check(&deb, &out.join("root"))?;
    eprintln!("package: {} installs and checks out", deb.display());
    Ok(deb)
}

/// The files the package gets from the built binaries: manual pages (gzipped, as Debian
/// installs them) and mpathctl's completions; and the changelog, gzipped.
fn write_assets(release: &Path) -> anyhow::Result<()> {
    let assets = release.join("deb-assets");
    let _: Result<_, _> = fs::remove_dir_all(&assets);
    let (man1, man8, man5, completions) = (
        assets.join("man1"),
        assets.join("man8"),
        assets.join("man5"),
        assets.join("completions"),
    );
    for dir in [&man1, &man8, &man5, &completions] {
        fs::create_dir_all(dir)?;
    }
    // --config: a broken /etc/mpath/mpathd.toml on the build host must not matter.
    let mpathctl = || {
        let mut cmd = Command::new(release.join("mpathctl"));
        cmd.args(["--config", "/nonexistent"]);
        cmd
    };
    exec(
        Command::new(release.join("mpathd"))
            .arg("--write-man")
            .arg(&man8),
    )?;
    exec(mpathctl().arg("write-man").arg(&man1))?;
    fs::copy(
        workspace().join("dist/mpathd.toml.5"),
        man5.join("mpathd.toml.5"),
    )?;
    let changelog = assets.join("changelog");
    fs::copy(workspace().join("dist/debian/changelog"), &changelog)?;
    exec(Command::new("gzip").args(["-9n"]).arg(&changelog))?;
    for dir in [&man1, &man8, &man5] {
        for page in fs::read_dir(dir)? {
            exec(Command::new("gzip").args(["-9n"]).arg(page?.path()))?;
        }
    }
    for (shell, file) in [
        ("bash", "mpathctl"),
        ("zsh", "_mpathctl"),
        ("fish", "mpathctl.fish"),
    ] {
        let script = capture(mpathctl().args(["completions", shell]))?;
        fs::write(completions.join(file), script)?;
    }
    Ok(())
}

/// Where the unit's enablement goes (its `WantedBy=`), relative to the root.
const ENABLEMENT: &str = "etc/systemd/system/multi-user.target.wants/mpathd.service";

/// Fails on any lintian error or warning, printing lintian's report.
fn lintian(deb: &Path) -> anyhow::Result<()> {
    let report = Command::new("lintian")
        .args(["--fail-on", "error,warning", "--info"])
        .arg(deb)
        .output()
        .context("lintian (`cargo xtask setup` installs it)")?;
    let text = String::from_utf8_lossy(&report.stdout);
    ensure!(
        report.status.success(),
        "lintian: {}\n{text}{}",
        report.status,
        String::from_utf8_lossy(&report.stderr)
    );
    if !text.trim().is_empty() {
        eprintln!("package: lintian's notes:\n{text}");
    }
    Ok(())
}

/// `dpkg` acting on `root`. --force-depends: the root has no libc package; the binaries run
/// with the host's. --force-script-chrootless: the root has no shell to run the scripts in;
/// they run on the host, told the root by DPKG_ROOT (which they honour; see
/// [`NO_SERVICE_ACTIONS`] for what they would otherwise do to the host's systemd).
fn dpkg(root: &Path, args: &[&str], deb: Option<&Path>) -> anyhow::Result<()> {
    exec(
        Command::new("dpkg")
            .arg(format!("--root={}", root.display()))
            .args(["--force-depends", "--force-script-chrootless"])
            .args(args)
            .args(deb),
    )
}

/// The root's policy-rc.d(8): the maintainer scripts look for a systemd on the host, not in
/// the root, and deb-systemd-invoke asks the root's policy before starting, restarting or
/// stopping mpathd there; refused, nothing happens to the host's services.
const NO_SERVICE_ACTIONS: &str =
    "#!/bin/sh\n# cargo xtask package: no service actions.\nexit 101\n";

/// Installs `deb` into an empty `root`, checks what it installed, installs it again as an
/// upgrade, then purges it.
fn check(deb: &Path, root: &Path) -> anyhow::Result<()> {
    let _: Result<_, _> = fs::remove_dir_all(root);
    let db = root.join("var/lib/dpkg");
    fs::create_dir_all(db.join("info"))?;
    fs::create_dir_all(db.join("updates"))?;
    fs::write(db.join("status"), "")?;
    let policy = root.join("usr/sbin/policy-rc.d");
    fs::create_dir_all(policy.parent().unwrap())?;
    fs::write(&policy, NO_SERVICE_ACTIONS)?;
    fs::set_permissions(&policy, fs::Permissions::from_mode(0o755))?;

    dpkg(root, &["--install"], Some(deb))?;
    let missing: Vec<&&str> = FILES.iter().filter(|f| !root.join(f).exists()).collect();
    ensure!(missing.is_empty(), "not installed: {missing:?}");
    let groups = fs::read_to_string(root.join("etc/group")).unwrap_or_default();
    ensure!(
        groups.lines().any(|l| l.starts_with("mpath:")),
        "the postinst made no group mpath: {groups:?}"
    );
    ensure!(
        enabled(root),
        "the postinst did not enable the unit: no {ENABLEMENT}"
    );
    let scripts = |name: &str| fs::read_to_string(db.join("info").join(format!("mpath.{name}")));
    let problems = script_problems(
        &scripts("postinst")?,
        &scripts("prerm")?,
        &scripts("postrm")?,
    );
    ensure!(problems.is_empty(), "maintainer scripts: {problems:?}");
    for bin in ["usr/sbin/mpathd", "usr/bin/mpathctl"] {
        let sections = capture(
            Command::new("readelf")
                .args(["-S", "-W"])
                .arg(root.join(bin)),
        )?;
        ensure!(!sections.contains(".debug_info"), "{bin} is not stripped");
    }
    let unit = fs::read_to_string(root.join("usr/lib/systemd/system/mpathd.service"))?;
    for doc in documentation(&unit) {
        ensure!(
            root.join(&doc).exists(),
            "the unit's Documentation= names {doc}, which the package does not install"
        );
    }
    let mpathd = root.join("usr/sbin/mpathd");
    let checked = capture(
        Command::new(&mpathd)
            .arg("--check")
            .arg("--config")
            .arg(root.join("usr/share/doc/mpath/examples/mpathd.toml"))
            .args(["--defaults", "/nonexistent"]),
    )?;
    if !checked.contains("configuration is valid") {
        bail!("{} --check: {checked}", mpathd.display());
    }

    // An upgrade (to the same version: the scripts see the old one in their arguments).
    dpkg(root, &["--install"], Some(deb))?;
    ensure!(enabled(root), "the upgrade lost the enablement");

    dpkg(root, &["--purge", "mpath"], None)?;
    let left: Vec<&&str> = FILES.iter().filter(|f| root.join(f).exists()).collect();
    ensure!(left.is_empty(), "left after the purge: {left:?}");
    ensure!(!enabled(root), "the purge left {ENABLEMENT}");
    let masked = root.join("etc/systemd/system/mpathd.service");
    ensure!(
        masked.symlink_metadata().is_err(),
        "the purge left the unit masked: {}",
        masked.display()
    );
    Ok(())
}

fn enabled(root: &Path) -> bool {
    root.join(ENABLEMENT).symlink_metadata().is_ok()
}

/// What the maintainer scripts miss of what needs a running systemd, which the empty root
/// has not: the postinst reloads systemd, enables the unit, starts it at install and
/// restarts it at upgrade; the prerm stops it before removal; the postrm purges its
/// enablement.
fn script_problems(postinst: &str, prerm: &str, postrm: &str) -> Vec<&'static str> {
    let wanted: [(&str, &str, &'static str); 6] = [
        (
            postinst,
            "systemctl --system daemon-reload",
            "the postinst reloads no systemd",
        ),
        (
            postinst,
            "deb-systemd-helper enable mpathd.service",
            "the postinst enables no unit",
        ),
        (
            postinst,
            "_dh_action=restart",
            "the postinst restarts nothing at upgrade",
        ),
        (
            postinst,
            "deb-systemd-invoke $_dh_action mpathd.service",
            "the postinst starts nothing",
        ),
        (
            prerm,
            "deb-systemd-invoke stop mpathd.service",
            "the prerm stops nothing",
        ),
        (
            postrm,
            "deb-systemd-helper purge mpathd.service",
            "the postrm purges no enablement",
        ),
    ];
    wanted
        .into_iter()
        .filter(|(script, line, _)| !script.contains(line))
        .map(|(_, _, problem)| problem)
        .collect()
}

/// The files a unit's `Documentation=` lines name, relative to the root: `man:NAME(S)` as
/// its gzipped page, `file:///PATH` as PATH.
fn documentation(unit: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix("Documentation="))
        .flat_map(str::split_whitespace)
        .filter_map(|uri| {
            if let Some(path) = uri.strip_prefix("file:///") {
                return Some(path.to_string());
            }
            let (name, section) = uri
                .strip_prefix("man:")?
                .strip_suffix(')')?
                .split_once('(')?;
            Some(format!("usr/share/man/man{section}/{name}.{section}.gz"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documentation_uris_become_installed_paths() {
        let unit = "[Unit]\nDocumentation=man:mpathd(8) file:///usr/share/doc/mpath/README.md\n\
                    Documentation=man:mpathd.toml(5)\n";
        assert_eq!(
            documentation(unit),
            [
                "usr/share/man/man8/mpathd.8.gz",
                "usr/share/doc/mpath/README.md",
                "usr/share/man/man5/mpathd.toml.5.gz"
            ]
        );
    }

    #[test]
    fn scripts_without_the_service_actions_are_told_apart() {
        let all = script_problems(
            "systemctl --system daemon-reload\n_dh_action=restart\n\
             deb-systemd-helper enable mpathd.service\n\
             deb-systemd-invoke $_dh_action mpathd.service\n",
            "deb-systemd-invoke stop mpathd.service",
            "deb-systemd-helper purge mpathd.service",
        );
        assert!(all.is_empty(), "{all:?}");
        // The hand-written postinst this replaced: the group and nothing else.
        assert_eq!(
            script_problems("systemd-sysusers mpath.conf", "", "").len(),
            6
        );
    }

    /// The package's version is the crate's (no revision), and its changelog must say so.
    #[test]
    fn the_changelog_s_latest_entry_is_this_version() {
        let changelog = fs::read_to_string(workspace().join("dist/debian/changelog")).unwrap();
        let first = changelog.lines().next().unwrap();
        assert!(
            first.starts_with(&format!("mpath ({}) ", env!("CARGO_PKG_VERSION"))),
            "{first}"
        );
    }

    #[test]
    fn the_shipped_unit_documents_with_pages_the_package_installs() {
        let unit = fs::read_to_string(workspace().join("dist/mpathd.service")).unwrap();
        let docs = documentation(&unit);
        assert!(!docs.is_empty());
        for doc in docs {
            assert!(FILES.contains(&doc.as_str()), "{doc} is not in FILES");
        }
    }
}
