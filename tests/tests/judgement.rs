//! End to end for the gates' statistics, with the default gates on real servers: identical
//! versions are promoted, quiet and with a busy core; a candidate twice as slow is rolled back
//! by the median gate, one with a slow tail by the p99 gate, one failing 1 request in 5 by the
//! error-increase gate, and one past an absolute p99 by `max_p99_ms`, each reason saying the
//! estimate, its interval and the threshold. (The absolute `max_error_rate` fails in
//! tests/tests/rollout.rs.)

use splitter_tests::{
    judged::{self, Ended},
    one_at_a_time, require_root,
    testbed::Testbed,
};

const SERVER: &str = env!("CARGO_BIN_EXE_splitter-testbed-server");

/// A rollout of green (`green_args`) against blue (`blue_args`) on a bed of its own, with the
/// default gates and `hold` per step.
fn rollout_held(blue_args: &[&str], green_args: &[&str], busy: bool, hold: &str) -> Ended {
    let mut bed = Testbed::new(SERVER);
    judged::rollout(&mut bed, SERVER, (blue_args, green_args), busy, hold)
}

fn rollout(blue_args: &[&str], green_args: &[&str], busy: bool) -> Ended {
    rollout_held(blue_args, green_args, busy, "2s")
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn identical_versions_are_promoted_quiet_and_with_a_busy_core() {
    require_root!();
    // A quiet core must be quiet: the other tests' load would land on one version or the
    // other in bursts (an identical green was once rolled back on its p99 that way).
    let _serial = one_at_a_time();
    for busy in [false, true] {
        for _ in 0..2 {
            let end = rollout(&["--delay-ms", "2"], &["--delay-ms", "2"], busy);
            assert!(!end.rolled_back(), "busy core: {busy}: {}", end.event);
        }
    }
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_candidate_twice_as_slow_is_rolled_back_by_the_median_gate() {
    require_root!();
    let _serial = one_at_a_time();
    let mut bed = Testbed::new(SERVER);
    // The median gate alone among the latency gates: twice as slow moves the p99 too, and
    // either gate may be convinced first.
    let end = judged::rollout_with(
        &mut bed,
        SERVER,
        (&["--delay-ms", "5"], &["--delay-ms", "10"]),
        false,
        "2s",
        &["--max-p99-vs-live", "1000000"],
    );
    assert!(end.rolled_back(), "{}", end.event);
    let reason = end.reason();
    // "median 10.2 ms vs live 5.1 ms: +100% [+90%, +110%] > +10% and +0.50 ms"
    assert!(
        reason.contains("median") && reason.contains("vs live") && reason.contains("> +10%"),
        "{reason}"
    );
    // The journal keeps every gate of the failing judgement: estimate, interval, evidence.
    let history = bed.ctl_ok(&["history", "--output", "json"]);
    let events: Vec<serde_json::Value> = serde_json::from_str(&history).expect("history JSON");
    let failing = judged::first_failing_evaluation(&events).expect("a failing judgement");
    let median = failing["details"]["gates"]
        .as_array()
        .and_then(|gates| gates.iter().find(|g| g["gate"] == "max_median_vs_live"))
        .expect("the median gate in the journal");
    assert_eq!(median["state"], "fail", "{median}");
    assert!(
        median["value_text"]
            .as_str()
            .is_some_and(|v| v.contains("evidence z") && v.contains('[')),
        "{median}"
    );
    assert!(
        median["evidence_z"].as_f64() >= median["needed_z"].as_f64(),
        "{median}"
    );
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_slow_tail_is_rolled_back_by_the_p99_gate() {
    require_root!();
    let _serial = one_at_a_time();
    // One response in 10 waits 40 ms on green: its median is blue's, its p99 is not. A tail
    // needs more requests than a median to be told from noise: a 6 s hold.
    let end = rollout_held(
        &[],
        &["--delay-ms", "40", "--slow-every", "10"],
        false,
        "6s",
    );
    assert!(end.rolled_back(), "{}", end.event);
    let reason = end.reason();
    assert!(
        reason.contains("p99") && reason.contains("> +20%"),
        "{reason}"
    );
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_candidate_failing_one_request_in_five_is_rolled_back_by_the_error_gates() {
    require_root!();
    let _serial = one_at_a_time();
    let end = rollout(&[], &["--error-every", "5"], false);
    assert!(end.rolled_back(), "{}", end.event);
    let reason = end.reason();
    // "errors 19.67% vs live 0.00%: +19.67 pp [+2.60, +46.27] > +1.00 pp"
    assert!(
        reason.contains("vs live 0.00%") && reason.contains("> +1.00 pp"),
        "{reason}"
    );
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_candidate_past_the_absolute_p99_is_rolled_back_by_max_p99_ms() {
    require_root!();
    let _serial = one_at_a_time();
    let mut bed = Testbed::new(SERVER);
    // Only the absolute gate: every relative one off (a ratio of a million).
    let end = judged::rollout_with(
        &mut bed,
        SERVER,
        (&[], &["--delay-ms", "20"]),
        false,
        "2s",
        &[
            "--max-p99-ms",
            "10",
            "--max-median-vs-live",
            "1000000",
            "--max-p99-vs-live",
            "1000000",
        ],
    );
    assert!(end.rolled_back(), "{}", end.event);
    let reason = end.reason();
    // "p99 20.5 ms [20.1, ∞] > 10.0 ms"
    assert!(
        reason.starts_with("p99 ") && reason.contains("> 10.0 ms"),
        "{reason}"
    );
}
