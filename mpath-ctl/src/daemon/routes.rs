//! Group routes (see [`crate::core::routes`]): reading what mpathd has in the kernel, and
//! carrying out the changes that bring it to the plan.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    time::{Duration, Instant},
};

use crate::{
    config::RouteConfig,
    core::identity::GroupId,
    core::routes::{
        self, ChangeQueue, GroupKey, GroupRouting, IdBook, LinkRoute, MainTable, NexthopKey,
        NexthopObject, NicRouting, Plan, RouteChange, RouteInputs, RouteState, TableChange,
    },
    core::target::AddressFamily,
    daemon::{Daemon, host_io::HostIo, logging::with_causes},
    net::address::IpCidr,
    net::netlink::{MAIN_TABLE, MPATHD_PROTOCOL, RouteNotice},
    net::nexthop::{Nexthop, NexthopError, NexthopKind},
};

/// Buckets of each resilient nexthop group: a NIC that leaves takes its share of them along,
/// and with 256 the shares of up to 16 NICs stay within a few percent of even.
const NEXTHOP_BUCKETS: u16 = 256;

/// How long a bucket must carry no packet before it may go back to a NIC that returned: long
/// enough that a flow is not moved in the middle of a burst, short enough that a repaired
/// NIC soon carries its share again.
const IDLE_TIMER: Duration = Duration::from_secs(3);

/// How long changes are gathered before the routes are planned again: a burst of route
/// changes (a routing daemon filling the table) costs one plan.
const PLAN_DELAY: Duration = Duration::from_millis(20);

/// How soon mpathd reads its routes again and plans anew after the kernel refused a change
/// or a read failed.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// How many destinations one turn of the event loop plans of a plan of many (the whole
/// table, a large change): a few milliseconds of planning.
const DESTINATIONS_PER_TURN: usize = 4096;

/// How many route changes one turn of the event loop carries out: a few milliseconds of
/// netlink requests, so that link events, probes, signals and the control socket never wait
/// long behind a table of any size.
const CHANGES_PER_TURN: usize = 64;

/// What mpathd knows of the routing: the main table, what it has in the kernel, and the
/// changes still to make.
#[derive(Default)]
pub(super) struct Routing {
    /// The main table, kept current from netlink: where probe targets and group routes come
    /// from.
    pub main: MainTable,
    /// Ids of mpathd's nexthop objects.
    pub ids: IdBook,
    /// Group NICs removed since the routes were last planned, by ifindex and group: their
    /// routes went with them.
    pub departed: Vec<(u32, String)>,
    /// mpathd's nexthop objects and table as the kernel has them: read at start, on reload
    /// and after lost notifications (`None` until then), then kept by mpathd's own changes
    /// and the notifications of others'.
    installed: Option<RouteState>,
    /// The last plan, whose nexthop groups a failover re-forms at once.
    plan: Plan,
    /// The changes of the last plans not yet made, a few per turn of the event loop.
    pending: ChangeQueue,
    /// A plan of many destinations under way, a few thousand a turn.
    sweep: Option<Sweep>,
    /// The next plan is of the whole table: the groups changed (a NIC's usability, the
    /// places of their addresses, the routes they hold) or what mpathd has in the kernel
    /// was read anew. Otherwise only the main table's changed destinations are planned again.
    whole: bool,
    /// The groups' usable NICs changed: the whole table is planned again only if what its
    /// routes depend on changed too ([`GroupRouting::route_inputs`]); at a million routes
    /// that takes seconds of CPU, and the next failover's probes would wait behind it.
    regrouped: bool,
    /// What the routes depended on when the whole table was last planned.
    inputs: Vec<RouteInputs>,
    /// Nexthops the kernel refused since the last plan: left out of their groups, and
    /// a group refused is left out of the routes.
    failed: BTreeSet<u32>,
    /// When to plan again.
    pub due: Option<Instant>,
    /// NICs taken down since the last plan, whose IPv4 routes the kernel deleted without a
    /// notification: the main table's routes through them are read again.
    reread: BTreeSet<u32>,
    /// Destinations whose routes in mpathd's table someone else changed: planned again, and
    /// what the kernel has there compared with the plan.
    repair: BTreeSet<IpCidr>,
    /// The rules changed: mpathd's is put back if it went.
    rules_changed: bool,
    /// The last error of route work, logged once however often it recurs.
    last_error: Option<String>,
    /// Memory is given back once route work is done: after the plan that follows a read of
    /// the kernel's tables (start, reload, resync), and after the main table shrank. Not
    /// after a failover's plan, which frees little: a trim walks the whole heap in the event
    /// loop, and probes would wait for it.
    release_due: bool,
    /// When to give it back: once route work and notifications have been quiet a while, as
    /// the notifications of mpathd's own changes are read after the changes are made.
    pub release_at: Option<Instant>,
    /// The heap's free memory after the last trim, see [`release_memory`].
    pub free_after_trim: usize,
    /// mpathd's [`LinkRoute`]s as the kernel has them (`None`: to be read).
    links: Option<BTreeSet<LinkRoute>>,
    /// The groups and families whose default route mpathd serves, as last planned.
    defaults: BTreeSet<(String, AddressFamily)>,
    /// The last refusal of a link route, logged once however often it recurs.
    link_error: Option<String>,
    /// The most routes the main table held since memory was last given back: a feed
    /// withdrawn a few routes at a time frees as much as a flush.
    peak_routes: usize,
}

