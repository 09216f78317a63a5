//! Probe sockets and address announcements on real links: lab namespaces, frames captured
//! in-process with packet sockets, and the router's kernel as the peer that answers probes
//! and keeps neighbour entries.

use std::io;
use std::mem::{offset_of, size_of};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use mpath_common::{
    NIC_F_TEST_V4, NIC_F_TEST_V6, NicInfo, PROBE_ICMP_ID, PROBE_ICMP_LEN, PROBE_MAGIC,
    PROBE_WIRE_NS_OFFSET, ProbeKind, ProbePayload, Settings,
    checksum::{internet_checksum, ipv6_pseudo_header},
    probe_tag,
};
use mpath_ctl::core::target::AddressFamily;
use mpath_ctl::datapath::{Datapath, ProbeRx};
use mpath_ctl::net::announce::{gratuitous_arp, unsolicited_na};
use mpath_ctl::net::probe_socket::{ProbeSocket, monotonic_ns};
use mpath_lab::{Lab, Netns, ROUTER_NIC};
use mpath_tests::PinDir;

const ROUTER_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
const TEST_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 21);
const ALL_HOSTS_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(224, 0, 0, 1));
const ALL_NODES_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1));
const KEY: [u64; 2] = [0x0123_4567_89ab_cdef, 0x7654_3210_fedc_ba98];
const LOOPBACK_IFINDEX: u32 = 1;
/// How long a frame may take to show up in a lab (neighbour resolution included).
const WAIT: Duration = Duration::from_secs(3);
/// How long to look for a frame that must not appear, after one that had to did.
const QUIET: Duration = Duration::from_millis(300);
const PACKET_OUTGOING: u8 = 4;

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;

#[test]
fn v4_probe_leaves_with_ttl_1_and_the_router_echoes_it_byte_for_byte() {
    let lab = Lab::builder()
        .nics(2)
        .host_addr("h0", "192.0.2.21/24")
        .build()
        .unwrap();
    let h0 = lab.host().ifindex("h0").unwrap();
    let _inside = lab.host().enter().unwrap();
    let capture = Capture::on(h0);
    let unfiltered = UnfilteredIcmp::open(AddressFamily::Inet);
    let probe = ProbeSocket::v4("h0", h0, TEST_V4).unwrap();
    let seq = 0x0005_0007;
    let sent_ns = monotonic_ns();

    probe.send(ROUTER_V4, seq, KEY, sent_ns).unwrap();

    let request = capture
        .wait_for(WAIT, |f| f.outgoing && f.is_echo(ICMP_ECHO_REQUEST))
        .expect("the probe did not leave h0");
    let ip = request.ip().unwrap();
    assert_eq!(ip.ttl, 1, "probes never leave the link");
    assert_eq!(ip.tos, 0xc0, "network control class");
    assert_eq!((ip.src, ip.dst), (IpAddr::V4(TEST_V4), ROUTER_V4));
    assert_eq!(
        ip.payload,
        expected_probe(ICMP_ECHO_REQUEST, h0, seq, sent_ns)
    );

    let reply = capture
        .wait_for(WAIT, |f| !f.outgoing && f.is_echo(ICMP_ECHO_REPLY))
        .expect("the router did not answer");
    let ip = reply.ip().unwrap();
    assert_eq!((ip.src, ip.dst), (ROUTER_V4, IpAddr::V4(TEST_V4)));
    assert_eq!(ip.tos, 0xc0, "Linux copies the request's TOS");
    let echoed = &ip.payload;
    assert_eq!(u16::from_be_bytes([echoed[4], echoed[5]]), PROBE_ICMP_ID);
    assert_eq!(u16::from_be_bytes([echoed[6], echoed[7]]), 0x0007);
    assert_eq!(
        echoed[8..],
        expected_probe(ICMP_ECHO_REQUEST, h0, seq, sent_ns)[8..],
        "payload echoed byte for byte"
    );

    unfiltered.wait_for_echo_reply(WAIT);
    assert_nothing_queued(&probe);
}

