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
fn exit_statuses_tell_usage_errors_from_failed_commands() {
    assert_eq!(ctl(&["no-such-command"]).status.code(), Some(2));
    let missing = ctl(&["--config", "/nonexistent/splitter.toml", "status"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/splitter.toml"));
    assert!(stdout(&["--help"]).contains("3 a drill ran but did not pass"));
}
