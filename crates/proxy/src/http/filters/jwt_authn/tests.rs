use envoy_types::pb::envoy::config::route::v3::{RouteMatch, route_match::PathSpecifier};
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{
    JwtClaimToHeader, JwtRequirementOrList, ProviderWithAudiences, RequirementRule,
};
use envoy_types::pb::google::protobuf::Empty;

use super::jwks::tests::{TestKey, b64, jwks_json};
use super::*;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn provider(issuer: &str, jwks: &str) -> JwtProvider {
    JwtProvider {
        issuer: issuer.into(),
        jwks_source_specifier: Some(jwt_provider::JwksSourceSpecifier::LocalJwks(DataSource {
            specifier: Some(Specifier::InlineString(jwks.into())),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn prefix_rule(prefix: &str, requires: Option<RequiresType>) -> RequirementRule {
    RequirementRule {
        r#match: Some(RouteMatch {
            path_specifier: Some(PathSpecifier::Prefix(prefix.into())),
            ..Default::default()
        }),
        requirement_type: requires.map(|r| {
            RequirementType::Requires(JwtRequirement {
                requires_type: Some(r),
            })
        }),
    }
}

fn any(cfg: &JwtAuthentication) -> Any {
    Any {
        type_url: TYPE_URL.into(),
        value: cfg.encode_to_vec(),
    }
}

struct Outcome {
    result: Result<(), Denial>,
    headers: HeaderMap,
    metadata: DynamicMetadata,
}

fn run(filter: &JwtAuthn, path: &str, headers: &[(&'static str, String)]) -> Outcome {
    let mut h = HeaderMap::new();
    h.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    for (k, v) in headers {
        h.append(*k, HeaderValue::from_str(v).expect("value"));
    }
    let mut metadata = DynamicMetadata::default();
    let snapshot: SharedSnapshot = Arc::default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let result = rt.block_on(filter.run(
        None,
        JwtRequest {
            headers: &mut h,
            path,
            method: &Method::GET,
            authority: "e2e.test",
            scheme: "http",
        },
        &mut metadata,
        &snapshot,
    ));
    Outcome {
        result,
        headers: h,
        metadata,
    }
}

fn bearer(t: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {t}"))
}

struct Setup {
    key: TestKey,
    filter: JwtAuthn,
}

fn setup(edit: impl FnOnce(&mut JwtAuthentication)) -> Setup {
    let key = TestKey::rsa();
    let mut p = provider("https://issuer", &jwks_json(&[key.jwk("k1")]));
    p.audiences = vec!["api".into()];
    p.forward_payload_header = "x-jwt-payload".into();
    p.payload_in_metadata = "payload".into();
    p.claim_to_headers = vec![JwtClaimToHeader {
        header_name: "x-jwt-sub".into(),
        claim_name: "sub".into(),
        ..Default::default()
    }];
    let mut cfg = JwtAuthentication {
        providers: [("p1".to_string(), p)].into_iter().collect(),
        rules: vec![
            prefix_rule("/public", None),
            prefix_rule(
                "/optional",
                Some(RequiresType::RequiresAny(JwtRequirementOrList {
                    requirements: vec![
                        JwtRequirement {
                            requires_type: Some(RequiresType::ProviderName("p1".into())),
                        },
                        JwtRequirement {
                            requires_type: Some(RequiresType::AllowMissing(Empty {})),
                        },
                    ],
                })),
            ),
            prefix_rule("/", Some(RequiresType::ProviderName("p1".into()))),
        ],
        ..Default::default()
    };
    edit(&mut cfg);
    let filter = JwtAuthn::compile(&any(&cfg)).expect("compiles");
    Setup { key, filter }
}

fn good_claims() -> Value {
    serde_json::json!({"iss": "https://issuer", "sub": "alice", "aud": "api", "exp": now() + 600})
}

#[test]
fn valid_token_is_forwarded_and_written_to_metadata() {
    let s = setup(|_| {});
    let t = s.key.token(
        &serde_json::json!({"alg": "RS256", "kid": "k1"}),
        &good_claims(),
    );
    let out = run(&s.filter, "/api", &[bearer(&t)]);
    assert_eq!(out.result, Ok(()));
    // The token is removed (forward: false) and the payload forwarded.
    assert!(out.headers.get("authorization").is_none());
    let payload = t.split('.').nth(1).expect("payload");
    assert_eq!(out.headers["x-jwt-payload"], payload);
    assert_eq!(out.headers["x-jwt-sub"], "alice");
    let md = out
        .metadata
        .value(METADATA_NAMESPACE, &["payload".into(), "sub".into()]);
    assert_eq!(md, Some(&Value::from("alice")));
}

#[test]
fn failures_answer_like_envoy() {
    let s = setup(|_| {});
    let hdr = serde_json::json!({"alg": "RS256", "kid": "k1"});
    let realm = "Bearer realm=\"http://e2e.test/api?x=1\"";
    let invalid = format!("{realm}, error=\"invalid_token\"");

    let missing = run(&s.filter, "/api?x=1", &[]).result.expect_err("denied");
    assert_eq!(missing.status, http::StatusCode::UNAUTHORIZED);
    assert_eq!(missing.body, "Jwt is missing");
    assert_eq!(missing.www_authenticate.as_deref(), Some(realm));

    let mut claims = good_claims();
    claims["exp"] = (now() - 120).into();
    let expired = run(
        &s.filter,
        "/api?x=1",
        &[bearer(&s.key.token(&hdr, &claims))],
    )
    .result
    .expect_err("denied");
    assert_eq!(
        (expired.status.as_u16(), expired.body.as_str()),
        (401, "Jwt is expired")
    );
    assert_eq!(expired.www_authenticate.as_deref(), Some(invalid.as_str()));

    let mut claims = good_claims();
    claims["aud"] = "other".into();
    let aud = run(&s.filter, "/api", &[bearer(&s.key.token(&hdr, &claims))])
        .result
        .expect_err("denied");
    assert_eq!(
        (aud.status.as_u16(), aud.body.as_str()),
        (403, "Audiences in Jwt are not allowed")
    );

    let mut claims = good_claims();
    claims["iss"] = "https://evil".into();
    let iss = run(&s.filter, "/api", &[bearer(&s.key.token(&hdr, &claims))])
        .result
        .expect_err("denied");
    assert_eq!(iss.body, "Jwt issuer is not configured");

    let other = TestKey::rsa().token(&hdr, &good_claims());
    let bad_sig = run(&s.filter, "/api", &[bearer(&other)])
        .result
        .expect_err("denied");
    assert_eq!(bad_sig.body, "Jwt verification fails");

    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none"}"#),
        b64(good_claims().to_string().as_bytes())
    );
    let alg_none = run(&s.filter, "/api", &[bearer(&none)])
        .result
        .expect_err("denied");
    assert_eq!(
        alg_none.body,
        "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
    );
}

#[test]
fn rules_pick_the_requirement() {
    let s = setup(|_| {});
    assert_eq!(run(&s.filter, "/public/x", &[]).result, Ok(()));
    // allow_missing: no token passes, a bad one does not.
    assert_eq!(run(&s.filter, "/optional", &[]).result, Ok(()));
    let bad = TestKey::rsa().token(&serde_json::json!({"alg": "RS256"}), &good_claims());
    let out = run(&s.filter, "/optional", &[bearer(&bad)]);
    assert_eq!(
        out.result.expect_err("denied").body,
        "Jwt verification fails"
    );
}

#[test]
fn forged_payload_headers_are_removed() {
    let s = setup(|_| {});
    let out = run(
        &s.filter,
        "/optional",
        &[
            ("x-jwt-sub", "mallory".into()),
            ("x-jwt-payload", "forged".into()),
        ],
    );
    assert_eq!(out.result, Ok(()));
    assert!(out.headers.get("x-jwt-sub").is_none());
    assert!(out.headers.get("x-jwt-payload").is_none());
}

#[test]
fn provider_audiences_can_be_overridden_per_requirement() {
    let s = setup(|cfg| {
        cfg.rules = vec![prefix_rule(
            "/",
            Some(RequiresType::ProviderAndAudiences(ProviderWithAudiences {
                provider_name: "p1".into(),
                audiences: vec!["special".into()],
            })),
        )];
    });
    let mut claims = good_claims();
    let hdr = serde_json::json!({"alg": "RS256"});
    assert!(
        run(&s.filter, "/", &[bearer(&s.key.token(&hdr, &claims))])
            .result
            .is_err()
    );
    claims["aud"] = "special".into();
    assert_eq!(
        run(&s.filter, "/", &[bearer(&s.key.token(&hdr, &claims))]).result,
        Ok(())
    );
}

#[test]
fn bad_configs_name_the_field() {
    let key = TestKey::rsa();
    let mut cfg = JwtAuthentication {
        providers: [("p1".to_string(), provider("i", &jwks_json(&[key.jwk("k")])))]
            .into_iter()
            .collect(),
        rules: vec![prefix_rule(
            "/",
            Some(RequiresType::ProviderName("nope".into())),
        )],
        ..Default::default()
    };
    let err = JwtAuthn::compile(&any(&cfg)).expect_err("unknown provider");
    assert_eq!(err.0, "rules[0].requires.provider_name");
    assert!(
        err.1
            .contains("Required provider ['nope'] is not configured.")
    );

    cfg.rules = vec![RequirementRule {
        r#match: Some(RouteMatch::default()),
        requirement_type: Some(RequirementType::RequirementName("x".into())),
    }];
    let err = JwtAuthn::compile(&any(&cfg)).expect_err("unknown requirement name");
    assert_eq!(err.0, "rules[0].requirement_name");

    let mut no_keys = cfg.clone();
    no_keys.rules.clear();
    if let Some(p) = no_keys.providers.get_mut("p1") {
        p.jwks_source_specifier = None;
    }
    let err = JwtAuthn::compile(&any(&no_keys)).expect_err("no jwks");
    assert_eq!(err.0, "providers[\"p1\"]");

    // An unusable inline key set is refused, as Envoy 1.40 does.
    let mut bad_jwks = cfg.clone();
    bad_jwks.rules.clear();
    if let Some(p) = bad_jwks.providers.get_mut("p1") {
        *p = provider("i", "{not json");
    }
    let err = JwtAuthn::compile(&any(&bad_jwks)).expect_err("invalid jwks");
    assert_eq!(err.0, "providers[\"p1\"].local_jwks");
    assert_eq!(
        err.1,
        "Provider 'p1' in jwt_authn config has invalid local jwks: Jwks is an invalid JSON"
    );

    // An empty one is accepted; tokens then fail.
    let mut empty = cfg.clone();
    empty.rules = vec![prefix_rule(
        "/",
        Some(RequiresType::ProviderName("p1".into())),
    )];
    if let Some(p) = empty.providers.get_mut("p1") {
        *p = provider("i", "");
    }
    let f = JwtAuthn::compile(&any(&empty)).expect("accepted");
    let t = key.token(
        &serde_json::json!({"alg": "RS256"}),
        &serde_json::json!({"iss": "i"}),
    );
    assert_eq!(
        run(&f, "/", &[bearer(&t)]).result.expect_err("denied").body,
        "Jwks doesn't have any valid public key"
    );
}

#[test]
fn claim_values_print_like_envoy() {
    let n = |v: Value| claim_text(&v).expect("text");
    assert_eq!(n(serde_json::json!(42)), "42");
    assert_eq!(n(serde_json::json!(1.5)), "1.500000");
    assert_eq!(n(serde_json::json!(-3)), "-3.000000");
    assert_eq!(n(serde_json::json!(true)), "true");
    assert_eq!(
        n(serde_json::json!({"a": 1})),
        base64::engine::general_purpose::STANDARD.encode(r#"{"a":1}"#)
    );
}
