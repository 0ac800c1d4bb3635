//! Upstream clusters: what a `Cluster` resource and its endpoints compile to.
//!
//! A [`ClusterSpec`] is the validated, endpoint-independent part of a cluster
//! resource. Combined with the current endpoints (static `load_assignment` or
//! an EDS `ClusterLoadAssignment`) it becomes a [`Cluster`], the immutable
//! value the router picks hosts from. Hosts are shared between successive
//! `Cluster` values so that their connection pools survive updates.

pub mod breaker;
pub mod health_check;
pub mod lb;
pub mod outlier;
pub mod pool;
pub mod transport;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use envoy_types::pb::envoy::config::cluster::v3::{Cluster as ClusterProto, cluster};
use envoy_types::pb::envoy::config::core::v3::HealthStatus;
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use prost::Message;

pub use breaker::Breakers;
pub use lb::{LbConfig, LbContext, LoadBalancer};
use pool::HostPool;
use transport::{BuiltTransports, Transports};

use crate::tls::client::{Transport, UpstreamTls};
pub use pool::{UpstreamError, Version};

use crate::addr::{self, Target};
use crate::duration::duration_or;
use crate::error::{ConfigError, ErrorScope};

const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// How the cluster learns its endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    Static,
    /// Endpoints arrive over EDS under this name.
    Eds {
        service_name: String,
    },
    /// Names in the load assignment are resolved when connecting.
    Dns,
    /// Requests go to the downstream connection's original destination.
    OriginalDst,
}

/// Which HTTP version the cluster speaks upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Fixed(Version),
    /// `use_downstream_protocol_config`: the same version the client used.
    Downstream,
}

/// The validated form of a `Cluster` resource, without endpoints.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub name: String,
    pub discovery: Discovery,
    pub connect_timeout: Duration,
    pub protocol: UpstreamProtocol,
    pub lb_policy: cluster::LbPolicy,
    /// `lb_policy`, `lb_config` and `common_lb_config`, validated.
    pub lb_config: Arc<LbConfig>,
    /// The resource as received, for `/config_dump`.
    pub proto: ClusterProto,
    /// Endpoints from `load_assignment` (STATIC and DNS types).
    static_assignment: Option<ClusterLoadAssignment>,
    /// Shared by every cluster value built from this spec.
    pub breakers: Arc<Breakers>,
    /// Plaintext or TLS, per host.
    pub transports: Transports,
    /// `max_requests_per_connection` from the protocol options; 0 is unlimited.
    pub max_requests_per_connection: u32,
    /// Idle upstream connections are closed after this long (Envoy: 1 h).
    pub idle_timeout: Option<Duration>,
    /// `outlier_detection`, compiled (see [`outlier`]).
    pub outlier: Option<Arc<outlier::OutlierConfig>>,
    /// `health_checks`, compiled (see [`health_check`]).
    pub health_checks: Option<Arc<health_check::HealthChecks>>,
    /// Outlier and health-check state of this cluster name (stats, timers),
    /// handed from value to value by [`Cluster::start`].
    health: std::sync::OnceLock<Arc<outlier::ClusterHealth>>,
}

