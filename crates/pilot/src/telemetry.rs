//! Telemetry: Istio's Telemetry API and MeshConfig providers applied to
//! every HTTP connection manager a proxy gets, after the listeners are
//! built (so listener code stays free of telemetry concerns).
//!
//! Per connection manager, by direction (inbound = SERVER, outbound and
//! gateways = CLIENT):
//! - `istio.metadata_exchange` (first filter) so both sides learn who the
//!   peer is, and `istio.stats` (before the router) with the metric
//!   overrides. Both are Istio's own extensions, sent as optional
//!   TypedStructs: a stock Envoy skips them, the Trellis proxy applies them.
//! - `tracing`: the OpenTelemetry (OTLP/gRPC) or Zipkin provider, Istio's
//!   sampling default (1%) or the Telemetry's percentage, Istio's span tags
//!   and custom tags.
//! - `access_log`: file loggers of `envoyFileAccessLog` providers, or
//!   MeshConfig `accessLogFile`, with the Telemetry's CEL filter.
//!
//! A provider whose collector cluster this proxy does not have is skipped
//! with a diagnostic: Envoy rejects a tracer naming an unknown cluster, and
//! that would take the whole listener down.

use std::collections::BTreeMap;

use api::mesh_config::{ExtensionProvider, FileAccessLogProvider};
use api::telemetry::{self, Effective, IstioMetric, TagOperation, Telemetry};
use api::{Object, Spec};
use envoy_types::pb::envoy::config::accesslog::v3::{
    AccessLog, AccessLogFilter, ExtensionFilter, access_log, access_log_filter, extension_filter,
};
use envoy_types::pb::envoy::config::core::v3::{
    DataSource, GrpcService, SubstitutionFormatString, data_source, grpc_service,
    substitution_format_string,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, filter};
use envoy_types::pb::envoy::config::trace::v3::{OpenTelemetryConfig, ZipkinConfig, tracing};
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::{
    FileAccessLog, file_access_log,
};
use envoy_types::pb::envoy::extensions::access_loggers::filters::cel::v3::ExpressionFilter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::r#type::tracing::v3::{CustomTag, custom_tag};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value::Kind};
use prost::Message;

use crate::node::{NodeKind, ProxyNode};
use crate::{Diagnostic, Generated, PushContext, pb};

const HCM: &str = "envoy.filters.network.http_connection_manager";
const MX_FILTER: &str = "istio.metadata_exchange";
const MX_TYPE: &str = "type.googleapis.com/io.istio.http.peer_metadata.Config";
const STATS_FILTER: &str = "istio.stats";
const STATS_TYPE: &str = "type.googleapis.com/stats.PluginConfig";
/// Istio's sampling when neither a Telemetry nor MeshConfig sets one.
const DEFAULT_SAMPLING: f64 = 1.0;
/// Envoy's default `max_path_tag_length`, which Istio keeps.
const DEFAULT_MAX_TAG_LENGTH: u32 = 256;

/// Istio's text access log format.
pub(crate) const ISTIO_LOG_FORMAT: &str = concat!(
    "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" ",
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% ",
    "\"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% ",
    "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" ",
    "\"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% ",
    "%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% ",
    "%REQUESTED_SERVER_NAME% %ROUTE_NAME%\n"
);

/// What one direction of one proxy gets.
#[derive(Debug, Default)]
struct Plan {
    tracing: Option<http_connection_manager::Tracing>,
    access_logs: Vec<AccessLog>,
    stats: Struct,
}

/// Applies telemetry to every connection manager in `out`.
pub(crate) fn apply(node: &ProxyNode, ctx: &PushContext, out: &mut Generated) {
    let chosen = applicable(node, ctx);
    let effective = telemetry::effective(chosen.iter().map(|(_, t)| *t));
    let owner = |section: fn(&Telemetry) -> bool| {
        chosen
            .iter()
            .rev()
            .find(|(_, t)| section(t))
            .map(|(o, _)| format!("Telemetry {}", o.key()))
            .unwrap_or_default()
    };
    let owners = [
        owner(|t| !t.tracing.is_empty()),
        owner(|t| !t.access_logging.is_empty()),
    ];
    let mut diagnostics = Vec::new();
    let plans = [false, true].map(|outbound| {
        plan(
            node,
            ctx,
            &effective,
            outbound,
            out,
            &owners,
            &mut diagnostics,
        )
    });
    for l in &mut out.listeners {
        let outbound = node.kind == NodeKind::Router
            || l.traffic_direction
                != envoy_types::pb::envoy::config::core::v3::TrafficDirection::Inbound as i32;
        let plan = &plans[usize::from(outbound)];
        for chain in l
            .filter_chains
            .iter_mut()
            .chain(l.default_filter_chain.as_mut())
        {
            for f in &mut chain.filters {
                if f.name == HCM {
                    rewrite_hcm(f, outbound, plan);
                }
            }
        }
    }
    name_spans(out);
    diagnostics.sort_by(|a: &Diagnostic, b| a.message.cmp(&b.message));
    diagnostics.dedup();
    out.diagnostics.extend(diagnostics);
}

