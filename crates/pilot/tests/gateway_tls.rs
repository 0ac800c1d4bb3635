//! Gateway TLS servers (SIMPLE, MUTUAL, PASSTHROUGH, TCP), their SDS
//! secrets, and VirtualService `tcp`/`tls` routes on gateways and sidecars:
//! the shapes istiod gives them.

mod support;

use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::virtual_host::TlsRequirementType;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    DownstreamTlsContext, common_tls_context, secret, tls_parameters::TlsProtocol,
};
use pilot::{Generated, NodeKind, ProxyNode, PushContext};
use registry::Protocol;
use registry::secret::TlsCredential;
use support::*;

const CERT: &[u8] = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
const KEY: &[u8] = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
const CA: &[u8] = b"-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----\n";

fn credential(name: &str, ca: bool) -> TlsCredential {
    TlsCredential {
        namespace: "istio-system".into(),
        name: name.into(),
        origin: "secrets.yaml".into(),
        cert_chain: Some(CERT.to_vec()),
        private_key: Some(KEY.to_vec()),
        ca: ca.then(|| CA.to_vec()),
        crl: None,
    }
}

fn registry_with_tcp() -> registry::Registry {
    let mut reg = bookinfo_registry();
    for c in [
        credential("bookinfo-cred", false),
        credential("mtls-cred", true),
    ] {
        reg.credentials.insert(c.key(), c);
    }
    for (name, port, proto) in [
        ("tcp-echo", 9000, Protocol::Tcp),
        ("secure", 8443, Protocol::Tls),
    ] {
        let svc = service(name, "default", &[(port, proto)]);
        let eps = ["v1", "v2"]
            .iter()
            .enumerate()
            .map(|(i, v)| {
                endpoint(
                    &format!("10.0.1.{}", i + 1),
                    port,
                    &[("app", name), ("version", v)],
                    "",
                )
            })
            .collect();
        reg.endpoints.insert((svc.hostname.clone(), port), eps);
        reg.services.insert(svc.hostname.clone(), svc);
    }
    reg
}

fn ingress() -> ProxyNode {
    let mut gw = ProxyNode::sidecar(
        "istio-system",
        &[("istio", "ingressgateway")],
        Some(Default::default()),
    );
    gw.kind = NodeKind::Router;
    gw
}

const GATEWAY: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: [bookinfo.example.com]
    tls: {httpsRedirect: true}
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [bookinfo.example.com]
    tls:
      mode: SIMPLE
      credentialName: bookinfo-cred
      minProtocolVersion: TLSV1_2
      maxProtocolVersion: TLSV1_3
      cipherSuites: [ECDHE-ECDSA-AES128-GCM-SHA256]
  - port: {number: 443, name: https-mtls, protocol: HTTPS}
    hosts: [mtls.example.com]
    tls: {mode: MUTUAL, credentialName: mtls-cred, subjectAltNames: [client.example.com]}
  - port: {number: 443, name: https-missing, protocol: HTTPS}
    hosts: [missing.example.com]
    tls: {mode: SIMPLE, credentialName: nowhere}
  - port: {number: 8443, name: tls, protocol: TLS}
    hosts: [secure.example.com]
    tls: {mode: PASSTHROUGH}
  - port: {number: 31400, name: tcp, protocol: TCP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bookinfo, namespace: default}
spec:
  hosts: [bookinfo.example.com, mtls.example.com, missing.example.com]
  gateways: [istio-system/gw]
  http:
  - route:
    - destination: {host: productpage, port: {number: 9080}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: secure, namespace: default}
spec:
  hosts: [secure.example.com]
  gateways: [istio-system/gw]
  tls:
  - match:
    - sniHosts: [secure.example.com]
    route:
    - destination: {host: secure, port: {number: 8443}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: tcp-echo, namespace: default}
spec:
  hosts: ["*"]
  gateways: [istio-system/gw]
  tcp:
  - match:
    - port: 31400
    route:
    - destination: {host: tcp-echo, subset: v1}
      weight: 80
    - destination: {host: tcp-echo, subset: v2}
      weight: 20
"#;

