//! Judgement accuracy: simulated rollouts through the engine's own gates and step logic
//! (`kernel_gates`, `Judgement::of`, `Rollout::on_judgement`, the kernel's histogram buckets),
//! fed latencies and errors drawn from realistic shapes, beside a reference judge like
//! Kayenta's (a fixed-horizon Mann-Whitney U test at 98% confidence with an effect-size floor,
//! judged once at the end of each step's hold) on the same draws.

use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use splitter_common::Histogram;
use splitter_ctl::{
    engine::{
        gates::{Carried, Judgement, Window, evidence_of, folded, kernel_gates, live_reference},
        rollout::{Decision, Rollout},
    },
    model::plan::Plan,
};

/// splitmix64: seeded, so every run draws the same rollouts.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1).
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// Poisson with mean `mean` (normal approximation past 50).
    fn poisson(&mut self, mean: f64) -> u64 {
        if mean > 50.0 {
            return (mean + mean.sqrt() * self.normal()).round().max(0.0) as u64;
        }
        let limit = (-mean).exp();
        let (mut k, mut p) = (0, self.uniform());
        while p > limit {
            k += 1;
            p *= self.uniform();
        }
        k
    }
}

/// How a version's response times are spread.
#[derive(Clone, Copy)]
enum Shape {
    /// Lognormal: a median and the sigma of its log.
    LogNormal { median_ms: f64, sigma: f64 },
    /// Two modes (a cache hit and a miss): `slow_share` of requests at `slow_ms`.
    Bimodal {
        fast_ms: f64,
        slow_ms: f64,
        slow_share: f64,
    },
    /// Pareto-tailed: a lognormal body with `tail_share` of requests drawn from a Pareto
    /// (shape 1.5) from `median_ms` × 3 on.
    HeavyTail { median_ms: f64, tail_share: f64 },
}

impl Shape {
    fn draw(self, rng: &mut Rng) -> f64 {
        match self {
            Self::LogNormal { median_ms, sigma } => median_ms * (sigma * rng.normal()).exp(),
            Self::Bimodal {
                fast_ms,
                slow_ms,
                slow_share,
            } => {
                let centre = if rng.uniform() < slow_share {
                    slow_ms
                } else {
                    fast_ms
                };
                centre * (0.15 * rng.normal()).exp()
            }
            Self::HeavyTail {
                median_ms,
                tail_share,
            } => {
                if rng.uniform() < tail_share {
                    median_ms * 3.0 / rng.uniform().powf(1.0 / 1.5)
                } else {
                    median_ms * (0.3 * rng.normal()).exp()
                }
            }
        }
    }
}

/// One version's behaviour in a scenario.
#[derive(Clone, Copy)]
struct Behaviour {
    shape: Shape,
    /// Latency multiplier applied to every draw (a regression).
    slower: f64,
    /// Share of requests 10× slower (a tail-only regression).
    tail_10x: f64,
    error_rate: f64,
    /// The first seconds of each step are this much slower (a cold cache), decaying linearly.
    warmup: Option<(f64, f64)>,
}

impl Behaviour {
    const fn like(shape: Shape) -> Self {
        Self {
            shape,
            slower: 1.0,
            tail_10x: 0.0,
            error_rate: 0.002,
            warmup: None,
        }
    }

    /// A response time in µs and whether it failed, `step_s` seconds into a step and `total_s`
    /// into the rollout, with `drift` the slow drift both versions share (per hour).
    fn draw(self, rng: &mut Rng, step_s: f64, total_s: f64, drift: f64) -> (u64, bool) {
        let mut ms = self.shape.draw(rng) * self.slower * (1.0 + drift * total_s / 3_600.0);
        if self.tail_10x > 0.0 && rng.uniform() < self.tail_10x {
            ms *= 10.0;
        }
        if let Some((factor, seconds)) = self.warmup
            && step_s < seconds
        {
            ms *= 1.0 + (factor - 1.0) * (1.0 - step_s / seconds);
        }
        ((ms * 1_000.0) as u64, rng.uniform() < self.error_rate)
    }
}

struct Scenario {
    name: &'static str,
    /// The plan's `warmup` for this scenario (both judges skip it: Kayenta has the same
    /// setting, `beginCanaryAnalysisAfterMins`).
    warmup: Duration,
    regression: bool,
    live: Behaviour,
    candidate: Behaviour,
    /// Both versions grow slower by this share per hour.
    drift: f64,
}

