//! How the per-packet cost grows with what the data plane holds: services, backends per pool
//! and live flows. Each case is a data plane of its own, loaded beside the others, its services
//! and flows set up through the programs and the maps as the daemon would; every round times
//! every case back to back (a noisy neighbour slows a whole round), and the round whose
//! largest-case ratio is the median is reported.
//!
//! Packets are single runs (`repeat = 1`), each a packet of another live flow in turn, as a
//! busy host sees them: with 1,000 flows nearly all stay in the per-CPU flow cache (two ways per
//! set: by a Poisson estimate, about 9% of random flows share a set with two others), with 1,000,000 the cache misses
//! and the flow table is a million entries deep.

use std::{collections::HashSet, fmt::Write as _, net::SocketAddrV4};

use crate::judge::Rng;
use splitter_common::maps::{PROGRAM_BASELINE, PROGRAM_INGRESS};
use splitter_tests::{
    packet::{ACK, Ipv4Packet, SYN},
    plane::Plane,
};

/// (services, backends per pool, live flows).
const CASES: [(u16, u16, u32); 5] = [
    (1, 2, 1_000),
    (10, 2, 1_000),
    (100, 2, 1_000),
    (1, 64, 1_000),
    (1, 2, 1_000_000),
];
const ROUNDS: usize = 7;
/// Established packets timed per case and round, each of another flow in turn.
const SAMPLE: usize = 20_000;

struct Case {
    services: u16,
    backends: u16,
    flows: u32,
    plane: Plane,
    /// One pure ACK per sampled flow.
    acks: Vec<Vec<u8>>,
    /// Kernel memory of the case's maps, in bytes.
    memory: u64,
}

fn config(services: u16, backends: u16) -> String {
    let mut config = String::from("interface = \"lo\"\n");
    for s in 0..services {
        // Each service its own backends: 198.19.<service>.x for blue, 198.19.<128 + service>.x
        // for green.
        let pool = |green: bool| -> String {
            let third = if green { 128 + s } else { s };
            (0..backends)
                .map(|b| format!("\"198.19.{third}.{}:8080\"", 1 + b))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = write!(
            config,
            "\n[[service]]\nname = \"s{s}\"\nlisten = \"198.18.0.1:{}\"\nblue = [{}]\ngreen = [{}]\ngreen_weight = 50\n",
            20_000 + s,
            pool(false),
            pool(true),
        );
    }
    config
}

/// The `memlock` of every BPF map this process holds open, summed.
fn maps_memory() -> u64 {
    let Ok(fds) = std::fs::read_dir("/proc/self/fdinfo") else {
        return 0;
    };
    fds.flatten()
        .filter_map(|fd| std::fs::read_to_string(fd.path()).ok())
        .filter(|info| info.contains("map_type:"))
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("memlock:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .sum()
}

impl Case {
    fn new(services: u16, backends: u16, flows: u32) -> Self {
        let before = maps_memory();
        // Room for every flow on the one CPU that makes them, and a quarter more.
        let per_cpu = (flows + flows / 4).max(splitter_common::maps::FLOW_CAPACITY_PER_CPU);
        let plane = Plane::load_sized(&config(services, backends), per_cpu);
        let memory = maps_memory().saturating_sub(before);
        let mut acks = Vec::with_capacity(SAMPLE);
        let every = (flows as usize / SAMPLE).max(1);
        // Clients drawn at random (seeded) from 198.18.128.0/17 and ports 1024 and up, as a
        // host sees them: clients numbered in order would fall into the caches' sets by a
        // pattern, luckier in one case than in another.
        let mut rng = Rng(u64::from(flows) << 16 | u64::from(services));
        let mut seen = HashSet::with_capacity(flows as usize);
        let mut i = 0usize;
        while seen.len() < flows as usize {
            let draw = rng.next_u64();
            let client = SocketAddrV4::new(
                [198, 18, 128 | (draw >> 8) as u8 & 0x7f, draw as u8].into(),
                1_024 + (draw >> 16) as u16 % (u16::MAX - 1_024),
            );
            if !seen.insert(client) {
                continue;
            }
            // Flows spread over the services.
            let port = 20_000 + (i % usize::from(services)) as u16;
            let service = SocketAddrV4::new([198, 18, 0, 1].into(), port);
            let _ = plane.ingress(&Ipv4Packet::tcp(client, service, SYN).build());
            if i.is_multiple_of(every) && acks.len() < SAMPLE {
                acks.push(Ipv4Packet::tcp(client, service, ACK).build());
            }
            i += 1;
        }
        Self {
            services,
            backends,
            flows,
            plane,
            acks,
            memory,
        }
    }

    /// The median call's ns of an established packet of this case, and of the baseline timed
    /// beside it. Medians, not means: one preempted call among a thousand would add its
    /// hundreds of microseconds to a mean.
    fn time(&self) -> (f64, f64) {
        let (mut program, mut baseline) = (Vec::new(), Vec::new());
        for ack in &self.acks {
            baseline.push(self.plane.time_xdp(PROGRAM_BASELINE, ack, 1).duration_ns);
            program.push(self.plane.time_xdp(PROGRAM_INGRESS, ack, 1).duration_ns);
        }
        (median(&mut program), median(&mut baseline))
    }
}

fn median(calls: &mut [u128]) -> f64 {
    calls.sort_unstable();
    calls.get(calls.len() / 2).map_or(0.0, |&ns| ns as f64)
}

pub fn section(quick: bool) -> String {
    let _pinned = splitter_tests::plane::Pinned::to_cpu(0);
    let cases: Vec<Case> = CASES
        .iter()
        .filter(|(_, _, flows)| !quick || *flows <= 1_000)
        .map(|&(s, b, f)| Case::new(s, b, f))
        .collect();
    // Each round: every case's cost over its own baseline's, then each case against the first.
    let mut rounds: Vec<Vec<(f64, f64)>> = (0..ROUNDS)
        .map(|_| cases.iter().map(Case::time).collect())
        .collect();
    let worst = |round: &Vec<(f64, f64)>| {
        let first = round[0].0 - round[0].1;
        round
            .iter()
            .map(|(p, b)| (p - b) / first)
            .fold(0.0, f64::max)
    };
    rounds.sort_by(|a, b| worst(a).total_cmp(&worst(b)));
    let round = &rounds[rounds.len() / 2];
    let smallest = round[0].0 - round[0].1;

    let mut out = String::new();
    let _ = writeln!(out, "### How the per-packet cost grows\n");
    let _ = writeln!(
        out,
        "An established TCP packet (pure ACK) through `split_ingress`, single runs, each of another live flow in turn (every flow, or {SAMPLE} sampled from the larger tables), on one CPU. The cost is the median call's time less the median of the `XDP_PASS` baseline's calls, timed beside them; {ROUNDS} rounds, each timing every case, and the round whose largest growth is the median is reported. Memory: the `memlock` of the case's maps, its flow table sized for its flows.\n"
    );
    let _ = writeln!(
        out,
        "| services | backends per pool | live flows | ns over the baseline | × the smallest case | maps' memory MiB |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|");
    let mut within = true;
    for (case, (program, baseline)) in cases.iter().zip(round) {
        let cost = program - baseline;
        let growth = cost / smallest;
        within &= growth <= 1.1;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {cost:.1} | {growth:.2} | {:.1} |",
            case.services,
            case.backends,
            case.flows,
            case.memory as f64 / f64::from(1u32 << 20)
        );
    }
    let _ = writeln!(
        out,
        "\nTarget: every case within 10% of the smallest: **{}**.\n",
        if within { "met" } else { "MISSED" }
    );
    out
}
