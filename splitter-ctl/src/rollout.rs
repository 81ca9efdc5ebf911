//! The rollout engine's decisions, with no I/O: judging the candidate over a window of kernel
//! counters and histograms, and moving a rollout through its steps. The daemon feeds it
//! snapshots and carries out what it decides (a share write, a promotion, a rollback).
//!
//! Rules it keeps, whatever the input:
//! - too few samples is inconclusive, and an inconclusive window holds the rollout: it never
//!   promotes on missing data;
//! - `failure_limit` failing windows in a row roll back; a passing window resets the count;
//! - a step advances only after its hold has passed and its last window passed.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use splitter_common::{Histogram, VersionStats};

use crate::{
    latency,
    promql::{PrometheusUrl, PromqlGate},
    status,
};

/// When a candidate is good enough.
#[derive(Clone, Debug, PartialEq)]
pub struct Gates {
    /// Errors (5xx, backend resets, refused handshakes) over requests, at most.
    pub max_error_rate: Option<f64>,
    /// The candidate's p99 response time, at most, in milliseconds.
    pub max_p99_ms: Option<f64>,
    /// The candidate's p99 over the live pool's p99 in the same window, at most.
    pub max_p99_vs_live: Option<f64>,
    /// Requests the candidate must have served in a window before it is judged.
    pub min_samples: u64,
    /// How far the spread of the candidate's clients over network prefixes may diverge from
    /// the live pool's (0 to 1) before the step holds (see `representativeness`).
    pub max_divergence: Option<f64>,
}

impl Default for Gates {
    fn default() -> Self {
        Self {
            max_error_rate: Some(0.01),
            max_p99_ms: None,
            max_p99_vs_live: Some(1.2),
            min_samples: 20,
            max_divergence: None,
        }
    }
}

/// How a rollout proceeds.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Candidate shares in basis points, rising, the last one 10000.
    pub steps: Vec<u16>,
    /// How long each step holds before it may advance.
    pub hold: Duration,
    /// How often the gates judge.
    pub interval: Duration,
    pub gates: Gates,
    /// Failing windows in a row that roll back.
    pub failure_limit: u32,
    /// Where the PromQL gates are queried; set whenever `promql` is not empty.
    pub prometheus: Option<PrometheusUrl>,
    /// Gates on application signals, judged beside the kernel's.
    pub promql: Vec<PromqlGate>,
}

impl Default for Plan {
    fn default() -> Self {
        Self {
            steps: vec![100, 500, 2_500, 5_000, 10_000],
            hold: Duration::from_secs(60),
            interval: Duration::from_secs(10),
            gates: Gates::default(),
            failure_limit: 2,
            prometheus: None,
            promql: Vec::new(),
        }
    }
}

/// A plan as a request gives it: every field optional, the defaults of `Plan` otherwise.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PlanRequest {
    /// Candidate shares in percent, rising, ending at 100.
    pub steps: Option<Vec<f64>>,
    pub hold_ms: Option<u64>,
    pub interval_ms: Option<u64>,
    pub max_error_rate: Option<f64>,
    pub max_p99_ms: Option<f64>,
    pub max_p99_vs_live: Option<f64>,
    pub min_samples: Option<u64>,
    /// The representativeness gate: 0 to 1, off when absent.
    pub max_divergence: Option<f64>,
    pub failure_limit: Option<u32>,
    /// `http://host:port[/prefix]` of the Prometheus server the PromQL gates query.
    pub prometheus_url: Option<String>,
    pub promql_gates: Option<Vec<PromqlGate>>,
}

impl PlanRequest {
    /// This plan with every field that `overrides` sets taken from it (the config's plan,
    /// overridden from the command line).
    #[must_use]
    pub fn overridden_by(self, overrides: Self) -> Self {
        Self {
            steps: overrides.steps.or(self.steps),
            hold_ms: overrides.hold_ms.or(self.hold_ms),
            interval_ms: overrides.interval_ms.or(self.interval_ms),
            max_error_rate: overrides.max_error_rate.or(self.max_error_rate),
            max_p99_ms: overrides.max_p99_ms.or(self.max_p99_ms),
            max_p99_vs_live: overrides.max_p99_vs_live.or(self.max_p99_vs_live),
            min_samples: overrides.min_samples.or(self.min_samples),
            max_divergence: overrides.max_divergence.or(self.max_divergence),
            failure_limit: overrides.failure_limit.or(self.failure_limit),
            prometheus_url: overrides.prometheus_url.or(self.prometheus_url),
            promql_gates: overrides.promql_gates.or(self.promql_gates),
        }
    }

