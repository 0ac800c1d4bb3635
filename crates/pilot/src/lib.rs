//! Translation of the mesh model into Envoy xDS resources, per proxy.
//!
//! The control plane calls [`generate`] once per connected proxy (and again
//! whenever configuration or the registry changes) and serves the result with
//! [`to_snapshot`]:
//!
//! ```text
//! api::Object (validated) ─┐
//! registry::Registry ──────┼─> PushContext (indexes) ─┐
//! api::MeshConfig ─────────┘                          ├─> generate() ─> Generated ─> to_snapshot()
//! envoy Node ─> ProxyNode::from_node() ───────────────┘
//! ```
//!
//! - [`node`]: who is asking (sidecar / router, namespace, labels, and the
//!   Trellis local-mode ports).
//! - [`context`]: the configuration of one push with its indexes
//!   (VirtualServices by gateway and host, DestinationRules by host with
//!   Istio's namespace precedence, Sidecar scoping, exportTo).
//! - [`cluster`]: clusters and ClusterLoadAssignments, DestinationRule
//!   traffic policies; [`endpoints`]: assignments alone, for incremental
//!   EDS pushes.
//! - [`route`]: VirtualService HTTP routes to Envoy routes.
//! - [`sidecar`]: sidecar listeners and outbound route tables.
//! - [`gateway`]: gateway (router) listeners and route tables, TLS servers
//!   and their SDS credentials.
//! - `tcp`: VirtualService `tcp`/`tls` routes (tcp_proxy, SNI chains).
//! - [`security`]: PeerAuthentication (inbound mTLS chains), auto mTLS and
//!   DestinationRule TLS (upstream), RequestAuthentication (jwt_authn) and
//!   AuthorizationPolicy (RBAC, ext_authz).
//!
//! Names follow Istio so that tools and dashboards keep working: clusters
//! `outbound|<port>|<subset>|<host>`, `inbound|<port>||`, `BlackHoleCluster`,
//! `PassthroughCluster`; route tables `outbound-http` (local mode),
//! `<port>` (capture mode) and `http.<port>` (gateways).

pub mod cluster;
pub mod context;
pub mod endpoints;
pub mod gateway;
pub mod node;
pub(crate) mod pb;
pub mod route;
pub mod security;
pub mod sidecar;
pub(crate) mod tcp;
pub(crate) mod telemetry;

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;

pub use context::PushContext;
pub use node::{LocalPorts, NodeKind, ProxyNode};

/// The xDS resources of one proxy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Generated {
    pub listeners: Vec<Listener>,
    pub routes: Vec<RouteConfiguration>,
    pub clusters: Vec<Cluster>,
    /// One ClusterLoadAssignment per EDS cluster (named like the cluster).
    pub endpoints: Vec<ClusterLoadAssignment>,
    /// SDS secrets the control plane serves itself (gateway credentials).
    pub secrets: Vec<Secret>,
    /// What could not be translated exactly (the rest still is).
    pub diagnostics: Vec<Diagnostic>,
}

impl Generated {
    pub fn listener(&self, name: &str) -> Option<&Listener> {
        self.listeners.iter().find(|l| l.name == name)
    }

    pub fn route(&self, name: &str) -> Option<&RouteConfiguration> {
        self.routes.iter().find(|r| r.name == name)
    }

    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.name == name)
    }

    pub fn endpoint(&self, cluster_name: &str) -> Option<&ClusterLoadAssignment> {
        self.endpoints
            .iter()
            .find(|e| e.cluster_name == cluster_name)
    }

    /// Sorts every list by name so that output is deterministic.
    fn sort(&mut self) {
        self.listeners.sort_by(|a, b| a.name.cmp(&b.name));
        self.routes.sort_by(|a, b| a.name.cmp(&b.name));
        self.clusters.sort_by(|a, b| a.name.cmp(&b.name));
        self.endpoints
            .sort_by(|a, b| a.cluster_name.cmp(&b.cluster_name));
        self.clusters.dedup_by(|a, b| a.name == b.name);
        self.endpoints
            .dedup_by(|a, b| a.cluster_name == b.cluster_name);
        self.secrets.sort_by(|a, b| a.name.cmp(&b.name));
        self.secrets.dedup_by(|a, b| a.name == b.name);
    }
}

