//! Group routes (see [`crate::core::routes`]): reading what mpathd has in the kernel, and
//! carrying out the changes that bring it to the plan.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    time::{Duration, Instant},
};

use crate::{
    config::RouteConfig,
    core::routes::{
        self, Family, GroupKey, GroupRouting, IdBook, MainRoute, NexthopKey, NexthopObject,
        NicRouting, RouteChange, RouteState,
    },
    daemon::Daemon,
    net::netlink::{MPATHD_PROTOCOL, Netlink},
    net::nexthop::{IpFamily, Nexthop, NexthopError, NexthopKind, Nexthops},
};

/// Buckets of each resilient nexthop group: a NIC that leaves takes its share of them along,
/// and with 256 the shares of up to 16 NICs stay within a few percent of even.
const NEXTHOP_BUCKETS: u16 = 256;

/// How long a bucket must carry no packet before it may go back to a NIC that returned: long
/// enough that a flow is not moved in the middle of a burst, short enough that a repaired
/// NIC soon carries its share again.
const IDLE_TIMER: Duration = Duration::from_secs(3);

/// How long route changes are gathered before the table is read again.
const ROUTE_DUMP_DELAY: Duration = Duration::from_millis(100);

/// What mpathd knows of the routing: the main table, its nexthop ids, and when to look again.
#[derive(Default)]
pub(super) struct Routing {
    /// The main table, kept current from netlink: where probe targets and group routes come
    /// from.
    pub main: Vec<MainRoute>,
    /// Ids of mpathd's nexthop objects.
    pub ids: IdBook,
    /// Group NICs removed since the routing table was last read, by ifindex and group: their
    /// routes went with them.
    pub departed: Vec<(u32, String)>,
    /// When the routing table is to be read again after it changed.
    pub due: Option<Instant>,
}

impl Routing {
    /// The routing table changed: it is read again shortly, once for a whole burst.
    pub fn changed(&mut self, now: Instant) {
        self.due.get_or_insert(now + ROUTE_DUMP_DELAY);
    }

    /// Every route of the main table, as probe target selection sees them.
    pub fn entries(&self) -> Vec<crate::core::target::RouteEntry> {
        self.main.iter().flat_map(MainRoute::entries).collect()
    }
}

impl Daemon {
    /// Reads the routing table again, gives the probers their on-link routers and the
    /// groups their routes. mpathd's rule is put back if someone deleted it.
    pub(super) async fn refresh_routes(&mut self) -> anyhow::Result<()> {
        self.routing.due = None;
        let main = self.netlink.main_routes().await?;
        self.take_main_routes(main);
        let local = self.local_addresses();
        for gi in 0..self.groups.len() {
            let routes = self.probe_routes(gi);
            let g = &mut self.groups[gi];
            let group_nics = g.ifindexes();
            for p in g.nics.iter_mut().flat_map(|n| &mut n.probing) {
                p.prober.update_routes(&routes, &group_nics, &local);
            }
        }
        let daemon = &self.config.daemon;
        if let Err(e) = self
            .netlink
            .ensure_rules(daemon.route_table, daemon.route_rule_priority)
            .await
        {
            tracing::error!("{e}");
        }
        self.update_routes().await;
        Ok(())
    }

    /// The routes group `gi`'s probers take their routers from: the main table's, and the
    /// group's own (`[[group.route]]` and those it holds), which are in no table a restarted
    /// mpathd could read them from before it serves them.
    pub(super) fn probe_routes(&self, gi: usize) -> Vec<crate::core::target::RouteEntry> {
        let mut routes = self.routing.entries();
        let g = &self.groups[gi];
        if let Some(&oif) = g.ifindexes().first() {
            let own = g.config.routes.iter().chain(&g.held_routes);
            routes.extend(routes::group_route_entries(own, oif));
        }
        routes
    }

    /// Brings mpathd's table and nexthop objects in line with the main table and the
    /// groups' usable NICs. Called when either may have changed; an unchanged plan costs two
    /// dumps and no change.
    pub(super) async fn update_routes(&mut self) {
        let installed = match self.installed_routes().await {
            Ok(installed) => installed,
            Err(e) => {
                tracing::error!("reading mpathd's routes: {e:#}");
                return;
            }
        };
        let plan = routes::plan(&self.routing.main, &self.group_routing());
        let desired = RouteState::of_plan(&plan, &mut self.routing.ids);
        let mut failed = BTreeSet::new();
        for change in routes::changes(&installed, &desired) {
            if let Err(e) = self.carry_out(&change, &mut failed).await {
                tracing::error!("{e:#}");
            }
        }
        self.update_source_routes(&plan);
        self.update_sources();
    }

