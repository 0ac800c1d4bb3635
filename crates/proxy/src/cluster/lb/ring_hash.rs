//! Envoy's ketama-style hash ring (`ring_hash_lb.cc`).
//!
//! Every host gets `scale * normalized_weight` points (running sums keep the total
//! stable), where `scale = min(ceil(min_weight * min_ring_size) / min_weight,
//! max_ring_size)` so that the lightest host gets a whole number of points. A point is
//! the hash of `"<key>_<i>"` (`key` is `ip:port`, or the hostname), xxHash64 with seed 0
//! or MurmurHash2-64 with libstdc++'s seed. A request hash maps to the first point at or
//! after it, wrapping around.

use xxhash_rust::xxh64::xxh64;

use super::config::RingHashFunction;

#[derive(Debug, Default)]
pub(super) struct Ring {
    /// (point, host index), sorted by point.
    entries: Vec<(u64, u32)>,
}

impl Ring {
    /// `hosts` are (host index, normalized weight) pairs in Envoy's order; `key` gives the
    /// string a host is hashed by.
    pub(super) fn build<'k>(
        hosts: &[(u32, f64)],
        min_normalized_weight: f64,
        min_ring_size: u64,
        max_ring_size: u64,
        hash_function: RingHashFunction,
        key: impl Fn(u32) -> &'k str,
    ) -> Self {
        if hosts.is_empty() {
            return Self::default();
        }
        let scale = ((min_normalized_weight * min_ring_size as f64).ceil() / min_normalized_weight)
            .min(max_ring_size as f64);
        let mut entries = Vec::with_capacity(scale.ceil() as usize);
        let mut current_hashes = 0.0_f64;
        let mut target_hashes = 0.0_f64;
        let mut buf = String::new();
        for &(host, weight) in hosts {
            let k = key(host);
            buf.clear();
            buf.push_str(k);
            buf.push('_');
            let prefix = buf.len();
            target_hashes += scale * weight;
            let mut i: u64 = 0;
            while current_hashes < target_hashes {
                buf.truncate(prefix);
                buf.push_str(&i.to_string());
                let hash = match hash_function {
                    RingHashFunction::XxHash => xxh64(buf.as_bytes(), 0),
                    RingHashFunction::MurmurHash2 => murmur_hash2_64(buf.as_bytes(), STD_HASH_SEED),
                };
                entries.push((hash, host));
                i += 1;
                current_hashes += 1.0;
            }
        }
        entries.sort_by_key(|e| e.0);
        Self { entries }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The host for `hash`. With `attempt > 0` (a retry rejected the earlier picks) the
    /// pick moves `attempt` points along the ring, as Envoy does.
    pub(super) fn choose(&self, hash: u64, attempt: u32) -> Option<u32> {
        if self.entries.is_empty() {
            return None;
        }
        // Ported from ketama_get_server; signed indexes as in Envoy.
        let len = self.entries.len() as i64;
        let mut lowp: i64 = 0;
        let mut highp: i64 = len;
        let mut midp: i64;
        loop {
            midp = (lowp + highp) / 2;
            if midp == len {
                midp = 0;
                break;
            }
            let midval = self.entries[midp as usize].0;
            let midval1 = if midp == 0 {
                0
            } else {
                self.entries[midp as usize - 1].0
            };
            if hash <= midval && hash > midval1 {
                break;
            }
            if midval < hash {
                lowp = midp + 1;
            } else {
                highp = midp - 1;
            }
            if lowp > highp {
                midp = 0;
                break;
            }
        }
        if attempt > 0 {
            midp = (midp + i64::from(attempt)) % len;
        }
        Some(self.entries[midp as usize].1)
    }

    #[cfg(test)]
    pub(super) fn points(&self) -> &[(u64, u32)] {
        &self.entries
    }
}

/// libstdc++'s `std::hash<std::string>` seed, Envoy's `MurmurHash::STD_HASH_SEED`.
pub(super) const STD_HASH_SEED: u64 = 0xc70f6907;

