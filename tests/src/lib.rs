//! Test support for Splitter: packets with an independent checksum routine, a guard for
//! network namespaces, the end-to-end test bed, and a small HTTP client. The test programs are
//! in `tests/`; the HTTP server the backends run is `src/bin/splitter-testbed-server.rs`.

pub mod bed_binary;
pub mod checksum;
pub mod compare;
pub mod etcd;
pub mod flood;
pub mod grpc;
pub mod http;
pub mod judged;
pub mod load;
pub mod netns;
pub mod packet;
pub mod plane;
pub mod pooled;
pub mod prometheus;
pub mod testbed;
pub mod wrk;

/// Whether this process may load BPF programs and create namespaces.
#[must_use]
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Fails the calling test with the reason when it does not run as root. Tests that need root
/// are `#[ignore = "needs root ..."]`, so a plain `cargo test` lists them as ignored; `cargo
/// xtask test` runs them as root with `--include-ignored`. None of them passes by returning
/// early.
#[macro_export]
macro_rules! require_root {
    () => {
        assert!(
            $crate::is_root(),
            "this test needs root (BPF and network namespaces): run `cargo xtask test` as root"
        );
    };
}

/// Held by each test of a file whose tests must not run side by side: those that compare the
/// kernel's times with a client's, or bound how soon something happens, on a 2-core machine
/// where another test's clients and servers would stretch the client's side.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Waits until no other test of this test binary holds it; held until dropped.
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
