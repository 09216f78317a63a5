//! mpathd's view of the kernel's links, addresses and routes over rtnetlink: requests through
//! [`Netlink`], change notifications through [`Monitor`].
//!
//! Everything acts on the network namespace of the thread that opens the socket
//! ([`Netlink::connect`], [`Monitor::open`]); the socket stays there whatever thread polls it later.
//! Both need a running tokio runtime. Nothing here runs `ip`.
//!
//! To (re)synchronise, open the [`Monitor`] first and dump afterwards: a change that races
//! with the dump then still arrives as an event.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, RawFd};

use bytes::BytesMut;
use futures_channel::mpsc::UnboundedReceiver;
use futures_util::{StreamExt, TryStreamExt};
use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST, NLMSG_OVERRUN,
    NetlinkBuffer, NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    NetlinkSerializable,
};
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressMessage, AddressProtocol, CacheInfo,
};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkLayerType, LinkMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
    RouteVia,
};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleFlags, RuleMessage};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::proto::{NetlinkCodec, NetlinkMessageCodec};
use rtnetlink::sys::{AsyncSocket, SocketAddr, TokioSocket, protocols::NETLINK_ROUTE};
use rtnetlink::{Handle, IpVersion, MulticastGroup};
use thiserror::Error;
use tokio::task::JoinHandle;

use crate::core::routes::{Hop, Hops, LinkRoute, MainRoute, TableRoute, Via};
use crate::net::address::IpCidr;

/// The `rtm_protocol` of mpathd's routes, rules and nexthops, so that `ip route` shows who
/// owns them (`dist/rt_protos.d/mpathd.conf` names it) and a restarted mpathd finds them.
pub(crate) const MPATHD_PROTOCOL: u8 = 109;

/// The table of the host's own addresses (local and broadcast routes).
const RT_TABLE_LOCAL: u32 = 255;

/// What the header of a route message says of a table above 255, which only RTA_TABLE holds.
const RT_TABLE_COMPAT: u8 = 252;

/// The main table, whose routes group routes are made from.
pub const MAIN_TABLE: u32 = RouteHeader::RT_TABLE_MAIN as u32;

/// The kernel's "forever" for address lifetimes (INFINITY_LIFE_TIME).
const INFINITE_LIFETIME: u32 = u32::MAX;

/// Where a [`Monitor`] subscribes: links, addresses, routes and rules of both families.
const MONITOR_GROUPS: [MulticastGroup; 8] = [
    MulticastGroup::Link,
    MulticastGroup::Ipv4Ifaddr,
    MulticastGroup::Ipv6Ifaddr,
    MulticastGroup::Ipv4Route,
    MulticastGroup::Ipv6Route,
    MulticastGroup::Ipv4Rule,
    MulticastGroup::Ipv6Rule,
    // Someone else deleting mpathd's nexthop groups (systemd-networkd does when it
    // configures a link) takes the IPv4 routes through them along without a word.
    MulticastGroup::Nexthop,
];

/// Nexthop notifications (linux/rtnetlink.h), which netlink-packet-route cannot parse.
const RTM_NEWNEXTHOP: u16 = 104;
const RTM_DELNEXTHOP: u16 = 105;

/// A link as IPMP cares about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub ifindex: u32,
    pub name: String,
    /// The Ethernet address; `None` for links that have none (loopback has one of zeros).
    pub mac: Option<[u8; 6]>,
    /// IFF_UP: administratively up.
    pub up: bool,
    /// IFF_RUNNING: operationally up (RFC 2863 operstate UP or UNKNOWN).
    pub running: bool,
    /// IFF_LOWER_UP: the driver reports carrier.
    pub lower_up: bool,
}

impl Link {
    /// Whether the link can carry IPMP traffic. Solaris's IFF_RUNNING (what in.mpathd's
    /// link-based detection reads) is the driver's link-up, i.e. carrier: Linux's
    /// IFF_LOWER_UP. Linux's own IFF_RUNNING is the operational state, which also drops for
    /// a dormant link and lags carrier by linkwatch's delay in either direction, so a link
    /// is usable only when up, running and with carrier: it fails on whichever drops first
    /// and is repaired only when both agree.
    pub fn usable(&self) -> bool {
        self.up && self.running && self.lower_up
    }

    /// `None` for the bridge's per-port messages (family AF_BRIDGE), which describe a port's
    /// bridge membership rather than the link, and for messages without a name.
    fn from_message(message: &LinkMessage) -> Option<Link> {
        if message.header.interface_family == AddressFamily::Bridge {
            return None;
        }
        let name = link_name(message)?;
        let mac = if message.header.link_layer_type == LinkLayerType::Ether {
            message
                .attributes
                .iter()
                .find_map(|attribute| match attribute {
                    LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
                    _ => None,
                })
        } else {
            None
        };
        let flags = message.header.flags;
        Some(Link {
            ifindex: message.header.index,
            name,
            mac,
            up: flags.contains(LinkFlags::Up),
            running: flags.contains(LinkFlags::Running),
            lower_up: flags.contains(LinkFlags::LowerUp),
        })
    }
}

/// A change the kernel announced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetEvent {
    /// A link appeared or one of its attributes (flags, name, MAC...) changed; compare with
    /// the last known state.
    Link(Link),
    LinkRemoved {
        ifindex: u32,
        name: String,
    },
    /// An address appeared or changed (e.g. finished DAD or was deprecated): it is present.
    AddressAdded {
        ifindex: u32,
        cidr: IpCidr,
    },
    AddressRemoved {
        ifindex: u32,
        cidr: IpCidr,
    },
    /// A route of any table but `local` was added or replaced; the notice has all of it.
    RouteAdded(RouteNotice),
    /// A route was deleted, or (IPv6) some of its next hops: those the notice names.
    RouteRemoved(RouteNotice),
    /// A routing rule was added or deleted.
    RulesChanged,
    /// One of mpathd's nexthop objects was deleted: by the kernel with its NIC's carrier or
    /// link (which also takes it out of its groups), by someone else, or by mpathd.
    NexthopDeleted {
        id: u32,
    },
    /// Events were lost (the socket's receive buffer overflowed, a message could not be
    /// parsed, or the socket failed and was reopened): the state known so far is stale,
    /// dump links, addresses and routes again.
    Overrun,
}

/// A route change the kernel announced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteNotice {
    pub table: u32,
    /// Who made the route (`rtm_protocol`): [`MPATHD_PROTOCOL`] for mpathd's own.
    pub protocol: u8,
    pub route: MainRoute,
    /// The route read as one of mpathd's table: through a nexthop object, or a throw.
    pub table_route: Option<TableRoute<u32>>,
    /// It took the place of another route (NLM_F_REPLACE).
    pub replace: bool,
}

/// How [`Netlink::add_address`] adds an address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddressOptions {
    /// IFA_F_NODAD: skip IPv6 Duplicate Address Detection so a moved address is usable at
    /// once instead of after about a second. Ignored for IPv4, which has no DAD.
    pub nodad: bool,
    /// Preferred lifetime 0 (deprecated): IPv6 source selection then avoids the address
    /// unless an application binds it. IPv4 records the flag but its source selection
    /// ignores it (the primary address of a subnet wins).
    pub preferred_lft_zero: bool,
    /// IFA_F_NOPREFIXROUTE: no connected route for the address's prefix, so the kernel never
    /// routes through a NIC because of its test address.
    pub noprefixroute: bool,
    /// Marks the address as mpathd's own (IFA_PROTO [`MPATHD_PROTOCOL`]): a configured data or
    /// test address, which a restarted mpathd removes when its configuration no longer has
    /// it. Addresses mpathd only moves for others (adopted ones) stay unmarked.
    pub mpathds: bool,
}

/// An interface as an error message names it: by name when the kernel still knew it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub ifindex: u32,
    pub name: Option<String>,
}

impl fmt::Display for Interface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "{name} (ifindex {})", self.ifindex),
            None => write!(f, "ifindex {}", self.ifindex),
        }
    }
}

