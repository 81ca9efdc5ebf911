//! The control socket: HTTP/JSON on a Unix socket, owned by root with mode 0660 and the
//! configured group. There is no TCP control port. The API (documented in docs/operations.md):
//!
//! | method and path | does |
//! |---|---|
//! | `GET /v1/status` (`?service=NAME`) | the status, with backend health |
//! | `POST /v1/reload` | re-reads the config file, validates all of it, applies the difference |
//! | `GET /v1/rollouts/SERVICE` | the rollout in progress |
//! | `POST /v1/rollouts/SERVICE/start` | starts a rollout (body: a plan; every field optional) |
//! | `POST /v1/rollouts/SERVICE/{pause,resume,promote,abort}` | operates it |
//! | `POST /v1/drills/SERVICE` (`?kind=last_resort`) | runs a drill to its end |

use std::{io, os::unix::fs::PermissionsExt as _, path::Path};

use tokio::net::UnixListener;

use hyper::Method;

use super::{
    Daemon, Shared,
    drain::DrainError,
    drains::DrainRequestError,
    drills,
    http::{Request, Response},
    lock,
    rollouts::RolloutError,
};
use crate::{
    engine::drill::DrillKind,
    io::users,
    model::actor::Actor,
    model::error::chain,
    model::{config::ControlGroup, plan::PlanRequest},
    view::drain::{DrainJournal, DrainRequest},
    view::rollout::RolloutCommand,
};

/// Why the control socket cannot be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("another daemon answers on the control socket `{0}`; stop it first")]
    AlreadyRunning(String),
    #[error("cannot {what}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Mode of the socket: read and write for root and the control group, nothing for others.
pub const SOCKET_MODE: u32 = 0o660;

/// Binds the control socket. A socket file left by a daemon that is gone is replaced; one that
/// a running daemon still answers on is an error.
pub fn bind(path: &Path, group: Option<&ControlGroup>) -> Result<UnixListener, BindError> {
    let io_error = |what, source| BindError::Io { what, source };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| io_error("create the control socket's directory", e))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(BindError::AlreadyRunning(path.display().to_string()));
        }
        std::fs::remove_file(path).map_err(|e| io_error("remove a stale control socket", e))?;
    }
    // No moment with a socket others could use: bind under a umask that leaves only 0660.
    // SAFETY: umask only swaps the process's file mode mask.
    let previous = unsafe { libc::umask(0o117) };
    let listener = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(previous) };
    let listener = listener.map_err(|e| io_error("bind the control socket", e))?;
    let gid = group.map_or(0, |g| g.gid);
    std::os::unix::fs::chown(path, Some(0), Some(gid))
        .map_err(|e| io_error("set the control socket's owner", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
        .map_err(|e| io_error("set the control socket's mode", e))?;
    Ok(listener)
}

/// `POST /v1/drills/SERVICE[?kind=last_resort]`: the one control request that takes time; it
/// takes the daemon's lock only for each of its steps.
const DRILLS: &str = "/v1/drills/";

/// `POST /v1/drains/SERVICE` (body: a `DrainRequest`), `GET /v1/drains`,
/// `PUT /v1/drains/SERVICE/journal` (body: a `DrainJournal`).
const DRAINS: &str = "/v1/drains/";
const DRAIN_JOURNAL: &str = "/journal";

/// Who is at the other end of a control connection (SO_PEERCRED).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub pid: Option<i32>,
}

impl Peer {
    /// A peer whose credentials could not be read: treated as the least privileged.
    pub const UNKNOWN: Self = Self {
        uid: u32::MAX,
        pid: None,
    };

    const fn is_root(self) -> bool {
        self.uid == 0
    }

    /// The operator at the other end, for the journal: the person behind its process (its
    /// login uid survives sudo), else its uid.
    fn actor(self) -> Actor {
        let uid = (self.uid != Self::UNKNOWN.uid).then_some(self.uid);
        users::peer(uid, self.pid)
    }
}

