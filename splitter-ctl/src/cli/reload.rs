//! `splitter-ctl reload`: asks the running daemon to re-read its config (as SIGHUP does), and
//! prints what changed or why nothing did.

use std::path::Path;

use bytes::Bytes;
use hyper::Method;

use super::{CommandError, client};

pub fn run(config_path: &Path) -> Result<String, CommandError> {
    let value = client::request(
        config_path,
        Method::POST,
        "/v1/reload",
        Bytes::new(),
        client::TIMEOUT,
    )
    .map_err(|error| match error {
        CommandError::Daemon(message) => {
            CommandError::Daemon(format!("reload refused, nothing changed: {message}"))
        }
        other => other,
    })?;
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
