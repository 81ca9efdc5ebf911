//! Splitter beside what teams run today, on one test bed with the same two backends and the same
//! 90/10 split (the setups are in tests/src/compare.rs): direct (the ceiling), Splitter,
//! nftables DNAT with conntrack, and HAProxy in TCP mode.
//!
//! Throughput and latency come from wrk with a fixed duration, keep-alive and one request per
//! connection, in rounds: every round runs every setup once, each between two runs of direct,
//! and a setup's ratios are taken to the mean of the direct runs either side of it, so that
//! the host's drift over a round cancels. Then, for each setup that splits: the share new
//! connections got, rollbacks probed by connections, established connections across share
//! changes.

use std::{fmt::Write as _, time::Duration};

use splitter_tests::{
    compare::{self, Kind, Setups},
    testbed::Testbed,
    wrk::{self, Connections},
};

use crate::median;

/// The bench's test bed: 198.18.203.0/24 and namespaces `sp203-*`.
const BED: u8 = 203;
/// Green's share of new connections, in basis points.
const GREEN_BP: u16 = 1_000;

struct Plan {
    rounds: usize,
    duration: Duration,
    accuracy_connections: usize,
    rollbacks: usize,
    changes: usize,
    established: usize,
}

impl Plan {
    const fn new(quick: bool) -> Self {
        if quick {
            Self {
                rounds: 1,
                duration: Duration::from_secs(2),
                accuracy_connections: 400,
                rollbacks: 2,
                changes: 20,
                established: 10,
            }
        } else {
            Self {
                rounds: 7,
                duration: Duration::from_secs(3),
                accuracy_connections: 2_000,
                rollbacks: 5,
                changes: 100,
                established: 20,
            }
        }
    }

    fn load(&self, mode: Connections) -> wrk::Load {
        wrk::Load {
            threads: 2,
            connections: 32,
            duration: self.duration,
            mode,
        }
    }
}

const MODES: [Connections; 2] = [Connections::KeepAlive, Connections::Short];

/// One wrk run, with the machine's busy CPU time over it.
#[derive(Clone, Copy)]
struct Run {
    report: wrk::Report,
    cpu: Duration,
}

impl Run {
    fn cpu_per_request_us(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.report.requests.max(1) as f64
    }
}

/// A run of one setup and the direct runs just before and after it.
#[derive(Clone, Copy)]
struct Bracketed {
    run: Run,
    before: Run,
    after: Run,
}

impl Bracketed {
    /// `f` of the run over the mean of `f` of the direct runs either side: drift that is
    /// linear over the three runs cancels.
    fn ratio(&self, f: &dyn Fn(&Run) -> f64) -> f64 {
        f(&self.run) / ((f(&self.before) + f(&self.after)) / 2.0)
    }
}

/// Every run of a section: direct's in the order they ran, the others bracketed.
struct Runs {
    /// direct[mode][i], over all rounds.
    direct: [Vec<Run>; 2],
    /// bracketed[kind][mode][round], empty for direct.
    bracketed: Vec<[Vec<Bracketed>; 2]>,
}

/// Direct's runs in a round: one first, then one after each other setup's.
const DIRECT_PER_ROUND: usize = Kind::ALL.len();

/// Busy CPU time of the whole machine so far (every CPU, every state but idle and iowait).
fn busy_cpu() -> Result<Duration, String> {
    let stat = std::fs::read_to_string("/proc/stat").map_err(|e| format!("/proc/stat: {e}"))?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or("no cpu line in /proc/stat")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy: u64 = ticks
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, t)| t)
        .sum();
    // SAFETY: sysconf has no memory preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        return Err("no clock tick rate".to_owned());
    }
    Ok(Duration::from_secs_f64(busy as f64 / hz as f64))
}

/// What was measured of one splitting setup.
struct Splitting {
    green: [u64; 2],
    rollbacks: Vec<compare::Rollback>,
    broken: u64,
}

