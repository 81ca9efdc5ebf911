//! The statistics of the rollout's judgement. A step's window grows and is judged again at
//! every interval, and a rollout has several steps: a test that is right 99% of the time at one
//! look is wrong by chance at one of many. Two tools keep the false alarms bounded however often
//! the data is looked at:
//!
//! - **Evidence that accumulates over the whole rollout** (`Evidence`, `needed`): each gate
//!   scores a step's window as a z statistic against its null hypothesis ("the candidate is no
//!   worse than the allowed effect") times the square root of the step's information (its
//!   effective sample size). Steps are independent data, so their scores add, and the sum is
//!   approximately a Brownian motion in information time under the null. A gate fails once the
//!   sum crosses Robbins' normal-mixture boundary (Howard et al., "Time-uniform, nonparametric,
//!   nonasymptotic confidence sequences", 2021), which a Brownian motion crosses at any time with
//!   probability at most α.
//! - **Intervals** for what operators read, for the current window: for error rates, the
//!   values the window's own test would not reject at the boundary (`share_interval`,
//!   `difference_interval`), so that they agree with its decision; for latency quantiles,
//!   anytime-valid bounds on their ranks from a Beta-binomial mixture martingale, valid at every
//!   look by Ville's inequality (`quantile_ranks`). The decision is the accumulated evidence's.

use serde::{Deserialize, Serialize};
use splitter_common::Histogram;

/// Evidence against "the candidate is no worse than allowed": the sum of z × √information over
/// the windows scored, and the sum of their information (effective requests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub score: f64,
    pub information: f64,
}

impl Evidence {
    /// One window's evidence: its z statistic and its effective number of requests.
    #[must_use]
    pub fn of(z: f64, information: f64) -> Self {
        if !z.is_finite() || !information.is_finite() || information <= 0.0 {
            return Self::default();
        }
        Self {
            score: z * information.sqrt(),
            information,
        }
    }

    #[must_use]
    pub fn plus(self, other: Self) -> Self {
        Self {
            score: self.score + other.score,
            information: self.information + other.information,
        }
    }

    /// The combined z statistic of all the windows scored.
    #[must_use]
    pub fn z(self) -> f64 {
        if self.information > 0.0 {
            self.score / self.information.sqrt()
        } else {
            0.0
        }
    }

    /// Whether the evidence crossed the boundary at false-alarm level α.
    #[must_use]
    pub fn convincing(self, alpha: f64) -> bool {
        self.information > 0.0 && self.z() >= needed(self.information, alpha)
    }
}

/// The information (effective requests) the mixture boundary is tightest around.
const MIXTURE_INFORMATION: f64 = 100.0;

/// The z statistic the accumulated evidence must reach after `information` effective requests,
/// so that a process with no regression crosses it at any time with probability at most α
/// (lowest around a few times `MIXTURE_INFORMATION`, growing like √(ln V) past it):
/// √((1 + ρ/V) (ln(1 + V/ρ) + 2 ln(1/α))), the normal-mixture boundary divided by √V.
#[must_use]
pub fn needed(information: f64, alpha: f64) -> f64 {
    let (v, rho) = (information.max(1e-9), MIXTURE_INFORMATION);
    ((1.0 + rho / v) * ((1.0 + v / rho).ln() + 2.0 * (1.0 / alpha.clamp(1e-300, 1.0)).ln())).sqrt()
}

/// The z statistic of `s` successes in `n` trials against a success probability of at most
/// `p0`, with its information (n). `None` without trials.
#[must_use]
pub fn one_proportion(s: u64, n: u64, p0: f64) -> Option<(f64, f64)> {
    if n == 0 {
        return None;
    }
    let (s, n) = (s.min(n) as f64, n as f64);
    let p0 = p0.clamp(1e-6, 1.0 - 1e-6);
    Some(((s / n - p0) / (p0 * (1.0 - p0) / n).sqrt(), n))
}

