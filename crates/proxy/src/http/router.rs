//! The router filter: picks the cluster and host, rewrites the request for
//! the upstream, sends it with the route's timeout, and maps failures to
//! Envoy's local replies and response flags.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use http::{
    HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri, Version, header,
};
use http_body_util::BodyExt;
use std::borrow::Cow;

use route::{Forward, RequestView, RouteTable, Selected, Variable};

use super::flags::Flag;
use super::local_reply;
use super::retry::{Attempt, RETRY_BODY_LIMIT, RetryPlan};
use super::service::{ConnInfo, RequestState};
use crate::body::{self, Body};
use crate::cluster::breaker::Permit;
use crate::cluster::outlier::{self, Outcome};
use crate::cluster::pool::SendOptions;
use crate::cluster::{Cluster, Host, UpstreamError, UpstreamProtocol, Version as UpVersion};
use envoy_types::pb::envoy::config::core::v3::RoutingPriority;

static EXPECTED_TIMEOUT: HeaderName = HeaderName::from_static("x-envoy-expected-rq-timeout-ms");
static UPSTREAM_SERVICE_TIME: HeaderName = HeaderName::from_static("x-envoy-upstream-service-time");
static ORIGINAL_HOST: HeaderName = HeaderName::from_static("x-envoy-original-host");
static ORIGINAL_PATH: HeaderName = HeaderName::from_static("x-envoy-original-path");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static OVERLOADED: HeaderName = HeaderName::from_static("x-envoy-overloaded");
static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Largest request body buffered to send to mirror clusters as well.
const MIRROR_BODY_LIMIT: usize = 1 << 20;

pub(super) struct Forwarding<'a> {
    pub conn: &'a Arc<ConnInfo>,
    pub selected: &'a Selected<'a>,
    pub table: &'a RouteTable,
    pub authority: &'a str,
    pub forward: &'a Forward,
    pub scheme: &'a str,
}

/// Values for `%VARIABLE%` operators in header mutations.
pub(super) struct Context<'a> {
    pub conn: &'a ConnInfo,
    pub upstream_host: Option<String>,
    pub protocol: &'static str,
}

impl route::FormatContext for Context<'_> {
    fn variable(&self, var: &Variable) -> Option<Cow<'_, str>> {
        Some(match var {
            Variable::DownstreamRemoteAddress => Cow::Owned(self.conn.remote.to_string()),
            Variable::DownstreamRemoteAddressWithoutPort => {
                Cow::Owned(self.conn.remote.ip().to_string())
            }
            Variable::DownstreamLocalAddress => Cow::Owned(self.conn.local.to_string()),
            Variable::DownstreamLocalAddressWithoutPort => {
                Cow::Owned(self.conn.local.ip().to_string())
            }
            Variable::UpstreamHost => Cow::Owned(self.upstream_host.clone()?),
            Variable::Protocol => Cow::Borrowed(self.protocol),
            Variable::Hostname => Cow::Owned(hostname()),
            _ => return None,
        })
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

pub(super) fn protocol_name(v: Version) -> &'static str {
    match v {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        _ => "HTTP/1.1",
    }
}

/// Envoy's transport failure reason for a failed connect: the socket
/// error as `strerror` words it.
fn connect_failure_reason(detail: &str) -> String {
    let text = match detail.find(" (os error") {
        Some(i) => &detail[..i],
        None => detail,
    };
    format!("delayed connect error: {text}")
}

fn upstream_error_reply(e: &UpstreamError, state: &mut RequestState) -> Response<Body> {
    upstream_error_reply_after(e, state, false)
}

