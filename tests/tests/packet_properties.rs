//! Property tests of both kernel programs through BPF_PROG_TEST_RUN: randomly generated IPv4
//! packets (any TCP flags, VLAN tags, IP options, fragments, payloads, to services and to
//! anything else), then mutated (truncated at any byte, bogus IHL, total length and TCP data
//! offset, random bytes). Properties, for every packet:
//! - ingress never aborts: XDP_PASS, or XDP_DROP for a counted slot miss; egress always hands
//!   the packet on (TCX_NEXT);
//! - a packet that is not a well-formed packet to a service (ingress) or from a backend
//!   (egress) comes out byte for byte as it went in;
//! - a packet that was changed has valid IP and L4 checksums if it came in with them;
//! - each packet is counted exactly once across the per-CPU counters.
//!
//! `cargo xtask test` runs the default number of cases; `cargo xtask fuzz` runs many more
//! (`PROPTEST_CASES`).

use std::net::SocketAddrV4;

use proptest::{prelude::*, test_runner::Config as RunnerConfig};
use splitter_tests::{
    packet::{self, Ipv4Packet, TCP, UDP},
    plane::Plane,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const TC_NEXT: u32 = u32::MAX;
/// The shortest frame the kernel runs XDP on (an Ethernet header).
const MIN_FRAME: usize = 14;
/// Egress runs on skbs the stack built: the test run refuses an IPv4 skb without an IP header,
/// and the stack never sends one.
const MIN_IP_HEADER: usize = 20;
/// Cases per property unless `PROPTEST_CASES` says otherwise.
const DEFAULT_CASES: u32 = 1_500;

use splitter_tests::plane::FIXTURE_CONFIG as CONFIG;

/// (address, port, protocol) of the services, and of their backends.
const SERVICES: [([u8; 4], u16, u8); 2] =
    [([198, 18, 0, 1], 8080, TCP), ([198, 18, 0, 1], 5353, UDP)];
const BACKENDS: [([u8; 4], u16, u8); 5] = [
    ([198, 18, 1, 2], 8080, TCP),
    ([198, 18, 1, 3], 8080, TCP),
    ([198, 18, 2, 2], 8080, TCP),
    ([198, 18, 1, 2], 5353, UDP),
    ([198, 18, 2, 2], 5353, UDP),
];

/// Counters an ingress packet ends in exactly one of.
const INGRESS_OUTCOMES: [&str; 7] = [
    "steered",
    "not_ip",
    "not_service",
    "fragment",
    "ip_options",
    "malformed",
    "slot_miss",
];
/// Counters an egress packet ends in exactly one of.
const EGRESS_OUTCOMES: [&str; 3] = ["reply_translated", "reply_passed", "malformed"];

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

#[derive(Clone, Debug)]
enum Mutation {
    /// Cut the frame to this fraction (per mille) of its length.
    Truncate(u16),
    /// Set the byte at this offset from the IP header.
    IpByte(u8, u8),
    /// Set the byte at this offset from the L4 header (data offset, lengths...).
    L4Byte(u8, u8),
    /// Set the IP total length.
    TotalLength(u16),
}

fn endpoint(known: &'static [([u8; 4], u16, u8)]) -> BoxedStrategy<(SocketAddrV4, Option<u8>)> {
    // Anything in the test range.
    let any_endpoint = (any::<u8>(), any::<u8>(), any::<u16>())
        .prop_map(|(a, b, port)| (SocketAddrV4::new([198, 18, a, b].into(), port), None));
    if known.is_empty() {
        return any_endpoint.boxed();
    }
    prop_oneof![
        // A known endpoint, with its protocol.
        (0..known.len()).prop_map(move |i| {
            let (ip, port, proto) = known[i];
            (SocketAddrV4::new(ip.into(), port), Some(proto))
        }),
        any_endpoint,
    ]
    .boxed()
}

fn packet_strategy(
    towards: &'static [([u8; 4], u16, u8)],
    from: &'static [([u8; 4], u16, u8)],
) -> impl Strategy<Value = Ipv4Packet> {
    (
        endpoint(from),
        endpoint(towards),
        any::<bool>(),
        any::<u8>(),
        proptest::collection::vec(any::<u8>(), 0..48),
        proptest::option::weighted(0.15, 1u16..4_095),
        0u8..10,
        any::<bool>(),
    )
        .prop_map(
            |((src, src_proto), (dst, dst_proto), udp, flags, payload, vlan, shape, no_sum)| {
                let protocol = dst_proto
                    .or(src_proto)
                    .unwrap_or(if udp { UDP } else { TCP });
                let base = if protocol == UDP {
                    Ipv4Packet::udp(src, dst)
                } else {
                    Ipv4Packet::tcp(src, dst, flags)
                };
                Ipv4Packet {
                    vlan,
                    ip_options: if shape == 0 { vec![1, 1, 1, 0] } else { vec![] },
                    frag: match shape {
                        1 => 0x2000,
                        2 => 0x0010,
                        _ => 0x4000,
                    },
                    udp_no_checksum: protocol == UDP && no_sum,
                    ..base.with_payload(&payload)
                }
            },
        )
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    let one = prop_oneof![
        (0u16..1_000).prop_map(Mutation::Truncate),
        (0u8..24, any::<u8>()).prop_map(|(at, v)| Mutation::IpByte(at, v)),
        (0u8..20, any::<u8>()).prop_map(|(at, v)| Mutation::L4Byte(at, v)),
        any::<u16>().prop_map(Mutation::TotalLength),
    ];
    prop_oneof![
        // Half the cases are well formed.
        Just(Vec::new()),
        proptest::collection::vec(one, 1..4),
    ]
}

fn l3_offset(frame: &[u8]) -> usize {
    if frame.get(12..14) == Some(&packet::ETH_VLAN[..]) {
        18
    } else {
        14
    }
}

/// Applies `mutations`; no cut leaves fewer than `min(l3)` bytes.
fn mutate(mut frame: Vec<u8>, mutations: &[Mutation], min: fn(usize) -> usize) -> Vec<u8> {
    let l3 = l3_offset(&frame);
    for m in mutations {
        let ihl = frame.get(l3).map_or(20, |b| usize::from(b & 0x0f) * 4);
        match *m {
            Mutation::Truncate(per_mille) => {
                let len = min(l3).max(frame.len() * usize::from(per_mille) / 1_000);
                frame.truncate(len);
            }
            Mutation::IpByte(at, v) => {
                if let Some(b) = frame.get_mut(l3 + usize::from(at)) {
                    *b = v;
                }
            }
            Mutation::L4Byte(at, v) => {
                if let Some(b) = frame.get_mut(l3 + ihl + usize::from(at)) {
                    *b = v;
                }
            }
            Mutation::TotalLength(v) => {
                if let Some(b) = frame.get_mut(l3 + 2..l3 + 4) {
                    b.copy_from_slice(&v.to_be_bytes());
                }
            }
        }
    }
    frame
}

/// Whether the frame's headers make it an unfragmented IPv4 packet without options going to
/// (`to_known`) or coming from one of `known`: the only packets a program may change. Only the
/// headers count: a packet whose total length claims more than the frame holds is still one the
/// program may rewrite (the stack drops it after, as it drops any truncated packet).
fn may_change(frame: &[u8], known: &[([u8; 4], u16, u8)], to_known: bool) -> bool {
    let l3 = l3_offset(frame);
    let Some(ip) = frame.get(l3..l3 + 24) else {
        return false;
    };
    if ip[0] != 0x45 || u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
        return false;
    }
    let protocol = ip[9];
    let (addr, port) = if to_known {
        (
            [ip[16], ip[17], ip[18], ip[19]],
            u16::from_be_bytes([ip[22], ip[23]]),
        )
    } else {
        (
            [ip[12], ip[13], ip[14], ip[15]],
            u16::from_be_bytes([ip[20], ip[21]]),
        )
    };
    known
        .iter()
        .any(|k| k.0 == addr && k.1 == port && k.2 == protocol)
}

