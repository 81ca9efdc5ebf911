//! The 3 a.m. rollback (issue 15): `rollback`, `weight` and `status` work whatever the state of
//! the config file and of the daemon, say which pins and state they used, answer quickly and
//! honestly, and succeed when repeated; a daemon that would lose its data plane with its mount
//! namespace is refused. Each test has its own test bed index.

use std::{
    path::Path,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use splitter_ctl::store::{applied, journal::Journal};
use splitter_tests::{
    require_root,
    testbed::{Testbed, ctl_bin},
};

const SERVER: &str = env!("CARGO_BIN_EXE_splitter-testbed-server");

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `args`, asserts it succeeds; its stdout and stderr.
fn ok(bed: &Testbed, args: &[&str]) -> (String, String) {
    let out = bed.ctl(args);
    assert!(
        out.status.success(),
        "splitter-ctl {}: {}",
        args.join(" "),
        stderr(&out)
    );
    (stdout(&out), stderr(&out))
}

/// The journal's rollback and weight events, oldest first: (kind, actor).
fn journaled(bed: &Testbed) -> Vec<(String, String)> {
    let journal = Journal::open(&bed.dir.join("state")).expect("journal");
    let mut events: Vec<(String, String)> = journal
        .history(None, 100)
        .expect("history")
        .into_iter()
        .filter(|e| matches!(e.event.kind.name(), "rollback" | "weight"))
        .map(|e| (e.event.kind.name().to_owned(), e.event.actor))
        .collect();
    events.reverse();
    events
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn rollback_and_weight_work_with_an_invalid_file_a_file_that_does_not_parse_and_flags_alone() {
    require_root!();
    let mut bed = Testbed::new(SERVER);
    bed.write_config("30");
    bed.start_daemon(&[]);
    let good = std::fs::read_to_string(&bed.config_path).expect("config");
    let record = applied::record_path(&bed.config_path);
    assert!(record.exists(), "the daemon records the config it applied");

    // 1. The service no longer validates; the daemon's record of what it applied stands in.
    std::fs::write(
        &bed.config_path,
        good.replace("green_weight = 30", "green_weight = 300"),
    )
    .expect("write");
    assert!(!bed.ctl(&["check"]).status.success());
    let (out, err) = ok(&bed, &["rollback", "sentiment", "--wait-ms", "0"]);
    assert!(out.contains("blue 100%, green 0%"), "{out}");
    assert!(
        err.contains(&format!("using pins {}", bed.pin_dir.display()))
            && err.contains("from the config the daemon last applied")
            && err.contains("300"),
        "{err}"
    );
    assert_eq!(bed.kernel_green_percent(), 0.0);
    // Repeated in panic: a success that says so, and nothing written or journaled.
    let (out, _) = ok(&bed, &["rollback", "sentiment"]);
    assert!(out.contains("already rolled back"), "{out}");
    let (_, err) = ok(&bed, &["weight", "sentiment", "green", "30"]);
    assert!(err.contains("the daemon last applied"), "{err}");
    assert_eq!(bed.kernel_green_percent(), 30.0);
    let (out, _) = ok(&bed, &["weight", "sentiment", "green", "30"]);
    assert!(out.contains("already so"), "{out}");

    // 2. No record, a file with a semantic error outside the service: read leniently.
    std::fs::remove_file(&record).expect("remove the record");
    std::fs::write(
        &bed.config_path,
        format!("metrics_listen = \"not an address\"\n{good}"),
    )
    .expect("write");
    let (_, err) = ok(&bed, &["rollback", "sentiment", "--wait-ms", "0"]);
    assert!(
        err.contains("read leniently") && err.contains("metrics_listen"),
        "{err}"
    );
    assert_eq!(bed.kernel_green_percent(), 0.0);
    ok(&bed, &["weight", "sentiment", "green", "30"]);

    // 3. No record, the service itself invalid: named by its address, the pins from the file.
    std::fs::write(
        &bed.config_path,
        good.replace("green_weight = 30", "green_weight = 300"),
    )
    .expect("write");
    let refused = bed.ctl(&["rollback", "sentiment"]);
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("300"), "{}", stderr(&refused));
    let vip = bed.vip().to_string();
    ok(&bed, &["rollback", &vip, "--wait-ms", "0"]);
    assert_eq!(bed.kernel_green_percent(), 0.0);
    ok(&bed, &["weight", &vip, "green", "30"]);

    // 4. Not TOML at all, with the daemon's record (made again by a good reload, and kept by
    // the refused one): the record.
    std::fs::write(&bed.config_path, &good).expect("write");
    ok(&bed, &["reload"]);
    assert!(record.exists(), "a reload records what it applied");
    std::fs::write(&bed.config_path, "interface = [[[ half an edit").expect("write");
    let reload = bed.ctl(&["reload"]);
    assert!(!reload.status.success(), "a broken reload changes nothing");
    let (_, err) = ok(&bed, &["rollback", "sentiment", "--wait-ms", "0"]);
    assert!(err.contains("the daemon last applied"), "{err}");
    assert_eq!(bed.kernel_green_percent(), 0.0);
    ok(&bed, &["weight", "sentiment", "green", "30"]);

    // 5. Not TOML, no record: the error says what to pass; with the flags it works.
    std::fs::remove_file(&record).expect("remove the record");
    let refused = bed.ctl(&["rollback", "sentiment"]);
    assert_eq!(refused.status.code(), Some(1));
    let why = stderr(&refused);
    assert!(
        why.contains("--pin-dir") && why.contains(&record.display().to_string()),
        "{why}"
    );
    let pin_dir = bed.pin_dir.display().to_string();
    let state_dir = bed.dir.join("state").display().to_string();
    // One path alone could pair this data plane with another's lock and journal: refused.
    let half = bed.ctl(&["rollback", &vip, "--pin-dir", &pin_dir]);
    assert_eq!(half.status.code(), Some(1), "{}", stderr(&half));
    assert!(stderr(&half).contains("--state-dir"), "{}", stderr(&half));
    // A config file that is not there names no paths either: never the defaults.
    let missing = Command::new(ctl_bin())
        .args(["--config", "/nonexistent/splitter.toml", "rollback", &vip])
        .output()
        .expect("rollback");
    assert_eq!(missing.status.code(), Some(1), "{}", stderr(&missing));
    assert!(
        stderr(&missing).contains("--pin-dir"),
        "{}",
        stderr(&missing)
    );
    std::fs::remove_file(bed.dir.join("state").join("split.lock")).expect("the split lock");
    let flags = [
        "--pin-dir",
        pin_dir.as_str(),
        "--state-dir",
        state_dir.as_str(),
    ];
    let mut args = vec!["rollback", vip.as_str(), "--wait-ms", "0"];
    args.extend(flags);
    let (_, err) = ok(&bed, &args);
    assert!(err.contains("from the command line"), "{err}");
    assert_eq!(bed.kernel_green_percent(), 0.0);
    assert!(
        bed.dir.join("state").join("split.lock").exists(),
        "the write took the split lock in --state-dir"
    );
    let mut args = vec!["status", "--output", "json"];
    args.extend(flags);
    let (status, _) = ok(&bed, &args);
    assert!(status.contains(&pin_dir), "{status}");

    // Every change was written under the split lock and journaled, by the Unix user.
    let events = journaled(&bed);
    let kinds: Vec<&str> = events.iter().map(|(kind, _)| kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "rollback", "weight", "rollback", "weight", "rollback", "weight", "rollback", "weight",
            "rollback"
        ]
    );
    assert!(
        events.iter().all(|(_, actor)| actor == "root (uid 0)"),
        "{events:?}"
    );

    // Through sudo the journal names the person, not root.
    let sudo = Command::new(ctl_bin())
        .arg("--config")
        .arg(&bed.config_path)
        .args(["weight", &vip, "green", "5"])
        .args(flags)
        .env("SUDO_UID", "65534")
        .output()
        .expect("weight");
    assert!(sudo.status.success(), "{}", stderr(&sudo));
    let expected = std::fs::read_to_string("/proc/self/loginuid")
        .ok()
        .and_then(|uid| uid.trim().parse::<u32>().ok())
        .filter(|uid| *uid != u32::MAX)
        .map_or_else(
            || "nobody (uid 65534)".to_owned(),
            splitter_ctl::io::users::user,
        );
    assert_eq!(
        journaled(&bed).last().map(|(_, actor)| actor.as_str()),
        Some(expected.as_str())
    );
}