/// A failed netlink operation; the kernel's errno is the `io::Error` source.
#[derive(Debug, Error)]
pub enum NetlinkError {
    #[error("netlink sockets need a running tokio runtime")]
    NoRuntime,
    #[error("opening an rtnetlink socket: {0}")]
    Open(#[source] io::Error),
    #[error("opening the rtnetlink monitor for link, address and route changes: {0}")]
    OpenMonitor(#[source] io::Error),
    #[error("listing links: {0}")]
    ListLinks(#[source] io::Error),
    #[error("looking up link {name}: {source}")]
    GetLink { name: String, source: io::Error },
    #[error("listing addresses: {0}")]
    ListAddresses(#[source] io::Error),
    #[error("adding address {cidr} to {interface}: {source}")]
    AddAddress {
        interface: Interface,
        cidr: IpCidr,
        source: io::Error,
    },
    #[error("removing address {cidr} from {interface}: {source}")]
    DelAddress {
        interface: Interface,
        cidr: IpCidr,
        source: io::Error,
    },
    #[error("listing {family} routes: {source}")]
    ListRoutes {
        family: &'static str,
        source: io::Error,
    },
    #[error("setting the route to {destination} in table {table}: {source}")]
    SetRoute {
        destination: IpCidr,
        table: u32,
        source: io::Error,
    },
    #[error("deleting the route to {destination} from table {table}: {source}")]
    DelRoute {
        destination: IpCidr,
        table: u32,
        source: io::Error,
    },
    #[error("keeping {destination} on-link through ifindex {oif}: {source}")]
    SetLinkRoute {
        destination: IpCidr,
        oif: u32,
        source: io::Error,
    },
    #[error("removing the on-link route to {destination} through ifindex {oif}: {source}")]
    DelLinkRoute {
        destination: IpCidr,
        oif: u32,
        source: io::Error,
    },
    #[error("changing mpathd's routing rules: {0}")]
    Rule(#[source] io::Error),
    #[error("putting back the kernel's route to {destination} through ifindex {oif}: {source}")]
    PrefixRoute {
        destination: IpCidr,
        oif: u32,
        source: io::Error,
    },
}

impl NetlinkError {
    /// Whether the kernel refused an IPv6 address or route because IPv6 is disabled on the
    /// NIC (`disable_ipv6`): EACCES means that, and only that, for an address or an on-link
    /// route it is asked to add.
    pub fn ipv6_disabled(&self) -> bool {
        let (added, source) = match self {
            NetlinkError::AddAddress { cidr, source, .. } => (cidr, source),
            NetlinkError::SetLinkRoute {
                destination,
                source,
                ..
            }
            | NetlinkError::PrefixRoute {
                destination,
                source,
                ..
            } => (destination, source),
            _ => return false,
        };
        added.addr().is_ipv6() && source.raw_os_error() == Some(libc::EACCES)
    }
}

/// Requests to the kernel: dumps of links, addresses and routes, and address changes.
#[derive(Debug)]
pub struct Netlink {
    handle: Handle,
    connection: JoinHandle<()>,
    /// Route dumps, on a socket with strict checking (NETLINK_GET_STRICT_CHK): the kernel
    /// then sends only the routes of the table, protocol and NIC asked for, where without it
    /// every route of every table comes and is sorted out here.
    route_dumps: Handle,
    route_dumps_connection: JoinHandle<()>,
}

/// Which routes a dump asks the kernel for.
#[derive(Clone, Copy, Debug)]
struct RouteFilter {
    table: u32,
    /// Only those of this `rtm_protocol`.
    protocol: Option<u8>,
    /// Only those with a next hop through this NIC.
    oif: Option<u32>,
}

impl Netlink {
    /// Opens a request socket in the calling thread's network namespace.
    pub fn connect() -> Result<Netlink, NetlinkError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_outside_tokio| NetlinkError::NoRuntime)?;
        let (connection, handle, _unsolicited) =
            rtnetlink::new_connection().map_err(NetlinkError::Open)?;
        let (route_dumps_connection, route_dumps, _unsolicited) =
            rtnetlink::new_connection_with_strict_check().map_err(NetlinkError::Open)?;
        Ok(Netlink {
            handle,
            connection: runtime.spawn(connection),
            route_dumps,
            route_dumps_connection: runtime.spawn(route_dumps_connection),
        })
    }

    /// Every link of the namespace.
    pub async fn links(&self) -> Result<Vec<Link>, NetlinkError> {
        let messages: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|error| NetlinkError::ListLinks(io_error(error)))?;
        Ok(messages.iter().filter_map(Link::from_message).collect())
    }

    /// The link called `name`, or `None` when there is none.
    pub async fn link(&self, name: &str) -> Result<Option<Link>, NetlinkError> {
        let reply = self
            .handle
            .link()
            .get()
            .match_name(name)
            .execute()
            .try_next()
            .await;
        match reply {
            Ok(message) => Ok(message.as_ref().and_then(Link::from_message)),
            Err(error) if errno(&error) == Some(libc::ENODEV) => Ok(None),
            Err(error) => Err(NetlinkError::GetLink {
                name: name.to_string(),
                source: io_error(error),
            }),
        }
    }

    /// Every IPv4 and IPv6 address as `(ifindex, address)`, link-local and loopback included.
    pub async fn addresses(&self) -> Result<Vec<(u32, IpCidr)>, NetlinkError> {
        let all = self.addresses_with_origin().await?;
        Ok(all
            .into_iter()
            .map(|(ifindex, cidr, _)| (ifindex, cidr))
            .collect())
    }

    /// Every global unicast address (link-local, loopback and multicast ones are per NIC by
    /// nature) with who put it there.
    pub(crate) async fn addresses_by_origin(
        &self,
    ) -> Result<Vec<(u32, IpCidr, Origin)>, NetlinkError> {
        let all = self.addresses_with_origin().await?;
        Ok(all
            .into_iter()
            .filter(|(_, cidr, _)| cidr.is_global_unicast())
            .collect())
    }

    /// Every address, with who put it there.
    pub(crate) async fn addresses_with_origin(
        &self,
    ) -> Result<Vec<(u32, IpCidr, Origin)>, NetlinkError> {
        let messages: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|error| NetlinkError::ListAddresses(io_error(error)))?;
        Ok(messages
            .iter()
            .filter_map(|message| {
                let (ifindex, cidr) = address_of(message)?;
                Some((ifindex, cidr, origin(message)))
            })
            .collect())
    }

    /// Adds `cidr` to the interface, or brings an address already there to `options`
    /// (lifetimes, flags, owner), so adding twice is not an error. IPv4 addresses get the subnet's
    /// broadcast address, as `ip addr add ... brd +` sets it. IPv6 identifies an address by
    /// its value alone: one already present with another prefix length keeps that length.
    pub async fn add_address(
        &self,
        ifindex: u32,
        cidr: IpCidr,
        options: AddressOptions,
    ) -> Result<(), NetlinkError> {
        let mut request = self
            .handle
            .address()
            .add(ifindex, cidr.addr(), cidr.prefix_len())
            .replace();
        let attributes = &mut request.message_mut().attributes;
        if options.mpathds {
            attributes.push(AddressAttribute::Protocol(AddressProtocol::from(
                MPATHD_PROTOCOL,
            )));
        }
        let mut flags = AddressFlags::empty();
        if options.nodad && cidr.addr().is_ipv6() {
            flags |= AddressFlags::Nodad;
        }
        if options.noprefixroute {
            flags |= AddressFlags::Noprefixroute;
        }
        if !flags.is_empty() {
            attributes.push(AddressAttribute::Flags(flags));
        }
        if options.preferred_lft_zero {
            let mut lifetimes = CacheInfo::default();
            lifetimes.ifa_preferred = 0;
            lifetimes.ifa_valid = INFINITE_LIFETIME;
            attributes.push(AddressAttribute::CacheInfo(lifetimes));
        }
        match request.execute().await {
            Ok(()) => Ok(()),
            Err(error) => Err(NetlinkError::AddAddress {
                interface: self.interface(ifindex).await,
                cidr,
                source: io_error(error),
            }),
        }
    }

    /// Removes `cidr` from the interface; an address (or interface) already gone is not an
    /// error.
    pub async fn del_address(&self, ifindex: u32, cidr: IpCidr) -> Result<(), NetlinkError> {
        let mut message = AddressMessage::default();
        message.header.index = ifindex;
        message.header.prefix_len = cidr.prefix_len();
        message.header.family = match cidr.addr() {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        message.attributes = vec![
            AddressAttribute::Local(cidr.addr()),
            AddressAttribute::Address(cidr.addr()),
        ];
        match self.handle.address().del(message).execute().await {
            Ok(()) => Ok(()),
            Err(error)
                if matches!(
                    errno(&error),
                    Some(libc::EADDRNOTAVAIL) | Some(libc::ENODEV)
                ) =>
            {
                Ok(())
            }
            Err(error) => Err(NetlinkError::DelAddress {
                interface: self.interface(ifindex).await,
                cidr,
                source: io_error(error),
            }),
        }
    }

    /// The routes of the main table, IPv4 then IPv6, mpathd's own [`LinkRoute`]s left out.
    /// Next hops marked dead or linkdown are listed too: they are still in the table and come
    /// back with their link.
    pub async fn main_routes(&self) -> Result<Vec<MainRoute>, NetlinkError> {
        let filter = RouteFilter {
            table: MAIN_TABLE,
            protocol: None,
            oif: None,
        };
        Ok(self
            .route_messages(filter)
            .await?
            .iter()
            .filter(|message| !is_mpathds(message))
            .filter_map(main_route)
            .collect())
    }

    /// The routes of the main table with a next hop through `oif` (none when it is gone),
    /// mpathd's own left out.
    pub async fn main_routes_through(&self, oif: u32) -> Result<Vec<MainRoute>, NetlinkError> {
        let filter = RouteFilter {
            table: MAIN_TABLE,
            protocol: None,
            oif: Some(oif),
        };
        Ok(self
            .route_messages(filter)
            .await?
            .iter()
            .filter(|message| !is_mpathds(message))
            .filter_map(main_route)
            .collect())
    }

    /// mpathd's [`LinkRoute`]s in the main table.
    pub(crate) async fn link_routes(&self) -> Result<Vec<LinkRoute>, NetlinkError> {
        let filter = RouteFilter {
            table: MAIN_TABLE,
            protocol: Some(MPATHD_PROTOCOL),
            oif: None,
        };
        Ok(self
            .route_messages(filter)
            .await?
            .iter()
            .filter(|message| table_of(message) == MAIN_TABLE)
            .filter_map(|message| {
                let route = main_route(message)?;
                let [hop] = route.hops.as_slice() else {
                    return None;
                };
                Some(LinkRoute {
                    destination: route.destination,
                    oif: hop.oif,
                    metric: route.metric,
                    prefsrc: route.prefsrc,
                })
            })
            .collect())
    }

    /// Adds or replaces a [`LinkRoute`].
    pub(crate) async fn set_link_route(&self, route: &LinkRoute) -> Result<(), NetlinkError> {
        let message = link_route_message(route);
        self.handle
            .route()
            .add(message)
            .replace()
            .execute()
            .await
            .map_err(|error| NetlinkError::SetLinkRoute {
                destination: route.destination,
                oif: route.oif,
                source: io_error(error),
            })
    }

    /// Makes again the route the kernel made in main for an address's prefix (`route`, as the
    /// kernel reported its deletion: `proto kernel`, on-link, IPv4's with the address as its
    /// source), which someone deleted while the address stayed: true when it was missing,
    /// false when the kernel had made it again (no error).
    pub(crate) async fn restore_prefix_route(
        &self,
        oif: u32,
        route: &MainRoute,
    ) -> Result<bool, NetlinkError> {
        let mut message = table_route_message(MAIN_TABLE, route.destination, route.metric);
        message.header.protocol = RouteProtocol::Kernel;
        if route.destination.addr().is_ipv4() {
            message.header.scope = RouteScope::Link;
        }
        message.attributes.push(RouteAttribute::Oif(oif));
        if let Some(source) = route.prefsrc {
            message
                .attributes
                .push(RouteAttribute::PrefSource(route_address_of(source)));
        }
        // Appended beside the other NICs' routes to the prefix, as the kernel does: a plain
        // add (NLM_F_EXCL) is refused when another NIC has one at the same metric.
        let mut request = NetlinkMessage::from(RouteNetlinkMessage::NewRoute(message));
        request.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND;
        match acknowledged(self.handle.clone().request(request)).await {
            Ok(()) => Ok(true),
            Err(error) if errno(&error) == Some(libc::EEXIST) => Ok(false),
            Err(error) => Err(NetlinkError::PrefixRoute {
                destination: route.destination,
                oif,
                source: io_error(error),
            }),
        }
    }

    /// Deletes a [`LinkRoute`]; one already gone (with its NIC, say) is not an error.
    pub(crate) async fn del_link_route(&self, route: &LinkRoute) -> Result<(), NetlinkError> {
        let mut message = link_route_message(route);
        message.header.kind = RouteType::Unspec;
        match self.handle.route().del(message).execute().await {
            Ok(()) => Ok(()),
            Err(error) if matches!(errno(&error), Some(libc::ESRCH | libc::ENODEV)) => Ok(()),
            Err(error) => Err(NetlinkError::DelLinkRoute {
                destination: route.destination,
                oif: route.oif,
                source: io_error(error),
            }),
        }
    }

    /// The routes mpathd keeps in `table`, by destination and metric.
    pub(crate) async fn table_routes(
        &self,
        table: u32,
    ) -> Result<Vec<((IpCidr, u32), TableRoute<u32>)>, NetlinkError> {
        let filter = RouteFilter {
            table,
            protocol: Some(MPATHD_PROTOCOL),
            oif: None,
        };
        Ok(self
            .route_messages(filter)
            .await?
            .iter()
            .filter(|message| table_of(message) == table)
            .filter_map(table_route)
            .collect())
    }

    /// Adds or replaces a route of mpathd's `table`.
    pub(crate) async fn set_table_route(
        &self,
        table: u32,
        destination: IpCidr,
        metric: u32,
        route: &TableRoute<u32>,
    ) -> Result<(), NetlinkError> {
        let mut message = table_route_message(table, destination, metric);
        match route.via {
            Via::Group(id) => message.attributes.push(RouteAttribute::NhId(id)),
            Via::Throw => message.header.kind = RouteType::Throw,
        }
        if let Some(source) = route.prefsrc {
            message
                .attributes
                .push(RouteAttribute::PrefSource(route_address_of(source)));
        }
        self.handle
            .route()
            .add(message)
            .replace()
            .execute()
            .await
            .map_err(|error| NetlinkError::SetRoute {
                destination,
                table,
                source: io_error(error),
            })
    }

    /// Deletes a route of mpathd's `table`; one already gone is not an error.
    pub(crate) async fn del_table_route(
        &self,
        table: u32,
        destination: IpCidr,
        metric: u32,
    ) -> Result<(), NetlinkError> {
        let mut message = table_route_message(table, destination, metric);
        message.header.kind = RouteType::Unspec;
        match self.handle.route().del(message).execute().await {
            Ok(()) => Ok(()),
            Err(error) if errno(&error) == Some(libc::ESRCH) => Ok(()),
            Err(error) => Err(NetlinkError::DelRoute {
                destination,
                table,
                source: io_error(error),
            }),
        }
    }

    /// Makes sure a rule at `priority` sends IPv4 and IPv6 lookups to `table` first, and
    /// that no other rule of mpathd's is left (from an earlier configuration or release). The
    /// new rule is in place before an old one goes, so no lookup misses the table.
    pub(crate) async fn ensure_rules(&self, table: u32, priority: u32) -> Result<(), NetlinkError> {
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let wanted = rule_message(family, table, priority);
            let rules = self.mpathd_rules(family).await?;
            // The kernel reports a table above 255 as RT_TABLE_COMPAT in the header: compare
            // what identifies the rule.
            let is_wanted = |rule: &RuleMessage| {
                rule.header.action == wanted.header.action
                    && rule.header.dst_len == wanted.header.dst_len
                    && rule.header.flags.contains(RuleFlags::Invert)
                        == wanted.header.flags.contains(RuleFlags::Invert)
                    && rule_table(rule) == table
                    && rule_priority(rule) == Some(priority)
                    && rule_destination(rule) == rule_destination(&wanted)
            };
            if !rules.iter().any(is_wanted) {
                let mut request = self.handle.rule().add();
                *request.message_mut() = wanted.clone();
                request
                    .execute()
                    .await
                    .map_err(|error| NetlinkError::Rule(io_error(error)))?;
            }
            for rule in rules.into_iter().filter(|r| !is_wanted(r)) {
                self.del_rule(rule).await?;
            }
        }
        Ok(())
    }

    /// Removes mpathd's rules of both families, going on past each failure (for `mpathd
    /// --teardown`, which reports them all).
    pub(crate) async fn del_rules(&self) -> Result<(), Vec<NetlinkError>> {
        let mut errors = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            match self.mpathd_rules(family).await {
                Ok(rules) => {
                    for rule in rules {
                        errors.extend(self.del_rule(rule).await.err());
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    async fn mpathd_rules(&self, family: AddressFamily) -> Result<Vec<RuleMessage>, NetlinkError> {
        let version = match family {
            AddressFamily::Inet6 => IpVersion::V6,
            _ => IpVersion::V4,
        };
        let rules: Vec<RuleMessage> = self
            .handle
            .rule()
            .get(version)
            .execute()
            .try_collect()
            .await
            .map_err(|error| NetlinkError::Rule(io_error(error)))?;
        Ok(rules
            .into_iter()
            .filter(|rule| {
                rule.attributes.iter().any(
                    |a| matches!(a, RuleAttribute::Protocol(p) if u8::from(*p) == MPATHD_PROTOCOL),
                )
            })
            .collect())
    }

    async fn del_rule(&self, rule: RuleMessage) -> Result<(), NetlinkError> {
        match self.handle.rule().del(rule).execute().await {
            Ok(()) => Ok(()),
            Err(error) if errno(&error) == Some(libc::ENOENT) => Ok(()),
            Err(error) => Err(NetlinkError::Rule(io_error(error))),
        }
    }

    /// The routes `filter` asks for, IPv4 then IPv6, filtered by the kernel. A table that
    /// does not exist yet (ENOENT) or a NIC already gone (ENODEV) has none.
    async fn route_messages(&self, filter: RouteFilter) -> Result<Vec<RouteMessage>, NetlinkError> {
        let mut messages = Vec::new();
        for (family, family_name) in [
            (AddressFamily::Inet, "IPv4"),
            (AddressFamily::Inet6, "IPv6"),
        ] {
            let mut query = RouteMessage::default();
            query.header.address_family = family;
            query.header.table = u8::try_from(filter.table).unwrap_or(RT_TABLE_COMPAT);
            query.attributes.push(RouteAttribute::Table(filter.table));
            if let Some(protocol) = filter.protocol {
                query.header.protocol = RouteProtocol::from(protocol);
            }
            if let Some(oif) = filter.oif {
                query.attributes.push(RouteAttribute::Oif(oif));
            }
            let found: Result<Vec<RouteMessage>, _> = self
                .route_dumps
                .route()
                .get(query)
                .execute()
                .try_collect()
                .await;
            match found {
                Ok(found) => messages.extend(found),
                Err(error) if matches!(errno(&error), Some(libc::ENOENT | libc::ENODEV)) => {}
                Err(error) => {
                    return Err(NetlinkError::ListRoutes {
                        family: family_name,
                        source: io_error(error),
                    });
                }
            }
        }
        Ok(messages)
    }

    /// Names `ifindex` for an error message, as well as the kernel still can.
    async fn interface(&self, ifindex: u32) -> Interface {
        let reply = self
            .handle
            .link()
            .get()
            .match_index(ifindex)
            .execute()
            .try_next()
            .await;
        Interface {
            ifindex,
            name: reply.ok().flatten().as_ref().and_then(link_name),
        }
    }
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.connection.abort();
        self.route_dumps_connection.abort();
    }
}

/// Change notifications for links, addresses and routes.
#[derive(Debug)]
pub struct Monitor {
    messages: UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>,
    connection: JoinHandle<()>,
    /// The socket's descriptor, owned by `connection`, which lives as long as the monitor.
    fd: RawFd,
    receive_buffer: usize,
}

impl Monitor {
    /// Receive buffer of [`Monitor::open`]: room for thousands of notifications, so a burst
    /// (a NIC with many addresses going away) does not overflow it while the daemon is busy.
    /// Memory is only used while notifications wait.
    pub const DEFAULT_RECEIVE_BUFFER: usize = 8 << 20;

    #[cfg(any(test, feature = "testing"))]
    /// Subscribes in the calling thread's network namespace.
    pub fn open() -> Result<Monitor, NetlinkError> {
        Monitor::open_with_receive_buffer(Self::DEFAULT_RECEIVE_BUFFER)
    }

    /// Like [`Monitor::open`] with a receive buffer of `bytes` (the kernel doubles it and
    /// enforces a minimum of a few KiB). Beyond `net.core.rmem_max` it needs CAP_NET_ADMIN.
    pub fn open_with_receive_buffer(bytes: usize) -> Result<Monitor, NetlinkError> {
        let (connection, messages, fd) = subscribe(bytes)?;
        Ok(Monitor {
            messages,
            connection,
            fd,
            receive_buffer: bytes,
        })
    }

    /// Grows the receive buffer to hold a notification for each of `routes` routes, past
    /// [`Monitor::DEFAULT_RECEIVE_BUFFER`]: a table flushed or filled at once is announced
    /// faster than mpathd reads, and a notification dropped costs a read of every table.
    /// Memory is only used while notifications wait.
    pub fn fit(&mut self, routes: usize) {
        /// A route notification with its socket buffer overhead, rounded up.
        const BYTES_PER_ROUTE: usize = 512;
        let wanted = routes.saturating_mul(BYTES_PER_ROUTE);
        if wanted <= self.receive_buffer.max(Self::DEFAULT_RECEIVE_BUFFER) {
            return;
        }
        match set_receive_buffer(self.fd, wanted) {
            Ok(()) => self.receive_buffer = wanted,
            Err(e) => tracing::warn!(
                "growing the netlink event socket's buffer to {wanted} bytes for {routes} routes: {e}"
            ),
        }
    }

    /// The next event. Cancel safe: nothing is lost when the future is dropped unfinished.
    /// When the socket fails it is reopened and [`NetEvent::Overrun`] returned, since events
    /// may have been missed; only a failure to reopen is an error.
    pub async fn next(&mut self) -> Result<NetEvent, NetlinkError> {
        loop {
            match self.messages.next().await {
                Some((message, _)) => {
                    if let Some(event) = event_from_message(message) {
                        return Ok(event);
                    }
                }
                None => {
                    let (connection, messages, fd) = subscribe(self.receive_buffer)?;
                    self.connection.abort();
                    self.connection = connection;
                    self.messages = messages;
                    self.fd = fd;
                    return Ok(NetEvent::Overrun);
                }
            }
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

type Notifications = UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>;

/// Opens a socket subscribed to [`MONITOR_GROUPS`] and spawns its connection; returns the
/// socket's descriptor too.
fn subscribe(
    receive_buffer: usize,
) -> Result<(JoinHandle<()>, Notifications, RawFd), NetlinkError> {
    let runtime =
        tokio::runtime::Handle::try_current().map_err(|_outside_tokio| NetlinkError::NoRuntime)?;
    let mut socket = TokioSocket::new(NETLINK_ROUTE).map_err(NetlinkError::OpenMonitor)?;
    let fd = socket.socket_ref().as_raw_fd();
    set_receive_buffer(fd, receive_buffer).map_err(NetlinkError::OpenMonitor)?;
    let groups = MONITOR_GROUPS
        .iter()
        .fold(0, |mask, group| mask | 1 << (*group as u32 - 1));
    socket
        .socket_mut()
        .bind(&SocketAddr::new(0, groups))
        .map_err(NetlinkError::OpenMonitor)?;
    // Requests never go out on this socket: the handle is not needed.
    let (connection, _requests, messages) = rtnetlink::proto::from_socket_with_codec::<
        RouteNetlinkMessage,
        TokioSocket,
        ResyncOnUndecodable,
    >(socket);
    Ok((runtime.spawn(connection), messages, fd))
}

/// SO_RCVBUFFORCE passes `net.core.rmem_max` (root has CAP_NET_ADMIN); without the
/// capability SO_RCVBUF gets as much as the limit allows.
fn set_receive_buffer(fd: RawFd, bytes: usize) -> io::Result<()> {
    // The kernel doubles the value into an int.
    let size = libc::c_int::try_from(bytes)
        .unwrap_or(libc::c_int::MAX)
        .min(libc::c_int::MAX / 2);
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a live c_int on an open fd.
    let forced = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if forced == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() != Some(libc::EPERM) {
        return Err(error);
    }
    // SAFETY: as above.
    let plain = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if plain == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Decodes like netlink-proto's [`NetlinkCodec`], except that a message it cannot parse
/// becomes an NLMSG_OVERRUN (keeping the original header, so a request still gets its
/// answer): netlink-proto would log and drop it, and a dropped notification is a lost one.
/// Nexthop notifications, which it cannot parse either, are skipped but for the deletion of
/// one of mpathd's, passed on as its header with an empty (`Noop`) payload.
struct ResyncOnUndecodable;

impl NetlinkMessageCodec for ResyncOnUndecodable {
    fn decode<T>(src: &mut BytesMut) -> io::Result<Option<NetlinkMessage<T>>>
    where
        T: NetlinkDeserializable + fmt::Debug,
    {
        loop {
            if src.is_empty() {
                return Ok(None);
            }
            let length = match NetlinkBuffer::new_checked(src.as_ref()) {
                Ok(buffer) => buffer.length() as usize,
                Err(_) => {
                    // No way to find the next message of the datagram.
                    src.clear();
                    return Ok(Some(overrun(NetlinkHeader::default())));
                }
            };
            // Messages in a datagram start at 4-byte boundaries (NLMSG_ALIGN).
            let bytes = src.split_to(length.next_multiple_of(4).min(src.len()));
            let buffer = NetlinkBuffer::new(&bytes[..]);
            let mut header = NetlinkHeader::default();
            header.message_type = buffer.message_type();
            header.flags = buffer.flags();
            header.sequence_number = buffer.sequence_number();
            header.port_number = buffer.port_number();
            if matches!(header.message_type, RTM_NEWNEXTHOP | RTM_DELNEXTHOP) {
                // struct nhmsg: family, scope, protocol, ...
                let protocol = buffer.payload().get(2).copied();
                if header.message_type == RTM_DELNEXTHOP
                    && protocol == Some(MPATHD_PROTOCOL)
                    && let Some(id) = nexthop_id(buffer.payload())
                {
                    // Only a RouteNetlinkMessage can be handed on: the id takes the place
                    // of the sequence number (a notification's is its requester's).
                    header.sequence_number = id;
                    return Ok(Some(NetlinkMessage::new(header, NetlinkPayload::Noop)));
                }
                continue;
            }
            return match NetlinkMessage::<T>::deserialize(&bytes) {
                Ok(message) => Ok(Some(message)),
                Err(_) => Ok(Some(overrun(header))),
            };
        }
    }

    fn encode<T>(message: NetlinkMessage<T>, buf: &mut BytesMut) -> io::Result<()>
    where
        T: NetlinkSerializable + fmt::Debug,
    {
        NetlinkCodec::encode(message, buf)
    }
}

fn overrun<T>(mut header: NetlinkHeader) -> NetlinkMessage<T> {
    header.message_type = NLMSG_OVERRUN;
    NetlinkMessage::new(header, NetlinkPayload::Overrun(Vec::new()))
}

/// NHA_ID of a nexthop message's payload: struct nhmsg (8 bytes), then attributes.
fn nexthop_id(payload: &[u8]) -> Option<u32> {
    const NHA_ID: u16 = 1;
    let mut attributes = payload.get(8..)?;
    while attributes.len() >= 4 {
        let length = usize::from(u16::from_ne_bytes([attributes[0], attributes[1]]));
        let kind = u16::from_ne_bytes([attributes[2], attributes[3]]);
        if length < 4 {
            return None;
        }
        if kind == NHA_ID && length == 8 {
            return Some(u32::from_ne_bytes(attributes.get(4..8)?.try_into().ok()?));
        }
        attributes = attributes.get(length.next_multiple_of(4)..)?;
    }
    None
}

/// The event a notification stands for; `None` for those IPMP does not care about.
fn event_from_message(message: NetlinkMessage<RouteNetlinkMessage>) -> Option<NetEvent> {
    if is_own_nexthop_deletion(&message) {
        return Some(NetEvent::NexthopDeleted {
            id: message.header.sequence_number,
        });
    }
    let replace = message.header.flags & NLM_F_REPLACE != 0;
    let inner = match message.payload {
        NetlinkPayload::Overrun(_) => return Some(NetEvent::Overrun),
        NetlinkPayload::InnerMessage(inner) => inner,
        _ => return None,
    };
    match inner {
        RouteNetlinkMessage::NewLink(link) => Link::from_message(&link).map(NetEvent::Link),
        RouteNetlinkMessage::DelLink(link) => {
            // A port leaving a bridge is an AF_BRIDGE RTM_DELLINK; the link itself stays.
            (link.header.interface_family != AddressFamily::Bridge).then(|| NetEvent::LinkRemoved {
                ifindex: link.header.index,
                name: link_name(&link).unwrap_or_default(),
            })
        }
        RouteNetlinkMessage::NewAddress(address) => {
            address_of(&address).map(|(ifindex, cidr)| NetEvent::AddressAdded { ifindex, cidr })
        }
        RouteNetlinkMessage::DelAddress(address) => {
            address_of(&address).map(|(ifindex, cidr)| NetEvent::AddressRemoved { ifindex, cidr })
        }
        RouteNetlinkMessage::NewRoute(route) => {
            route_notice(&route, replace).map(NetEvent::RouteAdded)
        }
        RouteNetlinkMessage::DelRoute(route) => {
            route_notice(&route, false).map(NetEvent::RouteRemoved)
        }
        RouteNetlinkMessage::NewRule(_) | RouteNetlinkMessage::DelRule(_) => {
            Some(NetEvent::RulesChanged)
        }
        _ => None,
    }
}

/// A route notification as mpathd reads it; `None` for the `local` table (the host's own
/// addresses, which no group route depends on) and for routes without a destination.
fn route_notice(message: &RouteMessage, replace: bool) -> Option<RouteNotice> {
    let table = table_of(message);
    if table == RT_TABLE_LOCAL {
        return None;
    }
    Some(RouteNotice {
        table,
        protocol: u8::from(message.header.protocol),
        route: main_route(message)?,
        table_route: table_route(message).map(|(_, route)| route),
        replace,
    })
}

/// A deleted nexthop of mpathd's, as [`ResyncOnUndecodable`] passes it on: a header alone.
fn is_own_nexthop_deletion<T>(message: &NetlinkMessage<T>) -> bool {
    message.header.message_type == RTM_DELNEXTHOP && matches!(message.payload, NetlinkPayload::Noop)
}

fn link_name(message: &LinkMessage) -> Option<String> {
    message
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            LinkAttribute::IfName(name) => Some(name.clone()),
            _ => None,
        })
}

/// `(ifindex, address)` of an IPv4 or IPv6 address message. IFA_LOCAL is the interface's own
/// address (IFA_ADDRESS is the peer's on point-to-point links); IPv6 usually sends only
/// IFA_ADDRESS.
fn address_of(message: &AddressMessage) -> Option<(u32, IpCidr)> {
    if !matches!(
        message.header.family,
        AddressFamily::Inet | AddressFamily::Inet6
    ) {
        return None;
    }
    let local = message
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            AddressAttribute::Local(addr) => Some(*addr),
            _ => None,
        });
    let addr = local.or_else(|| {
        message
            .attributes
            .iter()
            .find_map(|attribute| match attribute {
                AddressAttribute::Address(addr) => Some(*addr),
                _ => None,
            })
    })?;
    let cidr = IpCidr::new(addr, message.header.prefix_len).ok()?;
    Some((message.header.index, cidr))
}

/// Who put an address on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// The kernel: IPv6 SLAAC and privacy addresses, link-local and loopback ones.
    Kernel,
    /// mpathd (marked with IFA_PROTO [`MPATHD_PROTOCOL`]).
    Mpathd,
    /// Anyone else: an administrator, a DHCP client, a network manager.
    Other,
}

/// Who made an address: IFA_PROTO says, or the temporary flag (which IPv6 shares with
/// IPv4's "secondary") marks a privacy address.
fn origin(message: &AddressMessage) -> Origin {
    let mut origin = Origin::Other;
    for attribute in &message.attributes {
        match attribute {
            AddressAttribute::Protocol(AddressProtocol::Other(protocol))
                if *protocol == MPATHD_PROTOCOL =>
            {
                origin = Origin::Mpathd
            }
            AddressAttribute::Protocol(AddressProtocol::Other(_)) => {}
            AddressAttribute::Protocol(_) => return Origin::Kernel,
            AddressAttribute::Flags(flags)
                if message.header.family == AddressFamily::Inet6
                    && flags.contains(AddressFlags::Secondary) =>
            {
                return Origin::Kernel;
            }
            _ => {}
        }
    }
    origin
}

/// The table of a route. Tables above 255 only fit RTA_TABLE; the header then says
/// RT_TABLE_COMPAT.
fn table_of(message: &RouteMessage) -> u32 {
    message
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            RouteAttribute::Table(table) => Some(*table),
            _ => None,
        })
        .unwrap_or(u32::from(message.header.table))
}

/// A route of the main table with one hop per next hop: the RTA_MULTIPATH list, or the
/// route's own RTA_OIF.
fn main_route(message: &RouteMessage) -> Option<MainRoute> {
    let destination = route_destination(message)?;
    let attributes = &message.attributes;
    let metric = attributes
        .iter()
        .find_map(|attribute| match attribute {
            RouteAttribute::Priority(metric) => Some(*metric),
            _ => None,
        })
        .unwrap_or(0);
    let prefsrc = attributes.iter().find_map(|attribute| match attribute {
        RouteAttribute::PrefSource(address) => route_address(address),
        _ => None,
    });
    let plain = message.header.kind == RouteType::Unicast
        && message.header.tos == 0
        && !attributes
            .iter()
            .any(|attribute| matches!(attribute, RouteAttribute::NhId(_)));
    let multipath = attributes.iter().find_map(|attribute| match attribute {
        RouteAttribute::MultiPath(hops) => Some(hops),
        _ => None,
    });
    let mut hops: Hops = match multipath {
        Some(hops) => hops
            .iter()
            .map(|hop| Hop {
                oif: hop.interface_index,
                gateway: gateway(&hop.attributes),
            })
            .collect(),
        None => attributes
            .iter()
            .find_map(|attribute| match attribute {
                RouteAttribute::Oif(oif) => Some(Hop {
                    oif: *oif,
                    gateway: gateway(attributes),
                }),
                _ => None,
            })
            .into_iter()
            .collect(),
    };
    // In a set's order: notifications and dumps list a multipath route's hops in orders of
    // their own.
    hops.sort_unstable();
    Some(MainRoute {
        destination,
        metric,
        tos: message.header.tos,
        plain,
        prefsrc,
        hops,
    })
}

/// A route of mpathd's table: through a nexthop group, or a throw.
fn table_route(message: &RouteMessage) -> Option<((IpCidr, u32), TableRoute<u32>)> {
    let route = main_route(message)?;
    let via = match message.header.kind {
        RouteType::Throw => Via::Throw,
        _ => Via::Group(
            message
                .attributes
                .iter()
                .find_map(|attribute| match attribute {
                    RouteAttribute::NhId(id) => Some(*id),
                    _ => None,
                })?,
        ),
    };
    let prefsrc = route.prefsrc;
    Some((
        (route.destination, route.metric),
        TableRoute { via, prefsrc },
    ))
}

/// The message naming a route of mpathd's `table` (type unicast, protocol mpathd).
fn table_route_message(table: u32, destination: IpCidr, metric: u32) -> RouteMessage {
    let mut message = RouteMessage::default();
    message.header.address_family = match destination.addr() {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    message.header.destination_prefix_length = destination.prefix_len();
    message.header.table = RouteHeader::RT_TABLE_UNSPEC;
    message.header.protocol = RouteProtocol::from(MPATHD_PROTOCOL);
    message.header.scope = RouteScope::Universe;
    message.header.kind = RouteType::Unicast;
    message.attributes = vec![
        RouteAttribute::Table(table),
        RouteAttribute::Destination(route_address_of(destination.addr())),
        RouteAttribute::Priority(metric),
    ];
    message
}

/// The message of a [`LinkRoute`]: `DESTINATION dev OIF proto mpathd scope link metric M`.
fn link_route_message(route: &LinkRoute) -> RouteMessage {
    let mut message = table_route_message(MAIN_TABLE, route.destination, route.metric);
    message.header.scope = RouteScope::Link;
    message.attributes.push(RouteAttribute::Oif(route.oif));
    if let Some(source) = route.prefsrc {
        message
            .attributes
            .push(RouteAttribute::PrefSource(route_address_of(source)));
    }
    message
}

/// Whether the route is mpathd's.
fn is_mpathds(message: &RouteMessage) -> bool {
    u8::from(message.header.protocol) == MPATHD_PROTOCOL
}

fn route_address_of(addr: IpAddr) -> RouteAddress {
    match addr {
        IpAddr::V4(a) => RouteAddress::Inet(a),
        IpAddr::V6(a) => RouteAddress::Inet6(a),
    }
}

/// mpathd's rule of `family`: lookups go to `table` at `priority`. IPv6 lookups of link-local
/// destinations are left out: a lookup bound to a NIC (an IPv6 probe from the NIC's link-local
/// address, `ping fe80::1%eth0`) would skip the table's `throw` route (it leaves through `lo`,
/// not that NIC) and meet a group route, whose nexthop group the kernel picks by hash
/// whatever the NIC, so NICs would probe through each other. IPv4 keeps a bound lookup's NIC
/// even in a nexthop group.
fn rule_message(family: AddressFamily, table: u32, priority: u32) -> RuleMessage {
    let mut message = RuleMessage::default();
    message.header.family = family;
    message.header.action = RuleAction::ToTable;
    message.header.table = RouteHeader::RT_TABLE_UNSPEC;
    message.attributes = vec![
        RuleAttribute::Table(table),
        RuleAttribute::Priority(priority),
        RuleAttribute::Protocol(RouteProtocol::from(MPATHD_PROTOCOL)),
    ];
    if family == AddressFamily::Inet6 {
        message.header.flags = RuleFlags::Invert;
        message.header.dst_len = 10;
        message
            .attributes
            .push(RuleAttribute::Destination(IpAddr::V6(Ipv6Addr::new(
                0xfe80, 0, 0, 0, 0, 0, 0, 0,
            ))));
    }
    message
}

fn rule_destination(rule: &RuleMessage) -> Option<IpAddr> {
    rule.attributes
        .iter()
        .find_map(|attribute| match attribute {
            RuleAttribute::Destination(addr) => Some(*addr),
            _ => None,
        })
}

fn rule_table(rule: &RuleMessage) -> u32 {
    rule.attributes
        .iter()
        .find_map(|attribute| match attribute {
            RuleAttribute::Table(table) => Some(*table),
            _ => None,
        })
        .unwrap_or(u32::from(rule.header.table))
}

fn rule_priority(rule: &RuleMessage) -> Option<u32> {
    rule.attributes
        .iter()
        .find_map(|attribute| match attribute {
            RuleAttribute::Priority(priority) => Some(*priority),
            _ => None,
        })
}

fn route_destination(message: &RouteMessage) -> Option<IpCidr> {
    let unspecified = match message.header.address_family {
        AddressFamily::Inet => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    let addr = message
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            RouteAttribute::Destination(destination) => route_address(destination),
            _ => None,
        })
        .unwrap_or(unspecified);
    IpCidr::new(addr, message.header.destination_prefix_length).ok()
}

/// RTA_GATEWAY, or RTA_VIA for a gateway of the other family (`via inet6 fe80::1`).
fn gateway(attributes: &[RouteAttribute]) -> Option<IpAddr> {
    attributes.iter().find_map(|attribute| match attribute {
        RouteAttribute::Gateway(gateway) => route_address(gateway),
        RouteAttribute::Via(RouteVia::Inet(addr)) => Some(IpAddr::V4(*addr)),
        RouteAttribute::Via(RouteVia::Inet6(addr)) => Some(IpAddr::V6(*addr)),
        _ => None,
    })
}

fn route_address(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(addr) => Some(IpAddr::V4(*addr)),
        RouteAddress::Inet6(addr) => Some(IpAddr::V6(*addr)),
        _ => None,
    }
}

