//! The command line: one module per subcommand over the library, with clap's definitions in
//! `args`. Each subcommand returns what to print or a typed error; `main` prints errors once,
//! with their causes, and turns them into the documented exit statuses.

mod args;
pub mod check;
pub mod client;
pub mod completions;
pub mod daemon;
pub mod detach;
pub mod drain;
pub mod drill;
pub mod fleet;
mod fleet_drill;
mod fleet_rollout;
pub mod history;
pub mod locate;
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

use std::{process::ExitCode, time::Duration};

use clap::{Parser as _, ValueEnum};

use self::args::{Cli, Command, LogFormat};
use crate::{
    kernel::maps::MapsError,
    model::{config::ConfigError, error::chain},
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
        // A reader that went away (`splitter-ctl man | head`) is not an error of the command.
        Err(CommandError::StdoutClosed) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", chain(&error));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), CommandError> {
    let config = cli.config.as_path();
    match cli.command {
        Command::Daemon {
            detach_on_exit,
            private_bpffs,
        } => daemon::run(
            config,
            crate::daemon::runtime::Options {
                detach_on_exit,
                private_bpffs,
            },
        ),
        Command::Weight {
            service,
            version,
            percent,
            paths,
            fleet,
        } => weight::weight(
            config,
            &paths.into(),
            fleet.local,
            &service,
            version.into(),
            percent,
        ),
        Command::Rollback {
            service,
            established,
            wait_ms,
            paths,
            fleet,
        } => {
            let overrides: locate::Overrides = paths.into();
            // The drain is asked for right after the write, before the journal entry.
            let (change, begun) =
                rollback::rollback(config, &overrides, &service, |release, left| {
                    drain::begin(release, left, established)
                })?;
            // This node first, then the fleet, told beside the drain: etcd never delays this
            // node's rollback or its drain, and a fleet that cannot be told now is told by the
            // daemon later.
            let telling = (!fleet.local).then(|| {
                let (config, overrides) = (config.to_owned(), overrides.clone());
                let (release, word) = (change.service.clone(), change.after);
                std::thread::spawn(move || {
                    fleet::publish_rollback(&config, &overrides, &release, word)
                })
            });
            // The drain and its journal entry happen even when nobody reads the output.
            let printed = change.print();
            let told = || {
                if let Some(said) = telling.and_then(|t| t.join().ok()).flatten() {
                    eprintln!("{said}");
                }
            };
            // A repeated rollback drains only when asked to (`--established`).
            if let Some(left) = change
                .left
                .as_ref()
                .filter(|_| !change.unchanged || established.is_some())
            {
                // A repeated rollback asks for its drain only now.
                let begun =
                    begun.unwrap_or_else(|| drain::begin(&change.service, left, established));
                let drained = drain::finish(
                    begun,
                    &change.service,
                    left,
                    established,
                    Duration::from_millis(wait_ms),
                );
                told();
                printed?;
                return out(format!("{}\n", drained?));
            }
            told();
            printed
        }
        Command::History {
            service,
            limit,
            output,
            fleet: false,
        } => print(history::run(config, service.as_deref(), limit, output)),
        Command::History {
            service,
            limit,
            output,
            fleet: true,
        } => print(history::run_fleet(
            config,
            service.as_deref(),
            limit,
            output,
        )),
        Command::Summary { days, output } => print(summary::run(config, days, output)),
        Command::Rollout { action, fleet } => out(format!(
            "{}\n",
            rollout::run(config, fleet.local, action)?.trim_end()
        )),
        Command::Drill {
            service,
            last_resort,
            output,
            fleet,
        } => {
            // A rollback drill of the whole fleet unless `--local`; the last-resort pool is
            // each node's own, drilled on this node.
            let target = if fleet.local || last_resort {
                None
            } else {
                let located = locate::locate(config, &locate::Overrides::default())?;
                fleet::target_in(&located, &service)?
            };
            let drilled = match target {
                Some(target) => fleet_drill::run(&target, output)?,
                None => drill::run(config, &service, last_resort, output)?,
            };
            out(&drilled.text)?;
            // A drill that did not pass is a finding: scripts and timers see it in the status.
            match drilled.not_passed {
                None => Ok(()),
                Some(outcome) => Err(CommandError::DrillNotPassed(outcome)),
            }
        }
        Command::Review { rollout_id, output } => print(review::run(config, rollout_id, output)),
        Command::Report {
            rollout_id,
            out: path,
        } => out(format!("{}\n", report::run(config, rollout_id, &path)?)),
        Command::Completions { shell } => out(completions::completions(shell)),
        Command::Man => out(completions::man()?),
        Command::Reload => out(format!("{}\n", reload::run(config)?)),
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
        Command::Status {
            service,
            output,
            paths,
            fleet,
        } => print(status::run(
            config,
            &paths.into(),
            service.as_deref(),
            output,
            fleet.local,
        )),
        Command::Detach { pin_dir } => {
            out(format!("{}\n", detach::run(config, pin_dir.as_deref())?))
        }
    }
}

