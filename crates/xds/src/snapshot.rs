//! Versioned sets of xDS resources, as served to one proxy.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::codec::{self, CodecError};
use crate::type_url;

/// Resources of one type keyed by resource name.
pub type Resources = BTreeMap<String, prost_types::Any>;

/// All resources of one type at one version.
#[derive(Clone, Debug, Default)]
pub struct TypeSnapshot {
    pub version: String,
    pub resources: Resources,
    /// Per-resource versions (delta xDS), computed once per set: a set
    /// shared by many proxies is hashed once, not once per stream.
    resource_versions: std::sync::OnceLock<BTreeMap<String, String>>,
}

impl PartialEq for TypeSnapshot {
    fn eq(&self, other: &Self) -> bool {
        self.version == other.version && self.resources == other.resources
    }
}

impl TypeSnapshot {
    pub fn new(version: impl Into<String>, resources: Resources) -> Self {
        Self {
            version: version.into(),
            resources,
            resource_versions: std::sync::OnceLock::new(),
        }
    }

    /// The delta xDS version of the resource `name`.
    pub fn resource_version(&self, name: &str) -> Option<&str> {
        self.resource_versions
            .get_or_init(|| {
                self.resources
                    .iter()
                    .map(|(n, any)| (n.clone(), resource_version(any)))
                    .collect()
            })
            .get(name)
            .map(String::as_str)
    }
}

/// What one proxy should see: for each type URL, a version and its resources.
/// A type that is absent is "not known yet" (nothing is sent for it), which
/// differs from a type present with no resources (an empty set is sent).
///
/// Type sets are shared (`Arc`): an incremental push builds the next
/// snapshot from the previous one and replaces only the types that changed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    types: BTreeMap<String, Arc<TypeSnapshot>>,
}

impl Snapshot {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets one type with an explicit version.
    pub fn set(&mut self, type_url: &str, version: impl Into<String>, resources: Resources) {
        self.types.insert(
            type_url.to_owned(),
            Arc::new(TypeSnapshot::new(version, resources)),
        );
    }

    /// Sets one type; the version is a hash of the content, so re-setting the
    /// same resources does not cause a push.
    pub fn set_hashed(&mut self, type_url: &str, resources: Resources) {
        let version = content_version(&resources);
        self.set(type_url, version, resources);
    }

    /// Builder form of [`Snapshot::set`].
    pub fn with(
        mut self,
        type_url: &str,
        version: impl Into<String>,
        resources: Resources,
    ) -> Self {
        self.set(type_url, version, resources);
        self
    }

    /// Sets one type to a set shared with other snapshots.
    pub fn set_shared(&mut self, type_url: &str, set: Arc<TypeSnapshot>) {
        self.types.insert(type_url.to_owned(), set);
    }

    /// One type's set, shareable with other snapshots.
    pub fn get_shared(&self, type_url: &str) -> Option<&Arc<TypeSnapshot>> {
        self.types.get(type_url)
    }

    pub fn get(&self, type_url: &str) -> Option<&TypeSnapshot> {
        self.types.get(type_url).map(|t| &**t)
    }

    pub fn remove(&mut self, type_url: &str) -> Option<Arc<TypeSnapshot>> {
        self.types.remove(type_url)
    }

    /// Every type's set, shareable with other snapshots.
    pub fn shared_types(&self) -> impl Iterator<Item = (&str, &Arc<TypeSnapshot>)> {
        self.types.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn types(&self) -> impl Iterator<Item = (&str, &TypeSnapshot)> {
        self.types.iter().map(|(k, v)| (k.as_str(), &**v))
    }

    /// Groups packed resources by type URL (naming each the way clients do)
    /// with content-hash versions. The LDS and CDS types are always present,
    /// possibly empty, because clients subscribe to them unconditionally.
    pub fn from_resources(
        resources: impl IntoIterator<Item = prost_types::Any>,
    ) -> Result<Self, CodecError> {
        let mut by_type: BTreeMap<String, Resources> = BTreeMap::new();
        by_type.entry(type_url::LISTENER.to_owned()).or_default();
        by_type.entry(type_url::CLUSTER.to_owned()).or_default();
        for any in resources {
            let (name, any) = type_url::resource_name(any)?;
            let set = by_type.entry(any.type_url.clone()).or_default();
            if set.insert(name.clone(), any).is_some() {
                return Err(CodecError::Invalid {
                    origin: "snapshot".into(),
                    message: format!("duplicate resource {name:?}"),
                });
            }
        }
        let mut snap = Self::new();
        for (t, set) in by_type {
            snap.set_hashed(&t, set);
        }
        Ok(snap)
    }
}

/// Loads `resources: [ {"@type": ..., ...}, ... ]` (each item a proto3-JSON
/// `Any`) so tests can serve identical resources to Envoy and our proxy.
pub fn snapshot_from_yaml(text: &str) -> Result<Snapshot, CodecError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        #[serde(default)]
        resources: Vec<serde_json::Value>,
    }
    let file: File = serde_saphyr::from_str(text).map_err(|e| CodecError::Syntax {
        origin: "snapshot".into(),
        message: e.to_string().lines().next().unwrap_or_default().to_owned(),
    })?;
    let anys = file
        .resources
        .into_iter()
        .enumerate()
        .map(|(i, v)| codec::any_from_json_value(v, &format!("resources[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    Snapshot::from_resources(anys)
}

/// A stable (across processes and builds) version string for a resource
/// set: FNV-1a over names, type URLs and encoded bytes.
pub fn content_version(resources: &Resources) -> String {
    let mut h = Fnv::new();
    for (name, any) in resources {
        h.write(name.as_bytes());
        h.write(&[0]);
        h.write(any.type_url.as_bytes());
        h.write(&[0]);
        h.write(&any.value);
    }
    format!("{:016x}", h.0)
}

/// The per-resource version used by delta xDS.
pub fn resource_version(any: &prost_types::Any) -> String {
    let mut h = Fnv::new();
    h.write(any.type_url.as_bytes());
    h.write(&[0]);
    h.write(&any.value);
    format!("{:016x}", h.0)
}

struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_yaml_resources() {
        let snap = snapshot_from_yaml(
            r#"
resources:
- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: backend
  connect_timeout: 1s
- "@type": type.googleapis.com/envoy.config.listener.v3.Listener
  name: l1
  address: { socket_address: { address: 127.0.0.1, port_value: 10000 } }
- "@type": type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment
  cluster_name: backend
"#,
        )
        .expect("snapshot");
        let clusters = snap.get(type_url::CLUSTER).expect("cds");
        assert!(clusters.resources.contains_key("backend"));
        assert!(
            snap.get(type_url::LISTENER)
                .is_some_and(|t| t.resources.contains_key("l1"))
        );
        assert!(
            snap.get(type_url::ENDPOINT)
                .is_some_and(|t| t.resources.contains_key("backend"))
        );
        assert!(snap.get(type_url::ROUTE).is_none());
        assert_eq!(clusters.version, content_version(&clusters.resources));
    }

    #[test]
    fn rejects_bad_resource_with_index() {
        let err = snapshot_from_yaml("resources:\n- \"@type\": type.googleapis.com/envoy.config.cluster.v3.Cluster\n  nme: x\n")
            .expect_err("bad");
        assert!(err.to_string().contains("resources[0]"), "{err}");
    }
}
