//! The programs' part of a drain (see `splitter_common::drain`): for the flows in `DRAINS`
//! only, ingress records the client's sequence numbers and drops a request that races the
//! close, and egress records the backend's, the head of each response and the tail of its last
//! segment, and both the TCP timestamps that tell how long the connection was quiet. Every
//! other flow pays one array read (`DRAIN_ACTIVE`) on the flow-table path, and a `DRAINS` lookup
//! there while a drain runs; nothing at all on the cached paths.

use aya_ebpf::{
    EbpfContext as _,
    cty::c_void,
    helpers::{bpf_ktime_get_ns, generated::bpf_skb_load_bytes},
    programs::TcContext,
};
use splitter_common::{
    FlowKey, PROTO_TCP,
    drain::{
        CLOSE_FIN, CLOSE_RESET, DRAIN_BACKEND, DRAIN_BACKEND_TS, DRAIN_CLIENT, DRAIN_CLIENT_TS,
        DRAIN_CLOSED, DRAIN_HEAD, DRAIN_HEAD_LEN, DRAIN_REQUEST, DRAIN_TAIL_LEN,
    },
};

use crate::{
    maps::{DRAIN_ACTIVE, DRAIN_CLOSING, DRAINS},
    packet::{Bounds, Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, load_u32},
};

/// What ingress does with a client packet.
pub enum Client {
    /// The flow is not being drained: business as usual.
    NotDraining,
    /// Recorded; steer it, but never from the flow cache.
    Draining,
    /// A request on a flow being closed: dropped (and counted) so that it is never processed.
    Drop,
}

/// `*target += value`, atomically.
#[inline(always)]
fn atomic_add(target: *mut u64, value: u64) {
    // SAFETY: `target` points into a map value that lives for this program run, 8-aligned;
    // BPF's atomic add (no fetch) exists on every kernel this runs on.
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({p} + 0) += {v}",
            p = in(reg) target,
            v = in(reg) value,
            options(nostack, preserves_flags)
        );
    }
}

#[inline(always)]
fn active() -> bool {
    matches!(DRAIN_ACTIVE.get(0), Some(n) if *n != 0)
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: a helper with no arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// The TCP sequence and acknowledgement numbers, in host order.
#[inline(always)]
fn seq_ack(pkt: &Packet, bounds: &Bounds) -> Option<(u32, u32)> {
    let tcp: *const u8 = bounds.ptr_at::<[u8; 12]>(pkt.l4_offset).ok()?.cast();
    // SAFETY: bounds-checked above; both words are 4-aligned like the port pair.
    unsafe {
        Some((
            u32::from_be(load_u32(tcp.add(4))),
            u32::from_be(load_u32(tcp.add(8))),
        ))
    }
}

/// The TCP timestamps option (RFC 7323), TSval and TSecr in host order, where Linux, the BSDs
/// and Windows put it on every segment after the handshake: first, after two NOPs. Another
/// layout reads as none (the drain then waits for quiet of its own).
#[inline(always)]
fn timestamps(pkt: &Packet, bounds: &Bounds) -> Option<(u32, u32)> {
    /// NOP, NOP, kind 8, length 10, as the bytes are on the wire.
    const NOP_NOP_TS: u32 = u32::from_ne_bytes([1, 1, 8, 10]);
    if pkt.payload_offset < pkt.l4_offset + 32 {
        return None;
    }
    let tcp: *const u8 = bounds.ptr_at::<[u8; 32]>(pkt.l4_offset).ok()?.cast();
    // SAFETY: bounds-checked above; the option's words are 4-aligned like the port pair.
    unsafe {
        if load_u32(tcp.add(20)) != NOP_NOP_TS {
            return None;
        }
        Some((
            u32::from_be(load_u32(tcp.add(24))),
            u32::from_be(load_u32(tcp.add(28))),
        ))
    }
}

/// Where a segment's sequence space ends: after its payload and its FIN.
#[inline(always)]
fn segment_end(pkt: &Packet, seq: u32) -> u32 {
    seq.wrapping_add(pkt.payload_len as u32)
        .wrapping_add(u32::from(pkt.tcp_flags & TCP_FIN != 0))
}

/// Records a client packet of a flow being drained; drops its payload when the flow is being
/// closed. The client's numbers are stored before the closing mark is read, and user space
/// marks before it reads the numbers again: one of the two always sees the other.
#[inline(always)]
pub fn observe_client(key: &FlowKey, pkt: &Packet, bounds: &Bounds) -> Client {
    if pkt.protocol != PROTO_TCP || !active() {
        return Client::NotDraining;
    }
    let Some(drain) = DRAINS.get_ptr_mut(key) else {
        return Client::NotDraining;
    };
    if pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        // A new connection on the 5-tuple of one a drain closed (a client reusing its port at
        // once): the record and the mark are the old connection's. Gone, so that the new one
        // is neither recorded nor dropped; user space reads the record's absence as closed.
        let _ = DRAINS.remove(key);
        let _ = DRAIN_CLOSING.remove(key);
        return Client::NotDraining;
    }
    // SAFETY: the pointer is valid for this program run; only scalar fields are touched.
    let drain = unsafe { &mut *drain };
    let Some((seq, ack)) = seq_ack(pkt, bounds) else {
        return Client::Draining;
    };
    let next = segment_end(pkt, seq);
    let sent_before = drain.client_sent;
    drain.client_sent = next;
    if pkt.tcp_flags & TCP_ACK != 0 {
        drain.client_ack = ack;
    }
    drain.client_ns = now();
    let mut seen = drain.seen | DRAIN_CLIENT;
    if seen & DRAIN_CLIENT_TS == 0
        && let Some((_, tsecr)) = timestamps(pkt, bounds)
    {
        drain.client_tsecr = tsecr;
        seen |= DRAIN_CLIENT_TS;
    }
    if pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        seen |= DRAIN_CLOSED;
    }
    drain.seen = seen;
    // An atomic add (BPF_ATOMIC, a locked add on x86): a full barrier between the stores above
    // and the read below.
    atomic_add(&raw mut drain.client_packets, 1);
    let payload = pkt.payload_len > 0;
    // SAFETY: hash map values are only tested for presence.
    if payload && unsafe { DRAIN_CLOSING.get(key) }.is_some() {
        // One per request: the client's retransmissions of a dropped segment bring nothing new
        // (a backend RST held back after the close no longer cuts them short).
        if (next.wrapping_sub(sent_before) as i32) > 0 {
            drain.raced += 1;
        }
        return Client::Drop;
    }
    drain.client_next = next;
    if payload {
        drain.seen |= DRAIN_REQUEST;
    }
    Client::Draining
}

