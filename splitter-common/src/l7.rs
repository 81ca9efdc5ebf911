//! The protocols model servers speak, as the kernel reads them: which protocol a connection
//! carries (from its client's first bytes, within what the service's `l7` setting allows), and
//! HTTP/2 calls from frame headers alone (no HPACK): a call starts with the client's HEADERS on
//! a new stream, is answered by the server's first HEADERS on it, and fails as a trailers-only
//! response (HEADERS with END_STREAM before any DATA), a server RST_STREAM, or a GOAWAY with an
//! error code. Connection-level frames (SETTINGS, PING, WINDOW_UPDATE) are never calls.
//!
//! The state machine is here, generic over how bytes are loaded, so user space tests it with
//! byte slices and both kernel programs run the same code on packets.

mod streams;

use streams::{end_stream, find_stream, free_stream, set_flags};

/// `Flow::state` bits 5 and 6: the connection's protocol, once its first client payload was
/// read (`FLOW_L7_READ`); before that, the service's configured protocol (0 for `auto`).
pub const FLOW_L7_MASK: u8 = 0x60;
/// HTTP/1.x: requests and responses timed, status classes read.
pub const FLOW_L7_HTTP1: u8 = 0x20;
/// HTTP/2 with prior knowledge (h2c), gRPC among it: calls read from frame headers.
pub const FLOW_L7_H2: u8 = 0x40;
/// Anything the kernel does not read (TLS, other protocols): only L4 signals are counted.
pub const FLOW_L7_OPAQUE: u8 = 0x60;
/// `Flow::state`: the client's first payload was read and the L7 bits say what it carries.
pub const FLOW_L7_READ: u8 = 0x80;

/// `Service::flags` bits 2 and 3: the service's configured protocol, as the `FLOW_L7_*` value
/// shifted down by 5 (0 is `auto`: whatever the first bytes show).
pub const SERVICE_L7_SHIFT: u32 = 2;
pub const SERVICE_L7_MASK: u32 = 3 << SERVICE_L7_SHIFT;

/// The `Service::flags` bits of a configured protocol (`FLOW_L7_*`, or 0 for `auto`).
#[must_use]
pub const fn service_l7_flags(flow_l7: u8) -> u32 {
    ((flow_l7 & FLOW_L7_MASK) as u32 >> 5) << SERVICE_L7_SHIFT
}

/// The `Flow::state` L7 bits a new flow of a service with `flags` starts with.
#[inline(always)]
#[must_use]
pub const fn configured_l7(service_flags: u32) -> u8 {
    (((service_flags & SERVICE_L7_MASK) >> SERVICE_L7_SHIFT) as u8) << 5
}

/// A connection's protocol as its client's first bytes show it: the index of
/// `VersionStats::protocols`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Protocol {
    Http1 = 0,
    H2 = 1,
    Tls = 2,
    Other = 3,
}
pub const PROTOCOLS: usize = 4;

/// The client's first 8 payload bytes (fewer when the payload is shorter: `len`).
#[inline(always)]
#[must_use]
pub fn classify(first: &[u8; 8], len: usize) -> Protocol {
    if len >= 8 && first == b"PRI * HT" {
        return Protocol::H2;
    }
    // A TLS record: handshake (22), version 3.x.
    if len >= 2 && first[0] == 0x16 && first[1] == 3 {
        return Protocol::Tls;
    }
    // A request line: an upper-case method, then a space (GET, POST, PUT, DELETE, HEAD, ...).
    let mut i = 0;
    while i < 8 && i < len {
        let b = first[i];
        if b == b' ' {
            return if i >= 3 {
                Protocol::Http1
            } else {
                Protocol::Other
            };
        }
        if !b.is_ascii_uppercase() {
            return Protocol::Other;
        }
        i += 1;
    }
    Protocol::Other
}

/// The L7 bits a connection gets: what it carries, within what its service allows (a service
/// set to one protocol reads nothing else; `auto` reads whatever it recognises).
#[inline(always)]
#[must_use]
pub const fn settle_l7(configured: u8, seen: Protocol) -> u8 {
    let seen_bits = match seen {
        Protocol::Http1 => FLOW_L7_HTTP1,
        Protocol::H2 => FLOW_L7_H2,
        Protocol::Tls | Protocol::Other => FLOW_L7_OPAQUE,
    };
    if configured == 0 || configured == seen_bits {
        seen_bits
    } else {
        FLOW_L7_OPAQUE
    }
}

