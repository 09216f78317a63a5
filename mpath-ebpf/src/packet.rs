//! Header layouts network-types lacks (the IPv6 fragment header, the echo header ICMP and
//! ICMPv6 share) and the one bounds-checked way the programs touch packet memory.

use core::{marker::PhantomData, mem::size_of};

use aya_ebpf::programs::{TcContext, XdpContext};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

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

/// Types any bytes are a valid value of, with an alignment of at most 2: packet data is
/// 2-byte aligned at least (the kernel aligns the IP header behind the 14-byte Ethernet header
/// to 4).
///
/// # Safety
///
/// The implementing type must be `repr(C)` or primitive, free of padding and niches, and
/// aligned to no more than 2 bytes.
pub(crate) unsafe trait Plain {}

// SAFETY: byte arrays, and network-types' headers, which are `repr(C)` byte fields (the
// Ethernet type a `u16`), as are this module's.
unsafe impl Plain for u8 {}
unsafe impl<const N: usize> Plain for [u8; N] {}
unsafe impl Plain for EthHdr {}
unsafe impl Plain for Ipv4Hdr {}
unsafe impl Plain for Ipv6Hdr {}
unsafe impl Plain for Ipv6FragHdr {}
unsafe impl Plain for IcmpEcho {}

/// The packet a program runs on: the bytes `[start, end)` its context gives, readable while
/// the context lives.
#[derive(Clone, Copy)]
pub(crate) struct Packet<'a> {
    start: usize,
    end: usize,
    context: PhantomData<&'a ()>,
}

impl<'a> Packet<'a> {
    #[inline(always)]
    pub(crate) fn of_tc(ctx: &'a TcContext) -> Packet<'a> {
        Packet {
            start: ctx.data(),
            end: ctx.data_end(),
            context: PhantomData,
        }
    }

    #[inline(always)]
    pub(crate) fn of_xdp(ctx: &'a XdpContext) -> Packet<'a> {
        Packet {
            start: ctx.data(),
            end: ctx.data_end(),
            context: PhantomData,
        }
    }

    /// The bytes the program can read (an XDP frame's first buffer, or an skb's linear part).
    #[inline(always)]
    pub(crate) fn len(self) -> usize {
        self.end - self.start
    }

    /// The `T` at `offset` bytes into the packet, or `None` when the packet is too short.
    ///
    /// Every packet read goes through here, so the verifier sees one bounds check per access,
    /// and this is the one place that turns packet memory into a reference.
    #[inline(always)]
    pub(crate) fn ref_at<T: Plain>(self, offset: usize) -> Option<&'a T> {
        let ptr = self.start + offset;
        if ptr + size_of::<T>() > self.end {
            return None;
        }
        // SAFETY: `[ptr, ptr + size_of::<T>())` lies inside the packet, which the kernel keeps
        // readable for as long as the context ('a) lives; `T: Plain` makes any bytes there a
        // valid `T`, aligned as packet data is.
        Some(unsafe { &*(ptr as *const T) })
    }

    /// Writes `value` at `offset` bytes into the packet; false when the packet is too short.
    ///
    /// The one place that writes packet memory. tc and XDP programs may write the bytes
    /// their context gives (for tc the verifier makes a cloned skb's data private first).
    #[inline(always)]
    pub(crate) fn write_at<T: Plain>(self, offset: usize, value: T) -> bool {
        let ptr = self.start + offset;
        if ptr + size_of::<T>() > self.end {
            return false;
        }
        // SAFETY: `[ptr, ptr + size_of::<T>())` lies inside the packet, which the program may
        // write while its context lives; no reference into packet memory is held across it
        // that would see the change (every read copies what it needs first).
        unsafe { (ptr as *mut T).write_unaligned(value) };
        true
    }
}
