//! What the daemon reports, one type per event. Each event's `emit` writes its log line, counts
//! it and journals it, from the same fields, so that the log, the metrics and the journal never
//! disagree (as Vector's internal events do). Journaling never blocks or undoes what happened:
//! a journal that cannot be written is logged and the daemon goes on.

use std::time::Duration;

use splitter_common::Version;

use super::metrics::{
    DaemonCounters, DrillLabels, HealthState, PoolLabel, PromqlLabels, RolloutEndLabels,
    TransitionLabels,
};
use crate::{
    engine::{drill::DrillKind, health::Transition},
    kernel::apply::Applied,
    model::{
        actor::Actor,
        error::chain,
        promql::Reading,
        share::{format_percent, percent_of},
    },
    store::journal::{EventKind, Journal, NewEvent},
    view::drill::DrillReport,
};
use crate::{io::users, model::units::micros};

/// Where events go besides the log.
pub(super) struct Sinks<'a> {
    pub counters: &'a DaemonCounters,
    pub journal: Option<&'a Journal>,
}

impl Sinks<'_> {
    /// Journals `event`; its id, or `None` (logged) when there is no journal or the write
    /// failed.
    pub(super) fn record(&self, event: &NewEvent) -> Option<i64> {
        let journal = self.journal?;
        journal
            .record(event)
            .inspect_err(|error| {
                tracing::warn!(service = event.service, kind = event.kind.name(), error = %chain(error), "cannot journal an event");
            })
            .ok()
    }
}

/// An event the daemon reports.
pub(super) trait Event {
    /// Logs, counts and journals the event. The journal entry's id, when it has one.
    fn emit(self, sinks: &Sinks<'_>) -> Option<i64>;
}

fn new_event(service: &str, kind: EventKind, actor: Actor) -> NewEvent {
    NewEvent::new(service, kind, &users::describe(actor))
}

/// A rollout began: its first step's share is written.
pub(super) struct RolloutStarted<'a> {
    pub service: &'a str,
    pub candidate: Version,
    pub steps_bp: &'a [u16],
    pub hold: Duration,
    pub interval: Duration,
    pub client_salt: Option<u32>,
    pub actor: Actor,
}

impl Event for RolloutStarted<'_> {
    fn emit(self, sinks: &Sinks<'_>) -> Option<i64> {
        let first = self.steps_bp.first().copied().unwrap_or(0);
        tracing::info!(service = self.service, candidate = self.candidate.name(), first_step_percent = %format_percent(first), actor = %users::describe(self.actor), "rollout started");
        sinks.record(&NewEvent {
            details: serde_json::json!({
                "candidate": self.candidate.name(),
                "steps_percent": self.steps_bp.iter().map(|bp| percent_of(*bp)).collect::<Vec<_>>(),
                "hold_ms": self.hold.as_millis(),
                "interval_ms": self.interval.as_millis(),
                "client_salt": self.client_salt,
            }),
            ..new_event(self.service, EventKind::RolloutStarted, self.actor)
        })
    }
}

/// The gates judged a window (journaled only: it comes every interval).
pub(super) struct GateEvaluation<'a> {
    pub service: &'a str,
    pub details: serde_json::Value,
}

impl Event for GateEvaluation<'_> {
    fn emit(self, sinks: &Sinks<'_>) -> Option<i64> {
        tracing::debug!(service = self.service, judgement = %self.details["judgement"], "gates judged a window");
        sinks.record(&NewEvent {
            details: self.details,
            ..new_event(self.service, EventKind::GateEvaluation, Actor::Gates)
        })
    }
}

/// A PromQL gate was read.
pub(super) struct PromqlRead<'a> {
    pub service: &'a str,
    pub gate: &'a str,
    pub reading: &'a Reading,
}

impl Event for PromqlRead<'_> {
    fn emit(self, sinks: &Sinks<'_>) -> Option<i64> {
        tracing::debug!(service = self.service, gate = self.gate, reading = %self.reading, "PromQL gate read");
        sinks
            .counters
            .promql_queries
            .get_or_create(&PromqlLabels {
                service: self.service.to_owned(),
                gate: self.gate.to_owned(),
                result: self.reading.result(),
            })
            .inc();
        None
    }
}

