//! Rollouts as the daemon runs them: started from the control API with a plan, judged at
//! every interval over the current step's window of kernel counters, and moved on by the
//! decisions of `rollout`. Every share change is one write of the split word and comes before
//! its journal entry; a rollback's decision-to-write time is measured and journaled.
//!
//! A change of the split word that the rollout did not make (an operator's `weight` or
//! `rollback`) pauses the rollout and is journaled as an operator override.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use splitter_common::{LatencyKind, SplitWord, Version};

use super::{
    Daemon,
    metrics::{PromqlLabels, RolloutEndLabels},
};
use crate::{
    engine::{
        gates::{
            GateReading, GateState, Judgement, Snapshot, Window, kernel_gates, live_reference,
            promql_gates,
        },
        representativeness,
        rollout::{Decision, Rollout},
    },
    io::prometheus,
    model::{
        plan::PlanRequest,
        promql::{self, PrometheusUrl, Reading},
        share::{format_percent, percent_of},
    },
    store::journal::{EventKind, Journal, NewEvent, Sample},
    view::rollout::{GateView, RolloutCommand, RolloutStatus},
};

/// A rollout the daemon runs.
pub struct ActiveRollout {
    pub started_event: i64,
    pub rollout: Rollout,
    pub candidate: Version,
    /// The counters at the start of the current step: [blue, green].
    pub step_base: ReleaseSnapshot,
    /// The counters at the last judgement: the report's samples are the windows between
    /// judgements, not since the step began.
    pub sample_base: [Snapshot; 2],
    pub last_evaluation: Instant,
    /// The split word the rollout wrote last.
    pub expected: SplitWord,
    /// Why the rollout is paused, when it is.
    pub paused: Option<String>,
    pub last_judgement: Option<Judgement>,
    /// Each gate at the last judgement.
    pub last_gates: Vec<GateView>,
    /// The live pool's p99 in the last window with enough live traffic: what the candidate
    /// is compared with once the live pool gets no new connections.
    pub live_baseline_ms: Option<f64>,
    /// An evaluation is under way (its PromQL queries are out).
    pub evaluating: bool,
}

/// A rollout whose interval has come round, with the PromQL queries to read before it is
/// judged. The queries run without the daemon's lock.
#[derive(Debug)]
pub struct DueEvaluation {
    pub service: String,
    started_event: i64,
    prometheus: Option<PrometheusUrl>,
    queries: Vec<String>,
}

impl DueEvaluation {
    /// Reads every PromQL gate at once; no I/O when there are none.
    pub async fn read(&self) -> Vec<Reading> {
        let Some(url) = &self.prometheus else {
            return Vec::new();
        };
        let mut reads = tokio::task::JoinSet::new();
        for (i, query) in self.queries.iter().enumerate() {
            let (url, query) = (url.clone(), query.clone());
            reads.spawn(async move { (i, prometheus::query(&url, &query).await) });
        }
        let mut readings = vec![Reading::Failed("not read".to_owned()); self.queries.len()];
        while let Some(Ok((i, reading))) = reads.join_next().await {
            readings[i] = reading;
        }
        readings
    }
}

/// A rollout in progress as the journal keeps it, so that a restarted daemon resumes the same
/// step. Time already held on the step is kept; time the daemon was down does not count.
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
    live_baseline_ms: Option<f64>,
}

impl SavedRollout {
    fn of(active: &ActiveRollout, now: Instant) -> Self {
        Self {
            plan: PlanRequest::from(&active.rollout.plan),
            started_event: active.started_event,
            candidate: active.candidate.name().to_owned(),
            step: active.rollout.step,
            held_ms: u64::try_from(now.duration_since(active.rollout.step_started).as_millis())
                .unwrap_or(u64::MAX),
            consecutive_failures: active.rollout.consecutive_failures,
            paused: active.paused.clone(),
            expected_word: active.expected.0,
            live_baseline_ms: active.live_baseline_ms,
        }
    }

