//! End to end for a service the kernel cannot read: TLS (real `openssl s_server` backends, real
//! `curl` clients). Its connections are recognised and counted as TLS, never as requests with
//! 0% errors; a rollout without PromQL gates is refused with a clear error; with a PromQL gate on
//! a real Prometheus it runs, judged by that gate alone, to promotion; with `--l4-only` it is
//! judged on L4 signals.

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use splitter_tests::{require_root, testbed::Testbed};

const SERVER: &str = env!("CARGO_BIN_EXE_splitter-testbed-server");
const TLS_PORT: u16 = 8443;

/// Starts `openssl s_server` with a fresh self-signed certificate in `version`'s namespace.
fn serve_tls(bed: &mut Testbed, version: &str) {
    let dir = bed.dir.join(format!("tls-{version}"));
    std::fs::create_dir_all(&dir).expect("tls dir");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=model"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl (cargo xtask setup installs it)");
    assert!(made.success(), "openssl req");
    let green = version == "green";
    let addr = if green {
        bed.green_addr()
    } else {
        bed.blue_addr()
    };
    let ns = if green { &bed.green } else { &bed.blue };
    let child = ns
        .exec("openssl")
        .args(["s_server", "-quiet", "-www", "-accept"])
        .arg(format!("{}:{TLS_PORT}", addr.ip()))
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_server");
    bed.keep(&format!("tls-{version}"), child);
}

fn tls_addr(addr: std::net::SocketAddrV4) -> SocketAddr {
    SocketAddr::new((*addr.ip()).into(), TLS_PORT)
}

/// `curl -k` from the client namespace to `addr`, `n` times, each on a new connection; how
/// many answered.
fn curl_to(bed: &Testbed, addr: SocketAddr, n: u32) -> u32 {
    let url = format!("https://{addr}/");
    (0..n)
        .filter(|_| {
            bed.client
                .exec("curl")
                .args(["-ksf", "-m", "5", "-o", "/dev/null", &url])
                .status()
                .is_ok_and(|s| s.success())
        })
        .count() as u32
}

/// `curl -k` to the service, `n` times.
fn curl(bed: &Testbed, n: u32) -> u32 {
    curl_to(bed, tls_addr(bed.vip_v4()), n)
}

fn rollout_status(bed: &Testbed) -> String {
    bed.ctl_ok(&["rollout", "status", "model"])
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_tls_service_is_counted_as_such_and_its_rollout_needs_promql_gates_or_l4_only() {
    require_root!();
    let mut bed = Testbed::new(SERVER);
    serve_tls(&mut bed, "blue");
    serve_tls(&mut bed, "green");
    let prometheus = splitter_tests::prometheus::start(&mut bed);
    bed.write_services(&format!(
        "[[service]]\nname = \"model\"\nlisten = \"{}\"\nblue = [\"{}\"]\ngreen = [\"{}\"]\ngreen_weight = 50\n",
        tls_addr(bed.vip_v4()),
        tls_addr(bed.blue_addr()),
        tls_addr(bed.green_addr()),
    ));
    bed.start_daemon(&[]);
    // Wait until openssl listens on both backends (their own addresses: direct traffic, which
    // Splitter passes untouched and does not count).
    let deadline = Instant::now() + Duration::from_secs(10);
    for backend in [bed.blue_addr(), bed.green_addr()] {
        while curl_to(&bed, tls_addr(backend), 1) == 0 {
            assert!(
                Instant::now() < deadline,
                "the TLS backend {backend} does not answer"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
    assert_eq!(curl(&bed, 20), 20);

    // Recognised as TLS (l7 = "auto"), and never counted as requests.
    let status = bed.status();
    let counters = &status["services"][0]["counters"];
    let tls: u64 = ["blue", "green"]
        .iter()
        .map(|v| counters[v]["protocols"][2].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(tls, 20, "{counters}");
    for version in ["blue", "green"] {
        assert_eq!(counters[version]["responses"], 0, "{counters}");
    }
    let text = bed.ctl_ok(&["status"]);
    assert!(
        text.contains("the kernel reads none of their requests"),
        "{text}"
    );

    // A rollout with the kernel's gates alone would judge nothing: refused, saying what to do.
    bed.ctl_ok(&["weight", "model", "green", "0"]);
    let refused = bed.ctl(&["rollout", "start", "model"]);
    let error = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{error}");
    assert!(
        error.contains("cannot read the requests of model")
            && error.contains("--promql-gate")
            && error.contains("--l4-only"),
        "{error}"
    );

    // With a PromQL gate it runs, judged by that gate alone, and promotes.
    bed.ctl_ok(&[
        "rollout",
        "start",
        "model",
        "--steps",
        "10,100",
        "--hold",
        "1s",
        "--interval",
        "300ms",
        "--prometheus-url",
        &prometheus,
        "--promql-gate",
        "scraped:min(up) >= 1",
    ]);
    let judged = rollout_status(&bed);
    assert!(
        judged.contains("nothing of model (it reads none of their requests)")
            && judged.contains("judged by PromQL: scraped"),
        "{judged}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let history = bed.ctl_ok(&["history"]);
        if history.contains("promotion") {
            break;
        }
        assert!(!history.contains("rollback"), "{history}");
        assert!(Instant::now() < deadline, "no promotion: {history}");
        let _ = curl(&bed, 2);
        thread::sleep(Duration::from_millis(200));
    }

    // The PromQL gate judged it: its readings are in the journal.
    let history = bed.ctl_ok(&["history", "--output", "json"]);
    let events: Vec<serde_json::Value> = serde_json::from_str(&history).expect("history JSON");
    assert!(
        events.iter().any(|e| {
            e["kind"] == "gate_evaluation" && e["details"]["promql"][0]["gate"] == "scraped"
        }),
        "{history}"
    );

    // With the acknowledgement, the kernel judges L4 signals.
    bed.ctl_ok(&["rollout", "start", "model", "--l4-only", "--hold", "60s"]);
    let judged = rollout_status(&bed);
    assert!(judged.contains("L4 only"), "{judged}");
    bed.ctl_ok(&["rollout", "abort", "model"]);
}