fn gateway_ctx() -> PushContext {
    ctx_with(GATEWAY, registry_with_tcp(), api::MeshConfig::default())
}

fn chain_for<'a>(l: &'a Listener, sni: &str) -> &'a FilterChain {
    l.filter_chains
        .iter()
        .find(|c| {
            c.filter_chain_match
                .as_ref()
                .is_some_and(|m| m.server_names.iter().any(|s| s == sni))
        })
        .unwrap_or_else(|| panic!("no chain for SNI {sni} in {}", l.name))
}

fn downstream(c: &FilterChain) -> DownstreamTlsContext {
    let ts = c.transport_socket.as_ref().expect("transport socket");
    match &ts.config_type {
        Some(
            envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(
                any,
            ),
        ) => decode(any),
        other => panic!("no typed config: {other:?}"),
    }
}

fn hcm(c: &FilterChain) -> HttpConnectionManager {
    let f = c.filters.last().expect("filter");
    match &f.config_type {
        Some(filter::ConfigType::TypedConfig(any)) => decode(any),
        other => panic!("{other:?}"),
    }
}

fn tcp_proxy(c: &FilterChain) -> TcpProxy {
    let f = c.filters.last().expect("filter");
    assert_eq!(f.name, "envoy.filters.network.tcp_proxy");
    match &f.config_type {
        Some(filter::ConfigType::TypedConfig(any)) => decode(any),
        other => panic!("{other:?}"),
    }
}

fn gen_gateway() -> Generated {
    generate(&ingress(), &gateway_ctx())
}

#[test]
fn simple_server_terminates_tls_with_sds_credential() {
    let g = gen_gateway();
    let l = g.listener("0.0.0.0_443").expect("listener 0.0.0.0_443");
    assert!(
        l.listener_filters
            .iter()
            .any(|f| f.name == "envoy.filters.listener.tls_inspector"),
        "SNI chains need the TLS inspector"
    );
    let c = chain_for(l, "bookinfo.example.com");
    let h = hcm(c);
    match &h.route_specifier {
        Some(RouteSpecifier::Rds(rds)) => {
            assert_eq!(rds.route_config_name, "https.443.https.gw.istio-system");
        }
        other => panic!("{other:?}"),
    }
    let vh = vhost(
        &g,
        "https.443.https.gw.istio-system",
        "bookinfo.example.com:443",
    );
    assert_eq!(
        cluster_of(&vh.routes[0]),
        "outbound|9080||productpage.default.svc.cluster.local"
    );
    let dtc = downstream(c);
    assert_eq!(dtc.require_client_certificate.map(|b| b.value), Some(false));
    let common = dtc.common_tls_context.expect("common");
    assert_eq!(common.alpn_protocols, ["h2", "http/1.1"]);
    let sds = &common.tls_certificate_sds_secret_configs;
    assert_eq!(sds.len(), 1);
    assert_eq!(sds[0].name, "kubernetes://bookinfo-cred");
    assert!(matches!(
        sds[0]
            .sds_config
            .as_ref()
            .and_then(|c| c.config_source_specifier.as_ref()),
        Some(
            envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier::Ads(_)
        )
    ));
    let params = common.tls_params.expect("tls params");
    assert_eq!(
        params.tls_minimum_protocol_version,
        TlsProtocol::TlSv12 as i32
    );
    assert_eq!(
        params.tls_maximum_protocol_version,
        TlsProtocol::TlSv13 as i32
    );
    assert_eq!(params.cipher_suites, ["ECDHE-ECDSA-AES128-GCM-SHA256"]);

    let s = g
        .secrets
        .iter()
        .find(|s| s.name == "kubernetes://bookinfo-cred")
        .expect("secret served");
    match &s.r#type {
        Some(secret::Type::TlsCertificate(t)) => {
            assert!(t.certificate_chain.is_some() && t.private_key.is_some());
        }
        other => panic!("{other:?}"),
    }
    // Secrets reach gateways only.
    assert!(generate(&productpage(), &gateway_ctx()).secrets.is_empty());
}

