//! The coordinator's judgement of a fleet rollout, with no I/O: the windows of every node
//! merged (histograms summed bucket by bucket) and each node alone, so that one bad host is
//! seen even when the others' traffic dilutes it in the sum; and the holds a fleet adds: a
//! node that stops reporting, or has not applied the step, makes the rollout hold. A failing
//! window still rolls back while a node is missing (a rollback is safe whatever the others
//! say); a passing one never promotes with a node missing.

use splitter_common::Histogram;

use crate::{
    engine::gates::{
        Carried, GateReading, GateState, Judgement, Window, kernel_gates, live_reference,
    },
    model::{
        fleet::{Evidence, RecordError, Sparse},
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

    /// The window from `base` to these counts. Counts below the base mean the node's data
    /// plane was created again (a reboot): the window is everything counted since.
    #[must_use]
    pub fn since(&self, base: &Self) -> Window {
        let went_back = self.requests < base.requests
            || self.errors < base.errors
            || self.latency.count < base.latency.count;
        let base = if went_back { &Self::default() } else { base };
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
            let own = kernel_gates(&gates, &node.candidate, &node.live, None, &none);
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
