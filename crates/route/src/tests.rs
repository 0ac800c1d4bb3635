//! End-to-end behaviour of `RouteTable`: compile a `RouteConfiguration`, look requests up.

use std::borrow::Cow;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{
    DataSource, HeaderValueOption, data_source::Specifier, header_value_option::HeaderAppendAction,
};
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, RedirectAction, Route, RouteAction, RouteConfiguration, RouteMatch,
    VirtualHost, WeightedCluster, redirect_action::SchemeRewriteSpecifier,
    route::Action as PbAction, route_action::ClusterSpecifier as PbCs,
    route_action::RequestMirrorPolicy, route_match::PathSpecifier,
    virtual_host::TlsRequirementType, weighted_cluster::ClusterWeight,
};
use envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher;
use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};
use http::{HeaderMap, Method, StatusCode};

use crate::headers::tests::hvo;
use crate::*;

fn prefix(p: &str) -> Option<RouteMatch> {
    Some(RouteMatch {
        path_specifier: Some(PathSpecifier::Prefix(p.into())),
        ..Default::default()
    })
}

fn to(cluster: &str) -> RouteAction {
    RouteAction {
        cluster_specifier: Some(PbCs::Cluster(cluster.into())),
        ..Default::default()
    }
}

fn route(name: &str, m: Option<RouteMatch>, a: RouteAction) -> Route {
    Route {
        name: name.into(),
        r#match: m,
        action: Some(PbAction::Route(a)),
        ..Default::default()
    }
}

fn vhost(name: &str, domains: &[&str], routes: Vec<Route>) -> VirtualHost {
    VirtualHost {
        name: name.into(),
        domains: domains.iter().map(|d| d.to_string()).collect(),
        routes,
        ..Default::default()
    }
}

fn rc(vhosts: Vec<VirtualHost>) -> RouteConfiguration {
    RouteConfiguration {
        name: "rc".into(),
        virtual_hosts: vhosts,
        ..Default::default()
    }
}

struct Req {
    authority: &'static str,
    path: &'static str,
    scheme: &'static str,
    headers: HeaderMap,
}

impl Req {
    fn new(authority: &'static str, path: &'static str) -> Self {
        Self {
            authority,
            path,
            scheme: "http",
            headers: HeaderMap::new(),
        }
    }
    fn view(&self) -> RequestView<'_> {
        RequestView {
            authority: self.authority,
            path: self.path,
            method: &Method::GET,
            headers: &self.headers,
            scheme: self.scheme,
        }
    }
}

fn pick(t: &RouteTable, authority: &'static str, path: &'static str) -> Option<(String, String)> {
    let r = Req::new(authority, path);
    t.find(&r.view(), 0)
        .map(|s| (s.virtual_host.name.clone(), s.route.name.clone()))
}

#[test]
fn given_vhosts_star_foo_com_foo_star_and_star_each_host_picks_the_most_specific() {
    let t = RouteTable::compile(&rc(vec![
        vhost(
            "suffix",
            &["*.foo.com"],
            vec![route("r", prefix("/"), to("a"))],
        ),
        vhost("prefix", &["foo.*"], vec![route("r", prefix("/"), to("b"))]),
        vhost("any", &["*"], vec![route("r", prefix("/"), to("c"))]),
        vhost(
            "exact",
            &["bar.foo.com"],
            vec![route("r", prefix("/"), to("d"))],
        ),
    ]))
    .unwrap();
    assert_eq!(pick(&t, "bar.foo.com", "/").unwrap().0, "exact");
    assert_eq!(pick(&t, "baz.foo.com", "/").unwrap().0, "suffix");
    assert_eq!(pick(&t, "foo.net", "/").unwrap().0, "prefix");
    assert_eq!(pick(&t, "elsewhere", "/").unwrap().0, "any");
    assert_eq!(t.name(), "rc");
}

