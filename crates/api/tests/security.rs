//! `security.istio.io` kinds: Istio's documented examples load typed and
//! validate clean; each validation rule reports its field path.

use api::security::{Action, MtlsMode};
use api::{Severity, Spec, load, validate};

/// Examples in the shape of Istio's security documentation and tasks.
const ISTIO_EXAMPLES: &str = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: finance, namespace: finance}
spec:
  selector:
    matchLabels: {app: finance}
  mtls: {mode: STRICT}
  portLevelMtls:
    8080: {mode: DISABLE}
    "9090": {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: httpbin, namespace: foo}
spec:
  selector:
    matchLabels: {app: httpbin, version: v1}
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/sleep"]
    - source:
        namespaces: ["test"]
    to:
    - operation:
        methods: ["GET"]
        paths: ["/info*"]
    - operation:
        methods: ["POST"]
        paths: ["/data"]
    when:
    - key: request.auth.claims[iss]
      values: ["https://accounts.google.com"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-method-get, namespace: foo}
spec:
  action: DENY
  rules:
  - to:
    - operation: {methods: ["GET"], ports: ["8080", 9090]}
    when:
    - key: destination.port
      values: [8080]
    - key: request.headers[x-token]
      notValues: ["admin"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: foo}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: foo}
spec:
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: dry
  namespace: foo
  annotations: {istio.io/dry-run: "true"}
spec:
  action: DENY
  rules:
  - from:
    - source: {ipBlocks: ["1.2.3.4", "10.0.0.0/8"], notRemoteIpBlocks: ["2001:db8::/32"]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext-authz, namespace: foo}
spec:
  selector:
    matchLabels: {app: httpbin}
  action: CUSTOM
  provider: {name: my-ext-authz}
  rules:
  - to:
    - operation: {paths: ["/headers", "/api/{*}/items/{**}"]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: waypoint, namespace: foo}
spec:
  targetRefs:
  - {kind: Service, group: "", name: productpage}
  action: AUDIT
  rules:
  - from:
    - source: {serviceAccounts: ["sleep", "other/sleep"], trustDomains: ["*.example.com"]}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt-example, namespace: foo}
spec:
  selector:
    matchLabels: {app: httpbin}
  jwtRules:
  - issuer: "testing@secure.istio.io"
    jwksUri: "https://raw.githubusercontent.com/istio/istio/release-1.20/security/tools/jwt/samples/jwks.json"
    audiences: ["app", "web"]
    fromHeaders:
    - {name: x-jwt-assertion, prefix: "Bearer "}
    fromParams: ["my_token"]
    fromCookies: ["session"]
    outputPayloadToHeader: x-jwt-payload
    outputClaimToHeaders:
    - {header: x-jwt-iss, claim: iss}
    forwardOriginalToken: true
    timeout: 10s
  - issuer: "inline@example.com"
    jwks: '{"keys":[{"kty":"RSA","e":"AQAB","kid":"k1","n":"xAE7eB6qugXyCAG3yhh7pkDkT65pHymX-P7KfIupjf59vsdo91bSP9C8H07pSAGQO1MV_xFj9VswgsCg4R6otmg5PV2He95lZdHtOcU5DXIg_pbhLdKXbi66GlVeK6ABZOUW3WYtnNHD-91gVuoeJT_DwtGGcp4ignkgXfkiEm4sw-4sfb4qdt5oLbyVpmW6x9cfa7vs2WTfURiCrBoUqgBo_-4WTiULmmHSGZHOjzwa8WtrtOQGsAFjIbno85jp6MnGGGZPYZbDAa_b3y5u-YpW7ypZrvD8BgtKVjgtQgZhLAGezMt0ua3DRrWnKqTZ0BJ_EyxOGuHJrLsn00fnMQ"}]}'
"#;

