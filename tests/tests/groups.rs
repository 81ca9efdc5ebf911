//! Release groups and the last-resort pool end to end.
//!
//! A release group of two services (`sentiment` on :8080, `features` on :8081) shares one split
//! word: one `weight` moves both, a rollout started on the group (or on one of its services)
//! acts on both, and with client affinity each client lands on the same version of every
//! service. A service's last-resort pool takes new connections when neither blue nor green has
//! a backend, on purpose (`drill --last-resort`) and when both fail their health checks.

use std::{
    fs,
    net::{Ipv4Addr, SocketAddrV4},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use splitter_tests::{
    http,
    load::Load,
    require_root,
    testbed::{Testbed, counted},
};

const SERVER: &str = env!("CARGO_BIN_EXE_splitter-testbed-server");
/// Port of the group's second service, and of its backends.
const FEATURES_PORT: u16 = 8081;
/// Client addresses, in 198.19.67.0/24 (routed to the client through the node).
const CLIENTS: u8 = 24;

fn client(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, 67, i)
}

/// Release group `stack` on the bed: `sentiment` (the bed's service) and `features` on
/// `FEATURES_PORT`, whose backends run beside the bed's (green's with `green_args`), both with
/// `extra` keys; starts the daemon. Returns `features`' address.
fn stack(bed: &mut Testbed, extra: &str, green_args: &[&str]) -> SocketAddrV4 {
    let blue_features = SocketAddrV4::new(*bed.blue_addr().ip(), FEATURES_PORT);
    let green_features = SocketAddrV4::new(*bed.green_addr().ip(), FEATURES_PORT);
    bed.serve_on_backend(SERVER, false, blue_features, "blue");
    bed.serve_on_backend_with(SERVER, true, green_features, "green", green_args);
    let features_vip = SocketAddrV4::new(*bed.vip_v4().ip(), FEATURES_PORT);
    bed.write_config_with("0", &format!("{extra}group = \"stack\"\n"));
    let config = fs::read_to_string(&bed.config_path).expect("config");
    fs::write(
        &bed.config_path,
        format!(
            "{config}\n[[service]]\nname = \"features\"\nlisten = \"{features_vip}\"\nblue = [\"{blue_features}\"]\ngreen = [\"{green_features}\"]\n{extra}group = \"stack\"\n"
        ),
    )
    .expect("config");
    bed.start_daemon(&[]);
    features_vip
}

/// The version each client gets from a new connection to `vip`.
fn versions_at(bed: &Testbed, vip: SocketAddrV4) -> Vec<String> {
    bed.versions_from((1..=CLIENTS).map(client).collect(), vip, 1)
        .into_iter()
        .flatten()
        .collect()
}

/// The version that answers a new connection from the client.
fn get(bed: &Testbed) -> String {
    let vip = bed.vip();
    bed.client.run(move || http::get(vip).expect("get"))
}

