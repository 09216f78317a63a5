//! UDP test flows and a sniffer that records, per flow, the source MAC (so the NIC) each
//! packet arrived with and whether the flow kept its order.

use std::{
    collections::BTreeMap,
    io,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use mpath_lab::{Netns, scaled};

/// UDP port the flows are sent to; the sniffer's side binds it so no ICMP error comes back.
pub const FLOW_PORT: u16 = 9999;

/// One observed packet of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    pub src_mac: [u8; 6],
    pub seq: u32,
}

/// Flows seen by the sniffer, keyed by (source address, source port).
pub type FlowLog = BTreeMap<(Ipv4Addr, u16), Vec<Seen>>;

/// Captures UDP packets to `FLOW_PORT` arriving on one interface of a namespace.
pub struct Sniffer {
    stop: Arc<AtomicBool>,
    /// Flow packets captured so far.
    seen: Arc<AtomicUsize>,
    thread: JoinHandle<io::Result<FlowLog>>,
}

impl Sniffer {
    /// Starts capturing on `ifname` in `ns`; returns once the capture socket is ready.
    pub fn start(ns: &Netns, ifname: &str) -> Sniffer {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(AtomicUsize::new(0));
        let (ready_tx, ready_rx) = mpsc::channel();
        let guard = ns.enter().expect("enter sniffer namespace");
        let ifindex = ns.ifindex(ifname).expect("sniffer interface");
        let thread = {
            let (stop, seen) = (stop.clone(), seen.clone());
            // Spawned while inside the namespace, so the thread starts there.
            thread::spawn(move || capture(ifindex, &stop, &seen, ready_tx))
        };
        drop(guard);
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("sniffer ready")
            .expect("sniffer socket");
        Sniffer { stop, seen, thread }
    }

    /// Waits until `count` flow packets have been captured, or until no packet has come for a
    /// (scaled) second: a lost packet is the caller's to report, not a reason to hang.
    fn wait_for(&self, count: usize) {
        let mut last = self.seen.load(Ordering::Relaxed);
        let mut quiet_since = Instant::now();
        while last < count && quiet_since.elapsed() < scaled(Duration::from_secs(1)) {
            thread::sleep(Duration::from_micros(200));
            let now = self.seen.load(Ordering::Relaxed);
            if now != last {
                (last, quiet_since) = (now, Instant::now());
            }
        }
    }

    /// Stops once the `sent` packets have arrived, then 100 ms more for any duplicates, and
    /// returns what was seen. Packets still missing after a few (scaled) seconds are lost:
    /// an emulated guest can take longer than a fixed wait to deliver them.
    pub fn finish(self, sent: usize) -> FlowLog {
        let deadline = Instant::now() + scaled(Duration::from_secs(3));
        while self.seen.load(Ordering::Relaxed) < sent && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        thread::sleep(Duration::from_millis(100));
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .expect("sniffer thread")
            .expect("sniffer")
    }
}

fn capture(
    ifindex: u32,
    stop: &AtomicBool,
    seen: &AtomicUsize,
    ready: mpsc::Sender<io::Result<()>>,
) -> io::Result<FlowLog> {
    let setup = || -> io::Result<(UdpSocket, i32)> {
        let sink = UdpSocket::bind(("0.0.0.0", FLOW_PORT))?;
        // SAFETY: plain socket syscalls on a descriptor we own and close below.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                i32::from((libc::ETH_P_ALL as u16).to_be()),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        addr.sll_ifindex = ifindex as i32;
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 50_000,
        };
        let rcvbuf: i32 = 8 << 20;
        // SAFETY: valid pointers and lengths for these option and address structs.
        unsafe {
            if libc::bind(
                fd,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            ) != 0
                || libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&raw const timeout).cast(),
                    size_of::<libc::timeval>() as u32,
                ) != 0
                || libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    (&raw const rcvbuf).cast(),
                    4,
                ) != 0
            {
                let e = io::Error::last_os_error();
                libc::close(fd);
                return Err(e);
            }
        }
        Ok((sink, fd))
    };
    let (_sink, fd) = match setup() {
        Ok(s) => {
            let _: Result<_, _> = ready.send(Ok(()));
            s
        }
        Err(e) => {
            let _: Result<_, _> = ready.send(Err(io::Error::new(e.kind(), e.to_string())));
            return Err(e);
        }
    };
    let mut log = FlowLog::new();
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: `buf` is valid for its length.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) {
                continue;
            }
            // SAFETY: closing our own descriptor.
            unsafe { libc::close(fd) };
            return Err(e);
        }
        if let Some((key, packet)) = parse(&buf[..n as usize]) {
            log.entry(key).or_default().push(packet);
            seen.fetch_add(1, Ordering::Relaxed);
        }
    }
    // SAFETY: closing our own descriptor.
    unsafe { libc::close(fd) };
    Ok(log)
}

