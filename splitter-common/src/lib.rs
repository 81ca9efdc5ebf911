//! Types shared by the kernel programs and user space: map keys and values, map names and
//! sizes, the split word and the flow hash. Every fact about the kernel ABI lives here once.
//!
//! Everything is `#[repr(C)]` with explicit padding and a compile-time size check, so the
//! kernel and user space agree on layouts byte for byte. Addresses are 16 bytes: IPv4 is stored
//! IPv4-mapped (`::ffff:a.b.c.d`) so that IPv6 needs no new types.
#![no_std]
// The HTTP/2 reader swaps a stream entry with BPF_CMPXCHG (`l7::streams`).
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

pub mod cache;
pub mod csum;
pub mod drain;
pub mod hash;
pub mod l7;
pub mod maps;
pub mod split;
pub mod stats;

pub use cache::{
    CACHE_VALID, CACHE_WAYS, CacheSet, CachedFlow, CachedReply, FlowCacheKey, NEXT_HOP_ROUTED,
    NEXT_HOP_TTL_JIFFIES, NextHop, WayKey,
};
pub use hash::{client_hash, flow_hash};
pub use split::{SplitWord, Version};
pub use stats::{Traffic, VersionStats};

/// An IPv6 address, or an IPv4 address in its IPv4-mapped form.
pub type Addr = [u8; 16];

/// IP protocol numbers the data plane steers.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// An address as four words in memory order (as the kernel programs load it from a packet).
#[inline(always)]
#[must_use]
pub const fn addr_words(addr: &Addr) -> [u32; 4] {
    // Destructured rather than indexed: no bounds check, so no panic path in a BPF program.
    let [a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p] = *addr;
    [
        u32::from_ne_bytes([a, b, c, d]),
        u32::from_ne_bytes([e, f, g, h]),
        u32::from_ne_bytes([i, j, k, l]),
        u32::from_ne_bytes([m, n, o, p]),
    ]
}

/// The IPv4-mapped form of an IPv4 address given as its four bytes in network order.
#[inline(always)]
#[must_use]
pub const fn ipv4_mapped(octets: [u8; 4]) -> Addr {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3],
    ]
}

/// An (address, port, protocol) triple: a service's listen address in `SERVICES`, or a backend
/// in `BACKENDS`. The port is in network byte order, as it sits in the packet.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Endpoint {
    pub addr: Addr,
    pub port_be: u16,
    pub protocol: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<Endpoint>() == 20);

/// The IPv4-mapped prefix (`::ffff:0:0/96`) as its third 32-bit word, in memory order.
const MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

impl Endpoint {
    /// The endpoint of an IPv4 address and port in memory order (the packet's bytes read as
    /// a native integer, `from_ne_bytes`). Built from 32-bit words, so the kernel program stores
    /// five words instead of assembling bytes.
    #[inline(always)]
    #[must_use]
    pub fn from_ipv4(addr: u32, port: u16, protocol: u8) -> Self {
        let p = port.to_ne_bytes();
        let words: [u32; 5] = [
            0,
            0,
            MAPPED_WORD,
            addr,
            u32::from_ne_bytes([p[0], p[1], protocol, 0]),
        ];
        // SAFETY: Endpoint is repr(C), 20 bytes, 4-aligned, with no invalid bit patterns.
        unsafe { core::mem::transmute(words) }
    }

    /// The endpoint of an IPv6 address (four words in memory order) and port (memory order).
    #[inline(always)]
    #[must_use]
    pub fn from_ipv6(addr: [u32; 4], port: u16, protocol: u8) -> Self {
        let p = port.to_ne_bytes();
        let words: [u32; 5] = [
            addr[0],
            addr[1],
            addr[2],
            addr[3],
            u32::from_ne_bytes([p[0], p[1], protocol, 0]),
        ];
        // SAFETY: Endpoint is repr(C), 20 bytes, 4-aligned, with no invalid bit patterns.
        unsafe { core::mem::transmute(words) }
    }

