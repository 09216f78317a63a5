//! The kernel's nexthop objects (`ip nexthop`) over rtnetlink, which netlink-packet-route
//! does not cover: mpathd keeps one nexthop per usable NIC of a group and a resilient
//! nexthop group over them, which its routes name with `nhid`. A resilient group moves only
//! the flows of a NIC that left (and, once idle, those needed to rebalance), where
//! hash-threshold multipath also moves flows between NICs that stay.
//!
//! Messages travel as bytes and get their meaning here, so a message or attribute
//! this module does not know (other software's nexthops, a newer kernel's additions) is
//! skipped rather than failing a whole dump.
//!
//! Like [`super::netlink::Netlink`], [`Nexthops`] acts on the network namespace of the thread
//! that opens it and needs a running tokio runtime.
//!
//! The layout is include/uapi/linux/nexthop.h.

use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::time::Duration;

use futures_util::StreamExt;
use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, NLA_F_NESTED, NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED,
    NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkDeserializable, NetlinkHeader,
    NetlinkMessage, NetlinkPayload, NetlinkSerializable, NlasIterator, parse_ip, parse_string,
    parse_u16, parse_u32,
};
use netlink_proto::ConnectionHandle;
use netlink_proto::sys::{AsyncSocket, SocketAddr, protocols::NETLINK_ROUTE};
use thiserror::Error;
use tokio::task::JoinHandle;

use crate::core::target::AddressFamily;

const RTM_NEWNEXTHOP: u16 = 104;
const RTM_DELNEXTHOP: u16 = 105;
const RTM_GETNEXTHOP: u16 = 106;
#[cfg(any(test, feature = "testing"))]
const RTM_NEWNEXTHOPBUCKET: u16 = 116;
const RTM_GETNEXTHOPBUCKET: u16 = 118;

const NHA_ID: u16 = 1;
const NHA_GROUP: u16 = 2;
const NHA_GROUP_TYPE: u16 = 3;
const NHA_BLACKHOLE: u16 = 4;
const NHA_OIF: u16 = 5;
const NHA_GATEWAY: u16 = 6;
const NHA_ENCAP: u16 = 8;
const NHA_FDB: u16 = 11;
const NHA_RES_GROUP: u16 = 12;
#[cfg(any(test, feature = "testing"))]
const NHA_RES_BUCKET: u16 = 13;
const NHA_OP_FLAGS: u16 = 14;

const NHA_RES_GROUP_BUCKETS: u16 = 1;
const NHA_RES_GROUP_IDLE_TIMER: u16 = 2;
const NHA_RES_GROUP_UNBALANCED_TIMER: u16 = 3;

#[cfg(any(test, feature = "testing"))]
const NHA_RES_BUCKET_INDEX: u16 = 1;
#[cfg(any(test, feature = "testing"))]
const NHA_RES_BUCKET_NH_ID: u16 = 3;

const NEXTHOP_GRP_TYPE_MPATH: u16 = 0;
const NEXTHOP_GRP_TYPE_RES: u16 = 1;

/// In NHA_OP_FLAGS of a reply: this kernel zeroes `nexthop_grp`'s reserved fields, so
/// `weight_high` can be trusted (older kernels left garbage there).
const NHA_OP_FLAG_RESP_GRP_RESVD_0: u32 = 1 << 31;

const RTNH_F_ONLINK: u32 = 4;

/// `struct nhmsg`: family, scope, protocol, reserved, then the u32 flags.
const NHMSG_LEN: usize = 8;
/// `struct nexthop_grp`: u32 id, u8 weight - 1, u8 (weight - 1) >> 8, u16 reserved.
const NEXTHOP_GRP_LEN: usize = 8;
/// In the extended ack after a failed request.
const NLMSGERR_ATTR_MSG: u16 = 1;
/// What the request echoed in an NLM_F_CAPPED error is cut down to: its netlink header.
const NLMSG_HDRLEN: usize = 16;
/// Timers travel in clock_t, USER_HZ (100) ticks a second.
const MILLIS_PER_TICK: u64 = 10;

/// A nexthop object: the unit a route's `nhid` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nexthop {
    pub id: u32,
    /// Tells whose nexthop it is (`ip nexthop ... proto N`): a daemon recognises its own
    /// after a restart by it.
    pub protocol: u8,
    pub kind: NexthopKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NexthopKind {
    /// Out of one interface, to a gateway or (without one) to the destination itself.
    Single {
        family: AddressFamily,
        oif: u32,
        gateway: Option<IpAddr>,
        /// RTNH_F_ONLINK: the gateway needs no route of its own (mpathd's NICs may have no
        /// address in the gateway's subnet).
        onlink: bool,
    },
    /// A resilient group of equally weighted members: flows keep their bucket, and a bucket
    /// changes member only when its member leaves or after `idle_timer` without traffic
    /// (sooner when the group has been unbalanced for `unbalanced_timer`; zero never forces).
    Resilient {
        members: Vec<u32>,
        buckets: u16,
        idle_timer: Duration,
        unbalanced_timer: Duration,
    },
    /// A hash-threshold group of equally weighted members, as multipath routes spread.
    Multipath { members: Vec<u32> },
    /// What mpathd never makes (blackholes, FDB nexthops, encapsulation, weighted members,
    /// group types of newer kernels), listed so that it still sees the id is taken.
    Other,
}

