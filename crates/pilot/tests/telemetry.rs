//! Telemetry translation: what every connection manager gets (Istio's
//! extension filters, tracer, access logs) and that it is generated the
//! same way twice.

mod support;

use envoy_types::pb::envoy::config::listener::v3::filter;
use envoy_types::pb::envoy::config::trace::v3::OpenTelemetryConfig;
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::{
    FileAccessLog, file_access_log,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use pilot::Generated;
use registry::Protocol;
use support::*;

fn mesh(yaml: &str) -> api::MeshConfig {
    api::MeshConfig::from_yaml(yaml, "mesh.yaml").expect("mesh config")
}

/// Every connection manager of `g`.
fn hcms(g: &Generated) -> Vec<HttpConnectionManager> {
    g.listeners
        .iter()
        .flat_map(|l| l.filter_chains.iter())
        .flat_map(|c| c.filters.iter())
        .filter_map(|f| match &f.config_type {
            Some(filter::ConfigType::TypedConfig(a))
                if a.type_url.ends_with("HttpConnectionManager") =>
            {
                Some(decode::<HttpConnectionManager>(a))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn json_access_logs_generate_identical_bytes_every_time() {
    let m = "accessLogFile: /dev/stdout\naccessLogEncoding: JSON\n";
    let versions: Vec<String> = (0..4)
        .map(|_| {
            let g = generate(&productpage(), &ctx_with("", bookinfo_registry(), mesh(m)));
            let snap = pilot::to_snapshot(&g);
            format!(
                "{:?}",
                snap.get(xds::type_url::LISTENER).map(|t| t.version.clone())
            )
        })
        .collect();
    assert!(versions.windows(2).all(|w| w[0] == w[1]), "{versions:?}");

    let g = generate(&productpage(), &ctx_with("", bookinfo_registry(), mesh(m)));
    let h = hcms(&g);
    assert!(!h.is_empty());
    for hcm in &h {
        let log = hcm.access_log.first().expect("an access log");
        let Some(
            envoy_types::pb::envoy::config::accesslog::v3::access_log::ConfigType::TypedConfig(a),
        ) = &log.config_type
        else {
            panic!("no typed config");
        };
        let f: FileAccessLog = decode(a);
        assert_eq!(f.path, "/dev/stdout");
        let Some(file_access_log::AccessLogFormat::LogFormat(fmt)) = f.access_log_format else {
            panic!("no log format");
        };
        let Some(envoy_types::pb::envoy::config::core::v3::substitution_format_string::Format::JsonFormat(json)) =
            fmt.format
        else {
            panic!("not JSON");
        };
        assert_eq!(
            json.fields
                .get("response_code")
                .and_then(|v| v.kind.as_ref())
                .map(|k| format!("{k:?}")),
            Some("StringValue(\"%RESPONSE_CODE%\")".to_string())
        );
    }
}

#[test]
fn tracing_points_at_the_collector_cluster_or_is_left_out_with_a_diagnostic() {
    let m = mesh(
        "extensionProviders:\n- name: otel\n  opentelemetry: {service: otel.observability.svc.cluster.local, port: 4317}\ndefaultProviders: {tracing: [otel]}\n",
    );
    // Without the collector in the registry: no tracer, and a diagnostic.
    let g = generate(
        &productpage(),
        &ctx_with("", bookinfo_registry(), m.clone()),
    );
    assert!(hcms(&g).iter().all(|h| h.tracing.is_none()));
    assert!(
        g.diagnostics.iter().any(|d| d.message.contains("otel")),
        "{:?}",
        g.diagnostics
    );

    let mut reg = bookinfo_registry();
    let svc = service("otel", "observability", &[(4317, Protocol::Grpc)]);
    reg.services.insert(svc.hostname.clone(), svc);
    let g = generate(&productpage(), &ctx_with("", reg, m));
    let h = hcms(&g);
    assert!(!h.is_empty());
    for hcm in &h {
        let t = hcm.tracing.as_ref().expect("tracing");
        assert_eq!(t.random_sampling.as_ref().map(|p| p.value), Some(1.0));
        let provider = t.provider.as_ref().expect("provider");
        assert_eq!(provider.name, "envoy.tracers.opentelemetry");
        let Some(
            envoy_types::pb::envoy::config::trace::v3::tracing::http::ConfigType::TypedConfig(a),
        ) = &provider.config_type
        else {
            panic!("no typed config");
        };
        let otel: OpenTelemetryConfig = decode(a);
        assert_eq!(otel.service_name, "productpage.default");
        let names: Vec<&str> = t.custom_tags.iter().map(|c| c.tag.as_str()).collect();
        assert!(names.contains(&"istio.canonical_service"), "{names:?}");
    }
}
