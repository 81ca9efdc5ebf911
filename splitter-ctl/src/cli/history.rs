//! `splitter-ctl history`, `summary` and `review`: what the journal holds.

use std::{fmt::Write as _, path::Path};

use super::CommandError;
use crate::{
    model::config::Config,
    store::journal::{self, Journal},
};

/// Milliseconds in a day.
const DAY_MS: i64 = 86_400_000;

pub fn history(
    config_path: &Path,
    service: Option<&str>,
    limit: usize,
    json: bool,
) -> Result<String, CommandError> {
    let config = Config::load(config_path)?;
    // A service of a release group: the group's events (rollouts, rollbacks, drills).
    let release = service
        .and_then(|s| config.release(s))
        .map(|r| r.name.to_owned());
    let events =
        Journal::open(&config.state_dir)?.history(release.as_deref().or(service), limit)?;
    if json {
        return Ok(serde_json::to_string_pretty(&events)? + "\n");
    }
    let mut out = String::new();
    if events.is_empty() {
        out.push_str("no events yet\n");
    }
    for e in &events {
        let when = format_time(e.at_ms);
        let write = e
            .event
            .decision_to_write_us
            .map_or_else(String::new, |us| format!(", decision to write {us} µs"));
        let after = &e.event.details["after"];
        let share = after["green_percent"]
            .as_f64()
            .map_or_else(String::new, |g| {
                format!(
                    ": green {g}% (live {})",
                    after["live"].as_str().unwrap_or("?")
                )
            });
        let _ = writeln!(
            out,
            "{when}  {:<9} {:<10} by {}{share}{write}",
            e.event.service,
            e.event.kind.name(),
            e.event.actor
        );
    }
    Ok(out)
}

/// Gate evaluations shown before a rollback in a review.
const REVIEW_GATES_BEFORE: usize = 5;

/// `splitter-ctl review ROLLOUT_ID`: a Markdown post-incident review of one rollout.
pub fn review(config_path: &Path, id: i64, json: bool) -> Result<String, CommandError> {
    let config = Config::load(config_path)?;
    let events = Journal::open(&config.state_dir)?
        .rollout_events(id)?
        .ok_or(CommandError::NotARollout(id))?;
    if json {
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
            if let Some(us) = e.event.decision_to_first_connection_us {
                let _ = writeln!(
                    out,
                    "- Decision to first new connection on the live pool: {us} µs"
                );
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
        "\n## Gate values{}\n\n| time | judgement | candidate requests / errors / p99 ms | live requests / errors / p99 ms |\n|---|---|---|---|",
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

pub fn summary(config_path: &Path, days: u32, json: bool) -> Result<String, CommandError> {
    let config = Config::load(config_path)?;
    let until = journal::now_ms();
    let summary =
        Journal::open(&config.state_dir)?.summary(until - i64::from(days) * DAY_MS, until)?;
    if json {
        return Ok(serde_json::to_string_pretty(&summary)? + "\n");
    }
    let us = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0} µs"));
    Ok(format!(
        "last {days} days: {} promotions ({:.2} a day), {} rollbacks, {} drills\nmean time to rollback: decision to map write {}, decision to first new connection on the live pool {}\n",
        summary.promotions,
        summary.deployment_frequency_per_day,
        summary.rollbacks,
        summary.drills,
        us(summary.mean_time_to_rollback_write_us),
        us(summary.mean_time_to_rollback_first_connection_us),
    ))
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS` (UTC), without a date library.
pub(crate) fn format_time(ms: i64) -> String {
    let secs = ms.div_euclid(1_000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::format_time;

    #[test]
    fn unix_milliseconds_format_as_utc_dates() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00");
        assert_eq!(format_time(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(format_time(1_796_014_800_123), "2026-11-30 05:00:00");
    }
}
