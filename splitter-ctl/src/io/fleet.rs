//! The fleet's history in etcd: each change of a desired split is recorded after it is made,
//! by whoever made it (a command, or a daemon publishing a rollback made offline), and events
//! older than `EVENTS_KEPT` are removed by the same writer. Best effort: a change is never
//! undone or delayed because its record could not be written.

use super::etcd::{Etcd, EtcdError};
use crate::model::fleet::{Desired, EVENTS_KEPT, Fleet, FleetEvent};

/// Records that `desired` was written at `revision` for `release`, and removes events past
/// `EVENTS_KEPT`.
pub async fn record(
    etcd: &Etcd,
    fleet: &Fleet,
    release: &str,
    revision: i64,
    desired: &Desired,
    published_later: bool,
) -> Result<(), EtcdError> {
    let event = FleetEvent {
        release: release.to_owned(),
        revision,
        desired: desired.clone(),
        published_later,
    };
    let value = serde_json::to_vec(&event).unwrap_or_default();
    etcd.put(
        &fleet.event_key(desired.decided_at_ms, &desired.node),
        &value,
        None,
    )
    .await?;
    let kept = i64::try_from(EVENTS_KEPT.as_millis()).unwrap_or(i64::MAX);
    let oldest = fleet.event_key(desired.decided_at_ms.saturating_sub(kept), "");
    etcd.delete_range(&fleet.events_prefix(), &oldest).await?;
    Ok(())
}

/// The newest `limit` events, newest first; those that do not read are left out, counted.
pub async fn newest(
    etcd: &Etcd,
    fleet: &Fleet,
    limit: usize,
) -> Result<(Vec<FleetEvent>, usize), EtcdError> {
    let kvs = etcd.range_newest(&fleet.events_prefix(), limit).await?;
    let total = kvs.len();
    let events: Vec<FleetEvent> = kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect();
    let unreadable = total - events.len();
    Ok((events, unreadable))
}