/// Istio's span names: each route to a mesh destination gets the decorator
/// operation `<host>:<port>/*`. The client's span takes that name, and the
/// proxy sends it upstream (`x-envoy-decorator-operation`), so the
/// server's span has it too.
fn name_spans(out: &mut Generated) {
    use envoy_types::pb::envoy::config::route::v3::{Decorator, route, route_action};
    for rc in &mut out.routes {
        for vh in &mut rc.virtual_hosts {
            for r in &mut vh.routes {
                if r.decorator.is_some() {
                    continue;
                }
                let Some(route::Action::Route(action)) = &r.action else {
                    continue;
                };
                let cluster = match &action.cluster_specifier {
                    Some(route_action::ClusterSpecifier::Cluster(c)) => c.as_str(),
                    Some(route_action::ClusterSpecifier::WeightedClusters(w)) => {
                        w.clusters.first().map_or("", |c| c.name.as_str())
                    }
                    _ => "",
                };
                // outbound|<port>|<subset>|<host>
                let mut parts = cluster.splitn(4, '|');
                if let (Some("outbound"), Some(port), Some(_), Some(host)) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                {
                    r.decorator = Some(Decorator {
                        operation: format!("{host}:{port}/*"),
                        ..Default::default()
                    });
                }
            }
        }
    }
}

/// The Telemetries that apply to `node`, least specific first: the root
/// namespace's, the namespace's, then those selecting the workload.
fn applicable<'a>(node: &ProxyNode, ctx: &'a PushContext) -> Vec<(&'a Object, &'a Telemetry)> {
    let root = ctx.mesh().root_namespace.as_str();
    let mut scoped: Vec<(u8, &Object, &Telemetry)> = ctx
        .objects()
        .iter()
        .filter_map(|o| match &o.spec {
            Spec::Telemetry(t) => Some((o, t)),
            _ => None,
        })
        .filter_map(|(o, t)| {
            let rank = if t.is_namespace_wide() {
                if o.namespace() == root {
                    0
                } else if o.namespace() == node.namespace {
                    1
                } else {
                    return None;
                }
            } else if o.namespace() == node.namespace
                && t.selector
                    .as_ref()
                    .is_some_and(|s| crate::context::labels_match(&s.match_labels, &node.labels))
            {
                2
            } else {
                return None;
            };
            Some((rank, o, t))
        })
        .collect();
    // Ties (two Telemetries at one level, which Istio warns about): by name,
    // so the result does not depend on file order.
    scoped.sort_by(|a, b| (a.0, a.1.name()).cmp(&(b.0, b.1.name())));
    scoped.into_iter().map(|(_, o, t)| (o, t)).collect()
}

