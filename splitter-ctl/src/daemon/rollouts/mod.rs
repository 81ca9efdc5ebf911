//! Rollouts as the daemon runs them: started from the control API with a plan, judged at
//! every interval over the current step's window of kernel counters (`evaluate`), and moved on
//! by the decisions of `engine::rollout`. Every share change is one write of the split word
//! and comes before its journal entry; a rollback's decision-to-write time is measured and
//! journaled. A rollout's state is saved in the journal at every change (`saved`), so that a
//! restarted daemon resumes it at the same step.
//!
//! A change of the split word that the rollout did not make (an operator's `weight` or
//! `rollback`) pauses the rollout and is journaled as an operator override.

mod evaluate;
mod saved;

use std::time::Instant;

use splitter_common::{LatencyKind, SplitWord, Version};

pub use self::evaluate::DueEvaluation;
use super::{
    Daemon,
    events::{Ending, GateEvaluation, OperatorOverride, RolloutEnded, RolloutStarted},
};
use crate::model::units::millis;
use crate::{
    engine::{
        gates::{Carried, Judgement, Snapshot, Window, folded},
        rollout::{Decision, Rollout},
        signals,
    },
    io::{http::HttpError, prometheus},
    model::{
        actor::Actor,
        plan::{Plan, PlanError, PlanRequest},
        share::{format_percent, percent_of},
    },
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
    /// The live pool's last window with enough live traffic: what the candidate is compared
    /// with once the live pool gets no new connections.
    pub live_reference: Option<Window>,
    /// The kernel gates' evidence from the finished steps (see `engine::stats`), by gate (a
    /// release group's services' under `service/gate`).
    pub carried: Carried,
    /// The evidence of the current step's window at its last judgement: carried on when the
    /// step ends, and also when its window starts again (a resume, a restart), so that what
    /// was looked at is never forgotten.
    pub step_evidence: Carried,
    /// An evaluation is under way (its PromQL queries are out).
    pub evaluating: bool,
    /// The rollout's tracing span: every log line of the rollout carries its service and id.
    pub span: tracing::Span,
    /// The client of the plan's Prometheus, its TLS set up when the rollout started.
    pub prometheus: Option<prometheus::Client>,
}

impl ActiveRollout {
    /// Adds the current step's evidence to what the rollout carries, before its window starts
    /// again.
    pub fn fold_step_evidence(&mut self) {
        self.carried = folded(&self.carried, &self.step_evidence);
        self.step_evidence.clear();
    }
}

/// Who ended a rollout: the gates, with the judgement to journal after the write, or an
/// operator.
enum DecidedBy<F> {
    Gates(F),
    Operator(Actor),
}

