//! Real gRPC on a test bed (tests/clients/grpc_peer.py, Debian's python3-grpcio: the C-core
//! library): a server per version in blue's and green's namespaces, a `model` service in front of
//! them, and clients in the client namespace that keep each channel for several calls.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    net::{SocketAddr, SocketAddrV4},
    process::{Child, Stdio},
};

use crate::testbed::Testbed;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/grpc_peer.py");
/// Debian's interpreter, with Debian's python3-grpcio (`cargo xtask setup` installs both).
const PYTHON: &str = "/usr/bin/python3";
/// The port the gRPC servers and the `model` service listen on.
pub const PORT: u16 = 9090;

/// The gRPC address of a version's backend.
#[must_use]
pub fn backend(bed: &Testbed, green: bool) -> SocketAddrV4 {
    let addr = if green {
        bed.green_addr()
    } else {
        bed.blue_addr()
    };
    SocketAddrV4::new(*addr.ip(), PORT)
}

/// The `model` service's address.
#[must_use]
pub fn vip(bed: &Testbed) -> SocketAddr {
    SocketAddr::new(bed.vip().ip(), PORT)
}

/// Starts `version`'s gRPC server (named `grpc-blue` or `grpc-green` on the bed) with `args`
/// (`--delay-ms 20`, `--fail INTERNAL`) and waits until it listens.
///
/// # Panics
/// When the server cannot start: the test cannot go on.
pub fn serve(bed: &mut Testbed, version: &str, args: &[&str]) {
    let name = format!("grpc-{version}");
    let green = version == "green";
    let ns = if green { &bed.green } else { &bed.blue };
    let mut child = ns
        .exec(PYTHON)
        .arg(SCRIPT)
        .args(["server", &backend(bed, green).to_string(), version])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {PYTHON} (cargo xtask setup installs it): {e}"));
    let stdout = child.stdout.take().expect("the server's stdout");
    let mut line = String::new();
    let _ = BufReader::new(stdout).read_line(&mut line);
    assert_eq!(
        line.trim(),
        "listening",
        "the {version} gRPC server did not start"
    );
    bed.keep(&name, child);
}

/// Writes the config: the `model` service on port `PORT` in front of both servers, with `l7`
/// and green's weight, and `extra` lines for the service.
pub fn write_config(bed: &Testbed, l7: &str, green_weight: &str, extra: &str) {
    bed.write_services(&format!(
        "[[service]]\nname = \"model\"\nlisten = \"{}\"\nl7 = \"{l7}\"\nblue = [\"{}\"]\ngreen = [\"{}\"]\ngreen_weight = {green_weight}\n{extra}",
        vip(bed),
        backend(bed, false),
        backend(bed, true),
    ));
}

/// What a client saw.
#[derive(Debug, Default, serde::Deserialize)]
pub struct Calls {
    pub calls: u64,
    /// Per version: calls answered OK.
    pub ok: BTreeMap<String, u64>,
    /// Per version (`?` when the failure came from the client): failed calls by status code.
    pub codes: BTreeMap<String, BTreeMap<String, u64>>,
    /// Per version: the latencies of the calls answered OK, in ms.
    pub latency_ms: BTreeMap<String, Vec<f64>>,
    /// Per version: when its last OK answer came, wall-clock seconds (`pooled::now`'s clock).
    #[serde(default)]
    pub last_ok: BTreeMap<String, f64>,
}

impl Calls {
    /// Calls `version` failed with a status it sent (not the client's deadline or cancel).
    #[must_use]
    pub fn failed_by(&self, version: &str) -> u64 {
        self.codes
            .get(version)
            .map_or(0, |codes| codes.values().sum())
    }

    /// Calls that ended by the client's decision: deadline exceeded, cancelled.
    #[must_use]
    pub fn ended_by_client(&self) -> u64 {
        self.codes
            .values()
            .flat_map(|codes| codes.iter())
            .filter(|(code, _)| *code == "DEADLINE_EXCEEDED" || *code == "CANCELLED")
            .map(|(_, n)| n)
            .sum()
    }

    /// The median latency of `version`'s OK calls, in ms.
    #[must_use]
    pub fn p50_ms(&self, version: &str) -> Option<f64> {
        let mut values = self.latency_ms.get(version)?.clone();
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied()
    }
}

/// Starts a client in the client namespace with `args` (see grpc_peer.py).
///
/// # Panics
/// When the client cannot start.
#[must_use]
pub fn start_client(bed: &Testbed, args: &[&str]) -> Child {
    bed.client
        .exec(PYTHON)
        .arg(SCRIPT)
        .args(["client", &vip(bed).to_string()])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {PYTHON} (cargo xtask setup installs it): {e}"))
}

/// Waits for a client; what it saw.
///
/// # Panics
/// When the client failed or printed no summary.
#[must_use]
pub fn collect(client: Child) -> Calls {
    let output = client.wait_with_output().expect("the gRPC client");
    let text = String::from_utf8_lossy(&output.stdout);
    let last = text.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("the gRPC client's summary ({e}): {text:?}, {output:?}"))
}

/// Runs a client with `args` to its end.
#[must_use]
pub fn call(bed: &Testbed, args: &[&str]) -> Calls {
    collect(start_client(bed, args))
}