fn plan(
    node: &ProxyNode,
    ctx: &PushContext,
    e: &Effective<'_>,
    outbound: bool,
    out: &Generated,
    owners: &[String; 2],
    diagnostics: &mut Vec<Diagnostic>,
) -> Plan {
    let mesh = ctx.mesh();
    let defaults = mesh.default_providers.clone().unwrap_or_default();
    let mut plan = Plan {
        stats: stats_config(e, outbound),
        ..Default::default()
    };

    // Tracing: the last entry matching this direction decides.
    let tracing = e
        .tracing
        .iter()
        .rfind(|t| t.match_.as_ref().is_none_or(|m| m.mode.covers(outbound)));
    let providers: Vec<String> = match tracing {
        Some(t) if !t.providers.is_empty() => t.providers.iter().map(|p| p.name.clone()).collect(),
        _ => defaults.tracing.clone(),
    };
    let disabled = tracing.and_then(|t| t.disable_span_reporting) == Some(true)
        || (!mesh.enable_tracing && tracing.is_none());
    if !disabled && let Some(name) = providers.first() {
        match tracer(node, ctx, mesh.extension_provider(name), out) {
            Ok(provider) => {
                let sampling = tracing
                    .and_then(|t| t.random_sampling_percentage)
                    .unwrap_or(DEFAULT_SAMPLING);
                let mut tags = istio_tags(node);
                if let Some(t) = tracing {
                    tags.extend(t.custom_tags.iter().map(|(k, v)| custom(k, v)));
                }
                let max_tag = mesh
                    .extension_provider(name)
                    .and_then(|p| {
                        p.opentelemetry
                            .as_ref()
                            .map(|o| o.max_tag_length)
                            .or(p.zipkin.as_ref().map(|z| z.max_tag_length))
                    })
                    .filter(|l| *l > 0)
                    .unwrap_or(DEFAULT_MAX_TAG_LENGTH);
                plan.tracing = Some(http_connection_manager::Tracing {
                    client_sampling: Some(Percent { value: 100.0 }),
                    random_sampling: Some(Percent { value: sampling }),
                    overall_sampling: Some(Percent { value: 100.0 }),
                    max_path_tag_length: Some(pb::u32v(max_tag)),
                    custom_tags: tags,
                    provider: Some(provider),
                    ..Default::default()
                });
            }
            Err(m) => diagnostics.push(Diagnostic::new(
                owners[0].clone(),
                "spec.tracing",
                format!("tracing provider {name:?}: {m}; no spans are reported"),
            )),
        }
    }

    // Access logging: every matching entry adds its providers; `disabled`
    // turns its providers off.
    let logging: Vec<_> = e
        .access_logging
        .iter()
        .filter(|a| a.match_.as_ref().is_none_or(|m| m.mode.covers(outbound)))
        .collect();
    let mut sinks: BTreeMap<String, Option<String>> = BTreeMap::new();
    if logging.is_empty() {
        for p in &defaults.access_logging {
            sinks.insert(p.clone(), None);
        }
        if !mesh.access_log_file.is_empty() && sinks.is_empty() {
            plan.access_logs.push(file_log(
                &FileAccessLogProvider {
                    path: mesh.access_log_file.clone(),
                    log_format: None,
                },
                mesh.access_log_format.as_str(),
                mesh.access_log_encoding.as_deref() == Some("JSON"),
                None,
            ));
        }
    }
    for a in logging {
        let names: Vec<String> = if a.providers.is_empty() {
            defaults.access_logging.clone()
        } else {
            a.providers.iter().map(|p| p.name.clone()).collect()
        };
        for n in names {
            if a.disabled == Some(true) {
                sinks.remove(&n);
            } else {
                sinks.insert(n, a.filter.as_ref().map(|f| f.expression.clone()));
            }
        }
    }
    for (name, filter) in sinks {
        match mesh.extension_provider(&name) {
            Some(ExtensionProvider {
                envoy_file_access_log: Some(f),
                ..
            }) => plan
                .access_logs
                .push(file_log(f, "", false, filter.as_deref())),
            Some(_) => diagnostics.push(Diagnostic::new(
                owners[1].clone(),
                "spec.accessLogging",
                format!("provider {name:?} is not an envoyFileAccessLog provider; skipped"),
            )),
            None => diagnostics.push(Diagnostic::new(
                owners[1].clone(),
                "spec.accessLogging",
                format!("provider {name:?} is not in MeshConfig extensionProviders; skipped"),
            )),
        }
    }
    plan
}

