//! Security translation, one behaviour per test: PeerAuthentication →
//! inbound mTLS chains, auto mTLS and DestinationRule TLS → upstream
//! transport sockets, RequestAuthentication → jwt_authn, and
//! AuthorizationPolicy → RBAC / ext_authz, with assertions on the decoded
//! Envoy protos.

mod support;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{
    TransportSocket, config_source, data_source, grpc_service, transport_socket,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, filter};
use envoy_types::pb::envoy::config::rbac::v3::{
    Permission, Policy, Principal, permission, principal, rbac,
};
use envoy_types::pb::envoy::config::route::v3::header_matcher;
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::{ExtAuthz, ext_authz};
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{
    JwtAuthentication, jwt_provider, jwt_requirement, requirement_rule,
};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::ext_authz::v3::ExtAuthz as TcpExtAuthz;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, DownstreamTlsContext, SdsSecretConfig, UpstreamTlsContext,
    common_tls_context, subject_alt_name_matcher::SanType, tls_parameters::TlsProtocol,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher, value_matcher};
use envoy_types::pb::google::protobuf::value::Kind;
use pilot::{Generated, NodeKind, ProxyNode};
use registry::{Location, Protocol, Registry};
use support::*;

const PRODUCTPAGE: &str = "productpage.default.svc.cluster.local";

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

fn chains<'a>(g: &'a Generated, listener: &str) -> &'a [FilterChain] {
    &g.listener(listener)
        .unwrap_or_else(|| panic!("no listener {listener}"))
        .filter_chains
}

fn typed(f: &Filter) -> &envoy_types::pb::google::protobuf::Any {
    match &f.config_type {
        Some(filter::ConfigType::TypedConfig(a)) => a,
        other => panic!("{other:?}"),
    }
}

fn hcm(chain: &FilterChain) -> HttpConnectionManager {
    let f = chain
        .filters
        .iter()
        .find(|f| f.name == "envoy.filters.network.http_connection_manager")
        .expect("hcm");
    decode(typed(f))
}

/// The HTTP filters, without Istio's telemetry extensions (metadata
/// exchange, stats), which every connection manager gets.
fn filter_names(h: &HttpConnectionManager) -> Vec<String> {
    h.http_filters
        .iter()
        .map(|f| f.name.clone())
        .filter(|n| !n.starts_with("istio."))
        .collect()
}

fn http_config(
    f: &envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter,
) -> &envoy_types::pb::google::protobuf::Any {
    match &f.config_type {
        Some(http_filter::ConfigType::TypedConfig(a)) => a,
        other => panic!("{other:?}"),
    }
}

/// The HTTP RBAC filters, in order.
fn http_rbacs(h: &HttpConnectionManager) -> Vec<HttpRbac> {
    h.http_filters
        .iter()
        .filter(|f| f.name == "envoy.filters.http.rbac")
        .map(|f| {
            let a = http_config(f);
            assert_eq!(
                a.type_url,
                "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
            );
            decode(a)
        })
        .collect()
}

fn network_rbacs(chain: &FilterChain) -> Vec<NetworkRbac> {
    chain
        .filters
        .iter()
        .filter(|f| f.name == "envoy.filters.network.rbac")
        .map(|f| {
            let a = typed(f);
            assert_eq!(
                a.type_url,
                "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"
            );
            decode(a)
        })
        .collect()
}

fn upstream_tls(ts: &TransportSocket) -> UpstreamTlsContext {
    assert_eq!(ts.name, "envoy.transport_sockets.tls");
    match &ts.config_type {
        Some(transport_socket::ConfigType::TypedConfig(a)) => {
            assert_eq!(
                a.type_url,
                "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
            );
            decode(a)
        }
        other => panic!("{other:?}"),
    }
}

fn downstream_tls(ts: &TransportSocket) -> DownstreamTlsContext {
    assert_eq!(ts.name, "envoy.transport_sockets.tls");
    match &ts.config_type {
        Some(transport_socket::ConfigType::TypedConfig(a)) => {
            assert_eq!(
                a.type_url,
                "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
            );
            decode(a)
        }
        other => panic!("{other:?}"),
    }
}

fn cluster<'a>(g: &'a Generated, name: &str) -> &'a Cluster {
    g.cluster(name)
        .unwrap_or_else(|| panic!("no cluster {name}"))
}

fn combined(ctx: &UpstreamTlsContext) -> &common_tls_context::CombinedCertificateValidationContext {
    match &ctx
        .common_tls_context
        .as_ref()
        .expect("common")
        .validation_context_type
    {
        Some(common_tls_context::ValidationContextType::CombinedValidationContext(c)) => c,
        other => panic!("{other:?}"),
    }
}

fn plain_validation(ctx: &UpstreamTlsContext) -> &CertificateValidationContext {
    match &ctx
        .common_tls_context
        .as_ref()
        .expect("common")
        .validation_context_type
    {
        Some(common_tls_context::ValidationContextType::ValidationContext(v)) => v,
        other => panic!("{other:?}"),
    }
}

fn sans(v: &CertificateValidationContext) -> Vec<(i32, String)> {
    v.match_typed_subject_alt_names
        .iter()
        .map(|m| {
            (
                m.san_type,
                matcher_text(m.matcher.as_ref().expect("matcher")),
            )
        })
        .collect()
}

/// `exact:x`, `prefix:x`, `suffix:x`, `regex:x`, with `~` for ignore case.
fn matcher_text(m: &StringMatcher) -> String {
    let case = if m.ignore_case { "~" } else { "" };
    match &m.match_pattern {
        Some(string_matcher::MatchPattern::Exact(s)) => format!("exact{case}:{s}"),
        Some(string_matcher::MatchPattern::Prefix(s)) => format!("prefix{case}:{s}"),
        Some(string_matcher::MatchPattern::Suffix(s)) => format!("suffix{case}:{s}"),
        Some(string_matcher::MatchPattern::SafeRegex(r)) => format!("regex{case}:{}", r.regex),
        other => format!("{other:?}"),
    }
}

/// Asserts Istio's SDS secret shape: `name` from the `sds-grpc` cluster.
fn assert_sds(s: &SdsSecretConfig, name: &str) {
    assert_eq!(s.name, name);
    let src = s.sds_config.as_ref().expect("sds config");
    assert_eq!(
        src.initial_fetch_timeout,
        Some(envoy_types::pb::google::protobuf::Duration {
            seconds: 0,
            nanos: 0
        })
    );
    assert_eq!(src.resource_api_version, 2, "V3");
    let Some(config_source::ConfigSourceSpecifier::ApiConfigSource(api)) =
        &src.config_source_specifier
    else {
        panic!("api config source expected: {src:?}")
    };
    assert_eq!(api.api_type, 2, "GRPC");
    assert_eq!(api.transport_api_version, 2, "V3");
    assert!(api.set_node_on_first_message_only);
    match &api.grpc_services[0].target_specifier {
        Some(grpc_service::TargetSpecifier::EnvoyGrpc(e)) => assert_eq!(e.cluster_name, "sds-grpc"),
        other => panic!("{other:?}"),
    }
}

/// A compact rendering of RBAC permissions and principals for golden
/// comparisons.
fn perm_text(p: &Permission) -> String {
    match p.rule.as_ref().expect("rule") {
        permission::Rule::Any(_) => "any".into(),
        permission::Rule::AndRules(s) => format!(
            "and({})",
            s.rules.iter().map(perm_text).collect::<Vec<_>>().join(", ")
        ),
        permission::Rule::OrRules(s) => format!(
            "or({})",
            s.rules.iter().map(perm_text).collect::<Vec<_>>().join(", ")
        ),
        permission::Rule::NotRule(r) => format!("not({})", perm_text(r)),
        permission::Rule::Header(h) => format!("header({}={})", h.name, header_text(h)),
        permission::Rule::UrlPath(p) => match &p.rule {
            Some(envoy_types::pb::envoy::r#type::matcher::v3::path_matcher::Rule::Path(m)) => {
                format!("path({})", matcher_text(m))
            }
            other => format!("{other:?}"),
        },
        permission::Rule::DestinationPort(p) => format!("port({p})"),
        permission::Rule::DestinationIp(c) => format!(
            "dst_ip({}/{})",
            c.address_prefix,
            c.prefix_len.as_ref().map_or(0, |l| l.value)
        ),
        permission::Rule::RequestedServerName(m) => format!("sni({})", matcher_text(m)),
        permission::Rule::UriTemplate(t) => {
            let cfg: envoy_types::pb::envoy::extensions::path::r#match::uri_template::v3::UriTemplateMatchConfig =
                decode(t.typed_config.as_ref().expect("template"));
            format!("template({})", cfg.path_template)
        }
        other => format!("{other:?}"),
    }
}