fn upstream_error_reply_after(
    e: &UpstreamError,
    state: &mut RequestState,
    retried: bool,
) -> Response<Body> {
    let (flag, reason) = match e {
        UpstreamError::Connect(detail) => {
            tracing::debug!(%detail, "upstream connect failed");
            if !detail.starts_with("TLS error") {
                state.transport_failure = Some(connect_failure_reason(detail).replace(' ', "_"));
            }
            (
                Flag::UpstreamConnectionFailure,
                "remote connection failure".to_string(),
            )
        }
        UpstreamError::ConnectTimeout => (
            Flag::UpstreamConnectionFailure,
            "connection timeout".to_string(),
        ),
        UpstreamError::Reset(_) => (
            Flag::UpstreamConnectionTermination,
            "connection termination".to_string(),
        ),
        UpstreamError::Overflow => (Flag::UpstreamOverflow, "overflow".to_string()),
    };
    state.flags.set(flag);
    let detail = match &state.transport_failure {
        Some(t) => format!("{}|{t}", reason.replace(' ', "_")),
        None => reason.replace(' ', "_"),
    };
    state.detail(format!(
        "upstream_reset_before_response_started{{{detail}}}"
    ));
    let text = if retried {
        format!(
            "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: {reason}"
        )
    } else {
        format!("upstream connect error or disconnect/reset before headers. reset reason: {reason}")
    };
    local_reply::reply(StatusCode::SERVICE_UNAVAILABLE, &text, state.grpc)
}

/// 503 `UO` for a request a circuit breaker refused, marked with
/// `x-envoy-overloaded` as Envoy marks it.
fn overflow_reply(state: &mut RequestState, suppress_envoy_headers: bool) -> Response<Body> {
    state.flags.set(Flag::UpstreamOverflow);
    let mut resp = upstream_error_reply(&UpstreamError::Overflow, state);
    if !suppress_envoy_headers {
        resp.headers_mut()
            .insert(OVERLOADED.clone(), HeaderValue::from_static("true"));
    }
    resp
}

/// Counts a request in flight on a host (least-request balancing, admin
/// output) for as long as it lives.
struct ActiveRequest(Arc<Host>);

impl ActiveRequest {
    fn new(host: &Arc<Host>) -> Self {
        host.state.active.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(host))
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.state.active.fetch_sub(1, Ordering::Relaxed);
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Headers named in Connection are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .filter(|n| !(keep_upgrade && n == header::UPGRADE))
        .collect();
    for n in named {
        headers.remove(n);
    }
    if !keep_upgrade {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    headers.remove(header::TRANSFER_ENCODING);
    headers.remove(&HTTP2_SETTINGS);
    // TE may only say "trailers" when forwarded (gRPC relies on it).
    if let Some(te) = headers.get(header::TE)
        && !te.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
    {
        headers.remove(header::TE);
    } else if headers.contains_key(header::TE) {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

fn upgrade_type(headers: &HeaderMap) -> Option<String> {
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
    if !connection_upgrade {
        return None;
    }
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase)
}

fn build_uri(version: UpVersion, scheme: &str, authority: &str, path: &str) -> Result<Uri, String> {
    match version {
        UpVersion::Http1 => path.parse().map_err(|e| format!("{e}")),
        UpVersion::Http2 => format!("{scheme}://{authority}{path}")
            .parse()
            .map_err(|e| format!("{e}")),
    }
}

/// Envoy sends mirrored requests with `-shadow` appended to the host name.
fn shadow_authority(authority: &str) -> String {
    match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => {
            format!("{}-shadow{}", &authority[..i], &authority[i..])
        }
        _ => format!("{authority}-shadow"),
    }
}

pub(super) async fn forward(
    ctx: Forwarding<'_>,
    parts: &mut http::request::Parts,
    body: Body,
    state: &mut RequestState,
) -> Result<Response<Body>, Response<Body>> {
    let grpc = state.grpc;
    let hcm = &ctx.conn.hcm;
    let choice = ctx.selected.cluster.as_ref();
    let cluster_name = choice.map(|c| c.name.as_ref()).unwrap_or("");
    let snapshot = ctx.conn.snapshot.load();
    let Some(cluster) = snapshot.clusters.get(cluster_name).cloned() else {
        state.flags.set(Flag::NoClusterFound);
        state.detail("cluster_not_found");
        state.cluster = Some(cluster_name.to_string());
        return Err(local_reply::reply(
            ctx.forward.cluster_not_found_response_code,
            "",
            grpc,
        ));
    };
    drop(snapshot);
    state.cluster = Some(cluster.name().to_string());

    let upgrade = upgrade_type(&parts.headers);
    if let Some(kind) = &upgrade
        && !hcm.upgrade_allowed(kind)
    {
        // Envoy refuses and closes: the client's bytes after the request
        // would otherwise be read as a new request.
        state.detail("upgrade_failed");
        let mut resp = local_reply::reply(StatusCode::FORBIDDEN, "", grpc);
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return Err(resp);
    }
    let connect = parts.method == http::Method::CONNECT;
    if connect && !hcm.upgrade_allowed("connect") {
        return Err(local_reply::reply(StatusCode::FORBIDDEN, "", grpc));
    }

    // The route's hash policy, evaluated only for hashing balancers (as Envoy does).
    let request_hash = cluster.request_hash(
        &ctx.forward.hash,
        &RequestView {
            authority: ctx.authority,
            path: parts.uri.path_and_query().map_or("/", |p| p.as_str()),
            method: &parts.method,
            headers: &parts.headers,
            scheme: ctx.scheme,
        },
        route::Downstream {
            remote: ctx.conn.remote,
            local: ctx.conn.local,
        },
    );
    let lb_ctx = crate::cluster::LbContext::with_hash(request_hash.hash);
    let Some(host) = cluster.pick(&lb_ctx).cloned() else {
        state.flags.set(Flag::NoHealthyUpstream);
        state.detail("no_healthy_upstream");
        return Err(local_reply::reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "no healthy upstream",
            grpc,
        ));
    };
    let host_name = host.target.to_string();
    state.upstream_host = Some(host_name.clone());

