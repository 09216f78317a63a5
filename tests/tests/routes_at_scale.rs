//! Group routes with a large main table, as a host with a big static set or a BGP feed has
//! them: every route through the group's NICs served and none left over, a failover that
//! re-forms the nexthop groups whatever the table's size, and what others do to mpathd's
//! table and to the kernel settings its routes depend on.
//!
//! The many routes are host routes to 10.0.0.0/8, table entries only: no packet is ever
//! sent to them (test traffic goes to the documentation ranges behind the router).

use std::{io::Write as _, process::Stdio, sync::LazyLock};

use mpath_ctl::config::DEFAULT_ROUTE_TABLE;
use mpath_ctl::core::state::InterfaceStatus;
use mpath_lab::{BEHIND_ROUTER_V4, Lab};
use mpath_tests::{
    daemon::{Mpathd, all_ok, state_of, three_nic_config},
    managed::{routes_served, table},
};

/// The lab group at FDT 700 ms.
static CONFIG: LazyLock<String> = LazyLock::new(|| three_nic_config(700));

/// How many routes the large table has: enough that a failover or a change which read or
/// planned the whole table would show, few enough for a test.
const ROUTES: u32 = 20_000;

/// The lab with h1's lease (its data address in [`CONFIG`]) and the default route through
/// h1, as a DHCP client leaves them; NICs past the third are in no group.
fn lab(nics: u32) -> Lab {
    let lab = Lab::builder()
        .nics(nics)
        .behind_router()
        .build()
        .expect("lab");
    lab.add_host_addr("h1", "192.0.2.20/24").unwrap();
    lab.host()
        .ip(&[
            "route",
            "add",
            "default",
            "via",
            "192.0.2.1",
            "dev",
            "h1",
            "proto",
            "dhcp",
            "metric",
            "100",
        ])
        .unwrap();
    lab
}

/// Runs `ip -batch` in the host namespace with one command a line.
fn batch(lab: &Lab, commands: impl Iterator<Item = String>) {
    let mut child = lab
        .host()
        .cmd("ip")
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for command in commands {
        writeln!(stdin, "{command}").unwrap();
    }
    drop(stdin);
    assert!(child.wait().unwrap().success(), "ip -batch failed");
}

/// `ROUTES` host routes through the gateway on `nic`, as `ip -batch` lines of `verb`.
fn host_routes(verb: &'static str, nic: &'static str) -> impl Iterator<Item = String> {
    (0..ROUTES).map(move |i| {
        let [_, a, b, c] = i.to_be_bytes();
        format!("route {verb} 10.{a}.{b}.{c}/32 via 192.0.2.1 dev {nic}")
    })
}

/// How many of the host routes mpathd's table has, through a nexthop group.
fn served(lab: &Lab) -> usize {
    table(lab, "-4")
        .lines()
        .filter(|l| l.starts_with("10.") && l.contains(" nhid "))
        .count()
}

/// The NICs of the nexthop group mpathd's IPv4 default route uses.
fn default_route_nics(lab: &Lab) -> Vec<String> {
    let text = table(lab, "-4");
    let line = text
        .lines()
        .find(|l| l.starts_with("default nhid "))
        .unwrap_or_else(|| panic!("no default route in mpathd's table:\n{text}"));
    let group = line.split_whitespace().nth(2).unwrap();
    let shown = lab.host().ip(&["nexthop", "show", "id", group]).unwrap();
    let members = shown
        .split_whitespace()
        .skip_while(|w| *w != "group")
        .nth(1);
    members
        .unwrap_or_else(|| panic!("not a group: {shown}"))
        .split('/')
        .map(|id| {
            let text = lab.host().ip(&["nexthop", "show", "id", id]).unwrap();
            let mut words = text.split_whitespace().skip_while(|w| *w != "dev");
            words.nth(1).unwrap().to_string()
        })
        .collect()
}

fn started(lab: &Lab) -> Mpathd {
    let mut daemon = Mpathd::start(lab.host(), &CONFIG);
    daemon.wait_until("all NICs ok and the routes served", |d| {
        all_ok(d) && routes_served(lab, &["-4"])
    });
    daemon
}

#[test]
fn every_route_through_the_group_is_served_through_a_failover_and_none_is_left_after() {
    let lab = lab(3);
    let mut daemon = started(&lab);
    batch(&lab, host_routes("add", "h1"));
    daemon.wait_until("every host route served", |_| {
        served(&lab) == ROUTES as usize
    });
    // mpathd answers its control socket while it serves them.
    assert!(daemon.try_status().is_some());

    lab.cut("h1").unwrap();
    daemon.wait_until("h1 failed and out of the default route's group", |d| {
        d.try_status()
            .is_some_and(|s| state_of(&s, "h1") == Some(InterfaceStatus::Failed))
            && !default_route_nics(&lab).contains(&"h1".to_string())
    });
    assert_eq!(served(&lab), ROUTES as usize, "every route still served");
    let pings = lab
        .host()
        .cmd("ping")
        .args(["-q", "-c", "3", "-i", "0.2", "-W", "1", BEHIND_ROUTER_V4])
        .status()
        .unwrap();
    assert!(pings.success(), "the network behind the router unreachable");
    lab.restore("h1").unwrap();
    daemon.wait_until("h1 back in the default route's group", |d| {
        d.try_status()
            .is_some_and(|s| state_of(&s, "h1") == Some(InterfaceStatus::Ok))
            && default_route_nics(&lab).contains(&"h1".to_string())
    });

    batch(&lab, host_routes("del", "h1"));
    daemon.wait_until("every host route gone from mpathd's table", |_| {
        !table(&lab, "-4").lines().any(|l| l.starts_with("10."))
    });
    assert!(routes_served(&lab, &["-4"]), "the group's own routes stay");
}

