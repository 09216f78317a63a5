//! Crafted Ethernet frames: probe replies as a target would send them, and ways to spoil them.
//! Checksums are computed here independently of the code under test.

use std::net::{Ipv4Addr, Ipv6Addr};

use mpath_common::{
    PROBE_ICMP_ID, PROBE_MAGIC, ProbeKind, ProbePayload,
    checksum::ipv6_pseudo_header,
    probe_tag,
    transitive::{LINK_PROBE_ETHERTYPE, LinkProbe},
};

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
    /// A correct reply to probe `seq` sent from `ifindex` and tagged with `key`.
    pub fn new(ifindex: u32, key: [u64; 2], seq: u32) -> Self {
        Self::of_kind(ifindex, key, seq, ProbeKind::Target)
    }

    /// A correct answer to probe `seq` of `kind` (a host's answer to a discovery echo).
    pub fn of_kind(ifindex: u32, key: [u64; 2], seq: u32, kind: ProbeKind) -> Self {
        Reply {
            ident: PROBE_ICMP_ID,
            icmp_type: 0,
            seq,
            payload: ProbePayload {
                magic: PROBE_MAGIC,
                ifindex,
                seq,
                kind: kind as u32,
                tag: probe_tag(key, ifindex, seq, kind),
                sent_ns: 1_000_000,
                wire_ns: 1_000_500,
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
        m.extend_from_slice(&p.seq.to_ne_bytes());
        m.extend_from_slice(&p.kind.to_ne_bytes());
        m.extend_from_slice(&p.tag.to_ne_bytes());
        m.extend_from_slice(&p.sent_ns.to_ne_bytes());
        m.extend_from_slice(&p.wire_ns.to_ne_bytes());
        m
    }

    /// An IPv4 frame from `src` to `dst`.
    pub fn v4(&self, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
        self.v4_with_options(src, dst, &[])
    }

    /// An IPv4 frame from `src` to `dst` whose header carries `options` (a multiple of 4
    /// bytes, at most 40), as a target that adds e.g. a record-route option would send it.
    pub fn v4_with_options(&self, src: Ipv4Addr, dst: Ipv4Addr, options: &[u8]) -> Vec<u8> {
        assert!(
            options.len().is_multiple_of(4) && options.len() <= 40,
            "IPv4 options of {} bytes do not fit the IHL field",
            options.len()
        );
        let mut icmp = self.icmp();
        let c = internet_checksum(0, &icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        let header_len = 20 + options.len();
        let mut ip = vec![0x40 | (header_len / 4) as u8, 0];
        ip.extend_from_slice(&((header_len + icmp.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&[0x12, 0x34, 0, 0, 64, 1, 0, 0]);
        ip.extend_from_slice(&src.octets());
        ip.extend_from_slice(&dst.octets());
        ip.extend_from_slice(options);
        let c = internet_checksum(0, &ip);
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
        let pseudo = icmpv6_pseudo_sum(&src.octets(), &dst.octets(), icmp.len() as u32);
        let c = internet_checksum(pseudo, &icmp);
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

pub use mpath_common::checksum::internet_checksum;

/// Sum of the IPv6 pseudo-header an ICMPv6 checksum covers, for a message of `len` bytes.
pub fn icmpv6_pseudo_sum(src: &[u8; 16], dst: &[u8; 16], len: u32) -> u32 {
    ipv6_pseudo_header(src, dst, len, 58)
}

/// Recomputes the IPv4 header checksum of an IPv4 frame after its header was edited, so the
/// edit reaches checks behind the header. Does nothing when the IHL field is below 5 or the
/// frame ends inside the header.
pub fn reseal_ipv4_header(frame: &mut [u8]) {
    let Some(&version_ihl) = frame.get(14) else {
        return;
    };
    let header_len = usize::from(version_ihl & 0x0f) * 4;
    if header_len < 20 || frame.len() < 14 + header_len {
        return;
    }
    let header = &mut frame[14..14 + header_len];
    header[10..12].fill(0);
    let c = internet_checksum(0, header);
    header[10..12].copy_from_slice(&c.to_be_bytes());
}

/// Recomputes the ICMP (IPv4 frames) or ICMPv6 (IPv6 frames) checksum after the message or,
/// for ICMPv6, the addresses were edited. The message is what the IP length field says,
/// cut short where the frame ends; nothing happens when the frame ends before the checksum
/// field.
pub fn reseal_icmp(frame: &mut [u8]) {
    let Some(ethertype) = frame.get(12..14) else {
        return;
    };
    match u16::from_be_bytes([ethertype[0], ethertype[1]]) {
        0x0800 if frame.len() >= 14 + 20 => {
            let header_len = usize::from(frame[14] & 0x0f) * 4;
            let ip_len = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
            let end = (14 + ip_len).min(frame.len());
            let start = 14 + header_len;
            if header_len >= 20 && start + 4 <= end {
                seal(0, &mut frame[start..end]);
            }
        }
        0x86dd if frame.len() >= 14 + 40 => {
            let payload_len = usize::from(u16::from_be_bytes([frame[18], frame[19]]));
            let end = (14 + 40 + payload_len).min(frame.len());
            if 14 + 40 + 4 <= end {
                let src: [u8; 16] = frame[22..38].try_into().expect("16 bytes");
                let dst: [u8; 16] = frame[38..54].try_into().expect("16 bytes");
                let msg = &mut frame[54..end];
                seal(icmpv6_pseudo_sum(&src, &dst, msg.len() as u32), msg);
            }
        }
        _ => {}
    }
}

/// Writes the checksum of ICMP message `msg` (at bytes 2..4) over pseudo-header sum `pseudo`.
fn seal(pseudo: u32, msg: &mut [u8]) {
    msg[2..4].fill(0);
    let c = internet_checksum(pseudo, msg);
    msg[2..4].copy_from_slice(&c.to_be_bytes());
}

/// Sets the IPv4 more-fragments flag (and fixes the header checksum), as in the first
/// fragment of a fragmented reply.
pub fn mark_v4_first_fragment(frame: &mut [u8]) {
    frame[14 + 6] |= 0x20;
    reseal_ipv4_header(frame);
}

/// Wraps an IPv6 frame's payload behind a fragment header (first fragment, more to come).
pub fn add_v6_fragment_header(frame: &[u8]) -> Vec<u8> {
    insert_v6_fragment_header(frame, 0x0001)
}

/// Wraps an IPv6 frame's payload behind a fragment header with `offset_flags` (offset in
/// 8-byte units in the top 13 bits, more-fragments in the lowest bit).
pub fn insert_v6_fragment_header(frame: &[u8], offset_flags: u16) -> Vec<u8> {
    let mut f = frame[..14 + 40].to_vec();
    let payload = &frame[14 + 40..];
    let len = (payload.len() + 8) as u16;
    f[14 + 4..14 + 6].copy_from_slice(&len.to_be_bytes());
    let next_header = f[14 + 6];
    f[14 + 6] = 44;
    f.extend_from_slice(&[next_header, 0]);
    f.extend_from_slice(&offset_flags.to_be_bytes());
    f.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    f.extend_from_slice(payload);
    f
}

/// A link-layer probe frame (transitive probing) from `src` to `dst` carrying `probe`.
pub fn link_probe_frame(dst: [u8; 6], src: [u8; 6], probe: LinkProbe) -> Vec<u8> {
    let mut frame = dst.to_vec();
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&LINK_PROBE_ETHERTYPE.to_be_bytes());
    frame.extend_from_slice(&probe.to_bytes());
    frame
}