/// What a flow's payloads are read as, from its state bits alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    /// No client payload read yet: the next one classifies the connection.
    Unread,
    Http1,
    H2,
    Opaque,
}

#[inline(always)]
#[must_use]
pub const fn read_kind(flow: &crate::Flow) -> Read {
    if flow.state & FLOW_L7_READ == 0 {
        return Read::Unread;
    }
    match flow.state & FLOW_L7_MASK {
        FLOW_L7_HTTP1 => Read::Http1,
        FLOW_L7_H2 => Read::H2,
        _ => Read::Opaque,
    }
}

/// The kinds of failed calls: the index of `VersionStats::call_errors`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum CallError {
    /// A response that is only trailers: HEADERS with END_STREAM before any DATA (gRPC's
    /// failed call), unless its grpc-status was read and says OK.
    TrailersOnly = 0,
    /// The server reset the stream before answering.
    ResetUnanswered = 1,
    /// The server reset the stream after its response began.
    ResetAnswered = 2,
    /// The server sent GOAWAY with an error code.
    GoAway = 3,
    /// Trailers after the response's messages whose grpc-status was read and is not OK.
    Status = 4,
}
pub const CALL_ERRORS: usize = 5;

/// What the kernel did not read: the index of `VersionStats::untracked`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Untracked {
    /// A call opened while the connection's followed streams were all busy.
    Call = 0,
    /// A connection whose framing was lost: nothing more of it is read.
    Connection = 1,
}
pub const UNTRACKED: usize = 2;

/// Streams followed at once per connection (a multiplexed channel's concurrent calls).
pub const H2_STREAMS: usize = 16;
/// Frame headers read per packet; a packet with more loses its connection's framing.
pub const H2_FRAMES_PER_PACKET: u32 = 24;
/// The client's connection preface, `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`.
pub const H2_PREFACE_LEN: u32 = 24;
const FRAME_HEADER: u32 = 9;

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const GOAWAY: u8 = 7;
const END_STREAM: u8 = 1;
const PADDED: u8 = 8;
const PRIORITY: u8 = 0x20;

/// An HPACK string's length byte: the string is Huffman-coded.
const HUFFMAN: u8 = 0x80;
/// `grpc-status` Huffman-coded (RFC 7541 Appendix B), as encoders that code a string when it
/// gets shorter send the name: nghttp2, Go's x/net/http2 (grpc-go).
const HUFFMAN_GRPC_STATUS: [u8; 8] = [0x9a, 0xca, 0xc8, 0xb2, 0x12, 0x34, 0xda, 0x8f];

/// `H2Event::Status` of trailers whose grpc-status is not read.
pub const STATUS_UNREAD: u8 = 0xff;
/// gRPC's status codes, 0 (OK) to 16 (UNAUTHENTICATED).
pub const GRPC_CODES: usize = 17;
/// Entries of `VersionStats::grpc_status`: one per code, then trailers whose status was not
/// read (`STATUS_UNREAD`).
pub const GRPC_STATUSES: usize = GRPC_CODES + 1;
/// gRPC's names of its codes (and ours of the unread), in the order of
/// `VersionStats::grpc_status`.
pub const GRPC_STATUS_NAMES: [&str; GRPC_STATUSES] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
    "unread",
];

/// `H2Stream::flags`: the server's first HEADERS on the stream came.
const ANSWERED: u32 = 1;
/// `H2Stream::flags`: the server sent DATA on the stream.
const HAD_DATA: u32 = 2;

/// What one direction of a connection has been read up to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct H2Side {
    /// The TCP sequence number of this side's next unread byte.
    pub next_seq: u32,
    /// Bytes of the current frame still to come before the next frame header.
    pub skip: u32,
    /// The frame header being read; between packets, the first `carried` bytes of one that goes
    /// on in the next packet.
    pub buf: [u8; 16],
    pub carried: u32,
    /// `SYNCED` once this side's first packet was seen.
    pub flags: u32,
}

/// `H2Side::flags`: the side's first packet was seen. The server's side starts at the client's
/// acknowledgement when the connection is first read; a server packet seen first that starts
/// beyond it carries on from bytes the server sent before the client's preface was read. Those
/// can only be connection-level frames, whole: no stream exists before the client's first
/// HEADERS, and the server's SETTINGS is written at once, far smaller than a segment.
const SYNCED: u32 = 1;