    /// The plan, or what is wrong with the request.
    pub fn into_plan(self) -> Result<Plan, String> {
        let defaults = Plan::default();
        let steps = match self.steps {
            None => defaults.steps,
            Some(steps) => {
                let bp: Vec<u16> = steps
                    .iter()
                    .map(|p| {
                        let bp = (p * 100.0).round();
                        if !(1.0..=10_000.0).contains(&bp) || (bp - p * 100.0).abs() > 1e-6 {
                            Err(format!("step {p} is not a percentage from 0.01 to 100 with at most two decimals"))
                        } else {
                            Ok(bp as u16)
                        }
                    })
                    .collect::<Result<_, _>>()?;
                if bp.windows(2).any(|w| w[0] >= w[1]) {
                    return Err("steps must rise".to_owned());
                }
                if bp.last() != Some(&10_000) {
                    return Err("the last step must be 100".to_owned());
                }
                bp
            }
        };
        let ms = |v: Option<u64>,
                  default: Duration,
                  range: std::ops::RangeInclusive<u64>,
                  what: &str| match v {
            None => Ok(default),
            Some(v) if range.contains(&v) => Ok(Duration::from_millis(v)),
            Some(v) => Err(format!(
                "{what} {v} ms is outside {}..={} ms",
                range.start(),
                range.end()
            )),
        };
        let hold = ms(self.hold_ms, defaults.hold, 0..=86_400_000, "hold")?;
        let interval = ms(
            self.interval_ms,
            defaults.interval,
            100..=600_000,
            "interval",
        )?;
        let fraction = |v: Option<f64>, default: Option<f64>, what: &str| match v {
            None => Ok(default),
            Some(v) if (0.0..=1.0).contains(&v) => Ok(Some(v)),
            Some(v) => Err(format!("{what} {v} is not between 0 and 1")),
        };
        let positive = |v: Option<f64>, default: Option<f64>, what: &str| match v {
            None => Ok(default),
            Some(v) if v > 0.0 && v.is_finite() => Ok(Some(v)),
            Some(v) => Err(format!("{what} {v} must be a positive number")),
        };
        let gates = Gates {
            max_error_rate: fraction(
                self.max_error_rate,
                defaults.gates.max_error_rate,
                "max_error_rate",
            )?,
            max_p99_ms: positive(self.max_p99_ms, defaults.gates.max_p99_ms, "max_p99_ms")?,
            max_p99_vs_live: positive(
                self.max_p99_vs_live,
                defaults.gates.max_p99_vs_live,
                "max_p99_vs_live",
            )?,
            min_samples: self.min_samples.unwrap_or(defaults.gates.min_samples),
            max_divergence: fraction(
                self.max_divergence,
                defaults.gates.max_divergence,
                "max_divergence",
            )?,
        };
        let failure_limit = match self.failure_limit {
            None => defaults.failure_limit,
            Some(n) if (1..=10).contains(&n) => n,
            Some(n) => return Err(format!("failure_limit {n} is outside 1..=10")),
        };
        let promql = self.promql_gates.unwrap_or_default();
        for (i, gate) in promql.iter().enumerate() {
            gate.validate()?;
            if promql[..i].iter().any(|g| g.name == gate.name) {
                return Err(format!("two PromQL gates are named `{}`", gate.name));
            }
        }
        let prometheus = self
            .prometheus_url
            .as_deref()
            .map(PrometheusUrl::parse)
            .transpose()?;
        if !promql.is_empty() && prometheus.is_none() {
            return Err("PromQL gates need `prometheus_url`".to_owned());
        }
        Ok(Plan {
            steps,
            hold,
            interval,
            gates,
            failure_limit,
            prometheus,
            promql,
        })
    }
}

impl From<&Plan> for PlanRequest {
    fn from(plan: &Plan) -> Self {
        Self {
            steps: Some(
                plan.steps
                    .iter()
                    .map(|bp| crate::share::percent_of(*bp))
                    .collect(),
            ),
            hold_ms: Some(u64::try_from(plan.hold.as_millis()).unwrap_or(u64::MAX)),
            interval_ms: Some(u64::try_from(plan.interval.as_millis()).unwrap_or(u64::MAX)),
            max_error_rate: plan.gates.max_error_rate,
            max_p99_ms: plan.gates.max_p99_ms,
            max_p99_vs_live: plan.gates.max_p99_vs_live,
            min_samples: Some(plan.gates.min_samples),
            max_divergence: plan.gates.max_divergence,
            failure_limit: Some(plan.failure_limit),
            prometheus_url: plan.prometheus.as_ref().map(ToString::to_string),
            promql_gates: (!plan.promql.is_empty()).then(|| plan.promql.clone()),
        }
    }
}

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
        let (errors_after, events_after) = status::errors_and_events(&after.counters);
        let (errors_before, events_before) = status::errors_and_events(&before.counters);
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

