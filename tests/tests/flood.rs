//! A SYN flood from 200,000 spoofed sources against a flow table sized far below it, with the
//! new-flow rate guard on: established connections keep their entries and their version across
//! a share change during the flood, those that keep asking and those that sit idle through it
//! (an idle flow is the first the LRU table evicts; without the guard they lose their entries
//! and are re-chosen under the new split); new connections still work; the pressure is counted
//! and exported.

use std::time::Duration;

use splitter_tests::{
    flood::syn_flood,
    http::KeepAlive,
    load::KeepAliveLoad,
    require_root,
    testbed::{Testbed, counted},
};

const SERVER: &str = env!("CARGO_BIN_EXE_splitter-testbed-server");
/// Spoofed sources, one SYN each.
const FLOOD: u32 = 200_000;
/// The longest the flood may run.
const FLOOD_LIMIT: Duration = Duration::from_secs(20);

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_syn_flood_over_a_small_table_leaves_established_connections_on_their_version() {
    require_root!();
    let mut bed = Testbed::new(SERVER);
    bed.write_config("10");
    // 1,024 entries per CPU against 200,000 new flows; the guard lets each CPU add 20 a second.
    bed.prepend_config("flow_table_per_cpu = 1024\nnew_flow_rate_per_cpu = 20\n");
    bed.start_daemon(&[]);
    let keep_alive = KeepAliveLoad::start(&bed, 16, Duration::from_secs(120));
    let vip_addr = bed.vip();
    let mut idle: Vec<(KeepAlive, String)> = bed.client.run(move || {
        (0..32)
            .map(|_| {
                let mut conn = KeepAlive::connect(vip_addr).expect("connect");
                let version = conn.request().expect("first request");
                (conn, version)
            })
            .collect()
    });
    let vip = match bed.vip() {
        std::net::SocketAddr::V4(v4) => v4,
        std::net::SocketAddr::V6(_) => unreachable!("the test bed is IPv4"),
    };
    let sent = std::thread::scope(|scope| {
        let flood = scope.spawn(|| syn_flood(&bed.client, vip, FLOOD, FLOOD_LIMIT));
        // A share change while the table is under pressure: a flow that lost its entry would
        // be re-chosen with the new split and could land on the other version.
        std::thread::sleep(Duration::from_millis(300));
        bed.ctl_ok(&["weight", "sentiment", "green", "90"]);
        flood.join().expect("flood")
    });
    assert_eq!(
        sent, FLOOD,
        "the whole flood went out within {FLOOD_LIMIT:?}"
    );
    // New connections still work right after the flood.
    let out = bed.client.run({
        let vip = bed.vip();
        move || {
            (0..20)
                .map(|_| splitter_tests::http::get(vip))
                .collect::<Vec<_>>()
        }
    });
    assert!(out.iter().all(Result::is_ok), "{out:?}");
    let idle_after: Vec<String> = idle
        .iter_mut()
        .map(|(conn, _)| conn.request().unwrap_or_else(|e| format!("failed: {e}")))
        .collect();
    let idle_before: Vec<&String> = idle.iter().map(|(_, v)| v).collect();
    assert_eq!(
        idle_before,
        idle_after.iter().collect::<Vec<_>>(),
        "connections idle through the flood stay on their version"
    );
    let [kept, failed, moved, reopened] = keep_alive.stop();
    assert!(kept > 0);
    assert_eq!(
        (failed, moved, reopened),
        (0, 0, 0),
        "established requests that failed or changed version ({kept} kept)"
    );
    let metrics = bed.metrics();
    let guarded = counted(
        &metrics,
        r#"splitter_data_plane_packets_total{outcome="guarded"}"#,
    )
    .unwrap_or_else(|| panic!("no guarded counter in:\n{metrics}"));
    assert!(
        guarded > f64::from(FLOOD) * 0.9,
        "{guarded} of {FLOOD} flood SYNs steered without an entry"
    );
    // The kernel reported the guard tripping to the daemon's log, a handful of times, not once
    // per SYN: at most once a second per CPU, and the daemon holds back repeats for 10 s.
    let log = bed.daemon_log();
    let reports = log
        .lines()
        .filter(|l| l.contains("the new-flow guard is tripping"))
        .count();
    assert!(
        (1..=4).contains(&reports),
        "{reports} reports of the guard in the daemon's log:\n{log}"
    );
}
