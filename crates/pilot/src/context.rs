//! The configuration of one push, indexed for per-proxy lookups.
//!
//! Built once per configuration change and shared by every proxy's
//! [`crate::generate`]. Lookups follow Istio's visibility rules:
//! - `exportTo` on services, VirtualServices and DestinationRules (`*`,
//!   `.`, `~`, namespace names; MeshConfig defaults when unset);
//! - a DestinationRule for a host is taken from the proxy's namespace, else
//!   the service's namespace, else the root namespace; exact hosts beat
//!   wildcards; a rule with a matching `workloadSelector` beats one without;
//! - a `Sidecar` with a matching `workloadSelector` in the proxy's namespace,
//!   else the namespace-wide one, else the root namespace's, narrows the
//!   services a sidecar sees (`egress[].hosts`).

use std::collections::BTreeMap;
use std::sync::Arc;

use api::networking::destination_rule::DestinationRule;
use api::networking::sidecar::{OutboundTrafficPolicyMode, Sidecar};
use api::networking::{Gateway, ServiceEntry, VirtualService};
use api::security::{AuthorizationPolicy, PeerAuthentication, RequestAuthentication};
use api::{MeshConfig, Object, Spec};
use registry::{Registry, Service};

use crate::node::ProxyNode;

/// Everything a push translates from.
#[derive(Debug, Clone)]
pub struct PushContext {
    objects: Vec<Object>,
    registry: Arc<Registry>,
    mesh: MeshConfig,
    domain_suffix: String,
    index: Index,
}

/// A VirtualService with its hosts and gateways resolved.
#[derive(Debug, Clone)]
pub struct VsEntry {
    /// Index into [`PushContext::objects`].
    pub object: usize,
    /// Hosts as FQDNs (short names expanded in the VS namespace), or
    /// wildcards as written.
    pub hosts: Vec<String>,
    /// `mesh` or `namespace/name` of each gateway.
    pub gateways: Vec<String>,
}

#[derive(Debug, Clone)]
struct DrEntry {
    object: usize,
    host: String,
}

#[derive(Debug, Clone, Default)]
struct Index {
    virtual_services: Vec<VsEntry>,
    /// `namespace/name` → object index, for delegates.
    vs_by_key: BTreeMap<String, usize>,
    /// gateway (`mesh` or `ns/name`) → positions in `virtual_services`.
    vs_by_gateway: BTreeMap<String, Vec<usize>>,
    destination_rules: Vec<DrEntry>,
    gateways: Vec<usize>,
    sidecars: Vec<usize>,
    peer_authentications: Vec<usize>,
    authorization_policies: Vec<usize>,
    request_authentications: Vec<usize>,
    /// `namespace/name` → object index of ServiceEntries.
    service_entries: BTreeMap<String, usize>,
}

impl PushContext {
    /// Indexes `objects` (already validated) against `registry`, with the
    /// `cluster.local` domain suffix.
    pub fn new(objects: Vec<Object>, registry: Arc<Registry>, mesh: MeshConfig) -> Self {
        Self::with_domain_suffix(objects, registry, mesh, "cluster.local")
    }

    pub fn with_domain_suffix(
        objects: Vec<Object>,
        registry: Arc<Registry>,
        mesh: MeshConfig,
        domain_suffix: &str,
    ) -> Self {
        let mut ctx = Self {
            objects,
            registry,
            mesh,
            domain_suffix: domain_suffix.to_owned(),
            index: Index::default(),
        };
        ctx.index = ctx.build_index();
        ctx
    }

