//! Istio security APIs into Envoy configuration, as istiod's pilot builds it
//! (`pilot/pkg/security/{authn,authz}`, `networking/core/cluster_tls.go`):
//!
//! - which PeerAuthentication, RequestAuthentication and AuthorizationPolicy
//!   objects apply to a workload (this module);
//! - [`tls`]: upstream TLS (auto mTLS with `transport_socket_matches`,
//!   DestinationRule `tls` modes) and the inbound mTLS filter chains
//!   (`DownstreamTlsContext` with the SDS secrets `default` and `ROOTCA`);
//! - [`authz`]: AuthorizationPolicy → Envoy RBAC (HTTP and network filters),
//!   CUSTOM → ext_authz;
//! - [`jwt`]: RequestAuthentication → `envoy.filters.http.jwt_authn`;
//! - [`det`]: the messages with protobuf maps, encoded deterministically.
//!
//! Identities are SPIFFE ids `spiffe://<trust domain>/ns/<ns>/sa/<sa>` with
//! MeshConfig's `trustDomain` (and `trustDomainAliases`).

pub mod authz;
pub(crate) mod det;
pub mod jwt;
pub mod tls;

use std::collections::{BTreeMap, BTreeSet};

use api::Object;
use api::security::{AuthorizationPolicy, MtlsMode, PeerAuthentication, RequestAuthentication};
use envoy_types::pb::envoy::config::listener::v3::Filter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use registry::{Endpoint, Service};

use crate::Diagnostic;
use crate::context::{PushContext, labels_match};
use crate::node::{NodeKind, ProxyNode};

/// `spiffe://`.
pub const SPIFFE_PREFIX: &str = "spiffe://";

/// `spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`.
pub fn spiffe_id(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("{SPIFFE_PREFIX}{trust_domain}/ns/{namespace}/sa/{service_account}")
}

/// The mesh trust domain followed by its aliases, without duplicates.
pub fn trust_domains(ctx: &PushContext) -> Vec<String> {
    let mesh = ctx.mesh();
    let mut out: Vec<String> = Vec::new();
    for td in std::iter::once(&mesh.trust_domain).chain(&mesh.trust_domain_aliases) {
        if !td.is_empty() && !out.contains(td) {
            out.push(td.clone());
        }
    }
    if out.is_empty() {
        out.push(api::defaults::TRUST_DOMAIN.to_owned());
    }
    out
}

/// The effective PeerAuthentication of one workload: a mode, overridden
/// per workload port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPolicy {
    /// Never `Unset`.
    pub mode: MtlsMode,
    pub per_port: BTreeMap<u32, MtlsMode>,
}

impl PeerPolicy {
    /// The mode on workload port `port`.
    pub fn for_port(&self, port: u32) -> MtlsMode {
        self.per_port.get(&port).copied().unwrap_or(self.mode)
    }
}

/// `namespace/name` of `obj` as Istio names policies in diagnostics.
fn key(kind: &str, obj: &Object) -> String {
    format!("{kind} {}", obj.key())
}

