//! Fleet mode past one machine, by simulation: N agents in this process, each watching the
//! desired splits and acknowledging every change with a report of its own, as a node's daemon
//! does (the same client, `splitter_ctl::io::etcd`), against one etcd member. Per round, one
//! desired split is written; measured: when each agent saw it (the moment a daemon would write
//! its kernel), when every acknowledgement was in etcd, and etcd's CPU time.

use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use splitter_ctl::{
    io::etcd::{Change, Etcd, EtcdError},
    model::fleet::{DEFAULT_LEASE_TTL, Endpoint, Fleet, FleetTls},
};
use splitter_tests::etcd::EtcdCluster;
use tokio::sync::mpsc;

/// The simulation's own prefix, apart from any real node's keys.
const DESIRED: &str = "/sim/v1/desired/";
const NODES: &str = "/sim/v1/nodes/";
/// How long a round may take before the simulation fails.
const ROUND_LIMIT: Duration = Duration::from_secs(60);

/// One size's result.
pub struct Scale {
    pub agents: usize,
    pub rounds: usize,
    /// Each agent's delay from the write to its watch event, every round: ms.
    pub seen_ms: Vec<f64>,
    /// From the write to the last agent's event, per round: ms.
    pub all_seen_ms: Vec<f64>,
    /// From the write to the last acknowledgement read back from etcd, per round: ms.
    pub all_acked_ms: Vec<f64>,
    /// etcd's CPU time per round: ms.
    pub etcd_cpu_ms: f64,
}

fn client(cluster: &EtcdCluster) -> Result<Etcd, String> {
    let fleet = Fleet {
        endpoints: cluster
            .urls()
            .iter()
            .map(|u| Endpoint::parse(u))
            .collect::<Result<_, _>>()?,
        node: "sim".into(),
        prefix: "/sim".into(),
        lease_ttl: DEFAULT_LEASE_TTL,
        tls: FleetTls::default(),
    };
    Etcd::new(&fleet, Duration::from_secs(10)).map_err(|e| e.to_string())
}

/// An agent: its watch from `from`, each change seen sent on `seen`, then acknowledged.
async fn agent(
    etcd: Etcd,
    k: usize,
    from: i64,
    ready: mpsc::UnboundedSender<usize>,
    seen: mpsc::UnboundedSender<(usize, i64, Instant)>,
) -> Result<(), EtcdError> {
    let mut watch = etcd.watch(DESIRED, from).await?;
    loop {
        let batch = watch.next().await?;
        if batch.created {
            let _ = ready.send(k);
        }
        for change in batch.changes {
            if let Change::Put(kv) = change {
                let _ = seen.send((k, kv.mod_revision, Instant::now()));
                let ack = format!("{{\"agent\":{k},\"revision\":{}}}", kv.mod_revision);
                etcd.put(&format!("{NODES}a{k}"), ack.as_bytes(), None)
                    .await?;
            }
        }
    }
}

/// Runs `rounds` rounds with `agents` agents against `cluster`, on a thread in its namespace.
pub fn run(cluster: &EtcdCluster, agents: usize, rounds: usize) -> Result<Scale, String> {
    let etcd = client(cluster)?;
    let pid = cluster.member_pid(0).ok_or("etcd is not running")?;
    cluster.ns.run(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?
            .block_on(simulate(etcd, pid, agents, rounds))
    })
}