/// The kernel's number for `family`.
fn af(family: AddressFamily) -> u8 {
    match family {
        AddressFamily::Inet => libc::AF_INET as u8,
        AddressFamily::Inet6 => libc::AF_INET6 as u8,
    }
}

/// Why a request failed: the kernel's errno and, when it said why, its extended ack message
/// ("Carrier for nexthop device is down"), which is often the only useful part.
#[derive(Debug)]
pub struct RequestError {
    /// The errno, or what went wrong on the socket.
    pub error: io::Error,
    pub message: Option<String>,
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.message {
            Some(message) => write!(f, "{}: {message}", self.error),
            None => write!(f, "{}", self.error),
        }
    }
}

impl std::error::Error for RequestError {}

impl RequestError {
    fn io(error: io::Error) -> RequestError {
        RequestError {
            error,
            message: None,
        }
    }

    fn malformed(error: DecodeError) -> RequestError {
        RequestError::io(io::Error::new(io::ErrorKind::InvalidData, error))
    }
}

/// A failed nexthop operation.
#[derive(Debug, Error)]
pub enum NexthopError {
    #[error("netlink sockets need a running tokio runtime")]
    NoRuntime,
    #[error("opening an rtnetlink socket for nexthops: {0}")]
    Open(#[source] io::Error),
    #[error("nexthop {id} is of a kind mpathd does not make, so it cannot be written")]
    Unsupported { id: u32 },
    #[error("replacing nexthop {id}: {source}")]
    Replace { id: u32, source: RequestError },
    #[error("deleting nexthop {id}: {source}")]
    Delete { id: u32, source: RequestError },
    #[error("listing nexthops: {0}")]
    Dump(#[source] RequestError),
    #[cfg(any(test, feature = "testing"))]
    #[error("listing the buckets of nexthop group {id}: {source}")]
    Buckets { id: u32, source: RequestError },
    #[error(
        "this kernel has no {feature}, which mpathd's group routes need (Linux {since} and later have them)"
    )]
    MissingFeature {
        feature: &'static str,
        since: &'static str,
    },
}

/// Requests for nexthop objects.
#[derive(Debug)]
pub struct Nexthops {
    handle: ConnectionHandle<Raw>,
    connection: JoinHandle<()>,
}

