//! Reading the kernel's latency histograms: quantiles by linear interpolation inside a bucket,
//! and the bucket bounds Prometheus gets. The buckets are log-linear (8 per power of two, see
//! `splitter_common::latency_bucket_bounds`), so an interpolated quantile is within a few
//! percent of the true one.

use serde::{Deserialize, Serialize};
use splitter_common::{Histogram, LATENCY_BUCKETS, latency_bucket_bounds};

/// The lower and upper bound of bucket `i`, in µs. The last bucket (everything from 67 s on)
/// reads as the point at its lower bound.
#[must_use]
pub fn bucket_bounds(i: usize) -> (f64, f64) {
    let (lower, upper) = latency_bucket_bounds(i);
    if i + 1 >= LATENCY_BUCKETS {
        (lower as f64, lower as f64)
    } else {
        (lower as f64, upper as f64)
    }
}

/// The `q` quantile (0 to 1) in µs, or `None` for an empty histogram. Within a bucket the
/// samples are taken as spread evenly, so the answer is exact to within the bucket's width.
#[must_use]
pub fn quantile(histogram: &Histogram, q: f64) -> Option<f64> {
    let total = histogram.total();
    if total == 0 {
        return None;
    }
    Some(at_rank(histogram, q.clamp(0.0, 1.0) * total as f64))
}

/// The value at a (fractional) rank of a histogram, from 0 (its least) to its count (its
/// greatest), interpolated inside the bucket where the rank falls.
#[must_use]
pub fn at_rank(histogram: &Histogram, rank: f64) -> f64 {
    let mut below = 0u64;
    let mut last = 0;
    for (i, count) in histogram.buckets.iter().enumerate() {
        if *count == 0 {
            continue;
        }
        last = i;
        if (below + count) as f64 >= rank {
            let (lower, upper) = bucket_bounds(i);
            let inside = ((rank - below as f64) / *count as f64).clamp(0.0, 1.0);
            return lower + inside * (upper - lower);
        }
        below += count;
    }
    bucket_bounds(last).1
}

/// How many of a histogram's values are below `us`, counting a bucket that `us` cuts by the
/// share of its width below it.
#[must_use]
pub fn count_below(histogram: &Histogram, us: f64) -> f64 {
    let mut below = 0.0;
    for (i, count) in histogram.buckets.iter().enumerate() {
        let (lower, upper) = bucket_bounds(i);
        if upper <= us {
            below += *count as f64;
        } else if lower < us {
            below += *count as f64 * (us - lower) / (upper - lower);
        } else {
            break;
        }
    }
    below
}

/// How many of a histogram's values are at or above `us` (the complement of `count_below`),
/// rounded to a whole request.
#[must_use]
pub fn count_above(histogram: &Histogram, us: f64) -> u64 {
    (histogram.total() as f64 - count_below(histogram, us))
        .round()
        .max(0.0) as u64
}

/// p50, p90 and p99 of a histogram, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Quantiles {
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

impl Quantiles {
    #[must_use]
    pub fn of(histogram: &Histogram) -> Self {
        let ms = |q| quantile(histogram, q).map(|us| us / 1_000.0);
        Self {
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(counts: &[(usize, u64)]) -> Histogram {
        let mut h = Histogram::default();
        for (bucket, count) in counts {
            h.buckets[*bucket] = *count;
            h.count += count;
        }
        h
    }

    #[test]
    fn buckets_are_eight_per_power_of_two_of_microseconds() {
        for us in 0..8 {
            assert_eq!(
                Histogram::bucket(us),
                us as usize,
                "one bucket per µs under 8"
            );
        }
        assert_eq!(Histogram::bucket(8), 8);
        assert_eq!(Histogram::bucket(15), 15);
        assert_eq!(Histogram::bucket(16), 16);
        assert_eq!(Histogram::bucket(17), 16, "[16, 18) µs");
        // 5 ms is in the octave [4096, 8192) µs, cut into eight 512 µs buckets: [4608, 5120).
        let b = Histogram::bucket(5_000);
        assert_eq!(bucket_bounds(b), (4_608.0, 5_120.0));
        assert_eq!(Histogram::bucket(u64::MAX), LATENCY_BUCKETS - 1);
        assert_eq!(Histogram::bucket((1 << 26) - 1), LATENCY_BUCKETS - 2);
        // Every value falls in its bucket's bounds, buckets tile the line without a gap, and
        // none is wider than 12.5% of its lower bound (from 8 µs on).
        for i in 0..LATENCY_BUCKETS - 1 {
            let (lower, upper) = latency_bucket_bounds(i);
            assert_eq!(Histogram::bucket(lower), i);
            assert_eq!(Histogram::bucket(upper - 1), i);
            assert_eq!(latency_bucket_bounds(i + 1).0, upper, "bucket {i}");
            if lower >= 8 {
                assert!(
                    (upper - lower) * 8 <= lower,
                    "bucket {i}: [{lower}, {upper})"
                );
            }
        }
        for us in [9, 100, 1_234, 65_000, 3_000_000, 60_000_000] {
            let (lower, upper) = latency_bucket_bounds(Histogram::bucket(us));
            assert!(lower <= us && us < upper, "{us} in [{lower}, {upper})");
        }
    }

    #[test]
    fn a_quantile_of_one_latency_is_within_a_bucket_of_it() {
        // Every sample at 5.3 ms: the median must say 5.3 ms within the bucket's width (4%
        // either way here), not the middle of a 4-8 ms bucket as log2 buckets did.
        for us in [530u64, 5_300, 53_000, 21_000] {
            let mut h = Histogram::default();
            h.buckets[Histogram::bucket(us)] = 200;
            let p50 = quantile(&h, 0.5).expect("samples");
            assert!(
                (p50 / us as f64 - 1.0).abs() < 0.07,
                "p50 {p50} for samples at {us} µs"
            );
        }
    }

    #[test]
    fn known_answers() {
        assert_eq!(quantile(&Histogram::default(), 0.5), None);
        // 100 samples in [4608, 5120): the median sits halfway, p90 at 90%.
        let b = Histogram::bucket(5_000);
        let one = histogram(&[(b, 100)]);
        assert_eq!(quantile(&one, 0.5), Some(4_864.0));
        assert_eq!(quantile(&one, 0.9), Some(4_608.0 + 0.9 * 512.0));
        assert_eq!(quantile(&one, 0.0), Some(4_608.0));
        assert_eq!(quantile(&one, 1.0), Some(5_120.0));
        // 90 fast (in [8, 9) µs), 10 slow (in [32768, 36864) µs): p50 among the fast, p99
        // among the slow.
        let (fast, slow) = (Histogram::bucket(8), Histogram::bucket(33_000));
        let two = histogram(&[(fast, 90), (slow, 10)]);
        assert_eq!(quantile(&two, 0.5), Some(8.0 + 50.0 / 90.0));
        assert_eq!(quantile(&two, 0.9), Some(9.0));
        assert_eq!(quantile(&two, 0.99), Some(32_768.0 + 0.9 * 4_096.0));
        assert_eq!(count_below(&two, 8.5), 45.0, "half of the fast bucket");
        assert_eq!(count_below(&two, 1e9), 100.0);
        assert_eq!(count_below(&two, 0.0), 0.0);
        assert_eq!(
            count_above(&two, 8.5),
            55,
            "half of the fast bucket, and the slow one"
        );
        assert_eq!(count_above(&two, 1e9), 0);
        let q = Quantiles::of(&two);
        assert_eq!(q.p90_ms, Some(0.009));
    }
}
