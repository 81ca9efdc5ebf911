//! Rollback drills: roll a service back for real, drain the candidate's connections as a
//! rollback does, watch the kernel's new-flow counters until enough new connections land on
//! the live pool to prove the write (or one lands on the candidate), then put the share back
//! and journal what was measured. The daemon runs the watching without holding its lock, so
//! status, metrics and probes go on during a drill.
//!
//! Drills run when an operator asks (`splitter-ctl drill`) and on the schedule a service's
//! `drill_every_ms` sets; a scheduled drill that cannot run safely is refused like any other,
//! counted, and tried again one period later.

use std::time::{Duration, Instant};

use splitter_common::{SplitWord, Version};

use super::{
    Daemon, Shared,
    events::{DrillEnded, DrillRefused},
    lock,
    rollouts::{ReleaseIds, RolloutError},
};
use crate::model::units::micros;
use crate::{
    engine::drill::{
        DRILL_LIMIT, DRILL_MIN_CONNECTIONS, DRILL_POLL, DrillKind, connections_needed,
    },
    model::actor::Actor,
    model::{error::chain, share::format_percent},
    store::journal::EventKind,
    view::drill::DrillReport,
};

/// A drill under way: what was written, and the counters at the moment of the write.
#[derive(Debug)]
pub struct Drill {
    pub service: String,
    trigger: Actor,
    kind: DrillKind,
    ids: ReleaseIds,
    before: SplitWord,
    during: SplitWord,
    /// At the write: a rollback's new flows per version [blue, green]; a last-resort drill's
    /// [new flows on the last-resort pool, new flows on blue and green].
    base: [u64; 2],
    write: Duration,
    /// New connections on the live pool that make the proof.
    needed: u64,
    /// A last-resort drill's errors of the last-resort pool at the write.
    errors_base: u64,
}

/// What the watcher does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Watch {
    Continue,
    Done,
}

impl Daemon {
    /// New flows steered to each version so far, summed over a release's services.
    fn new_flows(&self, ids: &[u32]) -> Result<[u64; 2], RolloutError> {
        let mut sum = [0, 0];
        for id in ids {
            let [blue, green] = self.maps.new_flows(*id)?;
            sum = [sum[0] + blue, sum[1] + green];
        }
        Ok(sum)
    }

    /// The releases (services, or release groups by their first service's `drill_every_ms`)
    /// whose scheduled drill is due now.
    pub fn due_drills(&mut self) -> Vec<String> {
        let periods: Vec<(String, Duration)> = self
            .config
            .releases()
            .iter()
            .filter_map(|r| {
                r.leader()
                    .drill_every
                    .map(|every| (r.name.to_owned(), every))
            })
            .collect();
        let journal = self.journal.as_ref();
        let last = |service: &str| {
            journal.and_then(|j| j.last_event_at(service, EventKind::Drill).ok().flatten())
        };
        self.drill_schedule
            .due(&periods, last, crate::store::journal::now_ms())
    }

    /// Refuses a drill that cannot be run safely (counted as `refused`); otherwise writes the
    /// rollback.
    /// A service of a release group drills the group.
    pub fn begin_drill(&mut self, name: &str, trigger: Actor) -> Result<Drill, RolloutError> {
        let service = self.release_name(name).unwrap_or_else(|_| name.to_owned());
        let service = service.as_str();
        let begun = self.try_begin_drill(service, trigger);
        if let Err(error) = &begun {
            self.emit(DrillRefused {
                service,
                kind: DrillKind::Rollback,
                trigger,
                error,
            });
        }
        begun
    }

    fn try_begin_drill(&mut self, service: &str, trigger: Actor) -> Result<Drill, RolloutError> {
        let ids = self.release_ids(service)?;
        if self.rollouts.contains_key(service) {
            return Err(RolloutError::RolloutRunning(service.to_owned()));
        }
        let lock = self.split_lock.hold();
        let before = self.maps.split(ids.split)?;
        let live = before.live();
        if before.share_of(live.other()) == 0 {
            return Err(RolloutError::NothingToDrill(service.to_owned()));
        }
        let release = self
            .config
            .release(service)
            .ok_or_else(|| RolloutError::UnknownService(service.to_owned()))?;
        // Every service of a release group must have a live backend to land on.
        for spec in &release.members {
            if !spec
                .pool(live)
                .iter()
                .any(|b| b.weight > 0 && self.health.is_healthy(&spec.name, live, b.addr))
            {
                return Err(RolloutError::UnhealthyLive(spec.name.clone(), live.name()));
            }
        }
        let during = SplitWord::new(live, 0);
        let decided = Instant::now();
        self.maps.set_split(ids.split, during)?;
        let write = decided.elapsed();
        drop(lock);
        // Counted from after the write: a SYN steered under the old word in the microseconds
        // before it must not read as a connection on the candidate after the rollback.
        let base = match self.new_flows(&ids.members) {
            Ok(base) => base,
            Err(error) => {
                self.maps.set_split(ids.split, before)?;
                return Err(error);
            }
        };
        self.note_split(service, during);
        let needed = connections_needed(before.share_of(live.other()));
        tracing::info!(
            service,
            live = live.name(),
            write_us = micros(write),
            connections_needed = needed,
            "drill: rolled back"
        );
        // The candidate's connections are drained as a rollback's are.
        let decided_ns =
            crate::kernel::aging::monotonic_ns().saturating_sub(micros(decided.elapsed()) * 1_000);
        self.drain_after(service, &ids.members, live.other(), false, decided_ns, None);
        Ok(Drill {
            service: service.to_owned(),
            trigger,
            kind: DrillKind::Rollback,
            ids,
            before,
            during,
            base,
            write,
            needed,
            errors_base: 0,
        })
    }

