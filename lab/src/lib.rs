//! Network-namespace labs for mpath's integration tests, benchmarks and demo.
//!
//! A [`Lab`] is three namespaces: `host` with veth NICs `h0..h{N-1}` (no addresses unless
//! asked, IPv6 DAD off), `switch` with bridge `br0` (STP off, forward delay 0) that every NIC
//! and the router is plugged into, and `router` with `r0` carrying the probe targets
//! 192.0.2.1/24 and 2001:db8::1/64 (plus any extra addresses), which is also the traffic peer.
//! Faults are injected per host NIC: [`Lab::cut`] (carrier loss), [`Lab::drop_silently`]
//! (frames dropped by nftables while carrier stays up), [`Lab::flap`], and
//! [`Lab::add_nic`] / [`Lab::remove_nic`] while running.
//!
//! A [`VirtioLab`] has the same host and router namespaces around the virtio_net NICs of the
//! qemu guest `cargo xtask test --virtio-only` boots, with carrier cuts from the device (QMP).
//!
//! Namespace names are `mpl-PID-LABID-ROLE`, unique per lab, so labs build in parallel. All
//! of a lab's namespaces, and any process still running inside them, go away when the lab is
//! dropped, also while a panic unwinds; [`leftover_namespaces`] lets a test runner assert
//! that. Everything needs root, iproute2, nftables and util-linux (`nsenter`, `unshare`).
//!
//! ```no_run
//! use mpath_lab::{Lab, ROUTER_V4};
//!
//! # fn main() -> anyhow::Result<()> {
//! let lab = Lab::builder()
//!     .nics(3)
//!     .router_addrs(&["192.0.2.2/24"])
//!     .host_addr("h0", "192.0.2.21/24")
//!     .build()?;
//! lab.host().run(&["ping", "-c1", "-W1", "-I", "h0", ROUTER_V4])?;
//!
//! lab.cut("h0")?;
//! assert!(!lab.host().has_carrier("h0")?);
//! lab.restore("h0")?;
//!
//! let mut daemon = lab
//!     .host()
//!     .daemon_command("mpathd")?
//!     .args(["--config", "/tmp/mpathd.toml"])
//!     .spawn()?;
//! daemon.kill()?;
//! # Ok(())
//! # }
//! ```

mod lab;
mod netns;
mod tap;
mod virtio;

use std::fs::File;
use std::os::fd::AsRawFd;

use anyhow::{Context, Result, bail};

pub use lab::{Lab, LabBuilder};
pub use netns::{Netns, NetnsGuard};
pub use tap::Tap;
pub use virtio::{QMP_PORT, VIRTIO_NET_F_CTRL_GUEST_OFFLOADS, VIRTIO_NICS_ENV, VirtioLab};

/// A `[[group.route]]` to the network behind the router through its link address, to append
/// to a configuration of the lab group.
pub const ROUTE_BEHIND_ROUTER: &str =
    "\n[[group.route]]\nto = \"198.51.100.0/24\"\nvia = \"192.0.2.1\"\n";

/// The lab group the tests and benchmarks run mpathd on: h0 and h1 active, h2 a standby,
/// each with a test address, probing the router; IPv4 data addresses on h0 and h1 and an
/// IPv6 one on h0 (so IPv6 probing runs too); the demo runs it too. `SOCKET` and `PINS` are
/// for the caller to fill in: the control socket and the pin directory.
pub fn three_nic_config(fdt_ms: u64) -> String {
    format!(
        r#"
[daemon]
failure_detection_time_ms = {fdt_ms}
failback = true
socket = "SOCKET"
bpf_pin_dir = "PINS"

[[group]]
name = "g0"
targets = ["192.0.2.1"]

[[group.interface]]
name = "h0"
test_address = "192.0.2.21/24"
data_addresses = ["192.0.2.19/24", "2001:db8::19/64"]

[[group.interface]]
name = "h1"
test_address = "192.0.2.22/24"
data_addresses = ["192.0.2.20/24"]

[[group.interface]]
name = "h2"
standby = true
test_address = "192.0.2.23/24"
"#
    )
}

/// A group of h0 and h1 with an IPv4 data address each and no test address, so that only
/// their links tell their state. `daemon` holds extra lines of the `[daemon]` table; `SOCKET`
/// and `PINS` as in [`three_nic_config`].
pub fn two_nic_config(daemon: &str) -> String {
    format!(
        r#"
[daemon]
{daemon}
socket = "SOCKET"
bpf_pin_dir = "PINS"

[[group]]
name = "g0"

[[group.interface]]
name = "h0"
data_addresses = ["192.0.2.19/24"]

[[group.interface]]
name = "h1"
data_addresses = ["192.0.2.20/24"]
"#
    )
}

/// A group of h0 and h1 that probes over IPv6 alone: IPv6 data addresses, no test address,
/// so each NIC probes from its link-local address. `SOCKET` and `PINS` as in
/// [`three_nic_config`].
pub fn ipv6_only_config(fdt_ms: u64) -> String {
    format!(
        r#"
[daemon]
failure_detection_time_ms = {fdt_ms}
socket = "SOCKET"
bpf_pin_dir = "PINS"

[[group]]
name = "g0"

[[group.interface]]
name = "h0"
data_addresses = ["2001:db8::19/64"]

[[group.interface]]
name = "h1"
data_addresses = ["2001:db8::20/64"]
"#
    )
}

