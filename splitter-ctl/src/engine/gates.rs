//! The gates' judgement of one window of kernel counters: each gate's state, and their
//! combination. No I/O: the daemon reads the counters and PromQL readings, this decides.

use splitter_common::{Histogram, VersionStats};

use crate::{
    engine::latency,
    model::{
        plan::Gates,
        promql::{PromqlGate, Reading},
    },
};

/// A version's counters and response histogram at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub counters: VersionStats,
    pub response: Histogram,
}

/// What a version did between two snapshots.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Window {
    pub requests: u64,
    pub errors: u64,
    pub p99_ms: Option<f64>,
}

impl Window {
    /// The difference between two snapshots of one version (counters only grow; a reset in
    /// between reads as an empty window).
    #[must_use]
    pub fn between(before: &Snapshot, after: &Snapshot) -> Self {
        let (errors_after, events_after) = after.counters.errors_and_events();
        let (errors_before, events_before) = before.counters.errors_and_events();
        let histogram = after.response.since(&before.response);
        Self {
            requests: events_after.saturating_sub(events_before),
            errors: errors_after.saturating_sub(errors_before),
            p99_ms: latency::quantile(&histogram, 0.99).map(|us| us / 1_000.0),
        }
    }

    #[must_use]
    pub fn error_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.errors as f64 / self.requests as f64)
    }
}

/// One gate's state in a window.
#[derive(Clone, Debug, PartialEq)]
pub enum GateState {
    Pass,
    /// Breached, and why, as the rollback's reason says it.
    Fail(String),
    /// Not enough data to judge this gate, and why (none when `min_samples` already says
    /// it).
    Waiting(Option<String>),
}