    if connect {
        return super::server::tunnel_connect(parts, &host, cluster.spec.connect_timeout, state)
            .await;
    }

    let version = match cluster.spec.protocol {
        UpstreamProtocol::Fixed(v) => v,
        UpstreamProtocol::Downstream if parts.version == Version::HTTP_2 => UpVersion::Http2,
        UpstreamProtocol::Downstream => UpVersion::Http1,
    };
    // Upgrades ride on HTTP/1.1 upstream connections.
    let version = if upgrade.is_some() {
        UpVersion::Http1
    } else {
        version
    };

    let original_path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_string();
    let path = ctx
        .selected
        .route
        .rewritten_path(&original_path)
        .unwrap_or_else(|| original_path.clone());
    let (authority, mirrors) = {
        let view = RequestView {
            authority: ctx.authority,
            path: &original_path,
            method: &parts.method,
            headers: &parts.headers,
            scheme: ctx.scheme,
        };
        let host = ctx
            .forward
            .rewritten_host(&view, choice.and_then(|c| c.weighted))
            .map(Cow::into_owned)
            .unwrap_or_else(|| ctx.authority.to_string());
        let mirrors: Vec<String> = ctx
            .forward
            .mirrors(&view, rand::random())
            .map(|(_, name)| name.into_owned())
            .collect();
        (host, mirrors)
    };

