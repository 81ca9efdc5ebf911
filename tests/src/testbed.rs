//! The end-to-end test bed: four network namespaces (client, node, blue, green) joined by veth
//! pairs, with addresses in 198.18.0.0/15, real HTTP servers in blue and green, and the real
//! `splitter-ctl` binary running on the node. Each test bed takes a free index (a lock file held
//! while it lives), which gives it its own names and its own /24, so tests can run in parallel,
//! in threads or in processes. Dropping the test bed kills its
//! processes, removes its pins and deletes its namespaces, also when the test fails.
//!
//! ```text
//! client sp{i}c0 198.18.i.2 ── sp{i}n0 198.18.i.1 (VIP :8080, XDP + TC here) node
//!                                node sp{i}n1 198.18.i.9  ── sp{i}b0 198.18.i.10:8080 blue
//!                                node sp{i}n2 198.18.i.13 ── sp{i}g0 198.18.i.14:8080 green
//! ```

use std::{
    fs,
    io::{BufRead as _, BufReader},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Child, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{
    http::KeepAlive,
    netns::{Netns, ip},
};

/// The port every test service and backend listens on.
pub const PORT: u16 = 8080;

pub struct Testbed {
    pub index: u8,
    pub dir: PathBuf,
    pub pin_dir: PathBuf,
    pub config_path: PathBuf,
    /// Processes the bed runs, by name: the backends' servers, and whatever a test adds.
    servers: Vec<(String, Child)>,
    daemon: Option<Child>,
    pub client: Netns,
    pub node: Netns,
    pub blue: Netns,
    pub green: Netns,
    /// The claim on `index`, released when the bed has been taken down.
    claim: Option<fs::File>,
}

/// The `splitter-ctl` binary under test: `SPLITTER_CTL_BIN`, or the workspace's debug build.
#[must_use]
pub fn ctl_bin() -> PathBuf {
    let path = std::env::var_os("SPLITTER_CTL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/splitter-ctl")
        });
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo xtask test`, which builds it",
        path.display()
    );
    path
}

/// `splitter-ctl rollback sentiment --wait-ms 0` with the config at `config`, as an operator
/// runs it (no stdin): the benchmark's timed rollback. Its output is the caller's to direct.
#[must_use]
pub fn rollback_command(config: &Path) -> std::process::Command {
    let mut command = std::process::Command::new(ctl_bin());
    command
        .arg("--config")
        .arg(config)
        .args(["rollback", "sentiment", "--wait-ms", "0"])
        .stdin(Stdio::null());
    command
}

/// The indices tests take; 200 and up belong to the binaries (testbed, demo, bench).
const TEST_INDICES: std::ops::RangeInclusive<u8> = 1..=199;
/// Where the index claims are: one lock file per index, locked while a bed uses it.
const CLAIMS: &str = "/run/splitter-tests";

/// Claims a free index: the first whose lock file no other bed (in this process or another)
/// holds. The claim lasts as long as the file stays open. Test beds claim theirs; anything
/// else that needs addresses of its own (an etcd cluster alone) claims one too.
pub fn claim_index() -> (u8, fs::File) {
    use std::os::fd::AsRawFd as _;
    fs::create_dir_all(CLAIMS).expect("the test beds' claims directory");
    for index in TEST_INDICES {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(Path::new(CLAIMS).join(format!("bed-{index}.lock")))
            .expect("a claim file");
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return (index, file);
        }
    }
    panic!("every test bed index {TEST_INDICES:?} is taken");
}

impl Testbed {
    /// Builds a test bed at a free index: namespaces, links and addresses, and starts blue
    /// and green.
    #[must_use]
    pub fn new(server_bin: &str) -> Self {
        let (index, claim) = claim_index();
        let mut bed = Self::with_index(index, server_bin);
        bed.claim = Some(claim);
        bed
    }

    /// Builds the test bed `index` (the binaries' own, 200 and up).
    #[must_use]
    pub fn with_index(index: u8, server_bin: &str) -> Self {
        let name = |role: &str| format!("sp{index}-{role}");
        let dir = std::env::temp_dir().join(format!("splitter-test-{index}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("test dir");
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/splitter-test-{index}"));
        let _ = splitter_ctl::kernel::dataplane::detach(&pin_dir);
        let mut bed = Self {
            index,
            config_path: dir.join("splitter.toml"),
            dir,
            pin_dir,
            servers: Vec::new(),
            daemon: None,
            client: Netns::new(&name("client")),
            node: Netns::new(&name("node")),
            blue: Netns::new(&name("blue")),
            green: Netns::new(&name("green")),
            claim: None,
        };
        bed.wire();
        let blue = spawn_server(server_bin, &bed.blue, bed.blue_addr().into(), "blue");
        bed.servers.push(("blue".to_owned(), blue));
        let green = spawn_server(server_bin, &bed.green, bed.green_addr().into(), "green");
        bed.servers.push(("green".to_owned(), green));
        bed
    }

    /// Starts an HTTP server named `name` on the node itself, at the node's address and `port`.
    pub fn serve_on_node(&mut self, server_bin: &str, port: u16, name: &str) -> SocketAddr {
        let addr = SocketAddrV4::new(self.node_addr().parse().expect("addr"), port);
        let child = spawn_server(server_bin, &self.node, addr.into(), name);
        self.servers.push((name.to_owned(), child));
        SocketAddr::V4(addr)
    }

    /// Starts an HTTP server named `name` in the blue (`green = false`) or green namespace.
    pub fn serve_on_backend(
        &mut self,
        server_bin: &str,
        green: bool,
        addr: impl Into<SocketAddr>,
        name: &str,
    ) {
        self.serve_on_backend_with(server_bin, green, addr, name, &[]);
    }

    /// Like `serve_on_backend`, with extra server arguments (`--delay-ms 50`, say).
    pub fn serve_on_backend_with(
        &mut self,
        server_bin: &str,
        green: bool,
        addr: impl Into<SocketAddr>,
        name: &str,
        extra: &[&str],
    ) {
        let ns = if green { &self.green } else { &self.blue };
        let child = spawn_server_with(server_bin, ns, addr.into(), name, extra);
        self.servers.push((name.to_owned(), child));
    }

    /// Replaces green's server (named `green`) with one started with `extra` (`--delay-ms 800`,
    /// `--error-every 2`): a candidate with a fault.
    pub fn restart_green_with(&mut self, server_bin: &str, extra: &[&str]) {
        self.stop("green");
        self.serve_on_backend_with(server_bin, true, self.green_addr(), "green", extra);
    }

    /// Gives every link an IPv6 address too, in 2001:2::/48 (RFC 5180), one /64 per link of
    /// this bed, forwarding on the node and default routes back through it, and starts blue's
    /// and green's servers on their IPv6 addresses (named `blue6` and `green6`).
    pub fn add_ipv6(&mut self, server_bin: &str) {
        let i = self.index;
        for (peer, peer_if, node_if, link) in [
            (&self.client, format!("sp{i}c0"), format!("sp{i}n0"), 0),
            (&self.blue, format!("sp{i}b0"), format!("sp{i}n1"), 1),
            (&self.green, format!("sp{i}g0"), format!("sp{i}n2"), 2),
        ] {
            let (peer_addr, node_addr) = (self.addr6(link, 2), self.addr6(link, 1));
            peer.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{peer_addr}/64"),
                "dev",
                &peer_if,
                "nodad",
            ]);
            self.node.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{node_addr}/64"),
                "dev",
                &node_if,
                "nodad",
            ]);
            peer.ip(&[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &node_addr.to_string(),
            ]);
        }
        self.node.sysctl("net.ipv6.conf.all.forwarding", "1");
        let (blue, green) = (self.blue6(), self.green6());
        self.serve_on_backend(server_bin, false, blue, "blue6");
        self.serve_on_backend(server_bin, true, green, "green6");
    }

    /// Host `host` of this bed's IPv6 link `link` (0 client, 1 blue, 2 green).
    fn addr6(&self, link: u16, host: u16) -> Ipv6Addr {
        Ipv6Addr::new(
            0x2001,
            2,
            0,
            u16::from(self.index) << 4 | link,
            0,
            0,
            0,
            host,
        )
    }

    /// The IPv6 service address: the node's address on the client link (after `add_ipv6`).
    #[must_use]
    pub fn vip6(&self) -> SocketAddr {
        SocketAddr::V6(SocketAddrV6::new(self.addr6(0, 1), PORT, 0, 0))
    }

    #[must_use]
    pub fn blue6(&self) -> SocketAddr {
        SocketAddr::V6(SocketAddrV6::new(self.addr6(1, 2), PORT, 0, 0))
    }

    #[must_use]
    pub fn green6(&self) -> SocketAddr {
        SocketAddr::V6(SocketAddrV6::new(self.addr6(2, 2), PORT, 0, 0))
    }

    /// Keeps `child` (started by the test) until the bed is dropped.
    pub fn keep(&mut self, name: &str, child: Child) {
        self.servers.push((name.to_owned(), child));
    }

    /// Kills the process named `name` and waits for it.
    pub fn stop(&mut self, name: &str) {
        let at = self
            .servers
            .iter()
            .position(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no process `{name}`"));
        let (_, mut child) = self.servers.remove(at);
        let _ = child.kill();
        let _ = child.wait();
    }

    fn addr(&self, host: u8) -> String {
        format!("198.18.{}.{host}", self.index)
    }

    fn wire(&self) {
        let i = self.index;
        let links = [
            (
                &self.client,
                format!("sp{i}c0"),
                format!("sp{i}n0"),
                2,
                1,
                29,
            ),
            (
                &self.blue,
                format!("sp{i}b0"),
                format!("sp{i}n1"),
                10,
                9,
                30,
            ),
            (
                &self.green,
                format!("sp{i}g0"),
                format!("sp{i}n2"),
                14,
                13,
                30,
            ),
        ];
        for (peer, peer_if, node_if, peer_host, node_host, prefix) in &links {
            ip(&[
                "link",
                "add",
                peer_if,
                "netns",
                &peer.name,
                "type",
                "veth",
                "peer",
                "name",
                node_if,
                "netns",
                &self.node.name,
            ]);
            peer.ip(&[
                "addr",
                "add",
                &format!("{}/{prefix}", self.addr(*peer_host)),
                "dev",
                peer_if,
            ]);
            self.node.ip(&[
                "addr",
                "add",
                &format!("{}/{prefix}", self.addr(*node_host)),
                "dev",
                node_if,
            ]);
            peer.ip(&["link", "set", peer_if, "up"]);
            self.node.ip(&["link", "set", node_if, "up"]);
            peer.ip(&["route", "add", "default", "via", &self.addr(*node_host)]);
            // Each connection's packets on one CPU, as a NIC's receive-side scaling keeps them:
            // a veth otherwise takes a packet on the CPU its sender ran on, so a sender that
            // moved between CPUs has two packets of one connection handled at once, out of
            // order (the kernel's HTTP/2 reading counts such a connection as untracked).
            let rps = format!("/sys/class/net/{node_if}/queues/rx-0/rps_cpus");
            let cpus = thread::available_parallelism().map_or(1, std::num::NonZero::get);
            let mask = (1u64 << cpus.min(63)) - 1;
            let status = self
                .node
                .exec("sh")
                .args(["-c", &format!("echo {mask:x} > {rps}")])
                .status()
                .expect("sh");
            assert!(status.success(), "cannot set {rps}");
        }
        self.node.sysctl("net.ipv4.ip_forward", "1");
    }

    /// The node's interface towards the client, where the splitter attaches.
    #[must_use]
    pub fn node_interface(&self) -> String {
        format!("sp{}n0", self.index)
    }

    /// The client's interface.
    #[must_use]
    pub fn client_interface(&self) -> String {
        format!("sp{}c0", self.index)
    }

    /// The service address: the node's address on the client link.
    #[must_use]
    pub fn vip(&self) -> SocketAddr {
        SocketAddr::V4(self.vip_v4())
    }

    #[must_use]
    pub fn vip_v4(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.addr(1).parse().expect("addr"), PORT)
    }

    /// Gives the client the extra source addresses `clients`, all inside `prefix` (a part of
    /// 198.19.0.0/16, which only this bed's namespaces route), routed back through the node.
    pub fn add_client_addresses(&self, clients: &[Ipv4Addr], prefix: &str) {
        for addr in clients {
            self.client.ip(&[
                "addr",
                "add",
                &format!("{addr}/32"),
                "dev",
                &self.client_interface(),
            ]);
        }
        self.node
            .ip(&["route", "add", prefix, "via", &self.addr(2)]);
    }

    /// For each of `sources`, the versions that answer `per_source` new connections from it
    /// to `vip`, each with a 200.
    #[must_use]
    pub fn versions_from(
        &self,
        sources: Vec<Ipv4Addr>,
        vip: SocketAddrV4,
        per_source: usize,
    ) -> Vec<Vec<String>> {
        self.client.run(move || {
            sources
                .iter()
                .map(|source| {
                    (0..per_source)
                        .map(|_| {
                            let mut conn = KeepAlive::connect_from(*source, vip).expect("connect");
                            let (status, version) = conn.last_request().expect("request");
                            assert_eq!(status, 200, "from {source}");
                            version
                        })
                        .collect()
                })
                .collect()
        })
    }

    /// The client's address on its link to the node.
    #[must_use]
    pub fn client_ip(&self) -> Ipv4Addr {
        self.addr(2).parse().expect("addr")
    }

    #[must_use]
    pub fn node_addr(&self) -> String {
        self.addr(1)
    }

    #[must_use]
    pub fn blue_addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.addr(10).parse().expect("addr"), PORT)
    }

    #[must_use]
    pub fn green_addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.addr(14).parse().expect("addr"), PORT)
    }

    /// Writes the config for one service `sentiment` with green at `green_weight` percent.
    pub fn write_config(&self, green_weight: &str) {
        self.write_config_with(green_weight, "");
    }

    /// Like `write_config`, with `service_extra` appended to the service (a `[service.health]`
    /// table, say).
    pub fn write_config_with(&self, green_weight: &str, service_extra: &str) {
        self.write_services(&format!(
            "[[service]]\nname = \"sentiment\"\nlisten = \"{}\"\nprotocol = \"tcp\"\nblue = [\"{}\"]\ngreen = [\"{}\"]\ngreen_weight = {green_weight}\n{service_extra}",
            self.vip(),
            self.blue_addr(),
            self.green_addr(),
        ));
    }

    /// Writes the config: this bed's interface, pins, socket and state, then `services` (the
    /// `[[service]]` tables).
    pub fn write_services(&self, services: &str) {
        let config = format!(
            "interface = \"{}\"\npin_dir = \"{}\"\ncontrol_socket = \"{}\"\nstate_dir = \"{}\"\n\n{services}",
            self.node_interface(),
            self.pin_dir.display(),
            self.control_socket().display(),
            self.dir.join("state").display(),
        );
        fs::write(&self.config_path, config).expect("write config");
    }

    /// Puts `lines` (top-level keys, each ending in a newline) at the top of the config file
    /// that `write_config*` wrote.
    pub fn prepend_config(&self, lines: &str) {
        let config = fs::read_to_string(&self.config_path).expect("read config");
        fs::write(&self.config_path, format!("{lines}{config}")).expect("write config");
    }

    /// The daemon's control socket.
    #[must_use]
    pub fn control_socket(&self) -> PathBuf {
        self.dir.join("ctl.sock")
    }

    /// Starts `splitter-ctl daemon` on the node and waits until the service is in the kernel.
    pub fn start_daemon(&mut self, extra_args: &[&str]) {
        assert!(self.daemon.is_none(), "daemon already running");
        let log = fs::File::create(self.dir.join("daemon.log")).expect("daemon log");
        // Readiness arrives over the systemd notification protocol, as it would under systemd.
        let notify_path = self.dir.join("notify.sock");
        let _ = fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path).expect("bind notify socket");
        notify
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let child = self
            .node
            .enter(ctl_bin().to_str().expect("utf-8 path"))
            .arg("--config")
            .arg(&self.config_path)
            .arg("daemon")
            .args(extra_args)
            .env("NOTIFY_SOCKET", &notify_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start daemon");
        self.daemon = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut message = [0u8; 64];
        loop {
            if let Ok(n) = notify.recv(&mut message)
                && &message[..n] == b"READY=1"
            {
                return;
            }
            if let Some(Ok(Some(exit))) = self.daemon.as_mut().map(Child::try_wait) {
                panic!("daemon exited with {exit}: {}", self.daemon_log());
            }
            assert!(
                Instant::now() < deadline,
                "daemon not ready after 20 s: {}",
                self.daemon_log()
            );
        }
    }

    #[must_use]
    pub fn daemon_log(&self) -> String {
        fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// The daemon's process id.
    #[must_use]
    pub fn daemon_pid(&self) -> i32 {
        self.daemon
            .as_ref()
            .map(|d| d.id() as i32)
            .expect("daemon running")
    }

    /// Waits until this bed's kernel gives green `percent` of new connections; how long that
    /// took. Panics, with the daemon's log, after `within`.
    pub fn until_green(&self, percent: f64, within: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let now = self.kernel_green_percent();
            if (now - percent).abs() < 0.001 {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "bed {}: green at {now}%, not {percent}%, after {within:?}: {}",
                self.index,
                self.daemon_log()
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILLs the daemon, as a crash would.
    pub fn kill_daemon(&mut self) {
        let mut daemon = self.daemon.take().expect("daemon running");
        daemon.kill().expect("kill daemon");
        daemon.wait().expect("reap daemon");
    }

    /// Sends `signal` to the daemon and waits for it to exit.
    pub fn stop_daemon(&mut self, signal: i32) -> std::process::ExitStatus {
        let mut daemon = self.daemon.take().expect("daemon running");
        // SAFETY: kill has no memory preconditions; the pid is our child's.
        unsafe { libc::kill(daemon.id() as i32, signal) };
        daemon.wait().expect("reap daemon")
    }

    /// The daemon's metrics text, fetched inside the node namespace where it listens (the
    /// default `metrics_listen`).
    pub fn metrics(&self) -> String {
        let addr: SocketAddr = "127.0.0.1:9464".parse().expect("addr");
        let (status, body) = self
            .node
            .run(move || crate::http::get_raw(addr, "/metrics"))
            .expect("GET /metrics");
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Runs `splitter-ctl --config <this bed's config> args...` in the root namespace.
    #[must_use]
    pub fn ctl(&self, args: &[&str]) -> Output {
        // On the node, as an operator runs it on the serving host: a rollback with no daemon
        // sends its drain's closes from there.
        self.node
            .enter(ctl_bin().to_str().expect("utf-8 path"))
            .arg("--config")
            .arg(&self.config_path)
            .args(args)
            .output()
            .expect("run splitter-ctl")
    }

    /// Like `ctl`, but panics unless the command succeeds; returns its standard output.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "splitter-ctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The newest rollback of `sentiment` in the journal, once its drain has completed it
    /// (`details.drain.done`), waiting up to 5 s.
    pub fn drained_rollback(&self) -> Result<splitter_ctl::store::journal::Event, String> {
        self.drained_rollback_of("sentiment")
    }

    /// The same for `service`.
    pub fn drained_rollback_of(
        &self,
        service: &str,
    ) -> Result<splitter_ctl::store::journal::Event, String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let rollback = splitter_ctl::store::journal::Journal::open(&self.dir.join("state"))
                .and_then(|journal| journal.history(Some(service), 50))
                .map_err(|e| e.to_string())?
                .into_iter()
                .find(|e| e.event.kind.name() == "rollback");
            if let Some(event) = rollback
                && event.event.details["drain"]["done"] == true
            {
                return Ok(event);
            }
            if Instant::now() > deadline {
                return Err("the rollback's drain was not journaled within 5 s".to_owned());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The versions answering `n` new connections from the client to `addr`, one GET each:
    /// (blue, green, failed).
    #[must_use]
    pub fn versions(&self, n: usize, addr: SocketAddr) -> (usize, usize, usize) {
        self.client.run(move || {
            let (mut blue, mut green, mut failed) = (0, 0, 0);
            for _ in 0..n {
                match crate::http::get(addr).as_deref() {
                    Ok(v) if v.starts_with("blue") => blue += 1,
                    Ok(v) if v.starts_with("green") => green += 1,
                    _ => failed += 1,
                }
            }
            (blue, green, failed)
        })
    }

    /// Green's share of new connections in percent, read from the pins (not through the CLI
    /// under test).
    #[must_use]
    pub fn kernel_green_percent(&self) -> f64 {
        let maps =
            splitter_ctl::kernel::maps::Maps::open_pinned(&self.pin_dir).expect("pinned maps");
        let endpoint = splitter_ctl::model::config::endpoint(
            self.vip(),
            splitter_ctl::model::config::Protocol::Tcp,
        );
        let service = maps
            .service(&endpoint)
            .expect("read the service")
            .expect("the service is in the data plane");
        let word = maps.split(service.split).expect("split word");
        f64::from(word.share_of(splitter_common::Version::Green)) / 100.0
    }

    /// The status as JSON.
    #[must_use]
    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.ctl_ok(&["status", "--output", "json"])).expect("status JSON")
    }
}