#[test]
fn istio_security_examples_load_typed_and_validate_clean() {
    let (objects, errors) = load::parse_documents(ISTIO_EXAMPLES, "examples.yaml");
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(objects.len(), 10);
    for o in &objects {
        let v = validate(o);
        assert!(v.errors.is_empty(), "{}: {:?}", o.key(), v.errors);
    }

    let Spec::PeerAuthentication(mesh) = &objects[0].spec else {
        panic!("PeerAuthentication")
    };
    assert!(mesh.is_namespace_wide());
    assert_eq!(mesh.mode(), MtlsMode::Strict);
    let Spec::PeerAuthentication(finance) = &objects[1].spec else {
        panic!("PeerAuthentication")
    };
    let ports = finance.port_level_mtls.as_ref().expect("port level");
    assert_eq!(ports[&8080].mode(), MtlsMode::Disable);
    assert_eq!(ports[&9090].mode(), MtlsMode::Unset);

    let Spec::AuthorizationPolicy(ap) = &objects[2].spec else {
        panic!("AuthorizationPolicy")
    };
    assert_eq!(ap.action(), Action::Allow);
    let rule = &ap.rules()[0];
    let from = rule.from.as_ref().expect("from");
    assert_eq!(
        from[0].source.as_ref().expect("source").principals,
        ["cluster.local/ns/default/sa/sleep"]
    );
    assert_eq!(rule.when[0].key, "request.auth.claims[iss]");

    let Spec::AuthorizationPolicy(deny) = &objects[3].spec else {
        panic!("AuthorizationPolicy")
    };
    let op = deny.rules()[0].to.as_ref().expect("to")[0]
        .operation
        .as_ref()
        .expect("operation");
    assert_eq!(op.ports, ["8080", "9090"], "numbers are read as strings");
    assert_eq!(deny.rules()[0].when[0].values, ["8080"]);

    let Spec::AuthorizationPolicy(nothing) = &objects[4].spec else {
        panic!("AuthorizationPolicy")
    };
    assert!(nothing.rules.is_none() && nothing.rules().is_empty());
    let Spec::AuthorizationPolicy(all) = &objects[5].spec else {
        panic!("AuthorizationPolicy")
    };
    assert_eq!(all.rules().len(), 1);

    let Spec::AuthorizationPolicy(custom) = &objects[7].spec else {
        panic!("AuthorizationPolicy")
    };
    assert_eq!(custom.action(), Action::Custom);
    assert_eq!(
        custom.provider.as_ref().map(|p| p.name.as_str()),
        Some("my-ext-authz")
    );

    let Spec::RequestAuthentication(ra) = &objects[9].spec else {
        panic!("RequestAuthentication")
    };
    let r = &ra.jwt_rules[0];
    assert_eq!(r.issuer, "testing@secure.istio.io");
    assert_eq!(r.from_headers[0].prefix, "Bearer ");
    assert_eq!(r.output_claim_to_headers[0].claim, "iss");
    assert!(r.forward_original_token);
    assert_eq!(
        r.timeout.map(|t| t.get()),
        Some(std::time::Duration::from_secs(10))
    );
}

/// Loads one document of `kind` (must load) and returns its findings.
fn findings(kind: &str, spec_yaml: &str) -> (Vec<String>, Vec<String>) {
    findings_with(kind, spec_yaml, "")
}

fn findings_with(kind: &str, spec_yaml: &str, annotations: &str) -> (Vec<String>, Vec<String>) {
    let text = format!(
        "apiVersion: security.istio.io/v1\nkind: {kind}\nmetadata:\n  name: t\n  namespace: ns\n{annotations}spec:\n{}",
        spec_yaml
            .lines()
            .map(|l| format!("  {l}\n"))
            .collect::<String>()
    );
    let (objects, errors) = load::parse_documents(&text, "t.yaml");
    assert!(errors.is_empty(), "load errors: {errors:?}");
    let v = validate(&objects[0]);
    (
        v.errors.into_iter().map(|e| e.path).collect(),
        v.warnings.into_iter().map(|e| e.path).collect(),
    )
}

fn assert_error(kind: &str, spec: &str, path: &str) {
    let (errors, _) = findings(kind, spec);
    assert!(
        errors.iter().any(|p| p == path),
        "expected an error at {path}, got {errors:?}"
    );
}

fn load_error_path(kind: &str, spec: &str) -> String {
    let text = format!(
        "apiVersion: security.istio.io/v1\nkind: {kind}\nmetadata: {{name: t}}\nspec: {spec}\n"
    );
    let (objects, errors) = load::parse_documents(&text, "t.yaml");
    assert!(objects.is_empty(), "expected a load error");
    errors[0].path.clone().unwrap_or_default()
}

const AP: &str = "AuthorizationPolicy";
const PA: &str = "PeerAuthentication";
const RA: &str = "RequestAuthentication";

