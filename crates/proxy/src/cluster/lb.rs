//! Host selection.
//!
//! Part 1 of the data plane needs a working balancer; Envoy-exact algorithms
//! (smooth weighted round robin, ring hash, Maglev, locality and priority
//! failover) belong to the upstream work and replace this module.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use envoy_types::pb::envoy::config::cluster::v3::cluster::LbPolicy;

use super::Host;

#[derive(Debug)]
pub struct LoadBalancer {
    policy: LbPolicy,
    /// Indexes into the host list, each repeated by weight, of the highest
    /// priority level that has healthy hosts.
    schedule: Vec<usize>,
    next: AtomicUsize,
}

/// Weighted schedules larger than this fall back to one slot per host.
const MAX_SCHEDULE: usize = 4096;

impl LoadBalancer {
    pub fn new(policy: LbPolicy, hosts: &[Arc<Host>]) -> Self {
        let best_priority = hosts
            .iter()
            .filter(|h| h.is_healthy())
            .map(|h| h.priority)
            .min();
        let eligible: Vec<usize> = hosts
            .iter()
            .enumerate()
            .filter(|(_, h)| h.is_healthy() && Some(h.priority) == best_priority)
            .map(|(i, _)| i)
            .collect();
        let total: usize = eligible.iter().map(|&i| hosts[i].weight as usize).sum();
        let schedule = if total <= MAX_SCHEDULE && eligible.iter().any(|&i| hosts[i].weight != 1) {
            // Interleave by weight so consecutive picks spread across hosts.
            let mut slots = Vec::with_capacity(total);
            let max_w = eligible.iter().map(|&i| hosts[i].weight).max().unwrap_or(1);
            for round in 0..max_w {
                for &i in &eligible {
                    if hosts[i].weight > round {
                        slots.push(i);
                    }
                }
            }
            slots
        } else {
            eligible
        };
        // Start at a random offset so that many proxies do not all hit host 0 first.
        let start = if schedule.is_empty() {
            0
        } else {
            rand::random_range(0..schedule.len())
        };
        Self {
            policy,
            schedule,
            next: AtomicUsize::new(start),
        }
    }

    pub fn pick<'a>(&self, hosts: &'a [Arc<Host>]) -> Option<&'a Arc<Host>> {
        if self.schedule.is_empty() {
            return None;
        }
        let n = self.schedule.len();
        let idx = match self.policy {
            LbPolicy::Random => self.schedule[rand::random_range(0..n)],
            LbPolicy::LeastRequest if n > 1 => {
                let a = self.schedule[rand::random_range(0..n)];
                let b = self.schedule[rand::random_range(0..n)];
                if hosts[b].active() < hosts[a].active() {
                    b
                } else {
                    a
                }
            }
            _ => self.schedule[self.next.fetch_add(1, Ordering::Relaxed) % n],
        };
        hosts.get(idx)
    }
}
