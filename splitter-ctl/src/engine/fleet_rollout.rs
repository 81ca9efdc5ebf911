//! The coordinator's judgement of a fleet rollout, with no I/O: the windows of every node
//! merged (histograms summed bucket by bucket) and each node alone, so that one bad host is
//! seen even when the others' traffic dilutes it in the sum; and the holds a fleet adds: a
//! node that stops reporting, or has not applied the step, makes the rollout hold. A failing
//! window still rolls back while a node is missing (a rollback is safe whatever the others
//! say); a passing one never promotes with a node missing.

use std::collections::BTreeMap;

use splitter_common::{Histogram, SplitWord, Version};

use crate::{
    engine::gates::{
        Carried, GateReading, GateState, Judgement, Window, kernel_gates, live_reference,
    },
    model::{
        fleet::{Evidence, NodeReport, RecordError, Sparse},
        plan::Gates,
    },
};

/// What a version served on one node, cumulative (its report's evidence).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counts {
    pub requests: u64,
    pub errors: u64,
    pub latency: Histogram,
}

impl Counts {
    /// A report's evidence; a histogram this build cannot read is refused.
    pub fn of(evidence: &Evidence) -> Result<Self, RecordError> {
        Ok(Self {
            requests: evidence.requests,
            errors: evidence.errors,
            latency: evidence.latency.histogram()?,
        })
    }

    /// Whether these counts are below `base`: the node's data plane was created again (a
    /// reboot) and counts from zero.
    #[must_use]
    pub const fn went_back(&self, base: &Self) -> bool {
        self.requests < base.requests
            || self.errors < base.errors
            || self.latency.count < base.latency.count
    }

    /// The window from `base` to these counts; everything counted, when they went back.
    #[must_use]
    pub fn since(&self, base: &Self) -> Window {
        let base = if self.went_back(base) {
            &Self::default()
        } else {
            base
        };
        Window {
            requests: self.requests - base.requests,
            errors: self.errors - base.errors,
            latency: self.latency.since(&base.latency),
        }
    }
}

/// A window kept in a record (the live pool's reference).
#[must_use]
pub fn to_evidence(window: &Window, version: &str) -> Evidence {
    Evidence {
        version: version.to_owned(),
        requests: window.requests,
        errors: window.errors,
        latency: Sparse::of(&window.latency),
    }
}

/// A window from a record; `None` when it does not read.
#[must_use]
pub fn from_evidence(evidence: &Evidence) -> Option<Window> {
    let counts = Counts::of(evidence).ok()?;
    Some(Window {
        requests: counts.requests,
        errors: counts.errors,
        latency: counts.latency,
    })
}

/// A node's counts where its window starts, and the desired revision it had applied then.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Base {
    pub revision: i64,
    pub candidate: Counts,
    pub live: Counts,
}

/// What the coordinator knows of the fleet at one judgement of `release`'s rollout.
#[derive(Clone, Copy, Debug)]
pub struct Seen<'a> {
    pub release: &'a str,
    /// The nodes listed as members (a record that does not read is `Err` with its key).
    pub members: &'a [Result<String, String>],
    /// The reports of the nodes whose lease is alive, by node.
    pub reports: &'a BTreeMap<String, NodeReport>,
    /// The desired split's revision, and its word.
    pub revision: i64,
    pub word: SplitWord,
    pub candidate: Version,
}

