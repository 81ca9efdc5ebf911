//! Rollout plans: what a request or the config asks for (`PlanRequest`, every field optional),
//! and the validated `Plan` with its gates that the engine runs on.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::promql::{PrometheusUrl, PromqlGate};

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
                    .map(|bp| crate::model::share::percent_of(*bp))
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

#[cfg(test)]
mod tests {
    use super::*;

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
