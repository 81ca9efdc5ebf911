//! End to end: the fast path sends steered packets straight to their backend's device, and
//! their replies straight to the client's, past the node's IP forwarding path. Proven with
//! netfilter: rules in the node's forward hook drop every packet to the backends' port and then
//! every packet from it, so whatever takes the routed path is lost; the service's requests are
//! answered all the same, while a request to a backend's own address, which the stack forwards,
//! is not.
//!
//! The tests run one at a time: the rollback's bound on green's last response (100 ms on the
//! kernel's clock) holds only when the daemon's drain thread gets a core, which this file's
//! other tests, run beside it on 2 cores, once took (211 ms in a full run).

use std::{
    net::{Ipv4Addr, SocketAddr},
    process::Stdio,
    time::Duration,
};

use aya::maps::{Array, Map, MapData, PerCpuArray};
use splitter_common::{
    NEXT_HOP_ROUTED, NextHop,
    maps::{NEXT_HOP_SLOTS, NEXT_HOPS, PEER_DEVICE_SLOTS, PEER_DEVICES, REPLY_HOPS},
};
use splitter_tests::{
    http::{self, KeepAlive},
    one_at_a_time, require_root,
    testbed::{Testbed, assert_left_answered_within},
};

const SERVER: &str = env!("CARGO_BIN_EXE_splitter-testbed-server");