#[test]
fn probes_leave_through_their_own_nic_whatever_the_route_says() {
    let lab = Lab::builder()
        .nics(2)
        .host_addr("h0", "192.0.2.21/24")
        .host_addr("h1", "192.0.2.22/24")
        .build()
        .unwrap();
    // Each NIC answers ARP for its own addresses only, so the reply comes back to h1.
    answer_arp_per_nic(lab.host());
    let route = lab.host().ip(&["route", "get", "192.0.2.1"]).unwrap();
    assert!(
        route.contains("dev h0"),
        "the route should pick h0: {route}"
    );
    let (h0, h1) = (
        lab.host().ifindex("h0").unwrap(),
        lab.host().ifindex("h1").unwrap(),
    );
    let h1_link_local = link_local(lab.host(), "h1");
    let _inside = lab.host().enter().unwrap();
    let (capture_h0, capture_h1) = (Capture::on(h0), Capture::on(h1));
    let v4 = ProbeSocket::v4("h1", h1, Ipv4Addr::new(192, 0, 2, 22)).unwrap();
    let v6 = ProbeSocket::v6("h1", h1, h1_link_local).unwrap();

    v4.send(ROUTER_V4, 1, KEY, monotonic_ns()).unwrap();
    let request = capture_h1
        .wait_for(WAIT, |f| f.outgoing && f.is_echo(ICMP_ECHO_REQUEST))
        .expect("the probe did not leave h1");
    assert_eq!(request.ip().unwrap().ttl, 1);
    capture_h1
        .wait_for(WAIT, |f| !f.outgoing && f.is_echo(ICMP_ECHO_REPLY))
        .expect("no reply on h1");

    v4.send(ALL_HOSTS_V4, 2, KEY, monotonic_ns()).unwrap();
    v6.send(ALL_NODES_V6, 3, KEY, monotonic_ns()).unwrap();
    for (target, icmp_type, seq) in [
        (ALL_HOSTS_V4, ICMP_ECHO_REQUEST, 2),
        (ALL_NODES_V6, ICMPV6_ECHO_REQUEST, 3),
    ] {
        let probe = capture_h1
            .wait_for(WAIT, |f| {
                f.outgoing && f.is_echo(icmp_type) && f.ip().is_some_and(|ip| ip.dst == target)
            })
            .unwrap_or_else(|| panic!("the discovery probe to {target} did not leave h1"));
        // A discovery echo says so, under the tag, so its answers draw from their own budget.
        let message = probe.ip().unwrap().payload;
        let payload = &message[8..];
        let field = |offset: usize, len: usize| &payload[offset..offset + len];
        assert_eq!(
            field(offset_of!(ProbePayload, kind), 4),
            (ProbeKind::Discovery as u32).to_ne_bytes()
        );
        assert_eq!(
            field(offset_of!(ProbePayload, tag), 8),
            probe_tag(KEY, h1, seq, ProbeKind::Discovery).to_ne_bytes()
        );
    }

    let leaked = capture_h0.wait_for(QUIET, |f| {
        f.outgoing && (f.is_echo(ICMP_ECHO_REQUEST) || f.is_echo(ICMPV6_ECHO_REQUEST))
    });
    assert!(
        leaked.is_none(),
        "a probe of h1 left through h0: {:?}",
        leaked.and_then(|f| f.ip())
    );
}

#[test]
fn v6_probe_from_link_local_to_the_router_link_local() {
    let lab = Lab::builder().nics(1).build().unwrap();
    let h0 = lab.host().ifindex("h0").unwrap();
    let own = link_local(lab.host(), "h0");
    let router = IpAddr::V6(link_local(lab.router(), ROUTER_NIC));
    let _inside = lab.host().enter().unwrap();
    let capture = Capture::on(h0);
    let unfiltered = UnfilteredIcmp::open(AddressFamily::Inet6);
    let probe = ProbeSocket::v6("h0", h0, own).unwrap();
    let (seq, sent_ns) = (0x0002_fffe, monotonic_ns());

    probe.send(router, seq, KEY, sent_ns).unwrap();

    let request = capture
        .wait_for(WAIT, |f| f.outgoing && f.is_echo(ICMPV6_ECHO_REQUEST))
        .expect("the probe did not leave h0");
    let ip = request.ip().unwrap();
    assert_eq!(ip.ttl, 1, "hop limit");
    assert_eq!(ip.tos, 0xc0, "traffic class");
    assert_eq!((ip.src, ip.dst), (IpAddr::V6(own), router));
    assert_eq!(
        icmpv6_checksum(&ip),
        0,
        "the kernel filled in the ICMPv6 checksum"
    );
    assert_eq!(
        ip.payload[4..],
        expected_probe(ICMPV6_ECHO_REQUEST, h0, seq, sent_ns)[4..]
    );

    let reply = capture
        .wait_for(WAIT, |f| !f.outgoing && f.is_echo(ICMPV6_ECHO_REPLY))
        .expect("the router did not answer");
    let ip = reply.ip().unwrap();
    assert_eq!((ip.src, ip.dst), (router, IpAddr::V6(own)));
    assert_eq!(u16::from_be_bytes([ip.payload[6], ip.payload[7]]), 0xfffe);
    assert_eq!(
        ip.payload[8..],
        expected_probe(ICMPV6_ECHO_REQUEST, h0, seq, sent_ns)[8..]
    );

    unfiltered.wait_for_echo_reply(WAIT);
    assert_nothing_queued(&probe);
}

