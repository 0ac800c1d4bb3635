//! `HttpConnectionManager.tracing` and route `tracing` compiled.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::grpc_service::TargetSpecifier;
use envoy_types::pb::envoy::config::trace::v3::OpenTelemetryConfig;
use envoy_types::pb::envoy::config::trace::v3::tracing::http::ConfigType;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing;
use envoy_types::pb::envoy::r#type::metadata::v3::metadata_key::path_segment::Segment;
use envoy_types::pb::envoy::r#type::metadata::v3::metadata_kind::Kind as MetadataKind;
use envoy_types::pb::envoy::r#type::tracing::v3::{CustomTag as CustomTagProto, custom_tag};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, Percent, fractional_percent};
use envoy_types::pb::google::protobuf::value::Kind;
use http::{HeaderMap, HeaderName};
use prost::Message;

use super::exporter::{Exporter, Format};
use super::sampler::{Fraction, Sampling};

pub(crate) const OTEL_TYPE_URL: &str =
    "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig";
pub(crate) const OTEL_NAME: &str = "envoy.tracers.opentelemetry";
pub(crate) const ZIPKIN_TYPE_URL: &str = "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig";
pub(crate) const ZIPKIN_NAME: &str = "envoy.tracers.zipkin";

/// Envoy's default for `max_path_tag_length`.
const DEFAULT_MAX_PATH_TAG_LENGTH: usize = 256;
/// Envoy's default for `max_cache_size`.
const DEFAULT_QUEUE: usize = 1024;
/// How long one Export call may take when `grpc_service.timeout` is unset,
/// so a collector that accepts and never answers cannot stall the exporter.
const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// A config error: the field under `tracing` and the message.
pub(crate) type FieldError = (String, String);

fn err(field: impl Into<String>, msg: impl Into<String>) -> FieldError {
    (field.into(), msg.into())
}

/// The compiled `tracing` block of one connection manager.
#[derive(Debug)]
pub struct HcmTracing {
    pub(crate) shared: Arc<Shared>,
    /// The listener's `traffic_direction` is OUTBOUND: spans are named
    /// `egress <host>` and, without an upstream span, are CLIENT spans.
    outbound: AtomicBool,
}

/// What every request's trace reads, for as long as its response lives.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) sampling: Sampling,
    pub(crate) custom_tags: Vec<CustomTag>,
    pub(crate) max_path_tag_length: usize,
    pub(crate) spawn_upstream_span: bool,
    /// `None`: no provider (or no collector): decisions and decorators
    /// still apply, but no span is made (Envoy's null tracer).
    pub(crate) provider: Option<Provider>,
}

#[derive(Debug)]
pub(crate) struct Provider {
    pub(crate) flavor: Flavor,
    /// `None`: no collector: spans are made and propagated but not sent.
    pub(crate) exporter: Option<Exporter>,
}

/// Which tracer: it decides the propagation headers, ids and span names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// `envoy.tracers.opentelemetry`: W3C trace context, OTLP/gRPC.
    OpenTelemetry,
    /// `envoy.tracers.zipkin`: B3, Zipkin v2 JSON over HTTP.
    Zipkin {
        /// `shared_span_context` (default true).
        shared_context: bool,
        /// `trace_id_128bit`.
        wide: bool,
    },
}

/// A custom tag (`envoy.type.tracing.v3.CustomTag`).
#[derive(Debug, Clone)]
pub(crate) enum CustomTag {
    Literal {
        tag: String,
        value: String,
    },
    /// Read once at config time, as Envoy does.
    Environment {
        tag: String,
        value: String,
    },
    Header {
        tag: String,
        name: HeaderName,
        default: String,
    },
    /// Route or request (dynamic) metadata: `filter_metadata[key]` then
    /// the path's keys.
    Metadata {
        tag: String,
        request: bool,
        filter: String,
        path: Vec<String>,
        default: String,
    },
}

/// What custom tags read their values from.
pub(crate) struct TagContext<'a> {
    pub(crate) headers: &'a HeaderMap,
    pub(crate) route: Option<&'a envoy_types::pb::envoy::config::route::v3::Route>,
    pub(crate) metadata: Option<&'a crate::rbac::DynamicMetadata>,
}