fn service<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no service {name} in {status}"))
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_release_group_moves_its_services_together_and_keeps_each_client_on_one_version() {
    require_root!();
    let mut bed = Testbed::new(SERVER);
    bed.add_client_addresses(
        &(1..=CLIENTS).map(client).collect::<Vec<_>>(),
        "198.19.67.0/24",
    );
    let features_vip = stack(&mut bed, "affinity = \"client\"\n", &[]);
    let status = bed.status();
    for name in ["sentiment", "features"] {
        assert_eq!(service(&status, name)["group"], "stack", "{status}");
    }

    // One write, named by the group, moves both services.
    bed.ctl_ok(&["weight", "stack", "green", "50"]);
    let status = bed.status();
    let words: Vec<_> = ["sentiment", "features"]
        .iter()
        .map(|n| service(&status, n)["share_percent"]["green"].clone())
        .collect();
    assert_eq!(words, [50.0, 50.0], "{status}");

    // A rollout started on one service is the group's, and draws one salt for both.
    bed.ctl_ok(&[
        "rollout", "start", "features", "--steps", "50,100", "--hold", "1h",
    ]);
    let text = bed.ctl_ok(&["rollout", "status", "sentiment", "--output", "json"]);
    let rollout: serde_json::Value = serde_json::from_str(&text).expect("rollout status");
    assert_eq!(rollout["service"], "stack", "{rollout}");
    assert_eq!(rollout["candidate_percent"], 50.0, "{rollout}");
    let vip = bed.vip_v4();
    let model = versions_at(&bed, vip);
    let features = versions_at(&bed, features_vip);
    assert_eq!(
        model, features,
        "each client sees the same version of every service of the group"
    );
    let on_green = model.iter().filter(|v| *v == "green").count();
    assert!(
        (2..=22).contains(&on_green),
        "{on_green} of {CLIENTS} clients on green at 50%"
    );

    // An abort through the other service rolls the whole group back: every client on blue.
    bed.ctl_ok(&["rollout", "abort", "sentiment"]);
    for vip in [vip, features_vip] {
        let after = versions_at(&bed, vip);
        assert!(after.iter().all(|v| v == "blue"), "{vip}: {after:?}");
    }
    let history = bed.ctl_ok(&["history", "--output", "json"]);
    let events: Vec<serde_json::Value> = serde_json::from_str(&history).expect("history");
    for kind in ["rollout_started", "rollback"] {
        assert!(
            events
                .iter()
                .any(|e| e["kind"] == kind && e["service"] == "stack"),
            "no {kind} of the group in {history}"
        );
    }

    // A last-resort drill is per service; the group's name gets told which services there are.
    let refused = bed.ctl(&["drill", "stack", "--last-resort"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("`stack` is a release group; its pools are its services': name one of them (sentiment, features)"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // While a rollout of the group runs, a reload that takes a service out of it is refused,
    // and the running config stays.
    bed.ctl_ok(&[
        "rollout", "start", "stack", "--steps", "50,100", "--hold", "1h",
    ]);
    let config = fs::read_to_string(&bed.config_path).expect("config");
    let at = config.rfind("group = \"stack\"").expect("features' group");
    fs::write(
        &bed.config_path,
        format!(
            "{}{}",
            &config[..at],
            &config[at + "group = \"stack\"".len()..]
        ),
    )
    .expect("config");
    let refused = bed.ctl(&["reload"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("a rollout of `stack` is running"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert_eq!(service(&bed.status(), "features")["group"], "stack");
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn the_last_resort_pool_takes_new_connections_when_blue_and_green_have_no_backend() {
    require_root!();
    let mut bed = Testbed::new(SERVER);
    let degraded = SocketAddrV4::new(*bed.blue_addr().ip(), 9090);
    bed.serve_on_backend(SERVER, false, degraded, "degraded");
    bed.write_config_with(
        "0",
        &format!(
            "last_resort = [\"{degraded}\"]\n[service.health]\ninterval_ms = 200\ntimeout_ms = 100\nunhealthy_after = 1\nhealthy_after = 1\n"
        ),
    );
    bed.start_daemon(&[]);
    let last = &bed.status()["services"][0]["last_resort"];
    assert_eq!(last["active"], false, "{last}");
    assert_eq!(last["backends"][0]["address"], degraded.to_string());
    assert_eq!(get(&bed), "blue");

    // The drill, under a stream of new connections: they reach the last-resort pool, none
    // fails, and the pools come back.
    let load = Load::start(&bed, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(200));
    let text = bed.ctl_ok(&["drill", "sentiment", "--last-resort", "--output", "json"]);
    let report: serde_json::Value = serde_json::from_str(&text).expect("report");
    std::thread::sleep(Duration::from_millis(200));
    let [(_, blue_failed), (_, green_failed)] = load.stop();
    assert_eq!(report["kind"], "last_resort", "{report}");
    assert_eq!(report["outcome"], "passed", "{report}");
    assert!(report["new_on_live"].as_u64() >= Some(1), "{report}");
    assert_eq!(
        blue_failed + green_failed,
        0,
        "connections failed during the drill"
    );
    let status = bed.status();
    let service = &status["services"][0];
    assert_eq!(service["pools"]["blue"]["slots_set"], 256, "{status}");
    assert!(service["last_resort"]["new_flows"].as_u64() >= Some(1));
    assert_eq!(get(&bed), "blue");

    // A dead last-resort backend: its health checks take it out, status shows it, and a drill
    // is refused rather than drop new connections.
    bed.stop("degraded");
    let deadline = Instant::now() + Duration::from_secs(10);
    while bed.status()["services"][0]["last_resort"]["backends"][0]["healthy"] != false {
        assert!(
            Instant::now() < deadline,
            "never marked down: {}",
            bed.status()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let refused = bed.ctl(&["drill", "sentiment", "--last-resort"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("no healthy backend"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(
        bed.daemon_log()
            .contains("no healthy backend left in the last-resort pool")
    );
    // One that accepts connections (its checks pass) but answers 500: the drill fails on its
    // errors.
    bed.serve_on_backend_with(SERVER, false, degraded, "degraded", &["--error-every", "1"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while bed.status()["services"][0]["last_resort"]["backends"][0]["healthy"] != true {
        assert!(Instant::now() < deadline, "never back: {}", bed.status());
        std::thread::sleep(Duration::from_millis(100));
    }
    let load = Load::start(&bed, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(200));
    let out = bed.ctl(&["drill", "sentiment", "--last-resort", "--output", "json"]);
    let _ = load.stop();
    assert_eq!(out.status.code(), Some(3), "a drill that did not pass");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("report");
    assert_eq!(report["outcome"], "failed", "{report}");
    assert!(report["last_resort_errors"].as_u64() > Some(0), "{report}");
    bed.stop("degraded");

    // Back for the rest, in the pool again once its checks pass.
    bed.serve_on_backend(SERVER, false, degraded, "degraded");
    let deadline = Instant::now() + Duration::from_secs(10);
    while bed.status()["services"][0]["last_resort"]["backends"][0]["healthy"] != true {
        assert!(Instant::now() < deadline, "never back: {}", bed.status());
        std::thread::sleep(Duration::from_millis(100));
    }

    // Both versions fail their health checks: new connections go to the last resort.
    bed.stop("blue");
    bed.stop("green");
    let deadline = Instant::now() + Duration::from_secs(10);
    while bed.status()["services"][0]["last_resort"]["active"] != true {
        assert!(Instant::now() < deadline, "never active: {}", bed.status());
        std::thread::sleep(Duration::from_millis(100));
    }
    let answers: Vec<String> = (0..5).map(|_| get(&bed)).collect();
    assert!(answers.iter().all(|v| v == "degraded"), "{answers:?}");
    let metrics = bed.metrics();
    assert!(
        counted(
            &metrics,
            "splitter_last_resort_flows_total{service=\"sentiment\"}"
        ) >= Some(6.0),
        "{metrics}"
    );
    assert!(
        counted(
            &metrics,
            "splitter_data_plane_packets_total{outcome=\"last_resort\"}"
        ) >= Some(6.0)
    );
    // The last-resort backend is probed like the others: up, while blue and green are down.
    let up = |version: &str, backend: String| {
        counted(
            &metrics,
            &format!(
                "splitter_backend_up{{service=\"sentiment\",version=\"{version}\",backend=\"{backend}\"}}"
            ),
        )
    };
    assert_eq!(
        up("last_resort", degraded.to_string()),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        up("blue", bed.blue_addr().to_string()),
        Some(0.0),
        "{metrics}"
    );
    assert!(
        bed.daemon_log().contains(
            "no healthy backend in blue or green: new connections go to the last-resort pool"
        ),
        "{}",
        bed.daemon_log()
    );
    let text = bed.ctl_ok(&["status", "sentiment"]);
    assert!(text.contains("last resort ACTIVE"), "{text}");
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_failing_service_rolls_its_group_back_even_when_the_stacks_sum_looks_healthy() {
    require_root!();
    let mut bed = Testbed::new(SERVER);
    // `features` is the group's small service, and its green answers 500 to one request in
    // four; `sentiment` carries most of the traffic and is healthy on both versions.
    let features_vip = stack(&mut bed, "", &["--error-every", "4"]);
    let load = Load::start(&bed, Duration::from_secs(30));
    // A light stream to `features`, bounded in count and time.
    let running = Arc::new(AtomicBool::new(true));
    let flag = Arc::clone(&running);
    let light = bed.client.spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut answers = 0;
        while flag.load(Ordering::SeqCst) && answers < 1_000 && Instant::now() < deadline {
            let _ = http::get_any(std::net::SocketAddr::V4(features_vip));
            answers += 1;
            std::thread::sleep(Duration::from_millis(25));
        }
    });
    bed.ctl_ok(&[
        "rollout",
        "start",
        "stack",
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
    ]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let rollback = loop {
        let history = bed.ctl_ok(&["history", "stack", "--output", "json"]);
        let events: Vec<serde_json::Value> = serde_json::from_str(&history).expect("history");
        if let Some(rollback) = events.iter().find(|e| e["kind"] == "rollback") {
            break rollback.clone();
        }
        assert!(
            events.iter().all(|e| e["kind"] != "promotion"),
            "promoted on the healthy sum: {history}"
        );
        assert!(Instant::now() < deadline, "never rolled back: {history}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = load.stop();
    running.store(false, Ordering::SeqCst);
    let _ = light.join();
    assert_eq!(rollback["actor"], "gates", "{rollback}");
    // Whichever error gate is convinced first on `features` alone: the safety net ("error
    // rate ...") or the increase over the live pool ("errors ... vs live ...").
    assert!(
        rollback["reason"]
            .as_str()
            .is_some_and(|r| r.contains("features: error rate") || r.contains("features: errors")),
        "{rollback}"
    );
    // Both services are back on blue: the group moved as one.
    let status = bed.status();
    for name in ["sentiment", "features"] {
        assert_eq!(
            service(&status, name)["share_percent"]["green"],
            0.0,
            "{status}"
        );
    }
}
