//! Balancer-level tests: deterministic (fixed seeds), statistical where Envoy is random.

use std::sync::atomic::Ordering;

use super::*;
use crate::addr::Target;
use crate::cluster::{EdsHealth, HostState, health_flag};

/// Hosts of weight 1, given as (priority, locality index, EDS health).
pub(in crate::cluster) fn hosts(spec: &[(u32, usize, EdsHealth)]) -> Vec<Arc<Host>> {
    let spec: Vec<_> = spec.iter().map(|&(p, l, h)| (p, l, h, 1)).collect();
    weighted(&spec)
}

/// Hosts given as (priority, locality index, EDS health, weight); host `i` is
/// `10.0.x.y:80` with `y = i % 250 + 1`.
pub(in crate::cluster) fn weighted(spec: &[(u32, usize, EdsHealth, u32)]) -> Vec<Arc<Host>> {
    spec.iter()
        .enumerate()
        .map(|(i, &(priority, locality, eds_health, weight))| {
            let target = Target::Ip(
                format!("10.0.{}.{}:80", i / 250, i % 250 + 1)
                    .parse()
                    .expect("address"),
            );
            Arc::new(Host {
                state: HostState::new(&target),
                hostname: format!("host-{i}"),
                target,
                weight,
                priority,
                locality,
                eds_health,
                transport: 0,
                tls: None,
            })
        })
        .collect()
}

/// Localities `z0, z1, ...` at priority 0 with the given weights.
fn localities(weights: &[Option<u32>]) -> Vec<Locality> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &weight)| Locality {
            region: "r".into(),
            zone: format!("z{i}"),
            sub_zone: String::new(),
            weight,
            priority: 0,
        })
        .collect()
}

const H: EdsHealth = EdsHealth::Healthy;
const U: EdsHealth = EdsHealth::Unhealthy;
const D: EdsHealth = EdsHealth::Degraded;

fn balancer(
    config: LbConfig,
    hosts: &[Arc<Host>],
    locs: &[Locality],
    entropy: u64,
) -> LoadBalancer {
    let topology = Topology::build(hosts, locs, None, 140);
    LoadBalancer::build(Arc::new(config), Arc::new(topology), hosts, None, entropy)
}

fn config(policy: Policy) -> LbConfig {
    LbConfig {
        policy,
        ..LbConfig::default()
    }
}

fn counts(lb: &LoadBalancer, hosts: &[Arc<Host>], picks: usize) -> Vec<usize> {
    let mut c = vec![0; hosts.len()];
    for _ in 0..picks {
        let h = lb.pick(hosts, &LbContext::default()).expect("a host");
        c[index(hosts, h)] += 1;
    }
    c
}

fn index(hosts: &[Arc<Host>], h: &Arc<Host>) -> usize {
    hosts
        .iter()
        .position(|x| Arc::ptr_eq(x, h))
        .expect("host from the list")
}

fn near(actual: usize, expected: f64, tolerance: f64) -> bool {
    (actual as f64 - expected).abs() <= expected * tolerance
}

const RING: Policy = Policy::RingHash {
    min_ring_size: 1024,
    max_ring_size: 8 * 1024 * 1024,
    hash_function: RingHashFunction::XxHash,
};
const MAGLEV: Policy = Policy::Maglev { table_size: 65537 };

#[test]
fn round_robin_equal_weights_rotates_from_the_seed() {
    let hs = hosts(&[(0, 0, H); 4]);
    let lb = balancer(config(Policy::RoundRobin), &hs, &[], 7);
    let first = index(&hs, lb.pick(&hs, &LbContext::default()).unwrap());
    assert_eq!(first as u64, lb.seed % 4, "the rotation starts at seed % n");
    for k in 1..12 {
        let i = index(&hs, lb.pick(&hs, &LbContext::default()).unwrap());
        assert_eq!(i, (first + k) % 4);
    }
    // Unhealthy hosts are skipped (3 of 4 healthy is not panic).
    hs[2]
        .state
        .health_flags
        .store(health_flag::FAILED_OUTLIER_CHECK, Ordering::Relaxed);
    let lb = lb.refreshed(&hs);
    let c = counts(&lb, &hs, 300);
    assert_eq!(c, vec![100, 100, 0, 100]);
}

