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
    /// `passed`: at least `connections_needed` new connections landed on the live pool and
    /// none on the candidate; `failed`: one still landed on the candidate after the write;
    /// `inconclusive`: too few new connections came to prove anything.
    pub outcome: String,
    pub live: String,
    pub decision_to_write_us: u64,
    /// New connections that must all land on the live pool: enough that a rollback that did
    /// nothing would pass less than once in a thousand drills at the candidate's share.
    #[serde(default)]
    pub connections_needed: u64,
    pub new_on_live: u64,
    pub new_on_candidate: u64,
    /// The share put back, or why it was not.
    pub restored: String,
    /// A last-resort drill: the errors its pool gave by the drill's end (5xx, resets, refused
    /// handshakes); any fails the drill.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_resort_errors: Option<u64>,
    /// A rollback drill: the drain of the candidate's connections, as the drill ended (it goes
    /// on after; its end is logged and counted like any drain's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<crate::view::drain::DrainReport>,
}
