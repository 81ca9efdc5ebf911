//! `splitter-ctl history`: the journal's events, newest first.

use std::{fmt::Write as _, path::Path};

use super::{CommandError, Output};
use crate::{model::config::Config, store::journal::Journal};

pub fn run(
    config_path: &Path,
    service: Option<&str>,
    limit: usize,
    output: Output,
) -> Result<String, CommandError> {
    let config = Config::load(config_path)?;
    // A service of a release group: the group's events (rollouts, rollbacks, drills).
    let release = service
        .and_then(|s| config.release(s))
        .map(|r| r.name.to_owned());
    let events =
        Journal::open(&config.state_dir)?.history(release.as_deref().or(service), limit)?;
    if output == Output::Json {
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
