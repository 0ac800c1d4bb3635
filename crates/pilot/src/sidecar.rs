//! Sidecar listeners and outbound route tables.
//!
//! **Local mode** (Trellis, no capture; node metadata `TRELLIS_*_PORT(S)`):
//! - `outbound_http` on `127.0.0.1:<TRELLIS_OUTBOUND_PORT>`: an HTTP proxy
//!   (absolute-form and origin-form requests) routed by `outbound-http`, one
//!   virtual host per visible (HTTP service, port), domains `<name>:<port>`
//!   (bare `<name>` too for port 80);
//! - `inbound_<targetPort>` on `127.0.0.1:<TRELLIS_INBOUND_PORTS[targetPort]>`
//!   to `inbound|<targetPort>||`, a static cluster to the application on
//!   `127.0.0.1:<TRELLIS_APP_PORTS[targetPort]>`;
//! - `outbound_tcp_<port>_<host>` on `127.0.0.1:<local port>` for each TCP
//!   service port `trellis up` gave this workload a local port for
//!   (`Registry::local_tcp_outbound`), routed like a capture-mode TCP
//!   listener.
//!
//! **Capture mode** (Istio's layout): `virtualOutbound` (15001, original
//! destination) handing off to per-port `0.0.0.0_<port>` listeners (route
//! table `<port>`; TCP ports: the service's VirtualService `tls`/`tcp`
//! routes, see module `tcp`), and `virtualInbound` (15006) with filter
//! chains per served target port and passthrough chains for the other
//! ports.
//!
//! **Inbound security** (both modes, see [`crate::security`]): each inbound
//! port gets Istio's filter chains for its PeerAuthentication mode —
//! STRICT: mTLS only; PERMISSIVE (the default): mTLS for clients offering
//! an Istio ALPN plus plaintext; DISABLE: plaintext — with the
//! `tls_inspector` listener filter when a chain matches on TLS. HTTP chains
//! run CUSTOM (RBAC + ext_authz), jwt_authn and the AUDIT/DENY/ALLOW RBAC
//! filters before fault/cors/router; TCP chains run the network RBAC (and
//! gRPC ext_authz) filters before `tcp_proxy`.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter, filter, listener_filter,
};
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route,
    route_action, route_match,
};
use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use registry::{Protocol, Service};

use crate::cluster::{self, BLACKHOLE_CLUSTER, INBOUND_PASSTHROUGH_CLUSTER, PASSTHROUGH_CLUSTER};
use crate::context::PushContext;
use crate::node::{LocalPorts, ProxyNode};
use crate::route::{RouteScope, dedup_domains, default_route, virtual_service_routes};
use crate::security::{WorkloadSecurity, tls};
use crate::{Diagnostic, Generated, pb, tcp};

/// The route table of the local-mode outbound listener.
pub const OUTBOUND_HTTP_ROUTE: &str = "outbound-http";
/// The local-mode outbound listener.
pub const OUTBOUND_HTTP_LISTENER: &str = "outbound_http";
pub const VIRTUAL_OUTBOUND_PORT: u32 = 15001;
pub const VIRTUAL_INBOUND_PORT: u32 = 15006;
const HCM: &str = "envoy.filters.network.http_connection_manager";
const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";
const TLS_INSPECTOR: &str = "envoy.filters.listener.tls_inspector";

pub(crate) fn generate(node: &ProxyNode, ctx: &PushContext) -> Generated {
    let mut out = Generated::default();
    let services = ctx.sidecar_services(node);
    cluster::add_outbound(node, ctx, &services, &mut out);
    out.clusters.push(cluster::blackhole(ctx));
    out.clusters
        .push(cluster::passthrough(ctx, PASSTHROUGH_CLUSTER, None));
    match &node.local {
        Some(local) => local_mode(node, ctx, local, &services, &mut out),
        None => capture_mode(node, ctx, &services, &mut out),
    }
    out
}

