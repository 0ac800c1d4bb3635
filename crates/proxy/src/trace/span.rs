//! One request's trace: the downstream span (SERVER, or CLIENT on an egress
//! listener without upstream spans), optional upstream spans (CLIENT, one
//! per attempt, with `spawn_upstream_span`), decorator handling, header
//! injection, and the tags Envoy sets when the stream ends.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::trace::v1::{Span, Status, span::SpanKind, status::StatusCode};

use super::b3::{self, TraceId};
use super::config::{CustomTag, Flavor, HcmTracing, Shared, TagContext, route_sampling};
use super::context::{self, Parent, SpanContext};
use super::sampler::{self, Reason, X_CLIENT_TRACE_ID, X_ENVOY_FORCE_TRACE, X_REQUEST_ID};
use crate::body::{Body, BoxError};
use crate::http::log::RequestProgress;
use crate::snapshot::SharedSnapshot;

pub(crate) static X_ENVOY_DECORATOR_OPERATION: HeaderName =
    HeaderName::from_static("x-envoy-decorator-operation");
static X_ENVOY_DOWNSTREAM_SERVICE_CLUSTER: HeaderName =
    HeaderName::from_static("x-envoy-downstream-service-cluster");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// A span as both export formats need it.
#[derive(Debug)]
pub(crate) struct SpanData {
    pub(crate) trace_id: TraceId,
    pub(crate) span_id: [u8; 8],
    pub(crate) sampled: bool,
    pub(crate) parent: Option<[u8; 8]>,
    pub(crate) tracestate: String,
    pub(crate) name: String,
    pub(crate) kind: SpanKind,
    pub(crate) start: SystemTime,
    pub(crate) end: Option<SystemTime>,
    pub(crate) tags: Vec<(String, String)>,
    /// Zipkin: the server side of a span id shared with the client.
    pub(crate) shared: bool,
}

impl SpanData {
    fn set(&mut self, key: &str, value: impl Into<String>) {
        let value = value.into();
        match self.tags.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.tags.push((key.to_string(), value)),
        }
    }

    pub(crate) fn into_otlp(self) -> Span {
        let error = otel_error(self.kind, &self.tags);
        let nanos = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        };
        let end = self.end.unwrap_or_else(SystemTime::now);
        Span {
            trace_id: self.trace_id.bytes.to_vec(),
            span_id: self.span_id.to_vec(),
            parent_span_id: self.parent.map(|p| p.to_vec()).unwrap_or_default(),
            trace_state: self.tracestate,
            name: self.name,
            kind: self.kind as i32,
            start_time_unix_nano: nanos(self.start),
            end_time_unix_nano: nanos(end),
            attributes: self
                .tags
                .into_iter()
                .map(|(k, v)| super::exporter::string_kv(k, v))
                .collect(),
            status: error.then(|| Status {
                code: StatusCode::Error as i32,
                message: String::new(),
            }),
            ..Default::default()
        }
    }
}

/// Envoy 1.40 sets an OpenTelemetry span's status as the semantic
/// conventions say: from `grpc.status_code` when there is one (a server
/// fails on UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL,
/// UNAVAILABLE and DATA_LOSS, a client on anything but OK), else from
/// `http.status_code` (a server fails on 5xx, a client on 4xx and 5xx;
/// 0, no response, is unset).
fn otel_error(kind: SpanKind, tags: &[(String, String)]) -> bool {
    let tag = |name: &str| {
        tags.iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.parse::<u16>().ok())
    };
    let server = kind == SpanKind::Server;
    if let Some(code) = tag("grpc.status_code") {
        return if server {
            matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
        } else {
            code != 0
        };
    }
    match tag("http.status_code") {
        Some(0) | None => false,
        Some(code) if server => code >= 500,
        Some(code) => code >= 400,
    }
}

/// Where a request's trace starts: after route selection, before filters.
pub(crate) struct Begin<'a> {
    pub tracing: &'a HcmTracing,
    pub headers: &'a mut HeaderMap,
    pub route: Option<&'a route::RouteEntry>,
    /// `:authority` as routing saw it (the egress span name).
    pub host: &'a str,
    /// Whether the request is internal (its `x-envoy-force-trace` counts).
    pub internal: bool,
    pub start: SystemTime,
}