/// A call being followed: its stream id, what the server has sent on it, and when it started.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct H2Stream {
    /// 0 for a free entry.
    pub id: u32,
    pub flags: u32,
    pub start_ns: u64,
}

/// Value of `H2_CONNS`, keyed by the connection's `FlowKey` as the client sends it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct H2Conn {
    pub client: H2Side,
    pub server: H2Side,
    pub streams: [H2Stream; H2_STREAMS],
    /// The highest stream the client opened: HEADERS on it or a lower one is not a new call.
    pub last_client_stream: u32,
    /// Non-zero once the framing was lost: the `Lost` reason, for a person reading the map.
    pub lost: u32,
}
const _: () = assert!(core::mem::size_of::<H2Conn>() == 328);

impl H2Conn {
    /// A connection whose client preface starts at `client_seq`; the server is read from
    /// `server_seq`, the client's acknowledgement then (its earlier bytes can only be
    /// connection-level frames: no stream exists before the client's first HEADERS).
    #[must_use]
    pub fn new(client_seq: u32, server_seq: u32) -> Self {
        let mut conn = Self::default();
        conn.client.next_seq = client_seq;
        conn.client.skip = H2_PREFACE_LEN;
        conn.client.flags = SYNCED;
        conn.server.next_seq = server_seq;
        conn
    }
}

/// Where a TCP packet's payload is, and its sequence and acknowledgement numbers (host order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    pub seq: u32,
    pub ack: u32,
    pub offset: u32,
    pub len: u32,
}

/// Why a connection's framing was lost (`H2Conn::lost`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Lost {
    /// A packet came with bytes after a gap: one before it was not seen (yet).
    Gap = 1,
    /// A retransmission overlapped a frame header begun in the previous packet.
    Overlap = 2,
    /// The packet's bytes could not be read.
    Load = 3,
    /// More than `H2_FRAMES_PER_PACKET` frames in one packet.
    Frames = 4,
}

/// Which side sent a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Client,
    Server,
}

/// What a packet told about the connection's calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum H2Event {
    /// A call began (and is followed).
    Call,
    /// The server's first HEADERS on a call, `ns` after the call began.
    Answered(u64),
    /// The server's first DATA on a call (its first message: a streamed call's first token).
    FirstData(u64),
    /// The server ended the call's stream (END_STREAM).
    Ended(u64),
    /// The call's trailers: their grpc-status, or `STATUS_UNREAD`.
    Status(u8),
    Failed(CallError),
    /// The client reset a call.
    Cancelled,
    Untracked(Untracked),
}

/// Where the events of a packet go (the kernel programs: their counters).
pub trait Sink {
    fn event(&mut self, event: H2Event);
}

/// How a program reads its packet's payload: `N` bytes at `offset` from the payload's start.
pub trait Payload {
    fn load<const N: usize>(&self, offset: u32, buf: &mut [u8; N]) -> bool;
}

/// Reads one packet of `len` payload bytes starting at TCP sequence number `seq`.
#[inline(always)]
pub fn read_packet(
    conn: &mut H2Conn,
    dir: Direction,
    seq: u32,
    len: u32,
    now: u64,
    payload: &impl Payload,
    on: &mut impl Sink,
) {
    let H2Conn {
        client,
        server,
        streams,
        last_client_stream,
        lost,
    } = conn;
    if *lost != 0 || len == 0 {
        return;
    }
    let side = match dir {
        Direction::Client => client,
        Direction::Server => server,
    };
    let mut calls = Calls {
        streams,
        last_client_stream,
    };
    if let Err(why) = read_side(&mut calls, side, dir, seq, len, now, payload, on) {
        *lost = why as u32;
        on.event(H2Event::Untracked(Untracked::Connection));
    }
}

/// The calls of a connection, as its frames change them.
struct Calls<'a> {
    streams: &'a mut [H2Stream; H2_STREAMS],
    last_client_stream: &'a mut u32,
}