/// One gate as a judgement saw it: the judgement is a fold over these (`Judgement::of`), and
/// `rollout status` and `watch` show them.
#[derive(Clone, Debug, PartialEq)]
pub struct GateReading {
    pub gate: String,
    /// What it allows, as an operator reads it (`≤ 1.00%`).
    pub limit: String,
    /// What the window measured, when it measured something.
    pub value: Option<String>,
    pub state: GateState,
    /// The limit and the value as numbers, named with their unit (`limit_ms`, `value_ratio`,
    /// `candidate_p99_ms`): what `rollout status --output json` gives scripts.
    pub numbers: Vec<(&'static str, f64)>,
}

/// The gates' judgement of one window.
#[derive(Clone, Debug, PartialEq)]
pub enum Judgement {
    /// Not enough data to judge: the rollout holds.
    Inconclusive(String),
    Pass,
    Fail(Vec<String>),
}

impl Judgement {
    /// The judgement of every gate's state: any breach fails, with every reason, even when
    /// other gates lack data (missing data must not hide a failure); else any gate waiting
    /// holds; else it passes.
    #[must_use]
    pub fn of(readings: &[GateReading]) -> Self {
        let mut failures = Vec::new();
        let mut missing = Vec::new();
        let mut waiting = false;
        for reading in readings {
            match &reading.state {
                GateState::Pass => {}
                GateState::Fail(reason) => failures.push(reason.clone()),
                GateState::Waiting(why) => {
                    waiting = true;
                    missing.extend(why.clone());
                }
            }
        }
        if !failures.is_empty() {
            Self::Fail(failures)
        } else if waiting {
            Self::Inconclusive(if missing.is_empty() {
                "waiting for data".to_owned()
            } else {
                missing.join("; ")
            })
        } else {
            Self::Pass
        }
    }
}

/// The live pool's p99 to compare the candidate with: this window's when it has enough
/// requests, else the last one measured (`baseline_ms`). At the last step the live pool gets
/// no new connections, so only the baseline is left.
#[must_use]
pub fn live_reference(gates: &Gates, live: &Window, baseline_ms: Option<f64>) -> Option<f64> {
    match live.p99_ms {
        Some(p99) if live.requests >= gates.min_samples.max(1) && p99 > 0.0 => Some(p99),
        _ => baseline_ms.filter(|p99| *p99 > 0.0),
    }
}

/// The kernel gates' states in one window, in one pass: the candidate's window against the
/// gates and, for relative gates, the live pool's p99 (see [`live_reference`]). Below
/// `min_samples` every other gate waits.
#[must_use]
pub fn kernel_gates(
    gates: &Gates,
    candidate: &Window,
    live: &Window,
    baseline_ms: Option<f64>,
) -> Vec<GateReading> {
    let needed = gates.min_samples.max(1);
    let enough = candidate.requests >= needed;
    // A gate with a value judges it only once the window has enough requests.
    let state = |value: Option<(bool, String)>, missing: &str| match value {
        _ if !enough => GateState::Waiting(None),
        Some((true, reason)) => GateState::Fail(reason),
        Some((false, _)) => GateState::Pass,
        None => GateState::Waiting(Some(missing.to_owned())),
    };
    let mut readings = vec![GateReading {
        gate: "min_samples".to_owned(),
        limit: format!("≥ {needed}"),
        value: Some(candidate.requests.to_string()),
        numbers: vec![
            ("limit_requests", needed as f64),
            ("value_requests", candidate.requests as f64),
        ],
        state: if enough {
            GateState::Pass
        } else {
            GateState::Waiting(Some(format!(
                "{} requests on the candidate, {needed} needed",
                candidate.requests
            )))
        },
    }];
    if let Some(max) = gates.max_error_rate {
        let rate = candidate.error_rate();
        readings.push(GateReading {
            gate: "max_error_rate".to_owned(),
            limit: format!("≤ {:.2}%", max * 100.0),
            value: rate.map(|r| format!("{:.2}%", r * 100.0)),
            numbers: numbers(RATIO, max, rate),
            state: state(
                rate.map(|r| {
                    (
                        r > max,
                        format!("error rate {:.2}% > {:.2}%", r * 100.0, max * 100.0),
                    )
                }),
                "no requests on the candidate",
            ),
        });
    }
    if let Some(max) = gates.max_p99_ms {
        readings.push(GateReading {
            gate: "max_p99_ms".to_owned(),
            limit: format!("≤ {max:.1} ms"),
            value: candidate.p99_ms.map(|p| format!("{p:.1} ms")),
            numbers: numbers(MS, max, candidate.p99_ms),
            state: state(
                candidate
                    .p99_ms
                    .map(|p| (p > max, format!("p99 {p:.1} ms > {max:.1} ms"))),
                "no response time measured on the candidate",
            ),
        });
    }
    if let Some(ratio) = gates.max_p99_vs_live {
        let both = candidate
            .p99_ms
            .zip(live_reference(gates, live, baseline_ms));
        readings.push(GateReading {
            gate: "max_p99_vs_live".to_owned(),
            limit: format!("≤ {ratio:.2} × live"),
            value: both.map(|(c, l)| format!("{:.2} × ({c:.1} / {l:.1} ms)", c / l)),
            numbers: numbers(RATIO, ratio, both.map(|(c, l)| c / l))
                .into_iter()
                .chain(
                    both.into_iter()
                        .flat_map(|(c, l)| [("candidate_p99_ms", c), ("live_p99_ms", l)]),
                )
                .collect(),
            state: state(
                both.map(|(c, l)| {
                    (
                        c > ratio * l,
                        format!("p99 {c:.1} ms > {ratio:.2} × live {l:.1} ms"),
                    )
                }),
                "no live response times measured yet to compare with",
            ),
        });
    }
    readings
}

/// The names of a gate's numbers in ratios, and in milliseconds.
const RATIO: [&str; 2] = ["limit_ratio", "value_ratio"];
const MS: [&str; 2] = ["limit_ms", "value_ms"];

/// A gate's limit, and its value when measured, under `names`.
fn numbers(
    [limit_name, value_name]: [&'static str; 2],
    limit: f64,
    value: Option<f64>,
) -> Vec<(&'static str, f64)> {
    std::iter::once((limit_name, limit))
        .chain(value.map(|v| (value_name, v)))
        .collect()
}

/// The PromQL gates' states from their readings (in the same order): a value judges, no value
/// waits.
#[must_use]
pub fn promql_gates(gates: &[PromqlGate], readings: &[Reading]) -> Vec<GateReading> {
    gates
        .iter()
        .enumerate()
        .map(|(i, gate)| {
            let reading = readings.get(i);
            let state = match reading {
                Some(Reading::Value(v)) => gate.breach(*v).map_or(GateState::Pass, GateState::Fail),
                Some(other) => {
                    GateState::Waiting(Some(format!("PromQL gate {}: {other}", gate.name)))
                }
                None => GateState::Waiting(Some(format!("PromQL gate {}: not read", gate.name))),
            };
            let value = match reading {
                Some(Reading::Value(v)) => Some(*v),
                _ => None,
            };
            GateReading {
                gate: format!("promql {}", gate.name),
                limit: gate.limit(),
                value: reading.map(ToString::to_string),
                state,
                // In the query's own unit.
                numbers: gate
                    .max
                    .map(|max| ("limit_max", max))
                    .into_iter()
                    .chain(gate.min.map(|min| ("limit_min", min)))
                    .chain(value.map(|v| ("value", v)))
                    .collect(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judge(gates: &Gates, candidate: &Window, live: &Window, baseline: Option<f64>) -> Judgement {
        Judgement::of(&kernel_gates(gates, candidate, live, baseline))
    }

    fn judge_promql(gates: &[PromqlGate], readings: &[Reading]) -> Judgement {
        Judgement::of(&promql_gates(gates, readings))
    }

    #[test]
    fn a_breach_fails_even_when_another_gate_lacks_data() {
        let gates = Gates {
            max_error_rate: Some(0.01),
            max_p99_ms: Some(100.0),
            max_p99_vs_live: Some(1.2),
            min_samples: 10,
            max_divergence: None,
        };
        let live = window(1_000, 0, Some(10.0));
        let idle = window(0, 0, None);
        let cases = [
            (window(100, 50, None), idle, "fail"),
            (window(100, 0, None), live, "inconclusive"),
            (window(100, 0, Some(200.0)), idle, "fail"),
            (window(100, 0, Some(11.0)), live, "pass"),
            (window(100, 0, Some(13.0)), live, "fail"),
            (window(5, 5, Some(500.0)), live, "inconclusive"),
        ];
        for (candidate, live, expected) in cases {
            let readings = kernel_gates(&gates, &candidate, &live, None);
            let outcome = match Judgement::of(&readings) {
                Judgement::Fail(_) => "fail",
                Judgement::Inconclusive(_) => "inconclusive",
                Judgement::Pass => "pass",
            };
            assert_eq!(outcome, expected, "{candidate:?}: {readings:?}");
        }
    }

    fn window(requests: u64, errors: u64, p99_ms: Option<f64>) -> Window {
        Window {
            requests,
            errors,
            p99_ms,
        }
    }

    #[test]
    fn judgements_fold_failures_first_then_missing_data() {
        let reading = |state: GateState| GateReading {
            gate: "g".to_owned(),
            limit: String::new(),
            value: None,
            state,
            numbers: Vec::new(),
        };
        let fail = |r: &str| reading(GateState::Fail(r.to_owned()));
        let wait = |r: &str| reading(GateState::Waiting(Some(r.to_owned())));
        let pass = || reading(GateState::Pass);
        assert_eq!(
            Judgement::of(&[fail("a"), fail("b")]),
            Judgement::Fail(vec!["a".to_owned(), "b".to_owned()])
        );
        assert_eq!(
            Judgement::of(&[wait("few"), fail("b")]),
            Judgement::Fail(vec!["b".to_owned()]),
            "a breach is not hidden by missing data"
        );
        assert_eq!(
            Judgement::of(&[pass(), wait("x")]),
            Judgement::Inconclusive("x".to_owned()),
            "never promote on missing data"
        );
        assert_eq!(
            Judgement::of(&[wait("x"), wait("y")]),
            Judgement::Inconclusive("x; y".to_owned())
        );
        assert!(
            matches!(
                Judgement::of(&[pass(), reading(GateState::Waiting(None))]),
                Judgement::Inconclusive(_)
            ),
            "a gate waiting without a reason of its own still holds"
        );
        assert_eq!(Judgement::of(&[pass(), pass()]), Judgement::Pass);
        assert_eq!(Judgement::of(&[]), Judgement::Pass);
    }

    #[test]
    fn too_few_samples_or_no_live_comparison_is_inconclusive() {
        let gates = Gates::default();
        assert!(matches!(
            judge(
                &gates,
                &window(5, 0, Some(10.0)),
                &window(100, 0, Some(10.0)),
                Some(10.0)
            ),
            Judgement::Inconclusive(_)
        ));
        assert!(matches!(
            judge(
                &gates,
                &window(100, 0, Some(10.0)),
                &window(3, 0, Some(10.0)),
                None
            ),
            Judgement::Inconclusive(_)
        ));
        let absolute = Gates {
            max_p99_ms: Some(100.0),
            max_p99_vs_live: None,
            ..gates
        };
        assert!(matches!(
            judge(&absolute, &window(100, 0, None), &window(0, 0, None), None),
            Judgement::Inconclusive(_)
        ));
    }

    #[test]
    fn without_live_traffic_the_candidate_is_compared_with_the_last_live_p99() {
        let gates = Gates {
            max_p99_vs_live: Some(2.0),
            ..Gates::default()
        };
        let idle = window(0, 0, None);
        assert_eq!(
            judge(&gates, &window(100, 0, Some(19.0)), &idle, Some(10.0)),
            Judgement::Pass
        );
        assert!(matches!(
            judge(&gates, &window(100, 0, Some(21.0)), &idle, Some(10.0)),
            Judgement::Fail(_)
        ));
        assert_eq!(
            live_reference(&gates, &window(100, 0, Some(30.0)), Some(10.0)),
            Some(30.0),
            "a window with enough live traffic wins over the baseline"
        );
    }

    #[test]
    fn gates_pass_and_fail_on_their_thresholds() {
        let gates = Gates {
            max_error_rate: Some(0.05),
            max_p99_ms: Some(250.0),
            max_p99_vs_live: Some(1.2),
            min_samples: 20,
            max_divergence: None,
        };
        let live = window(1_000, 0, Some(100.0));
        assert_eq!(
            judge(&gates, &window(100, 5, Some(120.0)), &live, None),
            Judgement::Pass,
            "5% and 1.2x are at the limit"
        );
        let Judgement::Fail(reasons) = judge(&gates, &window(100, 6, Some(121.0)), &live, None)
        else {
            panic!("should fail")
        };
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(reasons[0].starts_with("error rate 6.00%"));
        assert!(reasons[1].contains("1.20 × live"));
        let Judgement::Fail(reasons) = judge(
            &gates,
            &window(100, 0, Some(300.0)),
            &window(1_000, 0, Some(290.0)),
            None,
        ) else {
            panic!("should fail")
        };
        assert_eq!(reasons, ["p99 300.0 ms > 250.0 ms"]);
    }

    #[test]
    fn a_window_is_the_difference_of_two_snapshots() {
        let mut before = Snapshot::default();
        before.counters.responses = 100;
        before.counters.http_status[5] = 2;
        before.response.buckets[12] = 100;
        let mut after = before;
        after.counters.responses = 200;
        after.counters.http_status[5] = 12;
        after.counters.backend_resets = 5;
        after.response.buckets[12] = 190;
        after.response.buckets[15] = 10;
        let w = Window::between(&before, &after);
        assert_eq!(
            (w.requests, w.errors),
            (105, 15),
            "responses + resets; 5xx + resets"
        );
        // 90 in [4, 8) ms, 10 in [32, 65) ms: p99 is in the slow bucket.
        assert!(w.p99_ms.is_some_and(|p| p > 32.0 && p < 66.0), "{w:?}");
        assert_eq!(
            Window::between(&after, &before).requests,
            0,
            "a reset in between is an empty window"
        );
    }

    fn promql_gate(max: Option<f64>, min: Option<f64>) -> PromqlGate {
        PromqlGate {
            name: "low_confidence".to_owned(),
            query: "x".to_owned(),
            max,
            min,
        }
    }

    #[test]
    fn gates_fail_on_a_breach_and_hold_without_a_value() {
        let gates = [promql_gate(Some(0.05), None), promql_gate(None, Some(0.9))];
        assert_eq!(
            judge_promql(&gates, &[Reading::Value(0.05), Reading::Value(0.9)]),
            Judgement::Pass,
            "the bounds are inclusive"
        );
        assert_eq!(
            judge_promql(&gates, &[Reading::Value(0.06), Reading::NoData]),
            Judgement::Fail(vec!["low_confidence 0.06 > 0.05".to_owned()]),
            "a breach fails even when another gate has no data"
        );
        assert_eq!(
            judge_promql(&gates, &[Reading::Value(0.0), Reading::Value(0.5)]),
            Judgement::Fail(vec!["low_confidence 0.5 < 0.9".to_owned()])
        );
        assert!(matches!(
            judge_promql(&gates, &[Reading::Value(0.0), Reading::NoData]),
            Judgement::Inconclusive(why) if why.contains("no data")
        ));
        assert!(matches!(
            judge_promql(&gates, &[Reading::Value(0.0), Reading::Failed("refused".to_owned())]),
            Judgement::Inconclusive(why) if why.contains("refused")
        ));
        assert!(matches!(
            judge_promql(&gates, &[Reading::Value(0.0)]),
            Judgement::Inconclusive(_)
        ));
        assert_eq!(judge_promql(&[], &[]), Judgement::Pass);
    }
}
