//! Fleet mode in the daemon (`[fleet]`): this node follows the desired splits in etcd and
//! writes them to its own kernel, reports what it applied under its lease, and publishes the
//! rollbacks made here while etcd was unreachable (they win: see `engine::fleet`).
//!
//! One session at a time: grant a lease, publish pending rollbacks, read every desired split,
//! report, then watch from the revision read; renew the lease and the report every third of
//! its TTL. Any etcd failure ends the session and a new one starts after a backoff; the kernel
//! keeps the last split meanwhile (data planes hold), and a node never applies a revision
//! older than one it applied.

use std::{collections::BTreeMap, convert::Infallible, time::Duration};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use splitter_common::{Histogram, LatencyKind, SplitWord, Version};

use super::{
    Daemon, Shared,
    events::{Event, Sinks},
    lock,
};
use crate::{
    engine::fleet::{Step, decide},
    io::{
        etcd::{Change, Etcd, EtcdError, Kv, Swap},
        fleet as fleet_events,
    },
    kernel::maps::Maps,
    model::{
        config::Config,
        error::chain,
        fleet::{Applied, Cause, Desired, Evidence, Fleet, Member, NodeReport, SCHEMA, Sparse},
        share::percent_of,
    },
    store::{
        self,
        journal::{EventKind, NewEvent, now_ms},
    },
};

/// How long one call to etcd may take: a third of the lease (the renewal's period), within
/// these bounds, so that a slow call does not let the lease lapse.
const CALL_TIMEOUT: (Duration, Duration) = (Duration::from_millis(600), Duration::from_secs(2));
/// The first wait after a session ended; it doubles up to `MAX_BACKOFF`.
pub(super) const MIN_BACKOFF: Duration = Duration::from_millis(200);
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What the daemon knows of the fleet.
#[derive(Debug, Default)]
pub(super) struct FleetState {
    /// The desired revision applied, by release; kept in the state directory, so that a
    /// restarted daemon does not apply again what it applied (and undo a `--local` change).
    applied: BTreeMap<String, i64>,
    /// Desired values refused, by release, and why.
    refused: BTreeMap<String, String>,
    /// The revision of each desired key last refused (by its name in etcd): refused once.
    refused_at: BTreeMap<String, i64>,
    /// Pending rollbacks published by this run, by release and decision time: never published
    /// twice, even when their file cannot be removed.
    published: std::collections::BTreeSet<(String, i64)>,
    /// The lease under which this node holds the coordinator's key, while it does: revoked when
    /// the daemon stops, so that another node takes over at once.
    pub(super) coordinator_lease: Option<i64>,
}