/// Answers one request of the control API from `peer`.
pub async fn answer(shared: &Shared, config_path: &Path, peer: Peer, request: Request) -> Response {
    if let Some(rest) = request.path.strip_prefix(DRILLS)
        && request.method == Method::POST
    {
        let (service, query) = rest.split_once('?').unwrap_or((rest, ""));
        let kind = match query.split('&').find_map(|kv| kv.strip_prefix("kind=")) {
            None | Some("rollback") => DrillKind::Rollback,
            Some("last_resort") => DrillKind::LastResort,
            Some(_) => {
                return Response::error(400, "kind= is `rollback` (the default) or `last_resort`");
            }
        };
        // In a task of its own: a client that goes away must not cancel a drill halfway, with
        // the share at zero or the pools emptied.
        let (shared, service) = (std::sync::Arc::clone(shared), service.to_owned());
        let drill =
            tokio::spawn(async move { drills::run(&shared, &service, kind, peer.actor()).await });
        return match drill.await {
            Ok(Ok(report)) => {
                Response::json(200, &serde_json::to_value(report).unwrap_or_default())
            }
            Ok(Err(error)) => rollout_error(error),
            Err(_) => Response::error(500, "the drill's task ended before its report"),
        };
    }
    handle(&request, &mut lock(shared), config_path, peer)
}

/// Answers a request that is done under one lock of the daemon.
fn handle(request: &Request, daemon: &mut Daemon, config_path: &Path, peer: Peer) -> Response {
    let (path, query) = request
        .path
        .split_once('?')
        .unwrap_or((request.path.as_str(), ""));
    match (request.method.as_str(), path) {
        ("GET", "/v1/status") => {
            let service = query.split('&').find_map(|kv| kv.strip_prefix("service="));
            if let Some(name) = service
                && daemon.config.release(name).is_none()
            {
                return Response::error(
                    404,
                    &format!("no service or release group `{name}` in the running config"),
                );
            }
            match daemon.status(service) {
                Ok(status) => {
                    Response::json(200, &serde_json::to_value(status).unwrap_or_default())
                }
                Err(error) => Response::error(500, &chain(&error).to_string()),
            }
        }
        ("POST", "/v1/reload") => match daemon.reload(config_path) {
            Ok(applied) => Response::json(
                200,
                &serde_json::json!({
                    "reloaded": true,
                    "added": applied.added,
                    "kept": applied.kept,
                    "removed": applied.removed,
                    "purged_flows": applied.purged_flows,
                }),
            ),
            Err(error) => Response::error(422, &chain(&error).to_string()),
        },
        (_, "/v1/status" | "/v1/reload") => Response::error(405, "GET /v1/status, POST /v1/reload"),
        ("GET", "/v1/drains") => Response::json(
            200,
            &serde_json::to_value(daemon.drain_reports()).unwrap_or_default(),
        ),
        ("PUT", path) if path.starts_with(DRAINS) => {
            let Some(name) = path
                .strip_prefix(DRAINS)
                .and_then(|rest| rest.strip_suffix(DRAIN_JOURNAL))
                .filter(|name| !name.is_empty())
            else {
                return Response::error(404, "PUT /v1/drains/SERVICE/journal");
            };
            match serde_json::from_slice::<DrainJournal>(&request.body) {
                Err(e) => Response::error(
                    400,
                    &format!("the body is not a drain's journal entry for this API: {e}"),
                ),
                Ok(attach) if daemon.attach_drain_event(name, &attach) => {
                    Response::json(200, &serde_json::json!({ "attached": attach.event }))
                }
                Ok(attach) => Response::error(
                    404,
                    &format!(
                        "no drain of {name}'s {} decided at {} ns",
                        attach.version, attach.decided_monotonic_ns
                    ),
                ),
            }
        }
        ("POST", path) if path.starts_with(DRAINS) => {
            let name = &path[DRAINS.len()..];
            let drain: DrainRequest = match serde_json::from_slice(&request.body) {
                Ok(drain) => drain,
                Err(e) => {
                    return Response::error(
                        400,
                        &format!("the body is not a drain request for this API: {e}"),
                    );
                }
            };
            match daemon.drain_request(name, &drain) {
                Ok(report) => {
                    Response::json(202, &serde_json::to_value(report).unwrap_or_default())
                }
                Err(DrainRequestError::Release(error)) => rollout_error(error),
                Err(error @ DrainRequestError::Drain(DrainError::Sockets(_))) => {
                    Response::error(500, &chain(&error).to_string())
                }
                Err(error) => Response::error(422, &chain(&error).to_string()),
            }
        }
        (method, path) if path.starts_with("/v1/rollouts/") => rollout(
            method,
            &path["/v1/rollouts/".len()..],
            &request.body,
            daemon,
            peer,
        ),
        _ => Response::error(
            404,
            &format!("no endpoint `{path}`; the API has GET /v1/status and POST /v1/reload"),
        ),
    }
}