/// A rollout moved to its next share.
pub(super) struct RolloutStep<'a> {
    pub service: &'a str,
    pub share_bp: u16,
}

impl Event for RolloutStep<'_> {
    fn emit(self, sinks: &Sinks<'_>) -> Option<i64> {
        tracing::info!(service = self.service, candidate_percent = %format_percent(self.share_bp), "rollout step");
        sinks.record(&NewEvent {
            details: serde_json::json!({ "candidate_percent": percent_of(self.share_bp) }),
            ..new_event(self.service, EventKind::Step, Actor::Gates)
        })
    }
}

/// An operator acted on a running rollout (paused or resumed it), or changed its split from
/// outside, which paused it.
pub(super) struct OperatorOverride<'a> {
    pub service: &'a str,
    pub what: String,
    /// Whether the rollout was overridden from outside (a warning), not operated through it.
    pub from_outside: bool,
    pub actor: Actor,
}

impl Event for OperatorOverride<'_> {
    fn emit(self, sinks: &Sinks<'_>) -> Option<i64> {
        if self.from_outside {
            tracing::warn!(
                service = self.service,
                "{}; the rollout is paused",
                self.what
            );
        } else {
            tracing::info!(service = self.service, actor = %users::describe(self.actor), "{} by an operator", self.what);
        }
        sinks.record(&NewEvent {
            reason: Some(self.what),
            ..new_event(self.service, EventKind::OperatorOverride, self.actor)
        })
    }
}

/// How a rollout ended.
pub(super) enum Ending {
    Promoted,
    RolledBack(String),
}

/// A rollout ended: the candidate promoted, or rolled back. Emitted after the map write.
pub(super) struct RolloutEnded<'a> {
    pub service: &'a str,
    pub ending: Ending,
    /// The gates, or an operator.
    pub actor: Actor,
    /// The version live after the write.
    pub live: Version,
    pub decision_to_write: Duration,
}

impl Event for RolloutEnded<'_> {
    fn emit(self, sinks: &Sinks<'_>) -> Option<i64> {
        let (kind, reason, outcome) = match self.ending {
            Ending::Promoted => {
                tracing::info!(
                    service = self.service,
                    live = self.live.name(),
                    actor = %users::describe(self.actor),
                    "promoted"
                );
                (EventKind::Promotion, None, "promoted")
            }
            Ending::RolledBack(reason) => {
                tracing::warn!(service = self.service, reason = %reason, actor = %users::describe(self.actor), write_us = self.decision_to_write.as_micros(), "rolled back: every new connection goes to the live pool");
                (EventKind::Rollback, Some(reason), "rolled_back")
            }
        };
        let id = sinks.record(&NewEvent {
            reason,
            decision_to_write_us: Some(micros(self.decision_to_write)),
            details: serde_json::json!({ "live": self.live.name() }),
            ..new_event(self.service, kind, self.actor)
        });
        sinks
            .counters
            .rollouts_ended
            .get_or_create(&RolloutEndLabels {
                service: self.service.to_owned(),
                outcome,
                actor: self.actor.label().to_owned(),
            })
            .inc();
        id
    }
}

/// A drill could not be run safely and was refused; nothing was changed.
pub(super) struct DrillRefused<'a, E> {
    pub service: &'a str,
    pub kind: DrillKind,
    pub trigger: Actor,
    pub error: &'a E,
}

impl<E: std::error::Error + 'static> Event for DrillRefused<'_, E> {
    fn emit(self, sinks: &Sinks<'_>) -> Option<i64> {
        let what = match self.kind {
            DrillKind::Rollback => "drill refused",
            DrillKind::LastResort => "last-resort drill refused",
        };
        tracing::warn!(service = self.service, actor = %users::describe(self.trigger), error = %chain(self.error), "{what}");
        count_drill(sinks, self.service, self.trigger, "refused");
        None
    }
}

/// A drill ran to its end.
pub(super) struct DrillEnded<'a> {
    pub report: &'a DrillReport,
    pub trigger: Actor,
    pub write: Duration,
}