fn scenarios() -> Vec<Scenario> {
    let lognormal = Shape::LogNormal {
        median_ms: 20.0,
        sigma: 0.5,
    };
    let base = Behaviour::like(lognormal);
    let same = |name, shape| Scenario {
        name,
        warmup: Duration::ZERO,
        regression: false,
        live: Behaviour::like(shape),
        candidate: Behaviour::like(shape),
        drift: 0.0,
    };
    vec![
        same("A/A, lognormal (median 20 ms, σ 0.5)", lognormal),
        same(
            "A/A, bimodal (80% at 5 ms, 20% at 60 ms)",
            Shape::Bimodal {
                fast_ms: 5.0,
                slow_ms: 60.0,
                slow_share: 0.2,
            },
        ),
        same(
            "A/A, heavy tail (2% Pareto from 60 ms)",
            Shape::HeavyTail {
                median_ms: 20.0,
                tail_share: 0.02,
            },
        ),
        Scenario {
            drift: 0.5,
            ..same("A/A, slow drift (both +50% per hour)", lognormal)
        },
        Scenario {
            name: "A/A, candidate warms up (2× slower, fading over 20 s of each step; `warmup_ms` 20000)",
            warmup: Duration::from_secs(20),
            regression: false,
            live: base,
            candidate: Behaviour {
                warmup: Some((2.0, 20.0)),
                ..base
            },
            drift: 0.0,
        },
        Scenario {
            name: "within the allowance: median +5%, errors +0.5 pp",
            warmup: Duration::ZERO,
            regression: false,
            live: base,
            candidate: Behaviour {
                slower: 1.05,
                error_rate: 0.007,
                ..base
            },
            drift: 0.0,
        },
        Scenario {
            name: "median +20%",
            warmup: Duration::ZERO,
            regression: true,
            live: base,
            candidate: Behaviour {
                slower: 1.2,
                ..base
            },
            drift: 0.0,
        },
        Scenario {
            name: "tail only: 1% of requests 10× slower",
            warmup: Duration::ZERO,
            regression: true,
            live: base,
            candidate: Behaviour {
                tail_10x: 0.01,
                ..base
            },
            drift: 0.0,
        },
        Scenario {
            name: "errors +1 pp (0.2% → 1.2%)",
            warmup: Duration::ZERO,
            regression: true,
            live: base,
            candidate: Behaviour {
                error_rate: 0.012,
                ..base
            },
            drift: 0.0,
        },
        Scenario {
            name: "errors +5 pp (0.2% → 5.2%)",
            warmup: Duration::ZERO,
            regression: true,
            live: base,
            candidate: Behaviour {
                error_rate: 0.052,
                ..base
            },
            drift: 0.0,
        },
    ]
}

/// How one simulated rollout ended, and the candidate's requests by then.
#[derive(Clone, Copy, PartialEq)]
enum End {
    Promoted,
    RolledBack,
    /// Still holding when the simulation gave up (three times the plan's length).
    Stuck,
}

/// A judge: ours (every interval, through the engine) or the reference (once per hold).
#[derive(Clone, Copy, PartialEq)]
enum Judge {
    Splitter,
    Reference,
}

