//! Pushing generated configuration to proxies.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};

use arc_swap::ArcSwapOption;
use envoy_types::pb::envoy::config::core::v3::Node;
use registry::local::ResolvedWorkload;
use xds::server::SnapshotCache;

/// What the last configuration change produced, for status and debugging.
#[derive(Debug, Default, Clone)]
pub struct ConfigStatus {
    pub generation: u64,
    /// Objects left out, each `file: Kind ns/name: field: message`.
    pub errors: Vec<String>,
    /// Registry and translation diagnostics.
    pub warnings: Vec<String>,
}

pub struct ControlPlane {
    cache: Arc<SnapshotCache>,
    context: ArcSwapOption<pilot::PushContext>,
    workloads: Vec<ResolvedWorkload>,
    mesh: api::MeshConfig,
    status: Mutex<ConfigStatus>,
    /// Per node: the last translation diagnostics, to log each only once.
    node_diagnostics: Mutex<BTreeMap<String, Vec<String>>>,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane").finish_non_exhaustive()
    }
}

impl ControlPlane {
    pub fn new(workloads: Vec<ResolvedWorkload>, mesh: api::MeshConfig) -> Arc<Self> {
        Arc::new_cyclic(|me: &Weak<Self>| {
            let cache = SnapshotCache::new();
            let hook_target = me.clone();
            cache.set_connect_hook(Box::new(move |node: &Node| {
                if let Some(cp) = hook_target.upgrade() {
                    cp.push_node(node);
                }
            }));
            Self {
                cache,
                context: ArcSwapOption::empty(),
                workloads,
                mesh,
                status: Mutex::default(),
                node_diagnostics: Mutex::default(),
            }
        })
    }

    pub fn cache(&self) -> &Arc<SnapshotCache> {
        &self.cache
    }

    pub fn status(&self) -> ConfigStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Rebuilds registry and push context from a configuration snapshot and
    /// pushes to every proxy that has connected.
    pub fn update_config(&self, snapshot: &config::ConfigSnapshot) {
        let (registry, diagnostics) =
            registry::Registry::build(&snapshot.objects, &self.workloads, "cluster.local");
        let mut warnings: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
        warnings.extend(snapshot.warnings.iter().cloned());
        for e in &snapshot.errors {
            tracing::warn!(error = %e, "configuration object rejected");
        }
        for w in &warnings {
            tracing::warn!(warning = %w, "registry");
        }
        let objects: Vec<api::Object> = snapshot
            .objects
            .iter()
            .filter(|o| !o.is_unsupported())
            .cloned()
            .collect();
        let ctx = pilot::PushContext::new(objects, Arc::new(registry), self.mesh.clone());
        self.context.store(Some(Arc::new(ctx)));
        if let Ok(mut s) = self.status.lock() {
            *s = ConfigStatus {
                generation: snapshot.generation,
                errors: snapshot.errors.clone(),
                warnings,
            };
        }
        let nodes = self.cache.known_nodes();
        tracing::info!(
            generation = snapshot.generation,
            proxies = nodes.len(),
            "configuration changed; pushing"
        );
        for node in nodes {
            self.push_node(&node);
        }
    }

    /// Generates and installs the snapshot of one proxy.
    fn push_node(&self, node: &Node) {
        let Some(ctx) = self.context.load_full() else {
            // No configuration yet: the proxy gets its snapshot on the first push.
            return;
        };
        let proxy = match pilot::ProxyNode::from_node(node) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(node = %node.id, error = %e, "cannot identify proxy");
                return;
            }
        };
        match pilot::generate(&proxy, &ctx) {
            Ok(generated) => {
                let diags: Vec<String> = generated
                    .diagnostics
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                if let Ok(mut seen) = self.node_diagnostics.lock() {
                    let previous = seen.insert(node.id.clone(), diags.clone());
                    if previous.as_ref() != Some(&diags) {
                        for d in &diags {
                            tracing::warn!(node = %node.id, diagnostic = %d, "translation");
                        }
                    }
                }
                self.cache
                    .set_snapshot(&node.id, pilot::to_snapshot(&generated));
            }
            Err(e) => tracing::warn!(node = %node.id, error = %e, "cannot generate configuration"),
        }
    }

    /// True once every node in `node_ids` has ACKed listeners and clusters.
    pub fn all_synced(&self, node_ids: &[String]) -> bool {
        node_ids.iter().all(|id| {
            let snapshot = self.cache.snapshot_for(id);
            self.cache.node_status(id).is_some_and(|s| {
                let acked = |t: &str| s.types.get(t).is_some_and(|t| !t.acked_version.is_empty());
                // Routes and endpoints are asked for only after listeners
                // and clusters arrive: a node is synced when it has ACKed
                // the version it should hold of each of them too.
                let holds = |t: &str| {
                    snapshot
                        .as_deref()
                        .and_then(|snap| snap.get(t))
                        .filter(|ts| !ts.resources.is_empty())
                        .is_none_or(|ts| {
                            s.types
                                .get(t)
                                .is_some_and(|st| st.acked_version == ts.version)
                        })
                };
                s.connected
                    && acked(xds::type_url::LISTENER)
                    && acked(xds::type_url::CLUSTER)
                    && holds(xds::type_url::ROUTE)
                    && holds(xds::type_url::ENDPOINT)
            })
        })
    }
}
