//! What ships beside the binary is checked against the binary: the Grafana dashboard queries
//! only metrics a real daemon exports, and the Kubernetes manifest's config validates and asks
//! for the same capabilities as the systemd unit.

use std::{collections::BTreeSet, fs, path::Path};

use splitter_tests::{require_root, testbed::Testbed};

const SERVER: &str = env!("CARGO_BIN_EXE_splitter-testbed-server");

fn packaging(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging")
        .join(file);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `splitter_*` metric the dashboard's queries name, as its family (the name in a
/// `# TYPE` line: without `_total`, `_bucket`, `_sum`, `_count`).
fn dashboard_families() -> BTreeSet<String> {
    let dashboard: serde_json::Value =
        serde_json::from_str(&packaging("grafana/splitter-dashboard.json")).expect("JSON");
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            exprs.push(target["expr"].as_str().expect("expr").to_owned());
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        if let Some(query) = variable["query"].as_str() {
            exprs.push(query.to_owned());
        }
    }
    let mut families = BTreeSet::new();
    for expr in exprs {
        let mut rest = expr.as_str();
        while let Some(at) = rest.find("splitter_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            let family = ["_total", "_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(&name)
                .to_owned();
            families.insert(family);
        }
    }
    families
}

#[test]
fn every_metric_the_dashboard_queries_is_exported_by_the_daemon() {
    require_root!();
    let families = dashboard_families();
    assert!(families.len() >= 15, "{families:?}");
    let mut bed = Testbed::new(71, SERVER);
    bed.write_config_with("10", "");
    bed.start_daemon(&[]);
    // Labelled families appear once they have a value: a rollout whose PromQL gate cannot be
    // read (an `error` query), a drill refused while it runs, the rollout aborted.
    bed.ctl_ok(&[
        "rollout",
        "start",
        "sentiment",
        "--interval",
        "200ms",
        "--prometheus-url",
        "http://198.18.71.1:1",
        "--promql-gate",
        "up:up<=1",
    ]);
    std::thread::sleep(std::time::Duration::from_millis(700));
    assert_eq!(bed.ctl(&["drill", "sentiment"]).status.code(), Some(1));
    bed.ctl_ok(&["rollout", "abort", "sentiment"]);
    let metrics = bed.metrics();
    let exported: BTreeSet<&str> = metrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    let missing: Vec<_> = families
        .iter()
        .filter(|f| !exported.contains(f.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries {missing:?}, which the daemon does not export; it exports {exported:?}"
    );
}

#[test]
fn the_kubernetes_manifest_carries_a_valid_config_and_the_units_capabilities() {
    let manifest = packaging("kubernetes/daemonset.yaml");
    // The ConfigMap's `splitter.toml: |` block: the lines indented below it.
    let start = manifest.find("splitter.toml: |\n").expect("config block") + 17;
    let config: String = manifest[start..]
        .lines()
        .take_while(|line| line.is_empty() || line.starts_with("    "))
        .map(|line| format!("{}\n", line.get(4..).unwrap_or_default()))
        .collect();
    let parsed = splitter_ctl::config::Config::parse(Path::new("daemonset.yaml"), &config)
        .unwrap_or_else(|e| panic!("the manifest's config: {e}\n{config}"));
    assert_eq!(parsed.services.len(), 1);
    for needed in [
        "hostNetwork: true",
        "path: /sys/fs/bpf",
        "configMap:",
        "drop: [\"ALL\"]",
    ] {
        assert!(manifest.contains(needed), "no `{needed}` in the manifest");
    }
    let unit = packaging("splitter.service");
    let unit_caps: BTreeSet<String> = unit
        .lines()
        .find_map(|line| line.strip_prefix("CapabilityBoundingSet="))
        .expect("capabilities in the unit")
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_owned())
        .collect();
    let added = manifest
        .lines()
        .find_map(|line| line.trim().strip_prefix("add: "))
        .expect("added capabilities");
    let manifest_caps: BTreeSet<String> = added
        .trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .map(|c| c.trim().trim_matches('"').to_owned())
        .collect();
    assert_eq!(manifest_caps, unit_caps);
}
