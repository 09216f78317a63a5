//! The three-namespace lab: host NICs and a router on one bridge, with fault injection.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::netns::{Netns, link_flags, run_output, word_after};
use crate::{
    BEHIND_ROUTER_V4, BEHIND_ROUTER_V6, BRIDGE, NAMESPACE_PREFIX, ROUTER_LINK_LOCAL, ROUTER_NIC,
    ROUTER_V4, ROUTER_V6,
};

/// The switch-side port of the router's veth.
const ROUTER_PORT: &str = "sr0";
/// How long a carrier change may take to reach the host NIC and the bridge port.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);
/// nftables table (bridge family, switch namespace) holding the silently dropped ports.
const DROP_TABLE: &str = "mpath_lab";
/// Creates [`DROP_TABLE`]: frames from or to a port in its set `dropped` are dropped.
const DROP_RULESET: &str = "table bridge mpath_lab {
  set dropped { type ifname; }
  chain forward { type filter hook forward priority 0; iifname @dropped drop; oifname @dropped drop; }
  chain input { type filter hook input priority 0; iifname @dropped drop; }
  chain output { type filter hook output priority 0; oifname @dropped drop; }
}
";

/// Makes every lab's namespace names unique within this process (the pid covers the rest).
static NEXT_LAB_ID: AtomicU64 = AtomicU64::new(0);

/// Names the namespaces of a new lab by role: `mpl-PID-LABID-ROLE`.
pub(crate) fn namespace_namer() -> impl Fn(&str) -> String {
    let lab_id = NEXT_LAB_ID.fetch_add(1, Ordering::Relaxed);
    move |role| format!("{NAMESPACE_PREFIX}{}-{lab_id}-{role}", std::process::id())
}

/// Configures a [`Lab`]; start with [`Lab::builder`].
#[derive(Debug, Clone)]
pub struct LabBuilder {
    nics: u32,
    behind_router: bool,
    router_addrs: Vec<String>,
    host_addrs: Vec<(String, String)>,
    mtu: u32,
}

impl LabBuilder {
    /// Number of host NICs `h0..h{n-1}` (default 2).
    pub fn nics(mut self, count: u32) -> Self {
        self.nics = count;
        self
    }

    /// Networks behind the router, reached through it as a gateway: [`BEHIND_ROUTER_V4`] in
    /// 198.51.100.0/24 and [`BEHIND_ROUTER_V6`] in 2001:db8:ff::/64 (on its loopback), and
    /// [`ROUTER_LINK_LOCAL`] on `r0` for IPv6 default routes as router advertisements give them.
    pub fn behind_router(mut self) -> Self {
        self.behind_router = true;
        self
    }

    /// Extra router addresses in CIDR form (e.g. `192.0.2.2/24` as another probe target),
    /// added to the defaults 192.0.2.1/24 and 2001:db8::1/64.
    pub fn router_addrs(mut self, cidrs: &[&str]) -> Self {
        self.router_addrs
            .extend(cidrs.iter().map(|cidr| cidr.to_string()));
        self
    }

    /// The MTU of every link of the lab (default 1500), e.g. 9000 for jumbo frames as
    /// storage and HPC networks run them; NICs added later get it too.
    pub fn mtu(mut self, mtu: u32) -> Self {
        self.mtu = mtu;
        self
    }

    /// An address in CIDR form put on host NIC `nic` at build time (host NICs have none
    /// otherwise).
    pub fn host_addr(mut self, nic: &str, cidr: &str) -> Self {
        self.host_addrs.push((nic.to_string(), cidr.to_string()));
        self
    }