    #[inline(always)]
    #[must_use]
    pub const fn new(addr: Addr, port: u16, protocol: u8) -> Self {
        Self {
            addr,
            port_be: port.to_be(),
            protocol,
            _pad: 0,
        }
    }

    #[inline(always)]
    #[must_use]
    pub const fn port(&self) -> u16 {
        u16::from_be(self.port_be)
    }
}

/// Value of `SERVICES`: the dense id that indexes the slot tables and the counters of the
/// service, and the index of its split word.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Service {
    pub id: u32,
    /// Per-service options: `SERVICE_AFFINITY_CLIENT`, and above `SERVICE_SALT_SHIFT` the salt
    /// of the client hash (changed at every rollout).
    pub flags: u32,
    /// Index of the split word in `SPLIT`: the service's own id, or for every service of a
    /// release group the id of the group's first service, so that one write moves the group.
    pub split: u32,
}

/// `Service::flags`: choose the version by a hash of the client address (salted), not of the
/// 5-tuple, so each client sees one version.
pub const SERVICE_AFFINITY_CLIENT: u32 = 1;
/// `Service::flags`: the service has cohorts in `COHORTS` (new flows look their client up).
pub const SERVICE_HAS_COHORTS: u32 = 2;
/// A `COHORTS` value: clients in the prefix always get the candidate.
pub const COHORT_CANDIDATE: u32 = 1;
/// A `COHORTS` value: clients in the prefix never get the candidate.
pub const COHORT_LIVE: u32 = 2;
/// Bits of a `COHORTS` key before the address: the service id.
pub const COHORT_ID_BITS: u32 = 32;

/// The data of a `COHORTS` key: the service id (big-endian, so it is the leading prefix), then
/// the client address (IPv4-mapped for IPv4).
#[must_use]
pub const fn cohort_data(service_id: u32, addr: &Addr) -> [u8; 20] {
    let id = service_id.to_be_bytes();
    let mut data = [0u8; 20];
    let mut i = 0;
    while i < 4 {
        data[i] = id[i];
        i += 1;
    }
    while i < 20 {
        data[i] = addr[i - 4];
        i += 1;
    }
    data
}

/// `Service::flags`: where the 24-bit salt of the client hash starts.
pub const SERVICE_SALT_SHIFT: u32 = 8;

impl Service {
    /// The salt of the client hash.
    #[must_use]
    pub const fn salt(&self) -> u32 {
        self.flags >> SERVICE_SALT_SHIFT
    }

    /// The hash a new flow's version is chosen by: the client's (salted) with client affinity,
    /// else the flow's.
    #[inline(always)]
    #[must_use]
    pub const fn choice_hash(&self, key: &FlowKey, flow_hash: u64) -> u32 {
        if self.flags & SERVICE_AFFINITY_CLIENT != 0 {
            client_hash(&key.src_addr, self.salt())
        } else {
            flow_hash as u32
        }
    }
}
const _: () = assert!(core::mem::size_of::<Service>() == 12);

/// One entry of a pool's slot table. `flags == 0` means the slot is unset: the kernel counts a
/// slot miss and never forwards to it.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Slot {
    pub addr: Addr,
    pub port_be: u16,
    pub flags: u16,
}
const _: () = assert!(core::mem::size_of::<Slot>() == 20);

/// `Slot::flags` bit: the slot holds a backend.
pub const SLOT_SET: u16 = 1;

/// Key of `FLOWS`: the connection as the client sent it (destination = the service address).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub src_addr: Addr,
    pub dst_addr: Addr,
    pub src_port_be: u16,
    pub dst_port_be: u16,
    pub protocol: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

