//! Where the emergency commands (`rollback`, `weight`, `status`) find the data plane, the
//! state and the services, whatever the condition of the config file: a rollback at 3 a.m.
//! must not wait for someone to fix a typo. In order:
//!
//! 1. the config file, when it validates;
//! 2. the last config the daemon applied from that file (`store::applied`), when the file does
//!    not validate: it is what the data plane runs;
//! 3. the file read leniently (`model::config::lenient`): its paths, and each service that
//!    validates on its own;
//!
//! `--pin-dir` and `--state-dir` override the paths in every case, and a service can be named
//! by its listen address when no config names it. Each command says what it used.

use std::path::{Path, PathBuf};

use splitter_common::Service;

use super::CommandError;
use crate::{
    kernel::maps::Maps,
    model::{
        config::{Config, ConfigError, ServiceSpec, lenient},
        error::chain,
        plan::PlanRequest,
    },
    store::{
        applied,
        journal::{self, now_ms},
    },
};

/// Paths given on the command line, overriding the config's.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub pin_dir: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
}

/// Where the config the command works with came from.
#[derive(Debug)]
pub enum Source {
    /// The config file, which validates.
    File,
    /// The daemon's record of the config it last applied; the file does not validate.
    Applied {
        record: PathBuf,
        at_ms: i64,
        problem: ConfigError,
    },
    /// The file read leniently; it does not validate, and the daemon left no record.
    Lenient {
        problem: ConfigError,
        skipped: Vec<(String, String)>,
    },
    /// Nothing readable: the paths from the command line, the services by their addresses.
    Flags { problem: ConfigError },
}

/// The config an emergency command works with, and where it came from.
#[derive(Debug)]
pub struct Located {
    pub config: Config,
    pub source: Source,
}

/// Finds the config for an emergency command (see the module's documentation).
pub fn locate(config_path: &Path, overrides: &Overrides) -> Result<Located, CommandError> {
    let (mut config, source) = match Config::read(config_path) {
        Ok((config, _)) => (config, Source::File),
        Err(problem) => from_elsewhere(config_path, overrides, problem)?,
    };
    if let Some(pin_dir) = &overrides.pin_dir {
        config.pin_dir.clone_from(pin_dir);
    }
    if let Some(state_dir) = &overrides.state_dir {
        config.state_dir.clone_from(state_dir);
    }
    Ok(Located { config, source })
}

/// A config for a file that does not validate: the daemon's record, the file read leniently,
/// or (with `--pin-dir`) nothing but the command line's paths.
fn from_elsewhere(
    config_path: &Path,
    overrides: &Overrides,
    problem: ConfigError,
) -> Result<(Config, Source), CommandError> {
    if let Ok(Some(recorded)) = applied::read(config_path)
        && let Ok(config) = Config::parse(config_path, &recorded.text)
    {
        let source = Source::Applied {
            record: recorded.path,
            at_ms: recorded.at_ms,
            problem,
        };
        return Ok((config, source));
    }
    let text = std::fs::read_to_string(config_path).unwrap_or_default();
    if let Ok(read) = lenient::read(config_path, &text) {
        let source = Source::Lenient {
            problem,
            skipped: read.skipped,
        };
        return Ok((read.config, source));
    }
    if overrides.pin_dir.is_some() {
        let config = lenient::read(config_path, "")?.config;
        return Ok((config, Source::Flags { problem }));
    }
    Err(CommandError::Unlocated {
        config: config_path.to_owned(),
        record: applied::record_path(config_path),
        problem: Box::new(problem),
    })
}

impl Located {
    /// One line saying which pins and state the command uses, and why those.
    #[must_use]
    pub fn describe(&self) -> String {
        let paths = format!(
            "pins {}, state {}",
            self.config.pin_dir.display(),
            self.config.state_dir.display()
        );
        match &self.source {
            Source::File => format!("{paths} (from {})", self.config.path.display()),
            Source::Applied {
                record,
                at_ms,
                problem,
            } => format!(
                "{paths} (from the config the daemon last applied, recorded in {} {} s ago: the file does not validate: {})",
                record.display(),
                (now_ms() - at_ms).max(0) / 1_000,
                chain(problem)
            ),
            Source::Lenient { problem, skipped } => {
                let left_out = if skipped.is_empty() {
                    String::new()
                } else {
                    let names: Vec<&str> = skipped.iter().map(|(n, _)| n.as_str()).collect();
                    format!("; left out: {}", names.join(", "))
                };
                format!(
                    "{paths} (from {}, read leniently: it does not validate: {}{left_out})",
                    self.config.path.display(),
                    chain(problem)
                )
            }
            Source::Flags { problem } => format!(
                "{paths} (from the command line: the config cannot be read: {})",
                chain(problem)
            ),
        }
    }

    /// The release `name` (a service, a release group, or a service's listen address when no
    /// config names it) and its services as the config has them.
    pub fn release(&self, name: &str) -> Result<(String, Vec<ServiceSpec>), CommandError> {
        if let Some(release) = self.config.release(name) {
            let members = release.members.iter().map(|m| (*m).clone()).collect();
            return Ok((release.name.to_owned(), members));
        }
        if let Ok(listen) = name.parse::<std::net::SocketAddr>() {
            // Known by its address only: enough to move its split word, nothing about its pools
            // (a rollback to a previous version is refused, having no pool to check).
            return Ok((name.to_owned(), vec![by_address(listen)]));
        }
        Err(self.unknown(name))
    }

    fn unknown(&self, name: &str) -> CommandError {
        let skipped = match &self.source {
            Source::Lenient { skipped, .. } => skipped
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, why)| why.clone()),
            _ => None,
        };
        match skipped {
            Some(why) => CommandError::UnreadableService {
                name: name.to_owned(),
                why,
            },
            None => CommandError::UnknownService {
                name: name.to_owned(),
                config: self.config.path.display().to_string(),
                known: self
                    .config
                    .services
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            },
        }
    }

    /// The pinned maps.
    pub fn maps(&self) -> Result<Maps, CommandError> {
        Ok(Maps::open_pinned(&self.config.pin_dir)?)
    }

    /// The kernel entry of `spec`.
    pub fn kernel(&self, maps: &Maps, spec: &ServiceSpec) -> Result<Service, CommandError> {
        maps.service(&spec.endpoint())?
            .ok_or_else(|| CommandError::NotApplied(spec.name.clone()))
    }

    /// Where the journal is.
    #[must_use]
    pub fn state_dir(&self) -> &Path {
        &self.config.state_dir
    }
}

/// A TCP service known by its listen address only.
fn by_address(listen: std::net::SocketAddr) -> ServiceSpec {
    ServiceSpec {
        name: listen.to_string(),
        listen,
        protocol: crate::model::config::Protocol::Tcp,
        live: splitter_common::Version::Blue,
        blue: Vec::new(),
        green: Vec::new(),
        green_share_bp: 0,
        health: None,
        rollout: PlanRequest::default(),
        rollback_window: crate::model::config::DEFAULT_ROLLBACK_WINDOW,
        client_affinity: false,
        always_candidate: Vec::new(),
        never_candidate: Vec::new(),
        drill_every: None,
        group: None,
        last_resort: Vec::new(),
        client_prefixes: crate::model::config::PrefixLengths::default(),
    }
}

/// Whether `journal::FILE` exists in `state_dir` (reading a status never creates a journal).
#[must_use]
pub fn has_journal(state_dir: &Path) -> bool {
    state_dir.join(journal::FILE).exists()
}