fn header_text(h: &envoy_types::pb::envoy::config::route::v3::HeaderMatcher) -> String {
    match &h.header_match_specifier {
        Some(header_matcher::HeaderMatchSpecifier::PresentMatch(_)) => "present".into(),
        Some(header_matcher::HeaderMatchSpecifier::StringMatch(m)) => matcher_text(m),
        other => format!("{other:?}"),
    }
}

fn princ_text(p: &Principal) -> String {
    match p.identifier.as_ref().expect("identifier") {
        principal::Identifier::Any(_) => "any".into(),
        principal::Identifier::AndIds(s) => format!(
            "and({})",
            s.ids.iter().map(princ_text).collect::<Vec<_>>().join(", ")
        ),
        principal::Identifier::OrIds(s) => format!(
            "or({})",
            s.ids.iter().map(princ_text).collect::<Vec<_>>().join(", ")
        ),
        principal::Identifier::NotId(r) => format!("not({})", princ_text(r)),
        principal::Identifier::Authenticated(a) => {
            format!(
                "peer({})",
                matcher_text(a.principal_name.as_ref().expect("name"))
            )
        }
        principal::Identifier::DirectRemoteIp(c) => format!(
            "src_ip({}/{})",
            c.address_prefix,
            c.prefix_len.as_ref().map_or(0, |l| l.value)
        ),
        principal::Identifier::RemoteIp(c) => format!(
            "remote_ip({}/{})",
            c.address_prefix,
            c.prefix_len.as_ref().map_or(0, |l| l.value)
        ),
        principal::Identifier::Header(h) => format!("header({}={})", h.name, header_text(h)),
        principal::Identifier::SourcedMetadata(sm) => {
            let m = sm.metadata_matcher.as_ref().expect("matcher");
            let path: Vec<String> = m
                .path
                .iter()
                .map(|s| match &s.segment {
                    Some(envoy_types::pb::envoy::r#type::matcher::v3::metadata_matcher::path_segment::Segment::Key(k)) => k.clone(),
                    None => String::new(),
                })
                .collect();
            format!(
                "meta({}:{}={})",
                m.filter,
                path.join("."),
                value_text(m.value.as_ref().expect("value"))
            )
        }
        other => format!("{other:?}"),
    }
}

fn value_text(v: &envoy_types::pb::envoy::r#type::matcher::v3::ValueMatcher) -> String {
    match v.match_pattern.as_ref().expect("pattern") {
        value_matcher::MatchPattern::StringMatch(m) => matcher_text(m),
        value_matcher::MatchPattern::OrMatch(o) => format!(
            "or({})",
            o.value_matchers
                .iter()
                .map(value_text)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        value_matcher::MatchPattern::ListMatch(l) => match &l.match_pattern {
            Some(
                envoy_types::pb::envoy::r#type::matcher::v3::list_matcher::MatchPattern::OneOf(v),
            ) => {
                format!("one_of({})", value_text(v))
            }
            None => "list".into(),
        },
        other => format!("{other:?}"),
    }
}

fn policy<'a>(rules: &'a envoy_types::pb::envoy::config::rbac::v3::Rbac, name: &str) -> &'a Policy {
    rules.policies.get(name).unwrap_or_else(|| {
        panic!(
            "no policy {name} in {:?}",
            rules.policies.keys().collect::<Vec<_>>()
        )
    })
}

fn policy_text(p: &Policy) -> (Vec<String>, Vec<String>) {
    (
        p.permissions.iter().map(perm_text).collect(),
        p.principals.iter().map(princ_text).collect(),
    )
}

/// A registry with bookinfo plus `db` (TCP 3306, workload reviews' IP) and
/// an external API.
fn registry_with_tcp() -> Registry {
    let mut reg = bookinfo_registry();
    let db = service("db", "default", &[(3306, Protocol::Tcp)]);
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
    let mut ext = service("api", "default", &[(443, Protocol::Https)]);
    ext.hostname = "api.example.com".into();
    ext.location = Location::MeshExternal;
    ext.resolution = registry::Resolution::Dns;
    reg.endpoints.insert(
        (ext.hostname.clone(), 443),
        vec![{
            let mut e = endpoint("api.example.com", 443, &[], "");
            e.has_sidecar = false;
            e.service_account = String::new();
            e
        }],
    );
    reg.services.insert(ext.hostname.clone(), ext);
    reg
}

/// A capture-mode sidecar of reviews v2 (10.0.0.14: serves 9080 and db's 3306).
fn reviews_capture() -> ProxyNode {
    let mut n = ProxyNode::sidecar("default", &[("app", "reviews"), ("version", "v2")], None);
    n.ip = "10.0.0.14".into();
    n.instance_ips = vec!["10.0.0.14".into()];
    n
}

fn mesh(yaml: &str) -> api::MeshConfig {
    api::MeshConfig::from_yaml(yaml, "mesh.yaml").expect("mesh config")
}

// ---------------------------------------------------------------------------
// auto mTLS and DestinationRule TLS
// ---------------------------------------------------------------------------

#[test]
fn auto_mtls_gives_mesh_clusters_istios_transport_socket_matches() {
    let g = generate(&productpage(), &ctx(""));
    let c = cluster(&g, &format!("outbound|9080||{REVIEWS}"));
    assert!(c.transport_socket.is_none());
    let [istio, disabled] = c.transport_socket_matches.as_slice() else {
        panic!(
            "two socket matches expected: {:?}",
            c.transport_socket_matches
        )
    };
    assert_eq!(istio.name, "tlsMode-istio");
    let m = istio.r#match.as_ref().expect("match");
    assert!(matches!(
        m.fields.get("tlsMode").and_then(|v| v.kind.as_ref()),
        Some(Kind::StringValue(s)) if s == "istio"
    ));
    let tls = upstream_tls(istio.transport_socket.as_ref().expect("socket"));
    assert_eq!(tls.sni, format!("outbound_.9080_._.{REVIEWS}"));
    let common = tls.common_tls_context.as_ref().expect("common");
    assert_eq!(common.alpn_protocols, ["istio-peer-exchange", "istio"]);
    let params = common.tls_params.as_ref().expect("params");
    assert_eq!(
        params.tls_minimum_protocol_version,
        TlsProtocol::TlSv12 as i32
    );
    assert_eq!(
        params.tls_maximum_protocol_version,
        TlsProtocol::TlSv13 as i32
    );
    assert_sds(&common.tls_certificate_sds_secret_configs[0], "default");
    let cv = combined(&tls);
    assert_sds(
        cv.validation_context_sds_secret_config
            .as_ref()
            .expect("root"),
        "ROOTCA",
    );
    assert_eq!(
        sans(cv.default_validation_context.as_ref().expect("default")),
        [(
            SanType::Uri as i32,
            "exact:spiffe://cluster.local/ns/default/sa/default".to_owned()
        )]
    );
    assert_eq!(disabled.name, "tlsMode-disabled");
    assert_eq!(disabled.r#match, Some(Default::default()));
    assert_eq!(
        disabled.transport_socket.as_ref().map(|t| t.name.as_str()),
        Some("envoy.transport_sockets.raw_buffer")
    );

    // Endpoints with a sidecar carry the match metadata.
    let cla = g
        .endpoint(&format!("outbound|9080||{REVIEWS}"))
        .expect("endpoints");
    for group in &cla.endpoints {
        for ep in &group.lb_endpoints {
            let meta = ep.metadata.as_ref().expect("metadata");
            let s = &meta.filter_metadata["envoy.transport_socket_match"];
            assert!(matches!(
                s.fields.get("tlsMode").and_then(|v| v.kind.as_ref()),
                Some(Kind::StringValue(v)) if v == "istio"
            ));
        }
    }
}

#[test]
fn subsets_http2_and_trust_domains_shape_sni_alpn_and_sans() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets: [{name: v2, labels: {version: v2}}]
"#;
    let mut reg = bookinfo_registry();
    let grpc = service("grpc", "default", &[(7070, Protocol::Grpc)]);
    let mut ep = endpoint("10.0.0.40", 7070, &[("app", "grpc")], "");
    ep.service_account = "grpc-sa".into();
    reg.endpoints
        .insert((grpc.hostname.clone(), 7070), vec![ep]);
    reg.services.insert(grpc.hostname.clone(), grpc);
    let m = mesh("trustDomain: example.org\ntrustDomainAliases: [old.example]\n");
    let g = generate(&productpage(), &ctx_with(yaml, reg, m));
    let c = cluster(&g, &format!("outbound|9080|v2|{REVIEWS}"));
    let tls = upstream_tls(
        c.transport_socket_matches[0]
            .transport_socket
            .as_ref()
            .expect("socket"),
    );
    assert_eq!(tls.sni, format!("outbound_.9080_.v2_.{REVIEWS}"));
    assert_eq!(
        sans(
            combined(&tls)
                .default_validation_context
                .as_ref()
                .expect("default")
        ),
        [
            (
                SanType::Uri as i32,
                "exact:spiffe://example.org/ns/default/sa/default".to_owned()
            ),
            (
                SanType::Uri as i32,
                "exact:spiffe://old.example/ns/default/sa/default".to_owned()
            ),
        ]
    );
    let c = cluster(&g, "outbound|7070||grpc.default.svc.cluster.local");
    let tls = upstream_tls(
        c.transport_socket_matches[0]
            .transport_socket
            .as_ref()
            .expect("socket"),
    );
    assert_eq!(
        tls.common_tls_context
            .as_ref()
            .expect("common")
            .alpn_protocols,
        ["istio-peer-exchange", "istio", "h2"]
    );
    assert!(
        sans(
            combined(&tls)
                .default_validation_context
                .as_ref()
                .expect("default")
        )
        .iter()
        .any(|(_, s)| s == "exact:spiffe://example.org/ns/default/sa/grpc-sa")
    );
}

