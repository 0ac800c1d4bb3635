//! Istio's standard metrics (`istio_requests_total`, the request duration
//! and size histograms, the TCP byte and connection counters) with Istio's
//! label set, rendered in the Prometheus text format by the admin server's
//! `/stats/prometheus` (Istio scrapes a sidecar's 15090; in local mode,
//! `trellis up`, each proxy's admin port is the scrape endpoint).
//!
//! Hand-written rather than `prometheus-client`: its `Family` looks series up
//! by an owned label set, which would mean building ~25 label strings per
//! request. Here a finished request hashes a small borrowed key (reporter,
//! cluster, peer principal, authority host, code, flags...), finds its series
//! under a read lock, and bumps atomics; the label text is rendered once,
//! when a series is first seen. Series are capped per family
//! ([`MAX_SERIES`]); samples of further label sets are dropped and counted.
//!
//! Labels. This proxy's own side (source for `reporter="source"`, destination
//! for `reporter="destination"`) comes from the node metadata: WORKLOAD_NAME,
//! NAMESPACE, LABELS (`app`, `version`, canonical name and revision with
//! Istio's defaults), SERVICE_ACCOUNT (the SPIFFE principal) and CLUSTER_ID
//! (`Kubernetes` by default). Outbound, the destination service is the host of
//! the `outbound|<port>|<subset>|<host>` cluster; the peer workload is
//! what the metadata exchange ([`peer`]) told, else `unknown`. Inbound, the
//! source principal (and its namespace) is the mTLS peer certificate's SPIFFE
//! id, the rest of the source from the metadata exchange, and the
//! destination service comes from the request authority when it names a
//! Kubernetes service.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::Struct;

use crate::access_log::Entry;
use crate::http::flags::ResponseFlags;

/// Envoy's default histogram buckets, which Istio's histograms use (the
/// byte histograms too, unless `sidecar.istio.io/statsHistogramBuckets`
/// overrides them).
pub const BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// Label sets kept per family (HTTP, TCP); more are dropped and counted.
pub const MAX_SERIES: usize = 10_000;

const UNKNOWN: &str = "unknown";
const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
const DEFAULT_CLUSTER_ID: &str = "Kubernetes";

/// Who reports: the client side (`source`) or the server side (`destination`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reporter {
    Source,
    Destination,
}

impl Reporter {
    /// Inbound traffic (an `inbound|...` cluster, or a listener or stat prefix
    /// starting `inbound`/`virtualInbound`, as pilot names them) is reported
    /// by the destination; everything else, sidecar outbound and gateways,
    /// by the source.
    pub fn of(prefix: &str, cluster: Option<&str>) -> Self {
        let inbound = cluster.is_some_and(|c| c.starts_with("inbound|"))
            || prefix.starts_with("inbound")
            || prefix.starts_with("virtualInbound");
        if inbound {
            Self::Destination
        } else {
            Self::Source
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Destination => "destination",
        }
    }
}

/// A workload's side of the labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub workload: String,
    pub namespace: String,
    pub principal: String,
    pub app: String,
    pub version: String,
    pub canonical_service: String,
    pub canonical_revision: String,
    pub cluster: String,
}

impl Default for Workload {
    fn default() -> Self {
        let u = || UNKNOWN.to_string();
        Self {
            workload: u(),
            namespace: u(),
            principal: u(),
            app: u(),
            version: u(),
            canonical_service: u(),
            canonical_revision: u(),
            cluster: u(),
        }
    }
}

impl Workload {
    /// From Istio's node metadata.
    pub fn from_node(node: &Node) -> Self {
        match &node.metadata {
            Some(md) => Self::from_metadata(md),
            None => Self::default(),
        }
    }

    /// From node metadata (ours, or a peer's from the metadata exchange).
    pub fn from_metadata(md: &Struct) -> Self {
        let s = |k: &str| peer::string_field(md, k);
        Self::from_parts(
            s("WORKLOAD_NAME"),
            s("NAMESPACE"),
            &peer::labels_of(md),
            s("SERVICE_ACCOUNT"),
            s("TRUST_DOMAIN"),
            s("CLUSTER_ID"),
        )
    }

