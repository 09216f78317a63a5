//! mpathd as a good citizen of a real host (issue 24): NICs outside its groups keep their
//! addresses, a NIC outside the groups on the groups' link does not fail them, and names the
//! host does not have are said at `--check` and start.

use std::process::Output;
use std::time::Duration;

use mpath_ctl::core::state::InterfaceStatus;
use mpath_ctl::core::state::ProbeStatus;
use mpath_lab::{Lab, Netns};
use mpath_tests::PinDir;
use mpath_tests::daemon::{Mpathd, binary, state_of};
use mpath_tests::metrics::{sample, scrape};

/// An IPv4-only group of h0 and h1 (FDT 700 ms); the lab's h2 is plugged into the same
/// switch and is in no group: the management NIC.
fn config(fdt_ms: u64, extra_daemon: &str) -> String {
    format!(
        r#"
[daemon]
failure_detection_time_ms = {fdt_ms}
socket = "SOCKET"
bpf_pin_dir = "PINS"
{extra_daemon}

[[group]]
name = "g0"
targets = ["192.0.2.1"]

[[group.interface]]
name = "h0"
test_address = "192.0.2.21/24"
data_addresses = ["192.0.2.19/24"]

[[group.interface]]
name = "h1"
test_address = "192.0.2.22/24"
data_addresses = ["192.0.2.20/24"]
"#
    )
}

fn lab() -> Lab {
    Lab::builder().nics(3).build().expect("lab")
}

fn both_ok(d: &Mpathd) -> bool {
    d.try_status().is_some_and(|s| {
        ["h0", "h1"]
            .iter()
            .all(|n| state_of(&s, n) == Some(InterfaceStatus::Ok))
    })
}

fn sysctl(ns: &Netns, nic: &str, key: &str) -> String {
    let path = format!("/proc/sys/net/ipv4/conf/{nic}/{key}");
    ns.run(&["cat", &path]).unwrap().trim().to_string()
}

