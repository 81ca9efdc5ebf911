//! What a rollback does to the connections already on the version it leaves: 32 pooled
//! keep-alive clients with think time (Python `requests`, one `Session`, urllib3's pool), green
//! at 50%, then a rollback as an operator runs it. Measured from the clients: the last answer
//! green gave after the command started, and the requests that failed; Splitter's drain beside
//! HAProxy's `shutdown sessions` (its way to move established sessions off a server). Then the
//! same clients with 3 s of think time, whose pooled connections are idle at the rollback: the
//! kernel's decision → the last of them closed.

use std::{fmt::Write as _, process::Stdio, thread, time::Duration};

use splitter_tests::{
    compare::{Kind, Setups},
    pooled,
    testbed::{Testbed, rollback_command},
};

use splitter_ctl::model::drain::DEFAULT_DRAIN_IDLE;

use crate::median;

/// The bench's test bed for this section: 198.18.206.0/24 and namespaces `sp206-*`.
const BED: u8 = 206;
const CLIENTS: u32 = 32;
/// The shorter `drain_idle_ms` measured beside the default.
const SHORT_IDLE_MS: u64 = 10;

/// How the clients ask: their think time, how long they run, and when the rollback comes.
#[derive(Clone, Copy)]
struct Load {
    think_ms: u32,
    seconds: u32,
    before: Duration,
    /// The clients answer in the moment before the rollback (a busy pool does).
    busy: bool,
}

/// A busy pool: 10 ms of think time.
const BUSY: Load = Load {
    think_ms: 10,
    seconds: 4,
    before: Duration::from_secs(2),
    busy: true,
};
/// An idle pool: every pooled connection idle at the rollback.
const IDLE: Load = Load {
    think_ms: 3_000,
    seconds: 5,
    before: Duration::from_millis(1_500),
    busy: false,
};

/// One rollback as the clients saw it.
struct Round {
    /// From the command's start to green's last answer (0 when green answered nothing after).
    last_green_ms: f64,
    failed: usize,
    requests: usize,
    /// Splitter: the drain's decision → last response green began, and → its last connection
    /// closed, from the kernel.
    kernel_ms: Option<f64>,
    close_ms: Option<f64>,
}

pub fn section(server: &str, quick: bool) -> Result<String, String> {
    let rounds = if quick { 1 } else { 5 };
    let mut bed = Testbed::with_index(BED, server);
    let mut setups = Setups::new(&mut bed, 5_000)?;
    let mut rows = Vec::new();
    for kind in [Kind::Splitter, Kind::Haproxy] {
        setups.enter(&mut bed, kind)?;
        let measured = if kind == Kind::Splitter {
            splitter_rows(&bed, &mut setups, rounds)
        } else {
            rounds_of(&bed, &mut setups, kind, rounds, BUSY)
                .map(|runs| vec![(kind.name().to_owned(), runs)])
        };
        setups.leave(&mut bed, kind)?;
        rows.extend(measured?);
    }
    Ok(report(rounds, &rows))
}

/// Splitter's rounds with the default `drain_idle_ms`, then, the same daemon reloaded, with
/// `SHORT_IDLE_MS`.
fn splitter_rows(
    bed: &Testbed,
    setups: &mut Setups,
    rounds: usize,
) -> Result<Vec<(String, Vec<Round>)>, String> {
    let default_runs = rounds_of(bed, setups, Kind::Splitter, rounds, BUSY)?;
    let idle_runs = rounds_of(bed, setups, Kind::Splitter, rounds, IDLE)?;
    bed.write_config_with("50", &format!("drain_idle_ms = {SHORT_IDLE_MS}\n"));
    let reload = bed.ctl(&["reload"]);
    if !reload.status.success() {
        return Err(format!(
            "reload: {}",
            String::from_utf8_lossy(&reload.stderr)
        ));
    }
    let short_runs = rounds_of(bed, setups, Kind::Splitter, rounds, BUSY)?;
    Ok(vec![
        (
            format!(
                "splitter, `drain_idle_ms` {} (default)",
                DEFAULT_DRAIN_IDLE.as_millis()
            ),
            default_runs,
        ),
        (
            format!(
                "splitter, `drain_idle_ms` {} (default), idle pool ({} s think time)",
                DEFAULT_DRAIN_IDLE.as_millis(),
                IDLE.think_ms / 1_000
            ),
            idle_runs,
        ),
        (
            format!("splitter, `drain_idle_ms` {SHORT_IDLE_MS}"),
            short_runs,
        ),
    ])
}