    /// Creates the namespaces, links and addresses. Needs root. Everything created so far is
    /// removed again when a step fails.
    pub fn build(self) -> Result<Lab> {
        for cidr in &self.router_addrs {
            parse_cidr(cidr).context("bad router address")?;
        }
        for (nic, cidr) in &self.host_addrs {
            parse_cidr(cidr).with_context(|| format!("bad address for host NIC {nic}"))?;
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            bail!(
                "mpath-lab needs root to create network namespaces; run the tests as root \
                 (e.g. `cargo xtask test`)"
            );
        }

        let name = namespace_namer();
        let mut lab = Lab {
            host: Netns::create(name("host"))?,
            switch: Netns::create(name("switch"))?,
            router: Netns::create(name("router"))?,
            peer: None,
            peer_name: name("peer"),
            nics: BTreeSet::new(),
            dropped_ports: Mutex::new(None),
            mtu: self.mtu,
        };
        lab.set_up_switch()?;
        lab.set_up_router(&self.router_addrs)?;
        if self.behind_router {
            add_networks_behind_router(&lab.router)?;
        }
        lab.set_up_host()?;
        for _ in 0..self.nics {
            lab.add_nic()?;
        }
        for (nic, cidr) in &self.host_addrs {
            lab.add_host_addr(nic, cidr)?;
        }
        Ok(lab)
    }
}

/// A lab of three network namespaces, all deleted on drop:
///
/// ```text
///  host ns                 switch ns                    router ns
///  h0 ───────────── s0 ─┐
///  h1 ───────────── s1 ─┤  br0 (STP off) ── sr0 ───────── r0  192.0.2.1/24, 2001:db8::1/64
///  ...                  │
/// ```
#[derive(Debug)]
pub struct Lab {
    host: Netns,
    switch: Netns,
    router: Netns,
    /// An on-link host beside the router, once [`Lab::add_peer`] made it.
    peer: Option<Netns>,
    peer_name: String,
    /// Indexes N of the host NICs hN present now.
    nics: BTreeSet<u32>,
    /// Switch ports in the nftables drop set; `None` until the drop table exists.
    dropped_ports: Mutex<Option<BTreeSet<String>>>,
    /// The MTU of every veth.
    mtu: u32,
}

impl Lab {
    /// A builder with defaults: 2 host NICs, the default router addresses, no host addresses.
    pub fn builder() -> LabBuilder {
        LabBuilder {
            nics: 2,
            behind_router: false,
            router_addrs: Vec::new(),
            host_addrs: Vec::new(),
            mtu: 1500,
        }
    }

    /// A lab with `nics` host NICs and default everything else.
    pub fn new(nics: u32) -> Result<Lab> {
        Lab::builder().nics(nics).build()
    }

    /// The namespace holding the NICs under test (`h0`, `h1`, ...).
    pub fn host(&self) -> &Netns {
        &self.host
    }

    /// The namespace with bridge `br0` and the switch-side ports (`s0`, `s1`, ..., `sr0`).
    pub fn switch(&self) -> &Netns {
        &self.switch
    }

    /// The namespace holding the probe targets and traffic peer on `r0`.
    pub fn router(&self) -> &Netns {
        &self.router
    }

    /// Plugs an on-link host into the switch beside the router: `p0` holding `cidr` in a
    /// namespace of its own, answering echoes to the all-hosts groups (Linux ignores IPv4's
    /// by default), like the hosts in.mpathd finds when no router answers. Returns it.
    pub fn add_peer(&mut self, cidr: &str) -> Result<&Netns> {
        parse_cidr(cidr).context("bad peer address")?;
        let peer = Netns::create(self.peer_name.clone())?;
        write_sysctls(
            &peer,
            &[
                no_dad_sysctls().as_slice(),
                &[("ipv4/icmp_echo_ignore_broadcasts", "0")],
            ]
            .concat(),
        )?;
        self.add_veth(&peer, "p0", "sp0")?;
        self.switch
            .ip(&["link", "set", "sp0", "master", BRIDGE, "up"])?;
        peer.ip(&["link", "set", "p0", "up"])?;
        self.wait_until_forwarding(&peer, "p0", "sp0")?;
        add_addr(&peer, "p0", cidr)?;
        Ok(self.peer.insert(peer))
    }

    /// The host NICs present now, by index.
    pub fn nics(&self) -> Vec<String> {
        self.nics.iter().map(|index| format!("h{index}")).collect()
    }

