//! Circuit breakers: Envoy's per-cluster, per-priority resource limits.
//!
//! Each routing priority (DEFAULT, HIGH) has its own counters and limits for
//! connections, pending requests (waiting for a connection), active requests
//! and active retries. A request that would exceed a limit is not queued: it
//! fails at once with 503 and the `UO` response flag, which is what keeps an
//! overloaded upstream from dragging its callers down with it.
//!
//! The counters live as long as the cluster definition: an EDS update keeps
//! them (as Envoy does, its cluster object stays), a changed `Cluster`
//! resource starts afresh.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use envoy_types::pb::envoy::config::cluster::v3::CircuitBreakers;
use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds;
use envoy_types::pb::envoy::config::core::v3::RoutingPriority;
use tokio::sync::Notify;

/// Envoy's defaults when a threshold is not set.
const DEFAULT_MAX_CONNECTIONS: u64 = 1024;
const DEFAULT_MAX_PENDING: u64 = 1024;
const DEFAULT_MAX_REQUESTS: u64 = 1024;
const DEFAULT_MAX_RETRIES: u64 = 3;
/// Retry budget defaults (`retry_budget` present with fields unset).
const DEFAULT_BUDGET_PERCENT: f64 = 20.0;
const DEFAULT_MIN_RETRY_CONCURRENCY: u64 = 3;

#[derive(Debug, Clone, Copy, PartialEq)]
struct Limits {
    max_connections: u64,
    max_pending: u64,
    max_requests: u64,
    max_retries: u64,
    /// `(budget_percent, min_retry_concurrency)`: when set, replaces
    /// `max_retries` with a share of the active and pending requests.
    retry_budget: Option<(f64, u64)>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_pending: DEFAULT_MAX_PENDING,
            max_requests: DEFAULT_MAX_REQUESTS,
            max_retries: DEFAULT_MAX_RETRIES,
            retry_budget: None,
        }
    }
}

impl Limits {
    fn from_proto(t: &Thresholds) -> Result<Self, (String, String)> {
        let d = Self::default();
        let budget = match &t.retry_budget {
            None => None,
            Some(b) => {
                let percent = b
                    .budget_percent
                    .as_ref()
                    .map_or(DEFAULT_BUDGET_PERCENT, |p| p.value);
                if !(0.0..=100.0).contains(&percent) {
                    return Err((
                        "retry_budget.budget_percent".into(),
                        format!("{percent} is not between 0 and 100"),
                    ));
                }
                let min = b
                    .min_retry_concurrency
                    .map_or(DEFAULT_MIN_RETRY_CONCURRENCY, |v| u64::from(v.value));
                Some((percent, min))
            }
        };
        Ok(Self {
            max_connections: t
                .max_connections
                .map_or(d.max_connections, |v| u64::from(v.value)),
            max_pending: t
                .max_pending_requests
                .map_or(d.max_pending, |v| u64::from(v.value)),
            max_requests: t
                .max_requests
                .map_or(d.max_requests, |v| u64::from(v.value)),
            max_retries: t.max_retries.map_or(d.max_retries, |v| u64::from(v.value)),
            retry_budget: budget,
        })
    }
}

/// The counters and limits of one priority.
#[derive(Debug)]
pub struct Resources {
    limits: Limits,
    connections: AtomicU64,
    pending: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
    /// Woken when a connection closes, so pending requests may open one.
    pub(crate) connection_freed: Notify,
    pub stats: OverflowStats,
}

/// Envoy's `upstream_*_overflow` counters.
#[derive(Debug, Default)]
pub struct OverflowStats {
    pub cx_overflow: AtomicU64,
    pub rq_pending_overflow: AtomicU64,
    pub rq_overflow: AtomicU64,
    pub rq_retry_overflow: AtomicU64,
}