    let mut headers = parts.headers.clone();
    strip_hop_by_hop(&mut headers, upgrade.is_some());
    headers.remove(header::EXPECT);
    let fmt = Context {
        conn: ctx.conn,
        upstream_host: Some(host_name.clone()),
        protocol: protocol_name(parts.version),
    };
    ctx.table
        .apply_request_headers(ctx.selected, &mut headers, &fmt);
    // Envoy records the original path whenever the route rewrites paths,
    // even when this request's path comes out unchanged.
    if ctx.selected.route.has_path_rewrite()
        && !hcm.suppress_envoy_headers
        && let Ok(v) = HeaderValue::from_str(&original_path)
    {
        headers.insert(ORIGINAL_PATH.clone(), v);
    }
    if authority != ctx.authority
        && !hcm.suppress_envoy_headers
        && let Ok(v) = HeaderValue::from_str(ctx.authority)
    {
        headers.insert(ORIGINAL_HOST.clone(), v);
    }
    let timeout = ctx.forward.timeout;
    if let Some(t) = timeout
        && !hcm.suppress_envoy_headers
    {
        headers.insert(
            EXPECTED_TIMEOUT.clone(),
            HeaderValue::from(t.as_millis() as u64),
        );
    }
    match version {
        UpVersion::Http1 => {
            if let Ok(v) = HeaderValue::from_str(&authority) {
                headers.insert(header::HOST, v);
            }
        }
        UpVersion::Http2 => {
            headers.remove(header::HOST);
        }
    }
    let scheme = if ctx.conn.tls { "https" } else { "http" };
    let uri = match build_uri(version, scheme, &authority, &path) {
        Ok(u) => u,
        Err(e) => {
            return Err(local_reply::reply(
                StatusCode::BAD_REQUEST,
                &format!("invalid rewritten path: {e}"),
                grpc,
            ));
        }
    };

    let downstream_upgrade = if upgrade.is_some() {
        parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
    } else {
        None
    };
    // Istio gives every route a retry policy; upgrades and CONNECT are not retried.
    let retry = ctx
        .forward
        .retry_policy
        .as_ref()
        .filter(|_| upgrade.is_none())
        .map(RetryPlan::new)
        .filter(|p| p.num_retries > 0);
    // Bodies are buffered when they must be replayed (retries, mirrors). A
    // body that may exceed the retry limit is streamed once, unretried.
    let body_fits = http_body::Body::size_hint(&body)
        .upper()
        .is_some_and(|n| n <= RETRY_BODY_LIMIT as u64);
    let retry = retry.filter(|_| body_fits || !mirrors.is_empty());
    let mut streamed = None;
    let buffered: Option<Bytes> = if mirrors.is_empty() && retry.is_none() {
        streamed = Some(body);
        None
    } else {
        let limit = if mirrors.is_empty() {
            RETRY_BODY_LIMIT
        } else {
            MIRROR_BODY_LIMIT
        };
        match collect_limited(body, limit).await {
            Ok(bytes) => {
                spawn_mirrors(
                    &mirrors, ctx.conn, parts, &headers, &path, &authority, &bytes,
                );
                Some(bytes)
            }
            Err(_) => return Err(local_reply::reply(StatusCode::PAYLOAD_TOO_LARGE, "", grpc)),
        }
    };
    let empty_body = buffered.as_ref().map(Bytes::is_empty).unwrap_or_else(|| {
        streamed
            .as_ref()
            .is_some_and(http_body::Body::is_end_stream)
    });

    // Envoy's HTTP/1 codec states an empty body explicitly for methods that
    // may carry one (OPTIONS, POST...), so upstreams don't wait for one.
    if version == UpVersion::Http1
        && empty_body
        && !matches!(parts.method, http::Method::GET | http::Method::HEAD)
        && !headers.contains_key(header::CONTENT_LENGTH)
        && !headers.contains_key(header::TRANSFER_ENCODING)
    {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    }
    let http_version = match version {
        UpVersion::Http1 => Version::HTTP_11,
        UpVersion::Http2 => Version::HTTP_2,
    };

