//! Compiling `ExtAuthz` and `ExtAuthzPerRoute`. Fields that would change
//! behaviour and are not implemented are refused with the field's name, so
//! the configuration is NACKed instead of silently weakened.

use std::collections::HashMap;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{
    ApiVersion, GrpcService as GrpcServiceProto, grpc_service, http_uri,
};
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::{
    BufferSettings as BufferProto, ExtAuthz as ExtAuthzProto, ExtAuthzPerRoute, HttpService,
    check_settings, ext_authz, ext_authz_per_route,
};
use envoy_types::pb::envoy::r#type::matcher::v3::ListStringMatcher;
use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
use envoy_types::pb::google::protobuf::Any;
use http::{HeaderName, HeaderValue, StatusCode};
use prost::Message;

use super::grpc_client::GrpcClient;
use super::http_client::{ClientMatcher, HttpClient};
use crate::matcher::StringMatch;
use crate::rbac::DynamicMetadata;
use crate::rbac::metadata::MetadataMatcher;

pub const PER_ROUTE_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute";

type FieldError = (String, String);

fn err(field: &str, msg: impl Into<String>) -> FieldError {
    (field.to_string(), msg.into())
}

/// Header names matched by any of a list of string matchers.
#[derive(Debug, Clone, Default)]
pub(super) struct KeyMatcher(Vec<StringMatch>);

