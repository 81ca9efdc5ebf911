//! `splitter-ctl summary`: deployment frequency and mean time to rollback, from the journal.

use std::path::Path;

use super::{CommandError, Output};
use crate::{
    model::config::Config,
    store::journal::{self, Journal},
};

/// Milliseconds in a day.
const DAY_MS: i64 = 86_400_000;

pub fn run(config_path: &Path, days: u32, output: Output) -> Result<String, CommandError> {
    let config = Config::load(config_path)?;
    let until = journal::now_ms();
    let summary =
        Journal::open(&config.state_dir)?.summary(until - i64::from(days) * DAY_MS, until)?;
    if output == Output::Json {
        return Ok(serde_json::to_string_pretty(&summary)? + "\n");
    }
    let us = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0} µs"));
    Ok(format!(
        "last {days} days: {} promotions ({:.2} a day), {} rollbacks, {} drills\nmean time to rollback (decision to the last response of the version left): {}; decision to map write {}, to the drain's last close {}\n",
        summary.promotions,
        summary.deployment_frequency_per_day,
        summary.rollbacks,
        summary.drills,
        us(summary.mean_time_to_rollback_us),
        us(summary.mean_time_to_rollback_write_us),
        us(summary.mean_time_to_rollback_last_close_us),
    ))
}