/// Reads the frame headers of one packet; why the framing is lost, if it is. The side's `buf`
/// holds each header as it is read (no buffer on the stack: the kernel programs have little).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn read_side(
    conn: &mut Calls<'_>,
    side: &mut H2Side,
    dir: Direction,
    seq: u32,
    len: u32,
    now: u64,
    payload: &impl Payload,
    on: &mut impl Sink,
) -> Result<(), Lost> {
    if side.flags & SYNCED == 0 {
        side.flags |= SYNCED;
        if (seq.wrapping_sub(side.next_seq) as i32) > 0 {
            side.next_seq = seq;
        }
    }
    // Where this packet starts against what was read: a retransmission of bytes already read
    // is skipped (and its new bytes read), a gap loses the framing.
    let behind = side.next_seq.wrapping_sub(seq) as i32;
    if behind < 0 {
        return Err(Lost::Gap);
    }
    let behind = behind as u32;
    if behind >= len {
        return Ok(());
    }
    let mut off = behind;
    side.next_seq = seq.wrapping_add(len);
    if side.carried != 0 {
        // A frame header began in an earlier packet: its rest starts this one.
        if off != 0 {
            return Err(Lost::Overlap);
        }
        let mut have = side.carried.min(8);
        while have < FRAME_HEADER && off < len {
            let Some(byte) = load_byte(payload, off) else {
                return Err(Lost::Load);
            };
            side.buf[(have & 15) as usize] = byte;
            have += 1;
            off += 1;
        }
        if have < FRAME_HEADER {
            side.carried = have;
            return Ok(());
        }
        side.carried = 0;
        let length = frame(conn, dir, &mut side.buf, off, len, now, payload, on);
        off += length;
        if off > len {
            side.skip = off - len;
            return Ok(());
        }
    } else {
        let skip = side.skip;
        if skip >= len - off {
            side.skip = skip - (len - off);
            return Ok(());
        }
        off += skip;
        side.skip = 0;
    }
    let mut frames = 0;
    while frames < H2_FRAMES_PER_PACKET {
        if off >= len {
            return Ok(());
        }
        let left = len - off;
        if left < FRAME_HEADER {
            // The header goes on in the next packet: keep its first bytes.
            let mut i = 0;
            while i < 8 {
                if i < left {
                    let Some(byte) = load_byte(payload, off + i) else {
                        return Err(Lost::Load);
                    };
                    side.buf[i as usize] = byte;
                }
                i += 1;
            }
            side.carried = left;
            return Ok(());
        }
        let Some((header, _)) = side.buf.split_first_chunk_mut::<9>() else {
            return Err(Lost::Load);
        };
        if !payload.load(off, header) {
            return Err(Lost::Load);
        }
        let length = frame(
            conn,
            dir,
            &mut side.buf,
            off + FRAME_HEADER,
            len,
            now,
            payload,
            on,
        );
        off += FRAME_HEADER + length;
        if off > len {
            side.skip = off - len;
            return Ok(());
        }
        frames += 1;
    }
    if off >= len {
        Ok(())
    } else {
        Err(Lost::Frames)
    }
}

#[inline(always)]
fn load_byte(payload: &impl Payload, offset: u32) -> Option<u8> {
    let mut byte = [0u8; 1];
    payload.load(offset, &mut byte).then_some(byte[0])
}

