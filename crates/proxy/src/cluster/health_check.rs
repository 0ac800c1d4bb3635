//! Active health checking, as Envoy's `HealthCheckerImplBase` and its HTTP,
//! TCP and gRPC checkers do it.
//!
//! Every checked host runs one session per configured health check: a tokio
//! task that probes the host, counts results against the thresholds and sets
//! or clears `FAILED_ACTIVE_HC` / `PENDING_ACTIVE_HC` on the host (a host
//! fails if any of its checks fails, as Envoy's multi-checker groups do).
//! Sessions belong to the host's shared state, not to one `Cluster` value:
//! they follow whichever value of the cluster is current, keep their timing
//! and counters across EDS/CDS updates that keep the host, and end when the
//! host or the cluster goes away or health checking is turned off.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use envoy_types::pb::envoy::config::cluster::v3::Cluster as ClusterProto;
use envoy_types::pb::envoy::config::core::v3::{
    HeaderValueOption, HealthCheck as HealthCheckProto, RequestMethod,
    header_value_option::HeaderAppendAction, health_check,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use envoy_types::pb::envoy::r#type::v3::{CodecClientType, Int64Range};
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::outlier::ClusterHealth;
use super::{Cluster, Host, HostState, health_flag};
use crate::addr::Target;
use crate::duration::to_std;
use crate::matcher::StringMatch;

const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
const USER_AGENT: &str = "Envoy/HC";
const DEFAULT_NO_TRAFFIC_INTERVAL: Duration = Duration::from_secs(60);
const DEFAULT_RESPONSE_BUFFER_SIZE: u64 = 1024;
static UPSTREAM_HEALTHCHECKED_CLUSTER: HeaderName =
    HeaderName::from_static("x-envoy-upstream-healthchecked-cluster");

/// The compiled `health_checks` of a cluster.
#[derive(Debug)]
pub struct HealthChecks {
    /// As received, to tell whether an update changes them.
    protos: Vec<HealthCheckProto>,
    pub checks: Vec<HealthCheckConfig>,
    /// `common_lb_config.ignore_new_hosts_until_first_hc`: new hosts are
    /// also marked `PENDING_ACTIVE_HC` until their first check.
    pub ignore_new_hosts_until_first_hc: bool,
}

/// One compiled `HealthCheck`.
#[derive(Debug, Clone)]
pub struct HealthCheckConfig {
    pub timeout: Duration,
    pub interval: Duration,
    pub initial_jitter: Duration,
    pub interval_jitter: Duration,
    pub interval_jitter_percent: u32,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
    pub reuse_connection: bool,
    pub no_traffic_interval: Duration,
    pub no_traffic_healthy_interval: Duration,
    pub unhealthy_interval: Duration,
    pub unhealthy_edge_interval: Duration,
    pub healthy_edge_interval: Duration,
    pub checker: Checker,
}

#[derive(Debug, Clone)]
pub enum Checker {
    Http(Box<HttpCheck>),
    Tcp(TcpCheck),
    Grpc(GrpcCheck),
}

#[derive(Debug, Clone)]
pub struct HttpCheck {
    /// Host header; the cluster name when empty.
    pub host: String,
    pub path: String,
    pub method: Method,
    pub send: Bytes,
    pub receive: Vec<Vec<u8>>,
    /// Bytes of the body matched against `receive`; 0 is unlimited.
    pub response_buffer_size: u64,
    pub headers_to_add: Vec<HeaderAdd>,
    pub headers_to_remove: Vec<HeaderName>,
    /// Half-open `[start, end)` status ranges.
    pub expected_statuses: Vec<(u64, u64)>,
    pub retriable_statuses: Vec<(u64, u64)>,
    pub http2: bool,
    pub service_name_matcher: Option<StringMatch>,
}

#[derive(Debug, Clone)]
pub struct TcpCheck {
    pub send: Vec<u8>,
    /// Empty: connecting is the whole check.
    pub receive: Vec<Vec<u8>>,
}

#[derive(Debug, Clone)]
pub struct GrpcCheck {
    pub service_name: String,
    /// `:authority`; the cluster name when empty.
    pub authority: String,
    pub initial_metadata: Vec<HeaderAdd>,
}

/// A literal header from `request_headers_to_add` / `initial_metadata`.
#[derive(Debug, Clone)]
pub struct HeaderAdd {
    pub name: HeaderName,
    pub value: HeaderValue,
    pub action: HeaderAppendAction,
}

type FieldError = (String, String);

fn err(field: impl Into<String>, msg: impl Into<String>) -> FieldError {
    (field.into(), msg.into())
}

fn required_positive(d: Option<&PbDuration>, field: &str) -> Result<Duration, FieldError> {
    match d {
        None => Err(err(field, "is required")),
        Some(_) => Ok(positive(d, field)?.unwrap_or_default()),
    }
}

fn positive(d: Option<&PbDuration>, field: &str) -> Result<Option<Duration>, FieldError> {
    match d {
        None => Ok(None),
        Some(d) if d.seconds > 0 || (d.seconds == 0 && d.nanos > 0) => Ok(Some(to_std(d))),
        Some(_) => Err(err(field, "must be greater than 0s")),
    }
}

/// Whether the cluster's upstream protocol options include HTTP/2 (Envoy's
/// `Features::HTTP2`), which gRPC health checking needs.
fn cluster_supports_http2(cluster: &ClusterProto) -> bool {
    if let Some(any) = cluster
        .typed_extension_protocol_options
        .get(HTTP_PROTOCOL_OPTIONS)
        && let Ok(opts) = HttpProtocolOptions::decode(any.value.as_slice())
    {
        return match opts.upstream_protocol_options {
            Some(http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(c)) => {
                matches!(
                    c.protocol_config,
                    Some(http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(_))
                )
            }
            Some(http_protocol_options::UpstreamProtocolOptions::UseDownstreamProtocolConfig(
                c,
            )) => c.http2_protocol_options.is_some(),
            Some(http_protocol_options::UpstreamProtocolOptions::AutoConfig(_)) => true,
            None => false,
        };
    }
    #[allow(deprecated)]
    cluster.http2_protocol_options.is_some()
}

/// Envoy's `PayloadMatcher::loadProtoBytes`: hex text or raw bytes.
fn payloads(list: &[health_check::Payload], field: &str) -> Result<Vec<Vec<u8>>, FieldError> {
    list.iter()
        .enumerate()
        .map(|(i, p)| payload(p, &format!("{field}[{i}]")))
        .collect()
}

fn payload(p: &health_check::Payload, field: &str) -> Result<Vec<u8>, FieldError> {
    match &p.payload {
        Some(health_check::payload::Payload::Text(t)) => hex_decode(t)
            .ok_or_else(|| err(format!("{field}.text"), format!("invalid hex string '{t}'"))),
        Some(health_check::payload::Payload::Binary(b)) => Ok(b.clone()),
        None => Err(err(field, "a payload is required")),
    }
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if s.is_empty() || !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Envoy's `PayloadMatcher::match`: every segment, in order, not
/// necessarily adjacent.
fn payload_matches(expected: &[Vec<u8>], data: &[u8]) -> bool {
    let mut start = 0;
    for seg in expected {
        let rest = &data[start.min(data.len())..];
        let found = if seg.is_empty() {
            Some(0)
        } else {
            rest.windows(seg.len()).position(|w| w == seg.as_slice())
        };
        match found {
            Some(i) => start += i + seg.len(),
            None => return false,
        }
    }
    true
}

fn status_ranges(
    ranges: &[Int64Range],
    kind: &str,
    field: &str,
) -> Result<Vec<(u64, u64)>, FieldError> {
    ranges
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let f = format!("{field}[{i}]");
            if r.start >= r.end {
                return Err(err(
                    f,
                    format!(
                        "Invalid http {kind} status range: expecting start < end, but found start={} and end={}",
                        r.start, r.end
                    ),
                ));
            }
            if r.start < 100 {
                return Err(err(
                    f,
                    format!(
                        "Invalid http {kind} status range: expecting start >= 100, but found start={}",
                        r.start
                    ),
                ));
            }
            if r.end > 600 {
                return Err(err(
                    f,
                    format!(
                        "Invalid http {kind} status range: expecting end <= 600, but found end={}",
                        r.end
                    ),
                ));
            }
            Ok((r.start as u64, r.end as u64))
        })
        .collect()
}