impl Routing {
    /// Something about the groups changed: the whole table is planned again shortly, once
    /// for a whole burst.
    pub(super) fn changed(&mut self, now: Instant) {
        self.whole = true;
        self.main_changed(now);
    }

    /// The groups' usable NICs changed (a failover, a repair): their nexthop groups are
    /// re-formed with the next plan, and the whole table planned again if need be.
    pub(super) fn regrouped(&mut self, now: Instant) {
        self.regrouped = true;
        self.main_changed(now);
    }

    /// The main table changed: its changed destinations are planned again shortly, once for
    /// a whole burst (a routing daemon filling the table).
    pub(super) fn main_changed(&mut self, now: Instant) {
        self.due.get_or_insert(now + PLAN_DELAY);
    }

    /// The routers and on-link host routes of the main table, as probe target selection
    /// sees them.
    pub(super) fn entries(&self) -> Vec<crate::core::target::RouteEntry> {
        self.main.probe_entries().collect()
    }

    /// Routes of `main` followed, and of mpathd's table (`None` until it was read): counts
    /// the maps keep, so that a scrape at a million routes costs nothing.
    pub(super) fn sizes(&self) -> (usize, Option<usize>) {
        let table = self
            .installed
            .as_ref()
            .map(|installed| installed.routes.len());
        (self.main.len(), table)
    }

    /// Whether route work waits: changes to make, or a plan under way.
    pub(super) fn has_pending(&self) -> bool {
        !self.pending.is_empty() || self.sweep.is_some()
    }

    /// What mpathd has in the kernel (its link routes too) is to be read again before the
    /// next plan.
    pub(super) fn reread_installed(&mut self) {
        self.installed = None;
        self.links = None;
    }

    /// Route work failed: logged (once while it fails the same way), and mpathd reads what
    /// it has in the kernel and plans again a little later.
    fn failed(&mut self, error: String, now: Instant) {
        if self.last_error.as_ref() != Some(&error) {
            tracing::error!("{error}");
            self.last_error = Some(error);
        } else {
            tracing::debug!("{error}");
        }
        self.installed = None;
        self.due = Some(
            self.due
                .map_or(now + RETRY_DELAY, |due| due.max(now + RETRY_DELAY)),
        );
    }

    /// NIC `oif` lost its link (carrier, taken down, removed): the kernel deleted mpathd's
    /// nexthops through it, without a word, and with a group left empty the routes through
    /// it: those are all planned again.
    pub(super) fn nexthops_flushed(&mut self, oif: u32, now: Instant) {
        if let Some(installed) = &mut self.installed {
            let routes = installed.routes.len();
            installed.forget_nexthops_through(oif);
            if installed.routes.len() < routes {
                self.changed(now);
            }
        }
    }

    /// NIC `oif` was taken down: IPv4 deleted the main table's routes through it without a
    /// word, so they are read again.
    pub(super) fn routes_flushed(&mut self, oif: u32, now: Instant) {
        if let Some(links) = &mut self.links {
            links.retain(|l| l.oif != oif);
        }
        self.reread.insert(oif);
        self.main_changed(now);
    }

    /// Someone else changed mpathd's table at `destination`.
    fn repair(&mut self, destination: IpCidr, now: Instant) {
        self.repair.insert(destination);
        self.main_changed(now);
    }

    /// IPv4 address `source` left the host: the kernel deleted the routes naming it their
    /// source without a word, mpathd's link routes too.
    pub(super) fn source_gone(&mut self, source: IpAddr, now: Instant) {
        self.main.remove_with_source(source);
        if let Some(links) = &mut self.links {
            links.retain(|l| l.prefsrc != Some(source));
        }
        self.changed(now);
    }

    /// The rules changed.
    pub(super) fn rules_changed(&mut self, now: Instant) {
        self.rules_changed = true;
        self.main_changed(now);
    }

    /// One of mpathd's nexthop objects was deleted; known to mpathd, it was not mpathd.
    pub(super) fn nexthop_deleted(&mut self, id: u32, now: Instant) {
        if self
            .installed
            .as_mut()
            .is_some_and(|installed| installed.forget_nexthop(id))
        {
            self.changed(now);
        }
    }
}

/// How many routes the main table must have lost (or an eighth of its peak, if more) before
/// mpathd gives freed memory back, when its route work is done.
const RELEASE_AFTER: usize = 1000;

/// How long route work and notifications must have been quiet before memory is given back.
const RELEASE_QUIET: Duration = Duration::from_secs(2);

/// Less newly freed memory than this (or than an eighth of what is in use) is not worth a
/// trim, which walks the whole heap in the event loop: tens of milliseconds at a million
/// routes.
const TRIM_AT_LEAST: usize = 32 << 20;