#[test]
fn weighted_round_robin_is_exactly_proportional() {
    let hs = weighted(&[(0, 0, H, 1), (0, 0, H, 2), (0, 0, H, 3)]);
    for entropy in [1, 2, 3, 99] {
        let lb = balancer(config(Policy::RoundRobin), &hs, &[], entropy);
        // A full EDF cycle is 6 picks; over whole cycles shares are exact up to the
        // cycle the random pre-picks started in.
        let c = counts(&lb, &hs, 6000);
        for (i, expect) in [1000, 2000, 3000].into_iter().enumerate() {
            assert!(c[i].abs_diff(expect) <= 1, "entropy {entropy}: {c:?}");
        }
        // Every window of one cycle after that holds each host its weight's times, ±1.
        let seq: Vec<usize> = (0..60)
            .map(|_| index(&hs, lb.pick(&hs, &LbContext::default()).unwrap()))
            .collect();
        for w in seq.windows(6) {
            for (i, weight) in [1usize, 2, 3].into_iter().enumerate() {
                let n = w.iter().filter(|&&x| x == i).count();
                assert!(n.abs_diff(weight) <= 1, "{seq:?}");
            }
        }
    }
}

#[test]
fn least_request_two_choices_and_weighted() {
    let hs = hosts(&[(0, 0, H); 4]);
    hs[0].state.active.store(10, Ordering::Relaxed);
    let policy = Policy::LeastRequest {
        choice_count: 2,
        active_request_bias: 1.0,
        bias_configured: false,
    };
    let lb = balancer(config(policy.clone()), &hs, &[], 5);
    let c = counts(&lb, &hs, 40_000);
    // Host 0 wins only when both samples are host 0: 1/16.
    assert!(near(c[0], 2500.0, 0.1), "{c:?}");
    for n in &c[1..] {
        assert!(near(*n, 12_500.0, 0.05), "{c:?}");
    }
    // Unequal weights: EDF over weight / (active + 1).
    let hs = weighted(&[(0, 0, H, 1), (0, 0, H, 2)]);
    hs[1].state.active.store(3, Ordering::Relaxed);
    let lb = balancer(config(policy), &hs, &[], 5);
    let c = counts(&lb, &hs, 3000);
    // Effective weights 1 and 2/4: a 2:1 split.
    assert!(
        c[0].abs_diff(2000) <= 2 && c[1].abs_diff(1000) <= 2,
        "{c:?}"
    );
    // A configured bias forces weighted selection even with equal weights.
    let hs = hosts(&[(0, 0, H); 2]);
    hs[0].state.active.store(1, Ordering::Relaxed);
    let biased = Policy::LeastRequest {
        choice_count: 2,
        active_request_bias: 1.0,
        bias_configured: true,
    };
    let lb = balancer(config(biased), &hs, &[], 5);
    let c = counts(&lb, &hs, 3000);
    assert!(
        c[0].abs_diff(1000) <= 2 && c[1].abs_diff(2000) <= 2,
        "{c:?}"
    );
}

#[test]
fn random_is_uniform_and_ignores_weights() {
    let hs = weighted(&[(0, 0, H, 1), (0, 0, H, 5), (0, 0, H, 1)]);
    let lb = balancer(config(Policy::Random), &hs, &[], 11);
    let c = counts(&lb, &hs, 30_000);
    for n in c {
        assert!(near(n, 10_000.0, 0.05), "{n}");
    }
}