#[test]
fn routes_through_a_nic_outside_the_group_get_throws_and_lose_them_when_it_goes_down() {
    // h3 is on the same link, in no group.
    let lab = lab(4);
    let mut daemon = started(&lab);
    // Under the group's default route, each of main's routes through h3 is main's to
    // answer: mpathd's table throws the lookup back.
    let through_h3 = (0..ROUTES / 4).map(|i| {
        let [_, a, b, c] = i.to_be_bytes();
        format!("route add 10.{a}.{b}.{c}/32 dev h3")
    });
    batch(&lab, through_h3);
    let throws = |lab: &Lab| {
        table(lab, "-4")
            .lines()
            .filter(|l| l.starts_with("throw 10."))
            .count()
    };
    daemon.wait_until("a throw for each", |_| {
        throws(&lab) == (ROUTES / 4) as usize
    });
    // Taking h3 down deletes its routes without a notification; mpathd reads them again.
    lab.host().ip(&["link", "set", "h3", "down"]).unwrap();
    daemon.wait_until("the throws gone with h3's routes", |_| throws(&lab) == 0);
    assert!(routes_served(&lab, &["-4"]));
}

#[test]
fn what_others_do_to_mpathd_s_table_and_settings_is_put_right_and_logged() {
    let lab = lab(3);
    let mut daemon = started(&lab);
    let route_table = DEFAULT_ROUTE_TABLE.to_string();
    lab.host()
        .ip(&[
            "route",
            "add",
            "203.0.113.0/24",
            "via",
            "192.0.2.1",
            "dev",
            "h0",
        ])
        .unwrap();
    daemon.wait_until("the new route served", |_| {
        table(&lab, "-4").contains("203.0.113.0/24 nhid")
    });

    // Someone replaces mpathd's route with one of theirs: mpathd serves that destination,
    // so its own comes back.
    lab.host()
        .ip(&[
            "route",
            "replace",
            "203.0.113.0/24",
            "via",
            "192.0.2.1",
            "dev",
            "h2",
            "onlink",
            "table",
            &route_table,
            "proto",
            "static",
        ])
        .unwrap();
    daemon.wait_until("mpathd's route back", |d| {
        table(&lab, "-4").contains("203.0.113.0/24 nhid")
            && d.log().contains("was put in mpathd's table")
    });
    // Someone deletes one of mpathd's routes: it is put back.
    lab.host()
        .ip(&["route", "del", "203.0.113.0/24", "table", &route_table])
        .unwrap();
    daemon.wait_until("the deleted route back", |d| {
        table(&lab, "-4").contains("203.0.113.0/24 nhid")
            && d.log().contains("deleted from mpathd's table")
    });
    // A route of theirs for a destination mpathd does not serve stays.
    lab.host()
        .ip(&[
            "route",
            "add",
            "198.51.100.0/25",
            "via",
            "192.0.2.1",
            "dev",
            "h2",
            "onlink",
            "table",
            &route_table,
            "proto",
            "static",
        ])
        .unwrap();
    daemon.wait_until("the foreign route logged", |d| {
        d.log().matches("was put in mpathd's table").count() >= 2
    });
    assert!(table(&lab, "-4").contains("198.51.100.0/25 via 192.0.2.1 dev h2 proto static onlink"));

    // Someone sets the multipath hash back to addresses only, and nexthop group changes
    // back to announcing every route: both are set again.
    for (setting, value) in [
        ("net.ipv4.fib_multipath_hash_policy", "0"),
        ("net.ipv6.fib_multipath_hash_policy", "0"),
        ("net.ipv4.nexthop_compat_mode", "1"),
    ] {
        let written = lab
            .host()
            .cmd("sysctl")
            .args(["-qw", &format!("{setting}={value}")])
            .status()
            .unwrap();
        assert!(written.success(), "{setting}");
    }
    let read = |setting: &str| {
        let out = lab
            .host()
            .cmd("sysctl")
            .args(["-n", setting])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    daemon.wait_until("the settings repaired", |_| {
        read("net.ipv4.fib_multipath_hash_policy") == "1"
            && read("net.ipv6.fib_multipath_hash_policy") == "1"
            && read("net.ipv4.nexthop_compat_mode") == "0"
    });
    let log = daemon.log();
    assert_eq!(
        log.matches("someone else had set it back").count(),
        3,
        "{log}"
    );
}