/// Valid checksums as `packet::parse` judges them; `None` when it cannot parse the frame.
fn checksums_ok(frame: &[u8]) -> Option<bool> {
    packet::parse(frame).map(|p| p.ip_checksum_ok && p.l4_checksum_ok)
}

fn outcome_total(plane: &Plane, names: &[&str]) -> u64 {
    plane
        .maps
        .plane_counters()
        .expect("counters")
        .iter()
        .filter(|(name, _)| names.contains(name))
        .map(|(_, v)| v)
        .sum()
}

/// One program under test: how to run it, what it may change, how it must answer.
struct Program {
    run: fn(&Plane, &[u8]) -> splitter_tests::plane::Run,
    /// The counters a packet ends in exactly one of.
    outcomes: &'static [&'static str],
    /// The shortest frame fed to it, from the IP header's offset.
    min_frame: fn(usize) -> usize,
    /// The endpoints whose packets it may change, as destination (ingress) or source (egress).
    known: &'static [([u8; 4], u16, u8)],
    to_known: bool,
    verdict_ok: fn(u32) -> bool,
}

/// Runs `program` on the generated and mutated packets of `strategy` and checks the properties.
fn check(program: &Program, strategy: impl Strategy<Value = Ipv4Packet>) {
    let plane = Plane::load(CONFIG);
    let mut runner = proptest::test_runner::TestRunner::new(RunnerConfig {
        cases: cases(),
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    let changed = std::sync::atomic::AtomicU32::new(0);
    let result = runner.run(&(strategy, mutations()), |(packet, mutations)| {
        let frame = mutate(packet.build(), &mutations, program.min_frame);
        let before = outcome_total(&plane, program.outcomes);
        let out = (program.run)(&plane, &frame);
        let after = outcome_total(&plane, program.outcomes);
        prop_assert!((program.verdict_ok)(out.verdict), "verdict {}", out.verdict);
        prop_assert_eq!(after - before, 1, "counted once");
        if out.data != frame {
            changed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            prop_assert!(
                may_change(&frame, program.known, program.to_known),
                "changed a packet that is not one of its own"
            );
            if checksums_ok(&frame) == Some(true) {
                prop_assert_eq!(
                    checksums_ok(&out.data),
                    Some(true),
                    "checksums after the rewrite"
                );
            }
        }
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
    let changed = changed.into_inner();
    assert!(
        changed > cases() / 10,
        "only {changed} of {} cases were rewritten: the generator misses the programs' real work",
        cases()
    );
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn ingress_never_aborts_changes_only_service_packets_and_counts_each_once() {
    splitter_tests::require_root!();
    check(
        &Program {
            run: Plane::ingress,
            outcomes: &INGRESS_OUTCOMES,
            min_frame: |_| MIN_FRAME,
            known: &SERVICES,
            to_known: true,
            verdict_ok: |v| v == XDP_PASS || v == XDP_DROP,
        },
        packet_strategy(&SERVICES, &[]),
    );
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn egress_hands_every_packet_on_changes_only_backend_replies_and_counts_each_once() {
    splitter_tests::require_root!();
    check(
        &Program {
            run: Plane::egress,
            outcomes: &EGRESS_OUTCOMES,
            min_frame: |l3| l3 + MIN_IP_HEADER,
            known: &BACKENDS,
            to_known: false,
            verdict_ok: |v| v == TC_NEXT,
        },
        packet_strategy(&[], &BACKENDS),
    );
}
