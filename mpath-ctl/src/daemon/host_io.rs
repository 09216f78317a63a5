//! The daemon's boundary with the host: everything the event loop reads from or does to the
//! kernel goes through [`HostIo`], so that the daemon itself can be driven without root and
//! a kernel (see the scenario tests). [`LiveHost`] is the real one, over `net` and
//! `datapath`; decisions stay in `core` and the daemon, never here.

use std::{
    collections::BTreeMap,
    io,
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    time::{Duration, Instant},
};

use mpath_common::{NicCounters, NicInfo, sources::SourceClass, sources::SourceCounters};

use crate::{
    config::ProbeRx,
    core::routes::{LinkRoute, MainRoute, TableRoute},
    core::spread::Table,
    daemon::announcer::Announcement,
    datapath::{
        self, Attached, Datapath, DatapathError,
        maps::MapsError,
        sources::{Served, cgroup2_root},
    },
    net::address::IpCidr,
    net::announce,
    net::carrier::{CarrierReader, CarrierWatch},
    net::multicast::{self, ByIfindex, IgmpVersion, Joins, MulticastError},
    net::netconf::Netconf,
    net::netlink::{AddressOptions, Link, Monitor, Netlink, NetlinkError, Origin},
    net::nexthop::{Nexthop, NexthopError, Nexthops},
    net::probe_socket::ProbeSocket,
};

/// Sends the probes of one NIC in one address family.
pub(crate) trait ProbeSender {
    /// Sends an echo request to `target`, tagged with `probe_key` and stamped `sent_ns`.
    fn send(&self, target: IpAddr, seq: u32, probe_key: [u64; 2], sent_ns: u64) -> io::Result<()>;
}

impl ProbeSender for ProbeSocket {
    fn send(&self, target: IpAddr, seq: u32, probe_key: [u64; 2], sent_ns: u64) -> io::Result<()> {
        ProbeSocket::send(self, target, seq, probe_key, sent_ns)
    }
}

/// What the daemon reads from and does to the host: the clock, links, addresses and routes
/// (rtnetlink), nexthop objects, the datapath's programs and maps, announcements, multicast
/// joins, probe sockets, the carrier watch and the `net` sysctls.
pub(crate) trait HostIo {
    /// Now, as the daemon's timers see it.
    fn now(&self) -> Instant;

    // Links and addresses.
    async fn links(&self) -> Result<Vec<Link>, NetlinkError>;
    async fn link(&self, name: &str) -> Result<Option<Link>, NetlinkError>;
    /// The ifindex the NIC `name` has right now.
    fn ifindex_of(&self, name: &str) -> Option<u32>;
    async fn addresses(&self) -> Result<Vec<(u32, IpCidr)>, NetlinkError>;
    /// Every global unicast address, with who made it.
    async fn addresses_by_origin(&self) -> Result<Vec<(u32, IpCidr, Origin)>, NetlinkError>;
    /// Every address, with who made it.
    async fn addresses_with_origin(&self) -> Result<Vec<(u32, IpCidr, Origin)>, NetlinkError>;
    async fn add_address(
        &self,
        ifindex: u32,
        cidr: IpCidr,
        options: AddressOptions,
    ) -> Result<(), NetlinkError>;
    async fn del_address(&self, ifindex: u32, cidr: IpCidr) -> Result<(), NetlinkError>;

