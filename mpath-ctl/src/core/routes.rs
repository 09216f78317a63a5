//! Group routes: in Solaris IPMP the group, not the NIC, owns the host's routes, so any usable
//! member carries them. mpathd does the same with the kernel's own tools: for every route of
//! the main table whose next hops all leave through NICs of one group (a default route a DHCP
//! client added on `h1`, the prefix route of a data address, an administrator's static
//! route), and for the routes of the configuration, it serves the same destination from a
//! table of its own through a resilient nexthop group over the group's usable NICs. A policy
//! rule ahead of `main` consults that table first.
//!
//! A table consulted first answers every lookup it has a match for, so it must never answer
//! one that `main` would answer otherwise: every other destination of `main` inside a group
//! route's prefix gets a `throw` route there, which sends the lookup on to `main`. The table
//! thus holds exactly the prefixes of `main` (and the configured ones) that a group route
//! covers, and the longest match is the same in both.
//!
//! This module decides what the table and the nexthop objects should be ([`plan`]), gives
//! them stable ids ([`IdBook`]) and lists the kernel changes that get there ([`changes`]). It
//! does no IO.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    net::IpAddr,
    ops::{Bound, Deref},
    sync::Arc,
};

use smallvec::SmallVec;

use crate::{
    config::{RouteConfig, SpreadMode},
    core::target::{AddressFamily, RouteEntry},
    net::address::IpCidr,
};

/// A next hop of a route: out of `oif`, through `gateway` or straight to the destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Hop {
    pub oif: u32,
    pub gateway: Option<IpAddr>,
}

/// A route's next hops: nearly every route has one, kept inline.
pub type Hops = SmallVec<[Hop; 1]>;

/// A route of the main table as the planner sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MainRoute {
    /// The destination network (host bits clear); `0.0.0.0/0` or `::/0` for a default route.
    pub destination: IpCidr,
    pub metric: u32,
    /// IPv4's type of service: routes that differ only in it are different routes.
    pub tos: u8,
    /// A unicast route straight through its hops: not another type, without TOS, not through
    /// a nexthop object of another daemon. Only such a route can a group serve.
    pub plain: bool,
    pub prefsrc: Option<IpAddr>,
    /// The devices it leaves through; empty for one through none (blackhole, unreachable, a
    /// nexthop object).
    pub hops: Hops,
}

impl MainRoute {
    /// One entry per hop, as probe targets are found.
    pub fn entries(&self) -> impl Iterator<Item = RouteEntry> + '_ {
        let hops = if self.plain { &self.hops[..] } else { &[] };
        hops.iter().map(|hop| RouteEntry {
            destination: self.destination,
            gateway: hop.gateway,
            oif: hop.oif,
        })
    }
}

/// The key of main-table routes: the kernel keeps apart routes that differ in destination,
/// metric or TOS, and keeps several under one key too (each NIC's connected route of a
/// shared subnet, IPv4 routes appended).
type MainKey = (IpCidr, u32, u8);

/// The routes under one key: nearly always one, kept inline.
type KeyRoutes = SmallVec<[MainRoute; 1]>;

/// The main table as mpathd keeps it between dumps: read whole at start and after the kernel
/// dropped notifications, then changed by each notification, so that a route change costs
/// what it changes. It remembers which routes changed until [`MainTable::take_delta`].
#[derive(Clone, Debug, Default)]
pub struct MainTable {
    routes: BTreeMap<MainKey, KeyRoutes>,
    /// The keys changed since the last delta, with their routes as they were then.
    changed: BTreeMap<MainKey, KeyRoutes>,
    /// What probe target selection needs of the routes ([`probe_entry`]), with how many
    /// routes give each: a handful of routers however many routes go through them.
    routers: BTreeMap<(IpCidr, Option<IpAddr>, u32), usize>,
}

/// The routes that changed over a while: as they were before it and as they are now. A
/// route changed and changed back is in neither.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MainDelta {
    pub before: Vec<MainRoute>,
    pub after: Vec<MainRoute>,
    /// The destinations whose routes changed at all, changed back included: a plan of the
    /// whole table, made a part at a time, may have planned one from the routes it had in
    /// between, and must plan it again.
    pub touched: BTreeSet<IpCidr>,
}

impl FromIterator<MainRoute> for MainTable {
    fn from_iter<I: IntoIterator<Item = MainRoute>>(routes: I) -> MainTable {
        let mut table = MainTable::default();
        table.replace_all(routes);
        table.changed.clear();
        table
    }
}

/// A route's next hop as probe target selection looks at it: a router, whatever the
/// destination behind it (given as the family's default), or the destination of an on-link
/// host route; `None` for other on-link routes, which name no router.
fn probe_entry(entry: RouteEntry) -> Option<RouteEntry> {
    let destination = entry.destination;
    let host = destination.prefix_len() == destination.max_prefix_len();
    if host && entry.gateway.is_none_or(|g| g == destination.addr()) {
        return Some(entry);
    }
    let anywhere = IpCidr::new(destination.addr(), 0).ok()?.network();
    entry.gateway.map(|_| RouteEntry {
        destination: anywhere,
        ..entry
    })
}

fn main_key(route: &MainRoute) -> MainKey {
    (route.destination, route.metric, route.tos)
}

/// Whether two routes under one key are the same route: one shares a next hop with the other
/// (a multipath route that gained or lost one), or both have none and are alike.
fn same_route(a: &MainRoute, b: &MainRoute) -> bool {
    a == b || a.hops.iter().any(|h| b.hops.contains(h))
}

impl MainTable {
    /// How many keys (destination, metric, TOS) it has routes under: about as many as it
    /// has routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &MainRoute> {
        self.routes.values().flatten()
    }

    /// The routes to `destination`, of any metric and TOS.
    pub fn at(&self, destination: IpCidr) -> impl Iterator<Item = &MainRoute> {
        self.routes
            .range((destination, 0, 0)..=(destination, u32::MAX, u8::MAX))
            .flat_map(|(_, routes)| routes)
    }

    /// The destinations inside `outer`, `outer` itself left out.
    pub fn inside(&self, outer: IpCidr) -> BTreeSet<IpCidr> {
        let (Ok(first), Ok(last)) = (
            IpCidr::new(outer.network().addr(), 0),
            IpCidr::new(outer.last_address(), outer.max_prefix_len()),
        ) else {
            return BTreeSet::new();
        };
        self.routes
            .range((first, 0, 0)..=(last, u32::MAX, u8::MAX))
            .map(|((destination, _, _), _)| *destination)
            .filter(|d| *d != outer && outer.covers(*d))
            .collect()
    }

    /// The destinations of the table after `after` (all of them: `None`), in order.
    pub fn destinations_after(&self, after: Option<IpCidr>) -> impl Iterator<Item = IpCidr> + '_ {
        let from = after.map_or(Bound::Unbounded, |d| {
            Bound::Excluded((d, u32::MAX, u8::MAX))
        });
        once_each(
            self.routes
                .range((from, Bound::Unbounded))
                .map(|((destination, _, _), _)| *destination),
        )
    }

    /// Every router and on-link host route of the table, once each, as probe target
    /// selection sees them.
    pub fn probe_entries(&self) -> impl Iterator<Item = RouteEntry> + '_ {
        self.routers
            .keys()
            .map(|&(destination, gateway, oif)| RouteEntry {
                destination,
                gateway,
                oif,
            })
    }

    /// What changed since the last call.
    pub fn take_delta(&mut self) -> MainDelta {
        let mut delta = MainDelta::default();
        for (key, before) in std::mem::take(&mut self.changed) {
            delta.touched.insert(key.0);
            let after = self
                .routes
                .get(&key)
                .map(|routes| routes.as_slice())
                .unwrap_or_default();
            delta
                .before
                .extend(before.iter().filter(|r| !after.contains(r)).cloned());
            delta
                .after
                .extend(after.iter().filter(|r| !before.contains(r)).cloned());
        }
        delta
    }

    /// Puts `routes` under `key` (none: the key goes), remembering the routes it had for the
    /// delta and keeping the routers' counts.
    fn replace_key(&mut self, key: MainKey, routes: KeyRoutes) {
        let before = match routes.is_empty() {
            true => self.routes.remove(&key).unwrap_or_default(),
            false => self.routes.insert(key, routes).unwrap_or_default(),
        };
        let after = self
            .routes
            .get(&key)
            .map(|routes| routes.as_slice())
            .unwrap_or_default();
        // Walked in place, not collected: this runs for every route change, and with a
        // million routes in the heap malloc is the largest part of a change's CPU.
        fn entries(routes: &[MainRoute]) -> impl Iterator<Item = (IpCidr, Option<IpAddr>, u32)> {
            routes
                .iter()
                .flat_map(MainRoute::entries)
                .filter_map(probe_entry)
                .map(|e| (e.destination, e.gateway, e.oif))
        }
        for entry in entries(after) {
            *self.routers.entry(entry).or_default() += 1;
        }
        for entry in entries(&before) {
            if let Some(count) = self.routers.get_mut(&entry) {
                *count -= 1;
                if *count == 0 {
                    self.routers.remove(&entry);
                }
            }
        }
        self.changed.entry(key).or_insert(before);
    }

    /// The routes under `key`, to change into new ones.
    fn routes_at(&self, key: MainKey) -> KeyRoutes {
        self.routes.get(&key).cloned().unwrap_or_default()
    }

    /// Takes a whole dump.
    pub fn replace_all(&mut self, routes: impl IntoIterator<Item = MainRoute>) {
        let mut new: BTreeMap<MainKey, KeyRoutes> = BTreeMap::new();
        for route in routes {
            new.entry(main_key(&route)).or_default().push(route);
        }
        let gone: Vec<MainKey> = self
            .routes
            .keys()
            .filter(|key| !new.contains_key(key))
            .copied()
            .collect();
        for key in gone {
            self.replace_key(key, KeyRoutes::new());
        }
        for (key, routes) in new {
            if self.routes.get(&key) != Some(&routes) {
                self.replace_key(key, routes);
            }
        }
    }

    /// A route the kernel added, or (`replace`) put in the place of another. Its notification
    /// carries the whole route: for IPv6, every next hop of a multipath route, whichever was
    /// added. It takes the place of the route it shares a next hop with; a replacement
    /// sharing none takes the place of the first under its key, as the kernel's does.
    pub fn add(&mut self, route: MainRoute, replace: bool) {
        let key = main_key(&route);
        let mut routes = self.routes_at(key);
        match routes.iter().position(|r| same_route(r, &route)) {
            Some(at) => routes[at] = route,
            None if replace && !routes.is_empty() => routes[0] = route,
            None => routes.push(route),
        }
        self.replace_key(key, routes);
    }

    /// A route the kernel deleted. IPv6 deletes the next hops of a multipath route one at a
    /// time and names only those: a route goes when it has none left, or when the
    /// notification names none (a route of another type).
    pub fn remove(&mut self, route: &MainRoute) {
        let key = main_key(route);
        let mut routes = self.routes_at(key);
        let found = routes
            .iter()
            .position(|r| r == route)
            .or_else(|| routes.iter().position(|r| same_route(r, route)));
        let Some(at) = found else {
            return;
        };
        routes[at].hops.retain(|h| !route.hops.contains(h));
        if route.hops.is_empty() || routes[at].hops.is_empty() {
            routes.remove(at);
        }
        self.replace_key(key, routes);
    }

    /// The keys with a route through `oif`.
    fn keys_through(&self, oif: u32) -> Vec<MainKey> {
        self.routes
            .iter()
            .filter(|(_, routes)| routes.iter().any(|r| r.hops.iter().any(|h| h.oif == oif)))
            .map(|(key, _)| *key)
            .collect()
    }

    /// Takes what a dump filtered by `oif` found after the kernel may have deleted routes
    /// through it without a word (IPv4 does when a NIC is taken down): every route kept with a
    /// hop through `oif` is replaced by those.
    pub fn replace_through(&mut self, oif: u32, found: impl IntoIterator<Item = MainRoute>) {
        let mut found: BTreeMap<MainKey, KeyRoutes> =
            found.into_iter().fold(BTreeMap::new(), |mut m, r| {
                m.entry(main_key(&r)).or_default().push(r);
                m
            });
        let mut keys = self.keys_through(oif);
        keys.extend(found.keys().copied());
        keys.sort_unstable();
        keys.dedup();
        for key in keys {
            let now: KeyRoutes = self
                .routes
                .get(&key)
                .into_iter()
                .flatten()
                .filter(|r| r.hops.iter().all(|h| h.oif != oif))
                .cloned()
                .chain(found.remove(&key).into_iter().flatten())
                .collect();
            if self
                .routes
                .get(&key)
                .map(|routes| routes.as_slice())
                .unwrap_or_default()
                != now.as_slice()
            {
                self.replace_key(key, now);
            }
        }
    }

    /// A NIC left the host: the kernel deleted each IPv4 route with a hop through it and each
    /// IPv6 route's hops through it, without a notification for IPv4.
    pub fn remove_through(&mut self, oif: u32) {
        for key in self.keys_through(oif) {
            let mut routes = self.routes_at(key);
            if key.0.addr().is_ipv4() {
                routes.retain(|r| r.hops.iter().all(|h| h.oif != oif));
            } else {
                for route in routes.iter_mut() {
                    route.hops.retain(|h| h.oif != oif);
                }
                routes.retain(|r| !r.hops.is_empty());
            }
            self.replace_key(key, routes);
        }
    }

    /// An IPv4 address left the host: the kernel deleted the routes that named it their
    /// preferred source, without a notification.
    pub fn remove_with_source(&mut self, source: IpAddr) {
        if source.is_ipv6() {
            return;
        }
        let keys: Vec<MainKey> = self
            .routes
            .iter()
            .filter(|(_, routes)| routes.iter().any(|r| r.prefsrc == Some(source)))
            .map(|(key, _)| *key)
            .collect();
        for key in keys {
            let mut routes = self.routes_at(key);
            routes.retain(|r| r.prefsrc != Some(source));
            self.replace_key(key, routes);
        }
    }
}

