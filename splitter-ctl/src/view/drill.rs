//! What a drill found, as the control API answers it and the journal keeps it.

use serde::{Deserialize, Serialize};

use crate::engine::drill::DrillKind;

/// What a drill found; journaled and answered.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct DrillReport {
    pub service: String,
    /// `rollback` or `last_resort`; for a last-resort drill, `live` is `last_resort`, and
    /// `new_on_candidate` counts new connections that still reached blue or green.
    #[serde(default)]
    pub kind: DrillKind,
    /// `passed`: new connections landed on the live pool and none on the candidate;
    /// `failed`: some still landed on the candidate; `inconclusive`: no new connection came.
    pub outcome: String,
    pub live: String,
    pub decision_to_write_us: u64,
    /// From the decision to the first new connection seen on the live pool (1 ms resolution).
    pub decision_to_first_connection_us: Option<u64>,
    pub new_on_live: u64,
    pub new_on_candidate: u64,
    /// The share put back, or why it was not.
    pub restored: String,
    /// A last-resort drill: the errors its pool gave by the drill's end (5xx, resets, refused
    /// handshakes); any fails the drill.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_resort_errors: Option<u64>,
}
