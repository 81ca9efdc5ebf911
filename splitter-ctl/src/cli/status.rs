//! `splitter-ctl status [SERVICE] [--output json]`: from the daemon when it runs (with backend
//! health), otherwise straight from the pinned maps.

use std::path::Path;

use super::client;
use super::{CommandError, Target};
use crate::{model::config::Config, store::journal::Journal, view::status};

pub fn run(config_path: &Path, service: Option<&str>, json: bool) -> Result<String, CommandError> {
    let config = Config::load(config_path)?;
    let status = if client::daemon_listening(&config.control_socket) {
        from_daemon(&config, service)?
    } else {
        let target = Target::open(config_path)?;
        if let Some(name) = service {
            target.service(name)?;
        }
        let mut status = status::gather(&target.maps, &target.config, None, None, None, service)?;
        // Read only a journal that exists: a status never creates one.
        let path = target.config.state_dir.join(crate::store::journal::FILE);
        if path.exists()
            && let Ok(journal) = Journal::open(&target.config.state_dir)
        {
            status::add_previous(&mut status, &target.config, &journal);
        }
        status
    };
    if json {
        Ok(serde_json::to_string_pretty(&status)? + "\n")
    } else {
        Ok(status::render(&status))
    }
}

fn from_daemon(config: &Config, service: Option<&str>) -> Result<status::Status, CommandError> {
    let path = service.map_or_else(
        || "/v1/status".to_owned(),
        |name| format!("/v1/status?service={name}"),
    );
    let (code, body) = client::unix_request(
        &config.control_socket,
        "GET",
        &path,
        b"",
        super::reload::TIMEOUT,
    )
    .map_err(|e| CommandError::Daemon(client::not_running(&config.control_socket, &e)))?;
    if code != 200 {
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        return Err(CommandError::Daemon(
            value["error"]
                .as_str()
                .unwrap_or("the daemon refused the request")
                .to_owned(),
        ));
    }
    Ok(serde_json::from_slice(&body)?)
}
