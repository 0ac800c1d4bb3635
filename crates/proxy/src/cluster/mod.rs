//! Upstream clusters: what a `Cluster` resource and its endpoints compile to.
//!
//! A [`ClusterSpec`] is the validated, endpoint-independent part of a cluster
//! resource. Combined with the current endpoints (static `load_assignment` or
//! an EDS `ClusterLoadAssignment`) it becomes a [`Cluster`], the immutable
//! value the router picks hosts from. Hosts are shared between successive
//! `Cluster` values so that their connection pools survive updates.

mod lb;
pub mod pool;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::{Cluster as ClusterProto, cluster};
use envoy_types::pb::envoy::config::core::v3::HealthStatus;
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use prost::Message;

pub use lb::LoadBalancer;
use pool::HostPool;
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
    /// The resource as received, for `/config_dump`.
    pub proto: ClusterProto,
    /// Endpoints from `load_assignment` (STATIC and DNS types).
    static_assignment: Option<ClusterLoadAssignment>,
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
        match lb_policy {
            cluster::LbPolicy::RoundRobin
            | cluster::LbPolicy::LeastRequest
            | cluster::LbPolicy::Random
            | cluster::LbPolicy::ClusterProvided => {}
            other => {
                return Err(scope.err(
                    "lb_policy",
                    format!("{} is not supported yet", other.as_str_name()),
                ));
            }
        }
        if let Some(ts) = &proto.transport_socket {
            let type_url = match &ts.config_type {
                Some(envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(any)) => {
                    any.type_url.as_str()
                }
                None => "",
            };
            if !type_url.ends_with("envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer") {
                return Err(scope.err(
                    "transport_socket",
                    format!("upstream transport socket '{type_url}' is not supported yet"),
                ));
            }
        }
        let protocol = upstream_protocol(proto).map_err(|(field, msg)| scope.err(field, msg))?;
        let static_assignment = match discovery {
            Discovery::Static | Discovery::Dns => {
                let cla = proto.load_assignment.clone().unwrap_or_default();
                // Validate the addresses now so a bad one is a NACK, not a runtime surprise.
                endpoints_of(&cla, discovery == Discovery::Dns)
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
            proto: proto.clone(),
            static_assignment,
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
        let cla = match &self.discovery {
            Discovery::Eds { .. } => eds,
            _ => self.static_assignment.as_ref(),
        };
        let endpoints = match cla {
            Some(cla) => {
                endpoints_of(cla, self.discovery == Discovery::Dns).map_err(|(field, msg)| {
                    ErrorScope::new("cluster_load_assignment", &cla.cluster_name).err(field, msg)
                })?
            }
            None => Vec::new(),
        };
        let mut reuse: HashMap<&Target, &Arc<Host>> = HashMap::new();
        if let Some(prev) = previous {
            for h in &prev.all_hosts {
                reuse.insert(&h.target, h);
            }
        }
        let mut hosts = Vec::with_capacity(endpoints.len());
        for ep in endpoints {
            let host = match reuse.get(&ep.target) {
                Some(h)
                    if h.weight == ep.weight
                        && h.healthy == ep.healthy
                        && h.priority == ep.priority =>
                {
                    Arc::clone(h)
                }
                Some(h) => Arc::new(Host {
                    pool: Arc::clone(&h.pool),
                    active: AtomicU64::new(0),
                    ..ep
                }),
                None => Arc::new(ep),
            };
            hosts.push(host);
        }
        let lb = LoadBalancer::new(self.lb_policy, &hosts);
        Ok(Cluster {
            spec: self.clone(),
            all_hosts: hosts,
            lb,
            stats: ClusterStats::default(),
        })
    }
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

/// One upstream endpoint.
#[derive(Debug)]
pub struct Host {
    pub target: Target,
    pub weight: u32,
    pub priority: u32,
    pub healthy: bool,
    /// Requests in flight, for least-request balancing and admin output.
    pub active: AtomicU64,
    pub pool: Arc<HostPool>,
}

fn endpoints_of(
    cla: &ClusterLoadAssignment,
    allow_dns: bool,
) -> Result<Vec<Host>, (String, String)> {
    let mut out = Vec::new();
    for (li, locality) in cla.endpoints.iter().enumerate() {
        for (ei, lb_ep) in locality.lb_endpoints.iter().enumerate() {
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
            let healthy = matches!(
                HealthStatus::try_from(lb_ep.health_status),
                Ok(HealthStatus::Unknown | HealthStatus::Healthy | HealthStatus::Degraded)
            );
            let pool = HostPool::new(target.clone());
            out.push(Host {
                target,
                weight,
                priority: locality.priority,
                healthy,
                active: AtomicU64::new(0),
                pool,
            });
        }
    }
    Ok(out)
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
    lb: LoadBalancer,
    pub stats: ClusterStats,
}

impl Cluster {
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Picks a host for one request, or `None` when no host is healthy.
    pub fn pick(&self) -> Option<&Arc<Host>> {
        self.lb.pick(&self.all_hosts)
    }
}