    /// The rollout again, with its counters' window starting at `base`; or why it cannot be.
    fn restore(self, base: ReleaseSnapshot, now: Instant) -> Result<ActiveRollout, String> {
        let plan = self.plan.into_plan()?;
        if self.step >= plan.steps.len() {
            return Err(format!("step {} of {}", self.step, plan.steps.len()));
        }
        let candidate = match self.candidate.as_str() {
            "blue" => Version::Blue,
            "green" => Version::Green,
            other => return Err(format!("unknown candidate `{other}`")),
        };
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
            live_baseline_ms: self.live_baseline_ms,
            evaluating: false,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("no service or release group `{0}` in the running config")]
    UnknownService(String),
    #[error("service `{0}` is not in the data plane yet")]
    NotApplied(String),
    #[error("a rollout of `{0}` is already running; abort it first")]
    AlreadyRunning(String),
    #[error("no rollout of `{0}` is running")]
    NotRunning(String),
    #[error("the plan: {0}")]
    Plan(String),
    #[error("the {0} pool of `{1}` has no backend")]
    EmptyCandidate(&'static str, String),
    #[error("a rollout of `{0}` is running: a drill would fight it; abort or finish it first")]
    RolloutRunning(String),
    #[error("`{0}` has no last-resort pool (config key `last_resort`)")]
    NoLastResort(String),
    #[error(
        "the last-resort pool of `{0}` has no healthy backend: the drill would drop new connections"
    )]
    UnhealthyLastResort(String),
    #[error("`{0}` is a release group; its pools are its services': name one of them ({1})")]
    GroupHasNoPools(String, String),
    #[error("`{0}` sends no new connection to its candidate: there is nothing to roll back")]
    NothingToDrill(String),
    #[error("the live pool ({1}) of `{0}` has no healthy backend: a rollback would land on it")]
    UnhealthyLive(String, &'static str),
    #[error(transparent)]
    Maps(#[from] crate::kernel::maps::MapsError),
}

/// A salt for the client hash, from the kernel's random source (the clock if that fails).
fn fresh_salt() -> u32 {
    let mut bytes = [0u8; 4];
    // SAFETY: getrandom writes at most the four bytes it is given.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n == 4 {
        u32::from_ne_bytes(bytes)
    } else {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    }
}

/// A release's counters at one moment: summed over its services, and each service's (in the
/// order of `ReleaseIds::members`), per version [blue, green].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReleaseSnapshot {
    pub sum: [Snapshot; 2],
    pub members: Vec<[Snapshot; 2]>,
}

/// A release's ids in the kernel.
#[derive(Clone, Debug)]
pub(crate) struct ReleaseIds {
    /// The index of its split word (its first service's id).
    pub split: u32,
    /// Its services' ids, first service first.
    pub members: Vec<u32>,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn describe(judgement: &Judgement) -> String {
    match judgement {
        Judgement::Inconclusive(why) => format!("inconclusive: {why}"),
        Judgement::Pass => "pass".to_owned(),
        Judgement::Fail(reasons) => format!("fail: {}", reasons.join("; ")),
    }
}

impl Daemon {
    /// The release (a service, or the release group it belongs to) that `name` names: what
    /// rollouts and drills are keyed by.
    pub(crate) fn release_name(&self, name: &str) -> Result<String, RolloutError> {
        self.config
            .release(name)
            .map(|r| r.name.to_owned())
            .ok_or_else(|| RolloutError::UnknownService(name.to_owned()))
    }

    /// The kernel ids of release `name`: its split word's index and its services' ids.
    pub(crate) fn release_ids(&self, name: &str) -> Result<ReleaseIds, RolloutError> {
        let release = self
            .config
            .release(name)
            .ok_or_else(|| RolloutError::UnknownService(name.to_owned()))?;
        let mut members = Vec::with_capacity(release.members.len());
        for spec in &release.members {
            let service = self
                .maps
                .service(&spec.endpoint())?
                .ok_or_else(|| RolloutError::NotApplied(spec.name.clone()))?;
            members.push(service);
        }
        Ok(ReleaseIds {
            split: members[0].split,
            members: members.iter().map(|s| s.id).collect(),
        })
    }