#[test]
fn the_egress_program_stamps_probes_as_they_leave_and_replies_bring_the_stamp_back() {
    stamps_probes(false)
}

/// Routes mode: the program skips spreading on a routed NIC, but not the stamp.
#[test]
fn probes_leaving_a_routed_nic_are_stamped_too() {
    stamps_probes(true)
}

/// Sends a v4 and a v6 probe from h0 (marked routed or not) and checks that each left with a
/// kernel time stamp, a checksum that covers it and came back matched by XDP.
fn stamps_probes(routed: bool) {
    let lab = Lab::builder()
        .nics(1)
        .host_addr("h0", "192.0.2.21/24")
        .build()
        .unwrap();
    let h0 = lab.host().ifindex("h0").unwrap();
    let own = link_local(lab.host(), "h0");
    let router_v6 = IpAddr::V6(link_local(lab.router(), ROUTER_NIC));
    let pins = PinDir::new();
    let _inside = lab.host().enter().unwrap();
    let mut datapath = Datapath::open(pins.path()).unwrap();
    datapath.attach("h0", ProbeRx::Tc).unwrap();
    datapath
        .maps
        .set_settings(Settings { probe_key: KEY })
        .unwrap();
    let slot = 2;
    datapath
        .maps
        .set_nic(
            h0,
            NicInfo {
                slot,
                flags: NIC_F_TEST_V4 | NIC_F_TEST_V6,
                test_v4: TEST_V4.octets(),
                test_v6: own.octets(),
                mac: lab.mac("h0").unwrap(),
                ..Default::default()
            },
        )
        .unwrap();
    datapath.maps.set_test_address(TEST_V4, h0).unwrap();
    datapath.maps.set_routed(h0, routed).unwrap();
    assert!(datapath.maps.egress_nic(h0).unwrap().is_routed() == routed);
    let capture = Capture::on(h0);
    let v4 = ProbeSocket::v4("h0", h0, TEST_V4).unwrap();
    let v6 = ProbeSocket::v6("h0", h0, own).unwrap();

    for (socket, target, request_type, seq) in [
        (&v4, ROUTER_V4, ICMP_ECHO_REQUEST, 0x0001_0001),
        (&v6, router_v6, ICMPV6_ECHO_REQUEST, 0x0001_0002),
    ] {
        let sent_ns = monotonic_ns();
        socket.send(target, seq, KEY, sent_ns).unwrap();
        let request = capture
            .wait_for(WAIT, |f| f.outgoing && f.is_echo(request_type))
            .unwrap_or_else(|| panic!("probe {seq} did not leave h0"));
        let ip = request.ip().unwrap();
        let wire = &ip.payload[PROBE_WIRE_NS_OFFSET..PROBE_WIRE_NS_OFFSET + 8];
        let wire_ns = u64::from_ne_bytes(wire.try_into().unwrap());
        assert!(
            wire_ns > sent_ns && wire_ns - sent_ns < 1_000_000_000,
            "probe {seq}: stamped {wire_ns}, sent at {sent_ns}"
        );
        let sum = if request_type == ICMP_ECHO_REQUEST {
            internet_checksum(0, &ip.payload)
        } else {
            icmpv6_checksum(&ip)
        };
        assert_eq!(sum, 0, "probe {seq}: the checksum covers the stamp");
        // The router's reply is matched in XDP and dropped there, before any capture.
        wait_until("the reply matched in XDP", || {
            datapath
                .maps
                .last_reply(slot)
                .unwrap()
                .is_some_and(|reply| reply.seq == seq)
        });
        let reply = datapath.maps.last_reply(slot).unwrap().unwrap();
        assert_eq!((reply.sent_ns, reply.wire_ns), (sent_ns, wire_ns));
        assert!(reply.received_ns > wire_ns);
    }
    let counters = datapath.maps.counters(slot).unwrap();
    assert!(counters.tx_packets >= 2, "probes are counted: {counters:?}");
    assert_eq!(counters.redirected_packets, 0, "{counters:?}");
}

