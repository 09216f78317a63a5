//! The host side of checking a configuration (`core::host`): reading the links and
//! addresses it is checked against, for `--check`, start and reload.

use crate::{
    config::Config,
    core::host::{self, HostCheck, HostLink},
    net::netlink::{Netlink, Origin},
};

/// Checks `config` against the links and addresses of this network namespace; only reads.
/// `group_nics` are NICs that count as the groups' beside the configuration's.
pub async fn check_against_host(
    config: &Config,
    group_nics: &[String],
) -> anyhow::Result<HostCheck> {
    let netlink = Netlink::connect()?;
    let links: Vec<HostLink> = netlink
        .links()
        .await?
        .into_iter()
        .map(|l| HostLink {
            ifindex: l.ifindex,
            name: l.name,
        })
        .collect();
    // mpathd's own marks are its to remove, wherever they are (see `reconcile::unconfigured`).
    let addresses: Vec<_> = netlink
        .addresses_with_origin()
        .await?
        .into_iter()
        .filter(|(_, _, origin)| *origin != Origin::Mpathd)
        .map(|(ifindex, cidr, _)| (ifindex, cidr))
        .collect();
    Ok(host::check(config, &links, &addresses, group_nics))
}
