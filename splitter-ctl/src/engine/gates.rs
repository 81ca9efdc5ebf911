//! The gates' judgement of one window of kernel counters: each gate's state, and their
//! combination. No I/O: the daemon reads the counters and PromQL readings, this decides.
//!
//! The kernel gates compare distributions, not single readings, against effect-size floors:
//! each scores the window for evidence that the candidate is worse than its threshold allows
//! (a Mann-Whitney test at the median, shares above a threshold in the tail and for errors),
//! adds the evidence carried from the rollout's finished steps, and fails only once the sum
//! crosses an anytime-valid boundary (`stats`), so judging the growing window at every
//! interval does not multiply false alarms. A gate passes when no regression is found (or,
//! with `advance = "shown_no_worse"`, only once the opposite evidence is convincing) and waits
//! below `min_samples`. Each reading shows the estimate, an interval for the
//! window, the threshold and the evidence.

use std::collections::BTreeMap;

use splitter_common::{Histogram, VersionStats};

use crate::{
    engine::{
        latency,
        stats::{
            self, Evidence, allowed_us, difference_interval, one_proportion, quantile_ranks,
            share_interval, slower_than, two_proportions,
        },
    },
    model::{
        plan::{Advance, Gates},
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
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Window {
    pub requests: u64,
    pub errors: u64,
    /// The response times of the window.
    pub latency: Histogram,
}

impl Window {
    /// The difference between two snapshots of one version (counters only grow; a reset in
    /// between reads as an empty window).
    #[must_use]
    pub fn between(before: &Snapshot, after: &Snapshot) -> Self {
        let (errors_after, events_after) = after.counters.errors_and_events();
        let (errors_before, events_before) = before.counters.errors_and_events();
        Self {
            requests: events_after.saturating_sub(events_before),
            errors: errors_after.saturating_sub(errors_before),
            latency: after.response.since(&before.response),
        }
    }

    #[must_use]
    pub fn error_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.errors.min(self.requests) as f64 / self.requests as f64)
    }

    /// The `q` quantile of the window's response times, in ms.
    #[must_use]
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        latency::quantile(&self.latency, q).map(|us| us / 1_000.0)
    }

    #[must_use]
    pub fn p99_ms(&self) -> Option<f64> {
        self.quantile_ms(0.99)
    }

    /// Anytime-valid bounds on the `q` quantile, in ms, each side holding with 1 − α: the least
    /// response time when the data cannot bound it from below, infinity from above.
    #[must_use]
    pub fn quantile_bounds_ms(&self, q: f64, alpha: f64) -> Option<(f64, f64)> {
        let n = self.latency.total();
        if n == 0 {
            return None;
        }
        let (lower, upper) = quantile_ranks(n, q, alpha);
        let at = |rank: u64| latency::at_rank(&self.latency, rank as f64) / 1_000.0;
        Some((
            lower.map_or_else(|| at(0), at),
            upper.map_or(f64::INFINITY, at),
        ))
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
    /// A kernel gate's evidence from this window (the rollout carries it into the next step).
    pub evidence: Option<Evidence>,
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

/// Whether the live pool's window has enough to compare the candidate with.
fn live_enough(gates: &Gates, live: &Window) -> bool {
    live.requests >= gates.min_samples.max(1) && live.latency.total() > 0
}

/// The live pool's window to compare the candidate with: this window when it has enough
/// requests, else the last one that had (`reference`). At the last step the live pool gets no
/// new connections, so only the reference is left.
#[must_use]
pub fn live_reference<'a>(
    gates: &Gates,
    live: &'a Window,
    reference: Option<&'a Window>,
) -> Option<&'a Window> {
    if live_enough(gates, live) {
        Some(live)
    } else {
        reference
    }
}

/// A ratio as a signed percentage: 1.04 is "+4%".
fn percent(ratio: f64) -> String {
    if ratio.is_finite() {
        format!("{:+.0}%", (ratio - 1.0) * 100.0)
    } else {
        "+∞".to_owned()
    }
}