/// Gives the memory freed since to the system: the allocator keeps what a large table once
/// took otherwise (glibc returns only the top of its heap by itself), and mpathd's RSS would
/// stay at its peak after the routes went. `free_after_trim` is the heap's free memory after
/// the last trim (its pages already given back): only as much again and more is worth one.
pub(super) fn release_memory(free_after_trim: &mut usize) {
    // SAFETY: mallinfo2 only reads glibc's heap statistics; malloc_trim only returns free
    // pages of its heap to the kernel.
    #[cfg(target_env = "gnu")]
    unsafe {
        let heap = libc::mallinfo2();
        let newly_free = heap.fordblks.saturating_sub(*free_after_trim);
        if newly_free < TRIM_AT_LEAST.max(heap.uordblks / 8) {
            *free_after_trim = (*free_after_trim).min(heap.fordblks);
            return;
        }
        libc::malloc_trim(0);
        *free_after_trim = heap.fordblks;
        tracing::debug!(
            "memory given back: {} KB in use, {} KB free in the heap",
            heap.uordblks / 1024,
            heap.fordblks / 1024,
        );
    }
}

/// A plan of many destinations (the whole table, or a large change of it), made a part at
/// a time between everything else. Destinations come in the order of the table, so a
/// route's prefix is planned before the destinations inside it.
struct Sweep {
    /// The destinations still to plan, besides those a whole sweep comes to in the tables.
    left: BTreeSet<IpCidr>,
    /// How many it planned so far.
    count: usize,
    /// It plans every destination of the main table, the plan and mpathd's table, taking
    /// each part from the tables past [`Sweep::high`] rather than from a list made first
    /// (at a million routes, making the list kept the event loop for 300-400 ms). Those
    /// inside one that started or stopped being a group's come later in it anyway, unless
    /// planned already.
    whole: bool,
    /// The highest destination planned by the parts before this one.
    high: Option<IpCidr>,
    started: Instant,
}

impl Sweep {
    fn new(destinations: BTreeSet<IpCidr>, whole: bool, started: Instant) -> Sweep {
        Sweep {
            count: 0,
            left: destinations,
            whole,
            high: None,
            started,
        }
    }
}

impl Routing {
    /// Plans the destinations inside those of `flipped` (which started or stopped being a
    /// group's) again, for their throws: in a sweep, as they may be the whole table.
    fn plan_inside(&mut self, mut flipped: Vec<IpCidr>, groups: &[GroupRouting], now: Instant) {
        // A whole sweep comes to what is inside a destination after it, unless it was there
        // before: a destination planned out of its turn.
        if let Some(sweep) = self.sweep.as_ref().filter(|sweep| sweep.whole) {
            flipped.retain(|outer| sweep.high.is_some_and(|high| *outer < high));
        }
        let mut inner = BTreeSet::new();
        for outer in flipped {
            inner.append(&mut routes::inside(&self.main, groups, outer));
        }
        if inner.is_empty() {
            return;
        }
        match &mut self.sweep {
            Some(sweep) => sweep.left.append(&mut inner),
            None => self.sweep = Some(Sweep::new(inner, false, now)),
        }
    }
}

/// What changed in the main table since the last plan.
struct MainChanges {
    /// The destinations whose routes changed, those of the routes a group took to hold or
    /// gave back among them.
    destinations: BTreeSet<IpCidr>,
    /// A group took a route to hold or gave one back: its own routes changed.
    held_changed: bool,
}

impl<H: HostIo> Daemon<H> {
    /// A route notification: the main table's are taken in (the plan follows shortly); in
    /// mpathd's table, its own changes are no news, and what others did there is put right
    /// by the next plan.
    pub(super) fn route_notice(&mut self, added: bool, notice: RouteNotice, now: Instant) {
        if self.routing.release_at.is_some() {
            self.routing.release_at = Some(now + RELEASE_QUIET);
        }
        let table = self.config.daemon.route_table;
        if notice.table == MAIN_TABLE && notice.protocol == MPATHD_PROTOCOL {
            // A link route of mpathd's: one someone deleted is put back by the next plan.
            if !added
                && let Some(links) = &mut self.routing.links
                && let [hop] = notice.route.hops.as_slice()
            {
                let before = links.len();
                links.retain(|l| {
                    !(l.destination == notice.route.destination
                        && l.oif == hop.oif
                        && l.metric == notice.route.metric)
                });
                if links.len() != before {
                    self.routing.main_changed(now);
                }
            }
            return;
        }
        if notice.table == MAIN_TABLE {
            if added {
                self.routing.main.add(notice.route, notice.replace);
            } else {
                self.routing.main.remove(&notice.route);
            }
            self.routing.main_changed(now);
            return;
        }
        if notice.table != table {
            return;
        }
        let Some(installed) = &mut self.routing.installed else {
            return;
        };
        let key = (notice.route.destination, notice.route.metric);
        let ours = notice.protocol == MPATHD_PROTOCOL;
        if !added {
            // mpathd's own deletions are already out of `installed`.
            if installed.routes.remove(&key).is_some() {
                tracing::warn!(
                    "the route to {} was deleted from mpathd's table {table} by someone else: \
                     mpathd puts it back",
                    key.0
                );
                self.routing.repair(key.0, now);
            }
            return;
        }
        if ours && installed.routes.get(&key) == notice.table_route.as_ref() {
            return;
        }
        if ours {
            match notice.table_route {
                Some(route) => installed.routes.insert(key, route),
                None => installed.routes.remove(&key),
            };
        } else {
            tracing::warn!(
                "a route to {} (protocol {}) was put in mpathd's table {table} by someone else: \
                 mpathd replaces it while it serves that destination, and leaves it otherwise",
                key.0,
                notice.protocol
            );
            installed.routes.remove(&key);
        }
        self.routing.repair(key.0, now);
    }

