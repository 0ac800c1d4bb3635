//! `envoy.filters.network.tcp_proxy`: forwards a downstream connection's
//! bytes to a host of a cluster, closing both sides after the idle timeout.

use std::time::Duration;

use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    TcpProxy as Proto, tcp_proxy,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::access_log::Entry;
use crate::addr::Target;
use crate::duration::timeout_or;
use crate::error::{ConfigError, ErrorScope};
use crate::http::flags::Flag;
use crate::snapshot::SharedSnapshot;

/// Bytes moved per read/write in each direction. 16 KiB cost ~8x Envoy's
/// syscalls per byte in the throughput benchmark; 128 KiB is in Envoy's range.
const COPY_BUFFER: usize = 128 * 1024;

pub const TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";

#[derive(Debug)]
enum Clusters {
    One(String),
    Weighted {
        clusters: Vec<(String, u64)>,
        total: u64,
    },
}

#[derive(Debug)]
pub struct TcpProxy {
    pub stat_prefix: String,
    clusters: Clusters,
    idle_timeout: Option<Duration>,
    /// `max_downstream_connection_duration`: the connection is closed once
    /// it is this old, busy or not.
    max_duration: Option<Duration>,
    max_connect_attempts: u32,
    pub access_logs: Vec<crate::access_log::AccessLog>,
}

impl TcpProxy {
    pub fn compile(any: &Any, scope: &ErrorScope, field: &str) -> Result<Self, ConfigError> {
        let p = Proto::decode(any.value.as_slice())
            .map_err(|e| scope.err(field, format!("invalid TcpProxy: {e}")))?;
        if p.tunneling_config.is_some() {
            return Err(scope.err(
                format!("{field}.tunneling_config"),
                "tunneling is not supported yet",
            ));
        }
        let clusters = match p.cluster_specifier {
            Some(tcp_proxy::ClusterSpecifier::Cluster(c)) if !c.is_empty() => Clusters::One(c),
            Some(tcp_proxy::ClusterSpecifier::WeightedClusters(w)) => {
                let clusters: Vec<(String, u64)> = w
                    .clusters
                    .into_iter()
                    .map(|c| (c.name, u64::from(c.weight)))
                    .collect();
                let total = clusters.iter().map(|c| c.1).sum();
                if total == 0 {
                    return Err(scope.err(
                        format!("{field}.weighted_clusters"),
                        "total weight must be positive",
                    ));
                }
                Clusters::Weighted { clusters, total }
            }
            _ => {
                return Err(scope.err(
                    format!("{field}.cluster"),
                    "a cluster or weighted_clusters is required",
                ));
            }
        };
        let access_logs =
            crate::access_log::compile_list(&p.access_log, scope, &format!("{field}.access_log"))?;
        Ok(Self {
            access_logs,
            stat_prefix: p.stat_prefix,
            clusters,
            // Envoy closes idle TCP proxy connections after one hour by default.
            idle_timeout: timeout_or(p.idle_timeout.as_ref(), Some(Duration::from_secs(3600))),
            max_duration: timeout_or(p.max_downstream_connection_duration.as_ref(), None),
            max_connect_attempts: p.max_connect_attempts.map(|v| v.value.max(1)).unwrap_or(1),
        })
    }

    pub fn cluster_names(&self) -> Vec<&str> {
        match &self.clusters {
            Clusters::One(c) => vec![c],
            Clusters::Weighted { clusters, .. } => clusters.iter().map(|c| c.0.as_str()).collect(),
        }
    }

    fn pick_cluster(&self) -> &str {
        match &self.clusters {
            Clusters::One(c) => c,
            Clusters::Weighted { clusters, total } => {
                let mut r = rand::random_range(0..*total);
                for (name, w) in clusters {
                    if r < *w {
                        return name;
                    }
                    r -= w;
                }
                clusters.last().map(|c| c.0.as_str()).unwrap_or("")
            }
        }
    }

