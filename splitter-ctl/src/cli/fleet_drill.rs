//! `drill SERVICE` on the fleet (`[fleet]`, without `--local`): a rollback drill of every node
//! at once. The fleet's desired split is rolled back for real (a compare-and-swap, the same
//! write a `rollback` makes, so each node drains the candidate as it would), every node that
//! reports is watched until its report says its kernel holds the rollback, and the split is put
//! back (a compare-and-swap on the drill's own revision: a change made meanwhile is never
//! undone). What it measured goes to this node's journal.

use std::time::{Duration, Instant};

use serde::Serialize;
use splitter_common::SplitWord;

use super::{
    CommandError, Output,
    client::runtime,
    drill::Drilled,
    fleet::{FleetTarget, actor, etcd, note_event, unreachable},
    fleet_rollout::refuse_running,
};
use crate::{
    engine::drill::DRILL_LIMIT,
    io::{
        etcd::{Etcd, EtcdError, Swap},
        fleet as fleet_events,
    },
    model::{
        error::chain,
        fleet::{Cause, Desired, NodeReport},
        share::format_percent,
    },
    store::journal::{EventKind, Journal, NewEvent, now_ms},
};

/// How often the nodes' reports are read during a drill.
const POLL: Duration = Duration::from_millis(20);

/// One node in a fleet drill.
#[derive(Debug, Serialize)]
pub struct NodeDrilled {
    pub node: String,
    /// From the decision until its report showed the rollback in its kernel; `None`: not
    /// within the drill's limit.
    pub applied_ms: Option<f64>,
}

/// What a fleet drill measured.
#[derive(Debug, Serialize)]
pub struct FleetDrill {
    pub service: String,
    pub outcome: String,
    pub revision: i64,
    /// The nodes reporting when the drill began, each with its time.
    pub nodes: Vec<NodeDrilled>,
    /// From the decision until the last node's report showed the rollback.
    pub all_applied_ms: Option<f64>,
    pub restored: bool,
}

fn millis(elapsed: Duration) -> f64 {
    (elapsed.as_secs_f64() * 1e4).round() / 10.0
}

/// The nodes reporting now.
async fn reports(etcd: &Etcd, target: &FleetTarget) -> Result<Vec<NodeReport>, EtcdError> {
    let (_, kvs) = etcd.range_prefix(&target.fleet.nodes_prefix()).await?;
    Ok(kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect())
}

/// A drill under way: the rollback written at `revision`, over `before`.
struct Begun {
    before: SplitWord,
    revision: i64,
    decided: Instant,
    /// The nodes that reported the release when it began.
    watched: Vec<String>,
}

/// Checks that a drill may run, and writes the fleet's rollback.
async fn begin(etcd: &Etcd, target: &FleetTarget, actor: &str) -> Result<Begun, CommandError> {
    let (fleet, release) = (&target.fleet, &target.release);
    let (desired_key, record_key) = (fleet.desired_key(release), fleet.rollout_key(release));
    let (current, record) =
        tokio::try_join!(etcd.get(&desired_key), etcd.get(&record_key)).map_err(unreachable)?;
    refuse_running(record.as_ref(), release)?;
    let nothing = |why: &str| CommandError::NothingToRollBack {
        service: release.clone(),
        why: why.to_owned(),
    };
    let current =
        current.ok_or_else(|| nothing("the fleet holds no split of it (`weight` sets one)"))?;
    let before = Desired::parse(&current.value)
        .and_then(|d| d.word())
        .map_err(|error| CommandError::Fleet(format!("the desired split in etcd: {error}")))?;
    if before.candidate_share_bp() == 0 {
        return Err(nothing(
            "the fleet sends no new connection to its candidate",
        ));
    }
    let watched = reports(etcd, target)
        .await
        .map_err(unreachable)?
        .into_iter()
        .filter(|r| r.applied.contains_key(release.as_str()))
        .map(|r| r.node)
        .collect();
    let decided = Instant::now();
    let rollback = Desired::new(
        SplitWord::new(before.live(), 0),
        Cause::Rollback,
        &fleet.node,
        &format!("{actor} (drill)"),
        now_ms(),
    );
    match etcd
        .put_if(&desired_key, &rollback.to_json(), current.mod_revision)
        .await
        .map_err(unreachable)?
    {
        Swap::Written(revision) => {
            note_event(
                fleet_events::record(etcd, fleet, release, revision, &rollback, false).await,
            );
            Ok(Begun {
                before,
                revision,
                decided,
                watched,
            })
        }
        Swap::Lost(_) => Err(CommandError::FleetRaced {
            release: release.clone(),
            now: "it moved as the drill began".to_owned(),
        }),
    }
}

