//! `remote_jwks`: fetching a key set over HTTP from a host of a cluster of
//! the current snapshot, and caching it.
//!
//! On demand (Envoy's default) the keys are fetched when a request needs
//! them and kept for `cache_duration` (10 minutes); once expired, the next
//! request fetches again and fails with `Jwks remote fetch is failed` if
//! that fetch fails. With `async_fetch` the keys never expire: a background
//! task refreshes them every `cache_duration` and, after a failed fetch,
//! retries after `failed_refetch_duration` while keeping the keys it has.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;

use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::RemoteJwks;

use super::jwks::Jwks;
use crate::addr::Target;
use crate::duration::duration_or;
use crate::snapshot::SharedSnapshot;

const DEFAULT_CACHE: Duration = Duration::from_secs(600);
const MAX_BODY: usize = 4 * 1024 * 1024;

#[derive(Debug)]
struct Cached {
    jwks: Arc<Jwks>,
    /// `None`: never expires (async fetch).
    expires: Option<Instant>,
}

#[derive(Debug)]
pub(super) struct Remote {
    uri: Uri,
    cluster: String,
    timeout: Duration,
    cache_duration: Duration,
    /// Extra attempts after a failure (`retry_policy`), and the pause.
    retries: u32,
    backoff: Duration,
    /// `failed_refetch_duration` when `async_fetch` is set.
    async_refetch: Option<Duration>,
    cache: Mutex<Option<Cached>>,
    /// One fetch at a time; later requests reuse its result.
    fetching: tokio::sync::Mutex<()>,
    refresher_started: std::sync::atomic::AtomicBool,
}

