//! The CLI's side of the control API: one request to the daemon over its Unix socket (through
//! `io::http`, on a small runtime of its own), the answer as JSON, and what to say when no
//! daemon answers.

use std::{path::Path, sync::OnceLock, time::Duration};

use bytes::Bytes;
use hyper::{Method, StatusCode};

use super::CommandError;
use crate::{
    io::http::{self, HttpError},
    model::config,
};

/// How long the CLI waits for the daemon's answer.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer the CLI reads from the daemon.
const MAX_ANSWER: usize = 16 * 1024 * 1024;

/// Why the daemon gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the daemon is not running: cannot connect to `{socket}`")]
    NotRunning {
        socket: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "permission denied on the control socket `{0}`: it is for root and the config's `control_group`"
    )]
    PermissionDenied(String),
    #[error("the daemon at `{socket}` did not answer")]
    NoAnswer {
        socket: String,
        #[source]
        source: HttpError,
    },
    #[error("cannot start the client's runtime")]
    Runtime(#[source] std::io::Error),
    #[error("the request cannot be written")]
    BadRequest(#[source] hyper::http::Error),
}

/// The CLI's one small runtime for its requests (to the daemon, to etcd), made at the first
/// (a `watch` frame sends several).
pub(super) fn runtime() -> Result<&'static tokio::runtime::Runtime, ClientError> {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    if let Some(runtime) = RUNTIME.get() {
        return Ok(runtime);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ClientError::Runtime)?;
    Ok(RUNTIME.get_or_init(|| runtime))
}

/// Sends one request to the daemon listening on `socket`; its status and body.
pub fn send(
    socket: &Path,
    method: Method,
    path: &str,
    body: Bytes,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), ClientError> {
    let answer = runtime()?.block_on(http::within(
        timeout,
        http::unix(socket, method, path, body, MAX_ANSWER),
    ));
    let shown = socket.display().to_string();
    match answer {
        Ok(answer) => Ok((answer.status, answer.body)),
        Err(HttpError::Connect(_, source))
            if source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            Err(ClientError::PermissionDenied(shown))
        }
        Err(HttpError::Connect(_, source)) => Err(ClientError::NotRunning {
            socket: shown,
            source,
        }),
        Err(HttpError::Request(source)) => Err(ClientError::BadRequest(source)),
        Err(source) => Err(ClientError::NoAnswer {
            socket: shown,
            source,
        }),
    }
}

/// Sends one request to the daemon of the config at `config_path` (its socket read leniently,
/// so a file that no longer validates still reaches the daemon, which says what is wrong). The
/// answer's JSON; a refusal is the daemon's message.
pub fn request(
    config_path: &Path,
    method: Method,
    path: &str,
    body: Bytes,
    timeout: Duration,
) -> Result<serde_json::Value, CommandError> {
    let socket = config::control_socket_of(config_path);
    let (status, body) = send(&socket, method, path, body, timeout)?;
    if status != StatusCode::OK {
        // The daemon's refusals are `{"error": ...}`; the HTTP layer's own (a malformed
        // request) may have no body at all.
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        return Err(CommandError::Daemon(value["error"].as_str().map_or_else(
            || format!("the daemon refused the request ({status})"),
            str::to_owned,
        )));
    }
    Ok(serde_json::from_slice(&body)?)
}

/// Whether a daemon answers on `path`.
#[must_use]
pub fn daemon_listening(path: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(path).is_ok()
}
