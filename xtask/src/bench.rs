//! `cargo xtask bench`: runs the benchmark binary of the tests crate in release mode.

use anyhow::Result;

use crate::{cargo, status, workspace_root};

pub fn run(quick: bool) -> Result<()> {
    let mut cmd = cargo();
    cmd.args([
        "run",
        "--release",
        "--package",
        "splitter-tests",
        "--bin",
        "splitter-bench",
        "--",
    ]);
    if quick {
        cmd.arg("--quick");
    } else {
        cmd.arg("--write")
            .arg(workspace_root().join("docs/benchmarks.md"));
    }
    status(&mut cmd)
}