#[test]
fn priority_failover_percentages() {
    // P0: 5 of 10 healthy -> 70% with the default overprovisioning factor; P1 30%.
    let mut spec = vec![(0, 0, H); 5];
    spec.extend(vec![(0, 0, U); 5]);
    spec.extend(vec![(1, 0, H); 10]);
    let hs = hosts(&spec);
    let lb = balancer(config(Policy::RoundRobin), &hs, &[], 3);
    assert_eq!(lb.load.healthy, vec![70, 30]);
    let c = counts(&lb, &hs, 20_000);
    let p0: usize = c[..10].iter().sum();
    let p1: usize = c[10..].iter().sum();
    assert!(
        near(p0, 14_000.0, 0.03) && near(p1, 6_000.0, 0.05),
        "{p0} {p1}"
    );
    assert!(
        c[5..10].iter().all(|&n| n == 0),
        "unhealthy P0 hosts get nothing"
    );
    // The same holds for hashing balancers: the hash picks the priority.
    let lb = balancer(config(RING), &hs, &[], 3);
    let mut p0 = 0;
    for k in 0..10_000u64 {
        let ctx = LbContext::with_hash(Some(xxhash_rust::xxh64::xxh64(&k.to_le_bytes(), 0)));
        let h = lb.pick(&hs, &ctx).unwrap();
        if h.priority == 0 {
            assert!(h.is_healthy());
            p0 += 1;
        }
    }
    assert!(near(p0, 7_000.0, 0.05), "{p0}");
}

#[test]
fn degraded_hosts_are_used_after_healthy() {
    // P0 has only degraded hosts, P1 is healthy: P0's degraded availability (100%) comes
    // after P1's healthy availability (100%), so P1 takes everything.
    let hs = hosts(&[(0, 0, D), (0, 0, D), (1, 0, H), (1, 0, H)]);
    let lb = balancer(config(Policy::RoundRobin), &hs, &[], 1);
    assert_eq!(lb.load.healthy, vec![0, 100]);
    // Only degraded hosts anywhere: they are used.
    let hs = hosts(&[(0, 0, D), (0, 0, D), (0, 0, U)]);
    let lb = balancer(config(Policy::RoundRobin), &hs, &[], 1);
    // Degraded availability 1.4 * 2/3 = 93%, normalized to all the load.
    assert_eq!(
        (lb.load.healthy.clone(), lb.load.degraded.clone()),
        (vec![0], vec![100])
    );
    let c = counts(&lb, &hs, 100);
    assert_eq!(c, vec![50, 50, 0]);
}

#[test]
fn panic_mode_uses_all_hosts() {
    // 1 of 4 healthy (25% < 50%): all four hosts share the traffic.
    let hs = hosts(&[(0, 0, H), (0, 0, U), (0, 0, U), (0, 0, U)]);
    let lb = balancer(config(Policy::RoundRobin), &hs, &[], 1);
    assert_eq!(lb.load.panic, vec![true]);
    assert_eq!(counts(&lb, &hs, 400), vec![100; 4]);
    // Panic threshold 0 disables it: only the healthy host.
    let cfg = LbConfig {
        healthy_panic_threshold: 0,
        ..config(Policy::RoundRobin)
    };
    let lb = balancer(cfg, &hs, &[], 1);
    assert_eq!(counts(&lb, &hs, 400), vec![400, 0, 0, 0]);
    // No host healthy and no panic: nothing to pick.
    let down = hosts(&[(0, 0, U), (0, 0, U)]);
    let cfg = LbConfig {
        healthy_panic_threshold: 0,
        ..config(Policy::RoundRobin)
    };
    let lb = balancer(cfg, &down, &[], 1);
    assert!(lb.pick(&down, &LbContext::default()).is_none());
    // Hashing balancers in panic hash over all hosts.
    let lb = balancer(config(MAGLEV), &hs, &[], 1);
    let mut seen = [false; 4];
    for k in 0..200u64 {
        let h = lb.pick(&hs, &LbContext::with_hash(Some(k * 7919))).unwrap();
        seen[index(&hs, h)] = true;
    }
    assert_eq!(seen, [true; 4]);
}

