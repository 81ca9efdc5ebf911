//! The `splitter-ctl` binary: parses the command line and runs one subcommand.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use splitter_common::Version;
use splitter_ctl::{cli as cmd, model::paths};

/// Exit statuses, one place: the man page and docs/operations.md list them.
const EXIT_CODES: &str = "Exit status: 0 done; 1 the command failed (the reason is on stderr); \
2 the command line is wrong; 3 a drill ran but did not pass (failed or inconclusive).";

#[derive(Parser)]
#[command(
    name = "splitter-ctl",
    version,
    about = "Blue-green and canary splits for model serving, in the kernel",
    after_help = EXIT_CODES
)]
struct Cli {
    /// The config file; it also says where the data plane's pins are.
    #[arg(long, global = true, default_value = paths::DEFAULT_CONFIG)]
    config: PathBuf,
    /// Log format of the daemon.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum VersionArg {
    Blue,
    Green,
}

impl From<VersionArg> for Version {
    fn from(v: VersionArg) -> Self {
        match v {
            VersionArg::Blue => Version::Blue,
            VersionArg::Green => Version::Green,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Load or adopt the data plane, apply the config, and stay in the foreground.
    Daemon {
        /// On SIGINT/SIGTERM, detach the programs and remove the pins instead of leaving the
        /// data plane running.
        #[arg(long)]
        detach_on_exit: bool,
    },
    /// Set a version's share of new connections (0-100, steps of 0.01): one map write.
    Weight {
        service: String,
        #[arg(value_enum)]
        version: VersionArg,
        percent: String,
    },
    /// Send every new connection to the live pool: one map write. Then waits up to --wait-ms
    /// for the first new connection on the live pool and journals the time to it.
    Rollback {
        service: String,
        /// How long to wait for the first new connection after the write (0: do not wait).
        #[arg(long, default_value_t = 1000)]
        wait_ms: u64,
    },
    /// Progressive rollouts of a service's candidate, run by the daemon.
    Rollout {
        #[command(subcommand)]
        action: RolloutAction,
    },
    /// Rollback drill: roll back for real, prove new connections land on the live pool, measure
    /// the time, put the share back, journal it (through the daemon).
    Drill {
        service: String,
        /// Exercise the last-resort pool instead: empty blue's and green's slot tables until
        /// new connections reach it, then rebuild them from health.
        #[arg(long)]
        last_resort: bool,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// A Markdown post-incident review of one rollout (its `rollout_started` event id).
    Review {
        rollout_id: i64,
        /// `json`: the rollout's journal events instead of the Markdown.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Draw a rollout (its `rollout_started` event id): the share over time, each version's
    /// error rate and p99, the steps and the rollback or promotion marked.
    Report {
        rollout_id: i64,
        /// FILE.svg, FILE.png, or FILE.html (the drawing and the timeline).
        #[arg(long)]
        out: PathBuf,
    },
    /// Print a completion script for a shell (e.g. `splitter-ctl completions bash >
    /// /usr/share/bash-completion/completions/splitter-ctl`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), generated from these definitions.
    Man,
    /// Ask the running daemon to re-read and apply its config (as SIGHUP does).
    Reload,
    /// Validate the config file without applying it: every error a reload would report for
    /// the file itself (not the daemon's state: a running rollout, keys that need a restart).
    Check {
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// A live view of rollouts: steps, gates, each version's share, rate, errors and p99, and
    /// the journal; redrawn every second (q to quit).
    Watch {
        /// A service or release group; all of them when left out.
        service: Option<String>,
        /// Redraw interval.
        #[arg(long, default_value_t = 1000)]
        every_ms: u64,
        /// Print one frame as text and exit.
        #[arg(long)]
        once: bool,
    },
    /// Show the live pool, shares, backends and counters.
    Status {
        service: Option<String>,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// The journal: weights, rollbacks, promotions and drills, newest first.
    History {
        service: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Deployment frequency and mean time to rollback, from the journal.
    Summary {
        /// The window, in days back from now.
        #[arg(long, default_value_t = 30)]
        days: u32,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Detach the programs and remove every pin.
    Detach {
        /// The pin directory, when the config can no longer be read.
        #[arg(long)]
        pin_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
#[allow(
    clippy::large_enum_variant,
    reason = "parsed once per command; boxing the plan's options buys nothing"
)]
enum RolloutAction {
    /// Start moving new connections to the candidate, step by step, judged by the gates.
    Start {
        service: String,
        /// Candidate shares in percent, rising, ending at 100 (default 1,5,25,50,100).
        #[arg(long, value_delimiter = ',')]
        steps: Option<Vec<f64>>,
        /// How long each step holds before it may advance (e.g. 5s; default 60s).
        #[arg(long)]
        hold: Option<String>,
        /// How often the gates judge (default 10s).
        #[arg(long)]
        interval: Option<String>,
        /// Errors (5xx, resets, refused handshakes) over requests, at most (default 0.01).
        #[arg(long)]
        max_error_rate: Option<f64>,
        /// The candidate's p99 response time, at most, in ms.
        #[arg(long)]
        max_p99_ms: Option<f64>,
        /// The candidate's p99 over the live pool's, at most (default 1.2).
        #[arg(long)]
        max_p99_vs_live: Option<f64>,
        /// Requests a window needs before it is judged (default 20).
        #[arg(long)]
        min_samples: Option<u64>,
        /// Hold a step while the candidate's clients spread over network prefixes differently
        /// from the live pool's by more than this (0 to 1; off by default).
        #[arg(long)]
        max_divergence: Option<f64>,
        /// Failing windows in a row that roll back (default 2).
        #[arg(long)]
        failure_limit: Option<u32>,
        /// The Prometheus server the PromQL gates query (http://host:port[/prefix]).
        #[arg(long)]
        prometheus_url: Option<String>,
        /// A PromQL gate, NAME:QUERY<=MAX or NAME:QUERY>=MIN; repeat for more. Replaces the
        /// config's PromQL gates. The query may use $service, $candidate, $live, $interval.
        #[arg(long = "promql-gate", value_name = "NAME:QUERY<=MAX", value_parser = splitter_ctl::model::promql::PromqlGate::parse)]
        promql_gates: Vec<splitter_ctl::model::promql::PromqlGate>,
    },
    /// The rollout in progress.
    Status {
        service: String,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Stop judging and stepping; the share stays.
    Pause { service: String },
    /// Judge and step again.
    Resume { service: String },
    /// Make the candidate live now, in one write.
    Promote { service: String },
    /// Send every new connection to the live pool and end the rollout.
    Abort { service: String },
}

use splitter_ctl::view::rollout::RolloutCommand;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(cmd::CommandError::DrillNotPassed(outcome)) => {
            eprintln!("the drill did not pass: {outcome}");
            ExitCode::from(3)
        }
        Err(error) => {
            eprintln!("error: {:#}", anyhow::Error::from(error));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), cmd::CommandError> {
    let config = cli.config.as_path();
    match cli.command {
        Command::Daemon { detach_on_exit } => cmd::daemon::run(config, detach_on_exit),
        Command::Weight {
            service,
            version,
            percent,
        } => {
            report(&cmd::share::weight(
                config,
                &service,
                version.into(),
                &percent,
            )?);
            Ok(())
        }
        Command::Rollback { service, wait_ms } => {
            let mut change = cmd::share::rollback(config, &service)?;
            report(&change);
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
        } => {
            print!(
                "{}",
                cmd::history::history(
                    config,
                    service.as_deref(),
                    limit,
                    matches!(output, Output::Json)
                )?
            );
            Ok(())
        }
        Command::Summary { days, output } => {
            print!(
                "{}",
                cmd::history::summary(config, days, matches!(output, Output::Json))?
            );
            Ok(())
        }
        Command::Rollout { action } => {
            let out = match action {
                RolloutAction::Start {
                    service,
                    steps,
                    hold,
                    interval,
                    max_error_rate,
                    max_p99_ms,
                    max_p99_vs_live,
                    min_samples,
                    max_divergence,
                    failure_limit,
                    prometheus_url,
                    promql_gates,
                } => {
                    let ms = |text: Option<String>| {
                        text.map(|t| cmd::rollout::parse_duration(&t))
                            .transpose()
                            .map_err(cmd::CommandError::Daemon)
                    };
                    let plan = splitter_ctl::model::plan::PlanRequest {
                        steps,
                        hold_ms: ms(hold)?,
                        interval_ms: ms(interval)?,
                        max_error_rate,
                        max_p99_ms,
                        max_p99_vs_live,
                        min_samples,
                        max_divergence,
                        failure_limit,
                        prometheus_url,
                        promql_gates: (!promql_gates.is_empty()).then_some(promql_gates),
                    };
                    cmd::rollout::start(config, &service, &plan)?
                }
                RolloutAction::Status { service, output } => {
                    cmd::rollout::status(config, &service, matches!(output, Output::Json))?
                }
                RolloutAction::Pause { service } => {
                    cmd::rollout::command(config, &service, RolloutCommand::Pause)?
                }
                RolloutAction::Resume { service } => {
                    cmd::rollout::command(config, &service, RolloutCommand::Resume)?
                }
                RolloutAction::Promote { service } => {
                    cmd::rollout::command(config, &service, RolloutCommand::Promote)?
                }
                RolloutAction::Abort { service } => {
                    cmd::rollout::command(config, &service, RolloutCommand::Abort)?
                }
            };
            println!("{}", out.trim_end());
            Ok(())
        }
        Command::Drill {
            service,
            last_resort,
            output,
        } => {
            let (report, passed) = cmd::rollout::drill(
                config,
                &service,
                last_resort,
                matches!(output, Output::Json),
            )?;
            print!("{report}");
            // A drill that did not pass is a finding: scripts and timers see it in the status.
            match passed {
                Ok(()) => Ok(()),
                Err(outcome) => Err(cmd::CommandError::DrillNotPassed(outcome)),
            }
        }
        Command::Review { rollout_id, output } => {
            print!(
                "{}",
                cmd::history::review(config, rollout_id, matches!(output, Output::Json))?
            );
            Ok(())
        }
        Command::Report { rollout_id, out } => {
            println!("{}", cmd::report::run(config, rollout_id, &out)?);
            Ok(())
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "splitter-ctl",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Man => clap_mangen::Man::new(Cli::command())
            .render(&mut std::io::stdout())
            .map_err(|source| cmd::CommandError::Io {
                what: "write the man page",
                source,
            }),
        Command::Reload => {
            println!("{}", cmd::reload::run(config)?);
            Ok(())
        }
        Command::Watch {
            service,
            every_ms,
            once,
        } => cmd::watch::run(
            config,
            service.as_deref(),
            Duration::from_millis(every_ms.max(100)),
            once,
        ),
        Command::Check { output } => {
            let checked = splitter_ctl::model::config::Config::load(config)?;
            let groups: std::collections::BTreeSet<_> = checked
                .services
                .iter()
                .filter_map(|s| s.group.as_deref())
                .collect();
            if matches!(output, Output::Json) {
                let json = serde_json::json!({
                    "config": config.display().to_string(),
                    "valid": true,
                    "services": checked.services.iter().map(|s| &s.name).collect::<Vec<_>>(),
                    "release_groups": groups,
                });
                println!("{json:#}");
            } else {
                println!(
                    "{}: valid; {} services, {} release groups",
                    config.display(),
                    checked.services.len(),
                    groups.len()
                );
            }
            Ok(())
        }
        Command::Status { service, output } => {
            print!(
                "{}",
                cmd::status::run(config, service.as_deref(), matches!(output, Output::Json))?
            );
            Ok(())
        }
        Command::Detach { pin_dir } => {
            let (dir, removed) = cmd::detach::run(config, pin_dir.as_deref())?;
            if removed.is_empty() {
                println!("nothing pinned at {}", dir.display());
            } else {
                println!(
                    "detached: removed {} pins from {}",
                    removed.len(),
                    dir.display()
                );
            }
            Ok(())
        }
    }
}

/// Prints a split change, and warns (without failing: the map write happened) when it could not
/// be journaled.
fn report(change: &cmd::share::Change) {
    println!("{}", change.describe());
    if let Err(error) = &change.journaled {
        eprintln!("warning: the change is in effect but not in the journal: {error}");
    }
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
