//! MeshConfig: mesh-wide settings (Istio's `mesh` config map), with
//! Istio's defaults. Parts other issues will model (extension providers,
//! proxy defaults) are kept as JSON values; fields not listed here are kept
//! in [`MeshConfig::extra`] rather than rejected.

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
    pub extension_providers: Vec<serde_json::Value>,
    pub default_providers: Option<serde_json::Value>,
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

    /// The effective connect timeout.
    pub fn connect_timeout(&self) -> std::time::Duration {
        self.connect_timeout
            .map_or(defaults::CONNECT_TIMEOUT, IstioDuration::get)
    }
}
