//! The representativeness report and gate end to end: 80 clients in four /24s (the test's
//! prefix length; /16 by default), each with a keep-alive connection. With a staff /24 in
//! `always_candidate`, the canary is mostly staff: its spread diverges from the live pool's,
//! `status` and the metrics say so, and the `max_divergence` gate holds the step. Without the
//! cohort the canary is a fair sample, and the same plan promotes.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use splitter_tests::{
    http::KeepAlive,
    require_root,
    testbed::{Testbed, counted},
};

const SERVER: &str = env!("CARGO_BIN_EXE_splitter-testbed-server");
/// The third octets of the clients' /24s; the first is the staff network.
const NETWORKS: [u8; 4] = [10, 11, 12, 13];
const PER_NETWORK: u8 = 20;

fn clients() -> Vec<Ipv4Addr> {
    NETWORKS
        .iter()
        .flat_map(|n| (1..=PER_NETWORK).map(move |h| Ipv4Addr::new(198, 19, *n, h)))
        .collect()
}

/// A bed whose client has the 80 addresses, with `cohort` in the service. The latency gates are
/// relaxed: these tests are about who the canary's clients are, and the staff prefix's clients
/// run in other threads of the load than the rest, so their times differ for reasons of the bed.
fn bed(steps: &str, cohort: &str) -> Testbed {
    let mut bed = Testbed::new(SERVER);
    bed.add_client_addresses(&clients(), "198.19.0.0/16");
    bed.write_config_with(
        "0",
        &format!(
            "affinity = \"client\"\nclient_prefix_v4 = 24\n{cohort}[service.rollout]\nsteps = [{steps}]\nhold_ms = 0\ninterval_ms = 300\nmin_samples = 5\nmax_p99_vs_live = 1000\nmax_median_vs_live = 1000\nmax_divergence = 0.4\n"
        ),
    );
    bed.start_daemon(&[]);
    bed
}

/// One keep-alive connection per client, opened now.
fn connect(bed: &Testbed) -> Vec<KeepAlive> {
    let vip = bed.vip_v4();
    bed.client.run(move || {
        clients()
            .into_iter()
            .map(|c| KeepAlive::connect_from(c, vip).expect("connect"))
            .collect()
    })
}

/// A request on every connection.
fn round(conns: &mut [KeepAlive]) {
    for conn in conns {
        conn.request().expect("request");
    }
}

fn rollout(bed: &Testbed) -> serde_json::Value {
    let text = bed.ctl_ok(&["rollout", "status", "sentiment", "--output", "json"]);
    serde_json::from_str(&text).expect("rollout status")
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_canary_of_mostly_staff_is_reported_and_held() {
    require_root!();
    let bed = bed("25, 100", "always_candidate = [\"198.19.10.0/24\"]\n");
    bed.ctl_ok(&["rollout", "start", "sentiment"]);
    let mut conns = connect(&bed);
    let deadline = Instant::now() + Duration::from_secs(15);
    let judgement = loop {
        round(&mut conns);
        let r = rollout(&bed);
        let judgement = r["last_judgement"].as_str().unwrap_or_default().to_owned();
        if judgement.contains("not representative") {
            assert_eq!(r["candidate_percent"], 25.0, "held at the first step: {r}");
            break judgement;
        }
        assert!(Instant::now() < deadline, "never held: {r}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(judgement.contains("198.19.10.0/24"), "{judgement}");
    // More windows, still held: the canary does not become representative by waiting.
    for _ in 0..5 {
        round(&mut conns);
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(rollout(&bed)["candidate_percent"], 25.0);
    // The daemon's report refreshes at its housekeeping, every 5 s.
    let deadline = Instant::now() + Duration::from_secs(12);
    let status = loop {
        let status = bed.status();
        if status["services"][0]["representativeness"]["divergence"].as_f64() > Some(0.4) {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "no divergence reported: {status}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let spread = &status["services"][0]["representativeness"];
    assert_eq!(spread["prefix_v4"], 24);
    assert_eq!(spread["most_different"][0]["prefix"], "198.19.10.0/24");
    assert_eq!(spread["most_different"][0]["live_percent"], 0.0);
    let metrics = bed.metrics();
    assert!(
        counted(
            &metrics,
            "splitter_canary_divergence_ratio{service=\"sentiment\"}"
        ) > Some(0.4),
        "{metrics}"
    );
    // The live view shows the held rollout, its gates and the journal, from the real daemon.
    let frame = bed.ctl_ok(&["watch", "sentiment", "--once"]);
    for part in [
        "rollout of sentiment: green 25% (step 1 of 2)",
        "max_divergence",
        "waiting",
        "min_samples",
        "green   candidate  25%",
        "rollout_started",
    ] {
        assert!(frame.contains(part), "no `{part}` in:\n{frame}");
    }
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_fair_canary_passes_the_gate_and_promotes() {
    require_root!();
    let bed = bed("50, 100", "");
    bed.ctl_ok(&["rollout", "start", "sentiment"]);
    let mut conns = connect(&bed);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        round(&mut conns);
        let out = bed.ctl(&["rollout", "status", "sentiment", "--output", "json"]);
        if !out.status.success() {
            break; // the rollout ended
        }
        assert!(
            Instant::now() < deadline,
            "never promoted: {}",
            rollout(&bed)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let history = bed.ctl_ok(&["history", "--output", "json"]);
    let events: Vec<serde_json::Value> = serde_json::from_str(&history).expect("history");
    assert!(events.iter().any(|e| e["kind"] == "promotion"), "{history}");
    let judged: Vec<f64> = events
        .iter()
        .filter_map(|e| e["details"]["representativeness"]["divergence"].as_f64())
        .collect();
    assert!(!judged.is_empty(), "no judged spread in {history}");
    assert!(judged.iter().all(|d| *d <= 0.4), "{judged:?}");
}
