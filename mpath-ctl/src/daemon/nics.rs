//! Group NICs: setting them up and tearing them down as they come and go, resynchronising
//! with the kernel, adopting what an earlier mpathd left, and the probers on each NIC.

use super::*;

impl Daemon {
    /// Detaches the datapath from NICs an earlier mpathd served that are no group's NIC now
    /// (removed while no daemon ran, or taken out of the configuration).
    pub(super) fn prune_stale_pins(&mut self) {
        let current: BTreeSet<u32> = self
            .groups
            .iter()
            .flat_map(|g| g.nics.iter().filter_map(|n| n.ifindex))
            .collect();
        match self.datapath.pinned_nics() {
            Ok(pinned) => {
                for ifindex in pinned.into_iter().filter(|i| !current.contains(i)) {
                    tracing::info!(
                        "detaching the datapath from ifindex {ifindex}: in no group now"
                    );
                    let _ = self.datapath.detach(ifindex);
                    let _ = self.datapath.maps.remove_nic(ifindex);
                }
            }
            Err(e) => tracing::warn!("listing pinned links: {e}"),
        }
    }

    /// Builds the runtime of a configured group with the lowest free group id and NIC slots;
    /// the kernel side is set up by the next resync.
    pub(super) fn add_group(&mut self, g: &GroupConfig) -> anyhow::Result<()> {
        let was_running = self.group_ids.contains_key(&g.name);
        // A group keeps its id (its bucket table) across reloads.
        let id =
            keep_or_assign(&mut self.group_ids, &g.name, MAX_GROUPS).context("too many groups")?;

        let policy = Policy {
            failback: self.config.daemon.failback,
            // Only a cold start has a quiet period: not a restart taking over a running
            // datapath, nor a reload rebuilding a group that was running.
            startup_quiet: if self.restarted || was_running {
                Duration::ZERO
            } else {
                Policy::default().startup_quiet
            },
        };
        let v6_data = g
            .interfaces
            .iter()
            .flat_map(|i| &i.data_addresses)
            .any(|a| a.addr().is_ipv6());
        let interfaces = g
            .interfaces
            .iter()
            .map(|i| state::InterfaceConfig {
                name: i.name.clone(),
                standby: i.standby,
                // As on Solaris, where the link-local address is every NIC's IPv6 test
                // address: a group with IPv6 data addresses probes over IPv6 on every NIC,
                // with or without an IPv4 test address.
                probe: match (i.test_address.is_some(), v6_data) {
                    (false, false) => ProbeFamilies::NONE,
                    (true, false) => ProbeFamilies::IPV4,
                    (false, true) => ProbeFamilies::IPV6,
                    (true, true) => ProbeFamilies::BOTH,
                },
            })
            .collect();
        let mut nics = Vec::new();
        for i in &g.interfaces {
            let probe_v6 = v6_data;
            // A NIC keeps its counter slot across reloads.
            let slot =
                keep_or_assign(&mut self.slots, &i.name, MAX_NICS).context("too many NICs")?;
            nics.push(Nic {
                name: i.name.clone(),
                test_address: i.test_address.map(Into::into),
                slot,
                ifindex: None,
                mac: [0; 6],
                probe_v6,
                probing: Vec::new(),
                rx: RxEvidence::default(),
                carrier: false,
            });
        }
        let addresses = g
            .interfaces
            .iter()
            .flat_map(|i| {
                i.data_addresses.iter().map(|cidr| DataAddress {
                    cidr: *cidr,
                    home: i.name.clone(),
                    current: None,
                })
            })
            .collect();
        self.groups.push(Group {
            id,
            config: g.clone(),
            fsm: state::Group::new(g.name.clone(), policy, interfaces)?,
            fdt: FailureDetectionTime::new(
                g.name.clone(),
                self.config.daemon.failure_detection_time,
            )?,
            nics,
            addresses,
            held_routes: Vec::new(),
            adopted: BTreeSet::new(),
        });
        Ok(())
    }

