//! TC egress: replies from a backend leave with the service's address and port as source, so
//! the client sees the address it connected to. The reverse entry is keyed by the backend (from
//! `BACKENDS`, written by user space), not by the flow, so flow-table eviction can never break a
//! reply. Checksums are updated with the kernel helpers, which also handle the partial
//! checksums of locally generated packets.
//!
//! Every write goes through a helper (`bpf_skb_store_bytes`, the checksum helpers), never
//! through a packet pointer: a program that writes packet memory directly gets a prologue from
//! the verifier that unclones every cloned skb it sees, and TCP transmits clones. That would copy
//! the head of every packet leaving the interface, the service's replies and all other traffic
//! alike, while a helper makes writable only the header bytes it writes, which a TCP clone
//! already allows.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use splitter_common::{
    BackendInfo, Endpoint, FlowKey, PROTO_TCP, PROTO_UDP, PlaneCounter, addr_words, csum,
    stats_index,
};

use crate::{
    Skip, drain,
    maps::{self, BACKENDS, FLOWS},
    packet::{
        self, Bounds, IPV4_CHECK_OFFSET, IPV6_SRC_OFFSET, MAX_HEADER_LEN, TCP_FIN, TCP_RST, TCP_SYN,
    },
    telemetry,
};

#[inline(always)]
pub fn translate(ctx: &TcContext) -> Result<(), Skip> {
    // Headers may sit partly outside the linear area; pull them in once (never per byte).
    let wanted = MAX_HEADER_LEN.min(ctx.len() as usize);
    if ctx.data_end() - ctx.data() < wanted && ctx.pull_data(wanted as u32).is_err() {
        return Err(Skip::Pass(PlaneCounter::Malformed));
    }
    let bounds = Bounds {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    let pkt = packet::parse(&bounds).map_err(|_| Skip::Pass(PlaneCounter::ReplyPassed))?;
    let (ports, l4_check) = (pkt.ports(), pkt.l4_check());
    let (src_port, dst_port) = packet::split_ports(ports);
    let backend = if pkt.v6 {
        Endpoint::from_ipv6(pkt.src6(), src_port, pkt.protocol)
    } else {
        Endpoint::from_ipv4(pkt.src(), src_port, pkt.protocol)
    };
    // SAFETY: hash map values are read once, as a copy.
    let info: BackendInfo = match unsafe { BACKENDS.get(backend) } {
        Some(info) => *info,
        None => return Err(Skip::Pass(PlaneCounter::ReplyPassed)),
    };
    maps::with_stats(stats_index(info.service_id, info.version), |s| {
        s.packets_out += 1;
        s.bytes_out += u64::from(ctx.len());
    });
    let service_words = addr_words(&info.service_addr);
    // Only packets that can change what a flow knows look it up: handshake answers, closes,
    // and payload (which may be a response's first byte).
    if pkt.protocol == PROTO_TCP
        && (pkt.tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0 || pkt.payload_len > 0)
    {
        let client_ports = packet::join_ports(dst_port, info.service_port_be);
        let key = if pkt.v6 {
            FlowKey::from_ipv6(pkt.dst6(), service_words, client_ports, pkt.protocol)
        } else {
            FlowKey::from_ipv4(pkt.dst(), service_words[3], client_ports, pkt.protocol)
        };
        if drain::observe_backend(ctx, &key, &pkt, &bounds) {
            return Err(Skip::Drop(PlaneCounter::DrainHeld));
        }
        if let Some(flow) = FLOWS.get_ptr_mut(key) {
            // SAFETY: the pointer is valid for this program run; only scalar fields are touched.
            let flow = unsafe { &mut *flow };
            // Only the flow's own backend speaks for it: a late packet of a previous connection
            // on the same 5-tuple, from another backend, must not close or time the new one.
            if flow.backend_addr == backend.addr && flow.backend_port_be == backend.port_be {
                telemetry::observe_reply(ctx, &pkt, flow);
            }
        }
    }
    let mangled_0 = if pkt.protocol == PROTO_UDP {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    };
    let pseudo = u64::from(BPF_F_PSEUDO_HDR) | 4 | mangled_0;
    // A UDP datagram without checksum keeps none (BPF_F_MARK_MANGLED_0 does that in the
    // helper); the check here only skips the helper calls.
    let fix_l4 = csum::l4_has_checksum(pkt.protocol, l4_check);
    let (l3, l4, l4_check_at) = (pkt.l3_offset, pkt.l4_offset, pkt.l4_check_offset);
    let malformed = |_| Skip::Pass(PlaneCounter::Malformed);
    // Everything needed is read above: helpers invalidate the packet pointers.
    if pkt.v6 {
        let old = pkt.src6();
        if fix_l4 {
            for (from, to) in old.iter().zip(service_words) {
                ctx.l4_csum_replace(l4_check_at, u64::from(*from), u64::from(to), pseudo)
                    .map_err(malformed)?;
            }
            ctx.l4_csum_replace(
                l4_check_at,
                u64::from(src_port),
                u64::from(info.service_port_be),
                2 | mangled_0,
            )
            .map_err(malformed)?;
        }
        ctx.store(l3 + IPV6_SRC_OFFSET, &service_words, 0)
            .map_err(malformed)?;
        ctx.store(l4, &info.service_port_be, 0).map_err(malformed)?;
        return Ok(());
    }
    let (src, service_addr) = (pkt.src(), service_words[3]);
    // The IPv4 checksum (never partial) and the source address sit side by side: one store.
    let ip_check = csum::replace32(pkt.ip_check(), src, service_addr);
    let check_and_source = Ipv4CheckAndSource {
        check: ip_check,
        source: service_addr,
    };
    // The L4 checksum goes through the kernel, which knows whether the skb carries a partial
    // checksum (a seed that only the pseudo-header change must touch) or a complete one.
    if fix_l4 {
        ctx.l4_csum_replace(l4_check_at, u64::from(src), u64::from(service_addr), pseudo)
            .and_then(|()| {
                ctx.l4_csum_replace(
                    l4_check_at,
                    u64::from(src_port),
                    u64::from(info.service_port_be),
                    2 | mangled_0,
                )
            })
            .map_err(malformed)?;
    }
    ctx.store(l3 + IPV4_CHECK_OFFSET, &check_and_source, 0)
        .map_err(malformed)?;
    ctx.store(l4, &info.service_port_be, 0).map_err(malformed)?;
    Ok(())
}

const _: () = assert!(IPV4_CHECK_OFFSET + 2 == packet::IPV4_SRC_OFFSET);

/// Bytes 10..16 of an IPv4 header, as stored: the header checksum, then the source address.
#[repr(C, packed)]
struct Ipv4CheckAndSource {
    check: u16,
    source: u32,
}