    /// Plans mpathd's routes from the main table and the groups' usable NICs, and lists the
    /// changes that get the kernel there; [`Daemon::route_step`] makes them. Reads the kernel
    /// only what it must: mpathd's objects and table when they are not known, the main
    /// table's routes through NICs taken down. mpathd's rule is put back if someone
    /// deleted it.
    pub(super) async fn replan(&mut self) {
        let started = self.host.now();
        self.routing.due = None;
        let mut whole = std::mem::take(&mut self.routing.whole);
        // Known still: no change failed since the last read.
        if self.routing.installed.is_some() {
            self.routing.last_error = None;
        } else {
            match self.installed_routes().await {
                Ok(installed) => {
                    self.routing.installed = Some(installed);
                    self.routing.release_due = true;
                }
                Err(e) => {
                    let now = self.host.now();
                    self.routing.whole = true;
                    self.routing.failed(
                        format!("reading mpathd's routes: {}", with_causes(e.as_ref())),
                        now,
                    );
                    return;
                }
            }
            whole = true;
        }
        if std::mem::take(&mut self.routing.rules_changed) {
            let daemon = &self.config.daemon;
            if let Err(e) = self
                .host
                .ensure_rules(daemon.route_table, daemon.route_rule_priority)
                .await
            {
                tracing::error!("{e}");
            }
        }
        for oif in std::mem::take(&mut self.routing.reread) {
            match self.host.main_routes_through(oif).await {
                Ok(found) => self.routing.main.replace_through(oif, found),
                Err(e) => {
                    let nic = self.groups.nic_at(oif).map_or_else(
                        || format!("ifindex {oif}"),
                        |at| self.groups.nic(at).name.clone(),
                    );
                    tracing::error!(interface = %nic, "reading the main table's routes through {nic}: {}", with_causes(&e))
                }
            }
        }
        let mut main = self.take_main_delta();
        let repair = std::mem::take(&mut self.routing.repair);
        main.destinations.extend(&repair);
        if main.held_changed || !main.destinations.is_empty() {
            let local = self.local_addresses();
            for id in self.groups.ids() {
                let routes = self.probe_routes(id);
                let g = &mut self.groups[id];
                let group_nics = g.ifindexes();
                for p in g.nics.iter_mut().flat_map(|n| &mut n.probing) {
                    p.prober.update_routes(&routes, &group_nics, &local);
                }
            }
        }
        let groups = self.group_routing();
        let routing = &mut self.routing;
        let Some(installed) = &routing.installed else {
            return;
        };
        // The plan's groups re-formed over the NICs serving now (the kernel's were at the
        // failover); their routes are planned again, a part at a time, only where what they
        // depend on changed.
        routing.plan.reform(&groups);
        let inputs: Vec<RouteInputs> = groups.iter().map(GroupRouting::route_inputs).collect();
        if std::mem::take(&mut routing.regrouped) && inputs != routing.inputs {
            whole = true;
        }
        if whole {
            routing.inputs = inputs;
            // The tables' destinations are taken as the sweep comes to them; a sweep under
            // way may have others to plan still.
            let mut left = routing.sweep.take().map(|s| s.left).unwrap_or_default();
            left.extend(
                groups
                    .iter()
                    .flat_map(|g| g.configured.iter().map(|r| r.to)),
            );
            routing.sweep = Some(Sweep::new(left, true, started));
        } else if main.destinations.len() > DESTINATIONS_PER_TURN || routing.sweep.is_some() {
            // A large change (a table flushed, a feed coming in) is planned a part at a time
            // too, and so is one while such a plan is under way, in its turn.
            match &mut routing.sweep {
                Some(sweep) => sweep.left.extend(main.destinations),
                None => routing.sweep = Some(Sweep::new(main.destinations, false, started)),
            }
        } else {
            let updated = routing
                .plan
                .update(&routing.main, &groups, &main.destinations);
            let mut keys = updated.keys;
            // Where someone else changed mpathd's table, every route is compared.
            for destination in &repair {
                keys.extend(routing.plan.keys_at(*destination));
                keys.extend(installed.keys_at(*destination));
            }
            let changes =
                routes::changes_at(&routing.plan, &groups, &keys, &mut routing.ids, installed);
            routing.pending.merge(changes, &keys);
            routing.plan_inside(updated.flipped, &groups, started);
            let plan = std::mem::take(&mut routing.plan);
            self.update_source_routes_at(&plan, keys.into_iter().map(|(d, _)| d));
            self.routing.plan = plan;
            tracing::debug!(
                "planned {} changed destinations in {} ms, {} changes to make",
                main.destinations.len(),
                started.elapsed().as_millis(),
                self.routing.pending.len(),
            );
        }
        self.routing.failed.clear();
        // Room for a notification per route, should the table change all at once.
        let routes = self.routing.main.len() + self.routing.plan.routes.len();
        self.host.fit_monitor(routes);
        self.sync_link_routes().await;
        if self.routing.sweep.is_none() {
            self.watch_default_routes();
        }
    }

