//! Sending mpathd's probes: ICMP / ICMPv6 echo requests from one NIC's test address.
//!
//! A probe must test exactly one NIC, so its socket is bound to that NIC and to its test
//! address, and its TTL / hop limit is 1, as in in.mpathd:
//! a probe never leaves the link, whatever the routing table says. Replies are matched and
//! dropped in XDP (`mpath_probe_rx`), so the socket never receives: a socket filter refuses
//! everything, otherwise every ICMP message reaching the NIC would pile up in its queue.

use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::num::NonZeroU32;
use std::os::fd::{AsFd, BorrowedFd};

use mpath_common::{
    PROBE_ICMP_ID, PROBE_ICMP_LEN, PROBE_MAGIC, ProbeKind, ProbePayload,
    checksum::internet_checksum, probe_tag,
};
use socket2::{Domain, Protocol, SockAddr, SockFilter, Socket, Type};

const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;
/// DSCP CS6 ("network control"): switches and routers with QoS queue probes ahead of bulk
/// traffic, and Linux targets copy the TOS into their reply, so a saturated link does not
/// look dead.
const TOS_NETWORK_CONTROL: u32 = 0xc0;
/// `TC_PRIO_CONTROL` from linux/pkt_sched.h: the highest band of priority qdiscs on the way
/// out, for the same reason.
const TC_PRIO_CONTROL: u32 = 7;

/// A raw ICMP or ICMPv6 socket that sends one NIC's probes and never receives.
#[derive(Debug)]
pub struct ProbeSocket {
    socket: Socket,
    ifname: String,
    ifindex: u32,
    /// The test address the socket is bound to; its family is the socket's.
    source: IpAddr,
}

impl ProbeSocket {
    /// An IPv4 probe socket on NIC `ifname` (index `ifindex`), sending from `test_address`,
    /// which must already be on that NIC. No IP_MULTICAST_IF: the bound NIC already takes
    /// precedence for multicast; IP_MULTICAST_ALL only concerns receiving.
    pub fn v4(ifname: &str, ifindex: u32, test_address: Ipv4Addr) -> io::Result<Self> {
        let probe = Self::open(ifname, ifindex, IpAddr::V4(test_address))?;
        let socket = &probe.socket;
        probe.setting("IP_TTL", socket.set_ttl_v4(1))?;
        probe.setting("IP_MULTICAST_TTL", socket.set_multicast_ttl_v4(1))?;
        // Off, or the host answers its own discovery probes and finds itself as a target.
        probe.setting("IP_MULTICAST_LOOP", socket.set_multicast_loop_v4(false))?;
        probe.setting("IP_TOS", socket.set_tos_v4(TOS_NETWORK_CONTROL))?;
        // After IP_TOS, which resets the priority from the TOS bits.
        probe.setting("SO_PRIORITY", socket.set_priority(TC_PRIO_CONTROL))?;
        probe.bind(SocketAddr::new(IpAddr::V4(test_address), 0))?;
        probe.discard_queued();
        Ok(probe)
    }

