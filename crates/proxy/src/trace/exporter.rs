//! OTLP/gRPC export: finished spans go into a bounded queue that a
//! background task drains in batches and sends as
//! `opentelemetry.proto.collector.trace.v1.TraceService/Export` to a host of
//! the configured cluster, through the cluster's own connection pool.
//!
//! Requests never wait for the collector: a full queue drops the span (and
//! counts it), and a slow or unreachable collector only delays the task.
//! Batching follows Envoy's OpenTelemetry tracer: a batch goes out when it
//! holds `tracing.opentelemetry.min_flush_spans` spans (default 5) or when
//! the `tracing.opentelemetry.flush_interval_ms` timer fires (default
//! 5000 ms); both are read from the bootstrap's runtime layers.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::config::core::v3::RoutingPriority;
use http::{HeaderValue, Request, header};
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
use prost::Message;
use tokio::sync::mpsc;

use super::span::SpanData;
use crate::cluster::Version;
use crate::cluster::pool::SendOptions;
use crate::snapshot::SharedSnapshot;

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// The most spans one Export call carries, so one request stays small
/// when the collector was away and a backlog built up.
const MAX_BATCH: usize = 512;

/// Tracer counters (Envoy's `tracing.opentelemetry.*`, plus drops).
#[derive(Debug, Default)]
pub struct TraceStats {
    pub spans_sent: AtomicU64,
    /// Spans dropped because the export queue was full.
    pub spans_dropped: AtomicU64,
    pub timer_flushed: AtomicU64,
    pub export_failures: AtomicU64,
}

/// The counters of one tracer kind.
pub fn stats(zipkin: bool) -> &'static TraceStats {
    static OTLP: TraceStats = TraceStats::new();
    static ZIPKIN: TraceStats = TraceStats::new();
    if zipkin { &ZIPKIN } else { &OTLP }
}

impl TraceStats {
    const fn new() -> Self {
        Self {
            spans_sent: AtomicU64::new(0),
            spans_dropped: AtomicU64::new(0),
            timer_flushed: AtomicU64::new(0),
            export_failures: AtomicU64::new(0),
        }
    }
}

/// The counters under Envoy's names (`tracing.opentelemetry.spans_sent`,
/// `tracing.zipkin.timer_flushed`, ...), for `/stats`.
pub fn stat_values(out: &mut Vec<(String, u64)>) {
    for (prefix, failed, s) in [
        ("tracing.opentelemetry", "export_failed", stats(false)),
        ("tracing.zipkin", "reports_failed", stats(true)),
    ] {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        out.push((format!("{prefix}.spans_sent"), load(&s.spans_sent)));
        out.push((format!("{prefix}.spans_dropped"), load(&s.spans_dropped)));
        out.push((format!("{prefix}.timer_flushed"), load(&s.timer_flushed)));
        out.push((format!("{prefix}.{failed}"), load(&s.export_failures)));
    }
}

#[derive(Debug, Clone)]
pub(crate) struct ExporterConfig {
    pub(crate) cluster: String,
    /// `:authority` of export requests.
    pub(crate) authority: String,
    pub(crate) timeout: Duration,
    pub(crate) queue: usize,
    pub(crate) format: Format,
}

impl ExporterConfig {
    fn stats(&self) -> &'static TraceStats {
        stats(matches!(self.format, Format::Zipkin { .. }))
    }
}

/// What the collector speaks.
#[derive(Debug, Clone)]
pub(crate) enum Format {
    /// OTLP/gRPC `TraceService/Export`.
    Otlp {
        service_name: String,
        sdk_attributes: bool,
    },
    /// Zipkin v2 JSON, POSTed to `endpoint` with `Host: hostname`.
    Zipkin { endpoint: String, hostname: String },
}

