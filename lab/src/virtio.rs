//! A lab whose NICs are virtio_net devices of the qemu guest `cargo xtask test` boots for it
//! (`--virtio-only`) rather than veths. Their carrier comes from the device, so a loss goes
//! through linkwatch as a physical NIC's does (not urgent, unlike a veth's: up to a second
//! late after another link event), and the driver's own limits (native XDP, guest offloads,
//! MTU) apply.
//!
//! xtask plugs every NIC into one bridge outside the guest (in a network namespace of the
//! host) and names them in [`VIRTIO_NICS_ENV`]: the router's `r0` and the host NICs `h0`,
//! `h1`, ... A lab takes the host NICs a test asks for into its host namespace and `r0` into
//! its router namespace, and gives them back on drop; the other NICs stay behind, down (one
//! left on the link without `arp_ignore` would answer ARP for the group's addresses). Carrier
//! cuts are asked of qemu (QMP `set_link`) through the virtio-serial port [`QMP_PORT`], which
//! xtask relays to qemu's QMP socket; silent loss is nftables on the router's NIC.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::process::Command;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::ROUTER_NIC;
use crate::lab::{
    add_addr, add_networks_behind_router, add_router_addrs, global_addrs, mac, namespace_namer,
    no_dad_sysctls, settle, write_sysctls,
};
use crate::netns::{Netns, run_output};

/// Names the guest's virtio NICs by role and MAC address: `r0=52:54:00:..,h0=52:54:00:..`.
/// The role is also the id of the NIC's backend in qemu, which QMP `set_link` takes.
pub const VIRTIO_NICS_ENV: &str = "MPATH_VIRTIO_NICS";
/// The virtio-serial port through which the guest's tests send QMP commands.
pub const QMP_PORT: &str = "mpath.qmp";
/// Bit of `VIRTIO_NET_F_CTRL_GUEST_OFFLOADS` in a virtio device's feature bits: without it
/// the guest cannot turn the device's receive offloads off (which native XDP needs).
pub const VIRTIO_NET_F_CTRL_GUEST_OFFLOADS: usize = 2;
/// nftables table (netdev family, on the router's NIC) holding the silently dropped NICs.
const DROP_TABLE: &str = "mpath_lab";
/// Creates [`DROP_TABLE`]: frames from or to a MAC address in its set `dropped` are dropped.
const DROP_RULESET: &str = r#"table netdev mpath_lab {
  set dropped { type ether_addr; }
  chain ingress { type filter hook ingress device "r0" priority 0; ether saddr @dropped drop; }
  chain egress { type filter hook egress device "r0" priority 0; ether daddr @dropped drop; }
}
"#;
/// How long qemu may take to answer a QMP command (scaled).
const QMP_TIMEOUT: Duration = Duration::from_secs(10);

/// The guest has one set of NICs: one lab at a time holds them.
static IN_USE: Mutex<()> = Mutex::new(());

/// Two namespaces around the guest's virtio NICs, which go back to the guest's own namespace
/// on drop (also while a panic unwinds):
///
/// ```text
///  host ns          outside the guest         router ns
///  h0 ──────────┐
///  h1 ──────────┤── bridge ──────────────────── r0  192.0.2.1/24, 2001:db8::1/64, fe80::1
///  ...          │                                   lo 198.51.100.1/24, 2001:db8:ff::1/64
/// ```
#[derive(Debug)]
pub struct VirtioLab {
    host: Netns,
    router: Netns,
    /// The roles of the NICs taken, `r0` included: their names in the lab.
    adopted: Vec<String>,
    /// MAC addresses in the router's drop set; `None` until the drop table exists.
    dropped: Mutex<Option<BTreeSet<String>>>,
    _exclusive: MutexGuard<'static, ()>,
}

