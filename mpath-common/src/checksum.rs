//! Internet checksum (RFC 1071), one implementation for both sides: the XDP program sums
//! fixed-size probe messages ([`add_words`], a loop the verifier can bound) to refuse
//! corrupted replies; mpathd seals its probes and announcements, and the tests their packets,
//! with [`internet_checksum`].

/// Adds big-endian 16-bit words of `bytes` to a running one's-complement sum.
#[inline(always)]
pub fn add_words<const N: usize>(mut sum: u32, bytes: &[u8; N]) -> u32 {
    let mut i = 0;
    while i + 1 < N {
        sum += u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    if N % 2 == 1 {
        sum += u32::from(bytes[N - 1]) << 8;
    }
    sum
}

/// Adds big-endian 16-bit words of a message of any length (an odd last byte is padded with
/// zero).
pub fn add_slice(sum: u32, bytes: &[u8]) -> u32 {
    bytes.chunks(2).fold(sum, |sum, pair| {
        sum + u32::from(u16::from_be_bytes([
            pair[0],
            pair.get(1).copied().unwrap_or(0),
        ]))
    })
}

/// The checksum to write into a message (its checksum field zero) whose pseudo-header sums
/// to `pseudo` (0 for ICMP). Over a message that holds its checksum it is 0 exactly when the
/// message is intact.
pub fn internet_checksum(pseudo: u32, bytes: &[u8]) -> u16 {
    !fold(add_slice(pseudo, bytes))
}

/// Folds a running sum to 16 bits; a message whose sum includes its own checksum field is
/// intact when this returns 0xffff.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Sum of the IPv6 pseudo-header that ICMPv6 checksums cover (RFC 8200 section 8.1).
#[inline(always)]
pub fn ipv6_pseudo_header(src: &[u8; 16], dst: &[u8; 16], len: u32, next_header: u8) -> u32 {
    let sum = add_words(add_words(0, src), dst);
    sum + (len >> 16) + (len & 0xffff) + u32::from(next_header)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes the checksum a sender would put at `at`.
    fn seal<const N: usize>(pseudo: u32, msg: &mut [u8; N], at: usize) {
        msg[at] = 0;
        msg[at + 1] = 0;
        let c = !fold(add_words(pseudo, msg));
        msg[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }

    #[test]
    fn rfc1071_example() {
        // The worked example of RFC 1071 section 3: words 0001 f203 f4f5 f6f7 sum to ddf2.
        let bytes = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(add_words(0, &bytes)), 0xddf2);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(fold(add_words(0, &[0x12, 0x34, 0x56])), 0x1234 + 0x5600);
        assert_eq!(fold(add_slice(0, &[0x12, 0x34, 0x56])), 0x1234 + 0x5600);
    }

    #[test]
    fn slices_sum_as_fixed_size_messages_do() {
        let mut msg = [0u8; 41];
        for (i, b) in msg.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(91);
        }
        assert_eq!(add_slice(7, &msg), add_words(7, &msg));
        let checksum = internet_checksum(7, &msg);
        assert_eq!(checksum, !fold(add_words(7, &msg)));
        msg[4..6].copy_from_slice(&[0, 0]);
        let sealed_at_4 = internet_checksum(0, &msg);
        msg[4..6].copy_from_slice(&sealed_at_4.to_be_bytes());
        assert_eq!(internet_checksum(0, &msg), 0, "intact once sealed");
    }

    #[test]
    fn sealed_message_verifies_and_any_bit_flip_is_caught() {
        let mut msg = [0u8; 40];
        for (i, b) in msg.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37);
        }
        seal(0, &mut msg, 2);
        assert_eq!(fold(add_words(0, &msg)), 0xffff);
        for bit in 0..(40 * 8) {
            let mut bad = msg;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert_ne!(
                fold(add_words(0, &bad)),
                0xffff,
                "flip of bit {bit} not caught"
            );
        }
    }

    #[test]
    fn ipv6_pseudo_header_changes_the_sum() {
        let src = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let dst = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        let pseudo = ipv6_pseudo_header(&src, &dst, 40, 58);
        let mut msg = [0u8; 40];
        msg[0] = 129;
        seal(pseudo, &mut msg, 2);
        assert_eq!(fold(add_words(pseudo, &msg)), 0xffff);
        let other = ipv6_pseudo_header(&dst, &[0; 16], 40, 58);
        assert_ne!(fold(add_words(other, &msg)), 0xffff);
    }
}
