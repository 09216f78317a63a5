//! Multicast memberships: reading every NIC's from `/proc/net/igmp` and `/proc/net/igmp6`,
//! and joining or leaving groups on a NIC with sockets of mpathd's own.
//!
//! A join with a NIC's ifindex (IP_ADD_MEMBERSHIP with `ip_mreqn`, IPV6_ADD_MEMBERSHIP) makes
//! the kernel a member there: it sends the IGMP/MLD reports the switch needs and delivers the
//! group's datagrams arriving there to any socket bound to their port. The sockets are never
//! bound, so they receive nothing themselves; closing them (mpathd stopping) leaves every
//! group.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::{Domain, InterfaceIndexOrAddress, Socket, Type};
use thiserror::Error;

/// Where the kernel lists IPv4 memberships per device.
pub(crate) const PROC_IGMP: &str = "/proc/net/igmp";
/// Where the kernel lists IPv6 memberships per device.
pub(crate) const PROC_IGMP6: &str = "/proc/net/igmp6";

/// The groups joined on each ifindex and how many joins each has.
pub(crate) type ByIfindex = BTreeMap<u32, BTreeMap<IpAddr, u32>>;

#[derive(Debug, Error)]
pub(crate) enum MulticastError {
    #[error("reading {path}: {source}")]
    Read {
        path: &'static str,
        source: io::Error,
    },
    #[error("{path} line {line}: {reason}: {text:?}")]
    Parse {
        path: &'static str,
        line: usize,
        reason: &'static str,
        text: String,
    },
    #[error("joining {group} on ifindex {ifindex}: {source}")]
    Join {
        group: IpAddr,
        ifindex: u32,
        source: io::Error,
    },
    #[error("leaving {group} on ifindex {ifindex}: {source}")]
    Leave {
        group: IpAddr,
        ifindex: u32,
        source: io::Error,
    },
    #[error("{group} is not a multicast group")]
    NotMulticast { group: IpAddr },
}

/// Every membership of this network namespace, IPv4 and IPv6.
pub(crate) fn memberships() -> Result<ByIfindex, MulticastError> {
    let read = |path: &'static str| {
        std::fs::read_to_string(path).map_err(|source| MulticastError::Read { path, source })
    };
    let mut all = parse_igmp(&read(PROC_IGMP)?)?;
    for (ifindex, groups) in parse_igmp6(&read(PROC_IGMP6)?)? {
        all.entry(ifindex).or_default().extend(groups);
    }
    Ok(all)
}

/// `/proc/net/igmp`: a line per device (`Idx Device : Count Querier`), then a line per group
/// (`Group Users Timer Reporter`) with the group as the hex of its 32 bits in host order.
fn parse_igmp(text: &str) -> Result<ByIfindex, MulticastError> {
    let bad = |line: usize, reason, text: &str| MulticastError::Parse {
        path: PROC_IGMP,
        line: line + 1,
        reason,
        text: text.to_string(),
    };
    let mut all = ByIfindex::new();
    let mut device = None;
    for (n, line) in text.lines().enumerate().skip(1) {
        let words: Vec<&str> = line.split_whitespace().collect();
        if !line.starts_with(char::is_whitespace) {
            let ifindex = words
                .first()
                .and_then(|w| w.parse::<u32>().ok())
                .ok_or_else(|| bad(n, "no device index", line))?;
            device = Some(ifindex);
            all.entry(ifindex).or_default();
            continue;
        }
        let ifindex = device.ok_or_else(|| bad(n, "a group before any device", line))?;
        let (Some(group), Some(users)) = (words.first(), words.get(1)) else {
            return Err(bad(n, "no group and user count", line));
        };
        let group = u32::from_str_radix(group, 16).map_err(|_| bad(n, "bad group", line))?;
        let users = users.parse().map_err(|_| bad(n, "bad user count", line))?;
        let group = IpAddr::V4(Ipv4Addr::from(group.to_ne_bytes()));
        all.entry(ifindex).or_default().insert(group, users);
    }
    Ok(all)
}