/// The tracer for `provider`, or why there is none.
fn tracer(
    node: &ProxyNode,
    ctx: &PushContext,
    provider: Option<&ExtensionProvider>,
    out: &Generated,
) -> Result<tracing::Http, String> {
    let provider = provider.ok_or("not in MeshConfig extensionProviders")?;
    let (service, port) = if let Some(o) = &provider.opentelemetry {
        (o.service.as_str(), o.port)
    } else if let Some(z) = &provider.zipkin {
        (z.service.as_str(), z.port)
    } else {
        return Err("not an opentelemetry or zipkin provider".into());
    };
    // `namespace/host` or a host name, as in Istio.
    let host = match service.split_once('/') {
        Some((ns, h)) => ctx.resolve_host(h, ns),
        None => ctx.resolve_host(service, &node.namespace),
    };
    let cluster = format!("outbound|{port}||{host}");
    if out.cluster(&cluster).is_none() {
        return Err(format!(
            "this proxy has no cluster {cluster} (is {host} in the registry and visible here?)"
        ));
    }
    let service_name = format!(
        "{}.{}",
        node.labels
            .get("service.istio.io/canonical-name")
            .or(node.labels.get("app"))
            .unwrap_or(&node.workload_name),
        node.namespace
    );
    if provider.opentelemetry.is_some() {
        let cfg = OpenTelemetryConfig {
            grpc_service: Some(GrpcService {
                target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                    grpc_service::EnvoyGrpc {
                        cluster_name: cluster,
                        authority: host,
                        ..Default::default()
                    },
                )),
                ..Default::default()
            }),
            service_name,
            ..Default::default()
        };
        Ok(tracing::Http {
            name: "envoy.tracers.opentelemetry".into(),
            config_type: Some(tracing::http::ConfigType::TypedConfig(pb::any(&cfg))),
        })
    } else {
        let cfg = ZipkinConfig {
            collector_cluster: cluster,
            collector_endpoint: "/api/v2/spans".into(),
            collector_endpoint_version: 2, // HTTP_JSON
            collector_hostname: host,
            trace_id_128bit: !provider
                .zipkin
                .as_ref()
                .is_some_and(|z| z.enable_64bit_trace_id),
            shared_span_context: Some(pb::boolv(false)),
            ..Default::default()
        };
        Ok(tracing::Http {
            name: "envoy.tracers.zipkin".into(),
            config_type: Some(tracing::http::ConfigType::TypedConfig(pb::any(&cfg))),
        })
    }
}

/// The span tags Istio adds to every span of a workload.
fn istio_tags(node: &ProxyNode) -> Vec<CustomTag> {
    let literal = |tag: &str, value: &str| CustomTag {
        tag: tag.into(),
        r#type: Some(custom_tag::Type::Literal(custom_tag::Literal {
            value: value.into(),
        })),
    };
    let label = |keys: &[&str], fallback: &str| {
        keys.iter()
            .find_map(|k| node.labels.get(*k))
            .map_or_else(|| fallback.to_string(), Clone::clone)
    };
    vec![
        literal(
            "istio.canonical_revision",
            &label(
                &["service.istio.io/canonical-revision", "version"],
                "latest",
            ),
        ),
        literal(
            "istio.canonical_service",
            &label(
                &["service.istio.io/canonical-name", "app"],
                &node.workload_name,
            ),
        ),
        literal("istio.mesh_id", "cluster.local"),
        literal("istio.namespace", &node.namespace),
    ]
}

fn custom(name: &str, t: &telemetry::CustomTag) -> CustomTag {
    let kind = if let Some(l) = &t.literal {
        custom_tag::Type::Literal(custom_tag::Literal {
            value: l.value.clone(),
        })
    } else if let Some(e) = &t.environment {
        custom_tag::Type::Environment(custom_tag::Environment {
            name: e.name.clone(),
            default_value: e.default_value.clone(),
        })
    } else if let Some(h) = &t.header {
        custom_tag::Type::RequestHeader(custom_tag::Header {
            name: h.name.clone(),
            default_value: h.default_value.clone(),
        })
    } else {
        custom_tag::Type::Literal(custom_tag::Literal::default())
    };
    CustomTag {
        tag: name.into(),
        r#type: Some(kind),
    }
}

