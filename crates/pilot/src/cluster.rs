//! Clusters and endpoints: one `outbound|<port>|<subset>|<host>` cluster per
//! visible service port and DestinationRule subset, with the rule's traffic
//! policy and upstream TLS (the rule's `tls`, else auto mTLS, see
//! [`crate::security::tls`]); ClusterLoadAssignments grouped by locality for
//! EDS clusters, endpoints with a sidecar marked `tlsMode: istio`.

use std::collections::{BTreeMap, HashMap};

use api::Object;
use api::networking::destination_rule::{
    ClientTlsMode, ConnectionPoolSettings, ConsistentHashLb, DestinationRule, H2UpgradePolicy,
    LoadBalancerSettings, OutlierDetection, SimpleLb, Subset, TrafficPolicy,
};
use api::security::MtlsMode;
use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster, OutlierDetection as EnvoyOutlierDetection, UpstreamConnectionOptions,
    circuit_breakers::Thresholds, cluster,
};
use envoy_types::pb::envoy::config::core::v3::{
    BindConfig, HealthStatus, Http1ProtocolOptions, Http2ProtocolOptions,
    HttpProtocolOptions as CommonHttp, Locality, RoutingPriority, TcpKeepalive,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::route::v3::route_action::{HashPolicy, hash_policy};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use envoy_types::pb::envoy::r#type::v3::Percent;
use registry::{Endpoint, Location, Resolution, Service, ServicePort};

use crate::context::PushContext;
use crate::node::{NodeKind, ProxyNode};
use crate::{Diagnostic, Generated};
use crate::{pb, security};

pub const BLACKHOLE_CLUSTER: &str = "BlackHoleCluster";
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";
pub const INBOUND_PASSTHROUGH_CLUSTER: &str = "InboundPassthroughCluster";
/// Source address of inbound traffic forwarded to the app in capture mode.
pub const INBOUND_PASSTHROUGH_BIND: &str = "127.0.0.6";
const UPSTREAM_HTTP_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
/// Istio's default ring size when `consistentHash` sets none.
const DEFAULT_RING_SIZE: u64 = 1024;

/// `outbound|<port>|<subset>|<host>`.
pub fn outbound_name(port: u32, subset: &str, host: &str) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

/// `inbound|<port>||`.
pub fn inbound_name(port: u32) -> String {
    format!("inbound|{port}||")
}

/// Adds the outbound clusters (and EDS assignments) for `services` as seen
/// by `node`: for each port (all, or the listed ones) the default cluster
/// and one per DestinationRule subset.
pub(crate) fn add_outbound(
    node: &ProxyNode,
    ctx: &PushContext,
    services: &[(&Service, Option<Vec<u32>>)],
    out: &mut Generated,
) {
    for (svc, ports) in services {
        let dr = ctx.destination_rule(node, svc);
        for port in &svc.ports {
            if ports.as_ref().is_some_and(|p| !p.contains(&port.number)) {
                continue;
            }
            let rule = dr.map(|(_, d)| d);
            let policy = cluster_policy(rule, None, port.number);
            let name = outbound_name(port.number, "", &svc.hostname);
            add_cluster(
                ClusterScope {
                    ctx,
                    node,
                    svc,
                    port,
                    dr,
                },
                &name,
                "",
                &BTreeMap::new(),
                policy.as_ref(),
                out,
            );
            if let Some((_, rule)) = dr {
                for subset in &rule.subsets {
                    let merged = cluster_policy(Some(rule), Some(subset), port.number);
                    let name = outbound_name(port.number, &subset.name, &svc.hostname);
                    add_cluster(
                        ClusterScope {
                            ctx,
                            node,
                            svc,
                            port,
                            dr,
                        },
                        &name,
                        &subset.name,
                        &subset.labels,
                        merged.as_ref(),
                        out,
                    );
                }
            }
        }
    }
}

/// The policy of an outbound cluster on `port`: the rule's top-level
/// policy for the default cluster, merged with the subset's for a subset
/// cluster.
pub(crate) fn cluster_policy(
    rule: Option<&DestinationRule>,
    subset: Option<&Subset>,
    port: u32,
) -> Option<TrafficPolicy> {
    let top = rule.and_then(|d| d.traffic_policy.as_ref());
    match subset {
        None => merge_policy(None, top, port),
        Some(s) => merge_policy(top, s.traffic_policy.as_ref(), port),
    }
}

/// The TLS mode a cluster's policy sets, which decides its endpoints'
/// `tlsMode` metadata (Istio's mtls checker); `None` leaves it to their
/// sidecar and PeerAuthentication.
pub(crate) fn endpoint_tls_mode(policy: Option<&TrafficPolicy>) -> Option<ClientTlsMode> {
    policy.and_then(|p| p.tls.as_ref()).map(|t| t.mode())
}

/// The effective policy for a port: `base` (with its own port-level
/// settings applied) overridden field by field by `over`, then by `over`'s
/// port-level settings, which replace (not merge) as Istio documents.
pub fn merge_policy(
    base: Option<&TrafficPolicy>,
    over: Option<&TrafficPolicy>,
    port: u32,
) -> Option<TrafficPolicy> {
    let base = base.map(|b| apply_port_level(b, port));
    let Some(over) = over else {
        return base;
    };
    let mut merged = base.unwrap_or_default();
    merged.port_level_settings.clear();
    if over.load_balancer.is_some() {
        merged.load_balancer.clone_from(&over.load_balancer);
    }
    if over.connection_pool.is_some() {
        merged.connection_pool.clone_from(&over.connection_pool);
    }
    if over.outlier_detection.is_some() {
        merged.outlier_detection.clone_from(&over.outlier_detection);
    }
    if over.tls.is_some() {
        merged.tls.clone_from(&over.tls);
    }
    if over.proxy_protocol.is_some() {
        merged.proxy_protocol.clone_from(&over.proxy_protocol);
    }
    if over.tunnel.is_some() {
        merged.tunnel.clone_from(&over.tunnel);
    }
    if over.retry_budget.is_some() {
        merged.retry_budget.clone_from(&over.retry_budget);
    }
    Some(apply_port_settings(merged, &over.port_level_settings, port))
}

fn apply_port_level(policy: &TrafficPolicy, port: u32) -> TrafficPolicy {
    let mut p = policy.clone();
    let settings = std::mem::take(&mut p.port_level_settings);
    apply_port_settings(p, &settings, port)
}

fn apply_port_settings(
    mut p: TrafficPolicy,
    settings: &[api::networking::destination_rule::PortTrafficPolicy],
    port: u32,
) -> TrafficPolicy {
    if let Some(pl) = settings
        .iter()
        .find(|s| s.port.is_some_and(|sel| sel.number == port))
    {
        p.load_balancer.clone_from(&pl.load_balancer);
        p.connection_pool.clone_from(&pl.connection_pool);
        p.outlier_detection.clone_from(&pl.outlier_detection);
        p.tls.clone_from(&pl.tls);
    }
    p
}

/// What one outbound cluster is built for.
#[derive(Clone, Copy)]
struct ClusterScope<'a> {
    ctx: &'a PushContext,
    node: &'a ProxyNode,
    svc: &'a Service,
    port: &'a ServicePort,
    dr: Option<(&'a Object, &'a DestinationRule)>,
}

