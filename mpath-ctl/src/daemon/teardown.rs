//! `mpathd --teardown` on the host's side: mpathd's rules, routes, nexthop objects and test
//! addresses go, over [`Rtnetlink`] alone (no datapath), so that scenario tests tear down the
//! in-memory host. Each step goes on past each failure, and every failure is returned.

use crate::{
    config::Config,
    daemon::host_io::{LiveRtnetlink, Rtnetlink},
    net::address::IpCidr,
    net::netlink::MPATHD_PROTOCOL,
    net::nexthop::{Nexthop, NexthopKind},
};

/// Removes mpathd's routing from the host: its rules, its on-link routes, the routes of its
/// `table` and its nexthop objects. Traffic then follows the main table's routes alone. A
/// running mpathd would put them back.
pub async fn remove_routes(table: u32) -> Result<(), Vec<anyhow::Error>> {
    let kernel = LiveRtnetlink::connect().map_err(|e| vec![e])?;
    into_result(remove_routes_from(&kernel, table).await)
}

/// Removes the configuration's test addresses from the NICs that hold them: they are
/// mpathd's alone, unlike the data addresses, which stay for the applications using them.
pub async fn remove_test_addresses(config: &Config) -> Result<(), Vec<anyhow::Error>> {
    let kernel = LiveRtnetlink::connect().map_err(|e| vec![e])?;
    into_result(remove_test_addresses_from(&kernel, config).await)
}

fn into_result(errors: Vec<anyhow::Error>) -> Result<(), Vec<anyhow::Error>> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// [`remove_routes`] on `kernel`; returns every failure.
pub(super) async fn remove_routes_from(kernel: &impl Rtnetlink, table: u32) -> Vec<anyhow::Error> {
    let mut errors: Vec<anyhow::Error> = Vec::new();
    if let Err(e) = kernel.del_rules().await {
        errors.extend(e.into_iter().map(anyhow::Error::from));
    }
    match kernel.link_routes().await {
        Ok(routes) => {
            for route in routes {
                let deleted = kernel.del_link_route(&route).await;
                errors.extend(deleted.err().map(anyhow::Error::from));
            }
        }
        Err(e) => errors.push(e.into()),
    }
    match kernel.table_routes(table).await {
        Ok(routes) => {
            for ((destination, metric), _) in routes {
                let deleted = kernel.del_table_route(table, destination, metric).await;
                errors.extend(deleted.err().map(anyhow::Error::from));
            }
        }
        Err(e) => errors.push(e.into()),
    }
    // After the routes, which use them.
    let nexthops = match kernel.nexthops().await {
        Ok(nexthops) => nexthops,
        Err(e) => {
            errors.push(e.into());
            return errors;
        }
    };
    let ours = nexthops.iter().filter(|n| n.protocol == MPATHD_PROTOCOL);
    // Groups first: deleting their members first would make the kernel delete them anyway.
    let (groups, singles): (Vec<&Nexthop>, Vec<&Nexthop>) =
        ours.partition(|n| !matches!(n.kind, NexthopKind::Single { .. }));
    for nexthop in groups.into_iter().chain(singles) {
        let deleted = kernel.delete_nexthop(nexthop.id).await;
        errors.extend(deleted.err().map(anyhow::Error::from));
    }
    errors
}

/// [`remove_test_addresses`] on `kernel`; returns every failure.
pub(super) async fn remove_test_addresses_from(
    kernel: &impl Rtnetlink,
    config: &Config,
) -> Vec<anyhow::Error> {
    let dumps =
        async { Ok::<_, anyhow::Error>((kernel.links().await?, kernel.addresses().await?)) };
    let (links, present) = match dumps.await {
        Ok(dumped) => dumped,
        Err(e) => return vec![e],
    };
    let mut errors = Vec::new();
    for interface in config.groups.iter().flat_map(|g| &g.interfaces) {
        let (Some(test), Some(link)) = (
            interface.test_address,
            links.iter().find(|l| l.name == interface.name),
        ) else {
            continue;
        };
        let host = IpCidr::from(test).host();
        if present.contains(&(link.ifindex, host))
            && let Err(e) = kernel.del_address(link.ifindex, host).await
        {
            errors.push(e.into());
        }
    }
    errors
}