#[test]
fn no_auto_mtls_for_external_services_disabled_namespaces_or_when_turned_off() {
    let reg = registry_with_tcp();
    let g = generate(
        &productpage(),
        &ctx_with("", reg.clone(), Default::default()),
    );
    let ext = cluster(&g, "outbound|443||api.example.com");
    assert!(ext.transport_socket_matches.is_empty() && ext.transport_socket.is_none());

    let pa = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: default}
spec:
  mtls: {mode: DISABLE}
"#;
    let g = generate(
        &productpage(),
        &ctx_with(pa, reg.clone(), Default::default()),
    );
    let c = cluster(&g, &format!("outbound|9080||{REVIEWS}"));
    assert!(c.transport_socket_matches.is_empty() && c.transport_socket.is_none());
    // Nor do endpoints whose workload disables mTLS carry the metadata.
    let cla = g
        .endpoint(&format!("outbound|9080||{REVIEWS}"))
        .expect("cla");
    assert!(
        cla.endpoints
            .iter()
            .all(|l| l.lb_endpoints.iter().all(|e| e.metadata.is_none()))
    );

    let g = generate(
        &productpage(),
        &ctx_with("", reg.clone(), mesh("enableAutoMtls: false")),
    );
    let c = cluster(&g, &format!("outbound|9080||{REVIEWS}"));
    assert!(c.transport_socket_matches.is_empty() && c.transport_socket.is_none());

    // An endpoint without a sidecar keeps the socket matches but gets no
    // metadata (so it is reached in plaintext).
    let mut reg = reg;
    for e in reg
        .endpoints
        .get_mut(&(REVIEWS.to_owned(), 9080))
        .expect("reviews")
        .iter_mut()
    {
        if e.labels.get("version").is_some_and(|v| v == "v3") {
            e.has_sidecar = false;
        }
    }
    let g = generate(&productpage(), &ctx_with("", reg, Default::default()));
    let cla = g
        .endpoint(&format!("outbound|9080||{REVIEWS}"))
        .expect("cla");
    let tagged: usize = cla
        .endpoints
        .iter()
        .flat_map(|l| &l.lb_endpoints)
        .filter(|e| e.metadata.is_some())
        .count();
    assert_eq!(tagged, 2, "v1 and v2 have sidecars, v3 not");
}

#[test]
fn destination_rule_tls_modes_override_auto_mtls_including_port_level() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    tls: {mode: DISABLE}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      tls:
        mode: ISTIO_MUTUAL
        sni: reviews.custom
        subjectAltNames: ["spiffe://cluster.local/ns/default/sa/reviews"]
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      tls:
        mode: SIMPLE
        caCertificates: /etc/certs/ca.pem
        sni: reviews.example
        subjectAltNames: [reviews.example, "10.0.0.1"]
  - name: v3
    labels: {version: v3}
    trafficPolicy:
      tls:
        mode: MUTUAL
        clientCertificate: /etc/certs/cert.pem
        privateKey: /etc/certs/key.pem
        insecureSkipVerify: true
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings}
spec:
  host: ratings
  trafficPolicy:
    tls: {mode: SIMPLE}
    portLevelSettings:
    - port: {number: 9080}
      tls: {mode: DISABLE}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: details}
spec:
  host: details
  trafficPolicy:
    tls: {mode: SIMPLE}
"#;
    let g = generate(&productpage(), &ctx(yaml));
    let plain = cluster(&g, &format!("outbound|9080||{REVIEWS}"));
    assert!(plain.transport_socket.is_none() && plain.transport_socket_matches.is_empty());
    let cla = g
        .endpoint(&format!("outbound|9080||{REVIEWS}"))
        .expect("cla");
    assert!(
        cla.endpoints
            .iter()
            .all(|l| l.lb_endpoints.iter().all(|e| e.metadata.is_none())),
        "DISABLE: no tlsMode metadata"
    );

    let v1 = cluster(&g, &format!("outbound|9080|v1|{REVIEWS}"));
    assert!(v1.transport_socket_matches.is_empty());
    let tls = upstream_tls(v1.transport_socket.as_ref().expect("istio mutual"));
    assert_eq!(tls.sni, "reviews.custom");
    assert_eq!(
        sans(
            combined(&tls)
                .default_validation_context
                .as_ref()
                .expect("default")
        ),
        [(
            SanType::Uri as i32,
            "exact:spiffe://cluster.local/ns/default/sa/reviews".to_owned()
        )]
    );

    let v2 = cluster(&g, &format!("outbound|9080|v2|{REVIEWS}"));
    let tls = upstream_tls(v2.transport_socket.as_ref().expect("simple"));
    assert_eq!(tls.sni, "reviews.example");
    let common = tls.common_tls_context.as_ref().expect("common");
    assert!(
        common.tls_certificates.is_empty() && common.tls_certificate_sds_secret_configs.is_empty()
    );
    let v = plain_validation(&tls);
    assert!(matches!(
        v.trusted_ca.as_ref().and_then(|d| d.specifier.as_ref()),
        Some(data_source::Specifier::Filename(f)) if f == "/etc/certs/ca.pem"
    ));
    assert_eq!(
        sans(v),
        [
            (SanType::Dns as i32, "exact:reviews.example".to_owned()),
            (SanType::IpAddress as i32, "exact:10.0.0.1".to_owned())
        ]
    );

    let v3 = cluster(&g, &format!("outbound|9080|v3|{REVIEWS}"));
    let tls = upstream_tls(v3.transport_socket.as_ref().expect("mutual"));
    let common = tls.common_tls_context.as_ref().expect("common");
    let cert = &common.tls_certificates[0];
    assert!(matches!(
        cert.certificate_chain.as_ref().and_then(|d| d.specifier.as_ref()),
        Some(data_source::Specifier::Filename(f)) if f == "/etc/certs/cert.pem"
    ));
    assert!(matches!(
        cert.private_key.as_ref().and_then(|d| d.specifier.as_ref()),
        Some(data_source::Specifier::Filename(f)) if f == "/etc/certs/key.pem"
    ));
    assert_eq!(
        plain_validation(&tls),
        &CertificateValidationContext::default(),
        "insecureSkipVerify"
    );

    // Port-level DISABLE wins over the rule's SIMPLE on 9080.
    let r = cluster(&g, &format!("outbound|9080||{RATINGS}"));
    assert!(r.transport_socket.is_none() && r.transport_socket_matches.is_empty());

    // SIMPLE without caCertificates: the system roots; no SNI: auto_sni.
    let d = cluster(&g, "outbound|9080||details.default.svc.cluster.local");
    let tls = upstream_tls(d.transport_socket.as_ref().expect("simple"));
    assert!(matches!(
        plain_validation(&tls).trusted_ca.as_ref().and_then(|d| d.specifier.as_ref()),
        Some(data_source::Specifier::Filename(f)) if f == "/etc/ssl/certs/ca-certificates.crt"
    ));
    let opts: envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions = decode(
        &d.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"],
    );
    let up = opts
        .upstream_http_protocol_options
        .expect("upstream options");
    assert!(up.auto_sni && up.auto_san_validation);
    assert!(opts.upstream_protocol_options.is_some());
}