impl ClusterSpec {
    pub fn compile(proto: &ClusterProto) -> Result<Self, ConfigError> {
        let scope = ErrorScope::new("cluster", &proto.name);
        if proto.name.is_empty() {
            return Err(scope.err("name", "must not be empty"));
        }
        let discovery_type = match &proto.cluster_discovery_type {
            None => cluster::DiscoveryType::Static,
            Some(cluster::ClusterDiscoveryType::Type(t)) => cluster::DiscoveryType::try_from(*t)
                .map_err(|_| scope.err("type", format!("unknown discovery type {t}")))?,
            Some(cluster::ClusterDiscoveryType::ClusterType(c)) => {
                return Err(scope.err(
                    "cluster_type",
                    format!("custom cluster type '{}' is not supported", c.name),
                ));
            }
        };
        let discovery = match discovery_type {
            cluster::DiscoveryType::Static => Discovery::Static,
            cluster::DiscoveryType::StrictDns | cluster::DiscoveryType::LogicalDns => {
                Discovery::Dns
            }
            cluster::DiscoveryType::Eds => {
                let service_name = proto
                    .eds_cluster_config
                    .as_ref()
                    .map(|c| c.service_name.clone())
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| proto.name.clone());
                Discovery::Eds { service_name }
            }
            cluster::DiscoveryType::OriginalDst => Discovery::OriginalDst,
        };
        let lb_policy = cluster::LbPolicy::try_from(proto.lb_policy).map_err(|_| {
            scope.err(
                "lb_policy",
                format!("unknown load balancing policy {}", proto.lb_policy),
            )
        })?;
        let lb_config = LbConfig::compile(proto).map_err(|(field, msg)| scope.err(field, msg))?;
        let transports =
            Transports::compile(proto).map_err(|(field, msg)| scope.err(field, msg))?;
        let protocol = upstream_protocol(proto).map_err(|(field, msg)| scope.err(field, msg))?;
        let breakers = Breakers::compile(proto.circuit_breakers.as_ref())
            .map_err(|(field, msg)| scope.err(field, msg))?;
        let (max_requests_per_connection, idle_timeout) = connection_limits(proto);
        let outlier = proto
            .outlier_detection
            .as_ref()
            .map(outlier::OutlierConfig::compile)
            .transpose()
            .map_err(|(field, msg)| scope.err(format!("outlier_detection.{field}"), msg))?
            .map(Arc::new);
        let health_checks = health_check::HealthChecks::compile(proto)
            .map_err(|(field, msg)| scope.err(field, msg))?
            .map(Arc::new);
        let static_assignment = match discovery {
            Discovery::Static | Discovery::Dns => {
                let cla = proto.load_assignment.clone().unwrap_or_default();
                // Validate the addresses now so a bad one is a NACK, not a runtime surprise.
                endpoints_of(&cla, discovery == Discovery::Dns, &transports)
                    .map_err(|(field, msg)| scope.err(format!("load_assignment.{field}"), msg))?;
                Some(cla)
            }
            _ => None,
        };
        Ok(Self {
            name: proto.name.clone(),
            discovery,
            connect_timeout: duration_or(proto.connect_timeout.as_ref(), Duration::from_secs(5)),
            protocol,
            lb_policy,
            lb_config: Arc::new(lb_config),
            proto: proto.clone(),
            static_assignment,
            breakers: Arc::new(breakers),
            transports,
            max_requests_per_connection,
            idle_timeout,
            outlier,
            health_checks,
            health: Default::default(),
        })
    }

    /// The EDS name this cluster waits for, if any.
    pub fn eds_name(&self) -> Option<&str> {
        match &self.discovery {
            Discovery::Eds { service_name } => Some(service_name),
            _ => None,
        }
    }

    /// Builds the runtime cluster. `eds` is the assignment received for
    /// [`Self::eds_name`]; `previous` lends its hosts (and their pools) to
    /// endpoints that are still present.
    pub fn instantiate(
        &self,
        eds: Option<&ClusterLoadAssignment>,
        previous: Option<&Cluster>,
    ) -> Result<Cluster, ConfigError> {
        self.instantiate_with(eds, previous, &BuiltTransports::default())
    }

    /// [`Self::instantiate`] with the cluster's transports built (TLS
    /// hosts need them; without, every host is plaintext).
    pub fn instantiate_with(
        &self,
        eds: Option<&ClusterLoadAssignment>,
        previous: Option<&Cluster>,
        tls: &BuiltTransports,
    ) -> Result<Cluster, ConfigError> {
        let cla = match &self.discovery {
            Discovery::Eds { .. } => eds,
            _ => self.static_assignment.as_ref(),
        };
        let assignment = match cla {
            Some(cla) => endpoints_of(cla, self.discovery == Discovery::Dns, &self.transports)
                .map_err(|(field, msg)| {
                    ErrorScope::new("cluster_load_assignment", &cla.cluster_name).err(field, msg)
                })?,
            None => Assignment {
                endpoints: Vec::new(),
                localities: Vec::new(),
                overprovisioning_factor: DEFAULT_OVERPROVISIONING_FACTOR,
            },
        };
        // A host keeps its state (and pooled connections) only if it keeps
        // its transport: a plaintext connection must not serve an mTLS host.
        let mut reuse: HashMap<&Target, (&Arc<HostState>, &Arc<Transport>)> = HashMap::new();
        if let Some(prev) = previous {
            for h in &prev.all_hosts {
                reuse.insert(
                    &h.target,
                    (&h.state, prev.spec.transports.transport(h.transport)),
                );
            }
        }
        let hosts: Vec<Arc<Host>> = assignment
            .endpoints
            .into_iter()
            .map(|ep| {
                let transport = self.transports.transport(ep.transport);
                let state = reuse
                    .get(&ep.target)
                    .filter(|(_, t)| **t == *transport)
                    .map(|(s, _)| Arc::clone(s))
                    .unwrap_or_else(|| HostState::new(&ep.target));
                Arc::new(Host {
                    target: ep.target,
                    hostname: ep.hostname,
                    weight: ep.weight,
                    priority: ep.priority,
                    locality: ep.locality,
                    eds_health: ep.eds_health,
                    transport: ep.transport,
                    tls: tls.get(ep.transport),
                    state,
                })
            })
            .collect();
        let prev_lb = previous.map(|p| p.lb.load_full());
        let lb = LoadBalancer::new(
            &self.lb_config,
            &hosts,
            &assignment.localities,
            cla,
            assignment.overprovisioning_factor,
            prev_lb.as_deref(),
        );
        // Envoy keys stats by cluster name, so they outlive updates.
        let stats = previous.map_or_else(Default::default, |p| Arc::clone(&p.stats));
        Ok(Cluster {
            spec: self.clone(),
            all_hosts: hosts,
            localities: assignment.localities,
            overprovisioning_factor: assignment.overprovisioning_factor,
            eds: eds.cloned(),
            secrets_fingerprint: tls.fingerprint,
            lb: ArcSwap::from_pointee(lb),
            stats,
        })
    }
}

