//! Rollout plans: what a request or the config asks for (`PlanRequest`, every field optional),
//! and the validated `Plan` with its gates that the engine runs on.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::promql::{Prometheus, PrometheusAuth, PrometheusKeys, PromqlError, PromqlGate};
use crate::model::units;

/// What is wrong with a plan.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PlanError {
    #[error("step {0} is not a percentage from 0.01 to 100 with at most two decimals")]
    Step(f64),
    #[error("steps must rise")]
    StepsFall,
    #[error("the last step must be 100")]
    LastStep,
    #[error("{what} {value} ms is outside {}..={} ms", range.start(), range.end())]
    Duration {
        what: &'static str,
        value: u64,
        range: std::ops::RangeInclusive<u64>,
    },
    #[error("{what} {value} is not between 0 and 1")]
    Fraction { what: &'static str, value: f64 },
    #[error("{what} {value} must be a positive number")]
    Positive { what: &'static str, value: f64 },
    #[error("{what} {value} must be a ratio from 1 (as fast as the live pool) to 1000000")]
    Ratio { what: &'static str, value: f64 },
    #[error("min_latency_increase_ms {0} is outside 0..=60000")]
    LatencyFloor(f64),
    #[error("confidence {0} is outside 0.5..=0.9999")]
    Confidence(f64),
    #[error("failure_limit {0} is outside 1..=10")]
    FailureLimit(u32),
    #[error(transparent)]
    Promql(#[from] PromqlError),
    #[error("two PromQL gates are named `{0}`")]
    DuplicateGate(String),
    #[error("PromQL gates need `prometheus_url`")]
    NoPrometheus,
}

/// When a candidate is good enough. Each gate but `min_samples` and `max_divergence` is judged
/// on evidence accumulated over the rollout against an anytime-valid boundary (see
/// `engine::gates` and `engine::stats`).
#[derive(Clone, Debug, PartialEq)]
pub struct Gates {
    /// Errors (5xx, backend resets, refused handshakes) over requests, at most: the safety net
    /// whatever the live pool does.
    pub max_error_rate: Option<f64>,
    /// The candidate's error rate minus the live pool's, at most (0.01 = one percentage point).
    pub max_error_increase: Option<f64>,
    /// The candidate's p99 response time, at most, in milliseconds.
    pub max_p99_ms: Option<f64>,
    /// The candidate's median response time over the live pool's, at most.
    pub max_median_vs_live: Option<f64>,
    /// The candidate's p99 over the live pool's p99 in the same window, at most.
    pub max_p99_vs_live: Option<f64>,
    /// A latency regression must also exceed this many milliseconds: a version 20% slower at
    /// 0.1 ms (a colder cache on less traffic) is not one operators act on.
    pub min_latency_increase_ms: f64,
    /// Requests the candidate must have served in a window before it is judged.
    pub min_samples: u64,
    /// How far the spread of the candidate's clients over network prefixes may diverge from
    /// the live pool's (0 to 1) before the step holds (see `representativeness`).
    pub max_divergence: Option<f64>,
    /// The chance that a rollout of a candidate within every threshold is rolled back by the
    /// kernel gates is at most 1 − confidence, however long the rollout runs.
    pub confidence: f64,
    /// When a step may advance at the end of its hold.
    pub advance: Advance,
}

/// When a step may advance at the end of its hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Advance {
    /// When no gate found a regression on at least `min_samples` requests.
    #[default]
    NoRegression,
    /// Only when every gate's interval shows the candidate within its threshold.
    ShownNoWorse,
}

/// Which latency the kernel's latency gates judge.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JudgedLatency {
    /// A request's first byte to its response's first byte (headers); an HTTP/2 call's HEADERS
    /// to the server's first HEADERS on its stream.
    FirstByte,
    /// To the response's first body byte: a streamed response's first token (its headers come
    /// at once), any other response's first byte; an HTTP/2 call's first DATA.
    #[default]
    FirstToken,
    /// To the response's last byte: a chunked response's last chunk, an HTTP/2 call's
    /// END_STREAM (a response with a `Content-Length` body is not measured).
    Whole,
}

impl JudgedLatency {
    #[must_use]
    pub const fn kind(self) -> splitter_common::LatencyKind {
        use splitter_common::LatencyKind as K;
        match self {
            Self::FirstByte => K::Response,
            Self::FirstToken => K::FirstToken,
            Self::Whole => K::Whole,
        }
    }

    #[must_use]
    pub const fn describe(self) -> &'static str {
        match self {
            Self::FirstByte => "time to first byte",
            Self::FirstToken => "time to first token (first body byte)",
            Self::Whole => "time to last byte",
        }
    }
}