#[test]
fn mutual_server_requires_and_verifies_client_certificates() {
    let g = gen_gateway();
    let l = g.listener("0.0.0.0_443").expect("listener");
    let dtc = downstream(chain_for(l, "mtls.example.com"));
    assert_eq!(dtc.require_client_certificate.map(|b| b.value), Some(true));
    let common = dtc.common_tls_context.expect("common");
    let Some(common_tls_context::ValidationContextType::CombinedValidationContext(cvc)) =
        common.validation_context_type
    else {
        panic!("no combined validation context");
    };
    assert_eq!(
        cvc.validation_context_sds_secret_config
            .map(|s| s.name)
            .as_deref(),
        Some("kubernetes://mtls-cred-cacert")
    );
    let sans = cvc
        .default_validation_context
        .expect("default")
        .match_typed_subject_alt_names;
    assert_eq!(sans.len(), 1);
    let ca = g
        .secrets
        .iter()
        .find(|s| s.name == "kubernetes://mtls-cred-cacert")
        .expect("CA secret");
    assert!(matches!(
        ca.r#type,
        Some(secret::Type::ValidationContext(_))
    ));
}

#[test]
fn missing_credential_leaves_that_server_out_only() {
    let g = gen_gateway();
    let l = g.listener("0.0.0.0_443").expect("listener");
    assert!(!l.filter_chains.iter().any(|c| {
        c.filter_chain_match
            .as_ref()
            .is_some_and(|m| m.server_names.iter().any(|s| s == "missing.example.com"))
    }));
    assert_eq!(l.filter_chains.len(), 2);
    assert!(
        g.diagnostics
            .iter()
            .any(|d| d.field == "spec.servers[3].tls" && d.message.contains("nowhere")),
        "{:?}",
        g.diagnostics
    );
    assert!(!g.secrets.iter().any(|s| s.name.contains("nowhere")));
}

#[test]
fn https_redirect_on_the_plain_server() {
    let g = gen_gateway();
    let vh = vhost(&g, "http.8080", "bookinfo.example.com:8080");
    assert_eq!(vh.require_tls, TlsRequirementType::All as i32);
}

#[test]
fn passthrough_routes_by_sni() {
    let g = gen_gateway();
    let l = g.listener("0.0.0.0_8443").expect("listener 0.0.0.0_8443");
    let c = chain_for(l, "secure.example.com");
    assert!(
        c.transport_socket.is_none(),
        "passthrough does not terminate"
    );
    let p = tcp_proxy(c);
    assert_eq!(
        p.cluster_specifier,
        Some(tcp_proxy::ClusterSpecifier::Cluster(
            "outbound|8443||secure.default.svc.cluster.local".into()
        ))
    );
}

#[test]
fn tcp_server_follows_weighted_tcp_routes() {
    let g = gen_gateway();
    let l = g.listener("0.0.0.0_31400").expect("listener 0.0.0.0_31400");
    assert_eq!(l.filter_chains.len(), 1);
    let p = tcp_proxy(&l.filter_chains[0]);
    assert_eq!(p.stat_prefix, "tcp-echo.default");
    let Some(tcp_proxy::ClusterSpecifier::WeightedClusters(w)) = p.cluster_specifier else {
        panic!("not weighted");
    };
    let got: Vec<(String, u32)> = w
        .clusters
        .iter()
        .map(|c| (c.name.clone(), c.weight))
        .collect();
    assert_eq!(
        got,
        [
            (
                "outbound|9000|v1|tcp-echo.default.svc.cluster.local".to_owned(),
                80
            ),
            (
                "outbound|9000|v2|tcp-echo.default.svc.cluster.local".to_owned(),
                20
            ),
        ]
    );
}

const MESH_TCP: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: tcp-echo, namespace: default}
spec:
  hosts: [tcp-echo]
  tcp:
  - route:
    - destination: {host: tcp-echo, subset: v1}
      weight: 50
    - destination: {host: tcp-echo, subset: v2}
      weight: 50
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: secure, namespace: default}
spec:
  hosts: [secure]
  tls:
  - match:
    - sniHosts: [a.secure.example.com]
    route:
    - destination: {host: secure, subset: v2}
"#;

