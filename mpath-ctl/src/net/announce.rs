//! Telling the link at once that an address moved to another NIC, so peers stop sending to
//! the failed NIC's MAC: a gratuitous ARP for IPv4, an unsolicited neighbour advertisement
//! for IPv6 (Ethernet NICs only).
//!
//! Frames are built here and sent through a packet socket on the new NIC, so they leave
//! exactly there, whatever the routing table says, with no socket bound to the address.
//!
//! Each function sends one frame. A lost frame leaves a peer on the old MAC until its entry
//! goes stale, so the controller repeats each announcement [`ARP_ANNOUNCEMENTS`] /
//! [`NA_ANNOUNCEMENTS`] times, [`ANNOUNCE_INTERVAL`] apart, the first at once.
//!
//! What a Linux peer does with them (net.ipv4.conf.*.arp_accept and
//! net.ipv6.conf.*.accept_untracked_na at their default 0; checked in the lab tests): an
//! existing neighbour entry takes the new MAC at once, in state STALE so it is confirmed on
//! next use (a gratuitous ARP overrides even inside the entry's locktime); a peer without
//! an entry creates none, and resolves the address afresh when it needs it.

use std::collections::BTreeMap;
use std::io;
use std::mem::size_of;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::MetadataExt as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use mpath_common::checksum::{internet_checksum, ipv6_pseudo_header};
use socket2::{Domain, SockAddr, SockAddrStorage, Socket, Type};

/// Gratuitous ARPs per move: illumos's `_arp_publish_count`, which its IP module uses for
/// failover and failback announcements.
pub(crate) const ARP_ANNOUNCEMENTS: u32 = 5;
/// Unsolicited neighbour advertisements per move: RFC 4861's MAX_NEIGHBOR_ADVERTISEMENT.
pub(crate) const NA_ANNOUNCEMENTS: u32 = 3;
/// Spacing of repeated announcements: illumos's `_arp_publish_interval`. Long enough that
/// a short burst of loss (a switch relearning, a busy queue) does not take every copy.
pub(crate) const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(2);

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;
const BROADCAST_MAC: [u8; 6] = [0xff; 6];
/// The Ethernet group of ff02::1 (RFC 2464: 33:33 and the address's last 32 bits).
const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ETH_HLEN: usize = 14;
/// Shortest Ethernet frame without FCS. Drivers pad short frames, but a frame handed on by
/// a bridge or tunnel may not be, and some switches drop runts.
const MIN_FRAME_LEN: usize = 60;
const IPV6_HLEN: usize = 40;
/// ICMPv6 header, reserved word and target (24) plus the target link-layer option (8).
const NA_LEN: usize = 32;
const ICMPV6_NEIGHBOUR_ADVERTISEMENT: u8 = 136;
const NA_ROUTER: u8 = 0x80;
const NA_OVERRIDE: u8 = 0x20;
const ND_OPT_TARGET_LINK_ADDRESS: u8 = 2;
/// RFC 4861: receivers drop neighbour discovery with any other hop limit, which proves the
/// sender is on the link.
const ND_HOP_LIMIT: u8 = 255;

/// Broadcasts a gratuitous ARP on NIC `ifindex` saying `addr` is at `mac`.
///
/// The request form (sender and target address both `addr`, target MAC zero), as Linux
/// (`arp_notify`), illumos and `arping -U` send it: RFC 826 receivers update an existing
/// entry from any ARP packet's sender fields, and RFC 5227 calls this an ARP announcement.
/// The reply form is not sent as well: Linux accepts it only when the target MAC repeats
/// the sender's, and some stacks ignore unsolicited replies, so it would add nothing.
pub fn gratuitous_arp(ifindex: u32, mac: [u8; 6], addr: Ipv4Addr) -> io::Result<()> {
    send_frame(ifindex, ETH_P_ARP, &arp_announcement(mac, addr)).map_err(|e| {
        context(
            e,
            format!(
                "sending gratuitous ARP for {addr} on {}",
                describe_nic(ifindex)
            ),
        )
    })
}

