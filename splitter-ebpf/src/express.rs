//! The express lane: most packets of an established connection are pure ACKs, and this is
//! their path. An untagged IPv4 TCP packet without options, payload, SYN, FIN or RST, whose
//! flow this CPU's flow cache holds with a fresh next hop, is steered, counted, rewritten and
//! forwarded from that one cache way: three inlined array reads (the way, the version's
//! counters, the fast path's counter) and the redirect's device lookup, where the general path
//! parses every header kind, builds a 40-byte key and reads `NEXT_HOPS` twice too.
//!
//! A way's next hop is a copy of `NEXT_HOPS`' entry, with the time the FIB gave that answer: it
//! is used no longer than the answer it copies (`NEXT_HOP_TTL_JIFFIES`), the bound within which
//! a neighbour's new address reaches established flows anyway. Until then, a newer answer that
//! the general path put in `NEXT_HOPS` (after a longer packet asked the FIB again, or an
//! eviction) reaches the way only for a packet longer than the copy has accepted.
//!
//! Anything else takes the general path (`ingress::steer`, then `forward::to_backend`) from
//! the start, before the express lane has written anything: a cache miss, a way without a
//! fresh next hop that `NEXT_HOPS` cannot give it, a packet longer than its next hop has
//! accepted, a TTL about to expire. The general path decides alike for every packet the
//! express lane takes, so the lane changes what a packet costs, never where it goes or how it
//! is counted; `tests/tests/caches.rs` holds the two to that.
//!
//! The egress has a lane of its own (`reply`): a backend's pure ACK whose reply this CPU's
//! reply cache holds is counted and translated from that way, past the general path's pull,
//! parse and 40-byte key.

use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_SHOT, TC_ACT_UNSPEC, xdp_action, xdp_md},
    programs::TcContext,
};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::Ipv4Hdr,
    tcp::TcpHdr,
};
use splitter_common::{FlowCacheKey, NEXT_HOP_ROUTED, PROTO_TCP, PlaneCounter};

use crate::{
    Skip, egress,
    flow_cache::{self, Target},
    forward, ingress, maps,
    packet::{
        self, IPV4_DST_OFFSET, IPV4_LEN_OFFSET, IPV4_NO_OPTIONS, IPV4_SRC_OFFSET, IPV4_TTL_OFFSET,
        TCP_CHECK_OFFSET, TCP_DATA_OFFSET, TCP_FIN, TCP_RST, TCP_SYN,
    },
};

/// The headers the express lane reads: Ethernet, IPv4 without options, TCP.
const HEADERS: usize = EthHdr::LEN + Ipv4Hdr::LEN + TcpHdr::LEN;
/// The more-fragments flag and the fragment offset, in the flags word as loaded (memory order).
const FRAGMENT_BITS: u16 = u16::from_ne_bytes([0x3f, 0xff]);
const IPV4_FRAGS_OFFSET: usize = 6;

/// `steer`'s answer when the packet is the general path's.
pub const GENERAL: u32 = u32::MAX;
/// `steer`'s answer when the packet is the general path's and its flow is not in this CPU's
/// flow cache: the general path need not look again.
pub const UNCACHED: u32 = u32::MAX - 1;

/// The express lane's action for the packet, or `GENERAL` or `UNCACHED` for the general path
/// (the packet then is as it came). A subprogram: the verifier then walks the general path
/// once after it, whichever way the lane turned the packet down (split_ingress in 418k
/// instructions; an inlined trial build, 525k), and inlining gained nothing measurable.
///
/// The context's packet bounds are read with volatile loads: plain ones, LLVM would move into
/// the caller and pass as 32-bit integers, which the verifier refuses to use as pointers.
#[inline(never)]
pub fn steer(ctx: *mut xdp_md) -> u32 {
    // SAFETY: the program's context, valid for the run.
    let (start, end) =
        unsafe { packet::bounds(&raw const (*ctx).data, &raw const (*ctx).data_end) };
    express(start, end).unwrap_or(GENERAL)
}

/// An untagged IPv4 TCP packet without options, payload, SYN, FIN or RST, its headers inside
/// the linear bytes from `start` to `end`: the express lanes' packets.
struct PureAck {
    ip: *mut u8,
    tcp: *mut u8,
    /// The IPv4 total length.
    len: u16,
    ttl: u8,
    key: FlowCacheKey,
}