#[test]
fn sidecar_tcp_listener_follows_the_virtual_service() {
    let ctx = ctx_with(MESH_TCP, registry_with_tcp(), api::MeshConfig::default());
    let node = ProxyNode::sidecar("default", &[("app", "productpage")], None);
    let g = generate(&node, &ctx);
    let l = g.listener("0.0.0.0_9000").expect("0.0.0.0_9000");
    let p = tcp_proxy(l.filter_chains.last().expect("chain"));
    assert!(matches!(
        p.cluster_specifier,
        Some(tcp_proxy::ClusterSpecifier::WeightedClusters(_))
    ));
    // TLS service: an SNI chain from the `tls` route, then the service.
    let l = g.listener("0.0.0.0_8443").expect("0.0.0.0_8443");
    let c = chain_for(l, "a.secure.example.com");
    assert_eq!(
        tcp_proxy(c).cluster_specifier,
        Some(tcp_proxy::ClusterSpecifier::Cluster(
            "outbound|8443|v2|secure.default.svc.cluster.local".into()
        ))
    );
    assert_eq!(
        tcp_proxy(l.filter_chains.last().expect("default")).cluster_specifier,
        Some(tcp_proxy::ClusterSpecifier::Cluster(
            "outbound|8443||secure.default.svc.cluster.local".into()
        ))
    );
}

#[test]
fn local_sidecar_gets_a_listener_per_tcp_service_port() {
    let mut reg = registry_with_tcp();
    reg.local_tcp_outbound.insert(
        "default/productpage-v1".into(),
        vec![("tcp-echo.default.svc.cluster.local".into(), 9000, 20123)],
    );
    let ctx = ctx_with(MESH_TCP, reg, api::MeshConfig::default());
    let g = generate(&productpage(), &ctx);
    let l = g
        .listener("outbound_tcp_9000_tcp-echo.default.svc.cluster.local")
        .expect("local TCP listener");
    assert_eq!(l.address, Some(pilot_socket("127.0.0.1", 20123)));
    let p = tcp_proxy(&l.filter_chains[0]);
    assert!(matches!(
        p.cluster_specifier,
        Some(tcp_proxy::ClusterSpecifier::WeightedClusters(_))
    ));
    // The TLS service has no local port: reported, not routed.
    assert!(
        g.diagnostics.iter().any(|d| d
            .message
            .contains("no local listener for TCP secure.default.svc.cluster.local:8443")),
        "{:?}",
        g.diagnostics
    );
}

fn pilot_socket(ip: &str, port: u32) -> envoy_types::pb::envoy::config::core::v3::Address {
    use envoy_types::pb::envoy::config::core::v3::{
        Address, SocketAddress, address, socket_address,
    };
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.into(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

#[test]
fn destination_rule_credentials_are_served_to_gateways() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: secure, namespace: default}
spec:
  host: secure.default.svc.cluster.local
  trafficPolicy:
    tls: {mode: MUTUAL, credentialName: mtls-cred}
"#;
    let ctx = ctx_with(yaml, registry_with_tcp(), api::MeshConfig::default());
    let g = generate(&ingress(), &ctx);
    let names: Vec<&str> = g.secrets.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        ["kubernetes://mtls-cred", "kubernetes://mtls-cred-cacert"]
    );
}

#[test]
fn istio_mutual_and_auto_passthrough_servers() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: east-west, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 15443, name: tls, protocol: TLS}
    hosts: ["*.local"]
    tls: {mode: AUTO_PASSTHROUGH}
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [internal.example.com]
    tls: {mode: ISTIO_MUTUAL}
"#;
    let ctx = ctx_with(yaml, registry_with_tcp(), api::MeshConfig::default());
    let g = generate(&ingress(), &ctx);
    let l = g
        .listener("0.0.0.0_15443")
        .expect("auto passthrough listener");
    let c = chain_for(l, "outbound_.9080_._.reviews.default.svc.cluster.local");
    assert_eq!(
        tcp_proxy(c).cluster_specifier,
        Some(tcp_proxy::ClusterSpecifier::Cluster(
            "outbound|9080||reviews.default.svc.cluster.local".into()
        ))
    );
    let l = g.listener("0.0.0.0_443").expect("istio mutual listener");
    let dtc = downstream(chain_for(l, "internal.example.com"));
    assert_eq!(dtc.require_client_certificate.map(|b| b.value), Some(true));
    let common = dtc.common_tls_context.expect("common");
    assert_eq!(common.tls_certificate_sds_secret_configs[0].name, "default");
    assert!(
        g.secrets.is_empty(),
        "the workload certificate comes from the agent"
    );
}