    /// Reads links, addresses and routes from the kernel and brings every group up to date:
    /// at start, on reload, and after the kernel dropped netlink events. The groups named in
    /// `adopt` are new to this daemon: what the host shows of an earlier one's decisions is
    /// adopted (see [`adopt_failures`]).
    pub(super) async fn resync(
        &mut self,
        adopt: &BTreeSet<String>,
        carry: &BTreeMap<String, Vec<(String, IfState)>>,
    ) -> anyhow::Result<()> {
        let links = self.netlink.links().await?;
        for link in &links {
            if self.locate(&link.name).is_none() {
                self.track_ungrouped(link);
            }
        }
        let addresses = self.netlink.addresses().await?;
        let by_origin = self.netlink.addresses_by_origin().await?;
        let placed: Vec<(u32, IpCidr)> = by_origin
            .iter()
            .filter(|(_, _, origin)| *origin == Origin::Other)
            .map(|(ifindex, cidr, _)| (*ifindex, *cidr))
            .collect();
        let main = self.netlink.main_routes().await?;
        self.take_main_routes(main);
        self.addresses = addresses.clone();
        let now = Instant::now();
        for gi in 0..self.groups.len() {
            let mut present = Vec::new();
            for ni in 0..self.groups[gi].nics.len() {
                let name = self.groups[gi].nics[ni].name.clone();
                match links.iter().find(|l| l.name == name) {
                    Some(link) => {
                        self.groups[gi].nics[ni].carrier = link.usable();
                        self.set_up_nic(gi, ni, link, now).await;
                        present.push((name, link.usable()));
                    }
                    None => self.forget_nic(gi, ni),
                }
            }
            self.adopt_addresses(&placed);
            let group = &mut self.groups[gi];
            for address in &mut group.addresses {
                address.current = group
                    .nics
                    .iter()
                    .filter_map(|n| n.ifindex.map(|i| (i, &n.name)))
                    .find(|(ifindex, _)| addresses.contains(&(*ifindex, address.cidr)))
                    .map(|(_, name)| name.clone());
            }
            let mut actions = group.fsm.handle(Event::Snapshot { present }, now)?;
            if let Some(states) = carry.get(&group.config.name) {
                actions.extend(carry_states(group, states, now));
            } else if adopt.contains(&group.config.name) && self.config.daemon.failback {
                actions.extend(adopt_failures(group, now));
            }
            self.apply(gi, actions, true).await;
            self.remove_extra_copies(gi, &addresses).await;
        }
        self.remove_unconfigured(&by_origin).await;
        self.update_routes().await;
        Ok(())
    }

    /// Removes the addresses an earlier mpathd put on NICs that its configuration no longer
    /// names (a data address taken out of the file, the test address of a NIC that left the
    /// configuration while mpathd was stopped), as a reload would have: a restart converges
    /// to the state a reload reaches.
    async fn remove_unconfigured(&mut self, found: &[(u32, IpCidr, Origin)]) {
        for (ifindex, cidr, origin) in found {
            let configured = self.groups.iter().any(|g| {
                g.addresses.iter().any(|a| a.cidr.addr() == cidr.addr())
                    || g.nics
                        .iter()
                        .any(|n| n.test_address.is_some_and(|t| t.addr() == cidr.addr()))
            });
            if *origin != Origin::Mpathd || configured {
                continue;
            }
            tracing::info!(
                "removing {cidr} (ifindex {ifindex}): an earlier mpathd put it there and the configuration no longer has it"
            );
            if let Err(e) = self.netlink.del_address(*ifindex, *cidr).await {
                tracing::error!("{e}");
            }
        }
    }

