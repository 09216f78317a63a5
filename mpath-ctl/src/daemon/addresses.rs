//! Data addresses and bucket tables: placing, moving, announcing and restoring.

use super::*;

impl Daemon {
    /// A data address vanished from the NIC mpathd had put it on (someone deleted it): put it
    /// back where the placement wants it. mpathd's own moves point the address at its new
    /// NIC before deleting the old copy, but their events arrive late, after any later move
    /// back: the kernel is asked whether the address is really gone.
    pub(super) async fn restore_lost_address(&mut self, ifindex: u32, cidr: IpCidr) {
        let Some(gi) = self.groups.iter().position(|g| {
            g.addresses.iter().any(|a| {
                a.cidr == cidr
                    && a.current
                        .as_deref()
                        .and_then(|n| g.nic(n))
                        .is_some_and(|n| n.ifindex == Some(ifindex))
            })
        }) else {
            return;
        };
        if self.kernel_has(ifindex, cidr).await != Some(false) {
            return;
        }
        let group = &mut self.groups[gi];
        if group.adopted.remove(&cidr) {
            // Someone else's address, and now someone removed it: it is theirs to remove.
            tracing::info!(
                "{cidr} was removed from its NIC; group {} forgets it (adopted, not configured)",
                group.config.name
            );
            group.addresses.retain(|a| a.cidr != cidr);
            return;
        }
        if let Some(a) = group.addresses.iter_mut().find(|a| a.cidr == cidr) {
            tracing::warn!(
                "data address {cidr} was removed from {} behind mpathd's back; restoring it",
                a.current.as_deref().unwrap_or("--")
            );
            a.current = None;
        }
        self.move_addresses(gi).await;
    }

    /// A data address appeared on a NIC of its group without mpathd putting it there (an
    /// administrator, a DHCP client), with its prefix length or another one: it is the same
    /// address either way. Where the address has a place, that copy is removed: two NICs
    /// answering for one address confuse the peers. An address that had no place (its NIC
    /// vanished with nowhere to move it) is adopted where it appeared, then placed as usual.
    /// Late events of mpathd's own moves are told apart by asking the kernel.
    pub(super) async fn reconcile_added_address(&mut self, ifindex: u32, cidr: IpCidr) {
        let Some(gi) = self
            .groups
            .iter()
            .position(|g| g.addresses.iter().any(|a| a.cidr.addr() == cidr.addr()))
        else {
            self.adopt_new_address(ifindex, cidr).await;
            return;
        };
        let group = &self.groups[gi];
        let Some(nic) = group
            .nics
            .iter()
            .find(|n| n.ifindex == Some(ifindex))
            .map(|n| n.name.clone())
        else {
            return;
        };
        let Some(data) = group
            .addresses
            .iter()
            .find(|a| a.cidr.addr() == cidr.addr())
        else {
            return;
        };
        let placed = data.current.clone();
        let the_placed_copy = placed.as_deref() == Some(nic.as_str()) && data.cidr == cidr;
        if the_placed_copy
            || (placed.is_none() && data.cidr != cidr)
            || self.kernel_has(ifindex, cidr).await != Some(true)
        {
            return;
        }
        match placed {
            Some(placed) => {
                tracing::warn!(
                    "data address {cidr} was added to {nic} behind mpathd's back; it lives on {placed}: removing this copy"
                );
                if let Err(e) = self.netlink.del_address(ifindex, cidr).await {
                    tracing::error!("{e}");
                }
            }
            None => {
                tracing::warn!(
                    "data address {cidr} was added to {nic} behind mpathd's back; adopting it there"
                );
                if let Some(a) = self.groups[gi]
                    .addresses
                    .iter_mut()
                    .find(|a| a.cidr == cidr)
                {
                    a.current = Some(nic);
                }
                self.move_addresses(gi).await;
            }
        }
    }

