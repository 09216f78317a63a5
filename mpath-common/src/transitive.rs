//! Transitive probing (Oracle Solaris 11.2's `transitive-probing`): a group NIC without a
//! test address of its own (an *alternate*: a standby, an inactive NIC, a NIC holding no data
//! address) sends link-layer probes to an *active* NIC of its group, one whose own probes
//! succeed, and is healthy when that NIC answers.
//!
//! The request leaves the alternate as an Ethernet frame of [`LINK_PROBE_ETHERTYPE`] to the
//! active NIC's MAC. The active NIC's ingress program answers it in the kernel: it turns the
//! frame around (addresses swapped, [`LinkProbeOp::Answer`], its own ifindex and
//! [`answer_tag`]) and sends it back out of the same NIC. The alternate's ingress program
//! matches the answer as it matches ICMP replies, with a kernel time stamp.
//!
//! Both ends are NICs of this host, so both tags are keyed with the run's probe key: a host
//! on the link that saw a request can neither answer it (the answer tag) nor make a request
//! the active NIC would answer (the probe tag).

use crate::{ProbeKind, keyed_word, probe_tag};

/// The EtherType of mpath's link-layer probes: IEEE 802's Local Experimental EtherType 1
/// (0x88b5), which IEEE reserves for local protocols and never assigns. Oracle's probes use
/// 0x881b, an EtherType registered to Oracle for its own frames: frames of that type from
/// mpath could meet Solaris hosts' DLMP and IPMP on the same link and be taken for theirs.
/// Frames of this type that are not mpath's (another local experiment) fail the magic and are
/// left alone.
pub const LINK_PROBE_ETHERTYPE: u16 = 0x88b5;

/// What a link-layer probe frame is.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkProbeOp {
    /// From an alternate to an active NIC.
    Request = 0,
    /// The active NIC's answer, back to the alternate.
    Answer = 1,
}

impl LinkProbeOp {
    #[inline(always)]
    pub fn from_u32(value: u32) -> Option<LinkProbeOp> {
        match value {
            0 => Some(LinkProbeOp::Request),
            1 => Some(LinkProbeOp::Answer),
            _ => None,
        }
    }
}

/// The payload of a link-layer probe frame, after the Ethernet header. Native byte order:
/// only this host writes and reads it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkProbe {
    /// [`crate::PROBE_MAGIC`].
    pub magic: u32,
    /// A [`LinkProbeOp`] as its number.
    pub op: u32,
    /// ifindex of the alternate that sent the request.
    pub ifindex: u32,
    pub seq: u32,
    /// [`probe_tag`] of `ifindex` and `seq` as [`ProbeKind::Transitive`].
    pub tag: u64,
    /// CLOCK_MONOTONIC nanoseconds when mpathd handed the request to the kernel.
    pub sent_ns: u64,
    /// ifindex of the NIC that answered (0 in a request).
    pub responder: u32,
    pub _pad: u32,
    /// [`answer_tag`] of `responder` and `seq` (0 in a request).
    pub answer_tag: u64,
    /// When the responder's program answered (bpf_ktime_get_ns; 0 in a request).
    pub answered_ns: u64,
}

/// Length of a link-layer probe's payload.
pub const LINK_PROBE_LEN: usize = core::mem::size_of::<LinkProbe>();

impl LinkProbe {
    /// The request of alternate `ifindex`'s probe `seq`, sent at `sent_ns`.
    pub fn request(key: [u64; 2], ifindex: u32, seq: u32, sent_ns: u64) -> LinkProbe {
        LinkProbe {
            magic: crate::PROBE_MAGIC,
            op: LinkProbeOp::Request as u32,
            ifindex,
            seq,
            tag: probe_tag(key, ifindex, seq, ProbeKind::Transitive),
            sent_ns,
            ..LinkProbe::default()
        }
    }

    /// The answer NIC `responder` gives to this request at `now_ns`.
    #[inline(always)]
    pub fn answered(mut self, key: [u64; 2], responder: u32, now_ns: u64) -> LinkProbe {
        self.op = LinkProbeOp::Answer as u32;
        self.responder = responder;
        self.answer_tag = answer_tag(key, responder, self.seq);
        self.answered_ns = now_ns;
        self
    }

