//! End to end: real namespaces, real HTTP servers, the real `splitter-ctl` binary attaching
//! the kernel programs to a veth. Each test has its own test bed index (names and a /24).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use splitter_tests::{
    http::{self, KeepAlive},
    require_root,
    testbed::{Testbed, ctl_bin},
};

const SERVER: &str = env!("CARGO_BIN_EXE_splitter-testbed-server");

#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    blue: usize,
    green: usize,
    failed: usize,
}

impl Tally {
    /// All `n` on blue, none failed.
    fn blue(n: usize) -> Self {
        Self {
            blue: n,
            green: 0,
            failed: 0,
        }
    }

    /// All `n` on green, none failed.
    fn green(n: usize) -> Self {
        Self {
            blue: 0,
            green: n,
            failed: 0,
        }
    }
}

/// `n` new connections from the client, one request each.
fn new_connections(bed: &Testbed, n: usize) -> Tally {
    let vip = bed.vip();
    bed.client.run(move || {
        let mut tally = Tally::default();
        for _ in 0..n {
            match http::get(vip).as_deref() {
                Ok("blue") => tally.blue += 1,
                Ok("green") => tally.green += 1,
                Ok(other) => panic!("served by {other:?}"),
                Err(_) => tally.failed += 1,
            }
        }
        tally
    })
}

