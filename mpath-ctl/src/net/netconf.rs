//! Kernel settings mpathd depends on (per-interface ARP behaviour of group members, the
//! multipath hash), read and written through `/proc/sys/net` (no `sysctl` binary).
//!
//! `/proc/sys/net` shows the network namespace of the thread that opens the file, not the
//! process's: call these functions from a thread in the namespace the interfaces live in.

use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Where the running kernel exposes its network settings.
pub(crate) const PROC_SYS_NET: &str = "/proc/sys/net";

/// Linux IFNAMSIZ (16) less the terminating NUL.
const MAX_INTERFACE_NAME_LEN: usize = 15;

/// The IPv4 settings of one interface that IPMP depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterfaceNetconf {
    /// `arp_ignore`: 1 answers ARP only for addresses configured on the receiving NIC.
    pub arp_ignore: u8,
    /// `arp_announce`: 2 always uses the sending NIC's own best address as ARP source.
    pub arp_announce: u8,
    /// `promote_secondaries`: deleting a subnet's primary address promotes the next one
    /// instead of deleting every secondary with it.
    pub promote_secondaries: bool,
}

impl InterfaceNetconf {
    /// What every group member needs: without the ARP settings Linux answers ARP for any
    /// local address on any NIC ("ARP flux"), so inbound traffic for a data address would
    /// not stay on the NIC that holds it; without promotion, moving a subnet's first
    /// (primary) address away would delete the data addresses behind it.
    pub const GROUP_MEMBER: InterfaceNetconf = InterfaceNetconf {
        arp_ignore: 1,
        arp_announce: 2,
        promote_secondaries: true,
    };
}

/// The ARP settings of a NIC outside the groups, before and after [`Netconf::isolate_arp`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpIsolation {
    /// `(arp_ignore, arp_announce)` as found.
    pub before: (u8, u8),
    /// `(arp_ignore, arp_announce)` now.
    pub after: (u8, u8),
}

impl ArpIsolation {
    /// What isolating changes: the kernel's defaults (`arp_ignore` 0, `arp_announce` 0 or 1)
    /// become 1 and 2; any stricter value an administrator chose stays.
    fn of(arp_ignore: u8, arp_announce: u8) -> ArpIsolation {
        ArpIsolation {
            before: (arp_ignore, arp_announce),
            after: (
                if arp_ignore == 0 { 1 } else { arp_ignore },
                arp_announce.max(2),
            ),
        }
    }

    /// Whether the NIC answers ARP only for its own addresses now.
    pub fn isolated(&self) -> bool {
        answers_arp_only_for_its_own(self.after.0)
    }
}

/// Whether a NIC with this `arp_ignore` answers ARP only for its own addresses: 1 or 2 (8
/// answers nothing at all; 3 still answers for other NICs' global addresses).
pub fn answers_arp_only_for_its_own(arp_ignore: u8) -> bool {
    matches!(arp_ignore, 1 | 2 | 8)
}

/// Why reading or writing an interface's settings failed.
#[derive(Debug, Error)]
pub enum NetconfError {
    #[error("{name:?} is not an interface name: {reason}")]
    BadInterfaceName { name: String, reason: &'static str },
    #[error("no interface {interface} in this network namespace ({} does not exist)", path.display())]
    NoSuchInterface { interface: String, path: PathBuf },
    #[error("reading {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("writing {value} to {}: {source}", path.display())]
    Write {
        path: PathBuf,
        value: String,
        source: io::Error,
    },
    #[error("{} holds {content:?}, not a number from 0 to 255", path.display())]
    BadValue { path: PathBuf, content: String },
}

/// The `net` sysctl tree of one kernel view; [`Netconf::system`] is the real one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Netconf {
    root: PathBuf,
}

impl Netconf {
    /// `/proc/sys/net`, as the calling thread's network namespace sees it.
    pub fn system() -> Netconf {
        Netconf::at(PROC_SYS_NET)
    }

    /// A tree laid out like `/proc/sys/net` under `root`.
    pub fn at(root: impl Into<PathBuf>) -> Netconf {
        Netconf { root: root.into() }
    }