impl Event for DrillEnded<'_> {
    fn emit(self, sinks: &Sinks<'_>) -> Option<i64> {
        let report = self.report;
        tracing::info!(service = report.service, kind = report.kind.name(), actor = %users::describe(self.trigger), outcome = report.outcome, connections_needed = report.connections_needed, new_on_live = report.new_on_live, "drill ended");
        count_drill(sinks, &report.service, self.trigger, &report.outcome);
        let kind = match report.kind {
            DrillKind::Rollback => EventKind::Drill,
            DrillKind::LastResort => EventKind::LastResortDrill,
        };
        sinks.record(&NewEvent {
            reason: Some(report.outcome.clone()),
            decision_to_write_us: Some(micros(self.write)),
            details: serde_json::to_value(report).unwrap_or_default(),
            ..new_event(&report.service, kind, self.trigger)
        })
    }
}

fn count_drill(sinks: &Sinks<'_>, service: &str, trigger: Actor, outcome: &str) {
    sinks
        .counters
        .drills
        .get_or_create(&DrillLabels {
            service: service.to_owned(),
            outcome: outcome.to_owned(),
            actor: trigger.label(),
        })
        .inc();
}

/// A backend went up or down.
pub(super) struct HealthChanged<'a> {
    pub transition: &'a Transition,
}

impl Event for HealthChanged<'_> {
    fn emit(self, sinks: &Sinks<'_>) -> Option<i64> {
        let transition = self.transition;
        let backend = &transition.backend;
        let state = if transition.healthy {
            tracing::info!(service = %backend.service, version = backend.pool.name(), backend = %backend.addr, "backend is up; back in its pool");
            HealthState::up
        } else {
            tracing::warn!(service = %backend.service, version = backend.pool.name(), backend = %backend.addr, reason = transition.reason.as_deref().unwrap_or("?"), "backend is down; out of its pool");
            HealthState::down
        };
        sinks
            .counters
            .health_transitions
            .get_or_create(&TransitionLabels {
                service: backend.service.clone(),
                version: PoolLabel(backend.pool),
                backend: backend.addr.to_string(),
                state,
            })
            .inc();
        None
    }
}

/// A config was applied: at start (`reload: false`) or by a reload.
pub(super) struct ConfigApplied<'a> {
    pub applied: &'a Applied,
    pub reload: bool,
}

impl Event for ConfigApplied<'_> {
    fn emit(self, sinks: &Sinks<'_>) -> Option<i64> {
        let applied = self.applied;
        tracing::info!(
            added = ?applied.added,
            kept = ?applied.kept,
            removed = ?applied.removed,
            purged_flows = applied.purged_flows,
            draining_backends = applied.draining_backends,
            "{}",
            if self.reload { "reloaded" } else { "config applied" }
        );
        if self.reload {
            sinks.counters.reloads.inc();
        }
        None
    }
}

/// A reload was refused; the running config stays.
pub(super) struct ReloadRefused<'a, E> {
    pub error: &'a E,
}

impl<E: std::error::Error + 'static> Event for ReloadRefused<'_, E> {
    fn emit(self, sinks: &Sinks<'_>) -> Option<i64> {
        tracing::warn!(error = %chain(self.error), "reload refused; the running config stays");
        sinks.counters.reload_errors.inc();
        None
    }
}

/// A drain ended: the connections of a version a rollback or a promotion left are closed.
/// Journaled with its report (counted by the drain itself, per outcome).
pub(super) struct DrainEnded<'a> {
    pub report: &'a crate::view::drain::DrainReport,
    pub details: serde_json::Value,
}

impl Event for DrainEnded<'_> {
    fn emit(self, sinks: &Sinks<'_>) -> Option<i64> {
        let report = self.report;
        sinks.record(&NewEvent {
            reason: Some(report.describe()),
            details: self.details,
            ..new_event(&report.service, EventKind::Drain, Actor::Gates)
        })
    }
}

/// A drain that a stopped daemon left unfinished was given up at start.
pub(super) struct DrainAbandoned {
    pub flows: usize,
}

impl Event for DrainAbandoned {
    fn emit(self, sinks: &Sinks<'_>) -> Option<i64> {
        sinks.record(&NewEvent {
            reason: Some(format!(
                "a drain left unfinished by a stopped daemon was given up: {} connection(s) stay open until their clients close them",
                self.flows
            )),
            details: serde_json::json!({ "flows": self.flows }),
            ..new_event("*", EventKind::Drain, Actor::Gates)
        })
    }
}
