//! Per-packet cost of the XDP and TC programs through BPF_PROG_TEST_RUN, beside programs that
//! only pass the packet, and the latency of the split-word write that a rollback is.
//!
//! The established packet goes to a service whose only backend is the service address itself:
//! the rewrite then leaves the bytes as they were, so each of the `repeat` runs the kernel makes
//! on the same buffer takes the whole steering path (a plain service would see an already
//! rewritten, non-service packet from the second run on). A new flow cannot repeat that way (the
//! first run records the flow), so SYNs are timed one run per call with the flow removed in
//! between, and the baseline is timed the same way beside them.

use std::{fmt::Write as _, net::SocketAddrV4, time::Duration};

use splitter_common::{
    BackendInfo, Endpoint, FlowKey, PROTO_TCP, Service, SplitWord, Version, ipv4_mapped,
    maps::{PROGRAM_BASELINE, PROGRAM_EGRESS, PROGRAM_INGRESS, PROGRAM_TC_BASELINE},
};
use splitter_tests::{
    packet::{ACK, Ipv4Packet, PSH, SYN},
    plane::{Pinned, Plane},
};

/// The bench's data plane needs no service from a config; it is set up through the maps.
const EMPTY_CONFIG: &str = "interface = \"lo\"\n";
const ROUNDS: usize = 21;
/// Established flows sent in turn for the cache-miss rows: about three per cache way, and
/// well inside one CPU's share of the flow table.
const MANY_FLOWS: usize = 12_000;

/// The share of packets that find their cache set holding other flows when `sets` (one per
/// flow) are visited in turn, again and again: a set keeps the last flows that used it.
pub(crate) fn miss_share(sets: impl Iterator<Item = u32>) -> f64 {
    let mut per_set = std::collections::HashMap::<u32, usize>::new();
    let mut flows = 0usize;
    for set in sets {
        *per_set.entry(set).or_default() += 1;
        flows += 1;
    }
    // A set with as many flows as ways always hits; with more, visited in turn, every visit
    // follows the flows that pushed its own out.
    let missing: usize = per_set
        .values()
        .filter(|n| **n > splitter_common::CACHE_WAYS)
        .sum();
    missing as f64 / flows as f64
}

