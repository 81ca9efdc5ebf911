//! TC egress: replies of the connections the ingress steered leave with the service's address
//! and port as source, so the client sees the address it connected to. A packet is a steered
//! reply when its flow says so (`FLOWS`, looked up by the connection, and the flow's backend is
//! the packet's source), or for the handshake of a flow the rate guard steered without an entry
//! (`HANDSHAKES`). Anything else from a backend's address (a health check, a scrape, an admin
//! session to the backend's own address) passes byte-identical and is counted as `Unsteered`,
//! never as service traffic.
//!
//! A steered IPv4 flow's reverse translation is cached per CPU by the reply's tuple
//! (`REPLY_CACHE`), so a backend's pure ACK costs one inlined array read (in the reply lane,
//! `express::reply`, before this general path is reached at all). A SYN-ACK never trusts
//! the cache: it starts a connection, which may be a direct one reusing the tuple, and one that
//! no steered flow owns clears the tuple's set on every CPU.
//!
//! The IPv4 header and the source port are written through packet pointers; the L4 checksum
//! goes through the kernel (`bpf_l4_csum_replace`), which knows whether the skb carries a
//! partial checksum (a seed that only the pseudo-header change may touch) or a complete one.
//! A program that writes packet memory directly gets a verifier prologue that makes a cloned
//! skb's linear bytes writable (`bpf_skb_pull_data(skb, 0)`). TCP transmits clones, but the
//! copy it keeps for retransmission claims only the payload (`__skb_header_release`), which
//! TCP keeps outside the linear bytes, so the kernel finds a clone writable as it is
//! (`skb_clone_writable`) and copies nothing: `perf record -a` over the comparison with direct
//! found no `pskb_expand_head` under that prologue (docs/benchmarks.md). A clone whose header
//! is shared (a packet tap on the device, a bridge's flood) or whose payload is linear is
//! copied first, whether the program then writes it or not, where the helpers copied only the
//! packets they wrote.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use network_types::ip::Ipv4Hdr;
use splitter_common::{
    BackendInfo, CachedReply, Endpoint, FLOW_FIN_BACKEND, FLOW_FIN_CLIENT, FLOW_RST, FlowCacheKey,
    FlowKey, PROTO_TCP, PROTO_UDP, PlaneCounter, WayKey, addr_words, csum, stats_index,
};

use crate::{
    Skip, drain, flow_cache,
    maps::{self, BACKENDS, FLOWS, HANDSHAKES},
    packet::{
        self, Bounds, IPV4_CHECK_OFFSET, IPV4_TTL_OFFSET, IPV6_SRC_OFFSET, Packet, TCP_FIN,
        TCP_RST, TCP_SYN,
    },
    telemetry,
};

/// Translates a steered reply; true when an HTTP/2 payload of it waits for `split_h2_reply`.
#[inline(always)]
pub fn translate(ctx: &TcContext) -> Result<bool, Skip> {
    let (pkt, bounds) = parse_reply(ctx)?;
    if pkt.v6 {
        return translate_v6(ctx, &pkt, &bounds);
    }
    let (reply, h2) = steered_v4(ctx, &pkt, &bounds)?;
    count_out(ctx, &reply);
    rewrite_v4(ctx, &V4Headers::of(&pkt), &reply, None)?;
    Ok(h2)
}