    /// New connections since the drill's write: (where the drill sends them, elsewhere). For
    /// a rollback: (on the live pool, on the candidate); for a last-resort drill: (on the
    /// last-resort pool, on blue or green).
    fn drill_counts(&self, drill: &Drill) -> Result<(u64, u64), RolloutError> {
        match drill.kind {
            DrillKind::Rollback => {
                let now = self.new_flows(&drill.ids.members)?;
                let since = |v: Version| now[v as usize].saturating_sub(drill.base[v as usize]);
                let live = drill.during.live();
                Ok((since(live), since(live.other())))
            }
            DrillKind::LastResort => {
                let now = self.last_resort_counts(drill.ids.members[0])?;
                Ok((
                    now[0].saturating_sub(drill.base[0]),
                    now[1].saturating_sub(drill.base[1]),
                ))
            }
        }
    }

    /// [new flows the last-resort pool took, new flows on blue and green] of service `id`.
    fn last_resort_counts(&self, id: u32) -> Result<[u64; 2], RolloutError> {
        let [blue, green] = self.maps.new_flows(id)?;
        Ok([self.maps.last_resort_counters(id)?.new_flows, blue + green])
    }

    /// Empties blue's and green's slot tables of service `name` (not its release group: the
    /// pools are the service's), so that its new connections go to its last-resort pool.
    /// Established connections keep their backends.
    pub fn begin_last_resort_drill(
        &mut self,
        name: &str,
        trigger: Actor,
    ) -> Result<Drill, RolloutError> {
        let begun = self.try_begin_last_resort_drill(name, trigger);
        if let Err(error) = &begun {
            self.emit(DrillRefused {
                service: name,
                kind: DrillKind::LastResort,
                trigger,
                error,
            });
        }
        begun
    }

