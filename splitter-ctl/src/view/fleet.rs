//! The fleet as `status` shows it: each release's desired split, and each node's applied
//! revision, lag, kernel share and whether it is alive. Built from what etcd holds (the
//! desired splits, the members and the reports under live leases); no I/O here.

use std::collections::BTreeMap;

use serde::Serialize;
use splitter_common::{SplitWord, Version};

use crate::{
    engine::fleet::lag,
    model::{
        fleet::{Desired, Member, NodeReport, version_named},
        fleet_rollout::{FleetRollout, State},
        share::{format_percent, percent_of},
    },
};

/// What etcd holds, read in one pass: values by key suffix (release or node), each with its
/// revision; values that do not read are kept with why.
#[derive(Debug, Default)]
pub struct Read {
    pub desired: Vec<(String, i64, Result<Desired, String>)>,
    pub members: Vec<Result<Member, String>>,
    pub reports: Vec<Result<NodeReport, String>>,
    /// The fleet rollouts, by release.
    pub rollouts: Vec<(String, Result<FleetRollout, String>)>,
    /// The node that holds the coordinator's key.
    pub coordinator: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct FleetView {
    /// The node this command runs on.
    pub this_node: String,
    /// The node that coordinates the fleet's rollouts (`None`: no daemon holds the key).
    pub coordinator: Option<String>,
    pub releases: Vec<ReleaseView>,
    /// Values in etcd this build cannot read (a newer schema, say), by what they are.
    pub unreadable: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct ReleaseView {
    pub release: String,
    /// `None`: no node has set a split for it in the fleet yet.
    pub desired: Option<DesiredView>,
    /// Its fleet rollout, while one runs or is paused.
    pub rollout: Option<RolloutView>,
    pub nodes: Vec<NodeView>,
}

/// A fleet rollout in progress, as `status` shows it (`rollout status` has the whole record).
#[derive(Debug, Serialize)]
pub struct RolloutView {
    pub candidate: String,
    /// 1-based.
    pub step: usize,
    pub steps: usize,
    /// `running`, or why it is paused.
    pub state: String,
    pub last_judgement: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct DesiredView {
    pub revision: i64,
    pub live: String,
    pub green_percent: f64,
    pub cause: String,
    pub node: String,
    pub actor: String,
    pub decided_at_ms: i64,
}

#[derive(Debug, Serialize)]
pub struct NodeView {
    pub node: String,
    /// Its report is under a live lease: its daemon follows etcd now.
    pub alive: bool,
    /// The desired revision it applied (0: none), and how many etcd revisions that is behind
    /// the desired one (0: level); `None` for a node that does not report (not alive).
    pub revision: Option<i64>,
    pub lag: Option<i64>,
    /// Its kernel's word when it last reported.
    pub live: Option<String>,
    pub green_percent: Option<f64>,
    /// Its kernel differs from the desired split (changed on that node alone).
    pub differs: bool,
    /// Why it refused the desired split, when it did.
    pub refused: Option<String>,
    /// When it last reported, or began its last session (ms since the epoch).
    pub seen_at_ms: Option<i64>,
}

fn green(word: SplitWord) -> f64 {
    percent_of(word.share_of(Version::Green))
}

/// A share in percent as `format_percent` writes it (`30`, `0.5`).
fn shown(percent: f64) -> String {
    format_percent((percent * 100.0).round() as u16)
}

/// The view of `read`, for `this_node`.
#[must_use]
pub fn view(this_node: &str, read: Read) -> FleetView {
    let mut unreadable = Vec::new();
    let mut desired: BTreeMap<String, (i64, Desired)> = BTreeMap::new();
    let mut releases: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    for (release, revision, value) in read.desired {
        releases.insert(release.clone());
        match value {
            Ok(d) => {
                desired.insert(release, (revision, d));
            }
            Err(why) => unreadable.push(format!("the desired split of {release}: {why}")),
        }
    }
    let mut reports: BTreeMap<String, NodeReport> = BTreeMap::new();
    for report in read.reports {
        match report {
            Ok(r) => {
                releases.extend(r.applied.keys().cloned());
                reports.insert(r.node.clone(), r);
            }
            Err(why) => unreadable.push(format!("a node's report: {why}")),
        }
    }
    let mut members: BTreeMap<String, i64> = BTreeMap::new();
    for member in read.members {
        match member {
            Ok(m) => {
                members.insert(m.node, m.session_at_ms);
            }
            Err(why) => unreadable.push(format!("a member: {why}")),
        }
    }
    let mut rollouts: BTreeMap<String, RolloutView> = BTreeMap::new();
    for (release, rollout) in read.rollouts {
        match rollout {
            Ok(r) if !r.state.ended() => {
                releases.insert(release.clone());
                rollouts.insert(
                    release,
                    RolloutView {
                        candidate: r.candidate,
                        step: r.step + 1,
                        steps: r.steps_bp.len(),
                        state: match r.state {
                            State::Paused(why) => format!("PAUSED ({why})"),
                            _ => "running".to_owned(),
                        },
                        last_judgement: r.last.map(|l| l.judgement),
                    },
                );
            }
            Ok(_) => {}
            Err(why) => unreadable.push(format!("the fleet rollout of {release}: {why}")),
        }
    }
    let nodes: std::collections::BTreeSet<&String> = members.keys().chain(reports.keys()).collect();
    let releases = releases
        .into_iter()
        .map(|release| {
            let wanted = desired.get(&release);
            let wanted_word = wanted.and_then(|(_, d)| d.word().ok());
            let nodes = nodes
                .iter()
                .map(|node| {
                    let report = reports.get(*node);
                    let applied = report.and_then(|r| r.applied.get(&release));
                    let kernel = applied.and_then(|a| {
                        version_named(&a.kernel_live)
                            .map(|v| SplitWord::new(v, a.kernel_candidate_bp))
                    });
                    let revision = report.map(|_| applied.map_or(0, |a| a.revision));
                    NodeView {
                        node: (*node).clone(),
                        alive: report.is_some(),
                        revision,
                        lag: revision.map(|applied| wanted.map_or(0, |(r, _)| lag(*r, applied))),
                        live: kernel.map(|w| w.live().name().to_owned()),
                        green_percent: kernel.map(green),
                        differs: matches!((kernel, wanted_word), (Some(k), Some(w)) if k != w),
                        refused: report.and_then(|r| r.refused.get(&release).cloned()),
                        seen_at_ms: report
                            .map(|r| r.at_ms)
                            .or_else(|| members.get(*node).copied()),
                    }
                })
                .collect();
            ReleaseView {
                desired: wanted.and_then(|(revision, d)| {
                    Some(DesiredView {
                        revision: *revision,
                        live: d.live.clone(),
                        green_percent: green(d.word().ok()?),
                        cause: d.cause.name().to_owned(),
                        node: d.node.clone(),
                        actor: d.actor.clone(),
                        decided_at_ms: d.decided_at_ms,
                    })
                }),
                rollout: rollouts.remove(&release),
                release,
                nodes,
            }
        })
        .collect();
    FleetView {
        this_node: this_node.to_owned(),
        coordinator: read.coordinator,
        releases,
        unreadable,
    }
}

impl FleetView {
    /// The text `status` prints after this node's own status.
    #[must_use]
    pub fn render(&self, now_ms: i64) -> String {
        let mut out = format!(
            "fleet (this node: {}; coordinator of rollouts: {})\n",
            self.this_node,
            self.coordinator.as_deref().unwrap_or("none")
        );
        if self.releases.is_empty() {
            out.push_str("  no release has a split in the fleet yet, and no node reports\n");
        }
        for release in &self.releases {
            match &release.desired {
                Some(d) => out.push_str(&format!(
                    "  {}: desired green {}% (live {}) at revision {}: {} by {} on {}, {} s ago\n",
                    release.release,
                    shown(d.green_percent),
                    d.live,
                    d.revision,
                    d.cause,
                    d.actor,
                    d.node,
                    (now_ms - d.decided_at_ms).max(0) / 1_000,
                )),
                None => out.push_str(&format!(
                    "  {}: no desired split in the fleet; each node keeps its own\n",
                    release.release
                )),
            }
            if let Some(r) = &release.rollout {
                out.push_str(&format!(
                    "    rollout of {}: step {} of {}, {}; last judgement: {}\n",
                    r.candidate,
                    r.step,
                    r.steps,
                    r.state,
                    r.last_judgement.as_deref().unwrap_or("none yet"),
                ));
            }
            out.push_str("    node                 alive  revision  lag  kernel\n");
            for node in &release.nodes {
                let kernel = match (&node.live, node.green_percent) {
                    (Some(live), Some(g)) => format!(
                        "green {}% (live {live}){}",
                        shown(g),
                        if node.differs {
                            ", differs from the desired split"
                        } else {
                            ""
                        }
                    ),
                    _ => "-".to_owned(),
                };
                let seen = node.seen_at_ms.map_or_else(String::new, |at| {
                    if node.alive {
                        String::new()
                    } else {
                        format!(
                            " (silent; last session {} s ago)",
                            (now_ms - at).max(0) / 1_000
                        )
                    }
                });
                let refused = node
                    .refused
                    .as_ref()
                    .map_or_else(String::new, |why| format!("; REFUSED: {why}"));
                let shown = |n: Option<i64>| n.map_or_else(|| "-".to_owned(), |n| n.to_string());
                out.push_str(&format!(
                    "    {:<20} {:<6} {:<9} {:<4} {kernel}{seen}{refused}\n",
                    node.node,
                    if node.alive { "yes" } else { "NO" },
                    shown(node.revision),
                    shown(node.lag),
                ));
            }
        }
        for problem in &self.unreadable {
            out.push_str(&format!("  unreadable: {problem}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fleet::{Applied, Cause, SCHEMA};

    fn report(node: &str, revision: i64, green_bp: u16) -> NodeReport {
        NodeReport {
            schema: SCHEMA,
            node: node.to_owned(),
            at_ms: 1_000,
            applied: [(
                "model".to_owned(),
                Applied {
                    revision,
                    kernel_live: "blue".into(),
                    kernel_candidate_bp: green_bp,
                    evidence: Vec::new(),
                },
            )]
            .into(),
            refused: BTreeMap::new(),
            serves: vec!["model".to_owned()],
        }
    }

    #[test]
    fn each_node_shows_its_lag_its_kernel_and_whether_it_is_alive() {
        let desired = Desired::new(
            SplitWord::new(Version::Blue, 3_000),
            Cause::Weight,
            "n1",
            "root (uid 0)",
            500,
        );
        let read = Read {
            desired: vec![("model".into(), 12, Ok(desired))],
            members: ["n1", "n2", "n3"]
                .iter()
                .map(|n| {
                    Ok(Member {
                        schema: SCHEMA,
                        node: (*n).to_owned(),
                        session_at_ms: 100,
                    })
                })
                .collect(),
            reports: vec![Ok(report("n1", 12, 3_000)), Ok(report("n2", 9, 1_000))],
            rollouts: vec![
                ("model".into(), Ok(rollout(State::Running))),
                ("done".into(), Ok(rollout(State::Promoted))),
            ],
            coordinator: Some("n2".into()),
        };
        let view = view("n1", read);
        assert!(
            view.releases.iter().all(|r| r.release != "done"),
            "an ended rollout is not shown"
        );
        let nodes = &view.releases[0].nodes;
        assert_eq!(
            nodes
                .iter()
                .map(|n| (n.node.as_str(), n.alive, n.lag, n.differs))
                .collect::<Vec<_>>(),
            vec![
                ("n1", true, Some(0), false),
                ("n2", true, Some(3), true),
                ("n3", false, None, false)
            ]
        );
        let text = view.render(10_500);
        assert!(text.contains("model: desired green 30% (live blue) at revision 12: weight by root (uid 0) on n1, 10 s ago"), "{text}");
        assert!(
            text.contains("n3                   NO     -         -"),
            "{text}"
        );
        assert!(text.contains("silent; last session 10 s ago"), "{text}");
        assert!(
            text.starts_with("fleet (this node: n1; coordinator of rollouts: n2)"),
            "{text}"
        );
        assert!(
            text.contains("rollout of green: step 2 of 3, running; last judgement: pass"),
            "{text}"
        );
    }

    fn rollout(state: State) -> FleetRollout {
        let wrote = Desired::new(
            SplitWord::new(Version::Blue, 3_000),
            Cause::Weight,
            "n2",
            "gates",
            400,
        );
        FleetRollout {
            schema: SCHEMA,
            release: "model".into(),
            candidate: "green".into(),
            request: crate::model::plan::PlanRequest::default(),
            steps_bp: vec![1_000, 3_000, 10_000],
            step: 1,
            state,
            salt: None,
            started_by: "root".into(),
            started_on: "n1".into(),
            started_at_ms: 100,
            step_started_at_ms: 400,
            wrote,
            consecutive_failures: 0,
            takeovers: Vec::new(),
            last: Some(crate::model::fleet_rollout::LastJudgement {
                judgement: "pass".into(),
                ..Default::default()
            }),
            live_reference: None,
        }
    }

    #[test]
    fn values_that_do_not_read_are_shown_not_dropped() {
        let read = Read {
            desired: vec![("model".into(), 3, Err("schema 2 is newer".into()))],
            ..Read::default()
        };
        let view = view("n1", read);
        assert!(view.releases[0].desired.is_none());
        assert_eq!(view.unreadable.len(), 1);
        assert!(
            view.render(0)
                .contains("unreadable: the desired split of model: schema 2")
        );
    }
}
