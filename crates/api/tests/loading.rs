//! Loader behaviour: documents, lists, unknown kinds and fields, errors.

use std::time::Duration;

use api::{MeshConfig, Spec, load};

#[test]
fn unknown_field_is_an_error_with_its_path() {
    let text = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r, namespace: ns}\nspec:\n  hosts: [a]\n  http:\n  - route:\n    - destination: {hosst: a}\n";
    let (objects, errors) = load::parse_documents(text, "f.yaml");
    assert!(objects.is_empty());
    assert_eq!(errors.len(), 1);
    let e = &errors[0];
    assert_eq!(
        e.path.as_deref(),
        Some("spec.http[0].route[0].destination.hosst")
    );
    assert_eq!(e.kind.as_deref(), Some("VirtualService"));
    assert_eq!(e.object.as_deref(), Some("ns/r"));
    assert!(
        e.to_string().starts_with(
            "f.yaml:1: VirtualService ns/r: spec.http[0].route[0].destination.hosst: unknown field"
        ),
        "{e}"
    );
}

#[test]
fn bad_duration_and_enum_name_the_field() {
    let text = "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata: {name: r}\nspec:\n  hosts: [a]\n  http: [{timeout: 5 seconds, route: [{destination: {host: a}}]}]\n---\napiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata: {name: d}\nspec: {host: a, trafficPolicy: {tls: {mode: SOMETIMES}}}\n";
    let (objects, errors) = load::parse_documents(text, "f.yaml");
    assert!(objects.is_empty());
    let paths: Vec<_> = errors
        .iter()
        .map(|e| e.path.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        paths,
        vec!["spec.http[0].timeout", "spec.trafficPolicy.tls.mode"]
    );
    assert_eq!(errors[1].line, 7);
}

#[test]
fn one_bad_document_does_not_hide_the_others() {
    let text = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec: {bogus: 1}\n---\n\n# only a comment\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\nspec: {host: a}\n---\n: : not yaml [\n";
    let (objects, errors) = load::parse_documents(text, "f.yaml");
    assert_eq!(objects.len(), 1);
    assert_eq!(objects[0].kind, "DestinationRule");
    assert_eq!(errors.len(), 2, "{errors:?}");
}

#[test]
fn list_and_unsupported_kinds() {
    let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: s}\n  spec: {ports: [{port: 80}]}\n- apiVersion: security.istio.io/v1beta1\n  kind: AuthorizationPolicy\n  metadata: {name: p, namespace: x}\n  spec: {action: DENY}\n- apiVersion: telemetry.istio.io/v1alpha1\n  kind: Telemetry\n  metadata: {name: t}\n  spec: {}\n- apiVersion: extensions.istio.io/v1alpha1\n  kind: WasmPlugin\n  metadata: {name: w}\n  spec: {url: oci://x}\n- apiVersion: security.istio.io/v1\n  kind: RequestAuthentication\n  metadata: {name: ra}\n";
    let (objects, errors) = load::parse_documents(text, "l.yaml");
    assert!(errors.is_empty(), "{errors:?}");
    let kinds: Vec<_> = objects.iter().map(|o| o.kind.as_str()).collect();
    assert_eq!(
        kinds,
        vec![
            "Service",
            "AuthorizationPolicy",
            "Telemetry",
            "WasmPlugin",
            "RequestAuthentication"
        ]
    );
    assert!(matches!(objects[0].spec, Spec::Unsupported(_)));
    assert!(matches!(objects[1].spec, Spec::AuthorizationPolicy(_)));
    assert_eq!(objects[1].key(), "x/p");
    assert!(matches!(objects[2].spec, Spec::Telemetry(_)));
    assert!(matches!(objects[3].spec, Spec::WasmPlugin(_)));
    assert!(matches!(objects[4].spec, Spec::RequestAuthentication(_)));
}

#[test]
fn api_versions() {
    for v in ["v1", "v1beta1", "v1alpha3"] {
        let text = format!(
            "apiVersion: networking.istio.io/{v}\nkind: DestinationRule\nmetadata: {{name: d}}\nspec: {{host: a}}\n"
        );
        let (objects, errors) = load::parse_documents(&text, "v.yaml");
        assert!(errors.is_empty() && objects.len() == 1, "{v}: {errors:?}");
    }
    let (_, errors) = load::parse_documents(
        "apiVersion: networking.istio.io/v2\nkind: Gateway\nmetadata: {name: g}\n",
        "v.yaml",
    );
    assert_eq!(errors[0].path.as_deref(), Some("apiVersion"));
    let (_, errors) = load::parse_documents(
        "apiVersion: security.istio.io/v1alpha3\nkind: PeerAuthentication\nmetadata: {name: p}\n",
        "v.yaml",
    );
    assert_eq!(errors.len(), 1);
}