    /// Attaches the datapath to a NIC that is present and starts probing on it.
    pub(super) async fn set_up_nic(
        &mut self,
        gi: usize,
        ni: usize,
        link: &LinkState,
        now: Instant,
    ) {
        let group = &mut self.groups[gi];
        let group_nics: Vec<u32> = group
            .nics
            .iter()
            .filter_map(|n| n.ifindex)
            .chain([link.ifindex])
            .collect();
        let routes: Vec<RouteEntry> = self
            .main_routes
            .iter()
            .flat_map(MainRoute::entries)
            .collect();
        let nic = &mut group.nics[ni];
        if nic.ifindex == Some(link.ifindex) {
            return;
        }
        // A late event about an older NIC of this name: the current one is set up by its own.
        if datapath::ifindex_of(&nic.name).ok() != Some(link.ifindex) {
            return;
        }
        if let Some(old) = nic.ifindex.take() {
            // The NIC was re-created under the same name.
            let _ = self.datapath.detach(old);
            let _ = self.datapath.maps.remove_nic(old);
        }
        nic.mac = link.mac.unwrap_or_default();
        if let Err(e) = self.datapath.attach(&nic.name) {
            tracing::error!("cannot attach the datapath to {}: {e}", nic.name);
            return;
        }
        if let Err(e) = Netconf::system().write(&nic.name, InterfaceNetconf::GROUP_MEMBER) {
            tracing::warn!("{}: {e}", nic.name);
        }
        let mut info = NicInfo {
            slot: nic.slot,
            group: group.id,
            mac: nic.mac,
            ..Default::default()
        };
        let link_local = nic
            .probe_v6
            .then(|| link_local_of(&self.addresses, link.ifindex))
            .flatten();
        if let Some(IpAddr::V6(ll)) = link_local.map(|c| c.addr()) {
            info.flags |= NIC_F_TEST_V6;
            info.test_v6 = ll.octets();
        }
        if let Some(test) = nic.test_address {
            if let IpAddr::V4(v4) = test.addr() {
                info.flags |= NIC_F_TEST_V4;
                info.test_v4 = v4.octets();
            }
            if let Err(e) = add_test_address(&self.netlink, link.ifindex, test).await {
                tracing::error!("cannot add test address {test} to {}: {e}", nic.name);
            }
        }
        if let Err(e) = self.datapath.maps.set_nic(link.ifindex, info) {
            tracing::error!("{}: {e}", nic.name);
        }
        // After set_nic: the test address list is per group, found through the NIC.
        if let Some(IpAddr::V4(v4)) = nic.test_address.map(|t| t.addr())
            && let Err(e) = self.datapath.maps.set_test_address(v4, link.ifindex)
        {
            tracing::error!("{}: {e}", nic.name);
        }
        nic.ifindex = Some(link.ifindex);
        let local: Vec<IpAddr> = self.addresses.iter().map(|(_, c)| c.addr()).collect();
        nic.probing = nic
            .test_address
            .into_iter()
            .chain(link_local)
            .filter_map(|test| {
                start_probing(
                    &nic.name,
                    test,
                    link.ifindex,
                    &group.config.targets,
                    &routes,
                    &group_nics,
                    &local,
                    &group.fdt,
                    &mut self.rng,
                    now,
                )
            })
            .collect();
    }

    /// Starts IPv6 probing on a NIC whose link-local address showed up (or finished DAD)
    /// after the NIC was set up.
    pub(super) fn start_v6(&mut self, ifindex: u32, link_local: IpCidr) {
        let now = Instant::now();
        let local: Vec<IpAddr> = self.addresses.iter().map(|(_, c)| c.addr()).collect();
        let Some(group) = self
            .groups
            .iter_mut()
            .find(|g| g.nics.iter().any(|n| n.ifindex == Some(ifindex)))
        else {
            return;
        };
        let group_nics: Vec<u32> = group.nics.iter().filter_map(|n| n.ifindex).collect();
        let routes: Vec<RouteEntry> = self
            .main_routes
            .iter()
            .flat_map(MainRoute::entries)
            .collect();
        let Some(nic) = group.nics.iter_mut().find(|n| n.ifindex == Some(ifindex)) else {
            return;
        };
        let running = nic
            .probing
            .iter()
            .any(|p| p.prober.family() == AddressFamily::Inet6);
        let IpAddr::V6(ll) = link_local.addr() else {
            return;
        };
        if !nic.probe_v6 || running {
            return;
        }
        let Some(probing) = start_probing(
            &nic.name,
            link_local,
            ifindex,
            &group.config.targets,
            &routes,
            &group_nics,
            &local,
            &group.fdt,
            &mut self.rng,
            now,
        ) else {
            return;
        };
        match self.datapath.maps.nics.get(&ifindex, 0) {
            Ok(mut info) => {
                info.flags |= NIC_F_TEST_V6;
                info.test_v6 = ll.octets();
                if let Err(e) = self.datapath.maps.set_nic(ifindex, info) {
                    tracing::error!("{}: {e}", nic.name);
                }
            }
            Err(e) => tracing::error!("{}: {e}", nic.name),
        }
        tracing::info!("{} probes over IPv6 from {ll}", nic.name);
        nic.probing.push(probing);
    }