#[test]
fn v4_discovery_finds_the_router_and_not_this_host() {
    // One NIC: a second one would hear the probe through the switch and answer it.
    let lab = Lab::builder()
        .nics(1)
        .host_addr("h0", "192.0.2.21/24")
        .build()
        .unwrap();
    sysctl(lab.router(), "ipv4/icmp_echo_ignore_broadcasts", "0");
    // This host would answer a looped-back copy of its own probe.
    sysctl(lab.host(), "ipv4/icmp_echo_ignore_broadcasts", "0");
    let h0 = lab.host().ifindex("h0").unwrap();
    let _inside = lab.host().enter().unwrap();
    let (capture, capture_lo) = (Capture::on(h0), Capture::on(LOOPBACK_IFINDEX));
    let unfiltered = UnfilteredIcmp::open(AddressFamily::Inet);
    let probe = ProbeSocket::v4("h0", h0, TEST_V4).unwrap();

    probe.send(ALL_HOSTS_V4, 3, KEY, monotonic_ns()).unwrap();

    let request = capture
        .wait_for(WAIT, |f| f.outgoing && f.is_echo(ICMP_ECHO_REQUEST))
        .expect("the discovery probe did not leave h0");
    assert_eq!(&request.bytes[..6], &[0x01, 0x00, 0x5e, 0, 0, 1]);
    let ip = request.ip().unwrap();
    assert_eq!((ip.dst, ip.ttl), (ALL_HOSTS_V4, 1));
    let reply = capture
        .wait_for(WAIT, |f| !f.outgoing && f.is_echo(ICMP_ECHO_REPLY))
        .expect("the router did not answer the discovery probe");
    assert_eq!(reply.ip().unwrap().src, ROUTER_V4);
    assert!(
        capture_lo.wait_for(QUIET, |f| f.is_echo_any()).is_none(),
        "this host answered its own discovery probe"
    );

    unfiltered.wait_for_echo_reply(WAIT);
    assert_nothing_queued(&probe);
}

#[test]
fn v6_discovery_to_all_nodes_finds_the_router_and_not_this_host() {
    let lab = Lab::builder().nics(1).build().unwrap();
    let h0 = lab.host().ifindex("h0").unwrap();
    let own = link_local(lab.host(), "h0");
    let router = IpAddr::V6(link_local(lab.router(), ROUTER_NIC));
    let _inside = lab.host().enter().unwrap();
    let (capture, capture_lo) = (Capture::on(h0), Capture::on(LOOPBACK_IFINDEX));
    let unfiltered = UnfilteredIcmp::open(AddressFamily::Inet6);
    let probe = ProbeSocket::v6("h0", h0, own).unwrap();

    probe.send(ALL_NODES_V6, 4, KEY, monotonic_ns()).unwrap();

    let request = capture
        .wait_for(WAIT, |f| f.outgoing && f.is_echo(ICMPV6_ECHO_REQUEST))
        .expect("the discovery probe did not leave h0");
    assert_eq!(&request.bytes[..6], &[0x33, 0x33, 0, 0, 0, 1]);
    let ip = request.ip().unwrap();
    assert_eq!((ip.dst, ip.ttl), (ALL_NODES_V6, 1));
    let reply = capture
        .wait_for(WAIT, |f| !f.outgoing && f.is_echo(ICMPV6_ECHO_REPLY))
        .expect("the router did not answer the discovery probe");
    assert_eq!(reply.ip().unwrap().src, router);
    assert!(
        capture_lo.wait_for(QUIET, |f| f.is_echo_any()).is_none(),
        "this host answered its own discovery probe"
    );

    unfiltered.wait_for_echo_reply(WAIT);
    assert_nothing_queued(&probe);
}