    /// The spread of the canary's clients beside the live pool's, when `service`'s rollout has
    /// a `max_divergence` gate.
    fn canary_spread(
        &self,
        service: &str,
        ids: &ReleaseIds,
    ) -> Result<Option<representativeness::Spread>, RolloutError> {
        let Some(active) = self.rollouts.get(service) else {
            return Ok(None);
        };
        if active.rollout.plan.gates.max_divergence.is_none() {
            return Ok(None);
        }
        let lengths = self
            .config
            .release(service)
            .map(|r| r.leader().client_prefixes)
            .unwrap_or_default();
        Ok(Some(representativeness::spread(
            &self.maps.flows()?,
            &ids.members,
            active.candidate,
            lengths,
            crate::kernel::aging::monotonic_ns(),
        )))
    }

    /// Journals a judgement's windows for `report` (logged when it cannot be).
    fn record_samples(&self, rollout: i64, samples: &[Sample]) {
        if let Some(journal) = &self.journal
            && let Err(error) = journal.record_samples(rollout, samples)
        {
            tracing::warn!(error = %error, "cannot journal the judged windows");
        }
    }

    /// The counters of release `ids`, summed over its services: a release group is judged as
    /// the whole stack.
    fn snapshots(&self, ids: &ReleaseIds) -> Result<ReleaseSnapshot, RolloutError> {
        let snapshot = |id: u32, version| -> Result<Snapshot, RolloutError> {
            Ok(Snapshot {
                counters: self.maps.counters(id, version)?,
                response: self.maps.histogram(id, version, LatencyKind::Response)?,
            })
        };
        let mut release = ReleaseSnapshot::default();
        for id in &ids.members {
            let member = [
                snapshot(*id, Version::Blue)?,
                snapshot(*id, Version::Green)?,
            ];
            for (sum, part) in release.sum.iter_mut().zip(&member) {
                sum.counters = sum.counters.add(&part.counters);
                sum.response = sum.response.add(&part.response);
            }
            release.members.push(member);
        }
        Ok(release)
    }

    /// Saves `service`'s rollout state in the journal (logged when it cannot be).
    fn save_rollout(&self, service: &str) {
        let (Some(journal), Some(active)) = (&self.journal, self.rollouts.get(service)) else {
            return;
        };
        let state = SavedRollout::of(active, Instant::now());
        let saved = serde_json::to_string(&state)
            .map_err(|e| e.to_string())
            .and_then(|json| {
                journal
                    .save_rollout(service, &json)
                    .map_err(|e| format!("{:#}", anyhow::Error::from(e)))
            });
        if let Err(error) = saved {
            tracing::warn!(
                service,
                error,
                "cannot save the rollout's state; a restart would end it"
            );
        }
    }

    fn forget_rollout(&self, service: &str) {
        if let Some(journal) = &self.journal
            && let Err(error) = journal.forget_rollout(service)
        {
            tracing::warn!(service, error = %error, "cannot forget the ended rollout's state");
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
                tracing::warn!(error = %error, "cannot read the saved rollouts");
                return;
            }
        };
        for (service, json) in saved {
            let restored = serde_json::from_str::<SavedRollout>(&json)
                .map_err(|e| e.to_string())
                .and_then(|state| {
                    // The config may have changed while the daemon was down: a rollout resumes
                    // only on the same release it started on.
                    match self.release_name(&service) {
                        Ok(name) if name == service => {}
                        Ok(name) => {
                            return Err(format!(
                                "`{service}` is now part of release group `{name}`"
                            ));
                        }
                        Err(error) => return Err(error.to_string()),
                    }
                    let ids = self.release_ids(&service).map_err(|e| e.to_string())?;
                    let base = self.snapshots(&ids).map_err(|e| e.to_string())?;
                    state.restore(base, Instant::now())
                });
            match restored {
                Ok(active) => {
                    tracing::info!(
                        service,
                        step = active.rollout.step + 1,
                        candidate_percent = %format_percent(active.rollout.share()),
                        "rollout resumed"
                    );
                    self.rollouts.insert(service, active);
                }
                Err(error) => {
                    tracing::warn!(
                        service,
                        error,
                        "a saved rollout cannot be resumed; it is dropped"
                    );
                    self.forget_rollout(&service);
                }
            }
        }
    }

