//! Carrier loss as the driver reports it, ahead of the kernel's link event. On a physical NIC
//! (a tap here: a veth's link events are never delayed) linkwatch reports a carrier change
//! within a second of another link event up to a second late; mpathd reads the carrier itself
//! (`carrier_poll_ms`) and fails the NIC and moves its address without waiting for it. On
//! kernels whose `carrier` attribute syncs linkwatch for the device (6.18 here), the read
//! also makes the kernel report the change at once, so which of the two mpathd handles first
//! is a race: the test holds both modes to the outcome and prints the delays, which `cargo
//! xtask bench carrier` measures (speed is for benchmarks, not for assertions).

use std::time::{SystemTime, UNIX_EPOCH};

use mpath_lab::{Lab, Tap};
use mpath_tests::daemon::{Mpathd, inbound, log_time_ns, state_of};

/// h0, probing, and the tap t0, judged by its link alone, each with a data address.
fn config(carrier_poll_ms: u64) -> String {
    format!(
        r#"
[daemon]
failure_detection_time_ms = 700
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

fn now_ns() -> i64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    i64::try_from(since.as_nanos()).unwrap()
}

/// Cuts the tap's carrier right after a veth's carrier came up, which linkwatch handled at
/// once: the tap's change then waits for linkwatch's next run, up to a second later. Returns
/// when the cut was made, in ns since the epoch (the clock of mpathd's log).
fn cut_after_a_link_event(lab: &Lab, tap: &Tap) -> i64 {
    let host = lab.host();
    host.ip(&["link", "add", "lw0", "type", "veth", "peer", "name", "lw1"])
        .unwrap();
    host.ip(&["link", "set", "lw0", "up"]).unwrap();
    host.ip(&["link", "set", "lw1", "up"]).unwrap();
    let at = now_ns();
    tap.set_carrier(false).unwrap();
    at
}

#[test]
fn carrier_loss_is_acted_on_before_the_kernel_s_delayed_link_event() {
    for carrier_poll_ms in [10, 0] {
        let lab = Lab::builder().nics(1).build().expect("lab");
        let tap = lab.add_tap("t0").expect("tap");
        let mut daemon = Mpathd::start(lab.host(), &config(carrier_poll_ms));
        daemon.wait_until("h0 and t0 ok, t0 holding its address", |d| {
            d.try_status().is_some_and(|s| {
                state_of(&s, "h0") == "ok"
                    && state_of(&s, "t0") == "ok"
                    && inbound(&s, "192.0.2.40/24") == Some("t0")
            })
        });
        let cut = cut_after_a_link_event(&lab, &tap);
        daemon.wait_until("t0 failed, its address on h0", |d| {
            d.try_status().is_some_and(|s| {
                state_of(&s, "t0") == "failed" && inbound(&s, "192.0.2.40/24") == Some("h0")
            })
        });
        let log = daemon.log();
        let failed = log
            .lines()
            .find(|l| l.contains("NIC failure detected on t0"))
            .and_then(log_time_ns)
            .unwrap_or_else(|| panic!("no failure line for t0: {log}"));
        println!(
            "carrier_poll_ms = {carrier_poll_ms}: t0 failed {:.1} ms after its carrier went",
            (failed - cut) as f64 / 1e6
        );
        // Where the kernel takes tracing programs the hook runs whatever the poll says;
        // elsewhere the poll runs as configured, and with it off only the link event tells.
        let hook = log.contains("carrier loss is reported by a tracing hook");
        let method = match (hook, carrier_poll_ms) {
            (true, _) => "carrier loss is reported by a tracing hook on netif_carrier_off",
            (false, 0) => "carrier loss is seen through the kernel's link events only",
            (false, _) => "carrier loss is read from the drivers every 10 ms",
        };
        assert!(log.contains(method), "{log}");
        if !hook && carrier_poll_ms == 0 {
            assert!(!log.contains("t0 has no carrier (seen ahead"), "{log}");
        }
        lab.router()
            .run(&["ping", "-c1", "-W2", "192.0.2.40"])
            .expect("t0's address answers from h0");
    }
}
