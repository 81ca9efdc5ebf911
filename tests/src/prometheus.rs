//! A real Prometheus server (Debian's `prometheus`, installed by `cargo xtask setup`) in a test
//! bed's node namespace. It scrapes the blue and green backends' `/metrics` every 500 ms with a
//! `version` label, as a team's Prometheus would scrape its model servers, and the daemon's
//! PromQL gates query it. The bed stops it with the rest of its processes.

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{http, testbed::Testbed};

/// Where it listens, inside the node namespace.
pub const LISTEN: &str = "127.0.0.1:9090";
/// How long it may take to start and scrape both backends once.
const START_LIMIT: Duration = Duration::from_secs(30);

/// Where the Prometheus behind TLS and basic auth listens, inside the node namespace.
pub const SECURED_LISTEN: &str = "127.0.0.1:9091";
/// Its basic-auth user.
pub const USER: &str = "splitter";

/// Starts Prometheus in `bed`'s node namespace and waits until both backends were scraped.
/// Returns the URL the daemon (in the same namespace) reaches it at.
#[must_use]
pub fn start(bed: &mut Testbed) -> String {
    let dir = bed.dir.join("prometheus");
    spawn(bed, &dir, LISTEN, None);
    let addr: SocketAddr = LISTEN.parse().expect("addr");
    wait_for_targets(&dir, || {
        bed.node
            .run(move || http::get_raw(addr, "/api/v1/targets?state=active"))
            .ok()
            .filter(|(status, _)| *status == 200)
            .map(|(_, body)| body)
    });
    format!("http://{LISTEN}")
}

/// Starts Prometheus in `bed`'s client namespace, where its scrapes of the backends' own
/// addresses cross the node's interface that Splitter is attached to (a monitoring host on the
/// client side), and waits until both backends were scraped. Returns the backends' `up` and
/// `http_requests_total` as Prometheus read them, by version.
pub fn scrape_from_client(bed: &mut Testbed) -> String {
    let dir = bed.dir.join("prometheus-client");
    spawn_in(bed, true, &dir, LISTEN, None);
    let addr: SocketAddr = LISTEN.parse().expect("addr");
    let query = |path: &'static str| {
        bed.client
            .run(move || http::get_raw(addr, path))
            .ok()
            .filter(|(status, _)| *status == 200)
            .map(|(_, body)| body)
    };
    wait_for_targets(&dir, || query("/api/v1/targets?state=active"));
    query("/api/v1/query?query=up").unwrap_or_default()
}

/// A Prometheus as a production one is set up: TLS with a certificate from a private CA, and
/// basic auth (its `--web.config.file`).
#[derive(Debug)]
pub struct Secured {
    /// `https://127.0.0.1:9091`.
    pub url: String,
    /// The CA's certificate (PEM), for `prometheus_ca_file`.
    pub ca_file: PathBuf,
    /// Another CA's certificate, which did not sign the server's.
    pub other_ca_file: PathBuf,
    /// A file holding `USER`'s password, for `prometheus_password_file`.
    pub password_file: PathBuf,
    /// A file holding a wrong password.
    pub wrong_password_file: PathBuf,
}

/// Starts a Prometheus behind TLS and basic auth in `bed`'s node namespace: a CA and a server
/// certificate for 127.0.0.1 made with openssl, the password hashed with htpasswd (bcrypt), both
/// installed by `cargo xtask setup`. Waits until both backends were scraped.
#[must_use]
pub fn start_secured(bed: &mut Testbed) -> Secured {
    let dir = bed.dir.join("prometheus-tls");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("prometheus dir");
    let file = |name: &str| dir.join(name);
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    // Two CAs: the one that signs the server's certificate, and one that does not.
    for (name, subject) in [
        ("ca", "/CN=splitter test CA"),
        ("other-ca", "/CN=another CA"),
    ] {
        let (key, pem) = (format!("{name}.key"), format!("{name}.pem"));
        openssl(
            &dir,
            &[
                &["req", "-x509"],
                &ec[..],
                &[
                    "-keyout", &key, "-out", &pem, "-days", "1", "-subj", subject,
                ],
            ]
            .concat(),
        );
    }
    openssl(
        &dir,
        &[
            &["req"],
            &ec[..],
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        ]
        .concat(),
    );
    fs::write(
        file("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("extensions");
    openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "1",
            "-extfile",
            "server.ext",
        ],
    );
    let password = format!("pw-{}", std::process::id());
    fs::write(file("password"), format!("{password}\n")).expect("password");
    fs::write(file("wrong-password"), "not-the-password\n").expect("password");
    let hashed = Command::new("htpasswd")
        .args(["-nbB", USER, &password])
        .output()
        .expect("htpasswd (apache2-utils, installed by `cargo xtask setup`)");
    assert!(hashed.status.success(), "{hashed:?}");
    let hash = String::from_utf8_lossy(&hashed.stdout)
        .trim()
        .strip_prefix(&format!("{USER}:"))
        .expect("user:hash")
        .to_owned();
    fs::write(
        file("web.yml"),
        format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\nbasic_auth_users:\n  {USER}: '{hash}'\n",
            file("server.pem").display(),
            file("server.key").display()
        ),
    )
    .expect("web config");
    spawn(bed, &dir, SECURED_LISTEN, Some(&file("web.yml")));
    let (ca, url) = (
        file("ca.pem"),
        format!("https://{SECURED_LISTEN}/api/v1/targets?state=active"),
    );
    let user = format!("{USER}:{password}");
    wait_for_targets(&dir, || {
        let out = bed
            .node
            .exec("curl")
            .args(["-s", "--max-time", "2", "--cacert"])
            .arg(&ca)
            .args(["-u", &user, &url])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    });
    Secured {
        url: format!("https://{SECURED_LISTEN}"),
        ca_file: file("ca.pem"),
        other_ca_file: file("other-ca.pem"),
        password_file: file("password"),
        wrong_password_file: file("wrong-password"),
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl (installed by `cargo xtask setup`)");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

/// Starts Prometheus in `bed`'s node namespace, listening on `listen`, with its files in `dir`,
/// scraping both backends every 500 ms.
fn spawn(bed: &mut Testbed, dir: &Path, listen: &str, web_config: Option<&Path>) {
    spawn_in(bed, false, dir, listen, web_config);
}

/// Starts Prometheus in the bed's client namespace, or else its node's.
fn spawn_in(bed: &mut Testbed, client: bool, dir: &Path, listen: &str, web_config: Option<&Path>) {
    fs::create_dir_all(dir).expect("prometheus dir");
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
    let mut command = if client {
        bed.client.exec("prometheus")
    } else {
        bed.node.exec("prometheus")
    };
    command
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={listen}"))
        .arg("--log.level=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            fs::File::create(dir.join("prometheus.log")).expect("log"),
        ));
    if let Some(web_config) = web_config {
        command.arg(format!("--web.config.file={}", web_config.display()));
    }
    let child = command
        .spawn()
        .expect("start prometheus (installed by `cargo xtask setup`)");
    let side = if client { "client" } else { "node" };
    bed.keep(&format!("prometheus {listen} on the {side}"), child);
}

/// Waits until `targets` (the answer to `/api/v1/targets?state=active`) shows both backends up.
fn wait_for_targets(dir: &Path, targets: impl Fn() -> Option<String>) {
    let deadline = Instant::now() + START_LIMIT;
    loop {
        let answer = targets();
        if answer
            .as_deref()
            .is_some_and(|body| body.matches(r#""health":"up""#).count() == 2)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not scrape both backends within {START_LIMIT:?}: {answer:?}; log: {}",
            fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(200));
    }
}
