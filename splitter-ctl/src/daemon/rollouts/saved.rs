//! A rollout in progress as the journal keeps it, so that a restarted daemon resumes the same
//! step. Time already held on the step is kept; time the daemon was down does not count.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use splitter_common::{Histogram, SplitWord, Version};

use super::{ActiveRollout, ReleaseSnapshot, RolloutError, span};
use crate::model::units;
use crate::{
    daemon::Daemon,
    engine::{
        gates::{Carried, Window, folded},
        rollout::Rollout,
    },
    io::prometheus,
    model::{
        error::chain,
        plan::{JudgedLatency, Plan, PlanError, PlanRequest},
        share::format_percent,
    },
    store::journal::{Journal, JournalError},
};

/// Why a rollout's state cannot be saved.
#[derive(Debug, thiserror::Error)]
enum SaveError {
    #[error("cannot encode the rollout's state")]
    Json(#[source] serde_json::Error),
    #[error(transparent)]
    Journal(JournalError),
}

/// Why a saved rollout cannot be resumed.
#[derive(Debug, thiserror::Error)]
enum RestoreError {
    #[error("the saved state does not parse")]
    Json(#[source] serde_json::Error),
    #[error("the saved plan")]
    Plan(#[from] PlanError),
    #[error("step {step} of {steps}")]
    Step { step: usize, steps: usize },
    #[error("unknown candidate `{0}`")]
    Candidate(String),
    #[error("`{service}` is now part of release group `{group}`")]
    Regrouped { service: String, group: String },
    #[error(transparent)]
    Rollout(#[from] RolloutError),
}

/// What the journal keeps of a rollout.
#[derive(Debug, Serialize, Deserialize)]
struct SavedRollout {
    plan: PlanRequest,
    started_event: i64,
    candidate: String,
    step: usize,
    held_ms: u64,
    consecutive_failures: u32,
    paused: Option<String>,
    expected_word: u32,
    /// The gates' evidence from the finished steps and from the current one (its window
    /// starts again after a restart).
    #[serde(default)]
    carried: Carried,
    /// The live pool's last window with enough traffic: at the last step, the only one.
    #[serde(default)]
    live_reference: Option<SavedWindow>,
}

/// A judged window as the journal keeps it.
#[derive(Debug, Serialize, Deserialize)]
struct SavedWindow {
    requests: u64,
    errors: u64,
    /// The response-time histogram's buckets.
    latency: Vec<u64>,
}

impl SavedWindow {
    fn of(window: &Window) -> Self {
        Self {
            requests: window.requests,
            errors: window.errors,
            latency: window.latency.buckets.to_vec(),
        }
    }

    /// The window again; `None` when its buckets are not this build's.
    fn restore(&self) -> Option<Window> {
        let mut latency = Histogram::default();
        if self.latency.len() != latency.buckets.len() {
            return None;
        }
        latency.buckets.copy_from_slice(&self.latency);
        latency.count = latency.total();
        Some(Window {
            requests: self.requests,
            errors: self.errors,
            latency,
        })
    }
}

impl SavedRollout {
    fn of(active: &ActiveRollout, now: Instant) -> Self {
        Self {
            plan: PlanRequest::from(&active.rollout.plan),
            started_event: active.started_event,
            candidate: active.candidate.name().to_owned(),
            step: active.rollout.step,
            held_ms: units::millis(now.duration_since(active.rollout.step_started)),
            consecutive_failures: active.rollout.consecutive_failures,
            paused: active.paused.clone(),
            expected_word: active.expected.0,
            carried: folded(&active.carried, &active.step_evidence),
            live_reference: active.live_reference.as_ref().map(SavedWindow::of),
        }
    }

    /// The rollout again, with its counters' window starting at `base`; or why it cannot be.
    fn restore(
        self,
        plan: Plan,
        service: &str,
        base: ReleaseSnapshot,
        now: Instant,
    ) -> Result<ActiveRollout, RestoreError> {
        if self.step >= plan.steps.len() {
            return Err(RestoreError::Step {
                step: self.step,
                steps: plan.steps.len(),
            });
        }
        let candidate = match self.candidate.as_str() {
            "blue" => Version::Blue,
            "green" => Version::Green,
            other => return Err(RestoreError::Candidate(other.to_owned())),
        };
        let prometheus = plan
            .prometheus
            .as_ref()
            .map(prometheus::Client::new)
            .transpose()
            .map_err(RolloutError::from)?;
        let mut rollout = Rollout::start(plan, now);
        rollout.step = self.step;
        rollout.step_started = now
            .checked_sub(Duration::from_millis(self.held_ms))
            .unwrap_or(now);
        rollout.consecutive_failures = self.consecutive_failures;
        Ok(ActiveRollout {
            started_event: self.started_event,
            rollout,
            candidate,
            sample_base: base.sum,
            step_base: base,
            last_evaluation: now,
            expected: SplitWord(self.expected_word),
            paused: self.paused,
            last_judgement: None,
            last_gates: Vec::new(),
            live_reference: self.live_reference.as_ref().and_then(SavedWindow::restore),
            carried: self.carried,
            step_evidence: Carried::new(),
            evaluating: false,
            span: span(service, self.started_event),
            prometheus,
        })
    }
}

impl Daemon {
    /// Saves `service`'s rollout state in the journal (logged when it cannot be).
    pub(super) fn save_rollout(&self, service: &str) {
        let (Some(journal), Some(active)) = (&self.journal, self.rollouts.get(service)) else {
            return;
        };
        let state = SavedRollout::of(active, Instant::now());
        let saved = serde_json::to_string(&state)
            .map_err(SaveError::Json)
            .and_then(|json| {
                journal
                    .save_rollout(service, &json)
                    .map_err(SaveError::Journal)
            });
        if let Err(error) = saved {
            tracing::warn!(
                service,
                error = %chain(&error),
                "cannot save the rollout's state; a restart would end it"
            );
        }
    }

    pub(super) fn forget_rollout(&self, service: &str) {
        if let Some(journal) = &self.journal
            && let Err(error) = journal.forget_rollout(service)
        {
            tracing::warn!(service, error = %chain(&error), "cannot forget the ended rollout's state");
        }
    }

    /// Resumes the rollouts a previous daemon left in the journal, each at its step.
    pub fn restore_rollouts(&mut self) {
        let Some(saved) = self.journal.as_ref().map(Journal::saved_rollouts) else {
            return;
        };
        let saved = match saved {
            Ok(saved) => saved,
            Err(error) => {
                tracing::warn!(error = %chain(&error), "cannot read the saved rollouts");
                return;
            }
        };
        for (service, json) in saved {
            match self.restore(&service, &json) {
                Ok(active) => {
                    let _entered = active.span.enter();
                    tracing::info!(
                        step = active.rollout.step + 1,
                        candidate_percent = %format_percent(active.rollout.share()),
                        "rollout resumed"
                    );
                    drop(_entered);
                    self.rollouts.insert(service, active);
                }
                Err(error) => {
                    tracing::warn!(
                        service,
                        error = %chain(&error),
                        "a saved rollout cannot be resumed; it is dropped"
                    );
                    self.forget_rollout(&service);
                }
            }
        }
    }

    /// The rollout of `service` saved as `json`, resumed with its window starting now.
    fn restore(&self, service: &str, json: &str) -> Result<ActiveRollout, RestoreError> {
        let mut state: SavedRollout = serde_json::from_str(json).map_err(RestoreError::Json)?;
        // Saved by a build that judged the time to first byte (before the plan said which),
        // with its evidence: it goes on judging that.
        state.plan.latency.get_or_insert(JudgedLatency::FirstByte);
        // The config may have changed while the daemon was down: a rollout resumes only on
        // the same release it started on.
        let group = self.release_name(service)?;
        if group != service {
            return Err(RestoreError::Regrouped {
                service: service.to_owned(),
                group,
            });
        }
        let ids = self.release_ids(service)?;
        let plan = state.plan.clone().into_plan()?;
        let base = self.snapshots(&ids, &plan)?;
        state.restore(plan, service, base, Instant::now())
    }
}
