//! `splitter-ctl reload`: asks the running daemon to re-read its config (as SIGHUP does), and
//! prints what changed or why nothing did.

use std::{path::Path, time::Duration};

use super::CommandError;
use super::client;
use crate::model::config;

/// How long the CLI waits for the daemon.
pub const TIMEOUT: Duration = Duration::from_secs(10);

pub fn run(config_path: &Path) -> Result<String, CommandError> {
    let socket = config::control_socket_of(config_path);
    let (status, body) = client::unix_request(&socket, "POST", "/v1/reload", b"", TIMEOUT)
        .map_err(|e| CommandError::Daemon(client::not_running(&socket, &e)))?;
    let value: serde_json::Value = serde_json::from_slice(&body)?;
    if status != 200 {
        let message = value["error"]
            .as_str()
            .unwrap_or("the daemon refused the reload");
        return Err(CommandError::Daemon(format!(
            "reload refused, nothing changed: {message}"
        )));
    }
    let list = |key: &str| {
        value[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    Ok(format!(
        "reloaded: added [{}], kept [{}], removed [{}]",
        list("added"),
        list("kept"),
        list("removed")
    ))
}
