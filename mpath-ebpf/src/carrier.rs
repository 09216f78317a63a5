//! fentry on `netif_carrier_off` and `netif_carrier_on`: the moment a driver reports a group
//! NIC's carrier gone, the NIC is marked in the egress map (so `mpath_spread` moves its
//! packets to their flows' bucket NICs at once, before mpathd or the kernel's routes know)
//! and mpathd hears of it through a ring buffer, where the kernel's own link event waits for
//! linkwatch (up to a second for a physical NIC). The carrier's return only clears the mark:
//! bringing a NIC back is mpathd's decision (a repair needs probes).
//!
//! Rust programs get no CO-RE relocations, so mpathd reads where `ifindex` lies in `struct
//! net_device` from the kernel's BTF and sets `MPATH_NETDEV_IFINDEX_OFFSET` at load.

use core::ptr::read_volatile;

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::fentry,
    programs::FEntryContext,
};
use mpath_common::{CarrierEvent, EGRESS_F_NO_CARRIER};

use crate::maps::{CARRIER_EVENTS, EGRESS_NICS, NICS};

/// The byte offset of `ifindex` in the running kernel's `struct net_device`, set when
/// mpathd loads the programs.
#[unsafe(no_mangle)]
static MPATH_NETDEV_IFINDEX_OFFSET: u32 = 0;

#[fentry(function = "netif_carrier_off")]
pub(crate) fn mpath_carrier_off(ctx: FEntryContext) -> u32 {
    let Some(ifindex) = group_nic(&ctx) else {
        return 0;
    };
    mark_carrier(ifindex, false);
    let event = CarrierEvent {
        ifindex,
        _pad: 0,
        // SAFETY: plain helper call.
        time_ns: unsafe { bpf_ktime_get_ns() },
    };
    // A full ring (no reader for a while) loses the event; the link event still comes.
    let _: Result<_, _> = CARRIER_EVENTS.output::<CarrierEvent>(&event, 0);
    0
}

#[fentry(function = "netif_carrier_on")]
pub(crate) fn mpath_carrier_on(ctx: FEntryContext) -> u32 {
    if let Some(ifindex) = group_nic(&ctx) {
        mark_carrier(ifindex, true);
    }
    0
}

/// The ifindex of the `struct net_device` the hooked function got, when it is a group NIC.
#[inline(always)]
fn group_nic(ctx: &FEntryContext) -> Option<u32> {
    let dev: *const u8 = ctx.arg(0);
    // SAFETY: the loader sets the global before the program runs; volatile keeps the
    // compiler from folding in the initial 0.
    let offset = unsafe { read_volatile(&raw const MPATH_NETDEV_IFINDEX_OFFSET) } as usize;
    // SAFETY: a checked kernel read through the helper, which fails rather than faults.
    let ifindex = unsafe { bpf_probe_read_kernel(dev.wrapping_add(offset).cast::<u32>()) }.ok()?;
    // SAFETY: read-only lookup; mpathd replaces entries whole.
    unsafe { NICS.get(ifindex) }.map(|_| ifindex)
}

/// Sets or clears `EGRESS_F_NO_CARRIER` in the NIC's egress entry. mpathd rewrites entries
/// with a read of the old flags first, so a mark lost to that race lasts only until mpathd
/// handles the ring's event (it then stops routing flows to the NIC).
#[inline(always)]
fn mark_carrier(ifindex: u32, carrier: bool) {
    let Some(nic) = EGRESS_NICS.get_ptr_mut(ifindex) else {
        return;
    };
    // SAFETY: the pointer into the array map is valid for the program's run; a u16 store is
    // atomic on every architecture the kernel runs BPF on.
    unsafe {
        if (*nic).is_present() {
            if carrier {
                (*nic).flags &= !EGRESS_F_NO_CARRIER;
            } else {
                (*nic).flags |= EGRESS_F_NO_CARRIER;
            }
        }
    }
}