impl FleetState {
    /// The state a daemon starts with: the revisions it applied before, for this etcd and
    /// prefix, when it adopted the data plane they were applied to; a data plane created now
    /// (after a reboot, a `detach`) holds the config's splits, and the fleet's are applied
    /// again.
    pub(super) fn load(state_dir: &std::path::Path, fleet: Option<&Fleet>, adopted: bool) -> Self {
        let applied = match fleet {
            Some(f) if adopted => store::fleet::load_applied(state_dir, &f.identity()),
            Some(f) => {
                let _ = store::fleet::save_applied(state_dir, &f.identity(), &BTreeMap::new());
                BTreeMap::new()
            }
            None => BTreeMap::new(),
        };
        Self {
            applied,
            ..Self::default()
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabels {
    /// `weight` or `rollback`.
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    /// `unreadable`, `newer_schema`, `invalid`, `unknown_release`, `unreadable_pending` or
    /// `pending_refused`.
    reason: &'static str,
}

/// Fleet mode's metrics.
#[derive(Clone, Debug, Default)]
pub struct FleetCounters {
    applied: Family<CauseLabels, Counter>,
    refused: Family<ReasonLabels, Counter>,
    sessions_ended: Counter,
    published: Counter,
    connected: Gauge,
    pub(super) coordinating: Gauge,
    pub(super) takeovers: Counter,
}

impl FleetCounters {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "splitter_fleet_applied",
            "Desired splits from the fleet written to this node's kernel, by cause",
            self.applied.clone(),
        );
        registry.register(
            "splitter_fleet_refused",
            "Desired splits in etcd refused and never applied, by reason",
            self.refused.clone(),
        );
        registry.register(
            "splitter_fleet_sessions_ended",
            "Sessions with etcd that ended in an error (a new one follows)",
            self.sessions_ended.clone(),
        );
        registry.register(
            "splitter_fleet_published_rollbacks",
            "Rollbacks made while etcd was unreachable, published when it answered again",
            self.published.clone(),
        );
        registry.register(
            "splitter_fleet_connected",
            "1 while this node follows etcd, 0 while it holds the last split it applied",
            self.connected.clone(),
        );
        registry.register(
            "splitter_fleet_coordinator",
            "1 while this node coordinates the fleet's rollouts (holds the coordinator's key)",
            self.coordinating.clone(),
        );
        registry.register(
            "splitter_fleet_takeovers",
            "Fleet rollouts this node took over from another coordinator",
            self.takeovers.clone(),
        );
    }
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub(super) enum SessionEnd {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error("the config's [fleet] changed")]
    Reconfigured,
    #[error("another node coordinates the fleet's rollouts now")]
    Deposed,
}

/// Follows the fleet for as long as the daemon runs and its config has `[fleet]`.
pub(super) async fn follow(shared: Shared) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let (fleet, counters) = {
            let daemon = lock(&shared);
            (daemon.config.fleet.clone(), daemon.counters.fleet.clone())
        };
        let Some(fleet) = fleet else {
            tokio::time::sleep(MAX_BACKOFF).await;
            continue;
        };
        let started = tokio::time::Instant::now();
        let timeout = call_timeout(&fleet);
        let ended = match Etcd::new(&fleet, timeout) {
            Ok(etcd) => match session(&shared, &fleet, &etcd, &counters).await {
                Ok(never) => match never {},
                Err(end) => end,
            },
            Err(error) => SessionEnd::Etcd(error),
        };
        counters.connected.set(0);
        if matches!(ended, SessionEnd::Reconfigured) {
            // Another etcd or prefix: its revisions are not comparable with this one's.
            let mut daemon = lock(&shared);
            let state_dir = daemon.config.state_dir.clone();
            daemon.fleet = FleetState::load(&state_dir, daemon.config.fleet.as_ref(), true);
        } else {
            counters.sessions_ended.inc();
            tracing::warn!(error = %chain(&ended), retry_ms = backoff.as_millis(), "lost etcd; this node holds the last split it applied");
        }
        if started.elapsed() > fleet.lease_ttl {
            backoff = MIN_BACKOFF;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn session(
    shared: &Shared,
    fleet: &Fleet,
    etcd: &Etcd,
    counters: &FleetCounters,
) -> Result<Infallible, SessionEnd> {
    let lease = etcd.grant(fleet.lease_ttl).await?;
    let member = Member {
        schema: SCHEMA,
        node: fleet.node.clone(),
        session_at_ms: now_ms(),
    };
    etcd.put(&fleet.member_key(), &to_json(&member), None)
        .await?;
    publish_pending(shared, fleet, etcd, counters).await?;
    let (revision, kvs) = etcd.range_prefix(&fleet.desired_prefix()).await?;
    {
        let mut daemon = lock(shared);
        daemon.check_revisions(fleet, revision);
        for kv in &kvs {
            daemon.apply_desired(fleet, kv);
        }
    }
    report(shared, fleet, etcd, lease).await?;
    let mut watch = etcd
        .watch(&fleet.desired_prefix(), revision.saturating_add(1))
        .await?;
    counters.connected.set(1);
    tracing::info!(node = %fleet.node, revision, releases = kvs.len(), "following the fleet");
    let mut renew = tokio::time::interval(fleet.lease_ttl / 3);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    renew.tick().await;
    loop {
        tokio::select! {
            batch = watch.next() => {
                let batch = batch?;
                if batch.changes.is_empty() {
                    continue;
                }
                {
                    let mut daemon = lock(shared);
                    for change in &batch.changes {
                        match change {
                            Change::Put(kv) => daemon.apply_desired(fleet, kv),
                            Change::Delete { key, .. } => tracing::info!(key, "a desired split was deleted from etcd; this node keeps the split it has"),
                        }
                    }
                }
                report(shared, fleet, etcd, lease).await?;
            }
            _ = renew.tick() => {
                if lock(shared).config.fleet.as_ref() != Some(fleet) {
                    return Err(SessionEnd::Reconfigured);
                }
                etcd.keep_alive(lease).await?;
                publish_pending(shared, fleet, etcd, counters).await?;
                // The desired splits read again: a watch whose member went silent (powered off,
                // partitioned: no reset ever comes) costs at most a third of the lease. What was
                // applied already is not applied again (`engine::fleet::decide`).
                let (_, kvs) = etcd.range_prefix(&fleet.desired_prefix()).await?;
                {
                    let mut daemon = lock(shared);
                    for kv in &kvs {
                        daemon.apply_desired(fleet, kv);
                    }
                }
                report(shared, fleet, etcd, lease).await?;
            }
        }
    }
}

/// How long one call to etcd may take with this fleet's lease.
pub(super) fn call_timeout(fleet: &Fleet) -> Duration {
    (fleet.lease_ttl / 3).clamp(CALL_TIMEOUT.0, CALL_TIMEOUT.1)
}

/// A record as JSON: these types always serialize.
pub(super) fn to_json(value: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// Writes this node's report under its lease.
async fn report(shared: &Shared, fleet: &Fleet, etcd: &Etcd, lease: i64) -> Result<(), EtcdError> {
    let report = lock(shared).fleet_report(fleet);
    etcd.put(&fleet.node_key(), &to_json(&report), Some(lease))
        .await?;
    Ok(())
}

/// Publishes the rollbacks made here while etcd was unreachable. Each wins over what etcd
/// holds unless that was decided after it (an operator moved the share again meanwhile, by
/// the deciding nodes' clocks): then it stands no more and is dropped. The write is a
/// compare-and-swap on what was read, so a change made in between is never overwritten.
async fn publish_pending(
    shared: &Shared,
    fleet: &Fleet,
    etcd: &Etcd,
    counters: &FleetCounters,
) -> Result<(), EtcdError> {
    let state_dir = lock(shared).config.state_dir.clone();
    for (release, desired) in store::fleet::list(&state_dir) {
        let desired = match desired {
            Ok(desired) => desired,
            Err(problem) => {
                lock(shared).refuse_once(&release, "unreadable_pending", &format!("a pending rollback in fleet-pending/ cannot be read ({problem}); it is neither published nor held for"));
                continue;
            }
        };
        let done = |why: &str| {
            tracing::info!(
                service = release,
                decided_at_ms = desired.decided_at_ms,
                "{why}"
            );
            if let Err(error) = store::fleet::published(&state_dir, &release, &desired) {
                tracing::warn!(service = release, error = %error, "cannot remove a rollback from fleet-pending/");
            }
        };
        if lock(shared)
            .fleet
            .published
            .contains(&(release.clone(), desired.decided_at_ms))
        {
            done("a published rollback left in fleet-pending/ removed");
            continue;
        }
        let key = fleet.desired_key(&release);
        let current = etcd.get(&key).await?;
        if let Some(newer) = current
            .as_ref()
            .and_then(|kv| Desired::parse(&kv.value).ok())
            .filter(|d| d.decided_at_ms > desired.decided_at_ms)
        {
            done(&format!(
                "a rollback made while etcd was unreachable is not published: {} by {} on {} was decided after it",
                newer.cause.name(),
                newer.actor,
                newer.node
            ));
            continue;
        }
        let expected = current.map_or(0, |kv| kv.mod_revision);
        match etcd.put_if(&key, &desired.to_json(), expected).await {
            Ok(Swap::Written(revision)) => {
                counters.published.inc();
                if let Err(error) =
                    fleet_events::record(etcd, fleet, &release, revision, &desired, true).await
                {
                    tracing::warn!(service = release, error = %chain(&error), "a published rollback is not in the fleet's history");
                }
                lock(shared)
                    .fleet
                    .published
                    .insert((release.clone(), desired.decided_at_ms));
                done(&format!(
                    "published at revision {revision} a rollback made while etcd was unreachable"
                ));
            }
            // Someone wrote in between: judged again at the next renewal.
            Ok(Swap::Lost(_)) => {}
            Err(error @ EtcdError::Refused { .. }) => {
                lock(shared).refuse_once(
                    &release,
                    "pending_refused",
                    &format!("etcd refused a pending rollback: {}", chain(&error)),
                );
            }
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

impl Daemon {
    /// Applies the desired split `kv` (a key under the fleet's desired prefix) to this node's
    /// kernel, as `engine::fleet::decide` says; refusals are counted and reported.
    fn apply_desired(&mut self, fleet: &Fleet, kv: &Kv) {
        let Some(name) = kv.key.strip_prefix(&fleet.desired_prefix()) else {
            return;
        };
        // A renewal reads every desired split again: what was applied, or refused, at this
        // revision is neither read from disk nor counted again.
        if self.fleet.applied.get(name) >= Some(&kv.mod_revision)
            || self.fleet.refused_at.get(name) == Some(&kv.mod_revision)
        {
            return;
        }
        self.fleet
            .refused_at
            .insert(name.to_owned(), kv.mod_revision);
        let Ok(release) = self.release_name(name) else {
            self.refuse(
                name,
                "unknown_release",
                "not a service or release group of this node's config",
            );
            return;
        };
        let desired = match Desired::parse(&kv.value) {
            Ok(desired) => desired,
            Err(error) => {
                self.refuse(&release, error.label(), &error.to_string());
                return;
            }
        };
        self.fleet.refused_at.remove(name);
        let Ok(word) = desired.word() else { return };
        let ids = match self.release_ids(&release) {
            Ok(ids) => ids,
            Err(error) => {
                tracing::warn!(service = release, error = %chain(&error), "cannot apply the fleet's split here");
                return;
            }
        };
        self.fleet.refused.remove(&release);
        let pending = store::fleet::is_pending(&self.config.state_dir, &release);
        let started = std::time::Instant::now();
        let (before, step) = {
            // Under the split lock, which a command holds while it writes this node's word
            // and notes the fleet's revision it wrote (`store::fleet::note_applied`): what it
            // applied is never applied over a later local change.
            let _lock = self.split_lock.hold();
            let identity = fleet.identity();
            for (name, revision) in store::fleet::load_applied(&self.config.state_dir, &identity) {
                let mine = self.fleet.applied.entry(name).or_insert(revision);
                *mine = (*mine).max(revision);
            }
            let applied = self.fleet.applied.get(&release).copied().unwrap_or(0);
            let Ok(before) = self.maps.split(ids.split) else {
                return;
            };
            let step = decide(
                kv.mod_revision,
                applied,
                pending,
                before,
                word,
                desired.cause,
            );
            if let Step::Same | Step::Write { .. } = step {
                apply_salt(&self.config, &mut self.maps, &release, desired.salt);
            }
            if let Step::Write { .. } = step
                && let Err(error) = self.maps.set_split(ids.split, word)
            {
                tracing::error!(service = release, error = %chain(&error), "cannot write the fleet's split");
                return;
            }
            if let Step::Same | Step::Write { .. } = step {
                self.fleet.applied.insert(release.clone(), kv.mod_revision);
                if let Err(error) = store::fleet::save_applied(
                    &self.config.state_dir,
                    &identity,
                    &self.fleet.applied,
                ) {
                    tracing::warn!(error = %error, "cannot keep the fleet's applied revisions in the state directory; a restarted daemon applies the current splits again");
                }
            }
            (before, step)
        };
        let write = started.elapsed();
        match step {
            Step::Stale => {}
            Step::HeldForRollback => {
                tracing::info!(
                    service = release,
                    revision = kv.mod_revision,
                    "holding a rollback made here that the fleet has not been told of; the fleet's split waits"
                );
            }
            Step::Same => self.note_split(&release, word),
            Step::Write { left } => {
                self.note_split(&release, word);
                let event = self.emit(FleetApplied {
                    release: &release,
                    desired: &desired,
                    revision: kv.mod_revision,
                    before,
                    after: word,
                    write,
                });
                if let Some(left) = left {
                    let decided_ns = crate::kernel::aging::monotonic_ns()
                        .saturating_sub(crate::model::units::micros(write) * 1_000);
                    // A rollback's drain completes its journal entry; a promotion's is spread
                    // over the promotion window.
                    let promotion = desired.cause == Cause::Promotion;
                    let event = event.filter(|_| !promotion);
                    self.drain_after(&release, &ids.members, left, promotion, decided_ns, event);
                }
            }
        }
    }

    /// At a session's start: etcd's revision `now` below one this node applied means etcd
    /// went back (restored from a backup, or replaced): the revisions applied are forgotten,
    /// so that what etcd holds now is applied.
    fn check_revisions(&mut self, fleet: &Fleet, now: i64) {
        if self.fleet.applied.values().any(|applied| *applied > now) {
            tracing::warn!(
                revision = now,
                "etcd's revision is below one this node applied: etcd was restored or replaced; applying what it holds now"
            );
            self.fleet.applied.clear();
            let _ = store::fleet::save_applied(
                &self.config.state_dir,
                &fleet.identity(),
                &self.fleet.applied,
            );
        }
    }

    /// `refuse`, unless it is refused for that reason already (a pending rollback is looked
    /// at every renewal).
    fn refuse_once(&mut self, release: &str, reason: &'static str, why: &str) {
        if self.fleet.refused.get(release).map(String::as_str) != Some(why) {
            self.refuse(release, reason, why);
        }
    }

    fn refuse(&mut self, release: &str, reason: &'static str, why: &str) {
        if self.fleet.refused.get(release).map(String::as_str) != Some(why) {
            tracing::warn!(
                service = release,
                reason,
                why,
                "refused a desired split from etcd; it is not applied"
            );
        }
        self.counters
            .fleet
            .refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
        self.fleet
            .refused
            .insert(release.to_owned(), why.to_owned());
    }

    /// What this node reports: per release, the revision applied and its kernel's word.
    fn fleet_report(&self, fleet: &Fleet) -> NodeReport {
        let applied = self
            .config
            .releases()
            .iter()
            .filter_map(|release| {
                let ids = self.release_ids(release.name).ok()?;
                let word = self.maps.split(ids.split).ok()?;
                let kind = release.leader().rollout.latency.unwrap_or_default().kind();
                Some((
                    release.name.to_owned(),
                    Applied {
                        revision: self.fleet.applied.get(release.name).copied().unwrap_or(0),
                        kernel_live: word.live().name().to_owned(),
                        kernel_candidate_bp: word.candidate_share_bp(),
                        evidence: self.evidence(&ids.members, kind),
                    },
                ))
            })
            .collect();
        NodeReport {
            schema: SCHEMA,
            node: fleet.node.clone(),
            at_ms: now_ms(),
            applied,
            refused: self.fleet.refused.clone(),
            serves: self
                .config
                .releases()
                .iter()
                .map(|r| r.name.to_owned())
                .collect(),
        }
    }
}

impl Daemon {
    /// What each version served on the services `ids` (summed), cumulative; a version whose
    /// maps cannot be read is left out.
    fn evidence(&self, ids: &[u32], kind: LatencyKind) -> Vec<Evidence> {
        [Version::Blue, Version::Green]
            .into_iter()
            .filter_map(|version| {
                let mut requests = 0;
                let mut errors = 0;
                let mut latency = Histogram::default();
                for id in ids {
                    let counters = self.maps.counters(*id, version).ok()?;
                    let (e, r) = counters.errors_and_events();
                    requests += r;
                    errors += e;
                    latency = latency.add(&self.maps.histogram(*id, version, kind).ok()?);
                }
                Some(Evidence {
                    version: version.name().to_owned(),
                    requests,
                    errors,
                    latency: Sparse::of(&latency),
                })
            })
            .collect()
    }
}

/// The client hash's salt of a fleet rollout, on every service of `release` with client
/// affinity, before its share is written: a client sees one version on every node.
fn apply_salt(config: &Config, maps: &mut Maps, release: &str, salt: Option<u32>) {
    let Some(salt) = salt else { return };
    let Some(release_spec) = config.release(release) else {
        return;
    };
    for spec in release_spec.members.iter().filter(|s| s.client_affinity) {
        if let Err(error) = maps.set_service_salt(&spec.endpoint(), salt) {
            tracing::warn!(service = release, error = %chain(&error), "cannot set the fleet rollout's client salt");
        }
    }
}

/// A desired split from the fleet, written to this node's kernel: journaled as the weight or
/// rollback it is, with the revision, the node and the operator it came from.
struct FleetApplied<'a> {
    release: &'a str,
    desired: &'a Desired,
    revision: i64,
    before: SplitWord,
    after: SplitWord,
    write: Duration,
}

impl Event for FleetApplied<'_> {
    fn emit(self, sinks: &Sinks<'_>) -> Option<i64> {
        let cause = self.desired.cause.name();
        let kind = match self.desired.cause {
            Cause::Weight => EventKind::Weight,
            Cause::Rollback => EventKind::Rollback,
            Cause::Promotion => EventKind::Promotion,
        };
        // On the deciding node's clock: skewed by the difference between the two clocks.
        let propagation_ms = now_ms() - self.desired.decided_at_ms;
        let green = |word: SplitWord| percent_of(word.share_of(Version::Green));
        tracing::info!(service = self.release, revision = self.revision, from_node = %self.desired.node, cause, green_percent = green(self.after), propagation_ms, "applied the fleet's split");
        sinks
            .counters
            .fleet
            .applied
            .get_or_create(&CauseLabels { cause })
            .inc();
        sinks.record(&NewEvent {
            reason: Some(format!(
                "the fleet's split at revision {}, set on node {}",
                self.revision, self.desired.node
            )),
            details: serde_json::json!({
                "before": { "live": self.before.live().name(), "green_percent": green(self.before) },
                "after": { "live": self.after.live().name(), "green_percent": green(self.after) },
                "map_write_us": self.write.as_secs_f64() * 1e6,
                "fleet": {
                    "revision": self.revision,
                    "node": self.desired.node,
                    "decided_at_ms": self.desired.decided_at_ms,
                    "propagation_ms": propagation_ms,
                },
            }),
            ..NewEvent::new(self.release, kind, &self.desired.actor)
        })
    }
}