    /// The settings of `interface` now.
    pub fn read(&self, interface: &str) -> Result<InterfaceNetconf, NetconfError> {
        let dir = self.interface_dir(interface)?;
        Ok(InterfaceNetconf {
            arp_ignore: read_number(&dir.join("arp_ignore"))?,
            arp_announce: read_number(&dir.join("arp_announce"))?,
            promote_secondaries: read_number(&dir.join("promote_secondaries"))? != 0,
        })
    }

    /// Sets `interface`'s settings; [`Netconf::read`] beforehand gives what to restore when
    /// the interface leaves its group. The kernel combines each with the namespace-wide
    /// `conf/all` value (the larger ARP value, either promotion flag), which this leaves alone.
    pub fn write(&self, interface: &str, settings: InterfaceNetconf) -> Result<(), NetconfError> {
        let dir = self.interface_dir(interface)?;
        write_number(&dir.join("arp_ignore"), settings.arp_ignore)?;
        write_number(&dir.join("arp_announce"), settings.arp_announce)?;
        write_number(
            &dir.join("promote_secondaries"),
            u8::from(settings.promote_secondaries),
        )
    }

    /// Makes a NIC outside the groups answer ARP only for its own addresses and announce
    /// only those (see [`ArpIsolation::of`]); leaves its other settings alone. A NIC found
    /// isolated already is not written to.
    pub fn isolate_arp(&self, interface: &str) -> Result<ArpIsolation, NetconfError> {
        let dir = self.interface_dir(interface)?;
        let isolation = ArpIsolation::of(
            read_number(&dir.join("arp_ignore"))?,
            read_number(&dir.join("arp_announce"))?,
        );
        if isolation.after.0 != isolation.before.0 {
            write_number(&dir.join("arp_ignore"), isolation.after.0)?;
        }
        if isolation.after.1 != isolation.before.1 {
            write_number(&dir.join("arp_announce"), isolation.after.1)?;
        }
        Ok(isolation)
    }

    /// Makes the kernel hash multipath routes (mpathd's resilient nexthop groups among them)
    /// on ports as well as addresses, in both families, so the flows between two hosts spread
    /// over the group's NICs too: the default policy 0 hashes IPv4 on addresses alone and
    /// sends them all through one NIC. A policy an administrator chose (other than 0) stays.
    /// Returns the settings changed.
    pub(crate) fn hash_multipath_on_ports(&self) -> Result<Vec<PathBuf>, NetconfError> {
        let mut changed = Vec::new();
        for family in ["ipv4", "ipv6"] {
            let path = self.root.join(family).join("fib_multipath_hash_policy");
            if read_number(&path)? == 0 {
                write_number(&path, 1)?;
                changed.push(path);
            }
        }
        Ok(changed)
    }

    /// Turns `net.ipv4.nexthop_compat_mode` off. With it on (the kernel's default) each
    /// replacement of a nexthop group makes the kernel announce every route through the group
    /// again: a failover with 100,000 routes sends as many messages to every routing monitor
    /// of the host (mpathd's, a network manager's), overflowing them. Routes through nexthop
    /// objects are shown the same either way. Returns whether it changed; a kernel without
    /// the setting (before 5.8) has none to turn off.
    pub(crate) fn nexthop_compat_off(&self) -> Result<bool, NetconfError> {
        let path = self.root.join("ipv4/nexthop_compat_mode");
        if !path.exists() {
            return Ok(false);
        }
        if read_number(&path)? == 0 {
            return Ok(false);
        }
        write_number(&path, 0)?;
        Ok(true)
    }

