//! Property tests of both kernel programs through BPF_PROG_TEST_RUN: randomly generated IPv4
//! and IPv6 packets (any TCP flags, VLAN tags, IP options, IPv6 extension headers, fragments,
//! payloads, to services and to anything else), then mutated (truncated at any byte, bogus IHL,
//! total length and TCP data offset, random bytes). The egress program's packets come from
//! backends, half of them on a connection the ingress steered first and half straight from the
//! backend. Properties, for every packet:
//! - ingress never aborts: XDP_PASS, or XDP_DROP only when the counter of its reason (a slot
//!   miss, a drain's race) rises; egress always hands the packet on (TCX_NEXT);
//! - a packet that is not a well-formed packet to a service (ingress) or a reply of a steered
//!   connection from its own backend (egress) comes out byte for byte as it went in;
//! - a packet that was changed has valid IP and L4 checksums if it came in with them, and a UDP
//!   checksum that comes out zero ("none") came in zero over IPv4, the only family that allows it;
//! - each packet is counted exactly once across the per-CPU counters.
//!
//! `cargo xtask test` runs the default number of cases; `cargo xtask fuzz` runs many more
//! (`PROPTEST_CASES`).

use std::net::{SocketAddrV4, SocketAddrV6};

use proptest::{prelude::*, test_runner::Config as RunnerConfig};
use splitter_tests::{
    packet::{self, Ipv4Packet, Ipv6Packet, TCP, UDP},
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
const EGRESS_OUTCOMES: [&str; 4] = ["reply_translated", "reply_passed", "unsteered", "malformed"];
/// The counters an ingress XDP_DROP must raise one of.
const DROP_REASONS: [&str; 2] = ["slot_miss", "drain_raced"];

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

/// The endpoints whose packets a program may change.
type Known = Vec<([u8; 4], u16, u8)>;

/// One program under test: how to run it, what it may change, how it must answer.
struct Program {
    run: fn(&Plane, &[u8]) -> splitter_tests::plane::Run,
    /// The counters a packet ends in exactly one of.
    outcomes: &'static [&'static str],
    /// The shortest frame fed to it, from the IP header's offset.
    min_frame: fn(usize) -> usize,
    /// Readies the plane for a generated packet (the case's number and its `steer` draw): the
    /// packet to send, and the endpoints whose packets the program may change, as destination
    /// (ingress) or source (egress).
    prepare: fn(&Plane, Ipv4Packet, u32, bool) -> (Ipv4Packet, Known),
    to_known: bool,
    verdict_ok: fn(u32) -> bool,
}

/// The sum of the `DROP_REASONS` counters.
fn drops_counted(plane: &Plane) -> u64 {
    outcome_total(plane, &DROP_REASONS)
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
    let case = std::sync::atomic::AtomicU32::new(0);
    let result = runner.run(
        &(strategy, mutations(), any::<bool>()),
        |(packet, mutations, steer)| {
            let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (packet, known) = (program.prepare)(&plane, packet, n, steer);
            let frame = mutate(packet.build(), &mutations, program.min_frame);
            let (before, drops) = (
                outcome_total(&plane, program.outcomes),
                drops_counted(&plane),
            );
            let out = (program.run)(&plane, &frame);
            let after = outcome_total(&plane, program.outcomes);
            prop_assert!((program.verdict_ok)(out.verdict), "verdict {}", out.verdict);
            if out.verdict == XDP_DROP {
                prop_assert!(
                    drops_counted(&plane) > drops,
                    "a drop without its reason counted"
                );
            }
            prop_assert_eq!(after - before, 1, "counted once");
            if out.data != frame {
                changed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                prop_assert!(
                    may_change(&frame, &known, program.to_known),
                    "changed a packet that is not one of its own"
                );
                if checksums_ok(&frame) == Some(true) {
                    prop_assert_eq!(
                        checksums_ok(&out.data),
                        Some(true),
                        "checksums after the rewrite"
                    );
                }
                if let (Some(sent), Some(got)) = (packet::parse(&frame), packet::parse(&out.data))
                    && got.protocol == UDP
                    && got.l4_checksum == 0
                {
                    prop_assert_eq!(sent.l4_checksum, 0, "a UDP checksum turned into none");
                }
            }
            Ok(())
        },
    );
    settle(result, changed.into_inner());
}

/// Fails the test on a property's counterexample, or when too few cases were rewritten for the
/// run to have reached the programs' real work.
fn settle(
    result: Result<(), proptest::test_runner::TestError<impl std::fmt::Debug>>,
    changed: u32,
) {
    if let Err(failure) = result {
        panic!("{failure}");
    }
    assert!(
        changed > cases() / 10,
        "only {changed} of {} cases were rewritten: the generator misses the programs' real work",
        cases()
    );
}

/// The ingress program's packets go as generated; it may change those to a service.
fn to_services(_: &Plane, packet: Ipv4Packet, _: u32, _: bool) -> (Ipv4Packet, Known) {
    (packet, SERVICES.to_vec())
}