impl Gates {
    /// The gates judged with an interval, among which a window's false-alarm budget is split.
    #[must_use]
    pub fn statistical_gates(&self) -> usize {
        [
            self.max_error_rate,
            self.max_error_increase,
            self.max_p99_ms,
            self.max_median_vs_live,
            self.max_p99_vs_live,
        ]
        .iter()
        .filter(|g| g.is_some())
        .count()
    }

    /// These gates with their false-alarm budget shared among `parts` judgements (a release
    /// group's stack and each of its services).
    #[must_use]
    pub fn sharing_budget(&self, parts: usize) -> Self {
        Self {
            confidence: 1.0 - (1.0 - self.confidence) / parts.max(1) as f64,
            ..self.clone()
        }
    }

    /// Each statistical gate's false-alarm budget over the whole rollout: 1 − confidence,
    /// split evenly among them.
    #[must_use]
    pub fn gate_alpha(&self) -> f64 {
        (1.0 - self.confidence) / self.statistical_gates().max(1) as f64
    }
}

impl Default for Gates {
    fn default() -> Self {
        Self {
            max_error_rate: Some(0.05),
            max_error_increase: Some(0.01),
            max_p99_ms: None,
            max_median_vs_live: Some(1.1),
            max_p99_vs_live: Some(1.2),
            min_latency_increase_ms: 0.5,
            min_samples: 20,
            max_divergence: None,
            confidence: 0.99,
            advance: Advance::NoRegression,
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
    /// The start of each step left out of the judgement (new processes fill caches).
    pub warmup: Duration,
    /// How often the gates judge.
    pub interval: Duration,
    pub gates: Gates,
    /// Failing windows in a row that roll back.
    pub failure_limit: u32,
    /// Where the PromQL gates are queried; set whenever `promql` is not empty.
    pub prometheus: Option<Prometheus>,
    /// Gates on application signals, judged beside the kernel's.
    pub promql: Vec<PromqlGate>,
    /// The operator's acknowledgement that the kernel judges only L4 signals (connections,
    /// resets, refused handshakes, handshake time): the kernel gates read those instead of
    /// requests, for a service whose requests it cannot read (TLS).
    pub l4_only: bool,
    /// The latency the kernel's latency gates judge.
    pub latency: JudgedLatency,
}

impl Default for Plan {
    fn default() -> Self {
        Self {
            steps: vec![100, 500, 2_500, 5_000, 10_000],
            hold: Duration::from_secs(60),
            warmup: Duration::ZERO,
            interval: Duration::from_secs(10),
            gates: Gates::default(),
            failure_limit: 2,
            prometheus: None,
            promql: Vec::new(),
            l4_only: false,
            latency: JudgedLatency::default(),
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_ms: Option<u64>,
    pub interval_ms: Option<u64>,
    pub max_error_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_increase: Option<f64>,
    pub max_p99_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_median_vs_live: Option<f64>,
    pub max_p99_vs_live: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_latency_increase_ms: Option<f64>,
    pub min_samples: Option<u64>,
    /// 0.5 to 0.9999: at most 1 − confidence of healthy rollouts are rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advance: Option<Advance>,
    /// The representativeness gate: 0 to 1, off when absent.
    pub max_divergence: Option<f64>,
    pub failure_limit: Option<u32>,
    /// `http[s]://host:port[/prefix]` of the Prometheus server the PromQL gates query.
    pub prometheus_url: Option<String>,
    /// The certificate authorities (PEM) to trust for an `https://` `prometheus_url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus_ca_file: Option<String>,
    /// Basic auth: the user, and the file holding the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus_user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus_password_file: Option<String>,
    /// A bearer token's file, instead of basic auth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus_token_file: Option<String>,
    pub promql_gates: Option<Vec<PromqlGate>>,
    /// Judge on L4 signals only (see `Plan::l4_only`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l4_only: Option<bool>,
    /// The latency the kernel's latency gates judge (`first_token` by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<JudgedLatency>,
}

impl PlanRequest {
    /// This plan with every field that `overrides` sets taken from it (the config's plan,
    /// overridden from the command line).
    #[must_use]
    pub fn overridden_by(self, overrides: Self) -> Self {
        // Credentials and a CA configured for one Prometheus never go to another: a request
        // that names another server brings its own or none.
        let same_server = overrides
            .prometheus_url
            .as_ref()
            .is_none_or(|url| Some(url) == self.prometheus_url.as_ref());
        let (ca_file, user, password_file, token_file) = if same_server {
            (
                self.prometheus_ca_file,
                self.prometheus_user,
                self.prometheus_password_file,
                self.prometheus_token_file,
            )
        } else {
            (None, None, None, None)
        };
        Self {
            steps: overrides.steps.or(self.steps),
            hold_ms: overrides.hold_ms.or(self.hold_ms),
            warmup_ms: overrides.warmup_ms.or(self.warmup_ms),
            interval_ms: overrides.interval_ms.or(self.interval_ms),
            max_error_rate: overrides.max_error_rate.or(self.max_error_rate),
            max_error_increase: overrides.max_error_increase.or(self.max_error_increase),
            max_p99_ms: overrides.max_p99_ms.or(self.max_p99_ms),
            max_median_vs_live: overrides.max_median_vs_live.or(self.max_median_vs_live),
            max_p99_vs_live: overrides.max_p99_vs_live.or(self.max_p99_vs_live),
            min_latency_increase_ms: overrides
                .min_latency_increase_ms
                .or(self.min_latency_increase_ms),
            min_samples: overrides.min_samples.or(self.min_samples),
            confidence: overrides.confidence.or(self.confidence),
            advance: overrides.advance.or(self.advance),
            max_divergence: overrides.max_divergence.or(self.max_divergence),
            failure_limit: overrides.failure_limit.or(self.failure_limit),
            prometheus_url: overrides.prometheus_url.or(self.prometheus_url),
            prometheus_ca_file: overrides.prometheus_ca_file.or(ca_file),
            prometheus_user: overrides.prometheus_user.or(user),
            prometheus_password_file: overrides.prometheus_password_file.or(password_file),
            prometheus_token_file: overrides.prometheus_token_file.or(token_file),
            promql_gates: overrides.promql_gates.or(self.promql_gates),
            l4_only: overrides.l4_only.or(self.l4_only),
            latency: overrides.latency.or(self.latency),
        }
    }

    /// The keys naming files the daemon would read (as root) when it queries Prometheus.
    #[must_use]
    pub fn file_keys(&self) -> Vec<&'static str> {
        [
            ("prometheus_ca_file", self.prometheus_ca_file.is_some()),
            (
                "prometheus_password_file",
                self.prometheus_password_file.is_some(),
            ),
            (
                "prometheus_token_file",
                self.prometheus_token_file.is_some(),
            ),
        ]
        .into_iter()
        .filter_map(|(key, set)| set.then_some(key))
        .collect()
    }

    /// The plan, or what is wrong with the request.
    pub fn into_plan(self) -> Result<Plan, PlanError> {
        let defaults = Plan::default();
        let steps = match self.steps {
            None => defaults.steps,
            Some(steps) => {
                let bp: Vec<u16> = steps
                    .iter()
                    .map(|p| {
                        let bp = (p * 100.0).round();
                        if !(1.0..=10_000.0).contains(&bp) || (bp - p * 100.0).abs() > 1e-6 {
                            Err(PlanError::Step(*p))
                        } else {
                            Ok(bp as u16)
                        }
                    })
                    .collect::<Result<_, _>>()?;
                if bp.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(PlanError::StepsFall);
                }
                if bp.last() != Some(&10_000) {
                    return Err(PlanError::LastStep);
                }
                bp
            }
        };
        let ms = |v: Option<u64>,
                  default: Duration,
                  range: std::ops::RangeInclusive<u64>,
                  what: &'static str| match v {
            None => Ok(default),
            Some(v) if range.contains(&v) => Ok(Duration::from_millis(v)),
            Some(value) => Err(PlanError::Duration { what, value, range }),
        };
        let hold = ms(self.hold_ms, defaults.hold, 0..=86_400_000, "hold")?;
        let warmup = ms(
            self.warmup_ms,
            defaults.warmup,
            0..=units::millis(hold),
            "warmup (at most the hold)",
        )?;
        let interval = ms(
            self.interval_ms,
            defaults.interval,
            100..=600_000,
            "interval",
        )?;
        let fraction = |v: Option<f64>, default: Option<f64>, what: &'static str| match v {
            None => Ok(default),
            Some(v) if (0.0..=1.0).contains(&v) => Ok(Some(v)),
            Some(value) => Err(PlanError::Fraction { what, value }),
        };
        let positive = |v: Option<f64>, default: Option<f64>, what: &'static str| match v {
            None => Ok(default),
            Some(v) if v > 0.0 && v.is_finite() => Ok(Some(v)),
            Some(value) => Err(PlanError::Positive { what, value }),
        };
        // A latency ratio under 1 would fail a candidate as fast as the live pool.
        let ratio = |v: Option<f64>, default: Option<f64>, what: &'static str| match v {
            None => Ok(default),
            Some(v) if (1.0..=1_000_000.0).contains(&v) => Ok(Some(v)),
            Some(value) => Err(PlanError::Ratio { what, value }),
        };
        let gates = Gates {
            max_error_rate: fraction(
                self.max_error_rate,
                defaults.gates.max_error_rate,
                "max_error_rate",
            )?,
            max_error_increase: fraction(
                self.max_error_increase,
                defaults.gates.max_error_increase,
                "max_error_increase",
            )?,
            max_p99_ms: positive(self.max_p99_ms, defaults.gates.max_p99_ms, "max_p99_ms")?,
            max_median_vs_live: ratio(
                self.max_median_vs_live,
                defaults.gates.max_median_vs_live,
                "max_median_vs_live",
            )?,
            max_p99_vs_live: ratio(
                self.max_p99_vs_live,
                defaults.gates.max_p99_vs_live,
                "max_p99_vs_live",
            )?,
            min_latency_increase_ms: match self.min_latency_increase_ms {
                None => defaults.gates.min_latency_increase_ms,
                Some(ms) if (0.0..=60_000.0).contains(&ms) => ms,
                Some(value) => return Err(PlanError::LatencyFloor(value)),
            },
            min_samples: self.min_samples.unwrap_or(defaults.gates.min_samples),
            max_divergence: fraction(
                self.max_divergence,
                defaults.gates.max_divergence,
                "max_divergence",
            )?,
            confidence: match self.confidence {
                None => defaults.gates.confidence,
                Some(c) if (0.5..=0.9999).contains(&c) => c,
                Some(value) => return Err(PlanError::Confidence(value)),
            },
            advance: self.advance.unwrap_or_default(),
        };
        let failure_limit = match self.failure_limit {
            None => defaults.failure_limit,
            Some(n) if (1..=10).contains(&n) => n,
            Some(n) => return Err(PlanError::FailureLimit(n)),
        };
        let promql = self.promql_gates.unwrap_or_default();
        for (i, gate) in promql.iter().enumerate() {
            gate.validate()?;
            if promql[..i].iter().any(|g| g.name == gate.name) {
                return Err(PlanError::DuplicateGate(gate.name.clone()));
            }
        }
        let prometheus = self
            .prometheus_url
            .as_deref()
            .map(|url| {
                Prometheus::new(PrometheusKeys {
                    url,
                    ca_file: self.prometheus_ca_file.as_deref(),
                    user: self.prometheus_user.as_deref(),
                    password_file: self.prometheus_password_file.as_deref(),
                    token_file: self.prometheus_token_file.as_deref(),
                })
            })
            .transpose()?;
        if !promql.is_empty() && prometheus.is_none() {
            return Err(PlanError::NoPrometheus);
        }
        Ok(Plan {
            steps,
            hold,
            warmup,
            interval,
            gates,
            failure_limit,
            prometheus,
            promql,
            l4_only: self.l4_only.unwrap_or(false),
            latency: self.latency.unwrap_or_default(),
        })
    }
}