fn add_cluster(
    scope: ClusterScope<'_>,
    name: &str,
    subset: &str,
    subset_labels: &BTreeMap<String, String>,
    policy: Option<&TrafficPolicy>,
    out: &mut Generated,
) {
    let ClusterScope {
        ctx, svc, port, dr, ..
    } = scope;
    // The endpoints' `tlsMode` metadata follows the rule's TLS mode when
    // it sets one (Istio's mtls checker), else their sidecar and
    // PeerAuthentication.
    let dr_tls_mode = endpoint_tls_mode(policy);
    let mut c = Cluster {
        name: name.to_owned(),
        connect_timeout: Some(pb::duration(ctx.mesh().connect_timeout())),
        lb_policy: cluster::LbPolicy::LeastRequest as i32,
        circuit_breakers: Some(default_circuit_breakers()),
        common_lb_config: Some(cluster::CommonLbConfig::default()),
        ..Default::default()
    };
    let mut eds = false;
    match svc.resolution {
        Resolution::Static => {
            c.cluster_discovery_type = Some(discovery(cluster::DiscoveryType::Eds));
            c.eds_cluster_config = Some(cluster::EdsClusterConfig {
                eds_config: Some(pb::ads()),
                service_name: name.to_owned(),
            });
            eds = true;
        }
        Resolution::Dns | Resolution::DnsRoundRobin => {
            let logical = svc.resolution == Resolution::DnsRoundRobin;
            c.cluster_discovery_type = Some(discovery(if logical {
                cluster::DiscoveryType::LogicalDns
            } else {
                cluster::DiscoveryType::StrictDns
            }));
            c.dns_lookup_family = cluster::DnsLookupFamily::V4Only as i32;
            let mut cla = load_assignment(ctx, svc, port, name, subset_labels, dr_tls_mode);
            if cla.endpoints.is_empty() {
                // A DNS ServiceEntry without endpoints resolves its own host.
                cla.endpoints.push(locality_group(
                    "",
                    vec![lb_endpoint(&svc.hostname, port.number, 1, true)],
                ));
            }
            if logical {
                // LOGICAL_DNS takes exactly one endpoint.
                cla.endpoints.truncate(1);
                if let Some(group) = cla.endpoints.first_mut() {
                    group.lb_endpoints.truncate(1);
                }
            }
            c.load_assignment = Some(cla);
        }
        Resolution::None => make_original_dst(&mut c),
    }
    if port.protocol == registry::Protocol::Http2 || port.protocol == registry::Protocol::Grpc {
        set_http2(&mut c);
    }
    let origin = dr
        .map(|(o, _)| format!("DestinationRule {}", o.key()))
        .unwrap_or_default();
    if let Some(policy) = policy {
        apply_policy(&mut c, policy, port, &origin, &mut out.diagnostics);
        if c.cluster_discovery_type == Some(discovery(cluster::DiscoveryType::OriginalDst)) {
            eds = false;
        }
    }
    apply_upstream_tls(scope, &mut c, subset, policy, &origin, &mut out.diagnostics);
    if eds {
        out.endpoints.push(load_assignment(
            ctx,
            svc,
            port,
            name,
            subset_labels,
            dr_tls_mode,
        ));
    }
    out.clusters.push(c);
}

