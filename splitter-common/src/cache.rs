//! The per-CPU caches of the packet path: copies of what the flow table and the FIB say, kept
//! where a packet finds them with one inlined array read. Every one is filled only from its
//! source of truth and cleared when that changes (see `flow_cache.rs` and `forward.rs` in
//! splitter-ebpf).

/// Ways of each set of the flow and reply caches: a flow may sit in either way of its set, so
/// two flows whose keys hash alike do not evict each other at every packet.
pub const CACHE_WAYS: usize = 2;

/// Value of `FLOW_CACHE` and `REPLY_CACHE`, per CPU: the ways of one set (`FlowCacheKey::set`),
/// read with one inlined array lookup.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CacheSet<T> {
    pub ways: [T; CACHE_WAYS],
}

/// An IPv4 flow as `FLOW_CACHE` keys it: the client's packet's addresses, port pair and
/// protocol, in memory order (the cache holds IPv4 flows only). Twelve bytes of the packet,
/// read straight from it, where a `FlowKey` is forty built on the stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowCacheKey {
    pub src: u32,
    pub dst: u32,
    pub ports: u32,
    pub protocol: u8,
}

impl FlowCacheKey {
    /// The key's set in `FLOW_CACHE` (a reply's in `REPLY_CACHE`). The words that vary most
    /// are mixed by a multiply each, not folded by XOR first: clients and services on
    /// neighbouring addresses and ports would otherwise cancel out into the same set.
    #[inline(always)]
    #[must_use]
    pub const fn set(&self) -> u32 {
        let mixed = (self.src.wrapping_mul(0x9e37_79b1) ^ self.ports).wrapping_mul(0x85eb_ca6b);
        let mixed = (mixed ^ self.dst ^ self.protocol as u32).wrapping_mul(0xc2b2_ae35);
        mixed >> (32 - crate::maps::FLOW_CACHE_SETS.trailing_zeros())
    }

    /// The first two words of a way that holds this key: the addresses, then the port pair,
    /// the protocol and `CACHE_VALID`.
    #[inline(always)]
    #[must_use]
    pub const fn words(&self) -> [u64; 2] {
        [
            self.src as u64 | (self.dst as u64) << 32,
            self.ports as u64 | (self.protocol as u64) << 32 | (CACHE_VALID as u64) << 40,
        ]
    }
}

/// The first 16 bytes of a way of either cache: its key, and whether the way holds it. With
/// the key, they are compared as two words (`FlowCacheKey::words`).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct WayKey {
    pub src: u32,
    pub dst: u32,
    pub ports: u32,
    pub protocol: u8,
    /// `CACHE_VALID` when the way holds its key's flow.
    pub valid: u8,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<WayKey>() == 16);

impl WayKey {
    /// A valid way's key.
    #[inline(always)]
    #[must_use]
    pub const fn of(key: &FlowCacheKey) -> Self {
        Self {
            src: key.src,
            dst: key.dst,
            ports: key.ports,
            protocol: key.protocol,
            valid: CACHE_VALID as u8,
            _pad: 0,
        }
    }

    /// The key.
    #[must_use]
    pub const fn key(&self) -> FlowCacheKey {
        FlowCacheKey {
            src: self.src,
            dst: self.dst,
            ports: self.ports,
            protocol: self.protocol,
        }
    }

    /// Whether the way holds the key whose `words` these are: two word compares.
    #[inline(always)]
    #[must_use]
    pub fn holds(&self, words: &[u64; 2]) -> bool {
        // SAFETY: WayKey is 16 bytes and 8-aligned.
        let own = unsafe { &*(self as *const Self).cast::<[u64; 2]>() };
        own[0] == words[0] && own[1] == words[1]
    }

    /// Whether the way holds a key.
    #[must_use]
    pub const fn is_valid(&self) -> bool {
        self.valid as u32 == CACHE_VALID
    }
}

