//! mpath's kernel half.
//!
//! - `mpath_spread` (TC egress, tcx) spreads a group's outbound flows over its usable NICs.
//! - `mpath_probe_rx` (XDP) matches replies to mpathd's probes, stamps them with kernel time
//!   and hands them to the daemon.
//!
//! The maps they share with mpathd are defined in `maps`. The pure parts live in the library
//! half of this crate, which also builds for the host, where it is unit-tested.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod packet;
#[cfg(target_arch = "bpf")]
mod probe_rx;
#[cfg(target_arch = "bpf")]
mod spread;

/// Both programs only read packets and maps; GPL makes every helper available.
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic, so this is never called.
    loop {}
}

/// The eBPF object is built for the BPF target by mpath-ctl's build script; on the host this
/// crate only exists for its unit tests.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
