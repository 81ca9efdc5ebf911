//! Where the emergency commands (`rollback`, `weight`, `status`) find the data plane, the
//! state and the services, whatever the condition of the config file: a rollback at 3 a.m.
//! must not wait for someone to fix a typo. In order:
//!
//! 1. the config file, when it validates;
//! 2. the last config the daemon applied from that file (`store::applied`), when the file does
//!    not validate or cannot be read: it is what the data plane runs;
//! 3. the file read leniently (`model::config::lenient`): its paths, and each service that
//!    validates on its own;
//! 4. `--pin-dir` and `--state-dir` together, when nothing above can be read.
//!
//! `--pin-dir` and `--state-dir` override the paths in every case, and a service can be named
//! by its listen address when no config names it. Each command says what it used.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use splitter_common::{Endpoint, Service};

use super::CommandError;
use crate::{
    kernel::{maps::Maps, split_maps::SplitMaps},
    model::{
        config::{self, Config, ConfigError, Protocol, ServiceSpec, lenient},
        error::chain,
    },
    store::{applied, journal::now_ms},
};

/// Paths given on the command line, overriding the config's.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub pin_dir: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
}

impl Overrides {
    /// Whether any path was given.
    #[must_use]
    pub const fn any(&self) -> bool {
        self.pin_dir.is_some() || self.state_dir.is_some()
    }
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

/// What a command names: a service or release group the config knows, or a service known only
/// by its listen address.
#[derive(Debug)]
pub enum Target {
    /// A service or a release group (its name), and its services as the config has them.
    Named {
        release: String,
        members: Vec<ServiceSpec>,
    },
    /// A listen address no config names: enough to move its split word, nothing about its
    /// pools, its rollback window or its journal.
    Address(SocketAddr),
}

impl Target {
    /// The name the journal keeps the target's events under.
    #[must_use]
    pub fn journal_name(&self) -> String {
        match self {
            Self::Named { release, .. } => release.clone(),
            Self::Address(addr) => addr.to_string(),
        }
    }

    /// The keys of the target's services in `SERVICES`: a service known by its address may be
    /// TCP or UDP, so both are tried, TCP first.
    #[must_use]
    pub fn endpoints(&self) -> Vec<Endpoint> {
        match self {
            Self::Named { members, .. } => members.iter().map(ServiceSpec::endpoint).collect(),
            Self::Address(addr) => [Protocol::Tcp, Protocol::Udp]
                .into_iter()
                .map(|protocol| config::endpoint(*addr, protocol))
                .collect(),
        }
    }
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

/// A config for a file that does not validate: the daemon's record, the file read leniently
/// (when it can be read at all), or (with both `--pin-dir` and `--state-dir`) nothing but the
/// command line's paths.
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
    // A file that cannot be read has no paths to take leniently: its defaults could name
    // another data plane.
    if !matches!(problem, ConfigError::Read { .. })
        && let Ok(text) = std::fs::read_to_string(config_path)
        && let Ok(read) = lenient::read(config_path, &text)
    {
        let source = Source::Lenient {
            problem,
            skipped: read.skipped,
        };
        return Ok((read.config, source));
    }
    match (&overrides.pin_dir, &overrides.state_dir) {
        (Some(pin_dir), Some(state_dir)) => Ok((
            lenient::with_paths(config_path, pin_dir, state_dir)?,
            Source::Flags { problem },
        )),
        _ => Err(CommandError::Unlocated {
            config: config_path.to_owned(),
            record: applied::record_path(config_path),
            problem: Box::new(problem),
        }),
    }
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

    /// What `name` is: a service or release group of the config (by name, or by the listen
    /// address of one of its services), or a listen address no config names.
    pub fn target(&self, name: &str) -> Result<Target, CommandError> {
        let addr = name.parse::<SocketAddr>().ok();
        let release = self.config.release(name).or_else(|| {
            let listen = addr?;
            let service = self.config.services.iter().find(|s| s.listen == listen)?;
            self.config.release(&service.name)
        });
        if let Some(release) = release {
            return Ok(Target::Named {
                release: release.name.to_owned(),
                members: release.members.iter().map(|m| (*m).clone()).collect(),
            });
        }
        match addr {
            Some(addr) => Ok(Target::Address(addr)),
            None => Err(self.unknown(name)),
        }
    }

    fn unknown(&self, name: &str) -> CommandError {
        let skipped = match &self.source {
            Source::Lenient { skipped, .. } => skipped
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, why)| why.clone()),
            _ => None,
        };
        if let Some(why) = skipped {
            return CommandError::UnreadableService {
                name: name.to_owned(),
                why,
            };
        }
        let config = match &self.source {
            Source::Applied { record, .. } => {
                format!("the config the daemon last applied ({})", record.display())
            }
            Source::Flags { .. } => {
                "the command line, which names services by ADDRESS:PORT only".to_owned()
            }
            Source::File | Source::Lenient { .. } => format!("`{}`", self.config.path.display()),
        };
        CommandError::UnknownService {
            name: name.to_owned(),
            config,
            known: self
                .config
                .services
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    /// The pinned maps.
    pub fn maps(&self) -> Result<Maps, CommandError> {
        Ok(Maps::open_pinned(&self.config.pin_dir)?)
    }

    /// The pinned `SERVICES` and `SPLIT` alone: all a split-word write needs.
    pub fn split_maps(&self) -> Result<SplitMaps, CommandError> {
        Ok(SplitMaps::open_pinned(&self.config.pin_dir)?)
    }

    /// The kernel entry of `target`'s (first) service.
    pub fn kernel(&self, maps: &SplitMaps, target: &Target) -> Result<Service, CommandError> {
        for endpoint in target.endpoints() {
            if let Some(service) = maps.service(&endpoint)? {
                return Ok(service);
            }
            // A release group's word is its first service's; the others share it.
            if matches!(target, Target::Named { .. }) {
                break;
            }
        }
        Err(CommandError::NotApplied(target.journal_name()))
    }

    /// Where the journal is.
    #[must_use]
    pub fn state_dir(&self) -> &Path {
        &self.config.state_dir
    }
}