#[test]
fn metadata_and_required_name() {
    let (objects, _) = load::parse_documents(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: d\n  labels: {app: x}\n  annotations: {note: \"y\", other: text}\n  uid: ignored\nspec: {host: a}\n",
        "m.yaml",
    );
    assert_eq!(objects[0].metadata.labels["app"], "x");
    assert_eq!(objects[0].metadata.annotations["note"], "y");
    // YAML 1.1 booleans are not strings (as in Kubernetes).
    let (_, errors) = load::parse_documents(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d, labels: {a: yes}}\nspec: {host: a}\n",
        "m.yaml",
    );
    assert_eq!(errors[0].path.as_deref(), Some("metadata.labels.a"));
    assert_eq!(objects[0].namespace(), "default");
    let (_, errors) = load::parse_documents(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nspec: {host: a}\n",
        "m.yaml",
    );
    assert_eq!(errors[0].path.as_deref(), Some("metadata.name"));
    let (_, errors) = load::parse_documents("kind: Gateway\n", "m.yaml");
    assert_eq!(errors[0].path.as_deref(), Some("apiVersion"));
    let (_, errors) = load::parse_documents("- a\n- b\n", "m.yaml");
    assert_eq!(errors.len(), 1);
}

#[test]
fn garbage_never_panics() {
    let inputs = [
        "",
        "---",
        "--- ---",
        "\u{0}",
        "&a [*a]",
        "a: &a\n  b: *a\n",
        "{{{{",
        "]]]",
        "apiVersion: 1\nkind: 2\n",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: x}\nspec: [1, 2]\n",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: x}\nspec: {http: [{timeout: 99999999999999999999h}]}\n",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: [x]}\n",
        "apiVersion: v1\nkind: List\nitems: 3\n",
        "%YAML 1.2\n---\na: b\n",
        "a: !!binary aGVsbG8=\n",
        "? complex key\n: v\n",
    ];
    for text in inputs {
        let (objects, errors) = load::parse_documents(text, "g.yaml");
        for o in &objects {
            let _ = api::validate(o);
        }
        for e in &errors {
            let _ = e.to_string();
        }
    }
    let mut s = String::new();
    for i in 0..2000u32 {
        s.push(char::from_u32(32 + (i * 7919) % 95).unwrap_or('x'));
        if i % 37 == 0 {
            s.push('\n');
        }
    }
    let _ = load::parse_documents(&s, "noise.yaml");
}

#[test]
fn mesh_config_defaults_and_parsing() {
    let m = MeshConfig::default();
    assert_eq!(m.root_namespace, "istio-system");
    assert_eq!(m.trust_domain, "cluster.local");
    assert!(m.enable_auto_mtls);
    assert_eq!(
        m.outbound_traffic_policy.mode,
        api::mesh_config::MeshOutboundMode::AllowAny
    );
    assert_eq!(m.default_retry_attempts(), 2);

    let m = MeshConfig::from_yaml(
        "trustDomain: example.org\naccessLogFile: /dev/stdout\ndefaultHttpRetryPolicy: {attempts: 5, perTryTimeout: 0.5s}\noutboundTrafficPolicy: {mode: REGISTRY_ONLY}\nextensionProviders: [{name: otel, opentelemetry: {service: x, port: 4317}}]\nconnectTimeout: 1s\nsomethingNew: true\n",
        "mesh.yaml",
    )
    .expect("mesh config");
    assert_eq!(m.trust_domain, "example.org");
    assert_eq!(m.root_namespace, "istio-system");
    assert_eq!(m.default_retry_attempts(), 5);
    assert_eq!(m.connect_timeout(), Duration::from_secs(1));
    assert_eq!(m.extension_providers.len(), 1);
    assert!(m.extra.contains_key("somethingNew"));
    let err = MeshConfig::from_yaml(
        "defaultHttpRetryPolicy: {attempts: 1, perTryTimeout: soon}\n",
        "mesh.yaml",
    )
    .expect_err("bad");
    assert_eq!(
        err.path.as_deref(),
        Some("defaultHttpRetryPolicy.perTryTimeout")
    );
    assert_eq!(
        MeshConfig::from_yaml("", "m").expect("empty"),
        MeshConfig::default()
    );
}

#[test]
fn defaults_are_istios() {
    assert_eq!(api::defaults::RETRY_ATTEMPTS, 2);
    assert_eq!(
        api::defaults::RETRY_ON,
        "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
    );
    use api::networking::destination_rule::{ClientTlsMode, ClientTlsSettings};
    use api::networking::gateway::{ServerTlsMode, ServerTlsSettings};
    assert_eq!(ClientTlsSettings::default().mode(), ClientTlsMode::Disable);
    assert_eq!(
        ServerTlsSettings::default().mode(),
        ServerTlsMode::Passthrough
    );
}