/// What egress does with a backend packet.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The flow is not being drained: business as usual.
    NotDraining,
    /// Recorded; translate it, but never cache its reply (so that every reply of it is seen).
    Draining,
    /// Held back: payload on a flow being reset, a RST on a flow closed with a FIN.
    Drop,
}

/// Records a backend packet of a flow being drained: its timestamp and, for a segment, its end,
/// the tail of its payload and, when it starts a (final) response, the response's head.
#[inline(always)]
pub fn observe_backend(ctx: &TcContext, key: &FlowKey, pkt: &Packet, bounds: &Bounds) -> Backend {
    if pkt.protocol != PROTO_TCP || !active() {
        return Backend::NotDraining;
    }
    let Some(drain) = DRAINS.get_ptr_mut(key) else {
        return Backend::NotDraining;
    };
    // SAFETY: the pointer is valid for this program run; only plain fields are touched.
    let drain = unsafe { &mut *drain };
    // The backend's RST on a flow closed with a FIN: the answer of its reset socket to the
    // client's last packets (the ACK of the FIN). It would reach the client before the client
    // read what came with the FIN (a GOAWAY) and throw that away, failing calls the GOAWAY
    // would have let it retry. Held back while the flow stays marked.
    if pkt.tcp_flags & TCP_RST != 0
        // SAFETY: hash map values are read once, as a copy.
        && matches!(unsafe { DRAIN_CLOSING.get(key) }, Some(&CLOSE_FIN))
    {
        return Backend::Drop;
    }
    if pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        drain.seen |= DRAIN_CLOSED;
    }
    if let Some((tsval, _)) = timestamps(pkt, bounds) {
        drain.backend_tsval = tsval;
        drain.seen |= DRAIN_BACKEND_TS;
    }
    let payload_len = pkt.payload_len;
    if payload_len > 0 {
        // SAFETY: hash map values are read once, as a copy.
        if matches!(unsafe { DRAIN_CLOSING.get(key) }, Some(&CLOSE_RESET)) {
            return Backend::Drop;
        }
    }
    let Some((seq, _)) = seq_ack(pkt, bounds) else {
        return Backend::Draining;
    };
    if payload_len == 0 {
        if pkt.tcp_flags & TCP_FIN != 0 {
            drain.backend_next = segment_end(pkt, seq);
        }
        return Backend::Draining;
    }
    drain.backend_next = segment_end(pkt, seq);
    drain.backend_ns = now();
    let mut seen = drain.seen | DRAIN_BACKEND;
    // The last bytes up to the segment's end: a chunked body ends with its last chunk. Eight
    // bytes ending there (a shorter segment brings header bytes before it along).
    let end = (pkt.payload_offset + payload_len) as u32;
    if end >= DRAIN_TAIL_LEN as u32 {
        // SAFETY: the context is this program's; the tail is DRAIN_TAIL_LEN bytes of a map value.
        let loaded = unsafe {
            bpf_skb_load_bytes(
                ctx.as_ptr(),
                end - DRAIN_TAIL_LEN as u32,
                drain.tail.as_mut_ptr().cast::<c_void>(),
                DRAIN_TAIL_LEN as u32,
            )
        };
        if loaded == 0 {
            drain.tail_len = payload_len.min(DRAIN_TAIL_LEN) as u8;
        }
    }
    if starts_final_response(ctx, pkt) {
        let len = payload_len.min(DRAIN_HEAD_LEN) as u32;
        // SAFETY: as above; `len` is at least a status line and at most the head's size.
        let loaded = unsafe {
            bpf_skb_load_bytes(
                ctx.as_ptr(),
                pkt.payload_offset as u32,
                drain.head.as_mut_ptr().cast::<c_void>(),
                len,
            )
        };
        if loaded == 0 {
            drain.head_seq = seq;
            drain.head_len = len as u16;
            seen = (seen | DRAIN_HEAD) & !DRAIN_REQUEST;
        }
    }
    drain.seen = seen;
    Backend::Draining
}

/// Whether the segment begins with an HTTP/1.x status line other than 1xx (interim responses
/// do not answer the request): the status line telemetry reads.
#[inline(always)]
fn starts_final_response(ctx: &TcContext, pkt: &Packet) -> bool {
    crate::telemetry::status_class(ctx, pkt) >= 2
}
