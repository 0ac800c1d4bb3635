//! `HttpConnectionManager` compiled into the settings the HTTP pipeline reads.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use route::RouteTable;

use super::filters::HttpFilter;
use crate::duration::timeout_or;
use crate::error::{ConfigError, ErrorScope};

pub const TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Auto,
    Http1,
    Http2,
}

/// Where the route table comes from.
#[derive(Debug, Clone)]
pub enum RouteSource {
    Inline(Arc<RouteTable>),
    /// Looked up by name in the current snapshot on every request, so an RDS
    /// update applies to connections that are already open.
    Rds(String),
}

#[derive(Debug)]
pub struct HcmConfig {
    pub stat_prefix: String,
    pub codec: Codec,
    pub routes: RouteSource,
    pub filters: Vec<HttpFilter>,
    pub use_remote_address: bool,
    pub xff_num_trusted_hops: u32,
    pub skip_xff_append: bool,
    pub via: Option<http::HeaderValue>,
    pub generate_request_id: bool,
    pub preserve_external_request_id: bool,
    pub always_set_request_id_in_response: bool,
    /// `None` when `server_header_transformation` is PASS_THROUGH.
    pub server_name: Option<http::HeaderValue>,
    pub append_server_if_absent: bool,
    pub stream_idle_timeout: Option<Duration>,
    pub request_timeout: Option<Duration>,
    pub request_headers_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub max_request_headers_bytes: usize,
    pub max_headers_count: usize,
    pub upgrades: Vec<String>,
    pub strip_matching_host_port: bool,
    pub strip_any_host_port: bool,
    pub suppress_envoy_headers: bool,
    pub ignore_port_in_host_matching: bool,
    /// Remote addresses treated as internal (`internal_address_config`);
    /// empty means none, Envoy's default since internal addresses became explicit.
    pub internal_ranges: Vec<crate::cidr::Cidr>,
    pub accept_http_10: bool,
    pub default_host_for_http_10: Option<String>,
    pub access_logs: Vec<crate::access_log::AccessLog>,
    /// `tracing`: spans, sampling and trace context propagation.
    pub tracing: Option<crate::trace::HcmTracing>,
    /// Istio's metadata exchange (`istio.metadata_exchange`), when configured.
    pub peer_metadata: crate::metrics::peer::PeerMetadataConfig,
    /// Istio's HTTP metrics (`istio.stats`): none without the filter.
    pub istio_stats: Option<Arc<crate::metrics::StatsConfig>>,
}

