//! The netlink layer against the real kernel, inside lab network namespaces (needs root).
//!
//! Each test opens its sockets on a current-thread runtime in a thread that has entered the
//! lab's host namespace, so the sockets and `/proc/sys/net` are the lab's, never the machine's.

use std::net::IpAddr;
use std::time::Duration;

use mpath_ctl::core::{
    routes::{MainRoute, MainTable},
    target::{AddressFamily, RouteEntry},
};
use mpath_ctl::net::address::IpCidr;
use mpath_ctl::net::netconf::{InterfaceNetconf, Netconf};
use mpath_ctl::net::netlink::{AddressOptions, Link, MAIN_TABLE, Monitor, NetEvent, Netlink};
use mpath_ctl::net::nexthop::{Nexthop, NexthopError, NexthopKind, Nexthops};
use mpath_lab::{Lab, Netns};
use tokio::runtime::Runtime;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Runs `test` on a fresh runtime with this thread inside `netns`.
fn inside<T>(netns: &Netns, test: impl AsyncFnOnce() -> T) -> T {
    let _inside = netns.enter().expect("enter the lab namespace");
    runtime().block_on(test())
}

fn cidr(text: &str) -> IpCidr {
    text.parse().expect("test CIDR")
}

/// Skips events until one `wanted` accepts; fails after `within`, listing what came instead.
async fn wait_for(
    monitor: &mut Monitor,
    within: Duration,
    what: &str,
    wanted: impl Fn(&NetEvent) -> bool,
) -> NetEvent {
    let deadline = tokio::time::Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, monitor.next()).await {
            Ok(event) => {
                let event = event.unwrap();
                if wanted(&event) {
                    return event;
                }
                seen.push(event);
            }
            Err(_) => panic!("no event {what} within {within:?}; saw {seen:?}"),
        }
    }
}

/// The `ip addr show` line of `addr` on `nic`, with its flags (tentative, deprecated...).
fn ip_addr_line(lab: &Lab, nic: &str, addr: &str) -> String {
    let listing = lab.host().ip(&["-o", "addr", "show", "dev", nic]).unwrap();
    listing
        .lines()
        .find(|line| line.contains(&format!(" {addr}/")))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("{addr} not on {nic}: {listing}"))
}

fn find_link<'a>(links: &'a [Link], name: &str) -> &'a Link {
    links
        .iter()
        .find(|link| link.name == name)
        .unwrap_or_else(|| panic!("{name} not listed in {links:?}"))
}

#[test]
fn links_show_the_nics_with_their_state() {
    let lab = Lab::new(2).unwrap();
    lab.cut("h1").unwrap();
    let h0 = Link {
        ifindex: lab.host().ifindex("h0").unwrap(),
        name: "h0".into(),
        mac: Some(lab.mac("h0").unwrap()),
        up: true,
        running: true,
        lower_up: true,
    };
    inside(lab.host(), async || {
        let netlink = Netlink::connect().unwrap();
        let links = netlink.links().await.unwrap();
        let mut names: Vec<&str> = links.iter().map(|link| link.name.as_str()).collect();
        names.sort();
        assert_eq!(names, ["h0", "h1", "lo"]);

        assert_eq!(find_link(&links, "h0"), &h0);
        assert!(h0.usable());
        let h1 = find_link(&links, "h1");
        assert!(h1.up && !h1.running && !h1.lower_up, "{h1:?}");
        assert!(!h1.usable());

        assert_eq!(netlink.link("h0").await.unwrap(), Some(h0.clone()));
        assert_eq!(netlink.link("h7").await.unwrap(), None);
    })
}

