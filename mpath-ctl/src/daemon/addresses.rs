//! Data addresses and bucket tables: placing, moving, announcing, and carrying out what
//! [`crate::core::reconcile`] decides about addresses the kernel reports.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Instant,
};

use crate::{
    config::SpreadMode,
    core::failover::{self, DataAddress, MoveKind},
    core::identity::GroupId,
    core::reconcile::{self, Added, Removed},
    core::spread,
    core::state::Event,
    core::target::AddressFamily,
    daemon::{Daemon, announcer::Announcement, host_io::HostIo, is_link_local, reconcile::Dirty},
    net::address::IpCidr,
    net::netlink::{AddressOptions, Origin},
};

/// What the kernel says of one address right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KernelAddress {
    Has(Origin),
    Lacks,
    /// It could not be asked (logged): nothing is done on a guess.
    Unknown,
}

impl<H: HostIo> Daemon<H> {
    /// The kernel reports a new address.
    pub(super) async fn address_added(&mut self, ifindex: u32, cidr: IpCidr) {
        if !self.addresses.contains(&(ifindex, cidr)) {
            self.addresses.push((ifindex, cidr));
        }
        if is_link_local(cidr.addr()) {
            self.start_v6(ifindex, cidr);
        }
        let verdict = reconcile::added(&self.groups.holdings(), ifindex, cidr);
        if verdict == Added::Nothing {
            return;
        }
        // mpathd's own moves are reported late, after any later move back: only an address
        // the kernel still has is acted on, and only someone else's is adopted.
        let confirmed = match (&verdict, self.kernel_lookup(ifindex, cidr).await) {
            (Added::Adopt { .. }, KernelAddress::Has(origin)) => origin == Origin::Other,
            (_, KernelAddress::Has(_)) => true,
            (_, KernelAddress::Lacks | KernelAddress::Unknown) => false,
        };
        if !confirmed {
            return;
        }
        match verdict {
            Added::Nothing => {}
            Added::RemoveCopy { nic, placed_on } => {
                tracing::warn!(
                    interface = %nic,
                    "data address {cidr} was added to {nic} behind mpathd's back; it lives on {placed_on}: removing this copy"
                );
                self.delete_address(ifindex, cidr).await;
            }
            Added::PlaceHere { group, nic } => {
                let id = group;
                let group = &mut self.groups[id];
                let name = group.fsm.nic_name(nic);
                tracing::warn!(
                    interface = name,
                    "data address {cidr} was added to {name} behind mpathd's back; adopting it there"
                );
                if let Some(a) = group.address_mut(cidr) {
                    a.current = Some(nic);
                }
                group.dirty.mark(Dirty::ADDRESSES);
            }
            Added::Adopt { .. } => {
                for id in self.adopt_addresses(&[(ifindex, cidr)]) {
                    self.groups[id].dirty.mark(Dirty::ADDRESSES);
                    self.routing.changed(self.host.now());
                }
            }
        }
    }