impl<F> DecidedBy<F> {
    const fn actor(&self) -> Actor {
        match self {
            Self::Gates(_) => Actor::Gates,
            Self::Operator(actor) => *actor,
        }
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
    #[error("the plan")]
    Plan(#[from] PlanError),
    #[error("the plan's Prometheus cannot be reached this way")]
    Prometheus(#[from] HttpError),
    #[error(
        "the kernel cannot read the requests of {0} (l7 = \"opaque\", or only TLS and other unreadable connections seen), so its error and latency gates cannot judge this rollout: give the plan PromQL gates (--promql-gate), or acknowledge that only L4 signals judge it (--l4-only: connections, resets, refused handshakes, handshake time)"
    )]
    Blind(String),
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

pub(super) fn describe(judgement: &Judgement) -> String {
    match judgement {
        Judgement::Inconclusive(why) => format!("inconclusive: {why}"),
        Judgement::Pass => "pass".to_owned(),
        Judgement::Fail(reasons) => format!("fail: {}", reasons.join("; ")),
    }
}

/// The span of the rollout of `service` journaled as `started_event`. At the error level, so
/// that it is on whatever the log filter: a warning about a rollout always says which.
fn span(service: &str, started_event: i64) -> tracing::Span {
    tracing::error_span!("rollout", service, id = started_event)
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

    /// The counters of release `ids`, summed over its services: a release group is judged as
    /// the whole stack.
    /// The counters and times `plan` judges (with `l4_only`, `signals::l4_view` and the
    /// handshake times; otherwise the plan's `latency`).
    fn snapshots(&self, ids: &ReleaseIds, plan: &Plan) -> Result<ReleaseSnapshot, RolloutError> {
        let snapshot = |id: u32, version| -> Result<Snapshot, RolloutError> {
            let counters = self.maps.counters(id, version)?;
            Ok(if plan.l4_only {
                Snapshot {
                    counters: signals::l4_view(&counters),
                    response: self.maps.histogram(id, version, LatencyKind::Handshake)?,
                }
            } else {
                Snapshot {
                    counters,
                    response: self.maps.histogram(id, version, plan.latency.kind())?,
                }
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

    /// Starts a rollout of the candidate of `name` (a service, or a release group or one of its
    /// services: the rollout is then the group's): writes the first step's share.
    pub fn start_rollout(
        &mut self,
        name: &str,
        request: PlanRequest,
        actor: Actor,
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
            .into_plan()?;
        // A gate never judges what it cannot see: a service whose requests the kernel cannot
        // read needs PromQL gates, or the acknowledgement that only L4 signals judge it.
        let unreadable = self.unreadable_members(service);
        if let Some(blind) = signals::refused_blind(&plan, &unreadable) {
            return Err(RolloutError::Blind(blind.join(", ")));
        }
        let client = plan
            .prometheus
            .as_ref()
            .map(prometheus::Client::new)
            .transpose()?;
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
        let salt = release
            .leader()
            .client_affinity
            .then(crate::io::salt::fresh);
        if let Some(salt) = salt {
            for spec in &release.members {
                self.maps.set_service_salt(&spec.endpoint(), salt)?;
            }
        }
        let now = Instant::now();
        let base = self.snapshots(&ids, &plan)?;
        let rollout = Rollout::start(plan, now);
        let word = SplitWord::new(split.live(), rollout.share());
        self.maps.set_split(ids.split, word)?;
        self.note_split(service, word);
        let started_event = self
            .emit(RolloutStarted {
                service,
                candidate,
                steps_bp: &rollout.plan.steps,
                hold: rollout.plan.hold,
                interval: rollout.plan.interval,
                client_salt: salt,
                actor,
            })
            .unwrap_or(0);
        let active = ActiveRollout {
            started_event,
            candidate,
            sample_base: base.sum,
            step_base: base,
            last_evaluation: now,
            expected: word,
            paused: None,
            last_judgement: None,
            last_gates: Vec::new(),
            live_reference: None,
            carried: Carried::new(),
            step_evidence: Carried::new(),
            evaluating: false,
            span: span(service, started_event),
            prometheus: client,
            rollout,
        };
        self.rollouts.insert(service.to_owned(), active);
        self.save_rollout(service);
        self.rollout_status(service)
    }

    /// The services of release `service` whose requests the kernel cannot read
    /// (`signals::unreadable`), by their counters in the kernel now.
    pub(super) fn unreadable_members(&self, service: &str) -> Vec<String> {
        let Some(release) = self.config.release(service) else {
            return Vec::new();
        };
        release
            .members
            .iter()
            .filter(|spec| {
                let counters: Vec<_> = match self.maps.service(&spec.endpoint()) {
                    Ok(Some(kernel)) => [Version::Blue, Version::Green]
                        .iter()
                        .filter_map(|v| self.maps.counters(kernel.id, *v).ok())
                        .collect(),
                    _ => Vec::new(),
                };
                signals::unreadable(spec.l7, signals::protocols_of(&counters))
            })
            .map(|spec| spec.name.clone())
            .collect()
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
            step: active.rollout.step + 1,
            steps: active.rollout.plan.steps.len(),
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
            judged_by: signals::judged_by(&active.rollout.plan, &self.unreadable_members(service)),
            hold_ms: millis(active.rollout.plan.hold),
            held_ms: millis(active.rollout.step_started.elapsed()),
        })
    }

    /// `pause`, `resume`, `promote` or `abort` from an operator.
    pub fn rollout_command(
        &mut self,
        name: &str,
        command: RolloutCommand,
        actor: Actor,
    ) -> Result<String, RolloutError> {
        let service = self.release_name(name)?;
        let service = service.as_str();
        let ids = self.release_ids(service)?;
        let active = self
            .rollouts
            .get_mut(service)
            .ok_or_else(|| RolloutError::NotRunning(service.to_owned()))?;
        let span = active.span.clone();
        let _entered = span.enter();
        match command {
            RolloutCommand::Pause => {
                active.paused = Some("paused by an operator".to_owned());
                self.emit(OperatorOverride {
                    service,
                    what: "paused".to_owned(),
                    from_outside: false,
                    actor,
                });
                self.save_rollout(service);
                Ok("paused".to_owned())
            }
            RolloutCommand::Resume => {
                // The share in the kernel now is the step's share, even if an operator wrote
                // it: the rollout goes on from there, and the step's hold starts again.
                let kernel = self.maps.split(ids.split)?;
                let plan = self
                    .rollouts
                    .get(service)
                    .map(|active| active.rollout.plan.clone())
                    .ok_or_else(|| RolloutError::NotRunning(service.to_owned()))?;
                let snapshots = self.snapshots(&ids, &plan)?;
                let now = Instant::now();
                let Some(active) = self.rollouts.get_mut(service) else {
                    return Err(RolloutError::NotRunning(service.to_owned()));
                };
                active.paused = None;
                active.expected = kernel;
                active.fold_step_evidence();
                active.step_base = snapshots;
                active.last_evaluation = now;
                active.rollout.step_started = now;
                let what = format!(
                    "resumed at green {}%",
                    format_percent(kernel.share_of(Version::Green))
                );
                self.emit(OperatorOverride {
                    service,
                    what: what.clone(),
                    from_outside: false,
                    actor,
                });
                self.save_rollout(service);
                Ok(what)
            }
            RolloutCommand::Promote => {
                let candidate = active.candidate;
                self.finish(
                    service,
                    &ids,
                    Decision::Promote,
                    candidate,
                    DecidedBy::<fn() -> serde_json::Value>::Operator(actor),
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
                    DecidedBy::<fn() -> serde_json::Value>::Operator(actor),
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
        by: DecidedBy<impl FnOnce() -> serde_json::Value>,
        decided: Instant,
    ) -> Result<(), RolloutError> {
        let (word, ending) = match decision {
            Decision::Promote => (SplitWord::new(candidate, 0), Ending::Promoted),
            Decision::RollBack(reason) => (
                SplitWord::new(candidate.other(), 0),
                Ending::RolledBack(reason),
            ),
            Decision::Hold | Decision::Advance(_) => return Ok(()),
        };
        let (actor, decision_to_write) = if let DecidedBy::Gates(evaluation) = by {
            // The gates decided on the word they wrote; an operator's write since then wins.
            let written = self.write_if_unchanged(service, ids.split, word)?;
            let decision_to_write = decided.elapsed();
            // The judgement that decided is journaled after the write, before its outcome.
            self.emit(GateEvaluation {
                service,
                details: evaluation(),
            });
            if !written {
                return Ok(());
            }
            (Actor::Gates, decision_to_write)
        } else {
            let _lock = self.split_lock.hold();
            self.maps.set_split(ids.split, word)?;
            (by.actor(), decided.elapsed())
        };
        self.note_split(service, word);
        self.rollouts.remove(service);
        self.forget_rollout(service);
        let rolled_back = matches!(ending, Ending::RolledBack(_));
        let event = self.emit(RolloutEnded {
            service,
            ending,
            actor,
            live: word.live(),
            decision_to_write,
        });
        // The version left: the candidate after a rollback, the old live one after a promotion.
        let decided_ns = crate::kernel::aging::monotonic_ns()
            .saturating_sub(crate::model::units::micros(decided.elapsed()) * 1_000);
        self.drain_after(
            service,
            &ids.members,
            word.live().other(),
            !rolled_back,
            decided_ns,
            event.filter(|_| rolled_back),
        );
        Ok(())
    }
}
