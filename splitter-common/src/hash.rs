//! The flow hash. The kernel uses it to choose a version and a slot for a new flow, and to
//! re-choose deterministically when a non-SYN packet finds no flow entry; user space uses the
//! same function in tests and tools, so both sides always agree.

use crate::FlowKey;

const MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;

#[inline(always)]
const fn mix(h: u64, word: u64) -> u64 {
    let h = (h ^ word).wrapping_mul(MULTIPLIER);
    h ^ (h >> 29)
}

#[inline(always)]
const fn word(bytes: &[u8; 16], at: usize) -> u64 {
    u64::from_ne_bytes([
        bytes[at],
        bytes[at + 1],
        bytes[at + 2],
        bytes[at + 3],
        bytes[at + 4],
        bytes[at + 5],
        bytes[at + 6],
        bytes[at + 7],
    ])
}

/// A 64-bit hash of the 5-tuple. The low half chooses the version, the high half the slot.
#[inline(always)]
#[must_use]
pub const fn flow_hash(key: &FlowKey) -> u64 {
    let mut h = 0x5851_f42d_4c95_7f2d_u64;
    h = mix(h, word(&key.src_addr, 0));
    h = mix(h, word(&key.src_addr, 8));
    h = mix(h, word(&key.dst_addr, 0));
    h = mix(h, word(&key.dst_addr, 8));
    h = mix(
        h,
        (key.src_port_be as u64) | ((key.dst_port_be as u64) << 16) | ((key.protocol as u64) << 32),
    );
    // Final avalanche (murmur3 fmix64), so low and high halves are both well mixed.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The hash of a client address under `salt`: what a service with client affinity chooses the
/// version by. `SplitWord::choose` sends a hash to the candidate when it falls below the share,
/// so for one client and one salt, raising the share only ever moves it from live to candidate,
/// and lowering it only moves back the clients above the new share.
#[inline(always)]
#[must_use]
pub const fn client_hash(addr: &[u8; 16], salt: u32) -> u32 {
    let mut h = 0x2545_f491_4f6c_dd1d_u64 ^ (salt as u64);
    h = mix(h, word(addr, 0));
    h = mix(h, word(addr, 8));
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::vec::Vec;

    use crate::{PROTO_TCP, SplitWord, Version, ipv4_mapped};

    #[test]
    fn client_assignment_is_monotone_in_the_share_and_changes_with_the_salt() {
        let clients: Vec<[u8; 16]> = (0..2_000u32)
            .map(|i| ipv4_mapped([198, 19, (i >> 8) as u8, i as u8]))
            .collect();
        let on_candidate = |bp: u16, salt: u32| -> Vec<bool> {
            clients
                .iter()
                .map(|c| {
                    SplitWord::new(Version::Blue, bp).choose(client_hash(c, salt)) == Version::Green
                })
                .collect()
        };
        let steps = [100, 500, 2_500, 5_000, 10_000];
        for pair in steps.windows(2) {
            let (before, after) = (on_candidate(pair[0], 7), on_candidate(pair[1], 7));
            assert!(
                before.iter().zip(&after).all(|(b, a)| !*b || *a),
                "{} -> {} bp moved a client back to live",
                pair[0],
                pair[1]
            );
        }
        let share = on_candidate(2_500, 7).iter().filter(|c| **c).count();
        assert!((400..600).contains(&share), "{share} of 2000 at 25%");
        let other_salt = on_candidate(2_500, 8);
        let same = on_candidate(2_500, 7)
            .iter()
            .zip(&other_salt)
            .filter(|(a, b)| **a && **b)
            .count();
        assert!(
            same < share / 2,
            "a new salt picks another cohort ({same} shared)"
        );
    }

    fn key(src_port: u16) -> FlowKey {
        FlowKey {
            src_addr: ipv4_mapped([198, 18, 0, 2]),
            dst_addr: ipv4_mapped([198, 18, 0, 1]),
            src_port_be: src_port.to_be(),
            dst_port_be: 8080u16.to_be(),
            protocol: PROTO_TCP,
            _pad: [0; 3],
        }
    }

    #[test]
    fn consecutive_ports_spread_evenly_over_ten_buckets() {
        let mut buckets = [0u32; 10];
        for port in 20_000..40_000u16 {
            let h = flow_hash(&key(port)) as u32;
            buckets[(h % 10_000 / 1_000) as usize] += 1;
        }
        // 2000 expected per bucket; 5 sigma is about 210.
        assert!(
            buckets.iter().all(|b| (1_790..=2_210).contains(b)),
            "{buckets:?}"
        );
    }

    #[test]
    fn high_half_spreads_over_slots_independently_of_low_half() {
        let mut slots = [0u32; 4];
        for port in 20_000..40_000u16 {
            let h = flow_hash(&key(port));
            if (h as u32) % 10_000 < 1_000 {
                slots[((h >> 32) & 3) as usize] += 1;
            }
        }
        let total: u32 = slots.iter().sum();
        assert!(
            slots
                .iter()
                .all(|s| s * 4 > total * 8 / 10 && s * 4 < total * 12 / 10),
            "{slots:?}"
        );
    }
}
