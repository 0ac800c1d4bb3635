//! MeshConfig: mesh-wide settings (Istio's `mesh` config map), with
//! Istio's defaults. External authorizers among `extensionProviders` are
//! typed ([`ExtensionProvider`]); other provider kinds and proxy defaults
//! are kept as JSON values; fields not listed here are kept in
//! [`MeshConfig::extra`] rather than rejected.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::defaults;
use crate::duration::IstioDuration;
use crate::load::LoadError;
use crate::networking::destination_rule::LocalityLbSetting;
use crate::networking::virtual_service::HttpRetry;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MeshOutboundMode {
    RegistryOnly,
    AllowAny,
    AllowAnyDynamicDns,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MeshOutboundTrafficPolicy {
    pub mode: MeshOutboundMode,
}

impl Default for MeshOutboundTrafficPolicy {
    fn default() -> Self {
        Self {
            mode: MeshOutboundMode::AllowAny,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MeshConfig {
    pub root_namespace: String,
    pub trust_domain: String,
    pub trust_domain_aliases: Vec<String>,
    pub default_http_retry_policy: Option<HttpRetry>,
    pub outbound_traffic_policy: MeshOutboundTrafficPolicy,
    pub extension_providers: Vec<ExtensionProvider>,
    pub default_providers: Option<DefaultProviders>,
    pub enable_auto_mtls: bool,
    /// ProxyConfig defaults (loosely typed for now).
    pub default_config: Option<serde_json::Value>,
    pub access_log_file: String,
    pub access_log_format: String,
    pub access_log_encoding: Option<String>,
    pub enable_tracing: bool,
    pub connect_timeout: Option<IstioDuration>,
    pub protocol_detection_timeout: Option<IstioDuration>,
    pub locality_lb_setting: Option<LocalityLbSetting>,
    pub default_service_export_to: Vec<String>,
    pub default_virtual_service_export_to: Vec<String>,
    pub default_destination_rule_export_to: Vec<String>,
    pub ingress_class: Option<String>,
    pub ingress_service: Option<String>,
    pub ingress_controller_mode: Option<String>,
    pub enable_prometheus_merge: Option<bool>,
    /// `meshMTLS`: TLS settings of mesh mTLS (sidecar inbound).
    #[serde(rename = "meshMTLS")]
    pub mesh_mtls: Option<MeshTlsConfig>,
    /// Fields Trellis does not interpret yet.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            root_namespace: defaults::ROOT_NAMESPACE.to_string(),
            trust_domain: defaults::TRUST_DOMAIN.to_string(),
            trust_domain_aliases: Vec::new(),
            default_http_retry_policy: None,
            outbound_traffic_policy: MeshOutboundTrafficPolicy::default(),
            extension_providers: Vec::new(),
            default_providers: None,
            enable_auto_mtls: defaults::ENABLE_AUTO_MTLS,
            default_config: None,
            access_log_file: String::new(),
            access_log_format: String::new(),
            access_log_encoding: None,
            enable_tracing: true,
            connect_timeout: None,
            protocol_detection_timeout: None,
            locality_lb_setting: None,
            default_service_export_to: Vec::new(),
            default_virtual_service_export_to: Vec::new(),
            default_destination_rule_export_to: Vec::new(),
            ingress_class: None,
            ingress_service: None,
            ingress_controller_mode: None,
            enable_prometheus_merge: None,
            mesh_mtls: None,
            extra: BTreeMap::new(),
        }
    }
}

impl MeshConfig {
    /// Parses MeshConfig YAML (the `mesh` key of Istio's config map).
    /// Empty text gives the defaults.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self, Box<LoadError>> {
        if crate::load::is_blank(text) {
            return Ok(Self::default());
        }
        let value: serde_json::Value = serde_saphyr::from_str(text)
            .map_err(|e| Box::new(LoadError::new(origin, 1, format!("invalid YAML: {e}"))))?;
        if value.is_null() {
            return Ok(Self::default());
        }
        serde_path_to_error::deserialize(&value).map_err(|e| {
            Box::new(
                LoadError::new(origin, 1, e.inner().to_string()).with_path(e.path().to_string()),
            )
        })
    }

    /// The effective retry attempts for routes without a policy.
    pub fn default_retry_attempts(&self) -> i32 {
        self.default_http_retry_policy
            .as_ref()
            .and_then(|r| r.attempts)
            .unwrap_or(defaults::RETRY_ATTEMPTS as i32)
    }

    /// The extension provider named `name`.
    pub fn extension_provider(&self, name: &str) -> Option<&ExtensionProvider> {
        self.extension_providers.iter().find(|p| p.name == name)
    }

    /// Problems Istio's validation reports in the parts of MeshConfig that
    /// are typed here: `(field path, message)`.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut names = std::collections::BTreeSet::new();
        for (i, p) in self.extension_providers.iter().enumerate() {
            let path = format!("extensionProviders[{i}]");
            if p.name.is_empty() {
                out.push((
                    format!("{path}.name"),
                    "extension provider name is required".into(),
                ));
            } else if !names.insert(p.name.as_str()) {
                out.push((
                    format!("{path}.name"),
                    format!(
                        "extension provider name {:?} is used more than once",
                        p.name
                    ),
                ));
            }
            let kinds = usize::from(p.envoy_ext_authz_http.is_some())
                + usize::from(p.envoy_ext_authz_grpc.is_some())
                + usize::from(p.opentelemetry.is_some())
                + usize::from(p.zipkin.is_some())
                + usize::from(p.envoy_file_access_log.is_some())
                + usize::from(p.prometheus.is_some())
                + p.other.len();
            if let Some(o) = &p.opentelemetry {
                collector(
                    &mut out,
                    &format!("{path}.opentelemetry"),
                    &o.service,
                    o.port,
                );
            }
            if let Some(z) = &p.zipkin {
                collector(&mut out, &format!("{path}.zipkin"), &z.service, z.port);
            }
            if let Some(f) = &p.envoy_file_access_log
                && let Some(fmt) = &f.log_format
                && fmt.text.is_some() == fmt.labels.is_some()
            {
                out.push((
                    format!("{path}.envoyFileAccessLog.logFormat"),
                    "exactly one of text or labels must be set".into(),
                ));
            }
            if kinds != 1 {
                out.push((
                    path.clone(),
                    "an extension provider needs exactly one provider kind".into(),
                ));
            }
            if let Some(h) = &p.envoy_ext_authz_http {
                let hp = format!("{path}.envoyExtAuthzHttp");
                ext_authz_common(&mut out, &hp, &h.service, h.port, &h.status_on_error);
                if !h.path_prefix.is_empty() && !h.path_prefix.starts_with('/') {
                    out.push((
                        format!("{hp}.pathPrefix"),
                        format!("pathPrefix {:?} must begin with `/`", h.path_prefix),
                    ));
                }
                for (field, list) in [
                    (
                        "includeRequestHeadersInCheck",
                        &h.include_request_headers_in_check,
                    ),
                    ("includeHeadersInCheck", &h.include_headers_in_check),
                    ("headersToUpstreamOnAllow", &h.headers_to_upstream_on_allow),
                    (
                        "headersToDownstreamOnDeny",
                        &h.headers_to_downstream_on_deny,
                    ),
                    (
                        "headersToDownstreamOnAllow",
                        &h.headers_to_downstream_on_allow,
                    ),
                ] {
                    for (j, v) in list.iter().enumerate() {
                        if v == "*" {
                            out.push((
                                format!("{hp}.{field}[{j}]"),
                                "a lone \"*\" is not supported; use a prefix or suffix match"
                                    .into(),
                            ));
                        }
                    }
                }
            }
            if let Some(g) = &p.envoy_ext_authz_grpc {
                let gp = format!("{path}.envoyExtAuthzGrpc");
                ext_authz_common(&mut out, &gp, &g.service, g.port, &g.status_on_error);
            }
        }
        out
    }

    /// The effective connect timeout.
    pub fn connect_timeout(&self) -> std::time::Duration {
        self.connect_timeout
            .map_or(defaults::CONNECT_TIMEOUT, IstioDuration::get)
    }
}