/// The reply's headers, pulled into the linear area first when they are not (and no more than
/// they: `packet::headers_len`).
#[inline(always)]
pub fn parse_reply(ctx: &TcContext) -> Result<(Packet, Bounds), Skip> {
    let linear = Bounds {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    // Headers may sit partly outside the linear area; pull them in once (never per byte).
    let wanted = packet::headers_len(&linear).min(ctx.len() as usize);
    if linear.end - linear.start < wanted && ctx.pull_data(wanted as u32).is_err() {
        return Err(Skip::Pass(PlaneCounter::Malformed));
    }
    let bounds = Bounds {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    let pkt = packet::parse(&bounds).map_err(|_| Skip::Pass(PlaneCounter::ReplyPassed))?;
    Ok((pkt, bounds))
}

/// The reverse translation of an IPv4 packet if it is a steered connection's reply (its
/// entry has learnt what the packet tells), and whether an HTTP/2 payload of it waits for
/// `split_h2_reply`; or why it passes untouched.
#[inline(always)]
pub fn steered_v4(
    ctx: &TcContext,
    pkt: &Packet,
    bounds: &Bounds,
) -> Result<(CachedReply, bool), Skip> {
    let (src, dst, ports) = (pkt.src(), pkt.dst(), pkt.ports());
    let reply_key = FlowCacheKey {
        src,
        dst,
        ports,
        protocol: pkt.protocol,
    };
    let set = reply_key.set();
    let (backend_port, client_port) = packet::split_ports(ports);
    // Built only off the pure-ACK path, which needs neither the backend nor the flow.
    let backend = || Endpoint::from_ipv4(src, backend_port, pkt.protocol);
    let syn = pkt.tcp_flags & TCP_SYN != 0;
    let cached = if syn {
        None
    } else {
        flow_cache::find_reply(set, &reply_key).copied()
    };
    if let Some(reply) = cached {
        let mut h2 = false;
        if tells(pkt) {
            // A steered flow's close or payload: its entry learns of it (drain, telemetry).
            let key = FlowKey::from_ipv4(
                dst,
                reply.addr,
                packet::join_ports(client_port, reply.port),
                pkt.protocol,
            );
            if let Steered::Flow { h2: deferred, .. } = follow(ctx, &key, pkt, bounds, &backend())?
            {
                h2 = deferred;
            }
        }
        return Ok((reply, h2));
    }
    let backend = backend();
    let info = backend_info(&backend)?;
    let service = addr_words(&info.service_addr)[3];
    let key = FlowKey::from_ipv4(
        dst,
        service,
        packet::join_ports(client_port, info.service_port_be),
        pkt.protocol,
    );
    let reply = CachedReply {
        key: WayKey::of(&reply_key),
        stats_index: stats_index(info.service_id, info.version),
        addr: service,
        port: info.service_port_be,
        addr_delta: csum::address_delta(src, service),
        port_delta: csum::port_delta(backend_port, info.service_port_be),
        ..CachedReply::default()
    };
    let h2 = match follow(ctx, &key, pkt, bounds, &backend)? {
        Steered::Flow { h2, drained } => {
            if !drained {
                flow_cache::fill_reply(set, &reply);
            }
            h2
        }
        Steered::Handshake => false,
        Steered::No => {
            if syn {
                flow_cache::forget_reply_everywhere(set);
            }
            return Err(Skip::Pass(PlaneCounter::Unsteered));
        }
    };
    Ok((reply, h2))
}

/// Counts a translated reply on its version.
#[inline(always)]
pub fn count_out(ctx: &TcContext, reply: &CachedReply) {
    maps::count_traffic(reply.stats_index, false, u64::from(ctx.len()));
}

/// Whether a reply can change what its flow knows: handshake answers, closes, and payload
/// (which may be a response's first byte).
#[inline(always)]
fn tells(pkt: &Packet) -> bool {
    pkt.protocol == PROTO_TCP
        && (pkt.tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0 || pkt.payload_len > 0)
}

#[inline(always)]
fn backend_info(backend: &Endpoint) -> Result<BackendInfo, Skip> {
    // SAFETY: hash map values are read once, as a copy.
    match unsafe { BACKENDS.get(backend) } {
        Some(info) => Ok(*info),
        None => Err(Skip::Pass(PlaneCounter::ReplyPassed)),
    }
}

/// A flow's state bits once either side closed it.
const FLOW_CLOSING: u8 = FLOW_FIN_CLIENT | FLOW_FIN_BACKEND | FLOW_RST;

/// Whose reply a packet from a backend is.
enum Steered {
    /// A flow the ingress recorded, with this backend; `h2`: an HTTP/2 payload of it waits
    /// for `split_h2_reply`; `drained`: a drain records its packets (its reply is not cached).
    Flow { h2: bool, drained: bool },
    /// The handshake of a flow the rate guard steered without an entry.
    Handshake,
    /// No steered connection: traffic to the backend's own address.
    No,
}

/// Finds the steered connection `key` (as the client sent it) that a packet from `backend`
/// belongs to, and lets its entry learn what the packet tells.
#[inline(always)]
fn follow(
    ctx: &TcContext,
    key: &FlowKey,
    pkt: &Packet,
    bounds: &Bounds,
    backend: &Endpoint,
) -> Result<Steered, Skip> {
    let tells = tells(pkt);
    // Every TCP packet that gets here, pure ACKs too (a backend's answer to a drain's probe is
    // one): a drained flow's replies are never cached, so all of them get here.
    let drained = match drain::observe_backend(ctx, key, pkt, bounds) {
        drain::Backend::Drop => return Err(Skip::Drop(PlaneCounter::DrainHeld)),
        drain::Backend::Draining => true,
        drain::Backend::NotDraining => false,
    };
    let syn = pkt.tcp_flags & TCP_SYN != 0;
    if let Some(flow) = FLOWS.get_ptr_mut(key) {
        // SAFETY: the pointer is valid for this program run; only scalar fields are touched.
        let flow = unsafe { &mut *flow };
        // Only the flow's own backend speaks for it: a packet from another backend is a direct
        // connection's, or a late one of a previous connection on the same 5-tuple.
        if flow.backend_addr == backend.addr && flow.backend_port_be == backend.port_be {
            if !(syn && flow.state & FLOW_CLOSING != 0) {
                let h2 = tells && telemetry::observe_reply(ctx, key, pkt, flow);
                return Ok(Steered::Flow { h2, drained });
            }
            // A handshake on the tuple of a closed steered flow: the client reused its port
            // for a connection straight to the backend. The old connection is over; its entry
            // goes, so the new connection's packets are never taken for it.
            let _ = FLOWS.remove(key);
        }
    }
    if syn {
        // SAFETY: hash map values are read once, as a copy.
        if let Some(guarded) = unsafe { HANDSHAKES.get(key) }
            && guarded.addr == backend.addr
            && guarded.port_be == backend.port_be
        {
            return Ok(Steered::Handshake);
        }
    }
    Ok(Steered::No)
}

/// Flags of the L4 checksum helper: a UDP datagram without checksum keeps none
/// (`BPF_F_MARK_MANGLED_0`).
#[inline(always)]
fn mangled_0(protocol: u8) -> u64 {
    if protocol == PROTO_UDP {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    }
}

/// What the reverse rewrite needs of an IPv4 reply's headers, taken before any helper call
/// (helpers that change the packet invalidate packet pointers).
pub struct V4Headers {
    pub protocol: u8,
    /// The IPv4 header (without options), bounds-checked with the L4 source port after it.
    pub ip: *mut u8,
    pub l4_check: u16,
    pub l4_check_offset: usize,
}

impl V4Headers {
    #[inline(always)]
    pub fn of(pkt: &Packet) -> Self {
        Self {
            protocol: pkt.protocol,
            ip: pkt.ip,
            l4_check: pkt.l4_check(),
            l4_check_offset: pkt.l4_check_offset,
        }
    }
}

/// The source becomes the service: the IPv4 checksum, source address and L4 source port are
/// written through the packet pointer (with `ttl`, the fast path forwarding the reply itself,
/// the TTL goes one down too), then the L4 checksum moves by the cached deltas through the
/// kernel, which knows whether the skb carries a partial checksum (a seed that only the
/// pseudo-header change may touch) or a complete one. The helper comes last: it invalidates
/// the packet pointers. It fails only on an offset outside the packet, which the parse rules
/// out; should it fail, the packet, its addresses already rewritten, is dropped and counted.
#[inline(always)]
pub fn rewrite_v4(
    ctx: &TcContext,
    headers: &V4Headers,
    reply: &CachedReply,
    ttl: Option<u8>,
) -> Result<(), Skip> {
    let ip = headers.ip;
    // SAFETY: `ip` is bounds-checked through the L4 source port (`V4Headers::ip`).
    unsafe {
        let mut check = csum::apply(
            packet::load_u16(ip.add(IPV4_CHECK_OFFSET)),
            reply.addr_delta,
        );
        if let Some(ttl) = ttl {
            let old = u16::from_ne_bytes([ttl, headers.protocol]);
            let new = u16::from_ne_bytes([ttl.saturating_sub(1), headers.protocol]);
            packet::store_u16(ip.add(IPV4_TTL_OFFSET), new);
            check = csum::replace16(check, old, new);
        }
        packet::store_u16(ip.add(IPV4_CHECK_OFFSET), check);
        packet::store_u32(ip.add(packet::IPV4_SRC_OFFSET), reply.addr);
        packet::store_u16(ip.add(Ipv4Hdr::LEN), reply.port);
    }
    // The check only skips the helper calls for a UDP datagram without checksum.
    if csum::l4_has_checksum(headers.protocol, headers.l4_check) {
        let mangled_0 = mangled_0(headers.protocol);
        let at = headers.l4_check_offset;
        let failed = |_| Skip::Drop(PlaneCounter::Malformed);
        ctx.l4_csum_replace(
            at,
            0,
            u64::from(reply.addr_delta),
            u64::from(BPF_F_PSEUDO_HDR) | mangled_0,
        )
        .map_err(failed)?;
        if reply.port_delta != 0 {
            ctx.l4_csum_replace(at, 0, u64::from(reply.port_delta), mangled_0)
                .map_err(failed)?;
        }
    }
    Ok(())
}

/// IPv6: the flow-table path for every reply (the reply cache holds IPv4 flows only).
#[inline(always)]
fn translate_v6(ctx: &TcContext, pkt: &Packet, bounds: &Bounds) -> Result<bool, Skip> {
    let ports = pkt.ports();
    let (backend_port, client_port) = packet::split_ports(ports);
    let src = pkt.src6();
    let backend = Endpoint::from_ipv6(src, backend_port, pkt.protocol);
    let info = backend_info(&backend)?;
    let service = addr_words(&info.service_addr);
    let key = FlowKey::from_ipv6(
        pkt.dst6(),
        service,
        packet::join_ports(client_port, info.service_port_be),
        pkt.protocol,
    );
    let h2 = match follow(ctx, &key, pkt, bounds, &backend)? {
        Steered::Flow { h2, .. } => h2,
        Steered::Handshake => false,
        Steered::No => return Err(Skip::Pass(PlaneCounter::Unsteered)),
    };
    maps::count_traffic(
        stats_index(info.service_id, info.version),
        false,
        u64::from(ctx.len()),
    );
    let malformed = |_| Skip::Pass(PlaneCounter::Malformed);
    let mangled_0 = mangled_0(pkt.protocol);
    let (l4, l4_check_at) = (pkt.l4_offset, pkt.l4_check_offset);
    // Everything needed is read above: helpers invalidate the packet pointers.
    if csum::l4_has_checksum(pkt.protocol, pkt.l4_check()) {
        let pseudo = u64::from(BPF_F_PSEUDO_HDR) | 4 | mangled_0;
        for (from, to) in src.iter().zip(service) {
            ctx.l4_csum_replace(l4_check_at, u64::from(*from), u64::from(to), pseudo)
                .map_err(malformed)?;
        }
        ctx.l4_csum_replace(
            l4_check_at,
            u64::from(backend_port),
            u64::from(info.service_port_be),
            2 | mangled_0,
        )
        .map_err(malformed)?;
    }
    ctx.store(pkt.l3_offset + IPV6_SRC_OFFSET, &service, 0)
        .map_err(malformed)?;
    ctx.store(l4, &info.service_port_be, 0).map_err(malformed)?;
    Ok(h2)
}
