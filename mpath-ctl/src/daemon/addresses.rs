//! Data addresses and bucket tables: placing, moving, announcing, and carrying out what
//! [`crate::core::reconcile`] decides about addresses the kernel reports.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use crate::{
    config::SpreadMode,
    core::failover::{self, DataAddress, MoveKind},
    core::identity::GroupId,
    core::reconcile::{self, Added, Removed},
    core::routes::MainRoute,
    core::spread,
    core::state::Event,
    core::target::AddressFamily,
    daemon::{Daemon, announcer::Announcement, host_io::HostIo, is_link_local, reconcile::Dirty},
    net::address::IpCidr,
    net::netlink::{AddressOptions, NetlinkError, Origin},
};

/// How long after warning that IPv6 is disabled on a NIC mpathd keeps quiet about it: one
/// activation of a NetworkManager profile disables it twice.
const IPV6_OFF_WARNING_QUIET: Duration = Duration::from_secs(10);

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
        if cidr.addr().is_ipv6() && self.ipv6_off.remove(&ifindex) {
            self.ipv6_back(ifindex);
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
                    group = group.name(),
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
            let nic = group.fsm.nic_name(adoption.nic);
            tracing::info!(
                group = group.name(),
                interface = nic,
                "group {} adopts {} found on {nic}: it fails over like the data addresses",
                group.name(),
                adoption.cidr,
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

    /// Whether `error` is a group NIC refusing an IPv6 address because IPv6 is disabled on
    /// it. That is no fault to report as an error: NetworkManager disables IPv6 on a NIC for
    /// a moment whenever it activates a profile there (`nmcli connection up`), which also
    /// deletes the NIC's IPv6 addresses. It is warned of once, and the addresses go back when
    /// IPv6 does ([`Daemon::ipv6_back`]).
    fn note_ipv6_disabled(&mut self, ifindex: u32, nic: &str, error: &NetlinkError) -> bool {
        if !error.ipv6_disabled() {
            return false;
        }
        let now = self.host.now();
        let warned_lately = self
            .ipv6_off_warned
            .get(&ifindex)
            .is_some_and(|at| now.saturating_duration_since(*at) < IPV6_OFF_WARNING_QUIET);
        if self.ipv6_off.insert(ifindex) && !warned_lately {
            self.ipv6_off_warned.insert(ifindex, now);
            tracing::warn!(
                "IPv6 is disabled on {nic} (its disable_ipv6 is set, as NetworkManager does \
                 for a moment when it activates a profile on the NIC, at `nmcli connection \
                 up` for one): its IPv6 addresses go back as soon as IPv6 is enabled again"
            );
        } else {
            tracing::debug!("IPv6 is still disabled on {nic}: {error}");
        }
        true
    }

    /// An IPv6 address showed up on a NIC that refused IPv6 addresses: IPv6 is enabled again
    /// there, and the data addresses placed on it go back (test addresses are IPv4) in this
    /// turn's reconcile pass.
    fn ipv6_back(&mut self, ifindex: u32) {
        let Some(at) = self.groups.nic_at(ifindex) else {
            return;
        };
        tracing::info!(
            "IPv6 is enabled again on {}: its IPv6 addresses go back",
            self.groups.nic(at).name
        );
        self.groups[at.group].dirty.mark(Dirty::ADDRESSES);
    }

    /// Makes again the kernel's route to the prefix of `address` on `oif`, which someone
    /// deleted while the address stayed: without it, traffic to the prefix would not leave
    /// through that NIC, and mpathd's table would not serve the prefix if no other NIC of the
    /// group has an address in it.
    pub(super) async fn restore_prefix_route(
        &mut self,
        oif: u32,
        address: IpCidr,
        route: &MainRoute,
    ) {
        // Disabling IPv6 on a NIC deletes its routes first and its addresses after: only an
        // address the kernel still has is a route lost alone.
        if !matches!(
            self.kernel_lookup(oif, address).await,
            KernelAddress::Has(_)
        ) {
            return;
        }
        match self.host.restore_prefix_route(oif, route).await {
            Ok(true) => {
                let nic = self.groups.nic_at(oif).map_or_else(
                    || format!("ifindex {oif}"),
                    |at| self.groups.nic(at).name.clone(),
                );
                tracing::warn!(
                    interface = %nic,
                    "the route to {} through {nic} that the kernel made for data address \
                     {address} was deleted behind mpathd's back; made it again",
                    route.destination
                );
            }
            // The kernel made it again with the address (mpathd put it back after its
            // deletion took the route).
            Ok(false) => {}
            // IPv6 went meanwhile: the kernel makes the route with the address when it is put
            // back.
            Err(e) if e.ipv6_disabled() => tracing::debug!("{e}"),
            Err(e) => tracing::error!("{e}"),
        }
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
            Err(e) => tracing::error!(
                group = group.name(),
                "group {}: bucket table: {e}",
                group.name()
            ),
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
                tracing::error!(group = group.name(), "group {}: {e}", group.name());
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
                if !self.note_ipv6_disabled(ifindex, &name, &e) {
                    tracing::error!("cannot move {} to {name}: {e}", m.addr);
                }
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
