//! The daemon's state and what it does with it: start (load or adopt, attach, apply), reload,
//! health transitions, closed-flow aging and noticing operator changes. Its parts are child
//! modules: rollouts, drills, metrics, the control API and the runtime that wires sockets,
//! signals and timers (`runtime`). Every operation on `Daemon` runs under the state lock and is
//! done when it returns; nothing here waits on I/O but the runtime.

pub mod control;
pub mod drills;
pub mod http;
pub mod metrics;
pub mod rollouts;
pub mod runtime;

use std::{collections::HashMap, path::Path, time::Instant};

use splitter_common::{SplitWord, Version};

use self::{
    metrics::{DaemonCounters, HealthState, PoolLabel, TransitionLabels},
    rollouts::ActiveRollout,
};
use crate::{
    engine::{
        drill::DrillSchedule,
        health::{BackendId, Health, Transition},
    },
    kernel::{
        aging,
        apply::{self, Applied, ApplyError},
        dataplane::{self, DataplaneError},
        maps::{Maps, MapsError},
        split_lock::SplitLockFile,
    },
    model::{
        config::{Config, ConfigError, HealthCheck, Pool},
        share::format_percent,
    },
    store::journal::Journal,
    view::status::{self, Rates, Status},
};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "`{field}` changed from `{from}` to `{to}`; that takes a restart of the daemon, not a reload"
    )]
    NeedsRestart {
        field: &'static str,
        from: String,
        to: String,
    },
    #[error(
        "a rollout of `{0}` is running, and the new config changes which services it moves \
         (a release group gained or lost a service, or the service joined or left one); \
         finish or abort the rollout first"
    )]
    RolloutReshaped(String),
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

pub struct Daemon {
    pub config: Config,
    pub maps: Maps,
    pub health: Health,
    pub counters: DaemonCounters,
    /// The split word of each service as the daemon last saw it, to notice operator changes.
    pub(crate) known_splits: HashMap<String, SplitWord>,
    /// Rollouts in progress, by service.
    pub(crate) rollouts: HashMap<String, ActiveRollout>,
    /// The deployment journal; `None` when it cannot be opened (logged; nothing else stops).
    pub(crate) journal: Option<Journal>,
    /// Rollbacks whose first new connection on the live pool is being timed.
    pub(crate) first_connection_watches: Vec<drills::FirstConnectionWatch>,
    /// When each service's next scheduled drill is due.
    pub(crate) drill_schedule: DrillSchedule,
    /// The split-word lock, open for the daemon's life.
    pub(crate) split_lock: SplitLockFile,
    /// Responses and errors at the last housekeeping, for rates over the window since.
    last_sample: HashMap<(String, Version), Sample>,
    /// Each service's canary spread at the last housekeeping (one walk of the flow table per
    /// housekeeping, not one per scrape or status).
    pub(crate) spreads: status::Spreads,
    /// Rates over the last window.
    rates: Rates,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("config", &self.config.path)
            .finish_non_exhaustive()
    }
}

impl Daemon {
    /// Loads or adopts the data plane, attaches it and applies `config`. When there was no
    /// data plane before and this fails, what was pinned is removed again.
    pub fn start(config: Config, counters: DaemonCounters) -> Result<Self, StartError> {
        warn_if_world_writable(&config.path);
        let fresh = !dataplane::is_attached(&config.pin_dir);
        let result = (|| {
            let mut ebpf = dataplane::load(Some(&config.pin_dir), config.flow_table_per_cpu)?;
            let attachment = dataplane::attach(
                &mut ebpf,
                &config.interface,
                &config.pin_dir,
                config.xdp_mode,
            )?;
            let maps = Maps::from_ebpf(&mut ebpf)?;
            // The pinned links hold the programs; the object itself is no longer needed.
            drop(ebpf);
            Ok::<_, StartError>((maps, attachment))
        })();
        let (maps, attachment) = match result {
            Ok(ok) => ok,
            Err(error) => {
                if fresh {
                    let _ = dataplane::detach(&config.pin_dir);
                }
                return Err(error);
            }
        };
        if attachment.adopted {
            tracing::info!(interface = %config.interface, pin_dir = %config.pin_dir.display(), "adopted the pinned data plane; programs replaced in place, maps kept");
        } else {
            tracing::info!(interface = %config.interface, pin_dir = %config.pin_dir.display(), xdp_mode = attachment.xdp_mode.unwrap_or("?"), "attached the data plane");
        }
        let mut health = Health::default();
        health.sync(&config);
        let config_state_dir = config.state_dir.clone();
        let mut daemon = Self {
            config,
            maps,
            health,
            counters,
            known_splits: HashMap::new(),
            rollouts: HashMap::new(),
            first_connection_watches: Vec::new(),
            drill_schedule: DrillSchedule::default(),
            split_lock: SplitLockFile::open(&config_state_dir),
            journal: Journal::open(&config_state_dir)
                .inspect_err(|error| tracing::warn!(error = %error, "cannot open the journal; rollouts run unrecorded"))
                .ok(),
            last_sample: HashMap::new(),
            spreads: status::Spreads::new(),
            rates: Rates::new(),
        };
        let applied = daemon.apply()?;
        log_applied("config applied", &applied);
        Ok(daemon)
    }