/// The z statistic of "the first share exceeds the second by more than `allowed`" (`a` of `n`
/// against `b` of `m`), with its variance where that hypothesis is only just true (the first
/// share at the second's plus `allowed`: a pooled variance would understate the first's when
/// it is allowed to be higher), and its information (the harmonic half of the two sizes).
/// `None` when either side has no trials.
#[must_use]
pub fn two_proportions(a: u64, n: u64, b: u64, m: u64, allowed: f64) -> Option<(f64, f64)> {
    if n == 0 || m == 0 {
        return None;
    }
    let (a, n, b, m) = (a.min(n) as f64, n as f64, b.min(m) as f64, m as f64);
    // A share of zero has no variance: take half a success, as a continuity floor.
    let floor = |share: f64, size: f64| share.clamp(0.5 / size, 1.0 - 0.5 / size);
    let second = floor(b / m, m);
    let first = floor(second + allowed, n);
    let variance = first * (1.0 - first) / n + second * (1.0 - second) / m;
    Some(((a / n - b / m - allowed) / variance.sqrt(), n * m / (n + m)))
}

/// The values of `allowed` that a window's score test, `z(allowed)` falling as `allowed` rises,
/// does not reject in either direction at the boundary `needed`: the interval the gates show
/// beside the decision, consistent with it (found by bisection on `lo..hi`).
fn inverted(z: impl Fn(f64) -> f64, needed: f64, (lo, hi): (f64, f64)) -> (f64, f64) {
    let edge = |inside: f64, outside: f64, rejected: &dyn Fn(f64) -> bool| {
        let (mut inside, mut outside) = (inside, outside);
        if !rejected(outside) {
            return outside;
        }
        for _ in 0..50 {
            let mid = 0.5 * (inside + outside);
            if rejected(mid) {
                outside = mid;
            } else {
                inside = mid;
            }
        }
        inside
    };
    // The centre: where the score is zero, or the nearer end.
    let centre = edge(lo, hi, &|x| z(x) < 0.0);
    (
        edge(centre, lo, &|x| z(x) >= needed),
        edge(centre, hi, &|x| z(x) <= -needed),
    )
}

/// An interval for the share `a` of `n`: the limits that the one-proportion test would not
/// reject at this many trials, so that it agrees with the gate's decision on this window.
#[must_use]
pub fn share_interval(a: u64, n: u64, alpha: f64) -> Option<(f64, f64)> {
    if n == 0 {
        return None;
    }
    let needed = needed(n as f64, alpha);
    let z = |p0: f64| one_proportion(a, n, p0).map_or(0.0, |(z, _)| z);
    Some(inverted(z, needed, (0.0, 1.0)))
}

/// An interval for the difference of the shares `a` of `n` and `b` of `m`: the allowances that
/// the two-proportion test would not reject at their information, so that it agrees with the
/// gate's decision on this window.
#[must_use]
pub fn difference_interval(a: u64, n: u64, b: u64, m: u64, alpha: f64) -> Option<(f64, f64)> {
    if n == 0 || m == 0 {
        return None;
    }
    let (nf, mf) = (n as f64, m as f64);
    let needed = needed(nf * mf / (nf + mf), alpha);
    let z = |allowed: f64| two_proportions(a, n, b, m, allowed).map_or(0.0, |(z, _)| z);
    Some(inverted(z, needed, (-1.0, 1.0)))
}

/// Points standing for a histogram: each bucket's count spread over `SPREAD` evenly spaced
/// values inside it, as (value in µs, weight), rising.
const SPREAD: usize = 4;

/// The worst a candidate may be, given a live response time in µs: `ratio` times it, and at
/// least `floor_us` more.
#[must_use]
pub fn allowed_us(live_us: f64, ratio: f64, floor_us: f64) -> f64 {
    (live_us * ratio).max(live_us + floor_us)
}

fn points(histogram: &Histogram, allowed: impl Fn(f64) -> f64) -> Vec<(f64, f64)> {
    let mut points = Vec::new();
    for (i, count) in histogram.buckets.iter().enumerate() {
        if *count == 0 {
            continue;
        }
        let (lower, upper) = crate::engine::latency::bucket_bounds(i);
        let weight = *count as f64 / SPREAD as f64;
        for k in 0..SPREAD {
            let at = lower + (upper - lower) * (k as f64 + 0.5) / SPREAD as f64;
            points.push((allowed(at), weight));
        }
    }
    points
}

