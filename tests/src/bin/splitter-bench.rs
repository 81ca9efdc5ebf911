//! `cargo xtask bench`: per-packet cost of the XDP program through BPF_PROG_TEST_RUN, beside a
//! program that only returns XDP_PASS, measured side by side in interleaved rounds of one run
//! (the median round is reported, so a noisy neighbour skews one round, not the result); and
//! the latency of the split-word write that a rollback is.
//!
//! The established packet goes to a service whose only backend is the service address itself:
//! the rewrite then leaves the bytes as they were, so each of the `repeat` runs the kernel makes
//! on the same buffer takes the whole steering path (a plain service would see an already
//! rewritten, non-service packet from the second run on). A new flow cannot repeat that way (the
//! first run records the flow), so SYNs are timed one run per call with the flow removed in
//! between, and the baseline is timed the same way beside them.

use std::{fmt::Write as _, net::SocketAddrV4, path::PathBuf, process::ExitCode, time::Duration};

use splitter_common::{
    Endpoint, FlowKey, PROTO_TCP, Service, SplitWord, Version, ipv4_mapped,
    maps::{PROGRAM_BASELINE, PROGRAM_INGRESS},
};
use splitter_tests::{
    packet::{ACK, Ipv4Packet, SYN},
    plane::Plane,
};

/// The bench's data plane needs no service from a config; it is set up through the maps.
const EMPTY_CONFIG: &str = "interface = \"lo\"\n";
const ROUNDS: usize = 7;

struct Options {
    quick: bool,
    write: Option<PathBuf>,
}