    /// The kernel reports an address gone.
    pub(super) async fn address_removed(&mut self, ifindex: u32, cidr: IpCidr, now: Instant) {
        self.addresses.retain(|a| *a != (ifindex, cidr));
        // The kernel deleted the routes that named an IPv4 address gone from the host their
        // source, without a word.
        if cidr.addr().is_ipv4() && !self.addresses.iter().any(|(_, c)| c.addr() == cidr.addr()) {
            self.routing.source_gone(cidr.addr(), now);
        }
        if is_link_local(cidr.addr())
            && let Some(at) = self.stop_v6(ifindex, cidr)
        {
            // Without a prober the family has no targets: it no longer holds the NIC up.
            let event = Event::Targets {
                nic: at.nic,
                family: AddressFamily::Inet6,
                available: false,
            };
            self.handle(at.group, event, now);
        }
        let verdict = reconcile::removed(&self.groups.holdings(), ifindex, cidr);
        // Late events of a NIC that left and came back, or of mpathd's own moves, may arrive
        // after the address was added again: only an address really gone is acted on.
        if verdict == Removed::Nothing
            || self.kernel_lookup(ifindex, cidr).await != KernelAddress::Lacks
            || !self.link_exists(ifindex).await
        {
            return;
        }
        match verdict {
            Removed::Nothing => {}
            Removed::Restore { group, nic } => {
                let id = group;
                let group = &mut self.groups[id];
                let name = group.fsm.nic_name(nic);
                tracing::warn!(
                    interface = name,
                    "data address {cidr} was removed from {name} behind mpathd's back; restoring it"
                );
                if let Some(a) = group.address_mut(cidr) {
                    a.current = None;
                }
                group.dirty.mark(Dirty::ADDRESSES);
            }
            Removed::Forget { group } => {
                let id = group;
                let group = &mut self.groups[id];
                // Someone else's address, and now someone removed it: it is theirs to remove.
                tracing::info!(
                    "{cidr} was removed from its NIC; group {} forgets it (adopted, not configured)",
                    group.name()
                );
                group.adopted.remove(&cidr);
                group.addresses.retain(|a| a.cidr != cidr);
                group.dirty.sources = true;
            }
            Removed::RestoreTest { nic, test } => {
                tracing::warn!(
                    interface = %nic,
                    "test address {cidr} was removed from {nic} behind mpathd's back; restoring it"
                );
                self.restore_test_address(&nic, ifindex, test).await
            }
        }
    }

    /// Adopts the addresses someone put on a group NIC that are neither data nor test
    /// addresses (an administrator's, a DHCP client's): in IPMP every address of a NIC but
    /// its test address fails over, so they become data addresses of that NIC, placed and
    /// moved like the configured ones. Returns the groups that adopted one.
    pub(super) fn adopt_addresses(&mut self, others: &[(u32, IpCidr)]) -> BTreeSet<GroupId> {
        let mut adopting = BTreeSet::new();
        for adoption in reconcile::adoptable(&self.groups.holdings(), others) {
            let id = adoption.group;
            let group = &mut self.groups[id];
            tracing::info!(
                "group {} adopts {} found on {}: it fails over like the data addresses",
                group.name(),
                adoption.cidr,
                group.fsm.nic_name(adoption.nic)
            );
            group.adopted.insert(adoption.cidr);
            group.addresses.push(DataAddress {
                cidr: adoption.cidr,
                home: adoption.nic,
                current: Some(adoption.nic),
            });
            adopting.insert(id);
        }
        adopting
    }

    /// Whether the kernel has `cidr` on `ifindex` right now, and who made it.
    async fn kernel_lookup(&self, ifindex: u32, cidr: IpCidr) -> KernelAddress {
        match self.host.addresses_with_origin().await {
            Ok(found) => found
                .into_iter()
                .find(|(i, c, _)| *i == ifindex && *c == cidr)
                .map_or(KernelAddress::Lacks, |(_, _, origin)| {
                    KernelAddress::Has(origin)
                }),
            Err(e) => {
                tracing::error!("reading the addresses to check {cidr}: {e}");
                KernelAddress::Unknown
            }
        }
    }

    /// Whether the kernel still has the link `ifindex`: a NIC being deleted loses its
    /// addresses first, which is no tampering (its removal follows). When it cannot be asked
    /// (logged), the link is taken to be there.
    async fn link_exists(&self, ifindex: u32) -> bool {
        match self.host.links().await {
            Ok(links) => links.iter().any(|l| l.ifindex == ifindex),
            Err(e) => {
                tracing::error!("reading the links to check ifindex {ifindex}: {e}");
                true
            }
        }
    }

    /// Deletes an address, logging a failure.
    pub(super) async fn delete_address(&self, ifindex: u32, cidr: IpCidr) {
        if let Err(e) = self.host.del_address(ifindex, cidr).await {
            tracing::error!("{e}");
        }
    }

