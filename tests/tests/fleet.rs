//! Fleet mode end to end: a real etcd (Debian's etcd-server) in a namespace of its own, and
//! real nodes, each a test bed with its own daemon, data plane, backends and clients. What a
//! node's kernel does is read from its pins and checked with real connections.

use std::{
    thread,
    time::{Duration, Instant},
};

use splitter_tests::{
    etcd::EtcdCluster,
    require_root,
    testbed::{Testbed, counted},
};

const SERVER: &str = env!("CARGO_BIN_EXE_splitter-testbed-server");

fn fleet(n: usize, members: usize, green: &str) -> (EtcdCluster, Vec<Testbed>) {
    splitter_tests::etcd::fleet(SERVER, n, members, green)
}

fn until_green(bed: &Testbed, percent: f64, within: Duration) -> Duration {
    bed.until_green(percent, within)
}

/// `status --output json`'s fleet part, from `bed`.
fn fleet_status(bed: &Testbed) -> serde_json::Value {
    bed.status()["fleet"].clone()
}

/// The nodes of `sentiment` in `bed`'s fleet status: (node, alive, revision, lag).
fn nodes(bed: &Testbed) -> Vec<(String, bool, i64, i64)> {
    let status = fleet_status(bed);
    let release = status["releases"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["release"] == "sentiment"))
        .cloned()
        .unwrap_or_default();
    release["nodes"]
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .map(|n| {
                    (
                        n["node"].as_str().unwrap_or("?").to_owned(),
                        n["alive"].as_bool().unwrap_or(false),
                        n["revision"].as_i64().unwrap_or(-1),
                        n["lag"].as_i64().unwrap_or(-1),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The revision a command said it told the fleet at.
fn told_at(said: &str) -> i64 {
    said.split("told at revision ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no revision in: {said}"))
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_share_set_on_one_node_reaches_every_node_and_a_rollback_from_another_node_too() {
    require_root!();
    let (cluster, mut beds) = fleet(3, 1, "0");
    // Two nodes follow from the start; the third joins after the share moved.
    beds[0].start_daemon(&[]);
    beds[1].start_daemon(&[]);

    let out = beds[0].ctl(&["weight", "sentiment", "green", "30"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let revision = told_at(&stderr(&out));
    // The node the command ran on wrote its own kernel; the other one follows the watch.
    assert_eq!(beds[0].kernel_green_percent(), 30.0);
    let took = until_green(&beds[1], 30.0, Duration::from_secs(3));
    eprintln!("green 30% reached n1's kernel {took:?} after the command returned");

    // A node joining mid-rollout applies the current split as it starts.
    beds[2].start_daemon(&[]);
    until_green(&beds[2], 30.0, Duration::from_secs(5));
    let (blue, green, failed) = beds[2].versions(200, beds[2].vip());
    assert_eq!(failed, 0);
    assert!(
        (30..=90).contains(&green) && blue + green == 200,
        "n2 at 30%: blue {blue}, green {green}"
    );

    // n2 reports what each version served: the evidence a fleet's gates sum.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let report: serde_json::Value = cluster
            .get("/splitter/v1/nodes/n2")
            .and_then(|r| serde_json::from_str(&r).ok())
            .unwrap_or_default();
        let evidence = &report["applied"]["sentiment"]["evidence"];
        let requests = |version: &str| {
            evidence
                .as_array()
                .and_then(|e| e.iter().find(|v| v["version"] == version))
                .and_then(|v| v["requests"].as_u64())
                .unwrap_or(0)
        };
        if requests("blue") >= blue as u64 && requests("green") >= green as u64 {
            break;
        }
        assert!(Instant::now() < deadline, "n2's report: {report}");
        thread::sleep(Duration::from_millis(100));
    }

    // Every node alive, at the revision of the weight, no lag (reports refresh within a
    // third of the 2 s lease).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let seen = nodes(&beds[1]);
        let level = seen.len() == 3
            && seen
                .iter()
                .all(|(_, alive, rev, lag)| *alive && *rev == revision && *lag == 0);
        if level {
            break;
        }
        assert!(Instant::now() < deadline, "fleet status: {seen:?}");
        thread::sleep(Duration::from_millis(100));
    }
    let status = fleet_status(&beds[1]);
    let desired = &status["releases"][0]["desired"];
    assert_eq!(desired["green_percent"], 30.0, "{status}");
    assert_eq!(desired["node"], "n0", "{status}");

    // A rollback on another node: its own kernel at once, every other one through etcd.
    let out = beds[1].ctl(&["rollback", "sentiment"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("fleet: told at revision"),
        "{}",
        stderr(&out)
    );
    assert_eq!(beds[1].kernel_green_percent(), 0.0);
    for bed in [&beds[0], &beds[2]] {
        until_green(bed, 0.0, Duration::from_secs(3));
    }
    let (blue, green, failed) = beds[2].versions(100, beds[2].vip());
    assert_eq!((blue, green, failed), (100, 0, 0));
    // n2 journaled the rollback as the fleet's, from n1.
    let journal =
        splitter_ctl::store::journal::Journal::open(&beds[2].dir.join("state")).expect("journal");
    let rollback = journal
        .history(Some("sentiment"), 20)
        .expect("history")
        .into_iter()
        .find(|e| e.event.kind == splitter_ctl::store::journal::EventKind::Rollback)
        .expect("a rollback in n2's journal");
    assert_eq!(
        rollback.event.details["fleet"]["node"], "n1",
        "{rollback:?}"
    );
    let applied = counted(
        &beds[2].metrics(),
        "splitter_fleet_applied_total{cause=\"rollback\"}",
    );
    assert_eq!(applied, Some(1.0));
    // The fleet's history, read on a third node: both changes, with the node that made each.
    let history = beds[2].ctl_ok(&["history", "--fleet"]);
    let lines: Vec<&str> = history.lines().collect();
    assert_eq!(lines.len(), 2, "{history}");
    assert!(
        lines[0].contains("rollback") && lines[0].contains(" on n1: green 0%"),
        "{history}"
    );
    assert!(
        lines[1].contains("weight") && lines[1].contains(" on n0: green 30%"),
        "{history}"
    );
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_rollback_with_etcd_down_is_local_first_and_reaches_the_fleet_when_etcd_returns() {
    require_root!();
    let (mut cluster, mut beds) = fleet(2, 1, "0");
    for bed in &mut beds {
        bed.start_daemon(&[]);
    }
    let out = beds[0].ctl(&["weight", "sentiment", "green", "50"]);
    assert!(out.status.success(), "{}", stderr(&out));
    until_green(&beds[1], 50.0, Duration::from_secs(3));

    cluster.kill_member(0);
    let started = Instant::now();
    let out = beds[0].ctl(&["rollback", "sentiment"]);
    let took = started.elapsed();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("fleet: NOT told yet"),
        "{}",
        stderr(&out)
    );
    assert_eq!(beds[0].kernel_green_percent(), 0.0);
    // The command waits for etcd no longer than its timeout (1.5 s), beside the drain.
    assert!(
        took < Duration::from_millis(2_500),
        "rollback took {took:?}"
    );
    // The other node holds the last split it applied.
    thread::sleep(Duration::from_millis(500));
    assert_eq!(beds[1].kernel_green_percent(), 50.0);
    // A weight needs the fleet: refused, nothing changed.
    let out = beds[1].ctl(&["weight", "sentiment", "green", "40"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("etcd cannot be reached") && stderr(&out).contains("nothing changed"),
        "{}",
        stderr(&out)
    );
    assert_eq!(beds[1].kernel_green_percent(), 50.0);
    // `--local` still acts on this node alone.
    beds[1].ctl_ok(&["weight", "sentiment", "green", "45", "--local"]);
    assert_eq!(beds[1].kernel_green_percent(), 45.0);

    // etcd returns: n0's daemon publishes its rollback, and it wins.
    cluster.restart_member(0);
    cluster.wait_healthy(Duration::from_secs(20));
    let took = until_green(&beds[1], 0.0, Duration::from_secs(15));
    eprintln!("the rollback reached n1 {took:?} after etcd was healthy again");
    let desired = cluster
        .get("/splitter/v1/desired/sentiment")
        .expect("a desired split");
    let desired: serde_json::Value = serde_json::from_str(&desired).expect("json");
    assert_eq!(
        (
            &desired["cause"],
            &desired["node"],
            &desired["candidate_bp"]
        ),
        (&"rollback".into(), &"n0".into(), &0.into()),
        "{desired}"
    );
    // Published, it is no longer kept.
    let pending = beds[0].dir.join("state/fleet-pending/sentiment.json");
    let deadline = Instant::now() + Duration::from_secs(2);
    while pending.exists() {
        assert!(
            Instant::now() < deadline,
            "{} is still there",
            pending.display()
        );
        thread::sleep(Duration::from_millis(20));
    }
    let published = counted(
        &beds[0].metrics(),
        "splitter_fleet_published_rollbacks_total",
    );
    assert_eq!(published, Some(1.0));
    let history = beds[1].ctl_ok(&["history", "--fleet", "sentiment"]);
    assert!(
        history
            .lines()
            .next()
            .is_some_and(|newest| newest.contains("rollback")
                && newest.contains(" on n0: ")
                && newest.contains("published later")),
        "{history}"
    );
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn values_that_do_not_parse_or_come_from_a_newer_schema_are_refused_and_counted() {
    require_root!();
    let (cluster, mut beds) = fleet(1, 1, "0");
    beds[0].start_daemon(&[]);
    let bed = &beds[0];
    let key = "/splitter/v1/desired/sentiment";

    cluster.put(key, "{not json");
    let refused = |reason: &str| {
        counted(
            &bed.metrics(),
            &format!("splitter_fleet_refused_total{{reason=\"{reason}\"}}"),
        )
        .unwrap_or(0.0)
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    while refused("unreadable") < 1.0 {
        assert!(Instant::now() < deadline, "{}", bed.metrics());
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(bed.kernel_green_percent(), 0.0);
    // An operator's weight replaces a value no node can read.
    let out = bed.ctl(&["weight", "sentiment", "green", "10"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot be read"), "{}", stderr(&out));
    assert_eq!(bed.kernel_green_percent(), 10.0);

    // A newer schema: refused, never applied, and not replaced by this older build.
    cluster.put(
        key,
        r#"{"schema":2,"live":"green","candidate_bp":0,"cause":"weight","node":"x","actor":"y","decided_at_ms":0}"#,
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    while refused("newer_schema") < 1.0 {
        assert!(Instant::now() < deadline, "{}", bed.metrics());
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(bed.kernel_green_percent(), 10.0);
    let out = bed.ctl(&["weight", "sentiment", "green", "20"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("newer build"), "{}", stderr(&out));
    assert_eq!(bed.kernel_green_percent(), 10.0);
    let text = String::from_utf8_lossy(&bed.ctl(&["status"]).stdout).into_owned();
    assert!(
        text.contains("unreadable: the desired split of sentiment: schema 2"),
        "{text}"
    );
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_partitioned_node_holds_its_split_and_converges_when_it_returns() {
    require_root!();
    let (cluster, mut beds) = fleet(2, 1, "0");
    for bed in &mut beds {
        bed.start_daemon(&[]);
    }
    beds[0].ctl_ok(&["weight", "sentiment", "green", "30"]);
    until_green(&beds[1], 30.0, Duration::from_secs(3));

    cluster.partition(&beds[1], true);
    let out = beds[0].ctl(&["weight", "sentiment", "green", "60"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let revision = told_at(&stderr(&out));
    thread::sleep(Duration::from_millis(500));
    assert_eq!(
        beds[1].kernel_green_percent(),
        30.0,
        "the partitioned node holds"
    );
    // Its lease (2 s) runs out: status shows it silent.
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        let seen = nodes(&beds[0]);
        if seen
            .iter()
            .any(|(node, alive, _, _)| node == "n1" && !alive)
        {
            break;
        }
        assert!(Instant::now() < deadline, "fleet status: {seen:?}");
        thread::sleep(Duration::from_millis(200));
    }

    cluster.partition(&beds[1], false);
    until_green(&beds[1], 60.0, Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        let seen = nodes(&beds[0]);
        if seen
            .iter()
            .any(|(node, alive, rev, lag)| node == "n1" && *alive && *rev == revision && *lag == 0)
        {
            break;
        }
        assert!(Instant::now() < deadline, "fleet status: {seen:?}");
        thread::sleep(Duration::from_millis(200));
    }
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn losing_one_member_of_three_interrupts_nothing() {
    require_root!();
    let (mut cluster, mut beds) = fleet(2, 3, "0");
    for bed in &mut beds {
        bed.start_daemon(&[]);
    }
    beds[0].ctl_ok(&["weight", "sentiment", "green", "10"]);
    until_green(&beds[1], 10.0, Duration::from_secs(3));

    // The first member (the one every client tries first, and often the leader) dies.
    cluster.kill_member(0);
    let out = beds[0].ctl(&["weight", "sentiment", "green", "20"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let took = until_green(&beds[1], 20.0, Duration::from_secs(5));
    eprintln!("with a member down, green 20% reached n1 {took:?} after the command returned");
    let out = beds[1].ctl(&["rollback", "sentiment"]);
    assert!(
        out.status.success() && stderr(&out).contains("fleet: told at revision"),
        "{}",
        stderr(&out)
    );
    until_green(&beds[0], 0.0, Duration::from_secs(5));
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_restarted_daemon_keeps_a_local_change_until_the_fleet_moves() {
    require_root!();
    let (_cluster, mut beds) = fleet(1, 1, "0");
    let bed = &mut beds[0];
    bed.start_daemon(&[]);
    bed.ctl_ok(&["weight", "sentiment", "green", "30"]);
    bed.ctl_ok(&["weight", "sentiment", "green", "5", "--local"]);
    // A restart reads the fleet's splits again; the revision it applied before is kept, so
    // the local change stays (through a renewal's reading too: a third of the 2 s lease).
    bed.stop_daemon(libc::SIGTERM);
    bed.start_daemon(&[]);
    thread::sleep(Duration::from_millis(1_500));
    assert_eq!(bed.kernel_green_percent(), 5.0, "{}", bed.daemon_log());
    // The fleet's next move applies.
    bed.ctl_ok(&["weight", "sentiment", "green", "40"]);
    until_green(bed, 40.0, Duration::from_secs(3));
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_fleet_drill_rolls_every_node_back_measures_each_and_puts_the_share_back() {
    require_root!();
    let (_cluster, mut beds) = fleet(3, 1, "0");
    for bed in &mut beds {
        bed.start_daemon(&[]);
    }
    // Nothing to drill while the fleet sends nothing to the candidate.
    let out = beds[0].ctl(&["drill", "sentiment"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("nothing to roll back"),
        "{}",
        stderr(&out)
    );
    beds[0].ctl_ok(&["weight", "sentiment", "green", "30"]);
    for bed in &beds {
        until_green(bed, 30.0, Duration::from_secs(3));
    }
    // Every node reports the weight before the drill looks at who reports.
    let deadline = Instant::now() + Duration::from_secs(5);
    while nodes(&beds[0])
        .iter()
        .filter(|(_, alive, _, lag)| *alive && *lag == 0)
        .count()
        < 3
    {
        assert!(Instant::now() < deadline, "{:?}", nodes(&beds[0]));
        thread::sleep(Duration::from_millis(100));
    }
    let out = beds[1].ctl(&["drill", "sentiment", "--output", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let drill: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(drill["outcome"], "passed", "{drill:#}");
    assert_eq!(drill["restored"], true, "{drill:#}");
    let measured: Vec<(&str, f64)> = drill["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| Some((n["node"].as_str()?, n["applied_ms"].as_f64()?)))
        .collect();
    assert_eq!(
        measured.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        ["n0", "n1", "n2"],
        "{drill:#}"
    );
    let all = drill["all_applied_ms"].as_f64().expect("all applied");
    let slowest = measured.iter().map(|(_, ms)| *ms).fold(0.0, f64::max);
    assert!((all - slowest).abs() < 1e-9 && all > 0.0, "{drill:#}");
    eprintln!("fleet drill: every node's kernel held the rollback within {all} ms");
    // The share is back on every node, and each node journaled the rollback it applied.
    for bed in &beds {
        until_green(bed, 30.0, Duration::from_secs(3));
        let journal =
            splitter_ctl::store::journal::Journal::open(&bed.dir.join("state")).expect("journal");
        let kinds: Vec<_> = journal
            .history(Some("sentiment"), 20)
            .expect("history")
            .into_iter()
            .map(|e| e.event.kind)
            .collect();
        assert!(
            kinds.contains(&splitter_ctl::store::journal::EventKind::Rollback),
            "bed {}: {kinds:?}",
            bed.index
        );
    }
    let drilled = splitter_ctl::store::journal::Journal::open(&beds[1].dir.join("state"))
        .expect("journal")
        .history(Some("sentiment"), 20)
        .expect("history")
        .into_iter()
        .find(|e| e.event.kind == splitter_ctl::store::journal::EventKind::Drill)
        .expect("the drill in n1's journal");
    assert_eq!(drilled.event.reason.as_deref(), Some("passed"));
    let history = beds[2].ctl_ok(&["history", "--fleet"]);
    assert!(
        history.contains("(drill)") && history.contains("(drill, restored)"),
        "{history}"
    );
}
