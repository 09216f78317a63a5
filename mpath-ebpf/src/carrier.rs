//! fentry on `netif_carrier_off`: the moment a driver reports a group NIC's carrier gone,
//! mpathd hears of it through a ring buffer, where the kernel's own link event waits for
//! linkwatch (up to a second for a physical NIC).
//!
//! Rust programs get no CO-RE relocations, so mpathd reads where `ifindex` lies in `struct
//! net_device` from the kernel's BTF and sets `MPATH_NETDEV_IFINDEX_OFFSET` at load.

use core::ptr::read_volatile;

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::fentry,
    programs::FEntryContext,
};
use mpath_common::CarrierEvent;

use crate::maps::{CARRIER_EVENTS, NICS};

/// The byte offset of `ifindex` in the running kernel's `struct net_device`, set when
/// mpathd loads the program.
#[unsafe(no_mangle)]
static MPATH_NETDEV_IFINDEX_OFFSET: u32 = 0;

#[fentry(function = "netif_carrier_off")]
pub fn mpath_carrier_off(ctx: FEntryContext) -> u32 {
    let dev: *const u8 = ctx.arg(0);
    // SAFETY: the loader sets the global before the program runs; volatile keeps the
    // compiler from folding in the initial 0.
    let offset = unsafe { read_volatile(&raw const MPATH_NETDEV_IFINDEX_OFFSET) } as usize;
    // SAFETY: a checked kernel read through the helper, which fails rather than faults.
    let Ok(ifindex) = (unsafe { bpf_probe_read_kernel(dev.wrapping_add(offset).cast::<u32>()) })
    else {
        return 0;
    };
    // SAFETY: read-only lookup; mpathd replaces entries whole.
    if unsafe { NICS.get(ifindex) }.is_none() {
        return 0;
    }
    let event = CarrierEvent {
        ifindex,
        _pad: 0,
        // SAFETY: plain helper call.
        time_ns: unsafe { bpf_ktime_get_ns() },
    };
    // A full ring (no reader for a while) loses the event; the link event still comes.
    let _ = CARRIER_EVENTS.output::<CarrierEvent>(&event, 0);
    0
}