#[test]
fn first_matching_route_wins_and_no_match_is_none() {
    let t = RouteTable::compile(&rc(vec![vhost(
        "v",
        &["example.com"],
        vec![
            route("api", prefix("/api"), to("api")),
            route("api-v2", prefix("/api/v2"), to("never")),
            route(
                "exact",
                Some(RouteMatch {
                    path_specifier: Some(PathSpecifier::Path("/health".into())),
                    ..Default::default()
                }),
                to("health"),
            ),
        ],
    )]))
    .unwrap();
    assert_eq!(pick(&t, "example.com", "/api/v2/x").unwrap().1, "api");
    assert_eq!(pick(&t, "example.com", "/health?full").unwrap().1, "exact");
    assert!(pick(&t, "example.com", "/other").is_none());
    assert!(pick(&t, "unknown.com", "/api").is_none(), "no vhost → 404");
}

#[test]
fn duplicate_domains_across_vhosts_are_rejected_with_a_field_path() {
    let e = RouteTable::compile(&rc(vec![
        vhost("a", &["x.com"], vec![]),
        vhost("b", &["y.com", "X.COM"], vec![]),
    ]))
    .unwrap_err();
    assert_eq!(e.field(), "virtual_hosts[1].domains[1]");
}

#[test]
fn invalid_regex_error_names_the_field() {
    let bad = route(
        "r",
        Some(RouteMatch {
            path_specifier: Some(PathSpecifier::SafeRegex(RegexMatcher {
                regex: "([".into(),
                engine_type: None,
            })),
            ..Default::default()
        }),
        to("c"),
    );
    let e = RouteTable::compile(&rc(vec![
        vhost("a", &["a"], vec![]),
        vhost("b", &["b"], vec![bad]),
    ]))
    .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("virtual_hosts[1].routes[0].match.safe_regex: invalid regex:"),
        "{e}"
    );
}

#[test]
fn structural_validation_errors() {
    let e = RouteTable::compile(&rc(vec![vhost(
        "v",
        &["*"],
        vec![route("r", prefix("/"), to(""))],
    )]))
    .unwrap_err();
    assert_eq!(e.field(), "virtual_hosts[0].routes[0].route.cluster");
    let e = RouteTable::compile(&rc(vec![vhost(
        "v",
        &["*"],
        vec![route("r", None, to("c"))],
    )]))
    .unwrap_err();
    assert_eq!(e.field(), "virtual_hosts[0].routes[0].match");
    let e = RouteTable::compile(&rc(vec![vhost("", &["*"], vec![])])).unwrap_err();
    assert_eq!(e.field(), "virtual_hosts[0].name");
    let e = RouteTable::compile(&rc(vec![vhost("v", &[], vec![])])).unwrap_err();
    assert_eq!(e.field(), "virtual_hosts[0].domains");
}