#[test]
fn sidecar_tcp_match_on_destination_subnets_gets_its_own_chain() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: tcp-echo, namespace: default}
spec:
  hosts: [tcp-echo]
  tcp:
  - match:
    - destinationSubnets: [10.1.0.0/16]
    route:
    - destination: {host: tcp-echo, subset: v2}
  - match:
    - sourceLabels: {app: nobody}
    route:
    - destination: {host: tcp-echo, subset: v1}
"#;
    let ctx = ctx_with(yaml, registry_with_tcp(), api::MeshConfig::default());
    let node = ProxyNode::sidecar("default", &[("app", "productpage")], None);
    let g = generate(&node, &ctx);
    let l = g.listener("0.0.0.0_9000").expect("0.0.0.0_9000");
    assert_eq!(l.filter_chains.len(), 2, "{:#?}", l.filter_chains);
    let ranges = &l.filter_chains[0]
        .filter_chain_match
        .as_ref()
        .expect("match")
        .prefix_ranges;
    assert_eq!(ranges[0].address_prefix, "10.1.0.0");
    // The sourceLabels match is not this proxy's: the service itself is the fallback.
    assert_eq!(
        tcp_proxy(&l.filter_chains[1]).cluster_specifier,
        Some(tcp_proxy::ClusterSpecifier::Cluster(
            "outbound|9000||tcp-echo.default.svc.cluster.local".into()
        ))
    );
}

/// istiod's DestinationRule TCP settings: `connectionPool.tcp.idleTimeout`
/// and `maxConnectionDuration` on the `tcp_proxy` (weighted routes take the
/// first destination's rule), source-IP hashing, and the TCP idle timeout
/// as the HTTP one when that is unset.
#[test]
fn destination_rule_tcp_settings_reach_tcp_proxy_and_cluster() {
    let rule = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: echo, namespace: default}\nspec:\n  host: tcp-echo\n  trafficPolicy:\n    connectionPool:\n      tcp: {idleTimeout: 30s, maxConnectionDuration: 1h}\n    loadBalancer:\n      consistentHash: {useSourceIp: true}\n  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}\n";
    let node = ProxyNode::sidecar("default", &[("app", "productpage")], None);
    let secs = |s: i64| {
        Some(envoy_types::pb::google::protobuf::Duration {
            seconds: s,
            nanos: 0,
        })
    };
    // No VirtualService: the service's own chain.
    let g = generate(
        &node,
        &ctx_with(rule, registry_with_tcp(), api::MeshConfig::default()),
    );
    let l = g.listener("0.0.0.0_9000").expect("0.0.0.0_9000");
    let p = tcp_proxy(l.filter_chains.last().expect("chain"));
    assert_eq!(p.idle_timeout, secs(30));
    assert_eq!(p.max_downstream_connection_duration, secs(3600));
    assert_eq!(p.hash_policy.len(), 1);
    // Weighted VirtualService routes: the same rule applies.
    let both = format!("{MESH_TCP}---\n{rule}");
    let g = generate(
        &node,
        &ctx_with(&both, registry_with_tcp(), api::MeshConfig::default()),
    );
    let l = g.listener("0.0.0.0_9000").expect("0.0.0.0_9000");
    let p = tcp_proxy(l.filter_chains.last().expect("chain"));
    assert!(matches!(
        p.cluster_specifier,
        Some(tcp_proxy::ClusterSpecifier::WeightedClusters(_))
    ));
    assert_eq!(p.idle_timeout, secs(30));
    // Without a rule, Envoy's default (unset here).
    let g = generate(
        &node,
        &ctx_with(MESH_TCP, registry_with_tcp(), api::MeshConfig::default()),
    );
    let l = g.listener("0.0.0.0_9000").expect("0.0.0.0_9000");
    assert_eq!(
        tcp_proxy(l.filter_chains.last().expect("chain")).idle_timeout,
        None
    );
    // The cluster's upstream idle timeout falls back to the TCP one.
    let c = g_cluster_idle(&generate(
        &node,
        &ctx_with(rule, registry_with_tcp(), api::MeshConfig::default()),
    ));
    assert_eq!(c, secs(30));
}