impl VirtioLab {
    /// Takes the host NICs `nics` (e.g. `["h0", "h1", "h2"]`) and the router's NIC, up, at MTU
    /// 1500 and with their carrier on, with the router's addresses and the networks behind it
    /// as [`crate::LabBuilder::behind_router`] makes them. Waits while another test's lab
    /// exists.
    pub fn new(nics: &[&str]) -> Result<VirtioLab> {
        let exclusive = IN_USE.lock().unwrap_or_else(PoisonError::into_inner);
        let macs = guest_nics()?;
        let name = namespace_namer();
        let mut lab = VirtioLab {
            host: Netns::create(name("host"))?,
            router: Netns::create(name("router"))?,
            adopted: Vec::new(),
            dropped: Mutex::new(None),
            _exclusive: exclusive,
        };
        // Before the NICs arrive: they take the namespace's defaults.
        write_sysctls(&lab.host, &no_dad_sysctls())?;
        write_sysctls(&lab.router, &no_dad_sysctls())?;
        for role in std::iter::once(ROUTER_NIC).chain(nics.iter().copied()) {
            if lab.adopted.iter().any(|r| r == role) {
                bail!("{role} asked for twice");
            }
            let mac = macs
                .get(role)
                .with_context(|| format!("the guest has no virtio NIC {role} (it has {macs:?})"))?;
            let netns = if role == ROUTER_NIC {
                &lab.router
            } else {
                &lab.host
            };
            // A test that failed before restoring a cut leaves its carrier off.
            set_link(role, true)?;
            let ifname = ifname_with_mac(mac)?;
            run_output(
                Command::new("ip").args(["link", "set", "dev", &ifname, "netns", netns.name()]),
                None,
            )?;
            lab.adopted.push(role.to_string());
            netns.ip(&["link", "set", "dev", &ifname, "name", role])?;
            netns.ip(&["link", "set", "dev", role, "mtu", "1500", "up"])?;
        }
        add_router_addrs(&lab.router, &[])?;
        add_networks_behind_router(&lab.router)?;
        for role in &lab.adopted {
            let netns = lab.netns_of(role)?;
            settle(&format!("{role} to come up"), || {
                Ok(netns.operstate(role)? == "UP")
            })?;
        }
        Ok(lab)
    }

    /// The namespace holding the NICs under test.
    pub fn host(&self) -> &Netns {
        &self.host
    }

    /// The namespace holding the probe targets and traffic peer on `r0`.
    pub fn router(&self) -> &Netns {
        &self.router
    }

    /// The host NICs of this lab.
    pub fn nics(&self) -> Vec<String> {
        self.adopted
            .iter()
            .filter(|role| *role != ROUTER_NIC)
            .cloned()
            .collect()
    }

    /// Carrier loss from the device: qemu takes `nic`'s link down, the guest's driver sees a
    /// config change. Returns once the host NIC's operational state has left UP.
    pub fn cut(&self, nic: &str) -> Result<()> {
        let netns = self.netns_of(nic)?;
        set_link(nic, false)?;
        settle(&format!("{nic} to lose its carrier"), || {
            Ok(netns.operstate(nic)? != "UP")
        })
    }

    /// Undoes [`VirtioLab::cut`]; returns once `nic` is operationally up again.
    pub fn restore(&self, nic: &str) -> Result<()> {
        let netns = self.netns_of(nic)?;
        set_link(nic, true)?;
        settle(&format!("{nic} to get its carrier back"), || {
            Ok(netns.operstate(nic)? == "UP")
        })
    }

    /// A silent failure: the router drops every frame from and to host NIC `nic` (nftables,
    /// by MAC address, on `r0`) while its carrier stays up.
    pub fn drop_silently(&self, nic: &str) -> Result<()> {
        let mac = self.mac_text(nic)?;
        let mut dropped = self.dropped.lock().unwrap_or_else(PoisonError::into_inner);
        if dropped.is_none() {
            self.router
                .run_with_input(&["nft", "-f", "-"], DROP_RULESET)
                .context("creating the nftables drop table")?;
        }
        let macs = dropped.get_or_insert_with(BTreeSet::new);
        if macs.contains(&mac) {
            bail!("{nic} is already dropped silently");
        }
        self.drop_set("add", &mac)?;
        macs.insert(mac);
        Ok(())
    }

    /// Undoes [`VirtioLab::drop_silently`].
    pub fn undrop(&self, nic: &str) -> Result<()> {
        let mac = self.mac_text(nic)?;
        let mut dropped = self.dropped.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(macs) = dropped.as_mut().filter(|macs| macs.contains(&mac)) else {
            bail!("{nic} is not dropped silently");
        };
        self.drop_set("delete", &mac)?;
        macs.remove(&mac);
        Ok(())
    }

    /// Counts, on the router's NIC, the UDP packets to `port` by the host NIC whose source
    /// MAC they carry (read with [`VirtioLab::packets_from`]): which NIC a flow left through,
    /// when they all end on the router's one NIC. Once per lab.
    pub fn count_packets_by_nic(&self, port: u16) -> Result<()> {
        self.router.run(&["nft", "add table netdev mpath_by_nic"])?;
        self.router.run(&[
            "nft",
            &format!(
                "add chain netdev mpath_by_nic in {{ type filter hook ingress device \"{ROUTER_NIC}\" \
                 priority -1; }}"
            ),
        ])?;
        for nic in self.nics() {
            let mac = self.mac_text(&nic)?;
            self.router
                .run(&["nft", &format!("add counter netdev mpath_by_nic {nic}")])?;
            self.router.run(&[
                "nft",
                &format!(
                    "add rule netdev mpath_by_nic in ether saddr {mac} udp dport {port} counter \
                     name \"{nic}\""
                ),
            ])?;
        }
        Ok(())
    }

