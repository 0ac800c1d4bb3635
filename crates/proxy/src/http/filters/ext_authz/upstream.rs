//! One call to the authorization service through the proxy's own cluster:
//! its load balancer, its hosts' connection pools and their TLS.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use envoy_types::pb::envoy::config::core::v3::RoutingPriority;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;

use crate::body::Body;
use crate::cluster::pool::SendOptions;
use crate::cluster::{Cluster, Host, LbContext, UpstreamProtocol, Version};
use crate::snapshot::SharedSnapshot;

/// Largest authorization response body read.
const MAX_RESPONSE_BODY: usize = 1 << 20;

/// A whole response from the authorization service.
#[derive(Debug)]
pub(super) struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
    /// From sending the request to the response headers.
    pub elapsed_ms: u64,
}

/// Why the call failed; all of these are check errors.
#[derive(Debug, thiserror::Error)]
pub(super) enum CallError {
    #[error("cluster '{0}' is not configured")]
    NoCluster(String),
    #[error("no healthy upstream in cluster '{0}'")]
    NoHost(String),
    #[error("invalid request: {0}")]
    Request(String),
    #[error("upstream: {0}")]
    Upstream(#[from] crate::cluster::UpstreamError),
    #[error("reading the response: {0}")]
    Body(String),
    #[error("timeout")]
    Timeout,
    #[error("{0}")]
    Protocol(String),
}

/// Where a call goes: the cluster, the host its load balancer picked, and
/// the HTTP version (`force`, or the cluster's).
pub(super) struct Target {
    cluster: Arc<Cluster>,
    host: Arc<Host>,
    pub version: Version,
}

pub(super) fn target(
    snapshot: &SharedSnapshot,
    cluster_name: &str,
    force: Option<Version>,
) -> Result<Target, CallError> {
    let cluster = snapshot
        .load()
        .clusters
        .get(cluster_name)
        .cloned()
        .ok_or_else(|| CallError::NoCluster(cluster_name.to_string()))?;
    let host = cluster
        .pick(&LbContext::with_hash(None))
        .cloned()
        .ok_or_else(|| CallError::NoHost(cluster_name.to_string()))?;
    let version = force.unwrap_or(match cluster.spec.protocol {
        UpstreamProtocol::Fixed(v) => v,
        UpstreamProtocol::Downstream => Version::Http1,
    });
    Ok(Target {
        cluster,
        host,
        version,
    })
}

/// [`call`] bounded by `timeout`.
pub(super) async fn call_within(
    timeout: Option<std::time::Duration>,
    target: Target,
    req: Request<Body>,
) -> Result<Answer, CallError> {
    match timeout {
        Some(t) => tokio::time::timeout(t, call(target, req))
            .await
            .map_err(|_| CallError::Timeout)?,
        None => call(target, req).await,
    }
}

/// Sends `req` to the target's host and reads the whole answer.
pub(super) async fn call(target: Target, req: Request<Body>) -> Result<Answer, CallError> {
    let Target {
        cluster,
        host,
        version,
    } = target;
    let opts = SendOptions {
        connect_timeout: cluster.spec.connect_timeout,
        resources: cluster.spec.breakers.for_priority(RoutingPriority::Default),
        max_requests_per_connection: cluster.spec.max_requests_per_connection,
        idle_timeout: cluster.spec.idle_timeout,
        tls: host.tls.as_deref(),
    };
    cluster
        .stats
        .upstream_rq_total
        .fetch_add(1, Ordering::Relaxed);
    let sent = std::time::Instant::now();
    let resp = host.state.pool.send(req, version, opts).await?;
    let elapsed_ms = sent.elapsed().as_millis() as u64;
    cluster.stats.record_status(resp.status().as_u16());
    let (parts, mut body) = resp.into_parts();
    // Read frame by frame: `Limited` needs a higher-ranked error conversion
    // that rustc cannot prove `Send` inside the connection's future.
    let mut data = BytesMut::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| CallError::Body(e.to_string()))?;
        match frame.into_data() {
            Ok(d) => {
                if data.len() + d.len() > MAX_RESPONSE_BODY {
                    return Err(CallError::Body("response body too large".into()));
                }
                data.extend_from_slice(&d);
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers = Some(t);
                }
            }
        }
    }
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body: data.freeze(),
        trailers,
        elapsed_ms,
    })
}