    /// An address that is no group's appeared: when someone put it on a group NIC, the group
    /// adopts it and places it (at once elsewhere, if that NIC cannot hold it).
    async fn adopt_new_address(&mut self, ifindex: u32, cidr: IpCidr) {
        match self.netlink.addresses_by_origin().await {
            Ok(found) if found.contains(&(ifindex, cidr, Origin::Other)) => {}
            Ok(_) => return,
            Err(e) => {
                tracing::error!("reading the addresses to check {cidr}: {e}");
                return;
            }
        }
        for gi in self.adopt_addresses(&[(ifindex, cidr)]) {
            self.move_addresses(gi).await;
            self.update_routes().await;
        }
    }

    /// Adopts the addresses someone put on a group NIC that are neither data nor test
    /// addresses (an administrator's, a DHCP client's): in IPMP every address of a NIC but
    /// its test address fails over, so they become data addresses of that NIC, placed and
    /// moved like the configured ones. Returns the groups that adopted one.
    pub(super) fn adopt_addresses(&mut self, placed: &[(u32, IpCidr)]) -> BTreeSet<usize> {
        let mut adopting = BTreeSet::new();
        for (ifindex, cidr) in placed {
            let known = self.groups.iter().any(|g| {
                g.addresses.iter().any(|a| a.cidr.addr() == cidr.addr())
                    || g.nics
                        .iter()
                        .any(|n| n.test_address.is_some_and(|t| t.addr() == cidr.addr()))
            });
            let owner = self.groups.iter().enumerate().find_map(|(gi, g)| {
                let nic = g.nics.iter().find(|n| n.ifindex == Some(*ifindex))?;
                Some((gi, nic.name.clone()))
            });
            let Some((gi, nic)) = owner.filter(|_| !known) else {
                continue;
            };
            let group = &mut self.groups[gi];
            tracing::info!(
                "group {} adopts {cidr} found on {nic}: it fails over like the data addresses",
                group.config.name
            );
            group.adopted.insert(*cidr);
            group.addresses.push(DataAddress {
                cidr: *cidr,
                home: nic.clone(),
                current: Some(nic),
            });
            adopting.insert(gi);
        }
        adopting
    }

    /// Whether the kernel has `cidr` on `ifindex` right now; `None` when it cannot be asked.
    async fn kernel_has(&self, ifindex: u32, cidr: IpCidr) -> Option<bool> {
        match self.netlink.addresses().await {
            Ok(addresses) => Some(addresses.contains(&(ifindex, cidr))),
            Err(e) => {
                tracing::error!("reading the addresses to check {cidr}: {e}");
                None
            }
        }
    }

    /// Deletes copies of the group's data addresses found on NICs other than the one they are
    /// placed on (left by a daemon killed in the middle of a move, or on a NIC that left the
    /// group): two NICs answering for one address confuse the peers.
    pub(super) async fn remove_extra_copies(&mut self, gi: usize, found: &[(u32, IpCidr)]) {
        let group = &self.groups[gi];
        let mut extra = Vec::new();
        for a in &group.addresses {
            let placed = a
                .current
                .as_deref()
                .and_then(|n| group.nic(n))
                .and_then(|n| n.ifindex);
            if placed.is_none() {
                continue;
            }
            extra.extend(
                found
                    .iter()
                    .filter(|(ifindex, cidr)| {
                        cidr.addr() == a.cidr.addr()
                            && (Some(*ifindex) != placed || *cidr != a.cidr)
                    })
                    .copied(),
            );
        }
        for (ifindex, cidr) in extra {
            tracing::warn!("removing a second copy of data address {cidr} (ifindex {ifindex})");
            if let Err(e) = self.netlink.del_address(ifindex, cidr).await {
                tracing::error!("{e}");
            }
        }
    }

