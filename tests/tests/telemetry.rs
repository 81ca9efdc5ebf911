//! End to end for the kernel telemetry: response latency per version, HTTP status classes,
//! backend resets and refused handshakes, against real servers with injected faults.

use std::{net::SocketAddr, thread, time::Duration};

use splitter_tests::{http, require_root, testbed::Testbed};

const SERVER: &str = env!("CARGO_BIN_EXE_splitter-testbed-server");

/// Health checks that stay out of the way of a test that breaks a backend on purpose.
const PATIENT_HEALTH: &str = "[service.health]\ninterval_ms = 60000\nunhealthy_after = 10\n";

/// Replaces the bed's `version` server with one started with `faults`.
fn restart_with(bed: &mut Testbed, green: bool, faults: &[&str]) {
    let (name, addr) = if green {
        ("green", bed.green_addr())
    } else {
        ("blue", bed.blue_addr())
    };
    bed.stop(name);
    bed.serve_on_backend_with(SERVER, green, addr, name, faults);
}

fn telemetry(bed: &Testbed, version: &str) -> serde_json::Value {
    bed.status()["services"][0]["telemetry"][version].clone()
}

fn counters(bed: &Testbed, version: &str) -> serde_json::Value {
    bed.status()["services"][0]["counters"][version].clone()
}

/// `n` new connections, one request each: (status, who served) or the error.
fn requests(bed: &Testbed, n: usize) -> Vec<std::io::Result<(u16, String)>> {
    let vip: SocketAddr = bed.vip();
    bed.client
        .run(move || (0..n).map(|_| http::get_any(vip)).collect())
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn each_version_s_response_latency_is_measured_in_the_kernel() {
    require_root!();
    let mut bed = Testbed::new(SERVER);
    restart_with(&mut bed, false, &["--delay-ms", "5"]);
    restart_with(&mut bed, true, &["--delay-ms", "50"]);
    bed.write_config("50");
    bed.start_daemon(&[]);
    let results = requests(&bed, 80);
    assert!(results.iter().all(Result::is_ok), "every request answered");

    let (blue, green) = (telemetry(&bed, "blue"), telemetry(&bed, "green"));
    let p50 = |t: &serde_json::Value| {
        t["response"]["p50_ms"]
            .as_f64()
            .unwrap_or_else(|| panic!("no p50 in {t}"))
    };
    assert!(
        (p50(&green) - 50.0).abs() <= 10.0,
        "green p50 {} ms, expected 50 ± 20%: {green}",
        p50(&green)
    );
    assert!(
        (p50(&blue) - 5.0).abs() <= 2.0,
        "blue p50 {} ms, expected 5 ± 2: {blue}",
        p50(&blue)
    );
    let served: u64 = ["blue", "green"]
        .iter()
        .map(|v| telemetry(&bed, v)["responses"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(served, 80, "one timed response per request");
    assert!(
        blue["handshake"]["p50_ms"].as_f64().is_some()
            && green["handshake"]["p50_ms"].as_f64().is_some(),
        "handshakes timed"
    );

    // Over the daemon's window (5 s), traffic has a rate and a recent error ratio.
    let vip = bed.vip();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        bed.client.run(move || {
            for _ in 0..10 {
                let _ = http::get_any(vip);
            }
        });
        let t = telemetry(&bed, "blue");
        if t["request_rate_per_second"]
            .as_f64()
            .is_some_and(|r| r > 0.0)
        {
            assert_eq!(t["recent_error_ratio"].as_f64(), Some(0.0), "{t}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no request rate after 15 s: {t}"
        );
        thread::sleep(Duration::from_millis(500));
    }
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn five_hundreds_are_counted_exactly_per_version() {
    require_root!();
    let mut bed = Testbed::new(SERVER);
    restart_with(&mut bed, true, &["--error-every", "5"]);
    bed.write_config_with("50", PATIENT_HEALTH);
    bed.start_daemon(&[]);
    let results = requests(&bed, 200);
    let count = |version: &str, status: u16| {
        results
            .iter()
            .filter(|r| matches!(r, Ok((s, v)) if *s == status && v == version))
            .count() as u64
    };
    let (green_500, green_200, blue_200) =
        (count("green", 500), count("green", 200), count("blue", 200));
    assert!(
        green_500 > 5,
        "the fault injection produced {green_500} errors"
    );
    assert_eq!(
        green_500 + green_200 + blue_200,
        200,
        "every request answered"
    );

    let (green, blue) = (counters(&bed, "green"), counters(&bed, "blue"));
    assert_eq!(
        green["http_status"][5].as_u64(),
        Some(green_500),
        "5xx of green: {green}"
    );
    assert_eq!(green["http_status"][2].as_u64(), Some(green_200));
    assert_eq!(blue["http_status"][2].as_u64(), Some(blue_200));
    assert_eq!(blue["http_status"][5].as_u64(), Some(0));
    let errors = telemetry(&bed, "green")["errors"].as_u64();
    assert_eq!(errors, Some(green_500));
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn backend_resets_and_refused_handshakes_are_counted() {
    require_root!();
    let mut bed = Testbed::new(SERVER);
    restart_with(&mut bed, true, &["--reset-every", "1"]);
    bed.write_config_with("100", PATIENT_HEALTH);
    bed.start_daemon(&[]);
    let resets = requests(&bed, 20).iter().filter(|r| r.is_err()).count() as u64;
    assert_eq!(resets, 20, "every request to green was reset");
    // Wait for the RSTs to be seen (they are sent as the server's threads close).
    thread::sleep(Duration::from_millis(200));
    assert_eq!(counters(&bed, "green")["backend_resets"].as_u64(), Some(20));

    // Nothing listens on green any more: its SYNs are answered with RSTs.
    bed.stop("green");
    let refused = requests(&bed, 10).iter().filter(|r| r.is_err()).count() as u64;
    assert_eq!(refused, 10);
    thread::sleep(Duration::from_millis(200));
    let green = counters(&bed, "green");
    assert_eq!(green["refused_handshakes"].as_u64(), Some(10), "{green}");
    assert_eq!(
        green["backend_resets"].as_u64(),
        Some(20),
        "refusals are not counted as resets"
    );
    assert_eq!(telemetry(&bed, "green")["errors"].as_u64(), Some(30));
}
