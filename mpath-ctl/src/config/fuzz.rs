//! Hostile input: mutated and random files must be refused with a location, never panic,
//! and whatever is accepted must hold the guarantees the daemon relies on.

use std::net::IpAddr;
use std::time::Duration;

use super::Config;
use super::error::{ConfigError, Problem};
use super::testing::*;
use super::validate::{group_name_problem, interface_name_problem};

/// xorshift64*: a fixed seed makes every failure reproducible.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// Bytes that steer mutations toward TOML structure and the validator's edge cases.
const INTERESTING: &[&[u8]] = &[
    b"\"",
    b"'",
    b"[",
    b"]",
    b"[[",
    b"]]",
    b"=",
    b"\n",
    b"#",
    b",",
    b".",
    b"/",
    b":",
    b"{",
    b"}",
    b"\\",
    b"\\u0000",
    b"0",
    b"9",
    b"-",
    b"99",
    b"255",
    b"/33",
    b"/129",
    b"::",
    b"fe80::1",
    b"true",
    b"false",
    b"1e9",
    b"\"\"\"",
    b"\xc3\xa9",
    b"\xff",
    b"\r\n",
    b" ",
    b"\t",
    b"standby = true\n",
    b"[[group]]\nname = \"g0\"\n",
    b"[[group.interface]]\n",
    b"name = \"h0\"\n",
    b"[[group.route]]\n",
    b"to = \"default\"\n",
    b"via = \"192.0.2.1\"\n",
    b"metric = 5\n",
    b"spread = \"datapath\"\n",
    b"/24",
    b"253",
    b"32766",
    b"-9223372036854775808",
    b"9223372036854775807",
];

fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut bytes = input.to_vec();
    for _ in 0..=rng.below(3) {
        let at = rng.below(bytes.len() + 1);
        match rng.below(7) {
            0 if !bytes.is_empty() => {
                let at = at.min(bytes.len() - 1);
                bytes[at] = rng.next_u64() as u8;
            }
            1 => bytes.insert(at, rng.next_u64() as u8),
            2 => {
                let end = (at + rng.below(16)).min(bytes.len());
                bytes.drain(at..end);
            }
            3 => {
                let token = INTERESTING[rng.below(INTERESTING.len())];
                bytes.splice(at..at, token.iter().copied());
            }
            4 => {
                // Duplicate a slice elsewhere: repeats keys, tables and addresses.
                let start = rng.below(bytes.len());
                let end = (start + rng.below(64)).min(bytes.len());
                let chunk = bytes[start..end].to_vec();
                bytes.splice(at..at, chunk);
            }
            5 => bytes.truncate(at),
            _ => {
                let digit = b'0' + rng.below(10) as u8;
                if let Some(b) = bytes.iter_mut().skip(at).find(|b| b.is_ascii_digit()) {
                    *b = digit;
                }
            }
        }
    }
    bytes
}

/// Checks the guarantees a successful parse gives the daemon.
fn assert_invariants(text: &str, config: &Config) {
    assert!(
        config.daemon.failure_detection_time >= Duration::from_millis(100),
        "{text}"
    );
    assert!(
        ![0, 253, 254, 255].contains(&config.daemon.route_table),
        "{text}"
    );
    assert!(
        (1..=32765).contains(&config.daemon.route_rule_priority),
        "{text}"
    );
    let mut groups = Vec::new();
    let mut interfaces = Vec::new();
    let mut addresses = Vec::new();
    let mut routes = Vec::new();
    let mut vias = Vec::new();
    for group in &config.groups {
        assert!(group_name_problem(&group.name).is_none(), "{text}");
        assert!(!groups.contains(&&group.name), "{text}");
        groups.push(&group.name);
        assert!(group.interfaces.iter().any(|i| !i.standby), "{text}");
        for interface in &group.interfaces {
            assert!(interface_name_problem(&interface.name).is_none(), "{text}");
            assert!(!interfaces.contains(&&interface.name), "{text}");
            interfaces.push(&interface.name);
            assert!(
                !interface.standby || interface.data_addresses.is_empty(),
                "{text}"
            );
            let test = interface.test_address.map(|t| IpAddr::V4(t.addr()));
            for addr in interface
                .data_addresses
                .iter()
                .map(|a| a.addr())
                .chain(test)
            {
                assert!(!addresses.contains(&addr), "{text}");
                addresses.push(addr);
            }
        }
        for route in &group.routes {
            assert_eq!(route.to, route.to.network(), "{text}");
            assert!(!route.is_default() || route.via.is_some(), "{text}");
            assert!(!routes.contains(&(route.to, route.metric)), "{text}");
            routes.push((route.to, route.metric));
            if let Some(via) = route.via {
                assert_eq!(via.is_ipv4(), route.to.addr().is_ipv4(), "{text}");
                vias.push(via);
            }
        }
    }
    assert!(vias.iter().all(|via| !addresses.contains(via)), "{text}");
}

