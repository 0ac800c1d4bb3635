//! Gateway (router) output: for every `Gateway` whose selector matches the
//! proxy's labels, a listener per server port and `bind` (`0.0.0.0_<port>`,
//! bound to `0.0.0.0` in capture mode, `127.0.0.1` in local mode; a
//! server's `bind` address instead, in the name too, and appended to its
//! route table names) with, as istiod builds them (`gateway.go`):
//!
//! - plain HTTP servers: one chain routed by `http.<port>` (one virtual
//!   host per host that a bound VirtualService and a server both name;
//!   `httpsRedirect` makes the host answer 301 to `https`);
//! - HTTPS servers terminating TLS (SIMPLE, MUTUAL, OPTIONAL_MUTUAL,
//!   ISTIO_MUTUAL): a chain per server matching its hosts by SNI, with the
//!   server's TLS context ([`tls`]) and its own route table
//!   `https.<port>.<port name>.<gateway>.<namespace>`;
//! - PASSTHROUGH servers: a `tcp_proxy` chain per VirtualService `tls`
//!   match bound to the gateway, matching its `sniHosts`;
//!   AUTO_PASSTHROUGH: a chain per service port matching Istio's SNI
//!   `outbound_.<port>_._.<host>`;
//! - TCP servers (and TLS servers terminating TLS): the first bound
//!   VirtualService `tcp` route that matches, behind the TLS context if any.
//!
//! A server whose credential cannot be found is left out (with a
//! diagnostic) and the others are served.

mod l4;
mod tls;

use std::collections::BTreeMap;

use api::networking::gateway::{Server, ServerTlsMode};
use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, FilterChainMatch};
use envoy_types::pb::envoy::config::route::v3::{Route, VirtualHost, virtual_host};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager;

use crate::cluster;
use crate::context::{PushContext, wildcard_match};
use crate::node::ProxyNode;
use crate::route::{RouteScope, dedup_domains, virtual_service_routes};
use crate::security::WorkloadSecurity;
use crate::security::tls::downstream_socket;
use crate::sidecar::{
    add_tls_inspector, direct_vhost, hcm_filter, listener, outbound_hcm, route_config,
};
use crate::tcp;
use crate::{Diagnostic, Generated, pb};

pub use tls::{CA_SUFFIX, KUBERNETES_PREFIX};

/// The route table name of a gateway's plain HTTP servers on `port`
/// (`http.<port>`, `.<bind>` appended for servers with a `bind`).
pub fn route_name(port: u32, bind: &str) -> String {
    if bind.is_empty() {
        format!("http.{port}")
    } else {
        format!("http.{port}.{bind}")
    }
}

/// The route table name of an HTTPS server terminating TLS:
/// `https.<port>.<port name>.<gateway name>.<gateway namespace>`.
pub fn https_route_name(
    port: u32,
    port_name: &str,
    gateway: &str,
    namespace: &str,
    bind: &str,
) -> String {
    if bind.is_empty() {
        format!("https.{port}.{port_name}.{gateway}.{namespace}")
    } else {
        format!("https.{port}.{port_name}.{gateway}.{namespace}.{bind}")
    }
}

/// One server of a selected Gateway.
struct ServerRef<'a> {
    /// `namespace/name` of the Gateway.
    gw_key: String,
    gw_name: &'a str,
    gw_ns: &'a str,
    /// `spec.servers[i]`.
    field: String,
    server: &'a Server,
}

impl ServerRef<'_> {
    fn origin(&self) -> String {
        format!("Gateway {}", self.gw_key)
    }
}

/// How a server's traffic is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerKind {
    /// HTTP, HTTP2, GRPC (and HTTPS without TLS settings, as plain HTTP).
    Http,
    /// HTTPS terminated here: HTTP routes behind TLS.
    Https,
    /// TLS passed through by SNI (VirtualService `tls` routes).
    Passthrough,
    AutoPassthrough,
    /// TCP routes, behind TLS when `terminate`.
    Tcp {
        terminate: bool,
    },
}

fn classify(server: &Server, protocol: &str) -> ServerKind {
    let mode = server.tls.as_ref().map(|t| t.mode());
    let http = matches!(protocol, "HTTP" | "HTTP2" | "GRPC" | "GRPC-WEB");
    match mode {
        _ if http => ServerKind::Http,
        Some(ServerTlsMode::Passthrough) => ServerKind::Passthrough,
        Some(ServerTlsMode::AutoPassthrough) => ServerKind::AutoPassthrough,
        Some(_) if protocol == "HTTPS" => ServerKind::Https,
        Some(_) => ServerKind::Tcp { terminate: true },
        None if protocol == "HTTPS" => ServerKind::Http,
        None => ServerKind::Tcp { terminate: false },
    }
}

