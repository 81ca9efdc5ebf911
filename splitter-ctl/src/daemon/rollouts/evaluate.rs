//! A rollout's judgement at each interval: its PromQL gates read without the daemon's lock
//! (`DueEvaluation`), then every gate judged over the step's window, and the decision carried
//! out: a step, a promotion or a rollback, the map write before its journal entry.

use std::time::Instant;

use splitter_common::{SplitWord, Version};

use super::{DecidedBy, ReleaseIds, RolloutError, describe};
use crate::{
    daemon::{
        Daemon,
        events::{Event as _, GateEvaluation, OperatorOverride, PromqlRead, RolloutStep, Sinks},
    },
    engine::{
        gates::{
            Carried, GateReading, GateState, Judgement, Window, evidence_of, kernel_gates,
            live_reference, promql_gates,
        },
        representativeness,
        rollout::Decision,
        signals,
    },
    io::prometheus,
    model::{
        actor::Actor,
        error::chain,
        l7::L7,
        promql::{self, Reading},
        share::format_percent,
    },
    store::journal::Sample,
    view::rollout::GateView,
};

/// A rollout whose interval has come round, with the PromQL queries to read before it is
/// judged. The queries run without the daemon's lock.
#[derive(Debug)]
pub struct DueEvaluation {
    pub service: String,
    started_event: i64,
    prometheus: Option<prometheus::Client>,
    /// Each PromQL gate's query, placeholders replaced.
    queries: Vec<String>,
}

impl DueEvaluation {
    /// Reads every PromQL gate at once; no I/O when there are none.
    pub async fn read(&self) -> Vec<Reading> {
        let Some(client) = &self.prometheus else {
            return Vec::new();
        };
        let mut reads = tokio::task::JoinSet::new();
        for (i, query) in self.queries.iter().enumerate() {
            let (client, query) = (client.clone(), query.clone());
            reads.spawn(async move { (i, client.query(&query).await) });
        }
        let mut readings = vec![Reading::Failed("not read".to_owned()); self.queries.len()];
        while let Some(Ok((i, reading))) = reads.join_next().await {
            readings[i] = reading;
        }
        readings
    }
}