/// The trace of one request, from route selection to the end of the response body.
#[derive(Debug)]
pub struct RequestTrace {
    shared: Arc<Shared>,
    /// `None`: no span (no provider, or an invalid `traceparent`).
    span: Option<SpanData>,
    reason: Reason,
    egress: bool,
    /// `x-envoy-decorator-operation` for the response (ingress).
    response_operation: Option<String>,
    /// Route custom tags (they come first) and route metadata values, resolved at the start.
    route_tags: Vec<CustomTag>,
    route_metadata_values: Vec<(String, String)>,
    upstream: Vec<SpanData>,
}

/// Starts a request's trace: the sampling decision (recorded in
/// `x-request-id`), the parent context, the span name and the decorator.
pub(crate) fn begin(b: Begin<'_>) -> Box<RequestTrace> {
    let shared = Arc::clone(&b.tracing.shared);
    let egress = b.tracing.outbound();
    let headers = b.headers;
    // Envoy strips x-envoy-force-trace from requests that are not internal.
    if !b.internal {
        headers.remove(&X_ENVOY_FORCE_TRACE);
    }
    let route_tracing = b.route.and_then(|r| r.proto.tracing.as_ref());
    let sampling = route_tracing.map_or(shared.sampling, route_sampling);
    let reason = sampler::decide(headers, &sampling, b.internal, rand::random());
    let kind = if egress && !shared.spawn_upstream_span {
        SpanKind::Client
    } else {
        SpanKind::Server
    };
    let flavor = shared.provider.as_ref().map(|p| p.flavor);
    // Envoy's Zipkin driver names spans after the host; the OpenTelemetry
    // one after the direction.
    let mut name = match flavor {
        Some(Flavor::Zipkin { .. }) => b.host.to_string(),
        _ if egress => format!("egress {}", b.host),
        _ => "ingress".to_string(),
    };
    let ids = match flavor {
        None => None,
        Some(Flavor::OpenTelemetry) => otel_ids(headers, reason),
        Some(Flavor::Zipkin {
            shared_context,
            wide,
        }) => zipkin_ids(
            headers,
            reason,
            shared_context,
            wide,
            kind == SpanKind::Server,
        ),
    };
    let span = ids.map(|ids| {
        // An unsampled span only propagates its ids: no tags are kept.
        let tags = if ids.sampled {
            let local = super::local_info();
            vec![
                ("node_id".into(), local.node_id.clone()),
                ("zone".into(), local.zone.clone()),
            ]
        } else {
            Vec::new()
        };
        SpanData {
            trace_id: ids.trace_id,
            span_id: ids.span_id,
            sampled: ids.sampled,
            parent: ids.parent,
            tracestate: ids.tracestate,
            name: String::new(),
            kind,
            start: b.start,
            end: None,
            tags,
            shared: ids.shared,
        }
    });

    // Custom tags only matter for a span that will be exported.
    let mut route_tags = Vec::new();
    let mut route_metadata_values = Vec::new();
    if span.as_ref().is_some_and(|s| s.sampled) {
        if let Some(t) = route_tracing {
            for (i, c) in t.custom_tags.iter().enumerate() {
                match CustomTag::compile(c, &format!("tracing.custom_tags[{i}]")) {
                    Ok(tag) => route_tags.push(tag),
                    Err((field, msg)) => {
                        tracing::debug!(%field, %msg, "route custom tag ignored");
                    }
                }
            }
        }
        for tag in route_tags.iter().chain(shared.custom_tags.iter()) {
            if let CustomTag::Metadata {
                tag: name,
                request: false,
                ..
            } = tag
                && let Some(v) = tag.value(&TagContext {
                    headers,
                    route: b.route.map(|r| &r.proto),
                    metadata: None,
                })
            {
                route_metadata_values.push((name.clone(), v));
            }
        }
    }

    // The route's decorator names the span; on ingress an incoming
    // x-envoy-decorator-operation names it instead (and goes no further);
    // on egress the decorator's operation is passed on to the upstream.
    let mut decorated = None;
    let mut propagate = true;
    if let Some(d) = b.route.and_then(|r| r.decorator.as_ref()) {
        propagate = d.propagate.is_none_or(|p| p.value);
        if !d.operation.is_empty() {
            name = d.operation.clone();
            decorated = Some(d.operation.clone());
        }
    }
    if egress {
        if let Some(op) = decorated.as_deref().filter(|_| propagate)
            && let Ok(v) = HeaderValue::from_str(op)
        {
            headers.insert(X_ENVOY_DECORATOR_OPERATION.clone(), v);
        }
    } else if let Some(v) = headers.remove(&X_ENVOY_DECORATOR_OPERATION)
        && !v.is_empty()
    {
        name = String::from_utf8_lossy(v.as_bytes()).into_owned();
        decorated = None;
    }
    let response_operation = if egress || !propagate {
        None
    } else {
        decorated
    };
    let span = span.map(|mut s| {
        s.name = name;
        s
    });
    Box::new(RequestTrace {
        shared,
        span,
        reason,
        egress,
        response_operation,
        route_tags,
        route_metadata_values,
        upstream: Vec::new(),
    })
}