    /// Plugs a new host NIC into the switch while the lab runs and returns its name: the
    /// lowest free `hN`, so a removed NIC comes back under its old name.
    pub fn add_nic(&mut self) -> Result<String> {
        let index = (0..)
            .find(|index| !self.nics.contains(index))
            .context("no free NIC index")?;
        let nic = format!("h{index}");
        let port = format!("s{index}");
        self.add_veth(&self.host, &nic, &port)?;
        self.nics.insert(index);
        self.switch
            .ip(&["link", "set", &port, "master", BRIDGE, "up"])?;
        self.host.ip(&["link", "set", &nic, "up"])?;
        self.wait_until_forwarding(&self.host, &nic, &port)?;
        Ok(nic)
    }

    /// A tap NIC `name` in the host namespace, up and with carrier, plugged into nothing: a
    /// NIC whose carrier changes the kernel reports as late as a physical NIC's.
    pub fn add_tap(&self, name: &str) -> Result<crate::Tap> {
        crate::Tap::create(&self.host, name)
    }

    /// Deletes host NIC `nic` (both veth ends), as if the device disappeared.
    pub fn remove_nic(&mut self, nic: &str) -> Result<()> {
        let index = self.nic_index(nic)?;
        self.host.ip(&["link", "del", nic])?;
        self.nics.remove(&index);
        // A NIC re-added under this name must not start out silently dropped.
        let port = format!("s{index}");
        let mut dropped = self.lock_dropped_ports();
        if dropped.as_mut().is_some_and(|ports| ports.remove(&port)) {
            self.drop_element("delete", &port)?;
        }
        Ok(())
    }

    /// The switch-side port `sN` that host NIC `hN` is plugged into.
    pub fn switch_port(&self, nic: &str) -> Result<String> {
        Ok(format!("s{}", self.nic_index(nic)?))
    }

    /// Carrier loss seen by the host: the switch port goes down, so `nic` shows NO-CARRIER.
    /// Returns once the host NIC's operational state has left UP (netlink has told).
    pub fn cut(&self, nic: &str) -> Result<()> {
        let port = self.switch_port(nic)?;
        self.switch.ip(&["link", "set", &port, "down"])?;
        settle(&format!("{nic} to lose its carrier"), || {
            Ok(self.host.operstate(nic)? != "UP")
        })
    }

    /// Undoes [`Lab::cut`]. Returns once frames flow again (STP is off, so the port forwards
    /// at once), unless the host NIC itself is administratively down.
    pub fn restore(&self, nic: &str) -> Result<()> {
        let port = self.switch_port(nic)?;
        self.switch.ip(&["link", "set", &port, "up"])?;
        self.wait_until_forwarding(&self.host, nic, &port)
    }

    /// Cuts and restores `nic` `times` times, down for half of `period` and up for the other
    /// half each time; blocks for `times * period` and leaves the NIC up.
    pub fn flap(&self, nic: &str, times: u32, period: Duration) -> Result<()> {
        for _ in 0..times {
            self.cut(nic)?;
            std::thread::sleep(period / 2);
            self.restore(nic)?;
            std::thread::sleep(period / 2);
        }
        Ok(())
    }

    /// A silent failure: the switch drops every frame from and to `nic` (nftables, bridge
    /// family) while its carrier stays up.
    pub fn drop_silently(&self, nic: &str) -> Result<()> {
        let port = self.switch_port(nic)?;
        let mut dropped = self.lock_dropped_ports();
        if dropped.is_none() {
            self.switch
                .run_with_input(&["nft", "-f", "-"], DROP_RULESET)
                .context("creating the nftables drop table")?;
        }
        let ports = dropped.get_or_insert_with(BTreeSet::new);
        if ports.contains(&port) {
            bail!("{nic} is already dropped silently");
        }
        self.drop_element("add", &port)?;
        ports.insert(port);
        Ok(())
    }

    /// Undoes [`Lab::drop_silently`].
    pub fn undrop(&self, nic: &str) -> Result<()> {
        let port = self.switch_port(nic)?;
        let mut dropped = self.lock_dropped_ports();
        let Some(ports) = dropped.as_mut().filter(|ports| ports.contains(&port)) else {
            bail!("{nic} is not dropped silently");
        };
        self.drop_element("delete", &port)?;
        ports.remove(&port);
        Ok(())
    }

