//! Header layouts network-types lacks (the IPv6 fragment header, the echo header ICMP and
//! ICMPv6 share) and the one bounds-checked way the programs touch packet memory.

use core::mem::size_of;

use network_types::{eth::EthHdr, ip::Ipv6Hdr};

pub(crate) const ETH_HLEN: usize = EthHdr::LEN;
pub(crate) const ETH_P_IPV4: u16 = 0x0800;
pub(crate) const ETH_P_IPV6: u16 = 0x86dd;
pub(crate) const IPPROTO_ICMP: u8 = 1;
pub(crate) const IPPROTO_FRAGMENT: u8 = 44;
pub(crate) const IPPROTO_ICMPV6: u8 = 58;
pub(crate) const IPV6_HLEN: usize = Ipv6Hdr::LEN;

#[repr(C)]
pub(crate) struct Ipv6FragHdr {
    pub next_header: u8,
    pub reserved: u8,
    /// Offset (13 bits, in 8-byte units) and the more-fragments flag (lowest bit).
    pub offset_flags: [u8; 2],
    pub id: [u8; 4],
}

/// ICMP and ICMPv6 echo header: the two share this layout.
#[repr(C)]
pub(crate) struct IcmpEcho {
    pub kind: u8,
    pub code: u8,
    pub check: [u8; 2],
    pub id: [u8; 2],
    pub seq: [u8; 2],
}

/// Returns a pointer to a `T` at `offset` bytes into the packet `[start, end)`, or `None`
/// when the packet is too short.
///
/// Every packet read goes through here, so the verifier sees one bounds check per access.
#[inline(always)]
pub(crate) fn at<T>(start: usize, end: usize, offset: usize) -> Option<*const T> {
    let ptr = start + offset;
    if ptr + size_of::<T>() > end {
        return None;
    }
    Some(ptr as *const T)
}