#[test]
fn monitor_reports_carrier_loss_and_return() {
    let lab = Lab::new(2).unwrap();
    inside(lab.host(), async || {
        let mut monitor = Monitor::open().unwrap();
        lab.cut("h0").unwrap();
        // The event is queued by the time the cut returns; the bound only guards against a
        // monitor that never delivers, generously for a loaded machine.
        let event = wait_for(
            &mut monitor,
            Duration::from_secs(5),
            "h0 not running",
            |event| matches!(event, NetEvent::Link(link) if link.name == "h0" && !link.running),
        )
        .await;
        let NetEvent::Link(h0) = event else {
            unreachable!("wait_for returned an event it did not want")
        };
        assert!(h0.up && !h0.lower_up && !h0.usable(), "{h0:?}");

        lab.restore("h0").unwrap();
        wait_for(
            &mut monitor,
            Duration::from_secs(1),
            "h0 usable",
            |event| matches!(event, NetEvent::Link(link) if link.name == "h0" && link.usable()),
        )
        .await;
    })
}

#[test]
fn monitor_reports_removed_and_added_nics() {
    let mut lab = Lab::new(2).unwrap();
    let old_index = lab.host().ifindex("h1").unwrap();
    let runtime = runtime();
    // The socket belongs to the namespace it was opened in; the thread may leave afterwards,
    // which frees `lab` for the changes below.
    let mut monitor = {
        let _inside = lab.host().enter().unwrap();
        let _runtime = runtime.enter();
        Monitor::open().unwrap()
    };

    lab.remove_nic("h1").unwrap();
    runtime.block_on(wait_for(
        &mut monitor,
        Duration::from_secs(2),
        "h1 removed",
        |event| {
            *event
                == NetEvent::LinkRemoved {
                    ifindex: old_index,
                    name: "h1".into(),
                }
        },
    ));

    assert_eq!(lab.add_nic().unwrap(), "h1");
    let new_index = lab.host().ifindex("h1").unwrap();
    runtime.block_on(wait_for(
        &mut monitor,
        Duration::from_secs(2),
        "new h1 usable",
        |event| {
            matches!(event, NetEvent::Link(link)
                if link.name == "h1" && link.ifindex == new_index && link.usable())
        },
    ));
}

#[test]
fn addresses_are_added_removed_and_reported() {
    let lab = Lab::new(1).unwrap();
    let h0 = lab.host().ifindex("h0").unwrap();
    let v4 = cidr("192.0.2.19/24");
    let v6 = cidr("2001:db8::19/64");
    let moved = AddressOptions {
        nodad: true,
        ..Default::default()
    };
    inside(lab.host(), async || {
        // The lab turns DAD off; turn it on for h0 so that skipping it makes a difference.
        for (setting, value) in [("accept_dad", "1"), ("dad_transmits", "1")] {
            std::fs::write(format!("/proc/sys/net/ipv6/conf/h0/{setting}"), value).unwrap();
        }
        let netlink = Netlink::connect().unwrap();
        let mut monitor = Monitor::open().unwrap();
        let second = Duration::from_secs(1);

        netlink
            .add_address(h0, v4, AddressOptions::default())
            .await
            .unwrap();
        netlink.add_address(h0, v6, moved).await.unwrap();
        for cidr in [v4, v6] {
            wait_for(&mut monitor, second, &format!("{cidr} added"), |event| {
                *event == NetEvent::AddressAdded { ifindex: h0, cidr }
            })
            .await;
        }
        let listed = netlink.addresses().await.unwrap();
        assert!(
            listed.contains(&(h0, v4)) && listed.contains(&(h0, v6)),
            "{listed:?}"
        );
        let loopback = cidr("127.0.0.1/8");
        assert!(
            listed.iter().any(|(_, cidr)| *cidr == loopback),
            "{listed:?}"
        );

        let v4_line = ip_addr_line(&lab, "h0", "192.0.2.19");
        assert!(v4_line.contains("brd 192.0.2.255"), "{v4_line}");
        // Without DAD the moved address is usable at once; the same add without nodad is
        // still tentative.
        let moved_line = ip_addr_line(&lab, "h0", "2001:db8::19");
        assert!(!moved_line.contains("tentative"), "{moved_line}");
        netlink
            .add_address(h0, cidr("2001:db8::20/64"), AddressOptions::default())
            .await
            .unwrap();
        let dad_line = ip_addr_line(&lab, "h0", "2001:db8::20");
        assert!(dad_line.contains("tentative"), "{dad_line}");

        // Adding again is no error and brings the address to the options given.
        netlink
            .add_address(h0, v4, AddressOptions::default())
            .await
            .unwrap();
        let deprecate = AddressOptions {
            nodad: true,
            preferred_lft_zero: true,
            ..Default::default()
        };
        netlink.add_address(h0, v6, deprecate).await.unwrap();
        let deprecated_line = ip_addr_line(&lab, "h0", "2001:db8::19");
        assert!(deprecated_line.contains("deprecated"), "{deprecated_line}");
        netlink.add_address(h0, v6, moved).await.unwrap();
        let preferred_line = ip_addr_line(&lab, "h0", "2001:db8::19");
        assert!(!preferred_line.contains("deprecated"), "{preferred_line}");

        for cidr in [v4, v6] {
            netlink.del_address(h0, cidr).await.unwrap();
            wait_for(&mut monitor, second, &format!("{cidr} removed"), |event| {
                *event == NetEvent::AddressRemoved { ifindex: h0, cidr }
            })
            .await;
            // Already gone: not an error.
            netlink.del_address(h0, cidr).await.unwrap();
        }
        let listed = netlink.addresses().await.unwrap();
        assert!(
            !listed.contains(&(h0, v4)) && !listed.contains(&(h0, v6)),
            "{listed:?}"
        );
    })
}