/// Runs `nft -f -` with `rules` in the node's namespace.
fn nft(bed: &Testbed, rules: &str) {
    use std::io::Write as _;
    let mut child = bed
        .node
        .exec("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("nft (installed by `cargo xtask setup`)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(rules.as_bytes())
        .expect("write the rules");
    assert!(child.wait().expect("nft").success(), "nft refused {rules}");
}

/// Waits until the daemon's health checks pass on both versions: the node has then resolved
/// both backends' Ethernet addresses, which the fast path needs.
fn wait_healthy(bed: &Testbed) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = bed.status();
        let healthy = ["blue", "green"].iter().all(|v| {
            status["services"][0]["pools"][v]["backends"]
                .as_array()
                .is_some_and(|b| b.iter().all(|b| b["healthy"] == true))
        });
        if healthy {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not healthy: {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A test bed with green at 50%, health checks every 200 ms, and the daemon running with both
/// versions healthy.
fn healthy_bed() -> Testbed {
    let mut bed = Testbed::new(SERVER);
    bed.write_config_with("50", "[service.health]\ninterval_ms = 200\n");
    bed.start_daemon(&[]);
    wait_healthy(&bed);
    bed
}

/// The data plane's packets counted with `outcome`, from the daemon's metrics (0 before any).
fn packets(bed: &Testbed, outcome: &str) -> f64 {
    splitter_tests::testbed::counted(
        &bed.metrics(),
        &format!("splitter_data_plane_packets_total{{outcome=\"{outcome}\"}}"),
    )
    .unwrap_or(0.0)
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn steered_packets_skip_the_node_s_forwarding_path() {
    require_root!();
    let _serial = one_at_a_time();
    let bed = healthy_bed();
    let (blue, green) = (bed.blue_addr(), bed.green_addr());
    nft(
        &bed,
        &format!(
            "table ip splitter_test {{\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n    ip daddr {{ {}, {} }} tcp dport 8080 counter drop\n  }}\n}}\n",
            blue.ip(),
            green.ip()
        ),
    );
    let forwarded = |bed: &Testbed| packets(bed, "forwarded");
    let before = forwarded(&bed);

    // New connections and a keep-alive one through the service: all answered, by both versions.
    let vip: SocketAddr = bed.vip();
    let (answers, kept) = bed.client.run(move || {
        let answers: Vec<String> = (0..40)
            .map(|_| http::get(vip).expect("a request through the service"))
            .collect();
        let mut conn = KeepAlive::connect(vip).expect("connect");
        let kept: Vec<String> = (0..20)
            .map(|_| conn.request().expect("a keep-alive request"))
            .collect();
        (answers, kept)
    });
    assert!(answers.iter().any(|a| a.contains("blue")), "{answers:?}");
    assert!(answers.iter().any(|a| a.contains("green")), "{answers:?}");
    assert_eq!(kept.len(), 20);
    // Each new connection sends at least its SYN, its request and its FIN that way.
    assert!(
        forwarded(&bed) - before >= 40.0 * 3.0 + 20.0,
        "{} packets forwarded",
        forwarded(&bed) - before
    );

    // The same backend at its own address takes the routed path, where the rule drops it.
    let direct = bed.client.run(move || {
        std::net::TcpStream::connect_timeout(&SocketAddr::V4(blue), Duration::from_millis(500))
    });
    assert!(
        direct.is_err(),
        "a direct connection got through the drop rule"
    );

    // The daemon attaches the reply fast path where the fast path sent packets, at its next
    // housekeeping (every 5 s).
    wait_reply_links(&bed);
    nft(
        &bed,
        &format!(
            "add rule ip splitter_test forward ip saddr {{ {}, {} }} tcp sport 8080 counter drop\n",
            blue.ip(),
            green.ip()
        ),
    );
    let replies_forwarded = |bed: &Testbed| packets(bed, "reply_forwarded");
    let before = replies_forwarded(&bed);
    let sent_before = sent_on_node_interface(&bed);
    let answers = bed.client.run(move || {
        (0..40)
            .map(|_| http::get(vip).expect("a request through the service, both ways fast"))
            .collect::<Vec<_>>()
    });
    assert!(answers.iter().any(|a| a.contains("blue")), "{answers:?}");
    assert!(answers.iter().any(|a| a.contains("green")), "{answers:?}");
    // Each connection's backend sends at least its SYN-ACK, its response and its FIN that way.
    let replies = replies_forwarded(&bed) - before;
    assert!(replies >= 40.0 * 3.0, "{replies} replies forwarded");
    // The client's side of the node is a veth whose other end is in the client's namespace:
    // the replies are handed to that end (`bpf_redirect_peer`), so the node's end transmits
    // none of them (what it does send is the odd ARP or a reply the stack took).
    let sent = sent_on_node_interface(&bed) - sent_before;
    assert!(
        (sent as f64) < replies / 4.0,
        "the node's client-facing veth transmitted {sent} packets for {replies} replies forwarded"
    );
    // The replies' next hop is kept like the backends', in a table of its own: the clients' in
    // REPLY_HOPS, the backends' in NEXT_HOPS.
    let client = bed.client_ip();
    let (backends, clients) = (
        kept_next_hops(&bed, NEXT_HOPS),
        kept_next_hops(&bed, REPLY_HOPS),
    );
    assert!(
        clients
            .iter()
            .any(|hop| hop.addr == client && hop.ifindex != NEXT_HOP_ROUTED),
        "no next hop kept for the client {client}: {clients:?}"
    );
    assert!(clients.iter().all(|hop| hop.addr == client), "{clients:?}");
    let blue_ip = *blue.ip();
    assert!(
        backends.iter().any(|hop| hop.addr == blue_ip),
        "{backends:?}"
    );
    assert!(
        backends.iter().all(|hop| hop.addr != client),
        "{backends:?}"
    );
    // The daemon listed the client-facing veth as one whose other end is elsewhere.
    let index = bed.node.run({
        let name = std::ffi::CString::new(bed.node_interface()).expect("a name");
        // SAFETY: a C string that lives across the call.
        move || unsafe { libc::if_nametoindex(name.as_ptr()) }
    });
    let peers = MapData::from_pin(bed.pin_dir.join(PEER_DEVICES)).expect("the peers' pin");
    let peers: Array<_, u32> = Array::try_from(Map::Array(peers)).expect("an array");
    assert_eq!(
        peers.get(&(index % PEER_DEVICE_SLOTS), 0).ok(),
        Some(index),
        "the node's client-facing veth (index {index}) is not in {PEER_DEVICES}"
    );
}

/// Packets the node's client-facing device has transmitted (read where `ip netns exec` mounts
/// the node namespace's sysfs).
fn sent_on_node_interface(bed: &Testbed) -> u64 {
    let out = bed
        .node
        .exec("cat")
        .arg(format!(
            "/sys/class/net/{}/statistics/tx_packets",
            bed.node_interface()
        ))
        .output()
        .expect("cat");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("tx_packets: {e}: {out:?}"))
}

/// A next hop as a test reads it: the address in order and the device.
#[derive(Debug)]
struct Kept {
    addr: Ipv4Addr,
    ifindex: u32,
}

/// The next hops a next-hop map (`NEXT_HOPS`, `REPLY_HOPS`) keeps, on any CPU.
fn kept_next_hops(bed: &Testbed, name: &str) -> Vec<Kept> {
    let data = MapData::from_pin(bed.pin_dir.join(name)).expect("the next hops' pin");
    let hops: PerCpuArray<_, NextHop> =
        PerCpuArray::try_from(Map::PerCpuArray(data)).expect("a next-hop map");
    (0..NEXT_HOP_SLOTS)
        .flat_map(|slot| hops.get(&slot, 0).expect("a next-hop slot").to_vec())
        .filter(|hop| hop.asked_ns != 0)
        .map(|hop| Kept {
            addr: Ipv4Addr::from(hop.addr.to_ne_bytes()),
            ifindex: hop.ifindex,
        })
        .collect()
}

/// Waits until the reply fast path is attached to both backends' devices.
fn wait_reply_links(bed: &Testbed) {
    let links = bed.pin_dir.join("links_reply");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while std::fs::read_dir(&links).map_or(0, Iterator::count) < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no reply links for both backends' devices: {}",
            bed.daemon_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_rollback_drains_pooled_clients_through_the_fast_path_both_ways() {
    require_root!();
    let _serial = one_at_a_time();
    let bed = healthy_bed();
    let vip: SocketAddr = bed.vip();
    bed.client.run(move || {
        (0..20).for_each(|_| {
            http::get(vip).expect("a warm-up request");
        });
    });
    wait_reply_links(&bed);
    let replies_before = packets(&bed, "reply_forwarded");
    let requests_before = packets(&bed, "forwarded");
    let client = splitter_tests::pooled::start(&bed.client, &format!("http://{vip}/"), 16, 10, 5)
        .expect("the pooled client");
    std::thread::sleep(Duration::from_secs(2));
    let started = splitter_tests::pooled::now();
    bed.ctl_ok(&["rollback", "sentiment", "--wait-ms", "3000"]);
    let seen = splitter_tests::pooled::collect(client).expect("the pooled client");
    let rollback = bed.drained_rollback().expect("the drained rollback");
    let drain = &rollback.event.details["drain"];
    let raced = drain["raced"].as_u64().unwrap_or(0);
    if let Err(why) = seen.failures_within_races(raced) {
        panic!("{why}; the drain: {drain}");
    }
    // The rollback's promise (green's last answer within 100 ms) on the kernel's clock: the
    // Python client's own stamps lag under load (a run saw green's last response begin 61 ms
    // after the decision and the client stamp it 119 ms after the command); drain.rs holds
    // the client's clock to 100 ms, with its tests run one at a time.
    assert_left_answered_within(drain, Duration::from_millis(100));
    let last_green = seen.last("green").unwrap_or(0.0);
    assert!(
        last_green <= started + 0.25,
        "green answered {:.0} ms after the rollback started; the drain: {drain}",
        (last_green - started) * 1e3
    );
    assert!(
        seen.count("blue", |at| at > started + 0.5) > 50,
        "blue after"
    );
    assert!(
        packets(&bed, "reply_forwarded") > replies_before + 100.0,
        "the replies took the fast path"
    );
    assert!(
        packets(&bed, "forwarded") > requests_before + 100.0,
        "the requests took the fast path"
    );
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn fast_path_false_leaves_every_packet_to_the_stack_and_a_reload_turns_it_on_and_off() {
    require_root!();
    let _serial = one_at_a_time();
    let mut bed = Testbed::new(SERVER);
    bed.write_config_with("50", "[service.health]\ninterval_ms = 200\n");
    bed.prepend_config("fast_path = false\n");
    bed.start_daemon(&[]);
    wait_healthy(&bed);
    let vip: SocketAddr = bed.vip();
    let ask = |bed: &Testbed| {
        bed.client.run(move || {
            (0..20).for_each(|_| {
                http::get(vip).expect("a request through the service");
            });
        });
    };
    let count = packets;
    ask(&bed);
    assert_eq!(count(&bed, "forwarded"), 0.0, "nothing took the fast path");
    assert!(
        count(&bed, "forward_no_device") >= 60.0,
        "every steered packet took the stack"
    );

    bed.write_config_with("50", "[service.health]\ninterval_ms = 200\n");
    bed.ctl_ok(&["reload"]);
    ask(&bed);
    assert!(
        count(&bed, "forwarded") >= 60.0,
        "the reload turned the fast path on"
    );

    // And off again: the next hops it kept go with it, so no request is lost on the way.
    bed.prepend_config("fast_path = false\n");
    bed.ctl_ok(&["reload"]);
    let before = count(&bed, "forwarded");
    ask(&bed);
    assert_eq!(
        count(&bed, "forwarded"),
        before,
        "nothing took the fast path once off"
    );
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_backend_behind_a_router_takes_the_fast_path_to_its_gateway() {
    require_root!();
    let _serial = one_at_a_time();
    let mut bed = Testbed::new(SERVER);
    // Green's backend lives on an address of green's own namespace that the node reaches
    // only through green's link address as a gateway: a backend behind a router.
    let behind = std::net::SocketAddrV4::new([198, 19, 200, bed.index].into(), 8080);
    bed.green
        .ip(&["addr", "add", &format!("{}/32", behind.ip()), "dev", "lo"]);
    bed.node.ip(&[
        "route",
        "add",
        &format!("{}/32", behind.ip()),
        "via",
        &bed.green_addr().ip().to_string(),
    ]);
    bed.serve_on_backend(SERVER, true, behind, "green-behind");
    bed.write_services(&format!(
        "[[service]]\nname = \"sentiment\"\nlisten = \"{}\"\nblue = [\"{}\"]\ngreen = [\"{behind}\"]\ngreen_weight = 100\n[service.health]\ninterval_ms = 200\n",
        bed.vip(),
        bed.blue_addr(),
    ));
    bed.start_daemon(&[]);
    wait_healthy(&bed);
    let forwarded = |bed: &Testbed| packets(bed, "forwarded");
    let before = forwarded(&bed);
    let vip: SocketAddr = bed.vip();
    let answers = bed.client.run(move || {
        (0..20)
            .map(|_| http::get(vip).expect("a request to the backend behind the router"))
            .collect::<Vec<_>>()
    });
    assert!(
        answers.iter().all(|a| a.contains("green-behind")),
        "{answers:?}"
    );
    assert!(
        forwarded(&bed) - before >= 60.0,
        "{} packets forwarded",
        forwarded(&bed) - before
    );
}
