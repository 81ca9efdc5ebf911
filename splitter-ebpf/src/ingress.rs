//! XDP ingress: steer packets to a service's backends. This is the general path, for every
//! packet the express lane (`express.rs`) does not take.
//!
//! Established flows follow their flow entry whatever the split word says now; a new flow (SYN
//! without ACK, or the first UDP datagram of a 5-tuple) is split by the service's split word and
//! sent to a backend from the chosen pool's slot table. The destination is rewritten with
//! incremental checksum updates and the packet goes on to the stack (`XDP_PASS`), which routes
//! it to the backend.

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::XdpContext};
use splitter_common::{
    COHORT_CANDIDATE, COHORT_LIVE, Endpoint, FLOW_FIN_BACKEND, FLOW_FIN_CLIENT, FLOW_OPEN,
    FLOW_RST, FLOW_SYN, Flow, FlowKey, LAST_RESORT, PROTO_TCP, PlaneCounter, RESPONSE_PHASE,
    SERVICE_HAS_COHORTS, SLOT_SET, Service, Slot, SplitWord, addr_words, csum, flow_add_state,
    flow_hash,
    l7::{FLOW_L7_HTTP1, configured_l7},
    slot_index, stats_index,
};

use crate::{
    Skip,
    drain::{self, Client},
    flow_cache::{self, Target},
    l7,
    maps::{self, FLOWS, HANDSHAKES, POOL_SLOTS, SERVICE_PORTS, SERVICES, SPLIT},
    packet::{
        self, Bounds, IPV4_CHECK_OFFSET, IPV4_DST_OFFSET, Packet, TCP_ACK, TCP_FIN, TCP_RST,
        TCP_SYN,
    },
    report,
};

/// Steers the packet; true when an HTTP/2 payload of it waits for `split_h2`. `uncached`: the
/// express lane found that this CPU's flow cache does not hold the packet's flow.
#[inline(always)]
pub fn steer(ctx: &XdpContext, uncached: bool) -> Result<bool, Skip> {
    let bounds = Bounds {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    let pkt = packet::parse(&bounds)?;
    if pkt.v6 {
        return steer_v6(ctx, &pkt, &bounds);
    }
    let (src, dst, ports) = (pkt.src(), pkt.dst(), pkt.ports());
    let (_, dst_port) = packet::split_ports(ports);
    let key = FlowKey::from_ipv4(src, dst, ports, pkt.protocol);
    let set = key.cache_set();
    // Established service traffic first: a cached flow is a service flow by construction (the
    // cache only holds flows of services, and is cleared when one is removed). SYN, FIN and
    // RST change a flow's state, and a TCP payload may start a request; both live in FLOWS,
    // so those packets take the slow path. Pure ACKs, the bulk of a connection, do not.
    let request = pkt.protocol == PROTO_TCP && pkt.payload_len > 0;
    let cached = if pkt.tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) == 0 && !request && !uncached {
        flow_cache::find(set, &key.cache_key()).map(|way| Target::of(way))
    } else {
        None
    };
    let (target, h2) = match cached {
        Some(target) => (target, false),
        None => {
            if !has_service_on(u16::from_be(dst_port)) {
                return Err(Skip::Pass(PlaneCounter::NotService));
            }
            let (target, followed) = follow_or_create(
                ctx,
                &key,
                set,
                Endpoint::from_ipv4(dst, dst_port, pkt.protocol),
                &pkt,
                |flow| target_of(flow, dst, dst_port),
            )?;
            match drain::observe_client(&key, &pkt, &bounds) {
                Client::Drop => return Err(Skip::Drop(PlaneCounter::DrainRaced)),
                // A flow being drained stays out of the cache: its every packet is seen.
                Client::Draining => {}
                // A flow the guard left without an entry does not take a cache way either:
                // the ways stay with established flows.
                Client::NotDraining if followed.pinned => {
                    flow_cache::fill(set, &key, &target);
                }
                Client::NotDraining => {}
            }
            (target, followed.h2)
        }
    };
    maps::count_traffic(target.stats, true, bounds.len());
    // SAFETY: `parse` bounds-checked the IPv4 header, the port pair and the L4 checksum.
    unsafe { rewrite_destination(pkt.ip, pkt.l4, pkt.l4_check, pkt.protocol, &target) };
    Ok(h2)
}