    /// Makes the switch snoop IGMP and MLD and query for memberships itself, as switches on
    /// real networks do: from then on it forwards a group someone reported only to the ports
    /// it heard the reports on. The bridge gets IPv6 for this (MLD queries need a link-local
    /// source), so its own MLD and neighbour discovery show up on the host NICs.
    pub fn snoop_multicast(&self) -> Result<()> {
        write_sysctls(
            &self.switch,
            &[(&format!("ipv6/conf/{BRIDGE}/disable_ipv6"), "0")],
        )?;
        self.switch.ip(&[
            "link",
            "set",
            BRIDGE,
            "type",
            "bridge",
            "mcast_snooping",
            "1",
            "mcast_querier",
            "1",
        ])?;
        Ok(())
    }

    /// The MAC address of host NIC `nic`.
    pub fn mac(&self, nic: &str) -> Result<[u8; 6]> {
        self.nic_index(nic)?;
        mac(&self.host, nic)
    }

    /// Adds `cidr` to host NIC `nic` (IPv6 without DAD, so it is usable at once).
    pub fn add_host_addr(&self, nic: &str, cidr: &str) -> Result<()> {
        self.nic_index(nic)?;
        add_addr(&self.host, nic, cidr)
    }

    /// The IPv6 default route through the router's link-local address on host NIC `nic`, as
    /// router advertisements leave it (protocol ra, metric 1024).
    pub fn add_ra_default_route(&self, nic: &str) -> Result<()> {
        self.nic_index(nic)?;
        self.host.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            ROUTER_LINK_LOCAL,
            "dev",
            nic,
            "proto",
            "ra",
            "metric",
            "1024",
        ])?;
        Ok(())
    }

    /// Removes `cidr` from host NIC `nic`.
    pub fn del_host_addr(&self, nic: &str, cidr: &str) -> Result<()> {
        self.nic_index(nic)?;
        parse_cidr(cidr)?;
        self.host.ip(&["addr", "del", cidr, "dev", nic])?;
        Ok(())
    }

    /// The global-scope addresses of host NIC `nic` in CIDR form (link-local ones left out),
    /// in the kernel's order.
    pub fn host_addrs(&self, nic: &str) -> Result<Vec<String>> {
        self.nic_index(nic)?;
        global_addrs(&self.host, nic)
    }

    /// Packets the switch received from host NIC `nic` (the switch port's rx counter), i.e.
    /// what actually left that NIC.
    pub fn switch_port_rx_packets(&self, nic: &str) -> Result<u64> {
        let port = self.switch_port(nic)?;
        let counter = format!("/sys/class/net/{port}/statistics/rx_packets");
        let text = self.switch.run(&["cat", &counter])?;
        text.trim()
            .parse()
            .with_context(|| format!("bad counter in {counter}: {text:?}"))
    }

    /// Waits for what the kernel does asynchronously (in linkwatch) after a link comes up:
    /// until then `ifname` in `netns` drops what it sends and its bridge `port` does not
    /// forward. An administratively down `ifname` is not waited for.
    fn wait_until_forwarding(&self, netns: &Netns, ifname: &str, port: &str) -> Result<()> {
        settle(&format!("{ifname} to forward through the switch"), || {
            let link = netns.link_line(ifname)?;
            let admin_up = link_flags(&link).is_some_and(|flags| flags.contains(&"UP"));
            if !admin_up {
                return Ok(true);
            }
            if word_after(&link, "state") != Some("UP") {
                return Ok(false);
            }
            let bridge_port = run_output(
                Command::new("bridge").args([
                    "-n",
                    self.switch.name(),
                    "link",
                    "show",
                    "dev",
                    port,
                ]),
                None,
            )?;
            Ok(word_after(&bridge_port, "state") == Some("forwarding"))
        })
    }

    fn set_up_switch(&self) -> Result<()> {
        // The switch is a layer-2 device: no IPv6 of its own, so no router solicitations or
        // MLD reports from it show up on the host NICs.
        write_sysctls(
            &self.switch,
            &[
                ("ipv6/conf/all/disable_ipv6", "1"),
                ("ipv6/conf/default/disable_ipv6", "1"),
            ],
        )?;
        self.switch.ip(&[
            "link",
            "add",
            BRIDGE,
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
            "mcast_snooping",
            "0",
        ])?;
        self.switch.ip(&["link", "set", BRIDGE, "up"])?;
        Ok(())
    }

    fn set_up_router(&self, extra_addrs: &[String]) -> Result<()> {
        write_sysctls(&self.router, &no_dad_sysctls())?;
        self.add_veth(&self.router, ROUTER_NIC, ROUTER_PORT)?;
        self.switch
            .ip(&["link", "set", ROUTER_PORT, "master", BRIDGE, "up"])?;
        self.router.ip(&["link", "set", ROUTER_NIC, "up"])?;
        self.wait_until_forwarding(&self.router, ROUTER_NIC, ROUTER_PORT)?;
        add_router_addrs(&self.router, extra_addrs)
    }

    /// A veth pair at the lab's MTU: `nic` in `ns`, `port` in the switch namespace.
    fn add_veth(&self, ns: &Netns, nic: &str, port: &str) -> Result<()> {
        let mtu = self.mtu.to_string();
        ns.ip(&[
            "link",
            "add",
            nic,
            "mtu",
            &mtu,
            "type",
            "veth",
            "peer",
            "name",
            port,
            "mtu",
            &mtu,
            "netns",
            self.switch.name(),
        ])?;
        Ok(())
    }

    fn set_up_host(&self) -> Result<()> {
        // Set before any NIC exists, so every NIC (also ones added later) inherits them.
        write_sysctls(&self.host, &no_dad_sysctls())
    }

    /// Adds `port` to the set of the switch ports whose frames are dropped (`verb` "add"), or
    /// takes it out ("delete").
    fn drop_element(&self, verb: &str, port: &str) -> Result<()> {
        self.switch.run(&[
            "nft",
            verb,
            "element",
            "bridge",
            DROP_TABLE,
            "dropped",
            &format!("{{ \"{port}\" }}"),
        ])?;
        Ok(())
    }

    fn lock_dropped_ports(&self) -> std::sync::MutexGuard<'_, Option<BTreeSet<String>>> {
        // The set only mirrors nftables; a panic elsewhere cannot leave it half-updated.
        self.dropped_ports
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// N of a present host NIC `hN`, or an error naming the NICs there are.
    fn nic_index(&self, nic: &str) -> Result<u32> {
        nic.strip_prefix('h')
            .and_then(|digits| digits.parse().ok())
            .filter(|index| self.nics.contains(index))
            .with_context(|| {
                format!(
                    "{nic:?} is not a NIC of this lab (NICs: {})",
                    self.nics().join(", ")
                )
            })
    }
}

