//! The gates' judgement of one window of kernel counters: each gate's state, and their
//! combination. No I/O: the daemon reads the counters and PromQL readings, this decides.

use serde::{Deserialize, Serialize};
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

/// One gate as the last judgement saw it, for `rollout status` and `watch`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct GateView {
    pub gate: String,
    /// What it allows, as an operator reads it (`≤ 1.00%`).
    pub limit: String,
    /// What the window measured, when it measured something.
    pub value: Option<String>,
    /// `pass`, `fail`, or `waiting` (not enough data to judge this gate).
    pub state: String,
}

impl GateView {
    fn new(gate: &str, limit: String, value: Option<String>, state: &str) -> Self {
        Self {
            gate: gate.to_owned(),
            limit,
            value,
            state: state.to_owned(),
        }
    }
}

/// The kernel gates' states in one window, gate by gate (`judge` combines them).
#[must_use]
pub fn gate_views(
    gates: &Gates,
    candidate: &Window,
    live: &Window,
    baseline_ms: Option<f64>,
) -> Vec<GateView> {
    let pass_fail = |breached: bool| if breached { "fail" } else { "pass" };
    let enough = candidate.requests >= gates.min_samples.max(1);
    let mut views = vec![GateView::new(
        "min_samples",
        format!("≥ {}", gates.min_samples.max(1)),
        Some(candidate.requests.to_string()),
        if enough { "pass" } else { "waiting" },
    )];
    if let Some(max) = gates.max_error_rate {
        let rate = candidate.error_rate();
        views.push(GateView::new(
            "max_error_rate",
            format!("≤ {:.2}%", max * 100.0),
            rate.map(|r| format!("{:.2}%", r * 100.0)),
            match rate {
                Some(r) if enough => pass_fail(r > max),
                _ => "waiting",
            },
        ));
    }
    if let Some(max) = gates.max_p99_ms {
        views.push(GateView::new(
            "max_p99_ms",
            format!("≤ {max:.1} ms"),
            candidate.p99_ms.map(|p| format!("{p:.1} ms")),
            match candidate.p99_ms {
                Some(p) if enough => pass_fail(p > max),
                _ => "waiting",
            },
        ));
    }
    if let Some(ratio) = gates.max_p99_vs_live {
        let reference = live_reference(gates, live, baseline_ms);
        views.push(GateView::new(
            "max_p99_vs_live",
            format!("≤ {ratio:.2} × live"),
            candidate
                .p99_ms
                .zip(reference)
                .map(|(c, l)| format!("{:.2} × ({c:.1} / {l:.1} ms)", c / l)),
            match (candidate.p99_ms, reference) {
                (Some(c), Some(l)) if enough => pass_fail(c > ratio * l),
                _ => "waiting",
            },
        ));
    }
    views
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
    /// Both judgements at once: any failure fails (with every reason), else anything
    /// inconclusive holds.
    #[must_use]
    pub fn and(self, other: Self) -> Self {
        match (self, other) {
            (Self::Fail(mut a), Self::Fail(b)) => {
                a.extend(b);
                Self::Fail(a)
            }
            (Self::Fail(a), _) | (_, Self::Fail(a)) => Self::Fail(a),
            (Self::Inconclusive(a), Self::Inconclusive(b)) => {
                Self::Inconclusive(format!("{a}; {b}"))
            }
            (Self::Inconclusive(a), Self::Pass) | (Self::Pass, Self::Inconclusive(a)) => {
                Self::Inconclusive(a)
            }
            (Self::Pass, Self::Pass) => Self::Pass,
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

/// Judges the candidate's window against the gates and, for relative gates, the live pool's
/// p99 (see [`live_reference`]).
#[must_use]
pub fn judge(
    gates: &Gates,
    candidate: &Window,
    live: &Window,
    baseline_ms: Option<f64>,
) -> Judgement {
    if candidate.requests < gates.min_samples.max(1) {
        return Judgement::Inconclusive(format!(
            "{} requests on the candidate, {} needed",
            candidate.requests,
            gates.min_samples.max(1)
        ));
    }
    // A breach fails even when another gate has no data: missing data must not hide a
    // failure (and `gate_views` shows the same states).
    let mut failures = Vec::new();
    let mut missing = Vec::new();
    if let (Some(max), Some(rate)) = (gates.max_error_rate, candidate.error_rate())
        && rate > max
    {
        failures.push(format!(
            "error rate {:.2}% > {:.2}%",
            rate * 100.0,
            max * 100.0
        ));
    }
    if let Some(max) = gates.max_p99_ms {
        match candidate.p99_ms {
            Some(p99) if p99 > max => failures.push(format!("p99 {p99:.1} ms > {max:.1} ms")),
            Some(_) => {}
            None => missing.push("no response time measured on the candidate"),
        }
    }
    if let Some(ratio) = gates.max_p99_vs_live {
        match (candidate.p99_ms, live_reference(gates, live, baseline_ms)) {
            (Some(c), Some(l)) => {
                if c > ratio * l {
                    failures.push(format!("p99 {c:.1} ms > {ratio:.2} × live {l:.1} ms"));
                }
            }
            _ => missing.push("no live response times measured yet to compare with"),
        }
    }
    if !failures.is_empty() {
        Judgement::Fail(failures)
    } else if !missing.is_empty() {
        Judgement::Inconclusive(missing.join("; "))
    } else {
        Judgement::Pass
    }
}

/// Judges the readings of `gates` (in the same order): any breach fails; otherwise a gate
/// without a value is inconclusive.
#[must_use]
pub fn judge_promql(gates: &[PromqlGate], readings: &[Reading]) -> Judgement {
    let mut failures = Vec::new();
    let mut missing = Vec::new();
    for (gate, reading) in gates.iter().zip(readings) {
        match reading {
            Reading::Value(v) => failures.extend(gate.breach(*v)),
            other => missing.push(format!("PromQL gate {}: {other}", gate.name)),
        }
    }
    if readings.len() < gates.len() {
        missing.push("PromQL gates not read".to_owned());
    }
    if !failures.is_empty() {
        Judgement::Fail(failures)
    } else if !missing.is_empty() {
        Judgement::Inconclusive(missing.join("; "))
    } else {
        Judgement::Pass
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_breach_fails_even_when_another_gate_lacks_data_and_the_views_agree() {
        let gates = Gates {
            max_error_rate: Some(0.01),
            max_p99_ms: Some(100.0),
            max_p99_vs_live: Some(1.2),
            min_samples: 10,
            max_divergence: None,
        };
        let window = |requests, errors, p99_ms| Window {
            requests,
            errors,
            p99_ms,
        };
        let live = window(1_000, 0, Some(10.0));
        let cases = [
            (window(100, 50, None), window(0, 0, None)),
            (window(100, 0, None), live),
            (window(100, 0, Some(200.0)), window(0, 0, None)),
            (window(100, 0, Some(11.0)), live),
            (window(100, 0, Some(13.0)), live),
            (window(5, 5, Some(500.0)), live),
        ];
        for (candidate, live) in cases {
            let judgement = judge(&gates, &candidate, &live, None);
            let views = gate_views(&gates, &candidate, &live, None);
            let any_fail = views.iter().any(|v| v.state == "fail");
            let any_waiting = views.iter().any(|v| v.state == "waiting");
            match &judgement {
                Judgement::Fail(_) => assert!(any_fail, "{candidate:?}: {views:?}"),
                Judgement::Inconclusive(_) => {
                    assert!(!any_fail && any_waiting, "{candidate:?}: {views:?}")
                }
                Judgement::Pass => assert!(!any_fail && !any_waiting, "{candidate:?}: {views:?}"),
            }
        }
        assert!(matches!(
            judge(&gates, &window(100, 50, None), &window(0, 0, None), None),
            Judgement::Fail(_)
        ));
    }

    fn window(requests: u64, errors: u64, p99_ms: Option<f64>) -> Window {
        Window {
            requests,
            errors,
            p99_ms,
        }
    }

    #[test]
    fn judgements_combine_failures_first_then_missing_data() {
        let fail = |r: &str| Judgement::Fail(vec![r.to_owned()]);
        let hold = |r: &str| Judgement::Inconclusive(r.to_owned());
        assert_eq!(
            fail("a").and(fail("b")),
            Judgement::Fail(vec!["a".to_owned(), "b".to_owned()])
        );
        assert_eq!(
            hold("few").and(fail("b")),
            fail("b"),
            "a breach is not hidden by missing data"
        );
        assert_eq!(
            Judgement::Pass.and(hold("x")),
            hold("x"),
            "never promote on missing data"
        );
        assert_eq!(hold("x").and(hold("y")), hold("x; y"));
        assert_eq!(Judgement::Pass.and(Judgement::Pass), Judgement::Pass);
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