#[test]
fn unknown_fields_and_enum_values_fail_to_load_at_their_path() {
    assert_eq!(load_error_path(AP, "{action: PERMIT}"), "spec.action");
    assert_eq!(
        load_error_path(AP, "{rules: [{from: [{source: {principal: [a]}}]}]}"),
        "spec.rules[0].from[0].source.principal"
    );
    assert_eq!(
        load_error_path(PA, "{mtls: {mode: MAYBE}}"),
        "spec.mtls.mode"
    );
    assert_eq!(
        load_error_path(PA, "{selector: {labels: {app: a}}}"),
        "spec.selector.labels"
    );
    assert_eq!(
        load_error_path(RA, "{jwtRules: [{issuer: a, jwksURI: b}]}"),
        "spec.jwtRules[0].jwksURI"
    );
    assert_eq!(
        load_error_path(
            PA,
            "{selector: {matchLabels: {a: b}}, portLevelMtls: {http: {}}}"
        ),
        "spec.portLevelMtls.?"
    );
}

#[test]
fn authorization_policy_rules() {
    assert_error(AP, "action: CUSTOM\nrules: [{}]", "spec.provider.name");
    assert_error(AP, "action: CUSTOM\nprovider: {name: x}", "spec.rules");
    assert_error(AP, "action: DENY", "spec.rules");
    assert_error(AP, "action: DENY\nrules: []", "spec.rules");
    assert_error(AP, "provider: {name: x}\nrules: [{}]", "spec.provider");
    assert_error(
        AP,
        "action: CUSTOM\nprovider: {name: x}\nrules: [{from: [{source: {principals: [a]}}], when: [{key: \"request.auth.claims[a]\", values: [b]}]}]",
        "spec.rules[0].from[0].source.principals",
    );
    assert_error(
        AP,
        "action: CUSTOM\nprovider: {name: x}\nrules: [{when: [{key: \"request.auth.claims[a]\", values: [b]}]}]",
        "spec.rules[0].when[0].key",
    );
    assert_error(
        AP,
        "rules: [{from: [{source: {ipBlocks: [10.0.0.0/33]}}]}]",
        "spec.rules[0].from[0].source.ipBlocks[0]",
    );
    assert_error(
        AP,
        "rules: [{from: [{source: {notRemoteIpBlocks: [nope]}}]}]",
        "spec.rules[0].from[0].source.notRemoteIpBlocks[0]",
    );
    assert_error(
        AP,
        "rules: [{from: [{source: {principals: [\"\"]}}]}]",
        "spec.rules[0].from[0].source.principals[0]",
    );
    assert_error(AP, "rules: [{from: [{}]}]", "spec.rules[0].from[0].source");
    assert_error(
        AP,
        "rules: [{from: [{source: {}}]}]",
        "spec.rules[0].from[0].source",
    );
    assert_error(AP, "rules: [{from: []}]", "spec.rules[0].from");
    assert_error(
        AP,
        "rules: [{to: [{operation: {}}]}]",
        "spec.rules[0].to[0].operation",
    );
    assert_error(
        AP,
        "rules: [{to: [{operation: {ports: [\"70000\"]}}]}]",
        "spec.rules[0].to[0].operation.ports[0]",
    );
    assert_error(
        AP,
        "rules: [{to: [{operation: {paths: [\"/a/{**}/{*}\"]}}]}]",
        "spec.rules[0].to[0].operation.paths[0]",
    );
    assert_error(
        AP,
        "rules: [{when: [{key: request.auth.unknown, values: [a]}]}]",
        "spec.rules[0].when[0].key",
    );
    assert_error(
        AP,
        "rules: [{when: [{key: \"destination.labels[app]\", values: [a]}]}]",
        "spec.rules[0].when[0].key",
    );
    assert_error(
        AP,
        "rules: [{when: [{key: request.headers, values: [a]}]}]",
        "spec.rules[0].when[0].key",
    );
    assert_error(
        AP,
        "rules: [{when: [{key: source.ip, values: [\"1.2.3\"]}]}]",
        "spec.rules[0].when[0].values[0]",
    );
    assert_error(
        AP,
        "rules: [{when: [{key: destination.port, notValues: [\"-1\"]}]}]",
        "spec.rules[0].when[0].notValues[0]",
    );
    assert_error(
        AP,
        "rules: [{when: [{key: source.ip}]}]",
        "spec.rules[0].when[0]",
    );
    assert_error(
        AP,
        "rules: [{from: [{source: {serviceAccounts: [\"ns/*\"]}}]}]",
        "spec.rules[0].from[0].source.serviceAccounts[0]",
    );
    assert_error(
        AP,
        "rules: [{from: [{source: {serviceAccounts: [a], namespaces: [b]}}]}]",
        "spec.rules[0].from[0].source",
    );
    assert_error(
        AP,
        "rules: [{from: [{source: {trustDomains: [\"a*b*\"]}}]}]",
        "spec.rules[0].from[0].source.trustDomains[0]",
    );
    assert_error(
        AP,
        "selector: {matchLabels: {app: a}}\ntargetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: g}\nrules: [{}]",
        "spec",
    );
    assert_error(
        AP,
        "targetRefs: [{kind: Deployment, name: d}]\nrules: [{}]",
        "spec.targetRefs[0].kind",
    );
    assert_error(
        AP,
        "selector: {matchLabels: {\"*\": a}}\nrules: [{}]",
        "spec.selector.matchLabels.*",
    );
}

