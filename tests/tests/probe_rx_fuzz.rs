//! Fuzzes both probe-reply matchers (tc ingress and XDP) in the kernel (BPF_PROG_TEST_RUN) with thousands of
//! random frames, mutated replies and valid replies, and holds every verdict to an oracle
//! written here from the spec rather than from the program.
//!
//! Runs are deterministic: each case's frame comes from a fixed seed and its case number
//! (SplitMix64). A failure prints the seed, the case and the frame in hex; another seed can
//! be tried with `MPATH_FUZZ_SEED=0x...`.

use std::{
    fmt::{self, Write as _},
    mem::offset_of,
    net::{Ipv4Addr, Ipv6Addr},
};

use aya::programs::ProgramError;
use mpath_common::{
    PROBE_ICMP_ID, PROBE_ICMP_LEN, PROBE_MAGIC, ProbeKind, ProbePayload, ProbeReply, RejectReason,
    probe_tag,
};
use mpath_ctl::datapath::ProbeRx;
use mpath_tests::{
    matcher::{IFINDEX, KEY, MATCHERS, Rig, SLOT, TEST_V4, TEST_V6, Verdict},
    packets::{
        Reply, icmpv6_pseudo_sum, insert_v6_fragment_header, internet_checksum, reseal_icmp,
        reseal_ipv4_header,
    },
};

const DEFAULT_SEED: u64 = 0x6d70_6174_685f_667a;
const SEED_VAR: &str = "MPATH_FUZZ_SEED";
/// Cases per family: together a few seconds of kernel runs.
const CASES: u64 = 50_000;
/// Failures described in full when a run fails; the rest are only counted.
const FAILURES_SHOWN: usize = 5;

const ETH_HLEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_ICMPV6: u8 = 58;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMPV6_ECHO_REPLY: u8 = 129;
/// IPv4 more-fragments flag and fragment offset: either makes a packet a fragment.
const IPV4_FRAGMENT_BITS: u16 = 0x3fff;
/// Where the ICMPv6 message of an IPv6 frame without extension headers starts.
const ICMPV6_AT: usize = ETH_HLEN + 40;

#[test]
fn random_frames_are_never_taken_for_replies() {
    let tally = fuzz(Family::Random);
    assert!(
        tally.ran() > CASES / 2,
        "most frames reach the program: {tally}"
    );
    assert_eq!(tally.matched, 0, "{tally}");
}

#[test]
fn mutated_replies_count_only_when_still_valid() {
    let tally = fuzz(Family::Mutated);
    let (matched, turned_away) = (tally.matched, tally.passed + tally.rejected_total());
    assert!(
        matched >= CASES / 20,
        "too few mutants stayed valid: {tally}"
    );
    assert!(
        turned_away >= CASES / 2,
        "too few mutants were invalid: {tally}"
    );
    for reason in RejectReason::ALL {
        assert!(
            tally.rejected[reason as usize] >= CASES / 1000,
            "mutations rarely reach the {} check: {tally}",
            reason.label()
        );
    }
}

#[test]
fn valid_replies_always_match() {
    let tally = fuzz(Family::Valid);
    assert_eq!(tally.matched, CASES, "{tally}");
}

/// Where a case's frame comes from.
#[derive(Clone, Copy, Debug)]
enum Family {
    /// Random bytes of random length, some behind a plausible IPv4/IPv6 header.
    Random,
    /// A valid reply spoiled (or not) by 1 to 4 random mutations.
    Mutated,
    /// Valid replies in every shape a target may send: IPv4 options, link-layer padding, any
    /// TTL, flow label, source, sequence number and send time.
    Valid,
}

/// Runs `CASES` cases of `family` on each matcher, on a fresh rig; panics describing the
/// first failures. The tally is the tc matcher's; the XDP matcher's must agree with it, as
/// both hold to one oracle (only the frames the kernel refuses to run differ, see
/// [`kernel_refuses`]).
fn fuzz(family: Family) -> Tally {
    let tallies: Vec<Tally> = MATCHERS
        .into_iter()
        .map(|matcher| fuzz_one(Rig::new(matcher), family))
        .collect();
    let [tc, xdp] = <[Tally; 2]>::try_from(tallies).expect("two matchers");
    let verdicts = |t: &Tally| (t.matched, t.rejected, t.passed + t.refused);
    assert_eq!(
        verdicts(&tc),
        verdicts(&xdp),
        "the matchers disagree on {family:?}: tc {tc}; XDP {xdp}"
    );
    tc
}

