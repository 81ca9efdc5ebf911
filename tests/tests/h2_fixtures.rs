//! HTTP/2 frames through the kernel programs (BPF_PROG_TEST_RUN: the XDP ingress with its
//! `split_h2` tail call, the TC egress): frames split across packets, several frames in one
//! packet, a huge frame, stream ids out of order, a retransmission, the preface in the middle of
//! an HTTP/1.1 connection, garbage after the preface, and trailers with and without a
//! grpc-status the kernel can read. None aborts: every packet is still steered and translated;
//! each call, answer and failure is counted once, and what the kernel cannot follow is counted
//! as untracked (or unread).

use std::net::SocketAddrV4;

use splitter_common::{Version, VersionStats, ipv4_mapped};
use splitter_tests::{
    packet::{self, ACK, Ipv4Packet, PSH, SYN},
    plane::{FIXTURE_CONFIG, Plane},
    require_root,
};

const XDP_PASS: u32 = 2;
const TC_NEXT: u32 = u32::MAX;
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 1;
const DATA: u8 = 0;
const SETTINGS: u8 = 4;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;
const PADDED: u8 = 8;
/// The client's and the server's first sequence numbers.
const CLIENT_SEQ: u32 = 1000;
const SERVER_SEQ: u32 = 50_000;

fn vip() -> SocketAddrV4 {
    "198.18.0.1:8080".parse().expect("vip")
}

fn frame(kind: u8, flags: u8, stream: u32, body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len()).expect("length").to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A frame header announcing `len` bytes of payload (which the caller may not send).
fn header(kind: u8, flags: u8, stream: u32, len: u32) -> Vec<u8> {
    let len = len.to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out
}

/// One connection through the programs: the client's bytes in order, the server's in order.
struct Conn<'a> {
    plane: &'a Plane,
    client: SocketAddrV4,
    backend: SocketAddrV4,
    version: Version,
    client_seq: u32,
    server_seq: u32,
}

impl<'a> Conn<'a> {
    fn open(plane: &'a Plane, port: u16) -> Self {
        let client = SocketAddrV4::new([198, 18, 0, 2].into(), port);
        let syn = plane.ingress(&Ipv4Packet::tcp(client, vip(), SYN).build());
        let backend = packet::parse(&syn.data).expect("parses").dst;
        let version = if backend.ip().octets()[2] == 1 {
            Version::Blue
        } else {
            Version::Green
        };
        Self {
            plane,
            client,
            backend,
            version,
            client_seq: CLIENT_SEQ,
            server_seq: SERVER_SEQ,
        }
    }

    /// The client sends `bytes` as one packet; it is steered to the backend whatever it holds.
    fn client_sends(&mut self, bytes: &[u8]) {
        self.client_sends_at(self.client_seq, bytes);
        self.client_seq = self.client_seq.wrapping_add(bytes.len() as u32);
    }

    fn client_sends_at(&self, seq: u32, bytes: &[u8]) {
        let packet = Ipv4Packet::tcp(self.client, vip(), ACK | PSH)
            .with_numbers(seq, SERVER_SEQ)
            .with_payload(bytes)
            .build();
        let run = self.plane.ingress(&packet);
        assert_eq!(run.verdict, XDP_PASS, "the client's packet");
        assert_eq!(packet::parse(&run.data).expect("parses").dst, self.backend);
    }

    /// The server sends `bytes` as one packet; it is translated whatever it holds.
    fn server_sends(&mut self, bytes: &[u8]) {
        let packet = Ipv4Packet::tcp(self.backend, self.client, ACK | PSH)
            .with_numbers(self.server_seq, self.client_seq)
            .with_payload(bytes)
            .build();
        self.server_seq = self.server_seq.wrapping_add(bytes.len() as u32);
        let run = self.plane.egress(&packet);
        assert_eq!(run.verdict, TC_NEXT, "the server's packet");
        assert_eq!(packet::parse(&run.data).expect("parses").src, vip());
    }

    fn counters(&self) -> VersionStats {
        let endpoint = splitter_common::Endpoint::new(ipv4_mapped([198, 18, 0, 1]), 8080, 6);
        let id = self
            .plane
            .maps
            .service(&endpoint)
            .expect("read")
            .expect("service")
            .id;
        self.plane
            .maps
            .counters(id, self.version)
            .expect("counters")
    }
}