    pub(crate) fn journal_event(
        &self,
        service: &str,
        kind: EventKind,
        actor: &str,
        reason: Option<String>,
        decision_to_write: Option<Duration>,
        details: serde_json::Value,
    ) -> Option<i64> {
        let journal = self.journal.as_ref()?;
        let event = NewEvent {
            service: service.to_owned(),
            kind,
            actor: actor.to_owned(),
            reason,
            decision_to_write_us: decision_to_write
                .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
            decision_to_first_connection_us: None,
            details,
        };
        match journal.record(&event) {
            Ok(id) => Some(id),
            Err(error) => {
                tracing::warn!(service, error = %error, "cannot journal a rollout event");
                None
            }
        }
    }

    /// Starts a rollout of the candidate of `name` (a service, or a release group or one of its
    /// services: the rollout is then the group's): writes the first step's share.
    pub fn start_rollout(
        &mut self,
        name: &str,
        request: PlanRequest,
    ) -> Result<RolloutStatus, RolloutError> {
        let service = self.release_name(name)?;
        let service = service.as_str();
        if self.rollouts.contains_key(service) {
            return Err(RolloutError::AlreadyRunning(service.to_owned()));
        }
        let ids = self.release_ids(service)?;
        let release = self
            .config
            .release(service)
            .ok_or_else(|| RolloutError::UnknownService(service.to_owned()))?;
        let plan = release
            .leader()
            .rollout
            .clone()
            .overridden_by(request)
            .into_plan()
            .map_err(RolloutError::Plan)?;
        let split = self.maps.split(ids.split)?;
        let candidate = split.candidate();
        if let Some(empty) = release
            .members
            .iter()
            .find(|spec| spec.pool(candidate).iter().all(|b| b.weight == 0))
        {
            return Err(RolloutError::EmptyCandidate(
                candidate.name(),
                empty.name.clone(),
            ));
        }
        // With client affinity every rollout draws another cohort of clients for the canary:
        // one salt for every service of a release group, so a client sees one version of the
        // whole stack.
        let salt = release.leader().client_affinity.then(fresh_salt);
        if let Some(salt) = salt {
            for spec in &release.members {
                self.maps.set_service_salt(&spec.endpoint(), salt)?;
            }
        }
        let now = Instant::now();
        let rollout = Rollout::start(plan, now);
        let word = SplitWord::new(split.live(), rollout.share());
        self.maps.set_split(ids.split, word)?;
        self.note_split(service, word);
        let details = serde_json::json!({
            "candidate": candidate.name(),
            "steps_percent": rollout.plan.steps.iter().map(|bp| percent_of(*bp)).collect::<Vec<_>>(),
            "hold_ms": rollout.plan.hold.as_millis(),
            "interval_ms": rollout.plan.interval.as_millis(),
            "client_salt": salt,
        });
        let started_event = self
            .journal_event(
                service,
                EventKind::RolloutStarted,
                "operator",
                None,
                None,
                details,
            )
            .unwrap_or(0);
        tracing::info!(service, candidate = candidate.name(), first_step_percent = %format_percent(rollout.share()), "rollout started");
        let active = ActiveRollout {
            started_event,
            candidate,
            sample_base: self.snapshots(&ids)?.sum,
            step_base: self.snapshots(&ids)?,
            last_evaluation: now,
            expected: word,
            paused: None,
            last_judgement: None,
            last_gates: Vec::new(),
            live_baseline_ms: None,
            evaluating: false,
            rollout,
        };
        self.rollouts.insert(service.to_owned(), active);
        self.save_rollout(service);
        self.rollout_status(service)
    }