#[test]
fn address_errors_name_the_operation_interface_and_address() {
    let lab = Lab::new(1).unwrap();
    inside(lab.host(), async || {
        let netlink = Netlink::connect().unwrap();
        let missing = 9999;
        let error = netlink
            .add_address(missing, cidr("192.0.2.19/24"), AddressOptions::default())
            .await
            .expect_err("no interface 9999 in the lab");
        assert_eq!(
            error.to_string(),
            "adding address 192.0.2.19/24 to ifindex 9999: No such device (os error 19)"
        );
        // An interface that is gone holds no address: removing one is not an error.
        netlink
            .del_address(missing, cidr("192.0.2.19/24"))
            .await
            .unwrap();

        // A kernel refusal on an existing interface names it: IPv6 is off on h0.
        std::fs::write("/proc/sys/net/ipv6/conf/h0/disable_ipv6", "1").unwrap();
        let h0 = lab.host().ifindex("h0").unwrap();
        let error = netlink
            .add_address(h0, cidr("2001:db8::19/64"), AddressOptions::default())
            .await
            .expect_err("IPv6 is disabled on h0");
        let text = error.to_string();
        assert!(
            text.starts_with(&format!(
                "adding address 2001:db8::19/64 to h0 (ifindex {h0}): "
            )),
            "{text}"
        );
    })
}

/// Applies the notifications that come within a quiet spell to `table` as mpathd does, the
/// silent deletions included: the routes through a NIC taken down are read again, those
/// through a removed NIC go, and so do those whose source was `gone_source`.
async fn follow(
    monitor: &mut Monitor,
    netlink: &Netlink,
    table: &mut MainTable,
    gone_source: Option<IpAddr>,
) {
    while let Ok(event) = tokio::time::timeout(Duration::from_millis(300), monitor.next()).await {
        match event.unwrap() {
            NetEvent::RouteAdded(notice) if notice.table == MAIN_TABLE => {
                table.add(notice.route, notice.replace)
            }
            NetEvent::RouteRemoved(notice) if notice.table == MAIN_TABLE => {
                table.remove(&notice.route)
            }
            NetEvent::Link(link) if !link.up => {
                let found = netlink.main_routes_through(link.ifindex).await.unwrap();
                table.replace_through(link.ifindex, found);
            }
            NetEvent::LinkRemoved { ifindex, .. } => table.remove_through(ifindex),
            NetEvent::AddressRemoved { .. } => {
                if let Some(source) = gone_source {
                    table.remove_with_source(source);
                }
            }
            _ => {}
        }
    }
}

