//! The admin interface on the bootstrap's admin address, with Envoy's paths:
//! `/ready`, `/config_dump`, `/stats`, `/stats/prometheus`, `/clusters`,
//! `/listeners`, `/healthcheck/fail|ok`, `/logging`, `/quitquitquit`,
//! `/server_info`.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use serde_json::{Value, json};

use crate::body::{self, Body};
use crate::store::{ConfigStore, Versioned};

/// Changes the log filter at runtime (`/logging?level=debug`).
pub type LogLevelFn = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

pub struct AdminState {
    pub store: Arc<ConfigStore>,
    pub bootstrap: envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap,
    pub ready: AtomicBool,
    pub healthcheck_failed: AtomicBool,
    pub shutdown: tokio::sync::Notify,
    pub set_log_level: Option<LogLevelFn>,
    pub started: SystemTime,
    /// The ADS client's state (set when ADS starts).
    pub xds: std::sync::OnceLock<crate::health_stats::XdsStatus>,
}

pub async fn serve(addr: SocketAddr, state: Arc<AdminState>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "admin listening");
    loop {
        let (stream, _) = listener.accept().await?;
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(handle(&state, req)) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn text(status: StatusCode, body_text: String) -> Response<Body> {
    let mut r = Response::new(body::full(body_text));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=UTF-8"),
    );
    r
}

fn json_response(v: &Value) -> Response<Body> {
    let mut r = Response::new(body::full(
        serde_json::to_string_pretty(v).unwrap_or_default(),
    ));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn query_param<'a>(req: &'a Request<Incoming>, key: &str) -> Option<&'a str> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then_some(v)
    })
}

fn handle(state: &AdminState, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    let post = req.method() == Method::POST;
    match path {
        "/ready" => {
            if state.ready.load(Ordering::Relaxed) {
                text(StatusCode::OK, "LIVE\n".into())
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "PRE_INITIALIZING\n".into())
            }
        }
        "/server_info" => json_response(&json!({
            "version": concat!("trellis/", env!("CARGO_PKG_VERSION")),
            "state": if state.ready.load(Ordering::Relaxed) { "LIVE" } else { "PRE_INITIALIZING" },
            "uptime_current_epoch": format!("{}s", state.started.elapsed().map(|d| d.as_secs()).unwrap_or(0)),
            "node": proto_json(state.bootstrap.node.clone().unwrap_or_default()),
        })),
        "/config_dump" => {
            let dump = config_dump(state);
            let resp = json_response(&dump);
            drop(dump);
            crate::memory::trim();
            resp
        }
        "/stats" => text(StatusCode::OK, stats_text(state)),
        "/stats/prometheus" => {
            let mut r = text(StatusCode::OK, stats_prometheus(state));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        "/clusters" => text(StatusCode::OK, clusters_text(state)),
        "/listeners" => {
            let mut out = String::new();
            for (cfg, _) in state.store.listener_manager().active() {
                let _ = writeln!(out, "{}::{}", cfg.name, cfg.address);
            }
            text(StatusCode::OK, out)
        }
        "/healthcheck/fail" if post => {
            state.healthcheck_failed.store(true, Ordering::Relaxed);
            text(StatusCode::OK, "OK\n".into())
        }
        "/healthcheck/ok" if post => {
            state.healthcheck_failed.store(false, Ordering::Relaxed);
            text(StatusCode::OK, "OK\n".into())
        }
        "/logging" if post => match (query_param(&req, "level"), &state.set_log_level) {
            (Some(level), Some(set)) => match set(level) {
                Ok(()) => text(StatusCode::OK, format!("active loggers:\n  all: {level}\n")),
                Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
            },
            _ => text(StatusCode::BAD_REQUEST, "usage: /logging?level=<trace|debug|info|warn|error|off>\n".into()),
        },
        "/reopen_logs" if post => {
            crate::access_log::reopen_all();
            text(StatusCode::OK, "OK\n".into())
        }
        "/quitquitquit" if post => {
            state.shutdown.notify_one();
            text(StatusCode::OK, "OK\n".into())
        }
        "/healthcheck/fail" | "/healthcheck/ok" | "/logging" | "/quitquitquit" | "/reopen_logs" => {
            text(StatusCode::METHOD_NOT_ALLOWED, "This endpoint requires POST\n".into())
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "admin commands are:\n  /clusters\n  /config_dump\n  /healthcheck/fail\n  /healthcheck/ok\n  /listeners\n  /logging\n  /quitquitquit\n  /ready\n  /reopen_logs\n  /server_info\n  /stats\n  /stats/prometheus\n".into(),
        ),
    }
}

fn proto_json<M: Message + prost::Name>(m: M) -> Value {
    xds::codec::to_json(&m).unwrap_or(Value::Null)
}

