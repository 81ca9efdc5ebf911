//! Client affinity end to end: with `affinity = "client"`, each client address sees one
//! version, and as the share rises 1 → 5 → 25 → 50% clients only ever move from the live pool
//! to the candidate. A new rollout draws another cohort (a new salt).

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use splitter_tests::{http::KeepAlive, require_root, testbed::Testbed};

const SERVER: &str = env!("CARGO_BIN_EXE_splitter-testbed-server");
/// Client addresses, in 198.19.65.0/24 (routed to the client through the node).
const CLIENTS: u8 = 40;
/// New connections per client and step.
const PER_CLIENT: usize = 3;

fn client(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, 65, i)
}

/// For every client: the versions of `PER_CLIENT` new connections.
fn versions(bed: &Testbed, vip: SocketAddrV4) -> Vec<Vec<String>> {
    bed.client.run(move || {
        (1..=CLIENTS)
            .map(|i| {
                (0..PER_CLIENT)
                    .map(|_| {
                        let mut conn = KeepAlive::connect_from(client(i), vip).expect("connect");
                        let (status, version) = conn.last_request().expect("request");
                        assert_eq!(status, 200);
                        version
                    })
                    .collect()
            })
            .collect()
    })
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
fn each_client_sees_one_version_and_rising_shares_only_move_clients_to_the_candidate() {
    require_root!();
    let mut bed = Testbed::new(65, SERVER);
    for i in 1..=CLIENTS {
        bed.client.ip(&[
            "addr",
            "add",
            &format!("{}/32", client(i)),
            "dev",
            &bed.client_interface(),
        ]);
    }
    bed.node
        .ip(&["route", "add", "198.19.65.0/24", "via", "198.18.65.2"]);
    bed.write_config_with("0", "affinity = \"client\"\n");
    bed.start_daemon(&[]);
    assert_eq!(bed.status()["services"][0]["affinity"], "client");
    let vip = match bed.vip() {
        std::net::SocketAddr::V4(v4) => v4,
        std::net::SocketAddr::V6(_) => unreachable!("the test bed is IPv4"),
    };
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
