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
