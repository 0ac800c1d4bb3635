//! VirtualService `tcp` and `tls` routes: `tcp_proxy` filters and the
//! filter chains that select them, for sidecars and gateways.
//!
//! As istiod builds them (`networkfilter.go`, the sidecar's outbound TCP
//! listener options):
//! - one destination: `tcp_proxy` to `outbound|<port>|<subset>|<host>`, stat
//!   prefix the cluster name; several: `weighted_clusters` (destinations
//!   with weight 0 left out), stat prefix `<vs name>.<vs namespace>`;
//! - a `tls` route match becomes a chain matching its `sniHosts` (and
//!   `destinationSubnets`) on TLS connections; a `tcp` route match with
//!   `destinationSubnets` a chain on those; the first `tcp` route without
//!   one (or without matches) is the catch-all, else the service itself.
//!
//! Matches on `port`, `sourceLabels`, `sourceNamespace` and `gateways` are
//! decided here, per proxy, as for HTTP routes.

use std::collections::BTreeMap;

use api::Object;
use api::networking::VirtualService;
use api::networking::destination_rule::LoadBalancerSettings;
use api::networking::virtual_service::RouteDestination;
use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, FilterChainMatch, filter};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::envoy::r#type::v3::{HashPolicy, hash_policy};

use crate::context::{gateway_key, labels_match};
use crate::route::{RouteScope, destination_cluster};
use crate::{Diagnostic, pb};

const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";

/// A `tcp_proxy` network filter to one cluster.
pub(crate) fn tcp_proxy_to(stat_prefix: &str, cluster_name: &str) -> Filter {
    tcp_proxy_filter(TcpProxy {
        stat_prefix: stat_prefix.to_owned(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(
            cluster_name.to_owned(),
        )),
        ..Default::default()
    })
}

fn tcp_proxy_filter(p: TcpProxy) -> Filter {
    Filter {
        name: TCP_PROXY.to_owned(),
        config_type: Some(filter::ConfigType::TypedConfig(pb::any(&p))),
    }
}

/// A `tcp_proxy` to `cluster_name` with the TCP settings of the
/// DestinationRule the proxy sees for the cluster's host.
pub(crate) fn tcp_proxy_with_rule(
    scope: RouteScope<'_>,
    stat_prefix: &str,
    cluster_name: &str,
) -> Filter {
    let mut p = TcpProxy {
        stat_prefix: stat_prefix.to_owned(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(
            cluster_name.to_owned(),
        )),
        ..Default::default()
    };
    apply_rule(scope, cluster_name, &mut p);
    tcp_proxy_filter(p)
}

/// What istiod takes from the DestinationRule of the (first) destination's
/// host into a `tcp_proxy`: the rule's top-level `connectionPool.tcp`
/// `idleTimeout` (else Envoy's default hour) and `maxConnectionDuration`,
/// and source-IP hashing when the rule (or the destination's subset) asks
/// for a `consistentHash` on `useSourceIp`.
fn apply_rule(scope: RouteScope<'_>, cluster_name: &str, p: &mut TcpProxy) {
    let Some((_, subset, host)) = crate::endpoints::parse_outbound_name(cluster_name) else {
        return;
    };
    let Some(svc) = scope.ctx.registry().service(host) else {
        return;
    };
    let Some((_, rule)) = scope.ctx.destination_rule(scope.node, svc) else {
        return;
    };
    let policy = rule.traffic_policy.as_ref();
    if let Some(tcp) = policy
        .and_then(|t| t.connection_pool.as_ref())
        .and_then(|c| c.tcp.as_ref())
    {
        p.idle_timeout = tcp.idle_timeout.map(|d| pb::duration(d.get()));
        p.max_downstream_connection_duration =
            tcp.max_connection_duration.map(|d| pb::duration(d.get()));
    }
    let source_ip = |lb: Option<&LoadBalancerSettings>| {
        lb.and_then(|l| l.consistent_hash.as_ref())
            .and_then(|h| h.use_source_ip)
            .unwrap_or(false)
    };
    let mut use_source_ip = source_ip(policy.and_then(|t| t.load_balancer.as_ref()));
    if let Some(lb) = rule
        .subsets
        .iter()
        .find(|s| s.name == subset)
        .and_then(|s| s.traffic_policy.as_ref())
        .and_then(|t| t.load_balancer.as_ref())
    {
        use_source_ip = source_ip(Some(lb));
    }
    if use_source_ip {
        p.hash_policy = vec![HashPolicy {
            policy_specifier: Some(hash_policy::PolicySpecifier::SourceIp(
                hash_policy::SourceIp::default(),
            )),
        }];
    }
}

