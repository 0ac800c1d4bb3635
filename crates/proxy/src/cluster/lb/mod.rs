//! Host selection, as Envoy 1.40's load balancers do it.
//!
//! A [`LoadBalancer`] is an immutable snapshot of the cluster's hosts and their health:
//! [`Cluster::refresh_lb`](super::Cluster::refresh_lb) builds a new one whenever health
//! changes (outlier detection, health checks) and every endpoint update builds one too.
//! Only the pick-time state (EDF schedules, round-robin counters) is mutable, behind
//! locks and atomics, so one balancer serves every worker.
//!
//! * Priorities, degraded hosts, panic mode: `priority.rs` (Envoy's `LoadBalancerBase`).
//! * Locality-weighted balancing (`common_lb_config.locality_weighted_lb_config`): a
//!   locality is chosen by EDF over its weight scaled by its share of available hosts
//!   (overprovisioned), then a host within it. Zone-aware routing needs a local cluster,
//!   which the proxy never has, so (as in Envoy without one) it does nothing.
//! * `ROUND_ROBIN`: plain rotation from a random start when all weights are equal, else
//!   Envoy's EDF schedule (`edf.rs`), pre-advanced by the balancer's random seed.
//! * `LEAST_REQUEST`: power of `choice_count` choices when weights are equal (and no
//!   `active_request_bias` is configured), else EDF with `weight / (active + 1)^bias`.
//! * `RANDOM`: uniform over the chosen host set (Envoy ignores weights here), the same
//!   random value choosing the priority and the host.
//! * `RING_HASH` (`ring_hash.rs`), `MAGLEV` (`maglev.rs`): one table per priority over the
//!   healthy hosts (all hosts in panic; degraded hosts are not used), built when the
//!   balancer is; the request hash picks priority and host (a random one without a hash);
//!   `hash_balance_factor` bounds loads (`bounded.rs`).
//!
//! Not implemented: slow start (`slow_start_config` is accepted and ignored), the
//! `envoy.lb` `hash_key` endpoint metadata, typed `load_balancing_policy`, retry priority
//! plugins, and Envoy's removal of duplicate addresses within an EDS update.

mod bounded;
mod config;
mod edf;
mod least_request;
mod maglev;
mod priority;
mod ring_hash;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;

pub use config::{LbConfig, Policy, RingHashFunction};

use super::{Cluster, Host, Locality};
use edf::Edf;
use maglev::Maglev;
use priority::{Availability, HealthSplit, LocalityHosts, PriorityLoad, Topology};
use ring_hash::Ring;

/// What the balancer may use about the request being routed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LbContext {
    /// The route's hash-policy hash. Only ring hash and Maglev use it; without one they
    /// pick with a random value, as Envoy does.
    pub hash: Option<u64>,
    /// Which host-selection attempt this is for one upstream attempt (0 first). When a
    /// retry predicate rejects a pick, hashing balancers move to another host for the
    /// next attempt instead of returning the same one.
    pub attempt: u32,
}

impl LbContext {
    pub fn with_hash(hash: Option<u64>) -> Self {
        Self { hash, attempt: 0 }
    }

    /// The same context for host-selection attempt `attempt`.
    pub fn attempt(self, attempt: u32) -> Self {
        Self { attempt, ..self }
    }
}

impl Cluster {
    /// Evaluates the route's hash policy for a request, but only when this cluster's
    /// balancer hashes (Envoy computes the hash, and generates cookies, only then).
    /// The caller passes `hash` to [`Cluster::pick`] and adds `set_cookies` to the
    /// response.
    pub fn request_hash(
        &self,
        policy: &route::HashPolicy,
        req: &route::RequestView<'_>,
        downstream: route::Downstream,
    ) -> route::RequestHash {
        if !self.spec.lb_config.uses_hash() || policy.is_empty() {
            return route::RequestHash::default();
        }
        policy.generate(req, Some(downstream))
    }
}