/// A held unit of a resource, given back on drop.
#[derive(Debug)]
pub struct Permit {
    resources: Arc<Resources>,
    kind: Kind,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Connection,
    Pending,
    Request,
    Retry,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let r = &self.resources;
        let counter = r.counter(self.kind);
        counter.fetch_sub(1, Ordering::AcqRel);
        if let Kind::Connection = self.kind {
            r.connection_freed.notify_waiters();
        }
    }
}

impl Resources {
    fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            connections: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            connection_freed: Notify::new(),
            stats: OverflowStats::default(),
        })
    }

    fn counter(&self, kind: Kind) -> &AtomicU64 {
        match kind {
            Kind::Connection => &self.connections,
            Kind::Pending => &self.pending,
            Kind::Request => &self.requests,
            Kind::Retry => &self.retries,
        }
    }

    fn try_take(self: &Arc<Self>, kind: Kind, max: u64) -> Option<Permit> {
        let counter = self.counter(kind);
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Permit {
                resources: Arc::clone(self),
                kind,
            })
    }

    /// A new upstream connection, if `max_connections` allows it.
    pub fn try_connection(self: &Arc<Self>) -> Option<Permit> {
        let p = self.try_take(Kind::Connection, self.limits.max_connections);
        if p.is_none() {
            self.stats.cx_overflow.fetch_add(1, Ordering::Relaxed);
        }
        p
    }

    /// A request waiting for a connection, if `max_pending_requests` allows it.
    pub fn try_pending(self: &Arc<Self>) -> Option<Permit> {
        let p = self.try_take(Kind::Pending, self.limits.max_pending);
        if p.is_none() {
            self.stats
                .rq_pending_overflow
                .fetch_add(1, Ordering::Relaxed);
        }
        p
    }

    /// An active request, if `max_requests` allows it.
    pub fn try_request(self: &Arc<Self>) -> Option<Permit> {
        let p = self.try_take(Kind::Request, self.limits.max_requests);
        if p.is_none() {
            self.stats.rq_overflow.fetch_add(1, Ordering::Relaxed);
        }
        p
    }

    /// An active retry, if `max_retries` (or the retry budget) allows it.
    pub fn try_retry(self: &Arc<Self>) -> Option<Permit> {
        let max = match self.limits.retry_budget {
            Some((percent, min)) => {
                let load =
                    self.requests.load(Ordering::Acquire) + self.pending.load(Ordering::Acquire);
                ((load as f64 * percent / 100.0) as u64).max(min)
            }
            None => self.limits.max_retries,
        };
        let p = self.try_take(Kind::Retry, max);
        if p.is_none() {
            self.stats.rq_retry_overflow.fetch_add(1, Ordering::Relaxed);
        }
        p
    }

    /// Current `(connections, pending, requests, retries)`, for admin output.
    pub fn in_use(&self) -> [u64; 4] {
        [
            self.connections.load(Ordering::Relaxed),
            self.pending.load(Ordering::Relaxed),
            self.requests.load(Ordering::Relaxed),
            self.retries.load(Ordering::Relaxed),
        ]
    }

    /// Whether each breaker is open (at its limit), Envoy's `circuit_breakers.*.cx_open` gauges.
    pub fn open(&self) -> [bool; 4] {
        let [c, p, r, t] = self.in_use();
        let l = &self.limits;
        [
            c >= l.max_connections,
            p >= l.max_pending,
            r >= l.max_requests,
            self.limits.retry_budget.is_none() && t >= l.max_retries,
        ]
    }
}

/// The resources of both priorities of a cluster.
#[derive(Debug)]
pub struct Breakers {
    default: Arc<Resources>,
    high: Arc<Resources>,
}