/// The `tcp_proxy` of a route's destinations; `None` (with a diagnostic)
/// when no destination carries traffic.
pub(crate) fn route_filter(
    scope: RouteScope<'_>,
    obj: &Object,
    routes: &[RouteDestination],
    field: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<Filter> {
    let dests: Vec<(String, u32)> = routes
        .iter()
        .filter_map(|r| {
            let d = r.destination.as_ref()?;
            let (cluster, ..) = destination_cluster(scope, obj.namespace(), d);
            Some((cluster, r.weight.unwrap_or(0).max(0) as u32))
        })
        .collect();
    match dests.as_slice() {
        [] => {
            diags.push(Diagnostic::new(
                format!("VirtualService {}", obj.key()),
                format!("{field}.route"),
                "no destination; the route is left out",
            ));
            None
        }
        [(cluster, _)] => Some(tcp_proxy_with_rule(scope, cluster, cluster)),
        many => {
            let weighted: Vec<_> = many.iter().filter(|(_, w)| *w > 0).collect();
            if let [(cluster, _)] = weighted.as_slice() {
                return Some(tcp_proxy_with_rule(scope, cluster, cluster));
            }
            if weighted.is_empty() {
                diags.push(Diagnostic::new(
                    format!("VirtualService {}", obj.key()),
                    format!("{field}.route"),
                    "every destination has weight 0; the route is left out",
                ));
                return None;
            }
            let mut p = TcpProxy {
                stat_prefix: format!("{}.{}", obj.name(), obj.namespace()),
                cluster_specifier: Some(tcp_proxy::ClusterSpecifier::WeightedClusters(
                    tcp_proxy::WeightedCluster {
                        clusters: weighted
                            .iter()
                            .map(
                                |(name, weight)| tcp_proxy::weighted_cluster::ClusterWeight {
                                    name: name.clone(),
                                    weight: *weight,
                                    ..Default::default()
                                },
                            )
                            .collect(),
                    },
                )),
                ..Default::default()
            };
            // The first destination's rule, without its subset (istiod).
            if let Some((first, _)) = many.first()
                && let Some((port, _, host)) = crate::endpoints::parse_outbound_name(first)
            {
                let unsubset = crate::cluster::outbound_name(port, "", host);
                apply_rule(scope, &unsubset, &mut p);
            }
            Some(tcp_proxy_filter(p))
        }
    }
}

/// The L4 predicates of a `tcp` or `tls` match that are decided per proxy.
pub(crate) struct L4Predicates<'a> {
    pub port: Option<u32>,
    pub source_labels: &'a BTreeMap<String, String>,
    pub source_namespace: Option<&'a str>,
    pub gateways: &'a [String],
}

/// Whether a match can apply to this proxy, gateway and port.
pub(crate) fn l4_applies(scope: RouteScope<'_>, vs_ns: &str, m: &L4Predicates<'_>) -> bool {
    labels_match(m.source_labels, &scope.node.labels)
        && m.source_namespace
            .is_none_or(|ns| ns == scope.node.namespace)
        && (m.gateways.is_empty()
            || m.gateways
                .iter()
                .any(|g| gateway_key(g, vs_ns) == scope.gateway))
        && m.port.is_none_or(|p| p == 0 || p == scope.port)
}

/// `destinationSubnets` (`10.0.0.0/8`, `10.1.2.3`) as CIDR ranges; bad
/// entries are reported and skipped.
pub(crate) fn cidrs(
    subnets: &[String],
    origin: &str,
    field: &str,
    diags: &mut Vec<Diagnostic>,
) -> Vec<CidrRange> {
    let mut out = Vec::new();
    for (i, s) in subnets.iter().enumerate() {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, l.parse::<u32>().ok()),
            None => (s.as_str(), None),
        };
        match addr.parse::<std::net::IpAddr>() {
            Ok(ip) => {
                let max = if ip.is_ipv4() { 32 } else { 128 };
                let len = len.unwrap_or(max).min(max);
                out.push(CidrRange {
                    address_prefix: ip.to_string(),
                    prefix_len: Some(pb::u32v(len)),
                });
            }
            Err(_) => diags.push(Diagnostic::new(
                origin,
                format!("{field}.destinationSubnets[{i}]"),
                format!("{s:?} is not an IP address or CIDR; ignored"),
            )),
        }
    }
    out
}

