//! A real Prometheus server (Debian's `prometheus`, installed by `cargo xtask setup`) in a test
//! bed's node namespace. It scrapes the blue and green backends' `/metrics` every 500 ms with a
//! `version` label, as a team's Prometheus would scrape its model servers, and the daemon's
//! PromQL gates query it. The bed stops it with the rest of its processes.

use std::{
    fs,
    net::SocketAddr,
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use crate::{http, testbed::Testbed};

/// Where it listens, inside the node namespace.
pub const LISTEN: &str = "127.0.0.1:9090";
/// How long it may take to start and scrape both backends once.
const START_LIMIT: Duration = Duration::from_secs(30);

/// Starts Prometheus in `bed`'s node namespace and waits until both backends were scraped.
/// Returns the URL the daemon (in the same namespace) reaches it at.
#[must_use]
pub fn start(bed: &mut Testbed) -> String {
    let dir = bed.dir.join("prometheus");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("prometheus dir");
    let config = dir.join("prometheus.yml");
    fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 500ms\n  scrape_timeout: 400ms\n\
             scrape_configs:\n  - job_name: model\n    static_configs:\n\
             \x20     - targets: ['{}']\n        labels: {{version: blue}}\n\
             \x20     - targets: ['{}']\n        labels: {{version: green}}\n",
            bed.blue_addr(),
            bed.green_addr()
        ),
    )
    .expect("prometheus config");
    let child = bed
        .node
        .exec("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={LISTEN}"))
        .arg("--log.level=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            fs::File::create(dir.join("prometheus.log")).expect("log"),
        ))
        .spawn()
        .expect("start prometheus (installed by `cargo xtask setup`)");
    bed.keep("prometheus", child);
    let addr: SocketAddr = LISTEN.parse().expect("addr");
    let deadline = Instant::now() + START_LIMIT;
    loop {
        let targets = bed
            .node
            .run(move || http::get_raw(addr, "/api/v1/targets?state=active"));
        if let Ok((200, body)) = &targets
            && body.matches(r#""health":"up""#).count() == 2
        {
            return format!("http://{LISTEN}");
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not scrape both backends within {START_LIMIT:?}: {targets:?}; log: {}",
            fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(200));
    }
}