/// The router's probe targets on `r0`: 192.0.2.1/24, 2001:db8::1/64 and `extra_addrs`.
pub(crate) fn add_router_addrs(router: &Netns, extra_addrs: &[String]) -> Result<()> {
    let defaults = [format!("{ROUTER_V4}/24"), format!("{ROUTER_V6}/64")];
    for cidr in defaults.iter().chain(extra_addrs) {
        add_addr(router, ROUTER_NIC, cidr)?;
    }
    Ok(())
}

/// See [`LabBuilder::behind_router`].
pub(crate) fn add_networks_behind_router(router: &Netns) -> Result<()> {
    add_addr(router, "lo", &format!("{BEHIND_ROUTER_V4}/24"))?;
    add_addr(router, "lo", &format!("{BEHIND_ROUTER_V6}/64"))?;
    add_addr(router, ROUTER_NIC, &format!("{ROUTER_LINK_LOCAL}/64"))?;
    Ok(())
}

/// The MAC address of `nic` in `netns`.
pub(crate) fn mac(netns: &Netns, nic: &str) -> Result<[u8; 6]> {
    let line = netns.link_line(nic)?;
    let text = line
        .split_whitespace()
        .skip_while(|word| *word != "link/ether")
        .nth(1)
        .with_context(|| format!("no MAC address in `ip link` output for {nic}: {line}"))?;
    parse_mac(text).with_context(|| format!("bad MAC address {text} for {nic}"))
}

/// The global-scope addresses of `nic` in `netns` in CIDR form, in the kernel's order.
pub(crate) fn global_addrs(netns: &Netns, nic: &str) -> Result<Vec<String>> {
    let listing = netns.ip(&["-o", "addr", "show", "dev", nic, "scope", "global"])?;
    Ok(listing
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            words.find(|word| *word == "inet" || *word == "inet6")?;
            words.next().map(str::to_string)
        })
        .collect())
}

