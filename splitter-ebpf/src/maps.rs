//! Every map of the data plane, declared once. Names and sizes come from
//! `splitter_common::maps`; the table there says who writes each one.

use aya_ebpf::{
    bindings::BPF_F_NO_COMMON_LRU,
    macros::map,
    maps::{
        Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, lpm_trie::Key,
    },
};
use splitter_common::{
    BackendInfo, CacheSet, CachedFlow, CachedReply, Endpoint, Flow, FlowGuard, FlowKey, Histogram,
    NextHop, PLANE_COUNTERS, PlaneCounter, Service, Slot, Traffic, VersionStats,
    drain::Drain,
    l7::H2Conn,
    maps::{
        FLOW_CACHE_SETS, FLOW_CAPACITY_PER_CPU, FORWARD_SEEN_ENTRIES, LATENCY_ENTRIES,
        MAX_BACKENDS, MAX_COHORT_ENTRIES, MAX_DRAINS, MAX_FORWARD_DEVICES, MAX_H2_CONNS,
        MAX_HANDSHAKES, MAX_SERVICES, NEXT_HOP_SLOTS, PEER_DEVICE_SLOTS, POOL_SLOT_ENTRIES,
        PORT_ENTRIES, VERSION_STAT_ENTRIES,
    },
};

/// Service listen endpoint → service id. Written by user space.
#[map(name = "SERVICES")]
pub static SERVICES: HashMap<Endpoint, Service> = HashMap::with_max_entries(MAX_SERVICES, 0);

/// Destination port (host order) → number of services on it; a cheap pre-filter so that
/// traffic to other ports costs one array read. Written by user space.
#[map(name = "SERVICE_PORTS")]
pub static SERVICE_PORTS: Array<u32> = Array::with_max_entries(PORT_ENTRIES, 0);

/// Service id → split word. Written by user space, one write per change.
#[map(name = "SPLIT")]
pub static SPLIT: Array<u32> = Array::with_max_entries(MAX_SERVICES, 0);

/// (service, version, slot) → backend. Written by user space from the weighted pools.
#[map(name = "POOL_SLOTS")]
pub static POOL_SLOTS: Array<Slot> = Array::with_max_entries(POOL_SLOT_ENTRIES, 0);

/// 5-tuple → pinned backend. Created by ingress, closed by either program, purged by user space.
/// User space sets the size at load: entries per CPU × possible CPUs.
#[map(name = "FLOWS")]
pub static FLOWS: LruHashMap<FlowKey, Flow> =
    LruHashMap::with_max_entries(FLOW_CAPACITY_PER_CPU, BPF_F_NO_COMMON_LRU);

/// Per CPU: copies of flow entries for the established path, two ways per set.
#[map(name = "FLOW_CACHE")]
pub static FLOW_CACHE: PerCpuArray<CacheSet<CachedFlow>> =
    PerCpuArray::with_max_entries(FLOW_CACHE_SETS, 0);

/// Per CPU: reverse translations of steered IPv4 flows, by the reply's tuple, two ways per set.
#[map(name = "REPLY_CACHE")]
pub static REPLY_CACHE: PerCpuArray<CacheSet<CachedReply>> =
    PerCpuArray::with_max_entries(FLOW_CACHE_SETS, 0);

/// New flows the rate guard steered without a `FLOWS` entry → their backend, so that the
/// backend's SYN-ACK is recognised as theirs. A common LRU of its own: a flood turns it over,
/// never the flow table.
#[map(name = "HANDSHAKES")]
pub static HANDSHAKES: LruHashMap<FlowKey, Slot> = LruHashMap::with_max_entries(MAX_HANDSHAKES, 0);

/// HTTP/2 connections being read → how far each side's frames were read and the calls in
/// flight. Created by ingress when a connection's client preface is seen.
#[map(name = "H2_CONNS")]
pub static H2_CONNS: LruHashMap<FlowKey, H2Conn> = LruHashMap::with_max_entries(MAX_H2_CONNS, 0);

