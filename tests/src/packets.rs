//! Crafted Ethernet frames: probe replies as a target would send them, and ways to spoil them.
//! Checksums are computed here independently of the code under test.

use std::net::{Ipv4Addr, Ipv6Addr};

use mpath_common::{PROBE_ICMP_ID, PROBE_MAGIC, ProbePayload};

pub const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x21];
pub const TARGET_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// The fields of a probe reply that tests vary.
#[derive(Clone, Debug)]
pub struct Reply {
    pub ident: u16,
    pub icmp_type: u8,
    pub seq: u32,
    pub payload: ProbePayload,
}

impl Reply {
    /// A correct reply to probe `seq` sent from `ifindex` with `nonce`.
    pub fn new(ifindex: u32, nonce: u64, seq: u32) -> Self {
        Reply {
            ident: PROBE_ICMP_ID,
            icmp_type: 0,
            seq,
            payload: ProbePayload {
                magic: PROBE_MAGIC,
                ifindex,
                nonce,
                seq,
                _pad: 0,
                sent_ns: 1_000_000,
            },
        }
    }

    /// The ICMP message (header and payload) with checksum field zero.
    fn icmp(&self) -> Vec<u8> {
        let mut m = vec![self.icmp_type, 0, 0, 0];
        m.extend_from_slice(&self.ident.to_be_bytes());
        m.extend_from_slice(&(self.seq as u16).to_be_bytes());
        let p = &self.payload;
        m.extend_from_slice(&p.magic.to_ne_bytes());
        m.extend_from_slice(&p.ifindex.to_ne_bytes());
        m.extend_from_slice(&p.nonce.to_ne_bytes());
        m.extend_from_slice(&p.seq.to_ne_bytes());
        m.extend_from_slice(&p._pad.to_ne_bytes());
        m.extend_from_slice(&p.sent_ns.to_ne_bytes());
        m
    }

    /// An IPv4 frame from `src` to `dst`.
    pub fn v4(&self, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
        let mut icmp = self.icmp();
        let c = checksum(0, &icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        let mut ip = vec![0x45, 0];
        ip.extend_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&[0x12, 0x34, 0, 0, 64, 1, 0, 0]);
        ip.extend_from_slice(&src.octets());
        ip.extend_from_slice(&dst.octets());
        let c = checksum(0, &ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let mut f = ethernet(0x0800);
        f.extend(ip);
        f.extend(icmp);
        f
    }

    /// An IPv6 frame from `src` to `dst` (ICMPv6 type 129 unless changed).
    pub fn v6(&self, src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
        let mut r = self.clone();
        if r.icmp_type == 0 {
            r.icmp_type = 129;
        }
        let mut icmp = r.icmp();
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&src.octets());
        pseudo.extend_from_slice(&dst.octets());
        pseudo.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 58]);
        let c = checksum(sum(0, &pseudo), &icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        let mut f = ethernet(0x86dd);
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
        f.extend_from_slice(&[58, 64]);
        f.extend_from_slice(&src.octets());
        f.extend_from_slice(&dst.octets());
        f.extend(icmp);
        f
    }
}

fn ethernet(proto: u16) -> Vec<u8> {
    let mut f = HOST_MAC.to_vec();
    f.extend_from_slice(&TARGET_MAC);
    f.extend_from_slice(&proto.to_be_bytes());
    f
}

fn sum(mut acc: u32, bytes: &[u8]) -> u32 {
    for chunk in bytes.chunks(2) {
        let hi = u32::from(chunk[0]) << 8;
        let lo = chunk.get(1).copied().map_or(0, u32::from);
        acc += hi | lo;
    }
    acc
}

/// The Internet checksum to put into a message whose pseudo-header sums to `pseudo`.
fn checksum(pseudo: u32, bytes: &[u8]) -> u16 {
    let mut s = sum(pseudo, bytes);
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// Sets the IPv4 more-fragments flag (and fixes the header checksum), as in the first
/// fragment of a fragmented reply.
pub fn mark_v4_first_fragment(frame: &mut [u8]) {
    frame[14 + 6] |= 0x20;
    frame[14 + 10] = 0;
    frame[14 + 11] = 0;
    let c = checksum(0, &frame[14..34]);
    frame[14 + 10..14 + 12].copy_from_slice(&c.to_be_bytes());
}

/// Wraps an IPv6 frame's payload behind a fragment header (first fragment, more to come).
pub fn add_v6_fragment_header(frame: &[u8]) -> Vec<u8> {
    let mut f = frame[..14 + 40].to_vec();
    let payload = &frame[14 + 40..];
    let len = (payload.len() + 8) as u16;
    f[14 + 4..14 + 6].copy_from_slice(&len.to_be_bytes());
    f[14 + 6] = 44;
    f.extend_from_slice(&[58, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef]);
    f.extend_from_slice(payload);
    f
}
