//! The incremental checksum arithmetic the kernel programs use (splitter-common's `csum`),
//! checked on the host against checksums computed from scratch over whole headers
//! (`splitter_tests::checksum`), on generated packets and rewrites: every rewritten IPv4
//! header and TCP/UDP segment (IPv4 and IPv6) must verify as valid.

use proptest::prelude::*;
use splitter_common::{PROTO_TCP, PROTO_UDP, csum};
use splitter_tests::checksum;

/// A 20-byte IPv4 header with a valid checksum, from the generated fields.
fn ipv4_header(src: [u8; 4], dst: [u8; 4], protocol: u8, id: u16, ttl: u8, len: u16) -> Vec<u8> {
    let mut h = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, ttl, protocol, 0, 0];
    h[2..4].copy_from_slice(&len.to_be_bytes());
    h[4..6].copy_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    let check = checksum::ipv4_header(&h);
    h[10..12].copy_from_slice(&check.to_be_bytes());
    h
}

/// A TCP or UDP segment (8-byte UDP header, or a 20-byte TCP header) with `payload` and the
/// checksum `checksum` computes, ports in network order at the front.
fn segment(protocol: u8, src_port: u16, dst_port: u16, payload: &[u8]) -> (Vec<u8>, usize) {
    let (mut s, check_at) = if protocol == PROTO_TCP {
        (vec![0u8; 20], 16)
    } else {
        (vec![0u8; 8], 6)
    };
    s[0..2].copy_from_slice(&src_port.to_be_bytes());
    s[2..4].copy_from_slice(&dst_port.to_be_bytes());
    if protocol == PROTO_TCP {
        s[12] = 0x50;
        s[13] = 0x10;
    } else {
        let len = u16::try_from(8 + payload.len()).expect("small");
        s[4..6].copy_from_slice(&len.to_be_bytes());
    }
    s.extend_from_slice(payload);
    (s, check_at)
}

/// A field of the packet as the kernel programs read it: its bytes as a native integer.
fn word16(bytes: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([bytes[at], bytes[at + 1]])
}

fn word32(bytes: [u8; 4]) -> u32 {
    u32::from_ne_bytes(bytes)
}

/// The checksum a sender puts on the wire: a UDP checksum that computes to zero is sent as all
/// ones (RFC 768), because zero means that the datagram carries none.
fn sent(protocol: u8, computed: u16) -> u16 {
    if protocol == PROTO_UDP && computed == 0 {
        0xffff
    } else {
        computed
    }
}

fn protocol() -> impl Strategy<Value = u8> {
    prop_oneof![Just(PROTO_TCP), Just(PROTO_UDP)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn a_destination_rewrite_keeps_ipv4_and_l4_checksums_valid(
        src in any::<[u8; 4]>(),
        dst in any::<[u8; 4]>(),
        backend in any::<[u8; 4]>(),
        ports in any::<(u16, u16, u16)>(),
        protocol in protocol(),
        id in any::<u16>(),
        ttl in any::<u8>(),
        payload in proptest::collection::vec(any::<u8>(), 0..64),
        udp_without_checksum in any::<bool>(),
    ) {
        let (src_port, dst_port, backend_port) = ports;
        let (mut seg, check_at) = segment(protocol, src_port, dst_port, &payload);
        // A UDP datagram over IPv4 may carry no checksum (zero); the rewrite must keep none.
        let none = protocol == PROTO_UDP && udp_without_checksum;
        let l4 = if none { 0 } else { sent(protocol, checksum::l4(src, dst, protocol, &seg)) };
        seg[check_at..check_at + 2].copy_from_slice(&l4.to_be_bytes());
        let len = u16::try_from(20 + seg.len()).expect("small");
        let mut ip = ipv4_header(src, dst, protocol, id, ttl, len);

        // What the ingress program does: deltas from the old and new address and port.
        let (old, new) = (word32(dst), word32(backend));
        let new_port = u16::from_ne_bytes(backend_port.to_be_bytes());
        let ip_check = csum::apply(word16(&ip, 10), csum::address_delta(old, new));
        let old_check = word16(&seg, check_at);
        ip[10..12].copy_from_slice(&ip_check.to_ne_bytes());
        ip[16..20].copy_from_slice(&backend);
        let old_port = word16(&seg, 2);
        seg[2..4].copy_from_slice(&new_port.to_ne_bytes());
        // As the ingress program does: only a checksum that is there is updated.
        if csum::l4_has_checksum(protocol, old_check) {
            let check = csum::apply(old_check, csum::address_port_delta(old, new, old_port, new_port));
            seg[check_at..check_at + 2].copy_from_slice(&csum::l4_stored(protocol, check).to_ne_bytes());
        }
        prop_assert!(checksum::ipv4_header_ok(&ip), "IPv4 header {ip:02x?}");
        if none {
            prop_assert_eq!(word16(&seg, check_at), 0, "no checksum before, none after");
        } else {
            prop_assert!(checksum::l4_ok(src, backend, protocol, &seg), "segment {seg:02x?}");
        }

        // What the egress program does to the reply's header: the source address back.
        let reply_check = csum::replace32(ip_check, new, old);
        ip[10..12].copy_from_slice(&reply_check.to_ne_bytes());
        ip[16..20].copy_from_slice(&dst);
        prop_assert!(checksum::ipv4_header_ok(&ip), "reply header {ip:02x?}");
    }

    #[test]
    fn an_ipv6_destination_rewrite_keeps_the_l4_checksum_valid(
        src in any::<[u8; 16]>(),
        dst in any::<[u8; 16]>(),
        backend in any::<[u8; 16]>(),
        ports in any::<(u16, u16, u16)>(),
        protocol in protocol(),
        payload in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let (src_port, dst_port, backend_port) = ports;
        let (mut seg, check_at) = segment(protocol, src_port, dst_port, &payload);
        let l4 = sent(protocol, checksum::l4_v6(src, dst, protocol, &seg));
        seg[check_at..check_at + 2].copy_from_slice(&l4.to_be_bytes());
        let words = |a: [u8; 16]| {
            [0, 4, 8, 12].map(|i| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]))
        };
        let new_port = u16::from_ne_bytes(backend_port.to_be_bytes());
        let check = csum::replace128_16(
            word16(&seg, check_at),
            words(dst),
            words(backend),
            word16(&seg, 2),
            new_port,
        );
        seg[2..4].copy_from_slice(&new_port.to_ne_bytes());
        seg[check_at..check_at + 2]
            .copy_from_slice(&csum::l4_stored(protocol, check).to_ne_bytes());
        prop_assert!(checksum::l4_v6_ok(src, backend, protocol, &seg), "segment {seg:02x?}");
    }
}