#[test]
fn deny_rules_with_only_http_attributes_warn_about_tcp_ports() {
    let (errors, warnings) = findings(
        AP,
        "action: DENY\nrules: [{to: [{operation: {methods: [GET]}}]}]",
    );
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(warnings, ["spec.rules[0]"]);
    let (_, warnings) = findings(
        AP,
        "action: DENY\nrules: [{to: [{operation: {methods: [GET], ports: [\"80\"]}}]}]",
    );
    assert!(warnings.is_empty());
    let (_, warnings) = findings(AP, "rules: [{from: [{source: {principals: [\"a*b\"]}}]}]");
    assert_eq!(warnings, ["spec.rules[0].from[0].source.principals[0]"]);
}

#[test]
fn the_dry_run_annotation_needs_a_boolean_and_allow_or_deny() {
    let ann = |v: &str| format!("  annotations: {{istio.io/dry-run: \"{v}\"}}\n");
    let (errors, _) = findings_with(AP, "rules: [{}]", &ann("true"));
    assert!(errors.is_empty(), "{errors:?}");
    let (errors, _) = findings_with(AP, "rules: [{}]", &ann("yes please"));
    assert_eq!(errors, ["metadata.annotations.istio.io/dry-run"]);
    let (errors, _) = findings_with(AP, "action: AUDIT\nrules: [{}]", &ann("true"));
    assert_eq!(errors, ["metadata.annotations.istio.io/dry-run"]);
    let (errors, _) = findings_with(PA, "mtls: {mode: STRICT}", &ann("true"));
    assert_eq!(errors, ["metadata.annotations.istio.io/dry-run"]);
}

#[test]
fn peer_authentication_rules() {
    assert_error(
        PA,
        "mtls: {mode: STRICT}\nportLevelMtls: {8080: {mode: DISABLE}}",
        "spec.portLevelMtls",
    );
    assert_error(
        PA,
        "selector: {matchLabels: {app: a}}\nportLevelMtls: {}",
        "spec.portLevelMtls",
    );
    assert_error(
        PA,
        "selector: {matchLabels: {app: a}}\nportLevelMtls: {0: {mode: DISABLE}}",
        "spec.portLevelMtls.0",
    );
    assert_error(
        PA,
        "selector: {matchLabels: {app: a}}\nportLevelMtls: {70000: {mode: DISABLE}}",
        "spec.portLevelMtls.70000",
    );
    let (errors, warnings) = findings(PA, "selector: {}\nmtls: {mode: PERMISSIVE}");
    assert!(errors.is_empty());
    assert_eq!(warnings, ["spec.selector.matchLabels"]);
}

#[test]
fn request_authentication_rules() {
    assert_error(
        RA,
        "jwtRules: [{audiences: [a]}]",
        "spec.jwtRules[0].issuer",
    );
    assert_error(
        RA,
        "jwtRules: [{issuer: a, jwksUri: \"ftp://keys\"}]",
        "spec.jwtRules[0].jwksUri",
    );
    assert_error(
        RA,
        "jwtRules: [{issuer: a, jwks: \"{not json\"}]",
        "spec.jwtRules[0].jwks",
    );
    assert_error(
        RA,
        "jwtRules: [{issuer: a, jwks: '{\"keys\": [{\"kty\": \"RSA\", \"n\": \"x\"}]}'}]",
        "spec.jwtRules[0].jwks",
    );
    assert_error(
        RA,
        "jwtRules: [{issuer: a, fromHeaders: [{prefix: x}]}]",
        "spec.jwtRules[0].fromHeaders[0].name",
    );
    assert_error(
        RA,
        "jwtRules: [{issuer: a, fromParams: [\"\"]}]",
        "spec.jwtRules[0].fromParams[0]",
    );
    assert_error(
        RA,
        "jwtRules: [{issuer: a, outputClaimToHeaders: [{header: \"x y\", claim: c}]}]",
        "spec.jwtRules[0].outputClaimToHeaders[0].header",
    );
    assert_error(
        RA,
        "jwtRules: [{issuer: a, audiences: [\"\"]}]",
        "spec.jwtRules[0].audiences[0]",
    );
    assert_error(
        RA,
        "jwtRules: [{issuer: a, timeout: 0.0001s}]",
        "spec.jwtRules[0].timeout",
    );
    let (errors, warnings) = findings(
        RA,
        "jwtRules: [{issuer: a, jwks: '{\"kty\": \"oct\", \"k\": \"secret\"}'}]",
    );
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(warnings, ["spec.jwtRules[0].jwks"]);
}

