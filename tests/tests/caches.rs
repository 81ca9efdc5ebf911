//! The packet path's per-CPU caches on crafted packets (BPF_PROG_TEST_RUN, this thread pinned to
//! one CPU so that every run sees the same per-CPU values): flows whose keys fall in one set of
//! the flow cache share it, two at a time, without ever steering a packet from another flow's
//! way; a new flow empties its set on every CPU; and the next hops of hundreds of backends are
//! all kept.

use std::net::SocketAddrV4;

use splitter_common::{FlowKey, ipv4_mapped};
use splitter_tests::{
    netns::Netns,
    packet::{ACK, Ipv4Packet, SYN},
    plane::{FIXTURE_CONFIG, Pinned, Plane},
    require_root,
};

const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;
const CPU: usize = 0;

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
    // Both stay cached (each new flow's SYN emptied the set; b's ACK found its way, a's took
    // the first): a flow whose key hashes like another's no longer pushes it out.
    assert_eq!(plane.cached_flows(set, CPU), vec![key(a), key(b)]);

    // A new flow empties its set before it takes the first way.
    send(&plane, c, SYN);
    assert_eq!(plane.cached_flows(set, CPU), vec![key(c)]);
    // The others come back from the flow table, the last filled first; the one filled longer
    // ago is the one dropped, and every packet still goes to its own flow's backend.
    for from in [a, b] {
        assert_eq!(send(&plane, from, ACK), pinned_backend(&plane, from));
    }
    assert_eq!(plane.cached_flows(set, CPU), vec![key(b), key(a)]);
    for from in [c, a, b, c, b, a] {
        assert_eq!(send(&plane, from, ACK), pinned_backend(&plane, from));
    }
    let ways = plane.cached_flows(set, CPU);
    assert_eq!(ways.len(), 2, "{ways:?}");
    assert_eq!(
        ways[0],
        key(a),
        "the flow filled last sits in the first way"
    );
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn three_hundred_backends_each_keep_their_next_hop() {
    require_root!();
    const PER_POOL: u8 = 150;
    let pool = |third: u8| -> String {
        (1..=PER_POOL)
            .map(|b| format!("\"198.18.{third}.{b}:8080\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let config = format!(
        "interface = \"lo\"\n\n[[service]]\nname = \"wide\"\nlisten = \"198.18.0.1:8080\"\nblue = [{}]\ngreen = [{}]\ngreen_weight = 50\n",
        pool(10),
        pool(11)
    );
    // A namespace of its own, with no route to the backends: the FIB's answer (the stack's to
    // route) is the same on every host, and it is kept like any other.
    let ns = Netns::new("sp-cache-hops");
    let (reached, missing) = ns.run(move || {
        let _pinned = Pinned::to_cpu(CPU);
        let plane = Plane::load(&config);
        reached_and_missing(&plane)
    });
    // Two ways per set and as many slots as backends may hold: the odd set that three of them
    // fall in keeps two. With the 256 direct-mapped slots before, at least 44 were missing.
    assert_eq!(reached, 2 * usize::from(PER_POOL), "backends reached");
    eprintln!(
        "{} of {reached} backends have no next hop kept",
        missing.len()
    );
    assert!(
        missing.len() <= 4,
        "{} of {reached} backends have no next hop kept: {missing:?}",
        missing.len(),
    );
}

/// How many backends new flows reached, and those of them without a kept next hop.
fn reached_and_missing(plane: &Plane) -> (usize, Vec<std::net::Ipv4Addr>) {
    // Enough new flows that every backend gets some (each flow's SYN asks for its next hop).
    let mut reached = std::collections::HashSet::new();
    for i in 0..20_000u32 {
        let from = SocketAddrV4::new(
            [198, 18, 64 + (i >> 16) as u8, (i >> 8) as u8].into(),
            1_024 + (i & 0xff) as u16,
        );
        reached.insert(*send(plane, from, SYN).ip());
    }
    let kept: std::collections::HashSet<u32> = plane.kept_next_hops(CPU).into_iter().collect();
    let missing = reached
        .iter()
        .filter(|addr| !kept.contains(&u32::from_ne_bytes(addr.octets())))
        .copied()
        .collect();
    (reached.len(), missing)
}