/// A new span's identity.
struct Ids {
    trace_id: TraceId,
    span_id: [u8; 8],
    parent: Option<[u8; 8]>,
    sampled: bool,
    tracestate: String,
    shared: bool,
}

/// W3C: a child of the incoming `traceparent`, or a new trace.
fn otel_ids(headers: &HeaderMap, reason: Reason) -> Option<Ids> {
    let wide = |bytes| TraceId { bytes, wide: true };
    match context::extract(headers) {
        Parent::Absent => Some(Ids {
            trace_id: wide(context::random_id()),
            span_id: context::random_id(),
            parent: None,
            sampled: reason.traced(),
            tracestate: String::new(),
            shared: false,
        }),
        Parent::Valid {
            context: p,
            tracestate,
        } => Some(Ids {
            trace_id: wide(p.trace_id),
            span_id: context::random_id(),
            parent: Some(p.span_id),
            // Envoy 1.40 exports a child of a remote parent only when both
            // the parent and its own decision say so.
            sampled: p.sampled && reason.traced(),
            tracestate,
            shared: false,
        }),
        Parent::Invalid => None,
    }
}

/// B3: the incoming sampled state wins over the decision. A SERVER span
/// with `shared_span_context` takes the client's span id (also on an egress
/// listener with upstream spans); otherwise it is a child of it. A new
/// 64-bit trace id is the root span's id.
fn zipkin_ids(
    headers: &HeaderMap,
    reason: Reason,
    shared_context: bool,
    wide: bool,
    server: bool,
) -> Option<Ids> {
    let sampled = b3::sampled(headers).unwrap_or(reason.traced());
    match b3::extract(headers) {
        b3::Extracted::Absent => {
            let span_id: [u8; 8] = context::random_id();
            let mut bytes = [0u8; 16];
            if wide {
                bytes[..8].copy_from_slice(&context::random_id::<8>());
            }
            bytes[8..].copy_from_slice(&span_id);
            Some(Ids {
                trace_id: TraceId { bytes, wide },
                span_id,
                parent: None,
                sampled,
                tracestate: String::new(),
                shared: shared_context && server,
            })
        }
        b3::Extracted::Valid(c) if !server || !shared_context => Some(Ids {
            trace_id: c.trace_id,
            span_id: context::random_id(),
            parent: Some(c.span_id),
            sampled,
            tracestate: String::new(),
            shared: false,
        }),
        b3::Extracted::Valid(c) => Some(Ids {
            trace_id: c.trace_id,
            span_id: c.span_id,
            parent: c.parent_id,
            sampled,
            tracestate: String::new(),
            shared: true,
        }),
        b3::Extracted::Invalid => None,
    }
}

/// One upstream attempt's span, while it runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attempt(Option<usize>);

