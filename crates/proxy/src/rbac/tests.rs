#![allow(deprecated)]
use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::rbac::v3::{
    Permission as PermissionProto, Policy, Principal as PrincipalProto, permission, principal,
};
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher as HeaderMatcherProto, header_matcher::HeaderMatchSpecifier,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    PathMatcher, StringMatcher, path_matcher, string_matcher::MatchPattern,
};
use envoy_types::pb::envoy::r#type::v3::Int32Range;
use http::HeaderMap;

use super::*;

fn exact(s: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(MatchPattern::Exact(s.into())),
        ..Default::default()
    }
}

fn perm(rule: permission::Rule) -> PermissionProto {
    PermissionProto { rule: Some(rule) }
}

fn princ(id: principal::Identifier) -> PrincipalProto {
    PrincipalProto {
        identifier: Some(id),
    }
}

fn any_perm() -> PermissionProto {
    perm(permission::Rule::Any(true))
}

fn any_princ() -> PrincipalProto {
    princ(principal::Identifier::Any(true))
}

fn header(name: &str, spec: HeaderMatchSpecifier) -> HeaderMatcherProto {
    HeaderMatcherProto {
        name: name.into(),
        header_match_specifier: Some(spec),
        ..Default::default()
    }
}

fn cidr(ip: &str, len: u32) -> CidrRange {
    CidrRange {
        address_prefix: ip.into(),
        prefix_len: Some(envoy_types::pb::google::protobuf::UInt32Value { value: len }),
    }
}

fn rbac(action: ActionProto, policies: Vec<(&str, Policy)>) -> Rbac {
    Rbac {
        action: action as i32,
        policies: policies
            .into_iter()
            .map(|(n, p)| (n.to_string(), p))
            .collect(),
        ..Default::default()
    }
}

fn policy(permissions: Vec<PermissionProto>, principals: Vec<PrincipalProto>) -> Policy {
    Policy {
        permissions,
        principals,
        ..Default::default()
    }
}

struct Req {
    headers: HeaderMap,
    path: &'static str,
    method: &'static str,
    local: SocketAddr,
    remote: SocketAddr,
    xff_remote: Option<IpAddr>,
    tls: bool,
    peer: Option<PeerIdentity>,
    metadata: DynamicMetadata,
}

impl Default for Req {
    fn default() -> Self {
        Self {
            headers: HeaderMap::new(),
            path: "/",
            method: "GET",
            local: ([127, 0, 0, 1], 8080).into(),
            remote: ([10, 0, 0, 7], 40000).into(),
            xff_remote: None,
            tls: false,
            peer: None,
            metadata: DynamicMetadata::default(),
        }
    }
}

impl Req {
    fn input(&self) -> Input<'_> {
        Input {
            http: Some(HttpView {
                authority: "e2e.test",
                path: self.path,
                method: self.method,
                scheme: "http",
                headers: &self.headers,
            }),
            local: self.local,
            direct_remote: self.remote,
            remote: self.xff_remote.unwrap_or(self.remote.ip()),
            tls: self.tls,
            peer: self.peer.as_ref(),
            requested_server_name: "",
            metadata: &self.metadata,
        }
    }
}

fn allowed(e: &Engine, r: &Req) -> bool {
    e.evaluate(&r.input()).allowed
}

#[test]
fn allow_needs_a_matching_policy_and_deny_refuses_one() {
    let by_path = policy(
        vec![perm(permission::Rule::UrlPath(PathMatcher {
            rule: Some(path_matcher::Rule::Path(StringMatcher {
                match_pattern: Some(MatchPattern::Prefix("/admin".into())),
                ..Default::default()
            })),
        }))],
        vec![any_princ()],
    );
    let allow = Engine::compile(&rbac(ActionProto::Allow, vec![("admin", by_path.clone())]))
        .expect("compiles");
    let deny =
        Engine::compile(&rbac(ActionProto::Deny, vec![("admin", by_path)])).expect("compiles");
    let admin = Req {
        path: "/admin/x?y=1",
        ..Default::default()
    };
    let other = Req {
        path: "/other?/admin",
        ..Default::default()
    };
    assert!(allowed(&allow, &admin) && !allowed(&allow, &other));
    assert!(!allowed(&deny, &admin) && allowed(&deny, &other));
    assert_eq!(deny.evaluate(&admin.input()).policy, Some("admin"));
    // No policies at all: ALLOW denies everything.
    let empty = Engine::compile(&rbac(ActionProto::Allow, vec![])).expect("compiles");
    assert!(!allowed(&empty, &admin));
}

#[test]
fn policies_are_tried_in_name_order() {
    let e = Engine::compile(&rbac(
        ActionProto::Deny,
        vec![
            ("zeta", policy(vec![any_perm()], vec![any_princ()])),
            ("alpha", policy(vec![any_perm()], vec![any_princ()])),
        ],
    ))
    .expect("compiles");
    assert_eq!(e.evaluate(&Req::default().input()).policy, Some("alpha"));
}