fn local_mode(
    node: &ProxyNode,
    ctx: &PushContext,
    local: &LocalPorts,
    services: &[(&Service, Option<Vec<u32>>)],
    out: &mut Generated,
) {
    if let Some(port) = local.outbound {
        out.listeners.push(listener(
            OUTBOUND_HTTP_LISTENER,
            "127.0.0.1",
            port,
            TrafficDirection::Outbound,
            vec![FilterChain {
                filters: vec![hcm_filter(outbound_hcm(
                    "outbound_0.0.0.0_http",
                    OUTBOUND_HTTP_ROUTE,
                ))],
                ..Default::default()
            }],
        ));
    }
    let mut vhosts = outbound_vhosts(node, ctx, services, None, &mut out.diagnostics);
    local_tcp_listeners(node, ctx, services, out);
    // Without capture there is no original destination to pass unknown
    // hosts through to (PassthroughCluster would need one), so ALLOW_ANY
    // answers 404 for hosts outside the registry; REGISTRY_ONLY answers 502
    // as Istio's `block_all` does.
    vhosts.push(if ctx.allow_any(node) {
        direct_vhost(
            "allow_any",
            404,
            "trellis: no service for this host (local mode)",
        )
    } else {
        direct_vhost("block_all", 502, "")
    });
    out.routes.push(route_config(OUTBOUND_HTTP_ROUTE, vhosts));

    let served = served_ports(node, ctx);
    let sec = WorkloadSecurity::for_node(node, ctx, &mut out.diagnostics);
    for (&target, &listen) in &local.inbound {
        let protocol = served
            .get(&target)
            .cloned()
            .or_else(|| namespace_protocol(ctx, &node.namespace, target))
            .unwrap_or(Protocol::Http);
        let app = match local.app.get(&target) {
            Some(&p) => p,
            None => {
                out.diagnostics.push(Diagnostic::new(
                    "",
                    "",
                    format!("node {}: no TRELLIS_APP_PORTS entry for target port {target}; using {target}", node.id),
                ));
                target
            }
        };
        let chains = inbound_chains(ctx, &sec, target, &protocol, false);
        let mut l = listener(
            &format!("inbound_{target}"),
            "127.0.0.1",
            listen,
            TrafficDirection::Inbound,
            chains,
        );
        add_tls_inspector(&mut l);
        out.listeners.push(l);
        out.clusters.push(cluster::inbound_static(
            ctx,
            target,
            app,
            matches!(protocol, Protocol::Http2 | Protocol::Grpc),
        ));
    }
}

/// Local mode has no original destination to route TCP by: the sidecar
/// gets one listener per TCP service port (`trellis up` assigns the ports
/// and tells the application, see `registry::local::TcpUpstream`), each
/// routed like a capture-mode `0.0.0.0_<port>` listener.
fn local_tcp_listeners(
    node: &ProxyNode,
    ctx: &PushContext,
    services: &[(&Service, Option<Vec<u32>>)],
    out: &mut Generated,
) {
    let key = format!("{}/{}", node.namespace, node.workload_name);
    let assigned = ctx.registry().local_tcp_outbound.get(&key);
    let mut unreachable = Vec::new();
    for (svc, ports) in services {
        for p in &svc.ports {
            if p.protocol.is_http() || ports.as_ref().is_some_and(|l| !l.contains(&p.number)) {
                continue;
            }
            let Some(&(_, _, local)) = assigned
                .into_iter()
                .flatten()
                .find(|(h, sp, _)| *h == svc.hostname && *sp == p.number)
            else {
                unreachable.push(format!("{}:{}", svc.hostname, p.number));
                continue;
            };
            let scope = RouteScope {
                ctx,
                node,
                gateway: api::defaults::MESH_GATEWAY,
                port: p.number,
            };
            let tls_service = matches!(p.protocol, Protocol::Tls | Protocol::Https);
            let chains =
                tcp::service_chains(scope, &svc.hostname, tls_service, &mut out.diagnostics);
            let mut l = listener(
                &format!("outbound_tcp_{}_{}", p.number, svc.hostname),
                "127.0.0.1",
                u32::from(local),
                TrafficDirection::Outbound,
                chains,
            );
            add_tls_inspector(&mut l);
            out.listeners.push(l);
        }
    }
    if !unreachable.is_empty() {
        out.diagnostics.push(Diagnostic::new(
            "",
            "",
            format!(
                "local mode: no local listener for TCP {} (only the TCP ports of the workload manifest's Services get one)",
                unreachable.join(", ")
            ),
        ));
    }
}

