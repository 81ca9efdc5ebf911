//! Rollouts as the control API speaks of them: the operator's commands, and a rollout's status.

use std::collections::BTreeMap;

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
    /// The step the rollout is on, counted from 1, as the text says it: step `step` of `steps`.
    pub step: usize,
    pub steps: usize,
    pub steps_percent: Vec<f64>,
    pub paused: Option<String>,
    pub consecutive_failures: u32,
    pub last_judgement: Option<String>,
    /// Each gate at the last judgement (empty before the first).
    #[serde(default)]
    pub gates: Vec<GateView>,
    /// What judges the rollout: the kernel's signals (requests and calls, or L4 only) and the
    /// PromQL gates.
    #[serde(default)]
    pub judged_by: Vec<String>,
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
    pub limit_text: String,
    /// What the window measured, when it measured something, as an operator reads it.
    pub value_text: Option<String>,
    /// `pass`, `fail`, or `waiting` (not enough data to judge this gate).
    pub state: String,
    /// The limit and the value as numbers, each named with its unit: `limit_ratio` and
    /// `value_ratio`, `limit_ms` and `value_ms`, `limit_requests`, `candidate_p99_ms`, or a
    /// PromQL gate's `limit_max`/`limit_min` and `value` in the query's own unit; a kernel
    /// gate's `interval_low`/`interval_high`, `evidence_z` and `needed_z`. Finite numbers only:
    /// an interval the data cannot bound yet leaves its end out (JSON has no infinity).
    #[serde(flatten)]
    pub numbers: BTreeMap<String, f64>,
}

impl From<&GateReading> for GateView {
    fn from(reading: &GateReading) -> Self {
        Self {
            gate: reading.gate.clone(),
            limit_text: reading.limit.clone(),
            value_text: reading.value.clone(),
            numbers: reading
                .numbers
                .iter()
                .filter(|(_, value)| value.is_finite())
                .map(|(name, value)| ((*name).to_owned(), *value))
                .collect(),
            state: match reading.state {
                GateState::Pass => "pass",
                GateState::Fail(_) => "fail",
                GateState::Waiting(_) => "waiting",
            }
            .to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gate_with_an_unbounded_interval_reads_back_from_json() {
        // Few samples cannot bound a p99 from above: the interval's end is infinite.
        let reading = GateReading {
            gate: "max_p99_vs_live".to_owned(),
            limit: "≤ +20%".to_owned(),
            value: Some("p99 2.1 ms vs live 1.7 ms: +24% [-40%, +∞]".to_owned()),
            state: GateState::Pass,
            numbers: vec![("interval_low", 0.6), ("interval_high", f64::INFINITY)],
            evidence: None,
        };
        let view = GateView::from(&reading);
        let json = serde_json::to_string(&view).expect("json");
        let back: GateView = serde_json::from_str(&json).expect("reads back");
        assert_eq!(back, view);
        assert_eq!(back.numbers.get("interval_low"), Some(&0.6));
        assert!(!back.numbers.contains_key("interval_high"), "{json}");
    }
}
