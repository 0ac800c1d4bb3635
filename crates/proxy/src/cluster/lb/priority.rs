//! Priority levels and localities: Envoy's `LoadBalancerBase` (per-priority health,
//! load spill-over, panic mode) and the locality weighting of `LocalityWrr`.
//!
//! * A priority's health is `min(100, overprovisioning_factor * healthy / total)` with
//!   integer arithmetic (`total` excludes hosts pending their first health check; with
//!   `weighted_priority_health` the sums are of host weights instead of counts); degraded
//!   hosts get their own "degraded availability" the same way.
//! * Load (in percent, summing to 100) goes to priorities in order as far as their health
//!   allows, normalized by the total availability when that is below 100; what is left goes
//!   to degraded hosts, and rounding leftovers to the first available priority.
//! * A priority is in panic when `(healthy + degraded) / total < healthy_panic_threshold`
//!   (unless total availability is 100%); it then balances over all its hosts. When every
//!   priority is in panic, load is split by host count regardless of health.

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;

use super::super::{Health, Host, Locality, health_flag};

/// The hosts of a cluster grouped as Envoy's `PrioritySet` groups them. Depends only on
/// the endpoints, so it is built once per assignment and shared by rebuilt balancers.
#[derive(Debug, Default)]
pub(super) struct Topology {
    /// Priority 0 up to the highest priority with hosts (always at least one level).
    pub(super) priorities: Vec<PriorityHosts>,
    /// `policy.overprovisioning_factor`, percent.
    pub(super) overprovisioning_factor: u32,
    /// `policy.weighted_priority_health`.
    pub(super) weighted_priority_health: bool,
}

#[derive(Debug, Default)]
pub(super) struct PriorityHosts {
    /// Indexes into the cluster's host list, in endpoint order.
    pub(super) hosts: Vec<u32>,
    /// Hosts by locality: localities ordered by (region, zone, sub zone) as Envoy's
    /// `std::map<Locality, ..., LocalityLess>` orders them, hosts in endpoint order.
    pub(super) localities: Vec<LocalityHosts>,
}

#[derive(Debug, Default)]
pub(super) struct LocalityHosts {
    pub(super) hosts: Vec<u32>,
    /// `load_balancing_weight` of the locality at this priority; 0 when unset (or when
    /// the `LocalityLbEndpoints` has no `locality`), which gives it no traffic when
    /// locality-weighted balancing is on.
    pub(super) weight: u32,
}

impl Topology {
    pub(super) fn build(
        hosts: &[Arc<Host>],
        localities: &[Locality],
        assignment: Option<&ClusterLoadAssignment>,
        overprovisioning_factor: u32,
    ) -> Self {
        let levels = hosts
            .iter()
            .map(|h| h.priority as usize + 1)
            .max()
            .unwrap_or(1);
        let mut priorities: Vec<PriorityHosts> =
            (0..levels).map(|_| PriorityHosts::default()).collect();
        // Envoy's weight map per priority: set by every `LocalityLbEndpoints` that has both a
        // locality and a weight, the last one winning.
        let mut weights: Vec<BTreeMap<LocalityKey<'_>, u32>> = vec![BTreeMap::new(); levels];
        for (i, loc) in localities.iter().enumerate() {
            let has_locality = assignment
                .and_then(|cla| cla.endpoints.get(i))
                .is_none_or(|g| g.locality.is_some());
            if let (true, Some(w)) = (has_locality, loc.weight)
                && let Some(map) = weights.get_mut(loc.priority as usize)
            {
                map.insert(key(loc), w);
            }
        }
        let mut grouped: Vec<BTreeMap<LocalityKey<'_>, Vec<u32>>> = vec![BTreeMap::new(); levels];
        for (i, h) in hosts.iter().enumerate() {
            let p = h.priority as usize;
            priorities[p].hosts.push(i as u32);
            let k = localities.get(h.locality).map_or(("", "", ""), key);
            grouped[p].entry(k).or_default().push(i as u32);
        }
        for (p, groups) in grouped.into_iter().enumerate() {
            priorities[p].localities = groups
                .into_iter()
                .map(|(k, hosts)| LocalityHosts {
                    hosts,
                    weight: weights[p].get(&k).copied().unwrap_or(0),
                })
                .collect();
        }
        Self {
            priorities,
            overprovisioning_factor,
            weighted_priority_health: assignment
                .and_then(|cla| cla.policy.as_ref())
                .is_some_and(|p| p.weighted_priority_health),
        }
    }
}