/// What the daemon must do after an evaluation.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Nothing changes.
    Hold,
    /// Write the candidate's next share (basis points).
    Advance(u16),
    /// Make the candidate live.
    Promote,
    /// Send every new connection to the live pool.
    RollBack(String),
}

/// A rollout in progress.
#[derive(Clone, Debug, PartialEq)]
pub struct Rollout {
    pub plan: Plan,
    /// Index into `plan.steps` of the share in effect.
    pub step: usize,
    pub step_started: Instant,
    pub consecutive_failures: u32,
    pub done: bool,
}

impl Rollout {
    /// A rollout at its first step, which the daemon writes when it starts it.
    #[must_use]
    pub fn start(plan: Plan, now: Instant) -> Self {
        Self {
            plan,
            step: 0,
            step_started: now,
            consecutive_failures: 0,
            done: false,
        }
    }

    /// The candidate's share in effect.
    #[must_use]
    pub fn share(&self) -> u16 {
        self.plan.steps.get(self.step).copied().unwrap_or(0)
    }

    /// Moves the rollout on after a window was judged.
    pub fn on_judgement(&mut self, now: Instant, judgement: &Judgement) -> Decision {
        if self.done {
            return Decision::Hold;
        }
        match judgement {
            Judgement::Inconclusive(_) => Decision::Hold,
            Judgement::Fail(reasons) => {
                self.consecutive_failures += 1;
                if self.consecutive_failures >= self.plan.failure_limit.max(1) {
                    self.done = true;
                    Decision::RollBack(reasons.join("; "))
                } else {
                    Decision::Hold
                }
            }
            Judgement::Pass => {
                self.consecutive_failures = 0;
                if now.duration_since(self.step_started) < self.plan.hold {
                    return Decision::Hold;
                }
                if self.step + 1 >= self.plan.steps.len() {
                    self.done = true;
                    return Decision::Promote;
                }
                self.step += 1;
                self.step_started = now;
                Decision::Advance(self.share())
            }
        }
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

    proptest::proptest! {
        #[test]
        fn property_any_plan_request_body_is_a_plan_or_a_reason(
            edits in proptest::collection::vec((0usize..200, proptest::prelude::any::<u8>()), 0..5)
        ) {
            let mut body = br#"{"steps":[1,5,100],"hold_ms":5000,"interval_ms":1000,"max_error_rate":0.05,"min_samples":20,"failure_limit":2,"prometheus_url":"http://127.0.0.1:9090","promql_gates":[{"name":"g","query":"x","max":1}]}"#.to_vec();
            for (at, byte) in edits {
                let at = at % body.len();
                body[at] = byte;
            }
            // What the control API does with a body: parse, then validate.
            if let Ok(request) = serde_json::from_slice::<PlanRequest>(&body)
                && let Err(reason) = request.into_plan()
            {
                proptest::prop_assert!(!reason.is_empty());
            }
        }
    }

    fn window(requests: u64, errors: u64, p99_ms: Option<f64>) -> Window {
        Window {
            requests,
            errors,
            p99_ms,
        }
    }

    fn plan(steps: &[u16]) -> Plan {
        Plan {
            steps: steps.to_vec(),
            hold: Duration::from_secs(10),
            interval: Duration::from_secs(1),
            gates: Gates::default(),
            failure_limit: 2,
            prometheus: None,
            promql: Vec::new(),
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
    fn a_rollout_advances_after_each_hold_and_promotes_at_the_end() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut rollout = Rollout::start(plan(&[100, 5_000, 10_000]), t0);
        assert_eq!(rollout.share(), 100);
        assert_eq!(
            rollout.on_judgement(at(5), &Judgement::Pass),
            Decision::Hold,
            "still holding"
        );
        assert_eq!(
            rollout.on_judgement(at(10), &Judgement::Pass),
            Decision::Advance(5_000)
        );
        assert_eq!(
            rollout.on_judgement(at(15), &Judgement::Pass),
            Decision::Hold
        );
        assert_eq!(
            rollout.on_judgement(at(20), &Judgement::Pass),
            Decision::Advance(10_000)
        );
        assert_eq!(
            rollout.on_judgement(at(30), &Judgement::Pass),
            Decision::Promote
        );
        assert!(rollout.done);
        assert_eq!(
            rollout.on_judgement(at(40), &Judgement::Pass),
            Decision::Hold,
            "nothing after the end"
        );
    }

    #[test]
    fn missing_data_never_promotes() {
        let t0 = Instant::now();
        let mut rollout = Rollout::start(plan(&[10_000]), t0);
        for s in 0..1_000 {
            let decision = rollout.on_judgement(
                t0 + Duration::from_secs(s * 60),
                &Judgement::Inconclusive("no traffic".to_owned()),
            );
            assert_eq!(decision, Decision::Hold);
        }
        assert!(!rollout.done);
    }

    #[test]
    fn consecutive_failures_roll_back_and_a_pass_resets_the_count() {
        let t0 = Instant::now();
        let fail = Judgement::Fail(vec!["error rate 20.00% > 1.00%".to_owned()]);
        let mut rollout = Rollout::start(plan(&[100, 10_000]), t0);
        assert_eq!(rollout.on_judgement(t0, &fail), Decision::Hold);
        assert_eq!(
            rollout.on_judgement(t0, &Judgement::Pass),
            Decision::Hold,
            "the pass resets the count"
        );
        assert_eq!(rollout.on_judgement(t0, &fail), Decision::Hold);
        assert_eq!(
            rollout.on_judgement(t0, &Judgement::Inconclusive("quiet".to_owned())),
            Decision::Hold,
            "inconclusive neither resets nor counts"
        );
        assert_eq!(
            rollout.on_judgement(t0, &fail),
            Decision::RollBack("error rate 20.00% > 1.00%".to_owned())
        );
        assert!(rollout.done);
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

    fn gate(name: &str) -> PromqlGate {
        PromqlGate {
            name: name.to_owned(),
            query: "sum(rate(low_confidence_total[1m]))".to_owned(),
            max: Some(0.05),
            min: None,
        }
    }

    #[test]
    fn a_plan_with_promql_gates_survives_the_journal_round_trip() {
        let request = PlanRequest {
            prometheus_url: Some("http://127.0.0.1:9090".to_owned()),
            promql_gates: Some(vec![gate("lowconf")]),
            ..PlanRequest::default()
        };
        let plan = request.into_plan().expect("valid");
        assert_eq!(plan.promql.len(), 1);
        let saved = serde_json::to_string(&PlanRequest::from(&plan)).expect("json");
        let again: PlanRequest = serde_json::from_str(&saved).expect("parse");
        assert_eq!(again.into_plan().expect("valid"), plan);
    }

    #[test]
    fn plan_requests_are_validated_with_reasons() {
        let plan = PlanRequest {
            steps: Some(vec![10.0, 50.0, 100.0]),
            hold_ms: Some(5_000),
            interval_ms: Some(1_000),
            max_error_rate: Some(0.05),
            max_p99_ms: Some(250.0),
            min_samples: Some(20),
            failure_limit: Some(2),
            ..PlanRequest::default()
        }
        .into_plan()
        .expect("valid");
        assert_eq!(plan.steps, vec![1_000, 5_000, 10_000]);
        assert_eq!(
            (plan.hold, plan.interval, plan.failure_limit),
            (Duration::from_secs(5), Duration::from_secs(1), 2)
        );
        assert_eq!(plan.gates.max_p99_ms, Some(250.0));
        assert_eq!(
            PlanRequest::default().into_plan().expect("defaults"),
            Plan::default()
        );
        for (request, expected) in [
            (
                PlanRequest {
                    steps: Some(vec![50.0, 10.0, 100.0]),
                    ..PlanRequest::default()
                },
                "steps must rise",
            ),
            (
                PlanRequest {
                    steps: Some(vec![10.0, 50.0]),
                    ..PlanRequest::default()
                },
                "the last step must be 100",
            ),
            (
                PlanRequest {
                    steps: Some(vec![0.001, 100.0]),
                    ..PlanRequest::default()
                },
                "at most two decimals",
            ),
            (
                PlanRequest {
                    interval_ms: Some(10),
                    ..PlanRequest::default()
                },
                "interval 10 ms is outside",
            ),
            (
                PlanRequest {
                    max_error_rate: Some(1.5),
                    ..PlanRequest::default()
                },
                "max_error_rate 1.5 is not between 0 and 1",
            ),
            (
                PlanRequest {
                    failure_limit: Some(0),
                    ..PlanRequest::default()
                },
                "failure_limit 0 is outside",
            ),
            (
                PlanRequest {
                    promql_gates: Some(vec![gate("lowconf")]),
                    ..PlanRequest::default()
                },
                "PromQL gates need `prometheus_url`",
            ),
            (
                PlanRequest {
                    prometheus_url: Some("http://127.0.0.1:9090".to_owned()),
                    promql_gates: Some(vec![gate("lowconf"), gate("lowconf")]),
                    ..PlanRequest::default()
                },
                "two PromQL gates are named `lowconf`",
            ),
            (
                PlanRequest {
                    prometheus_url: Some("https://127.0.0.1:9090".to_owned()),
                    ..PlanRequest::default()
                },
                "only http:// URLs",
            ),
        ] {
            let error = request.into_plan().expect_err("invalid");
            assert!(error.contains(expected), "{error}");
        }
    }
}
