//! `splitter-ctl detach`: detaches the programs and removes every pin.

use std::path::Path;

use super::CommandError;
use crate::{kernel::dataplane, model::config::Config};

/// Detaches the data plane of the config, or of `pin_dir` when given (for a config that no
/// longer parses). Says what it removed.
pub fn run(config: &Path, pin_dir: Option<&Path>) -> Result<String, CommandError> {
    let pin_dir = match pin_dir {
        Some(dir) => dir.to_owned(),
        None => Config::load(config)?.pin_dir,
    };
    let removed = dataplane::detach(&pin_dir)?;
    Ok(if removed.is_empty() {
        format!("nothing pinned at {}", pin_dir.display())
    } else {
        format!(
            "detached: removed {} pins from {}",
            removed.len(),
            pin_dir.display()
        )
    })
}