#[test]
fn probe_socket_errors_name_the_nic_and_the_address() {
    let lab = Lab::builder()
        .nics(1)
        .host_addr("h0", "192.0.2.21/24")
        .build()
        .unwrap();
    let h0 = lab.host().ifindex("h0").unwrap();
    let _inside = lab.host().enter().unwrap();

    let error = ProbeSocket::v4("h0", h0, Ipv4Addr::new(192, 0, 2, 99)).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::AddrNotAvailable, "{error}");
    assert_mentions(&error, &["h0", "192.0.2.99"]);

    let error = ProbeSocket::v6("h0", h0, "fe80::99".parse().unwrap()).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::AddrNotAvailable, "{error}");
    assert_mentions(&error, &["h0", "fe80::99", "DAD"]);

    let probe = ProbeSocket::v4("h0", h0, TEST_V4).unwrap();
    let error = probe
        .send(ALL_NODES_V6, 1, KEY, monotonic_ns())
        .unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{error}");
    assert_mentions(&error, &["h0", "ff02::1", "192.0.2.21"]);
    // The kernel refuses broadcasts without SO_BROADCAST; probes never need them.
    let error = probe
        .send("255.255.255.255".parse().unwrap(), 1, KEY, monotonic_ns())
        .unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::PermissionDenied, "{error}");
    assert_mentions(&error, &["h0", "255.255.255.255"]);
}

#[test]
fn gratuitous_arp_moves_existing_router_entries_and_creates_none() {
    let lab = Lab::builder()
        .nics(2)
        .host_addr("h0", "192.0.2.19/24")
        .build()
        .unwrap();
    answer_arp_per_nic(lab.host());
    let (h0_mac, h1_mac) = (lab.mac("h0").unwrap(), lab.mac("h1").unwrap());
    let h1 = lab.host().ifindex("h1").unwrap();
    // The router learns 192.0.2.19 at h0 from h0's ARP request.
    lab.host()
        .run(&["ping", "-c1", "-W2", "-I", "h0", "192.0.2.1"])
        .unwrap();
    assert_eq!(router_lladdr(&lab, "192.0.2.19"), Some(h0_mac));

    lab.del_host_addr("h0", "192.0.2.19/24").unwrap();
    lab.add_host_addr("h1", "192.0.2.19/24").unwrap();
    std::thread::sleep(QUIET);
    assert_eq!(
        router_lladdr(&lab, "192.0.2.19"),
        Some(h0_mac),
        "moving the address alone tells the router nothing"
    );
    {
        let _inside = lab.host().enter().unwrap();
        gratuitous_arp(h1, h1_mac, Ipv4Addr::new(192, 0, 2, 30)).unwrap();
        gratuitous_arp(h1, h1_mac, Ipv4Addr::new(192, 0, 2, 19)).unwrap();
    }
    wait_until("the router's entry for 192.0.2.19 to move to h1", || {
        router_lladdr(&lab, "192.0.2.19") == Some(h1_mac)
    });
    let entry = lab
        .router()
        .ip(&["neigh", "show", "192.0.2.19", "dev", "r0"])
        .unwrap();
    assert!(
        entry.contains("STALE"),
        "an ARP request does not prove reachability: {entry}"
    );
    assert_eq!(
        router_lladdr(&lab, "192.0.2.30"),
        None,
        "with arp_accept=0 an announcement creates no entry"
    );

    sysctl(lab.router(), "ipv4/conf/r0/arp_accept", "1");
    {
        let _inside = lab.host().enter().unwrap();
        gratuitous_arp(h1, h1_mac, Ipv4Addr::new(192, 0, 2, 30)).unwrap();
    }
    wait_until("arp_accept=1 to create an entry for 192.0.2.30", || {
        router_lladdr(&lab, "192.0.2.30") == Some(h1_mac)
    })
}

