//! The proxy's configuration state: static resources from the bootstrap plus
//! whatever xDS delivered, compiled and published.
//!
//! Every update is compiled completely before anything changes, so a bad
//! update is NACKed and the last good configuration keeps serving. Listeners
//! warm until the routes and secrets they name have arrived, as in Envoy;
//! until then an older version of the same listener (if any) keeps serving.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use envoy_types::pb::envoy::config::cluster::v3::Cluster as ClusterProto;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use prost::Message;
use route::RouteTable;

use crate::cluster::{Cluster, ClusterSpec};
use crate::error::{ConfigError, ErrorScope};
use crate::listener::{ListenerConfig, ListenerManager};
use crate::snapshot::{SharedSnapshot, Snapshot};

/// Tells the xDS client which RDS/EDS/SDS names to subscribe to.
pub type InterestFn = Box<dyn Fn(&str, BTreeSet<String>) + Send + Sync>;

/// A resource with the version and time it was accepted, for `/config_dump`.
#[derive(Debug, Clone)]
pub struct Versioned<T> {
    pub version: String,
    pub updated: SystemTime,
    pub resource: T,
}

#[derive(Debug, Default)]
pub struct State {
    pub static_listeners: BTreeMap<String, Versioned<Listener>>,
    pub static_clusters: BTreeMap<String, Versioned<ClusterProto>>,
    pub static_secrets: BTreeMap<String, Versioned<Secret>>,
    pub listeners: BTreeMap<String, Versioned<Listener>>,
    pub clusters: BTreeMap<String, Versioned<ClusterProto>>,
    pub routes: BTreeMap<String, Versioned<RouteConfiguration>>,
    pub endpoints: BTreeMap<String, Versioned<ClusterLoadAssignment>>,
    /// A digest of each assignment's bytes as received, to skip decoding
    /// the unchanged ones of the next update.
    endpoint_digests: HashMap<String, u64>,
    pub secrets: BTreeMap<String, Versioned<Secret>>,
    /// Secrets the agent provides in-process (the workload certificate as
    /// `default`, the trust bundle as `ROOTCA`): never requested over xDS.
    pub local_secrets: BTreeMap<String, Versioned<Secret>>,
    /// Listeners waiting for a route or secret, with what they wait for.
    pub warming: BTreeMap<String, String>,
    specs: HashMap<String, ClusterSpec>,
    tables: HashMap<String, Arc<RouteTable>>,
    active_listeners: HashMap<String, (u64, Arc<ListenerConfig>)>,
}

pub struct ConfigStore {
    snapshot: SharedSnapshot,
    listeners: ListenerManager,
    state: Mutex<State>,
    interest: OnceLock<InterestFn>,
}

impl std::fmt::Debug for ConfigStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigStore").finish_non_exhaustive()
    }
}

pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

fn versioned<T>(version: &str, resource: T) -> Versioned<T> {
    Versioned {
        version: version.to_string(),
        updated: SystemTime::now(),
        resource,
    }
}

