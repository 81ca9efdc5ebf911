//! The command line as clap reads it: every subcommand and option, in one place, so that
//! `--help`, the completions and the man page come from the same definitions.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use splitter_common::Version;

use super::{Output, locate::Overrides};
use crate::model::{
    drain::Established,
    paths,
    plan::{Advance, JudgedLatency, PlanRequest},
    promql::PromqlGate,
    share::parse_percent,
};

/// A policy for established connections, as the command line names it.
fn parse_established(name: &str) -> Result<Established, String> {
    Established::parse(name)
        .ok_or_else(|| format!("`{name}` is not one of `drain`, `reset`, `keep`"))
}

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
pub struct Cli {
    /// The config file; it also says where the data plane's pins are.
    #[arg(long, global = true, default_value = paths::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Log format of the daemon.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum VersionArg {
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
#[expect(
    clippy::large_enum_variant,
    reason = "parsed once per command; boxing the plan's options buys nothing"
)]
pub enum Command {
    /// Load or adopt the data plane, apply the config, and stay in the foreground.
    Daemon {
        /// On SIGINT/SIGTERM, detach the programs and remove the pins instead of leaving the
        /// data plane running.
        #[arg(long)]
        detach_on_exit: bool,
        /// Start even when this process sees a bpffs of its own (a mount namespace of its
        /// own, as `ip netns exec` gives): the data plane then goes away with the daemon and no
        /// other command can reach it. Without this, such a start is refused.
        #[arg(long)]
        private_bpffs: bool,
    },
    /// Set a version's share of new connections (0-100, steps of 0.01): one map write. Works
    /// with the daemon down and with a config file that no longer validates.
    Weight {
        /// A service, a release group, or a service's listen address (ADDRESS:PORT).
        service: String,
        #[arg(value_enum)]
        version: VersionArg,
        /// 0-100, in steps of 0.01 (a trailing % is allowed).
        #[arg(value_parser = parse_percent)]
        percent: u16,
        #[command(flatten)]
        paths: PathArgs,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// Send every new connection to the live pool: one map write. Then waits up to --wait-ms
    /// for the first new connection on the live pool and journals the time to it. Works with
    /// the daemon down and with a config file that no longer validates; repeated, it succeeds
    /// and says so.
    Rollback {
        /// A service, a release group, or a service's listen address (ADDRESS:PORT).
        service: String,
        /// What becomes of the connections already on the version left: `drain` (closed at
        /// their first idle moment), `reset` (at once) or `keep`. Default: the service's
        /// `established`, else `drain`.
        #[arg(long, value_parser = parse_established)]
        established: Option<Established>,
        /// How long to wait for the daemon's drain to end before returning (it goes on after);
        /// without a daemon, this command drains to the end itself.
        #[arg(long, default_value_t = 1000)]
        wait_ms: u64,
        #[command(flatten)]
        paths: PathArgs,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// Progressive rollouts of a service's candidate, run by the daemon.
    Rollout {
        #[command(subcommand)]
        action: RolloutAction,
        #[command(flatten)]
        fleet: RolloutFleetArgs,
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
        #[command(flatten)]
        fleet: FleetArgs,
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
    /// Show the live pool, shares, backends and counters: from the daemon when it answers
    /// within a second, else from the pinned maps (and with a config file that no longer
    /// validates).
    Status {
        service: Option<String>,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
        #[command(flatten)]
        paths: PathArgs,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// The journal: weights, rollbacks, promotions and drills, newest first.
    History {
        service: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
        /// The fleet's changes of its desired splits as etcd keeps them (every node's, with
        /// the node that made each), instead of this node's journal.
        #[arg(long)]
        fleet: bool,
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
#[expect(
    clippy::large_enum_variant,
    reason = "parsed once per command; boxing the plan's options buys nothing"
)]
pub enum RolloutAction {
    /// Start moving new connections to the candidate, step by step, judged by the gates.
    Start {
        service: String,
        #[command(flatten)]
        plan: PlanArgs,
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

/// Where the data plane and the state are, when the config cannot say (it does not parse, and
/// the daemon left no record of the config it applied).
#[derive(Args)]
pub struct PathArgs {
    /// The pin directory of the data plane (overrides the config's `pin_dir`).
    #[arg(long)]
    pin_dir: Option<PathBuf>,
    /// The state directory: the split lock and the journal (overrides `state_dir`).
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

impl From<PathArgs> for Overrides {
    fn from(paths: PathArgs) -> Self {
        Self {
            pin_dir: paths.pin_dir,
            state_dir: paths.state_dir,
        }
    }
}

/// Fleet mode (`[fleet]` in the config): a command acts on every node unless `--local`.
#[derive(Args)]
pub struct FleetArgs {
    /// This node alone: the fleet's desired split in etcd is neither read nor written.
    #[arg(long)]
    pub local: bool,
}

/// Fleet mode for `rollout`: `--local` runs it in this node's daemon alone.
#[derive(Args)]
pub struct RolloutFleetArgs {
    /// This node alone: the rollout runs in this node's daemon, and the fleet is not told.
    #[arg(long, global = true)]
    pub local: bool,
}

impl RolloutAction {
    /// The service or release group it acts on.
    #[must_use]
    pub fn service(&self) -> &str {
        match self {
            Self::Start { service, .. }
            | Self::Status { service, .. }
            | Self::Pause { service }
            | Self::Resume { service }
            | Self::Promote { service }
            | Self::Abort { service } => service,
        }
    }
}

/// A rollout's plan on the command line; each option overrides one key of the service's
/// `[service.rollout]` table.
#[derive(Args)]
pub struct PlanArgs {
    /// Candidate shares in percent, rising, ending at 100 (default 1,5,25,50,100).
    #[arg(long, value_delimiter = ',')]
    steps: Option<Vec<f64>>,
    /// How long each step holds before it may advance (e.g. 5s; default 60s).
    #[arg(long, value_parser = parse_duration)]
    hold: Option<u64>,
    /// How often the gates judge (default 10s).
    #[arg(long, value_parser = parse_duration)]
    interval: Option<u64>,
    /// The start of each step left out of the judgement (e.g. 10s; default 0).
    #[arg(long, value_parser = parse_duration)]
    warmup: Option<u64>,
    /// Errors (5xx, resets, refused handshakes) over requests, at most (default 0.05).
    #[arg(long)]
    max_error_rate: Option<f64>,
    /// The candidate's error rate minus the live pool's, at most (default 0.01: 1 pp).
    #[arg(long)]
    max_error_increase: Option<f64>,
    /// The candidate's p99 response time, at most, in ms.
    #[arg(long)]
    max_p99_ms: Option<f64>,
    /// The candidate's median response time over the live pool's, at most (default 1.1).
    #[arg(long)]
    max_median_vs_live: Option<f64>,
    /// The candidate's p99 over the live pool's, at most (default 1.2).
    #[arg(long)]
    max_p99_vs_live: Option<f64>,
    /// A latency regression must also exceed this many ms (default 0.5).
    #[arg(long)]
    min_latency_increase_ms: Option<f64>,
    /// At most 1 − confidence of rollouts of a candidate within the thresholds are rolled
    /// back (default 0.99).
    #[arg(long)]
    confidence: Option<f64>,
    /// When a step advances: no_regression (none found) or shown_no_worse (every gate shows
    /// the candidate within its threshold).
    #[arg(long, value_enum)]
    advance: Option<AdvanceArg>,
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
    /// The Prometheus server the PromQL gates query (http[s]://host:port[/prefix]).
    #[arg(long)]
    prometheus_url: Option<String>,
    /// The certificate authorities (PEM) to trust for an https:// Prometheus.
    #[arg(long)]
    prometheus_ca_file: Option<String>,
    /// Basic auth to Prometheus: the user (with --prometheus-password-file).
    #[arg(long)]
    prometheus_user: Option<String>,
    /// Basic auth to Prometheus: the file holding the password.
    #[arg(long)]
    prometheus_password_file: Option<String>,
    /// A file holding a bearer token for Prometheus, instead of basic auth.
    #[arg(long)]
    prometheus_token_file: Option<String>,
    /// A PromQL gate, NAME:QUERY<=MAX or NAME:QUERY>=MIN; repeat for more. Replaces the
    /// config's PromQL gates. The query may use $service, $candidate, $live, $interval.
    #[arg(long = "promql-gate", value_name = "NAME:QUERY<=MAX", value_parser = PromqlGate::parse)]
    promql_gates: Vec<PromqlGate>,
    /// Judge on L4 signals only (connections, resets, refused handshakes, handshake time):
    /// the acknowledgement a service whose requests the kernel cannot read (`l7 = "opaque"`,
    /// TLS) needs to roll out without PromQL gates.
    #[arg(long)]
    l4_only: bool,
    /// The latency the kernel's latency gates judge: first-byte, first-token (the default: a
    /// streamed response's first token, any other response's first byte) or whole.
    #[arg(long, value_enum)]
    latency: Option<LatencyArg>,
}

/// `--latency` (the plan's `latency`).
#[derive(Clone, Copy, Debug, ValueEnum)]
enum LatencyArg {
    FirstByte,
    FirstToken,
    Whole,
}

/// `--advance` (the plan's `advance`).
#[derive(Clone, Copy, Debug, ValueEnum)]
enum AdvanceArg {
    NoRegression,
    ShownNoWorse,
}

impl PlanArgs {
    /// The plan request the daemon gets (the daemon checks it as a whole).
    pub fn into_request(self) -> PlanRequest {
        PlanRequest {
            steps: self.steps,
            hold_ms: self.hold,
            warmup_ms: self.warmup,
            interval_ms: self.interval,
            max_error_rate: self.max_error_rate,
            max_error_increase: self.max_error_increase,
            max_p99_ms: self.max_p99_ms,
            max_median_vs_live: self.max_median_vs_live,
            max_p99_vs_live: self.max_p99_vs_live,
            min_latency_increase_ms: self.min_latency_increase_ms,
            confidence: self.confidence,
            advance: self.advance.map(|a| match a {
                AdvanceArg::NoRegression => Advance::NoRegression,
                AdvanceArg::ShownNoWorse => Advance::ShownNoWorse,
            }),
            min_samples: self.min_samples,
            max_divergence: self.max_divergence,
            failure_limit: self.failure_limit,
            prometheus_url: self.prometheus_url,
            prometheus_ca_file: self.prometheus_ca_file,
            prometheus_user: self.prometheus_user,
            prometheus_password_file: self.prometheus_password_file,
            prometheus_token_file: self.prometheus_token_file,
            promql_gates: (!self.promql_gates.is_empty()).then_some(self.promql_gates),
            l4_only: self.l4_only.then_some(true),
            latency: self.latency.map(|l| match l {
                LatencyArg::FirstByte => JudgedLatency::FirstByte,
                LatencyArg::FirstToken => JudgedLatency::FirstToken,
                LatencyArg::Whole => JudgedLatency::Whole,
            }),
        }
    }
}

/// A duration that is not one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DurationError {
    #[error("`{0}` is not a duration like 500ms, 5s, 2m or 1h")]
    Form(String),
    #[error("`{0}` is too long")]
    TooLong(String),
}

/// A duration as operators type it (`500ms`, `5s`, `2m`, `1h`), in milliseconds.
pub fn parse_duration(text: &str) -> Result<u64, DurationError> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let form = || DurationError::Form(text.to_owned());
    let n: u64 = number.parse().map_err(|_| form())?;
    let factor = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(form()),
    };
    n.checked_mul(factor)
        .ok_or_else(|| DurationError::TooLong(text.to_owned()))
}