/// An error from `parse` points inside the file it names.
fn assert_error_is_located(toml_text: &str, defaults_text: Option<&str>, error: &ConfigError) {
    let location = error.location().expect("parse never reads files");
    let text = if location.file == NAME {
        toml_text
    } else {
        assert_eq!(location.file, DEFAULTS_NAME);
        defaults_text.expect("no defaults file was given")
    };
    if let Some(position) = location.position {
        let lines = text.split('\n').count();
        assert!(
            (1..=lines).contains(&position.line) && position.column >= 1,
            "{position:?} outside {text:?}"
        );
    }
}

#[test]
fn mutated_inputs_never_panic() {
    let seeds = [
        ISSUE_EXAMPLE.to_string(),
        with_group(
            "[[group.interface]]\nname = \"h1\"\nstandby = true\ntest_address = \"192.0.2.22/24\"\n",
        ),
        "[daemon]\nfailure_detection_time_ms = 100\nmetrics_listen = \"[::1]:9798\"\n\
         bpf_pin_dir = \"/sys/fs/bpf/t\"\n[[group]]\nname = \"g.1-x\"\n\
         targets = [\"fe80::1\", \"192.0.2.1\"]\ngroup.interface = [{ name = \"h0\", \
         data_addresses = [\"2001:db8::5/64\"] }]\n"
            .to_string(),
        "[daemon]\nroute_table = 100\nroute_rule_priority = 1000\n[[group]]\nname = \"g0\"\n\
         spread = \"datapath\"\n[[group.interface]]\nname = \"h0\"\n\
         data_addresses = [\"192.0.2.19/24\", \"2001:db8::19/64\"]\n[[group.route]]\n\
         to = \"default\"\nvia = \"192.0.2.1\"\n[[group.route]]\nto = \"198.51.100.0/24\"\n\
         metric = 10\n[[group.route]]\nto = \"default\"\nvia = \"fe80::1\"\n[[group]]\n\
         name = \"g1\"\n[[group.interface]]\nname = \"h1\"\n[[group.route]]\n\
         to = \"2001:db8:1::/48\"\nvia = \"2001:db8::1\"\n"
            .to_string(),
    ];
    let defaults_seeds = [
        SOLARIS_DEFAULTS,
        "FAILBACK=no\nFAILURE_DETECTION_TIME=100\n",
    ];
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    let (mut accepted, mut refused, mut routed) = (0, 0, 0);
    for case in 0..20_000 {
        let seed = &seeds[case % seeds.len()];
        let mutated = mutate(&mut rng, seed.as_bytes());
        let text = String::from_utf8_lossy(&mutated);
        let defaults = (case % 5 == 0).then(|| {
            let seed = defaults_seeds[rng.below(defaults_seeds.len())];
            String::from_utf8_lossy(&mutate(&mut rng, seed.as_bytes())).into_owned()
        });
        let result = std::panic::catch_unwind(|| {
            Config::parse(&text, NAME, defaults.as_deref().map(|d| (d, DEFAULTS_NAME)))
        });
        match result {
            Ok(Ok(config)) => {
                accepted += 1;
                if config.groups.iter().any(|g| !g.routes.is_empty()) {
                    routed += 1;
                }
                assert_invariants(&text, &config);
            }
            Ok(Err(error)) => {
                refused += 1;
                assert_error_is_located(&text, defaults.as_deref(), &error);
            }
            Err(_) => panic!("case {case}: parse panicked on {text:?} / {defaults:?}"),
        }
    }
    // Both outcomes must be exercised, or the mutations are too weak or too strong.
    assert!(
        accepted > 1_000 && refused > 10_000,
        "{accepted} accepted, {refused} refused"
    );
    // The route tables must survive often enough for their invariants to be checked.
    assert!(routed > 100, "{routed} accepted with routes");
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0xDEAD_BEEF_0BAD_F00D);
    for _ in 0..5_000 {
        let len = rng.below(200);
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                let token = INTERESTING[rng.below(INTERESTING.len())];
                if rng.below(2) == 0 {
                    token[0]
                } else {
                    rng.next_u64() as u8
                }
            })
            .collect();
        let text = String::from_utf8_lossy(&bytes);
        if let Err(error) = Config::parse(&text, NAME, Some((&text, DEFAULTS_NAME))) {
            assert_error_is_located(&text, Some(&text), &error);
        }
    }
}

#[test]
fn deep_nesting_is_refused_without_overflowing_the_stack() {
    for opener in ["[", "{b="] {
        let text = format!("a = {}", opener.repeat(100_000));
        let (line, _, problem, _) = refusal(&text);
        assert_eq!(line, 1);
        assert!(matches!(problem, Problem::Toml(_)), "{problem:?}");
    }
}
