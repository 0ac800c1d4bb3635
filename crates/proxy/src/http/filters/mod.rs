//! HTTP filters of the connection manager's chain.
//!
//! Each filter sees the request before routing to the upstream and may answer
//! it locally; some also see the response. The router is always last and is
//! handled by the pipeline itself.

pub mod cors;
pub mod ext_authz;
pub mod fault;
pub mod istio;
pub mod jwt_authn;
pub mod local_ratelimit;
pub mod rbac;

use std::sync::Arc;

use envoy_types::pb::envoy::config::route::v3::FilterConfig;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter as HttpFilterProto, http_filter,
};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent::DenominatorType};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use crate::error::{ConfigError, ErrorScope};

const FILTER_CONFIG: &str = "type.googleapis.com/envoy.config.route.v3.FilterConfig";

#[derive(Debug, Clone)]
pub struct RouterConfig {
    pub suppress_envoy_headers: bool,
}

#[derive(Debug)]
pub enum HttpFilter {
    Fault {
        name: String,
        config: Arc<fault::FaultConfig>,
    },
    Cors {
        name: String,
    },
    LocalRateLimit {
        name: String,
        config: Arc<local_ratelimit::LocalRateLimit>,
    },
    Rbac {
        name: String,
        config: Arc<rbac::RbacFilter>,
    },
    JwtAuthn {
        name: String,
        config: Arc<jwt_authn::JwtAuthn>,
    },
    ExtAuthz {
        name: String,
        config: Arc<ext_authz::ExtAuthz>,
    },
    Router(RouterConfig),
}

impl HttpFilter {
    pub fn name(&self) -> &str {
        match self {
            Self::Fault { name, .. }
            | Self::Cors { name }
            | Self::LocalRateLimit { name, .. }
            | Self::Rbac { name, .. }
            | Self::JwtAuthn { name, .. }
            | Self::ExtAuthz { name, .. } => name,
            Self::Router(_) => "envoy.filters.http.router",
        }
    }
}

pub fn compile_chain(
    protos: &[HttpFilterProto],
    scope: &ErrorScope,
    field: &str,
) -> Result<Vec<HttpFilter>, ConfigError> {
    let mut chain = Vec::with_capacity(protos.len());
    for (i, f) in protos.iter().enumerate() {
        let field = format!("{field}[{i}]");
        let any = match &f.config_type {
            Some(http_filter::ConfigType::TypedConfig(any)) => any,
            Some(http_filter::ConfigType::ConfigDiscovery(_)) => {
                return Err(scope.err(
                    format!("{field}.config_discovery"),
                    "extension config discovery is not supported",
                ));
            }
            None => {
                return Err(scope.err(
                    format!("{field}.typed_config"),
                    format!("filter '{}' has no typed_config", f.name),
                ));
            }
        };
        if istio::is_istio_extension(f) {
            // Applied by the connection manager around the chain.
            continue;
        }
        if f.disabled {
            // Disabled by default and enabled per route: not supported yet, and
            // skipping it silently would change behaviour.
            return Err(scope.err(
                format!("{field}.disabled"),
                "filters disabled by default are not supported",
            ));
        }
        let type_url = any.type_url.as_str();
        let typed_field = format!("{field}.typed_config");
        let filter = match type_url.rsplit('/').next().unwrap_or("") {
            "envoy.extensions.filters.http.router.v3.Router" => {
                let r = Router::decode(any.value.as_slice())
                    .map_err(|e| scope.err(&typed_field, e.to_string()))?;
                HttpFilter::Router(RouterConfig {
                    suppress_envoy_headers: r.suppress_envoy_headers,
                })
            }
            "envoy.extensions.filters.http.fault.v3.HTTPFault" => HttpFilter::Fault {
                name: f.name.clone(),
                config: Arc::new(
                    fault::FaultConfig::compile(any).map_err(|m| scope.err(&typed_field, m))?,
                ),
            },
            "envoy.extensions.filters.http.cors.v3.Cors" => HttpFilter::Cors {
                name: f.name.clone(),
            },
            "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit" => {
                HttpFilter::LocalRateLimit {
                    name: f.name.clone(),
                    config: Arc::new(
                        local_ratelimit::LocalRateLimit::compile(any)
                            .map_err(|m| scope.err(&typed_field, m))?,
                    ),
                }
            }
            "envoy.extensions.filters.http.rbac.v3.RBAC" => HttpFilter::Rbac {
                name: f.name.clone(),
                config: Arc::new(
                    rbac::RbacFilter::compile(any)
                        .map_err(|(sub, m)| scope.err(join(&typed_field, &sub), m))?,
                ),
            },
            "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication" => {
                HttpFilter::JwtAuthn {
                    name: f.name.clone(),
                    config: Arc::new(
                        jwt_authn::JwtAuthn::compile(any)
                            .map_err(|(sub, m)| scope.err(join(&typed_field, &sub), m))?,
                    ),
                }
            }
            "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz" => HttpFilter::ExtAuthz {
                name: f.name.clone(),
                config: Arc::new(
                    ext_authz::ExtAuthz::compile(any)
                        .map_err(|(sub, m)| scope.err(join(&typed_field, &sub), m))?,
                ),
            },
            _ if f.is_optional => {
                tracing::warn!(filter = %f.name, type_url, "skipping optional HTTP filter of an unsupported type");
                continue;
            }
            _ => {
                return Err(scope.err(
                    typed_field,
                    format!(
                        "unsupported HTTP filter type '{type_url}' (filter '{}')",
                        f.name
                    ),
                ));
            }
        };
        chain.push(filter);
    }
    match chain.last() {
        Some(HttpFilter::Router(_)) => {}
        _ => {
            return Err(scope.err(
                field,
                "the last HTTP filter must be the router (envoy.filters.http.router)",
            ));
        }
    }
    if chain[..chain.len() - 1]
        .iter()
        .any(|f| matches!(f, HttpFilter::Router(_)))
    {
        return Err(scope.err(field, "the router must be the only terminal filter"));
    }
    Ok(chain)
}

