//! An in-memory host for the daemon's scenario tests: links, addresses, the main table,
//! mpathd's table and nexthop objects, the datapath's attachments, NICs and bucket tables,
//! multicast memberships, with a clock the test moves. It keeps the kernel's rules the daemon
//! depends on: an address needs its link, a nexthop needs carrier on its NIC, a NIC losing
//! carrier takes its nexthops (and the groups and routes left without a member) along without
//! a word, a NIC taken down its IPv4 main-table routes too, a probe socket needs its source
//! address, a NIC with IPv6 disabled takes no IPv6 address (that the kernel then deletes its
//! IPv6 routes is not modelled). What the kernel would announce (links, addresses) is queued for the test to
//! deliver, as the monitor would; of the route notifications, only that of a route someone
//! deletes from mpathd's table.
//!
//! It counts the route work mpathd asks of it ([`RouteWork`]): reads of routing state and
//! writes of mpathd's table.
//!
//! Not modelled: the carrier watch's early reports (tests call the handler), rules but
//! mpathd's (one, in both families), the
//! source hook and its maps (it never attaches), the bucket table's MACs, the receive
//! counters (always zero), netconf (an empty tree: every write fails, and is logged).

use std::{
    cell::{Cell, RefCell},
    collections::{BTreeMap, BTreeSet, VecDeque},
    io,
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    rc::Rc,
    time::{Duration, Instant},
};

use futures_util::future::LocalBoxFuture;
use mpath_common::{
    BUCKETS_PER_GROUP, NicCounters, NicInfo, ProbeReply, Settings, sources::SourceClass,
    sources::SourceCounters,
};

use crate::{
    config::ProbeRx,
    core::identity::{GroupId, NicSlot},
    core::reconcile::KERNEL_PROTOCOL,
    core::routes::{Hop, Hops, LinkRoute, MainRoute, TableRoute, Via},
    core::spread::Table,
    daemon::{
        announcer::Announcement,
        host_io::{HostEvent, HostIo, ProbeSender, Rtnetlink},
    },
    datapath::{Attached, DatapathError, maps::MapsError, sources::Served},
    net::address::IpCidr,
    net::multicast::{ByIfindex, IgmpVersion, MulticastError},
    net::netconf::Netconf,
    net::netlink::{
        AddressOptions, Interface, Link, MAIN_TABLE, MPATHD_PROTOCOL, NetEvent, NetlinkError,
        Origin, RouteNotice,
    },
    net::nexthop::{Nexthop, NexthopError, NexthopKind, RequestError},
};

/// Something the daemon did to the host, in the effects log the order tests read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Effect {
    AddAddress {
        ifindex: u32,
        cidr: IpCidr,
    },
    DelAddress {
        ifindex: u32,
        cidr: IpCidr,
    },
    /// A nexthop through one NIC made or replaced.
    Nexthop {
        id: u32,
        oif: u32,
    },
    /// A nexthop group made or replaced, with the NICs of its members.
    NexthopGroup {
        id: u32,
        through: BTreeSet<u32>,
    },
    DeleteNexthop {
        id: u32,
    },
    WriteTable {
        group: GroupId,
    },
    Join {
        ifindex: u32,
        group: IpAddr,
    },
    Leave {
        ifindex: u32,
        group: IpAddr,
    },
    WriteSources {
        group: GroupId,
        class: SourceClass,
    },
}

/// Route work mpathd asked of the host: what scales with the size of the routing tables.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RouteWork {
    /// Reads of routing state: the main table (whole or through one NIC), mpathd's table,
    /// its nexthop objects, its link routes.
    pub reads: usize,
    /// Routes set in or deleted from mpathd's table.
    pub table_writes: usize,
}

/// A probe a NIC sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SentProbe {
    pub ifindex: u32,
    pub target: IpAddr,
    pub seq: u32,
    pub sent_ns: u64,
}