/// A header value without formatter operators (`%%` is a literal `%`).
fn literal(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '%' && chars.next() != Some('%') {
            return None;
        }
        out.push(c);
    }
    Some(out)
}

fn header_adds(list: &[HeaderValueOption], field: &str) -> Result<Vec<HeaderAdd>, FieldError> {
    let mut out = Vec::with_capacity(list.len());
    for (i, opt) in list.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let hv = opt
            .header
            .as_ref()
            .ok_or_else(|| err(format!("{f}.header"), "is required"))?;
        let key_field = format!("{f}.header.key");
        if hv.key.is_empty() {
            return Err(err(key_field, "must not be empty"));
        }
        if hv.key.starts_with(':') || hv.key.eq_ignore_ascii_case("host") {
            return Err(err(
                key_field,
                ":-prefixed or host headers may not be modified",
            ));
        }
        let name = HeaderName::from_bytes(hv.key.as_bytes())
            .map_err(|_| err(key_field.clone(), "not a valid header name"))?;
        let raw = if hv.raw_value.is_empty() {
            hv.value.clone()
        } else {
            String::from_utf8(hv.raw_value.clone())
                .map_err(|_| err(format!("{f}.header.raw_value"), "must be UTF-8"))?
        };
        let value_field = format!("{f}.header.value");
        let text = literal(&raw).ok_or_else(|| {
            err(
                value_field.clone(),
                "formatter operators in health check headers are not supported",
            )
        })?;
        let value = HeaderValue::from_str(&text)
            .map_err(|_| err(value_field, "not a valid header value"))?;
        #[allow(deprecated)]
        let action = match opt.append {
            Some(append) => {
                if opt.append_action != HeaderAppendAction::AppendIfExistsOrAdd as i32 {
                    return Err(err(
                        f,
                        "both append and append_action are set and it's not allowed",
                    ));
                }
                if append.value {
                    HeaderAppendAction::AppendIfExistsOrAdd
                } else {
                    HeaderAppendAction::OverwriteIfExistsOrAdd
                }
            }
            None => HeaderAppendAction::try_from(opt.append_action)
                .map_err(|_| err(format!("{f}.append_action"), "unknown append action"))?,
        };
        out.push(HeaderAdd {
            name,
            value,
            action,
        });
    }
    Ok(out)
}

fn apply_header_adds(headers: &mut HeaderMap, adds: &[HeaderAdd]) {
    for a in adds {
        match a.action {
            HeaderAppendAction::AppendIfExistsOrAdd => {
                headers.append(a.name.clone(), a.value.clone());
            }
            HeaderAppendAction::AddIfAbsent => {
                if !headers.contains_key(&a.name) {
                    headers.insert(a.name.clone(), a.value.clone());
                }
            }
            HeaderAppendAction::OverwriteIfExistsOrAdd => {
                headers.insert(a.name.clone(), a.value.clone());
            }
            HeaderAppendAction::OverwriteIfExists => {
                if headers.contains_key(&a.name) {
                    headers.insert(a.name.clone(), a.value.clone());
                }
            }
        }
    }
}

impl HealthChecks {
    /// Compiles `cluster.health_checks`; `None` when there are none. Errors
    /// name the field relative to the cluster.
    pub fn compile(cluster: &ClusterProto) -> Result<Option<Self>, FieldError> {
        if cluster.health_checks.is_empty() {
            return Ok(None);
        }
        let http2 = cluster_supports_http2(cluster);
        let checks = cluster
            .health_checks
            .iter()
            .enumerate()
            .map(|(i, hc)| {
                HealthCheckConfig::compile(hc, http2, &cluster.name)
                    .map_err(|(f, m)| (format!("health_checks[{i}].{f}"), m))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(Self {
            protos: cluster.health_checks.clone(),
            checks,
            ignore_new_hosts_until_first_hc: cluster
                .common_lb_config
                .as_ref()
                .is_some_and(|c| c.ignore_new_hosts_until_first_hc),
        }))
    }
}

impl HealthCheckConfig {
    fn compile(
        hc: &HealthCheckProto,
        cluster_http2: bool,
        cluster: &str,
    ) -> Result<Self, FieldError> {
        let timeout = required_positive(hc.timeout.as_ref(), "timeout")?;
        let interval = required_positive(hc.interval.as_ref(), "interval")?;
        let unhealthy_threshold = hc
            .unhealthy_threshold
            .ok_or_else(|| err("unhealthy_threshold", "is required"))?
            .value;
        let healthy_threshold = hc
            .healthy_threshold
            .ok_or_else(|| err("healthy_threshold", "is required"))?
            .value;
        let no_traffic_interval = positive(hc.no_traffic_interval.as_ref(), "no_traffic_interval")?
            .unwrap_or(DEFAULT_NO_TRAFFIC_INTERVAL);
        let no_traffic_healthy_interval = positive(
            hc.no_traffic_healthy_interval.as_ref(),
            "no_traffic_healthy_interval",
        )?
        .unwrap_or(no_traffic_interval);
        let unhealthy_interval =
            positive(hc.unhealthy_interval.as_ref(), "unhealthy_interval")?.unwrap_or(interval);
        let unhealthy_edge_interval = positive(
            hc.unhealthy_edge_interval.as_ref(),
            "unhealthy_edge_interval",
        )?
        .unwrap_or(unhealthy_interval);
        let healthy_edge_interval =
            positive(hc.healthy_edge_interval.as_ref(), "healthy_edge_interval")?
                .unwrap_or(interval);
        // `alt_port` is not implemented in Envoy either: checks go to the
        // endpoint's own port.
        let checker = match &hc.health_checker {
            None => return Err(err("health_checker", "a health checker is required")),
            Some(health_check::HealthChecker::HttpHealthCheck(h)) => Checker::Http(Box::new(
                compile_http(h).map_err(|(f, m)| (format!("http_health_check.{f}"), m))?,
            )),
            Some(health_check::HealthChecker::TcpHealthCheck(t)) => {
                if t.proxy_protocol_config.is_some() {
                    return Err(err(
                        "tcp_health_check.proxy_protocol_config",
                        "PROXY protocol health checks are not supported",
                    ));
                }
                // Envoy only sends a `text` payload.
                let send = match &t.send {
                    Some(p) if matches!(&p.payload, Some(health_check::payload::Payload::Text(s)) if !s.is_empty()) => {
                        payload(p, "tcp_health_check.send")?
                    }
                    _ => Vec::new(),
                };
                Checker::Tcp(TcpCheck {
                    send,
                    receive: payloads(&t.receive, "tcp_health_check.receive")?,
                })
            }
            Some(health_check::HealthChecker::GrpcHealthCheck(g)) => {
                if !cluster_http2 {
                    return Err(err(
                        "grpc_health_check",
                        format!("{cluster} cluster must support HTTP/2 for gRPC healthchecking"),
                    ));
                }
                if !g.authority.is_empty() && HeaderValue::from_str(&g.authority).is_err() {
                    return Err(err(
                        "grpc_health_check.authority",
                        "not a valid header value",
                    ));
                }
                Checker::Grpc(GrpcCheck {
                    service_name: g.service_name.clone(),
                    authority: g.authority.clone(),
                    initial_metadata: header_adds(
                        &g.initial_metadata,
                        "grpc_health_check.initial_metadata",
                    )?,
                })
            }
            Some(health_check::HealthChecker::CustomHealthCheck(c)) => {
                return Err(err(
                    "custom_health_check",
                    format!("custom health checker '{}' is not supported", c.name),
                ));
            }
        };
        Ok(Self {
            timeout,
            interval,
            initial_jitter: hc.initial_jitter.as_ref().map(to_std).unwrap_or_default(),
            interval_jitter: hc.interval_jitter.as_ref().map(to_std).unwrap_or_default(),
            interval_jitter_percent: hc.interval_jitter_percent,
            unhealthy_threshold,
            healthy_threshold,
            reuse_connection: hc.reuse_connection.is_none_or(|b| b.value),
            no_traffic_interval,
            no_traffic_healthy_interval,
            unhealthy_interval,
            unhealthy_edge_interval,
            healthy_edge_interval,
            checker,
        })
    }

