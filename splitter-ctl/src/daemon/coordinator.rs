//! Fleet rollouts in the daemon. One node at a time coordinates them, elected by creating
//! `{prefix}/v1/coordinator` under a lease of its own (a transaction that succeeds only while
//! the key is absent); the others watch the key and campaign as soon as it goes, which is when
//! the coordinator's lease lapses (it died, or lost etcd): within the lease's TTL.
//!
//! The coordinator judges each running rollout (`{prefix}/v1/rollouts/{release}`) at its
//! plan's interval on the evidence every node reports (`engine::fleet_rollout`): a node that
//! stops reporting, or has not applied the step, holds it. It moves the desired split and the
//! record together, in one transaction compared on both and on its own key, so that a
//! coordinator that lost its key (cut off, replaced) writes nothing more, and an operator's
//! change of the split in between pauses the rollout instead of being undone.

use std::{
    collections::{BTreeMap, BTreeSet},
    convert::Infallible,
    time::{Duration, Instant},
};

use splitter_common::{SplitWord, Version};

use super::{
    Shared,
    events::{Event, GateEvaluation, OperatorOverride, Sinks},
    fleet::{MAX_BACKOFF, MIN_BACKOFF, SessionEnd, call_timeout, to_json},
    lock,
    rollouts::describe,
};
use crate::{
    engine::{
        fleet_rollout::{Seen, from_evidence, judge, node_windows, to_evidence},
        rollout::{Decision, Rollout},
    },
    io::{
        etcd::{Change, Etcd, EtcdError, Kv},
        fleet as fleet_events,
    },
    model::{
        actor::Actor,
        error::chain,
        fleet::{Cause, Desired, Fleet, Member, NodeReport, SCHEMA, version_named},
        fleet_rollout::{self, Coordinator, FleetRollout, LastJudgement, State, Takeover},
        plan::Plan,
        share::percent_of,
    },
    store::journal::{EventKind, NewEvent, now_ms},
};

/// How often the coordinator looks at the rollouts; each is judged at its plan's interval.
const TICK: Duration = Duration::from_millis(100);
/// How long a stopping daemon tries to hand the coordinator's key over.
const STEP_DOWN_TIMEOUT: Duration = Duration::from_secs(1);