#[derive(Debug)]
pub(crate) struct Exporter {
    config: Arc<ExporterConfig>,
    tx: mpsc::Sender<SpanData>,
    /// Taken by the task, started on the first span (config is compiled
    /// where there may be no runtime yet; requests always run in one).
    rx: Mutex<Option<mpsc::Receiver<SpanData>>>,
    started: AtomicBool,
}

impl Exporter {
    pub(crate) fn new(config: ExporterConfig) -> Self {
        let (tx, rx) = mpsc::channel(config.queue);
        Self {
            config: Arc::new(config),
            tx,
            rx: Mutex::new(Some(rx)),
            started: AtomicBool::new(false),
        }
    }

    fn stats(&self) -> &'static TraceStats {
        stats(matches!(self.config.format, Format::Zipkin { .. }))
    }

    /// Queues a finished span; never waits.
    pub(crate) fn send(&self, span: SpanData, snapshot: &SharedSnapshot) {
        if !self.started.load(Ordering::Relaxed) && !self.started.swap(true, Ordering::AcqRel) {
            let rx = self.rx.lock().ok().and_then(|mut r| r.take());
            if let (Some(rx), Ok(rt)) = (rx, tokio::runtime::Handle::try_current()) {
                rt.spawn(run(rx, Arc::clone(&self.config), Arc::clone(snapshot)));
            }
        }
        if self.tx.try_send(span).is_err() {
            self.stats().spans_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Drains the queue until every sender (the connection manager config and
/// the requests still finishing) is gone, then flushes what is left.
async fn run(mut rx: mpsc::Receiver<SpanData>, cfg: Arc<ExporterConfig>, snapshot: SharedSnapshot) {
    let (interval, min_flush) = {
        let local = super::local_info();
        match cfg.format {
            Format::Otlp { .. } => (local.flush_interval, local.min_flush_spans.max(1)),
            Format::Zipkin { .. } => (
                local.zipkin_flush_interval,
                local.zipkin_min_flush_spans.max(1),
            ),
        }
    };
    let resource = resource(&cfg);
    let mut timer = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buffer: Vec<SpanData> = Vec::new();
    loop {
        tokio::select! {
            span = rx.recv() => match span {
                Some(s) => {
                    buffer.push(s);
                    if buffer.len() >= min_flush {
                        flush(&mut buffer, &resource, &cfg, &snapshot).await;
                    }
                }
                None => {
                    flush(&mut buffer, &resource, &cfg, &snapshot).await;
                    return;
                }
            },
            _ = timer.tick() => {
                cfg.stats().timer_flushed.fetch_add(1, Ordering::Relaxed);
                flush(&mut buffer, &resource, &cfg, &snapshot).await;
            }
        }
    }
}

pub(crate) fn string_kv(key: impl Into<String>, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn resource(cfg: &ExporterConfig) -> Resource {
    let Format::Otlp {
        service_name,
        sdk_attributes,
    } = &cfg.format
    else {
        return Resource::default();
    };
    let mut attributes = vec![string_kv("service.name", service_name.as_str())];
    if *sdk_attributes {
        attributes.push(string_kv("telemetry.sdk.language", "rust"));
        attributes.push(string_kv("telemetry.sdk.name", "trellis"));
        attributes.push(string_kv(
            "telemetry.sdk.version",
            env!("CARGO_PKG_VERSION"),
        ));
    }
    Resource {
        attributes,
        ..Default::default()
    }
}

async fn flush(
    buffer: &mut Vec<SpanData>,
    resource: &Resource,
    cfg: &ExporterConfig,
    snapshot: &SharedSnapshot,
) {
    while !buffer.is_empty() {
        let n = buffer.len().min(MAX_BATCH);
        let spans = buffer.drain(..n);
        let sent = match &cfg.format {
            Format::Otlp { .. } => {
                let request = ExportTraceServiceRequest {
                    resource_spans: vec![ResourceSpans {
                        resource: Some(resource.clone()),
                        scope_spans: vec![ScopeSpans {
                            scope: Some(InstrumentationScope {
                                name: "trellis".into(),
                                version: env!("CARGO_PKG_VERSION").into(),
                                ..Default::default()
                            }),
                            spans: spans.map(SpanData::into_otlp).collect(),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }],
                };
                Box::pin(export(request, cfg, snapshot)) as Export<'_>
            }
            Format::Zipkin { endpoint, hostname } => {
                let local = super::local_info();
                let body: Vec<serde_json::Value> =
                    spans.map(|s| super::zipkin::to_json(&s, local)).collect();
                Box::pin(export_zipkin(body, endpoint, hostname, cfg, snapshot))
            }
        };
        cfg.stats()
            .spans_sent
            .fetch_add(n as u64, Ordering::Relaxed);
        match tokio::time::timeout(cfg.timeout, sent).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                cfg.stats().export_failures.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(cluster = %cfg.cluster, error = %e, spans = n, "OTLP export failed");
            }
            Err(_) => {
                cfg.stats().export_failures.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(cluster = %cfg.cluster, spans = n, "OTLP export timed out");
            }
        }
    }
}

/// One export call in flight.
type Export<'a> = std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// The gRPC length-prefixed message frame.
pub(crate) fn grpc_frame(message: &impl Message) -> Bytes {
    let len = message.encoded_len();
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(len as u32);
    // Encoding into a buffer sized from `encoded_len` cannot fail.
    let _ = message.encode(&mut buf);
    buf.freeze()
}

fn pick(
    cfg: &ExporterConfig,
    snapshot: &SharedSnapshot,
) -> Result<(Arc<crate::cluster::Cluster>, Arc<crate::cluster::Host>), String> {
    let cluster = snapshot
        .load()
        .clusters
        .get(&cfg.cluster)
        .cloned()
        .ok_or_else(|| format!("cluster '{}' is not configured", cfg.cluster))?;
    let host = cluster
        .pick(&Default::default())
        .cloned()
        .ok_or_else(|| "no healthy upstream".to_string())?;
    Ok((cluster, host))
}

/// Zipkin v2: a JSON array of spans POSTed to the collector endpoint.
async fn export_zipkin(
    spans: Vec<serde_json::Value>,
    endpoint: &str,
    hostname: &str,
    cfg: &ExporterConfig,
    snapshot: &SharedSnapshot,
) -> Result<(), String> {
    let (cluster, host) = pick(cfg, snapshot)?;
    let body = serde_json::to_vec(&spans).map_err(|e| e.to_string())?;
    let version = match cluster.spec.protocol {
        crate::cluster::UpstreamProtocol::Fixed(v) => v,
        crate::cluster::UpstreamProtocol::Downstream => Version::Http1,
    };
    let uri = match version {
        Version::Http1 => endpoint.to_string(),
        Version::Http2 => request_uri(hostname, endpoint).to_string(),
    };
    let mut req = Request::post(uri)
        .body(crate::body::full(body))
        .map_err(|e| e.to_string())?;
    if version == Version::Http2 {
        *req.version_mut() = http::Version::HTTP_2;
    } else if let Ok(v) = HeaderValue::from_str(hostname) {
        req.headers_mut().insert(header::HOST, v);
    }
    req.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let resources = cluster.spec.breakers.for_priority(RoutingPriority::Default);
    let opts = SendOptions {
        connect_timeout: cluster.spec.connect_timeout,
        resources,
        max_requests_per_connection: cluster.spec.max_requests_per_connection,
        idle_timeout: cluster.spec.idle_timeout,
        tls: host.tls.as_deref(),
    };
    let resp = host
        .state
        .pool
        .send(req, version, opts)
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = resp.status();
    // Read the answer out so the connection can be reused.
    let _ = resp.into_body().collect().await;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("HTTP status {status}"))
    }
}

/// `http://<authority><path>`. Istio's cluster names (`outbound|4317||host`)
/// are not valid authorities; Envoy sends them as they are, which HTTP/2
/// here cannot, so such characters become `_` (collectors ignore the
/// authority).
fn request_uri(authority: &str, path: &str) -> http::Uri {
    if let Ok(u) = format!("http://{authority}{path}").parse() {
        return u;
    }
    let clean: String = authority
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-._~:".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("http://{clean}{path}")
        .parse()
        .unwrap_or_else(|_| http::Uri::from_static("http://collector/"))
}

async fn export(
    request: ExportTraceServiceRequest,
    cfg: &ExporterConfig,
    snapshot: &SharedSnapshot,
) -> Result<(), String> {
    let (cluster, host) = pick(cfg, snapshot)?;
    let mut req = Request::post(request_uri(&cfg.authority, EXPORT_PATH))
        .version(http::Version::HTTP_2)
        .body(crate::body::full(grpc_frame(&request)))
        .map_err(|e| e.to_string())?;
    let h = req.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(header::TE, HeaderValue::from_static("trailers"));
    if let Ok(v) = HeaderValue::from_str(&format!("{}m", cfg.timeout.as_millis())) {
        h.insert("grpc-timeout", v);
    }
    let resources = cluster.spec.breakers.for_priority(RoutingPriority::Default);
    let opts = SendOptions {
        connect_timeout: cluster.spec.connect_timeout,
        resources,
        max_requests_per_connection: cluster.spec.max_requests_per_connection,
        idle_timeout: cluster.spec.idle_timeout,
        tls: host.tls.as_deref(),
    };
    let resp = host
        .state
        .pool
        .send(req, Version::Http2, opts)
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = resp.status();
    let header_status = super::span::grpc_status_of(resp.headers());
    let collected = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    let trailer_status = collected.trailers().and_then(super::span::grpc_status_of);
    if !status.is_success() {
        return Err(format!("HTTP status {status}"));
    }
    match trailer_status.or(header_status) {
        Some(0) => Ok(()),
        Some(code) => Err(format!("grpc-status {code}")),
        None => Err("no grpc-status".into()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cluster_names_make_valid_authorities() {
        let u = request_uri("outbound|4317||otel.obs.svc.cluster.local", EXPORT_PATH);
        assert_eq!(
            u.authority().map(|a| a.as_str()),
            Some("outbound_4317__otel.obs.svc.cluster.local")
        );
        assert_eq!(u.path(), EXPORT_PATH);
        let u = request_uri("otel.obs.svc.cluster.local", EXPORT_PATH);
        assert_eq!(
            u.authority().map(|a| a.as_str()),
            Some("otel.obs.svc.cluster.local")
        );
    }

    #[test]
    fn frame_has_the_grpc_prefix() {
        let req = ExportTraceServiceRequest::default();
        let f = grpc_frame(&req);
        assert_eq!(&f[..], &[0, 0, 0, 0, 0]);
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans::default()],
        };
        let f = grpc_frame(&req);
        assert_eq!(f[0], 0);
        assert_eq!(
            u32::from_be_bytes([f[1], f[2], f[3], f[4]]) as usize,
            f.len() - 5
        );
    }

    #[tokio::test]
    async fn a_full_queue_drops_instead_of_waiting() {
        let exporter = Exporter::new(ExporterConfig {
            cluster: "nowhere".into(),
            authority: "nowhere".into(),
            timeout: Duration::from_millis(10),
            queue: 2,
            format: Format::Otlp {
                service_name: "s".into(),
                sdk_attributes: true,
            },
        });
        // Not started: nothing drains the queue.
        exporter.started.store(true, Ordering::Relaxed);
        let before = stats(false).spans_dropped.load(Ordering::Relaxed);
        let snapshot = SharedSnapshot::default();
        for _ in 0..5 {
            exporter.send(super::super::span::tests_support::span(), &snapshot);
        }
        assert!(stats(false).spans_dropped.load(Ordering::Relaxed) >= before + 3);
    }
}