/// A group's own routes (`[[group.route]]`, and those it holds for a NIC that went down) as
/// probe target selection sees them: through the group's NIC `oif`. mpathd puts them in its
/// own table only, so `main` never names their gateways, the routers its NICs must probe.
pub(crate) fn group_route_entries<'a>(
    routes: impl IntoIterator<Item = &'a RouteConfig> + 'a,
    oif: u32,
) -> impl Iterator<Item = RouteEntry> + 'a {
    routes.into_iter().map(move |route| RouteEntry {
        destination: route.to,
        gateway: route.via,
        oif,
    })
}

/// One group as the planner sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct GroupRouting {
    pub name: String,
    /// Every NIC of the group the kernel has now, by ifindex.
    pub members: Vec<u32>,
    /// The NICs that carry the group's routes (see [`serving`]).
    pub serving: Vec<u32>,
    /// The group's data addresses and the NIC each is on now (`None`: on no NIC).
    pub addresses: Vec<(IpCidr, Option<u32>)>,
    /// The routes the configuration gives the group (`[[group.route]]`).
    pub configured: Vec<RouteConfig>,
}

/// What the routes planned for a group depend on ([`candidate`], [`served`], [`source_for`]),
/// where the members of its nexthop groups do not count: those a failover re-forms at once
/// ([`reform`]). A failover to a standby that takes the failed NIC's addresses along leaves
/// it as it was, and then no route of the table needs planning again. Nor do the group's
/// own routes count, which are planned again where they change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RouteInputs {
    name: String,
    members: Vec<u32>,
    /// The data addresses in order, and whether each is on a NIC.
    placed: Vec<(IpCidr, bool)>,
    /// The data addresses on each serving NIC, whichever NIC it is (none serving: empty).
    serving: BTreeSet<BTreeSet<IpCidr>>,
}

impl GroupRouting {
    pub(crate) fn route_inputs(&self) -> RouteInputs {
        RouteInputs {
            name: self.name.clone(),
            members: self.members.clone(),
            placed: self
                .addresses
                .iter()
                .map(|(cidr, on)| (*cidr, on.is_some()))
                .collect(),
            serving: self
                .serving
                .iter()
                .map(|oif| {
                    self.addresses
                        .iter()
                        .filter(|(_, on)| *on == Some(*oif))
                        .map(|(cidr, _)| *cidr)
                        .collect()
                })
                .collect(),
        }
    }
}

/// One group NIC as [`serving`] needs to know it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NicRouting {
    pub ifindex: u32,
    /// In the group's usable set: not failed, not offline, not an inactive standby.
    pub usable: bool,
    /// Up with carrier: the kernel accepts nexthops only on such a NIC.
    pub carrier: bool,
}

/// The NICs (in configuration order) that carry a group's routes: the usable ones with
/// carrier. When none is usable (the group failed) the routes stay on the NICs that still
/// have carrier, as IPMP keeps a failed group's addresses where they are; with no carrier
/// anywhere there is nothing to route through. With datapath spreading the egress program
/// spreads the flows, and the routes go through the first of them only.
pub fn serving(nics: &[NicRouting], spread: SpreadMode) -> Vec<u32> {
    let usable: Vec<u32> = nics
        .iter()
        .filter(|n| n.usable && n.carrier)
        .map(|n| n.ifindex)
        .collect();
    let mut serving = if usable.is_empty() {
        nics.iter()
            .filter(|n| n.carrier)
            .map(|n| n.ifindex)
            .collect()
    } else {
        usable
    };
    if spread == SpreadMode::Datapath {
        serving.truncate(1);
    }
    serving
}

/// A single nexthop: one NIC, through a gateway or on-link. A NIC is in one group only, so
/// this also names the group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NexthopKey {
    pub family: AddressFamily,
    pub oif: u32,
    pub gateway: Option<IpAddr>,
}

/// A resilient nexthop group: one group's way to a set of gateways (none: on-link). Shared:
/// the plan's routes through it hold one copy ([`Plan::set`]), not one each.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct GroupKey(Arc<GroupWay>);

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct GroupWay {
    pub group: String,
    pub family: AddressFamily,
    pub gateways: Vec<IpAddr>,
}

impl GroupKey {
    pub(crate) fn new(group: String, family: AddressFamily, gateways: Vec<IpAddr>) -> GroupKey {
        GroupKey(Arc::new(GroupWay {
            group,
            family,
            gateways,
        }))
    }
}

impl Deref for GroupKey {
    type Target = GroupWay;

    fn deref(&self) -> &GroupWay {
        &self.0
    }
}

/// Where a route of mpathd's table sends a lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Via<G> {
    /// Through a nexthop group (by key in a [`Plan`], by id in a [`RouteState`]).
    Group(G),
    /// On to the next rule (`main`): the destination is not the group's.
    Throw,
}

/// A route of mpathd's table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableRoute<G> {
    pub via: Via<G>,
    /// Set only where the kernel's own choice could be a test address or another group's
    /// address (see [`source_for`]).
    pub prefsrc: Option<IpAddr>,
}

/// What mpathd's table and nexthops should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Nexthop groups and their members, in the order of the serving NICs.
    pub groups: BTreeMap<GroupKey, Vec<NexthopKey>>,
    /// Routes by destination and metric.
    pub routes: BTreeMap<(IpCidr, u32), TableRoute<GroupKey>>,
    /// How many routes go through each group: it goes with the last.
    uses: BTreeMap<GroupKey, usize>,
}

/// A key of mpathd's table: destination and metric.
type TableKey = (IpCidr, u32);

/// The destinations of a table of mpathd's after `after` (all: `None`), in order.
fn table_destinations_after<V>(
    table: &BTreeMap<TableKey, V>,
    after: Option<IpCidr>,
) -> impl Iterator<Item = IpCidr> + '_ {
    let from = after.map_or(Bound::Unbounded, |d| Bound::Excluded((d, u32::MAX)));
    once_each(
        table
            .range((from, Bound::Unbounded))
            .map(|((destination, _), _)| *destination),
    )
}

/// Destinations in order, each once.
fn once_each(destinations: impl Iterator<Item = IpCidr>) -> impl Iterator<Item = IpCidr> {
    let mut last = None;
    destinations.filter(move |d| last.replace(*d) != Some(*d))
}

/// The throw route: the lookup goes on to the next rule's table, `main`.
const THROW: TableRoute<GroupKey> = TableRoute {
    via: Via::Throw,
    prefsrc: None,
};

/// A route that may decide a destination, with the group that would serve it.
type Candidate = (MainRoute, Option<usize>);

/// A route of main with the group that could serve it: one all of whose hops leave through
/// that group's NICs.
fn candidate(route: &MainRoute, groups: &[GroupRouting]) -> Candidate {
    let group_of = |oif: u32| groups.iter().position(|g| g.members.contains(&oif));
    let owners: BTreeSet<Option<usize>> = route.hops.iter().map(|h| group_of(h.oif)).collect();
    // A gateway of the other family (`via inet6 fe80::1` for an IPv4 route) is no way a
    // group nexthop of the route's family can take: such a route stays main's.
    let family = AddressFamily::of(route.destination.addr());
    let mixed = route
        .hops
        .iter()
        .any(|h| h.gateway.is_some_and(|g| AddressFamily::of(g) != family));
    let group = match owners.into_iter().collect::<Vec<_>>()[..] {
        [Some(gi)] if !mixed && route.plain && groupable(route.destination) => Some(gi),
        _ => None,
    };
    (route.clone(), group)
}

/// The groups' own routes (configured and held) as candidates: through every NIC of theirs.
fn configured(groups: &[GroupRouting]) -> impl Iterator<Item = Candidate> + '_ {
    groups.iter().enumerate().flat_map(|(gi, g)| {
        g.configured.iter().map(move |r| {
            let hops = g.members.iter().map(|&oif| Hop {
                oif,
                gateway: r.via,
            });
            let route = MainRoute {
                destination: r.to,
                metric: r.metric,
                tos: 0,
                plain: true,
                prefsrc: None,
                hops: hops.collect(),
            };
            (route, groupable(r.to).then_some(gi))
        })
    })
}

