//! A network namespace that exists for the life of a guard: created by `ip netns add`, and on
//! drop its processes killed and the namespace (with its interfaces) deleted, also when the
//! test panics.

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    process::{Child, Command, Stdio},
    thread,
    time::Instant,
};

pub struct Netns {
    pub name: String,
}

/// Runs `ip` with `args`, panicking with its error output when it fails.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip: {e}"));
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

impl Netns {
    /// Creates the namespace, removing a leftover of the same name from a crashed run first.
    #[must_use]
    pub fn new(name: &str) -> Self {
        remove(name);
        ip(&["netns", "add", name]);
        let ns = Self {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NAME args...`.
    pub fn ip(&self, args: &[&str]) {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full);
    }

    /// A command that runs inside the namespace with a fresh /sys (`ip netns exec`); for
    /// programs that need no bpffs.
    #[must_use]
    pub fn exec(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// A command that enters only the network namespace (`nsenter --net`), so it shares the
    /// host's bpffs and its pins.
    #[must_use]
    pub fn enter(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.name))
            .arg(program);
        cmd
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) {
        let status = self
            .exec("sysctl")
            .args(["-qw", &format!("{key}={value}")])
            .stdout(Stdio::null())
            .status()
            .expect("sysctl");
        assert!(status.success(), "sysctl {key}={value} in {}", self.name);
    }

    /// Starts `command` inside the namespace the way a shell starts one, with no wrapper process
    /// in between: spawned from a thread that entered the namespace, so that the child inherits
    /// it and the standard library spawns it with posix_spawn (a vfork). Entering the namespace
    /// in the child instead (a `pre_exec` hook) forces a fork of this whole process, whose page
    /// tables take milliseconds to copy in a process as large as the bench, and a timed command
    /// would count them. Also returns when the spawn began, for timing commands.
    pub fn start(&self, mut command: Command) -> std::io::Result<(Child, Instant)> {
        self.run(move || {
            let at = Instant::now();
            command.spawn().map(|child| (child, at))
        })
    }

    /// Runs `f` on a thread that has entered the namespace; sockets it creates belong there.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.spawn(f)
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    /// Starts `f` on a thread that has entered the namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.name);
        thread::spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: setns on this thread only, with a namespace fd that stays open meanwhile.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
    }
}

/// Kills whatever still runs in the namespace and deletes it; quiet when it does not exist.
fn remove(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                // SAFETY: kill has no memory preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    let _ = Command::new("ip")
        .args(["netns", "del", name])
        .stderr(Stdio::null())
        .status();
}

impl Drop for Netns {
    fn drop(&mut self) {
        remove(&self.name);
    }
}
