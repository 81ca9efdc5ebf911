//! The per-CPU flow cache in front of `FLOWS`, and the reply cache in front of the egress's
//! lookups. A key's set (`FlowCacheKey::set`) has two ways; an established IPv4 packet whose
//! set holds its flow is steered from it: one inlined per-CPU array read and a compare of two
//! words (the addresses, then the ports, protocol and valid byte; two such compares when the
//! flow sits in the second way), where the LRU hash lookup costs a jhash and a call. A way also
//! keeps a copy of its backend's next hop for the express lane (`express.rs`). The reply cache
//! is keyed alike, by the reply's own tuple.
//! Correctness rests on three rules:
//! - a way is only ever filled with what `FLOWS` says (or what a new flow just put there), and
//!   its next hop with what `NEXT_HOPS` says, with the time the FIB said it;
//! - a new flow clears its key's set on every CPU before it fills its own way, so no CPU can
//!   keep a previous connection's backend for a reused 5-tuple;
//! - nothing is copied from one way to another (a copy could bring back what a clear from
//!   another CPU had just removed).

use aya_ebpf::{cty::c_void, helpers::generated::bpf_map_lookup_percpu_elem, maps::PerCpuArray};
use splitter_common::{
    CACHE_WAYS, CacheSet, CachedFlow, CachedReply, FlowCacheKey, FlowKey, NextHop, WayKey,
    maps::MAX_CPUS,
};

use crate::maps::{FLOW_CACHE, REPLY_CACHE};

/// Where to send a packet: what the rewrite and the counters need of a flow.
#[derive(Clone, Copy)]
pub struct Target {
    /// The backend's IPv4 address and port, in memory order.
    pub addr: u32,
    pub port: u16,
    pub stats: u32,
    /// The checksum deltas of the rewrite (see `CachedFlow`).
    pub ip_delta: u32,
    pub l4_delta: u32,
}

impl Target {
    /// What a cached way says.
    #[inline(always)]
    pub fn of(way: &CachedFlow) -> Self {
        Self {
            addr: way.hop.addr,
            port: way.port,
            stats: way.stats_index,
            ip_delta: way.ip_delta,
            l4_delta: way.l4_delta,
        }
    }
}

/// The way of this CPU's `set` that holds `key`'s flow, if one does: the first two words of
/// each way compared whole.
#[inline(always)]
pub fn find(set: u32, key: &FlowCacheKey) -> Option<&'static mut CachedFlow> {
    let ways = FLOW_CACHE.get_ptr_mut(set)?;
    // SAFETY: this CPU's value, valid for the run; nothing else on this CPU writes it while the
    // program runs.
    find_in(unsafe { &mut (*ways).ways }, key)
}

/// The way of this CPU's `set` of the reply cache that holds `key` (the reply's own tuple).
#[inline(always)]
pub fn find_reply(set: u32, key: &FlowCacheKey) -> Option<&'static CachedReply> {
    let ways = REPLY_CACHE.get_ptr_mut(set)?;
    // SAFETY: as in `find`.
    find_in(unsafe { &mut (*ways).ways }, key).map(|way| &*way)
}

/// A way of either cache: it starts with its key.
trait Way {
    fn key(&self) -> &WayKey;
    fn key_mut(&mut self) -> &mut WayKey;
}

impl Way for CachedFlow {
    #[inline(always)]
    fn key(&self) -> &WayKey {
        &self.key
    }
    #[inline(always)]
    fn key_mut(&mut self) -> &mut WayKey {
        &mut self.key
    }
}

impl Way for CachedReply {
    #[inline(always)]
    fn key(&self) -> &WayKey {
        &self.key
    }
    #[inline(always)]
    fn key_mut(&mut self) -> &mut WayKey {
        &mut self.key
    }
}

#[inline(always)]
fn find_in<'a, W: Way>(ways: &'a mut [W; CACHE_WAYS], key: &FlowCacheKey) -> Option<&'a mut W> {
    let words = key.words();
    let [first, second] = ways;
    if first.key().holds(&words) {
        Some(first)
    } else if second.key().holds(&words) {
        Some(second)
    } else {
        None
    }
}

/// The way `key` is to be written to: the one holding it, else an empty one, else the second.
/// Nothing is copied from way to way: a way is written only with what `FLOWS` said in this run,
/// so a clear from another CPU that lands during the fill cannot be undone by a copy of what
/// it cleared. The first way keeps its flow until a new flow in the set empties the set.
#[inline(always)]
fn way_for<'a, W: Way>(ways: &'a mut [W; CACHE_WAYS], key: &FlowCacheKey) -> &'a mut W {
    let words = key.words();
    let [first, second] = ways;
    if first.key().holds(&words) {
        first
    } else if second.key().holds(&words) || first.key().is_valid() {
        second
    } else {
        first
    }
}

/// Puts `key`'s target in this CPU's set (see `way_for`). The next hop is left to the flow's
/// next packet (`NextHop::asked_ns` 0).
#[inline(never)]
pub fn fill(set: u32, key: &FlowKey, target: &Target) {
    let Some(ways) = FLOW_CACHE.get_ptr_mut(set) else {
        return;
    };
    let key = key.cache_key();
    // SAFETY: as in `find`.
    *way_for(unsafe { &mut (*ways).ways }, &key) = CachedFlow {
        key: WayKey::of(&key),
        stats_index: target.stats,
        ip_delta: target.ip_delta,
        l4_delta: target.l4_delta,
        port: target.port,
        hop: NextHop {
            addr: target.addr,
            ..NextHop::default()
        },
        ..CachedFlow::default()
    };
}

/// Puts a steered flow's reverse translation in this CPU's set (`reply.key` is the reply's
/// tuple).
#[inline(never)]
pub fn fill_reply(set: u32, reply: &CachedReply) {
    if let Some(ways) = REPLY_CACHE.get_ptr_mut(set) {
        // SAFETY: as in `find`.
        *way_for(unsafe { &mut (*ways).ways }, &reply.key.key()) = *reply;
    }
}

/// Clears `set` of the flow cache on every CPU; called when a new flow is recorded. A
/// subprogram: the verifier walks its loop once per path that calls it.
#[inline(never)]
pub fn forget_everywhere(set: u32) {
    clear_on_every_cpu(&FLOW_CACHE, set);
}

/// Clears `set` of the reply cache on every CPU: a tuple of it now belongs to another
/// connection (a new flow, or a handshake that no steered flow owns).
#[inline(never)]
pub fn forget_reply_everywhere(set: u32) {
    clear_on_every_cpu(&REPLY_CACHE, set);
}

/// Marks both ways of `set` invalid on every CPU: the one that may hold `key`, and the other
/// flow's too. Comparing each way's key before clearing it would spare that flow a refill, but
/// the compares, once per CPU the loop may reach, take the ingress past the verifier's limit.
#[inline(always)]
fn clear_on_every_cpu<W: Way>(cache: &PerCpuArray<CacheSet<W>>, set: u32) {
    let map = (cache as *const PerCpuArray<CacheSet<W>>)
        .cast::<c_void>()
        .cast_mut();
    let index = (&raw const set).cast::<c_void>();
    for cpu in 0..MAX_CPUS {
        // SAFETY: a map of this program and a key that lives across the call.
        let ways = unsafe { bpf_map_lookup_percpu_elem(map, index, cpu) }.cast::<CacheSet<W>>();
        if ways.is_null() {
            break; // past the last possible CPU
        }
        // SAFETY: a valid map value pointer; a racing reader sees either state, both safe.
        for way in unsafe { &mut (*ways).ways } {
            way.key_mut().valid = 0;
        }
    }
}
