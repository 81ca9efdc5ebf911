//! What a connection's payload says, for the protocol it carries (`splitter_common::l7`): the
//! client's first bytes classify the connection (once); an HTTP/1.x request is stamped for the
//! response time; an HTTP/2 connection's frame headers are read on both sides for its calls.
//! Opaque connections (TLS, anything else) are only classified and counted.
//!
//! The classifier (`splitter_l7_client`) is a global BPF function: the verifier checks it
//! once, on its own, from the types of its arguments (pointers may be null, and are checked),
//! instead of walking it again for every state of the code that calls it. The frames are read
//! in programs of their own, which the steering programs tail-call once they decided the
//! packet's action: the client's in `split_h2` (from the XDP ingress), the server's in
//! `split_h2_reply` (from the TC programs). The frame loop, and the trailers' header block,
//! need more stack than the steering code leaves.

use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_UNSPEC, xdp_action, xdp_md},
    cty::c_void,
    helpers::{
        bpf_ktime_get_ns,
        generated::{bpf_skb_load_bytes, bpf_xdp_load_bytes},
    },
    programs::{TcContext, XdpContext},
};
use splitter_common::{
    Flow, FlowKey, LatencyKind, OPAQUE_BACKEND_LAST, OPAQUE_CLIENT_LAST, RESPONSE_PHASE,
    l7::{
        self, CallError, Direction, FLOW_L7_H2, FLOW_L7_HTTP1, FLOW_L7_MASK, FLOW_L7_READ, H2Conn,
        H2Event, Payload, Protocol, Sink, Untracked,
    },
    latency_index,
    maps::L7_PROGRAM_H2,
    stats_index,
};

use crate::maps::{
    self, H2_CONNS, H2_FRESH, H2_PENDING, H2_TC_PENDING, L7_PROGRAMS, TC_L7_PROGRAMS,
};

pub use splitter_common::l7::{Read, Segment, read_kind};

/// Value of `H2_PENDING` and `H2_TC_PENDING`: a payload a steering program left for the
/// program that reads its frames.
#[repr(C)]
pub struct H2Pending {
    pub key: FlowKey,
    pub segment: Segment,
    pub stats: u32,
    /// The steering program's action (an XDP action, or a TC one as its bits).
    pub action: u32,
    /// Non-zero while the payload waits for its reader: set just before the tail call.
    pub armed: u32,
}

struct XdpPayload {
    ctx: *mut xdp_md,
    start: u32,
}

impl Payload for XdpPayload {
    #[inline(always)]
    fn load<const N: usize>(&self, offset: u32, buf: &mut [u8; N]) -> bool {
        // SAFETY: the context is this program's; the buffer is N bytes of this stack.
        unsafe {
            bpf_xdp_load_bytes(
                self.ctx.cast(),
                self.start + offset,
                buf.as_mut_ptr().cast::<c_void>(),
                N as u32,
            ) == 0
        }
    }
}

/// A TC program's packet, from byte `start` (its payload's offset).
pub struct SkbPayload {
    pub ctx: *mut __sk_buff,
    pub start: u32,
}

impl Payload for SkbPayload {
    #[inline(always)]
    fn load<const N: usize>(&self, offset: u32, buf: &mut [u8; N]) -> bool {
        // SAFETY: the context is this program's; the buffer is N bytes of this stack.
        unsafe {
            bpf_skb_load_bytes(
                self.ctx.cast(),
                self.start + offset,
                buf.as_mut_ptr().cast::<c_void>(),
                N as u32,
            ) == 0
        }
    }
}