/// Each member's window of the current step, and why the evidence is incomplete (each a
/// reason to hold). A node's window starts at its first report at the current revision
/// (`bases`, kept by the caller between judgements), and at zero when its counters went back.
/// A node whose config does not serve the release is not judged; every other member that is
/// silent, refused the split, is behind it, holds another split (changed there alone) or
/// reports no evidence this build reads holds the rollout.
#[must_use]
pub fn node_windows(
    fleet: &Seen<'_>,
    bases: &mut BTreeMap<String, Base>,
) -> (Vec<NodeWindows>, Vec<String>) {
    let (release, revision, word) = (fleet.release, fleet.revision, fleet.word);
    let mut held = Vec::new();
    let mut windows = Vec::new();
    for member in fleet.members {
        let node = match member {
            Ok(node) => node,
            Err(key) => {
                held.push(format!("the member record {key} cannot be read"));
                continue;
            }
        };
        let Some(report) = fleet.reports.get(node) else {
            held.push(format!(
                "node {node} is not reporting: its lease lapsed (down, or cut off from etcd)"
            ));
            continue;
        };
        if !report.serves.iter().any(|r| r == release) {
            continue;
        }
        if let Some(why) = report.refused.get(release) {
            held.push(format!("node {node} refused the fleet's split: {why}"));
            continue;
        }
        let Some(applied) = report.applied.get(release) else {
            held.push(format!(
                "node {node} serves {release} but reports nothing of it (its data plane lacks it)"
            ));
            continue;
        };
        if applied.revision < revision {
            held.push(format!(
                "node {node} has not applied revision {revision} yet"
            ));
            continue;
        }
        if (applied.kernel_live.as_str(), applied.kernel_candidate_bp)
            != (word.live().name(), word.candidate_share_bp())
        {
            held.push(format!(
                "node {node}'s kernel does not hold the fleet's split (changed there alone)"
            ));
            continue;
        }
        let counts = |version: Version| {
            applied
                .evidence
                .iter()
                .find(|e| e.version == version.name())
                .and_then(|e| Counts::of(e).ok())
        };
        let (Some(candidate), Some(live)) =
            (counts(fleet.candidate), counts(fleet.candidate.other()))
        else {
            held.push(format!("node {node} reports no evidence this build reads"));
            continue;
        };
        let base = bases.entry(node.clone()).or_default();
        if base.revision < revision {
            *base = Base {
                revision,
                candidate: candidate.clone(),
                live: live.clone(),
            };
        }
        // Counters that went back count from zero from now on, not from the old base.
        if candidate.went_back(&base.candidate) {
            base.candidate = Counts::default();
        }
        if live.went_back(&base.live) {
            base.live = Counts::default();
        }
        windows.push(NodeWindows {
            node: node.clone(),
            candidate: candidate.since(&base.candidate),
            live: live.since(&base.live),
        });
    }
    (windows, held)
}

/// One node's windows of the current step.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeWindows {
    pub node: String,
    pub candidate: Window,
    pub live: Window,
}

/// The judgement of one interval, with the readings it folds and the live reference to keep.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub judgement: Judgement,
    pub readings: Vec<GateReading>,
    pub reference: Option<Window>,
}

fn sum(windows: impl Iterator<Item = Window>) -> Window {
    windows.fold(Window::default(), |total, w| Window {
        requests: total.requests + w.requests,
        errors: total.errors + w.errors,
        latency: total.latency.add(&w.latency),
    })
}

/// Judges the fleet: the kernel gates over every node's windows merged, and over each node's
/// alone (a failure there fails the rollout, named after the node), the false-alarm budget
/// shared among them; `held` says why the evidence is incomplete (a node silent, or behind the
/// step), each a reason to hold. `reference` is the live pool's last merged window with
/// enough requests.
#[must_use]
pub fn judge(
    gates: &Gates,
    nodes: &[NodeWindows],
    held: &[String],
    reference: Option<&Window>,
) -> Verdict {
    let candidate = sum(nodes.iter().map(|n| n.candidate));
    let live = sum(nodes.iter().map(|n| n.live));
    let alone = if nodes.len() > 1 { nodes.len() } else { 0 };
    let gates = gates.sharing_budget(alone + 1);
    let none = Carried::new();
    let mut readings = kernel_gates(&gates, &candidate, &live, reference, &none);
    if alone > 0 {
        for node in nodes {
            // At the last step a node's live pool gets nothing: its candidate is compared with
            // the fleet's live reference, as the sum is.
            let own = kernel_gates(&gates, &node.candidate, &node.live, reference, &none);
            if let Judgement::Fail(reasons) = Judgement::of(&own) {
                readings.push(GateReading {
                    gate: format!("node {}", node.node),
                    limit: "the gates, on this node alone".to_owned(),
                    value: None,
                    state: GateState::Fail(format!("node {}: {}", node.node, reasons.join(", "))),
                    numbers: Vec::new(),
                    evidence: None,
                });
            }
        }
    }
    if nodes.is_empty() && held.is_empty() {
        readings.push(waiting("nodes", "no node reports this release"));
    }
    readings.extend(held.iter().map(|why| waiting("fleet", why)));
    Verdict {
        judgement: Judgement::of(&readings),
        reference: live_reference(&gates, &live, reference).copied(),
        readings,
    }
}

