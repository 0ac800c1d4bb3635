//! Translation rules, one behaviour per test: given this configuration,
//! that Envoy resource.

mod support;

use std::collections::HashMap;

use envoy_types::pb::envoy::config::cluster::v3::cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::route::v3::{header_matcher, route, route_action, route_match};
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{HttpFault, fault_abort};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager,
};
use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use pilot::{NodeKind, ProxyNode};
use registry::Protocol;
use support::*;

fn hcm_of(g: &pilot::Generated, listener: &str) -> HttpConnectionManager {
    let l = g
        .listener(listener)
        .unwrap_or_else(|| panic!("no listener {listener}"));
    let f = &l.filter_chains[0].filters[0];
    match &f.config_type {
        Some(envoy_types::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(a)) => {
            decode(a)
        }
        other => panic!("{other:?}"),
    }
}

fn s(v: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(v.into())),
    }
}

fn num(v: f64) -> Value {
    Value {
        kind: Some(Kind::NumberValue(v)),
    }
}

fn strukt(fields: &[(&str, Value)]) -> Value {
    Value {
        kind: Some(Kind::StructValue(Struct {
            fields: fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        })),
    }
}

#[test]
fn an_istio_node_id_and_metadata_give_namespace_labels_and_local_ports() {
    let node = Node {
        id: "sidecar~10.1.2.3~reviews-v1-abc.shop~shop.svc.cluster.local".into(),
        metadata: Some(Struct {
            fields: HashMap::from([
                ("NAMESPACE".to_owned(), s("shop")),
                (
                    "LABELS".to_owned(),
                    strukt(&[("app", s("reviews")), ("version", s("v1"))]),
                ),
                ("SERVICE_ACCOUNT".to_owned(), s("bookinfo-reviews")),
                ("INSTANCE_IPS".to_owned(), s("10.1.2.3,fd00::3")),
                ("WORKLOAD_NAME".to_owned(), s("reviews-v1")),
                ("TRELLIS_OUTBOUND_PORT".to_owned(), num(15001.0)),
                (
                    "TRELLIS_INBOUND_PORTS".to_owned(),
                    strukt(&[("9080", num(15106.0))]),
                ),
                (
                    "TRELLIS_APP_PORTS".to_owned(),
                    strukt(&[("9080", s("19080"))]),
                ),
            ]),
        }),
        ..Default::default()
    };
    let p = ProxyNode::from_node(&node).expect("node");
    assert_eq!(p.kind, NodeKind::Sidecar);
    assert_eq!(p.ip, "10.1.2.3");
    assert_eq!(p.pod_name, "reviews-v1-abc");
    assert_eq!(p.namespace, "shop");
    assert_eq!(p.labels.get("version").map(String::as_str), Some("v1"));
    assert_eq!(p.instance_ips, ["10.1.2.3", "fd00::3"]);
    assert_eq!(p.workload_name, "reviews-v1");
    let local = p.local.expect("local mode");
    assert_eq!(local.outbound, Some(15001));
    assert_eq!(local.inbound.get(&9080), Some(&15106));
    assert_eq!(local.app.get(&9080), Some(&19080));
}

#[test]
fn a_node_without_local_keys_is_in_capture_mode_and_a_bad_id_is_an_error() {
    let node = Node {
        id: "router~10.0.0.1~gw.istio-system~istio-system.svc.cluster.local".into(),
        ..Default::default()
    };
    let p = ProxyNode::from_node(&node).expect("node");
    assert_eq!(p.kind, NodeKind::Router);
    assert_eq!(p.namespace, "istio-system");
    assert!(p.local.is_none());
    assert!(
        ProxyNode::from_node(&Node {
            id: "nope".into(),
            ..Default::default()
        })
        .is_err()
    );
}