// ---------------------------------------------------------------------------
// PeerAuthentication → inbound chains
// ---------------------------------------------------------------------------

fn pa(ns: &str, name: &str, body: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{}---\n",
        body.lines().map(|l| format!("  {l}\n")).collect::<String>()
    )
}

/// `(name, transport, alpn, terminates TLS)` of each chain.
fn chain_shapes(chains: &[FilterChain]) -> Vec<(String, String, usize, bool)> {
    chains
        .iter()
        .map(|c| {
            let m = c.filter_chain_match.clone().unwrap_or_default();
            (
                c.name.clone(),
                m.transport_protocol,
                m.application_protocols.len(),
                c.transport_socket.is_some(),
            )
        })
        .collect()
}

fn has_tls_inspector(g: &Generated, listener: &str) -> bool {
    g.listener(listener)
        .expect("listener")
        .listener_filters
        .iter()
        .any(|f| f.name == "envoy.filters.listener.tls_inspector")
}

#[test]
fn permissive_by_default_a_local_inbound_listener_has_an_mtls_and_a_plaintext_chain() {
    let g = generate(&productpage(), &ctx(""));
    let c = chains(&g, "inbound_9080");
    assert_eq!(
        chain_shapes(c),
        [
            ("inbound|9080||mtls".to_owned(), "tls".to_owned(), 5, true),
            (
                "inbound|9080||".to_owned(),
                "raw_buffer".to_owned(),
                0,
                false
            ),
        ]
    );
    let m = c[0].filter_chain_match.as_ref().expect("match");
    assert_eq!(
        m.application_protocols,
        [
            "istio",
            "istio-peer-exchange",
            "istio-http/1.0",
            "istio-http/1.1",
            "istio-h2"
        ]
    );
    assert!(
        m.destination_port.is_none(),
        "local listeners own their port"
    );
    assert!(has_tls_inspector(&g, "inbound_9080"));

    let tls = downstream_tls(c[0].transport_socket.as_ref().expect("tls"));
    assert_eq!(tls.require_client_certificate.map(|b| b.value), Some(true));
    let common = tls.common_tls_context.as_ref().expect("common");
    assert_eq!(common.alpn_protocols, ["h2", "http/1.1"]);
    assert_sds(&common.tls_certificate_sds_secret_configs[0], "default");
    let params = common.tls_params.as_ref().expect("params");
    assert_eq!(
        params.tls_minimum_protocol_version,
        TlsProtocol::TlSv12 as i32
    );
    assert_eq!(
        params.tls_maximum_protocol_version,
        TlsProtocol::TlSv13 as i32
    );
    assert_eq!(params.cipher_suites.len(), 6);
    let Some(common_tls_context::ValidationContextType::CombinedValidationContext(cv)) =
        &common.validation_context_type
    else {
        panic!("combined validation context")
    };
    assert_sds(
        cv.validation_context_sds_secret_config
            .as_ref()
            .expect("root"),
        "ROOTCA",
    );
    assert_eq!(
        sans(cv.default_validation_context.as_ref().expect("default")),
        [(
            SanType::Uri as i32,
            "prefix:spiffe://cluster.local/".to_owned()
        )]
    );
    // Both chains route to the application through the same HCM.
    assert_eq!(hcm(&c[0]).stat_prefix, hcm(&c[1]).stat_prefix);
}

#[test]
fn peer_authentication_precedence_mesh_namespace_workload_and_port() {
    let inbound = |yaml: &str| {
        let g = generate(&productpage(), &ctx(yaml));
        let shapes = chain_shapes(chains(&g, "inbound_9080"));
        (shapes, has_tls_inspector(&g, "inbound_9080"))
    };
    let strict_only = vec![("inbound|9080||mtls".to_owned(), "tls".to_owned(), 0, true)];
    let plaintext_only = vec![("inbound|9080||".to_owned(), String::new(), 0, false)];

    // Mesh-wide STRICT applies everywhere.
    let mesh_strict = pa("istio-system", "default", "mtls: {mode: STRICT}");
    assert_eq!(inbound(&mesh_strict), (strict_only.clone(), true));
    // The namespace overrides the mesh; UNSET inherits.
    let ns_disable = pa("default", "default", "mtls: {mode: DISABLE}");
    assert_eq!(
        inbound(&(mesh_strict.clone() + &ns_disable)),
        (plaintext_only.clone(), false)
    );
    let ns_unset = pa("default", "default", "mtls: {}");
    assert_eq!(inbound(&(mesh_strict.clone() + &ns_unset)).0, strict_only);
    // A selecting policy overrides the namespace; port-level overrides it.
    let workload = pa(
        "default",
        "pp",
        "selector: {matchLabels: {app: productpage}}\nmtls: {mode: DISABLE}\nportLevelMtls:\n  9080: {mode: STRICT}",
    );
    assert_eq!(inbound(&(ns_disable.clone() + &workload)).0, strict_only);
    let workload_unset_port = pa(
        "default",
        "pp",
        "selector: {matchLabels: {app: productpage}}\nmtls: {mode: STRICT}\nportLevelMtls:\n  9080: {}",
    );
    assert_eq!(inbound(&workload_unset_port).0, strict_only);
    // A policy selecting other workloads, or one with a selector in the
    // root namespace, does not apply.
    let other = pa(
        "default",
        "other",
        "selector: {matchLabels: {app: reviews}}\nmtls: {mode: STRICT}",
    );
    assert_eq!(inbound(&(ns_disable.clone() + &other)).0, plaintext_only);
    let root_selector = pa(
        "istio-system",
        "sel",
        "selector: {matchLabels: {app: productpage}}\nmtls: {mode: STRICT}",
    );
    assert_eq!(inbound(&(ns_disable + &root_selector)).0, plaintext_only);
}

#[test]
fn capture_mode_virtual_inbound_gets_port_chains_passthrough_chains_and_tls_inspector() {
    let reg = registry_with_tcp();
    let g = generate(
        &reviews_capture(),
        &ctx_with("", reg.clone(), Default::default()),
    );
    let l = g.listener("virtualInbound").expect("virtualInbound");
    assert!(l.default_filter_chain.is_none());
    let names: Vec<&str> = l.listener_filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "envoy.filters.listener.original_dst",
            "envoy.filters.listener.tls_inspector"
        ]
    );
    let shapes: Vec<(String, String, u32)> = l
        .filter_chains
        .iter()
        .map(|c| {
            let m = c.filter_chain_match.clone().unwrap_or_default();
            (
                c.name.clone(),
                m.transport_protocol,
                m.destination_port.map_or(0, |p| p.value),
            )
        })
        .collect();
    assert_eq!(
        shapes,
        [
            ("virtualInbound-blackhole".to_owned(), String::new(), 15006),
            ("inbound|3306||mtls".to_owned(), "tls".to_owned(), 3306),
            ("inbound|3306||tls".to_owned(), "tls".to_owned(), 3306),
            ("inbound|3306||".to_owned(), "raw_buffer".to_owned(), 3306),
            ("inbound|9080||mtls".to_owned(), "tls".to_owned(), 9080),
            ("inbound|9080||".to_owned(), "raw_buffer".to_owned(), 9080),
            ("virtualInbound-mtls".to_owned(), "tls".to_owned(), 0),
            ("virtualInbound-tls".to_owned(), "tls".to_owned(), 0),
            ("virtualInbound".to_owned(), "raw_buffer".to_owned(), 0),
        ]
    );
    // TCP chains offer the metadata exchange ALPN.
    let tls = downstream_tls(l.filter_chains[1].transport_socket.as_ref().expect("mtls"));
    assert_eq!(
        tls.common_tls_context.expect("common").alpn_protocols,
        ["istio-peer-exchange", "h2", "http/1.1"]
    );
    assert!(
        l.filter_chains[2].transport_socket.is_none(),
        "plain TLS passes through"
    );

    // STRICT leaves only mTLS chains; a port-level DISABLE on an
    // undeclared port gets its own plaintext passthrough.
    let strict = pa(
        "default",
        "reviews",
        "selector: {matchLabels: {app: reviews}}\nmtls: {mode: STRICT}\nportLevelMtls:\n  8000: {mode: DISABLE}",
    );
    let g = generate(
        &reviews_capture(),
        &ctx_with(&strict, reg, Default::default()),
    );
    let l = g.listener("virtualInbound").expect("virtualInbound");
    let shapes: Vec<(String, String, u32)> = l
        .filter_chains
        .iter()
        .map(|c| {
            let m = c.filter_chain_match.clone().unwrap_or_default();
            (
                c.name.clone(),
                m.transport_protocol,
                m.destination_port.map_or(0, |p| p.value),
            )
        })
        .collect();
    assert_eq!(
        shapes,
        [
            ("virtualInbound-blackhole".to_owned(), String::new(), 15006),
            ("inbound|3306||mtls".to_owned(), "tls".to_owned(), 3306),
            ("inbound|9080||mtls".to_owned(), "tls".to_owned(), 9080),
            ("virtualInbound-mtls".to_owned(), "tls".to_owned(), 0),
            ("virtualInbound-8000".to_owned(), String::new(), 8000),
        ]
    );
}