impl RequestTrace {
    /// The trace id for access logs (`%TRACE_ID%`), when a span exists.
    pub fn trace_id(&self) -> Option<String> {
        self.span.as_ref().map(|s| s.trace_id.hex())
    }

    pub fn reason(&self) -> Reason {
        self.reason
    }

    /// Whether a span will be exported (the rest of the work is skipped when not).
    pub fn sampled(&self) -> bool {
        self.span.as_ref().is_some_and(|s| s.sampled)
    }

    /// Injects the trace context into an upstream request; with
    /// `spawn_upstream_span` a CLIENT span for this attempt is started and
    /// its id is what the upstream sees as parent. `retry` counts the
    /// attempts before this one: a retry means the previous attempt was
    /// given up (Envoy tags its span `canceled`) and tags `retry.count`.
    pub(crate) fn start_attempt(
        &mut self,
        headers: &mut HeaderMap,
        cluster: &str,
        host: &str,
        protocol: &'static str,
        retry: u32,
    ) -> Attempt {
        // A retried answer was given up; a failed connection was not.
        if retry > 0
            && let Some(previous) = self.upstream.last_mut()
            && previous
                .tags
                .iter()
                .any(|(k, v)| k == "http.status_code" && v != "0")
        {
            previous.set("canceled", "true");
        }
        let Some(parent) = &self.span else {
            return Attempt(None);
        };
        let zipkin = self
            .shared
            .provider
            .as_ref()
            .is_some_and(|p| matches!(p.flavor, Flavor::Zipkin { .. }));
        let inject = |headers: &mut HeaderMap, span_id: &[u8; 8], parent_id: Option<&[u8; 8]>| {
            if zipkin {
                b3::inject(
                    headers,
                    &parent.trace_id,
                    span_id,
                    parent_id,
                    parent.sampled,
                );
            } else {
                let c = SpanContext {
                    trace_id: parent.trace_id.bytes,
                    span_id: *span_id,
                    sampled: parent.sampled,
                };
                context::inject(headers, &c, &parent.tracestate);
            }
        };
        if !self.shared.spawn_upstream_span {
            inject(headers, &parent.span_id, parent.parent.as_ref());
            return Attempt(None);
        }
        let child_id: [u8; 8] = context::random_id();
        inject(headers, &child_id, Some(&parent.span_id));
        if !parent.sampled {
            // The upstream still sees a child id of its own, as from Envoy.
            return Attempt(None);
        }
        let mut tags = vec![
            ("http.protocol".into(), protocol.to_string()),
            ("upstream_address".into(), host.to_string()),
            ("peer.address".into(), host.to_string()),
        ];
        if retry > 0 {
            tags.push(("retry.count".into(), retry.to_string()));
        }
        let child = SpanData {
            trace_id: parent.trace_id,
            span_id: child_id,
            sampled: true,
            parent: Some(parent.span_id),
            tracestate: parent.tracestate.clone(),
            name: format!("router {cluster} egress"),
            kind: SpanKind::Client,
            start: SystemTime::now(),
            end: None,
            tags,
            shared: false,
        };
        self.upstream.push(child);
        Attempt(Some(self.upstream.len() - 1))
    }

    /// Ends an attempt's span: the upstream's status (`None`: no response).
    /// `failure`: the attempt got no response because of this error.
    pub(crate) fn end_attempt(
        &mut self,
        attempt: Attempt,
        cluster: &str,
        status: Option<u16>,
        failure: Option<&crate::cluster::UpstreamError>,
        flags: &crate::http::flags::ResponseFlags,
    ) {
        use crate::cluster::UpstreamError;
        let Some(s) = attempt.0.and_then(|i| self.upstream.get_mut(i)) else {
            return;
        };
        s.end = Some(SystemTime::now());
        // Envoy's reset reason and this attempt's own flag; no stream, no protocol.
        let failed = failure.map(|e| match e {
            UpstreamError::Connect(_) => ("remote connection failure", "UF"),
            UpstreamError::ConnectTimeout => ("connection timeout", "UF"),
            UpstreamError::Reset(_) => ("connection termination", "UC"),
            UpstreamError::Overflow => ("overflow", "UO"),
        });
        if let Some((reason, _)) = failed {
            s.set("http.protocol", "-");
            s.set("error.reason", reason);
        }
        s.set("component", "proxy");
        s.set("upstream_cluster", cluster);
        s.set("upstream_cluster.name", cluster);
        s.set("http.status_code", status.unwrap_or(0).to_string());
        match failed {
            Some((_, flag)) => s.set("response_flags", flag),
            None => s.set("response_flags", flags.to_string()),
        }
        if status.is_none_or(|c| c >= 500) {
            s.set("error", "true");
        }
    }

