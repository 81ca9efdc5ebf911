//! `splitter-ctl history`: the journal's events, newest first; with `--fleet`, the fleet's
//! changes of its desired splits as etcd keeps them.

use std::{fmt::Write as _, path::Path};

use super::{CommandError, Output};
use crate::{
    model::{config::Config, fleet::FleetEvent},
    store::journal::{Event, EventKind, Journal},
};

pub fn run(
    config_path: &Path,
    service: Option<&str>,
    limit: usize,
    output: Output,
) -> Result<String, CommandError> {
    let config = Config::load(config_path)?;
    let events = Journal::open(&config.state_dir)?
        .history(release_of(&config, service).as_deref(), limit)?;
    render(&events, output, "no events yet", line)
}

/// What `service` names in the history: a service of a release group stands for the group
/// (its rollouts, rollbacks and drills are the group's).
fn release_of(config: &Config, service: Option<&str>) -> Option<String> {
    let service = service?;
    Some(
        config
            .release(service)
            .map_or(service, |r| r.name)
            .to_owned(),
    )
}

/// Events as JSON, or a line each (`none` when there are none).
fn render<E: serde::Serialize>(
    events: &[E],
    output: Output,
    none: &str,
    line: impl Fn(&E) -> String,
) -> Result<String, CommandError> {
    if output == Output::Json {
        return Ok(serde_json::to_string_pretty(events)? + "\n");
    }
    let mut out = String::new();
    if events.is_empty() {
        let _ = writeln!(out, "{none}");
    }
    for event in events {
        out.push_str(&line(event));
        out.push('\n');
    }
    Ok(out)
}

/// `history --fleet`: the fleet's changes, newest first, each with the node that made it.
pub fn run_fleet(
    config_path: &Path,
    service: Option<&str>,
    limit: usize,
    output: Output,
) -> Result<String, CommandError> {
    let config = Config::load(config_path)?;
    let fleet = config.fleet.as_ref().ok_or_else(|| {
        CommandError::Fleet(format!(
            "{} has no [fleet] table: this node's own history is `splitter-ctl history`",
            config_path.display()
        ))
    })?;
    let (events, unreadable) =
        super::fleet::history(fleet, release_of(&config, service).as_deref(), limit)?;
    let mut out = render(&events, output, "no fleet events yet", fleet_line)?;
    if unreadable > 0 && output == Output::Text {
        let _ = writeln!(
            out,
            "({unreadable} event(s) this build cannot read left out)"
        );
    }
    Ok(out)
}

/// One fleet event as a line: when, what, who on which node, the split it set.
fn fleet_line(e: &FleetEvent) -> String {
    let d = &e.desired;
    let green = d.word().map_or_else(
        |_| "?".to_owned(),
        |w| crate::model::share::format_percent(w.share_of(splitter_common::Version::Green)),
    );
    format!(
        "{}  {:<12} {:<17} by {} on {}: green {green}% (live {}) at revision {}{}",
        format_time(d.decided_at_ms),
        e.release,
        d.cause.name(),
        d.actor,
        d.node,
        d.live,
        e.revision,
        if e.published_later {
            ", made while etcd was unreachable and published later"
        } else {
            ""
        }
    )
}

/// One event as a line: its id (which `review` and `report` take), when, what, who, and what
/// came of it (a rollback's reason, an override, a drill's outcome, the split after).
fn line(e: &Event) -> String {
    let event = &e.event;
    let details = &event.details;
    let mut parts = Vec::new();
    match (event.kind, &event.reason) {
        (EventKind::Drill | EventKind::LastResortDrill, Some(outcome)) => {
            parts.push(format!("outcome {outcome}"));
        }
        (_, Some(reason)) => parts.push(reason.clone()),
        (_, None) => {}
    }
    match event.kind {
        EventKind::RolloutStarted => {
            let steps: Vec<String> = details["steps_percent"]
                .as_array()
                .map(|s| s.iter().map(ToString::to_string).collect())
                .unwrap_or_default();
            parts.push(format!(
                "candidate {}, steps {}%",
                details["candidate"].as_str().unwrap_or("?"),
                steps.join("/")
            ));
        }
        EventKind::Step => {
            if let Some(p) = details["candidate_percent"].as_f64() {
                parts.push(format!("candidate {p}%"));
            }
        }
        EventKind::GateEvaluation => {
            if let Some(judgement) = details["judgement"].as_str() {
                parts.push(judgement.to_owned());
            }
        }
        _ => {}
    }
    let after = &details["after"];
    if let Some(green) = after["green_percent"].as_f64() {
        parts.push(format!(
            "green {green}% (live {})",
            after["live"].as_str().unwrap_or("?")
        ));
    } else if let Some(live) = details["live"].as_str() {
        parts.push(format!("{live} live"));
    }
    if let Some(us) = event.decision_to_write_us {
        parts.push(format!("decision to write {us} µs"));
    }
    let mut line = format!(
        "#{:<6} {}  {:<12} {:<17} by {}",
        e.id,
        format_time(e.at_ms),
        event.service,
        event.kind.name(),
        event.actor
    );
    if !parts.is_empty() {
        let _ = write!(line, ": {}", parts.join("; "));
    }
    line
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
    use super::*;
    use crate::store::journal::NewEvent;

    fn event(id: i64, kind: EventKind, actor: &str, reason: Option<&str>) -> Event {
        Event {
            id,
            at_ms: 1_796_014_800_123,
            event: NewEvent {
                reason: reason.map(str::to_owned),
                ..NewEvent::new("sentiment", kind, actor)
            },
            decision_to_last_response_us: None,
            decision_to_last_close_us: None,
        }
    }

    #[test]
    fn a_line_shows_the_id_the_actor_and_what_came_of_it() {
        let drill = event(7, EventKind::Drill, "schedule", Some("failed"));
        assert_eq!(
            line(&drill),
            "#7      2026-11-30 05:00:00  sentiment    drill             by schedule: outcome failed"
        );
        let paused = event(
            12,
            EventKind::OperatorOverride,
            "alice (uid 1000)",
            Some("paused"),
        );
        assert!(
            line(&paused).ends_with("by alice (uid 1000): paused"),
            "{}",
            line(&paused)
        );
        let mut rollback = event(13, EventKind::Rollback, "gates", Some("error rate 4% > 1%"));
        rollback.event.decision_to_write_us = Some(21);
        rollback.event.details =
            serde_json::json!({ "after": { "green_percent": 0.0, "live": "blue" } });
        assert!(
            line(&rollback).ends_with(
                "by gates: error rate 4% > 1%; green 0% (live blue); decision to write 21 µs"
            ),
            "{}",
            line(&rollback)
        );
        let mut started = event(14, EventKind::RolloutStarted, "root (uid 0)", None);
        started.event.details =
            serde_json::json!({ "candidate": "green", "steps_percent": [5, 25.5, 100] });
        assert!(
            line(&started).ends_with(": candidate green, steps 5/25.5/100%"),
            "{}",
            line(&started)
        );
    }

    #[test]
    fn unix_milliseconds_format_as_utc_dates() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00");
        assert_eq!(format_time(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(format_time(1_796_014_800_123), "2026-11-30 05:00:00");
    }
}