impl KeyMatcher {
    pub(super) fn compile(
        list: Option<&ListStringMatcher>,
        field: &str,
    ) -> Result<Self, FieldError> {
        let mut out = Vec::new();
        for (i, m) in list
            .map(|l| l.patterns.as_slice())
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            out.push(
                StringMatch::compile(m).map_err(|e| err(&format!("{field}.patterns[{i}]"), e))?,
            );
        }
        Ok(Self(out))
    }

    pub(super) fn exact(names: &[&str]) -> Self {
        Self(
            names
                .iter()
                .map(|n| StringMatch::Exact((*n).to_string(), false))
                .collect(),
        )
    }

    pub(super) fn with(mut self, other: Self) -> Self {
        self.0.extend(other.0);
        self
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(super) fn matches(&self, key: &str) -> bool {
        self.0.iter().any(|m| m.matches(key))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BufferSettings {
    pub max_request_bytes: usize,
    pub allow_partial_message: bool,
    pub pack_as_bytes: bool,
}

impl From<&BufferProto> for BufferSettings {
    fn from(b: &BufferProto) -> Self {
        Self {
            max_request_bytes: b.max_request_bytes as usize,
            allow_partial_message: b.allow_partial_message,
            pack_as_bytes: b.pack_as_bytes,
        }
    }
}

#[derive(Debug)]
pub(super) enum Service {
    Grpc(GrpcClient),
    Http(HttpClient),
}

impl Service {
    /// The deadline of one check call; `None`: unbounded.
    pub(super) fn timeout(&self) -> Option<Duration> {
        match self {
            Self::Grpc(g) => g.timeout,
            Self::Http(h) => Some(h.timeout),
        }
    }
}

#[derive(Debug)]
pub(super) struct Config {
    pub service: Service,
    pub failure_mode_allow: bool,
    pub failure_mode_allow_header_add: bool,
    pub status_on_error: StatusCode,
    pub with_request_body: Option<BufferSettings>,
    pub metadata_context_namespaces: Vec<String>,
    pub filter_enabled: Option<FractionalPercent>,
    pub filter_enabled_metadata: Option<MetadataMatcher>,
    pub deny_at_disable: bool,
    /// Request headers the check request carries (`allowed_headers`, plus
    /// Envoy's defaults for HTTP services); `None`: all of them.
    pub allowed_headers: Option<KeyMatcher>,
    pub disallowed_headers: KeyMatcher,
    pub include_tls_session: bool,
    pub stat_prefix: String,
    pub ingest_metadata: bool,
    /// 0: unlimited.
    pub max_denied_response_body_bytes: usize,
}

/// Envoy's HTTP-service defaults: always sent to the authorization server.
const HTTP_DEFAULT_HEADERS: &[&str] = &["authorization", ":method", ":path", ":authority"];

fn duration(
    d: &envoy_types::pb::google::protobuf::Duration,
    field: &str,
) -> Result<Duration, FieldError> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err(err(field, "must not be negative"));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

fn header_pair(
    key: &str,
    value: &str,
    field: &str,
) -> Result<(HeaderName, HeaderValue), FieldError> {
    let name = HeaderName::from_bytes(key.as_bytes())
        .map_err(|_| err(field, format!("invalid header name '{key}'")))?;
    let value = HeaderValue::from_str(value)
        .map_err(|_| err(field, format!("invalid value for header '{key}'")))?;
    Ok((name, value))
}

/// `transport_api_version`, shared by the HTTP and network filters: only
/// v3 (or unset) is served.
pub(crate) fn check_api_version(version: i32) -> Result<(), FieldError> {
    match ApiVersion::try_from(version) {
        Ok(ApiVersion::V3 | ApiVersion::Auto) => Ok(()),
        _ => Err(err(
            "transport_api_version",
            "only the v3 transport API is supported",
        )),
    }
}

/// `filter_enabled_metadata`, shared by the HTTP and network filters;
/// errors carry the field path below it.
pub(crate) fn compile_enabled_metadata(
    m: Option<&envoy_types::pb::envoy::r#type::matcher::v3::MetadataMatcher>,
) -> Result<Option<MetadataMatcher>, FieldError> {
    m.map(MetadataMatcher::compile)
        .transpose()
        .map_err(|(f, m)| {
            let field = if f.is_empty() {
                "filter_enabled_metadata".to_string()
            } else {
                format!("filter_enabled_metadata.{f}")
            };
            (field, m)
        })
}

impl Config {
    pub(super) fn compile(any: &Any) -> Result<Self, FieldError> {
        let p = ExtAuthzProto::decode(any.value.as_slice())
            .map_err(|e| err("", format!("invalid ExtAuthz: {e}")))?;
        refuse_unsupported(&p)?;
        check_api_version(p.transport_api_version)?;
        if p.with_request_body
            .is_some_and(|b| b.max_request_bytes == 0)
        {
            return Err(err(
                "with_request_body.max_request_bytes",
                "must be greater than 0",
            ));
        }
        let mut allowed = KeyMatcher::compile(p.allowed_headers.as_ref(), "allowed_headers")?;
        let service = match &p.services {
            Some(ext_authz::Services::GrpcService(g)) => {
                Service::Grpc(compile_grpc(g, "grpc_service")?)
            }
            Some(ext_authz::Services::HttpService(h)) => {
                #[allow(deprecated)]
                let legacy = h
                    .authorization_request
                    .as_ref()
                    .and_then(|r| r.allowed_headers.as_ref());
                if p.allowed_headers.is_none() {
                    allowed = KeyMatcher::compile(
                        legacy,
                        "http_service.authorization_request.allowed_headers",
                    )?;
                }
                Service::Http(compile_http(h, "http_service")?)
            }
            None => {
                return Err(err(
                    "services",
                    "one of grpc_service or http_service is required",
                ));
            }
        };
        // The gRPC check carries every header unless told otherwise; the
        // HTTP check only the defaults plus what is allowed.
        let allowed_headers = match &service {
            Service::Grpc(_) if p.allowed_headers.is_none() => None,
            Service::Grpc(_) => Some(allowed),
            Service::Http(_) => Some(allowed.with(KeyMatcher::exact(HTTP_DEFAULT_HEADERS))),
        };
        let status_on_error = match &p.status_on_error {
            None => StatusCode::FORBIDDEN,
            Some(s) => u16::try_from(s.code)
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .filter(|c| c.as_u16() >= 200)
                .ok_or_else(|| {
                    err(
                        "status_on_error.code",
                        format!("invalid HTTP status {}", s.code),
                    )
                })?,
        };
        let filter_enabled_metadata = compile_enabled_metadata(p.filter_enabled_metadata.as_ref())?;
        Ok(Self {
            service,
            failure_mode_allow: p.failure_mode_allow,
            failure_mode_allow_header_add: p.failure_mode_allow_header_add,
            status_on_error,
            with_request_body: p.with_request_body.as_ref().map(BufferSettings::from),
            metadata_context_namespaces: p.metadata_context_namespaces.clone(),
            filter_enabled: p
                .filter_enabled
                .as_ref()
                .map(|f| f.default_value.unwrap_or_default()),
            filter_enabled_metadata,
            deny_at_disable: p
                .deny_at_disable
                .as_ref()
                .and_then(|d| d.default_value)
                .is_some_and(|b| b.value),
            allowed_headers,
            disallowed_headers: KeyMatcher::compile(
                p.disallowed_headers.as_ref(),
                "disallowed_headers",
            )?,
            include_tls_session: p.include_tls_session,
            stat_prefix: p.stat_prefix.clone(),
            ingest_metadata: p.enable_dynamic_metadata_ingestion.is_none_or(|b| b.value),
            max_denied_response_body_bytes: p.max_denied_response_body_bytes as usize,
        })
    }

    /// `filter_enabled` (its default fraction; there is no runtime) and
    /// `filter_enabled_metadata`.
    pub(super) fn enabled(&self, metadata: &DynamicMetadata, random: u64) -> bool {
        if let Some(f) = &self.filter_enabled
            && !super::super::fraction_hits(Some(f), 100, random)
        {
            return false;
        }
        self.filter_enabled_metadata
            .as_ref()
            .is_none_or(|m| m.matches(metadata))
    }

    pub(super) fn limit_denied_body<'a>(&self, body: &'a str) -> &'a str {
        let max = self.max_denied_response_body_bytes;
        if max == 0 || body.len() <= max {
            return body;
        }
        let mut end = max;
        while !body.is_char_boundary(end) {
            end -= 1;
        }
        &body[..end]
    }
}