/// SNI names for a chain match: `*` (everything) becomes no SNI condition.
pub(crate) fn server_names(hosts: &[String]) -> Vec<String> {
    if hosts.iter().any(|h| h == "*") {
        return Vec::new();
    }
    let mut names: Vec<String> = hosts
        .iter()
        .map(|h| h.split_once('/').map_or(h.as_str(), |(_, h)| h).to_owned())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The outbound filter chains of a TCP or TLS service port on a sidecar:
/// the service's mesh VirtualService `tls` routes (TLS ports) and `tcp`
/// routes, then the service's own cluster unless a route caught all.
/// `tls_service` says whether the port carries TLS (HTTPS, TLS).
pub(crate) fn service_chains(
    scope: RouteScope<'_>,
    host: &str,
    tls_service: bool,
    diags: &mut Vec<Diagnostic>,
) -> Vec<FilterChain> {
    let default_cluster = crate::cluster::outbound_name(scope.port, "", host);
    let mut chains: Vec<FilterChain> = Vec::new();
    let mut catch_all: Option<FilterChain> = None;
    if let Some((obj, vs)) = scope.ctx.mesh_virtual_service(host, &scope.node.namespace) {
        mesh_route_chains(
            scope,
            obj,
            vs,
            tls_service,
            &mut chains,
            &mut catch_all,
            diags,
        );
    }
    let mut seen: Vec<Option<FilterChainMatch>> = Vec::new();
    chains.retain(|c| {
        if seen.contains(&c.filter_chain_match) {
            false
        } else {
            seen.push(c.filter_chain_match.clone());
            true
        }
    });
    chains.push(catch_all.unwrap_or_else(|| FilterChain {
        name: default_cluster.clone(),
        filters: vec![tcp_proxy_with_rule(
            scope,
            &default_cluster,
            &default_cluster,
        )],
        ..Default::default()
    }));
    chains
}

fn mesh_route_chains(
    scope: RouteScope<'_>,
    obj: &Object,
    vs: &VirtualService,
    tls_service: bool,
    chains: &mut Vec<FilterChain>,
    catch_all: &mut Option<FilterChain>,
    diags: &mut Vec<Diagnostic>,
) {
    let origin = format!("VirtualService {}", obj.key());
    let ns = obj.namespace();
    if tls_service {
        for (i, route) in vs.tls.iter().enumerate() {
            let field = format!("spec.tls[{i}]");
            let Some(filter) = route_filter(scope, obj, &route.route, &field, diags) else {
                continue;
            };
            for (j, m) in route.matches.iter().enumerate() {
                let pred = L4Predicates {
                    port: m.port,
                    source_labels: &m.source_labels,
                    source_namespace: m.source_namespace.as_deref(),
                    gateways: &m.gateways,
                };
                if !l4_applies(scope, ns, &pred) {
                    continue;
                }
                let mfield = format!("{field}.match[{j}]");
                chains.push(FilterChain {
                    name: format!("{}|tls[{i}].match[{j}]", obj.key()),
                    filter_chain_match: Some(FilterChainMatch {
                        server_names: server_names(&m.sni_hosts),
                        transport_protocol: "tls".to_owned(),
                        prefix_ranges: cidrs(&m.destination_subnets, &origin, &mfield, diags),
                        ..Default::default()
                    }),
                    filters: vec![filter.clone()],
                    ..Default::default()
                });
            }
        }
    }
    for (i, route) in vs.tcp.iter().enumerate() {
        if catch_all.is_some() {
            break;
        }
        let field = format!("spec.tcp[{i}]");
        let Some(filter) = route_filter(scope, obj, &route.route, &field, diags) else {
            continue;
        };
        if route.matches.is_empty() {
            *catch_all = Some(FilterChain {
                name: format!("{}|tcp[{i}]", obj.key()),
                filters: vec![filter],
                ..Default::default()
            });
            break;
        }
        for (j, m) in route.matches.iter().enumerate() {
            let pred = L4Predicates {
                port: m.port,
                source_labels: &m.source_labels,
                source_namespace: m.source_namespace.as_deref(),
                gateways: &m.gateways,
            };
            if !l4_applies(scope, ns, &pred) {
                continue;
            }
            let name = format!("{}|tcp[{i}].match[{j}]", obj.key());
            if m.destination_subnets.is_empty() {
                *catch_all = Some(FilterChain {
                    name,
                    filters: vec![filter.clone()],
                    ..Default::default()
                });
                break;
            }
            let mfield = format!("{field}.match[{j}]");
            chains.push(FilterChain {
                name,
                filter_chain_match: Some(FilterChainMatch {
                    prefix_ranges: cidrs(&m.destination_subnets, &origin, &mfield, diags),
                    ..Default::default()
                }),
                filters: vec![filter.clone()],
                ..Default::default()
            });
        }
    }
}
