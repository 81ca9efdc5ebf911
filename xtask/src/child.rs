//! A long-running child (the test bed, the demo, the benchmarks) that never outlives xtask:
//! SIGINT, SIGTERM and SIGHUP sent to xtask are passed on to it, and xtask waits while it
//! cleans up (its namespaces, daemon and load); if xtask dies outright, the kernel sends the
//! child SIGTERM (PR_SET_PDEATHSIG).

use std::{
    os::unix::process::CommandExt as _,
    process::{Command, ExitStatus},
    sync::atomic::{AtomicI32, Ordering},
};

/// The running child's pid, for the signal handler; 0 when none.
static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn pass_on(signal: libc::c_int) {
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, signal) };
    }
}

/// Runs `cmd` to its end, passing xtask's termination signals on to it.
pub fn run(cmd: &mut Command) -> std::io::Result<ExitStatus> {
    // SAFETY: the hook only calls prctl, which is async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let mut child = cmd.spawn()?;
    CHILD.store(child.id() as i32, Ordering::SeqCst);
    // SAFETY: the handler only reads an atomic and calls kill.
    unsafe {
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::signal(signal, pass_on as *const () as libc::sighandler_t);
        }
    }
    let status = child.wait();
    CHILD.store(0, Ordering::SeqCst);
    status
}