/// The slow path: the flow's entry in `FLOWS` (closing it on FIN or RST), or a new flow;
/// `pick` reads what the caller needs of it. Also says whether the flow has an entry (false
/// for a new flow the rate guard steered without one).
#[inline(always)]
fn follow_or_create<T>(
    ctx: &XdpContext,
    key: &FlowKey,
    set: u32,
    service: Endpoint,
    pkt: &Packet,
    pick: impl Fn(&Flow) -> T,
) -> Result<(T, Followed), Skip> {
    let tcp_flags = pkt.tcp_flags;
    let request = pkt.protocol == PROTO_TCP && pkt.payload_len > 0;
    let closing = closing_bits(tcp_flags);
    match FLOWS.get_ptr_mut(key) {
        // SAFETY: the pointer is valid for this program run; only scalar fields are touched.
        Some(flow) if !reopens(tcp_flags, unsafe { (*flow).state }) => {
            let flow = unsafe { &mut *flow };
            if closing != FLOW_OPEN && flow_add_state(flow, closing, now()) {
                maps::with_stats(stats_index(flow.service_id, flow.version), |s| {
                    s.closed_flows += 1
                });
            }
            // What a payload says, for the protocol the connection carries; an HTTP/2
            // connection's frames are read after the steering (`split_h2`).
            let mut h2 = false;
            if request {
                // Classified once, by the first payload: an HTTP/1.x request is stamped here,
                // an HTTP/2 payload left for `split_h2`, an opaque one costs nothing more.
                let stats = stats_index(flow.service_id, flow.version);
                match l7::read_kind(flow) {
                    l7::Read::Http1 => l7::stamp_request(flow),
                    l7::Read::H2 => h2 = l7::defer_h2(key, &pkt.segment(), stats),
                    l7::Read::Opaque => l7::client_spoke(flow),
                    l7::Read::Unread => {
                        let segment = pkt.segment();
                        if l7::splitter_l7_client(ctx.ctx, key, flow, &segment) != 0 {
                            h2 = l7::defer_h2(key, &segment, stats);
                        }
                    }
                }
            }
            Ok((pick(flow), Followed { pinned: true, h2 }))
        }
        _ => {
            let seen = u32::from(tcp_flags) | u32::from(closing) << 8 | u32::from(request) << 16;
            let (flow, pinned) = new_flow(key, service, seen)?;
            // The cache holds IPv4 flows only: an IPv6 flow has nothing there to clear.
            if !pkt.v6 {
                flow_cache::forget_everywhere(set);
            }
            Ok((pick(&flow), Followed { pinned, h2: false }))
        }
    }
}

/// What following a packet's flow found besides its target.
struct Followed {
    /// The flow has an entry (false for a new flow the rate guard steered without one).
    pinned: bool,
    /// An HTTP/2 payload waits for `split_h2`.
    h2: bool,
}

/// What the rewrite needs of a flow, read field by field instead of copying the whole entry.
#[inline(always)]
fn target_of(flow: &Flow, old_addr: u32, old_port: u16) -> Target {
    let a = &flow.backend_addr;
    let addr = u32::from_ne_bytes([a[12], a[13], a[14], a[15]]);
    Target {
        addr,
        port: flow.backend_port_be,
        stats: stats_index(flow.service_id, flow.version),
        ip_delta: csum::address_delta(old_addr, addr),
        l4_delta: csum::address_port_delta(old_addr, addr, old_port, flow.backend_port_be),
    }
}