    // The route timeout bounds all attempts together; a per-try timeout each.
    let deadline = timeout.map(|t| Instant::now() + t);
    let sent_at = Instant::now();
    let resources =
        Arc::clone(cluster.spec.breakers.for_priority(
            RoutingPriority::try_from(ctx.forward.proto.priority).unwrap_or_default(),
        ));
    let opts = SendOptions {
        connect_timeout: cluster.spec.connect_timeout,
        resources: &resources,
        max_requests_per_connection: cluster.spec.max_requests_per_connection,
        idle_timeout: cluster.spec.idle_timeout,
        tls: None,
    };
    let mut host = host;
    let mut tried: Vec<crate::addr::Target> = Vec::new();
    let mut retries = 0u32;
    // Held from a retry's scheduling until the retried attempt ends.
    let mut retry_permit: Option<Permit> = None;
    let mut resp = loop {
        let attempt_body = match (&buffered, streamed.take()) {
            (Some(b), _) => body::full(b.clone()),
            (None, Some(s)) => s,
            (None, None) => body::empty(),
        };
        let mut req = Request::new(attempt_body);
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = uri.clone();
        *req.version_mut() = http_version;
        // Only a retry policy brings a second attempt; without one the only
        // attempt takes the headers instead of copying them.
        *req.headers_mut() = if retry.is_some() {
            headers.clone()
        } else {
            std::mem::take(&mut headers)
        };
        if !tried.is_empty() {
            // A retry may have picked another host; the first attempt's
            // is already recorded (formatting an address is not free).
            state.upstream_host = Some(host.target.to_string());
        }
        let traced_attempt = state.trace.as_mut().map(|t| {
            t.start_attempt(
                req.headers_mut(),
                cluster.name(),
                &host.target.to_string(),
                protocol_name(http_version),
                retries,
            )
        });
        state.attempts += 1;
        tried.push(host.target.clone());

        cluster
            .stats
            .upstream_rq_total
            .fetch_add(1, Ordering::Relaxed);
        let active = ActiveRequest::new(&host);
        let per_try = retry.as_ref().and_then(|r| r.per_try_timeout);
        let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let limit = match (per_try, remaining) {
            (Some(p), Some(r)) => Some(p.min(r)),
            (p, r) => p.or(r),
        };
        let send = host.state.pool.send(
            req,
            version,
            SendOptions {
                tls: host.tls.as_deref(),
                ..opts
            },
        );
        let result = match limit {
            Some(t) => tokio::time::timeout(t, send).await.map_err(|_| ()),
            None => Ok(send.await),
        };
        if let (Some(t), Some(a)) = (state.trace.as_mut(), traced_attempt) {
            let (status, failure) = match &result {
                Ok(Ok(r)) => (Some(r.status().as_u16()), None),
                Ok(Err(e)) => (None, Some(e)),
                Err(()) => (None, None),
            };
            t.end_attempt(a, cluster.name(), status, failure, &state.flags);
        }
        let attempt_retry_permit = retry_permit.take();
        // Outlier detection hears about every attempt, before the retry decision.
        let outcome = match &result {
            Err(()) => Some(Outcome::Timeout),
            Ok(Err(e)) => Outcome::from_error(e),
            Ok(Ok(resp)) if resp.status().is_informational() => None,
            Ok(Ok(resp)) => Some(Outcome::Response(
                resp.headers()
                    .get("grpc-status")
                    .filter(|_| grpc)
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                    .map_or(resp.status().as_u16(), outlier::grpc_to_http_status),
            )),
        };
        if let Some(o) = outcome {
            cluster.report_outcome(&host, o);
        }

        let route_deadline_passed = deadline.is_some_and(|d| Instant::now() >= d);
        let retry_left = retry
            .as_ref()
            .filter(|r| retries < r.num_retries && !route_deadline_passed);
        // Whether to retry: the policy says so and the retry breaker has room.
        let want_retry = |r: &RetryPlan, attempt: &Attempt<'_>, state: &mut RequestState| {
            if !r.should_retry(attempt) {
                return None;
            }
            let permit = resources.try_retry();
            if permit.is_none() {
                state.flags.set(Flag::UpstreamOverflow);
            }
            permit
        };
        match result {
            Err(()) => {
                // A per-try timeout is retried like a reset; the route
                // timeout ends the request.
                let reset = UpstreamError::Reset("per-try timeout".into());
                if let Some(r) = retry_left
                    && !route_deadline_passed
                    && let Some(p) = want_retry(r, &Attempt::Failed(&reset), state)
                {
                    retry_permit = Some(p);
                    drop(attempt_retry_permit);
                    host = prepare_retry(&cluster, &host, &tried, r, &mut retries, &lb_ctx).await;
                    continue;
                }
                cluster
                    .stats
                    .upstream_rq_timeout
                    .fetch_add(1, Ordering::Relaxed);
                state.flags.set(Flag::UpstreamRequestTimeout);
                state.detail("upstream_response_timeout");
                return Err(local_reply::reply(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream request timeout",
                    grpc,
                ));
            }
            Ok(Err(UpstreamError::Overflow)) => {
                // Envoy never retries a request the breakers refused.
                return Err(overflow_reply(state, hcm.suppress_envoy_headers));
            }
            Ok(Err(e)) => {
                if matches!(e, UpstreamError::Connect(_) | UpstreamError::ConnectTimeout) {
                    cluster
                        .stats
                        .upstream_cx_connect_fail
                        .fetch_add(1, Ordering::Relaxed);
                }
                if let Some(r) = retry_left
                    && let Some(p) = want_retry(r, &Attempt::Failed(&e), state)
                {
                    retry_permit = Some(p);
                    drop(attempt_retry_permit);
                    host = prepare_retry(&cluster, &host, &tried, r, &mut retries, &lb_ctx).await;
                    continue;
                }
                if retry
                    .as_ref()
                    .is_some_and(|r| retries >= r.num_retries && retries > 0)
                {
                    state.flags.set(Flag::UpstreamRetryLimitExceeded);
                }
                return Err(upstream_error_reply_after(&e, state, retries > 0));
            }
            Ok(Ok(resp)) => {
                // Envoy never retries an answer marked as overloaded.
                let overloaded = resp.headers().contains_key(&OVERLOADED);
                let retriable = !overloaded
                    && retry.as_ref().is_some_and(|r| {
                        r.should_retry(&Attempt::Responded {
                            status: resp.status(),
                            headers: resp.headers(),
                        })
                    });
                if retriable
                    && let Some(r) = retry_left
                    && let Some(p) = want_retry(
                        r,
                        &Attempt::Responded {
                            status: resp.status(),
                            headers: resp.headers(),
                        },
                        state,
                    )
                {
                    cluster.stats.record_status(resp.status().as_u16());
                    // The failed answer is dropped (its connection closes).
                    drop(resp);
                    retry_permit = Some(p);
                    drop(attempt_retry_permit);
                    host = prepare_retry(&cluster, &host, &tried, r, &mut retries, &lb_ctx).await;
                    continue;
                }
                if retriable && retry_left.is_none() && retries > 0 {
                    state.flags.set(Flag::UpstreamRetryLimitExceeded);
                }
                state.upstream_response = Some(Instant::now());
                state.upstream_local = resp
                    .extensions()
                    .get::<crate::cluster::pool::UpstreamLocal>()
                    .map(|l| l.0);
                state.detail("via_upstream");
                // Breaker and least-request counts last until the body ends.
                break resp.map(|b| body::guarded(b, (active, attempt_retry_permit)));
            }
        }
    };
    cluster.stats.record_status(resp.status().as_u16());

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(down) = downstream_upgrade {
            let up = hyper::upgrade::on(&mut resp);
            tokio::spawn(super::server::bridge_upgrade(down, up));
        }
    } else {
        strip_hop_by_hop(resp.headers_mut(), false);
    }
    if !hcm.suppress_envoy_headers && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        resp.headers_mut().insert(
            UPSTREAM_SERVICE_TIME.clone(),
            HeaderValue::from(sent_at.elapsed().as_millis() as u64),
        );
    }
    // Cookies the hash policy generated (Envoy adds them to the upstream response).
    for cookie in &request_hash.set_cookies {
        if let Ok(v) = HeaderValue::from_str(cookie) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    Ok(resp)
}