    /// An IPv6 probe socket on NIC `ifname` (index `ifindex`), sending from the NIC's
    /// `link_local` address (in.mpathd probes over IPv6 from link-local addresses only, and
    /// the datapath matches replies to that address). The kernel fills in the ICMPv6
    /// checksum, as it always does for raw ICMPv6 sockets.
    pub fn v6(ifname: &str, ifindex: u32, link_local: Ipv6Addr) -> io::Result<Self> {
        if !link_local.is_unicast_link_local() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "IPv6 probes on {ifname} must be sent from its link-local address \
                     (fe80::/10), not {link_local}"
                ),
            ));
        }
        let probe = Self::open(ifname, ifindex, IpAddr::V6(link_local))?;
        let socket = &probe.socket;
        probe.setting("IPV6_UNICAST_HOPS", socket.set_unicast_hops_v6(1))?;
        probe.setting("IPV6_MULTICAST_HOPS", socket.set_multicast_hops_v6(1))?;
        probe.setting("IPV6_MULTICAST_LOOP", socket.set_multicast_loop_v6(false))?;
        probe.setting("IPV6_TCLASS", socket.set_tclass_v6(TOS_NETWORK_CONTROL))?;
        probe.setting("SO_PRIORITY", socket.set_priority(TC_PRIO_CONTROL))?;
        let address = SocketAddrV6::new(link_local, 0, 0, ifindex);
        probe.bind(address.into()).map_err(|e| {
            if e.kind() == io::ErrorKind::AddrNotAvailable {
                io::Error::new(
                    e.kind(),
                    format!("{e} (is {link_local} on {ifname} and done with DAD?)"),
                )
            } else {
                e
            }
        })?;
        probe.discard_queued();
        Ok(probe)
    }

    /// Sends probe `seq` to `target`, a probe target or the all-nodes group (224.0.0.1,
    /// ff02::1) for target discovery: a probe to a multicast group is a discovery echo, whose
    /// replies draw from the datapath's discovery budget ([`ProbeKind`]). Never blocks: a full transmit queue fails with
    /// `WouldBlock`, and any error means the probe did not leave, so the caller counts it
    /// as lost. `probe_key` tags the probe ([`probe_tag`]); `sent_ns` is the
    /// [`monotonic_ns`] time the caller records for this probe.
    pub fn send(
        &self,
        target: IpAddr,
        seq: u32,
        probe_key: [u64; 2],
        sent_ns: u64,
    ) -> io::Result<()> {
        let kind = if target.is_multicast() {
            ProbeKind::Discovery
        } else {
            ProbeKind::Target
        };
        let message = echo_request(self.source, self.ifindex, seq, kind, probe_key, sent_ns);
        let destination = match (self.source, target) {
            (IpAddr::V4(_), IpAddr::V4(_)) => SocketAddr::new(target, 0),
            // The scope id only matters for link-scoped targets, which are the usual ones.
            (IpAddr::V6(_), IpAddr::V6(target)) => {
                SocketAddrV6::new(target, 0, 0, self.ifindex).into()
            }
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "cannot send probe {seq} from {} on {} to {target}: address families differ",
                        self.source, self.ifname
                    ),
                ));
            }
        };
        let sent = match self.socket.send_to(&message, &destination.into()) {
            Ok(n) if n == message.len() => Ok(()),
            Ok(n) => Err(io::Error::other(format!(
                "only {n} of {} bytes sent",
                message.len()
            ))),
            Err(e) => Err(e),
        };
        sent.map_err(|e| {
            context(
                e,
                format!(
                    "sending probe {seq} from {} on {} to {target}",
                    self.source, self.ifname
                ),
            )
        })
    }

    /// A raw socket of `source`'s family, bound to the NIC and refusing all input.
    fn open(ifname: &str, ifindex: u32, source: IpAddr) -> io::Result<Self> {
        let (domain, protocol) = match source {
            IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4),
            IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6),
        };
        let socket = Socket::new(domain, Type::RAW, Some(protocol)).map_err(|e| {
            context(
                e,
                format!("opening a raw probe socket for {ifname} (needs CAP_NET_RAW)"),
            )
        })?;
        let probe = ProbeSocket {
            socket,
            ifname: ifname.to_string(),
            ifindex,
            source,
        };
        let socket = &probe.socket;
        probe.setting("O_NONBLOCK", socket.set_nonblocking(true))?;
        // A classic BPF program that accepts nothing. Not shutdown(SHUT_RD), which fails
        // with ENOTCONN on an unconnected raw socket and does not stop raw delivery, and not
        // a small SO_RCVBUF, which the kernel rounds up to room for a few packets.
        let reject_all = SockFilter::new((libc::BPF_RET | libc::BPF_K) as u16, 0, 0, 0);
        probe.setting("SO_ATTACH_FILTER", socket.attach_filter(&[reject_all]))?;
        // By index rather than by name (SO_BINDTODEVICE): the payload carries the ifindex and
        // the datapath checks it, so a rename between lookup and bind cannot split them.
        let index = NonZeroU32::new(ifindex).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{ifname} has no ifindex (0)"),
            )
        })?;
        let bound = match source {
            IpAddr::V4(_) => socket.bind_device_by_index_v4(Some(index)),
            IpAddr::V6(_) => socket.bind_device_by_index_v6(Some(index)),
        };
        probe.setting("SO_BINDTOIFINDEX", bound)?;
        Ok(probe)
    }

    /// Names the option and the NIC in a failure to set it.
    fn setting(&self, option: &str, result: io::Result<()>) -> io::Result<()> {
        result.map_err(|e| {
            context(
                e,
                format!("setting {option} on the probe socket of {}", self.ifname),
            )
        })
    }

    /// Drops what arrived between socket creation and the filter taking effect.
    fn discard_queued(&self) {
        let mut scratch = [MaybeUninit::<u8>::uninit(); 64];
        while self.socket.recv(&mut scratch).is_ok() {}
    }

    fn bind(&self, address: SocketAddr) -> io::Result<()> {
        self.socket.bind(&SockAddr::from(address)).map_err(|e| {
            context(
                e,
                format!(
                    "binding the probe socket of {} to {}",
                    self.ifname,
                    address.ip()
                ),
            )
        })
    }
}

