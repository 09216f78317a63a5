//! A userspace echo responder for the lab router, so tests decide how mpathd's probes are
//! answered: late, not at all, twice, from another address, with another sequence number, or
//! with the message of an earlier request.
//!
//! It runs on a thread inside the router namespace with raw ICMP and ICMPv6 sockets, while
//! the kernel's own echo replies are switched off there (`icmp_echo_ignore_all`). Left alone
//! it answers as the kernel would: requests to the router's unicast addresses (IPv4: from the
//! address that was asked) and, over IPv6, to multicast groups, echoing the message verbatim
//! with only the type and checksum changed, so whatever mpathd puts in its payload comes back
//! untouched. Every request is logged with its kernel receive time and hop limit.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    io,
    mem::{size_of, size_of_val, zeroed},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result, bail};
use mpath_lab::Netns;

use crate::packets::internet_checksum;

/// The kernel's echo switches, turned on while the responder runs and restored after.
const KERNEL_ECHO_SWITCHES: [&str; 2] = [
    "net.ipv4.icmp_echo_ignore_all",
    "net.ipv6.icmp.echo_ignore_all",
];
/// How many earlier requests of one source a [`Fault::Replay`] can reach back.
pub const REPLAY_DEPTH: usize = 128;
/// Longest sleep of the responder thread, so a stop is noticed soon.
const POLL_SLICE: Duration = Duration::from_millis(20);

const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;
/// Echo header: type, code, checksum, identifier, sequence number.
const ECHO_HEADER_LEN: usize = 8;

/// Which echo requests a rule covers. A request takes the rule of its source if there is
/// one, else the rule of its destination, else the rule for all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Requests {
    All,
    /// Requests sent from this address (a NIC's test or link-local address).
    From(IpAddr),
    /// Requests sent to this address of the router (a probe target).
    To(IpAddr),
}

/// What goes wrong with an answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fault {
    /// A correct reply.
    #[default]
    None,
    /// No reply.
    Drop,
    /// The reply is sent twice.
    Duplicate,
    /// The reply comes from this other address of the router. Only for requests of its
    /// address family; others are answered correctly.
    FromAddress(IpAddr),
    /// The sequence number in the echo header is increased by this much; the payload is left
    /// as it was.
    ShiftSequence(u16),
    /// Instead of this request's message, the one of the request `behind` requests earlier
    /// from the same source is echoed (a stale reply); nothing is sent while the history is
    /// shorter than that. At most [`REPLAY_DEPTH`].
    Replay { behind: usize },
}

/// How to answer the requests a rule covers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Answer {
    /// Wait this long before replying.
    pub delay: Duration,
    pub fault: Fault,
}

impl Answer {
    /// A correct reply, late by `delay`.
    pub fn delayed(delay: Duration) -> Answer {
        Answer {
            delay,
            fault: Fault::None,
        }
    }

    /// A reply spoiled by `fault`, sent at once.
    pub fn faulty(fault: Fault) -> Answer {
        Answer {
            delay: Duration::ZERO,
            fault,
        }
    }
}

/// One echo request the router received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// The kernel's receive timestamp.
    pub at: SystemTime,
    pub from: IpAddr,
    pub to: IpAddr,
    /// TTL (IPv4) or hop limit (IPv6) as the request arrived.
    pub hop_limit: u8,
    /// The echo identifier.
    pub ident: u16,
}

/// The running responder; stops and gives the router its kernel echo replies back when
/// dropped, also while a failing test unwinds.
pub struct Responder<'lab> {
    router: &'lab Netns,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// The kernel echo switches as they were before, to restore.
    saved: Vec<(&'static str, String)>,
}

#[derive(Default)]
struct Shared {
    rules: HashMap<Requests, Answer>,
    log: Vec<Request>,
}