async fn simulate(etcd: Etcd, pid: u32, agents: usize, rounds: usize) -> Result<Scale, String> {
    let (from, _) = etcd
        .range_prefix(DESIRED)
        .await
        .map_err(|e| e.to_string())?;
    let (ready_tx, mut ready) = mpsc::unbounded_channel();
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..agents {
        tasks.spawn(agent(
            etcd.clone(),
            k,
            from + 1,
            ready_tx.clone(),
            seen_tx.clone(),
        ));
    }
    // Only the agents hold senders now: when they all stop, the channels say so.
    drop((ready_tx, seen_tx));
    for _ in 0..agents {
        tokio::time::timeout(ROUND_LIMIT, ready.recv())
            .await
            .map_err(|_| format!("{agents} agents: not every watch began within {ROUND_LIMIT:?}"))?
            .ok_or_else(|| "every agent stopped before its watch began".to_owned())?;
    }
    let mut scale = Scale {
        agents,
        rounds,
        seen_ms: Vec::new(),
        all_seen_ms: Vec::new(),
        all_acked_ms: Vec::new(),
        etcd_cpu_ms: 0.0,
    };
    let cpu_before = cpu_ms(pid);
    for round in 0..rounds {
        let value = format!("{{\"round\":{round}}}");
        let started = Instant::now();
        let revision = etcd
            .put(&format!("{DESIRED}model"), value.as_bytes(), None)
            .await
            .map_err(|e| e.to_string())?;
        let mut last = Duration::ZERO;
        let mut count = 0;
        while count < agents {
            let next = tokio::select! {
                next = seen.recv() => next,
                Some(ended) = tasks.join_next() => {
                    return Err(format!("an agent stopped: {ended:?}"));
                }
                () = tokio::time::sleep(ROUND_LIMIT) => {
                    return Err(format!("round {round}: {count} of {agents} agents saw it"));
                }
            };
            let (_, seen_revision, at) = next.ok_or("the agents stopped")?;
            if seen_revision == revision {
                let delay = at.saturating_duration_since(started);
                scale.seen_ms.push(ms(delay));
                last = last.max(delay);
                count += 1;
            }
        }
        scale.all_seen_ms.push(ms(last));
        // Every acknowledgement of this revision in etcd.
        loop {
            let (_, acks) = etcd.range_prefix(NODES).await.map_err(|e| e.to_string())?;
            let needle = format!("\"revision\":{revision}}}");
            let acked = acks
                .iter()
                .filter(|kv| kv.value.ends_with(needle.as_bytes()))
                .count();
            if acked == agents {
                break;
            }
            if started.elapsed() > ROUND_LIMIT {
                return Err(format!("round {round}: {acked} of {agents} acknowledged"));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        scale.all_acked_ms.push(ms(started.elapsed()));
    }
    scale.etcd_cpu_ms = (cpu_ms(pid) - cpu_before) / rounds as f64;
    tasks.abort_all();
    Ok(scale)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// CPU time (user and system) of process `pid`, in ms, from /proc.
fn cpu_ms(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command's closing parenthesis; utime and stime are the 14th and
    // 15th of the line, the 12th and 13th after it.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|f| f.parse::<f64>().ok()))
        .sum();
    // SAFETY: sysconf has no memory preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks * 1e3 / hz.max(1.0)
}

/// The simulation's table.
pub fn report(scales: &[Scale], quantile: fn(&[f64], f64) -> f64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nBy simulation, to plan past one machine: N agents in one process, each watching the desired splits and acknowledging each change with a put of its own report, as a node's daemon does (the same client), against the same single etcd member. A round writes one desired split. \"Seen\" is when an agent's watch delivered it (where a daemon writes its kernel word); \"acknowledged\" is when every agent's report was read back from etcd. All agents share this machine's 2 cores with etcd, so the larger sizes measure this machine as much as etcd.\n"
    );
    let _ = writeln!(
        out,
        "| agents | rounds | one agent seen p50 / p99 | every agent seen p50 / p99 | every ack in etcd p50 / p99 | etcd CPU per round |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|");
    for s in scales {
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} / {:.1} ms | {:.1} / {:.1} ms | {:.1} / {:.1} ms | {:.0} ms |",
            s.agents,
            s.rounds,
            quantile(&s.seen_ms, 0.5),
            quantile(&s.seen_ms, 0.99),
            quantile(&s.all_seen_ms, 0.5),
            quantile(&s.all_seen_ms, 0.99),
            quantile(&s.all_acked_ms, 0.5),
            quantile(&s.all_acked_ms, 0.99),
            s.etcd_cpu_ms,
        );
    }
    out
}