/// A small lock-free generator (SplitMix64); seeded from the OS per balancer.
#[derive(Debug)]
struct Rng(AtomicU64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(AtomicU64::new(seed))
    }

    fn next(&self) -> u64 {
        const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut z = self
            .0
            .fetch_add(GAMMA, Ordering::Relaxed)
            .wrapping_add(GAMMA);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Host selection over one snapshot of a cluster's hosts and their health.
#[derive(Debug)]
pub struct LoadBalancer {
    config: Arc<LbConfig>,
    topology: Arc<Topology>,
    /// Envoy's per-balancer `seed_`: the round-robin start and the EDF pre-picks. Kept
    /// when the balancer is rebuilt for the same cluster, as Envoy keeps its balancer.
    seed: u64,
    rng: Rng,
    load: PriorityLoad,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    /// Round robin, least request and random (Envoy's zone-aware balancers).
    Zone(Vec<ZonePriority>),
    /// Ring hash and Maglev: one table per priority.
    Hash(Vec<HashTable>),
}

/// The host sources of one priority (Envoy's `HostsSource`s).
#[derive(Debug)]
struct ZonePriority {
    all: Source,
    healthy: Source,
    degraded: Source,
    healthy_localities: Vec<Source>,
    degraded_localities: Vec<Source>,
    healthy_locality: Option<LocalityPicker>,
    degraded_locality: Option<LocalityPicker>,
}

#[derive(Debug)]
struct LocalityPicker {
    /// Effective weight per locality index.
    weights: Vec<f64>,
    edf: Mutex<Edf<u32>>,
}

impl LocalityPicker {
    fn pick(&self) -> Option<u32> {
        self.edf
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pick_and_add(|i| self.weights[i as usize])
    }
}

#[derive(Debug)]
struct Source {
    hosts: Vec<u32>,
    /// Present when weights differ (or least request's bias is configured).
    edf: Option<Mutex<Edf<u32>>>,
    /// Round-robin position for equal weights.
    rr: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum SourceKey {
    All(usize),
    Healthy(usize),
    Degraded(usize),
    HealthyLocality(usize, usize),
    DegradedLocality(usize, usize),
}

#[derive(Debug)]
enum Table {
    Ring(Ring),
    Maglev(Maglev),
}

#[derive(Debug)]
struct HashTable {
    table: Table,
    /// (host, normalized weight), for bounded loads.
    weights: Vec<(u32, f64)>,
}

impl LoadBalancer {
    /// Builds the balancer for a new endpoint assignment. `localities` and `assignment`
    /// are the cluster's ([`Cluster::localities`] and the `ClusterLoadAssignment` they
    /// came from); `previous` is the balancer of the value this one replaces, whose
    /// seed and round-robin positions carry over.
    pub fn new(
        config: &Arc<LbConfig>,
        hosts: &[Arc<Host>],
        localities: &[Locality],
        assignment: Option<&ClusterLoadAssignment>,
        overprovisioning_factor: u32,
        previous: Option<&Self>,
    ) -> Self {
        let topology = Topology::build(hosts, localities, assignment, overprovisioning_factor);
        Self::build(
            Arc::clone(config),
            Arc::new(topology),
            hosts,
            previous,
            rand::random(),
        )
    }

    /// The same cluster after a health change: same configuration and endpoints, new
    /// health.
    pub fn refreshed(&self, hosts: &[Arc<Host>]) -> Self {
        Self::build(
            Arc::clone(&self.config),
            Arc::clone(&self.topology),
            hosts,
            Some(self),
            rand::random(),
        )
    }

    fn build(
        config: Arc<LbConfig>,
        topology: Arc<Topology>,
        hosts: &[Arc<Host>],
        previous: Option<&Self>,
        entropy: u64,
    ) -> Self {
        let rng = Rng::new(entropy);
        let seed = previous.map_or_else(|| rng.next(), |p| p.seed);
        let splits: Vec<HealthSplit> = topology
            .priorities
            .iter()
            .map(|level| HealthSplit::of(level, hosts))
            .collect();
        let load = PriorityLoad::compute(&topology, &splits, hosts, config.healthy_panic_threshold);
        let kind = if config.uses_hash() {
            Kind::Hash(build_tables(&config, &topology, &splits, &load, hosts))
        } else {
            let positions = previous.map(Self::rr_positions).unwrap_or_default();
            let builder = ZoneBuilder {
                config: &config,
                topology: &topology,
                hosts,
                seed,
                positions: &positions,
            };
            Kind::Zone(
                splits
                    .iter()
                    .enumerate()
                    .map(|(p, split)| builder.priority(p, split, rng.next()))
                    .collect(),
            )
        };
        Self {
            config,
            topology,
            seed,
            rng,
            load,
            kind,
        }
    }

    /// Picks a host for one request among `hosts`, the list this balancer was built from,
    /// or `None` when there is none to pick.
    pub fn pick<'a>(&self, hosts: &'a [Arc<Host>], ctx: &LbContext) -> Option<&'a Arc<Host>> {
        let idx = match &self.kind {
            Kind::Zone(priorities) => self.pick_zone(priorities, hosts)?,
            Kind::Hash(tables) => {
                let hash = ctx.hash.unwrap_or_else(|| self.rng.next());
                let (p, _) = self.load.choose(hash);
                let t = tables.get(p)?;
                let picked = match &t.table {
                    Table::Ring(r) => r.choose(hash, ctx.attempt),
                    Table::Maglev(m) => m.choose(hash, ctx.attempt),
                }?;
                match self.config.hash_balance_factor {
                    0 => picked,
                    f => bounded::choose(picked, hash, &t.weights, hosts, f),
                }
            }
        };
        hosts.get(idx as usize)
    }

    fn pick_zone(&self, priorities: &[ZonePriority], hosts: &[Arc<Host>]) -> Option<u32> {
        let random = self.rng.next();
        let (p, availability) = self.load.choose(random);
        let prio = priorities.get(p)?;
        let source = self.host_source(prio, p, availability);
        if source.hosts.is_empty() {
            return None;
        }
        let len = source.hosts.len() as u64;
        match &self.config.policy {
            // Envoy's random balancer reuses the priority's random value for the host.
            Policy::Random => Some(source.hosts[(random % len) as usize]),
            policy => {
                if let Some(edf) = &source.edf {
                    let weight = |i: u32| host_weight(policy, &hosts[i as usize]);
                    return edf
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .pick_and_add(weight);
                }
                match policy {
                    Policy::LeastRequest { choice_count, .. } => {
                        least_request::n_choices(&source.hosts, hosts, *choice_count, || {
                            self.rng.next()
                        })
                    }
                    _ => {
                        let i = source.rr.fetch_add(1, Ordering::Relaxed) % len;
                        Some(source.hosts[i as usize])
                    }
                }
            }
        }
    }

    /// `ZoneAwareLoadBalancerBase::hostSourceToUse`, without zone-aware routing.
    fn host_source<'s>(
        &self,
        prio: &'s ZonePriority,
        p: usize,
        availability: Availability,
    ) -> &'s Source {
        if self.load.panic.get(p).copied().unwrap_or(false) {
            return &prio.all;
        }
        if self.config.locality_weighted {
            let (picker, sources) = match availability {
                Availability::Healthy => (&prio.healthy_locality, &prio.healthy_localities),
                Availability::Degraded => (&prio.degraded_locality, &prio.degraded_localities),
            };
            if let Some(i) = picker.as_ref().and_then(LocalityPicker::pick)
                && let Some(s) = sources.get(i as usize)
            {
                return s;
            }
        }
        match availability {
            Availability::Healthy => &prio.healthy,
            Availability::Degraded => &prio.degraded,
        }
    }

    fn rr_positions(&self) -> HashMap<SourceKey, u64> {
        let mut out = HashMap::new();
        let Kind::Zone(priorities) = &self.kind else {
            return out;
        };
        for (p, prio) in priorities.iter().enumerate() {
            let get = |s: &Source| s.rr.load(Ordering::Relaxed);
            out.insert(SourceKey::All(p), get(&prio.all));
            out.insert(SourceKey::Healthy(p), get(&prio.healthy));
            out.insert(SourceKey::Degraded(p), get(&prio.degraded));
            for (l, s) in prio.healthy_localities.iter().enumerate() {
                out.insert(SourceKey::HealthyLocality(p, l), get(s));
            }
            for (l, s) in prio.degraded_localities.iter().enumerate() {
                out.insert(SourceKey::DegradedLocality(p, l), get(s));
            }
        }
        out
    }
}