impl FlowKey {
    /// The key of an IPv6 packet: addresses as four words each, ports as in `from_ipv4`.
    #[inline(always)]
    #[must_use]
    pub fn from_ipv6(src: [u32; 4], dst: [u32; 4], ports: u32, protocol: u8) -> Self {
        let words: [u32; 10] = [
            src[0],
            src[1],
            src[2],
            src[3],
            dst[0],
            dst[1],
            dst[2],
            dst[3],
            ports,
            u32::from_ne_bytes([protocol, 0, 0, 0]),
        ];
        // SAFETY: FlowKey is repr(C), 40 bytes, at least 4-aligned, with no invalid bit patterns.
        unsafe { core::mem::transmute(words) }
    }

    /// The key of the replies of the flow `self` steered to `backend` (its address as `Flow`
    /// keeps it, its port in network order): the tuple the backend sends on, the reply cache's
    /// key.
    #[inline(always)]
    #[must_use]
    pub const fn reply(&self, backend: &Addr, backend_port_be: u16) -> Self {
        Self {
            src_addr: *backend,
            dst_addr: self.src_addr,
            src_port_be: backend_port_be,
            dst_port_be: self.src_port_be,
            protocol: self.protocol,
            _pad: [0; 3],
        }
    }

    /// The key of an IPv4 packet from its addresses and its (source, destination) port pair,
    /// each in memory order as `Endpoint::from_ipv4` takes them.
    #[inline(always)]
    #[must_use]
    pub fn from_ipv4(src: u32, dst: u32, ports: u32, protocol: u8) -> Self {
        let words: [u32; 10] = [
            0,
            0,
            MAPPED_WORD,
            src,
            0,
            0,
            MAPPED_WORD,
            dst,
            ports,
            u32::from_ne_bytes([protocol, 0, 0, 0]),
        ];
        // SAFETY: FlowKey is repr(C), 40 bytes, at least 4-aligned, with no invalid bit patterns.
        unsafe { core::mem::transmute(words) }
    }
}

/// Value of `FLOWS`: where the connection was sent and when.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Flow {
    pub backend_addr: Addr,
    pub backend_port_be: u16,
    /// `Version` as u8.
    pub version: u8,
    /// `FLOW_OPEN`, or the `FLOW_FIN_CLIENT`, `FLOW_FIN_BACKEND` and `FLOW_RST` bits seen.
    pub state: u8,
    pub service_id: u32,
    /// `bpf_ktime_get_ns` when the flow was created.
    pub created_ns: u64,
    /// `bpf_ktime_get_ns` when `state` last changed (creation, FIN or RST seen).
    pub state_changed_ns: u64,
    /// `bpf_ktime_get_ns` of the request the client is waiting on (the first client payload
    /// after the last response), its two low bits the response's `RESPONSE_*` phase; 0 while
    /// no request is pending.
    pub request_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Flow>() == 48);

impl FlowKey {
    /// The key's `FlowCacheKey`: the last word of each address (an IPv4 key's whole address),
    /// the port pair and the protocol.
    #[inline(always)]
    #[must_use]
    pub fn cache_key(&self) -> FlowCacheKey {
        // SAFETY: FlowKey is 40 bytes and at least 4-aligned.
        let w: &[u32; 10] = unsafe { &*(self as *const Self).cast() };
        FlowCacheKey {
            src: w[3],
            dst: w[7],
            ports: w[8],
            protocol: self.protocol,
        }
    }

    /// The flow's set in `FLOW_CACHE` (a reply's in `REPLY_CACHE`).
    #[inline(always)]
    #[must_use]
    pub fn cache_set(&self) -> u32 {
        self.cache_key().set()
    }
}

