//! The fast path: once the ingress has chosen a packet's backend and rewritten its destination,
//! the kernel's FIB says where it goes next (the device, and the neighbour's Ethernet address),
//! the Ethernet header is rewritten and the TTL (hop limit) decremented as a router would, and
//! the packet is redirected to that device (`XDP_REDIRECT` through `FORWARD_DEVICES`), past the
//! node's IP receive and forwarding path and its netfilter hooks. This is Cilium's host routing
//! at XDP.
//!
//! Anything the fast path cannot take goes on to the stack as before (`XDP_PASS`), counted by
//! why: the FIB says the stack must handle it (a local backend, no route, forwarding off), no
//! neighbour entry yet (the stack resolves it), a packet over the next hop's MTU, a device the
//! redirect cannot reach, a TTL about to expire.
//!
//! The FIB's answer for an IPv4 backend is kept per CPU (`NEXT_HOPS`, two ways per set by the
//! backend's address; the replies' fast path keeps its clients' alike in `REPLY_HOPS`) for
//! `NEXT_HOP_TTL_JIFFIES`, so an established packet costs no FIB lookup:
//! a neighbour's new address reaches it within that time. A packet longer than any the FIB has
//! accepted for that next hop asks again, so the FIB checks every new length against the MTU.
//! The express lane copies a kept next hop into the flow's cache way and sends from there
//! (`send`, `decrement_ttl_v4`). IPv6 asks the FIB for every packet.
//!
//! Inlined into the entry point after the steering code: as a subprogram its frame would add to
//! the entry's, past the 512 bytes of stack BPF allows.

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        bpf_fib_lookup as FibLookup, xdp_action,
    },
    cty::c_void,
    helpers::generated::{bpf_fib_lookup, bpf_jiffies64},
    maps::PerCpuArray,
    programs::XdpContext,
};
use network_types::eth::{EthHdr, EtherType};
use splitter_common::{
    NEXT_HOP_ROUTED, NEXT_HOP_TTL_JIFFIES, NextHop, PlaneCounter, csum, maps::FORWARD_SEEN_ENTRIES,
};

use crate::{
    maps::{self, FORWARD_DEVICES, FORWARD_SEEN, NEXT_HOPS, REPLY_HOPS},
    packet::{self, IPV4_CHECK_OFFSET, IPV4_DST_OFFSET, IPV4_SRC_OFFSET, IPV4_TTL_OFFSET},
};

pub const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IPV4_HEADER_LEN: usize = 20;
const IPV6_HEADER_LEN: usize = 40;
/// Offset of the hop limit in the IPv6 header.
const IPV6_HOP_LIMIT_OFFSET: usize = 7;

/// Where a steered packet goes next: redirected to its backend's device, or on to the stack.
#[inline(always)]
pub fn to_backend(ctx: &XdpContext) -> u32 {
    match forward(ctx) {
        Ok(action) => {
            maps::count(PlaneCounter::Forwarded);
            action
        }
        Err(why) => {
            maps::count(why);
            xdp_action::XDP_PASS
        }
    }
}

/// The next hop as the FIB gave it: the device and the Ethernet destination and source.
pub struct Hop {
    pub ifindex: u32,
    pub macs: [u8; 12],
}

#[inline(always)]
fn forward(ctx: &XdpContext) -> Result<u32, PlaneCounter> {
    let (start, end) = (ctx.data(), ctx.data_end());
    // An untagged frame only: the redirect writes a plain Ethernet header.
    if start + EthHdr::LEN + IPV6_HEADER_LEN.min(IPV4_HEADER_LEN) > end {
        return Err(PlaneCounter::ForwardRouted);
    }
    // SAFETY: bounds-checked above.
    let ether_type = unsafe { (*(start as *const EthHdr)).ether_type };
    let ip = (start + EthHdr::LEN) as *mut u8;
    let hop = if ether_type == EtherType::Ipv4 as u16 {
        // SAFETY: the IPv4 header's 20 bytes are inside the frame (checked above).
        let ttl = unsafe { *ip.add(IPV4_TTL_OFFSET) };
        if ttl <= 1 {
            return Err(PlaneCounter::ForwardRouted);
        }
        let hop = next_hop_v4(ctx, ip)?;
        // SAFETY: as above; the FIB lookup leaves the packet as it was.
        unsafe { decrement_ttl_v4(ip) };
        hop
    } else if ether_type == EtherType::Ipv6 as u16 {
        if start + EthHdr::LEN + IPV6_HEADER_LEN > end {
            return Err(PlaneCounter::ForwardRouted);
        }
        // SAFETY: the IPv6 header's 40 bytes are inside the frame (checked above).
        let hops = unsafe { *ip.add(IPV6_HOP_LIMIT_OFFSET) };
        if hops <= 1 {
            return Err(PlaneCounter::ForwardRouted);
        }
        let hop = next_hop_v6(ctx, ip)?;
        // SAFETY: as above.
        unsafe { *ip.add(IPV6_HOP_LIMIT_OFFSET) = hops - 1 };
        hop
    } else {
        return Err(PlaneCounter::ForwardRouted);
    };
    Ok(send(start, hop.ifindex, &hop.macs))
}