impl<'lab> Responder<'lab> {
    /// Takes over echo replies in `router` (the lab's router namespace) and returns once
    /// its sockets are open.
    pub fn start(router: &'lab Netns) -> Result<Responder<'lab>> {
        let local = local_addresses(router)?;
        let mut responder = Responder {
            router,
            shared: Arc::default(),
            stop: Arc::default(),
            thread: None,
            saved: Vec::new(),
        };
        for switch in KERNEL_ECHO_SWITCHES {
            let value = router.run(&["sysctl", "-n", switch])?.trim().to_string();
            router.run(&["sysctl", "-qw", &format!("{switch}=1")])?;
            responder.saved.push((switch, value));
        }
        let (ready_tx, ready_rx) = mpsc::channel();
        let guard = router.enter()?;
        let thread = {
            let shared = responder.shared.clone();
            let stop = responder.stop.clone();
            // Spawned while inside the namespace, so the thread and its sockets live there.
            thread::spawn(move || match Sockets::open() {
                Ok(sockets) => {
                    let _: Result<_, _> = ready_tx.send(Ok(()));
                    if let Err(e) = Server::new(sockets, local, shared).run(&stop) {
                        eprintln!("echo responder stopped: {e}");
                    }
                }
                Err(e) => {
                    let _: Result<_, _> = ready_tx.send(Err(e));
                }
            })
        };
        drop(guard);
        responder.thread = Some(thread);
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => Ok(responder),
            Ok(Err(e)) => Err(e).context("opening the responder's raw sockets"),
            Err(_) => bail!("the echo responder thread did not start"),
        }
    }

    /// Answers the requests `requests` covers as `answer` says, from now on.
    pub fn set(&self, requests: Requests, answer: Answer) {
        if let Fault::Replay { behind } = answer.fault {
            assert!(
                behind <= REPLAY_DEPTH,
                "a replay can reach back {REPLAY_DEPTH} requests, not {behind}"
            );
        }
        self.lock().rules.insert(requests, answer);
    }

    /// Removes the rule for `requests`, so a wider rule (or a correct reply) applies again.
    pub fn clear(&self, requests: Requests) {
        self.lock().rules.remove(&requests);
    }

    /// Every request received so far, in order of arrival.
    pub fn requests(&self) -> Vec<Request> {
        self.lock().log.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Responder<'_> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            eprintln!("the echo responder thread panicked");
        }
        for (switch, value) in &self.saved {
            if let Err(e) = self
                .router
                .run(&["sysctl", "-qw", &format!("{switch}={value}")])
            {
                eprintln!("restoring {switch} in {}: {e:#}", self.router.name());
            }
        }
    }
}

/// The unicast addresses of every interface in `ns`.
fn local_addresses(ns: &Netns) -> Result<Vec<IpAddr>> {
    let listing = ns.ip(&["-o", "addr", "show"])?;
    listing
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            words.find(|w| *w == "inet" || *w == "inet6")?;
            words.next()
        })
        .map(|cidr| {
            let addr = cidr.split('/').next().unwrap_or(cidr);
            addr.parse()
                .with_context(|| format!("bad address {cidr} in `ip addr` output"))
        })
        .collect()
}

struct Sockets {
    v4: OwnedFd,
    v6: OwnedFd,
}

impl Sockets {
    fn open() -> io::Result<Sockets> {
        let v4 = raw_socket(libc::AF_INET, libc::IPPROTO_ICMP)?;
        set_option(&v4, libc::IPPROTO_IP, libc::IP_HDRINCL, 1)?;
        set_option(&v4, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)?;
        let v6 = raw_socket(libc::AF_INET6, libc::IPPROTO_ICMPV6)?;
        set_option(&v6, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)?;
        set_option(&v6, libc::IPPROTO_IPV6, libc::IPV6_RECVHOPLIMIT, 1)?;
        set_option(&v6, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)?;
        Ok(Sockets { v4, v6 })
    }
}