/// `Flow::state`: bits of what closing the connection has seen; 0 while it is open.
pub const FLOW_OPEN: u8 = 0;
/// The client sent a FIN (seen by the XDP ingress program).
pub const FLOW_FIN_CLIENT: u8 = 1;
/// The backend sent a FIN (seen by the TC egress program).
pub const FLOW_FIN_BACKEND: u8 = 2;
/// A RST was seen in either direction: the connection is gone.
pub const FLOW_RST: u8 = 4;
/// The backend answered the SYN (its SYN-ACK was seen): the handshake completed.
pub const FLOW_SYNACK: u8 = 8;
/// The flow began with the client's SYN (not a miss or a UDP datagram): a RST before the
/// SYN-ACK is then a refused handshake.
pub const FLOW_SYN: u8 = 16;

/// Whether a connection in `state` is closed: reset, or finished in both directions. A flow
/// with one FIN is half-closed and may still carry data the other way.
#[inline(always)]
#[must_use]
pub const fn flow_closed(state: u8) -> bool {
    state & FLOW_RST != 0
        || state & (FLOW_FIN_CLIENT | FLOW_FIN_BACKEND) == FLOW_FIN_CLIENT | FLOW_FIN_BACKEND
}

/// Adds the closing `bits` seen on a packet to `flow`; returns whether that closed it.
#[inline(always)]
pub fn flow_add_state(flow: &mut Flow, bits: u8, now_ns: u64) -> bool {
    if bits & !flow.state == 0 {
        return false;
    }
    let was_closed = flow_closed(flow.state);
    flow.state |= bits;
    flow.state_changed_ns = now_ns;
    !was_closed && flow_closed(flow.state)
}

/// Value of `BACKENDS`, keyed by the backend's `Endpoint`: what the TC egress program needs to
/// turn a reply from the backend back into a reply from the service.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BackendInfo {
    pub service_addr: Addr,
    pub service_port_be: u16,
    /// `Version` as u8.
    pub version: u8,
    pub _pad: u8,
    pub service_id: u32,
}
const _: () = assert!(core::mem::size_of::<BackendInfo>() == 24);

/// Sub-buckets per power of two of a latency histogram (log-linear buckets, as HdrHistogram's):
/// the octave [2^e, 2^(e+1)) µs is cut into 8 equal buckets, each 6.7% to 12.5% of its lower
/// bound wide (9% in the middle), so a 10% change in latency moves a value about one bucket.
pub const LATENCY_SUB_BITS: u32 = 3;
const LATENCY_SUB: usize = 1 << LATENCY_SUB_BITS;
/// Octaves covered: values from 2^LATENCY_OCTAVES µs (67 s) on share the last bucket.
const LATENCY_OCTAVES: usize = 26;
/// Buckets of a latency histogram: the values under 8 µs one µs each, then 8 per octave up to
/// 2^26 µs, then one for everything above (see `Histogram::bucket` and `latency_bucket_bounds`).
pub const LATENCY_BUCKETS: usize =
    LATENCY_SUB + (LATENCY_OCTAVES - LATENCY_SUB_BITS as usize) * LATENCY_SUB + 1;
const _: () = assert!(LATENCY_BUCKETS == 193);

/// The bounds `[lower, upper)` of latency bucket `i`, in µs; the last bucket's upper bound is
/// `u64::MAX`. The one definition of the buckets for user space (the kernel only indexes them).
#[must_use]
pub const fn latency_bucket_bounds(i: usize) -> (u64, u64) {
    if i < LATENCY_SUB {
        return (i as u64, i as u64 + 1);
    }
    if i >= LATENCY_BUCKETS - 1 {
        return (1 << LATENCY_OCTAVES, u64::MAX);
    }
    let octave = (i >> LATENCY_SUB_BITS) as u32 + LATENCY_SUB_BITS - 1;
    let width = 1u64 << (octave - LATENCY_SUB_BITS);
    let lower = (1u64 << octave) + (i & (LATENCY_SUB - 1)) as u64 * width;
    (lower, lower + width)
}

/// Value of `LATENCY`, one per (service, version, kind) and CPU: a log-linear histogram in µs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Histogram {
    pub buckets: [u64; LATENCY_BUCKETS],
    pub sum_us: u64,
    pub count: u64,
}
const _: () = assert!(core::mem::size_of::<Histogram>() == 1560);

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: [0; LATENCY_BUCKETS],
            sum_us: 0,
            count: 0,
        }
    }
}