    /// Takes the routing table just read: routes the kernel deleted with a group NIC that
    /// went down or away are held by the group, and held routes that are back in `main`
    /// through the group's NICs are its owner's again.
    pub(super) fn take_main_routes(&mut self, main: Vec<MainRoute>) {
        let before = std::mem::replace(&mut self.routing.main, main);
        let groups = &self.groups;
        let departed = std::mem::take(&mut self.routing.departed);
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
            routes::orphaned(&before, &self.routing.main, down)
                .into_iter()
                .map(|(group, route)| (group.to_string(), route))
                .collect();
        for (name, route) in orphans {
            let Some(gi) = self.groups.by_name(&name) else {
                continue;
            };
            let group = &mut self.groups[gi];
            if !group.held_routes.contains(&route) && !group.config.routes.contains(&route) {
                if is_data_prefix(group, &route) {
                    tracing::debug!(
                        "group {name} keeps the route {route}: the kernel deleted it with its NIC"
                    );
                } else {
                    tracing::info!(
                        "group {name} keeps the route {route}: the kernel deleted it with its NIC"
                    );
                }
                group.held_routes.push(route);
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
                !back
            });
        }
    }

    /// Each group as the route planner needs it.
    fn group_routing(&self) -> Vec<GroupRouting> {
        self.groups
            .iter()
            .map(|g| {
                let usable = g.fsm.usable_interfaces();
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
                let ifindex_of = |name: &str| g.ifindex_of(name);
                GroupRouting {
                    name: g.config.name.clone(),
                    members: nics.iter().map(|n| n.ifindex).collect(),
                    serving: routes::serving(&nics, g.config.spread),
                    addresses: g
                        .addresses
                        .iter()
                        .map(|a| (a.cidr, a.current.as_deref().and_then(ifindex_of)))
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
            .nexthops
            .dump()
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
                        family: match family {
                            IpFamily::V4 => Family::Inet,
                            IpFamily::V6 => Family::Inet6,
                        },
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
            self.nexthops.delete(id).await?;
        }
        state.routes = self
            .netlink
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
        Some(GroupKey {
            group: group.name().to_string(),
            family: first.family,
            gateways: gateways.into_iter().collect(),
        })
    }

    /// Carries out one change. Nexthops the kernel refused (a NIC that lost its carrier a
    /// moment ago) are left out of the groups that follow, and a group left with no member
    /// is not made, nor routes through it.
    async fn carry_out(
        &mut self,
        change: &RouteChange,
        failed: &mut BTreeSet<u32>,
    ) -> anyhow::Result<()> {
        let table = self.config.daemon.route_table;
        match change {
            RouteChange::SetNexthop { id, key } => {
                let nexthop = Nexthop {
                    id: *id,
                    protocol: MPATHD_PROTOCOL,
                    kind: NexthopKind::Single {
                        family: match key.family {
                            Family::Inet => IpFamily::V4,
                            Family::Inet6 => IpFamily::V6,
                        },
                        oif: key.oif,
                        gateway: key.gateway,
                        // An IPv4 gateway need not be in a subnet of the NIC's addresses:
                        // the group's NICs share one link. IPv6 gateways are link-local.
                        onlink: matches!(key.gateway, Some(IpAddr::V4(_))),
                    },
                };
                if let Err(e) = self.nexthops.replace(&nexthop).await {
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
                            "the group's routes{via} leave {nic} out for now: the kernel refused its nexthop ({e})"
                        );
                        return Ok(());
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
                    return Ok(());
                }
                let group = Nexthop {
                    id: *id,
                    protocol: MPATHD_PROTOCOL,
                    kind: NexthopKind::Resilient {
                        members,
                        buckets: NEXTHOP_BUCKETS,
                        idle_timer: IDLE_TIMER,
                        unbalanced_timer: Duration::ZERO,
                    },
                };
                if let Err(e) = self.nexthops.replace(&group).await {
                    failed.insert(*id);
                    return Err(e.into());
                }
            }
            RouteChange::SetRoute {
                destination,
                metric,
                route,
            } => {
                if matches!(route.via, routes::Via::Group(id) if failed.contains(&id)) {
                    return Ok(());
                }
                self.netlink
                    .set_table_route(table, *destination, *metric, route)
                    .await?;
            }
            RouteChange::DelRoute {
                destination,
                metric,
            } => {
                self.netlink
                    .del_table_route(table, *destination, *metric)
                    .await?;
            }
            RouteChange::DelNexthop { id } => {
                self.nexthops.delete(*id).await?;
            }
        }
        tracing::debug!("routes: {change:?}");
        Ok(())
    }
}

/// Whether `route` is the prefix route of one of the group's data addresses: the kernel
/// deletes it and makes it again as mpathd moves the address between NICs, which is routine
/// and logged at debug level only.
fn is_data_prefix(group: &super::group::GroupRuntime, route: &RouteConfig) -> bool {
    route.via.is_none() && group.addresses.iter().any(|a| a.cidr.network() == route.to)
}

/// Removes mpathd's routing from the host: its rules, the routes of its `table` and its
/// nexthop objects. Traffic then follows the main table's routes alone. For `mpathd
/// --teardown`; a running mpathd would put them back.
pub async fn remove_routes(table: u32) -> anyhow::Result<()> {
    let netlink = Netlink::connect()?;
    let nexthops = Nexthops::connect()?;
    netlink.del_rules().await?;
    for ((destination, metric), _) in netlink.table_routes(table).await? {
        netlink.del_table_route(table, destination, metric).await?;
    }
    let ours: Vec<Nexthop> = nexthops
        .dump()
        .await?
        .into_iter()
        .filter(|n| n.protocol == MPATHD_PROTOCOL)
        .collect();
    // Groups first: deleting their members first would make the kernel delete them anyway.
    let (groups, singles): (Vec<&Nexthop>, Vec<&Nexthop>) = ours
        .iter()
        .partition(|n| !matches!(n.kind, NexthopKind::Single { .. }));
    for nexthop in groups.into_iter().chain(singles) {
        nexthops.delete(nexthop.id).await?;
    }
    Ok(())
}
