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

use anyhow::Context as _;
use futures_util::future::LocalBoxFuture;
use mpath_common::{
    NicCounters, NicInfo, ProbeReply, Settings, sources::SourceClass, sources::SourceCounters,
};
use tokio::sync::mpsc;

use crate::{
    config::ProbeRx,
    core::identity::{GroupId, NicSlot},
    core::routes::{LinkRoute, MainRoute, TableRoute},
    core::spread::Table,
    daemon::announcer::Announcement,
    datapath::{
        self, Attached, Datapath, DatapathError,
        carrier_hook::CarrierEvents,
        maps::{MapsError, ProbeReplies},
        sources::{Served, cgroup2_root},
    },
    net::address::IpCidr,
    net::announce,
    net::carrier::{CarrierReader, CarrierWatch},
    net::multicast::{self, ByIfindex, IgmpVersion, Joins, MulticastError},
    net::netconf::Netconf,
    net::netlink::{AddressOptions, Link, Monitor, NetEvent, Netlink, NetlinkError, Origin},
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

/// What the host tells the event loop on its own.
#[derive(Debug)]
pub(crate) enum HostEvent {
    /// A kernel notification.
    Net(NetEvent),
    /// Probe replies the datapath matched.
    ProbeReplies(Vec<ProbeReply>),
    /// The carrier hook or watch saw NICs lose their carrier, ahead of the kernel's link
    /// events.
    CarrierLost(Vec<CarrierLoss>),
    /// The carrier hook's reports cannot be read any more (why): the carrier watch is to
    /// read the carrier instead.
    CarrierHookFailed(String),
}

/// A NIC seen without carrier ahead of the kernel's link event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CarrierLoss {
    pub ifindex: u32,
    /// When the driver reported it (CLOCK_MONOTONIC), where the carrier hook tells it.
    pub reported_ns: Option<u64>,
}

/// What mpathd reads from and does to the host through rtnetlink: links, addresses, rules,
/// routes and nexthop objects. Alone, it is all `--check` and `--teardown` need.
pub(crate) trait Rtnetlink {
    // Links and addresses.
    async fn links(&self) -> Result<Vec<Link>, NetlinkError>;
    async fn link(&self, name: &str) -> Result<Option<Link>, NetlinkError>;
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
    /// Deletes mpathd's rules, going on past each failure; returns every one.
    async fn del_rules(&self) -> Result<(), Vec<NetlinkError>>;
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
    /// someone while the address stayed ([`crate::core::reconcile::prefix_route_lost`]): true
    /// when it was missing, false when the kernel had it.
    async fn restore_prefix_route(&self, oif: u32, route: &MainRoute)
    -> Result<bool, NetlinkError>;

    // Nexthop objects.
    async fn nexthops(&self) -> Result<Vec<Nexthop>, NexthopError>;
    async fn replace_nexthop(&self, nexthop: &Nexthop) -> Result<(), NexthopError>;
    async fn delete_nexthop(&self, id: u32) -> Result<bool, NexthopError>;
}

/// What the daemon reads from and does to the host: the clock, rtnetlink, the datapath's
/// programs and maps, announcements, multicast joins, probe sockets, the carrier watch and
/// the `net` sysctls.
pub(crate) trait HostIo: Rtnetlink {
    /// Now, as the daemon's timers see it.
    fn now(&self) -> Instant;
    /// Wakes at `at` on the clock of [`HostIo::now`]; owns what it needs, so that the event
    /// loop can wait for it and for [`HostIo::next_event`] at once.
    fn sleep_until(&self, at: Instant) -> LocalBoxFuture<'static, ()>;
    /// Waits for the next thing the host tells; an error ends the event loop.
    async fn next_event(&mut self) -> anyhow::Result<HostEvent>;
    /// The probe replies queued now, without waiting.
    fn ready_probe_replies(&mut self) -> Vec<ProbeReply>;

    /// The ifindex the NIC `name` has right now.
    fn ifindex_of(&self, name: &str) -> Option<u32>;
    /// Gives the event socket room for a notification per route.
    fn fit_monitor(&mut self, routes: usize);

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
    /// Attaches the carrier hook, whose reports then come with [`HostIo::next_event`]; why
    /// not, when it cannot be.
    fn attach_carrier_hook(&mut self) -> Result<(), String>;