/// Sends an unsolicited neighbour advertisement for `addr` with link-layer address `mac`
/// to all nodes (ff02::1) on NIC `ifindex`: override flag set, solicited clear, router flag
/// as the NIC's IPv6 forwarding setting says (a wrong one would make peers drop or adopt
/// this host as a default router, RFC 4861 7.2.5).
///
/// The source address is `addr` itself, as Linux's `ndisc_send_unsol_na` does: RFC 4861
/// asks for an address of the sending interface (the caller has just moved `addr` there),
/// and a receiver with accept_untracked_na=2 only trusts sources on its own subnets.
/// Move the address with IFA_F_NODAD first: an address still under DAD must not override
/// peers' entries (RFC 4429).
pub fn unsolicited_na(ifindex: u32, mac: [u8; 6], addr: Ipv6Addr) -> io::Result<()> {
    let what = || {
        format!(
            "sending unsolicited neighbour advertisement for {addr} on {}",
            describe_nic(ifindex)
        )
    };
    let router = is_ipv6_router(ifindex).map_err(|e| context(e, what()))?;
    send_frame(
        ifindex,
        ETH_P_IPV6,
        &neighbour_advertisement(mac, addr, router),
    )
    .map_err(|e| context(e, what()))
}

/// An ARP request announcing `addr` at `mac`, broadcast, padded to the minimum frame size.
fn arp_announcement(mac: [u8; 6], addr: Ipv4Addr) -> [u8; MIN_FRAME_LEN] {
    let mut frame = [0u8; MIN_FRAME_LEN];
    frame[..6].copy_from_slice(&BROADCAST_MAC);
    frame[6..12].copy_from_slice(&mac);
    frame[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    let arp = &mut frame[ETH_HLEN..];
    // Ethernet hardware (1), IPv4 protocol, address lengths 6 and 4, operation request (1).
    arp[..8].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    arp[8..14].copy_from_slice(&mac);
    arp[14..18].copy_from_slice(&addr.octets());
    // Target MAC stays zero (RFC 5227: ignored, should be zero).
    arp[24..28].copy_from_slice(&addr.octets());
    frame
}

/// An unsolicited neighbour advertisement from `addr` to all nodes, with the override flag
/// and a target link-layer address option carrying `mac`.
fn neighbour_advertisement(
    mac: [u8; 6],
    addr: Ipv6Addr,
    router: bool,
) -> [u8; ETH_HLEN + IPV6_HLEN + NA_LEN] {
    let mut frame = [0u8; ETH_HLEN + IPV6_HLEN + NA_LEN];
    frame[..6].copy_from_slice(&ALL_NODES_MAC);
    frame[6..12].copy_from_slice(&mac);
    frame[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());

    let ip = &mut frame[ETH_HLEN..ETH_HLEN + IPV6_HLEN];
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&(NA_LEN as u16).to_be_bytes());
    ip[6] = libc::IPPROTO_ICMPV6 as u8;
    ip[7] = ND_HOP_LIMIT;
    ip[8..24].copy_from_slice(&addr.octets());
    ip[24..40].copy_from_slice(&ALL_NODES.octets());

    let mut na = [0u8; NA_LEN];
    na[0] = ICMPV6_NEIGHBOUR_ADVERTISEMENT;
    na[4] = NA_OVERRIDE | if router { NA_ROUTER } else { 0 };
    na[8..24].copy_from_slice(&addr.octets());
    na[24] = ND_OPT_TARGET_LINK_ADDRESS;
    na[25] = 1; // option length in units of 8 bytes
    na[26..32].copy_from_slice(&mac);
    let pseudo = ipv6_pseudo_header(
        &addr.octets(),
        &ALL_NODES.octets(),
        NA_LEN as u32,
        libc::IPPROTO_ICMPV6 as u8,
    );
    let checksum = internet_checksum(pseudo, &na);
    na[2..4].copy_from_slice(&checksum.to_be_bytes());
    frame[ETH_HLEN + IPV6_HLEN..].copy_from_slice(&na);
    frame
}