/// The egress program's packets come from a backend to a client of the case's own (so no
/// earlier case's connection is taken for it). With `steer`, the client first opens a
/// connection to the service through the ingress program, and the packet comes from the
/// backend it was given: the one packet source the program may change.
fn from_backends(plane: &Plane, packet: Ipv4Packet, case: u32, steer: bool) -> (Ipv4Packet, Known) {
    let [.., hi, lo] = case.to_be_bytes();
    let client = SocketAddrV4::new([198, 19, hi, lo].into(), 1_024 + (case % 60_000) as u16);
    let packet = Ipv4Packet {
        dst: client,
        ..packet
    };
    let Some(service) = SERVICES.iter().find(|s| s.2 == packet.protocol) else {
        return (packet, Vec::new());
    };
    if !steer {
        return (packet, Vec::new());
    }
    let vip = SocketAddrV4::new(service.0.into(), service.1);
    let first = if packet.protocol == UDP {
        Ipv4Packet::udp(client, vip)
    } else {
        Ipv4Packet::tcp(client, vip, packet::SYN)
    };
    let steered = plane.ingress(&first.build());
    let backend = packet::parse(&steered.data)
        .expect("a steered first packet")
        .dst;
    (
        Ipv4Packet {
            src: backend,
            ..packet
        },
        vec![(backend.ip().octets(), backend.port(), packet.protocol)],
    )
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
            prepare: to_services,
            to_known: true,
            verdict_ok: |v| v == XDP_PASS || v == XDP_DROP,
        },
        packet_strategy(&SERVICES, &[]),
    );
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn egress_hands_every_packet_on_changes_only_steered_replies_and_counts_each_once() {
    splitter_tests::require_root!();
    check(
        &Program {
            run: Plane::egress,
            outcomes: &EGRESS_OUTCOMES,
            min_frame: |l3| l3 + MIN_IP_HEADER,
            prepare: from_backends,
            to_known: false,
            verdict_ok: |v| v == TC_NEXT,
        },
        packet_strategy(&[], &BACKENDS),
    );
}

// ---- IPv6, with extension headers ----

const CONFIG6: &str = r#"
interface = "lo"

[[service]]
name = "model6"
listen = "[2001:2::1]:8080"
blue = ["[2001:2:1::2]:8080"]
green = ["[2001:2:2::2]:8080"]

[[service]]
name = "dns6"
listen = "[2001:2::1]:5353"
protocol = "udp"
blue = ["[2001:2:1::2]:5353"]
"#;

const SERVICES6: [(&str, u8); 2] = [("[2001:2::1]:8080", TCP), ("[2001:2::1]:5353", UDP)];
const BACKENDS6: [(&str, u8); 3] = [
    ("[2001:2:1::2]:8080", TCP),
    ("[2001:2:2::2]:8080", TCP),
    ("[2001:2:1::2]:5353", UDP),
];
/// Extension headers the generator chains: hop-by-hop, routing, destination options, fragment.
const EXTENSIONS: [u8; 4] = [0, 43, 60, 44];

fn addr6(text: &str) -> SocketAddrV6 {
    text.parse().expect("address")
}

/// IPv6 packets towards `towards` (or from `from`), or between any addresses of 2001:2::/48,
/// after up to six extension headers.
fn packet6_strategy(
    towards: &'static [(&'static str, u8)],
    from: &'static [(&'static str, u8)],
) -> impl Strategy<Value = Ipv6Packet> {
    let any6 = || {
        (any::<u16>(), any::<u16>()).prop_map(|(host, port)| {
            (
                SocketAddrV6::new([0x2001, 2, 0, 0, 0, 0, 0, host].into(), port, 0, 0),
                None,
            )
        })
    };
    let known = |list: &'static [(&'static str, u8)]| -> BoxedStrategy<(SocketAddrV6, Option<u8>)> {
        if list.is_empty() {
            return any6().boxed();
        }
        prop_oneof![
            (0..list.len()).prop_map(move |i| (addr6(list[i].0), Some(list[i].1))),
            any6(),
        ]
        .boxed()
    };
    (
        known(from),
        known(towards),
        any::<bool>(),
        any::<u8>(),
        proptest::collection::vec(any::<u8>(), 0..48),
        proptest::collection::vec(proptest::sample::select(&EXTENSIONS[..]), 0..6),
    )
        .prop_map(|((src, sp), (dst, dp), udp, flags, payload, extensions)| {
            let protocol = dp.or(sp).unwrap_or(if udp { UDP } else { TCP });
            let base = if protocol == UDP {
                Ipv6Packet::udp(src, dst)
            } else {
                Ipv6Packet::tcp(src, dst, flags)
            };
            Ipv6Packet {
                extensions,
                ..base.with_payload(&payload)
            }
        })
}

/// Cuts (per mille of the length, never into the fixed header) and byte changes anywhere
/// after the fixed header's first byte, the extension chain and the L4 header included.
fn mutations6() -> impl Strategy<Value = Vec<(u16, u8, u8)>> {
    prop_oneof![
        Just(Vec::new()),
        proptest::collection::vec((0u16..1_000, 1u8..120, any::<u8>()), 1..3),
    ]
}