/// Something in the configuration that was not translated (exactly): an
/// unsupported field, a dangling reference. Translation goes on without it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// `Kind namespace/name` of the object concerned, or empty.
    pub object: String,
    /// Field path inside the object (`spec.http[0].fault.abort`), or empty.
    pub field: String,
    pub message: String,
}

impl Diagnostic {
    pub(crate) fn new(
        object: impl Into<String>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            object: object.into(),
            field: field.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.object.is_empty(), self.field.is_empty()) {
            (true, _) => write!(f, "{}", self.message),
            (false, true) => write!(f, "{}: {}", self.object, self.message),
            (false, false) => write!(f, "{}: {}: {}", self.object, self.field, self.message),
        }
    }
}

/// Why a proxy gets no configuration at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GenerateError {
    #[error("proxy type {0:?} is not supported yet")]
    UnsupportedProxy(String),
}

/// What one proxy's resources depend on besides the push context.
/// Proxies with equal keys (the replicas of a workload) get identical
/// resources, so the control plane translates once per key. Everything
/// [`generate`] reads from a [`ProxyNode`] must be in it: the node's
/// addresses count only through the registry endpoints that are its own
/// instances (the inbound ports they serve), and its id appears only in
/// diagnostics. The incremental-push test compares shared results with
/// a fresh translation per proxy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GenerationKey {
    kind: NodeKind,
    namespace: String,
    dns_domain: String,
    labels: BTreeMap<String, String>,
    service_account: String,
    workload_name: String,
    local: Option<LocalPorts>,
    served: Vec<(u32, registry::Protocol)>,
}

/// The [`GenerationKey`] of `node` under `ctx`.
pub fn generation_key(node: &ProxyNode, ctx: &PushContext) -> GenerationKey {
    GenerationKey {
        kind: node.kind,
        namespace: node.namespace.clone(),
        dns_domain: node.dns_domain.clone(),
        labels: node.labels.clone(),
        service_account: node.service_account.clone(),
        workload_name: node.workload_name.clone(),
        local: node.local.clone(),
        served: sidecar::served_ports(node, ctx).into_iter().collect(),
    }
}

/// Builds every xDS resource the proxy `node` needs.
pub fn generate(node: &ProxyNode, ctx: &PushContext) -> Result<Generated, GenerateError> {
    let mut out = match node.kind {
        NodeKind::Sidecar => sidecar::generate(node, ctx),
        NodeKind::Router => gateway::generate(node, ctx),
        NodeKind::Waypoint => return Err(GenerateError::UnsupportedProxy("waypoint".into())),
    };
    telemetry::apply(node, ctx, &mut out);
    out.sort();
    Ok(out)
}

/// Packs the resources into a snapshot whose per-type versions are content
/// hashes: an unchanged type keeps its version across pushes.
pub fn to_snapshot(generated: &Generated) -> xds::Snapshot {
    use xds::type_url::{self, pack};
    fn named<M: prost::Message + prost::Name>(
        items: &[M],
        name: impl Fn(&M) -> &str,
    ) -> BTreeMap<String, prost_types::Any> {
        items
            .iter()
            .map(|m| (name(m).to_owned(), pack(m)))
            .collect()
    }
    let mut snap = xds::Snapshot::new();
    snap.set_hashed(type_url::LISTENER, named(&generated.listeners, |l| &l.name));
    snap.set_hashed(type_url::ROUTE, named(&generated.routes, |r| &r.name));
    snap.set_hashed(type_url::CLUSTER, named(&generated.clusters, |c| &c.name));
    snap.set_hashed(
        type_url::ENDPOINT,
        named(&generated.endpoints, |e| &e.cluster_name),
    );
    if !generated.secrets.is_empty() {
        snap.set_hashed(type_url::SECRET, named(&generated.secrets, |s| &s.name));
    }
    snap
}