/// How many times slower than natively the tests run (`MPATH_TIME_SCALE`, set by `cargo
/// xtask test --kernel` for an emulated guest): time limits are multiplied by it.
pub fn time_scale() -> u32 {
    std::env::var("MPATH_TIME_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n >= 1)
        .unwrap_or(1)
}

/// A time limit of the tests, scaled by [`time_scale`].
pub fn scaled(limit: std::time::Duration) -> std::time::Duration {
    limit * time_scale()
}

/// Whether the kernel has `feature` (e.g. "tcx links (Linux 6.6)"), which the caller
/// found `present` or not. When it is missing, a test returns at once after this says so
/// ("this kernel has no FEATURE", which `cargo xtask test --kernel` lists); with `MPATH_TEST_ALL_FEATURES` set, as on the host in CI, a missing
/// feature fails the test instead, so that nothing is left untested there.
pub fn kernel_has(feature: &str, present: bool) -> bool {
    if present {
        return true;
    }
    assert!(
        std::env::var_os("MPATH_TEST_ALL_FEATURES").is_none(),
        "this kernel lacks {feature}, which every test kernel must have"
    );
    // Straight to the descriptor: libtest captures print! and eprint! of passing tests.
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "mpath-test: this kernel has no {feature}"
    );
    false
}

/// Prefix of every lab namespace name.
pub const NAMESPACE_PREFIX: &str = "mpl-";
/// The router's default IPv4 probe target, on `r0` as 192.0.2.1/24.
pub const ROUTER_V4: &str = "192.0.2.1";
/// The router's default IPv6 probe target, on `r0` as 2001:db8::1/64.
pub const ROUTER_V6: &str = "2001:db8::1";
/// A host on a network behind the router (with [`LabBuilder::behind_router`]).
pub const BEHIND_ROUTER_V4: &str = "198.51.100.1";
/// An IPv6 host behind the router (with [`LabBuilder::behind_router`]).
pub const BEHIND_ROUTER_V6: &str = "2001:db8:ff::1";
/// The router's link-local address on `r0`, the gateway of IPv6 default routes (with
/// [`LabBuilder::behind_router`]).
pub const ROUTER_LINK_LOCAL: &str = "fe80::1";
/// The router's NIC in the router namespace.
pub const ROUTER_NIC: &str = "r0";
/// The bridge in the switch namespace.
pub const BRIDGE: &str = "br0";

const BPFFS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: u32 = 0xcafe_4a11;

/// Lab namespaces that exist now, of any process (names starting with `mpl-`).
pub fn leftover_namespaces() -> Vec<String> {
    netns::namespace_names()
        .into_iter()
        .filter(|name| name.starts_with(NAMESPACE_PREFIX))
        .collect()
}

/// Lab namespaces whose creating process is gone: a test that leaked them, or one killed
/// before its labs could drop. Labs of running processes (another test run, a benchmark on the
/// same machine) are theirs, not leftovers.
pub fn orphaned_namespaces() -> Vec<String> {
    leftover_namespaces()
        .into_iter()
        .filter(|name| {
            creator_pid(name).is_some_and(|pid| pid != std::process::id() && !is_running(pid))
        })
        .collect()
}

/// Whether process `pid` exists.
pub fn is_running(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Deletes lab namespaces whose creating process is gone (killed before its labs could
/// drop), killing whatever still runs in them, and returns the names this call removed. Labs of running
/// processes are left alone.
pub fn remove_stale_namespaces() -> Result<Vec<String>> {
    let stale = orphaned_namespaces();
    let mut removed = Vec::new();
    for name in stale {
        match netns::remove_namespace(&name) {
            Ok(()) => removed.push(name),
            // Another process cleaning up at the same time got there first.
            Err(_) if !netns::netns_path(&name).exists() => {}
            Err(error) => return Err(error),
        }
    }
    Ok(removed)
}

/// The PID part of `mpl-PID-...`.
fn creator_pid(name: &str) -> Option<u32> {
    name.strip_prefix(NAMESPACE_PREFIX)?
        .split('-')
        .next()?
        .parse()
        .ok()
}

/// Makes sure the host's `/sys/fs/bpf` is a bpffs, mounting one when it is not, so pins made
/// by daemons in lab namespaces land where a restarted daemon finds them.
pub fn ensure_bpffs() -> Result<()> {
    if is_bpffs()? {
        return Ok(());
    }
    // Two callers mounting at once would stack two bpffs instances, the second hiding the
    // first one's pins. Lock the (still sysfs) mount point directory and look again: a
    // caller that opens it after the mount gets the bpffs root and returns above.
    let mount_point =
        File::open(BPFFS).with_context(|| format!("opening {BPFFS} to mount bpffs there"))?;
    // SAFETY: flock on a descriptor we own; the lock is released when it closes.
    if unsafe { libc::flock(mount_point.as_raw_fd(), libc::LOCK_EX) } != 0 {
        bail!("locking {BPFFS}: {}", std::io::Error::last_os_error());
    }
    if is_bpffs()? {
        return Ok(());
    }
    // SAFETY: all pointers are NUL-terminated literals that outlive the call.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            c"/sys/fs/bpf".as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        bail!(
            "mounting bpffs on {BPFFS} failed: {} (mount it by hand: mount -t bpf bpf {BPFFS})",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn is_bpffs() -> Result<bool> {
    // SAFETY: statfs fills the zeroed struct we pass; the path is a NUL-terminated literal.
    let mut stats: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c"/sys/fs/bpf".as_ptr(), &mut stats) } != 0 {
        bail!("statfs {BPFFS}: {}", std::io::Error::last_os_error());
    }
    Ok(stats.f_type as u32 == BPF_FS_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creator_pid_is_read_from_lab_names_only() {
        assert_eq!(creator_pid("mpl-1234-7-host"), Some(1234));
        assert_eq!(creator_pid("mpl-x-7-host"), None);
        assert_eq!(creator_pid("other-1234-7-host"), None);
    }
}
