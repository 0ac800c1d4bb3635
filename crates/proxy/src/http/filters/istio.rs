//! Istio's own HTTP extensions, configured as `TypedStruct`s the way Istio's
//! control plane sends them: `istio.metadata_exchange`
//! (`io.istio.http.peer_metadata.Config`) and `istio.stats`
//! (`stats.PluginConfig`). They are not request filters here: the connection
//! manager reads their settings and applies them around the chain, so
//! [`super::compile_chain`] skips them. A stock Envoy skips them too (the
//! control plane marks them optional) and reports no Istio metrics.

use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter as HttpFilterProto, http_filter,
};
use envoy_types::pb::google::protobuf::Any;

use std::sync::Arc;

use crate::metrics::StatsConfig;
use crate::metrics::peer::{self, PeerMetadataConfig};

pub const STATS_CONFIG_TYPE: &str = "stats.PluginConfig";

/// The inner type and value of an Istio extension filter's config, `None`
/// for every other filter.
fn istio_config(
    any: &Any,
) -> Option<Result<(String, envoy_types::pb::google::protobuf::Struct), String>> {
    let unpacked = xds::typed_struct::unpack(any)?;
    Some(match unpacked {
        Ok((url, value)) => {
            let name = xds::typed_struct::message_name(&url);
            if name != peer::CONFIG_TYPE && name != STATS_CONFIG_TYPE {
                return None;
            }
            Ok((name.to_owned(), value))
        }
        Err(e) => Err(format!("invalid TypedStruct: {e}")),
    })
}

/// Whether the chain compiler should leave this filter to the connection
/// manager.
pub fn is_istio_extension(f: &HttpFilterProto) -> bool {
    match &f.config_type {
        Some(http_filter::ConfigType::TypedConfig(any)) => {
            matches!(istio_config(any), Some(Ok(_)))
        }
        _ => false,
    }
}

/// What a connection manager's Istio extensions configure.
pub type IstioSettings = (PeerMetadataConfig, Option<Arc<StatsConfig>>);

/// The metadata exchange and stats settings of a chain (the last such
/// filter of each kind wins; no exchange and no Istio metrics without
/// them). `Err` is (field below `http_filters`, message).
pub fn settings(chain: &[HttpFilterProto]) -> Result<IstioSettings, (String, String)> {
    let mut exchange = PeerMetadataConfig::default();
    let mut stats = None;
    for (i, f) in chain.iter().enumerate() {
        let Some(http_filter::ConfigType::TypedConfig(any)) = &f.config_type else {
            continue;
        };
        let at = |sub: &str| format!("[{i}].typed_config.value.{sub}");
        match istio_config(any) {
            Some(Ok((name, value))) if name == peer::CONFIG_TYPE => {
                exchange = PeerMetadataConfig::from_struct(&value).map_err(|(f, m)| (at(&f), m))?;
            }
            Some(Ok((_, value))) => {
                stats = Some(StatsConfig::from_struct(&value).map_err(|(f, m)| (at(&f), m))?);
            }
            Some(Err(m)) => return Err((format!("[{i}].typed_config"), m)),
            None => {}
        }
    }
    Ok((exchange, stats))
}