/// Campaigns for the coordinator's key, and coordinates while this node holds it, for as long
/// as the daemon runs and its config has `[fleet]`.
pub(super) async fn coordinate(shared: Shared) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let fleet = lock(&shared).config.fleet.clone();
        let Some(fleet) = fleet else {
            tokio::time::sleep(MAX_BACKOFF).await;
            continue;
        };
        let started = tokio::time::Instant::now();
        let ended = match Etcd::new(&fleet, call_timeout(&fleet)) {
            Ok(etcd) => match campaign(&shared, &fleet, &etcd).await {
                Ok(never) => match never {},
                Err(end) => end,
            },
            Err(error) => SessionEnd::Etcd(error),
        };
        // Losing etcd is logged by the node's follower; this is its echo.
        tracing::debug!(error = %chain(&ended), "the campaign for the fleet's coordinator ended");
        if started.elapsed() > fleet.lease_ttl {
            backoff = MIN_BACKOFF;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn campaign(shared: &Shared, fleet: &Fleet, etcd: &Etcd) -> Result<Infallible, SessionEnd> {
    let key = fleet.coordinator_key();
    loop {
        let lease = etcd.grant(fleet.lease_ttl).await?;
        let me = Coordinator {
            schema: SCHEMA,
            node: fleet.node.clone(),
            since_ms: now_ms(),
        };
        let won = etcd
            .put_all_if(&[(&key, 0)], &[(&key, &to_json(&me))], Some(lease))
            .await;
        match won {
            Ok(Some(fence)) => {
                tracing::info!(node = %fleet.node, "this node coordinates the fleet's rollouts");
                {
                    let mut daemon = lock(shared);
                    daemon.counters.fleet.coordinating.set(1);
                    daemon.fleet.coordinator_lease = Some(lease);
                }
                let mut leader = Leader {
                    shared,
                    fleet,
                    etcd,
                    lease,
                    fence,
                    rollouts: BTreeMap::new(),
                };
                let led = leader.lead().await;
                {
                    let mut daemon = lock(shared);
                    daemon.counters.fleet.coordinating.set(0);
                    daemon.fleet.coordinator_lease = None;
                }
                // Stepping down: the others take over at once, not when the lease lapses.
                let _ = etcd.revoke(lease).await;
                let Err(end) = led;
                tracing::info!(node = %fleet.node, why = %chain(&end), "this node no longer coordinates the fleet's rollouts");
                return Err(end);
            }
            Ok(None) => {
                let _ = etcd.revoke(lease).await;
            }
            Err(error) => {
                let _ = etcd.revoke(lease).await;
                return Err(error.into());
            }
        }
        vacancy(shared, fleet, etcd, &key).await?;
    }
}

/// A daemon stopping that coordinates the fleet's rollouts revokes its lease, so that another
/// node takes over at once rather than when the lease lapses. Within a second at most: a
/// daemon's stop never waits on etcd longer.
pub(super) async fn step_down(shared: &Shared) {
    let (lease, fleet) = {
        let daemon = lock(shared);
        (daemon.fleet.coordinator_lease, daemon.config.fleet.clone())
    };
    let (Some(lease), Some(fleet)) = (lease, fleet) else {
        return;
    };
    let revoked = match Etcd::new(&fleet, STEP_DOWN_TIMEOUT) {
        Ok(etcd) => etcd.revoke(lease).await,
        Err(error) => Err(error),
    };
    match revoked {
        Ok(()) => tracing::info!(node = %fleet.node, "stepped down as the fleet's coordinator"),
        Err(error) => {
            tracing::warn!(error = %chain(&error), "cannot step down as the fleet's coordinator; another node takes over when the lease lapses")
        }
    }
}

/// Waits until the coordinator's key is gone: its holder's lease lapsed, or it stepped down.
/// The key is read again every third of the lease, in case the watch's member went silent.
async fn vacancy(shared: &Shared, fleet: &Fleet, etcd: &Etcd, key: &str) -> Result<(), SessionEnd> {
    let Some(holder) = etcd.get(key).await? else {
        return Ok(());
    };
    let mut watch = etcd.watch(key, holder.mod_revision + 1).await?;
    let mut check = tokio::time::interval(fleet.lease_ttl / 3);
    check.tick().await;
    loop {
        tokio::select! {
            batch = watch.next() => {
                if batch?.changes.iter().any(|c| matches!(c, Change::Delete { .. })) {
                    return Ok(());
                }
            }
            _ = check.tick() => {
                if lock(shared).config.fleet.as_ref() != Some(fleet) {
                    return Err(SessionEnd::Reconfigured);
                }
                if etcd.get(key).await?.is_none() {
                    return Ok(());
                }
            }
        }
    }
}

/// Renews the coordinator's lease every third of its TTL until it cannot: expired, or not
/// renewed for a whole TTL; then says why on `lost`.
async fn keep(
    etcd: Etcd,
    lease: i64,
    ttl: Duration,
    lost: tokio::sync::oneshot::Sender<EtcdError>,
) {
    let mut renewed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(ttl / 3).await;
        match etcd.keep_alive(lease).await {
            Ok(()) => renewed = tokio::time::Instant::now(),
            Err(error @ EtcdError::LeaseExpired(_)) => {
                let _ = lost.send(error);
                return;
            }
            Err(error) if renewed.elapsed() >= ttl => {
                let _ = lost.send(error);
                return;
            }
            Err(_) => {}
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What stops one rollout's judgement.
#[derive(Debug, thiserror::Error)]
enum Problem {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    /// Another node holds the coordinator's key now.
    #[error("another node coordinates the fleet's rollouts now")]
    Deposed,
    /// This node cannot judge it (its config lacks the release, or the plan does not
    /// validate here): it holds, said once.
    #[error("{0}")]
    Here(String),
}

/// What the coordinator keeps of one rollout between judgements: nothing that another
/// coordinator needs (that is in the record), only where each node's window starts.
#[derive(Default)]
struct Judging {
    started_at_ms: i64,
    last: Option<Instant>,
    bases: BTreeMap<String, crate::engine::fleet_rollout::Base>,
    /// The problem said last, so that it is said once.
    problem: Option<String>,
}

struct Leader<'a> {
    shared: &'a Shared,
    fleet: &'a Fleet,
    etcd: &'a Etcd,
    lease: i64,
    /// The revision this node's key was created at: every write compares it.
    fence: i64,
    rollouts: BTreeMap<String, Judging>,
}

impl Leader<'_> {
    async fn lead(&mut self) -> Result<Infallible, SessionEnd> {
        // The lease is renewed beside the judgements, which wait on etcd: a slow judgement
        // never lets it lapse while etcd answers. Losing it ends this node's turn.
        let (lost_tx, mut lost) = tokio::sync::oneshot::channel();
        let keeper = tokio::spawn(keep(
            self.etcd.clone(),
            self.lease,
            self.fleet.lease_ttl,
            lost_tx,
        ));
        let _keeper = AbortOnDrop(keeper);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let prefix = self.fleet.rollouts_prefix();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                error = &mut lost => {
                    return Err(match error {
                        Ok(error) => error.into(),
                        Err(_) => SessionEnd::Deposed,
                    });
                }
            }
            if lock(self.shared).config.fleet.as_ref() != Some(self.fleet) {
                return Err(SessionEnd::Reconfigured);
            }
            // A call that fails is tried again at the next tick: this node keeps its turn for
            // as long as its lease lives.
            let kvs = match self.etcd.range_prefix(&prefix).await {
                Ok((_, kvs)) => kvs,
                Err(error) => {
                    tracing::debug!(error = %chain(&error), "the coordinator cannot read the fleet's rollouts");
                    continue;
                }
            };
            let mut running = BTreeSet::new();
            for kv in kvs {
                let Some(release) = kv.key.strip_prefix(&prefix) else {
                    continue;
                };
                let record = match FleetRollout::parse(&kv.value) {
                    Ok(record) if record.state == State::Running => record,
                    Ok(_) => continue,
                    Err(error) => {
                        self.say_once(release, &format!("its record cannot be read: {error}"));
                        running.insert(release.to_owned());
                        continue;
                    }
                };
                running.insert(release.to_owned());
                match self.judge(release, kv.mod_revision, record).await {
                    Ok(()) => {}
                    Err(Problem::Deposed) => return Err(SessionEnd::Deposed),
                    Err(Problem::Etcd(error)) => {
                        self.say_once(release, &format!("etcd: {}", chain(&error)));
                    }
                    Err(Problem::Here(why)) => self.say_once(release, &why),
                }
            }
            self.rollouts.retain(|release, _| running.contains(release));
        }
    }

    fn say_once(&mut self, release: &str, why: &str) {
        let judging = self.rollouts.entry(release.to_owned()).or_default();
        if judging.problem.as_deref() != Some(why) {
            tracing::warn!(
                service = release,
                why,
                "this node's coordinator cannot judge the fleet rollout; it holds"
            );
            judging.problem = Some(why.to_owned());
        }
    }

    /// The plan of `record`'s rollout, as this node's config has it, with the shares fixed
    /// when it started.
    fn plan_of(&self, release: &str, record: &FleetRollout) -> Result<Plan, Problem> {
        let daemon = lock(self.shared);
        let spec = daemon.config.release(release).ok_or_else(|| {
            Problem::Here("not a service or release group of this node's config".to_owned())
        })?;
        let mut plan = fleet_rollout::plan(&spec, &record.request)
            .map_err(|error| Problem::Here(chain(&error).to_string()))?;
        // Every coordinator moves through the same shares, whatever its config's default.
        if !record.steps_bp.is_empty() {
            plan.steps.clone_from(&record.steps_bp);
        }
        if record.step >= plan.steps.len() {
            return Err(Problem::Here(format!(
                "step {} of a ladder of {}",
                record.step + 1,
                plan.steps.len()
            )));
        }
        Ok(plan)
    }

    /// Judges the rollout of `release` (its record at `revision`) if its interval has come
    /// round, and carries out the decision.
    async fn judge(
        &mut self,
        release: &str,
        revision: i64,
        mut record: FleetRollout,
    ) -> Result<(), Problem> {
        let plan = self.plan_of(release, &record)?;
        let candidate = version_named(&record.candidate)
            .ok_or_else(|| Problem::Here(format!("`{}` is not a version", record.candidate)))?;
        let now = Instant::now();
        let judging = self.rollouts.entry(release.to_owned()).or_default();
        if judging.started_at_ms != record.started_at_ms {
            *judging = Judging {
                started_at_ms: record.started_at_ms,
                ..Judging::default()
            };
        }
        if judging
            .last
            .is_some_and(|last| now.duration_since(last) < plan.interval)
        {
            return Ok(());
        }
        judging.last = Some(now);
        judging.problem = None;
        if record.coordinator() != Some(self.fleet.node.as_str()) {
            return self
                .take_over(release, revision, record, plan.steps.len())
                .await;
        }

        let desired_key = self.fleet.desired_key(release);
        let (members_prefix, nodes_prefix) =
            (self.fleet.members_prefix(), self.fleet.nodes_prefix());
        let (current, (_, members), (_, reports)) = tokio::try_join!(
            self.etcd.get(&desired_key),
            self.etcd.range_prefix(&members_prefix),
            self.etcd.range_prefix(&nodes_prefix),
        )?;
        let outside = changed_outside(current.as_ref(), &record.wrote);
        let current = match (current, outside) {
            (Some(current), None) => current,
            (_, why) => {
                let why = why.unwrap_or_default();
                return self.pause(release, revision, record, why).await;
            }
        };
        let word = record
            .wrote
            .word()
            .map_err(|error| Problem::Here(error.to_string()))?;
        let reports: BTreeMap<String, NodeReport> = reports
            .iter()
            .filter_map(|kv| serde_json::from_slice::<NodeReport>(&kv.value).ok())
            .map(|report| (report.node.clone(), report))
            .collect();
        let members: Vec<Result<String, String>> = members
            .iter()
            .map(|kv| {
                serde_json::from_slice::<Member>(&kv.value)
                    .map(|m| m.node)
                    .map_err(|_| kv.key.clone())
            })
            .collect();
        let judging = self.rollouts.entry(release.to_owned()).or_default();
        let (windows, held) = node_windows(
            &Seen {
                release,
                members: &members,
                reports: &reports,
                revision: current.mod_revision,
                word,
                candidate,
            },
            &mut judging.bases,
        );

        let elapsed = u64::try_from(now_ms() - record.step_started_at_ms).unwrap_or(0);
        let mut rollout = Rollout {
            step_started: now
                .checked_sub(Duration::from_millis(elapsed))
                .unwrap_or(now),
            step: record.step,
            consecutive_failures: record.consecutive_failures,
            done: false,
            plan,
        };
        let reference = record.live_reference.as_ref().and_then(from_evidence);
        let verdict = judge(&rollout.plan.gates, &windows, &held, reference.as_ref());
        let warming_up = rollout.warming_up(now);
        let decision = if warming_up {
            // The warm-up is left out: every window starts when it ends.
            judging.bases.clear();
            Decision::Hold
        } else {
            rollout.on_judgement(now, &verdict.judgement)
        };
        record.consecutive_failures = rollout.consecutive_failures;
        record.live_reference = verdict
            .reference
            .map(|w| to_evidence(&w, candidate.other().name()));
        record.last = Some(LastJudgement {
            at_ms: now_ms(),
            node: self.fleet.node.clone(),
            judgement: if warming_up {
                "inconclusive: warming up (the start of each step is not judged)".to_owned()
            } else {
                describe(&verdict.judgement)
            },
            nodes: windows
                .iter()
                .map(|w| (w.node.clone(), w.candidate.requests, w.candidate.errors))
                .collect(),
        });
        let change = next_split(&mut record, &decision, rollout.step, &self.fleet.node);
        let written = self
            .write(
                release,
                revision,
                &record,
                change.as_ref().map(|d| (current.mod_revision, d)),
            )
            .await?;
        // Each node's window starts again at its first report at the revision written
        // (`node_windows`).
        if let (Some(written), Some(change)) = (written, change) {
            let details = serde_json::json!({
                "judgement": describe(&verdict.judgement),
                "decision": match &decision {
                    Decision::Advance(bp) => format!("step to {}%", percent_of(*bp)),
                    Decision::Promote => "promote".to_owned(),
                    Decision::RollBack(reason) => format!("roll back: {reason}"),
                    Decision::Hold => "hold".to_owned(),
                },
                "fleet": {
                    "coordinator": self.fleet.node,
                    "revision": written,
                    "nodes": windows.iter().map(|w| serde_json::json!({
                        "node": w.node,
                        "candidate": { "requests": w.candidate.requests, "errors": w.candidate.errors, "p99_ms": w.candidate.p99_ms() },
                        "live": { "requests": w.live.requests, "errors": w.live.errors, "p99_ms": w.live.p99_ms() },
                    })).collect::<Vec<_>>(),
                    "held": held,
                },
            });
            self.moved(release, written, &change, details).await;
        }
        Ok(())
    }

    /// This node's first look at the rollout as its coordinator: journaled, in the record too.
    /// Its windows start now, and so does the step's hold, on this node's clock: what the
    /// coordinator before it saw is not judged twice, nor a hold counted on another clock.
    async fn take_over(
        &self,
        release: &str,
        revision: i64,
        mut record: FleetRollout,
        steps: usize,
    ) -> Result<(), Problem> {
        let from = record.coordinator().map(str::to_owned);
        record.step_started_at_ms = now_ms();
        record.takeovers.push(Takeover {
            node: self.fleet.node.clone(),
            from: from.clone(),
            at_ms: now_ms(),
            step: record.step,
        });
        if self
            .write(release, revision, &record, None)
            .await?
            .is_some()
        {
            let daemon = lock(self.shared);
            if from.is_some() {
                daemon.counters.fleet.takeovers.inc();
            }
            daemon.emit(TookOver {
                release,
                from: from.as_deref(),
                step: record.step,
                steps,
            });
        }
        Ok(())
    }

    /// Pauses the rollout: someone else moved the split (an operator's `weight` or
    /// `rollback`), and `rollout resume` goes on from the share they set.
    async fn pause(
        &self,
        release: &str,
        revision: i64,
        mut record: FleetRollout,
        why: String,
    ) -> Result<(), Problem> {
        record.state = State::Paused(why.clone());
        if self
            .write(release, revision, &record, None)
            .await?
            .is_some()
        {
            lock(self.shared).emit(OperatorOverride {
                service: release,
                what: format!("the fleet rollout paused: {why}"),
                from_outside: true,
                actor: Actor::Operator { uid: None },
            });
        }
        Ok(())
    }

    /// After a step, a promotion or a rollback was written at `written`: the fleet's history,
    /// the log and this node's journal (the judgement that decided).
    async fn moved(
        &self,
        release: &str,
        written: i64,
        change: &Desired,
        details: serde_json::Value,
    ) {
        if let Err(error) =
            fleet_events::record(self.etcd, self.fleet, release, written, change, false).await
        {
            tracing::warn!(service = release, error = %chain(&error), "a fleet rollout's change is not in the fleet's history");
        }
        tracing::info!(service = release, revision = written, decision = %details["decision"], "the fleet rollout moved");
        lock(self.shared).emit(GateEvaluation {
            service: release,
            details,
        });
    }

    /// Writes `record` (read at `revision`) and, with it, `desired` (its key read at its
    /// revision), in one transaction that also compares this node's key: the revision
    /// written, or `None` when a key had moved on. `Deposed` when this node's key is gone.
    async fn write(
        &self,
        release: &str,
        revision: i64,
        record: &FleetRollout,
        desired: Option<(i64, &Desired)>,
    ) -> Result<Option<i64>, Problem> {
        let fence_key = self.fleet.coordinator_key();
        let record_key = self.fleet.rollout_key(release);
        let desired_key = self.fleet.desired_key(release);
        let record_json = record.to_json();
        let desired_json = desired.map(|(_, d)| d.to_json());
        let mut expected = vec![
            (fence_key.as_str(), self.fence),
            (record_key.as_str(), revision),
        ];
        let mut puts = vec![(record_key.as_str(), record_json.as_slice())];
        if let (Some((at, _)), Some(json)) = (desired, &desired_json) {
            expected.push((desired_key.as_str(), at));
            puts.push((desired_key.as_str(), json.as_slice()));
        }
        let written = self.etcd.put_all_if(&expected, &puts, None).await?;
        if written.is_none()
            && self.etcd.get(&fence_key).await?.map(|kv| kv.mod_revision) != Some(self.fence)
        {
            return Err(Problem::Deposed);
        }
        Ok(written)
    }
}