fn file_log(
    f: &FileAccessLogProvider,
    mesh_format: &str,
    mesh_json: bool,
    filter: Option<&str>,
) -> AccessLog {
    let text = |s: &str| {
        substitution_format_string::Format::TextFormatSource(DataSource {
            specifier: Some(data_source::Specifier::InlineString(s.into())),
            ..Default::default()
        })
    };
    let format = match f.log_format.as_ref() {
        Some(lf) if lf.labels.is_some() => {
            let mut s = Struct::default();
            for (k, v) in lf.labels.iter().flatten() {
                s.fields.insert(
                    k.clone(),
                    Value {
                        kind: Some(Kind::StringValue(v.clone())),
                    },
                );
            }
            substitution_format_string::Format::JsonFormat(s)
        }
        Some(lf) => {
            let t = lf.text.clone().unwrap_or_default();
            text(&if t.ends_with('\n') {
                t
            } else {
                format!("{t}\n")
            })
        }
        None if mesh_json => substitution_format_string::Format::JsonFormat(json_default()),
        None if !mesh_format.is_empty() => text(mesh_format),
        None => text(ISTIO_LOG_FORMAT),
    };
    let cfg = FileAccessLog {
        path: if f.path.is_empty() {
            "/dev/stdout".into()
        } else {
            f.path.clone()
        },
        access_log_format: Some(file_access_log::AccessLogFormat::LogFormat(
            SubstitutionFormatString {
                format: Some(format),
                ..Default::default()
            },
        )),
    };
    let typed = match cfg.access_log_format.as_ref() {
        Some(file_access_log::AccessLogFormat::LogFormat(SubstitutionFormatString {
            format: Some(substitution_format_string::Format::JsonFormat(json)),
            ..
        })) => deterministic_json_log(&cfg.path, json),
        _ => pb::any(&cfg),
    };
    AccessLog {
        name: "envoy.access_loggers.file".into(),
        filter: filter.map(|expr| AccessLogFilter {
            filter_specifier: Some(access_log_filter::FilterSpecifier::ExtensionFilter(
                ExtensionFilter {
                    name: "envoy.access_loggers.extension_filters.cel".into(),
                    config_type: Some(extension_filter::ConfigType::TypedConfig(pb::any(
                        &ExpressionFilter {
                            expression: expr.into(),
                            ..Default::default()
                        },
                    ))),
                },
            )),
        }),
        config_type: Some(access_log::ConfigType::TypedConfig(typed)),
    }
}

/// A JSON-format FileAccessLog encoded by hand: `Struct` keeps its keys in
/// a hash map, so prost's bytes would differ between two identical
/// generations, every push would carry a "changed" listener, and proxies
/// would drain their listeners for nothing. The keys are written sorted.
fn deterministic_json_log(path: &str, json: &Struct) -> envoy_types::pb::google::protobuf::Any {
    use prost::encoding::{WireType, encode_key, encode_varint};
    let nested = |tag: u32, body: &[u8], out: &mut Vec<u8>| {
        encode_key(tag, WireType::LengthDelimited, out);
        encode_varint(body.len() as u64, out);
        out.extend_from_slice(body);
    };
    // SubstitutionFormatString { json_format (2): Struct }
    let mut format = Vec::new();
    nested(2, &xds::typed_struct::sorted_struct(json), &mut format);
    // FileAccessLog { path (1), log_format (5) }
    let mut value = Vec::new();
    prost::encoding::string::encode(1, &path.to_string(), &mut value);
    nested(5, &format, &mut value);
    envoy_types::pb::google::protobuf::Any {
        type_url: <FileAccessLog as prost::Name>::type_url(),
        value,
    }
}

/// Istio's JSON access log keys for `accessLogEncoding: JSON`.
fn json_default() -> Struct {
    let mut s = Struct::default();
    for (k, v) in [
        ("start_time", "%START_TIME%"),
        ("method", "%REQ(:METHOD)%"),
        ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
        ("protocol", "%PROTOCOL%"),
        ("response_code", "%RESPONSE_CODE%"),
        ("response_flags", "%RESPONSE_FLAGS%"),
        ("response_code_details", "%RESPONSE_CODE_DETAILS%"),
        ("bytes_received", "%BYTES_RECEIVED%"),
        ("bytes_sent", "%BYTES_SENT%"),
        ("duration", "%DURATION%"),
        (
            "upstream_service_time",
            "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
        ),
        ("x_forwarded_for", "%REQ(X-FORWARDED-FOR)%"),
        ("user_agent", "%REQ(USER-AGENT)%"),
        ("request_id", "%REQ(X-REQUEST-ID)%"),
        ("authority", "%REQ(:AUTHORITY)%"),
        ("upstream_host", "%UPSTREAM_HOST%"),
        ("upstream_cluster", "%UPSTREAM_CLUSTER_RAW%"),
        ("upstream_local_address", "%UPSTREAM_LOCAL_ADDRESS%"),
        ("downstream_local_address", "%DOWNSTREAM_LOCAL_ADDRESS%"),
        ("downstream_remote_address", "%DOWNSTREAM_REMOTE_ADDRESS%"),
        ("requested_server_name", "%REQUESTED_SERVER_NAME%"),
        ("route_name", "%ROUTE_NAME%"),
    ] {
        s.fields.insert(
            k.into(),
            Value {
                kind: Some(Kind::StringValue(v.into())),
            },
        );
    }
    s
}

