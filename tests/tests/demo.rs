//! The demo of the README runs to its end: the bad v2 is rolled back by its gates, the fixed
//! v3 is promoted, and nothing it made is left behind.

use std::process::Command;

use splitter_tests::require_root;

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn the_demo_rolls_back_v2_promotes_v3_and_cleans_up() {
    require_root!();
    let out = Command::new(env!("CARGO_BIN_EXE_splitter-demo"))
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for part in [
        // v2 is both slower and failing: whichever gate is convinced first rolls it back.
        "automatic rollback: ",
        "decision to map write:",
        "## Gate values before the rollback",
        "green at 100%",
        "v3 is live",
        "1 promotions",
        "1 rollbacks",
    ] {
        assert!(stdout.contains(part), "no `{part}` in:\n{stdout}");
    }
    let namespaces = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns");
    assert!(
        !String::from_utf8_lossy(&namespaces.stdout).contains("sp201-"),
        "the demo left a namespace behind"
    );
}