/// Envoy orders localities by region, zone, sub zone.
type LocalityKey<'a> = (&'a str, &'a str, &'a str);

fn key(l: &Locality) -> LocalityKey<'_> {
    (&l.region, &l.zone, &l.sub_zone)
}

/// One priority's hosts split by current health.
#[derive(Debug, Default)]
pub(super) struct HealthSplit {
    pub(super) healthy: Vec<u32>,
    pub(super) degraded: Vec<u32>,
    /// Pending their first active health check: left out of health percentages.
    pub(super) excluded: Vec<u32>,
    /// Per locality (same order as [`PriorityHosts::localities`]).
    pub(super) healthy_per_locality: Vec<Vec<u32>>,
    pub(super) degraded_per_locality: Vec<Vec<u32>>,
    pub(super) excluded_per_locality: Vec<usize>,
}

impl HealthSplit {
    pub(super) fn of(level: &PriorityHosts, hosts: &[Arc<Host>]) -> Self {
        let state = |i: u32| {
            let h = &hosts[i as usize];
            let excluded = h
                .state
                .health_flags
                .load(std::sync::atomic::Ordering::Relaxed)
                & health_flag::PENDING_ACTIVE_HC
                != 0;
            (h.health(), excluded)
        };
        let mut split = Self::default();
        for &i in &level.hosts {
            let (health, excluded) = state(i);
            match health {
                Health::Healthy => split.healthy.push(i),
                Health::Degraded => split.degraded.push(i),
                Health::Unhealthy => {}
            }
            if excluded {
                split.excluded.push(i);
            }
        }
        for loc in &level.localities {
            let (mut healthy, mut degraded, mut excluded) = (Vec::new(), Vec::new(), 0);
            for &i in &loc.hosts {
                let (health, ex) = state(i);
                match health {
                    Health::Healthy => healthy.push(i),
                    Health::Degraded => degraded.push(i),
                    Health::Unhealthy => {}
                }
                excluded += usize::from(ex);
            }
            split.healthy_per_locality.push(healthy);
            split.degraded_per_locality.push(degraded);
            split.excluded_per_locality.push(excluded);
        }
        split
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Availability {
    Healthy,
    Degraded,
}

/// Per-priority load and panic state, as `LoadBalancerBase` computes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PriorityLoad {
    pub(super) healthy: Vec<u32>,
    pub(super) degraded: Vec<u32>,
    pub(super) panic: Vec<bool>,
}

impl PriorityLoad {
    pub(super) fn compute(
        topology: &Topology,
        splits: &[HealthSplit],
        hosts: &[Arc<Host>],
        panic_threshold: u64,
    ) -> Self {
        let n = topology.priorities.len();
        let factor = u64::from(topology.overprovisioning_factor);
        let mut health = vec![0u32; n];
        let mut degraded_avail = vec![0u32; n];
        for (p, (level, split)) in topology.priorities.iter().zip(splits).enumerate() {
            let host_count = level.hosts.len() - split.excluded.len();
            if host_count == 0 {
                continue;
            }
            let (healthy_w, degraded_w, total_w) = if topology.weighted_priority_health {
                let sum = |v: &[u32]| -> u64 {
                    v.iter().map(|&i| u64::from(hosts[i as usize].weight)).sum()
                };
                (
                    sum(&split.healthy),
                    sum(&split.degraded),
                    sum(&level.hosts) - sum(&split.excluded),
                )
            } else {
                (
                    split.healthy.len() as u64,
                    split.degraded.len() as u64,
                    host_count as u64,
                )
            };
            if total_w == 0 {
                continue;
            }
            health[p] = (factor * healthy_w / total_w).min(100) as u32;
            degraded_avail[p] = (factor * degraded_w / total_w).min(100) as u32;
        }
        let total_availability = normalized_total(&health, &degraded_avail);
        let mut load = Self {
            healthy: vec![0; n],
            degraded: vec![0; n],
            panic: vec![false; n],
        };
        if total_availability != 0 {
            let (first_healthy, left) =
                distribute(&mut load.healthy, &health, 100, total_availability);
            let (first_degraded, left) = distribute(
                &mut load.degraded,
                &degraded_avail,
                left,
                total_availability,
            );
            if left != 0 {
                match (first_healthy, first_degraded) {
                    (Some(p), _) => load.healthy[p] += left,
                    (None, Some(p)) => load.degraded[p] += left,
                    (None, None) => {}
                }
            }
        }
        // recalculatePerPriorityPanic
        let threshold = panic_threshold.min(100);
        if threshold == 0 && total_availability == 0 {
            // Nothing is available and panic is off: route "to" P0, which has no host.
            load.healthy[0] = 100;
            return load;
        }
        let mut total_panic = true;
        for (p, (level, split)) in topology.priorities.iter().zip(splits).enumerate() {
            load.panic[p] = total_availability != 100 && in_panic(level, split, threshold);
            total_panic &= load.panic[p];
        }
        if total_panic {
            // recalculateLoadInTotalPanic: by host count, regardless of health.
            let total_hosts: usize = topology.priorities.iter().map(|l| l.hosts.len()).sum();
            load.degraded.iter_mut().for_each(|d| *d = 0);
            if total_hosts == 0 {
                load.healthy.iter_mut().for_each(|h| *h = 0);
                load.healthy[0] = 100;
                return load;
            }
            let mut left = 100u32;
            let mut first_non_empty = None;
            for (p, level) in topology.priorities.iter().enumerate() {
                if first_non_empty.is_none() && !level.hosts.is_empty() {
                    first_non_empty = Some(p);
                }
                let share = (100 * level.hosts.len() / total_hosts) as u32;
                load.healthy[p] = share;
                left -= share;
            }
            if let Some(p) = first_non_empty {
                load.healthy[p] += left;
            }
        }
        load
    }