fn discovery(t: cluster::DiscoveryType) -> cluster::ClusterDiscoveryType {
    cluster::ClusterDiscoveryType::Type(t as i32)
}

fn make_original_dst(c: &mut Cluster) {
    c.cluster_discovery_type = Some(discovery(cluster::DiscoveryType::OriginalDst));
    c.lb_policy = cluster::LbPolicy::ClusterProvided as i32;
    c.eds_cluster_config = None;
    c.load_assignment = None;
    c.lb_config = None;
}

/// Istio sets every threshold to the maximum (Envoy's defaults are small).
fn default_circuit_breakers() -> CircuitBreakers {
    CircuitBreakers {
        thresholds: vec![Thresholds {
            priority: RoutingPriority::Default as i32,
            max_connections: Some(pb::u32v(u32::MAX)),
            max_pending_requests: Some(pb::u32v(u32::MAX)),
            max_requests: Some(pb::u32v(u32::MAX)),
            max_retries: Some(pb::u32v(u32::MAX)),
            track_remaining: true,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn apply_policy(
    c: &mut Cluster,
    policy: &TrafficPolicy,
    port: &ServicePort,
    origin: &str,
    diags: &mut Vec<Diagnostic>,
) {
    if let Some(lb) = &policy.load_balancer {
        apply_lb(c, lb, origin, diags);
    }
    if let Some(pool) = &policy.connection_pool {
        apply_pool(c, pool, port);
    }
    if let Some(od) = &policy.outlier_detection {
        apply_outlier(c, od);
    }
    if policy.tunnel.is_some() || policy.proxy_protocol.is_some() || policy.retry_budget.is_some() {
        diags.push(Diagnostic::new(
            origin,
            "spec.trafficPolicy",
            "tunnel, proxyProtocol and retryBudget are not translated yet",
        ));
    }
}

fn apply_lb(c: &mut Cluster, lb: &LoadBalancerSettings, origin: &str, diags: &mut Vec<Diagnostic>) {
    use cluster::LbPolicy;
    if let Some(simple) = lb.simple {
        c.lb_policy = match simple {
            SimpleLb::Unspecified | SimpleLb::LeastConn | SimpleLb::LeastRequest => {
                LbPolicy::LeastRequest
            }
            SimpleLb::RoundRobin => LbPolicy::RoundRobin,
            SimpleLb::Random => LbPolicy::Random,
            SimpleLb::Passthrough => {
                make_original_dst(c);
                LbPolicy::ClusterProvided
            }
        } as i32;
    } else if let Some(hash) = &lb.consistent_hash {
        if let Some(maglev) = &hash.maglev {
            c.lb_policy = LbPolicy::Maglev as i32;
            c.lb_config = Some(cluster::LbConfig::MaglevLbConfig(cluster::MaglevLbConfig {
                table_size: maglev
                    .table_size
                    .map(|t| envoy_types::pb::google::protobuf::UInt64Value { value: t }),
            }));
        } else {
            let size = hash
                .ring_hash
                .as_ref()
                .and_then(|r| r.minimum_ring_size)
                .or(hash.minimum_ring_size)
                .unwrap_or(DEFAULT_RING_SIZE);
            c.lb_policy = LbPolicy::RingHash as i32;
            c.lb_config = Some(cluster::LbConfig::RingHashLbConfig(
                cluster::RingHashLbConfig {
                    minimum_ring_size: Some(envoy_types::pb::google::protobuf::UInt64Value {
                        value: size,
                    }),
                    ..Default::default()
                },
            ));
        }
    }
    if lb.locality_lb_setting.is_some() || lb.warmup.is_some() || lb.warmup_duration_secs.is_some()
    {
        diags.push(Diagnostic::new(
            origin,
            "spec.trafficPolicy.loadBalancer",
            "localityLbSetting and warmup are not translated yet",
        ));
    }
}

fn apply_pool(c: &mut Cluster, pool: &ConnectionPoolSettings, port: &ServicePort) {
    let to_u32 = |v: i32| u32::try_from(v).unwrap_or(0);
    if c.circuit_breakers.is_none() {
        c.circuit_breakers = Some(default_circuit_breakers());
    }
    let mut common = CommonHttp::default();
    let mut has_common = false;
    let mut h2 = false;
    if let Some(t) = c
        .circuit_breakers
        .as_mut()
        .and_then(|cb| cb.thresholds.first_mut())
    {
        if let Some(tcp) = &pool.tcp
            && let Some(max) = tcp.max_connections
        {
            t.max_connections = Some(pb::u32v(to_u32(max)));
        }
        if let Some(http) = &pool.http {
            if let Some(v) = http.http1_max_pending_requests {
                t.max_pending_requests = Some(pb::u32v(to_u32(v)));
            }
            if let Some(v) = http.http2_max_requests {
                t.max_requests = Some(pb::u32v(to_u32(v)));
            }
            if let Some(v) = http.max_retries {
                t.max_retries = Some(pb::u32v(to_u32(v)));
            }
        }
    }
    if let Some(tcp) = &pool.tcp {
        if let Some(ct) = tcp.connect_timeout {
            c.connect_timeout = Some(pb::duration(ct.get()));
        }
        if let Some(d) = tcp.max_connection_duration {
            common.max_connection_duration = Some(pb::duration(d.get()));
            has_common = true;
        }
        if let Some(ka) = &tcp.tcp_keepalive {
            c.upstream_connection_options = Some(UpstreamConnectionOptions {
                tcp_keepalive: Some(TcpKeepalive {
                    keepalive_probes: ka.probes.map(pb::u32v),
                    keepalive_time: ka.time.map(|d| pb::u32v(d.get().as_secs() as u32)),
                    keepalive_interval: ka.interval.map(|d| pb::u32v(d.get().as_secs() as u32)),
                }),
                ..Default::default()
            });
        }
    }
    if let Some(http) = &pool.http {
        if let Some(v) = http.max_requests_per_connection
            && v > 0
        {
            common.max_requests_per_connection = Some(pb::u32v(to_u32(v)));
            has_common = true;
        }
        if let Some(d) = http.idle_timeout {
            common.idle_timeout = Some(pb::duration(d.get()));
            has_common = true;
        }
        // Only plain HTTP/1.1 ports are upgraded; HTTP2/gRPC already are.
        h2 = http.h2_upgrade_policy == Some(H2UpgradePolicy::Upgrade) && port.protocol.is_http();
    }
    // istiod: without an HTTP idle timeout the TCP one applies to the
    // upstream HTTP connections too.
    if common.idle_timeout.is_none()
        && let Some(d) = pool.tcp.as_ref().and_then(|t| t.idle_timeout)
    {
        common.idle_timeout = Some(pb::duration(d.get()));
        has_common = true;
    }
    if has_common || h2 {
        let mut opts = current_http_options(c);
        if has_common {
            opts.common_http_protocol_options = Some(common);
        }
        if h2 {
            opts.upstream_protocol_options = Some(explicit_h2());
        }
        // Envoy requires the upstream protocol whenever these options exist.
        if opts.upstream_protocol_options.is_none() {
            opts.upstream_protocol_options = Some(explicit_h1());
        }
        c.typed_extension_protocol_options
            .insert(UPSTREAM_HTTP_OPTIONS.to_owned(), pb::any(&opts));
    }
}

fn current_http_options(c: &Cluster) -> HttpProtocolOptions {
    c.typed_extension_protocol_options
        .get(UPSTREAM_HTTP_OPTIONS)
        .and_then(|a| prost::Message::decode(a.value.as_slice()).ok())
        .unwrap_or_default()
}

fn explicit_h1() -> http_protocol_options::UpstreamProtocolOptions {
    http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
        http_protocol_options::ExplicitHttpConfig {
            protocol_config: Some(
                http_protocol_options::explicit_http_config::ProtocolConfig::HttpProtocolOptions(
                    Default::default(),
                ),
            ),
        },
    )
}

fn explicit_h2() -> http_protocol_options::UpstreamProtocolOptions {
    http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
        http_protocol_options::ExplicitHttpConfig {
            protocol_config: Some(
                http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                    Http2ProtocolOptions::default(),
                ),
            ),
        },
    )
}

fn set_http2(c: &mut Cluster) {
    let mut opts = current_http_options(c);
    opts.upstream_protocol_options = Some(explicit_h2());
    c.typed_extension_protocol_options
        .insert(UPSTREAM_HTTP_OPTIONS.to_owned(), pb::any(&opts));
}

fn apply_outlier(c: &mut Cluster, od: &OutlierDetection) {
    let enforcing = |v: u32| pb::u32v(if v > 0 { 100 } else { 0 });
    let mut out = EnvoyOutlierDetection {
        // Success-rate ejection is not part of Istio's API: off.
        enforcing_success_rate: Some(pb::u32v(0)),
        ..Default::default()
    };
    let five_xx = od
        .consecutive_5xx_errors
        .or_else(|| od.consecutive_errors.map(|v| u32::try_from(v).unwrap_or(0)));
    if let Some(v) = five_xx {
        out.consecutive_5xx = Some(pb::u32v(v));
        out.enforcing_consecutive_5xx = Some(enforcing(v));
    }
    if let Some(v) = od.consecutive_gateway_errors {
        out.consecutive_gateway_failure = Some(pb::u32v(v));
        out.enforcing_consecutive_gateway_failure = Some(enforcing(v));
    }
    if od.split_external_local_origin_errors == Some(true) {
        out.split_external_local_origin_errors = true;
        if let Some(v) = od.consecutive_local_origin_failures {
            out.consecutive_local_origin_failure = Some(pb::u32v(v));
            out.enforcing_consecutive_local_origin_failure = Some(enforcing(v));
        }
    }
    out.interval = Some(pb::duration(
        od.interval
            .map_or(api::defaults::OUTLIER_INTERVAL, |d| d.get()),
    ));
    out.base_ejection_time = Some(pb::duration(
        od.base_ejection_time
            .map_or(api::defaults::OUTLIER_BASE_EJECTION_TIME, |d| d.get()),
    ));
    if let Some(v) = od.max_ejection_percent {
        out.max_ejection_percent = Some(pb::u32v(u32::try_from(v).unwrap_or(0)));
    }
    c.outlier_detection = Some(out);
    // Istio: minHealthPercent (default 0) is Envoy's panic threshold.
    let min_health = od.min_health_percent.unwrap_or(0).max(0);
    c.common_lb_config
        .get_or_insert_with(Default::default)
        .healthy_panic_threshold = Some(Percent {
        value: f64::from(min_health),
    });
}

/// Whether an endpoint is labelled `tlsMode: istio` (Istio's
/// `checkMtlsEnabled`): what the rule's TLS mode says when it sets one,
/// else whether the endpoint runs a sidecar whose PeerAuthentication for
/// that port is not DISABLE.
fn endpoint_mtls(
    ctx: &PushContext,
    ep: &Endpoint,
    target_port: u32,
    dr_tls_mode: Option<ClientTlsMode>,
) -> bool {
    if let Some(mode) = dr_tls_mode {
        return mode == ClientTlsMode::IstioMutual;
    }
    ep.has_sidecar
        && security::peer_policy(ctx, &ep.namespace, &ep.labels)
            .for_port(security::endpoint_workload_port(ep, target_port))
            != MtlsMode::Disable
}

/// Upstream TLS of an outbound cluster (Istio's `buildUpstreamTLSSettings`
/// and `applyUpstreamTLSSettings`): the DestinationRule's `tls` when set,
/// else auto mTLS for mesh services whose namespace does not DISABLE it.
fn apply_upstream_tls(
    scope: ClusterScope<'_>,
    c: &mut Cluster,
    subset: &str,
    policy: Option<&TrafficPolicy>,
    origin: &str,
    diags: &mut Vec<Diagnostic>,
) {
    use security::tls;
    let ClusterScope {
        ctx,
        node,
        svc,
        port,
        dr,
    } = scope;
    let sni = format!("outbound_.{}_.{subset}_.{}", port.number, svc.hostname);
    let original_dst =
        c.cluster_discovery_type == Some(discovery(cluster::DiscoveryType::OriginalDst));
    let http2 = is_http2_cluster(c);
    if let Some(user) = policy.and_then(|p| p.tls.as_ref()) {
        match user.mode() {
            ClientTlsMode::Disable => {}
            ClientTlsMode::IstioMutual => {
                let sni = user.sni.clone().filter(|s| !s.is_empty()).unwrap_or(sni);
                let sans = if user.subject_alt_names.is_empty() {
                    security::service_identities(ctx, svc)
                } else {
                    user.subject_alt_names.clone()
                };
                c.transport_socket =
                    Some(tls::upstream_socket(&tls::istio_mutual(&sni, &sans, http2)));
            }
            ClientTlsMode::Simple | ClientTlsMode::Mutual => {
                let with_selector = dr.is_some_and(|(_, d)| d.workload_selector.is_some());
                let credential = user
                    .credential_name
                    .as_deref()
                    .is_some_and(|c| !c.is_empty());
                if credential && node.kind == NodeKind::Sidecar && !with_selector {
                    // istiod does not hand credentials to every sidecar a
                    // rule without workloadSelector reaches.
                    diags.push(Diagnostic::new(
                        origin,
                        "spec.trafficPolicy.tls.credentialName",
                        format!(
                            "credentialName applies to gateways or rules with a workloadSelector; cluster {} gets no TLS on this sidecar (as in Istio)",
                            c.name
                        ),
                    ));
                    return;
                }
                let sans = if user.subject_alt_names.is_empty() && svc.origin.kind == "ServiceEntry"
                {
                    security::service_identities(ctx, svc)
                } else {
                    user.subject_alt_names.clone()
                };
                let (ctx_tls, extras, problems) = tls::user_tls(user, &sans, http2);
                for m in problems {
                    diags.push(Diagnostic::new(origin, "spec.trafficPolicy.tls", m));
                }
                c.transport_socket = Some(tls::upstream_socket(&ctx_tls));
                if port.protocol.is_http() && (extras.auto_sni || extras.auto_san_validation) {
                    let mut opts = current_http_options(c);
                    let upstream = opts
                        .upstream_http_protocol_options
                        .get_or_insert_with(Default::default);
                    upstream.auto_sni = extras.auto_sni;
                    upstream.auto_san_validation = extras.auto_san_validation;
                    if opts.upstream_protocol_options.is_none() {
                        opts.upstream_protocol_options = Some(explicit_h1());
                    }
                    c.typed_extension_protocol_options
                        .insert(UPSTREAM_HTTP_OPTIONS.to_owned(), pb::any(&opts));
                }
            }
        }
        return;
    }
    if !ctx.mesh().enable_auto_mtls || svc.location == Location::MeshExternal {
        return;
    }
    if service_mtls_mode(ctx, svc, port, original_dst) == MtlsMode::Disable {
        return;
    }
    let sans = security::service_identities(ctx, svc);
    let ctx_tls = tls::istio_mutual(&sni, &sans, http2);
    if original_dst {
        // Headless: every instance has a sidecar (checked above).
        c.transport_socket = Some(tls::upstream_socket(&ctx_tls));
    } else {
        c.transport_socket_matches = tls::auto_mtls_matches(&ctx_tls);
    }
}

/// Istio's `BestEffortInferServiceMTLSMode` for a mesh service: DISABLE for
/// passthrough clusters unless every instance runs a sidecar, else the
/// namespace (or mesh) PeerAuthentication mode, PERMISSIVE by default.
fn service_mtls_mode(
    ctx: &PushContext,
    svc: &Service,
    port: &ServicePort,
    original_dst: bool,
) -> MtlsMode {
    if original_dst || svc.resolution == Resolution::None {
        let all = BTreeMap::new();
        let mut eps = ctx
            .registry()
            .endpoints(&svc.hostname, port.number, &all)
            .peekable();
        if eps.peek().is_none() {
            return MtlsMode::Disable;
        }
        if eps.any(|e| !e.has_sidecar) {
            return MtlsMode::Disable;
        }
    }
    match security::namespace_mtls_mode(ctx, &svc.namespace) {
        MtlsMode::Unset => MtlsMode::Permissive,
        m => m,
    }
}

/// Whether the cluster speaks HTTP/2 upstream (explicit h2 options).
fn is_http2_cluster(c: &Cluster) -> bool {
    matches!(
        current_http_options(c).upstream_protocol_options,
        Some(http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
            http_protocol_options::ExplicitHttpConfig {
                protocol_config: Some(
                    http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(_)
                ),
            }
        ))
    )
}