    /// Envoy's `intervalWithJitter`, in whole milliseconds, at least 1 ms.
    fn with_jitter(&self, base: Duration, jitter: Duration) -> Duration {
        let mut ms = u64::try_from(base.as_millis()).unwrap_or(u64::MAX);
        let percent_mod = u64::from(self.interval_jitter_percent).saturating_mul(ms) / 100;
        if percent_mod > 0 {
            ms = ms.saturating_add(rand::random::<u64>() % percent_mod);
        }
        let jitter_ms = u64::try_from(jitter.as_millis()).unwrap_or(u64::MAX);
        if jitter_ms > 0 {
            ms = ms.saturating_add(rand::random::<u64>() % jitter_ms);
        }
        Duration::from_millis(ms.max(1))
    }

    /// Envoy's `HealthCheckerImplBase::interval`.
    fn next_interval(&self, healthy: bool, transition: Transition, traffic: bool) -> Duration {
        let pending = transition == Transition::ChangePending;
        let base = if traffic {
            match (healthy, pending) {
                (false, true) => self.unhealthy_edge_interval,
                (false, false) => self.unhealthy_interval,
                (true, true) => self.healthy_edge_interval,
                (true, false) => self.interval,
            }
        } else if healthy && !pending {
            self.no_traffic_healthy_interval
        } else {
            self.no_traffic_interval
        };
        self.with_jitter(base, self.interval_jitter)
    }
}

fn compile_http(h: &health_check::HttpHealthCheck) -> Result<HttpCheck, FieldError> {
    if h.path.is_empty() {
        return Err(err("path", "value length must be at least 1 characters"));
    }
    if HeaderValue::from_str(&h.path).is_err() || h.path.parse::<http::uri::PathAndQuery>().is_err()
    {
        return Err(err("path", "not a valid request path"));
    }
    if !h.host.is_empty() && HeaderValue::from_str(&h.host).is_err() {
        return Err(err("host", "not a valid header value"));
    }
    let http2 = match CodecClientType::try_from(h.codec_client_type) {
        Ok(CodecClientType::Http1) => false,
        Ok(CodecClientType::Http2) => true,
        Ok(CodecClientType::Http3) => {
            return Err(err(
                "codec_client_type",
                "HTTP/3 health checks are not supported",
            ));
        }
        Err(_) => {
            return Err(err(
                "codec_client_type",
                format!("unknown codec client type {}", h.codec_client_type),
            ));
        }
    };
    let method = match RequestMethod::try_from(h.method) {
        Ok(RequestMethod::MethodUnspecified | RequestMethod::Get) => Method::GET,
        Ok(RequestMethod::Head) => Method::HEAD,
        Ok(RequestMethod::Post) => Method::POST,
        Ok(RequestMethod::Put) => Method::PUT,
        Ok(RequestMethod::Delete) => Method::DELETE,
        Ok(RequestMethod::Options) => Method::OPTIONS,
        Ok(RequestMethod::Trace) => Method::TRACE,
        Ok(RequestMethod::Patch) => Method::PATCH,
        Ok(RequestMethod::Connect) => {
            return Err(err("method", "CONNECT may not be used for health checks"));
        }
        Err(_) => return Err(err("method", format!("unknown method {}", h.method))),
    };
    let send = match &h.send {
        None => Bytes::new(),
        Some(p) => {
            if matches!(
                method,
                Method::GET | Method::HEAD | Method::DELETE | Method::TRACE
            ) {
                return Err(err(
                    "send",
                    format!(
                        "HTTP health check cannot specify a request payload with method '{method}'. \
                         Only methods that support a request body (POST, PUT, PATCH, OPTIONS) can be \
                         used with payload."
                    ),
                ));
            }
            Bytes::from(payload(p, "send")?)
        }
    };
    let receive = payloads(&h.receive, "receive")?;
    let response_buffer_size = h
        .response_buffer_size
        .map_or(DEFAULT_RESPONSE_BUFFER_SIZE, |v| v.value);
    let total: u64 = receive.iter().map(|r| r.len() as u64).sum();
    if response_buffer_size != 0 && !receive.is_empty() && total > response_buffer_size {
        return Err(err(
            "receive",
            format!(
                "The expected response length '{total}' is over than http health response buffer size '{response_buffer_size}'"
            ),
        ));
    }
    let mut expected_statuses =
        status_ranges(&h.expected_statuses, "expected", "expected_statuses")?;
    if expected_statuses.is_empty() {
        expected_statuses.push((200, 201));
    }
    let retriable_statuses =
        status_ranges(&h.retriable_statuses, "retriable", "retriable_statuses")?;
    let mut headers_to_remove = Vec::with_capacity(h.request_headers_to_remove.len());
    for (i, r) in h.request_headers_to_remove.iter().enumerate() {
        let f = format!("request_headers_to_remove[{i}]");
        if r.starts_with(':') || r.eq_ignore_ascii_case("host") {
            return Err(err(f, ":-prefixed or host headers may not be removed"));
        }
        headers_to_remove.push(
            HeaderName::from_bytes(r.as_bytes()).map_err(|_| err(f, "not a valid header name"))?,
        );
    }
    let service_name_matcher = h
        .service_name_matcher
        .as_ref()
        .map(StringMatch::compile)
        .transpose()
        .map_err(|m| err("service_name_matcher", m))?;
    Ok(HttpCheck {
        host: h.host.clone(),
        path: h.path.clone(),
        method,
        send,
        receive,
        response_buffer_size,
        headers_to_add: header_adds(&h.request_headers_to_add, "request_headers_to_add")?,
        headers_to_remove,
        expected_statuses,
        retriable_statuses,
        http2,
        service_name_matcher,
    })
}

/// `cluster.<name>.health_check.*` counters.
#[derive(Debug, Default)]
pub struct HealthCheckStats {
    attempt: AtomicU64,
    success: AtomicU64,
    failure: AtomicU64,
    network_failure: AtomicU64,
    passive_failure: AtomicU64,
    verify_cluster: AtomicU64,
}

impl HealthCheckStats {
    fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Every counter by Envoy's name, without the
    /// `cluster.<name>.health_check.` prefix.
    pub fn counters(&self) -> Vec<(String, u64)> {
        [
            ("attempt", &self.attempt),
            ("failure", &self.failure),
            ("network_failure", &self.network_failure),
            ("passive_failure", &self.passive_failure),
            ("success", &self.success),
            ("verify_cluster", &self.verify_cluster),
        ]
        .into_iter()
        .map(|(n, c)| (n.to_string(), c.load(Ordering::Relaxed)))
        .collect()
    }
}

/// Envoy's `HealthTransition`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transition {
    Unchanged,
    Changed,
    ChangePending,
}

/// How a check failed; Envoy's `HealthCheckFailureType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// The host answered, and the answer is wrong.
    Active {
        retriable: bool,
    },
    Network,
    NetworkTimeout,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CheckResult {
    Healthy,
    Unhealthy(Failure),
}

/// One health check's view of one host: Envoy's `ActiveHealthCheckSession`.
#[derive(Debug, Clone)]
struct Session {
    failed: bool,
    pending: bool,
    first_check: bool,
    num_healthy: u32,
    num_unhealthy: u32,
    /// Whether a task runs this session.
    running: bool,
}

impl Session {
    fn new(failed: bool, pending: bool) -> Self {
        Self {
            failed,
            pending,
            first_check: true,
            num_healthy: 0,
            num_unhealthy: 0,
            running: false,
        }
    }

    /// `handleSuccess`.
    fn success(&mut self, healthy_threshold: u32) -> Transition {
        self.num_unhealthy = 0;
        let mut t = Transition::Unchanged;
        if self.failed {
            // The first result ever makes a host healthy at once.
            if self.first_check || {
                self.num_healthy += 1;
                self.num_healthy == healthy_threshold
            } {
                self.failed = false;
                t = Transition::Changed;
            } else {
                t = Transition::ChangePending;
            }
        }
        if self.pending {
            self.pending = false;
            t = Transition::Changed;
        }
        self.first_check = false;
        t
    }

