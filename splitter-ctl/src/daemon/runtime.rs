//! The daemon's runtime: starts the daemon (see `crate::daemon`) and runs its I/O: the control
//! socket, the metrics endpoint, health probes, housekeeping and signals. It stays in the
//! foreground until SIGINT or SIGTERM; SIGHUP reloads the config. On exit the data plane keeps
//! running (pinned), unless `--detach-on-exit` asks for it to be removed.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Instant,
};

use tokio::{
    io::{Interest, unix::AsyncFd},
    net::{TcpListener, UnixListener},
    signal::unix::{SignalKind, signal},
    task::JoinSet,
};

use super::{
    Daemon, Shared, StartError,
    control::{self, Peer},
    drills, http, lock,
    metrics::{DaemonCounters, Metrics},
};
use crate::{
    engine::drill::DrillKind,
    io::{notify::notify, probe},
    kernel::{
        aging,
        dataplane::{self, DataplaneError},
        reports::KernelLog,
    },
    model::actor::Actor,
    model::{
        config::{Config, ConfigError},
        error::chain,
    },
};

/// Why the daemon could not start, or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Bind(#[from] control::BindError),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error("cannot {what}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// How long a listener waits after a failed accept.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);

/// How the daemon runs, from its command line.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// On SIGINT/SIGTERM, detach the programs and remove the pins.
    pub detach_on_exit: bool,
    /// Start even when the bpffs is this process's own (the data plane then goes away with it).
    pub private_bpffs: bool,
}

pub async fn run(config_path: &Path, options: Options) -> Result<(), RunError> {
    let (config, text) = Config::read(config_path)?;
    let signals = |kind, what| signal(kind).map_err(|source| RunError::Io { what, source });
    let mut terminate = signals(SignalKind::terminate(), "install the SIGTERM handler")?;
    let mut interrupt = signals(SignalKind::interrupt(), "install the SIGINT handler")?;
    let mut hangup = signals(SignalKind::hangup(), "install the SIGHUP handler")?;
    std::fs::create_dir_all(&config.state_dir).map_err(|source| RunError::Io {
        what: "create the state directory",
        source,
    })?;
    let control_listener = control::bind(&config.control_socket, config.control_group.as_ref())?;
    let metrics_listener = TcpListener::bind(config.metrics_listen)
        .await
        .map_err(|source| RunError::Io {
            what: "listen on metrics_listen",
            source,
        })?;
    let (socket_path, pin_dir) = (config.control_socket.clone(), config.pin_dir.clone());

    let counters = DaemonCounters::default();
    let mut daemon = match Daemon::start(config, counters.clone(), options.private_bpffs) {
        Ok(daemon) => daemon,
        Err(error) => {
            let _ = std::fs::remove_file(&socket_path);
            return Err(error.into());
        }
    };
    super::record_applied(config_path, &text);
    daemon.give_up_left_drains();
    daemon.restore_rollouts();
    let outlives = daemon.data_plane_outlives_the_daemon();
    let reports = daemon.take_reports();
    let metrics = daemon
        .take_scrape()
        .map(|(maps, view)| Arc::new(Metrics::new(&counters, maps, view)));
    let drain_wake = daemon.drain_wake();
    let shared: Shared = Arc::new(Mutex::new(daemon));
    let mut tasks = JoinSet::new();
    tasks.spawn(serve_control(
        control_listener,
        Arc::clone(&shared),
        config_path.to_owned(),
    ));
    if let Some(metrics) = metrics {
        tasks.spawn(serve_metrics(metrics_listener, metrics));
    }
    tasks.spawn(probe_backends(Arc::clone(&shared)));
    tasks.spawn(run_rollouts(Arc::clone(&shared)));
    tasks.spawn(run_scheduled_drills(Arc::clone(&shared)));
    tasks.spawn(run_drains(Arc::clone(&shared), drain_wake));
    tasks.spawn(super::fleet::follow(Arc::clone(&shared)));
    tasks.spawn(super::coordinator::coordinate(Arc::clone(&shared)));
    if let Some(reports) = reports {
        tasks.spawn(forward_reports(reports));
    }

    if let Err(error) = notify("READY=1") {
        tracing::warn!(error = %chain(&error), "cannot tell the service manager that the daemon is ready");
    }
    tracing::info!(control_socket = %socket_path.display(), "ready");
    let mut housekeeping = tokio::time::interval(aging::SWEEP_INTERVAL);
    housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let signal_name = loop {
        tokio::select! {
            _ = terminate.recv() => break "SIGTERM",
            _ = interrupt.recv() => break "SIGINT",
            _ = hangup.recv() => {
                tracing::info!("SIGHUP: reloading the config");
                let _ = lock(&shared).reload(config_path);
            }
            _ = housekeeping.tick() => lock(&shared).housekeeping(),
        }
    };
    let _ = notify("STOPPING=1");
    tasks.abort_all();
    super::coordinator::step_down(&shared).await;
    // A drain cut short: its marks lifted, its connections left as they are.
    lock(&shared).abandon_drains();
    let _ = std::fs::remove_file(&socket_path);
    if options.detach_on_exit {
        let removed = dataplane::detach(&pin_dir)?;
        tracing::info!(
            signal = signal_name,
            pins = removed.len(),
            "stopping; data plane detached (--detach-on-exit)"
        );
    } else if outlives {
        tracing::info!(signal = signal_name, pin_dir = %pin_dir.display(), "stopping; the data plane keeps running");
    } else {
        tracing::warn!(signal = signal_name, pin_dir = %pin_dir.display(), "stopping; the data plane goes away with this process's mount namespace (--private-bpffs)");
    }
    Ok(())
}

