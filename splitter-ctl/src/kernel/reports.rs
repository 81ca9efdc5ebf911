//! The kernel programs' rare events (the last-resort pool taking flows, the new-flow guard
//! tripping, a flow-table insert failing, a frame the parser refuses), which they report
//! through aya-log at most once a second per kind and CPU, forwarded into the daemon's tracing
//! output, rate-limited again per call site so that a flood never floods the log.

use std::{
    collections::HashMap,
    os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
    sync::Mutex,
    time::{Duration, Instant},
};

use aya::Ebpf;
use aya_log::EbpfLogger;

/// Least time between two lines from one call site of the kernel programs.
pub const FORWARD_EVERY: Duration = Duration::from_secs(10);

/// The reader of the programs' log records, taken from the object when it was loaded.
pub struct KernelLog {
    reader: EbpfLogger<Forward>,
}

impl std::fmt::Debug for KernelLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelLog").finish_non_exhaustive()
    }
}

impl KernelLog {
    /// Takes the log ring buffer out of a freshly loaded object.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, aya_log::Error> {
        Ok(Self {
            reader: EbpfLogger::init_with_logger(ebpf, Forward::default())?,
        })
    }

    /// Forwards every record the programs wrote since the last call.
    pub fn flush(&mut self) {
        self.reader.flush();
    }
}

/// Readable when the programs wrote a record. The ring buffer's descriptor, open and the same
/// for the reader's whole life.
impl AsFd for KernelLog {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.reader.as_fd()
    }
}

impl AsRawFd for KernelLog {
    fn as_raw_fd(&self) -> RawFd {
        self.reader.as_raw_fd()
    }
}

/// A `log::Log` that writes the kernel's records as tracing events (target `splitter::kernel`),
/// at most one per call site and `FORWARD_EVERY`, with how many it held back.
#[derive(Default)]
struct Forward {
    /// Per call site (file, line): when it was last forwarded, and how many were held back.
    sites: Mutex<HashMap<(String, u32), (Instant, u64)>>,
}

impl Forward {
    /// Whether a record of `site` is forwarded now; if so, how many were held back before it.
    fn admit(&self, site: (String, u32), now: Instant) -> Option<u64> {
        let mut sites = self
            .sites
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match sites.get_mut(&site) {
            Some((at, held)) if now.duration_since(*at) < FORWARD_EVERY => {
                *held += 1;
                None
            }
            Some((at, held)) => {
                let before = *held;
                (*at, *held) = (now, 0);
                Some(before)
            }
            None => {
                sites.insert(site, (now, 0));
                Some(0)
            }
        }
    }
}

impl log::Log for Forward {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let site = (
            record.file().unwrap_or("?").to_owned(),
            record.line().unwrap_or(0),
        );
        let Some(held_back) = self.admit(site, Instant::now()) else {
            return;
        };
        let message = record.args();
        match record.level() {
            log::Level::Error => {
                tracing::error!(target: "splitter::kernel", held_back, "{message}");
            }
            log::Level::Warn => tracing::warn!(target: "splitter::kernel", held_back, "{message}"),
            log::Level::Info => tracing::info!(target: "splitter::kernel", held_back, "{message}"),
            log::Level::Debug | log::Level::Trace => {
                tracing::debug!(target: "splitter::kernel", held_back, "{message}");
            }
        }
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_call_site_and_period_with_the_count_held_back() {
        let forward = Forward::default();
        let t0 = Instant::now();
        let site = || ("ingress.rs".to_owned(), 42);
        assert_eq!(forward.admit(site(), t0), Some(0));
        for i in 1..=5 {
            assert_eq!(forward.admit(site(), t0 + Duration::from_secs(i)), None);
        }
        assert_eq!(
            forward.admit(("ingress.rs".to_owned(), 43), t0),
            Some(0),
            "another call site has its own budget"
        );
        assert_eq!(forward.admit(site(), t0 + FORWARD_EVERY), Some(5));
        assert_eq!(forward.admit(site(), t0 + FORWARD_EVERY * 2), Some(0));
    }
}