fn with_type<M: Message + prost::Name>(m: &M) -> Value {
    let mut v = xds::codec::to_json(m).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut v {
        map.insert("@type".into(), Value::String(M::type_url()));
    }
    v
}

fn timestamp(t: SystemTime) -> String {
    xds::timestamp::rfc3339(t)
}

fn entry<M: Message + prost::Name>(key: &str, v: &Versioned<M>, with_version: bool) -> Value {
    let mut obj = serde_json::Map::new();
    if with_version {
        obj.insert("version_info".into(), Value::String(v.version.clone()));
    }
    obj.insert(key.into(), with_type(&v.resource));
    obj.insert("last_updated".into(), Value::String(timestamp(v.updated)));
    Value::Object(obj)
}

fn redact_secret(
    s: &envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret,
) -> envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret {
    use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source::Specifier};
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::secret::Type;
    let mut s = s.clone();
    if let Some(Type::TlsCertificate(tc)) = &mut s.r#type
        && tc.private_key.is_some()
    {
        tc.private_key = Some(DataSource {
            specifier: Some(Specifier::InlineString("[redacted]".into())),
            ..Default::default()
        });
    }
    s
}

fn config_dump(state: &AdminState) -> Value {
    let dump = state.store.with_state(|s| {
        let clusters_version = s.clusters.values().map(|v| v.version.clone()).next_back().unwrap_or_default();
        let listeners_version = s.listeners.values().map(|v| v.version.clone()).next_back().unwrap_or_default();
        let dynamic_listeners: Vec<Value> = s
            .listeners
            .iter()
            .map(|(name, v)| {
                let state_key = if s.warming.contains_key(name) { "warming_state" } else { "active_state" };
                json!({ "name": name, state_key: entry("listener", v, true) })
            })
            .collect();
        let secret_entry = |name: &String, v: &Versioned<_>, dynamic: bool| {
            let mut obj = json!({ "name": name, "last_updated": timestamp(v.updated), "secret": with_type(&redact_secret(&v.resource)) });
            if dynamic && let Value::Object(m) = &mut obj {
                m.insert("version_info".into(), Value::String(v.version.clone()));
            }
            obj
        };
        json!({
            "configs": [
                {
                    "@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
                    "bootstrap": proto_json(state.bootstrap.clone()),
                    "last_updated": timestamp(state.started),
                },
                {
                    "@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
                    "version_info": clusters_version,
                    "static_clusters": s.static_clusters.values().map(|v| entry("cluster", v, false)).collect::<Vec<_>>(),
                    "dynamic_active_clusters": s.clusters.values().map(|v| entry("cluster", v, true)).collect::<Vec<_>>(),
                },
                {
                    "@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
                    "version_info": listeners_version,
                    "static_listeners": s.static_listeners.values().map(|v| entry("listener", v, false)).collect::<Vec<_>>(),
                    "dynamic_listeners": dynamic_listeners,
                },
                {
                    "@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
                    "dynamic_route_configs": s.routes.values().map(|v| entry("route_config", v, true)).collect::<Vec<_>>(),
                },
                {
                    "@type": "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump",
                    "dynamic_endpoint_configs": s.endpoints.values().map(|v| entry("endpoint_config", v, true)).collect::<Vec<_>>(),
                },
                {
                    "@type": "type.googleapis.com/envoy.admin.v3.SecretsConfigDump",
                    "static_secrets": s.static_secrets.iter().map(|(n, v)| secret_entry(n, v, false)).collect::<Vec<_>>(),
                    "dynamic_active_secrets": s.secrets.iter().map(|(n, v)| secret_entry(n, v, true)).collect::<Vec<_>>(),
                },
            ]
        })
    });
    dump.unwrap_or(Value::Null)
}