pub(crate) struct FakeHost {
    /// Shared with the sleeps it hands out, which move it.
    clock: Rc<Cell<Instant>>,
    links: RefCell<BTreeMap<u32, Link>>,
    addresses: RefCell<Vec<(u32, IpCidr, Origin)>>,
    /// NICs (by ifindex) with IPv6 disabled (`disable_ipv6`).
    ipv6_disabled: RefCell<BTreeSet<u32>>,
    main: RefCell<Vec<MainRoute>>,
    /// mpathd's table, by destination and metric.
    table: RefCell<BTreeMap<(IpCidr, u32), TableRoute<u32>>>,
    link_routes: RefCell<BTreeSet<LinkRoute>>,
    /// mpathd's rule, which sends traffic to its table, is there.
    rule: Cell<bool>,
    nexthops: RefCell<BTreeMap<u32, Nexthop>>,
    /// NICs (by ifindex) carrying mpathd's programs.
    attached: BTreeSet<u32>,
    /// NICs (by name) whose driver refuses the programs.
    refuse_attach: BTreeSet<String>,
    nic_infos: BTreeMap<u32, NicInfo>,
    /// What mpathd gave the programs, once it did.
    pub settings: Option<Settings>,
    /// An earlier carrier hook's marks on these NICs (by ifindex).
    pub carrier_marks: BTreeSet<u32>,
    /// The marks cannot be cleared.
    pub carrier_marks_stuck: bool,
    tables: BTreeMap<GroupId, Table>,
    /// NICs (by ifindex) whose probes the link's targets answer no longer.
    pub silent: BTreeSet<u32>,
    /// Dumps fail, as when notifications keep interrupting them.
    pub dumps_fail: Cell<bool>,
    /// The route work mpathd asked of the host so far.
    route_work: Cell<RouteWork>,
    announced: RefCell<Vec<Announcement>>,
    /// The multicast memberships of each NIC, with their user counts: mpathd's joins count.
    memberships: ByIfindex,
    /// mpathd's own joins.
    joined: BTreeSet<(u32, IpAddr)>,
    /// The IGMP reports mpathd sent: the NIC and the groups.
    reported: RefCell<Vec<(u32, Vec<Ipv4Addr>)>>,
    sent: Rc<RefCell<Vec<SentProbe>>>,
    events: RefCell<VecDeque<NetEvent>>,
    effects: RefCell<Vec<Effect>>,
    /// An empty `net` tree: the daemon never writes the real one.
    netconf: tempfile::TempDir,
}

impl FakeHost {
    pub(super) fn new(now: Instant) -> FakeHost {
        FakeHost {
            clock: Rc::new(Cell::new(now)),
            links: RefCell::default(),
            addresses: RefCell::default(),
            ipv6_disabled: RefCell::default(),
            main: RefCell::default(),
            table: RefCell::default(),
            link_routes: RefCell::default(),
            rule: Cell::new(false),
            nexthops: RefCell::default(),
            attached: BTreeSet::new(),
            refuse_attach: BTreeSet::new(),
            nic_infos: BTreeMap::new(),
            settings: None,
            carrier_marks: BTreeSet::new(),
            carrier_marks_stuck: false,
            tables: BTreeMap::new(),
            silent: BTreeSet::new(),
            dumps_fail: Cell::new(false),
            route_work: Cell::default(),
            announced: RefCell::default(),
            memberships: ByIfindex::new(),
            joined: BTreeSet::new(),
            reported: RefCell::default(),
            sent: Rc::default(),
            events: RefCell::default(),
            effects: RefCell::default(),
            netconf: tempfile::tempdir().expect("a scratch directory"),
        }
    }

    /// Adds an Ethernet NIC, up with carrier, and announces it.
    pub(super) fn add_nic(&self, name: &str, ifindex: u32) {
        let link = Link {
            ifindex,
            name: name.to_string(),
            mac: Some([2, 0, 0, 0, 0, ifindex as u8]),
            up: true,
            running: true,
            lower_up: true,
        };
        self.links.borrow_mut().insert(ifindex, link.clone());
        self.events.borrow_mut().push_back(NetEvent::Link(link));
    }

    /// Someone deletes the route to `destination` from table `table` (mpathd's); the kernel
    /// announces it.
    pub(super) fn delete_table_route(&self, table: u32, destination: IpCidr) {
        let removed: Vec<((IpCidr, u32), TableRoute<u32>)> = {
            let mut routes = self.table.borrow_mut();
            let keys: Vec<(IpCidr, u32)> = routes
                .range((destination, 0)..=(destination, u32::MAX))
                .map(|(k, _)| *k)
                .collect();
            keys.into_iter()
                .filter_map(|k| Some((k, routes.remove(&k)?)))
                .collect()
        };
        for ((destination, metric), route) in removed {
            let notice = RouteNotice {
                table,
                protocol: MPATHD_PROTOCOL,
                route: MainRoute {
                    destination,
                    metric,
                    tos: 0,
                    plain: false,
                    prefsrc: route.prefsrc,
                    hops: Hops::new(),
                },
                table_route: Some(route),
                replace: false,
            };
            self.events
                .borrow_mut()
                .push_back(NetEvent::RouteRemoved(notice));
        }
    }

    /// Someone deletes `route` from the main table; the kernel announces it as made by
    /// `protocol`.
    pub(super) fn delete_main_route(&self, route: &MainRoute, protocol: u8) {
        self.main.borrow_mut().retain(|r| r != route);
        self.events
            .borrow_mut()
            .push_back(NetEvent::RouteRemoved(RouteNotice {
                table: MAIN_TABLE,
                protocol,
                route: route.clone(),
                table_route: None,
                replace: false,
            }));
    }

    /// Gives NIC `ifindex` another hardware address, announced with the link.
    pub(super) fn set_mac(&self, ifindex: u32, mac: [u8; 6]) {
        let link = {
            let mut links = self.links.borrow_mut();
            let link = links.get_mut(&ifindex).expect("a NIC of the host");
            link.mac = Some(mac);
            link.clone()
        };
        self.events.borrow_mut().push_back(NetEvent::Link(link));
    }