/// How a destination is served, if a group serves it: it is the group's when its best routes
/// (the lowest metric, which the kernel picks) are all that group's, and the group has a NIC
/// to carry them.
fn served(
    destination: IpCidr,
    candidates: &[Candidate],
    groups: &[GroupRouting],
) -> Option<(TableKey, TableRoute<GroupKey>)> {
    let metric = candidates.iter().map(|(r, _)| r.metric).min()?;
    let best: Vec<&Candidate> = candidates
        .iter()
        .filter(|(r, _)| r.metric == metric)
        .collect();
    let owners: BTreeSet<Option<usize>> = best.iter().map(|(_, g)| *g).collect();
    let [Some(gi)] = owners.into_iter().collect::<Vec<_>>()[..] else {
        return None;
    };
    let group = &groups[gi];
    if group.serving.is_empty() {
        return None;
    }
    let family = AddressFamily::of(destination.addr());
    let gateways: Vec<IpAddr> = best
        .iter()
        .flat_map(|(r, _)| r.hops.iter().filter_map(|h| h.gateway))
        .filter(|g| AddressFamily::of(*g) == family)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let main_prefsrcs: BTreeSet<IpAddr> = best.iter().filter_map(|(r, _)| r.prefsrc).collect();
    let route = TableRoute {
        prefsrc: source_for(group, destination, &gateways, &main_prefsrcs),
        via: Via::Group(GroupKey::new(group.name.clone(), family, gateways)),
    };
    Some(((destination, kernel_metric(destination, metric)), route))
}

impl Plan {
    /// Puts `route` at `at`, with the group it goes through.
    fn set(&mut self, at: TableKey, mut route: TableRoute<GroupKey>, groups: &[GroupRouting]) {
        if let Via::Group(key) = &mut route.via {
            if let Some((shared, _)) = self.uses.get_key_value(key) {
                *key = shared.clone();
            }
            *self.uses.entry(key.clone()).or_default() += 1;
            if !self.groups.contains_key(key) {
                let serving = groups
                    .iter()
                    .find(|g| g.name == key.group)
                    .map(|g| g.serving.as_slice())
                    .unwrap_or_default();
                self.groups.insert(key.clone(), members(key, serving));
            }
        }
        if let Some(old) = self.routes.insert(at, route) {
            self.release(&old);
        }
    }

    /// Takes the route at `at` out; its group goes with its last route.
    fn unset(&mut self, at: TableKey) {
        if let Some(old) = self.routes.remove(&at) {
            self.release(&old);
        }
    }

    fn release(&mut self, route: &TableRoute<GroupKey>) {
        if let Via::Group(key) = &route.via
            && let Some(uses) = self.uses.get_mut(key)
        {
            *uses -= 1;
            if *uses == 0 {
                self.uses.remove(key);
                self.groups.remove(key);
            }
        }
    }

    /// Whether a group serves `destination`.
    fn serves(&self, destination: IpCidr) -> bool {
        self.routes
            .range((destination, 0)..=(destination, u32::MAX))
            .any(|(_, route)| matches!(route.via, Via::Group(_)))
    }

    /// Whether a group route's prefix holds `destination` (itself left out): one lookup per
    /// shorter prefix length, whatever the size of the table.
    fn covered(&self, destination: IpCidr) -> bool {
        (0..destination.prefix_len()).any(|len| {
            IpCidr::new(destination.addr(), len).is_ok_and(|outer| self.serves(outer.network()))
        })
    }

    /// Gives `destination` (a destination of main or of a group's own routes, not served)
    /// its throw where a group route's prefix holds it, and takes it away elsewhere; returns
    /// whether that changed the table.
    fn throw_if_covered(&mut self, destination: IpCidr, groups: &[GroupRouting]) -> bool {
        let at = (destination, kernel_metric(destination, 0));
        let has = self.routes.get(&at).is_some_and(|r| r.via == Via::Throw);
        let wanted = self.covered(destination);
        if wanted && !has {
            self.set(at, THROW, groups);
        } else if !wanted && has {
            self.unset(at);
        }
        wanted != has
    }

    /// The groups (by name) and families whose default route the plan serves.
    pub(crate) fn default_routes(&self) -> BTreeSet<(String, AddressFamily)> {
        [IpAddr::from([0u8; 4]), IpAddr::from([0u16; 8])]
            .into_iter()
            .filter_map(|any| IpCidr::new(any, 0).ok())
            .flat_map(|default| self.routes.range((default, 0)..=(default, u32::MAX)))
            .filter_map(|(_, route)| match &route.via {
                Via::Group(key) => Some((key.group.clone(), key.family)),
                Via::Throw => None,
            })
            .collect()
    }

    /// Re-forms every group of the plan over the NICs that serve its group now: after the
    /// groups changed, before their destinations are planned again ([`Plan::update`]).
    pub(crate) fn reform(&mut self, groups: &[GroupRouting]) {
        for (key, now) in &mut self.groups {
            let serving = groups
                .iter()
                .find(|g| g.name == key.group)
                .map(|g| g.serving.as_slice())
                .unwrap_or_default();
            *now = members(key, serving);
        }
    }

    /// The destinations the table has a route for after `after` (all: `None`), in order.
    pub(crate) fn destinations_after(
        &self,
        after: Option<IpCidr>,
    ) -> impl Iterator<Item = IpCidr> + '_ {
        table_destinations_after(&self.routes, after)
    }

    /// The table's keys at `destination`, of any metric.
    pub(crate) fn keys_at(&self, destination: IpCidr) -> Vec<TableKey> {
        self.routes
            .range((destination, 0)..=(destination, u32::MAX))
            .map(|(key, _)| *key)
            .collect()
    }

    /// Plans `destinations` anew, where the main table changed; the rest of the plan stays
    /// as it is, so a route change costs what it changes. The groups must be as when the
    /// plan was made. The destinations inside one that started or stopped being a group's
    /// must be planned again next, for their throws ([`inside`]): all of them may be many.
    pub(crate) fn update(
        &mut self,
        main: &MainTable,
        groups: &[GroupRouting],
        destinations: &BTreeSet<IpCidr>,
    ) -> Updated {
        let mut changed = BTreeSet::new();
        let mut flipped = Vec::new();
        let mut others = BTreeSet::new();
        for &destination in destinations {
            let was_served = self.serves(destination);
            for at in self.keys_at(destination) {
                self.unset(at);
                changed.insert(at);
            }
            let candidates: Vec<Candidate> = main
                .at(destination)
                .map(|r| candidate(r, groups))
                .chain(configured(groups).filter(|(r, _)| r.destination == destination))
                .collect();
            match served(destination, &candidates, groups) {
                Some((at, route)) => {
                    self.set(at, route, groups);
                    changed.insert(at);
                }
                None if !candidates.is_empty() => {
                    others.insert(destination);
                }
                None => {}
            }
            if was_served != self.serves(destination) {
                flipped.push(destination);
            }
        }
        for destination in others {
            if !self.serves(destination) && self.throw_if_covered(destination, groups) {
                changed.insert((destination, kernel_metric(destination, 0)));
            }
        }
        Updated {
            keys: changed,
            flipped,
        }
    }
}

/// What [`Plan::update`] changed.
pub(crate) struct Updated {
    /// The table keys that changed.
    pub keys: BTreeSet<TableKey>,
    /// The destinations that started or stopped being a group's.
    pub flipped: Vec<IpCidr>,
}

/// The destinations of the main table and of the groups' own routes inside `outer`, `outer`
/// itself left out.
pub(crate) fn inside(main: &MainTable, groups: &[GroupRouting], outer: IpCidr) -> BTreeSet<IpCidr> {
    let mut inner = main.inside(outer);
    inner.extend(
        configured(groups)
            .map(|(r, _)| r.destination)
            .filter(|d| *d != outer && outer.covers(*d)),
    );
    inner
}

/// Decides mpathd's table and nexthop groups from the main table and the groups at once: the
/// definition that [`Plan::update`], which mpathd runs a few thousand destinations at a time,
/// is held to.
#[cfg(test)]
pub(crate) fn plan<'a>(
    main: impl IntoIterator<Item = &'a MainRoute>,
    groups: &[GroupRouting],
) -> Plan {
    let mut by_destination: BTreeMap<IpCidr, Vec<Candidate>> = BTreeMap::new();
    let from_main = main.into_iter().map(|route| candidate(route, groups));
    for candidate in from_main.chain(configured(groups)) {
        by_destination
            .entry(candidate.0.destination)
            .or_default()
            .push(candidate);
    }
    let mut plan = Plan::default();
    for (destination, candidates) in &by_destination {
        if let Some((at, route)) = served(*destination, candidates, groups) {
            plan.set(at, route, groups);
        }
    }
    // Every other destination inside a group route's prefix is main's to answer.
    for destination in by_destination.keys() {
        if !plan.serves(*destination) {
            plan.throw_if_covered(*destination, groups);
        }
    }
    plan
}

/// The members of the nexthop group `key` when `serving` carry its group's routes: one
/// nexthop per serving NIC and gateway (on-link: one per NIC).
fn members(key: &GroupKey, serving: &[u32]) -> Vec<NexthopKey> {
    let hops: Vec<Option<IpAddr>> = if key.gateways.is_empty() {
        vec![None]
    } else {
        key.gateways.iter().copied().map(Some).collect()
    };
    serving
        .iter()
        .flat_map(|&oif| {
            hops.iter().map(move |&gateway| NexthopKey {
                family: key.family,
                oif,
                gateway,
            })
        })
        .collect()
}

/// A failover's route changes, made at once and without reading any routing table: the
/// nexthop groups of the last `plan` re-formed over the NICs that serve their group now
/// (and the single nexthops they need), as changes from `installed`. A group whose NICs all
/// went keeps its members: the next plan takes its routes away. Routes, prefsrcs and
/// deletions wait for that plan.
pub(crate) fn reform(
    plan: &Plan,
    groups: &[GroupRouting],
    book: &mut IdBook,
    installed: &RouteState,
) -> Vec<RouteChange> {
    let mut nexthops = Vec::new();
    let mut reformed = Vec::new();
    for key in plan.groups.keys() {
        let Some(group) = groups.iter().find(|g| g.name == key.group) else {
            continue;
        };
        let Some(id) = book.id(&NexthopObject::Group(key.clone())) else {
            continue;
        };
        let mut member_ids = Vec::new();
        for member in members(key, &group.serving) {
            let Some(member_id) = book.id(&NexthopObject::Single(member)) else {
                continue;
            };
            if installed.nexthops.get(&member_id) != Some(&member)
                && !nexthops.contains(&RouteChange::SetNexthop {
                    id: member_id,
                    key: member,
                })
            {
                nexthops.push(RouteChange::SetNexthop {
                    id: member_id,
                    key: member,
                });
            }
            member_ids.push(member_id);
        }
        member_ids.sort_unstable();
        if !member_ids.is_empty() && installed.groups.get(&id) != Some(&member_ids) {
            reformed.push(RouteChange::SetGroup {
                id,
                members: member_ids,
            });
        }
    }
    nexthops.extend(reformed);
    nexthops
}