/// Reads a whole body, refusing more than `limit` bytes.
async fn collect_limited(mut body: Body, limit: usize) -> Result<Bytes, ()> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| ())?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(());
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// Counts a retry, waits out its back-off and picks the host to try next.
async fn prepare_retry(
    cluster: &Cluster,
    host: &Arc<Host>,
    tried: &[crate::addr::Target],
    plan: &RetryPlan,
    retries: &mut u32,
    lb_ctx: &crate::cluster::LbContext,
) -> Arc<Host> {
    *retries += 1;
    cluster
        .stats
        .upstream_rq_retry
        .fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(plan.back_off(*retries)).await;
    next_host(cluster, host, tried, plan, lb_ctx)
}

/// The host for the next attempt: with the previous-hosts predicate, up to
/// `host_selection_attempts` picks to find one not tried yet.
fn next_host(
    cluster: &Cluster,
    current: &Arc<Host>,
    tried: &[crate::addr::Target],
    plan: &RetryPlan,
    lb_ctx: &crate::cluster::LbContext,
) -> Arc<Host> {
    let attempts = if plan.avoid_previous_hosts {
        plan.host_selection_attempts.max(1)
    } else {
        1
    };
    let mut pick = None;
    for attempt in 0..attempts {
        match cluster.pick(&lb_ctx.attempt(attempt)) {
            Some(h) if plan.avoid_previous_hosts && tried.contains(&h.target) => {
                pick = Some(Arc::clone(h))
            }
            Some(h) => return Arc::clone(h),
            None => break,
        }
    }
    pick.unwrap_or_else(|| Arc::clone(current))
}