impl Breakers {
    pub fn compile(cb: Option<&CircuitBreakers>) -> Result<Self, (String, String)> {
        let mut default = Limits::default();
        let mut high = Limits::default();
        for (i, t) in cb
            .map(|c| c.thresholds.as_slice())
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let field = format!("circuit_breakers.thresholds[{i}]");
            let limits = Limits::from_proto(t).map_err(|(f, m)| (format!("{field}.{f}"), m))?;
            let slot = match RoutingPriority::try_from(t.priority) {
                Ok(RoutingPriority::Default) => 0,
                Ok(RoutingPriority::High) => 1,
                Err(_) => {
                    return Err((
                        format!("{field}.priority"),
                        format!("unknown routing priority {}", t.priority),
                    ));
                }
            };
            // Envoy keeps the last thresholds given for a priority.
            if slot == 0 {
                default = limits;
            } else {
                high = limits;
            }
        }
        Ok(Self {
            default: Resources::new(default),
            high: Resources::new(high),
        })
    }

    pub fn for_priority(&self, priority: RoutingPriority) -> &Arc<Resources> {
        match priority {
            RoutingPriority::High => &self.high,
            RoutingPriority::Default => &self.default,
        }
    }

    /// Both priorities, DEFAULT first, for admin output.
    pub fn all(&self) -> [(&'static str, &Arc<Resources>); 2] {
        [("default", &self.default), ("high", &self.high)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::UInt32Value;

    fn breakers(t: Thresholds) -> Breakers {
        Breakers::compile(Some(&CircuitBreakers {
            thresholds: vec![t],
            ..Default::default()
        }))
        .expect("compile")
    }

    #[test]
    fn defaults_are_envoys() {
        let b = Breakers::compile(None).expect("compile");
        let r = b.for_priority(RoutingPriority::Default);
        let held: Vec<_> = (0..3).filter_map(|_| r.try_retry()).collect();
        assert_eq!(held.len(), 3);
        assert!(r.try_retry().is_none());
        assert_eq!(r.stats.rq_retry_overflow.load(Ordering::Relaxed), 1);
        drop(held);
        assert!(r.try_retry().is_some());
    }

    #[test]
    fn limits_are_per_priority_and_permits_give_back() {
        let b = breakers(Thresholds {
            max_connections: Some(UInt32Value { value: 1 }),
            max_pending_requests: Some(UInt32Value { value: 1 }),
            ..Default::default()
        });
        let d = b.for_priority(RoutingPriority::Default);
        let c1 = d.try_connection().expect("first connection");
        assert!(d.try_connection().is_none());
        assert_eq!(d.open(), [true, false, false, false]);
        let p1 = d.try_pending().expect("first pending");
        assert!(d.try_pending().is_none());
        // HIGH keeps Envoy's defaults.
        assert!(
            b.for_priority(RoutingPriority::High)
                .try_connection()
                .is_some()
        );
        drop((c1, p1));
        assert_eq!(d.in_use(), [0, 0, 0, 0]);
        assert!(d.try_connection().is_some());
    }

    #[test]
    fn retry_budget_scales_with_load() {
        let b = breakers(Thresholds {
            retry_budget: Some(
                envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::thresholds::RetryBudget {
                    budget_percent: Some(envoy_types::pb::envoy::r#type::v3::Percent { value: 50.0 }),
                    min_retry_concurrency: Some(UInt32Value { value: 1 }),
                    ..Default::default()
                },
            ),
            ..Default::default()
        });
        let d = b.for_priority(RoutingPriority::Default);
        let reqs: Vec<_> = (0..10).filter_map(|_| d.try_request()).collect();
        assert_eq!(reqs.len(), 10);
        let retries: Vec<_> = (0..10).filter_map(|_| d.try_retry()).collect();
        assert_eq!(retries.len(), 5);
    }

    #[test]
    fn bad_budget_names_the_field() {
        let err = Breakers::compile(Some(&CircuitBreakers {
            thresholds: vec![Thresholds {
                retry_budget: Some(
                    envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::thresholds::RetryBudget {
                        budget_percent: Some(envoy_types::pb::envoy::r#type::v3::Percent { value: 150.0 }),
                        ..Default::default()
                    },
                ),
                ..Default::default()
            }],
            ..Default::default()
        }))
        .expect_err("150% is refused");
        assert_eq!(
            err.0,
            "circuit_breakers.thresholds[0].retry_budget.budget_percent"
        );
    }
}