    /// The packets [`VirtioLab::count_packets_by_nic`] counted from host NIC `nic`.
    pub fn packets_from(&self, nic: &str) -> Result<u64> {
        let json = self.router.run(&[
            "nft",
            "-j",
            "list",
            "counter",
            "netdev",
            "mpath_by_nic",
            nic,
        ])?;
        let value: Value = serde_json::from_str(&json).context("nft's JSON")?;
        value["nftables"]
            .as_array()
            .and_then(|items| items.iter().find_map(|i| i["counter"]["packets"].as_u64()))
            .with_context(|| format!("no counter {nic} in {json}"))
    }

    /// Sets the MTU of every NIC of the lab, the router's included (the bridge outside the
    /// guest takes jumbo frames).
    pub fn set_mtu(&self, mtu: u32) -> Result<()> {
        for role in &self.adopted {
            self.netns_of(role)?
                .ip(&["link", "set", "dev", role, "mtu", &mtu.to_string()])?;
        }
        Ok(())
    }

    /// Whether the virtio device behind `nic` offers feature `bit` (its `features` in sysfs).
    pub fn has_virtio_feature(&self, nic: &str, bit: usize) -> Result<bool> {
        let netns = self.netns_of(nic)?;
        let path = format!("/sys/class/net/{nic}/device/features");
        let bits = netns.run(&["cat", &path])?;
        Ok(bits.trim().as_bytes().get(bit) == Some(&b'1'))
    }

    /// The MAC address of host NIC `nic`.
    pub fn mac(&self, nic: &str) -> Result<[u8; 6]> {
        mac(self.host_nic(nic)?, nic)
    }

    /// Adds `cidr` to host NIC `nic` (IPv6 without DAD, so it is usable at once).
    pub fn add_host_addr(&self, nic: &str, cidr: &str) -> Result<()> {
        add_addr(self.host_nic(nic)?, nic, cidr)
    }

    /// The global-scope addresses of host NIC `nic` in CIDR form, in the kernel's order.
    pub fn host_addrs(&self, nic: &str) -> Result<Vec<String>> {
        global_addrs(self.host_nic(nic)?, nic)
    }

    fn mac_text(&self, nic: &str) -> Result<String> {
        let octets = self.mac(nic)?;
        Ok(octets
            .iter()
            .map(|o| format!("{o:02x}"))
            .collect::<Vec<_>>()
            .join(":"))
    }

    fn drop_set(&self, verb: &str, mac: &str) -> Result<()> {
        self.router.run(&[
            "nft",
            verb,
            "element",
            "netdev",
            DROP_TABLE,
            "dropped",
            &format!("{{ {mac} }}"),
        ])?;
        Ok(())
    }

    /// The host namespace, when `nic` is a host NIC of this lab.
    fn host_nic(&self, nic: &str) -> Result<&Netns> {
        if nic == ROUTER_NIC {
            bail!("{nic} is the router's NIC, not a host NIC");
        }
        self.netns_of(nic)
    }

    /// The namespace `nic` is in, when this lab took it.
    fn netns_of(&self, nic: &str) -> Result<&Netns> {
        if !self.adopted.iter().any(|role| role == nic) {
            bail!(
                "{nic:?} is not a NIC of this lab (NICs: {})",
                self.adopted.join(", ")
            );
        }
        Ok(if nic == ROUTER_NIC {
            &self.router
        } else {
            &self.host
        })
    }
}

impl Drop for VirtioLab {
    fn drop(&mut self) {
        // Deleting the namespaces would return the NICs too, but some time later: the next
        // lab must find them at once.
        let home = std::process::id().to_string();
        for role in &self.adopted {
            let moved = self
                .netns_of(role)
                .and_then(|netns| netns.ip(&["link", "set", "dev", role, "netns", &home]));
            if let Err(error) = moved {
                eprintln!("mpath-lab: could not return {role} to the guest: {error:#}");
            }
        }
    }
}

/// The guest's virtio NICs by role, from [`VIRTIO_NICS_ENV`].
fn guest_nics() -> Result<BTreeMap<String, String>> {
    let text = std::env::var(VIRTIO_NICS_ENV).with_context(|| {
        format!(
            "{VIRTIO_NICS_ENV} is not set: the virtio lab runs in the guest of \
             `cargo xtask test --virtio-only`"
        )
    })?;
    parse_nics(&text)
}

fn parse_nics(text: &str) -> Result<BTreeMap<String, String>> {
    text.split(',')
        .map(|pair| {
            let (role, mac) = pair
                .split_once('=')
                .with_context(|| format!("{pair:?} in {VIRTIO_NICS_ENV} is not ROLE=MAC"))?;
            Ok((role.to_string(), mac.to_ascii_lowercase()))
        })
        .collect()
}

