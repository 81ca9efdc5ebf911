//! Rollback drills: roll a service back for real, watch the kernel's new-flow counters until
//! new connections land on the live pool (and none on the candidate), then put the share back
//! and journal what was measured. The daemon runs the watching without holding its lock, so
//! status, metrics and probes go on during a drill.
//!
//! The same counters time a rollout's rollback: from the decision to the first new connection
//! on the live pool, written into the rollback's journal entry when it is seen.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use splitter_common::{SplitWord, Version};

use crate::{daemon::Daemon, journal::EventKind, rollouts::RolloutError, share::format_percent};

/// How long a drill waits for new connections on the live pool before it gives up.
pub const DRILL_LIMIT: Duration = Duration::from_secs(5);
/// New connections on the live pool that make the proof.
pub const DRILL_PROBES: u64 = 5;
/// How often a drill reads the counters.
pub const DRILL_POLL: Duration = Duration::from_millis(1);

/// A drill under way: what was written, and the counters at the moment of the write.
#[derive(Debug)]
pub struct Drill {
    pub service: String,
    id: u32,
    before: SplitWord,
    during: SplitWord,
    /// New flows per version at the write: [blue, green].
    base: [u64; 2],
    decided: Instant,
    write: Duration,
    /// When the first new connection on the live pool was seen.
    first_on_live: Option<Duration>,
}

/// What a drill found; journaled and answered.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct DrillReport {
    pub service: String,
    /// `passed`: new connections landed on the live pool and none on the candidate;
    /// `failed`: some still landed on the candidate; `inconclusive`: no new connection came.
    pub outcome: String,
    pub live: String,
    pub decision_to_write_us: u64,
    /// From the decision to the first new connection seen on the live pool (1 ms resolution).
    pub decision_to_first_connection_us: Option<u64>,
    pub new_on_live: u64,
    pub new_on_candidate: u64,
    /// The share put back, or why it was not.
    pub restored: String,
}

/// A rollback whose first new connection on the live pool is awaited.
#[derive(Debug)]
pub struct FirstConnectionWatch {
    event: i64,
    id: u32,
    live: Version,
    base: u64,
    decided: Instant,
}

