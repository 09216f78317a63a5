//! mpath's kernel half.
//!
//! - `mpath_spread` (TC egress, tcx) spreads a group's outbound flows over its usable NICs.
//! - `mpath_probe_rx` (TC ingress, tcx) matches replies to mpathd's probes, stamps them with
//!   kernel time and hands them to the daemon, and answers the link-layer probes of the
//!   group's alternates (transitive probing); `mpath_probe_rx_xdp` is the same program in
//!   XDP, an opt-in.
//! - `mpath_carrier_off` (fentry on `netif_carrier_off`) reports a group NIC's carrier loss
//!   at once, where the kernel's link event may wait a second, and marks the NIC so that
//!   `mpath_spread` moves its packets in the same instant; `mpath_carrier_on` clears the
//!   mark. Loaded where the kernel lets mpathd load tracing programs.
//! - `mpath_source_connect{4,6}` and `mpath_source_sendmsg{4,6}` (cgroup socket address
//!   hooks) give sockets of mpathd's network namespace a source among their group's data
//!   addresses.
//!
//! The maps they share with mpathd are defined in `maps`. The pure parts (flow hashes, the
//! choice of a source) live in mpath-common, which builds for the host, where they are
//! unit-tested.
//!
//! The programs compile for the host too (on Linux, whose BPF bindings aya-ebpf has), only so
//! that `cargo clippy -p mpath-ebpf` lints every line of them; that binary does nothing. The
//! real object is built for the BPF target by mpath-ctl's build script.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(any(target_arch = "bpf", target_os = "linux"))]
mod carrier;
#[cfg(any(target_arch = "bpf", target_os = "linux"))]
mod maps;
#[cfg(any(target_arch = "bpf", target_os = "linux"))]
mod packet;
#[cfg(any(target_arch = "bpf", target_os = "linux"))]
mod probe_rx;
#[cfg(any(target_arch = "bpf", target_os = "linux"))]
mod source;
#[cfg(any(target_arch = "bpf", target_os = "linux"))]
mod spread;

/// GPL makes every helper available.
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