    /// `LoadBalancerBase::choosePriority`: `hash % 100 + 1` against the cumulative healthy
    /// loads, then the degraded ones.
    pub(super) fn choose(&self, hash: u64) -> (usize, Availability) {
        let h = (hash % 100 + 1) as u32;
        let mut acc = 0u32;
        for (p, l) in self.healthy.iter().enumerate() {
            acc += l;
            if h <= acc {
                return (p, Availability::Healthy);
            }
        }
        for (p, l) in self.degraded.iter().enumerate() {
            acc += l;
            if h <= acc {
                return (p, Availability::Degraded);
            }
        }
        (0, Availability::Healthy)
    }
}

fn normalized_total(health: &[u32], degraded: &[u32]) -> u32 {
    let sum: u32 = health.iter().sum::<u32>() + degraded.iter().sum::<u32>();
    sum.min(100)
}

/// Envoy's `distributeLoad`: returns the first priority with availability and the load
/// left over.
fn distribute(
    load: &mut [u32],
    availability: &[u32],
    mut total_load: u32,
    normalized_total: u32,
) -> (Option<usize>, u32) {
    let mut first = None;
    for (p, &a) in availability.iter().enumerate() {
        if first.is_none() && a > 0 {
            first = Some(p);
        }
        load[p] = total_load.min(a * 100 / normalized_total);
        total_load -= load[p];
    }
    (first, total_load)
}

/// `LoadBalancerBase::isHostSetInPanic`.
fn in_panic(level: &PriorityHosts, split: &HealthSplit, threshold: u64) -> bool {
    let host_count = level.hosts.len() - split.excluded.len();
    let pct = |n: usize| {
        if host_count == 0 {
            0.0
        } else {
            100.0 * n as f64 / host_count as f64
        }
    };
    pct(split.healthy.len()) + pct(split.degraded.len()) < threshold as f64
}

/// `LocalityWrr::effectiveLocalityWeight`: the locality's weight scaled by the share of
/// its hosts that are eligible (healthy or degraded), times the overprovisioning factor,
/// capped at 1.
pub(super) fn effective_locality_weight(
    locality: &LocalityHosts,
    eligible: usize,
    excluded: usize,
    overprovisioning_factor: u32,
) -> f64 {
    let host_count = locality.hosts.len() - excluded;
    if host_count == 0 {
        return 0.0;
    }
    let ratio = 1.0 * eligible as f64 / host_count as f64;
    let effective = (f64::from(overprovisioning_factor) / 100.0 * ratio).min(1.0);
    f64::from(locality.weight) * effective
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::cluster::EdsHealth;
    use crate::cluster::lb::tests::hosts;
    use std::sync::atomic::Ordering;

    fn level(healthy: usize, unhealthy: usize, priority: u32) -> Vec<(u32, usize, EdsHealth)> {
        let mut v = vec![(priority, 0, EdsHealth::Healthy); healthy];
        v.extend(vec![(priority, 0, EdsHealth::Unhealthy); unhealthy]);
        v
    }

    fn load_of(spec: &[(u32, usize, EdsHealth)], factor: u32, threshold: u64) -> PriorityLoad {
        let hosts = hosts(spec);
        let localities = vec![Locality {
            region: String::new(),
            zone: String::new(),
            sub_zone: String::new(),
            weight: None,
            priority: 0,
        }];
        let topo = Topology::build(&hosts, &localities, None, factor);
        let splits: Vec<_> = topo
            .priorities
            .iter()
            .map(|l| HealthSplit::of(l, &hosts))
            .collect();
        PriorityLoad::compute(&topo, &splits, &hosts, threshold)
    }

    #[test]
    fn healthy_priority_takes_all_load() {
        let l = load_of(&[level(4, 0, 0), level(4, 0, 1)].concat(), 140, 50);
        assert_eq!(l.healthy, vec![100, 0]);
        assert_eq!(l.panic, vec![false, false]);
        // 80% healthy * 1.4 = 112% -> still 100%.
        let l = load_of(&[level(4, 1, 0), level(4, 0, 1)].concat(), 140, 50);
        assert_eq!(l.healthy, vec![100, 0]);
    }

    #[test]
    fn envoy_docs_priority_failover_examples() {
        // The table in Envoy's "Priority levels" docs (overprovisioning 1.4).
        let cases = [
            (10, 100, 0),
            (9, 100, 0),
            (8, 100, 0),
            (7, 98, 2),
            (5, 70, 30),
            (1, 14, 86),
        ];
        for (healthy, p0, p1) in cases {
            let spec = [level(healthy, 10 - healthy, 0), level(10, 0, 1)].concat();
            let l = load_of(&spec, 140, 50);
            assert_eq!(l.healthy, vec![p0, p1], "P0 {healthy}/10 healthy");
        }
        // P0 and P1 20% healthy (28% each after overprovisioning), P2 takes the rest.
        let spec = [level(2, 8, 0), level(2, 8, 1), level(10, 0, 2)].concat();
        assert_eq!(load_of(&spec, 140, 50).healthy, vec![28, 28, 44]);
    }

    #[test]
    fn normalization_below_full_availability() {
        // P0 20%, P1 20% healthy, nothing else: availability 28+28=56, loads 50/50.
        let spec = [level(2, 8, 0), level(2, 8, 1)].concat();
        let l = load_of(&spec, 140, 0);
        assert_eq!(l.healthy, vec![50, 50]);
        // Envoy's example: availabilities 10/20/10 healthy and 20/10/0 degraded (factor
        // 1.0) get 16/28/14 healthy, 28/14/0 degraded load (P0 takes the rounding).
        let mut spec = Vec::new();
        for (p, healthy, degraded) in [(0, 1, 2), (1, 2, 1), (2, 1, 0)] {
            spec.extend(vec![(p, 0, EdsHealth::Healthy); healthy]);
            spec.extend(vec![(p, 0, EdsHealth::Degraded); degraded]);
            spec.extend(vec![(p, 0, EdsHealth::Unhealthy); 10 - healthy - degraded]);
        }
        let l = load_of(&spec, 100, 0);
        assert_eq!(l.healthy, vec![16, 28, 14]);
        assert_eq!(l.degraded, vec![28, 14, 0]);
    }

    #[test]
    fn overprovisioning_factor_changes_the_split() {
        // Factor 1.0: 50% healthy P0 keeps exactly 50%.
        let spec = [level(5, 5, 0), level(10, 0, 1)].concat();
        assert_eq!(load_of(&spec, 100, 50).healthy, vec![50, 50]);
        // P0 with 50% healthy and factor 1.4 gets 70%.
        assert_eq!(load_of(&spec, 140, 50).healthy, vec![70, 30]);
    }

    #[test]
    fn panic_mode() {
        // One priority, 40% healthy (< 50% threshold): panic; load stays on P0.
        let l = load_of(&level(4, 6, 0), 140, 50);
        assert_eq!(l.panic, vec![true]);
        assert_eq!(l.healthy, vec![100]);
        // 50% healthy is not panic (strictly below the threshold).
        assert_eq!(load_of(&level(5, 5, 0), 140, 50).panic, vec![false]);
        // Threshold 0 never panics.
        assert_eq!(load_of(&level(1, 9, 0), 140, 0).panic, vec![false]);
        // All down, threshold 0: P0 gets the (useless) load.
        let l = load_of(&[level(0, 2, 0), level(0, 2, 1)].concat(), 140, 0);
        assert_eq!((l.healthy, l.panic), (vec![100, 0], vec![false, false]));
        // Total panic: split by host count, regardless of health.
        let l = load_of(&[level(1, 9, 0), level(0, 30, 1)].concat(), 140, 50);
        assert_eq!(l.panic, vec![true, true]);
        assert_eq!(l.healthy, vec![25, 75]);
        // A priority is not in panic when the total health is 100%, however low its own.
        let l = load_of(&[level(1, 9, 0), level(10, 0, 1)].concat(), 140, 50);
        assert_eq!(l.panic, vec![false, false]);
        assert_eq!(l.healthy, vec![14, 86]);
        // Total health below 100: the low priority panics on its own.
        let l = load_of(&[level(1, 9, 0), level(5, 5, 1)].concat(), 140, 50);
        assert_eq!(l.panic, vec![true, false]);
    }

    #[test]
    fn excluded_hosts_do_not_count() {
        let hosts = hosts(&level(2, 2, 0));
        // Two unhealthy hosts pending their first health check are excluded: 2/2 healthy.
        for h in &hosts[2..] {
            h.state
                .health_flags
                .fetch_or(health_flag::PENDING_ACTIVE_HC, Ordering::Relaxed);
        }
        let topo = Topology::build(&hosts, &[], None, 140);
        let splits: Vec<_> = topo
            .priorities
            .iter()
            .map(|l| HealthSplit::of(l, &hosts))
            .collect();
        let l = PriorityLoad::compute(&topo, &splits, &hosts, 90);
        assert_eq!(l.panic, vec![false]);
    }

    #[test]
    fn choose_priority_uses_hash_mod_100() {
        let l = PriorityLoad {
            healthy: vec![70, 0],
            degraded: vec![0, 30],
            panic: vec![false, false],
        };
        assert_eq!(l.choose(0), (0, Availability::Healthy));
        assert_eq!(l.choose(69), (0, Availability::Healthy));
        assert_eq!(l.choose(70), (1, Availability::Degraded));
        assert_eq!(l.choose(199), (1, Availability::Degraded));
        let hits = (0..100).filter(|&h| l.choose(h).0 == 0).count();
        assert_eq!(hits, 70);
    }

    #[test]
    fn locality_effective_weight() {
        let loc = LocalityHosts {
            hosts: (0..10).collect(),
            weight: 3,
        };
        assert_eq!(effective_locality_weight(&loc, 10, 0, 140), 3.0);
        // 50% eligible * 1.4 = 0.7.
        assert!((effective_locality_weight(&loc, 5, 0, 140) - 2.1).abs() < 1e-12);
        assert_eq!(effective_locality_weight(&loc, 0, 0, 140), 0.0);
        assert_eq!(effective_locality_weight(&loc, 5, 10, 140), 0.0);
    }
}