    /// Deletes a NIC: the kernel announces its addresses gone, then the NIC, and takes the
    /// nexthops through it along without a word.
    pub(super) fn remove_nic(&self, ifindex: u32) {
        let link = self
            .links
            .borrow_mut()
            .remove(&ifindex)
            .expect("a NIC of the host");
        let mut events = self.events.borrow_mut();
        self.addresses.borrow_mut().retain(|(i, cidr, _)| {
            if *i == ifindex {
                events.push_back(NetEvent::AddressRemoved {
                    ifindex,
                    cidr: *cidr,
                });
            }
            *i != ifindex
        });
        events.push_back(NetEvent::LinkRemoved {
            ifindex,
            name: link.name,
        });
        self.flush_nexthops_through(ifindex);
    }

    /// Someone takes mpathd's programs off a NIC (`bpftool link detach`).
    pub(super) fn detach_behind_mpathds_back(&mut self, ifindex: u32) {
        self.attached.remove(&ifindex);
    }

    /// Puts a route in the main table before mpathd starts (a DHCP client's default route,
    /// say).
    pub(super) fn put_main_route(&mut self, route: MainRoute) {
        self.main.get_mut().push(route);
    }

    /// Puts an address on a NIC before mpathd starts (a link-local address, say).
    pub(super) fn put_address(&mut self, ifindex: u32, cidr: IpCidr, origin: Origin) {
        self.addresses.get_mut().push((ifindex, cidr, origin));
    }

    /// The route work mpathd asked of the host so far.
    pub(super) fn route_work(&self) -> RouteWork {
        self.route_work.get()
    }

    fn count_route_read(&self) {
        let mut work = self.route_work.get();
        work.reads += 1;
        self.route_work.set(work);
    }

    fn count_table_write(&self) {
        let mut work = self.route_work.get();
        work.table_writes += 1;
        self.route_work.set(work);
    }

    /// mpathd's table as it is.
    pub(super) fn mpathd_table(&self) -> BTreeMap<(IpCidr, u32), TableRoute<u32>> {
        self.table.borrow().clone()
    }

    pub(super) fn set_now(&self, now: Instant) {
        self.clock.set(now);
    }

    /// An application joins multicast `group` on NIC `ifindex`.
    pub(super) fn join_by_application(&mut self, ifindex: u32, group: IpAddr) {
        *self
            .memberships
            .entry(ifindex)
            .or_default()
            .entry(group)
            .or_default() += 1;
    }

    /// The groups mpathd itself has joined, by NIC.
    pub(super) fn joined_by_mpathd(&self) -> BTreeSet<(u32, IpAddr)> {
        self.joined.clone()
    }

    /// The IGMP reports mpathd sent, in order: the NIC and the groups.
    pub(super) fn reported(&self) -> Vec<(u32, Vec<Ipv4Addr>)> {
        self.reported.borrow().clone()
    }

    /// The driver refuses mpathd's programs on `name` from now on, or takes them again.
    pub(super) fn refuse_attach(&mut self, name: &str, refuse: bool) {
        if refuse {
            self.refuse_attach.insert(name.to_string());
        } else {
            self.refuse_attach.remove(name);
        }
    }

    /// Someone takes the NIC down (`ip link set down`): IPv4 deletes the main table's routes
    /// through it and the kernel its nexthops, without a word, and announces the link.
    pub(super) fn take_down(&self, ifindex: u32) {
        let link = {
            let mut links = self.links.borrow_mut();
            let link = links.get_mut(&ifindex).expect("a NIC of the host");
            link.up = false;
            link.running = false;
            link.clone()
        };
        self.main.borrow_mut().retain(|route| {
            route.destination.addr().is_ipv6() || route.hops.iter().all(|h| h.oif != ifindex)
        });
        self.flush_nexthops_through(ifindex);
        self.events.borrow_mut().push_back(NetEvent::Link(link));
    }

    /// The NIC gains or loses its carrier; the kernel deletes the nexthops through a NIC that
    /// lost it (and groups and routes left without a member) without a word, and announces
    /// the link.
    pub(super) fn set_carrier(&self, ifindex: u32, carrier: bool) {
        let link = {
            let mut links = self.links.borrow_mut();
            let link = links.get_mut(&ifindex).expect("a NIC of the host");
            link.lower_up = carrier;
            link.running = carrier;
            link.clone()
        };
        if !carrier {
            self.flush_nexthops_through(ifindex);
        }
        self.events.borrow_mut().push_back(NetEvent::Link(link));
    }

    /// Someone renames NIC `ifindex`; the kernel announces the link under its new name.
    pub(super) fn rename(&self, ifindex: u32, name: &str) {
        let link = {
            let mut links = self.links.borrow_mut();
            let link = links.get_mut(&ifindex).expect("a NIC of the host");
            link.name = name.to_string();
            link.clone()
        };
        self.events.borrow_mut().push_back(NetEvent::Link(link));
    }

