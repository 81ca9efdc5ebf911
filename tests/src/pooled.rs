//! The pooled client (tests/clients/pooled_client.py): Python `requests` sharing one
//! `Session` (urllib3's connection pool) between worker threads with think time, the way
//! model-serving clients keep their connections. Debian's python3 and python3-requests, which
//! `cargo xtask setup` installs.

use std::{
    io::{BufRead as _, BufReader, Read},
    process::{Child, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use crate::netns::Netns;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/pooled_client.py");
/// Debian's interpreter, with Debian's python3-requests.
const PYTHON: &str = "/usr/bin/python3";

/// Wall-clock time in seconds, the clock the client stamps its answers with.
#[must_use]
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// What the client saw: (answered at, version) per answer, and the failures.
#[derive(Debug, Default)]
pub struct Seen {
    pub answers: Vec<(f64, String)>,
    pub failures: Vec<String>,
}

impl Seen {
    /// When `version` last answered, if it did.
    #[must_use]
    pub fn last(&self, version: &str) -> Option<f64> {
        self.answers
            .iter()
            .filter(|(_, v)| v == version)
            .map(|(at, _)| *at)
            .reduce(f64::max)
    }

    /// Whether the failed requests are what a drain may cost: every one a race the data plane
    /// dropped and counted (`raced`: a request sent on a connection in the instant its FIN was
    /// on the way, never processed), and at most one in 1,000 requests (one allowed in a
    /// shorter run). HAProxy's `shutdown sessions` loses as many (docs/benchmarks.md); a
    /// host whose hypervisor takes much of the CPU stalls Python's threads between urllib3's
    /// check of a pooled connection and their send, and sees several in a run.
    pub fn failures_within_races(&self, raced: u64) -> Result<(), String> {
        let (failed, requests) = (
            self.failures.len(),
            self.answers.len() + self.failures.len(),
        );
        if failed as u64 > raced || failed * 1_000 > requests.max(1_000) {
            return Err(format!(
                "{failed} of {requests} requests failed, {raced} counted as raced: {:?}",
                self.failures
            ));
        }
        Ok(())
    }

    /// How many answers of `version` satisfy `when` (on their time).
    #[must_use]
    pub fn count(&self, version: &str, when: impl Fn(f64) -> bool) -> usize {
        self.answers
            .iter()
            .filter(|(at, v)| v == version && when(*at))
            .count()
    }
}

/// A running pooled client. Its output is read while it runs: a pipe holds 64 KiB, about a
/// thousand answers, and a client whose pipe is full stops its workers mid-print, so that a
/// test reading only at the end would see every client stall a second or so into the run
/// and measure nothing after.
pub struct Client {
    child: Child,
    stdout: JoinHandle<std::io::Result<Vec<u8>>>,
    stderr: JoinHandle<std::io::Result<Vec<u8>>>,
    /// Lines read from the client's output so far: one per answer or failure.
    lines: Arc<AtomicUsize>,
}

impl Client {
    /// Waits until the client has printed `lines` answers or failures, up to `within`: a test
    /// that times something from the client's first requests starts its clock after them, not
    /// after an interpreter that may take a second to start on a loaded host.
    pub fn wait_for_lines(&self, lines: usize, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            let read = self.lines.load(Ordering::Acquire);
            if read >= lines {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the pooled client printed {read} lines in {within:?}, not {lines}"
                ));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Starts `workers` threads in `client` asking `url` for `seconds`, `think_ms` apart.
pub fn start(
    client: &Netns,
    url: &str,
    workers: u32,
    think_ms: u32,
    seconds: u32,
) -> Result<Client, String> {
    let mut child = client
        .exec(PYTHON)
        .arg(SCRIPT)
        .arg(url)
        .args([
            workers.to_string(),
            think_ms.to_string(),
            seconds.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {PYTHON} (cargo xtask setup installs it): {e}"))?;
    let lines = Arc::new(AtomicUsize::new(0));
    let stdout = read_all(child.stdout.take(), Some(Arc::clone(&lines)));
    let stderr = read_all(child.stderr.take(), None);
    Ok(Client {
        child,
        stdout,
        stderr,
        lines,
    })
}

/// Reads `pipe` to its end on a thread of its own, counting its lines in `lines` as they come.
fn read_all(
    pipe: Option<impl Read + Send + 'static>,
    lines: Option<Arc<AtomicUsize>>,
) -> JoinHandle<std::io::Result<Vec<u8>>> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let Some(mut pipe) = pipe else {
            return Ok(bytes);
        };
        let mut chunk = [0u8; 4096];
        loop {
            let read = match pipe.read(&mut chunk) {
                Ok(0) => return Ok(bytes),
                Ok(read) => read,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let (chunk, _) = chunk.split_at(read);
            bytes.extend_from_slice(chunk);
            if let Some(lines) = &lines {
                let new = chunk.iter().filter(|b| **b == b'\n').count();
                lines.fetch_add(new, Ordering::Release);
            }
        }
    })
}

/// Waits for the client to end; what it saw.
pub fn collect(mut client: Client) -> Result<Seen, String> {
    let status = client
        .child
        .wait()
        .map_err(|e| format!("the pooled client: {e}"))?;
    let read = |reader: JoinHandle<std::io::Result<Vec<u8>>>| {
        reader
            .join()
            .map_err(|_| "the pooled client's reader panicked".to_owned())?
            .map_err(|e| format!("the pooled client's output: {e}"))
    };
    let (stdout, stderr) = (read(client.stdout), read(client.stderr));
    if !status.success() {
        return Err(format!(
            "the pooled client failed ({status}): {}",
            stderr.map_or_else(
                |why| why,
                |bytes| String::from_utf8_lossy(&bytes).into_owned()
            )
        ));
    }
    let stdout = stdout?;
    let mut seen = Seen::default();
    for line in BufReader::new(&stdout[..]).lines() {
        let line = line.map_err(|e| format!("the pooled client's output: {e}"))?;
        let value: serde_json::Value = serde_json::from_str(&line)
            .map_err(|e| format!("the pooled client's line `{line}`: {e}"))?;
        match value["error"].as_str() {
            Some(error) => seen.failures.push(error.to_owned()),
            None => seen.answers.push((
                value["at"].as_f64().unwrap_or_default(),
                value["version"].as_str().unwrap_or_default().to_owned(),
            )),
        }
    }
    Ok(seen)
}
