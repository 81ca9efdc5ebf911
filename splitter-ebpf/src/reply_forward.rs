//! The fast path of replies: at the TC ingress of the devices the fast path sends steered
//! packets to (the backends' side), a steered connection's reply is translated there, its next
//! hop taken from `REPLY_HOPS` by the client's address (the FIB asked and its answer kept when
//! that holds none for this length, as the ingress does for backends in `NEXT_HOPS`; a GSO
//! packet asks the FIB every time, with no length, as the stack forwards GSO packets), its
//! Ethernet header rewritten and its TTL decremented, and it is redirected to the client's
//! device (`bpf_redirect`, to its egress), past the node's IP forwarding path; when that device
//! is a veth whose other end is in another namespace (`PEER_DEVICES`, one array read at the
//! redirect), it is handed to that end's ingress instead (`bpf_redirect_peer`), past the veth's
//! transmit and the backlog queue of a second receive, as Cilium's host routing does for pods.
//! A reply the FIB
//! cannot send on (no neighbour yet, no route, a device the fast path may not use) goes on to
//! the stack untouched and is translated on its way out by `split_egress`, as without the fast
//! path: translating it here would give the stack a packet from one of the node's own
//! addresses, which it drops as a martian.
//!
//! IPv4 only; IPv6 replies take the stack.

use aya_ebpf::{
    bindings::bpf_fib_lookup as FibLookup,
    cty::c_void,
    helpers::generated::{bpf_fib_lookup, bpf_redirect, bpf_redirect_peer},
    programs::TcContext,
};
use splitter_common::{PlaneCounter, maps::PEER_DEVICE_SLOTS};

use crate::{
    Skip, egress,
    forward::{self, AF_INET},
    maps::{self, PEER_DEVICES},
    packet::{self, IPV4_LEN_OFFSET},
};

/// Whether device `ifindex`'s other end is in another namespace (`PEER_DEVICES`).
#[inline(always)]
fn is_peer(ifindex: u32) -> bool {
    PEER_DEVICES
        .get(ifindex % PEER_DEVICE_SLOTS)
        .is_some_and(|listed| *listed == ifindex)
}

/// `TC_ACT_REDIRECT`.
const TC_ACT_REDIRECT: i32 = 7;

/// A steered reply redirected to its client's device (and whether an HTTP/2 payload of it
/// waits for `split_h2_reply`), or why it goes on to the stack (where `split_egress` reads
/// such a payload).
#[inline(always)]
pub fn to_client(ctx: &TcContext) -> Result<(i32, bool), Skip> {
    let (pkt, bounds) = egress::parse_reply(ctx)?;
    if pkt.v6 {
        return Err(Skip::Pass(PlaneCounter::ForwardRouted));
    }
    let (ttl, dst, headers, eth) = (
        pkt.ttl(),
        pkt.dst(),
        egress::V4Headers::of(&pkt),
        bounds.start,
    );
    // SAFETY: `parse_reply` checked the IPv4 header.
    let len = u16::from_be(unsafe { packet::load_u16(pkt.ip.add(IPV4_LEN_OFFSET)) });
    let (reply, h2) = egress::steered_v4(ctx, &pkt, &bounds)?;
    if ttl <= 1 {
        return Err(Skip::Pass(PlaneCounter::ForwardRouted));
    }
    // The FIB as for the translated packet: from the service, to the client.
    let ask = |tot_len: u16| -> Result<forward::Hop, PlaneCounter> {
        // SAFETY: a plain C struct for which all zeroes is valid.
        let mut params: FibLookup = unsafe { core::mem::zeroed() };
        params.family = AF_INET;
        params.l4_protocol = headers.protocol;
        // SAFETY: reading this program's context.
        params.ifindex = unsafe { (*ctx.skb.skb).ingress_ifindex };
        params.__bindgen_anon_1.tot_len = tot_len;
        params.__bindgen_anon_3.ipv4_src = reply.addr;
        params.__bindgen_anon_4.ipv4_dst = dst;
        // SAFETY: the context is this program's; `params` lives across the call.
        let rc = unsafe {
            bpf_fib_lookup(
                ctx.skb.skb.cast::<c_void>(),
                &raw mut params,
                core::mem::size_of::<FibLookup>() as i32,
                0,
            )
        };
        forward::fib_verdict(rc, params.ifindex)?;
        Ok(forward::Hop {
            ifindex: params.ifindex,
            macs: forward::fib_macs(&params),
        })
    };
    // SAFETY: reading this program's context.
    let gso = unsafe { (*ctx.skb.skb).gso_size } != 0;
    let hop = if gso {
        // tot_len 0: the FIB checks the skb's length against the device's MTU itself and lets a
        // GSO packet through, as the stack's forwarding does (`is_skb_forwardable`).
        ask(0)
    } else {
        let now = forward::now();
        match forward::reply_ways_v4(dst) {
            None => Err(PlaneCounter::ForwardRouted),
            Some((way0, way1)) => match forward::kept_for_v4(way0, way1, dst, len, now) {
                Some(kept) => kept,
                None => {
                    let answer = ask(len);
                    forward::keep_v4(way0, way1, dst, len, now, &answer);
                    answer
                }
            },
        }
    }
    .map_err(Skip::Pass)?;
    egress::count_out(ctx, &reply);
    // The Ethernet header first: the rewrite's checksum helper invalidates packet pointers.
    // SAFETY: `parse_reply` checked the Ethernet header at the packet's start.
    unsafe { forward::write_macs(eth as *mut u8, &hop.macs) };
    egress::rewrite_v4(ctx, &headers, &reply, Some(ttl))?;
    maps::count(PlaneCounter::ReplyForwarded);
    // SAFETY: helpers on scalars. The peer redirect is taken at this program's hook, a TC
    // ingress, the only one where the kernel allows it.
    unsafe {
        if is_peer(hop.ifindex) {
            bpf_redirect_peer(hop.ifindex, 0);
        } else {
            bpf_redirect(hop.ifindex, 0);
        }
    }
    Ok((TC_ACT_REDIRECT, h2))
}
