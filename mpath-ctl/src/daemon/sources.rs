//! The source hook (see [`crate::core::sources`]): attached or detached as `sources`
//! says, its destinations kept in line with mpathd's table and its sources with the groups'
//! placed addresses.

use std::collections::{BTreeMap, BTreeSet};

use mpath_common::sources::SourceClass;

use crate::{
    config::SourceSelection,
    core::{routes::Plan, sources},
    daemon::Daemon,
    datapath::sources::cgroup2_root,
};

/// What mpathd knows of its source hook.
#[derive(Default)]
pub(super) struct SourceHook {
    /// Attached now: the kernel runs it for new sockets.
    pub attached: bool,
    /// Groups whose surplus addresses were already reported.
    overflowing: BTreeSet<String>,
}

impl Daemon {
    /// Attaches the hook to the root of the cgroup hierarchy, so that it serves every
    /// process of the host, or detaches it (an earlier mpathd's too), as the configuration
    /// says. When it cannot be attached mpathd runs on and the kernel picks the sources.
    pub(super) fn set_up_source_hook(&mut self) {
        self.source_hook.attached = match self.config.daemon.sources {
            SourceSelection::Spread => {
                let attached = cgroup2_root()
                    .map_err(|e| e.to_string())
                    .and_then(|cgroup| {
                        self.datapath
                            .attach_source_hook(&cgroup)
                            .map_err(|e| with_causes(&e))?;
                        Ok(cgroup)
                    });
                match attached {
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
                }
            }
            SourceSelection::Kernel => {
                match self.datapath.detach_source_hook() {
                    Ok(()) => tracing::info!("sources left to the kernel (no source hook)"),
                    Err(e) => tracing::error!("detaching the source hook: {e}"),
                }
                false
            }
        };
    }

    /// Gives the hook the destinations of mpathd's table as `plan` has them.
    pub(super) fn update_source_routes(&mut self, plan: &Plan) {
        let ids: BTreeMap<&str, u32> = self.groups.iter().map(|g| (g.name(), g.id)).collect();
        let routes = sources::routes(plan)
            .into_iter()
            .filter_map(|(prefix, group)| match group {
                Some(name) => ids.get(name.as_str()).map(|id| (prefix, Some(*id))),
                None => Some((prefix, None)),
            })
            .collect();
        if let Err(e) = self.datapath.maps.sources.write_routes(&routes) {
            tracing::error!("giving the source hook mpathd's routes: {e}");
        }
    }

    /// Gives the hook each group's placed data addresses.
    pub(super) fn update_sources(&mut self) {
        for g in self.groups.iter() {
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
                if let Err(e) =
                    self.datapath
                        .maps
                        .sources
                        .write_sources(g.id, class, sources.of(class))
                {
                    tracing::error!("giving the source hook group {name}'s sources: {e}");
                }
            }
        }
    }

    /// Forgets the sources of group ids no group has now (an earlier mpathd's, a group a
    /// reload removed), so that their addresses are never chosen again.
    pub(super) fn forget_retired_sources(&mut self) {
        let ids: Vec<u32> = self.groups.iter().map(|g| g.id).collect();
        if let Err(e) = self.datapath.maps.sources.clear_other_groups(&ids) {
            tracing::error!("clearing the source hook's retired groups: {e}");
        }
    }
}

/// An error with those of its causes its message does not already include (a failed system
/// call names its errno only in its cause).
fn with_causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        cause = c.source();
    }
    text
}