    pub fn rollout_status(&self, name: &str) -> Result<RolloutStatus, RolloutError> {
        let service = self.release_name(name)?;
        let service = service.as_str();
        let active = self
            .rollouts
            .get(service)
            .ok_or_else(|| RolloutError::NotRunning(service.to_owned()))?;
        Ok(RolloutStatus {
            service: service.to_owned(),
            candidate: active.candidate.name().to_owned(),
            candidate_percent: percent_of(active.rollout.share()),
            step: active.rollout.step,
            steps_percent: active
                .rollout
                .plan
                .steps
                .iter()
                .map(|bp| percent_of(*bp))
                .collect(),
            paused: active.paused.clone(),
            consecutive_failures: active.rollout.consecutive_failures,
            last_judgement: active.last_judgement.as_ref().map(describe),
            gates: active.last_gates.clone(),
            hold_ms: millis(active.rollout.plan.hold),
            held_ms: millis(active.rollout.step_started.elapsed()),
        })
    }

    /// `pause`, `resume`, `promote` or `abort` from an operator.
    pub fn rollout_command(
        &mut self,
        name: &str,
        command: RolloutCommand,
    ) -> Result<String, RolloutError> {
        let service = self.release_name(name)?;
        let service = service.as_str();
        let ids = self.release_ids(service)?;
        let active = self
            .rollouts
            .get_mut(service)
            .ok_or_else(|| RolloutError::NotRunning(service.to_owned()))?;
        match command {
            RolloutCommand::Pause => {
                active.paused = Some("paused by an operator".to_owned());
                self.journal_event(
                    service,
                    EventKind::OperatorOverride,
                    "operator",
                    Some("paused".to_owned()),
                    None,
                    serde_json::json!({}),
                );
                self.save_rollout(service);
                Ok("paused".to_owned())
            }
            RolloutCommand::Resume => {
                // The share in the kernel now is the step's share, even if an operator wrote
                // it: the rollout goes on from there, and the step's hold starts again.
                let kernel = self.maps.split(ids.split)?;
                let snapshots = self.snapshots(&ids)?;
                let now = Instant::now();
                let Some(active) = self.rollouts.get_mut(service) else {
                    return Err(RolloutError::NotRunning(service.to_owned()));
                };
                active.paused = None;
                active.expected = kernel;
                active.step_base = snapshots;
                active.last_evaluation = now;
                active.rollout.step_started = now;
                let green = format_percent(kernel.share_of(Version::Green));
                self.journal_event(
                    service,
                    EventKind::OperatorOverride,
                    "operator",
                    Some(format!("resumed at green {green}%")),
                    None,
                    serde_json::json!({}),
                );
                self.save_rollout(service);
                Ok(format!("resumed at green {green}%"))
            }
            RolloutCommand::Promote => {
                let candidate = active.candidate;
                self.finish(
                    service,
                    &ids,
                    Decision::Promote,
                    candidate,
                    None::<fn() -> serde_json::Value>,
                    Instant::now(),
                )?;
                Ok(format!("promoted: {} is live", candidate.name()))
            }
            RolloutCommand::Abort => {
                let candidate = active.candidate;
                self.finish(
                    service,
                    &ids,
                    Decision::RollBack("aborted by an operator".to_owned()),
                    candidate,
                    None::<fn() -> serde_json::Value>,
                    Instant::now(),
                )?;
                Ok("aborted: every new connection goes to the live pool".to_owned())
            }
        }
    }

