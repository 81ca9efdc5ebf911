//! End to end: traffic to a backend's own address crosses the interface Splitter is attached
//! to untouched, while the service's traffic is split. A real curl and a real Prometheus on the
//! client side of the interface reach blue and green at their own addresses; the daemon's
//! health checks keep both healthy; none of it is counted as service traffic.

use std::time::Duration;

use splitter_tests::{
    http::KeepAlive,
    prometheus, require_root,
    testbed::{Testbed, metric},
};

const SERVER: &str = env!("CARGO_BIN_EXE_splitter-testbed-server");

/// `curl` in the client namespace: every URL on one keep-alive connection; each answer's
/// status and body.
fn curl(bed: &Testbed, urls: &[String]) -> String {
    let out = bed
        .client
        .exec("curl")
        .args(["--silent", "--show-error", "--max-time", "5"])
        .args(["--write-out", " %{http_code} %{num_connects}\\n"])
        .args(urls)
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl {urls:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn backends_answer_at_their_own_addresses_through_the_attached_interface() {
    require_root!();
    let mut bed = Testbed::new(SERVER);
    bed.write_config_with("50", "[service.health]\ninterval_ms = 200\n");
    bed.start_daemon(&[]);

    // Service traffic first: ten requests on one connection through the service address.
    let vip = bed.vip();
    let served = bed.client.run(move || {
        let mut conn = KeepAlive::connect(vip).expect("connect to the service");
        (0..10)
            .map(|_| conn.request().expect("request"))
            .collect::<Vec<_>>()
    });
    assert_eq!(served.len(), 10, "{served:?}");

    // An operator's curl straight to each backend, three requests on one connection each.
    for (name, addr) in [("blue", bed.blue_addr()), ("green", bed.green_addr())] {
        let urls: Vec<String> = (0..3)
            .map(|i| format!("http://{addr}/direct-{i}"))
            .collect();
        let answer = curl(&bed, &urls);
        assert_eq!(
            answer.matches(" 200 ").count(),
            3,
            "{name} answered each request: {answer}"
        );
        assert!(answer.contains(name), "{name} itself answered: {answer}");
    }

    // A Prometheus on the client side scrapes both backends' /metrics.
    let up = prometheus::scrape_from_client(&mut bed);
    assert_eq!(up.matches(r#""value":["#).count(), 2, "two targets: {up}");
    assert!(!up.contains(r#","0"]"#), "both targets up: {up}");

    // The daemon's health checks kept both versions healthy all along.
    std::thread::sleep(Duration::from_millis(600));
    let status = bed.status();
    for version in ["blue", "green"] {
        let backends = &status["services"][0]["pools"][version]["backends"];
        assert!(
            backends
                .as_array()
                .is_some_and(|b| !b.is_empty() && b.iter().all(|b| b["healthy"] == true)),
            "{version}: {backends}"
        );
    }

    // Only the service's ten requests are service traffic; the rest passed as unsteered.
    let responses: u64 = ["blue", "green"]
        .iter()
        .map(|v| {
            status["services"][0]["counters"][v]["responses"]
                .as_u64()
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(responses, 10, "{status}");
    let metrics = bed.metrics();
    assert!(
        metric(
            &metrics,
            "splitter_data_plane_packets_total{outcome=\"unsteered\"}"
        ) > 0.0,
        "{metrics}"
    );
}
