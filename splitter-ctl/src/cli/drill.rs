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
        // The drill watches for up to DRILL_LIMIT before it answers.
        crate::engine::drill::DRILL_LIMIT + client::TIMEOUT,
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
    let what = match report.kind {
        DrillKind::Rollback => "drill",
        DrillKind::LastResort => "last-resort drill",
    };
    let needed = match report.kind {
        DrillKind::Rollback => format!(
            " ({} needed: with fewer, a rollback that did nothing could pass once in a thousand drills)",
            report.connections_needed
        ),
        DrillKind::LastResort => String::new(),
    };
    let drain = report
        .drain
        .as_ref()
        .map_or_else(String::new, |d| format!("  drain: {}\n", d.describe()));
    format!(
        "{what} of {}: {}\n  write: {} µs\n  new connections during the drill: {} on {}{needed}, {} elsewhere\n{drain}  restored: {}\n",
        report.service,
        report.outcome,
        report.decision_to_write_us,
        report.new_on_live,
        report.live,
        report.new_on_candidate,
        report.restored,
    )
}