/// Endpoints of `svc` on `port` whose labels contain `subset_labels`,
/// grouped by locality (`region/zone/subzone`).
pub(crate) fn load_assignment(
    ctx: &PushContext,
    svc: &Service,
    port: &ServicePort,
    cluster_name: &str,
    subset_labels: &BTreeMap<String, String>,
    dr_tls_mode: Option<ClientTlsMode>,
) -> ClusterLoadAssignment {
    let mut by_locality: BTreeMap<&str, Vec<&Endpoint>> = BTreeMap::new();
    for ep in ctx
        .registry()
        .endpoints(&svc.hostname, port.number, subset_labels)
    {
        by_locality
            .entry(ep.locality.as_str())
            .or_default()
            .push(ep);
    }
    ClusterLoadAssignment {
        cluster_name: cluster_name.to_owned(),
        endpoints: by_locality
            .into_iter()
            .map(|(locality, eps)| {
                let lbs = eps
                    .iter()
                    .map(|e| {
                        let p = if e.port == 0 {
                            port.target_port
                        } else {
                            e.port
                        };
                        let mut lb = lb_endpoint(&e.address, p, e.weight, e.healthy);
                        if endpoint_mtls(ctx, e, port.target_port, dr_tls_mode) {
                            lb.metadata = Some(security::tls::endpoint_tls_metadata());
                        }
                        lb
                    })
                    .collect();
                locality_group(locality, lbs)
            })
            .collect(),
        ..Default::default()
    }
}