    /// Istio's defaults: canonical name from `service.istio.io/canonical-name`,
    /// `app.kubernetes.io/name`, `app`, else the workload name; canonical
    /// revision from `service.istio.io/canonical-revision`,
    /// `app.kubernetes.io/version`, `version`, else `latest`.
    pub fn from_parts(
        workload: Option<&str>,
        namespace: Option<&str>,
        labels: &BTreeMap<String, String>,
        service_account: Option<&str>,
        trust_domain: Option<&str>,
        cluster_id: Option<&str>,
    ) -> Self {
        let label = |keys: &[&str]| {
            keys.iter()
                .find_map(|k| labels.get(*k).filter(|v| !v.is_empty()))
                .cloned()
        };
        let workload = workload.unwrap_or(UNKNOWN).to_string();
        let ns = namespace.unwrap_or(UNKNOWN).to_string();
        let principal = match (service_account, namespace) {
            (Some(sa), Some(ns)) => format!(
                "spiffe://{}/ns/{ns}/sa/{sa}",
                trust_domain.unwrap_or(DEFAULT_TRUST_DOMAIN)
            ),
            _ => UNKNOWN.to_string(),
        };
        Self {
            canonical_service: label(&[
                "service.istio.io/canonical-name",
                "app.kubernetes.io/name",
                "app",
            ])
            .unwrap_or_else(|| workload.clone()),
            canonical_revision: label(&[
                "service.istio.io/canonical-revision",
                "app.kubernetes.io/version",
                "version",
            ])
            .unwrap_or_else(|| "latest".to_string()),
            app: label(&["app", "app.kubernetes.io/name"]).unwrap_or_else(|| UNKNOWN.into()),
            version: label(&["version", "app.kubernetes.io/version"])
                .unwrap_or_else(|| UNKNOWN.into()),
            workload,
            namespace: ns,
            principal,
            cluster: cluster_id.unwrap_or(DEFAULT_CLUSTER_ID).to_string(),
        }
    }
}

/// A destination service: `(host, name, namespace)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub host: String,
    pub name: String,
    pub namespace: String,
}

impl Service {
    fn unknown() -> Self {
        Self {
            host: UNKNOWN.into(),
            name: UNKNOWN.into(),
            namespace: UNKNOWN.into(),
        }
    }

    /// From a host name: `<name>.<ns>.svc...` gives name and namespace;
    /// another host is its own name, in an unknown namespace.
    fn of_host(host: &str) -> Self {
        let mut labels = host.split('.');
        let (name, ns) = match (labels.next(), labels.next(), labels.next()) {
            (Some(n), Some(ns), Some("svc")) => (n, ns),
            _ => (host, UNKNOWN),
        };
        Self {
            host: host.to_string(),
            name: name.to_string(),
            namespace: ns.to_string(),
        }
    }

    /// The destination of an outbound cluster `outbound|<port>|<subset>|<host>`;
    /// other clusters (`PassthroughCluster`, `BlackHoleCluster`, static
    /// ones) name themselves.
    pub fn from_cluster(cluster: &str) -> Self {
        if let Some(rest) = cluster.strip_prefix("outbound|") {
            return match rest.splitn(3, '|').nth(2) {
                Some(host) if !host.is_empty() => Self::of_host(host),
                _ => Self::unknown(),
            };
        }
        if cluster.is_empty() || cluster.starts_with("inbound|") {
            return Self::unknown();
        }
        Self {
            host: cluster.to_string(),
            name: cluster.to_string(),
            namespace: UNKNOWN.into(),
        }
    }