    /// Stops IPv6 probing from a link-local address that went away (it starts again when the
    /// NIC gets one back); returns the NIC's group and name when a prober stopped.
    pub(super) fn stop_v6(&mut self, ifindex: u32, link_local: IpCidr) -> Option<(usize, String)> {
        let (gi, nic) = self.groups.iter_mut().enumerate().find_map(|(gi, g)| {
            g.nics
                .iter_mut()
                .find(|n| n.ifindex == Some(ifindex))
                .map(|n| (gi, n))
        })?;
        let before = nic.probing.len();
        nic.probing
            .retain(|p| p.prober.targets().test_address() != link_local);
        if nic.probing.len() == before {
            return None;
        }
        tracing::info!("{} stops probing over IPv6: {link_local} is gone", nic.name);
        if let Ok(mut info) = self.datapath.maps.nics.get(&ifindex, 0) {
            info.flags &= !NIC_F_TEST_V6;
            info.test_v6 = [0; 16];
            if let Err(e) = self.datapath.maps.set_nic(ifindex, info) {
                tracing::error!("{}: {e}", nic.name);
            }
        }
        Some((gi, nic.name.clone()))
    }

    /// A NIC's hardware address changed under the same ifindex (`ip link set h2 address`):
    /// the datapath rewrites source MACs to it, and the peers must learn it for the addresses
    /// the NIC holds, or they keep sending to a MAC nobody has.
    pub(super) fn change_mac(&mut self, gi: usize, ni: usize, mac: [u8; 6]) {
        let nic = &mut self.groups[gi].nics[ni];
        let Some(ifindex) = nic.ifindex else { return };
        if nic.mac == mac {
            return;
        }
        nic.mac = mac;
        let name = nic.name.clone();
        tracing::info!(
            "the hardware address of {name} changed to {}; announcing its addresses with it",
            mac.map(|b| format!("{b:02x}")).join(":")
        );
        match self.datapath.maps.nics.get(&ifindex, 0) {
            Ok(mut info) => {
                info.mac = mac;
                if let Err(e) = self.datapath.maps.set_nic(ifindex, info) {
                    tracing::error!("{name}: {e}");
                }
            }
            Err(e) => tracing::error!("{name}: {e}"),
        }
        let test = self.groups[gi].nics[ni].test_address.map(|t| t.addr());
        if let Some(IpAddr::V4(v4)) = test
            && let Err(e) = self.datapath.maps.set_test_address(v4, ifindex)
        {
            tracing::error!("{name}: {e}");
        }
        self.write_table(gi);
        // The probe targets must learn it for the test and link-local addresses too, or the
        // NIC's probes fail until their neighbour entries expire.
        let held: Vec<IpAddr> = self.groups[gi]
            .addresses
            .iter()
            .filter(|a| a.current.as_deref() == Some(name.as_str()))
            .map(|a| a.cidr.addr())
            .chain(test)
            .chain(link_local_of(&self.addresses, ifindex).map(|c| c.addr()))
            .collect();
        for addr in held {
            self.announce(ifindex, mac, addr, &name);
        }
    }