#[test]
fn a_local_sidecar_proxies_http_on_its_loopback_outbound_port_via_rds_outbound_http() {
    let g = generate(&productpage(), &ctx(""));
    let l = g.listener("outbound_http").expect("listener");
    let addr = format!("{:?}", l.address);
    assert!(
        addr.contains("127.0.0.1") && addr.contains("15101"),
        "{addr}"
    );
    let hcm = hcm_of(&g, "outbound_http");
    assert_eq!(hcm.stat_prefix, "outbound_0.0.0.0_http");
    assert_eq!(
        hcm.codec_type,
        http_connection_manager::CodecType::Auto as i32
    );
    match hcm.route_specifier {
        Some(http_connection_manager::RouteSpecifier::Rds(rds)) => {
            assert_eq!(rds.route_config_name, "outbound-http")
        }
        other => panic!("{other:?}"),
    }
    let filters: Vec<_> = hcm.http_filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        filters,
        [
            "istio.metadata_exchange",
            "envoy.filters.http.fault",
            "envoy.filters.http.cors",
            "istio.stats",
            "envoy.filters.http.router"
        ]
    );
    assert_eq!(
        hcm.http_protocol_options
            .and_then(|o| o.allow_absolute_url)
            .map(|b| b.value),
        Some(true)
    );
}

#[test]
fn each_http_service_port_gets_a_vhost_named_host_port_with_fqdn_and_short_names() {
    let g = generate(&productpage(), &ctx(""));
    let vh = vhost(
        &g,
        "outbound-http",
        "reviews.default.svc.cluster.local:9080",
    );
    for d in [
        "reviews.default.svc.cluster.local:9080",
        "reviews:9080",
        "reviews.default:9080",
        "reviews.default.svc:9080",
    ] {
        assert!(
            vh.domains.iter().any(|x| x == d),
            "{d} missing from {:?}",
            vh.domains
        );
    }
    assert!(
        !vh.domains.iter().any(|x| x == "reviews"),
        "bare name only for port 80"
    );
    // Without a VirtualService: the default route to the service cluster,
    // no timeout, Istio's default retries.
    let r = &vh.routes[0];
    assert_eq!(cluster_of(r), format!("outbound|9080||{REVIEWS}"));
    let a = action(r);
    assert_eq!(
        a.timeout.as_ref().map(|t| (t.seconds, t.nanos)),
        Some((0, 0))
    );
    let retry = a.retry_policy.as_ref().expect("default retries");
    assert_eq!(retry.num_retries.as_ref().map(|n| n.value), Some(2));
    assert_eq!(
        retry.retry_on,
        "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
    );
    assert_eq!(retry.host_selection_retry_max_attempts, 5);
    assert_eq!(
        retry.retry_host_predicate[0].name,
        "envoy.retry_host_predicates.previous_hosts"
    );
}

#[test]
fn port_80_services_also_answer_to_bare_names_and_other_namespaces_do_not_get_the_short_name() {
    let mut reg = bookinfo_registry();
    let web = service("web", "other", &[(80, Protocol::Http)]);
    reg.services.insert(web.hostname.clone(), web);
    let g = generate(
        &productpage(),
        &ctx_with("", reg, api::MeshConfig::default()),
    );
    let vh = vhost(&g, "outbound-http", "web.other.svc.cluster.local:80");
    assert!(
        vh.domains
            .iter()
            .any(|d| d == "web.other.svc.cluster.local")
    );
    assert!(vh.domains.iter().any(|d| d == "web.other"));
    assert!(vh.domains.iter().any(|d| d == "web.other:80"));
    assert!(
        !vh.domains.iter().any(|d| d == "web" || d == "web:80"),
        "{:?}",
        vh.domains
    );
}

#[test]
fn a_virtual_service_with_80_20_weights_gives_weighted_clusters_80_20_on_the_subsets() {
    let g = generate(
        &productpage(),
        &ctx(include_str!("fixtures/reviews-80-20.yaml")),
    );
    let vh = vhost(
        &g,
        "outbound-http",
        "reviews.default.svc.cluster.local:9080",
    );
    assert_eq!(
        weighted(&vh.routes[0]),
        [
            (format!("outbound|9080|v1|{REVIEWS}"), 80),
            (format!("outbound|9080|v2|{REVIEWS}"), 20)
        ]
    );
}

