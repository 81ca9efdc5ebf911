//! Orchestration that cargo alone does not do: installing the toolchain pieces and Debian
//! packages a fresh machine lacks, running every test (privileged ones included), and the
//! benchmarks. The eBPF object itself is built by splitter-ctl's build.rs, not here.

mod child;
mod dist;
mod setup;

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the build and the tests need (idempotent).
    Setup,
    /// The lints the test command runs first: rustfmt, clippy on the host crates and on the
    /// eBPF crate for its target, every warning an error.
    Lint,
    /// Run setup and the lints, then every test, including the privileged end-to-end ones
    /// (as root: it refuses to run otherwise).
    Test {
        /// Arguments passed on to `cargo test` after `--` (a test-name filter, say).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build the test bed in network namespaces and run the daemon on it, with live traffic.
    Testbed {
        /// Stop (and clean up) after this many seconds.
        #[arg(long, default_value_t = 600)]
        seconds: u64,
    },
    /// A rollout told end to end on the test bed: a bad v2 rolled back by its gates, a fixed
    /// v3 promoted.
    Demo,
    /// The property tests with many more cases than `test` runs: both kernel programs on
    /// generated and mutated packets, the config parser, the control API's request reading.
    Fuzz {
        /// Cases per property.
        #[arg(long, default_value_t = 50_000)]
        cases: u32,
    },
    /// Build a release tarball in target/dist: the binary, the systemd unit, completions, the
    /// man page, an example config, the docs, the dashboard and the Kubernetes manifest.
    Dist,
    /// Measure the data plane and write docs/benchmarks.md.
    Bench {
        /// A short run, for smoke checks; does not write docs/benchmarks.md.
        #[arg(long)]
        quick: bool,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs setup, builds splitter-ctl and the test bed's binaries, then runs `binary` with the
/// freshly built splitter-ctl first on its PATH.
fn run_bed_binary(binary: &str, args: &[&str], release: bool) -> Result<()> {
    setup::run()?;
    // Quiet builds: what is built already says nothing; warnings and errors still show.
    let ctl = build_ctl(release, true)?;
    let mut build = cargo();
    build.args(["build", "--quiet", "--package", "splitter-tests", "--bins"]);
    if release {
        build.arg("--release");
    }
    status(&mut build)?;
    let root = workspace_root();
    let dir = root
        .join("target")
        .join(if release { "release" } else { "debug" });
    let mut cmd = Command::new(dir.join(binary));
    cmd.args(args).env("SPLITTER_CTL_BIN", &ctl).env(
        "PATH",
        format!(
            "{}:{}",
            dir.display(),
            std::env::var("PATH").unwrap_or_default()
        ),
    );
    let exit = child::run(&mut cmd).with_context(|| format!("cannot run {binary}"))?;
    if !exit.success() {
        bail!("{binary} failed: {exit}");
    }
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Task::Setup => setup::run(),
        Task::Lint => {
            setup::run()?;
            lint()
        }
        Task::Test { args } => {
            // Before anything slow: without root the privileged tests would all fail.
            if !is_root() {
                bail!(
                    "`cargo xtask test` runs the privileged tests (BPF, network namespaces): run it as root"
                );
            }
            setup::run()?;
            lint()?;
            test(&args)
        }
        Task::Fuzz { cases } => {
            if !is_root() {
                bail!("`cargo xtask fuzz` runs the kernel programs (BPF): run it as root");
            }
            setup::run()?;
            build_ctl(false, false)?;
            for (package, target) in [
                ("splitter-ctl", ["--lib", "property_"].as_slice()),
                (
                    "splitter-tests",
                    ["--test", "packet_properties", "--", "--include-ignored"].as_slice(),
                ),
            ] {
                status(
                    cargo()
                        .args(["test", "--package", package])
                        .args(target)
                        .env("PROPTEST_CASES", cases.to_string()),
                )?;
            }
            Ok(())
        }
        Task::Testbed { seconds } => run_bed_binary(
            "splitter-testbed",
            &["--seconds", &seconds.to_string()],
            false,
        ),
        Task::Demo => run_bed_binary("splitter-demo", &[], false),
        Task::Dist => {
            setup::run()?;
            let ctl = build_ctl(true, false)?;
            let root = workspace_root();
            let tarball = dist::build(
                &root,
                &ctl,
                &root.join("target/dist"),
                env!("CARGO_PKG_VERSION"),
            )?;
            println!("{}", tarball.display());
            Ok(())
        }
        Task::Bench { quick } => {
            let doc = workspace_root().join("docs/benchmarks.md");
            let doc = doc.to_string_lossy();
            let args: &[&str] = if quick {
                &["--quick"]
            } else {
                &["--write", &doc]
            };
            run_bed_binary("splitter-bench", args, true)
        }
    }
}

/// The workspace root (xtask lives one level below it).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
    cmd.current_dir(workspace_root());
    cmd
}