    /// Keeps each group's data subnets on-link through every NIC of the group that is up
    /// ([`LinkRoute`]), and no other link route of mpathd's. A refusal is logged once and
    /// tried again at the next plan.
    async fn sync_link_routes(&mut self) {
        if self.routing.links.is_none() {
            match self.host.link_routes().await {
                Ok(found) => self.routing.links = Some(found.into_iter().collect()),
                Err(e) => {
                    tracing::error!("reading mpathd's on-link routes: {e}");
                    return;
                }
            }
        }
        let up: Vec<u32> = self
            .groups
            .iter()
            .flat_map(|g| &g.nics)
            .filter(|n| n.admin_up)
            .filter_map(|n| n.ifindex)
            .collect();
        let wanted = routes::link_routes(&self.group_routing(), &up);
        let Some(links) = &mut self.routing.links else {
            return;
        };
        let stale: Vec<LinkRoute> = links.difference(&wanted).copied().collect();
        let missing: Vec<LinkRoute> = wanted.difference(links).copied().collect();
        for route in missing {
            match self.host.set_link_route(&route).await {
                Ok(()) => {
                    tracing::debug!("routes: {route:?}");
                    links.insert(route);
                }
                // IPv6 disabled on the NIC for a moment (NetworkManager's activation): tried
                // again at the plan that follows its return.
                Err(e) if e.ipv6_disabled() => tracing::debug!("{e}"),
                Err(e) => {
                    let e = e.to_string();
                    if self.routing.link_error.as_ref() != Some(&e) {
                        tracing::warn!("{e}");
                        self.routing.link_error = Some(e);
                    }
                }
            }
        }
        for route in stale {
            match self.host.del_link_route(&route).await {
                Ok(()) => {
                    links.remove(&route);
                }
                Err(e) => tracing::warn!("{e}"),
            }
        }
    }

    /// Says when a group stops serving a default route, or serves one again: off-link
    /// traffic has no way out without it (a DHCP client or an administrator removed it).
    fn watch_default_routes(&mut self) {
        let now = self.routing.plan.default_routes();
        for (group, family) in self.routing.defaults.difference(&now) {
            tracing::warn!(
                group = %group,
                "group {group} has no {} default route any more: traffic to other networks \
                 has no way out through it",
                family.ip_version()
            );
        }
        for (group, family) in now.difference(&self.routing.defaults) {
            tracing::info!(
                group = %group,
                "group {group} serves an {} default route",
                family.ip_version()
            );
        }
        self.routing.defaults = now;
    }

    /// Plans the next part of a plan of many destinations, if one is under way.
    fn sweep_step(&mut self) {
        let groups = self.group_routing();
        let routing = &mut self.routing;
        let (Some(sweep), Some(installed)) = (&mut routing.sweep, &routing.installed) else {
            return;
        };
        // The first destinations of those left and, in a whole sweep, of the tables past the
        // last part.
        let mut part: BTreeSet<IpCidr> = sweep
            .left
            .iter()
            .take(DESTINATIONS_PER_TURN)
            .copied()
            .collect();
        if sweep.whole {
            let high = sweep.high;
            part.extend(
                routing
                    .main
                    .destinations_after(high)
                    .take(DESTINATIONS_PER_TURN),
            );
            part.extend(
                routing
                    .plan
                    .destinations_after(high)
                    .take(DESTINATIONS_PER_TURN),
            );
            part.extend(
                installed
                    .destinations_after(high)
                    .take(DESTINATIONS_PER_TURN),
            );
        }
        while part.len() > DESTINATIONS_PER_TURN {
            part.pop_last();
        }
        for destination in &part {
            sweep.left.remove(destination);
        }
        sweep.count += part.len();
        let updated = routing.plan.update(&routing.main, &groups, &part);
        let mut keys = updated.keys;
        // Every route of these destinations, in the plan or in the kernel, is compared.
        for destination in &part {
            keys.extend(routing.plan.keys_at(*destination));
            keys.extend(installed.keys_at(*destination));
        }
        let changes =
            routes::changes_at(&routing.plan, &groups, &keys, &mut routing.ids, installed);
        routing.pending.merge(changes, &keys);
        routing.plan_inside(updated.flipped, &groups, self.host.now());
        let mut finished = None;
        if let Some(sweep) = &mut routing.sweep {
            sweep.high = sweep.high.max(part.last().copied());
            let high = sweep.high;
            let more = sweep.whole
                && (routing.main.destinations_after(high).next().is_some()
                    || routing.plan.destinations_after(high).next().is_some()
                    || routing
                        .installed
                        .as_ref()
                        .is_some_and(|i| i.destinations_after(high).next().is_some()));
            if sweep.left.is_empty() && !more {
                finished = Some((sweep.count, sweep.started.elapsed()));
            }
        }
        let plan = std::mem::take(&mut routing.plan);
        self.update_source_routes_at(&plan, keys.iter().map(|(d, _)| *d));
        self.routing.plan = plan;
        if let Some((count, took)) = finished {
            tracing::debug!(
                "planned {count} destinations in {} ms, a part a turn; {} changes to make",
                took.as_millis(),
                self.routing.pending.len(),
            );
            self.routing.sweep = None;
            self.watch_default_routes();
        }
    }