#[test]
fn locality_weights_split_traffic() {
    let cfg = LbConfig {
        locality_weighted: true,
        ..config(Policy::RoundRobin)
    };
    // Locality z0 (weight 1) with one host, z1 (weight 3) with two.
    let hs = hosts(&[(0, 0, H), (0, 1, H), (0, 1, H)]);
    let locs = localities(&[Some(1), Some(3)]);
    let lb = balancer(cfg.clone(), &hs, &locs, 9);
    let c = counts(&lb, &hs, 4000);
    assert!(c[0].abs_diff(1000) <= 1, "{c:?}");
    assert!(
        c[1].abs_diff(1500) <= 1 && c[2].abs_diff(1500) <= 1,
        "{c:?}"
    );
    // Half of z1 unhealthy: its weight becomes 3 * min(1, 1.4 * 0.5) = 2.1.
    let hs = hosts(&[(0, 0, H), (0, 1, H), (0, 1, U)]);
    let lb = balancer(cfg.clone(), &hs, &locs, 9);
    let c = counts(&lb, &hs, 3100);
    assert!(
        c[0].abs_diff(1000) <= 1 && c[1].abs_diff(2100) <= 1,
        "{c:?}"
    );
    assert_eq!(c[2], 0);
    // A locality without a weight gets nothing.
    let locs = localities(&[None, Some(3)]);
    let hs = hosts(&[(0, 0, H), (0, 1, H)]);
    let lb = balancer(cfg.clone(), &hs, &locs, 9);
    assert_eq!(counts(&lb, &hs, 100), vec![0, 100]);
    // Without locality_weighted_lb_config the weights are ignored.
    let lb = balancer(config(Policy::RoundRobin), &hs, &locs, 9);
    assert_eq!(counts(&lb, &hs, 100), vec![50, 50]);
    // Hashing balancers split by the raw locality weights.
    let locs = localities(&[Some(1), Some(3)]);
    let hs = hosts(&[(0, 0, H), (0, 1, H)]);
    let ring = LbConfig {
        locality_weighted: true,
        ..config(RING)
    };
    let lb = balancer(ring, &hs, &locs, 9);
    let Kind::Hash(tables) = &lb.kind else {
        panic!("hash tables")
    };
    assert_eq!(tables[0].weights, vec![(0, 0.25), (1, 0.75)]);
}

fn keys_to_targets(lb: &LoadBalancer, hs: &[Arc<Host>], keys: u64) -> Vec<Target> {
    (0..keys)
        .map(|k| {
            let hash = xxhash_rust::xxh64::xxh64(format!("key-{k}").as_bytes(), 0);
            lb.pick(hs, &LbContext::with_hash(Some(hash)))
                .unwrap()
                .target
                .clone()
        })
        .collect()
}

#[test]
fn consistent_hashing_is_stable_and_moves_few_keys() {
    for policy in [RING, MAGLEV] {
        let four = hosts(&[(0, 0, H); 4]);
        let lb = balancer(config(policy.clone()), &four, &[], 1);
        let before = keys_to_targets(&lb, &four, 10_000);
        // Same key, same host, whatever the balancer's own randomness.
        let again = balancer(config(policy.clone()), &four, &[], 2);
        assert_eq!(keys_to_targets(&again, &four, 10_000), before);
        // Keys spread over all hosts.
        for h in &four {
            let n = before.iter().filter(|t| **t == h.target).count();
            assert!(near(n, 2500.0, 0.2), "{policy:?}: {n}");
        }
        // A fifth host takes about a fifth of the keys. (Envoy's ring also shrinks every
        // host's share of points, 256 -> 205, so a few keys move between old hosts.)
        let five = hosts(&[(0, 0, H); 5]);
        let lb = balancer(config(policy.clone()), &five, &[], 1);
        let after = keys_to_targets(&lb, &five, 10_000);
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        let to_new = after.iter().filter(|t| **t == five[4].target).count();
        assert!(near(to_new, 2000.0, 0.2), "{policy:?}: {to_new}");
        assert!(moved < 3300, "{policy:?}: {moved}");
        // The fifth host unhealthy: the table is the four-host one again.
        five[4]
            .state
            .health_flags
            .store(health_flag::FAILED_ACTIVE_HC, Ordering::Relaxed);
        let lb = lb.refreshed(&five);
        assert_eq!(keys_to_targets(&lb, &five, 10_000), before, "{policy:?}");
    }
}

