//! Fleet mode: how soon a rollback made on one node is in every node's kernel. Five nodes,
//! each a test bed with its own daemon and data plane, follow one etcd member (Debian's
//! etcd-server). Each round sets green to 50% on the fleet, then runs `rollback` on one node
//! (a different one each round) while this process reads the five pinned split words in a
//! loop: from the command's start to every node's word written, and from the first node's
//! word (the one the command wrote itself) to the last.

use std::{
    fmt::Write as _,
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use splitter_common::Version;
use splitter_ctl::{
    kernel::split_maps::SplitMaps,
    model::config::{Protocol, endpoint},
};
use splitter_tests::{
    etcd::EtcdCluster,
    testbed::{Testbed, rollback_command},
};

/// The nodes' test beds: 210 to 214 (198.18.210.0/24 ...), etcd on the first one's addresses.
const FIRST_BED: u8 = 210;
const NODES: u8 = 5;
/// How long a round waits for every node before the section fails.
const WITHIN: Duration = Duration::from_secs(5);
/// Between two reads of the five split words.
const POLL: Duration = Duration::from_micros(200);
/// The goal: every node's word written within this of the rollback command's start (p99).
const GOAL_MS: f64 = 50.0;

/// Each node's split word, read from its pins.
struct Words(Vec<(SplitMaps, u32)>);

impl Words {
    fn open(beds: &[Testbed]) -> Result<Self, String> {
        beds.iter()
            .map(|bed| {
                let maps = SplitMaps::open_pinned(&bed.pin_dir).map_err(|e| e.to_string())?;
                let service = maps
                    .service(&endpoint(bed.vip(), Protocol::Tcp))
                    .map_err(|e| e.to_string())?
                    .ok_or("the service is not in a node's data plane")?;
                Ok((maps, service.split))
            })
            .collect::<Result<_, String>>()
            .map(Self)
    }

    /// Green's share on each node, in basis points.
    fn green(&self) -> Vec<u16> {
        self.0
            .iter()
            .map(|(maps, id)| {
                maps.split(*id)
                    .map_or(u16::MAX, |w| w.share_of(Version::Green))
            })
            .collect()
    }

    /// Waits until every node gives green `bp`; when each one first did, from `since`.
    fn until(&self, bp: u16, since: Instant) -> Result<Vec<Duration>, String> {
        let mut seen: Vec<Option<Duration>> = vec![None; self.0.len()];
        while seen.iter().any(Option::is_none) {
            let now = since.elapsed();
            if now > WITHIN {
                return Err(format!(
                    "not every node at green {bp} bp within {WITHIN:?}: {:?}",
                    self.green()
                ));
            }
            for (slot, green) in seen.iter_mut().zip(self.green()) {
                if slot.is_none() && green == bp {
                    *slot = Some(now);
                }
            }
            thread::sleep(POLL);
        }
        Ok(seen.into_iter().flatten().collect())
    }
}

pub fn section(server: &str, quick: bool) -> Result<String, String> {
    let rounds = if quick { 10 } else { 100 };
    let mut beds: Vec<Testbed> = (0..NODES)
        .map(|k| Testbed::with_index(FIRST_BED + k, server))
        .collect();
    let cluster = EtcdCluster::start(FIRST_BED, 1);
    for (k, bed) in beds.iter_mut().enumerate() {
        bed.write_config("0");
        cluster.link(bed);
        cluster.add_fleet(bed, &format!("n{k}"));
        bed.start_daemon(&[]);
    }
    let words = Words::open(&beds)?;
    let mut command_to_all = Vec::new();
    let mut first_to_last = Vec::new();
    for round in 0..rounds {
        let on = &beds[round % beds.len()];
        let out = on.ctl(&["weight", "sentiment", "green", "50"]);
        if !out.status.success() {
            return Err(format!("weight: {}", String::from_utf8_lossy(&out.stderr)));
        }
        words.until(5_000, Instant::now())?;
        let mut command = rollback_command(&on.config_path);
        command.stdout(Stdio::null()).stderr(Stdio::null());
        let (mut rollback, started) = on
            .node
            .start(command)
            .map_err(|e| format!("rollback: {e}"))?;
        let seen = words.until(0, started);
        let status = rollback.wait().map_err(|e| e.to_string())?;
        let seen = seen?;
        if !status.success() {
            return Err(format!("rollback on node {}: {status}", round % beds.len()));
        }
        let first = seen.iter().min().copied().unwrap_or_default();
        let last = seen.iter().max().copied().unwrap_or_default();
        command_to_all.push(ms(last));
        first_to_last.push(ms(last - first));
    }
    drop(beds);
    // The simulation, on the same etcd member, alone on the machine now.
    let mut scales = Vec::new();
    for (agents, rounds) in [(10, 20), (100, 20), (1_000, 10)] {
        let rounds = if quick { rounds.min(3) } else { rounds };
        scales.push(crate::fleet_scale::run(&cluster, agents, rounds)?);
    }
    drop(cluster);
    Ok(report(rounds, &command_to_all, &first_to_last)
        + &crate::fleet_scale::report(&scales, quantile)
        + AT_10K)
}

/// What the simulation says for a fleet ten times the largest size simulated.
const AT_10K: &str = "\nAt 10,000 hosts, what would change (an estimate from the trend of the table, not a measurement). In the table, etcd's CPU per change grows with the agents (each acknowledgement is a put: a TCP connection and JSON through etcd's gateway, then a Raft commit); read linearly, 10,000 hosts would cost etcd several seconds of CPU per change, and the reports every third of the lease (5 s TTL) another ~6,000 puts/s at rest. The desired split itself scales: a change is one write, and watches fan out from etcd's memory (\"every agent seen\" stays well under its acknowledgements). So at that size: the daemon keeps one connection to etcd for its calls (gRPC, or HTTP keep-alive through the gateway) instead of one per call; a node rewrites its report on change and every several seconds, its lease alone keeping it alive in between; and nodes report through per-rack aggregators whose merged reports the coordinator reads, so that etcd takes hundreds of writes per change, not 10,000.\n\n";

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The `q` quantile (nearest rank) of `values`.
fn quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn report(rounds: usize, command_to_all: &[f64], first_to_last: &[f64]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n### Fleet mode: a rollback reaching every node\n\n{NODES} nodes (test beds, each with its own daemon and data plane) follow one etcd 3.4 member over veth links; {rounds} rounds, each green at 50% on the fleet, then `splitter-ctl rollback sentiment --wait-ms 0` on one node (each node in turn), while this process reads the {NODES} pinned split words every {} µs. The node the command runs on writes its own word before it tells etcd; the others write theirs from their watch.\n",
        POLL.as_micros()
    );
    let _ = writeln!(out, "| measure | p50 | p99 | max |");
    let _ = writeln!(out, "|---|---:|---:|---:|");
    for (name, values) in [
        ("command start → every node's word written", command_to_all),
        ("the command's node → the last node", first_to_last),
    ] {
        let max = values.iter().copied().fold(0.0, f64::max);
        let _ = writeln!(
            out,
            "| {name} | {:.1} ms | {:.1} ms | {max:.1} ms |",
            quantile(values, 0.5),
            quantile(values, 0.99)
        );
    }
    let p99 = quantile(command_to_all, 0.99);
    let _ = writeln!(
        out,
        "\nGoal: every node's word written within {GOAL_MS:.0} ms of the rollback (p99): **{}** (p99 {p99:.1} ms).\n",
        if p99 <= GOAL_MS { "met" } else { "MISSED" }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn quantiles_take_the_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&values, 0.5), 50.0);
        assert_eq!(quantile(&values, 0.99), 99.0);
        assert_eq!(quantile(&[3.0], 0.99), 3.0);
    }
}