    /// An inbound request's service from its authority, when it names a
    /// Kubernetes service: `<name>[.<ns>[.svc[.<domain>]]][:port]`, short
    /// forms completed with `own_ns` and `cluster.local`. IPs and other hosts
    /// give `unknown` (no unbounded host-header values).
    pub fn from_authority(authority: &str, own_ns: &str) -> Self {
        let host = match authority.rsplit_once(':') {
            Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => authority,
        };
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let valid = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        let parts: Vec<&str> = host.split('.').collect();
        if parts.iter().any(|l| !valid(l))
            || parts
                .first()
                .is_none_or(|l| l.bytes().all(|b| b.is_ascii_digit()))
        {
            return Self::unknown();
        }
        let (name, ns) = match parts.as_slice() {
            [n] => (*n, own_ns),
            [n, ns] | [n, ns, "svc"] => (*n, *ns),
            [n, ns, "svc", ..] => (*n, *ns),
            _ => return Self::unknown(),
        };
        let fqdn = if parts.len() > 3 {
            host.clone()
        } else {
            format!("{name}.{ns}.svc.{DEFAULT_TRUST_DOMAIN}")
        };
        Self {
            host: fqdn,
            name: name.to_string(),
            namespace: ns.to_string(),
        }
    }
}

/// The namespace of a SPIFFE id `spiffe://<td>/ns/<ns>/sa/<sa>`.
pub fn spiffe_namespace(id: &str) -> Option<&str> {
    let path = id.strip_prefix("spiffe://")?.split_once('/')?.1;
    let mut segs = path.split('/');
    match (segs.next(), segs.next(), segs.next(), segs.next()) {
        (Some("ns"), Some(ns), Some("sa"), Some(_)) if !ns.is_empty() => Some(ns),
        _ => None,
    }
}

/// What varies between requests; everything else is this proxy's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct KeyRef<'a> {
    reporter: Reporter,
    cluster: &'a str,
    /// Inbound only: the authority (the destination service).
    authority: &'a str,
    /// Inbound only: the peer certificate's principal.
    peer: &'a str,
    /// The peer's workload from the metadata exchange, by address: equal
    /// workloads share one interned value ([`peer`]).
    peer_workload: usize,
    /// The `istio.stats` config, by address (interned, [`overrides`]).
    stats: usize,
    mtls: bool,
    protocol: &'static str,
    code: u16,
    grpc: Option<u16>,
    flags: ResponseFlags,
}

#[derive(Debug)]
struct OwnedKey {
    reporter: Reporter,
    cluster: Box<str>,
    authority: Box<str>,
    peer: Box<str>,
    /// Keeps the interned workload (and so its address) alive.
    peer_workload: Option<Arc<Workload>>,
    stats: Option<Arc<StatsConfig>>,
    mtls: bool,
    protocol: &'static str,
    code: u16,
    grpc: Option<u16>,
    flags: ResponseFlags,
}

impl OwnedKey {
    fn of(
        k: &KeyRef<'_>,
        peer_workload: Option<&Arc<Workload>>,
        stats: Option<&Arc<StatsConfig>>,
    ) -> Self {
        Self {
            reporter: k.reporter,
            cluster: k.cluster.into(),
            authority: k.authority.into(),
            peer: k.peer.into(),
            peer_workload: peer_workload.cloned(),
            stats: stats.cloned(),
            mtls: k.mtls,
            protocol: k.protocol,
            code: k.code,
            grpc: k.grpc,
            flags: k.flags,
        }
    }

    fn as_ref(&self) -> KeyRef<'_> {
        KeyRef {
            reporter: self.reporter,
            cluster: &self.cluster,
            authority: &self.authority,
            peer: &self.peer,
            peer_workload: self
                .peer_workload
                .as_ref()
                .map_or(0, |w| Arc::as_ptr(w) as usize),
            stats: self.stats.as_ref().map_or(0, |w| Arc::as_ptr(w) as usize),
            mtls: self.mtls,
            protocol: self.protocol,
            code: self.code,
            grpc: self.grpc,
            flags: self.flags,
        }
    }
}

#[derive(Debug)]
struct Histogram {
    /// Per-bucket (not cumulative) counts; the last is `+Inf`.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    /// The sum in thousandths of the unit.
    sum_milli: AtomicU64,
}

impl Histogram {
    fn new() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_milli: AtomicU64::new(0),
        }
    }

    fn observe_milli(&self, milli: u64) {
        let v = milli as f64 / 1000.0;
        let i = BUCKETS.partition_point(|b| *b < v);
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_milli.fetch_add(milli, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cum = 0u64;
        for (i, b) in self.buckets.iter().enumerate() {
            cum += b.load(Ordering::Relaxed);
            match BUCKETS.get(i) {
                Some(le) => {
                    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cum}");
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cum}");
                }
            }
        }
        let sum = self.sum_milli.load(Ordering::Relaxed) as f64 / 1000.0;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {cum}");
    }
}