    /// Promotes or rolls back, ending the rollout: the write first, then the journal.
    fn finish(
        &mut self,
        service: &str,
        ids: &ReleaseIds,
        decision: Decision,
        candidate: Version,
        gates: Option<impl FnOnce() -> serde_json::Value>,
        decided: Instant,
    ) -> Result<(), RolloutError> {
        let actor = if gates.is_some() { "gates" } else { "operator" };
        let (word, kind, reason) = match &decision {
            Decision::Promote => (SplitWord::new(candidate, 0), EventKind::Promotion, None),
            Decision::RollBack(reason) => (
                SplitWord::new(candidate.other(), 0),
                EventKind::Rollback,
                Some(reason.clone()),
            ),
            Decision::Hold | Decision::Advance(_) => return Ok(()),
        };
        let decision_to_write = if let Some(evaluation) = gates {
            // The gates decided on the word they wrote; an operator's write since then wins.
            let written = self.write_if_unchanged(service, ids.split, word)?;
            let decision_to_write = decided.elapsed();
            // The judgement that decided is journaled after the write, before its outcome.
            self.journal_event(
                service,
                EventKind::GateEvaluation,
                "gates",
                None,
                None,
                evaluation(),
            );
            if !written {
                return Ok(());
            }
            decision_to_write
        } else {
            let _lock = self.split_lock.hold();
            self.maps.set_split(ids.split, word)?;
            decided.elapsed()
        };
        self.note_split(service, word);
        self.rollouts.remove(service);
        self.forget_rollout(service);
        match &decision {
            Decision::RollBack(reason) => {
                tracing::warn!(service, reason = %reason, actor, write_us = decision_to_write.as_micros(), "rolled back: every new connection goes to the live pool")
            }
            _ => tracing::info!(service, live = candidate.name(), actor, "promoted"),
        }
        let event = self.journal_event(
            service,
            kind,
            actor,
            reason,
            Some(decision_to_write),
            serde_json::json!({ "live": word.live().name() }),
        );
        if let (Decision::RollBack(_), Some(event)) = (&decision, event) {
            self.watch_first_connection(event, ids.members.clone(), word.live(), decided);
        }
        self.counters
            .rollouts_ended
            .get_or_create(&RolloutEndLabels {
                service: service.to_owned(),
                outcome: if matches!(decision, Decision::Promote) {
                    "promoted"
                } else {
                    "rolled_back"
                },
                actor: actor.to_owned(),
            })
            .inc();
        Ok(())
    }

    /// The rollouts whose interval has come round, marked as being evaluated, with their
    /// PromQL queries rendered.
    pub fn due_evaluations(&mut self, now: Instant) -> Vec<DueEvaluation> {
        let mut due = Vec::new();
        for (service, active) in &mut self.rollouts {
            if active.paused.is_some()
                || active.evaluating
                || now.duration_since(active.last_evaluation) < active.rollout.plan.interval
            {
                continue;
            }
            active.evaluating = true;
            let plan = &active.rollout.plan;
            let vars = promql::Vars {
                service,
                candidate: active.candidate.name(),
                live: active.candidate.other().name(),
                interval: plan.interval,
            };
            due.push(DueEvaluation {
                service: service.clone(),
                started_event: active.started_event,
                prometheus: plan.prometheus.clone(),
                queries: plan.promql.iter().map(|g| g.render(&vars)).collect(),
            });
        }
        due
    }

    /// Pauses `service`'s rollout because the split word in the kernel (`kernel`) is not the one
    /// the rollout wrote: an operator's `weight` or `rollback` won. Journaled as an override.
    fn pause_on_override(&mut self, service: &str, kernel: SplitWord) {
        let why = format!(
            "the split was changed outside the rollout (green {}%)",
            format_percent(kernel.share_of(Version::Green))
        );
        if let Some(active) = self.rollouts.get_mut(service) {
            active.paused = Some(why.clone());
            // A promotion or rollback the gates had decided did not happen: `resume` judges
            // again from the operator's share.
            active.rollout.done = false;
        }
        self.note_split(service, kernel);
        tracing::warn!(service, "{why}; the rollout is paused");
        self.journal_event(
            service,
            EventKind::OperatorOverride,
            "operator",
            Some(why),
            None,
            serde_json::json!({}),
        );
    }