fn waiting(gate: &str, why: &str) -> GateReading {
    GateReading {
        gate: gate.to_owned(),
        limit: "every node reporting the step".to_owned(),
        value: None,
        state: GateState::Waiting(Some(why.to_owned())),
        numbers: Vec::new(),
        evidence: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A window of `requests` with `errors`, each answered in about `ms`.
    fn window(requests: u64, errors: u64, ms: u64) -> Window {
        let mut latency = Histogram::default();
        // Spread a little around `ms`, as real response times are.
        for i in 0..requests {
            let us = ms * 1_000 + (i % 7) * 100;
            latency.buckets[Histogram::bucket(us)] += 1;
            latency.count += 1;
            latency.sum_us += us;
        }
        Window {
            requests,
            errors,
            latency,
        }
    }

    fn node(name: &str, candidate: Window, live: Window) -> NodeWindows {
        NodeWindows {
            node: name.to_owned(),
            candidate,
            live,
        }
    }

    fn gates() -> Gates {
        Gates {
            min_samples: 50,
            ..Gates::default()
        }
    }

    #[test]
    fn one_bad_node_fails_the_fleet_and_is_named_though_the_sum_dilutes_it() {
        let healthy = || window(2_000, 2, 5);
        let nodes = [
            node("n0", healthy(), healthy()),
            node("n1", healthy(), healthy()),
            node("n2", window(200, 40, 5), healthy()),
        ];
        let verdict = judge(&gates(), &nodes, &[], None);
        let Judgement::Fail(reasons) = &verdict.judgement else {
            panic!("{:?}", verdict.judgement);
        };
        assert!(
            reasons.iter().any(|r| r.starts_with("node n2: ")),
            "{reasons:?}"
        );
        assert!(!reasons.iter().any(|r| r.contains("n0") || r.contains("n1")));
        // The same traffic on healthy nodes only passes.
        let nodes = [
            node("n0", healthy(), healthy()),
            node("n1", healthy(), healthy()),
        ];
        assert_eq!(
            judge(&gates(), &nodes, &[], None).judgement,
            Judgement::Pass
        );
    }

    #[test]
    fn a_missing_node_holds_a_passing_fleet_but_not_a_failing_one() {
        let healthy = || window(2_000, 0, 5);
        let nodes = [node("n0", healthy(), healthy())];
        let held = ["node n1 stopped reporting".to_owned()];
        assert_eq!(
            judge(&gates(), &nodes, &held, None).judgement,
            Judgement::Inconclusive("node n1 stopped reporting".to_owned())
        );
        let bad = [node("n0", window(2_000, 1_000, 5), healthy())];
        assert!(matches!(
            judge(&gates(), &bad, &held, None).judgement,
            Judgement::Fail(_)
        ));
        assert!(matches!(
            judge(&gates(), &[], &[], None).judgement,
            Judgement::Inconclusive(_)
        ));
    }

    #[test]
    fn the_live_reference_judges_the_last_step_when_the_live_pool_is_empty() {
        let nodes = [node("n0", window(2_000, 0, 5), Window::default())];
        let without = judge(&gates(), &nodes, &[], None);
        assert!(
            matches!(without.judgement, Judgement::Inconclusive(_)),
            "{:?}",
            without.judgement
        );
        let reference = window(2_000, 0, 5);
        let with = judge(&gates(), &nodes, &[], Some(&reference));
        assert_eq!(with.judgement, Judgement::Pass);
        assert_eq!(with.reference, Some(reference));
        let kept = from_evidence(&to_evidence(&reference, "live"));
        assert_eq!(kept, Some(reference));
    }

    fn report(node: &str, revision: i64, word: SplitWord, requests: u64) -> NodeReport {
        let evidence = |version: &str| Evidence {
            version: version.to_owned(),
            requests,
            errors: 0,
            latency: Sparse::default(),
        };
        NodeReport {
            schema: 1,
            node: node.to_owned(),
            at_ms: 0,
            applied: [(
                "model".to_owned(),
                crate::model::fleet::Applied {
                    revision,
                    kernel_live: word.live().name().to_owned(),
                    kernel_candidate_bp: word.candidate_share_bp(),
                    evidence: vec![evidence("blue"), evidence("green")],
                },
            )]
            .into(),
            refused: BTreeMap::new(),
            serves: vec!["model".to_owned()],
        }
    }

    #[test]
    fn every_member_is_judged_or_holds_the_rollout_unless_it_does_not_serve_the_release() {
        let word = SplitWord::new(Version::Blue, 2_000);
        let members: Vec<Result<String, String>> = ["n0", "n1", "n2", "n3", "n4", "n5", "n6"]
            .iter()
            .map(|n| Ok((*n).to_owned()))
            .chain([Err("/splitter/v1/members/bad".to_owned())])
            .collect();
        let mut reports: BTreeMap<String, NodeReport> = BTreeMap::new();
        reports.insert("n0".into(), report("n0", 9, word, 100));
        // n1 is silent (no report); n2 is behind; n3 was changed alone; n4 refused the split;
        // n5 serves another release only; n6 serves it but its data plane lacks it.
        reports.insert("n2".into(), report("n2", 8, word, 100));
        reports.insert(
            "n3".into(),
            report("n3", 9, SplitWord::new(Version::Blue, 0), 100),
        );
        let mut refused = report("n4", 9, word, 100);
        refused
            .refused
            .insert("model".into(), "newer schema".into());
        reports.insert("n4".into(), refused);
        let mut other = report("n5", 0, word, 0);
        other.serves = vec!["other".into()];
        other.applied.clear();
        reports.insert("n5".into(), other);
        let mut lacking = report("n6", 9, word, 100);
        lacking.applied.clear();
        reports.insert("n6".into(), lacking);
        let look = |reports: &BTreeMap<String, NodeReport>, revision, bases: &mut _| {
            let fleet = Seen {
                release: "model",
                members: &members,
                reports,
                revision,
                word,
                candidate: Version::Green,
            };
            node_windows(&fleet, bases)
        };
        let mut bases = BTreeMap::new();
        let (windows, held) = look(&reports, 9, &mut bases);
        assert_eq!(windows.len(), 1);
        assert_eq!(windows[0].node, "n0");
        assert_eq!(windows[0].candidate.requests, 0, "its window starts now");
        let holding: Vec<&str> = held
            .iter()
            .map(|h| h.split([' ', '\'']).nth(1).unwrap_or(""))
            .collect();
        assert_eq!(
            holding,
            ["n1", "n2", "n3", "n4", "n6", "member"],
            "{held:#?}"
        );
        let windows_at = |requests, revision, bases: &mut _| {
            let mut reports = reports.clone();
            reports.insert("n0".into(), report("n0", revision, word, requests));
            look(&reports, revision, bases).0[0].candidate.requests
        };
        // Its next report: the window is what was counted since.
        assert_eq!(windows_at(130, 9, &mut bases), 30);
        // A reboot: counters from zero, and the window counts from zero from then on.
        assert_eq!(windows_at(5, 9, &mut bases), 5);
        assert_eq!(windows_at(200, 9, &mut bases), 200, "not 200 - 100");
        // A step (a newer revision): the window starts again.
        assert_eq!(windows_at(260, 11, &mut bases), 0);
    }

    #[test]
    fn a_node_whose_counters_went_back_counts_from_zero() {
        let at = |requests, errors| Counts {
            requests,
            errors,
            latency: Histogram::default(),
        };
        let window = at(150, 3).since(&at(100, 1));
        assert_eq!((window.requests, window.errors), (50, 2));
        let rebooted = at(20, 0).since(&at(100, 1));
        assert_eq!((rebooted.requests, rebooted.errors), (20, 0));
    }
}