/// Extracts flow and sequence number from an IPv4 UDP frame to `FLOW_PORT`.
fn parse(frame: &[u8]) -> Option<((Ipv4Addr, u16), Seen)> {
    if frame.len() < 14 + 20 + 8 + 4 || frame[12..14] != [0x08, 0x00] || frame[14 + 9] != 17 {
        return None;
    }
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    let udp = frame.get(14 + ihl..)?;
    if udp.len() < 12 || u16::from_be_bytes([udp[2], udp[3]]) != FLOW_PORT {
        return None;
    }
    let src = Ipv4Addr::new(frame[26], frame[27], frame[28], frame[29]);
    let sport = u16::from_be_bytes([udp[0], udp[1]]);
    let mut src_mac = [0u8; 6];
    src_mac.copy_from_slice(&frame[6..12]);
    let seq = u32::from_be_bytes([udp[8], udp[9], udp[10], udp[11]]);
    Some(((src, sport), Seen { src_mac, seq }))
}

/// Connected UDP sockets, one per flow, that keep their flow hash between rounds.
pub struct Flows {
    sockets: Vec<UdpSocket>,
    next_seq: u32,
}

impl Flows {
    /// Opens `count` flows from `src` to `dst` inside `ns`.
    pub fn open(ns: &Netns, src: Ipv4Addr, dst: Ipv4Addr, count: usize) -> Flows {
        let _inside = ns.enter().expect("enter flow namespace");
        let sockets = (0..count)
            .map(|_| {
                let s = UdpSocket::bind((src, 0)).expect("bind flow socket");
                s.connect(SocketAddr::from((dst, FLOW_PORT)))
                    .expect("connect flow socket");
                s
            })
            .collect();
        Flows {
            sockets,
            next_seq: 0,
        }
    }

    /// Sends `per_flow` packets on every flow, interleaving the flows; returns how many were
    /// sent in all. The sender stays at most `IN_FLIGHT` packets ahead of what `sniffer` has
    /// seen: in an emulated guest the receive softirq falls behind a sender in a tight loop,
    /// and the per-CPU backlog (`netdev_max_backlog`) or a neighbour's queue of packets
    /// awaiting ARP (`unres_qlen_bytes`, about 200 small packets) drops the excess.
    pub fn send_round(&mut self, per_flow: u32, sniffer: &Sniffer) -> usize {
        const IN_FLIGHT: usize = 128;
        let mut sent = 0;
        for _ in 0..per_flow {
            for s in &self.sockets {
                if sent >= IN_FLIGHT {
                    sniffer.wait_for(sent - IN_FLIGHT);
                }
                s.send(&self.next_seq.to_be_bytes())
                    .expect("send flow packet");
                sent += 1;
            }
            self.next_seq += 1;
        }
        sent
    }

    /// The (source address, port) keys of the flows.
    pub fn keys(&self) -> Vec<(Ipv4Addr, u16)> {
        self.sockets
            .iter()
            .map(|s| match s.local_addr().expect("local address") {
                SocketAddr::V4(a) => (*a.ip(), a.port()),
                SocketAddr::V6(_) => unreachable!("IPv4 flows"),
            })
            .collect()
    }
}