fn lb_endpoint(address: &str, port: u32, weight: u32, healthy: bool) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(EnvoyEndpoint {
            address: Some(pb::socket(address, port)),
            ..Default::default()
        })),
        health_status: if healthy {
            HealthStatus::Healthy
        } else {
            HealthStatus::Unhealthy
        } as i32,
        load_balancing_weight: Some(pb::u32v(weight.max(1))),
        ..Default::default()
    }
}

fn locality_group(locality: &str, lb_endpoints: Vec<LbEndpoint>) -> LocalityLbEndpoints {
    let mut parts = locality.splitn(3, '/');
    let weight: u32 = lb_endpoints
        .iter()
        .map(|e| e.load_balancing_weight.as_ref().map_or(1, |w| w.value))
        .fold(0u32, u32::saturating_add);
    LocalityLbEndpoints {
        locality: Some(Locality {
            region: parts.next().unwrap_or_default().to_owned(),
            zone: parts.next().unwrap_or_default().to_owned(),
            sub_zone: parts.next().unwrap_or_default().to_owned(),
        }),
        lb_endpoints,
        load_balancing_weight: Some(pb::u32v(weight.max(1))),
        ..Default::default()
    }
}

/// The route hash policy of a destination whose DestinationRule (or subset)
/// asks for consistent hashing; empty otherwise.
pub(crate) fn hash_policy(
    node: &ProxyNode,
    ctx: &PushContext,
    host: &str,
    port: u32,
    subset: &str,
) -> Vec<HashPolicy> {
    let Some(svc) = ctx.registry().service(host) else {
        return Vec::new();
    };
    let Some((_, dr)) = ctx.destination_rule(node, svc) else {
        return Vec::new();
    };
    let top = dr.traffic_policy.as_ref();
    let policy = if subset.is_empty() {
        merge_policy(None, top, port)
    } else {
        let sub = dr.subsets.iter().find(|s| s.name == subset);
        merge_policy(top, sub.and_then(|s| s.traffic_policy.as_ref()), port)
    };
    policy
        .and_then(|p| p.load_balancer)
        .filter(|lb| lb.simple.is_none())
        .and_then(|lb| lb.consistent_hash)
        .and_then(|h| consistent_hash_policy(&h))
        .into_iter()
        .collect()
}