/// The metric the kernel gives a route asked for with `metric`: IPv6 makes 0 into 1024
/// (IP6_RT_PRIO_USER). mpathd asks for that, so that it finds in its table what it asked for.
fn kernel_metric(destination: IpCidr, metric: u32) -> u32 {
    match (destination.addr(), metric) {
        (IpAddr::V6(_), 0) => 1024,
        _ => metric,
    }
}

/// The routes of `before` that the kernel deleted with their NIC: missing from `after`, each
/// hop through a NIC that `down` names the group of (a group NIC that lost its carrier or
/// left the host). The kernel deletes a NIC's routes when the NIC goes down or away (and
/// systemd-networkd deletes its routes on carrier loss), but in IPMP the routes belong to the
/// group: it keeps serving these, as if configured, until their owner adds them again.
pub(crate) fn orphaned<'a>(
    before: &[MainRoute],
    after: &[MainRoute],
    down: impl Fn(u32) -> Option<&'a str>,
) -> Vec<(&'a str, RouteConfig)> {
    let mut orphans = Vec::new();
    for route in before.iter().filter(|r| r.plain && !after.contains(r)) {
        let groups: BTreeSet<Option<&str>> = route.hops.iter().map(|h| down(h.oif)).collect();
        let [Some(group)] = groups.into_iter().collect::<Vec<_>>()[..] else {
            continue;
        };
        let vias: BTreeSet<Option<IpAddr>> = route.hops.iter().map(|h| h.gateway).collect();
        for via in vias {
            let held = RouteConfig {
                to: route.destination,
                via,
                metric: route.metric,
            };
            if !orphans.contains(&(group, held)) {
                orphans.push((group, held));
            }
        }
    }
    orphans
}

/// A route in `main` that keeps a group's subnet on-link through one of its NICs, at the
/// highest metric: the kernel's own prefix route (on the NIC holding the data address) wins
/// every lookup, but a NIC holding only its test address (failed, standby, its addresses
/// moved) still has the subnet, so that a route through it can be added at any time (a DHCP
/// client renewing the default route `via ROUTER dev NIC`), as the test address's netmask
/// keeps it in Solaris.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LinkRoute {
    pub destination: IpCidr,
    pub oif: u32,
    /// [`LINK_ROUTE_METRIC`] less the NIC's index: IPv4 keeps one route per destination and
    /// metric, so each NIC's has a metric of its own.
    pub metric: u32,
    /// A data address of the group in the subnet (IPv4): a lookup bound to the NIC must not
    /// pick its test address as the source.
    pub prefsrc: Option<IpAddr>,
}

/// The highest metric of [`LinkRoute`]s: after every other route to the subnet.
pub const LINK_ROUTE_METRIC: u32 = u32::MAX;

/// The link routes the groups want: each data subnet on each NIC of the group that is up
/// (the kernel refuses a route through a NIC that is down; without carrier it takes one).
/// The source is an IPv4 data address of the subnet that is on a NIC: the kernel refuses one
/// the host does not have.
pub(crate) fn link_routes(groups: &[GroupRouting], up: &[u32]) -> BTreeSet<LinkRoute> {
    let mut wanted = BTreeSet::new();
    for group in groups {
        let mut subnets: BTreeMap<IpCidr, Option<IpAddr>> = BTreeMap::new();
        for (address, on) in &group.addresses {
            let placed = address.addr().is_ipv4() && on.is_some();
            let source = subnets.entry(address.network()).or_default();
            if placed && source.is_none() {
                *source = Some(address.addr());
            }
        }
        for &oif in group.members.iter().filter(|oif| up.contains(oif)) {
            for (&destination, &prefsrc) in &subnets {
                wanted.insert(LinkRoute {
                    destination,
                    oif,
                    metric: LINK_ROUTE_METRIC.saturating_sub(oif),
                    prefsrc,
                });
            }
        }
    }
    wanted
}

/// Whether `main` has a route to `held`'s destination again through one of `members` (the
/// held route's group's NICs): its owner added it back, and the group need not hold it.
pub fn returned(held: &RouteConfig, main: &MainTable, members: &[u32]) -> bool {
    main.at(held.to)
        .any(|r| r.plain && !r.hops.is_empty() && r.hops.iter().all(|h| members.contains(&h.oif)))
}

/// Destinations a group never serves: link-local ones belong to one link each, and
/// multicast is joined per NIC. Lookups for them go on to `main`.
fn groupable(destination: IpCidr) -> bool {
    let (link_local, multicast) = match destination.addr() {
        IpAddr::V4(_) => ("169.254.0.0/16", "224.0.0.0/4"),
        IpAddr::V6(_) => ("fe80::/10", "ff00::/8"),
    };
    [link_local, multicast]
        .iter()
        .filter_map(|p| p.parse::<IpCidr>().ok())
        .all(|p| !p.covers(destination))
}

/// The preferred source of a group route. Through a gateway the kernel picks one per nexthop,
/// from the addresses of that nexthop's NIC: the data address in the gateway's subnet when
/// the NIC holds one, so each NIC's flows use its own address and replies come back spread
/// too. A serving NIC without such an address would give its test address, or an address of
/// another NIC of the host, and on-link the kernel takes a NIC's first address whatever it
/// is: then the route names a data address of the group.
/// IPv6 needs none: its test addresses are link-local, which the kernel never picks for a
/// global destination.
fn source_for(
    group: &GroupRouting,
    destination: IpCidr,
    gateways: &[IpAddr],
    main_prefsrcs: &BTreeSet<IpAddr>,
) -> Option<IpAddr> {
    if destination.addr().is_ipv6() {
        return None;
    }
    let fits = |cidr: &IpCidr| {
        cidr.addr().is_ipv4()
            && if gateways.is_empty() {
                cidr.contains(destination.addr())
            } else {
                gateways.iter().all(|g| cidr.contains(*g))
            }
    };
    // Through a gateway the kernel picks the address whose subnet holds the gateway; on-link
    // it picks the NIC's first address, which can be its test address: those always name one.
    let every_nic_has_one = group.serving.iter().all(|oif| {
        group
            .addresses
            .iter()
            .any(|(cidr, on)| *on == Some(*oif) && fits(cidr))
    });
    if every_nic_has_one && !gateways.is_empty() {
        return None;
    }
    let ours = |addr: IpAddr| {
        group
            .addresses
            .iter()
            .any(|(c, on)| c.addr() == addr && on.is_some())
    };
    // The lowest of main's that is the group's, not the first: the order of main's routes
    // is the order the kernel reported them in, and an address deleted and put back (as
    // NetworkManager does at `nmcli device reapply`) would change the route's source.
    main_prefsrcs
        .iter()
        .copied()
        .find(|a| ours(*a))
        .or_else(|| {
            let placed = || group.addresses.iter().filter(|(_, on)| on.is_some());
            placed()
                .find(|(c, _)| fits(c))
                .or_else(|| placed().find(|(c, _)| c.addr().is_ipv4()))
                .map(|(c, _)| c.addr())
        })
}

/// The first id of mpathd's nexthop objects ("mp" in its high bytes). Nexthop ids are shared
/// by everything on the host (FRR, administrators), so mpathd keeps to a range of its own.
pub(crate) const NEXTHOP_ID_BASE: u32 = 0x6d70_0000;

/// How many ids the range holds: far more than 16 groups of 16 NICs need.
pub(crate) const NEXTHOP_IDS: u32 = 0x1_0000;

/// A nexthop object mpathd keeps: a single nexthop or a group.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum NexthopObject {
    Single(NexthopKey),
    Group(GroupKey),
}

/// Stable ids for mpathd's nexthop objects: an object keeps its id for as long as it exists,
/// so a group replaced with other members is one message, and a restarted mpathd adopts the
/// ids it finds in the kernel.
#[derive(Clone, Debug, Default)]
pub(crate) struct IdBook {
    ids: BTreeMap<NexthopObject, u32>,
}

impl IdBook {
    /// Records an object found in the kernel under `id`.
    pub(crate) fn adopt(&mut self, object: NexthopObject, id: u32) {
        self.ids.insert(object, id);
    }

    /// The id of `object`, giving it the lowest free one of the range if it has none;
    /// `None` when the range is full.
    pub(crate) fn id(&mut self, object: &NexthopObject) -> Option<u32> {
        if let Some(id) = self.ids.get(object) {
            return Some(*id);
        }
        let taken: BTreeSet<u32> = self.ids.values().copied().collect();
        let id = (NEXTHOP_ID_BASE..NEXTHOP_ID_BASE + NEXTHOP_IDS).find(|id| !taken.contains(id))?;
        self.ids.insert(object.clone(), id);
        Some(id)
    }

    /// Forgets the objects `keep` does not name and `installed` has no longer, so their ids
    /// can be given out again. One whose deletion is still to be made keeps its id: a
    /// failover drops the deletions waiting, and the id given to another object would make
    /// the kernel replace the one still there with it (a nexthop with a group: refused).
    pub(crate) fn retain(&mut self, keep: &BTreeSet<NexthopObject>, installed: &RouteState) {
        self.ids.retain(|object, id| {
            keep.contains(object)
                || installed.nexthops.contains_key(id)
                || installed.groups.contains_key(id)
        });
    }
}

/// mpathd's routing state in the kernel's terms: objects and routes by id. Both what is
/// there (read from the kernel) and what should be (from a [`Plan`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteState {
    pub nexthops: BTreeMap<u32, NexthopKey>,
    /// Resilient groups by id with their members' ids, in ascending order.
    pub groups: BTreeMap<u32, Vec<u32>>,
    pub routes: BTreeMap<(IpCidr, u32), TableRoute<u32>>,
}

