//! mpathd as a system service: what it writes to a log that is not a terminal, and its
//! readiness and watchdog messages to systemd.

use mpath_lab::Lab;
use mpath_tests::daemon::{Mpathd, state_of, three_nic_config};

fn lab() -> Lab {
    Lab::builder().nics(3).build().expect("lab")
}

/// Whether every NIC is ok and probes over both families (IPv6 after the link-local
/// addresses' duplicate address detection, the start-up wait that must not look like an
/// error).
fn settled(d: &Mpathd) -> bool {
    d.try_status().is_some_and(|s| {
        ["h0", "h1", "h2"].iter().all(|nic| {
            state_of(&s, nic) == "ok"
                && s.targets.iter().any(|t| {
                    t.interface == *nic
                        && t.test_address
                            .is_some_and(|a| a.to_string().starts_with("fe80::"))
                })
        })
    })
}

#[test]
fn a_clean_start_logs_plain_text_without_errors() {
    let lab = lab();
    // As at boot: the NICs have just come up, their link-local addresses still tentative.
    for nic in ["h0", "h1", "h2"] {
        for (key, value) in [("accept_dad", "1"), ("dad_transmits", "1")] {
            let setting = format!("net.ipv6.conf.{nic}.{key}={value}");
            lab.host().run(&["sysctl", "-qw", &setting]).unwrap();
        }
        lab.host().ip(&["link", "set", nic, "down"]).unwrap();
        lab.host().ip(&["link", "set", nic, "up"]).unwrap();
    }
    let mut daemon = Mpathd::start(lab.host(), &three_nic_config(700));
    daemon.wait_until("all NICs ok, probing IPv6 too", settled);
    let log = daemon.log();
    assert!(
        log.contains("starts once its duplicate address detection ends"),
        "the wait for DAD was not met or not named:\n{log}"
    );
    assert!(!log.contains('\x1b'), "escape codes in a file log:\n{log}");
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(
        errors.is_empty(),
        "errors on a clean start: {errors:#?}\n{log}"
    );
    // Levels stay readable without colour.
    assert!(log.lines().any(|l| l.contains(" INFO ")), "{log}");
}