/// Why the desired split in etcd (`current`) is not the one the rollout wrote last, if it is
/// not: someone else moved it, deleted it, or wrote a value that does not read.
fn changed_outside(current: Option<&Kv>, wrote: &Desired) -> Option<String> {
    let Some(kv) = current else {
        return Some("the desired split was deleted from etcd".to_owned());
    };
    match Desired::parse(&kv.value) {
        Ok(desired) if desired == *wrote => None,
        Ok(desired) => Some(format!(
            "the split was changed outside the rollout: {} by {} on {} (green {}%)",
            desired.cause.name(),
            desired.actor,
            desired.node,
            desired
                .word()
                .map_or(0.0, |w| percent_of(w.share_of(Version::Green)))
        )),
        Err(error) => Some(format!("the desired split in etcd cannot be read: {error}")),
    }
}

/// The desired split a decision writes, with the record moved on to match (`step`: the
/// rollout's step after the decision); `None` for a hold.
fn next_split(
    record: &mut FleetRollout,
    decision: &Decision,
    step: usize,
    node: &str,
) -> Option<Desired> {
    let candidate = version_named(&record.candidate)?;
    let live = candidate.other();
    let actor = format!("gates (fleet rollout, coordinator {node})");
    let salt = record.salt;
    let desired = |word: SplitWord, cause: Cause| Desired {
        salt,
        ..Desired::new(word, cause, node, &actor, now_ms())
    };
    let change = match decision {
        Decision::Hold => return None,
        Decision::Advance(bp) => {
            record.step = step;
            record.step_started_at_ms = now_ms();
            desired(SplitWord::new(live, *bp), Cause::Weight)
        }
        Decision::Promote => {
            record.state = State::Promoted;
            desired(SplitWord::new(candidate, 0), Cause::Promotion)
        }
        Decision::RollBack(reason) => {
            record.state = State::RolledBack(reason.clone());
            desired(SplitWord::new(live, 0), Cause::Rollback)
        }
    };
    record.wrote = change.clone();
    Some(change)
}