/// Opens the packet socket of this thread's network namespace ahead of the first
/// announcement, so that a host short of descriptors when a NIC fails cannot leave the move
/// unannounced.
pub(crate) fn open_socket() -> io::Result<()> {
    packet_socket().map(drop)
}

/// A send-only packet socket per network namespace, opened once: closing a packet socket
/// waits for the kernel to quiesce the network (tens of ms), which would stall the daemon on
/// every announcement.
fn packet_socket() -> io::Result<Arc<Socket>> {
    static SOCKETS: Mutex<BTreeMap<u64, Arc<Socket>>> = Mutex::new(BTreeMap::new());
    let netns = std::fs::metadata("/proc/thread-self/ns/net")
        .map_err(|e| context(e, "reading this thread's network namespace".to_string()))?
        .ino();
    let mut sockets = SOCKETS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(socket) = sockets.get(&netns) {
        return Ok(socket.clone());
    }
    // No protocol: the socket receives nothing.
    let socket = Socket::new(Domain::PACKET, Type::RAW, None)
        .map_err(|e| context(e, "opening a packet socket (needs CAP_NET_RAW)".to_string()))?;
    let socket = Arc::new(socket);
    sockets.insert(netns, socket.clone());
    Ok(socket)
}

/// Sends one whole Ethernet `frame` out of NIC `ifindex`.
fn send_frame(ifindex: u32, protocol: u16, frame: &[u8]) -> io::Result<()> {
    let ifindex = libc::c_int::try_from(ifindex)
        .map_err(|_too_big| io::Error::new(io::ErrorKind::InvalidInput, "ifindex out of range"))?;
    let socket = packet_socket()?;
    let mut storage = SockAddrStorage::zeroed();
    // SAFETY: the storage is zeroed and large enough for any socket address; sockaddr_ll is
    // plain data.
    let link = unsafe { storage.view_as::<libc::sockaddr_ll>() };
    link.sll_family = libc::AF_PACKET as u16;
    link.sll_protocol = protocol.to_be();
    link.sll_ifindex = ifindex;
    link.sll_halen = 6;
    link.sll_addr[..6].copy_from_slice(&frame[..6]);
    // SAFETY: the storage holds a sockaddr_ll, of the length given.
    let address = unsafe { SockAddr::new(storage, size_of::<libc::sockaddr_ll>() as _) };
    // Never blocks: a failover must not wait for a stuck NIC's queue; a repeat follows.
    match socket.send_to_with_flags(frame, &address, libc::MSG_DONTWAIT) {
        Ok(n) if n == frame.len() => Ok(()),
        Ok(n) => Err(io::Error::other(format!(
            "only {n} of {} bytes sent",
            frame.len()
        ))),
        Err(e) => Err(e),
    }
}

/// Whether NIC `ifindex` forwards IPv6, i.e. is a router in neighbour discovery's eyes.
/// Read in the calling thread's network namespace, like the frame is sent.
fn is_ipv6_router(ifindex: u32) -> io::Result<bool> {
    let name = nic_name(ifindex)?;
    let path = format!("/proc/sys/net/ipv6/conf/{name}/forwarding");
    let value =
        std::fs::read_to_string(&path).map_err(|e| context(e, format!("reading {path}")))?;
    Ok(value.trim() != "0")
}

fn nic_name(ifindex: u32) -> io::Result<String> {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer holds IF_NAMESIZE bytes, as if_indextoname requires.
    let found = unsafe { libc::if_indextoname(ifindex, name.as_mut_ptr()) };
    if found.is_null() {
        return Err(context(
            io::Error::last_os_error(),
            format!("no NIC has ifindex {ifindex}"),
        ));
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into the buffer.
    let name = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) };
    Ok(name.to_string_lossy().into_owned())
}