/// `max_requests_per_connection` and `idle_timeout` from
/// `HttpProtocolOptions.common_http_protocol_options`, falling back to the
/// deprecated cluster field as Envoy does.
fn connection_limits(proto: &ClusterProto) -> (u32, Option<Duration>) {
    let common = proto
        .typed_extension_protocol_options
        .get(HTTP_PROTOCOL_OPTIONS)
        .and_then(|any| HttpProtocolOptions::decode(any.value.as_slice()).ok())
        .and_then(|o| o.common_http_protocol_options);
    #[allow(deprecated)]
    let legacy = proto.max_requests_per_connection.map(|v| v.value);
    let max = common
        .as_ref()
        .and_then(|c| c.max_requests_per_connection)
        .map(|v| v.value)
        .or(legacy)
        .unwrap_or(0);
    let idle = match common.as_ref().and_then(|c| c.idle_timeout.as_ref()) {
        Some(d) => Some(crate::duration::to_std(d)).filter(|d| !d.is_zero()),
        None => Some(Duration::from_secs(3600)),
    };
    (max, idle)
}

fn upstream_protocol(proto: &ClusterProto) -> Result<UpstreamProtocol, (String, String)> {
    if let Some(any) = proto
        .typed_extension_protocol_options
        .get(HTTP_PROTOCOL_OPTIONS)
    {
        let field = format!("typed_extension_protocol_options[{HTTP_PROTOCOL_OPTIONS}]");
        let opts = HttpProtocolOptions::decode(any.value.as_slice())
            .map_err(|e| (field.clone(), e.to_string()))?;
        return Ok(match opts.upstream_protocol_options {
            Some(http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(c)) => match c.protocol_config {
                Some(http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(_)) => {
                    UpstreamProtocol::Fixed(Version::Http2)
                }
                Some(http_protocol_options::explicit_http_config::ProtocolConfig::Http3ProtocolOptions(_)) => {
                    return Err((field, "HTTP/3 upstreams are not supported".into()));
                }
                _ => UpstreamProtocol::Fixed(Version::Http1),
            },
            Some(http_protocol_options::UpstreamProtocolOptions::UseDownstreamProtocolConfig(_)) => {
                UpstreamProtocol::Downstream
            }
            Some(http_protocol_options::UpstreamProtocolOptions::AutoConfig(_)) => {
                // ALPN-negotiated protocol needs upstream TLS; without it Envoy uses HTTP/1.1.
                UpstreamProtocol::Fixed(Version::Http1)
            }
            // Envoy's proto validation requires it.
            None => return Err((format!("{field}.upstream_protocol_options"), "is required".into())),
        });
    }
    #[allow(deprecated)]
    if proto.http2_protocol_options.is_some() {
        return Ok(UpstreamProtocol::Fixed(Version::Http2));
    }
    Ok(UpstreamProtocol::Fixed(Version::Http1))
}