    // Routes.
    async fn main_routes(&self) -> Result<Vec<MainRoute>, NetlinkError>;
    async fn main_routes_through(&self, oif: u32) -> Result<Vec<MainRoute>, NetlinkError>;
    async fn ensure_rules(&self, table: u32, priority: u32) -> Result<(), NetlinkError>;
    async fn table_routes(
        &self,
        table: u32,
    ) -> Result<Vec<((IpCidr, u32), TableRoute<u32>)>, NetlinkError>;
    async fn set_table_route(
        &self,
        table: u32,
        destination: IpCidr,
        metric: u32,
        route: &TableRoute<u32>,
    ) -> Result<(), NetlinkError>;
    async fn del_table_route(
        &self,
        table: u32,
        destination: IpCidr,
        metric: u32,
    ) -> Result<(), NetlinkError>;
    async fn link_routes(&self) -> Result<Vec<LinkRoute>, NetlinkError>;
    async fn set_link_route(&self, route: &LinkRoute) -> Result<(), NetlinkError>;
    async fn del_link_route(&self, route: &LinkRoute) -> Result<(), NetlinkError>;
    /// Makes again the kernel's route to a data address's prefix through `oif`, deleted by
    /// someone while the address stayed ([`crate::core::reconcile::prefix_route_lost`]).
    async fn restore_prefix_route(&self, oif: u32, route: &MainRoute) -> Result<(), NetlinkError>;
    /// Gives the event socket room for a notification per route.
    fn fit_monitor(&mut self, routes: usize);

    // Nexthop objects.
    async fn nexthops(&self) -> Result<Vec<Nexthop>, NexthopError>;
    async fn replace_nexthop(&self, nexthop: &Nexthop) -> Result<(), NexthopError>;
    async fn delete_nexthop(&self, id: u32) -> Result<bool, NexthopError>;

    // The datapath's programs.
    fn attach(&mut self, ifname: &str, probe_rx: ProbeRx) -> Result<Attached, DatapathError>;
    fn still_attached(&self, ifindex: u32) -> Result<bool, DatapathError>;
    /// Detaches the programs from a NIC and forgets it in the maps (logged, never fails).
    fn forget(&mut self, ifindex: u32);
    /// The NICs the programs are attached to, an earlier mpathd's included.
    fn pinned_nics(&self) -> Result<Vec<u32>, DatapathError>;
    /// Attaches the source hook to the root of the cgroup hierarchy, which it returns.
    fn attach_source_hook(&mut self) -> Result<PathBuf, String>;
    fn source_hook_attached(&self) -> Result<bool, DatapathError>;
    fn detach_source_hook(&mut self) -> Result<(), DatapathError>;

    // The datapath's maps.
    fn nic_info(&self, ifindex: u32) -> Result<NicInfo, MapsError>;
    fn set_nic(&mut self, ifindex: u32, info: NicInfo) -> Result<(), MapsError>;
    fn update_nic(
        &mut self,
        ifindex: u32,
        edit: impl FnOnce(&mut NicInfo),
    ) -> Result<(), MapsError>;
    fn set_routed(&mut self, ifindex: u32, routed: bool) -> Result<(), MapsError>;
    fn set_test_address(&mut self, addr: Ipv4Addr, ifindex: u32) -> Result<(), MapsError>;
    fn remove_test_address(&mut self, addr: Ipv4Addr) -> Result<(), MapsError>;
    fn table(&self, group: u32) -> Result<Table, MapsError>;
    fn write_table(
        &mut self,
        group: u32,
        table: &Table,
        mac_of: impl Fn(u32) -> [u8; 6],
    ) -> Result<usize, MapsError>;
    fn counters(&self, slot: u32) -> Result<NicCounters, MapsError>;
    fn replies_over_budget(&self, slot: u32) -> Result<u64, MapsError>;
    fn clear_counters(&mut self, slot: u32) -> Result<(), MapsError>;
    fn write_source_routes(
        &mut self,
        routes: &BTreeMap<IpCidr, Option<u32>>,
    ) -> Result<[Served; 2], MapsError>;
    fn patch_source_routes(&mut self, patch: &BTreeMap<IpCidr, Option<Option<u32>>>) -> bool;
    fn write_sources(
        &mut self,
        group: u32,
        class: SourceClass,
        addrs: &[IpCidr],
    ) -> Result<bool, MapsError>;
    fn clear_other_groups_sources(&mut self, groups: &[u32]) -> Result<(), MapsError>;
    fn source_counters(&self, group: u32) -> Result<SourceCounters, MapsError>;