impl Histogram {
    /// The bucket of a value in µs: the value itself under 8 µs, then the octave and the top
    /// three bits under its leading one; clamped to the last bucket.
    #[inline(always)]
    #[must_use]
    pub const fn bucket(us: u64) -> usize {
        if us < LATENCY_SUB as u64 {
            return us as usize;
        }
        let octave = 63 - us.leading_zeros();
        if octave as usize >= LATENCY_OCTAVES {
            return LATENCY_BUCKETS - 1;
        }
        let sub = (us >> (octave - LATENCY_SUB_BITS)) as usize & (LATENCY_SUB - 1);
        (((octave - LATENCY_SUB_BITS + 1) as usize) << LATENCY_SUB_BITS) + sub
    }

    /// The values counted in the buckets (what `count` says too, where the kernel filled both).
    #[must_use]
    pub fn total(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// What was added since `earlier` (a window between two reads; a reset in between reads
    /// as empty buckets).
    #[must_use]
    pub const fn since(mut self, earlier: &Self) -> Self {
        let mut i = 0;
        while i < LATENCY_BUCKETS {
            self.buckets[i] = self.buckets[i].saturating_sub(earlier.buckets[i]);
            i += 1;
        }
        self.sum_us = self.sum_us.saturating_sub(earlier.sum_us);
        self.count = self.count.saturating_sub(earlier.count);
        self
    }

    /// Adds `other` bucket by bucket (user space sums the per-CPU values with it).
    #[must_use]
    pub const fn add(mut self, other: &Self) -> Self {
        let mut i = 0;
        while i < LATENCY_BUCKETS {
            self.buckets[i] += other.buckets[i];
            i += 1;
        }
        self.sum_us += other.sum_us;
        self.count += other.count;
        self
    }
}

/// What a `LATENCY` histogram times.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LatencyKind {
    /// From a request's first byte to the response's first byte (time to first byte), or from
    /// an HTTP/2 call's HEADERS to the server's first HEADERS on its stream.
    Response = 0,
    /// From the client's SYN to the backend's SYN-ACK.
    Handshake = 1,
    /// From a request's first byte to its response's first body byte: a streamed response's
    /// first token (its headers come at once), any other response's first byte.
    FirstToken = 2,
    /// From a request's first byte to its response's last byte: a chunked response's last
    /// chunk, an HTTP/2 call's END_STREAM.
    Whole = 3,
}

/// Histograms per (service, version): one per `LatencyKind`.
pub const LATENCY_KINDS: u32 = 4;

impl LatencyKind {
    /// Every kind, in index order.
    pub const ALL: [Self; LATENCY_KINDS as usize] = [
        Self::Response,
        Self::Handshake,
        Self::FirstToken,
        Self::Whole,
    ];
}

/// `Flow::request_ns` low bits: the response's headers came alone, its body is awaited (a
/// streamed response).
pub const RESPONSE_HEADERS_ONLY: u64 = 1;
/// `Flow::request_ns` low bits: the response's body began; its last packet ended in no chunk's
/// end (a body whose length its headers give, most often all there already).
pub const RESPONSE_BODY: u64 = 2;
/// `Flow::request_ns` low bits: the response's body began and its last packet ended a chunk
/// (`\r\n`) that was not the last: a stream, more to come.
pub const RESPONSE_STREAMING: u64 = 3;
/// `Flow::request_ns` low bits that hold the response's phase.
pub const RESPONSE_PHASE: u64 = 3;
/// `Flow::request_ns` of a connection whose payload the kernel does not read (TLS, other): the
/// client sent the last payload (a request may be waiting). No time: nothing is timed on it.
pub const OPAQUE_CLIENT_LAST: u64 = 4;
/// The same, the backend sent the last payload.
pub const OPAQUE_BACKEND_LAST: u64 = OPAQUE_CLIENT_LAST | RESPONSE_BODY;