    /// Response-side work: on ingress the decorator's operation goes back
    /// to the caller; on egress the upstream's operation renames the span.
    /// A request forced with `x-envoy-force-trace` gets its request id back.
    pub fn on_response(&mut self, headers: &mut HeaderMap, request: &HeaderMap) {
        if request.contains_key(&X_ENVOY_FORCE_TRACE)
            && let Some(id) = request.get(&X_REQUEST_ID)
        {
            headers.insert(X_REQUEST_ID.clone(), id.clone());
        }
        if self.egress {
            if let Some(v) = headers.remove(&X_ENVOY_DECORATOR_OPERATION)
                && !v.is_empty()
                && let Some(s) = self.span.as_mut()
            {
                s.name = String::from_utf8_lossy(v.as_bytes()).into_owned();
            }
        } else if let Some(op) = &self.response_operation
            && let Ok(v) = HeaderValue::from_str(op)
        {
            headers.insert(X_ENVOY_DECORATOR_OPERATION.clone(), v);
        }
    }

    /// The request-side tags, taken when the response starts; the span
    /// itself ends with the response body (`finish_on_completion`).
    pub(crate) fn prepare_finish(self: Box<Self>, info: &Finish<'_>) -> Option<Finishing> {
        let mut this = *self;
        // Upstream spans share the downstream span's sampling: nothing to export.
        let mut span = this.span.take().filter(|s| s.sampled)?;
        let h = info.headers;
        let text = |name: &HeaderName| {
            h.get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        if let Some(id) = text(&X_REQUEST_ID) {
            span.set("guid:x-request-id", id);
        }
        let max = this.shared.max_path_tag_length;
        let path = match info.path.char_indices().nth(max) {
            Some((i, _)) => &info.path[..i],
            None => info.path,
        };
        let proto = text(&X_FORWARDED_PROTO).unwrap_or_else(|| "http".into());
        span.set(
            "http.url",
            format!("{proto}://{}{path}", info.authority.unwrap_or_default()),
        );
        span.set("http.method", info.method);
        span.set(
            "downstream_cluster",
            text(&X_ENVOY_DOWNSTREAM_SERVICE_CLUSTER).unwrap_or_else(|| "-".into()),
        );
        span.set(
            "user_agent",
            text(&http::header::USER_AGENT).unwrap_or_else(|| "-".into()),
        );
        span.set("http.protocol", info.protocol);
        span.set("peer.address", info.peer.to_string());
        if let Some(c) = text(&X_CLIENT_TRACE_ID) {
            span.set("guid:x-client-trace-id", c);
        }
        if info.grpc {
            span.set("grpc.path", info.path);
            if let Some(a) = info.authority {
                span.set("grpc.authority", a);
            }
            if let Some(ct) = text(&http::header::CONTENT_TYPE) {
                span.set("grpc.content_type", ct);
            }
            if let Some(t) = text(&HeaderName::from_static("grpc-timeout")) {
                span.set("grpc.timeout", t);
            }
        }
        let mut custom = Vec::new();
        for tag in this.route_tags.iter().chain(this.shared.custom_tags.iter()) {
            let value = match tag {
                CustomTag::Metadata {
                    tag: name,
                    request: false,
                    ..
                } => this
                    .route_metadata_values
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone()),
                other => other.value(&TagContext {
                    headers: h,
                    route: None,
                    metadata: info.metadata,
                }),
            };
            if let Some(v) = value {
                custom.push((tag.tag().to_string(), v));
            }
        }
        Some(Finishing {
            shared: this.shared,
            span,
            upstream: this.upstream,
            custom,
            status: info.status,
            grpc_status: info.grpc_status,
            grpc_message: info.grpc_message.clone(),
            flags: info.flags.clone(),
            cluster: info.cluster.clone(),
            request: Arc::clone(info.request),
            snapshot: Arc::clone(info.snapshot),
        })
    }
}

