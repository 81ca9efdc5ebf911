//! The command line: one module per subcommand over the library, with clap's definitions in
//! `args`. Each subcommand returns what to print or a typed error; `main` prints errors once,
//! with their causes, and turns them into the documented exit statuses.

mod args;
pub mod check;
pub mod client;
pub mod completions;
pub mod daemon;
pub mod detach;
pub mod drill;
pub mod history;
pub mod reload;
pub mod report;
pub mod review;
pub mod rollback;
pub mod rollout;
pub mod split;
pub mod status;
pub mod summary;
pub mod watch;
pub mod weight;

use std::{path::Path, process::ExitCode, time::Duration};

use clap::{Parser as _, ValueEnum};
use splitter_common::Service;

use self::args::{Cli, Command, LogFormat};
use crate::{
    kernel::maps::{Maps, MapsError},
    model::{
        config::{Config, ConfigError, ServiceSpec},
        error::chain,
    },
};

/// How a command prints what it found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// Exit status of a drill that ran but did not pass (failed or inconclusive).
const EXIT_DRILL_NOT_PASSED: u8 = 3;

/// Parses the command line, runs the subcommand, prints its error once with every cause.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(CommandError::DrillNotPassed(outcome)) => {
            eprintln!("the drill did not pass: {outcome}");
            ExitCode::from(EXIT_DRILL_NOT_PASSED)
        }
        Err(error) => {
            eprintln!("error: {}", chain(&error));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), CommandError> {
    let config = cli.config.as_path();
    match cli.command {
        Command::Daemon { detach_on_exit } => daemon::run(config, detach_on_exit),
        Command::Weight {
            service,
            version,
            percent,
        } => {
            weight::weight(config, &service, version.into(), &percent)?.print();
            Ok(())
        }
        Command::Rollback { service, wait_ms } => {
            let mut change = rollback::rollback(config, &service)?;
            change.print();
            if let Some(first) = change.first_connection.take()
                && wait_ms > 0
            {
                println!("{}", first.wait(Duration::from_millis(wait_ms)));
            }
            Ok(())
        }
        Command::History {
            service,
            limit,
            output,
        } => print(history::run(config, service.as_deref(), limit, output)),
        Command::Summary { days, output } => print(summary::run(config, days, output)),
        Command::Rollout { action } => {
            println!("{}", rollout::run(config, action)?.trim_end());
            Ok(())
        }
        Command::Drill {
            service,
            last_resort,
            output,
        } => {
            let drilled = drill::run(config, &service, last_resort, output)?;
            print!("{}", drilled.text);
            // A drill that did not pass is a finding: scripts and timers see it in the status.
            match drilled.not_passed {
                None => Ok(()),
                Some(outcome) => Err(CommandError::DrillNotPassed(outcome)),
            }
        }
        Command::Review { rollout_id, output } => print(review::run(config, rollout_id, output)),
        Command::Report { rollout_id, out } => {
            println!("{}", report::run(config, rollout_id, &out)?);
            Ok(())
        }
        Command::Completions { shell } => {
            completions::completions(shell);
            Ok(())
        }
        Command::Man => completions::man(),
        Command::Reload => {
            println!("{}", reload::run(config)?);
            Ok(())
        }
        Command::Watch {
            service,
            every_ms,
            once,
        } => watch::run(
            config,
            service.as_deref(),
            Duration::from_millis(every_ms.max(100)),
            once,
        ),
        Command::Check { output } => print(check::run(config, output)),
        Command::Status { service, output } => {
            print(status::run(config, service.as_deref(), output))
        }
        Command::Detach { pin_dir } => {
            println!("{}", detach::run(config, pin_dir.as_deref())?);
            Ok(())
        }
    }
}

/// Prints a command's text as it is (it ends with its own newline).
fn print(text: Result<String, CommandError>) -> Result<(), CommandError> {
    print!("{}", text?);
    Ok(())
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SPLITTER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

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
    #[error(transparent)]
    Client(#[from] client::ClientError),
    #[error(transparent)]
    Duration(#[from] args::DurationError),
    #[error(transparent)]
    Font(report::FontError),
    #[error("cannot draw the report: {0}")]
    Draw(String),
    #[error("`{}`: the report is written as .svg, .png or .html", .0.display())]
    ReportFormat(std::path::PathBuf),
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
