//! Multicast memberships: reading every NIC's from `/proc/net/igmp` and `/proc/net/igmp6`,
//! and joining or leaving groups on a NIC with sockets of mpathd's own.
//!
//! A join with a NIC's ifindex (IP_ADD_MEMBERSHIP with `ip_mreqn`, IPV6_ADD_MEMBERSHIP) makes
//! the kernel a member there: it sends the IGMP/MLD reports the switch needs and delivers the
//! group's datagrams arriving there to any socket bound to their port. The sockets are never
//! bound, so they receive nothing themselves; closing them (mpathd stopping) leaves every
//! group.
//!
//! IGMP reports of a NIC's groups ([`report_v4`]), for a NIC back in use: a snooping switch
//! forgets a port's groups when its link goes, and Linux reports IPv4 memberships again only
//! when a query asks (IPv6 re-reports on its own).

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
    #[error("reporting IPv4 multicast groups on ifindex {ifindex}: {source}")]
    Report { ifindex: u32, source: io::Error },
}

impl MulticastError {
    /// The error with the NIC's name where it has an ifindex, for the log.
    pub(crate) fn on_nic(&self, nic: &str) -> String {
        match self {
            MulticastError::Join { group, source, .. } => {
                format!("joining {group} on {nic}: {source}")
            }
            MulticastError::Leave { group, source, .. } => {
                format!("leaving {group} on {nic}: {source}")
            }
            MulticastError::Report { source, .. } => {
                format!("reporting IPv4 multicast groups on {nic}: {source}")
            }
            other => other.to_string(),
        }
    }
}

/// The IGMP version the kernel speaks on a NIC: the oldest it heard a querier use lately
/// (the `Querier` column of `/proc/net/igmp`), V3 when none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IgmpVersion {
    V1,
    V2,
    V3,
}

/// The all-hosts group every IPv4 host is a member of, which is never reported.
pub(crate) const ALL_HOSTS_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 1);
/// Where IGMPv3 reports go: all IGMPv3-capable multicast routers and snooping switches.
const IGMPV3_ROUTERS: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 22);
/// Group records in one IGMPv3 report: 8 bytes each, well inside any MTU.
const RECORDS_PER_REPORT: usize = 128;
/// IGMPv3 record type MODE_IS_EXCLUDE with no sources: "every source", what an
/// any-source join is, as a current-state report answers a general query.
const MODE_IS_EXCLUDE: u8 = 2;
/// The IP Router Alert option (RFC 2113) every IGMP message carries.
const ROUTER_ALERT: [u8; 4] = [0x94, 0x04, 0, 0];