/// The Mann-Whitney z statistic of "the candidate is slower than the live pool allows" (each
/// live response time moved to `allowed_us` of it: `ratio` times it, and at least `floor_us`
/// more; ties counted half), with its information (the harmonic half of the two sizes). `None`
/// when either side has no response times.
#[must_use]
pub fn slower_than(
    candidate: &Histogram,
    live: &Histogram,
    ratio: f64,
    floor_us: f64,
) -> Option<(f64, f64)> {
    let (n, m) = (candidate.total(), live.total());
    if n == 0 || m == 0 {
        return None;
    }
    let (c, l) = (
        points(candidate, |us| us),
        points(live, |us| allowed_us(us, ratio, floor_us)),
    );
    // U: over candidate points, the live weight below them plus half the weight level with them.
    let (mut u, mut below, mut j) = (0.0, 0.0, 0);
    for (value, weight) in &c {
        while j < l.len() && l[j].0 < *value {
            below += l[j].1;
            j += 1;
        }
        let level: f64 = l[j..]
            .iter()
            .take_while(|(v, _)| v == value)
            .map(|(_, w)| w)
            .sum();
        u += weight * (below + 0.5 * level);
    }
    let (n, m) = (n as f64, m as f64);
    let variance = n * m * (n + m + 1.0) / 12.0;
    Some(((u - n * m / 2.0) / variance.sqrt(), n * m / (n + m)))
}

/// A Beta prior over a success probability: `mean` and `weight` (its pseudo-trials, a + b).
/// The mixture is tightest around `n` of a few times the weight; it must not depend on the data.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Prior {
    mean: f64,
    weight: f64,
}

impl Prior {
    /// The prior for a quantile's ranks: centred on the quantile itself.
    fn around(mean: f64) -> Self {
        Self {
            mean: mean.clamp(1e-4, 1.0 - 1e-4),
            weight: QUANTILE_PRIOR_WEIGHT,
        }
    }

    fn ab(self) -> (f64, f64) {
        (self.mean * self.weight, (1.0 - self.mean) * self.weight)
    }
}

/// Pseudo-trials of the quantile prior: tightest around a few hundred requests per version.
const QUANTILE_PRIOR_WEIGHT: f64 = 50.0;

/// ln Γ(x) for x > 0 (Lanczos, g = 7, 9 terms; about 15 significant digits).
#[must_use]
pub fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x) Γ(1 − x) = π / sin(πx).
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut sum = C[0];
    for (i, c) in C.iter().enumerate().skip(1) {
        sum += c / (x + i as f64);
    }
    let t = x + G + 0.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

fn ln_beta(a: f64, b: f64) -> f64 {
    ln_gamma(a) + ln_gamma(b) - ln_gamma(a + b)
}

/// ln of the mixture martingale: the Beta-binomial probability of `s` successes in `n` trials
/// (in a given order) over their probability at `p0`.
fn ln_evidence(s: f64, n: f64, p0: f64, prior: Prior) -> f64 {
    let (a, b) = prior.ab();
    let p0 = p0.clamp(1e-12, 1.0 - 1e-12);
    ln_beta(a + s, b + n - s) - ln_beta(a, b) - s * p0.ln() - (n - s) * (1.0 - p0).ln()
}

/// Whether `p0` is rejected as the success probability: the evidence against it reached 1/α,
/// with the observed share below it (`below`) or above it.
fn rejected(s: f64, n: f64, p0: f64, alpha: f64, prior: Prior, below: bool) -> bool {
    let share = s / n;
    let far_side = if below { share < p0 } else { share > p0 };
    far_side && ln_evidence(s, n, p0, prior) >= (1.0 / alpha).ln()
}