/// What a step does (`ip` commands) and the source address it takes off the host, if any.
type Step<'a> = (&'a str, &'a [&'a [&'a str]], Option<&'a str>);

/// `table`'s routes in its order, and a dump's in the same order.
async fn kept_and_dumped(netlink: &Netlink, table: &MainTable) -> (Vec<MainRoute>, Vec<MainRoute>) {
    let dumped: MainTable = netlink.main_routes().await.unwrap().into_iter().collect();
    (
        table.iter().cloned().collect(),
        dumped.iter().cloned().collect(),
    )
}

#[test]
fn a_main_table_kept_from_notifications_matches_a_dump_through_every_kind_of_change() {
    let lab = Lab::builder()
        .nics(2)
        .router_addrs(&["192.0.2.2/24", "2001:db8::2/64"])
        .host_addr("h0", "192.0.2.21/24")
        .host_addr("h1", "192.0.2.22/24")
        .host_addr("h0", "2001:db8::21/64")
        .host_addr("h1", "2001:db8::22/64")
        .build()
        .unwrap();
    inside(lab.host(), async || {
        let netlink = Netlink::connect().unwrap();
        let mut monitor = Monitor::open().unwrap();
        let mut table: MainTable = netlink.main_routes().await.unwrap().into_iter().collect();
        #[rustfmt::skip]
        let steps: [Step; 8] = [
            ("an IPv4 multipath route", &[&["route", "add", "198.51.100.0/24",
                "nexthop", "via", "192.0.2.1", "dev", "h0",
                "nexthop", "via", "192.0.2.2", "dev", "h1"]], None),
            ("an IPv6 route and a next hop appended to it", &[
                &["-6", "route", "add", "2001:db8:1::/64", "via", "2001:db8::1", "dev", "h0"],
                &["-6", "route", "append", "2001:db8:1::/64", "via", "2001:db8::2", "dev", "h1"],
            ], None),
            ("one next hop of the IPv6 route deleted", &[&["-6", "route", "del", "2001:db8:1::/64",
                "via", "2001:db8::1", "dev", "h0"]], None),
            ("the IPv4 multipath route replaced by a single one", &[&["route", "replace",
                "198.51.100.0/24", "via", "192.0.2.1", "dev", "h0"]], None),
            ("routes that differ in TOS and one with a source", &[
                &["route", "add", "203.0.113.0/24", "via", "192.0.2.1", "dev", "h1", "src", "192.0.2.22"],
                &["route", "add", "203.0.113.0/24", "tos", "0x10", "via", "192.0.2.1", "dev", "h0"],
            ], None),
            ("the source address deleted (its routes go without a word)",
                &[&["addr", "del", "192.0.2.22/24", "dev", "h1"]], Some("192.0.2.22")),
            ("h0 taken down (IPv4 deletes its routes without a word)",
                &[&["link", "set", "h0", "down"]], None),
            ("h1 removed", &[&["link", "del", "h1"]], None),
        ];
        for (what, commands, gone_source) in steps {
            for command in commands {
                lab.host().ip(command).unwrap();
            }
            let gone_source = gone_source.map(|a| a.parse().unwrap());
            follow(&mut monitor, &netlink, &mut table, gone_source).await;
            let (kept, dumped) = kept_and_dumped(&netlink, &table).await;
            assert_eq!(kept, dumped, "after {what}");
        }
        // The steps did change the table: h1's IPv6 hop went with it, h0's IPv4 routes with
        // its link.
        let (kept, _) = kept_and_dumped(&netlink, &table).await;
        assert!(
            kept.iter().all(|r| r.destination.addr().is_ipv6()),
            "{kept:?}"
        );
    });
}

