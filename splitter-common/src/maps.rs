//! Names and sizes of every map. The kernel programs declare the maps with these; user space
//! opens, pins and checks them with these. Who writes each map:
//!
//! | map | kind | written by | holds |
//! |---|---|---|---|
//! | `SERVICES` | hash | user space | service `Endpoint` → `Service` (its id, flags and split-word index) |
//! | `SERVICE_PORTS` | array | user space | per destination port (host order): how many services listen on it |
//! | `SPLIT` | array | user space | per service id: the `SplitWord` (a release group uses its first service's) |
//! | `POOL_SLOTS` | array | user space | per (service, pool): `SLOTS_PER_POOL` backend `Slot`s (blue, green, last resort) |
//! | `FLOWS` | LRU hash (no common LRU) | XDP ingress, TC egress (state), user space (purge) | `FlowKey` → `Flow` |
//! | `FLOW_CACHE` | per-CPU array | XDP ingress, user space (clear) | per set (`FlowCacheKey::set`): two `CachedFlow` ways of IPv4 flows copied from `FLOWS`, each with a copy of its backend's `NEXT_HOPS` entry |
//! | `NEXT_HOPS` | per-CPU array | XDP ingress | per slot (two ways per set, by the backend's address): the `NextHop` the FIB gave for an IPv4 backend, and when |
//! | `REPLY_HOPS` | per-CPU array | TC reply program | per slot (two ways per set, by the client's address, as `NEXT_HOPS`): the `NextHop` the FIB gave for an IPv4 client, and when |
//! | `FORWARD_DEVICES` | devmap hash | user space | ifindex → the device: the devices the ingress may redirect steered packets to |
//! | `PEER_DEVICES` | array | user space | per `ifindex % PEER_DEVICE_SLOTS`: the ifindex of a device of `FORWARD_DEVICES` that is a veth (or netkit) whose other end is in another network namespace, to which the replies' fast path hands a packet straight (`bpf_redirect_peer`); 0: none |
//! | `FORWARD_SEEN` | array | XDP ingress | per `ifindex % FORWARD_SEEN_ENTRIES`: a device the fast path sent packets to, where the reply program goes |
//! | `REPLY_CACHE` | per-CPU array | TC egress (fill, clear), user space (clear) | per set (`FlowCacheKey::set`): two `CachedReply` ways of steered IPv4 flows, keyed by the reply's tuple |
//! | `HANDSHAKES` | LRU hash | XDP ingress | `FlowKey` → the backend's `Slot` of a new flow the rate guard steered without a `FLOWS` entry, so its SYN-ACK is still translated |
//! | `H2_CONNS` | LRU hash | XDP ingress (create, client frames), TC egress (server frames) | `FlowKey` → `H2Conn`: how far an HTTP/2 connection's frames were read, and its calls in flight |
//! | `L7_PROGRAMS` | program array | user space | `PROGRAM_H2`, which the ingress tail-calls to read an HTTP/2 client payload's frames |
//! | `H2_PENDING` | per-CPU array, not pinned | XDP ingress, `split_h2` | the payload the ingress leaves for `split_h2` |
//! | `TC_L7_PROGRAMS` | program array | user space | `PROGRAM_H2_REPLY`, which the TC programs tail-call to read an HTTP/2 server payload's frames |
//! | `H2_TC_PENDING` | per-CPU array, not pinned | TC egress and reply programs, `split_h2_reply` | the payload they leave for `split_h2_reply` |
//! | `H2_FRESH` | per-CPU array, not pinned | XDP ingress | where a new `H2Conn` is built before its insert |
//! | `BACKENDS` | hash | user space | backend `Endpoint` → `BackendInfo` (which service a steered flow's replies speak for) |
//! | `VERSION_STATS` | per-CPU array | both programs | per (service, pool): `VersionStats` (all but the traffic counts) |
//! | `VERSION_TRAFFIC` | per-CPU array | both programs | per (service, pool): `Traffic`, the packets and bytes each way |
//! | `LATENCY` | per-CPU array | TC egress | per (service, version, kind): a log-linear µs `Histogram` (8 buckets per octave) |
//! | `PLANE_STATS` | per-CPU array | both programs | per `PlaneCounter`: packets |
//! | `FLOW_GUARD` | per-CPU array | user space (rate), XDP ingress (tokens) | one `FlowGuard` |
//! | `COHORTS` | LPM trie | user space | (service id, client prefix) → `COHORT_CANDIDATE` or `COHORT_LIVE` |
//! | `DRAINS` | hash | user space (create, delete), both programs (what they see) | `FlowKey` → `Drain` of a flow being drained |
//! | `DRAIN_CLOSING` | hash | user space | `FlowKey` → `CLOSE_FIN` or `CLOSE_RESET`: the flow is being closed |
//! | `DRAIN_ACTIVE` | array | user space | one word: non-zero while `DRAINS` has entries, so other flows skip its lookup |
//! | `REPORTS` | per-CPU array, not pinned | XDP ingress | per `PlaneCounter`: when a rare event was last reported |
//! | `AYA_LOGS` | ring buffer, not pinned | XDP ingress (aya-log) | the rare events' records, read by the daemon |

