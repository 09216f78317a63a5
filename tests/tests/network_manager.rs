//! mpathd beside a real NetworkManager (Debian 12's 1.42) that manages the group NICs with the
//! shipped example (dist/NetworkManager/): it brings the links up and adds nothing, and its
//! start, reloads, restart and cable flaps leave mpathd's addresses, routes, nexthops and rule
//! alone, with no default route of its own.

use std::{thread::sleep, time::Duration};

use mpath_lab::Lab;
use mpath_tests::{
    daemon::{Mpathd, all_ok, h1_failed_back, h1_failed_over},
    dist_text,
    managed::{AddressGaps, Gap, NICS, Watch, start_mpathd},
    network_manager::NetworkManager,
};

/// The shipped profile for each lab NIC, as the README says to adapt it.
fn profiles() -> Vec<(String, String)> {
    let text = dist_text("NetworkManager/mpath-eth0.nmconnection");
    for line in ["id=mpath-eth0", "interface-name=eth0"] {
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
    NICS.iter()
        .map(|nic| {
            (
                format!("mpath-{nic}.nmconnection"),
                text.replace("eth0", nic),
            )
        })
        .collect()
}

/// The shipped conf.d file, naming the lab's NICs.
fn conf() -> String {
    let text = dist_text("NetworkManager/mpath.conf");
    assert!(text.contains("interface-name:eth2"), "{text}");
    text.replace("eth0", "h0")
        .replace("eth1", "h1")
        .replace("eth2", "h2")
}

fn sandbox(lab: &Lab) -> NetworkManager {
    let profiles = profiles();
    let connections: Vec<(&str, &str)> = profiles
        .iter()
        .map(|(name, text)| (name.as_str(), text.as_str()))
        .collect();
    NetworkManager::sandbox(lab.host(), &[("mpath.conf", &conf())], &connections)
}

/// Default routes in main of either family, which NetworkManager must not add.
fn main_defaults(lab: &Lab) -> String {
    ["-4", "-6"]
        .iter()
        .map(|family| {
            lab.host()
                .ip(&[family, "route", "show", "default"])
                .unwrap()
        })
        .collect()
}

/// mpathd fails h1 over when its cable is pulled and repairs it when it is back; for longer
/// than NetworkManager's 6 s carrier wait, after which it would take a NIC it has activated
/// down to nothing (with `ignore-carrier`, it does not). Nothing but mpathd's own moves of
/// h1's data address is deleted: h1's test address and link-local address stay.
fn cable_flap(lab: &Lab, daemon: &mut Mpathd, watch: &Watch, nm: &NetworkManager) {
    lab.cut("h1").unwrap();
    daemon.wait_until("h1 failed, its address on h2", h1_failed_over);
    sleep(Duration::from_secs(8));
    assert_eq!(
        lab.host_addrs("h1").unwrap(),
        ["192.0.2.22/32"],
        "h1 without carrier: its test address alone\nNetworkManager's log:\n{}",
        nm.log()
    );
    lab.restore("h1").unwrap();
    daemon.wait_until("h1 repaired, its address back", h1_failed_back);
    sleep(Duration::from_secs(1));
    let deleted: Vec<String> = watch
        .deletions()
        .into_iter()
        .filter(|l| !l.contains("192.0.2.20"))
        .filter(|l| l.contains("192.0.2.22") || l.contains("inet6 fe80"))
        .collect();
    assert!(
        deleted.is_empty(),
        "deleted in the flap: {deleted:#?}\nNetworkManager's log:\n{}",
        nm.log()
    );
    let log = daemon.log();
    assert!(
        !log.contains("behind mpathd's back"),
        "mpathd repaired what NetworkManager did:\n{log}"
    );
}

/// As at a boot where NetworkManager comes first: it brings the (down) group NICs up with its
/// profiles and no address; mpathd then configures them, and NetworkManager's reloads,
/// restart and a cable flap change nothing of it.
#[test]
fn network_manager_brings_the_links_up_then_leaves_mpathd_s_configuration_alone() {
    let lab = Lab::builder().nics(3).behind_router().build().expect("lab");
    let host = lab.host();
    for nic in NICS {
        host.ip(&["link", "set", nic, "down"]).unwrap();
    }
    let mut nm = sandbox(&lab);
    nm.start();
    for nic in NICS {
        nm.wait_activated(nic, &format!("mpath-{nic}"));
        assert!(
            lab.host_addrs(nic).unwrap().is_empty(),
            "NetworkManager put addresses on {nic}"
        );
    }

    let mut daemon = start_mpathd(&lab);
    let watch = Watch::start(&lab);
    nm.nmcli(&["general", "reload"]);
    watch.untouched(&nm.log(), "nmcli general reload");
    nm.nmcli(&["connection", "reload"]);
    watch.untouched(&nm.log(), "nmcli connection reload");
    nm.stop();
    nm.start();
    for nic in NICS {
        nm.wait_activated(nic, &format!("mpath-{nic}"));
    }
    watch.untouched(&nm.log(), "NetworkManager restarted");

    cable_flap(&lab, &mut daemon, &watch, &nm);
    nm.wait_activated("h1", "mpath-h1");
    watch.settled("after the flap");
    assert_eq!(main_defaults(&lab), "", "a default route in main");
    let profiles = nm.nmcli(&["--get-values", "NAME", "connection", "show"]);
    let mut profiles: Vec<&str> = profiles.lines().filter(|p| *p != "lo").collect();
    profiles.sort();
    assert_eq!(profiles, ["mpath-h0", "mpath-h1", "mpath-h2"]);
}

/// NetworkManager started while mpathd runs takes the group NICs, which carry mpathd's
/// addresses, as configured outside it, and leaves them so through a reload, a restart and a
/// cable flap.
#[test]
fn network_manager_started_beside_mpathd_leaves_its_configuration_alone() {
    let lab = Lab::builder().nics(3).behind_router().build().expect("lab");
    let mut daemon = start_mpathd(&lab);
    let watch = Watch::start(&lab);
    let mut nm = sandbox(&lab);
    nm.start();
    watch.untouched(&nm.log(), "NetworkManager started");
    nm.nmcli(&["general", "reload"]);
    nm.nmcli(&["connection", "reload"]);
    watch.untouched(&nm.log(), "nmcli reloads");
    nm.stop();
    nm.start();
    watch.untouched(&nm.log(), "NetworkManager restarted");
    cable_flap(&lab, &mut daemon, &watch, &nm);
    watch.settled("after the flap");
    assert_eq!(main_defaults(&lab), "", "a default route in main");
}

/// The longest any of mpathd's addresses may be missing after NetworkManager deleted it.
/// mpathd adds an address back within milliseconds of hearing of its deletion, an IPv6 one
/// as soon as NetworkManager enables IPv6 on the NIC again (about 10 ms after disabling it):
/// 15-55 ms at most in a run here, 230 ms once on a loaded 2-core machine.
const LONGEST_GAP: Duration = Duration::from_millis(500);

/// The commands administrators type most, on a NIC with only a test address (h2) and on one
/// with data addresses of both families (h0), three times each. NetworkManager 1.42 deletes
/// every address on the NIC that its profile does not list, whatever the profile says
/// (`device reapply` and the deactivation that `connection up` begins with; no setting keeps
/// them), and `connection up` disables IPv6 on the NIC for a moment, which deletes its IPv6
/// addresses too. mpathd puts each address back at once (an `ip -ts monitor` times every
/// gap), its routes come back, its log has no error, and the IPv6 outage is one warning
/// naming NetworkManager's doing.
#[test]
fn nmcli_connection_up_and_device_reapply_cost_mpathd_s_addresses_milliseconds() {
    let lab = Lab::builder().nics(3).behind_router().build().expect("lab");
    let host = lab.host();
    for nic in NICS {
        host.ip(&["link", "set", nic, "down"]).unwrap();
    }
    let mut nm = sandbox(&lab);
    nm.start();
    for nic in NICS {
        nm.wait_activated(nic, &format!("mpath-{nic}"));
    }
    let mut daemon = start_mpathd(&lab);
    let watch = Watch::start(&lab);
    let gaps = AddressGaps::start(&lab);
    let mut longest = Duration::ZERO;
    let mut test_address_deleted = false;
    let mut ipv6_outages_on_h0 = 0;
    for _ in 0..3 {
        for nic in ["h2", "h0"] {
            let profile = format!("mpath-{nic}");
            for command in [
                &["connection", "up", profile.as_str()][..],
                &["device", "reapply", nic],
            ] {
                let when = format!("nmcli {}", command.join(" "));
                nm.nmcli(command);
                watch.settled_or_explain(&when, || {
                    format!(
                        "mpathd's log:\n{}\nNetworkManager's log:\n{}",
                        daemon.log(),
                        nm.log()
                    )
                });
                daemon.wait_until("every NIC ok", all_ok);
                let deleted: Vec<Gap> = gaps
                    .take()
                    .into_iter()
                    .filter(|g| !g.address.starts_with("fe80:"))
                    .collect();
                for gap in &deleted {
                    let missing = gap
                        .missing
                        .unwrap_or_else(|| panic!("{when}: {gap:?} never came back\n{}", nm.log()));
                    assert!(missing <= LONGEST_GAP, "{when}: {gap:?}");
                    longest = longest.max(missing);
                }
                test_address_deleted |= deleted.iter().any(|g| g.address == "192.0.2.23/32");
                ipv6_outages_on_h0 += usize::from(
                    when == "nmcli connection up mpath-h0"
                        && deleted.iter().any(|g| g.address == "2001:db8::19/64"),
                );
                eprintln!("{when}: {deleted:?}");
            }
        }
    }
    eprintln!("the longest an address of mpathd's was missing: {longest:?}");
    assert!(
        test_address_deleted,
        "NetworkManager no longer deletes h2's test address: the README says it does"
    );
    let log = daemon.log();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    // mpathd hears of IPv6 disabled only when it tries to put an address back meanwhile.
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("IPv6 is disabled on h0"))
        .collect();
    assert!(
        warnings.len() <= ipv6_outages_on_h0
            && warnings
                .iter()
                .all(|l| l.contains(" WARN ") && l.contains("as NetworkManager does")),
        "{warnings:#?} for {ipv6_outages_on_h0} outages of IPv6 on h0"
    );
    assert_eq!(main_defaults(&lab), "", "a default route in main");
}