fn fuzz_one(mut rig: Rig, family: Family) -> Tally {
    let seed = match std::env::var(SEED_VAR) {
        Ok(text) => parse_seed(&text).unwrap_or_else(|| panic!("{SEED_VAR}={text} is no u64")),
        Err(_) => DEFAULT_SEED,
    };
    let mut tally = Tally::default();
    let mut failures = Vec::new();
    let mut failed = 0;
    for case in 0..CASES {
        // Each case stands alone, as if a second apart: the NIC's reply budget (see
        // `a_flood_of_valid_replies_on_one_nic_is_capped...` in probe_rx.rs) is not what the
        // fuzzer tests, and thousands of valid cases would spend it.
        rig.datapath
            .maps
            .clear_counters(SLOT)
            .expect("reset the NIC's counters and reply budget");
        let mut rng = Rng::for_case(seed, family, case);
        let mut log = Vec::new();
        let frame = match family {
            Family::Random => random_frame(&mut rng, &mut log),
            Family::Mutated => mutated_reply(&mut rng, &mut log),
            Family::Valid => valid_reply(&mut rng, &mut log),
        };
        let expected = oracle(&frame);
        match check(&mut rig, &frame, expected) {
            Ok(outcome) => tally.add(outcome),
            Err(problem) => {
                failed += 1;
                if failures.len() < FAILURES_SHOWN {
                    failures.push(format!(
                        "case {case}: {problem}\n    made by: {}\n    oracle: {}\n    frame ({} bytes): {}",
                        log.join(", "),
                        describe(expected),
                        frame.len(),
                        hex(&frame)
                    ));
                }
            }
        }
    }
    println!("{} {family:?} (seed {seed:#x}): {tally}", rig.matcher);
    assert!(
        failed == 0,
        "{} {family:?}: {failed} of {CASES} cases failed (seed {seed:#x}, {SEED_VAR} to change it); \
         first {}:\n  {}\noutcomes of the others: {tally}",
        rig.matcher,
        failures.len(),
        failures.join("\n  ")
    );
    tally
}

fn parse_seed(text: &str) -> Option<u64> {
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// What the program did with a frame it handled correctly.
#[derive(Clone, Copy, Debug)]
enum Outcome {
    /// Dropped and queued as a reply.
    Matched,
    /// Passed and counted as a rejected reply.
    Rejected(RejectReason),
    /// Passed without counting it as a reply at all.
    Passed,
    /// The kernel refused to run the program on it ([`kernel_refuses`]).
    Refused,
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    matched: u64,
    rejected: [u64; RejectReason::COUNT],
    passed: u64,
    refused: u64,
}

impl Tally {
    fn add(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Matched => self.matched += 1,
            Outcome::Rejected(reason) => self.rejected[reason as usize] += 1,
            Outcome::Passed => self.passed += 1,
            Outcome::Refused => self.refused += 1,
        }
    }

    fn rejected_total(&self) -> u64 {
        self.rejected.iter().sum()
    }

    /// Cases the program ran on.
    fn ran(&self) -> u64 {
        self.matched + self.rejected_total() + self.passed
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} matched, {} passed uncounted, {} refused by the kernel, {} rejected (",
            self.matched,
            self.passed,
            self.refused,
            self.rejected_total()
        )?;
        for (i, reason) in RejectReason::ALL.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{} {}", reason.label(), self.rejected[i])?;
        }
        write!(f, ")")
    }
}