/// What the watcher does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Watch {
    Continue,
    Done,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Daemon {
    fn new_flows(&self, id: u32) -> Result<[u64; 2], RolloutError> {
        Ok([
            self.maps.counters(id, Version::Blue)?.new_flows,
            self.maps.counters(id, Version::Green)?.new_flows,
        ])
    }

    /// Refuses a drill that cannot be run safely; otherwise writes the rollback.
    pub fn begin_drill(&mut self, service: &str) -> Result<Drill, RolloutError> {
        let id = self.service_id(service)?;
        if self.rollouts.contains_key(service) {
            return Err(RolloutError::RolloutRunning(service.to_owned()));
        }
        let before = self.maps.split(id)?;
        let live = before.live();
        if before.share_of(live.other()) == 0 {
            return Err(RolloutError::NothingToDrill(service.to_owned()));
        }
        let spec = self
            .config
            .service(service)
            .ok_or_else(|| RolloutError::UnknownService(service.to_owned()))?;
        if !spec
            .pool(live)
            .iter()
            .any(|b| b.weight > 0 && self.health.is_healthy(service, live, b.addr))
        {
            return Err(RolloutError::UnhealthyLive(service.to_owned(), live.name()));
        }
        let during = SplitWord::new(live, 0);
        let decided = Instant::now();
        self.maps.set_split(id, during)?;
        let write = decided.elapsed();
        // Counted from after the write: a SYN steered under the old word in the microseconds
        // before it must not read as a connection on the candidate after the rollback.
        let base = match self.new_flows(id) {
            Ok(base) => base,
            Err(error) => {
                self.maps.set_split(id, before)?;
                return Err(error);
            }
        };
        self.known_splits.insert(service.to_owned(), during);
        tracing::info!(
            service,
            live = live.name(),
            write_us = micros(write),
            "drill: rolled back"
        );
        Ok(Drill {
            service: service.to_owned(),
            id,
            before,
            during,
            base,
            decided,
            write,
            first_on_live: None,
        })
    }

    /// New connections since the drill's write: (on the live pool, on the candidate).
    fn drill_counts(&self, drill: &Drill) -> Result<(u64, u64), RolloutError> {
        let now = self.new_flows(drill.id)?;
        let since = |v: Version| now[v as usize].saturating_sub(drill.base[v as usize]);
        let live = drill.during.live();
        Ok((since(live), since(live.other())))
    }

    /// Reads the counters once: done when enough new connections reached the live pool or
    /// one reached the candidate.
    pub fn watch_drill(&self, drill: &mut Drill) -> Result<Watch, RolloutError> {
        let (on_live, on_candidate) = self.drill_counts(drill)?;
        if on_live > 0 && drill.first_on_live.is_none() {
            drill.first_on_live = Some(drill.decided.elapsed());
        }
        Ok(if on_live >= DRILL_PROBES || on_candidate > 0 {
            Watch::Done
        } else {
            Watch::Continue
        })
    }

    /// Puts the share back (unless someone changed it during the drill) and journals.
    pub fn end_drill(&mut self, drill: Drill) -> Result<DrillReport, RolloutError> {
        let (on_live, on_candidate) = self.drill_counts(&drill)?;
        let live = drill.during.live();
        let restored = if self.maps.split(drill.id)? == drill.during {
            self.maps.set_split(drill.id, drill.before)?;
            self.known_splits
                .insert(drill.service.clone(), drill.before);
            format!(
                "{} at {}%",
                live.other().name(),
                format_percent(drill.before.share_of(live.other()))
            )
        } else {
            "not restored: the split was changed during the drill".to_owned()
        };
        let outcome = if on_candidate > 0 {
            "failed"
        } else if on_live == 0 {
            "inconclusive"
        } else {
            "passed"
        };
        let report = DrillReport {
            service: drill.service.clone(),
            outcome: outcome.to_owned(),
            live: live.name().to_owned(),
            decision_to_write_us: micros(drill.write),
            decision_to_first_connection_us: drill.first_on_live.map(micros),
            new_on_live: on_live,
            new_on_candidate: on_candidate,
            restored,
        };
        tracing::info!(service = drill.service, outcome, first_connection_us = ?report.decision_to_first_connection_us, "drill ended");
        self.journal_drill(&report, drill.write);
        Ok(report)
    }

    /// Starts timing the first new connection on `live` after a rollback journaled as `event`.
    pub(crate) fn watch_first_connection(
        &mut self,
        event: i64,
        id: u32,
        live: Version,
        decided: Instant,
    ) {
        match self.new_flows(id) {
            Ok(now) => self.first_connection_watches.push(FirstConnectionWatch {
                event,
                id,
                live,
                base: now[live as usize],
                decided,
            }),
            Err(error) => {
                tracing::warn!(error = %error, "cannot time the rollback's first connection")
            }
        }
    }

    /// Reads the counters of every awaited rollback once, journals those whose first
    /// connection came, drops those older than `DRILL_LIMIT`. True while some are awaited.
    pub fn check_first_connections(&mut self) -> bool {
        let watches = std::mem::take(&mut self.first_connection_watches);
        for watch in watches {
            let seen = self
                .new_flows(watch.id)
                .is_ok_and(|now| now[watch.live as usize] > watch.base);
            if seen {
                let us = micros(watch.decided.elapsed());
                if let Some(journal) = &self.journal
                    && let Err(error) = journal.set_first_connection(watch.event, us)
                {
                    tracing::warn!(error = %error, "cannot journal the rollback's first connection");
                }
                tracing::info!(
                    first_connection_us = us,
                    live = watch.live.name(),
                    "first new connection after the rollback"
                );
            } else if watch.decided.elapsed() < DRILL_LIMIT {
                self.first_connection_watches.push(watch);
            }
        }
        !self.first_connection_watches.is_empty()
    }

    fn journal_drill(&self, report: &DrillReport, write: Duration) {
        let details = serde_json::to_value(report).unwrap_or_default();
        let Some(id) = self.journal_event(
            &report.service,
            EventKind::Drill,
            "operator",
            Some(report.outcome.clone()),
            Some(write),
            details,
        ) else {
            return;
        };
        if let (Some(journal), Some(first)) =
            (&self.journal, report.decision_to_first_connection_us)
            && let Err(error) = journal.set_first_connection(id, first)
        {
            tracing::warn!(error = %error, "cannot journal the drill's time to first connection");
        }
    }
}
