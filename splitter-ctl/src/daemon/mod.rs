//! The daemon's state and what it does with it: start (load or adopt, attach, apply), reload,
//! health transitions, closed-flow aging and noticing operator changes. Its parts are child
//! modules: rollouts, drills, metrics, the control API and the runtime that wires sockets,
//! signals and timers (`runtime`). Every operation on `Daemon` runs under the state lock and is
//! done when it returns; nothing here waits on I/O but the runtime.

pub mod control;
mod coordinator;
pub mod drain;
pub mod drains;
pub mod drills;
mod events;
pub mod fleet;
mod health;
mod housekeeping;
pub mod http;
pub mod metrics;
pub mod rollouts;
pub mod runtime;

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use splitter_common::{SplitWord, Version};

use tokio::sync::watch;

use self::{
    events::{ConfigApplied, Event, ReloadRefused, Sinks},
    metrics::{DaemonCounters, ScrapeService, ScrapeView},
    rollouts::ActiveRollout,
};
use crate::{
    engine::{drill::DrillSchedule, health::Health},
    kernel::{
        apply::{self, Applied, ApplyError},
        dataplane::{self, BpffsScope, DataplaneError},
        maps::{Maps, MapsError},
        reports::KernelLog,
        split_lock::SplitLockFile,
    },
    model::{
        config::{Config, ConfigError},
        error::chain,
        paths,
        share::format_percent,
    },
    store::{
        applied,
        journal::{Journal, now_ms},
    },
    view::status::{self, Rates, Status},
};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "the bpffs at `{}` is this process's own: it runs in a mount namespace of its own (as \
         `ip netns exec` gives), so the data plane's pins would go away with it and no other \
         command could reach them (a rollback included). Enter only the network namespace: \
         `nsenter --net=/run/netns/NAME splitter-ctl daemon ...`; or pass --private-bpffs to \
         accept that the data plane goes away with this daemon",
        paths::BPFFS_ROOT
    )]
    PrivateBpffs,
    #[error("cannot tell whose bpffs this is")]
    BpffsScope(#[source] std::io::Error),
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

/// The daemon as its tasks share it.
pub type Shared = Arc<Mutex<Daemon>>;

/// The daemon, locked.
pub fn lock(shared: &Shared) -> MutexGuard<'_, Daemon> {
    // Every operation leaves the state whole when it returns, so a panic elsewhere does not
    // make it unusable.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

pub struct Daemon {
    config: Config,
    maps: Maps,
    health: Health,
    counters: DaemonCounters,
    /// The split word of each service as the daemon last saw it, to notice operator changes.
    known_splits: HashMap<String, SplitWord>,
    /// Rollouts in progress, by service.
    rollouts: HashMap<String, ActiveRollout>,
    /// The deployment journal; `None` when it cannot be opened (logged; nothing else stops).
    journal: Option<Journal>,
    /// When each service's next scheduled drill is due.
    drill_schedule: DrillSchedule,
    /// The split-word lock, open for the daemon's life.
    split_lock: SplitLockFile,
    /// Responses and errors at the last housekeeping, for rates over the window since.
    last_sample: HashMap<(String, Version), housekeeping::Sample>,
    /// Each service's canary spread at the last housekeeping (one walk of the flow table per
    /// housekeeping, not one per scrape or status).
    spreads: status::Spreads,
    /// Rates over the last window.
    rates: Rates,
    /// What the metrics collector reads beside the kernel maps (see `metrics::ScrapeView`).
    scrape: watch::Sender<Arc<ScrapeView>>,
    /// Whose bpffs the data plane is pinned in: whether it outlives the daemon.
    bpffs: BpffsScope,
    /// The metrics collector's handles on the pinned maps, until the runtime takes them.
    scrape_maps: Option<Maps>,
    /// The programs' rare events, until the runtime takes them to forward.
    reports: Option<KernelLog>,
    /// Drains under way, and the last that ended.
    drains: drains::Drains,
    /// Devices the reply fast path could not be attached to, warned about once each.
    reply_refused: std::collections::BTreeSet<u32>,
    /// What this node applied of the fleet's desired splits (`[fleet]`).
    fleet: fleet::FleetState,
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
    pub fn start(
        config: Config,
        counters: DaemonCounters,
        allow_private_bpffs: bool,
    ) -> Result<Self, StartError> {
        warn_if_world_writable(&config.path);
        let scope = dataplane::bpffs_scope().map_err(StartError::BpffsScope)?;
        match scope {
            BpffsScope::Host => {}
            BpffsScope::Private if allow_private_bpffs => tracing::warn!(
                "the bpffs is this process's own (--private-bpffs): the data plane goes away with this daemon's mount namespace"
            ),
            BpffsScope::Private => return Err(StartError::PrivateBpffs),
        }
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
            // The programs report rare events through a ring buffer of the object; without its
            // reader they still run, unheard.
            let reports = KernelLog::take(&mut ebpf)
                .inspect_err(|error| {
                    tracing::warn!(error = %chain(error), "cannot read the data plane's reports; its rare events go unlogged");
                })
                .ok();
            // The pinned links hold the programs; the object itself is no longer needed.
            drop(ebpf);
            // The metrics collector's own handles, so that a scrape never waits for the lock.
            let scrape_maps = Maps::open_pinned(&config.pin_dir)?;
            Ok::<_, StartError>((maps, attachment, reports, scrape_maps))
        })();
        let (maps, attachment, reports, scrape_maps) = match result {
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
        let fleet_state =
            fleet::FleetState::load(&config_state_dir, config.fleet.as_ref(), attachment.adopted);
        let mut daemon = Self {
            config,
            maps,
            health,
            counters,
            known_splits: HashMap::new(),
            rollouts: HashMap::new(),
            drill_schedule: DrillSchedule::default(),
            split_lock: SplitLockFile::open(&config_state_dir),
            journal: Journal::open(&config_state_dir)
                .inspect_err(|error| tracing::warn!(error = %chain(error), "cannot open the journal; rollouts run unrecorded"))
                .ok(),
            last_sample: HashMap::new(),
            spreads: status::Spreads::new(),
            rates: Rates::new(),
            scrape: watch::Sender::new(Arc::default()),
            scrape_maps: Some(scrape_maps),
            bpffs: scope,
            reports,
            drains: drains::Drains::default(),
            reply_refused: std::collections::BTreeSet::new(),
            fleet: fleet_state,
        };
        let applied = daemon.apply()?;
        daemon.sync_fast_path();
        daemon.emit(ConfigApplied {
            applied: &applied,
            reload: false,
        });
        daemon.publish_scrape_view();
        Ok(daemon)
    }

    /// Logs, counts and journals `event`; its journal id, when it has one.
    fn emit(&self, event: impl Event) -> Option<i64> {
        event.emit(&Sinks {
            counters: &self.counters,
            journal: self.journal.as_ref(),
        })
    }

    /// What the metrics collector reads: its own handles on the pinned maps (taken once), and
    /// the daemon's published view, as it changes.
    pub fn take_scrape(&mut self) -> Option<(Maps, watch::Receiver<Arc<ScrapeView>>)> {
        let maps = self.scrape_maps.take()?;
        Some((maps, self.scrape.subscribe()))
    }

    /// Whether the data plane outlives the daemon: pinned in the host's bpffs.
    #[must_use]
    pub fn data_plane_outlives_the_daemon(&self) -> bool {
        self.bpffs == BpffsScope::Host
    }

    /// The reader of the data plane's rare events, for the runtime to forward (once).
    pub fn take_reports(&mut self) -> Option<KernelLog> {
        self.reports.take()
    }

    /// Publishes the services, backend health and spreads for the metrics collector.
    fn publish_scrape_view(&self) {
        let view = ScrapeView {
            services: self
                .config
                .services
                .iter()
                .map(|spec| ScrapeService {
                    name: spec.name.clone(),
                    endpoint: spec.endpoint(),
                    has_last_resort: !spec.last_resort.is_empty(),
                    spread: self.spreads.get(&spec.name).cloned(),
                })
                .collect(),
            backends: self
                .health
                .iter()
                .map(|(id, health)| (id.clone(), health.healthy))
                .collect(),
        };
        self.scrape.send_replace(Arc::new(view));
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
        match result {
            Ok((applied, text)) => {
                self.emit(ConfigApplied {
                    applied: &applied,
                    reload: true,
                });
                self.publish_scrape_view();
                // `fast_path` may have changed: it takes effect now, not at the next housekeeping.
                self.sync_fast_path();
                record_applied(path, &text);
                Ok(applied)
            }
            Err(error) => {
                self.emit(ReloadRefused { error: &error });
                Err(error)
            }
        }
    }

    /// The reload; what it applied, and the text of the config applied.
    fn reload_inner(&mut self, path: &Path) -> Result<(Applied, String), ReloadError> {
        let (config, text) = Config::read(path)?;
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
            Ok(applied) => Ok((applied, text)),
            Err(error) => {
                // The kernel may hold part of the new config: put the old one back as a whole.
                self.config = previous;
                self.health.sync(&self.config);
                if let Err(restore) = self.apply() {
                    tracing::error!(error = %chain(&restore), "cannot restore the previous config after a failed reload");
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
        status.drains = self
            .drain_reports()
            .into_iter()
            .filter(|d| only.is_none_or(|name| d.service == name))
            .collect();
        Ok(status)
    }
}

/// Keeps a copy of the config just applied where the emergency commands find it (logged when
/// it cannot be: a rollback then needs a config that parses, or `--pin-dir`).
fn record_applied(config_path: &Path, text: &str) {
    match applied::write(config_path, text, now_ms()) {
        Ok(path) => tracing::debug!(record = %path.display(), "recorded the applied config"),
        Err(error) => tracing::warn!(
            error = %chain(&error),
            "cannot record the applied config; the emergency commands will need a config that parses"
        ),
    }
}

fn warn_if_world_writable(path: &Path) {
    if crate::model::config::world_writable(path) {
        tracing::warn!(
            path = %path.display(),
            "the config file is world-writable: any user on this host can change what the daemon applies; run `chmod o-w` on it"
        );
    }
}
