//! What a configuration finds on the host it is to run on: checked by `mpathd --check`, at
//! start and at reload, before anything is changed. The file alone cannot tell that a data
//! address already lives on a management NIC, nor that a NIC name is a typo.
//!
//! Pure: the daemon reads the links and addresses (`daemon::check_against_host`) and asks.

use std::fmt;

use crate::{config::Config, net::address::IpCidr};

/// A link of the host, as far as the check is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLink {
    pub ifindex: u32,
    pub name: String,
}

/// What the host shows that the configuration cannot run with: the file is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressOutside {
    /// `"data"` or `"test"`.
    pub kind: &'static str,
    /// As configured.
    pub addr: IpCidr,
    pub interface: String,
    pub group: String,
    /// The NIC outside the groups that holds it, and with which prefix length.
    pub nic: String,
    pub found: IpCidr,
}

impl fmt::Display for AddressOutside {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            kind,
            addr,
            interface,
            group,
            nic,
            found,
        } = self;
        write!(
            f,
            "{kind} address {addr} of interface {interface} (group {group}) is already on \
             {nic} as {found}, and {nic} is in no group: mpathd never takes an address off a \
             NIC outside its groups (the kernel may take that NIC's other addresses of the \
             subnet along), and two NICs answering for one address confuse its peers; take it \
             off {nic} or out of the file"
        )
    }
}

/// The verdict: refusals (the file is not run) and warnings (it runs, and the log says).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostCheck {
    pub refusals: Vec<AddressOutside>,
    pub warnings: Vec<String>,
}

/// Checks `config` against the host's `links` and `addresses` (every address but those mpathd
/// marked as its own). `group_nics` names NICs to count as the groups' beside the
/// configuration's (at reload, the running groups' NICs, whose addresses mpathd takes off
/// itself).
pub fn check(
    config: &Config,
    links: &[HostLink],
    addresses: &[(u32, IpCidr)],
    group_nics: &[String],
) -> HostCheck {
    let configured = |name: &str| {
        config.groups.iter().any(|g| g.interface(name).is_some())
            || group_nics.iter().any(|n| n == name)
    };
    let mut result = HostCheck::default();
    for group in &config.groups {
        for interface in &group.interfaces {
            let tested = interface.test_address.map(|t| ("test", IpCidr::from(t)));
            let data = interface.data_addresses.iter().map(|a| ("data", *a));
            for (kind, addr) in tested.into_iter().chain(data) {
                for (ifindex, found) in addresses.iter().filter(|(_, c)| c.addr() == addr.addr()) {
                    let Some(link) = links.iter().find(|l| l.ifindex == *ifindex) else {
                        continue;
                    };
                    if configured(&link.name) {
                        continue;
                    }
                    result.refusals.push(AddressOutside {
                        kind,
                        addr,
                        interface: interface.name.clone(),
                        group: group.name.clone(),
                        nic: link.name.clone(),
                        found: *found,
                    });
                }
            }
            if links.iter().all(|l| l.name != interface.name) {
                result
                    .warnings
                    .push(missing(&interface.name, &group.name, links, &configured));
            }
        }
    }
    result
}

