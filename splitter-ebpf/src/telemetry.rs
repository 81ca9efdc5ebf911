//! What a backend's replies tell about its version, measured at TC egress for every
//! connection, with no sidecar and no change to the model server:
//! - the handshake time (the client's SYN to the backend's SYN-ACK);
//! - an HTTP/1.x response: the time from its request's first byte (stamped by ingress) to its
//!   first byte, to its first body byte (a streamed response's first token) and to its last
//!   chunk, and its status class, read from its first bytes (an HTTP/2 connection's frames are
//!   read in `l7`);
//! - resets: a RST before any SYN-ACK is a refused handshake, after it a backend reset.

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::TcContext};
use splitter_common::{
    FLOW_FIN_BACKEND, FLOW_RST, FLOW_SYN, FLOW_SYNACK, Flow, FlowKey, LatencyKind, RESPONSE_BODY,
    RESPONSE_HEADERS_ONLY, RESPONSE_PHASE, RESPONSE_STREAMING, flow_add_state, l7::Payload as _,
    latency_index, stats_index,
};

use crate::{
    l7::{self, SkbPayload},
    maps,
    packet::{Packet, TCP_FIN, TCP_RST, TCP_SYN},
};

/// Bytes of a status line read: `HTTP/1.1 200`.
const STATUS_LINE_LEN: usize = 12;

/// Returns true when an HTTP/2 payload waits for `split_h2_reply` (`l7::read_deferred_reply`).
#[inline(always)]
pub fn observe_reply(ctx: &TcContext, key: &FlowKey, pkt: &Packet, flow: &mut Flow) -> bool {
    // SAFETY: a helper with no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let stats = stats_index(flow.service_id, flow.version);
    let flags = pkt.tcp_flags;
    if flags & TCP_SYN != 0 && flow.state & FLOW_SYNACK == 0 {
        flow.state |= FLOW_SYNACK;
        maps::record_latency(
            latency_index(stats, LatencyKind::Handshake),
            now.saturating_sub(flow.created_ns),
        );
    }
    // One RST per flow counts (a crashed backend answers every retransmission with one); a RST
    // before the SYN-ACK of a flow that began with a SYN is a refused handshake.
    if flags & TCP_RST != 0 && flow.state & FLOW_RST == 0 {
        let refused = flow.state & (FLOW_SYN | FLOW_SYNACK) == FLOW_SYN;
        maps::with_stats(stats, |s| {
            if refused {
                s.refused_handshakes += 1
            } else {
                s.backend_resets += 1
            }
        });
    }
    let closing = if flags & TCP_RST != 0 {
        FLOW_RST
    } else if flags & TCP_FIN != 0 {
        FLOW_FIN_BACKEND
    } else {
        0
    };
    if closing != 0 && flow_add_state(flow, closing, now) {
        maps::with_stats(stats, |s| s.closed_flows += 1);
    }
    if pkt.payload_len > 0 {
        match l7::read_kind(flow) {
            l7::Read::H2 => return l7::defer_h2_reply(key, &pkt.segment(), stats),
            // Nothing read or timed: only who spoke last, for a drain.
            l7::Read::Opaque => {
                l7::backend_spoke(flow);
                return false;
            }
            _ => {}
        }
    }
    if pkt.payload_len > 0 && flow.request_ns != 0 {
        let phase = flow.request_ns & RESPONSE_PHASE;
        let waited = now.saturating_sub(flow.request_ns & !RESPONSE_PHASE);
        if phase == 0 {
            response_begins(ctx, pkt, flow, stats, now, waited);
        } else {
            // A later packet of the response: a streamed one's first body byte, a chunk, or
            // the last chunk.
            if phase == RESPONSE_HEADERS_ONLY {
                maps::record_latency(latency_index(stats, LatencyKind::FirstToken), waited);
            }
            let request = flow.request_ns & !RESPONSE_PHASE;
            let next = match tail(ctx, pkt) {
                Tail::LastChunk => {
                    maps::record_latency(latency_index(stats, LatencyKind::Whole), waited);
                    0
                }
                // Within a body, a blank line's end too ends a chunk (one whose data ends a line).
                Tail::ChunkEnd | Tail::HeadersEnd => request | RESPONSE_STREAMING,
                Tail::Other => request | RESPONSE_BODY,
            };
            // Written only when it changes: a long body's packets leave the entry alone.
            if flow.request_ns != next {
                flow.request_ns = next;
            }
        }
    }
    false
}