    /// A NIC's test address vanished (someone deleted it): put it back, or the NIC's probes
    /// would fail for a reason that is not the NIC's. The kernel is asked, as late events of
    /// a NIC that left and came back may arrive after it was added again.
    pub(super) async fn restore_test_address(&mut self, ifindex: u32, cidr: IpCidr) {
        let Some(nic) = self.groups.iter().flat_map(|g| &g.nics).find(|n| {
            n.ifindex == Some(ifindex) && n.test_address.is_some_and(|t| t.addr() == cidr.addr())
        }) else {
            return;
        };
        let (name, test) = (nic.name.clone(), nic.test_address);
        let Some(test) = test else { return };
        match self.netlink.addresses().await {
            Ok(now) if now.contains(&(ifindex, cidr)) => return,
            Ok(_) => {}
            Err(e) => {
                tracing::error!("reading the addresses to check {cidr}: {e}");
                return;
            }
        }
        tracing::warn!(
            "test address {cidr} was removed from {name} behind mpathd's back; restoring it"
        );
        if let Err(e) = add_test_address(&self.netlink, ifindex, test).await {
            tracing::error!("cannot restore test address {test} on {name}: {e}");
        }
    }

    /// Forgets the kernel side of a NIC that is gone; its links went with it.
    pub(super) fn forget_nic(&mut self, gi: usize, ni: usize) {
        let nic = &mut self.groups[gi].nics[ni];
        nic.probing.clear();
        if let Some(ifindex) = nic.ifindex.take() {
            let _ = self.datapath.detach(ifindex);
            let _ = self.datapath.maps.remove_nic(ifindex);
        }
    }

    /// Follows the link of a NIC outside every group (TRACK_INTERFACES_ONLY_WITH_GROUPS=no),
    /// logging its failures and repairs as in.mpathd does.
    pub(super) fn track_ungrouped(&mut self, link: &LinkState) {
        if self.config.daemon.track_interfaces_only_with_groups || link.name == "lo" {
            return;
        }
        let up = link.usable();
        match self.ungrouped.insert(link.name.clone(), up) {
            Some(was) if was == up => {}
            Some(_) if up => tracing::info!("The link has come up on {}", link.name),
            Some(_) => tracing::warn!("The link has gone down on {}", link.name),
            None => tracing::debug!("tracking {} (in no group)", link.name),
        }
    }
}

/// Puts a NIC's test address on it. A test address must never steer routing nor be chosen
/// as a source: it goes on as a host address (/32) without a prefix route. Otherwise it would
/// be the primary address of its subnet and the data addresses secondaries, which get no route
/// of their own.
async fn add_test_address(
    netlink: &Netlink,
    ifindex: u32,
    test: IpCidr,
) -> Result<(), crate::net::netlink::NetlinkError> {
    let host = IpCidr::new(test.addr(), 32).expect("/32 is valid for IPv4");
    let options = AddressOptions {
        noprefixroute: true,
        mpathds: true,
        ..Default::default()
    };
    netlink.add_address(ifindex, host, options).await
}

/// Adopts what an earlier mpathd left: a probing NIC whose data addresses sit on another NIC
/// of the group had been failed by its probes (a link failure shows in the link state). It
/// stays failed until its probes repair it, so a restart neither fails back nor loses
/// traffic. Only with FAILBACK on: with it off, addresses away from home are normal.
pub(super) fn adopt_failures(group: &mut Group, now: Instant) -> Vec<Action> {
    let mut actions = Vec::new();
    for nic in &group.nics {
        if nic.probing.is_empty() {
            continue;
        }
        let Some(away) = group
            .addresses
            .iter()
            .find(|a| a.home == nic.name && a.current.as_ref().is_some_and(|c| *c != nic.name))
        else {
            continue;
        };
        let Ok(adopted) = group.fsm.handle(
            Event::Adopt {
                nic: nic.name.clone(),
            },
            now,
        ) else {
            continue;
        };
        if adopted.iter().any(|a| matches!(a, Action::Failed { .. })) {
            tracing::info!(
                "{} of {} is on {}: {} stays failed until its probes answer again",
                away.cidr,
                nic.name,
                away.current.as_deref().unwrap_or("--"),
                nic.name
            );
        }
        actions.extend(adopted);
    }
    actions
}