impl CustomTag {
    pub(crate) fn compile(t: &CustomTagProto, field: &str) -> Result<Self, FieldError> {
        let tag = t.tag.clone();
        if tag.is_empty() {
            return Err(err(format!("{field}.tag"), "must not be empty"));
        }
        Ok(match &t.r#type {
            Some(custom_tag::Type::Literal(l)) => Self::Literal {
                tag,
                value: l.value.clone(),
            },
            Some(custom_tag::Type::Environment(e)) => Self::Environment {
                tag,
                value: std::env::var(&e.name).unwrap_or_else(|_| e.default_value.clone()),
            },
            Some(custom_tag::Type::RequestHeader(h)) => Self::Header {
                tag,
                name: HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes()).map_err(
                    |_| {
                        err(
                            format!("{field}.request_header.name"),
                            "not a valid header name",
                        )
                    },
                )?,
                default: h.default_value.clone(),
            },
            Some(custom_tag::Type::Metadata(m)) => {
                let request = match m.kind.as_ref().and_then(|k| k.kind.as_ref()) {
                    Some(MetadataKind::Route(_)) => false,
                    Some(MetadataKind::Request(_)) => true,
                    _ => {
                        return Err(err(
                            format!("{field}.metadata.kind"),
                            "only request and route metadata custom tags are supported",
                        ));
                    }
                };
                let key = m.metadata_key.clone().unwrap_or_default();
                let mut path = Vec::with_capacity(key.path.len());
                for (i, seg) in key.path.iter().enumerate() {
                    match &seg.segment {
                        Some(Segment::Key(k)) => path.push(k.clone()),
                        _ => {
                            return Err(err(
                                format!("{field}.metadata.metadata_key.path[{i}]"),
                                "a key is required",
                            ));
                        }
                    }
                }
                Self::Metadata {
                    tag,
                    request,
                    filter: key.key,
                    path,
                    default: m.default_value.clone(),
                }
            }
            Some(custom_tag::Type::Value(v)) if !v.contains('%') => Self::Literal {
                tag,
                value: v.clone(),
            },
            Some(custom_tag::Type::Value(_)) => {
                return Err(err(
                    format!("{field}.value"),
                    "substitution formatters in custom tag values are not supported",
                ));
            }
            None => return Err(err(field, "one of the tag types is required")),
        })
    }

    pub(crate) fn tag(&self) -> &str {
        match self {
            Self::Literal { tag, .. }
            | Self::Environment { tag, .. }
            | Self::Header { tag, .. }
            | Self::Metadata { tag, .. } => tag,
        }
    }

    /// The value, or `None` when Envoy sets no tag (empty values are not set).
    pub(crate) fn value(&self, ctx: &TagContext<'_>) -> Option<String> {
        let v = match self {
            Self::Literal { value, .. } | Self::Environment { value, .. } => value.clone(),
            Self::Header { name, default, .. } => ctx
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map_or_else(|| default.clone(), str::to_string),
            Self::Metadata {
                request: false,
                filter,
                path,
                default,
                ..
            } => ctx
                .route
                .and_then(|r| metadata_value(r, filter, path))
                .unwrap_or_else(|| default.clone()),
            Self::Metadata {
                request: true,
                filter,
                path,
                default,
                ..
            } => ctx
                .metadata
                .and_then(|m| m.value(filter, path))
                .and_then(json_tag_value)
                .unwrap_or_else(|| default.clone()),
        };
        (!v.is_empty()).then_some(v)
    }
}

fn metadata_value(
    route: &envoy_types::pb::envoy::config::route::v3::Route,
    filter: &str,
    path: &[String],
) -> Option<String> {
    let md = route.metadata.as_ref()?.filter_metadata.get(filter)?;
    let (first, rest) = path.split_first()?;
    let mut v = md.fields.get(first)?;
    for k in rest {
        match &v.kind {
            Some(Kind::StructValue(s)) => v = s.fields.get(k)?,
            _ => return None,
        }
    }
    match v.kind.as_ref()? {
        Kind::StringValue(s) => Some(s.clone()),
        Kind::BoolValue(b) => Some(b.to_string()),
        Kind::NumberValue(n) => Some(six_digits(*n)),
        _ => None,
    }
}

fn json_tag_value(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        serde_json::Value::Number(n) => n.as_f64().map(six_digits),
        serde_json::Value::Array(_) | serde_json::Value::Object(_) => serde_json::to_string(v).ok(),
        serde_json::Value::Null => None,
    }
}