/// Per CPU: where a new `H2_CONNS` entry is built before it is inserted (the stack has no room
/// for it beside the steering code's). Not pinned: it holds nothing between packets.
#[map(name = "H2_FRESH")]
pub static H2_FRESH: PerCpuArray<H2Conn> = PerCpuArray::with_max_entries(1, 0);

/// Per CPU: the HTTP/2 client payload the ingress leaves for `split_h2`. Not pinned.
#[map(name = "H2_PENDING")]
pub static H2_PENDING: PerCpuArray<crate::l7::H2Pending> = PerCpuArray::with_max_entries(1, 0);

/// `PROGRAM_H2` at `L7_PROGRAM_H2`. Written by user space.
#[map(name = "L7_PROGRAMS")]
pub static L7_PROGRAMS: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Per CPU: the HTTP/2 server payload a TC program leaves for `split_h2_reply`. Not pinned.
#[map(name = "H2_TC_PENDING")]
pub static H2_TC_PENDING: PerCpuArray<crate::l7::H2Pending> = PerCpuArray::with_max_entries(1, 0);

/// `PROGRAM_H2_REPLY` at `L7_PROGRAM_H2` (the TC programs' own array: a program array holds
/// programs of one type). Written by user space.
#[map(name = "TC_L7_PROGRAMS")]
pub static TC_L7_PROGRAMS: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// The devices the fast path may redirect steered packets to (ifindex → the device). Written by
/// user space: in generic XDP every device of the namespace but loopback, natively the devices
/// whose driver takes redirected frames from another device.
#[map(name = "FORWARD_DEVICES")]
pub static FORWARD_DEVICES: DevMapHash = DevMapHash::with_max_entries(MAX_FORWARD_DEVICES, 0);

/// Per `ifindex % PEER_DEVICE_SLOTS`: the index of a device of `FORWARD_DEVICES` whose other
/// end is in another network namespace, to which the replies' fast path hands a packet
/// straight (0: none). Written by user space.
#[map(name = "PEER_DEVICES")]
pub static PEER_DEVICES: Array<u32> = Array::with_max_entries(PEER_DEVICE_SLOTS, 0);

/// Per CPU: the fast path's next hops of IPv4 backends, by address, two ways per set.
#[map(name = "NEXT_HOPS")]
pub static NEXT_HOPS: PerCpuArray<NextHop> = PerCpuArray::with_max_entries(NEXT_HOP_SLOTS, 0);

/// Per CPU: the replies' fast path's next hops of IPv4 clients, by address, as `NEXT_HOPS`.
#[map(name = "REPLY_HOPS")]
pub static REPLY_HOPS: PerCpuArray<NextHop> = PerCpuArray::with_max_entries(NEXT_HOP_SLOTS, 0);

/// Devices the fast path sent packets to, by `ifindex % FORWARD_SEEN_ENTRIES`: user space
/// attaches the reply program there. Written when the FIB is asked, not per packet.
#[map(name = "FORWARD_SEEN")]
pub static FORWARD_SEEN: Array<u32> = Array::with_max_entries(FORWARD_SEEN_ENTRIES, 0);

/// Backend endpoint → its service, for reverse translation. Written by user space.
#[map(name = "BACKENDS")]
pub static BACKENDS: HashMap<Endpoint, BackendInfo> = HashMap::with_max_entries(MAX_BACKENDS, 0);

/// (service, version) → counters, per CPU (all but the traffic counts).
#[map(name = "VERSION_STATS")]
pub static VERSION_STATS: PerCpuArray<VersionStats> =
    PerCpuArray::with_max_entries(VERSION_STAT_ENTRIES, 0);

/// (service, version) → packets and bytes each way, per CPU: the counts every packet adds, in
/// 32 bytes of their own (`Traffic`).
#[map(name = "VERSION_TRAFFIC")]
pub static VERSION_TRAFFIC: PerCpuArray<Traffic> =
    PerCpuArray::with_max_entries(VERSION_STAT_ENTRIES, 0);

/// (service, version, kind) → log2 µs latency histogram, per CPU.
#[map(name = "LATENCY")]
pub static LATENCY: PerCpuArray<Histogram> = PerCpuArray::with_max_entries(LATENCY_ENTRIES, 0);

