//! The daemon's drains: the runs under way (`drain::Run`), polled by one thread; a drain
//! asked for by the CLI after its own rollback write (`POST /v1/drains/SERVICE`) or started by
//! the daemon's own rollbacks and promotions; the journal entries they complete.

use std::{collections::VecDeque, time::Duration};

use splitter_common::Version;

use super::drain::{DrainError, Plan, Run, Take};
use crate::{
    kernel::{aging::monotonic_ns, closer::Closer},
    model::{
        drain::{Cause, Established},
        error::chain,
    },
    view::drain::{DrainJournal, DrainReport},
};

/// Reports of finished drains the daemon keeps for `GET /v1/drains`.
const FINISHED_KEPT: usize = 16;

/// The daemon's drains: the runs under way (each with the journal entry of the rollback it
/// completes), the sockets they send with, and the last reports.
#[derive(Debug, Default)]
pub struct Drains {
    runs: Vec<(Run, Option<i64>)>,
    closer: Option<Closer>,
    /// With each its decision (on the kernel's clock), by which a journal entry finds it.
    finished: VecDeque<(DrainReport, u64)>,
    /// Wakes the poller when a drain starts.
    wake: std::sync::Arc<tokio::sync::Notify>,
}

impl Drains {
    /// Whether a run is under way (the poller sleeps otherwise).
    #[must_use]
    pub fn busy(&self) -> bool {
        !self.runs.is_empty()
    }
}

impl super::Daemon {
    /// Starts draining `plan`'s version, completing the journal entry `event` when it ends. A
    /// drain of the same release and version under way is replaced (its marks lifted first).
    pub fn start_drain(
        &mut self,
        plan: Plan,
        event: Option<i64>,
    ) -> Result<DrainReport, DrainError> {
        if plan.established == Established::Keep {
            return Err(DrainError::Keep);
        }
        if self.drains.closer.is_none() {
            self.drains.closer = Some(Closer::open().map_err(DrainError::Sockets)?);
        }
        let (maps, drains) = (&mut self.maps, &mut self.drains);
        let mut replaced = Vec::new();
        // Connections aged out are drained beside any other drain (each connection by one).
        let aged = plan.cause() == Cause::MaxAge;
        drains.runs.retain_mut(|(run, _)| {
            let same = !aged
                && run.plan().cause() == Cause::Left
                && run.plan().release == plan.release
                && run.plan().version == plan.version;
            if same {
                run.abandon(maps);
                replaced.push(run.plan().release.clone());
            }
            !same
        });
        let mut run = Run::start(maps, plan)?;
        let report = run.report(maps);
        if aged {
            tracing::debug!(service = %report.service, version = %report.version, connections = report.connections, "draining connections past their max age");
        } else {
            tracing::info!(service = %report.service, version = %report.version, established = %report.established, connections = report.connections, replaced = !replaced.is_empty(), "drain started");
        }
        // Its first round (the probes of its first connections) now, not when the poller's
        // thread has woken; a failure there is the poller's to meet again.
        if let Some(closer) = drains.closer.as_mut()
            && let Err(error) = run.first_round(maps, closer)
        {
            tracing::debug!(error = %chain(&error), "the drain's first round in its request failed; the poller goes on");
        }
        drains.runs.push((run, event));
        drains.wake.notify_one();
        Ok(report)
    }