/// What the connection manager knows when the response starts.
pub(crate) struct Finish<'a> {
    pub headers: &'a HeaderMap,
    pub method: &'a str,
    /// The original `:path` (with query), before any rewrite.
    pub path: &'a str,
    pub authority: Option<&'a str>,
    pub protocol: &'static str,
    /// The downstream connection's peer (no port).
    pub peer: IpAddr,
    pub status: u16,
    pub flags: String,
    /// Set when a cluster was resolved for the request.
    pub cluster: Option<String>,
    pub grpc: bool,
    pub grpc_status: Option<u16>,
    pub grpc_message: Option<String>,
    pub request: &'a Arc<RequestProgress>,
    pub snapshot: &'a SharedSnapshot,
    /// Request (dynamic) metadata, for metadata custom tags.
    pub metadata: Option<&'a crate::rbac::DynamicMetadata>,
}

/// A span waiting for its response body to end.
#[derive(Debug)]
pub(crate) struct Finishing {
    shared: Arc<Shared>,
    span: SpanData,
    upstream: Vec<SpanData>,
    custom: Vec<(String, String)>,
    status: u16,
    grpc_status: Option<u16>,
    grpc_message: Option<String>,
    flags: String,
    cluster: Option<String>,
    request: Arc<RequestProgress>,
    snapshot: SharedSnapshot,
}

impl Finishing {
    fn finish(self, sent: u64, trailers: Option<&HeaderMap>) {
        let Self {
            shared,
            mut span,
            upstream,
            custom,
            status,
            grpc_status,
            grpc_message,
            flags,
            cluster,
            request,
            snapshot,
        } = self;
        let s = &mut span;
        s.end = Some(SystemTime::now());
        s.set("request_size", request.bytes().to_string());
        s.set("response_size", sent.to_string());
        s.set("component", "proxy");
        if let Some(c) = &cluster {
            s.set("upstream_cluster", c.as_str());
            s.set("upstream_cluster.name", c.as_str());
        }
        s.set("http.status_code", status.to_string());
        s.set("response_flags", flags);
        let (grpc_status, grpc_message) = match trailers.and_then(grpc_status_of) {
            Some(code) => (
                Some(code),
                trailers
                    .and_then(|t| t.get("grpc-message"))
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
            ),
            None => (grpc_status, grpc_message),
        };
        if let Some(code) = grpc_status {
            s.set("grpc.status_code", code.to_string());
            if let Some(m) = grpc_message {
                s.set("grpc.message", m);
            }
            // Envoy tags only the codes that mean the upstream failed
            // (UNKNOWN, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, UNIMPLEMENTED,
            // INTERNAL, UNAVAILABLE, DATA_LOSS), not the caller's mistakes.
            if matches!(code, 2 | 4 | 8 | 12 | 13 | 14 | 15) {
                s.set("error", "true");
            }
        }
        if status >= 500 {
            s.set("error", "true");
        }
        for (k, v) in custom {
            s.set(&k, v);
        }
        let Some(exporter) = shared.provider.as_ref().and_then(|p| p.exporter.as_ref()) else {
            return;
        };
        // Upstream spans end first, as in Envoy.
        for u in upstream {
            exporter.send(u, &snapshot);
        }
        exporter.send(span, &snapshot);
    }
}

/// `grpc-status` as a number.
pub(crate) fn grpc_status_of(headers: &HeaderMap) -> Option<u16> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

