//! The per-CPU flow cache in front of `FLOWS`. An established packet whose slot holds its key
//! is steered from the slot: one inlined per-CPU array read and a 40-byte compare, where the
//! LRU hash lookup costs a jhash and a call. Correctness rests on two rules:
//! - a slot is only ever filled with what `FLOWS` says (or what a new flow just put there);
//! - a new flow clears its slot on every CPU before it fills its own, so no CPU can keep a
//!   previous connection's backend for a reused 5-tuple.

use aya_ebpf::{cty::c_void, helpers::generated::bpf_map_lookup_percpu_elem, maps::PerCpuArray};
use splitter_common::{CACHE_VALID, CachedFlow, CachedReply, FlowKey, maps::MAX_CPUS};

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

#[inline(always)]
fn words(key: &FlowKey) -> &[u64; 5] {
    // SAFETY: FlowKey is 40 bytes and 8-aligned.
    unsafe { &*(key as *const FlowKey).cast::<[u64; 5]>() }
}

/// Whether a slot's key is `key`, five word compares.
#[inline(always)]
fn same(slot_key: &FlowKey, key: &FlowKey) -> bool {
    let (a, b) = (words(slot_key), words(key));
    a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4]
}

/// The cached target of `key` on this CPU, if its slot holds it.
#[inline(always)]
pub fn get(slot: u32, key: &FlowKey) -> Option<Target> {
    let entry = FLOW_CACHE.get(slot)?;
    if entry.valid == CACHE_VALID && same(&entry.key, key) {
        Some(Target {
            addr: entry.addr,
            port: entry.port,
            stats: entry.stats_index,
            ip_delta: entry.ip_delta,
            l4_delta: entry.l4_delta,
        })
    } else {
        None
    }
}

/// Puts `key`'s target in this CPU's slot.
#[inline(always)]
pub fn fill(slot: u32, key: &FlowKey, target: &Target) {
    if let Some(entry) = FLOW_CACHE.get_ptr_mut(slot) {
        // SAFETY: this CPU's value; nothing else writes it while the program runs.
        let entry = unsafe { &mut *entry };
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
pub fn get_reply(slot: u32, key: &FlowKey) -> Option<CachedReply> {
    let entry = REPLY_CACHE.get(slot)?;
    if entry.valid == CACHE_VALID && same(&entry.key, key) {
        Some(*entry)
    } else {
        None
    }
}

/// Puts a steered flow's reverse translation in this CPU's slot (`reply.key` is the reply's
/// tuple).
#[inline(always)]
pub fn fill_reply(slot: u32, reply: &CachedReply) {
    if let Some(entry) = REPLY_CACHE.get_ptr_mut(slot) {
        // SAFETY: this CPU's value; nothing else writes it while the program runs.
        unsafe { *entry = *reply };
    }
}

/// Clears `slot` of the flow cache on every CPU; called when a new flow is recorded.
#[inline(always)]
pub fn forget_everywhere(slot: u32) {
    clear_on_every_cpu(&FLOW_CACHE, slot);
}

/// Clears `slot` of the reply cache on every CPU: its tuple now belongs to another connection
/// (a new flow, or a handshake that no steered flow owns).
#[inline(always)]
pub fn forget_reply_everywhere(slot: u32) {
    clear_on_every_cpu(&REPLY_CACHE, slot);
}

/// Marks `slot` invalid on every CPU. Both caches start with their `FlowKey`, then `valid`.
#[inline(always)]
fn clear_on_every_cpu<T>(cache: &PerCpuArray<T>, slot: u32) {
    let map = (cache as *const PerCpuArray<T>).cast::<c_void>().cast_mut();
    let key = (&raw const slot).cast::<c_void>();
    for cpu in 0..MAX_CPUS {
        // SAFETY: a map of this program and a key that lives across the call.
        let entry = unsafe { bpf_map_lookup_percpu_elem(map, key, cpu) }.cast::<CachedFlow>();
        if entry.is_null() {
            break; // past the last possible CPU
        }
        // SAFETY: a valid map value pointer to a value that starts with the same key and valid
        // word as `CachedFlow` (checked below); a racing reader sees either state, both safe.
        unsafe { (*entry).valid = 0 };
    }
}

const _: () =
    assert!(core::mem::offset_of!(CachedFlow, valid) == core::mem::offset_of!(CachedReply, valid));