pub(crate) fn generate(node: &ProxyNode, ctx: &PushContext) -> Generated {
    let mut out = Generated::default();
    let services: Vec<_> = ctx
        .visible_services(&node.namespace)
        .map(|s| (s, None))
        .collect();
    cluster::add_outbound(node, ctx, &services, &mut out);
    out.clusters.push(cluster::blackhole(ctx));

    // Servers of every selected Gateway, grouped by port and `bind` (one
    // listener each, `<bind>_<port>`, as istiod names them).
    let mut by_port: BTreeMap<(u32, String), Vec<ServerRef<'_>>> = BTreeMap::new();
    for (obj, gw) in ctx.gateways_for(&node.labels) {
        for (i, server) in gw.servers.iter().enumerate() {
            let Some(port) = server.port.as_ref().filter(|p| p.number != 0) else {
                continue;
            };
            let bind = server.bind.clone().unwrap_or_default();
            by_port
                .entry((port.number, bind))
                .or_default()
                .push(ServerRef {
                    gw_key: obj.key(),
                    gw_name: obj.name(),
                    gw_ns: obj.namespace(),
                    field: format!("spec.servers[{i}]"),
                    server,
                });
        }
    }

    let sec = WorkloadSecurity::for_node(node, ctx, &mut out.diagnostics);
    let wildcard = if node.is_local() {
        "127.0.0.1"
    } else {
        "0.0.0.0"
    };
    let mut secrets = tls::SecretSet::default();
    for ((port, bind), servers) in by_port {
        let mut chains = Vec::new();
        let kinds: Vec<ServerKind> = servers
            .iter()
            .map(|s| {
                let protocol = s
                    .server
                    .port
                    .as_ref()
                    .map(|p| p.protocol.to_ascii_uppercase())
                    .unwrap_or_default();
                classify(s.server, &protocol)
            })
            .collect();
        // HTTP servers share one chain; Istio rejects mixing them with
        // other kinds on a port, so do they here (the HTTP ones win).
        let http: Vec<&ServerRef<'_>> = servers
            .iter()
            .zip(&kinds)
            .filter(|(_, k)| **k == ServerKind::Http)
            .map(|(s, _)| s)
            .collect();
        if !http.is_empty() {
            for (s, _) in servers
                .iter()
                .zip(&kinds)
                .filter(|(_, k)| **k != ServerKind::Http)
            {
                out.diagnostics.push(Diagnostic::new(
                    s.origin(),
                    &s.field,
                    format!(
                        "port {port} already serves plain HTTP; a TLS or TCP server cannot share it"
                    ),
                ));
            }
            let mut vhosts = gateway_vhosts(node, ctx, port, &http, &mut out.diagnostics);
            if vhosts.is_empty() {
                vhosts.push(direct_vhost(&format!("blackhole:{port}"), 404, ""));
            }
            out.routes
                .push(gateway_route_config(&route_name(port, &bind), vhosts));
            chains.push(FilterChain {
                filters: vec![gateway_hcm(port, &route_name(port, &bind), &sec)],
                ..Default::default()
            });
        } else {
            for (s, kind) in servers.iter().zip(&kinds) {
                server_chains(
                    node,
                    ctx,
                    port,
                    s,
                    *kind,
                    &sec,
                    &mut secrets,
                    &mut chains,
                    &mut out,
                );
            }
        }
        dedup_chain_matches(port, &mut chains, &mut out.diagnostics);
        if chains.is_empty() {
            continue;
        }
        let address = if bind.is_empty() { wildcard } else { &bind };
        let name = if bind.is_empty() { "0.0.0.0" } else { &bind };
        let mut l = listener(
            &format!("{name}_{port}"),
            address,
            port,
            TrafficDirection::Outbound,
            chains,
        );
        add_tls_inspector(&mut l);
        out.listeners.push(l);
    }
    tls::upstream_secrets(
        &out.clusters,
        &node.namespace,
        ctx.registry(),
        &mut secrets,
        &mut out.diagnostics,
    );
    out.secrets.extend(secrets.secrets.into_values());
    out
}

