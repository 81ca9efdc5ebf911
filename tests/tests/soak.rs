//! The soak: continuous traffic (new connections, and keep-alive connections that keep asking)
//! while the operator and the daemon do everything they do, cycle after cycle: 100 share
//! changes, a drill, three reloads, a SIGKILL of the daemon and its restart, a rollout to
//! promotion. Expected: not one failed request, not one connection moved between versions.
//!
//! Two minutes by default (`cargo xtask test` in CI); `SPLITTER_SOAK_SECONDS` runs it longer.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use splitter_tests::{http::KeepAlive, load::Load, require_root, testbed::Testbed};

const SERVER: &str = env!("CARGO_BIN_EXE_splitter-testbed-server");
/// Keep-alive connections that ask again and again, each pinned to the version it started on.
const KEEP_ALIVE: usize = 16;
/// Pause between two rounds of requests on the keep-alive connections.
const KEEP_ALIVE_GAP: Duration = Duration::from_millis(50);
/// The longest one rollout may take to end.
const ROLLOUT_LIMIT: Duration = Duration::from_secs(60);

fn soak_seconds() -> u64 {
    std::env::var("SPLITTER_SOAK_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120)
}

/// Keep-alive connections from the client, each sending a request every `KEEP_ALIVE_GAP`
/// until stopped: [requests answered by their first version, failed, moved].
struct Pinned {
    running: Arc<AtomicBool>,
    counts: Arc<[AtomicU64; 3]>,
    thread: thread::JoinHandle<()>,
}

impl Pinned {
    fn start(bed: &Testbed, limit: Duration) -> Self {
        let running = Arc::new(AtomicBool::new(true));
        let counts: Arc<[AtomicU64; 3]> = Arc::new(Default::default());
        let (flag, tally, vip) = (Arc::clone(&running), Arc::clone(&counts), bed.vip());
        let thread = bed.client.spawn(move || {
            let mut open: Vec<(KeepAlive, String)> = (0..KEEP_ALIVE)
                .map(|_| {
                    let mut conn = KeepAlive::connect(vip).expect("connect");
                    let version = conn.request().expect("first request");
                    (conn, version)
                })
                .collect();
            let deadline = Instant::now() + limit;
            while flag.load(Ordering::SeqCst) && Instant::now() < deadline {
                for (conn, version) in &mut open {
                    let slot = match conn.request() {
                        Ok(now) if now == *version => 0,
                        Ok(_) => 2,
                        Err(_) => 1,
                    };
                    tally[slot].fetch_add(1, Ordering::Relaxed);
                }
                thread::sleep(KEEP_ALIVE_GAP);
            }
        });
        Self {
            running,
            counts,
            thread,
        }
    }

    fn stop(self) -> [u64; 3] {
        self.running.store(false, Ordering::SeqCst);
        self.thread.join().expect("keep-alive thread");
        [0, 1, 2].map(|i| self.counts[i].load(Ordering::Relaxed))
    }
}

fn rollout_running(bed: &Testbed) -> bool {
    bed.ctl(&["rollout", "status", "sentiment"])
        .status
        .success()
}

/// The candidate's name: the version that is not live.
fn candidate(bed: &Testbed) -> String {
    bed.status()["services"][0]["candidate"]
        .as_str()
        .expect("candidate")
        .to_owned()
}

#[test]
fn continuous_traffic_through_rollouts_reloads_restarts_share_changes_and_drills() {
    require_root!();
    let seconds = soak_seconds();
    let mut bed = Testbed::new(62, SERVER);
    bed.write_config("10");
    bed.start_daemon(&[]);
    let limit = Duration::from_secs(seconds + 120);
    let load = Load::start(&bed, limit);
    let pinned = Pinned::start(&bed, limit);
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut cycles = 0;
    while Instant::now() < end || cycles == 0 {
        cycles += 1;
        // 100 share changes of the candidate, ending at 20%.
        let version = candidate(&bed);
        for i in 0..100 {
            let percent = if i == 99 { 20 } else { 10 + (i * 7) % 31 };
            bed.ctl_ok(&["weight", "sentiment", &version, &percent.to_string()]);
        }
        // A drill: under this traffic it proves the rollback and puts 20% back.
        let drill = bed.ctl(&["drill", "sentiment", "--output", "json"]);
        let report: serde_json::Value =
            serde_json::from_slice(&drill.stdout).expect("drill report");
        assert_eq!(report["outcome"], "passed", "cycle {cycles}: {report}");
        // Three reloads of the unchanged file.
        for _ in 0..3 {
            bed.ctl_ok(&["reload"]);
        }
        // A crash and a restart: the data plane keeps steering meanwhile.
        bed.kill_daemon();
        thread::sleep(Duration::from_millis(300));
        bed.start_daemon(&[]);
        // A rollout of the candidate to promotion.
        bed.ctl_ok(&[
            "rollout",
            "start",
            "sentiment",
            "--steps",
            "30,60,100",
            "--hold",
            "1s",
            "--interval",
            "300ms",
            "--min-samples",
            "5",
            "--max-error-rate",
            "0.05",
            "--max-p99-vs-live",
            "50",
        ]);
        let started = Instant::now();
        while rollout_running(&bed) {
            assert!(
                started.elapsed() < ROLLOUT_LIMIT,
                "cycle {cycles}: the rollout did not end within {ROLLOUT_LIMIT:?}"
            );
            thread::sleep(Duration::from_millis(200));
        }
        assert_eq!(
            bed.status()["services"][0]["live"],
            version.as_str(),
            "cycle {cycles}: the candidate was promoted"
        );
    }
    let [(blue_ok, blue_failed), (green_ok, green_failed)] = load.stop();
    let [kept, failed, moved] = pinned.stop();
    eprintln!(
        "soak: {seconds} s, {cycles} cycles; new connections blue {blue_ok} green {green_ok}; keep-alive requests {kept}"
    );
    assert_eq!(
        (blue_failed, green_failed),
        (0, 0),
        "failed new connections over {cycles} cycles"
    );
    assert!(blue_ok > 0 && green_ok > 0);
    assert_eq!(
        (failed, moved),
        (0, 0),
        "keep-alive requests failed or answered by the other version ({kept} kept)"
    );
    assert!(kept > 0);
}
