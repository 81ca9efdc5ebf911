//! `splitter-ctl status [SERVICE] [--output json]`: from the daemon when it answers within a
//! second (with backend health), otherwise straight from the pinned maps, saying why. Like
//! `rollback`, it works with a config file that no longer validates (`locate`).

use std::{path::Path, time::Duration};

use bytes::Bytes;
use hyper::{Method, StatusCode};

use super::{
    CommandError, Output,
    client::{self, ClientError},
    locate::{Overrides, has_journal, locate},
};
use crate::{io::http::encode, model::error::chain, store::journal::Journal, view::status};

/// How long `status` waits for the daemon before it reads the pinned maps itself.
pub const DAEMON_TIMEOUT: Duration = Duration::from_secs(1);

pub fn run(
    config_path: &Path,
    overrides: &Overrides,
    service: Option<&str>,
    output: Output,
) -> Result<String, CommandError> {
    let located = locate(config_path, overrides)?;
    let path = service.map_or_else(
        || "/v1/status".to_owned(),
        |name| format!("/v1/status?service={}", encode(name)),
    );
    let socket = &located.config.control_socket;
    let why_not_daemon =
        match client::send(socket, Method::GET, &path, Bytes::new(), DAEMON_TIMEOUT) {
            Ok((StatusCode::OK, body)) => {
                let status: status::Status = serde_json::from_slice(&body)?;
                return render(&status, output);
            }
            Ok((_, body)) => {
                let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                return Err(CommandError::Daemon(
                    value["error"]
                        .as_str()
                        .unwrap_or("the daemon refused the request")
                        .to_owned(),
                ));
            }
            Err(ClientError::NoAnswer { .. }) => format!(
                "the daemon at {} does not answer within {} s",
                socket.display(),
                DAEMON_TIMEOUT.as_secs()
            ),
            Err(ClientError::NotRunning { .. }) => "the daemon is not running".to_owned(),
            Err(other) => chain(&other).to_string(),
        };
    eprintln!(
        "{why_not_daemon}: reading the pinned maps (no backend health); using {}",
        located.describe()
    );
    let maps = located.maps()?;
    if let Some(name) = service {
        located.release(name)?;
    }
    let mut status = status::gather(&maps, &located.config, None, None, None, service)?;
    // Read only a journal that exists: a status never creates one.
    if has_journal(located.state_dir())
        && let Ok(journal) = Journal::open(located.state_dir())
    {
        status::add_previous(&mut status, &located.config, &journal);
    }
    render(&status, output)
}

fn render(status: &status::Status, output: Output) -> Result<String, CommandError> {
    Ok(match output {
        Output::Json => serde_json::to_string_pretty(status)? + "\n",
        Output::Text => status::render(status),
    })
}