    pub fn objects(&self) -> &[Object] {
        &self.objects
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn mesh(&self) -> &MeshConfig {
        &self.mesh
    }

    pub fn domain_suffix(&self) -> &str {
        &self.domain_suffix
    }

    fn build_index(&self) -> Index {
        let mut index = Index::default();
        for (i, obj) in self.objects.iter().enumerate() {
            let ns = obj.namespace();
            match &obj.spec {
                Spec::VirtualService(vs) => {
                    index.vs_by_key.insert(obj.key(), i);
                    if vs.hosts.is_empty() {
                        continue; // a delegate: reachable only through its root
                    }
                    let hosts = vs.hosts.iter().map(|h| self.resolve_host(h, ns)).collect();
                    let gateways: Vec<String> = if vs.gateways.is_empty() {
                        vec![api::defaults::MESH_GATEWAY.to_owned()]
                    } else {
                        vs.gateways.iter().map(|g| gateway_key(g, ns)).collect()
                    };
                    let pos = index.virtual_services.len();
                    for g in &gateways {
                        index.vs_by_gateway.entry(g.clone()).or_default().push(pos);
                    }
                    index.virtual_services.push(VsEntry {
                        object: i,
                        hosts,
                        gateways,
                    });
                }
                Spec::DestinationRule(dr) => index.destination_rules.push(DrEntry {
                    object: i,
                    host: self.resolve_host(&dr.host, ns),
                }),
                Spec::Gateway(_) => index.gateways.push(i),
                Spec::Sidecar(_) => index.sidecars.push(i),
                Spec::PeerAuthentication(_) => index.peer_authentications.push(i),
                Spec::AuthorizationPolicy(_) => index.authorization_policies.push(i),
                Spec::RequestAuthentication(_) => index.request_authentications.push(i),
                Spec::ServiceEntry(_) => {
                    index.service_entries.insert(obj.key(), i);
                }
                _ => {}
            }
        }
        index
    }

    /// A host as written in an object of `namespace`, as a registry hostname
    /// when it names a service, else an FQDN (short names expanded) or the
    /// wildcard as written.
    pub fn resolve_host(&self, host: &str, namespace: &str) -> String {
        if host.starts_with('*') {
            return host.to_owned();
        }
        if let Some(svc) = self
            .registry
            .resolve_host(host, namespace, &self.domain_suffix)
        {
            return svc.hostname.clone();
        }
        if host.contains('.') {
            host.to_owned()
        } else {
            format!("{host}.{namespace}.svc.{}", self.domain_suffix)
        }
    }

    /// Services visible from `namespace` by their `exportTo`.
    pub fn visible_services<'a>(&'a self, namespace: &'a str) -> impl Iterator<Item = &'a Service> {
        self.registry.services.values().filter(move |s| {
            let export = if s.export_to.is_empty() {
                &self.mesh.default_service_export_to
            } else {
                &s.export_to
            };
            exported_to(export, &s.namespace, namespace)
        })
    }

    /// Services a sidecar sees: visible by `exportTo`, narrowed by the
    /// Sidecar resource's egress hosts (and ports) when one applies.
    pub fn sidecar_services<'a>(
        &'a self,
        node: &'a ProxyNode,
    ) -> Vec<(&'a Service, Option<Vec<u32>>)> {
        let sidecar = self.sidecar_for(node);
        self.visible_services(&node.namespace)
            .filter_map(|svc| match sidecar {
                None => Some((svc, None)),
                Some((_, sc)) => egress_ports(sc, svc, &node.namespace).map(|p| (svc, p)),
            })
            .collect()
    }