/// The TTL one down, as a router forwards, and the IPv4 header checksum with it.
///
/// # Safety
/// `ip` must point to an IPv4 header inside the frame, bounds-checked, with a TTL above 1.
#[inline(always)]
pub unsafe fn decrement_ttl_v4(ip: *mut u8) {
    // SAFETY: the caller's.
    unsafe {
        let word = packet::load_u16(ip.add(IPV4_TTL_OFFSET));
        // The word holds the TTL, then the protocol: one less TTL, same protocol.
        let [t, p] = word.to_ne_bytes();
        let new = u16::from_ne_bytes([t - 1, p]);
        packet::store_u16(ip.add(IPV4_TTL_OFFSET), new);
        let check = packet::load_u16(ip.add(IPV4_CHECK_OFFSET));
        packet::store_u16(ip.add(IPV4_CHECK_OFFSET), csum::replace16(check, word, new));
    }
}

/// The frame at `start` (an untagged Ethernet header, bounds-checked) readdressed to the next
/// hop and redirected to its device.
#[inline(always)]
pub fn send(start: usize, ifindex: u32, macs: &[u8; 12]) -> u32 {
    // SAFETY: the caller checked the Ethernet header.
    unsafe { write_macs(start as *mut u8, macs) };
    // The device was checked against `FORWARD_DEVICES` when the FIB was asked. The daemon clears
    // the kept next hops whenever it changes that list; a device that went away by itself
    // (the kernel removes it from the list) fails the redirect, and the packet, its Ethernet
    // header already rewritten, is dropped by the stack until the kept hop expires.
    FORWARD_DEVICES
        .redirect(ifindex, u64::from(xdp_action::XDP_PASS))
        .unwrap_or(xdp_action::XDP_PASS)
}

/// The Ethernet header at `eth` readdressed: `macs` is the destination, then the source.
///
/// # Safety
/// `eth` must point at an Ethernet header inside the packet, bounds-checked, 2-aligned.
#[inline(always)]
pub unsafe fn write_macs(eth: *mut u8, macs: &[u8; 12]) {
    for i in 0..6 {
        let word = u16::from_ne_bytes([macs[2 * i], macs[2 * i + 1]]);
        // SAFETY: the caller's.
        unsafe { packet::store_u16(eth.add(2 * i), word) };
    }
}

/// Now, in the jiffies `NextHop::asked_ns` holds. Jiffies, not a clock read: a plain load,
/// where even the coarse clock cost 12-15 ns a packet (docs/benchmarks.md).
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: a helper with no arguments.
    unsafe { bpf_jiffies64() }
}

/// Whether a kept next hop is still to be used at `now`.
#[inline(always)]
pub fn fresh(entry: &NextHop, now: u64) -> bool {
    entry.asked_ns != 0 && now.wrapping_sub(entry.asked_ns) < NEXT_HOP_TTL_JIFFIES
}

/// Why a kept next hop of `NEXT_HOP_ROUTED` leaves packets to the stack.
#[inline(always)]
pub fn routed_why(entry: &NextHop) -> PlaneCounter {
    if entry.routed_why == PlaneCounter::ForwardNoDevice as u16 {
        PlaneCounter::ForwardNoDevice
    } else {
        PlaneCounter::ForwardRouted
    }
}

/// The two `NEXT_HOPS` ways of the IPv4 backend `dst` on this CPU.
#[inline(always)]
pub fn ways_v4(dst: u32) -> Option<(&'static mut NextHop, &'static mut NextHop)> {
    let (way0, way1) = ways_in(&NEXT_HOPS, dst)?;
    // SAFETY: this CPU's slots; nothing else writes them while the program runs.
    Some(unsafe { (&mut *way0, &mut *way1) })
}

