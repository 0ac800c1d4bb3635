//! An Envoy-compatible ADS client (state-of-the-world and delta).
//!
//! One task owns the stream and all subscription state. Consumers see the
//! complete current set of each type through [`ResourceSink::apply`], decide
//! whether to accept it (ACK) or reject it (NACK), and steer the named
//! subscriptions (RDS, EDS, SDS) through an [`AdsHandle`]. When the control
//! plane goes away the sink keeps its last good config; the client reconnects
//! with backoff and tells the server what it already has.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::core::v3::api_config_source::ApiType;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, info, warn};

use crate::snapshot::Resources;
use crate::type_url;

/// gRPC `INVALID_ARGUMENT`, the code Envoy puts in a NACK's error_detail.
const INVALID_ARGUMENT: i32 = 3;

/// Which ADS variant to speak; Envoy's `ApiConfigSource.api_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AdsProtocol {
    /// `GRPC`: `StreamAggregatedResources`, full sets per response.
    StateOfTheWorld,
    /// `DELTA_GRPC`: `DeltaAggregatedResources`, changes only.
    Delta,
}

impl AdsProtocol {
    /// Maps `envoy.config.core.v3.ApiConfigSource.api_type`; `None` for REST
    /// and the deprecated values, which Trellis does not support.
    pub fn from_api_type(api_type: i32) -> Option<Self> {
        match ApiType::try_from(api_type).ok()? {
            ApiType::Grpc | ApiType::AggregatedGrpc => Some(Self::StateOfTheWorld),
            ApiType::DeltaGrpc | ApiType::AggregatedDeltaGrpc => Some(Self::Delta),
            _ => None,
        }
    }
}

/// The consumer of xDS resources (the proxy).
pub trait ResourceSink: Send + Sync + 'static {
    /// The complete current set of resources of one type (the client maintains it for delta too).
    /// Return Err(message) to NACK; the client then keeps its previous set for that type
    /// and sends a NACK (error_detail with code 3 INVALID_ARGUMENT and the message,
    /// version_info = last ACKed, response_nonce = this nonce).
    ///
    /// Called on the client task: keep it quick (compile and swap, don't block).
    fn apply(
        &self,
        type_url: &str,
        version: &str,
        resources: &BTreeMap<String, prost_types::Any>,
    ) -> Result<(), String>;
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid xDS server address {uri:?}: {message}")]
    InvalidUri { uri: String, message: String },
}

/// How to reach the control plane and who we are.
#[derive(Clone, Debug)]
pub struct AdsClientConfig {
    pub endpoint: Endpoint,
    pub node: Node,
    pub protocol: AdsProtocol,
    /// TLS to the management server (Istio's 15012), when set.
    pub tls: Option<TlsSettings>,
    /// First reconnect delay; doubles per failed attempt up to `backoff_max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

impl AdsClientConfig {
    pub fn new(endpoint: Endpoint, node: Node, protocol: AdsProtocol) -> Self {
        Self {
            endpoint,
            node,
            protocol,
            tls: None,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
        }
    }

    /// From a URI such as `http://127.0.0.1:15010` (plaintext h2c).
    pub fn from_uri(uri: &str, node: Node, protocol: AdsProtocol) -> Result<Self, ClientError> {
        let endpoint =
            Endpoint::from_shared(uri.to_owned()).map_err(|e| ClientError::InvalidUri {
                uri: uri.to_owned(),
                message: e.to_string(),
            })?;
        // Keepalives notice a control plane that vanished without closing the
        // connection, so we reconnect instead of waiting forever.
        let endpoint = endpoint
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        Ok(Self::new(endpoint, node, protocol))
    }
}

/// Per-type state visible to admin/metrics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TypeStatus {
    pub acked_version: String,
    pub resource_count: usize,
    pub last_nack: Option<String>,
    pub last_update: Option<SystemTime>,
}

/// Client state visible to admin/metrics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClientStatus {
    pub connected: bool,
    /// Number of streams established so far (1 after the first connect).
    pub streams: u64,
    pub last_error: Option<String>,
    pub types: BTreeMap<String, TypeStatus>,
}

/// Cloneable control over a running client. When every handle is dropped the
/// client stops.
#[derive(Clone)]
pub struct AdsHandle {
    interest: Arc<watch::Sender<BTreeMap<String, BTreeSet<String>>>>,
    status: watch::Receiver<ClientStatus>,
    stop: Arc<watch::Sender<bool>>,
}