#[test]
fn a_header_match_routes_jason_to_v2_and_everyone_else_to_v3() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match:
    - headers:
        end-user: {exact: jason}
    route:
    - destination: {host: reviews, subset: v2}
  - route:
    - destination: {host: reviews, subset: v3}
"#;
    let g = generate(&productpage(), &ctx(yaml));
    let vh = vhost(
        &g,
        "outbound-http",
        "reviews.default.svc.cluster.local:9080",
    );
    assert_eq!(vh.routes.len(), 2);
    let m = vh.routes[0].r#match.as_ref().expect("match");
    assert_eq!(m.headers[0].name, "end-user");
    assert!(matches!(
        m.headers[0].header_match_specifier,
        Some(header_matcher::HeaderMatchSpecifier::StringMatch(_))
    ));
    assert_eq!(
        cluster_of(&vh.routes[0]),
        format!("outbound|9080|v2|{REVIEWS}")
    );
    assert_eq!(
        cluster_of(&vh.routes[1]),
        format!("outbound|9080|v3|{REVIEWS}")
    );
}

#[test]
fn several_matches_expand_into_several_routes_with_the_same_action() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - name: api
    match:
    - uri: {exact: /a}
    - uri: {prefix: /b}
      ignoreUriCase: true
    - uri: {regex: "/c/[0-9]+"}
      method: {exact: GET}
      queryParams:
        q: {exact: "1"}
      withoutHeaders:
        x-debug: {}
    - uri: {prefix: /d}
      port: 9999
    - uri: {prefix: /e}
      sourceLabels: {app: somebody-else}
    route:
    - destination: {host: reviews}
"#;
    let g = generate(&productpage(), &ctx(yaml));
    let vh = vhost(
        &g,
        "outbound-http",
        "reviews.default.svc.cluster.local:9080",
    );
    assert_eq!(
        vh.routes.len(),
        3,
        "port 9999 and foreign sourceLabels matches are dropped"
    );
    let specs: Vec<_> = vh
        .routes
        .iter()
        .map(|r| r.r#match.as_ref().and_then(|m| m.path_specifier.clone()))
        .collect();
    assert_eq!(
        specs[0],
        Some(route_match::PathSpecifier::Path("/a".into()))
    );
    assert_eq!(
        specs[1],
        Some(route_match::PathSpecifier::Prefix("/b".into()))
    );
    assert!(
        matches!(&specs[2], Some(route_match::PathSpecifier::SafeRegex(r)) if r.regex == "/c/[0-9]+")
    );
    assert_eq!(
        vh.routes[1]
            .r#match
            .as_ref()
            .and_then(|m| m.case_sensitive)
            .map(|b| b.value),
        Some(false)
    );
    let third = vh.routes[2].r#match.as_ref().expect("match");
    assert!(third.headers.iter().any(|h| h.name == ":method"));
    assert!(
        third
            .headers
            .iter()
            .any(|h| h.name == "x-debug" && h.invert_match)
    );
    assert_eq!(third.query_parameters[0].name, "q");
    for r in &vh.routes {
        assert_eq!(r.name, "api");
        assert_eq!(cluster_of(r), format!("outbound|9080||{REVIEWS}"));
    }
}

#[test]
fn a_fault_abort_of_100_percent_is_a_per_route_http_fault_per_million() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings]
  http:
  - fault:
      abort:
        percentage: {value: 100.0}
        httpStatus: 500
      delay:
        percentage: {value: 12.5}
        fixedDelay: 7s
    route:
    - destination: {host: ratings, subset: v1}
"#;
    let g = generate(&productpage(), &ctx(yaml));
    let vh = vhost(
        &g,
        "outbound-http",
        "ratings.default.svc.cluster.local:9080",
    );
    let fault: HttpFault =
        decode(&vh.routes[0].typed_per_filter_config["envoy.filters.http.fault"]);
    let abort = fault.abort.expect("abort");
    assert_eq!(
        abort.error_type,
        Some(fault_abort::ErrorType::HttpStatus(500))
    );
    let p = abort.percentage.expect("percentage");
    assert_eq!(
        (p.numerator, p.denominator),
        (1_000_000, DenominatorType::Million as i32)
    );
    let delay = fault.delay.expect("delay");
    assert_eq!(delay.percentage.map(|p| p.numerator), Some(125_000));
}