/// Runs the program on `frame` and checks everything it did against `expected`: the reply it
/// must queue, or (when invalid) that it lets the frame pass without queueing or counting a
/// reply.
fn check(
    rig: &mut Rig,
    frame: &[u8],
    expected: Result<ProbeReply, Invalid>,
) -> Result<Outcome, String> {
    let before = rig.counters();
    let last_before = last_reply(rig)?;
    let verdict = match rig.try_run(frame) {
        Ok(verdict) => verdict,
        Err(ProgramError::SyscallError(e))
            if kernel_refuses(rig.matcher, frame)
                && e.io_error.raw_os_error() == Some(libc::EINVAL) =>
        {
            return if rig.counters() == before {
                Ok(Outcome::Refused)
            } else {
                Err("refused by the kernel, yet counters moved".into())
            };
        }
        Err(e) => return Err(format!("BPF_PROG_TEST_RUN: {e}")),
    };
    let after = rig.counters();
    let queued = rig.queued();
    let last_after = last_reply(rig)?;

    let mut problems = Vec::new();
    if after.rx_packets != before.rx_packets + 1
        || after.rx_bytes != before.rx_bytes + frame.len() as u64
    {
        problems.push("rx counters did not count exactly this frame".to_owned());
    }
    if after.probe_replies_lost != before.probe_replies_lost {
        problems.push("a reply was lost on a ring buffer that is drained every case".to_owned());
    }
    let moved: Vec<(RejectReason, u64)> = RejectReason::ALL
        .into_iter()
        .filter_map(|r| {
            let delta = after.rejected[r as usize].wrapping_sub(before.rejected[r as usize]);
            (delta != 0).then_some((r, delta))
        })
        .collect();
    let replies_delta = after.probe_replies.wrapping_sub(before.probe_replies);

    let outcome = match expected {
        Ok(want) => {
            if verdict != Verdict::Drop {
                problems.push(format!("valid reply not dropped (verdict {verdict:?})"));
            }
            match queued.as_slice() {
                [got] => {
                    let stamped = ProbeReply {
                        received_ns: got.received_ns,
                        ..want
                    };
                    if *got != stamped {
                        problems.push(format!("queued {got:?}, not {stamped:?}"));
                    }
                    if got.received_ns == 0 {
                        problems.push("reply not stamped with kernel time".to_owned());
                    }
                    if last_after != Some(*got) {
                        problems.push(format!("last reply is {last_after:?}"));
                    }
                }
                other => problems.push(format!("valid reply queued {} times", other.len())),
            }
            if replies_delta != 1 {
                problems.push(format!("probe_replies moved by {replies_delta}"));
            }
            if !moved.is_empty() {
                problems.push(format!("valid reply counted as rejected: {moved:?}"));
            }
            Outcome::Matched
        }
        Err(_) => {
            if verdict != Verdict::Pass {
                problems.push(format!("invalid frame not passed (verdict {verdict:?})"));
            }
            if !queued.is_empty() {
                problems.push(format!("invalid frame queued as {queued:?}"));
            }
            if replies_delta != 0 {
                problems.push(format!("probe_replies moved by {replies_delta}"));
            }
            if last_after != last_before {
                problems.push("last reply overwritten".to_owned());
            }
            match moved.as_slice() {
                [] => Outcome::Passed,
                [(reason, 1)] => Outcome::Rejected(*reason),
                more => {
                    problems.push(format!("reject counters moved: {more:?}"));
                    Outcome::Passed
                }
            }
        }
    };
    if problems.is_empty() {
        Ok(outcome)
    } else {
        Err(problems.join("; "))
    }
}

/// Whether BPF_PROG_TEST_RUN refuses to run the matcher on `frame`: any frame shorter than an
/// Ethernet header, and for the tc matcher, whose test runs build a socket buffer, an IPv4 or
/// IPv6 frame shorter than its fixed header. (A real NIC can deliver such a frame to tc
/// ingress; the XDP runs show the matcher passes it.)
fn kernel_refuses(matcher: ProbeRx, frame: &[u8]) -> bool {
    let l3_header = match ethertype(frame) {
        Some(ETHERTYPE_IPV4) => 20,
        Some(ETHERTYPE_IPV6) => 40,
        _ => 0,
    };
    frame.len() < ETH_HLEN || (matcher == ProbeRx::Tc && frame.len() < ETH_HLEN + l3_header)
}

fn last_reply(rig: &Rig) -> Result<Option<ProbeReply>, String> {
    rig.datapath
        .maps
        .last_reply(SLOT)
        .map_err(|e| format!("reading the last reply: {e}"))
}

// ---- The oracle ----------------------------------------------------------------------------

/// Why a frame is not a reply to mpathd: the first rule of the oracle it breaks.
type Invalid = &'static str;

/// The reply a correct matcher queues for `frame`, or why it must pass the frame on.
///
/// A frame is a reply to mpathd exactly when it is an IPv4 or IPv6 packet the kernel's IP
/// layer would accept (right version, intact IPv4 header), unfragmented, addressed to the
/// NIC's test address, carrying nothing but one ICMP/ICMPv6 echo reply of exactly a probe's
/// length with a correct checksum, mpathd's identifier, and a payload with the magic, the
/// tag of its NIC and sequence number under this run's key, this NIC's ifindex and a
/// sequence number whose low 16 bits are the echo sequence number. Bytes after the IP packet are link-layer padding and do not matter; IPv4
/// options are allowed and not looked into.
fn oracle(frame: &[u8]) -> Result<ProbeReply, Invalid> {
    let ethertype = ethertype(frame).ok_or("shorter than an Ethernet header")?;
    let packet = &frame[ETH_HLEN..];
    match ethertype {
        ETHERTYPE_IPV4 => oracle_v4(packet),
        ETHERTYPE_IPV6 => oracle_v6(packet),
        _ => Err("neither IPv4 nor IPv6"),
    }
}