fn start(plane: &Plane, port: u16) -> Conn<'_> {
    let mut conn = Conn::open(plane, port);
    let mut first = PREFACE.to_vec();
    first.extend(frame(SETTINGS, 0, 0, &[0; 6]));
    conn.client_sends(&first);
    conn.server_sends(&frame(SETTINGS, 0, 0, &[]));
    conn
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn frames_split_across_packets_and_packed_into_one_are_each_read_once() {
    require_root!();
    let plane = Plane::load(FIXTURE_CONFIG);
    let mut conn = start(&plane, 41_001);
    let before = conn.counters();
    assert_eq!(before.protocols[1], 1, "classified as h2: {before:?}");
    // A HEADERS frame whose header is cut after 4 bytes, then a DATA frame over three packets.
    let mut bytes = frame(HEADERS, END_HEADERS, 1, &[0x83, 0x86]);
    bytes.extend(frame(DATA, END_STREAM, 1, &[7; 3000]));
    for part in [&bytes[..4], &bytes[4..20], &bytes[20..1500], &bytes[1500..]] {
        conn.client_sends(part);
    }
    // Three calls in one packet.
    let mut three = Vec::new();
    for stream in [3, 5, 7] {
        three.extend(frame(HEADERS, END_HEADERS | END_STREAM, stream, &[0x83]));
    }
    conn.client_sends(&three);
    // The answers, all in one packet: stream 1 answered with data, 3 trailers-only (failed), 5
    // and 7 answered, their headers cut across two packets.
    let mut answers = frame(HEADERS, END_HEADERS, 1, &[0x88]);
    answers.extend(frame(DATA, END_STREAM, 1, &[1; 10]));
    answers.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &[0x88]));
    answers.extend(frame(HEADERS, END_HEADERS, 5, &[0x88]));
    answers.extend(frame(HEADERS, END_HEADERS, 7, &[0x88]));
    answers.extend(frame(DATA, END_STREAM, 5, &[]));
    answers.extend(frame(DATA, END_STREAM, 7, &[]));
    let cut = answers.len() - 5;
    conn.server_sends(&answers[..cut]);
    conn.server_sends(&answers[cut..]);
    let after = conn.counters();
    assert_eq!(after.calls - before.calls, 4, "{after:?}");
    assert_eq!(after.responses - before.responses, 4, "{after:?}");
    assert_eq!(after.call_errors, [1, 0, 0, 0, 0], "{after:?}");
    assert_eq!(after.untracked, [0, 0], "{after:?}");
}