#[derive(Debug)]
struct HttpSeries {
    key: OwnedKey,
    labels: String,
    /// The labels before overrides, kept only when the connection
    /// manager's `istio.stats` config changes them.
    pairs: Option<Vec<(String, String)>>,
    requests: AtomicU64,
    request_messages: AtomicU64,
    response_messages: AtomicU64,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

impl HttpSeries {
    /// This series' labels in `family`, `None` when the family is dropped.
    fn labels_for(&self, family: &str) -> Option<std::borrow::Cow<'_, str>> {
        let Some(stats) = &self.key.stats else {
            return Some(self.labels.as_str().into());
        };
        if stats.drops(family) {
            return None;
        }
        match &self.pairs {
            None => Some(self.labels.as_str().into()),
            Some(pairs) => {
                let mut pairs = pairs.clone();
                stats.apply(family, &mut pairs);
                Some(join_labels(&pairs).into())
            }
        }
    }
}

#[derive(Debug)]
struct TcpSeries {
    key: OwnedKey,
    labels: String,
    sent: AtomicU64,
    received: AtomicU64,
    opened: AtomicU64,
    closed: AtomicU64,
}

trait Keyed {
    fn key(&self) -> &OwnedKey;
}
impl Keyed for HttpSeries {
    fn key(&self) -> &OwnedKey {
        &self.key
    }
}
impl Keyed for TcpSeries {
    fn key(&self) -> &OwnedKey {
        &self.key
    }
}

/// Series by the hash of their [`KeyRef`]; a bucket holds colliding keys.
#[derive(Debug)]
struct Family<S> {
    map: RwLock<HashMap<u64, Vec<Arc<S>>>>,
    len: AtomicU64,
}

impl<S: Keyed> Family<S> {
    fn new() -> Self {
        Self {
            map: RwLock::new(HashMap::new()),
            len: AtomicU64::new(0),
        }
    }

    fn find(&self, hash: u64, key: &KeyRef<'_>) -> Option<Arc<S>> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        map.get(&hash)?
            .iter()
            .find(|s| s.key().as_ref() == *key)
            .cloned()
    }

    /// The series of `key`, made by `make` when new; `None` past the cap.
    fn get_or_insert(
        &self,
        hash: u64,
        key: &KeyRef<'_>,
        make: impl FnOnce() -> S,
    ) -> Option<Arc<S>> {
        if let Some(s) = self.find(hash, key) {
            return Some(s);
        }
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let bucket = map.entry(hash).or_default();
        if let Some(s) = bucket.iter().find(|s| s.key().as_ref() == *key) {
            return Some(Arc::clone(s));
        }
        if self.len.load(Ordering::Relaxed) >= MAX_SERIES as u64 {
            return None;
        }
        let s = Arc::new(make());
        bucket.push(Arc::clone(&s));
        self.len.fetch_add(1, Ordering::Relaxed);
        Some(s)
    }

    fn all(&self) -> Vec<Arc<S>> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        map.values().flatten().cloned().collect()
    }
}

/// A finished HTTP stream, as the metrics see it.
#[derive(Debug, Clone, Copy)]
pub struct HttpSample<'a> {
    /// The connection manager's stat prefix (or the listener name).
    pub prefix: &'a str,
    pub cluster: Option<&'a str>,
    pub authority: Option<&'a str>,
    pub peer_principal: Option<&'a str>,
    /// Who the peer is, from the metadata exchange.
    pub peer_workload: Option<&'a Arc<Workload>>,
    /// The connection manager's `istio.stats` overrides.
    pub stats: Option<&'a Arc<StatsConfig>>,
    pub grpc: bool,
    pub code: u16,
    pub grpc_status: Option<u16>,
    pub flags: ResponseFlags,
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// gRPC messages each way (gRPC only).
    pub request_messages: u64,
    pub response_messages: u64,
    pub duration: Duration,
}

