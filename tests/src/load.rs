//! Bounded load from a test bed's client to its service: a stream of new HTTP connections,
//! tallied by the version that answered, and keep-alive connections that keep asking, each
//! expected to stay on the version it started on. Used by the rollout, soak and flood tests and
//! the demo.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use crate::{
    http::{self, KeepAlive},
    testbed::Testbed,
};

/// Pause between two connections.
const GAP: Duration = Duration::from_millis(2);

/// Running totals: [blue ok, blue failed, green ok, green failed]. A refused or reset
/// connection cannot be told apart by version and counts as a blue failure.
#[derive(Default)]
pub struct Tally([AtomicU64; 4]);

impl Tally {
    /// Per version (ok, failed): [blue, green].
    #[must_use]
    pub fn read(&self) -> [(u64, u64); 2] {
        let get = |i: usize| self.0[i].load(Ordering::Relaxed);
        [(get(0), get(1)), (get(2), get(3))]
    }
}

/// New connections until stopped or `limit` has passed.
pub struct Load {
    running: Arc<AtomicBool>,
    pub tally: Arc<Tally>,
    thread: thread::JoinHandle<()>,
}

impl Load {
    #[must_use]
    pub fn start(bed: &Testbed, limit: Duration) -> Self {
        let running = Arc::new(AtomicBool::new(true));
        let tally = Arc::new(Tally::default());
        let (flag, counts, vip) = (Arc::clone(&running), Arc::clone(&tally), bed.vip());
        let thread = bed.client.spawn(move || {
            let deadline = Instant::now() + limit;
            while flag.load(Ordering::SeqCst) && Instant::now() < deadline {
                let slot = match http::get_any(vip) {
                    Ok((status, version)) => {
                        2 * usize::from(version == "green") + usize::from(status != 200)
                    }
                    Err(_) => 1,
                };
                counts.0[slot].fetch_add(1, Ordering::Relaxed);
                thread::sleep(GAP);
            }
        });
        Self {
            running,
            tally,
            thread,
        }
    }

    /// Stops and returns the totals, per version (ok, failed): [blue, green].
    pub fn stop(self) -> [(u64, u64); 2] {
        self.running.store(false, Ordering::SeqCst);
        self.thread.join().expect("load");
        self.tally.read()
    }
}

/// Pause between two rounds of requests on the keep-alive connections.
const KEEP_ALIVE_GAP: Duration = Duration::from_millis(50);

/// Keep-alive connections from the client, each sending a request every `KEEP_ALIVE_GAP` until
/// stopped or `limit` has passed. Like a pooling client, a connection the server closed while
/// it was idle (a drain) is opened again before the next request, and keeps the new one's
/// version.
pub struct KeepAliveLoad {
    running: Arc<AtomicBool>,
    /// [answered by the connection's version, failed, answered by the other version, reopened].
    counts: Arc<[AtomicU64; 4]>,
    /// The first `FAILURES_KEPT` failures, when and what, printed by `stop`.
    failures: Arc<Mutex<Vec<String>>>,
    thread: thread::JoinHandle<()>,
}

/// How many failures a keep-alive load describes.
const FAILURES_KEPT: usize = 20;

/// Notes a failure: its time of day (UTC, as the daemon's log gives it), where, and why.
fn note_failure(failures: &Mutex<Vec<String>>, what: &str, error: &dyn std::fmt::Display) {
    let Ok(mut kept) = failures.lock() else {
        return;
    };
    if kept.len() < FAILURES_KEPT {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let (s, ms) = (ms / 1000 % 86_400, ms % 1000);
        kept.push(format!(
            "{:02}:{:02}:{:02}.{ms:03} UTC {what}: {error}",
            s / 3600,
            s / 60 % 60,
            s % 60
        ));
    }
}

impl KeepAliveLoad {
    /// Opens `connections` connections (panics if one cannot be opened) and starts asking.
    #[must_use]
    pub fn start(bed: &Testbed, connections: usize, limit: Duration) -> Self {
        Self::start_to(bed, bed.vip(), connections, limit)
    }

    /// Like `start`, to the service address `vip` (the bed's IPv6 one, say).
    #[must_use]
    pub fn start_to(bed: &Testbed, vip: SocketAddr, connections: usize, limit: Duration) -> Self {
        let running = Arc::new(AtomicBool::new(true));
        let counts: Arc<[AtomicU64; 4]> = Arc::new(Default::default());
        let failures = Arc::new(Mutex::new(Vec::new()));
        let (flag, tally, failed) = (
            Arc::clone(&running),
            Arc::clone(&counts),
            Arc::clone(&failures),
        );
        let mut open: Vec<(KeepAlive, String)> = bed.client.run(move || {
            (0..connections)
                .map(|_| {
                    let mut conn = KeepAlive::connect(vip).expect("connect");
                    let version = conn.request().expect("first request");
                    (conn, version)
                })
                .collect()
        });
        // In the client's namespace: a connection the server closed is opened again from there.
        let thread = bed.client.spawn(move || {
            let deadline = Instant::now() + limit;
            while flag.load(Ordering::SeqCst) && Instant::now() < deadline {
                for (conn, version) in &mut open {
                    if conn.closed_by_peer() {
                        tally[3].fetch_add(1, Ordering::Relaxed);
                        let again = match KeepAlive::connect(vip) {
                            Ok(again) => again,
                            Err(error) => {
                                note_failure(&failed, "reconnect", &error);
                                tally[1].fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                        };
                        *conn = again;
                        match conn.request() {
                            Ok(now) => *version = now,
                            Err(error) => {
                                note_failure(&failed, "first request after reconnect", &error);
                                tally[1].fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                        }
                    }
                    let slot = match conn.request() {
                        Ok(now) if now == *version => 0,
                        Ok(now) => {
                            note_failure(&failed, &format!("moved from {version}"), &now);
                            2
                        }
                        Err(error) => {
                            note_failure(&failed, &format!("request on {version}"), &error);
                            1
                        }
                    };
                    tally[slot].fetch_add(1, Ordering::Relaxed);
                }
                thread::sleep(KEEP_ALIVE_GAP);
            }
        });
        Self {
            running,
            counts,
            failures,
            thread,
        }
    }

    /// Stops and returns [requests kept on their version, failed, moved to the other version,
    /// connections reopened after the server closed them]; prints the first failures.
    pub fn stop(self) -> [u64; 4] {
        self.running.store(false, Ordering::SeqCst);
        self.thread.join().expect("keep-alive thread");
        if let Ok(failures) = self.failures.lock() {
            for failure in failures.iter() {
                eprintln!("keep-alive load: {failure}");
            }
        }
        [0, 1, 2, 3].map(|i| self.counts[i].load(Ordering::Relaxed))
    }
}
