//! One module per subcommand. Each takes what it needs and returns a typed error; `main`
//! prints errors once, with their causes.

pub mod client;
pub mod daemon;
pub mod detach;
pub mod history;
pub mod reload;
pub mod report;
pub mod rollout;
pub mod share;
pub mod status;
pub mod watch;

use std::path::Path;

use crate::{
    kernel::maps::{Maps, MapsError},
    model::config::{Config, ConfigError, ServiceSpec},
};
use splitter_common::Service;

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error("no service or release group `{name}` in `{config}`; it has: {known}")]
    UnknownService {
        name: String,
        config: String,
        known: String,
    },
    #[error(
        "service `{0}` is in the config but not in the data plane: the daemon has not applied it yet"
    )]
    NotApplied(String),
    #[error(transparent)]
    Share(#[from] crate::model::share::ShareError),
    #[error(transparent)]
    Dataplane(#[from] crate::kernel::dataplane::DataplaneError),
    #[error(transparent)]
    Apply(#[from] crate::kernel::apply::ApplyError),
    #[error(transparent)]
    Run(#[from] crate::daemon::runtime::RunError),
    #[error("{0}")]
    Daemon(String),
    #[error("the drill did not pass: {0}")]
    DrillNotPassed(String),
    #[error(
        "event {0} is not the start of a rollout; `splitter-ctl history` lists them (kind rollout_started)"
    )]
    NotARollout(i64),
    #[error("`{service}`: nothing to roll back: {why}")]
    NothingToRollBack { service: String, why: String },
    #[error(transparent)]
    Journal(#[from] crate::store::journal::JournalError),
    #[error("cannot encode the status as JSON")]
    Json(#[from] serde_json::Error),
    #[error("cannot {what}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// The config, the pinned maps, and one of its services with its kernel entry.
pub struct Target {
    pub config: Config,
    pub maps: Maps,
}

impl Target {
    pub fn open(config_path: &Path) -> Result<Self, CommandError> {
        let config = Config::load(config_path)?;
        let maps = Maps::open_pinned(&config.pin_dir)?;
        Ok(Self { config, maps })
    }

    /// The service `name`, or the first service of release group `name`.
    pub fn service(&self, name: &str) -> Result<(&ServiceSpec, Service), CommandError> {
        let spec = self
            .config
            .release(name)
            .map(|r| r.leader())
            .ok_or_else(|| CommandError::UnknownService {
                name: name.to_owned(),
                config: self.config.path.display().to_string(),
                known: self
                    .config
                    .services
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let service = self
            .maps
            .service(&spec.endpoint())?
            .ok_or_else(|| CommandError::NotApplied(name.to_owned()))?;
        Ok((spec, service))
    }
}
