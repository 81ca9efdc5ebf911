//! `splitter-ctl status [SERVICE] [--output json]`: from the daemon when it runs (with backend
//! health), otherwise straight from the pinned maps.

use std::path::Path;

use bytes::Bytes;
use hyper::Method;

use super::{CommandError, Output, Target, client};
use crate::{io::http::encode, model::config::Config, store::journal::Journal, view::status};

pub fn run(
    config_path: &Path,
    service: Option<&str>,
    output: Output,
) -> Result<String, CommandError> {
    let config = Config::load(config_path)?;
    let status = if client::daemon_listening(&config.control_socket) {
        from_daemon(config_path, service)?
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
    Ok(match output {
        Output::Json => serde_json::to_string_pretty(&status)? + "\n",
        Output::Text => status::render(&status),
    })
}

fn from_daemon(config_path: &Path, service: Option<&str>) -> Result<status::Status, CommandError> {
    let path = service.map_or_else(
        || "/v1/status".to_owned(),
        |name| format!("/v1/status?service={}", encode(name)),
    );
    let value = client::request(
        config_path,
        Method::GET,
        &path,
        Bytes::new(),
        client::TIMEOUT,
    )?;
    Ok(serde_json::from_value(value)?)
}