/// A digest of a resource's encoding, to tell an unchanged one (in this
/// process only).
fn digest(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

fn decode_all<M: Message + Default>(
    kind: &str,
    resources: &BTreeMap<String, Vec<u8>>,
) -> Result<BTreeMap<String, M>, String> {
    let mut out = BTreeMap::new();
    for (name, bytes) in resources {
        let m = M::decode(bytes.as_slice())
            .map_err(|e| format!("{kind} '{name}': cannot decode: {e}"))?;
        out.insert(name.clone(), m);
    }
    Ok(out)
}

impl ConfigStore {
    pub fn new(snapshot: SharedSnapshot, listeners: ListenerManager) -> Self {
        Self {
            snapshot,
            listeners,
            state: Mutex::new(State::default()),
            interest: OnceLock::new(),
        }
    }

    pub fn set_interest_fn(&self, f: InterestFn) {
        let _ = self.interest.set(f);
    }

    pub fn listener_manager(&self) -> &ListenerManager {
        &self.listeners
    }

    pub fn snapshot(&self) -> &SharedSnapshot {
        &self.snapshot
    }

    /// Read access for admin output.
    pub fn with_state<R>(&self, f: impl FnOnce(&State) -> R) -> Option<R> {
        self.state.lock().ok().map(|s| f(&s))
    }

    /// Replaces the agent-provided secrets (on start and on every
    /// certificate rotation) and rebuilds what uses them; connections
    /// already open keep their certificates.
    pub fn set_local_secrets(&self, secrets: Vec<Secret>) -> Result<(), String> {
        let mut state = self.state.lock().map_err(|_| "state poisoned")?;
        let version = format!("{:?}", SystemTime::now());
        state.local_secrets = secrets
            .into_iter()
            .map(|s| (s.name.clone(), versioned(&version, s)))
            .collect();
        self.publish(&mut state)
    }

    /// Loads the bootstrap's static resources. Errors here are fatal.
    pub fn load_static(
        &self,
        listeners: Vec<Listener>,
        clusters: Vec<ClusterProto>,
        secrets: Vec<Secret>,
    ) -> Result<(), String> {
        let mut state = self.state.lock().map_err(|_| "state poisoned")?;
        for s in secrets {
            state
                .static_secrets
                .insert(s.name.clone(), versioned("", s));
        }
        for c in clusters {
            if state.static_clusters.contains_key(&c.name) {
                return Err(format!(
                    "cluster '{}': duplicate name in static_resources",
                    c.name
                ));
            }
            let spec = ClusterSpec::compile(&c).map_err(|e| e.to_string())?;
            state.specs.insert(c.name.clone(), spec);
            state
                .static_clusters
                .insert(c.name.clone(), versioned("", c));
        }
        for l in listeners {
            if state.static_listeners.contains_key(&l.name) {
                return Err(format!(
                    "listener '{}': duplicate name in static_resources",
                    l.name
                ));
            }
            state
                .static_listeners
                .insert(l.name.clone(), versioned("", l));
        }
        self.publish(&mut state)
    }

    /// Applies a complete set of one resource type from xDS.
    pub fn apply(
        &self,
        type_url: &str,
        version: &str,
        resources: &BTreeMap<String, Vec<u8>>,
    ) -> Result<(), String> {
        let mut state = self.state.lock().map_err(|_| "state poisoned")?;
        match type_url {
            CLUSTER => {
                let protos: BTreeMap<String, ClusterProto> = decode_all("cluster", resources)?;
                let mut specs = HashMap::new();
                let mut errors = Vec::new();
                for (name, c) in &protos {
                    if state.static_clusters.contains_key(name) {
                        errors.push(format!("cluster '{name}': conflicts with a static cluster"));
                        continue;
                    }
                    // An unchanged cluster keeps its spec, and with it its
                    // circuit-breaker counters and running cluster value.
                    if let Some(prev) = state.specs.get(name)
                        && prev.proto == *c
                    {
                        specs.insert(name.clone(), prev.clone());
                        continue;
                    }
                    match ClusterSpec::compile(c) {
                        Ok(s) => {
                            specs.insert(name.clone(), s);
                        }
                        Err(e) => errors.push(e.to_string()),
                    }
                }
                if !errors.is_empty() {
                    return Err(errors.join("; "));
                }
                let statics: BTreeSet<String> = state.static_clusters.keys().cloned().collect();
                state.specs.retain(|name, _| statics.contains(name));
                state.specs.extend(specs);
                state.clusters = protos
                    .into_iter()
                    .map(|(n, c)| (n, versioned(version, c)))
                    .collect();
                let eds: BTreeSet<String> = state
                    .specs
                    .values()
                    .filter_map(|s| s.eds_name().map(str::to_string))
                    .collect();
                self.declare_interest(ENDPOINT, eds);
            }
            ENDPOINT => {
                // A push moves a few assignments out of possibly thousands:
                // decode and check only those whose bytes changed.
                let mut digests = HashMap::with_capacity(resources.len());
                let mut fresh = BTreeMap::new();
                for (name, bytes) in resources {
                    let d = digest(bytes);
                    digests.insert(name.clone(), d);
                    let held = state.endpoints.contains_key(name)
                        && state.endpoint_digests.get(name) == Some(&d);
                    if !held {
                        let cla = ClusterLoadAssignment::decode(bytes.as_slice()).map_err(|e| {
                            format!("cluster_load_assignment '{name}': cannot decode: {e}")
                        })?;
                        fresh.insert(name.clone(), cla);
                    }
                }
                // Validate against the clusters that use them before accepting.
                let mut users: HashMap<&str, Vec<&ClusterSpec>> = HashMap::new();
                if !fresh.is_empty() {
                    for spec in state.specs.values() {
                        if let Some(n) = spec.eds_name() {
                            users.entry(n).or_default().push(spec);
                        }
                    }
                }
                for (name, cla) in &fresh {
                    for spec in users.get(name.as_str()).into_iter().flatten() {
                        spec.instantiate(Some(cla), None)
                            .map_err(|e| e.to_string())?;
                    }
                }
                let mut held = std::mem::take(&mut state.endpoints);
                let mut next = BTreeMap::new();
                for name in resources.keys() {
                    let entry = match fresh.remove(name) {
                        Some(cla) => versioned(version, cla),
                        None => match held.remove(name) {
                            Some(v) => v,
                            None => continue,
                        },
                    };
                    next.insert(name.clone(), entry);
                }
                state.endpoints = next;
                state.endpoint_digests = digests;
            }
            ROUTE => {
                let protos: BTreeMap<String, RouteConfiguration> =
                    decode_all("route_configuration", resources)?;
                let mut tables = HashMap::new();
                for (name, rc) in &protos {
                    let table = RouteTable::compile(rc).map_err(|e| {
                        ErrorScope::new("route_configuration", name)
                            .err("", e.to_string())
                            .to_string()
                    })?;
                    tables.insert(name.clone(), Arc::new(table));
                }
                state.tables = tables;
                state.routes = protos
                    .into_iter()
                    .map(|(n, r)| (n, versioned(version, r)))
                    .collect();
            }
            LISTENER => {
                let protos: BTreeMap<String, Listener> = decode_all("listener", resources)?;
                let secrets = all_secrets(&state);
                let mut errors = Vec::new();
                for (name, l) in &protos {
                    if state.static_listeners.contains_key(name) {
                        errors.push(format!(
                            "listener '{name}': conflicts with a static listener"
                        ));
                        continue;
                    }
                    match ListenerConfig::compile(l, &secrets) {
                        Err(e) => errors.push(e.to_string()),
                        Ok(Ok(cfg)) => {
                            if let Err(e) =
                                cfg.check_route_clusters(&|c| state.specs.contains_key(c))
                            {
                                errors.push(e.to_string());
                            }
                        }
                        Ok(Err(_warming)) => {}
                    }
                }
                if !errors.is_empty() {
                    return Err(errors.join("; "));
                }
                state.listeners = protos
                    .into_iter()
                    .map(|(n, l)| (n, versioned(version, l)))
                    .collect();
            }
            SECRET => {
                let protos: BTreeMap<String, Secret> = decode_all("secret", resources)?;
                state.secrets = protos
                    .into_iter()
                    .map(|(n, s)| (n, versioned(version, s)))
                    .collect();
            }
            other => return Err(format!("unsupported resource type '{other}'")),
        }
        self.publish(&mut state)
    }

    fn declare_interest(&self, type_url: &str, names: BTreeSet<String>) {
        if let Some(f) = self.interest.get() {
            f(type_url, names);
        }
    }

    /// Rebuilds the snapshot and reconciles listeners from `state`.
    fn publish(&self, state: &mut State) -> Result<(), String> {
        let previous = self.snapshot.load_full();
        let secrets = all_secrets(state);
        let mut clusters = HashMap::new();
        // New cluster values, with the ones they replace, to start once all are built.
        let mut fresh: Vec<(Arc<Cluster>, Option<Arc<Cluster>>)> = Vec::new();
        let mut cluster_sds = BTreeSet::new();
        for (name, spec) in &state.specs {
            let needs = spec.transports.secret_names();
            cluster_sds.extend(needs.into_iter().filter(|s| !is_local_secret(state, s)));
            // TLS transports need their secrets: until SDS delivers them the
            // cluster warms (its previous version, if any, keeps serving).
            let tls = match spec.transports.build(&secrets) {
                Ok(t) => t,
                Err((_, crate::tls::TlsError::MissingSecret(secret))) => {
                    tracing::info!(cluster = %name, %secret, "cluster warming");
                    if let Some(prev) = previous.clusters.get(name) {
                        clusters.insert(name.clone(), Arc::clone(prev));
                    }
                    continue;
                }
                Err((field, e)) => {
                    let (field, msg) = crate::cluster::transport::field_error(&field, e);
                    return Err(ErrorScope::new("cluster", name).err(field, msg).to_string());
                }
            };
            let cla = spec
                .eds_name()
                .and_then(|n| state.endpoints.get(n))
                .map(|v| &v.resource);
            if spec.eds_name().is_some() && cla.is_none() {
                // Warming: keep serving the previous version until endpoints arrive.
                if let Some(prev) = previous.clusters.get(name) {
                    clusters.insert(name.clone(), Arc::clone(prev));
                }
                continue;
            }
            let prev = previous.clusters.get(name);
            if let Some(prev) = prev
                && prev.built_from(spec, cla, &tls)
            {
                clusters.insert(name.clone(), Arc::clone(prev));
                continue;
            }
            let cluster: Cluster = spec
                .instantiate_with(cla, prev.map(|c| c.as_ref()), &tls)
                .map_err(|e| e.to_string())?;
            let cluster = Arc::new(cluster);
            fresh.push((Arc::clone(&cluster), prev.cloned()));
            clusters.insert(name.clone(), cluster);
        }
        // Outlier detection and health checking move to the new values.
        for (cluster, prev) in &fresh {
            cluster.start(prev.as_deref());
        }
        let routes = state.tables.clone();
        self.snapshot.store(Arc::new(Snapshot { clusters, routes }));

        // Listeners: compile, skip the ones still warming.
        let mut wanted = Vec::new();
        let mut rds = BTreeSet::new();
        let mut sds = cluster_sds;
        let mut warming = BTreeMap::new();
        let mut active = HashMap::new();
        let all: Vec<(String, Listener)> = state
            .static_listeners
            .iter()
            .chain(state.listeners.iter())
            .map(|(n, v)| (n.clone(), v.resource.clone()))
            .collect();
        for (name, proto) in all {
            let deps = ListenerConfig::dependencies(&proto);
            rds.extend(deps.routes.iter().cloned());
            sds.extend(
                deps.secrets
                    .iter()
                    .filter(|s| !is_local_secret(state, s))
                    .cloned(),
            );
            let missing_route = deps.routes.iter().find(|r| !state.tables.contains_key(*r));
            let fingerprint = fingerprint(&proto, &deps.secrets, &secrets);
            let compiled = match missing_route {
                Some(r) => Err(format!("route '{r}'")),
                None => match state.active_listeners.get(&name) {
                    Some((fp, cfg)) if *fp == fingerprint => Ok(Arc::clone(cfg)),
                    _ => match ListenerConfig::compile(&proto, &secrets) {
                        Ok(Ok(cfg)) => {
                            cfg.check_route_clusters(&|c| state.specs.contains_key(c))
                                .map_err(|e| e.to_string())?;
                            Ok(Arc::new(cfg))
                        }
                        Ok(Err(secret)) => Err(format!("secret '{secret}'")),
                        Err(e) => return Err(e.to_string()),
                    },
                },
            };
            match compiled {
                Ok(cfg) => {
                    active.insert(name, (fingerprint, Arc::clone(&cfg)));
                    wanted.push(cfg);
                }
                Err(waiting_for) => {
                    tracing::info!(listener = %name, waiting_for, "listener warming");
                    if let Some((fp, old)) = state.active_listeners.get(&name) {
                        active.insert(name.clone(), (*fp, Arc::clone(old)));
                        wanted.push(Arc::clone(old));
                    }
                    warming.insert(name, waiting_for);
                }
            }
        }
        state.active_listeners = active;
        state.warming = warming;
        self.declare_interest(ROUTE, rds);
        self.declare_interest(SECRET, sds);
        self.listeners.reconcile(wanted)
    }
}

impl State {
    /// Every secret the proxy holds: static, local (the workload
    /// certificate) and from SDS.
    pub fn every_secret(&self) -> impl Iterator<Item = &Secret> {
        self.static_secrets
            .values()
            .chain(self.local_secrets.values())
            .chain(self.secrets.values())
            .map(|v| &v.resource)
    }
}

/// Secrets this proxy has without asking the control plane.
fn is_local_secret(state: &State, name: &str) -> bool {
    state.static_secrets.contains_key(name) || state.local_secrets.contains_key(name)
}

fn all_secrets(state: &State) -> crate::tls::Secrets {
    state
        .static_secrets
        .iter()
        .chain(state.local_secrets.iter())
        .chain(state.secrets.iter())
        .map(|(n, v)| (n.clone(), v.resource.clone()))
        .collect()
}

/// Identifies a listener's compiled form: its resource plus the secrets it uses.
fn fingerprint(proto: &Listener, secret_names: &[String], secrets: &crate::tls::Secrets) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    proto.encode_to_vec().hash(&mut h);
    for name in secret_names {
        if let Some(s) = secrets.get(name) {
            s.encode_to_vec().hash(&mut h);
        }
    }
    h.finish()
}