#[test]
fn timeouts_retries_rewrites_headers_and_mirrors_are_set_on_the_route() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - timeout: 3s
    retries: {attempts: 4, perTryTimeout: 1s, retryOn: "5xx,503,gateway-error"}
    rewrite: {uri: /v2, authority: backend.internal}
    headers:
      request:
        set: {x-a: "1"}
        add: {x-b: "2"}
        remove: [x-c]
      response:
        set: {x-d: "3"}
    mirror: {host: ratings}
    mirrorPercentage: {value: 50.0}
    corsPolicy:
      allowOrigins: [{exact: "https://a.example"}, {regex: ".*\\.b\\.example"}]
      allowMethods: [GET, POST]
      allowHeaders: [x-a, x-b]
      maxAge: 24h
      allowCredentials: true
    route:
    - destination: {host: reviews, subset: v1}
  - retries: {attempts: 0}
    route:
    - destination: {host: reviews}
"#;
    let g = generate(&productpage(), &ctx(yaml));
    let vh = vhost(
        &g,
        "outbound-http",
        "reviews.default.svc.cluster.local:9080",
    );
    let r = &vh.routes[0];
    let a = action(r);
    assert_eq!(a.timeout.as_ref().map(|t| t.seconds), Some(3));
    let retry = a.retry_policy.as_ref().expect("retries");
    assert_eq!(retry.num_retries.as_ref().map(|n| n.value), Some(4));
    assert_eq!(retry.retry_on, "5xx,gateway-error,retriable-status-codes");
    assert_eq!(retry.retriable_status_codes, [503]);
    assert_eq!(retry.per_try_timeout.as_ref().map(|t| t.seconds), Some(1));
    assert_eq!(a.prefix_rewrite, "/v2");
    assert_eq!(
        a.host_rewrite_specifier,
        Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(
            "backend.internal".into()
        ))
    );
    let set = r
        .request_headers_to_add
        .iter()
        .find(|h| h.header.as_ref().is_some_and(|h| h.key == "x-a"))
        .expect("x-a");
    let add = r
        .request_headers_to_add
        .iter()
        .find(|h| h.header.as_ref().is_some_and(|h| h.key == "x-b"))
        .expect("x-b");
    assert_ne!(
        set.append_action, add.append_action,
        "set overwrites, add appends"
    );
    assert_eq!(r.request_headers_to_remove, ["x-c"]);
    assert_eq!(r.response_headers_to_add.len(), 1);
    let m = &a.request_mirror_policies[0];
    assert_eq!(m.cluster, format!("outbound|9080||{RATINGS}"));
    assert_eq!(
        m.runtime_fraction
            .as_ref()
            .and_then(|f| f.default_value.as_ref())
            .map(|v| v.numerator),
        Some(500_000)
    );
    let cors: CorsPolicy = decode(&r.typed_per_filter_config["envoy.filters.http.cors"]);
    assert_eq!(cors.allow_origin_string_match.len(), 2);
    assert_eq!(cors.allow_methods, "GET,POST");
    assert_eq!(cors.allow_headers, "x-a,x-b");
    assert_eq!(cors.max_age, "86400");
    assert_eq!(cors.allow_credentials.map(|b| b.value), Some(true));
    // attempts: 0 → no retry policy at all.
    assert!(action(&vh.routes[1]).retry_policy.is_none());
}

#[test]
fn redirects_and_direct_responses_replace_the_route_action() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {exact: /old}}]
    redirect: {uri: /new, authority: new.example, port: 8443, scheme: https, redirectCode: 308}
  - match: [{uri: {exact: /teapot}}]
    directResponse: {status: 418, body: {string: "short and stout"}}
  - directResponse: {status: 200, body: {bytes: "aGVsbG8="}}
