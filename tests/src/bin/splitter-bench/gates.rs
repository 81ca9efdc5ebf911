//! Rollbacks decided by the daemon's gates, on a test bed under load: from the decision to the
//! split-word write, and to the last response of the version rolled back, as the journal has them.

use std::{
    fmt::Write as _,
    thread,
    time::{Duration, Instant},
};

use splitter_tests::{load::Load, testbed::Testbed};

/// The bench's test bed: 198.18.202.0/24 and namespaces `sp202-*`.
const BED: u8 = 202;
/// The longest one rollout may take to roll back, or its first connection to be journaled.
const ROLLBACK_LIMIT: Duration = Duration::from_secs(15);

/// `count` rollouts of a green that answers 500 to every other request, each rolled back by the
/// daemon's error-rate gate while a client opens new connections; the journal's times of each.
pub fn section(server: &str, quick: bool) -> Result<String, String> {
    let count = if quick { 3 } else { 10 };
    let mut bed = Testbed::with_index(BED, server);
    bed.restart_green_with(server, &["--error-every", "2"]);
    bed.write_config("0");
    bed.start_daemon(&[]);
    let load = Load::start(&bed, Duration::from_secs(30 + 10 * count as u64));
    let rollbacks = |bed: &Testbed| -> Result<Vec<serde_json::Value>, String> {
        let text = bed.ctl_ok(&["history", "--limit", "10000", "--output", "json"]);
        let events: Vec<serde_json::Value> =
            serde_json::from_str(&text).map_err(|e| format!("history JSON: {e}"))?;
        Ok(events
            .into_iter()
            .filter(|e| e["kind"] == "rollback" && e["actor"] == "gates")
            .collect())
    };
    for round in 0..count {
        bed.ctl_ok(&[
            "rollout",
            "start",
            "sentiment",
            "--steps",
            "50,100",
            "--hold",
            "10s",
            "--interval",
            "200ms",
            "--min-samples",
            "5",
            "--max-error-rate",
            "0.05",
            "--failure-limit",
            "1",
        ]);
        let deadline = Instant::now() + ROLLBACK_LIMIT;
        loop {
            let done = rollbacks(&bed)?.len() > round
                && rollbacks(&bed)?[0]["details"]["drain"]["done"] == true;
            if done {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "rollout {} was not rolled back and drained within {ROLLBACK_LIMIT:?}",
                    round + 1
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
    let [(_, blue_failed), _] = load.stop();
    let events = rollbacks(&bed)?;
    let times = |key: &str| -> Vec<f64> {
        let mut v: Vec<f64> = events.iter().filter_map(|e| e[key].as_f64()).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let (write, last_response) = (
        times("decision_to_write_us"),
        times("decision_to_last_response_us"),
    );
    let late: u64 = events
        .iter()
        .filter_map(|e| e["details"]["drain"]["new_connections_after_decision"].as_u64())
        .sum();
    if write.len() != count || last_response.len() != count {
        return Err(format!(
            "{} rollbacks journaled, {} with a write time, {} drained",
            events.len(),
            write.len(),
            last_response.len()
        ));
    }
    let p = |v: &[f64], q: f64| v[((v.len() - 1) as f64 * q) as usize];
    let mut out = String::new();
    let _ = writeln!(out, "\n### Rollback decided by the gates, in the daemon\n");
    let _ = writeln!(
        out,
        "{count} rollouts on the test bed (network namespaces and veth pairs, XDP and TC on the node) of a green that answers 500 to every other request, each rolled back by the error-rate gate at its first judgement (200 ms interval), while the client opens a new connection about every 2 ms. Times from the journal: decision (the failing judgement) to the split-word write, and decision to the last response green began (the kernel's time of green's last response, as the rollback's drain reads it: 0 when green answered nothing after the decision). New connections green got after a decision, over every rollback: {late}. Failed requests on the live pool during the run: {blue_failed}.\n"
    );
    let _ = writeln!(out, "| measure | p50 | max |");
    let _ = writeln!(out, "|---|---:|---:|");
    let _ = writeln!(
        out,
        "| decision → map write | {:.1} µs | {:.1} µs |",
        p(&write, 0.5),
        p(&write, 1.0)
    );
    let _ = writeln!(
        out,
        "| decision → last response of green | {:.2} ms | {:.2} ms |",
        p(&last_response, 0.5) / 1_000.0,
        p(&last_response, 1.0) / 1_000.0
    );
    let target = if p(&write, 1.0) <= 50.0 {
        "met"
    } else {
        "MISSED"
    };
    let _ = writeln!(
        out,
        "\nTarget: the rollback write at most 50 µs after the decision: **{target}** (max {:.1} µs).",
        p(&write, 1.0)
    );
    Ok(out)
}