/// The first client payload of a flow (or one of an HTTP/2 connection): classifies the
/// connection, and stamps an HTTP/1.x request. Returns non-zero when the payload is an HTTP/2
/// connection's, for `defer_h2`.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn splitter_l7_client(
    ctx: *mut xdp_md,
    key: *const FlowKey,
    flow: *mut Flow,
    segment: *const Segment,
) -> i32 {
    if key.is_null() || flow.is_null() || segment.is_null() {
        return 0;
    }
    // SAFETY: non-null pointers to the caller's key, FLOWS entry and segment, valid for this
    // program run (the verifier checks each call against the argument types).
    let (key, flow, segment) = unsafe { (&*key, &mut *flow, &*segment) };
    let mut state = flow.state;
    if state & FLOW_L7_READ == 0 {
        let payload = XdpPayload {
            ctx,
            start: segment.offset,
        };
        let mut first = [0u8; 8];
        let len = if payload.load(0, &mut first) {
            segment.len as usize
        } else {
            0
        };
        let seen = l7::classify(&first, len);
        let settled = l7::settle_l7(state & FLOW_L7_MASK, seen);
        state = (state & !FLOW_L7_MASK) | settled | FLOW_L7_READ;
        flow.state = state;
        maps::with_stats(stats_index(flow.service_id, flow.version), |s| {
            let [http1, h2, tls, other] = &mut s.protocols;
            *match seen {
                Protocol::Http1 => http1,
                Protocol::H2 => h2,
                Protocol::Tls => tls,
                Protocol::Other => other,
            } += 1;
        });
        if settled == FLOW_L7_H2
            && let Some(fresh) = H2_FRESH.get_ptr_mut(0)
        {
            // SAFETY: this CPU's scratch entry; a new connection's state is built there (it
            // does not fit the stack beside the steering code's) and copied into the map.
            let fresh = unsafe { &mut *fresh };
            *fresh = H2Conn::new(segment.seq, segment.ack);
            let _ = H2_CONNS.insert(key, fresh, 0);
        }
    }
    match state & FLOW_L7_MASK {
        FLOW_L7_HTTP1 => {
            stamp_request(flow);
            0
        }
        FLOW_L7_H2 => 1,
        _ => {
            client_spoke(flow);
            0
        }
    }
}

/// An opaque connection's client payload: the client spoke last, for a drain (a request may
/// be waiting). Written only when it changes.
#[inline(always)]
pub fn client_spoke(flow: &mut Flow) {
    if flow.request_ns != OPAQUE_CLIENT_LAST {
        flow.request_ns = OPAQUE_CLIENT_LAST;
    }
}

/// An opaque connection's backend payload: the backend spoke last.
#[inline(always)]
pub fn backend_spoke(flow: &mut Flow) {
    if flow.request_ns != OPAQUE_BACKEND_LAST {
        flow.request_ns = OPAQUE_BACKEND_LAST;
    }
}

/// An HTTP/1.x client payload: the first after the last response began starts a request (a
/// payload while none began is the same request's).
#[inline(always)]
pub fn stamp_request(flow: &mut Flow) {
    if flow.request_ns == 0 || flow.request_ns & RESPONSE_PHASE != 0 {
        flow.request_ns = now() & !RESPONSE_PHASE;
    }
}

/// Leaves an HTTP/2 client payload for `split_h2` (the frame loop needs more stack than the
/// steering code leaves): the connection, its segment and its version's counters.
#[inline(always)]
pub fn defer_h2(key: &FlowKey, segment: &Segment, stats: u32) -> bool {
    leave(H2_PENDING.get_ptr_mut(0), key, segment, stats)
}

/// Leaves an HTTP/2 server payload for `split_h2_reply`, as `defer_h2` a client's.
#[inline(always)]
pub fn defer_h2_reply(key: &FlowKey, segment: &Segment, stats: u32) -> bool {
    leave(H2_TC_PENDING.get_ptr_mut(0), key, segment, stats)
}

#[inline(always)]
fn leave(pending: Option<*mut H2Pending>, key: &FlowKey, segment: &Segment, stats: u32) -> bool {
    let Some(pending) = pending else {
        return false;
    };
    // SAFETY: this CPU's entry; the program that reads it runs next on this CPU.
    let pending = unsafe { &mut *pending };
    pending.key = *key;
    pending.segment = *segment;
    pending.stats = stats;
    true
}

/// After the steering decided `action`: `split_h2` reads the deferred payload's frames and
/// returns `action` (a tail call, so it has a stack of its own). Without it (not loaded yet),
/// the frames go unread and the connection's framing is lost when its next packet comes.
#[inline(always)]
pub fn read_deferred(ctx: &XdpContext, action: u32) -> u32 {
    if let Some(pending) = H2_PENDING.get_ptr_mut(0) {
        // SAFETY: this CPU's entry.
        let pending = unsafe { &mut *pending };
        pending.action = action;
        pending.armed = 1;
        // SAFETY: a tail call with this program's context; it returns only when it failed.
        unsafe { L7_PROGRAMS.tail_call(ctx, L7_PROGRAM_H2) };
        pending.armed = 0;
    }
    action
}

/// `read_deferred` for a TC program's deferred server payload (`split_h2_reply`).
#[inline(always)]
pub fn read_deferred_reply(ctx: &TcContext, action: i32) -> i32 {
    if let Some(pending) = H2_TC_PENDING.get_ptr_mut(0) {
        // SAFETY: this CPU's entry.
        let pending = unsafe { &mut *pending };
        pending.action = action as u32;
        pending.armed = 1;
        // SAFETY: a tail call with this program's context; it returns only when it failed.
        unsafe { TC_L7_PROGRAMS.tail_call(ctx, L7_PROGRAM_H2) };
        pending.armed = 0;
    }
    action
}

