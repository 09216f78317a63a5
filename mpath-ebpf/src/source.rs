//! The source hook: cgroup socket address programs that give IPv4 and IPv6 sockets of
//! mpathd's network namespace a source among the data addresses of the group whose route
//! serves their destination, picked by a hash of the destination (see
//! `mpath_common::sources`). A socket the application bound (to an address, a port or a
//! device), a source it passed with the message, and destinations no group serves are left
//! to the kernel.
//!
//! Attached to a cgroup (the root of the hierarchy, for the whole host), they run for sockets
//! of every network namespace: the namespace cookie keeps them to mpathd's.

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::{
    EbpfContext as _,
    bindings::{bpf_sock, sockaddr},
    helpers::{bpf_bind, bpf_get_netns_cookie},
    macros::cgroup_sock_addr,
    maps::lpm_trie::Key,
    programs::SockAddrContext,
};
use mpath_common::sources::{SourceClass, ipv4_mapped, set_index, spreadable, spreadable4};

use crate::maps::{SOURCE_COUNTERS, SOURCE_ROUTES, SOURCE_ROUTES4, SOURCES};

/// The cookie of mpathd's network namespace, set when mpathd loads the programs.
#[unsafe(no_mangle)]
static MPATH_NETNS_COOKIE: u64 = 0;

/// The hooks never refuse a connect or a send.
const ALLOW: i32 = 1;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// `struct sockaddr_in`, which the aya bindings lack.
#[repr(C)]
struct SockaddrIn {
    family: u16,
    port: u16,
    addr: [u8; 4],
    zero: [u8; 8],
}

/// `struct sockaddr_in6`, which the aya bindings lack.
#[repr(C)]
struct SockaddrIn6 {
    family: u16,
    port: u16,
    flowinfo: u32,
    addr: [u8; 16],
    scope_id: u32,
}

#[cgroup_sock_addr(connect6)]
pub(crate) fn mpath_source_connect6(ctx: SockAddrContext) -> i32 {
    // A socket bound to a port, even of the unspecified address, cannot be bound again.
    if let Some((group, source)) = choose6(&ctx, false) {
        let mut addr = SockaddrIn6 {
            family: AF_INET6,
            // Port 0: the kernel picks the port at connect, as for an unbound socket.
            port: 0,
            flowinfo: 0,
            addr: source,
            scope_id: 0,
        };
        // SAFETY: the helper reads a sockaddr_in6 of the given length from our stack.
        let rc = unsafe {
            bpf_bind(
                ctx.sock_addr,
                addr_of_mut!(addr).cast::<sockaddr>(),
                size_of::<SockaddrIn6>() as i32,
            )
        };
        count(group, rc == 0);
    }
    ALLOW
}

#[cgroup_sock_addr(sendmsg6)]
pub(crate) fn mpath_source_sendmsg6(ctx: SockAddrContext) -> i32 {
    let msg_src = || {
        // SAFETY: the context is the kernel's bpf_sock_addr, its source words readable in
        // sendmsg6; volatile keeps each a 4-byte access, the only size the verifier allows.
        unsafe { addr_of!((*ctx.sock_addr).msg_src_ip6) }
    };
    // SAFETY: as above.
    let given = (0..4).any(|i| unsafe { read_volatile(msg_src().cast::<u32>().add(i)) } != 0);
    if given {
        return ALLOW;
    }
    // The kernel binds a port to an unbound socket before its first send: the port says
    // nothing here, the message's source is set per message.
    if let Some((group, source)) = choose6(&ctx, true) {
        for i in 0..4 {
            let word = u32::from_ne_bytes([
                source[4 * i],
                source[4 * i + 1],
                source[4 * i + 2],
                source[4 * i + 3],
            ]);
            // SAFETY: msg_src_ip6 is writable in sendmsg6, word by word.
            unsafe { write_volatile(msg_src().cast::<u32>().cast_mut().add(i), word) };
        }
        count(group, true);
    }
    ALLOW
}

#[cgroup_sock_addr(connect4)]
pub(crate) fn mpath_source_connect4(ctx: SockAddrContext) -> i32 {
    if let Some((group, source)) = choose4(&ctx, false) {
        let mut addr = SockaddrIn {
            family: AF_INET,
            port: 0,
            addr: source,
            zero: [0; 8],
        };
        // SAFETY: the helper reads a sockaddr_in of the given length from our stack.
        let rc = unsafe {
            bpf_bind(
                ctx.sock_addr,
                addr_of_mut!(addr).cast::<sockaddr>(),
                size_of::<SockaddrIn>() as i32,
            )
        };
        count(group, rc == 0);
    }
    ALLOW
}