/// Istio's `ComposePeerAuthentication`: the mesh policy (root namespace, no
/// selector), then the namespace's, then the first workload-selecting one
/// outside the root namespace; `UNSET` inherits from the wider scope, and
/// PERMISSIVE applies when nothing is set. "First" is configuration order
/// (Istio takes the oldest).
pub fn peer_policy(
    ctx: &PushContext,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> PeerPolicy {
    let root = ctx.mesh().root_namespace.as_str();
    let mut mesh: Option<&PeerAuthentication> = None;
    let mut ns_level: Option<&PeerAuthentication> = None;
    let mut workload: Option<&PeerAuthentication> = None;
    for (obj, pa) in ctx.peer_authentications() {
        let ns = obj.namespace();
        if ns != namespace && ns != root {
            continue;
        }
        if pa.is_namespace_wide() {
            if ns == root {
                mesh = mesh.or(Some(pa));
            } else {
                ns_level = ns_level.or(Some(pa));
            }
        } else if ns != root
            && pa
                .selector
                .as_ref()
                .is_some_and(|s| labels_match(&s.match_labels, labels))
        {
            workload = workload.or(Some(pa));
        }
    }
    let mut mode = MtlsMode::Permissive;
    for pa in [mesh, ns_level, workload].into_iter().flatten() {
        if pa.mode() != MtlsMode::Unset {
            mode = pa.mode();
        }
    }
    let per_port = workload
        .and_then(|pa| pa.port_level_mtls.as_ref())
        .map(|ports| {
            ports
                .iter()
                .map(|(p, m)| {
                    let m = match m.mode() {
                        MtlsMode::Unset => mode,
                        m => m,
                    };
                    (*p, m)
                })
                .collect()
        })
        .unwrap_or_default();
    PeerPolicy { mode, per_port }
}

/// Istio's namespace-level mTLS mode (`GetNamespaceMutualTLSMode`): the
/// namespace-wide PeerAuthentication of `namespace`, else the mesh's, with
/// `UNSET` inheriting and the mesh defaulting to PERMISSIVE. `Unset` when
/// neither exists.
pub fn namespace_mtls_mode(ctx: &PushContext, namespace: &str) -> MtlsMode {
    let root = ctx.mesh().root_namespace.as_str();
    let first = |ns: &str| {
        ctx.peer_authentications()
            .find(|(o, pa)| o.namespace() == ns && pa.is_namespace_wide())
            .map(|(_, pa)| pa.mode())
    };
    let global = first(root).map(|m| {
        if m == MtlsMode::Unset {
            MtlsMode::Permissive
        } else {
            m
        }
    });
    if namespace != root
        && let Some(m) = first(namespace)
    {
        return match m {
            MtlsMode::Unset => global.unwrap_or(MtlsMode::Permissive),
            m => m,
        };
    }
    global.unwrap_or(MtlsMode::Unset)
}

/// Whether a policy attaches to a workload by Istio's selector rules: not
/// when it has `targetRef(s)` (those name gateways and waypoints), else when
/// its selector is absent or a subset of the labels.
fn selects(
    selector: Option<&api::security::WorkloadSelector>,
    has_target_refs: bool,
    labels: &BTreeMap<String, String>,
) -> bool {
    !has_target_refs && selector.is_none_or(|s| labels_match(&s.match_labels, labels))
}

/// AuthorizationPolicies of the workload: the root namespace's (mesh-wide)
/// first, then its own namespace's, each in configuration order.
pub fn authorization_policies<'a>(
    ctx: &'a PushContext,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Vec<(&'a Object, &'a AuthorizationPolicy)> {
    let root = ctx.mesh().root_namespace.clone();
    let mut namespaces = vec![root.as_str()];
    if namespace != root {
        namespaces.push(namespace);
    }
    let mut out = Vec::new();
    for ns in namespaces {
        out.extend(ctx.authorization_policies().filter(|(o, ap)| {
            o.namespace() == ns
                && selects(ap.selector.as_ref(), !ap.target_refs().is_empty(), labels)
        }));
    }
    out
}

/// RequestAuthentications of the workload (its namespace's, then the root
/// namespace's).
pub fn request_authentications<'a>(
    ctx: &'a PushContext,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Vec<(&'a Object, &'a RequestAuthentication)> {
    let root = ctx.mesh().root_namespace.clone();
    let mut namespaces = vec![namespace];
    if namespace != root {
        namespaces.push(root.as_str());
    }
    let mut out = Vec::new();
    for ns in namespaces {
        out.extend(ctx.request_authentications().filter(|(o, ra)| {
            o.namespace() == ns
                && selects(ra.selector.as_ref(), !ra.target_refs().is_empty(), labels)
        }));
    }
    out
}

/// The SPIFFE identities behind `svc` (Istio's `ServiceAccounts`): those of
/// its endpoints with a service account, plus a ServiceEntry's
/// `subjectAltNames`, expanded to every trust domain alias; sorted.
pub fn service_identities(ctx: &PushContext, svc: &Service) -> Vec<String> {
    let td = &ctx.mesh().trust_domain;
    let mut ids = BTreeSet::new();
    for port in &svc.ports {
        for ep in ctx
            .registry()
            .endpoints(&svc.hostname, port.number, &BTreeMap::new())
        {
            if !ep.service_account.is_empty() {
                ids.insert(spiffe_id(td, &ep.namespace, &ep.service_account));
            }
        }
    }
    if svc.origin.kind == "ServiceEntry"
        && let Some(se) =
            ctx.service_entry(&format!("{}/{}", svc.origin.namespace, svc.origin.name))
    {
        ids.extend(se.subject_alt_names.iter().cloned());
    }
    expand_trust_domains(&ids, &ctx.mesh().trust_domain_aliases)
}

