//! End to end for streamed HTTP/1.1 responses (headers at once, then chunks: the way vLLM, TGI
//! and other OpenAI-compatible servers stream tokens), read by a real streaming client (Python
//! `requests` with `stream=True`): the kernel's time to first token and to the last chunk are
//! the client's, and the default gates roll back a green whose first token comes ten times
//! later, though its headers come as fast as blue's.

use std::process::{Child, Stdio};

use splitter_tests::{judged, one_at_a_time, require_root, testbed::Testbed};

const SERVER: &str = env!("CARGO_BIN_EXE_splitter-testbed-server");
const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/stream_client.py");
/// Debian's interpreter, with Debian's python3-requests.
const PYTHON: &str = "/usr/bin/python3";

/// Starts a streaming client asking for `requests` streamed responses, a new session (a new
/// connection) every `per_session`.
fn start_client(bed: &Testbed, requests: u32, per_session: u32, seconds: u32) -> Child {
    bed.client
        .exec(PYTHON)
        .arg(CLIENT)
        .arg(format!("http://{}/stream?ms=100", bed.vip()))
        .args([
            requests.to_string(),
            per_session.to_string(),
            seconds.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {PYTHON} (cargo xtask setup installs it): {e}"))
}

fn collect(client: Child) -> serde_json::Value {
    let output = client.wait_with_output().expect("the streaming client");
    let text = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(text.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("the streaming client's summary ({e}): {text:?}"))
}

/// How far a Python client's times may trail the kernel's, at least.
const CLIENT_LAG_MS: f64 = 8.0;

fn median(values: &serde_json::Value) -> f64 {
    let mut values: Vec<f64> = values
        .as_array()
        .expect("times")
        .iter()
        .filter_map(serde_json::Value::as_f64)
        .collect();
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn the_kernel_times_a_streamed_responses_first_token_and_last_chunk_as_the_client_sees_them() {
    require_root!();
    let _serial = one_at_a_time();
    let mut bed = Testbed::new(SERVER);
    judged::serve(&mut bed, SERVER, "blue", &["--first-token-ms", "40"]);
    judged::serve(&mut bed, SERVER, "green", &["--first-token-ms", "80"]);
    bed.write_config("50");
    bed.start_daemon(&[]);
    // 20 connections at 50%: both versions are seen but once in half a million runs (with 10,
    // a full run once saw every connection go to green).
    let seen = collect(start_client(&bed, 40, 2, 60));
    assert_eq!(seen["failures"].as_array().map(Vec::len), Some(0), "{seen}");
    // The Python client's own lag on 2 busy cores: a full run here saw its first token 4.8 ms
    // after the kernel's (45.2 vs 40.4 ms, with the server sending it at 40 ms).
    let close =
        |kernel: f64, client: f64| (kernel - client).abs() <= (client * 0.10).max(CLIENT_LAG_MS);
    for (version, sent_ms) in [("blue", 40.0), ("green", 80.0)] {
        let client = &seen["versions"][version];
        assert!(client.is_object(), "{version} answered nothing: {seen}");
        let telemetry = &bed.status()["services"][0]["telemetry"][version];
        let kernel = |kind: &str| telemetry[kind]["p50_ms"].as_f64().unwrap_or(f64::NAN);
        let (first_token, whole) = (
            median(&client["first_token_ms"]),
            median(&client["whole_ms"]),
        );
        assert!(
            close(kernel("first_token"), first_token),
            "{version}: the kernel's first token {} ms, the client's {first_token} ms",
            kernel("first_token")
        );
        // Never before the server sent it (the histogram's resolution apart).
        assert!(
            kernel("first_token") >= sent_ms * 0.95,
            "{version}: the kernel's first token {} ms, sent at {sent_ms} ms",
            kernel("first_token")
        );
        assert!(
            close(kernel("whole"), whole),
            "{version}: the kernel's whole response {} ms, the client's {whole} ms",
            kernel("whole")
        );
        // The headers came at once: the time to first byte cannot see the first token.
        assert!(
            kernel("response") < first_token / 2.0,
            "{version}: headers after {} ms",
            kernel("response")
        );
    }
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_green_whose_first_token_comes_ten_times_later_is_rolled_back_by_the_default_gates() {
    require_root!();
    let _serial = one_at_a_time();
    let mut bed = Testbed::new(SERVER);
    judged::serve(&mut bed, SERVER, "blue", &["--first-token-ms", "20"]);
    judged::serve(&mut bed, SERVER, "green", &["--first-token-ms", "200"]);
    bed.write_config("0");
    bed.start_daemon(&[]);
    let seconds = u32::try_from(judged::ROLLOUT_LIMIT.as_secs() + 10).unwrap_or(u32::MAX);
    let clients: Vec<Child> = (0..4)
        .map(|_| start_client(&bed, 1_000_000, 2, seconds))
        .collect();
    judged::start(&bed, "sentiment", "2s", &[]);
    let end = judged::wait_for_end(&bed);
    for mut client in clients {
        let _ = client.kill();
        let _ = client.wait();
    }
    assert!(end.rolled_back(), "{}", end.event);
    // A latency gate (the median's or the p99's, whichever is convinced first) on the first
    // token: the headers of both versions come at once.
    assert!(end.reason().contains("ms vs live"), "{}", end.reason());
    // What the gates saw: the headers came as fast on both versions, the first token ten
    // times later on green.
    let telemetry = &bed.status()["services"][0]["telemetry"];
    let p50 = |version: &str, kind: &str| {
        telemetry[version][kind]["p50_ms"]
            .as_f64()
            .unwrap_or(f64::NAN)
    };
    assert!(
        p50("green", "response") < 10.0 && p50("blue", "response") < 10.0,
        "headers: {telemetry}"
    );
    assert!(
        p50("green", "first_token") > 5.0 * p50("blue", "first_token"),
        "first tokens: {telemetry}"
    );
}