/// `grpc-status: <value>` as an HPACK literal with a new, plain name; `indexing` as C-core
/// sends it (with incremental indexing), or without.
fn grpc_status(indexing: bool, value: &[u8]) -> Vec<u8> {
    let mut out = vec![if indexing { 0x40 } else { 0x00 }, 11];
    out.extend_from_slice(b"grpc-status");
    out.push(u8::try_from(value.len()).expect("short"));
    out.extend_from_slice(value);
    out
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn grpc_status_is_counted_per_code_an_ok_trailers_only_is_no_failure_and_an_error_after_the_message_is()
 {
    require_root!();
    let plane = Plane::load(FIXTURE_CONFIG);
    let mut conn = start(&plane, 41_005);
    let before = conn.counters();
    let mut calls = Vec::new();
    for stream in [1, 3, 5, 7, 9, 11] {
        calls.extend(frame(HEADERS, END_HEADERS | END_STREAM, stream, &[0x83]));
    }
    conn.client_sends(&calls);
    // 1: a message, then trailers that say INTERNAL (13): a failed call.
    let mut answers = frame(HEADERS, END_HEADERS, 1, &[0x88]);
    answers.extend(frame(DATA, 0, 1, &[0, 0, 0, 0, 2, 8, 1]));
    answers.extend(frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &grpc_status(false, b"13"),
    ));
    // 3: trailers-only that say OK (an empty stream): no failure.
    let mut ok = vec![0x88];
    ok.extend(grpc_status(true, b"0"));
    answers.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &ok));
    // 5: trailers-only whose status is an index into the connection's table: unread, failed.
    answers.extend(frame(HEADERS, END_HEADERS | END_STREAM, 5, &[0x88, 0xbe]));
    // 7: a message, then trailers whose name is an index into the connection's table (63)
    // and whose value says INTERNAL: unread, so not failed.
    answers.extend(frame(HEADERS, END_HEADERS, 7, &[0x88]));
    answers.extend(frame(DATA, 0, 7, &[0; 5]));
    answers.extend(frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        7,
        &[0x7f, 0x00, 0x02, b'1', b'3'],
    ));
    // 11: a message, then trailers with the name Huffman-coded (nghttp2's, Go's) saying OK.
    answers.extend(frame(HEADERS, END_HEADERS, 11, &[0x88]));
    answers.extend(frame(DATA, 0, 11, &[0; 5]));
    answers.extend(frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        11,
        &[
            0x40, 0x88, 0x9a, 0xca, 0xc8, 0xb2, 0x12, 0x34, 0xda, 0x8f, 0x01, 0x30,
        ],
    ));
    // 9: padded trailers-only saying NOT_FOUND (5), the padding's length first.
    let mut padded = vec![3, 0x88];
    padded.extend(grpc_status(true, b"5"));
    padded.extend([0; 3]);
    answers.extend(frame(
        HEADERS,
        END_HEADERS | END_STREAM | PADDED,
        9,
        &padded,
    ));
    conn.server_sends(&answers);
    let after = conn.counters();
    assert_eq!(after.calls - before.calls, 6, "{after:?}");
    assert_eq!(after.responses - before.responses, 6, "{after:?}");
    // Trailers-only: 5 (unread) and 9 (NOT_FOUND); an error status after the message: 1.
    assert_eq!(after.call_errors, [2, 0, 0, 0, 1], "{after:?}");
    let mut codes = [0; splitter_common::l7::GRPC_STATUSES];
    codes[0] = 2;
    codes[5] = 1;
    codes[13] = 1;
    codes[splitter_common::l7::GRPC_CODES] = 2;
    assert_eq!(after.grpc_status, codes, "{after:?}");
    assert_eq!(after.untracked, [0, 0], "{after:?}");
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_retransmission_and_streams_out_of_order_count_no_call_twice() {
    require_root!();
    let plane = Plane::load(FIXTURE_CONFIG);
    let mut conn = start(&plane, 41_002);
    let request = frame(HEADERS, END_HEADERS | END_STREAM, 5, &[0x83]);
    let seq = conn.client_seq;
    conn.client_sends(&request);
    conn.client_sends_at(seq, &request);
    // Stream 3 after 5 is no new call (stream ids only rise); 5's HEADERS again neither.
    conn.client_sends(&frame(HEADERS, END_HEADERS, 3, &[0x83]));
    conn.client_sends(&frame(HEADERS, END_HEADERS, 5, &[0x83]));
    let counters = conn.counters();
    assert_eq!(counters.calls, 1, "{counters:?}");
    assert_eq!(counters.untracked, [0, 0], "{counters:?}");
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_huge_frame_is_skipped_and_what_it_carries_is_no_call() {
    require_root!();
    let plane = Plane::load(FIXTURE_CONFIG);
    let mut conn = start(&plane, 41_003);
    // A call, then a DATA frame announcing 16 MiB - 1: what follows in it looks like HEADERS
    // but is data.
    let mut first = frame(HEADERS, END_HEADERS, 1, &[0x83]);
    first.extend(header(DATA, 0, 1, 0x00ff_ffff));
    conn.client_sends(&first);
    for _ in 0..3 {
        conn.client_sends(&frame(HEADERS, END_HEADERS, 9, &[0x83; 1000]));
    }
    let counters = conn.counters();
    assert_eq!(
        counters.calls, 1,
        "the call before the huge frame only: {counters:?}"
    );
    assert_eq!(counters.untracked, [0, 0], "{counters:?}");
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_preface_inside_http1_and_garbage_after_the_preface_abort_nothing_and_count_once() {
    require_root!();
    let plane = Plane::load(FIXTURE_CONFIG);
    // An HTTP/1.1 connection that later sends the h2 preface: it stays HTTP/1.1.
    let mut http1 = Conn::open(&plane, 41_004);
    http1.client_sends(b"GET / HTTP/1.1\r\nHost: model\r\n\r\n");
    http1.client_sends(PREFACE);
    let counters = http1.counters();
    assert_eq!(counters.protocols[0], 1, "{counters:?}");
    assert_eq!(counters.protocols[1], 0, "{counters:?}");
    assert_eq!(counters.calls, 0, "{counters:?}");

    // Garbage after the preface: whatever the frame headers say, no packet is lost.
    let mut garbage = Conn::open(&plane, 41_005);
    let mut first = PREFACE.to_vec();
    first.extend((0..200u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    garbage.client_sends(&first);
    for round in 0..5u32 {
        let noise: Vec<u8> = (0..300u32)
            .map(|i| ((i + round * 7919).wrapping_mul(40_503) >> 7) as u8)
            .collect();
        garbage.client_sends(&noise);
        garbage.server_sends(&noise);
    }
    let counters = garbage.counters();
    // These bytes read as frame headers whose lengths carry the rest past the packets sent:
    // skipped, nothing lost or counted, and no call taken from them.
    assert_eq!(counters.untracked, [0, 0], "{counters:?}");
    assert_eq!(counters.calls, 0, "{counters:?}");

    // A gap (a packet never seen) loses the framing once, counted.
    let mut gap = start(&plane, 41_006);
    let before = gap.counters().untracked[1];
    gap.client_seq += 100;
    gap.client_sends(&frame(HEADERS, END_HEADERS, 1, &[0x83]));
    gap.client_sends(&frame(HEADERS, END_HEADERS, 3, &[0x83]));
    assert_eq!(gap.counters().untracked[1], before + 1);
}