// ---------------------------------------------------------------------------
// AuthorizationPolicy → RBAC
// ---------------------------------------------------------------------------

fn ap(ns: &str, name: &str, body: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{}---\n",
        body.lines().map(|l| format!("  {l}\n")).collect::<String>()
    )
}

fn inbound_hcm(g: &Generated) -> HttpConnectionManager {
    hcm(&chains(g, "inbound_9080")[0])
}

#[test]
fn allow_rules_become_one_rbac_policy_per_rule_with_istios_matchers() {
    let yaml = ap(
        "default",
        "pp",
        r#"selector: {matchLabels: {app: productpage}}
rules:
- from:
  - source:
      principals: ["cluster.local/ns/istio-system/sa/ingress", "*/sa/sleep"]
      namespaces: ["team-*"]
  - source:
      ipBlocks: ["10.0.0.0/8"]
      notRemoteIpBlocks: ["192.168.1.1"]
  to:
  - operation:
      methods: ["GET", "HEAD"]
      paths: ["/api/*", "*.css", "/exact", "/v1/{*}/items/{**}"]
      hosts: ["bookinfo.example.com", "*.example.org"]
      notPorts: ["8080"]
  when:
  - key: request.headers[x-tenant]
    values: ["acme"]
  - key: destination.port
    values: ["9080"]
- {}"#,
    );
    let g = generate(&productpage(), &ctx(&yaml));
    let h = inbound_hcm(&g);
    assert_eq!(
        filter_names(&h),
        [
            "envoy.filters.http.rbac",
            "envoy.filters.http.fault",
            "envoy.filters.http.cors",
            "envoy.filters.http.router"
        ]
    );
    let rbac = &http_rbacs(&h)[0];
    assert!(rbac.shadow_rules.is_none());
    let rules = rbac.rules.as_ref().expect("rules");
    assert_eq!(rules.action, rbac::Action::Allow as i32);
    let (perms, princs) = policy_text(policy(rules, "ns[default]-policy[pp]-rule[0]"));
    assert_eq!(
        perms,
        [
            "and(or(header(:authority=exact~:bookinfo.example.com), header(:authority=suffix~:.example.org)), \
             or(header(:method=exact:GET), header(:method=exact:HEAD)), \
             or(path(prefix:/api/), path(suffix:.css), path(exact:/exact), template(/v1/*/items/**)), \
             not(or(port(8080))), or(port(9080)))"
        ]
    );
    assert_eq!(
        princs,
        [
            "and(or(peer(exact:spiffe://cluster.local/ns/istio-system/sa/ingress), peer(regex:spiffe://.*/sa/sleep)), \
             or(peer(regex:.*/ns/team-.*/.*)), or(header(x-tenant=exact:acme)))",
            "and(not(or(remote_ip(192.168.1.1/32))), or(src_ip(10.0.0.0/8)), or(header(x-tenant=exact:acme)))",
        ]
    );
    let (perms, princs) = policy_text(policy(rules, "ns[default]-policy[pp]-rule[1]"));
    assert_eq!(
        (perms, princs),
        (vec!["and(any)".to_owned()], vec!["and(any)".to_owned()])
    );
}

#[test]
fn actions_are_ordered_audit_deny_allow_after_jwt_and_custom() {
    let mut yaml = ap(
        "default",
        "audit",
        "action: AUDIT\nrules: [{to: [{operation: {paths: [/admin]}}]}]",
    );
    yaml += &ap(
        "default",
        "deny",
        "action: DENY\nrules: [{from: [{source: {notNamespaces: [default]}}]}]",
    );
    yaml += &ap("istio-system", "allow-nothing", "{}");
    yaml += &ap(
        "default",
        "custom",
        "action: CUSTOM\nprovider: {name: authz}\nrules: [{to: [{operation: {paths: [/ext]}}]}]",
    );
    yaml += "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt, namespace: default}\nspec:\n  jwtRules: [{issuer: iss, jwks: '{\"keys\":[]}'}]\n";
    let mut reg = bookinfo_registry();
    let authz = service("ext-authz", "default", &[(8000, Protocol::Http)]);
    reg.services.insert(authz.hostname.clone(), authz);
    let m = mesh(
        "extensionProviders:\n- name: authz\n  envoyExtAuthzHttp: {service: ext-authz.default.svc.cluster.local, port: 8000}\n",
    );
    let g = generate(&productpage(), &ctx_with(&yaml, reg, m));
    let h = inbound_hcm(&g);
    assert_eq!(
        filter_names(&h),
        [
            "envoy.filters.http.rbac",
            "envoy.filters.http.ext_authz",
            "envoy.filters.http.jwt_authn",
            "envoy.filters.http.rbac",
            "envoy.filters.http.rbac",
            "envoy.filters.http.rbac",
            "envoy.filters.http.fault",
            "envoy.filters.http.cors",
            "envoy.filters.http.router"
        ]
    );
    let rbacs = http_rbacs(&h);
    let actions: Vec<i32> = rbacs[1..]
        .iter()
        .map(|r| r.rules.as_ref().expect("rules").action)
        .collect();
    assert_eq!(
        actions,
        [
            rbac::Action::Log as i32,
            rbac::Action::Deny as i32,
            rbac::Action::Allow as i32
        ]
    );
    // The mesh-wide policy without rules never matches: it allows nothing.
    let allow = rbacs[3].rules.as_ref().expect("rules");
    assert_eq!(
        policy_text(policy(
            allow,
            "ns[istio-system]-policy[allow-nothing]-rule[0]"
        )),
        (vec!["not(any)".to_owned()], vec!["not(any)".to_owned()])
    );
    let deny = rbacs[2].rules.as_ref().expect("rules");
    assert_eq!(
        policy_text(policy(deny, "ns[default]-policy[deny]-rule[0]")).1,
        ["and(not(or(peer(regex:.*/ns/default/.*))))"]
    );
    assert!(g.diagnostics.is_empty(), "{:?}", g.diagnostics);
}

#[test]
fn root_namespace_policies_apply_mesh_wide_selectors_narrow_and_target_refs_skip_sidecars() {
    let mut yaml = ap(
        "istio-system",
        "mesh",
        "action: DENY\nrules: [{to: [{operation: {paths: [/mesh]}}]}]",
    );
    yaml += &ap(
        "istio-system",
        "root-selected",
        "selector: {matchLabels: {app: productpage}}\naction: DENY\nrules: [{to: [{operation: {paths: [/root]}}]}]",
    );
    yaml += &ap(
        "default",
        "reviews-only",
        "selector: {matchLabels: {app: reviews}}\naction: DENY\nrules: [{to: [{operation: {paths: [/reviews]}}]}]",
    );
    yaml += &ap(
        "default",
        "waypoint",
        "targetRefs: [{kind: Service, group: \"\", name: productpage}]\naction: DENY\nrules: [{}]",
    );
    yaml += &ap("other", "elsewhere", "action: DENY\nrules: [{}]");
    let g = generate(&productpage(), &ctx(&yaml));
    let rbacs = http_rbacs(&inbound_hcm(&g));
    assert_eq!(rbacs.len(), 1);
    let mut names: Vec<&String> = rbacs[0]
        .rules
        .as_ref()
        .expect("rules")
        .policies
        .keys()
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "ns[istio-system]-policy[mesh]-rule[0]",
            "ns[istio-system]-policy[root-selected]-rule[0]"
        ]
    );
}

