//! TC egress: replies from a backend leave with the service's address and port as source, so
//! the client sees the address it connected to. The reverse entry is keyed by the backend (from
//! `BACKENDS`, written by user space), not by the flow, so flow-table eviction can never break a
//! reply. Checksums are updated with the kernel helpers, which also handle the partial
//! checksums of locally generated packets.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::bpf_ktime_get_ns,
    programs::TcContext,
};
use splitter_common::{
    BackendInfo, Endpoint, FLOW_OPEN, FlowKey, PROTO_UDP, PlaneCounter, ipv4_mapped, stats_index,
};

use crate::{
    Skip,
    maps::{self, BACKENDS, FLOWS},
    packet::{self, Bounds, IPV4_CHECK_OFFSET, IPV4_SRC_OFFSET, MAX_HEADER_LEN, TCP_FIN, TCP_RST},
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
    // SAFETY: `parse` bounds-checked the IP header and the ports.
    let (src, dst, ports, l4_check) = unsafe {
        (
            (*pkt.ip).src_addr,
            (*pkt.ip).dst_addr,
            *pkt.ports,
            *pkt.l4_check,
        )
    };
    let backend = Endpoint::from_ipv4(src, ports[0], pkt.protocol);
    // SAFETY: hash map values are read once, as a copy.
    let info: BackendInfo = match unsafe { BACKENDS.get(&backend) } {
        Some(info) => *info,
        None => return Err(Skip::Pass(PlaneCounter::ReplyPassed)),
    };
    maps::with_stats(stats_index(info.service_id, info.version), |s| {
        s.packets_out += 1;
        s.bytes_out += u64::from(ctx.len());
    });
    if pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        close_flow(&info, dst, ports[1], pkt.protocol, pkt.tcp_flags);
    }

    let new_addr = [
        info.service_addr[12],
        info.service_addr[13],
        info.service_addr[14],
        info.service_addr[15],
    ];
    let new_port = info.service_port_be.to_ne_bytes();
    let mangled_0 = if pkt.protocol == PROTO_UDP {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    };
    let ip_check = pkt.l3_offset + IPV4_CHECK_OFFSET;
    let ip_src = pkt.l3_offset + IPV4_SRC_OFFSET;
    let old_addr = u64::from(u32::from_ne_bytes(src));
    let new_addr_word = u64::from(u32::from_ne_bytes(new_addr));
    let rewrite = || -> Result<(), i64> {
        // A UDP datagram without checksum keeps none (BPF_F_MARK_MANGLED_0 does that in the
        // helper); the check here only skips the helper calls.
        if pkt.protocol != PROTO_UDP || l4_check != [0, 0] {
            ctx.l4_csum_replace(
                pkt.l4_check_offset,
                old_addr,
                new_addr_word,
                u64::from(BPF_F_PSEUDO_HDR) | 4 | mangled_0,
            )?;
            ctx.l4_csum_replace(
                pkt.l4_check_offset,
                u64::from(u16::from_ne_bytes(ports[0])),
                u64::from(u16::from_ne_bytes(new_port)),
                2 | mangled_0,
            )?;
        }
        ctx.l3_csum_replace(ip_check, old_addr, new_addr_word, 4)?;
        ctx.store(ip_src, &new_addr, 0)?;
        ctx.store(pkt.l4_offset, &new_port, 0)?;
        Ok(())
    };
    rewrite().map_err(|_| Skip::Pass(PlaneCounter::Malformed))
}

/// A FIN or RST from the backend closes the client's flow entry, so user space can age it out.
#[inline(always)]
fn close_flow(
    info: &BackendInfo,
    client: [u8; 4],
    client_port: [u8; 2],
    protocol: u8,
    tcp_flags: u8,
) {
    let service = [
        info.service_addr[12],
        info.service_addr[13],
        info.service_addr[14],
        info.service_addr[15],
    ];
    let key = FlowKey::from_ipv4(
        client,
        service,
        [client_port, info.service_port_be.to_ne_bytes()],
        protocol,
    );
    if let Some(flow) = FLOWS.get_ptr_mut(&key) {
        // SAFETY: the pointer is valid for this program run; only scalar fields are touched.
        let flow = unsafe { &mut *flow };
        if flow.state == FLOW_OPEN {
            flow.state = if tcp_flags & TCP_RST != 0 {
                splitter_common::FLOW_RST
            } else {
                splitter_common::FLOW_FIN
            };
            // SAFETY: a helper with no arguments.
            flow.state_changed_ns = unsafe { bpf_ktime_get_ns() };
            maps::with_stats(stats_index(flow.service_id, flow.version), |s| {
                s.closed_flows += 1
            });
        }
    }
}