    fn apply(&mut self) -> Result<Applied, ApplyError> {
        let health = &self.health;
        let applied = apply::apply(&mut self.maps, &self.config, &|service, pool, addr| {
            health.is_healthy(service, pool, addr)
        })?;
        for (service, kernel, wanted) in &applied.split_differs {
            tracing::info!(
                service = %service,
                kernel_green_percent = %format_percent(kernel.share_of(Version::Green)),
                config_green_percent = %format_percent(wanted.share_of(Version::Green)),
                kernel_live = kernel.live().name(),
                "keeping the split in the kernel, which differs from the config (an operator change)"
            );
        }
        self.remember_splits();
        Ok(applied)
    }

    /// Re-reads the config at `path`, validates all of it and applies it as a diff. On any
    /// error nothing is applied and the running config stays.
    pub fn reload(&mut self, path: &Path) -> Result<Applied, ReloadError> {
        warn_if_world_writable(path);
        let result = self.reload_inner(path);
        match &result {
            Ok(applied) => {
                self.counters.reloads.inc();
                log_applied("reloaded", applied);
            }
            Err(error) => {
                self.counters.reload_errors.inc();
                tracing::warn!(error = %error, "reload refused; the running config stays");
            }
        }
        result
    }

    fn reload_inner(&mut self, path: &Path) -> Result<Applied, ReloadError> {
        let config = Config::load(path)?;
        let fixed: [(&'static str, String, String); 5] = [
            (
                "interface",
                self.config.interface.clone(),
                config.interface.clone(),
            ),
            (
                "pin_dir",
                self.config.pin_dir.display().to_string(),
                config.pin_dir.display().to_string(),
            ),
            (
                "control_socket",
                self.config.control_socket.display().to_string(),
                config.control_socket.display().to_string(),
            ),
            (
                "metrics_listen",
                self.config.metrics_listen.to_string(),
                config.metrics_listen.to_string(),
            ),
            (
                "control_group",
                format!("{:?}", self.config.control_group.as_ref().map(|g| &g.name)),
                format!("{:?}", config.control_group.as_ref().map(|g| &g.name)),
            ),
        ];
        if let Some((field, from, to)) = fixed.into_iter().find(|(_, from, to)| from != to) {
            return Err(ReloadError::NeedsRestart { field, from, to });
        }
        // A running rollout keeps the services it moves: its key, its counters' window and the
        // split word it expects would otherwise point at something else.
        let members = |config: &Config, name: &str| {
            config.release(name).map(|r| {
                (
                    r.name.to_owned(),
                    r.members.iter().map(|m| m.name.clone()).collect::<Vec<_>>(),
                )
            })
        };
        if let Some(reshaped) = self
            .rollouts
            .keys()
            .find(|name| members(&self.config, name) != members(&config, name))
        {
            return Err(ReloadError::RolloutReshaped(reshaped.clone()));
        }
        let previous = std::mem::replace(&mut self.config, config);
        self.health.sync(&self.config);
        match self.apply() {
            Ok(applied) => Ok(applied),
            Err(error) => {
                // The kernel may hold part of the new config: put the old one back as a whole.
                self.config = previous;
                self.health.sync(&self.config);
                if let Err(restore) = self.apply() {
                    tracing::error!(error = %restore, "cannot restore the previous config after a failed reload");
                }
                Err(error.into())
            }
        }
    }

    /// The status, with health.
    pub fn status(&self, only: Option<&str>) -> Result<Status, MapsError> {
        let mut status = status::gather(
            &self.maps,
            &self.config,
            Some(&self.health),
            Some(&self.rates),
            Some(&self.spreads),
            only,
        )?;
        if let Some(journal) = &self.journal {
            status::add_previous(&mut status, &self.config, journal);
        }
        Ok(status)
    }

    /// The check and the backends of `service`, or `None` when the service is gone or is not
    /// probed (UDP).
    #[must_use]
    pub fn probe_targets(&self, service: &str) -> Option<(HealthCheck, Vec<BackendId>)> {
        let spec = self.config.service(service)?;
        let check = spec.health.clone()?;
        let backends = Pool::ALL
            .into_iter()
            .flat_map(|pool| {
                spec.backends_of(pool).iter().map(move |b| BackendId {
                    service: service.to_owned(),
                    pool,
                    addr: b.addr,
                })
            })
            .collect();
        Some((check, backends))
    }

    /// The services whose backends are probed.
    #[must_use]
    pub fn probed_services(&self) -> Vec<String> {
        self.config
            .services
            .iter()
            .filter(|s| s.health.is_some())
            .map(|s| s.name.clone())
            .collect()
    }

    /// Records probe results; a backend that changes state rewrites its pool's slot table.
    pub fn record_probes(&mut self, results: Vec<(BackendId, HealthCheck, Result<(), String>)>) {
        let transitions: Vec<Transition> = results
            .into_iter()
            .filter_map(|(id, check, result)| self.health.record(&id, &check, result))
            .collect();
        for transition in transitions {
            self.on_transition(&transition);
        }
    }

    fn on_transition(&mut self, transition: &Transition) {
        let BackendId {
            service,
            pool,
            addr,
        } = &transition.backend;
        let state = if transition.healthy {
            HealthState::up
        } else {
            HealthState::down
        };
        self.counters
            .health_transitions
            .get_or_create(&TransitionLabels {
                service: service.clone(),
                version: PoolLabel(*pool),
                backend: addr.to_string(),
                state,
            })
            .inc();
        if transition.healthy {
            tracing::info!(service = %service, version = pool.name(), backend = %addr, "backend is up; back in its pool");
        } else {
            tracing::warn!(service = %service, version = pool.name(), backend = %addr, reason = transition.reason.as_deref().unwrap_or("?"), "backend is down; out of its pool");
        }
        let Some(spec) = self.config.service(service).cloned() else {
            return;
        };
        let health = &self.health;
        let healthy = |s: &str, p: Pool, a| health.is_healthy(s, p, a);
        let down = |p: Pool| {
            spec.backends_of(p)
                .iter()
                .all(|b| !healthy(&spec.name, p, b.addr))
        };
        if down(Pool::Blue) && down(Pool::Green) {
            if spec.last_resort.is_empty() || down(Pool::LastResort) {
                tracing::error!(service = %service, "no healthy backend in blue, green or a last-resort pool: new connections are dropped (slot_miss)");
            } else {
                tracing::error!(service = %service, last_resort = spec.last_resort.len(), "no healthy backend in blue or green: new connections go to the last-resort pool");
            }
        } else if *pool == Pool::LastResort && down(Pool::LastResort) {
            tracing::warn!(service = %service, "no healthy backend left in the last-resort pool; it would take nothing if blue and green failed");
        } else if *pool != Pool::LastResort && down(*pool) {
            tracing::warn!(service = %service, version = pool.name(), "no healthy backend left in this version; its new connections go to the other version");
        }
        let result = self
            .maps
            .service(&spec.endpoint())
            .and_then(|found| match found {
                Some(kernel) => {
                    apply::write_pool(&mut self.maps, kernel.id, &spec, *pool, &healthy)
                }
                None => Ok(()),
            });
        if let Err(error) = result {
            tracing::error!(service = %service, error = %error, "cannot rewrite the pool after a health change");
        }
    }

    /// Sweeps closed flows and logs split words someone else changed since the last look.
    pub fn housekeeping(&mut self) {
        self.sample_rates();
        if let Err(error) = apply::remove_stale_backends(&mut self.maps, &self.config) {
            tracing::warn!(error = %error, "cannot remove the reverse entries of removed backends");
        }
        // One walk of the flow table serves the canary's spread and the sweep.
        match self.maps.flows() {
            Ok(flows) => {
                match status::spreads_among(&self.maps, &self.config, &flows) {
                    Ok(spreads) => self.spreads = spreads,
                    Err(error) => {
                        tracing::warn!(error = %error, "cannot compute the canary's spread");
                    }
                }
                match aging::sweep_among(&mut self.maps, &flows, aging::monotonic_ns()) {
                    Ok(0) => {}
                    Ok(removed) => tracing::debug!(removed, "swept closed flows"),
                    Err(error) => tracing::warn!(error = %error, "cannot sweep closed flows"),
                }
            }
            Err(error) => tracing::warn!(error = %error, "cannot read the flow table"),
        }
        for spec in &self.config.services {
            let Ok(Some(kernel)) = self.maps.service(&spec.endpoint()) else {
                continue;
            };
            let Ok(now) = self.maps.split(kernel.split) else {
                continue;
            };
            let before = self.known_splits.insert(spec.name.clone(), now);
            if let Some(before) = before.filter(|before| *before != now) {
                tracing::info!(
                    service = %spec.name,
                    green_percent = %format_percent(now.share_of(Version::Green)),
                    was_green_percent = %format_percent(before.share_of(Version::Green)),
                    live = now.live().name(),
                    "the split changed outside the daemon (an operator's weight or rollback); keeping it"
                );
            }
        }
    }

    /// Responses per second, the error ratio and the p99 of each version since the last
    /// sample.
    fn sample_rates(&mut self) {
        let now = Instant::now();
        let mut rates = Rates::new();
        for spec in &self.config.services {
            let Ok(Some(kernel)) = self.maps.service(&spec.endpoint()) else {
                continue;
            };
            for version in [Version::Blue, Version::Green] {
                let Ok(counters) = self.maps.counters(kernel.id, version) else {
                    continue;
                };
                let (errors, events) = counters.errors_and_events();
                let response = self
                    .maps
                    .histogram(kernel.id, version, splitter_common::LatencyKind::Response)
                    .unwrap_or_default();
                let sample = Sample {
                    at: now,
                    responses: counters.responses,
                    events,
                    errors,
                    response,
                };
                let key = (spec.name.clone(), version);
                if let Some(before) = self.last_sample.insert(key.clone(), sample) {
                    let seconds = now.duration_since(before.at).as_secs_f64();
                    let d_events = events.saturating_sub(before.events);
                    let ratio = (d_events > 0)
                        .then(|| errors.saturating_sub(before.errors) as f64 / d_events as f64);
                    if seconds > 0.0 {
                        let window = response.since(&before.response);
                        rates.insert(
                            key,
                            status::Recent {
                                responses_per_second: counters
                                    .responses
                                    .saturating_sub(before.responses)
                                    as f64
                                    / seconds,
                                error_ratio: ratio,
                                p99_ms: crate::engine::latency::Quantiles::of(&window).p99_ms,
                            },
                        );
                    }
                }
            }
        }
        self.rates = rates;
    }

    /// Remembers `word` as what the daemon itself wrote for release `name` (a service or a
    /// release group), so housekeeping does not report it as someone else's change.
    pub(crate) fn note_split(&mut self, name: &str, word: SplitWord) {
        let members: Vec<String> = self
            .config
            .release(name)
            .map(|r| r.members.iter().map(|m| m.name.clone()).collect())
            .unwrap_or_else(|| vec![name.to_owned()]);
        for member in members {
            self.known_splits.insert(member, word);
        }
    }

    fn remember_splits(&mut self) {
        for spec in &self.config.services {
            if let Ok(Some(kernel)) = self.maps.service(&spec.endpoint())
                && let Ok(word) = self.maps.split(kernel.split)
            {
                self.known_splits.insert(spec.name.clone(), word);
            }
        }
        self.known_splits
            .retain(|name, _| self.config.service(name).is_some());
    }
}

/// A version's counters at one housekeeping.
#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    responses: u64,
    events: u64,
    errors: u64,
    response: splitter_common::Histogram,
}

fn log_applied(what: &str, applied: &Applied) {
    tracing::info!(
        added = ?applied.added,
        kept = ?applied.kept,
        removed = ?applied.removed,
        purged_flows = applied.purged_flows,
        draining_backends = applied.draining_backends,
        "{what}"
    );
}

fn warn_if_world_writable(path: &Path) {
    if crate::model::config::world_writable(path) {
        tracing::warn!(
            path = %path.display(),
            "the config file is world-writable: any user on this host can change what the daemon applies; run `chmod o-w` on it"
        );
    }
}