/// The weight an EDF schedule uses for a host.
fn host_weight(policy: &Policy, host: &Host) -> f64 {
    match policy {
        Policy::LeastRequest {
            active_request_bias,
            ..
        } => least_request::host_weight(host, *active_request_bias),
        _ => f64::from(host.weight),
    }
}

struct ZoneBuilder<'a> {
    config: &'a LbConfig,
    topology: &'a Topology,
    hosts: &'a [Arc<Host>],
    seed: u64,
    positions: &'a HashMap<SourceKey, u64>,
}

impl ZoneBuilder<'_> {
    fn priority(&self, p: usize, split: &HealthSplit, locality_seed: u64) -> ZonePriority {
        let level = &self.topology.priorities[p];
        let localities = &level.localities;
        let weighted = self.config.locality_weighted;
        let picker = |eligible_all: &[u32], eligible: &[Vec<u32>]| {
            if !weighted || localities.is_empty() || eligible_all.is_empty() {
                return None;
            }
            self.locality_picker(
                localities,
                eligible,
                &split.excluded_per_locality,
                locality_seed,
            )
        };
        ZonePriority {
            all: self.source(SourceKey::All(p), &level.hosts),
            healthy: self.source(SourceKey::Healthy(p), &split.healthy),
            degraded: self.source(SourceKey::Degraded(p), &split.degraded),
            healthy_localities: split
                .healthy_per_locality
                .iter()
                .enumerate()
                .map(|(l, h)| self.source(SourceKey::HealthyLocality(p, l), h))
                .collect(),
            degraded_localities: split
                .degraded_per_locality
                .iter()
                .enumerate()
                .map(|(l, h)| self.source(SourceKey::DegradedLocality(p, l), h))
                .collect(),
            healthy_locality: picker(&split.healthy, &split.healthy_per_locality),
            degraded_locality: picker(&split.degraded, &split.degraded_per_locality),
        }
    }

    /// `LocalityWrr::rebuildLocalityScheduler`.
    fn locality_picker(
        &self,
        localities: &[LocalityHosts],
        eligible: &[Vec<u32>],
        excluded: &[usize],
        seed: u64,
    ) -> Option<LocalityPicker> {
        let weights: Vec<f64> = localities
            .iter()
            .enumerate()
            .map(|(i, loc)| {
                priority::effective_locality_weight(
                    loc,
                    eligible[i].len(),
                    excluded[i],
                    self.topology.overprovisioning_factor,
                )
            })
            .collect();
        let entries: Vec<u32> = (0..weights.len() as u32)
            .filter(|&i| weights[i as usize] > 0.0)
            .collect();
        if entries.is_empty() {
            return None;
        }
        let edf = Edf::with_picks(&entries, |i| weights[i as usize], seed as u32);
        Some(LocalityPicker {
            weights,
            edf: Mutex::new(edf),
        })
    }

    /// `EdfLoadBalancerBase::refresh`'s `add_hosts_source`.
    fn source(&self, key: SourceKey, hosts: &[u32]) -> Source {
        let policy = &self.config.policy;
        let always_weighted = matches!(
            policy,
            Policy::LeastRequest {
                bias_configured: true,
                ..
            }
        );
        let equal = hosts
            .windows(2)
            .all(|w| self.hosts[w[0] as usize].weight == self.hosts[w[1] as usize].weight);
        let edf =
            (!matches!(policy, Policy::Random) && (always_weighted || !equal) && hosts.len() > 1)
                .then(|| {
                    let weight = |i: u32| host_weight(policy, &self.hosts[i as usize]);
                    Mutex::new(Edf::with_picks(hosts, weight, self.seed as u32))
                });
        Source {
            hosts: hosts.to_vec(),
            edf,
            rr: AtomicU64::new(self.positions.get(&key).copied().unwrap_or(self.seed)),
        }
    }
}