/// Prints a command's text as it is (it ends with its own newline).
fn print(text: Result<String, CommandError>) -> Result<(), CommandError> {
    out(text?)
}

/// Writes `bytes` to standard output; a reader that went away is `StdoutClosed`, which `main`
/// ends quietly on (where `print!` would panic).
pub(crate) fn out(bytes: impl AsRef<[u8]>) -> Result<(), CommandError> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(bytes.as_ref())
        .and_then(|()| stdout.flush())
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::BrokenPipe => CommandError::StdoutClosed,
            _ => CommandError::Io {
                what: "write to standard output",
                source,
            },
        })
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SPLITTER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour(
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            std::env::var_os("NO_COLOR").as_deref(),
        ))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Whether logs are coloured: only on a terminal, and not when `NO_COLOR` is set to anything
/// but the empty string (no-color.org), so journald and log files get plain text.
fn colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(std::ffi::OsStr::is_empty)
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Standard output's reader went away.
    #[error("standard output was closed")]
    StdoutClosed,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error(
        "the config `{}` cannot be read ({problem}), and the daemon left no record of what it \
         applied at `{}`: give --pin-dir and --state-dir, and name the service by its address \
         (ADDRESS:PORT)",
        config.display(),
        record.display()
    )]
    Unlocated {
        config: std::path::PathBuf,
        record: std::path::PathBuf,
        problem: Box<ConfigError>,
    },
    #[error("service `{name}` does not validate ({why}): name it by its address (ADDRESS:PORT)")]
    UnreadableService { name: String, why: String },
    #[error("no service or release group `{name}` in {config}; it has: {known}")]
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
    Dataplane(#[from] crate::kernel::dataplane::DataplaneError),
    #[error(transparent)]
    Apply(#[from] crate::kernel::apply::ApplyError),
    #[error(transparent)]
    Run(#[from] crate::daemon::runtime::RunError),
    #[error("the rollback is written, but its drain stopped")]
    Drain(#[from] crate::daemon::drain::DrainError),
    #[error("{0}")]
    Daemon(String),
    #[error(transparent)]
    Client(#[from] client::ClientError),
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
    #[error("fleet: {0}")]
    Fleet(String),
    #[error(
        "fleet: etcd cannot be reached ({0}); nothing changed. `--local` changes this node alone"
    )]
    FleetUnreachable(String),
    #[error(
        "fleet: the split of `{release}` was changed by someone else since this command read it ({now}); nothing changed: look, then run the command again"
    )]
    FleetRaced { release: String, now: String },
    #[error("cannot encode the status as JSON")]
    Json(#[from] serde_json::Error),
    #[error("cannot {what}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::colour;

    #[test]
    fn logs_are_coloured_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some(OsStr::new(""))));
        assert!(!colour(true, Some(OsStr::new("1"))));
        assert!(!colour(false, None));
    }
}
