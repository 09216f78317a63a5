//! mpath's kernel half.
//!
//! - `mpath_spread` (TC egress, tcx) spreads a group's outbound flows over its usable NICs.
//! - `mpath_probe_rx` (XDP) matches replies to mpathd's probes, stamps them with kernel time
//!   and hands them to the daemon.
//!
//! The maps they share with mpathd are defined in `maps`. The pure parts live in the library
//! half of this crate, which also builds for the host, where it is unit-tested.
//!
//! The programs compile for the host too (on Linux, whose BPF bindings aya-ebpf has), only so
//! that `cargo clippy -p mpath-ebpf` lints every line of them; that binary does nothing. The
//! real object is built for the BPF target by mpath-ctl's build script.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(any(target_arch = "bpf", target_os = "linux"))]
mod maps;
#[cfg(any(target_arch = "bpf", target_os = "linux"))]
mod packet;
#[cfg(any(target_arch = "bpf", target_os = "linux"))]
mod probe_rx;
#[cfg(any(target_arch = "bpf", target_os = "linux"))]
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

/// Off-target the programs are only compiled, for the lints and unit tests.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
