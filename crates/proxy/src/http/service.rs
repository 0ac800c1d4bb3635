//! One HTTP request through the connection manager: header sanitation,
//! request id and forwarding headers, route selection, the filter chain, and
//! the response-side header work. Forwarding itself is in `router`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use route::{Action, RequestView, RouteTable};

use super::filters::{
    HttpFilter, PerRoute, cors, ext_authz, fault, jwt_authn, local_ratelimit, rbac,
    unwrap_per_route,
};
use super::flags::{Flag, ResponseFlags};
use super::hcm::{HcmConfig, RouteSource};
use super::local_reply;
use super::router;
use crate::body::{self, Body};
use crate::snapshot::SharedSnapshot;

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_ENVOY_INTERNAL: HeaderName = HeaderName::from_static("x-envoy-internal");
static X_ENVOY_EXTERNAL_ADDRESS: HeaderName = HeaderName::from_static("x-envoy-external-address");

/// Request headers that only the mesh may set: removed from external
/// requests (Envoy's `cleanInternalHeaders`).
const EXTERNAL_STRIPPED: [&str; 13] = [
    "x-envoy-retriable-status-codes",
    "x-envoy-retriable-header-names",
    "x-envoy-retry-on",
    "x-envoy-retry-grpc-on",
    "x-envoy-max-retries",
    "x-envoy-upstream-alt-stat-name",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-hedge-on-per-try-timeout",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-force-trace",
    "x-envoy-ip-tags",
    "x-envoy-original-url",
];

/// Also removed from external requests at the edge (`use_remote_address`).
const EDGE_STRIPPED: [&str; 4] = [
    "x-envoy-decorator-operation",
    "x-envoy-downstream-service-cluster",
    "x-envoy-downstream-service-node",
    "x-envoy-original-path",
];

/// What every request on one downstream connection shares.
#[derive(Debug)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    pub local: SocketAddr,
    pub tls: bool,
    /// The verified client certificate's identity (TLS with a client
    /// certificate only): URI and DNS SANs and subject.
    pub peer: Option<Arc<crate::listener::peer::PeerIdentity>>,
    /// SNI as the TLS inspector read it.
    pub requested_server_name: Option<String>,
    pub hcm: Arc<HcmConfig>,
    pub snapshot: SharedSnapshot,
    /// Envoy's `%CONNECTION_ID%`.
    pub connection_id: u64,
}

/// Per-request state that outlives routing: flags and timing for logs and
/// stats.
#[derive(Debug)]
pub struct RequestState {
    pub start: Instant,
    pub flags: ResponseFlags,
    pub grpc: bool,
    pub upstream_host: Option<String>,
    pub cluster: Option<String>,
    /// The downstream client address after x-forwarded-for processing
    /// (Envoy's `downstreamRemoteAddress`).
    pub downstream_remote: IpAddr,
    /// What filters leave for the filters after them (jwt_authn → RBAC).
    pub dynamic_metadata: crate::rbac::DynamicMetadata,
    /// Envoy's response code details (`via_upstream`, `route_not_found`...).
    pub details: Option<String>,
    pub route_name: Option<String>,
    /// `%UPSTREAM_TRANSPORT_FAILURE_REASON%`.
    pub transport_failure: Option<String>,
    /// When the upstream's response headers arrived.
    pub upstream_response: Option<Instant>,
    /// Local address of the upstream connection that answered.
    pub upstream_local: Option<SocketAddr>,
    /// The request's trace, when the connection manager traces.
    pub trace: Option<Box<crate::trace::RequestTrace>>,
    pub attempts: u32,
    /// The peer's workload from Istio's metadata exchange.
    pub peer_workload: Option<Arc<crate::metrics::Workload>>,
}

impl RequestState {
    pub fn detail(&mut self, d: impl Into<String>) {
        self.details = Some(d.into());
    }
}