/// An interval's upper end in ms, "∞" when the data cannot bound it yet.
fn upper_ms(ms: f64) -> String {
    if ms.is_finite() {
        format!("{ms:.1}")
    } else {
        "∞".to_owned()
    }
}

/// The evidence each kernel gate carries from the rollout's finished steps, by gate name.
pub type Carried = BTreeMap<String, Evidence>;

/// The evidence of a judgement's readings, by gate (those that carry any), under `prefix`
/// (a release group's service, `name/`, or nothing).
#[must_use]
pub fn evidence_of(readings: &[GateReading], prefix: &str) -> Carried {
    readings
        .iter()
        .filter_map(|r| r.evidence.map(|e| (format!("{prefix}{}", r.gate), e)))
        .collect()
}

/// `carried` with `step` added, gate by gate: what the rollout carries once a step's window
/// ends (its step advanced, or its window started again after a resume or a restart).
#[must_use]
pub fn folded(carried: &Carried, step: &Carried) -> Carried {
    let mut sum = carried.clone();
    for (gate, evidence) in step {
        let total = sum.entry(gate.clone()).or_default();
        *total = total.plus(*evidence);
    }
    sum
}

/// What a gate measured in the window: its reading for operators, and its evidence.
struct Measured {
    /// The estimate and its interval (`median 5.2 ms vs live 5.0 ms: +4% [-2%, +9%]`).
    text: String,
    /// The threshold as the reasons say it (`+10%`, `5.00%`).
    threshold: String,
    /// This window's evidence of a regression past the threshold.
    evidence: Evidence,
    numbers: Vec<(&'static str, f64)>,
}

/// What every kernel gate of one judgement shares.
struct Judge<'a> {
    alpha: f64,
    advance: Advance,
    enough: bool,
    carried: &'a Carried,
    /// The live window is this step's own, not the reference from an earlier step.
    fresh_live: bool,
}

impl Judge<'_> {
    /// A gate's reading: it fails once the evidence of the rollout's finished steps and of this
    /// window crosses the boundary; with `advance = "shown_no_worse"` it passes only once the
    /// opposite evidence does. A gate `relative` to the live pool, judged against the reference
    /// window of an earlier step (whose data the carried evidence already holds), is judged on
    /// this window alone, and its evidence is not carried on.
    fn reading(
        &self,
        gate: &str,
        relative: bool,
        limit: String,
        measured: Option<Measured>,
        missing: &str,
    ) -> GateReading {
        let independent = self.fresh_live || !relative;
        let carried = if independent {
            self.carried.get(gate).copied().unwrap_or_default()
        } else {
            Evidence::default()
        };
        let Some(m) = measured else {
            return GateReading {
                gate: gate.to_owned(),
                limit,
                value: None,
                state: GateState::Waiting(self.enough.then(|| missing.to_owned())),
                numbers: Vec::new(),
                evidence: None,
            };
        };
        let total = carried.plus(m.evidence);
        let needed = stats::needed(total.information, self.alpha);
        let shown = format!("{}; evidence z {:.1} of {needed:.1}", m.text, total.z());
        let against = Evidence {
            score: -total.score,
            ..total
        };
        let state = if !self.enough {
            GateState::Waiting(None)
        } else if total.convincing(self.alpha) {
            GateState::Fail(format!("{} > {}", m.text, m.threshold))
        } else if self.advance == Advance::ShownNoWorse && !against.convincing(self.alpha) {
            GateState::Waiting(Some(format!("{}: not yet shown ≤ {}", m.text, m.threshold)))
        } else {
            GateState::Pass
        };
        let mut numbers = m.numbers;
        numbers.push(("evidence_z", total.z()));
        numbers.push(("needed_z", needed));
        GateReading {
            gate: gate.to_owned(),
            limit,
            value: Some(shown),
            state,
            numbers,
            evidence: independent.then_some(m.evidence),
        }
    }
}

