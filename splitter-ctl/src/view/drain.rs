//! A drain as the control API, the CLI and the journal report it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What a drain did to the connections of the version it left.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainReport {
    /// The service or release group.
    pub service: String,
    /// The version left (or whose connections aged out): `blue` or `green`.
    pub version: String,
    /// `version_left` (a rollback, a promotion, a drill, a request) or `max_connection_age`.
    #[serde(default = "version_left")]
    pub cause: String,
    /// `drain` or `reset`.
    pub established: String,
    /// Whether it is over.
    pub done: bool,
    /// Connections it took on (open connections of the version when it began, and any that
    /// came after).
    pub connections: u64,
    /// Connections not closed yet.
    pub left: u64,
    /// Connections by what became of them (`drained_idle`, `drained_after_response`, `reset`,
    /// `reset_at_timeout`, `closed_by_peers`, `no_answer`).
    pub outcomes: BTreeMap<String, u64>,
    /// Requests that raced a close: dropped before the backend saw them (never processed).
    pub raced: u64,
    /// New connections the version was given after the decision (a rollback that works: 0).
    pub new_connections_after_decision: u64,
    /// Responses the version began after the decision.
    pub responses_after_decision: u64,
    /// From the decision to the drain's start (the daemon told, the flow table walked).
    pub decision_to_start_us: u64,
    /// From the decision to the last response the version began (0 when none came after it).
    pub decision_to_last_response_us: Option<u64>,
    /// From the decision to the drain's last close (its end).
    pub decision_to_last_close_us: Option<u64>,
}

/// The cause of a report journaled before drains had causes.
fn version_left() -> String {
    "version_left".to_owned()
}

impl DrainReport {
    /// One line for a person.
    #[must_use]
    pub fn describe(&self) -> String {
        let outcomes: Vec<String> = self
            .outcomes
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(outcome, n)| format!("{n} {outcome}"))
            .collect();
        let times = match (
            self.decision_to_last_response_us,
            self.decision_to_last_close_us,
        ) {
            (Some(0), Some(close)) => format!(
                "; no response after the decision, last close {:.1} ms after it",
                close as f64 / 1e3
            ),
            (Some(response), Some(close)) => format!(
                "; last response {:.1} ms, last close {:.1} ms after the decision",
                response as f64 / 1e3,
                close as f64 / 1e3
            ),
            (Some(response), None) => format!(
                "; last response {:.1} ms after the decision",
                response as f64 / 1e3
            ),
            _ => String::new(),
        };
        let cause = if self.cause == "version_left" {
            String::new()
        } else {
            format!(" ({})", self.cause)
        };
        format!(
            "{} {}{cause}: drain began {:.1} ms after the decision; {} of {} connection(s) left{}{}{}{}",
            self.service,
            self.version,
            self.decision_to_start_us as f64 / 1e3,
            self.left,
            self.connections,
            if outcomes.is_empty() {
                String::new()
            } else {
                format!(" ({})", outcomes.join(", "))
            },
            if self.raced > 0 {
                format!(
                    "; {} request(s) raced a close and were dropped unprocessed",
                    self.raced
                )
            } else {
                String::new()
            },
            times,
            if self.done { "; done" } else { "; draining" },
        )
    }
}

/// `POST /v1/drains/SERVICE`: drain the connections of a version (what the CLI asks after its
/// own rollback write, so that the daemon runs the drain). Every field but `version` is
/// optional: the service's config gives the policy, and the decision is now.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    /// The version to drain: `blue` or `green`.
    pub version: String,
    /// `drain` or `reset`; the service's `established` when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub established: Option<String>,
    /// The journal entry of the rollback it completes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<i64>,
    /// When the rollback was decided, on the kernel's clock (CLOCK_MONOTONIC, ns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_monotonic_ns: Option<u64>,
}

/// `PUT /v1/drains/SERVICE/journal`: the journal entry of the rollback whose drain the CLI
/// asked for before writing the entry; the daemon completes it with the drain's times.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainJournal {
    /// The version drained.
    pub version: String,
    /// The drain's decision, as its request gave it: which drain of the version.
    pub decided_monotonic_ns: u64,
    /// The journal entry.
    pub event: i64,
}
