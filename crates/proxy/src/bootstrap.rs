//! Reading an Envoy bootstrap and extracting what the proxy needs from it.

use std::net::SocketAddr;
use std::path::Path;

use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use envoy_types::pb::envoy::config::core::v3::{
    ApiConfigSource, api_config_source::ApiType, grpc_service,
};

use crate::addr;

/// Which protocol the ADS stream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdsProtocol {
    StateOfTheWorld,
    Delta,
}

/// Where and how to reach the management server.
#[derive(Debug, Clone)]
pub struct AdsTarget {
    pub protocol: AdsProtocol,
    /// `http://host:port` of the management server.
    pub uri: String,
    /// The static cluster named by `envoy_grpc` (its transport socket says
    /// whether ADS runs over TLS).
    pub cluster: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("{0}")]
    Read(String),
    #[error("bootstrap field {field}: {message}")]
    Field { field: String, message: String },
}

fn field(field: &str, message: impl Into<String>) -> BootstrapError {
    BootstrapError::Field {
        field: field.to_string(),
        message: message.into(),
    }
}

pub fn load(path: &Path) -> Result<Bootstrap, BootstrapError> {
    let result =
        xds::codec::bootstrap_from_path(path).map_err(|e| BootstrapError::Read(e.to_string()));
    // The descriptors are needed again only for /config_dump.
    crate::memory::trim();
    result
}

/// The admin listener address, when the bootstrap asks for one.
pub fn admin_address(b: &Bootstrap) -> Result<Option<SocketAddr>, BootstrapError> {
    match b.admin.as_ref().and_then(|a| a.address.as_ref()) {
        None => Ok(None),
        Some(a) => addr::listen_addr(a)
            .map(Some)
            .map_err(|m| field("admin.address", m)),
    }
}

/// The ADS server, resolved through the static cluster that
/// `ads_config.grpc_services[0].envoy_grpc.cluster_name` names, or a Google
/// gRPC target URI.
pub fn ads_target(b: &Bootstrap) -> Result<Option<AdsTarget>, BootstrapError> {
    let Some(dynamic) = &b.dynamic_resources else {
        return Ok(None);
    };
    let Some(ads): Option<&ApiConfigSource> = dynamic.ads_config.as_ref() else {
        if dynamic.lds_config.is_some() || dynamic.cds_config.is_some() {
            return Err(field(
                "dynamic_resources",
                "only ADS (ads_config with lds_config/cds_config set to ads: {}) is supported",
            ));
        }
        return Ok(None);
    };
    let protocol = match ApiType::try_from(ads.api_type) {
        Ok(ApiType::Grpc | ApiType::AggregatedGrpc) => AdsProtocol::StateOfTheWorld,
        Ok(ApiType::DeltaGrpc | ApiType::AggregatedDeltaGrpc) => AdsProtocol::Delta,
        _ => {
            return Err(field(
                "dynamic_resources.ads_config.api_type",
                "must be GRPC or DELTA_GRPC",
            ));
        }
    };
    let service = ads.grpc_services.first().ok_or_else(|| {
        field(
            "dynamic_resources.ads_config.grpc_services",
            "one gRPC service is required",
        )
    })?;
    let cluster = match &service.target_specifier {
        Some(grpc_service::TargetSpecifier::EnvoyGrpc(g)) => Some(g.cluster_name.clone()),
        _ => None,
    };
    let uri = match &service.target_specifier {
        Some(grpc_service::TargetSpecifier::EnvoyGrpc(g)) => {
            let cluster = b
                .static_resources
                .as_ref()
                .and_then(|s| s.clusters.iter().find(|c| c.name == g.cluster_name))
                .ok_or_else(|| {
                    field(
                        "dynamic_resources.ads_config.grpc_services[0].envoy_grpc.cluster_name",
                        format!("no static cluster named '{}'", g.cluster_name),
                    )
                })?;
            let endpoint = cluster
                .load_assignment
                .as_ref()
                .and_then(|la| la.endpoints.first())
                .and_then(|e| e.lb_endpoints.first())
                .and_then(|e| match &e.host_identifier {
                    Some(envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier::Endpoint(ep)) => {
                        ep.address.clone()
                    }
                    _ => None,
                })
                .ok_or_else(|| field(&format!("static_resources.clusters['{}'].load_assignment", g.cluster_name), "needs one endpoint"))?;
            let target = addr::endpoint_target(&endpoint, true)
                .map_err(|m| field("xds cluster endpoint", m))?;
            match target {
                addr::Target::Ip(a) => format!("http://{a}"),
                addr::Target::Dns { host, port } => format!("http://{host}:{port}"),
            }
        }
        Some(grpc_service::TargetSpecifier::GoogleGrpc(g)) => {
            if g.target_uri.contains("://") {
                g.target_uri.clone()
            } else {
                format!("http://{}", g.target_uri)
            }
        }
        None => {
            return Err(field(
                "dynamic_resources.ads_config.grpc_services[0]",
                "envoy_grpc or google_grpc is required",
            ));
        }
    };
    Ok(Some(AdsTarget {
        protocol,
        uri,
        cluster,
    }))
}
