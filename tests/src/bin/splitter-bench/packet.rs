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
    plane::Plane,
};

use crate::median;

/// The bench's data plane needs no service from a config; it is set up through the maps.
const EMPTY_CONFIG: &str = "interface = \"lo\"\n";
const ROUNDS: usize = 21;

/// The per-packet and rollback-write sections of the report.
pub fn section(quick: bool) -> String {
    let repeat: u32 = if quick { 100_000 } else { 1_000_000 };
    let syn_calls: usize = if quick { 20_000 } else { 100_000 };
    let mut plane = Plane::load(EMPTY_CONFIG);

    // A service that is its own backend, so the established path can repeat on one buffer.
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

    // Each round times every program back to back, so a noisy neighbour slows a whole round;
    // ratios are taken within a round and their median reported.
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
        ]);
    }
    let value = |i: usize| median(rounds.iter().map(|r| r[i]).collect());
    let ratio = |i: usize, of: usize| median(rounds.iter().map(|r| r[i] / r[of]).collect());
    let est_ratio = ratio(1, 0);
    // (label, program, value index, baseline index)
    let rows: [(&str, &str, usize, usize); 9] = [
        ("any (repeated)", "baseline `XDP_PASS`", 0, 0),
        (
            "established TCP, pure ACK (repeated)",
            "split_ingress",
            1,
            0,
        ),
        (
            "client request, 64-byte payload (repeated)",
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
        ("any reply (repeated)", "baseline classifier", 4, 4),
        ("backend reply, pure ACK (repeated)", "split_egress", 5, 4),
        (
            "backend response, first bytes HTTP/1.1 200 (repeated)",
            "split_egress",
            6,
            4,
        ),
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
        "{ROUNDS} rounds, each timing every row back to back; the median round is reported, and each ratio is the median of the ratios within a round. The egress rows use TC programs timed the same way. Repeated runs: `repeat = {repeat}` on one buffer, kernel-timed mean per run. Single runs: {syn_calls} calls of `repeat = 1`, the flow removed between calls (outside the timed part).\n"
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
    let target = if est_ratio <= 3.0 { "met" } else { "MISSED" };
    let _ = writeln!(
        out,
        "\nTarget: an established packet costs at most 3× the baseline: **{target}** ({est_ratio:.2}×).\n"
    );
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