/// `ThreadAwareLoadBalancerBase::refresh`: a ring or Maglev table per priority.
fn build_tables(
    config: &LbConfig,
    topology: &Topology,
    splits: &[HealthSplit],
    load: &PriorityLoad,
    hosts: &[Arc<Host>],
) -> Vec<HashTable> {
    let keys: Vec<String> = if config.use_hostname_for_hashing {
        Vec::new()
    } else {
        hosts.iter().map(|h| h.target.to_string()).collect()
    };
    let key = |i: u32| -> &str {
        if config.use_hostname_for_hashing {
            &hosts[i as usize].hostname
        } else {
            &keys[i as usize]
        }
    };
    topology
        .priorities
        .iter()
        .zip(splits)
        .enumerate()
        .map(|(p, (level, split))| {
            let panic = load.panic.get(p).copied().unwrap_or(false);
            let mut weights = Vec::new();
            let (mut min_w, mut max_w) = (1.0_f64, 0.0_f64);
            if !config.locality_weighted || level.localities.is_empty() {
                let list = if panic { &level.hosts } else { &split.healthy };
                normalize_hosts(list, 1.0, hosts, &mut weights, &mut min_w, &mut max_w);
            } else {
                let sum: u64 = level.localities.iter().map(|l| u64::from(l.weight)).sum();
                if sum != 0 {
                    for (i, loc) in level.localities.iter().enumerate() {
                        if loc.weight == 0 {
                            continue;
                        }
                        let list = if panic {
                            &loc.hosts
                        } else {
                            &split.healthy_per_locality[i]
                        };
                        let share = f64::from(loc.weight) / sum as f64;
                        normalize_hosts(list, share, hosts, &mut weights, &mut min_w, &mut max_w);
                    }
                }
            }
            let table = match config.policy {
                Policy::Maglev { table_size } => {
                    Table::Maglev(Maglev::build(&weights, max_w, table_size, key))
                }
                Policy::RingHash {
                    min_ring_size,
                    max_ring_size,
                    hash_function,
                } => Table::Ring(Ring::build(
                    &weights,
                    min_w,
                    min_ring_size,
                    max_ring_size,
                    hash_function,
                    key,
                )),
                _ => Table::Ring(Ring::default()),
            };
            HashTable { table, weights }
        })
        .collect()
}

/// `normalizeHostWeights`: each host's share of `share` by weight.
fn normalize_hosts(
    list: &[u32],
    share: f64,
    hosts: &[Arc<Host>],
    out: &mut Vec<(u32, f64)>,
    min_w: &mut f64,
    max_w: &mut f64,
) {
    let sum: u64 = list
        .iter()
        .map(|&i| u64::from(hosts[i as usize].weight))
        .sum();
    for &i in list {
        let w = f64::from(hosts[i as usize].weight) * share / sum as f64;
        out.push((i, w));
        *min_w = min_w.min(w);
        *max_w = max_w.max(w);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