impl RouteState {
    /// The destinations of the table after `after` (all: `None`), in order.
    pub fn destinations_after(&self, after: Option<IpCidr>) -> impl Iterator<Item = IpCidr> + '_ {
        table_destinations_after(&self.routes, after)
    }

    /// The table's keys at `destination`, of any metric.
    pub fn keys_at(&self, destination: IpCidr) -> impl Iterator<Item = (IpCidr, u32)> + '_ {
        self.routes
            .range((destination, 0)..=(destination, u32::MAX))
            .map(|(key, _)| *key)
    }

    /// Records a change the kernel made.
    pub fn apply(&mut self, change: &RouteChange) {
        match change {
            RouteChange::SetNexthop { id, key } => {
                self.nexthops.insert(*id, *key);
            }
            RouteChange::SetGroup { id, members } => {
                let mut members = members.clone();
                members.sort_unstable();
                self.groups.insert(*id, members);
            }
            RouteChange::SetRoute {
                destination,
                metric,
                route,
            } => {
                self.routes.insert((*destination, *metric), route.clone());
            }
            RouteChange::DelRoute {
                destination,
                metric,
            } => {
                self.routes.remove(&(*destination, *metric));
            }
            RouteChange::DelNexthop { id } => {
                self.forget_nexthop(*id);
            }
        }
    }

    /// A nexthop object deleted: taken out of the groups that had it, as the kernel does. A
    /// group left empty goes too, and the routes through a deleted group with it. Returns
    /// whether the object was known.
    ///
    /// The routes are looked at only when a group went: a failover deletes single nexthops,
    /// which mpathd's routes never name, and must not cost a walk of a table of any size.
    pub fn forget_nexthop(&mut self, id: u32) -> bool {
        let single = self.nexthops.remove(&id).is_some();
        let mut gone: Vec<u32> = self.groups.remove(&id).map(|_| id).into_iter().collect();
        for (group, members) in &mut self.groups {
            members.retain(|m| *m != id);
            if members.is_empty() {
                gone.push(*group);
            }
        }
        for group in &gone {
            self.groups.remove(group);
        }
        let known = single || gone.first() == Some(&id);
        if !gone.is_empty() {
            self.routes
                .retain(|_, route| !matches!(route.via, Via::Group(g) if gone.contains(&g)));
        }
        known
    }

    /// The kernel deletes the nexthops through a NIC that lost its link (taken down, no
    /// carrier, removed) without a notification: forgets them like [`Self::forget_nexthop`].
    pub fn forget_nexthops_through(&mut self, oif: u32) {
        let through: Vec<u32> = self
            .nexthops
            .iter()
            .filter(|(_, key)| key.oif == oif)
            .map(|(id, _)| *id)
            .collect();
        for id in through {
            self.forget_nexthop(id);
        }
    }

    /// The kernel's terms of a plan, with ids from `book` (objects the plan no longer names
    /// are forgotten there, after the new ones got ids of their own). An object without an id (the range is full) is left out, with
    /// the routes through it.
    #[cfg(test)]
    pub(crate) fn of_plan(plan: &Plan, book: &mut IdBook) -> RouteState {
        let mut wanted: BTreeSet<NexthopObject> = BTreeSet::new();
        for (key, members) in &plan.groups {
            wanted.insert(NexthopObject::Group(key.clone()));
            wanted.extend(members.iter().copied().map(NexthopObject::Single));
        }
        let mut state = RouteState::default();
        let mut group_ids = BTreeMap::new();
        for (key, members) in &plan.groups {
            let mut member_ids: Vec<u32> = members
                .iter()
                .filter_map(|m| {
                    let id = book.id(&NexthopObject::Single(*m))?;
                    state.nexthops.insert(id, *m);
                    Some(id)
                })
                .collect();
            // The kernel keeps a group's members in no order mpathd relies on.
            member_ids.sort_unstable();
            if let Some(id) = book.id(&NexthopObject::Group(key.clone()))
                && !member_ids.is_empty()
            {
                state.groups.insert(id, member_ids);
                group_ids.insert(key, id);
            }
        }
        for (destination, route) in &plan.routes {
            let via = match &route.via {
                Via::Throw => Via::Throw,
                Via::Group(key) => match group_ids.get(key) {
                    Some(id) => Via::Group(*id),
                    None => continue,
                },
            };
            let route = TableRoute {
                via,
                prefsrc: route.prefsrc,
            };
            state.routes.insert(*destination, route);
        }
        // Forgotten only now, so that no new object got the id of one still installed.
        book.retain(&wanted, &RouteState::default());
        state
    }
}

/// One change to the kernel's nexthops or mpathd's table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteChange {
    /// Creates or replaces a single nexthop.
    SetNexthop {
        id: u32,
        key: NexthopKey,
    },
    /// Creates a resilient group or replaces its members (one message: only the buckets of
    /// members that left move).
    SetGroup {
        id: u32,
        members: Vec<u32>,
    },
    SetRoute {
        destination: IpCidr,
        metric: u32,
        route: TableRoute<u32>,
    },
    DelRoute {
        destination: IpCidr,
        metric: u32,
    },
    /// Deletes a group or a single nexthop.
    DelNexthop {
        id: u32,
    },
}

/// The changes that turn `installed` into `desired`, in an order the kernel accepts and that
/// never leaves a route without a way out: nexthops before the groups that use them, groups
/// before the routes through them; deletions after, routes first. A group is never emptied
/// by deleting its members first (the kernel would delete the group and its routes).
#[cfg(test)]
pub fn changes(installed: &RouteState, desired: &RouteState) -> Vec<RouteChange> {
    let mut changes = Vec::new();
    for (id, key) in &desired.nexthops {
        if installed.nexthops.get(id) != Some(key) {
            changes.push(RouteChange::SetNexthop { id: *id, key: *key });
        }
    }
    for (id, members) in &desired.groups {
        if installed.groups.get(id) != Some(members) {
            let members = members.clone();
            changes.push(RouteChange::SetGroup { id: *id, members });
        }
    }
    for ((destination, metric), route) in &desired.routes {
        if installed.routes.get(&(*destination, *metric)) != Some(route) {
            changes.push(RouteChange::SetRoute {
                destination: *destination,
                metric: *metric,
                route: route.clone(),
            });
        }
    }
    for (destination, metric) in installed.routes.keys() {
        if !desired.routes.contains_key(&(*destination, *metric)) {
            changes.push(RouteChange::DelRoute {
                destination: *destination,
                metric: *metric,
            });
        }
    }
    for id in installed.groups.keys() {
        if !desired.groups.contains_key(id) {
            changes.push(RouteChange::DelNexthop { id: *id });
        }
    }
    for id in installed.nexthops.keys() {
        if !desired.nexthops.contains_key(id) {
            changes.push(RouteChange::DelNexthop { id: *id });
        }
    }
    changes
}

/// Changes waiting to be made, in an order the kernel accepts (see [`changes`]): nexthops
/// and groups first, then routes, then the deletions of nexthop objects once no route change
/// waits. A later plan's change of a route takes the place of the one waiting for it.
#[derive(Debug, Default)]
pub(crate) struct ChangeQueue {
    nexthops: VecDeque<RouteChange>,
    /// Each route's change: the route to set, or `None` to delete it.
    routes: BTreeMap<TableKey, Option<TableRoute<u32>>>,
    deletions: VecDeque<RouteChange>,
}

/// A change of one route of mpathd's table: the route to set, or `None` to delete it.
pub(crate) type TableChange = (TableKey, Option<TableRoute<u32>>);

impl From<TableChange> for RouteChange {
    fn from(((destination, metric), route): TableChange) -> RouteChange {
        match route {
            Some(route) => RouteChange::SetRoute {
                destination,
                metric,
                route,
            },
            None => RouteChange::DelRoute {
                destination,
                metric,
            },
        }
    }
}