/// Envoy-named counters and gauges, as `(name, value)` pairs.
fn stat_values(state: &AdminState) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let snapshot = state.store.snapshot().load_full();
    let mut clusters: Vec<_> = snapshot.clusters.values().collect();
    clusters.sort_by(|a, b| a.name().cmp(b.name()));
    for c in clusters {
        let s = &c.stats;
        let n = c.name();
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        out.push((
            format!("cluster.{n}.upstream_rq_total"),
            load(&s.upstream_rq_total),
        ));
        out.push((
            format!("cluster.{n}.upstream_rq_2xx"),
            load(&s.upstream_rq_2xx),
        ));
        out.push((
            format!("cluster.{n}.upstream_rq_4xx"),
            load(&s.upstream_rq_4xx),
        ));
        out.push((
            format!("cluster.{n}.upstream_rq_5xx"),
            load(&s.upstream_rq_5xx),
        ));
        out.push((
            format!("cluster.{n}.upstream_rq_timeout"),
            load(&s.upstream_rq_timeout),
        ));
        out.push((
            format!("cluster.{n}.upstream_cx_connect_fail"),
            load(&s.upstream_cx_connect_fail),
        ));
        out.push((
            format!("cluster.{n}.membership_total"),
            c.all_hosts.len() as u64,
        ));
        out.push((
            format!("cluster.{n}.membership_healthy"),
            c.all_hosts.iter().filter(|h| h.is_healthy()).count() as u64,
        ));
        out.push((
            format!("cluster.{n}.upstream_rq_retry"),
            load(&s.upstream_rq_retry),
        ));
        breaker_stats(&mut out, n, &c.spec.breakers);
        for (stat, value) in c.outlier_stats() {
            out.push((format!("cluster.{n}.outlier_detection.{stat}"), value));
        }
        for (stat, value) in c.health_check_stats() {
            out.push((format!("cluster.{n}.health_check.{stat}"), value));
        }
    }
    for (cfg, stats) in state.store.listener_manager().active() {
        let n = &cfg.address;
        out.push((
            format!("listener.{n}.downstream_cx_total"),
            stats.downstream_cx_total.load(Ordering::Relaxed),
        ));
        out.push((
            format!("listener.{n}.downstream_cx_active"),
            stats.downstream_cx_active.load(Ordering::Relaxed),
        ));
    }
    out.extend(rbac_stats(state));
    crate::trace::stat_values(&mut out);
    if let Some(xds) = state.xds.get() {
        crate::health_stats::xds_stats(xds, &mut out);
    }
    crate::health_stats::cert_stats(&state.store, &mut out);
    out.push((
        "server.live".into(),
        u64::from(state.ready.load(Ordering::Relaxed)),
    ));
    out.push((
        "server.uptime".into(),
        state.started.elapsed().map(|d| d.as_secs()).unwrap_or(0),
    ));
    out
}

/// RBAC and ext_authz filter counters of the active listeners; equal names add up, as
/// Envoy's shared stat scopes do.
fn rbac_stats(state: &AdminState) -> Vec<(String, u64)> {
    use crate::http::filters::HttpFilter;
    use crate::listener::Terminal;
    let mut sums: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    for (cfg, _) in state.store.listener_manager().active() {
        for chain in cfg.chains.iter().chain(cfg.default_chain.iter()) {
            let mut values = Vec::new();
            for net in &chain.network_rbac {
                values.extend(net.stat_values());
            }
            for net in &chain.network_ext_authz {
                values.extend(net.stat_values());
            }
            if let Terminal::Http(hcm) = &chain.terminal {
                for f in &hcm.filters {
                    match f {
                        HttpFilter::Rbac { config, .. } => {
                            values.extend(config.stat_values(&hcm.stat_prefix));
                        }
                        HttpFilter::ExtAuthz { config, .. } => {
                            values.extend(config.stat_values(&hcm.stat_prefix));
                        }
                        _ => {}
                    }
                }
            }
            for (k, v) in values {
                *sums.entry(k).or_default() += v;
            }
        }
    }
    sums.into_iter().collect()
}

fn stats_text(state: &AdminState) -> String {
    let mut out = String::new();
    for (name, value) in stat_values(state) {
        let _ = writeln!(out, "{name}: {value}");
    }
    out
}

/// The Prometheus exposition (text format 0.0.4): Istio's standard metrics
/// (see [`crate::metrics`]) and the Envoy stats under Envoy's Prometheus
/// names. Istio scrapes this on a sidecar's 15090; in local mode (`trellis
/// up`) each proxy's admin port is the scrape endpoint.
fn stats_prometheus(state: &AdminState) -> String {
    let mut out = String::new();
    crate::metrics::global().render(&mut out);
    let mut lines: Vec<(String, String, u64)> = stat_values(state)
        .into_iter()
        .map(|(name, value)| {
            let (metric, labels) = prometheus_name(&name);
            (metric, labels, value)
        })
        .collect();
    // A family's samples must be contiguous, under one TYPE line.
    lines.sort_by(|a, b| a.0.cmp(&b.0));
    let mut last = "";
    for (metric, labels, value) in &lines {
        if metric != last {
            let kind = if is_gauge(metric) { "gauge" } else { "counter" };
            let _ = writeln!(out, "# TYPE {metric} {kind}");
            last = metric;
        }
        let _ = writeln!(out, "{metric}{labels} {value}");
    }
    out
}