/// One rollout of `scenario` at `rate` requests per second per version, under `plan` (with the
/// scenario's warm-up, if it has one, left out of each step).
fn rollout(scenario: &Scenario, plan: &Plan, rate: f64, judge: Judge, rng: &mut Rng) -> (End, u64) {
    let t0 = Instant::now();
    let mut state = Rollout::start(plan.clone(), t0);
    let (mut candidate, mut live) = (Window::default(), Window::default());
    let mut reference: Option<Window> = None;
    let mut candidate_requests = 0u64;
    let (mut total_s, mut step_s) = (0.0f64, 0.0f64);
    let interval = plan.interval.as_secs_f64();
    let limit = 3.0 * plan.steps.len() as f64 * plan.hold.as_secs_f64().max(interval);
    let mut carried = Carried::new();
    while total_s < limit {
        total_s += interval;
        step_s += interval;
        let last_step = state.step + 1 == plan.steps.len();
        for (is_candidate, behaviour, rate) in [
            (true, scenario.candidate, rate),
            // At 100% the live pool gets no new connections.
            (false, scenario.live, if last_step { 0.0 } else { rate }),
        ] {
            let window = if is_candidate {
                &mut candidate
            } else {
                &mut live
            };
            let n = rng.poisson(rate * interval);
            for _ in 0..n {
                let (us, failed) = behaviour.draw(rng, step_s, total_s, scenario.drift);
                window.latency.buckets[Histogram::bucket(us)] += 1;
                window.requests += 1;
                window.errors += u64::from(failed);
            }
            if is_candidate {
                candidate_requests += n;
            }
        }
        let now = t0 + Duration::from_secs_f64(total_s);
        // A step's warm-up is left out: the windows start again until it ends (as the daemon
        // does, by the engine's `warming_up`).
        if state.warming_up(now) {
            (candidate, live) = (Window::default(), Window::default());
            continue;
        }
        let mut readings = Vec::new();
        let judgement = match judge {
            Judge::Splitter => {
                readings =
                    kernel_gates(&plan.gates, &candidate, &live, reference.as_ref(), &carried);
                Judgement::of(&readings)
            }
            Judge::Reference => {
                if step_s + 1e-9 < plan.hold.as_secs_f64() {
                    continue;
                }
                let against = live_reference(&plan.gates, &live, reference.as_ref());
                reference_judgement(&candidate, against)
            }
        };
        match state.on_judgement(now, &judgement) {
            Decision::Hold => {}
            Decision::Advance(_) => {
                carried = folded(&carried, &evidence_of(&readings, ""));
                if let Some(window) = live_reference(&plan.gates, &live, reference.as_ref()) {
                    reference = Some(*window);
                }
                (candidate, live, step_s) = (Window::default(), Window::default(), 0.0);
            }
            Decision::Promote => return (End::Promoted, candidate_requests),
            Decision::RollBack(_) => return (End::RolledBack, candidate_requests),
        }
    }
    (End::Stuck, candidate_requests)
}

/// Kayenta's judge, as its docs describe it: per metric, a Mann-Whitney U test at 98%
/// confidence, and a failure only when the effect also exceeds the allowed increase (10% on
/// the median; 1 pp on the error rate, tested as two proportions).
fn reference_judgement(candidate: &Window, live: Option<&Window>) -> Judgement {
    const Z_98: f64 = 2.054;
    let Some(live) = live else {
        return Judgement::Inconclusive("no live window".to_owned());
    };
    let mut reasons = Vec::new();
    if let (Some(z), Some(c), Some(l)) = (
        mann_whitney_z(&candidate.latency, &live.latency),
        candidate.quantile_ms(0.5),
        live.quantile_ms(0.5),
    ) && z > Z_98
        && c > 1.1 * l
    {
        reasons.push(format!("latency: z {z:.2}, median ×{:.2}", c / l));
    }
    if let (Some(c), Some(l)) = (candidate.error_rate(), live.error_rate()) {
        let pooled =
            (candidate.errors + live.errors) as f64 / (candidate.requests + live.requests) as f64;
        let se = (pooled
            * (1.0 - pooled)
            * (1.0 / candidate.requests as f64 + 1.0 / live.requests as f64))
            .sqrt();
        if se > 0.0 && (c - l) / se > Z_98 && c - l > 0.01 {
            reasons.push(format!("errors +{:.2} pp", (c - l) * 100.0));
        }
    }
    if candidate.requests < 20 {
        Judgement::Inconclusive("too few".to_owned())
    } else if reasons.is_empty() {
        Judgement::Pass
    } else {
        Judgement::Fail(reasons)
    }
}

/// The Mann-Whitney U statistic of `a` over `b` as a z score, ties (a bucket) counted half,
/// with the tie-corrected variance. Positive when `a` tends to be larger.
fn mann_whitney_z(a: &Histogram, b: &Histogram) -> Option<f64> {
    let (na, nb) = (a.total(), b.total());
    if na == 0 || nb == 0 {
        return None;
    }
    let (mut u, mut b_below, mut ties) = (0.0f64, 0u64, 0.0f64);
    for (ai, bi) in a.buckets.iter().zip(&b.buckets) {
        u += *ai as f64 * (b_below as f64 + 0.5 * *bi as f64);
        b_below += bi;
        let t = (ai + bi) as f64;
        ties += t * t * t - t;
    }
    let (na, nb) = (na as f64, nb as f64);
    let n = na + nb;
    let variance = na * nb / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)));
    (variance > 0.0).then(|| (u - na * nb / 2.0) / variance.sqrt())
}