pub async fn handle(conn: Arc<ConnInfo>, req: Request<Incoming>) -> Response<Body> {
    let mut state = RequestState {
        start: Instant::now(),
        flags: ResponseFlags::default(),
        grpc: local_reply::is_grpc(req.headers()),
        upstream_host: None,
        cluster: None,
        downstream_remote: conn.remote.ip(),
        dynamic_metadata: crate::rbac::DynamicMetadata::default(),
        details: None,
        route_name: None,
        transport_failure: None,
        upstream_response: None,
        upstream_local: None,
        trace: None,
        attempts: 0,
        peer_workload: None,
    };
    let start_time = SystemTime::now();
    let hcm = Arc::clone(&conn.hcm);
    let (mut parts, body) = req.into_parts();
    // The log entry (sizes, timings, flags) feeds access logs, the Istio
    // metrics and trace spans; with none of them configured, building it
    // and wrapping both bodies would be per-request work nobody reads.
    let observed =
        !hcm.access_logs.is_empty() || hcm.istio_stats.is_some() || hcm.tracing.is_some();
    let (body, progress) = if observed {
        let (body, progress) =
            super::log::count_request(body::incoming(body), state.start, state.grpc);
        (body, Some(progress))
    } else {
        (body::incoming(body), None)
    };
    state.downstream_remote = final_remote_address(&conn, &parts.headers);
    let request_id = prepare_request(&conn, &mut parts.headers);
    let exchange = hcm.peer_metadata;
    if exchange.downstream_discovery {
        state.peer_workload = crate::metrics::peer::discover(&mut parts.headers);
    }
    if exchange.upstream_propagation {
        crate::metrics::peer::propagate(&mut parts.headers);
    }
    // The stream idles out while it waits for response headers: Envoy then
    // answers 504 "stream timeout" (the request itself has been received;
    // `request_timeout` only bounds receiving it, which hyper does).
    let work = route_and_forward(&conn, &mut parts, body, &mut state);
    let outcome = match hcm.stream_idle_timeout {
        None => Some(work.await),
        Some(limit) => tokio::time::timeout(limit, work).await.ok(),
    };
    let mut resp = match outcome {
        Some(Ok(resp) | Err(resp)) => resp,
        None => {
            state.flags.set(Flag::StreamIdleTimeout);
            state.detail("stream_idle_timeout");
            local_reply::reply(StatusCode::GATEWAY_TIMEOUT, "stream timeout", state.grpc)
        }
    };
    if exchange.upstream_discovery
        && let Some(w) = crate::metrics::peer::discover(resp.headers_mut())
    {
        state.peer_workload = Some(w);
    }
    if exchange.downstream_propagation {
        crate::metrics::peer::propagate(resp.headers_mut());
    }
    if let Some(t) = state.trace.as_mut() {
        t.on_response(resp.headers_mut(), &parts.headers);
    }
    finish_response(&hcm, &mut resp, request_id.as_ref());
    if parts.version == http::Version::HTTP_10 && !wants_keep_alive(&parts.headers) {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    tracing::debug!(
        method = %parts.method,
        path = %parts.uri.path(),
        status = resp.status().as_u16(),
        flags = %state.flags,
        cluster = state.cluster.as_deref().unwrap_or("-"),
        upstream = state.upstream_host.as_deref().unwrap_or("-"),
        "request"
    );
    match progress {
        Some(progress) => log_when_sent(&conn, &parts, resp, state, start_time, progress),
        None => resp,
    }
}

/// Attaches the access log entry to the response body (logged, and recorded
/// in the Istio metrics, when it ends). Without access logs the entry only
/// carries what the metrics read.
fn log_when_sent(
    conn: &ConnInfo,
    parts: &http::request::Parts,
    resp: Response<Body>,
    state: RequestState,
    start_time: SystemTime,
    progress: Arc<super::log::RequestProgress>,
) -> Response<Body> {
    let downstream_remote = if state.downstream_remote == conn.remote.ip() {
        conn.remote
    } else {
        SocketAddr::new(state.downstream_remote, 0)
    };
    let mut state = state;
    let trace_id = state.trace.as_ref().and_then(|t| t.trace_id());
    let finishing = state.trace.take().filter(|t| t.sampled()).and_then(|t| {
        let authority = authority_of(parts);
        t.prepare_finish(&crate::trace::Finish {
            headers: &parts.headers,
            method: parts.method.as_str(),
            path: parts.uri.path_and_query().map_or("/", |p| p.as_str()),
            authority: authority.as_deref(),
            protocol: router::protocol_name(parts.version),
            peer: conn.remote.ip(),
            status: resp.status().as_u16(),
            flags: state.flags.to_string(),
            cluster: state
                .cluster
                .clone()
                .filter(|_| !state.flags.has(Flag::NoClusterFound)),
            grpc: state.grpc,
            grpc_status: super::log::grpc_status(resp.headers()),
            grpc_message: resp
                .headers()
                .get("grpc-message")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            request: &progress,
            snapshot: &conn.snapshot,
            metadata: Some(&state.dynamic_metadata),
        })
    });
    let mut entry = crate::access_log::Entry::connection(downstream_remote, conn.local, start_time);
    let full = !conn.hcm.access_logs.is_empty();
    entry.downstream_direct_remote = conn.remote;
    if full {
        entry.request_headers = Some(parts.headers.clone());
        entry.path = Some(
            parts
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string(),
        );
        entry.response_headers = Some(resp.headers().clone());
    }
    // HEAD is checked when the body ends; the authority names the inbound
    // destination service.
    entry.method = Some(parts.method.to_string());
    entry.authority = authority_of(parts);
    entry.scheme = Some(if conn.tls { "https" } else { "http" });
    entry.protocol = Some(router::protocol_name(parts.version));
    entry.response_code = Some(resp.status().as_u16());
    entry.response_code_details = state.details;
    entry.flags = state.flags;
    entry.upstream_host = state.upstream_host;
    entry.upstream_local = state.upstream_local;
    entry.upstream_cluster = state.cluster;
    entry.upstream_transport_failure_reason = state.transport_failure;
    entry.attempt_count = state.attempts;
    entry.peer = conn.peer.clone();
    entry.peer_workload = state.peer_workload;
    entry.requested_server_name = conn.requested_server_name.clone();
    entry.route_name = state.route_name;
    entry.connection_id = conn.connection_id;
    entry.dynamic_metadata = Some(state.dynamic_metadata);
    entry.trace_id = trace_id;
    let pending = super::log::Pending {
        hcm: Arc::clone(&conn.hcm),
        entry,
        start: state.start,
        request: progress,
        upstream_response: state.upstream_response,
        grpc: state.grpc,
        grpc_status: super::log::grpc_status(resp.headers()),
    };
    let resp = match finishing {
        Some(f) => resp.map(|b| crate::trace::finish_on_completion(b, f)),
        None => resp,
    };
    resp.map(|b| super::log::log_on_completion(b, pending))
}

/// Envoy's `getLastAddressFromXFF`: the address `skip` entries from the
/// end of the first x-forwarded-for header.
fn xff_address(headers: &HeaderMap, skip: u32) -> Option<IpAddr> {
    let mut xff = headers.get(&X_FORWARDED_FOR)?.to_str().ok()?;
    for _ in 0..skip {
        xff = &xff[..xff.rfind(',')?];
    }
    let last = match xff.rfind(',') {
        Some(i) if i + 1 < xff.len() => &xff[i + 1..],
        _ => xff,
    };
    last.trim().parse().ok()
}

/// The downstream address the connection manager settles on before it
/// touches x-forwarded-for: with `use_remote_address`, the peer (or the
/// trusted hop's entry); otherwise the x-forwarded-for entry
/// `xff_num_trusted_hops` from the end, falling back to the peer.
fn final_remote_address(conn: &ConnInfo, headers: &HeaderMap) -> IpAddr {
    let hcm = &conn.hcm;
    let found = if hcm.use_remote_address {
        match hcm.xff_num_trusted_hops {
            0 => None,
            n => xff_address(headers, n - 1),
        }
    } else {
        xff_address(headers, hcm.xff_num_trusted_hops)
    };
    found.unwrap_or_else(|| conn.remote.ip())
}

/// Request-id and forwarding headers, following Envoy's connection manager.
fn prepare_request(conn: &ConnInfo, headers: &mut HeaderMap) -> Option<HeaderValue> {
    let hcm = &conn.hcm;
    let remote_ip = conn.remote.ip();
    if hcm.use_remote_address {
        // Envoy's edge rules: a request is internal only if it arrived with
        // no x-forwarded-for and from an address internal_address_config
        // lists; a loopback peer is recorded as the proxy's own address.
        let had_xff = headers.contains_key(&X_FORWARDED_FOR);
        let internal = !had_xff && hcm.internal_ranges.iter().any(|r| r.contains(&remote_ip));
        if !hcm.skip_xff_append {
            let appended = if remote_ip.is_loopback() {
                crate::local_address::ipv4()
            } else {
                remote_ip
            };
            append_xff(headers, &appended.to_string());
        }
        let proto = if conn.tls { "https" } else { "http" };
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
        if internal {
            headers.insert(X_ENVOY_INTERNAL.clone(), HeaderValue::from_static("true"));
        } else {
            headers.remove(&X_ENVOY_INTERNAL);
            if let Ok(v) = HeaderValue::from_str(&remote_ip.to_string()) {
                headers.insert(X_ENVOY_EXTERNAL_ADDRESS.clone(), v);
            }
            if !hcm.preserve_external_request_id {
                headers.remove(&X_REQUEST_ID);
            }
        }
    } else if !headers.contains_key(&X_FORWARDED_PROTO) {
        let proto = if conn.tls { "https" } else { "http" };
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    }
    // A client cannot steer the proxy with x-envoy-* headers: Envoy strips
    // these from every request not marked internal, and a few more at the
    // edge.
    let internal = headers
        .get(&X_ENVOY_INTERNAL)
        .is_some_and(|v| v.as_bytes() == b"true");
    // One pass over the request's few headers instead of a lookup (name
    // parse and hash) per stripped name: almost no request carries any.
    let steering = || headers.keys().any(|k| k.as_str().starts_with("x-envoy-"));
    if !internal && steering() {
        for h in EXTERNAL_STRIPPED {
            headers.remove(h);
        }
        if hcm.use_remote_address {
            for h in EDGE_STRIPPED {
                headers.remove(h);
            }
        }
    }
    if hcm.generate_request_id && !headers.contains_key(&X_REQUEST_ID) {
        // From the thread's CSPRNG: `new_v4` asks the kernel (a getrandom
        // syscall) for every request.
        let id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let text = id.hyphenated().encode_lower(&mut buf);
        if let Ok(v) = HeaderValue::from_str(text) {
            headers.insert(X_REQUEST_ID.clone(), v);
        }
    }
    if let Some(via) = &hcm.via {
        append_header(headers, header::VIA, via);
    }
    headers.get(&X_REQUEST_ID).cloned()
}

fn append_xff(headers: &mut HeaderMap, ip: &str) {
    let value = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(existing) if !existing.is_empty() => format!("{existing},{ip}"),
        _ => ip.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
}

/// Appends to a list-valued header the way Envoy writes `via`: ", ".
fn append_header(headers: &mut HeaderMap, name: HeaderName, value: &HeaderValue) {
    let joined = match headers.get(&name).and_then(|v| v.to_str().ok()) {
        Some(existing) if !existing.is_empty() => HeaderValue::from_str(&format!(
            "{existing}, {}",
            value.to_str().unwrap_or_default()
        ))
        .ok(),
        _ => Some(value.clone()),
    };
    if let Some(v) = joined {
        headers.insert(name, v);
    }
}

fn wants_keep_alive(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("keep-alive"))
        })
}