/// IPv6: the flow-table path for every packet (the flow cache holds IPv4 flows only), then the
/// destination rewrite. There is no IP checksum; the L4 checksum covers the 128-bit addresses.
#[inline(always)]
fn steer_v6(ctx: &XdpContext, pkt: &Packet, bounds: &Bounds) -> Result<bool, Skip> {
    let (src, dst, ports) = (pkt.src6(), pkt.dst6(), pkt.ports());
    let (_, dst_port) = packet::split_ports(ports);
    if !has_service_on(u16::from_be(dst_port)) {
        return Err(Skip::Pass(PlaneCounter::NotService));
    }
    let key = FlowKey::from_ipv6(src, dst, ports, pkt.protocol);
    let ((addr, port, stats), followed) = follow_or_create(
        ctx,
        &key,
        key.cache_set(),
        Endpoint::from_ipv6(dst, dst_port, pkt.protocol),
        pkt,
        |flow| {
            (
                addr_words(&flow.backend_addr),
                flow.backend_port_be,
                stats_index(flow.service_id, flow.version),
            )
        },
    )?;
    if let Client::Drop = drain::observe_client(&key, pkt, bounds) {
        return Err(Skip::Drop(PlaneCounter::DrainRaced));
    }
    maps::count_traffic(stats, true, bounds.len());
    let (_, old_port) = packet::split_ports(ports);
    pkt.set_dst6(addr);
    // SAFETY: `parse` bounds-checked the port pair.
    unsafe { packet::store_u16(pkt.l4.add(2), port) };
    let l4_check = pkt.l4_check();
    // UDP over IPv6 always has a checksum; a zero one is left alone rather than invented.
    if csum::l4_has_checksum(pkt.protocol, l4_check) {
        let check = csum::replace128_16(l4_check, dst, addr, old_port, port);
        // SAFETY: `parse` bounds-checked the checksum field.
        unsafe { packet::store_u16(pkt.l4_check, csum::l4_stored(pkt.protocol, check)) };
    }
    Ok(followed.h2)
}