pub const SERVICES: &str = "SERVICES";
pub const SERVICE_PORTS: &str = "SERVICE_PORTS";
pub const SPLIT: &str = "SPLIT";
pub const POOL_SLOTS: &str = "POOL_SLOTS";
pub const FLOWS: &str = "FLOWS";
pub const FLOW_CACHE: &str = "FLOW_CACHE";
pub const REPLY_CACHE: &str = "REPLY_CACHE";
pub const FORWARD_DEVICES: &str = "FORWARD_DEVICES";
pub const PEER_DEVICES: &str = "PEER_DEVICES";
pub const FORWARD_SEEN: &str = "FORWARD_SEEN";
pub const NEXT_HOPS: &str = "NEXT_HOPS";
pub const REPLY_HOPS: &str = "REPLY_HOPS";
pub const HANDSHAKES: &str = "HANDSHAKES";
pub const H2_CONNS: &str = "H2_CONNS";
pub const L7_PROGRAMS: &str = "L7_PROGRAMS";
/// `L7_PROGRAMS`: where `PROGRAM_H2` is; `TC_L7_PROGRAMS`: where `PROGRAM_H2_REPLY` is.
pub const L7_PROGRAM_H2: u32 = 0;
pub const TC_L7_PROGRAMS: &str = "TC_L7_PROGRAMS";
pub const BACKENDS: &str = "BACKENDS";
pub const VERSION_STATS: &str = "VERSION_STATS";
pub const VERSION_TRAFFIC: &str = "VERSION_TRAFFIC";
pub const LATENCY: &str = "LATENCY";
pub const PLANE_STATS: &str = "PLANE_STATS";
pub const FLOW_GUARD: &str = "FLOW_GUARD";
pub const COHORTS: &str = "COHORTS";
pub const DRAINS: &str = "DRAINS";
pub const DRAIN_CLOSING: &str = "DRAIN_CLOSING";
pub const DRAIN_ACTIVE: &str = "DRAIN_ACTIVE";
/// Per-CPU state of the kernel's rare-event reports (`report.rs` in splitter-ebpf); not pinned.
pub const REPORTS: &str = "REPORTS";

/// Every map, in the order user space opens them.
pub const ALL: [&str; 26] = [
    SERVICES,
    SERVICE_PORTS,
    SPLIT,
    POOL_SLOTS,
    FLOWS,
    FLOW_CACHE,
    REPLY_CACHE,
    HANDSHAKES,
    H2_CONNS,
    L7_PROGRAMS,
    TC_L7_PROGRAMS,
    FORWARD_DEVICES,
    PEER_DEVICES,
    FORWARD_SEEN,
    NEXT_HOPS,
    REPLY_HOPS,
    BACKENDS,
    VERSION_STATS,
    VERSION_TRAFFIC,
    LATENCY,
    PLANE_STATS,
    FLOW_GUARD,
    COHORTS,
    DRAINS,
    DRAIN_CLOSING,
    DRAIN_ACTIVE,
];

/// Maps that hold only measurements (counters and histograms) or copies (the caches). When a
/// new build changes one's layout, a starting daemon replaces its pin with a new, empty map
/// instead of refusing to start: the measurements start again, the caches fill again from
/// `FLOWS`, and nothing that steers traffic is lost. (`H2_CONNS` too: its connections are then
/// counted as untracked, and new ones are read again.)
pub const REPLACEABLE: [&str; 9] = [
    VERSION_STATS,
    VERSION_TRAFFIC,
    LATENCY,
    PLANE_STATS,
    FLOW_CACHE,
    REPLY_CACHE,
    NEXT_HOPS,
    REPLY_HOPS,
    H2_CONNS,
];

/// Flows one data plane drains at once; past it, the rest wait for the next round.
pub const MAX_DRAINS: u32 = 16_384;

