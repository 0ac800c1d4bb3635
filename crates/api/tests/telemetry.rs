//! Telemetry (`telemetry.istio.io/v1`): loading, validation with field
//! paths, and provider references checked against MeshConfig.

use api::Spec;

fn load(yaml: &str) -> (Vec<api::Object>, Vec<api::LoadError>) {
    api::parse_documents(yaml, "telemetry.yaml")
}

#[test]
fn a_full_telemetry_loads_typed() {
    let (objects, errors) = load(
        r#"apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  tracing:
  - providers: [{name: otel}]
    randomSamplingPercentage: 10
    customTags:
      team: {literal: {value: bookinfo}}
      user: {header: {name: x-user, defaultValue: anonymous}}
  metrics:
  - providers: [{name: prometheus}]
    overrides:
    - match: {metric: REQUEST_COUNT, mode: CLIENT}
      tagOverrides:
        request_protocol: {operation: REMOVE}
  accessLogging:
  - providers: [{name: envoy}]
    filter: {expression: "response.code >= 400"}
"#,
    );
    assert!(errors.is_empty(), "{errors:?}");
    let Spec::Telemetry(t) = &objects[0].spec else {
        panic!("not typed: {:?}", objects[0].spec);
    };
    assert_eq!(t.tracing[0].random_sampling_percentage, Some(10.0));
    assert!(api::validate(&objects[0]).is_ok());
}

#[test]
fn unknown_fields_fail_at_load_with_their_path() {
    let (_, errors) = load(
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: t}\nspec:\n  tracing:\n  - samplingPercent: 3\n",
    );
    let msg = format!("{errors:?}");
    assert!(msg.contains("spec.tracing[0]"), "{msg}");
    assert!(msg.contains("samplingPercent"), "{msg}");
}

#[test]
fn bad_values_are_errors_at_their_field() {
    let (objects, errors) = load(
        r#"apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: bad}
spec:
  tracing:
  - randomSamplingPercentage: 150
    customTags:
      both: {literal: {value: a}, header: {name: b}}
  metrics:
  - overrides:
    - tagOverrides:
        lane: {value: "request.host"}
        gone: {operation: REMOVE, value: "'x'"}
  accessLogging:
  - filter: {expression: "response.cod >= 400"}
"#,
    );
    assert!(errors.is_empty(), "{errors:?}");
    let v = api::validate(&objects[0]);
    let paths: Vec<&str> = v.errors.iter().map(|e| e.path.as_str()).collect();
    for want in [
        "spec.tracing[0].randomSamplingPercentage",
        "spec.tracing[0].customTags.both",
        "spec.metrics[0].overrides[0].tagOverrides.lane.value",
        "spec.metrics[0].overrides[0].tagOverrides.gone.value",
        "spec.accessLogging[0].filter.expression",
    ] {
        assert!(paths.contains(&want), "{want} not in {paths:?}");
    }
    let filter = v
        .errors
        .iter()
        .find(|e| e.path == "spec.accessLogging[0].filter.expression")
        .map(|e| e.message.clone())
        .unwrap_or_default();
    assert!(
        filter.contains("unknown attribute `response.cod`"),
        "{filter}"
    );
}

#[test]
fn providers_must_exist_in_mesh_config_with_the_right_kind() {
    let mesh = api::MeshConfig::from_yaml(
        "extensionProviders:\n- name: otel\n  opentelemetry: {service: otel.obs.svc.cluster.local, port: 4317}\n- name: file\n  envoyFileAccessLog: {path: /dev/stdout}\n",
        "mesh.yaml",
    )
    .expect("mesh");
    let (objects, _) = load(
        r#"apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: t}
spec:
  tracing:
  - providers: [{name: otel}, {name: jaeger}]
  accessLogging:
  - providers: [{name: otel}, {name: file}, {name: envoy}]
"#,
    );
    let Spec::Telemetry(t) = &objects[0].spec else {
        panic!("not typed");
    };
    let problems = api::telemetry::check_providers(t, &mesh);
    assert_eq!(
        problems.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(),
        [
            "spec.tracing[0].providers[1].name",
            "spec.accessLogging[0].providers[0].name"
        ],
        "{problems:?}"
    );
}