/// Index of a (service, version, kind) histogram in `LATENCY`.
#[inline(always)]
#[must_use]
pub const fn latency_index(stats_index: u32, kind: LatencyKind) -> u32 {
    stats_index * LATENCY_KINDS + kind as u32
}

/// The pool number of a service's last-resort pool, beside `Version::Blue` (0) and
/// `Version::Green` (1): in `Flow::version`, `BackendInfo::version` and the indexes below.
pub const LAST_RESORT: u8 = 2;

/// Index of the (service, pool) counters in `VERSION_STATS`: blue and green of every service
/// first, then one last-resort entry per service.
#[inline(always)]
#[must_use]
pub const fn stats_index(service_id: u32, pool: u8) -> u32 {
    if pool == LAST_RESORT {
        maps::MAX_SERVICES * 2 + service_id
    } else {
        service_id * 2 + (pool as u32 & 1)
    }
}

/// Index in `POOL_SLOTS` of slot `hash` of the (service, pool) pool: laid out like
/// `stats_index`, `SLOTS_PER_POOL` slots each.
#[inline(always)]
#[must_use]
pub const fn slot_index(service_id: u32, pool: u8, hash: u32) -> u32 {
    stats_index(service_id, pool) * maps::SLOTS_PER_POOL + (hash & (maps::SLOTS_PER_POOL - 1))
}

/// Packets that left the fast path, counted per CPU in `PLANE_STATS` (index = discriminant).
/// Steered packets and translated replies are not counted here: they are the sums of
/// `packets_in` and `packets_out` over `VERSION_TRAFFIC`, and counting them twice would cost every
/// packet a second map access.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlaneCounter {
    /// Ingress: not IP (ARP, LLDP, ...): passed untouched.
    NotIp = 0,
    /// Ingress: IPv4 but not TCP/UDP to a configured service: passed untouched.
    NotService = 1,
    /// Ingress: an IP fragment: passed untouched.
    Fragment = 2,
    /// Ingress: IPv4 with options: passed untouched.
    IpOptions = 3,
    /// Ingress or egress: too short for the headers it claims: passed untouched.
    Malformed = 4,
    /// Ingress: new flow whose chosen slot is unset: dropped.
    SlotMiss = 5,
    /// Egress: not a reply from a backend: passed untouched.
    ReplyPassed = 6,
    /// Ingress: the flow table refused an insert (the packet was still steered).
    FlowInsertFailed = 7,
    /// Ingress: a new flow over the new-flow rate guard, steered by hash without a flow entry.
    Guarded = 8,
    /// Ingress: a new flow from an `always_candidate` cohort, sent to the candidate.
    CohortCandidate = 9,
    /// Ingress: a new flow from a `never_candidate` cohort, kept on the live pool.
    CohortLive = 10,
    /// Ingress: a new flow sent to the last-resort pool (neither version had a backend).
    LastResort = 11,
    /// Ingress: a client's payload on a flow being closed by a drain (a request that raced the
    /// close): dropped, so it is never processed without its answer reaching the client.
    DrainRaced = 12,
    /// Egress: a backend's payload on a flow being reset by a drain: dropped, so that both
    /// sides' sequence numbers hold still for the resets; or the backend's RST on a flow a drain
    /// closed with a FIN, which would reach the client before it read the FIN.
    DrainHeld = 13,
    /// Egress: a packet from a backend's address on a connection the ingress did not steer
    /// (a health check, a scrape, an admin session to the backend's own address): passed
    /// untouched and not counted as service traffic.
    Unsteered = 14,
    /// Ingress: a steered packet sent straight to its backend's device (XDP redirect after a
    /// FIB lookup), past the node's IP forwarding path.
    Forwarded = 15,
    /// Ingress: a steered packet left to the node's stack because the FIB says so: a local
    /// backend, no route, forwarding off, a TTL about to expire.
    ForwardRouted = 16,
    /// Ingress: a steered packet left to the stack because the next hop has no neighbour entry
    /// yet (the stack resolves it).
    ForwardNoNeighbour = 17,
    /// Ingress: a steered packet left to the stack because it is larger than the next hop's MTU.
    ForwardTooBig = 18,
    /// Ingress: a steered packet left to the stack because its next hop's device is not one the
    /// redirect can reach (`FORWARD_DEVICES`).
    ForwardNoDevice = 19,
    /// Reply fast path (`split_reply`): a steered connection's reply translated where it
    /// entered the node and sent straight to its client's device. Its fallbacks count as the
    /// ingress's (`ForwardRouted`, `ForwardNoNeighbour`, `ForwardTooBig`, `ForwardNoDevice`).
    ReplyForwarded = 20,
}