/// Fields that change behaviour and are not implemented.
fn refuse_unsupported(p: &ExtAuthzProto) -> Result<(), FieldError> {
    let refuse = |cond: bool, field: &str, why: &str| {
        if cond { Err(err(field, why)) } else { Ok(()) }
    };
    refuse(
        p.clear_route_cache,
        "clear_route_cache",
        "re-routing after ext_authz header mutations is not supported",
    )?;
    refuse(
        p.include_peer_certificate,
        "include_peer_certificate",
        "sending the peer certificate to the authorization service is not supported",
    )?;
    refuse(
        p.validate_mutations,
        "validate_mutations",
        "mutation validation is not supported",
    )?;
    refuse(
        !p.route_metadata_context_namespaces.is_empty()
            || !p.route_typed_metadata_context_namespaces.is_empty(),
        "route_metadata_context_namespaces",
        "route metadata context is not supported",
    )?;
    refuse(
        !p.bootstrap_metadata_labels_key.is_empty(),
        "bootstrap_metadata_labels_key",
        "destination labels from node metadata are not supported",
    )?;
    refuse(
        p.encode_raw_headers,
        "encode_raw_headers",
        "raw header encoding is not supported",
    )?;
    refuse(
        p.decoder_header_mutation_rules.is_some(),
        "decoder_header_mutation_rules",
        "header mutation rules are not supported",
    )?;
    refuse(
        p.filter_metadata.is_some(),
        "filter_metadata",
        "filter metadata is not supported",
    )?;
    refuse(
        p.enforce_response_header_limits,
        "enforce_response_header_limits",
        "response header limits are not supported",
    )?;
    refuse(p.shadow_mode, "shadow_mode", "shadow mode is not supported")?;
    refuse(
        p.filter_enabled
            .as_ref()
            .is_some_and(|f| !f.runtime_key.is_empty() && f.default_value.is_none()),
        "filter_enabled.default_value",
        "is required (there is no runtime)",
    )?;
    Ok(())
}

pub(super) fn compile_grpc(g: &GrpcServiceProto, field: &str) -> Result<GrpcClient, FieldError> {
    let envoy = match &g.target_specifier {
        Some(grpc_service::TargetSpecifier::EnvoyGrpc(e)) => e,
        Some(grpc_service::TargetSpecifier::GoogleGrpc(_)) => {
            return Err(err(
                &format!("{field}.google_grpc"),
                "only envoy_grpc is supported",
            ));
        }
        None => return Err(err(&format!("{field}.envoy_grpc"), "is required")),
    };
    if envoy.cluster_name.is_empty() {
        return Err(err(
            &format!("{field}.envoy_grpc.cluster_name"),
            "must not be empty",
        ));
    }
    if g.retry_policy.is_some() || envoy.retry_policy.is_some() {
        return Err(err(
            &format!("{field}.retry_policy"),
            "retries of check calls are not supported",
        ));
    }
    let timeout = g
        .timeout
        .as_ref()
        .map(|d| duration(d, &format!("{field}.timeout")))
        .transpose()?
        .filter(|d| !d.is_zero());
    let mut metadata = Vec::with_capacity(g.initial_metadata.len());
    for (i, h) in g.initial_metadata.iter().enumerate() {
        metadata.push(header_pair(
            &h.key,
            &h.value,
            &format!("{field}.initial_metadata[{i}]"),
        )?);
    }
    let authority = if envoy.authority.is_empty() {
        envoy.cluster_name.clone()
    } else {
        envoy.authority.clone()
    };
    Ok(GrpcClient {
        cluster: envoy.cluster_name.clone(),
        authority,
        timeout,
        metadata,
    })
}

