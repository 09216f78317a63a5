//! A real NetworkManager managing a lab's NICs, without systemd as PID 1: in a [`Sandbox`]
//! with the distribution's NetworkManager.conf, the test's conf.d files and keyfiles, its
//! own /var/lib/NetworkManager, an /etc/network/interfaces with the loopback alone (Debian's
//! NetworkManager reads it through its ifupdown plugin) and no dispatcher scripts. The
//! sandbox's own settings keep NetworkManager off the host's DNS, hostname and polkit.
//! Everything stops and goes on drop.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Child,
};

use mpath_lab::Netns;

use crate::sandbox::{Sandbox, log_file, terminate};

const NETWORK_MANAGER: &str = "/usr/sbin/NetworkManager";
/// Debian's, installed with the package.
const CONF: &str = "/etc/NetworkManager/NetworkManager.conf";

/// What only the sandbox needs: nothing written to /etc/resolv.conf or the hostname, no
/// polkit (nmcli runs as root), a debug log.
const SANDBOX_CONF: &str = "[main]
dns=none
rc-manager=unmanaged
hostname-mode=none
auth-polkit=false

[logging]
level=DEBUG
";

pub struct NetworkManager {
    sandbox: Sandbox,
    daemon: Option<Child>,
    log: PathBuf,
}

impl NetworkManager {
    /// A sandbox in `ns` whose /etc/NetworkManager/conf.d holds `conf` and whose
    /// system-connections holds `connections` (file name, text; mode 0600 as NetworkManager
    /// wants); NetworkManager itself is not started yet.
    pub fn sandbox(
        ns: &Netns,
        conf: &[(&str, &str)],
        connections: &[(&str, &str)],
    ) -> NetworkManager {
        assert!(
            Path::new(NETWORK_MANAGER).exists() && Path::new(CONF).exists(),
            "{NETWORK_MANAGER} missing (package network-manager, installed by `cargo xtask \
             setup`)"
        );
        let mut sandbox = Sandbox::new("nm");
        sandbox.write(
            "etc/NetworkManager.conf",
            &fs::read_to_string(CONF).unwrap(),
        );
        sandbox.write("etc/conf.d/00-sandbox.conf", SANDBOX_CONF);
        for (name, text) in conf {
            sandbox.write(&format!("etc/conf.d/{name}"), text);
        }
        for (name, text) in connections {
            let path = format!("etc/system-connections/{name}");
            sandbox.write(&path, text);
            fs::set_permissions(sandbox.path(&path), fs::Permissions::from_mode(0o600)).unwrap();
        }
        sandbox.write("interfaces", "auto lo\niface lo inet loopback\n");
        sandbox.enter(
            ns,
            &[
                ("etc", "/etc/NetworkManager"),
                ("lib", "/var/lib/NetworkManager"),
                ("interfaces", "/etc/network/interfaces"),
            ],
            "",
        );
        NetworkManager {
            log: sandbox.path("NetworkManager.log"),
            sandbox,
            daemon: None,
        }
    }

    /// Starts NetworkManager (logging to a file) and waits until its start-up is complete.
    pub fn start(&mut self) {
        assert!(self.daemon.is_none(), "NetworkManager runs already");
        let (stdout, stderr) = log_file(&self.log);
        let child = self
            .sandbox
            .command(NETWORK_MANAGER)
            .arg("--debug")
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("start NetworkManager");
        self.daemon = Some(child);
        let started = self
            .sandbox
            .command("nm-online")
            .args(["--wait-for-startup", "--quiet", "--timeout=30"])
            .status()
            .expect("run nm-online");
        assert!(
            started.success(),
            "NetworkManager did not start:\n{}",
            self.log()
        );
    }

    /// Stops NetworkManager with SIGTERM, as systemd does.
    pub fn stop(&mut self) {
        if let Some(child) = self.daemon.take() {
            terminate(child);
        }
    }

    /// Runs nmcli in the sandbox and returns its output; panics when it fails.
    pub fn nmcli(&self, args: &[&str]) -> String {
        let out = self
            .sandbox
            .command("nmcli")
            .args(args)
            .output()
            .expect("run nmcli");
        assert!(
            out.status.success(),
            "nmcli {args:?}: {}\nNetworkManager's log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// NetworkManager's state of `device` and the connection on it, e.g.
    /// `("100 (connected)", "mpath-h0")`.
    pub fn device(&self, device: &str) -> (String, String) {
        let text = self.nmcli(&[
            "--get-values",
            "GENERAL.STATE,GENERAL.CONNECTION",
            "device",
            "show",
            device,
        ]);
        let mut lines = text.lines().map(str::to_string);
        (
            lines.next().unwrap_or_default(),
            lines.next().unwrap_or_default(),
        )
    }

    /// Waits until `device` is activated with `connection`.
    pub fn wait_activated(&self, device: &str, connection: &str) {
        self.sandbox.wait_until(
            &format!("NetworkManager to activate {connection} on {device}"),
            || self.log(),
            || self.device(device) == ("100 (connected)".into(), connection.into()),
        );
    }

    /// NetworkManager's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NetworkManager {
    fn drop(&mut self) {
        self.stop();
    }
}