impl PlaneCounter {
    pub const ALL: [PlaneCounter; 21] = [
        Self::NotIp,
        Self::NotService,
        Self::Fragment,
        Self::IpOptions,
        Self::Malformed,
        Self::SlotMiss,
        Self::ReplyPassed,
        Self::FlowInsertFailed,
        Self::Guarded,
        Self::CohortCandidate,
        Self::CohortLive,
        Self::LastResort,
        Self::DrainRaced,
        Self::DrainHeld,
        Self::Unsteered,
        Self::Forwarded,
        Self::ForwardRouted,
        Self::ForwardNoNeighbour,
        Self::ForwardTooBig,
        Self::ForwardNoDevice,
        Self::ReplyForwarded,
    ];

    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::NotIp => "not_ip",
            Self::NotService => "not_service",
            Self::Fragment => "fragment",
            Self::IpOptions => "ip_options",
            Self::Malformed => "malformed",
            Self::SlotMiss => "slot_miss",
            Self::ReplyPassed => "reply_passed",
            Self::FlowInsertFailed => "flow_insert_failed",
            Self::Guarded => "guarded",
            Self::CohortCandidate => "cohort_candidate",
            Self::CohortLive => "cohort_live",
            Self::LastResort => "last_resort",
            Self::DrainRaced => "drain_raced",
            Self::DrainHeld => "drain_held",
            Self::Unsteered => "unsteered",
            Self::Forwarded => "forwarded",
            Self::ForwardRouted => "forward_routed",
            Self::ForwardNoNeighbour => "forward_no_neighbour",
            Self::ForwardTooBig => "forward_too_big",
            Self::ForwardNoDevice => "forward_no_device",
            Self::ReplyForwarded => "reply_forwarded",
        }
    }
}

/// The new-flow rate guard of one CPU (`FLOW_GUARD`): a token bucket of new flow entries. Under
/// a flood of new flows the flow table would turn over and established flows would lose their
/// entries; past the rate, new flows are steered by hash without an entry, so the entries of
/// established flows stay.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowGuard {
    /// New flow entries per second this CPU may add, at most; 0 turns the guard off. Written by
    /// user space.
    pub rate_per_s: u64,
    /// The bucket, in units of 1/`GUARD_TOKEN` of a flow; holds one second of the rate.
    pub tokens: u64,
    /// When the bucket was last filled (`bpf_ktime_get_ns`).
    pub last_ns: u64,
}

/// What one flow entry costs in `FlowGuard::tokens`.
pub const GUARD_TOKEN: u64 = 1_000_000_000;
/// The highest guard rate, per CPU and second (config key `new_flow_rate_per_cpu`).
pub const MAX_GUARD_RATE: u64 = 10_000_000;

