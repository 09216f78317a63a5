//! Carrier loss as the driver reports it, ahead of the kernel's link event. On a physical NIC
//! (a tap here: a veth's link events are never delayed) linkwatch reports a carrier change
//! within a second of another link event up to a second late; mpathd reads the carrier itself
//! (`carrier_poll_ms`) and fails the NIC and moves its address without waiting for it. On
//! kernels whose `carrier` attribute syncs linkwatch for the device (6.18 here), the read
//! also makes the kernel report the change at once, so which of the two mpathd handles first
//! is a race: the test holds both modes to the outcome and prints the delays, which `cargo
//! xtask bench carrier` measures (speed is for benchmarks, not for assertions).

use mpath_lab::Lab;
use mpath_tests::{
    carrier::{
        cut_after_a_link_event, tap_failed_over, tap_failure_ns, tap_group_config, tap_group_ready,
    },
    daemon::Mpathd,
};

#[test]
fn carrier_loss_is_acted_on_before_the_kernel_s_delayed_link_event() {
    for carrier_poll_ms in [10, 0] {
        let lab = Lab::builder().nics(1).build().expect("lab");
        let tap = lab.add_tap("t0").expect("tap");
        let mut daemon = Mpathd::start(lab.host(), &tap_group_config(700, carrier_poll_ms));
        daemon.wait_until("h0 and t0 ok, t0 holding its address", tap_group_ready);
        let cut = cut_after_a_link_event(&lab, &tap).unwrap();
        daemon.wait_until("t0 failed, its address on h0", tap_failed_over);
        let log = daemon.log();
        let failed =
            tap_failure_ns(&log).unwrap_or_else(|| panic!("no failure line for t0: {log}"));
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
