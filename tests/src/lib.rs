//! Test support for Splitter: packets with an independent checksum routine, a guard for
//! network namespaces, the end-to-end test bed, and a small HTTP client. The test programs are
//! in `tests/`; the HTTP server the backends run is `src/bin/splitter-testbed-server.rs`.

pub mod bed_binary;
pub mod checksum;
pub mod compare;
pub mod flood;
pub mod http;
pub mod load;
pub mod netns;
pub mod packet;
pub mod plane;
pub mod prometheus;
pub mod testbed;
pub mod wrk;

/// Whether this process may load BPF programs and create namespaces.
#[must_use]
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Skips the calling test, with a printed reason, unless it runs as root.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::is_root() {
            eprintln!("skipped: needs root (BPF and network namespaces); `cargo xtask test` runs it as root");
            return;
        }
    };
}