"#;
    let g = generate(&productpage(), &ctx(yaml));
    let vh = vhost(
        &g,
        "outbound-http",
        "reviews.default.svc.cluster.local:9080",
    );
    match &vh.routes[0].action {
        Some(route::Action::Redirect(r)) => {
            assert_eq!(r.host_redirect, "new.example");
            assert_eq!(r.port_redirect, 8443);
            assert_eq!(r.response_code, 4, "308 is PERMANENT_REDIRECT");
        }
        other => panic!("{other:?}"),
    }
    match &vh.routes[1].action {
        Some(route::Action::DirectResponse(d)) => assert_eq!(d.status, 418),
        other => panic!("{other:?}"),
    }
    match &vh.routes[2].action {
        Some(route::Action::DirectResponse(d)) => assert_eq!(
            d.body.as_ref().and_then(|b| b.specifier.clone()),
            Some(
                envoy_types::pb::envoy::config::core::v3::data_source::Specifier::InlineBytes(
                    b"hello".to_vec()
                )
            )
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn destination_rule_subsets_give_one_eds_cluster_each_with_their_endpoints_by_locality() {
    let g = generate(
        &productpage(),
        &ctx(include_str!("fixtures/reviews-80-20.yaml")),
    );
    for subset in ["", "v1", "v2", "v3"] {
        let name = format!("outbound|9080|{subset}|{REVIEWS}");
        let c = g.cluster(&name).unwrap_or_else(|| panic!("{name}"));
        assert_eq!(
            c.cluster_discovery_type,
            Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32
            ))
        );
        assert_eq!(c.connect_timeout.as_ref().map(|d| d.seconds), Some(10));
        assert!(g.endpoint(&name).is_some(), "assignment for {name}");
    }
    let all = g
        .endpoint(&format!("outbound|9080||{REVIEWS}"))
        .expect("cla");
    assert_eq!(all.endpoints.len(), 2, "zone-a and zone-b");
    let zone_a = all
        .endpoints
        .iter()
        .find(|l| l.locality.as_ref().is_some_and(|l| l.zone == "zone-a"))
        .expect("zone-a");
    assert_eq!(zone_a.lb_endpoints.len(), 2);
    assert_eq!(
        zone_a.locality.as_ref().map(|l| l.region.as_str()),
        Some("us-east")
    );
    let v3 = g
        .endpoint(&format!("outbound|9080|v3|{REVIEWS}"))
        .expect("cla");
    assert_eq!(
        v3.endpoints
            .iter()
            .map(|l| l.lb_endpoints.len())
            .sum::<usize>(),
        1
    );
}

#[test]
fn traffic_policy_sets_lb_circuit_breakers_outlier_detection_with_subset_and_port_overrides() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    connectionPool:
      tcp: {maxConnections: 100, connectTimeout: 3s}
      http: {http1MaxPendingRequests: 10, http2MaxRequests: 200, maxRequestsPerConnection: 5, maxRetries: 7, idleTimeout: 30s}
    outlierDetection:
      consecutive5xxErrors: 3
      consecutiveGatewayErrors: 2
      interval: 5s
      baseEjectionTime: 1m
      maxEjectionPercent: 50
      minHealthPercent: 20
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      loadBalancer: {simple: RANDOM}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      portLevelSettings:
      - port: {number: 9080}
        loadBalancer:
          consistentHash: {httpHeaderName: x-user}