/// For checking from outside that nothing is ever queued on the socket.
impl AsFd for ProbeSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`, so send times taken here
/// and receive times taken in XDP subtract to an RTT.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: fills the timespec we pass. CLOCK_MONOTONIC cannot fail on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// The ICMP (IPv4 `source`) or ICMPv6 echo request of probe `seq`. The IPv4 checksum is
/// filled in; the ICMPv6 one is left zero for the kernel, which covers the pseudo-header.
fn echo_request(
    source: IpAddr,
    ifindex: u32,
    seq: u32,
    kind: ProbeKind,
    probe_key: [u64; 2],
    sent_ns: u64,
) -> [u8; PROBE_ICMP_LEN] {
    let payload = ProbePayload {
        magic: PROBE_MAGIC,
        ifindex,
        seq,
        kind: kind as u32,
        tag: probe_tag(probe_key, ifindex, seq, kind),
        sent_ns,
        wire_ns: 0,
    };
    let mut message = [0u8; PROBE_ICMP_LEN];
    message[0] = match source {
        IpAddr::V4(_) => ICMP_ECHO_REQUEST,
        IpAddr::V6(_) => ICMPV6_ECHO_REQUEST,
    };
    message[4..6].copy_from_slice(&PROBE_ICMP_ID.to_be_bytes());
    message[6..8].copy_from_slice(&(seq as u16).to_be_bytes());
    let fields: [&[u8]; 7] = [
        &payload.magic.to_ne_bytes(),
        &payload.ifindex.to_ne_bytes(),
        &payload.seq.to_ne_bytes(),
        &payload.kind.to_ne_bytes(),
        &payload.tag.to_ne_bytes(),
        &payload.sent_ns.to_ne_bytes(),
        &payload.wire_ns.to_ne_bytes(),
    ];
    let mut at = 8;
    for field in fields {
        message[at..at + field.len()].copy_from_slice(field);
        at += field.len();
    }
    if source.is_ipv4() {
        let checksum = internet_checksum(0, &message);
        message[2..4].copy_from_slice(&checksum.to_be_bytes());
    }
    message
}

/// `error` with `what` was being done in front, keeping its kind for the caller to match on.
fn context(error: io::Error, what: String) -> io::Error {
    io::Error::new(error.kind(), format!("{what}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 21));
    const TEST_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x21));

    /// Reads the payload back the way the XDP program does.
    fn payload_of(message: &[u8; PROBE_ICMP_LEN]) -> ProbePayload {
        // SAFETY: bytes 8.. are exactly one ProbePayload, read unaligned.
        unsafe {
            message
                .as_ptr()
                .add(8)
                .cast::<ProbePayload>()
                .read_unaligned()
        }
    }

    #[test]
    fn v4_echo_request_carries_id_low_seq_bits_and_the_payload_in_memory_layout() {
        let key = [0xdead_beef_0bad_f00d, 3];
        let message = echo_request(TEST_V4, 7, 0x0001_0203, ProbeKind::Target, key, 42);
        assert_eq!(&message[..2], &[8, 0]);
        assert_eq!(&message[4..6], &PROBE_ICMP_ID.to_be_bytes());
        assert_eq!(&message[6..8], &[0x02, 0x03]);
        assert_eq!(
            payload_of(&message),
            ProbePayload {
                magic: PROBE_MAGIC,
                ifindex: 7,
                seq: 0x0001_0203,
                kind: 0,
                tag: probe_tag(key, 7, 0x0001_0203, ProbeKind::Target),
                sent_ns: 42,
                wire_ns: 0,
            }
        );
    }

    #[test]
    fn v4_echo_request_checksum_verifies() {
        let message = echo_request(TEST_V4, 3, 99, ProbeKind::Discovery, [1, 5], 2);
        assert_ne!(&message[2..4], &[0, 0]);
        // Summing a message that includes its own checksum gives all ones (RFC 1071).
        assert_eq!(internet_checksum(0, &message), 0);
    }

    #[test]
    fn v6_echo_request_leaves_the_checksum_to_the_kernel() {
        let message = echo_request(TEST_V6, 3, 99, ProbeKind::Target, [1, 5], 2);
        assert_eq!(&message[..4], &[128, 0, 0, 0]);
        assert_eq!(payload_of(&message).seq, 99);
    }

    #[test]
    fn checksum_matches_a_known_echo_request() {
        // `ping -p 00 -s 0` style request: type 8, id 0x1234, seq 1 → checksum 0xe5ca.
        let request = [8, 0, 0, 0, 0x12, 0x34, 0, 1];
        assert_eq!(internet_checksum(0, &request), 0xe5ca);
        // Odd length pads with a zero byte.
        assert_eq!(internet_checksum(0, &[0xff]), 0x00ff);
    }

    #[test]
    fn v6_socket_refuses_a_non_link_local_source_before_touching_the_kernel() {
        let error = ProbeSocket::v6("h0", 5, "2001:db8::21".parse().unwrap()).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        let message = error.to_string();
        assert!(message.contains("h0"), "{message}");
        assert!(message.contains("2001:db8::21"), "{message}");
    }

    #[test]
    fn monotonic_clock_moves_forward() {
        let before = monotonic_ns();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let after = monotonic_ns();
        assert!(after - before >= 2_000_000, "{before} -> {after}");
    }
}
