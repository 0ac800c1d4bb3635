//! Gateway servers at L4: VirtualService `tcp` routes (TCP servers, and
//! TLS servers terminating TLS), `tls` routes by SNI (PASSTHROUGH), and
//! AUTO_PASSTHROUGH's chain per service port.

use api::networking::gateway::Server;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain};

use super::{ServerRef, intersect, sni_match};
use crate::Diagnostic;
use crate::cluster;
use crate::context::{PushContext, wildcard_match};
use crate::node::ProxyNode;
use crate::route::RouteScope;
use crate::security::WorkloadSecurity;
use crate::tcp::{self, L4Predicates};

/// Whether a VirtualService's hosts meet the server's (namespace-scoped)
/// hosts.
fn vs_matches_server(server: &Server, gw_ns: &str, vs_ns: &str, vs_hosts: &[String]) -> bool {
    server.hosts.iter().any(|server_host| {
        let (ns, host) = server_host.split_once('/').unwrap_or(("*", server_host));
        let ns_ok = match ns {
            "*" => true,
            "." => vs_ns == gw_ns,
            ns => ns == vs_ns,
        };
        ns_ok && vs_hosts.iter().any(|h| intersect(host, h).is_some())
    })
}

/// The `tcp_proxy` of the first bound VirtualService `tcp` route whose
/// match applies to this server.
pub(super) fn tcp_route_filter(
    node: &ProxyNode,
    ctx: &PushContext,
    port: u32,
    s: &ServerRef<'_>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Filter> {
    let scope = RouteScope {
        ctx,
        node,
        gateway: &s.gw_key,
        port,
    };
    for (entry, obj, vs) in ctx.virtual_services_for_gateway(&s.gw_key, s.gw_ns) {
        if !vs_matches_server(s.server, s.gw_ns, obj.namespace(), &entry.hosts) {
            continue;
        }
        for (i, route) in vs.tcp.iter().enumerate() {
            let applies = route.matches.is_empty()
                || route.matches.iter().any(|m| {
                    tcp::l4_applies(
                        scope,
                        obj.namespace(),
                        &L4Predicates {
                            port: m.port,
                            source_labels: &m.source_labels,
                            source_namespace: m.source_namespace.as_deref(),
                            gateways: &m.gateways,
                        },
                    )
                });
            if applies && !route.route.is_empty() {
                return tcp::route_filter(
                    scope,
                    obj,
                    &route.route,
                    &format!("spec.tcp[{i}]"),
                    diags,
                );
            }
        }
    }
    None
}

/// PASSTHROUGH: a chain per bound VirtualService `tls` match, on its SNI.
pub(super) fn passthrough_chains(
    node: &ProxyNode,
    ctx: &PushContext,
    port: u32,
    s: &ServerRef<'_>,
    sec: &WorkloadSecurity,
    diags: &mut Vec<Diagnostic>,
) -> Vec<FilterChain> {
    let scope = RouteScope {
        ctx,
        node,
        gateway: &s.gw_key,
        port,
    };
    let mut chains = Vec::new();
    for (entry, obj, vs) in ctx.virtual_services_for_gateway(&s.gw_key, s.gw_ns) {
        if !vs_matches_server(s.server, s.gw_ns, obj.namespace(), &entry.hosts) {
            continue;
        }
        for (i, route) in vs.tls.iter().enumerate() {
            if route.route.is_empty() {
                continue;
            }
            let field = format!("spec.tls[{i}]");
            for m in &route.matches {
                let pred = L4Predicates {
                    port: m.port,
                    source_labels: &m.source_labels,
                    source_namespace: m.source_namespace.as_deref(),
                    gateways: &m.gateways,
                };
                if !tcp::l4_applies(scope, obj.namespace(), &pred) {
                    continue;
                }
                let Some(filter) = tcp::route_filter(scope, obj, &route.route, &field, diags)
                else {
                    continue;
                };
                let mut filters = sec.tcp_filters.clone();
                filters.push(filter);
                chains.push(FilterChain {
                    filter_chain_match: sni_match(&tcp::server_names(&m.sni_hosts)),
                    filters,
                    ..Default::default()
                });
            }
        }
    }
    chains
}

/// AUTO_PASSTHROUGH: a chain per visible service port whose host the
/// server exposes, on the SNI Istio's clients send
/// (`outbound_.<port>_._.<host>`), to the service's cluster.
pub(super) fn auto_passthrough_chains(
    ctx: &PushContext,
    node: &ProxyNode,
    s: &ServerRef<'_>,
    sec: &WorkloadSecurity,
) -> Vec<FilterChain> {
    let mut chains = Vec::new();
    for svc in ctx.visible_services(&node.namespace) {
        let exposed = s.server.hosts.iter().any(|h| {
            let host = h.split_once('/').map_or(h.as_str(), |(_, h)| h);
            host == svc.hostname || wildcard_match(host, &svc.hostname)
        });
        if !exposed {
            continue;
        }
        for p in &svc.ports {
            let cluster_name = cluster::outbound_name(p.number, "", &svc.hostname);
            let mut filters = sec.tcp_filters.clone();
            filters.push(tcp::tcp_proxy_to(&cluster_name, &cluster_name));
            chains.push(FilterChain {
                filter_chain_match: sni_match(&[format!(
                    "outbound_.{}_._.{}",
                    p.number, svc.hostname
                )]),
                filters,
                ..Default::default()
            });
        }
    }
    chains
}