    /// One round of every drain; journals and counts those that ended. `None` when none is
    /// left, else the time the round spent sending (`drain::poller`).
    pub fn poll_drains(&mut self) -> Option<std::time::Duration> {
        let closer = self.drains.closer.as_mut()?;
        let maps = &mut self.maps;
        let mut ended = Vec::new();
        self.drains.runs.retain_mut(|(run, event)| {
            if let Err(error) = run.poll(maps, closer) {
                tracing::warn!(service = %run.plan().release, error = %chain(&error), "a drain cannot read or mark the data plane; it stops");
                run.abandon(maps);
                ended.push((run.report(maps), *event, run.plan().decided_ns));
                return false;
            }
            if run.done() {
                ended.push((run.report(maps), *event, run.plan().decided_ns));
                return false;
            }
            true
        });
        if self.drains.runs.is_empty()
            && !ended.is_empty()
            && maps.drained_flows().is_empty()
            && let Err(error) = maps.set_drain_active(false)
        {
            tracing::warn!(error = %chain(&error), "cannot switch the drain off");
        }
        for (report, event, decided_ns) in ended {
            self.drain_ended(&report, event);
            // Kept for `GET /v1/drains` and `status`: the drains of a version left (aged-out
            // connections, drained every few seconds, would push them out).
            if report.cause == Cause::Left.name() {
                self.drains.finished.push_front((report, decided_ns));
                self.drains.finished.truncate(FINISHED_KEPT);
            }
        }
        let sending = self.drains.closer.as_mut().map(Closer::take_sending);
        sending.filter(|_| self.drains.busy())
    }

    /// The drains under way, then the last ones that ended, newest first.
    #[must_use]
    pub fn drain_reports(&self) -> Vec<DrainReport> {
        self.drains
            .runs
            .iter()
            .map(|(run, _)| run.report(&self.maps))
            .chain(
                self.drains
                    .finished
                    .iter()
                    .map(|(report, _)| report.clone()),
            )
            .collect()
    }

    /// Whether a drain is under way.
    #[must_use]
    pub fn draining(&self) -> bool {
        self.drains.busy()
    }

    /// What wakes the drain poller.
    #[must_use]
    pub fn drain_wake(&self) -> std::sync::Arc<tokio::sync::Notify> {
        std::sync::Arc::clone(&self.drains.wake)
    }

    /// Lifts every mark of the drains under way (the daemon is stopping: a mark left behind
    /// would keep its flow off the fast path).
    pub fn abandon_drains(&mut self) {
        let maps = &mut self.maps;
        for (run, _) in &mut self.drains.runs {
            run.abandon(maps);
        }
        self.drains.runs.clear();
        let _ = maps.set_drain_active(false);
    }

    /// What a daemon that stopped mid-drain left behind: given up, each flow's record and mark
    /// removed, and journaled.
    pub fn give_up_left_drains(&mut self) {
        let left = self.maps.drained_flows();
        if left.is_empty() {
            return;
        }
        for key in &left {
            if let Err(error) = self.maps.end_drain(key) {
                tracing::warn!(error = %chain(&error), "cannot forget a drained flow");
            }
        }
        let _ = self.maps.set_drain_active(false);
        tracing::warn!(
            flows = left.len(),
            "a drain was left unfinished by the daemon before; given up: its connections stay open until their clients close them"
        );
        self.emit(super::events::DrainAbandoned { flows: left.len() });
    }

    fn drain_ended(&mut self, report: &DrainReport, event: Option<i64>) {
        for (outcome, n) in &report.outcomes {
            if *n > 0 {
                self.counters
                    .drained(&report.service, &report.version, &report.cause, outcome, *n);
            }
        }
        self.counters.drain_raced(&report.service, report.raced);
        // Connections aged out: counted, not journaled (they come every few seconds while a
        // service has clients that keep their connections).
        if report.cause == Cause::MaxAge.name() {
            tracing::debug!(service = %report.service, version = %report.version, "{}", report.describe());
            return;
        }
        tracing::info!(service = %report.service, version = %report.version, "{}", report.describe());
        let details = serde_json::to_value(report).unwrap_or_default();
        self.emit(super::events::DrainEnded {
            report,
            details: details.clone(),
        });
        if let Some(id) = event {
            self.journal_drain(id, report, &details);
        }
    }

    /// Completes the rollback's journal entry `id` with its drain's times.
    fn journal_drain(&self, id: i64, report: &DrainReport, details: &serde_json::Value) {
        if let Some(journal) = self.journal.as_ref()
            && let Err(error) = journal.set_drain(
                id,
                report.decision_to_last_response_us,
                report.decision_to_last_close_us,
                details,
            )
        {
            tracing::warn!(error = %chain(&error), "cannot complete the rollback's journal entry with its drain");
        }
    }