/// Starts the test HTTP server in `ns` and waits until it listens.
fn spawn_server(server_bin: &str, ns: &Netns, addr: SocketAddr, name: &str) -> Child {
    spawn_server_with(server_bin, ns, addr, name, &[])
}

fn spawn_server_with(
    server_bin: &str,
    ns: &Netns,
    addr: SocketAddr,
    name: &str,
    extra: &[&str],
) -> Child {
    let mut child = ns
        .exec(server_bin)
        .args([
            "--listen",
            &addr.to_string(),
            "--name",
            name,
            "--max-seconds",
            "600",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {server_bin}: {e}"));
    let mut ready = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut ready)
        .expect("server output");
    assert_eq!(ready.trim(), "ready", "{name} server did not start");
    child
}

impl Drop for Testbed {
    fn drop(&mut self) {
        // A failing test shows what the daemon said, before its directory goes.
        if thread::panicking()
            && let Ok(log) = fs::read_to_string(self.dir.join("daemon.log"))
        {
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- the daemon's last log lines ---");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        for child in self
            .daemon
            .iter_mut()
            .chain(self.servers.iter_mut().map(|(_, c)| c))
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = splitter_ctl::kernel::dataplane::detach(&self.pin_dir);
        // The daemon's record of the config it applied, kept outside the bed's directory.
        let _ = fs::remove_file(splitter_ctl::store::applied::record_path(&self.config_path));
        let _ = fs::remove_dir_all(&self.dir);
        // The namespaces go when their guards drop, right after this.
    }
}

/// Panics unless the last response the version left began within `limit` of the rollback's
/// decision, on the kernel's clock (the journal's drain details).
pub fn assert_left_answered_within(drain: &serde_json::Value, limit: Duration) {
    let last_response_us = drain["decision_to_last_response_us"]
        .as_u64()
        .expect("the drain's last response");
    assert!(
        u128::from(last_response_us) <= limit.as_micros(),
        "the version left began its last response {last_response_us} µs after the decision; the drain: {drain}"
    );
}

/// The value of the sample `name_and_labels` (e.g. `splitter_reloads_total`) in a metrics text.
#[must_use]
pub fn metric(text: &str, name_and_labels: &str) -> f64 {
    counted(text, name_and_labels).unwrap_or_else(|| panic!("no `{name_and_labels}` in:\n{text}"))
}

/// Like `metric`, `None` when the sample is not there (a labelled counter nothing raised yet).
#[must_use]
pub fn counted(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(name_and_labels)
            .and_then(|rest| rest.trim().parse().ok())
    })
}