/// The two `REPLY_HOPS` ways of the IPv4 client `dst` on this CPU.
#[inline(always)]
pub fn reply_ways_v4(dst: u32) -> Option<(&'static mut NextHop, &'static mut NextHop)> {
    let (way0, way1) = ways_in(&REPLY_HOPS, dst)?;
    // SAFETY: as in `ways_v4`.
    Some(unsafe { (&mut *way0, &mut *way1) })
}

#[inline(always)]
fn ways_in(hops: &PerCpuArray<NextHop>, dst: u32) -> Option<(*mut NextHop, *mut NextHop)> {
    // Two ways per set: addresses that hash alike do not take turns asking the FIB.
    let first = NextHop::first_way(dst);
    Some((hops.get_ptr_mut(first)?, hops.get_ptr_mut(first | 1)?))
}

/// The next hop this CPU keeps for the IPv4 backend `dst`, if it is fresh at `now`.
#[inline(always)]
pub fn kept_v4(dst: u32, now: u64) -> Option<&'static NextHop> {
    let (way0, way1) = ways_v4(dst)?;
    kept_in(way0, way1, dst, now)
}

/// The way of a `NEXT_HOPS` set that keeps a fresh next hop of `dst`, if one does.
#[inline(always)]
fn kept_in<'a>(way0: &'a NextHop, way1: &'a NextHop, dst: u32, now: u64) -> Option<&'a NextHop> {
    if way0.addr == dst && fresh(way0, now) {
        Some(way0)
    } else if way1.addr == dst && fresh(way1, now) {
        Some(way1)
    } else {
        None
    }
}

/// The next hop of an IPv4 packet: from `NEXT_HOPS` while fresh and the packet no longer than
/// the FIB has accepted, else from the FIB (and then kept, the stack's answers too).
#[inline(always)]
fn next_hop_v4(ctx: &XdpContext, ip: *mut u8) -> Result<Hop, PlaneCounter> {
    // SAFETY: the IPv4 header is inside the frame (the caller checked it).
    let (dst, len) = unsafe {
        (
            packet::load_u32(ip.add(IPV4_DST_OFFSET)),
            u16::from_be(packet::load_u16(ip.add(packet::IPV4_LEN_OFFSET))),
        )
    };
    let now = now();
    let Some((way0, way1)) = ways_v4(dst) else {
        return Err(PlaneCounter::ForwardRouted);
    };
    if let Some(kept) = kept_for_v4(way0, way1, dst, len, now) {
        return kept;
    }
    let mut params = fib_params(ctx, AF_INET);
    // SAFETY: the IPv4 header is inside the frame (the caller checked it).
    unsafe {
        params.l4_protocol = *ip.add(9);
        params.__bindgen_anon_1.tot_len = len;
        params.__bindgen_anon_3.ipv4_src = packet::load_u32(ip.add(IPV4_SRC_OFFSET));
        params.__bindgen_anon_4.ipv4_dst = dst;
    }
    let answer = ask_fib(ctx, &mut params);
    keep_v4(way0, way1, dst, len, now, &answer);
    answer
}

/// What a next-hop set of IPv4 address `dst` keeps for it (a backend's in `NEXT_HOPS`,
/// `ways_v4`, for the ingress; a client's in `REPLY_HOPS`, `reply_ways_v4`, for the replies'
/// fast path) that a packet whose IP total length is `len` may use at `now`: a fresh next hop
/// that has accepted packets that long, or a fresh "take the stack"; `None` when the FIB is to
/// be asked (then `keep_v4` its answer).
#[inline(always)]
pub fn kept_for_v4(
    way0: &NextHop,
    way1: &NextHop,
    dst: u32,
    len: u16,
    now: u64,
) -> Option<Result<Hop, PlaneCounter>> {
    let entry = kept_in(way0, way1, dst, now)?;
    if entry.ifindex == NEXT_HOP_ROUTED {
        return Some(Err(routed_why(entry)));
    }
    (len <= entry.max_len).then_some(Ok(Hop {
        ifindex: entry.ifindex,
        macs: entry.macs,
    }))
}

