//! Loading the datapath on a pin directory that another mpath release left behind, and the
//! source hook's route maps when they cannot hold mpathd's whole table.

use std::{collections::BTreeMap, net::Ipv4Addr, path::Path};

use aya::maps::{Map, MapData, MapInfo, lpm_trie::Key, lpm_trie::LpmTrie};
use mpath_common::{
    PIN_LAYOUT_VERSION, map_names,
    sources::{MAX_SOURCE_ROUTES, SourceRoute},
};
use mpath_ctl::{
    datapath::{Datapath, maps::Maps},
    net::address::IpCidr,
};
use mpath_tests::PinDir;

#[test]
fn opening_the_datapath_removes_the_pins_of_other_layout_versions_only() {
    let pins = PinDir::new();
    let root = pins.path();
    for dir in ["v1/maps", "v1/links", "v31/links", "notes"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    let buckets_pinned =
        |datapath: &Datapath| datapath.pins().maps().join(map_names::BUCKETS).exists();
    let datapath = Datapath::open(root).unwrap();
    assert!(!root.join("v1").exists());
    assert!(!root.join("v31").exists());
    assert!(root.join("notes").exists(), "not a layout: not mpath's");
    assert_eq!(datapath.pins().dir(), root.join(PIN_LAYOUT_VERSION));
    assert!(buckets_pinned(&datapath));
    drop(datapath);
    // A second start keeps the current layout's pins (and so the maps' contents).
    let datapath = Datapath::open(root).unwrap();
    assert!(buckets_pinned(&datapath));
    std::fs::remove_dir(root.join("notes")).unwrap();
}

/// An IPv4 route map's key.
fn key4(prefix: &str) -> Key<[u8; 4]> {
    let (addr, len) = prefix.split_once('/').unwrap();
    Key::new(
        len.parse().unwrap(),
        addr.parse::<Ipv4Addr>().unwrap().octets(),
    )
}

fn table(entries: &[(&str, Option<u32>)]) -> BTreeMap<IpCidr, Option<u32>> {
    entries
        .iter()
        .map(|(prefix, group)| (prefix.parse().unwrap(), *group))
        .collect()
}

/// The IPv4 route map pinned in `maps_dir`, through a descriptor of its own.
fn pinned_routes4(maps_dir: &Path) -> LpmTrie<MapData, [u8; 4], SourceRoute> {
    let data = MapData::from_pin(maps_dir.join(map_names::SOURCE_ROUTES4)).unwrap();
    LpmTrie::try_from(Map::from_map_data(data).unwrap()).unwrap()
}

/// Pins an IPv4 route map of `max_entries` in place of the datapath's, holding `entries`.
fn pin_routes4(maps_dir: &Path, max_entries: u32, entries: &[(&str, Option<u32>)]) {
    const BPF_F_NO_PREALLOC: u32 = 1;
    let path = maps_dir.join(map_names::SOURCE_ROUTES4);
    std::fs::remove_file(&path).unwrap();
    let mut trie =
        LpmTrie::<MapData, [u8; 4], SourceRoute>::create(max_entries, BPF_F_NO_PREALLOC).unwrap();
    for (prefix, group) in entries {
        trie.insert(&key4(prefix), SourceRoute::new(*group), 0)
            .unwrap();
    }
    trie.pin(&path).unwrap();
}

/// What the hook finds for `addr` in the IPv4 route map, by the kernel's longest match:
/// `None` where it leaves the source to the kernel, else the group (`Some(None)`: a throw).
fn lookup(trie: &LpmTrie<MapData, [u8; 4], SourceRoute>, addr: &str) -> Option<Option<u32>> {
    trie.get(&key4(&format!("{addr}/32")), 0)
        .ok()
        .map(|route| route.group())
}

#[test]
fn a_route_map_too_small_serves_the_most_specific_prefixes_and_makes_room_before_it_adds() {
    let pins = PinDir::new();
    let maps_dir = Datapath::open(pins.path()).unwrap().pins().maps();
    // A map of 8: the datapath's is far larger, and this one stands in for it reaching its
    // limit.
    pin_routes4(&maps_dir, 8, &[]);
    let mut maps = Maps::open_pinned(&maps_dir).unwrap();
    let trie = pinned_routes4(&maps_dir);
    let mut entries = vec![
        ("0.0.0.0/0", Some(0)),
        ("10.0.0.0/8", Some(1)),
        ("10.1.0.0/16", None),
        ("10.1.2.0/24", Some(0)),
        ("10.2.0.0/16", Some(0)),
        ("2001:db8::/32", Some(0)),
    ];
    let others: Vec<String> = (0..5).map(|i| format!("172.16.{i}.0/24")).collect();
    let fewer = table(&entries);
    entries.extend(others.iter().map(|p| (p.as_str(), Some(1))));

    // Ten IPv4 prefixes for a map of 8, of which one stays free: the seven most specific
    // are served, and the three holding one left out (10.2.0.0/16) are left out too.
    let [v6, v4] = maps.sources.write_routes(&table(&entries)).unwrap();
    assert_eq!((v6.wanted, v6.served), (1, 1));
    assert!(v6.error.is_none());
    assert_eq!(
        (v4.map, v4.limit, v4.wanted, v4.served),
        (map_names::SOURCE_ROUTES4, 8, 10, 7)
    );
    assert_eq!(
        v4.error.as_ref().and_then(|e| e.raw_os_error()),
        Some(libc::ENOSPC)
    );
    assert_eq!(lookup(&trie, "10.1.2.3"), Some(Some(0)));
    assert_eq!(lookup(&trie, "10.1.9.9"), Some(None));
    assert_eq!(lookup(&trie, "172.16.3.1"), Some(Some(1)));
    // Never the group of a route that does not serve the destination: the kernel's choice.
    for kernel_s in ["10.2.3.4", "10.9.9.9", "192.0.2.1"] {
        assert_eq!(lookup(&trie, kernel_s), None, "{kernel_s}");
    }

    // Five of those go: the map, full but for its free entry, takes the three prefixes it
    // lacked once the five stale ones are out.
    let [_, v4] = maps.sources.write_routes(&fewer).unwrap();
    assert_eq!((v4.wanted, v4.served), (5, 5));
    assert!(v4.error.is_none());
    assert_eq!(maps.sources.routes().unwrap(), fewer);
    assert_eq!(lookup(&trie, "10.2.3.4"), Some(Some(0)));
    assert_eq!(lookup(&trie, "192.0.2.1"), Some(Some(0)));

    // The kernel refuses entries that fit by the count (here something else took the free
    // entry and two more): the others are written all the same, and the prefixes holding a
    // refused one go, so that its destinations get no other route's source.
    let mut foreign = pinned_routes4(&maps_dir);
    for prefix in ["203.0.113.0/24", "203.0.113.64/26", "203.0.113.128/26"] {
        foreign
            .insert(&key4(prefix), SourceRoute::new(None), 0)
            .unwrap();
    }
    let more = [("10.1.2.128/25", Some(1)), ("10.3.0.0/16", Some(1))];
    let with_more: Vec<_> = entries[..6].iter().chain(&more).copied().collect();
    let [_, v4] = maps.sources.write_routes(&table(&with_more)).unwrap();
    assert_eq!((v4.wanted, v4.served), (7, 1));
    assert_eq!(
        v4.error.as_ref().and_then(|e| e.raw_os_error()),
        Some(libc::ENOSPC)
    );
    for kernel_s in [
        "10.1.2.200",
        "10.1.2.3",
        "10.3.0.1",
        "10.9.9.9",
        "192.0.2.1",
    ] {
        assert_eq!(lookup(&trie, kernel_s), None, "{kernel_s}");
    }
    assert_eq!(lookup(&trie, "10.2.3.4"), Some(Some(0)));

    // Room again: the next rewrite serves them all, nothing stuck.
    for prefix in ["203.0.113.0/24", "203.0.113.64/26", "203.0.113.128/26"] {
        foreign.remove(&key4(prefix)).unwrap();
    }
    let [_, v4] = maps.sources.write_routes(&table(&with_more)).unwrap();
    assert_eq!((v4.wanted, v4.served), (7, 7));
    assert!(v4.error.is_none());
    assert_eq!(maps.sources.routes().unwrap(), table(&with_more));
    assert_eq!(lookup(&trie, "10.1.2.200"), Some(Some(1)));
}

#[test]
fn a_route_map_is_patched_where_the_table_changed_and_rewritten_whole_when_full() {
    let pins = PinDir::new();
    let maps_dir = Datapath::open(pins.path()).unwrap().pins().maps();
    pin_routes4(&maps_dir, 8, &[]);
    let mut maps = Maps::open_pinned(&maps_dir).unwrap();
    let trie = pinned_routes4(&maps_dir);
    let first = [("0.0.0.0/0", Some(0)), ("10.0.0.0/8", None)];
    // Not written by this process yet: no patch, whatever it holds.
    let add = |prefix: &str, group| (prefix.parse::<IpCidr>().unwrap(), group);
    assert!(
        !maps
            .sources
            .patch_routes(&[add("10.1.0.0/16", Some(Some(1)))].into())
    );
    maps.sources.write_routes(&table(&first)).unwrap();

    // One destination added, one changed, one gone, of both families: only they change.
    let patch: BTreeMap<IpCidr, Option<Option<u32>>> = [
        add("10.1.0.0/16", Some(Some(1))),
        add("0.0.0.0/0", Some(Some(2))),
        add("10.0.0.0/8", None),
        add("2001:db8::/32", Some(Some(0))),
    ]
    .into();
    assert!(maps.sources.patch_routes(&patch));
    let now = [
        ("0.0.0.0/0", Some(2)),
        ("10.1.0.0/16", Some(1)),
        ("2001:db8::/32", Some(0)),
    ];
    assert_eq!(maps.sources.routes().unwrap(), table(&now));
    assert_eq!(lookup(&trie, "10.1.2.3"), Some(Some(1)));
    assert_eq!(lookup(&trie, "10.2.0.1"), Some(Some(2)));

    // More than the map holds: no patch, the whole table is for a rewrite to fit.
    let many: BTreeMap<IpCidr, Option<Option<u32>>> = (0..6)
        .map(|i| add(&format!("172.16.{i}.0/24"), Some(Some(1))))
        .collect();
    assert!(!maps.sources.patch_routes(&many));
    assert_eq!(maps.sources.routes().unwrap(), table(&now), "unchanged");
}

#[test]
fn a_start_replaces_an_earlier_release_s_small_route_map_and_clears_what_earlier_runs_left() {
    let pins = PinDir::new();
    let root = pins.path();
    let maps_dir = Datapath::open(root).unwrap().pins().maps();
    // As an earlier release left it: full (here of 8) of prefixes the table no longer has,
    // and so stuck.
    let stale: Vec<String> = (0..8).map(|i| format!("198.51.100.{}/29", i * 8)).collect();
    let stale: Vec<(&str, Option<u32>)> = stale.iter().map(|p| (p.as_str(), Some(2))).collect();
    pin_routes4(&maps_dir, 8, &stale);

    let mut datapath = Datapath::open(root).unwrap();
    let limit = |maps_dir: &Path| {
        MapInfo::from_pin(maps_dir.join(map_names::SOURCE_ROUTES4))
            .unwrap()
            .max_entries()
    };
    assert_eq!(limit(&maps_dir), MAX_SOURCE_ROUTES);
    // Its entries came along, for the hook to serve until mpathd writes its table.
    assert_eq!(datapath.maps.sources.routes().unwrap(), table(&stale));
    let wanted = table(&[
        ("0.0.0.0/0", Some(0)),
        ("192.0.2.0/24", Some(1)),
        ("198.51.100.0/29", Some(0)),
        ("2001:db8::/32", None),
    ]);
    for served in datapath.maps.sources.write_routes(&wanted).unwrap() {
        assert!(served.error.is_none(), "{served:?}");
    }
    assert_eq!(datapath.maps.sources.routes().unwrap(), wanted);
    drop(datapath);

    // What an earlier run of this release left that the table no longer has goes at the
    // first write of the next.
    let mut left = pinned_routes4(&maps_dir);
    left.insert(&key4("203.0.113.0/24"), SourceRoute::new(Some(3)), 0)
        .unwrap();
    left.insert(&key4("0.0.0.0/0"), SourceRoute::new(Some(3)), 0)
        .unwrap();
    let mut datapath = Datapath::open(root).unwrap();
    assert_eq!(limit(&maps_dir), MAX_SOURCE_ROUTES);
    datapath.maps.sources.write_routes(&wanted).unwrap();
    assert_eq!(datapath.maps.sources.routes().unwrap(), wanted);
}
