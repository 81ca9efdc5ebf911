//! Reading the kernel's log2 latency histograms: quantiles by linear interpolation inside a
//! bucket, and the bucket bounds Prometheus gets. Bucket `i` holds values in [2^i, 2^(i+1)) µs
//! (bucket 0 also the values under 1 µs; the last one everything above).

use serde::{Deserialize, Serialize};
use splitter_common::{Histogram, LATENCY_BUCKETS};

/// The lower and upper bound of bucket `i`, in µs.
#[must_use]
pub fn bucket_bounds(i: usize) -> (f64, f64) {
    let lower = if i == 0 { 0.0 } else { (1u64 << i) as f64 };
    (lower, (1u64 << (i + 1)) as f64)
}

/// The `q` quantile (0 to 1) in µs, or `None` for an empty histogram. Within a bucket the
/// samples are taken as spread evenly, so the answer is exact to within the bucket's width.
#[must_use]
pub fn quantile(histogram: &Histogram, q: f64) -> Option<f64> {
    let total: u64 = histogram.buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut below = 0u64;
    for (i, count) in histogram.buckets.iter().enumerate() {
        if *count == 0 {
            continue;
        }
        if (below + count) as f64 >= rank {
            let (lower, upper) = bucket_bounds(i);
            let inside = (rank - below as f64) / *count as f64;
            return Some(lower + inside * (upper - lower));
        }
        below += count;
    }
    Some(bucket_bounds(LATENCY_BUCKETS - 1).1)
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
    fn buckets_are_powers_of_two_of_microseconds() {
        assert_eq!(Histogram::bucket(0), 0);
        assert_eq!(Histogram::bucket(1), 0);
        assert_eq!(Histogram::bucket(2), 1);
        assert_eq!(Histogram::bucket(5_000), 12, "5 ms is in [4096, 8192) µs");
        assert_eq!(
            Histogram::bucket(50_000),
            15,
            "50 ms is in [32768, 65536) µs"
        );
        assert_eq!(Histogram::bucket(u64::MAX), LATENCY_BUCKETS - 1);
        assert_eq!(bucket_bounds(12), (4_096.0, 8_192.0));
    }

    #[test]
    fn known_answers() {
        assert_eq!(quantile(&Histogram::default(), 0.5), None);
        // 100 samples in [4096, 8192): the median sits halfway, p90 at 90%.
        let one = histogram(&[(12, 100)]);
        assert_eq!(quantile(&one, 0.5), Some(6_144.0));
        assert_eq!(quantile(&one, 0.9), Some(4_096.0 + 0.9 * 4_096.0));
        assert_eq!(quantile(&one, 0.0), Some(4_096.0));
        assert_eq!(quantile(&one, 1.0), Some(8_192.0));
        // 90 fast, 10 slow: p50 among the fast, p99 among the slow.
        let two = histogram(&[(3, 90), (15, 10)]);
        assert_eq!(quantile(&two, 0.5), Some(8.0 + (50.0 / 90.0) * 8.0));
        assert_eq!(quantile(&two, 0.9), Some(16.0));
        assert_eq!(quantile(&two, 0.99), Some(32_768.0 + 0.9 * 32_768.0));
        let q = Quantiles::of(&two);
        assert_eq!(q.p90_ms, Some(0.016));
    }
}
