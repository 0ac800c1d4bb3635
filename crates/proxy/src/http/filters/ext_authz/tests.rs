use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{
    GrpcService, HeaderValue as HeaderValueProto, HeaderValueOption, HttpUri, grpc_service,
    http_uri,
};
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::{
    AuthorizationRequest, AuthorizationResponse, CheckSettings, ExtAuthz as Proto,
    ExtAuthzPerRoute, HttpService, ext_authz, ext_authz_per_route,
};
use envoy_types::pb::envoy::service::auth::v3::{
    CheckResponse, DeniedHttpResponse, OkHttpResponse, check_response,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    ListStringMatcher, StringMatcher, string_matcher,
};
use envoy_types::pb::google::protobuf::{Any, BoolValue, Duration as PbDuration};
use envoy_types::pb::google::rpc::Status;
use http::{HeaderMap, HeaderValue, StatusCode};
use prost::{Message, Name};

use super::check;
use super::config::{Config, PerRoute, Service};
use super::response::{Action, CheckStatus, apply_mutations};
use super::upstream::Answer;
use super::*;

fn any<M: Message + Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

fn exact(s: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::Exact(s.into())),
        ignore_case: false,
    }
}

fn prefix_ic(s: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::Prefix(s.into())),
        ignore_case: true,
    }
}

fn list(ms: Vec<StringMatcher>) -> Option<ListStringMatcher> {
    Some(ListStringMatcher { patterns: ms })
}