fn mutate6(mut frame: Vec<u8>, mutations: &[(u16, u8, u8)]) -> Vec<u8> {
    for (i, &(cut, at, value)) in mutations.iter().enumerate() {
        if i % 2 == 0 {
            if let Some(b) = frame.get_mut(14 + usize::from(at)) {
                *b = value;
            }
        } else {
            let len = (14 + 40).max(frame.len() * usize::from(cut) / 1_000);
            frame.truncate(len);
        }
    }
    frame
}

/// Whether the frame's extension chain holds a fragment header (such packets pass untouched).
fn fragmented(frame: &[u8]) -> bool {
    let mut next = frame.get(20).copied();
    let mut at = 54;
    for _ in 0..8 {
        match next {
            Some(44) => return true,
            Some(0 | 43 | 60) => {
                next = frame.get(at).copied();
                at += 8 * (usize::from(frame.get(at + 1).copied().unwrap_or(0)) + 1);
            }
            _ => return false,
        }
    }
    false
}

fn check6(ingress: bool) {
    let plane = Plane::load(CONFIG6);
    let mut runner = proptest::test_runner::TestRunner::new(RunnerConfig {
        cases: cases(),
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    let strategy = if ingress {
        packet6_strategy(&SERVICES6, &[]).boxed()
    } else {
        packet6_strategy(&[], &BACKENDS6).boxed()
    };
    let outcomes: &[&str] = if ingress {
        &INGRESS_OUTCOMES
    } else {
        &EGRESS_OUTCOMES
    };
    let (changed, case) = (
        std::sync::atomic::AtomicU32::new(0),
        std::sync::atomic::AtomicU32::new(0),
    );
    let result = runner.run(
        &(strategy, mutations6(), any::<bool>()),
        |(packet, mutations, steer)| {
            let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut packet = packet;
            // The egress program's packets: to a client of this case's own, from the backend a
            // connection was steered to when `steer` says so.
            let mut steered_backend = None;
            if !ingress {
                packet.dst = SocketAddrV6::new(
                    [0x2001, 2, 0x99, 0, 0, 0, (n >> 16) as u16, n as u16].into(),
                    1_024 + (n % 60_000) as u16,
                    0,
                    0,
                );
                let service = SERVICES6.iter().find(|s| s.1 == packet.protocol);
                if let (true, Some(service)) = (steer, service) {
                    let first = if packet.protocol == UDP {
                        Ipv6Packet::udp(packet.dst, addr6(service.0))
                    } else {
                        Ipv6Packet::tcp(packet.dst, addr6(service.0), packet::SYN)
                    };
                    let run = plane.ingress(&first.build());
                    let backend = packet::parse6(&run.data).expect("steered").dst;
                    packet.src = backend;
                    steered_backend = Some(backend);
                }
            }
            let frame = mutate6(packet.build(), &mutations);
            let (before, drops) = (outcome_total(&plane, outcomes), drops_counted(&plane));
            let out = if ingress {
                plane.ingress(&frame)
            } else {
                plane.egress(&frame)
            };
            prop_assert!(
                if ingress {
                    out.verdict == XDP_PASS || out.verdict == XDP_DROP
                } else {
                    out.verdict == TC_NEXT
                },
                "verdict {}",
                out.verdict
            );
            if out.verdict == XDP_DROP {
                prop_assert!(
                    drops_counted(&plane) > drops,
                    "a drop without its reason counted"
                );
            }
            prop_assert_eq!(outcome_total(&plane, outcomes) - before, 1, "counted once");
            if out.data != frame {
                changed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                prop_assert!(!fragmented(&frame), "changed a fragment");
                let (sent, got) = (packet::parse6(&frame), packet::parse6(&out.data));
                let (Some(sent), Some(got)) = (sent, got) else {
                    return Err(TestCaseError::fail(
                        "changed a packet it cannot have parsed",
                    ));
                };
                if ingress {
                    prop_assert!(
                        SERVICES6
                            .iter()
                            .any(|s| addr6(s.0) == sent.dst && s.1 == sent.protocol),
                        "changed a packet that is not to a service"
                    );
                    prop_assert!(
                        BACKENDS6.iter().any(|b| addr6(b.0) == got.dst),
                        "sent to {}",
                        got.dst
                    );
                } else {
                    prop_assert_eq!(
                        Some(sent.src),
                        steered_backend,
                        "changed a packet that is not a steered reply"
                    );
                    prop_assert!(
                        SERVICES6.iter().any(|s| addr6(s.0) == got.src),
                        "left as {}",
                        got.src
                    );
                }
                if sent.l4_checksum_ok {
                    prop_assert!(got.l4_checksum_ok, "the L4 checksum after the rewrite");
                }
            }
            Ok(())
        },
    );
    settle(result, changed.into_inner());
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn ipv6_with_extension_headers_ingress_never_aborts_and_changes_only_service_packets() {
    splitter_tests::require_root!();
    check6(true);
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn ipv6_with_extension_headers_egress_changes_only_steered_replies() {
    splitter_tests::require_root!();
    check6(false);
}