    /// `ROOT/ipv4/conf/INTERFACE`, for a real interface's name only: `all` and `default`
    /// would change every interface, and path characters would leave the directory.
    fn interface_dir(&self, interface: &str) -> Result<PathBuf, NetconfError> {
        let bad = |reason| NetconfError::BadInterfaceName {
            name: interface.to_string(),
            reason,
        };
        if interface.is_empty() {
            return Err(bad("it is empty"));
        }
        if interface.len() > MAX_INTERFACE_NAME_LEN {
            return Err(bad("longer than 15 bytes"));
        }
        if interface == "." || interface == ".." {
            return Err(bad("a directory name"));
        }
        if interface
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
        {
            return Err(bad("contains '/', ':' or whitespace"));
        }
        if interface == "all" || interface == "default" {
            return Err(bad("names the settings of every interface"));
        }
        let dir = self.root.join("ipv4/conf").join(interface);
        if !dir.is_dir() {
            return Err(NetconfError::NoSuchInterface {
                interface: interface.to_string(),
                path: dir,
            });
        }
        Ok(dir)
    }
}

fn read_number(path: &Path) -> Result<u8, NetconfError> {
    let content = std::fs::read_to_string(path).map_err(|source| NetconfError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    content
        .trim()
        .parse()
        .map_err(|_not_a_number| NetconfError::BadValue {
            path: path.to_path_buf(),
            content,
        })
}

fn write_number(path: &Path, value: u8) -> Result<(), NetconfError> {
    // Written in one call without truncation: a proc file takes the whole value per write.
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut file| io::Write::write_all(&mut file, format!("{value}\n").as_bytes()))
        .map_err(|source| NetconfError::Write {
            path: path.to_path_buf(),
            value: value.to_string(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A throwaway tree shaped like `/proc/sys/net` with interface `h0`.
    struct FakeTree {
        root: PathBuf,
    }

    impl FakeTree {
        fn new(test: &str) -> FakeTree {
            let root =
                std::env::temp_dir().join(format!("mpath-netconf-{test}-{}", std::process::id()));
            let _: Result<_, _> = std::fs::remove_dir_all(&root);
            let dir = root.join("ipv4/conf/h0");
            std::fs::create_dir_all(&dir).unwrap();
            for (file, value) in [
                ("arp_ignore", "0\n"),
                ("arp_announce", "0\n"),
                ("promote_secondaries", "0\n"),
            ] {
                std::fs::write(dir.join(file), value).unwrap();
            }
            std::fs::create_dir_all(root.join("ipv4/conf/all")).unwrap();
            std::fs::create_dir_all(root.join("ipv6")).unwrap();
            for family in ["ipv4", "ipv6"] {
                std::fs::write(root.join(family).join("fib_multipath_hash_policy"), "0\n").unwrap();
            }
            FakeTree { root }
        }
    }

    impl Drop for FakeTree {
        fn drop(&mut self) {
            let _: Result<_, _> = std::fs::remove_dir_all(&self.root);
        }
    }

    #[test]
    fn group_member_settings_round_trip() {
        let tree = FakeTree::new("round-trip");
        let netconf = Netconf::at(&tree.root);
        assert_eq!(
            netconf.read("h0").unwrap(),
            InterfaceNetconf {
                arp_ignore: 0,
                arp_announce: 0,
                promote_secondaries: false
            }
        );
        netconf.write("h0", InterfaceNetconf::GROUP_MEMBER).unwrap();
        assert_eq!(
            std::fs::read_to_string(tree.root.join("ipv4/conf/h0/arp_announce")).unwrap(),
            "2\n"
        );
        assert_eq!(netconf.read("h0").unwrap(), InterfaceNetconf::GROUP_MEMBER);
    }

    /// Issue 24, item 2: a NIC outside the groups answered ARP for their test addresses.
    #[test]
    fn isolating_arp_raises_the_kernel_defaults_and_keeps_stricter_values() {
        let tree = FakeTree::new("isolate");
        let netconf = Netconf::at(&tree.root);
        let isolation = netconf.isolate_arp("h0").unwrap();
        assert_eq!((isolation.before, isolation.after), ((0, 0), (1, 2)));
        assert!(isolation.isolated());
        let read = netconf.read("h0").unwrap();
        assert_eq!((read.arp_ignore, read.arp_announce), (1, 2));
        // promote_secondaries is a group member's setting, not a stray's.
        assert!(!read.promote_secondaries);
        // Isolated already: nothing to write.
        let again = netconf.isolate_arp("h0").unwrap();
        assert_eq!(again.before, again.after);
        for (found, after, isolated) in [
            ((2, 2), (2, 2), true),
            ((8, 1), (8, 2), true),
            ((3, 0), (3, 2), false),
        ] {
            let isolation = ArpIsolation::of(found.0, found.1);
            assert_eq!(isolation.after, after, "{found:?}");
            assert_eq!(isolation.isolated(), isolated, "{found:?}");
        }
    }

    #[test]
    fn the_default_multipath_hash_becomes_layer_4_and_a_chosen_one_stays() {
        let tree = FakeTree::new("hash");
        let netconf = Netconf::at(&tree.root);
        std::fs::write(tree.root.join("ipv6/fib_multipath_hash_policy"), "2\n").unwrap();
        assert_eq!(
            netconf.hash_multipath_on_ports().unwrap(),
            [tree.root.join("ipv4/fib_multipath_hash_policy")]
        );
        for (family, policy) in [("ipv4", "1\n"), ("ipv6", "2\n")] {
            let path = tree.root.join(family).join("fib_multipath_hash_policy");
            assert_eq!(std::fs::read_to_string(path).unwrap(), policy, "{family}");
        }
        assert!(netconf.hash_multipath_on_ports().unwrap().is_empty());
    }

    #[test]
    fn nexthop_compat_mode_is_turned_off_once_and_a_kernel_without_it_is_fine() {
        let tree = FakeTree::new("compat");
        let netconf = Netconf::at(&tree.root);
        assert!(!netconf.nexthop_compat_off().unwrap(), "no such setting");
        let path = tree.root.join("ipv4/nexthop_compat_mode");
        std::fs::write(&path, "1\n").unwrap();
        assert!(netconf.nexthop_compat_off().unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "0\n");
        assert!(!netconf.nexthop_compat_off().unwrap());
    }

    #[test]
    fn names_that_are_not_one_interface_are_refused() {
        let tree = FakeTree::new("bad-names");
        let netconf = Netconf::at(&tree.root);
        for name in [
            "",
            "all",
            "default",
            ".",
            "..",
            "../h0",
            "h0/x",
            "h 0",
            "h0:1",
            "a-very-long-name0",
        ] {
            let error = netconf.read(name).unwrap_err();
            assert!(
                matches!(&error, NetconfError::BadInterfaceName { name: n, .. } if n == name),
                "{name:?}: {error}"
            );
            assert!(
                netconf.write(name, InterfaceNetconf::GROUP_MEMBER).is_err(),
                "{name:?}"
            );
        }
    }

    #[test]
    fn missing_interface_and_garbage_values_are_named() {
        let tree = FakeTree::new("errors");
        let netconf = Netconf::at(&tree.root);
        let missing = netconf.read("h9").unwrap_err();
        assert!(matches!(missing, NetconfError::NoSuchInterface { .. }));
        assert!(missing.to_string().contains("no interface h9"), "{missing}");

        std::fs::write(tree.root.join("ipv4/conf/h0/arp_ignore"), "x\n").unwrap();
        let garbage = netconf.read("h0").unwrap_err();
        assert!(
            garbage
                .to_string()
                .ends_with("h0/arp_ignore holds \"x\\n\", not a number from 0 to 255"),
            "{garbage}"
        );

        std::fs::write(tree.root.join("ipv4/conf/h0/arp_ignore"), "1\n").unwrap();
        std::fs::remove_file(tree.root.join("ipv4/conf/h0/arp_announce")).unwrap();
        let unreadable = netconf.read("h0").unwrap_err();
        assert!(
            matches!(unreadable, NetconfError::Read { .. }),
            "{unreadable}"
        );
        assert!(
            unreadable.to_string().contains("arp_announce"),
            "{unreadable}"
        );
        // Writing does not create files the kernel does not offer.
        let error = netconf
            .write("h0", InterfaceNetconf::GROUP_MEMBER)
            .unwrap_err();
        assert!(matches!(error, NetconfError::Write { .. }), "{error}");
        assert!(error.to_string().contains("arp_announce"), "{error}");
    }
}
