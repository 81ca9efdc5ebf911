//! `cargo xtask bench`: every number of docs/benchmarks.md, measured in one run.
//!
//! - `packet`: per-packet cost of the XDP and TC programs (BPF_PROG_TEST_RUN) beside programs
//!   that only pass the packet, and the split-word write a rollback is;
//! - `versus`: on a test bed, Splitter beside direct, nftables and HAProxy with the same backends
//!   and split: throughput and latency under wrk, split accuracy, rollback speed, established
//!   connections across share changes, CPU time per request;
//! - `gates`: rollbacks decided by the daemon's gates, decision to write and to the last response
//!   of the version rolled back;
//! - `drain`: pooled keep-alive clients through a rollback, Splitter's drain beside HAProxy's
//!   `shutdown sessions`;
//! - `memory`: the maps' kernel memory, as the kernel charges it;
//! - `fleet`: a rollback on one of five nodes following one etcd, until every node has it.
//!
//! Every section is measured before anything is written: a run that fails anywhere writes
//! nothing and exits non-zero.

mod drain;
mod fleet;
mod fleet_scale;
mod gates;
mod grpc;
mod judge;
mod judged;
mod memory;
mod packet;
mod protocols;
mod scale;
mod versus;

use std::{
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use splitter_tests::bed_binary;

/// A section measured on a test bed: given the backends' server and `--quick`, its Markdown.
type Section = fn(&str, bool) -> Result<String, String>;

struct Options {
    quick: bool,
    write: Option<PathBuf>,
    /// Only this section (`--only packet|scale|judge|versus|grpc|gates|judged|drain|memory|fleet`), for a quick look;
    /// never written.
    only: Option<String>,
}

fn main() -> ExitCode {
    let mut options = Options {
        quick: false,
        write: None,
        only: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => options.quick = true,
            "--write" => options.write = args.next().map(PathBuf::from),
            "--only" => options.only = args.next(),
            other => {
                eprintln!(
                    "splitter-bench: unknown argument `{other}` (expected --quick, --only SECTION or --write FILE)"
                );
                return ExitCode::FAILURE;
            }
        }
    }
    let server = match bed_binary::prepare("splitter-bench", "bench") {
        Ok(server) => server,
        Err(why) => {
            eprintln!("{why}");
            return ExitCode::FAILURE;
        }
    };
    let mut report = format!(
        "Produced by `cargo xtask bench`{}.\n\nMachine: {}\n\n",
        if options.quick { " --quick" } else { "" },
        machine()
    );
    let wanted = |name: &str| options.only.as_deref().is_none_or(|only| only == name);
    // What each section cost in time on this machine, for the table at the end.
    let mut took: Vec<(&str, Duration)> = Vec::new();
    if wanted("packet") {
        let started = Instant::now();
        report.push_str(&packet::section(options.quick));
        took.push(("packet", started.elapsed()));
    }
    if wanted("scale") {
        let started = Instant::now();
        report.push_str(&scale::section(options.quick));
        took.push(("scale", started.elapsed()));
    }
    if wanted("judge") {
        let started = Instant::now();
        report.push_str(&judge::section(options.quick));
        took.push(("judge", started.elapsed()));
    }
    let sections: [(&str, &str, Section); 7] = [
        (
            "versus",
            "the comparison with direct, nftables and HAProxy",
            versus::section,
        ),
        ("grpc", "gRPC through Splitter beside direct", grpc::section),
        ("gates", "the gate rollbacks", gates::section),
        ("judged", "the judgement on the test bed", judged::section),
        ("drain", "the drain of the version left", drain::section),
        ("memory", "the maps' memory", memory::section),
        ("fleet", "the fleet's rollback propagation", fleet::section),
    ];
    for (name, what, section) in sections {
        if !wanted(name) {
            continue;
        }
        let started = Instant::now();
        match section(&server, options.quick) {
            Ok(text) => {
                report.push_str(&text);
                took.push((name, started.elapsed()));
            }
            Err(why) => {
                eprintln!(
                    "splitter-bench: {what} could not be measured: {why}; nothing was written"
                );
                return ExitCode::FAILURE;
            }
        }
    }
    report.push_str("### What each section took\n\nWall-clock time of each section in this run, on the machine above.\n\n| section | seconds |\n|---|---:|\n");
    for (name, elapsed) in &took {
        report.push_str(&format!("| {name} | {:.0} |\n", elapsed.as_secs_f64()));
    }
    let total: Duration = took.iter().map(|(_, d)| *d).sum();
    report.push_str(&format!("| all | {:.0} |\n\n", total.as_secs_f64()));
    print!("{report}");
    if let Some(path) = options.write.as_ref().filter(|_| options.only.is_none()) {
        let existing = std::fs::read_to_string(path).unwrap_or_default();
        if let Err(e) = std::fs::write(path, splice(&existing, &report)) {
            eprintln!("splitter-bench: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        eprintln!("splitter-bench: wrote {}", path.display());
    }
    ExitCode::SUCCESS
}

const BEGIN: &str =
    "<!-- splitter-bench: begin (generated by `cargo xtask bench`; edit outside) -->";
const END: &str = "<!-- splitter-bench: end -->";

/// Puts the generated `report` between the markers of `existing`, keeping what stands around
/// them (the hand-kept history); a file without markers is replaced.
fn splice(existing: &str, report: &str) -> String {
    let generated = format!("{BEGIN}\n{report}{END}\n");
    match (existing.find(BEGIN), existing.find(END)) {
        (Some(begin), Some(end)) if begin < end => format!(
            "{}{generated}\n{}",
            &existing[..begin],
            &existing[end + END.len()..].trim_start_matches('\n')
        ),
        _ => format!("# Benchmarks\n\n{generated}"),
    }
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn machine() -> String {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let kernel = read("/proc/sys/kernel/osrelease").trim().to_owned();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!("Linux {kernel}, {cores} cores ({model}), run on {date}")
}
