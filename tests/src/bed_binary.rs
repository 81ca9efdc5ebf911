//! What the test bed's programs for people (`splitter-testbed`, `splitter-demo`) share: root
//! and the server binary checked up front, and Ctrl-C turned into a flag, so that they return
//! normally and the bed's `Drop` removes everything they made.

use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// True once SIGINT, SIGTERM or SIGHUP arrived (after [`prepare`]).
#[must_use]
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Checks root, catches SIGINT, SIGTERM and SIGHUP (a closed terminal), and finds `splitter-testbed-server` next to the
/// running binary. Returns its path, or what is wrong (for `program`'s error message, with the
/// `xtask` command that builds everything).
pub fn prepare(program: &str, xtask: &str) -> Result<String, String> {
    if !crate::is_root() {
        return Err(format!("{program}: needs root (network namespaces, BPF)"));
    }
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGHUP, on_signal as *const () as libc::sighandler_t);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("splitter-testbed-server")))
        .filter(|path| path.exists())
        .and_then(|path| path.to_str().map(str::to_owned))
        .ok_or_else(|| {
            format!(
                "{program}: splitter-testbed-server is not built next to this binary; run `cargo xtask {xtask}`"
            )
        })
}