/// A second configuration of a data address: a NetworkManager profile that also has h1's
/// data address (`ipv4.method=manual`, what the README says not to do). While h1 is failed
/// and mpathd has moved the address to h2, NetworkManager puts its copy back on h1 whenever it
/// configures h1 (here at `nmcli device reapply`, which also deletes h1's test address);
/// mpathd removes the copy and restores the test address within milliseconds, so the address
/// is not answered for on two NICs, and the repair moves it back as usual.
#[test]
fn a_data_address_also_in_a_network_manager_profile_is_put_back_where_mpathd_placed_it() {
    let lab = Lab::builder().nics(3).behind_router().build().expect("lab");
    let host = lab.host();
    for nic in NICS {
        host.ip(&["link", "set", nic, "down"]).unwrap();
    }
    let mut profiles = profiles();
    let (name, h1) = &mut profiles[1];
    assert_eq!(name, "mpath-h1.nmconnection");
    *h1 = h1
        .replacen("[ipv4]\n", "[ipv4]\naddress1=192.0.2.20/24\n", 1)
        .replace("method=disabled", "method=manual");
    let connections: Vec<(&str, &str)> = profiles
        .iter()
        .map(|(name, text)| (name.as_str(), text.as_str()))
        .collect();
    let mut nm = NetworkManager::sandbox(lab.host(), &[("mpath.conf", &conf())], &connections);
    nm.start();
    for nic in NICS {
        nm.wait_activated(nic, &format!("mpath-{nic}"));
    }
    let mut daemon = start_mpathd(&lab);
    lab.cut("h1").unwrap();
    daemon.wait_until("h1 failed, its address on h2", h1_failed_over);
    nm.nmcli(&["device", "reapply", "h1"]);
    daemon.wait_until("NetworkManager's copy on h1 removed", |d| {
        d.log()
            .contains("192.0.2.20/24 was added to h1 behind mpathd's back; it lives on h2")
    });
    sleep(Duration::from_secs(1));
    assert_eq!(lab.host_addrs("h1").unwrap(), ["192.0.2.22/32"]);
    assert!(
        lab.host_addrs("h2")
            .unwrap()
            .contains(&"192.0.2.20/24".to_string())
    );
    lab.restore("h1").unwrap();
    daemon.wait_until("h1 repaired, its address back", h1_failed_back);
    assert!(
        !lab.host_addrs("h2")
            .unwrap()
            .contains(&"192.0.2.20/24".to_string())
    );
    let log = daemon.log();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert!(
        errors.is_empty(),
        "{errors:#?}\nNetworkManager's log:\n{}",
        nm.log()
    );
}
