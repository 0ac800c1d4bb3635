//! Consistent hashing with bounded loads (`hash_balance_factor`), Envoy's
//! `BoundedLoadHashingLoadBalancer`: a host serving more than its share of
//! `hash_balance_factor`% of the cluster's active requests is skipped for other hosts in
//! an order shuffled by a `std::mt19937` seeded with the request hash.

use std::sync::Arc;

use super::super::Host;

/// Whether `host` is over its bound: returns its overload factor (`<= 1.0` is fine).
pub(super) fn overload_factor(host: &Host, weight: f64, cluster_active: u64, factor: u32) -> f64 {
    let total_slots = ((cluster_active + 1) * u64::from(factor)).div_ceil(100);
    let slots = ((total_slots as f64 * weight).ceil() as u64).max(1);
    host.active() as f64 / slots as f64
}

/// `chooseHost` of the bounded-load wrapper: `picked` is what the ring/table chose;
/// `weights` the (host, normalized weight) list in normalization order.
pub(super) fn choose(
    picked: u32,
    hash: u64,
    weights: &[(u32, f64)],
    hosts: &[Arc<Host>],
    factor: u32,
) -> u32 {
    let cluster_active: u64 = hosts.iter().map(|h| h.active()).sum();
    let weight_of = |h: u32| weights.iter().find(|w| w.0 == h).map_or(0.0, |w| w.1);
    let mut best = picked;
    let mut best_factor = overload_factor(
        &hosts[picked as usize],
        weight_of(picked),
        cluster_active,
        factor,
    );
    if best_factor <= 1.0 {
        return picked;
    }
    let n = weights.len() as u32;
    let mut order: Vec<u32> = (0..n).collect();
    let mut rng = Mt19937::new(hash as u32);
    for i in 0..n {
        let j = uniform(&mut rng, n - i);
        order.swap(i as usize, (i + j) as usize);
        let (alt, w) = weights[order[i as usize] as usize];
        if alt == picked {
            continue;
        }
        let f = overload_factor(&hosts[alt as usize], w, cluster_active, factor);
        if f <= 1.0 {
            return alt;
        }
        if best_factor > f {
            best = alt;
            best_factor = f;
        }
    }
    best
}

/// Uniform in `[0, k)` as Envoy draws it from the 32-bit generator.
fn uniform(rng: &mut Mt19937, k: u32) -> u32 {
    let bucket = (u64::from(u32::MAX) + 1) / u64::from(k);
    loop {
        let x = (u64::from(rng.next_u32()) / bucket) as u32;
        if x < k {
            return x;
        }
    }
}

/// `std::mt19937` (32-bit Mersenne Twister), seeded as the standard library seeds it.
pub(super) struct Mt19937 {
    state: [u32; 624],
    index: usize,
}

impl Mt19937 {
    pub(super) fn new(seed: u32) -> Self {
        let mut state = [0u32; 624];
        state[0] = seed;
        for i in 1..624 {
            let prev = state[i - 1];
            state[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        Self { state, index: 624 }
    }

    pub(super) fn next_u32(&mut self) -> u32 {
        if self.index >= 624 {
            for i in 0..624 {
                let y = (self.state[i] & 0x8000_0000) | (self.state[(i + 1) % 624] & 0x7fff_ffff);
                let mut v = self.state[(i + 397) % 624] ^ (y >> 1);
                if y & 1 != 0 {
                    v ^= 0x9908_b0df;
                }
                self.state[i] = v;
            }
            self.index = 0;
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::cluster::EdsHealth;
    use crate::cluster::lb::tests::hosts;
    use std::sync::atomic::Ordering;

    #[test]
    fn mt19937_reference_value() {
        // The C++ standard requires the 10000th output of a default-seeded mt19937.
        let mut rng = Mt19937::new(5489);
        let mut v = 0;
        for _ in 0..10000 {
            v = rng.next_u32();
        }
        assert_eq!(v, 4_123_659_995);
    }

    #[test]
    fn overloaded_host_is_skipped() {
        let hs = hosts(&[(0, 0, EdsHealth::Healthy); 3]);
        let weights = [(0, 1.0 / 3.0), (1, 1.0 / 3.0), (2, 1.0 / 3.0)];
        // Nothing active: the picked host is fine.
        assert_eq!(choose(0, 42, &weights, &hs, 150), 0);
        // Host 0 has all 9 active requests: slots = ceil(ceil(10 * 1.5) / 3) = 5 < 9.
        hs[0].state.active.store(9, Ordering::Relaxed);
        let alt = choose(0, 42, &weights, &hs, 150);
        assert_ne!(alt, 0);
        // The same hash always probes in the same order.
        assert_eq!(choose(0, 42, &weights, &hs, 150), alt);
        // Only host 0 is within its bound: slots = ceil(ceil(21 * 1.0) / 3) = 7.
        hs[0].state.active.store(0, Ordering::Relaxed);
        hs[1].state.active.store(10, Ordering::Relaxed);
        hs[2].state.active.store(10, Ordering::Relaxed);
        for hash in 0..20 {
            assert_eq!(choose(2, hash, &weights, &hs, 100), 0);
        }
    }
}