/// `/proc/net/igmp6`: a line per membership, `Idx Device Group Users Flags Timer`, the group
/// as 32 hex digits in network order.
fn parse_igmp6(text: &str) -> Result<ByIfindex, MulticastError> {
    let mut all = ByIfindex::new();
    for (n, line) in text.lines().enumerate() {
        let bad = |reason| MulticastError::Parse {
            path: PROC_IGMP6,
            line: n + 1,
            reason,
            text: line.to_string(),
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        let [ifindex, _, group, users, ..] = words[..] else {
            return Err(bad("fewer than 4 fields"));
        };
        let ifindex = ifindex.parse().map_err(|_| bad("bad device index"))?;
        let group = u128::from_str_radix(group, 16)
            .ok()
            .filter(|_| group.len() == 32)
            .ok_or_else(|| bad("bad group"))?;
        let users = users.parse().map_err(|_| bad("bad user count"))?;
        all.entry(ifindex)
            .or_default()
            .insert(IpAddr::V6(Ipv6Addr::from(group)), users);
    }
    Ok(all)
}

/// mpathd's own memberships, held by sockets of its own. The kernel limits how many groups
/// one IPv4 socket may join (`net.ipv4.igmp_max_memberships`, 20 by default): a full socket
/// makes way for another.
#[derive(Default)]
pub(crate) struct Joins {
    sockets: Vec<Socket>,
    /// Which socket holds each membership.
    held: BTreeMap<(u32, IpAddr), usize>,
}

impl Joins {
    /// Joins `group` on `ifindex`; joining one held already does nothing.
    pub(crate) fn join(&mut self, ifindex: u32, group: IpAddr) -> Result<(), MulticastError> {
        if !group.is_multicast() {
            return Err(MulticastError::NotMulticast { group });
        }
        if self.held.contains_key(&(ifindex, group)) {
            return Ok(());
        }
        let error = |source| MulticastError::Join {
            group,
            ifindex,
            source,
        };
        let domain = Domain::for_address(SocketAddr::new(group, 0));
        for (index, socket) in self.sockets.iter().enumerate() {
            if socket.domain().ok() != Some(domain) {
                continue;
            }
            match membership(socket, ifindex, group, true) {
                Ok(()) => {
                    self.held.insert((ifindex, group), index);
                    return Ok(());
                }
                // This socket is full: try the next, or a new one.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOBUFS | libc::ENOMEM)) => {}
                Err(e) => return Err(error(e)),
            }
        }
        let socket = Socket::new(domain, Type::DGRAM, None).map_err(error)?;
        membership(&socket, ifindex, group, true).map_err(error)?;
        self.sockets.push(socket);
        self.held.insert((ifindex, group), self.sockets.len() - 1);
        Ok(())
    }

    /// Leaves `group` on `ifindex`. Gone already with its NIC is fine.
    pub(crate) fn leave(&mut self, ifindex: u32, group: IpAddr) -> Result<(), MulticastError> {
        let Some(index) = self.held.remove(&(ifindex, group)) else {
            return Ok(());
        };
        match membership(&self.sockets[index], ifindex, group, false) {
            Ok(()) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENODEV | libc::EADDRNOTAVAIL)) => {
                Ok(())
            }
            Err(source) => Err(MulticastError::Leave {
                group,
                ifindex,
                source,
            }),
        }
    }
}

/// Joins (`add`) or leaves `group` on `ifindex` through `socket`.
fn membership(socket: &Socket, ifindex: u32, group: IpAddr, add: bool) -> io::Result<()> {
    match (group, add) {
        (IpAddr::V4(g), true) => {
            socket.join_multicast_v4_n(&g, &InterfaceIndexOrAddress::Index(ifindex))
        }
        (IpAddr::V4(g), false) => {
            socket.leave_multicast_v4_n(&g, &InterfaceIndexOrAddress::Index(ifindex))
        }
        (IpAddr::V6(g), true) => socket.join_multicast_v6(&g, ifindex),
        (IpAddr::V6(g), false) => socket.leave_multicast_v6(&g, ifindex),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IGMP: &str = "Idx\tDevice    : Count Querier\tGroup    Users Timer\tReporter
1\tlo        :     1      V3
\t\t\t\t010000E0     1 0:00000000\t\t0
7\th0        :     2      V3
\t\t\t\t010101EF     2 0:00000000\t\t0
\t\t\t\t010000E0     1 0:00000000\t\t0
";

    const IGMP6: &str = "\
1    lo              ff020000000000000000000000000001     1 0000000C 0
7    h0              ff05000000000000000000000db80001     1 00000004 0
7    h0              ff0200000000000000000001ff000019     1 00000004 0
";

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn igmp_lists_groups_per_device_in_host_order_hex() {
        let all = parse_igmp(IGMP).unwrap();
        // The kernel prints the group's 32 bits as this machine stores them.
        let expected = if cfg!(target_endian = "little") {
            ip("239.1.1.1")
        } else {
            ip("1.1.1.239")
        };
        assert_eq!(all[&7][&expected], 2);
        assert_eq!(all[&7].len(), 2);
        assert_eq!(all[&1].len(), 1);
    }

    #[test]
    fn igmp6_lists_one_membership_a_line() {
        let all = parse_igmp6(IGMP6).unwrap();
        assert_eq!(all[&7][&ip("ff05::db8:1")], 1);
        assert_eq!(all[&7][&ip("ff02::1:ff00:19")], 1);
        assert_eq!(all[&1][&ip("ff02::1")], 1);
    }

    #[test]
    fn a_malformed_line_is_named() {
        let e = parse_igmp6("7 h0 ff05 1 0 0\n").unwrap_err().to_string();
        assert!(e.contains("/proc/net/igmp6 line 1: bad group"), "{e}");
        let e = parse_igmp("head\n\t\t\t\t010101EF 1 0:0 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("a group before any device"), "{e}");
        let e = parse_igmp6("7 h0\n").unwrap_err().to_string();
        assert!(e.contains("fewer than 4 fields"), "{e}");
    }

    #[test]
    fn only_multicast_groups_are_joined() {
        let e = Joins::default().join(1, ip("192.0.2.1")).unwrap_err();
        assert!(matches!(e, MulticastError::NotMulticast { .. }), "{e}");
    }
}
