//! The gates' judgement on the test bed, with real servers and the default gates: identical
//! versions (A/A) quiet and with a busy core, a candidate twice as slow and one with 5 pp more
//! errors; how each rollout ended, and its time to decide.

use std::fmt::Write as _;

use splitter_tests::{judged, testbed::Testbed};

/// The bench's test bed: 198.18.204.0/24 and namespaces `sp204-*`.
const BED: u8 = 204;

/// A case: its name, blue's and green's server options, a busy core, and whether green is a
/// regression (to be rolled back).
struct Case {
    name: &'static str,
    blue: &'static [&'static str],
    green: &'static [&'static str],
    busy: bool,
    regression: bool,
}

const QUICK: &[&str] = &["--delay-ms", "2"];
const SLOW: &[&str] = &["--delay-ms", "4"];
const FAILING: &[&str] = &["--delay-ms", "2", "--error-every", "20"];

const CASES: [Case; 5] = [
    Case {
        name: "A/A, quiet",
        blue: QUICK,
        green: QUICK,
        busy: false,
        regression: false,
    },
    Case {
        name: "A/A, one core busy",
        blue: QUICK,
        green: QUICK,
        busy: true,
        regression: false,
    },
    Case {
        name: "green twice as slow (4 ms against 2 ms)",
        blue: QUICK,
        green: SLOW,
        busy: false,
        regression: true,
    },
    Case {
        name: "green twice as slow, one core busy",
        blue: QUICK,
        green: SLOW,
        busy: true,
        regression: true,
    },
    Case {
        name: "green +5 pp errors (1 in 20)",
        blue: QUICK,
        green: FAILING,
        busy: false,
        regression: true,
    },
];

/// The hold of each step: 10% → 50% → 100%, judged every 500 ms.
const HOLD: &str = "2s";

pub fn section(server: &str, quick: bool) -> Result<String, String> {
    // The goal asks for 10 A/A rollouts in each condition; a regression is rolled back in
    // seconds, 3 of each show it.
    let counts = |regression: bool| match (quick, regression) {
        (true, _) => 2,
        (false, false) => 10,
        (false, true) => 3,
    };
    let mut text = format!(
        "\n### Judgement on the test bed\n\nRollouts with the default gates (steps 10/50/100%, hold {HOLD}, interval 500 ms, `min_samples` 20, confidence 0.99), real servers (each answers after the delay shown), a client opening a new connection per request one after another, 10 rollouts per A/A row and 3 per regression (2 each with `--quick`); \"one core busy\" runs a bounded spinning thread beside them. Expected: every A/A promoted, every regression rolled back. Time to decide: from the rollout's start to its promotion or rollback, by the journal's clock (median, max).\n\n| case | rollouts | promoted | rolled back | as expected | time to decide p50 / max s | a reason |\n|---|---:|---:|---:|---|---:|---|\n"
    );
    for Case {
        name,
        blue,
        green,
        busy,
        regression,
    } in CASES
    {
        let count = counts(regression);
        let mut ends = Vec::new();
        for _ in 0..count {
            if splitter_tests::bed_binary::stop_requested() {
                return Err("interrupted".to_owned());
            }
            let mut bed = Testbed::with_index(BED, server);
            ends.push(judged::rollout(&mut bed, server, (blue, green), busy, HOLD));
        }
        let back = ends.iter().filter(|e| e.rolled_back()).count();
        let expected = if regression { back == count } else { back == 0 };
        let mut times: Vec<f64> = ends.iter().map(|e| e.decided_in.as_secs_f64()).collect();
        times.sort_by(f64::total_cmp);
        let reason = ends
            .iter()
            .find(|e| e.rolled_back())
            .map_or_else(|| "–".to_owned(), |e| e.reason().replace('|', "/"));
        let _ = writeln!(
            text,
            "| {name} | {count} | {} | {back} | {} | {:.1} / {:.1} | {reason} |",
            count - back,
            if expected { "yes" } else { "**no**" },
            times[times.len() / 2],
            times[times.len() - 1],
        );
    }
    Ok(text)
}