#[test]
fn hashing_retries_move_to_other_hosts_and_no_hash_is_random() {
    for policy in [RING, MAGLEV] {
        let hs = hosts(&[(0, 0, H); 3]);
        let lb = balancer(config(policy.clone()), &hs, &[], 1);
        let ctx = LbContext::with_hash(Some(12345));
        let first = lb.pick(&hs, &ctx).unwrap();
        assert!(Arc::ptr_eq(first, lb.pick(&hs, &ctx).unwrap()));
        let others = (1..8)
            .filter(|&a| !Arc::ptr_eq(first, lb.pick(&hs, &ctx.attempt(a)).unwrap()))
            .count();
        assert!(others > 0, "{policy:?}: retries reach another host");
        // Without a hash every host gets picked.
        let c = counts(&lb, &hs, 3000);
        assert!(c.iter().all(|&n| near(n, 1000.0, 0.15)), "{c:?}");
    }
}

#[test]
fn ring_uses_hostnames_when_asked() {
    let hs = hosts(&[(0, 0, H); 3]);
    let cfg = LbConfig {
        use_hostname_for_hashing: true,
        ..config(Policy::RingHash {
            min_ring_size: 3,
            max_ring_size: 3,
            hash_function: RingHashFunction::XxHash,
        })
    };
    let lb = balancer(cfg, &hs, &[], 1);
    // One point per host: "host-<i>_0".
    for i in 0..3 {
        let point = xxhash_rust::xxh64::xxh64(format!("host-{i}_0").as_bytes(), 0);
        let h = lb.pick(&hs, &LbContext::with_hash(Some(point))).unwrap();
        assert_eq!(h.hostname, format!("host-{i}"));
    }
}

#[test]
fn bounded_load_spreads_a_hot_key() {
    let hs = hosts(&[(0, 0, H); 3]);
    let cfg = LbConfig {
        hash_balance_factor: 150,
        ..config(MAGLEV)
    };
    let lb = balancer(cfg, &hs, &[], 1);
    let ctx = LbContext::with_hash(Some(42));
    let hot = lb.pick(&hs, &ctx).unwrap().clone();
    hot.state.active.store(50, Ordering::Relaxed);
    let other = lb.pick(&hs, &ctx).unwrap();
    assert!(!Arc::ptr_eq(&hot, other));
}

#[test]
fn empty_cluster_picks_nothing() {
    for policy in [Policy::RoundRobin, Policy::Random, RING, MAGLEV] {
        let lb = balancer(config(policy), &[], &[], 1);
        assert!(lb.pick(&[], &LbContext::with_hash(Some(1))).is_none());
    }
}

#[test]
fn cluster_compiles_ring_hash_and_nacks_bad_config() {
    use envoy_types::pb::envoy::config::cluster::v3::{Cluster as ClusterProto, cluster};
    use envoy_types::pb::google::protobuf::UInt64Value;
    let mut proto = ClusterProto {
        name: "c".into(),
        lb_policy: cluster::LbPolicy::Maglev as i32,
        lb_config: Some(cluster::LbConfig::MaglevLbConfig(cluster::MaglevLbConfig {
            table_size: Some(UInt64Value { value: 100 }),
        })),
        ..Default::default()
    };
    let err = crate::cluster::ClusterSpec::compile(&proto)
        .unwrap_err()
        .to_string();
    assert!(err.contains("maglev_lb_config.table_size"), "{err}");
    proto.lb_config = None;
    let spec = crate::cluster::ClusterSpec::compile(&proto).unwrap();
    assert!(spec.lb_config.uses_hash());
}
