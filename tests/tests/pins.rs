//! A data plane pinned by an older build: a map of measurements whose layout changed (the
//! histograms refined) is replaced on load, and a map that steers traffic is refused, with
//! nothing removed.

use std::{path::PathBuf, process::Command};

use splitter_common::maps::{self as names, FLOW_CAPACITY_PER_CPU};
use splitter_ctl::kernel::dataplane::{self, DataplaneError};
use splitter_tests::require_root;

/// A pin directory of this test's own, removed at the end whatever happens.
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = dataplane::detach(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Pins a per-CPU array `name` with `value_size`-byte values, as an older build would have.
fn pin_old_map(dir: &PinDir, name: &str, kind: &str, value_size: u32, entries: u32) {
    let path = dir.0.join(name);
    let out = Command::new("bpftool")
        .args(["map", "create"])
        .arg(&path)
        .args(["type", kind, "key", "4", "value"])
        .arg(value_size.to_string())
        .args(["entries", &entries.to_string(), "name", name])
        .output()
        .expect("bpftool (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "bpftool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The log2 histograms of the build before: 27 buckets, a sum and a count (232 bytes).
fn pin_old_latency(dir: &PinDir) {
    pin_old_map(
        dir,
        names::LATENCY,
        "percpu_array",
        232,
        names::LATENCY_ENTRIES,
    );
}

/// The value size of the map pinned at `path`, as bpftool reads it.
fn value_size(path: &std::path::Path) -> u64 {
    let out = Command::new("bpftool")
        .args(["--json", "map", "show", "pinned"])
        .arg(path)
        .output()
        .expect("bpftool");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool json");
    json["bytes_value"].as_u64().expect("bytes_value")
}

#[test]
#[ignore = "needs root: BPF maps pinned on bpffs"]
fn an_older_histogram_map_is_replaced_and_a_foreign_split_map_refused() {
    require_root!();
    let dir = PinDir(PathBuf::from("/sys/fs/bpf/splitter-test-pins-layout"));
    let _ = dataplane::detach(&dir.0);
    std::fs::create_dir_all(&dir.0).expect("pin dir on bpffs");
    pin_old_latency(&dir);
    let latency = dir.0.join(names::LATENCY);
    assert_eq!(value_size(&latency), 232);
    let loaded = dataplane::load(Some(&dir.0), FLOW_CAPACITY_PER_CPU);
    assert!(loaded.is_ok(), "{:?}", loaded.err());
    drop(loaded);
    assert_eq!(
        value_size(&latency),
        std::mem::size_of::<splitter_common::Histogram>() as u64,
        "the new histograms are pinned in its place"
    );

    // A split table of another layout steers traffic: refused, and the pins stay as they were.
    let _ = dataplane::detach(&dir.0);
    std::fs::create_dir_all(&dir.0).expect("pin dir on bpffs");
    pin_old_map(&dir, names::SPLIT, "array", 8, names::MAX_SERVICES);
    pin_old_latency(&dir);
    let refused = dataplane::load(Some(&dir.0), FLOW_CAPACITY_PER_CPU);
    assert!(
        matches!(&refused, Err(DataplaneError::ForeignPin { map, .. }) if *map == names::SPLIT),
        "{:?}",
        refused.err()
    );
    assert_eq!(value_size(&dir.0.join(names::SPLIT)), 8);
}
