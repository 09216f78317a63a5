//! A carrier loss the kernel reports late, for the carrier test and benchmark: the lab's h0
//! (a veth, probing) and a tap t0 (judged by its link, with a data address), whose carrier
//! changes linkwatch handles like a physical NIC's.

use std::time::{SystemTime, UNIX_EPOCH};

use mpath_ctl::core::state::InterfaceStatus;
use mpath_lab::{Lab, Tap};

use crate::daemon::{Mpathd, inbound, log_time_ns, state_of};

/// The group of h0 and t0 at FDT `fdt_ms`, reading the carrier every `carrier_poll_ms`.
pub fn tap_group_config(fdt_ms: u64, carrier_poll_ms: u64) -> String {
    format!(
        r#"
[daemon]
failure_detection_time_ms = {fdt_ms}
socket = "SOCKET"
bpf_pin_dir = "PINS"
carrier_poll_ms = {carrier_poll_ms}

[[group]]
name = "g0"
targets = ["192.0.2.1"]

[[group.interface]]
name = "h0"
test_address = "192.0.2.21/24"
data_addresses = ["192.0.2.19/24"]

[[group.interface]]
name = "t0"
data_addresses = ["192.0.2.40/24"]
"#
    )
}

/// Cuts the tap's carrier right after a veth's carrier came up, which linkwatch handled at
/// once: the tap's change then waits for linkwatch's next run, up to a second later. Returns
/// when the cut was made, in ns since the epoch (the clock of mpathd's log).
pub fn cut_after_a_link_event(lab: &Lab, tap: &Tap) -> anyhow::Result<i64> {
    let host = lab.host();
    host.ip(&["link", "add", "lw0", "type", "veth", "peer", "name", "lw1"])?;
    host.ip(&["link", "set", "lw0", "up"])?;
    host.ip(&["link", "set", "lw1", "up"])?;
    let at = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    tap.set_carrier(false)?;
    Ok(i64::try_from(at)?)
}

/// h0 and t0 ok, t0 holding its data address: ready for the cut.
pub fn tap_group_ready(daemon: &Mpathd) -> bool {
    daemon.try_status().is_some_and(|s| {
        state_of(&s, "h0") == Some(InterfaceStatus::Ok)
            && state_of(&s, "t0") == Some(InterfaceStatus::Ok)
            && inbound(&s, "192.0.2.40/24") == Some("t0")
    })
}

/// t0 failed, its data address on h0.
pub fn tap_failed_over(daemon: &Mpathd) -> bool {
    daemon.try_status().is_some_and(|s| {
        state_of(&s, "t0") == Some(InterfaceStatus::Failed)
            && inbound(&s, "192.0.2.40/24") == Some("h0")
    })
}

/// When mpathd's log says t0 failed, in ns since the epoch.
pub fn tap_failure_ns(log: &str) -> Option<i64> {
    log.lines()
        .find(|l| l.contains("NIC failure detected on t0"))
        .and_then(log_time_ns)
}
