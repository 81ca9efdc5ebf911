//! The data plane's part of a drain on crafted packets, through BPF_PROG_TEST_RUN: for a flow
//! in `DRAINS` the programs record both sides' sequence numbers, the head and the tail of the
//! backend's segments; once the flow is marked closing, the client's payload is dropped and
//! counted; once it is marked for a reset, so is the backend's. Flows not drained are left
//! alone.

use std::net::SocketAddrV4;

use splitter_common::{
    FlowKey, PlaneCounter,
    drain::{
        CLOSE_FIN, CLOSE_RESET, DRAIN_BACKEND, DRAIN_BACKEND_TS, DRAIN_CLIENT, DRAIN_CLIENT_TS,
        DRAIN_HEAD, DRAIN_REQUEST, Drain,
    },
    ipv4_mapped,
};
use splitter_tests::{
    packet::{self, ACK, Ipv4Packet, PSH, SYN},
    plane::{FIXTURE_CONFIG as CONFIG, Plane},
    require_root,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const TC_NEXT: u32 = u32::MAX;
const TC_SHOT: u32 = 2;

fn vip() -> SocketAddrV4 {
    "198.18.0.1:8080".parse().expect("address")
}

fn client(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new([198, 18, 0, 2].into(), port)
}

fn key(src: SocketAddrV4) -> FlowKey {
    FlowKey {
        src_addr: ipv4_mapped(src.ip().octets()),
        dst_addr: ipv4_mapped(vip().ip().octets()),
        src_port_be: src.port().to_be(),
        dst_port_be: vip().port().to_be(),
        protocol: packet::TCP,
        _pad: [0; 3],
    }
}

/// Opens a connection from `conn`: the backend its SYN went to.
fn open(plane: &Plane, conn: SocketAddrV4) -> SocketAddrV4 {
    let syn = plane.ingress(&Ipv4Packet::tcp(conn, vip(), SYN).build());
    packet::parse(&syn.data).expect("parses").dst
}

fn from_client(conn: SocketAddrV4, seq: u32, ack: u32, payload: &[u8]) -> Vec<u8> {
    let flags = if payload.is_empty() { ACK } else { ACK | PSH };
    Ipv4Packet::tcp(conn, vip(), flags)
        .with_numbers(seq, ack)
        .with_payload(payload)
        .build()
}

fn from_backend(backend: SocketAddrV4, conn: SocketAddrV4, seq: u32, payload: &[u8]) -> Vec<u8> {
    Ipv4Packet::tcp(backend, conn, ACK | PSH)
        .with_numbers(seq, 1)
        .with_payload(payload)
        .build()
}

/// Marks `conn`'s flow for draining, as a drain does.
fn begin(plane: &mut Plane, conn: SocketAddrV4) -> Result<Vec<FlowKey>, String> {
    let flow = plane
        .maps
        .flow(&key(conn))
        .map_err(|e| e.to_string())?
        .ok_or("no flow")?;
    plane
        .maps
        .begin_drain(&[(key(conn), flow)])
        .map_err(|e| e.to_string())
}

fn record(plane: &Plane, conn: SocketAddrV4) -> Drain {
    plane
        .maps
        .drain_record(&key(conn))
        .expect("read DRAINS")
        .expect("the flow is being drained")
}

fn plane_count(plane: &Plane, counter: PlaneCounter) -> u64 {
    plane
        .maps
        .plane_counters()
        .expect("plane counters")
        .into_iter()
        .find(|(c, _)| *c == counter.name())
        .map_or(0, |(_, n)| n)
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_drained_flow_records_both_sides_and_drops_what_races_its_close() {
    require_root!();
    let mut plane = Plane::load(CONFIG);
    let conn = client(50_000);
    let backend = open(&plane, conn);
    // Established before the drain: pure ACKs go through the flow cache.
    for _ in 0..2 {
        assert_eq!(
            plane.ingress(&from_client(conn, 1_000, 5_000, b"")).verdict,
            XDP_PASS
        );
    }
    let marked = begin(&mut plane, conn).expect("begin");
    assert_eq!(marked, [key(conn)]);
    assert_eq!(record(&plane, conn).seen, 0, "a fresh record");

    // Every client packet is seen now, pure ACKs included (the cache no longer has the flow).
    for n in 1..=2 {
        let run = plane.ingress(&from_client(conn, 1_000, 5_000, b""));
        assert_eq!(run.verdict, XDP_PASS);
        let d = record(&plane, conn);
        assert_eq!(
            (d.client_next, d.client_ack, d.client_sent),
            (1_000, 5_000, 1_000)
        );
        assert_eq!((d.seen, d.client_packets), (DRAIN_CLIENT, n));
    }
    // A request: the client's next number moves, and a request is waiting.
    let request = b"POST /v2/models/m/infer HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}";
    let run = plane.ingress(&from_client(conn, 1_000, 5_000, request));
    assert_eq!(run.verdict, XDP_PASS);
    assert_eq!(packet::parse(&run.data).expect("parses").dst, backend);
    let d = record(&plane, conn);
    assert_eq!(d.client_next, 1_000 + request.len() as u32);
    assert_eq!(d.seen, DRAIN_CLIENT | DRAIN_REQUEST);

    // The response: its head is kept, the request answered, the backend's end and tail noted.
    let response = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{\"ok\":true}";
    let run = plane.egress(&from_backend(backend, conn, 5_000, response));
    assert_eq!(run.verdict, TC_NEXT);
    let d = record(&plane, conn);
    assert_eq!(d.seen, DRAIN_CLIENT | DRAIN_BACKEND | DRAIN_HEAD);
    assert_eq!(d.head_seq, 5_000);
    assert_eq!(&d.head[..usize::from(d.head_len)], &response[..]);
    assert_eq!(d.backend_next, 5_000 + response.len() as u32);
    let last: [u8; 8] = response[response.len() - 8..]
        .try_into()
        .expect("eight bytes");
    assert_eq!((d.tail, d.tail_len), (last, 8));

    // Marked closing: the client's next request is dropped and counted; its ACKs still pass.
    plane
        .maps
        .mark_closing(&key(conn), CLOSE_FIN)
        .expect("mark");
    let sent = 1_000 + request.len() as u32;
    let ack = 5_000 + response.len() as u32;
    let raced = plane.ingress(&from_client(conn, sent, ack, b"GET /next HTTP/1.1\r\n\r\n"));
    assert_eq!(raced.verdict, XDP_DROP);
    assert_eq!(plane_count(&plane, PlaneCounter::DrainRaced), 1);
    let d = record(&plane, conn);
    assert_eq!(d.raced, 1);
    // Its retransmission is dropped too, and is the same request: counted once.
    let again = plane.ingress(&from_client(conn, sent, ack, b"GET /next HTTP/1.1\r\n\r\n"));
    assert_eq!(again.verdict, XDP_DROP);
    assert_eq!(plane_count(&plane, PlaneCounter::DrainRaced), 2);
    let d = record(&plane, conn);
    assert_eq!(d.raced, 1, "a retransmission is no new request");
    assert_eq!(
        d.client_next, sent,
        "the dropped request never reached the backend"
    );
    assert_ne!(d.client_sent, sent, "but the client was seen speaking");
    assert_eq!(
        plane.ingress(&from_client(conn, sent, ack, b"")).verdict,
        XDP_PASS
    );
    // Closed with a FIN (and the backend reset): the backend's RST to that ACK is held back, so
    // it cannot reach the client before the client read the FIN and what came with it.
    let rst = Ipv4Packet::tcp(backend, conn, packet::RST)
        .with_numbers(ack, sent)
        .build();
    assert_eq!(plane.egress(&rst).verdict, TC_SHOT);
    assert_eq!(plane_count(&plane, PlaneCounter::DrainHeld), 1);

    // Marked for a reset: the backend's payload is held back too.
    plane
        .maps
        .mark_closing(&key(conn), CLOSE_RESET)
        .expect("mark");
    let held = plane.egress(&from_backend(backend, conn, ack, b"more"));
    assert_eq!(held.verdict, TC_SHOT);
    assert_eq!(plane_count(&plane, PlaneCounter::DrainHeld), 2);

    // Forgotten: the flow is an ordinary flow again.
    plane.maps.end_drain(&key(conn)).expect("end");
    plane.maps.set_drain_active(false).expect("off");
    assert_eq!(plane.maps.drain_record(&key(conn)).expect("read"), None);
    assert_eq!(
        plane
            .ingress(&from_client(
                conn,
                sent,
                ack,
                b"GET /again HTTP/1.1\r\n\r\n"
            ))
            .verdict,
        XDP_PASS
    );
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn flows_not_being_drained_are_left_alone_while_a_drain_runs() {
    require_root!();
    let mut plane = Plane::load(CONFIG);
    let (drained, other) = (client(51_000), client(51_001));
    open(&plane, drained);
    let backend = open(&plane, other);
    begin(&mut plane, drained).expect("begin");
    plane
        .maps
        .mark_closing(&key(drained), CLOSE_RESET)
        .expect("mark");
    let run = plane.ingress(&from_client(other, 7, 9, b"GET / HTTP/1.1\r\n\r\n"));
    assert_eq!(run.verdict, XDP_PASS);
    assert_eq!(packet::parse(&run.data).expect("parses").dst, backend);
    let reply = plane.egress(&from_backend(backend, other, 9, b"HTTP/1.1 200 OK\r\n\r\n"));
    assert_eq!(reply.verdict, TC_NEXT);
    assert_eq!(plane.maps.drain_record(&key(other)).expect("read"), None);
    assert_eq!(plane_count(&plane, PlaneCounter::DrainRaced), 0);
    assert_eq!(plane_count(&plane, PlaneCounter::DrainHeld), 0);
    // A second begin of the same flow keeps its record.
    assert!(begin(&mut plane, drained).expect("begin").is_empty());
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_new_connection_on_a_closed_drained_five_tuple_is_not_drained() {
    require_root!();
    let mut plane = Plane::load(CONFIG);
    let conn = client(52_000);
    open(&plane, conn);
    begin(&mut plane, conn).expect("begin");
    plane
        .maps
        .mark_closing(&key(conn), CLOSE_FIN)
        .expect("mark");
    // The drain closed it and lingers; the client opens a new connection from the same port.
    let backend = open(&plane, conn);
    assert_eq!(
        plane.maps.drain_record(&key(conn)).expect("read"),
        None,
        "the old connection's record went with the new SYN"
    );
    let run = plane.ingress(&from_client(conn, 1, 1, b"GET / HTTP/1.1\r\n\r\n"));
    assert_eq!(
        run.verdict, XDP_PASS,
        "the new connection's request is not dropped"
    );
    assert_eq!(packet::parse(&run.data).expect("parses").dst, backend);
    assert_eq!(plane_count(&plane, PlaneCounter::DrainRaced), 0);
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_drained_flow_records_the_timestamps_that_tell_how_long_it_was_quiet() {
    require_root!();
    // One CPU, so that the reply cache filled below is the one the later replies meet.
    // SAFETY: plain structs that live across the calls.
    unsafe {
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut one);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const one),
            0
        );
    }
    let mut plane = Plane::load(CONFIG);
    let conn = client(53_000);
    let backend = open(&plane, conn);
    // A response before the drain puts the flow's reverse translation in the reply cache.
    assert_eq!(
        plane
            .egress(&from_backend(
                backend,
                conn,
                4_000,
                b"HTTP/1.1 200 OK\r\n\r\n"
            ))
            .verdict,
        TC_NEXT
    );
    // Not drained yet: nothing recorded of its packets.
    let stamped = |tsval: u32, tsecr: u32| {
        Ipv4Packet::tcp(conn, vip(), ACK)
            .with_numbers(1_000, 5_000)
            .with_timestamps(tsval, tsecr)
            .build()
    };
    assert_eq!(plane.ingress(&stamped(70, 40)).verdict, XDP_PASS);
    begin(&mut plane, conn).expect("begin");
    // The client's answer to the probe echoes the backend's clock at its last segment (40);
    // a later packet's echo does not replace the first.
    assert_eq!(plane.ingress(&stamped(90, 40)).verdict, XDP_PASS);
    assert_eq!(plane.ingress(&stamped(95, 130)).verdict, XDP_PASS);
    let d = record(&plane, conn);
    assert_eq!(d.client_tsecr, 40);
    assert_eq!(d.seen, DRAIN_CLIENT | DRAIN_CLIENT_TS);
    // The backend's answer to its probe: a pure ACK that carries its clock now (130), on a
    // flow whose reply is cached. Passed on, recorded, nothing else learnt from it.
    let answer = Ipv4Packet::tcp(backend, conn, ACK)
        .with_numbers(5_000, 1_000)
        .with_timestamps(130, 90)
        .build();
    assert_eq!(plane.egress(&answer).verdict, TC_NEXT);
    let d = record(&plane, conn);
    assert_eq!(d.backend_tsval, 130);
    assert_eq!(d.seen, DRAIN_CLIENT | DRAIN_CLIENT_TS | DRAIN_BACKEND_TS);
    assert_eq!(d.backend_next, 0, "a pure ACK ends no segment");
    // A drained flow's reply is not cached again: the next one is recorded too.
    let later = Ipv4Packet::tcp(backend, conn, ACK)
        .with_numbers(5_000, 1_000)
        .with_timestamps(140, 95)
        .build();
    assert_eq!(plane.egress(&later).verdict, TC_NEXT);
    assert_eq!(record(&plane, conn).backend_tsval, 140);
    // Options in another layout (the timestamps not first) read as none.
    let other = client(53_001);
    let backend = open(&plane, other);
    begin(&mut plane, other).expect("begin");
    let mut mss_first = Ipv4Packet::tcp(backend, other, ACK).with_numbers(5_000, 1_000);
    mss_first.tcp_options = vec![2, 4, 5, 0xb4, 1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 8];
    assert_eq!(plane.egress(&mss_first.build()).verdict, TC_NEXT);
    assert_eq!(record(&plane, other).seen & DRAIN_BACKEND_TS, 0);
}
