//! How the per-packet cost grows with what the data plane holds: services, backends per pool
//! and live flows. Each case is a data plane of its own, loaded beside the others, its services
//! and flows set up through the programs and the maps as the daemon would; every round times
//! every case back to back (a noisy neighbour slows a whole round), and each case reports its
//! median over the rounds, of its cost and of its ratio to the smallest case in the same round.
//!
//! Packets are single runs (`repeat = 1`), each a packet of another live flow in turn, as a
//! busy host sees them: with 1,000 flows nearly all stay in the per-CPU flow cache (two ways per
//! set: by a Poisson estimate, about 9% of random flows share a set with two others), with
//! 1,000,000 the cache misses and the flow table is a million entries deep. The million-flow
//! table is also timed with packets of 1,000 of its flows, which tells the table's size apart
//! from the working set's: on a miss of the per-CPU cache, the flow table's lookup
//! (`lookup_nulls_elem_raw`) is half the program's time in a profile of the miss path, its
//! samples on two instructions, most likely the loads of the bucket and of the entry (not
//! disassembled: this kernel offers no `/proc/kcore`), whatever the table's depth.

use std::{collections::HashSet, fmt::Write as _, net::SocketAddrV4};

use crate::judge::Rng;
use splitter_common::{
    FlowKey, PROTO_TCP,
    maps::{PROGRAM_BASELINE, PROGRAM_INGRESS},
};
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
/// The flows a table larger than this is also timed with, in turn: the same working set as the
/// smallest case in a table a thousand times its size, so that what the table's size costs is
/// told apart from what touching more flows costs (outside the target, which is about the
/// worst: every flow in turn).
const ACTIVE: u32 = 1_000;

struct Case {
    services: u16,
    backends: u16,
    flows: u32,
    plane: Plane,
    /// One pure ACK per sampled flow.
    acks: Vec<Vec<u8>>,
    /// In a table of more than `ACTIVE` flows: one pure ACK for each of the first `ACTIVE`.
    active: Vec<Vec<u8>>,
    /// Kernel memory of the case's maps, in bytes.
    memory: u64,
    /// The share of the timed flows whose cache set holds more flows than ways: those miss the
    /// flow cache at every pass.
    misses: f64,
    /// The same of the `ACTIVE` flows.
    active_misses: f64,
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
        let mut active = Vec::new();
        let (mut sets, mut active_sets) = (Vec::with_capacity(SAMPLE), Vec::new());
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
            let (c, p) = (client.port().to_be_bytes(), port.to_be_bytes());
            let key = FlowKey::from_ipv4(
                u32::from_ne_bytes(client.ip().octets()),
                u32::from_ne_bytes(service.ip().octets()),
                u32::from_ne_bytes([c[0], c[1], p[0], p[1]]),
                PROTO_TCP,
            );
            if i.is_multiple_of(every) && acks.len() < SAMPLE {
                acks.push(Ipv4Packet::tcp(client, service, ACK).build());
                sets.push(key.cache_set());
            }
            if flows > ACTIVE && i < ACTIVE as usize {
                active.push(Ipv4Packet::tcp(client, service, ACK).build());
                active_sets.push(key.cache_set());
            }
            i += 1;
        }
        Self {
            services,
            backends,
            flows,
            plane,
            acks,
            active,
            memory,
            misses: crate::packet::miss_share(sets.into_iter()),
            active_misses: crate::packet::miss_share(active_sets.into_iter()),
        }
    }

    /// The mean ns of the middle 80% of an established packet's calls of this case (each of
    /// `acks` in turn), and of the baseline's timed beside them. Trimmed: one preempted call
    /// among a thousand would add its hundreds of microseconds to a plain mean. A mean, not a
    /// median: this machine's clock reads in steps of 10 ns (consecutive `CLOCK_MONOTONIC`
    /// reads differ by 60, 70, 80 ns and so on), so every call's time is a multiple of 10 ns
    /// and a median moves by whole steps, 7% of the smallest case; a mean of many calls, each
    /// started at another phase of the clock's step, resolves what lies between.
    fn time(&self, acks: &[Vec<u8>]) -> (f64, f64) {
        let (mut program, mut baseline) = (Vec::new(), Vec::new());
        for ack in acks {
            baseline.push(self.plane.time_xdp(PROGRAM_BASELINE, ack, 1).duration_ns);
            program.push(self.plane.time_xdp(PROGRAM_INGRESS, ack, 1).duration_ns);
        }
        (trimmed_mean(&mut program), trimmed_mean(&mut baseline))
    }
}

/// One round's (program, baseline) ns, as `Case::time` gives them: every case with every flow
/// in turn, then the larger cases with `ACTIVE` flows.
type Round = (Vec<(f64, f64)>, Vec<(f64, f64)>);

