//! Slot tables: a pool's weighted backends spread over `SLOTS_PER_POOL` slots, so the kernel
//! picks a backend with one hash and one array read. Each backend with a positive weight gets
//! a share of slots proportional to its weight (largest remainder), and the slots are
//! interleaved (smooth weighted round robin) rather than in blocks.

use std::net::SocketAddr;

use splitter_common::maps::SLOTS_PER_POOL;

/// A backend and its weight, as the config gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WeightedBackend {
    pub addr: SocketAddr,
    pub weight: u32,
}

/// The slot table of a pool; `None` is an unset slot (the pool has no backend with a weight).
#[must_use]
pub fn build(backends: &[WeightedBackend]) -> Vec<Option<SocketAddr>> {
    let slots = SLOTS_PER_POOL as usize;
    let live: Vec<&WeightedBackend> = backends
        .iter()
        .filter(|b| b.weight > 0)
        .take(slots)
        .collect();
    if live.is_empty() {
        return vec![None; slots];
    }
    let counts = apportion(
        &live.iter().map(|b| u64::from(b.weight)).collect::<Vec<_>>(),
        slots,
    );
    // Smooth weighted round robin over the slot counts: interleaves, and is exact.
    let mut current = vec![0i64; live.len()];
    let total = slots as i64;
    (0..slots)
        .map(|_| {
            for (c, n) in current.iter_mut().zip(&counts) {
                *c += *n as i64;
            }
            let best = (0..live.len())
                .max_by_key(|i| (current[*i], std::cmp::Reverse(*i)))
                .unwrap_or(0);
            current[best] -= total;
            Some(live[best].addr)
        })
        .collect()
}

/// Splits `total` into parts proportional to `weights` (largest remainder), every weight
/// getting at least one part while there are parts to give.
fn apportion(weights: &[u64], total: usize) -> Vec<usize> {
    let sum: u64 = weights.iter().sum();
    let total_u64 = total as u64;
    let mut counts: Vec<usize> = weights
        .iter()
        .map(|w| (w * total_u64 / sum) as usize)
        .collect();
    // Each floor loses less than one part, so fewer than `weights.len()` parts are left over;
    // they go to the largest remainders, ties to the earlier backend.
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by_key(|i| std::cmp::Reverse((weights[*i] * total_u64) % sum));
    let left_over = total - counts.iter().sum::<usize>();
    for i in order.into_iter().take(left_over) {
        counts[i] += 1;
    }
    // Nobody with a weight goes without a slot: take one from the largest.
    for i in 0..counts.len() {
        if counts[i] == 0
            && let Some(largest) = (0..counts.len()).max_by_key(|j| counts[*j])
            && counts[largest] > 1
        {
            counts[largest] -= 1;
            counts[i] = 1;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(last: u8, weight: u32) -> WeightedBackend {
        WeightedBackend {
            addr: SocketAddr::from(([198, 18, 1, last], 8080)),
            weight,
        }
    }

    fn count(table: &[Option<SocketAddr>], b: &WeightedBackend) -> usize {
        table.iter().filter(|s| **s == Some(b.addr)).count()
    }

    #[test]
    fn one_backend_fills_every_slot() {
        let b = backend(2, 1);
        let table = build(&[b]);
        assert_eq!(table.len(), SLOTS_PER_POOL as usize);
        assert_eq!(count(&table, &b), SLOTS_PER_POOL as usize);
    }

    #[test]
    fn an_empty_or_zero_weight_pool_leaves_every_slot_unset() {
        assert!(build(&[]).iter().all(Option::is_none));
        assert!(
            build(&[backend(2, 0), backend(3, 0)])
                .iter()
                .all(Option::is_none)
        );
    }

    #[test]
    fn slots_follow_weights_and_are_interleaved() {
        let (a, b, zero) = (backend(2, 1), backend(3, 3), backend(4, 0));
        let table = build(&[a, b, zero]);
        assert_eq!(count(&table, &a), 64);
        assert_eq!(count(&table, &b), 192);
        assert_eq!(count(&table, &zero), 0);
        assert!(table.iter().all(Option::is_some));
        // Interleaved: no run of the light backend's slots longer than one.
        assert!(
            table
                .windows(2)
                .all(|w| !(w[0] == Some(a.addr) && w[1] == Some(a.addr)))
        );
    }

    #[test]
    fn uneven_weights_use_every_slot_and_every_backend() {
        let pool: Vec<_> = (1..=7).map(|i| backend(i, u32::from(i))).collect();
        let table = build(&pool);
        assert!(table.iter().all(Option::is_some));
        for b in &pool {
            let expected = 256.0 * f64::from(b.weight) / 28.0;
            let got = count(&table, b) as f64;
            assert!((got - expected).abs() <= 1.0, "{b:?}: {got} vs {expected}");
        }
    }

    #[test]
    fn a_heavy_backend_never_starves_a_light_one() {
        let (heavy, light) = (backend(2, 1_000_000), backend(3, 1));
        let table = build(&[heavy, light]);
        assert_eq!(count(&table, &light), 1);
        assert_eq!(count(&table, &heavy), 255);
    }
}