/// Journals a promotion of `live` for `sentiment`, `ago` before now.
fn promoted(bed: &Testbed, live: &str, ago: Duration) {
    let journal = Journal::open(&bed.dir.join("state")).expect("journal");
    let at = splitter_ctl::store::journal::now_ms() - i64::try_from(ago.as_millis()).expect("ms");
    journal
        .record_at(
            at,
            &splitter_ctl::store::journal::NewEvent {
                details: serde_json::json!({ "live": live }),
                ..splitter_ctl::store::journal::NewEvent::new(
                    "sentiment",
                    splitter_ctl::store::journal::EventKind::Promotion,
                    "gates",
                )
            },
        )
        .expect("record");
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_repeated_rollback_never_undoes_a_later_change_and_never_fails() {
    require_root!();
    let mut bed = Testbed::new(SERVER);
    // Green live with every new connection (green_weight is green's share).
    bed.write_config_with("100", "live = \"green\"\n");
    bed.start_daemon(&[]);
    let live = |bed: &Testbed| bed.status()["services"][0]["live"].clone();
    let vip = bed.vip().to_string();

    // A promotion a minute ago stands: a rollback returns to blue, by name or by address.
    promoted(&bed, "green", Duration::from_secs(60));
    let (out, _) = ok(&bed, &["rollback", &vip, "--wait-ms", "0"]);
    assert!(out.contains("live blue"), "{out}");
    assert_eq!(live(&bed), "blue");
    // Repeated: the rollback itself is the last change now, so nothing is undone again.
    let (out, _) = ok(&bed, &["rollback", "sentiment"]);
    assert!(out.contains("already rolled back"), "{out}");
    assert_eq!(live(&bed), "blue");

    // A new candidate after a promotion: its rollback, repeated, never brings it back live.
    promoted(&bed, "blue", Duration::from_secs(60));
    ok(&bed, &["weight", "sentiment", "green", "30"]);
    ok(&bed, &["rollback", "sentiment", "--wait-ms", "0"]);
    let (out, _) = ok(&bed, &["rollback", "sentiment"]);
    assert!(out.contains("already rolled back"), "{out}");
    assert_eq!(live(&bed), "blue");
    assert_eq!(bed.kernel_green_percent(), 0.0);

    // A promotion long past its window, then a candidate rolled back: a repeat still succeeds.
    promoted(&bed, "blue", Duration::from_secs(3 * 86_400));
    ok(&bed, &["weight", "sentiment", "green", "30"]);
    ok(&bed, &["rollback", "sentiment", "--wait-ms", "0"]);
    let (out, _) = ok(&bed, &["rollback", "sentiment"]);
    assert!(out.contains("already rolled back"), "{out}");
    assert_eq!(live(&bed), "blue");
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn with_the_daemon_stopped_status_answers_within_a_second_and_rollback_works() {
    require_root!();
    let mut bed = Testbed::new(SERVER);
    bed.write_config("20");
    bed.prepend_config("control_group = \"nogroup\"\n");
    bed.start_daemon(&[]);
    // Its log is a file here, not a terminal: no colour codes in it.
    assert!(
        !bed.daemon_log().contains('\u{1b}'),
        "{:?}",
        bed.daemon_log()
    );
    // Operators through the control socket are journaled by their Unix user (SO_PEERCRED).
    ok(
        &bed,
        &[
            "rollout",
            "start",
            "sentiment",
            "--steps",
            "10,100",
            "--hold",
            "1h",
        ],
    );
    let paused = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(ctl_bin())
        .arg("--config")
        .arg(&bed.config_path)
        .args(["rollout", "pause", "sentiment"])
        .output()
        .expect("setpriv");
    assert!(paused.status.success(), "{}", stderr(&paused));
    ok(&bed, &["rollout", "abort", "sentiment"]);
    let journal = Journal::open(&bed.dir.join("state")).expect("journal");
    let actors: Vec<(String, String)> = journal
        .history(Some("sentiment"), 20)
        .expect("history")
        .into_iter()
        .filter(|e| e.event.kind.name() != "gate_evaluation")
        .map(|e| (e.event.kind.name().to_owned(), e.event.actor))
        .collect();
    for (kind, actor) in [
        ("rollout_started", "root (uid 0)"),
        ("operator_override", "nobody (uid 65534)"),
        ("rollback", "root (uid 0)"),
    ] {
        assert!(
            actors.iter().any(|(k, a)| k == kind && a == actor),
            "no {kind} by {actor}: {actors:?}"
        );
    }
    // `history` shows the ids that `review` and `report` take.
    let (history, _) = ok(&bed, &["history"]);
    let started = journal
        .history(Some("sentiment"), 20)
        .expect("history")
        .into_iter()
        .find(|e| e.event.kind.name() == "rollout_started")
        .expect("started");
    assert!(
        history.contains(&format!("#{}", started.id))
            && history.contains("by nobody (uid 65534): paused"),
        "{history}"
    );
    ok(&bed, &["weight", "sentiment", "green", "20"]);

    // SIGSTOP: the daemon holds its socket but never answers.
    let pid = bed.daemon_pid();
    // SAFETY: kill has no memory preconditions; the pid is the bed's daemon.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let started = Instant::now();
    let status = bed.ctl(&["status"]);
    let took = started.elapsed();
    let (out, err) = (stdout(&status), stderr(&status));
    assert!(status.status.success(), "{err}");
    assert!(
        took < Duration::from_millis(2_500),
        "status took {took:?} against a hung daemon"
    );
    assert!(err.contains("does not answer within 1 s"), "{err}");
    assert!(out.contains("live blue"), "{out}");
    let (out, _) = ok(&bed, &["rollback", "sentiment", "--wait-ms", "0"]);
    assert!(out.contains("green 0%"), "{out}");
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert_eq!(bed.kernel_green_percent(), 0.0);
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_rollback_as_another_user_names_permission_denied() {
    require_root!();
    let mut bed = Testbed::new(SERVER);
    bed.write_config("10");
    bed.start_daemon(&[]);
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(ctl_bin())
        .arg("--config")
        .arg(&bed.config_path)
        .args(["rollback", "sentiment"])
        .output()
        .expect("setpriv");
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "permission denied on the pin directory `{}`",
            bed.pin_dir.display()
        )) && !err.contains("no data plane is pinned"),
        "{err}"
    );
    assert_eq!(bed.kernel_green_percent(), 10.0, "nothing changed");
}