impl Nexthops {
    /// Opens a request socket in the calling thread's network namespace.
    pub fn connect() -> Result<Nexthops, NexthopError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_outside_tokio| NexthopError::NoRuntime)?;
        let (mut connection, handle, _unsolicited) =
            netlink_proto::new_connection::<Raw>(NETLINK_ROUTE).map_err(NexthopError::Open)?;
        let socket = connection.socket_mut().socket_ref();
        socket.set_ext_ack(true).map_err(NexthopError::Open)?;
        // Errors then echo only the request's header, not the whole request.
        socket.set_cap_ack(true).map_err(NexthopError::Open)?;
        Ok(Nexthops {
            handle,
            connection: runtime.spawn(connection),
        })
    }

    /// Creates the nexthop or replaces the one with its id. A group's new member list is
    /// one message, so the kernel moves it in one step: a resilient group keeps the buckets
    /// of the members that stay.
    pub async fn replace(&self, nexthop: &Nexthop) -> Result<(), NexthopError> {
        let request = replace_request(nexthop)?;
        self.exchange(request)
            .await
            .map(drop)
            .map_err(|source| NexthopError::Replace {
                id: nexthop.id,
                source,
            })
    }

    /// Deletes the nexthop; `false` when there was none with that id. Deleting a nexthop
    /// takes it out of its groups, and deleting a group removes the routes using it.
    pub async fn delete(&self, id: u32) -> Result<bool, NexthopError> {
        match self.exchange(delete_request(id)).await {
            Ok(_) => Ok(true),
            Err(error) if error.error.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(source) => Err(NexthopError::Delete { id, source }),
        }
    }

    /// Every nexthop of the namespace, whoever made it; see [`Nexthop::protocol`].
    pub async fn dump(&self) -> Result<Vec<Nexthop>, NexthopError> {
        let replies = self
            .exchange(dump_request())
            .await
            .map_err(NexthopError::Dump)?;
        replies
            .iter()
            .filter(|reply| reply.message_type == RTM_NEWNEXTHOP)
            .map(|reply| decode_nexthop(&reply.payload))
            .collect::<Result<_, _>>()
            .map_err(|error| NexthopError::Dump(RequestError::malformed(error)))
    }

    /// Checks that the kernel has nexthop objects (5.3) and resilient nexthop groups (5.13)
    /// by dumping them, which changes nothing: a kernel without them does not know the
    /// message type and answers EOPNOTSUPP.
    pub async fn check_kernel(&self) -> Result<(), NexthopError> {
        let probes = [
            ("nexthop objects", "5.3", dump_request()),
            // No group has this id: a kernel with resilient groups answers ENOENT.
            (
                "resilient nexthop groups",
                "5.13",
                buckets_request(u32::MAX),
            ),
        ];
        for (feature, since, request) in probes {
            // Any other answer (ENOENT for the missing group) comes from a kernel that knows
            // the message.
            if let Err(e) = self.exchange(request).await
                && e.error.raw_os_error() == Some(libc::EOPNOTSUPP)
            {
                return Err(NexthopError::MissingFeature { feature, since });
            }
        }
        Ok(())
    }

    #[cfg(any(test, feature = "testing"))]
    /// The buckets of a resilient group as `(index, member id)`, in index order.
    pub async fn buckets(&self, group: u32) -> Result<Vec<(u16, u32)>, NexthopError> {
        let failed = |source| NexthopError::Buckets { id: group, source };
        let replies = self
            .exchange(buckets_request(group))
            .await
            .map_err(failed)?;
        let mut buckets = replies
            .iter()
            .filter(|reply| reply.message_type == RTM_NEWNEXTHOPBUCKET)
            .map(|reply| decode_bucket(&reply.payload))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| failed(RequestError::malformed(error)))?;
        buckets.sort_unstable();
        Ok(buckets)
    }

    /// Sends `request` and gathers its replies until the kernel's ack or NLMSG_DONE.
    async fn exchange(&self, request: NetlinkMessage<Raw>) -> Result<Vec<Raw>, RequestError> {
        let mut replies = self
            .handle
            .request(request, SocketAddr::new(0, 0))
            .map_err(|error| RequestError::io(io::Error::other(error)))?;
        let mut messages = Vec::new();
        while let Some(reply) = replies.next().await {
            match reply.payload {
                NetlinkPayload::InnerMessage(message) => messages.push(message),
                NetlinkPayload::Error(error) if error.code.is_some() => {
                    return Err(RequestError {
                        error: error.to_io(),
                        message: extack_message(reply.header.flags, &error.header),
                    });
                }
                NetlinkPayload::Overrun(_) => {
                    return Err(RequestError::io(io::Error::other(
                        "the replies overran the socket's receive buffer",
                    )));
                }
                _ => {}
            }
        }
        Ok(messages)
    }
}

impl Drop for Nexthops {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// An rtnetlink message of any type as its bytes after the netlink header.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Raw {
    message_type: u16,
    payload: Vec<u8>,
}

impl NetlinkSerializable for Raw {
    fn message_type(&self) -> u16 {
        self.message_type
    }

    fn buffer_len(&self) -> usize {
        self.payload.len()
    }

    fn serialize(&self, buffer: &mut [u8]) {
        buffer.copy_from_slice(&self.payload);
    }
}

impl NetlinkDeserializable for Raw {
    type Error = Infallible;

    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Raw, Infallible> {
        Ok(Raw {
            message_type: header.message_type,
            payload: payload.to_vec(),
        })
    }
}

/// A request of `message_type` carrying an nhmsg and `attributes`.
fn request(
    message_type: u16,
    flags: u16,
    nhmsg: [u8; NHMSG_LEN],
    attributes: &[DefaultNla],
) -> NetlinkMessage<Raw> {
    let mut payload = nhmsg.to_vec();
    payload.extend(emitted(attributes));
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    let mut message = NetlinkMessage::new(
        header,
        NetlinkPayload::InnerMessage(Raw {
            message_type,
            payload,
        }),
    );
    message.finalize();
    message
}

fn emitted(attributes: &[DefaultNla]) -> Vec<u8> {
    let mut bytes = vec![0; attributes.buffer_len()];
    attributes.emit(&mut bytes);
    bytes
}

fn nhmsg(family: u8, protocol: u8, flags: u32) -> [u8; NHMSG_LEN] {
    let flags = flags.to_ne_bytes();
    [
        family, 0, protocol, 0, flags[0], flags[1], flags[2], flags[3],
    ]
}

fn u32_attribute(kind: u16, value: u32) -> DefaultNla {
    DefaultNla::new(kind, value.to_ne_bytes().to_vec())
}

fn u16_attribute(kind: u16, value: u16) -> DefaultNla {
    DefaultNla::new(kind, value.to_ne_bytes().to_vec())
}

