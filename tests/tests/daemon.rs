//! End to end for the daemon: reload, health checks, restarts under load, and a real
//! Prometheus server scraping the metrics. Each test has its own test bed index.

use std::{
    net::{SocketAddr, SocketAddrV4},
    process::Stdio,
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
    testbed::{Testbed, ctl_bin, metric},
};

const SERVER: &str = env!("CARGO_BIN_EXE_splitter-testbed-server");

/// The id of the XDP program attached to the node's interface, from `ip link`.
fn xdp_program_id(bed: &Testbed) -> u32 {
    let out = bed
        .node
        .exec("ip")
        .args(["link", "show", "dev", &bed.node_interface()])
        .output()
        .expect("ip link");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("prog/xdp id ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no XDP program on the interface: {text}"))
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn reload_applies_a_new_service_and_a_broken_config_changes_nothing() {
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

    // A broken file: the CLI gets the file:line error, and nothing changes.
    let good = std::fs::read_to_string(&bed.config_path).expect("config");
    std::fs::write(
        &bed.config_path,
        good.replace("green_weight = 0", "green_weight = 0\ncolour = \"red\""),
    )
    .expect("write");
    let out = bed.ctl(&["reload"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("reload refused, nothing changed")
            && err.contains("splitter.toml:")
            && err.contains("`service[0].colour`: unknown key"),
        "{err}"
    );
    // The same by SIGHUP: refused, counted, logged.
    let daemon_pid = bed.daemon_pid();
    // SAFETY: kill has no memory preconditions; the pid is our child's.
    unsafe { libc::kill(daemon_pid, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !bed.daemon_log().contains("reload refused") {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload: {}",
            bed.daemon_log()
        );
        thread::sleep(Duration::from_millis(50));
    }
    conn = bed.client.run(move || {
        assert_eq!(
            conn.request().expect("request after refused reloads"),
            "blue"
        );
        conn
    });
    assert_eq!(bed.versions(20, vip), (20, 0, 0));

    // A good file with a second service: it works after the reload; the first is undisturbed.
    let second_backend = SocketAddrV4::new(bed.blue_addr().ip().to_owned(), 8081);
    bed.serve_on_backend(SERVER, false, second_backend, "blue-second");
    let second = SocketAddr::new(vip.ip(), 8081);
    std::fs::write(&bed.config_path, format!("{good}\n[[service]]\nname = \"second\"\nlisten = \"{second}\"\nblue = [\"{second_backend}\"]\n")).expect("write");
    let out = bed.ctl_ok(&["reload"]);
    assert!(
        out.contains("added [second]") && out.contains("kept [sentiment]"),
        "{out}"
    );
    assert_eq!(
        bed.versions(20, second),
        (20, 0, 0),
        "the new service answers"
    );
    bed.client
        .run(move || assert_eq!(conn.request().expect("request after the reload"), "blue"));

    let text = bed.metrics();
    assert_eq!(metric(&text, "splitter_reloads_total"), 1.0);
    assert_eq!(metric(&text, "splitter_reload_errors_total"), 2.0);

    // An operator's weight, written past the daemon, is noticed, logged and kept.
    bed.ctl_ok(&["weight", "sentiment", "green", "40"]);
    let deadline = Instant::now() + Duration::from_secs(8);
    while !bed
        .daemon_log()
        .contains("the split changed outside the daemon")
    {
        assert!(
            Instant::now() < deadline,
            "the daemon did not notice: {}",
            bed.daemon_log()
        );
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        bed.status()["services"][0]["share_percent"]["green"].as_f64(),
        Some(40.0)
    );
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_stopped_backend_leaves_its_pool_within_two_probe_intervals() {
    require_root!();
    let mut bed = Testbed::new(SERVER);
    let interval = Duration::from_millis(500);
    bed.write_config_with("50", "[service.health]\ninterval_ms = 500\ntimeout_ms = 200\nunhealthy_after = 2\nhealthy_after = 2\nhttp_path = \"/healthz\"\n");
    bed.start_daemon(&[]);
    let vip = bed.vip();
    let (blue, green, failed) = bed.versions(100, vip);
    assert!(
        blue > 20 && green > 20 && failed == 0,
        "{blue} {green} {failed}"
    );

    bed.stop("green");
    let stopped = Instant::now();
    let green_down = |bed: &Testbed| {
        bed.status()["services"][0]["pools"]["green"]["backends"][0]["healthy"]
            == serde_json::json!(false)
    };
    while !green_down(&bed) {
        assert!(
            stopped.elapsed() < Duration::from_secs(5),
            "green never marked down: {}",
            bed.daemon_log()
        );
        thread::sleep(Duration::from_millis(20));
    }
    let detected = stopped.elapsed();
    // Two failed probes: at most two intervals, plus the probe's own timeout and scheduling.
    assert!(
        detected <= 2 * interval + Duration::from_millis(200 + 300),
        "detected after {detected:?}"
    );
    assert_eq!(
        bed.versions(200, vip),
        (200, 0, 0),
        "every new connection goes to blue, none fails"
    );
    let status = bed.status();
    assert_eq!(
        status["services"][0]["pools"]["green"]["slots_set"], 0,
        "green's slot table is empty: {status}"
    );
    assert!(
        status["services"][0]["counters"]["green"]["failovers"]
            .as_u64()
            .unwrap_or(0)
            > 50,
        "{status}"
    );
    let text = bed.metrics();
    let green_backend = bed.green_addr();
    assert_eq!(
        metric(
            &text,
            &format!(
                "splitter_backend_up{{service=\"sentiment\",version=\"green\",backend=\"{green_backend}\"}}"
            )
        ),
        0.0
    );
    assert!(
        bed.daemon_log()
            .contains("no healthy backend left in this version")
    );

    // Back up: after two good probes green takes its share again.
    bed.serve_on_backend(SERVER, true, green_backend, "green");
    let deadline = Instant::now() + Duration::from_secs(5);
    while green_down(&bed) {
        assert!(
            Instant::now() < deadline,
            "green never came back: {}",
            bed.daemon_log()
        );
        thread::sleep(Duration::from_millis(50));
    }
    let (blue, green, failed) = bed.versions(100, vip);
    assert!(
        blue > 20 && green > 20 && failed == 0,
        "{blue} {green} {failed}"
    );
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_daemon_killed_under_steady_load_loses_no_request_and_its_counters_go_on() {
    require_root!();
    let mut bed = Testbed::new(SERVER);
    bed.write_config("30");
    bed.start_daemon(&[]);
    let vip = bed.vip();
    let running = Arc::new(AtomicBool::new(true));
    let load = {
        let running = Arc::clone(&running);
        let client = bed.client.name.clone();
        thread::spawn(move || {
            let ns = std::fs::File::open(format!("/run/netns/{client}")).expect("netns");
            // SAFETY: setns on this thread only.
            assert_eq!(
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) },
                0
            );
            let mut keep = KeepAlive::connect(vip).expect("connect");
            let first = keep.request().expect("first");
            let (mut ok, mut failed, mut moved) = (0u32, 0u32, 0u32);
            let deadline = Instant::now() + Duration::from_secs(30);
            while running.load(Ordering::SeqCst) && Instant::now() < deadline {
                match http::get(vip) {
                    Ok(_) => ok += 1,
                    Err(_) => failed += 1,
                }
                match keep.request() {
                    Ok(v) if v == first => ok += 1,
                    Ok(_) => moved += 1,
                    Err(_) => failed += 1,
                }
            }
            (ok, failed, moved)
        })
    };
    thread::sleep(Duration::from_millis(700));
    let before = bed.status()["services"][0]["counters"]["blue"]["new_flows"]
        .as_u64()
        .expect("counter");
    let program_before = xdp_program_id(&bed);
    bed.kill_daemon();
    thread::sleep(Duration::from_millis(700));
    bed.start_daemon(&[]);
    thread::sleep(Duration::from_millis(700));
    running.store(false, Ordering::SeqCst);
    let (ok, failed, moved) = load.join().expect("load");
    assert!(ok > 200, "only {ok} requests went through");
    assert_eq!((failed, moved), (0, 0), "of {ok} requests");
    assert!(bed.daemon_log().contains("adopted the pinned data plane"));
    // The restarted daemon loaded its own programs and swapped them in through the pinned link:
    // another program id on the interface, with nothing detached in between (no request failed).
    let program_after = xdp_program_id(&bed);
    assert_ne!(
        program_before, program_after,
        "the XDP program was replaced through the pinned link"
    );
    let after = bed.status()["services"][0]["counters"]["blue"]["new_flows"]
        .as_u64()
        .expect("counter");
    assert!(after > before, "counters went on: {before} -> {after}");
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn prometheus_scrapes_the_per_version_connection_counts() {
    require_root!();
    let prometheus = "/usr/bin/prometheus";
    assert!(
        std::path::Path::new(prometheus).exists(),
        "{prometheus} is missing: `cargo xtask setup` installs Debian's prometheus"
    );
    let mut bed = Testbed::new(SERVER);
    bed.write_config("30");
    bed.start_daemon(&[]);
    let (blue, green, failed) = bed.versions(300, bed.vip());
    assert_eq!(failed, 0);

    let dir = bed.dir.join("prometheus");
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("prometheus.yml");
    std::fs::write(&config, "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: splitter\n    static_configs:\n      - targets: ['127.0.0.1:9464']\n").expect("config");
    let child = bed
        .node
        .exec(prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg("--web.listen-address=127.0.0.1:9090")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).expect("log"))
        .spawn()
        .expect("start prometheus");
    bed.keep("prometheus", child);

    let api: SocketAddr = "127.0.0.1:9090".parse().expect("addr");
    let query = "/api/v1/query?query=splitter_connections_total%7Bservice%3D%22sentiment%22%7D";
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = (0u64, 0u64);
    while Instant::now() < deadline {
        if let Ok((200, body)) = bed.node.run(move || http::get_raw(api, query)) {
            let value: serde_json::Value = serde_json::from_str(&body).expect("prometheus JSON");
            let count = |version: &str| {
                value["data"]["result"]
                    .as_array()
                    .and_then(|r| r.iter().find(|s| s["metric"]["version"] == version))
                    .and_then(|s| s["value"][1].as_str())
                    .and_then(|v| v.parse::<u64>().ok())
            };
            if let (Some(b), Some(g)) = (count("blue"), count("green")) {
                seen = (b, g);
                if seen == (blue as u64, green as u64) {
                    return;
                }
            }
        }
        thread::sleep(Duration::from_millis(250));
    }
    let log = std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
    panic!(
        "Prometheus reported {seen:?}, the clients saw blue {blue} green {green}; its log:\n{log}"
    );
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_non_root_user_cannot_use_the_control_socket_the_pins_or_the_metrics_to_change_anything() {
    require_root!();
    let mut bed = Testbed::new(SERVER);
    bed.write_config("0");
    let mode_of = |path: &std::path::Path| {
        std::os::unix::fs::PermissionsExt::mode(
            &std::fs::symlink_metadata(path).expect("stat").permissions(),
        ) & 0o777
    };
    // A config any user may write is applied, with a warning naming the fix.
    std::fs::set_permissions(
        &bed.config_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .expect("chmod");
    bed.start_daemon(&[]);
    assert!(
        bed.daemon_log().contains("world-writable") && bed.daemon_log().contains("chmod o-w"),
        "{}",
        bed.daemon_log()
    );
    // Pins: the directory and every map and link pin in it are root's alone.
    assert_eq!(mode_of(&bed.pin_dir), 0o700);
    let pins: Vec<_> = std::fs::read_dir(&bed.pin_dir)
        .expect("pin dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert!(pins.len() > 5, "{pins:?}");
    for pin in &pins {
        assert_eq!(
            mode_of(pin) & 0o077,
            0,
            "{} is {:o}",
            pin.display(),
            mode_of(pin)
        );
    }
    // The metrics endpoint only reads.
    let refused = bed.node.run(|| {
        use std::io::{Read as _, Write as _};
        let mut stream =
            std::net::TcpStream::connect("127.0.0.1:9464").expect("connect to metrics");
        stream
            .write_all(b"POST /metrics HTTP/1.1\r\nHost: splitter\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
            .expect("write");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("read");
        answer
    });
    assert!(refused.starts_with("HTTP/1.1 405"), "{refused}");
    assert!(refused.contains("read-only"), "{refused}");
    let socket = bed.control_socket();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&socket).expect("socket").permissions(),
    ) & 0o777;
    assert_eq!(mode, 0o660);
    // As `nobody`, on a thread of a child process: connect must be refused by the mode.
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(ctl_bin())
        .arg("--config")
        .arg(&bed.config_path)
        .arg("reload")
        .output()
        .expect("setpriv");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("permission denied on the control socket"),
        "{err}"
    );
}
