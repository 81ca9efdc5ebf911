//! The kernel side of Splitter: the XDP ingress program that splits new connections between
//! blue and green and pins established ones, and the TC egress program that turns backend
//! replies back into replies from the service address.
//!
//! The entry points only dispatch and count; all work happens in small `#[inline(always)]`
//! functions that return `Result<_, Skip>`. Nothing here logs per packet.
#![no_std]
#![no_main]
// Word loads and stores of packet fields: see `packet::load_u32`.
#![feature(asm_experimental_arch)]

mod drain;
mod egress;
mod express;
mod flow_cache;
mod forward;
mod ingress;
mod l7;
mod maps;
mod packet;
mod reply_forward;
mod report;
mod telemetry;

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use splitter_common::PlaneCounter;

/// Why a packet leaves the fast path, and what becomes of it.
#[derive(Clone, Copy)]
pub enum Skip {
    /// Pass it on untouched.
    Pass(PlaneCounter),
    /// Drop it: at ingress, a packet the guard or a drain refuses; at TC, a reply on a flow a
    /// drain is resetting, or one whose rewrite could not be finished.
    Drop(PlaneCounter),
}

#[xdp]
pub fn split_ingress(ctx: XdpContext) -> u32 {
    // An established connection's pure ACK whose flow and next hop this CPU caches.
    let lane = express::steer(ctx.ctx);
    if lane != express::GENERAL && lane != express::UNCACHED {
        return lane;
    }
    // A steered packet is counted once, in its version's counters (inside `steer`).
    match ingress::steer(&ctx, lane == express::UNCACHED) {
        // Steered: the fast path sends it to its backend's device, or the stack takes it.
        Ok(false) => forward::to_backend(&ctx),
        // An HTTP/2 payload's frames are read in a program of their own, with its own stack.
        Ok(true) => {
            let action = forward::to_backend(&ctx);
            l7::read_deferred(&ctx, action)
        }
        Err(Skip::Pass(counter)) => {
            maps::count(counter);
            if matches!(counter, PlaneCounter::Malformed) {
                report::rare(counter);
            }
            xdp_action::XDP_PASS
        }
        Err(Skip::Drop(counter)) => {
            maps::count(counter);
            xdp_action::XDP_DROP
        }
    }
}

#[classifier]
pub fn split_egress(ctx: TcContext) -> i32 {
    // A backend's pure ACK whose reply this CPU caches.
    let lane = express::reply(ctx.skb.skb);
    if lane != express::REPLY_GENERAL {
        return lane;
    }
    // A translated reply is counted once, in its version's counters (inside `translate`).
    match egress::translate(&ctx) {
        Ok(false) => TC_ACT_UNSPEC,
        // An HTTP/2 payload's frames are read in a program of their own, with its own stack.
        Ok(true) => l7::read_deferred_reply(&ctx, TC_ACT_UNSPEC),
        Err(Skip::Pass(counter)) => {
            maps::count(counter);
            // TCX_NEXT: later programs in the chain still run.
            TC_ACT_UNSPEC
        }
        // A reply on a flow a drain is resetting, or one whose rewrite could not be finished.
        Err(Skip::Drop(counter)) => {
            maps::count(counter);
            TC_ACT_SHOT
        }
    }
}

/// At the TC ingress of the devices the fast path sends to: a steered connection's reply goes
/// straight to its client's device, translated; anything else goes on to the stack untouched
/// (and a steered reply the fast path cannot take is translated by `split_egress` on its way
/// out). Only the fast path's fallbacks are counted here: other packets are counted where they
/// leave, or are the node's own.
#[classifier]
pub fn split_reply(ctx: TcContext) -> i32 {
    match reply_forward::to_client(&ctx) {
        Ok((action, false)) => action,
        Ok((action, true)) => l7::read_deferred_reply(&ctx, action),
        Err(Skip::Pass(
            counter @ (PlaneCounter::ForwardRouted
            | PlaneCounter::ForwardNoNeighbour
            | PlaneCounter::ForwardTooBig
            | PlaneCounter::ForwardNoDevice),
        )) => {
            maps::count(counter);
            TC_ACT_UNSPEC
        }
        Err(Skip::Pass(_)) => TC_ACT_UNSPEC,
        Err(Skip::Drop(counter)) => {
            maps::count(counter);
            TC_ACT_SHOT
        }
    }
}

/// The ingress's tail call for an HTTP/2 client payload: its frames, then the ingress's action.
#[xdp]
pub fn split_h2(ctx: XdpContext) -> u32 {
    l7::read_h2_client(&ctx)
}

/// The TC programs' tail call for an HTTP/2 server payload: its frames, then the caller's
/// action.
#[classifier]
pub fn split_h2_reply(ctx: TcContext) -> i32 {
    l7::read_h2_server(&ctx)
}

/// The benchmarks' baseline: the cheapest possible XDP program. Never attached.
#[xdp]
pub fn xdp_baseline(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The egress benchmarks' baseline: a classifier that only returns TCX_NEXT. Never attached.
#[classifier]
pub fn tc_baseline(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