/// Reads one frame whose header is the first 9 bytes of `buf` and whose payload starts at `at`
/// (maybe past this packet's `len`); returns the payload's length. `buf` is free to reuse once
/// the header's fields are read.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn frame(
    conn: &mut Calls<'_>,
    dir: Direction,
    buf: &mut [u8; 16],
    at: u32,
    len: u32,
    now: u64,
    payload: &impl Payload,
    on: &mut impl Sink,
) -> u32 {
    let length = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]);
    let (kind, flags) = (buf[3], buf[4]);
    let id = u32::from_be_bytes([buf[5] & 0x7f, buf[6], buf[7], buf[8]]);
    match dir {
        Direction::Client => match kind {
            HEADERS if id & 1 == 1 && id > *conn.last_client_stream => {
                *conn.last_client_stream = id;
                match free_stream(conn, id) {
                    Some(i) => {
                        conn.streams[i] = H2Stream {
                            id,
                            flags: 0,
                            start_ns: now,
                        };
                        on.event(H2Event::Call);
                    }
                    None => on.event(H2Event::Untracked(Untracked::Call)),
                }
            }
            RST_STREAM => {
                // SAFETY: an entry of this connection's map value, valid for this program run.
                if let Some(i) = find_stream(conn, id)
                    && unsafe { end_stream(&raw mut conn.streams[i], id) }
                {
                    on.event(H2Event::Cancelled);
                }
            }
            _ => {}
        },
        Direction::Server => match kind {
            HEADERS | DATA => {
                // The entry as it is before its last frame frees it (the client may take it
                // for a new call at once); the last frame counts only if the client did not
                // reset the stream first.
                let ends = flags & END_STREAM != 0;
                if let Some(i) = find_stream(conn, id)
                    && let H2Stream {
                        flags: had,
                        start_ns,
                        ..
                    } = conn.streams[i]
                    // SAFETY: as the client's RST_STREAM's.
                    && (!ends || unsafe { end_stream(&raw mut conn.streams[i], id) })
                {
                    // Trailers: their grpc-status, where it is sent as a plain literal.
                    let status = if kind == HEADERS && ends {
                        let mut block = at;
                        if flags & PADDED != 0 {
                            block += 1;
                        }
                        if flags & PRIORITY != 0 {
                            block += 5;
                        }
                        let code = grpc_status(payload, buf, block, len.min(at + length));
                        on.event(H2Event::Status(code));
                        code
                    } else {
                        STATUS_UNREAD
                    };
                    let waited = now.saturating_sub(start_ns);
                    let mut now_has = had;
                    if kind == HEADERS && had & ANSWERED == 0 {
                        now_has |= ANSWERED;
                        on.event(H2Event::Answered(waited));
                        // A trailers-only response fails the call, unless it says OK.
                        if ends && had & HAD_DATA == 0 && status != 0 {
                            on.event(H2Event::Failed(CallError::TrailersOnly));
                        }
                    } else if status != 0 && status != STATUS_UNREAD {
                        // Trailers after the response that say the call failed.
                        on.event(H2Event::Failed(CallError::Status));
                    }
                    if kind == DATA && had & HAD_DATA == 0 {
                        now_has |= HAD_DATA;
                        on.event(H2Event::FirstData(waited));
                    }
                    if ends {
                        on.event(H2Event::Ended(waited));
                    } else if now_has != had {
                        // SAFETY: as the client's RST_STREAM's.
                        unsafe { set_flags(&raw mut conn.streams[i], id, had, now_has) };
                    }
                }
            }
            RST_STREAM => {
                if let Some(i) = find_stream(conn, id)
                    && let answered = conn.streams[i].flags & ANSWERED != 0
                    // SAFETY: as the client's RST_STREAM's.
                    && unsafe { end_stream(&raw mut conn.streams[i], id) }
                {
                    on.event(H2Event::Failed(if answered {
                        CallError::ResetAnswered
                    } else {
                        CallError::ResetUnanswered
                    }));
                }
            }
            GOAWAY => {
                // Last stream id, then the error code: read when it is in this packet.
                if let Some((body, _)) = buf.split_first_chunk_mut::<8>()
                    && at + 8 <= len
                    && payload.load(at, body)
                    && u32::from_be_bytes([body[4], body[5], body[6], body[7]]) != 0
                {
                    on.event(H2Event::Failed(CallError::GoAway));
                }
            }
            _ => {}
        },
    }
    length
}