/// Istio's `spiffe.ExpandWithTrustDomains`: every SPIFFE id also under each
/// alias; other names kept as they are.
fn expand_trust_domains(ids: &BTreeSet<String>, aliases: &[String]) -> Vec<String> {
    let mut out = ids.clone();
    for id in ids {
        let Some(rest) = id.strip_prefix(SPIFFE_PREFIX) else {
            continue;
        };
        let Some((_, path)) = rest.split_once('/') else {
            continue;
        };
        for alias in aliases {
            out.insert(format!("{SPIFFE_PREFIX}{alias}/{path}"));
        }
    }
    out.into_iter().collect()
}

/// The port a PeerAuthentication `portLevelMtls` key of the endpoint's
/// workload means: its target port. Local-mode endpoints
/// (`127.0.0.1:<sidecar inbound port>`) name the sidecar's listener
/// instead, so the service port's target is used for them.
pub(crate) fn endpoint_workload_port(ep: &Endpoint, target_port: u32) -> u32 {
    if ep.port == 0 || (ep.has_sidecar && ep.address.starts_with("127.")) {
        target_port
    } else {
        ep.port
    }
}

/// The security filters of one workload's inbound chains (and a gateway's
/// listeners), in Istio's order: CUSTOM (RBAC shadow rules + ext_authz),
/// jwt_authn, then RBAC for AUDIT, DENY and ALLOW.
#[derive(Debug, Clone, Default)]
pub struct WorkloadSecurity {
    pub peer: Option<PeerPolicy>,
    /// HTTP filters to put before the route-level ones (fault, cors, router).
    pub http_filters: Vec<HttpFilter>,
    /// Network filters to put before `tcp_proxy`.
    pub tcp_filters: Vec<Filter>,
}

impl WorkloadSecurity {
    /// Everything that applies to `node`'s own workload.
    pub fn for_node(node: &ProxyNode, ctx: &PushContext, diags: &mut Vec<Diagnostic>) -> Self {
        let policies = authorization_policies(ctx, &node.namespace, &node.labels);
        let authz = authz::Builder::new(ctx, node, &policies, diags);
        let mut http_filters = authz.custom_http();
        let jwt_rules = request_authentications(ctx, &node.namespace, &node.labels);
        if let Some(f) = jwt::filter(ctx, &jwt_rules, node.kind != NodeKind::Sidecar, diags) {
            http_filters.push(f);
        }
        http_filters.extend(authz.local_http());
        let mut tcp_filters = authz.custom_tcp();
        tcp_filters.extend(authz.local_tcp());
        let peer = (node.kind == NodeKind::Sidecar)
            .then(|| peer_policy(ctx, &node.namespace, &node.labels));
        Self {
            peer,
            http_filters,
            tcp_filters,
        }
    }

    /// The mTLS mode on workload port `port` (DISABLE for gateways).
    pub fn mode_for_port(&self, port: u32) -> MtlsMode {
        self.peer
            .as_ref()
            .map_or(MtlsMode::Disable, |p| p.for_port(port))
    }
}

/// `Kind namespace/name` of a security object, for diagnostics.
pub(crate) fn object_name(kind: &str, obj: &Object) -> String {
    key(kind, obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_expand_spiffe_ids_only() {
        let ids: BTreeSet<String> = ["spiffe://td/ns/a/sa/b".to_owned(), "dns.example".to_owned()]
            .into_iter()
            .collect();
        assert_eq!(
            expand_trust_domains(&ids, &["old".to_owned()]),
            [
                "dns.example",
                "spiffe://old/ns/a/sa/b",
                "spiffe://td/ns/a/sa/b"
            ]
        );
    }
}