fn oracle_v4(packet: &[u8]) -> Result<ProbeReply, Invalid> {
    let version_ihl = *packet.first().ok_or("no IPv4 header")?;
    let header_len = usize::from(version_ihl & 0x0f) * 4;
    rule(version_ihl >> 4 == 4, "IP version is not 4")?;
    rule(header_len >= 20, "IHL below 5")?;
    let header = packet.get(..header_len).ok_or("IPv4 header cut short")?;
    rule(
        internet_checksum(0, header) == 0,
        "IPv4 header checksum wrong",
    )?;
    rule(
        be16(&header[6..8]) & IPV4_FRAGMENT_BITS == 0,
        "IPv4 fragment",
    )?;
    rule(header[9] == IPPROTO_ICMP, "not ICMP")?;
    rule(
        header[16..20] == TEST_V4.octets(),
        "not to the test address",
    )?;
    let total_len = usize::from(be16(&header[2..4]));
    rule(
        total_len == header_len + PROBE_ICMP_LEN,
        "IPv4 total length is not a probe's",
    )?;
    let message = packet
        .get(header_len..total_len)
        .ok_or("frame ends before the IPv4 packet")?;
    rule(internet_checksum(0, message) == 0, "ICMP checksum wrong")?;
    let mut target = [0; 16];
    target[..4].copy_from_slice(&header[12..16]);
    probe_echo(message, ICMP_ECHO_REPLY, 4, target)
}

fn oracle_v6(packet: &[u8]) -> Result<ProbeReply, Invalid> {
    let header = packet.get(..40).ok_or("IPv6 header cut short")?;
    let src: [u8; 16] = header[8..24].try_into().expect("16 bytes");
    let dst: [u8; 16] = header[24..40].try_into().expect("16 bytes");
    rule(header[0] >> 4 == 6, "IP version is not 6")?;
    rule(
        header[6] == IPPROTO_ICMPV6,
        "next header is not ICMPv6 (fragment or other)",
    )?;
    rule(dst == TEST_V6.octets(), "not to the test address")?;
    rule(
        usize::from(be16(&header[4..6])) == PROBE_ICMP_LEN,
        "IPv6 payload length is not a probe's",
    )?;
    let message = packet
        .get(40..40 + PROBE_ICMP_LEN)
        .ok_or("frame ends before the IPv6 packet")?;
    let pseudo = icmpv6_pseudo_sum(&src, &dst, PROBE_ICMP_LEN as u32);
    rule(
        internet_checksum(pseudo, message) == 0,
        "ICMPv6 checksum wrong",
    )?;
    probe_echo(message, ICMPV6_ECHO_REPLY, 6, src)
}

/// Checks the echo header and payload of an intact ICMP message of a probe's length.
fn probe_echo(
    message: &[u8],
    reply_type: u8,
    family: u32,
    target: [u8; 16],
) -> Result<ProbeReply, Invalid> {
    let payload = &message[8..];
    let u32_at =
        |offset: usize| u32::from_ne_bytes(payload[offset..offset + 4].try_into().unwrap());
    let u64_at =
        |offset: usize| u64::from_ne_bytes(payload[offset..offset + 8].try_into().unwrap());
    let seq = u32_at(offset_of!(ProbePayload, seq));
    rule(message[0] == reply_type, "not an echo reply")?;
    rule(message[1] == 0, "ICMP code is not 0")?;
    rule(
        be16(&message[4..6]) == PROBE_ICMP_ID,
        "not mpathd's echo identifier",
    )?;
    rule(
        u32_at(offset_of!(ProbePayload, magic)) == PROBE_MAGIC,
        "wrong magic",
    )?;
    let kind = ProbeKind::from_u32(u32_at(offset_of!(ProbePayload, kind)))
        .filter(|kind| *kind != ProbeKind::Transitive)
        .ok_or("not a kind of ICMP probe")?;
    rule(
        u64_at(offset_of!(ProbePayload, tag))
            == probe_tag(KEY, u32_at(offset_of!(ProbePayload, ifindex)), seq, kind),
        "wrong tag",
    )?;
    rule(
        u32_at(offset_of!(ProbePayload, ifindex)) == IFINDEX,
        "names another NIC",
    )?;
    rule(
        be16(&message[6..8]) == seq as u16,
        "echo sequence is not the payload's",
    )?;
    Ok(ProbeReply {
        ifindex: IFINDEX,
        seq,
        family,
        kind: kind as u32,
        target,
        sent_ns: u64_at(offset_of!(ProbePayload, sent_ns)),
        wire_ns: u64_at(offset_of!(ProbePayload, wire_ns)),
        received_ns: 0,
    })
}