fn grpc_proto() -> Proto {
    Proto {
        services: Some(ext_authz::Services::GrpcService(GrpcService {
            target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                grpc_service::EnvoyGrpc {
                    cluster_name: "authz".into(),
                    ..Default::default()
                },
            )),
            timeout: Some(PbDuration {
                seconds: 1,
                nanos: 0,
            }),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn http_service(response: Option<AuthorizationResponse>) -> HttpService {
    HttpService {
        server_uri: Some(HttpUri {
            uri: "http://authz".into(),
            timeout: Some(PbDuration {
                seconds: 1,
                nanos: 0,
            }),
            http_upstream_type: Some(http_uri::HttpUpstreamType::Cluster("authz".into())),
        }),
        path_prefix: "/check".into(),
        authorization_request: Some(AuthorizationRequest {
            headers_to_add: vec![HeaderValueProto {
                key: "x-added".into(),
                value: "1".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        authorization_response: response,
        ..Default::default()
    }
}

fn http_proto(response: Option<AuthorizationResponse>) -> Proto {
    Proto {
        services: Some(ext_authz::Services::HttpService(http_service(response))),
        allowed_headers: list(vec![prefix_ic("x-ext-")]),
        ..Default::default()
    }
}

fn compile(p: &Proto) -> Result<Config, (String, String)> {
    Config::compile(&any(p))
}

#[test]
fn compiles_grpc_and_http_services() {
    let g = compile(&grpc_proto()).expect("grpc");
    assert!(
        matches!(&g.service, Service::Grpc(c) if c.cluster == "authz" && c.authority == "authz")
    );
    assert_eq!(g.status_on_error, StatusCode::FORBIDDEN);
    assert!(
        g.allowed_headers.is_none(),
        "gRPC sends every header by default"
    );
    let h = compile(&http_proto(None)).expect("http");
    assert!(
        matches!(&h.service, Service::Http(c) if c.cluster == "authz" && c.path_prefix == "/check")
    );
    assert!(h.allowed_headers.is_some());
}

#[test]
fn refuses_what_it_cannot_honour() {
    let cases: Vec<(Proto, &str)> = vec![
        (
            Proto {
                clear_route_cache: true,
                ..grpc_proto()
            },
            "clear_route_cache",
        ),
        (
            Proto {
                include_peer_certificate: true,
                ..grpc_proto()
            },
            "include_peer_certificate",
        ),
        (
            Proto {
                services: None,
                ..grpc_proto()
            },
            "services",
        ),
        (
            Proto {
                services: Some(ext_authz::Services::GrpcService(GrpcService {
                    target_specifier: Some(grpc_service::TargetSpecifier::GoogleGrpc(
                        Default::default(),
                    )),
                    ..Default::default()
                })),
                ..Default::default()
            },
            "grpc_service.google_grpc",
        ),
        (
            Proto {
                services: Some(ext_authz::Services::HttpService(HttpService {
                    server_uri: None,
                    ..http_service(None)
                })),
                ..Default::default()
            },
            "http_service.server_uri",
        ),
        (
            Proto {
                transport_api_version: 1,
                ..grpc_proto()
            },
            "transport_api_version",
        ),
    ];
    for (p, field) in cases {
        match compile(&p) {
            Err((f, _)) => assert_eq!(f, field),
            Ok(_) => panic!("{field} accepted"),
        }
    }
}

#[test]
fn per_route_settings() {
    let disabled = PerRoute::compile(&any(&ExtAuthzPerRoute {
        r#override: Some(ext_authz_per_route::Override::Disabled(true)),
    }))
    .expect("disabled");
    assert!(disabled.disabled);
    let ctx = PerRoute::compile(&any(&ExtAuthzPerRoute {
        r#override: Some(ext_authz_per_route::Override::CheckSettings(
            CheckSettings {
                context_extensions: [("k".to_string(), "v".to_string())].into(),
                ..Default::default()
            },
        )),
    }))
    .expect("check settings");
    assert!(!ctx.disabled);
    assert_eq!(
        ctx.context_extensions.get("k").map(String::as_str),
        Some("v")
    );
    assert!(
        PerRoute::compile(&any(&ExtAuthzPerRoute {
            r#override: Some(ext_authz_per_route::Override::Disabled(false)),
        }))
        .is_err()
    );
    let wrong = Any {
        type_url: "type.googleapis.com/x.Y".into(),
        value: Vec::new(),
    };
    assert!(PerRoute::compile(&wrong).is_err());
}

struct Fixture {
    parts: http::request::Parts,
    body: Body,
    metadata: DynamicMetadata,
    snapshot: SharedSnapshot,
}

impl Fixture {
    fn new(headers: &[(&str, &str)]) -> Self {
        let mut b = http::Request::builder().method("POST").uri("/p?q=1");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let (parts, ()) = b.body(()).map(|r| r.into_parts()).unwrap_or_else(|_| {
            let (p, ()) = http::Request::new(()).into_parts();
            (p, ())
        });
        Self {
            parts,
            body: crate::body::empty(),
            metadata: DynamicMetadata::default(),
            snapshot: Arc::default(),
        }
    }

    fn request(&mut self) -> Request<'_> {
        Request {
            parts: &mut self.parts,
            body: &mut self.body,
            authority: "svc.test",
            path: "/p?q=1",
            scheme: "http",
            remote: ([127, 0, 0, 2], 4000).into(),
            local: ([127, 0, 0, 1], 8080).into(),
            peer: None,
            requested_server_name: None,
            metadata: &mut self.metadata,
            snapshot: &self.snapshot,
            grpc: false,
        }
    }
}

#[test]
fn grpc_check_carries_every_header_and_pseudo_headers() {
    let cfg = compile(&grpc_proto()).expect("config");
    let mut f = Fixture::new(&[
        ("host", "svc.test"),
        ("x-a", "1"),
        ("x-a", "2"),
        ("accept", "*/*"),
    ]);
    let req = f.request();
    let h = check::selected_headers(&cfg, &req);
    assert_eq!(h.get(":authority").map(String::as_str), Some("svc.test"));
    assert_eq!(h.get(":path").map(String::as_str), Some("/p?q=1"));
    assert_eq!(h.get(":method").map(String::as_str), Some("POST"));
    assert_eq!(h.get("x-a").map(String::as_str), Some("1,2"));
    assert!(h.contains_key("accept"));
    assert!(!h.contains_key("host"), "Host is :authority");
}

#[test]
fn http_check_carries_defaults_and_allowed_headers_only() {
    let cfg = compile(&http_proto(None)).expect("config");
    let mut f = Fixture::new(&[
        ("authorization", "Bearer t"),
        ("X-Ext-Authz", "allow"),
        ("accept", "*/*"),
        ("content-length", "3"),
    ]);
    let req = f.request();
    let check = check::build(&cfg, &PerRoute::default(), &req, None);
    let h = &check
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref())
        .expect("http attributes")
        .headers;
    let mut names: Vec<&str> = h.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(
        names,
        [
            ":authority",
            ":method",
            ":path",
            "authorization",
            "x-ext-authz"
        ]
    );
    let Service::Http(client) = &cfg.service else {
        panic!("not http");
    };
    let out = client
        .request(&check, crate::cluster::Version::Http1)
        .expect("request");
    assert_eq!(out.method(), http::Method::POST);
    assert_eq!(out.uri().path(), "/check/p");
    assert_eq!(out.uri().query(), Some("q=1"));
    let oh = out.headers();
    assert_eq!(
        oh.get("host").and_then(|v| v.to_str().ok()),
        Some("svc.test")
    );
    assert_eq!(
        oh.get("content-length").and_then(|v| v.to_str().ok()),
        Some("0")
    );
    assert_eq!(oh.get("x-added").and_then(|v| v.to_str().ok()), Some("1"));
    assert_eq!(
        oh.get("authorization").and_then(|v| v.to_str().ok()),
        Some("Bearer t")
    );
    assert!(oh.get("accept").is_none());
}

fn answer(status: u16, headers: &[(&str, &str)], body: &str) -> Answer {
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            h.append(n, v);
        }
    }
    Answer {
        status: StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
        headers: h,
        body: bytes::Bytes::from(body.to_owned()),
        trailers: None,
        elapsed_ms: 1,
    }
}

#[test]
fn http_answers_map_to_envoy_decisions() {
    let cfg = compile(&http_proto(Some(AuthorizationResponse {
        allowed_upstream_headers: list(vec![exact("x-up")]),
        allowed_upstream_headers_to_append: list(vec![exact("x-app")]),
        allowed_client_headers_on_success: list(vec![exact("x-ok")]),
        ..Default::default()
    })))
    .expect("config");
    let Service::Http(client) = &cfg.service else {
        panic!("not http");
    };
    let ok = client.response(answer(
        200,
        &[
            ("x-up", "u"),
            ("x-app", "a"),
            ("x-ok", "o"),
            ("x-other", "no"),
            ("x-envoy-auth-headers-to-remove", "x-secret, Host"),
        ],
        "",
    ));
    assert_eq!(ok.status, CheckStatus::Ok);
    let req_names: Vec<(&str, Action)> = ok
        .request_headers
        .iter()
        .map(|m| (m.name.as_str(), m.action))
        .collect();
    assert_eq!(req_names, [("x-up", Action::Set), ("x-app", Action::Add)]);
    assert_eq!(ok.response_headers.len(), 1);
    assert_eq!(ok.headers_to_remove, ["x-secret", "host"]);

    let denied = client.response(answer(
        401,
        &[("x-up", "u"), ("www-authenticate", "B")],
        "no",
    ));
    assert_eq!(denied.status, CheckStatus::Denied);
    assert_eq!(denied.status_code, Some(StatusCode::UNAUTHORIZED));
    assert_eq!(denied.body, "no");
    // allowed_client_headers unset: every header goes to the client, with
    // the one Envoy's internal client adds.
    let names: Vec<&str> = denied
        .local_headers
        .iter()
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(
        names,
        ["x-up", "www-authenticate", "x-envoy-upstream-service-time"]
    );

    let error = client.response(answer(503, &[], "down"));
    assert_eq!(error.status, CheckStatus::Error);
}

fn opt(key: &str, value: &str, append: Option<bool>) -> HeaderValueOption {
    #[allow(deprecated)]
    HeaderValueOption {
        header: Some(HeaderValueProto {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        }),
        append: append.map(|value| BoolValue { value }),
        ..Default::default()
    }
}

#[test]
fn grpc_answers_map_to_envoy_decisions() {
    let ok = grpc_client::response(CheckResponse {
        status: Some(Status::default()),
        http_response: Some(check_response::HttpResponse::OkResponse(OkHttpResponse {
            headers: vec![opt("x-set", "1", None), opt("x-app", "2", Some(true))],
            headers_to_remove: vec!["x-gone".into()],
            ..Default::default()
        })),
        ..Default::default()
    });
    assert_eq!(ok.status, CheckStatus::Ok);
    let mut headers = HeaderMap::new();
    headers.insert("x-set", HeaderValue::from_static("old"));
    headers.insert("x-app", HeaderValue::from_static("old"));
    apply_mutations(&mut headers, &ok.request_headers);
    assert_eq!(
        headers.get("x-set").and_then(|v| v.to_str().ok()),
        Some("1")
    );
    assert_eq!(
        headers.get("x-app").and_then(|v| v.to_str().ok()),
        Some("old,2")
    );

    let denied = grpc_client::response(CheckResponse {
        status: Some(Status {
            code: 7,
            ..Default::default()
        }),
        http_response: Some(check_response::HttpResponse::DeniedResponse(
            DeniedHttpResponse {
                body: "nope".into(),
                headers: vec![opt("x-why", "because", None)],
                ..Default::default()
            },
        )),
        ..Default::default()
    });
    assert_eq!(denied.status, CheckStatus::Denied);
    assert_eq!(denied.status_code, None, "403 is the filter's default");
    assert_eq!(denied.body, "nope");
    assert_eq!(denied.local_headers.len(), 1);

    let bare_denial = grpc_client::response(CheckResponse {
        status: Some(Status {
            code: 16,
            ..Default::default()
        }),
        ..Default::default()
    });
    assert_eq!(bare_denial.status, CheckStatus::Denied);
}

#[test]
fn grpc_framing_roundtrip_and_status() {
    let framed = grpc_client::frame(b"abc");
    assert_eq!(grpc_client::unframe(&framed).ok(), Some(&b"abc"[..]));
    assert!(grpc_client::unframe(&framed[..4]).is_err());
    let mut a = answer(200, &[("grpc-status", "14")], "");
    assert!(
        grpc_client::decode(&a).is_err(),
        "a failed call is an error"
    );
    a.headers.clear();
    let mut t = HeaderMap::new();
    t.insert("grpc-status", HeaderValue::from_static("0"));
    a.trailers = Some(t);
    a.body = grpc_client::frame(&CheckResponse::default().encode_to_vec());
    assert!(grpc_client::decode(&a).is_ok());
}

#[tokio::test]
async fn unreachable_cluster_is_an_error_and_failure_mode_allow_lets_it_pass() {
    let closed = ExtAuthz::compile(&any(&grpc_proto())).expect("config");
    let mut f = Fixture::new(&[]);
    match closed.run(None, None, f.request()).await {
        Verdict::Respond {
            response, details, ..
        } => {
            assert_eq!(response.status(), StatusCode::FORBIDDEN);
            assert_eq!(details, DETAILS_ERROR);
        }
        Verdict::Continue(_) => panic!("allowed without an authorizer"),
    }
    let open = ExtAuthz::compile(&any(&Proto {
        failure_mode_allow: true,
        failure_mode_allow_header_add: true,
        ..grpc_proto()
    }))
    .expect("config");
    let mut f = Fixture::new(&[]);
    assert!(matches!(
        open.run(None, None, f.request()).await,
        Verdict::Continue(_)
    ));
    assert_eq!(
        f.parts
            .headers
            .get("x-envoy-auth-failure-mode-allowed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    let values = open.stat_values("in");
    assert!(values.contains(&("http.in.ext_authz.error".to_string(), 1)));
    assert!(values.contains(&("http.in.ext_authz.failure_mode_allowed".to_string(), 1)));
}

#[tokio::test]
async fn disabled_route_and_unmatched_metadata_skip_the_check() {
    let filter = ExtAuthz::compile(&any(&grpc_proto())).expect("config");
    let disabled = any(&ExtAuthzPerRoute {
        r#override: Some(ext_authz_per_route::Override::Disabled(true)),
    });
    let mut f = Fixture::new(&[]);
    assert!(matches!(
        filter.run(Some(&disabled), None, f.request()).await,
        Verdict::Continue(_)
    ));
    use envoy_types::pb::envoy::r#type::matcher::v3::{
        MetadataMatcher, ValueMatcher, metadata_matcher, value_matcher,
    };
    let gated = ExtAuthz::compile(&any(&Proto {
        filter_enabled_metadata: Some(MetadataMatcher {
            filter: "envoy.filters.http.rbac".into(),
            path: vec![metadata_matcher::PathSegment {
                segment: Some(metadata_matcher::path_segment::Segment::Key(
                    "istio_ext_authz_shadow_effective_policy_id".into(),
                )),
            }],
            value: Some(ValueMatcher {
                match_pattern: Some(value_matcher::MatchPattern::StringMatch(prefix_ic(
                    "istio-ext-authz",
                ))),
            }),
            ..Default::default()
        }),
        ..grpc_proto()
    }))
    .expect("config");
    let mut f = Fixture::new(&[]);
    assert!(matches!(
        gated.run(None, None, f.request()).await,
        Verdict::Continue(_)
    ));
    assert_eq!(
        gated.stat_values("in")[4],
        ("http.in.ext_authz.disabled".to_string(), 1)
    );
    // With the RBAC shadow result present, the check runs (and fails closed).
    let mut f = Fixture::new(&[]);
    let mut fields = serde_json::Map::new();
    fields.insert(
        "istio_ext_authz_shadow_effective_policy_id".into(),
        serde_json::Value::String("istio-ext-authz-ns[foo]-policy[p]-rule[0]".into()),
    );
    f.metadata.merge("envoy.filters.http.rbac", fields);
    assert!(matches!(
        gated.run(None, None, f.request()).await,
        Verdict::Respond { .. }
    ));
}

#[test]
fn denied_reply_takes_the_services_headers_and_body() {
    let h = vec![
        (
            http::HeaderName::from_static("content-type"),
            HeaderValue::from_static("text/html"),
        ),
        (
            http::HeaderName::from_static("set-cookie"),
            HeaderValue::from_static("a=1"),
        ),
        (
            http::HeaderName::from_static("set-cookie"),
            HeaderValue::from_static("b=2"),
        ),
        (
            http::HeaderName::from_static("content-length"),
            HeaderValue::from_static("999"),
        ),
    ];
    let r = response::local_reply(StatusCode::UNAUTHORIZED, "why", &h, false);
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/html")
    );
    assert_eq!(r.headers().get_all("set-cookie").iter().count(), 2);
    assert!(r.headers().get("content-length").is_none());
}

#[test]
fn query_parameter_mutations() {
    let set = vec![
        ("a".to_string(), "9".to_string()),
        ("n".to_string(), "1".to_string()),
    ];
    let remove = vec!["gone".to_string()];
    assert_eq!(
        response::with_query("/p?a=1&gone=x&b=2&a=3", &set, &remove),
        "/p?a=9&b=2&n=1"
    );
    assert_eq!(response::with_query("/p?gone", &[], &remove), "/p");
    let mut parts = http::Request::new(()).into_parts().0;
    parts.uri = "/x?k=v".parse().unwrap_or_default();
    let mut resp = AuthzResponse::new(CheckStatus::Ok);
    resp.query_to_set = vec![("k".into(), "w".into())];
    response::apply_to_request(&resp, &mut parts);
    assert_eq!(parts.uri.to_string(), "/x?k=w");
}

#[test]
fn scheme_follows_x_forwarded_proto_for_http1() {
    let mut f = Fixture::new(&[("x-forwarded-proto", "https")]);
    assert_eq!(check::scheme(&f.request()), "https");
    let mut f = Fixture::new(&[]);
    let mut req = f.request();
    req.scheme = "https";
    assert_eq!(check::scheme(&req), "https");
    let mut f = Fixture::new(&[("x-forwarded-proto", "http")]);
    let mut req = f.request();
    req.scheme = "https";
    assert_eq!(
        check::scheme(&req),
        "http",
        "an mTLS hop behind a plaintext edge"
    );
}