pub fn section(server: &str, quick: bool) -> Result<String, String> {
    let plan = Plan::new(quick);
    let mut bed = Testbed::with_index(BED, server);
    let mut setups = Setups::new(&mut bed, GREEN_BP)?;

    let measure =
        |bed: &mut Testbed, setups: &mut Setups, kind: Kind| -> Result<[Run; 2], String> {
            setups.enter(bed, kind)?;
            let mut pair = Vec::with_capacity(MODES.len());
            for mode in MODES {
                let before = busy_cpu()?;
                let load = plan.load(mode);
                let report = wrk::run(&bed.client, Setups::addr(bed, kind), &load)?;
                let cpu = busy_cpu()?.saturating_sub(before);
                if report.requests == 0 {
                    return Err(format!("{}: wrk completed no request", kind.name()));
                }
                pair.push(Run { report, cpu });
            }
            setups.leave(bed, kind)?;
            Ok([pair[0], pair[1]])
        };

    let others: Vec<Kind> = Kind::ALL
        .into_iter()
        .filter(|k| *k != Kind::Direct)
        .collect();
    let mut runs = Runs {
        direct: [vec![], vec![]],
        bracketed: Kind::ALL.iter().map(|_| [vec![], vec![]]).collect(),
    };
    for round in 0..plan.rounds {
        let mut before = measure(&mut bed, &mut setups, Kind::Direct)?;
        for (m, run) in before.iter().enumerate() {
            runs.direct[m].push(*run);
        }
        // Each round starts with another setup, so none always runs first or last.
        for i in 0..others.len() {
            let kind = others[(round + i) % others.len()];
            let run = measure(&mut bed, &mut setups, kind)?;
            let after = measure(&mut bed, &mut setups, Kind::Direct)?;
            let k = at(kind);
            for m in 0..MODES.len() {
                runs.direct[m].push(after[m]);
                runs.bracketed[k][m].push(Bracketed {
                    run: run[m],
                    before: before[m],
                    after: after[m],
                });
            }
            before = after;
        }
    }

    let mut splitting = Vec::new();
    for kind in Kind::SPLITTING {
        setups.enter(&mut bed, kind)?;
        let green = compare::tally(&bed, Setups::addr(&bed, kind), plan.accuracy_connections)?;
        let rollbacks = (0..plan.rollbacks)
            .map(|_| compare::rollback(&bed, &mut setups, kind, GREEN_BP))
            .collect::<Result<Vec<_>, _>>()?;
        setups.set_green(&bed, kind, GREEN_BP)?;
        let broken = compare::broken_across_changes(
            &bed,
            &mut setups,
            kind,
            plan.established,
            plan.changes,
        )?;
        setups.leave(&mut bed, kind)?;
        splitting.push((
            kind,
            Splitting {
                green,
                rollbacks,
                broken,
            },
        ));
    }
    Ok(report(&plan, &runs, &splitting))
}

