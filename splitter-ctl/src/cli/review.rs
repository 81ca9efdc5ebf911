//! `splitter-ctl review ROLLOUT_ID`: a Markdown post-incident review of one rollout, from the
//! journal.

use std::{fmt::Write as _, path::Path};

use super::{CommandError, Output, history::format_time};
use crate::{
    model::config::Config,
    store::journal::{self, Journal},
};

/// Gate evaluations shown before a rollback in a review.
const REVIEW_GATES_BEFORE: usize = 5;

/// `splitter-ctl review ROLLOUT_ID`: a Markdown post-incident review of one rollout.
pub fn run(config_path: &Path, id: i64, output: Output) -> Result<String, CommandError> {
    let config = Config::load(config_path)?;
    let events = Journal::open(&config.state_dir)?
        .rollout_events(id)?
        .ok_or(CommandError::NotARollout(id))?;
    if output == Output::Json {
        return Ok(serde_json::to_string_pretty(&events)? + "\n");
    }
    let Some(start) = events.first() else {
        return Err(CommandError::NotARollout(id));
    };
    let end = events.last().filter(|e| {
        matches!(
            e.event.kind,
            journal::EventKind::Promotion | journal::EventKind::Rollback
        )
    });
    let since = |at_ms: i64| format!("+{:.1} s", (at_ms - start.at_ms) as f64 / 1000.0);
    let mut out = String::new();
    let _ = writeln!(out, "# Rollout {id} of `{}`\n", start.event.service);
    let _ = writeln!(
        out,
        "- Started: {} by {}, plan: {}",
        format_time(start.at_ms),
        start.event.actor,
        start.event.details
    );
    match end {
        Some(e) => {
            let _ = writeln!(
                out,
                "- Ended: {} ({}), {} by {}{}",
                format_time(e.at_ms),
                since(e.at_ms),
                e.event.kind.name(),
                e.event.actor,
                e.event
                    .reason
                    .as_deref()
                    .map_or_else(String::new, |r| format!(": {r}"))
            );
            if let Some(us) = e.event.decision_to_write_us {
                let _ = writeln!(out, "- Decision to map write: {us} µs");
            }
            if let Some(us) = e.decision_to_last_response_us {
                let _ = writeln!(
                    out,
                    "- Decision to the last response of the version left: {us} µs"
                );
            }
            if let Some(us) = e.decision_to_last_close_us {
                let _ = writeln!(out, "- Decision to its last connection closed: {us} µs");
            }
        }
        None => {
            let _ = writeln!(
                out,
                "- Not ended: the rollout is still running or was left paused"
            );
        }
    }
    let _ = writeln!(
        out,
        "\n## Timeline\n\n| time | event | by | details |\n|---|---|---|---|"
    );
    for e in events
        .iter()
        .filter(|e| e.event.kind != journal::EventKind::GateEvaluation)
    {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            since(e.at_ms),
            e.event.kind.name(),
            e.event.actor,
            e.event
                .reason
                .as_deref()
                .unwrap_or(&e.event.details.to_string())
        );
    }
    let gates: Vec<_> = events
        .iter()
        .filter(|e| e.event.kind == journal::EventKind::GateEvaluation)
        .collect();
    let _ = writeln!(
        out,
        "\n## Gate values{}\n\nEach judgement counts from the start of its step (the report's charts show each window between two judgements instead).\n\n| time | judgement | candidate since the step began: requests / errors / p99 ms | live since the step began: requests / errors / p99 ms |\n|---|---|---|---|",
        if end.is_some_and(|e| e.event.kind == journal::EventKind::Rollback) {
            " before the rollback"
        } else {
            " (the last ones)"
        }
    );
    for e in &gates[gates.len().saturating_sub(REVIEW_GATES_BEFORE)..] {
        let d = &e.event.details;
        let side = |v: &serde_json::Value| {
            format!(
                "{} / {} / {}",
                v["requests"],
                v["errors"],
                v["p99_ms"]
                    .as_f64()
                    .map_or_else(|| "-".to_owned(), |p| format!("{p:.2}"))
            )
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            since(e.at_ms),
            d["judgement"].as_str().unwrap_or("?"),
            side(&d["candidate"]),
            side(&d["live"])
        );
    }
    out.push_str(
        "\n## Questions for the team\n\n\
         - What did the candidate change, and which gate saw it first?\n\
         - What pre-deployment test would have caught it (load test, replayed traffic, a shadow run)?\n\
         - Were the gates tight enough, and was the first step small enough to limit the harm?\n\
         - How many requests failed on the candidate before the rollback, and who was affected?\n\
         - What will change before the next rollout of this service?\n",
    );
    Ok(out)
}