/// `PlaneCounter` → packets, per CPU.
#[map(name = "PLANE_STATS")]
pub static PLANE_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(PLANE_COUNTERS, 0);

/// The new-flow rate guard, per CPU: its rate written by user space, its bucket by ingress.
#[map(name = "FLOW_GUARD")]
pub static FLOW_GUARD: PerCpuArray<FlowGuard> = PerCpuArray::with_max_entries(1, 0);

/// (service id, client prefix) → `COHORT_CANDIDATE` or `COHORT_LIVE`. Written by user space.
#[map(name = "COHORTS")]
pub static COHORTS: LpmTrie<[u8; 20], u32> =
    LpmTrie::with_max_entries(MAX_COHORT_ENTRIES, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// Flows being drained → what the programs have seen of them. Created (zeroed) and deleted by
/// user space; both programs update them in place. Allocated as entries come
/// (`BPF_F_NO_PREALLOC`): empty but for drains, it costs no memory the rest of the time.
#[map(name = "DRAINS")]
pub static DRAINS: HashMap<FlowKey, Drain> =
    HashMap::with_max_entries(MAX_DRAINS, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// Flows being closed by a drain → `CLOSE_FIN` or `CLOSE_RESET`. Written by user space;
/// allocated as entries come, like `DRAINS`.
#[map(name = "DRAIN_CLOSING")]
pub static DRAIN_CLOSING: HashMap<FlowKey, u32> =
    HashMap::with_max_entries(MAX_DRAINS, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// One word, non-zero while a drain is under way. Written by user space.
#[map(name = "DRAIN_ACTIVE")]
pub static DRAIN_ACTIVE: Array<u32> = Array::with_max_entries(1, 0);

/// The cohort of a client of service `id`, if its address falls in one.
#[inline(always)]
pub fn cohort_of(id: u32, addr: &splitter_common::Addr) -> Option<u32> {
    let key = Key::new(160, splitter_common::cohort_data(id, addr));
    COHORTS.get(&key).copied()
}

/// Whether a new flow may take a flow-table entry now (the rate guard of this CPU).
#[inline(always)]
pub fn guard_admits(now_ns: u64) -> bool {
    match FLOW_GUARD.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, no other writer on this CPU while the program runs.
        Some(guard) => unsafe { (*guard).admit(now_ns) },
        None => true,
    }
}

#[inline(always)]
pub fn count(counter: PlaneCounter) {
    if let Some(slot) = PLANE_STATS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, no other writer on this CPU while the program runs.
        unsafe { *slot += 1 };
    }
}

/// Runs `update` on the (service, version) counters of this CPU.
#[inline(always)]
pub fn with_stats(index: u32, update: impl FnOnce(&mut VersionStats)) {
    if let Some(stats) = VERSION_STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no other writer on this CPU while the program runs.
        update(unsafe { &mut *stats });
    }
}

/// Counts a packet of `len` bytes on version `index`: in (client → backend) or out.
#[inline(always)]
pub fn count_traffic(index: u32, inbound: bool, len: u64) {
    if let Some(traffic) = VERSION_TRAFFIC.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no other writer on this CPU while the program runs.
        let traffic = unsafe { &mut *traffic };
        if inbound {
            traffic.packets_in += 1;
            traffic.bytes_in += len;
        } else {
            traffic.packets_out += 1;
            traffic.bytes_out += len;
        }
    }
}

/// Adds a latency of `ns` nanoseconds to histogram `index` of this CPU.
#[inline(always)]
pub fn record_latency(index: u32, ns: u64) {
    if let Some(histogram) = LATENCY.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no other writer on this CPU while the program runs.
        let histogram = unsafe { &mut *histogram };
        let us = ns / 1_000;
        let bucket = Histogram::bucket(us);
        if let Some(count) = histogram.buckets.get_mut(bucket) {
            *count += 1;
        }
        histogram.sum_us += us;
        histogram.count += 1;
    }
}