/// Runs mpathd in `ns` on `text` (its `SOCKET` and `PINS` replaced) with `args`, for at most
/// 30 s: long enough to refuse, short enough not to hang a test whose mpathd started.
fn run_mpathd(ns: &Netns, text: &str, args: &[&str]) -> Output {
    let pins = PinDir::new();
    let dir = std::env::temp_dir().join(format!(
        "mpathd-citizen-{}",
        pins.path().file_name().unwrap().to_string_lossy()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("mpathd.toml");
    let text = text
        .replace("SOCKET", &dir.join("mpathd.sock").display().to_string())
        .replace("PINS", &pins.path().display().to_string());
    std::fs::write(&path, text).unwrap();
    let output = ns
        .daemon_command("timeout")
        .unwrap()
        .arg("30")
        .arg(binary("mpathd"))
        .arg("--config")
        .arg(&path)
        .args(["--defaults", "/nonexistent"])
        .args(args)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    output
}

/// Issue 24, item 1: a data address found on a management NIC was removed from it at start
/// (and the kernel took its secondary address along); `--check` called the file valid.
#[test]
fn a_data_address_on_a_nic_outside_the_groups_refuses_the_file_and_nothing_of_that_nic_changes() {
    let lab = lab();
    lab.add_host_addr("h2", "192.0.2.20/24").unwrap();
    lab.add_host_addr("h2", "192.0.2.30/24").unwrap();
    let h2 = lab.host_addrs("h2").unwrap();
    let text = config(700, "");
    for args in [&["--check"][..], &[]] {
        let output = run_mpathd(lab.host(), &text, args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(
                "data address 192.0.2.20/24 of interface h1 (group g0) is already on h2 as \
                 192.0.2.20/24, and h2 is in no group"
            ),
            "{args:?}: {stderr}"
        );
        assert_eq!(lab.host_addrs("h2").unwrap(), h2, "{args:?}");
        // Refused before anything changed: no test address, no ARP setting.
        assert!(lab.host_addrs("h0").unwrap().is_empty(), "{args:?}");
        assert_eq!(sysctl(lab.host(), "h0", "arp_ignore"), "0", "{args:?}");
    }
}

/// Issue 24, item 1, while mpathd runs: the copy someone put on the management NIC stays
/// there through a reload that would resync (it is refused, naming the NIC), and through
/// a restart after kill -9 (refused likewise).
#[test]
fn a_running_mpathd_never_takes_an_address_off_a_nic_outside_the_groups() {
    let lab = lab();
    let mut daemon = Mpathd::start(lab.host(), &config(700, ""));
    daemon.wait_until("h0 and h1 ok", both_ok);
    lab.add_host_addr("h2", "192.0.2.20/24").unwrap();
    lab.add_host_addr("h2", "192.0.2.30/24").unwrap();
    // A changed file: before issue 24 the reload resynchronised and removed the copy.
    daemon.reload(&config(800, ""));
    daemon.wait_until("the reload refused", |d| {
        d.log().contains("reload refused, the running configuration stays: data address 192.0.2.20/24 of interface h1 (group g0) is already on h2")
    });
    std::thread::sleep(Duration::from_millis(500));
    let h2 = lab.host_addrs("h2").unwrap();
    for cidr in ["192.0.2.20/24", "192.0.2.30/24"] {
        assert!(h2.contains(&cidr.to_string()), "{cidr}: {h2:?}");
    }
    assert_eq!(daemon.status().groups[0].fdt_ms, 700);
    assert!(!daemon.log().contains("removing a second copy"));
    assert!(both_ok(&daemon));
}

/// Issue 24, item 2: a NIC outside the groups, up on the groups' switch with arp_ignore=0,
/// answered the router's ARP for the test addresses once the router re-resolved them, and
/// every NIC of an IPv4-only group failed. mpathd isolates it, says so and counts it.
#[test]
fn a_nic_outside_the_groups_on_their_link_does_not_fail_them() {
    let lab = lab();
    assert_eq!(sysctl(lab.host(), "h2", "arp_ignore"), "0");
    let mut daemon = Mpathd::start(lab.host(), &config(700, ""));
    daemon.wait_until("h0 and h1 ok", both_ok);
    assert_eq!(sysctl(lab.host(), "h2", "arp_ignore"), "1");
    assert_eq!(sysctl(lab.host(), "h2", "arp_announce"), "2");
    // A management NIC keeps its own setting otherwise.
    assert_eq!(sysctl(lab.host(), "h2", "promote_secondaries"), "0");
    assert!(
        daemon.log().contains(
            "NIC h2 is in no group and has carrier: arp_ignore 0 -> 1, arp_announce 0 -> 2"
        ),
        "{}",
        daemon.log()
    );
    let text = scrape(lab.host()).expect("metrics");
    assert_eq!(
        sample(
            &text,
            r#"mpath_stray_interface_arp_isolated{interface="h2"}"#
        ),
        Some(1.0),
        "{text}"
    );
    // The router forgets the test addresses' MACs and resolves them again. Without the
    // isolation h2 answers too and wins: the replies go to h2, every NIC loses its IPv4
    // probes at once, and mpathd takes the target for dead (PROBE4 failed everywhere).
    std::thread::sleep(Duration::from_secs(2));
    for _ in 0..2 {
        lab.router().ip(&["neigh", "flush", "all"]).unwrap();
        std::thread::sleep(Duration::from_millis(2500));
    }
    let router = lab.router().ip(&["neigh", "show"]).unwrap();
    assert!(!router.contains(&mac(&lab, "h2")), "{router}");
    let status = daemon.status();
    for nic in ["h0", "h1"] {
        let row = status
            .interfaces
            .iter()
            .find(|r| r.interface == nic)
            .unwrap();
        assert_eq!(row.probe_ipv4, Some(ProbeStatus::Ok), "{row:?}");
    }
    let log = daemon.log();
    assert!(!log.contains("NIC failure detected"), "{log}");
    assert!(both_ok(&daemon), "{:?}", status.interfaces);
}

/// As `ip neigh` writes it.
fn mac(lab: &Lab, nic: &str) -> String {
    let bytes = lab.mac(nic).unwrap();
    bytes.map(|b| format!("{b:02x}")).join(":")
}

/// The opt-out: `isolate_arp = false` leaves the NIC as it is and names it in a warning and
/// in the metrics.
#[test]
fn with_isolate_arp_off_a_nic_outside_the_groups_is_named_and_left_alone() {
    let lab = lab();
    let mut daemon = Mpathd::start(lab.host(), &config(700, "isolate_arp = false"));
    daemon.wait_until("h0 and h1 ok", both_ok);
    assert_eq!(sysctl(lab.host(), "h2", "arp_ignore"), "0");
    assert_eq!(sysctl(lab.host(), "h2", "arp_announce"), "0");
    assert!(
        daemon
            .log()
            .contains("NIC h2 is in no group, has carrier and answers ARP for every address"),
        "{}",
        daemon.log()
    );
    let text = scrape(lab.host()).expect("metrics");
    assert_eq!(
        sample(
            &text,
            r#"mpath_stray_interface_arp_isolated{interface="h2"}"#
        ),
        Some(0.0),
        "{text}"
    );
}

/// Issue 24, item 3: a NIC name with a typo passed `--check` and was never logged.
#[test]
fn a_configured_nic_the_host_does_not_have_is_named_at_check_and_start_with_close_names() {
    let lab = lab();
    let text = config(700, "").replace("name = \"h1\"", "name = \"hl\"");
    let output = run_mpathd(lab.host(), &text, &["--check"]);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{all}");
    assert!(
        all.contains(
            "interface hl of group g0 does not exist on this host (did you mean h1, h2?): it \
             stays missing until a NIC of that name appears"
        ),
        "{all}"
    );
    let daemon = Mpathd::start(lab.host(), &text);
    assert!(
        daemon
            .log()
            .contains("interface hl of group g0 does not exist on this host"),
        "{}",
        daemon.log()
    );
}