/// An endpoint's health as EDS states it (Envoy's `health_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdsHealth {
    Healthy,
    Degraded,
    Unhealthy,
}

/// Bits of [`HostState::health_flags`]: reasons, found at run time, for
/// which a host is unhealthy regardless of what EDS says.
pub mod health_flag {
    /// Ejected by outlier detection.
    pub const FAILED_OUTLIER_CHECK: u32 = 1;
    /// Failed active health checking.
    pub const FAILED_ACTIVE_HC: u32 = 1 << 1;
    /// Not yet checked by active health checking (counts as unhealthy).
    pub const PENDING_ACTIVE_HC: u32 = 1 << 2;
}

/// One upstream endpoint: what EDS says about it, plus the run-time state
/// that outlives cluster and endpoint updates which keep the endpoint.
#[derive(Debug)]
pub struct Host {
    pub target: Target,
    /// `endpoint.hostname`, used for hashing when the LB asks for it.
    pub hostname: String,
    pub weight: u32,
    pub priority: u32,
    /// Index into [`Cluster::localities`].
    pub locality: usize,
    pub eds_health: EdsHealth,
    /// Index of its transport in the cluster's [`Transports`].
    pub transport: usize,
    /// TLS settings for connections to it, when its transport is TLS.
    pub tls: Option<Arc<UpstreamTls>>,
    pub state: Arc<HostState>,
}

/// Run-time state of a host, shared by every `Host` value for the same
/// endpoint across updates.
#[derive(Debug)]
pub struct HostState {
    pub pool: Arc<HostPool>,
    /// Requests in flight, for least-request balancing and admin output.
    pub active: AtomicU64,
    /// [`health_flag`] bits.
    pub health_flags: AtomicU32,
    pub outlier: outlier::HostOutlier,
    pub health_check: health_check::HostHealthCheck,
}

impl HostState {
    fn new(target: &Target) -> Arc<Self> {
        Arc::new(Self {
            pool: HostPool::new(target.clone()),
            active: AtomicU64::new(0),
            health_flags: AtomicU32::new(0),
            outlier: outlier::HostOutlier::default(),
            health_check: health_check::HostHealthCheck::default(),
        })
    }
}

/// What the load balancer sees: EDS health combined with run-time flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Healthy,
    Degraded,
    Unhealthy,
}

impl Host {
    pub fn health(&self) -> Health {
        if self.state.health_flags.load(Ordering::Relaxed) != 0 {
            return Health::Unhealthy;
        }
        match self.eds_health {
            EdsHealth::Healthy => Health::Healthy,
            EdsHealth::Degraded => Health::Degraded,
            EdsHealth::Unhealthy => Health::Unhealthy,
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.health() == Health::Healthy
    }

    pub fn active(&self) -> u64 {
        self.state.active.load(Ordering::Relaxed)
    }

    pub fn pool(&self) -> &Arc<HostPool> {
        &self.state.pool
    }
}

/// A `LocalityLbEndpoints` group: where hosts live and its weight.
#[derive(Debug, Clone)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub sub_zone: String,
    /// `load_balancing_weight`; localities without one get no traffic when
    /// locality-weighted balancing is on.
    pub weight: Option<u32>,
    pub priority: u32,
}

