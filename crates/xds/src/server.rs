//! A generic ADS server (state-of-the-world and delta) over a snapshot cache.
//!
//! The control plane computes a [`Snapshot`] per proxy and hands it to the
//! [`SnapshotCache`]; every connected stream notices the change and sends
//! what its proxy subscribed to. The same server backs the test harness, so it
//! is deliberately free of any mesh knowledge.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::client::AdsProtocol;
use crate::snapshot::{Snapshot, TypeSnapshot, resource_version};
use crate::type_url;

/// Errors from running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot bind xDS server to {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot bind SDS socket {path}: {source}")]
    BindUnix {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("xDS server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// A rejected update as reported by a proxy.
#[derive(Clone, Debug, PartialEq)]
pub struct Nack {
    pub message: String,
    /// The nonce of the response that was rejected.
    pub nonce: String,
    /// The version the proxy still runs (its last ACKed one).
    pub version: String,
    pub at: SystemTime,
}

/// Per-type sync state of one proxy.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TypeSyncStatus {
    pub sent_version: String,
    pub sent_nonce: String,
    pub acked_version: String,
    pub last_nack: Option<Nack>,
}

/// What the server knows about one proxy (by node id), for `proxy-status`.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxySyncStatus {
    pub node_id: String,
    pub connected: bool,
    pub protocol: AdsProtocol,
    pub types: BTreeMap<String, TypeSyncStatus>,
}

#[derive(Default)]
struct CacheState {
    default: Option<Arc<Snapshot>>,
    nodes: HashMap<String, Arc<Snapshot>>,
    /// The `Node` each proxy last identified itself with (metadata included).
    node_info: BTreeMap<String, Node>,
    status: BTreeMap<String, ProxySyncStatus>,
    open_streams: HashMap<String, usize>,
}

/// Snapshots per node id plus the sync status of every proxy seen.
/// Called when a proxy opens a stream, before anything is sent to it, so the
/// caller can install that node's snapshot from its metadata.
pub type ConnectHook = Box<dyn Fn(&Node) + Send + Sync>;

pub struct SnapshotCache {
    state: Mutex<CacheState>,
    connect_hook: std::sync::OnceLock<ConnectHook>,
    /// Bumped on every snapshot change; each stream re-evaluates what to send.
    /// One shared signal keeps the cache simple; streams whose snapshot did
    /// not change find nothing new and stay quiet.
    snapshots: watch::Sender<u64>,
    /// Bumped on every status change, so callers can await ACKs/NACKs.
    status_changed: watch::Sender<u64>,
}

