//! The per-CPU caches of the packet path: copies of what the flow table and the FIB say, kept
//! where a packet finds them with one inlined array read. Every one is filled only from its
//! source of truth and cleared when that changes (see `flow_cache.rs` and `forward.rs` in
//! splitter-ebpf).

use crate::FlowKey;

/// Ways of each set of the flow and reply caches: a flow may sit in either way of its set, so
/// two flows whose keys hash alike do not evict each other at every packet.
pub const CACHE_WAYS: usize = 2;

/// Value of `FLOW_CACHE` and `REPLY_CACHE`, per CPU: the ways of one set (`FlowKey::cache_set`),
/// 64 bytes each, read with one inlined array lookup.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CacheSet<T> {
    pub ways: [T; CACHE_WAYS],
}

/// One way of `FLOW_CACHE`, per CPU: a copy of a recently used flow entry, so an established
/// packet costs one inlined array read instead of a hash lookup. `FLOWS` stays the source of
/// truth: a way is filled from it, and every new flow clears its key's set on all CPUs.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CachedFlow {
    pub key: FlowKey,
    /// `CACHE_VALID` when the way holds `key`'s flow.
    pub valid: u32,
    /// `stats_index` of the flow's (service, version).
    pub stats_index: u32,
    /// The backend's IPv4 address and port in memory order.
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
    /// What the rewrite adds to the IPv4 header checksum (`~old + new` over the address words):
    /// the same for every packet of the flow, so computed once when the way is filled.
    pub ip_delta: u32,
    /// Likewise for the L4 checksum (the address in the pseudo-header and the port).
    pub l4_delta: u32,
}
const _: () = assert!(core::mem::size_of::<CachedFlow>() == 64);

/// Value of `NEXT_HOPS`, per CPU: where the fast path sends packets to one IPv4 backend, as the
/// FIB said at `asked_ns` (in jiffies, `bpf_jiffies64`; 0: never), so an established packet
/// costs no FIB lookup.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NextHop {
    /// The backend's IPv4 address in memory order (the slot's key).
    pub addr: u32,
    /// The device, or `NEXT_HOP_ROUTED` when the node's stack must take the packets (a local
    /// backend, no route, forwarding off, a device the redirect may not reach).
    pub ifindex: u32,
    pub asked_ns: u64,
    /// The longest packet (IP total length) the FIB has accepted for this next hop: a longer
    /// one asks again, so the FIB checks it against the MTU.
    pub max_len: u16,
    /// With `NEXT_HOP_ROUTED`, why (a `PlaneCounter`: `ForwardRouted` or `ForwardNoDevice`),
    /// so that the packets that follow are counted as the first was.
    pub routed_why: u16,
    /// The Ethernet destination and source of the next hop.
    pub macs: [u8; 12],
}
const _: () = assert!(core::mem::size_of::<NextHop>() == 32);

impl NextHop {
    /// The first of the two `NEXT_HOPS` slots (ways) of the backend at `addr` (IPv4, memory
    /// order); the second is the next one.
    #[inline(always)]
    #[must_use]
    pub const fn first_way(addr: u32) -> u32 {
        (addr.wrapping_mul(0x9e37_79b1) >> (32 - crate::maps::NEXT_HOP_SLOTS.trailing_zeros())) & !1
    }
}

/// `NextHop::ifindex` when the fast path does not apply.
pub const NEXT_HOP_ROUTED: u32 = 0;
/// How long a next hop from the FIB is used before the FIB is asked again, in jiffies (the
/// kernel's tick: 1.02 s at HZ = 250, 0.26 s at 1000, 2.56 s at 100): a neighbour's new address
/// (a router's failover) reaches established flows within it.
pub const NEXT_HOP_TTL_JIFFIES: u64 = 256;

pub const CACHE_VALID: u32 = 1;

/// One way of `REPLY_CACHE`, per CPU: what the reverse translation of a steered IPv4 flow needs,
/// keyed by the reply's own tuple (backend → client), so a backend's pure ACK costs one inlined
/// array read instead of two hash lookups. Filled only from an open `FLOWS` entry of a steered
/// flow; a handshake answer that matches no steered flow clears its set on every CPU, and so
/// does user space whenever it purges flows.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CachedReply {
    /// The reply's tuple as it leaves the backend: source = the backend.
    pub key: FlowKey,
    /// `CACHE_VALID` when the way holds `key`'s flow.
    pub valid: u32,
    /// `stats_index` of the flow's (service, version).
    pub stats_index: u32,
    /// The service's IPv4 address and port in memory order: the reply's new source.
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
    /// `~backend + service` over the address words: added to the IPv4 header checksum, and to
    /// the L4 checksum as a pseudo-header change.
    pub addr_delta: u32,
    /// `~backend port + service port`: added to the L4 checksum as a change of its data; 0 when
    /// the ports are the same.
    pub port_delta: u32,
}
const _: () = assert!(core::mem::size_of::<CachedReply>() == 64);
