//! End to end for rollouts run by the daemon: promotion of a healthy candidate, automatic
//! rollback of a bad one, no promotion without traffic, operator overrides, and a rollout that
//! survives a SIGKILL of the daemon.

use std::{
    thread,
    time::{Duration, Instant},
};

use splitter_tests::{
    load::Load,
    require_root,
    testbed::{Testbed, counted, metric},
};

const SERVER: &str = env!("CARGO_BIN_EXE_splitter-testbed-server");

/// The longest any test's load runs.
const LOAD_LIMIT: Duration = Duration::from_secs(60);

fn rollout(bed: &Testbed) -> Option<serde_json::Value> {
    let out = bed.ctl(&["rollout", "status", "sentiment", "--output", "json"]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).expect("rollout JSON"))
}

fn history(bed: &Testbed) -> Vec<serde_json::Value> {
    let text = bed.ctl_ok(&["history", "--limit", "500", "--output", "json"]);
    let mut events: Vec<serde_json::Value> = serde_json::from_str(&text).expect("history JSON");
    events.reverse(); // oldest first
    events
}

/// Starts 10% → 50% → 100% with a 1 s hold, judged every 300 ms on at least 5 requests, with the
/// default latency gates and `extra` options after these.
fn start_healthy_rollout_with(bed: &Testbed, extra: &[&str]) -> String {
    let mut args = vec![
        "rollout",
        "start",
        "sentiment",
        "--steps",
        "10,50,100",
        "--hold",
        "1s",
        "--interval",
        "300ms",
        "--min-samples",
        "5",
        "--max-error-rate",
        "0.05",
    ];
    args.extend_from_slice(extra);
    bed.ctl_ok(&args)
}

fn start_healthy_rollout(bed: &Testbed) -> String {
    start_healthy_rollout_with(bed, &[])
}

/// The kinds of the journal's events, oldest first, without the gate evaluations.
fn decisions(bed: &Testbed) -> Vec<String> {
    history(bed)
        .iter()
        .filter_map(|e| e["kind"].as_str().map(str::to_owned))
        .filter(|k| k != "gate_evaluation")
        .collect()
}