impl SnapshotCache {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::default(),
            connect_hook: std::sync::OnceLock::new(),
            snapshots: watch::Sender::new(0),
            status_changed: watch::Sender::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, CacheState> {
        // The state stays consistent even if a holder panicked mid-update
        // (every update is a single insert), so keep serving.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Installs the hook run when a proxy connects (once; later calls are ignored).
    pub fn set_connect_hook(&self, hook: ConnectHook) {
        let _ = self.connect_hook.set(hook);
    }

    /// Every node that has connected, with the metadata it sent.
    pub fn known_nodes(&self) -> Vec<Node> {
        self.lock().node_info.values().cloned().collect()
    }

    fn node_connected(&self, node: &Node) {
        self.lock().node_info.insert(node.id.clone(), node.clone());
        if let Some(hook) = self.connect_hook.get() {
            hook(node);
        }
    }

    /// Sets the snapshot of one node and pushes it to its streams.
    pub fn set_snapshot(&self, node_id: &str, snapshot: Snapshot) {
        self.lock()
            .nodes
            .insert(node_id.to_owned(), Arc::new(snapshot));
        self.snapshots.send_modify(|g| *g += 1);
    }

    /// Removes a node's own snapshot; it falls back to the default one.
    pub fn clear_snapshot(&self, node_id: &str) {
        self.lock().nodes.remove(node_id);
        self.snapshots.send_modify(|g| *g += 1);
    }

    /// The snapshot for nodes without a specific one.
    pub fn set_default_snapshot(&self, snapshot: Snapshot) {
        self.lock().default = Some(Arc::new(snapshot));
        self.snapshots.send_modify(|g| *g += 1);
    }

    /// The snapshot a node currently sees.
    pub fn snapshot_for(&self, node_id: &str) -> Option<Arc<Snapshot>> {
        let state = self.lock();
        state.nodes.get(node_id).or(state.default.as_ref()).cloned()
    }

    /// Sync status of every proxy that ever connected.
    pub fn status(&self) -> Vec<ProxySyncStatus> {
        self.lock().status.values().cloned().collect()
    }

    /// Status of one node, if it ever connected.
    pub fn node_status(&self, node_id: &str) -> Option<ProxySyncStatus> {
        self.lock().status.get(node_id).cloned()
    }

    /// Changes whenever any proxy's status changes.
    pub fn watch_status(&self) -> watch::Receiver<u64> {
        self.status_changed.subscribe()
    }

    fn update_type(&self, node_id: &str, type_url: &str, f: impl FnOnce(&mut TypeSyncStatus)) {
        {
            let mut state = self.lock();
            if let Some(st) = state.status.get_mut(node_id) {
                f(st.types.entry(type_url.to_owned()).or_default());
            }
        }
        self.status_changed.send_modify(|g| *g += 1);
    }

    fn stream_opened(&self, node_id: &str, protocol: AdsProtocol) {
        {
            let mut state = self.lock();
            *state.open_streams.entry(node_id.to_owned()).or_default() += 1;
            let st = state
                .status
                .entry(node_id.to_owned())
                .or_insert_with(|| ProxySyncStatus {
                    node_id: node_id.to_owned(),
                    connected: true,
                    protocol,
                    types: BTreeMap::new(),
                });
            st.connected = true;
            st.protocol = protocol;
        }
        self.status_changed.send_modify(|g| *g += 1);
    }

    fn stream_closed(&self, node_id: &str) {
        {
            let mut state = self.lock();
            let open = state.open_streams.entry(node_id.to_owned()).or_default();
            *open = open.saturating_sub(1);
            if *open == 0
                && let Some(st) = state.status.get_mut(node_id)
            {
                st.connected = false;
            }
        }
        self.status_changed.send_modify(|g| *g += 1);
    }

    fn record_ack(&self, node_id: &str, type_url: &str, version: &str) {
        self.update_type(node_id, type_url, |t| t.acked_version = version.to_owned());
    }

    fn record_nack(
        &self,
        node_id: &str,
        type_url: &str,
        nonce: &str,
        version: &str,
        message: &str,
    ) {
        warn!(
            node = node_id,
            r#type = type_url::short_name(type_url),
            nonce,
            message,
            "proxy rejected update"
        );
        self.update_type(node_id, type_url, |t| {
            t.last_nack = Some(Nack {
                message: message.to_owned(),
                nonce: nonce.to_owned(),
                version: version.to_owned(),
                at: SystemTime::now(),
            });
        });
    }

    fn record_sent(&self, node_id: &str, type_url: &str, version: &str, nonce: &str) {
        self.update_type(node_id, type_url, |t| {
            t.sent_version = version.to_owned();
            t.sent_nonce = nonce.to_owned();
        });
    }
}

/// The tonic service. Cheap to clone; all state is in the cache.
#[derive(Clone)]
pub struct AdsService {
    cache: Arc<SnapshotCache>,
    stop: watch::Receiver<bool>,
}

impl AdsService {
    /// A service whose streams end when `stop` becomes true (a dropped
    /// sender means never). Long-lived ADS streams would otherwise keep a graceful
    /// shutdown waiting forever.
    pub fn new(cache: Arc<SnapshotCache>, stop: watch::Receiver<bool>) -> Self {
        Self { cache, stop }
    }
}

/// The ADS service ready to mount into a caller's tonic server. Its streams
/// only end when clients go away; use [`AdsService::new`] to stop them.
pub fn service(cache: Arc<SnapshotCache>) -> AggregatedDiscoveryServiceServer<AdsService> {
    // The sender is dropped at once; streams treat that as "never stop".
    let (_, rx) = watch::channel(false);
    AggregatedDiscoveryServiceServer::new(AdsService::new(cache, rx))
}

/// Binds `addr` and serves ADS until `shutdown` completes.
pub async fn serve(
    addr: SocketAddr,
    cache: Arc<SnapshotCache>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })?;
    serve_listener(listener, cache, shutdown).await
}

