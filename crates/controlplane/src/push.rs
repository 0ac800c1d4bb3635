//! Pushing generated configuration to proxies.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, Weak};

use arc_swap::ArcSwapOption;
use envoy_types::pb::envoy::config::core::v3::Node;
use registry::local::ResolvedWorkload;
use xds::server::SnapshotCache;
use xds::snapshot::TypeSnapshot;

use crate::incremental::{self, Change};

/// What the last configuration change produced, for status and debugging.
#[derive(Debug, Default, Clone)]
pub struct ConfigStatus {
    pub generation: u64,
    /// Objects left out, each `file: Kind ns/name: field: message`.
    pub errors: Vec<String>,
    /// Registry and translation diagnostics.
    pub warnings: Vec<String>,
}

/// One proxy translation, shared by the proxies of its generation key.
struct Translated {
    snapshot: xds::Snapshot,
    diagnostics: Vec<String>,
}

/// A connected proxy as a push needs it: its node, what the translator
/// reads of it, and its generation key under the push's context.
struct Proxy<'n> {
    node: &'n Node,
    proxy: pilot::ProxyNode,
    key: pilot::GenerationKey,
}

/// Translations made from one push context, by generation key.
#[derive(Default)]
struct Translations {
    context: Weak<pilot::PushContext>,
    by_key: HashMap<pilot::GenerationKey, Arc<Translated>>,
}

/// Type sets by (type, version), and inserts since dead ones were dropped.
#[derive(Default)]
struct SharedSets {
    sets: HashMap<(String, String), Weak<TypeSnapshot>>,
    inserts: usize,
}

/// The state of one incremental EDS push shared by its proxies.
struct EndpointPush<'a> {
    builder: pilot::endpoints::EndpointBuilder<'a>,
    sets: HashMap<SetKey, Arc<TypeSnapshot>>,
}

/// A proxy's previous EDS version and its updated assignments (name,
/// encoded): proxies with equal keys get the same new set.
type SetKey = (String, Vec<(String, Vec<u8>)>);