/// One `LbEndpoint` as validated, before it is given run-time state.
struct Endpoint {
    target: Target,
    hostname: String,
    weight: u32,
    priority: u32,
    locality: usize,
    eds_health: EdsHealth,
    transport: usize,
}

/// What a `ClusterLoadAssignment` holds, validated.
struct Assignment {
    endpoints: Vec<Endpoint>,
    localities: Vec<Locality>,
    overprovisioning_factor: u32,
}

/// Envoy's default: a priority level takes all traffic until less than
/// 1/1.4 of its hosts are healthy.
pub const DEFAULT_OVERPROVISIONING_FACTOR: u32 = 140;

fn endpoints_of(
    cla: &ClusterLoadAssignment,
    allow_dns: bool,
    transports: &Transports,
) -> Result<Assignment, (String, String)> {
    let mut endpoints = Vec::new();
    let mut localities = Vec::with_capacity(cla.endpoints.len());
    for (li, group) in cla.endpoints.iter().enumerate() {
        let loc = group.locality.clone().unwrap_or_default();
        let weight = group.load_balancing_weight.map(|w| w.value);
        if weight == Some(0) {
            return Err((
                format!("endpoints[{li}].load_balancing_weight"),
                "must be at least 1".into(),
            ));
        }
        localities.push(Locality {
            region: loc.region,
            zone: loc.zone,
            sub_zone: loc.sub_zone,
            weight,
            priority: group.priority,
        });
        for (ei, lb_ep) in group.lb_endpoints.iter().enumerate() {
            let field = format!("endpoints[{li}].lb_endpoints[{ei}]");
            let endpoint = match &lb_ep.host_identifier {
                Some(lb_endpoint::HostIdentifier::Endpoint(e)) => e,
                Some(lb_endpoint::HostIdentifier::EndpointName(n)) => {
                    return Err((
                        format!("{field}.endpoint_name"),
                        format!("named endpoint '{n}' is not supported"),
                    ));
                }
                None => return Err((format!("{field}.endpoint"), "endpoint is required".into())),
            };
            let address = endpoint.address.as_ref().ok_or_else(|| {
                (
                    format!("{field}.endpoint.address"),
                    "address is required".to_string(),
                )
            })?;
            let target = addr::endpoint_target(address, allow_dns)
                .map_err(|m| (format!("{field}.endpoint.address"), m))?;
            let weight = lb_ep.load_balancing_weight.map(|w| w.value).unwrap_or(1);
            if weight == 0 {
                return Err((
                    format!("{field}.load_balancing_weight"),
                    "must be at least 1".into(),
                ));
            }
            let eds_health = match HealthStatus::try_from(lb_ep.health_status) {
                Ok(HealthStatus::Unknown | HealthStatus::Healthy) => EdsHealth::Healthy,
                Ok(HealthStatus::Degraded) => EdsHealth::Degraded,
                _ => EdsHealth::Unhealthy,
            };
            endpoints.push(Endpoint {
                target,
                hostname: endpoint.hostname.clone(),
                weight,
                priority: group.priority,
                locality: li,
                eds_health,
                transport: transports.select(lb_ep.metadata.as_ref(), group.metadata.as_ref()),
            });
        }
    }
    let overprovisioning_factor = cla
        .policy
        .as_ref()
        .and_then(|p| p.overprovisioning_factor)
        .map(|f| f.value)
        .unwrap_or(DEFAULT_OVERPROVISIONING_FACTOR);
    if overprovisioning_factor == 0 {
        return Err((
            "policy.overprovisioning_factor".into(),
            "must be greater than 0".into(),
        ));
    }
    Ok(Assignment {
        endpoints,
        localities,
        overprovisioning_factor,
    })
}

/// Counters Envoy exposes per cluster (`cluster.<name>.upstream_rq_total`...).
#[derive(Debug, Default)]
pub struct ClusterStats {
    pub upstream_rq_total: AtomicU64,
    pub upstream_cx_connect_fail: AtomicU64,
    pub upstream_rq_timeout: AtomicU64,
    pub upstream_rq_retry: AtomicU64,
    pub upstream_rq_2xx: AtomicU64,
    pub upstream_rq_4xx: AtomicU64,
    pub upstream_rq_5xx: AtomicU64,
}