#[test]
fn findings_carry_file_object_and_severity() {
    let (objects, _) = load::parse_documents(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: ns}\nspec: {action: DENY}\n",
        "policy.yaml",
    );
    let e = &validate(&objects[0]).errors[0];
    assert_eq!(e.severity, Severity::Error);
    assert!(
        e.to_string()
            .starts_with("policy.yaml: AuthorizationPolicy ns/p: spec.rules: a DENY policy"),
        "{e}"
    );
}

#[test]
fn mesh_config_extension_providers_are_typed_and_validated() {
    let mesh = api::MeshConfig::from_yaml(
        r#"
extensionProviders:
- name: my-ext-authz
  envoyExtAuthzHttp:
    service: ext-authz.foo.svc.cluster.local
    port: 8000
    timeout: 2s
    pathPrefix: /check
    includeRequestHeadersInCheck: [x-ext-authz]
    headersToUpstreamOnAllow: [x-user, "x-auth-*"]
    headersToDownstreamOnDeny: [x-reason]
    includeAdditionalHeadersInCheck: {x-added: v}
    statusOnError: "503"
- name: grpc-authz
  envoyExtAuthzGrpc: {service: authz.foo.svc.cluster.local, port: 9000, failOpen: true}
- name: otel
  opentelemetry: {service: otel.observability.svc.cluster.local, port: 4317}
meshMTLS: {minProtocolVersion: TLSV1_3}
"#,
        "mesh.yaml",
    )
    .expect("mesh config");
    assert_eq!(mesh.extension_providers.len(), 3);
    let http = mesh
        .extension_provider("my-ext-authz")
        .and_then(|p| p.envoy_ext_authz_http.as_ref())
        .expect("http provider");
    assert_eq!(http.port, 8000);
    assert_eq!(http.headers_to_upstream_on_allow, ["x-user", "x-auth-*"]);
    assert!(
        mesh.extension_provider("grpc-authz")
            .and_then(|p| p.envoy_ext_authz_grpc.as_ref())
            .is_some_and(|g| g.fail_open)
    );
    assert!(
        mesh.extension_provider("otel")
            .and_then(|p| p.opentelemetry.as_ref())
            .is_some_and(|o| o.port == 4317)
    );
    assert_eq!(
        mesh.mesh_mtls
            .as_ref()
            .and_then(|m| m.min_protocol_version.as_deref()),
        Some("TLSV1_3")
    );
    assert!(mesh.validate().is_empty(), "{:?}", mesh.validate());

    let bad = api::MeshConfig::from_yaml(
        "extensionProviders:\n- name: a\n  envoyExtAuthzHttp: {service: x, port: 0, pathPrefix: check, headersToUpstreamOnAllow: [\"*\"]}\n- name: a\n  envoyExtAuthzGrpc: {service: yy, port: 1, statusOnError: \"999\"}\n",
        "mesh.yaml",
    )
    .expect("parses");
    let paths: Vec<String> = bad.validate().into_iter().map(|(p, _)| p).collect();
    assert_eq!(
        paths,
        [
            "extensionProviders[0].envoyExtAuthzHttp.port",
            "extensionProviders[0].envoyExtAuthzHttp.pathPrefix",
            "extensionProviders[0].envoyExtAuthzHttp.headersToUpstreamOnAllow[0]",
            "extensionProviders[1].name",
            "extensionProviders[1].envoyExtAuthzGrpc.statusOnError",
        ]
    );
    let err = api::MeshConfig::from_yaml(
        "extensionProviders:\n- name: a\n  envoyExtAuthzHttp: {service: x, port: 1, bogus: 2}\n",
        "mesh.yaml",
    )
    .expect_err("unknown field");
    assert!(
        err.path.as_deref().is_some_and(|p| p.contains("bogus")),
        "{err}"
    );
}
