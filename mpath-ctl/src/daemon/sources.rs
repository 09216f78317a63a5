//! The source hook (see [`crate::core::sources`]): attached or detached as `sources`
//! says, its destinations kept in line with mpathd's table and its sources with the groups'
//! placed addresses.

use std::collections::{BTreeMap, BTreeSet};

use mpath_common::{map_names::SOURCE_ROUTES4, sources::SourceClass};

use crate::{
    api::metrics::SourcePrefixes,
    config::SourceSelection,
    core::identity::GroupId,
    core::{routes::Plan, sources},
    daemon::{Daemon, host_io::HostIo, logging::with_causes},
    datapath::sources::Served,
    net::address::IpCidr,
};

/// What mpathd knows of its source hook.
#[derive(Default)]
pub(super) struct SourceHook {
    /// Attached now: the kernel runs it for new sockets.
    pub attached: bool,
    /// Groups whose surplus addresses were already reported.
    overflowing: BTreeSet<String>,
    /// Route maps that leave some of mpathd's prefixes to the kernel, with the errno of why,
    /// as already reported.
    short: BTreeMap<&'static str, Option<i32>>,
    /// What the route maps held after the last write, for the metrics.
    pub prefixes: Vec<SourcePrefixes>,
}

impl SourceHook {
    /// Reports a route map that starts or stops serving all of mpathd's prefixes, or whose
    /// reason changes: once, not at every rewrite. True when it said something.
    fn report(&mut self, served: &Served) -> bool {
        let Served {
            map,
            limit,
            wanted,
            served,
            error,
        } = served;
        match error {
            Some(e) => {
                let news = self.short.insert(map, e.raw_os_error()) != Some(e.raw_os_error());
                if news {
                    tracing::warn!(
                        "the source hook's map {map} holds at most {limit} prefixes and serves {served} of mpathd's {wanted} ({e}): the kernel picks the sources for the destinations of the other {}",
                        wanted - served
                    );
                }
                news
            }
            None => {
                let news = self.short.remove(map).is_some();
                if news {
                    tracing::info!(
                        "the source hook's map {map} serves all {wanted} of mpathd's prefixes again"
                    );
                }
                news
            }
        }
    }
}

/// A route map's sizes, named by the family it serves.
fn prefixes(served: &Served) -> SourcePrefixes {
    SourcePrefixes {
        family: if served.map == SOURCE_ROUTES4 {
            "ipv4"
        } else {
            "ipv6"
        },
        limit: served.limit,
        wanted: served.wanted,
        served: served.served,
    }
}

impl<H: HostIo> Daemon<H> {
    /// Attaches the hook to the root of the cgroup hierarchy, so that it serves every
    /// process of the host, or detaches it (an earlier mpathd's too), as the configuration
    /// says. When it cannot be attached mpathd runs on and the kernel picks the sources.
    pub(super) fn set_up_source_hook(&mut self) {
        self.source_hook.attached = match self.config.daemon.sources {
            SourceSelection::Spread => match self.host.attach_source_hook() {
                Ok(cgroup) => {
                    tracing::info!(
                        "sources spread over each group's data addresses (source hook on cgroup {})",
                        cgroup.display()
                    );
                    true
                }
                Err(e) => {
                    tracing::warn!(
                        "sources are left to the kernel, which gives every IPv6 or on-link IPv4 connection of a group one data address: {e}"
                    );
                    false
                }
            },
            SourceSelection::Kernel => {
                match self.host.detach_source_hook() {
                    Ok(()) => tracing::info!("sources left to the kernel (no source hook)"),
                    Err(e) => tracing::error!("detaching the source hook: {e}"),
                }
                false
            }
        };
    }

    /// Gives the hook the destinations of mpathd's table as `plan` has them.
    pub(super) fn update_source_routes(&mut self, plan: &Plan) {
        let ids: BTreeMap<&str, u32> = self.groups.iter().map(|g| (g.name(), g.id.0)).collect();
        let routes = sources::routes(plan)
            .into_iter()
            .filter_map(|(prefix, group)| match group {
                Some(name) => ids.get(name.as_str()).map(|id| (prefix, Some(*id))),
                None => Some((prefix, None)),
            })
            .collect();
        match self.host.write_source_routes(&routes) {
            Ok(maps) => {
                for served in &maps {
                    self.source_hook.report(served);
                }
                self.source_hook.prefixes = maps.iter().map(prefixes).collect();
            }
            Err(e) => tracing::error!(
                "giving the source hook mpathd's routes: {}",
                with_causes(&e)
            ),
        }
    }

