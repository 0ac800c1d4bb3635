//! Istio's HTTP metadata exchange: each sidecar tells the other who it is in
//! two headers, so both reporters can label the peer's workload, app and
//! version (the mTLS certificate only names a service account).
//!
//! `x-envoy-peer-metadata-id` carries the node id and `x-envoy-peer-metadata`
//! the base64 of a serialized `google.protobuf.Struct` holding a subset of
//! the node metadata (NAME, NAMESPACE, LABELS, WORKLOAD_NAME, CLUSTER_ID,
//! ...), the format Istio's proxies exchange, so Trellis and Istio sidecars
//! understand each other. Which side reads and which side writes is set by
//! the `io.istio.http.peer_metadata.Config` filter that the control plane
//! puts in the connection manager ([`PeerMetadataConfig`]); headers that are
//! read are also removed, so applications never see them.
//!
//! Decoding is cached: a peer's header value maps to one shared
//! [`Workload`], and equal workloads (pods of one deployment) share one
//! value, so the metrics key on a pointer and never produce two series
//! with the same labels.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use arc_swap::ArcSwapOption;
use base64::Engine as _;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use http::{HeaderMap, HeaderName, HeaderValue};
use prost::Message;

use super::Workload;

pub static PEER_METADATA: HeaderName = HeaderName::from_static("x-envoy-peer-metadata");
pub static PEER_METADATA_ID: HeaderName = HeaderName::from_static("x-envoy-peer-metadata-id");

/// The type the control plane configures the exchange with.
pub const CONFIG_TYPE: &str = "io.istio.http.peer_metadata.Config";

/// The node metadata keys a proxy shares with its peers: what the telemetry
/// labels need, nothing about its environment or configuration.
const SHARED_KEYS: [&str; 10] = [
    "NAME",
    "NAMESPACE",
    "LABELS",
    "WORKLOAD_NAME",
    "OWNER",
    "CLUSTER_ID",
    "MESH_ID",
    "SERVICE_ACCOUNT",
    "TRUST_DOMAIN",
    "PLATFORM_METADATA",
];

/// Decoded peers kept; a flood of distinct values resets the cache rather
/// than growing it (a peer's value is stable, so it is decoded again once).
const MAX_CACHED: usize = 4096;

/// Where the exchange happens on one connection manager.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerMetadataConfig {
    /// Read (and remove) the client's headers from requests.
    pub downstream_discovery: bool,
    /// Add this proxy's headers to responses.
    pub downstream_propagation: bool,
    /// Read (and remove) the server's headers from responses.
    pub upstream_discovery: bool,
    /// Add this proxy's headers to requests sent upstream.
    pub upstream_propagation: bool,
}

impl PeerMetadataConfig {
    /// From the filter's `Struct` config: each of the four lists enables its
    /// direction when it holds an `istio_headers` method. `baggage` and
    /// `workload_discovery` have no source here and are skipped (they are
    /// fallbacks in Istio's order). Unknown fields are an error.
    pub fn from_struct(s: &Struct) -> Result<Self, (String, String)> {
        let mut c = Self::default();
        for (key, v) in &s.fields {
            let slot = match key.as_str() {
                "downstream_discovery" | "downstreamDiscovery" => &mut c.downstream_discovery,
                "downstream_propagation" | "downstreamPropagation" => &mut c.downstream_propagation,
                "upstream_discovery" | "upstreamDiscovery" => &mut c.upstream_discovery,
                "upstream_propagation" | "upstreamPropagation" => &mut c.upstream_propagation,
                "shared_with_upstream" | "sharedWithUpstream" => continue,
                _ => return Err((key.clone(), "unknown field".into())),
            };
            let Some(Kind::ListValue(list)) = &v.kind else {
                return Err((key.clone(), "must be a list of methods".into()));
            };
            for (i, m) in list.values.iter().enumerate() {
                let Some(Kind::StructValue(m)) = &m.kind else {
                    return Err((format!("{key}[{i}]"), "must be an object".into()));
                };
                for name in m.fields.keys() {
                    match name.as_str() {
                        "istio_headers" | "istioHeaders" => *slot = true,
                        "baggage" | "workload_discovery" | "workloadDiscovery" => {}
                        _ => {
                            return Err((
                                format!("{key}[{i}].{name}"),
                                "unknown discovery or propagation method".into(),
                            ));
                        }
                    }
                }
            }
        }
        Ok(c)
    }