    /// `setUnhealthy`.
    fn failure(&mut self, f: Failure, unhealthy_threshold: u32) -> Transition {
        self.num_healthy = 0;
        let mut t = Transition::Unchanged;
        if !self.failed {
            let immediate = matches!(f, Failure::Active { retriable: false });
            if immediate || {
                self.num_unhealthy += 1;
                self.num_unhealthy == unhealthy_threshold
            } {
                self.failed = true;
                t = Transition::Changed;
            } else {
                t = Transition::ChangePending;
            }
        }
        if self.pending {
            self.pending = false;
            t = Transition::Changed;
        }
        self.first_check = false;
        t
    }
}

#[derive(Debug, Default)]
struct HcState {
    /// Bumped whenever the configured checks change; sessions of an older
    /// generation end.
    generation: u64,
    checks: Option<Arc<HealthChecks>>,
    sessions: Vec<Session>,
}

/// Per-host active health-check state.
#[derive(Debug, Default)]
pub struct HostHealthCheck {
    inner: Mutex<HcState>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

const HC_FLAGS: u32 = health_flag::FAILED_ACTIVE_HC | health_flag::PENDING_ACTIVE_HC;

/// Sets the host's active-HC flags from its sessions; returns whether they
/// changed.
fn aggregate(state: &HostState, sessions: &[Session]) -> bool {
    let mut want = 0;
    if sessions.iter().any(|s| s.failed) {
        want |= health_flag::FAILED_ACTIVE_HC;
    }
    if sessions.iter().any(|s| s.pending) {
        want |= health_flag::PENDING_ACTIVE_HC;
    }
    set_hc_flags(state, want)
}

fn set_hc_flags(state: &HostState, want: u32) -> bool {
    let old = state
        .health_flags
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |f| {
            Some((f & !HC_FLAGS) | want)
        })
        .unwrap_or_else(|f| f);
    old & HC_FLAGS != want
}

impl HostHealthCheck {
    /// Whether active health checking covers this host.
    pub fn is_checked(&self) -> bool {
        lock(&self.inner).checks.is_some()
    }
}

impl Cluster {
    /// Starts (or hands on) the health-check sessions of a newly built value.
    /// Returns whether it changed a host's health flags.
    pub(crate) fn start_health_checks(self: &Arc<Self>) -> bool {
        let runtime = tokio::runtime::Handle::try_current().ok();
        let shared = Arc::downgrade(self.health_state());
        let mut changed = false;
        for h in &self.all_hosts {
            let mut inner = lock(&h.state.health_check.inner);
            let Some(hc) = self.spec.health_checks.as_ref() else {
                if inner.checks.take().is_some() {
                    inner.generation += 1;
                    inner.sessions.clear();
                    changed |= set_hc_flags(&h.state, 0);
                }
                continue;
            };
            let same = inner
                .checks
                .as_ref()
                .is_some_and(|c| Arc::ptr_eq(c, hc) || c.protos == hc.protos);
            if !same {
                let flags = h.state.health_flags.load(Ordering::Acquire);
                // A host new to health checking starts failed, as in Envoy.
                let (failed, pending) = if inner.checks.is_none() {
                    (true, hc.ignore_new_hosts_until_first_hc)
                } else {
                    (
                        flags & health_flag::FAILED_ACTIVE_HC != 0,
                        flags & health_flag::PENDING_ACTIVE_HC != 0,
                    )
                };
                inner.generation += 1;
                inner.sessions = vec![Session::new(failed, pending); hc.checks.len()];
                changed |= aggregate(&h.state, &inner.sessions);
            }
            inner.checks = Some(Arc::clone(hc));
            let Some(rt) = &runtime else { continue };
            let generation = inner.generation;
            for (i, s) in inner.sessions.iter_mut().enumerate() {
                if !s.running {
                    s.running = true;
                    rt.spawn(run_session(
                        Arc::clone(&h.state),
                        shared.clone(),
                        generation,
                        i,
                    ));
                }
            }
        }
        changed
    }

    /// `cluster.<name>.health_check.*` with the `healthy` and `degraded`
    /// gauges; empty without health checks.
    pub(crate) fn health_check_stat_values(&self) -> Vec<(String, u64)> {
        if self.spec.health_checks.is_none() {
            return Vec::new();
        }
        let mut out = self.health_state().hc_stats.counters();
        let healthy = self
            .all_hosts
            .iter()
            .filter(|h| {
                h.state.health_check.is_checked()
                    && h.state.health_flags.load(Ordering::Acquire) & health_flag::FAILED_ACTIVE_HC
                        == 0
            })
            .count() as u64;
        out.push(("degraded".to_string(), 0));
        out.push(("healthy".to_string(), healthy));
        out.sort();
        out
    }

    /// Whether the cluster has ever carried traffic (Envoy: `upstream_cx_total`
    /// used); until then checks run at `no_traffic_interval`.
    fn had_traffic(&self) -> bool {
        self.stats.upstream_rq_total.load(Ordering::Relaxed) > 0
            || self.stats.upstream_cx_connect_fail.load(Ordering::Relaxed) > 0
    }
}

/// What a session needs for one check.
struct Context {
    cluster: Arc<Cluster>,
    host: Arc<Host>,
    config: HealthCheckConfig,
    shared: Arc<ClusterHealth>,
}

/// Finds the current cluster value and this host in it. `None` means the
/// session must end (and, unless superseded, is marked not running).
fn context(
    state: &Arc<HostState>,
    shared: &Weak<ClusterHealth>,
    generation: u64,
    idx: usize,
) -> Option<Context> {
    let mut inner = lock(&state.health_check.inner);
    if inner.generation != generation {
        return None;
    }
    let found = shared.upgrade().and_then(|shared| {
        let cluster = shared.current()?;
        cluster.spec.health_checks.as_ref()?;
        let host = cluster
            .all_hosts
            .iter()
            .find(|h| Arc::ptr_eq(&h.state, state))
            .cloned()?;
        let config = inner.checks.as_ref()?.checks.get(idx)?.clone();
        Some(Context {
            cluster,
            host,
            config,
            shared,
        })
    });
    if found.is_none()
        && let Some(s) = inner.sessions.get_mut(idx)
    {
        s.running = false;
    }
    found
}

async fn run_session(
    state: Arc<HostState>,
    shared: Weak<ClusterHealth>,
    generation: u64,
    idx: usize,
) {
    let mut conn = Conn::None;
    let mut delay = match context(&state, &shared, generation, idx) {
        None => return,
        Some(cx) if cx.config.initial_jitter.is_zero() => Duration::ZERO,
        Some(cx) => cx
            .config
            .with_jitter(Duration::ZERO, cx.config.initial_jitter),
    };
    loop {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let Some(cx) = context(&state, &shared, generation, idx) else {
            return;
        };
        HealthCheckStats::inc(&cx.shared.hc_stats.attempt);
        let result = check(&cx, &mut conn).await;
        let stats = &cx.shared.hc_stats;
        let (next, changed) = {
            let mut inner = lock(&state.health_check.inner);
            if inner.generation != generation {
                return;
            }
            let Some(session) = inner.sessions.get_mut(idx) else {
                return;
            };
            let (transition, healthy) = match result {
                CheckResult::Healthy => {
                    HealthCheckStats::inc(&stats.success);
                    (session.success(cx.config.healthy_threshold), true)
                }
                CheckResult::Unhealthy(f) => {
                    HealthCheckStats::inc(&stats.failure);
                    if matches!(f, Failure::Network | Failure::NetworkTimeout) {
                        HealthCheckStats::inc(&stats.network_failure);
                    }
                    (session.failure(f, cx.config.unhealthy_threshold), false)
                }
            };
            tracing::debug!(
                cluster = %cx.cluster.name(),
                host = %cx.host.target,
                ?result,
                ?transition,
                "health check"
            );
            let next = cx
                .config
                .next_interval(healthy, transition, cx.cluster.had_traffic());
            (next, aggregate(&state, &inner.sessions))
        };
        if changed {
            cx.cluster.refresh_all();
        }
        if result == CheckResult::Healthy {
            cx.cluster.outlier_on_hc_success(&state, Instant::now());
        }
        delay = next;
    }
}