fn join(prefix: &str, field: &str) -> String {
    if field.is_empty() {
        prefix.to_string()
    } else {
        format!("{prefix}.{field}")
    }
}

/// Validates the `typed_per_filter_config` entries a route table carries for
/// the filters of this chain that check them (RBAC, jwt_authn), as Envoy
/// does when it loads the route configuration. `Err` is (field, message)
/// with the field relative to the route configuration.
pub fn check_per_route_configs(
    chain: &[HttpFilter],
    table: &route::RouteTable,
) -> Result<(), (String, String)> {
    let check = |name: &str, any: &Any| -> Result<(), String> {
        let Some(filter) = chain.iter().find(|f| f.name() == name) else {
            return Ok(());
        };
        let any = match unwrap_per_route(any)? {
            PerRoute::Disabled => return Ok(()),
            PerRoute::Config(a) => a,
            PerRoute::Borrowed(a) => a.clone(),
        };
        let res = match filter {
            HttpFilter::Rbac { .. } => rbac::RbacFilter::compile_per_route(&any).map(|_| ()),
            HttpFilter::JwtAuthn { .. } => jwt_authn::JwtAuthn::check_per_route(&any),
            HttpFilter::ExtAuthz { .. } => ext_authz::ExtAuthz::check_per_route(&any),
            _ => Ok(()),
        };
        res.map_err(|(f, m)| if f.is_empty() { m } else { format!("{f}: {m}") })
    };
    let field = |base: String, name: &str| format!("{base}.typed_per_filter_config[\"{name}\"]");
    for (k, any) in table.typed_per_filter_config() {
        check(k, any).map_err(|m| {
            (
                field(String::new(), k).trim_start_matches('.').to_string(),
                m,
            )
        })?;
    }
    for (vi, vh) in table.virtual_hosts().iter().enumerate() {
        for (k, any) in &vh.typed_per_filter_config {
            check(k, any).map_err(|m| (field(format!("virtual_hosts[{vi}]"), k), m))?;
        }
        for (ri, r) in vh.routes.iter().enumerate() {
            for (k, any) in &r.typed_per_filter_config {
                check(k, any)
                    .map_err(|m| (field(format!("virtual_hosts[{vi}].routes[{ri}]"), k), m))?;
            }
        }
    }
    Ok(())
}

/// A per-route override as found in `typed_per_filter_config`: either the
/// filter's own type or a `FilterConfig` wrapper that can disable it.
pub enum PerRoute<'a> {
    Disabled,
    Config(Any),
    Borrowed(&'a Any),
}

pub fn unwrap_per_route(any: &Any) -> Result<PerRoute<'_>, String> {
    if any.type_url != FILTER_CONFIG {
        return Ok(PerRoute::Borrowed(any));
    }
    let fc = FilterConfig::decode(any.value.as_slice()).map_err(|e| e.to_string())?;
    if fc.disabled {
        return Ok(PerRoute::Disabled);
    }
    match fc.config {
        Some(c) => Ok(PerRoute::Config(c)),
        None => Ok(PerRoute::Disabled),
    }
}

/// Envoy's `FractionalPercent` as a probability check against a random draw.
pub fn fraction_hits(p: Option<&FractionalPercent>, default_numerator: u32, random: u64) -> bool {
    let (num, den) = match p {
        Some(p) => {
            let den = match DenominatorType::try_from(p.denominator) {
                Ok(DenominatorType::TenThousand) => 10_000,
                Ok(DenominatorType::Million) => 1_000_000,
                _ => 100,
            };
            (u64::from(p.numerator), den)
        }
        None => (u64::from(default_numerator), 100),
    };
    num >= den || random % den < num
}