type HistogramOf = fn(&HttpSeries) -> &Histogram;
type CounterOfHttp = fn(&HttpSeries) -> &AtomicU64;
type CounterOf = fn(&TcpSeries) -> &AtomicU64;

/// The process's Istio metrics.
#[derive(Debug)]
pub struct Metrics {
    own: RwLock<Arc<Workload>>,
    hasher: RandomState,
    http: Family<HttpSeries>,
    tcp: Family<TcpSeries>,
    dropped: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(Workload::default())
    }
}

/// The process-wide metrics (one proxy per process).
pub fn global() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::default)
}

impl Metrics {
    pub fn new(own: Workload) -> Self {
        Self {
            own: RwLock::new(Arc::new(own)),
            hasher: RandomState::new(),
            http: Family::new(),
            tcp: Family::new(),
            dropped: AtomicU64::new(0),
        }
    }

    /// Sets this proxy's identity (before traffic: series already made keep
    /// their labels).
    pub fn set_workload(&self, own: Workload) {
        *self.own.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(own);
    }

    fn own(&self) -> Arc<Workload> {
        Arc::clone(&self.own.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn hash(&self, k: &KeyRef<'_>) -> u64 {
        self.hasher.hash_one(k)
    }

    pub fn record_http(&self, s: &HttpSample<'_>) {
        if s.stats.is_some_and(|c| c.drops_all_http()) {
            return;
        }
        let reporter = Reporter::of(s.prefix, s.cluster);
        let inbound = reporter == Reporter::Destination;
        let key = KeyRef {
            reporter,
            cluster: s.cluster.unwrap_or(""),
            authority: if inbound {
                s.authority.unwrap_or("")
            } else {
                ""
            },
            peer: if inbound {
                s.peer_principal.unwrap_or("")
            } else {
                ""
            },
            peer_workload: s.peer_workload.map_or(0, |w| Arc::as_ptr(w) as usize),
            stats: s.stats.map_or(0, |c| Arc::as_ptr(c) as usize),
            mtls: inbound && s.peer_principal.is_some(),
            protocol: if s.grpc { "grpc" } else { "http" },
            code: s.code,
            grpc: s.grpc_status,
            flags: s.flags,
        };
        let hash = self.hash(&key);
        let series = self.http.get_or_insert(hash, &key, || {
            let pairs = label_pairs(&self.own(), &key, s.peer_workload.map(|w| &**w));
            HttpSeries {
                labels: join_labels(&pairs),
                pairs: s.stats.filter(|c| !c.is_identity()).map(|_| pairs),
                key: OwnedKey::of(&key, s.peer_workload, s.stats),
                requests: AtomicU64::new(0),
                request_messages: AtomicU64::new(0),
                response_messages: AtomicU64::new(0),
                duration: Histogram::new(),
                request_bytes: Histogram::new(),
                response_bytes: Histogram::new(),
            }
        });
        let Some(series) = series else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        series.requests.fetch_add(1, Ordering::Relaxed);
        if s.grpc {
            series
                .request_messages
                .fetch_add(s.request_messages, Ordering::Relaxed);
            series
                .response_messages
                .fetch_add(s.response_messages, Ordering::Relaxed);
        }
        series
            .duration
            .observe_milli(s.duration.as_micros().min(u128::from(u64::MAX)) as u64);
        series
            .request_bytes
            .observe_milli(s.request_bytes.saturating_mul(1000));
        series
            .response_bytes
            .observe_milli(s.response_bytes.saturating_mul(1000));
    }

    /// An HTTP entry from the access-log path.
    pub fn record_entry(
        &self,
        prefix: &str,
        stats: &Arc<StatsConfig>,
        e: &Entry,
        grpc: bool,
        grpc_status: Option<u16>,
    ) {
        self.record_http(&HttpSample {
            stats: Some(stats),
            prefix,
            cluster: e.upstream_cluster.as_deref(),
            authority: e.authority.as_deref(),
            peer_principal: e.peer.as_deref().map(|p| p.principal()),
            peer_workload: e.peer_workload.as_ref(),
            grpc,
            code: e.response_code.unwrap_or(0),
            grpc_status,
            flags: e.flags,
            request_bytes: e.bytes_received,
            response_bytes: e.bytes_sent,
            request_messages: e.grpc_request_messages,
            response_messages: e.grpc_response_messages,
            duration: e.duration.unwrap_or_default(),
        });
    }

    fn tcp_series(
        &self,
        prefix: &str,
        cluster: &str,
        peer: Option<&str>,
        flags: ResponseFlags,
    ) -> Option<Arc<TcpSeries>> {
        let reporter = Reporter::of(prefix, Some(cluster));
        let inbound = reporter == Reporter::Destination;
        let key = KeyRef {
            reporter,
            cluster,
            authority: "",
            peer: if inbound { peer.unwrap_or("") } else { "" },
            peer_workload: 0,
            stats: 0,
            mtls: inbound && peer.is_some(),
            protocol: "tcp",
            code: 0,
            grpc: None,
            flags,
        };
        let hash = self.hash(&key);
        let s = self.tcp.get_or_insert(hash, &key, || TcpSeries {
            labels: join_labels(&label_pairs(&self.own(), &key, None)),
            key: OwnedKey::of(&key, None, None),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            opened: AtomicU64::new(0),
            closed: AtomicU64::new(0),
        });
        if s.is_none() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        s
    }

    /// A TCP proxy connection to `cluster` opened.
    pub fn tcp_opened(&self, prefix: &str, cluster: &str, peer: Option<&str>) {
        if let Some(s) = self.tcp_series(prefix, cluster, peer, ResponseFlags::default()) {
            s.opened.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A TCP proxy connection closed: its bytes from (`received`) and to
    /// (`sent`) the downstream.
    pub fn tcp_closed(
        &self,
        prefix: &str,
        cluster: &str,
        peer: Option<&str>,
        flags: ResponseFlags,
        received: u64,
        sent: u64,
    ) {
        if let Some(s) = self.tcp_series(prefix, cluster, peer, flags) {
            s.received.fetch_add(received, Ordering::Relaxed);
            s.sent.fetch_add(sent, Ordering::Relaxed);
            s.closed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The Prometheus text exposition (version 0.0.4) of every series.
    pub fn render(&self, out: &mut String) {
        let mut http = self.http.all();
        http.sort_by(|a, b| a.labels.cmp(&b.labels));
        let mut tcp = self.tcp.all();
        tcp.sort_by(|a, b| a.labels.cmp(&b.labels));
        if !http.is_empty() {
            let _ = writeln!(out, "# TYPE istio_requests_total counter");
            for s in &http {
                if let Some(labels) = s.labels_for("requests_total") {
                    let v = s.requests.load(Ordering::Relaxed);
                    let _ = writeln!(out, "istio_requests_total{{{labels}}} {v}");
                }
            }
            let messages: [(&str, CounterOfHttp); 2] = [
                ("request_messages_total", |s| &s.request_messages),
                ("response_messages_total", |s| &s.response_messages),
            ];
            for (family, c) in messages {
                let grpc: Vec<_> = http.iter().filter(|s| s.key.protocol == "grpc").collect();
                if grpc.is_empty() {
                    continue;
                }
                let _ = writeln!(out, "# TYPE istio_{family} counter");
                for s in grpc {
                    if let Some(labels) = s.labels_for(family) {
                        let v = c(s).load(Ordering::Relaxed);
                        let _ = writeln!(out, "istio_{family}{{{labels}}} {v}");
                    }
                }
            }
            let hists: [(&str, HistogramOf); 3] = [
                ("request_duration_milliseconds", |s| &s.duration),
                ("request_bytes", |s| &s.request_bytes),
                ("response_bytes", |s| &s.response_bytes),
            ];
            for (family, h) in hists {
                let name = format!("istio_{family}");
                let _ = writeln!(out, "# TYPE {name} histogram");
                for s in &http {
                    if let Some(labels) = s.labels_for(family) {
                        h(s).render(out, &name, &labels);
                    }
                }
            }
        }
        if !tcp.is_empty() {
            let counters: [(&str, CounterOf); 4] = [
                ("istio_tcp_sent_bytes_total", |s| &s.sent),
                ("istio_tcp_received_bytes_total", |s| &s.received),
                ("istio_tcp_connections_opened_total", |s| &s.opened),
                ("istio_tcp_connections_closed_total", |s| &s.closed),
            ];
            for (name, c) in counters {
                let _ = writeln!(out, "# TYPE {name} counter");
                for s in &tcp {
                    let v = c(s).load(Ordering::Relaxed);
                    let _ = writeln!(out, "{name}{{{}}} {v}", s.labels);
                }
            }
        }
        let _ = writeln!(out, "# TYPE trellis_istio_metrics_dropped_total counter");
        let _ = writeln!(
            out,
            "trellis_istio_metrics_dropped_total {}",
            self.dropped.load(Ordering::Relaxed)
        );
    }
}

/// A Prometheus label value: `\`, `"` and newlines escaped.
pub fn escape_label(v: &str) -> std::borrow::Cow<'_, str> {
    if !v.contains(['\\', '"', '\n']) {
        return v.into();
    }
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
        .into()
}

/// Istio's labels for `key` seen by `own`, in Istio's order.
fn label_pairs(
    own: &Workload,
    key: &KeyRef<'_>,
    exchanged: Option<&Workload>,
) -> Vec<(String, String)> {
    let mut peer = exchanged.cloned().unwrap_or_default();
    let inbound = key.reporter == Reporter::Destination;
    let service = if inbound {
        // The certificate is authoritative for who the client is; the
        // exchanged metadata adds what it cannot say (workload, app...);
        // without a certificate, a claimed principal is not reported.
        peer.principal = UNKNOWN.to_string();
        if !key.peer.is_empty() {
            peer.principal = key.peer.to_string();
            if let Some(ns) = spiffe_namespace(key.peer) {
                peer.namespace = ns.to_string();
            }
        }
        Service::from_authority(key.authority, &own.namespace)
    } else {
        Service::from_cluster(key.cluster)
    };
    let (src, dst) = if inbound { (&peer, own) } else { (own, &peer) };
    let policy = match (inbound, key.mtls) {
        (false, _) => UNKNOWN,
        (true, true) => "mutual_tls",
        (true, false) => "none",
    };
    let code = key.code.to_string();
    let grpc = key.grpc.map_or_else(String::new, |g| g.to_string());
    let flags = key.flags.to_string();
    let mut pairs: Vec<(&str, &str)> = vec![
        ("reporter", key.reporter.as_str()),
        ("source_workload", &src.workload),
        ("source_canonical_service", &src.canonical_service),
        ("source_canonical_revision", &src.canonical_revision),
        ("source_workload_namespace", &src.namespace),
        ("source_principal", &src.principal),
        ("source_app", &src.app),
        ("source_version", &src.version),
        ("source_cluster", &src.cluster),
        ("destination_workload", &dst.workload),
        ("destination_workload_namespace", &dst.namespace),
        ("destination_principal", &dst.principal),
        ("destination_app", &dst.app),
        ("destination_version", &dst.version),
        ("destination_service", &service.host),
        ("destination_canonical_service", &dst.canonical_service),
        ("destination_canonical_revision", &dst.canonical_revision),
        ("destination_service_name", &service.name),
        ("destination_service_namespace", &service.namespace),
        ("destination_cluster", &dst.cluster),
        ("request_protocol", key.protocol),
    ];
    if key.protocol != "tcp" {
        pairs.push(("response_code", &code));
        pairs.push(("grpc_response_status", &grpc));
    }
    pairs.push(("response_flags", &flags));
    pairs.push(("connection_security_policy", policy));
    pairs
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `k="v",...` for a series' labels.
fn join_labels(pairs: &[(String, String)]) -> String {
    let mut out = String::with_capacity(1024);
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{k}=\"{}\"", escape_label(v));
    }
    out
}

pub mod overrides;
pub mod peer;

pub use overrides::StatsConfig;

/// Istio's HTTP metric families (without `istio_`).
pub const HTTP_FAMILIES: [&str; 6] = [
    "requests_total",
    "request_duration_milliseconds",
    "request_bytes",
    "response_bytes",
    "request_messages_total",
    "response_messages_total",
];

#[cfg(test)]
mod tests;