pin_project_lite::pin_project! {
    struct Traced {
        #[pin]
        inner: Body,
        pending: Option<Finishing>,
        sent: u64,
        trailers: Option<HeaderMap>,
    }

    impl PinnedDrop for Traced {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(p) = this.pending.take() {
                p.finish(*this.sent, this.trailers.as_ref());
            }
        }
    }
}

/// Wraps the response body so that the span ends when the body does (or
/// when the stream is dropped).
pub(crate) fn finish_on_completion(body: Body, finishing: Finishing) -> Body {
    Traced {
        inner: body,
        pending: Some(finishing),
        sent: 0,
        trailers: None,
    }
    .boxed()
}

impl http_body::Body for Traced {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    *this.sent += d.len() as u64;
                } else if let Some(t) = f.trailers_ref() {
                    *this.trailers = Some(t.clone());
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                if let Some(p) = this.pending.take() {
                    p.finish(*this.sent, this.trailers.as_ref());
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    pub(crate) fn span() -> SpanData {
        SpanData {
            trace_id: TraceId {
                bytes: [1; 16],
                wide: true,
            },
            span_id: [2; 8],
            sampled: true,
            parent: None,
            tracestate: String::new(),
            name: "s".into(),
            kind: SpanKind::Server,
            start: SystemTime::now(),
            end: None,
            tags: Vec::new(),
            shared: false,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn tags(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn otel_status_follows_semantic_conventions() {
        let server = SpanKind::Server;
        let client = SpanKind::Client;
        assert!(otel_error(server, &tags(&[("http.status_code", "503")])));
        assert!(!otel_error(server, &tags(&[("http.status_code", "404")])));
        assert!(otel_error(client, &tags(&[("http.status_code", "404")])));
        assert!(!otel_error(client, &tags(&[("http.status_code", "0")])));
        let grpc = |code| tags(&[("http.status_code", "200"), ("grpc.status_code", code)]);
        assert!(otel_error(server, &grpc("14")));
        assert!(!otel_error(server, &grpc("5")));
        assert!(otel_error(client, &grpc("5")));
        assert!(!otel_error(client, &grpc("0")));
    }

    fn b3_headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn zipkin_shared_span_context() {
        let h = b3_headers(&[
            ("x-b3-traceid", "463ac35c9f6413ad"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-parentspanid", "1111111111111111"),
        ]);
        // A server span shares the client's id and parent.
        let ids = zipkin_ids(&h, Reason::Sampling, true, false, true).unwrap();
        assert_eq!(context::hex(&ids.span_id), "a2fb4a1d1a96d312");
        assert_eq!(context::hex(&ids.parent.unwrap()), "1111111111111111");
        assert!(ids.shared && ids.sampled);
        // Without sharing, or for a client span, it is a child.
        for (shared, server) in [(false, true), (true, false)] {
            let ids = zipkin_ids(&h, Reason::Sampling, shared, false, server).unwrap();
            assert_eq!(context::hex(&ids.parent.unwrap()), "a2fb4a1d1a96d312");
            assert!(!ids.shared);
        }
        // The incoming sampled state beats the decision.
        let h = b3_headers(&[("b3", "0")]);
        let ids = zipkin_ids(&h, Reason::Sampling, true, false, true).unwrap();
        assert!(!ids.sampled && ids.parent.is_none());
        // A new 64-bit trace id is the root span's id.
        assert_eq!(ids.trace_id.hex(), context::hex(&ids.span_id));
        let wide = zipkin_ids(&HeaderMap::new(), Reason::Sampling, true, true, true).unwrap();
        assert_eq!(wide.trace_id.hex().len(), 32);
        assert!(wide.trace_id.hex().ends_with(&context::hex(&wide.span_id)));
    }

    #[test]
    fn otel_child_of_remote_parent_needs_both_decisions() {
        let h = b3_headers(&[(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )]);
        assert!(otel_ids(&h, Reason::Sampling).unwrap().sampled);
        assert!(!otel_ids(&h, Reason::NotTraceable).unwrap().sampled);
        let h = b3_headers(&[("traceparent", "garbage")]);
        assert!(otel_ids(&h, Reason::Sampling).is_none());
    }
}