    fn try_begin_last_resort_drill(
        &mut self,
        service: &str,
        trigger: Actor,
    ) -> Result<Drill, RolloutError> {
        let Some(spec) = self.config.service(service) else {
            // A release group has no pools of its own: its services do.
            return Err(match self.config.release(service) {
                Some(group) => RolloutError::GroupHasNoPools(
                    service.to_owned(),
                    group
                        .members
                        .iter()
                        .map(|m| m.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                ),
                None => RolloutError::UnknownService(service.to_owned()),
            });
        };
        if spec.last_resort.is_empty() {
            return Err(RolloutError::NoLastResort(service.to_owned()));
        }
        if !spec.last_resort.iter().any(|b| {
            b.weight > 0
                && self
                    .health
                    .is_healthy(service, crate::model::config::Pool::LastResort, b.addr)
        }) {
            return Err(RolloutError::UnhealthyLastResort(service.to_owned()));
        }
        let release = self.release_name(service)?;
        if self.rollouts.contains_key(&release) {
            return Err(RolloutError::RolloutRunning(release));
        }
        let kernel = self
            .maps
            .service(&spec.endpoint())?
            .ok_or_else(|| RolloutError::NotApplied(service.to_owned()))?;
        let word = self.maps.split(kernel.split)?;
        let decided = Instant::now();
        for version in [Version::Blue, Version::Green] {
            self.maps
                .write_slots(kernel.id, version, &crate::model::slots::build(&[]))?;
        }
        let write = decided.elapsed();
        // Counted from after the writes: a SYN steered while the tables were being emptied
        // must not read as a connection that missed the last resort.
        let base = self.last_resort_counts(kernel.id)?;
        let errors_base = self.last_resort_errors(kernel.id)?;
        tracing::warn!(
            service,
            write_us = micros(write),
            "last-resort drill: blue and green emptied; new connections go to the last-resort pool"
        );
        Ok(Drill {
            service: service.to_owned(),
            trigger,
            kind: DrillKind::LastResort,
            ids: ReleaseIds {
                split: kernel.split,
                members: vec![kernel.id],
            },
            before: word,
            during: word,
            base,
            write,
            needed: DRILL_MIN_CONNECTIONS,
            errors_base,
        })
    }

    /// The errors the last-resort pool of service `id` gave so far.
    fn last_resort_errors(&self, id: u32) -> Result<u64, RolloutError> {
        Ok(self.maps.last_resort_counters(id)?.errors_and_events().0)
    }

    /// Rebuilds blue's and green's slot tables of the drilled service from its healthy
    /// backends. Says what it restored.
    fn restore_pools(&mut self, drill: &Drill) -> Result<String, RolloutError> {
        let spec = self
            .config
            .service(&drill.service)
            .cloned()
            .ok_or_else(|| RolloutError::UnknownService(drill.service.clone()))?;
        let health = &self.health;
        let healthy = |s: &str, p: crate::model::config::Pool, a| health.is_healthy(s, p, a);
        for version in [Version::Blue, Version::Green] {
            crate::kernel::apply::write_pool(
                &mut self.maps,
                drill.ids.members[0],
                &spec,
                version.into(),
                &healthy,
            )?;
        }
        Ok("blue and green pools rebuilt from their healthy backends".to_owned())
    }

    /// Reads the counters once: done when the connections needed reached the live pool or
    /// one reached the candidate.
    pub fn watch_drill(&self, drill: &mut Drill) -> Result<Watch, RolloutError> {
        let (on_live, on_candidate) = self.drill_counts(drill)?;
        Ok(if on_live >= drill.needed || on_candidate > 0 {
            Watch::Done
        } else {
            Watch::Continue
        })
    }

    /// Puts the share (or the pools) back, unless someone changed the share during the drill,
    /// and journals.
    pub fn end_drill(&mut self, drill: Drill) -> Result<DrillReport, RolloutError> {
        let (on_live, on_candidate) = self.drill_counts(&drill)?;
        if drill.kind == DrillKind::LastResort {
            let restored = self.restore_pools(&drill)?;
            // Errors seen by now: refused handshakes and resets come within a round trip.
            let errors = self
                .last_resort_errors(drill.ids.members[0])?
                .saturating_sub(drill.errors_base);
            return Ok(self.report_drill(&drill, on_live, on_candidate, Some(errors), restored));
        }
        let live = drill.during.live();
        let lock = self.split_lock.hold();
        let put_back = self.maps.split(drill.ids.split)? == drill.during;
        if put_back {
            self.maps.set_split(drill.ids.split, drill.before)?;
        }
        drop(lock);
        let restored = if put_back {
            self.note_split(&drill.service, drill.before);
            format!(
                "{} at {}%",
                live.other().name(),
                format_percent(drill.before.share_of(live.other()))
            )
        } else {
            "not restored: the split was changed during the drill".to_owned()
        };
        Ok(self.report_drill(&drill, on_live, on_candidate, None, restored))
    }

    /// Judges, logs, counts and journals a drill that ended.
    fn report_drill(
        &self,
        drill: &Drill,
        on_live: u64,
        on_candidate: u64,
        last_resort_errors: Option<u64>,
        restored: String,
    ) -> DrillReport {
        let outcome = if on_candidate > 0 || last_resort_errors.is_some_and(|e| e > 0) {
            "failed"
        } else if on_live < drill.needed {
            "inconclusive"
        } else {
            "passed"
        };
        let drain = (drill.kind == DrillKind::Rollback)
            .then(|| {
                self.drain_reports().into_iter().find(|d| {
                    d.service == drill.service && d.version == drill.during.live().other().name()
                })
            })
            .flatten();
        let live = match drill.kind {
            DrillKind::Rollback => drill.during.live().name(),
            DrillKind::LastResort => "last_resort",
        };
        let report = DrillReport {
            service: drill.service.clone(),
            kind: drill.kind,
            outcome: outcome.to_owned(),
            live: live.to_owned(),
            decision_to_write_us: micros(drill.write),
            connections_needed: drill.needed,
            new_on_live: on_live,
            new_on_candidate: on_candidate,
            restored,
            last_resort_errors,
            drain,
        };
        self.emit(DrillEnded {
            report: &report,
            trigger: drill.trigger,
            write: drill.write,
        });
        report
    }
}

/// Runs a drill of `service` to its end, taking the daemon's lock only for each step, so that
/// status, metrics and probes go on meanwhile.
pub(super) async fn run(
    shared: &Shared,
    service: &str,
    kind: DrillKind,
    trigger: Actor,
) -> Result<DrillReport, RolloutError> {
    let begun = match kind {
        DrillKind::Rollback => lock(shared).begin_drill(service, trigger),
        DrillKind::LastResort => lock(shared).begin_last_resort_drill(service, trigger),
    };
    let mut drill = begun?;
    let deadline = tokio::time::Instant::now() + DRILL_LIMIT;
    while tokio::time::Instant::now() < deadline {
        match lock(shared).watch_drill(&mut drill) {
            Ok(Watch::Continue) => {}
            Ok(Watch::Done) => break,
            Err(error) => {
                tracing::warn!(error = %chain(&error), "drill: cannot read the counters");
                break;
            }
        }
        tokio::time::sleep(DRILL_POLL).await;
    }
    lock(shared).end_drill(drill)
}