fn raw_socket(domain: libc::c_int, protocol: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the descriptor is owned below.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            protocol,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_option(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `value` lives for the call and its size is passed along.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// An echo request taken apart, either family.
struct Echo {
    at: SystemTime,
    from: IpAddr,
    to: IpAddr,
    hop_limit: u8,
    /// IPv4 type of service, copied into the reply as Linux does.
    tos: u8,
    /// Interface it arrived on (IPv6: needed to answer link-local and multicast requests).
    ifindex: u32,
    /// The ICMP message: echo header and payload.
    message: Vec<u8>,
}

/// A reply waiting for its time.
enum Outgoing {
    /// A whole IPv4 packet (the socket has IP_HDRINCL).
    V4 { packet: Vec<u8>, to: Ipv4Addr },
    /// An ICMPv6 message; the kernel fills in its checksum. `source` `None` lets the kernel
    /// pick (answers to multicast requests).
    V6 {
        message: Vec<u8>,
        to: Ipv6Addr,
        ifindex: u32,
        source: Option<Ipv6Addr>,
    },
}

struct Server {
    sockets: Sockets,
    local: Vec<IpAddr>,
    shared: Arc<Mutex<Shared>>,
    /// The latest messages per source, newest last, for replays.
    history: HashMap<IpAddr, VecDeque<Vec<u8>>>,
    /// Replies by due time; the counter keeps replies due at the same instant apart.
    pending: BTreeMap<(Instant, u64), Outgoing>,
    queued: u64,
}

impl Server {
    fn new(sockets: Sockets, local: Vec<IpAddr>, shared: Arc<Mutex<Shared>>) -> Server {
        Server {
            sockets,
            local,
            shared,
            history: HashMap::new(),
            pending: BTreeMap::new(),
            queued: 0,
        }
    }

    fn run(&mut self, stop: &AtomicBool) -> io::Result<()> {
        let mut buf = vec![0u8; 65536];
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            let wait = self
                .pending
                .keys()
                .next()
                .map_or(POLL_SLICE, |(due, _)| due.saturating_duration_since(now))
                .min(POLL_SLICE);
            let mut fds = [
                libc::pollfd {
                    fd: self.sockets.v4.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.sockets.v6.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let timeout_ms = wait.as_micros().div_ceil(1000) as libc::c_int;
            // SAFETY: `fds` is valid for its length.
            if unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) } < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            while let Some(received) = receive(&self.sockets.v4, &mut buf)? {
                if let Some(echo) = parse_v4(&buf[..received.len], received.at) {
                    self.answer(echo);
                }
            }
            while let Some(received) = receive(&self.sockets.v6, &mut buf)? {
                if let Some(echo) = parse_v6(&buf[..received.len], &received) {
                    self.answer(echo);
                }
            }
            self.send_due()?;
        }
        Ok(())
    }

    /// Logs a request and queues what its rule says to send back.
    fn answer(&mut self, echo: Echo) {
        let ident = u16::from_be_bytes([echo.message[4], echo.message[5]]);
        let answer = {
            let mut shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
            shared.log.push(Request {
                at: echo.at,
                from: echo.from,
                to: echo.to,
                hop_limit: echo.hop_limit,
                ident,
            });
            let rules = &shared.rules;
            rules
                .get(&Requests::From(echo.from))
                .or_else(|| rules.get(&Requests::To(echo.to)))
                .or_else(|| rules.get(&Requests::All))
                .copied()
                .unwrap_or_default()
        };
        let history = self.history.entry(echo.from).or_default();
        if history.len() > REPLAY_DEPTH {
            history.pop_front();
        }
        history.push_back(echo.message.clone());

        // As the kernel: unicast requests to the router's own addresses, and IPv6 multicast
        // (IPv4 broadcast and multicast echoes are ignored by default).
        let multicast = matches!(echo.to, IpAddr::V6(to) if to.is_multicast());
        if !self.local.contains(&echo.to) && !multicast {
            return;
        }
        let mut message = match answer.fault {
            Fault::Drop => return,
            Fault::Replay { behind } => match history.len().checked_sub(behind + 1) {
                Some(index) => history[index].clone(),
                None => return,
            },
            _ => echo.message.clone(),
        };
        if let Fault::ShiftSequence(shift) = answer.fault {
            let seq = u16::from_be_bytes([message[6], message[7]]).wrapping_add(shift);
            message[6..8].copy_from_slice(&seq.to_be_bytes());
        }
        let source = match answer.fault {
            Fault::FromAddress(other) if other.is_ipv4() == echo.to.is_ipv4() => Some(other),
            _ if multicast => None,
            _ => Some(echo.to),
        };
        let copies = if answer.fault == Fault::Duplicate {
            2
        } else {
            1
        };
        let due = Instant::now() + answer.delay;
        for _ in 0..copies {
            let outgoing = match (echo.from, source) {
                (IpAddr::V4(to), Some(IpAddr::V4(source))) => Outgoing::V4 {
                    packet: ipv4_reply(source, to, echo.tos, &message),
                    to,
                },
                (IpAddr::V6(to), source) => {
                    let mut message = message.clone();
                    message[0] = ICMPV6_ECHO_REPLY;
                    message[2..4].fill(0);
                    Outgoing::V6 {
                        message,
                        to,
                        ifindex: echo.ifindex,
                        source: match source {
                            Some(IpAddr::V6(source)) => Some(source),
                            _ => None,
                        },
                    }
                }
                // IPv4 requests always have a unicast source picked above.
                (IpAddr::V4(_), _) => return,
            };
            self.queued += 1;
            self.pending.insert((due, self.queued), outgoing);
        }
    }

    fn send_due(&mut self) -> io::Result<()> {
        let now = Instant::now();
        while let Some(entry) = self.pending.first_entry() {
            if entry.key().0 > now {
                break;
            }
            match entry.remove() {
                Outgoing::V4 { packet, to } => send_v4(&self.sockets.v4, &packet, to)?,
                Outgoing::V6 {
                    message,
                    to,
                    ifindex,
                    source,
                } => send_v6(&self.sockets.v6, &message, to, ifindex, source)?,
            }
        }
        Ok(())
    }
}

/// An IPv4 echo reply packet carrying `request`'s message, with both checksums computed.
fn ipv4_reply(source: Ipv4Addr, to: Ipv4Addr, tos: u8, request: &[u8]) -> Vec<u8> {
    let mut icmp = request.to_vec();
    icmp[0] = ICMP_ECHO_REPLY;
    icmp[2..4].fill(0);
    let c = internet_checksum(0, &icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let total = (20 + icmp.len()) as u16;
    let mut packet = vec![0x45, tos];
    packet.extend_from_slice(&total.to_be_bytes());
    packet.extend_from_slice(&[0, 0, 0, 0, 64, 1, 0, 0]);
    packet.extend_from_slice(&source.octets());
    packet.extend_from_slice(&to.octets());
    let c = internet_checksum(0, &packet);
    packet[10..12].copy_from_slice(&c.to_be_bytes());
    packet.extend(icmp);
    packet
}

/// An IPv4 packet as a raw socket delivers it, if it is an intact echo request.
fn parse_v4(packet: &[u8], at: SystemTime) -> Option<Echo> {
    let header_len = usize::from(packet.first()? & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([*packet.get(2)?, *packet.get(3)?]));
    let message = packet.get(header_len..total.min(packet.len()))?;
    if header_len < 20
        || message.len() < ECHO_HEADER_LEN
        || message[0] != ICMP_ECHO_REQUEST
        || message[1] != 0
        || internet_checksum(0, message) != 0
    {
        return None;
    }
    let address =
        |at: usize| Ipv4Addr::new(packet[at], packet[at + 1], packet[at + 2], packet[at + 3]);
    Some(Echo {
        at,
        from: address(12).into(),
        to: address(16).into(),
        hop_limit: packet[8],
        tos: packet[1],
        ifindex: 0,
        message: message.to_vec(),
    })
}

/// An ICMPv6 message as a raw socket delivers it (the kernel checked its checksum), if it is
/// an echo request.
fn parse_v6(message: &[u8], received: &Received) -> Option<Echo> {
    if message.len() < ECHO_HEADER_LEN || message[0] != ICMPV6_ECHO_REQUEST || message[1] != 0 {
        return None;
    }
    let (to, ifindex) = received.destination?;
    Some(Echo {
        at: received.at,
        from: received.from?,
        to: to.into(),
        hop_limit: received.hop_limit?,
        tos: 0,
        ifindex,
        message: message.to_vec(),
    })
}

/// What `recvmsg` told besides the bytes.
struct Received {
    len: usize,
    at: SystemTime,
    /// IPv6 only: the sender.
    from: Option<IpAddr>,
    /// IPv6 only: the destination address and the interface it arrived on.
    destination: Option<(Ipv6Addr, u32)>,
    /// IPv6 only: the hop limit it arrived with.
    hop_limit: Option<u8>,
}

/// One datagram, or `None` when nothing is queued.
fn receive(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<Option<Received>> {
    // SAFETY: all-zero is a valid sockaddr_storage and msghdr.
    let mut from: libc::sockaddr_storage = unsafe { zeroed() };
    let mut control = [0u64; 64];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: as above.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = (&raw mut from).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&control);
    let n = loop {
        // SAFETY: every pointer in `msg` refers to a live buffer of the length given.
        let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, 0) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::WouldBlock => return Ok(None),
            io::ErrorKind::Interrupted => continue,
            _ => return Err(e),
        }
    };
    let mut received = Received {
        len: n,
        at: SystemTime::now(),
        from: None,
        destination: None,
        hop_limit: None,
    };
    if i32::from(from.ss_family) == libc::AF_INET6 {
        // SAFETY: the family says it is a sockaddr_in6.
        let sin6 = unsafe { &*(&raw const from).cast::<libc::sockaddr_in6>() };
        received.from = Some(Ipv6Addr::from(sin6.sin6_addr.s6_addr).into());
    }
    // SAFETY: walking the control messages the kernel wrote into `control`, within
    // `msg_controllen`; payloads are read unaligned.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let data = libc::CMSG_DATA(cmsg);
            match ((*cmsg).cmsg_level, (*cmsg).cmsg_type) {
                (libc::SOL_SOCKET, libc::SO_TIMESTAMPNS) => {
                    let ts = data.cast::<libc::timespec>().read_unaligned();
                    received.at =
                        SystemTime::UNIX_EPOCH + Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
                }
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                    let info = data.cast::<libc::in6_pktinfo>().read_unaligned();
                    received.destination =
                        Some((Ipv6Addr::from(info.ipi6_addr.s6_addr), info.ipi6_ifindex));
                }
                (libc::IPPROTO_IPV6, libc::IPV6_HOPLIMIT) => {
                    let hops = data.cast::<libc::c_int>().read_unaligned();
                    received.hop_limit = u8::try_from(hops).ok();
                }
                _ => {}
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(Some(received))
}

