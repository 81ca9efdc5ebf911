//! TC egress: replies from a backend leave with the service's address and port as source, so
//! the client sees the address it connected to. The reverse entry is keyed by the backend (from
//! `BACKENDS`, written by user space), not by the flow, so flow-table eviction can never break a
//! reply. Checksums are updated with the kernel helpers, which also handle the partial
//! checksums of locally generated packets.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use splitter_common::{
    BackendInfo, Endpoint, FlowKey, PROTO_TCP, PROTO_UDP, PlaneCounter, addr_words, stats_index,
};

use crate::{
    Skip, csum,
    maps::{self, BACKENDS, FLOWS},
    packet::{
        self, Bounds, IPV4_CHECK_OFFSET, IPV4_SRC_OFFSET, MAX_HEADER_LEN, TCP_FIN, TCP_RST, TCP_SYN,
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
    let info: BackendInfo = match unsafe { BACKENDS.get(&backend) } {
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
        if let Some(flow) = FLOWS.get_ptr_mut(&key) {
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
    if pkt.v6 {
        let old = pkt.src6();
        pkt.set_src6(service_words);
        // SAFETY: `parse` bounds-checked the port pair.
        unsafe { packet::store_u16(pkt.l4, info.service_port_be) };
        if pkt.protocol != PROTO_UDP || l4_check != 0 {
            for (from, to) in old.iter().zip(service_words) {
                ctx.l4_csum_replace(pkt.l4_check_offset, u64::from(*from), u64::from(to), pseudo)
                    .map_err(|_| Skip::Pass(PlaneCounter::Malformed))?;
            }
            ctx.l4_csum_replace(
                pkt.l4_check_offset,
                u64::from(src_port),
                u64::from(info.service_port_be),
                2 | mangled_0,
            )
            .map_err(|_| Skip::Pass(PlaneCounter::Malformed))?;
        }
        return Ok(());
    }
    let (src, service_addr) = (pkt.src(), service_words[3]);
    // The IPv4 header's checksum is never partial and the source fields are plain bytes:
    // write them directly, before any helper call (helpers invalidate packet pointers).
    let ip_check = csum::replace32(pkt.ip_check(), src, service_addr);
    // SAFETY: `parse` bounds-checked the IPv4 header and the port pair.
    unsafe {
        packet::store_u32(pkt.ip.add(IPV4_SRC_OFFSET), service_addr);
        packet::store_u16(pkt.ip.add(IPV4_CHECK_OFFSET), ip_check);
        packet::store_u16(pkt.l4, info.service_port_be);
    }
    // The L4 checksum goes through the kernel, which knows whether the skb carries a partial
    // checksum (a seed that only the pseudo-header change must touch) or a complete one. A UDP
    // datagram without checksum keeps none (BPF_F_MARK_MANGLED_0 does that in the helper); the
    // check here only skips the helper calls.
    if pkt.protocol != PROTO_UDP || l4_check != 0 {
        let mangled_0 = if pkt.protocol == PROTO_UDP {
            u64::from(BPF_F_MARK_MANGLED_0)
        } else {
            0
        };
        let pseudo = u64::from(BPF_F_PSEUDO_HDR) | 4 | mangled_0;
        ctx.l4_csum_replace(
            pkt.l4_check_offset,
            u64::from(src),
            u64::from(service_addr),
            pseudo,
        )
        .and_then(|()| {
            ctx.l4_csum_replace(
                pkt.l4_check_offset,
                u64::from(src_port),
                u64::from(info.service_port_be),
                2 | mangled_0,
            )
        })
        .map_err(|_| Skip::Pass(PlaneCounter::Malformed))?;
    }
    Ok(())
}