#[test]
fn unsolicited_na_moves_existing_router_entries_and_creates_none() {
    let lab = Lab::builder()
        .nics(2)
        .host_addr("h0", "2001:db8::19/64")
        .build()
        .unwrap();
    let (h0_mac, h1_mac) = (lab.mac("h0").unwrap(), lab.mac("h1").unwrap());
    let h1 = lab.host().ifindex("h1").unwrap();
    // The router learns 2001:db8::19 at h0 from h0's neighbour solicitation.
    lab.host()
        .run(&[
            "ping",
            "-6",
            "-c1",
            "-W2",
            "-I",
            "2001:db8::19",
            "2001:db8::1",
        ])
        .unwrap();
    assert_eq!(router_lladdr(&lab, "2001:db8::19"), Some(h0_mac));

    lab.del_host_addr("h0", "2001:db8::19/64").unwrap();
    lab.add_host_addr("h1", "2001:db8::19/64").unwrap();
    std::thread::sleep(QUIET);
    assert_eq!(
        router_lladdr(&lab, "2001:db8::19"),
        Some(h0_mac),
        "moving the address alone tells the router nothing"
    );
    {
        let _inside = lab.host().enter().unwrap();
        let capture = Capture::on(h1);
        unsolicited_na(h1, h1_mac, "2001:db8::30".parse().unwrap()).unwrap();
        unsolicited_na(h1, h1_mac, "2001:db8::19".parse().unwrap()).unwrap();
        let sent = capture
            .wait_for(WAIT, |f| f.outgoing && f.icmpv6_type() == Some(136))
            .expect("no neighbour advertisement left h1");
        let ip = sent.ip().unwrap();
        assert_eq!((ip.ttl, ip.dst), (255, ALL_NODES_V6));
        assert_eq!(icmpv6_checksum(&ip), 0);
    }
    wait_until("the router's entry for 2001:db8::19 to move to h1", || {
        router_lladdr(&lab, "2001:db8::19") == Some(h1_mac)
    });
    let entry = lab
        .router()
        .ip(&["neigh", "show", "2001:db8::19", "dev", "r0"])
        .unwrap();
    assert!(entry.contains("STALE"), "{entry}");
    assert!(!entry.contains("router"), "h1 does not forward: {entry}");
    assert_eq!(
        router_lladdr(&lab, "2001:db8::30"),
        None,
        "with accept_untracked_na=0 an advertisement creates no entry"
    );

    // A forwarding NIC advertises itself as a router, or peers would stop routing via it.
    sysctl(lab.host(), "ipv6/conf/h1/forwarding", "1");
    {
        let _inside = lab.host().enter().unwrap();
        unsolicited_na(h1, h1_mac, "2001:db8::19".parse().unwrap()).unwrap();
    }
    wait_until("the router to see 2001:db8::19 as a router", || {
        let entry = lab
            .router()
            .ip(&["neigh", "show", "2001:db8::19", "dev", "r0"])
            .unwrap();
        entry.contains("router")
    })
}

/// The ICMP message a probe of NIC `ifindex` carries, with the checksum field zeroed.
fn expected_probe(icmp_type: u8, ifindex: u32, seq: u32, sent_ns: u64) -> Vec<u8> {
    let mut message = vec![icmp_type, 0, 0, 0];
    message.extend_from_slice(&PROBE_ICMP_ID.to_be_bytes());
    message.extend_from_slice(&(seq as u16).to_be_bytes());
    message.extend_from_slice(&PROBE_MAGIC.to_ne_bytes());
    message.extend_from_slice(&ifindex.to_ne_bytes());
    message.extend_from_slice(&seq.to_ne_bytes());
    message.extend_from_slice(&(ProbeKind::Target as u32).to_ne_bytes());
    message.extend_from_slice(&probe_tag(KEY, ifindex, seq, ProbeKind::Target).to_ne_bytes());
    message.extend_from_slice(&sent_ns.to_ne_bytes());
    // Not stamped: no egress program in these labs.
    message.extend_from_slice(&0u64.to_ne_bytes());
    assert_eq!(message.len(), PROBE_ICMP_LEN);
    if icmp_type == ICMP_ECHO_REQUEST {
        let checksum = internet_checksum(0, &message);
        message[2..4].copy_from_slice(&checksum.to_be_bytes());
    }
    message
}

/// The checksum over an ICMPv6 message and its pseudo-header: 0 when the message is intact.
fn icmpv6_checksum(ip: &IpPacket) -> u16 {
    let (IpAddr::V6(src), IpAddr::V6(dst)) = (ip.src, ip.dst) else {
        panic!("not IPv6: {ip:?}");
    };
    let pseudo = ipv6_pseudo_header(&src.octets(), &dst.octets(), ip.payload.len() as u32, 58);
    internet_checksum(pseudo, &ip.payload)
}

/// A raw ICMP socket without any filter: it receives every ICMP message the host does, so
/// once it has a reply, the kernel has offered that reply to the probe socket too.
struct UnfilteredIcmp {
    fd: OwnedFd,
    family: AddressFamily,
}