fn capture_mode(
    node: &ProxyNode,
    ctx: &PushContext,
    services: &[(&Service, Option<Vec<u32>>)],
    out: &mut Generated,
) {
    let allow_any = ctx.allow_any(node);
    let fallback = if allow_any {
        PASSTHROUGH_CLUSTER
    } else {
        BLACKHOLE_CLUSTER
    };
    let mut virtual_outbound = listener(
        "virtualOutbound",
        "0.0.0.0",
        VIRTUAL_OUTBOUND_PORT,
        TrafficDirection::Outbound,
        Vec::new(),
    );
    virtual_outbound.use_original_dst = Some(pb::boolv(true));
    virtual_outbound.default_filter_chain = Some(FilterChain {
        name: fallback.to_owned(),
        filters: vec![tcp_proxy_filter(fallback, fallback)],
        ..Default::default()
    });
    out.listeners.push(virtual_outbound);

    // Service ports → HTTP route tables or a TCP proxy per port.
    let mut http_ports: BTreeMap<u32, ()> = BTreeMap::new();
    let mut tcp_ports: BTreeMap<u32, Vec<&Service>> = BTreeMap::new();
    for (svc, ports) in services {
        for p in &svc.ports {
            if ports.as_ref().is_some_and(|l| !l.contains(&p.number)) {
                continue;
            }
            if p.protocol.is_http() {
                http_ports.insert(p.number, ());
            } else {
                tcp_ports.entry(p.number).or_default().push(svc);
            }
        }
    }
    for &port in http_ports.keys() {
        let mut vhosts = outbound_vhosts(node, ctx, services, Some(port), &mut out.diagnostics);
        vhosts.push(if allow_any {
            VirtualHost {
                name: "allow_any".to_owned(),
                domains: vec!["*".to_owned()],
                routes: vec![Route {
                    name: "allow_any".to_owned(),
                    r#match: Some(prefix_match()),
                    action: Some(route::Action::Route(RouteAction {
                        cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                            PASSTHROUGH_CLUSTER.to_owned(),
                        )),
                        timeout: Some(pb::duration(std::time::Duration::ZERO)),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }
        } else {
            direct_vhost("block_all", 502, "")
        });
        out.routes.push(route_config(&port.to_string(), vhosts));
        let mut l = listener(
            &format!("0.0.0.0_{port}"),
            "0.0.0.0",
            port,
            TrafficDirection::Outbound,
            vec![FilterChain {
                filters: vec![hcm_filter(outbound_hcm(
                    &format!("outbound_0.0.0.0_{port}"),
                    &port.to_string(),
                ))],
                ..Default::default()
            }],
        );
        l.bind_to_port = Some(pb::boolv(false));
        out.listeners.push(l);
    }
    for (port, svcs) in tcp_ports {
        if http_ports.contains_key(&port) {
            out.diagnostics.push(Diagnostic::new(
                "",
                "",
                format!(
                    "port {port} carries HTTP and TCP services; TCP services on it are not routed"
                ),
            ));
            continue;
        }
        // A port shared by several services: each service's VIPs get their
        // own listener (`<vip>_<port>`, istiod's naming), which original-
        // destination handoff prefers to the wildcard one; what is left
        // without a VIP takes `0.0.0.0_<port>` if it is alone.
        let shared = svcs.len() > 1;
        let mut wildcard: Vec<&Service> = Vec::new();
        for svc in svcs {
            let vips: Vec<&str> = if shared {
                svc.addresses
                    .iter()
                    .map(String::as_str)
                    .filter(|a| a.parse::<std::net::IpAddr>().is_ok())
                    .collect()
            } else {
                Vec::new()
            };
            if vips.is_empty() {
                wildcard.push(svc);
            }
            for vip in vips {
                let l = tcp_service_listener(node, ctx, svc, vip, port, &mut out.diagnostics);
                out.listeners.push(l);
            }
        }
        match wildcard.as_slice() {
            [] => {}
            [svc] => {
                let l = tcp_service_listener(node, ctx, svc, "0.0.0.0", port, &mut out.diagnostics);
                out.listeners.push(l);
            }
            several => out.diagnostics.push(Diagnostic::new(
                "",
                "",
                format!(
                    "TCP port {port} is shared by {} services without a VIP ({}); not routed",
                    several.len(),
                    several
                        .iter()
                        .map(|s| s.hostname.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }

    // Inbound: one filter chain per served target port.
    let mut virtual_inbound = listener(
        "virtualInbound",
        "0.0.0.0",
        VIRTUAL_INBOUND_PORT,
        TrafficDirection::Inbound,
        Vec::new(),
    );
    virtual_inbound.use_original_dst = Some(pb::boolv(true));
    // Direct connections to 15006 itself go nowhere (Istio's blackhole).
    virtual_inbound.filter_chains.push(FilterChain {
        name: "virtualInbound-blackhole".to_owned(),
        filter_chain_match: Some(FilterChainMatch {
            destination_port: Some(pb::u32v(VIRTUAL_INBOUND_PORT)),
            ..Default::default()
        }),
        filters: vec![tcp_proxy_filter(BLACKHOLE_CLUSTER, BLACKHOLE_CLUSTER)],
        ..Default::default()
    });
    let sec = WorkloadSecurity::for_node(node, ctx, &mut out.diagnostics);
    let served = served_ports(node, ctx);
    for (&target, protocol) in &served {
        virtual_inbound
            .filter_chains
            .extend(inbound_chains(ctx, &sec, target, protocol, true));
        out.clusters.push(cluster::inbound_original_dst(
            ctx,
            target,
            matches!(protocol, Protocol::Http2 | Protocol::Grpc),
        ));
    }
    // Undeclared ports pass through to the original destination, under the
    // workload's mTLS mode and TCP authorization (and each port-level
    // PeerAuthentication port the services do not declare gets its own).
    virtual_inbound
        .filter_chains
        .extend(passthrough_chains(ctx, &sec, sec.mode_for_port(0), None));
    if let Some(peer) = &sec.peer {
        for (&port, &mode) in &peer.per_port {
            if !served.contains_key(&port) {
                virtual_inbound.filter_chains.extend(passthrough_chains(
                    ctx,
                    &sec,
                    mode,
                    Some(port),
                ));
            }
        }
    }
    add_tls_inspector(&mut virtual_inbound);
    out.listeners.push(virtual_inbound);
    out.clusters.push(cluster::passthrough(
        ctx,
        INBOUND_PASSTHROUGH_CLUSTER,
        Some(cluster::INBOUND_PASSTHROUGH_BIND),
    ));
}

/// The outbound listener of one TCP service port on `address`
/// (`<address>_<port>`): the service's mesh VirtualService `tls`/`tcp`
/// routes, else the service itself.
fn tcp_service_listener(
    node: &ProxyNode,
    ctx: &PushContext,
    svc: &Service,
    address: &str,
    port: u32,
    diags: &mut Vec<Diagnostic>,
) -> Listener {
    let scope = RouteScope {
        ctx,
        node,
        gateway: api::defaults::MESH_GATEWAY,
        port,
    };
    let tls_service = svc
        .port(port)
        .is_some_and(|p| matches!(p.protocol, Protocol::Tls | Protocol::Https));
    let chains = tcp::service_chains(scope, &svc.hostname, tls_service, diags);
    let mut l = listener(
        &format!("{address}_{port}"),
        address,
        port,
        TrafficDirection::Outbound,
        chains,
    );
    l.bind_to_port = Some(pb::boolv(false));
    add_tls_inspector(&mut l);
    l
}

/// One virtual host per visible (HTTP service, port); `only_port` limits
/// them to one port (capture mode's per-port tables).
fn outbound_vhosts(
    node: &ProxyNode,
    ctx: &PushContext,
    services: &[(&Service, Option<Vec<u32>>)],
    only_port: Option<u32>,
    diags: &mut Vec<Diagnostic>,
) -> Vec<VirtualHost> {
    let mut vhosts = Vec::new();
    for (svc, ports) in services {
        for p in &svc.ports {
            if !p.protocol.is_http()
                || only_port.is_some_and(|o| o != p.number)
                || ports.as_ref().is_some_and(|l| !l.contains(&p.number))
            {
                continue;
            }
            let scope = RouteScope {
                ctx,
                node,
                gateway: api::defaults::MESH_GATEWAY,
                port: p.number,
            };
            let routes = match ctx.mesh_virtual_service(&svc.hostname, &node.namespace) {
                Some((obj, vs)) if !vs.http.is_empty() => {
                    virtual_service_routes(scope, obj, vs, diags)
                }
                _ => vec![default_route(scope, &svc.hostname, p.number)],
            };
            vhosts.push(VirtualHost {
                name: format!("{}:{}", svc.hostname, p.number),
                domains: vhost_domains(node, ctx, svc, p.number, only_port.is_some()),
                routes,
                ..Default::default()
            });
        }
    }
    dedup_domains(&mut vhosts);
    vhosts
}

/// The names a request may use for `svc` on `port`, following Istio's
/// outbound virtual host domains: the FQDN, the short forms valid from the
/// proxy's namespace (`name` only from the same namespace, `name.ns`,
/// `name.ns.svc`), registry aliases and VIPs, each as `<name>:<port>`. The
/// bare `<name>` is added for port 80 (clients omit the default port), or
/// for every name when the table serves a single port (capture mode).
pub fn vhost_domains(
    node: &ProxyNode,
    ctx: &PushContext,
    svc: &Service,
    port: u32,
    single_port_table: bool,
) -> Vec<String> {
    let mut names = vec![svc.hostname.clone()];
    let svc_suffix = format!(".svc.{}", ctx.domain_suffix());
    if let Some(stem) = svc.hostname.strip_suffix(&svc_suffix)
        && let Some((name, ns)) = stem.split_once('.')
        && !ns.contains('.')
    {
        if ns == node.namespace {
            names.push(name.to_owned());
        }
        names.push(format!("{name}.{ns}"));
        names.push(format!("{name}.{ns}.svc"));
    }
    for alias in &svc.aliases {
        // A dotless alias only means this service inside its own namespace.
        if alias.contains('.') || svc.namespace == node.namespace {
            names.push(alias.clone());
        }
    }
    names.extend(
        svc.addresses
            .iter()
            .filter(|a| !a.contains('/') && a.as_str() != "0.0.0.0")
            .cloned(),
    );
    let mut domains = Vec::new();
    for n in names {
        let with_port = if n.contains(':') {
            format!("[{n}]:{port}") // IPv6 VIP
        } else {
            format!("{n}:{port}")
        };
        if port == 80 || single_port_table {
            domains.push(if n.contains(':') { format!("[{n}]") } else { n });
        }
        domains.push(with_port);
    }
    let mut seen = BTreeMap::new();
    domains.retain(|d| seen.insert(d.clone(), ()).is_none());
    domains
}

/// Target ports this workload serves, with their protocol, from the
/// registry: endpoints with this workload's name (and namespace), or with
/// one of its (non-loopback) addresses.
pub(crate) fn served_ports(node: &ProxyNode, ctx: &PushContext) -> BTreeMap<u32, Protocol> {
    let mut ports = BTreeMap::new();
    for ((host, port), eps) in &ctx.registry().endpoints {
        let Some(svc) = ctx.registry().service(host) else {
            continue;
        };
        let Some(sp) = svc.port(*port) else {
            continue;
        };
        for ep in eps {
            if crate::endpoints::serves_node(node, ep) {
                let target = if ep.port == 0 {
                    sp.target_port
                } else {
                    ep.port
                };
                let entry = ports.entry(target).or_insert_with(|| sp.protocol.clone());
                // HTTP wins when several services share a target port.
                if sp.protocol.is_http() && !entry.is_http() {
                    *entry = sp.protocol.clone();
                }
            }
        }
    }
    ports
}

/// The protocol of `target` among the services of `namespace` (local mode
/// fallback when the workload cannot be identified in the registry).
fn namespace_protocol(ctx: &PushContext, namespace: &str, target: u32) -> Option<Protocol> {
    ctx.registry()
        .services
        .values()
        .filter(|s| s.namespace == namespace)
        .flat_map(|s| s.ports.iter())
        .find(|p| p.target_port == target)
        .map(|p| p.protocol.clone())
}

/// The filter chains of one inbound port: one per mTLS option of its mode
/// (Istio's `getFilterChainMatchOptions`), each with the workload's
/// authorization filters; matched on the port when `port_match` (capture
/// mode's shared listener).
fn inbound_chains(
    ctx: &PushContext,
    sec: &WorkloadSecurity,
    target: u32,
    protocol: &Protocol,
    port_match: bool,
) -> Vec<FilterChain> {
    let cluster_name = cluster::inbound_name(target);
    let http = protocol.is_http();
    let filters = if http {
        vec![inbound_hcm_filter(target, &cluster_name, &sec.http_filters)]
    } else {
        let mut f = sec.tcp_filters.clone();
        f.push(tcp_proxy_filter(&cluster_name, &cluster_name));
        f
    };
    tls::chain_options(sec.mode_for_port(target), http)
        .into_iter()
        .map(|opt| FilterChain {
            name: opt.chain_name(&cluster_name),
            filter_chain_match: opt.filter_chain_match(port_match.then_some(target)),
            filters: filters.clone(),
            transport_socket: opt
                .mtls
                .then(|| tls::downstream_socket(&tls::downstream_mtls(ctx, http))),
            ..Default::default()
        })
        .collect()
}

/// Passthrough chains of the virtual inbound listener for `mode` (Istio's
/// `buildInboundPassthroughChains`, TCP only): to the original destination
/// through `InboundPassthroughCluster`.
fn passthrough_chains(
    ctx: &PushContext,
    sec: &WorkloadSecurity,
    mode: api::security::MtlsMode,
    port: Option<u32>,
) -> Vec<FilterChain> {
    let mut filters = sec.tcp_filters.clone();
    filters.push(tcp_proxy_filter(
        INBOUND_PASSTHROUGH_CLUSTER,
        INBOUND_PASSTHROUGH_CLUSTER,
    ));
    let base = match port {
        Some(p) => format!("virtualInbound-{p}"),
        None => "virtualInbound".to_owned(),
    };
    tls::chain_options(mode, false)
        .into_iter()
        .map(|opt| FilterChain {
            name: opt.chain_name(&base),
            filter_chain_match: opt.filter_chain_match(port),
            filters: filters.clone(),
            transport_socket: opt
                .mtls
                .then(|| tls::downstream_socket(&tls::downstream_mtls(ctx, false))),
            ..Default::default()
        })
        .collect()
}

/// The TLS inspector (Istio adds it when a chain matches on TLS).
pub(crate) fn add_tls_inspector(l: &mut Listener) {
    let needs = l
        .filter_chains
        .iter()
        .chain(l.default_filter_chain.iter())
        .any(|c| {
            c.filter_chain_match
                .as_ref()
                .is_some_and(|m| m.transport_protocol == "tls" || !m.server_names.is_empty())
        });
    if needs {
        // As istiod does: a connection whose first bytes never come (a
        // server-first protocol) goes on as plaintext after the timeout.
        l.continue_on_listener_filters_timeout = true;
        l.listener_filters.push(ListenerFilter {
            name: TLS_INSPECTOR.to_owned(),
            config_type: Some(listener_filter::ConfigType::TypedConfig(pb::any(
                &TlsInspector::default(),
            ))),
            ..Default::default()
        });
    }
}

/// The inbound HTTP connection manager of `target`: the workload's
/// security filters, then the route-level ones, routing everything to the
/// inbound cluster.
fn inbound_hcm_filter(target: u32, cluster_name: &str, security: &[HttpFilter]) -> Filter {
    let timeout = pb::duration(std::time::Duration::ZERO);
    let rc = RouteConfiguration {
        name: cluster_name.to_owned(),
        virtual_hosts: vec![VirtualHost {
            name: format!("inbound|http|{target}"),
            domains: vec!["*".to_owned()],
            routes: vec![Route {
                name: "default".to_owned(),
                r#match: Some(prefix_match()),
                action: Some(route::Action::Route(RouteAction {
                    cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                        cluster_name.to_owned(),
                    )),
                    timeout: Some(timeout),
                    max_stream_duration: Some(route_action::MaxStreamDuration {
                        max_stream_duration: Some(timeout),
                        grpc_timeout_header_max: Some(timeout),
                        ..Default::default()
                    }),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        validate_clusters: Some(pb::boolv(false)),
        ..Default::default()
    };
    let mut http_filters = security.to_vec();
    http_filters.extend(crate::route::http_filters());
    hcm_filter(HttpConnectionManager {
        stat_prefix: format!("inbound_0.0.0.0_{target}"),
        codec_type: http_connection_manager::CodecType::Auto as i32,
        route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(rc)),
        http_filters,
        upgrade_configs: websocket(),
        ..Default::default()
    })
}

pub(crate) fn outbound_hcm(stat_prefix: &str, route_name: &str) -> HttpConnectionManager {
    HttpConnectionManager {
        stat_prefix: stat_prefix.to_owned(),
        codec_type: http_connection_manager::CodecType::Auto as i32,
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(pb::ads()),
            route_config_name: route_name.to_owned(),
        })),
        http_filters: crate::route::http_filters(),
        // Applications send absolute-form requests when they use the
        // sidecar as their HTTP proxy.
        http_protocol_options: Some(cluster::http1_proxy_options()),
        use_remote_address: Some(pb::boolv(false)),
        upgrade_configs: websocket(),
        ..Default::default()
    }
}

fn websocket() -> Vec<http_connection_manager::UpgradeConfig> {
    vec![http_connection_manager::UpgradeConfig {
        upgrade_type: "websocket".to_owned(),
        ..Default::default()
    }]
}

pub(crate) fn hcm_filter(hcm: HttpConnectionManager) -> Filter {
    Filter {
        name: HCM.to_owned(),
        config_type: Some(filter::ConfigType::TypedConfig(pb::any(&hcm))),
    }
}

fn tcp_proxy_filter(stat_prefix: &str, cluster_name: &str) -> Filter {
    Filter {
        name: TCP_PROXY.to_owned(),
        config_type: Some(filter::ConfigType::TypedConfig(pb::any(&TcpProxy {
            stat_prefix: stat_prefix.to_owned(),
            cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(
                cluster_name.to_owned(),
            )),
            ..Default::default()
        }))),
    }
}

pub(crate) fn listener(
    name: &str,
    address: &str,
    port: u32,
    direction: TrafficDirection,
    filter_chains: Vec<FilterChain>,
) -> Listener {
    let mut l = Listener {
        name: name.to_owned(),
        address: Some(pb::socket(address, port)),
        filter_chains,
        traffic_direction: direction as i32,
        ..Default::default()
    };
    if name == "virtualOutbound" || name == "virtualInbound" {
        l.listener_filters.push(ListenerFilter {
            name: "envoy.filters.listener.original_dst".to_owned(),
            config_type: Some(listener_filter::ConfigType::TypedConfig(pb::any(
                &OriginalDst::default(),
            ))),
            ..Default::default()
        });
    }
    l
}

pub(crate) fn route_config(name: &str, virtual_hosts: Vec<VirtualHost>) -> RouteConfiguration {
    RouteConfiguration {
        name: name.to_owned(),
        virtual_hosts,
        // Routes may name clusters that are not (yet) there: Envoy answers
        // 503 for them instead of rejecting the whole table.
        validate_clusters: Some(pb::boolv(false)),
        ..Default::default()
    }
}

pub(crate) fn prefix_match() -> RouteMatch {
    RouteMatch {
        path_specifier: Some(route_match::PathSpecifier::Prefix("/".to_owned())),
        ..Default::default()
    }
}

pub(crate) fn direct_vhost(name: &str, status: u32, body: &str) -> VirtualHost {
    use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
    VirtualHost {
        name: name.to_owned(),
        domains: vec!["*".to_owned()],
        routes: vec![Route {
            name: name.to_owned(),
            r#match: Some(prefix_match()),
            action: Some(route::Action::DirectResponse(DirectResponseAction {
                status,
                body: (!body.is_empty()).then(|| DataSource {
                    specifier: Some(data_source::Specifier::InlineString(body.to_owned())),
                    ..Default::default()
                }),
                ..Default::default()
            })),
            ..Default::default()
        }],
        ..Default::default()
    }
}