#[test]
fn tcp_chains_get_network_rbac_where_http_only_rules_allow_nothing_and_deny_everything() {
    let mut yaml = ap(
        "default",
        "allow",
        r#"selector: {matchLabels: {app: reviews}}
rules:
- to: [{operation: {methods: [GET]}}]
- to: [{operation: {ports: ["3306"]}}]
  from: [{source: {principals: ["cluster.local/ns/default/sa/productpage"]}}]"#,
    );
    yaml += &ap(
        "default",
        "deny",
        "selector: {matchLabels: {app: reviews}}\naction: DENY\nrules: [{to: [{operation: {paths: [/x]}}], from: [{source: {requestPrincipals: [\"*\"]}}]}]",
    );
    let g = generate(
        &reviews_capture(),
        &ctx_with(&yaml, registry_with_tcp(), Default::default()),
    );
    let l = g.listener("virtualInbound").expect("listener");
    let tcp = l
        .filter_chains
        .iter()
        .find(|c| c.name == "inbound|3306||")
        .expect("tcp chain");
    let names: Vec<&str> = tcp.filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "envoy.filters.network.rbac",
            "envoy.filters.network.rbac",
            "envoy.filters.network.tcp_proxy"
        ]
    );
    let rbacs = network_rbacs(tcp);
    assert!(rbacs.iter().all(|r| r.stat_prefix == "tcp."));
    let deny = rbacs[0].rules.as_ref().expect("deny");
    assert_eq!(deny.action, rbac::Action::Deny as i32);
    assert_eq!(
        policy_text(policy(deny, "ns[default]-policy[deny]-rule[0]")),
        (vec!["and(any)".to_owned()], vec!["and(any)".to_owned()]),
        "HTTP-only conditions vanish: the DENY covers all TCP traffic"
    );
    let allow = rbacs[1].rules.as_ref().expect("allow");
    assert_eq!(
        allow.policies.keys().collect::<Vec<_>>(),
        ["ns[default]-policy[allow]-rule[1]"],
        "the methods rule is dropped on TCP"
    );
    assert_eq!(
        policy_text(policy(allow, "ns[default]-policy[allow]-rule[1]")),
        (
            vec!["and(or(port(3306)))".to_owned()],
            vec![
                "and(or(peer(exact:spiffe://cluster.local/ns/default/sa/productpage)))".to_owned()
            ]
        )
    );
    // Passthrough chains carry the same network RBAC.
    let pass = l
        .filter_chains
        .iter()
        .find(|c| c.name == "virtualInbound")
        .expect("passthrough");
    assert_eq!(network_rbacs(pass).len(), 2);
    // The HTTP chain keeps both rules of the ALLOW policy.
    let http = l
        .filter_chains
        .iter()
        .find(|c| c.name == "inbound|9080||")
        .expect("http chain");
    let rbacs = http_rbacs(&hcm(http));
    assert_eq!(rbacs[1].rules.as_ref().expect("allow").policies.len(), 2);
}

#[test]
fn untranslatable_rules_fail_closed() {
    // Bypasses validation: such objects must still never allow more.
    let mut yaml = ap(
        "default",
        "allow",
        r#"rules:
- when: [{key: request.unknown, values: [x]}]
- from: [{source: {ipBlocks: ["not-an-ip"]}}]
- from: [{source: {ipBlocks: ["10.0.0.1"]}}]"#,
    );
    yaml += &ap(
        "default",
        "deny",
        r#"action: DENY
rules:
- when: [{key: request.unknown, values: [x]}]
- from: [{source: {ipBlocks: ["not-an-ip"]}}]"#,
    );
    let g = generate(&productpage(), &ctx(&yaml));
    let rbacs = http_rbacs(&inbound_hcm(&g));
    let deny = rbacs[0].rules.as_ref().expect("deny");
    assert_eq!(
        policy_text(policy(deny, "ns[default]-policy[deny]-rule[0]")),
        (vec!["any".to_owned()], vec!["any".to_owned()]),
        "an unreadable DENY rule matches everything"
    );
    assert_eq!(
        policy_text(policy(deny, "ns[default]-policy[deny]-rule[1]")).1,
        ["and(any)"],
        "a DENY condition without valid values widens"
    );
    let allow = rbacs[1].rules.as_ref().expect("allow");
    assert_eq!(
        allow.policies.keys().collect::<Vec<_>>(),
        ["ns[default]-policy[allow]-rule[2]"],
        "unreadable and untranslatable ALLOW rules are dropped"
    );
    let fields: Vec<(&str, &str)> = g
        .diagnostics
        .iter()
        .map(|d| (d.object.as_str(), d.field.as_str()))
        .collect();
    assert!(fields.contains(&("AuthorizationPolicy default/allow", "spec.rules[0]")));
    assert!(fields.contains(&("AuthorizationPolicy default/allow", "spec.rules[1]")));
    assert!(fields.contains(&("AuthorizationPolicy default/deny", "spec.rules[0]")));
}

#[test]
fn request_principals_claims_and_audiences_match_the_jwt_payload_metadata() {
    let yaml = ap(
        "default",
        "jwt",
        r#"rules:
- from: [{source: {requestPrincipals: ["https://issuer.example/user-1", "*"]}}]
  when:
  - key: request.auth.claims[groups]
    values: ["admin"]
  - key: request.auth.audiences
    values: ["app"]
  - key: source.namespace
    values: ["default"]
  - key: source.principal
    notValues: ["cluster.local/ns/default/sa/bad"]"#,
    );
    let g = generate(&productpage(), &ctx(&yaml));
    let rbacs = http_rbacs(&inbound_hcm(&g));
    let rules = rbacs[0].rules.as_ref().expect("rules");
    let (_, princs) = policy_text(policy(rules, "ns[default]-policy[jwt]-rule[0]"));
    let jwt = "envoy.filters.http.jwt_authn";
    assert_eq!(
        princs,
        [format!(
            "and(or(and(meta({jwt}:payload.iss=exact:https://issuer.example), meta({jwt}:payload.sub=exact:user-1)), \
             and(meta({jwt}:payload.iss=regex:.+), meta({jwt}:payload.sub=regex:.+))), \
             meta({jwt}:payload.groups=or(one_of(exact:admin), exact:admin)), \
             meta({jwt}:payload.aud=or(one_of(exact:app), exact:app)), \
             or(peer(regex:.*/ns/default/.*)), \
             not(or(peer(exact:spiffe://cluster.local/ns/default/sa/bad))))"
        )]
    );
}

#[test]
fn principals_in_cluster_local_follow_the_mesh_trust_domain() {
    let yaml = ap(
        "default",
        "td",
        "rules: [{from: [{source: {principals: [\"cluster.local/ns/a/sa/b\"]}}]}]",
    );
    let g = generate(
        &productpage(),
        &ctx_with(
            &yaml,
            bookinfo_registry(),
            mesh("trustDomain: example.org\ntrustDomainAliases: [old.org]"),
        ),
    );
    let rbacs = http_rbacs(&inbound_hcm(&g));
    assert_eq!(
        policy_text(policy(
            rbacs[0].rules.as_ref().expect("rules"),
            "ns[default]-policy[td]-rule[0]"
        ))
        .1,
        [
            "and(or(peer(exact:spiffe://example.org/ns/a/sa/b), peer(exact:spiffe://old.org/ns/a/sa/b)))"
        ]
    );
}