pub struct ControlPlane {
    cache: Arc<SnapshotCache>,
    context: ArcSwapOption<pilot::PushContext>,
    workloads: Vec<ResolvedWorkload>,
    mesh: api::MeshConfig,
    status: Mutex<ConfigStatus>,
    /// Per node: the last translation diagnostics, to log each only once.
    node_diagnostics: Mutex<BTreeMap<String, Vec<String>>>,
    metrics: crate::metrics::CpMetrics,
    /// Type sets already held by some proxy, by (type, version): proxies
    /// with the same clusters, routes or endpoints (all the proxies of a
    /// namespace, often) share one copy instead of a hundred.
    shared_sets: Mutex<SharedSets>,
    translations: Mutex<Translations>,
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
                metrics: crate::metrics::CpMetrics::default(),
                shared_sets: Mutex::default(),
                translations: Mutex::default(),
            }
        })
    }

    pub fn cache(&self) -> &Arc<SnapshotCache> {
        &self.cache
    }

    pub fn metrics(&self) -> &crate::metrics::CpMetrics {
        &self.metrics
    }

    /// What `/metrics` reports about the configuration's size.
    pub fn config_sizes(&self) -> crate::metrics::ConfigSizes {
        let rejected = self.status().errors.len();
        let Some(ctx) = self.context.load_full() else {
            return crate::metrics::ConfigSizes {
                rejected,
                ..Default::default()
            };
        };
        crate::metrics::ConfigSizes {
            services: ctx.registry().services.len(),
            virtual_services: ctx
                .objects()
                .iter()
                .filter(|o| matches!(o.spec, api::Spec::VirtualService(_)))
                .count(),
            rejected,
        }
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
        let mut errors = snapshot.errors.clone();
        let objects: Vec<api::Object> = snapshot
            .objects
            .iter()
            .filter(|o| !o.is_unsupported())
            .filter(|o| {
                // A Telemetry naming a provider MeshConfig lacks is left
                // out, like any invalid object; the rest keep working.
                let api::Spec::Telemetry(t) = &o.spec else {
                    return true;
                };
                let problems = api::telemetry::check_providers(t, &self.mesh);
                for (path, msg) in &problems {
                    let e = format!("{}: {} {}: {path}: {msg}", o.origin, o.kind, o.key());
                    tracing::warn!(error = %e, "configuration object rejected");
                    errors.push(e);
                }
                problems.is_empty()
            })
            .cloned()
            .collect();
        let previous = self.context.load_full();
        let change = previous.as_deref().map_or(Change::Full, |p| {
            incremental::classify(p.objects(), p.registry(), &objects, &registry)
        });
        let ctx = Arc::new(pilot::PushContext::new(
            objects,
            Arc::new(registry),
            self.mesh.clone(),
        ));
        self.context.store(Some(Arc::clone(&ctx)));
        if let Ok(mut s) = self.status.lock() {
            *s = ConfigStatus {
                generation: snapshot.generation,
                errors,
                warnings,
            };
        }
        let nodes = self.cache.known_nodes();
        match (change, previous) {
            (Change::Nothing, _) => tracing::info!(
                generation = snapshot.generation,
                "configuration changed; no proxy sees the difference"
            ),
            (Change::Endpoints(changed), Some(previous)) => {
                tracing::info!(
                    generation = snapshot.generation,
                    proxies = nodes.len(),
                    services = changed.len(),
                    "endpoints changed; pushing endpoints"
                );
                let mut push = EndpointPush {
                    builder: pilot::endpoints::EndpointBuilder::new(&ctx),
                    sets: HashMap::new(),
                };
                for node in nodes {
                    if !self.push_endpoints(&node, &changed, previous.registry(), &mut push) {
                        self.push_node(&node);
                    }
                }
            }
            _ => {
                tracing::info!(
                    generation = snapshot.generation,
                    proxies = nodes.len(),
                    "configuration changed; pushing"
                );
                self.push_all(&nodes);
            }
        }
    }

    /// Full pushes to `nodes`, generated on every core: each proxy's
    /// translation is independent, and a large mesh has many.
    fn push_all(&self, nodes: &[Node]) {
        let Some(ctx) = self.context.load_full() else {
            return;
        };
        let proxies: Vec<Proxy<'_>> = nodes
            .iter()
            .filter_map(|n| self.identify(n, &ctx))
            .collect();
        // One proxy per generation key first, in parallel; the others then
        // find their translation made.
        let mut keys = std::collections::HashSet::new();
        let (firsts, rest): (Vec<&Proxy<'_>>, Vec<&Proxy<'_>>) =
            proxies.iter().partition(|p| keys.insert(&p.key));
        self.push_parallel(&firsts, &ctx);
        rest.into_iter().for_each(|p| self.push_proxy(p, &ctx));
    }

    fn push_parallel(&self, proxies: &[&Proxy<'_>], ctx: &Arc<pilot::PushContext>) {
        let workers = std::thread::available_parallelism()
            .map_or(1, std::num::NonZeroUsize::get)
            .min(proxies.len());
        if workers <= 1 {
            proxies.iter().for_each(|p| self.push_proxy(p, ctx));
            return;
        }
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| {
                    while let Some(p) =
                        proxies.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
                    {
                        self.push_proxy(p, ctx);
                    }
                });
            }
        });
    }

    /// Reads who `node` is and its generation key under `ctx`.
    fn identify<'n>(&self, node: &'n Node, ctx: &pilot::PushContext) -> Option<Proxy<'n>> {
        match pilot::ProxyNode::from_node(node) {
            Ok(proxy) => {
                let key = pilot::generation_key(&proxy, ctx);
                Some(Proxy { node, proxy, key })
            }
            Err(e) => {
                tracing::warn!(node = %node.id, error = %e, "cannot identify proxy");
                None
            }
        }
    }

    /// The incremental EDS push of one proxy: its last snapshot with the
    /// ClusterLoadAssignments of the `changed` services rebuilt. False when
    /// the proxy needs a full push instead: it has no snapshot yet, one of
    /// its own instances moved (its inbound side follows them), or it has a
    /// non-EDS cluster of a changed service.
    fn push_endpoints(
        &self,
        node: &Node,
        changed: &BTreeSet<(String, u32)>,
        old_registry: &registry::Registry,
        push: &mut EndpointPush<'_>,
    ) -> bool {
        let started = std::time::Instant::now();
        let Ok(proxy) = pilot::ProxyNode::from_node(node) else {
            return false;
        };
        let own_instance_moved = changed.iter().any(|key| {
            [old_registry, push.builder.registry()]
                .iter()
                .filter_map(|r| r.endpoints.get(key))
                .flatten()
                .any(|ep| pilot::endpoints::serves_node(&proxy, ep))
        });
        if own_instance_moved {
            return false;
        }
        let Some(previous) = self.cache.snapshot_for(&node.id) else {
            return false;
        };
        let (Some(clusters), Some(eds)) = (
            previous.get(xds::type_url::CLUSTER),
            previous.get_shared(xds::type_url::ENDPOINT),
        ) else {
            return false;
        };
        let mut updates = Vec::new();
        for name in clusters.resources.keys() {
            let Some((port, _, host)) = pilot::endpoints::parse_outbound_name(name) else {
                continue;
            };
            if !changed.contains(&(host.to_owned(), port)) {
                continue;
            }
            let Some(old) = eds.resources.get(name) else {
                return false;
            };
            let Some(any) = push.builder.packed(&proxy, name) else {
                return false;
            };
            if *old != any {
                updates.push((name.clone(), any));
            }
        }
        if updates.is_empty() {
            return true;
        }
        // Proxies that held the same assignments and get the same updates
        // (every proxy of a namespace, usually) share the new set.
        let key = (
            eds.version.clone(),
            updates
                .iter()
                .map(|(n, a)| (n.clone(), a.value.clone()))
                .collect::<Vec<_>>(),
        );
        let next = match push.sets.get(&key) {
            Some(set) => Arc::clone(set),
            None => {
                let mut resources = eds.resources.clone();
                resources.extend(updates);
                let mut one = xds::Snapshot::new();
                one.set_hashed(xds::type_url::ENDPOINT, resources);
                let Some(set) = one.remove(xds::type_url::ENDPOINT) else {
                    return false;
                };
                push.sets.insert(key, Arc::clone(&set));
                set
            }
        };
        self.metrics.proxy_pushed("endpoints");
        let mut snapshot = (*previous).clone();
        let version = next.version.clone();
        snapshot.set_shared(xds::type_url::ENDPOINT, next);
        self.metrics.pushed(
            &node.id,
            started.elapsed(),
            BTreeMap::from([(xds::type_url::ENDPOINT.to_owned(), version)]),
        );
        self.cache.set_snapshot(&node.id, snapshot);
        true
    }

    /// `snapshot` with each type set replaced by an equal one another proxy
    /// already holds, when there is one. Equal versions are checked for
    /// equal content: a hash collision must never hand a proxy another's
    /// configuration.
    fn share_sets(&self, snapshot: xds::Snapshot) -> xds::Snapshot {
        let Ok(mut shared) = self.shared_sets.lock() else {
            return snapshot;
        };
        let mut out = xds::Snapshot::new();
        for (t, set) in snapshot.shared_types() {
            let key = (t.to_owned(), set.version.clone());
            match shared.sets.get(&key).and_then(Weak::upgrade) {
                Some(held) if held.resources == set.resources => out.set_shared(t, held),
                _ => {
                    shared.sets.insert(key, Arc::downgrade(set));
                    shared.inserts += 1;
                    out.set_shared(t, Arc::clone(set));
                }
            }
        }
        // Forget sets no proxy holds any more, now and then.
        if shared.inserts > 1024 {
            shared.sets.retain(|_, w| w.strong_count() > 0);
            shared.inserts = 0;
        }
        out
    }

    /// Generates and installs the snapshot of one proxy.
    fn push_node(&self, node: &Node) {
        let Some(ctx) = self.context.load_full() else {
            // No configuration yet: the proxy gets its snapshot on the first push.
            return;
        };
        if let Some(p) = self.identify(node, &ctx) {
            self.push_proxy(&p, &ctx);
        }
    }

    fn push_proxy(&self, p: &Proxy<'_>, ctx: &Arc<pilot::PushContext>) {
        let node = p.node;
        let started = std::time::Instant::now();
        let translated = match self.translate(p, ctx) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(node = %node.id, error = %e, "cannot generate configuration");
                return;
            }
        };
        if let Ok(mut seen) = self.node_diagnostics.lock() {
            let previous = seen.insert(node.id.clone(), translated.diagnostics.clone());
            if previous.as_ref() != Some(&translated.diagnostics) {
                for d in &translated.diagnostics {
                    tracing::warn!(node = %node.id, diagnostic = %d, "translation");
                }
            }
        }
        let snapshot = translated.snapshot.clone();
        let took = started.elapsed();
        self.metrics.proxy_pushed("full");
        let previous = self.cache.snapshot_for(&node.id);
        let changed = snapshot
            .types()
            .filter(|(t, ts)| {
                previous
                    .as_deref()
                    .and_then(|p| p.get(t))
                    .is_none_or(|p| p.version != ts.version)
            })
            .map(|(t, ts)| (t.to_string(), ts.version.clone()))
            .collect();
        self.metrics.pushed(&node.id, took, changed);
        self.cache.set_snapshot(&node.id, snapshot);
    }

    /// The translation of `proxy` under `ctx`: made once per generation key
    /// and context, then shared by every proxy with that key.
    fn translate(
        &self,
        p: &Proxy<'_>,
        ctx: &Arc<pilot::PushContext>,
    ) -> Result<Arc<Translated>, pilot::GenerateError> {
        let key = &p.key;
        let lookup = |t: &mut Translations| {
            if !std::ptr::eq(t.context.as_ptr(), Arc::as_ptr(ctx)) {
                t.context = Arc::downgrade(ctx);
                t.by_key.clear();
            }
            t.by_key.get(key).cloned()
        };
        if let Some(done) = self
            .translations
            .lock()
            .ok()
            .and_then(|mut t| lookup(&mut t))
        {
            return Ok(done);
        }
        let generated = pilot::generate(&p.proxy, ctx)?;
        let translated = Arc::new(Translated {
            snapshot: self.share_sets(pilot::to_snapshot(&generated)),
            diagnostics: generated
                .diagnostics
                .iter()
                .map(ToString::to_string)
                .collect(),
        });
        if let Ok(mut t) = self.translations.lock()
            && lookup(&mut t).is_none()
        {
            t.by_key.insert(key.clone(), Arc::clone(&translated));
        }
        Ok(translated)
    }

    /// What a full push would give `node` now, whatever the proxy holds:
    /// the reference incremental pushes are checked against.
    pub fn full_snapshot(&self, node: &Node) -> Option<xds::Snapshot> {
        let ctx = self.context.load_full()?;
        let proxy = pilot::ProxyNode::from_node(node).ok()?;
        pilot::generate(&proxy, &ctx)
            .ok()
            .map(|g| pilot::to_snapshot(&g))
    }

    /// True once every node in `node_ids` has ACKed listeners and clusters.
    /// For each node of `node_ids` that is not synced, one line saying
    /// where it stands (connection, and per type what was sent and ACKed
    /// against what it should hold), for the "not synced" message.
    pub fn unsynced_report(&self, node_ids: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        for id in node_ids {
            if self.all_synced(std::slice::from_ref(id)) {
                continue;
            }
            let snapshot = self.cache.snapshot_for(id);
            let Some(s) = self.cache.node_status(id) else {
                out.push(format!("{id}: never connected"));
                continue;
            };
            let mut line = format!("{id}: connected={}", s.connected);
            for t in [
                xds::type_url::LISTENER,
                xds::type_url::CLUSTER,
                xds::type_url::ROUTE,
                xds::type_url::ENDPOINT,
            ] {
                let want = snapshot
                    .as_deref()
                    .and_then(|snap| snap.get(t))
                    .map_or("-", |ts| ts.version.as_str());
                let (sent, acked, nack) = s.types.get(t).map_or(("-", "-", false), |ts| {
                    (
                        ts.sent_version.as_str(),
                        ts.acked_version.as_str(),
                        ts.last_nack.is_some(),
                    )
                });
                line.push_str(&format!(
                    " {} want={want} sent={sent} acked={acked}{}",
                    xds::type_url::short_name(t),
                    if nack { " NACKED" } else { "" }
                ));
            }
            out.push(line);
        }
        out
    }

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