impl HcmConfig {
    pub fn compile(any: &Any, scope: &ErrorScope, field: &str) -> Result<Self, ConfigError> {
        let hcm = HttpConnectionManager::decode(any.value.as_slice())
            .map_err(|e| scope.err(field, format!("invalid HttpConnectionManager: {e}")))?;
        let f = |sub: &str| format!("{field}.{sub}");
        let codec = match http_connection_manager::CodecType::try_from(hcm.codec_type) {
            Ok(http_connection_manager::CodecType::Auto) => Codec::Auto,
            Ok(http_connection_manager::CodecType::Http1) => Codec::Http1,
            Ok(http_connection_manager::CodecType::Http2) => Codec::Http2,
            _ => return Err(scope.err(f("codec_type"), "only AUTO, HTTP1 and HTTP2 are supported")),
        };
        let routes = match &hcm.route_specifier {
            Some(http_connection_manager::RouteSpecifier::RouteConfig(rc)) => {
                let table = RouteTable::compile(rc)
                    .map_err(|e| scope.err(f("route_config"), e.to_string()))?;
                RouteSource::Inline(Arc::new(table))
            }
            Some(http_connection_manager::RouteSpecifier::Rds(rds)) => {
                if rds.route_config_name.is_empty() {
                    return Err(scope.err(f("rds.route_config_name"), "must not be empty"));
                }
                RouteSource::Rds(rds.route_config_name.clone())
            }
            Some(http_connection_manager::RouteSpecifier::ScopedRoutes(_)) => {
                return Err(scope.err(f("scoped_routes"), "scoped routes are not supported"));
            }
            None => return Err(scope.err(field, "one of route_config or rds is required")),
        };
        let filters = super::filters::compile_chain(&hcm.http_filters, scope, &f("http_filters"))?;
        let (peer_metadata, istio_stats) = super::filters::istio::settings(&hcm.http_filters)
            .map_err(|(at, m)| scope.err(f(&format!("http_filters{at}")), m))?;
        if let RouteSource::Inline(table) = &routes {
            super::filters::check_per_route_configs(&filters, table)
                .map_err(|(at, m)| scope.err(f(&format!("route_config.{at}")), m))?;
        }
        let access_logs =
            crate::access_log::compile_list(&hcm.access_log, scope, &f("access_log"))?;
        let tracing = hcm
            .tracing
            .as_ref()
            .map(crate::trace::HcmTracing::compile)
            .transpose()
            .map_err(|(at, m)| scope.err(f(&format!("tracing.{at}")), m))?;
        let common = hcm.common_http_protocol_options.unwrap_or_default();
        let server_transform = hcm.server_header_transformation;
        let server_name = if server_transform
            == http_connection_manager::ServerHeaderTransformation::PassThrough as i32
        {
            None
        } else {
            let name = if hcm.server_name.is_empty() {
                "envoy"
            } else {
                hcm.server_name.as_str()
            };
            Some(
                http::HeaderValue::from_str(name)
                    .map_err(|_| scope.err(f("server_name"), "not a valid header value"))?,
            )
        };
        let via = if hcm.via.is_empty() {
            None
        } else {
            Some(
                http::HeaderValue::from_str(&hcm.via)
                    .map_err(|_| scope.err(f("via"), "not a valid header value"))?,
            )
        };
        let max_kb = hcm.max_request_headers_kb.map(|v| v.value).unwrap_or(60);
        if !(1..=8192).contains(&max_kb) {
            return Err(scope.err(f("max_request_headers_kb"), "must be between 1 and 8192"));
        }
        let mut upgrades = Vec::new();
        for (i, u) in hcm.upgrade_configs.iter().enumerate() {
            if !u.filters.is_empty() {
                return Err(scope.err(
                    f(&format!("upgrade_configs[{i}].filters")),
                    "per-upgrade filter chains are not supported",
                ));
            }
            if u.enabled.map(|e| e.value).unwrap_or(true) {
                upgrades.push(u.upgrade_type.to_ascii_lowercase());
            }
        }
        let strip_any_host_port = matches!(
            hcm.strip_port_mode,
            Some(http_connection_manager::StripPortMode::StripAnyHostPort(
                true
            ))
        );
        let suppress_envoy_headers = filters
            .iter()
            .any(|f| matches!(f, HttpFilter::Router(r) if r.suppress_envoy_headers));
        Ok(Self {
            stat_prefix: hcm.stat_prefix.clone(),
            codec,
            routes,
            filters,
            use_remote_address: hcm.use_remote_address.map(|v| v.value).unwrap_or(false),
            xff_num_trusted_hops: hcm.xff_num_trusted_hops,
            skip_xff_append: hcm.skip_xff_append,
            via,
            generate_request_id: hcm.generate_request_id.map(|v| v.value).unwrap_or(true),
            preserve_external_request_id: hcm.preserve_external_request_id,
            always_set_request_id_in_response: hcm.always_set_request_id_in_response,
            server_name,
            append_server_if_absent: server_transform
                == http_connection_manager::ServerHeaderTransformation::AppendIfAbsent as i32,
            // Envoy's defaults: streams idle out after 5 minutes; no overall request timeout.
            stream_idle_timeout: timeout_or(
                hcm.stream_idle_timeout.as_ref(),
                Some(Duration::from_secs(300)),
            ),
            request_timeout: timeout_or(hcm.request_timeout.as_ref(), None),
            request_headers_timeout: timeout_or(hcm.request_headers_timeout.as_ref(), None),
            idle_timeout: timeout_or(
                common.idle_timeout.as_ref(),
                Some(Duration::from_secs(3600)),
            ),
            max_request_headers_bytes: max_kb as usize * 1024,
            max_headers_count: common
                .max_headers_count
                .map(|v| v.value as usize)
                .unwrap_or(100),
            upgrades,
            strip_matching_host_port: hcm.strip_matching_host_port,
            strip_any_host_port,
            suppress_envoy_headers,
            ignore_port_in_host_matching: false,
            internal_ranges: hcm
                .internal_address_config
                .as_ref()
                .map(|c| {
                    c.cidr_ranges
                        .iter()
                        .enumerate()
                        .map(|(i, r)| {
                            crate::cidr::Cidr::parse(r).map_err(|m| {
                                scope
                                    .err(f(&format!("internal_address_config.cidr_ranges[{i}]")), m)
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
                .transpose()?
                .unwrap_or_default(),
            accept_http_10: hcm
                .http_protocol_options
                .as_ref()
                .is_some_and(|o| o.accept_http_10),
            default_host_for_http_10: hcm
                .http_protocol_options
                .as_ref()
                .map(|o| o.default_host_for_http_10.clone())
                .filter(|h| !h.is_empty()),
            access_logs,
            tracing,
            peer_metadata,
            istio_stats,
        })
    }

    /// The RDS name this manager waits for, if any.
    pub fn rds_name(&self) -> Option<&str> {
        match &self.routes {
            RouteSource::Rds(name) => Some(name),
            RouteSource::Inline(_) => None,
        }
    }

    /// The listener's `traffic_direction`, which names and kinds the spans.
    pub fn set_traffic_direction(&self, direction: i32) {
        if let Some(t) = &self.tracing {
            t.set_traffic_direction(direction);
        }
    }

    pub fn upgrade_allowed(&self, kind: &str) -> bool {
        self.upgrades.iter().any(|u| u.eq_ignore_ascii_case(kind))
    }
}