/// The mean of the middle 80% of `calls`.
fn trimmed_mean(calls: &mut [u128]) -> f64 {
    calls.sort_unstable();
    let cut = calls.len() / 10;
    let middle = &calls[cut..calls.len() - cut];
    if middle.is_empty() {
        return 0.0;
    }
    middle.iter().sum::<u128>() as f64 / middle.len() as f64
}

pub fn section(quick: bool) -> String {
    let _pinned = splitter_tests::plane::Pinned::to_cpu(0);
    let cases: Vec<Case> = CASES
        .iter()
        .filter(|(_, _, flows)| !quick || *flows <= 1_000)
        .map(|&(s, b, f)| Case::new(s, b, f))
        .collect();
    // Each round: every case's cost over its own baseline's, then each case against the first;
    // the cases with a working set of `ACTIVE` flows in a larger table after them.
    let rounds: Vec<Round> = (0..ROUNDS)
        .map(|_| {
            let every = cases.iter().map(|c| c.time(&c.acks)).collect();
            let active = cases
                .iter()
                .filter(|c| !c.active.is_empty())
                .map(|c| {
                    // Once untimed: every flow in turn has just pushed these out of the
                    // caches, where the smaller cases' flows stay from round to round.
                    for ack in &c.active {
                        let _ = c.plane.time_xdp(PROGRAM_INGRESS, ack, 1);
                    }
                    c.time(&c.active)
                })
                .collect();
            (every, active)
        })
        .collect();
    // Each case's own median over the rounds, of its cost and of its ratio to the smallest case
    // within a round: a round picked by one case would report the others' noise of that round
    // (a 100-service case once read 1.64x in the round whose million-flow ratio was the median).
    let per_case = |timed: &dyn Fn(&Round) -> (f64, f64)| {
        let (mut costs, mut ratios) = (Vec::new(), Vec::new());
        for round in &rounds {
            let (program, baseline) = timed(round);
            let smallest = round.0[0].0 - round.0[0].1;
            costs.push(program - baseline);
            ratios.push((program - baseline) / smallest);
        }
        (crate::median(costs), crate::median(ratios))
    };
    let every: Vec<(f64, f64)> = (0..cases.len())
        .map(|i| per_case(&|round: &Round| round.0[i]))
        .collect();
    let active: Vec<(f64, f64)> = (0..rounds[0].1.len())
        .map(|i| per_case(&|round: &Round| round.1[i]))
        .collect();

    let mut out = String::new();
    let _ = writeln!(out, "### How the per-packet cost grows\n");
    let last_row = if active.is_empty() {
        String::new()
    } else {
        format!(
            " The last row sends packets of only {ACTIVE} of the million flows, in turn, timed right after one untimed pass over them (every flow in turn has just pushed them out of the caches): the table's size without the working set's; it is outside the target, and warmer in the CPU's caches than the first rows, whose flows other cases' passes come between."
        )
    };
    let _ = writeln!(
        out,
        "An established TCP packet (pure ACK) through `split_ingress`, single runs, each of another live flow in turn (every flow, or {SAMPLE} sampled from the larger tables), on one CPU. The cost is the mean time of the middle 80% of the calls less the same of the `XDP_PASS` baseline's calls, timed beside them (a mean, because this machine's clock reads in steps of 10 ns: a median moves by whole steps, 7% of the smallest case); {ROUNDS} rounds, each timing every case; each row is the case's median cost over the rounds and its median ratio to the smallest case's cost in the same round (so a row's ns and ratio come from different rounds, and need not divide exactly). In overfull cache sets: the share of the timed flows whose set of the per-CPU flow cache has more flows than ways, which miss it at every pass (the clients are drawn anew for each number of services and of flows). Memory: the `memlock` of the case's maps, its flow table sized for its flows.{last_row}\n"
    );
    let _ = writeln!(
        out,
        "| services | backends per pool | live flows | packets from | in overfull cache sets | ns over the baseline | × the smallest case | maps' memory MiB |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---|---:|---:|---:|---:|");
    let mut within = true;
    let mut row = |case: &Case, from: String, misses: f64, (cost, growth): (f64, f64)| {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {from} | {:.1}% | {cost:.1} | {growth:.2} | {:.1} |",
            case.services,
            case.backends,
            case.flows,
            misses * 100.0,
            case.memory as f64 / f64::from(1u32 << 20)
        );
        growth
    };
    for (case, timed) in cases.iter().zip(&every) {
        let from = if case.acks.len() < case.flows as usize {
            format!("{} sampled flows in turn", case.acks.len())
        } else {
            "every flow in turn".to_owned()
        };
        within &= row(case, from, case.misses, *timed) <= 1.1;
    }
    let larger = cases.iter().filter(|c| !c.active.is_empty());
    for (case, timed) in larger.zip(&active) {
        let from = format!("{} of them in turn (outside the target)", case.active.len());
        row(case, from, case.active_misses, *timed);
    }
    let _ = writeln!(
        out,
        "\nTarget: every case within 10% of the smallest, each sending every flow in turn: **{}**.\n",
        if within { "met" } else { "MISSED" }
    );
    out
}