    // The datapath's maps.
    /// Gives the programs this mpathd's settings: the key its probes are signed with.
    fn set_settings(&mut self, settings: Settings) -> Result<(), MapsError>;
    /// Clears the marks of carrier loss an earlier carrier hook left on the NICs.
    fn clear_carrier_marks(&mut self) -> Result<(), MapsError>;
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
    fn table(&self, group: GroupId) -> Result<Table, MapsError>;
    fn write_table(
        &mut self,
        group: GroupId,
        table: &Table,
        mac_of: impl Fn(u32) -> [u8; 6],
    ) -> Result<usize, MapsError>;
    fn counters(&self, slot: NicSlot) -> Result<NicCounters, MapsError>;
    fn replies_over_budget(&self, slot: NicSlot) -> Result<u64, MapsError>;
    fn clear_counters(&mut self, slot: NicSlot) -> Result<(), MapsError>;
    fn write_source_routes(
        &mut self,
        routes: &BTreeMap<IpCidr, Option<u32>>,
    ) -> Result<[Served; 2], MapsError>;
    fn patch_source_routes(&mut self, patch: &BTreeMap<IpCidr, Option<Option<u32>>>) -> bool;
    fn write_sources(
        &mut self,
        group: GroupId,
        class: SourceClass,
        addrs: &[IpCidr],
    ) -> Result<bool, MapsError>;
    fn clear_other_groups_sources(&mut self, groups: &[GroupId]) -> Result<(), MapsError>;
    fn source_counters(&self, group: GroupId) -> Result<SourceCounters, MapsError>;

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

/// The next carrier losses from the hook; never, without it.
async fn next_carrier_events(
    events: &mut Option<CarrierEvents>,
) -> io::Result<Vec<mpath_common::CarrierEvent>> {
    match events {
        Some(events) => events.next_batch().await,
        None => std::future::pending().await,
    }
}

/// The host itself: rtnetlink, the loaded datapath, raw and multicast sockets, sysfs and
/// `/proc/sys/net`.
pub(crate) struct LiveHost {
    pub datapath: Datapath,
    pub rtnetlink: LiveRtnetlink,
    pub monitor: Monitor,
    pub carrier_watch: CarrierWatch,
    pub joins: Joins,
    /// The carrier hook's reports, while it runs (the carrier watch then stays off).
    pub carrier_events: Option<CarrierEvents>,
    /// What the event loop reads, once it runs ([`LiveHost::listen`]).
    listening: Option<Listening>,
}

/// The readers [`LiveHost::next_event`] waits on besides the monitor and the carrier hook.
struct Listening {
    replies: ProbeReplies,
    carrier_losses: mpsc::UnboundedReceiver<u32>,
}

impl LiveHost {
    pub(crate) fn new(
        datapath: Datapath,
        rtnetlink: LiveRtnetlink,
        monitor: Monitor,
        carrier_watch: CarrierWatch,
    ) -> LiveHost {
        LiveHost {
            datapath,
            rtnetlink,
            monitor,
            carrier_watch,
            joins: Joins::default(),
            carrier_events: None,
            listening: None,
        }
    }

    /// Takes the probe replies' ring buffer and the carrier watch's reports, for the event
    /// loop.
    pub(crate) fn listen(&mut self) -> anyhow::Result<()> {
        let replies = self.datapath.maps.take_probe_replies()?;
        let carrier_losses = self
            .carrier_watch
            .take_losses()
            .context("carrier losses already taken")?;
        self.listening = Some(Listening {
            replies,
            carrier_losses,
        });
        Ok(())
    }
}

/// rtnetlink itself.
pub(crate) struct LiveRtnetlink {
    pub netlink: Netlink,
    pub nexthops: Nexthops,
}

impl LiveRtnetlink {
    /// Opens rtnetlink, for links, addresses, rules and routes, and for nexthop objects.
    pub(crate) fn connect() -> anyhow::Result<LiveRtnetlink> {
        Ok(LiveRtnetlink {
            netlink: Netlink::connect().context("opening rtnetlink")?,
            nexthops: Nexthops::connect().context("opening rtnetlink for nexthops")?,
        })
    }
}

impl Rtnetlink for LiveRtnetlink {
    async fn links(&self) -> Result<Vec<Link>, NetlinkError> {
        self.netlink.links().await
    }