impl ClusterStats {
    pub fn record_status(&self, status: u16) {
        let counter = match status {
            200..=299 => &self.upstream_rq_2xx,
            400..=499 => &self.upstream_rq_4xx,
            500..=599 => &self.upstream_rq_5xx,
            _ => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A cluster with its current endpoints, ready for traffic.
#[derive(Debug)]
pub struct Cluster {
    pub spec: ClusterSpec,
    pub all_hosts: Vec<Arc<Host>>,
    pub localities: Vec<Locality>,
    /// From the assignment's `policy`, in percent (140 = 1.4).
    pub overprovisioning_factor: u32,
    /// The EDS assignment this value was built from, to tell whether an
    /// update changes anything.
    eds: Option<ClusterLoadAssignment>,
    /// The secrets its TLS transports were built from.
    secrets_fingerprint: u64,
    /// Rebuilt by [`Cluster::refresh_lb`] when a host's health changes.
    lb: ArcSwap<LoadBalancer>,
    pub stats: Arc<ClusterStats>,
}

impl Cluster {
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Picks a host for one request (see [`LbContext`]; `LbContext::default()` for a
    /// request without a hash), or `None` when there is no host to pick.
    pub fn pick(&self, ctx: &LbContext) -> Option<&Arc<Host>> {
        self.lb.load().pick(&self.all_hosts, ctx)
    }

    /// Whether this value is what `spec` and `eds` would build: the same
    /// cluster definition (the same compiled spec) and the same endpoints.
    pub fn built_from(
        &self,
        spec: &ClusterSpec,
        eds: Option<&ClusterLoadAssignment>,
        tls: &BuiltTransports,
    ) -> bool {
        Arc::ptr_eq(&self.spec.breakers, &spec.breakers)
            && self.eds.as_ref() == eds
            && self.secrets_fingerprint == tls.fingerprint
    }

    /// Rebuilds the load balancer from the hosts' current health; called by
    /// outlier detection and health checking when they change a host.
    pub fn refresh_lb(&self) {
        let refreshed = self.lb.load().refreshed(&self.all_hosts);
        self.lb.store(Arc::new(refreshed));
    }
}

/// Outlier detection and active health checking (see [`outlier`] and
/// [`health_check`]).
impl Cluster {
    /// Starts a newly built value before it is published: takes over the
    /// cluster's health state (stats, timers) from `previous`, becomes the
    /// value that outlier detection and health checking update, and starts
    /// or hands on their tasks (only where a tokio runtime runs). Hosts new
    /// to health checking start as failing it, as in Envoy.
    pub fn start(self: &Arc<Self>, previous: Option<&Self>) {
        self.make_current(previous);
        let cleared = self.start_outlier();
        let marked = self.start_health_checks();
        // A host's health may also have changed since this value's balancer
        // was built, before it became current.
        let watched = self.spec.outlier.is_some() || self.spec.health_checks.is_some();
        if cleared || marked || watched {
            self.refresh_lb();
        }
    }

    /// Feeds outlier detection with what happened to one attempt on `host`;
    /// the router calls it once per attempt (not for circuit-breaker
    /// overflows, which Envoy does not count against the host).
    pub fn report_outcome(&self, host: &Host, outcome: outlier::Outcome) {
        self.report_outcome_at(&host.state, outcome, std::time::Instant::now());
    }

    /// `cluster.<name>.outlier_detection.<stat>` values (counters and the
    /// `ejections_active` gauge), by stat name; empty without outlier detection.
    pub fn outlier_stats(&self) -> Vec<(String, u64)> {
        self.outlier_stat_values()
    }

    /// `cluster.<name>.health_check.<stat>` values (counters and the
    /// `healthy`/`degraded` gauges); empty without health checks.
    pub fn health_check_stats(&self) -> Vec<(String, u64)> {
        self.health_check_stat_values()
    }
}