#[cgroup_sock_addr(sendmsg4)]
pub(crate) fn mpath_source_sendmsg4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the context is the kernel's bpf_sock_addr, whose msg_src_ip4 is readable and
    // writable in sendmsg4 with a 4-byte access.
    let msg_src = unsafe { addr_of!((*ctx.sock_addr).msg_src_ip4) };
    // SAFETY: as above.
    if unsafe { read_volatile(msg_src) } != 0 {
        return ALLOW;
    }
    if let Some((group, source)) = choose4(&ctx, true) {
        // SAFETY: as above.
        unsafe { write_volatile(msg_src.cast_mut(), u32::from_ne_bytes(source)) };
        count(group, true);
    }
    ALLOW
}

/// Whether the socket is of mpathd's network namespace.
#[inline(always)]
fn in_our_namespace(ctx: &SockAddrContext) -> bool {
    // SAFETY: the loader sets the global before the program runs; volatile keeps the
    // compiler from folding in the initial 0.
    let ours = unsafe { read_volatile(&raw const MPATH_NETNS_COOKIE) };
    // SAFETY: the helper takes the program's own context.
    unsafe { bpf_get_netns_cookie(ctx.as_ptr()) == ours }
}

/// The group and IPv4 source for this socket's destination, under the rules of [`choose6`].
#[inline(always)]
fn choose4(ctx: &SockAddrContext, port_bound_ok: bool) -> Option<(u32, [u8; 4])> {
    if !in_our_namespace(ctx) {
        return None;
    }
    let sa = ctx.sock_addr;
    // SAFETY: as in `choose6`; the IPv4 addresses are single 4-byte fields.
    let (bound_dev, bound_port, bound_src, dst) = unsafe {
        let sk: *mut bpf_sock = read_volatile(addr_of!((*sa).__bindgen_anon_1.sk));
        (
            read_volatile(addr_of!((*sk).bound_dev_if)),
            read_volatile(addr_of!((*sk).src_port)),
            read_volatile(addr_of!((*sk).src_ip4)),
            read_volatile(addr_of!((*sa).user_ip4)).to_ne_bytes(),
        )
    };
    if bound_dev != 0 || (bound_port != 0 && !port_bound_ok) || bound_src != 0 || !spreadable4(&dst)
    {
        return None;
    }
    // The trie names a group for its on-link prefixes only.
    let group = SOURCE_ROUTES4.get(Key::new(32, dst))?.group()?;
    let set = SOURCES.get(set_index(group, SourceClass::Ipv4))?;
    let source = set.pick(&ipv4_mapped(dst), true)?;
    Some((group, [source[12], source[13], source[14], source[15]]))
}

/// The group and source for this socket's destination, if the hook is to pick one: not for a
/// socket bound to an address or a device, nor to a port unless `port_bound_ok`.
#[inline(always)]
fn choose6(ctx: &SockAddrContext, port_bound_ok: bool) -> Option<(u32, [u8; 16])> {
    if !in_our_namespace(ctx) {
        return None;
    }
    let sa = ctx.sock_addr;
    // SAFETY: in socket address programs `sk` is always a valid socket (PTR_TO_SOCKET), and
    // every field is read with a 4- or 8-byte access as the verifier requires.
    let (bound_dev, bound_port, bound_src, dst) = unsafe {
        let sk: *mut bpf_sock = read_volatile(addr_of!((*sa).__bindgen_anon_1.sk));
        let bound_dev = read_volatile(addr_of!((*sk).bound_dev_if));
        let bound_port = read_volatile(addr_of!((*sk).src_port));
        let src = addr_of!((*sk).src_ip6).cast::<u32>();
        let dst = addr_of!((*sa).user_ip6).cast::<u32>();
        let mut bound_src = false;
        let mut bytes = [0u8; 16];
        for i in 0..4 {
            bound_src |= read_volatile(src.add(i)) != 0;
            bytes[4 * i..4 * i + 4].copy_from_slice(&read_volatile(dst.add(i)).to_ne_bytes());
        }
        (bound_dev, bound_port, bound_src, bytes)
    };
    if bound_dev != 0 || (bound_port != 0 && !port_bound_ok) || bound_src || !spreadable(&dst) {
        return None;
    }
    let group = SOURCE_ROUTES.get(Key::new(128, dst))?.group()?;
    let set = SOURCES.get(set_index(group, SourceClass::of(&dst)))?;
    Some((group, set.pick(&dst, false)?))
}

#[inline(always)]
fn count(group: u32, bound: bool) {
    if let Some(c) = SOURCE_COUNTERS.get_ptr_mut(group) {
        // SAFETY: per-CPU map value; nothing else runs on this CPU while we do.
        let c = unsafe { &mut *c };
        if bound {
            c.chosen += 1;
        } else {
            c.bind_failed += 1;
        }
    }
}