#[test]
fn routes_list_connected_routes_and_each_multipath_next_hop() {
    let lab = Lab::builder()
        .nics(2)
        .router_addrs(&["192.0.2.2/24", "2001:db8::2/64"])
        .host_addr("h0", "192.0.2.21/24")
        .host_addr("h1", "192.0.2.22/24")
        .host_addr("h0", "2001:db8::21/64")
        .host_addr("h1", "2001:db8::22/64")
        .build()
        .unwrap();
    let h0 = lab.host().ifindex("h0").unwrap();
    let h1 = lab.host().ifindex("h1").unwrap();
    inside(lab.host(), async || {
        let netlink = Netlink::connect().unwrap();
        let mut monitor = Monitor::open().unwrap();
        #[rustfmt::skip]
        lab.host().ip(&[
            "route", "add", "198.51.100.0/24",
            "nexthop", "via", "192.0.2.1", "dev", "h0",
            "nexthop", "via", "192.0.2.2", "dev", "h1",
        ]).unwrap();
        #[rustfmt::skip]
        lab.host().ip(&[
            "-6", "route", "add", "2001:db8:1::/64",
            "nexthop", "via", "2001:db8::1", "dev", "h0",
            "nexthop", "via", "2001:db8::2", "dev", "h1",
        ]).unwrap();
        wait_for(
            &mut monitor,
            Duration::from_secs(1),
            "a route added",
            |event| matches!(event, NetEvent::RouteAdded(notice) if notice.route.destination == cidr("2001:db8:1::/64")),
        )
        .await;

        let routes: Vec<RouteEntry> = netlink
            .main_routes()
            .await
            .unwrap()
            .iter()
            .flat_map(MainRoute::entries)
            .collect();
        let entry = |destination: &str, gateway: Option<&str>, oif| RouteEntry {
            destination: cidr(destination),
            gateway: gateway.map(|gateway| gateway.parse::<IpAddr>().expect("test gateway")),
            oif,
        };
        for expected in [
            entry("192.0.2.0/24", None, h0),
            entry("192.0.2.0/24", None, h1),
            entry("198.51.100.0/24", Some("192.0.2.1"), h0),
            entry("198.51.100.0/24", Some("192.0.2.2"), h1),
            entry("2001:db8::/64", None, h0),
            entry("2001:db8::/64", None, h1),
            entry("2001:db8:1::/64", Some("2001:db8::1"), h0),
            entry("2001:db8:1::/64", Some("2001:db8::2"), h1),
        ] {
            assert!(
                routes.contains(&expected),
                "{expected:?} missing from {routes:?}"
            );
        }
        // The local table (the host's own addresses) is not the main table.
        let own = cidr("192.0.2.21/32");
        assert!(
            !routes.iter().any(|route| route.destination == own),
            "{routes:?}"
        );
    })
}

#[test]
fn netconf_changes_only_the_lab_namespace() {
    let lab = Lab::new(1).unwrap();
    let machine_lo = Netconf::system().read("lo").unwrap();
    assert!(
        machine_lo != InterfaceNetconf::GROUP_MEMBER,
        "this machine's lo already has the group settings: the test could not tell"
    );
    let h0 = lab.host().ifindex("h0").unwrap();
    let (primary, secondary) = (cidr("192.0.2.21/24"), cidr("192.0.2.19/24"));
    inside(lab.host(), async || {
        let netconf = Netconf::system();
        let netlink = Netlink::connect().unwrap();
        let original = netconf.read("h0").unwrap();
        assert_eq!(original.arp_ignore, 0);
        assert!(!original.promote_secondaries);

        // Without promotion, removing a subnet's primary address takes the secondary along.
        let options = AddressOptions::default();
        netlink.add_address(h0, primary, options).await.unwrap();
        netlink.add_address(h0, secondary, options).await.unwrap();
        netlink.del_address(h0, primary).await.unwrap();
        assert!(
            !netlink
                .addresses()
                .await
                .unwrap()
                .contains(&(h0, secondary))
        );

        netconf.write("h0", InterfaceNetconf::GROUP_MEMBER).unwrap();
        netconf.write("lo", InterfaceNetconf::GROUP_MEMBER).unwrap();
        assert_eq!(netconf.read("h0").unwrap(), InterfaceNetconf::GROUP_MEMBER);
        assert_eq!(netconf.read("lo").unwrap(), InterfaceNetconf::GROUP_MEMBER);

        netlink.add_address(h0, primary, options).await.unwrap();
        netlink.add_address(h0, secondary, options).await.unwrap();
        netlink.del_address(h0, primary).await.unwrap();
        assert!(
            netlink
                .addresses()
                .await
                .unwrap()
                .contains(&(h0, secondary))
        );

        netconf.write("h0", original).unwrap();
        assert_eq!(netconf.read("h0").unwrap(), original);
    });
    assert_eq!(Netconf::system().read("lo").unwrap(), machine_lo);
}