/// A number as Envoy's `absl::StrCat(double)` prints it: `%g` with six
/// significant digits (`1`, `1.5`, `1.23457e+06`).
fn six_digits(n: f64) -> String {
    if n == 0.0 || !n.is_finite() {
        return if n.is_nan() {
            "nan".into()
        } else if n.is_infinite() {
            if n > 0.0 { "inf".into() } else { "-inf".into() }
        } else {
            "0".into()
        };
    }
    let exp = n.abs().log10().floor() as i32;
    // Rounding to six digits may carry into the next power of ten.
    let sci = format!("{n:.5e}");
    let (mantissa, e) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let e: i32 = e.parse().unwrap_or(exp);
    if (-4..6).contains(&e) {
        let decimals = (5 - e).max(0) as usize;
        let fixed = format!("{n:.decimals$}");
        trim_zeros(&fixed).to_string()
    } else {
        let sign = if e < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", trim_zeros(mantissa), e.abs())
    }
}

fn trim_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

/// `Percent` (0–100) as Envoy converts HCM sampling: out of 10000, rounded.
fn percent_of_10000(p: Option<&Percent>) -> Fraction {
    let numerator = p.map_or(10000, |p| {
        (p.value * 100.0).round().clamp(0.0, 10000.0) as u64
    });
    Fraction {
        numerator,
        denominator: 10000,
    }
}

pub(crate) fn fractional(p: Option<&FractionalPercent>) -> Fraction {
    let Some(p) = p else {
        return Fraction::ALL;
    };
    let denominator = match fractional_percent::DenominatorType::try_from(p.denominator) {
        Ok(fractional_percent::DenominatorType::TenThousand) => 10_000,
        Ok(fractional_percent::DenominatorType::Million) => 1_000_000,
        _ => 100,
    };
    Fraction {
        numerator: u64::from(p.numerator),
        denominator,
    }
}

