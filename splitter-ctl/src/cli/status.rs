//! `splitter-ctl status [SERVICE] [--output json]`: from the daemon when it answers within a
//! second (with backend health), otherwise straight from the pinned maps, saying why. Like
//! `rollback`, it works with a config file that no longer validates (`locate`).

use std::{path::Path, time::Duration};

use bytes::Bytes;
use hyper::{Method, StatusCode};

use super::{
    CommandError, Output,
    client::{self, ClientError},
    locate::{Overrides, locate},
};
use crate::{
    io::http::encode,
    model::error::chain,
    store::journal::{self, Journal},
    view::{fleet::FleetView, status},
};

/// How long `status` waits for the daemon before it reads the pinned maps itself.
pub const DAEMON_TIMEOUT: Duration = Duration::from_secs(1);

pub fn run(
    config_path: &Path,
    overrides: &Overrides,
    service: Option<&str>,
    output: Output,
    local: bool,
) -> Result<String, CommandError> {
    let located = locate(config_path, overrides)?;
    // In fleet mode, every node as etcd has it, after this node's own status; a fleet that
    // cannot be read is said, and this node's status shown all the same.
    let fleet = located
        .config
        .fleet
        .as_ref()
        .filter(|_| !local)
        .map(|fleet| super::fleet::status(fleet).map_err(|e| chain(&e).to_string()));
    let render = |status: &status::Status, output| render(status, fleet.as_ref(), output);
    let path = service.map_or_else(
        || "/v1/status".to_owned(),
        |name| format!("/v1/status?service={}", encode(name)),
    );
    let socket = &located.config.control_socket;
    // Paths on the command line name a data plane of their own: the daemon's is not asked.
    let answer = if overrides.any() {
        Err(None)
    } else {
        client::send(socket, Method::GET, &path, Bytes::new(), DAEMON_TIMEOUT).map_err(Some)
    };
    let why_not_daemon = match answer {
        Ok((StatusCode::OK, body)) => {
            let status: status::Status = serde_json::from_slice(&body)?;
            eprintln!("using the daemon's status; {}", located.describe());
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
        Err(None) => "--pin-dir or --state-dir given".to_owned(),
        Err(Some(ClientError::NoAnswer { .. })) => format!(
            "the daemon at {} does not answer within {} s",
            socket.display(),
            DAEMON_TIMEOUT.as_secs()
        ),
        Err(Some(ClientError::NotRunning { .. })) => "the daemon is not running".to_owned(),
        Err(Some(other)) => chain(&other).to_string(),
    };
    eprintln!(
        "{why_not_daemon}: reading the pinned maps (no backend health); using {}",
        located.describe()
    );
    let maps = located.maps()?;
    if let Some(name) = service {
        located.target(name)?;
    }
    let mut status = status::gather(&maps, &located.config, None, None, None, service)?;
    // Read only a journal that exists: a status never creates one.
    if journal::exists(located.state_dir())
        && let Ok(journal) = Journal::open(located.state_dir())
    {
        status::add_previous(&mut status, &located.config, &journal);
    }
    render(&status, output)
}

fn render(
    status: &status::Status,
    fleet: Option<&Result<FleetView, String>>,
    output: Output,
) -> Result<String, CommandError> {
    Ok(match output {
        Output::Json => {
            let mut value = serde_json::to_value(status)?;
            if let Some(fleet) = fleet {
                value["fleet"] = match fleet {
                    Ok(view) => serde_json::to_value(view)?,
                    Err(why) => serde_json::json!({ "error": why }),
                };
            }
            serde_json::to_string_pretty(&value)? + "\n"
        }
        Output::Text => {
            let mut text = status::render(status);
            match fleet {
                None => {}
                Some(Ok(view)) => text.push_str(&view.render(journal::now_ms())),
                Some(Err(why)) => text.push_str(&format!("fleet: cannot be read: {why}\n")),
            }
            text
        }
    })
}