fn main() -> ExitCode {
    let mut options = Options {
        quick: false,
        write: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => options.quick = true,
            "--write" => options.write = args.next().map(PathBuf::from),
            other => {
                eprintln!(
                    "splitter-bench: unknown argument `{other}` (expected --quick or --write FILE)"
                );
                return ExitCode::FAILURE;
            }
        }
    }
    if !splitter_tests::is_root() {
        eprintln!(
            "splitter-bench: needs root to load BPF programs; run `cargo xtask bench` as root"
        );
        return ExitCode::FAILURE;
    }
    let report = run(&options);
    print!("{report}");
    if let Some(path) = &options.write {
        if let Err(e) = std::fs::write(path, &report) {
            eprintln!("splitter-bench: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        eprintln!("splitter-bench: wrote {}", path.display());
    }
    ExitCode::SUCCESS
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn run(options: &Options) -> String {
    let repeat: u32 = if options.quick { 100_000 } else { 1_000_000 };
    let syn_calls: usize = if options.quick { 20_000 } else { 100_000 };
    let mut plane = Plane::load(EMPTY_CONFIG);

    // A service that is its own backend, so the established path can repeat on one buffer.
    let vip: SocketAddrV4 = "198.18.0.1:8080".parse().expect("address");
    let endpoint = Endpoint::new(ipv4_mapped(vip.ip().octets()), vip.port(), PROTO_TCP);
    let table =
        vec![Some(std::net::SocketAddr::V4(vip)); splitter_common::maps::SLOTS_PER_POOL as usize];
    for version in [Version::Blue, Version::Green] {
        plane.maps.write_slots(0, version, &table).expect("slots");
    }
    plane
        .maps
        .set_split(0, SplitWord::new(Version::Blue, 5_000))
        .expect("split");
    plane.maps.set_port_services(vip.port(), 1).expect("port");
    plane
        .maps
        .insert_service(&endpoint, Service { id: 0, flags: 0 })
        .expect("service");

    let client: SocketAddrV4 = "198.18.0.2:40000".parse().expect("address");
    let syn = Ipv4Packet::tcp(client, vip, SYN).build();
    let established = Ipv4Packet::tcp(client, vip, ACK)
        .with_payload(&[0u8; 64])
        .build();
    let other_port =
        Ipv4Packet::tcp(client, "198.18.0.1:22".parse().expect("address"), ACK).build();
    let flow_key = FlowKey {
        src_addr: ipv4_mapped(client.ip().octets()),
        dst_addr: endpoint.addr,
        src_port_be: client.port().to_be(),
        dst_port_be: vip.port().to_be(),
        protocol: PROTO_TCP,
        _pad: [0; 3],
    };
    let _ = plane.ingress(&syn);
    assert!(
        plane.maps.flow(&flow_key).expect("read").is_some(),
        "the SYN recorded a flow"
    );
    assert_eq!(
        plane.ingress(&established).data,
        established,
        "identity rewrite"
    );

    let (mut base, mut est, mut other, mut base_one, mut syn_one) =
        (vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..ROUNDS {
        base.push(
            plane
                .time_xdp(PROGRAM_BASELINE, &established, repeat)
                .duration_ns as f64,
        );
        est.push(
            plane
                .time_xdp(PROGRAM_INGRESS, &established, repeat)
                .duration_ns as f64,
        );
        other.push(
            plane
                .time_xdp(PROGRAM_INGRESS, &other_port, repeat)
                .duration_ns as f64,
        );
        let (mut b, mut s) = (0u128, 0u128);
        for _ in 0..syn_calls / ROUNDS {
            b += plane.time_xdp(PROGRAM_BASELINE, &syn, 1).duration_ns;
            plane
                .maps
                .purge_flows(|k, _| *k == flow_key)
                .expect("remove flow");
            s += plane.time_xdp(PROGRAM_INGRESS, &syn, 1).duration_ns;
        }
        let calls = (syn_calls / ROUNDS) as f64;
        base_one.push(b as f64 / calls);
        syn_one.push(s as f64 / calls);
    }
    let (base, est, other, base_one, syn_one) = (
        median(base),
        median(est),
        median(other),
        median(base_one),
        median(syn_one),
    );

    // The rollback: one write of the split word, timed around the syscall.
    let writes = if options.quick { 2_000 } else { 20_000 };
    let mut write_ns: Vec<f64> = (0..writes)
        .map(|i| {
            let word = SplitWord::new(Version::Blue, if i % 2 == 0 { 0 } else { 1_000 });
            plane
                .maps
                .set_split(0, word)
                .map_or(f64::NAN, |d: Duration| d.as_nanos() as f64)
        })
        .collect();
    write_ns.sort_by(f64::total_cmp);
    let pct = |p: f64| write_ns[((write_ns.len() - 1) as f64 * p) as usize] / 1_000.0;

    let mut out = String::new();
    let _ = writeln!(out, "# Benchmarks\n");
    let _ = writeln!(
        out,
        "Produced by `cargo xtask bench`{}; do not edit by hand.\n",
        if options.quick { " --quick" } else { "" }
    );
    let _ = writeln!(out, "Machine: {}\n", machine());
    let _ = writeln!(
        out,
        "## Per-packet cost of the XDP ingress program (BPF_PROG_TEST_RUN)\n"
    );
    let _ = writeln!(
        out,
        "Median of {ROUNDS} interleaved rounds. Repeated runs: `repeat = {repeat}` on one buffer, kernel-timed mean per run. Single runs: {syn_calls} calls of `repeat = 1`, the flow removed between calls (outside the timed part).\n"
    );
    let _ = writeln!(out, "| packet | program | ns/packet | × baseline |");
    let _ = writeln!(out, "|---|---|---:|---:|");
    let _ = writeln!(
        out,
        "| any (repeated) | baseline `XDP_PASS` | {base:.1} | 1.00 |"
    );
    let _ = writeln!(
        out,
        "| established TCP, 118 bytes (repeated) | split_ingress | {est:.1} | {:.2} |",
        est / base
    );
    let _ = writeln!(
        out,
        "| TCP to a port with no service (repeated) | split_ingress | {other:.1} | {:.2} |",
        other / base
    );
    let _ = writeln!(
        out,
        "| any (single run) | baseline `XDP_PASS` | {base_one:.1} | 1.00 |"
    );
    let _ = writeln!(
        out,
        "| SYN, new flow (single run) | split_ingress | {syn_one:.1} | {:.2} |",
        syn_one / base_one
    );
    let target = if est / base <= 3.0 { "met" } else { "MISSED" };
    let _ = writeln!(
        out,
        "\nTarget: an established packet costs at most 3× the baseline: **{target}** ({:.2}×).\n",
        est / base
    );
    let _ = writeln!(out, "## Rollback write\n");
    let _ = writeln!(
        out,
        "One `bpf_map_update_elem` of the split word from user space, timed around the syscall, {writes} writes.\n"
    );
    let _ = writeln!(out, "| p50 µs | p99 µs | max µs |");
    let _ = writeln!(out, "|---:|---:|---:|");
    let _ = writeln!(
        out,
        "| {:.2} | {:.2} | {:.2} |",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    out
}

fn machine() -> String {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let kernel = read("/proc/sys/kernel/osrelease").trim().to_owned();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!("Linux {kernel}, {cores} cores ({model}), run on {date}")
}