fn rule(holds: bool, broken: Invalid) -> Result<(), Invalid> {
    if holds { Ok(()) } else { Err(broken) }
}

fn be16(bytes: &[u8]) -> u16 {
    u16::from_be_bytes([bytes[0], bytes[1]])
}

fn describe(expected: Result<ProbeReply, Invalid>) -> String {
    match expected {
        Ok(r) => format!("valid reply, seq {} family {}", r.seq, r.family),
        Err(why) => format!("invalid: {why}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

// ---- Frames ----------------------------------------------------------------------------------

/// Random bytes of length 0..200. Two in three get an IPv4 or IPv6 EtherType and version
/// (and often the ICMP protocol) so that random bytes also reach the IP and ICMP parsing.
fn random_frame(rng: &mut Rng, log: &mut Vec<String>) -> Vec<u8> {
    let len = rng.below(200);
    let mut frame = rng.bytes(len);
    match rng.below(3) {
        0 => log.push(format!("{} random bytes", frame.len())),
        shape => {
            let v6 = shape == 2;
            let (ethertype, version, proto_at, proto) = if v6 {
                (ETHERTYPE_IPV6, 0x60, ETH_HLEN + 6, IPPROTO_ICMPV6)
            } else {
                (ETHERTYPE_IPV4, 0x40, ETH_HLEN + 9, IPPROTO_ICMP)
            };
            write(&mut frame, 12, &ethertype.to_be_bytes());
            if let Some(b) = frame.get_mut(ETH_HLEN) {
                *b = version | (*b & 0x0f);
            }
            if rng.chance(1, 2) {
                write(&mut frame, proto_at, &[proto]);
            }
            log.push(format!(
                "{} random bytes behind an IPv{} header",
                frame.len(),
                if v6 { 6 } else { 4 }
            ));
        }
    }
    frame
}

/// A valid reply as some target may send it.
fn valid_reply(rng: &mut Rng, log: &mut Vec<String>) -> Vec<u8> {
    let seq = rng.u32();
    let mut reply = Reply::new(IFINDEX, KEY, seq);
    reply.payload.sent_ns = rng.u64();
    reply.payload.wire_ns = rng.u64();
    let mut frame = if rng.chance(1, 2) {
        let src = Ipv4Addr::from(rng.u32());
        // One in four carries 4 to 40 bytes of no-operation options.
        let option_words = if rng.chance(1, 4) {
            1 + rng.below(10)
        } else {
            0
        };
        let options = vec![1u8; 4 * option_words];
        let mut frame = reply.v4_with_options(src, TEST_V4, &options);
        frame[ETH_HLEN + 1] = rng.byte(); // DSCP/ECN
        write(&mut frame, ETH_HLEN + 4, &rng.u16().to_be_bytes()); // identification
        frame[ETH_HLEN + 6] = if rng.chance(1, 2) { 0x40 } else { 0 }; // don't fragment
        frame[ETH_HLEN + 8] = rng.byte(); // TTL
        reseal_ipv4_header(&mut frame);
        log.push(format!(
            "IPv4 reply seq {seq} from {src} with {} bytes of options",
            options.len()
        ));
        frame
    } else {
        let src = if rng.chance(1, 2) {
            Ipv6Addr::from((0xfe80_u128 << 112) | u128::from(rng.u64()))
        } else {
            Ipv6Addr::from((0x2001_0db8_u128 << 96) | u128::from(rng.u64()))
        };
        let mut frame = reply.v6(src, TEST_V6);
        frame[ETH_HLEN] = 0x60 | (rng.byte() & 0x0f); // traffic class and flow label
        write(&mut frame, ETH_HLEN + 1, &rng.bytes(3));
        frame[ETH_HLEN + 7] = rng.byte(); // hop limit
        log.push(format!("IPv6 reply seq {seq} from {src}"));
        frame
    };
    if rng.chance(1, 4) {
        let len = 1 + rng.below(32);
        let padding = rng.bytes(len);
        log.push(format!("{} bytes of link-layer padding", padding.len()));
        frame.extend(padding);
    }
    frame
}

/// A valid reply with 1 to 4 mutations, its checksums then often recomputed so that the
/// mutations reach the checks behind them.
fn mutated_reply(rng: &mut Rng, log: &mut Vec<String>) -> Vec<u8> {
    let mut frame = valid_reply(rng, log);
    for _ in 0..1 + rng.below(4) {
        mutate(rng, &mut frame, log);
    }
    if rng.chance(3, 4) && ethertype(&frame) == Some(ETHERTYPE_IPV4) {
        reseal_ipv4_header(&mut frame);
        log.push("IPv4 header checksum recomputed".to_owned());
    }
    if rng.chance(2, 3) {
        reseal_icmp(&mut frame);
        log.push("ICMP checksum recomputed".to_owned());
    }
    frame
}

fn mutate(rng: &mut Rng, frame: &mut Vec<u8>, log: &mut Vec<String>) {
    match rng.below(6) {
        0 if !frame.is_empty() => {
            let at = rng.below(frame.len());
            let mask = 1 + rng.below(255) as u8;
            frame[at] ^= mask;
            log.push(format!("byte {at} ^= {mask:#04x}"));
        }
        1 if !frame.is_empty() => {
            let len = if rng.chance(1, 2) {
                frame.len().saturating_sub(1 + rng.below(8))
            } else {
                rng.below(frame.len())
            };
            frame.truncate(len);
            log.push(format!("cut to {len} bytes"));
        }
        2 => {
            let len = 1 + rng.below(24);
            let extra = rng.bytes(len);
            log.push(format!("{} bytes appended", extra.len()));
            frame.extend(extra);
        }
        _ => rewrite_field(rng, frame, log),
    }
}

/// Rewrites one header or payload field of the (possibly already mutated) reply.
fn rewrite_field(rng: &mut Rng, frame: &mut Vec<u8>, log: &mut Vec<String>) {
    let v6 = match ethertype(frame) {
        Some(ETHERTYPE_IPV4) => false,
        Some(ETHERTYPE_IPV6) => true,
        _ => {
            log.push("field rewrite skipped: not IP".to_owned());
            return;
        }
    };
    let icmp_at = if v6 {
        ICMPV6_AT
    } else {
        ETH_HLEN + usize::from(frame.get(ETH_HLEN).map_or(5, |b| b & 0x0f)) * 4
    };
    let payload_at = |field: usize| icmp_at + 8 + field;
    let (what, at, bytes): (&str, usize, Vec<u8>) = match rng.below(17) {
        0 => {
            let at = if v6 { ETH_HLEN + 4 } else { ETH_HLEN + 2 };
            let now = frame.get(at..at + 2).map_or(0, be16);
            let len = match rng.below(3) {
                0 => now.wrapping_add(1 + rng.below(8) as u16),
                1 => now.wrapping_sub(1 + rng.below(8) as u16),
                _ => rng.u16(),
            };
            ("IP length", at, len.to_be_bytes().to_vec())
        }
        1 => {
            let old = frame.get(ETH_HLEN).copied().unwrap_or(0);
            let new = if rng.chance(1, 2) {
                (old & 0xf0) | (rng.byte() & 0x0f)
            } else {
                (rng.byte() & 0xf0) | (old & 0x0f)
            };
            ("IP version/IHL", ETH_HLEN, vec![new])
        }
        2 => {
            let at = if v6 { ETH_HLEN + 6 } else { ETH_HLEN + 9 };
            let any = rng.byte();
            let proto = rng.pick(&[
                0,
                IPPROTO_ICMP,
                6,
                17,
                IPPROTO_FRAGMENT,
                IPPROTO_ICMPV6,
                any,
            ]);
            ("IP protocol", at, vec![proto])
        }
        3 if v6 => {
            let any = rng.u16();
            let offset_flags = rng.pick(&[0x0001, 0x0000, 0x0008, any]);
            if frame.len() >= ICMPV6_AT {
                *frame = insert_v6_fragment_header(frame, offset_flags);
                log.push(format!(
                    "behind an IPv6 fragment header {offset_flags:#06x}"
                ));
            }
            return;
        }
        3 => {
            let offset = 1 + rng.below(0x1fff) as u16;
            let any = rng.u16();
            let flags = rng.pick(&[0x2000, 0x2000 | 0x4000, offset, 0x4000, any]);
            (
                "IPv4 flags/fragment offset",
                ETH_HLEN + 6,
                flags.to_be_bytes().to_vec(),
            )
        }
        4 => {
            let any = rng.byte();
            let kind = rng.pick(&[ICMP_ECHO_REPLY, 8, ICMPV6_ECHO_REPLY, 128, 3, any]);
            ("ICMP type", icmp_at, vec![kind])
        }
        5 => {
            let any = rng.byte();
            ("ICMP code", icmp_at + 1, vec![rng.pick(&[0, 1, any])])
        }
        6 => {
            let flipped = PROBE_ICMP_ID ^ (1 << rng.below(16));
            let any = rng.u16();
            let id = rng.pick(&[flipped, PROBE_ICMP_ID.swap_bytes(), any]);
            ("ICMP identifier", icmp_at + 4, id.to_be_bytes().to_vec())
        }
        7 => (
            "ICMP sequence",
            icmp_at + 6,
            rng.u16().to_be_bytes().to_vec(),
        ),
        8 => {
            let at = payload_at(offset_of!(ProbePayload, tag));
            let now = frame
                .get(at..at + 8)
                .map_or(0, |b| u64::from_ne_bytes(b.try_into().unwrap()));
            // Tags a forger could come up with: near misses, another key's, another
            // probe's of this key.
            let flipped = now ^ (1 << rng.below(64));
            let any = rng.u64();
            let other_key = probe_tag([KEY[0], KEY[1] ^ 1], IFINDEX, rng.u32(), ProbeKind::Target);
            let other_probe = probe_tag(KEY, IFINDEX, rng.u32(), ProbeKind::Target);
            let seq_at = payload_at(offset_of!(ProbePayload, seq));
            let seq = frame
                .get(seq_at..seq_at + 4)
                .map_or(0, |b| u32::from_ne_bytes(b.try_into().unwrap()));
            // This probe's tag had it been a discovery echo.
            let other_kind = probe_tag(KEY, IFINDEX, seq, ProbeKind::Discovery);
            let tag = rng.pick(&[
                flipped,
                now.swap_bytes(),
                any,
                other_key,
                other_probe,
                other_kind,
            ]);
            ("tag", at, tag.to_ne_bytes().to_vec())
        }
        9 => {
            let flipped = PROBE_MAGIC ^ (1 << rng.below(32));
            let any = rng.u32();
            let magic = rng.pick(&[flipped, PROBE_MAGIC.swap_bytes(), any]);
            (
                "magic",
                payload_at(offset_of!(ProbePayload, magic)),
                magic.to_ne_bytes().to_vec(),
            )
        }
        10 => {
            let ifindex = rng.below(4) as u32;
            if rng.chance(1, 2) {
                // Another NIC's genuine probe, tag and all.
                let seq_at = payload_at(offset_of!(ProbePayload, seq));
                if let Some(seq) = frame.get(seq_at..seq_at + 4) {
                    let seq = u32::from_ne_bytes(seq.try_into().unwrap());
                    let tag = probe_tag(KEY, ifindex, seq, ProbeKind::Target);
                    write(
                        frame,
                        payload_at(offset_of!(ProbePayload, tag)),
                        &tag.to_ne_bytes(),
                    );
                }
            }
            (
                "payload ifindex",
                payload_at(offset_of!(ProbePayload, ifindex)),
                ifindex.to_ne_bytes().to_vec(),
            )
        }
        11 => {
            let at = payload_at(offset_of!(ProbePayload, seq));
            let now = frame
                .get(at..at + 4)
                .map_or(0, |b| u32::from_ne_bytes(b.try_into().unwrap()));
            let seq = match rng.below(3) {
                0 => now ^ ((1 + rng.below(0xffff) as u32) << 16), // same low 16 bits
                1 => now ^ (1 << rng.below(16)),
                _ => {
                    // a consistent new sequence number in both places
                    let seq = rng.u32();
                    write(frame, icmp_at + 6, &(seq as u16).to_be_bytes());
                    seq
                }
            };
            ("payload sequence", at, seq.to_ne_bytes().to_vec())
        }
        12 => {
            let (at, addr) = if v6 {
                let choices = [
                    TEST_V6.octets(),
                    rng.u128().to_be_bytes(),
                    flip_bit(rng, TEST_V6.octets()),
                ];
                let addr = rng.pick(&choices);
                (ETH_HLEN + 24, addr.to_vec())
            } else {
                let choices = [
                    TEST_V4.octets(),
                    rng.u32().to_be_bytes(),
                    flip_bit(rng, TEST_V4.octets()),
                ];
                let addr = rng.pick(&choices);
                (ETH_HLEN + 16, addr.to_vec())
            };
            ("destination", at, addr)
        }
        13 => {
            let (at, len) = if v6 {
                (ETH_HLEN + 8, 16)
            } else {
                (ETH_HLEN + 12, 4)
            };
            ("source", at, rng.bytes(len))
        }
        15 => {
            let at = payload_at(offset_of!(ProbePayload, kind));
            let any = rng.u32();
            let kind = rng.pick(&[0, 1, 2, any]);
            let retagged = ProbeKind::from_u32(kind).filter(|k| *k != ProbeKind::Target);
            if let Some(retagged) = retagged.filter(|_| rng.chance(1, 2)) {
                // This probe made a genuine discovery echo, tag and all, or carries a
                // link-layer probe's tag, which no ICMP reply may.
                let seq_at = payload_at(offset_of!(ProbePayload, seq));
                if let Some(seq) = frame.get(seq_at..seq_at + 4) {
                    let seq = u32::from_ne_bytes(seq.try_into().unwrap());
                    let tag = probe_tag(KEY, IFINDEX, seq, retagged);
                    write(
                        frame,
                        payload_at(offset_of!(ProbePayload, tag)),
                        &tag.to_ne_bytes(),
                    );
                }
            }
            ("kind", at, kind.to_ne_bytes().to_vec())
        }
        14 => {
            let any = rng.u16();
            let ethertype = rng.pick(&[ETHERTYPE_IPV4, ETHERTYPE_IPV6, 0x0806, any]);
            ("EtherType", 12, ethertype.to_be_bytes().to_vec())
        }
        _ => {
            let field = rng.pick(&[
                offset_of!(ProbePayload, sent_ns),
                offset_of!(ProbePayload, wire_ns),
            ]);
            (
                "send time",
                payload_at(field),
                rng.u64().to_ne_bytes().to_vec(),
            )
        }
    };
    if write(frame, at, &bytes) {
        log.push(format!("{what} := {}", hex(&bytes)));
    } else {
        log.push(format!("{what} rewrite skipped: frame too short"));
    }
}

fn flip_bit<const N: usize>(rng: &mut Rng, mut bytes: [u8; N]) -> [u8; N] {
    bytes[rng.below(N)] ^= 1 << rng.below(8);
    bytes
}

fn ethertype(frame: &[u8]) -> Option<u16> {
    frame.get(12..ETH_HLEN).map(be16)
}

/// Writes `bytes` at `at` when the frame holds them all; says whether it did.
fn write(frame: &mut [u8], at: usize, bytes: &[u8]) -> bool {
    match frame.get_mut(at..at + bytes.len()) {
        Some(dst) => {
            dst.copy_from_slice(bytes);
            true
        }
        None => false,
    }
}

/// SplitMix64: tiny and fully determined by its seed, so a seed and a case number give the
/// same frame on every machine and with every version of every crate.
struct Rng(u64);

impl Rng {
    /// The generator of one case: independent of every other case, so one case can be
    /// replayed alone.
    fn for_case(seed: u64, family: Family, case: u64) -> Rng {
        Rng(mix(seed ^ mix(((family as u64) << 48) | case)))
    }

    fn u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    fn u128(&mut self) -> u128 {
        (u128::from(self.u64()) << 64) | u128::from(self.u64())
    }

    fn u32(&mut self) -> u32 {
        (self.u64() >> 32) as u32
    }

    fn u16(&mut self) -> u16 {
        (self.u64() >> 48) as u16
    }

    fn byte(&mut self) -> u8 {
        (self.u64() >> 56) as u8
    }

    /// A number in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.u64() % n as u64) as usize
    }

    fn chance(&mut self, num: usize, den: usize) -> bool {
        self.below(den) < num
    }

    fn pick<T: Copy>(&mut self, choices: &[T]) -> T {
        choices[self.below(choices.len())]
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
}

/// SplitMix64's output function: a bijection that scatters nearby inputs.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