/// The RTM_NEWNEXTHOP that creates or replaces `nexthop`, its attributes in iproute2's order.
fn replace_request(nexthop: &Nexthop) -> Result<NetlinkMessage<Raw>, NexthopError> {
    let mut attributes = vec![u32_attribute(NHA_ID, nexthop.id)];
    let header = match &nexthop.kind {
        NexthopKind::Single {
            family,
            oif,
            gateway,
            onlink,
        } => {
            if let Some(gateway) = gateway {
                let bytes = match gateway {
                    IpAddr::V4(addr) => addr.octets().to_vec(),
                    IpAddr::V6(addr) => addr.octets().to_vec(),
                };
                attributes.push(DefaultNla::new(NHA_GATEWAY, bytes));
            }
            attributes.push(u32_attribute(NHA_OIF, *oif));
            let flags = if *onlink { RTNH_F_ONLINK } else { 0 };
            nhmsg(af(*family), nexthop.protocol, flags)
        }
        NexthopKind::Resilient {
            members,
            buckets,
            idle_timer,
            unbalanced_timer,
        } => {
            attributes.push(group_attribute(members));
            let parameters = [
                u16_attribute(NHA_RES_GROUP_BUCKETS, *buckets),
                u32_attribute(NHA_RES_GROUP_IDLE_TIMER, ticks(*idle_timer)),
                u32_attribute(NHA_RES_GROUP_UNBALANCED_TIMER, ticks(*unbalanced_timer)),
            ];
            attributes.push(DefaultNla::new(
                NHA_RES_GROUP | NLA_F_NESTED,
                emitted(&parameters),
            ));
            attributes.push(u16_attribute(NHA_GROUP_TYPE, NEXTHOP_GRP_TYPE_RES));
            nhmsg(libc::AF_UNSPEC as u8, nexthop.protocol, 0)
        }
        NexthopKind::Multipath { members } => {
            attributes.push(group_attribute(members));
            attributes.push(u16_attribute(NHA_GROUP_TYPE, NEXTHOP_GRP_TYPE_MPATH));
            nhmsg(libc::AF_UNSPEC as u8, nexthop.protocol, 0)
        }
        NexthopKind::Other => return Err(NexthopError::Unsupported { id: nexthop.id }),
    };
    let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
    Ok(request(RTM_NEWNEXTHOP, flags, header, &attributes))
}

/// Members of weight 1, which the kernel stores as 0.
fn group_attribute(members: &[u32]) -> DefaultNla {
    let entries = members
        .iter()
        .flat_map(|id| {
            let mut entry = [0; NEXTHOP_GRP_LEN];
            entry[..4].copy_from_slice(&id.to_ne_bytes());
            entry
        })
        .collect();
    DefaultNla::new(NHA_GROUP, entries)
}

fn delete_request(id: u32) -> NetlinkMessage<Raw> {
    request(
        RTM_DELNEXTHOP,
        NLM_F_REQUEST | NLM_F_ACK,
        nhmsg(0, 0, 0),
        &[u32_attribute(NHA_ID, id)],
    )
}

fn dump_request() -> NetlinkMessage<Raw> {
    request(
        RTM_GETNEXTHOP,
        NLM_F_REQUEST | NLM_F_DUMP,
        nhmsg(0, 0, 0),
        &[],
    )
}

fn buckets_request(group: u32) -> NetlinkMessage<Raw> {
    request(
        RTM_GETNEXTHOPBUCKET,
        NLM_F_REQUEST | NLM_F_DUMP,
        nhmsg(0, 0, 0),
        &[u32_attribute(NHA_ID, group)],
    )
}

/// Saturates: the kernel refuses timers that large anyway, with a message saying so.
fn ticks(duration: Duration) -> u32 {
    u32::try_from(duration.as_millis() / u128::from(MILLIS_PER_TICK)).unwrap_or(u32::MAX)
}

fn duration(ticks: u32) -> Duration {
    Duration::from_millis(u64::from(ticks) * MILLIS_PER_TICK)
}

/// The attributes of one RTM_NEWNEXTHOP that decide its [`NexthopKind`].
#[derive(Default)]
struct Attributes {
    id: Option<u32>,
    /// `(id, weight)` as the kernel stores them, weight minus one.
    group: Option<Vec<(u32, u16)>>,
    group_type: Option<u16>,
    oif: Option<u32>,
    gateway: Option<IpAddr>,
    resilient: Option<(u16, u32, u32)>,
    op_flags: u32,
    /// Blackhole, FDB or encapsulation: what mpathd never makes.
    other: bool,
}