/// Waits up to 20 s for `child` to exit.
fn wait_exit(child: &mut std::process::Child) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_daemon_under_ip_netns_exec_is_refused_unless_told_its_data_plane_goes_with_it() {
    require_root!();
    let bed = Testbed::new(SERVER);
    bed.write_config("0");
    let log = bed.dir.join("private.log");
    let daemon = |extra: &[&str]| {
        bed.node
            .exec(ctl_bin().to_str().expect("utf-8 path"))
            .arg("--config")
            .arg(&bed.config_path)
            .arg("daemon")
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("ip netns exec")
    };
    let mut refused = daemon(&[]);
    let exit = wait_exit(&mut refused).expect("the daemon exits at once");
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(!exit.success(), "{text}");
    assert!(
        text.contains("mount namespace of its own")
            && text.contains("nsenter --net=/run/netns/NAME"),
        "{text}"
    );
    assert!(!bed.pin_dir.exists(), "nothing pinned");

    // Acknowledged: it runs, and says on the way out that the data plane goes with it.
    let mut acknowledged = daemon(&["--private-bpffs"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("config applied")
    {
        assert!(
            Instant::now() < deadline,
            "not started: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(
            acknowledged.try_wait().ok().flatten().is_none(),
            "exited: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Its pins are in its own bpffs: the host's pin directory has none.
    assert!(!bed.pin_dir.exists());
    // SAFETY: kill has no memory preconditions; `ip netns exec` execs the daemon in place.
    unsafe { libc::kill(acknowledged.id() as i32, libc::SIGTERM) };
    wait_exit(&mut acknowledged).expect("the daemon stops on SIGTERM");
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        text.contains("goes away with this process's mount namespace")
            && !text.contains("keeps running"),
        "{text}"
    );
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn detach_refuses_a_bpffs_directory_without_splitter_pins() {
    require_root!();
    let dir = Path::new(splitter_ctl::model::paths::BPFFS_ROOT)
        .join(format!("splitter-detach-test-{}", std::process::id()));
    let inner = dir.join("someone-elses");
    std::fs::create_dir_all(&inner).expect("bpffs dirs");
    let out = Command::new(ctl_bin())
        .args(["detach", "--pin-dir", dir.to_str().expect("utf-8")])
        .output()
        .expect("detach");
    let survived = inner.exists();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("it does not hold Splitter's pins"),
        "{}",
        stderr(&out)
    );
    assert!(survived);
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn status_shows_each_maps_memory_as_bpftool_counts_it() {
    require_root!();
    let mut bed = Testbed::new(SERVER);
    bed.write_config("0");
    bed.start_daemon(&[]);
    let status = bed.status();
    let memory = status["memory"].as_array().expect("memory[] in the status");
    assert_eq!(memory.len(), splitter_common::maps::ALL.len(), "{memory:?}");
    for name in [
        splitter_common::maps::FLOWS,
        splitter_common::maps::SERVICES,
    ] {
        let shown = memory
            .iter()
            .find(|m| m["map"] == name)
            .unwrap_or_else(|| panic!("no {name} in {memory:?}"));
        let pin = splitter_ctl::model::paths::pin(&bed.pin_dir, name);
        let out = Command::new("bpftool")
            .args(["--json", "map", "show", "pinned"])
            .arg(&pin)
            .output()
            .expect("bpftool (cargo xtask setup installs it)");
        assert!(out.status.success(), "{}", stderr(&out));
        let bpftool: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        assert_eq!(
            shown["bytes"], bpftool["bytes_memlock"],
            "{name}: {bpftool}"
        );
        assert_eq!(
            shown["max_entries"], bpftool["max_entries"],
            "{name}: {bpftool}"
        );
    }
    let (text, _) = ok(&bed, &["status"]);
    assert!(text.contains("MiB of kernel memory (flow table"), "{text}");
}