#[inline(always)]
fn has_service_on(port: u16) -> bool {
    matches!(SERVICE_PORTS.get(port as u32), Some(n) if *n != 0)
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: a helper with no arguments.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
const fn is_syn(tcp_flags: u8) -> bool {
    tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN
}

/// A SYN for a 5-tuple whose previous connection closed starts a new connection (client port
/// reuse); a SYN for an open flow is a retransmission and keeps its backend.
#[inline(always)]
const fn reopens(tcp_flags: u8, state: u8) -> bool {
    is_syn(tcp_flags) && state & (FLOW_FIN_CLIENT | FLOW_FIN_BACKEND | FLOW_RST) != 0
}

#[inline(always)]
const fn closing_bits(tcp_flags: u8) -> u8 {
    let mut bits = FLOW_OPEN;
    if tcp_flags & TCP_RST != 0 {
        bits |= FLOW_RST;
    }
    if tcp_flags & TCP_FIN != 0 {
        bits |= FLOW_FIN_CLIENT;
    }
    bits
}

/// Chooses version and backend for a flow without an entry, and records it. A TCP packet that
/// is not a SYN lands here when its entry was evicted or predates the splitter: the same hash
/// gives the same backend while the split and the pools are unchanged, and it is counted.
/// A new flow (not such a miss) over the rate guard is steered the same way but gets no entry
/// (counted as `Guarded`); the returned flag says whether the flow was recorded.
#[inline(always)]
fn new_flow(key: &FlowKey, service_key: Endpoint, seen: u32) -> Result<(Flow, bool), Skip> {
    let (tcp_flags, state, request) = (seen as u8, (seen >> 8) as u8, seen >> 16 != 0);
    // SAFETY: hash map values are read once, as a copy.
    let service: Service = match unsafe { SERVICES.get(service_key) } {
        Some(service) => *service,
        None => return Err(Skip::Pass(PlaneCounter::NotService)),
    };
    let hash = flow_hash(key);
    let split = SplitWord(SPLIT.get(service.split).copied().unwrap_or(0));
    let mut chosen = split.choose(service.choice_hash(key, hash)) as u8;
    // Cohorts bypass the share: staff networks always get the candidate, protected clients
    // never do.
    if service.flags & SERVICE_HAS_COHORTS != 0 {
        match maps::cohort_of(service.id, &key.src_addr) {
            Some(COHORT_CANDIDATE) => {
                chosen = split.candidate() as u8;
                maps::count(PlaneCounter::CohortCandidate);
            }
            Some(COHORT_LIVE) => {
                chosen = split.live() as u8;
                maps::count(PlaneCounter::CohortLive);
            }
            _ => {}
        }
    }
    let (version, slot) = pick_backend(service.id, chosen, (hash >> 32) as u32)?;
    let stats = stats_index(service.id, version);
    let now = now();
    let flow = Flow {
        backend_addr: slot.addr,
        backend_port_be: slot.port_be,
        version,
        // The protocol the service is set to, until the client's first payload shows what the
        // connection carries.
        state: state | if is_syn(tcp_flags) { FLOW_SYN } else { 0 } | configured_l7(service.flags),
        service_id: service.id,
        created_ns: now,
        state_changed_ns: now,
        // A flow first seen with a payload (an evicted entry's) is timed as HTTP/1.x unless its
        // service is set to another protocol.
        request_ns: if request && configured_l7(service.flags) & !FLOW_L7_HTTP1 == 0 {
            now & !RESPONSE_PHASE
        } else {
            0
        },
    };
    let is_miss = key.protocol == PROTO_TCP && !is_syn(tcp_flags);
    let pinned = is_miss || maps::guard_admits(now);
    if !pinned {
        guarded(key, slot_index(service.id, version, (hash >> 32) as u32));
    } else if FLOWS.insert(key, flow, 0).is_err() {
        maps::count(PlaneCounter::FlowInsertFailed);
        report::rare(PlaneCounter::FlowInsertFailed);
    }
    maps::with_stats(stats, |s| {
        if is_miss {
            s.flow_misses += 1;
        } else {
            s.new_flows += 1;
            s.last_new_flow_ns = now;
        }
    });
    Ok((flow, pinned))
}

/// The backend of a new flow: the chosen version's slot, or, when that version has no backend
/// in the slot (every backend down or removed), the other version's slot at the same index.
/// A failover is counted on the chosen version. With neither, the last-resort pool's slot
/// (its new flow counted on that pool, and in `PlaneCounter::LastResort`); without that too, the
/// flow is dropped and counted as a slot miss.
#[inline(never)]
fn pick_backend(service_id: u32, chosen: u8, hash: u32) -> Result<(u8, Slot), Skip> {
    let slot_of = |pool: u8| match POOL_SLOTS.get(slot_index(service_id, pool, hash)) {
        Some(slot) if slot.flags & SLOT_SET != 0 => Some(*slot),
        _ => None,
    };
    if let Some(slot) = slot_of(chosen) {
        return Ok((chosen, slot));
    }
    let other = chosen ^ 1;
    if let Some(slot) = slot_of(other) {
        maps::with_stats(stats_index(service_id, chosen), |s| s.failovers += 1);
        return Ok((other, slot));
    }
    match slot_of(LAST_RESORT) {
        Some(slot) => {
            maps::count(PlaneCounter::LastResort);
            report::rare(PlaneCounter::LastResort);
            Ok((LAST_RESORT, slot))
        }
        None => {
            maps::with_stats(stats_index(service_id, chosen), |s| s.slot_misses += 1);
            Err(Skip::Drop(PlaneCounter::SlotMiss))
        }
    }
}

/// The IPv4 destination and destination port become the target's, with the checksums.
///
/// # Safety
/// `ip` must point to a bounds-checked IPv4 header, `l4` to the port pair and `l4_check` to the
/// L4 checksum field, both bounds-checked (as `packet::parse` leaves them).
#[inline(always)]
pub unsafe fn rewrite_destination(
    ip: *mut u8,
    l4: *mut u8,
    l4_check: *mut u8,
    protocol: u8,
    target: &Target,
) {
    // SAFETY: the caller bounds-checked the IPv4 header, the port pair and the L4 checksum.
    unsafe {
        let ip_check = csum::apply(packet::load_u16(ip.add(IPV4_CHECK_OFFSET)), target.ip_delta);
        packet::store_u16(ip.add(IPV4_CHECK_OFFSET), ip_check);
        packet::store_u32(ip.add(IPV4_DST_OFFSET), target.addr);
        packet::store_u16(l4.add(2), target.port);
        let check = packet::load_u16(l4_check);
        // A zero UDP checksum means "none" and stays zero; a computed zero is sent as all ones.
        if csum::l4_has_checksum(protocol, check) {
            let check = csum::apply(check, target.l4_delta);
            packet::store_u16(l4_check, csum::l4_stored(protocol, check));
        }
    }
}

/// A new flow the rate guard steers without a `FLOWS` entry: counted, reported, and its
/// handshake remembered, since the client's next packet creates the entry (a miss) but the
/// SYN-ACK before it must still be recognised as steered. A subprogram of its own, so the
/// verifier walks this rare branch once per caller state instead of inlining it into every
/// path of the steering code.
/// The backend is passed as its slot's index and read back from `POOL_SLOTS`: a copy of the
/// caller's would have to live on its stack, which multiplies the states the verifier walks.
#[inline(never)]
fn guarded(key: &FlowKey, slot: u32) {
    maps::count(PlaneCounter::Guarded);
    if let Some(backend) = POOL_SLOTS.get(slot) {
        let _ = HANDSHAKES.insert(key, backend, 0);
    }
    report::rare(PlaneCounter::Guarded);
}