/// The chains of one non-HTTP server.
#[allow(clippy::too_many_arguments)]
fn server_chains(
    node: &ProxyNode,
    ctx: &PushContext,
    port: u32,
    s: &ServerRef<'_>,
    kind: ServerKind,
    sec: &WorkloadSecurity,
    secrets: &mut tls::SecretSet,
    chains: &mut Vec<FilterChain>,
    out: &mut Generated,
) {
    let origin = s.origin();
    let sni = tcp::server_names(&s.server.hosts);
    // TLS contexts are built against a scratch set, merged only when the
    // server is served: a left-out server must not ask for its secrets.
    let context = |tcp_server: bool, out: &mut Generated| {
        let settings = s.server.tls.as_ref()?;
        let mut scratch = tls::SecretSet::default();
        match tls::server_context(
            settings,
            &node.namespace,
            ctx.registry(),
            tcp_server,
            &mut scratch,
        ) {
            Ok(c) => Some((c, scratch)),
            Err(why) => {
                out.diagnostics.push(tls::missing(&origin, &s.field, &why));
                None
            }
        }
    };
    match kind {
        ServerKind::Http => {}
        ServerKind::Https => {
            let Some((dtc, scratch)) = context(false, out) else {
                return;
            };
            secrets.secrets.extend(scratch.secrets);
            let port_name = s.server.port.as_ref().map_or("", |p| p.name.as_str());
            let rname = https_route_name(
                port,
                port_name,
                s.gw_name,
                s.gw_ns,
                s.server.bind.as_deref().unwrap_or_default(),
            );
            let mut vhosts = gateway_vhosts(node, ctx, port, &[s], &mut out.diagnostics);
            if vhosts.is_empty() {
                vhosts.push(direct_vhost(&format!("blackhole:{port}"), 404, ""));
            }
            out.routes.push(gateway_route_config(&rname, vhosts));
            chains.push(FilterChain {
                filter_chain_match: sni_match(&sni),
                filters: vec![gateway_hcm(port, &rname, sec)],
                transport_socket: Some(downstream_socket(&dtc)),
                ..Default::default()
            });
        }
        ServerKind::Tcp { terminate } => {
            let Some(filter) = l4::tcp_route_filter(node, ctx, port, s, &mut out.diagnostics)
            else {
                out.diagnostics.push(Diagnostic::new(
                    &origin,
                    &s.field,
                    format!("no VirtualService tcp route bound to this server (port {port}); nothing is served"),
                ));
                return;
            };
            let mut filters = sec.tcp_filters.clone();
            filters.push(filter);
            let (filter_chain_match, transport_socket) = if terminate {
                let Some((dtc, scratch)) = context(true, out) else {
                    return;
                };
                secrets.secrets.extend(scratch.secrets);
                (sni_match(&sni), Some(downstream_socket(&dtc)))
            } else {
                (None, None)
            };
            chains.push(FilterChain {
                filter_chain_match,
                filters,
                transport_socket,
                ..Default::default()
            });
        }
        ServerKind::Passthrough => {
            chains.extend(l4::passthrough_chains(
                node,
                ctx,
                port,
                s,
                sec,
                &mut out.diagnostics,
            ));
        }
        ServerKind::AutoPassthrough => {
            chains.extend(l4::auto_passthrough_chains(ctx, node, s, sec));
        }
    }
}

fn sni_match(names: &[String]) -> Option<FilterChainMatch> {
    (!names.is_empty()).then(|| FilterChainMatch {
        server_names: names.to_vec(),
        ..Default::default()
    })
}

/// Envoy rejects a listener with two chains of the same match: the later
/// one is dropped with a diagnostic (Istio's duplicate SNI check).
fn dedup_chain_matches(port: u32, chains: &mut Vec<FilterChain>, diags: &mut Vec<Diagnostic>) {
    let mut seen: Vec<Option<FilterChainMatch>> = Vec::new();
    chains.retain(|c| {
        if seen.contains(&c.filter_chain_match) {
            diags.push(Diagnostic::new(
                "",
                "",
                format!(
                    "gateway port {port}: two servers or routes match the same connections ({:?}); the later one is left out",
                    c.filter_chain_match
                        .as_ref()
                        .map(|m| m.server_names.clone())
                        .unwrap_or_default()
                ),
            ));
            false
        } else {
            seen.push(c.filter_chain_match.clone());
            true
        }
    });
}

fn gateway_route_config(
    name: &str,
    vhosts: Vec<VirtualHost>,
) -> envoy_types::pb::envoy::config::route::v3::RouteConfiguration {
    let mut rc = route_config(name, vhosts);
    // Clients put any port in Host behind a load balancer; Istio's
    // gateways match the host name only.
    rc.ignore_port_in_host_matching = true;
    rc
}

/// The gateway's HTTP connection manager for route table `rds`, behind the
/// gateway workload's RequestAuthentication and AuthorizationPolicy filters.
fn gateway_hcm(port: u32, rds: &str, sec: &WorkloadSecurity) -> Filter {
    let mut hcm = outbound_hcm(&format!("outbound_0.0.0.0_{port}"), rds);
    hcm.use_remote_address = Some(pb::boolv(true));
    // Istio's gateways pass client certificate details on (mutual TLS).
    hcm.forward_client_cert_details =
        http_connection_manager::ForwardClientCertDetails::SanitizeSet as i32;
    hcm.set_current_client_cert_details =
        Some(http_connection_manager::SetCurrentClientCertDetails {
            subject: Some(pb::boolv(true)),
            cert: true,
            dns: true,
            uri: true,
            ..Default::default()
        });
    let mut filters = sec.http_filters.clone();
    filters.append(&mut hcm.http_filters);
    hcm.http_filters = filters;
    hcm_filter(hcm)
}

/// Virtual hosts of one port: for each server, each VirtualService bound to
/// its gateway, each host in both; routes of VirtualServices sharing a host
/// are concatenated in configuration order.
fn gateway_vhosts(
    node: &ProxyNode,
    ctx: &PushContext,
    port: u32,
    servers: &[&ServerRef<'_>],
    diags: &mut Vec<Diagnostic>,
) -> Vec<VirtualHost> {
    let mut hosts: Vec<(String, Vec<Route>, bool)> = Vec::new();
    for s in servers {
        let (gw_key, gw_ns, server) = (&s.gw_key, s.gw_ns, s.server);
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
                    "." => obj.namespace() == gw_ns,
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