/// The reports a general query on a link speaking `version` would get for `groups`, with
/// their destinations: an IGMPv3 report (to 224.0.0.22) per [`RECORDS_PER_REPORT`] groups,
/// or an IGMPv1/v2 report per group (to the group). The all-hosts group is never reported.
pub(crate) fn reports(version: IgmpVersion, groups: &[Ipv4Addr]) -> Vec<(Ipv4Addr, Vec<u8>)> {
    let groups: Vec<Ipv4Addr> = groups
        .iter()
        .copied()
        .filter(|g| g.is_multicast() && *g != ALL_HOSTS_V4)
        .collect();
    let mut messages = Vec::new();
    match version {
        IgmpVersion::V3 => {
            for chunk in groups.chunks(RECORDS_PER_REPORT) {
                let mut m = vec![0x22, 0, 0, 0, 0, 0];
                m.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
                for group in chunk {
                    m.extend_from_slice(&[MODE_IS_EXCLUDE, 0, 0, 0]);
                    m.extend_from_slice(&group.octets());
                }
                messages.push((IGMPV3_ROUTERS, m));
            }
        }
        IgmpVersion::V1 | IgmpVersion::V2 => {
            let kind = if version == IgmpVersion::V1 {
                0x12
            } else {
                0x16
            };
            for group in groups {
                let mut m = vec![kind, 0, 0, 0];
                m.extend_from_slice(&group.octets());
                messages.push((group, m));
            }
        }
    }
    for (_, m) in &mut messages {
        let sum = internet_checksum(m);
        m[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    messages
}

/// RFC 1071's one's complement sum, over a message whose checksum field is zero.
fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends the reports of `groups` out of `ifindex` (a raw IGMP socket: TTL 1, Router Alert,
/// the kernel's source choice for the NIC), in the IGMP version the kernel speaks there;
/// returns that version.
pub(crate) fn report_v4(ifindex: u32, groups: &[Ipv4Addr]) -> Result<IgmpVersion, MulticastError> {
    let version = read_queriers()?
        .get(&ifindex)
        .copied()
        .unwrap_or(IgmpVersion::V3);
    let error = |source| MulticastError::Report { ifindex, source };
    let socket = Socket::new(
        Domain::IPV4,
        Type::RAW,
        Some(socket2::Protocol::from(libc::IPPROTO_IGMP)),
    )
    .map_err(error)?;
    socket.set_multicast_ttl_v4(1).map_err(error)?;
    socket.set_multicast_loop_v4(false).map_err(error)?;
    set_multicast_ifindex(&socket, ifindex).map_err(error)?;
    set_ip_options(&socket, &ROUTER_ALERT).map_err(error)?;
    for (to, message) in reports(version, groups) {
        socket
            .send_to(&message, &SocketAddr::new(IpAddr::V4(to), 0).into())
            .map_err(error)?;
    }
    Ok(version)
}

/// IP_MULTICAST_IF by interface index (`ip_mreqn`), which socket2 sets by address only.
fn set_multicast_ifindex(socket: &Socket, ifindex: u32) -> io::Result<()> {
    let request = libc::ip_mreqn {
        imr_multiaddr: libc::in_addr { s_addr: 0 },
        imr_address: libc::in_addr { s_addr: 0 },
        imr_ifindex: ifindex as libc::c_int,
    };
    set_ip_option(
        socket,
        libc::IP_MULTICAST_IF,
        &raw const request,
        size_of_val(&request),
    )
}

fn set_ip_options(socket: &Socket, options: &[u8]) -> io::Result<()> {
    set_ip_option(socket, libc::IP_OPTIONS, options.as_ptr(), options.len())
}

fn set_ip_option<T>(
    socket: &Socket,
    name: libc::c_int,
    value: *const T,
    len: usize,
) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: `value` points at `len` readable bytes for the call's duration.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            name,
            value.cast(),
            len as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The IGMP version of every device in `/proc/net/igmp`.
fn read_queriers() -> Result<BTreeMap<u32, IgmpVersion>, MulticastError> {
    let text = std::fs::read_to_string(PROC_IGMP).map_err(|source| MulticastError::Read {
        path: PROC_IGMP,
        source,
    })?;
    Ok(parse_queriers(&text))
}

/// The `Querier` column of `/proc/net/igmp`'s device lines (`Idx Device : Count Querier`).
fn parse_queriers(text: &str) -> BTreeMap<u32, IgmpVersion> {
    text.lines()
        .skip(1)
        .filter(|line| !line.starts_with(char::is_whitespace))
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let ifindex = words.first()?.parse().ok()?;
            let version = match *words.last()? {
                "V1" => IgmpVersion::V1,
                "V2" => IgmpVersion::V2,
                _ => IgmpVersion::V3,
            };
            Some((ifindex, version))
        })
        .collect()
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
        let group = u32::from_str_radix(group, 16).map_err(|_not_hex| bad(n, "bad group", line))?;
        let users = users
            .parse()
            .map_err(|_not_a_number| bad(n, "bad user count", line))?;
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
        let ifindex = ifindex
            .parse()
            .map_err(|_not_a_number| bad("bad device index"))?;
        let group = u128::from_str_radix(group, 16)
            .ok()
            .filter(|_| group.len() == 32)
            .ok_or_else(|| bad("bad group"))?;
        let users = users
            .parse()
            .map_err(|_not_a_number| bad("bad user count"))?;
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

    #[test]
    fn an_error_on_a_nic_is_told_with_its_name_not_its_ifindex() {
        let join = MulticastError::Join {
            group: "239.1.1.1".parse().unwrap(),
            ifindex: 8,
            source: io::Error::from_raw_os_error(libc::ENOBUFS),
        };
        assert_eq!(
            join.on_nic("h1"),
            "joining 239.1.1.1 on h1: No buffer space available (os error 105)"
        );
        assert!(join.to_string().contains("ifindex 8"));
    }

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
    fn the_querier_version_is_read_per_device() {
        let text = IGMP.replace(
            "7\th0        :     2      V3",
            "7\th0        :     2      V2",
        );
        let versions = parse_queriers(&text);
        assert_eq!(versions[&1], IgmpVersion::V3);
        assert_eq!(versions[&7], IgmpVersion::V2);
        assert_eq!(versions.len(), 2);
    }

    /// RFC 3376 section 4.2; the checksum worked out by hand with RFC 1071's sum.
    #[test]
    fn an_igmpv3_report_has_one_exclude_record_per_group_and_a_valid_checksum() {
        let groups = [
            Ipv4Addr::new(239, 1, 1, 1),
            Ipv4Addr::new(224, 0, 0, 1),
            Ipv4Addr::new(239, 1, 1, 2),
        ];
        let reports = reports(IgmpVersion::V3, &groups);
        assert_eq!(reports.len(), 1);
        let (to, m) = &reports[0];
        assert_eq!(*to, Ipv4Addr::new(224, 0, 0, 22));
        assert_eq!(
            m[..],
            [
                0x22, 0, 0xf9, 0xf6, 0, 0, 0, 2, // type, checksum, 2 records
                2, 0, 0, 0, 239, 1, 1, 1, // MODE_IS_EXCLUDE, no sources
                2, 0, 0, 0, 239, 1, 1, 2,
            ]
        );
        assert_eq!(internet_checksum(m), 0, "the checksum covers the message");
    }

    #[test]
    fn an_igmpv2_link_gets_a_report_per_group_sent_to_the_group() {
        let v2 = reports(IgmpVersion::V2, &[Ipv4Addr::new(239, 1, 1, 1)]);
        assert_eq!(
            v2,
            [(
                Ipv4Addr::new(239, 1, 1, 1),
                vec![0x16, 0, 0xf9, 0xfc, 239, 1, 1, 1]
            )]
        );
        let v1 = reports(IgmpVersion::V1, &[Ipv4Addr::new(239, 1, 1, 1)]);
        assert_eq!(v1[0].1[0], 0x12, "an IGMPv1 report");
    }

    #[test]
    fn many_groups_are_split_over_reports_that_fit_a_frame() {
        let groups: Vec<Ipv4Addr> = (0..300u32)
            .map(|i| Ipv4Addr::from(0xef00_0000 | i))
            .collect();
        let reports = reports(IgmpVersion::V3, &groups);
        let records: Vec<u16> = reports
            .iter()
            .map(|(_, m)| u16::from_be_bytes([m[6], m[7]]))
            .collect();
        assert_eq!(records, [128, 128, 44]);
        assert!(reports.iter().all(|(_, m)| m.len() <= 8 + 8 * 128));
    }

    #[test]
    fn only_multicast_groups_are_joined() {
        let e = Joins::default().join(1, ip("192.0.2.1")).unwrap_err();
        assert!(matches!(e, MulticastError::NotMulticast { .. }), "{e}");
    }
}