    /// Someone else (an administrator, a DHCP client) adds an address; the kernel announces
    /// it.
    pub(super) fn add_others_address(&self, ifindex: u32, cidr: IpCidr) {
        self.addresses
            .borrow_mut()
            .push((ifindex, cidr, Origin::Other));
        self.events
            .borrow_mut()
            .push_back(NetEvent::AddressAdded { ifindex, cidr });
    }

    /// Someone sets `disable_ipv6` on NIC `ifindex` (NetworkManager, for a moment, when it
    /// activates a profile): the kernel deletes its IPv6 addresses and refuses new ones.
    pub(super) fn disable_ipv6(&self, ifindex: u32) {
        self.ipv6_disabled.borrow_mut().insert(ifindex);
        let mut addresses = self.addresses.borrow_mut();
        let mut events = self.events.borrow_mut();
        addresses.retain(|(i, cidr, _)| {
            let gone = *i == ifindex && cidr.addr().is_ipv6();
            if gone {
                events.push_back(NetEvent::AddressRemoved {
                    ifindex,
                    cidr: *cidr,
                });
            }
            !gone
        });
    }

    /// `disable_ipv6` cleared again: the kernel gives the NIC its link-local address.
    pub(super) fn enable_ipv6(&self, ifindex: u32, link_local: IpCidr) {
        self.ipv6_disabled.borrow_mut().remove(&ifindex);
        self.addresses
            .borrow_mut()
            .push((ifindex, link_local, Origin::Kernel));
        self.events.borrow_mut().push_back(NetEvent::AddressAdded {
            ifindex,
            cidr: link_local,
        });
    }

    fn flush_nexthops_through(&self, ifindex: u32) {
        let mut nexthops = self.nexthops.borrow_mut();
        let gone: BTreeSet<u32> = nexthops
            .values()
            .filter(|n| matches!(n.kind, NexthopKind::Single { oif, .. } if oif == ifindex))
            .map(|n| n.id)
            .collect();
        nexthops.retain(|id, _| !gone.contains(id));
        let mut empty = BTreeSet::new();
        for nexthop in nexthops.values_mut() {
            if let NexthopKind::Resilient { members, .. } = &mut nexthop.kind {
                members.retain(|m| !gone.contains(m));
                if members.is_empty() {
                    empty.insert(nexthop.id);
                }
            }
        }
        nexthops.retain(|id, _| !empty.contains(id));
        self.table
            .borrow_mut()
            .retain(|_, route| !matches!(route.via, Via::Group(id) if empty.contains(&id)));
    }

    /// What the kernel announced since the last call, in order.
    pub(super) fn take_events(&self) -> Vec<NetEvent> {
        self.events.borrow_mut().drain(..).collect()
    }

    /// What the host has to tell now: the kernel's next notification, else the replies to
    /// the probes sent since the last call (at once, from every NIC but the silent ones).
    pub(super) fn ready_event(&self) -> Option<HostEvent> {
        if let Some(event) = self.events.borrow_mut().pop_front() {
            return Some(HostEvent::Net(event));
        }
        let replies = self.answers();
        (!replies.is_empty()).then_some(HostEvent::ProbeReplies(replies))
    }

    /// The replies to the probes sent since the last call, from every NIC but the silent ones.
    fn answers(&self) -> Vec<ProbeReply> {
        std::mem::take(&mut *self.sent.borrow_mut())
            .into_iter()
            .filter(|probe| !self.silent.contains(&probe.ifindex))
            .map(|probe| {
                ProbeReply::new(
                    probe.ifindex,
                    probe.seq,
                    probe.target,
                    probe.sent_ns,
                    probe.sent_ns + 300_000,
                )
            })
            .collect()
    }

    /// What the daemon did to the host since the last call, in order.
    pub(super) fn take_effects(&self) -> Vec<Effect> {
        std::mem::take(&mut *self.effects.borrow_mut())
    }

    fn record(&self, effect: Effect) {
        self.effects.borrow_mut().push(effect);
    }

    /// The addresses on NIC `ifindex`.
    pub(super) fn addresses_on(&self, ifindex: u32) -> Vec<IpCidr> {
        self.addresses
            .borrow()
            .iter()
            .filter(|(i, _, _)| *i == ifindex)
            .map(|(_, c, _)| *c)
            .collect()
    }

    /// The NICs through which traffic routed by mpathd's table to `destination` leaves: the
    /// members of the nexthop group its route goes through.
    pub(super) fn routed_through(&self, destination: IpCidr) -> BTreeSet<u32> {
        let table = self.table.borrow();
        let nexthops = self.nexthops.borrow();
        let Some(Via::Group(group)) = table
            .range((destination, 0)..=(destination, u32::MAX))
            .map(|(_, route)| route.via.clone())
            .next()
        else {
            return BTreeSet::new();
        };
        through(&nexthops, group)
    }