/// The per-packet and rollback-write sections of the report.
pub fn section(quick: bool) -> String {
    let repeat: u32 = if quick { 100_000 } else { 1_000_000 };
    let syn_calls: usize = if quick { 20_000 } else { 100_000 };
    let mut plane = Plane::load(EMPTY_CONFIG);
    // The flows-in-turn rows have a data plane of their own, so the others run beside one flow.
    let mut many_plane = Plane::load(EMPTY_CONFIG);
    let _ = identity_service(&mut many_plane);
    // One CPU for the whole section: the caches are per CPU, and a test run runs on the
    // caller's. The previous affinity comes back at the end (the other sections start servers).
    let _pinned = Pinned::to_cpu(0);

    let vip = identity_service(&mut plane);
    let endpoint = Endpoint::new(ipv4_mapped(vip.ip().octets()), vip.port(), PROTO_TCP);

    let client: SocketAddrV4 = "198.18.0.2:40000".parse().expect("address");
    let syn = Ipv4Packet::tcp(client, vip, SYN).build();
    // A pure ACK takes the fast path; a client payload is a request (flow-table path, stamped);
    // replies come back from the service's own address, its reverse entry being itself.
    let established = Ipv4Packet::tcp(client, vip, ACK).build();
    let request = Ipv4Packet::tcp(client, vip, ACK | PSH)
        .with_payload(&[b'x'; 64])
        .build();
    let other_port =
        Ipv4Packet::tcp(client, "198.18.0.1:22".parse().expect("address"), ACK).build();
    let reply_ack = Ipv4Packet::tcp(vip, client, ACK).build();
    let response = Ipv4Packet::tcp(vip, client, ACK | PSH).with_payload(b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n0123456789012345678901234567890123456789").build();
    let flow_key = FlowKey {
        src_addr: ipv4_mapped(client.ip().octets()),
        dst_addr: endpoint.addr,
        src_port_be: client.port().to_be(),
        dst_port_be: vip.port().to_be(),
        protocol: PROTO_TCP,
        _pad: [0; 3],
    };
    let _ = plane.ingress(&syn);
    assert!(
        plane.maps.flow(&flow_key).expect("read").is_some(),
        "the SYN recorded a flow"
    );
    for frame in [&established, &request] {
        assert_eq!(&plane.ingress(frame).data, frame, "identity rewrite");
    }
    for frame in [&reply_ack, &response] {
        assert_eq!(
            &plane.egress(frame).data,
            frame,
            "identity reverse translation"
        );
    }

    // Flows in turn: more flows than the per-CPU caches have slots, each visited once per pass,
    // so most packets find their slot holding another flow (the share is computed below from
    // the same slot function the programs use).
    let many: Vec<(Vec<u8>, Vec<u8>, u32)> = (0..MANY_FLOWS)
        .map(|i| {
            let from = SocketAddrV4::new([198, 18, 0, 2].into(), 10_000 + i as u16);
            let _ = many_plane.ingress(&Ipv4Packet::tcp(from, vip, SYN).build());
            let key = FlowKey {
                src_port_be: from.port().to_be(),
                ..flow_key
            };
            (
                Ipv4Packet::tcp(from, vip, ACK).build(),
                Ipv4Packet::tcp(vip, from, ACK).build(),
                key.cache_set(),
            )
        })
        .collect();
    let miss_share = miss_share(many.iter().map(|(_, _, slot)| *slot));

    // Each round times every program back to back, so a noisy neighbour slows a whole round;
    // the round whose established ratio is the median is reported, every row from it.
    let mut rounds = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let time = |name, frame: &[u8]| plane.time_xdp(name, frame, repeat).duration_ns as f64;
        let time_tc = |name, frame: &[u8]| plane.time_tc(name, frame, repeat).duration_ns as f64;
        let repeated = [
            time(PROGRAM_BASELINE, &established),
            time(PROGRAM_INGRESS, &established),
            time(PROGRAM_INGRESS, &request),
            time(PROGRAM_INGRESS, &other_port),
            time_tc(PROGRAM_TC_BASELINE, &reply_ack),
            time_tc(PROGRAM_EGRESS, &reply_ack),
            time_tc(PROGRAM_EGRESS, &response),
        ];
        let (mut b, mut s) = (0u128, 0u128);
        for _ in 0..syn_calls / ROUNDS {
            b += plane.time_xdp(PROGRAM_BASELINE, &syn, 1).duration_ns;
            plane
                .maps
                .purge_flows(|k, _| *k == flow_key)
                .expect("remove flow");
            s += plane.time_xdp(PROGRAM_INGRESS, &syn, 1).duration_ns;
        }
        let calls = (syn_calls / ROUNDS) as f64;
        let [base, est, req, other, tc_base, reply, resp] = repeated;
        let (mut xb, mut xm, mut tb, mut tm) = (0u128, 0u128, 0u128, 0u128);
        for (ack, reply, _) in &many {
            xb += many_plane.time_xdp(PROGRAM_BASELINE, ack, 1).duration_ns;
            xm += many_plane.time_xdp(PROGRAM_INGRESS, ack, 1).duration_ns;
            tb += many_plane
                .time_tc(PROGRAM_TC_BASELINE, reply, 1)
                .duration_ns;
            tm += many_plane.time_tc(PROGRAM_EGRESS, reply, 1).duration_ns;
        }
        let n = many.len() as f64;
        rounds.push([
            base,
            est,
            req,
            other,
            tc_base,
            reply,
            resp,
            b as f64 / calls,
            s as f64 / calls,
            xb as f64 / n,
            xm as f64 / n,
            tb as f64 / n,
            tm as f64 / n,
        ]);
    }
    // The median round by the established packet's ratio: its every row is reported, so each
    // ns value and its ratio come from the same measurements.
    rounds.sort_by(|a, b| (a[1] / a[0]).total_cmp(&(b[1] / b[0])));
    let round = rounds[rounds.len() / 2];
    let value = |i: usize| round[i];
    let ratio = |i: usize, of: usize| round[i] / round[of];
    let est_ratio = ratio(1, 0);
    let reply_ratio = ratio(5, 4);
    let miss_label = format!(
        "established TCP, pure ACK, {MANY_FLOWS} flows in turn ({:.0}% miss the cache; single run)",
        miss_share * 100.0
    );
    let reply_miss_label = format!(
        "backend reply, pure ACK, {MANY_FLOWS} flows in turn ({:.0}% miss the cache; single run)",
        miss_share * 100.0
    );
    // (label, program, value index, baseline index)
    let rows: [(&str, &str, usize, usize); 13] = [
        ("any (repeated)", "baseline `XDP_PASS`", 0, 0),
        (
            "established TCP, pure ACK, one buffer repeated (always hits the per-CPU flow cache)",
            "split_ingress",
            1,
            0,
        ),
        (
            "client payload, 64 bytes no protocol reads (repeated; an opaque connection's, classified once)",
            "split_ingress",
            2,
            0,
        ),
        (
            "TCP to a port with no service (repeated)",
            "split_ingress",
            3,
            0,
        ),
        ("any (single run)", "baseline `XDP_PASS`", 7, 7),
        ("SYN, new flow (single run)", "split_ingress", 8, 7),
        ("any (single run)", "baseline `XDP_PASS`", 9, 9),
        (&miss_label, "split_ingress", 10, 9),
        ("any reply (repeated)", "baseline classifier", 4, 4),
        (
            "backend reply, pure ACK, one buffer repeated (always hits the per-CPU reply cache)",
            "split_egress",
            5,
            4,
        ),
        (
            "backend response, first bytes HTTP/1.1 200 (repeated)",
            "split_egress",
            6,
            4,
        ),
        ("any reply (single run)", "baseline classifier", 11, 11),
        (&reply_miss_label, "split_egress", 12, 11),
    ];

    // The rollback: one write of the split word, timed around the syscall.
    let writes = if quick { 2_000 } else { 20_000 };
    let mut write_ns: Vec<f64> = (0..writes)
        .map(|i| {
            let word = SplitWord::new(Version::Blue, if i % 2 == 0 { 0 } else { 1_000 });
            plane
                .maps
                .set_split(0, word)
                .map_or(f64::NAN, |d: Duration| d.as_nanos() as f64)
        })
        .collect();
    write_ns.sort_by(f64::total_cmp);
    let pct = |p: f64| write_ns[((write_ns.len() - 1) as f64 * p) as usize] / 1_000.0;

    let mut out = String::new();
    let _ = writeln!(
        out,
        "### Per-packet cost of the XDP ingress program (BPF_PROG_TEST_RUN)\n"
    );
    let _ = writeln!(
        out,
        "{ROUNDS} rounds, each timing every row back to back; every row comes from one round, the one whose established-packet ratio is the median, so each ns value and its ratio agree. The egress rows use TC programs timed the same way. Repeated runs: `repeat = {repeat}` on one buffer, kernel-timed mean per run: the same flow every time, so the established rows always hit the per-CPU caches. Single runs: `repeat = 1` calls, each beside the baseline timed the same way; the SYN row ({syn_calls} calls) removes its flow between calls (outside the timed part); the flows-in-turn rows send one packet of each of {MANY_FLOWS} established flows in turn, more than the caches' {} ways.\n",
        splitter_common::maps::FLOW_CACHE_SETS as usize * splitter_common::CACHE_WAYS
    );
    let _ = writeln!(out, "| packet | program | ns/packet | × baseline |");
    let _ = writeln!(out, "|---|---|---:|---:|");
    for (label, program, i, of) in rows {
        let _ = writeln!(
            out,
            "| {label} | {program} | {:.1} | {:.2} |",
            value(i),
            if i == of { 1.0 } else { ratio(i, of) }
        );
    }
    let target = |ratio: f64| if ratio <= 3.0 { "met" } else { "MISSED" };
    let _ = writeln!(
        out,
        "\nTargets: an established packet costs at most 3× the baseline: **{}** ({est_ratio:.2}×); a backend reply at most 3× the baseline classifier: **{}** ({reply_ratio:.2}×).\n",
        target(est_ratio),
        target(reply_ratio)
    );
    out.push_str(&crate::protocols::table(&plane, vip, quick));
    let _ = writeln!(out, "### Rollback write\n");
    let _ = writeln!(
        out,
        "One `bpf_map_update_elem` of the split word from user space, timed around the syscall, {writes} writes.\n"
    );
    let _ = writeln!(out, "| p50 µs | p99 µs | max µs |");
    let _ = writeln!(out, "|---:|---:|---:|");
    let _ = writeln!(
        out,
        "| {:.2} | {:.2} | {:.2} |",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    out
}

/// A service that is its own backend (blue and green alike, at 50%), so the established path
/// can repeat on one buffer: the rewrite leaves the bytes as they were. Returns its address.
fn identity_service(plane: &mut Plane) -> SocketAddrV4 {
    let vip: SocketAddrV4 = "198.18.0.1:8080".parse().expect("address");
    let endpoint = Endpoint::new(ipv4_mapped(vip.ip().octets()), vip.port(), PROTO_TCP);
    let table =
        vec![Some(std::net::SocketAddr::V4(vip)); splitter_common::maps::SLOTS_PER_POOL as usize];
    for version in [Version::Blue, Version::Green] {
        plane.maps.write_slots(0, version, &table).expect("slots");
    }
    plane
        .maps
        .set_split(0, SplitWord::new(Version::Blue, 5_000))
        .expect("split");
    plane.maps.set_port_services(vip.port(), 1).expect("port");
    plane
        .maps
        .insert_service(
            &endpoint,
            Service {
                id: 0,
                flags: 0,
                split: 0,
            },
        )
        .expect("service");

    plane
        .maps
        .insert_backend(
            &endpoint,
            BackendInfo {
                service_addr: endpoint.addr,
                service_port_be: endpoint.port_be,
                version: 0,
                _pad: 0,
                service_id: 0,
            },
        )
        .expect("reverse entry");
    vip
}