"#;
    let g = generate(&productpage(), &ctx(yaml));
    let top = g
        .cluster(&format!("outbound|9080||{REVIEWS}"))
        .expect("top");
    assert_eq!(top.lb_policy, cluster::LbPolicy::RoundRobin as i32);
    assert_eq!(top.connect_timeout.as_ref().map(|d| d.seconds), Some(3));
    let t = &top.circuit_breakers.as_ref().expect("cb").thresholds[0];
    assert_eq!(t.max_connections.as_ref().map(|v| v.value), Some(100));
    assert_eq!(t.max_pending_requests.as_ref().map(|v| v.value), Some(10));
    assert_eq!(t.max_requests.as_ref().map(|v| v.value), Some(200));
    assert_eq!(t.max_retries.as_ref().map(|v| v.value), Some(7));
    assert!(
        top.typed_extension_protocol_options
            .contains_key("envoy.extensions.upstreams.http.v3.HttpProtocolOptions")
    );
    let od = top.outlier_detection.as_ref().expect("outlier");
    assert_eq!(od.consecutive_5xx.as_ref().map(|v| v.value), Some(3));
    assert_eq!(
        od.consecutive_gateway_failure.as_ref().map(|v| v.value),
        Some(2)
    );
    assert_eq!(od.interval.as_ref().map(|d| d.seconds), Some(5));
    assert_eq!(od.base_ejection_time.as_ref().map(|d| d.seconds), Some(60));
    assert_eq!(od.max_ejection_percent.as_ref().map(|v| v.value), Some(50));
    assert_eq!(
        top.common_lb_config
            .as_ref()
            .and_then(|c| c.healthy_panic_threshold.as_ref())
            .map(|p| p.value),
        Some(20.0)
    );
    // Subset v1: its load balancer wins, the rest is inherited.
    let v1 = g
        .cluster(&format!("outbound|9080|v1|{REVIEWS}"))
        .expect("v1");
    assert_eq!(v1.lb_policy, cluster::LbPolicy::Random as i32);
    assert!(v1.outlier_detection.is_some());
    // Subset v2: port-level settings replace the policy for that port, and
    // the consistent hash becomes a route hash policy.
    let v2 = g
        .cluster(&format!("outbound|9080|v2|{REVIEWS}"))
        .expect("v2");
    assert_eq!(v2.lb_policy, cluster::LbPolicy::RingHash as i32);
    assert!(
        v2.outlier_detection.is_none(),
        "port-level settings do not inherit"
    );
    let vs = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v2}
"#;
    let g = generate(&productpage(), &ctx(&format!("{yaml}\n---\n{vs}")));
    let vh = vhost(
        &g,
        "outbound-http",
        "reviews.default.svc.cluster.local:9080",
    );
    let hp = &action(&vh.routes[0]).hash_policy;
    assert_eq!(hp.len(), 1);
    assert!(format!("{hp:?}").contains("x-user"));
}

#[test]
fn a_destination_rule_istio_mutual_is_a_plain_transport_socket_not_auto_mtls_matches() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    tls: {mode: ISTIO_MUTUAL}
"#;
    let g = generate(&productpage(), &ctx(yaml));
    let c = g
        .cluster(&format!("outbound|9080||{REVIEWS}"))
        .expect("cluster");
    assert!(c.transport_socket_matches.is_empty());
    assert_eq!(
        c.transport_socket.as_ref().map(|t| t.name.as_str()),
        Some("envoy.transport_sockets.tls")
    );
    assert!(g.diagnostics.is_empty(), "{:?}", g.diagnostics);
}

#[test]
fn a_destination_rule_in_the_proxy_namespace_beats_the_services_and_the_root_one() {
    let rule = |ns: &str, lb: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: r-{ns}, namespace: {ns}}}\nspec:\n  host: reviews.default.svc.cluster.local\n  trafficPolicy:\n    loadBalancer: {{simple: {lb}}}\n"
        )
    };
    let yaml = [
        rule("istio-system", "RANDOM"),
        rule("default", "ROUND_ROBIN"),
        rule("client", "LEAST_REQUEST"),
    ]
    .join("---\n");
    let lb = |ns: &str| {
        let node = ProxyNode::sidecar(ns, &[], Some(local_ports()));
        generate(&node, &ctx(&yaml))
            .cluster(&format!("outbound|9080||{REVIEWS}"))
            .expect("cluster")
            .lb_policy
    };
    assert_eq!(lb("client"), cluster::LbPolicy::LeastRequest as i32);
    assert_eq!(lb("default"), cluster::LbPolicy::RoundRobin as i32);
    let root_only = rule("istio-system", "RANDOM");
    let node = ProxyNode::sidecar("client", &[], Some(local_ports()));
    let g = generate(&node, &ctx(&root_only));
    assert_eq!(
        g.cluster(&format!("outbound|9080||{REVIEWS}"))
            .expect("cluster")
            .lb_policy,
        cluster::LbPolicy::Random as i32
    );
}