    /// Writes `word` for the rollout of `service` if the kernel still holds the word the rollout
    /// wrote last, under the split-word lock; otherwise pauses the rollout (an operator's write
    /// won) and returns false.
    fn write_if_unchanged(
        &mut self,
        service: &str,
        id: u32,
        word: SplitWord,
    ) -> Result<bool, RolloutError> {
        let expected = self.rollouts.get(service).map(|a| a.expected);
        let kernel = {
            let _lock = self.split_lock.hold();
            let kernel = self.maps.split(id)?;
            if expected == Some(kernel) {
                self.maps.set_split(id, word)?;
            }
            kernel
        };
        if expected != Some(kernel) {
            self.pause_on_override(service, kernel);
            return Ok(false);
        }
        self.note_split(service, word);
        if let Some(active) = self.rollouts.get_mut(service) {
            active.expected = word;
        }
        Ok(true)
    }

    /// Judges a due rollout with its PromQL readings (in the plan's order) and carries out
    /// the decision. Nothing happens when the rollout ended or was replaced meanwhile.
    pub fn evaluate_rollout(&mut self, due: &DueEvaluation, now: Instant, readings: &[Reading]) {
        let Some(active) = self.rollouts.get_mut(&due.service) else {
            return;
        };
        if active.started_event != due.started_event {
            return;
        }
        active.evaluating = false;
        if active.paused.is_some() {
            return;
        }
        if let Err(error) = self.evaluate(&due.service, now, readings) {
            tracing::warn!(service = due.service, error = %error, "cannot evaluate the rollout");
        }
        self.save_rollout(&due.service);
    }