    /// The NICs the bucket table of group `id` sends traffic to.
    pub(super) fn buckets_of(&self, id: GroupId) -> BTreeSet<u32> {
        self.table(id)
            .map(|t| t.into_iter().filter(|i| *i != 0).collect())
            .unwrap_or_default()
    }

    /// mpathd's rule is there.
    pub(super) fn has_rule(&self) -> bool {
        self.rule.get()
    }

    /// How many on-link routes mpathd has in the main table.
    pub(super) fn link_route_count(&self) -> usize {
        self.link_routes.borrow().len()
    }

    /// The ids of the nexthop objects.
    pub(super) fn nexthop_ids(&self) -> BTreeSet<u32> {
        self.nexthops.borrow().keys().copied().collect()
    }

    pub(super) fn is_attached(&self, ifindex: u32) -> bool {
        self.attached.contains(&ifindex)
    }

    /// The announcements sent since the last call.
    pub(super) fn take_announced(&self) -> Vec<Announcement> {
        std::mem::take(&mut *self.announced.borrow_mut())
    }

    fn dump_error(&self) -> Option<io::Error> {
        self.dumps_fail
            .get()
            .then(|| io::Error::from_raw_os_error(libc::EINTR))
    }
}

/// The NICs traffic through nexthop `id` leaves by: its own, or its members'.
fn through(nexthops: &BTreeMap<u32, Nexthop>, id: u32) -> BTreeSet<u32> {
    match nexthops.get(&id).map(|n| &n.kind) {
        Some(NexthopKind::Single { oif, .. }) => BTreeSet::from([*oif]),
        Some(NexthopKind::Resilient { members, .. }) => {
            members.iter().flat_map(|m| through(nexthops, *m)).collect()
        }
        _ => BTreeSet::new(),
    }
}

/// The kernel's answer `errno`.
fn errno(errno: i32) -> io::Error {
    io::Error::from_raw_os_error(errno)
}

fn request_error(code: i32) -> RequestError {
    RequestError {
        error: errno(code),
        message: None,
    }
}

struct FakeProbeSocket {
    ifindex: u32,
    sent: Rc<RefCell<Vec<SentProbe>>>,
}

impl ProbeSender for FakeProbeSocket {
    fn send(&self, target: IpAddr, seq: u32, _key: [u64; 2], sent_ns: u64) -> io::Result<()> {
        self.sent.borrow_mut().push(SentProbe {
            ifindex: self.ifindex,
            target,
            seq,
            sent_ns,
        });
        Ok(())
    }
}

impl Rtnetlink for FakeHost {
    async fn links(&self) -> Result<Vec<Link>, NetlinkError> {
        if let Some(e) = self.dump_error() {
            return Err(NetlinkError::ListLinks(e));
        }
        Ok(self.links.borrow().values().cloned().collect())
    }

    async fn link(&self, name: &str) -> Result<Option<Link>, NetlinkError> {
        Ok(self
            .links
            .borrow()
            .values()
            .find(|l| l.name == name)
            .cloned())
    }

    async fn addresses(&self) -> Result<Vec<(u32, IpCidr)>, NetlinkError> {
        let all = self.addresses_with_origin().await?;
        Ok(all.into_iter().map(|(i, c, _)| (i, c)).collect())
    }

    async fn addresses_by_origin(&self) -> Result<Vec<(u32, IpCidr, Origin)>, NetlinkError> {
        let all = self.addresses_with_origin().await?;
        Ok(all
            .into_iter()
            .filter(|(_, cidr, _)| cidr.is_global_unicast())
            .collect())
    }

    async fn addresses_with_origin(&self) -> Result<Vec<(u32, IpCidr, Origin)>, NetlinkError> {
        if let Some(e) = self.dump_error() {
            return Err(NetlinkError::ListAddresses(e));
        }
        Ok(self.addresses.borrow().clone())
    }

    async fn add_address(
        &self,
        ifindex: u32,
        cidr: IpCidr,
        options: AddressOptions,
    ) -> Result<(), NetlinkError> {
        if !self.links.borrow().contains_key(&ifindex) {
            return Err(NetlinkError::AddAddress {
                interface: Interface {
                    ifindex,
                    name: None,
                },
                cidr,
                source: errno(libc::ENODEV),
            });
        }
        if cidr.addr().is_ipv6() && self.ipv6_disabled.borrow().contains(&ifindex) {
            return Err(NetlinkError::AddAddress {
                interface: Interface {
                    ifindex,
                    name: None,
                },
                cidr,
                source: errno(libc::EACCES),
            });
        }
        let origin = if options.mpathds {
            Origin::Mpathd
        } else {
            Origin::Other
        };
        self.record(Effect::AddAddress { ifindex, cidr });
        let mut addresses = self.addresses.borrow_mut();
        addresses.retain(|(i, c, _)| (*i, *c) != (ifindex, cidr));
        addresses.push((ifindex, cidr, origin));
        self.events
            .borrow_mut()
            .push_back(NetEvent::AddressAdded { ifindex, cidr });
        Ok(())
    }

