//! `telemetry.istio.io` Telemetry: which metrics, traces and access logs a
//! workload's proxy produces, and through which MeshConfig
//! `extensionProviders`.
//!
//! Scopes follow Istio: a Telemetry in the root namespace without a
//! selector applies mesh-wide, one in another namespace without a selector
//! to that namespace, one with a selector to the matching workloads; the
//! most specific one that sets a section wins for that section
//! ([`effective`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::security::{PolicyTargetReference, WorkloadSelector};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Telemetry {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetReference>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetReference>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tracing: Vec<Tracing>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<Metrics>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub access_logging: Vec<AccessLogging>,
}

impl Telemetry {
    /// True when the resource selects no particular workloads.
    pub fn is_namespace_wide(&self) -> bool {
        self.selector
            .as_ref()
            .is_none_or(|s| s.match_labels.is_empty())
            && self.target_ref.is_none()
            && self.target_refs.is_empty()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ProviderRef {
    pub name: String,
}

/// Which side of the traffic a section applies to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WorkloadMode {
    /// Outbound: the proxy is the client.
    Client,
    /// Inbound: the proxy is the server.
    Server,
    #[default]
    ClientAndServer,
}

impl WorkloadMode {
    /// Whether this mode covers traffic in `direction` (`true` = outbound).
    pub fn covers(self, outbound: bool) -> bool {
        match self {
            Self::ClientAndServer => true,
            Self::Client => outbound,
            Self::Server => !outbound,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TracingSelector {
    pub mode: WorkloadMode,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Tracing {
    #[serde(rename = "match", skip_serializing_if = "Option::is_none")]
    pub match_: Option<TracingSelector>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<ProviderRef>,
    /// 0–100; unset: MeshConfig's default (1%).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub random_sampling_percentage: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disable_span_reporting: Option<bool>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub custom_tags: BTreeMap<String, CustomTag>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub use_request_id_for_trace_sampling: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enable_istio_tags: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct CustomTag {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub literal: Option<LiteralTag>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<NamedTag>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header: Option<NamedTag>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LiteralTag {
    pub value: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct NamedTag {
    pub name: String,
    pub default_value: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Metrics {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<ProviderRef>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<MetricsOverride>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reporting_interval: Option<crate::IstioDuration>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct MetricsOverride {
    #[serde(rename = "match", skip_serializing_if = "Option::is_none")]
    pub match_: Option<MetricSelector>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tag_overrides: BTreeMap<String, TagOverride>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct MetricSelector {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric: Option<IstioMetric>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub custom_metric: Option<String>,
    pub mode: WorkloadMode,
}

/// Istio's standard metrics, as Telemetry names them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum IstioMetric {
    #[default]
    AllMetrics,
    RequestCount,
    RequestDuration,
    RequestSize,
    ResponseSize,
    TcpOpenedConnections,
    TcpClosedConnections,
    TcpSentBytes,
    TcpReceivedBytes,
    GrpcRequestMessages,
    GrpcResponseMessages,
}

impl IstioMetric {
    /// The Prometheus family name (without `istio_`), `None` for all.
    pub fn family(self) -> Option<&'static str> {
        Some(match self {
            Self::AllMetrics => return None,
            Self::RequestCount => "requests_total",
            Self::RequestDuration => "request_duration_milliseconds",
            Self::RequestSize => "request_bytes",
            Self::ResponseSize => "response_bytes",
            Self::TcpOpenedConnections => "tcp_connections_opened_total",
            Self::TcpClosedConnections => "tcp_connections_closed_total",
            Self::TcpSentBytes => "tcp_sent_bytes_total",
            Self::TcpReceivedBytes => "tcp_received_bytes_total",
            Self::GrpcRequestMessages => "request_messages_total",
            Self::GrpcResponseMessages => "response_messages_total",
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TagOverride {
    pub operation: TagOperation,
    /// A CEL expression in Istio; Trellis takes a quoted string literal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TagOperation {
    #[default]
    Upsert,
    Remove,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct AccessLogging {
    #[serde(rename = "match", skip_serializing_if = "Option::is_none")]
    pub match_: Option<TracingSelector>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<ProviderRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter: Option<AccessLogFilter>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct AccessLogFilter {
    pub expression: String,
}

/// A `tagOverrides` value Trellis can apply: a CEL string literal
/// (`"'canary'"` or `'"canary"'`), returned unquoted.
pub fn literal_tag_value(expr: &str) -> Option<&str> {
    let e = expr.trim();
    let quoted = |q: char| e.len() >= 2 && e.starts_with(q) && e.ends_with(q);
    if quoted('\'') || quoted('"') {
        let inner = &e[1..e.len() - 1];
        (!inner.contains(['\'', '"', '\\'])).then_some(inner)
    } else {
        None
    }
}

/// Providers that exist without being declared (Istio's built-in
/// `prometheus`, and Envoy's stdout logger Istio names `envoy`).
pub const BUILTIN_PROVIDERS: [&str; 2] = ["prometheus", "envoy"];

/// Provider references that MeshConfig does not declare, or that name a
/// provider of the wrong kind for their section: `(field path, message)`.
pub fn check_providers(t: &Telemetry, mesh: &crate::MeshConfig) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut check = |path: String,
                     name: &str,
                     ok: fn(&crate::mesh_config::ExtensionProvider) -> bool,
                     kind: &str| {
        if BUILTIN_PROVIDERS.contains(&name) {
            return;
        }
        match mesh.extension_provider(name) {
            None => out.push((
                path,
                format!("provider {name:?} is not declared in MeshConfig extensionProviders"),
            )),
            Some(p) if !ok(p) => {
                out.push((path, format!("provider {name:?} is not a {kind} provider")))
            }
            Some(_) => {}
        }
    };
    for (i, tr) in t.tracing.iter().enumerate() {
        for (j, p) in tr.providers.iter().enumerate() {
            check(
                format!("spec.tracing[{i}].providers[{j}].name"),
                &p.name,
                |p| {
                    p.opentelemetry.is_some()
                        || p.zipkin.is_some()
                        || p.other.keys().any(|k| TRACERS.contains(&k.as_str()))
                },
                "tracing",
            );
        }
    }
    for (i, m) in t.metrics.iter().enumerate() {
        for (j, p) in m.providers.iter().enumerate() {
            check(
                format!("spec.metrics[{i}].providers[{j}].name"),
                &p.name,
                |p| p.prometheus.is_some() || p.other.contains_key("stackdriver"),
                "metrics",
            );
        }
    }
    for (i, a) in t.access_logging.iter().enumerate() {
        for (j, p) in a.providers.iter().enumerate() {
            check(
                format!("spec.accessLogging[{i}].providers[{j}].name"),
                &p.name,
                |p| {
                    p.envoy_file_access_log.is_some()
                        || p.other.keys().any(|k| LOGGERS.contains(&k.as_str()))
                },
                "access logging",
            );
        }
    }
    out
}

/// Other tracing and logging provider kinds Istio knows (accepted, not all
/// translated).
const TRACERS: [&str; 5] = ["datadog", "lightstep", "skywalking", "stackdriver", "sds"];
const LOGGERS: [&str; 4] = ["envoyOtelAls", "envoyHttpAls", "envoyTcpAls", "stackdriver"];

/// What one section resolves to for a proxy: the most specific Telemetry
/// that sets it (workload over namespace over root namespace).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Effective<'a> {
    pub tracing: &'a [Tracing],
    pub metrics: &'a [Metrics],
    pub access_logging: &'a [AccessLogging],
}

/// Resolves the sections for a proxy from the Telemetries that apply to it,
/// ordered from least to most specific (root namespace, namespace,
/// workload); a later non-empty section replaces an earlier one, as Istio
/// merges them.
pub fn effective<'a>(ordered: impl IntoIterator<Item = &'a Telemetry>) -> Effective<'a> {
    let mut e = Effective::default();
    for t in ordered {
        if !t.tracing.is_empty() {
            e.tracing = &t.tracing;
        }
        if !t.metrics.is_empty() {
            e.metrics = &t.metrics;
        }
        if !t.access_logging.is_empty() {
            e.access_logging = &t.access_logging;
        }
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_values() {
        assert_eq!(literal_tag_value("'canary'"), Some("canary"));
        assert_eq!(literal_tag_value("\"x\""), Some("x"));
        assert_eq!(literal_tag_value("request.host"), None);
        assert_eq!(literal_tag_value("'a' + 'b'"), None);
    }

    #[test]
    fn the_most_specific_section_wins() {
        let mesh = Telemetry {
            tracing: vec![Tracing {
                random_sampling_percentage: Some(1.0),
                ..Default::default()
            }],
            metrics: vec![Metrics::default()],
            ..Default::default()
        };
        let workload = Telemetry {
            tracing: vec![Tracing {
                random_sampling_percentage: Some(100.0),
                ..Default::default()
            }],
            ..Default::default()
        };
        let e = effective([&mesh, &workload]);
        assert_eq!(e.tracing[0].random_sampling_percentage, Some(100.0));
        assert_eq!(e.metrics.len(), 1);
    }
}