fn status(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

/// Builds the `splitter-ctl` binary the end-to-end tests run, and returns its path.
fn build_ctl(release: bool, quiet: bool) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args([
        "build",
        "--package",
        "splitter-ctl",
        "--bin",
        "splitter-ctl",
    ]);
    if release {
        cmd.arg("--release");
    }
    if quiet {
        cmd.arg("--quiet");
    }
    status(&mut cmd)?;
    let profile = if release { "release" } else { "debug" };
    Ok(workspace_root()
        .join("target")
        .join(profile)
        .join("splitter-ctl"))
}

/// Whether this process runs as root (its effective uid, from /proc).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

/// rustfmt and clippy, every warning an error: the host crates, and the eBPF crate for its own
/// target with the nightly toolchain that builds it.
fn lint() -> Result<()> {
    status(cargo().args(["fmt", "--all", "--", "--check"]))?;
    status(cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "splitter-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    status(
        Command::new("cargo")
            .current_dir(workspace_root())
            .env_remove("RUSTUP_TOOLCHAIN")
            .args([
                "+nightly",
                "clippy",
                "--package",
                "splitter-ebpf",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--release",
                "--",
                "-D",
                "warnings",
            ]),
    )
}

fn test(args: &[String]) -> Result<()> {
    let ctl = build_ctl(false, false)?;
    let mut cmd = cargo();
    // Tests that need root are `#[ignore = "needs root ..."]` for a plain `cargo test`; here
    // they all run.
    cmd.args([
        "test",
        "--workspace",
        "--exclude",
        "splitter-ebpf",
        "--no-fail-fast",
        "--",
        "--include-ignored",
    ])
    .env("SPLITTER_CTL_BIN", &ctl)
    .args(args);
    // Echo the output as it comes, and total the per-binary results for one closing line.
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {shown}"))?;
    let mut totals = Totals::default();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line.context("cannot read the test output")?;
            println!("{line}");
            totals.add(&line);
        }
    }
    let exit = child
        .wait()
        .with_context(|| format!("cannot wait for {shown}"))?;
    println!(
        "\ntests: {} passed, {} failed, {} skipped (ignored)",
        totals.passed, totals.failed, totals.ignored
    );
    if !exit.success() || totals.failed > 0 {
        bail!("{shown} failed: {exit}");
    }
    if totals.passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}

/// Sums of cargo's `test result: ok. N passed; N failed; N ignored; ...` lines.
#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Totals {
    fn add(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split([';', '.']) {
            let mut words = part.split_whitespace();
            if let (Some(n), Some(what)) = (
                words.next().and_then(|n| n.parse::<u64>().ok()),
                words.next(),
            ) {
                match what {
                    "passed" => self.passed += n,
                    "failed" => self.failed += n,
                    "ignored" => self.ignored += n,
                    _ => {}
                }
            }
        }
    }
}