/// "h1 (ifindex 5)", or just the index when no NIC has it (any more).
fn describe_nic(ifindex: u32) -> String {
    match nic_name(ifindex) {
        Ok(name) => format!("{name} (ifindex {ifindex})"),
        Err(_) => format!("ifindex {ifindex}"),
    }
}

fn context(error: io::Error, what: String) -> io::Error {
    io::Error::new(error.kind(), format!("{what}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x22];

    #[test]
    fn gratuitous_arp_is_a_broadcast_request_with_sender_and_target_the_address() {
        let frame = arp_announcement(MAC, Ipv4Addr::new(192, 0, 2, 19));
        assert_eq!(frame.len(), 60);
        assert_eq!(&frame[..6], &[0xff; 6]);
        assert_eq!(&frame[6..12], &MAC);
        assert_eq!(&frame[12..14], &[0x08, 0x06]);
        let arp = &frame[14..42];
        assert_eq!(&arp[..8], &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(&arp[8..14], &MAC, "sender MAC");
        assert_eq!(&arp[14..18], &[192, 0, 2, 19], "sender address");
        assert_eq!(&arp[18..24], &[0; 6], "target MAC");
        assert_eq!(&arp[24..28], &[192, 0, 2, 19], "target address");
        assert!(frame[42..].iter().all(|b| *b == 0), "padding");
    }

    #[test]
    fn neighbour_advertisement_has_the_fields_rfc_4861_requires() {
        let addr: Ipv6Addr = "2001:db8::19".parse().unwrap();
        let frame = neighbour_advertisement(MAC, addr, false);
        assert_eq!(&frame[..6], &[0x33, 0x33, 0, 0, 0, 1]);
        assert_eq!(&frame[6..12], &MAC);
        assert_eq!(&frame[12..14], &[0x86, 0xdd]);
        let ip = &frame[14..54];
        assert_eq!(ip[0] >> 4, 6);
        assert_eq!(u16::from_be_bytes([ip[4], ip[5]]), 32, "payload length");
        assert_eq!(ip[6], 58, "next header");
        assert_eq!(ip[7], 255, "hop limit");
        assert_eq!(&ip[8..24], &addr.octets(), "source");
        assert_eq!(&ip[24..40], &ALL_NODES.octets(), "destination");
        let na = &frame[54..];
        assert_eq!(&na[..2], &[136, 0]);
        assert_eq!(na[4], 0x20, "override only");
        assert_eq!(&na[8..24], &addr.octets(), "target");
        assert_eq!(&na[24..26], &[2, 1], "target link-layer address option");
        assert_eq!(&na[26..32], &MAC);
        assert_eq!(neighbour_advertisement(MAC, addr, true)[54 + 4], 0xa0);
    }

    #[test]
    fn neighbour_advertisement_checksum_covers_the_pseudo_header() {
        let addr: Ipv6Addr = "2001:db8::19".parse().unwrap();
        let frame = neighbour_advertisement(MAC, addr, false);
        let mut summed = frame[14 + 8..14 + 40].to_vec();
        summed.extend_from_slice(&[0, 0, 0, 32, 0, 0, 0, 58]);
        summed.extend_from_slice(&frame[54..]);
        assert_eq!(internet_checksum(0, &summed), 0);
        // A different source gives a different checksum: the pseudo-header is included.
        let other = neighbour_advertisement(MAC, "2001:db8::20".parse().unwrap(), false);
        assert_ne!(frame[56..58], other[56..58]);
    }

    #[test]
    fn announcing_on_a_missing_nic_names_it() {
        // No NIC has index u32::MAX; the error comes before anything is sent.
        let error = unsolicited_na(u32::MAX, MAC, "2001:db8::19".parse().unwrap()).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("2001:db8::19"), "{message}");
        assert!(message.contains(&u32::MAX.to_string()), "{message}");
    }
}