impl Daemon {
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
                prometheus: active.prometheus.clone(),
                queries: plan.promql.iter().map(|g| g.render(&vars)).collect(),
            });
        }
        due
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
        let span = active.span.clone();
        let _entered = span.enter();
        if let Err(error) = self.evaluate(&due.service, now, readings) {
            tracing::warn!(service = due.service, error = %chain(&error), "cannot evaluate the rollout");
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
        let plan = active.rollout.plan.clone();
        let snapshots = self.snapshots(&ids, &plan)?;
        let spread = self.canary_spread(service, &ids)?;
        let member_specs: Vec<(String, L7)> = self
            .config
            .release(service)
            .map(|r| r.members.iter().map(|m| (m.name.clone(), m.l7)).collect())
            .unwrap_or_default();
        // The services whose requests the kernel cannot read (`signals::unreadable`): their
        // windows hold no request, so the kernel's request gates say nothing of them; with all
        // of them so, the plan's PromQL gates judge the release alone (or, with `l4_only`, the
        // L4 windows do, which every service has).
        let unreadable: Vec<bool> = member_specs
            .iter()
            .zip(&snapshots.members)
            .map(|((_, l7), versions)| {
                !plan.l4_only
                    && signals::unreadable(
                        *l7,
                        signals::protocols_of(versions.iter().map(|v| &v.counters)),
                    )
            })
            .collect();
        let blind = !unreadable.is_empty() && unreadable.iter().all(|u| *u);
        let Some(active) = self.rollouts.get_mut(service) else {
            return Ok(());
        };
        // A step's warm-up is left out: its window starts when the warm-up ends.
        if active.rollout.warming_up(now) {
            let warmup = active.rollout.plan.warmup;
            active.step_base = snapshots;
            active.sample_base = active.step_base.sum;
            active.last_judgement = Some(Judgement::Inconclusive(format!(
                "warming up: the first {} ms of the step are not judged",
                crate::model::units::millis(warmup)
            )));
            return Ok(());
        }
        let (c, l) = (active.candidate as usize, active.candidate.other() as usize);
        let candidate = Window::between(&active.step_base.sum[c], &snapshots.sum[c]);
        let live = Window::between(&active.step_base.sum[l], &snapshots.sum[l]);
        let since_last = [c, l].map(|v| Window::between(&active.sample_base[v], &snapshots.sum[v]));
        active.sample_base = snapshots.sum;
        // A release group is judged as one stack, and each of its services on its own as well:
        // a breach on one service fails the group even when the others' traffic dilutes it in
        // the sum. A service without enough traffic of its own only counts in the sum.
        // A release group's false-alarm budget is split between the stack and each service.
        let members = if snapshots.members.len() > 1 {
            snapshots.members.len()
        } else {
            0
        };
        let gates = &active.rollout.plan.gates.sharing_budget(members + 1);
        let mut readings = if blind {
            signals::blind_readings(&plan)
        } else {
            kernel_gates(
                gates,
                &candidate,
                &live,
                active.live_reference.as_ref(),
                &active.carried,
            )
        };
        let mut step_evidence = evidence_of(&readings, "");
        if members > 0 {
            for (((name, _), unreadable), (before, now)) in member_specs
                .iter()
                .zip(&unreadable)
                .zip(active.step_base.members.iter().zip(&snapshots.members))
            {
                if *unreadable {
                    continue;
                }
                // Each service on its own, with its own evidence (under `service/gate`).
                let prefix = format!("{name}/");
                let carried: Carried = active
                    .carried
                    .iter()
                    .filter_map(|(k, e)| k.strip_prefix(&prefix).map(|g| (g.to_owned(), *e)))
                    .collect();
                let member = kernel_gates(
                    gates,
                    &Window::between(&before[c], &now[c]),
                    &Window::between(&before[l], &now[l]),
                    None,
                    &carried,
                );
                step_evidence.extend(evidence_of(&member, &prefix));
                if let Judgement::Fail(reasons) = Judgement::of(&member) {
                    readings.push(GateReading {
                        gate: format!("service {name}"),
                        limit: "the gates, on this service alone".to_owned(),
                        value: None,
                        state: GateState::Fail(format!("{name}: {}", reasons.join(", "))),
                        numbers: Vec::new(),
                        evidence: None,
                    });
                }
            }
        }
        let reference = live_reference(gates, &live, active.live_reference.as_ref()).copied();
        let reference_p99_ms = reference.as_ref().and_then(Window::p99_ms);
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
        // The readings judged are counted (the daemon's counters, beside the rollout borrowed).
        let sinks = Sinks {
            counters: &self.counters,
            journal: self.journal.as_ref(),
        };
        for (gate, reading) in promql.iter().zip(promql_readings) {
            PromqlRead {
                service,
                gate: &gate.name,
                reading,
            }
            .emit(&sinks);
        }
        let promql_details: Vec<_> = promql
            .iter()
            .zip(promql_readings)
            .map(|(gate, reading)| serde_json::json!({ "gate": gate.name, "reading": reading.to_string() }))
            .collect();
        let views: Vec<GateView> = readings.iter().map(GateView::from).collect();
        let gate_details = serde_json::to_value(&views).unwrap_or_default();
        active.step_evidence = step_evidence;
        active.last_gates = views;
        active.live_reference = reference;
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
            p99_ms: window.p99_ms(),
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
                "gates": gate_details,
                "candidate": { "requests": candidate.requests, "errors": candidate.errors, "p50_ms": candidate.quantile_ms(0.5), "p99_ms": candidate.p99_ms() },
                "live": { "requests": live.requests, "errors": live.errors, "p50_ms": live.quantile_ms(0.5), "p99_ms": live.p99_ms(), "reference_p99_ms": reference_p99_ms },
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
                    DecidedBy::Gates(details),
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
                    // The finished step's evidence carries into the next one.
                    active.fold_step_evidence();
                    active.step_base = snapshots;
                }
                Some(bp)
            }
        };
        self.record_samples(rollout_id, &samples);
        self.emit(GateEvaluation {
            service,
            details: details(),
        });
        if let Some(share_bp) = step {
            self.emit(RolloutStep { service, share_bp });
        }
        Ok(())
    }

    /// Writes `word` for the rollout of `service` if the kernel still holds the word the rollout
    /// wrote last, under the split-word lock; otherwise pauses the rollout (an operator's write
    /// won) and returns false.
    pub(super) fn write_if_unchanged(
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
        self.emit(OperatorOverride {
            service,
            what: why,
            from_outside: true,
            actor: Actor::Operator { uid: None },
        });
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
            tracing::warn!(error = %chain(&error), "cannot journal the judged windows");
        }
    }
}