    async fn link(&self, name: &str) -> Result<Option<Link>, NetlinkError> {
        self.netlink.link(name).await
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

    async fn restore_prefix_route(
        &self,
        oif: u32,
        route: &MainRoute,
    ) -> Result<bool, NetlinkError> {
        self.netlink.restore_prefix_route(oif, route).await
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

    async fn del_rules(&self) -> Result<(), Vec<NetlinkError>> {
        self.netlink.del_rules().await
    }
}

impl Rtnetlink for LiveHost {
    async fn links(&self) -> Result<Vec<Link>, NetlinkError> {
        self.rtnetlink.links().await
    }

    async fn restore_prefix_route(
        &self,
        oif: u32,
        route: &MainRoute,
    ) -> Result<bool, NetlinkError> {
        self.rtnetlink.restore_prefix_route(oif, route).await
    }

    async fn link(&self, name: &str) -> Result<Option<Link>, NetlinkError> {
        self.rtnetlink.link(name).await
    }

    async fn addresses(&self) -> Result<Vec<(u32, IpCidr)>, NetlinkError> {
        self.rtnetlink.addresses().await
    }

    async fn addresses_by_origin(&self) -> Result<Vec<(u32, IpCidr, Origin)>, NetlinkError> {
        self.rtnetlink.addresses_by_origin().await
    }

    async fn addresses_with_origin(&self) -> Result<Vec<(u32, IpCidr, Origin)>, NetlinkError> {
        self.rtnetlink.addresses_with_origin().await
    }

    async fn add_address(
        &self,
        ifindex: u32,
        cidr: IpCidr,
        options: AddressOptions,
    ) -> Result<(), NetlinkError> {
        self.rtnetlink.add_address(ifindex, cidr, options).await
    }

    async fn del_address(&self, ifindex: u32, cidr: IpCidr) -> Result<(), NetlinkError> {
        self.rtnetlink.del_address(ifindex, cidr).await
    }

    async fn main_routes(&self) -> Result<Vec<MainRoute>, NetlinkError> {
        self.rtnetlink.main_routes().await
    }

    async fn main_routes_through(&self, oif: u32) -> Result<Vec<MainRoute>, NetlinkError> {
        self.rtnetlink.main_routes_through(oif).await
    }

    async fn ensure_rules(&self, table: u32, priority: u32) -> Result<(), NetlinkError> {
        self.rtnetlink.ensure_rules(table, priority).await
    }

    async fn table_routes(
        &self,
        table: u32,
    ) -> Result<Vec<((IpCidr, u32), TableRoute<u32>)>, NetlinkError> {
        self.rtnetlink.table_routes(table).await
    }

    async fn set_table_route(
        &self,
        table: u32,
        destination: IpCidr,
        metric: u32,
        route: &TableRoute<u32>,
    ) -> Result<(), NetlinkError> {
        self.rtnetlink
            .set_table_route(table, destination, metric, route)
            .await
    }

    async fn del_table_route(
        &self,
        table: u32,
        destination: IpCidr,
        metric: u32,
    ) -> Result<(), NetlinkError> {
        self.rtnetlink
            .del_table_route(table, destination, metric)
            .await
    }

    async fn link_routes(&self) -> Result<Vec<LinkRoute>, NetlinkError> {
        self.rtnetlink.link_routes().await
    }

    async fn set_link_route(&self, route: &LinkRoute) -> Result<(), NetlinkError> {
        self.rtnetlink.set_link_route(route).await
    }

    async fn del_link_route(&self, route: &LinkRoute) -> Result<(), NetlinkError> {
        self.rtnetlink.del_link_route(route).await
    }

    async fn nexthops(&self) -> Result<Vec<Nexthop>, NexthopError> {
        self.rtnetlink.nexthops().await
    }

    async fn replace_nexthop(&self, nexthop: &Nexthop) -> Result<(), NexthopError> {
        self.rtnetlink.replace_nexthop(nexthop).await
    }

    async fn delete_nexthop(&self, id: u32) -> Result<bool, NexthopError> {
        self.rtnetlink.delete_nexthop(id).await
    }

    async fn del_rules(&self) -> Result<(), Vec<NetlinkError>> {
        self.rtnetlink.del_rules().await
    }
}

impl HostIo for LiveHost {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep_until(&self, at: Instant) -> LocalBoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep_until(at.into()))
    }