/// Envoy's `MurmurHash::murmurHash2` (libstdc++'s 64-bit `_Hash_bytes`).
pub(super) fn murmur_hash2_64(key: &[u8], seed: u64) -> u64 {
    const MUL: u64 = 0xc6a4a7935bd1e995;
    let shift_mix = |v: u64| v ^ (v >> 47);
    let len = key.len();
    let aligned = len & !7;
    let mut hash = seed ^ (len as u64).wrapping_mul(MUL);
    for chunk in key[..aligned].chunks_exact(8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let data = shift_mix(u64::from_le_bytes(word).wrapping_mul(MUL)).wrapping_mul(MUL);
        hash ^= data;
        hash = hash.wrapping_mul(MUL);
    }
    if len & 7 != 0 {
        let data = key[aligned..]
            .iter()
            .rev()
            .fold(0u64, |acc, &b| (acc << 8) + u64::from(b));
        hash ^= data;
        hash = hash.wrapping_mul(MUL);
    }
    hash = shift_mix(hash).wrapping_mul(MUL);
    shift_mix(hash)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn keys() -> Vec<String> {
        (1..=4).map(|i| format!("10.0.0.{i}:80")).collect()
    }

    fn ring(weights: &[(u32, f64)], min: u64, max: u64, f: RingHashFunction) -> Ring {
        let keys = keys();
        let min_w = weights.iter().map(|w| w.1).fold(1.0, f64::min);
        Ring::build(weights, min_w, min, max, f, |i| keys[i as usize].as_str())
    }

    #[test]
    fn points_are_xxhash_of_key_underscore_index() {
        // Two equal hosts, min ring 4: 4 points, 2 each, hashed "ip:port_0", "ip:port_1".
        let r = ring(&[(0, 0.5), (1, 0.5)], 4, 8, RingHashFunction::XxHash);
        let mut expect = vec![
            (xxh64(b"10.0.0.1:80_0", 0), 0),
            (xxh64(b"10.0.0.1:80_1", 0), 0),
            (xxh64(b"10.0.0.2:80_0", 0), 1),
            (xxh64(b"10.0.0.2:80_1", 0), 1),
        ];
        expect.sort();
        assert_eq!(r.points(), expect.as_slice());
        // Values computed independently with the reference C xxHash (libxxhash 0.8.1).
        assert_eq!(xxh64(b"10.0.0.1:80_0", 0), 0x75041381e7371a08);
        assert_eq!(xxh64(b"10.0.0.2:80_1", 0), 0x3d32eaa4a864962e);
    }

    #[test]
    fn ring_size_follows_envoy_scaling() {
        // Weights 1:1:2, min ring 10: scale = ceil(0.25 * 10) / 0.25 = 12 points.
        let r = ring(
            &[(0, 0.25), (1, 0.25), (2, 0.5)],
            10,
            1000,
            RingHashFunction::XxHash,
        );
        assert_eq!(r.len(), 12);
        let count = |h| r.points().iter().filter(|p| p.1 == h).count();
        assert_eq!((count(0), count(1), count(2)), (3, 3, 6));
        // Capped by the maximum: 4 hosts at 1/4 with max 6 get 1.5 each -> 2,1,2,1.
        let q = 0.25;
        let r = ring(
            &[(0, q), (1, q), (2, q), (3, q)],
            1024,
            6,
            RingHashFunction::XxHash,
        );
        assert_eq!(r.len(), 6);
        let count = |h| r.points().iter().filter(|p| p.1 == h).count();
        assert_eq!((count(0), count(1), count(2), count(3)), (2, 1, 2, 1));
    }

    #[test]
    fn lookup_takes_the_first_point_at_or_after_the_hash() {
        let r = ring(&[(0, 0.5), (1, 0.5)], 4, 8, RingHashFunction::XxHash);
        let p = r.points().to_vec();
        for (i, &(point, host)) in p.iter().enumerate() {
            assert_eq!(r.choose(point, 0), Some(host), "exact point {i}");
            assert_eq!(r.choose(point - 1, 0), Some(host), "just before point {i}");
            if i + 1 < p.len() {
                assert_eq!(r.choose(point + 1, 0), Some(p[i + 1].1));
            }
        }
        // Past the last point wraps to the first.
        assert_eq!(r.choose(u64::MAX, 0), Some(p[0].1));
        assert_eq!(r.choose(0, 0), Some(p[0].1));
        // Retry attempts walk the ring.
        let first = r.choose(p[1].0, 0);
        assert_eq!(first, Some(p[1].1));
        assert_eq!(r.choose(p[1].0, 1), Some(p[2].1));
        assert_eq!(r.choose(p[1].0, 3), Some(p[0].1));
        assert_eq!(Ring::default().choose(1, 0), None);
    }

    #[test]
    fn murmur_matches_libstdcxx_std_hash() {
        // std::hash<std::string> of g++/libstdc++ (x86_64), computed independently.
        assert_eq!(murmur_hash2_64(b"", STD_HASH_SEED), 0x553e93901e462a6e);
        assert_eq!(murmur_hash2_64(b"a", STD_HASH_SEED), 0x454ddee488c1ed6b);
        assert_eq!(
            murmur_hash2_64(b"10.0.0.1:80_0", STD_HASH_SEED),
            0xbd8f6461ecffb28c
        );
        assert_eq!(
            murmur_hash2_64(b"abcdefghijklmnopq", STD_HASH_SEED),
            0xe39652518932c15f
        );
        let r = ring(&[(0, 1.0)], 2, 2, RingHashFunction::MurmurHash2);
        assert_eq!(
            r.points()[0].0.min(r.points()[1].0),
            murmur_hash2_64(b"10.0.0.1:80_0", STD_HASH_SEED)
                .min(murmur_hash2_64(b"10.0.0.1:80_1", STD_HASH_SEED))
        );
    }
}