/// Adds `count` /32 addresses to h0 with one `ip -batch`, which blocks this thread (and so
/// the runtime that would read the monitors) until the kernel has sent every notification.
fn address_burst(lab: &Lab, count: u8) {
    let batch: String = (1..=count)
        .map(|host| format!("address add 203.0.113.{host}/32 dev h0\n"))
        .collect();
    let path = std::env::temp_dir().join(format!("mpath-netlink-burst-{}", std::process::id()));
    std::fs::write(&path, batch).unwrap();
    let result = lab.host().ip(&["-batch", &path.to_string_lossy()]);
    std::fs::remove_file(&path).unwrap();
    result.expect("ip -batch");
}

#[test]
fn overflowing_the_receive_buffer_is_reported_as_overrun() {
    let lab = Lab::new(1).unwrap();
    let h0 = lab.host().ifindex("h0").unwrap();
    inside(lab.host(), async || {
        // The smallest buffer the kernel allows holds only a few notifications.
        let mut tiny = Monitor::open_with_receive_buffer(0).unwrap();
        let mut roomy = Monitor::open().unwrap();
        let count = 200;
        address_burst(&lab, count);

        wait_for(&mut tiny, Duration::from_secs(2), "overrun", |event| {
            *event == NetEvent::Overrun
        })
        .await;
        // The monitor carries on after an overrun.
        let after = cidr("198.51.100.7/32");
        let netlink = Netlink::connect().unwrap();
        netlink
            .add_address(h0, after, AddressOptions::default())
            .await
            .unwrap();
        wait_for(
            &mut tiny,
            Duration::from_secs(2),
            "address after overrun",
            |event| {
                *event
                    == NetEvent::AddressAdded {
                        ifindex: h0,
                        cidr: after,
                    }
            },
        )
        .await;

        // The default buffer takes the whole burst.
        let mut burst_seen = 0;
        while burst_seen < count {
            let event = wait_for(
                &mut roomy,
                Duration::from_secs(2),
                "burst address",
                |event| {
                    matches!(event, NetEvent::Overrun)
                        || matches!(event, NetEvent::AddressAdded { cidr, .. }
                        if cidr.to_string().starts_with("203.0.113."))
                },
            )
            .await;
            assert!(
                event != NetEvent::Overrun,
                "default buffer overran after {burst_seen} events"
            );
            burst_seen += 1;
        }
    })
}

/// The `proto` of the nexthops the test makes; nobody else's in a lab.
const TEST_PROTOCOL: u8 = 201;

/// The nexthops of [`TEST_PROTOCOL`], by id.
async fn our_nexthops(nexthops: &Nexthops) -> Vec<Nexthop> {
    let mut ours: Vec<Nexthop> = nexthops
        .dump()
        .await
        .expect("dumping nexthops")
        .into_iter()
        .filter(|nexthop| nexthop.protocol == TEST_PROTOCOL)
        .collect();
    ours.sort_by_key(|nexthop| nexthop.id);
    ours
}