    /// The Sidecar resource that applies to `node`, with its object.
    pub fn sidecar_for<'a>(&'a self, node: &ProxyNode) -> Option<(&'a Object, &'a Sidecar)> {
        let sidecars = || {
            self.index.sidecars.iter().filter_map(|&i| {
                let obj = &self.objects[i];
                match &obj.spec {
                    Spec::Sidecar(sc) => Some((obj, sc)),
                    _ => None,
                }
            })
        };
        let selected = sidecars().find(|(obj, sc)| {
            obj.namespace() == node.namespace
                && sc
                    .workload_selector
                    .as_ref()
                    .is_some_and(|sel| labels_match(&sel.labels, &node.labels))
        });
        selected
            .or_else(|| {
                sidecars().find(|(obj, sc)| {
                    obj.namespace() == node.namespace && sc.workload_selector.is_none()
                })
            })
            .or_else(|| {
                sidecars().find(|(obj, sc)| {
                    obj.namespace() == self.mesh.root_namespace && sc.workload_selector.is_none()
                })
            })
    }

    /// Whether unknown destinations are allowed (`ALLOW_ANY`) for `node`:
    /// the Sidecar resource's policy, else MeshConfig's.
    pub fn allow_any(&self, node: &ProxyNode) -> bool {
        if let Some(mode) = self
            .sidecar_for(node)
            .and_then(|(_, sc)| sc.outbound_traffic_policy.as_ref())
            .map(|p| p.mode.unwrap_or_default())
        {
            return mode == OutboundTrafficPolicyMode::AllowAny;
        }
        !matches!(
            self.mesh.outbound_traffic_policy.mode,
            api::mesh_config::MeshOutboundMode::RegistryOnly
        )
    }

    /// VirtualServices bound to `gateway` (`mesh` or `ns/name`) and
    /// exported to `namespace`, in configuration order.
    pub fn virtual_services_for_gateway<'a>(
        &'a self,
        gateway: &str,
        namespace: &'a str,
    ) -> impl Iterator<Item = (&'a VsEntry, &'a Object, &'a VirtualService)> {
        self.index
            .vs_by_gateway
            .get(gateway)
            .into_iter()
            .flatten()
            .filter_map(move |&pos| {
                let entry = &self.index.virtual_services[pos];
                let obj = &self.objects[entry.object];
                let Spec::VirtualService(vs) = &obj.spec else {
                    return None;
                };
                let export = if vs.export_to.is_empty() {
                    &self.mesh.default_virtual_service_export_to
                } else {
                    &vs.export_to
                };
                exported_to(export, obj.namespace(), namespace).then_some((entry, obj, vs))
            })
    }

    /// The mesh VirtualService for `hostname` as seen from `namespace`: an
    /// exact host beats a wildcard; a VS in the proxy's namespace beats one
    /// elsewhere; then configuration order (Istio uses creation time).
    pub fn mesh_virtual_service<'a>(
        &'a self,
        hostname: &str,
        namespace: &'a str,
    ) -> Option<(&'a Object, &'a VirtualService)> {
        let mut best: Option<((u8, u8), &Object, &VirtualService)> = None;
        for (entry, obj, vs) in
            self.virtual_services_for_gateway(api::defaults::MESH_GATEWAY, namespace)
        {
            let Some(specificity) = entry
                .hosts
                .iter()
                .filter_map(|h| host_match_rank(h, hostname))
                .min()
            else {
                continue;
            };
            let rank = (specificity, u8::from(obj.namespace() != namespace));
            if best.as_ref().is_none_or(|(r, _, _)| rank < *r) {
                best = Some((rank, obj, vs));
            }
        }
        best.map(|(_, o, v)| (o, v))
    }

    /// A delegate VirtualService by name.
    pub fn delegate(&self, name: &str, namespace: &str) -> Option<(&Object, &VirtualService)> {
        let obj = &self.objects[*self.index.vs_by_key.get(&format!("{namespace}/{name}"))?];
        match &obj.spec {
            Spec::VirtualService(vs) => Some((obj, vs)),
            _ => None,
        }
    }

    /// The DestinationRule for `svc` as seen by `node` (Istio's precedence:
    /// proxy namespace, then the service's namespace, then the root one).
    pub fn destination_rule<'a>(
        &'a self,
        node: &ProxyNode,
        svc: &Service,
    ) -> Option<(&'a Object, &'a DestinationRule)> {
        let candidates: Vec<(u8, &Object, &DestinationRule)> = self
            .index
            .destination_rules
            .iter()
            .filter_map(|e| {
                let obj = &self.objects[e.object];
                let Spec::DestinationRule(dr) = &obj.spec else {
                    return None;
                };
                let rank = host_match_rank(&e.host, &svc.hostname)?;
                Some((rank, obj, dr))
            })
            .collect();
        let pick = |ns: &str, require_export: bool| {
            candidates
                .iter()
                .filter(|(_, obj, dr)| {
                    if obj.namespace() != ns {
                        return false;
                    }
                    if let Some(sel) = &dr.workload_selector {
                        // Workload-scoped rules only apply in their namespace.
                        return ns == node.namespace
                            && labels_match(&sel.match_labels, &node.labels);
                    }
                    !require_export || self.dr_exported(obj, dr, &node.namespace)
                })
                .min_by_key(|(rank, _, dr)| (*rank, u8::from(dr.workload_selector.is_none())))
                .map(|(_, o, d)| (*o, *d))
        };
        pick(&node.namespace, false)
            .or_else(|| pick(&svc.namespace, true))
            .or_else(|| pick(&self.mesh.root_namespace, true))
    }

    fn dr_exported(&self, obj: &Object, dr: &DestinationRule, namespace: &str) -> bool {
        let export = if dr.export_to.is_empty() {
            &self.mesh.default_destination_rule_export_to
        } else {
            &dr.export_to
        };
        exported_to(export, obj.namespace(), namespace)
    }

    /// PeerAuthentications, in configuration order.
    pub fn peer_authentications(&self) -> impl Iterator<Item = (&Object, &PeerAuthentication)> {
        self.index.peer_authentications.iter().filter_map(|&i| {
            let obj = &self.objects[i];
            match &obj.spec {
                Spec::PeerAuthentication(pa) => Some((obj, pa)),
                _ => None,
            }
        })
    }

    /// AuthorizationPolicies, in configuration order.
    pub fn authorization_policies(&self) -> impl Iterator<Item = (&Object, &AuthorizationPolicy)> {
        self.index.authorization_policies.iter().filter_map(|&i| {
            let obj = &self.objects[i];
            match &obj.spec {
                Spec::AuthorizationPolicy(ap) => Some((obj, ap)),
                _ => None,
            }
        })
    }

    /// RequestAuthentications, in configuration order.
    pub fn request_authentications(
        &self,
    ) -> impl Iterator<Item = (&Object, &RequestAuthentication)> {
        self.index.request_authentications.iter().filter_map(|&i| {
            let obj = &self.objects[i];
            match &obj.spec {
                Spec::RequestAuthentication(ra) => Some((obj, ra)),
                _ => None,
            }
        })
    }

    /// The ServiceEntry `namespace/name`, if configured.
    pub fn service_entry(&self, key: &str) -> Option<&ServiceEntry> {
        match &self.objects[*self.index.service_entries.get(key)?].spec {
            Spec::ServiceEntry(se) => Some(se),
            _ => None,
        }
    }

    /// Gateways whose selector matches `labels`.
    pub fn gateways_for<'a>(
        &'a self,
        labels: &'a BTreeMap<String, String>,
    ) -> impl Iterator<Item = (&'a Object, &'a Gateway)> {
        self.index.gateways.iter().filter_map(move |&i| {
            let obj = &self.objects[i];
            match &obj.spec {
                Spec::Gateway(gw) if labels_match(&gw.selector, labels) => Some((obj, gw)),
                _ => None,
            }
        })
    }
}