#[inline(always)]
fn pure_ack(start: usize, end: usize) -> Option<PureAck> {
    if start + HEADERS > end {
        return None;
    }
    let ip = (start + EthHdr::LEN) as *mut u8;
    // SAFETY: bounds-checked above.
    let tcp = unsafe { ip.add(Ipv4Hdr::LEN) };
    // SAFETY: every read lies inside the headers bounds-checked above.
    let (ether_type, first, frags, ttl_protocol, len, data_offset, flags) = unsafe {
        (
            (*(start as *const EthHdr)).ether_type,
            *ip,
            packet::load_u16(ip.add(IPV4_FRAGS_OFFSET)),
            packet::load_u16(ip.add(IPV4_TTL_OFFSET)),
            u16::from_be(packet::load_u16(ip.add(IPV4_LEN_OFFSET))),
            *tcp.add(TCP_DATA_OFFSET) >> 4,
            *tcp.add(TCP_DATA_OFFSET + 1),
        )
    };
    let [ttl, protocol] = ttl_protocol.to_ne_bytes();
    if ether_type != EtherType::Ipv4 as u16
        || first != IPV4_NO_OPTIONS
        || frags & FRAGMENT_BITS != 0
        || protocol != PROTO_TCP
        || flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0
        || data_offset < 5
        // A payload (the general path reads what a request or a response says).
        || usize::from(len) > Ipv4Hdr::LEN + usize::from(data_offset) * 4
    {
        return None;
    }
    // SAFETY: inside the headers checked above.
    let key = unsafe {
        FlowCacheKey {
            src: packet::load_u32(ip.add(IPV4_SRC_OFFSET)),
            dst: packet::load_u32(ip.add(IPV4_DST_OFFSET)),
            ports: packet::load_u32(tcp),
            protocol,
        }
    };
    Some(PureAck {
        ip,
        tcp,
        len,
        ttl,
        key,
    })
}

#[inline(always)]
fn express(start: usize, end: usize) -> Option<u32> {
    let PureAck {
        ip,
        tcp,
        len,
        ttl,
        key,
    } = pure_ack(start, end)?;
    // A TTL about to expire: the general path leaves it to the stack.
    if ttl <= 1 {
        return None;
    }
    let Some(way) = flow_cache::find(key.set(), &key) else {
        return Some(UNCACHED);
    };
    // The way's next hop, or, when it has expired or is shorter than this packet (a newer
    // answer may have accepted longer ones), this CPU's kept next hop of the backend if that is
    // fresh (the general path asks the FIB otherwise). Nothing is written before the decision.
    let now = forward::now();
    let stale = !forward::fresh(&way.hop, now)
        || (way.hop.ifindex != NEXT_HOP_ROUTED && len > way.hop.max_len);
    let kept = if stale {
        Some(forward::kept_v4(way.hop.addr, now)?)
    } else {
        None
    };
    let hop = kept.unwrap_or(&way.hop);
    let routed = hop.ifindex == NEXT_HOP_ROUTED;
    if !routed && len > hop.max_len {
        return None;
    }
    maps::count_traffic(way.stats_index, true, (end - start) as u64);
    // SAFETY: inside the headers checked above.
    unsafe {
        let l4_check = tcp.add(TCP_CHECK_OFFSET);
        ingress::rewrite_destination(ip, tcp, l4_check, PROTO_TCP, &Target::of(way));
    }
    let action = if routed {
        maps::count(forward::routed_why(hop));
        xdp_action::XDP_PASS
    } else {
        // SAFETY: the IPv4 header checked above, its TTL above 1.
        unsafe { forward::decrement_ttl_v4(ip) };
        let action = forward::send(start, hop.ifindex, &hop.macs);
        maps::count(PlaneCounter::Forwarded);
        action
    };
    // The refreshed next hop is the way's from now on.
    if let Some(kept) = kept {
        way.hop = *kept;
    }
    Some(action)
}

/// `reply`'s answer when the packet is `split_egress`'s general path's.
pub const REPLY_GENERAL: i32 = i32::MIN;

/// The reply lane of `split_egress`: a backend's pure ACK (as `pure_ack` says, its headers in
/// the linear area) whose reply this CPU's reply cache holds is counted and translated from
/// that way, by the same rewrite as the general path's (`egress::rewrite_v4`), and goes on
/// (`TCX_NEXT`); anything else is `REPLY_GENERAL`, untouched. A subprogram, for the reasons
/// `steer` is one; the packet's bounds are read with volatile loads for the same reason.
#[inline(never)]
pub fn reply(skb: *mut __sk_buff) -> i32 {
    // SAFETY: the program's context, valid for the run.
    let (start, end) = unsafe { packet::skb_bounds(skb) };
    let Some(ack) = pure_ack(start, end) else {
        return REPLY_GENERAL;
    };
    let Some(way) = flow_cache::find_reply(ack.key.set(), &ack.key) else {
        return REPLY_GENERAL;
    };
    let ctx = TcContext::new(skb);
    let headers = egress::V4Headers {
        protocol: PROTO_TCP,
        ip: ack.ip,
        // SAFETY: inside the headers `pure_ack` checked.
        l4_check: unsafe { packet::load_u16(ack.tcp.add(TCP_CHECK_OFFSET)) },
        l4_check_offset: EthHdr::LEN + Ipv4Hdr::LEN + TCP_CHECK_OFFSET,
    };
    egress::count_out(&ctx, way);
    match egress::rewrite_v4(&ctx, &headers, way, None) {
        Ok(()) => TC_ACT_UNSPEC,
        Err(Skip::Pass(counter)) => {
            maps::count(counter);
            TC_ACT_UNSPEC
        }
        Err(Skip::Drop(counter)) => {
            maps::count(counter);
            TC_ACT_SHOT
        }
    }
}
