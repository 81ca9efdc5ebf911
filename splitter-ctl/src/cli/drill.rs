//! `splitter-ctl drill SERVICE [--last-resort]`: a rollback drill, run by the daemon.

use std::path::Path;

use bytes::Bytes;
use hyper::Method;

use super::{CommandError, Output, client};
use crate::{engine::drill::DrillKind, io::http::encode, view::drill::DrillReport};

/// What a drill found, printed, and whether it passed.
pub struct Drilled {
    pub text: String,
    /// The outcome when it was not `passed` (the exit status says so).
    pub not_passed: Option<String>,
}

/// Runs a rollback drill in the daemon: what it measured, and whether it passed.
pub fn run(
    config_path: &Path,
    service: &str,
    last_resort: bool,
    output: Output,
) -> Result<Drilled, CommandError> {
    let query = if last_resort { "?kind=last_resort" } else { "" };
    let json = client::request(
        config_path,
        Method::POST,
        &format!("/v1/drills/{}{query}", encode(service)),
        Bytes::new(),
        client::TIMEOUT,
    )?;
    let report: DrillReport = serde_json::from_value(json)?;
    let not_passed = (report.outcome != "passed").then(|| report.outcome.clone());
    let text = match output {
        Output::Json => serde_json::to_string_pretty(&report)? + "\n",
        Output::Text => describe(&report),
    };
    Ok(Drilled { text, not_passed })
}

fn describe(report: &DrillReport) -> String {
    let us = |v: Option<u64>| v.map_or_else(|| "none seen".to_owned(), |us| format!("{us} µs"));
    let what = match report.kind {
        DrillKind::Rollback => "drill",
        DrillKind::LastResort => "last-resort drill",
    };
    format!(
        "{what} of {}: {}\n  write: {}\n  decision to first new connection on {}: {}\n  new connections during the drill: {} on {}, {} elsewhere\n  restored: {}\n",
        report.service,
        report.outcome,
        us(Some(report.decision_to_write_us)),
        report.live,
        us(report.decision_to_first_connection_us),
        report.new_on_live,
        report.live,
        report.new_on_candidate,
        report.restored,
    )
}
