//! Rollouts judged by the daemon's default gates on a test bed, for the judgement tests and the
//! benchmark: each version's server started with its faults, a sequential client, optionally a
//! busy core, and the journal's end of the rollout with its time to decide.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crate::{load::Load, testbed::Testbed};

/// The longest one judged rollout may take.
pub const ROLLOUT_LIMIT: Duration = Duration::from_secs(60);

/// A bounded busy loop on one core, stopped when dropped: serving hosts are rarely idle.
pub struct Spinner(Arc<AtomicBool>, Option<thread::JoinHandle<()>>);

impl Spinner {
    #[must_use]
    pub fn start(limit: Duration) -> Self {
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

/// How a judged rollout ended.
pub struct Ended {
    /// The journal's `rollback` or `promotion` event.
    pub event: serde_json::Value,
    /// From the rollout's start to that event, by the journal's clock.
    pub decided_in: Duration,
}

impl Ended {
    #[must_use]
    pub fn rolled_back(&self) -> bool {
        self.event["kind"] == "rollback"
    }

    #[must_use]
    pub fn reason(&self) -> &str {
        self.event["reason"].as_str().unwrap_or_default()
    }
}

/// The first gate evaluation of the journal's `events` that failed.
#[must_use]
pub fn first_failing_evaluation(events: &[serde_json::Value]) -> Option<&serde_json::Value> {
    events.iter().find(|e| {
        e["kind"] == "gate_evaluation"
            && e["details"]["judgement"]
                .as_str()
                .is_some_and(|j| j.starts_with("fail"))
    })
}

/// Replaces `version`'s server on `bed` with one started with `args`.
pub fn serve(bed: &mut Testbed, server: &str, version: &str, args: &[&str]) {
    bed.stop(version);
    let green = version == "green";
    let addr = if green {
        bed.green_addr()
    } else {
        bed.blue_addr()
    };
    bed.serve_on_backend_with(server, green, addr, version, args);
}

/// A rollout of green (`green_args`) against blue (`blue_args`) on `bed`, with the default
/// gates: 10% → 50% → 100%, `hold` per step, judged every 500 ms, under a sequential client
/// and, when `busy`, a busy core.
///
/// # Panics
/// When the rollout does not end within `ROLLOUT_LIMIT`, or the journal cannot be read.
pub fn rollout(
    bed: &mut Testbed,
    server: &str,
    versions: (&[&str], &[&str]),
    busy: bool,
    hold: &str,
) -> Ended {
    rollout_with(bed, server, versions, busy, hold, &[])
}

/// Like `rollout`, with `extra` options for `rollout start` (gates changed from the defaults).
///
/// # Panics
/// When the rollout does not end within `ROLLOUT_LIMIT`, or the journal cannot be read.
pub fn rollout_with(
    bed: &mut Testbed,
    server: &str,
    (blue_args, green_args): (&[&str], &[&str]),
    busy: bool,
    hold: &str,
    extra: &[&str],
) -> Ended {
    serve(bed, server, "blue", blue_args);
    serve(bed, server, "green", green_args);
    bed.write_config("0");
    bed.start_daemon(&[]);
    let _spinner = busy.then(|| Spinner::start(ROLLOUT_LIMIT));
    let load = Load::start(bed, ROLLOUT_LIMIT + Duration::from_secs(10));
    start(bed, "sentiment", hold, extra);
    let ended = wait_for_end(bed);
    load.stop();
    ended
}

/// Starts a rollout of `service` on `bed` with the default gates: 10% → 50% → 100%, `hold`
/// per step, judged every 500 ms, with `extra` options.
pub fn start(bed: &Testbed, service: &str, hold: &str, extra: &[&str]) {
    let mut args = vec![
        "rollout",
        "start",
        service,
        "--steps",
        "10,50,100",
        "--hold",
        hold,
        "--interval",
        "500ms",
    ];
    args.extend_from_slice(extra);
    bed.ctl_ok(&args);
}

/// Waits for the running rollout to end; how it ended, from the journal.
///
/// # Panics
/// When the rollout does not end within `ROLLOUT_LIMIT`, or the journal cannot be read.
pub fn wait_for_end(bed: &Testbed) -> Ended {
    let deadline = Instant::now() + ROLLOUT_LIMIT;
    loop {
        let text = bed.ctl_ok(&["history", "--output", "json"]);
        let events: Vec<serde_json::Value> = serde_json::from_str(&text).expect("history JSON");
        let at = |kind: &str| {
            events
                .iter()
                .find(|e| e["kind"] == kind)
                .and_then(|e| e["at_ms"].as_u64())
        };
        if let Some(event) = events
            .iter()
            .find(|e| e["kind"] == "rollback" || e["kind"] == "promotion")
        {
            let started = at("rollout_started").unwrap_or(0);
            let end = event["at_ms"].as_u64().unwrap_or(started);
            return Ended {
                event: event.clone(),
                decided_in: Duration::from_millis(end.saturating_sub(started)),
            };
        }
        assert!(
            Instant::now() < deadline,
            "the rollout did not end in {ROLLOUT_LIMIT:?}"
        );
        thread::sleep(Duration::from_millis(200));
    }
}