impl Remote {
    pub(super) fn compile(r: &RemoteJwks) -> Result<Self, (String, String)> {
        let http_uri = r
            .http_uri
            .as_ref()
            .ok_or_else(|| ("http_uri".to_string(), "is required".to_string()))?;
        let uri: Uri = http_uri.uri.parse().map_err(|_| {
            (
                "http_uri.uri".to_string(),
                format!("invalid URI '{}'", http_uri.uri),
            )
        })?;
        if uri.authority().is_none() {
            return Err((
                "http_uri.uri".into(),
                format!("invalid URI '{}'", http_uri.uri),
            ));
        }
        let cluster = match &http_uri.http_upstream_type {
            Some(
                envoy_types::pb::envoy::config::core::v3::http_uri::HttpUpstreamType::Cluster(c),
            ) if !c.is_empty() => c.clone(),
            _ => return Err(("http_uri.cluster".into(), "must not be empty".into())),
        };
        let timeout = http_uri
            .timeout
            .as_ref()
            .ok_or_else(|| ("http_uri.timeout".to_string(), "is required".to_string()))?;
        if timeout.seconds < 0 || timeout.nanos < 0 {
            return Err(("http_uri.timeout".into(), "must not be negative".into()));
        }
        let timeout = Duration::new(timeout.seconds as u64, timeout.nanos as u32);
        let (retries, backoff) = match &r.retry_policy {
            None => (0, Duration::ZERO),
            Some(p) => {
                let n = p.num_retries.map(|v| v.value).unwrap_or(1);
                let base = p
                    .retry_back_off
                    .as_ref()
                    .map(|b| duration_or(b.base_interval.as_ref(), Duration::from_secs(1)))
                    .unwrap_or(Duration::from_secs(1));
                (n, base)
            }
        };
        Ok(Self {
            uri,
            cluster,
            timeout,
            cache_duration: duration_or(r.cache_duration.as_ref(), DEFAULT_CACHE),
            retries,
            backoff,
            async_refetch: r
                .async_fetch
                .as_ref()
                .map(|a| duration_or(a.failed_refetch_duration.as_ref(), Duration::from_secs(1))),
            cache: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
            refresher_started: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn cached(&self) -> Option<Arc<Jwks>> {
        let cache = self.cache.lock().ok()?;
        let c = cache.as_ref()?;
        match c.expires {
            Some(t) if Instant::now() >= t => None,
            _ => Some(Arc::clone(&c.jwks)),
        }
    }

    fn store(&self, jwks: Arc<Jwks>, expires: Option<Instant>) {
        if let Ok(mut cache) = self.cache.lock() {
            *cache = Some(Cached { jwks, expires });
        }
    }

    /// The keys for a request: cached, or fetched now.
    pub(super) async fn keys(self: &Arc<Self>, snapshot: &SharedSnapshot) -> Option<Arc<Jwks>> {
        if self.async_refetch.is_some()
            && !self
                .refresher_started
                .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            spawn_refresher(Arc::downgrade(self), Arc::clone(snapshot));
        }
        if let Some(k) = self.cached() {
            return Some(k);
        }
        let _one = self.fetching.lock().await;
        if let Some(k) = self.cached() {
            return Some(k);
        }
        let jwks = Arc::new(self.fetch_with_retries(snapshot).await?);
        let expires = if self.async_refetch.is_some() {
            None
        } else {
            Some(Instant::now() + self.cache_duration)
        };
        self.store(Arc::clone(&jwks), expires);
        Some(jwks)
    }

    async fn fetch_with_retries(&self, snapshot: &SharedSnapshot) -> Option<Jwks> {
        let mut attempt = 0;
        loop {
            match self.fetch_once(snapshot).await {
                Ok(j) => return Some(j),
                Err(e) => {
                    tracing::debug!(uri = %self.uri, cluster = %self.cluster, error = %e, "JWKS fetch failed");
                    if attempt >= self.retries {
                        return None;
                    }
                    attempt += 1;
                    tokio::time::sleep(self.backoff).await;
                }
            }
        }
    }

    async fn fetch_once(&self, snapshot: &SharedSnapshot) -> Result<Jwks, String> {
        let cluster = snapshot
            .load()
            .clusters
            .get(&self.cluster)
            .cloned()
            .ok_or_else(|| format!("cluster '{}' is not configured", self.cluster))?;
        let host = cluster
            .pick(&crate::cluster::LbContext::with_hash(None))
            .cloned()
            .ok_or_else(|| "no healthy upstream".to_string())?;
        let target = host.target.clone();
        let tls = host.tls.clone();
        let work = async move {
            let tcp = match &target {
                Target::Ip(a) => tokio::net::TcpStream::connect(a).await,
                Target::Dns { host, port } => {
                    tokio::net::TcpStream::connect((host.as_str(), *port)).await
                }
            }
            .map_err(|e| e.to_string())?;
            let authority = self
                .uri
                .authority()
                .map(|a| a.as_str().to_string())
                .unwrap_or_default();
            let path = self
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string();
            let req = Request::get(path)
                .header(http::header::HOST, authority)
                .body(Empty::<Bytes>::new())
                .map_err(|e| e.to_string())?;
            let resp = match tls {
                Some(t) => {
                    let connector = tokio_rustls::TlsConnector::from(Arc::clone(&t.config));
                    let stream = connector
                        .connect(t.server_name.clone(), tcp)
                        .await
                        .map_err(|e| e.to_string())?;
                    send(stream, req).await?
                }
                None => send(tcp, req).await?,
            };
            if resp.0 != StatusCode::OK {
                return Err(format!("status {}", resp.0));
            }
            if resp.1.is_empty() {
                return Err("empty body".into());
            }
            let text = String::from_utf8_lossy(&resp.1).into_owned();
            Jwks::parse(&text)
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| "timeout".to_string())?
    }
}

async fn send<IO>(io: IO, req: Request<Empty<Bytes>>) -> Result<(StatusCode, Bytes), String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

/// Keeps async-fetched keys fresh until the filter config is dropped.
fn spawn_refresher(remote: Weak<Remote>, snapshot: SharedSnapshot) {
    tokio::spawn(async move {
        loop {
            let Some(r) = remote.upgrade() else {
                return;
            };
            let wait = match r.fetch_with_retries(&snapshot).await {
                Some(jwks) => {
                    r.store(Arc::new(jwks), None);
                    r.cache_duration
                }
                None => r.async_refetch.unwrap_or(Duration::from_secs(1)),
            };
            drop(r);
            tokio::time::sleep(wait).await;
        }
    });
}