/// The section: every scenario at 10 and 200 requests per second per version, `runs` rollouts
/// each, by both judges.
pub fn section(quick: bool) -> String {
    let runs: u32 = if quick { 100 } else { 1_000 };
    let default_plan = Plan::default();
    let plan = &default_plan;
    let mut text = String::new();
    let _ = writeln!(
        text,
        "\n### Judgement accuracy (simulated rollouts)\n\n{runs} rollouts per row through the engine's own code (`kernel_gates`, `Judgement::of`, `Rollout::on_judgement`, the kernel's log-linear histogram buckets), with the default plan and gates (steps {:?}%, hold {} s, interval {} s, `failure_limit` {}, `min_samples` {}, confidence {}, `max_median_vs_live` {:?}, `max_p99_vs_live` {:?}, `max_error_increase` {:?}, `max_error_rate` {:?}, `min_latency_increase_ms` {}). Each version gets the rate of requests per second shown (Poisson), the live pool none at the 100% step (it is then compared with its last window). Errors: 0.2% on both unless the row says otherwise. Rolled back: the share of rollouts the judge rolled back (a false rollback for a row without a regression, the power for a regression; a regression exactly at the allowance, errors +1 pp, is allowed by definition); requests: the median of the candidate's requests until the decision. The reference is Kayenta's judge: a one-sided Mann-Whitney U test at 98% confidence on the step's response times and a two-proportion test on its error rates, each failing only past the same allowed effect (+10% median, +1 pp), judged once at the end of each step's hold; it runs on the same seeded draws.\n",
        plan.steps
            .iter()
            .map(|bp| f64::from(*bp) / 100.0)
            .collect::<Vec<_>>(),
        plan.hold.as_secs(),
        plan.interval.as_secs(),
        plan.failure_limit,
        plan.gates.min_samples,
        plan.gates.confidence,
        plan.gates.max_median_vs_live,
        plan.gates.max_p99_vs_live,
        plan.gates.max_error_increase,
        plan.gates.max_error_rate,
        plan.gates.min_latency_increase_ms,
    );
    text.push_str("| scenario | req/s per version | Splitter: rolled back | promoted | still holding | requests | reference: rolled back | promoted | requests |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let mut false_worst = 0.0f64;
    let mut goals = Vec::new();
    for scenario in scenarios() {
        for rate in [10.0, 200.0] {
            let mut row = format!("| {} | {rate} |", scenario.name);
            for judge in [Judge::Splitter, Judge::Reference] {
                let mut rng = Rng(0x5eed_0000 + rate as u64);
                let (mut back, mut promoted, mut stuck) = (0u32, 0u32, 0u32);
                let mut requests = Vec::new();
                let plan = Plan {
                    warmup: scenario.warmup,
                    ..default_plan.clone()
                };
                for _ in 0..runs {
                    let (end, n) = rollout(&scenario, &plan, rate, judge, &mut rng);
                    match end {
                        End::RolledBack => {
                            back += 1;
                            requests.push(n);
                        }
                        End::Promoted => {
                            promoted += 1;
                            if !scenario.regression {
                                requests.push(n);
                            }
                        }
                        End::Stuck => stuck += 1,
                    }
                }
                requests.sort_unstable();
                let share = |k: u32| format!("{:.1}%", f64::from(k) * 100.0 / f64::from(runs));
                let median = requests
                    .get(requests.len() / 2)
                    .map_or_else(|| "–".to_owned(), ToString::to_string);
                if judge == Judge::Splitter {
                    let _ = write!(
                        row,
                        " {} | {} | {} | {median} |",
                        share(back),
                        share(promoted),
                        share(stuck)
                    );
                    let rate_back = f64::from(back) / f64::from(runs);
                    if scenario.regression {
                        if scenario.name.starts_with("median") || scenario.name.contains("+5 pp") {
                            goals.push((scenario.name, rate, rate_back));
                        }
                    } else {
                        false_worst = false_worst.max(rate_back);
                    }
                } else {
                    let _ = write!(row, " {} | {} | {median} |", share(back), share(promoted));
                }
            }
            text.push_str(&row);
            text.push('\n');
        }
    }
    let _ = writeln!(
        text,
        "\nGoal: false rollbacks ≤ 1% per rollout, on every row without a regression (A/A and within the allowance): **{}** (worst row {:.1}%).",
        if false_worst <= 0.01 { "met" } else { "MISSED" },
        false_worst * 100.0
    );
    for (name, rate, power) in goals {
        let _ = writeln!(
            text,
            "Goal: {name} at {rate} req/s rolled back in ≥ 95% of rollouts: **{}** ({:.1}%).",
            if power >= 0.95 { "met" } else { "MISSED" },
            power * 100.0
        );
    }
    text
}