    pub fn is_active(&self) -> bool {
        self.downstream_discovery
            || self.downstream_propagation
            || self.upstream_discovery
            || self.upstream_propagation
    }
}

/// This proxy's two header values.
#[derive(Debug)]
struct OwnHeaders {
    id: HeaderValue,
    metadata: HeaderValue,
}

static OWN: ArcSwapOption<OwnHeaders> = ArcSwapOption::const_empty();

/// Sets this proxy's headers from its node (at start, before traffic).
pub fn set_own(node: &Node) {
    let mut shared = Struct::default();
    if let Some(md) = &node.metadata {
        for k in SHARED_KEYS {
            if let Some(v) = md.fields.get(k) {
                shared.fields.insert(k.to_owned(), v.clone());
            }
        }
    }
    let encoded = base64::engine::general_purpose::STANDARD.encode(shared.encode_to_vec());
    let (Ok(metadata), Ok(id)) = (
        HeaderValue::from_str(&encoded),
        HeaderValue::from_str(&node.id),
    ) else {
        tracing::warn!(node = %node.id, "node id is not a valid header value: no metadata exchange");
        return;
    };
    OWN.store(Some(Arc::new(OwnHeaders { id, metadata })));
}

/// Adds this proxy's headers to `headers` (replacing any already there).
pub fn propagate(headers: &mut HeaderMap) {
    if let Some(own) = OWN.load().as_ref() {
        headers.insert(PEER_METADATA_ID.clone(), own.id.clone());
        headers.insert(PEER_METADATA.clone(), own.metadata.clone());
    }
}

/// Removes the peer's headers from `headers` and returns who it is.
pub fn discover(headers: &mut HeaderMap) -> Option<Arc<Workload>> {
    headers.remove(&PEER_METADATA_ID);
    let value = headers.remove(&PEER_METADATA)?;
    cache().lookup(value.as_bytes())
}

/// A header value → who it names (`None`: undecodable).
type Decoded = HashMap<Box<[u8]>, Option<Arc<Workload>>>;

#[derive(Debug, Default)]
struct Cache {
    by_value: RwLock<Decoded>,
    /// Equal workloads share one `Arc`.
    interned: RwLock<Vec<Arc<Workload>>>,
}

fn cache() -> &'static Cache {
    static C: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();
    C.get_or_init(Cache::default)
}

impl Cache {
    fn lookup(&self, raw: &[u8]) -> Option<Arc<Workload>> {
        if let Some(hit) = self
            .by_value
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(raw)
        {
            return hit.clone();
        }
        let decoded = decode(raw).map(|w| self.intern(w));
        let mut map = self.by_value.write().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_CACHED {
            map.clear();
        }
        map.insert(raw.into(), decoded.clone());
        decoded
    }

    fn intern(&self, w: Workload) -> Arc<Workload> {
        let mut interned = self.interned.write().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = interned.iter().find(|i| ***i == w) {
            return Arc::clone(found);
        }
        if interned.len() >= MAX_CACHED {
            interned.clear();
        }
        let w = Arc::new(w);
        interned.push(Arc::clone(&w));
        w
    }
}

/// A peer's workload from its header value; `None` when it is not base64 of
/// a `Struct` (a peer that sent garbage is simply unknown).
fn decode(raw: &[u8]) -> Option<Workload> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(raw).ok()?;
    let s = Struct::decode(bytes.as_slice()).ok()?;
    Some(Workload::from_metadata(&s))
}

/// The string fields of a `LABELS` struct.
pub(super) fn labels_of(md: &Struct) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    if let Some(Some(Kind::StructValue(Struct { fields }))) =
        md.fields.get("LABELS").map(|v| v.kind.as_ref())
    {
        for (k, v) in fields {
            if let Some(Kind::StringValue(s)) = &v.kind {
                labels.insert(k.clone(), s.clone());
            }
        }
    }
    labels
}