impl FlowGuard {
    /// Fills the bucket for the time since the last call and takes one flow's worth if there
    /// is one. True when the flow may have an entry.
    #[inline(always)]
    pub fn admit(&mut self, now_ns: u64) -> bool {
        if self.rate_per_s == 0 {
            return true;
        }
        // Both factors are bounded, so the products fit in 64 bits (no 128-bit multiply,
        // which BPF lacks): at most 1e7 × 1e9.
        let rate = self.rate_per_s.min(MAX_GUARD_RATE);
        let full = rate * GUARD_TOKEN;
        let elapsed = now_ns.saturating_sub(self.last_ns).min(GUARD_TOKEN);
        self.last_ns = now_ns;
        self.tokens = self.tokens.saturating_add(elapsed * rate).min(full);
        if self.tokens >= GUARD_TOKEN {
            self.tokens -= GUARD_TOKEN;
            true
        } else {
            false
        }
    }
}

/// Number of entries of `PLANE_STATS`.
pub const PLANE_COUNTERS: u32 = PlaneCounter::ALL.len() as u32;

#[cfg(test)]
mod guard_tests {
    use super::*;

    #[test]
    fn the_guard_admits_its_rate_and_a_second_of_burst() {
        let mut guard = FlowGuard {
            rate_per_s: 100,
            ..FlowGuard::default()
        };
        // A full second of tokens first (the bucket starts empty, last_ns 0).
        let t0 = 10 * GUARD_TOKEN;
        let burst = (0..1_000).filter(|_| guard.admit(t0)).count();
        assert_eq!(burst, 100, "one second of the rate at once");
        // Then 100 per second: 10 ms earns one.
        let steady = (1..=1_000u64)
            .filter(|i| guard.admit(t0 + i * 1_000_000))
            .count();
        assert_eq!(steady, 100, "over one second at 1 kHz");
        let mut off = FlowGuard::default();
        assert!((0..10_000).all(|_| off.admit(t0)), "rate 0 is off");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_built_keys_equal_field_built_keys() {
        let (src, dst) = ([198, 18, 0, 2], [198, 18, 0, 1]);
        let ports = u32::from_ne_bytes([0x9c, 0x40, 0x1f, 0x90]); // 40000, 8080
        let key = FlowKey::from_ipv4(
            u32::from_ne_bytes(src),
            u32::from_ne_bytes(dst),
            ports,
            PROTO_TCP,
        );
        let expected = FlowKey {
            src_addr: ipv4_mapped(src),
            dst_addr: ipv4_mapped(dst),
            src_port_be: 40_000u16.to_be(),
            dst_port_be: 8080u16.to_be(),
            protocol: PROTO_TCP,
            _pad: [0; 3],
        };
        assert_eq!(key, expected);
        assert_eq!(
            Endpoint::from_ipv4(
                u32::from_ne_bytes(dst),
                u16::from_ne_bytes(8080u16.to_be_bytes()),
                PROTO_UDP
            ),
            Endpoint::new(ipv4_mapped(dst), 8080, PROTO_UDP)
        );
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type is #[repr(C)], Copy, has no padding bytes left implicit (each struct
    // names its padding) and is valid for any bit pattern.
    unsafe impl aya::Pod for super::Endpoint {}
    unsafe impl aya::Pod for super::Service {}
    unsafe impl aya::Pod for super::Slot {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::Flow {}
    unsafe impl aya::Pod for super::CachedFlow {}
    unsafe impl aya::Pod for super::CachedReply {}
    unsafe impl<T: aya::Pod> aya::Pod for super::CacheSet<T> {}
    unsafe impl aya::Pod for super::NextHop {}
    unsafe impl aya::Pod for super::BackendInfo {}
    unsafe impl aya::Pod for super::VersionStats {}
    unsafe impl aya::Pod for super::Traffic {}
    unsafe impl aya::Pod for super::Histogram {}
    unsafe impl aya::Pod for super::FlowGuard {}
    unsafe impl aya::Pod for super::drain::Drain {}
    unsafe impl aya::Pod for super::l7::H2Conn {}
}
