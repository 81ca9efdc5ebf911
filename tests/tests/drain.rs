//! A rollback reaches every client (issue 16): the connections of the version it leaves are
//! drained, end to end, with real clients that keep their connections: Python `requests`
//! (urllib3's pool) with think time, and wrk without any. Each test has its own test bed, and
//! they run one at a time: wrk takes every core it can, and a close races a client's reuse of
//! its connection only when the drain's thread cannot run.

use std::{thread, time::Duration};

use splitter_tests::{
    one_at_a_time,
    pooled::{self, Client, Seen, now},
    require_root,
    testbed::Testbed,
};

const SERVER: &str = env!("CARGO_BIN_EXE_splitter-testbed-server");
/// Starts `workers` pooled clients in the client namespace for `seconds`.
fn pooled_clients(bed: &Testbed, workers: u32, think_ms: u32, seconds: u32) -> Client {
    pooled::start(
        &bed.client,
        &format!("http://{}/", bed.vip()),
        workers,
        think_ms,
        seconds,
    )
    .expect("the pooled client")
}

fn collect(client: Client) -> Seen {
    pooled::collect(client).expect("the pooled client")
}

/// The rollback's journal entry, once its drain has completed it (up to 5 s).
fn drained_rollback(bed: &Testbed) -> serde_json::Value {
    serde_json::to_value(bed.drained_rollback().expect("the drained rollback")).expect("JSON")
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_rollback_drains_pooled_keep_alive_clients_without_a_failed_request() {
    require_root!();
    let _serial = one_at_a_time();
    let mut bed = Testbed::new(SERVER);
    bed.write_config("50");
    bed.start_daemon(&[]);
    let client = pooled_clients(&bed, 16, 10, 6);
    // Let the pool fill: 16 connections, about half of them on green.
    thread::sleep(Duration::from_secs(2));
    // The command waits for the drain's report; the clock starts when it starts.
    let started = now();
    let out = bed.ctl(&["rollback", "sentiment", "--wait-ms", "3000"]);
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = collect(client);

    let rollback = drained_rollback(&bed);
    let drain = &rollback["details"]["drain"];
    eprintln!("the drain: {drain}");
    // A close races a client's reuse of its connection only when the client picks the
    // connection up in the instant the FIN is on its way: such a request is dropped before the
    // backend sees it, and counted (`Seen::failures_within_races`).
    let raced = drain["raced"].as_u64().unwrap_or(0);
    if let Err(why) = seen.failures_within_races(raced) {
        panic!("{why}; the drain: {drain}");
    }
    // The clients were busy as the rollback started: stalled ones would prove nothing.
    let just_before = seen
        .answers
        .iter()
        .filter(|(at, _)| (started - 0.3..started).contains(at))
        .count();
    assert!(
        just_before > 20,
        "{just_before} answers in the 300 ms before the rollback"
    );
    let green_before = seen
        .answers
        .iter()
        .filter(|(at, v)| v == "green" && *at < started - 1.0)
        .count();
    assert!(
        green_before > 50,
        "green answered {green_before} before the rollback"
    );
    let last_green = seen
        .answers
        .iter()
        .filter(|(_, v)| v == "green")
        .map(|(at, _)| *at)
        .fold(0.0, f64::max);
    assert!(
        last_green <= started + 0.1,
        "green answered {:.0} ms after the rollback started",
        (last_green - started) * 1e3
    );
    let blue_after = seen
        .answers
        .iter()
        .filter(|(at, v)| v == "blue" && *at > started + 0.5)
        .count();
    assert!(
        blue_after > 100,
        "blue answered {blue_after} after the rollback"
    );
    assert!(printed.contains("sentiment green"), "{printed}");

    let connections = drain["connections"].as_u64().expect("connections");
    assert!(connections >= 1, "{drain}");
    let drained = drain["outcomes"]["drained_idle"].as_u64().unwrap_or(0)
        + drain["outcomes"]["drained_after_response"]
            .as_u64()
            .unwrap_or(0);
    assert!(drained >= connections - 1, "{drain}");
    assert_eq!(drain["new_connections_after_decision"], 0, "{drain}");
    let last_close = drain["decision_to_last_close_us"]
        .as_u64()
        .expect("last close");
    // Idle connections are closed after the service's `drain_idle_ms` of quiet (50 ms by
    // default), the busy ones right behind their next response.
    assert!(last_close < 1_000_000, "{drain}");
    assert!(
        drain["decision_to_last_response_us"].as_u64().is_some(),
        "{drain}"
    );
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn idle_pooled_connections_are_closed_at_once_not_after_drain_idle_ms() {
    require_root!();
    let _serial = one_at_a_time();
    let mut bed = Testbed::new(SERVER);
    // Every new connection to green, so that every pooled connection is drained; a long
    // `drain_idle_ms`, so that a connection closed without its quiet before the drain counted
    // would be closed a second after the drain began, not within milliseconds.
    bed.write_config_with("100", "drain_idle_ms = 1000\n");
    bed.start_daemon(&[]);
    // 16 pooled connections, each used once every 3 s: idle most of the time, as a model
    // client's pool between bursts.
    let client = pooled_clients(&bed, 16, 3_000, 5);
    // Quiet from the first round's answers on, however long Python took to start (a second
    // and more in a full run on 2 cores: a connection used less than `drain_idle_ms` before
    // the rollback is rightly closed only after its quiet).
    client
        .wait_for_lines(16, Duration::from_secs(10))
        .expect("the first round");
    thread::sleep(Duration::from_millis(1_500));
    let started = now();
    bed.ctl_ok(&["rollback", "sentiment", "--wait-ms", "3000"]);
    let rollback = drained_rollback(&bed);
    let drain = &rollback["details"]["drain"];
    eprintln!("the drain: {drain}");
    let seen = collect(client);
    assert!(seen.failures.is_empty(), "{:?}", seen.failures);
    // urllib3 opens as many connections as requests overlap: a few for 16 workers.
    let connections = drain["connections"].as_u64().expect("connections");
    assert!(connections >= 1, "{drain}");
    assert_eq!(seen.count("green", |at| at < started), 16, "{seen:?}");
    assert_eq!(seen.count("green", |at| at >= started), 0, "{seen:?}");
    // The next round of requests, on new connections: all blue.
    assert_eq!(seen.count("blue", |at| at > started), 16, "{seen:?}");
    // Quiet for 1.5 s already (the TCP timestamps of the probes' answers say so): closed at
    // once, without the drain's own second of quiet.
    assert_eq!(drain["outcomes"]["drained_idle"], connections, "{drain}");
    assert_eq!(drain["raced"], 0, "{drain}");
    let last_close = drain["decision_to_last_close_us"]
        .as_u64()
        .expect("last close");
    let start = drain["decision_to_start_us"].as_u64().expect("start");
    // The drain's own part: probes answered, each connection found quiet, closed: 2 to 5 ms
    // in most runs here, 18 ms in one full run (a debug build on 2 cores). The issue's 10 ms
    // from the rollback, at the default `drain_idle_ms`, is timed by `cargo xtask bench` with
    // the release build (its idle-pool row).
    assert!(
        last_close.saturating_sub(start) <= 100_000,
        "the last idle connection closed {} µs after the drain began: {drain}",
        last_close.saturating_sub(start)
    );
    eprintln!("decision -> drain start {start} µs, -> last idle connection closed {last_close} µs");
    // The rollback's entry was named after the drain began (the journal came second); a name
    // for a drain that never was, or a body that is none, is refused.
    assert!(rollback["details"]["drain"].is_object(), "{rollback}");
    let put_at = |path: &str, body: &str| {
        use std::io::{Read as _, Write as _};
        let mut socket =
            std::os::unix::net::UnixStream::connect(bed.control_socket()).expect("control socket");
        write!(
            socket,
            "PUT {path} HTTP/1.1\r\nHost: splitter\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .expect("request");
        let mut answer = String::new();
        socket.read_to_string(&mut answer).expect("answer");
        answer
    };
    let put = |body: &str| put_at("/v1/drains/sentiment/journal", body);
    // A path with no service in it is no endpoint (it once sliced the path out of bounds).
    let no_service = put_at("/v1/drains/journal", "{}");
    assert!(no_service.starts_with("HTTP/1.1 404"), "{no_service}");
    let unknown = put(r#"{"version":"green","decided_monotonic_ns":1,"event":1}"#);
    assert!(unknown.starts_with("HTTP/1.1 404"), "{unknown}");
    assert!(
        unknown.contains("no drain of sentiment's green"),
        "{unknown}"
    );
    let garbage = put("{\"version\":");
    assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage}");
}

/// The drain's report of `version` in the daemon's status, once done (up to 5 s).
fn finished_drain(bed: &Testbed, version: &str) -> serde_json::Value {
    for _ in 0..100 {
        let status = bed.status();
        if let Some(drain) = status["drains"]
            .as_array()
            .and_then(|drains| drains.iter().find(|d| d["version"] == version))
            && drain["done"] == true
        {
            return drain.clone();
        }
        thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "no finished drain of {version} within 5 s: {}",
        bed.status()
    );
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn wrk_keep_alive_through_a_rollback_drained_then_reset() {
    require_root!();
    let _serial = one_at_a_time();
    let mut bed = Testbed::new(SERVER);
    bed.write_config_with("50", "drain_timeout_ms = 3000\n");
    bed.start_daemon(&[]);
    let load = splitter_tests::wrk::Load {
        threads: 2,
        connections: 16,
        // Long enough that the rollback, 1.5 s in, finds wrk's connections even when the
        // command itself is slow to start under this load.
        duration: Duration::from_secs(6),
        mode: splitter_tests::wrk::Connections::KeepAlive,
    };
    for policy in ["drain", "reset"] {
        bed.ctl_ok(&["weight", "sentiment", "green", "50"]);
        let (report, out) = thread::scope(|scope| {
            let wrk = scope.spawn(|| splitter_tests::wrk::run(&bed.client, bed.vip(), &load));
            thread::sleep(Duration::from_millis(1500));
            let out = bed.ctl(&[
                "rollback",
                "sentiment",
                "--established",
                policy,
                "--wait-ms",
                "4000",
            ]);
            (wrk.join().expect("wrk thread").expect("wrk"), out)
        });
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let status = bed.status();
        let open_green = status["services"][0]["open_connections"]["green"].as_u64();
        let drain = drained_rollback(&bed)["details"]["drain"].clone();
        eprintln!(
            "{policy}: wrk {} requests, {} failed; the drain: {drain}",
            report.requests, report.errors
        );
        assert_eq!(drain["established"], policy, "{drain}");
        assert_eq!(drain["left"], 0, "{drain}");
        assert_eq!(drain["new_connections_after_decision"], 0, "{drain}");
        assert!(drain["connections"].as_u64().unwrap_or(0) >= 2, "{drain}");
        assert_eq!(open_green, Some(0), "{status}");
        let last_close = drain["decision_to_last_close_us"].as_u64().expect("closed");
        let outcome = |name: &str| drain["outcomes"][name].as_u64().unwrap_or(0);
        if policy == "drain" {
            // wrk sends its next request the moment a response arrives, and counts a close
            // after a whole response as a read error whether or not that request went out: a
            // drained connection costs it one request at most, and each request that raced a
            // close was dropped unprocessed and counted.
            let closed = outcome("drained_idle") + outcome("drained_after_response");
            let raced = drain["raced"].as_u64().unwrap_or(0);
            assert!(
                raced <= report.errors && report.errors <= closed,
                "{} failed, {raced} raced, {closed} closed: {drain}",
                report.errors
            );
            assert_eq!(outcome("reset"), 0, "{drain}");
            // Timed from the drain's start (the command starts slowly under wrk): within
            // drain_timeout.
            let start = drain["decision_to_start_us"].as_u64().expect("start");
            assert!(
                last_close - start <= 3_500_000,
                "past drain_timeout: {drain}"
            );
        } else {
            assert!(outcome("reset") >= 1, "{drain}");
            assert_eq!(
                outcome("drained_idle") + outcome("drained_after_response"),
                0
            );
            // Timed from the drain's start: the command itself starts slowly under wrk.
            let start = drain["decision_to_start_us"].as_u64().expect("start");
            assert!(last_close - start < 500_000, "a reset is at once: {drain}");
        }
        assert!(
            report.requests > 1000,
            "wrk went on: {} requests",
            report.requests
        );
    }
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_promotion_drains_the_retired_version_over_its_window() {
    require_root!();
    let _serial = one_at_a_time();
    let mut bed = Testbed::new(SERVER);
    bed.write_config_with("0", "retire_drain_window_ms = 1000\n");
    bed.start_daemon(&[]);
    bed.ctl_ok(&[
        "rollout",
        "start",
        "sentiment",
        // Green at 1% before the promotion: urllib3's pool opens only a few connections, and
        // at 50% all of them landed on green in one run of several.
        "--steps",
        "1,100",
        "--hold",
        "1h",
        "--interval",
        "600s",
    ]);
    let client = pooled_clients(&bed, 12, 10, 5);
    thread::sleep(Duration::from_millis(1500));
    let promoted = now();
    bed.ctl_ok(&["rollout", "promote", "sentiment"]);
    let seen = collect(client);
    let drain = finished_drain(&bed, "blue");
    // As after a rollback: only requests counted as raced, never processed, and rare.
    let raced = drain["raced"].as_u64().unwrap_or(0);
    if let Err(why) = seen.failures_within_races(raced) {
        panic!("{why}; the drain: {drain}");
    }
    let blue = |keep: &dyn Fn(f64) -> bool| {
        seen.answers
            .iter()
            .filter(|(at, v)| v == "blue" && keep(*at))
            .count()
    };
    assert!(blue(&|at| at < promoted) > 10, "blue answered before");
    // The window (1 s) spreads when each connection is taken on; one taken on at its end is
    // watched up to 1 s more (`UNHURRIED_IDLE`, counting its quiet before) and answered by
    // blue if its client picks it up meanwhile. The clients' own clock and Python's threads
    // add a little.
    assert_eq!(
        blue(&|at| at > promoted + 2.3),
        0,
        "blue answered past the retire window and the quiet a drain waits for"
    );
    assert_eq!(drain["left"], 0, "{drain}");
    assert!(drain["connections"].as_u64().unwrap_or(0) >= 1, "{drain}");
    assert_eq!(
        bed.status()["services"][0]["open_connections"]["blue"].as_u64(),
        Some(0)
    );
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_drain_cut_short_by_a_killed_daemon_is_given_up_by_the_next_one() {
    require_root!();
    let _serial = one_at_a_time();
    let mut bed = Testbed::new(SERVER);
    // Every connection on green, so that the drain has connections to leave behind.
    bed.write_config("100");
    bed.start_daemon(&[]);
    let client = pooled_clients(&bed, 8, 10, 4);
    thread::sleep(Duration::from_millis(1500));
    bed.ctl_ok(&["rollback", "sentiment", "--wait-ms", "0"]);
    // The drain walks the flow table again 1 s after it began: it is still under way.
    thread::sleep(Duration::from_millis(100));
    bed.kill_daemon();
    let maps = splitter_ctl::kernel::maps::Maps::open_pinned(&bed.pin_dir).expect("maps");
    let left = maps.drained_flows().len();
    assert!(left > 0, "the killed daemon left its drain's records");
    bed.start_daemon(&[]);
    assert!(
        maps.drained_flows().is_empty(),
        "the next daemon clears what the drain left: {} left; {}",
        maps.drained_flows().len(),
        bed.daemon_log()
    );
    let history: serde_json::Value =
        serde_json::from_str(&bed.ctl_ok(&["history", "--output", "json"])).expect("JSON");
    let abandoned = history
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["kind"] == "drain" && e["details"]["flows"].as_u64().is_some())
        .unwrap_or_else(|| panic!("no drain given up in {history}"));
    assert_eq!(abandoned["details"]["flows"].as_u64(), Some(left as u64));
    assert!(
        abandoned["reason"]
            .as_str()
            .is_some_and(|r| r.contains("given up")),
        "{abandoned}"
    );
    // The clients never saw a request processed without its answer: any failure is one that
    // raced a close before the kill, dropped by the data plane and counted there (the plane's
    // counters outlive the daemon). Every connection is on green and drained, so more than one
    // may race (two of eight in a full run here).
    let seen = collect(client);
    let raced = bed.status()["plane"]["drain_raced"].as_u64().unwrap_or(0);
    assert!(
        seen.failures.len() as u64 <= raced,
        "{} failed, {raced} counted as raced: {:?}",
        seen.failures.len(),
        seen.failures
    );
    assert_eq!(bed.status()["services"][0]["live"], "blue");
}

/// What one keep-alive connection got for `request`: everything it read until the end, how it
/// ended (`Ok(0)`: a FIN), and when (after the request) its last bytes and its end came.
type Asked = (
    String,
    Result<usize, std::io::ErrorKind>,
    (Duration, Duration),
);

/// Sends `request` on a new connection from the client's side, then reads until the server
/// closes it (or 5 s pass between two reads).
fn ask(bed: &Testbed, request: &'static [u8]) -> thread::JoinHandle<Asked> {
    let vip = bed.vip();
    bed.client.spawn(move || {
        use std::io::{Read as _, Write as _};
        let mut conn = std::net::TcpStream::connect(vip).expect("connect");
        conn.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        conn.write_all(request).expect("request");
        let asked = std::time::Instant::now();
        let (mut got, mut last) = (Vec::new(), Duration::ZERO);
        let mut buf = [0u8; 4096];
        let ended = loop {
            match conn.read(&mut buf) {
                Ok(0) => break Ok(0),
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    last = asked.elapsed();
                }
                Err(e) => break Err(e.kind()),
            }
        };
        (
            String::from_utf8_lossy(&got).into_owned(),
            ended,
            (last, asked.elapsed()),
        )
    })
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_long_streaming_response_on_green_completes_then_its_connection_closes() {
    require_root!();
    let _serial = one_at_a_time();
    let mut bed = Testbed::new(SERVER);
    bed.write_config("100");
    bed.start_daemon(&[]);
    // A keep-alive connection on green asks for a response streamed over 2 s.
    let streaming = ask(
        &bed,
        b"GET /stream?ms=2000 HTTP/1.1\r\nHost: sentiment\r\n\r\n",
    );
    thread::sleep(Duration::from_millis(500));
    bed.ctl_ok(&["rollback", "sentiment", "--wait-ms", "0"]);
    let (body, after, times) = streaming.join().expect("the streaming client");
    let closed_in = times.1 - times.0;
    assert!(body.contains("X-Served-By: green"), "{body}");
    // A chunk every 50 ms for 2 s.
    for i in 0..40 {
        assert!(
            body.contains(&format!("green {i}\n")),
            "chunk {i} missing: {body}"
        );
    }
    assert_eq!(
        after,
        Ok(0),
        "the connection ends with a FIN after the response: {body}"
    );
    // Its head passed before the drain began, and the flow table said a stream was open: the
    // connection is closed right behind its last chunk.
    assert!(
        closed_in < Duration::from_millis(300),
        "closed {closed_in:?} after the stream"
    );
    let drain = drained_rollback(&bed)["details"]["drain"].clone();
    assert_eq!(drain["outcomes"]["drained_after_response"], 1, "{drain}");
    assert_eq!(drain["outcomes"]["reset_at_timeout"], 0, "{drain}");
    assert_eq!(drain["raced"], 0, "{drain}");
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_request_in_flight_at_the_rollback_is_answered_then_its_connection_closes() {
    require_root!();
    let _serial = one_at_a_time();
    let mut bed = Testbed::new(SERVER);
    // Green answers after 800 ms: an inference still running when the rollback comes.
    bed.restart_green_with(SERVER, &["--delay-ms", "800"]);
    bed.write_config("100");
    bed.start_daemon(&[]);
    let asking = ask(&bed, b"GET / HTTP/1.1\r\nHost: sentiment\r\n\r\n");
    thread::sleep(Duration::from_millis(200));
    bed.ctl_ok(&["rollback", "sentiment", "--wait-ms", "0"]);
    let (response, ended, (_, took)) = asking.join().expect("the client");
    assert!(
        response.starts_with("HTTP/1.1 200") && response.contains("X-Served-By: green"),
        "the request in flight was cut: {response:?}, then {ended:?} after {took:?}"
    );
    // Then a FIN, right behind the response.
    assert_eq!(ended, Ok(0), "{response}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    let drain = drained_rollback(&bed)["details"]["drain"].clone();
    assert_eq!(drain["outcomes"]["drained_after_response"], 1, "{drain}");
    assert_eq!(drain["raced"], 0, "{drain}");
}

/// Raises this process's open-file limit (its children, the servers and the daemon, inherit
/// it): thousands of connections need thousands of descriptors on each side.
fn allow_open_files(n: u64) {
    let limit = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: setrlimit reads a struct that lives across the call.
    let raised = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) };
    assert_eq!(raised, 0, "setrlimit: {}", std::io::Error::last_os_error());
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn two_thousand_idle_connections_are_all_closed_by_one_rollback() {
    require_root!();
    let _serial = one_at_a_time();
    const CONNECTIONS: usize = 2_000;
    allow_open_files(16_384);
    let mut bed = Testbed::new(SERVER);
    // Every new connection to green, so that every one of them is drained.
    bed.write_config("100");
    bed.start_daemon(&[]);
    let vip = bed.vip();
    let open: Vec<splitter_tests::http::KeepAlive> = bed.client.run(move || {
        (0..CONNECTIONS)
            .map(|i| {
                let mut connection = splitter_tests::http::KeepAlive::connect(vip)
                    .unwrap_or_else(|e| panic!("connection {i}: {e}"));
                let served_by = connection
                    .request()
                    .unwrap_or_else(|e| panic!("request {i}: {e}"));
                assert_eq!(served_by, "green", "connection {i}");
                connection
            })
            .collect()
    });
    // All idle now: one rollback drains them all at once.
    bed.ctl_ok(&["rollback", "sentiment"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut still_open = CONNECTIONS;
    while std::time::Instant::now() < deadline {
        still_open = open.iter().filter(|c| !c.closed_by_peer()).count();
        if still_open == 0 {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(still_open, 0, "connections not closed within 30 s");
    let rollback = drained_rollback(&bed);
    let drain = &rollback["details"]["drain"];
    assert_eq!(
        drain["connections"].as_u64(),
        Some(CONNECTIONS as u64),
        "{drain}"
    );
    assert_eq!(drain["left"], 0, "{drain}");
    assert_eq!(
        drain["outcomes"]["drained_idle"].as_u64(),
        Some(CONNECTIONS as u64),
        "every connection closed as an idle one, none reset: {drain}"
    );
    assert_eq!(drain["raced"], 0, "{drain}");
    // The closes wait for 100 ms of quiet and go out paced (kernel::closer): seconds, not
    // minutes.
    let last_close = drain["decision_to_last_close_us"]
        .as_u64()
        .expect("last close");
    assert!(last_close < 10_000_000, "{drain}");
    eprintln!(
        "drained {CONNECTIONS} idle connections, the last closed {last_close} µs after the decision"
    );
}

/// The sum of the `metric` series whose labels contain `labels`.
fn metric_total(bed: &Testbed, metric: &str, labels: &str) -> u64 {
    bed.metrics()
        .lines()
        .filter(|line| line.starts_with(&format!("{metric}{{")) && line.contains(labels))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn connections_past_max_connection_age_are_drained_so_a_weight_reaches_pooled_clients() {
    require_root!();
    let _serial = one_at_a_time();
    let mut bed = Testbed::new(SERVER);
    bed.write_config_with("50", "max_connection_age_ms = 4000\n");
    bed.start_daemon(&[]);
    let opened = now();
    let client = pooled_clients(&bed, 16, 10, 14);
    thread::sleep(Duration::from_secs(1));
    // An operator's weight moves new connections only: the pool's stay where they are.
    let moved = now();
    bed.ctl_ok(&["weight", "sentiment", "green", "0"]);
    let seen = collect(client);
    let end = seen.answers.iter().map(|(at, _)| *at).fold(0.0, f64::max);
    assert!(end > opened + 13.0, "the clients stopped early: {end}");
    // A close races a client's reuse of its connection only in the instant its FIN is on the
    // way (see the rollback's test): such a request is dropped unprocessed, and counted.
    let raced = metric_total(&bed, "splitter_drain_raced_requests_total", "");
    if let Err(why) = seen.failures_within_races(raced) {
        panic!("{why}");
    }
    let green_after_weight = seen.count("green", |at| at > moved + 0.1 && at < moved + 1.0);
    assert!(
        green_after_weight > 20,
        "the pool's green connections went on after the weight: {green_after_weight} answers"
    );
    // The pool's connections were opened in the first second; each is drained once it is past
    // 4 s (plus up to 0.4 s), at the daemon's next look (every 5 s), right behind a response.
    let last_green = seen.last("green").expect("green answered");
    assert!(
        last_green < opened + 1.0 + 4.4 + 5.0 + 1.0,
        "green answered {:.1} s after the clients began (they ran 14 s)",
        last_green - opened
    );
    let blue_late = seen.count("blue", |at| at > last_green + 1.0);
    assert!(
        blue_late > 100,
        "blue answered {blue_late} after green's last"
    );
    let drained_total =
        |labels: &str| metric_total(&bed, "splitter_drained_connections_total", labels);
    let aged = drained_total("cause=\"max_connection_age\"");
    let drained = drained_total("cause=\"max_connection_age\",outcome=\"drained");
    assert!(
        drained >= 1 && drained + 1 >= aged,
        "connections drained for their age: {drained} of {aged}\n{}",
        bed.metrics()
    );
    assert_eq!(
        drained_total("cause=\"version_left\""),
        0,
        "no version was left"
    );
}