fn wait_until(bed: &Testbed, what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {limit:?}; rollout: {:?}; last events: {:?}",
            rollout(bed),
            history(bed).iter().rev().take(4).collect::<Vec<_>>()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_healthy_candidate_goes_step_by_step_to_promotion() {
    require_root!();
    let mut bed = Testbed::new(SERVER);
    bed.write_config("0");
    bed.start_daemon(&[]);
    let load = Load::start(&bed, LOAD_LIMIT);
    let out = start_healthy_rollout(&bed);
    assert!(out.contains("green at 10%"), "{out}");
    wait_until(&bed, "the promotion", Duration::from_secs(30), || {
        bed.status()["services"][0]["live"] == "green"
    });
    let [(blue_ok, blue_failed), (green_ok, green_failed)] = load.stop();
    assert_eq!(
        (blue_failed, green_failed),
        (0, 0),
        "blue {blue_ok} ok, green {green_ok} ok"
    );
    assert!(green_ok > 0);
    assert_eq!(
        bed.status()["services"][0]["share_percent"]["green"].as_f64(),
        Some(100.0)
    );
    assert!(rollout(&bed).is_none(), "the rollout is over");
    assert_eq!(
        metric(
            &bed.metrics(),
            r#"splitter_rollouts_ended_total{service="sentiment",outcome="promoted",actor="gates"}"#
        ),
        1.0
    );
    assert_eq!(
        decisions(&bed),
        ["rollout_started", "step", "step", "promotion"]
    );
    let previous = &bed.status()["services"][0]["previous"];
    assert_eq!(previous["version"], "blue", "{previous}");
    assert_eq!(previous["retired"], false, "{previous}");
    assert!(bed.ctl_ok(&["status"]).contains("previous blue: attached"));
    // Within the rollback window, a rollback makes the previous version live again, once.
    let out = bed.ctl_ok(&["rollback", "sentiment"]);
    assert!(out.contains("live blue"), "{out}");
    assert_eq!(bed.status()["services"][0]["live"], "blue");
    // Repeated, it says so and succeeds: nothing is written.
    let again = bed.ctl_ok(&["rollback", "sentiment"]);
    assert!(again.contains("already rolled back"), "{again}");
    assert_eq!(bed.status()["services"][0]["live"], "blue");
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_bad_candidate_is_rolled_back_within_two_intervals_of_its_first_failing_window() {
    require_root!();
    let mut bed = Testbed::new(SERVER);
    bed.restart_green_with(SERVER, &["--error-every", "5"]);
    bed.write_config("0");
    bed.start_daemon(&[]);
    let load = Load::start(&bed, LOAD_LIMIT);
    let interval = Duration::from_millis(500);
    bed.ctl_ok(&[
        "rollout",
        "start",
        "sentiment",
        "--steps",
        "50,100",
        "--hold",
        "10s",
        "--interval",
        "500ms",
        "--min-samples",
        "5",
        "--max-error-rate",
        "0.05",
        "--failure-limit",
        "2",
    ]);
    wait_until(&bed, "the rollback", Duration::from_secs(30), || {
        rollout(&bed).is_none()
    });
    // The candidate's connections are drained, and the drain completes the rollback's entry.
    wait_until(&bed, "the rollback's drain", Duration::from_secs(5), || {
        history(&bed)
            .iter()
            .any(|e| e["kind"] == "rollback" && e["details"]["drain"]["done"] == true)
    });
    let rollback = history(&bed)
        .into_iter()
        .find(|e| e["kind"] == "rollback")
        .expect("the rollback");
    let drain = &rollback["details"]["drain"];
    assert_eq!(drain["new_connections_after_decision"], 0, "{rollback}");
    assert_eq!(drain["left"], 0, "{rollback}");
    assert_eq!(
        rollback["decision_to_last_response_us"], drain["decision_to_last_response_us"],
        "{rollback}"
    );
    let [(_, blue_failed), (_, green_failed)] = load.stop();
    assert_eq!(blue_failed, 0, "no request on the live pool failed");
    assert!(green_failed > 0, "the candidate's errors were real");
    let status = bed.status();
    assert_eq!(status["services"][0]["live"], "blue");
    assert_eq!(
        metric(
            &bed.metrics(),
            r#"splitter_rollouts_ended_total{service="sentiment",outcome="rolled_back",actor="gates"}"#
        ),
        1.0
    );
    assert_eq!(
        status["services"][0]["share_percent"]["green"].as_f64(),
        Some(0.0)
    );

    let events = history(&bed);
    let first_fail =
        splitter_tests::judged::first_failing_evaluation(&events).expect("a failing evaluation");
    let rollback = events
        .iter()
        .find(|e| e["kind"] == "rollback")
        .expect("a rollback");
    assert_eq!(rollback["actor"], "gates");
    // The error gates: the safety net ("error rate 20.00% [...] > 5.00%") or the increase
    // over the live pool ("errors 20.00% vs live 0.00%: ..."), whichever is convinced first.
    let reason = rollback["reason"].as_str().unwrap_or_default().to_owned();
    assert!(
        reason.contains("error rate") || reason.contains("vs live 0.00%"),
        "{rollback}"
    );
    let first_words = if reason.starts_with("error rate") {
        "error rate"
    } else {
        "errors "
    };
    assert!(
        rollback["decision_to_write_us"].as_u64().is_some(),
        "{rollback}"
    );
    let after = Duration::from_millis(
        rollback["at_ms"].as_u64().unwrap_or(0) - first_fail["at_ms"].as_u64().unwrap_or(0),
    );
    assert!(
        after <= 2 * interval + Duration::from_millis(200),
        "rolled back {after:?} after the first failing window"
    );
    let started = events
        .iter()
        .find(|e| e["kind"] == "rollout_started")
        .and_then(|e| e["id"].as_i64())
        .expect("the rollout's start");
    let review = bed.ctl_ok(&["review", &started.to_string()]);
    for part in [
        "# Rollout",
        &format!("rollback by gates: {first_words}"),
        "Decision to the last response of the version left",
        "## Gate values before the rollback",
        "| fail: ",
        "What pre-deployment test would have caught it",
    ] {
        assert!(review.contains(part), "no `{part}` in:\n{review}");
    }
    let missing = bed.ctl(&["review", "999999"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not the start of a rollout"));
    // The report draws the recorded rollout from the journal's samples.
    let svg_path = bed.dir.join("report.svg");
    let html_path = bed.dir.join("report.html");
    let png_path = bed.dir.join("report.png");
    for path in [&svg_path, &html_path, &png_path] {
        let said = bed.ctl_ok(&[
            "report",
            &started.to_string(),
            "--out",
            path.to_str().expect("utf-8"),
        ]);
        assert!(said.contains("samples"), "{said}");
    }
    let svg = std::fs::read_to_string(&svg_path).expect("svg");
    for part in [
        "<svg",
        "Candidate share",
        "Error rate per version",
        "rollback",
        // Blue's and green's data lines (markers and legends are drawn thinner).
        "stroke=\"#1F77B4\" stroke-width=\"2\"",
        "stroke=\"#2CA02C\" stroke-width=\"2\"",
    ] {
        assert!(svg.contains(part), "no `{part}` in the report");
    }
    let png = std::fs::read(&png_path).expect("png");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000);
    let html = std::fs::read_to_string(&html_path).expect("html");
    assert!(
        html.contains("<svg") && html.contains("error rate"),
        "{html}"
    );
    let no_samples = bed.ctl_ok(&[
        "report",
        &started.to_string(),
        "--out",
        svg_path.to_str().expect("utf-8"),
    ]);
    assert!(
        !no_samples.contains(" 0 samples"),
        "the daemon recorded no samples: {no_samples}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&bed.ctl_ok(&["summary", "--output", "json"])).expect("summary");
    assert_eq!(summary["rollbacks"].as_u64(), Some(1), "{summary}");
    assert!(
        summary["mean_time_to_rollback_us"].as_f64().is_some(),
        "{summary}"
    );
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn without_traffic_a_rollout_holds_and_never_promotes() {
    require_root!();
    let mut bed = Testbed::new(SERVER);
    // The plan comes from the config; the command line overrides one field of it.
    bed.write_config_with(
        "0",
        "[service.rollout]\nsteps = [10, 100]\nhold_ms = 60000\ninterval_ms = 200\nmin_samples = 5\n",
    );
    bed.start_daemon(&[]);
    // Bad requests are refused with their reason and start nothing.
    for (args, reason) in [
        (
            &["rollout", "start", "sentiment", "--steps", "50,10,100"][..],
            "steps must rise",
        ),
        (
            &["rollout", "start", "sentiment", "--steps", "10,50"],
            "last step must be 100",
        ),
        (&["rollout", "start", "sentiment", "--hold", "5x"], "5x"),
        (
            &["rollout", "start", "sentiment", "--max-error-rate", "2"],
            "not between 0 and 1",
        ),
        (
            &["rollout", "start", "nosuch"],
            "no service or release group `nosuch`",
        ),
        (
            &["rollout", "status", "sentiment"],
            "no rollout of `sentiment`",
        ),
        (
            &["rollout", "abort", "sentiment"],
            "no rollout of `sentiment`",
        ),
    ] {
        let out = bed.ctl(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
    }
    assert_eq!(
        bed.status()["services"][0]["share_percent"]["green"].as_f64(),
        Some(0.0)
    );
    let started = bed.ctl_ok(&["rollout", "start", "sentiment", "--hold", "200ms"]);
    assert!(started.contains("(steps 10 → 100)"), "{started}");
    let again = bed.ctl(&["rollout", "start", "sentiment"]);
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already running"),
        "a second rollout of the same service is refused"
    );
    thread::sleep(Duration::from_secs(2));
    let status = rollout(&bed).expect("still running");
    // Steps count from 1 in JSON as in the text; gates give numbers named with their units.
    assert_eq!(status["step"].as_u64(), Some(1));
    assert_eq!(status["steps"].as_u64(), Some(2));
    let text = bed.ctl_ok(&["rollout", "status", "sentiment"]);
    assert!(text.contains("(step 1 of 2)"), "{text}");
    let samples = status["gates"]
        .as_array()
        .and_then(|gates| gates.iter().find(|g| g["gate"] == "min_samples"))
        .unwrap_or_else(|| panic!("no min_samples gate: {status}"));
    assert_eq!(samples["limit_requests"].as_f64(), Some(5.0), "{samples}");
    assert!(samples["value_requests"].as_f64().is_some(), "{samples}");
    assert_eq!(samples["state"], "waiting", "{samples}");
    assert!(
        status["last_judgement"]
            .as_str()
            .is_some_and(|j| j.starts_with("inconclusive")),
        "{status}"
    );
    assert_eq!(bed.status()["services"][0]["live"], "blue");
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn an_operator_override_pauses_the_rollout_and_is_journaled() {
    require_root!();
    let mut bed = Testbed::new(SERVER);
    bed.write_config("0");
    bed.start_daemon(&[]);
    bed.ctl_ok(&[
        "rollout",
        "start",
        "sentiment",
        "--steps",
        "10,100",
        "--hold",
        "1h",
        "--interval",
        "200ms",
    ]);
    bed.ctl_ok(&["weight", "sentiment", "green", "0"]);
    wait_until(&bed, "the pause", Duration::from_secs(5), || {
        rollout(&bed).is_some_and(|r| {
            r["paused"]
                .as_str()
                .is_some_and(|p| p.contains("changed outside"))
        })
    });
    assert!(
        history(&bed)
            .iter()
            .any(|e| e["kind"] == "operator_override")
    );
    assert_eq!(
        bed.status()["services"][0]["share_percent"]["green"].as_f64(),
        Some(0.0),
        "the operator's share stands"
    );
    // A resume goes on from the operator's share instead of pausing again.
    assert!(
        bed.ctl_ok(&["rollout", "resume", "sentiment"])
            .contains("resumed at green 0%")
    );
    thread::sleep(Duration::from_millis(600));
    assert_eq!(
        rollout(&bed).expect("still running")["paused"],
        serde_json::Value::Null,
        "three evaluations later it still runs"
    );
    // An abort ends it; the status has no rollout any more.
    assert!(
        bed.ctl_ok(&["rollout", "abort", "sentiment"])
            .contains("aborted")
    );
    assert!(rollout(&bed).is_none());
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_daemon_killed_mid_rollout_resumes_at_the_same_step() {
    require_root!();
    let mut bed = Testbed::new(SERVER);
    // No rollback window: once promoted, the previous version is retired at once.
    bed.write_config_with("0", "rollback_window_ms = 0\n");
    bed.start_daemon(&[]);
    let load = Load::start(&bed, LOAD_LIMIT);
    start_healthy_rollout(&bed);
    wait_until(&bed, "the second step", Duration::from_secs(20), || {
        rollout(&bed).is_some_and(|r| r["step"].as_u64() == Some(2))
    });
    bed.kill_daemon();
    // The kernel keeps splitting at the step's share while no daemon runs.
    assert_eq!(
        bed.status()["services"][0]["share_percent"]["green"].as_f64(),
        Some(50.0)
    );
    bed.start_daemon(&[]);
    let resumed = rollout(&bed).expect("the rollout is back");
    assert_eq!(resumed["step"].as_u64(), Some(2), "{resumed}");
    assert_eq!(resumed["candidate_percent"].as_f64(), Some(50.0));
    assert!(bed.daemon_log().contains("rollout resumed"));
    wait_until(&bed, "the promotion", Duration::from_secs(30), || {
        bed.status()["services"][0]["live"] == "green"
    });
    let [(_, blue_failed), (green_ok, green_failed)] = load.stop();
    assert_eq!((blue_failed, green_failed), (0, 0));
    assert!(green_ok > 0);
    assert_eq!(
        decisions(&bed),
        ["rollout_started", "step", "step", "promotion"]
    );
    assert_eq!(
        bed.status()["services"][0]["previous"]["retired"],
        true,
        "a zero window retires blue at once"
    );
    let late = bed.ctl(&["rollback", "sentiment"]);
    assert!(
        String::from_utf8_lossy(&late.stderr).contains("blue was retired"),
        "{late:?}"
    );
    assert_eq!(bed.status()["services"][0]["live"], "green");
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_drill_proves_the_rollback_measures_it_restores_the_share_and_is_journaled() {
    require_root!();
    let mut bed = Testbed::new(SERVER);
    bed.write_config_with(
        "30",
        "[service.health]\ninterval_ms = 200\ntimeout_ms = 200\nunhealthy_after = 2\nhealthy_after = 2\nhttp_path = \"/healthz\"\n",
    );
    bed.start_daemon(&[]);
    // Without traffic nothing can be proven: inconclusive, a failing exit, the share back.
    let idle = bed.ctl(&["drill", "sentiment"]);
    assert_eq!(
        idle.status.code(),
        Some(3),
        "a drill that did not pass exits 3"
    );
    assert!(String::from_utf8_lossy(&idle.stdout).contains("inconclusive"));
    let green_share =
        |bed: &Testbed| bed.status()["services"][0]["share_percent"]["green"].as_f64();
    assert_eq!(green_share(&bed), Some(30.0));

    let load = Load::start(&bed, LOAD_LIMIT);
    let text = bed.ctl_ok(&["drill", "sentiment", "--output", "json"]);
    let report: serde_json::Value = serde_json::from_str(&text).expect("drill JSON");
    assert_eq!(report["outcome"], "passed", "{report}");
    assert_eq!(report["new_on_candidate"].as_u64(), Some(0), "{report}");
    // At 30%, a rollback that did nothing would put 20 new connections in a row on the live
    // pool less than once in a thousand drills: 20 are needed, and came.
    assert_eq!(report["connections_needed"].as_u64(), Some(20), "{report}");
    assert!(
        report["new_on_live"].as_u64().is_some_and(|n| n >= 20),
        "{report}"
    );
    assert_eq!(report["drain"]["version"], "green", "{report}");
    assert_eq!(report["restored"], "green at 30%");
    assert_eq!(green_share(&bed), Some(30.0));
    let [(_, blue_failed), (_, green_failed)] = load.stop();
    assert_eq!((blue_failed, green_failed), (0, 0));

    let drills: Vec<serde_json::Value> = history(&bed)
        .into_iter()
        .filter(|e| e["kind"] == "drill")
        .collect();
    assert_eq!(drills.len(), 2, "{drills:?}");
    assert_eq!(
        drills[1]["details"]["connections_needed"].as_u64(),
        Some(20)
    );
    assert_eq!(drills[0]["reason"], "inconclusive", "{drills:?}");
    let summary: serde_json::Value =
        serde_json::from_str(&bed.ctl_ok(&["summary", "--output", "json"])).expect("summary");
    assert_eq!(summary["drills"].as_u64(), Some(2), "{summary}");

    // Refusals change nothing: a drill onto a pool with no healthy backend, and (after a
    // rollback) a drill with nothing to roll back.
    bed.stop("blue");
    wait_until(&bed, "blue marked down", Duration::from_secs(5), || {
        bed.status()["services"][0]["pools"]["blue"]["backends"][0]["healthy"] == false
    });
    let out = bed.ctl(&["drill", "sentiment"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no healthy backend"),
        "{out:?}"
    );
    assert_eq!(green_share(&bed), Some(30.0));
    bed.ctl_ok(&["rollback", "sentiment"]);
    let out = bed.ctl(&["drill", "sentiment"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nothing to roll back"),
        "{out:?}"
    );
}

/// Starts the healthy plan with one PromQL gate; the kernel sees nothing wrong with either
/// version in this test, so the PromQL gate decides.
fn start_promql_rollout(bed: &Testbed, prometheus: &str, gate: &str) -> String {
    start_healthy_rollout_with(
        bed,
        &["--prometheus-url", prometheus, "--promql-gate", gate],
    )
}

/// Whether a passing judgement journaled a PromQL reading within `LOW_CONFIDENCE`'s bound.
fn journaled_a_confident_reading(bed: &Testbed) -> bool {
    history(bed).into_iter().any(|e| {
        e["kind"] == "gate_evaluation"
            && e["details"]["judgement"] == "pass"
            && e["details"]["promql"][0]["reading"]
                .as_str()
                .is_some_and(|r| r.parse::<f64>().is_ok_and(|v| v <= 0.1))
    })
}

/// The low-confidence share of the candidate's predictions, as the model servers export it.
const LOW_CONFIDENCE: &str = r#"lowconf:sum(rate(model_low_confidence_total{version="$candidate"}[3s])) / sum(rate(model_predictions_total{version="$candidate"}[3s])) <= 0.1"#;

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn promql_gates_on_a_real_prometheus_hold_without_data_promote_and_roll_back() {
    require_root!();
    let mut bed = Testbed::new(SERVER);
    let prometheus = splitter_tests::prometheus::start(&mut bed);
    bed.write_config("0");
    bed.start_daemon(&[]);
    let load = Load::start(&bed, Duration::from_secs(90));
    let judged = |bed: &Testbed, what: &str| {
        rollout(bed).is_some_and(|r| {
            r["last_judgement"]
                .as_str()
                .is_some_and(|j| j.contains(what))
        })
    };

    // An unreachable server and a query without data both hold the rollout at its first step.
    start_promql_rollout(&bed, "http://127.0.0.1:9", LOW_CONFIDENCE);
    wait_until(
        &bed,
        "an inconclusive judgement",
        Duration::from_secs(10),
        || judged(&bed, "inconclusive: PromQL gate lowconf: error"),
    );
    bed.ctl_ok(&["rollout", "abort", "sentiment"]);
    start_promql_rollout(
        &bed,
        &prometheus,
        "lowconf:sum(rate(no_such_metric[3s])) <= 0.1",
    );
    wait_until(
        &bed,
        "a judgement without data",
        Duration::from_secs(10),
        || judged(&bed, "PromQL gate lowconf: no data"),
    );
    thread::sleep(Duration::from_secs(2));
    let held = rollout(&bed).unwrap_or_else(|| {
        let ended = history(&bed)
            .into_iter()
            .rev()
            .find(|e| e["kind"] == "rollback");
        panic!("the rollout should still hold: {ended:?}")
    });
    assert_eq!(held["step"], 1, "{held}");
    assert_eq!(bed.status()["services"][0]["live"], "blue");
    bed.ctl_ok(&["rollout", "abort", "sentiment"]);
    let metrics = bed.metrics();
    for result in ["error", "no_data"] {
        assert!(
            metric(
                &metrics,
                &format!(
                    r#"splitter_promql_queries_total{{service="sentiment",gate="lowconf",result="{result}"}}"#
                )
            ) >= 1.0,
            "{result}"
        );
    }

    // Green's predictions are confident: the gate passes and green is promoted.
    start_promql_rollout(&bed, &prometheus, LOW_CONFIDENCE);
    wait_until(&bed, "the promotion", Duration::from_secs(40), || {
        bed.status()["services"][0]["live"] == "green"
    });
    assert!(
        journaled_a_confident_reading(&bed),
        "a passing window with a PromQL reading is journaled"
    );

    // Blue, now the candidate, comes back with a quarter of its predictions unsure: the
    // kernel sees nothing wrong (no 5xx, no latency), the PromQL gate rolls it back.
    bed.stop("blue");
    bed.serve_on_backend_with(
        SERVER,
        false,
        bed.blue_addr(),
        "blue",
        &["--low-confidence-every", "4"],
    );
    start_promql_rollout(&bed, &prometheus, LOW_CONFIDENCE);
    wait_until(&bed, "the rollback", Duration::from_secs(40), || {
        rollout(&bed).is_none()
    });
    let rollback = history(&bed)
        .into_iter()
        .rev()
        .find(|e| e["kind"] == "rollback")
        .expect("a rollback");
    assert_eq!(rollback["actor"], "gates", "{rollback}");
    assert!(
        rollback["reason"]
            .as_str()
            .is_some_and(|r| r.contains("lowconf 0.") && r.contains("> 0.1")),
        "{rollback}"
    );
    let status = bed.status();
    assert_eq!(status["services"][0]["live"], "green");
    assert_eq!(
        status["services"][0]["share_percent"]["blue"].as_f64(),
        Some(0.0)
    );
    let [(_, blue_failed), (_, green_failed)] = load.stop();
    assert_eq!((blue_failed, green_failed), (0, 0));
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn scheduled_drills_run_by_themselves_and_stand_aside_for_a_rollout() {
    require_root!();
    let mut bed = Testbed::new(SERVER);
    bed.write_config_with("20", "drill_every_ms = 1500\n");
    bed.start_daemon(&[]);
    let load = Load::start(&bed, LOAD_LIMIT);
    let scheduled = |bed: &Testbed| -> Vec<serde_json::Value> {
        history(bed)
            .into_iter()
            .filter(|e| e["kind"] == "drill" && e["actor"] == "schedule")
            .collect()
    };
    wait_until(&bed, "a scheduled drill", Duration::from_secs(10), || {
        !scheduled(&bed).is_empty()
    });
    let drill = &scheduled(&bed)[0];
    assert_eq!(drill["reason"], "passed", "{drill}");
    // At 20%: 31 new connections in a row on the live pool.
    assert_eq!(
        drill["details"]["connections_needed"].as_u64(),
        Some(31),
        "{drill}"
    );
    assert!(
        drill["details"]["new_on_live"].as_u64() >= drill["details"]["connections_needed"].as_u64(),
        "{drill}"
    );
    assert_eq!(drill["details"]["restored"], "green at 20%", "{drill}");
    let drills = |bed: &Testbed, outcome: &str| {
        counted(
            &bed.metrics(),
            &format!(
                r#"splitter_drills_total{{service="sentiment",outcome="{outcome}",actor="schedule"}}"#
            ),
        )
        .unwrap_or(0.0)
    };
    assert!(drills(&bed, "passed") >= 1.0);

    // A rollout in progress is never interrupted: the drill is refused and counted.
    bed.ctl_ok(&[
        "rollout",
        "start",
        "sentiment",
        "--steps",
        "50,100",
        "--hold",
        "60s",
    ]);
    let ran = scheduled(&bed).len();
    wait_until(&bed, "a refused drill", Duration::from_secs(10), || {
        drills(&bed, "refused") >= 1.0
    });
    assert_eq!(
        scheduled(&bed).len(),
        ran,
        "no drill ran during the rollout"
    );
    let running = rollout(&bed).expect("the rollout runs on");
    assert_eq!(
        running["candidate_percent"].as_f64(),
        Some(50.0),
        "{running}"
    );
    assert!(running["paused"].is_null(), "{running}");
    bed.ctl_ok(&["rollout", "abort", "sentiment"]);
    let [(_, blue_failed), (_, green_failed)] = load.stop();
    assert_eq!((blue_failed, green_failed), (0, 0));
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn promql_gates_reach_a_prometheus_behind_tls_and_basic_auth() {
    require_root!();
    let mut bed = Testbed::new(SERVER);
    let prometheus = splitter_tests::prometheus::start_secured(&mut bed);
    bed.write_config("0");
    bed.start_daemon(&[]);
    let load = Load::start(&bed, Duration::from_secs(60));
    let ca = prometheus.ca_file.display().to_string();
    let password = prometheus.password_file.display().to_string();
    let wrong = prometheus.wrong_password_file.display().to_string();
    let user = splitter_tests::prometheus::USER;
    let start = |extra: &[&str]| {
        let mut args = vec!["--prometheus-url", prometheus.url.as_str()];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--promql-gate", LOW_CONFIDENCE]);
        start_healthy_rollout_with(&bed, &args)
    };
    let judgement = |bed: &Testbed| {
        rollout(bed)
            .and_then(|r| r["last_judgement"].as_str().map(str::to_owned))
            .unwrap_or_default()
    };

    // A wrong password: Prometheus answers 401, the reading is an error and the step holds.
    start(&[
        "--prometheus-ca-file",
        &ca,
        "--prometheus-user",
        user,
        "--prometheus-password-file",
        &wrong,
    ]);
    wait_until(
        &bed,
        "a judgement on a 401",
        Duration::from_secs(10),
        || {
            judgement(&bed).contains("PromQL gate lowconf: error")
                && judgement(&bed).contains("401")
        },
    );
    assert_eq!(rollout(&bed).expect("running")["step"], 1);
    bed.ctl_ok(&["rollout", "abort", "sentiment"]);

    // The right password, but trusting another CA: the server's certificate is refused.
    let other_ca = prometheus.other_ca_file.display().to_string();
    start(&[
        "--prometheus-ca-file",
        &other_ca,
        "--prometheus-user",
        user,
        "--prometheus-password-file",
        &password,
    ]);
    wait_until(
        &bed,
        "a judgement on an untrusted certificate",
        Duration::from_secs(10),
        || {
            let j = judgement(&bed);
            j.contains("PromQL gate lowconf: error") && j.contains("invalid peer certificate")
        },
    );
    bed.ctl_ok(&["rollout", "abort", "sentiment"]);

    // All of it: the gate is read over TLS with basic auth, and green is promoted on it.
    start(&[
        "--prometheus-ca-file",
        &ca,
        "--prometheus-user",
        user,
        "--prometheus-password-file",
        &password,
    ]);
    wait_until(&bed, "the promotion", Duration::from_secs(40), || {
        bed.status()["services"][0]["live"] == "green"
    });
    assert!(
        journaled_a_confident_reading(&bed),
        "a passing window with a reading over TLS is journaled"
    );
    let [(_, blue_failed), (_, green_failed)] = load.stop();
    assert_eq!((blue_failed, green_failed), (0, 0));
}