fn consistent_hash_policy(h: &ConsistentHashLb) -> Option<HashPolicy> {
    use hash_policy::PolicySpecifier;
    let spec = if let Some(name) = &h.http_header_name {
        PolicySpecifier::Header(hash_policy::Header {
            header_name: name.clone(),
            ..Default::default()
        })
    } else if let Some(cookie) = &h.http_cookie {
        PolicySpecifier::Cookie(hash_policy::Cookie {
            name: cookie.name.clone(),
            ttl: cookie.ttl.map(|d| pb::duration(d.get())),
            path: cookie.path.clone().unwrap_or_default(),
            attributes: cookie
                .attributes
                .iter()
                .map(|a| hash_policy::CookieAttribute {
                    name: a.name.clone(),
                    value: a.value.clone().unwrap_or_default(),
                })
                .collect(),
        })
    } else if h.use_source_ip == Some(true) {
        PolicySpecifier::ConnectionProperties(hash_policy::ConnectionProperties { source_ip: true })
    } else if let Some(name) = &h.http_query_parameter_name {
        PolicySpecifier::QueryParameter(hash_policy::QueryParameter { name: name.clone() })
    } else {
        return None;
    };
    Some(HashPolicy {
        policy_specifier: Some(spec),
        terminal: false,
    })
}