fn rounds_of(
    bed: &Testbed,
    setups: &mut Setups,
    kind: Kind,
    rounds: usize,
    load: Load,
) -> Result<Vec<Round>, String> {
    (0..rounds)
        .map(|_| round(bed, setups, kind, load))
        .collect()
}

/// Attempts at a round: one in which no pooled connection landed on green (urllib3 may open
/// only a few for its workers) measures nothing, and is run again.
const ATTEMPTS: usize = 3;

fn round(bed: &Testbed, setups: &mut Setups, kind: Kind, load: Load) -> Result<Round, String> {
    let mut attempt = 1;
    loop {
        match attempt_round(bed, setups, kind, load) {
            Err(Attempt::GreenIdle) if attempt < ATTEMPTS => attempt += 1,
            Err(Attempt::GreenIdle) => {
                return Err(format!(
                    "{}: green answered nothing before the rollback, {ATTEMPTS} times",
                    kind.name()
                ));
            }
            Err(Attempt::Failed(why)) => return Err(why),
            Ok(round) => return Ok(round),
        }
    }
}

/// Why an attempt at a round measured nothing.
enum Attempt {
    GreenIdle,
    Failed(String),
}

impl From<String> for Attempt {
    fn from(why: String) -> Self {
        Self::Failed(why)
    }
}

fn attempt_round(
    bed: &Testbed,
    setups: &mut Setups,
    kind: Kind,
    load: Load,
) -> Result<Round, Attempt> {
    setups.set_green(bed, kind, 5_000)?;
    let url = format!("http://{}/", Setups::addr(bed, kind));
    let client = pooled::start(&bed.client, &url, CLIENTS, load.think_ms, load.seconds)?;
    // From the first round's answers on, however long Python took to start.
    client.wait_for_lines(CLIENTS as usize, Duration::from_secs(10))?;
    thread::sleep(load.before);
    let started = pooled::now();
    match kind {
        Kind::Splitter => {
            let mut rollback = rollback_command(&bed.config_path);
            rollback.stdout(Stdio::piped()).stderr(Stdio::piped());
            let fail = |e: std::io::Error| format!("splitter-ctl: {e}");
            let (child, _) = bed.node.start(rollback).map_err(fail)?;
            let out = child.wait_with_output().map_err(fail)?;
            if !out.status.success() {
                return Err(Attempt::Failed(format!(
                    "splitter-ctl rollback: {}",
                    String::from_utf8_lossy(&out.stderr)
                )));
            }
        }
        _ => {
            setups.haproxy_process(
                "set weight bench/blue 100; set weight bench/green 0; shutdown sessions server bench/green",
            )?;
        }
    }
    let seen = pooled::collect(client)?;
    let just_before = seen
        .answers
        .iter()
        .filter(|(at, _)| (started - 0.3..started).contains(at))
        .count();
    if load.busy && just_before == 0 {
        return Err(Attempt::Failed(
            "the busy clients answered nothing in the 300 ms before the rollback".to_owned(),
        ));
    }
    if seen.count("green", |at| at < started) == 0 {
        return Err(Attempt::GreenIdle);
    }
    let (kernel_ms, close_ms) = if kind == Kind::Splitter {
        let (response, close) = drained(bed)?;
        (Some(response / 1e3), close.map(|us| us / 1e3))
    } else {
        (None, None)
    };
    Ok(Round {
        last_green_ms: seen
            .last("green")
            .map_or(0.0, |at| ((at - started) * 1e3).max(0.0)),
        failed: seen.failures.len(),
        requests: seen.answers.len() + seen.failures.len(),
        kernel_ms,
        close_ms,
    })
}