fn g_cluster_idle(g: &Generated) -> Option<envoy_types::pb::google::protobuf::Duration> {
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
    let c = g
        .cluster("outbound|9000||tcp-echo.default.svc.cluster.local")
        .expect("cluster");
    let opts: HttpProtocolOptions = decode(
        c.typed_extension_protocol_options
            .get("envoy.extensions.upstreams.http.v3.HttpProtocolOptions")
            .expect("options"),
    );
    opts.common_http_protocol_options
        .and_then(|o| o.idle_timeout)
}

/// A server's `bind` gets its own listener `<bind>_<port>` on that address,
/// and its route table names carry the address, as istiod names them.
#[test]
fn bind_gets_its_own_listener_and_route_names() {
    let gw = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*"]
  - port: {number: 8080, name: http-internal, protocol: HTTP}
    bind: 10.1.2.3
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: pp, namespace: istio-system}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - route:
    - destination: {host: productpage.default.svc.cluster.local, port: {number: 9080}}
"#;
    let g = generate(
        &ingress(),
        &ctx_with(gw, registry_with_tcp(), api::MeshConfig::default()),
    );
    let wild = g.listener("0.0.0.0_8080").expect("0.0.0.0_8080");
    let bound = g.listener("10.1.2.3_8080").expect("10.1.2.3_8080");
    let address = |l: &Listener| match l.address.as_ref().and_then(|a| a.address.as_ref()) {
        Some(envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(s)) => {
            s.address.clone()
        }
        _ => String::new(),
    };
    assert_eq!(address(wild), "127.0.0.1", "local-mode gateway default");
    assert_eq!(address(bound), "10.1.2.3");
    assert!(g.route("http.8080").is_some());
    assert!(g.route("http.8080.10.1.2.3").is_some());
}

/// Capture mode: TCP services sharing a port get a listener per VIP
/// (`<vip>_<port>`), and the one without a VIP the wildcard listener.
#[test]
fn tcp_services_sharing_a_port_get_listeners_per_vip() {
    let mut reg = registry_with_tcp();
    for (name, vip) in [("db-a", "10.9.0.1"), ("db-b", "10.9.0.2")] {
        let mut svc = service(name, "default", &[(9000, Protocol::Tcp)]);
        svc.addresses = vec![vip.to_owned()];
        reg.services.insert(svc.hostname.clone(), svc);
    }
    let node = ProxyNode::sidecar("default", &[("app", "productpage")], None);
    let g = generate(
        &node,
        &ctx_with("", reg.clone(), api::MeshConfig::default()),
    );
    for (listener, host) in [
        ("10.9.0.1_9000", "db-a"),
        ("10.9.0.2_9000", "db-b"),
        ("0.0.0.0_9000", "tcp-echo"),
    ] {
        let l = g.listener(listener).unwrap_or_else(|| panic!("{listener}"));
        assert_eq!(
            tcp_proxy(l.filter_chains.last().expect("chain")).cluster_specifier,
            Some(tcp_proxy::ClusterSpecifier::Cluster(format!(
                "outbound|9000||{host}.default.svc.cluster.local"
            ))),
            "{listener}"
        );
    }
    // A second service without a VIP: neither is routed, and it is said.
    let svc = service("db-c", "default", &[(9000, Protocol::Tcp)]);
    reg.services.insert(svc.hostname.clone(), svc);
    let g = generate(&node, &ctx_with("", reg, api::MeshConfig::default()));
    assert!(g.listener("0.0.0.0_9000").is_none());
    assert!(g.listener("10.9.0.1_9000").is_some());
    assert!(
        g.diagnostics
            .iter()
            .any(|d| d.message.contains("without a VIP")),
        "{:?}",
        g.diagnostics
    );
}