/// A connection kept between checks (`reuse_connection`).
enum Conn {
    None,
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
    Tcp(Box<dyn Io>, BytesMut),
}

/// A health-check connection: plain TCP, or TLS when the host's transport is.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// Connects as traffic would: to the host's address (names resolved), over
/// the host's transport socket.
async fn connect(host: &Host) -> std::io::Result<Box<dyn Io>> {
    let stream = match &host.target {
        Target::Ip(a) => TcpStream::connect(a).await?,
        Target::Dns { host, port } => TcpStream::connect((host.as_str(), *port)).await?,
    };
    let _ = stream.set_nodelay(true);
    let Some(tls) = &host.tls else {
        return Ok(Box::new(stream));
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(&tls.config));
    Ok(Box::new(
        connector.connect(tls.server_name.clone(), stream).await?,
    ))
}

async fn check(cx: &Context, conn: &mut Conn) -> CheckResult {
    let run = async {
        match &cx.config.checker {
            Checker::Http(h) => http_check(cx, h, conn).await,
            Checker::Tcp(t) => tcp_check(cx, t, conn).await,
            Checker::Grpc(g) => grpc_check(cx, g, conn).await,
        }
    };
    match tokio::time::timeout(cx.config.timeout, run).await {
        Ok(r) => {
            if !matches!(r, CheckResult::Healthy) && !cx.config.reuse_connection {
                *conn = Conn::None;
            }
            r
        }
        Err(_) => {
            // Whatever the connection was doing, it is closed.
            *conn = Conn::None;
            CheckResult::Unhealthy(Failure::NetworkTimeout)
        }
    }
}

const NETWORK: CheckResult = CheckResult::Unhealthy(Failure::Network);

fn in_ranges(status: u16, ranges: &[(u64, u64)]) -> bool {
    let s = u64::from(status);
    ranges.iter().any(|&(a, b)| s >= a && s < b)
}

/// The `:authority` / Host of a check: configured, else the cluster name.
fn authority_of(configured: &str, cluster: &Cluster) -> String {
    if configured.is_empty() {
        cluster.name().to_string()
    } else {
        configured.to_string()
    }
}

/// An absolute URI for HTTP/2; names that are no valid authority (Istio
/// cluster names contain `|`) fall back to the host's address.
fn h2_uri(authority: &str, host: &Host, path: &str) -> Option<Uri> {
    format!("http://{authority}{path}")
        .parse()
        .ok()
        .or_else(|| format!("http://{}{path}", host.target).parse().ok())
}

async fn ready_http(cx: &Context, http2: bool, conn: &mut Conn) -> Result<(), ()> {
    // Drop a connection that is closed or of the wrong kind.
    let usable = match conn {
        Conn::H1(s) if !http2 => !s.is_closed() && s.ready().await.is_ok(),
        Conn::H2(s) if http2 => !s.is_closed() && s.ready().await.is_ok(),
        _ => false,
    };
    if usable {
        return Ok(());
    }
    *conn = Conn::None;
    let stream = connect(&cx.host).await.map_err(|_| ())?;
    let io = TokioIo::new(stream);
    if http2 {
        let (sender, connection) = http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|_| ())?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        *conn = Conn::H2(sender);
    } else {
        let (sender, connection) = http1::handshake(io).await.map_err(|_| ())?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        *conn = Conn::H1(sender);
    }
    Ok(())
}

async fn send(
    conn: &mut Conn,
    req: Request<Full<Bytes>>,
) -> Option<http::Response<hyper::body::Incoming>> {
    match conn {
        Conn::H1(s) => s.send_request(req).await.ok(),
        Conn::H2(s) => s.send_request(req).await.ok(),
        _ => None,
    }
}

async fn http_check(cx: &Context, h: &HttpCheck, conn: &mut Conn) -> CheckResult {
    if ready_http(cx, h.http2, conn).await.is_err() {
        *conn = Conn::None;
        return NETWORK;
    }
    let authority = authority_of(&h.host, &cx.cluster);
    let mut req = Request::new(Full::new(h.send.clone()));
    *req.method_mut() = h.method.clone();
    let headers = req.headers_mut();
    if h.http2 {
        match h2_uri(&authority, &cx.host, &h.path) {
            Some(u) => *req.uri_mut() = u,
            None => return NETWORK,
        }
        *req.version_mut() = http::Version::HTTP_2;
    } else {
        match (HeaderValue::from_str(&authority), h.path.parse::<Uri>()) {
            (Ok(v), Ok(u)) => {
                headers.insert(header::HOST, v);
                *req.uri_mut() = u;
            }
            _ => return NETWORK,
        }
    }
    let headers = req.headers_mut();
    headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
    if !h.send.is_empty() {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(h.send.len()));
    }
    for name in &h.headers_to_remove {
        headers.remove(name);
    }
    apply_header_adds(headers, &h.headers_to_add);

    let Some(resp) = send(conn, req).await else {
        *conn = Conn::None;
        return NETWORK;
    };
    let status = resp.status();
    let close = resp.version() == http::Version::HTTP_10
        || resp.headers().get_all(header::CONNECTION).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
        });
    let healthchecked = resp
        .headers()
        .get(&UPSTREAM_HEALTHCHECKED_CLUSTER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    // The result counts once the whole response is in.
    let limit = if h.response_buffer_size == 0 {
        usize::MAX
    } else {
        usize::try_from(h.response_buffer_size).unwrap_or(usize::MAX)
    };
    let mut body = resp.into_body();
    let mut kept = BytesMut::new();
    loop {
        match body.frame().await {
            None => break,
            Some(Err(_)) => {
                *conn = Conn::None;
                return NETWORK;
            }
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data()
                    && !h.receive.is_empty()
                    && kept.len() < limit
                {
                    let take = data.len().min(limit - kept.len());
                    kept.extend_from_slice(&data[..take]);
                }
            }
        }
    }
    if close || !cx.config.reuse_connection {
        *conn = Conn::None;
    }
    let code = status.as_u16();
    if !h.receive.is_empty() && !payload_matches(&h.receive, &kept) {
        return CheckResult::Unhealthy(Failure::Active { retriable: false });
    }
    if !in_ranges(code, &h.expected_statuses) {
        let retriable = in_ranges(code, &h.retriable_statuses);
        return CheckResult::Unhealthy(Failure::Active { retriable });
    }
    if let Some(m) = &h.service_name_matcher {
        HealthCheckStats::inc(&cx.shared.hc_stats.verify_cluster);
        if !m.matches(&healthchecked) {
            return CheckResult::Unhealthy(Failure::Active { retriable: false });
        }
    }
    CheckResult::Healthy
}

async fn tcp_check(cx: &Context, t: &TcpCheck, conn: &mut Conn) -> CheckResult {
    let (mut stream, mut buf) = match std::mem::replace(conn, Conn::None) {
        Conn::Tcp(s, b) if !t.receive.is_empty() => (s, b),
        _ => match connect(&cx.host).await {
            Ok(s) => (s, BytesMut::new()),
            Err(_) => return NETWORK,
        },
    };
    if t.receive.is_empty() {
        // Connecting is the check; Envoy closes without writing anything.
        return CheckResult::Healthy;
    }
    if !t.send.is_empty() && stream.write_all(&t.send).await.is_err() {
        return NETWORK;
    }
    loop {
        if payload_matches(&t.receive, &buf) {
            buf.clear();
            if cx.config.reuse_connection {
                *conn = Conn::Tcp(stream, buf);
            }
            return CheckResult::Healthy;
        }
        buf.reserve(4096);
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return NETWORK,
            Ok(_) => {}
        }
    }
}

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, Message)]
struct GrpcHealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

/// `grpc.health.v1.HealthCheckResponse`.
#[derive(Clone, PartialEq, Message)]
struct GrpcHealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

const GRPC_SERVING: i32 = 1;

/// Envoy's `Grpc::Common::toGrpcTimeout`.
fn grpc_timeout(d: Duration) -> String {
    const MAX: u128 = 99_999_999;
    let ms = d.as_millis();
    if ms <= MAX {
        return format!("{ms}m");
    }
    let s = d.as_secs();
    if u128::from(s) <= MAX {
        return format!("{s}S");
    }
    let m = s / 60;
    if u128::from(m) <= MAX {
        return format!("{m}M");
    }
    format!("{}H", (s / 3600).min(99_999_999))
}