/// `BlackHoleCluster`: a static cluster without endpoints.
pub(crate) fn blackhole(ctx: &PushContext) -> Cluster {
    Cluster {
        name: BLACKHOLE_CLUSTER.to_owned(),
        cluster_discovery_type: Some(discovery(cluster::DiscoveryType::Static)),
        connect_timeout: Some(pb::duration(ctx.mesh().connect_timeout())),
        ..Default::default()
    }
}

/// `PassthroughCluster` (and `InboundPassthroughCluster`): the original
/// destination of a captured connection.
pub(crate) fn passthrough(ctx: &PushContext, name: &str, bind: Option<&str>) -> Cluster {
    let mut c = Cluster {
        name: name.to_owned(),
        connect_timeout: Some(pb::duration(ctx.mesh().connect_timeout())),
        circuit_breakers: Some(default_circuit_breakers()),
        ..Default::default()
    };
    make_original_dst(&mut c);
    if let Some(addr) = bind {
        c.upstream_bind_config = Some(BindConfig {
            source_address: pb::socket(addr, 0).address.and_then(|a| match a {
                envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(s) => {
                    Some(s)
                }
                _ => None,
            }),
            ..Default::default()
        });
    }
    c
}

/// `inbound|<port>||` as a static cluster to the local application
/// (Trellis local mode).
pub(crate) fn inbound_static(
    ctx: &PushContext,
    target_port: u32,
    app_port: u32,
    http2: bool,
) -> Cluster {
    let name = inbound_name(target_port);
    let mut c = Cluster {
        name: name.clone(),
        cluster_discovery_type: Some(discovery(cluster::DiscoveryType::Static)),
        connect_timeout: Some(pb::duration(ctx.mesh().connect_timeout())),
        circuit_breakers: Some(default_circuit_breakers()),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name,
            endpoints: vec![locality_group(
                "",
                vec![lb_endpoint("127.0.0.1", app_port, 1, true)],
            )],
            ..Default::default()
        }),
        ..Default::default()
    };
    if http2 {
        set_http2(&mut c);
    }
    c
}