/// The `grpc-status` of the header block from `at` to `end` (what of it this packet holds),
/// when it is sent as a literal with a new name, plain (gRPC C-core) or Huffman-coded
/// (nghttp2, Go's), and a plain value: each encoder's first trailers with the name on a
/// connection; `STATUS_UNREAD` otherwise (an index into the connection's dynamic table, a
/// Huffman-coded value, beyond six fields or this packet).
/// `buf` is the side's frame-header buffer, free once the header's fields are read.
#[inline(always)]
fn grpc_status(payload: &impl Payload, buf: &mut [u8; 16], mut at: u32, end: u32) -> u8 {
    let mut fields = 0;
    while fields < 6 {
        fields += 1;
        if at >= end {
            return STATUS_UNREAD;
        }
        let Some(first) = load_byte(payload, at) else {
            return STATUS_UNREAD;
        };
        at += 1;
        // An indexed field, or a dynamic table size update: one byte (unless its index goes
        // on in more).
        if first & 0x80 != 0 || first & 0xe0 == 0x20 {
            if first == 0xff || first == 0x3f {
                return STATUS_UNREAD;
            }
            continue;
        }
        // A literal: with incremental indexing (6-bit name index), or without (4-bit).
        let (index, max) = if first & 0x40 != 0 {
            (first & 0x3f, 0x3f)
        } else {
            (first & 0x0f, 0x0f)
        };
        if index == max {
            return STATUS_UNREAD;
        }
        let mut is_status = false;
        if index == 0 {
            let Some(name_len) = load_byte(payload, at) else {
                return STATUS_UNREAD;
            };
            at += 1;
            if name_len & 0x7f == 0x7f {
                return STATUS_UNREAD;
            }
            if name_len == 11 {
                let Some((name, _)) = buf.split_first_chunk_mut::<11>() else {
                    return STATUS_UNREAD;
                };
                is_status = payload.load(at, name) && name == b"grpc-status";
            } else if name_len == HUFFMAN | HUFFMAN_GRPC_STATUS.len() as u8 {
                let Some((name, _)) = buf.split_first_chunk_mut::<8>() else {
                    return STATUS_UNREAD;
                };
                is_status = payload.load(at, name) && *name == HUFFMAN_GRPC_STATUS;
            }
            at += u32::from(name_len & 0x7f);
        }
        let Some(value_len) = load_byte(payload, at) else {
            return STATUS_UNREAD;
        };
        at += 1;
        if value_len & 0x7f == 0x7f {
            return STATUS_UNREAD;
        }
        if is_status {
            let digit = |at| {
                load_byte(payload, at)
                    .filter(u8::is_ascii_digit)
                    .map(|d| d - b'0')
            };
            let code = match value_len {
                1 => digit(at),
                2 => digit(at).zip(digit(at + 1)).map(|(t, u)| t * 10 + u),
                _ => None,
            };
            return code
                .filter(|c| usize::from(*c) < GRPC_CODES)
                .unwrap_or(STATUS_UNREAD);
        }
        at += u32::from(value_len & 0x7f);
    }
    STATUS_UNREAD
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{vec, vec::Vec};

    use super::*;

    struct Bytes<'a>(&'a [u8]);

    impl Sink for Vec<H2Event> {
        fn event(&mut self, event: H2Event) {
            self.push(event);
        }
    }

    impl Payload for Bytes<'_> {
        fn load<const N: usize>(&self, offset: u32, buf: &mut [u8; N]) -> bool {
            let at = offset as usize;
            match self.0.get(at..at + N) {
                Some(bytes) => {
                    buf.copy_from_slice(bytes);
                    true
                }
                None => false,
            }
        }
    }

    fn frame_bytes(kind: u8, flags: u8, id: u32, body: &[u8]) -> Vec<u8> {
        let len = (body.len() as u32).to_be_bytes();
        let mut out = vec![len[1], len[2], len[3], kind, flags];
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    /// Feeds `stream` to one side in packets of the given sizes; returns the events.
    fn feed(
        conn: &mut H2Conn,
        dir: Direction,
        start: u32,
        stream: &[u8],
        cuts: &[usize],
    ) -> Vec<H2Event> {
        let mut events = Vec::new();
        let mut at = 0;
        for (n, &size) in cuts
            .iter()
            .chain(std::iter::repeat(&usize::MAX))
            .enumerate()
        {
            if at >= stream.len() || n > 1000 {
                break;
            }
            let end = stream.len().min(at.saturating_add(size));
            let packet = &stream[at..end];
            read_packet(
                conn,
                dir,
                start.wrapping_add(at as u32),
                packet.len() as u32,
                7,
                &Bytes(packet),
                &mut events,
            );
            at = end;
        }
        events
    }

    fn client_stream() -> Vec<u8> {
        let mut s = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        s.extend(frame_bytes(4, 0, 0, &[0; 12])); // SETTINGS
        s.extend(frame_bytes(8, 0, 0, &[0; 4])); // WINDOW_UPDATE
        s.extend(frame_bytes(HEADERS, 4, 1, &[0x83, 0x86]));
        s.extend(frame_bytes(DATA, END_STREAM, 1, &[0; 40]));
        s.extend(frame_bytes(6, 0, 0, &[0; 8])); // PING
        s.extend(frame_bytes(HEADERS, 4, 3, &[0x83]));
        s.extend(frame_bytes(DATA, END_STREAM, 3, &[0; 20000]));
        s
    }

    #[test]
    fn client_calls_are_counted_once_however_the_stream_is_cut() {
        let stream = client_stream();
        for cuts in [
            vec![usize::MAX],
            vec![1; 200],
            vec![7; 50],
            vec![24, 9, 1, 30, 5, 4000],
            vec![50, 3, 8, 100],
        ] {
            let mut conn = H2Conn::new(1000, 5000);
            let events = feed(&mut conn, Direction::Client, 1000, &stream, &cuts);
            assert_eq!(events, vec![H2Event::Call, H2Event::Call], "cuts {cuts:?}");
            assert_eq!(conn.lost, 0);
        }
    }

    #[test]
    fn server_answers_and_trailers_only_failures() {
        let mut conn = H2Conn::new(1, 1);
        feed(&mut conn, Direction::Client, 1, &client_stream(), &[]);
        let mut server = frame_bytes(4, 0, 0, &[0; 6]);
        server.extend(frame_bytes(HEADERS, 4, 1, &[0x88]));
        server.extend(frame_bytes(DATA, 0, 1, &[0; 10]));
        server.extend(frame_bytes(HEADERS, 5, 1, &[0x40]));
        server.extend(frame_bytes(HEADERS, 5, 3, &[0x88])); // trailers-only
        let events = feed(&mut conn, Direction::Server, 1, &server, &[]);
        assert_eq!(
            events,
            vec![
                H2Event::Answered(0),
                H2Event::FirstData(0),
                H2Event::Status(STATUS_UNREAD),
                H2Event::Ended(0),
                H2Event::Status(STATUS_UNREAD),
                H2Event::Answered(0),
                H2Event::Failed(CallError::TrailersOnly),
                H2Event::Ended(0),
            ]
        );
        assert!(conn.streams.iter().all(|s| s.id == 0));
    }

    /// Bytes from hex, as captured.
    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
            .collect()
    }

    /// The grpc-status codes of `events`, in order.
    fn statuses(events: &[H2Event]) -> Vec<u8> {
        events
            .iter()
            .filter_map(|e| match e {
                H2Event::Status(code) => Some(*code),
                _ => None,
            })
            .collect()
    }

    /// The header blocks gRPC C-core (grpcio 1.51) sent on the test bed.
    #[test]
    fn grpc_status_is_read_where_c_core_sends_it_as_a_plain_literal() {
        // A connection's first trailers-only response: NOT_FOUND (5), a literal.
        let first = hex(
            "88400c636f6e74656e742d74797065106170706c69636174696f6e2f67727063400b677270632d7374617475730135000c677270632d6d65737361676505677265656e",
        );
        // The next one: grpc-status now indexed in the connection's table (be).
        let indexed = hex("88bfbe000c677270632d6d65737361676505677265656e");
        // Trailers after the message of an OK call, the first on the connection: 0.
        let ok = hex("400b677270632d737461747573013000");
        let mut client = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        for stream in [1, 3, 5, 7] {
            client.extend(frame_bytes(HEADERS, 4, stream, &[0x83]));
        }
        let mut conn = H2Conn::new(1, 1);
        feed(&mut conn, Direction::Client, 1, &client, &[]);
        let mut server = frame_bytes(HEADERS, 5, 1, &first);
        server.extend(frame_bytes(HEADERS, 5, 3, &indexed));
        server.extend(frame_bytes(HEADERS, 4, 5, &[0x88]));
        server.extend(frame_bytes(DATA, 0, 5, &[0; 7]));
        server.extend(frame_bytes(HEADERS, 5, 5, &ok));
        // A trailers-only response that says OK (an empty stream) is no failure.
        server.extend(frame_bytes(HEADERS, 5, 7, &ok));
        let events = feed(&mut conn, Direction::Server, 1, &server, &[]);
        assert_eq!(statuses(&events), vec![5, STATUS_UNREAD, 0, 0]);
        let failed = events
            .iter()
            .filter(|e| **e == H2Event::Failed(CallError::TrailersOnly))
            .count();
        assert_eq!(failed, 2, "{events:?}");
    }

    /// What nghttp2's encoder (libnghttp2 1.64's `nghttp2_hd_deflate_hd`, which codes a string
    /// when that makes it shorter, as Go's x/net/http2 does) sends for three trailers on one
    /// connection: `grpc-status: 0` and an empty `grpc-message`, then `grpc-status: 13` twice.
    #[test]
    fn grpc_status_is_read_where_nghttp2_sends_its_name_huffman_coded() {
        // The name Huffman-coded (88: 8 bytes), the value plain.
        let first = hex("40889acac8b21234da8f013040899acac8b5254207317f00");
        // The name now an index into the dynamic table (63), the value plain: unread.
        let named = hex("7f00023133");
        let indexed = hex("be");
        let mut client = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        for stream in [1, 3, 5] {
            client.extend(frame_bytes(HEADERS, 4, stream, &[0x83]));
        }
        let mut conn = H2Conn::new(1, 1);
        feed(&mut conn, Direction::Client, 1, &client, &[]);
        let mut server = Vec::new();
        for (stream, trailers) in [(1, &first), (3, &named), (5, &indexed)] {
            server.extend(frame_bytes(HEADERS, 4, stream, &[0x88]));
            server.extend(frame_bytes(DATA, 0, stream, &[0; 7]));
            server.extend(frame_bytes(HEADERS, 5, stream, trailers));
        }
        let events = feed(&mut conn, Direction::Server, 1, &server, &[]);
        assert_eq!(statuses(&events), vec![0, STATUS_UNREAD, STATUS_UNREAD]);
        assert!(
            !events.iter().any(|e| matches!(e, H2Event::Failed(_))),
            "{events:?}"
        );
    }

    #[test]
    fn the_server_is_read_from_its_first_packet_when_it_spoke_before_the_preface_was_read() {
        let mut conn = H2Conn::new(1, 100);
        feed(&mut conn, Direction::Client, 1, &client_stream(), &[]);
        // The server's SETTINGS (bytes 100..115) went by before the connection was read.
        let mut server = frame_bytes(4, 1, 0, &[]);
        server.extend(frame_bytes(HEADERS, 4, 1, &[0x88]));
        let events = feed(&mut conn, Direction::Server, 115, &server, &[]);
        assert_eq!(events, vec![H2Event::Answered(0)]);
        // Afterwards a gap is a gap.
        let events = feed(&mut conn, Direction::Server, 1000, &server, &[]);
        assert_eq!(events, vec![H2Event::Untracked(Untracked::Connection)]);
        assert_eq!(conn.lost, Lost::Gap as u32);
    }

    #[test]
    fn a_gap_loses_the_framing_and_a_retransmission_does_not() {
        let stream = client_stream();
        let mut conn = H2Conn::new(0, 0);
        let mut events = Vec::new();
        read_packet(
            &mut conn,
            Direction::Client,
            0,
            60,
            0,
            &Bytes(&stream[..60]),
            &mut events,
        );
        read_packet(
            &mut conn,
            Direction::Client,
            0,
            60,
            0,
            &Bytes(&stream[..60]),
            &mut events,
        );
        read_packet(
            &mut conn,
            Direction::Client,
            100,
            10,
            0,
            &Bytes(&stream[100..110]),
            &mut events,
        );
        assert_eq!(events, vec![H2Event::Untracked(Untracked::Connection)]);
        assert_eq!(conn.lost, 1);
    }

    #[test]
    fn more_streams_than_followed_are_untracked_and_resets_cancel() {
        let mut s = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        for id in 0..(H2_STREAMS as u32 + 2) {
            s.extend(frame_bytes(HEADERS, 4, 2 * id + 1, &[0x83]));
        }
        s.extend(frame_bytes(RST_STREAM, 0, 1, &[0, 0, 0, 8]));
        let mut conn = H2Conn::new(0, 0);
        let events = feed(&mut conn, Direction::Client, 0, &s, &[]);
        let calls = events.iter().filter(|e| **e == H2Event::Call).count();
        assert_eq!(calls, H2_STREAMS);
        assert_eq!(
            events
                .iter()
                .filter(|e| **e == H2Event::Untracked(Untracked::Call))
                .count(),
            2
        );
        assert_eq!(events.last(), Some(&H2Event::Cancelled));
    }

    #[test]
    fn classification_within_the_configured_protocol() {
        let c = |b: &[u8]| {
            let mut first = [0u8; 8];
            let n = b.len().min(8);
            first[..n].copy_from_slice(&b[..n]);
            classify(&first, b.len())
        };
        assert_eq!(c(b"PRI * HTTP/2.0"), Protocol::H2);
        assert_eq!(c(b"GET / HTTP/1.1"), Protocol::Http1);
        assert_eq!(c(b"DELETE /x"), Protocol::Http1);
        assert_eq!(c(b"get / HTTP/1.1"), Protocol::Other);
        assert_eq!(c(b"POST /v2"), Protocol::Http1);
        assert_eq!(c(&[0x16, 3, 1, 0, 5]), Protocol::Tls);
        assert_eq!(c(b"ping"), Protocol::Other);
        assert_eq!(settle_l7(0, Protocol::H2), FLOW_L7_H2);
        assert_eq!(settle_l7(FLOW_L7_H2, Protocol::Http1), FLOW_L7_OPAQUE);
        assert_eq!(settle_l7(FLOW_L7_OPAQUE, Protocol::Http1), FLOW_L7_OPAQUE);
        assert_eq!(
            configured_l7(service_l7_flags(FLOW_L7_H2) | 0x100),
            FLOW_L7_H2
        );
    }
}