fn counter(status: &serde_json::Value, version: &str, name: &str) -> u64 {
    status["services"][0]["counters"][version][name]
        .as_u64()
        .unwrap_or_else(|| panic!("counter {version}.{name} in {status}"))
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn new_connections_split_by_the_share() {
    require_root!();
    let mut bed = Testbed::new(SERVER);
    bed.write_config("10");
    bed.start_daemon(&[]);

    let ten = new_connections(&bed, 2_000);
    assert_eq!(ten.failed, 0, "{ten:?}");
    let share = ten.green as f64 / 2_000.0;
    assert!(
        (0.08..=0.12).contains(&share),
        "green share {share} at 10%: {ten:?}"
    );

    bed.ctl_ok(&["weight", "sentiment", "green", "0"]);
    assert_eq!(new_connections(&bed, 300), Tally::blue(300));

    bed.ctl_ok(&["weight", "sentiment", "green", "100"]);
    assert_eq!(new_connections(&bed, 300), Tally::green(300));

    let status = bed.status();
    let flows = counter(&status, "blue", "new_flows") + counter(&status, "green", "new_flows");
    assert_eq!(flows, 2_600, "one flow per connection: {status}");
    assert_eq!(
        counter(&status, "green", "new_flows"),
        ten.green as u64 + 300
    );
    assert_eq!(
        counter(&status, "blue", "flow_misses") + counter(&status, "green", "flow_misses"),
        0
    );
    assert!(
        counter(&status, "green", "packets_out") > 0,
        "replies counted at egress"
    );
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn share_flips_never_move_an_established_connection() {
    require_root!();
    let mut bed = Testbed::new(SERVER);
    bed.write_config("0");
    bed.start_daemon(&[]);
    let (vip, ctl, config) = (bed.vip(), ctl_bin(), bed.config_path.clone());

    // 25 connections start on blue, 25 on green; each remembers who served it first.
    let open = |bed: &Testbed, n: usize| {
        bed.client.run(move || {
            (0..n)
                .map(|_| {
                    let mut conn = KeepAlive::connect(vip).expect("connect");
                    let first = conn.request().expect("first request");
                    (conn, first)
                })
                .collect::<Vec<_>>()
        })
    };
    let mut conns = open(&bed, 25);
    bed.ctl_ok(&["weight", "sentiment", "green", "100"]);
    conns.extend(open(&bed, 25));
    let firsts: Vec<String> = conns.iter().map(|(_, first)| first.clone()).collect();
    assert_eq!(firsts.iter().filter(|v| *v == "blue").count(), 25);
    assert_eq!(firsts.iter().filter(|v| *v == "green").count(), 25);

    // Flip 0 -> 100 -> 0 twenty times while every connection keeps sending requests.
    let flipping = Arc::new(AtomicBool::new(true));
    let flipper = {
        let flipping = Arc::clone(&flipping);
        thread::spawn(move || {
            for i in 0..40 {
                let share = if i % 2 == 0 { "0" } else { "100" };
                let out = std::process::Command::new(&ctl)
                    .arg("--config")
                    .arg(&config)
                    .args(["weight", "sentiment", "green", share])
                    .output()
                    .expect("run weight");
                assert!(
                    out.status.success(),
                    "weight: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                thread::sleep(Duration::from_millis(25));
            }
            flipping.store(false, Ordering::SeqCst);
        })
    };
    let (requests, moved, failed) = bed.client.run(move || {
        let (mut requests, mut moved, mut failed) = (0, 0, 0);
        let deadline = Instant::now() + Duration::from_secs(60);
        while flipping.load(Ordering::SeqCst) && Instant::now() < deadline {
            for (conn, first) in &mut conns {
                match conn.request() {
                    Ok(version) if version == *first => {}
                    Ok(_) => moved += 1,
                    Err(_) => failed += 1,
                }
                requests += 1;
            }
        }
        (requests, moved, failed)
    });
    flipper.join().expect("flipper");
    assert!(
        requests >= 500,
        "only {requests} requests were made during the flips"
    );
    assert_eq!((moved, failed), (0, 0), "of {requests} requests");
    // The last write was 100%: new connections all go to green.
    assert_eq!(new_connections(&bed, 50), Tally::green(50));
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn other_traffic_of_the_node_is_untouched() {
    require_root!();
    let mut bed = Testbed::new(SERVER);
    bed.write_config("50");
    bed.start_daemon(&[]);
    let other: SocketAddr = bed.serve_on_node(SERVER, 9000, "node");

    let served = bed.client.run(move || {
        (0..20)
            .map(|_| http::get(other).expect("request to another port"))
            .collect::<Vec<_>>()
    });
    assert!(served.iter().all(|s| s == "node"), "{served:?}");
    let ping = bed
        .client
        .exec("ping")
        .args(["-c", "3", "-i", "0.2", "-W", "2", &bed.node_addr()])
        .output()
        .expect("ping");
    assert!(
        ping.status.success(),
        "ping: {}",
        String::from_utf8_lossy(&ping.stdout)
    );

    let status = bed.status();
    assert_eq!(
        status["plane"]["steered"].as_u64(),
        Some(0),
        "nothing was steered: {status}"
    );
    assert!(
        status["plane"]["not_service"].as_u64().unwrap_or(0) >= 20 * 3,
        "{status}"
    );
    assert_eq!(
        counter(&status, "blue", "new_flows") + counter(&status, "green", "new_flows"),
        0
    );
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn the_data_plane_outlives_a_killed_daemon_and_is_adopted_again() {
    require_root!();
    let mut bed = Testbed::new(SERVER);
    bed.write_config("0");
    bed.start_daemon(&[]);
    let vip = bed.vip();
    let mut conn = bed.client.run(move || {
        let mut conn = KeepAlive::connect(vip).expect("connect");
        assert_eq!(conn.request().expect("request"), "blue");
        conn
    });

    bed.kill_daemon();
    conn = bed.client.run(move || {
        assert_eq!(conn.request().expect("request after SIGKILL"), "blue");
        conn
    });
    assert_eq!(new_connections(&bed, 50), Tally::blue(50));

    // weight and rollback write the pinned maps with no daemon at all.
    bed.ctl_ok(&["weight", "sentiment", "green", "100"]);
    assert_eq!(new_connections(&bed, 50), Tally::green(50));
    // Under traffic, with no daemon, the command drains green's connections itself and
    // journals the drain's times beside the write's.
    let load = splitter_tests::load::Load::start(&bed, Duration::from_secs(20));
    let rollback_out = bed.ctl(&["rollback", "sentiment"]);
    let [(_, blue_failed), (_, green_failed)] = load.stop();
    assert_eq!((blue_failed, green_failed), (0, 0));
    let rollback = String::from_utf8_lossy(&rollback_out.stdout);
    assert!(rollback_out.status.success(), "{rollback}");
    assert!(
        rollback.contains("blue 100%, green 0%")
            && rollback.contains("map write took")
            && rollback.contains("sentiment green: drain began"),
        "{rollback}"
    );
    assert!(
        String::from_utf8_lossy(&rollback_out.stderr)
            .contains("the daemon is not running: draining green from this command"),
        "{}",
        String::from_utf8_lossy(&rollback_out.stderr)
    );
    assert_eq!(new_connections(&bed, 50), Tally::blue(50));
    let history: serde_json::Value =
        serde_json::from_str(&bed.ctl_ok(&["history", "--output", "json"])).expect("JSON");
    let (drain_entry, journaled) = (&history[0], &history[1]);
    assert_eq!(drain_entry["kind"], "drain", "{history}");
    assert_eq!(journaled["kind"], "rollback", "{history}");
    let drain = &journaled["details"]["drain"];
    assert_eq!(drain["done"], true, "{journaled}");
    assert_eq!(drain["new_connections_after_decision"], 0, "{journaled}");
    let last_response = journaled["decision_to_last_response_us"]
        .as_u64()
        .expect("time to the last response");
    assert_eq!(
        Some(last_response),
        drain["decision_to_last_response_us"].as_u64(),
        "{journaled}"
    );
    // `keep` leaves green's connections alone, and says so.
    bed.ctl_ok(&["weight", "sentiment", "green", "100"]);
    let kept = bed.ctl_ok(&["rollback", "sentiment", "--established", "keep"]);
    assert!(kept.contains("are kept (established = keep)"), "{kept}");

    // A restarted daemon adopts the data plane and keeps the operator's share.
    bed.ctl_ok(&["weight", "sentiment", "green", "30"]);
    bed.start_daemon(&[]);
    assert!(
        bed.daemon_log().contains("adopted the pinned data plane"),
        "{}",
        bed.daemon_log()
    );
    let status = bed.status();
    assert_eq!(
        status["services"][0]["share_percent"]["green"].as_f64(),
        Some(30.0),
        "{status}"
    );
    assert!(
        counter(&status, "blue", "new_flows") >= 101,
        "counters went on across the restart: {status}"
    );
    bed.client
        .run(move || assert_eq!(conn.request().expect("request after restart"), "blue"));

    // Every split change was journaled, also the ones made with the daemon down.
    let history: serde_json::Value =
        serde_json::from_str(&bed.ctl_ok(&["history", "--output", "json"])).expect("history JSON");
    let kinds: Vec<&str> = history
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert_eq!(
        kinds,
        [
            "weight", "rollback", "weight", "drain", "rollback", "weight"
        ],
        "newest first: {history}"
    );
    assert!(
        history[1]["decision_to_write_us"]
            .as_u64()
            .is_some_and(|us| us > 0),
        "{history}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&bed.ctl_ok(&["summary", "--output", "json"])).expect("summary JSON");
    assert_eq!(summary["rollbacks"].as_u64(), Some(2), "{summary}");
    assert!(
        summary["mean_time_to_rollback_write_us"].as_f64().is_some(),
        "{summary}"
    );
    assert_eq!(
        summary["mean_time_to_rollback_us"].as_f64(),
        Some(last_response as f64),
        "only the drained rollback has a last response: {summary}"
    );
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn connections_work_with_tx_checksum_offload_off_in_the_client() {
    require_root!();
    let mut bed = Testbed::new(SERVER);
    let off = bed
        .client
        .exec("ethtool")
        .args(["-K", &bed.client_interface(), "tx", "off"])
        .output()
        .expect("ethtool");
    assert!(
        off.status.success(),
        "ethtool: {}",
        String::from_utf8_lossy(&off.stderr)
    );
    bed.write_config("50");
    bed.start_daemon(&[]);
    let tally = new_connections(&bed, 200);
    assert_eq!(tally.failed, 0, "{tally:?}");
    assert!(tally.blue > 50 && tally.green > 50, "{tally:?}");
    let vip = bed.vip();
    bed.client.run(move || {
        let mut conn = KeepAlive::connect(vip).expect("connect");
        let first = conn.request().expect("request");
        for _ in 0..20 {
            assert_eq!(conn.request().expect("request"), first);
        }
    });
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn stopping_leaves_the_data_plane_unless_asked_and_bad_input_changes_nothing() {
    require_root!();
    let mut bed = Testbed::new(SERVER);
    bed.write_config("50");

    // No data plane yet: the emergency commands say what is wrong and what to run.
    let out = bed.ctl(&["weight", "sentiment", "green", "10"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no data plane is pinned at") && err.contains("splitter-ctl daemon"),
        "{err}"
    );

    // An invalid config: a clear error, and nothing pinned or attached.
    std::fs::write(
        &bed.config_path,
        std::fs::read_to_string(&bed.config_path)
            .expect("config")
            .replace("green_weight = 50", "green_weight = 150"),
    )
    .expect("write");
    let out = bed
        .node
        .enter(ctl_bin().to_str().expect("path"))
        .arg("--config")
        .arg(&bed.config_path)
        .arg("daemon")
        .output()
        .expect("daemon");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("splitter.toml:")
            && err.contains("`service[0].green_weight`")
            && err.contains("out of range"),
        "{err}"
    );
    assert!(
        !bed.pin_dir.exists(),
        "nothing pinned after a refused config"
    );

    // SIGTERM leaves the data plane running.
    bed.write_config("50");
    bed.start_daemon(&[]);
    let stopped = bed.stop_daemon(libc::SIGTERM);
    assert!(stopped.success(), "{stopped}: {}", bed.daemon_log());
    assert_eq!(new_connections(&bed, 20).failed, 0);
    assert!(bed.pin_dir.exists());

    // Bad CLI input is refused and the split stays as it was.
    for args in [
        &["weight", "sentiment", "green", "101"][..],
        &["weight", "sentiment", "green", "abc"],
        &["weight", "nope", "green", "5"],
        &["rollback", "nope"],
    ] {
        let out = bed.ctl(args);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(
            String::from_utf8_lossy(&out.stderr).starts_with("error: "),
            "{args:?}"
        );
    }
    assert_eq!(
        bed.status()["services"][0]["share_percent"]["green"].as_f64(),
        Some(50.0)
    );

    // --detach-on-exit removes the programs and the pins.
    bed.start_daemon(&["--detach-on-exit"]);
    let stopped = bed.stop_daemon(libc::SIGINT);
    assert!(stopped.success(), "{stopped}: {}", bed.daemon_log());
    assert!(!bed.pin_dir.exists(), "pins removed");
    let link = bed
        .node
        .exec("ip")
        .args(["link", "show", &bed.node_interface()])
        .output()
        .expect("ip link");
    assert!(
        !String::from_utf8_lossy(&link.stdout).contains("xdp"),
        "XDP detached"
    );

    // Without the splitter the VIP is just the node, which does not serve port 8080.
    assert_eq!(new_connections(&bed, 5).failed, 5);
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn concurrent_writers_of_the_split_word_lose_no_update() {
    require_root!();
    let mut bed = Testbed::new(SERVER);
    bed.write_config("0");
    bed.start_daemon(&[]);
    // Four writers, each adding 0.01% to green 50 times through the CLI's read-decide-write
    // path: without the split-word lock, reads and writes interleave and increments vanish.
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let config = bed.config_path.clone();
            std::thread::spawn(move || {
                for _ in 0..50 {
                    splitter_ctl::cli::split::update(
                        &config,
                        &splitter_ctl::cli::locate::Overrides::default(),
                        "sentiment",
                        splitter_ctl::store::journal::EventKind::Weight,
                        |word, _, _| {
                            let green = word.share_of(splitter_common::Version::Green);
                            Ok(word.with_share_of(splitter_common::Version::Green, green + 1))
                        },
                    )
                    .expect("update");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().expect("writer");
    }
    let status = bed.status();
    assert_eq!(
        status["services"][0]["share_percent"]["green"].as_f64(),
        Some(2.0),
        "200 increments of 0.01%: {status}"
    );
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_command_against_a_foreign_pin_says_what_is_wrong_and_what_to_run() {
    require_root!();
    let mut bed = Testbed::new(SERVER);
    bed.write_config("10");
    bed.start_daemon(&[]);
    bed.stop_daemon(libc::SIGTERM);
    // Another map under the split word's pin: the wrong layout for `SPLIT`.
    let pin = |name: &str| bed.pin_dir.join(name);
    std::fs::remove_file(pin("SPLIT")).expect("remove the SPLIT pin");
    std::fs::rename(pin("LATENCY"), pin("SPLIT")).expect("pin another map as SPLIT");
    let out = bed.ctl(&["weight", "sentiment", "green", "20"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is not Splitter's map `SPLIT`") && err.contains("run `splitter-ctl detach`"),
        "{err}"
    );
    // What it says to run works, and the daemon starts clean after it.
    bed.ctl_ok(&["detach"]);
    assert!(!bed.pin_dir.join("SPLIT").exists());
    bed.start_daemon(&[]);
    assert_eq!(
        bed.status()["services"][0]["share_percent"]["green"].as_f64(),
        Some(10.0)
    );
}