fn send_v4(fd: &OwnedFd, packet: &[u8], to: Ipv4Addr) -> io::Result<()> {
    // SAFETY: all-zero is a valid sockaddr_in.
    let mut address: libc::sockaddr_in = unsafe { zeroed() };
    address.sin_family = libc::AF_INET as libc::sa_family_t;
    address.sin_addr.s_addr = u32::from_ne_bytes(to.octets());
    // SAFETY: buffer and address are valid for the lengths given.
    let rc = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (&raw const address).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    sent(rc)
}

fn send_v6(
    fd: &OwnedFd,
    message: &[u8],
    to: Ipv6Addr,
    ifindex: u32,
    source: Option<Ipv6Addr>,
) -> io::Result<()> {
    // SAFETY: all-zero is a valid sockaddr_in6 and msghdr.
    let mut address: libc::sockaddr_in6 = unsafe { zeroed() };
    address.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    address.sin6_addr.s6_addr = to.octets();
    address.sin6_scope_id = ifindex;
    let info = libc::in6_pktinfo {
        ipi6_addr: libc::in6_addr {
            s6_addr: source.unwrap_or(Ipv6Addr::UNSPECIFIED).octets(),
        },
        ipi6_ifindex: ifindex,
    };
    let mut control = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: message.as_ptr().cast_mut().cast(),
        iov_len: message.len(),
    };
    // SAFETY: as above.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = (&raw mut address).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE/CMSG_LEN are pure arithmetic; the one control message fits the
    // 64-byte buffer, and the kernel only reads the message (the iovec is not written).
    let rc = unsafe {
        msg.msg_controllen = libc::CMSG_SPACE(size_of::<libc::in6_pktinfo>() as u32) as usize;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::IPPROTO_IPV6;
        (*cmsg).cmsg_type = libc::IPV6_PKTINFO;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<libc::in6_pktinfo>() as u32) as usize;
        libc::CMSG_DATA(cmsg)
            .cast::<libc::in6_pktinfo>()
            .write_unaligned(info);
        libc::sendmsg(fd.as_raw_fd(), &msg, 0)
    };
    sent(rc)
}

/// A send that the network refused (e.g. no neighbour entry yet) is a lost reply, as on a
/// real router; only a broken socket stops the responder.
fn sent(rc: isize) -> io::Result<()> {
    if rc >= 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EBADF | libc::ENOTSOCK | libc::EFAULT) => Err(e),
        _ => Ok(()),
    }
}