    /// Plans the next part of a plan of many destinations under way, and makes the next few
    /// planned changes.
    pub(super) async fn route_step(&mut self) {
        self.sweep_step();
        let mut made = 0;
        while made < CHANGES_PER_TURN {
            let routes = self.routing.pending.pop_routes(CHANGES_PER_TURN - made);
            if !routes.is_empty() {
                made += routes.len();
                self.make_routes(routes).await;
                continue;
            }
            let Some(change) = self.routing.pending.pop() else {
                break;
            };
            made += 1;
            self.make(change).await;
        }
        let routes = self.routing.main.len();
        let peak = self.routing.peak_routes.max(routes);
        if peak - routes >= RELEASE_AFTER.max(peak / 8) {
            self.routing.release_due = true;
            self.routing.peak_routes = routes;
        } else {
            self.routing.peak_routes = peak;
        }
        if !self.routing.has_pending() && std::mem::take(&mut self.routing.release_due) {
            self.routing.release_at = Some(self.host.now() + RELEASE_QUIET);
        }
        // Back to the runtime, which then polls its timer and IO drivers: a step made of
        // planning alone never waits for anything, and without this the probes' timers
        // would not fire until the whole plan was made.
        tokio::task::yield_now().await;
    }

    /// Makes changes of mpathd's table together: their requests go out at once and the
    /// answers are awaited together, rather than a round trip each. A route through a group
    /// the kernel refused is left out.
    async fn make_routes(&mut self, changes: Vec<TableChange>) {
        let table = self.config.daemon.route_table;
        let failed = &self.routing.failed;
        let changes: Vec<TableChange> = changes
            .into_iter()
            .filter(|(_, route)| {
                !route.as_ref().is_some_and(
                    |r| matches!(r.via, routes::Via::Group(id) if failed.contains(&id)),
                )
            })
            .collect();
        let host = &self.host;
        let results = futures_util::future::join_all(changes.iter().map(
            |((destination, metric), route)| async move {
                match route {
                    Some(route) => {
                        host.set_table_route(table, *destination, *metric, route)
                            .await
                    }
                    None => host.del_table_route(table, *destination, *metric).await,
                }
            },
        ))
        .await;
        let now = self.host.now();
        for (change, result) in changes.into_iter().zip(results) {
            match result {
                Ok(()) => {
                    let change = RouteChange::from(change);
                    tracing::debug!("routes: {change:?}");
                    if let Some(installed) = &mut self.routing.installed {
                        installed.apply(&change);
                    }
                }
                Err(e) => self.routing.failed(e.to_string(), now),
            }
        }
    }

    /// A NIC joined or left the group's usable set, or lost or regained its carrier: the
    /// groups' nexthop groups are re-formed over the NICs that serve now, at once and
    /// without reading any table; the rest (routes, deletions) follows with the next plan,
    /// shortly. See [`Daemon::reconcile`].
    pub(super) async fn reform_groups(&mut self, now: Instant) {
        self.routing.regrouped(now);
        let groups = self.group_routing();
        // At once: the next part of a plan under way must not take the new members for
        // objects no longer wanted and delete them.
        self.routing.plan.reform(&groups);
        let Some(installed) = &self.routing.installed else {
            return;
        };
        let changes = routes::reform(
            &self.routing.plan,
            &groups,
            &mut self.routing.ids,
            installed,
        );
        // Planned nexthop changes are out of date now; the next plan makes those still due.
        self.routing.pending.drop_nexthop_changes();
        self.routing.failed.clear();
        for change in changes {
            self.make(change).await;
        }
    }

    /// Makes one change and records what the kernel then has; after an error, what mpathd
    /// has in the kernel is read again and planned for.
    async fn make(&mut self, change: RouteChange) {
        match self.carry_out(change).await {
            Ok(Some(done)) => {
                if let Some(installed) = &mut self.routing.installed {
                    installed.apply(&done);
                }
            }
            Ok(None) => {}
            Err(e) => self
                .routing
                .failed(with_causes(e.as_ref()), self.host.now()),
        }
    }

    /// The routes group `id`'s probers take their routers from: the main table's, and the
    /// group's own (`[[group.route]]` and those it holds), which are in no table a restarted
    /// mpathd could read them from before it serves them.
    pub(super) fn probe_routes(&self, id: GroupId) -> Vec<crate::core::target::RouteEntry> {
        let mut routes = self.routing.entries();
        let g = &self.groups[id];
        if let Some(&oif) = g.ifindexes().first() {
            let own = g.config.routes.iter().chain(&g.held_routes);
            routes.extend(routes::group_route_entries(own, oif));
        }
        routes
    }