/// Where `kind` is in `Kind::ALL`.
fn at(kind: Kind) -> usize {
    Kind::ALL.iter().position(|k| *k == kind).unwrap_or(0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn report(plan: &Plan, runs: &Runs, splitting: &[(Kind, Splitting)]) -> String {
    let direct = at(Kind::Direct);
    // Median over rounds of a value (direct's over all its runs).
    let value = |k: usize, m: usize, f: &dyn Fn(&Run) -> f64| {
        if k == direct {
            median(runs.direct[m].iter().map(f).collect())
        } else {
            median(runs.bracketed[k][m].iter().map(|b| f(&b.run)).collect())
        }
    };
    // Each round's ratio to the direct runs either side; for direct itself, the same of each
    // of its runs that has direct runs of its round either side (the method against itself).
    let ratios = |k: usize, m: usize, f: &dyn Fn(&Run) -> f64| -> Vec<f64> {
        if k != direct {
            return runs.bracketed[k][m].iter().map(|b| b.ratio(f)).collect();
        }
        runs.direct[m]
            .chunks(DIRECT_PER_ROUND)
            .flat_map(|round| {
                round.windows(3).map(|w| {
                    Bracketed {
                        run: w[1],
                        before: w[0],
                        after: w[2],
                    }
                    .ratio(f)
                })
            })
            .collect()
    };
    let ratio = |k: usize, m: usize, f: &dyn Fn(&Run) -> f64| median(ratios(k, m, f));
    // The median ratio and how far the rounds' ratios spread: a target missed by less than
    // the spread is missed by this run's noise as much as by the path.
    let with_spread = |k: usize, m: usize, f: &dyn Fn(&Run) -> f64| -> (f64, String) {
        let each = ratios(k, m, f);
        let low = each.iter().copied().fold(f64::INFINITY, f64::min);
        let high = each.iter().copied().fold(0.0, f64::max);
        (median(each), format!("rounds {low:.3}–{high:.3}"))
    };
    let rps = |r: &Run| r.report.requests_per_second;
    let p50 = |r: &Run| ms(r.report.p50);
    let p99 = |r: &Run| ms(r.report.p99);
    let cpu = |r: &Run| r.cpu_per_request_us();

    let mut out = String::new();
    let _ = writeln!(out, "\n### Splitter beside direct, nftables and HAProxy\n");
    let _ = writeln!(
        out,
        "One test bed (client, node, blue and green in network namespaces joined by veth pairs; the node forwards), the same two backends, green at {}% where the setup splits: **direct** (the client talks to blue's address), **XDP_PASS only** (direct, with a program that only returns XDP_PASS attached where and as Splitter attaches: the floor of any XDP program there), **direct** goes through the node's ordinary IP forwarding; **splitter** (XDP ingress and TC egress on the node's client-facing interface, `xdp_mode = \"auto\"`, which is generic mode on veth, with the fast path both ways: requests redirected at XDP, replies at the backends' devices once the daemon has attached the reply program there, which each run waits for), **splitter, native XDP** (the same with `xdp_mode = \"native\"`, where veth devices take no redirect, so both directions take the node's forwarding path), **nftables** (DNAT with `numgen random mod 10000` mapped to the backends, conntrack; a share change is an atomic `nft -f` replace of the chain), **HAProxy** (Debian's, TCP mode, roundrobin over two weighted servers; a share change is `set weight` on its runtime socket). Only the setup being measured is in the packet path (nftables' table and Splitter's programs are removed between their turns).\n",
        f64::from(GREEN_BP) / 100.0
    );
    let _ = writeln!(
        out,
        "wrk: 2 threads, 32 connections (the client reuses ports in TIME_WAIT, `tcp_tw_reuse = 1`, and each setup has its own ephemeral port range, so one setup's TIME_WAIT never meets another's connections), {} s per run, keep-alive and one request per connection (`Connection: close`); {} round(s), each running every other setup once (each round starting with the next one), each between two runs of direct; a setup's ratios to direct are taken to the mean of the direct runs either side of it, so that the host's drift over a round cancels, and the table gives medians over rounds. The client, the node and the backends share the machine's cores, so these are whole-path numbers; CPU is the machine's busy time (from /proc/stat) over a run divided by the requests it completed. Direct's row: its values and errors over all its runs (one more per round than the other setups' together); its ratios are the method against itself, each direct run that has direct runs of its round either side taken to their mean: how far this method reads apart runs of one setup (wider than for a setup's runs, whose direct runs are adjacent, where these are one other setup's run away on each side).\n",
        plan.duration.as_secs(),
        plan.rounds
    );
    let _ = writeln!(
        out,
        "| setup | connections | req/s | × direct | p50 ms | p99 ms | p99 × direct | errors | CPU µs/req |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for (k, kind) in Kind::ALL.into_iter().enumerate() {
        for (m, mode) in MODES.into_iter().enumerate() {
            let errors: u64 = if k == direct {
                runs.direct[m].iter().map(|r| r.report.errors).sum()
            } else {
                runs.bracketed[k][m]
                    .iter()
                    .map(|b| b.run.report.errors)
                    .sum()
            };
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {:.3} | {:.3} | {:.3} | {:.3} | {errors} | {:.1} |",
                kind.name(),
                match mode {
                    Connections::KeepAlive => "keep-alive",
                    Connections::Short => "one request each",
                },
                value(k, m, &rps),
                ratio(k, m, &rps),
                value(k, m, &p50),
                value(k, m, &p99),
                ratio(k, m, &p99),
                value(k, m, &cpu),
            );
        }
    }

    let _ = writeln!(
        out,
        "\nSplitting and rolling back: the share of {} new connections (sequential, from the client); rollbacks (green {}% → 0) by each setup's own command run as a new process, the way an operator runs it (spawned as a shell spawns one, with posix_spawn: no fork of the benchmark's own, much larger, process): `splitter-ctl rollback sentiment --wait-ms 0` (which also asks the daemon to drain green's connections and journals the change), `nft -f` with the chain replaced, and HAProxy's `set weight` sent through `socat` to its runtime socket; timed from the process's start to the change in effect (Splitter: its map write, journaled on CLOCK_MONOTONIC; nftables and HAProxy: their exit) and to its exit, {} rollbacks each, each checked by 100 new connections that must all reach blue (a rollback that did nothing would pass 3·10⁻⁵ of the time); {} keep-alive connections that each send a request after every one of {} share changes (green 50% / 10% in turn), broken when a request fails or is answered by the other version. Splitter's write on a map already open, inside a process, is the \"Rollback write\" table above.\n",
        plan.accuracy_connections,
        f64::from(GREEN_BP) / 100.0,
        plan.rollbacks,
        plan.established,
        plan.changes
    );
    let _ = writeln!(
        out,
        "| setup | green share | rollback: start → in effect (median / max) | rollback: start → exit (median / max) | broken established connections |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|");
    let spread = |v: Vec<Duration>| {
        let max = v.iter().max().copied().unwrap_or_default();
        let med = median(v.iter().map(|d| d.as_secs_f64()).collect());
        (Duration::from_secs_f64(med), max)
    };
    let fmt = |d: Duration| {
        if d < Duration::from_millis(1) {
            format!("{:.1} µs", d.as_secs_f64() * 1e6)
        } else {
            format!("{:.2} ms", ms(d))
        }
    };
    for (kind, s) in splitting {
        let (cmd_med, cmd_max) = spread(s.rollbacks.iter().map(|r| r.command).collect());
        let (effect_med, effect_max) = spread(s.rollbacks.iter().map(|r| r.to_effect).collect());
        let total = (s.green[0] + s.green[1]).max(1);
        let _ = writeln!(
            out,
            "| {} | {:.1}% | {} / {} | {} / {} | {} of {} |",
            kind.name(),
            s.green[1] as f64 * 100.0 / total as f64,
            fmt(effect_med),
            fmt(effect_max),
            fmt(cmd_med),
            fmt(cmd_max),
            s.broken,
            plan.established
        );
    }

    if let Some((_, s)) = splitting.iter().find(|(k, _)| *k == Kind::Splitter) {
        let phases: Vec<[Duration; 4]> = s.rollbacks.iter().filter_map(|r| r.phases).collect();
        let at = |i: usize| {
            fmt(Duration::from_secs_f64(median(
                phases.iter().map(|p| p[i].as_secs_f64()).collect(),
            )))
        };
        if !phases.is_empty() {
            let _ = writeln!(
                out,
                "\nWhere `splitter-ctl rollback`'s time to its write goes (medians, from the process's start): the process started and reached its work (exec, the dynamic loader, clap) at {}; the config read and the service found at {}; the pinned maps opened at {}; the split lock taken at {}; the map written at {}. After the write it journals the change (SQLite), asks the daemon to drain green's connections over the control socket, and prints: the rest of start → exit.",
                at(0),
                at(1),
                at(2),
                at(3),
                fmt(Duration::from_secs_f64(median(
                    s.rollbacks
                        .iter()
                        .map(|r| r.to_effect.as_secs_f64())
                        .collect()
                )))
            );
        }
    }
    let _ = writeln!(out, "\nTargets, measured as ratios in this run:\n");
    let s = at(Kind::Splitter);
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    for (m, mode) in MODES.into_iter().enumerate() {
        let name = match mode {
            Connections::KeepAlive => "keep-alive",
            Connections::Short => "one request per connection",
        };
        let (throughput, throughput_spread) = with_spread(s, m, &rps);
        let (tail, tail_spread) = with_spread(s, m, &p99);
        let (spent, spent_spread) = with_spread(s, m, &cpu);
        let _ = writeln!(
            out,
            "- {name}: splitter throughput ≥ 1.0 × direct (the node's routed path; stretch 1.1×): **{}** ({throughput:.3}×; {throughput_spread}); splitter p99 ≤ 1.0 × direct p99: **{}** ({tail:.3}×; {tail_spread}); CPU per request ≤ direct's: **{}** ({spent:.3}×; {spent_spread})",
            verdict(throughput >= 1.0),
            verdict(tail <= 1.0),
            verdict(spent <= 1.0)
        );
        for other in [Kind::Nftables, Kind::Haproxy] {
            let o = at(other);
            // Within each round: the two setups' ratios to their own direct runs.
            let versus = |f: &dyn Fn(&Run) -> f64| {
                median(
                    runs.bracketed[s][m]
                        .iter()
                        .zip(&runs.bracketed[o][m])
                        .map(|(a, b)| a.ratio(f) / b.ratio(f))
                        .collect(),
                )
            };
            let (rps_ratio, p99_ratio) = (versus(&rps), versus(&p99));
            let _ = writeln!(
                out,
                "- {name}: splitter ahead of {} on throughput and p99: **{}** (throughput {rps_ratio:.3}×, p99 {p99_ratio:.3}× {}'s, medians of the ratios within each round)",
                other.name(),
                verdict(rps_ratio > 1.0 && p99_ratio < 1.0),
                other.name(),
            );
        }
    }
    if let Some((_, s)) = splitting.iter().find(|(k, _)| *k == Kind::Splitter) {
        let effect = |kind: Kind| {
            splitting.iter().find(|(k, _)| *k == kind).map(|(_, s)| {
                median(
                    s.rollbacks
                        .iter()
                        .map(|r| r.to_effect.as_secs_f64())
                        .collect(),
                )
            })
        };
        let ours = effect(Kind::Splitter).unwrap_or(f64::MAX);
        for other in [Kind::Nftables, Kind::Haproxy] {
            if let Some(theirs) = effect(other) {
                let _ = writeln!(
                    out,
                    "- the rollback command in effect sooner than {}'s: **{}** (medians: {} against {}, {:.2}×)",
                    other.name(),
                    verdict(ours < theirs),
                    fmt(Duration::from_secs_f64(ours)),
                    fmt(Duration::from_secs_f64(theirs)),
                    ours / theirs
                );
            }
        }
        let _ = writeln!(
            out,
            "- zero broken established connections: **{}** ({} of {})",
            verdict(s.broken == 0),
            s.broken,
            plan.established
        );
    }
    out
}