#[test]
fn dry_run_policies_are_shadow_rules_with_istios_stat_prefixes() {
    let yaml = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: dry\n  namespace: default\n  annotations: {istio.io/dry-run: \"true\"}\nspec:\n  action: DENY\n  rules: [{}]\n";
    let g = generate(&productpage(), &ctx(yaml));
    let rbacs = http_rbacs(&inbound_hcm(&g));
    assert!(rbacs[0].rules.is_none(), "nothing enforced");
    assert_eq!(rbacs[0].shadow_rules_stat_prefix, "istio_dry_run_deny_");
    let shadow = rbacs[0].shadow_rules.as_ref().expect("shadow");
    assert!(
        shadow
            .policies
            .contains_key("ns[default]-policy[dry]-rule[0]")
    );
}

#[test]
fn custom_policies_mark_requests_in_rbac_shadow_rules_for_ext_authz() {
    let yaml = ap(
        "default",
        "ext",
        "action: CUSTOM\nprovider: {name: my-authz}\nrules: [{to: [{operation: {paths: [/secure*]}}]}]",
    );
    let mut reg = registry_with_tcp();
    let authz = service(
        "ext-authz",
        "default",
        &[(8000, Protocol::Http), (9000, Protocol::Grpc)],
    );
    reg.services.insert(authz.hostname.clone(), authz);
    let http_mesh = mesh(
        "extensionProviders:\n- name: my-authz\n  envoyExtAuthzHttp:\n    service: ext-authz.default.svc.cluster.local\n    port: 8000\n    timeout: 2s\n    pathPrefix: /check\n    failOpen: true\n    statusOnError: \"503\"\n    includeRequestHeadersInCheck: [x-ext-authz]\n    headersToUpstreamOnAllow: [x-user]\n    headersToDownstreamOnDeny: [\"x-reason*\"]\n",
    );
    let g = generate(&productpage(), &ctx_with(&yaml, reg.clone(), http_mesh));
    let h = inbound_hcm(&g);
    assert_eq!(
        filter_names(&h)[..2],
        ["envoy.filters.http.rbac", "envoy.filters.http.ext_authz"]
    );
    let rbac = &http_rbacs(&h)[0];
    assert!(rbac.rules.is_none(), "CUSTOM rules never enforce in RBAC");
    assert_eq!(rbac.shadow_rules_stat_prefix, "istio_ext_authz_");
    let shadow = rbac.shadow_rules.as_ref().expect("shadow rules");
    assert_eq!(shadow.action, rbac::Action::Deny as i32);
    assert_eq!(
        policy_text(policy(
            shadow,
            "istio-ext-authz-my-authz-ns[default]-policy[ext]-rule[0]"
        ))
        .0,
        ["and(or(path(prefix:/secure)))"]
    );
    let a = http_config(
        h.http_filters
            .iter()
            .find(|f| f.name == "envoy.filters.http.ext_authz")
            .expect("ext_authz filter"),
    );
    assert_eq!(
        a.type_url,
        "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
    );
    let ext: ExtAuthz = decode(a);
    assert!(ext.failure_mode_allow);
    assert_eq!(ext.transport_api_version, 2);
    assert_eq!(ext.status_on_error.map(|s| s.code), Some(503));
    let m = ext
        .filter_enabled_metadata
        .as_ref()
        .expect("enabled metadata");
    assert_eq!(m.filter, "envoy.filters.http.rbac");
    assert_eq!(
        format!("{:?}", m.path),
        format!("{:?}", vec![envoy_types::pb::envoy::r#type::matcher::v3::metadata_matcher::PathSegment {
            segment: Some(envoy_types::pb::envoy::r#type::matcher::v3::metadata_matcher::path_segment::Segment::Key(
                "istio_ext_authz_shadow_effective_policy_id".into()
            ))
        }])
    );
    assert_eq!(
        value_text(m.value.as_ref().expect("value")),
        "prefix:istio-ext-authz-my-authz"
    );
    let Some(ext_authz::Services::HttpService(svc)) = &ext.services else {
        panic!("http service")
    };
    assert_eq!(svc.path_prefix, "/check");
    let uri = svc.server_uri.as_ref().expect("uri");
    assert_eq!(uri.uri, "http://ext-authz.default.svc.cluster.local");
    assert_eq!(uri.timeout.as_ref().map(|t| t.seconds), Some(2));
    assert!(
        format!("{:?}", uri.http_upstream_type)
            .contains("outbound|8000||ext-authz.default.svc.cluster.local")
    );
    let resp = svc.authorization_response.as_ref().expect("response");
    assert_eq!(
        matcher_text(
            &resp
                .allowed_upstream_headers
                .as_ref()
                .expect("upstream")
                .patterns[0]
        ),
        "exact~:x-user"
    );
    assert_eq!(
        matcher_text(
            &resp
                .allowed_client_headers
                .as_ref()
                .expect("client")
                .patterns[0]
        ),
        "prefix~:x-reason"
    );
    assert_eq!(
        matcher_text(&ext.allowed_headers.as_ref().expect("allowed").patterns[0]),
        "exact~:x-ext-authz"
    );

    // A gRPC provider also guards TCP chains.
    let grpc_mesh = mesh(
        "extensionProviders:\n- name: my-authz\n  envoyExtAuthzGrpc: {service: ext-authz.default.svc.cluster.local, port: 9000}\n",
    );
    let yaml_reviews = ap(
        "default",
        "ext",
        "selector: {matchLabels: {app: reviews}}\naction: CUSTOM\nprovider: {name: my-authz}\nrules: [{to: [{operation: {ports: [\"3306\"]}}]}]",
    );
    let g = generate(
        &reviews_capture(),
        &ctx_with(&yaml_reviews, reg.clone(), grpc_mesh),
    );
    let tcp = g
        .listener("virtualInbound")
        .expect("listener")
        .filter_chains
        .iter()
        .find(|c| c.name == "inbound|3306||")
        .expect("tcp chain")
        .clone();
    let names: Vec<&str> = tcp.filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "envoy.filters.network.rbac",
            "envoy.filters.network.ext_authz",
            "envoy.filters.network.tcp_proxy"
        ]
    );
    let ext: TcpExtAuthz = decode(typed(&tcp.filters[1]));
    assert_eq!(ext.stat_prefix, "tcp.");
    assert_eq!(
        ext.filter_enabled_metadata
            .as_ref()
            .map(|m| m.filter.as_str()),
        Some("envoy.filters.network.rbac")
    );
    assert!(matches!(
        ext.grpc_service.as_ref().and_then(|g| g.target_specifier.as_ref()),
        Some(grpc_service::TargetSpecifier::EnvoyGrpc(e)) if e.cluster_name == "outbound|9000||ext-authz.default.svc.cluster.local"
            && e.authority == "ext-authz.default.svc.cluster.local"
    ));

    // An unknown provider denies what the CUSTOM rules select.
    let g = generate(&productpage(), &ctx_with(&yaml, reg, Default::default()));
    let h = inbound_hcm(&g);
    assert!(!filter_names(&h).contains(&"envoy.filters.http.ext_authz".to_owned()));
    let rules = http_rbacs(&h)[0].rules.clone().expect("deny rules");
    assert_eq!(rules.action, rbac::Action::Deny as i32);
    assert!(rules.policies.contains_key(
        "istio-ext-authz-my-authz-ns[default]-policy[ext]-rule[0]-deny-due-to-bad-CUSTOM-action"
    ));
    assert!(
        g.diagnostics
            .iter()
            .any(|d| d.field == "spec.provider.name")
    );
}

// ---------------------------------------------------------------------------
// RequestAuthentication → jwt_authn
// ---------------------------------------------------------------------------

fn jwt_config(h: &HttpConnectionManager) -> JwtAuthentication {
    let f = h
        .http_filters
        .iter()
        .find(|f| f.name == "envoy.filters.http.jwt_authn")
        .expect("jwt filter");
    let a = http_config(f);
    assert_eq!(
        a.type_url,
        "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"
    );
    decode(a)
}

const JWKS: &str = r#"{"keys":[{"kty":"RSA","e":"AQAB","n":"xAE7eB6qugXyCAG3yhh7pkDkT65pHymX-P7KfIupjf59vsdo91bSP9C8H07pSAGQO1MV_xFj9VswgsCg4R6otmg5PV2He95lZdHtOcU5DXIg_pbhLdKXbi66GlVeK6ABZOUW3WYtnNHD-91gVuoeJT_DwtGGcp4ignkgXfkiEm4sw-4sfb4qdt5oLbyVpmW6x9cfa7vs2WTfURiCrBoUqgBo_-4WTiULmmHSGZHOjzwa8WtrtOQGsAFjIbno85jp6MnGGGZPYZbDAa_b3y5u-YpW7ypZrvD8BgtKVjgtQgZhLAGezMt0ua3DRrWnKqTZ0BJ_EyxOGuHJrLsn00fnMQ"}]}"#;