/// A telemetry collector address: a host name and a port.
fn collector(out: &mut Vec<(String, String)>, path: &str, service: &str, port: u32) {
    if service.is_empty() || service.contains(char::is_whitespace) {
        out.push((
            format!("{path}.service"),
            format!("service {service:?} is not a host name"),
        ));
    }
    if !(1..=65535).contains(&port) {
        out.push((
            format!("{path}.port"),
            format!("port {port} is outside 1..65535"),
        ));
    }
}

fn ext_authz_common(
    out: &mut Vec<(String, String)>,
    path: &str,
    service: &str,
    port: u32,
    status_on_error: &str,
) {
    if service.is_empty() {
        out.push((format!("{path}.service"), "service is required".into()));
    } else if service.contains(char::is_whitespace) {
        out.push((
            format!("{path}.service"),
            format!("service {service:?} is not a host name"),
        ));
    }
    if !(1..=65535).contains(&port) {
        out.push((
            format!("{path}.port"),
            format!("port {port} is outside 1..65535"),
        ));
    }
    if !status_on_error.is_empty()
        && !status_on_error
            .parse::<u16>()
            .is_ok_and(|c| (100..=599).contains(&c))
    {
        out.push((
            format!("{path}.statusOnError"),
            format!("statusOnError {status_on_error:?} is not an HTTP status code"),
        ));
    }
}