/// A string field of node metadata, when set and not empty.
pub(super) fn string_field<'a>(md: &'a Struct, key: &str) -> Option<&'a str> {
    match md.fields.get(key).and_then(|v: &Value| v.kind.as_ref()) {
        Some(Kind::StringValue(s)) if !s.is_empty() => Some(s.as_str()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Value {
        Value {
            kind: Some(Kind::StringValue(v.into())),
        }
    }

    fn node(name: &str) -> Node {
        let mut labels = Struct::default();
        labels.fields.insert("app".into(), s("reviews"));
        labels.fields.insert("version".into(), s("v2"));
        let mut md = Struct::default();
        md.fields.insert("NAME".into(), s(name));
        md.fields.insert("NAMESPACE".into(), s("default"));
        md.fields.insert("WORKLOAD_NAME".into(), s("reviews-v2"));
        md.fields
            .insert("SERVICE_ACCOUNT".into(), s("bookinfo-reviews"));
        md.fields.insert("ISTIO_VERSION".into(), s("secret-ish"));
        md.fields.insert(
            "LABELS".into(),
            Value {
                kind: Some(Kind::StructValue(labels)),
            },
        );
        Node {
            id: format!("sidecar~10.0.0.1~{name}.default~default.svc.cluster.local"),
            metadata: Some(md),
            ..Default::default()
        }
    }

    #[test]
    fn a_propagated_identity_is_discovered_with_its_labels() {
        set_own(&node("reviews-v2-abc"));
        let mut h = HeaderMap::new();
        propagate(&mut h);
        assert!(h.contains_key(&PEER_METADATA_ID));
        let raw = h.get(&PEER_METADATA).map(|v| v.as_bytes().to_vec());
        let w = discover(&mut h).expect("decodes");
        assert!(h.is_empty(), "discovery removes both headers");
        assert_eq!(w.workload, "reviews-v2");
        assert_eq!(w.app, "reviews");
        assert_eq!(w.version, "v2");
        assert_eq!(w.namespace, "default");
        assert_eq!(
            w.principal,
            "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
        );
        // Only the shared keys travel.
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(raw.unwrap_or_default())
            .unwrap_or_default();
        let sent = Struct::decode(bytes.as_slice()).unwrap_or_default();
        assert!(!sent.fields.contains_key("ISTIO_VERSION"));
    }

    #[test]
    fn pods_of_one_workload_share_one_value() {
        let a = cache().lookup(encoded(&node("reviews-v2-a")).as_bytes());
        let b = cache().lookup(encoded(&node("reviews-v2-b")).as_bytes());
        let (Some(a), Some(b)) = (a, b) else {
            panic!("both decode");
        };
        assert!(Arc::ptr_eq(&a, &b));
    }

    #[test]
    fn garbage_is_an_unknown_peer() {
        let mut h = HeaderMap::new();
        h.insert(PEER_METADATA.clone(), HeaderValue::from_static("%%%"));
        assert!(discover(&mut h).is_none());
        assert!(h.is_empty());
    }

    #[test]
    fn config_enables_directions_with_istio_headers() {
        let list = |methods: &[&str]| Value {
            kind: Some(Kind::ListValue(
                envoy_types::pb::google::protobuf::ListValue {
                    values: methods
                        .iter()
                        .map(|m| {
                            let mut st = Struct::default();
                            st.fields.insert(
                                (*m).into(),
                                Value {
                                    kind: Some(Kind::StructValue(Struct::default())),
                                },
                            );
                            Value {
                                kind: Some(Kind::StructValue(st)),
                            }
                        })
                        .collect(),
                },
            )),
        };
        let mut cfg = Struct::default();
        cfg.fields.insert(
            "downstream_discovery".into(),
            list(&["istio_headers", "workload_discovery"]),
        );
        cfg.fields
            .insert("downstream_propagation".into(), list(&["istio_headers"]));
        let c = PeerMetadataConfig::from_struct(&cfg).expect("valid");
        assert!(c.downstream_discovery && c.downstream_propagation);
        assert!(!c.upstream_discovery && !c.upstream_propagation);
        cfg.fields
            .insert("upstream_discovery".into(), list(&["carrier_pigeon"]));
        let err = PeerMetadataConfig::from_struct(&cfg).expect_err("unknown method");
        assert_eq!(err.0, "upstream_discovery[0].carrier_pigeon");
    }

    fn encoded(n: &Node) -> String {
        let mut shared = Struct::default();
        if let Some(md) = &n.metadata {
            for k in SHARED_KEYS {
                if let Some(v) = md.fields.get(k) {
                    shared.fields.insert(k.to_owned(), v.clone());
                }
            }
        }
        base64::engine::general_purpose::STANDARD.encode(shared.encode_to_vec())
    }
}