impl UnfilteredIcmp {
    fn open(family: AddressFamily) -> Self {
        let (domain, protocol) = match family {
            AddressFamily::Inet => (libc::AF_INET, libc::IPPROTO_ICMP),
            AddressFamily::Inet6 => (libc::AF_INET6, libc::IPPROTO_ICMPV6),
        };
        // SAFETY: plain syscall; the descriptor is owned below.
        let fd = unsafe { libc::socket(domain, libc::SOCK_RAW | libc::SOCK_CLOEXEC, protocol) };
        assert!(fd >= 0, "raw socket: {}", io::Error::last_os_error());
        // SAFETY: a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        UnfilteredIcmp { fd, family }
    }

    /// Waits for an echo reply carrying mpathd's identifier.
    fn wait_for_echo_reply(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 2048];
        while let Some(n) = recv_before(&self.fd, &mut buf, deadline, None) {
            let message = match self.family {
                // IPv4 raw sockets get the IP header too.
                AddressFamily::Inet => &buf[usize::from(buf[0] & 0x0f) * 4..n],
                AddressFamily::Inet6 => &buf[..n],
            };
            let reply_type = match self.family {
                AddressFamily::Inet => ICMP_ECHO_REPLY,
                AddressFamily::Inet6 => ICMPV6_ECHO_REPLY,
            };
            if message.len() >= 8
                && message[0] == reply_type
                && u16::from_be_bytes([message[4], message[5]]) == PROBE_ICMP_ID
            {
                return;
            }
        }
        panic!("no echo reply reached the host's raw sockets")
    }
}

fn assert_nothing_queued(probe: &ProbeSocket) {
    let mut buf = [0u8; 64];
    // SAFETY: receives into a buffer we own, of the length given.
    let n = unsafe {
        libc::recv(
            probe.as_fd().as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    let error = io::Error::last_os_error();
    assert_eq!(n, -1, "the probe socket received {n} bytes");
    assert_eq!(error.kind(), io::ErrorKind::WouldBlock, "{error}");
}

/// A packet socket on one NIC that sees every frame it sends and receives.
struct Capture {
    fd: OwnedFd,
}

impl Capture {
    fn on(ifindex: u32) -> Self {
        let protocol = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain syscall; the descriptor is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::c_int::from(protocol),
            )
        };
        assert!(fd >= 0, "packet socket: {}", io::Error::last_os_error());
        // SAFETY: a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_protocol = protocol;
        address.sll_ifindex = ifindex as libc::c_int;
        // SAFETY: binds to an address of the size passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const address).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        assert!(
            rc == 0,
            "binding packet socket: {}",
            io::Error::last_os_error()
        );
        // Frames of other NICs may have queued before the bind.
        let mut buf = [0u8; 64];
        while recv_before(&fd, &mut buf, Instant::now(), None).is_some() {}
        Capture { fd }
    }

    /// The first frame within `timeout` that `matches`.
    fn wait_for(&self, timeout: Duration, matches: impl Fn(&Frame) -> bool) -> Option<Frame> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        loop {
            let mut pkttype = 0;
            let n = recv_before(&self.fd, &mut buf, deadline, Some(&mut pkttype))?;
            let frame = Frame {
                outgoing: pkttype == PACKET_OUTGOING,
                bytes: buf[..n].to_vec(),
            };
            if matches(&frame) {
                return Some(frame);
            }
        }
    }
}

/// Receives one datagram, waiting until `deadline` at most; also reports the packet type
/// when `pkttype` asks for it (packet sockets).
fn recv_before(
    fd: &OwnedFd,
    buf: &mut [u8],
    deadline: Instant,
    pkttype: Option<&mut u8>,
) -> Option<usize> {
    let left = deadline.saturating_duration_since(Instant::now());
    let mut poll = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd we own.
    let ready = unsafe { libc::poll(&mut poll, 1, left.as_millis() as libc::c_int) };
    if ready <= 0 {
        return None;
    }
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    let mut from_len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: receives into buffers we own, of the lengths given.
    let n = unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
            (&raw mut from).cast(),
            &mut from_len,
        )
    };
    if let Some(pkttype) = pkttype {
        *pkttype = from.sll_pkttype;
    }
    usize::try_from(n).ok()
}

struct Frame {
    outgoing: bool,
    bytes: Vec<u8>,
}

#[derive(Debug)]
struct IpPacket {
    src: IpAddr,
    dst: IpAddr,
    /// TTL or hop limit.
    ttl: u8,
    /// TOS or traffic class.
    tos: u8,
    protocol: u8,
    payload: Vec<u8>,
}

