//! Least request: power-of-N-choices over equally weighted hosts, and the dynamic weight
//! Envoy's EDF schedule uses otherwise (`least_request_lb.cc`).

use super::super::Host;

/// `weight / (active + 1) ^ active_request_bias`; the plain weight with bias 0.
pub(super) fn host_weight(host: &Host, bias: f64) -> f64 {
    let weight = f64::from(host.weight);
    let active = host.active();
    let value = if active != u64::MAX {
        active + 1
    } else {
        active
    };
    if bias == 1.0 {
        weight / value as f64
    } else if bias != 0.0 {
        weight / (value as f64).powf(bias)
    } else {
        weight
    }
}

/// `unweightedHostPickNChoices`: `choice_count` random samples (with replacement), the
/// first with strictly fewer active requests wins.
pub(super) fn n_choices(
    candidates: &[u32],
    hosts: &[std::sync::Arc<Host>],
    choice_count: u32,
    mut random: impl FnMut() -> u64,
) -> Option<u32> {
    if candidates.is_empty() {
        return None;
    }
    let mut best: Option<(u32, u64)> = None;
    for _ in 0..choice_count {
        let i = candidates[(random() % candidates.len() as u64) as usize];
        let active = hosts[i as usize].active();
        match best {
            Some((_, a)) if active >= a => {}
            _ => best = Some((i, active)),
        }
    }
    best.map(|b| b.0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::cluster::EdsHealth;
    use crate::cluster::lb::tests::hosts;
    use std::sync::atomic::Ordering;

    #[test]
    fn dynamic_weight() {
        let hs = hosts(&[(0, 0, EdsHealth::Healthy)]);
        let h = &hs[0];
        assert_eq!(host_weight(h, 1.0), 1.0);
        h.state.active.store(3, Ordering::Relaxed);
        assert_eq!(host_weight(h, 1.0), 0.25);
        assert_eq!(host_weight(h, 0.0), 1.0);
        assert_eq!(host_weight(h, 2.0), 1.0 / 16.0);
        assert!((host_weight(h, 0.5) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn picks_fewest_active_of_the_samples() {
        let hs = hosts(&[(0, 0, EdsHealth::Healthy); 4]);
        for (i, a) in [5, 1, 3, 0].iter().enumerate() {
            hs[i].state.active.store(*a, Ordering::Relaxed);
        }
        let all = [0, 1, 2, 3];
        // Samples 0 then 2: host 2 (3 < 5).
        let mut seq = [0u64, 2].into_iter();
        assert_eq!(n_choices(&all, &hs, 2, || seq.next().unwrap()), Some(2));
        // Samples 1 then 3: host 3 (0 < 1). Ties keep the first sample.
        let mut seq = [1u64, 3].into_iter();
        assert_eq!(n_choices(&all, &hs, 2, || seq.next().unwrap()), Some(3));
        hs[3].state.active.store(1, Ordering::Relaxed);
        let mut seq = [1u64, 3].into_iter();
        assert_eq!(n_choices(&all, &hs, 2, || seq.next().unwrap()), Some(1));
        // With choice_count = hosts and every host sampled, the least loaded wins.
        let mut seq = [0u64, 1, 2, 3].into_iter();
        assert_eq!(n_choices(&all, &hs, 4, || seq.next().unwrap()), Some(1));
        assert_eq!(n_choices(&[], &hs, 2, || 0), None);
    }
}
