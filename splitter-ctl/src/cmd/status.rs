//! `splitter-ctl status [SERVICE] [--output json]`.

use std::path::Path;

use super::{CommandError, Target};
use crate::status;

pub fn run(config: &Path, service: Option<&str>, json: bool) -> Result<String, CommandError> {
    let target = Target::open(config)?;
    if let Some(name) = service {
        target.service(name)?;
    }
    let status = status::gather(&target.maps, &target.config, service)?;
    if json {
        Ok(serde_json::to_string_pretty(&status)? + "\n")
    } else {
        Ok(status::render(&status))
    }
}