    /// Rewrites the group's bucket table for its usable NICs, moving as few buckets as
    /// possible, and tells the egress program which NICs the kernel's routes spread over
    /// (with `spread = "routes"`: the usable ones), so that it leaves their packets alone and
    /// moves only what still leaves an unusable NIC.
    pub(super) fn write_table(&mut self, gi: usize) {
        let group = &self.groups[gi];
        let usable: Vec<u32> = group
            .fsm
            .usable_interfaces()
            .into_iter()
            .filter_map(|name| group.nic(name).and_then(|n| n.ifindex))
            .collect();
        let macs: BTreeMap<u32, [u8; 6]> = group
            .nics
            .iter()
            .filter_map(|n| n.ifindex.map(|i| (i, n.mac)))
            .collect();
        let result = self.datapath.maps.table(group.id).and_then(|current| {
            let table = spread::rebalance(&current, &usable);
            self.datapath.maps.write_table(group.id, &table, |i| {
                macs.get(&i).copied().unwrap_or_default()
            })
        });
        match result {
            Ok(moved) => tracing::debug!(
                "group {}: {moved} buckets moved, {} usable NICs",
                group.config.name,
                usable.len()
            ),
            Err(e) => tracing::error!("group {}: bucket table: {e}", group.config.name),
        }
        let routes_spread = group.config.spread == SpreadMode::Routes;
        for nic in &group.nics {
            let Some(ifindex) = nic.ifindex else { continue };
            let routed = routes_spread && usable.contains(&ifindex);
            if let Err(e) = self.datapath.maps.set_routed(ifindex, routed) {
                tracing::error!("{}: {e}", nic.name);
            }
        }
    }

    /// Tells the peers that `addr` is reached at `mac` on `nic` now: once at once, then
    /// repeated (an earlier announcement of the address still running is replaced).
    pub(super) fn announce(&mut self, ifindex: u32, mac: [u8; 6], addr: IpAddr, nic: &str) {
        let announcement = Announcement {
            ifindex,
            mac,
            addr,
            remaining: match addr {
                IpAddr::V4(_) => announce::ARP_ANNOUNCEMENTS,
                IpAddr::V6(_) => announce::NA_ANNOUNCEMENTS,
            } - 1,
            next: Instant::now() + announce::ANNOUNCE_INTERVAL,
        };
        if let Err(e) = announcement.send() {
            tracing::warn!("announcing {addr} on {nic}: {e}");
        }
        self.announcements.retain(|a| a.addr != addr);
        if announcement.remaining > 0 {
            self.announcements.push(announcement);
        }
    }

    /// Puts every data address where the placement plan wants it: adds it on the new NIC
    /// first and only then removes it from the old one, so it is never on no NIC; tells the
    /// peers at once.
    pub(super) async fn move_addresses(&mut self, gi: usize) {
        let group = &self.groups[gi];
        let plan = match failover::plan(&group.fsm.nic_roles(), &group.addresses) {
            Ok(plan) => plan,
            Err(e) => {
                tracing::error!("group {}: {e}", group.config.name);
                return;
            }
        };
        let mut done = BTreeSet::new();
        for m in &plan.moves {
            let group = &self.groups[gi];
            let Some(to) = group.nic(&m.to).and_then(|n| n.ifindex.map(|i| (i, n.mac))) else {
                continue;
            };
            let options = AddressOptions {
                nodad: true,
                mpathds: !group.adopted.contains(&m.addr),
                ..Default::default()
            };
            if let Err(e) = self.netlink.add_address(to.0, m.addr, options).await {
                tracing::error!("cannot move {} to {}: {e}", m.addr, m.to);
                continue;
            }
            if let Some(from) = m
                .from
                .as_deref()
                .and_then(|f| group.nic(f))
                .and_then(|n| n.ifindex)
                && let Err(e) = self.netlink.del_address(from, m.addr).await
            {
                tracing::error!("cannot remove {} from its old NIC: {e}", m.addr);
            }
            self.announce(to.0, to.1, m.addr.addr(), &m.to);
            done.insert(m.addr);
            let group = &mut self.groups[gi];
            if let Some(a) = group.addresses.iter_mut().find(|a| a.cidr == m.addr) {
                a.current = Some(m.to.clone());
            }
        }
        for transfer in plan.transfers() {
            if transfer.addresses.iter().all(|a| done.contains(a)) {
                tracing::info!("{transfer}");
                self.metrics
                    .transfer(&self.groups[gi].config.name, &transfer);
            }
        }
    }
}