/// Envoy's tag extraction for the simple cases: `cluster.<name>.<stat>` →
/// `envoy_cluster_<stat>{envoy_cluster_name="<name>"}` (circuit breaker
/// stats included), `listener.<address>.<stat>` and
/// `http.<prefix>.rbac.<stat>` likewise; anything else is `envoy_` plus the
/// name with non-word characters as `_`.
pub(crate) fn prometheus_name(name: &str) -> (String, String) {
    let label = |k: &str, v: &str| format!("{{{k}=\"{}\"}}", crate::metrics::escape_label(v));
    if let Some(rest) = name.strip_prefix("cluster.") {
        let split = rest
            .find(".circuit_breakers.")
            .map(|i| (&rest[..i], &rest[i + 1..]))
            .or_else(|| rest.rsplit_once('.'));
        if let Some((cluster, stat)) = split {
            return (
                format!("envoy_cluster_{}", sanitize(stat)),
                label("envoy_cluster_name", cluster),
            );
        }
    } else if let Some(rest) = name.strip_prefix("listener.") {
        if let Some((addr, stat)) = rest.rsplit_once('.') {
            return (
                format!("envoy_listener_{}", sanitize(stat)),
                label("envoy_listener_address", addr),
            );
        }
    } else if let Some(rest) = name.strip_prefix("http.")
        && let Some((prefix, stat)) = rest.split_once(".rbac.")
    {
        return (
            format!("envoy_http_rbac_{}", sanitize(stat)),
            label("envoy_http_conn_manager_prefix", prefix),
        );
    }
    (format!("envoy_{}", sanitize(name)), String::new())
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn is_gauge(metric: &str) -> bool {
    metric.ends_with("_active")
        || metric.ends_with("_open")
        || metric.starts_with("envoy_cluster_membership_")
        || metric == "envoy_server_live"
        || metric == "envoy_server_uptime"
        || metric == "envoy_control_plane_connected_state"
        || metric.starts_with("envoy_server_days_until")
        || metric.starts_with("envoy_server_seconds_until")
        || metric.starts_with("envoy_trellis_xds_")
}

fn clusters_text(state: &AdminState) -> String {
    let mut out = String::new();
    let snapshot = state.store.snapshot().load_full();
    let mut clusters: Vec<_> = snapshot.clusters.values().collect();
    clusters.sort_by(|a, b| a.name().cmp(b.name()));
    for c in clusters {
        let n = c.name();
        for h in &c.all_hosts {
            let t = &h.target;
            let _ = writeln!(out, "{n}::{t}::rq_active::{}", h.active());
            let _ = writeln!(out, "{n}::{t}::cx_idle::{}", h.pool().idle_connections());
            let _ = writeln!(out, "{n}::{t}::weight::{}", h.weight);
            let _ = writeln!(out, "{n}::{t}::priority::{}", h.priority);
            let _ = writeln!(
                out,
                "{n}::{t}::health_flags::{}",
                if h.is_healthy() {
                    "healthy"
                } else {
                    "/failed_eds_health"
                }
            );
        }
    }
    out
}

/// Envoy's overflow counters (summed over priorities, as Envoy's cluster
/// stats are) and the per-priority `circuit_breakers.<p>.*_open` gauges.
fn breaker_stats(out: &mut Vec<(String, u64)>, n: &str, breakers: &crate::cluster::Breakers) {
    let all = breakers.all();
    let sum = |f: fn(&crate::cluster::breaker::OverflowStats) -> &std::sync::atomic::AtomicU64| {
        all.iter()
            .map(|(_, r)| f(&r.stats).load(Ordering::Relaxed))
            .sum::<u64>()
    };
    out.push((
        format!("cluster.{n}.upstream_cx_overflow"),
        sum(|s| &s.cx_overflow),
    ));
    out.push((
        format!("cluster.{n}.upstream_rq_pending_overflow"),
        // Envoy counts max_requests overflows here too.
        sum(|s| &s.rq_pending_overflow) + sum(|s| &s.rq_overflow),
    ));
    out.push((
        format!("cluster.{n}.upstream_rq_retry_overflow"),
        sum(|s| &s.rq_retry_overflow),
    ));
    let in_use: Vec<[u64; 4]> = all.iter().map(|(_, r)| r.in_use()).collect();
    out.push((
        format!("cluster.{n}.upstream_rq_pending_active"),
        in_use.iter().map(|u| u[1]).sum(),
    ));
    out.push((
        format!("cluster.{n}.upstream_rq_active"),
        in_use.iter().map(|u| u[2]).sum(),
    ));
    for (priority, r) in all {
        let names = ["cx_open", "rq_pending_open", "rq_open", "rq_retry_open"];
        for (name, open) in names.iter().zip(r.open()) {
            out.push((
                format!("cluster.{n}.circuit_breakers.{priority}.{name}"),
                u64::from(open),
            ));
        }
    }
}