    // Announcements, multicast memberships, probes.
    fn announce(&self, announcement: &Announcement) -> io::Result<()>;
    fn memberships(&self) -> Result<ByIfindex, MulticastError>;
    fn join(&mut self, ifindex: u32, group: IpAddr) -> Result<(), MulticastError>;
    fn leave(&mut self, ifindex: u32, group: IpAddr) -> Result<(), MulticastError>;
    /// Reports IPv4 `groups` to the switch from `ifindex`, in the IGMP version spoken there.
    fn report_v4(&self, ifindex: u32, groups: &[Ipv4Addr]) -> Result<IgmpVersion, MulticastError>;
    fn open_probe_socket(
        &self,
        ifname: &str,
        ifindex: u32,
        test: IpAddr,
    ) -> io::Result<Box<dyn ProbeSender>>;

    // The carrier watch.
    /// Has the watch read the NIC's carrier; an error when it cannot be read.
    fn watch_carrier(&mut self, ifname: &str, ifindex: u32, armed: bool) -> io::Result<()>;
    fn arm_carrier(&self, ifindex: u32, armed: bool);
    fn forget_carrier(&self, ifindex: u32);
    fn set_carrier_period(&self, period: Option<Duration>);

    /// The `net` sysctl tree.
    fn netconf(&self) -> Netconf;
}

/// The host itself: rtnetlink, the loaded datapath, raw and multicast sockets, sysfs and
/// `/proc/sys/net`.
pub(crate) struct LiveHost {
    pub datapath: Datapath,
    pub netlink: Netlink,
    pub monitor: Monitor,
    pub nexthops: Nexthops,
    pub carrier_watch: CarrierWatch,
    pub joins: Joins,
}

impl HostIo for LiveHost {
    fn now(&self) -> Instant {
        Instant::now()
    }

    async fn links(&self) -> Result<Vec<Link>, NetlinkError> {
        self.netlink.links().await
    }

    async fn link(&self, name: &str) -> Result<Option<Link>, NetlinkError> {
        self.netlink.link(name).await
    }

    fn ifindex_of(&self, name: &str) -> Option<u32> {
        datapath::ifindex_of(name).ok()
    }

    async fn addresses(&self) -> Result<Vec<(u32, IpCidr)>, NetlinkError> {
        self.netlink.addresses().await
    }

    async fn addresses_by_origin(&self) -> Result<Vec<(u32, IpCidr, Origin)>, NetlinkError> {
        self.netlink.addresses_by_origin().await
    }

    async fn addresses_with_origin(&self) -> Result<Vec<(u32, IpCidr, Origin)>, NetlinkError> {
        self.netlink.addresses_with_origin().await
    }

    async fn add_address(
        &self,
        ifindex: u32,
        cidr: IpCidr,
        options: AddressOptions,
    ) -> Result<(), NetlinkError> {
        self.netlink.add_address(ifindex, cidr, options).await
    }

    async fn del_address(&self, ifindex: u32, cidr: IpCidr) -> Result<(), NetlinkError> {
        self.netlink.del_address(ifindex, cidr).await
    }

    async fn main_routes(&self) -> Result<Vec<MainRoute>, NetlinkError> {
        self.netlink.main_routes().await
    }

    async fn main_routes_through(&self, oif: u32) -> Result<Vec<MainRoute>, NetlinkError> {
        self.netlink.main_routes_through(oif).await
    }

    async fn ensure_rules(&self, table: u32, priority: u32) -> Result<(), NetlinkError> {
        self.netlink.ensure_rules(table, priority).await
    }

    async fn table_routes(
        &self,
        table: u32,
    ) -> Result<Vec<((IpCidr, u32), TableRoute<u32>)>, NetlinkError> {
        self.netlink.table_routes(table).await
    }