/// The answer to a refused rollout or drill request.
fn rollout_error(e: RolloutError) -> Response {
    use RolloutError as E;
    let status = match e {
        E::UnknownService(_) | E::NotRunning(_) => 404,
        E::AlreadyRunning(_)
        | E::RolloutRunning(_)
        | E::NothingToDrill(_)
        | E::NoLastResort(_)
        | E::UnhealthyLastResort(_)
        | E::UnhealthyLive(..) => 409,
        E::Maps(_) => 500,
        E::NotApplied(_)
        | E::Plan(_)
        | E::Prometheus(_)
        | E::EmptyCandidate(..)
        | E::Blind(_)
        | E::GroupHasNoPools(..) => 422,
    };
    Response::error(status, &chain(&e).to_string())
}

/// `GET /v1/rollouts/SERVICE`, `POST /v1/rollouts/SERVICE/start` (body: a plan, every field
/// optional) and `POST /v1/rollouts/SERVICE/{pause,resume,promote,abort}`.
fn rollout(method: &str, rest: &str, body: &[u8], daemon: &mut Daemon, peer: Peer) -> Response {
    let error = rollout_error;
    let usage = || {
        Response::error(
            405,
            "GET /v1/rollouts/SERVICE, POST /v1/rollouts/SERVICE/{start,pause,resume,promote,abort}",
        )
    };
    let (service, action) = rest.split_once('/').unwrap_or((rest, ""));
    match (method, action) {
        ("GET", "") => daemon.rollout_status(service).map_or_else(error, |s| {
            Response::json(200, &serde_json::to_value(s).unwrap_or_default())
        }),
        ("POST", "start") => {
            let request: PlanRequest = if body.is_empty() {
                PlanRequest::default()
            } else {
                match serde_json::from_slice(body) {
                    Ok(request) => request,
                    Err(e) => {
                        return Response::error(
                            400,
                            &format!("the plan is not valid JSON for this API: {e}"),
                        );
                    }
                }
            };
            let files = request.file_keys();
            if !peer.is_root() && !files.is_empty() {
                // The daemon reads these as root: the control group must not make it read,
                // and send elsewhere, files its members cannot read themselves.
                return Response::error(
                    403,
                    &format!(
                        "only root may name files for the daemon to read ({}); put them in the \
                         config's [service.rollout]",
                        files.join(", ")
                    ),
                );
            }
            daemon
                .start_rollout(service, request, peer.actor())
                .map_or_else(error, |s| {
                    Response::json(200, &serde_json::to_value(s).unwrap_or_default())
                })
        }
        ("POST", action) => match RolloutCommand::parse(action) {
            Some(command) => daemon
                .rollout_command(service, command, peer.actor())
                .map_or_else(error, |done| {
                    Response::json(200, &serde_json::json!({ "done": done }))
                }),
            None => usage(),
        },
        _ => usage(),
    }
}