/// `split_h2`: the deferred client payload's frames, then the steering's action. A packet
/// that comes without a deferred payload (a program of another build left it) goes to the
/// stack.
#[inline(always)]
pub fn read_h2_client(ctx: &XdpContext) -> u32 {
    let Some(pending) = H2_PENDING.get_ptr_mut(0) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: this CPU's entry, written by the ingress just before its tail call.
    let pending = unsafe { &mut *pending };
    let Some(action) = take(pending) else {
        return xdp_action::XDP_PASS;
    };
    let payload = XdpPayload {
        ctx: ctx.ctx,
        start: pending.segment.offset,
    };
    read_frames(pending, Direction::Client, &payload);
    action
}

/// `split_h2_reply`: the deferred server payload's frames, then the TC program's action. A
/// packet that comes without one goes on (TCX_NEXT).
#[inline(always)]
pub fn read_h2_server(ctx: &TcContext) -> i32 {
    let Some(pending) = H2_TC_PENDING.get_ptr_mut(0) else {
        return TC_ACT_UNSPEC;
    };
    // SAFETY: this CPU's entry, written by a TC program just before its tail call.
    let pending = unsafe { &mut *pending };
    let Some(action) = take(pending) else {
        return TC_ACT_UNSPEC;
    };
    let payload = SkbPayload {
        ctx: ctx.skb.skb,
        start: pending.segment.offset,
    };
    read_frames(pending, Direction::Server, &payload);
    action as i32
}

/// The action of an armed pending payload, disarmed.
#[inline(always)]
fn take(pending: &mut H2Pending) -> Option<u32> {
    if pending.armed == 0 {
        return None;
    }
    pending.armed = 0;
    Some(pending.action)
}

/// Reads one side's frames of a connection's deferred packet, and counts what they tell.
#[inline(always)]
fn read_frames(pending: &H2Pending, dir: Direction, payload: &impl Payload) {
    // The key where it is (a map value), not a copy on the stack.
    #[allow(clippy::needless_borrows_for_generic_args)]
    let Some(conn) = H2_CONNS.get_ptr_mut(&pending.key) else {
        return;
    };
    // SAFETY: the entry is valid for this program run.
    let conn = unsafe { &mut *conn };
    let now = now();
    l7::read_packet(
        conn,
        dir,
        pending.segment.seq,
        pending.segment.len,
        now,
        payload,
        &mut Recorder {
            stats: pending.stats,
            now,
        },
    );
}

/// A packet's events, counted on its version (`stats`) at `now`.
struct Recorder {
    stats: u32,
    now: u64,
}

impl Sink for Recorder {
    #[inline(always)]
    fn event(&mut self, event: H2Event) {
        record(self.stats, self.now, event);
    }
}

#[inline(always)]
fn record(stats: u32, now: u64, event: H2Event) {
    match event {
        H2Event::Call => maps::with_stats(stats, |s| s.calls += 1),
        H2Event::Answered(waited) => {
            maps::record_latency(latency_index(stats, LatencyKind::Response), waited);
            maps::with_stats(stats, |s| {
                s.responses += 1;
                s.last_response_ns = now;
            });
        }
        H2Event::FirstData(waited) => {
            maps::record_latency(latency_index(stats, LatencyKind::FirstToken), waited);
        }
        H2Event::Ended(waited) => {
            maps::record_latency(latency_index(stats, LatencyKind::Whole), waited);
        }
        H2Event::Failed(kind) => maps::with_stats(stats, |s| {
            let [
                trailers_only,
                reset_unanswered,
                reset_answered,
                goaway,
                status,
            ] = &mut s.call_errors;
            *match kind {
                CallError::TrailersOnly => trailers_only,
                CallError::ResetUnanswered => reset_unanswered,
                CallError::ResetAnswered => reset_answered,
                CallError::GoAway => goaway,
                CallError::Status => status,
            } += 1;
        }),
        H2Event::Status(code) => maps::with_stats(stats, |s| {
            // A code is below GRPC_CODES; STATUS_UNREAD goes to the last entry.
            let i = usize::from(code).min(l7::GRPC_CODES);
            if let Some(count) = s.grpc_status.get_mut(i) {
                *count += 1;
            }
        }),
        H2Event::Cancelled => maps::with_stats(stats, |s| s.calls_cancelled += 1),
        H2Event::Untracked(kind) => maps::with_stats(stats, |s| {
            let [call, connection] = &mut s.untracked;
            *match kind {
                Untracked::Call => call,
                Untracked::Connection => connection,
            } += 1;
        }),
    }
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: a helper with no arguments.
    unsafe { bpf_ktime_get_ns() }
}
