//! A real systemd-networkd managing a lab's NICs, without systemd as PID 1: in a
//! [`Sandbox`] with the test's configuration over /etc/systemd/network and
//! /etc/systemd/networkd.conf. Everything stops and goes on drop.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Output},
};

use mpath_lab::Netns;

use crate::sandbox::{Sandbox, log_file, terminate};

/// Where Debian installs the daemon.
const NETWORKD: &str = "/lib/systemd/systemd-networkd";

pub struct Networkd {
    sandbox: Sandbox,
    networkd: Option<Child>,
    log: PathBuf,
}

impl Networkd {
    /// A sandbox in `ns` whose /etc/systemd/network holds `networks` (file name, text) and
    /// whose networkd.conf is `conf`; networkd itself is not started yet.
    pub fn sandbox(ns: &Netns, networks: &[(&str, &str)], conf: &str) -> Networkd {
        assert!(
            Path::new(NETWORKD).exists(),
            "{NETWORKD} missing (package systemd, installed by `cargo xtask setup`)"
        );
        let mut sandbox = Sandbox::new("networkd");
        for (name, text) in networks {
            sandbox.write(&format!("network/{name}"), text);
        }
        sandbox.write("networkd.conf", conf);
        sandbox.enter(
            ns,
            &[
                ("network", "/etc/systemd/network"),
                ("networkd.conf", "/etc/systemd/networkd.conf"),
            ],
            "mkdir -p /run/systemd/netif
chown systemd-network:systemd-network /run/systemd/netif",
        );
        Networkd {
            log: sandbox.path("networkd.log"),
            sandbox,
            networkd: None,
        }
    }

    /// Starts networkd (debug log) and waits until every NIC of `configured` is configured.
    pub fn start(&mut self, configured: &[&str]) {
        assert!(self.networkd.is_none(), "networkd runs already");
        // The link state files of an earlier run would answer for this one.
        let _: Result<_, _> = fs::remove_dir_all(self.sandbox.path("run/systemd/netif/links"));
        let (stdout, stderr) = log_file(&self.log);
        let child = self
            .sandbox
            .command(NETWORKD)
            .env("SYSTEMD_LOG_LEVEL", "debug")
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("start systemd-networkd");
        self.networkd = Some(child);
        self.wait_configured(configured);
    }

    /// Stops networkd with SIGTERM, as systemd does.
    pub fn stop(&mut self) {
        if let Some(child) = self.networkd.take() {
            terminate(child);
        }
    }

    /// Runs networkctl in the sandbox; panics when it fails.
    pub fn networkctl(&self, args: &[&str]) -> Output {
        let out = self
            .sandbox
            .command("networkctl")
            .args(args)
            .output()
            .expect("run networkctl");
        assert!(
            out.status.success(),
            "networkctl {args:?}: {}\nnetworkd log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        out
    }

    /// Waits until networkd says each of `nics` is configured (its state file in /run).
    pub fn wait_configured(&self, nics: &[&str]) {
        let links = self.sandbox.path("run/systemd/netif/links");
        for nic in nics {
            let state = links.join(self.ifindex(nic).to_string());
            self.wait_until(&format!("networkd to configure {nic}"), || {
                fs::read_to_string(&state)
                    .is_ok_and(|s| s.lines().any(|l| l == "ADMIN_STATE=configured"))
            });
        }
    }

    fn ifindex(&self, nic: &str) -> u32 {
        let out = self
            .sandbox
            .command("cat")
            .arg(format!("/sys/class/net/{nic}/ifindex"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("no ifindex for {nic}: {out:?}"))
    }

    /// Replaces (or adds) the file `name` of /etc/systemd/network.
    pub fn write_network(&self, name: &str, text: &str) {
        self.sandbox.write(&format!("network/{name}"), text);
    }

    /// networkd's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_until(&self, what: &str, done: impl Fn() -> bool) {
        self.sandbox.wait_until(what, || self.log(), done);
    }
}

impl Drop for Networkd {
    fn drop(&mut self) {
        self.stop();
    }
}
