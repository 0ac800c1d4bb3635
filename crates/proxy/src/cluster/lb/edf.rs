//! Envoy's earliest-deadline-first scheduler (`source/common/upstream/edf_scheduler.h`),
//! used for weighted round robin, weighted least request and locality picking.
//!
//! Each entry has a deadline `current_time + 1 / weight`; a pick takes the entry with the
//! earliest deadline (ties: the one inserted first), advances the current time to that
//! deadline and re-inserts the entry with its (possibly new) weight.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

#[derive(Debug)]
pub(super) struct Edf<T> {
    queue: BinaryHeap<Entry<T>>,
    current_time: f64,
    order_offset: u64,
}

#[derive(Debug)]
struct Entry<T> {
    deadline: f64,
    /// FIFO tie breaker for equal deadlines.
    order: u64,
    item: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl<T> Eq for Entry<T> {}

impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Entry<T> {
    /// Reversed, so that the max-heap's top is the earliest deadline, then the lowest order.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .deadline
            .total_cmp(&self.deadline)
            .then(other.order.cmp(&self.order))
    }
}

impl<T: Copy> Edf<T> {
    #[cfg(test)]
    pub(super) fn new() -> Self {
        Self {
            queue: BinaryHeap::new(),
            current_time: 0.0,
            order_offset: 0,
        }
    }

    /// Inserts `item` with deadline `current_time + 1 / weight` (`weight > 0`).
    pub(super) fn add(&mut self, weight: f64, item: T) {
        let deadline = self.current_time + 1.0 / weight;
        self.queue.push(Entry {
            deadline,
            order: self.order_offset,
            item,
        });
        self.order_offset += 1;
    }

    /// Picks the entry with the earliest deadline and re-adds it with `weight(item)`.
    pub(super) fn pick_and_add(&mut self, weight: impl Fn(T) -> f64) -> Option<T> {
        let top = self.queue.pop()?;
        self.current_time = top.deadline;
        self.add(weight(top.item), top.item);
        Some(top.item)
    }

    /// Envoy's `EdfScheduler::createWithPicks`: the scheduler as if `entries` had been added
    /// in order and then `picks` picks made, computed in O(n log n) rather than O(picks).
    /// The arithmetic (epsilon, flooring, the correction for rounding) is Envoy's exactly,
    /// so the resulting pick sequence is the same.
    pub(super) fn with_picks(entries: &[T], weight: impl Fn(T) -> f64, picks: u32) -> Self {
        // Over 400M picks is "enough" for Envoy too.
        let picks = picks % 429_496_729;
        let n = entries.len();
        let mut queue = Vec::with_capacity(n);
        if n == 0 {
            return Self {
                queue: BinaryHeap::new(),
                current_time: 0.0,
                order_offset: 0,
            };
        }
        // An epsilon avoids weights that are exact multiples of each other landing on the
        // same deadline as a one-by-one simulation would not.
        let aug = |e: T| weight(e) + 1e-13;
        let weights_sum = entries.iter().fold(0.0, |sum, &e| sum + aug(e));
        let picks_f = f64::from(picks);
        let mut picks_so_far: u32 = 0;
        let mut max_pick_time = 0.0_f64;
        for (i, &e) in entries.iter().enumerate() {
            let w = aug(e);
            let mut floor_picks = (w * picks_f / weights_sum) as u32;
            if floor_picks > 0 && f64::from(floor_picks) / w >= picks_f / weights_sum {
                floor_picks -= 1;
            }
            let pick_time = f64::from(floor_picks) / w;
            let deadline = f64::from(floor_picks + 1) / w;
            queue.push(Entry {
                deadline,
                order: i as u64,
                item: e,
            });
            max_pick_time = max_pick_time.max(pick_time);
            picks_so_far += floor_picks;
        }
        let mut edf = Self {
            queue: BinaryHeap::from(queue),
            current_time: max_pick_time,
            order_offset: n as u64,
        };
        while picks_so_far < picks {
            edf.pick_and_add(&weight);
            picks_so_far += 1;
        }
        edf
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sequence(edf: &mut Edf<usize>, weights: &[f64], n: usize) -> Vec<usize> {
        (0..n)
            .map(|_| edf.pick_and_add(|i| weights[i]).unwrap())
            .collect()
    }

    #[test]
    fn weighted_shares_are_exact_over_a_full_cycle() {
        let weights = [1.0, 2.0, 3.0, 4.0];
        let mut edf = Edf::with_picks(&[0, 1, 2, 3], |i| weights[i], 0);
        // One cycle is sum(weights) = 10 picks; several cycles stay exact.
        for _ in 0..7 {
            let picks = sequence(&mut edf, &weights, 10);
            for (i, w) in weights.iter().enumerate() {
                assert_eq!(picks.iter().filter(|&&p| p == i).count(), *w as usize);
            }
        }
    }

    #[test]
    fn sequence_follows_envoy_ordering() {
        // Weights 1 and 2: deadlines 1.0 and 0.5; host 1 first, then the 1.0 tie between
        // host 0 (inserted first) and host 1's second deadline goes to host 0.
        let weights = [1.0, 2.0];
        let mut edf = Edf::new();
        edf.add(1.0, 0);
        edf.add(2.0, 1);
        assert_eq!(sequence(&mut edf, &weights, 6), vec![1, 0, 1, 1, 0, 1]);
        // Equal weights: FIFO.
        let mut edf = Edf::new();
        for i in 0..3 {
            edf.add(1.0, i);
        }
        assert_eq!(sequence(&mut edf, &[1.0; 3], 6), vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn with_picks_matches_picking_one_by_one() {
        let weights = [25.0, 75.0, 10.0, 3.0, 3.0];
        let items = [0, 1, 2, 3, 4];
        for picks in [0_u32, 1, 7, 23, 113, 1000, 4097] {
            let mut slow = Edf::new();
            for &i in &items {
                slow.add(weights[i], i);
            }
            for _ in 0..picks {
                slow.pick_and_add(|i| weights[i]);
            }
            let mut fast = Edf::with_picks(&items, |i| weights[i], picks);
            // Envoy's epsilon can break exact ties differently than one-by-one picking,
            // so the sequences may differ by a swap; shares per cycle (116 picks) agree.
            for _ in 0..5 {
                let a = sequence(&mut slow, &weights, 116);
                let b = sequence(&mut fast, &weights, 116);
                for i in items {
                    let ca = a.iter().filter(|&&x| x == i).count();
                    let cb = b.iter().filter(|&&x| x == i).count();
                    assert!(ca.abs_diff(cb) <= 1, "picks={picks} host {i}: {ca} vs {cb}");
                }
            }
        }
    }
}
