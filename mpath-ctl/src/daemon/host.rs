//! The host side of checking a configuration (`core::host`): reading the links and
//! addresses it is checked against, for `--check`, start and reload.

use crate::{
    config::Config,
    core::host::{self, HostCheck, HostLink},
    daemon::host_io::{LiveRtnetlink, Rtnetlink},
    net::address::IpCidr,
    net::netlink::{Link, Origin},
};

/// Checks `config` against the links and addresses of this network namespace; only reads.
/// `group_nics` are NICs that count as the groups' beside the configuration's.
pub async fn check_against_host(
    config: &Config,
    group_nics: &[String],
) -> anyhow::Result<HostCheck> {
    check_on(&LiveRtnetlink::connect()?, config, group_nics).await
}

/// Checks `config` against the links and addresses `kernel` has.
pub(super) async fn check_on(
    kernel: &impl Rtnetlink,
    config: &Config,
    group_nics: &[String],
) -> anyhow::Result<HostCheck> {
    let links = kernel.links().await?;
    let addresses = kernel.addresses_with_origin().await?;
    Ok(check_against(config, links, addresses, group_nics))
}

/// Checks `config` against `links` and `addresses` (with who made each).
fn check_against(
    config: &Config,
    links: Vec<Link>,
    addresses: Vec<(u32, IpCidr, Origin)>,
    group_nics: &[String],
) -> HostCheck {
    let links: Vec<HostLink> = links
        .into_iter()
        .map(|l| HostLink {
            ifindex: l.ifindex,
            name: l.name,
        })
        .collect();
    // mpathd's own marks are its to remove, wherever they are (see `reconcile::unconfigured`).
    let addresses: Vec<_> = addresses
        .into_iter()
        .filter(|(_, _, origin)| *origin != Origin::Mpathd)
        .map(|(ifindex, cidr, _)| (ifindex, cidr))
        .collect();
    host::check(config, &links, &addresses, group_nics)
}