#[test]
fn request_authentication_becomes_jwt_authn_with_providers_sorted_by_issuer() {
    let yaml = format!(
        r#"apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: default}}
spec:
  selector: {{matchLabels: {{app: productpage}}}}
  jwtRules:
  - issuer: "z-issuer"
    jwksUri: "https://keys.example.com/jwks.json"
    audiences: [app]
    fromHeaders: [{{name: x-token, prefix: "Bearer "}}]
    fromParams: [token]
    outputPayloadToHeader: x-payload
    outputClaimToHeaders: [{{header: x-sub, claim: sub}}]
    forwardOriginalToken: true
    spaceDelimitedClaims: [roles]
  - issuer: "a-issuer"
    jwks: '{}'
"#,
        JWKS
    );
    let mut reg = bookinfo_registry();
    let mut keys = service("keys", "default", &[(443, Protocol::Https)]);
    keys.hostname = "keys.example.com".into();
    keys.location = Location::MeshExternal;
    reg.services.insert(keys.hostname.clone(), keys);
    let g = generate(&productpage(), &ctx_with(&yaml, reg, Default::default()));
    assert!(
        !g.diagnostics
            .iter()
            .any(|d| d.object.starts_with("RequestAuthentication")),
        "{:?}",
        g.diagnostics
    );
    let cfg = jwt_config(&inbound_hcm(&g));
    assert!(cfg.bypass_cors_preflight);
    let a = &cfg.providers["origins-0"];
    assert_eq!(a.issuer, "a-issuer");
    assert!(matches!(
        &a.jwks_source_specifier,
        Some(jwt_provider::JwksSourceSpecifier::LocalJwks(d))
            if matches!(&d.specifier, Some(data_source::Specifier::InlineString(s)) if s == JWKS)
    ));
    let z = &cfg.providers["origins-1"];
    assert_eq!(z.issuer, "z-issuer");
    assert_eq!(z.audiences, ["app"]);
    assert!(z.forward);
    assert_eq!(z.forward_payload_header, "x-payload");
    assert_eq!(z.payload_in_metadata, "payload");
    assert!(
        !z.clear_route_cache,
        "sidecars do not clear the route cache"
    );
    assert_eq!(z.from_headers[0].name, "x-token");
    assert_eq!(z.from_headers[0].value_prefix, "Bearer ");
    assert_eq!(z.from_params, ["token"]);
    assert_eq!(z.claim_to_headers[0].header_name, "x-sub");
    assert_eq!(
        z.normalize_payload_in_metadata
            .as_ref()
            .expect("normalize")
            .space_delimited_claims,
        ["permission", "roles", "scope"]
    );
    let Some(jwt_provider::JwksSourceSpecifier::RemoteJwks(remote)) = &z.jwks_source_specifier
    else {
        panic!("remote jwks")
    };
    let uri = remote.http_uri.as_ref().expect("uri");
    assert_eq!(uri.uri, "https://keys.example.com/jwks.json");
    assert!(format!("{:?}", uri.http_upstream_type).contains("outbound|443||keys.example.com"));
    assert_eq!(uri.timeout.as_ref().map(|t| t.seconds), Some(5));
    assert_eq!(remote.cache_duration.as_ref().map(|d| d.seconds), Some(300));

    // Two providers: any one of them, or all-of(provider or missing).
    let rule = &cfg.rules[0];
    let Some(requirement_rule::RequirementType::Requires(req)) = &rule.requirement_type else {
        panic!("requires")
    };
    let Some(jwt_requirement::RequiresType::RequiresAny(any)) = &req.requires_type else {
        panic!("requires_any")
    };
    assert_eq!(any.requirements.len(), 3);
    assert!(matches!(
        &any.requirements[0].requires_type,
        Some(jwt_requirement::RequiresType::ProviderName(n)) if n == "origins-0"
    ));
    let Some(jwt_requirement::RequiresType::RequiresAll(all)) = &any.requirements[2].requires_type
    else {
        panic!("requires_all")
    };
    assert_eq!(all.requirements.len(), 2);
    for (i, r) in all.requirements.iter().enumerate() {
        let Some(jwt_requirement::RequiresType::RequiresAny(or)) = &r.requires_type else {
            panic!("provider or missing")
        };
        assert!(matches!(
            &or.requirements[0].requires_type,
            Some(jwt_requirement::RequiresType::ProviderName(n)) if *n == format!("origins-{i}")
        ));
        assert!(matches!(
            or.requirements[1].requires_type,
            Some(jwt_requirement::RequiresType::AllowMissing(_))
        ));
    }
}

#[test]
fn a_single_jwt_rule_allows_missing_tokens_and_unusable_keys_fail_closed() {
    let yaml = "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt, namespace: istio-system}\nspec:\n  jwtRules: [{issuer: only}]\n";
    let g = generate(&productpage(), &ctx(yaml));
    let cfg = jwt_config(&inbound_hcm(&g));
    let Some(requirement_rule::RequirementType::Requires(req)) = &cfg.rules[0].requirement_type
    else {
        panic!("requires")
    };
    let Some(jwt_requirement::RequiresType::RequiresAny(any)) = &req.requires_type else {
        panic!("requires_any")
    };
    assert_eq!(any.requirements.len(), 2);
    assert!(matches!(
        any.requirements[1].requires_type,
        Some(jwt_requirement::RequiresType::AllowMissing(_))
    ));
    assert!(matches!(
        &cfg.providers["origins-0"].jwks_source_specifier,
        Some(jwt_provider::JwksSourceSpecifier::LocalJwks(_))
    ));
    assert!(
        g.diagnostics
            .iter()
            .any(|d| d.object == "RequestAuthentication istio-system/jwt")
    );
}

// ---------------------------------------------------------------------------
// gateways, determinism
// ---------------------------------------------------------------------------

#[test]
fn gateways_apply_policies_selecting_them_and_keep_plaintext_listeners() {
    let mut yaml = include_str!("fixtures/bookinfo-gateway.yaml").to_owned();
    yaml += "\n---\n";
    yaml += &ap(
        "istio-system",
        "ingress",
        "selector: {matchLabels: {istio: ingressgateway}}\naction: DENY\nrules: [{to: [{operation: {paths: [/admin*]}}]}]",
    );
    yaml += "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt, namespace: istio-system}\nspec:\n  selector: {matchLabels: {istio: ingressgateway}}\n  jwtRules: [{issuer: gw, jwks: '{}'}]\n";
    let mut node = ProxyNode::sidecar(
        "istio-system",
        &[("istio", "ingressgateway")],
        Some(Default::default()),
    );
    node.kind = NodeKind::Router;
    let g = generate(&node, &ctx(&yaml));
    let l = g.listener("0.0.0.0_8080").expect("gateway listener");
    assert!(l.filter_chains[0].transport_socket.is_none());
    let h = hcm(&l.filter_chains[0]);
    assert_eq!(
        filter_names(&h)[..2],
        ["envoy.filters.http.jwt_authn", "envoy.filters.http.rbac"]
    );
    assert!(jwt_config(&h).providers["origins-0"].clear_route_cache);
    // Gateways reach mesh services with auto mTLS too.
    let c = cluster(&g, &format!("outbound|9080||{PRODUCTPAGE}"));
    assert_eq!(c.transport_socket_matches.len(), 2);
}

#[test]
fn security_output_is_byte_for_byte_deterministic() {
    let mut yaml = String::new();
    for i in 0..12 {
        yaml += &ap(
            "default",
            &format!("p{i}"),
            &format!(
                "rules: [{{to: [{{operation: {{paths: [/p{i}]}}}}]}}, {{from: [{{source: {{namespaces: [n{i}]}}}}]}}]"
            ),
        );
    }
    yaml += "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt, namespace: default}\nspec:\n  jwtRules: [{issuer: a, jwks: '{}'}, {issuer: b, jwks: '{}'}, {issuer: c, jwks: '{}'}]\n";
    let versions: Vec<String> = (0..4)
        .map(|_| {
            let snap = pilot::to_snapshot(&generate(&productpage(), &ctx(&yaml)));
            format!(
                "{:?}",
                snap.get(xds::type_url::LISTENER).map(|t| t.version.clone())
            )
        })
        .collect();
    assert!(versions.windows(2).all(|w| w[0] == w[1]), "{versions:?}");
}