/// Serves ADS on an already bound listener (e.g. `127.0.0.1:0` in tests)
/// until `shutdown` completes; open streams are ended with UNAVAILABLE so
/// clients reconnect elsewhere.
pub async fn serve_listener(
    listener: tokio::net::TcpListener,
    cache: Arc<SnapshotCache>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let local = listener.local_addr().ok();
    info!(addr = ?local, "xDS server listening");
    let (stop_tx, stop_rx) = watch::channel(false);
    let svc = AggregatedDiscoveryServiceServer::new(AdsService::new(cache, stop_rx));
    let signal = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    tonic::transport::Server::builder()
        .add_service(svc)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), signal)
        .await?;
    info!(addr = ?local, "xDS server stopped");
    Ok(())
}

type ResponseTx<T> = mpsc::Sender<Result<T, Status>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsService {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        let stream = SotwStream {
            cache: self.cache.clone(),
            tx,
            node_id: String::new(),
            watches: HashMap::new(),
            nonce: 0,
            rewarm_eds: false,
        };
        tokio::spawn(stream.run(request.into_inner(), self.stop.clone()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        let stream = DeltaStream {
            cache: self.cache.clone(),
            tx,
            node_id: String::new(),
            watches: HashMap::new(),
            nonce: 0,
        };
        tokio::spawn(stream.run(request.into_inner(), self.stop.clone()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// SDS on its own gRPC service (what a bootstrap's `sds-grpc` cluster
/// points at, as Istio's agent serves it): the same streams as ADS, for
/// secrets only.
#[tonic::async_trait]
impl SecretDiscoveryService for AdsService {
    type StreamSecretsStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaSecretsStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        self.stream_aggregated_resources(request).await
    }

    async fn delta_secrets(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        self.delta_aggregated_resources(request).await
    }

    async fn fetch_secrets(
        &self,
        _request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        Err(Status::unimplemented("use StreamSecrets"))
    }
}

/// Serves SDS (and ADS) on a Unix socket until `shutdown` completes; the
/// socket file is replaced if it exists.
pub async fn serve_unix(
    path: &std::path::Path,
    cache: Arc<SnapshotCache>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let _ = std::fs::remove_file(path);
    let listener =
        tokio::net::UnixListener::bind(path).map_err(|source| ServerError::BindUnix {
            path: path.to_path_buf(),
            source,
        })?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let svc = AdsService::new(cache, stop_rx);
    let signal = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    tonic::transport::Server::builder()
        .add_service(SecretDiscoveryServiceServer::new(svc.clone()))
        .add_service(AggregatedDiscoveryServiceServer::new(svc))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            signal,
        )
        .await?;
    Ok(())
}

/// Why a stream task ended early.
enum End {
    /// The client went away or the response channel closed.
    Closed,
}

/// The common loop of both protocols: read requests, react to snapshot
/// changes and to shutdown.
trait StreamHandler: Send + 'static {
    type Req: Send + 'static;
    type Resp: Send + 'static;
    const PROTOCOL: AdsProtocol;
    fn node_id_of(req: &Self::Req) -> Option<String>;
    fn node_of(req: &Self::Req) -> Option<&Node>;
    fn set_node(&mut self, node_id: String);
    fn node(&self) -> &str;
    fn cache(&self) -> &SnapshotCache;
    fn tx(&self) -> &ResponseTx<Self::Resp>;
    async fn on_request(&mut self, req: Self::Req) -> Result<(), End>;
    async fn on_snapshot(&mut self) -> Result<(), End>;

    async fn run(mut self, mut requests: Streaming<Self::Req>, mut stop: watch::Receiver<bool>)
    where
        Self: Sized,
    {
        // Every stream must begin with a request that names the node.
        let first = match requests.message().await {
            Ok(Some(first)) => first,
            Ok(None) | Err(_) => return,
        };
        let Some(node_id) = Self::node_id_of(&first) else {
            let _ = self
                .tx()
                .send(Err(Status::invalid_argument(
                    "first request must carry node.id",
                )))
                .await;
            return;
        };
        debug!(node = node_id, protocol = ?Self::PROTOCOL, "ADS stream opened");
        self.set_node(node_id.clone());
        if let Some(node) = Self::node_of(&first) {
            self.cache().node_connected(node);
        }
        let cache_snapshots = self.cache().snapshots.subscribe();
        self.cache().stream_opened(&node_id, Self::PROTOCOL);
        let _ = self
            .serve(first, requests, cache_snapshots, &mut stop)
            .await;
        self.cache().stream_closed(&node_id);
        debug!(node = node_id, "ADS stream closed");
    }

    async fn serve(
        &mut self,
        first: Self::Req,
        mut requests: Streaming<Self::Req>,
        mut snapshots: watch::Receiver<u64>,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), End> {
        snapshots.mark_unchanged();
        self.on_request(first).await?;
        loop {
            tokio::select! {
                req = requests.message() => match req {
                    Ok(Some(req)) => self.on_request(req).await?,
                    Ok(None) => return Ok(()),
                    Err(status) => {
                        debug!(node = self.node(), %status, "ADS stream error");
                        return Ok(());
                    }
                },
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    self.on_snapshot().await?;
                }
                _ = stopped(stop) => {
                    let _ = self.tx().send(Err(Status::unavailable("xDS server shutting down"))).await;
                    return Ok(());
                }
            }
        }
    }
}

/// Completes when `stop` turns true; never if its sender is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// State-of-the-world subscription of one type on one stream.
struct SotwWatch {
    /// `None` for wildcard subscriptions.
    names: Option<BTreeSet<String>>,
    sent_version: Option<String>,
    sent_nonce: String,
    /// The set the last response came from: for types requested by name, a
    /// push sends only the resources that differ from it. (The set, not its
    /// whole snapshot, which would keep every other type's old set alive.)
    sent: Option<Arc<TypeSnapshot>>,
}

struct SotwStream {
    cache: Arc<SnapshotCache>,
    tx: ResponseTx<DiscoveryResponse>,
    node_id: String,
    watches: HashMap<String, SotwWatch>,
    nonce: u64,
    /// A changed cluster set went out: Envoy re-warms the changed clusters
    /// and asks for their endpoints again with an unchanged request, which
    /// must be answered (as Istio pushes EDS with every CDS push) or the
    /// clusters wait for `initial_fetch_timeout`.
    rewarm_eds: bool,
}

impl SotwStream {
    /// Sends the type's current set if it changed since the last send (or
    /// always when `force`, answering a request).
    ///
    /// A push (not `force`) of a type requested by name (EDS, RDS, SDS)
    /// carries only the resources that changed, as Istio's incremental EDS
    /// does: in state-of-the-world xDS only LDS and CDS responses must be
    /// complete, and Envoy keeps a named resource a response omits. The
    /// version still moves, so the ACK tells that the proxy is current.
    async fn send_type(&mut self, type_url: &str, force: bool) -> Result<(), End> {
        let Some(snapshot) = self.cache.snapshot_for(&self.node_id) else {
            return Ok(());
        };
        let Some(ts) = snapshot.get_shared(type_url) else {
            return Ok(());
        };
        let Some(watch) = self.watches.get_mut(type_url) else {
            return Ok(());
        };
        if !force && watch.sent_version.as_deref() == Some(ts.version.as_str()) {
            return Ok(());
        }
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        let previous = match (&watch.names, &watch.sent) {
            (Some(_), Some(sent)) if !force => Some(sent),
            _ => None,
        };
        let resources = ts
            .resources
            .iter()
            .filter(|(name, _)| watch.names.as_ref().is_none_or(|n| n.contains(*name)))
            .filter(|(name, any)| previous.is_none_or(|p| p.resources.get(*name) != Some(*any)))
            .map(|(_, any)| type_url::to_wire(any.clone()))
            .collect::<Vec<_>>();
        debug!(
            node = self.node_id,
            r#type = type_url::short_name(type_url),
            version = ts.version,
            nonce,
            count = resources.len(),
            "sending"
        );
        if type_url == type_url::CLUSTER && watch.sent_version.is_some() {
            self.rewarm_eds = true;
        }
        watch.sent_version = Some(ts.version.clone());
        watch.sent_nonce = nonce.clone();
        watch.sent = Some(Arc::clone(ts));
        let response = DiscoveryResponse {
            version_info: ts.version.clone(),
            resources,
            type_url: type_url.to_owned(),
            nonce: nonce.clone(),
            ..Default::default()
        };
        self.cache
            .record_sent(&self.node_id, type_url, &ts.version, &nonce);
        self.tx.send(Ok(response)).await.map_err(|_| End::Closed)
    }
}

impl StreamHandler for SotwStream {
    type Req = DiscoveryRequest;
    type Resp = DiscoveryResponse;
    const PROTOCOL: AdsProtocol = AdsProtocol::StateOfTheWorld;

    fn node_of(req: &DiscoveryRequest) -> Option<&Node> {
        req.node.as_ref()
    }
    fn node_id_of(req: &DiscoveryRequest) -> Option<String> {
        req.node
            .as_ref()
            .map(|n| n.id.clone())
            .filter(|id| !id.is_empty())
    }
    fn set_node(&mut self, node_id: String) {
        self.node_id = node_id;
    }
    fn node(&self) -> &str {
        &self.node_id
    }
    fn cache(&self) -> &SnapshotCache {
        &self.cache
    }
    fn tx(&self) -> &ResponseTx<DiscoveryResponse> {
        &self.tx
    }

    async fn on_request(&mut self, req: DiscoveryRequest) -> Result<(), End> {
        let t = req.type_url.clone();
        if t.is_empty() {
            return Ok(());
        }
        let names = (!type_url::is_wildcard(&t) && !req.resource_names.iter().any(|n| n == "*"))
            .then(|| req.resource_names.iter().cloned().collect::<BTreeSet<_>>());
        let respond = match self.watches.get_mut(&t) {
            None => {
                self.watches.insert(
                    t.clone(),
                    SotwWatch {
                        names,
                        sent_version: None,
                        sent_nonce: String::new(),
                        sent: None,
                    },
                );
                true
            }
            Some(w) if req.response_nonce.is_empty() => {
                // A fresh request for a type already watched: answer again.
                w.names = names;
                true
            }
            Some(w) if req.response_nonce != w.sent_nonce => {
                // A newer response is in flight; the client will answer that one.
                debug!(
                    node = self.node_id,
                    nonce = req.response_nonce,
                    "ignoring stale request"
                );
                return Ok(());
            }
            Some(w) => {
                if let Some(err) = &req.error_detail {
                    self.cache.record_nack(
                        &self.node_id,
                        &t,
                        &req.response_nonce,
                        &req.version_info,
                        &err.message,
                    );
                } else {
                    self.cache.record_ack(&self.node_id, &t, &req.version_info);
                }
                let rewarm = t == type_url::ENDPOINT && std::mem::take(&mut self.rewarm_eds);
                let changed = w.names != names || rewarm;
                w.names = names;
                changed
            }
        };
        if respond {
            self.send_type(&t, true).await?;
        }
        Ok(())
    }

    async fn on_snapshot(&mut self) -> Result<(), End> {
        let types: Vec<String> = self.watches.keys().cloned().collect();
        for t in ordered(types) {
            self.send_type(&t, false).await?;
        }
        Ok(())
    }
}

/// Delta subscription of one type on one stream.
struct DeltaWatch {
    wildcard: bool,
    names: BTreeSet<String>,
    /// What the client holds: name → version (hash of the resource).
    known: BTreeMap<String, String>,
    sent_nonce: String,
    /// The set the last response was computed from: a resource still equal
    /// to its entry there, and known to the client, is not hashed again.
    sent: Option<Arc<TypeSnapshot>>,
}

struct DeltaStream {
    cache: Arc<SnapshotCache>,
    tx: ResponseTx<DeltaDiscoveryResponse>,
    node_id: String,
    watches: HashMap<String, DeltaWatch>,
    nonce: u64,
}

impl DeltaStream {
    /// Sends what changed for the type since the client's known state; with
    /// `force`, sends even an empty response (answers an initial request).
    async fn send_diff(&mut self, type_url: &str, force: bool) -> Result<(), End> {
        let snapshot = self.cache.snapshot_for(&self.node_id);
        let Some(ts) = snapshot.as_deref().and_then(|s| s.get_shared(type_url)) else {
            return Ok(());
        };
        let Some(watch) = self.watches.get_mut(type_url) else {
            return Ok(());
        };
        let (resources, removed) = diff(watch, ts);
        watch.sent = Some(Arc::clone(ts));
        if resources.is_empty() && removed.is_empty() && !force {
            return Ok(());
        }
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        watch.sent_nonce = nonce.clone();
        debug!(
            node = self.node_id,
            r#type = type_url::short_name(type_url),
            version = ts.version,
            nonce,
            updated = resources.len(),
            removed = removed.len(),
            "sending delta"
        );
        let response = DeltaDiscoveryResponse {
            system_version_info: ts.version.clone(),
            resources,
            type_url: type_url.to_owned(),
            removed_resources: removed,
            nonce: nonce.clone(),
            ..Default::default()
        };
        self.cache
            .record_sent(&self.node_id, type_url, &ts.version, &nonce);
        self.tx.send(Ok(response)).await.map_err(|_| End::Closed)
    }
}

/// Computes updated and removed resources and records them as known.
fn diff(watch: &mut DeltaWatch, ts: &TypeSnapshot) -> (Vec<Resource>, Vec<String>) {
    let mut updated = Vec::new();
    let sent = watch.sent.clone();
    for (name, any) in &ts.resources {
        if !watch.wildcard && !watch.names.contains(name) {
            continue;
        }
        // Unchanged since the last response and held by the client: the
        // common case of a push, decided without hashing.
        if watch.known.contains_key(name)
            && sent
                .as_ref()
                .is_some_and(|s| s.resources.get(name) == Some(any))
        {
            continue;
        }
        let version = ts
            .resource_version(name)
            .map_or_else(|| resource_version(any), str::to_owned);
        if watch.known.get(name) == Some(&version) {
            continue;
        }
        watch.known.insert(name.clone(), version.clone());
        updated.push(Resource {
            name: name.clone(),
            version,
            resource: Some(type_url::to_wire(any.clone())),
            ..Default::default()
        });
    }
    let removed: Vec<String> = watch
        .known
        .keys()
        .filter(|n| !ts.resources.contains_key(*n))
        .cloned()
        .collect();
    for n in &removed {
        watch.known.remove(n);
    }
    (updated, removed)
}

impl StreamHandler for DeltaStream {
    type Req = DeltaDiscoveryRequest;
    type Resp = DeltaDiscoveryResponse;
    const PROTOCOL: AdsProtocol = AdsProtocol::Delta;

    fn node_of(req: &DeltaDiscoveryRequest) -> Option<&Node> {
        req.node.as_ref()
    }
    fn node_id_of(req: &DeltaDiscoveryRequest) -> Option<String> {
        req.node
            .as_ref()
            .map(|n| n.id.clone())
            .filter(|id| !id.is_empty())
    }
    fn set_node(&mut self, node_id: String) {
        self.node_id = node_id;
    }
    fn node(&self) -> &str {
        &self.node_id
    }
    fn cache(&self) -> &SnapshotCache {
        &self.cache
    }
    fn tx(&self) -> &ResponseTx<DeltaDiscoveryResponse> {
        &self.tx
    }

    async fn on_request(&mut self, req: DeltaDiscoveryRequest) -> Result<(), End> {
        let t = req.type_url.clone();
        if t.is_empty() {
            return Ok(());
        }
        let Some(watch) = self.watches.get_mut(&t) else {
            // First request of this type on this stream: the client tells us
            // what it already has, so a reconnect does not resend it all.
            let explicit_wildcard = req.resource_names_subscribe.iter().any(|n| n == "*");
            let wildcard = explicit_wildcard
                || (type_url::is_wildcard(&t) && req.resource_names_subscribe.is_empty());
            let names = req
                .resource_names_subscribe
                .iter()
                .filter(|n| *n != "*")
                .cloned()
                .collect();
            let known = req.initial_resource_versions.into_iter().collect();
            self.watches.insert(
                t.clone(),
                DeltaWatch {
                    wildcard,
                    names,
                    known,
                    sent_nonce: String::new(),
                    sent: None,
                },
            );
            return self.send_diff(&t, true).await;
        };
        if !req.response_nonce.is_empty() && req.response_nonce == watch.sent_nonce {
            let current = self
                .cache
                .node_status(&self.node_id)
                .and_then(|s| s.types.get(&t).cloned())
                .unwrap_or_default();
            if let Some(err) = &req.error_detail {
                // Delta NACKs carry no version; the proxy still runs the last ACKed one.
                self.cache.record_nack(
                    &self.node_id,
                    &t,
                    &req.response_nonce,
                    &current.acked_version,
                    &err.message,
                );
            } else {
                self.cache
                    .record_ack(&self.node_id, &t, &current.sent_version);
            }
        }
        // Subscription changes are independent of ACKs in delta xDS.
        let mut subscribed = false;
        for n in &req.resource_names_subscribe {
            if n == "*" {
                watch.wildcard = true;
            } else {
                watch.names.insert(n.clone());
            }
            subscribed = true;
        }
        for n in &req.resource_names_unsubscribe {
            if n == "*" {
                watch.wildcard = false;
            } else {
                watch.names.remove(n);
                watch.known.remove(n);
            }
        }
        if subscribed {
            self.send_diff(&t, false).await?;
        }
        Ok(())
    }

    async fn on_snapshot(&mut self) -> Result<(), End> {
        let types: Vec<String> = self.watches.keys().cloned().collect();
        for t in ordered(types) {
            self.send_diff(&t, false).await?;
        }
        Ok(())
    }
}

/// Orders types so clusters go out before listeners (Envoy's warming order).
fn ordered(mut types: Vec<String>) -> Vec<String> {
    let rank = |t: &str| {
        type_url::APPLY_ORDER
            .iter()
            .position(|o| *o == t)
            .unwrap_or(usize::MAX)
    };
    types.sort_by(|a, b| rank(a).cmp(&rank(b)).then_with(|| a.cmp(b)));
    types
}