/// The kernel gates' states in one window of the current step: the candidate's window against
/// the gates and, for relative gates, the live pool's (see [`live_reference`]), each with the
/// evidence `carried` from the rollout's finished steps. Below `min_samples` every other gate
/// waits.
#[must_use]
pub fn kernel_gates(
    gates: &Gates,
    candidate: &Window,
    live: &Window,
    reference: Option<&Window>,
    carried: &Carried,
) -> Vec<GateReading> {
    let needed = gates.min_samples.max(1);
    let enough = candidate.requests >= needed;
    let alpha = gates.gate_alpha();
    let judge = Judge {
        alpha,
        advance: gates.advance,
        enough,
        carried,
        fresh_live: live_enough(gates, live),
    };
    let live = live_reference(gates, live, reference);
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
                "hold: {} of {needed} requests on the candidate",
                candidate.requests
            )))
        },
        evidence: None,
    }];
    let pct = |v: f64| v * 100.0;
    if let Some(max) = gates.max_error_rate {
        let measured = one_proportion(candidate.errors, candidate.requests, max).map(|(z, n)| {
            let rate = candidate.error_rate().unwrap_or(0.0);
            let (lo, hi) =
                share_interval(candidate.errors, candidate.requests, alpha).unwrap_or((0.0, 1.0));
            Measured {
                text: format!(
                    "error rate {:.2}% [{:.2}%, {:.2}%]",
                    pct(rate),
                    pct(lo),
                    pct(hi)
                ),
                threshold: format!("{:.2}%", pct(max)),
                evidence: Evidence::of(z, n),
                numbers: vec![
                    ("limit_ratio", max),
                    ("value_ratio", rate),
                    ("interval_low", lo),
                    ("interval_high", hi),
                ],
            }
        });
        readings.push(judge.reading(
            "max_error_rate",
            false,
            format!("≤ {:.2}%", pct(max)),
            measured,
            "no requests on the candidate",
        ));
    }
    if let Some(max) = gates.max_error_increase {
        let measured = live.and_then(|l| {
            let (z, info) = two_proportions(
                candidate.errors,
                candidate.requests,
                l.errors,
                l.requests,
                max,
            )?;
            let (c, r) = (candidate.error_rate()?, l.error_rate()?);
            let (lo, hi) = difference_interval(
                candidate.errors,
                candidate.requests,
                l.errors,
                l.requests,
                alpha,
            )?;
            Some(Measured {
                text: format!(
                    "errors {:.2}% vs live {:.2}%: {:+.2} pp [{:+.2}, {:+.2}]",
                    pct(c),
                    pct(r),
                    pct(c - r),
                    pct(lo),
                    pct(hi)
                ),
                threshold: format!("+{:.2} pp", pct(max)),
                evidence: Evidence::of(z, info),
                numbers: vec![
                    ("limit_ratio", max),
                    ("value_ratio", c - r),
                    ("interval_low", lo),
                    ("interval_high", hi),
                ],
            })
        });
        readings.push(judge.reading(
            "max_error_increase",
            true,
            format!("≤ +{:.2} pp", pct(max)),
            measured,
            "no live error rate measured yet to compare with",
        ));
    }
    if let Some(max) = gates.max_p99_ms {
        let measured = candidate.p99_ms().and_then(|p99| {
            let above = latency::count_above(&candidate.latency, max * 1_000.0);
            let (z, info) = one_proportion(above, candidate.latency.total(), 0.01)?;
            let (lo, hi) = candidate.quantile_bounds_ms(0.99, alpha)?;
            Some(Measured {
                text: format!("p99 {p99:.1} ms [{lo:.1}, {}]", upper_ms(hi)),
                threshold: format!("{max:.1} ms"),
                evidence: Evidence::of(z, info),
                numbers: vec![
                    ("limit_ms", max),
                    ("value_ms", p99),
                    ("interval_low", lo),
                    ("interval_high", hi),
                ],
            })
        });
        readings.push(judge.reading(
            "max_p99_ms",
            false,
            format!("≤ {max:.1} ms"),
            measured,
            "no response time measured on the candidate",
        ));
    }
    for (gate, name, q, ratio) in [
        (
            "max_median_vs_live",
            "median",
            0.5,
            gates.max_median_vs_live,
        ),
        ("max_p99_vs_live", "p99", 0.99, gates.max_p99_vs_live),
    ] {
        if let Some(ratio) = ratio {
            let floor = gates.min_latency_increase_ms;
            let measured =
                live.and_then(|l| versus_live(name, q, (ratio, floor), alpha, candidate, l));
            readings.push(judge.reading(
                gate,
                true,
                format!("≤ {} and +{floor:.2} ms", percent(ratio)),
                measured,
                "no live response times measured yet to compare with",
            ));
        }
    }
    readings
}