    async fn next_event(&mut self) -> anyhow::Result<HostEvent> {
        let Listening {
            replies,
            carrier_losses,
        } = self
            .listening
            .as_mut()
            .context("the host is not listened to")?;
        loop {
            tokio::select! {
                event = self.monitor.next() => match event {
                    Ok(event) => return Ok(HostEvent::Net(event)),
                    // The monitor fails only when its socket cannot be opened again; the
                    // daemon keeps running on what it knows.
                    Err(e) => tracing::error!(
                        "reading netlink events: {}",
                        super::logging::with_causes(&e)
                    ),
                },
                batch = replies.next_batch() => return Ok(HostEvent::ProbeReplies(batch?)),
                Some(ifindex) = carrier_losses.recv() => {
                    let loss = CarrierLoss { ifindex, reported_ns: None };
                    return Ok(HostEvent::CarrierLost(vec![loss]));
                }
                batch = next_carrier_events(&mut self.carrier_events) => match batch {
                    Ok(events) => {
                        let losses = events
                            .into_iter()
                            .map(|e| CarrierLoss { ifindex: e.ifindex, reported_ns: Some(e.time_ns) })
                            .collect();
                        return Ok(HostEvent::CarrierLost(losses));
                    }
                    Err(e) => {
                        self.carrier_events = None;
                        return Ok(HostEvent::CarrierHookFailed(e.to_string()));
                    }
                },
            }
        }
    }

    fn ready_probe_replies(&mut self) -> Vec<ProbeReply> {
        self.listening
            .as_mut()
            .map(|l| l.replies.ready())
            .unwrap_or_default()
    }

    fn ifindex_of(&self, name: &str) -> Option<u32> {
        datapath::ifindex_of(name).ok()
    }

    fn fit_monitor(&mut self, routes: usize) {
        self.monitor.fit(routes);
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
            .map_err(|e| super::logging::with_causes(&e))?;
        Ok(cgroup)
    }

    fn source_hook_attached(&self) -> Result<bool, DatapathError> {
        self.datapath.source_hook_attached()
    }

    fn detach_source_hook(&mut self) -> Result<(), DatapathError> {
        self.datapath.detach_source_hook()
    }

    fn attach_carrier_hook(&mut self) -> Result<(), String> {
        let events = self
            .datapath
            .attach_carrier_hook()
            .map_err(|e| e.to_string())?;
        self.carrier_events = Some(events);
        Ok(())
    }

    fn set_settings(&mut self, settings: Settings) -> Result<(), MapsError> {
        self.datapath.maps.set_settings(settings)
    }

    fn clear_carrier_marks(&mut self) -> Result<(), MapsError> {
        self.datapath.maps.clear_carrier_marks()
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

    fn table(&self, group: GroupId) -> Result<Table, MapsError> {
        self.datapath.maps.table(group.0)
    }

    fn write_table(
        &mut self,
        group: GroupId,
        table: &Table,
        mac_of: impl Fn(u32) -> [u8; 6],
    ) -> Result<usize, MapsError> {
        self.datapath.maps.write_table(group.0, table, mac_of)
    }

    fn counters(&self, slot: NicSlot) -> Result<NicCounters, MapsError> {
        self.datapath.maps.counters(slot.0)
    }

    fn replies_over_budget(&self, slot: NicSlot) -> Result<u64, MapsError> {
        self.datapath.maps.replies_over_budget(slot.0)
    }

    fn clear_counters(&mut self, slot: NicSlot) -> Result<(), MapsError> {
        self.datapath.maps.clear_counters(slot.0)
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
        group: GroupId,
        class: SourceClass,
        addrs: &[IpCidr],
    ) -> Result<bool, MapsError> {
        self.datapath
            .maps
            .sources
            .write_sources(group.0, class, addrs)
    }

    fn clear_other_groups_sources(&mut self, groups: &[GroupId]) -> Result<(), MapsError> {
        let groups: Vec<u32> = groups.iter().map(|g| g.0).collect();
        self.datapath.maps.sources.clear_other_groups(&groups)
    }

    fn source_counters(&self, group: GroupId) -> Result<SourceCounters, MapsError> {
        self.datapath.maps.sources.counters(group.0)
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
