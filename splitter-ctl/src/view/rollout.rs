//! Rollouts as the control API speaks of them: the operator's commands, and a rollout's status.

use serde::{Deserialize, Serialize};

use crate::engine::gates::{GateReading, GateState};

/// What an operator can do to a running rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RolloutCommand {
    Pause,
    Resume,
    Promote,
    Abort,
}

impl RolloutCommand {
    pub const ALL: [Self; 4] = [Self::Pause, Self::Resume, Self::Promote, Self::Abort];

    /// The name in the control API's path and in the CLI.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Promote => "promote",
            Self::Abort => "abort",
        }
    }

    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// What `GET /v1/rollouts/SERVICE` answers.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RolloutStatus {
    pub service: String,
    pub candidate: String,
    pub candidate_percent: f64,
    pub step: usize,
    pub steps_percent: Vec<f64>,
    pub paused: Option<String>,
    pub consecutive_failures: u32,
    pub last_judgement: Option<String>,
    /// Each gate at the last judgement (empty before the first).
    #[serde(default)]
    pub gates: Vec<GateView>,
    /// How long the step holds at least, and how long it has held.
    #[serde(default)]
    pub hold_ms: u64,
    #[serde(default)]
    pub held_ms: u64,
}

/// One gate as the last judgement saw it, for `rollout status` and `watch`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct GateView {
    pub gate: String,
    /// What it allows, as an operator reads it (`≤ 1.00%`).
    pub limit: String,
    /// What the window measured, when it measured something.
    pub value: Option<String>,
    /// `pass`, `fail`, or `waiting` (not enough data to judge this gate).
    pub state: String,
}

impl From<&GateReading> for GateView {
    fn from(reading: &GateReading) -> Self {
        Self {
            gate: reading.gate.clone(),
            limit: reading.limit.clone(),
            value: reading.value.clone(),
            state: match reading.state {
                GateState::Pass => "pass",
                GateState::Fail(_) => "fail",
                GateState::Waiting(_) => "waiting",
            }
            .to_owned(),
        }
    }
}