/// `stats.PluginConfig` for one direction: `metrics` entries naming a
/// family (`requests_total`...) or all (empty name), with `drop`,
/// `tags_to_remove` and `dimensions` (tag → literal value).
fn stats_config(e: &Effective<'_>, outbound: bool) -> Struct {
    let mut metrics = Vec::new();
    for m in e.metrics {
        for o in &m.overrides {
            let sel = o.match_.clone().unwrap_or_default();
            if !sel.mode.covers(outbound) {
                continue;
            }
            let name = match (sel.metric, sel.custom_metric.as_deref()) {
                (_, Some(custom)) => custom.to_string(),
                (Some(metric), None) => metric.family().unwrap_or_default().to_string(),
                (None, None) => IstioMetric::AllMetrics
                    .family()
                    .unwrap_or_default()
                    .to_string(),
            };
            let mut entry = Struct::default();
            entry.fields.insert("name".into(), string(&name));
            if o.disabled == Some(true) {
                entry.fields.insert(
                    "drop".into(),
                    Value {
                        kind: Some(Kind::BoolValue(true)),
                    },
                );
            }
            let mut remove = Vec::new();
            let mut dims = Struct::default();
            for (tag, ov) in &o.tag_overrides {
                match ov.operation {
                    TagOperation::Remove => remove.push(string(tag)),
                    TagOperation::Upsert => {
                        if let Some(v) = ov.value.as_deref().and_then(telemetry::literal_tag_value)
                        {
                            dims.fields.insert(tag.clone(), string(v));
                        }
                    }
                }
            }
            if !remove.is_empty() {
                entry.fields.insert(
                    "tags_to_remove".into(),
                    Value {
                        kind: Some(Kind::ListValue(ListValue { values: remove })),
                    },
                );
            }
            if !dims.fields.is_empty() {
                entry.fields.insert(
                    "dimensions".into(),
                    Value {
                        kind: Some(Kind::StructValue(dims)),
                    },
                );
            }
            metrics.push(Value {
                kind: Some(Kind::StructValue(entry)),
            });
        }
    }
    let mut s = Struct::default();
    if !metrics.is_empty() {
        s.fields.insert(
            "metrics".into(),
            Value {
                kind: Some(Kind::ListValue(ListValue { values: metrics })),
            },
        );
    }
    s
}

fn string(v: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(v.into())),
    }
}

/// The metadata exchange config of one direction.
fn exchange(outbound: bool) -> Struct {
    let headers = || {
        let mut m = Struct::default();
        m.fields.insert(
            "istio_headers".into(),
            Value {
                kind: Some(Kind::StructValue(Struct::default())),
            },
        );
        Value {
            kind: Some(Kind::ListValue(ListValue {
                values: vec![Value {
                    kind: Some(Kind::StructValue(m)),
                }],
            })),
        }
    };
    let side = if outbound { "upstream" } else { "downstream" };
    let mut s = Struct::default();
    s.fields.insert(format!("{side}_discovery"), headers());
    s.fields.insert(format!("{side}_propagation"), headers());
    s
}

fn optional_filter(name: &str, type_url: &str, value: Struct) -> HttpFilter {
    HttpFilter {
        name: name.into(),
        is_optional: true,
        config_type: Some(http_filter::ConfigType::TypedConfig(
            xds::typed_struct::pack(type_url, value),
        )),
        ..Default::default()
    }
}

fn rewrite_hcm(f: &mut Filter, outbound: bool, plan: &Plan) {
    let Some(filter::ConfigType::TypedConfig(any)) = &mut f.config_type else {
        return;
    };
    let Ok(mut hcm) = HttpConnectionManager::decode(any.value.as_slice()) else {
        return;
    };
    if hcm.http_filters.is_empty() || hcm.http_filters.iter().any(|h| h.name == MX_FILTER) {
        return;
    }
    hcm.http_filters
        .insert(0, optional_filter(MX_FILTER, MX_TYPE, exchange(outbound)));
    let router = hcm.http_filters.len() - 1;
    hcm.http_filters.insert(
        router,
        optional_filter(STATS_FILTER, STATS_TYPE, plan.stats.clone()),
    );
    if hcm.tracing.is_none() {
        hcm.tracing.clone_from(&plan.tracing);
    }
    hcm.access_log.extend(plan.access_logs.iter().cloned());
    any.value = hcm.encode_to_vec();
}
