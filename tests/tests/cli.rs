//! The command line as a shell and a packager see it: completion scripts and the man page are
//! generated from the clap definitions, and the exit statuses are the documented ones.

use std::process::{Command, Output};

use splitter_tests::testbed::ctl_bin;

fn ctl(args: &[&str]) -> Output {
    Command::new(ctl_bin())
        .args(args)
        .output()
        .expect("run splitter-ctl")
}

fn stdout(args: &[&str]) -> String {
    let out = ctl(args);
    assert!(
        out.status.success(),
        "splitter-ctl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn completion_scripts_know_the_subcommands_and_their_options() {
    for (shell, marker) in [
        ("bash", "complete -F _splitter__ctl"),
        ("zsh", "#compdef splitter-ctl"),
        ("fish", "complete -c splitter-ctl"),
    ] {
        let script = stdout(&["completions", shell]);
        assert!(script.contains(marker), "{shell}: no `{marker}`");
        for word in [
            "rollout",
            "rollback",
            "drill",
            "last-resort",
            "max-divergence",
        ] {
            assert!(script.contains(word), "{shell}: no `{word}`");
        }
    }
    assert_eq!(ctl(&["completions", "tcsh"]).status.code(), Some(2));
}

#[test]
fn the_man_page_is_roff_with_every_subcommand_and_the_exit_statuses() {
    let page = stdout(&["man"]);
    assert!(page.contains(".TH splitter-ctl 1"), "{page}");
    for word in ["rollout", "rollback", "drill", "completions", "Exit status"] {
        assert!(page.contains(word), "no `{word}` in the man page");
    }
}

#[test]
fn check_validates_the_shipped_example_config_and_says_what_is_wrong_with_a_bad_one() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/splitter.toml");
    let answer: serde_json::Value =
        serde_json::from_str(&stdout(&["--config", example, "check", "--output", "json"]))
            .expect("JSON");
    assert_eq!(answer["valid"], true);
    assert_eq!(answer["services"][0], "sentiment");
    let bad = std::env::temp_dir().join(format!("splitter-check-{}.toml", std::process::id()));
    std::fs::write(
        &bad,
        "interface = \"eth0\"\n[[service]]\nname = \"Bad!\"\nlisten = \"198.18.0.1:80\"\n",
    )
    .expect("write");
    let out = ctl(&["--config", bad.to_str().expect("utf-8"), "check"]);
    let _ = std::fs::remove_file(&bad);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(":3:8: `service[0].name`"),
        "names the line and the key: {stderr}"
    );
}

#[test]
fn exit_statuses_tell_usage_errors_from_failed_commands() {
    assert_eq!(ctl(&["no-such-command"]).status.code(), Some(2));
    let missing = ctl(&["--config", "/nonexistent/splitter.toml", "status"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/splitter.toml"));
    assert!(stdout(&["--help"]).contains("3 a drill ran but did not pass"));
}

/// The rows of the exit-status table in docs/operations.md: the status, and the commands its
/// examples column gives (`splitter-ctl ...` in backquotes).
fn documented_exit_statuses() -> Vec<(i32, Vec<Vec<String>>)> {
    let doc = include_str!("../../docs/operations.md");
    let table = doc
        .split("| exit status | meaning | for example |")
        .nth(1)
        .expect("docs/operations.md has the exit-status table");
    table
        .lines()
        .skip(2)
        .take_while(|line| line.starts_with('|'))
        .map(|row| {
            let cells: Vec<&str> = row.split(" | ").collect();
            let status = cells[0].trim_start_matches("| ").parse().expect("a status");
            let examples = cells
                .last()
                .expect("an examples cell")
                .split('`')
                .skip(1)
                .step_by(2)
                .filter_map(|code| code.strip_prefix("splitter-ctl "))
                .map(|args| args.split_whitespace().map(str::to_owned).collect())
                .collect();
            (status, examples)
        })
        .collect()
}

#[test]
fn each_documented_exit_status_is_the_one_its_examples_exit_with() {
    let rows = documented_exit_statuses();
    let statuses: Vec<i32> = rows.iter().map(|(status, _)| *status).collect();
    assert_eq!(statuses, [0, 1, 2, 3], "the table's rows");
    for (status, examples) in rows {
        // A drill that does not pass needs a data plane and a daemon: tests/tests/rollout.rs.
        if status == 3 {
            continue;
        }
        assert!(!examples.is_empty(), "exit status {status} has no example");
        for args in examples {
            // Never the host's config: a path that does not exist unless the example names one.
            let mut full: Vec<&str> = Vec::new();
            if !args.iter().any(|a| a == "--config") {
                full.extend(["--config", "/nonexistent/splitter.toml"]);
            }
            full.extend(args.iter().map(String::as_str));
            let out = ctl(&full);
            assert_eq!(
                out.status.code(),
                Some(status),
                "splitter-ctl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn a_reader_that_goes_away_is_not_an_error() {
    for args in [&["man"][..], &["completions", "bash"]] {
        let mut child = Command::new(ctl_bin())
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run splitter-ctl");
        // The reader goes away before the first write, as `| head -0` would (the process is
        // still starting when the pipe's read end closes).
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("wait");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {:?}: {stderr}", out.status);
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
}

#[test]
fn detach_refuses_a_directory_that_is_not_a_pin_directory() {
    let dir = std::env::temp_dir().join(format!("splitter-detach-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    // A file named like a pin, which must survive.
    let lookalike = dir.join(splitter_ctl::model::paths::XDP_LINK_PIN);
    std::fs::write(&lookalike, "not a pin").expect("write");
    let out = ctl(&["detach", "--pin-dir", dir.to_str().expect("utf-8")]);
    let survived = lookalike.exists();
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("is not a Splitter pin directory (it is not on a bpffs): nothing removed"),
        "{stderr}"
    );
    assert!(survived, "detach removed a file outside a bpffs");
}