/// Keeps the FIB's `answer` for `dst`, asked at `now` for a packet of `len`, in the way that
/// holds this address, else one that holds nothing fresh, else the one asked longer ago. Only
/// a lasting answer is kept: a missing neighbour or an oversized packet is the stack's to
/// handle this time, and may not be the next.
#[inline(always)]
pub fn keep_v4(
    way0: &'static mut NextHop,
    way1: &'static mut NextHop,
    dst: u32,
    len: u16,
    now: u64,
    answer: &Result<Hop, PlaneCounter>,
) {
    let entry = if way0.addr == dst {
        way0
    } else if way1.addr == dst || !fresh(way1, now) {
        way1
    } else if !fresh(way0, now) || way0.asked_ns.wrapping_sub(way1.asked_ns) as i64 <= 0 {
        way0
    } else {
        way1
    };
    match answer {
        Ok(hop) => {
            let same = entry.addr == dst && entry.ifindex == hop.ifindex && entry.macs == hop.macs;
            entry.max_len = if same { entry.max_len.max(len) } else { len };
            entry.addr = dst;
            entry.ifindex = hop.ifindex;
            entry.macs = hop.macs;
            entry.asked_ns = now;
        }
        Err(why @ (PlaneCounter::ForwardRouted | PlaneCounter::ForwardNoDevice)) => {
            entry.addr = dst;
            entry.ifindex = NEXT_HOP_ROUTED;
            entry.routed_why = *why as u16;
            entry.asked_ns = now;
        }
        Err(_) => {}
    }
}

#[inline(always)]
fn next_hop_v6(ctx: &XdpContext, ip: *mut u8) -> Result<Hop, PlaneCounter> {
    let mut params = fib_params(ctx, AF_INET6);
    // SAFETY: the IPv6 header is inside the frame (the caller checked it).
    unsafe {
        params.l4_protocol = *ip.add(6);
        params.__bindgen_anon_1.tot_len =
            u16::from_be(packet::load_u16(ip.add(4))).saturating_add(IPV6_HEADER_LEN as u16);
        params.__bindgen_anon_3.ipv6_src = [8, 12, 16, 20].map(|at| packet::load_u32(ip.add(at)));
        params.__bindgen_anon_4.ipv6_dst = [24, 28, 32, 36].map(|at| packet::load_u32(ip.add(at)));
    }
    ask_fib(ctx, &mut params)
}

#[inline(always)]
fn fib_params(ctx: &XdpContext, family: u8) -> FibLookup {
    // SAFETY: a plain C struct for which all zeroes is valid.
    let mut params: FibLookup = unsafe { core::mem::zeroed() };
    params.family = family;
    // SAFETY: reading the context's ingress device.
    params.ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    params
}

/// Whether the fast path may take a packet the FIB answered `rc` for, with next hop device
/// `ifindex`: the FIB found a route and a neighbour, within the MTU, to a device the redirect
/// may reach; else the fallback's counter. The replies' fast path reads the FIB alike.
#[inline(always)]
pub fn fib_verdict(rc: i64, ifindex: u32) -> Result<(), PlaneCounter> {
    match rc {
        r if r == i64::from(BPF_FIB_LKUP_RET_SUCCESS) => {}
        r if r == i64::from(BPF_FIB_LKUP_RET_NO_NEIGH) => {
            return Err(PlaneCounter::ForwardNoNeighbour);
        }
        r if r == i64::from(BPF_FIB_LKUP_RET_FRAG_NEEDED) => {
            return Err(PlaneCounter::ForwardTooBig);
        }
        _ => return Err(PlaneCounter::ForwardRouted),
    }
    if FORWARD_DEVICES.get(ifindex).is_none() {
        return Err(PlaneCounter::ForwardNoDevice);
    }
    Ok(())
}

/// The FIB's answer for `params`, and whether the redirect may reach its device.
#[inline(always)]
fn ask_fib(ctx: &XdpContext, params: &mut FibLookup) -> Result<Hop, PlaneCounter> {
    // SAFETY: the context is this program's; `params` lives across the call.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.ctx.cast::<c_void>(),
            params as *mut FibLookup,
            core::mem::size_of::<FibLookup>() as i32,
            0,
        )
    };
    fib_verdict(rc, params.ifindex)?;
    // Where the replies will come from: user space attaches the reply fast path there.
    if let Some(seen) = FORWARD_SEEN.get_ptr_mut(params.ifindex % FORWARD_SEEN_ENTRIES) {
        // SAFETY: an array slot; a racing writer stores another device, both valid.
        unsafe { *seen = params.ifindex };
    }
    Ok(Hop {
        ifindex: params.ifindex,
        macs: fib_macs(params),
    })
}

/// The destination and source MAC addresses the FIB gave, as an Ethernet header starts.
#[inline(always)]
pub fn fib_macs(params: &FibLookup) -> [u8; 12] {
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&params.dmac);
    macs[6..].copy_from_slice(&params.smac);
    macs
}