/// The newest rollback's drain, once done (up to 5 s): decision → green's last response and
/// → its last connection closed, µs.
fn drained(bed: &Testbed) -> Result<(f64, Option<f64>), String> {
    let event = bed.drained_rollback()?;
    let response = event
        .decision_to_last_response_us
        .ok_or_else(|| "a drain without its last response".to_owned())?;
    let close = event.decision_to_last_close_us.map(|us| us as f64);
    Ok((response as f64, close))
}

fn report(rounds: usize, rows: &[(String, Vec<Round>)]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n### The connections of the version left\n\n{CLIENTS} pooled keep-alive clients with {} ms think time (Python `requests`: one `Session` shared by {CLIENTS} threads, urllib3's pool, no retries), green at 50%, then a rollback as an operator runs it, {rounds} round(s) each (a round in which no pooled connection landed on green, so that green answered nothing before the rollback, is run again, up to {ATTEMPTS} times): Splitter's `splitter-ctl rollback sentiment --wait-ms 0` (the daemon drains green's connections: each closed right behind its response, or once it has been quiet for the service's `drain_idle_ms`, quiet before the drain included: the default, then {SHORT_IDLE_MS} ms after a reload), and HAProxy's `set weight` with `shutdown sessions server bench/green` through `socat`. The idle-pool row: the same clients with {} s of think time and the rollback {:.1} s after their first round was answered, so that every pooled connection is idle at the rollback. From the clients' own clock: the command's start to green's last answer (0: none after the start), and the requests that failed. Splitter's kernel measures beside it: the drain's decision → the last response green began (the journal's mean time to rollback), and → green's last connection closed.\n",
        BUSY.think_ms,
        IDLE.think_ms / 1_000,
        IDLE.before.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "| setup | command start → green's last answer (p50 / max) | failed requests | kernel: decision → green's last response (p50 / max) | kernel: decision → green's last connection closed (p50 / max) |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|");
    let p50_max = |values: Vec<f64>| {
        if values.is_empty() {
            "—".to_owned()
        } else {
            let max = values.iter().copied().fold(0.0, f64::max);
            format!("{:.1} / {max:.1} ms", median(values))
        }
    };
    for (name, runs) in rows {
        let failed: usize = runs.iter().map(|r| r.failed).sum();
        let requests: usize = runs.iter().map(|r| r.requests).sum();
        let _ = writeln!(
            out,
            "| {name} | {} | {failed} of {requests} | {} | {} |",
            p50_max(runs.iter().map(|r| r.last_green_ms).collect()),
            p50_max(runs.iter().filter_map(|r| r.kernel_ms).collect()),
            p50_max(runs.iter().filter_map(|r| r.close_ms).collect()),
        );
    }
    let _ = writeln!(
        out,
        "\nGoals (issue 16): no answer from green later than 100 ms after the command, with 0 failed requests; an idle connection closed within 10 ms of the rollback:"
    );
    for (name, runs) in rows.iter().filter(|(name, _)| name.starts_with("splitter")) {
        let max = runs.iter().map(|r| r.last_green_ms).fold(0.0, f64::max);
        let failed: usize = runs.iter().map(|r| r.failed).sum();
        let verdict = |met: bool| {
            if met && !runs.is_empty() {
                "met"
            } else {
                "missed"
            }
        };
        let _ = writeln!(
            out,
            "- {name}: green's last answer **{}** (max {max:.1} ms, {failed} failed).",
            verdict(max <= 100.0 && failed == 0)
        );
        if name.contains("idle pool") {
            let close = runs.iter().filter_map(|r| r.close_ms).fold(0.0, f64::max);
            let _ = writeln!(
                out,
                "- {name}: every idle connection closed within 10 ms of the decision **{}** (max {close:.1} ms).",
                verdict(close <= 10.0 && runs.iter().all(|r| r.close_ms.is_some()))
            );
        }
    }
    out
}