    /// Rewrites the group's bucket table for its usable NICs, moving as few buckets as
    /// possible, and tells the egress program which NICs the kernel's routes spread over
    /// (with `spread = "routes"`: the usable ones), so that it leaves their packets alone and
    /// moves only what still leaves an unusable NIC.
    pub(super) fn write_table(&mut self, id: GroupId) {
        let group = &self.groups[id];
        let usable = group.usable_ifindexes();
        let macs: BTreeMap<u32, [u8; 6]> = group
            .nics
            .iter()
            .filter_map(|n| n.ifindex.map(|i| (i, n.mac)))
            .collect();
        let result = self.host.table(group.id).and_then(|current| {
            let table = spread::rebalance(&current, &usable);
            self.host.write_table(group.id, &table, |i| {
                macs.get(&i).copied().unwrap_or_default()
            })
        });
        match result {
            Ok(moved) => tracing::debug!(
                "group {}: {moved} buckets moved, {} usable NICs",
                group.name(),
                usable.len()
            ),
            Err(e) => tracing::error!("group {}: bucket table: {e}", group.name()),
        }
        let routes_spread = group.config.spread == SpreadMode::Routes;
        for nic in group.nics.iter().filter(|n| n.attached()) {
            let Some(ifindex) = nic.ifindex else { continue };
            let routed = routes_spread && usable.contains(&ifindex);
            if let Err(e) = self.host.set_routed(ifindex, routed) {
                tracing::error!(interface = %nic.name, "{}: {e}", nic.name);
            }
        }
    }

    /// Tells the peers where an address is reached now, at once and repeated later.
    pub(super) fn announce(&mut self, announcement: Announcement, nic: &str) {
        let now = self.host.now();
        let announcement = self.announcer.announce(announcement, now);
        if let Err(e) = self.host.announce(&announcement) {
            tracing::warn!(interface = %nic, "announcing {} on {nic}: {e}", announcement.addr);
        }
    }

    /// Puts every data address where the placement plan wants it: adds it on the new NIC
    /// first and only then removes it from the old one, so it is never on no NIC; tells the
    /// peers at once.
    pub(super) async fn move_addresses(&mut self, id: GroupId) {
        let group = &self.groups[id];
        let plan = match failover::plan(&group.fsm.nic_roles(), &group.addresses) {
            Ok(plan) => plan,
            Err(e) => {
                tracing::error!("group {}: {e}", group.name());
                return;
            }
        };
        let mut done = BTreeSet::new();
        for m in &plan.moves {
            let group = &self.groups[id];
            let Some((ifindex, mac, name)) = group
                .nic(m.to)
                .and_then(|n| n.ifindex.map(|i| (i, n.mac, n.name.clone())))
            else {
                continue;
            };
            let options = AddressOptions {
                nodad: true,
                mpathds: !group.adopted.contains(&m.addr),
                ..Default::default()
            };
            if let Err(e) = self.host.add_address(ifindex, m.addr, options).await {
                tracing::error!("cannot move {} to {name}: {e}", m.addr);
                continue;
            }
            if let Some(from) = m.from.and_then(|f| group.ifindex_in(f))
                && let Err(e) = self.host.del_address(from, m.addr).await
            {
                tracing::error!("cannot remove {} from its old NIC: {e}", m.addr);
            }
            let announcement = Announcement {
                ifindex,
                mac,
                addr: m.addr.addr(),
            };
            self.announce(announcement, &name);
            done.insert(m.addr);
            if let Some(a) = self.groups[id].address_mut(m.addr) {
                a.current = Some(m.to);
            }
        }
        let group = &mut self.groups[id];
        let mut transfers = plan.transfers();
        for transfer in &mut transfers {
            if transfer.kind == MoveKind::Restore
                && transfer.addresses.iter().all(|a| !group.placed.contains(a))
            {
                transfer.kind = MoveKind::Place;
            }
        }
        group.placed.extend(done.iter().copied());
        for transfer in transfers {
            if transfer.addresses.iter().all(|a| done.contains(a)) {
                let group = &self.groups[id];
                let nic = group.fsm.nic_name(transfer.interface());
                tracing::info!(
                    group = group.name(),
                    interface = nic,
                    "{}",
                    transfer.log_line(|slot| group.fsm.nic_name(slot))
                );
                self.metrics.transfer(group.name(), &transfer, nic);
            }
        }
    }
}