    /// Takes the main table's changes since the last plan: routes the kernel deleted with a
    /// group NIC that went down or away are held by the group, and held routes that are back
    /// in `main` through the group's NICs are its owner's again.
    fn take_main_delta(&mut self) -> MainChanges {
        let delta = self.routing.main.take_delta();
        let departed = std::mem::take(&mut self.routing.departed);
        let mut changes = MainChanges {
            destinations: delta.touched.clone(),
            held_changed: false,
        };
        if changes.destinations.is_empty() {
            return changes;
        }
        let groups = &self.groups;
        let down = |oif: u32| {
            departed
                .iter()
                .find(|(i, _)| *i == oif)
                .map(|(_, group)| group.as_str())
                .or_else(|| {
                    let at = groups.nic_at(oif)?;
                    (!groups.nic(at).carrier).then(|| groups[at.group].name())
                })
        };
        let orphans: Vec<(String, RouteConfig)> =
            routes::orphaned(&delta.before, &delta.after, down)
                .into_iter()
                .map(|(group, route)| (group.to_string(), route))
                .collect();
        for (name, route) in orphans {
            let Some(id) = self.groups.by_name(&name) else {
                continue;
            };
            let group = &mut self.groups[id];
            if !group.held_routes.contains(&route) && !group.config.routes.contains(&route) {
                if is_data_prefix(group, &route) {
                    tracing::debug!(
                        "group {name} keeps the route {route}: the kernel deleted it with its NIC"
                    );
                } else {
                    tracing::info!(
                        group = %name,
                        "group {name} keeps the route {route}: the kernel deleted it with its NIC"
                    );
                }
                group.held_routes.push(route);
                changes.destinations.insert(route.to);
                changes.held_changed = true;
            }
        }
        for group in self.groups.iter_mut() {
            let members = group.ifindexes();
            let name = &group.config.name;
            let data_prefixes: Vec<RouteConfig> = group
                .held_routes
                .iter()
                .filter(|r| is_data_prefix(group, r))
                .cloned()
                .collect();
            group.held_routes.retain(|route| {
                let back = routes::returned(route, &self.routing.main, &members);
                if back && data_prefixes.contains(route) {
                    tracing::debug!("the route {route} is back in the main table; group {name} no longer holds it");
                } else if back {
                    tracing::info!("the route {route} is back in the main table; group {name} no longer holds it");
                }
                if back {
                    changes.destinations.insert(route.to);
                    changes.held_changed = true;
                }
                !back
            });
        }
        changes
    }

    /// Each group as the route planner needs it.
    fn group_routing(&self) -> Vec<GroupRouting> {
        self.groups
            .iter()
            .map(|g| {
                let usable: Vec<&str> = g
                    .fsm
                    .usable_interfaces()
                    .into_iter()
                    .filter(|n| !g.joining.iter().any(|j| j == n))
                    .collect();
                let nics: Vec<NicRouting> = g
                    .nics
                    .iter()
                    .filter_map(|n| {
                        Some(NicRouting {
                            ifindex: n.ifindex?,
                            usable: usable.contains(&n.name.as_str()),
                            carrier: n.carrier,
                        })
                    })
                    .collect();
                GroupRouting {
                    name: g.config.name.clone(),
                    members: nics.iter().map(|n| n.ifindex).collect(),
                    serving: routes::serving(&nics, g.config.spread),
                    addresses: g
                        .addresses
                        .iter()
                        .map(|a| (a.cidr, a.current.and_then(|slot| g.ifindex_in(slot))))
                        .collect(),
                    configured: g
                        .config
                        .routes
                        .iter()
                        .chain(&g.held_routes)
                        .copied()
                        .collect(),
                }
            })
            .collect()
    }

    /// What mpathd has in the kernel: its nexthop objects (adopted into the id book, so a
    /// restarted mpathd keeps them) and its table. Objects of mpathd's it cannot make sense
    /// of (left by another version, or of a NIC in no group now) are deleted.
    async fn installed_routes(&mut self) -> anyhow::Result<RouteState> {
        let mut state = RouteState::default();
        let ours: Vec<Nexthop> = self
            .host
            .nexthops()
            .await?
            .into_iter()
            .filter(|n| n.protocol == MPATHD_PROTOCOL)
            .collect();
        let mut stray = Vec::new();
        for nexthop in &ours {
            match nexthop.kind {
                NexthopKind::Single {
                    family,
                    oif,
                    gateway,
                    ..
                } => {
                    let key = NexthopKey {
                        family,
                        oif,
                        gateway,
                    };
                    self.routing
                        .ids
                        .adopt(NexthopObject::Single(key), nexthop.id);
                    state.nexthops.insert(nexthop.id, key);
                }
                NexthopKind::Resilient { .. } => {}
                _ => stray.push(nexthop.id),
            }
        }
        for nexthop in &ours {
            let NexthopKind::Resilient { members, .. } = &nexthop.kind else {
                continue;
            };
            match self.group_key(members, &state) {
                Some(key) => {
                    self.routing
                        .ids
                        .adopt(NexthopObject::Group(key), nexthop.id);
                    let mut members = members.clone();
                    members.sort_unstable();
                    state.groups.insert(nexthop.id, members);
                }
                None => stray.push(nexthop.id),
            }
        }
        for id in stray {
            tracing::info!("deleting nexthop {id}: mpathd's, but of no group now");
            self.host.delete_nexthop(id).await?;
        }
        state.routes = self
            .host
            .table_routes(self.config.daemon.route_table)
            .await?
            .into_iter()
            .collect();
        Ok(state)
    }