fn finish_response(hcm: &HcmConfig, resp: &mut Response<Body>, request_id: Option<&HeaderValue>) {
    let h = resp.headers_mut();
    if let Some(server) = &hcm.server_name {
        if hcm.append_server_if_absent {
            h.entry(header::SERVER).or_insert_with(|| server.clone());
        } else {
            h.insert(header::SERVER, server.clone());
        }
    }
    if let Some(via) = &hcm.via {
        append_header(h, header::VIA, via);
    }
    if hcm.always_set_request_id_in_response
        && let Some(id) = request_id
    {
        h.insert(X_REQUEST_ID.clone(), id.clone());
    }
}

/// The host as routing sees it: `:authority` for HTTP/2 and absolute-form
/// requests, the Host header otherwise.
fn authority_of(parts: &http::request::Parts) -> Option<String> {
    if let Some(a) = parts.uri.authority() {
        return Some(a.as_str().to_string());
    }
    parts
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn strip_port(host: &str, local_port: u16, any: bool) -> &str {
    // IPv6 literals keep their brackets; only a trailing :port is removed.
    if let Some(idx) = host.rfind(':')
        && !host[idx..].contains(']')
        && (any || host[idx + 1..].parse::<u16>().ok() == Some(local_port))
    {
        return &host[..idx];
    }
    host
}

async fn route_and_forward(
    conn: &Arc<ConnInfo>,
    parts: &mut http::request::Parts,
    mut body: Body,
    state: &mut RequestState,
) -> Result<Response<Body>, Response<Body>> {
    let hcm = &conn.hcm;
    let grpc = state.grpc;
    let header_bytes: usize = parts
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if parts.headers.len() > hcm.max_headers_count || header_bytes > hcm.max_request_headers_bytes {
        let mut resp = local_reply::reply(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "Request Header Fields Too Large",
            grpc,
        );
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return Err(resp);
    }
    if parts.version == http::Version::HTTP_10 {
        if !hcm.accept_http_10 {
            let mut resp =
                local_reply::reply(StatusCode::UPGRADE_REQUIRED, "Upgrade Required", grpc);
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return Err(resp);
        }
        if !parts.headers.contains_key(header::HOST)
            && let Some(host) = &hcm.default_host_for_http_10
            && let Ok(v) = HeaderValue::from_str(host)
        {
            parts.headers.insert(header::HOST, v);
        }
    }
    let Some(mut authority) = authority_of(parts) else {
        return Err(local_reply::reply(
            StatusCode::BAD_REQUEST,
            "missing required header: :authority",
            grpc,
        ));
    };
    if hcm.strip_matching_host_port || hcm.strip_any_host_port {
        authority = strip_port(&authority, conn.local.port(), hcm.strip_any_host_port).to_string();
    }

    let table: Arc<RouteTable> = match &hcm.routes {
        RouteSource::Inline(t) => Arc::clone(t),
        RouteSource::Rds(name) => match conn.snapshot.load().routes.get(name) {
            Some(t) => Arc::clone(t),
            None => {
                state.flags.set(Flag::NoRouteFound);
                state.detail("route_not_found");
                return Err(local_reply::reply(StatusCode::NOT_FOUND, "", grpc));
            }
        },
    };
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_string();
    let scheme = if conn.tls { "https" } else { "http" };
    let view = RequestView {
        authority: &authority,
        path: &path_and_query,
        method: &parts.method,
        headers: &parts.headers,
        scheme,
    };
    let found = table.find(&view, rand::random());
    if let Some(tracing) = &hcm.tracing {
        state.trace = Some(crate::trace::begin(crate::trace::Begin {
            tracing,
            internal: parts
                .headers
                .get(&X_ENVOY_INTERNAL)
                .is_some_and(|v| v == "true"),
            headers: &mut parts.headers,
            route: found.as_ref().map(|s| s.route),
            host: &authority,
            start: SystemTime::now()
                .checked_sub(state.start.elapsed())
                .unwrap_or_else(SystemTime::now),
        }));
    }
    let Some(selected) = found else {
        state.flags.set(Flag::NoRouteFound);
        state.detail("route_not_found");
        return Err(local_reply::reply(StatusCode::NOT_FOUND, "", grpc));
    };
    if !selected.route.name.is_empty() {
        state.route_name = Some(selected.route.name.clone());
    }

    // Filters before the router, in chain order.
    let mut response_decorations: Option<HeaderMap> = None;
    let mut ext_authz_response_headers: Vec<ext_authz::HeaderMutation> = Vec::new();
    let forward_cluster: Option<String> = selected.cluster.as_ref().map(|c| c.name.to_string());
    for filter in &hcm.filters {
        let per_route = selected
            .route
            .typed_per_filter_config
            .get(filter.name())
            .or_else(|| {
                selected
                    .virtual_host
                    .typed_per_filter_config
                    .get(filter.name())
            });
        let per_route = match per_route.map(unwrap_per_route) {
            Some(Ok(PerRoute::Disabled)) => continue,
            Some(Ok(p)) => Some(p),
            Some(Err(e)) => {
                tracing::warn!(filter = filter.name(), error = %e, "ignoring undecodable per-route filter config");
                None
            }
            None => None,
        };
        match filter {
            HttpFilter::Fault { config, .. } => {
                let route_cfg = per_route
                    .as_ref()
                    .and_then(|p| per_route_any(p))
                    .map(fault::FaultConfig::compile);
                let decision = match &route_cfg {
                    Some(Ok(c)) => c.decide(
                        &parts.headers,
                        forward_cluster.as_deref(),
                        (rand::random(), rand::random()),
                    ),
                    Some(Err(_)) | None => config.decide(
                        &parts.headers,
                        forward_cluster.as_deref(),
                        (rand::random(), rand::random()),
                    ),
                };
                if let Some(delay) = decision.delay {
                    state.flags.set(Flag::DelayInjected);
                    tokio::time::sleep(delay).await;
                }
                match decision.abort {
                    Some(fault::Abort::Http(code)) => {
                        state.flags.set(Flag::FaultInjected);
                        state.detail("fault_filter_abort");
                        let status =
                            StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                        return Err(local_reply::reply(status, "fault filter abort", grpc));
                    }
                    Some(fault::Abort::Grpc(code)) => {
                        state.flags.set(Flag::FaultInjected);
                        state.detail("fault_filter_abort");
                        return Err(local_reply::grpc_reply(code, "fault filter abort"));
                    }
                    None => {}
                }
            }
            HttpFilter::Cors { .. } => {
                let Some(policy_any) = per_route.as_ref().and_then(|p| per_route_any(p)) else {
                    continue;
                };
                let Ok(policy) = cors::Cors::compile(policy_any) else {
                    continue;
                };
                match policy.evaluate(&parts.method, &parts.headers) {
                    cors::CorsAction::Pass => {}
                    cors::CorsAction::Preflight(h) => {
                        let mut resp = local_reply::reply(StatusCode::OK, "", false);
                        resp.headers_mut().extend(h);
                        return Err(resp);
                    }
                    cors::CorsAction::Decorate(h) => response_decorations = Some(h),
                }
            }
            HttpFilter::LocalRateLimit { config, .. } => {
                if per_route.is_some() {
                    // Per-route buckets need state kept with the route table; not yet.
                    tracing::debug!("per-route local rate limit not applied");
                }
                if config.check((rand::random(), rand::random())) == local_ratelimit::Verdict::Limit
                {
                    state.flags.set(Flag::RateLimited);
                    state.detail("local_rate_limited");
                    let mut resp = local_reply::reply(config.status, "local_rate_limited", grpc);
                    for (k, v) in &config.response_headers {
                        resp.headers_mut().append(k.clone(), v.clone());
                    }
                    return Err(resp);
                }
            }
            HttpFilter::Rbac { config, .. } => {
                let route_any = per_route.as_ref().and_then(|p| per_route_any(p));
                let metadata = state.dynamic_metadata.clone();
                let input = crate::rbac::Input {
                    http: Some(crate::rbac::HttpView {
                        authority: &authority,
                        path: &path_and_query,
                        method: parts.method.as_str(),
                        scheme,
                        headers: &parts.headers,
                    }),
                    local: conn.local,
                    direct_remote: conn.remote,
                    remote: state.downstream_remote,
                    tls: conn.tls,
                    peer: conn.peer.as_deref(),
                    requested_server_name: conn.requested_server_name.as_deref().unwrap_or(""),
                    metadata: &metadata,
                };
                if let rbac::Outcome::Deny(details) =
                    config.check(route_any, &input, &mut state.dynamic_metadata)
                {
                    tracing::debug!(%details, "request denied by RBAC");
                    state.detail(crate::rbac::response_detail(&details));
                    return Err(local_reply::reply(
                        StatusCode::FORBIDDEN,
                        "RBAC: access denied",
                        grpc,
                    ));
                }
            }
            HttpFilter::JwtAuthn { config, .. } => {
                let route_any = per_route.as_ref().and_then(|p| per_route_any(p));
                let req = jwt_authn::JwtRequest {
                    headers: &mut parts.headers,
                    path: &path_and_query,
                    method: &parts.method,
                    authority: &authority,
                    scheme,
                };
                if let Err(d) = config
                    .run(route_any, req, &mut state.dynamic_metadata, &conn.snapshot)
                    .await
                {
                    tracing::debug!(details = %d.details, "request denied by jwt_authn");
                    state.detail(d.details.replace(' ', "_"));
                    let mut resp = local_reply::reply(d.status, &d.body, grpc);
                    if let Some(w) = d.www_authenticate
                        && let Ok(v) = HeaderValue::from_str(&w)
                    {
                        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
                    }
                    return Err(resp);
                }
            }
            HttpFilter::ExtAuthz { config, .. } => {
                let route_any = per_route.as_ref().and_then(|p| per_route_any(p));
                // The virtual host's settings too when the route has its own:
                // ext_authz merges their context extensions.
                let vhost_any = selected
                    .route
                    .typed_per_filter_config
                    .contains_key(filter.name())
                    .then(|| {
                        selected
                            .virtual_host
                            .typed_per_filter_config
                            .get(filter.name())
                    })
                    .flatten()
                    .and_then(|a| match unwrap_per_route(a) {
                        Ok(PerRoute::Config(c)) => Some(c),
                        Ok(PerRoute::Borrowed(b)) => Some(b.clone()),
                        _ => None,
                    });
                let req = ext_authz::Request {
                    parts: &mut *parts,
                    body: &mut body,
                    authority: &authority,
                    path: &path_and_query,
                    scheme,
                    remote: conn.remote,
                    local: conn.local,
                    peer: conn.peer.as_deref(),
                    requested_server_name: conn.requested_server_name.as_deref(),
                    metadata: &mut state.dynamic_metadata,
                    snapshot: &conn.snapshot,
                    grpc,
                };
                match config.run(route_any, vhost_any.as_ref(), req).await {
                    ext_authz::Verdict::Continue(h) => ext_authz_response_headers.extend(h),
                    ext_authz::Verdict::Respond {
                        response,
                        details,
                        unauthorized,
                    } => {
                        if unauthorized {
                            state.flags.set(Flag::UnauthorizedExternalService);
                        }
                        state.detail(details);
                        return Err(response);
                    }
                }
            }
            HttpFilter::Router(_) => {}
        }
    }

    let mut resp = match &selected.route.action {
        Action::Direct {
            status,
            body: direct_body,
        } => {
            let mut resp = match direct_body {
                Some(b) => {
                    let mut r = Response::new(body::full(b.clone()));
                    r.headers_mut()
                        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                    r
                }
                None => Response::new(body::empty()),
            };
            *resp.status_mut() = *status;
            state.detail("direct_response");
            resp
        }
        Action::Redirect(redirect) => {
            // Filters may have changed headers since routing.
            let view = RequestView {
                authority: &authority,
                path: &path_and_query,
                method: &parts.method,
                headers: &parts.headers,
                scheme,
            };
            let (status, location) = redirect.location(&view);
            let mut resp = Response::new(body::empty());
            *resp.status_mut() = status;
            if let Ok(v) = HeaderValue::from_str(&location) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            state.detail("direct_response");
            resp
        }
        Action::Forward(forward) => {
            let ctx = router::Forwarding {
                conn,
                selected: &selected,
                table: &table,
                authority: &authority,
                forward,
                scheme,
            };
            match router::forward(ctx, parts, body, state).await {
                Ok(r) | Err(r) => r,
            }
        }
        Action::NonForwarding => {
            state.flags.set(Flag::NoRouteFound);
            state.detail("route_not_found");
            local_reply::reply(StatusCode::NOT_FOUND, "", grpc)
        }
    };
    if let Some(h) = response_decorations {
        resp.headers_mut().extend(h);
    }
    let fmt = router::Context {
        conn,
        upstream_host: state.upstream_host.clone(),
        protocol: router::protocol_name(parts.version),
    };
    table.apply_response_headers(&selected, resp.headers_mut(), &fmt);
    ext_authz::apply_response_headers(resp.headers_mut(), &ext_authz_response_headers);
    Ok(resp)
}

fn per_route_any<'a>(p: &'a PerRoute<'_>) -> Option<&'a envoy_types::pb::google::protobuf::Any> {
    match p {
        PerRoute::Config(a) => Some(a),
        PerRoute::Borrowed(a) => Some(a),
        PerRoute::Disabled => None,
    }
}