    async fn set_table_route(
        &self,
        table: u32,
        destination: IpCidr,
        metric: u32,
        route: &TableRoute<u32>,
    ) -> Result<(), NetlinkError> {
        self.netlink
            .set_table_route(table, destination, metric, route)
            .await
    }

    async fn del_table_route(
        &self,
        table: u32,
        destination: IpCidr,
        metric: u32,
    ) -> Result<(), NetlinkError> {
        self.netlink
            .del_table_route(table, destination, metric)
            .await
    }

    async fn link_routes(&self) -> Result<Vec<LinkRoute>, NetlinkError> {
        self.netlink.link_routes().await
    }

    async fn set_link_route(&self, route: &LinkRoute) -> Result<(), NetlinkError> {
        self.netlink.set_link_route(route).await
    }

    async fn del_link_route(&self, route: &LinkRoute) -> Result<(), NetlinkError> {
        self.netlink.del_link_route(route).await
    }

    async fn restore_prefix_route(&self, oif: u32, route: &MainRoute) -> Result<(), NetlinkError> {
        self.netlink.restore_prefix_route(oif, route).await
    }

    fn fit_monitor(&mut self, routes: usize) {
        self.monitor.fit(routes);
    }

    async fn nexthops(&self) -> Result<Vec<Nexthop>, NexthopError> {
        self.nexthops.dump().await
    }

    async fn replace_nexthop(&self, nexthop: &Nexthop) -> Result<(), NexthopError> {
        self.nexthops.replace(nexthop).await
    }

    async fn delete_nexthop(&self, id: u32) -> Result<bool, NexthopError> {
        self.nexthops.delete(id).await
    }

    fn attach(&mut self, ifname: &str, probe_rx: ProbeRx) -> Result<Attached, DatapathError> {
        self.datapath.attach(ifname, probe_rx)
    }

    fn still_attached(&self, ifindex: u32) -> Result<bool, DatapathError> {
        self.datapath.still_attached(ifindex)
    }

    fn forget(&mut self, ifindex: u32) {
        self.datapath.forget(ifindex);
    }

    fn pinned_nics(&self) -> Result<Vec<u32>, DatapathError> {
        self.datapath.pinned_nics()
    }

    fn attach_source_hook(&mut self) -> Result<PathBuf, String> {
        let cgroup = cgroup2_root().map_err(|e| e.to_string())?;
        self.datapath
            .attach_source_hook(&cgroup)
            .map_err(|e| super::sources::with_causes(&e))?;
        Ok(cgroup)
    }

    fn source_hook_attached(&self) -> Result<bool, DatapathError> {
        self.datapath.source_hook_attached()
    }

    fn detach_source_hook(&mut self) -> Result<(), DatapathError> {
        self.datapath.detach_source_hook()
    }

    fn nic_info(&self, ifindex: u32) -> Result<NicInfo, MapsError> {
        self.datapath.maps.nic(ifindex)
    }

    fn set_nic(&mut self, ifindex: u32, info: NicInfo) -> Result<(), MapsError> {
        self.datapath.maps.set_nic(ifindex, info)
    }

    fn update_nic(
        &mut self,
        ifindex: u32,
        edit: impl FnOnce(&mut NicInfo),
    ) -> Result<(), MapsError> {
        self.datapath.maps.update_nic(ifindex, edit)
    }

    fn set_routed(&mut self, ifindex: u32, routed: bool) -> Result<(), MapsError> {
        self.datapath.maps.set_routed(ifindex, routed)
    }

    fn set_test_address(&mut self, addr: Ipv4Addr, ifindex: u32) -> Result<(), MapsError> {
        self.datapath.maps.set_test_address(addr, ifindex)
    }

    fn remove_test_address(&mut self, addr: Ipv4Addr) -> Result<(), MapsError> {
        self.datapath.maps.remove_test_address(addr)
    }