impl From<&Plan> for PlanRequest {
    fn from(plan: &Plan) -> Self {
        let path = |p: &std::path::PathBuf| Some(p.display().to_string());
        let (user, password_file, token_file) = match plan.prometheus.as_ref().map(|p| &p.auth) {
            None | Some(PrometheusAuth::None) => (None, None, None),
            Some(PrometheusAuth::Basic {
                user,
                password_file,
            }) => (Some(user.clone()), path(password_file), None),
            Some(PrometheusAuth::Bearer { token_file }) => (None, None, path(token_file)),
        };
        Self {
            steps: Some(
                plan.steps
                    .iter()
                    .map(|bp| crate::model::share::percent_of(*bp))
                    .collect(),
            ),
            hold_ms: Some(units::millis(plan.hold)),
            warmup_ms: Some(units::millis(plan.warmup)),
            interval_ms: Some(units::millis(plan.interval)),
            max_error_rate: plan.gates.max_error_rate,
            max_error_increase: plan.gates.max_error_increase,
            max_p99_ms: plan.gates.max_p99_ms,
            max_median_vs_live: plan.gates.max_median_vs_live,
            max_p99_vs_live: plan.gates.max_p99_vs_live,
            min_latency_increase_ms: Some(plan.gates.min_latency_increase_ms),
            min_samples: Some(plan.gates.min_samples),
            confidence: Some(plan.gates.confidence),
            advance: Some(plan.gates.advance),
            max_divergence: plan.gates.max_divergence,
            failure_limit: Some(plan.failure_limit),
            prometheus_url: plan.prometheus.as_ref().map(|p| p.url.to_string()),
            prometheus_ca_file: plan
                .prometheus
                .as_ref()
                .and_then(|p| p.ca_file.as_ref())
                .and_then(path),
            prometheus_user: user,
            prometheus_password_file: password_file,
            prometheus_token_file: token_file,
            promql_gates: (!plan.promql.is_empty()).then(|| plan.promql.clone()),
            l4_only: plan.l4_only.then_some(true),
            latency: Some(plan.latency),
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
                proptest::prop_assert!(!reason.to_string().is_empty());
            }
        }
    }

    #[test]
    fn the_judgement_keys_are_checked() {
        let plan = |request: PlanRequest| request.into_plan();
        let ok = plan(PlanRequest {
            hold_ms: Some(10_000),
            warmup_ms: Some(2_000),
            max_error_increase: Some(0.005),
            max_median_vs_live: Some(1.05),
            confidence: Some(0.999),
            advance: Some(Advance::ShownNoWorse),
            ..PlanRequest::default()
        })
        .expect("a good plan");
        assert_eq!(ok.warmup, Duration::from_secs(2));
        assert_eq!(ok.gates.max_median_vs_live, Some(1.05));
        assert_eq!(ok.gates.advance, Advance::ShownNoWorse);
        // The plan as saved reads back the same.
        assert_eq!(PlanRequest::from(&ok).into_plan().as_ref(), Ok(&ok));
        let refused = [
            (
                PlanRequest {
                    max_median_vs_live: Some(0.9),
                    ..PlanRequest::default()
                },
                "max_median_vs_live 0.9 must be a ratio from 1",
            ),
            (
                PlanRequest {
                    confidence: Some(1.0),
                    ..PlanRequest::default()
                },
                "confidence 1 is outside 0.5..=0.9999",
            ),
            (
                PlanRequest {
                    hold_ms: Some(1_000),
                    warmup_ms: Some(2_000),
                    ..PlanRequest::default()
                },
                "warmup (at most the hold) 2000 ms is outside 0..=1000 ms",
            ),
            (
                PlanRequest {
                    max_error_increase: Some(-0.01),
                    ..PlanRequest::default()
                },
                "max_error_increase -0.01 is not between 0 and 1",
            ),
        ];
        for (request, reason) in refused {
            let error = plan(request).expect_err(reason).to_string();
            assert!(error.starts_with(reason), "{error}");
        }
        assert!(
            serde_json::from_str::<PlanRequest>(r#"{"advance":"sometimes"}"#).is_err(),
            "an unknown advance mode is refused"
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
        for request in [
            PlanRequest {
                prometheus_url: Some("http://127.0.0.1:9090".to_owned()),
                promql_gates: Some(vec![gate("lowconf")]),
                ..PlanRequest::default()
            },
            PlanRequest {
                prometheus_url: Some("https://prometheus.example:9090/prom".to_owned()),
                prometheus_ca_file: Some("/etc/splitter/prometheus-ca.pem".to_owned()),
                prometheus_user: Some("splitter".to_owned()),
                prometheus_password_file: Some("/etc/splitter/prometheus-password".to_owned()),
                promql_gates: Some(vec![gate("lowconf")]),
                ..PlanRequest::default()
            },
            PlanRequest {
                prometheus_url: Some("https://prometheus.example".to_owned()),
                prometheus_token_file: Some("/etc/splitter/prometheus-token".to_owned()),
                promql_gates: Some(vec![gate("lowconf")]),
                ..PlanRequest::default()
            },
        ] {
            let plan = request.into_plan().expect("valid");
            assert_eq!(plan.promql.len(), 1);
            let saved = serde_json::to_string(&PlanRequest::from(&plan)).expect("json");
            let again: PlanRequest = serde_json::from_str(&saved).expect("parse");
            assert_eq!(again.into_plan().expect("valid"), plan);
        }
    }

    #[test]
    fn credentials_for_one_prometheus_never_go_to_another() {
        let configured = PlanRequest {
            prometheus_url: Some("https://prometheus.internal:9090".to_owned()),
            prometheus_ca_file: Some("/etc/splitter/ca.pem".to_owned()),
            prometheus_user: Some("splitter".to_owned()),
            prometheus_password_file: Some("/etc/splitter/password".to_owned()),
            ..PlanRequest::default()
        };
        let same = configured.clone().overridden_by(PlanRequest {
            steps: Some(vec![10.0, 100.0]),
            ..PlanRequest::default()
        });
        assert_eq!(
            same.prometheus_password_file,
            configured.prometheus_password_file
        );
        let elsewhere = configured.clone().overridden_by(PlanRequest {
            prometheus_url: Some("http://198.18.9.9:9090".to_owned()),
            ..PlanRequest::default()
        });
        assert_eq!(
            (
                elsewhere.prometheus_ca_file,
                elsewhere.prometheus_user,
                elsewhere.prometheus_password_file
            ),
            (None, None, None)
        );
        assert_eq!(
            configured.file_keys(),
            ["prometheus_ca_file", "prometheus_password_file"]
        );
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
                    prometheus_url: Some("ftp://127.0.0.1:9090".to_owned()),
                    ..PlanRequest::default()
                },
                "must start with http:// or https://",
            ),
        ] {
            let error = request.into_plan().expect_err("invalid").to_string();
            assert!(error.contains(expected), "{error}");
        }
    }
}