/// One way of `FLOW_CACHE`, per CPU: a copy of a recently used IPv4 flow entry and of its
/// backend's next hop, so an established packet is steered and forwarded from one inlined array
/// read instead of a hash lookup and a next-hop lookup. `FLOWS` stays the source of truth: a
/// way is filled from it, and every new flow clears its key's set on all CPUs. The next hop is
/// copied from `NEXT_HOPS` with the time the FIB gave it, so it is used no longer than that
/// answer is.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CachedFlow {
    /// The client's packet's source and destination, port pair and protocol.
    pub key: WayKey,
    /// `stats_index` of the flow's (service, version).
    pub stats_index: u32,
    /// What the rewrite adds to the IPv4 header checksum (`~old + new` over the address words):
    /// the same for every packet of the flow, so computed once when the way is filled.
    pub ip_delta: u32,
    /// Likewise for the L4 checksum (the address in the pseudo-header and the port).
    pub l4_delta: u32,
    /// The backend's port in memory order.
    pub port: u16,
    pub _pad: u16,
    /// The backend's IPv4 address (`hop.addr`, memory order) and, once a pure ACK of the flow
    /// has taken the express lane (`hop.asked_ns` not 0), a copy of its `NEXT_HOPS` entry: where
    /// the fast path sends the flow's packets, or that the stack routes them.
    pub hop: NextHop,
}
const _: () = assert!(core::mem::size_of::<CachedFlow>() == 64);

/// Value of `NEXT_HOPS` (a backend's, for the ingress) and `REPLY_HOPS` (a client's, for the
/// replies' fast path), per CPU: where the fast path sends packets to one IPv4 address, as the
/// FIB said at `asked_ns` (in jiffies, `bpf_jiffies64`; 0: never), so an established packet
/// costs no FIB lookup.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NextHop {
    /// The IPv4 address in memory order (the slot's key).
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
    /// The first of the two slots (ways) of `NEXT_HOPS` or `REPLY_HOPS` for the IPv4 address
    /// `addr` (memory order); the second is the next one.
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
    pub key: WayKey,
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
    pub _pad2: u32,
}
const _: () = assert!(core::mem::size_of::<CachedReply>() == 40);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FlowKey;

    fn key(port: u16) -> FlowCacheKey {
        FlowCacheKey {
            src: u32::from_ne_bytes([198, 18, 0, 2]),
            dst: u32::from_ne_bytes([198, 18, 0, 1]),
            ports: u32::from_ne_bytes([port.to_be_bytes()[0], port.to_be_bytes()[1], 0x1f, 0x90]),
            protocol: crate::PROTO_TCP,
        }
    }

    fn way_of(key: FlowCacheKey) -> WayKey {
        WayKey::of(&key)
    }

    #[test]
    fn a_way_holds_its_own_key_only_while_valid() {
        let way = way_of(key(40_000));
        assert!(way.holds(&key(40_000).words()));
        assert_eq!(way.key(), key(40_000));
        assert!(!way.holds(&key(40_001).words()), "another port");
        let udp = FlowCacheKey {
            protocol: crate::PROTO_UDP,
            ..key(40_000)
        };
        assert!(!way.holds(&udp.words()), "another protocol");
        let swapped = FlowCacheKey {
            src: key(40_000).dst,
            dst: key(40_000).src,
            ..key(40_000)
        };
        assert!(!way.holds(&swapped.words()), "the addresses the other way");
        assert!(
            !WayKey { valid: 0, ..way }.holds(&key(40_000).words()),
            "a cleared way"
        );
    }

    #[test]
    fn an_ipv4_flow_keys_its_set_alike_from_the_packet_and_from_its_flow_key() {
        for port in [1_024, 40_000, 65_535] {
            let k = key(port);
            let flow = FlowKey::from_ipv4(k.src, k.dst, k.ports, k.protocol);
            assert_eq!(flow.cache_key(), k);
            assert_eq!(flow.cache_set(), k.set());
            assert!(k.set() < crate::maps::FLOW_CACHE_SETS);
        }
    }
}