/// `exportTo` semantics: empty or `*` = everywhere, `.` = own namespace,
/// `~` = nowhere, else a list of namespaces.
pub(crate) fn exported_to(export: &[String], owner_ns: &str, viewer_ns: &str) -> bool {
    if export.is_empty() {
        return true;
    }
    export.iter().any(|e| match e.as_str() {
        "*" => true,
        "." => owner_ns == viewer_ns,
        "~" => false,
        ns => ns == viewer_ns,
    })
}

/// `selector ⊆ labels`.
pub(crate) fn labels_match(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// How well a configured host (possibly a wildcard) matches `hostname`:
/// `Some(0)` exact, `Some(1)` wildcard, `None` no match.
pub(crate) fn host_match_rank(pattern: &str, hostname: &str) -> Option<u8> {
    if pattern == hostname {
        Some(0)
    } else if wildcard_match(pattern, hostname) {
        Some(1)
    } else {
        None
    }
}

/// `*` matches anything; `*.example.com` matches any name ending in
/// `.example.com`.
pub(crate) fn wildcard_match(pattern: &str, hostname: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => hostname.ends_with(suffix) && hostname.len() > suffix.len(),
        None => pattern == hostname,
    }
}

/// `name` or `ns/name` of a gateway reference → `ns/name` (`mesh` kept).
pub(crate) fn gateway_key(gateway: &str, namespace: &str) -> String {
    if gateway == api::defaults::MESH_GATEWAY || gateway.contains('/') {
        gateway.to_owned()
    } else {
        format!("{namespace}/{gateway}")
    }
}

/// Which ports of `svc` the Sidecar's egress listeners import: `None` when
/// the service is not imported at all, `Some(None)`-like `Some(vec)` when
/// only listed ports are, `Some(None)` for all ports.
fn egress_ports(sc: &Sidecar, svc: &Service, proxy_ns: &str) -> Option<Option<Vec<u32>>> {
    if sc.egress.is_empty() {
        return Some(None); // no egress section: everything visible
    }
    let mut ports = Vec::new();
    for listener in &sc.egress {
        let imported = listener.hosts.iter().any(|entry| {
            let (ns, host) = entry.split_once('/').unwrap_or(("*", entry.as_str()));
            let ns_ok = match ns {
                "*" => true,
                "." => svc.namespace == proxy_ns,
                "~" => false,
                ns => ns == svc.namespace,
            };
            ns_ok
                && (wildcard_match(host, &svc.hostname)
                    || svc.aliases.iter().any(|a| wildcard_match(host, a)))
        });
        if !imported {
            continue;
        }
        match &listener.port {
            Some(p) if p.number != 0 => ports.push(p.number),
            _ => return Some(None),
        }
    }
    (!ports.is_empty()).then_some(Some(ports))
}
