//! `splitter-ctl check`: validates the config file without applying it: every error a reload
//! would report for the file itself (not the daemon's state: a running rollout, keys that need
//! a restart).

use std::{collections::BTreeSet, path::Path};

use super::{CommandError, Output};
use crate::model::config::Config;

pub fn run(config_path: &Path, output: Output) -> Result<String, CommandError> {
    let checked = Config::load(config_path)?;
    let groups: BTreeSet<_> = checked
        .services
        .iter()
        .filter_map(|s| s.group.as_deref())
        .collect();
    Ok(match output {
        Output::Json => {
            let json = serde_json::json!({
                "config": config_path.display().to_string(),
                "valid": true,
                "services": checked.services.iter().map(|s| &s.name).collect::<Vec<_>>(),
                "release_groups": groups,
            });
            format!("{json:#}\n")
        }
        Output::Text => format!(
            "{}: valid; {} services, {} release groups\n",
            config_path.display(),
            checked.services.len(),
            groups.len()
        ),
    })
}
