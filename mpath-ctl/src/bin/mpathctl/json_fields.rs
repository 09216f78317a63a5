//! mpathctl(1)'s JSON OUTPUT section (json.roff) held to the views `--json` prints: each view
//! is serialised with every field filled, and its field names (nested ones as
//! `health[].address`) must be the ones the section describes under that view, no more, no
//! fewer; the fields with a fixed set of values must name them all.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use mpath_common::RejectReason;
use mpath_ctl::{
    api::views::{
        AddressRow, GroupRow, InterfaceRow, MembershipRow, ProbeRow, Status, TargetHealth,
        TargetRow,
    },
    core::{
        failover::AddressState,
        state::{
            GroupState, InterfaceFlag, InterfaceStatus, LinkState, ProbeStatus, UnusableReason,
        },
        target::{TargetMode, TargetSource, TargetState},
    },
};
use serde_json::Value;

use super::{LastReply, MAN_EXTRA, MapsDump, NicDump, SourceDump};

/// Objects whose keys are data (reasons, group ids, prefixes), not field names.
const KEYED_BY_DATA: &[&str] = &["rejected", "buckets", "source_routes"];

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn names(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| s.to_string()).collect()
}

/// A status with one row of each view, every optional field present.
fn status() -> Status {
    Status {
        groups: vec![GroupRow {
            group: "g0".into(),
            state: GroupState::Degraded,
            fdt_ms: 10_000,
            active: names(&["h0"]),
            inactive: names(&["h2"]),
            unusable: names(&["h1"]),
            held_routes: names(&["default via 192.0.2.1"]),
        }],
        interfaces: vec![InterfaceRow {
            interface: "h1".into(),
            group: "g0".into(),
            active: false,
            flags: vec![InterfaceFlag::Failed],
            link: LinkState::Up,
            probe: ProbeStatus::Failed,
            probe_ipv4: Some(ProbeStatus::Failed),
            probe_ipv6: Some(ProbeStatus::Ok),
            state: InterfaceStatus::Failed,
            unusable: Some(UnusableReason::ProbesLost),
            datapath_error: Some("attaching: Operation not supported".into()),
        }],
        addresses: vec![AddressRow {
            address: "192.0.2.20/24".into(),
            state: AddressState::Up,
            group: "g0".into(),
            inbound: Some("h0".into()),
            outbound: names(&["h0", "h2"]),
        }],
        targets: vec![TargetRow {
            interface: "h0".into(),
            mode: TargetMode::Routes,
            test_address: Some(ip("192.0.2.21")),
            targets: vec![ip("192.0.2.1")],
            health: vec![TargetHealth {
                address: ip("192.0.2.1"),
                source: TargetSource::Router,
                state: TargetState::Active,
                rtt_avg_us: Some(300),
                rtt_dev_us: Some(50),
                rtt_bound_us: Some(5_000),
                sent: 10,
                answered: 9,
                lost: 1,
            }],
            unknown_replies: 0,
        }],
        memberships: vec![MembershipRow {
            address: ip("239.1.2.3"),
            group: "g0".into(),
            from: "h1".into(),
            on: "h0".into(),
        }],
    }
}

fn probe() -> ProbeRow {
    ProbeRow {
        time_unix_ms: 1_700_000_000_000,
        interface: "h0".into(),
        seq: 7,
        target: ip("192.0.2.1"),
        net_rtt_us: Some(250),
        rtt_us: Some(400),
        rtt_avg_us: Some(300),
        rtt_dev_us: Some(50),
    }
}

fn maps() -> MapsDump {
    MapsDump {
        nics: vec![NicDump {
            ifindex: 2,
            name: "h0".into(),
            group: 0,
            slot: 0,
            routed: true,
            carrier_lost: false,
            test_v4: Some("192.0.2.21".parse().unwrap()),
            test_v6: Some("fe80::1".parse().unwrap()),
            tx_packets: 1,
            tx_bytes: 100,
            redirected_packets: 0,
            rx_packets: 1,
            probe_replies: 1,
            probe_replies_lost: 0,
            probe_checksum_failed: 0,
            link_probes_answered: 0,
            replies_over_budget: 0,
            rejected: RejectReason::ALL.iter().map(|r| (r.label(), 0)).collect(),
            last_reply: Some(LastReply {
                seq: 7,
                target: Some(ip("192.0.2.1")),
                responder: Some("h1".into()),
                received_ns: 1,
            }),
        }],
        buckets: BTreeMap::from([(0, BTreeMap::from([("h0".to_string(), 256)]))]),
        sources: vec![SourceDump {
            group: 0,
            ipv4: vec![ip("192.0.2.19")],
            global: vec![ip("2001:db8::19")],
            unique_local: vec![ip("fd00::19")],
            chosen: 1,
            bind_failed: 0,
        }],
        source_routes: BTreeMap::from([("0.0.0.0/0".to_string(), Some(0))]),
    }
}

/// The field names of `value`, nested ones under `prefix` (`health[].address`).
fn fields(value: &Value, prefix: &str, found: &mut BTreeSet<String>) {
    match value {
        Value::Object(object) => {
            for (key, inner) in object {
                let path = match prefix {
                    "" => key.clone(),
                    _ => format!("{prefix}.{key}"),
                };
                if !KEYED_BY_DATA.contains(&key.as_str()) {
                    fields(inner, &path, found);
                }
                found.insert(path);
            }
        }
        Value::Array(items) => {
            for item in items {
                fields(item, &format!("{prefix}[]"), found);
            }
        }
        _ => {}
    }
}

