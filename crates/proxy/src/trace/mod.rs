//! Distributed tracing as Envoy's HTTP connection manager does it with the
//! OpenTelemetry tracer (`envoy.tracers.opentelemetry`):
//!
//! - `sampler`: the trace decision (`random_sampling`, `client_sampling`,
//!   `overall_sampling`, `x-client-trace-id`, `x-envoy-force-trace`) and its
//!   record in the `x-request-id` UUID;
//! - `context`: W3C `traceparent` / `tracestate` read and written;
//! - `config`: `HttpConnectionManager.tracing` compiled;
//! - `span`: one request's spans, decorator handling, Envoy's tags;
//! - `exporter`: batched OTLP/gRPC export through a cluster, with a bounded
//!   queue that drops.
//!
//! With `envoy.tracers.zipkin` the context travels in B3 headers (`b3`) and
//! spans go to the collector as Zipkin v2 JSON (`zipkin`). B3 headers are
//! not touched by the OpenTelemetry tracer: Envoy forwards them as they came.
//!
//! When a connection manager has no `tracing` block nothing here runs; a
//! request that is not sampled still gets a span id and its context
//! propagated (flags `00`), as in Envoy, but no span is exported.

mod b3;
mod config;
mod context;
mod exporter;
mod sampler;
mod span;
mod zipkin;

use std::sync::OnceLock;
use std::time::Duration;

use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use envoy_types::pb::google::protobuf::{Struct, value::Kind};

pub use config::HcmTracing;
pub use context::{SpanContext, format_traceparent, parse_traceparent};
pub use exporter::{TraceStats, stat_values, stats};
pub use sampler::Reason;
pub use span::RequestTrace;
pub(crate) use span::{Begin, Finish, begin, finish_on_completion};

/// Process-wide facts spans carry, from the bootstrap.
#[derive(Debug, Clone)]
pub struct LocalInfo {
    /// `node.id` (the `node_id` tag).
    pub node_id: String,
    /// `node.locality.zone` (the `zone` tag).
    pub zone: String,
    /// `node.cluster` (Zipkin's local service name).
    pub cluster: String,
    /// `tracing.opentelemetry.flush_interval_ms` (runtime; default 5000).
    pub flush_interval: Duration,
    /// `tracing.opentelemetry.min_flush_spans` (runtime; default 5).
    pub min_flush_spans: usize,
    /// `tracing.zipkin.flush_interval_ms` (runtime; default 5000).
    pub zipkin_flush_interval: Duration,
    /// `tracing.zipkin.min_flush_spans` (runtime; default 5).
    pub zipkin_min_flush_spans: usize,
}

impl Default for LocalInfo {
    fn default() -> Self {
        Self {
            node_id: String::new(),
            zone: String::new(),
            cluster: String::new(),
            flush_interval: Duration::from_millis(5000),
            min_flush_spans: 5,
            zipkin_flush_interval: Duration::from_millis(5000),
            zipkin_min_flush_spans: 5,
        }
    }
}

static LOCAL: OnceLock<LocalInfo> = OnceLock::new();

/// Records the node and the runtime's tracing keys; the first call wins.
pub fn set_local_info(bootstrap: &Bootstrap) {
    let _ = LOCAL.set(local_info_from(bootstrap));
}

pub(crate) fn local_info() -> &'static LocalInfo {
    LOCAL.get_or_init(LocalInfo::default)
}

fn local_info_from(b: &Bootstrap) -> LocalInfo {
    let mut info = LocalInfo::default();
    if let Some(node) = &b.node {
        info.node_id = node.id.clone();
        info.cluster = node.cluster.clone();
        info.zone = node
            .locality
            .as_ref()
            .map(|l| l.zone.clone())
            .unwrap_or_default();
    }
    // Static runtime layers, later layers overriding earlier ones.
    let layers = b
        .layered_runtime
        .as_ref()
        .map(|r| r.layers.as_slice())
        .unwrap_or_default();
    for layer in layers {
        use envoy_types::pb::envoy::config::bootstrap::v3::runtime_layer::LayerSpecifier;
        if let Some(LayerSpecifier::StaticLayer(s)) = &layer.layer_specifier {
            if let Some(ms) = runtime_number(s, "tracing.opentelemetry.flush_interval_ms")
                && ms >= 1.0
            {
                info.flush_interval = Duration::from_millis(ms as u64);
            }
            if let Some(n) = runtime_number(s, "tracing.opentelemetry.min_flush_spans")
                && n >= 1.0
            {
                info.min_flush_spans = n as usize;
            }
            if let Some(ms) = runtime_number(s, "tracing.zipkin.flush_interval_ms")
                && ms >= 1.0
            {
                info.zipkin_flush_interval = Duration::from_millis(ms as u64);
            }
            if let Some(n) = runtime_number(s, "tracing.zipkin.min_flush_spans")
                && n >= 1.0
            {
                info.zipkin_min_flush_spans = n as usize;
            }
        }
    }
    info
}

/// A runtime key in a static layer, written flat (`"a.b.c": 1`) or nested
/// (`a: {b: {c: 1}}`); numbers may be given as strings.
fn runtime_number(s: &Struct, key: &str) -> Option<f64> {
    let value = s.fields.get(key).or_else(|| {
        let mut parts = key.split('.');
        let mut v = s.fields.get(parts.next()?)?;
        for p in parts {
            match &v.kind {
                Some(Kind::StructValue(inner)) => v = inner.fields.get(p)?,
                _ => return None,
            }
        }
        Some(v)
    })?;
    match value.kind.as_ref()? {
        Kind::NumberValue(n) => Some(*n),
        Kind::StringValue(t) => t.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::bootstrap::v3::{
        LayeredRuntime, RuntimeLayer, runtime_layer,
    };
    use envoy_types::pb::envoy::config::core::v3::{Locality, Node};
    use envoy_types::pb::google::protobuf::Value;

    fn num(n: f64) -> Value {
        Value {
            kind: Some(Kind::NumberValue(n)),
        }
    }

    #[test]
    fn local_info_from_the_bootstrap() {
        let nested = Struct {
            fields: [(
                "tracing".to_string(),
                Value {
                    kind: Some(Kind::StructValue(Struct {
                        fields: [(
                            "opentelemetry".to_string(),
                            Value {
                                kind: Some(Kind::StructValue(Struct {
                                    fields: [("min_flush_spans".to_string(), num(1.0))].into(),
                                })),
                            },
                        )]
                        .into(),
                    })),
                },
            )]
            .into(),
        };
        let flat = Struct {
            fields: [(
                "tracing.opentelemetry.flush_interval_ms".to_string(),
                num(200.0),
            )]
            .into(),
        };
        let b = Bootstrap {
            node: Some(Node {
                id: "n1".into(),
                locality: Some(Locality {
                    zone: "z".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            layered_runtime: Some(LayeredRuntime {
                layers: [nested, flat]
                    .into_iter()
                    .map(|s| RuntimeLayer {
                        name: "l".into(),
                        layer_specifier: Some(runtime_layer::LayerSpecifier::StaticLayer(s)),
                    })
                    .collect(),
            }),
            ..Default::default()
        };
        let info = local_info_from(&b);
        assert_eq!(info.node_id, "n1");
        assert_eq!(info.zone, "z");
        assert_eq!(info.flush_interval, Duration::from_millis(200));
        assert_eq!(info.min_flush_spans, 1);
        let d = local_info_from(&Bootstrap::default());
        assert_eq!(d.flush_interval, Duration::from_secs(5));
        assert_eq!(d.min_flush_spans, 5);
    }
}