fn decode_nexthop(payload: &[u8]) -> Result<Nexthop, DecodeError> {
    let (header, rest) = payload
        .split_first_chunk::<NHMSG_LEN>()
        .ok_or_else(|| DecodeError::from("nexthop message shorter than an nhmsg"))?;
    let family = header[0];
    let protocol = header[2];
    let flags = u32::from_ne_bytes([header[4], header[5], header[6], header[7]]);
    let mut attributes = Attributes::default();
    for attribute in NlasIterator::new(rest) {
        let attribute = attribute?;
        let value = attribute.value();
        match attribute.kind() {
            NHA_ID => attributes.id = Some(parse_u32(value)?),
            NHA_GROUP => attributes.group = Some(group_members(value)?),
            NHA_GROUP_TYPE => attributes.group_type = Some(parse_u16(value)?),
            NHA_OIF => attributes.oif = Some(parse_u32(value)?),
            NHA_GATEWAY => attributes.gateway = Some(parse_ip(value)?),
            NHA_RES_GROUP => attributes.resilient = Some(resilient_parameters(value)?),
            NHA_OP_FLAGS => attributes.op_flags = parse_u32(value)?,
            NHA_BLACKHOLE | NHA_FDB | NHA_ENCAP => attributes.other = true,
            _ => {}
        }
    }
    let id = attributes
        .id
        .ok_or_else(|| DecodeError::from("nexthop message without NHA_ID"))?;
    Ok(Nexthop {
        id,
        protocol,
        kind: kind(family, flags, attributes),
    })
}

fn kind(family: u8, flags: u32, attributes: Attributes) -> NexthopKind {
    if attributes.other {
        return NexthopKind::Other;
    }
    if let Some(group) = attributes.group {
        // Older kernels left garbage in what is now weight_high.
        let weight_mask = if attributes.op_flags & NHA_OP_FLAG_RESP_GRP_RESVD_0 != 0 {
            u16::MAX
        } else {
            0xff
        };
        if group.iter().any(|(_, weight)| weight & weight_mask != 0) {
            return NexthopKind::Other;
        }
        let members = group.into_iter().map(|(id, _)| id).collect();
        return match (attributes.group_type, attributes.resilient) {
            (None | Some(NEXTHOP_GRP_TYPE_MPATH), _) => NexthopKind::Multipath { members },
            (Some(NEXTHOP_GRP_TYPE_RES), Some((buckets, idle, unbalanced))) => {
                NexthopKind::Resilient {
                    members,
                    buckets,
                    idle_timer: duration(idle),
                    unbalanced_timer: duration(unbalanced),
                }
            }
            _ => NexthopKind::Other,
        };
    }
    let family = match i32::from(family) {
        libc::AF_INET => AddressFamily::Inet,
        libc::AF_INET6 => AddressFamily::Inet6,
        _ => return NexthopKind::Other,
    };
    match attributes.oif {
        Some(oif) => NexthopKind::Single {
            family,
            oif,
            gateway: attributes.gateway,
            onlink: flags & RTNH_F_ONLINK != 0,
        },
        None => NexthopKind::Other,
    }
}

fn group_members(value: &[u8]) -> Result<Vec<(u32, u16)>, DecodeError> {
    if !value.len().is_multiple_of(NEXTHOP_GRP_LEN) {
        return Err(DecodeError::from(format!(
            "NHA_GROUP of {} bytes is no array of nexthop_grp",
            value.len()
        )));
    }
    value
        .chunks_exact(NEXTHOP_GRP_LEN)
        .map(|entry| {
            Ok((
                parse_u32(&entry[..4])?,
                u16::from_le_bytes([entry[4], entry[5]]),
            ))
        })
        .collect()
}

/// `(buckets, idle timer, unbalanced timer)` in ticks.
fn resilient_parameters(value: &[u8]) -> Result<(u16, u32, u32), DecodeError> {
    let mut parameters = (0, 0, 0);
    for attribute in NlasIterator::new(value) {
        let attribute = attribute?;
        match attribute.kind() {
            NHA_RES_GROUP_BUCKETS => parameters.0 = parse_u16(attribute.value())?,
            NHA_RES_GROUP_IDLE_TIMER => parameters.1 = parse_u32(attribute.value())?,
            NHA_RES_GROUP_UNBALANCED_TIMER => parameters.2 = parse_u32(attribute.value())?,
            _ => {}
        }
    }
    Ok(parameters)
}

#[cfg(any(test, feature = "testing"))]
/// `(index, nexthop id)` of an RTM_NEWNEXTHOPBUCKET.
fn decode_bucket(payload: &[u8]) -> Result<(u16, u32), DecodeError> {
    let attributes = payload
        .get(NHMSG_LEN..)
        .ok_or_else(|| DecodeError::from("bucket message shorter than an nhmsg"))?;
    let mut index = None;
    let mut nexthop = None;
    for attribute in NlasIterator::new(attributes) {
        let attribute = attribute?;
        if attribute.kind() != NHA_RES_BUCKET {
            continue;
        }
        for inner in NlasIterator::new(attribute.value()) {
            let inner = inner?;
            match inner.kind() {
                NHA_RES_BUCKET_INDEX => index = Some(parse_u16(inner.value())?),
                NHA_RES_BUCKET_NH_ID => nexthop = Some(parse_u32(inner.value())?),
                _ => {}
            }
        }
    }
    index
        .zip(nexthop)
        .ok_or_else(|| DecodeError::from("bucket message without index or nexthop id"))
}