#[test]
fn nexthops_and_a_resilient_group_are_replaced_dumped_and_deleted() {
    let lab = Lab::new(2).expect("building a lab with two NICs");
    let h0 = lab.host().ifindex("h0").expect("ifindex of h0");
    let h1 = lab.host().ifindex("h1").expect("ifindex of h1");
    let single = |id, family, oif, gateway: Option<&str>, onlink| Nexthop {
        id,
        protocol: TEST_PROTOCOL,
        kind: NexthopKind::Single {
            family,
            oif,
            gateway: gateway.map(|addr| addr.parse().expect("test address")),
            onlink,
        },
    };
    let group = |members: Vec<u32>| Nexthop {
        id: 10,
        protocol: TEST_PROTOCOL,
        kind: NexthopKind::Resilient {
            members,
            buckets: 16,
            idle_timer: Duration::from_secs(60),
            unbalanced_timer: Duration::ZERO,
        },
    };
    // The host has no address in 198.51.100.0/24: the gateways are reachable only onlink.
    let v4_h0 = single(1, AddressFamily::Inet, h0, Some("198.51.100.1"), true);
    let v6_h1 = single(2, AddressFamily::Inet6, h1, None, false);
    let v4_h1 = single(3, AddressFamily::Inet, h1, Some("198.51.100.1"), true);

    let _inside = lab
        .host()
        .enter()
        .expect("entering the lab's host namespace");
    let runtime = runtime();
    runtime.block_on(async {
        let nexthops = Nexthops::connect().expect("opening the nexthop socket");
        for nexthop in [&v4_h0, &v6_h1, &v4_h1, &group(vec![1, 3])] {
            nexthops
                .replace(nexthop)
                .await
                .unwrap_or_else(|error| panic!("{error}"));
        }
        let buckets = nexthops.buckets(10).await.expect("buckets of group 10");
        let indexes: Vec<u16> = buckets.iter().map(|(index, _)| *index).collect();
        assert_eq!(indexes, (0..16).collect::<Vec<u16>>());
        for member in [1, 3] {
            let count = buckets.iter().filter(|(_, id)| *id == member).count();
            assert_eq!(count, 8, "member {member} in {buckets:?}");
        }

        // h1 failed: its buckets move to h0 at once, whatever the idle timer.
        nexthops
            .replace(&group(vec![1]))
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        let buckets = nexthops.buckets(10).await.expect("buckets of group 10");
        assert_eq!(buckets.len(), 16, "{buckets:?}");
        assert!(buckets.iter().all(|(_, id)| *id == 1), "{buckets:?}");

        assert_eq!(
            our_nexthops(&nexthops).await,
            [v4_h0.clone(), v6_h1.clone(), v4_h1.clone(), group(vec![1])]
        );

        for id in [10, 1, 2, 3] {
            let deleted = nexthops
                .delete(id)
                .await
                .unwrap_or_else(|error| panic!("{error}"));
            assert!(deleted, "nexthop {id} was not there to delete");
        }
        assert!(
            !nexthops.delete(10).await.expect("deleting 10 again"),
            "nexthop 10 was already gone"
        );
        assert_eq!(our_nexthops(&nexthops).await, []);

        // The kernel explains in its extended ack why it refused.
        lab.cut("h1").expect("cutting h1");
        let error = nexthops
            .replace(&single(4, AddressFamily::Inet, h1, None, false))
            .await
            .expect_err("h1 has no carrier");
        let NexthopError::Replace { id: 4, source } = &error else {
            panic!("not a replace error: {error:?}")
        };
        assert_eq!(source.error.raw_os_error(), Some(libc::ENETDOWN), "{error}");
        assert_eq!(
            error.to_string(),
            "replacing nexthop 4: Network is down (os error 100): \
             Carrier for nexthop device is down"
        );
    });
}
