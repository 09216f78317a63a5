//! One reconcile pass per turn of the event loop: events only mark what of a group's host
//! side they left out of date ([`Dirty`]), and [`Daemon::reconcile`] brings that in line once,
//! in one order, at the end of the turn.

use crate::{
    core::identity::GroupId,
    daemon::{Daemon, host_io::HostIo},
};

/// What of a group's host side is out of date; the fields are in the order
/// [`Daemon::reconcile`] brings them in line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Dirty {
    /// Its data addresses are to be put where the placement plan wants them.
    pub addresses: bool,
    /// Its bucket table and routed flags are to follow its usable NICs.
    pub table: bool,
    /// The multicast memberships of its unusable NICs are to follow them.
    pub memberships: bool,
    /// Its nexthop groups are to be re-formed over the NICs that serve now (the usable ones
    /// with carrier).
    pub routes: bool,
    /// The source hook is to be given its placed data addresses.
    pub sources: bool,
}

impl Dirty {
    /// The usable NICs changed, or the kernel may disagree with mpathd: everything follows.
    pub(super) const ALL: Dirty = Dirty {
        addresses: true,
        table: true,
        memberships: true,
        routes: true,
        sources: true,
    };

    /// Data addresses to place anew, and the sources that list them.
    pub(super) const ADDRESSES: Dirty = Dirty {
        addresses: true,
        table: false,
        memberships: false,
        routes: false,
        sources: true,
    };

    pub(super) fn mark(&mut self, also: Dirty) {
        self.addresses |= also.addresses;
        self.table |= also.table;
        self.memberships |= also.memberships;
        self.routes |= also.routes;
        self.sources |= also.sources;
    }
}

impl<H: HostIo> Daemon<H> {
    /// Brings in line what this turn's events marked out of date, once and in this order: the
    /// data addresses, the bucket tables and routed flags, the multicast memberships, the
    /// routes, the source hook's addresses.
    ///
    /// NICs leave the routes before their data addresses leave them: through a NIC holding
    /// only its test address (a /32) the kernel gives new flows that address as their source,
    /// which the egress program keeps on that NIC, failed or not. So when NICs leave, the
    /// nexthop groups are first re-formed without them and without the NICs that join, and
    /// the joining NICs come in with the routes' turn, after their addresses came. Addresses
    /// come first after that: all inbound traffic to a moved address waits for them, while
    /// only the outbound flows of NICs joining the routes wait for the rest. Each re-form is
    /// one message per nexthop group and never waits for route planning.
    pub(super) async fn reconcile(&mut self) {
        let dirty: Vec<(GroupId, Dirty)> = self
            .groups
            .iter_mut()
            .map(|g| (g.id, std::mem::take(&mut g.dirty)))
            .collect();
        let marked = |pick: fn(&Dirty) -> bool| -> Vec<GroupId> {
            dirty
                .iter()
                .filter(|(_, d)| pick(d))
                .map(|(id, _)| *id)
                .collect()
        };
        let now = self.host.now();
        let regrouped = marked(|d| d.routes);
        let mut leaving = false;
        for &id in &regrouped {
            let group = &mut self.groups[id];
            let usable = group.usable_names();
            leaving |= group.serving.iter().any(|n| !usable.contains(n));
            group.joining = usable
                .into_iter()
                .filter(|n| !group.serving.contains(n))
                .collect();
        }
        if leaving {
            self.reform_groups(now).await;
        }
        for id in marked(|d| d.addresses) {
            self.move_addresses(id).await;
            self.remove_left_behind(id).await;
        }
        for id in marked(|d| d.table) {
            self.write_table(id);
        }
        for id in marked(|d| d.memberships) {
            self.follow_memberships(id);
        }
        if !regrouped.is_empty() {
            for &id in &regrouped {
                let group = &mut self.groups[id];
                group.joining.clear();
                group.serving = group.usable_names();
            }
            self.reform_groups(now).await;
        }
        for id in marked(|d| d.sources) {
            self.update_sources(id);
        }
    }

    /// Takes the data addresses off the NICs that left the group, now that they are on their
    /// new NIC.
    async fn remove_left_behind(&mut self, id: GroupId) {
        for (ifindex, cidr) in std::mem::take(&mut self.groups[id].left_behind) {
            self.delete_address(ifindex, cidr).await;
        }
    }
}
