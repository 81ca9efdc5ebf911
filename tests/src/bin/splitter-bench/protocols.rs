//! Per-packet cost by protocol: a request and its answer on an HTTP/1.1 connection, an HTTP/2
//! call (the client's HEADERS, read in the `split_h2` tail call, and the server's HEADERS and
//! DATA), and a TLS connection's records (opaque: classified once, never read). Each packet is
//! a single run beside the baseline timed the same way, since the HTTP/2 reading follows the
//! byte stream: a repeated buffer would be a retransmission, skipped.

use std::{fmt::Write as _, net::SocketAddrV4};

use splitter_common::maps::{
    PROGRAM_BASELINE, PROGRAM_EGRESS, PROGRAM_INGRESS, PROGRAM_TC_BASELINE,
};
use splitter_tests::{
    packet::{ACK, Ipv4Packet, PSH, SYN},
    plane::Plane,
};

const ROUNDS: usize = 5;
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len()).unwrap_or(0).to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// One connection's packets, in order: each exchange is (the client's, the server's).
struct Exchanges {
    client: SocketAddrV4,
    first: Vec<u8>,
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The exchanges of round `round` (its own client ports, so its connections are new).
fn exchanges(vip: SocketAddrV4, n: u32, round: u16) -> [Exchanges; 3] {
    let at = |port: u16| SocketAddrV4::new([198, 18, 0, 3].into(), port + 10 * round);
    let packet = |from, to, seq: u32, ack: u32, payload: &[u8]| {
        Ipv4Packet::tcp(from, to, ACK | PSH)
            .with_numbers(seq, ack)
            .with_payload(payload)
            .build()
    };
    // HTTP/1.1: a GET and a small response, status line and body in one packet.
    let http1 = at(41_001);
    let get = b"GET /v1/models/m HTTP/1.1\r\nHost: model\r\n\r\n";
    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    // HTTP/2: a call per exchange on a new stream, answered with HEADERS and DATA.
    let h2 = at(41_002);
    let (mut cseq, mut sseq) = (1_000u32, 90_000u32);
    let mut h2_first = PREFACE.to_vec();
    h2_first.extend(frame(4, 0, 0, &[0; 12]));
    let h2_first = packet(h2, vip, cseq, sseq, &h2_first);
    cseq += (PREFACE.len() + 21) as u32;
    let mut h2_pairs = Vec::new();
    for i in 0..n {
        let stream = 2 * i + 1;
        let call = frame(1, 5, stream, &[0x83, 0x86, 0x84, 0x41, 0x8a]);
        let mut answer = frame(1, 4, stream, &[0x88, 0x5f, 0x8b]);
        answer.extend(frame(0, 1, stream, &[0; 32]));
        h2_pairs.push((
            packet(h2, vip, cseq, sseq, &call),
            packet(vip, h2, sseq, cseq + call.len() as u32, &answer),
        ));
        cseq += call.len() as u32;
        sseq += answer.len() as u32;
    }
    // TLS: a ClientHello's first bytes classify it; then application data both ways.
    let tls = at(41_003);
    let hello = [0x16, 3, 1, 0, 200, 1, 0, 0, 196, 3, 3];
    let mut record = vec![0x17, 3, 3, 0, 64];
    record.extend([0x5a; 64]);
    [
        Exchanges {
            client: http1,
            first: packet(http1, vip, 1, 1, get),
            pairs: (0..n)
                .map(|_| (packet(http1, vip, 1, 1, get), packet(vip, http1, 1, 1, ok)))
                .collect(),
        },
        Exchanges {
            client: h2,
            first: h2_first,
            pairs: h2_pairs,
        },
        Exchanges {
            client: tls,
            first: packet(tls, vip, 1, 1, &hello),
            pairs: (0..n)
                .map(|_| {
                    (
                        packet(tls, vip, 1, 1, &record),
                        packet(vip, tls, 1, 1, &record),
                    )
                })
                .collect(),
        },
    ]
}

/// The table's rows, on `plane`'s identity service at `vip`.
pub fn table(plane: &Plane, vip: SocketAddrV4, quick: bool) -> String {
    let n = if quick { 2_000 } else { 10_000 };
    // Per protocol, per round: [xdp baseline, ingress, tc baseline, egress] means.
    let mut results: Vec<Vec<[f64; 4]>> = vec![Vec::new(); 3];
    for round in 0..ROUNDS {
        // A fresh connection per round (its streams start again at 1).
        for (p, conn) in exchanges(vip, n, round as u16).into_iter().enumerate() {
            let _ = plane.ingress(&Ipv4Packet::tcp(conn.client, vip, SYN).build());
            let _ = plane.ingress(&conn.first);
            let mut sums = [0u128; 4];
            for (request, answer) in &conn.pairs {
                sums[0] += plane.time_xdp(PROGRAM_BASELINE, request, 1).duration_ns;
                sums[1] += plane.time_xdp(PROGRAM_INGRESS, request, 1).duration_ns;
                sums[2] += plane.time_tc(PROGRAM_TC_BASELINE, answer, 1).duration_ns;
                sums[3] += plane.time_tc(PROGRAM_EGRESS, answer, 1).duration_ns;
            }
            results[p].push(sums.map(|s| s as f64 / f64::from(n)));
        }
    }
    let labels = ["HTTP/1.1", "HTTP/2 call", "TLS (opaque)"];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### Per-packet cost by protocol (BPF_PROG_TEST_RUN, single runs)\n"
    );
    let _ = writeln!(
        out,
        "One connection per protocol and round, {n} exchanges each (the client's packet, then the server's), every packet one run beside the baseline timed the same way; the median of {ROUNDS} rounds. HTTP/1.1: a GET, and a response whose status line, headers and body come in one packet (its status class and how it ends are read). HTTP/2: a call on a new stream (the client's HEADERS, read in the `split_h2` tail call), answered with HEADERS and DATA (read by the egress). TLS: application data both ways, which no program reads after the first packet classified the connection.\n"
    );
    let _ = writeln!(
        out,
        "| connection | packet | program | ns/packet | × baseline |"
    );
    let _ = writeln!(out, "|---|---|---|---:|---:|");
    for (label, rounds) in labels.iter().zip(&results) {
        let median = |i: usize| {
            let mut values: Vec<f64> = rounds.iter().map(|r| r[i]).collect();
            values.sort_by(f64::total_cmp);
            values[values.len() / 2]
        };
        let ratio = |i: usize, of: usize| {
            let mut values: Vec<f64> = rounds.iter().map(|r| r[i] / r[of]).collect();
            values.sort_by(f64::total_cmp);
            values[values.len() / 2]
        };
        let _ = writeln!(
            out,
            "| {label} | client's | split_ingress | {:.1} | {:.2} |",
            median(1),
            ratio(1, 0)
        );
        let _ = writeln!(
            out,
            "| {label} | server's | split_egress | {:.1} | {:.2} |",
            median(3),
            ratio(3, 2)
        );
    }
    out.push('\n');
    out
}
