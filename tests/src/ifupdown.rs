//! Debian's ifupdown on a lab's NICs: `ifup` and `ifdown` in a [`Sandbox`] whose
//! /etc/network/interfaces is Debian's (the loopback, and the files of interfaces.d) and
//! whose interfaces.d holds the test's files; their state stays in the sandbox's /run. The
//! distribution's hook scripts (/etc/network/if-*.d) run as on a host.

use std::{path::Path, process::Output};

use mpath_lab::Netns;

use crate::sandbox::Sandbox;

const IFUP: &str = "/sbin/ifup";

/// Debian's /etc/network/interfaces, as the installer writes it without a network.
const INTERFACES: &str = "# interfaces(5) file used by ifup(8) and ifdown(8)
# Include files from /etc/network/interfaces.d:
source /etc/network/interfaces.d/*

# The loopback network interface
auto lo
iface lo inet loopback
";

pub struct Ifupdown {
    sandbox: Sandbox,
}

impl Ifupdown {
    /// A sandbox in `ns` whose /etc/network/interfaces.d holds `files` (name, text).
    pub fn sandbox(ns: &Netns, files: &[(&str, &str)]) -> Ifupdown {
        assert!(
            Path::new(IFUP).exists(),
            "{IFUP} missing (package ifupdown, installed by `cargo xtask setup`)"
        );
        let mut sandbox = Sandbox::new("ifupdown");
        sandbox.write("interfaces", INTERFACES);
        for (name, text) in files {
            sandbox.write(&format!("interfaces.d/{name}"), text);
        }
        sandbox.enter(
            ns,
            &[
                ("interfaces", "/etc/network/interfaces"),
                ("interfaces.d", "/etc/network/interfaces.d"),
            ],
            "mkdir -p /run/network",
        );
        Ifupdown { sandbox }
    }

    /// Runs `ifup` with `args`; panics when it fails.
    pub fn ifup(&self, args: &[&str]) -> String {
        self.run("ifup", args)
    }

    /// Runs `ifdown` with `args`; panics when it fails.
    pub fn ifdown(&self, args: &[&str]) -> String {
        self.run("ifdown", args)
    }

    /// The interfaces ifupdown has configured, as `ifquery --state` lists them.
    pub fn state(&self) -> String {
        self.run("ifquery", &["--state"])
    }

    fn run(&self, program: &str, args: &[&str]) -> String {
        let out: Output = self
            .sandbox
            .command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}