fn spawn_mirrors(
    clusters: &[String],
    conn: &ConnInfo,
    parts: &http::request::Parts,
    headers: &HeaderMap,
    path: &str,
    authority: &str,
    body_bytes: &Bytes,
) {
    let snapshot = conn.snapshot.load();
    for name in clusters {
        let Some(cluster) = snapshot.clusters.get(name).cloned() else {
            continue;
        };
        let shadow = shadow_authority(authority);
        let mut req = Request::new(body::full(body_bytes.clone()));
        *req.method_mut() = parts.method.clone();
        let mut h = headers.clone();
        if let Ok(v) = HeaderValue::from_str(&shadow) {
            h.insert(header::HOST, v);
        }
        // A shadow request is one the proxy originates: Envoy marks it
        // internal and records its own address.
        h.insert(
            HeaderName::from_static("x-envoy-internal"),
            HeaderValue::from_static("true"),
        );
        let me = crate::local_address::ipv4().to_string();
        let xff = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(existing) if !existing.is_empty() => format!("{existing},{me}"),
            _ => me,
        };
        if let Ok(v) = HeaderValue::from_str(&xff) {
            h.insert(HeaderName::from_static("x-forwarded-for"), v);
        }
        *req.headers_mut() = h;
        let Ok(uri) = path.parse::<Uri>() else {
            continue;
        };
        *req.uri_mut() = uri;
        tokio::spawn(mirror_one(cluster, req, shadow));
    }
}

async fn mirror_one(cluster: Arc<Cluster>, mut req: Request<Body>, shadow: String) {
    let Some(host) = cluster.pick(&Default::default()).cloned() else {
        return;
    };
    let version = match cluster.spec.protocol {
        UpstreamProtocol::Fixed(v) => v,
        UpstreamProtocol::Downstream => UpVersion::Http1,
    };
    if version == UpVersion::Http2 {
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default();
        if let Ok(uri) = format!("http://{shadow}{path}").parse() {
            *req.uri_mut() = uri;
        }
        *req.version_mut() = Version::HTTP_2;
        req.headers_mut().remove(header::HOST);
    }
    // Mirrored responses are discarded; failures never reach the client.
    let resources = cluster.spec.breakers.for_priority(RoutingPriority::Default);
    let opts = SendOptions {
        connect_timeout: cluster.spec.connect_timeout,
        resources,
        max_requests_per_connection: cluster.spec.max_requests_per_connection,
        idle_timeout: cluster.spec.idle_timeout,
        tls: host.tls.as_deref(),
    };
    if let Ok(resp) = host.state.pool.send(req, version, opts).await {
        let _ = resp.into_body().collect().await;
    }
}