    /// `None` for an op this build does not know.
    #[inline(always)]
    pub fn op(&self) -> Option<LinkProbeOp> {
        LinkProbeOp::from_u32(self.op)
    }

    /// Whether `tag` is the request's own under `key`.
    #[inline(always)]
    pub fn tag_is_valid(&self, key: [u64; 2]) -> bool {
        self.tag == probe_tag(key, self.ifindex, self.seq, ProbeKind::Transitive)
    }

    /// Whether `answer_tag` is `responder`'s under `key`.
    #[inline(always)]
    pub fn answer_tag_is_valid(&self, key: [u64; 2]) -> bool {
        self.answer_tag == answer_tag(key, self.responder, self.seq)
    }

    /// The payload's bytes, as they go on the wire after the Ethernet header.
    pub fn to_bytes(self) -> [u8; LINK_PROBE_LEN] {
        // SAFETY: `LinkProbe` is repr(C) integers without padding (its size is checked in the
        // tests), so its bytes are all initialised.
        unsafe { core::mem::transmute::<LinkProbe, [u8; LINK_PROBE_LEN]>(self) }
    }

    /// The payload in `bytes`, from the wire.
    #[inline(always)]
    pub fn from_bytes(bytes: &[u8; LINK_PROBE_LEN]) -> LinkProbe {
        // SAFETY: any bytes are a valid `LinkProbe` (integers only); the read makes no
        // alignment assumption.
        unsafe { bytes.as_ptr().cast::<LinkProbe>().read_unaligned() }
    }
}

/// The tag NIC `responder` puts in its answer to probe `seq`: [`probe_tag`]'s hash with both
/// kind bits set, so no probe's tag is ever an answer's. Only this host's kernel makes it:
/// whoever saw a request on the link cannot answer it for the active NIC.
#[inline(always)]
pub fn answer_tag(key: [u64; 2], responder: u32, seq: u32) -> u64 {
    keyed_word(key, responder | (3 << 30), seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u64; 2] = [7, 9];

    #[test]
    fn the_payload_has_no_implicit_padding() {
        assert_eq!(LINK_PROBE_LEN, 4 * 4 + 8 * 2 + 4 * 2 + 8 * 2);
    }

    #[test]
    fn an_answer_carries_both_tags_and_its_bytes_round_trip() {
        let request = LinkProbe::request(KEY, 4, 1000, 55);
        assert!(request.tag_is_valid(KEY));
        assert!(!request.tag_is_valid([7, 10]));
        assert_eq!(request.op(), Some(LinkProbeOp::Request));
        let answer = request.answered(KEY, 2, 66);
        assert_eq!(answer.op(), Some(LinkProbeOp::Answer));
        assert!(answer.tag_is_valid(KEY) && answer.answer_tag_is_valid(KEY));
        assert_eq!((answer.responder, answer.answered_ns), (2, 66));
        assert_eq!(LinkProbe::from_bytes(&answer.to_bytes()), answer);
        // Another responder's name under the same tag, or a request's tag as an answer's.
        let mut forged = answer;
        forged.responder = 3;
        assert!(!forged.answer_tag_is_valid(KEY));
        forged = request;
        forged.responder = 2;
        forged.answer_tag = request.tag;
        assert!(!forged.answer_tag_is_valid(KEY));
    }

    #[test]
    fn a_link_answer_names_its_responder() {
        let mac = [2, 0, 0, 0, 0, 9];
        let reply = crate::ProbeReply::link_answer(4, 1000, 7, mac, 55, 66);
        assert_eq!(reply.responder(), Some((7, mac)));
        assert_eq!(reply.kind(), Some(ProbeKind::Transitive));
        let icmp = crate::ProbeReply::new(4, 1000, "192.0.2.1".parse().unwrap(), 55, 66);
        assert_eq!(icmp.responder(), None);
    }

    #[test]
    fn an_answer_tag_is_never_a_probe_tag() {
        for kind in [
            ProbeKind::Target,
            ProbeKind::Discovery,
            ProbeKind::Transitive,
        ] {
            assert_ne!(answer_tag(KEY, 4, 1000), probe_tag(KEY, 4, 1000, kind));
        }
        assert_ne!(
            probe_tag(KEY, 4, 1000, ProbeKind::Transitive),
            probe_tag(KEY, 4, 1000, ProbeKind::Discovery)
        );
    }
}