impl ChangeQueue {
    pub(crate) fn len(&self) -> usize {
        self.nexthops.len() + self.routes.len() + self.deletions.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A partial plan's changes ([`changes_at`]): its nexthop changes and deletions take the
    /// place of those waiting, each route change that of the one waiting for its route; the
    /// routes at `keys` it has no change for need none any more.
    pub(crate) fn merge(&mut self, changes: Vec<RouteChange>, keys: &BTreeSet<TableKey>) {
        self.drop_nexthop_changes();
        for at in keys {
            self.routes.remove(at);
        }
        for change in changes {
            match change {
                RouteChange::SetNexthop { .. } | RouteChange::SetGroup { .. } => {
                    self.nexthops.push_back(change)
                }
                RouteChange::SetRoute {
                    destination,
                    metric,
                    route,
                } => {
                    self.routes.insert((destination, metric), Some(route));
                }
                RouteChange::DelRoute {
                    destination,
                    metric,
                } => {
                    self.routes.insert((destination, metric), None);
                }
                RouteChange::DelNexthop { .. } => self.deletions.push_back(change),
            }
        }
    }

    /// Drops the waiting changes of nexthop objects: a failover made its own, and the next
    /// plan lists what is still due.
    pub(crate) fn drop_nexthop_changes(&mut self) {
        self.nexthops.clear();
        self.deletions.clear();
    }

    /// The next change to make.
    pub(crate) fn pop(&mut self) -> Option<RouteChange> {
        if let Some(change) = self.nexthops.pop_front() {
            return Some(change);
        }
        if let Some(change) = self.routes.pop_first() {
            return Some(change.into());
        }
        self.deletions.pop_front()
    }

    /// The next route changes, up to `count`, when they are next: none while a nexthop
    /// object waits to be made first. They can be made together.
    pub(crate) fn pop_routes(&mut self, count: usize) -> Vec<TableChange> {
        if !self.nexthops.is_empty() {
            return Vec::new();
        }
        std::iter::from_fn(|| self.routes.pop_first())
            .take(count)
            .collect()
    }
}

/// The changes that bring the kernel from `installed` to `plan` when only the routes at
/// `keys` and the nexthop groups can differ (after [`Plan::update`]): what [`changes`] finds
/// for the whole table, at the cost of what changed. Objects `plan` no longer names are
/// forgotten in `book`, after their deletion is listed.
pub(crate) fn changes_at(
    plan: &Plan,
    groups: &[GroupRouting],
    keys: &BTreeSet<TableKey>,
    book: &mut IdBook,
    installed: &RouteState,
) -> Vec<RouteChange> {
    let mut changes = reform(plan, groups, book, installed);
    let mut deletions = Vec::new();
    for at in keys {
        let desired = plan.routes.get(at).and_then(|route| {
            let via = match &route.via {
                Via::Throw => Via::Throw,
                Via::Group(key) => Via::Group(book.id(&NexthopObject::Group(key.clone()))?),
            };
            Some(TableRoute {
                via,
                prefsrc: route.prefsrc,
            })
        });
        let (destination, metric) = *at;
        match (desired, installed.routes.get(at)) {
            (Some(route), now) if now != Some(&route) => changes.push(RouteChange::SetRoute {
                destination,
                metric,
                route,
            }),
            (None, Some(_)) => deletions.push(RouteChange::DelRoute {
                destination,
                metric,
            }),
            _ => {}
        }
    }
    changes.extend(deletions);
    let mut wanted: BTreeSet<NexthopObject> = BTreeSet::new();
    for (key, members) in &plan.groups {
        wanted.insert(NexthopObject::Group(key.clone()));
        wanted.extend(members.iter().copied().map(NexthopObject::Single));
    }
    let wanted_ids: BTreeSet<u32> = wanted.iter().filter_map(|o| book.id(o)).collect();
    for id in installed.groups.keys().chain(installed.nexthops.keys()) {
        if !wanted_ids.contains(id) {
            changes.push(RouteChange::DelNexthop { id: *id });
        }
    }
    book.retain(&wanted, installed);
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    const H0: u32 = 10;
    const H1: u32 = 11;
    const H2: u32 = 12;
    /// A NIC in no group (a management NIC).
    const M0: u32 = 20;

    fn cidr(text: &str) -> IpCidr {
        text.parse().unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn route(destination: &str, metric: u32, hops: &[(u32, Option<&str>)]) -> MainRoute {
        MainRoute {
            destination: cidr(destination),
            metric,
            tos: 0,
            plain: true,
            prefsrc: None,
            hops: hops
                .iter()
                .map(|(oif, gateway)| Hop {
                    oif: *oif,
                    gateway: gateway.map(ip),
                })
                .collect(),
        }
    }

    /// The lab's group: h0 and h1 active with a data address each, h2 a standby.
    fn group(serving: &[u32]) -> GroupRouting {
        GroupRouting {
            name: "g0".into(),
            members: vec![H0, H1, H2],
            serving: serving.to_vec(),
            addresses: vec![
                (cidr("192.0.2.20/24"), Some(H0)),
                (cidr("192.0.2.21/24"), Some(H1)),
                (cidr("2001:db8::20/64"), Some(H0)),
            ],
            configured: Vec::new(),
        }
    }

    /// The main table of a host whose DHCP client put the default route on h1.
    fn dhcp_host() -> Vec<MainRoute> {
        vec![
            route("0.0.0.0/0", 100, &[(H1, Some("192.0.2.1"))]),
            MainRoute {
                prefsrc: Some(ip("192.0.2.20")),
                ..route("192.0.2.0/24", 0, &[(H0, None)])
            },
            MainRoute {
                prefsrc: Some(ip("192.0.2.21")),
                ..route("192.0.2.0/24", 0, &[(H1, None)])
            },
        ]
    }

    fn key(group: &str, family: AddressFamily, gateways: &[&str]) -> GroupKey {
        GroupKey::new(
            group.into(),
            family,
            gateways.iter().map(|g| ip(g)).collect(),
        )
    }

    fn nexthop(oif: u32, gateway: Option<&str>) -> NexthopKey {
        NexthopKey {
            family: AddressFamily::of(gateway.map(ip).unwrap_or(ip("0.0.0.0"))),
            oif,
            gateway: gateway.map(ip),
        }
    }

    #[test]
    fn the_default_route_of_one_nic_is_served_by_every_usable_nic() {
        let plan = plan(&dhcp_host(), &[group(&[H0, H1])]);
        let default = key("g0", AddressFamily::Inet, &["192.0.2.1"]);
        assert_eq!(
            plan.groups[&default],
            vec![
                nexthop(H0, Some("192.0.2.1")),
                nexthop(H1, Some("192.0.2.1"))
            ]
        );
        assert_eq!(
            plan.routes[&(cidr("0.0.0.0/0"), 100)],
            TableRoute {
                via: Via::Group(default),
                // Both NICs hold a data address in the gateway's subnet: each uses its own.
                prefsrc: None,
            }
        );
        let on_link = key("g0", AddressFamily::Inet, &[]);
        assert_eq!(
            plan.groups[&on_link],
            vec![nexthop(H0, None), nexthop(H1, None)]
        );
        assert_eq!(
            plan.routes[&(cidr("192.0.2.0/24"), 0)],
            TableRoute {
                via: Via::Group(on_link),
                // On-link the kernel would take each NIC's first address, maybe its test
                // address: the route names main's source.
                prefsrc: Some(ip("192.0.2.20")),
            }
        );
        assert_eq!(plan.routes.len(), 2, "{plan:#?}");
        assert_eq!(
            plan.default_routes(),
            BTreeSet::from([("g0".to_string(), AddressFamily::Inet)])
        );
        let without: Vec<MainRoute> = dhcp_host().into_iter().skip(1).collect();
        assert!(
            super::plan(&without, &[group(&[H0, H1])])
                .default_routes()
                .is_empty()
        );
    }

    #[test]
    fn a_failover_that_takes_the_addresses_along_plans_no_route_again() {
        // h1 failed and the standby h2 took its address over.
        let before = group(&[H0, H1]);
        let mut after = group(&[H0, H2]);
        after.addresses[1].1 = Some(H2);
        assert_eq!(before.route_inputs(), after.route_inputs());
        let main = dhcp_host();
        assert_eq!(plan(&main, &[before]).routes, plan(&main, &[after]).routes);
        // A standby serving before an address moved to it changes the sources; a group
        // without a serving NIC loses its routes.
        for other in [group(&[H0, H1, H2]), group(&[])] {
            assert_ne!(group(&[H0, H1]).route_inputs(), other.route_inputs());
            assert_ne!(
                plan(&main, &[group(&[H0, H1])]).routes,
                plan(&main, &[other]).routes
            );
        }
    }

    #[test]
    fn a_serving_nic_without_a_data_address_makes_the_route_name_a_source() {
        // h2 took over as a standby before any address moved to it: the kernel would pick
        // its test address for flows through it.
        let plan = plan(&dhcp_host(), &[group(&[H0, H1, H2])]);
        assert_eq!(
            plan.routes[&(cidr("0.0.0.0/0"), 100)].prefsrc,
            Some(ip("192.0.2.20"))
        );
        // The prefix route keeps the source main's route named.
        assert_eq!(
            plan.routes[&(cidr("192.0.2.0/24"), 0)].prefsrc,
            Some(ip("192.0.2.20"))
        );
    }

    #[test]
    fn the_source_named_is_a_placed_data_address_of_the_group() {
        let mut g = group(&[H0, H2]);
        g.addresses[0].1 = None;
        let main = vec![MainRoute {
            prefsrc: Some(ip("192.0.2.99")),
            ..route("0.0.0.0/0", 0, &[(H0, Some("192.0.2.1"))])
        }];
        let plan = plan(&main, &[g]);
        assert_eq!(
            plan.routes[&(cidr("0.0.0.0/0"), 0)].prefsrc,
            Some(ip("192.0.2.21"))
        );
    }

    #[test]
    fn main_keeps_the_destinations_inside_a_group_route_that_are_not_the_groups() {
        let mut main = dhcp_host();
        main.push(route("203.0.113.0/24", 0, &[(M0, None)]));
        main.push(route("198.51.100.0/24", 50, &[(M0, Some("203.0.113.1"))]));
        main.push(route("198.51.100.0/24", 60, &[(H0, Some("192.0.2.1"))]));
        let plan = plan(&main, &[group(&[H0, H1])]);
        for destination in ["203.0.113.0/24", "198.51.100.0/24"] {
            assert_eq!(
                plan.routes[&(cidr(destination), 0)].via,
                Via::Throw,
                "{destination}"
            );
        }
        assert!(!plan.routes.contains_key(&(cidr("198.51.100.0/24"), 60)));
    }

    #[test]
    fn a_tie_with_a_route_through_another_nic_is_left_to_main() {
        let mut main = dhcp_host();
        main.push(route("0.0.0.0/0", 100, &[(M0, Some("203.0.113.1"))]));
        let plan = plan(&main, &[group(&[H0, H1])]);
        assert!(!plan.routes.contains_key(&(cidr("0.0.0.0/0"), 100)));
        // Nothing covers the prefix route's siblings now but the prefix route itself.
        assert_eq!(plan.routes.len(), 1, "{plan:#?}");
    }

    #[test]
    fn a_better_route_through_a_group_nic_wins_over_a_worse_one_elsewhere() {
        let mut main = dhcp_host();
        main.push(route("0.0.0.0/0", 200, &[(M0, Some("203.0.113.1"))]));
        let plan = plan(&main, &[group(&[H0, H1])]);
        assert!(matches!(
            plan.routes[&(cidr("0.0.0.0/0"), 100)].via,
            Via::Group(_)
        ));
    }

    #[test]
    fn ipv6_router_advertisements_on_every_nic_make_one_group_route() {
        let main = vec![
            route("::/0", 1024, &[(H0, Some("fe80::1"))]),
            route("::/0", 1024, &[(H1, Some("fe80::1"))]),
            route("2001:db8::/64", 256, &[(H0, None)]),
            route("fe80::/64", 256, &[(H0, None)]),
            route("fe80::/64", 256, &[(H1, None)]),
        ];
        let plan = plan(&main, &[group(&[H0, H1])]);
        let default = key("g0", AddressFamily::Inet6, &["fe80::1"]);
        assert_eq!(
            plan.groups[&default],
            vec![nexthop(H0, Some("fe80::1")), nexthop(H1, Some("fe80::1"))]
        );
        assert_eq!(
            plan.routes[&(cidr("::/0"), 1024)],
            TableRoute {
                via: Via::Group(default),
                prefsrc: None
            }
        );
        // Link-local destinations belong to one link each: main answers them. IPv6 gives a
        // route asked for with metric 0 the metric 1024.
        assert_eq!(plan.routes[&(cidr("fe80::/64"), 1024)].via, Via::Throw);
        let on_link = key("g0", AddressFamily::Inet6, &[]);
        assert_eq!(
            plan.routes[&(cidr("2001:db8::/64"), 256)].via,
            Via::Group(on_link)
        );
    }

    #[test]
    fn routes_of_a_group_without_a_serving_nic_stay_main_s() {
        let plan = plan(&dhcp_host(), &[group(&[])]);
        assert_eq!(plan, Plan::default());
    }

    #[test]
    fn routes_through_nics_of_two_groups_or_none_are_not_served() {
        let mut other = group(&[30]);
        other.name = "g1".into();
        other.members = vec![30];
        let main = vec![
            route(
                "198.51.100.0/24",
                0,
                &[(H0, Some("192.0.2.1")), (30, Some("192.0.2.1"))],
            ),
            route("203.0.113.0/24", 0, &[]),
        ];
        let plan = plan(&main, &[group(&[H0]), other]);
        assert_eq!(plan, Plan::default());
    }

    #[test]
    fn a_multipath_route_over_group_nics_is_served_through_the_group() {
        let main = vec![route(
            "198.51.100.0/24",
            0,
            &[(H0, Some("192.0.2.1")), (H1, Some("192.0.2.2"))],
        )];
        let plan = plan(&main, &[group(&[H0, H1])]);
        let both = key("g0", AddressFamily::Inet, &["192.0.2.1", "192.0.2.2"]);
        assert_eq!(plan.groups[&both].len(), 4);
    }

    #[test]
    fn a_route_through_a_gateway_of_the_other_family_stays_main_s() {
        let main = vec![route("0.0.0.0/0", 0, &[(H0, Some("fe80::1"))])];
        assert_eq!(plan(&main, &[group(&[H0, H1])]), Plan::default());
    }

    #[test]
    fn configured_routes_are_served_without_a_route_in_main() {
        let mut g = group(&[H0, H1]);
        g.configured.push(RouteConfig {
            to: cidr("0.0.0.0/0"),
            via: Some(ip("192.0.2.1")),
            metric: 0,
        });
        g.configured.push(RouteConfig {
            to: cidr("2001:db8:ff::/64"),
            via: Some(ip("fe80::1")),
            metric: 0,
        });
        let plan = plan(&[], &[g]);
        assert_eq!(
            plan.routes[&(cidr("0.0.0.0/0"), 0)].via,
            Via::Group(key("g0", AddressFamily::Inet, &["192.0.2.1"]))
        );
        assert_eq!(
            plan.routes[&(cidr("2001:db8:ff::/64"), 1024)].via,
            Via::Group(key("g0", AddressFamily::Inet6, &["fe80::1"]))
        );
    }

    #[test]
    fn serving_nics_are_the_usable_ones_with_carrier() {
        let nic = |ifindex, usable, carrier| NicRouting {
            ifindex,
            usable,
            carrier,
        };
        let nics = [
            nic(H0, true, true),
            nic(H1, false, true),
            nic(H2, true, false),
        ];
        assert_eq!(serving(&nics, SpreadMode::Routes), vec![H0]);
        let nics = [nic(H0, true, true), nic(H1, true, true)];
        assert_eq!(serving(&nics, SpreadMode::Routes), vec![H0, H1]);
        assert_eq!(serving(&nics, SpreadMode::Datapath), vec![H0]);
        // A failed group keeps its routes on the NICs that have carrier.
        let failed = [nic(H0, false, false), nic(H1, false, true)];
        assert_eq!(serving(&failed, SpreadMode::Routes), vec![H1]);
        let dark = [nic(H0, false, false)];
        assert_eq!(serving(&dark, SpreadMode::Routes), Vec::<u32>::new());
    }

    #[test]
    fn objects_keep_their_ids_and_free_ones_are_reused() {
        let mut book = IdBook::default();
        let a = NexthopObject::Single(nexthop(H0, None));
        let b = NexthopObject::Single(nexthop(H1, None));
        assert_eq!(book.id(&a), Some(NEXTHOP_ID_BASE));
        assert_eq!(book.id(&b), Some(NEXTHOP_ID_BASE + 1));
        assert_eq!(book.id(&a), Some(NEXTHOP_ID_BASE));
        // Not while the kernel has it still (its deletion waits).
        let mut installed = RouteState::default();
        installed
            .nexthops
            .insert(NEXTHOP_ID_BASE, nexthop(H0, None));
        book.retain(&[b.clone()].into(), &installed);
        let c = NexthopObject::Group(key("g0", AddressFamily::Inet, &[]));
        assert_eq!(book.id(&c), Some(NEXTHOP_ID_BASE + 2));
        book.retain(&[b.clone()].into(), &RouteState::default());
        assert_eq!(book.id(&a), Some(NEXTHOP_ID_BASE));
        book.adopt(a.clone(), NEXTHOP_ID_BASE + 7);
        assert_eq!(book.id(&a), Some(NEXTHOP_ID_BASE + 7));
    }

    fn state_of(serving: &[u32], book: &mut IdBook) -> RouteState {
        RouteState::of_plan(&plan(&dhcp_host(), &[group(serving)]), book)
    }

    #[test]
    fn nothing_changes_when_the_kernel_has_the_plan() {
        let mut book = IdBook::default();
        let state = state_of(&[H0, H1], &mut book);
        assert_eq!(state.groups.len(), 2);
        assert_eq!(state.nexthops.len(), 4);
        assert!(changes(&state, &state).is_empty());
    }

    #[test]
    fn a_failover_replaces_each_group_once_and_then_deletes_the_nic_s_nexthops() {
        let mut book = IdBook::default();
        let before = state_of(&[H0, H1], &mut book);
        let after = state_of(&[H0], &mut book);
        let changes = changes(&before, &after);
        let groups: Vec<&RouteChange> = changes
            .iter()
            .filter(|c| matches!(c, RouteChange::SetGroup { .. }))
            .collect();
        assert_eq!(groups.len(), 2, "{changes:#?}");
        let deletions: Vec<usize> = changes
            .iter()
            .enumerate()
            .filter(|(_, c)| matches!(c, RouteChange::DelNexthop { .. }))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(deletions.len(), 2, "h1's two nexthops: {changes:#?}");
        assert!(deletions.iter().all(|&i| i >= groups.len()));
        assert!(
            !changes
                .iter()
                .any(|c| matches!(c, RouteChange::SetRoute { .. })),
            "routes keep their group: {changes:#?}"
        );
        // Failback: the nexthops first, then the groups.
        let back = state_of(&[H0, H1], &mut book);
        let changes = super::changes(&after, &back);
        assert!(matches!(changes[0], RouteChange::SetNexthop { .. }));
        assert!(matches!(changes[1], RouteChange::SetNexthop { .. }));
        assert!(matches!(changes[2], RouteChange::SetGroup { .. }));
        assert_eq!(changes.len(), 4, "{changes:#?}");
    }

    #[test]
    fn a_route_that_leaves_main_leaves_the_table_before_its_group() {
        let mut book = IdBook::default();
        let before = state_of(&[H0, H1], &mut book);
        let main: Vec<MainRoute> = dhcp_host().into_iter().skip(1).collect();
        let after = RouteState::of_plan(&plan(&main, &[group(&[H0, H1])]), &mut book);
        let changes = changes(&before, &after);
        assert_eq!(
            changes[0],
            RouteChange::DelRoute {
                destination: cidr("0.0.0.0/0"),
                metric: 100
            }
        );
        assert_eq!(
            changes.len(),
            1 + 1 + 2,
            "route, group, two nexthops: {changes:#?}"
        );
    }

    #[test]
    fn routes_the_kernel_deleted_with_a_nic_are_held_by_the_group_until_they_return() {
        let before = dhcp_host();
        // h1 went down: the kernel deleted its default route and its prefix route.
        let after = vec![before[1].clone()];
        let down = |oif| (oif == H1).then_some("g0");
        let held = orphaned(&before, &after, down);
        assert_eq!(
            held,
            vec![
                (
                    "g0",
                    RouteConfig {
                        to: cidr("0.0.0.0/0"),
                        via: Some(ip("192.0.2.1")),
                        metric: 100
                    }
                ),
                (
                    "g0",
                    RouteConfig {
                        to: cidr("192.0.2.0/24"),
                        via: None,
                        metric: 0
                    }
                ),
            ]
        );
        // A route an administrator deleted while its NIC was up is gone for good.
        assert!(orphaned(&before, &after, |_| None).is_empty());
        // The DHCP client adds the default route again, on h0 this time.
        let default = held[0].1;
        let table = |routes: &[MainRoute]| routes.iter().cloned().collect::<MainTable>();
        assert!(!returned(&default, &table(&after), &[H0, H1, H2]));
        let again = table(&[route("0.0.0.0/0", 100, &[(H0, Some("192.0.2.1"))])]);
        assert!(returned(&default, &again, &[H0, H1, H2]));
        assert!(
            !returned(&default, &again, &[H1, H2]),
            "through another group's NIC"
        );
        // Held routes are served like configured ones.
        let mut g = group(&[H0]);
        g.configured = held.iter().map(|(_, r)| *r).collect();
        let plan = plan(&after, &[g]);
        assert!(matches!(
            plan.routes[&(cidr("0.0.0.0/0"), 100)].via,
            Via::Group(_)
        ));
    }

    /// Carries out `changes` on `state` as the kernel would.
    fn applied(mut state: RouteState, changes: &[RouteChange]) -> RouteState {
        for change in changes {
            state.apply(change);
        }
        state
    }

    #[test]
    fn a_failover_re_forms_the_groups_at_once_and_the_plan_then_agrees() {
        let mut book = IdBook::default();
        let groups = [group(&[H0, H1])];
        let before = plan(&dhcp_host(), &groups);
        let installed = RouteState::of_plan(&before, &mut book);
        // h1 fails: the groups lose it, in one message each, and no route is touched.
        let after = [group(&[H0])];
        let reformed = reform(&before, &after, &mut book, &installed);
        assert_eq!(reformed.len(), 2, "{reformed:?}");
        assert!(
            reformed
                .iter()
                .all(|c| matches!(c, RouteChange::SetGroup { members, .. } if members.len() == 1)),
            "{reformed:?}"
        );
        let now = applied(installed.clone(), &reformed);
        assert_eq!(now.routes, installed.routes);
        // The plan that follows has only h1's nexthops left to delete.
        let desired = RouteState::of_plan(&plan(&dhcp_host(), &after), &mut book);
        let rest = changes(&now, &desired);
        assert!(
            rest.iter()
                .all(|c| matches!(c, RouteChange::DelNexthop { id } if now.nexthops[id].oif == H1)),
            "{rest:?}"
        );
        assert_eq!(rest.len(), 2);
        // h1 comes back: its nexthops are made again before the groups take it.
        let back = reform(&before, &groups, &mut book, &applied(now, &rest));
        assert!(
            matches!(
                back[..],
                [
                    RouteChange::SetNexthop { .. },
                    RouteChange::SetNexthop { .. },
                    RouteChange::SetGroup { .. },
                    RouteChange::SetGroup { .. },
                ]
            ),
            "{back:?}"
        );
    }

    #[test]
    fn a_group_whose_nics_all_went_keeps_its_members_until_the_plan() {
        let mut book = IdBook::default();
        let before = plan(&dhcp_host(), &[group(&[H0, H1])]);
        let installed = RouteState::of_plan(&before, &mut book);
        assert!(reform(&before, &[group(&[])], &mut book, &installed).is_empty());
    }

    #[test]
    fn a_failed_nic_s_nexthops_leave_their_groups_and_every_route_stays() {
        let mut book = IdBook::default();
        let mut state = state_of(&[H0, H1], &mut book);
        let routes = state.routes.clone();
        let h1: Vec<u32> = state
            .nexthops
            .iter()
            .filter(|(_, k)| k.oif == H1)
            .map(|(id, _)| *id)
            .collect();
        assert!(!h1.is_empty());
        state.forget_nexthops_through(H1);
        assert!(state.nexthops.values().all(|k| k.oif == H0));
        assert!(
            state
                .groups
                .values()
                .all(|members| !members.is_empty() && members.iter().all(|m| !h1.contains(m))),
            "{:?}",
            state.groups
        );
        assert_eq!(state.routes, routes, "no group emptied: no route goes");
        // The kernel's notification of a deletion already recorded changes nothing.
        assert!(!state.forget_nexthop(h1[0]));
        assert_eq!(state.routes, routes);
    }

    #[test]
    fn a_deleted_nexthop_leaves_its_groups_and_an_emptied_group_takes_its_routes() {
        let mut book = IdBook::default();
        let mut state = state_of(&[H0], &mut book);
        let routes = state.routes.len();
        assert!(state.groups.values().all(|m| m.len() == 1));
        let (gateway_id, _) = state
            .nexthops
            .iter()
            .find(|(_, k)| k.gateway.is_some())
            .map(|(id, k)| (*id, *k))
            .unwrap();
        assert!(state.forget_nexthop(gateway_id));
        assert!(!state.forget_nexthop(gateway_id), "already gone");
        assert_eq!(state.groups.len(), 1, "the default route's group emptied");
        assert_eq!(state.routes.len(), routes - 1, "{:?}", state.routes);
        state.forget_nexthops_through(H0);
        assert!(state.nexthops.is_empty() && state.groups.is_empty());
        assert!(state.routes.values().all(|r| r.via == Via::Throw));
    }

    #[test]
    fn the_main_table_keeps_each_nic_s_route_of_a_shared_subnet_and_tells_what_changed() {
        let mut table: MainTable = dhcp_host().into_iter().collect();
        assert_eq!(table.iter().count(), 3);
        assert_eq!(table.at(cidr("192.0.2.0/24")).count(), 2);
        assert_eq!(table.take_delta(), MainDelta::default());
        // A route replaced, then put back: no change at all.
        let default = dhcp_host()[0].clone();
        let moved = route("0.0.0.0/0", 100, &[(H0, Some("192.0.2.1"))]);
        table.add(moved.clone(), true);
        assert_eq!(table.at(cidr("0.0.0.0/0")).collect::<Vec<_>>(), [&moved]);
        table.add(default.clone(), true);
        let delta = table.take_delta();
        assert!(
            delta.before.is_empty() && delta.after.is_empty(),
            "{delta:?}"
        );
        assert_eq!(delta.touched, BTreeSet::from([cidr("0.0.0.0/0")]));
        // h1 leaves: its connected route and the default route go, h0's stays.
        table.remove_through(H1);
        let delta = table.take_delta();
        assert_eq!(delta.before.len(), 2, "{delta:?}");
        assert!(delta.after.is_empty());
        assert_eq!(table.iter().count(), 1);
    }

    #[test]
    fn probe_selection_sees_each_router_once_however_many_routes_use_it() {
        let mut table: MainTable = dhcp_host().into_iter().collect();
        for i in 0..1000u32 {
            let [_, _, b, c] = i.to_be_bytes();
            table.add(
                route(&format!("10.0.{b}.{c}/32"), 0, &[(H1, Some("192.0.2.1"))]),
                false,
            );
        }
        table.add(route("198.51.100.7/32", 0, &[(H0, None)]), false);
        let entries: Vec<RouteEntry> = table.probe_entries().collect();
        let router = RouteEntry {
            destination: cidr("0.0.0.0/0"),
            gateway: Some(ip("192.0.2.1")),
            oif: H1,
        };
        let host = RouteEntry {
            destination: cidr("198.51.100.7/32"),
            gateway: None,
            oif: H0,
        };
        assert_eq!(entries, [router, host]);
        // The router stays while any route names it.
        table.remove(&dhcp_host()[0]);
        assert_eq!(table.probe_entries().count(), 2);
        table.remove_through(H1);
        assert_eq!(table.probe_entries().collect::<Vec<_>>(), [host]);
    }

    #[test]
    fn ipv6_next_hops_come_and_go_one_at_a_time() {
        let mut table = MainTable::default();
        let one = route("2001:db8:1::/64", 1024, &[(H0, Some("fe80::1"))]);
        let both = route(
            "2001:db8:1::/64",
            1024,
            &[(H0, Some("fe80::1")), (H1, Some("fe80::1"))],
        );
        table.add(one.clone(), false);
        // The kernel announces the whole route when a next hop is appended.
        table.add(both.clone(), false);
        assert_eq!(table.iter().collect::<Vec<_>>(), [&both]);
        // ...and only the next hop when one is deleted.
        table.remove(&route("2001:db8:1::/64", 1024, &[(H1, Some("fe80::1"))]));
        assert_eq!(table.iter().collect::<Vec<_>>(), [&one]);
        table.remove(&one);
        assert_eq!(table.iter().count(), 0);
        let delta = table.take_delta();
        assert!(
            delta.before.is_empty() && delta.after.is_empty(),
            "{delta:?}"
        );
    }

    #[test]
    fn a_nic_taken_down_loses_the_routes_a_dump_no_longer_shows() {
        let mut table: MainTable = dhcp_host().into_iter().collect();
        // IPv4 deleted h1's routes: the dump filtered by h1 finds none.
        table.replace_through(H1, []);
        assert_eq!(
            table.iter().map(|r| r.hops[0].oif).collect::<Vec<_>>(),
            [H0]
        );
        let delta = table.take_delta();
        assert_eq!((delta.before.len(), delta.after.len()), (2, 0));
        // A source address gone takes its routes along.
        table.remove_with_source(ip("192.0.2.20"));
        assert_eq!(table.iter().count(), 0);
    }

    #[test]
    fn throws_are_found_for_a_large_table_by_their_covering_prefix() {
        // 20,000 host routes through a NIC outside the group, under the group's default
        // route: each needs a throw, found without comparing every pair.
        let mut main = dhcp_host();
        for i in 0..20_000u32 {
            let [_, a, b, c] = i.to_be_bytes();
            let to = format!("10.{a}.{b}.{c}/32");
            main.push(route(&to, 0, &[(M0, None)]));
        }
        let plan = plan(&main, &[group(&[H0, H1])]);
        let throws = plan.routes.values().filter(|r| r.via == Via::Throw).count();
        assert_eq!(throws, 20_000);
    }

    /// A small deterministic generator of the changes the incremental plan is checked on.
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) as usize % n
        }
    }

    /// Updates `planned` at `destinations`, then at the destinations inside each that started
    /// or stopped being a group's, as mpathd does over the turns of its loop.
    fn update_fully(
        planned: &mut Plan,
        main: &MainTable,
        groups: &[GroupRouting],
        destinations: &BTreeSet<IpCidr>,
    ) -> BTreeSet<TableKey> {
        let mut updated = planned.update(main, groups, destinations);
        let mut keys = updated.keys;
        while let Some(outer) = updated.flipped.pop() {
            let next = planned.update(main, groups, &inside(main, groups, outer));
            keys.extend(next.keys);
            updated.flipped.extend(next.flipped);
        }
        keys
    }

    #[test]
    fn every_nic_with_its_link_keeps_each_data_subnet_with_a_data_address_as_source() {
        let mut g = group(&[H0, H1]);
        // An address on no NIC is no source: the first placed one is.
        g.addresses.insert(0, (cidr("192.0.2.30/24"), None));
        let wanted = link_routes(&[g], &[H0, H2]);
        let expected: BTreeSet<LinkRoute> = [H0, H2]
            .into_iter()
            .flat_map(|oif| {
                [
                    LinkRoute {
                        destination: cidr("192.0.2.0/24"),
                        oif,
                        metric: u32::MAX - oif,
                        prefsrc: Some(ip("192.0.2.20")),
                    },
                    LinkRoute {
                        destination: cidr("2001:db8::/64"),
                        oif,
                        metric: u32::MAX - oif,
                        prefsrc: None,
                    },
                ]
            })
            .collect();
        assert_eq!(wanted, expected);
        assert!(link_routes(&[], &[H0]).is_empty());
    }

    #[test]
    fn an_updated_plan_and_its_changes_match_a_whole_plan_after_every_change() {
        let mut g = group(&[H0, H1]);
        g.configured = vec![RouteConfig {
            to: cidr("198.51.100.0/24"),
            via: Some(ip("192.0.2.1")),
            metric: 0,
        }];
        let groups = [g];
        let destinations = [
            "0.0.0.0/0",
            "10.0.0.0/8",
            "10.1.0.0/16",
            "10.1.2.0/24",
            "10.1.2.3/32",
            "192.0.2.0/24",
            "192.0.2.128/25",
            "198.51.100.0/24",
            "198.51.100.7/32",
            "::/0",
            "2001:db8::/48",
            "2001:db8::/64",
            "2001:db8::1/128",
        ];
        let v4_hops = [
            (H0, Some("192.0.2.1")),
            (H1, Some("192.0.2.1")),
            (H1, Some("192.0.2.2")),
            (H0, None),
            (M0, Some("198.51.100.1")),
        ];
        let v6_hops = [
            (H0, Some("fe80::1")),
            (H1, Some("fe80::1")),
            (H0, None),
            (M0, Some("fe80::2")),
        ];
        let mut rng = Lcg(7);
        let mut main: MainTable = dhcp_host().into_iter().collect();
        let mut book = IdBook::default();
        let mut planned = plan(main.iter(), &groups);
        let mut installed = RouteState::of_plan(&planned, &mut book);
        for step in 0..3000 {
            let destination = destinations[rng.below(destinations.len())];
            let hops: &[(u32, Option<&str>)] = if destination.contains(':') {
                &v6_hops
            } else {
                &v4_hops
            };
            let first = rng.below(hops.len());
            let count = 1 + rng.below(2).min(hops.len() - first - 1);
            let changed = route(
                destination,
                [0, 100][rng.below(2)],
                &hops[first..first + count],
            );
            if rng.below(3) == 0 {
                main.remove(&changed);
            } else {
                main.add(changed, rng.below(2) == 0);
            }
            let delta = main.take_delta();
            let touched: BTreeSet<IpCidr> = delta
                .before
                .iter()
                .chain(&delta.after)
                .map(|r| r.destination)
                .collect();
            let keys = update_fully(&mut planned, &main, &groups, &touched);
            assert_eq!(planned, plan(main.iter(), &groups), "step {step}");
            let made = changes_at(&planned, &groups, &keys, &mut book, &installed);
            installed = applied(installed, &made);
            assert_eq!(
                installed,
                RouteState::of_plan(&planned, &mut book.clone()),
                "step {step}"
            );
        }
    }

    #[test]
    fn a_plan_re_formed_and_swept_after_a_failover_is_the_plan_of_the_new_groups() {
        let mut main = dhcp_host();
        main.push(route("10.0.0.0/8", 0, &[(M0, Some("198.51.100.1"))]));
        let table: MainTable = main.iter().cloned().collect();
        let mut book = IdBook::default();
        for (before, after) in [(&[H0, H1][..], &[H0][..]), (&[H0], &[]), (&[], &[H1])] {
            let mut planned = plan(&main, &[group(before)]);
            let mut installed = RouteState::of_plan(&planned, &mut book);
            let groups = [group(after)];
            planned.reform(&groups);
            let every: BTreeSet<IpCidr> = table
                .destinations_after(None)
                .chain(planned.destinations_after(None))
                .collect();
            let mut keys = planned.update(&table, &groups, &every).keys;
            for destination in &every {
                keys.extend(installed.keys_at(*destination));
            }
            assert_eq!(planned, plan(&main, &groups), "{before:?} to {after:?}");
            let made = changes_at(&planned, &groups, &keys, &mut book, &installed);
            installed = applied(installed, &made);
            assert_eq!(installed, RouteState::of_plan(&planned, &mut book.clone()));
        }
    }

    #[test]
    fn a_later_plan_s_change_of_a_route_takes_the_place_of_the_waiting_one() {
        let set = |metric: u32, via: Via<u32>| RouteChange::SetRoute {
            destination: cidr("10.0.0.0/8"),
            metric,
            route: TableRoute { via, prefsrc: None },
        };
        let mut queue = ChangeQueue::default();
        queue.merge(
            vec![
                RouteChange::SetNexthop {
                    id: 1,
                    key: nexthop(H0, None),
                },
                set(0, Via::Group(2)),
                RouteChange::DelNexthop { id: 9 },
                RouteChange::SetGroup {
                    id: 2,
                    members: vec![1],
                },
            ],
            &BTreeSet::new(),
        );
        assert_eq!(queue.len(), 4);
        // Routes wait for the nexthop objects before them.
        assert!(queue.pop_routes(64).is_empty());
        queue.merge(vec![set(0, Via::Throw)], &[(cidr("10.0.0.0/8"), 0)].into());
        // The nexthop changes of the earlier plan are out of date with it.
        assert_eq!(queue.pop(), Some(set(0, Via::Throw)));
        assert_eq!(queue.pop(), None);
        queue.merge(
            vec![RouteChange::DelNexthop { id: 9 }, set(0, Via::Throw)],
            &BTreeSet::new(),
        );
        let routes = queue.pop_routes(64);
        assert_eq!(routes.len(), 1, "routes before deletions");
        assert_eq!(RouteChange::from(routes[0].clone()), set(0, Via::Throw));
        assert!(queue.pop_routes(64).is_empty());
        assert_eq!(queue.pop(), Some(RouteChange::DelNexthop { id: 9 }));
    }
}
