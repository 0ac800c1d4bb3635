//! Gateway (router) output: for every `Gateway` whose selector matches the
//! proxy's labels, a listener per server port (`0.0.0.0_<port>`, bound to
//! `0.0.0.0` in capture mode, `127.0.0.1` in local mode) routed by
//! `http.<port>`: one virtual host per host that a bound VirtualService and
//! a server both name.

use std::collections::BTreeMap;

use api::networking::gateway::{Server, ServerTlsMode};
use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::FilterChain;
use envoy_types::pb::envoy::config::route::v3::{Route, VirtualHost, virtual_host};

use crate::cluster;
use crate::context::{PushContext, wildcard_match};
use crate::node::ProxyNode;
use crate::route::{RouteScope, dedup_domains, virtual_service_routes};
use crate::sidecar::{direct_vhost, hcm_filter, listener, outbound_hcm, route_config};
use crate::{Diagnostic, Generated, pb};

/// The route table name of a gateway HTTP port.
pub fn route_name(port: u32) -> String {
    format!("http.{port}")
}

pub(crate) fn generate(node: &ProxyNode, ctx: &PushContext) -> Generated {
    let mut out = Generated::default();
    let services: Vec<_> = ctx
        .visible_services(&node.namespace)
        .map(|s| (s, None))
        .collect();
    cluster::add_outbound(node, ctx, &services, &mut out);
    out.clusters.push(cluster::blackhole(ctx));

    // Servers of every selected Gateway, grouped by port.
    let mut by_port: BTreeMap<u32, Vec<(String, &str, &Server)>> = BTreeMap::new();
    for (obj, gw) in ctx.gateways_for(&node.labels) {
        for (i, server) in gw.servers.iter().enumerate() {
            let Some(port) = server.port.as_ref().filter(|p| p.number != 0) else {
                continue;
            };
            let origin = format!("Gateway {}", obj.key());
            let protocol = port.protocol.to_ascii_uppercase();
            let tls_mode = server.tls.as_ref().map(|t| t.mode());
            let http = matches!(protocol.as_str(), "HTTP" | "HTTP2" | "GRPC");
            let https_terminated = protocol == "HTTPS"
                && matches!(
                    tls_mode,
                    Some(ServerTlsMode::Simple | ServerTlsMode::Mutual)
                );
            if https_terminated || !http {
                // TODO(security): TLS servers — SIMPLE/MUTUAL (certificate files
                // or credentialName via SDS) and PASSTHROUGH (SNI filter chains
                // with tls_inspector + tcp_proxy) — come with the security work.
                out.diagnostics.push(Diagnostic::new(
                    origin,
                    format!("spec.servers[{i}]"),
                    format!(
                        "{protocol} server on port {} is not translated yet (TLS/TCP gateway servers are TODO)",
                        port.number
                    ),
                ));
                continue;
            }
            by_port
                .entry(port.number)
                .or_default()
                .push((obj.key(), obj.namespace(), server));
        }
    }

    let sec = crate::security::WorkloadSecurity::for_node(node, ctx, &mut out.diagnostics);
    let bind = if node.is_local() {
        "127.0.0.1"
    } else {
        "0.0.0.0"
    };
    for (port, servers) in by_port {
        let mut vhosts = gateway_vhosts(node, ctx, port, &servers, &mut out.diagnostics);
        if vhosts.is_empty() {
            vhosts.push(direct_vhost(&format!("blackhole:{port}"), 404, ""));
        }
        let mut rc = route_config(&route_name(port), vhosts);
        // Clients put any port in Host behind a load balancer; Istio's
        // gateways match the host name only.
        rc.ignore_port_in_host_matching = true;
        out.routes.push(rc);
        let mut hcm = outbound_hcm(&format!("outbound_0.0.0.0_{port}"), &route_name(port));
        hcm.use_remote_address = Some(pb::boolv(true));
        // RequestAuthentication and AuthorizationPolicy selecting the
        // gateway apply on its listeners, as in Istio.
        let mut filters = sec.http_filters.clone();
        filters.append(&mut hcm.http_filters);
        hcm.http_filters = filters;
        out.listeners.push(listener(
            &format!("0.0.0.0_{port}"),
            bind,
            port,
            TrafficDirection::Outbound,
            vec![FilterChain {
                filters: vec![hcm_filter(hcm)],
                ..Default::default()
            }],
        ));
    }
    out
}

/// Virtual hosts of one port: for each server, each VirtualService bound to
/// its gateway, each host in both; routes of VirtualServices sharing a host
/// are concatenated in configuration order.
fn gateway_vhosts(
    node: &ProxyNode,
    ctx: &PushContext,
    port: u32,
    servers: &[(String, &str, &Server)],
    diags: &mut Vec<Diagnostic>,
) -> Vec<VirtualHost> {
    let mut hosts: Vec<(String, Vec<Route>, bool)> = Vec::new();
    for (gw_key, gw_ns, server) in servers {
        let https_redirect = server
            .tls
            .as_ref()
            .is_some_and(|t| t.https_redirect == Some(true));
        let scope = RouteScope {
            ctx,
            node,
            gateway: gw_key,
            port,
        };
        for (entry, obj, vs) in ctx.virtual_services_for_gateway(gw_key, gw_ns) {
            let mut domains = Vec::new();
            for server_host in &server.hosts {
                let (ns, host) = server_host.split_once('/').unwrap_or(("*", server_host));
                let ns_ok = match ns {
                    "*" => true,
                    "." => obj.namespace() == *gw_ns,
                    ns => ns == obj.namespace(),
                };
                if !ns_ok {
                    continue;
                }
                domains.extend(entry.hosts.iter().filter_map(|h| intersect(host, h)));
            }
            if domains.is_empty() {
                continue;
            }
            let routes = virtual_service_routes(scope, obj, vs, diags);
            for d in domains {
                match hosts.iter_mut().find(|(h, _, _)| *h == d) {
                    Some((_, r, redirect)) => {
                        r.extend(routes.iter().cloned());
                        *redirect |= https_redirect;
                    }
                    None => hosts.push((d, routes.clone(), https_redirect)),
                }
            }
        }
    }
    let mut vhosts: Vec<VirtualHost> = hosts
        .into_iter()
        .map(|(host, routes, redirect)| VirtualHost {
            name: format!("{host}:{port}"),
            domains: vec![host],
            routes,
            require_tls: if redirect {
                virtual_host::TlsRequirementType::All as i32
            } else {
                0
            },
            ..Default::default()
        })
        .collect();
    dedup_domains(&mut vhosts);
    vhosts
}

/// The more specific of two hosts when one covers the other (`*`,
/// `*.example.com` wildcards), else `None`.
pub fn intersect(a: &str, b: &str) -> Option<String> {
    if a == b || wildcard_match(a, b) {
        Some(b.to_owned())
    } else if wildcard_match(b, a) {
        Some(a.to_owned())
    } else {
        match (a.strip_prefix('*'), b.strip_prefix('*')) {
            (Some(sa), Some(sb)) if sa.ends_with(sb) => Some(a.to_owned()),
            (Some(sa), Some(sb)) if sb.ends_with(sa) => Some(b.to_owned()),
            _ => None,
        }
    }
}