/// The warning for a configured NIC the host does not have, naming the host's NICs outside
/// the configuration whose names are close (one edit in four characters, at least one):
/// most such names are typos.
fn missing(
    name: &str,
    group: &str,
    links: &[HostLink],
    configured: &dyn Fn(&str) -> bool,
) -> String {
    let most = (name.chars().count() / 4).max(1);
    let mut close: Vec<(usize, &str)> = links
        .iter()
        .filter(|l| !configured(&l.name))
        .map(|l| (edit_distance(name, &l.name), l.name.as_str()))
        .filter(|(distance, _)| *distance <= most)
        .collect();
    close.sort();
    let hint = match close.as_slice() {
        [] => String::new(),
        close => format!(
            " (did you mean {}?)",
            close
                .iter()
                .take(3)
                .map(|(_, n)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    format!(
        "interface {name} of group {group} does not exist on this host{hint}: it stays missing \
         until a NIC of that name appears"
    )
}

/// Levenshtein distance over characters, counting a swap of two neighbours as one edit
/// (`eht0` for `eth0`).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    // rows[i][j]: the distance between a[..i] and b[..j].
    let mut rows = vec![vec![0; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let substitution = rows[i - 1][j - 1] + usize::from(a[i - 1] != b[j - 1]);
            let mut best = substitution.min(rows[i - 1][j] + 1).min(rows[i][j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = best;
        }
    }
    rows[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::error::ConfigError;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "mpathd.toml", None)
    }

    fn cidr(text: &str) -> IpCidr {
        text.parse().unwrap()
    }

    const CONFIG: &str = "[[group]]\nname = \"g0\"\n\
        [[group.interface]]\nname = \"eth0\"\ntest_address = \"192.0.2.21/24\"\n\
        data_addresses = [\"192.0.2.19/24\"]\n\
        [[group.interface]]\nname = \"eth1\"\ndata_addresses = [\"2001:db8::20/64\"]\n";

    fn links(names: &[&str]) -> Vec<HostLink> {
        names
            .iter()
            .zip(1..)
            .map(|(name, ifindex)| HostLink {
                ifindex,
                name: name.to_string(),
            })
            .collect()
    }

    /// Issue 24, item 1: a data address on the management NIC was taken off it at start.
    #[test]
    fn a_configured_address_on_a_nic_outside_the_groups_is_refused_by_name() {
        let config = parse(CONFIG).unwrap();
        let host = links(&["lo", "eth0", "eth1", "mgmt0"]);
        let addresses = [
            (2, cidr("192.0.2.19/24")),
            (4, cidr("192.0.2.19/26")),
            (4, cidr("192.0.2.21/32")),
            (4, cidr("2001:db8::20/64")),
            (4, cidr("198.51.100.7/24")),
        ];
        let check = check(&config, &host, &addresses, &[]);
        let refused: Vec<_> = check
            .refusals
            .iter()
            .map(|r| {
                (
                    r.kind,
                    r.addr.to_string(),
                    r.nic.as_str(),
                    r.found.to_string(),
                )
            })
            .collect();
        assert_eq!(
            refused,
            [
                (
                    "test",
                    "192.0.2.21/24".into(),
                    "mgmt0",
                    "192.0.2.21/32".into()
                ),
                (
                    "data",
                    "192.0.2.19/24".into(),
                    "mgmt0",
                    "192.0.2.19/26".into()
                ),
                (
                    "data",
                    "2001:db8::20/64".into(),
                    "mgmt0",
                    "2001:db8::20/64".into()
                ),
            ]
        );
        let message = check.refusals[1].to_string();
        assert!(
            message.starts_with(
                "data address 192.0.2.19/24 of interface eth0 (group g0) is already on mgmt0 \
                 as 192.0.2.19/26, and mgmt0 is in no group"
            ),
            "{message}"
        );
        assert!(message.ends_with("take it off mgmt0 or out of the file"));
        assert!(check.warnings.is_empty(), "{:?}", check.warnings);
        // A NIC leaving the groups at a reload takes its addresses off itself.
        let reload = super::check(&config, &host, &addresses, &["mgmt0".into()]);
        assert!(reload.refusals.is_empty(), "{:?}", reload.refusals);
    }

    /// Issue 24, item 3: a NIC name with a typo passed `--check` and was never logged.
    #[test]
    fn a_missing_nic_is_a_warning_naming_close_names_outside_the_configuration() {
        let config = parse(CONFIG).unwrap();
        let check = check(
            &config,
            &links(&["lo", "eth0", "eht1", "eth10", "ens1", "eth2"]),
            &[],
            &[],
        );
        assert!(check.refusals.is_empty());
        assert_eq!(
            check.warnings,
            [
                "interface eth1 of group g0 does not exist on this host (did you mean eht1, eth10, \
                 eth2?): it stays missing until a NIC of that name appears"
            ]
        );
        let check = super::check(&config, &links(&["eth0", "wlan7"]), &[], &[]);
        assert!(
            check.warnings[0]
                .starts_with("interface eth1 of group g0 does not exist on this host:"),
            "{:?}",
            check.warnings
        );
    }

    #[test]
    fn edit_distances() {
        for (a, b, distance) in [
            ("eth0", "eth0", 0),
            ("eth0", "eht0", 1),
            ("eth1", "eth10", 1),
            ("eth1", "ens1", 2),
            ("enp3s0", "enp4s0", 1),
            ("h0", "mgmt0", 4),
            ("", "ab", 2),
        ] {
            assert_eq!(edit_distance(a, b), distance, "{a} {b}");
            assert_eq!(edit_distance(b, a), distance, "{b} {a}");
        }
    }
}