    /// Gives the hook the destinations `destinations` of mpathd's table as `plan` has them
    /// now, alone when the maps take that, else the whole table.
    pub(super) fn update_source_routes_at(
        &mut self,
        plan: &Plan,
        destinations: impl IntoIterator<Item = IpCidr>,
    ) {
        let ids: BTreeMap<&str, u32> = self.groups.iter().map(|g| (g.name(), g.id.0)).collect();
        let patch = destinations
            .into_iter()
            .map(|destination| {
                let entry = plan
                    .routes
                    .range((destination, 0)..=(destination, u32::MAX))
                    .next()
                    .and_then(|(_, route)| match sources::group_of(destination, route) {
                        Some(name) => ids.get(name.as_str()).map(|id| Some(*id)),
                        None => Some(None),
                    });
                (destination, entry)
            })
            .collect();
        if !self.host.patch_source_routes(&patch) {
            self.update_source_routes(plan);
        }
    }

    /// Gives the hook group `id`'s placed data addresses.
    pub(super) fn update_sources(&mut self, id: GroupId) {
        let g = &self.groups[id];
        let placed = g.addresses.iter().map(|a| (a.cidr, a.current.is_some()));
        let sources = sources::sources(placed);
        let name = g.name().to_owned();
        if !sources.overflowing {
            self.source_hook.overflowing.remove(&name);
        } else if self.source_hook.overflowing.insert(name.clone()) {
            tracing::warn!(
                "group {name} has more than {} data addresses of one kind (IPv4, IPv6 global, IPv6 unique local): the source hook chooses among the first {0} only",
                mpath_common::sources::MAX_SOURCES
            );
        }
        for class in SourceClass::ALL {
            if let Err(e) = self.host.write_sources(g.id, class, sources.of(class)) {
                tracing::error!(
                    "giving the source hook group {name}'s sources: {}",
                    with_causes(&e)
                );
            }
        }
    }

    /// Forgets the sources of group ids no group has now (an earlier mpathd's, a group a
    /// reload removed), so that their addresses are never chosen again.
    pub(super) fn forget_retired_sources(&mut self) {
        if let Err(e) = self.host.clear_other_groups_sources(&self.groups.ids()) {
            tracing::error!(
                "clearing the source hook's retired groups: {}",
                with_causes(&e)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use mpath_common::map_names::{SOURCE_ROUTES, SOURCE_ROUTES4};

    use super::*;

    fn served(map: &'static str, served: usize, errno: Option<i32>) -> Served {
        Served {
            map,
            limit: 8,
            wanted: 10,
            served,
            error: errno.map(io::Error::from_raw_os_error),
        }
    }

    #[test]
    fn a_route_map_short_of_room_is_reported_once_until_its_situation_changes() {
        let mut hook = SourceHook::default();
        assert!(!hook.report(&served(SOURCE_ROUTES4, 10, None)));
        assert!(hook.report(&served(SOURCE_ROUTES4, 7, Some(libc::ENOSPC))));
        // Rewrites that leave about as many out say nothing more.
        assert!(!hook.report(&served(SOURCE_ROUTES4, 7, Some(libc::ENOSPC))));
        assert!(!hook.report(&served(SOURCE_ROUTES4, 6, Some(libc::ENOSPC))));
        // The other map is on its own.
        assert!(hook.report(&served(SOURCE_ROUTES, 3, Some(libc::ENOSPC))));
        // Another reason is news, and so is serving all again.
        assert!(hook.report(&served(SOURCE_ROUTES4, 6, Some(libc::ENOMEM))));
        assert!(hook.report(&served(SOURCE_ROUTES4, 10, None)));
        assert!(!hook.report(&served(SOURCE_ROUTES4, 10, None)));
    }
}