    async fn del_address(&self, ifindex: u32, cidr: IpCidr) -> Result<(), NetlinkError> {
        let mut addresses = self.addresses.borrow_mut();
        let before = addresses.len();
        addresses.retain(|(i, c, _)| (*i, *c) != (ifindex, cidr));
        if addresses.len() != before {
            self.record(Effect::DelAddress { ifindex, cidr });
            self.events
                .borrow_mut()
                .push_back(NetEvent::AddressRemoved { ifindex, cidr });
        }
        Ok(())
    }

    async fn main_routes(&self) -> Result<Vec<MainRoute>, NetlinkError> {
        self.count_route_read();
        if let Some(source) = self.dump_error() {
            return Err(NetlinkError::ListRoutes {
                family: "IPv4",
                source,
            });
        }
        Ok(self.main.borrow().clone())
    }

    async fn main_routes_through(&self, oif: u32) -> Result<Vec<MainRoute>, NetlinkError> {
        self.count_route_read();
        let main = self.main.borrow();
        Ok(main
            .iter()
            .filter(|r| r.hops.iter().any(|h| h.oif == oif))
            .cloned()
            .collect())
    }

    async fn ensure_rules(&self, _table: u32, _priority: u32) -> Result<(), NetlinkError> {
        self.rule.set(true);
        Ok(())
    }

    async fn del_rules(&self) -> Result<(), Vec<NetlinkError>> {
        self.rule.set(false);
        Ok(())
    }

    async fn table_routes(
        &self,
        _table: u32,
    ) -> Result<Vec<((IpCidr, u32), TableRoute<u32>)>, NetlinkError> {
        self.count_route_read();
        Ok(self
            .table
            .borrow()
            .iter()
            .map(|(k, r)| (*k, r.clone()))
            .collect())
    }

    async fn set_table_route(
        &self,
        table: u32,
        destination: IpCidr,
        metric: u32,
        route: &TableRoute<u32>,
    ) -> Result<(), NetlinkError> {
        self.count_table_write();
        if let Via::Group(id) = route.via
            && !self.nexthops.borrow().contains_key(&id)
        {
            return Err(NetlinkError::SetRoute {
                destination,
                table,
                source: errno(libc::EINVAL),
            });
        }
        self.table
            .borrow_mut()
            .insert((destination, metric), route.clone());
        Ok(())
    }

    async fn del_table_route(
        &self,
        _table: u32,
        destination: IpCidr,
        metric: u32,
    ) -> Result<(), NetlinkError> {
        self.count_table_write();
        self.table.borrow_mut().remove(&(destination, metric));
        Ok(())
    }

    async fn link_routes(&self) -> Result<Vec<LinkRoute>, NetlinkError> {
        self.count_route_read();
        Ok(self.link_routes.borrow().iter().copied().collect())
    }

    async fn set_link_route(&self, route: &LinkRoute) -> Result<(), NetlinkError> {
        self.link_routes.borrow_mut().insert(*route);
        Ok(())
    }

    async fn del_link_route(&self, route: &LinkRoute) -> Result<(), NetlinkError> {
        self.link_routes.borrow_mut().remove(route);
        Ok(())
    }

    async fn restore_prefix_route(
        &self,
        oif: u32,
        route: &MainRoute,
    ) -> Result<bool, NetlinkError> {
        let mut route = route.clone();
        route.hops = smallvec::smallvec![Hop { oif, gateway: None }];
        if self.main.borrow().contains(&route) {
            return Ok(false);
        }
        self.main.borrow_mut().push(route.clone());
        self.events
            .borrow_mut()
            .push_back(NetEvent::RouteAdded(RouteNotice {
                table: MAIN_TABLE,
                protocol: KERNEL_PROTOCOL,
                route,
                table_route: None,
                replace: false,
            }));
        Ok(true)
    }

    async fn nexthops(&self) -> Result<Vec<Nexthop>, NexthopError> {
        self.count_route_read();
        Ok(self.nexthops.borrow().values().cloned().collect())
    }

    async fn replace_nexthop(&self, nexthop: &Nexthop) -> Result<(), NexthopError> {
        let refused = |code| NexthopError::Replace {
            id: nexthop.id,
            source: request_error(code),
        };
        let mut nexthops = self.nexthops.borrow_mut();
        match &nexthop.kind {
            NexthopKind::Single { oif, .. } => {
                let links = self.links.borrow();
                let Some(link) = links.get(oif) else {
                    return Err(refused(libc::ENODEV));
                };
                if !(link.up && link.lower_up) {
                    return Err(refused(libc::ENETDOWN));
                }
            }
            NexthopKind::Resilient { members, .. } => {
                let single = |m: &u32| {
                    nexthops
                        .get(m)
                        .is_some_and(|n| matches!(n.kind, NexthopKind::Single { .. }))
                };
                if members.is_empty() || !members.iter().all(single) {
                    return Err(refused(libc::EINVAL));
                }
            }
            _ => return Err(refused(libc::EOPNOTSUPP)),
        }
        nexthops.insert(nexthop.id, nexthop.clone());
        let id = nexthop.id;
        self.record(match nexthop.kind {
            NexthopKind::Single { oif, .. } => Effect::Nexthop { id, oif },
            _ => Effect::NexthopGroup {
                id,
                through: through(&nexthops, id),
            },
        });
        Ok(())
    }