#[test]
fn export_to_dot_and_a_sidecar_egress_list_hide_services() {
    let mut reg = bookinfo_registry();
    let mut private = service("private", "team", &[(8080, Protocol::Http)]);
    private.export_to = vec![".".into()];
    reg.services.insert(private.hostname.clone(), private);
    let g = generate(
        &productpage(),
        &ctx_with("", reg.clone(), api::MeshConfig::default()),
    );
    assert!(
        g.cluster("outbound|8080||private.team.svc.cluster.local")
            .is_none()
    );
    assert!(g.cluster(&format!("outbound|9080||{REVIEWS}")).is_some());

    let sidecar = r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default}
spec:
  egress:
  - hosts: ["./ratings.default.svc.cluster.local"]
"#;
    let g = generate(
        &productpage(),
        &ctx_with(sidecar, reg, api::MeshConfig::default()),
    );
    assert!(g.cluster(&format!("outbound|9080||{RATINGS}")).is_some());
    assert!(g.cluster(&format!("outbound|9080||{REVIEWS}")).is_none());
}

#[test]
fn unknown_hosts_get_404_in_local_allow_any_and_502_with_registry_only() {
    let g = generate(&productpage(), &ctx(""));
    let vh = vhost(&g, "outbound-http", "allow_any");
    assert_eq!(vh.domains, ["*"]);
    assert!(
        matches!(&vh.routes[0].action, Some(route::Action::DirectResponse(d)) if d.status == 404)
    );
    let mesh = api::MeshConfig::from_yaml("outboundTrafficPolicy: {mode: REGISTRY_ONLY}", "mesh")
        .expect("mesh");
    let g = generate(&productpage(), &ctx_with("", bookinfo_registry(), mesh));
    let vh = vhost(&g, "outbound-http", "block_all");
    assert!(
        matches!(&vh.routes[0].action, Some(route::Action::DirectResponse(d)) if d.status == 502)
    );
    assert!(g.cluster("BlackHoleCluster").is_some() && g.cluster("PassthroughCluster").is_some());
}

#[test]
fn a_local_sidecar_receives_on_its_inbound_port_and_forwards_to_the_app_port() {
    let g = generate(&productpage(), &ctx(""));
    let l = g.listener("inbound_9080").expect("inbound listener");
    assert!(format!("{:?}", l.address).contains("15102"));
    let hcm = hcm_of(&g, "inbound_9080");
    let Some(http_connection_manager::RouteSpecifier::RouteConfig(rc)) = hcm.route_specifier else {
        panic!("inline route expected");
    };
    assert_eq!(cluster_of(&rc.virtual_hosts[0].routes[0]), "inbound|9080||");
    let c = g.cluster("inbound|9080||").expect("inbound cluster");
    let cla = c.load_assignment.as_ref().expect("static endpoints");
    assert!(format!("{cla:?}").contains("19080"));
}

#[test]
fn a_capture_mode_sidecar_has_virtual_outbound_and_inbound_and_per_port_route_tables() {
    let mut node = ProxyNode::sidecar("default", &[("app", "reviews")], None);
    node.ip = "10.0.0.13".into();
    node.instance_ips = vec!["10.0.0.13".into()];
    let g = generate(&node, &ctx(""));
    assert!(g.listener("virtualOutbound").is_some());
    assert!(g.listener("virtualInbound").is_some());
    assert!(g.listener("0.0.0.0_9080").is_some());
    let vh = vhost(&g, "9080", "reviews.default.svc.cluster.local:9080");
    assert!(vh.domains.iter().any(|d| d == "reviews"));
    assert!(
        g.cluster("inbound|9080||").is_some(),
        "the workload serves 9080"
    );
    assert_eq!(
        cluster_of(&vhost(&g, "9080", "allow_any").routes[0]),
        "PassthroughCluster"
    );
}