fn compile_http(h: &HttpService, field: &str) -> Result<HttpClient, FieldError> {
    let f = |sub: &str| format!("{field}.{sub}");
    let uri = h
        .server_uri
        .as_ref()
        .ok_or_else(|| err(&f("server_uri"), "is required"))?;
    let cluster = match &uri.http_upstream_type {
        Some(http_uri::HttpUpstreamType::Cluster(c)) if !c.is_empty() => c.clone(),
        _ => return Err(err(&f("server_uri.cluster"), "must not be empty")),
    };
    let timeout = uri
        .timeout
        .as_ref()
        .map(|d| duration(d, &f("server_uri.timeout")))
        .transpose()?
        .ok_or_else(|| err(&f("server_uri.timeout"), "is required"))?;
    if h.retry_policy.is_some() {
        return Err(err(
            &f("retry_policy"),
            "retries of check calls are not supported",
        ));
    }
    if !h.path_prefix.is_empty() && !h.path_override.is_empty() {
        return Err(err(
            &f("path_override"),
            "only one of path_prefix and path_override may be set",
        ));
    }
    let mut headers_to_add = Vec::new();
    if let Some(r) = &h.authorization_request {
        for (i, hv) in r.headers_to_add.iter().enumerate() {
            headers_to_add.push(header_pair(
                &hv.key,
                &hv.value,
                &f(&format!("authorization_request.headers_to_add[{i}]")),
            )?);
        }
    }
    let resp = h.authorization_response.clone().unwrap_or_default();
    let list = |l: Option<&ListStringMatcher>, sub: &str| {
        KeyMatcher::compile(l, &f(&format!("authorization_response.{sub}")))
    };
    let client = list(
        resp.allowed_client_headers.as_ref(),
        "allowed_client_headers",
    )?;
    Ok(HttpClient {
        cluster,
        timeout,
        path_prefix: h.path_prefix.clone(),
        path_override: h.path_override.clone(),
        headers_to_add,
        upstream: list(
            resp.allowed_upstream_headers.as_ref(),
            "allowed_upstream_headers",
        )?,
        upstream_append: list(
            resp.allowed_upstream_headers_to_append.as_ref(),
            "allowed_upstream_headers_to_append",
        )?,
        client: if client.is_empty() {
            ClientMatcher::AllButAuthority
        } else {
            // Envoy adds these whenever the list is set.
            ClientMatcher::List(client.with(KeyMatcher::exact(&[
                ":status",
                "content-length",
                "www-authenticate",
                "location",
            ])))
        },
        client_on_success: list(
            resp.allowed_client_headers_on_success.as_ref(),
            "allowed_client_headers_on_success",
        )?,
        to_metadata: list(
            resp.dynamic_metadata_from_headers.as_ref(),
            "dynamic_metadata_from_headers",
        )?,
    })
}

/// A compiled `ExtAuthzPerRoute`.
#[derive(Debug, Clone, Default)]
pub(super) struct PerRoute {
    pub disabled: bool,
    pub context_extensions: HashMap<String, String>,
    pub disable_request_body_buffering: bool,
    pub with_request_body: Option<BufferSettings>,
}

impl PerRoute {
    pub(super) fn compile(any: &Any) -> Result<Self, FieldError> {
        if any.type_url != PER_ROUTE_TYPE_URL {
            return Err(err(
                "",
                format!(
                    "expected {PER_ROUTE_TYPE_URL} for the ext_authz filter, got '{}'",
                    any.type_url
                ),
            ));
        }
        let p = ExtAuthzPerRoute::decode(any.value.as_slice())
            .map_err(|e| err("", format!("invalid ExtAuthzPerRoute: {e}")))?;
        match p.r#override {
            None => Err(err(
                "override",
                "one of disabled or check_settings is required",
            )),
            Some(ext_authz_per_route::Override::Disabled(d)) => {
                if !d {
                    return Err(err(
                        "disabled",
                        "must be true (filters disabled by default are not supported)",
                    ));
                }
                Ok(Self {
                    disabled: true,
                    ..Self::default()
                })
            }
            Some(ext_authz_per_route::Override::CheckSettings(c)) => {
                if let Some(o) = &c.service_override {
                    let which = match o {
                        check_settings::ServiceOverride::GrpcService(_) => "grpc_service",
                        check_settings::ServiceOverride::HttpService(_) => "http_service",
                    };
                    return Err(err(
                        &format!("check_settings.{which}"),
                        "per-route service overrides are not supported",
                    ));
                }
                if c.with_request_body
                    .is_some_and(|b| b.max_request_bytes == 0)
                {
                    return Err(err(
                        "check_settings.with_request_body.max_request_bytes",
                        "must be greater than 0",
                    ));
                }
                if c.disable_request_body_buffering && c.with_request_body.is_some() {
                    return Err(err(
                        "check_settings.with_request_body",
                        "only one of disable_request_body_buffering and with_request_body may be set",
                    ));
                }
                Ok(Self {
                    disabled: false,
                    context_extensions: c.context_extensions.clone(),
                    disable_request_body_buffering: c.disable_request_body_buffering,
                    with_request_body: c.with_request_body.as_ref().map(BufferSettings::from),
                })
            }
        }
    }

    /// The body buffering that applies on this route.
    pub(super) fn buffer_settings(&self, filter: Option<BufferSettings>) -> Option<BufferSettings> {
        if self.disable_request_body_buffering {
            return None;
        }
        self.with_request_body.or(filter)
    }
}