fn weighted(clusters: &[(&str, u32)]) -> RouteAction {
    RouteAction {
        cluster_specifier: Some(PbCs::WeightedClusters(WeightedCluster {
            clusters: clusters
                .iter()
                .map(|(n, w)| ClusterWeight {
                    name: n.to_string(),
                    weight: Some(UInt32Value { value: *w }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

#[test]
fn weighted_clusters_pick_by_cumulative_weight() {
    let t = RouteTable::compile(&rc(vec![vhost(
        "v",
        &["*"],
        vec![route(
            "r",
            prefix("/"),
            weighted(&[("a", 20), ("zero", 0), ("b", 80)]),
        )],
    )]))
    .unwrap();
    let req = Req::new("h", "/");
    let name = |random| {
        t.find(&req.view(), random)
            .unwrap()
            .cluster
            .unwrap()
            .name
            .into_owned()
    };
    assert_eq!(name(0), "a");
    assert_eq!(name(19), "a");
    assert_eq!(name(20), "b");
    assert_eq!(name(99), "b");
    assert_eq!(name(100), "a", "random % total");
}

#[test]
fn weighted_clusters_with_zero_total_weight_are_rejected() {
    let e = RouteTable::compile(&rc(vec![vhost(
        "v",
        &["*"],
        vec![route("r", prefix("/"), weighted(&[("a", 0), ("b", 0)]))],
    )]))
    .unwrap_err();
    assert_eq!(
        e.field(),
        "virtual_hosts[0].routes[0].route.weighted_clusters.clusters"
    );
}

#[test]
fn weighted_random_value_header_overrides_random() {
    let mut a = weighted(&[("a", 50), ("b", 50)]);
    if let Some(PbCs::WeightedClusters(w)) = &mut a.cluster_specifier {
        w.random_value_specifier = Some(
            envoy_types::pb::envoy::config::route::v3::weighted_cluster::RandomValueSpecifier::HeaderName(
                "x-rand".into(),
            ),
        );
    }
    let t = RouteTable::compile(&rc(vec![vhost(
        "v",
        &["*"],
        vec![route("r", prefix("/"), a)],
    )]))
    .unwrap();
    let mut req = Req::new("h", "/");
    req.headers.insert("x-rand", "75".parse().unwrap());
    assert_eq!(t.find(&req.view(), 0).unwrap().cluster.unwrap().name, "b");
    req.headers.insert("x-rand", "junk".parse().unwrap());
    assert_eq!(t.find(&req.view(), 0).unwrap().cluster.unwrap().name, "a");
}

#[test]
fn cluster_header_missing_gives_empty_name_and_503_by_default() {
    let a = RouteAction {
        cluster_specifier: Some(PbCs::ClusterHeader("x-cluster".into())),
        ..Default::default()
    };
    let t = RouteTable::compile(&rc(vec![vhost(
        "v",
        &["*"],
        vec![route("r", prefix("/"), a)],
    )]))
    .unwrap();
    let mut req = Req::new("h", "/");
    let sel = t.find(&req.view(), 0).unwrap();
    assert_eq!(sel.cluster.as_ref().unwrap().name, "");
    let Action::Forward(f) = &sel.route.action else {
        panic!()
    };
    assert_eq!(
        f.cluster_not_found_response_code,
        StatusCode::SERVICE_UNAVAILABLE
    );
    req.headers.insert("x-cluster", "dyn".parse().unwrap());
    assert_eq!(t.find(&req.view(), 0).unwrap().cluster.unwrap().name, "dyn");
}

fn forward(t: &RouteTable) -> &Forward {
    match &t.virtual_hosts()[0].routes[0].action {
        Action::Forward(f) => f,
        _ => panic!("not a forward"),
    }
}

#[test]
fn timeout_defaults_to_15s_and_zero_disables() {
    let t = RouteTable::compile(&rc(vec![vhost(
        "v",
        &["*"],
        vec![route("r", prefix("/"), to("c"))],
    )]))
    .unwrap();
    assert_eq!(forward(&t).timeout, Some(Duration::from_secs(15)));
    let mut a = to("c");
    a.timeout = Some(PbDuration {
        seconds: 0,
        nanos: 0,
    });
    let t = RouteTable::compile(&rc(vec![vhost(
        "v",
        &["*"],
        vec![route("r", prefix("/"), a)],
    )]))
    .unwrap();
    assert_eq!(forward(&t).timeout, None);
    let mut a = to("c");
    a.timeout = Some(PbDuration {
        seconds: 2,
        nanos: 500_000_000,
    });
    let t = RouteTable::compile(&rc(vec![vhost(
        "v",
        &["*"],
        vec![route("r", prefix("/"), a)],
    )]))
    .unwrap();
    assert_eq!(forward(&t).timeout, Some(Duration::from_millis(2500)));
}

#[test]
fn prefix_rewrite_uses_the_matched_prefix_and_keeps_query() {
    let mut a = to("c");
    a.prefix_rewrite = "/v2/".into();
    let mut ci = prefix("/API/").unwrap();
    ci.case_sensitive = Some(envoy_types::pb::google::protobuf::BoolValue { value: false });
    let t =
        RouteTable::compile(&rc(vec![vhost("v", &["*"], vec![route("r", Some(ci), a)])])).unwrap();
    let req = Req::new("h", "/api/users?id=1");
    let sel = t.find(&req.view(), 0).unwrap();
    assert_eq!(
        sel.route.rewritten_path(req.path).unwrap(),
        "/v2/users?id=1"
    );
}

#[test]
fn regex_route_prefix_rewrite_replaces_whole_path() {
    let mut a = to("c");
    a.prefix_rewrite = "/new".into();
    let m = RouteMatch {
        path_specifier: Some(PathSpecifier::SafeRegex(RegexMatcher {
            regex: "/old/.*".into(),
            engine_type: None,
        })),
        ..Default::default()
    };
    let t =
        RouteTable::compile(&rc(vec![vhost("v", &["*"], vec![route("r", Some(m), a)])])).unwrap();
    assert_eq!(
        t.virtual_hosts()[0].routes[0]
            .rewritten_path("/old/x?q")
            .unwrap(),
        "/new?q"
    );
    let t2 = RouteTable::compile(&rc(vec![vhost(
        "v",
        &["*"],
        vec![route("r", prefix("/"), to("c"))],
    )]))
    .unwrap();
    assert!(
        t2.virtual_hosts()[0].routes[0]
            .rewritten_path("/x")
            .is_none()
    );
}

#[test]
fn host_rewrite_header_and_weighted_literal_precedence() {
    use envoy_types::pb::envoy::config::route::v3::route_action::HostRewriteSpecifier;
    let mut a = weighted(&[("a", 1)]);
    if let Some(PbCs::WeightedClusters(w)) = &mut a.cluster_specifier {
        w.clusters[0].host_rewrite_specifier = Some(
            envoy_types::pb::envoy::config::route::v3::weighted_cluster::cluster_weight::HostRewriteSpecifier::HostRewriteLiteral("cluster.host".into()),
        );
    }
    a.host_rewrite_specifier = Some(HostRewriteSpecifier::HostRewriteHeader("x-host".into()));
    let t = RouteTable::compile(&rc(vec![vhost(
        "v",
        &["*"],
        vec![route("r", prefix("/"), a)],
    )]))
    .unwrap();
    let mut req = Req::new("h", "/");
    let sel = t.find(&req.view(), 0).unwrap();
    let w = sel.cluster.as_ref().unwrap().weighted;
    let f = forward(&t);
    assert_eq!(f.rewritten_host(&req.view(), w).unwrap(), "cluster.host");
    req.headers.insert("x-host", "from.header".parse().unwrap());
    assert_eq!(f.rewritten_host(&req.view(), w).unwrap(), "from.header");
}

#[test]
fn mirror_policies_most_specific_level_wins_and_fraction_applies() {
    let mirror = |c: &str| RequestMirrorPolicy {
        cluster: c.into(),
        ..Default::default()
    };
    let mut config = rc(vec![
        vhost("v", &["v"], vec![route("r", prefix("/"), to("c"))]),
        vhost("w", &["w"], vec![route("r", prefix("/"), to("c"))]),
    ]);
    config.request_mirror_policies = vec![mirror("global")];
    config.virtual_hosts[1].request_mirror_policies = vec![mirror("vhost")];
    let mut with_fraction = mirror("route");
    with_fraction.runtime_fraction = Some(
        envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent {
            default_value: Some(envoy_types::pb::envoy::r#type::v3::FractionalPercent {
                numerator: 50,
                denominator: 0,
            }),
            runtime_key: String::new(),
        },
    );
    let mut a = to("c");
    a.request_mirror_policies = vec![with_fraction];
    config.virtual_hosts[1]
        .routes
        .push(route("r2", prefix("/"), a));
    config.virtual_hosts[1].routes.swap(0, 1);
    let t = RouteTable::compile(&config).unwrap();
    let names = |host, random| {
        let req = Req::new(host, "/");
        let sel = t.find(&req.view(), 0).unwrap();
        let Action::Forward(f) = &sel.route.action else {
            panic!()
        };
        let view = req.view();
        f.mirrors(&view, random)
            .map(|(_, n)| n.into_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(names("v", 0), ["global"]);
    assert_eq!(names("w", 10), ["route"]);
    assert!(names("w", 60).is_empty());
}

#[test]
fn direct_response_bodies_and_limits() {
    let direct = |status: u32, body: Option<Specifier>| Route {
        name: "d".into(),
        r#match: prefix("/"),
        action: Some(PbAction::DirectResponse(DirectResponseAction {
            status,
            body: body.map(|s| DataSource {
                specifier: Some(s),
                ..Default::default()
            }),
            body_format: None,
        })),
        ..Default::default()
    };
    let t = RouteTable::compile(&rc(vec![vhost(
        "v",
        &["*"],
        vec![direct(418, Some(Specifier::InlineString("teapot".into())))],
    )]))
    .unwrap();
    match &t.virtual_hosts()[0].routes[0].action {
        Action::Direct { status, body } => {
            assert_eq!(status.as_u16(), 418);
            assert_eq!(body.as_deref(), Some(&b"teapot"[..]));
        }
        other => panic!("{other:?}"),
    }
    let e = RouteTable::compile(&rc(vec![vhost(
        "v",
        &["*"],
        vec![direct(
            200,
            Some(Specifier::Filename("/nonexistent/trellis/body".into())),
        )],
    )]))
    .unwrap_err();
    assert_eq!(
        e.field(),
        "virtual_hosts[0].routes[0].direct_response.body.filename"
    );
    let e = RouteTable::compile(&rc(vec![vhost(
        "v",
        &["*"],
        vec![direct(200, Some(Specifier::InlineString("x".repeat(4097))))],
    )]))
    .unwrap_err();
    assert_eq!(e.field(), "virtual_hosts[0].routes[0].direct_response.body");
    assert!(RouteTable::compile(&rc(vec![vhost("v", &["*"], vec![direct(100, None)])])).is_err());
}

#[test]
fn require_tls_redirects_insecure_requests_before_route_matching() {
    let mut v = vhost("v", &["*"], vec![route("r", prefix("/"), to("c"))]);
    v.require_tls = TlsRequirementType::ExternalOnly as i32;
    v.response_headers_to_add = vec![hvo("x-vh", "1", HeaderAppendAction::AppendIfExistsOrAdd)];
    let t = RouteTable::compile(&rc(vec![v])).unwrap();
    let mut req = Req::new("a.com:80", "/p?q");
    let sel = t.find(&req.view(), 0).unwrap();
    assert!(sel.route.is_tls_redirect());
    let Action::Redirect(r) = &sel.route.action else {
        panic!()
    };
    assert_eq!(
        r.location(&req.view()),
        (StatusCode::MOVED_PERMANENTLY, "https://a.com/p?q".into())
    );
    let mut resp = HeaderMap::new();
    t.apply_response_headers(&sel, &mut resp, &());
    assert!(resp.is_empty(), "no header mutations on the TLS redirect");

    req.headers
        .insert("x-envoy-internal", "true".parse().unwrap());
    assert_eq!(t.find(&req.view(), 0).unwrap().route.name, "r");
    req.headers.clear();
    req.scheme = "https";
    assert_eq!(t.find(&req.view(), 0).unwrap().route.name, "r");
}

#[test]
fn redirect_route_uses_its_matched_prefix() {
    let r = Route {
        name: "red".into(),
        r#match: prefix("/old"),
        action: Some(PbAction::Redirect(RedirectAction {
            scheme_rewrite_specifier: Some(SchemeRewriteSpecifier::HttpsRedirect(true)),
            path_rewrite_specifier: Some(
                envoy_types::pb::envoy::config::route::v3::redirect_action::PathRewriteSpecifier::PrefixRewrite(
                    "/new".into(),
                ),
            ),
            ..Default::default()
        })),
        ..Default::default()
    };
    let t = RouteTable::compile(&rc(vec![vhost("v", &["*"], vec![r])])).unwrap();
    let req = Req::new("a.com:8080", "/old/x?y=1");
    let sel = t.find(&req.view(), 0).unwrap();
    let Action::Redirect(red) = &sel.route.action else {
        panic!()
    };
    assert_eq!(red.location(&req.view()).1, "https://a.com:8080/new/x?y=1");
}

struct Ctx;
impl FormatContext for Ctx {
    fn variable(&self, var: &Variable) -> Option<Cow<'_, str>> {
        matches!(var, Variable::DownstreamRemoteAddressWithoutPort).then_some("192.0.2.1".into())
    }
}

fn header_levels(most_specific_wins: bool) -> RouteTable {
    use HeaderAppendAction::OverwriteIfExistsOrAdd as Ow;
    let mut a = weighted(&[("a", 1)]);
    if let Some(PbCs::WeightedClusters(w)) = &mut a.cluster_specifier {
        w.clusters[0].request_headers_to_add = vec![hvo("x-level", "cluster", Ow)];
    }
    let mut r = route("r", prefix("/"), a);
    r.request_headers_to_add = vec![
        hvo("x-level", "route", Ow),
        hvo("x-client", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", Ow),
    ];
    let mut v = vhost("v", &["*"], vec![r]);
    v.request_headers_to_add = vec![hvo("x-level", "vhost", Ow)];
    let mut config = rc(vec![v]);
    config.request_headers_to_add = vec![hvo("x-level", "global", Ow)];
    config.request_headers_to_remove = vec!["x-secret".into()];
    config.most_specific_header_mutations_wins = most_specific_wins;
    RouteTable::compile(&config).unwrap()
}

#[test]
fn header_levels_apply_route_then_vhost_then_global_by_default() {
    let t = header_levels(false);
    let req = Req::new("h", "/");
    let sel = t.find(&req.view(), 0).unwrap();
    let mut h = HeaderMap::new();
    h.insert("x-secret", "s".parse().unwrap());
    t.apply_request_headers(&sel, &mut h, &Ctx);
    assert_eq!(
        h.get("x-level").unwrap(),
        "global",
        "least specific overwrites last"
    );
    assert_eq!(h.get("x-client").unwrap(), "192.0.2.1");
    assert!(!h.contains_key("x-secret"));
}

#[test]
fn most_specific_header_mutations_wins_reverses_the_levels() {
    let t = header_levels(true);
    let req = Req::new("h", "/");
    let sel = t.find(&req.view(), 0).unwrap();
    let mut h = HeaderMap::new();
    t.apply_request_headers(&sel, &mut h, &Ctx);
    assert_eq!(h.get("x-level").unwrap(), "route");
}

#[test]
fn ignore_path_parameters_in_path_matching() {
    let mut config = rc(vec![vhost(
        "v",
        &["*"],
        vec![route(
            "r",
            Some(RouteMatch {
                path_specifier: Some(PathSpecifier::Path("/a/b".into())),
                ..Default::default()
            }),
            to("c"),
        )],
    )]);
    let t = RouteTable::compile(&config).unwrap();
    assert!(pick(&t, "h", "/a/b;jsessionid=1").is_none());
    config.ignore_path_parameters_in_path_matching = true;
    let t = RouteTable::compile(&config).unwrap();
    assert!(pick(&t, "h", "/a/b;jsessionid=1?x").is_some());
}

#[test]
fn vhost_header_replaces_authority_for_vhost_selection() {
    let mut config = rc(vec![
        vhost("a", &["a.com"], vec![route("r", prefix("/"), to("c"))]),
        vhost("b", &["b.com"], vec![route("r", prefix("/"), to("c"))]),
    ]);
    config.vhost_header = "x-vhost".into();
    let t = RouteTable::compile(&config).unwrap();
    let mut req = Req::new("a.com", "/");
    req.headers.insert("x-vhost", "B.com".parse().unwrap());
    assert_eq!(t.find(&req.view(), 0).unwrap().virtual_host.name, "b");
}

#[test]
fn unsupported_fields_are_rejected_not_ignored() {
    let mut a = to("c");
    a.cluster_specifier = Some(PbCs::ClusterSpecifierPlugin("p".into()));
    let e = RouteTable::compile(&rc(vec![vhost(
        "v",
        &["*"],
        vec![route("r", prefix("/"), a)],
    )]))
    .unwrap_err();
    assert!(matches!(e, RouteError::Unsupported { .. }));
    assert_eq!(
        e.field(),
        "virtual_hosts[0].routes[0].route.cluster_specifier_plugin"
    );

    let mut v = vhost("v", &["*"], vec![]);
    v.matcher = Some(Default::default());
    let e = RouteTable::compile(&rc(vec![v])).unwrap_err();
    assert_eq!(e.field(), "virtual_hosts[0].matcher");

    let mut config = rc(vec![]);
    config.vhds = Some(Default::default());
    assert_eq!(RouteTable::compile(&config).unwrap_err().field(), "vhds");
}

#[test]
fn route_config_level_header_errors_have_clean_field_paths() {
    let mut config = rc(vec![]);
    config.response_headers_to_add =
        vec![hvo("x", "%NOPE%", HeaderAppendAction::AppendIfExistsOrAdd)];
    let e = RouteTable::compile(&config).unwrap_err();
    assert_eq!(e.field(), "response_headers_to_add[0].header.value");
}

#[test]
fn route_table_is_send_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<RouteTable>();
    let _: Option<&HeaderValueOption> = None;
}
