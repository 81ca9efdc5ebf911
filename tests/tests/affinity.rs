//! Client affinity and cohorts end to end. With `affinity = "client"`, each client address sees
//! one version, and as the share rises 1 → 5 → 25 → 50% clients only ever move from the live
//! pool to the candidate; a new rollout draws another cohort (a new salt). `always_candidate`
//! and `never_candidate` prefixes bypass the share, and are counted.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use splitter_tests::{require_root, testbed::Testbed};

const SERVER: &str = env!("CARGO_BIN_EXE_splitter-testbed-server");
/// Client addresses, in 198.19.65.0/24 (routed to the client through the node).
const CLIENTS: u8 = 40;
/// New connections per client and step.
const PER_CLIENT: usize = 3;

fn client(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, 65, i)
}

/// Gives the bed's client the addresses `clients`, in 198.19.0.0/16 (routed in this bed's
/// namespaces only).
fn add_clients(bed: &Testbed, clients: &[Ipv4Addr]) {
    bed.add_client_addresses(clients, "198.19.0.0/16");
}

/// The version that answers a new connection from `source`.
fn version_from(bed: &Testbed, source: Ipv4Addr) -> String {
    bed.versions_from(vec![source], bed.vip_v4(), 1)[0][0].clone()
}

/// For every client: the versions of `PER_CLIENT` new connections.
fn versions(bed: &Testbed, vip: SocketAddrV4) -> Vec<Vec<String>> {
    bed.versions_from((1..=CLIENTS).map(client).collect(), vip, PER_CLIENT)
}

fn rollout_salt(bed: &Testbed) -> u64 {
    let text = bed.ctl_ok(&["history", "--output", "json"]);
    let events: Vec<serde_json::Value> = serde_json::from_str(&text).expect("history");
    events
        .iter()
        .find(|e| e["kind"] == "rollout_started")
        .and_then(|e| e["details"]["client_salt"].as_u64())
        .expect("a rollout with a client salt")
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn each_client_sees_one_version_and_rising_shares_only_move_clients_to_the_candidate() {
    require_root!();
    let mut bed = Testbed::new(SERVER);
    add_clients(&bed, &(1..=CLIENTS).map(client).collect::<Vec<_>>());
    bed.write_config_with("0", "affinity = \"client\"\n");
    bed.start_daemon(&[]);
    assert_eq!(bed.status()["services"][0]["affinity"], "client");
    let vip = bed.vip_v4();
    // The rollout draws the salt; the steps are then set by hand (which pauses it).
    bed.ctl_ok(&[
        "rollout",
        "start",
        "sentiment",
        "--steps",
        "1,5,25,50,100",
        "--hold",
        "1h",
    ]);
    let first_salt = rollout_salt(&bed);
    let mut on_candidate = vec![false; usize::from(CLIENTS)];
    for percent in ["1", "5", "25", "50"] {
        bed.ctl_ok(&["weight", "sentiment", "green", percent]);
        let seen = versions(&bed, vip);
        for (i, conns) in seen.iter().enumerate() {
            assert!(
                conns.iter().all(|v| *v == conns[0]),
                "client {} saw {conns:?} at {percent}%",
                client(i as u8 + 1)
            );
            let now = conns[0] == "green";
            assert!(
                now || !on_candidate[i],
                "client {} went back to the live pool at {percent}%",
                client(i as u8 + 1)
            );
            on_candidate[i] = now;
        }
    }
    let at_half = on_candidate.iter().filter(|c| **c).count();
    assert!(
        (8..=32).contains(&at_half),
        "{at_half} of {CLIENTS} clients on the candidate at 50%"
    );
    // Another rollout, another cohort.
    bed.ctl_ok(&["rollout", "abort", "sentiment"]);
    std::thread::sleep(Duration::from_millis(100));
    bed.ctl_ok(&["rollout", "start", "sentiment", "--hold", "1h"]);
    assert_ne!(rollout_salt(&bed), first_salt, "a new rollout, a new salt");
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn cohorts_bypass_the_share_and_are_counted() {
    require_root!();
    let mut bed = Testbed::new(SERVER);
    let staff = Ipv4Addr::new(198, 19, 66, 3);
    let protected = Ipv4Addr::new(198, 19, 66, 19);
    let anyone = Ipv4Addr::new(198, 19, 66, 40);
    add_clients(&bed, &[staff, protected, anyone]);
    bed.write_config_with(
        "0",
        "always_candidate = [\"198.19.66.0/29\"]\nnever_candidate = [\"198.19.66.16/29\"]\n",
    );
    bed.start_daemon(&[]);
    // No share at all: staff still get the candidate.
    for _ in 0..5 {
        assert_eq!(version_from(&bed, staff), "green");
        assert_eq!(version_from(&bed, anyone), "blue");
        assert_eq!(version_from(&bed, protected), "blue");
    }
    // Every new connection to the candidate: the protected customer stays on the live pool.
    bed.ctl_ok(&["weight", "sentiment", "green", "100"]);
    for _ in 0..5 {
        assert_eq!(version_from(&bed, protected), "blue");
        assert_eq!(version_from(&bed, anyone), "green");
    }
    let metrics = bed.metrics();
    for (outcome, at_least) in [("cohort_candidate", 5.0), ("cohort_live", 10.0)] {
        let value = splitter_tests::testbed::metric(
            &metrics,
            &format!(r#"splitter_data_plane_packets_total{{outcome="{outcome}"}}"#),
        );
        assert!(value >= at_least, "{outcome}: {value}");
    }
    // A reload without the cohorts removes them from the kernel.
    bed.write_config("100");
    bed.ctl_ok(&["reload"]);
    assert_eq!(version_from(&bed, protected), "green");
}
