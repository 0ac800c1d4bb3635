//! The loaded configuration object: metadata, kind, origin and typed spec.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::defaults::DEFAULT_NAMESPACE;
use crate::networking::{
    DestinationRule, Gateway, ServiceEntry, Sidecar, VirtualService, WorkloadEntry, WorkloadGroup,
};
use crate::security::{AuthorizationPolicy, PeerAuthentication, RequestAuthentication};

/// Kubernetes-style object metadata (the parts Istio uses).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Metadata {
    pub name: String,
    /// Defaults to `"default"` when the document does not set it.
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

impl Default for Metadata {
    fn default() -> Self {
        Self {
            name: String::new(),
            namespace: DEFAULT_NAMESPACE.to_string(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
        }
    }
}

/// The spec of an object, typed by kind.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
// Objects live in vectors and maps; boxing every spec would only add noise
// to pattern matches.
#[allow(clippy::large_enum_variant)]
pub enum Spec {
    VirtualService(VirtualService),
    DestinationRule(DestinationRule),
    Gateway(Gateway),
    ServiceEntry(ServiceEntry),
    WorkloadEntry(WorkloadEntry),
    WorkloadGroup(WorkloadGroup),
    Sidecar(Sidecar),
    /// `security.istio.io` PeerAuthentication.
    PeerAuthentication(PeerAuthentication),
    /// `security.istio.io` AuthorizationPolicy.
    AuthorizationPolicy(AuthorizationPolicy),
    /// `security.istio.io` RequestAuthentication.
    RequestAuthentication(RequestAuthentication),
    /// `telemetry.istio.io` Telemetry.
    Telemetry(crate::telemetry::Telemetry),
    /// `extensions.istio.io` WasmPlugin (loosely typed for now).
    WasmPlugin(serde_json::Value),
    /// Another kind of an Istio API group that Trellis does not model yet
    /// (EnvoyFilter, ProxyConfig, TrafficExtension, ...); the raw spec.
    Other(serde_json::Value),
    /// A kind outside Istio's API groups (a Kubernetes Service, Deployment,
    /// ...): kept, not interpreted. Holds the whole document.
    Unsupported(serde_json::Value),
}

/// One configuration object read from a file.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Object {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    /// Where the object came from (a file path, usually).
    #[serde(skip)]
    pub origin: String,
    pub spec: Spec,
}

impl Object {
    /// The object's name.
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// The object's namespace (`"default"` when unset in the file).
    pub fn namespace(&self) -> &str {
        &self.metadata.namespace
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.metadata.namespace, self.metadata.name)
    }

    /// The API group part of `apiVersion` (`""` for core Kubernetes kinds).
    pub fn group(&self) -> &str {
        self.api_version.rsplit_once('/').map_or("", |(g, _)| g)
    }

    /// True when Trellis does not model this kind.
    pub fn is_unsupported(&self) -> bool {
        matches!(self.spec, Spec::Unsupported(_))
    }
}
