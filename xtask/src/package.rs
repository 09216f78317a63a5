//! `cargo xtask package`: the Debian package, made by cargo-deb from
//! `[package.metadata.deb]` in mpath-ctl/Cargo.toml, then checked by installing it into an
//! empty root: its files are there, the binaries are stripped, the unit's `Documentation=`
//! points to files it installs, its postinst made group mpath there, and its mpathd accepts
//! the example configuration.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail, ensure};

use crate::{build_daemon, capture, exec};

/// What the package must install, relative to the root.
const FILES: &[&str] = &[
    "usr/sbin/mpathd",
    "usr/sbin/mpathctl",
    "lib/systemd/system/mpathd.service",
    "etc/iproute2/rt_protos.d/mpathd.conf",
    "usr/lib/sysusers.d/mpath.conf",
    "usr/share/man/man8/mpathd.8.gz",
    "usr/share/man/man8/mpathctl.8.gz",
    "usr/share/man/man8/mpathctl-groups.8.gz",
    "usr/share/man/man5/mpathd.toml.5.gz",
    "usr/share/bash-completion/completions/mpathctl",
    "usr/share/zsh/vendor-completions/_mpathctl",
    "usr/share/fish/vendor_completions.d/mpathctl.fish",
    "usr/share/doc/mpath/README.md",
    "usr/share/doc/mpath/copyright",
    "usr/share/doc/mpath/LICENSE-MIT",
    "usr/share/doc/mpath/LICENSE-APACHE",
    "usr/share/doc/mpath/examples/mpathd.toml",
    "usr/share/doc/mpath/examples/mpath-alerts.yml",
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
    check(&deb, &out.join("root"))?;
    eprintln!("package: {} installs and checks out", deb.display());
    Ok(deb)
}

/// The files the package gets from the built binaries: manual pages (gzipped, as Debian
/// installs them) and mpathctl's completions.
fn write_assets(release: &Path) -> anyhow::Result<()> {
    let assets = release.join("deb-assets");
    let _: Result<_, _> = fs::remove_dir_all(&assets);
    let (man8, man5, completions) = (
        assets.join("man8"),
        assets.join("man5"),
        assets.join("completions"),
    );
    for dir in [&man8, &man5, &completions] {
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
    exec(mpathctl().arg("write-man").arg(&man8))?;
    fs::copy(
        workspace().join("dist/mpathd.toml.5"),
        man5.join("mpathd.toml.5"),
    )?;
    for dir in [&man8, &man5] {
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

/// Installs `deb` into an empty `root` and checks what it installed.
fn check(deb: &Path, root: &Path) -> anyhow::Result<()> {
    let _: Result<_, _> = fs::remove_dir_all(root);
    let db = root.join("var/lib/dpkg");
    fs::create_dir_all(db.join("info"))?;
    fs::create_dir_all(db.join("updates"))?;
    fs::write(db.join("status"), "")?;
    // --force-depends: the root has no libc package; the binaries run with the host's.
    // --force-script-chrootless: the root has no shell to run the postinst in; it runs on
    // the host, told the root by DPKG_ROOT (which it honours).
    exec(
        Command::new("dpkg")
            .arg(format!("--root={}", root.display()))
            .args(["--force-depends", "--force-script-chrootless", "--install"])
            .arg(deb),
    )?;
    let missing: Vec<&&str> = FILES.iter().filter(|f| !root.join(f).exists()).collect();
    ensure!(missing.is_empty(), "not installed: {missing:?}");
    let groups = fs::read_to_string(root.join("etc/group")).unwrap_or_default();
    ensure!(
        groups.lines().any(|l| l.starts_with("mpath:")),
        "the postinst made no group mpath: {groups:?}"
    );
    for bin in ["usr/sbin/mpathd", "usr/sbin/mpathctl"] {
        let sections = capture(
            Command::new("readelf")
                .args(["-S", "-W"])
                .arg(root.join(bin)),
        )?;
        ensure!(!sections.contains(".debug_info"), "{bin} is not stripped");
    }
    let unit = fs::read_to_string(root.join("lib/systemd/system/mpathd.service"))?;
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
    Ok(())
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
    fn the_shipped_unit_documents_with_pages_the_package_installs() {
        let unit = fs::read_to_string(workspace().join("dist/mpathd.service")).unwrap();
        let docs = documentation(&unit);
        assert!(!docs.is_empty());
        for doc in docs {
            assert!(FILES.contains(&doc.as_str()), "{doc} is not in FILES");
        }
    }
}