/// The NLMSGERR_ATTR_MSG of an NLMSG_ERROR: `after_code` is what follows the errno, the
/// request (whole, or only its header when NLM_F_CAPPED) and then the attributes.
fn extack_message(flags: u16, after_code: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let echoed = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        usize::try_from(parse_u32(after_code.get(..4)?).ok()?).ok()?
    };
    let attributes = after_code.get(echoed.next_multiple_of(4)..)?;
    NlasIterator::new(attributes)
        .map_while(Result::ok)
        .find(|attribute| attribute.kind() == NLMSGERR_ATTR_MSG)
        .and_then(|attribute| parse_string(attribute.value()).ok())
        .filter(|message| !message.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from kernel 6.18 in a lab namespace (lo, veths v0 = ifindex 3 and v1 = 5 up,
    // 192.0.2.10/24 on v0) after
    //   ip nexthop replace id 1 via 198.51.100.1 dev v0 onlink proto 201
    //   ip -6 nexthop replace id 2 dev v1 proto 201
    //   ip nexthop add id 3 via 192.0.2.1 dev v0 proto 201
    //   ip nexthop replace id 10 group 1/3 type resilient buckets 8 idle_timer 3 \
    //       unbalanced_timer 5 proto 201
    //   ip nexthop add id 11 group 1/3 type mpath
    //   ip nexthop add id 12 group 1,2/3
    //   ip nexthop add id 13 blackhole
    // by a throwaway program that sent the dumps on a raw NETLINK_ROUTE socket and printed
    // every message it received, netlink header included.

    /// RTM_GETNEXTHOP dump: one RTM_NEWNEXTHOP per nexthop, then NLMSG_DONE.
    const DUMP: [&str; 8] = [
        "300000006800020002000000c540000002fdc900040000000800010001000000080005000300000008000600c6336401",
        "280000006800020002000000c54000000afdc9000000000008000100020000000800050005000000",
        "300000006800020002000000c540000002fdc900000000000800010003000000080005000300000008000600c0000201",
        "6c0000006800020002000000c54000000000c90000000000080001000a0000000600030001000000140002000100000000000000030000000000000028000c800600010008000000080002002c01000008000300f40100000c000400000000000000000008000e0000000080",
        "440000006800020002000000c54000000000000000000000080001000b0000000600030000000000140002000100000000000000030000000000000008000e0000000080",
        "440000006800020002000000c54000000000000000000000080001000c0000000600030000000000140002000100000001000000030000000000000008000e0000000080",
        "240000006800020002000000c54000000200000000000000080001000d00000004000400",
        "140000000300020002000000c540000000000000",
    ];

    /// RTM_GETNEXTHOPBUCKET dump of group 10: one RTM_NEWNEXTHOPBUCKET per bucket.
    const BUCKETS: [&str; 9] = [
        "400000007400020003000000c54000000000c90000000000080001000a00000020000d80060001000000000008000300030000000c0002002900000000000000",
        "400000007400020003000000c54000000000c90000000000080001000a00000020000d80060001000100000008000300030000000c0002002900000000000000",
        "400000007400020003000000c54000000000c90000000000080001000a00000020000d80060001000200000008000300030000000c0002002900000000000000",
        "400000007400020003000000c54000000000c90000000000080001000a00000020000d80060001000300000008000300030000000c0002002900000000000000",
        "400000007400020003000000c54000000000c90000000000080001000a00000020000d80060001000400000008000300010000000c0002002900000000000000",
        "400000007400020003000000c54000000000c90000000000080001000a00000020000d80060001000500000008000300010000000c0002002900000000000000",
        "400000007400020003000000c54000000000c90000000000080001000a00000020000d80060001000600000008000300010000000c0002002900000000000000",
        "400000007400020003000000c54000000000c90000000000080001000a00000020000d80060001000700000008000300010000000c0002002900000000000000",
        "140000000300020003000000c540000000000000",
    ];

    /// The NLMSG_ERROR (NETLINK_EXT_ACK on, NETLINK_CAP_ACK off) for an RTM_NEWNEXTHOP of
    /// id 20, device-only on a veth (ifindex 7) whose peer is down.
    const CARRIER_DOWN: &str = "640000000200000204000000c54000009cffffff28000000680005060400000000000000020000000000000008000100140000000800050007000000270001004361727269657220666f72206e657874686f702064657669636520697320646f776e0000";

    // What iproute2 6.1 sent (strace of sendmsg) for, in the same namespace,
    //   ip nexthop replace id 1 via 198.51.100.1 dev v0 onlink proto 201
    //   ip -6 nexthop replace id 2 dev v1 proto 201
    //   ip nexthop replace id 10 group 1/3 type resilient buckets 8 idle_timer 3 \
    //       unbalanced_timer 5 proto 201
    const IPROUTE2_SEQUENCE: u32 = 1796284103;
    const IPROUTE2_V4_ONLINK: &str = "3000000068000505c71e116b000000000200c90004000000080001000100000008000600c63364010800050003000000";
    const IPROUTE2_V6_DEVICE: &str =
        "2800000068000505c71e116b000000000a00c9000000000008000100020000000800050005000000";
    const IPROUTE2_RESILIENT: &str = "5800000068000505c71e116b000000000000c90000000000080001000a00000014000200010000000000000003000000000000001c000c800600010008000000080002002c01000008000300f40100000600030001000000";

    fn bytes(hex: &str) -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|at| u8::from_str_radix(&hex[at..at + 2], 16).unwrap())
            .collect()
    }

    fn message(hex: &str) -> NetlinkMessage<Raw> {
        NetlinkMessage::deserialize(&bytes(hex)).unwrap()
    }

    fn inner(hex: &str) -> Raw {
        match message(hex).payload {
            NetlinkPayload::InnerMessage(raw) => raw,
            other => panic!("not an rtnetlink message: {other:?}"),
        }
    }

    fn serialized(mut message: NetlinkMessage<Raw>, sequence_number: u32) -> Vec<u8> {
        message.header.sequence_number = sequence_number;
        let mut bytes = vec![0; message.buffer_len()];
        message.serialize(&mut bytes);
        bytes
    }

    fn v4_onlink() -> Nexthop {
        Nexthop {
            id: 1,
            protocol: 201,
            kind: NexthopKind::Single {
                family: AddressFamily::Inet,
                oif: 3,
                gateway: Some("198.51.100.1".parse().unwrap()),
                onlink: true,
            },
        }
    }

    fn v6_device() -> Nexthop {
        Nexthop {
            id: 2,
            protocol: 201,
            kind: NexthopKind::Single {
                family: AddressFamily::Inet6,
                oif: 5,
                gateway: None,
                onlink: false,
            },
        }
    }

    fn resilient() -> Nexthop {
        Nexthop {
            id: 10,
            protocol: 201,
            kind: NexthopKind::Resilient {
                members: vec![1, 3],
                buckets: 8,
                idle_timer: Duration::from_secs(3),
                unbalanced_timer: Duration::from_secs(5),
            },
        }
    }

    #[test]
    fn the_kernels_dump_decodes_to_every_kind() {
        let replies: Vec<NetlinkMessage<Raw>> = DUMP.iter().map(|hex| message(hex)).collect();
        let (last, nexthops) = replies.split_last().unwrap();
        assert!(matches!(last.payload, NetlinkPayload::Done(_)), "{last:?}");
        let decoded: Vec<Nexthop> = nexthops
            .iter()
            .map(|reply| match &reply.payload {
                NetlinkPayload::InnerMessage(raw) => {
                    assert_eq!(raw.message_type, RTM_NEWNEXTHOP);
                    decode_nexthop(&raw.payload).unwrap()
                }
                other => panic!("not a nexthop: {other:?}"),
            })
            .collect();
        let v4_gateway = Nexthop {
            id: 3,
            protocol: 201,
            kind: NexthopKind::Single {
                family: AddressFamily::Inet,
                oif: 3,
                gateway: Some("192.0.2.1".parse().unwrap()),
                onlink: false,
            },
        };
        let multipath = Nexthop {
            id: 11,
            protocol: 0,
            kind: NexthopKind::Multipath {
                members: vec![1, 3],
            },
        };
        // Member 1 has weight 2.
        let weighted = Nexthop {
            id: 12,
            protocol: 0,
            kind: NexthopKind::Other,
        };
        let blackhole = Nexthop {
            id: 13,
            protocol: 0,
            kind: NexthopKind::Other,
        };
        assert_eq!(
            decoded,
            [
                v4_onlink(),
                v6_device(),
                v4_gateway,
                resilient(),
                multipath,
                weighted,
                blackhole
            ]
        );
    }

    #[test]
    fn unknown_attributes_are_skipped() {
        let mut payload = inner(DUMP[0]).payload;
        // A made-up attribute 99 of a future kernel, and a nested one.
        payload.extend([8, 0, 99, 0, 1, 2, 3, 4, 8, 0, 100, 0x80, 4, 0, 1, 0]);
        assert_eq!(decode_nexthop(&payload).unwrap(), v4_onlink());
    }

    #[test]
    fn weight_high_counts_only_when_the_kernel_zeroes_it() {
        // Group 11 ([1, 3], weights 1) with weight_high 1 on member 1: a weight of 257 on a
        // kernel that says it zeroes the reserved fields, garbage on one that does not.
        let mut payload = inner(DUMP[4]).payload;
        payload[8 + 8 + 8 + 4 + 5] = 1;
        assert_eq!(decode_nexthop(&payload).unwrap().kind, NexthopKind::Other);
        payload.truncate(payload.len() - 8);
        assert_eq!(
            decode_nexthop(&payload).unwrap().kind,
            NexthopKind::Multipath {
                members: vec![1, 3]
            }
        );
    }

    #[test]
    fn a_nexthop_message_without_id_is_malformed() {
        let payload = &inner(DUMP[0]).payload[..NHMSG_LEN];
        assert!(decode_nexthop(payload).is_err());
        assert!(decode_nexthop(&payload[..4]).is_err());
    }

    #[test]
    fn the_kernels_bucket_dump_decodes_to_index_and_member() {
        let replies: Vec<NetlinkMessage<Raw>> = BUCKETS.iter().map(|hex| message(hex)).collect();
        let (last, buckets) = replies.split_last().unwrap();
        assert!(matches!(last.payload, NetlinkPayload::Done(_)), "{last:?}");
        let decoded: Vec<(u16, u32)> = buckets
            .iter()
            .map(|reply| match &reply.payload {
                NetlinkPayload::InnerMessage(raw) => {
                    assert_eq!(raw.message_type, RTM_NEWNEXTHOPBUCKET);
                    decode_bucket(&raw.payload).unwrap()
                }
                other => panic!("not a bucket: {other:?}"),
            })
            .collect();
        assert_eq!(
            decoded,
            [
                (0, 3),
                (1, 3),
                (2, 3),
                (3, 3),
                (4, 1),
                (5, 1),
                (6, 1),
                (7, 1)
            ]
        );
    }

    #[test]
    fn replace_requests_are_what_iproute2_sends() {
        for (nexthop, iproute2) in [
            (v4_onlink(), IPROUTE2_V4_ONLINK),
            (v6_device(), IPROUTE2_V6_DEVICE),
            (resilient(), IPROUTE2_RESILIENT),
        ] {
            let request = replace_request(&nexthop).unwrap();
            assert_eq!(
                serialized(request, IPROUTE2_SEQUENCE),
                bytes(iproute2),
                "{nexthop:?}"
            );
        }
    }

    #[test]
    fn a_multipath_group_round_trips() {
        let group = Nexthop {
            id: 11,
            protocol: 201,
            kind: NexthopKind::Multipath {
                members: vec![1, 3],
            },
        };
        let request = replace_request(&group).unwrap();
        let NetlinkPayload::InnerMessage(raw) = request.payload else {
            panic!("not a request: {request:?}")
        };
        assert_eq!(decode_nexthop(&raw.payload).unwrap(), group);
    }

    #[test]
    fn other_nexthops_cannot_be_written() {
        let blackhole = Nexthop {
            id: 13,
            protocol: 201,
            kind: NexthopKind::Other,
        };
        let error = replace_request(&blackhole).unwrap_err();
        assert!(
            matches!(error, NexthopError::Unsupported { id: 13 }),
            "{error:?}"
        );
    }

    #[test]
    fn kernel_errors_carry_the_extended_ack_message() {
        let reply = message(CARRIER_DOWN);
        let NetlinkPayload::Error(error) = &reply.payload else {
            panic!("not an error: {reply:?}")
        };
        let failure = RequestError {
            error: error.to_io(),
            message: extack_message(reply.header.flags, &error.header),
        };
        assert_eq!(failure.error.raw_os_error(), Some(libc::ENETDOWN));
        let error = NexthopError::Replace {
            id: 20,
            source: failure,
        };
        assert_eq!(
            error.to_string(),
            "replacing nexthop 20: Network is down (os error 100): \
             Carrier for nexthop device is down"
        );

        // With NETLINK_CAP_ACK the request is echoed up to its netlink header only.
        let bytes = bytes(CARRIER_DOWN);
        let mut capped = [&bytes[..4 + NLMSG_HDRLEN + NLMSG_HDRLEN], &bytes[60..]].concat();
        capped[0] = capped.len() as u8;
        capped[7] |= (NLM_F_CAPPED >> 8) as u8;
        let reply = NetlinkMessage::<Raw>::deserialize(&capped).unwrap();
        let NetlinkPayload::Error(error) = &reply.payload else {
            panic!("not an error: {reply:?}")
        };
        assert_eq!(
            extack_message(reply.header.flags, &error.header).as_deref(),
            Some("Carrier for nexthop device is down")
        );
        // Without NLM_F_ACK_TLVS there is no message.
        assert_eq!(extack_message(0, &error.header), None);
    }

    #[test]
    fn timers_travel_in_hundredths_of_a_second() {
        assert_eq!(ticks(Duration::from_millis(1234)), 123);
        assert_eq!(duration(123), Duration::from_millis(1230));
        assert_eq!(ticks(Duration::MAX), u32::MAX);
    }

    #[test]
    fn sockets_need_a_runtime() {
        assert!(matches!(Nexthops::connect(), Err(NexthopError::NoRuntime)));
    }
}
