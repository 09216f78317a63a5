//! A real systemd-networkd managing a lab's NICs, without systemd as PID 1.
//!
//! networkd runs in the lab's network namespace and a private mount namespace (a "sandbox")
//! that gives it what systemd would: its own /run (a directory of the test's, so it persists
//! across networkd restarts as /run does on a host), a system D-Bus there for `networkctl`,
//! the test's configuration over /etc/systemd/network and /etc/systemd/networkd.conf, and a
//! read-only /sys, which tells networkd that no udev will initialise the links. Everything
//! stops and goes on drop.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread::sleep,
    time::{Duration, Instant},
};

use mpath_lab::Netns;

/// Where Debian installs the daemon.
const NETWORKD: &str = "/lib/systemd/systemd-networkd";

pub struct Networkd {
    dir: PathBuf,
    /// The sandbox's first process (the D-Bus daemon): networkd and networkctl enter its
    /// namespaces.
    sandbox: Child,
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
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "mpath-networkd-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        for sub in ["network", "run"] {
            fs::create_dir_all(dir.join(sub)).unwrap();
        }
        for (name, text) in networks {
            fs::write(dir.join("network").join(name), text).unwrap();
        }
        fs::write(dir.join("networkd.conf"), conf).unwrap();
        let script = format!(
            "set -e
mount --bind {dir}/run /run
mount -t sysfs -o ro none /sys
mount --bind {dir}/network /etc/systemd/network
mount --bind {dir}/networkd.conf /etc/systemd/networkd.conf
mkdir -p /run/systemd/netif /run/dbus
chown systemd-network:systemd-network /run/systemd/netif
exec dbus-daemon --system --nofork --nopidfile",
            dir = dir.display()
        );
        let sandbox = Command::new("nsenter")
            .arg(format!("--net={}", ns.path().display()))
            .args(["unshare", "--mount", "--propagation", "private"])
            .args(["sh", "-c", &script])
            .stdout(Stdio::null())
            .spawn()
            .expect("start the networkd sandbox");
        let networkd = Networkd {
            log: dir.join("networkd.log"),
            dir,
            sandbox,
            networkd: None,
        };
        let bus = networkd.dir.join("run/dbus/system_bus_socket");
        networkd.wait_until("the sandbox's D-Bus", || bus.exists());
        networkd
    }

    /// A command run inside the sandbox (its mounts and network).
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--target={}", self.sandbox.id()))
            .args(["--mount", "--net", program]);
        cmd
    }

    /// Starts networkd (debug log) and waits until every NIC of `configured` is configured.
    pub fn start(&mut self, configured: &[&str]) {
        assert!(self.networkd.is_none(), "networkd runs already");
        // The link state files of an earlier run would answer for this one.
        let _ = fs::remove_dir_all(self.dir.join("run/systemd/netif/links"));
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = self
            .command(NETWORKD)
            .env("SYSTEMD_LOG_LEVEL", "debug")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start systemd-networkd");
        self.networkd = Some(child);
        self.wait_configured(configured);
    }

    /// Stops networkd with SIGTERM, as systemd does.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.networkd.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }

    /// Runs networkctl in the sandbox; panics when it fails.
    pub fn networkctl(&self, args: &[&str]) -> Output {
        let out = self
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
        let links = self.dir.join("run/systemd/netif/links");
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
        fs::write(self.dir.join("network").join(name), text).unwrap();
    }

    /// networkd's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_until(&self, what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; networkd log:\n{}",
                self.log()
            );
            sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Networkd {
    fn drop(&mut self) {
        self.stop();
        let _ = self.sandbox.kill();
        let _ = self.sandbox.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