impl From<ConfigError> for String {
    fn from(e: ConfigError) -> Self {
        e.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::cluster;
    use envoy_types::pb::envoy::config::core::v3::{
        AggregatedConfigSource, ConfigSource, config_source,
    };

    fn eds_cluster(name: &str) -> Vec<u8> {
        ClusterProto {
            name: name.into(),
            connect_timeout: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: 1,
                nanos: 0,
            }),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32,
            )),
            eds_cluster_config: Some(cluster::EdsClusterConfig {
                eds_config: Some(ConfigSource {
                    config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
                        AggregatedConfigSource::default(),
                    )),
                    ..Default::default()
                }),
                service_name: String::new(),
            }),
            ..Default::default()
        }
        .encode_to_vec()
    }

    fn cla(name: &str, weight_tag: u32) -> Vec<u8> {
        ClusterLoadAssignment {
            cluster_name: name.into(),
            policy: Some(
                envoy_types::pb::envoy::config::endpoint::v3::cluster_load_assignment::Policy {
                    overprovisioning_factor: Some(envoy_types::pb::google::protobuf::UInt32Value {
                        value: weight_tag,
                    }),
                    ..Default::default()
                },
            ),
            ..Default::default()
        }
        .encode_to_vec()
    }

    fn versions(store: &ConfigStore) -> BTreeMap<String, String> {
        let state = store.state.lock().expect("state");
        state
            .endpoints
            .iter()
            .map(|(n, v)| (n.clone(), v.version.clone()))
            .collect()
    }

    /// An EDS update decodes only the assignments whose bytes changed: the
    /// others keep the version they arrived with; a bad one changes nothing.
    #[tokio::test]
    async fn endpoint_updates_keep_unchanged_assignments() {
        let snapshot = SharedSnapshot::default();
        let manager = ListenerManager::new(Arc::clone(&snapshot), std::time::Duration::ZERO);
        let store = ConfigStore::new(snapshot, manager);
        let clusters = BTreeMap::from([
            ("a".to_owned(), eds_cluster("a")),
            ("b".to_owned(), eds_cluster("b")),
        ]);
        store.apply(CLUSTER, "c1", &clusters).expect("cds");
        let v1 = BTreeMap::from([
            ("a".to_owned(), cla("a", 140)),
            ("b".to_owned(), cla("b", 140)),
        ]);
        store.apply(ENDPOINT, "v1", &v1).expect("eds v1");
        let v2 = BTreeMap::from([
            ("a".to_owned(), cla("a", 140)),
            ("b".to_owned(), cla("b", 150)),
        ]);
        store.apply(ENDPOINT, "v2", &v2).expect("eds v2");
        assert_eq!(
            versions(&store),
            BTreeMap::from([("a".into(), "v1".into()), ("b".into(), "v2".into())])
        );
        let bad = BTreeMap::from([
            ("a".to_owned(), cla("a", 140)),
            ("b".to_owned(), vec![0xff, 0xff]),
        ]);
        assert!(store.apply(ENDPOINT, "v3", &bad).is_err());
        assert_eq!(
            versions(&store),
            BTreeMap::from([("a".into(), "v1".into()), ("b".into(), "v2".into())])
        );
        // An assignment no longer sent is gone.
        let only_a = BTreeMap::from([("a".to_owned(), cla("a", 140))]);
        store.apply(ENDPOINT, "v4", &only_a).expect("eds v4");
        assert_eq!(
            versions(&store),
            BTreeMap::from([("a".into(), "v1".into())])
        );
    }
}