impl AdsHandle {
    /// Sets the resource names wanted for a non-wildcard type (RDS, EDS,
    /// SDS, ...). Ignored for LDS/CDS, which are always wildcard.
    pub fn set_interest(&self, type_url: &str, names: BTreeSet<String>) {
        self.interest.send_if_modified(|all| {
            if all.get(type_url) == Some(&names) {
                return false;
            }
            all.insert(type_url.to_owned(), names);
            true
        });
    }

    pub fn status(&self) -> ClientStatus {
        self.status.borrow().clone()
    }

    /// A receiver that changes whenever the status does.
    pub fn watch_status(&self) -> watch::Receiver<ClientStatus> {
        self.status.clone()
    }

    /// Stops the client; the sink keeps whatever it has.
    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }
}

/// Starts the client on the current tokio runtime.
pub fn spawn(config: AdsClientConfig, sink: Arc<dyn ResourceSink>) -> (AdsHandle, JoinHandle<()>) {
    let (interest_tx, interest_rx) = watch::channel(BTreeMap::new());
    let (status_tx, status_rx) = watch::channel(ClientStatus::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let client = Client {
        config,
        sink,
        types: BTreeMap::new(),
        status: status_tx,
        interest: interest_rx,
        stop: stop_rx,
    };
    let task = tokio::spawn(client.run());
    let handle = AdsHandle {
        interest: Arc::new(interest_tx),
        status: status_rx,
        stop: Arc::new(stop_tx),
    };
    (handle, task)
}

/// TLS to the management server: the client configuration (trust, and a
/// client certificate for mTLS) and the name to verify and send as SNI.
#[derive(Clone)]
pub struct TlsSettings {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: rustls::pki_types::ServerName<'static>,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// Opens the gRPC channel: h2c, or TLS done here with the caller's rustls
/// configuration (so it uses the mesh's roots and the workload certificate).
async fn connect(
    endpoint: &Endpoint,
    tls: Option<&TlsSettings>,
) -> Result<Channel, tonic::transport::Error> {
    let Some(tls) = tls else {
        return endpoint.connect().await;
    };
    let authority = endpoint
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_default();
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(&tls.config));
    let name = tls.server_name.clone();
    let service = tower::service_fn(move |_: http::Uri| {
        let (authority, connector, name) = (authority.clone(), connector.clone(), name.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect(&authority).await?;
            let _ = tcp.set_nodelay(true);
            let stream = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    endpoint.connect_with_connector(service).await
}

#[derive(Default)]
struct TypeState {
    /// Last applied (ACKed) set; survives reconnects.
    resources: Resources,
    /// Delta: per-resource versions of `resources`.
    versions: BTreeMap<String, String>,
    acked_version: String,
    applied_once: bool,
    /// SotW: last nonce received on this stream.
    nonce: String,
    /// Names requested on this stream; `None` until the first request.
    requested: Option<BTreeSet<String>>,
}

enum StreamEnd {
    Stop,
    Lost { error: String, synced: bool },
}

struct Client {
    config: AdsClientConfig,
    sink: Arc<dyn ResourceSink>,
    types: BTreeMap<String, TypeState>,
    status: watch::Sender<ClientStatus>,
    interest: InterestRx,
    stop: watch::Receiver<bool>,
}

type InterestRx = watch::Receiver<BTreeMap<String, BTreeSet<String>>>;

impl Client {
    async fn run(mut self) {
        let mut attempt: u32 = 0;
        loop {
            if *self.stop.borrow() {
                return;
            }
            let end = match self.config.protocol {
                AdsProtocol::StateOfTheWorld => self.run_sotw().await,
                AdsProtocol::Delta => self.run_delta().await,
            };
            let (error, synced) = match end {
                StreamEnd::Stop => {
                    self.status.send_modify(|s| s.connected = false);
                    return;
                }
                StreamEnd::Lost { error, synced } => (error, synced),
            };
            if synced {
                attempt = 0;
            }
            let delay = backoff(self.config.backoff_base, self.config.backoff_max, attempt);
            attempt = attempt.saturating_add(1);
            warn!(error, retry_in = ?delay, "xDS stream lost; keeping last good config");
            self.status.send_modify(|s| {
                s.connected = false;
                s.last_error = Some(error);
            });
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// Types to request at stream start, in Envoy's order (CDS, EDS, LDS, RDS, ...).
    fn initial_types(&self, interest: &mut InterestRx) -> Vec<(String, Option<BTreeSet<String>>)> {
        // Marks the value seen: later changes arrive as subscription updates.
        let interest = interest.borrow_and_update().clone();
        let mut out = Vec::new();
        let known = type_url::APPLY_ORDER.iter().map(|t| (*t).to_owned());
        let extra = interest
            .keys()
            .filter(|t| !type_url::APPLY_ORDER.contains(&t.as_str()))
            .cloned();
        for t in known.chain(extra) {
            if type_url::is_wildcard(&t) {
                out.push((t, None));
            } else if let Some(names) = interest.get(&t).filter(|n| !n.is_empty()) {
                out.push((t, Some(names.clone())));
            }
        }
        out
    }

    /// Interest changes as (type, names to request) for types whose
    /// requested names on this stream differ from the wanted ones.
    fn interest_changes(&mut self, interest: &mut InterestRx) -> Vec<(String, BTreeSet<String>)> {
        let interest = interest.borrow_and_update().clone();
        let mut types: BTreeSet<String> = interest.keys().cloned().collect();
        types.extend(
            self.types
                .iter()
                .filter(|(_, s)| s.requested.is_some())
                .map(|(t, _)| t.clone()),
        );
        let mut out = Vec::new();
        for t in types {
            if type_url::is_wildcard(&t) {
                continue;
            }
            let wanted = interest.get(&t).cloned().unwrap_or_default();
            let state = self.types.entry(t.clone()).or_default();
            match &state.requested {
                None if wanted.is_empty() => {}
                Some(r) if *r == wanted => {}
                _ => out.push((t, wanted)),
            }
        }
        out
    }

    fn begin_stream(&mut self) {
        for state in self.types.values_mut() {
            state.nonce.clear();
            state.requested = None;
        }
    }

    fn mark_connected(&self) {
        info!(protocol = ?self.config.protocol, "xDS stream established");
        self.status.send_modify(|s| {
            s.connected = true;
            s.streams += 1;
        });
    }

    /// Hands a new set to the sink; on success commits it.
    fn deliver(
        &mut self,
        t: &str,
        version: &str,
        next: Result<Resources, String>,
        versions: BTreeMap<String, String>,
    ) -> Result<(), String> {
        let result = next.and_then(|set| self.sink.apply(t, version, &set).map(|()| set));
        let state = self.types.entry(t.to_owned()).or_default();
        let status = match result {
            Ok(set) => {
                debug!(
                    r#type = type_url::short_name(t),
                    version,
                    count = set.len(),
                    "applied"
                );
                state.resources = set;
                state.versions = versions;
                state.acked_version = version.to_owned();
                state.applied_once = true;
                None
            }
            Err(message) => {
                warn!(
                    r#type = type_url::short_name(t),
                    version, message, "rejecting xDS update"
                );
                Some(message)
            }
        };
        let (acked, count) = (state.acked_version.clone(), state.resources.len());
        self.status.send_modify(|s| {
            let ts = s.types.entry(t.to_owned()).or_default();
            ts.acked_version = acked;
            ts.resource_count = count;
            ts.last_update = Some(SystemTime::now());
            if status.is_some() {
                ts.last_nack.clone_from(&status);
            } else {
                ts.last_nack = None;
            }
        });
        status.map_or(Ok(()), Err)
    }

    async fn run_sotw(&mut self) -> StreamEnd {
        self.begin_stream();
        // Own receivers, so the select! below can borrow them while the
        // handlers borrow `self`.
        let mut interest = self.interest.clone();
        let mut stop = self.stop.clone();
        let channel = match connect(&self.config.endpoint, self.config.tls.as_ref()).await {
            Ok(c) => c,
            Err(e) => return lost(format!("connect: {e}"), false),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let mut node = Some(self.config.node.clone());
        for (t, names) in self.initial_types(&mut interest) {
            let state = self.types.entry(t.clone()).or_default();
            let names = names.unwrap_or_default();
            let _ = tx.send(DiscoveryRequest {
                version_info: state.acked_version.clone(),
                node: node.take(),
                resource_names: names.iter().cloned().collect(),
                type_url: t,
                ..Default::default()
            });
            state.requested = Some(names);
        }
        let mut grpc = AggregatedDiscoveryServiceClient::new(channel);
        let mut responses = match grpc
            .stream_aggregated_resources(UnboundedReceiverStream::new(rx))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(status) => return lost(format!("open stream: {status}"), false),
        };
        self.mark_connected();
        let mut synced = false;
        loop {
            tokio::select! {
                msg = responses.message() => match msg {
                    Ok(Some(resp)) => {
                        synced = true;
                        let reply = self.on_sotw_response(resp);
                        let _ = tx.send(reply);
                    }
                    Ok(None) => return lost("stream closed by server".into(), synced),
                    Err(status) => return lost(format!("stream error: {status}"), synced),
                },
                changed = interest.changed() => {
                    if changed.is_err() {
                        return StreamEnd::Stop;
                    }
                    for (t, names) in self.interest_changes(&mut interest) {
                        let state = self.types.entry(t.clone()).or_default();
                        debug!(r#type = type_url::short_name(&t), ?names, "updating subscription");
                        let _ = tx.send(DiscoveryRequest {
                            version_info: state.acked_version.clone(),
                            resource_names: names.iter().cloned().collect(),
                            type_url: t,
                            response_nonce: state.nonce.clone(),
                            ..Default::default()
                        });
                        state.requested = Some(names);
                    }
                }
                _ = stop.wait_for(|s| *s) => return StreamEnd::Stop,
            }
        }
    }

    fn on_sotw_response(&mut self, resp: DiscoveryResponse) -> DiscoveryRequest {
        let t = resp.type_url.clone();
        debug!(
            r#type = type_url::short_name(&t),
            version = resp.version_info,
            nonce = resp.nonce,
            count = resp.resources.len(),
            "received"
        );
        let parsed = sotw_resources(&t, resp.resources).map(|set| self.sotw_complete(&t, set));
        let result = self.deliver(&t, &resp.version_info, parsed, BTreeMap::new());
        let state = self.types.entry(t.clone()).or_default();
        state.nonce.clone_from(&resp.nonce);
        DiscoveryRequest {
            version_info: state.acked_version.clone(),
            resource_names: state.requested.iter().flatten().cloned().collect(),
            type_url: t,
            response_nonce: resp.nonce,
            error_detail: result.err().map(nack_status),
            ..Default::default()
        }
    }

    /// The complete set after a SotW response. LDS and CDS responses are
    /// complete; for the types requested by name (EDS, RDS, SDS) a response
    /// may carry only what changed, and a resource it omits keeps its last
    /// value while it is still requested (Envoy's rule, which Istio's
    /// incremental EDS pushes rely on).
    fn sotw_complete(&self, t: &str, mut set: Resources) -> Resources {
        if type_url::is_wildcard(t) {
            return set;
        }
        let Some(state) = self.types.get(t) else {
            return set;
        };
        let requested = state.requested.as_ref();
        for (name, any) in &state.resources {
            if requested.is_some_and(|r| r.contains(name)) && !set.contains_key(name) {
                set.insert(name.clone(), any.clone());
            }
        }
        set
    }

    async fn run_delta(&mut self) -> StreamEnd {
        self.begin_stream();
        // Own receivers, so the select! below can borrow them while the
        // handlers borrow `self`.
        let mut interest = self.interest.clone();
        let mut stop = self.stop.clone();
        let channel = match connect(&self.config.endpoint, self.config.tls.as_ref()).await {
            Ok(c) => c,
            Err(e) => return lost(format!("connect: {e}"), false),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let mut node = Some(self.config.node.clone());
        for (t, names) in self.initial_types(&mut interest) {
            let state = self.types.entry(t.clone()).or_default();
            // Tell the server what we hold so a restarted control plane with
            // the same resources sends nothing, and one without them can
            // remove exactly what is gone.
            let initial = state
                .versions
                .iter()
                .filter(|(n, _)| names.as_ref().is_none_or(|w| w.contains(*n)))
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect();
            let _ = tx.send(DeltaDiscoveryRequest {
                node: node.take(),
                type_url: t,
                resource_names_subscribe: names.iter().flatten().cloned().collect(),
                initial_resource_versions: initial,
                ..Default::default()
            });
            state.requested = Some(names.unwrap_or_default());
        }
        let mut grpc = AggregatedDiscoveryServiceClient::new(channel);
        let mut responses = match grpc
            .delta_aggregated_resources(UnboundedReceiverStream::new(rx))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(status) => return lost(format!("open stream: {status}"), false),
        };
        self.mark_connected();
        let mut synced = false;
        loop {
            tokio::select! {
                msg = responses.message() => match msg {
                    Ok(Some(resp)) => {
                        synced = true;
                        let reply = self.on_delta_response(resp);
                        let _ = tx.send(reply);
                    }
                    Ok(None) => return lost("stream closed by server".into(), synced),
                    Err(status) => return lost(format!("stream error: {status}"), synced),
                },
                changed = interest.changed() => {
                    if changed.is_err() {
                        return StreamEnd::Stop;
                    }
                    for (t, names) in self.interest_changes(&mut interest) {
                        let state = self.types.entry(t.clone()).or_default();
                        let before = state.requested.take().unwrap_or_default();
                        let subscribe: Vec<String> = names.difference(&before).cloned().collect();
                        let unsubscribe: Vec<String> = before.difference(&names).cloned().collect();
                        // Unwanted resources are forgotten without telling the
                        // sink: it asked for them to go away.
                        for n in &unsubscribe {
                            state.resources.remove(n);
                            state.versions.remove(n);
                        }
                        debug!(r#type = type_url::short_name(&t), ?subscribe, ?unsubscribe, "updating subscription");
                        let _ = tx.send(DeltaDiscoveryRequest {
                            type_url: t,
                            resource_names_subscribe: subscribe,
                            resource_names_unsubscribe: unsubscribe,
                            ..Default::default()
                        });
                        state.requested = Some(names);
                    }
                }
                _ = stop.wait_for(|s| *s) => return StreamEnd::Stop,
            }
        }
    }

    fn on_delta_response(&mut self, resp: DeltaDiscoveryResponse) -> DeltaDiscoveryRequest {
        let t = resp.type_url.clone();
        debug!(
            r#type = type_url::short_name(&t),
            version = resp.system_version_info,
            nonce = resp.nonce,
            updated = resp.resources.len(),
            removed = resp.removed_resources.len(),
            "received delta"
        );
        let state = self.types.entry(t.clone()).or_default();
        let unchanged = resp.resources.iter().all(|r| r.resource.is_none())
            && resp.removed_resources.is_empty();
        let result = if unchanged && state.applied_once {
            // Nothing new (typically the answer to a resubscription after a
            // reconnect): don't make the sink recompile the same config.
            state.acked_version.clone_from(&resp.system_version_info);
            Ok(())
        } else {
            let mut next = state.resources.clone();
            let mut versions = state.versions.clone();
            let mut error = None;
            for r in resp.resources {
                let Some(any) = r.resource else { continue };
                let any = type_url::from_wire(any);
                if any.type_url != t {
                    error = Some(format!(
                        "resource {:?} has type {} in a {} response",
                        r.name, any.type_url, t
                    ));
                    break;
                }
                versions.insert(r.name.clone(), r.version);
                next.insert(r.name, any);
            }
            for n in &resp.removed_resources {
                next.remove(n);
                versions.remove(n);
            }
            let next = error.map_or(Ok(next), Err);
            self.deliver(&t, &resp.system_version_info, next, versions)
        };
        DeltaDiscoveryRequest {
            type_url: t,
            response_nonce: resp.nonce,
            error_detail: result.err().map(nack_status),
            ..Default::default()
        }
    }
}

fn lost(error: String, synced: bool) -> StreamEnd {
    StreamEnd::Lost { error, synced }
}

fn nack_status(message: String) -> RpcStatus {
    RpcStatus {
        code: INVALID_ARGUMENT,
        message,
        details: Vec::new(),
    }
}

/// Names the resources of a SotW response, unwrapping `Resource` wrappers.
fn sotw_resources(
    t: &str,
    resources: Vec<envoy_types::pb::google::protobuf::Any>,
) -> Result<Resources, String> {
    let mut set = Resources::new();
    for any in resources {
        let (name, any) =
            type_url::resource_name(type_url::from_wire(any)).map_err(|e| e.to_string())?;
        if any.type_url != t {
            return Err(format!(
                "resource {name:?} has type {} in a {t} response",
                any.type_url
            ));
        }
        if set.insert(name.clone(), any).is_some() {
            return Err(format!("duplicate resource {name:?}"));
        }
    }
    Ok(set)
}

/// Exponential backoff with "equal jitter": half fixed, half random, so a
/// fleet of proxies doesn't reconnect in lockstep.
fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(2u32.saturating_pow(attempt.min(20)));
    let cap = exp.min(max);
    let half = cap / 2;
    let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
    half + Duration::from_millis(rand::rng().random_range(0..=jitter_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let base = Duration::from_millis(500);
        let max = Duration::from_secs(30);
        for attempt in 0..40 {
            let d = backoff(base, max, attempt);
            let cap = base
                .saturating_mul(2u32.saturating_pow(attempt.min(20)))
                .min(max);
            assert!(d >= cap / 2 && d <= cap, "attempt {attempt}: {d:?}");
        }
    }

    #[test]
    fn api_type_mapping() {
        assert_eq!(
            AdsProtocol::from_api_type(ApiType::Grpc as i32),
            Some(AdsProtocol::StateOfTheWorld)
        );
        assert_eq!(
            AdsProtocol::from_api_type(ApiType::DeltaGrpc as i32),
            Some(AdsProtocol::Delta)
        );
        assert_eq!(AdsProtocol::from_api_type(ApiType::Rest as i32), None);
    }
}