/// Cohort prefixes one data plane holds, over all services.
pub const MAX_COHORT_ENTRIES: u32 = 4096;
/// Services (and so split words) one data plane holds.
pub const MAX_SERVICES: u32 = 128;
/// Slots per pool: a power of two, so the kernel masks instead of dividing.
pub const SLOTS_PER_POOL: u32 = 256;
const _: () = assert!(SLOTS_PER_POOL.is_power_of_two());
/// Backends one data plane holds, over all services and pools.
pub const MAX_BACKENDS: u32 = 4096;
/// Sets of the flow cache and of the reply cache, per CPU: a power of two. Each set holds
/// `CACHE_WAYS` flows, so a cache holds 4,096 flows per CPU.
pub const FLOW_CACHE_SETS: u32 = 2048;
const _: () = assert!(FLOW_CACHE_SETS.is_power_of_two());
/// Slots of `NEXT_HOPS`, per CPU: a power of two, in sets of two ways; as many as backends,
/// so that every backend keeps its next hop. `REPLY_HOPS` has as many, by the same set function
/// (`NextHop::first_way`): clients are many more, and a client's next hop that lost its way
/// costs its reply a FIB lookup, never a backend's packet one.
pub const NEXT_HOP_SLOTS: u32 = MAX_BACKENDS;
const _: () = assert!(NEXT_HOP_SLOTS.is_power_of_two());
/// Slots of `PEER_DEVICES`: devices by `ifindex % PEER_DEVICE_SLOTS`. Of two devices in one
/// slot, the one with the smaller index is listed; the other's replies take a plain redirect.
pub const PEER_DEVICE_SLOTS: u32 = 1024;
/// Entries of `FORWARD_SEEN`: devices by `ifindex % FORWARD_SEEN_ENTRIES`.
pub const FORWARD_SEEN_ENTRIES: u32 = 64;
/// Devices the fast path may redirect to, at most.
pub const MAX_FORWARD_DEVICES: u32 = 1024;
/// Handshakes of guarded new flows remembered at once (`HANDSHAKES`), over all CPUs: a flood
/// turns them over, never the flow table.
pub const MAX_HANDSHAKES: u32 = 8192;
/// HTTP/2 connections whose frames are read at once (`H2_CONNS`), over all CPUs; the least
/// recently used one is forgotten past it (its calls then go unread, never misread: a
/// connection without an entry is not read).
pub const MAX_H2_CONNS: u32 = 16_384;
/// CPUs whose flow-cache set a new flow clears; more than any host this runs on.
pub const MAX_CPUS: u32 = 512;
/// Default flow-table entries per possible CPU (config key `flow_table_per_cpu`). With
/// `BPF_F_NO_COMMON_LRU` each CPU allocates and evicts within its own share of the table, so
/// the table is sized per CPU: a CPU that receives every SYN must still hold this many flows.
pub const FLOW_CAPACITY_PER_CPU: u32 = 16_384;

/// Entries of `SERVICE_PORTS`: one per port.
pub const PORT_ENTRIES: u32 = 65_536;
/// Entries of `VERSION_STATS` and `VERSION_TRAFFIC`: blue, green and the last-resort pool of
/// every service.
pub const VERSION_STAT_ENTRIES: u32 = MAX_SERVICES * 3;
/// Entries of `POOL_SLOTS`: a slot table per entry of `VERSION_STATS`.
pub const POOL_SLOT_ENTRIES: u32 = VERSION_STAT_ENTRIES * SLOTS_PER_POOL;
/// Entries of `LATENCY`: a histogram per `LatencyKind` and (service, version).
pub const LATENCY_ENTRIES: u32 = VERSION_STAT_ENTRIES * crate::LATENCY_KINDS;

/// Names of the programs in the object.
pub const PROGRAM_INGRESS: &str = "split_ingress";
pub const PROGRAM_EGRESS: &str = "split_egress";
/// The reply fast path, at the TC ingress of the devices the fast path sends to.
pub const PROGRAM_REPLY: &str = "split_reply";
/// The ingress's tail call that reads an HTTP/2 client payload's frames (`L7_PROGRAMS`).
pub const PROGRAM_H2: &str = "split_h2";
/// The TC programs' tail call that reads an HTTP/2 server payload's frames (`TC_L7_PROGRAMS`).
pub const PROGRAM_H2_REPLY: &str = "split_h2_reply";
/// A program that only returns `XDP_PASS`: the baseline of the benchmarks. Never attached.
pub const PROGRAM_BASELINE: &str = "xdp_baseline";
/// A classifier that only returns TCX_NEXT: the egress benchmarks' baseline. Never attached.
pub const PROGRAM_TC_BASELINE: &str = "tc_baseline";