/// A response's first packet: its time to first byte and status class; its first body byte
/// too when the body begins in it, and its last when it ends in it.
#[inline(always)]
fn response_begins(
    ctx: &TcContext,
    pkt: &Packet,
    flow: &mut Flow,
    stats: u32,
    now: u64,
    waited: u64,
) {
    let class = status_class(ctx, pkt);
    // A 1xx (100 Continue) is not the answer: the request stays open for the final one, which
    // is timed from the request too.
    if class != 1 {
        maps::record_latency(latency_index(stats, LatencyKind::Response), waited);
        match tail(ctx, pkt) {
            // Headers alone: a streamed response, whose first token comes later.
            Tail::HeadersEnd => flow.request_ns |= RESPONSE_HEADERS_ONLY,
            Tail::LastChunk => {
                maps::record_latency(latency_index(stats, LatencyKind::FirstToken), waited);
                maps::record_latency(latency_index(stats, LatencyKind::Whole), waited);
                flow.request_ns = 0;
            }
            Tail::ChunkEnd => {
                maps::record_latency(latency_index(stats, LatencyKind::FirstToken), waited);
                flow.request_ns |= RESPONSE_STREAMING;
            }
            Tail::Other => {
                maps::record_latency(latency_index(stats, LatencyKind::FirstToken), waited);
                flow.request_ns |= RESPONSE_BODY;
            }
        }
    }
    maps::with_stats(stats, |s| {
        s.responses += u64::from(class != 1);
        if class != 1 {
            s.last_response_ns = now;
        }
        // Constant indices: LLVM knows the class is at most 5 and drops a bounds check the
        // verifier would need.
        let [unparsed, c1, c2, c3, c4, c5] = &mut s.http_status;
        let count = match class {
            1 => c1,
            2 => c2,
            3 => c3,
            4 => c4,
            5 => c5,
            _ => unparsed,
        };
        *count += 1;
    });
}

/// How a response's packet ends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tail {
    /// `\r\n\r\n`: the end of the headers (nothing of the body in the packet).
    HeadersEnd,
    /// `0\r\n\r\n` after a line's end, or alone: a chunked body's last chunk.
    LastChunk,
    /// `\r\n` otherwise: the end of a chunk (or of a line), with more to come.
    ChunkEnd,
    Other,
}

/// How the payload of `pkt` ends, from its last 7 bytes (or 5, for a last chunk sent alone).
/// A response with a `Content-Length` body ends unseen: its whole time is not measured. A
/// body packet that ends a line (`\r\n`) most likely ends a chunk of a stream: a drain waits
/// for the rest (`RESPONSE_STREAMING`).
#[inline(always)]
fn tail(ctx: &TcContext, pkt: &Packet) -> Tail {
    let len = pkt.payload_len as u32;
    let payload = payload_of(ctx, pkt);
    let mut last = [0u8; 7];
    let loaded = if len >= 7 {
        payload.load(len - 7, &mut last)
    } else if len == 5 {
        // Right-aligned, after two bytes that stand for a line's end.
        let mut five = [0u8; 5];
        let ok = payload.load(0, &mut five);
        last = [b'\r', b'\n', five[0], five[1], five[2], five[3], five[4]];
        ok
    } else {
        false
    };
    if !loaded || &last[5..] != b"\r\n" {
        return Tail::Other;
    }
    if &last[3..5] != b"\r\n" {
        return Tail::ChunkEnd;
    }
    if last[2] == b'0' && last[1] == b'\n' {
        Tail::LastChunk
    } else {
        Tail::HeadersEnd
    }
}

/// The packet's payload, for loads of it.
#[inline(always)]
fn payload_of(ctx: &TcContext, pkt: &Packet) -> SkbPayload {
    SkbPayload {
        ctx: ctx.skb.skb,
        start: pkt.payload_offset as u32,
    }
}

/// The HTTP status class (1 to 5) of a response that starts with an HTTP/1.x status line, or 0.
#[inline(always)]
pub fn status_class(ctx: &TcContext, pkt: &Packet) -> usize {
    if pkt.payload_len < STATUS_LINE_LEN {
        return 0;
    }
    let mut line = [0u8; STATUS_LINE_LEN];
    if !payload_of(ctx, pkt).load(0, &mut line) {
        return 0;
    }
    let digit = |b: u8| b.is_ascii_digit();
    if &line[..7] != b"HTTP/1."
        || !digit(line[7])
        || line[8] != b' '
        || !digit(line[10])
        || !digit(line[11])
    {
        return 0;
    }
    match line[9] {
        b'1'..=b'5' => usize::from(line[9] - b'0'),
        _ => 0,
    }
}