/// `inbound|<port>||` as an ORIGINAL_DST cluster sourced from 127.0.0.6
/// (capture mode, as Istio does).
pub(crate) fn inbound_original_dst(ctx: &PushContext, target_port: u32, http2: bool) -> Cluster {
    let mut c = passthrough(
        ctx,
        &inbound_name(target_port),
        Some(INBOUND_PASSTHROUGH_BIND),
    );
    if http2 {
        set_http2(&mut c);
    }
    c
}

/// For tests and tools: the static form of a cluster (EDS replaced by the
/// matching assignment), as a bootstrap's `static_resources` needs it.
pub fn inline_endpoints(clusters: &[Cluster], endpoints: &[ClusterLoadAssignment]) -> Vec<Cluster> {
    let by_name: HashMap<&str, &ClusterLoadAssignment> = endpoints
        .iter()
        .map(|e| (e.cluster_name.as_str(), e))
        .collect();
    clusters
        .iter()
        .map(|c| {
            let mut c = c.clone();
            if c.cluster_discovery_type == Some(discovery(cluster::DiscoveryType::Eds)) {
                c.cluster_discovery_type = Some(discovery(cluster::DiscoveryType::Static));
                c.eds_cluster_config = None;
                c.load_assignment = Some(by_name.get(c.name.as_str()).map_or_else(
                    || ClusterLoadAssignment {
                        cluster_name: c.name.clone(),
                        ..Default::default()
                    },
                    |e| (*e).clone(),
                ));
            }
            c
        })
        .collect()
}

/// Http1 options for listeners accepting absolute-form (proxy) requests.
pub(crate) fn http1_proxy_options() -> Http1ProtocolOptions {
    Http1ProtocolOptions {
        allow_absolute_url: Some(pb::boolv(true)),
        ..Default::default()
    }
}
