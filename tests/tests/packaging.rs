//! What ships beside the binary is checked against the binary: the Grafana dashboard queries
//! only metrics a real daemon exports, under the names and labels it exports them with, and the
//! Kubernetes manifest's config validates and asks for the same capabilities as the systemd
//! unit.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::SocketAddrV4,
    path::Path,
};

use splitter_tests::{require_root, testbed::Testbed};

const SERVER: &str = env!("CARGO_BIN_EXE_splitter-testbed-server");

fn packaging(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging")
        .join(file);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every PromQL expression of the dashboard (panels and variables).
fn dashboard_exprs() -> Vec<String> {
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
        if let Some(query) = variable["query"].as_str()
            && query.contains("splitter_")
        {
            exprs.push(query.to_owned());
        }
    }
    exprs
}

/// The `splitter_*` names in `expr`, each with the label names of the selector right after it.
fn metrics_in(expr: &str) -> Vec<(String, Vec<String>)> {
    let mut found = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("splitter_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        let labels = match rest.strip_prefix('{') {
            Some(selector) => selector[..selector.find('}').unwrap_or(0)]
                .split(',')
                .filter_map(|m| m.split(['=', '!']).next())
                .map(|l| l.trim().to_owned())
                .filter(|l| !l.is_empty())
                .collect(),
            None => Vec::new(),
        };
        found.push((name, labels));
    }
    found
}

/// The label names of every `by (...)` in `expr`.
fn by_labels(expr: &str) -> Vec<String> {
    expr.split("by (")
        .skip(1)
        .flat_map(|part| part[..part.find(')').unwrap_or(0)].split(','))
        .map(|l| l.trim().to_owned())
        .collect()
}

/// A counter is queried as `NAME_total`, a histogram as `NAME_bucket|_sum|_count`, a gauge as
/// its name: true when `name` is one of those for a family the daemon declares.
fn queried_as_exported(name: &str, types: &BTreeMap<&str, &str>) -> bool {
    let suffixed = [
        ("_total", "counter"),
        ("_bucket", "histogram"),
        ("_sum", "histogram"),
        ("_count", "histogram"),
    ]
    .iter()
    .any(|(suffix, kind)| {
        name.strip_suffix(suffix)
            .is_some_and(|family| types.get(family) == Some(kind))
    });
    suffixed || types.get(name) == Some(&"gauge")
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn every_metric_the_dashboard_queries_is_exported_by_the_daemon() {
    require_root!();
    let exprs = dashboard_exprs();
    assert!(exprs.len() >= 15, "{exprs:?}");
    let mut bed = Testbed::new(SERVER);
    let last_resort = SocketAddrV4::new(*bed.blue_addr().ip(), 9090);
    bed.write_config_with("10", &format!("last_resort = [\"{last_resort}\"]\n"));
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
        &format!("http://{}:1", bed.node_addr()),
        "--promql-gate",
        "up:up<=1",
    ]);
    std::thread::sleep(std::time::Duration::from_millis(700));
    assert_eq!(bed.ctl(&["drill", "sentiment"]).status.code(), Some(1));
    bed.ctl_ok(&["rollout", "abort", "sentiment"]);
    let metrics = bed.metrics();
    // What the daemon exports: each family's type, and each sample name's label names.
    let mut types = BTreeMap::new();
    let mut labels: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for line in metrics.lines() {
        if let Some(declared) = line.strip_prefix("# TYPE ") {
            let mut words = declared.split_whitespace();
            if let (Some(family), Some(kind)) = (words.next(), words.next()) {
                types.insert(family, kind);
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let name_end = line.find(['{', ' ']).unwrap_or(line.len());
            let names = labels.entry(&line[..name_end]).or_default();
            if let Some(set) = line[name_end..].strip_prefix('{') {
                for pair in set[..set.find('}').unwrap_or(0)].split(',') {
                    names.extend(pair.split('=').next());
                }
            }
        }
    }
    let mut problems = Vec::new();
    for expr in &exprs {
        let used = metrics_in(expr);
        for (name, selector) in &used {
            if !queried_as_exported(name, &types) {
                problems.push(format!("`{name}` is not exported under that name"));
                continue;
            }
            // Families with no sample yet cannot show their labels; the others must have
            // every label the selector names.
            if let Some(have) = labels.get(name.as_str()) {
                for label in selector {
                    if !have.contains(label.as_str()) {
                        problems.push(format!("`{name}` has no label `{label}` ({have:?})"));
                    }
                }
            }
        }
        for label in by_labels(expr) {
            let on_some = used.iter().any(|(name, _)| {
                labels
                    .get(name.as_str())
                    .is_some_and(|have| have.contains(label.as_str()))
            });
            if !on_some {
                problems.push(format!("`by ({label})` matches no label of {used:?}"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{problems:#?}\nexported types: {types:?}"
    );
    // The checker itself tells a wrong name from a right one.
    assert!(queried_as_exported("splitter_connections_total", &types));
    assert!(!queried_as_exported("splitter_connections", &types));
    assert!(!queried_as_exported("splitter_share_ratio_total", &types));
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
    let parsed = splitter_ctl::model::config::Config::parse(Path::new("daemonset.yaml"), &config)
        .unwrap_or_else(|e| panic!("the manifest's config: {e}\n{config}"));
    assert_eq!(parsed.services.len(), 1);
    let fleet = parsed.fleet.expect("the manifest's config has [fleet]");
    assert!(fleet.endpoints.iter().all(|e| e.tls));
    assert!(manifest.contains("secretName: splitter-etcd-client"));
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
