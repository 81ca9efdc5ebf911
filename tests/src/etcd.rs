//! A real etcd for the fleet tests: Debian's `etcd-server` (installed by `cargo xtask setup`),
//! one or three members, in a network namespace of its own that each node's namespace reaches
//! over a veth pair. Addresses come from the first node's test bed (its /24 in 198.18.0.0/15),
//! so fleet tests running side by side never share one:
//!
//! ```text
//! etcd namespace sp{i}-etcd: members on lo at 198.18.i.241, .242, .243 (:2379 clients, :2380 peers)
//! node j: sp{j}-f0 198.18.j.202/30 ── sp{j}-f1 198.18.j.201/30 (in sp{i}-etcd)
//!         route 198.18.i.240/28 via 198.18.j.201
//! ```
//!
//! Dropping the cluster kills its members and deletes the namespace (and with it the node
//! ends of the links) and its data directories, also when the test fails.

use base64::Engine as _;
use std::{
    fs,
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{
    netns::{Netns, ip},
    testbed::Testbed,
};

/// etcd's client port.
const CLIENT_PORT: u16 = 2379;

pub struct EtcdCluster {
    pub ns: Netns,
    /// The test bed index the addresses come from.
    index: u8,
    dir: PathBuf,
    members: Vec<Option<Child>>,
    /// The claim on `index` when the cluster took one itself (`alone`).
    claim: Option<fs::File>,
}

impl EtcdCluster {
    /// Starts `members` etcd members (1 or 3) with addresses from test bed `index`, and waits
    /// until the cluster answers its health check.
    #[must_use]
    pub fn start(index: u8, members: usize) -> Self {
        assert!(matches!(members, 1 | 3), "1 or 3 members");
        let ns = Netns::new(&format!("sp{index}-etcd"));
        let dir = std::env::temp_dir().join(format!("splitter-etcd-{index}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("etcd dir");
        let mut cluster = Self {
            ns,
            index,
            dir,
            members: Vec::new(),
            claim: None,
        };
        for k in 0..members {
            cluster.ns.ip(&[
                "addr",
                "add",
                &format!("{}/32", cluster.member_addr(k)),
                "dev",
                "lo",
            ]);
        }
        for k in 0..members {
            let child = cluster.spawn_member(k, members);
            cluster.members.push(Some(child));
        }
        cluster.wait_healthy(Duration::from_secs(30));
        cluster
    }

    /// A cluster with addresses of its own (an index it claims), for tests with no test bed.
    #[must_use]
    pub fn alone(members: usize) -> Self {
        let (index, claim) = crate::testbed::claim_index();
        let mut cluster = Self::start(index, members);
        cluster.claim = Some(claim);
        cluster
    }

    /// Member `k`'s address.
    #[must_use]
    pub fn member_addr(&self, k: usize) -> String {
        format!("198.18.{}.{}", self.index, 241 + k)
    }

    /// The client URLs of every member.
    #[must_use]
    pub fn urls(&self) -> Vec<String> {
        (0..self.members.len())
            .map(|k| format!("http://{}:{CLIENT_PORT}", self.member_addr(k)))
            .collect()
    }

    fn spawn_member(&self, k: usize, members: usize) -> Child {
        let name = |k: usize| format!("e{k}");
        let peer = |k: usize| format!("http://{}:2380", self.member_addr(k));
        let initial: Vec<String> = (0..members)
            .map(|k| format!("{}={}", name(k), peer(k)))
            .collect();
        let client = format!("http://{}:{CLIENT_PORT}", self.member_addr(k));
        let log = fs::File::create(self.dir.join(format!("e{k}.log"))).expect("etcd log");
        self.ns
            .exec("etcd")
            .args(["--name", &name(k)])
            .arg("--data-dir")
            .arg(self.dir.join(format!("e{k}.data")))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer(k)])
            .args(["--initial-advertise-peer-urls", &peer(k)])
            .args(["--initial-cluster", &initial.join(",")])
            .args(["--initial-cluster-token", &format!("sp{}", self.index)])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd (cargo xtask setup installs etcd-server)")
    }

    /// Waits until every running member says it is healthy.
    pub fn wait_healthy(&self, within: Duration) {
        let deadline = Instant::now() + within;
        for k in 0..self.members.len() {
            if self.members[k].is_none() {
                continue;
            }
            loop {
                let out = self.curl(k, "/health", None).unwrap_or_default();
                if out.contains("\"health\":\"true\"") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "etcd member {k} not healthy: {out}; log: {}",
                    self.log(k)
                );
                thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Member `k`'s log.
    #[must_use]
    pub fn log(&self, k: usize) -> String {
        fs::read_to_string(self.dir.join(format!("e{k}.log"))).unwrap_or_default()
    }

    /// A request to member `k` with curl from inside the namespace: POST with `body`, or GET.
    fn curl(&self, k: usize, path: &str, body: Option<&str>) -> Option<String> {
        let url = format!("http://{}:{CLIENT_PORT}{path}", self.member_addr(k));
        let mut cmd = self.ns.exec("curl");
        cmd.args(["-s", "-m", "2"]);
        if let Some(body) = body {
            cmd.args(["-X", "POST", "-d", body]);
        }
        let out = cmd.arg(&url).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Writes `value` at `key` through etcd's gateway, as another writer (an operator's
    /// `etcdctl put`) would; panics unless etcd took it.
    pub fn put(&self, key: &str, value: &str) {
        let body = format!(
            "{{\"key\":\"{}\",\"value\":\"{}\"}}",
            base64(key.as_bytes()),
            base64(value.as_bytes())
        );
        let k = self.running().expect("a running member");
        let out = self.curl(k, "/v3/kv/put", Some(&body)).unwrap_or_default();
        assert!(out.contains("\"revision\""), "put {key}: {out}");
    }

    /// The value at `key`, when there is one.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<String> {
        let body = format!("{{\"key\":\"{}\"}}", base64(key.as_bytes()));
        let k = self.running()?;
        let out = self.curl(k, "/v3/kv/range", Some(&body))?;
        let answer: serde_json::Value = serde_json::from_str(&out).ok()?;
        let value = answer["kvs"][0]["value"].as_str()?;
        String::from_utf8(unbase64(value)).ok()
    }

    /// Member `k`'s process id, while it runs.
    #[must_use]
    pub fn member_pid(&self, k: usize) -> Option<u32> {
        self.members.get(k)?.as_ref().map(Child::id)
    }

    fn running(&self) -> Option<usize> {
        self.members.iter().position(Option::is_some)
    }

    /// Links `bed`'s node namespace to the cluster (`add_fleet` then makes it a node).
    pub fn link(&self, bed: &Testbed) {
        let j = bed.index;
        let (node_if, etcd_if) = (format!("sp{j}-f0"), format!("sp{j}-f1"));
        ip(&[
            "link",
            "add",
            &node_if,
            "netns",
            &bed.node.name,
            "type",
            "veth",
            "peer",
            "name",
            &etcd_if,
            "netns",
            &self.ns.name,
        ]);
        bed.node.ip(&[
            "addr",
            "add",
            &format!("198.18.{j}.202/30"),
            "dev",
            &node_if,
        ]);
        self.ns.ip(&[
            "addr",
            "add",
            &format!("198.18.{j}.201/30"),
            "dev",
            &etcd_if,
        ]);
        bed.node.ip(&["link", "set", &node_if, "up"]);
        self.ns.ip(&["link", "set", &etcd_if, "up"]);
        bed.node.ip(&[
            "route",
            "add",
            &format!("198.18.{}.240/28", self.index),
            "via",
            &format!("198.18.{j}.201"),
        ]);
    }

    /// Appends a `[fleet]` table to `bed`'s config: this cluster's members, node `node`, a
    /// 2 s lease (the shortest a config may set: tests see a silent node sooner).
    pub fn add_fleet(&self, bed: &Testbed, node: &str) {
        let urls: Vec<String> = self.urls().iter().map(|u| format!("\"{u}\"")).collect();
        let mut config = fs::read_to_string(&bed.config_path).expect("read config");
        config.push_str(&format!(
            "\n[fleet]\netcd = [{}]\nnode = \"{node}\"\nlease_ttl_s = 2\n",
            urls.join(", ")
        ));
        fs::write(&bed.config_path, config).expect("write config");
    }

    /// Cuts `bed`'s node off from etcd (its link down), or joins it again.
    pub fn partition(&self, bed: &Testbed, cut: bool) {
        let state = if cut { "down" } else { "up" };
        bed.node
            .ip(&["link", "set", &format!("sp{}-f0", bed.index), state]);
        if !cut {
            // The route went with the link.
            let _ = Command::new("ip")
                .args([
                    "-n",
                    &bed.node.name,
                    "route",
                    "replace",
                    &format!("198.18.{}.240/28", self.index),
                    "via",
                    &format!("198.18.{}.201", bed.index),
                ])
                .status();
        }
    }

    /// SIGKILLs member `k`, as a crash would.
    pub fn kill_member(&mut self, k: usize) {
        if let Some(mut child) = self.members[k].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `k` again on its data directory.
    pub fn restart_member(&mut self, k: usize) {
        assert!(self.members[k].is_none(), "member {k} runs");
        let child = self.spawn_member(k, self.members.len());
        self.members[k] = Some(child);
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for child in self.members.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
        // The claim goes with `self.claim`. The namespace (with the etcd ends of the links, and so the node ends) goes when its
        // guard drops, right after this.
    }
}

fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unbase64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap_or_default()
}

/// `n` test beds, each node `n{k}` of a fleet following a cluster of `members` (addresses of
/// its own, a claim it holds, whatever order the caller drops things in), with green at
/// `green` percent in their configs; their daemons are not started.
#[must_use]
pub fn fleet(
    server_bin: &str,
    n: usize,
    members: usize,
    green: &str,
) -> (EtcdCluster, Vec<Testbed>) {
    let beds: Vec<Testbed> = (0..n).map(|_| Testbed::new(server_bin)).collect();
    let cluster = EtcdCluster::alone(members);
    for (k, bed) in beds.iter().enumerate() {
        bed.write_config(green);
        cluster.link(bed);
        cluster.add_fleet(bed, &format!("n{k}"));
    }
    (cluster, beds)
}