impl HcmTracing {
    pub fn compile(t: &Tracing) -> Result<Self, FieldError> {
        let sampling = Sampling {
            // client_sampling keeps Envoy's integer percent out of 100.
            client: Fraction {
                numerator: t
                    .client_sampling
                    .as_ref()
                    .map_or(100, |p| p.value.clamp(0.0, 100.0) as u64),
                denominator: 100,
            },
            random: percent_of_10000(t.random_sampling.as_ref()),
            overall: percent_of_10000(t.overall_sampling.as_ref()),
        };
        for (name, p) in [
            ("client_sampling", &t.client_sampling),
            ("random_sampling", &t.random_sampling),
            ("overall_sampling", &t.overall_sampling),
        ] {
            if let Some(p) = p
                && !(0.0..=100.0).contains(&p.value)
            {
                return Err(err(format!("{name}.value"), "must be between 0 and 100"));
            }
        }
        if !t.operation.is_empty() {
            return Err(err("operation", "span name formatters are not supported"));
        }
        if !t.upstream_operation.is_empty() {
            return Err(err(
                "upstream_operation",
                "span name formatters are not supported",
            ));
        }
        let custom_tags = t
            .custom_tags
            .iter()
            .enumerate()
            .map(|(i, c)| CustomTag::compile(c, &format!("custom_tags[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let provider = match &t.provider {
            None => None,
            Some(p) => Some(compile_provider(p)?),
        };
        Ok(Self {
            shared: Arc::new(Shared {
                sampling,
                custom_tags,
                max_path_tag_length: t
                    .max_path_tag_length
                    .map_or(DEFAULT_MAX_PATH_TAG_LENGTH, |v| v.value as usize),
                spawn_upstream_span: t.spawn_upstream_span.is_some_and(|b| b.value),
                provider,
            }),
            outbound: AtomicBool::new(false),
        })
    }

    /// From the listener: `traffic_direction` OUTBOUND (2) makes this an
    /// egress connection manager.
    pub fn set_traffic_direction(&self, direction: i32) {
        self.outbound.store(direction == 2, Ordering::Relaxed);
    }

    pub(crate) fn outbound(&self) -> bool {
        self.outbound.load(Ordering::Relaxed)
    }
}

fn compile_provider(
    p: &envoy_types::pb::envoy::config::trace::v3::tracing::Http,
) -> Result<Provider, FieldError> {
    let any = match &p.config_type {
        Some(ConfigType::TypedConfig(any)) => any,
        None => {
            return Err(err(
                "provider.typed_config",
                format!("is required for tracer '{}'", p.name),
            ));
        }
    };
    if any.type_url == ZIPKIN_TYPE_URL {
        return compile_zipkin(any);
    }
    if any.type_url != OTEL_TYPE_URL {
        return Err(err(
            "provider.typed_config",
            format!(
                "unsupported tracer '{}' ({}); only {OTEL_NAME} and {ZIPKIN_NAME} are supported",
                p.name, any.type_url
            ),
        ));
    }
    let cfg = OpenTelemetryConfig::decode(any.value.as_slice()).map_err(|e| {
        err(
            "provider.typed_config",
            format!("invalid OpenTelemetryConfig: {e}"),
        )
    })?;
    let at = |f: &str| format!("provider.typed_config.{f}");
    if cfg.http_service.is_some() {
        return Err(err(
            at("http_service"),
            "OTLP/HTTP export is not supported; use grpc_service",
        ));
    }
    if cfg.exporter.is_some() {
        return Err(err(at("exporter"), "custom exporters are not supported"));
    }
    if !cfg.resource_detectors.is_empty() {
        return Err(err(
            at("resource_detectors"),
            "resource detectors are not supported",
        ));
    }
    if cfg.sampler.is_some() {
        return Err(err(
            at("sampler"),
            "samplers are not supported; the connection manager's sampling applies",
        ));
    }
    let exporter = match &cfg.grpc_service {
        None => None,
        Some(g) => {
            let (cluster, authority) = match &g.target_specifier {
                Some(TargetSpecifier::EnvoyGrpc(e)) if !e.cluster_name.is_empty() => {
                    // Envoy's gRPC client: `authority`, else the cluster name.
                    let authority = if e.authority.is_empty() {
                        e.cluster_name.clone()
                    } else {
                        e.authority.clone()
                    };
                    (e.cluster_name.clone(), authority)
                }
                Some(TargetSpecifier::EnvoyGrpc(_)) => {
                    return Err(err(
                        at("grpc_service.envoy_grpc.cluster_name"),
                        "must not be empty",
                    ));
                }
                Some(TargetSpecifier::GoogleGrpc(_)) => {
                    return Err(err(
                        at("grpc_service.google_grpc"),
                        "only envoy_grpc is supported",
                    ));
                }
                None => return Err(err(at("grpc_service"), "envoy_grpc is required")),
            };
            let timeout = match &g.timeout {
                Some(d) if d.seconds > 0 || d.nanos > 0 => {
                    Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32)
                }
                _ => DEFAULT_EXPORT_TIMEOUT,
            };
            let service_name = if cfg.service_name.is_empty() {
                // Envoy's documented default.
                "unknown_service:envoy".to_string()
            } else {
                cfg.service_name.clone()
            };
            Some(Exporter::new(super::exporter::ExporterConfig {
                cluster,
                authority,
                timeout,
                queue: cfg
                    .max_cache_size
                    .map_or(DEFAULT_QUEUE, |v| (v.value as usize).max(1)),
                format: Format::Otlp {
                    service_name,
                    sdk_attributes: cfg
                        .set_telemetry_sdk_resource_attributes
                        .is_none_or(|b| b.value),
                },
            }))
        }
    };
    Ok(Provider {
        flavor: Flavor::OpenTelemetry,
        exporter,
    })
}

fn compile_zipkin(any: &envoy_types::pb::google::protobuf::Any) -> Result<Provider, FieldError> {
    use envoy_types::pb::envoy::config::trace::v3::ZipkinConfig;
    use envoy_types::pb::envoy::config::trace::v3::zipkin_config::{
        CollectorEndpointVersion, TraceContextOption,
    };
    let cfg = ZipkinConfig::decode(any.value.as_slice()).map_err(|e| {
        err(
            "provider.typed_config",
            format!("invalid ZipkinConfig: {e}"),
        )
    })?;
    let at = |f: &str| format!("provider.typed_config.{f}");
    if cfg.collector_service.is_some() {
        return Err(err(
            at("collector_service"),
            "not supported; use collector_cluster and collector_endpoint",
        ));
    }
    if cfg.collector_cluster.is_empty() {
        return Err(err(at("collector_cluster"), "must not be empty"));
    }
    if !cfg.collector_endpoint.starts_with('/') {
        return Err(err(
            at("collector_endpoint"),
            "must be a path starting with '/'",
        ));
    }
    if cfg.collector_endpoint_version != CollectorEndpointVersion::HttpJson as i32 {
        return Err(err(
            at("collector_endpoint_version"),
            "only HTTP_JSON is supported",
        ));
    }
    // Deprecated in favour of `spawn_upstream_span`, still honoured by Envoy.
    #[allow(deprecated)]
    let split = cfg.split_spans_for_request;
    if split {
        return Err(err(at("split_spans_for_request"), "is not supported"));
    }
    if cfg.trace_context_option != TraceContextOption::UseB3 as i32 {
        return Err(err(at("trace_context_option"), "only USE_B3 is supported"));
    }
    let hostname = if cfg.collector_hostname.is_empty() {
        cfg.collector_cluster.clone()
    } else {
        cfg.collector_hostname.clone()
    };
    Ok(Provider {
        flavor: Flavor::Zipkin {
            shared_context: cfg.shared_span_context.is_none_or(|b| b.value),
            wide: cfg.trace_id_128bit,
        },
        exporter: Some(Exporter::new(super::exporter::ExporterConfig {
            authority: hostname.clone(),
            cluster: cfg.collector_cluster,
            timeout: DEFAULT_EXPORT_TIMEOUT,
            queue: DEFAULT_QUEUE,
            format: Format::Zipkin {
                endpoint: cfg.collector_endpoint,
                hostname,
            },
        })),
    })
}

/// A route's `tracing`: its sampling replaces the connection manager's,
/// its custom tags come before the connection manager's.
pub(crate) fn route_sampling(t: &envoy_types::pb::envoy::config::route::v3::Tracing) -> Sampling {
    Sampling {
        client: fractional(t.client_sampling.as_ref()),
        random: fractional(t.random_sampling.as_ref()),
        overall: fractional(t.overall_sampling.as_ref()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::{GrpcService, grpc_service};
    use envoy_types::pb::envoy::config::trace::v3::tracing::Http;
    use envoy_types::pb::google::protobuf::Any;

    fn otel(cfg: OpenTelemetryConfig) -> Tracing {
        Tracing {
            provider: Some(Http {
                name: OTEL_NAME.into(),
                config_type: Some(ConfigType::TypedConfig(Any {
                    type_url: OTEL_TYPE_URL.into(),
                    value: cfg.encode_to_vec(),
                })),
            }),
            ..Default::default()
        }
    }

    fn grpc(cluster: &str) -> Option<GrpcService> {
        Some(GrpcService {
            target_specifier: Some(TargetSpecifier::EnvoyGrpc(grpc_service::EnvoyGrpc {
                cluster_name: cluster.into(),
                ..Default::default()
            })),
            ..Default::default()
        })
    }

    #[test]
    fn defaults_are_envoys() {
        let t = HcmTracing::compile(&Tracing::default()).unwrap();
        assert_eq!(t.shared.sampling, Sampling::default());
        assert_eq!(t.shared.max_path_tag_length, 256);
        assert!(!t.shared.spawn_upstream_span);
        assert!(t.shared.provider.is_none());
    }

    #[test]
    fn sampling_percentages() {
        let t = HcmTracing::compile(&Tracing {
            random_sampling: Some(Percent { value: 1.0 }),
            overall_sampling: Some(Percent { value: 12.345 }),
            client_sampling: Some(Percent { value: 50.5 }),
            ..Default::default()
        })
        .unwrap();
        let s = t.shared.sampling;
        assert_eq!((s.random.numerator, s.random.denominator), (100, 10000));
        assert_eq!(s.overall.numerator, 1235);
        assert_eq!((s.client.numerator, s.client.denominator), (50, 100));
        assert!(
            HcmTracing::compile(&Tracing {
                random_sampling: Some(Percent { value: 101.0 }),
                ..Default::default()
            })
            .is_err()
        );
    }

    #[test]
    fn otel_provider() {
        let t = HcmTracing::compile(&otel(OpenTelemetryConfig {
            grpc_service: grpc("otlp"),
            service_name: "svc".into(),
            ..Default::default()
        }))
        .unwrap();
        let p = t.shared.provider.as_ref().unwrap();
        assert!(p.exporter.is_some());
    }

    #[test]
    fn unsupported_provider_fields_are_named() {
        let e = HcmTracing::compile(&otel(OpenTelemetryConfig {
            grpc_service: grpc("otlp"),
            sampler: Some(Default::default()),
            ..Default::default()
        }))
        .unwrap_err();
        assert_eq!(e.0, "provider.typed_config.sampler");
        let e = HcmTracing::compile(&otel(OpenTelemetryConfig {
            grpc_service: grpc(""),
            ..Default::default()
        }))
        .unwrap_err();
        assert_eq!(
            e.0,
            "provider.typed_config.grpc_service.envoy_grpc.cluster_name"
        );
        let mut zipkin = otel(OpenTelemetryConfig::default());
        if let Some(Http {
            config_type: Some(ConfigType::TypedConfig(any)),
            ..
        }) = zipkin.provider.as_mut()
        {
            any.type_url = "type.googleapis.com/envoy.config.trace.v3.DatadogConfig".into();
        }
        let e = HcmTracing::compile(&zipkin).unwrap_err();
        assert_eq!(e.0, "provider.typed_config");
        assert!(e.1.contains("DatadogConfig"), "{}", e.1);
    }

    #[test]
    fn custom_tags() {
        let mk = |t| CustomTagProto {
            tag: "k".into(),
            r#type: Some(t),
        };
        let lit = CustomTag::compile(
            &mk(custom_tag::Type::Literal(custom_tag::Literal {
                value: "v".into(),
            })),
            "c",
        )
        .unwrap();
        let empty = HeaderMap::new();
        let ctx = |h| TagContext {
            headers: h,
            route: None,
            metadata: None,
        };
        assert_eq!(lit.value(&ctx(&empty)).as_deref(), Some("v"));
        let hdr = CustomTag::compile(
            &mk(custom_tag::Type::RequestHeader(custom_tag::Header {
                name: "X-Tag".into(),
                default_value: String::new(),
            })),
            "c",
        )
        .unwrap();
        assert_eq!(hdr.value(&ctx(&empty)), None);
        let mut h = HeaderMap::new();
        h.insert("x-tag", http::HeaderValue::from_static("t"));
        assert_eq!(hdr.value(&ctx(&h)).as_deref(), Some("t"));
        let env = CustomTag::compile(
            &mk(custom_tag::Type::Environment(custom_tag::Environment {
                name: "TRELLIS_SURELY_UNSET_VARIABLE".into(),
                default_value: "d".into(),
            })),
            "c",
        )
        .unwrap();
        assert_eq!(env.value(&ctx(&h)).as_deref(), Some("d"));
        let e =
            CustomTag::compile(&mk(custom_tag::Type::Value("%REQ(x)%".into())), "c").unwrap_err();
        assert_eq!(e.0, "c.value");
    }

    #[test]
    fn request_metadata_tags() {
        use envoy_types::pb::envoy::r#type::metadata::v3::{
            MetadataKey, MetadataKind, metadata_key, metadata_kind,
        };
        let proto = CustomTagProto {
            tag: "dry".into(),
            r#type: Some(custom_tag::Type::Metadata(custom_tag::Metadata {
                kind: Some(MetadataKind {
                    kind: Some(metadata_kind::Kind::Request(Default::default())),
                }),
                metadata_key: Some(MetadataKey {
                    key: "envoy.filters.http.rbac".into(),
                    path: vec![metadata_key::PathSegment {
                        segment: Some(Segment::Key("shadow_effective_policy_id".into())),
                    }],
                }),
                default_value: "none".into(),
            })),
        };
        let tag = CustomTag::compile(&proto, "c").unwrap();
        let mut md = crate::rbac::DynamicMetadata::default();
        let h = HeaderMap::new();
        let ctx = |m| TagContext {
            headers: &h,
            route: None,
            metadata: m,
        };
        assert_eq!(tag.value(&ctx(None)).as_deref(), Some("none"));
        md.merge(
            "envoy.filters.http.rbac",
            [(
                "shadow_effective_policy_id".to_string(),
                serde_json::Value::String("p1".into()),
            )]
            .into_iter()
            .collect(),
        );
        assert_eq!(tag.value(&ctx(Some(&md))).as_deref(), Some("p1"));
    }

    #[test]
    fn numbers_print_like_absl() {
        for (n, want) in [
            (1.0, "1"),
            (1.5, "1.5"),
            (-2.0, "-2"),
            (123456.0, "123456"),
            (1234567.0, "1.23457e+06"),
            (0.0001, "0.0001"),
            (0.00001234, "1.234e-05"),
            (999999.5, "1e+06"),
            (0.1, "0.1"),
        ] {
            assert_eq!(six_digits(n), want, "{n}");
        }
    }
}