    /// The key of a resilient group found in the kernel: its members' group and gateways.
    fn group_key(&self, members: &[u32], state: &RouteState) -> Option<GroupKey> {
        let keys: Vec<&NexthopKey> = members
            .iter()
            .map(|id| state.nexthops.get(id))
            .collect::<Option<_>>()?;
        let first = keys.first()?;
        let group = &self.groups[self.groups.nic_at(first.oif)?.group];
        let gateways: BTreeSet<IpAddr> = keys.iter().filter_map(|k| k.gateway).collect();
        Some(GroupKey::new(
            group.name().to_string(),
            first.family,
            gateways.into_iter().collect(),
        ))
    }

    /// Carries out one change; returns it as made (a group without the members the kernel
    /// refused), or `None` when it was left out. Nexthops the kernel refused (a NIC that lost
    /// its carrier a moment ago) are left out of the groups that follow, and a group left
    /// with no member is not made, nor routes through it.
    async fn carry_out(&mut self, change: RouteChange) -> anyhow::Result<Option<RouteChange>> {
        let table = self.config.daemon.route_table;
        let failed = &mut self.routing.failed;
        match &change {
            RouteChange::SetNexthop { id, key } => {
                let nexthop = Nexthop {
                    id: *id,
                    protocol: MPATHD_PROTOCOL,
                    kind: NexthopKind::Single {
                        family: key.family,
                        oif: key.oif,
                        gateway: key.gateway,
                        // An IPv4 gateway need not be in a subnet of the NIC's addresses:
                        // the group's NICs share one link. IPv6 gateways are link-local.
                        onlink: matches!(key.gateway, Some(IpAddr::V4(_))),
                    },
                };
                if let Err(e) = self.host.replace_nexthop(&nexthop).await {
                    failed.insert(*id);
                    let nic = self.groups.nic_at(key.oif).map_or_else(
                        || format!("ifindex {}", key.oif),
                        |at| self.groups.nic(at).name.clone(),
                    );
                    let via = key.gateway.map(|g| format!(" via {g}")).unwrap_or_default();
                    let errno = match &e {
                        NexthopError::Replace { source, .. } => source.error.raw_os_error(),
                        _ => None,
                    };
                    // A NIC without carrier, or not yet with an address the gateway answers
                    // on: the group's routes leave through its other NICs until the NIC's
                    // next change makes the nexthop again.
                    if matches!(
                        errno,
                        Some(libc::ENETDOWN | libc::ENETUNREACH | libc::EHOSTUNREACH)
                    ) {
                        tracing::warn!(
                            interface = %nic,
                            "the group's routes{via} leave {nic} out for now: the kernel refused its nexthop ({e})"
                        );
                        return Ok(None);
                    }
                    anyhow::bail!("making the nexthop{via} through {nic}: {e}");
                }
            }
            RouteChange::SetGroup { id, members } => {
                let members: Vec<u32> = members
                    .iter()
                    .copied()
                    .filter(|m| !failed.contains(m))
                    .collect();
                if members.is_empty() {
                    failed.insert(*id);
                    return Ok(None);
                }
                let group = Nexthop {
                    id: *id,
                    protocol: MPATHD_PROTOCOL,
                    kind: NexthopKind::Resilient {
                        members: members.clone(),
                        buckets: NEXTHOP_BUCKETS,
                        idle_timer: IDLE_TIMER,
                        unbalanced_timer: Duration::ZERO,
                    },
                };
                if let Err(e) = self.host.replace_nexthop(&group).await {
                    failed.insert(*id);
                    return Err(e.into());
                }
                tracing::debug!("routes: {change:?}");
                return Ok(Some(RouteChange::SetGroup { id: *id, members }));
            }
            RouteChange::SetRoute {
                destination,
                metric,
                route,
            } => {
                if matches!(route.via, routes::Via::Group(id) if failed.contains(&id)) {
                    return Ok(None);
                }
                self.host
                    .set_table_route(table, *destination, *metric, route)
                    .await?;
            }
            RouteChange::DelRoute {
                destination,
                metric,
            } => {
                self.host
                    .del_table_route(table, *destination, *metric)
                    .await?;
            }
            RouteChange::DelNexthop { id } => {
                self.host.delete_nexthop(*id).await?;
            }
        }
        tracing::debug!("routes: {change:?}");
        Ok(Some(change))
    }
}

/// Whether `route` is the prefix route of one of the group's data addresses: the kernel
/// deletes it and makes it again as mpathd moves the address between NICs, which is routine
/// and logged at debug level only.
fn is_data_prefix(group: &super::group::GroupRuntime, route: &RouteConfig) -> bool {
    route.via.is_none() && group.addresses.iter().any(|a| a.cidr.network() == route.to)
}