/// One MeshConfig `extensionProviders` entry. The external authorizers
/// (`envoyExtAuthzHttp`, `envoyExtAuthzGrpc`) are typed; other kinds
/// (tracing, access logging, metrics) are kept as written in [`Self::other`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ExtensionProvider {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub envoy_ext_authz_http: Option<EnvoyExtAuthzHttp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub envoy_ext_authz_grpc: Option<EnvoyExtAuthzGrpc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opentelemetry: Option<OpenTelemetryProvider>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zipkin: Option<ZipkinProvider>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub envoy_file_access_log: Option<FileAccessLogProvider>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<serde_json::Value>,
    /// Other provider kinds, by their key (`opentelemetry`, `zipkin`, ...).
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// `opentelemetry`: spans exported over OTLP/gRPC to `service:port`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OpenTelemetryProvider {
    pub service: String,
    pub port: u32,
    pub max_tag_length: u32,
    /// Settings Trellis does not interpret (resource detectors, samplers,
    /// HTTP export); kept so the provider still loads.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// `zipkin`: spans sent to a Zipkin collector (B3 propagation).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ZipkinProvider {
    pub service: String,
    pub port: u32,
    pub max_tag_length: u32,
    pub enable_64bit_trace_id: bool,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// `envoyFileAccessLog`: access logs written to a file (`/dev/stdout` by
/// convention).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct FileAccessLogProvider {
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<FileAccessLogFormat>,
}

/// One of `text` (an Envoy format string) or `labels` (JSON keys to
/// format strings).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct FileAccessLogFormat {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
}

/// `defaultProviders`: the providers used when a Telemetry section names
/// none (and without any Telemetry).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DefaultProviders {
    pub tracing: Vec<String>,
    pub metrics: Vec<String>,
    pub access_logging: Vec<String>,
}

/// `envoyExtAuthzHttp`: an HTTP external authorization service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct EnvoyExtAuthzHttp {
    /// `host` or `namespace/host` of the authorizer.
    pub service: String,
    pub port: u32,
    /// Istio: 600s when unset.
    pub timeout: Option<IstioDuration>,
    pub path_prefix: String,
    pub fail_open: bool,
    pub clear_route_cache: bool,
    pub status_on_error: String,
    /// Deprecated: `includeRequestHeadersInCheck`.
    pub include_headers_in_check: Vec<String>,
    pub include_request_headers_in_check: Vec<String>,
    pub include_additional_headers_in_check: BTreeMap<String, String>,
    pub include_request_body_in_check: Option<ExtAuthzRequestBody>,
    pub headers_to_upstream_on_allow: Vec<String>,
    pub headers_to_downstream_on_deny: Vec<String>,
    pub headers_to_downstream_on_allow: Vec<String>,
}

/// `envoyExtAuthzGrpc`: a gRPC (`envoy.service.auth.v3.Authorization`)
/// external authorization service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct EnvoyExtAuthzGrpc {
    pub service: String,
    pub port: u32,
    pub timeout: Option<IstioDuration>,
    pub fail_open: bool,
    pub clear_route_cache: bool,
    pub status_on_error: String,
    pub include_request_body_in_check: Option<ExtAuthzRequestBody>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ExtAuthzRequestBody {
    pub max_request_bytes: u32,
    pub allow_partial_message: bool,
    pub pack_as_bytes: bool,
}

/// `meshMTLS` / `tlsDefaults`: TLS versions and ciphers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MeshTlsConfig {
    /// `TLS_AUTO`, `TLSV1_2` or `TLSV1_3`.
    pub min_protocol_version: Option<String>,
    pub cipher_suites: Vec<String>,
    pub ecdh_curves: Vec<String>,
}