#[test]
fn the_bookinfo_gateway_routes_its_matches_to_productpage_on_http_8080() {
    let yaml = include_str!("fixtures/bookinfo-gateway.yaml");
    let mut node = ProxyNode::sidecar(
        "istio-system",
        &[("istio", "ingressgateway")],
        Some(Default::default()),
    );
    node.kind = NodeKind::Router;
    let g = generate(&node, &ctx(yaml));
    let l = g.listener("0.0.0.0_8080").expect("gateway listener");
    assert!(
        format!("{:?}", l.address).contains("127.0.0.1"),
        "local mode binds loopback"
    );
    let vh = vhost(&g, "http.8080", "*:8080");
    assert_eq!(vh.domains, ["*"]);
    assert_eq!(vh.routes.len(), 5, "one route per match");
    for r in &vh.routes {
        assert_eq!(
            cluster_of(r),
            "outbound|9080||productpage.default.svc.cluster.local"
        );
    }
    // Capture mode binds 0.0.0.0; a gateway with other labels gets nothing.
    node.local = None;
    let g = generate(&node, &ctx(yaml));
    assert!(
        !format!(
            "{:?}",
            g.listener("0.0.0.0_8080").expect("listener").address
        )
        .contains("127.0.0.1")
    );
    node.labels.clear();
    assert!(generate(&node, &ctx(yaml)).listeners.is_empty());
}

#[test]
fn a_delegate_virtual_service_contributes_its_routes_under_the_root_match() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: root}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /api}}]
    delegate: {name: api}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api}
spec:
  http:
  - match: [{headers: {x-v: {exact: "3"}}}]
    route: [{destination: {host: reviews, subset: v3}}]
  - route: [{destination: {host: reviews, subset: v1}}]
"#;
    let g = generate(&productpage(), &ctx(yaml));
    let vh = vhost(
        &g,
        "outbound-http",
        "reviews.default.svc.cluster.local:9080",
    );
    assert_eq!(vh.routes.len(), 2);
    for r in &vh.routes {
        assert_eq!(
            r.r#match.as_ref().and_then(|m| m.path_specifier.clone()),
            Some(route_match::PathSpecifier::Prefix("/api".into()))
        );
    }
    assert_eq!(
        vh.routes[0].r#match.as_ref().map(|m| m.headers.len()),
        Some(1)
    );
    assert_eq!(
        cluster_of(&vh.routes[0]),
        format!("outbound|9080|v3|{REVIEWS}")
    );
    assert_eq!(
        cluster_of(&vh.routes[1]),
        format!("outbound|9080|v1|{REVIEWS}")
    );
}

#[test]
fn snapshot_versions_are_content_hashes_so_only_changed_types_move() {
    let c1 = ctx(include_str!("fixtures/reviews-80-20.yaml"));
    let a = pilot::to_snapshot(&generate(&productpage(), &c1));
    let b = pilot::to_snapshot(&generate(&productpage(), &c1));
    assert_eq!(a, b);
    let changed = include_str!("fixtures/reviews-80-20.yaml")
        .replace("weight: 80", "weight: 70")
        .replace("weight: 20", "weight: 30");
    let c = pilot::to_snapshot(&generate(&productpage(), &ctx(&changed)));
    let v = |s: &xds::Snapshot, t: &str| s.get(t).map(|t| t.version.clone());
    assert_ne!(v(&a, xds::type_url::ROUTE), v(&c, xds::type_url::ROUTE));
    assert_eq!(v(&a, xds::type_url::CLUSTER), v(&c, xds::type_url::CLUSTER));
    assert_eq!(
        v(&a, xds::type_url::LISTENER),
        v(&c, xds::type_url::LISTENER)
    );
    assert!(a.get(xds::type_url::ENDPOINT).is_some_and(|t| {
        t.resources
            .contains_key(&format!("outbound|9080|v1|{REVIEWS}"))
    }));
}