/// Adds `b` to `a` in one's-complement arithmetic.
fn ones_add(a: u16, b: u16) -> u16 {
    let sum = u32::from(a) + u32::from(b);
    ((sum & 0xffff) + (sum >> 16)) as u16
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn a_udp_checksum_that_computes_to_zero_is_sent_as_all_ones(
        src in any::<[u8; 4]>(),
        dst in any::<[u8; 4]>(),
        backend in any::<[u8; 4]>(),
        ports in any::<(u16, u16, u16)>(),
        payload in proptest::collection::vec(any::<u8>(), 2..64),
    ) {
        let (src_port, dst_port, backend_port) = ports;
        // Tune the payload's first word so that the rewritten datagram's checksum computes to
        // zero: adding the from-scratch checksum to any word makes the sum all ones.
        let (mut seg, check_at) = segment(PROTO_UDP, src_port, backend_port, &payload);
        let rewritten = checksum::l4(src, backend, PROTO_UDP, &seg);
        let word = u16::from_be_bytes([seg[8], seg[9]]);
        let tuned = ones_add(word, rewritten).to_be_bytes();
        seg[8..10].copy_from_slice(&tuned);
        seg[2..4].copy_from_slice(&dst_port.to_be_bytes());
        let original = checksum::l4(src, dst, PROTO_UDP, &seg);
        prop_assume!(original != 0, "the original datagram must carry a checksum");
        seg[check_at..check_at + 2].copy_from_slice(&original.to_be_bytes());
        let new_port = u16::from_ne_bytes(backend_port.to_be_bytes());
        let check = csum::apply(
            word16(&seg, check_at),
            csum::address_port_delta(word32(dst), word32(backend), word16(&seg, 2), new_port),
        );
        prop_assert_eq!(check, 0, "the rewrite computes to zero");
        let stored = csum::l4_stored(PROTO_UDP, check);
        prop_assert_eq!(stored, 0xffff);
        seg[2..4].copy_from_slice(&new_port.to_ne_bytes());
        seg[check_at..check_at + 2].copy_from_slice(&stored.to_ne_bytes());
        prop_assert!(checksum::l4_ok(src, backend, PROTO_UDP, &seg), "segment {seg:02x?}");
    }
}

#[test]
fn a_udp_datagram_without_checksum_keeps_none_and_tcp_always_has_one() {
    assert!(!csum::l4_has_checksum(PROTO_UDP, 0));
    assert!(csum::l4_has_checksum(PROTO_UDP, 0x1234));
    assert!(csum::l4_has_checksum(PROTO_TCP, 0));
    assert_eq!(csum::l4_stored(PROTO_UDP, 0), 0xffff);
    assert_eq!(csum::l4_stored(PROTO_TCP, 0), 0);
    assert_eq!(csum::l4_stored(PROTO_UDP, 0x1234), 0x1234);
}
