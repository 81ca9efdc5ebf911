//! What each pinned map must look like in this build: its key and value sizes, and for a map
//! of measurements or copies its entries. Checked when a data plane adopts pins, so a pin left
//! by another build or another program is refused (or, for measurements, replaced) instead of
//! misread.

use aya::maps::{MapData, MapError};
use splitter_common::{
    BackendInfo, CacheSet, CachedFlow, CachedReply, Endpoint, Flow, FlowGuard, FlowKey, Histogram,
    Service, Slot, Traffic, VersionStats, drain::Drain, maps as names,
};

/// Key and value size each map must have; checked when adopting pins, so a pin left by another
/// build or another program is refused instead of misread.
fn expected_layout(name: &str) -> (usize, usize) {
    use core::mem::size_of;
    match name {
        names::SERVICES => (size_of::<Endpoint>(), size_of::<Service>()),
        names::SERVICE_PORTS | names::SPLIT => (4, 4),
        names::POOL_SLOTS => (4, size_of::<Slot>()),
        names::FLOWS => (size_of::<FlowKey>(), size_of::<Flow>()),
        names::BACKENDS => (size_of::<Endpoint>(), size_of::<BackendInfo>()),
        names::FLOW_CACHE => (4, size_of::<CacheSet<CachedFlow>>()),
        names::REPLY_CACHE => (4, size_of::<CacheSet<CachedReply>>()),
        // `struct bpf_devmap_val`: the ifindex, then a program's fd or id.
        names::FORWARD_DEVICES => (4, 8),
        names::FORWARD_SEEN | names::PEER_DEVICES => (4, 4),
        names::NEXT_HOPS | names::REPLY_HOPS => (4, size_of::<splitter_common::NextHop>()),
        names::HANDSHAKES => (size_of::<FlowKey>(), size_of::<Slot>()),
        names::H2_CONNS => (
            size_of::<FlowKey>(),
            size_of::<splitter_common::l7::H2Conn>(),
        ),
        // A program array: program fds in, ids out.
        names::L7_PROGRAMS | names::TC_L7_PROGRAMS => (4, 4),
        names::VERSION_STATS => (4, size_of::<VersionStats>()),
        names::VERSION_TRAFFIC => (4, size_of::<Traffic>()),
        names::LATENCY => (4, size_of::<Histogram>()),
        names::PLANE_STATS => (4, size_of::<u64>()),
        names::FLOW_GUARD => (4, size_of::<FlowGuard>()),
        names::COHORTS => (4 + 20, 4),
        names::DRAINS => (size_of::<FlowKey>(), size_of::<Drain>()),
        names::DRAIN_CLOSING => (size_of::<FlowKey>(), 4),
        names::DRAIN_ACTIVE => (4, 4),
        // Not a map of ours: nothing matches.
        _ => (0, 0),
    }
}

/// Why a pinned map is not this build's.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("it cannot be opened: {0}")]
    Open(MapError),
    #[error("its description cannot be read: {0}")]
    Info(MapError),
    #[error("key/value sizes {key}/{value}, expected {expected_key}/{expected_value}")]
    Sizes {
        key: u32,
        value: u32,
        expected_key: usize,
        expected_value: usize,
    },
    #[error("{entries} entries, expected {expected}")]
    Entries { entries: u32, expected: u32 },
}

/// The entries a map of measurements or copies has in this build (these grow with new
/// counters, latency kinds or cache slots); `None` for the others, whose pins are kept whatever
/// their size (the flow table's size comes from the config at its creation).
fn expected_entries(name: &str) -> Option<u32> {
    Some(match name {
        names::VERSION_STATS | names::VERSION_TRAFFIC => names::VERSION_STAT_ENTRIES,
        names::LATENCY => names::LATENCY_ENTRIES,
        names::PLANE_STATS => splitter_common::PLANE_COUNTERS,
        names::FLOW_CACHE | names::REPLY_CACHE => names::FLOW_CACHE_SETS,
        names::NEXT_HOPS | names::REPLY_HOPS => names::NEXT_HOP_SLOTS,
        names::H2_CONNS => names::MAX_H2_CONNS,
        _ => return None,
    })
}

/// Checks a map's key and value sizes against this build's, and the entries of a map of
/// measurements or copies; the error says what differs.
pub(crate) fn check_layout(data: &MapData, name: &str) -> Result<(), LayoutError> {
    let info = data.info().map_err(LayoutError::Info)?;
    let (expected_key, expected_value) = expected_layout(name);
    if info.key_size() as usize != expected_key || info.value_size() as usize != expected_value {
        return Err(LayoutError::Sizes {
            key: info.key_size(),
            value: info.value_size(),
            expected_key,
            expected_value,
        });
    }
    if let Some(expected) = expected_entries(name)
        && info.max_entries() != expected
    {
        return Err(LayoutError::Entries {
            entries: info.max_entries(),
            expected,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pinned map whose expected layout is missing would be refused at every restart; a
    /// replaceable one whose entries are not checked would be kept by an upgrade that grows it.
    #[test]
    fn every_pinned_map_has_an_expected_layout() {
        for name in names::ALL {
            let (key, value) = expected_layout(name);
            assert!(key > 0 && value > 0, "{name}: no expected layout");
        }
        for name in names::REPLACEABLE {
            assert!(
                expected_entries(name).is_some(),
                "{name}: entries not checked"
            );
        }
    }
}
