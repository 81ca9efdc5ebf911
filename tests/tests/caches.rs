//! The packet path's per-CPU caches on crafted packets (BPF_PROG_TEST_RUN, this thread pinned to
//! one CPU at a time so that every run sees the known per-CPU values): flows whose keys fall in
//! one set of the flow cache share it, two at a time, each way holding what `FLOWS` says of its
//! own flow; a new flow empties its set on every CPU; the next hops of hundreds of backends are
//! all kept, and of three that share a set, the two asked last. The express lane: a cached
//! flow's pure ACK is steered from its cache way, which copies its backend's next hop on the
//! first such packet, to the backend `FLOWS` names and with the counts the general path makes;
//! a request or a close on the same flow still takes the general path, which records them.

use std::{net::SocketAddrV4, thread, time::Duration};

use splitter_common::{
    CachedFlow, FLOW_FIN_CLIENT, FlowKey, NextHop, Version, VersionStats, ipv4_mapped,
};
use splitter_tests::{
    checksum,
    netns::Netns,
    packet::{ACK, FIN, Ipv4Packet, PSH, RST, SYN},
    plane::{FIXTURE_CONFIG, Pinned, Plane},
    require_root,
};

const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;
const CPU: usize = 0;
/// What the fast path counts of every steered packet: one of these.
const FORWARD_OUTCOMES: [&str; 5] = [
    "forwarded",
    "forward_routed",
    "forward_no_neighbour",
    "forward_too_big",
    "forward_no_device",
];

fn vip() -> SocketAddrV4 {
    "198.18.0.1:8080".parse().expect("address")
}

fn client(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new([198, 18, 0, 2].into(), port)
}

fn key(from: SocketAddrV4) -> FlowKey {
    FlowKey {
        src_addr: ipv4_mapped(from.ip().octets()),
        dst_addr: ipv4_mapped(vip().ip().octets()),
        src_port_be: from.port().to_be(),
        dst_port_be: vip().port().to_be(),
        protocol: 6,
        _pad: [0; 3],
    }
}

/// The destination a steered packet left with.
fn destination(frame: &[u8]) -> SocketAddrV4 {
    let ip = 14;
    let l4 = ip + 20;
    SocketAddrV4::new(
        [
            frame[ip + 16],
            frame[ip + 17],
            frame[ip + 18],
            frame[ip + 19],
        ]
        .into(),
        u16::from_be_bytes([frame[l4 + 2], frame[l4 + 3]]),
    )
}

/// Sends `flags` from `from` to the service and returns where it went.
fn send(plane: &Plane, from: SocketAddrV4, flags: u8) -> SocketAddrV4 {
    let run = plane.ingress(&Ipv4Packet::tcp(from, vip(), flags).build());
    assert!(
        matches!(run.verdict, XDP_PASS | XDP_REDIRECT),
        "{from}: verdict {}",
        run.verdict
    );
    destination(&run.data)
}

/// The flow table's backend of `from`'s flow.
fn pinned_backend(plane: &Plane, from: SocketAddrV4) -> SocketAddrV4 {
    let flow = plane
        .maps
        .flow(&key(from))
        .expect("flow table")
        .unwrap_or_else(|| panic!("{from} has no flow"));
    let a = flow.backend_addr;
    SocketAddrV4::new(
        [a[12], a[13], a[14], a[15]].into(),
        u16::from_be(flow.backend_port_be),
    )
}