    fn table(&self, group: u32) -> Result<Table, MapsError> {
        self.datapath.maps.table(group)
    }

    fn write_table(
        &mut self,
        group: u32,
        table: &Table,
        mac_of: impl Fn(u32) -> [u8; 6],
    ) -> Result<usize, MapsError> {
        self.datapath.maps.write_table(group, table, mac_of)
    }

    fn counters(&self, slot: u32) -> Result<NicCounters, MapsError> {
        self.datapath.maps.counters(slot)
    }

    fn replies_over_budget(&self, slot: u32) -> Result<u64, MapsError> {
        self.datapath.maps.replies_over_budget(slot)
    }

    fn clear_counters(&mut self, slot: u32) -> Result<(), MapsError> {
        self.datapath.maps.clear_counters(slot)
    }

    fn write_source_routes(
        &mut self,
        routes: &BTreeMap<IpCidr, Option<u32>>,
    ) -> Result<[Served; 2], MapsError> {
        self.datapath.maps.sources.write_routes(routes)
    }

    fn patch_source_routes(&mut self, patch: &BTreeMap<IpCidr, Option<Option<u32>>>) -> bool {
        self.datapath.maps.sources.patch_routes(patch)
    }

    fn write_sources(
        &mut self,
        group: u32,
        class: SourceClass,
        addrs: &[IpCidr],
    ) -> Result<bool, MapsError> {
        self.datapath
            .maps
            .sources
            .write_sources(group, class, addrs)
    }

    fn clear_other_groups_sources(&mut self, groups: &[u32]) -> Result<(), MapsError> {
        self.datapath.maps.sources.clear_other_groups(groups)
    }

    fn source_counters(&self, group: u32) -> Result<SourceCounters, MapsError> {
        self.datapath.maps.sources.counters(group)
    }

    fn announce(&self, announcement: &Announcement) -> io::Result<()> {
        let Announcement { ifindex, mac, addr } = *announcement;
        match addr {
            IpAddr::V4(a) => announce::gratuitous_arp(ifindex, mac, a),
            IpAddr::V6(a) => announce::unsolicited_na(ifindex, mac, a),
        }
    }

    fn memberships(&self) -> Result<ByIfindex, MulticastError> {
        multicast::memberships()
    }

    fn join(&mut self, ifindex: u32, group: IpAddr) -> Result<(), MulticastError> {
        self.joins.join(ifindex, group)
    }

    fn leave(&mut self, ifindex: u32, group: IpAddr) -> Result<(), MulticastError> {
        self.joins.leave(ifindex, group)
    }

    fn report_v4(&self, ifindex: u32, groups: &[Ipv4Addr]) -> Result<IgmpVersion, MulticastError> {
        multicast::report_v4(ifindex, groups)
    }

    fn open_probe_socket(
        &self,
        ifname: &str,
        ifindex: u32,
        test: IpAddr,
    ) -> io::Result<Box<dyn ProbeSender>> {
        let socket = match test {
            IpAddr::V4(addr) => ProbeSocket::v4(ifname, ifindex, addr)?,
            IpAddr::V6(addr) => ProbeSocket::v6(ifname, ifindex, addr)?,
        };
        Ok(Box::new(socket))
    }

    fn watch_carrier(&mut self, ifname: &str, ifindex: u32, armed: bool) -> io::Result<()> {
        let reader = CarrierReader::open(ifname, ifindex)?;
        self.carrier_watch.watch(ifindex, reader, armed);
        Ok(())
    }

    fn arm_carrier(&self, ifindex: u32, armed: bool) {
        self.carrier_watch.arm(ifindex, armed);
    }

    fn forget_carrier(&self, ifindex: u32) {
        self.carrier_watch.forget(ifindex);
    }

    fn set_carrier_period(&self, period: Option<Duration>) {
        self.carrier_watch.set_period(period);
    }

    fn netconf(&self) -> Netconf {
        Netconf::system()
    }
}