/// The control API on its Unix socket (see `control`).
async fn serve_control(listener: UnixListener, shared: Shared, config_path: PathBuf) {
    let config_path = Arc::new(config_path);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors, say: back off instead of spinning the single-threaded runtime.
            tokio::time::sleep(ACCEPT_BACKOFF).await;
            continue;
        };
        let peer = stream.peer_cred().map_or(Peer::UNKNOWN, |cred| Peer {
            uid: cred.uid(),
            pid: cred.pid(),
        });
        let (shared, config_path) = (Arc::clone(&shared), Arc::clone(&config_path));
        tokio::spawn(http::serve_connection(stream, move |request| {
            let (shared, config_path) = (Arc::clone(&shared), Arc::clone(&config_path));
            async move { control::answer(&shared, &config_path, peer, request).await }
        }));
    }
}

/// `GET /metrics` on `metrics_listen`.
async fn serve_metrics(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(ACCEPT_BACKOFF).await;
            continue;
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(http::serve_connection(stream, move |request| {
            let metrics = Arc::clone(&metrics);
            async move { metrics.answer(&request) }
        }));
    }
}

/// Forwards the data plane's rare events into the log as they come.
async fn forward_reports(reports: KernelLog) {
    // SAFETY: `KernelLog` owns its ring buffer's descriptor for as long as it lives, and always
    // returns that one descriptor.
    let registered = unsafe { AsyncFd::register_with_interest(reports, Interest::READABLE) };
    let mut reports = match registered {
        Ok(reports) => reports,
        Err(error) => {
            tracing::warn!(error = %chain(&error), "cannot wait for the data plane's reports; its rare events go unlogged");
            return;
        }
    };
    loop {
        let mut ready = match reports.readable_mut().await {
            Ok(ready) => ready,
            Err(error) => {
                tracing::warn!(error = %chain(&error), "cannot wait for the data plane's reports any more; its rare events go unlogged");
                return;
            }
        };
        // aya-log panics on a record it cannot decode: one bad record must not end the daemon.
        let flushed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            ready.get_inner_mut().flush();
        }));
        ready.clear_ready();
        if flushed.is_err() {
            tracing::warn!("a report of the data plane could not be decoded; reading on");
        }
    }
}

/// Polls the drains every `drain::POLL` while one is under way, on a thread of its own
/// (`drain::poller`); sleeps otherwise, until one starts.
async fn run_drains(shared: Shared, wake: Arc<tokio::sync::Notify>) {
    loop {
        if !lock(&shared).draining() {
            wake.notified().await;
            continue;
        }
        let polling = Arc::clone(&shared);
        let polled = tokio::task::spawn_blocking(move || {
            super::drain::poller(|| lock(&polling).poll_drains())
        })
        .await;
        if let Err(error) = polled {
            tracing::error!(error = %error, "the drain poller stopped");
            return;
        }
    }
}

/// How often the drill schedule is looked at.
const DRILL_SCHEDULE_TICK: std::time::Duration = std::time::Duration::from_millis(500);

/// Runs the drills that services' `drill_every_ms` schedule, one at a time.
async fn run_scheduled_drills(shared: Shared) {
    loop {
        tokio::time::sleep(DRILL_SCHEDULE_TICK).await;
        let due = lock(&shared).due_drills();
        for service in due {
            // Refusals and outcomes are logged, counted and (when run) journaled by the drill.
            let _ = drills::run(&shared, &service, DrillKind::Rollback, Actor::Schedule).await;
        }
    }
}

/// How often rollouts are looked at (each is judged at its own interval).
const ROLLOUT_TICK: std::time::Duration = std::time::Duration::from_millis(50);

/// Judges rollouts as their intervals come round, each in its own task (PromQL queries take
/// time), and times the first connection after a rollback.
async fn run_rollouts(shared: Shared) {
    // An evaluation wakes the loop when it ends, so that the next due one is looked at then.
    let evaluated = Arc::new(tokio::sync::Notify::new());
    let mut next_tick = tokio::time::Instant::now();
    loop {
        if tokio::time::Instant::now() >= next_tick {
            let due = lock(&shared).due_evaluations(Instant::now());
            for due in due {
                let (shared, evaluated) = (Arc::clone(&shared), Arc::clone(&evaluated));
                tokio::spawn(async move {
                    let readings = due.read().await;
                    lock(&shared).evaluate_rollout(&due, Instant::now(), &readings);
                    evaluated.notify_one();
                });
            }
            next_tick = tokio::time::Instant::now() + ROLLOUT_TICK;
        }
        tokio::select! {
            () = tokio::time::sleep_until(next_tick) => {}
            () = evaluated.notified() => {}
        }
    }
}

/// Keeps one probe loop per probed service, so a slow probe of one service never delays
/// another's; a loop ends when its service leaves the config (or stops being probed).
async fn probe_backends(shared: Shared) {
    let mut loops: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    loop {
        loops.retain(|_, handle| !handle.is_finished());
        for service in lock(&shared).probed_services() {
            loops.entry(service).or_insert_with_key(|service| {
                tokio::spawn(probe_service(Arc::clone(&shared), service.clone()))
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// Probes one service's backends concurrently, records the results (which rewrites pools on
/// transitions), and waits its interval.
async fn probe_service(shared: Shared, service: String) {
    loop {
        let Some((check, backends)) = lock(&shared).probe_targets(&service) else {
            return;
        };
        let started = Instant::now();
        let mut probes = JoinSet::new();
        for id in backends {
            let check = check.clone();
            probes.spawn(async move {
                let result = probe::probe(id.addr, &check).await;
                (id, check, result)
            });
        }
        let mut results = Vec::new();
        while let Some(Ok(result)) = probes.join_next().await {
            results.push(result);
        }
        lock(&shared).record_probes(results);
        tokio::time::sleep(check.interval.saturating_sub(started.elapsed())).await;
    }
}