    /// Proxies until either side closes or the connection idles out, then
    /// writes the access logs (`entry` carries the downstream side; `None`
    /// when nothing is logged). `original_dst` is used by ORIGINAL_DST clusters.
    pub async fn serve<IO>(
        &self,
        downstream: IO,
        snapshot: &SharedSnapshot,
        original_dst: Option<std::net::SocketAddr>,
        entry: Option<Entry>,
    ) where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let start = std::time::Instant::now();
        let mut entry = entry;
        let name = self.pick_cluster();
        let metrics = crate::metrics::global();
        let peer = entry.as_ref().and_then(|e| e.peer.clone());
        let principal = peer.as_deref().map(|p| p.principal());
        metrics.tcp_opened(&self.stat_prefix, name, principal);
        self.proxy(downstream, snapshot, original_dst, name, entry.as_mut())
            .await;
        if let Some(mut e) = entry {
            e.duration = Some(start.elapsed());
            metrics.tcp_closed(
                &self.stat_prefix,
                name,
                principal,
                e.flags,
                e.bytes_received,
                e.bytes_sent,
            );
            if !self.access_logs.is_empty() {
                crate::access_log::log_all(&self.access_logs, &e);
            }
        }
    }

    async fn proxy<IO>(
        &self,
        mut downstream: IO,
        snapshot: &SharedSnapshot,
        original_dst: Option<std::net::SocketAddr>,
        name: &str,
        mut entry: Option<&mut Entry>,
    ) where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let cluster = snapshot.load().clusters.get(name).cloned();
        if let Some(e) = entry.as_deref_mut() {
            e.upstream_cluster = Some(name.to_string());
        }
        let Some(cluster) = cluster else {
            tracing::debug!(cluster = name, "tcp_proxy: unknown cluster, closing");
            if let Some(e) = entry.as_deref_mut() {
                e.flags.set(Flag::NoClusterFound);
            }
            return;
        };
        let mut upstream = None;
        for _ in 0..self.max_connect_attempts {
            let (target, host) = if cluster.spec.discovery == crate::cluster::Discovery::OriginalDst
            {
                (original_dst.map(Target::Ip), None)
            } else {
                let host = cluster.pick(&Default::default()).cloned();
                (host.as_ref().map(|h| h.target.clone()), host)
            };
            let Some(target) = target else {
                if let Some(e) = entry.as_deref_mut() {
                    e.flags.set(Flag::NoHealthyUpstream);
                }
                break;
            };
            if let Some(e) = entry.as_deref_mut() {
                e.upstream_host = Some(target.to_string());
            }
            let report = |o: crate::cluster::outlier::Outcome| {
                if let Some(h) = &host {
                    cluster.report_outcome(h, o);
                }
            };
            let connect = async {
                match &target {
                    Target::Ip(a) => TcpStream::connect(a).await,
                    Target::Dns { host, port } => TcpStream::connect((host.as_str(), *port)).await,
                }
            };
            match tokio::time::timeout(cluster.spec.connect_timeout, connect).await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    report(crate::cluster::outlier::Outcome::Connected);
                    upstream = Some(s);
                    break;
                }
                Ok(Err(err)) => {
                    tracing::debug!(%target, error = %err, "tcp_proxy: connect failed");
                    if let Some(e) = entry.as_deref_mut() {
                        let text = err.to_string();
                        let text = text.split(" (os error").next().unwrap_or_default();
                        e.upstream_transport_failure_reason =
                            Some(format!("delayed_connect_error:_{}", text.replace(' ', "_")));
                    }
                }
                Err(_) => tracing::debug!(%target, "tcp_proxy: connect timed out"),
            }
            report(crate::cluster::outlier::Outcome::ConnectFailed);
            cluster
                .stats
                .upstream_cx_connect_fail
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let Some(upstream) = upstream else {
            if let Some(e) = entry.as_deref_mut()
                && e.upstream_host.is_some()
            {
                // Envoy marks the last failed attempt as exhausting the
                // connect attempts too, even with a single attempt.
                e.flags.set(Flag::UpstreamConnectionFailure);
                e.flags.set(Flag::UpstreamRetryLimitExceeded);
            }
            return;
        };
        if let Some(e) = entry.as_deref_mut() {
            e.upstream_local = upstream.local_addr().ok();
            e.upstream_transport_failure_reason = None;
        }
        cluster
            .stats
            .upstream_rq_total
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut counts = (0u64, 0u64);
        let copy = copy_counting(&mut downstream, upstream, self.idle_timeout, &mut counts);
        match self.max_duration {
            // Dropping the copy closes both sides.
            Some(max) => {
                let _ = tokio::time::timeout(max, copy).await;
            }
            None => {
                let _ = copy.await;
            }
        }
        let (received, sent) = counts;
        if let Some(e) = entry {
            e.bytes_received = received;
            e.bytes_sent = sent;
            e.upstream_wire_sent = received;
            e.upstream_wire_received = sent;
        }
    }
}

/// Bidirectional copy where any byte in either direction resets the idle
/// timer; `counts` gets the bytes moved downstream → upstream and back.
async fn copy_counting<IO>(
    down: &mut IO,
    up: TcpStream,
    idle: Option<Duration>,
    counts: &mut (u64, u64),
) -> std::io::Result<()>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let Some(idle) = idle else {
        let mut up = up;
        *counts = tokio::io::copy_bidirectional_with_sizes(down, &mut up, COPY_BUFFER, COPY_BUFFER)
            .await?;
        return Ok(());
    };
    let (mut down_r, mut down_w) = tokio::io::split(down);
    let (mut up_r, mut up_w) = up.into_split();
    let mut buf_a = vec![0u8; COPY_BUFFER];
    let mut buf_b = vec![0u8; COPY_BUFFER];
    let (mut down_open, mut up_open) = (true, true);
    while down_open || up_open {
        tokio::select! {
            r = down_r.read(&mut buf_a), if down_open => match r? {
                0 => { down_open = false; let _ = up_w.shutdown().await; }
                n => { up_w.write_all(&buf_a[..n]).await?; counts.0 += n as u64; }
            },
            r = up_r.read(&mut buf_b), if up_open => match r? {
                0 => { up_open = false; let _ = down_w.shutdown().await; }
                n => { down_w.write_all(&buf_b[..n]).await?; counts.1 += n as u64; }
            },
            _ = tokio::time::sleep(idle) => {
                tracing::debug!("tcp_proxy: idle timeout");
                return Ok(());
            }
        }
    }
    Ok(())
}
