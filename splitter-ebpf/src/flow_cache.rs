//! The per-CPU flow cache in front of `FLOWS`, and the reply cache in front of the egress's
//! lookups. A key's set (`FlowKey::cache_set`) has two ways; an established packet whose set
//! holds its key is steered from it: one inlined per-CPU array read and a 40-byte compare (two
//! when the key sits in the second way), where the LRU hash lookup costs a jhash and a call.
//! Correctness rests on three rules:
//! - a way is only ever filled with what `FLOWS` says (or what a new flow just put there);
//! - a new flow clears its key's set on every CPU before it fills its own way, so no CPU can
//!   keep a previous connection's backend for a reused 5-tuple;
//! - nothing is copied from one way to another (a copy could bring back what a clear from
//!   another CPU had just removed).

use aya_ebpf::{cty::c_void, helpers::generated::bpf_map_lookup_percpu_elem, maps::PerCpuArray};
use splitter_common::{CACHE_VALID, CacheSet, CachedFlow, CachedReply, FlowKey, maps::MAX_CPUS};

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

/// A way of either cache: it starts with its key, then its valid word.
trait Way {
    fn key(&self) -> &FlowKey;
    fn valid(&self) -> u32;
    fn invalidate(&mut self);
}

/// Both caches' ways have the same `key` and `valid` fields.
macro_rules! way {
    ($($cache:ty),*) => {$(
        impl Way for $cache {
            #[inline(always)]
            fn key(&self) -> &FlowKey {
                &self.key
            }
            #[inline(always)]
            fn valid(&self) -> u32 {
                self.valid
            }
            #[inline(always)]
            fn invalidate(&mut self) {
                self.valid = 0;
            }
        }
    )*};
}

way!(CachedFlow, CachedReply);

#[inline(always)]
fn words(key: &FlowKey) -> &[u64; 5] {
    // SAFETY: FlowKey is 40 bytes and 8-aligned.
    unsafe { &*(key as *const FlowKey).cast::<[u64; 5]>() }
}

/// Whether a way's key is `key`, five word compares.
#[inline(always)]
fn same(way_key: &FlowKey, key: &FlowKey) -> bool {
    let (a, b) = (words(way_key), words(key));
    a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4]
}

#[inline(always)]
fn holds<W: Way>(way: &W, key: &FlowKey) -> bool {
    way.valid() == CACHE_VALID && same(way.key(), key)
}

/// The way of `set` that holds `key`, if one does.
#[inline(always)]
fn find<'a, W: Way>(set: &'a CacheSet<W>, key: &FlowKey) -> Option<&'a W> {
    let [first, second] = &set.ways;
    if holds(first, key) {
        Some(first)
    } else if holds(second, key) {
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
fn way_for<'a, W: Way>(set: &'a mut CacheSet<W>, key: &FlowKey) -> &'a mut W {
    let [first, second] = &mut set.ways;
    if holds(&*first, key) {
        first
    } else if holds(&*second, key) || first.valid() == CACHE_VALID {
        second
    } else {
        first
    }
}

/// The cached target of `key` on this CPU, if its set holds it.
#[inline(always)]
pub fn get(set: u32, key: &FlowKey) -> Option<Target> {
    let entry = find(FLOW_CACHE.get(set)?, key)?;
    Some(Target {
        addr: entry.addr,
        port: entry.port,
        stats: entry.stats_index,
        ip_delta: entry.ip_delta,
        l4_delta: entry.l4_delta,
    })
}

/// Puts `key`'s target in this CPU's set.
#[inline(never)]
pub fn fill(set: u32, key: &FlowKey, target: &Target) {
    if let Some(ways) = FLOW_CACHE.get_ptr_mut(set) {
        // SAFETY: this CPU's value; nothing else writes it while the program runs.
        let entry = way_for(unsafe { &mut *ways }, key);
        entry.key = *key;
        entry.addr = target.addr;
        entry.port = target.port;
        entry.stats_index = target.stats;
        entry.ip_delta = target.ip_delta;
        entry.l4_delta = target.l4_delta;
        entry.valid = CACHE_VALID;
    }
}

/// The reverse translation of a steered IPv4 flow, by the reply's own tuple: the egress
/// program's counterpart of `Target`.
#[inline(always)]
pub fn get_reply(set: u32, key: &FlowKey) -> Option<CachedReply> {
    find(REPLY_CACHE.get(set)?, key).copied()
}

/// Puts a steered flow's reverse translation in this CPU's set (`reply.key` is the reply's
/// tuple).
#[inline(never)]
pub fn fill_reply(set: u32, reply: &CachedReply) {
    if let Some(ways) = REPLY_CACHE.get_ptr_mut(set) {
        // SAFETY: this CPU's value; nothing else writes it while the program runs.
        *way_for(unsafe { &mut *ways }, &reply.key) = *reply;
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
            way.invalidate();
        }
    }
}
