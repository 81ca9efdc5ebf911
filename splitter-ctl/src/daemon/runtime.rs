//! The daemon's runtime: starts the daemon (see `crate::daemon`) and runs its I/O: the control
//! socket, the metrics endpoint, health probes, housekeeping and signals. It stays in the
//! foreground until SIGINT or SIGTERM; SIGHUP reloads the config. On exit the data plane keeps
//! running (pinned), unless `--detach-on-exit` asks for it to be removed.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Instant,
};

use tokio::{
    net::{TcpListener, UnixListener},
    signal::unix::{SignalKind, signal},
    task::JoinSet,
};

use super::{
    Daemon, StartError, control, http,
    metrics::{self, DaemonCounters, Metrics},
    rollouts::RolloutError,
};
use crate::{
    engine::drill::{DRILL_LIMIT, DRILL_POLL, DrillKind, Trigger},
    io::{notify::notify, probe},
    kernel::{
        aging,
        dataplane::{self, DataplaneError},
    },
    model::config::{Config, ConfigError},
    view::drill::DrillReport,
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

type Shared = Arc<Mutex<Daemon>>;

/// How long a listener waits after a failed accept.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);

fn lock(shared: &Shared) -> MutexGuard<'_, Daemon> {
    // Every operation leaves the state whole when it returns, so a panic elsewhere does not
    // make it unusable.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

pub async fn run(config_path: &Path, detach_on_exit: bool) -> Result<(), RunError> {
    let config = Config::load(config_path)?;
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
    let daemon = match Daemon::start(config, counters.clone()) {
        Ok(mut daemon) => {
            daemon.restore_rollouts();
            daemon
        }
        Err(error) => {
            let _ = std::fs::remove_file(&socket_path);
            return Err(error.into());
        }
    };
    let shared: Shared = Arc::new(Mutex::new(daemon));
    let metrics = Arc::new(Metrics::new(&counters, Arc::clone(&shared)));
    let mut tasks = JoinSet::new();
    tasks.spawn(serve_control(
        control_listener,
        Arc::clone(&shared),
        config_path.to_owned(),
    ));
    tasks.spawn(serve_metrics(metrics_listener, metrics));
    tasks.spawn(probe_backends(Arc::clone(&shared)));
    tasks.spawn(run_rollouts(Arc::clone(&shared)));
    tasks.spawn(run_scheduled_drills(Arc::clone(&shared)));

    if let Err(error) = notify("READY=1") {
        tracing::warn!(error = %error, "cannot tell the service manager that the daemon is ready");
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
    let _ = std::fs::remove_file(&socket_path);
    if detach_on_exit {
        let removed = dataplane::detach(&pin_dir)?;
        tracing::info!(
            signal = signal_name,
            pins = removed.len(),
            "stopping; data plane detached (--detach-on-exit)"
        );
    } else {
        tracing::info!(signal = signal_name, pin_dir = %pin_dir.display(), "stopping; the data plane keeps running");
    }
    Ok(())
}

async fn serve_control(listener: UnixListener, shared: Shared, config_path: PathBuf) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            // Out of descriptors, say: back off instead of spinning the single-threaded runtime.
            tokio::time::sleep(ACCEPT_BACKOFF).await;
            continue;
        };
        let (shared, config_path) = (Arc::clone(&shared), config_path.clone());
        tokio::spawn(async move {
            let response = match http::read_request(&mut stream).await {
                Ok(request) if request.method == "POST" && request.path.starts_with(DRILLS) => {
                    let (service, query) = request.path[DRILLS.len()..]
                        .split_once('?')
                        .unwrap_or((&request.path[DRILLS.len()..], ""));
                    let kind = match query.split('&').find_map(|kv| kv.strip_prefix("kind=")) {
                        None | Some("rollback") => Some(DrillKind::Rollback),
                        Some("last_resort") => Some(DrillKind::LastResort),
                        Some(_) => None,
                    };
                    let Some(kind) = kind else {
                        let response = http::Response::error(
                            400,
                            "kind= is `rollback` (the default) or `last_resort`",
                        );
                        let _ = http::write_response(&mut stream, &response).await;
                        return;
                    };
                    match drill(&shared, service, kind, Trigger::Operator).await {
                        Ok(report) => http::Response::json(
                            200,
                            &serde_json::to_value(report).unwrap_or_default(),
                        ),
                        Err(error) => control::rollout_error(error),
                    }
                }
                Ok(request) => control::handle(&request, &mut lock(&shared), &config_path),
                Err(error) => http::Response::error(error.status(), &error.to_string()),
            };
            let _ = http::write_response(&mut stream, &response).await;
        });
    }
}