/// Anytime-valid bounds on the ranks of the `q` quantile among `n` samples: the quantile is at
/// least the value of rank `lower` and at most the value of rank `upper`, each with probability
/// at least 1 − α at every `n` at once. A side the data cannot bound yet is `None` (the lower
/// one is then the least value, the upper one unbounded).
#[must_use]
pub fn quantile_ranks(n: u64, q: f64, alpha: f64) -> (Option<u64>, Option<u64>) {
    if n == 0 {
        return (None, None);
    }
    let prior = Prior::around(q);
    let nf = n as f64;
    let centre = (q * nf).floor() as u64;
    // Lower: the greatest s such that "P(X < x_s) ≥ q" is rejected (too few below x_s), so
    // x_s lies under the quantile. Rejection only grows as s falls: bisect.
    let low = |s: u64| rejected(s as f64, nf, q, alpha, prior, true);
    let lower = if low(0) {
        let (mut yes, mut no) = (0u64, centre);
        while no - yes > 1 {
            let mid = (yes + no) / 2;
            if low(mid) { yes = mid } else { no = mid }
        }
        Some(yes)
    } else {
        None
    };
    // Upper: the least s such that "P(X < x_s) ≤ q" is rejected (too many below x_s).
    let high = |s: u64| rejected(s as f64, nf, q, alpha, prior, false);
    let upper = if high(n) {
        let (mut no, mut yes) = (centre, n);
        while yes - no > 1 {
            let mid = (yes + no) / 2;
            if high(mid) { yes = mid } else { no = mid }
        }
        Some(yes)
    } else {
        None
    };
    (lower, upper)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// splitmix64: a seeded generator, so a failure repeats.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// A histogram of `n` lognormal draws around `median_us`.
    fn lognormal(rng: &mut Rng, n: u32, median_us: f64, sigma: f64) -> Histogram {
        let mut h = Histogram::default();
        for _ in 0..n {
            let (u, v) = (rng.next().max(1e-12), rng.next());
            let z = (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos();
            h.buckets[Histogram::bucket((median_us * (sigma * z).exp()) as u64)] += 1;
        }
        h
    }

    #[test]
    fn the_boundary_is_lowest_near_its_mixture_and_grows_slowly_past_it() {
        // High on a few requests, lowest around a few times MIXTURE_INFORMATION, then growing
        // like √(ln V): the price of being valid at every look.
        assert!(needed(10.0, 0.01) > needed(100.0, 0.01));
        assert!(needed(100.0, 0.01) > needed(1_000.0, 0.01));
        assert!(needed(10_000.0, 0.01) > needed(1_000.0, 0.01));
        assert!(needed(1e6, 0.01) > needed(10_000.0, 0.01));
        assert!(needed(1e6, 0.01) < 4.5, "{}", needed(1e6, 0.01));
        assert!(needed(1_000.0, 0.001) > needed(1_000.0, 0.01));
        // Tighter than a union bound over 100 looks at a fixed-horizon z (3.72 at 0.01/100),
        // looser than one look (2.33).
        let z = needed(1_000.0, 0.01);
        assert!(z > 2.33 && z < 3.72, "{z}");
    }

    #[test]
    fn a_shifted_mann_whitney_tells_a_regression_from_the_allowed_effect() {
        let mut rng = Rng(11);
        let live = lognormal(&mut rng, 2_000, 5_000.0, 0.5);
        let same = lognormal(&mut rng, 2_000, 5_000.0, 0.5);
        let slower = lognormal(&mut rng, 2_000, 6_500.0, 0.5);
        let (z_same, info) = slower_than(&same, &live, 1.1, 0.0).expect("samples");
        assert!((info - 1_000.0).abs() < 1e-9);
        assert!(
            z_same < -2.0,
            "the same times are well inside +10%: {z_same}"
        );
        let (z_slower, _) = slower_than(&slower, &live, 1.1, 0.0).expect("samples");
        assert!(z_slower > 5.0, "+30% is past +10%: {z_slower}");
        let (z_at, _) = slower_than(&same, &live, 1.0, 0.0).expect("samples");
        assert!(z_at.abs() < 3.0, "no shift, no effect: {z_at}");
        assert_eq!(slower_than(&Histogram::default(), &live, 1.1, 0.0), None);
        // 30% slower at 5 ms is 1.5 ms: past an absolute floor of 1 ms, within one of 2 ms.
        assert!(
            slower_than(&slower, &live, 1.1, 1_000.0)
                .expect("samples")
                .0
                > 3.0
        );
        assert!(
            slower_than(&slower, &live, 1.1, 2_000.0)
                .expect("samples")
                .0
                < 0.0
        );
    }

    #[test]
    fn a_candidate_at_the_allowed_increase_is_rarely_failed() {
        // The candidate exactly 1 pp above a live pool with no errors, on a hundredth of its
        // traffic: each look's z must stay under the boundary nearly always. (A pooled variance
        // failed about 30% of such looks.)
        let mut rng = Rng(3);
        let (n, m, looks) = (2_000u64, 200_000u64, 300);
        let mut failed = 0;
        for _ in 0..looks {
            let a = (0..n).filter(|_| rng.next() < 0.01).count() as u64;
            let (z, info) = two_proportions(a, n, 0, m, 0.01).expect("trials");
            failed += u32::from(z >= needed(info, 0.0025));
        }
        assert!(failed <= 3, "{failed} of {looks} looks failed");
    }

    #[test]
    fn proportions_score_against_their_allowance() {
        let (z, n) = one_proportion(10, 100, 0.05).expect("trials");
        assert!(z > 2.0 && n == 100.0, "{z}");
        assert!(one_proportion(5, 100, 0.05).expect("trials").0.abs() < 1e-9);
        assert_eq!(one_proportion(0, 0, 0.05), None);
        let (z, info) = two_proportions(60, 1_000, 10, 1_000, 0.01).expect("trials");
        assert!(z > 4.0 && info == 500.0, "{z}");
        let (z, _) = two_proportions(12, 1_000, 10, 1_000, 0.01).expect("trials");
        assert!(z < 0.0, "+0.2 pp is within +1 pp: {z}");
        assert!(
            two_proportions(0, 10, 0, 10, 0.0)
                .expect("trials")
                .0
                .is_finite()
        );
        let evidence = Evidence::of(3.0, 100.0).plus(Evidence::of(3.0, 100.0));
        assert!((evidence.z() - 3.0 * 2f64.sqrt()).abs() < 1e-9);
        assert_eq!(Evidence::of(f64::NAN, 10.0), Evidence::default());
    }

    #[test]
    fn ln_gamma_matches_factorials() {
        let mut factorial = 1.0f64;
        for n in 1..30u32 {
            // Γ(n + 1) = n!
            factorial *= f64::from(n);
            let got = ln_gamma(f64::from(n) + 1.0);
            assert!(
                (got - factorial.ln()).abs() < 1e-9,
                "ln Γ({}) = {got}",
                n + 1
            );
        }
        // Γ(1/2) = √π
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-12);
        assert!((ln_gamma(0.1) - 2.252_712_651_734_206).abs() < 1e-9);
    }

    #[test]
    fn the_intervals_shown_hold_their_estimate_and_narrow_with_data() {
        let (lo, hi) = share_interval(30, 1_000, 0.01).expect("trials");
        assert!(
            lo < 0.03 && 0.03 < hi && lo > 0.0 && hi < 0.07,
            "[{lo}, {hi}]"
        );
        let (lo2, hi2) = share_interval(300, 10_000, 0.01).expect("trials");
        assert!(
            hi2 - lo2 < (hi - lo) / 2.0,
            "[{lo2}, {hi2}] vs [{lo}, {hi}]"
        );
        assert_eq!(share_interval(0, 0, 0.01), None);
        assert_eq!(share_interval(0, 100, 0.01).expect("trials").0, 0.0);
        assert_eq!(share_interval(100, 100, 0.01).expect("trials").1, 1.0);
        let (lo, hi) = difference_interval(60, 1_000, 10, 1_000, 0.01).expect("trials");
        assert!(
            lo > 0.01 && hi < 0.1 && lo < 0.05 && 0.05 < hi,
            "[{lo}, {hi}]"
        );
        assert_eq!(difference_interval(1, 0, 0, 10, 0.01), None);
        // A window whose evidence crosses the boundary shows an interval past the allowance.
        let (z, info) = two_proportions(60, 1_000, 10, 1_000, 0.01).expect("trials");
        assert!(z >= needed(info, 0.01), "{z}");
        // 5% of 40 against none of 400: the gate's decision and its interval agree.
        for (a, n) in [(2u64, 40u64), (6, 120), (20, 400)] {
            let (z, info) = two_proportions(a, n, 0, 400, 0.01).expect("trials");
            let (lo, _) = difference_interval(a, n, 0, 400, 0.01).expect("trials");
            assert_eq!(
                z >= needed(info, 0.01),
                lo > 0.01,
                "{a} of {n}: z {z}, low {lo}"
            );
        }
    }

    #[test]
    fn quantile_ranks_bracket_the_quantile() {
        let (lo, hi) = quantile_ranks(1_000, 0.5, 0.01);
        let (lo, hi) = (lo.expect("bounded"), hi.expect("bounded"));
        assert!(lo < 500 && hi > 500, "{lo}..{hi}");
        assert!(lo > 400 && hi < 600, "not vacuous: {lo}..{hi}");
        // Few samples cannot bound a tail quantile from above.
        assert_eq!(quantile_ranks(50, 0.99, 0.01).1, None);
        assert_eq!(quantile_ranks(0, 0.5, 0.01), (None, None));
        // More samples, a tighter interval (as a share of n).
        let (lo2, hi2) = quantile_ranks(100_000, 0.5, 0.01);
        let width2 = (hi2.expect("bounded") - lo2.expect("bounded")) as f64 / 100_000.0;
        assert!(width2 < (hi - lo) as f64 / 1_000.0 / 5.0, "{width2}");
    }
}