#[test]
fn headers_methods_ports_and_addresses() {
    let method_get = perm(permission::Rule::Header(header(
        ":method",
        HeaderMatchSpecifier::StringMatch(exact("GET")),
    )));
    let port_range = perm(permission::Rule::DestinationPortRange(Int32Range {
        start: 8000,
        end: 8081,
    }));
    let e = Engine::compile(&rbac(
        ActionProto::Allow,
        vec![(
            "p",
            policy(
                vec![perm(permission::Rule::AndRules(permission::Set {
                    rules: vec![method_get, port_range],
                }))],
                vec![princ(principal::Identifier::OrIds(principal::Set {
                    ids: vec![
                        princ(principal::Identifier::DirectRemoteIp(cidr("10.0.0.0", 8))),
                        princ(principal::Identifier::Header(header(
                            "x-user",
                            HeaderMatchSpecifier::PresentMatch(true),
                        ))),
                    ],
                }))],
            ),
        )],
    ))
    .expect("compiles");
    assert!(allowed(&e, &Req::default()));
    assert!(!allowed(
        &e,
        &Req {
            method: "POST",
            ..Default::default()
        }
    ));
    assert!(!allowed(
        &e,
        &Req {
            local: ([127, 0, 0, 1], 9090).into(),
            ..Default::default()
        }
    ));
    let outside = Req {
        remote: ([192, 168, 1, 1], 1).into(),
        ..Default::default()
    };
    assert!(!allowed(&e, &outside));
    let mut with_user = outside;
    with_user
        .headers
        .insert("x-user", "bob".parse().expect("value"));
    assert!(allowed(&e, &with_user));
}

#[test]
fn remote_ip_follows_forwarding_and_direct_remote_ip_does_not() {
    let mk = |id: principal::Identifier| {
        Engine::compile(&rbac(
            ActionProto::Allow,
            vec![("p", policy(vec![any_perm()], vec![princ(id)]))],
        ))
        .expect("compiles")
    };
    let remote = mk(principal::Identifier::RemoteIp(cidr("203.0.113.0", 24)));
    let direct = mk(principal::Identifier::DirectRemoteIp(cidr(
        "203.0.113.0",
        24,
    )));
    let r = Req {
        xff_remote: Some("203.0.113.9".parse().expect("ip")),
        ..Default::default()
    };
    assert!(allowed(&remote, &r));
    assert!(!allowed(&direct, &r));
}

#[test]
fn authenticated_matches_uri_san_then_dns_san_then_subject() {
    let mk = |m: Option<StringMatcher>| {
        Engine::compile(&rbac(
            ActionProto::Allow,
            vec![(
                "p",
                policy(
                    vec![any_perm()],
                    vec![princ(principal::Identifier::Authenticated(
                        principal::Authenticated { principal_name: m },
                    ))],
                ),
            )],
        ))
        .expect("compiles")
    };
    let peer = PeerIdentity {
        uri_sans: vec!["spiffe://td/ns/a/sa/b".into()],
        dns_sans: vec!["b.a.svc".into()],
        subject: "CN=b".into(),
    };
    let tls = Req {
        tls: true,
        peer: Some(peer),
        ..Default::default()
    };
    assert!(allowed(&mk(Some(exact("spiffe://td/ns/a/sa/b"))), &tls));
    assert!(allowed(&mk(Some(exact("b.a.svc"))), &tls));
    assert!(allowed(&mk(Some(exact("CN=b"))), &tls));
    assert!(!allowed(&mk(Some(exact("spiffe://td/ns/a/sa/c"))), &tls));
    assert!(allowed(&mk(None), &tls));
    // Plain text is never authenticated.
    assert!(!allowed(&mk(None), &Req::default()));
}

#[test]
fn not_rules_and_metadata() {
    use envoy_types::pb::envoy::r#type::matcher::v3::{
        MetadataMatcher as MM, ValueMatcher, metadata_matcher::PathSegment,
        metadata_matcher::path_segment::Segment, value_matcher,
    };
    let md = MM {
        filter: "envoy.filters.http.jwt_authn".into(),
        path: ["payload", "sub"]
            .iter()
            .map(|k| PathSegment {
                segment: Some(Segment::Key((*k).into())),
            })
            .collect(),
        value: Some(ValueMatcher {
            match_pattern: Some(value_matcher::MatchPattern::StringMatch(exact("alice"))),
        }),
        invert: false,
    };
    let e = Engine::compile(&rbac(
        ActionProto::Allow,
        vec![(
            "p",
            policy(
                vec![perm(permission::Rule::NotRule(Box::new(perm(
                    permission::Rule::DestinationPort(1),
                ))))],
                vec![princ(principal::Identifier::Metadata(md))],
            ),
        )],
    ))
    .expect("compiles");
    let mut r = Req::default();
    assert!(!allowed(&e, &r));
    let mut fields = Map::new();
    fields.insert("payload".into(), serde_json::json!({"sub": "alice"}));
    r.metadata.merge("envoy.filters.http.jwt_authn", fields);
    assert!(allowed(&e, &r));
}