/// Each view's fields as `--json` prints them: the rows' of a view printed as an array.
fn printed() -> BTreeMap<&'static str, BTreeSet<String>> {
    let status = status();
    let views: [(&str, Value, bool); 7] = [
        (
            "groups",
            serde_json::to_value(&status.groups).unwrap(),
            true,
        ),
        (
            "interfaces",
            serde_json::to_value(&status.interfaces).unwrap(),
            true,
        ),
        (
            "addresses",
            serde_json::to_value(&status.addresses).unwrap(),
            true,
        ),
        (
            "targets",
            serde_json::to_value(&status.targets).unwrap(),
            true,
        ),
        (
            "memberships",
            serde_json::to_value(&status.memberships).unwrap(),
            true,
        ),
        ("probes", serde_json::to_value(probe()).unwrap(), false),
        ("maps", serde_json::to_value(maps()).unwrap(), false),
    ];
    views
        .into_iter()
        .map(|(view, value, rows)| {
            let mut found = BTreeSet::new();
            match (rows, &value) {
                (true, Value::Array(rows)) => {
                    assert!(!rows.is_empty(), "{view}: no row");
                    rows.iter().for_each(|row| fields(row, "", &mut found));
                }
                _ => fields(&value, "", &mut found),
            }
            (view, found)
        })
        .collect()
}

/// The JSON OUTPUT section: for each view (`.SS "groups"`), each field (`.TP` then
/// `.B name`) with its description.
fn documented() -> BTreeMap<String, BTreeMap<String, String>> {
    let section = MAN_EXTRA
        .split(".SH JSON OUTPUT\n")
        .nth(1)
        .expect("a JSON OUTPUT section")
        .split("\n.SH ")
        .next()
        .unwrap();
    let mut views: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let (mut view, mut field) = (None::<String>, None::<String>);
    for line in section.lines() {
        if let Some(name) = line.strip_prefix(".SS ") {
            view = Some(name.trim_matches('"').to_string());
            field = None;
        } else if line == ".TP" {
            field = None;
        } else if let (Some(v), None, Some(name)) = (&view, &field, line.strip_prefix(".B ")) {
            views
                .entry(v.clone())
                .or_default()
                .insert(name.to_string(), String::new());
            field = Some(name.to_string());
        } else if let (Some(v), Some(f)) = (&view, &field) {
            let text = views.get_mut(v).unwrap().get_mut(f).unwrap();
            text.push_str(line);
            text.push('\n');
        }
    }
    views
}

#[test]
fn the_manual_describes_every_field_of_every_json_view_and_no_other() {
    let printed = printed();
    let documented = documented();
    assert_eq!(
        documented.keys().map(String::as_str).collect::<Vec<_>>(),
        printed.keys().copied().collect::<Vec<_>>(),
        "the views"
    );
    for (view, fields) in &printed {
        let described: BTreeSet<String> = documented[*view].keys().cloned().collect();
        let missing: Vec<&String> = fields.difference(&described).collect();
        let stale: Vec<&String> = described.difference(fields).collect();
        assert!(
            missing.is_empty() && stale.is_empty(),
            "{view}: printed but not described {missing:?}, described but not printed {stale:?}"
        );
    }
}

#[test]
fn the_manual_names_every_value_of_the_fields_that_have_a_fixed_set() {
    let strings = |values: &[&'static str]| values.to_vec();
    let sets: Vec<(&str, &str, Vec<&str>)> = vec![
        (
            "groups",
            "state",
            GroupState::ALL.iter().map(|v| v.as_str()).collect(),
        ),
        (
            "interfaces",
            "flags",
            InterfaceFlag::ALL.iter().map(|v| v.as_str()).collect(),
        ),
        (
            "interfaces",
            "link",
            LinkState::ALL.iter().map(|v| v.as_str()).collect(),
        ),
        (
            "interfaces",
            "probe",
            ProbeStatus::ALL.iter().map(|v| v.as_str()).collect(),
        ),
        (
            "interfaces",
            "probe_ipv4",
            ProbeStatus::ALL.iter().map(|v| v.as_str()).collect(),
        ),
        (
            "interfaces",
            "probe_ipv6",
            ProbeStatus::ALL.iter().map(|v| v.as_str()).collect(),
        ),
        (
            "interfaces",
            "state",
            InterfaceStatus::ALL.iter().map(|v| v.as_str()).collect(),
        ),
        (
            "interfaces",
            "unusable",
            UnusableReason::ALL.iter().map(|v| v.as_str()).collect(),
        ),
        (
            "addresses",
            "state",
            AddressState::ALL.iter().map(|v| v.as_str()).collect(),
        ),
        (
            "targets",
            "mode",
            TargetMode::ALL.iter().map(|v| v.as_str()).collect(),
        ),
        (
            "targets",
            "health[].source",
            TargetSource::ALL.iter().map(|v| v.as_str()).collect(),
        ),
        (
            "targets",
            "health[].state",
            TargetState::ALL.iter().map(|v| v.as_str()).collect(),
        ),
        (
            "maps",
            "nics[].rejected",
            strings(&RejectReason::ALL.map(|r| r.label())),
        ),
    ];
    let documented = documented();
    for (view, field, values) in sets {
        let text = &documented[view][field];
        for value in values {
            assert!(
                text.contains(&format!("\\fB{value}\\fR")),
                "{view} {field}: {value} not named in\n{text}"
            );
        }
    }
}