/// Checks that every way of `set` on `cpu` holds what `FLOWS` says of its own flow, and returns
/// the keys in the ways' order.
fn ways(plane: &Plane, set: u32, cpu: usize) -> Vec<FlowKey> {
    plane
        .cached_flows(set, cpu)
        .into_iter()
        .map(|(key, backend)| {
            let from = SocketAddrV4::new(
                [
                    key.src_addr[12],
                    key.src_addr[13],
                    key.src_addr[14],
                    key.src_addr[15],
                ]
                .into(),
                u16::from_be(key.src_port_be),
            );
            assert_eq!(backend, pinned_backend(plane, from), "the way of {from}");
            key
        })
        .collect()
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn flows_in_one_set_share_it_two_at_a_time_and_each_keeps_its_own_backend() {
    require_root!();
    let _pinned = Pinned::to_cpu(CPU);
    let plane = Plane::load(FIXTURE_CONFIG);
    // Three clients whose keys fall in one set.
    let set = key(client(40_000)).cache_set();
    let clients: Vec<SocketAddrV4> = (40_000..u16::MAX)
        .map(client)
        .filter(|c| key(*c).cache_set() == set)
        .take(3)
        .collect();
    let [a, b, c] = clients[..] else {
        panic!("fewer than three clients in set {set}: {clients:?}");
    };
    for from in [a, b] {
        send(&plane, from, SYN);
    }
    for from in [a, b, a, b] {
        assert_eq!(send(&plane, from, ACK), pinned_backend(&plane, from));
    }
    // Both stay cached (each new flow's SYN emptied the set and took the first way; a's ACK
    // took the second): a flow whose key hashes like another's no longer pushes it out.
    assert_eq!(ways(&plane, set, CPU), vec![key(b), key(a)]);

    // A new flow empties its set before it takes the first way.
    send(&plane, c, SYN);
    assert_eq!(ways(&plane, set, CPU), vec![key(c)]);
    // The others come back from the flow table into the second way, one after the other; the
    // first keeps its flow. Every packet goes to its own flow's backend.
    for from in [a, b, c, a, b, c, b, a] {
        assert_eq!(send(&plane, from, ACK), pinned_backend(&plane, from));
    }
    assert_eq!(ways(&plane, set, CPU), vec![key(c), key(a)]);
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_new_flow_empties_its_set_on_the_other_cpus_whichever_way_holds_the_old_connection() {
    require_root!();
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    if cpus < 2 {
        eprintln!("skipped: one CPU");
        return;
    }
    let plane = Plane::load(FIXTURE_CONFIG);
    let set = key(client(41_000)).cache_set();
    let clients: Vec<SocketAddrV4> = (41_000..u16::MAX)
        .map(client)
        .filter(|c| key(*c).cache_set() == set)
        .take(2)
        .collect();
    let [a, b] = clients[..] else {
        panic!("fewer than two clients in set {set}: {clients:?}");
    };
    {
        // On CPU 1, a's connection ends up in the second way, then closes.
        let _pinned = Pinned::to_cpu(1);
        send(&plane, a, SYN);
        send(&plane, b, SYN);
        send(&plane, a, ACK);
        assert_eq!(ways(&plane, set, 1), vec![key(b), key(a)]);
        send(&plane, a, RST);
    }
    // The client reuses its port for a new connection, from CPU 0: CPU 1 keeps nothing of the
    // old one (nor of b, the set's other flow).
    let _pinned = Pinned::to_cpu(CPU);
    send(&plane, a, SYN);
    assert!(plane.cached_flows(set, 1).is_empty(), "CPU 1 kept a way");
    assert_eq!(ways(&plane, set, CPU), vec![key(a)]);
}

fn wide_config(backends: &[String]) -> String {
    let quoted: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    let (blue, green) = quoted.split_at(quoted.len().div_ceil(2));
    format!(
        "interface = \"lo\"\n\n[[service]]\nname = \"wide\"\nlisten = \"198.18.0.1:8080\"\nblue = [{}]\ngreen = [{}]\ngreen_weight = 50\n",
        blue.join(", "),
        green.join(", ")
    )
}

/// A client of the flows that reach the backends: another one for each `i`.
fn nth_client(i: u32) -> SocketAddrV4 {
    SocketAddrV4::new(
        [198, 18, 64 + (i >> 16) as u8, (i >> 8) as u8].into(),
        1_024 + (i & 0xff) as u16,
    )
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn three_hundred_backends_each_keep_their_next_hop() {
    require_root!();
    let backends: Vec<String> = (10..=11)
        .flat_map(|third| (1..=150).map(move |b| format!("198.18.{third}.{b}:8080")))
        .collect();
    let config = wide_config(&backends);
    // A namespace of its own, with no route to the backends: the FIB's answer (the stack's to
    // route) is the same on every host, and it is kept like any other.
    let ns = Netns::new("sp-cache-hops");
    let (reached, missing) = ns.run(move || {
        let _pinned = Pinned::to_cpu(CPU);
        let plane = Plane::load(&config);
        // Enough new flows that every backend gets some (each flow's SYN asks for its next hop).
        let mut reached = std::collections::HashSet::new();
        for i in 0..20_000 {
            reached.insert(*send(&plane, nth_client(i), SYN).ip());
        }
        let kept = kept(&plane);
        let missing: Vec<_> = reached
            .iter()
            .filter(|a| !kept.contains(a))
            .copied()
            .collect();
        (reached.len(), missing)
    });
    assert_eq!(reached, backends.len(), "backends reached");
    // These 300 addresses fall in 300 sets; 256 direct-mapped slots, as before, would have had
    // to leave at least 44 out.
    assert!(
        missing.is_empty(),
        "backends without a kept next hop: {missing:?}"
    );
}

/// The backends whose next hop `NEXT_HOPS` keeps on this test's CPU.
fn kept(plane: &Plane) -> std::collections::HashSet<std::net::Ipv4Addr> {
    plane
        .kept_next_hops(CPU)
        .into_iter()
        .map(|addr| addr.to_ne_bytes().into())
        .collect()
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn of_three_backends_in_one_next_hop_set_the_two_asked_last_are_kept() {
    require_root!();
    // Three backends whose next hops share a set, each the only backend of a service of its
    // own, so each is asked for by its own service's new flow.
    let first = NextHop::first_way(u32::from_ne_bytes([198, 18, 10, 1]));
    let backends: Vec<std::net::Ipv4Addr> = (0..0xe000u32)
        .map(|n| std::net::Ipv4Addr::new(198, 18, 10 + (n >> 8) as u8, n as u8))
        .filter(|a| !matches!(a.octets()[3], 0 | 255))
        .filter(|a| NextHop::first_way(u32::from_ne_bytes(a.octets())) == first)
        .take(3)
        .collect();
    assert_eq!(backends.len(), 3, "three backends in one set");
    let config = backends
        .iter()
        .enumerate()
        .fold(String::from("interface = \"lo\"\n"), |config, (i, backend)| {
            format!(
                "{config}\n[[service]]\nname = \"s{i}\"\nlisten = \"198.18.0.1:{}\"\nblue = [\"{backend}:8080\"]\n",
                9_000 + i
            )
        });
    let ns = Netns::new("sp-cache-hop-set");
    let kept = ns.run(move || {
        let _pinned = Pinned::to_cpu(CPU);
        let plane = Plane::load(&config);
        for i in 0..3u16 {
            let service = SocketAddrV4::new([198, 18, 0, 1].into(), 9_000 + i);
            let run =
                plane.ingress(&Ipv4Packet::tcp(nth_client(u32::from(i)), service, SYN).build());
            assert!(
                matches!(run.verdict, XDP_PASS | XDP_REDIRECT),
                "verdict {}",
                run.verdict
            );
            // A few jiffies apart (4 ms at HZ 250), so that each was asked at another time.
            thread::sleep(Duration::from_millis(20));
        }
        kept(&plane)
    });
    assert_eq!(
        kept,
        backends[1..].iter().copied().collect(),
        "the next hop asked longest ago ({}) gives way",
        backends[0]
    );
}

/// The way of this test's CPU that holds `from`'s flow.
fn way(plane: &Plane, from: SocketAddrV4) -> Option<CachedFlow> {
    let key = key(from);
    let set = plane
        .maps
        .flow_cache_set(key.cache_set())
        .expect("a flow-cache set");
    set[CPU]
        .ways
        .into_iter()
        .find(|way| way.key.is_valid() && way.key.key() == key.cache_key())
}

/// The flow's version's counters, and the sum of the fast path's outcomes.
fn counts(plane: &Plane, from: SocketAddrV4) -> (VersionStats, u64) {
    let flow = plane.maps.flow(&key(from)).expect("flows").expect("a flow");
    let version = if flow.version == Version::Blue as u8 {
        Version::Blue
    } else {
        Version::Green
    };
    let stats = plane
        .maps
        .counters(flow.service_id, version)
        .expect("counters");
    let outcomes = plane
        .maps
        .plane_counters()
        .expect("plane counters")
        .into_iter()
        .filter(|(name, _)| FORWARD_OUTCOMES.contains(name))
        .map(|(_, n)| n)
        .sum();
    (stats, outcomes)
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_cached_flows_pure_acks_take_the_express_lane_to_its_backend_with_the_general_paths_counts() {
    require_root!();
    let ns = Netns::new("sp-express-ack");
    ns.run(|| {
        let _pinned = Pinned::to_cpu(CPU);
        let plane = Plane::load(FIXTURE_CONFIG);
        let from = client(42_000);
        let syn = plane.ingress(&Ipv4Packet::tcp(from, vip(), SYN).build());
        assert!(matches!(syn.verdict, XDP_PASS | XDP_REDIRECT), "SYN");
        // The new flow took a way, without a next hop yet.
        let filled = way(&plane, from).expect("the SYN filled a way");
        assert_eq!(filled.hop.asked_ns, 0, "a next hop before any ACK");

        let (before, outcomes_before) = counts(&plane, from);
        let ack = Ipv4Packet::tcp(from, vip(), ACK).build();
        let runs: Vec<_> = (0..3).map(|_| plane.ingress(&ack)).collect();
        // The first ACK copied the backend's next hop into the way (only the express lane
        // writes a way's next hop): it and the two after it took the lane.
        let taken = way(&plane, from).expect("the way stays");
        assert_ne!(taken.hop.asked_ns, 0, "the lane copied no next hop");
        let backend = pinned_backend(&plane, from);
        assert_eq!(taken.hop.addr, u32::from_ne_bytes(backend.ip().octets()));
        for run in &runs {
            assert_eq!(run.verdict, runs[0].verdict, "one verdict for one packet");
            assert!(matches!(run.verdict, XDP_PASS | XDP_REDIRECT));
            assert_eq!(destination(&run.data), backend, "to the flow's backend");
            assert_eq!(run.data, runs[0].data, "the same bytes for the same packet");
        }
        // Counted as the general path counts: on the version, and once in the fast path's
        // outcomes, per packet.
        let (after, outcomes_after) = counts(&plane, from);
        assert_eq!(
            after.traffic.packets_in - before.traffic.packets_in,
            3,
            "packets in"
        );
        assert_eq!(
            after.traffic.bytes_in - before.traffic.bytes_in,
            3 * ack.len() as u64,
            "bytes in"
        );
        assert_eq!(outcomes_after - outcomes_before, 3, "fast-path outcomes");
    });
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_request_and_a_close_on_a_cached_flow_take_the_general_path_which_records_them() {
    require_root!();
    let ns = Netns::new("sp-express-general");
    ns.run(|| {
        let _pinned = Pinned::to_cpu(CPU);
        let plane = Plane::load(FIXTURE_CONFIG);
        let from = client(42_001);
        let _ = plane.ingress(&Ipv4Packet::tcp(from, vip(), SYN).build());
        let _ = plane.ingress(&Ipv4Packet::tcp(from, vip(), ACK).build());
        assert_ne!(
            way(&plane, from).expect("a way").hop.asked_ns,
            0,
            "the ACK took the express lane"
        );
        let backend = pinned_backend(&plane, from);

        // A request: the general path stamps it (its response will be timed).
        let request = Ipv4Packet::tcp(from, vip(), ACK | PSH)
            .with_payload(b"GET /v2/health/ready HTTP/1.1\r\nHost: model\r\n\r\n")
            .build();
        let run = plane.ingress(&request);
        assert_eq!(destination(&run.data), backend);
        let flow = plane.maps.flow(&key(from)).expect("flows").expect("a flow");
        assert_ne!(flow.request_ns, 0, "the request was not stamped");

        // A close: the general path records the client's FIN.
        let run = plane.ingress(&Ipv4Packet::tcp(from, vip(), ACK | FIN).build());
        assert_eq!(destination(&run.data), backend);
        let flow = plane.maps.flow(&key(from)).expect("flows").expect("a flow");
        assert_ne!(flow.state & FLOW_FIN_CLIENT, 0, "the FIN was not recorded");
    });
}

/// The source a translated reply left with.
fn source(frame: &[u8]) -> SocketAddrV4 {
    let (ip, l4) = (14, 34);
    SocketAddrV4::new(
        [
            frame[ip + 12],
            frame[ip + 13],
            frame[ip + 14],
            frame[ip + 15],
        ]
        .into(),
        u16::from_be_bytes([frame[l4], frame[l4 + 1]]),
    )
}

/// Whether the IPv4 header and the TCP checksum of `frame` verify.
fn checksums_ok(frame: &[u8]) -> bool {
    let ip = &frame[14..34];
    let addr = |at: usize| [ip[at], ip[at + 1], ip[at + 2], ip[at + 3]];
    checksum::ipv4_header_ok(ip) && checksum::l4_ok(addr(12), addr(16), 6, &frame[34..])
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_cached_reply_leaves_as_the_service_counted_and_a_response_still_takes_the_general_path() {
    require_root!();
    let ns = Netns::new("sp-express-reply");
    ns.run(|| {
        let _pinned = Pinned::to_cpu(CPU);
        let plane = Plane::load(FIXTURE_CONFIG);
        let from = client(42_002);
        let _ = plane.ingress(&Ipv4Packet::tcp(from, vip(), SYN).build());
        let backend = pinned_backend(&plane, from);
        // The SYN-ACK takes the general path and fills the reply cache.
        let synack = plane.egress(&Ipv4Packet::tcp(backend, from, SYN | ACK).build());
        assert_eq!(
            source(&synack.data),
            vip(),
            "the SYN-ACK left as the service"
        );
        let request = Ipv4Packet::tcp(from, vip(), ACK | PSH)
            .with_payload(b"GET /v2/health/ready HTTP/1.1\r\nHost: model\r\n\r\n")
            .build();
        let _ = plane.ingress(&request);

        let (before, _) = counts(&plane, from);
        // Pure ACKs from the backend: cached, each left as the service with valid checksums.
        let ack = Ipv4Packet::tcp(backend, from, ACK).build();
        for _ in 0..3 {
            let run = plane.egress(&ack);
            assert_eq!(source(&run.data), vip(), "a pure ACK left as the backend");
            assert!(checksums_ok(&run.data), "checksums of {:02x?}", run.data);
        }
        let (acked, _) = counts(&plane, from);
        assert_eq!(
            acked.traffic.packets_out - before.traffic.packets_out,
            3,
            "packets out"
        );
        assert_eq!(
            acked.traffic.bytes_out - before.traffic.bytes_out,
            3 * ack.len() as u64
        );
        assert_eq!(acked.responses, before.responses, "an ACK is no response");

        // The response's first bytes: the general path reads and times it.
        let response = Ipv4Packet::tcp(backend, from, ACK | PSH)
            .with_payload(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .build();
        let run = plane.egress(&response);
        assert_eq!(source(&run.data), vip());
        assert!(checksums_ok(&run.data), "checksums of the response");
        let (answered, _) = counts(&plane, from);
        assert_eq!(
            answered.responses - acked.responses,
            1,
            "the response was not timed"
        );
        assert_eq!(answered.http_status[2] - acked.http_status[2], 1, "a 2xx");
    });
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_cleared_set_keeps_its_ways_data_and_only_loses_their_valid_byte() {
    require_root!();
    let ns = Netns::new("sp-cache-clear");
    ns.run(|| {
        let _pinned = Pinned::to_cpu(CPU);
        let mut plane = Plane::load(FIXTURE_CONFIG);
        let from = client(42_003);
        let _ = plane.ingress(&Ipv4Packet::tcp(from, vip(), SYN).build());
        let _ = plane.ingress(&Ipv4Packet::tcp(from, vip(), ACK).build());
        let before = way(&plane, from).expect("a cached way");
        let set = key(from).cache_set();
        plane.maps.clear_cache_set(set).expect("clear");
        // A program reading the way while the kernel copies the new values sees the same data
        // either side of the copy, never a half-zeroed way.
        let after = plane.maps.flow_cache_set(set).expect("a set")[CPU].ways;
        let cleared = after
            .iter()
            .find(|w| w.key.key() == before.key.key())
            .expect("the way's data stays");
        assert!(!cleared.key.is_valid(), "the way is still valid");
        assert_eq!(
            CachedFlow {
                key: before.key,
                ..*cleared
            },
            before,
            "only the valid byte changed"
        );
        assert!(way(&plane, from).is_none());
    });
}
