//! A bounded stream of new HTTP connections from a test bed's client to its service, tallied
//! by the version that answered. Used by the rollout tests and the demo.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crate::{http, testbed::Testbed};

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