    async fn delete_nexthop(&self, id: u32) -> Result<bool, NexthopError> {
        let mut nexthops = self.nexthops.borrow_mut();
        let existed = nexthops.remove(&id).is_some();
        if existed {
            self.record(Effect::DeleteNexthop { id });
        }
        for nexthop in nexthops.values_mut() {
            if let NexthopKind::Resilient { members, .. } = &mut nexthop.kind {
                members.retain(|m| *m != id);
            }
        }
        Ok(existed)
    }
}

impl HostIo for FakeHost {
    fn now(&self) -> Instant {
        self.clock.get()
    }

    /// Moves the clock to `at` at once, after letting other tasks (a test talking to the
    /// control socket) run.
    fn sleep_until(&self, at: Instant) -> LocalBoxFuture<'static, ()> {
        let clock = Rc::clone(&self.clock);
        Box::pin(async move {
            tokio::task::yield_now().await;
            clock.set(clock.get().max(at));
        })
    }

    async fn next_event(&mut self) -> anyhow::Result<HostEvent> {
        match self.ready_event() {
            Some(event) => Ok(event),
            // Only the daemon's own doings and probes make news on a host no test touches.
            None => std::future::pending().await,
        }
    }

    fn ready_probe_replies(&mut self) -> Vec<ProbeReply> {
        self.answers()
    }

    fn ifindex_of(&self, name: &str) -> Option<u32> {
        self.links
            .borrow()
            .values()
            .find(|l| l.name == name)
            .map(|l| l.ifindex)
    }

    fn fit_monitor(&mut self, _routes: usize) {}

    fn attach(&mut self, ifname: &str, _probe_rx: ProbeRx) -> Result<Attached, DatapathError> {
        let ifindex = self
            .ifindex_of(ifname)
            .ok_or_else(|| DatapathError::NoSuchInterface(ifname.to_string()))?;
        if self.refuse_attach.contains(ifname) {
            return Err(DatapathError::Xdp {
                native: "the MTU is too large for XDP".into(),
                generic: "the MTU is too large for XDP".into(),
            });
        }
        self.attached.insert(ifindex);
        Ok(Attached {
            ifindex,
            native_xdp_refused: None,
        })
    }

    fn still_attached(&self, ifindex: u32) -> Result<bool, DatapathError> {
        Ok(self.attached.contains(&ifindex))
    }

    fn forget(&mut self, ifindex: u32) {
        self.attached.remove(&ifindex);
        self.nic_infos.remove(&ifindex);
    }

    fn pinned_nics(&self) -> Result<Vec<u32>, DatapathError> {
        Ok(self.attached.iter().copied().collect())
    }

    fn attach_source_hook(&mut self) -> Result<PathBuf, String> {
        Err("the fake host has no cgroup hierarchy".into())
    }

    fn source_hook_attached(&self) -> Result<bool, DatapathError> {
        Ok(false)
    }

    fn attach_carrier_hook(&mut self) -> Result<(), String> {
        Err("the fake host has no tracing hooks".into())
    }

    fn detach_source_hook(&mut self) -> Result<(), DatapathError> {
        Ok(())
    }

    fn set_settings(&mut self, settings: Settings) -> Result<(), MapsError> {
        self.settings = Some(settings);
        Ok(())
    }

    fn clear_carrier_marks(&mut self) -> Result<(), MapsError> {
        if self.carrier_marks_stuck {
            let ifindex = self.carrier_marks.first().copied().unwrap_or(0);
            return Err(MapsError::UnknownNic(ifindex));
        }
        self.carrier_marks.clear();
        Ok(())
    }

    fn nic_info(&self, ifindex: u32) -> Result<NicInfo, MapsError> {
        self.nic_infos
            .get(&ifindex)
            .copied()
            .ok_or(MapsError::UnknownNic(ifindex))
    }

    fn set_nic(&mut self, ifindex: u32, info: NicInfo) -> Result<(), MapsError> {
        self.nic_infos.insert(ifindex, info);
        Ok(())
    }

    fn update_nic(
        &mut self,
        ifindex: u32,
        edit: impl FnOnce(&mut NicInfo),
    ) -> Result<(), MapsError> {
        let info = self
            .nic_infos
            .get_mut(&ifindex)
            .ok_or(MapsError::UnknownNic(ifindex))?;
        edit(info);
        Ok(())
    }

    fn set_routed(&mut self, ifindex: u32, _routed: bool) -> Result<(), MapsError> {
        self.nic_infos
            .contains_key(&ifindex)
            .then_some(())
            .ok_or(MapsError::UnknownNic(ifindex))
    }

    fn set_test_address(&mut self, _addr: Ipv4Addr, ifindex: u32) -> Result<(), MapsError> {
        self.nic_infos
            .contains_key(&ifindex)
            .then_some(())
            .ok_or(MapsError::UnknownNic(ifindex))
    }

    fn remove_test_address(&mut self, _addr: Ipv4Addr) -> Result<(), MapsError> {
        Ok(())
    }

    fn table(&self, group: GroupId) -> Result<Table, MapsError> {
        Ok(self
            .tables
            .get(&group)
            .copied()
            .unwrap_or([0; BUCKETS_PER_GROUP as usize]))
    }

    fn write_table(
        &mut self,
        group: GroupId,
        table: &Table,
        _mac_of: impl Fn(u32) -> [u8; 6],
    ) -> Result<usize, MapsError> {
        let before = self.table(group)?;
        self.record(Effect::WriteTable { group });
        self.tables.insert(group, *table);
        Ok(before.iter().zip(table).filter(|(a, b)| a != b).count())
    }

    fn counters(&self, _slot: NicSlot) -> Result<NicCounters, MapsError> {
        Ok(NicCounters::default())
    }

    fn replies_over_budget(&self, _slot: NicSlot) -> Result<u64, MapsError> {
        Ok(0)
    }

    fn clear_counters(&mut self, _slot: NicSlot) -> Result<(), MapsError> {
        Ok(())
    }

    fn write_source_routes(
        &mut self,
        routes: &BTreeMap<IpCidr, Option<u32>>,
    ) -> Result<[Served; 2], MapsError> {
        let served = |map| Served {
            map,
            limit: u32::MAX,
            wanted: routes.len(),
            served: routes.len(),
            error: None,
        };
        Ok([served("source_routes"), served("source_routes4")])
    }

    fn patch_source_routes(&mut self, _patch: &BTreeMap<IpCidr, Option<Option<u32>>>) -> bool {
        true
    }

    fn write_sources(
        &mut self,
        group: GroupId,
        class: SourceClass,
        _addrs: &[IpCidr],
    ) -> Result<bool, MapsError> {
        self.record(Effect::WriteSources { group, class });
        Ok(false)
    }

    fn clear_other_groups_sources(&mut self, _groups: &[GroupId]) -> Result<(), MapsError> {
        Ok(())
    }

    fn source_counters(&self, _group: GroupId) -> Result<SourceCounters, MapsError> {
        Ok(SourceCounters::default())
    }

    fn announce(&self, announcement: &Announcement) -> io::Result<()> {
        self.announced.borrow_mut().push(*announcement);
        Ok(())
    }

    fn memberships(&self) -> Result<ByIfindex, MulticastError> {
        Ok(self.memberships.clone())
    }

    fn join(&mut self, ifindex: u32, group: IpAddr) -> Result<(), MulticastError> {
        if self.joined.insert((ifindex, group)) {
            self.record(Effect::Join { ifindex, group });
            self.join_by_application(ifindex, group);
        }
        Ok(())
    }

    fn report_v4(&self, ifindex: u32, groups: &[Ipv4Addr]) -> Result<IgmpVersion, MulticastError> {
        self.reported.borrow_mut().push((ifindex, groups.to_vec()));
        Ok(IgmpVersion::V3)
    }

    fn leave(&mut self, ifindex: u32, group: IpAddr) -> Result<(), MulticastError> {
        if self.joined.contains(&(ifindex, group)) {
            self.record(Effect::Leave { ifindex, group });
        }
        if self.joined.remove(&(ifindex, group))
            && let Some(groups) = self.memberships.get_mut(&ifindex)
            && let Some(users) = groups.get_mut(&group)
        {
            *users -= 1;
            if *users == 0 {
                groups.remove(&group);
            }
        }
        Ok(())
    }

    fn open_probe_socket(
        &self,
        _ifname: &str,
        ifindex: u32,
        test: IpAddr,
    ) -> io::Result<Box<dyn ProbeSender>> {
        let bound = self
            .addresses
            .borrow()
            .iter()
            .any(|(i, c, _)| *i == ifindex && c.addr() == test);
        if !bound {
            return Err(io::ErrorKind::AddrNotAvailable.into());
        }
        Ok(Box::new(FakeProbeSocket {
            ifindex,
            sent: Rc::clone(&self.sent),
        }))
    }

    fn watch_carrier(&mut self, _ifname: &str, _ifindex: u32, _armed: bool) -> io::Result<()> {
        Ok(())
    }

    fn arm_carrier(&self, _ifindex: u32, _armed: bool) {}

    fn forget_carrier(&self, _ifindex: u32) {}

    fn set_carrier_period(&self, _period: Option<Duration>) {}

    fn netconf(&self) -> Netconf {
        Netconf::at(self.netconf.path())
    }
}