/// The NIC's IPv6 link-local address (its IPv6 test address), if it has one.
pub(super) fn link_local_of(addresses: &[(u32, IpCidr)], ifindex: u32) -> Option<IpCidr> {
    addresses
        .iter()
        .find(|(i, c)| *i == ifindex && is_link_local(c.addr()))
        .map(|(_, c)| *c)
}

/// The number `name` holds in `assigned`, or the lowest one below `limit` that nobody holds
/// (then recorded); `None` when all are taken.
fn keep_or_assign(assigned: &mut BTreeMap<String, u32>, name: &str, limit: u32) -> Option<u32> {
    let number = match assigned.get(name) {
        Some(number) => *number,
        None => (0..limit).find(|n| assigned.values().all(|used| used != n))?,
    };
    assigned.insert(name.to_string(), number);
    Some(number)
}

pub(super) fn is_link_local(addr: IpAddr) -> bool {
    matches!(addr, IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80)
}

/// Opens the probe socket and the prober of a NIC for the family of `test` (its IPv4 test
/// address or its IPv6 link-local address).
#[expect(
    clippy::too_many_arguments,
    reason = "all of it is needed to start a prober"
)]
pub(super) fn start_probing(
    nic: &str,
    test: IpCidr,
    ifindex: u32,
    configured: &[IpAddr],
    routes: &[RouteEntry],
    group_nics: &[u32],
    local: &[IpAddr],
    fdt: &FailureDetectionTime,
    rng: &mut StdRng,
    now: Instant,
) -> Option<Probing> {
    let socket = match test.addr() {
        IpAddr::V4(addr) => ProbeSocket::v4(nic, ifindex, addr),
        IpAddr::V6(addr) => ProbeSocket::v6(nic, ifindex, addr),
    };
    let socket = match socket {
        Ok(s) => s,
        // A link-local address in duplicate address detection cannot be bound yet;
        // `start_v6` starts the prober when the kernel reports the address done with it.
        Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable && test.addr().is_ipv6() => {
            tracing::info!(
                interface = nic,
                "{nic}: IPv6 probing from {} starts once its duplicate address detection ends",
                test.addr()
            );
            return None;
        }
        Err(e) => {
            tracing::error!(interface = nic, "cannot probe from {nic}: {e}");
            return None;
        }
    };
    let mut targets = match TargetSet::new(ifindex, test) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!("{nic}: {e}");
            return None;
        }
    };
    let family = AddressFamily::of(test.addr());
    let same_family: Vec<IpAddr> = configured
        .iter()
        .copied()
        .filter(|a| AddressFamily::of(*a) == family)
        .collect();
    if let Err(e) = targets.set_configured(&same_family) {
        tracing::error!("{nic}: {e}");
    }
    targets.update_routes(routes, group_nics, local);
    let prober = Prober::new(nic.to_string(), targets, now, rng, fdt);
    Some(Probing {
        prober,
        socket,
        discovery: Vec::new(),
        had_targets: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_kept_by_name_and_freed_ones_reused() {
        let mut assigned = BTreeMap::new();
        assert_eq!(keep_or_assign(&mut assigned, "a", 3), Some(0));
        assert_eq!(keep_or_assign(&mut assigned, "b", 3), Some(1));
        assert_eq!(keep_or_assign(&mut assigned, "a", 3), Some(0), "kept");
        assigned.remove("a");
        assert_eq!(
            keep_or_assign(&mut assigned, "c", 3),
            Some(0),
            "lowest free"
        );
        assert_eq!(keep_or_assign(&mut assigned, "d", 3), Some(2));
        assert_eq!(keep_or_assign(&mut assigned, "e", 3), None, "all taken");
    }
}
