//! Multicast memberships that follow a failover: carrying out what
//! [`crate::core::multicast::wanted`] decides, with the sockets of [`Joins`].

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use crate::{
    core::identity::{GroupId, NicSlot},
    core::multicast::{self, Change, Followed, Memberships},
    core::state::Role,
    daemon::{Daemon, group::GroupRuntime, host_io::HostIo},
    net::multicast::ALL_HOSTS_V4,
};

/// How often the memberships of unusable NICs are read again, so that a group joined or left
/// there later follows too.
pub(super) const RECHECK: Duration = Duration::from_secs(1);

/// When the memberships are looked at next, and the joins the kernel refused.
pub(super) struct Following {
    pub due: Instant,
    /// Joins the kernel refused, tried again at every look but logged once.
    refused: BTreeSet<(u32, IpAddr)>,
}

impl Following {
    pub(super) fn new(now: Instant) -> Self {
        Following {
            due: now + RECHECK,
            refused: BTreeSet::new(),
        }
    }
}

impl<H: HostIo> Daemon<H> {
    /// Marks for a look again at the memberships of the groups that have an unusable NIC or
    /// hold joins, once [`RECHECK`] has passed.
    pub(super) fn recheck_memberships(&mut self, now: Instant) {
        if now < self.following.due {
            return;
        }
        self.following.due = now + RECHECK;
        for group in self.groups.iter_mut() {
            let unusable = group
                .fsm
                .nic_roles()
                .iter()
                .any(|r| r.role == Role::Unusable);
            if unusable || !group.followed.is_empty() {
                group.dirty.memberships = true;
            }
        }
    }

    /// Joins the groups of the group's unusable NICs on the NICs that took over, and leaves
    /// the ones no longer wanted (the NIC is back, or the application left the group).
    pub(super) fn follow_memberships(&mut self, id: GroupId) {
        let found = match self.host.memberships() {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!("multicast memberships cannot follow the failover: {e}");
                return;
            }
        };
        let group = &self.groups[id];
        let by_nic: Memberships = group
            .nics
            .iter()
            .filter_map(|n| Some((n.name.clone(), found.get(&n.ifindex?)?.clone())))
            .collect();
        let wanted = multicast::wanted(
            &group.fsm.nic_roles(),
            &group.addresses,
            &by_nic,
            &group.followed,
        );
        if wanted == group.followed {
            return;
        }
        let same_join = |a: &Followed, b: &Followed| a.on == b.on && a.group == b.group;
        let mut left = Vec::new();
        for f in group.followed.difference(&wanted) {
            if wanted.iter().any(|w| same_join(w, f)) {
                continue;
            }
            let Some(ifindex) = group.ifindex_of(&f.on) else {
                continue;
            };
            match self.host.leave(ifindex, f.group) {
                Ok(()) => left.push(f.clone()),
                Err(e) => tracing::error!(
                    group = group.name(),
                    interface = f.on,
                    "{}",
                    e.on_nic(&f.on)
                ),
            }
        }
        let mut joined = Vec::new();
        let mut held = wanted.clone();
        for f in wanted.difference(&group.followed) {
            if group.followed.iter().any(|h| same_join(h, f)) {
                continue;
            }
            let Some(ifindex) = group.ifindex_of(&f.on) else {
                held.remove(f);
                continue;
            };
            let refused = &mut self.following.refused;
            match self.host.join(ifindex, f.group) {
                Ok(()) => {
                    refused.remove(&(ifindex, f.group));
                    joined.push(f.clone());
                }
                Err(e) => {
                    if refused.insert((ifindex, f.group)) {
                        tracing::error!(
                            group = group.name(),
                            interface = f.on,
                            "{}: {} of {} not followed",
                            e.on_nic(&f.on),
                            f.group,
                            f.from
                        );
                    }
                    held.remove(f);
                }
            }
        }
        let changes = [(left, Change::Left), (joined, Change::Joined)];
        for (followed, change) in changes {
            for (on, from, line) in multicast::summaries(&followed, change) {
                tracing::info!(group = group.name(), interface = %on, stands_in_for = %from, "{line}");
            }
        }
        self.groups[id].followed = held;
    }

    /// Reports the IPv4 groups of `nic`, back in use, to the switch: a snooping switch forgot
    /// them if the NIC's link went, and Linux reports them again only when a query asks (up
    /// to 125 s later), where it re-reports IPv6 groups on its own. Called before the stand-in
    /// joins on other NICs are left, so a group is never without a port.
    pub(super) fn report_memberships(&mut self, id: GroupId, slot: NicSlot) {
        let group = &self.groups[id];
        let Some((nic, Some(ifindex))) = group.nic(slot).map(|n| (n.name.as_str(), n.ifindex))
        else {
            return;
        };
        let joined: Vec<Ipv4Addr> = match self.host.memberships() {
            Ok(mut found) => found
                .remove(&ifindex)
                .unwrap_or_default()
                .into_keys()
                .filter_map(|g| match g {
                    IpAddr::V4(v4) if v4 != ALL_HOSTS_V4 => Some(v4),
                    _ => None,
                })
                .collect(),
            Err(e) => {
                tracing::warn!(interface = %nic, "the multicast groups of {nic} cannot be reported: {e}");
                return;
            }
        };
        if joined.is_empty() {
            return;
        }
        match self.host.report_v4(ifindex, &joined) {
            Ok(version) => tracing::info!(
                group = group.name(),
                interface = nic,
                "{} IPv4 multicast groups of {nic} reported to the switch ({version:?}): {}",
                joined.len(),
                multicast::a_few(&joined)
            ),
            Err(e) => tracing::warn!(group = group.name(), interface = nic, "{}", e.on_nic(nic)),
        }
    }

    /// Leaves every group a group runtime that goes holds.
    pub(super) fn leave_followed(&mut self, group: &GroupRuntime) {
        for f in &group.followed {
            if let Some(ifindex) = group.ifindex_of(&f.on)
                && let Err(e) = self.host.leave(ifindex, f.group)
            {
                tracing::warn!(interface = f.on, "{}", e.on_nic(&f.on));
            }
        }
    }
}
