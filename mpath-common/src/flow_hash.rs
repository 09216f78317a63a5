//! Flow hash for packets whose socket gave them none (unconnected UDP, raw sockets), so every
//! packet of a flow picks the same bucket without running the kernel's flow dissector; and a
//! hash of a destination alone, by which the source hook picks a source per destination.

/// The murmur3 finaliser: spreads every input bit over the whole word.
#[inline(always)]
fn fmix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[inline(always)]
fn mix(h: u32, word: u32) -> u32 {
    (h ^ word).wrapping_mul(0x9e37_79b1).rotate_left(13)
}

/// Hash of an IPv4 flow; `ports` is the L4 port pair as read from the packet, 0 when the
/// protocol has none or the packet is a fragment.
#[inline(always)]
pub fn v4(src: [u8; 4], dst: [u8; 4], proto: u8, ports: [u8; 4]) -> u32 {
    let h = mix(u32::from(proto), u32::from_ne_bytes(src));
    let h = mix(h, u32::from_ne_bytes(dst));
    fmix(mix(h, u32::from_ne_bytes(ports)))
}

/// Hash of an IPv6 flow; see [`v4`].
#[inline(always)]
pub fn v6(src: &[u8; 16], dst: &[u8; 16], proto: u8, ports: [u8; 4]) -> u32 {
    let mut h = u32::from(proto) ^ 0x6;
    let mut i = 0;
    while i < 16 {
        h = mix(
            h,
            u32::from_ne_bytes([src[i], src[i + 1], src[i + 2], src[i + 3]]),
        );
        h = mix(
            h,
            u32::from_ne_bytes([dst[i], dst[i + 1], dst[i + 2], dst[i + 3]]),
        );
        i += 4;
    }
    fmix(mix(h, u32::from_ne_bytes(ports)))
}

/// Hash of an IPv6 destination alone: every connection to one destination gets the same
/// source, and different destinations spread over the sources.
#[inline(always)]
pub fn destination(dst: &[u8; 16]) -> u32 {
    let mut h = 0x5eed;
    let mut i = 0;
    while i < 16 {
        h = mix(
            h,
            u32::from_ne_bytes([dst[i], dst[i + 1], dst[i + 2], dst[i + 3]]),
        );
        i += 4;
    }
    fmix(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_flow_same_hash_and_every_field_counts() {
        let base = v4(
            [192, 0, 2, 19],
            [192, 0, 2, 1],
            17,
            [0x9c, 0x40, 0x27, 0x0f],
        );
        assert_eq!(
            base,
            v4(
                [192, 0, 2, 19],
                [192, 0, 2, 1],
                17,
                [0x9c, 0x40, 0x27, 0x0f]
            )
        );
        assert_ne!(
            base,
            v4(
                [192, 0, 2, 20],
                [192, 0, 2, 1],
                17,
                [0x9c, 0x40, 0x27, 0x0f]
            )
        );
        assert_ne!(
            base,
            v4(
                [192, 0, 2, 19],
                [192, 0, 2, 2],
                17,
                [0x9c, 0x40, 0x27, 0x0f]
            )
        );
        assert_ne!(
            base,
            v4([192, 0, 2, 19], [192, 0, 2, 1], 6, [0x9c, 0x40, 0x27, 0x0f])
        );
        assert_ne!(
            base,
            v4(
                [192, 0, 2, 19],
                [192, 0, 2, 1],
                17,
                [0x9c, 0x41, 0x27, 0x0f]
            )
        );
        let a = [
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x19,
        ];
        let mut b = a;
        b[15] = 1;
        assert_ne!(v6(&a, &b, 17, [0, 1, 0, 2]), v6(&b, &a, 17, [0, 1, 0, 2]));
    }

    #[test]
    fn consecutive_ports_spread_evenly_over_buckets() {
        // 4096 flows differing only in the source port, into 256 buckets over 4 NICs.
        let mut per_nic = [0u32; 4];
        for port in 40000u16..44096 {
            let p = port.to_be_bytes();
            let h = v4(
                [192, 0, 2, 19],
                [198, 51, 100, 1],
                17,
                [p[0], p[1], 0x23, 0x28],
            );
            per_nic[((h % 256) % 4) as usize] += 1;
        }
        for n in per_nic {
            assert!((n as i32 - 1024).abs() < 1024 / 10, "{per_nic:?}");
        }
    }
}