/// Waits for the kernel's answer to a request sent as is: its error, if any.
async fn acknowledged(
    answers: Result<
        impl futures_util::Stream<Item = NetlinkMessage<RouteNetlinkMessage>>,
        rtnetlink::Error,
    >,
) -> Result<(), rtnetlink::Error> {
    let mut answers = std::pin::pin!(answers?);
    while let Some(message) = answers.next().await {
        // An acknowledgement is an error message without a code.
        if let NetlinkPayload::Error(error) = message.payload
            && error.code.is_some()
        {
            return Err(rtnetlink::Error::NetlinkError(error));
        }
    }
    Ok(())
}

fn errno(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(message) => Some(message.raw_code().abs()),
        _ => None,
    }
}

/// The kernel's errno when it sent one, so the message reads "File exists (os error 17)".
fn io_error(error: rtnetlink::Error) -> io::Error {
    match error {
        rtnetlink::Error::NetlinkError(message) => message.to_io(),
        other => io::Error::other(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::route::RouteNextHop;
    use smallvec::smallvec;

    fn cidr(text: &str) -> IpCidr {
        text.parse().unwrap()
    }

    fn notification(message: RouteNetlinkMessage) -> NetlinkMessage<RouteNetlinkMessage> {
        NetlinkMessage::from(message)
    }

    fn link_message(family: AddressFamily, flags: LinkFlags) -> LinkMessage {
        let mut link = LinkMessage::default();
        link.header.interface_family = family;
        link.header.index = 7;
        link.header.link_layer_type = LinkLayerType::Ether;
        link.header.flags = flags;
        link.attributes = vec![
            LinkAttribute::IfName("h0".into()),
            LinkAttribute::Address(vec![2, 0, 0x5e, 0x10, 0, 0x0a]),
        ];
        link
    }

    fn address_message(family: AddressFamily, attributes: Vec<AddressAttribute>) -> AddressMessage {
        let mut address = AddressMessage::default();
        address.header.family = family;
        address.header.index = 3;
        address.header.prefix_len = 24;
        address.attributes = attributes;
        address
    }

    #[test]
    fn addresses_the_kernel_made_are_told_apart() {
        let v6 = |attributes| {
            address_message(
                AddressFamily::Inet6,
                [
                    vec![AddressAttribute::Address("2001:db8::5".parse().unwrap())],
                    attributes,
                ]
                .concat(),
            )
        };
        let slaac = v6(vec![AddressAttribute::Protocol(
            AddressProtocol::RouterAnnouncement,
        )]);
        let privacy = v6(vec![AddressAttribute::Flags(AddressFlags::Secondary)]);
        let administrator = v6(vec![AddressAttribute::Flags(AddressFlags::Permanent)]);
        let ours = v6(vec![AddressAttribute::Protocol(AddressProtocol::Other(
            MPATHD_PROTOCOL,
        ))]);
        assert_eq!(origin(&slaac), Origin::Kernel);
        assert_eq!(origin(&privacy), Origin::Kernel);
        assert_eq!(origin(&administrator), Origin::Other);
        assert_eq!(origin(&ours), Origin::Mpathd);
        // IPv4's secondary flag only says another address of the subnet came first.
        let secondary = address_message(
            AddressFamily::Inet,
            vec![
                AddressAttribute::Local("192.0.2.50".parse().unwrap()),
                AddressAttribute::Flags(AddressFlags::Secondary),
            ],
        );
        assert_eq!(origin(&secondary), Origin::Other);
    }

    fn route_message(
        family: AddressFamily,
        table: u8,
        attributes: Vec<RouteAttribute>,
    ) -> RouteMessage {
        let mut route = RouteMessage::default();
        route.header.address_family = family;
        route.header.table = table;
        route.header.kind = RouteType::Unicast;
        route.attributes = attributes;
        route
    }

    fn next_hop(oif: u32, gateway: Option<RouteAttribute>) -> RouteNextHop {
        let mut hop = RouteNextHop::default();
        hop.interface_index = oif;
        hop.attributes = gateway.into_iter().collect();
        hop
    }

    #[test]
    fn usable_needs_admin_up_operational_up_and_carrier() {
        let all = LinkFlags::Up | LinkFlags::Running | LinkFlags::LowerUp;
        let state =
            |flags| Link::from_message(&link_message(AddressFamily::Unspec, flags)).unwrap();
        let usable = state(all);
        assert_eq!(
            usable,
            Link {
                ifindex: 7,
                name: "h0".into(),
                mac: Some([2, 0, 0x5e, 0x10, 0, 0x0a]),
                up: true,
                running: true,
                lower_up: true,
            }
        );
        assert!(usable.usable());
        // Carrier lost, linkwatch has not yet updated the operational state.
        assert!(!state(LinkFlags::Up | LinkFlags::Running).usable());
        // Carrier back, operational state still down (or dormant).
        assert!(!state(LinkFlags::Up | LinkFlags::LowerUp).usable());
        assert!(!state(LinkFlags::Running | LinkFlags::LowerUp).usable());
    }

    #[test]
    fn mac_only_for_ethernet_links() {
        let mut tunnel = link_message(AddressFamily::Unspec, LinkFlags::Up);
        tunnel.header.link_layer_type = LinkLayerType::Tunnel;
        assert_eq!(Link::from_message(&tunnel).unwrap().mac, None);
    }

    #[test]
    fn link_notifications_become_events_but_bridge_port_ones_do_not() {
        let flags = LinkFlags::Up | LinkFlags::LowerUp;
        let new_link = link_message(AddressFamily::Unspec, flags);
        assert_eq!(
            event_from_message(notification(RouteNetlinkMessage::NewLink(new_link.clone()))),
            Some(NetEvent::Link(Link::from_message(&new_link).unwrap()))
        );
        assert_eq!(
            event_from_message(notification(RouteNetlinkMessage::DelLink(new_link))),
            Some(NetEvent::LinkRemoved {
                ifindex: 7,
                name: "h0".into()
            })
        );
        let bridge_port = link_message(AddressFamily::Bridge, flags);
        assert_eq!(
            event_from_message(notification(RouteNetlinkMessage::NewLink(
                bridge_port.clone()
            ))),
            None
        );
        assert_eq!(
            event_from_message(notification(RouteNetlinkMessage::DelLink(bridge_port))),
            None
        );
    }

    #[test]
    fn address_notifications_use_the_local_address() {
        let v4 = address_message(
            AddressFamily::Inet,
            vec![
                AddressAttribute::Address("192.0.2.1".parse().unwrap()),
                AddressAttribute::Local("192.0.2.19".parse().unwrap()),
            ],
        );
        assert_eq!(
            event_from_message(notification(RouteNetlinkMessage::NewAddress(v4.clone()))),
            Some(NetEvent::AddressAdded {
                ifindex: 3,
                cidr: cidr("192.0.2.19/24")
            })
        );
        assert_eq!(
            event_from_message(notification(RouteNetlinkMessage::DelAddress(v4))),
            Some(NetEvent::AddressRemoved {
                ifindex: 3,
                cidr: cidr("192.0.2.19/24")
            })
        );
        let mut v6 = address_message(
            AddressFamily::Inet6,
            vec![AddressAttribute::Address("2001:db8::19".parse().unwrap())],
        );
        v6.header.prefix_len = 64;
        assert_eq!(address_of(&v6), Some((3, cidr("2001:db8::19/64"))));
        let other_family = address_message(AddressFamily::Mctp, vec![]);
        assert_eq!(address_of(&other_family), None);
    }

    #[test]
    fn route_notifications_carry_the_route_its_table_and_its_maker() {
        let mut main = route_message(AddressFamily::Inet, RouteHeader::RT_TABLE_MAIN, vec![]);
        main.header.protocol = RouteProtocol::Static;
        let notice = |message: RouteNetlinkMessage| match event_from_message(notification(message))
        {
            Some(NetEvent::RouteAdded(notice) | NetEvent::RouteRemoved(notice)) => Some(notice),
            _ => None,
        };
        let added = notice(RouteNetlinkMessage::NewRoute(main.clone())).unwrap();
        assert_eq!(added.table, MAIN_TABLE);
        assert_eq!(added.protocol, 4);
        assert_eq!(added.route.destination, cidr("0.0.0.0/0"));
        assert_eq!(added.table_route, None);
        assert!(matches!(
            event_from_message(notification(RouteNetlinkMessage::DelRoute(main.clone()))),
            Some(NetEvent::RouteRemoved(_))
        ));
        // Adding an address puts its local and broadcast routes in table local (255).
        let local = route_message(AddressFamily::Inet, 255, vec![]);
        assert_eq!(notice(RouteNetlinkMessage::NewRoute(local)), None);
        // Table 1000 only fits RTA_TABLE; the header says RT_TABLE_COMPAT (252).
        let big_table = route_message(AddressFamily::Inet, 252, vec![RouteAttribute::Table(1000)]);
        assert_eq!(
            notice(RouteNetlinkMessage::NewRoute(big_table))
                .unwrap()
                .table,
            1000
        );
        let local_by_attribute =
            route_message(AddressFamily::Inet, 252, vec![RouteAttribute::Table(255)]);
        assert_eq!(
            notice(RouteNetlinkMessage::NewRoute(local_by_attribute)),
            None
        );
        // mpathd's own: a throw and a route through a nexthop group.
        let mut throw = route_message(AddressFamily::Inet, 252, vec![RouteAttribute::Table(28016)]);
        throw.header.kind = RouteType::Throw;
        throw.header.protocol = RouteProtocol::from(MPATHD_PROTOCOL);
        let throw = notice(RouteNetlinkMessage::NewRoute(throw)).unwrap();
        assert_eq!(throw.protocol, MPATHD_PROTOCOL);
        assert_eq!(throw.table_route.unwrap().via, Via::Throw);
        let grouped = route_message(
            AddressFamily::Inet,
            252,
            vec![RouteAttribute::Table(28016), RouteAttribute::NhId(7)],
        );
        let grouped = notice(RouteNetlinkMessage::NewRoute(grouped)).unwrap();
        assert_eq!(grouped.table_route.unwrap().via, Via::Group(7));
        // Through a nexthop object, a route of main is not one a group could serve.
        assert!(!grouped.route.plain);
        assert_eq!(
            event_from_message(notification(RouteNetlinkMessage::NewRule(
                RuleMessage::default()
            ))),
            Some(NetEvent::RulesChanged)
        );
    }

    #[test]
    fn overrun_notification_is_an_event() {
        let message = overrun::<RouteNetlinkMessage>(NetlinkHeader::default());
        assert_eq!(event_from_message(message), Some(NetEvent::Overrun));
    }

    #[test]
    fn multipath_routes_give_one_entry_per_next_hop() {
        let mut route = route_message(
            AddressFamily::Inet,
            RouteHeader::RT_TABLE_MAIN,
            vec![
                RouteAttribute::Destination(RouteAddress::Inet("198.51.100.0".parse().unwrap())),
                RouteAttribute::MultiPath(vec![
                    next_hop(
                        3,
                        Some(RouteAttribute::Gateway(RouteAddress::Inet(
                            "192.0.2.1".parse().unwrap(),
                        ))),
                    ),
                    next_hop(
                        4,
                        Some(RouteAttribute::Via(RouteVia::Inet6(
                            "fe80::1".parse().unwrap(),
                        ))),
                    ),
                ]),
            ],
        );
        route.header.destination_prefix_length = 24;
        route.attributes.push(RouteAttribute::Priority(100));
        assert_eq!(
            main_route(&route),
            Some(MainRoute {
                destination: cidr("198.51.100.0/24"),
                metric: 100,
                tos: 0,
                plain: true,
                prefsrc: None,
                hops: smallvec![
                    Hop {
                        oif: 3,
                        gateway: Some("192.0.2.1".parse().unwrap()),
                    },
                    Hop {
                        oif: 4,
                        gateway: Some("fe80::1".parse().unwrap()),
                    },
                ],
            })
        );
    }

    #[test]
    fn default_and_connected_routes() {
        let default = route_message(
            AddressFamily::Inet6,
            RouteHeader::RT_TABLE_MAIN,
            vec![
                RouteAttribute::Gateway(RouteAddress::Inet6("2001:db8::1".parse().unwrap())),
                RouteAttribute::Oif(5),
            ],
        );
        assert_eq!(
            main_route(&default).unwrap().hops.as_slice(),
            [Hop {
                oif: 5,
                gateway: Some("2001:db8::1".parse().unwrap()),
            }]
        );
        assert_eq!(main_route(&default).unwrap().destination, cidr("::/0"));
        let mut connected = route_message(
            AddressFamily::Inet,
            RouteHeader::RT_TABLE_MAIN,
            vec![
                RouteAttribute::Destination(RouteAddress::Inet("192.0.2.0".parse().unwrap())),
                RouteAttribute::Oif(3),
            ],
        );
        connected.header.destination_prefix_length = 24;
        connected
            .attributes
            .push(RouteAttribute::PrefSource(RouteAddress::Inet(
                "192.0.2.20".parse().unwrap(),
            )));
        assert_eq!(
            main_route(&connected),
            Some(MainRoute {
                destination: cidr("192.0.2.0/24"),
                metric: 0,
                tos: 0,
                plain: true,
                prefsrc: Some("192.0.2.20".parse().unwrap()),
                hops: smallvec![Hop {
                    oif: 3,
                    gateway: None
                }],
            })
        );
        // With nexthop_compat_mode the kernel also shows a nexthop object's device: such a
        // route is another daemon's, never a group's.
        let nexthop_object = route_message(
            AddressFamily::Inet,
            RouteHeader::RT_TABLE_MAIN,
            vec![RouteAttribute::NhId(9), RouteAttribute::Oif(3)],
        );
        let nexthop_object = main_route(&nexthop_object).unwrap();
        assert!(!nexthop_object.plain);
        assert_eq!(nexthop_object.entries().count(), 0);
        let mut blackhole = route_message(AddressFamily::Inet, RouteHeader::RT_TABLE_MAIN, vec![]);
        blackhole.header.kind = RouteType::BlackHole;
        assert!(!main_route(&blackhole).unwrap().plain);
    }

    fn serialized(message: RouteNetlinkMessage, sequence_number: u32) -> Vec<u8> {
        let mut message = NetlinkMessage::from(message);
        message.header.sequence_number = sequence_number;
        message.finalize();
        let mut bytes = vec![0; message.buffer_len()];
        message.serialize(&mut bytes);
        bytes
    }

    #[test]
    fn undecodable_message_becomes_an_overrun_and_the_rest_still_decodes() {
        let link = link_message(AddressFamily::Unspec, LinkFlags::Up);
        let good = serialized(RouteNetlinkMessage::NewLink(link.clone()), 1);
        // An RTM_NEWLINK (16) whose 4-byte payload is shorter than a link header.
        let mut broken = vec![20, 0, 0, 0, 16, 0, 0, 0, 42, 0, 0, 0, 0, 0, 0, 0];
        broken.extend([0; 4]);
        let mut datagram = BytesMut::new();
        datagram.extend_from_slice(&good);
        datagram.extend_from_slice(&broken);
        datagram.extend_from_slice(&good);

        let first = ResyncOnUndecodable::decode::<RouteNetlinkMessage>(&mut datagram)
            .unwrap()
            .unwrap();
        assert_eq!(
            first.payload,
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link.clone()))
        );
        let second = ResyncOnUndecodable::decode::<RouteNetlinkMessage>(&mut datagram)
            .unwrap()
            .unwrap();
        assert!(
            matches!(second.payload, NetlinkPayload::Overrun(_)),
            "{second:?}"
        );
        // The sequence number survives, so an answer to a request still reaches its caller.
        assert_eq!(second.header.sequence_number, 42);
        let third = ResyncOnUndecodable::decode::<RouteNetlinkMessage>(&mut datagram)
            .unwrap()
            .unwrap();
        assert_eq!(
            third.payload,
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link))
        );
        assert!(
            ResyncOnUndecodable::decode::<RouteNetlinkMessage>(&mut datagram)
                .unwrap()
                .is_none()
        );
    }

    /// The kernel's RTM_DELNEXTHOP when `ip nexthop del id 1836056577` deleted a nexthop of
    /// protocol 109 on ifindex 3 (captured on Linux 6.18): nhmsg, NHA_ID, NHA_OIF.
    const KERNEL_DELNEXTHOP: &str = "28000000690005007344166bf92e000002fe6d0000000000\
                                     080001000100706d0800050003000000";

    /// An RTM_NEWNEXTHOP or RTM_DELNEXTHOP with an nhmsg of `protocol` (no attributes).
    fn nexthop_notification(message_type: u16, protocol: u8) -> Vec<u8> {
        let mut bytes = vec![24, 0, 0, 0];
        bytes.extend(message_type.to_ne_bytes());
        bytes.extend([0; 10]);
        bytes.extend([2, 0, protocol, 0, 0, 0, 0, 0]);
        bytes
    }

    #[test]
    fn only_a_deleted_nexthop_of_mpathd_s_is_an_event_and_names_its_id() {
        let link = link_message(AddressFamily::Unspec, LinkFlags::Up);
        let kernel: Vec<u8> = (0..KERNEL_DELNEXTHOP.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&KERNEL_DELNEXTHOP[i..i + 2], 16).unwrap())
            .collect();
        let mut datagram = BytesMut::new();
        for (message_type, protocol) in [
            (RTM_NEWNEXTHOP, MPATHD_PROTOCOL),
            (RTM_DELNEXTHOP, 4),
            // Without NHA_ID: no use to anyone.
            (RTM_DELNEXTHOP, MPATHD_PROTOCOL),
        ] {
            datagram.extend_from_slice(&nexthop_notification(message_type, protocol));
        }
        datagram.extend_from_slice(&kernel);
        datagram.extend_from_slice(&serialized(RouteNetlinkMessage::NewLink(link.clone()), 1));
        let mut next = || {
            ResyncOnUndecodable::decode::<RouteNetlinkMessage>(&mut datagram)
                .unwrap()
                .map(event_from_message)
        };
        assert_eq!(
            next(),
            Some(Some(NetEvent::NexthopDeleted { id: 0x6d70_0001 }))
        );
        assert!(matches!(next(), Some(Some(NetEvent::Link(_)))));
        assert_eq!(next(), None);
    }

    #[test]
    fn garbled_datagram_is_dropped_as_an_overrun() {
        // The length field claims more bytes than the datagram has.
        let mut datagram =
            BytesMut::from(&[200u8, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0][..]);
        let message = ResyncOnUndecodable::decode::<RouteNetlinkMessage>(&mut datagram)
            .unwrap()
            .unwrap();
        assert!(matches!(message.payload, NetlinkPayload::Overrun(_)));
        assert!(datagram.is_empty());
    }

    #[test]
    fn sockets_need_a_runtime() {
        assert!(matches!(Netlink::connect(), Err(NetlinkError::NoRuntime)));
        assert!(matches!(Monitor::open(), Err(NetlinkError::NoRuntime)));
    }

    #[test]
    fn interfaces_in_errors_are_named_when_known() {
        let known = Interface {
            ifindex: 3,
            name: Some("h0".into()),
        };
        let error = NetlinkError::AddAddress {
            interface: known,
            cidr: cidr("192.0.2.19/24"),
            source: io::Error::from_raw_os_error(libc::EACCES),
        };
        assert_eq!(
            error.to_string(),
            "adding address 192.0.2.19/24 to h0 (ifindex 3): Permission denied (os error 13)"
        );
        let gone = Interface {
            ifindex: 9,
            name: None,
        };
        assert_eq!(gone.to_string(), "ifindex 9");
    }

    #[test]
    fn only_an_ipv6_address_refused_with_eacces_means_ipv6_is_disabled() {
        let refused = |cidr_text: &str, errno: i32| NetlinkError::AddAddress {
            interface: Interface {
                ifindex: 3,
                name: Some("h0".into()),
            },
            cidr: cidr(cidr_text),
            source: io::Error::from_raw_os_error(errno),
        };
        assert!(refused("2001:db8::19/64", libc::EACCES).ipv6_disabled());
        assert!(!refused("192.0.2.19/24", libc::EACCES).ipv6_disabled());
        assert!(!refused("2001:db8::19/64", libc::ENODEV).ipv6_disabled());
        let removal = NetlinkError::DelAddress {
            interface: Interface {
                ifindex: 3,
                name: None,
            },
            cidr: cidr("2001:db8::19/64"),
            source: io::Error::from_raw_os_error(libc::EACCES),
        };
        assert!(!removal.ipv6_disabled());
        let link_route = |destination: &str| NetlinkError::SetLinkRoute {
            destination: cidr(destination),
            oif: 3,
            source: io::Error::from_raw_os_error(libc::EACCES),
        };
        assert!(link_route("2001:db8::/64").ipv6_disabled());
        assert!(!link_route("192.0.2.0/24").ipv6_disabled());
    }
}