    fn evaluate(
        &mut self,
        service: &str,
        now: Instant,
        promql_readings: &[Reading],
    ) -> Result<(), RolloutError> {
        let ids = self.release_ids(service)?;
        let kernel = self.maps.split(ids.split)?;
        let Some(active) = self.rollouts.get_mut(service) else {
            return Ok(());
        };
        active.last_evaluation = now;
        if kernel != active.expected {
            self.pause_on_override(service, kernel);
            return Ok(());
        }
        let snapshots = self.snapshots(&ids)?;
        let spread = self.canary_spread(service, &ids)?;
        let member_names: Vec<String> = self
            .config
            .release(service)
            .map(|r| r.members.iter().map(|m| m.name.clone()).collect())
            .unwrap_or_default();
        let Some(active) = self.rollouts.get_mut(service) else {
            return Ok(());
        };
        let (c, l) = (active.candidate as usize, active.candidate.other() as usize);
        let candidate = Window::between(&active.step_base.sum[c], &snapshots.sum[c]);
        let live = Window::between(&active.step_base.sum[l], &snapshots.sum[l]);
        let since_last = [c, l].map(|v| Window::between(&active.sample_base[v], &snapshots.sum[v]));
        active.sample_base = snapshots.sum;
        // A release group is judged as one stack, and each of its services on its own as well:
        // a breach on one service fails the group even when the others' traffic dilutes it in
        // the sum. A service without enough traffic of its own only counts in the sum.
        let gates = &active.rollout.plan.gates;
        let mut readings = kernel_gates(gates, &candidate, &live, active.live_baseline_ms);
        if snapshots.members.len() > 1 {
            for (name, (before, now)) in member_names
                .iter()
                .zip(active.step_base.members.iter().zip(&snapshots.members))
            {
                let member = kernel_gates(
                    gates,
                    &Window::between(&before[c], &now[c]),
                    &Window::between(&before[l], &now[l]),
                    None,
                );
                if let Judgement::Fail(reasons) = Judgement::of(&member) {
                    readings.push(GateReading {
                        gate: format!("service {name}"),
                        limit: "the gates, on this service alone".to_owned(),
                        value: None,
                        state: GateState::Fail(format!("{name}: {}", reasons.join(", "))),
                    });
                }
            }
        }
        let baseline = live_reference(gates, &live, active.live_baseline_ms);
        let promql = &active.rollout.plan.promql;
        readings.extend(promql_gates(promql, promql_readings));
        if let (Some(max), Some(spread)) = (gates.max_divergence, &spread) {
            readings.push(representativeness::gate(
                max,
                spread,
                active.rollout.share(),
            ));
        }
        let judgement = Judgement::of(&readings);
        let promql_details: Vec<_> = promql
            .iter()
            .zip(promql_readings)
            .map(|(gate, reading)| serde_json::json!({ "gate": gate.name, "reading": reading.to_string() }))
            .collect();
        for (gate, reading) in promql.iter().zip(promql_readings) {
            self.counters
                .promql_queries
                .get_or_create(&PromqlLabels {
                    service: service.to_owned(),
                    gate: gate.name.clone(),
                    result: reading.result(),
                })
                .inc();
        }
        let views: Vec<GateView> = readings.iter().map(GateView::from).collect();
        active.last_gates = views;
        active.live_baseline_ms = baseline;
        // The judged windows, for `report`; recorded after any map write.
        let at_ms = crate::store::journal::now_ms();
        let samples: Vec<Sample> = [
            (active.candidate, "candidate", &since_last[0]),
            (active.candidate.other(), "live", &since_last[1]),
        ]
        .into_iter()
        .map(|(version, role, window)| Sample {
            at_ms,
            candidate_share_bp: active.rollout.share(),
            version: version.name().to_owned(),
            role: role.to_owned(),
            requests: window.requests,
            errors: window.errors,
            p99_ms: window.p99_ms,
        })
        .collect();
        let rollout_id = active.started_event;
        let decision = active.rollout.on_judgement(now, &judgement);
        let decided = Instant::now();
        active.last_judgement = Some(judgement.clone());
        let candidate_version = active.candidate;
        // Built when journaled: for a rollback, only after the map write.
        let details = move || {
            serde_json::json!({
                "judgement": describe(&judgement),
                "candidate": { "requests": candidate.requests, "errors": candidate.errors, "p99_ms": candidate.p99_ms },
                "live": { "requests": live.requests, "errors": live.errors, "p99_ms": live.p99_ms, "reference_p99_ms": baseline },
                "promql": promql_details,
                "representativeness": spread,
            })
        };
        let step = match decision {
            Decision::Promote | Decision::RollBack(_) => {
                // The map write first: `finish` journals the evaluation after it.
                let finished = self.finish(
                    service,
                    &ids,
                    decision,
                    candidate_version,
                    Some(details),
                    decided,
                );
                self.record_samples(rollout_id, &samples);
                return finished;
            }
            Decision::Hold => None,
            Decision::Advance(bp) => {
                let word = SplitWord::new(candidate_version.other(), bp);
                if !self.write_if_unchanged(service, ids.split, word)? {
                    return Ok(());
                }
                if let Some(active) = self.rollouts.get_mut(service) {
                    active.step_base = snapshots;
                }
                tracing::info!(service, candidate_percent = %format_percent(bp), "rollout step");
                Some(bp)
            }
        };
        self.record_samples(rollout_id, &samples);
        self.journal_event(
            service,
            EventKind::GateEvaluation,
            "gates",
            None,
            None,
            details(),
        );
        if let Some(bp) = step {
            self.journal_event(
                service,
                EventKind::Step,
                "gates",
                None,
                None,
                serde_json::json!({ "candidate_percent": percent_of(bp) }),
            );
        }
        Ok(())
    }
}