/// `POST /v1/drills/SERVICE[?kind=last_resort]`: the one control request that takes time, so
/// it is served here, taking the daemon's lock only for each step.
const DRILLS: &str = "/v1/drills/";

/// Runs a drill of `service` to its end.
async fn drill(
    shared: &Shared,
    service: &str,
    kind: DrillKind,
    trigger: Trigger,
) -> Result<DrillReport, RolloutError> {
    let begun = match kind {
        DrillKind::Rollback => lock(shared).begin_drill(service, trigger),
        DrillKind::LastResort => lock(shared).begin_last_resort_drill(service, trigger),
    };
    let mut drill = begun?;
    let deadline = tokio::time::Instant::now() + DRILL_LIMIT;
    while tokio::time::Instant::now() < deadline {
        match lock(shared).watch_drill(&mut drill) {
            Ok(super::drills::Watch::Continue) => {}
            Ok(super::drills::Watch::Done) => break,
            Err(error) => {
                tracing::warn!(error = %error, "drill: cannot read the counters");
                break;
            }
        }
        tokio::time::sleep(DRILL_POLL).await;
    }
    lock(shared).end_drill(drill)
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
            let _ = drill(&shared, &service, DrillKind::Rollback, Trigger::Schedule).await;
        }
    }
}

async fn serve_metrics(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            // Out of descriptors, say: back off instead of spinning the single-threaded runtime.
            tokio::time::sleep(ACCEPT_BACKOFF).await;
            continue;
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let response = match http::read_request(&mut stream).await {
                Ok(request) => metrics_response(&request, &metrics),
                Err(error) => http::Response::error(error.status(), &error.to_string()),
            };
            let _ = http::write_response(&mut stream, &response).await;
        });
    }
}

fn metrics_response(request: &http::Request, metrics: &Metrics) -> http::Response {
    match (
        request.method.as_str(),
        request.path.split('?').next().unwrap_or_default(),
    ) {
        ("GET", "/metrics") => match metrics.encode() {
            Ok(text) => http::Response {
                status: 200,
                content_type: metrics::CONTENT_TYPE,
                body: text.into_bytes(),
            },
            Err(_) => http::Response::error(500, "cannot encode the metrics"),
        },
        (_, "/metrics") => {
            http::Response::error(405, "the metrics endpoint is read-only: GET /metrics")
        }
        _ => http::Response::error(404, "only GET /metrics is served here"),
    }
}

/// How often rollouts are looked at (each is judged at its own interval).
const ROLLOUT_TICK: std::time::Duration = std::time::Duration::from_millis(50);

/// Judges rollouts as their intervals come round, each in its own task (PromQL queries take
/// time), and times the first connection after a rollback.
async fn run_rollouts(shared: Shared) {
    // An evaluation that rolled back wakes the loop at once, so that the watch for the first
    // new connection starts polling right after the write, not at the next tick.
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
        // After a rollback, its first connection on the live pool is timed to the millisecond.
        let watching = lock(&shared).check_first_connections();
        if watching {
            tokio::time::sleep(DRILL_POLL).await;
        } else {
            tokio::select! {
                () = tokio::time::sleep_until(next_tick) => {}
                () = evaluated.notified() => {}
            }
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