#[test]
fn log_never_denies_and_leaves_a_hint() {
    let engines = Engines {
        enforced: Some(
            Engine::compile(&rbac(
                ActionProto::Log,
                vec![("p", policy(vec![any_perm()], vec![any_princ()]))],
            ))
            .expect("compiles"),
        ),
        shadow: Some(Engine::compile(&rbac(ActionProto::Allow, vec![])).expect("compiles")),
        shadow_stat_prefix: String::new(),
    };
    let stats = RbacStats::default();
    let mut md = DynamicMetadata::default();
    let r = Req::default();
    assert_eq!(
        engines.run(&r.input(), &stats, "envoy.filters.http.rbac", &mut md),
        Verdict::Allow
    );
    assert_eq!(
        md.value("envoy.common", &["access_log_hint".into()]),
        Some(&Value::Bool(true))
    );
    assert_eq!(
        md.value("envoy.filters.http.rbac", &["shadow_engine_result".into()]),
        Some(&Value::from("denied"))
    );
    assert_eq!(stats.snapshot()[0].1, 1);
    assert_eq!(stats.snapshot()[3].1, 1);
}

#[test]
fn bad_rules_name_the_field() {
    let bad_regex = perm(permission::Rule::Header(header(
        "x",
        HeaderMatchSpecifier::SafeRegexMatch(
            envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher {
                regex: "(".into(),
                ..Default::default()
            },
        ),
    )));
    let err = Engine::compile(&rbac(
        ActionProto::Allow,
        vec![("p", policy(vec![bad_regex], vec![any_princ()]))],
    ))
    .expect_err("invalid regex");
    assert_eq!(
        err.0,
        "policies[\"p\"].permissions[0].header.safe_regex_match"
    );

    let err = Engine::compile(&rbac(
        ActionProto::Allow,
        vec![(
            "p",
            policy(
                vec![any_perm()],
                vec![princ(principal::Identifier::RemoteIp(cidr("10.0.0.0", 40)))],
            ),
        )],
    ))
    .expect_err("bad cidr");
    assert_eq!(err.0, "policies[\"p\"].principals[0].remote_ip");

    let err = Engine::compile(&rbac(
        ActionProto::Allow,
        vec![(
            "p",
            policy(
                vec![any_perm()],
                vec![princ(
                    principal::Identifier::FilterState(Default::default()),
                )],
            ),
        )],
    ))
    .expect_err("filter state");
    assert_eq!(err.0, "policies[\"p\"].principals[0].filter_state");

    let err = Engine::compile(&rbac(
        ActionProto::Allow,
        vec![(
            "p",
            policy(vec![PermissionProto { rule: None }], vec![any_princ()]),
        )],
    ))
    .expect_err("empty permission");
    assert_eq!(err.0, "policies[\"p\"].permissions[0]");

    let err = Engine::compile(&rbac(
        ActionProto::Allow,
        vec![("p", policy(vec![], vec![any_princ()]))],
    ))
    .expect_err("no permissions");
    assert_eq!(err.0, "policies[\"p\"].permissions");
}

#[test]
fn header_matcher_joins_values_and_never_sees_host() {
    let e = |h: HeaderMatcherProto| {
        Engine::compile(&rbac(
            ActionProto::Allow,
            vec![(
                "p",
                policy(vec![perm(permission::Rule::Header(h))], vec![any_princ()]),
            )],
        ))
        .expect("compiles")
    };
    let mut r = Req::default();
    r.headers.append("x-a", "1".parse().expect("v"));
    r.headers.append("x-a", "2".parse().expect("v"));
    r.headers.insert("host", "e2e.test".parse().expect("v"));
    assert!(allowed(
        &e(header(
            "x-a",
            HeaderMatchSpecifier::ExactMatch("1,2".into())
        )),
        &r
    ));
    assert!(!allowed(
        &e(header("host", HeaderMatchSpecifier::PresentMatch(true))),
        &r
    ));
    assert!(allowed(
        &e(header(
            ":authority",
            HeaderMatchSpecifier::ExactMatch("e2e.test".into())
        )),
        &r
    ));
    // A missing header fails a value match even when inverted.
    let mut inverted = header("x-missing", HeaderMatchSpecifier::ExactMatch("v".into()));
    inverted.invert_match = true;
    assert!(!allowed(&e(inverted), &r));
}