/// Each watched node, with the time until its report showed the rollback in its kernel, read
/// every `POLL` until all have or `DRILL_LIMIT` has passed. An interrupt (Ctrl-C) ends the
/// watching early: the split is put back all the same.
async fn watch(etcd: &Etcd, target: &FleetTarget, begun: &Begun) -> Vec<NodeDrilled> {
    let release = target.release.as_str();
    let rolled_back = SplitWord::new(begun.before.live(), 0);
    let mut nodes: Vec<NodeDrilled> = begun
        .watched
        .iter()
        .map(|node| NodeDrilled {
            node: node.clone(),
            applied_ms: None,
        })
        .collect();
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    while nodes.iter().any(|n| n.applied_ms.is_none()) && begun.decided.elapsed() < DRILL_LIMIT {
        if let Ok(now) = reports(etcd, target).await {
            let elapsed = millis(begun.decided.elapsed());
            for report in now {
                let applied = report.applied.get(release).is_some_and(|a| {
                    a.revision >= begun.revision
                        && a.kernel_live == rolled_back.live().name()
                        && a.kernel_candidate_bp == 0
                });
                if let Some(node) = nodes
                    .iter_mut()
                    .find(|n| n.node == report.node && n.applied_ms.is_none())
                    && applied
                {
                    node.applied_ms = Some(elapsed);
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            _ = &mut interrupted => {
                eprintln!("fleet drill: interrupted; putting the split back");
                break;
            }
        }
    }
    nodes
}

/// Puts the split back, unless someone moved it since the drill's rollback.
async fn restore(etcd: &Etcd, target: &FleetTarget, begun: &Begun, actor: &str) -> bool {
    let (fleet, release) = (&target.fleet, &target.release);
    let restore = Desired::new(
        begun.before,
        Cause::Weight,
        &fleet.node,
        &format!("{actor} (drill, restored)"),
        now_ms(),
    );
    match etcd
        .put_if(
            &fleet.desired_key(release),
            &restore.to_json(),
            begun.revision,
        )
        .await
    {
        Ok(Swap::Written(restored)) => {
            note_event(fleet_events::record(etcd, fleet, release, restored, &restore, false).await);
            true
        }
        Ok(Swap::Lost(_)) => false,
        Err(error) => {
            eprintln!(
                "fleet: the drill's split cannot be put back ({}): the fleet stays rolled back; `splitter-ctl weight {release} {} {}` puts it back",
                chain(&error),
                begun.before.live().other().name(),
                format_percent(begun.before.candidate_share_bp())
            );
            false
        }
    }
}

/// Runs a rollback drill of the whole fleet; what it measured, and whether it passed.
pub fn run(target: &FleetTarget, output: Output) -> Result<Drilled, CommandError> {
    let etcd = etcd(&target.fleet)?;
    let actor = actor();
    let drill = runtime()?.block_on(async {
        let begun = begin(&etcd, target, &actor).await?;
        let nodes = watch(&etcd, target, &begun).await;
        let restored = restore(&etcd, target, &begun, &actor).await;
        let late: Vec<&str> = nodes
            .iter()
            .filter(|n| n.applied_ms.is_none())
            .map(|n| n.node.as_str())
            .collect();
        let outcome = if !late.is_empty() {
            format!(
                "failed: {} did not show the rollback within {} ms",
                late.join(", "),
                DRILL_LIMIT.as_millis()
            )
        } else if !restored {
            "passed, not restored: the split was changed during the drill".to_owned()
        } else {
            "passed".to_owned()
        };
        let all_applied_ms = if late.is_empty() {
            nodes.iter().filter_map(|n| n.applied_ms).reduce(f64::max)
        } else {
            None
        };
        Ok::<_, CommandError>(FleetDrill {
            service: target.release.clone(),
            outcome,
            revision: begun.revision,
            nodes,
            all_applied_ms,
            restored,
        })
    })?;
    journal(target, &drill);
    let not_passed = (!drill.outcome.starts_with("passed")).then(|| drill.outcome.clone());
    let text = match output {
        Output::Json => serde_json::to_string_pretty(&drill)? + "\n",
        Output::Text => describe(&drill),
    };
    Ok(Drilled { text, not_passed })
}

fn journal(target: &FleetTarget, drill: &FleetDrill) {
    let journaled = Journal::open(&target.state_dir).and_then(|journal| {
        journal.record(&NewEvent {
            reason: Some(drill.outcome.clone()),
            details: serde_json::json!({ "fleet": drill }),
            ..NewEvent::new(&drill.service, EventKind::Drill, &actor())
        })
    });
    if let Err(error) = journaled {
        eprintln!(
            "warning: the drill is done but not in the journal: {}",
            chain(&error)
        );
    }
}

fn describe(drill: &FleetDrill) -> String {
    let mut text = format!(
        "fleet drill of {}: {}\n  rolled back at revision {}; every node's kernel within: {}\n",
        drill.service,
        drill.outcome,
        drill.revision,
        drill
            .all_applied_ms
            .map_or_else(|| "-".to_owned(), |ms| format!("{ms} ms")),
    );
    for node in &drill.nodes {
        text += &format!(
            "  node {}: {}\n",
            node.node,
            node.applied_ms.map_or_else(
                || "NOT within the limit".to_owned(),
                |ms| format!("{ms} ms")
            )
        );
    }
    text += &format!(
        "  restored: {}\n",
        if drill.restored { "yes" } else { "no" }
    );
    text
}