fn grpc_status(h: &HeaderMap) -> Option<u32> {
    h.get("grpc-status")?.to_str().ok()?.trim().parse().ok()
}

async fn grpc_check(cx: &Context, g: &GrpcCheck, conn: &mut Conn) -> CheckResult {
    if ready_http(cx, true, conn).await.is_err() {
        *conn = Conn::None;
        return NETWORK;
    }
    let authority = authority_of(&g.authority, &cx.cluster);
    let Some(uri) = h2_uri(&authority, &cx.host, "/grpc.health.v1.Health/Check") else {
        return NETWORK;
    };
    let msg = GrpcHealthCheckRequest {
        service: g.service_name.clone(),
    }
    .encode_to_vec();
    let mut frame = BytesMut::with_capacity(5 + msg.len());
    frame.extend_from_slice(&[0]);
    frame.extend_from_slice(&u32::try_from(msg.len()).unwrap_or(0).to_be_bytes());
    frame.extend_from_slice(&msg);
    let mut req = Request::new(Full::new(frame.freeze()));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = uri;
    *req.version_mut() = http::Version::HTTP_2;
    let headers = req.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
    headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
    if let Ok(v) = HeaderValue::from_str(&grpc_timeout(cx.config.timeout)) {
        headers.insert(HeaderName::from_static("grpc-timeout"), v);
    }
    apply_header_adds(headers, &g.initial_metadata);

    let Some(resp) = send(conn, req).await else {
        *conn = Conn::None;
        return NETWORK;
    };
    let failed = CheckResult::Unhealthy(Failure::Active { retriable: false });
    let (parts, body) = resp.into_parts();
    let collected = match body.collect().await {
        Ok(c) => c,
        Err(_) => {
            *conn = Conn::None;
            return NETWORK;
        }
    };
    if !cx.config.reuse_connection {
        *conn = Conn::None;
    }
    if parts.status != StatusCode::OK {
        return failed;
    }
    let is_grpc = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if !is_grpc {
        return failed;
    }
    let status = match collected.trailers() {
        Some(t) => grpc_status(t),
        // Trailers-only: the status is in the headers.
        None => grpc_status(&parts.headers),
    };
    if status != Some(0) {
        return failed;
    }
    // Exactly one uncompressed message.
    let mut data = collected.to_bytes();
    let mut response = None;
    while data.has_remaining() {
        if data.len() < 5 {
            return failed;
        }
        let flags = data.get_u8();
        let len = data.get_u32() as usize;
        if data.len() < len || flags != 0 || response.is_some() {
            return failed;
        }
        let msg = data.split_to(len);
        match GrpcHealthCheckResponse::decode(msg) {
            Ok(m) => response = Some(m),
            Err(_) => return failed,
        }
    }
    match response {
        Some(r) if r.status == GRPC_SERVING => CheckResult::Healthy,
        _ => failed,
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicBool, AtomicU16};

    use envoy_types::pb::envoy::config::cluster::v3::cluster::CommonLbConfig;
    use envoy_types::pb::envoy::config::core::v3::Http2ProtocolOptions;
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
        ExplicitHttpConfig, explicit_http_config,
    };
    use envoy_types::pb::google::protobuf::{Any, UInt32Value};
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    use hyper::service::service_fn;
    use tokio::net::TcpListener;

    use super::*;
    use crate::cluster::outlier::test_support::{build, proto};
    use crate::cluster::{ClusterSpec, LbContext};

    fn ms(n: i32) -> Option<PbDuration> {
        Some(PbDuration {
            seconds: 0,
            nanos: n * 1_000_000,
        })
    }

    fn hc(checker: health_check::HealthChecker, unhealthy: u32, healthy: u32) -> HealthCheckProto {
        HealthCheckProto {
            timeout: ms(500),
            interval: ms(30),
            no_traffic_interval: ms(30),
            unhealthy_threshold: Some(UInt32Value { value: unhealthy }),
            healthy_threshold: Some(UInt32Value { value: healthy }),
            health_checker: Some(checker),
            ..Default::default()
        }
    }

    fn http(path: &str) -> health_check::HealthChecker {
        health_check::HealthChecker::HttpHealthCheck(health_check::HttpHealthCheck {
            path: path.to_string(),
            ..Default::default()
        })
    }

    fn flags(c: &Cluster, i: usize) -> u32 {
        c.all_hosts[i].state.health_flags.load(Ordering::Acquire) & HC_FLAGS
    }

    async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn stat(c: &Cluster, name: &str) -> u64 {
        c.health_check_stat_values()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .expect("stat exists")
    }

    /// An HTTP/1.1 (or HTTP/2) server answering every request with `status`.
    async fn http_server(status: Arc<AtomicU16>, h2: bool) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                let status = Arc::clone(&status);
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let code = status.load(Ordering::Relaxed);
                        let ua = req.headers().get(header::USER_AGENT).cloned();
                        async move {
                            let mut resp =
                                http::Response::new(Full::new(Bytes::from_static(b"ok")));
                            *resp.status_mut() = StatusCode::from_u16(code).expect("status");
                            if let Some(ua) = ua {
                                resp.headers_mut().insert("x-seen-ua", ua);
                            }
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let io = TokioIo::new(s);
                    if h2 {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, svc)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, svc)
                            .await;
                    }
                });
            }
        });
        addr
    }

    fn cluster_proto(addrs: &[SocketAddr], checks: Vec<HealthCheckProto>) -> ClusterProto {
        let mut p = proto("hc", addrs);
        p.health_checks = checks;
        p
    }

    #[tokio::test]
    async fn http_check_marks_hosts_healthy_and_unhealthy() {
        let status = Arc::new(AtomicU16::new(200));
        let addr = http_server(Arc::clone(&status), false).await;
        let c = build(
            &cluster_proto(&[addr], vec![hc(http("/healthz"), 2, 2)]),
            None,
        );
        // Hosts start failed until their first check...
        assert_eq!(flags(&c, 0), health_flag::FAILED_ACTIVE_HC);
        assert!(!c.all_hosts[0].is_healthy());
        // ... and one success is enough the first time.
        wait_for("first success", || flags(&c, 0) == 0).await;
        assert!(c.all_hosts[0].is_healthy());
        // A status outside expected_statuses fails the host at once.
        status.store(503, Ordering::Relaxed);
        wait_for("immediate failure", || flags(&c, 0) != 0).await;
        assert!(!c.all_hosts[0].is_healthy());
        // Back to health after healthy_threshold successes.
        let successes = stat(&c, "success");
        status.store(200, Ordering::Relaxed);
        wait_for("recovery", || flags(&c, 0) == 0).await;
        assert!(stat(&c, "success") >= successes + 2);
        assert!(stat(&c, "failure") >= 1);
        assert_eq!(stat(&c, "healthy"), 1);
    }

    #[tokio::test]
    async fn retriable_statuses_and_network_failures_count_to_the_threshold() {
        let status = Arc::new(AtomicU16::new(200));
        let addr = http_server(Arc::clone(&status), false).await;
        let mut check = hc(
            health_check::HealthChecker::HttpHealthCheck(health_check::HttpHealthCheck {
                path: "/".into(),
                retriable_statuses: vec![Int64Range {
                    start: 503,
                    end: 504,
                }],
                ..Default::default()
            }),
            3,
            1,
        );
        check.interval = ms(20);
        let c = build(&cluster_proto(&[addr], vec![check]), None);
        wait_for("healthy", || flags(&c, 0) == 0).await;
        let failures = stat(&c, "failure");
        status.store(503, Ordering::Relaxed);
        wait_for("unhealthy", || flags(&c, 0) != 0).await;
        assert!(
            stat(&c, "failure") >= failures + 3,
            "three retriable failures"
        );
        status.store(200, Ordering::Relaxed);
        wait_for("healthy again", || flags(&c, 0) == 0).await;

        // Nothing listening: network failures, counted to the threshold.
        let closed = {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            l.local_addr().expect("addr")
        };
        let c = build(&cluster_proto(&[closed], vec![hc(http("/"), 2, 1)]), None);
        wait_for("network failures", || stat(&c, "network_failure") >= 2).await;
        assert_eq!(flags(&c, 0), health_flag::FAILED_ACTIVE_HC);
    }

    #[tokio::test]
    async fn http2_checks_and_headers() {
        let status = Arc::new(AtomicU16::new(200));
        let addr = http_server(Arc::clone(&status), true).await;
        let check = hc(
            health_check::HealthChecker::HttpHealthCheck(health_check::HttpHealthCheck {
                path: "/ready".into(),
                host: "svc.local".into(),
                codec_client_type: CodecClientType::Http2 as i32,
                expected_statuses: vec![Int64Range {
                    start: 200,
                    end: 300,
                }],
                ..Default::default()
            }),
            1,
            1,
        );
        let c = build(&cluster_proto(&[addr], vec![check]), None);
        wait_for("healthy over h2", || flags(&c, 0) == 0).await;
        status.store(204, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(flags(&c, 0), 0, "204 is in 200-299");
        status.store(404, Ordering::Relaxed);
        wait_for("unhealthy over h2", || flags(&c, 0) != 0).await;
    }

    /// A TCP server answering `ping` with `pong` while `healthy`, else `nope`.
    async fn tcp_server(healthy: Arc<AtomicBool>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let healthy = Arc::clone(&healthy);
                tokio::spawn(async move {
                    let mut buf = [0u8; 4];
                    while s.read_exact(&mut buf).await.is_ok() {
                        let answer: &[u8] = if healthy.load(Ordering::Relaxed) {
                            b"pong"
                        } else {
                            b"nope"
                        };
                        if buf != *b"ping" || s.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    fn tcp(send: &str, receive: &[&str]) -> health_check::HealthChecker {
        let p = |t: &str| health_check::Payload {
            payload: Some(health_check::payload::Payload::Text(t.to_string())),
        };
        health_check::HealthChecker::TcpHealthCheck(health_check::TcpHealthCheck {
            send: (!send.is_empty()).then(|| p(send)),
            receive: receive.iter().map(|r| p(r)).collect(),
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn tcp_check_with_payloads() {
        let healthy = Arc::new(AtomicBool::new(true));
        let addr = tcp_server(Arc::clone(&healthy)).await;
        // "ping" / "po" .. "ng": segments in order, not necessarily adjacent.
        let check = hc(tcp("70696e67", &["706f", "6e67"]), 1, 1);
        let c = build(&cluster_proto(&[addr], vec![check]), None);
        wait_for("healthy", || flags(&c, 0) == 0).await;
        // A wrong answer never matches: the check times out.
        healthy.store(false, Ordering::Relaxed);
        wait_for("unhealthy", || flags(&c, 0) != 0).await;
        healthy.store(true, Ordering::Relaxed);
        wait_for("healthy again", || flags(&c, 0) == 0).await;
    }

    #[tokio::test]
    async fn tcp_connect_only_check() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let c = build(&cluster_proto(&[addr], vec![hc(tcp("", &[]), 2, 1)]), None);
        wait_for("healthy", || flags(&c, 0) == 0).await;
        drop(listener);
        wait_for("unhealthy", || flags(&c, 0) != 0).await;
        assert!(stat(&c, "network_failure") >= 2);
    }

    fn grpc_frame(status: i32) -> Bytes {
        let msg = GrpcHealthCheckResponse { status }.encode_to_vec();
        let mut b = BytesMut::new();
        b.extend_from_slice(&[0]);
        b.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        b.extend_from_slice(&msg);
        b.freeze()
    }

    #[tokio::test]
    async fn grpc_check_follows_serving_status() {
        let serving = Arc::new(AtomicBool::new(true));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let flag = Arc::clone(&serving);
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                let flag = Arc::clone(&flag);
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let status = if flag.load(Ordering::Relaxed) { 1 } else { 2 };
                        async move {
                            assert_eq!(req.uri().path(), "/grpc.health.v1.Health/Check");
                            let _ = req.into_body().collect().await;
                            let mut trailers = HeaderMap::new();
                            trailers.insert("grpc-status", HeaderValue::from_static("0"));
                            let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
                                Ok(Frame::data(grpc_frame(status))),
                                Ok(Frame::trailers(trailers)),
                            ];
                            let mut resp =
                                http::Response::new(StreamBody::new(futures::stream::iter(frames)));
                            resp.headers_mut().insert(
                                header::CONTENT_TYPE,
                                HeaderValue::from_static("application/grpc"),
                            );
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        let mut p = cluster_proto(
            &[addr],
            vec![hc(
                health_check::HealthChecker::GrpcHealthCheck(Default::default()),
                1,
                1,
            )],
        );
        p.typed_extension_protocol_options
            .insert(HTTP_PROTOCOL_OPTIONS.to_string(), h2_options());
        let c = build(&p, None);
        wait_for("serving", || flags(&c, 0) == 0).await;
        serving.store(false, Ordering::Relaxed);
        wait_for("not serving", || flags(&c, 0) != 0).await;
    }

    fn h2_options() -> Any {
        let opts = HttpProtocolOptions {
            upstream_protocol_options: Some(
                http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                    ExplicitHttpConfig {
                        protocol_config: Some(
                            explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                                Http2ProtocolOptions::default(),
                            ),
                        ),
                    },
                ),
            ),
            ..Default::default()
        };
        Any {
            type_url: format!("type.googleapis.com/{HTTP_PROTOCOL_OPTIONS}"),
            value: opts.encode_to_vec(),
        }
    }

    #[tokio::test]
    async fn sessions_survive_updates_and_stop_when_checks_are_removed() {
        let status = Arc::new(AtomicU16::new(200));
        let addr = http_server(Arc::clone(&status), false).await;
        let ok = Arc::new(AtomicU16::new(200));
        let others = [
            http_server(Arc::clone(&ok), false).await,
            http_server(Arc::clone(&ok), false).await,
        ];
        let addrs = [addr, others[0], others[1]];
        let p = cluster_proto(&addrs, vec![hc(http("/"), 1, 1)]);
        let c1 = build(&p, None);
        wait_for("healthy", || (0..3).all(|i| flags(&c1, i) == 0)).await;
        // An update with the same checks keeps the hosts healthy: no new
        // "starts failed" period.
        let c2 = build(&p, Some(&c1));
        assert!((0..3).all(|i| flags(&c2, i) == 0));
        drop(c1);
        status.store(500, Ordering::Relaxed);
        wait_for("unhealthy through the new value", || flags(&c2, 0) != 0).await;
        // The current value's balancer was refreshed: two of three hosts
        // healthy is no panic, so the failed one gets no traffic.
        for _ in 0..30 {
            let h = c2.pick(&LbContext::default()).expect("a host");
            assert!(!Arc::ptr_eq(&h.state, &c2.all_hosts[0].state));
        }
        // Without health checks, the flags go and the sessions end.
        let c3 = build(&cluster_proto(&addrs, vec![]), Some(&c2));
        assert_eq!(flags(&c3, 0), 0);
        assert!(c3.all_hosts[0].is_healthy());
        tokio::time::sleep(Duration::from_millis(60)).await;
        let attempts = c3.health_state().hc_stats.counters()[0].1;
        tokio::time::sleep(Duration::from_millis(150)).await;
        let later = c3.health_state().hc_stats.counters()[0].1;
        assert_eq!(later, attempts, "sessions stopped");
        assert!(c3.health_check_stat_values().is_empty());
    }

    #[tokio::test]
    async fn pending_flag_with_ignore_new_hosts_until_first_hc() {
        let closed = {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            l.local_addr().expect("addr")
        };
        let mut p = cluster_proto(&[closed], vec![hc(tcp("", &[]), 1, 1)]);
        p.common_lb_config = Some(CommonLbConfig {
            ignore_new_hosts_until_first_hc: true,
            ..Default::default()
        });
        let c = build(&p, None);
        assert_eq!(flags(&c, 0), HC_FLAGS);
        // The first result clears pending, whatever it is.
        wait_for("pending cleared", || {
            flags(&c, 0) == health_flag::FAILED_ACTIVE_HC
        })
        .await;
    }

    #[tokio::test]
    async fn multiple_checks_must_all_pass() {
        let status = Arc::new(AtomicU16::new(200));
        let addr = http_server(Arc::clone(&status), false).await;
        let p = cluster_proto(&[addr], vec![hc(http("/"), 1, 1), hc(tcp("", &[]), 1, 1)]);
        let c = build(&p, None);
        wait_for("healthy", || flags(&c, 0) == 0).await;
        status.store(500, Ordering::Relaxed);
        wait_for("one check failing fails the host", || flags(&c, 0) != 0).await;
    }

    #[test]
    fn interval_selection_follows_envoy() {
        let p = cluster_proto(
            &addrs_one(),
            vec![HealthCheckProto {
                interval: Some(PbDuration {
                    seconds: 5,
                    nanos: 0,
                }),
                unhealthy_interval: Some(PbDuration {
                    seconds: 7,
                    nanos: 0,
                }),
                healthy_edge_interval: Some(PbDuration {
                    seconds: 2,
                    nanos: 0,
                }),
                ..hc(http("/"), 1, 1)
            }],
        );
        let spec = ClusterSpec::compile(&p).expect("compile");
        let cfg = &spec.health_checks.as_ref().expect("checks").checks[0];
        let s = Duration::from_secs;
        assert_eq!(cfg.next_interval(true, Transition::Unchanged, true), s(5));
        assert_eq!(
            cfg.next_interval(true, Transition::ChangePending, true),
            s(2)
        );
        assert_eq!(cfg.next_interval(false, Transition::Changed, true), s(7));
        // unhealthy_edge_interval defaults to unhealthy_interval.
        assert_eq!(
            cfg.next_interval(false, Transition::ChangePending, true),
            s(7)
        );
        // Without traffic, no_traffic_interval (here 30 ms) rules.
        assert_eq!(
            cfg.next_interval(true, Transition::Unchanged, false),
            Duration::from_millis(30)
        );
    }

    fn addrs_one() -> Vec<SocketAddr> {
        vec![SocketAddr::from(([127, 0, 0, 1], 9))]
    }

    #[test]
    fn session_thresholds_follow_envoy() {
        let mut s = Session::new(true, false);
        // One success suffices at first.
        assert_eq!(s.success(3), Transition::Changed);
        assert!(!s.failed);
        // Network failures count to the threshold; active ones are immediate.
        assert_eq!(s.failure(Failure::Network, 2), Transition::ChangePending);
        assert_eq!(s.failure(Failure::NetworkTimeout, 2), Transition::Changed);
        assert!(s.failed);
        assert_eq!(s.success(3), Transition::ChangePending);
        assert_eq!(s.success(3), Transition::ChangePending);
        assert_eq!(s.success(3), Transition::Changed);
        assert_eq!(
            s.failure(Failure::Active { retriable: false }, 5),
            Transition::Changed
        );
        let mut s = Session::new(false, false);
        assert_eq!(
            s.failure(Failure::Active { retriable: true }, 2),
            Transition::ChangePending
        );
        // A success in between resets the count.
        assert_eq!(s.success(1), Transition::Unchanged);
        assert_eq!(
            s.failure(Failure::Active { retriable: true }, 2),
            Transition::ChangePending
        );
        assert!(!s.failed);
        // First result failing a host that starts failed changes nothing
        // except the pending flag.
        let mut s = Session::new(true, true);
        assert_eq!(s.failure(Failure::Network, 3), Transition::Changed);
        assert!(s.failed && !s.pending);
    }

    #[test]
    fn payload_matching() {
        assert!(payload_matches(
            &[b"ab".to_vec(), b"cd".to_vec()],
            b"xxabyycdzz"
        ));
        assert!(!payload_matches(&[b"cd".to_vec(), b"ab".to_vec()], b"abcd"));
        assert!(payload_matches(&[], b""));
        assert_eq!(hex_decode("000000FF"), Some(vec![0, 0, 0, 255]));
        assert_eq!(hex_decode("0"), None);
        assert_eq!(hex_decode("zz"), None);
        assert_eq!(grpc_timeout(Duration::from_secs(1)), "1000m");
    }

    #[test]
    fn bad_health_checks_are_rejected_with_the_field() {
        let base = || hc(http("/"), 1, 1);
        let cases: Vec<(HealthCheckProto, &str)> = vec![
            (
                HealthCheckProto {
                    interval: None,
                    ..base()
                },
                "health_checks[0].interval",
            ),
            (
                HealthCheckProto {
                    interval: Some(PbDuration::default()),
                    ..base()
                },
                "health_checks[0].interval",
            ),
            (
                HealthCheckProto {
                    timeout: None,
                    ..base()
                },
                "health_checks[0].timeout",
            ),
            (
                HealthCheckProto {
                    timeout: ms(0),
                    ..base()
                },
                "health_checks[0].timeout",
            ),
            (
                HealthCheckProto {
                    unhealthy_threshold: None,
                    ..base()
                },
                "health_checks[0].unhealthy_threshold",
            ),
            (
                HealthCheckProto {
                    healthy_threshold: None,
                    ..base()
                },
                "health_checks[0].healthy_threshold",
            ),
            (
                HealthCheckProto {
                    health_checker: None,
                    ..base()
                },
                "health_checks[0].health_checker",
            ),
            (
                HealthCheckProto {
                    no_traffic_interval: ms(0),
                    ..base()
                },
                "health_checks[0].no_traffic_interval",
            ),
            (
                HealthCheckProto {
                    health_checker: Some(health_check::HealthChecker::CustomHealthCheck(
                        health_check::CustomHealthCheck {
                            name: "envoy.health_checkers.redis".into(),
                            ..Default::default()
                        },
                    )),
                    ..base()
                },
                "health_checks[0].custom_health_check",
            ),
            (
                HealthCheckProto {
                    health_checker: Some(health_check::HealthChecker::GrpcHealthCheck(
                        Default::default(),
                    )),
                    ..base()
                },
                "health_checks[0].grpc_health_check",
            ),
            (
                HealthCheckProto {
                    health_checker: Some(http("")),
                    ..base()
                },
                "health_checks[0].http_health_check.path",
            ),
            (
                HealthCheckProto {
                    health_checker: Some(health_check::HealthChecker::HttpHealthCheck(
                        health_check::HttpHealthCheck {
                            path: "/".into(),
                            expected_statuses: vec![Int64Range {
                                start: 200,
                                end: 200,
                            }],
                            ..Default::default()
                        },
                    )),
                    ..base()
                },
                "health_checks[0].http_health_check.expected_statuses[0]",
            ),
            (
                HealthCheckProto {
                    health_checker: Some(health_check::HealthChecker::HttpHealthCheck(
                        health_check::HttpHealthCheck {
                            path: "/".into(),
                            retriable_statuses: vec![Int64Range {
                                start: 99,
                                end: 200,
                            }],
                            ..Default::default()
                        },
                    )),
                    ..base()
                },
                "health_checks[0].http_health_check.retriable_statuses[0]",
            ),
            (
                HealthCheckProto {
                    health_checker: Some(health_check::HealthChecker::HttpHealthCheck(
                        health_check::HttpHealthCheck {
                            path: "/".into(),
                            codec_client_type: CodecClientType::Http3 as i32,
                            ..Default::default()
                        },
                    )),
                    ..base()
                },
                "health_checks[0].http_health_check.codec_client_type",
            ),
            (
                HealthCheckProto {
                    health_checker: Some(tcp("zz", &[])),
                    ..base()
                },
                "health_checks[0].tcp_health_check.send.text",
            ),
        ];
        for (check, field) in cases {
            let p = cluster_proto(&addrs_one(), vec![check]);
            let e = ClusterSpec::compile(&p).expect_err(field);
            assert_eq!(e.field, field, "{e}");
        }
        // The gRPC checker is fine on an HTTP/2 cluster.
        let mut p = cluster_proto(
            &addrs_one(),
            vec![HealthCheckProto {
                health_checker: Some(health_check::HealthChecker::GrpcHealthCheck(
                    Default::default(),
                )),
                ..base()
            }],
        );
        p.typed_extension_protocol_options
            .insert(HTTP_PROTOCOL_OPTIONS.to_string(), h2_options());
        ClusterSpec::compile(&p).expect("grpc on h2");
    }
}