/// A latency quantile of the candidate against the live pool's: the ratio of the two, with an
/// interval from each one's bounds (α/2 each), and the evidence that the candidate is slower
/// than allowed (`ratio` × the live pool, and at least `floor_ms` more): at the median, a
/// Mann-Whitney test of the candidate against the live pool's times moved to the allowed
/// ones; in the tail, the share of the candidate's requests above the allowed time for the
/// live pool's quantile against the live pool's share above it.
fn versus_live(
    name: &str,
    q: f64,
    (ratio, floor_ms): (f64, f64),
    alpha: f64,
    candidate: &Window,
    live: &Window,
) -> Option<Measured> {
    let half = alpha / 2.0;
    let (c, l) = (candidate.quantile_ms(q)?, live.quantile_ms(q)?);
    if l <= 0.0 {
        return None;
    }
    let ((c_lo, c_hi), (l_lo, l_hi)) = (
        candidate.quantile_bounds_ms(q, half)?,
        live.quantile_bounds_ms(q, half)?,
    );
    let interval = (
        c_lo / l_hi,
        if l_lo > 0.0 {
            c_hi / l_lo
        } else {
            f64::INFINITY
        },
    );
    let (z, info) = if q == 0.5 {
        slower_than(&candidate.latency, &live.latency, ratio, floor_ms * 1_000.0)?
    } else {
        two_proportions(
            latency::count_above(
                &candidate.latency,
                allowed_us(l * 1_000.0, ratio, floor_ms * 1_000.0),
            ),
            candidate.latency.total(),
            latency::count_above(&live.latency, l * 1_000.0),
            live.latency.total(),
            0.0,
        )?
    };
    Some(Measured {
        text: format!(
            "{name} {c:.2} ms vs live {l:.2} ms: {} [{}, {}]",
            percent(c / l),
            percent(interval.0),
            percent(interval.1)
        ),
        threshold: format!("{} and +{floor_ms:.2} ms", percent(ratio)),
        evidence: Evidence::of(z, info),
        numbers: vec![
            ("limit_ratio", ratio),
            ("value_ratio", c / l),
            ("interval_low", interval.0),
            ("interval_high", interval.1),
            ("candidate_ms", c),
            ("live_ms", l),
        ],
    })
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
                evidence: None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judge(
        gates: &Gates,
        candidate: &Window,
        live: &Window,
        reference: Option<&Window>,
    ) -> Judgement {
        Judgement::of(&kernel_gates(
            gates,
            candidate,
            live,
            reference,
            &Carried::new(),
        ))
    }

    fn judge_promql(gates: &[PromqlGate], readings: &[Reading]) -> Judgement {
        Judgement::of(&promql_gates(gates, readings))
    }

    fn outcome(judgement: &Judgement) -> &'static str {
        match judgement {
            Judgement::Fail(_) => "fail",
            Judgement::Inconclusive(_) => "hold",
            Judgement::Pass => "pass",
        }
    }

    /// `requests` responses spread evenly over ±20% around `ms`, `errors` of them failed.
    fn window(requests: u64, errors: u64, ms: f64) -> Window {
        let mut latency = Histogram::default();
        for i in 0..requests {
            let spread = 0.8 + 0.4 * (i as f64 + 0.5) / requests as f64;
            latency.buckets[Histogram::bucket((ms * spread * 1_000.0) as u64)] += 1;
        }
        latency.count = requests;
        Window {
            requests,
            errors,
            latency,
        }
    }

    fn gates() -> Gates {
        Gates {
            max_p99_ms: Some(100.0),
            ..Gates::default()
        }
    }

    #[test]
    fn a_breach_fails_even_when_another_gate_lacks_data() {
        let live = window(2_000, 0, 10.0);
        let idle = Window::default();
        let cases = [
            (window(200, 100, 10.0), idle, "fail", "error rate"),
            (window(2_000, 0, 30.0), idle, "hold", "no live"),
            (window(200, 0, 200.0), idle, "fail", "p99"),
            (window(2_000, 0, 10.0), live, "pass", ""),
            (window(2_000, 0, 10.4), live, "pass", ""),
            (window(2_000, 0, 13.0), live, "fail", "median"),
            (window(5, 5, 500.0), live, "hold", "hold: 5 of 20"),
        ];
        for (candidate, live, expected, why) in cases {
            let judgement = judge(&gates(), &candidate, &live, None);
            assert_eq!(outcome(&judgement), expected, "{judgement:?}");
            let text = format!("{judgement:?}");
            assert!(text.contains(why), "{text} should say {why}");
        }
    }

    #[test]
    fn a_gross_error_rate_fails_on_a_small_window() {
        // The demo's green answers 500 to one request in five: 80 requests are enough.
        let live = window(300, 0, 5.0);
        let Judgement::Fail(reasons) = judge(&Gates::default(), &window(80, 16, 5.0), &live, None)
        else {
            panic!("20% errors against none must fail")
        };
        assert!(
            reasons
                .iter()
                .any(|r| r.starts_with("errors 20.00% vs live 0.00%")),
            "{reasons:?}"
        );
        // One error in 30 against none is no evidence of a 1 pp increase.
        assert_eq!(
            judge(&Gates::default(), &window(30, 1, 5.0), &live, None),
            Judgement::Pass
        );
    }

    #[test]
    fn error_rates_are_compared_with_the_live_pools() {
        // A live pool failing 3% of requests: a candidate failing 3.5% is within 1 pp (and
        // within the 5% safety net); one failing 8% is not, on enough requests.
        let live = window(20_000, 600, 5.0);
        assert_eq!(
            judge(&Gates::default(), &window(5_000, 175, 5.0), &live, None),
            Judgement::Pass
        );
        let Judgement::Fail(reasons) =
            judge(&Gates::default(), &window(5_000, 400, 5.0), &live, None)
        else {
            panic!("+5 pp must fail")
        };
        assert_eq!(
            reasons.len(),
            2,
            "the increase and the safety net: {reasons:?}"
        );
        assert!(reasons[1].contains("> +1.00 pp"), "{reasons:?}");
    }

    #[test]
    fn a_latency_regression_fails_only_past_the_allowed_effect() {
        let gates = Gates::default();
        let live = window(5_000, 0, 5.0);
        // +5% is within the 10% allowed at the median, whatever the data.
        assert_eq!(
            judge(&gates, &window(5_000, 0, 5.25), &live, None),
            Judgement::Pass
        );
        // +30%: its whole interval is past +10%.
        let readings = kernel_gates(&gates, &window(5_000, 0, 6.5), &live, None, &Carried::new());
        let median = readings
            .iter()
            .find(|r| r.gate == "max_median_vs_live")
            .expect("the median gate");
        let GateState::Fail(reason) = &median.state else {
            panic!("{median:?}")
        };
        assert!(
            reason.starts_with("median 6.") && reason.ends_with("> +10% and +0.50 ms"),
            "{reason}"
        );
        let number = |name| {
            median
                .numbers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| *v)
        };
        let (low, high) = (
            number("interval_low").expect("low"),
            number("interval_high").expect("high"),
        );
        assert!(
            1.1 < low && low < 1.3 && 1.3 < high && high < 1.45,
            "[{low}, {high}]"
        );
        // The same +30% on 15 requests cannot be told from noise: no failure.
        assert_eq!(
            judge(
                &Gates {
                    min_samples: 10,
                    ..gates.clone()
                },
                &window(15, 0, 6.5),
                &window(15, 0, 5.0),
                None
            ),
            Judgement::Pass
        );
    }

    #[test]
    fn the_strict_mode_advances_only_when_shown_no_worse() {
        let strict = Gates {
            advance: Advance::ShownNoWorse,
            ..Gates::default()
        };
        let few = judge(&strict, &window(40, 0, 5.0), &window(40, 0, 5.0), None);
        assert!(
            matches!(&few, Judgement::Inconclusive(why) if why.contains("not yet shown")),
            "{few:?}"
        );
        assert_eq!(
            judge(
                &strict,
                &window(50_000, 0, 5.0),
                &window(50_000, 0, 5.0),
                None
            ),
            Judgement::Pass
        );
    }

    #[test]
    fn without_live_traffic_the_candidate_is_compared_with_the_last_live_window() {
        let gates = Gates::default();
        let idle = Window::default();
        let reference = window(5_000, 0, 10.0);
        assert_eq!(
            judge(&gates, &window(5_000, 0, 10.2), &idle, Some(&reference)),
            Judgement::Pass
        );
        assert_eq!(
            outcome(&judge(
                &gates,
                &window(5_000, 0, 15.0),
                &idle,
                Some(&reference)
            )),
            "fail"
        );
        let busy = window(5_000, 0, 30.0);
        assert_eq!(
            live_reference(&gates, &busy, Some(&reference)).map(|w| w.requests),
            Some(5_000),
            "a window with enough live traffic wins over the reference"
        );
        assert!(std::ptr::eq(
            live_reference(&gates, &busy, Some(&reference)).expect("live"),
            &busy
        ));
    }

    #[test]
    fn a_step_judged_against_an_earlier_live_window_carries_no_relative_evidence() {
        let gates = Gates::default();
        let reference = window(5_000, 0, 10.0);
        let readings = kernel_gates(
            &gates,
            &window(5_000, 0, 10.2),
            &Window::default(),
            Some(&reference),
            &Carried::new(),
        );
        for reading in &readings {
            let relative =
                reading.gate.ends_with("_vs_live") || reading.gate == "max_error_increase";
            assert_eq!(
                reading.evidence.is_some(),
                !relative && reading.gate != "min_samples",
                "{reading:?}"
            );
        }
        // Carried evidence against the candidate is not added to a reference-judged window.
        let carried: Carried = [(
            "max_median_vs_live".to_owned(),
            Evidence::of(50.0, 10_000.0),
        )]
        .into_iter()
        .collect();
        let judged = kernel_gates(
            &gates,
            &window(5_000, 0, 10.2),
            &Window::default(),
            Some(&reference),
            &carried,
        );
        assert_eq!(Judgement::of(&judged), Judgement::Pass, "{judged:?}");
        let fresh = kernel_gates(&gates, &window(5_000, 0, 10.2), &reference, None, &carried);
        assert_eq!(outcome(&Judgement::of(&fresh)), "fail", "{fresh:?}");
    }

    #[test]
    fn judging_empty_one_sided_or_extreme_windows_never_panics() {
        let gates = gates();
        let mut huge = window(1_000, 0, 5.0);
        huge.latency.buckets[splitter_common::LATENCY_BUCKETS - 1] += 10;
        let windows = [
            Window::default(),
            window(1_000, 1_000, 5.0),
            window(1, 1, 0.0),
            huge,
            Window {
                requests: 1_000,
                errors: 2_000,
                latency: Histogram::default(),
            },
            window(u64::from(u16::MAX), 0, 60_000.0),
        ];
        for candidate in &windows {
            for live in &windows {
                for reference in [None, Some(live)] {
                    let _ = judge(&gates, candidate, live, reference);
                }
            }
        }
        // Only errors: the error gates fail, and nothing is made up for the latency.
        let errors = judge(
            &gates,
            &window(1_000, 1_000, 5.0),
            &window(1_000, 0, 5.0),
            None,
        );
        assert_eq!(outcome(&errors), "fail", "{errors:?}");
    }

    /// A window from sparse bucket counts (any bucket, any count, outliers in the last one).
    fn arbitrary_window(requests: u64, errors: u64, buckets: &[(usize, u32)]) -> Window {
        let mut latency = Histogram::default();
        for (bucket, count) in buckets {
            latency.buckets[bucket % splitter_common::LATENCY_BUCKETS] += u64::from(*count);
        }
        Window {
            requests,
            errors,
            latency,
        }
    }

    proptest::proptest! {
        #[test]
        fn property_any_window_is_judged_without_panic_and_by_the_rules(
            requests in 0u64..100_000,
            errors in 0u64..200_000,
            buckets in proptest::collection::vec((0usize..400, 0u32..100_000), 0..12),
            live_requests in 0u64..100_000,
            live_errors in 0u64..100_000,
            live_buckets in proptest::collection::vec((0usize..400, 0u32..100_000), 0..12),
            min_samples in 0u64..1_000,
            confidence in 0.5f64..0.9999,
            strict in proptest::prelude::any::<bool>(),
        ) {
            let gates = Gates {
                min_samples,
                confidence,
                max_p99_ms: Some(50.0),
                advance: if strict { Advance::ShownNoWorse } else { Advance::NoRegression },
                ..Gates::default()
            };
            let candidate = arbitrary_window(requests, errors, &buckets);
            let live = arbitrary_window(live_requests, live_errors, &live_buckets);
            let none = Carried::new();
            let judgement = Judgement::of(&kernel_gates(&gates, &candidate, &live, None, &none));
            // Below min_samples nothing is judged: the step holds.
            if requests < min_samples.max(1) {
                proptest::prop_assert!(matches!(judgement, Judgement::Inconclusive(_)), "{judgement:?}");
            }
            // The candidate judged against itself never fails on latency or on the increase.
            let same = kernel_gates(&gates, &candidate, &candidate, None, &none);
            for reading in same.iter().filter(|r| r.gate.ends_with("_vs_live") || r.gate == "max_error_increase") {
                proptest::prop_assert!(!matches!(reading.state, GateState::Fail(_)), "{reading:?}");
            }
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
            evidence: None,
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
    fn a_window_is_the_difference_of_two_snapshots() {
        let mut before = Snapshot::default();
        before.counters.responses = 100;
        before.counters.http_status[5] = 2;
        let (fast, slow) = (Histogram::bucket(5_000), Histogram::bucket(40_000));
        before.response.buckets[fast] = 100;
        let mut after = before;
        after.counters.responses = 200;
        after.counters.http_status[5] = 12;
        after.counters.backend_resets = 5;
        after.response.buckets[fast] = 190;
        after.response.buckets[slow] = 10;
        let w = Window::between(&before, &after);
        assert_eq!(
            (w.requests, w.errors),
            (105, 15),
            "responses + resets; 5xx + resets"
        );
        // 90 at 5 ms, 10 at 40 ms: p99 is in the slow bucket, [36.9, 40.96) ms.
        assert!(w.p99_ms().is_some_and(|p| p > 36.8 && p < 41.0), "{w:?}");
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