    /// The journal entry of a rollback whose drain the CLI asked for before it wrote the entry
    /// (`PUT /v1/drains/SERVICE/journal`): kept with the drain under way, or written at once
    /// when the drain already ended. False when no drain of `release` has that decision.
    pub fn attach_drain_event(&mut self, name: &str, attach: &DrainJournal) -> bool {
        let Ok(release) = self.release_name(name) else {
            return false;
        };
        let release = release.as_str();
        let same = |plan: &Plan| {
            plan.release == release
                && plan.version.name() == attach.version
                && plan.decided_ns == attach.decided_monotonic_ns
                && plan.cause() == Cause::Left
        };
        if let Some((_, event)) = self
            .drains
            .runs
            .iter_mut()
            .find(|(run, _)| same(run.plan()))
        {
            *event = Some(attach.event);
            return true;
        }
        let Some(report) = self
            .drains
            .finished
            .iter()
            .find(|(report, decided_ns)| {
                report.service == release
                    && report.version == attach.version
                    && *decided_ns == attach.decided_monotonic_ns
            })
            .map(|(report, _)| report.clone())
        else {
            return false;
        };
        let details = serde_json::to_value(&report).unwrap_or_default();
        self.journal_drain(attach.event, &report, &details);
        true
    }
}

/// Why a drain request was refused.
#[derive(Debug, thiserror::Error)]
pub enum DrainRequestError {
    #[error(transparent)]
    Release(#[from] super::rollouts::RolloutError),
    #[error("`{0}` is not a version: `blue` or `green`")]
    Version(String),
    #[error("`{0}` is not a policy for established connections: `drain`, `reset` or `keep`")]
    Policy(String),
    #[error(transparent)]
    Drain(#[from] DrainError),
}

impl super::Daemon {
    /// Starts the drain `request` asks for on release `name` (a service or a release group).
    pub fn drain_request(
        &mut self,
        name: &str,
        request: &crate::view::drain::DrainRequest,
    ) -> Result<DrainReport, DrainRequestError> {
        let release = self.release_name(name)?;
        let ids = self.release_ids(&release)?;
        let version = match request.version.as_str() {
            "blue" => Version::Blue,
            "green" => Version::Green,
            other => return Err(DrainRequestError::Version(other.to_owned())),
        };
        let settings = self
            .config
            .release(&release)
            .map(|r| r.leader().drain)
            .unwrap_or_default();
        let established = match &request.established {
            None => settings.established,
            Some(name) => {
                Established::parse(name).ok_or_else(|| DrainRequestError::Policy(name.clone()))?
            }
        };
        let plan = Plan {
            release,
            ids: ids.members,
            version,
            established,
            timeout: settings.timeout,
            idle: settings.idle,
            spread: Duration::ZERO,
            decided_ns: request.decided_monotonic_ns.unwrap_or_else(monotonic_ns),
            take: Take::Version,
        };
        Ok(self.start_drain(plan, request.event)?)
    }

    /// After the daemon's own rollback or promotion of `release`: drains the version left, as
    /// the service's config says (a promotion spreads it over its retire window).
    pub(crate) fn drain_after(
        &mut self,
        release: &str,
        ids: &[u32],
        left: Version,
        promotion: bool,
        decided_ns: u64,
        event: Option<i64>,
    ) {
        let settings = self
            .config
            .release(release)
            .map(|r| r.leader().drain)
            .unwrap_or_default();
        let plan = Plan {
            release: release.to_owned(),
            ids: ids.to_vec(),
            version: left,
            established: settings.established,
            timeout: settings.timeout,
            idle: if promotion {
                settings.unhurried_idle()
            } else {
                settings.idle
            },
            spread: if promotion {
                settings.retire_window
            } else {
                Duration::ZERO
            },
            decided_ns,
            take: Take::Version,
        };
        match self.start_drain(plan, event) {
            Ok(_) | Err(DrainError::Keep) => {}
            Err(error) => {
                tracing::warn!(service = release, error = %chain(&error), "cannot drain the version left; its connections stay until their clients close them");
            }
        }
    }
}