impl Frame {
    fn ip(&self) -> Option<IpPacket> {
        let b = &self.bytes;
        match u16::from_be_bytes([*b.get(12)?, *b.get(13)?]) {
            0x0800 => {
                let ip = b.get(14..)?;
                let ihl = usize::from(ip.first()? & 0x0f) * 4;
                let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
                Some(IpPacket {
                    src: IpAddr::from(<[u8; 4]>::try_from(ip.get(12..16)?).ok()?),
                    dst: IpAddr::from(<[u8; 4]>::try_from(ip.get(16..20)?).ok()?),
                    ttl: ip[8],
                    tos: ip[1],
                    protocol: ip[9],
                    payload: ip.get(ihl..total)?.to_vec(),
                })
            }
            0x86dd => {
                let ip = b.get(14..)?;
                let len = usize::from(u16::from_be_bytes([*ip.get(4)?, *ip.get(5)?]));
                Some(IpPacket {
                    src: IpAddr::from(<[u8; 16]>::try_from(ip.get(8..24)?).ok()?),
                    dst: IpAddr::from(<[u8; 16]>::try_from(ip.get(24..40)?).ok()?),
                    ttl: ip[7],
                    tos: (u16::from_be_bytes([ip[0], ip[1]]) >> 4) as u8,
                    protocol: ip[6],
                    payload: ip.get(40..40 + len)?.to_vec(),
                })
            }
            _ => None,
        }
    }

    /// Whether this is an ICMP / ICMPv6 message of `icmp_type` with mpathd's echo id.
    fn is_echo(&self, icmp_type: u8) -> bool {
        self.ip().is_some_and(|ip| {
            matches!(ip.protocol, 1 | 58)
                && ip.payload.len() >= 8
                && ip.payload[0] == icmp_type
                && u16::from_be_bytes([ip.payload[4], ip.payload[5]]) == PROBE_ICMP_ID
        })
    }

    fn is_echo_any(&self) -> bool {
        [
            ICMP_ECHO_REQUEST,
            ICMP_ECHO_REPLY,
            ICMPV6_ECHO_REQUEST,
            ICMPV6_ECHO_REPLY,
        ]
        .into_iter()
        .any(|icmp_type| self.is_echo(icmp_type))
    }

    fn icmpv6_type(&self) -> Option<u8> {
        let ip = self.ip()?;
        (ip.protocol == 58).then(|| ip.payload.first().copied())?
    }
}

/// Sets `/proc/sys/net/KEY` inside `netns`.
fn sysctl(netns: &Netns, key: &str, value: &str) {
    let _inside = netns.enter().unwrap();
    let path = format!("/proc/sys/net/{key}");
    std::fs::write(&path, value).unwrap_or_else(|e| panic!("writing {value} to {path}: {e}"));
}

/// What mpathd sets on group members: each NIC answers ARP only for its own addresses.
fn answer_arp_per_nic(host: &Netns) {
    sysctl(host, "ipv4/conf/all/arp_ignore", "1");
    sysctl(host, "ipv4/conf/all/arp_announce", "2");
}

fn link_local(netns: &Netns, ifname: &str) -> Ipv6Addr {
    let listing = netns
        .ip(&["-6", "-o", "addr", "show", "dev", ifname, "scope", "link"])
        .unwrap();
    let cidr = listing
        .split_whitespace()
        .skip_while(|word| *word != "inet6")
        .nth(1)
        .unwrap_or_else(|| panic!("no link-local address on {ifname}: {listing}"));
    let address = cidr.split('/').next().unwrap_or(cidr);
    address.parse().unwrap()
}

/// The MAC of the router's neighbour entry for `addr`, if it has one.
fn router_lladdr(lab: &Lab, addr: &str) -> Option<[u8; 6]> {
    let entry = lab
        .router()
        .ip(&["neigh", "show", addr, "dev", ROUTER_NIC])
        .unwrap();
    let text = entry
        .split_whitespace()
        .skip_while(|word| *word != "lladdr")
        .nth(1)?;
    let octets = text
        .split(':')
        .map(|octet| u8::from_str_radix(octet, 16))
        .collect::<Result<Vec<u8>, _>>()
        .unwrap();
    let mac = <[u8; 6]>::try_from(octets).unwrap_or_else(|_| panic!("bad MAC {text}"));
    Some(mac)
}

fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn assert_mentions(error: &io::Error, words: &[&str]) {
    let message = error.to_string();
    for word in words {
        assert!(message.contains(word), "{word:?} missing in: {message}");
    }
}
