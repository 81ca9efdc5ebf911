//! End to end for the gates' statistics, with the default gates on real servers: identical
//! versions are promoted, quiet and with a busy core; a candidate twice as slow is rolled back
//! by the median gate, one with a slow tail by the p99 gate, and one failing 1 request in 5 by
//! the error gates, each reason saying the estimate, its interval and the threshold.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use splitter_tests::{load::Load, require_root, testbed::Testbed};

const SERVER: &str = env!("CARGO_BIN_EXE_splitter-testbed-server");

/// The longest any test's load runs.
const LOAD_LIMIT: Duration = Duration::from_secs(90);

/// Starts a rollout of green with the default gates: 10% → 50% → 100%, a `hold` per step, judged
/// every 500 ms.
fn start(bed: &Testbed, hold: &str) {
    bed.ctl_ok(&[
        "rollout",
        "start",
        "sentiment",
        "--steps",
        "10,50,100",
        "--hold",
        hold,
        "--interval",
        "500ms",
    ]);
}

/// Waits for the rollout to end; the journal's rollback or promotion.
fn outcome(bed: &Testbed, limit: Duration) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        let text = bed.ctl_ok(&["history", "--output", "json"]);
        let events: Vec<serde_json::Value> = serde_json::from_str(&text).expect("history JSON");
        if let Some(end) = events
            .into_iter()
            .find(|e| e["kind"] == "rollback" || e["kind"] == "promotion")
        {
            return end;
        }
        assert!(
            Instant::now() < deadline,
            "the rollout did not end in {limit:?}"
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// Replaces `version`'s server with one started with `args`.
fn serve(bed: &mut Testbed, version: &str, args: &[&str]) {
    bed.stop(version);
    let green = version == "green";
    let addr = if green {
        bed.green_addr()
    } else {
        bed.blue_addr()
    };
    bed.serve_on_backend_with(SERVER, green, addr, version, args);
}

/// A bounded busy loop on one core, stopped when dropped: serving hosts are rarely idle.
struct Spinner(Arc<AtomicBool>, Option<thread::JoinHandle<()>>);

impl Spinner {
    fn start(limit: Duration) -> Self {
        let running = Arc::new(AtomicBool::new(true));
        let flag = Arc::clone(&running);
        let handle = thread::spawn(move || {
            let deadline = Instant::now() + limit;
            let mut x = 0u64;
            while flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
            }
        });
        Self(running, Some(handle))
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
        if let Some(handle) = self.1.take() {
            let _ = handle.join();
        }
    }
}

/// A rollout of `green_args` against `blue_args` with the default gates and a 2 s hold; the
/// journal's end.
fn rollout(blue_args: &[&str], green_args: &[&str], busy: bool) -> serde_json::Value {
    rollout_held(blue_args, green_args, busy, "2s")
}

fn rollout_held(
    blue_args: &[&str],
    green_args: &[&str],
    busy: bool,
    hold: &str,
) -> serde_json::Value {
    let mut bed = Testbed::new(SERVER);
    serve(&mut bed, "blue", blue_args);
    serve(&mut bed, "green", green_args);
    bed.write_config("0");
    bed.start_daemon(&[]);
    let _spinner = busy.then(|| Spinner::start(Duration::from_secs(60)));
    let load = Load::start(&bed, LOAD_LIMIT);
    start(&bed, hold);
    let end = outcome(&bed, Duration::from_secs(60));
    load.stop();
    end
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn identical_versions_are_promoted_quiet_and_with_a_busy_core() {
    require_root!();
    for busy in [false, true] {
        for _ in 0..2 {
            let end = rollout(&["--delay-ms", "2"], &["--delay-ms", "2"], busy);
            assert_eq!(end["kind"], "promotion", "busy core: {busy}: {end}");
        }
    }
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_candidate_twice_as_slow_is_rolled_back_by_the_median_gate() {
    require_root!();
    let end = rollout(&["--delay-ms", "5"], &["--delay-ms", "10"], false);
    assert_eq!(end["kind"], "rollback", "{end}");
    let reason = end["reason"].as_str().unwrap_or_default();
    // "median 10.2 ms vs live 5.1 ms: +100% [+90%, +110%] > +10%"
    assert!(
        reason.contains("median") && reason.contains("vs live") && reason.contains("> +10%"),
        "{reason}"
    );
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_slow_tail_is_rolled_back_by_the_p99_gate() {
    require_root!();
    // One response in 10 waits 40 ms on green: its median is blue's, its p99 is not. A tail
    // needs more requests than a median to be told from noise: a 6 s hold.
    let end = rollout_held(
        &[],
        &["--delay-ms", "40", "--slow-every", "10"],
        false,
        "6s",
    );
    assert_eq!(end["kind"], "rollback", "{end}");
    let reason = end["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("p99") && reason.contains("> +20%"),
        "{reason}"
    );
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_candidate_failing_one_request_in_five_is_rolled_back_by_the_error_gates() {
    require_root!();
    let end = rollout(&[], &["--error-every", "5"], false);
    assert_eq!(end["kind"], "rollback", "{end}");
    let reason = end["reason"].as_str().unwrap_or_default();
    // "errors 19.67% vs live 0.00%: +19.67 pp [+2.60, +46.27] > +1.00 pp"
    assert!(
        reason.contains("vs live 0.00%") && reason.contains("> +1.00 pp"),
        "{reason}"
    );
}