/// This node became the coordinator of a fleet rollout: it took it over from `from`, or picked
/// up one just started.
struct TookOver<'a> {
    release: &'a str,
    from: Option<&'a str>,
    step: usize,
    steps: usize,
}

impl Event for TookOver<'_> {
    fn emit(self, sinks: &Sinks<'_>) -> Option<i64> {
        let at = format!("step {} of {}", self.step + 1, self.steps);
        let reason = match self.from {
            Some(from) => format!("took over the fleet rollout from {from} at {at}"),
            None => format!("coordinates the fleet rollout from {at}"),
        };
        tracing::info!(service = self.release, from = self.from, "{reason}");
        sinks.record(&NewEvent {
            reason: Some(reason),
            details: serde_json::json!({
                "fleet": { "from": self.from, "step": self.step + 1, "steps": self.steps },
            }),
            ..NewEvent::new(self.release, EventKind::Coordinator, "gates")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::plan::PlanRequest;

    fn record() -> FleetRollout {
        let wrote = Desired::new(
            SplitWord::new(Version::Blue, 1_000),
            Cause::Weight,
            "n0",
            "root",
            1,
        );
        FleetRollout {
            schema: SCHEMA,
            release: "model".into(),
            candidate: "green".into(),
            request: PlanRequest::default(),
            steps_bp: vec![1_000, 5_000, 10_000],
            step: 0,
            state: State::Running,
            salt: Some(9),
            started_by: "root".into(),
            started_on: "n0".into(),
            started_at_ms: 1,
            step_started_at_ms: 1,
            wrote,
            consecutive_failures: 0,
            takeovers: Vec::new(),
            last: None,
            live_reference: None,
        }
    }

    #[test]
    fn each_decision_writes_its_split_and_moves_the_record_with_it() {
        let mut held = record();
        assert_eq!(next_split(&mut held, &Decision::Hold, 0, "n1"), None);
        assert_eq!(held, record(), "a hold changes nothing");

        let mut stepped = record();
        let step = next_split(&mut stepped, &Decision::Advance(5_000), 1, "n1").expect("a step");
        assert_eq!(step.word(), Ok(SplitWord::new(Version::Blue, 5_000)));
        assert_eq!((step.cause, step.salt), (Cause::Weight, Some(9)));
        assert_eq!(step.actor, "gates (fleet rollout, coordinator n1)");
        assert_eq!((stepped.step, &stepped.wrote), (1, &step));

        let mut promoted = record();
        let promotion = next_split(&mut promoted, &Decision::Promote, 0, "n1").expect("promotion");
        assert_eq!(promotion.word(), Ok(SplitWord::new(Version::Green, 0)));
        assert_eq!(promotion.cause, Cause::Promotion);
        assert_eq!(promoted.state, State::Promoted);

        let mut rolled = record();
        let why = Decision::RollBack("node n2: errors".into());
        let rollback = next_split(&mut rolled, &why, 0, "n1").expect("rollback");
        assert_eq!(rollback.word(), Ok(SplitWord::new(Version::Blue, 0)));
        assert_eq!(rollback.cause, Cause::Rollback);
        assert_eq!(rolled.state, State::RolledBack("node n2: errors".into()));
    }

    #[test]
    fn a_split_the_rollout_did_not_write_is_named_with_who_wrote_it() {
        let wrote = record().wrote;
        let kv = |value: Vec<u8>| Kv {
            key: "/splitter/v1/desired/model".into(),
            value,
            mod_revision: 7,
            lease: 0,
        };
        assert_eq!(changed_outside(Some(&kv(wrote.to_json())), &wrote), None);
        let operator = Desired::new(
            SplitWord::new(Version::Blue, 3_000),
            Cause::Weight,
            "n2",
            "alice",
            5,
        );
        let why = changed_outside(Some(&kv(operator.to_json())), &wrote).expect("changed");
        assert!(why.contains("weight by alice on n2 (green 30%)"), "{why}");
        assert!(changed_outside(None, &wrote).is_some_and(|w| w.contains("deleted")));
        assert!(
            changed_outside(Some(&kv(b"{".to_vec())), &wrote)
                .is_some_and(|w| w.contains("cannot be read"))
        );
    }
}
