//! Aging closed flows out of the flow table. The kernel marks a flow when it sees a FIN (per
//! direction) or a RST; the daemon sweeps flows that are reset, or finished in both directions,
//! after a grace period, so closed connections leave the table sooner than LRU pressure would
//! take them. Open and half-closed flows are never swept: only LRU pressure evicts them.

use std::time::Duration;

use splitter_common::{FLOW_RST, Flow, FlowKey, flow_closed};

use crate::kernel::maps::{Maps, MapsError};

/// How often the daemon sweeps.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(5);
/// How long a flow finished in both directions stays, for the last ACKs.
pub const FIN_GRACE: Duration = Duration::from_secs(60);
/// How long a flow that saw a RST stays.
pub const RST_GRACE: Duration = Duration::from_secs(10);

/// Removes the flows whose connection closed longer ago than its grace period, as of `now_ns`
/// on the kernel's clock (`monotonic_ns`). Returns how many went.
pub fn sweep(maps: &mut Maps, now_ns: u64) -> Result<usize, MapsError> {
    let flows = maps.flows()?;
    sweep_among(maps, &flows, now_ns)
}

/// Like `sweep`, over the flows read before.
pub fn sweep_among(
    maps: &mut Maps,
    flows: &[(FlowKey, Flow)],
    now_ns: u64,
) -> Result<usize, MapsError> {
    let (fin, rst) = (FIN_GRACE.as_nanos() as u64, RST_GRACE.as_nanos() as u64);
    maps.purge_among(flows, |_, flow| {
        let age = now_ns.saturating_sub(flow.state_changed_ns);
        if flow.state & FLOW_RST != 0 {
            age > rst
        } else {
            flow_closed(flow.state) && age > fin
        }
    })
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
#[must_use]
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}