/// The name of the NIC with MAC address `mac` in this process's namespace; waits for it, as a
/// NIC of a namespace deleted a moment ago comes back asynchronously.
fn ifname_with_mac(mac: &str) -> Result<String> {
    let find = || -> Result<Option<String>> {
        for entry in std::fs::read_dir("/sys/class/net")? {
            let entry = entry?;
            let address = std::fs::read_to_string(entry.path().join("address")).unwrap_or_default();
            if address.trim() == mac {
                return Ok(Some(entry.file_name().to_string_lossy().into_owned()));
            }
        }
        Ok(None)
    };
    let found = RefCell::new(None);
    settle(&format!("the NIC with MAC address {mac}"), || {
        *found.borrow_mut() = find()?;
        Ok(found.borrow().is_some())
    })?;
    found.into_inner().context("settled without a NIC")
}

/// Asks qemu to take the link of NIC `role` (the id of its backend) down or up.
fn set_link(role: &str, up: bool) -> Result<()> {
    qmp(json!({"execute": "set_link", "arguments": {"name": role, "up": up}})).map(drop)
}

/// Sends one QMP command through [`QMP_PORT`] and returns what it returned. Replies carry the
/// command's `id`: one left in the port by a test that gave up waiting is passed over.
fn qmp(mut command: Value) -> Result<Value> {
    // A virtio-serial port has one opener at a time.
    static SERIAL: Mutex<u64> = Mutex::new(0);
    let mut serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    *serial += 1;
    let id = format!("mpath-lab-{}-{serial}", std::process::id());
    command["id"] = id.clone().into();
    let path = qmp_port()?;
    let port = RefCell::new(None);
    settle(&format!("{} to be free", path.display()), || {
        match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(file) => {
                *port.borrow_mut() = Some(file);
                Ok(true)
            }
            // Another process has it open.
            Err(error) if error.raw_os_error() == Some(libc::EBUSY) => Ok(false),
            Err(error) => Err(error).with_context(|| format!("opening {}", path.display())),
        }
    })?;
    let mut port = port.into_inner().context("settled without the port")?;
    writeln!(port, "{command}").with_context(|| format!("writing to {}", path.display()))?;
    let deadline = Instant::now() + crate::scaled(QMP_TIMEOUT);
    let mut pending = Vec::new();
    loop {
        let line = read_line(&mut port, &mut pending, deadline)
            .with_context(|| format!("waiting for qemu's answer to {command}"))?;
        let Ok(reply) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if reply["id"] != id.as_str() {
            continue;
        }
        if let Some(error) = reply.get("error") {
            bail!("qemu refused {command}: {error}");
        }
        return Ok(reply["return"].clone());
    }
}

/// The device of the virtio-serial port named [`QMP_PORT`] (found through sysfs: without udev
/// there is no `/dev/virtio-ports/NAME` link).
fn qmp_port() -> Result<std::path::PathBuf> {
    let ports = std::fs::read_dir("/sys/class/virtio-ports").context(
        "no virtio-serial ports: the virtio lab needs the guest of `cargo xtask test --virtio-only`",
    )?;
    for entry in ports {
        let entry = entry?;
        let name = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if name.trim() == QMP_PORT {
            return Ok(std::path::Path::new("/dev").join(entry.file_name()));
        }
    }
    bail!("the guest has no virtio-serial port {QMP_PORT}")
}

/// The next line from `port` (without its newline), with what was read past it left in
/// `pending`.
fn read_line(port: &mut File, pending: &mut Vec<u8>, deadline: Instant) -> Result<String> {
    loop {
        if let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            return Ok(String::from_utf8_lossy(&line[..end]).into_owned());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("timed out");
        }
        let mut poll = libc::pollfd {
            fd: port.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd that lives through the call.
        let ready = unsafe { libc::poll(&mut poll, 1, left.as_millis().min(1000) as i32) };
        if ready < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(error.into());
        }
        if ready == 0 {
            continue;
        }
        let mut buffer = [0u8; 4096];
        match port.read(&mut buffer) {
            Ok(0) => std::thread::sleep(Duration::from_millis(10)),
            Ok(n) => pending.extend_from_slice(&buffer[..n]),
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => return Err(error.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nics_are_read_as_role_and_mac() {
        let nics = parse_nics("r0=52:54:00:6D:70:00,h0=52:54:00:6d:70:01").unwrap();
        assert_eq!(nics["r0"], "52:54:00:6d:70:00");
        assert_eq!(nics["h0"], "52:54:00:6d:70:01");
        assert!(parse_nics("r0").is_err());
    }
}
