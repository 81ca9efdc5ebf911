//! The kernel programs on crafted packets, through BPF_PROG_TEST_RUN: each case checks the
//! verdict, the bytes that come out (checksums recomputed from scratch), and the counters.

use std::net::SocketAddrV4;

use splitter_common::{
    FLOW_FIN_BACKEND, FLOW_FIN_CLIENT, FLOW_OPEN, FLOW_RST, FLOW_SYN, FlowKey, PlaneCounter,
    SplitWord, Version, flow_hash, ipv4_mapped, maps::SLOTS_PER_POOL,
};
use std::path::Path;

use splitter_ctl::{kernel::maps::Maps, model::config::Config};
use splitter_tests::{
    packet::{self, ACK, FIN, Ipv4Packet, PSH, RST, SYN},
    plane::Plane,
    require_root,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
/// TC_ACT_UNSPEC (TCX_NEXT) as the u32 the test run returns.
const TC_NEXT: u32 = u32::MAX;

use splitter_tests::plane::FIXTURE_CONFIG as CONFIG;

fn addr(text: &str) -> SocketAddrV4 {
    text.parse().expect("address")
}

fn client(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new([198, 18, 0, 2].into(), port)
}

fn vip() -> SocketAddrV4 {
    addr("198.18.0.1:8080")
}

fn key(src: SocketAddrV4, dst: SocketAddrV4, protocol: u8) -> FlowKey {
    FlowKey {
        src_addr: ipv4_mapped(src.ip().octets()),
        dst_addr: ipv4_mapped(dst.ip().octets()),
        src_port_be: src.port().to_be(),
        dst_port_be: dst.port().to_be(),
        protocol,
        _pad: [0; 3],
    }
}

fn service_id(maps: &Maps, name_listen: SocketAddrV4, protocol: u8) -> u32 {
    let endpoint = splitter_common::Endpoint::new(
        ipv4_mapped(name_listen.ip().octets()),
        name_listen.port(),
        protocol,
    );
    maps.service(&endpoint)
        .expect("read")
        .expect("service present")
        .id
}

/// The backend user space predicts for a new flow: the same hash, split word and slot table
/// the kernel uses.
fn predicted(plane: &Plane, key: &FlowKey, id: u32) -> (Version, std::net::SocketAddr) {
    let hash = flow_hash(key);
    let version = plane.maps.split(id).expect("split").choose(hash as u32);
    let slots = plane.maps.slots(id, version).expect("slots");
    let slot = slots[((hash >> 32) as u32 & (SLOTS_PER_POOL - 1)) as usize].expect("slot set");
    (version, slot)
}

/// Sends a SYN from `conn` to the TCP service: the backend it went to, and that backend's version.
fn open(plane: &Plane, conn: SocketAddrV4) -> (SocketAddrV4, Version) {
    let syn = plane.ingress(&Ipv4Packet::tcp(conn, vip(), SYN).build());
    let backend = packet::parse(&syn.data).expect("parses").dst;
    let version = if backend.ip().octets()[2] == 1 {
        Version::Blue
    } else {
        Version::Green
    };
    (backend, version)
}

/// The closing bits of a flow's state (FINs and RST), without the handshake bits.
fn closing(state: u8) -> u8 {
    state & (FLOW_FIN_CLIENT | FLOW_FIN_BACKEND | FLOW_RST)
}

fn plane_count(plane: &Plane, counter: PlaneCounter) -> u64 {
    plane_count_named(plane, counter.name())
}

fn plane_count_named(plane: &Plane, name: &str) -> u64 {
    plane
        .maps
        .plane_counters()
        .expect("plane counters")
        .into_iter()
        .find(|(c, _)| *c == name)
        .map_or(0, |(_, n)| n)
}

/// Asserts that `out` differs from `input` only in the destination address and port and in
/// the checksums, and that the checksums are valid.
fn assert_only_destination_rewritten(input: &[u8], out: &[u8], to: SocketAddrV4) {
    let (before, after) = (
        packet::parse(input).expect("input parses"),
        packet::parse(out).expect("output parses"),
    );
    assert_eq!(after.dst, to, "destination");
    assert_eq!(
        (after.src, after.protocol),
        (before.src, before.protocol),
        "source and protocol untouched"
    );
    assert!(after.ip_checksum_ok, "IPv4 header checksum");
    assert!(after.l4_checksum_ok, "L4 checksum");
    assert_eq!(input.len(), out.len(), "length");
    let l3 = if input[12..14] == packet::ETH_VLAN {
        18
    } else {
        14
    };
    let check = if before.protocol == packet::TCP {
        l3 + 20 + 16
    } else {
        l3 + 20 + 6
    };
    let allowed = [
        l3 + 10..l3 + 12,
        l3 + 16..l3 + 20,
        l3 + 22..l3 + 24,
        check..check + 2,
    ];
    for (i, (a, b)) in input.iter().zip(out).enumerate() {
        if a != b {
            assert!(
                allowed.iter().any(|r| r.contains(&i)),
                "byte {i} changed ({a:#04x} -> {b:#04x})"
            );
        }
    }
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn syn_is_steered_to_the_slot_its_hash_picks_with_valid_checksums() {
    require_root!();
    let plane = Plane::load(CONFIG);
    let id = service_id(&plane.maps, vip(), packet::TCP);
    let mut seen = std::collections::HashSet::new();
    for port in 40_000..40_064 {
        let frame = Ipv4Packet::tcp(client(port), vip(), SYN).build();
        let run = plane.ingress(&frame);
        assert_eq!(run.verdict, XDP_PASS);
        let (version, backend) = predicted(&plane, &key(client(port), vip(), packet::TCP), id);
        assert_eq!(version, Version::Blue, "green has no share");
        let std::net::SocketAddr::V4(backend) = backend else {
            panic!("IPv4 backend")
        };
        assert_only_destination_rewritten(&frame, &run.data, backend);
        let flow = plane
            .maps
            .flow(&key(client(port), vip(), packet::TCP))
            .expect("read")
            .expect("flow recorded");
        assert_eq!(
            (
                flow.version,
                closing(flow.state),
                flow.state & FLOW_SYN,
                flow.service_id
            ),
            (Version::Blue as u8, FLOW_OPEN, FLOW_SYN, id)
        );
        seen.insert(backend);
    }
    assert_eq!(seen.len(), 2, "both blue backends are used");
    let blue = plane.maps.counters(id, Version::Blue).expect("counters");
    assert_eq!(
        (blue.new_flows, blue.traffic.packets_in, blue.flow_misses),
        (64, 64, 0)
    );
    assert_eq!(plane_count_named(&plane, "steered"), 64);
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn the_split_word_decides_the_version_of_every_new_flow() {
    require_root!();
    let mut plane = Plane::load(CONFIG);
    let id = service_id(&plane.maps, vip(), packet::TCP);
    plane
        .maps
        .set_split(id, SplitWord::new(Version::Blue, 3_000))
        .expect("set split");
    let mut green = 0;
    for port in 20_000..22_000 {
        let frame = Ipv4Packet::tcp(client(port), vip(), SYN).build();
        let run = plane.ingress(&frame);
        let (version, backend) = predicted(&plane, &key(client(port), vip(), packet::TCP), id);
        let out = packet::parse(&run.data).expect("parses");
        assert_eq!(
            std::net::SocketAddr::V4(out.dst),
            backend,
            "kernel and user space agree on port {port}"
        );
        if version == Version::Green {
            green += 1;
        }
    }
    assert_eq!(
        plane
            .maps
            .counters(id, Version::Green)
            .expect("counters")
            .new_flows,
        green
    );
    assert!(
        (500..=700).contains(&green),
        "30% of 2000 new flows, got {green}"
    );
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn established_packets_follow_their_flow_whatever_the_share_says_now() {
    require_root!();
    let mut plane = Plane::load(CONFIG);
    let id = service_id(&plane.maps, vip(), packet::TCP);
    let syn = plane.ingress(&Ipv4Packet::tcp(client(41_000), vip(), SYN).build());
    let first = packet::parse(&syn.data).expect("parses").dst;
    plane
        .maps
        .set_split(id, SplitWord::new(Version::Blue, 10_000))
        .expect("all new flows to green");

    let data = Ipv4Packet::tcp(client(41_000), vip(), ACK | PSH)
        .with_payload(b"GET / HTTP/1.1\r\n\r\n")
        .build();
    let run = plane.ingress(&data);
    assert_eq!(run.verdict, XDP_PASS);
    assert_only_destination_rewritten(&data, &run.data, first);
    // A retransmitted SYN of the open connection keeps its backend too, also once the backend's
    // SYN-ACK was seen.
    let _ = plane.egress(&Ipv4Packet::tcp(first, client(41_000), SYN | ACK).build());
    let again = plane.ingress(&Ipv4Packet::tcp(client(41_000), vip(), SYN).build());
    assert_eq!(packet::parse(&again.data).expect("parses").dst, first);
    // A new connection follows the new share.
    let fresh = plane.ingress(&Ipv4Packet::tcp(client(41_001), vip(), SYN).build());
    assert_eq!(
        packet::parse(&fresh.data).expect("parses").dst,
        addr("198.18.2.2:8080")
    );
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_packet_without_a_flow_entry_is_steered_by_hash_and_counted_as_a_miss() {
    require_root!();
    let plane = Plane::load(CONFIG);
    let id = service_id(&plane.maps, vip(), packet::TCP);
    let frame = Ipv4Packet::tcp(client(42_000), vip(), ACK).build();
    let run = plane.ingress(&frame);
    let (_, backend) = predicted(&plane, &key(client(42_000), vip(), packet::TCP), id);
    let std::net::SocketAddr::V4(backend) = backend else {
        panic!("IPv4")
    };
    assert_only_destination_rewritten(&frame, &run.data, backend);
    let blue = plane.maps.counters(id, Version::Blue).expect("counters");
    assert_eq!((blue.flow_misses, blue.new_flows), (1, 0));
    assert!(
        plane
            .maps
            .flow(&key(client(42_000), vip(), packet::TCP))
            .expect("read")
            .is_some(),
        "the flow is recorded again"
    );
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_syn_after_the_connection_closed_chooses_again() {
    require_root!();
    let mut plane = Plane::load(CONFIG);
    let id = service_id(&plane.maps, vip(), packet::TCP);
    let tuple = key(client(43_000), vip(), packet::TCP);
    let _ = plane.ingress(&Ipv4Packet::tcp(client(43_000), vip(), SYN).build());
    let _ = plane.ingress(&Ipv4Packet::tcp(client(43_000), vip(), FIN | ACK).build());
    let flow = plane.maps.flow(&tuple).expect("read").expect("flow");
    assert_eq!(
        closing(flow.state),
        FLOW_FIN_CLIENT,
        "half-closed by the client"
    );
    assert_eq!(
        plane
            .maps
            .counters(id, Version::Blue)
            .expect("counters")
            .closed_flows,
        0,
        "half-closed is not closed"
    );
    plane
        .maps
        .set_split(id, SplitWord::new(Version::Blue, 10_000))
        .expect("all to green");
    let reuse = plane.ingress(&Ipv4Packet::tcp(client(43_000), vip(), SYN).build());
    assert_eq!(
        packet::parse(&reuse.data).expect("parses").dst,
        addr("198.18.2.2:8080")
    );
    let flow = plane.maps.flow(&tuple).expect("read").expect("flow");
    assert_eq!(
        (closing(flow.state), flow.version),
        (FLOW_OPEN, Version::Green as u8)
    );
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn udp_datagrams_are_steered_and_a_zero_checksum_stays_zero() {
    require_root!();
    let plane = Plane::load(CONFIG);
    let dns = addr("198.18.0.1:5353");
    for (payload, no_checksum) in [
        (&b"query"[..], false),
        (&b""[..], false),
        (&b"query"[..], true),
    ] {
        let packet = Ipv4Packet {
            udp_no_checksum: no_checksum,
            ..Ipv4Packet::udp(client(44_000), dns).with_payload(payload)
        };
        let frame = packet.build();
        let run = plane.ingress(&frame);
        assert_eq!(run.verdict, XDP_PASS);
        assert_only_destination_rewritten(&frame, &run.data, addr("198.18.1.2:5353"));
        let out = packet::parse(&run.data).expect("parses");
        assert_eq!(
            out.l4_checksum == 0,
            no_checksum,
            "zero checksum preserved exactly when absent"
        );
    }
    let id = service_id(&plane.maps, dns, packet::UDP);
    let blue = plane.maps.counters(id, Version::Blue).expect("counters");
    assert_eq!(
        (blue.new_flows, blue.traffic.packets_in, blue.flow_misses),
        (1, 3, 0),
        "one flow, three datagrams"
    );
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_vlan_tagged_syn_is_steered() {
    require_root!();
    let plane = Plane::load(CONFIG);
    let frame = Ipv4Packet {
        vlan: Some(42),
        ..Ipv4Packet::tcp(client(45_000), addr("198.18.0.1:9090"), SYN)
    }
    .build();
    let run = plane.ingress(&frame);
    assert_eq!(run.verdict, XDP_PASS);
    assert_only_destination_rewritten(&frame, &run.data, addr("198.18.1.4:9090"));
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn packets_outside_any_service_pass_byte_identical_and_are_counted() {
    require_root!();
    let plane = Plane::load(CONFIG);
    let syn = Ipv4Packet::tcp(client(46_000), vip(), SYN);
    let full = syn.build();
    let cases: Vec<(&str, Vec<u8>, PlaneCounter)> = vec![
        (
            "another port",
            Ipv4Packet::tcp(client(46_000), addr("198.18.0.1:8081"), SYN).build(),
            PlaneCounter::NotService,
        ),
        (
            "another address, service port",
            Ipv4Packet::tcp(client(46_000), addr("198.18.0.9:8080"), SYN).build(),
            PlaneCounter::NotService,
        ),
        (
            "UDP to the TCP service",
            Ipv4Packet::udp(client(46_000), vip()).build(),
            PlaneCounter::NotService,
        ),
        (
            "ICMP",
            Ipv4Packet {
                protocol: packet::ICMP,
                ..syn.clone()
            }
            .build(),
            PlaneCounter::NotService,
        ),
        ("ARP", packet::arp(), PlaneCounter::NotIp),
        (
            "IPv6 to no service",
            packet::ipv6_tcp_syn(8080),
            PlaneCounter::NotService,
        ),
        (
            "first fragment",
            Ipv4Packet {
                frag: 0x2000,
                ..syn.clone()
            }
            .build(),
            PlaneCounter::Fragment,
        ),
        (
            "later fragment",
            Ipv4Packet {
                frag: 0x0010,
                ..syn.clone()
            }
            .build(),
            PlaneCounter::Fragment,
        ),
        (
            "IP options",
            Ipv4Packet {
                ip_options: vec![1, 1, 1, 0],
                ..syn.clone()
            }
            .build(),
            PlaneCounter::IpOptions,
        ),
        (
            "Ethernet only",
            full[..14].to_vec(),
            PlaneCounter::Malformed,
        ),
        (
            "truncated IPv4 header",
            full[..14 + 12].to_vec(),
            PlaneCounter::Malformed,
        ),
        (
            "truncated TCP header",
            full[..14 + 20 + 12].to_vec(),
            PlaneCounter::Malformed,
        ),
        (
            "TCP data offset under five words",
            {
                let mut f = full.clone();
                f[14 + 20 + 12] = 0x40;
                f
            },
            PlaneCounter::Malformed,
        ),
        (
            "truncated VLAN header",
            {
                let mut f = packet::ethernet(None, packet::ETH_VLAN);
                f.push(0);
                f
            },
            PlaneCounter::Malformed,
        ),
    ];
    for (name, frame, counter) in cases {
        let before = plane_count(&plane, counter);
        let run = plane.ingress(&frame);
        assert_eq!(run.verdict, XDP_PASS, "{name}: verdict");
        assert_eq!(run.data, frame, "{name}: bytes");
        assert_eq!(
            plane_count(&plane, counter),
            before + 1,
            "{name}: counted as {}",
            counter.name()
        );
    }
    assert_eq!(plane_count_named(&plane, "steered"), 0);
    assert!(
        plane.maps.flows().expect("flows").is_empty(),
        "no flow recorded"
    );
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_version_with_no_backend_fails_over_to_the_other_and_is_counted() {
    require_root!();
    let mut plane = Plane::load(CONFIG);
    let svc = addr("198.18.0.1:9090");
    let id = service_id(&plane.maps, svc, packet::TCP);
    plane
        .maps
        .set_split(id, SplitWord::new(Version::Blue, 10_000))
        .expect("everything to the empty green pool");
    let frame = Ipv4Packet::tcp(client(47_000), svc, SYN).build();
    let run = plane.ingress(&frame);
    assert_eq!(run.verdict, XDP_PASS);
    assert_only_destination_rewritten(&frame, &run.data, addr("198.18.1.4:9090"));
    let (blue, green) = (
        plane.maps.counters(id, Version::Blue).expect("counters"),
        plane.maps.counters(id, Version::Green).expect("counters"),
    );
    assert_eq!(
        (green.failovers, green.new_flows, green.slot_misses),
        (1, 0, 0),
        "counted on the version that was chosen"
    );
    assert_eq!(
        (blue.new_flows, blue.traffic.packets_in),
        (1, 1),
        "served and counted by the version that has the backend"
    );
    let flow = plane
        .maps
        .flow(&key(client(47_000), svc, packet::TCP))
        .expect("read")
        .expect("flow");
    assert_eq!(flow.version, Version::Blue as u8);
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_new_flow_with_no_backend_in_either_version_is_dropped_and_counted() {
    require_root!();
    let mut plane = Plane::load(CONFIG);
    let svc = addr("198.18.0.1:9090");
    let id = service_id(&plane.maps, svc, packet::TCP);
    plane
        .maps
        .write_slots(id, Version::Blue, &splitter_ctl::model::slots::build(&[]))
        .expect("empty the blue pool too");
    let frame = Ipv4Packet::tcp(client(47_001), svc, SYN).build();
    let run = plane.ingress(&frame);
    assert_eq!(run.verdict, XDP_DROP);
    assert_eq!(
        plane
            .maps
            .counters(id, Version::Blue)
            .expect("counters")
            .slot_misses,
        1
    );
    assert_eq!(plane_count(&plane, PlaneCounter::SlotMiss), 1);
    assert!(plane.maps.flows().expect("flows").is_empty());
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn the_last_resort_pool_takes_a_new_flow_when_neither_version_has_a_backend() {
    require_root!();
    let with_last_resort = format!(
        "{CONFIG}\n[[service]]\nname = \"degradable\"\nlisten = \"198.18.0.8:8080\"\nblue = [\"198.18.1.8:8080\"]\nlast_resort = [\"198.18.3.8:8080\"]\n"
    );
    let mut plane = Plane::load(&with_last_resort);
    let svc = addr("198.18.0.8:8080");
    let id = service_id(&plane.maps, svc, packet::TCP);
    // While blue has a backend, the last resort takes nothing.
    let first = Ipv4Packet::tcp(client(47_010), svc, SYN).build();
    assert_only_destination_rewritten(&first, &plane.ingress(&first).data, addr("198.18.1.8:8080"));
    plane
        .maps
        .write_slots(id, Version::Blue, &splitter_ctl::model::slots::build(&[]))
        .expect("empty the blue pool");
    let frame = Ipv4Packet::tcp(client(47_011), svc, SYN).build();
    let run = plane.ingress(&frame);
    assert_eq!(run.verdict, XDP_PASS);
    assert_only_destination_rewritten(&frame, &run.data, addr("198.18.3.8:8080"));
    let last = plane.maps.last_resort_counters(id).expect("counters");
    assert_eq!((last.new_flows, last.traffic.packets_in), (1, 1));
    let blue = plane.maps.counters(id, Version::Blue).expect("counters");
    assert_eq!(
        (blue.slot_misses, blue.new_flows),
        (0, 1),
        "not a drop, and not blue's connection"
    );
    assert_eq!(plane_count(&plane, PlaneCounter::LastResort), 1);
    assert_eq!(
        plane_count(&plane, PlaneCounter::SlotMiss),
        0,
        "nothing dropped"
    );
    let flow = plane
        .maps
        .flow(&key(client(47_011), svc, packet::TCP))
        .expect("read")
        .expect("flow");
    assert_eq!(flow.version, splitter_common::LAST_RESORT);
    // Its replies leave as the service and count on the last-resort pool.
    let reply = Ipv4Packet::tcp(addr("198.18.3.8:8080"), client(47_011), ACK).build();
    let out = packet::parse(&plane.egress(&reply).data).expect("parses");
    assert_eq!((out.src, out.dst), (svc, client(47_011)));
    assert!(out.ip_checksum_ok && out.l4_checksum_ok);
    assert_eq!(
        plane
            .maps
            .last_resort_counters(id)
            .expect("counters")
            .traffic
            .packets_out,
        1
    );
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_release_group_shares_one_word_which_moves_when_its_first_service_leaves() {
    require_root!();
    let group = |with_first: bool| {
        let first = "[[service]]\nname = \"features\"\nlisten = \"198.18.0.6:8080\"\nblue = [\"198.18.1.6:8080\"]\ngreen = [\"198.18.2.6:8080\"]\ngroup = \"stack\"\n";
        let second = "[[service]]\nname = \"ranker\"\nlisten = \"198.18.0.7:8080\"\nblue = [\"198.18.1.7:8080\"]\ngreen = [\"198.18.2.7:8080\"]\ngroup = \"stack\"\n";
        format!("{CONFIG}\n{}{second}", if with_first { first } else { "" })
    };
    let mut plane = Plane::load(&group(true));
    let (features, ranker) = (addr("198.18.0.6:8080"), addr("198.18.0.7:8080"));
    let service = |maps: &Maps, listen: SocketAddrV4| {
        maps.service(&splitter_common::Endpoint::new(
            ipv4_mapped(listen.ip().octets()),
            listen.port(),
            packet::TCP,
        ))
        .expect("read")
        .expect("present")
    };
    let (f, r) = (service(&plane.maps, features), service(&plane.maps, ranker));
    assert_ne!(f.id, r.id);
    assert_eq!(
        (f.split, r.split),
        (f.id, f.id),
        "one word, the first service's"
    );
    // One write moves both.
    plane
        .maps
        .set_split(f.split, SplitWord::new(Version::Green, 0))
        .expect("green live for the group");
    for (port, svc, green) in [
        (47_020, features, "198.18.2.6:8080"),
        (47_021, ranker, "198.18.2.7:8080"),
    ] {
        let frame = Ipv4Packet::tcp(client(port), svc, SYN).build();
        assert_only_destination_rewritten(&frame, &plane.ingress(&frame).data, addr(green));
    }
    // Without its first service, the group's word (green live) moves to `ranker`'s id.
    let without = Config::parse(Path::new("fixture.toml"), &group(false)).expect("config");
    let applied = splitter_ctl::kernel::apply::apply(
        &mut plane.maps,
        &without,
        &splitter_ctl::kernel::apply::all_healthy,
    )
    .expect("apply without `features`");
    assert_eq!(applied.removed, vec!["198.18.0.6:8080".to_owned()]);
    let r = service(&plane.maps, ranker);
    assert_eq!(r.split, r.id);
    assert_eq!(
        plane.maps.split(r.split).expect("word").live(),
        Version::Green
    );
    let frame = Ipv4Packet::tcp(client(47_022), ranker, SYN).build();
    assert_only_destination_rewritten(&frame, &plane.ingress(&frame).data, addr("198.18.2.7:8080"));
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_service_joining_a_release_group_takes_the_groups_word_not_the_other_way_round() {
    require_root!();
    let service = |name: &str, host: u8, grouped: bool| {
        format!(
            "[[service]]\nname = \"{name}\"\nlisten = \"198.18.0.{host}:8080\"\nblue = [\"198.18.1.{host}:8080\"]\ngreen = [\"198.18.2.{host}:8080\"]\n{}",
            if grouped { "group = \"stack\"\n" } else { "" }
        )
    };
    let before = format!(
        "{CONFIG}\n{}{}{}",
        service("joiner", 9, false),
        service("features", 6, true),
        service("ranker", 7, true)
    );
    let mut plane = Plane::load(&before);
    let endpoint = |host: u8| {
        splitter_common::Endpoint::new(ipv4_mapped([198, 18, 0, host]), 8080, packet::TCP)
    };
    let kernel = |maps: &Maps, host: u8| {
        maps.service(&endpoint(host))
            .expect("read")
            .expect("present")
    };
    // The group went green; the joiner has its own word (blue live, 30% green).
    let group_at = kernel(&plane.maps, 6).split;
    plane
        .maps
        .set_split(group_at, SplitWord::new(Version::Green, 0))
        .expect("group word");
    let joiner_id = kernel(&plane.maps, 9).id;
    plane
        .maps
        .set_split(joiner_id, SplitWord::new(Version::Blue, 3_000))
        .expect("own word");
    // The joiner is listed first (it becomes the group's first service) and `features`, the
    // old first service, leaves in the same reload.
    let after = format!(
        "{CONFIG}\n{}{}",
        service("joiner", 9, true),
        service("ranker", 7, true)
    );
    let config = Config::parse(Path::new("fixture.toml"), &after).expect("config");
    splitter_ctl::kernel::apply::apply(
        &mut plane.maps,
        &config,
        &splitter_ctl::kernel::apply::all_healthy,
    )
    .expect("apply");
    let (joiner, ranker) = (kernel(&plane.maps, 9), kernel(&plane.maps, 7));
    assert_eq!((joiner.split, ranker.split), (joiner.id, joiner.id));
    assert_eq!(
        plane.maps.split(joiner.split).expect("word"),
        SplitWord::new(Version::Green, 0),
        "the group's word, not the joiner's"
    );
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_reply_from_a_backend_leaves_as_the_service_with_valid_checksums() {
    require_root!();
    let mut plane = Plane::load(CONFIG);
    let id = service_id(&plane.maps, vip(), packet::TCP);
    plane
        .maps
        .set_split(id, SplitWord::new(Version::Blue, 5_000))
        .expect("split");
    // A steered connection to each version.
    let mut conns: Vec<(SocketAddrV4, SocketAddrV4, Version)> = Vec::new();
    for port in 48_000..48_100 {
        let (backend, version) = open(&plane, client(port));
        if conns.iter().all(|(_, _, v)| *v != version) {
            conns.push((client(port), backend, version));
        }
    }
    assert_eq!(conns.len(), 2, "connections to both versions");
    for ((conn, backend, _), payload) in conns
        .iter()
        .zip([&b"HTTP/1.1 200 OK\r\n\r\n"[..], &b""[..]])
    {
        let frame = Ipv4Packet::tcp(*backend, *conn, ACK | PSH)
            .with_payload(payload)
            .build();
        let run = plane.egress(&frame);
        assert_eq!(run.verdict, TC_NEXT);
        let out = packet::parse(&run.data).expect("parses");
        assert_eq!((out.src, out.dst), (vip(), *conn));
        assert!(
            out.ip_checksum_ok && out.l4_checksum_ok,
            "checksums after reverse translation"
        );
    }
    for (_, _, version) in &conns {
        assert_eq!(
            plane
                .maps
                .counters(id, *version)
                .expect("counters")
                .traffic
                .packets_out,
            1
        );
    }
    assert_eq!(plane_count_named(&plane, "reply_translated"), 2);
}

/// Sends a datagram from `conn` to the UDP service: the backend it went to.
fn open_udp(plane: &Plane, conn: SocketAddrV4) -> SocketAddrV4 {
    let run = plane.ingress(&Ipv4Packet::udp(conn, addr("198.18.0.1:5353")).build());
    packet::parse(&run.data).expect("parses").dst
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn udp_replies_are_translated_and_keep_a_zero_checksum() {
    require_root!();
    let plane = Plane::load(CONFIG);
    for (port, no_checksum) in [(49_000, false), (49_001, true)] {
        let backend = open_udp(&plane, client(port));
        let reply = Ipv4Packet {
            udp_no_checksum: no_checksum,
            ..Ipv4Packet::udp(backend, client(port)).with_payload(b"answer")
        };
        // Twice: the first reply takes the flow table, the second the reply cache.
        for _ in 0..2 {
            let run = plane.egress(&reply.clone().build());
            let out = packet::parse(&run.data).expect("parses");
            assert_eq!(out.src, addr("198.18.0.1:5353"));
            assert!(out.ip_checksum_ok && out.l4_checksum_ok);
            assert_eq!(out.l4_checksum == 0, no_checksum);
        }
    }
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn egress_traffic_that_is_not_a_backend_reply_passes_untouched() {
    require_root!();
    let plane = Plane::load(CONFIG);
    for frame in [
        Ipv4Packet::tcp(addr("198.18.1.9:8080"), client(50_000), ACK).build(),
        Ipv4Packet::tcp(addr("198.18.1.2:8081"), client(50_000), ACK).build(),
        Ipv4Packet::udp(addr("198.18.1.2:8080"), client(50_000)).build(),
        packet::arp(),
        packet::ipv6_tcp_syn(8080),
    ] {
        let run = plane.egress(&frame);
        assert_eq!((run.verdict, &run.data), (TC_NEXT, &frame));
    }
    assert_eq!(plane_count_named(&plane, "reply_translated"), 0);
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_fin_or_rst_from_the_backend_closes_the_flow() {
    require_root!();
    let plane = Plane::load(CONFIG);
    for (port, flags, state) in [
        (51_000, FIN | ACK, FLOW_FIN_BACKEND),
        (51_001, RST, FLOW_RST),
    ] {
        let syn = plane.ingress(&Ipv4Packet::tcp(client(port), vip(), SYN).build());
        let backend = packet::parse(&syn.data).expect("parses").dst;
        let _ = plane.egress(&Ipv4Packet::tcp(backend, client(port), flags).build());
        let flow = plane
            .maps
            .flow(&key(client(port), vip(), packet::TCP))
            .expect("read")
            .expect("flow");
        assert_eq!(closing(flow.state), state);
    }
}

/// Moves this thread to `cpu`; BPF_PROG_TEST_RUN runs the program on the caller's CPU.
fn run_on_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET and sched_setaffinity only touch it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0,
            "pin to CPU {cpu}"
        );
    }
}

#[test]
#[ignore = "needs root and two CPUs: `cargo xtask test` runs it"]
fn a_reused_tuple_never_follows_another_cpus_cached_copy_of_the_old_connection() {
    require_root!();
    assert!(
        std::thread::available_parallelism().map_or(1, usize::from) >= 2,
        "this test needs two CPUs: a flow cached on one CPU is read on the other"
    );
    let mut plane = Plane::load(CONFIG);
    let id = service_id(&plane.maps, vip(), packet::TCP);
    let conn = client(52_000);
    let dst = |run: splitter_tests::plane::Run| packet::parse(&run.data).expect("parses").dst;

    run_on_cpu(0);
    let first = dst(plane.ingress(&Ipv4Packet::tcp(conn, vip(), SYN).build()));
    assert_eq!(
        dst(plane.ingress(&Ipv4Packet::tcp(conn, vip(), ACK).build())),
        first,
        "CPU 0 caches the flow"
    );

    // The connection closes and its 5-tuple is reused on CPU 1, after the share moved.
    run_on_cpu(1);
    let _ = plane.ingress(&Ipv4Packet::tcp(conn, vip(), FIN | ACK).build());
    plane
        .maps
        .set_split(id, SplitWord::new(Version::Blue, 10_000))
        .expect("all to green");
    let green = addr("198.18.2.2:8080");
    assert_eq!(
        dst(plane.ingress(&Ipv4Packet::tcp(conn, vip(), SYN).build())),
        green
    );

    // CPU 0 must not serve the old connection's backend from its cache.
    run_on_cpu(0);
    assert_eq!(
        dst(plane.ingress(&Ipv4Packet::tcp(conn, vip(), ACK).build())),
        green
    );
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn removing_a_service_leaves_no_cached_flow_behind() {
    require_root!();
    let with_second = format!(
        "{CONFIG}\n[[service]]\nname = \"second\"\nlisten = \"198.18.0.5:8080\"\nblue = [\"198.18.1.5:8080\"]\n"
    );
    let mut plane = Plane::load(&with_second);
    let second = addr("198.18.0.5:8080");
    run_on_cpu(0);
    let _ = plane.ingress(&Ipv4Packet::tcp(client(53_000), second, SYN).build());
    let ack = Ipv4Packet::tcp(client(53_000), second, ACK).build();
    assert_eq!(
        packet::parse(&plane.ingress(&ack).data)
            .expect("parses")
            .dst,
        addr("198.18.1.5:8080")
    );

    // The port stays in use by `model`, so only the flow state decides what happens next.
    let without = Config::parse(Path::new("fixture.toml"), CONFIG).expect("config");
    let applied = splitter_ctl::kernel::apply::apply(
        &mut plane.maps,
        &without,
        &splitter_ctl::kernel::apply::all_healthy,
    )
    .expect("apply without `second`");
    assert_eq!(applied.removed, vec!["198.18.0.5:8080".to_owned()]);
    assert_eq!(applied.purged_flows, 1);
    let run = plane.ingress(&ack);
    assert_eq!(
        (run.verdict, &run.data),
        (XDP_PASS, &ack),
        "the removed service's flow is no longer steered"
    );
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn closed_flows_are_swept_after_their_grace_and_open_or_half_closed_flows_never() {
    require_root!();
    let mut plane = Plane::load(CONFIG);
    let (open, half, fin, rst) = (
        client(54_000),
        client(54_001),
        client(54_002),
        client(54_003),
    );
    let mut backends = std::collections::HashMap::new();
    for conn in [open, half, fin, rst] {
        let run = plane.ingress(&Ipv4Packet::tcp(conn, vip(), SYN).build());
        backends.insert(conn, packet::parse(&run.data).expect("parses").dst);
    }
    // `half`: the client is done sending, the backend still streams. `fin`: both are done.
    let _ = plane.ingress(&Ipv4Packet::tcp(half, vip(), FIN | ACK).build());
    let _ = plane.ingress(&Ipv4Packet::tcp(fin, vip(), FIN | ACK).build());
    let _ = plane.egress(&Ipv4Packet::tcp(backends[&fin], fin, FIN | ACK).build());
    let _ = plane.ingress(&Ipv4Packet::tcp(rst, vip(), RST).build());
    let state = |plane: &Plane, conn| {
        plane
            .maps
            .flow(&key(conn, vip(), packet::TCP))
            .expect("read")
            .map(|f| closing(f.state))
    };
    assert_eq!(state(&plane, fin), Some(FLOW_FIN_CLIENT | FLOW_FIN_BACKEND));
    let id = service_id(&plane.maps, vip(), packet::TCP);
    let closed: u64 = [Version::Blue, Version::Green]
        .iter()
        .map(|v| plane.maps.counters(id, *v).expect("counters").closed_flows)
        .sum();
    assert_eq!(closed, 2, "the reset and the fully finished connection");

    let now = splitter_ctl::kernel::aging::monotonic_ns();
    let seconds = |s: u64| now + s * 1_000_000_000;
    let sweep = |plane: &mut Plane, at| {
        splitter_ctl::kernel::aging::sweep(&mut plane.maps, at).expect("sweep")
    };
    assert_eq!(sweep(&mut plane, now), 0, "nothing is past its grace yet");
    assert_eq!(
        sweep(&mut plane, seconds(11)),
        1,
        "the reset flow goes after 10 s"
    );
    assert_eq!(state(&plane, rst), None);
    assert_eq!(
        sweep(&mut plane, seconds(61)),
        1,
        "the finished flow goes after 60 s"
    );
    assert_eq!(state(&plane, fin), None);
    assert_eq!(sweep(&mut plane, seconds(100_000)), 0);
    assert_eq!(
        state(&plane, open),
        Some(FLOW_OPEN),
        "an open flow is never swept"
    );
    assert_eq!(
        state(&plane, half),
        Some(FLOW_FIN_CLIENT),
        "a half-closed flow is never swept"
    );
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn requests_and_responses_are_timed_and_status_classes_counted() {
    require_root!();
    let plane = Plane::load(CONFIG);
    let id = service_id(&plane.maps, vip(), packet::TCP);
    let conn = client(55_000);
    let (backend, version) = open(&plane, conn);
    let _ = plane.egress(&Ipv4Packet::tcp(backend, conn, SYN | ACK).build());
    let _ = plane.ingress(&Ipv4Packet::tcp(conn, vip(), ACK).build());
    let exchange = |request: &[u8], response: &[u8]| {
        let _ = plane.ingress(
            &Ipv4Packet::tcp(conn, vip(), ACK | PSH)
                .with_payload(request)
                .build(),
        );
        let _ = plane.egress(
            &Ipv4Packet::tcp(backend, conn, ACK | PSH)
                .with_payload(response)
                .build(),
        );
    };
    exchange(
        b"GET / HTTP/1.1\r\n\r\n",
        b"HTTP/1.1 503 Service Unavailable\r\n\r\n",
    );
    // A second segment of the same response is not a new response.
    let _ = plane.egress(
        &Ipv4Packet::tcp(backend, conn, ACK | PSH)
            .with_payload(b"more body")
            .build(),
    );
    exchange(b"GET / HTTP/1.1\r\n\r\n", b"HTTP/1.0 200 OK\r\n\r\n");
    exchange(
        b"\x16\x03\x01 client hello",
        b"\x16\x03\x03 server hello, not HTTP",
    );
    exchange(b"GET / HTTP/1.1\r\n\r\n", b"HTTP/1.1 9");

    let stats = plane.maps.counters(id, version).expect("counters");
    assert_eq!(stats.responses, 4);
    assert_eq!(stats.http_status, [2, 0, 1, 0, 0, 1], "unparsed, 1xx..5xx");
    let response = plane
        .maps
        .histogram(id, version, splitter_common::LatencyKind::Response)
        .expect("histogram");
    let handshake = plane
        .maps
        .histogram(id, version, splitter_common::LatencyKind::Handshake)
        .expect("histogram");
    assert_eq!((response.count, handshake.count), (4, 1));
    assert_eq!(response.buckets.iter().sum::<u64>(), 4);
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_reset_before_the_syn_ack_is_a_refused_handshake_and_after_it_a_backend_reset() {
    require_root!();
    let plane = Plane::load(CONFIG);
    let id = service_id(&plane.maps, vip(), packet::TCP);
    let refused = client(56_000);
    let (backend, version) = open(&plane, refused);
    let _ = plane.egress(&Ipv4Packet::tcp(backend, refused, RST | ACK).build());

    let reset = client(56_001);
    let (backend, other) = open(&plane, reset);
    let _ = plane.egress(&Ipv4Packet::tcp(backend, reset, SYN | ACK).build());
    let _ = plane.egress(&Ipv4Packet::tcp(backend, reset, RST).build());

    let total = |field: fn(&splitter_common::VersionStats) -> u64| -> u64 {
        [Version::Blue, Version::Green]
            .iter()
            .map(|v| field(&plane.maps.counters(id, *v).expect("counters")))
            .sum()
    };
    assert_eq!(total(|s| s.refused_handshakes), 1);
    assert_eq!(total(|s| s.backend_resets), 1);
    assert_eq!(
        plane
            .maps
            .counters(id, version)
            .expect("counters")
            .refused_handshakes,
        1,
        "on the refusing version"
    );
    assert_eq!(
        plane
            .maps
            .counters(id, other)
            .expect("counters")
            .backend_resets,
        1,
        "on the resetting version"
    );
}

const CONFIG6: &str = r#"
interface = "lo"

[[service]]
name = "model6"
listen = "[2001:db8::1]:8080"
blue = ["[2001:db8:1::2]:8080"]
green = ["[2001:db8:2::2]:8080"]

[[service]]
name = "dns6"
listen = "[2001:db8::1]:5353"
protocol = "udp"
blue = ["[2001:db8:1::2]:5353"]
"#;

fn addr6(text: &str) -> std::net::SocketAddrV6 {
    text.parse().expect("IPv6 address")
}

fn client6(port: u16) -> std::net::SocketAddrV6 {
    std::net::SocketAddrV6::new("2001:db8::2".parse().expect("address"), port, 0, 0)
}

fn service6_id(maps: &Maps, listen: std::net::SocketAddrV6, protocol: u8) -> u32 {
    let endpoint = splitter_common::Endpoint::new(listen.ip().octets(), listen.port(), protocol);
    maps.service(&endpoint)
        .expect("read")
        .expect("service present")
        .id
}

/// Asserts an IPv6 frame was rewritten to `to` and nothing but the destination and the L4
/// checksum changed.
fn assert_v6_destination_rewritten(input: &[u8], out: &[u8], to: std::net::SocketAddrV6) {
    let (before, after) = (
        packet::parse6(input).expect("input parses"),
        packet::parse6(out).expect("output parses"),
    );
    assert_eq!(after.dst, to);
    assert_eq!((after.src, after.protocol), (before.src, before.protocol));
    assert!(
        after.l4_checksum_ok,
        "L4 checksum over the IPv6 pseudo-header"
    );
    assert_eq!(input.len(), out.len());
    let changed: Vec<usize> = input
        .iter()
        .zip(out)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, _)| i)
        .collect();
    // Only the destination address (frame bytes 38..54) and, past the IPv6 header, the port and
    // the checksum may change.
    assert!(
        changed.iter().all(|i| (38..54).contains(i) || *i >= 54),
        "bytes of the IPv6 header other than the destination changed: {changed:?}"
    );
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn ipv6_new_and_established_flows_are_steered_with_valid_checksums() {
    require_root!();
    let mut plane = Plane::load(CONFIG6);
    let vip6 = addr6("[2001:db8::1]:8080");
    let id = service6_id(&plane.maps, vip6, packet::TCP);
    let syn = packet::Ipv6Packet::tcp(client6(40_000), vip6, SYN).build();
    let run = plane.ingress(&syn);
    assert_eq!(run.verdict, XDP_PASS);
    assert_v6_destination_rewritten(&syn, &run.data, addr6("[2001:db8:1::2]:8080"));
    assert_eq!(
        plane
            .maps
            .counters(id, Version::Blue)
            .expect("counters")
            .new_flows,
        1
    );

    plane
        .maps
        .set_split(id, SplitWord::new(Version::Blue, 10_000))
        .expect("all new flows to green");
    let data = packet::Ipv6Packet::tcp(client6(40_000), vip6, ACK | PSH)
        .with_payload(b"GET / HTTP/1.1\r\n\r\n")
        .build();
    let run = plane.ingress(&data);
    assert_v6_destination_rewritten(&data, &run.data, addr6("[2001:db8:1::2]:8080"));
    let fresh = packet::Ipv6Packet::tcp(client6(40_001), vip6, SYN).build();
    let run = plane.ingress(&fresh);
    assert_v6_destination_rewritten(&fresh, &run.data, addr6("[2001:db8:2::2]:8080"));

    let dns = packet::Ipv6Packet::udp(client6(40_002), addr6("[2001:db8::1]:5353"))
        .with_payload(b"query")
        .build();
    let run = plane.ingress(&dns);
    assert_v6_destination_rewritten(&dns, &run.data, addr6("[2001:db8:1::2]:5353"));
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn ipv6_extension_headers_are_skipped_and_what_cannot_be_steered_passes_untouched() {
    require_root!();
    let plane = Plane::load(CONFIG6);
    let vip6 = addr6("[2001:db8::1]:8080");
    let with_options = packet::Ipv6Packet {
        extensions: vec![packet::EXT_HOP_BY_HOP, packet::EXT_DESTINATION],
        ..packet::Ipv6Packet::tcp(client6(41_000), vip6, SYN)
    }
    .build();
    let run = plane.ingress(&with_options);
    assert_v6_destination_rewritten(&with_options, &run.data, addr6("[2001:db8:1::2]:8080"));

    let cases: Vec<(&str, Vec<u8>, PlaneCounter)> = vec![
        (
            "a fragment",
            packet::Ipv6Packet {
                extensions: vec![packet::EXT_FRAGMENT],
                ..packet::Ipv6Packet::tcp(client6(41_001), vip6, SYN)
            }
            .build(),
            PlaneCounter::Fragment,
        ),
        (
            "five extension headers",
            packet::Ipv6Packet {
                extensions: vec![packet::EXT_DESTINATION; 5],
                ..packet::Ipv6Packet::tcp(client6(41_002), vip6, SYN)
            }
            .build(),
            PlaneCounter::IpOptions,
        ),
        (
            "a neighbour solicitation",
            packet::Ipv6Packet::neighbour_solicitation(client6(0), addr6("[2001:db8::1]:0"))
                .build(),
            PlaneCounter::NotService,
        ),
        (
            "another port",
            packet::Ipv6Packet::tcp(client6(41_003), addr6("[2001:db8::1]:8081"), SYN).build(),
            PlaneCounter::NotService,
        ),
        (
            "a truncated IPv6 header",
            packet::Ipv6Packet::tcp(client6(41_004), vip6, SYN).build()[..14 + 30].to_vec(),
            PlaneCounter::Malformed,
        ),
    ];
    for (name, frame, counter) in cases {
        let before = plane_count(&plane, counter);
        let run = plane.ingress(&frame);
        assert_eq!(
            (run.verdict, &run.data),
            (XDP_PASS, &frame),
            "{name}: passed byte-identical"
        );
        assert_eq!(
            plane_count(&plane, counter),
            before + 1,
            "{name}: counted as {}",
            counter.name()
        );
    }
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn ipv6_replies_leave_as_the_service_with_valid_checksums() {
    require_root!();
    let plane = Plane::load(CONFIG6);
    for service in ["[2001:db8::1]:8080", "[2001:db8::1]:5353"] {
        let udp = service.ends_with("5353");
        // The connection first, so that its replies are a steered flow's.
        let first = if udp {
            packet::Ipv6Packet::udp(client6(42_000), addr6(service))
        } else {
            packet::Ipv6Packet::tcp(client6(42_000), addr6(service), SYN)
        };
        let steered = plane.ingress(&first.build());
        let backend = packet::parse6(&steered.data).expect("parses").dst;
        let base = if udp {
            packet::Ipv6Packet::udp(backend, client6(42_000))
        } else {
            packet::Ipv6Packet::tcp(backend, client6(42_000), ACK | PSH)
        };
        let frame = base.with_payload(b"HTTP/1.1 200 OK\r\n\r\n").build();
        let run = plane.egress(&frame);
        assert_eq!(run.verdict, TC_NEXT);
        let out = packet::parse6(&run.data).expect("parses");
        assert_eq!((out.src, out.dst), (addr6(service), client6(42_000)));
        assert!(out.l4_checksum_ok, "L4 checksum after reverse translation");
    }
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn resets_count_once_a_miss_is_never_a_refusal_and_only_the_flow_s_backend_speaks_for_it() {
    require_root!();
    let plane = Plane::load(CONFIG);
    let id = service_id(&plane.maps, vip(), packet::TCP);
    let total = |field: fn(&splitter_common::VersionStats) -> u64| -> u64 {
        [Version::Blue, Version::Green]
            .iter()
            .map(|v| field(&plane.maps.counters(id, *v).expect("counters")))
            .sum()
    };

    // A flow that began with a miss (no SYN seen): its RST is a reset, and only one counts.
    let miss = client(57_000);
    let run = plane.ingress(&Ipv4Packet::tcp(miss, vip(), ACK).build());
    let backend = packet::parse(&run.data).expect("parses").dst;
    for _ in 0..3 {
        let _ = plane.egress(&Ipv4Packet::tcp(backend, miss, RST).build());
    }
    assert_eq!(
        (total(|s| s.backend_resets), total(|s| s.refused_handshakes)),
        (1, 0)
    );

    // A late FIN from another backend does not close this flow.
    let conn = client(57_001);
    let syn = plane.ingress(&Ipv4Packet::tcp(conn, vip(), SYN).build());
    let mine = packet::parse(&syn.data).expect("parses").dst;
    let other = if mine == addr("198.18.2.2:8080") {
        addr("198.18.1.2:8080")
    } else {
        addr("198.18.2.2:8080")
    };
    let _ = plane.egress(&Ipv4Packet::tcp(other, conn, FIN | ACK).build());
    let flow = plane
        .maps
        .flow(&key(conn, vip(), packet::TCP))
        .expect("read")
        .expect("flow");
    assert_eq!(
        closing(flow.state),
        FLOW_OPEN,
        "another backend's FIN is ignored"
    );
}

/// What a drain reads of a connection in the flow table (`engine::drain::exchange`), as the
/// programs leave it after each packet of an exchange: a request waiting, a streamed response's
/// headers, its chunks, its last chunk; a response whose length its headers give.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn the_flow_table_says_whether_a_request_or_a_stream_is_open_for_a_drain() {
    use splitter_ctl::engine::drain::{Exchange, exchange};
    require_root!();
    let plane = Plane::load(CONFIG);
    let conn = client(58_100);
    let (backend, _) = open(&plane, conn);
    let _ = plane.egress(&Ipv4Packet::tcp(backend, conn, SYN | ACK).build());
    let tuple = key(conn, vip(), packet::TCP);
    let now = |plane: &Plane| {
        let flow = plane.maps.flow(&tuple).expect("read").expect("flow");
        exchange(&flow, None)
    };
    let client_sends = |bytes: &[u8]| {
        let _ = plane.ingress(
            &Ipv4Packet::tcp(conn, vip(), ACK | PSH)
                .with_payload(bytes)
                .build(),
        );
    };
    let server_sends = |bytes: &[u8]| {
        let _ = plane.egress(
            &Ipv4Packet::tcp(backend, conn, ACK | PSH)
                .with_payload(bytes)
                .build(),
        );
    };
    assert_eq!(now(&plane), Exchange::Quiet, "no request yet");
    client_sends(b"POST /v1/completions HTTP/1.1\r\n\r\n{}");
    assert_eq!(now(&plane), Exchange::Waiting, "the request waits");
    server_sends(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert_eq!(
        now(&plane),
        Exchange::Waiting,
        "headers alone: the first token waits"
    );
    server_sends(b"e\r\ndata: token\n\n\r\n");
    assert_eq!(now(&plane), Exchange::Streaming);
    server_sends(b"e\r\ndata: token\n\n\r\n");
    assert_eq!(now(&plane), Exchange::Streaming);
    server_sends(b"0\r\n\r\n");
    assert_eq!(now(&plane), Exchange::Quiet, "the last chunk");
    client_sends(b"GET / HTTP/1.1\r\n\r\n");
    server_sends(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{\"ok\":true}");
    assert_eq!(
        now(&plane),
        Exchange::Quiet,
        "a body with its length, whole"
    );
    client_sends(b"GET / HTTP/1.1\r\n\r\n");
    server_sends(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n");
    assert_eq!(
        now(&plane),
        Exchange::Streaming,
        "headers and a first chunk together"
    );

    // A TLS connection: nothing is read or timed, only who spoke last.
    let tls = client(58_101);
    let (tls_backend, version) = open(&plane, tls);
    let _ = plane.egress(&Ipv4Packet::tcp(tls_backend, tls, SYN | ACK).build());
    let id = service_id(&plane.maps, vip(), packet::TCP);
    let before = plane.maps.counters(id, version).expect("counters");
    let tls_now = |plane: &Plane| {
        let flow = plane
            .maps
            .flow(&key(tls, vip(), packet::TCP))
            .expect("read")
            .expect("flow");
        exchange(&flow, None)
    };
    let _ = plane.ingress(
        &Ipv4Packet::tcp(tls, vip(), ACK | PSH)
            .with_payload(b"\x16\x03\x01\x00\x05hello")
            .build(),
    );
    assert_eq!(tls_now(&plane), Exchange::ClientSpokeLast);
    let _ = plane.egress(
        &Ipv4Packet::tcp(tls_backend, tls, ACK | PSH)
            .with_payload(b"\x17\x03\x03\x00\x05bytes")
            .build(),
    );
    assert_eq!(tls_now(&plane), Exchange::Quiet, "the backend spoke last");
    let _ = plane.ingress(
        &Ipv4Packet::tcp(tls, vip(), ACK | PSH)
            .with_payload(b"\x17\x03\x03\x00\x05again")
            .build(),
    );
    assert_eq!(tls_now(&plane), Exchange::ClientSpokeLast);
    let after = plane.maps.counters(id, version).expect("counters");
    assert_eq!(
        after.responses, before.responses,
        "nothing counted as a response"
    );
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_100_continue_leaves_the_request_open_for_the_final_response() {
    require_root!();
    let plane = Plane::load(CONFIG);
    let id = service_id(&plane.maps, vip(), packet::TCP);
    let conn = client(58_000);
    let (backend, version) = open(&plane, conn);
    let _ = plane.ingress(
        &Ipv4Packet::tcp(conn, vip(), ACK | PSH)
            .with_payload(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n")
            .build(),
    );
    let _ = plane.egress(
        &Ipv4Packet::tcp(backend, conn, ACK | PSH)
            .with_payload(b"HTTP/1.1 100 Continue\r\n\r\n")
            .build(),
    );
    let _ = plane.ingress(
        &Ipv4Packet::tcp(conn, vip(), ACK | PSH)
            .with_payload(b"the body")
            .build(),
    );
    let _ = plane.egress(
        &Ipv4Packet::tcp(backend, conn, ACK | PSH)
            .with_payload(b"HTTP/1.1 201 Created\r\n\r\n")
            .build(),
    );
    let stats = plane.maps.counters(id, version).expect("counters");
    assert_eq!(stats.responses, 1, "one request, one response");
    assert_eq!(stats.http_status, [0, 1, 1, 0, 0, 0]);
    assert_eq!(
        plane
            .maps
            .histogram(id, version, splitter_common::LatencyKind::Response)
            .expect("histogram")
            .count,
        1
    );
}

/// The reports the programs wrote, as the daemon's forwarder would receive them.
#[derive(Clone, Default)]
struct Reports(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl Reports {
    fn taken(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().expect("reports"))
    }
}

impl log::Log for Reports {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        self.0
            .lock()
            .expect("reports")
            .push(format!("{} {}", record.level(), record.args()));
    }

    fn flush(&self) {}
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn rare_events_are_reported_to_the_log_at_most_once_a_second_per_cpu() {
    require_root!();
    // One CPU: the limit is per CPU, and BPF_PROG_TEST_RUN runs on the caller's.
    run_on_cpu(0);
    let with_last_resort = format!(
        "{CONFIG}\n[[service]]\nname = \"degradable\"\nlisten = \"198.18.0.8:8080\"\nblue = [\"198.18.1.8:8080\"]\nlast_resort = [\"198.18.3.8:8080\"]\n"
    );
    let mut plane = Plane::load(&with_last_resort);
    let reports = Reports::default();
    let mut reader = plane.take_reports(reports.clone());
    let full = Ipv4Packet::tcp(client(47_100), vip(), SYN).build();
    let truncated = full[..14 + 20 + 12].to_vec();
    for _ in 0..50 {
        assert_eq!(plane.ingress(&truncated).verdict, XDP_PASS);
    }
    reader.flush();
    let first = reports.taken();
    assert_eq!(
        first.len(),
        1,
        "one report for 50 malformed frames: {first:?}"
    );
    assert!(
        first[0].starts_with("WARN a frame too short") && first[0].contains("(0 more"),
        "{first:?}"
    );
    assert_eq!(
        plane_count(&plane, PlaneCounter::Malformed),
        50,
        "every frame still counted"
    );
    std::thread::sleep(std::time::Duration::from_millis(1_100));
    assert_eq!(plane.ingress(&truncated).verdict, XDP_PASS);
    reader.flush();
    let second = reports.taken();
    assert_eq!(second.len(), 1, "{second:?}");
    assert!(
        second[0].contains("(49 more"),
        "the next report counts those held back: {second:?}"
    );

    // The last-resort pool taking a flow is reported too.
    let svc = addr("198.18.0.8:8080");
    let id = service_id(&plane.maps, svc, packet::TCP);
    plane
        .maps
        .write_slots(id, Version::Blue, &splitter_ctl::model::slots::build(&[]))
        .expect("empty the blue pool");
    let _ = plane.ingress(&Ipv4Packet::tcp(client(47_101), svc, SYN).build());
    reader.flush();
    let last = reports.taken();
    assert!(
        last.len() == 1 && last[0].contains("last-resort pool"),
        "{last:?}"
    );
}

/// The verifier walks every path of a program up to a million instructions; a program near the
/// limit is refused after the next small change, or on another kernel. Each keeps a quarter of
/// the budget free.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn the_programs_leave_the_verifier_a_quarter_of_its_budget() {
    require_root!();
    let plane = Plane::load(CONFIG);
    for name in [
        splitter_common::maps::PROGRAM_INGRESS,
        splitter_common::maps::PROGRAM_EGRESS,
        splitter_common::maps::PROGRAM_REPLY,
        splitter_common::maps::PROGRAM_H2,
        splitter_common::maps::PROGRAM_H2_REPLY,
    ] {
        let walked = plane.verified_instructions(name);
        eprintln!("{name}: the verifier walked {walked} instructions");
        assert!(walked < 750_000, "{name}: {walked} instructions verified");
    }
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn traffic_to_a_backends_own_address_passes_byte_identical_both_ways_and_is_not_service_traffic() {
    require_root!();
    let plane = Plane::load(CONFIG);
    let id = service_id(&plane.maps, vip(), packet::TCP);
    let traffic = |plane: &Plane| -> (u64, u64) {
        [Version::Blue, Version::Green]
            .iter()
            .map(|v| plane.maps.counters(id, *v).expect("counters"))
            .fold((0, 0), |(i, o), s| {
                (i + s.traffic.packets_in, o + s.traffic.packets_out)
            })
    };
    // A health check or a scrape straight to blue, from the client's side of the interface.
    let (me, blue) = (client(52_000), addr("198.18.1.2:8080"));
    let scrape = b"GET /metrics HTTP/1.1\r\nHost: blue\r\n\r\n";
    for frame in [
        Ipv4Packet::tcp(me, blue, SYN).build(),
        Ipv4Packet::tcp(me, blue, ACK | PSH)
            .with_payload(scrape)
            .build(),
    ] {
        let run = plane.ingress(&frame);
        assert_eq!((run.verdict, &run.data), (XDP_PASS, &frame), "request");
    }
    let answers = [
        Ipv4Packet::tcp(blue, me, SYN | ACK).build(),
        Ipv4Packet::tcp(blue, me, ACK | PSH)
            .with_payload(b"HTTP/1.1 200 OK\r\n\r\n")
            .build(),
        Ipv4Packet::tcp(blue, me, ACK).build(),
        Ipv4Packet::tcp(blue, me, ACK).build(),
        Ipv4Packet::tcp(blue, me, FIN | ACK).build(),
    ];
    for frame in &answers {
        let run = plane.egress(frame);
        assert_eq!((run.verdict, &run.data), (TC_NEXT, frame), "answer");
    }
    assert_eq!(traffic(&plane), (0, 0), "none of it is service traffic");
    assert_eq!(
        plane_count(&plane, PlaneCounter::Unsteered),
        answers.len() as u64
    );

    // A steered connection from the next port still leaves as the service.
    let (backend, _) = open(&plane, client(52_001));
    let run = plane.egress(&Ipv4Packet::tcp(backend, client(52_001), SYN | ACK).build());
    assert_eq!(packet::parse(&run.data).expect("parses").src, vip());
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_client_port_reused_straight_to_the_backend_is_not_taken_for_the_closed_steered_flow() {
    require_root!();
    let plane = Plane::load(CONFIG);
    run_on_cpu(0);
    let me = client(53_000);
    let (backend, _) = open(&plane, me);
    // The steered connection: its replies leave as the service, the pure ACKs from the cache.
    for flags in [SYN | ACK, ACK, ACK, FIN | ACK] {
        let run = plane.egress(&Ipv4Packet::tcp(backend, me, flags).build());
        assert_eq!(packet::parse(&run.data).expect("parses").src, vip());
    }
    let _ = plane.ingress(&Ipv4Packet::tcp(me, vip(), FIN | ACK).build());
    // The client connects from the same port straight to that backend.
    let _ = plane.ingress(&Ipv4Packet::tcp(me, backend, SYN).build());
    for flags in [SYN | ACK, ACK, ACK] {
        let frame = Ipv4Packet::tcp(backend, me, flags).build();
        let run = plane.egress(&frame);
        assert_eq!(
            (run.verdict, &run.data),
            (TC_NEXT, &frame),
            "the direct connection's {flags:#x} passes untouched"
        );
    }
    assert_eq!(plane_count(&plane, PlaneCounter::Unsteered), 3);
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_guarded_new_flow_s_handshake_is_still_translated() {
    require_root!();
    let mut plane = Plane::load(CONFIG);
    run_on_cpu(0);
    // One entry a second: the first SYN takes it, the next is guarded.
    plane.maps.set_new_flow_rate(1).expect("guard");
    let (first, second) = (client(54_000), client(54_001));
    let _ = open(&plane, first);
    let (backend, _) = open(&plane, second);
    assert_eq!(plane_count(&plane, PlaneCounter::Guarded), 1);
    assert!(
        plane
            .maps
            .flow(&key(second, vip(), packet::TCP))
            .expect("read")
            .is_none(),
        "the guarded flow has no entry"
    );
    let run = plane.egress(&Ipv4Packet::tcp(backend, second, SYN | ACK).build());
    let out = packet::parse(&run.data).expect("parses");
    assert_eq!(out.src, vip(), "the SYN-ACK leaves as the service");
    assert!(out.ip_checksum_ok && out.l4_checksum_ok);
    // The client's ACK creates the entry (a miss); the replies follow it.
    let _ = plane.ingress(&Ipv4Packet::tcp(second, vip(), ACK).build());
    let run = plane.egress(&Ipv4Packet::tcp(backend, second, ACK).build());
    assert_eq!(packet::parse(&run.data).expect("parses").src, vip());
    // Another backend's SYN-ACK to that client is not the guarded flow's.
    let other = if backend == addr("198.18.2.2:8080") {
        addr("198.18.1.2:8080")
    } else {
        addr("198.18.2.2:8080")
    };
    let frame = Ipv4Packet::tcp(other, client(54_002), SYN | ACK).build();
    assert_eq!(plane.egress(&frame).data, frame);
}