/// DAD off, so addresses added or moved are usable at once instead of after about a second.
pub(crate) fn no_dad_sysctls() -> [(&'static str, &'static str); 4] {
    [
        ("ipv6/conf/all/accept_dad", "0"),
        ("ipv6/conf/default/accept_dad", "0"),
        ("ipv6/conf/all/dad_transmits", "0"),
        ("ipv6/conf/default/dad_transmits", "0"),
    ]
}

/// Polls `done` until it holds, failing after [`SETTLE_TIMEOUT`].
pub(crate) fn settle(what: &str, done: impl Fn() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + crate::scaled(SETTLE_TIMEOUT);
    while !done()? {
        if Instant::now() > deadline {
            bail!("timed out after {SETTLE_TIMEOUT:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

pub(crate) fn write_sysctls(netns: &Netns, settings: &[(&str, &str)]) -> Result<()> {
    // /proc/sys/net shows the namespace of the thread that opens it.
    let _inside = netns.enter()?;
    for (key, value) in settings {
        let path = format!("/proc/sys/net/{key}");
        std::fs::write(&path, value)
            .with_context(|| format!("setting {path} to {value} in {}", netns.name()))?;
    }
    Ok(())
}

pub(crate) fn add_addr(netns: &Netns, ifname: &str, cidr: &str) -> Result<()> {
    let (address, _) = parse_cidr(cidr)?;
    let mut args = vec!["addr", "add", cidr, "dev", ifname];
    if address.is_ipv6() {
        args.push("nodad");
    }
    netns.ip(&args)?;
    Ok(())
}

/// Splits `ADDRESS/PREFIX`, checking both parts.
fn parse_cidr(cidr: &str) -> Result<(IpAddr, u8)> {
    let (address, prefix) = cidr
        .split_once('/')
        .with_context(|| format!("{cidr:?} is not in CIDR form ADDRESS/PREFIX"))?;
    let address: IpAddr = address
        .parse()
        .with_context(|| format!("{address:?} in {cidr:?} is not an IP address"))?;
    let max_prefix = if address.is_ipv4() { 32 } else { 128 };
    let prefix = prefix
        .parse::<u8>()
        .ok()
        .filter(|prefix| *prefix <= max_prefix)
        .with_context(|| format!("prefix length {prefix:?} in {cidr:?} is not 0..={max_prefix}"))?;
    Ok((address, prefix))
}

fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let octets = text
        .split(':')
        .map(|octet| u8::from_str_radix(octet, 16))
        .collect::<Result<Vec<u8>, _>>()?;
    octets
        .try_into()
        .map_err(|octets: Vec<u8>| anyhow::anyhow!("{} octets instead of 6", octets.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parsing_accepts_both_families_and_names_the_bad_part() {
        assert_eq!(
            parse_cidr("192.0.2.21/24").unwrap(),
            ("192.0.2.21".parse().unwrap(), 24)
        );
        assert_eq!(
            parse_cidr("2001:db8::1/64").unwrap(),
            ("2001:db8::1".parse().unwrap(), 64)
        );
        let missing_prefix = parse_cidr("192.0.2.21").unwrap_err().to_string();
        assert!(missing_prefix.contains("CIDR"), "{missing_prefix}");
        let bad_address = parse_cidr("192.0.2.300/24").unwrap_err().to_string();
        assert!(bad_address.contains("\"192.0.2.300\""), "{bad_address}");
        let long_prefix = parse_cidr("192.0.2.1/33").unwrap_err().to_string();
        assert!(long_prefix.contains("0..=32"), "{long_prefix}");
    }

    #[test]
    fn mac_parsing_needs_six_hex_octets() {
        assert_eq!(
            parse_mac("02:00:5e:10:00:0a").unwrap(),
            [0x02, 0x00, 0x5e, 0x10, 0x00, 0x0a]
        );
        assert!(parse_mac("02:00:5e:10:00").is_err());
        assert!(parse_mac("02:00:5e:10:00:zz").is_err());
    }
}
