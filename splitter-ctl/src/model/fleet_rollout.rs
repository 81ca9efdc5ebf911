//! A rollout run across the fleet, as etcd keeps it (`{prefix}/v1/rollouts/{release}`), and the
//! coordinator's key's value (`{prefix}/v1/coordinator`, under the coordinator's lease); the
//! keys are `model::fleet`'s.
//!
//! The record is the rollout's whole state: any node elected coordinator goes on from it at the
//! same step. It is written by the CLI that starts, pauses, resumes or ends it, and by the
//! coordinator at each step, always in one transaction with the desired split it moves and
//! compared on both keys' revisions, so that a record never says a step that the desired split
//! does not hold, and an operator's change of the split in between is seen (the rollout pauses).

use serde::{Deserialize, Serialize};

use crate::model::{
    config::Release,
    fleet::{Desired, Evidence, RecordError, read_record},
    l7::L7,
    plan::{Plan, PlanError, PlanRequest},
};

/// Why a plan cannot run across the fleet.
#[derive(Debug, thiserror::Error)]
pub enum FleetPlanError {
    #[error("the plan")]
    Plan(#[from] PlanError),
    #[error(
        "a fleet rollout is judged by its coordinator on the kernel's request evidence that every node reports; {0} is not judged across a fleet: run the rollout on each node with `--local`"
    )]
    Unsupported(&'static str),
}

/// The plan of a fleet rollout of `release`: the config's, overridden by `request`, with only
/// the gates the coordinator judges (a gate it cannot judge would never judge: refused here,
/// so that nothing is judged blind).
pub fn plan(release: &Release<'_>, request: &PlanRequest) -> Result<Plan, FleetPlanError> {
    let plan = release
        .leader()
        .rollout
        .clone()
        .overridden_by(request.clone())
        .into_plan()?;
    if !plan.promql.is_empty() {
        return Err(FleetPlanError::Unsupported("a PromQL gate"));
    }
    if plan.gates.max_divergence.is_some() {
        return Err(FleetPlanError::Unsupported(
            "the representativeness gate (max_divergence)",
        ));
    }
    if plan.l4_only {
        return Err(FleetPlanError::Unsupported("an L4-only judgement"));
    }
    if release.members.iter().any(|m| m.l7 == L7::Opaque) {
        return Err(FleetPlanError::Unsupported(
            "a service whose requests the kernel cannot read (l7 = \"opaque\")",
        ));
    }
    Ok(plan)
}

/// Where a fleet rollout is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "why")]
pub enum State {
    Running,
    /// Paused by an operator, or because the desired split was changed outside the rollout.
    Paused(String),
    Promoted,
    /// Rolled back by the gates or an operator's `abort`, and why.
    RolledBack(String),
}

impl State {
    /// Whether the rollout is over: a new one may start.
    #[must_use]
    pub const fn ended(&self) -> bool {
        matches!(self, Self::Promoted | Self::RolledBack(_))
    }
}

/// A node that became the rollout's coordinator while it ran.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Takeover {
    pub node: String,
    /// The coordinator before it, when one had judged this rollout.
    pub from: Option<String>,
    pub at_ms: i64,
    /// The step (0-based) it went on from.
    pub step: usize,
}

/// The coordinator's last judgement, for `rollout status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastJudgement {
    pub at_ms: i64,
    pub node: String,
    /// `pass`, `inconclusive: …` or `fail: …`.
    pub judgement: String,
    /// Each node's window at that judgement: (node, candidate requests, candidate errors).
    pub nodes: Vec<(String, u64, u64)>,
}

/// A fleet rollout (`{prefix}/v1/rollouts/{release}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FleetRollout {
    pub schema: u32,
    pub release: String,
    /// `blue` or `green`.
    pub candidate: String,
    /// What the command that started it asked for: each coordinator builds the plan from its
    /// own config's plan overridden by these (the fleet's nodes share one config).
    pub request: PlanRequest,
    /// The candidate's shares, in basis points, as the plan had them when the rollout started.
    #[serde(default)]
    pub steps_bp: Vec<u16>,
    /// Index into `steps_bp` of the share in effect.
    pub step: usize,
    #[serde(flatten)]
    pub state: State,
    /// The client hash's salt, with client affinity: the same on every node.
    pub salt: Option<u32>,
    pub started_by: String,
    pub started_on: String,
    pub started_at_ms: i64,
    /// When the current step's share was written (the hold counts from it, on the writer's
    /// clock).
    pub step_started_at_ms: i64,
    /// The desired split this rollout wrote last: another value in etcd means someone else
    /// changed the split, and the rollout pauses.
    pub wrote: Desired,
    /// Failing judgements in a row.
    pub consecutive_failures: u32,
    #[serde(default)]
    pub takeovers: Vec<Takeover>,
    #[serde(default)]
    pub last: Option<LastJudgement>,
    /// The live pool's last merged window with enough requests: what the candidate is compared
    /// with at the last step, where the live pool gets no new connections.
    #[serde(default)]
    pub live_reference: Option<Evidence>,
}

impl FleetRollout {
    /// Reads a value from etcd: a newer schema is refused whatever else it holds.
    pub fn parse(value: &[u8]) -> Result<Self, RecordError> {
        read_record(value)
    }

    #[must_use]
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The coordinator that judged it last, if any.
    #[must_use]
    pub fn coordinator(&self) -> Option<&str> {
        self.takeovers.last().map(|t| t.node.as_str())
    }
}

/// The coordinator's key's value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coordinator {
    pub schema: u32,
    pub node: String,
    pub since_ms: i64,
}

#[cfg(test)]
mod tests {
    use splitter_common::{SplitWord, Version};

    use super::*;
    use crate::model::fleet::{Cause, SCHEMA};

    #[test]
    fn a_rollout_record_round_trips_and_a_newer_schema_is_refused() {
        let rollout = FleetRollout {
            schema: SCHEMA,
            release: "sentiment".into(),
            candidate: "green".into(),
            request: PlanRequest::default(),
            steps_bp: vec![500, 10_000],
            step: 1,
            state: State::Paused("by root".into()),
            salt: Some(7),
            started_by: "root".into(),
            started_on: "n0".into(),
            started_at_ms: 1,
            step_started_at_ms: 2,
            wrote: Desired::new(
                SplitWord::new(Version::Blue, 500),
                Cause::Weight,
                "n0",
                "gates",
                2,
            ),
            consecutive_failures: 0,
            takeovers: vec![],
            last: None,
            live_reference: None,
        };
        let json = rollout.to_json();
        let text = String::from_utf8_lossy(&json);
        assert!(
            text.contains(r#""state":"paused","why":"by root""#),
            "{text}"
        );
        assert_eq!(FleetRollout::parse(&json), Ok(rollout));
        assert_eq!(
            FleetRollout::parse(br#"{"schema":9}"#),
            Err(RecordError::NewerSchema(9))
        );
        assert!(matches!(
            FleetRollout::parse(br#"{"schema":1}"#),
            Err(RecordError::Unreadable(_))
        ));
        assert!(State::Promoted.ended() && !State::Running.ended());
    }
}
