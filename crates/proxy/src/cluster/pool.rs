//! Connections to one upstream host: HTTP/1.1 keep-alive reuse and one
//! multiplexed HTTP/2 connection.
//!
//! A pool belongs to a host, and a host outlives cluster updates that keep it,
//! so connections survive EDS and CDS changes that do not remove the endpoint.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::breaker::{Permit, Resources};
use crate::addr::Target;
use crate::body::{Body, BoxError};
use crate::tls::client::UpstreamTls;

/// Idle HTTP/1.1 connections kept per host; more are closed when returned.
const MAX_IDLE_H1: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http1,
    Http2,
}

/// Why a request never got a response from the upstream. The router turns
/// these into Envoy's status codes and response flags.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connection failure: {0}")]
    Connect(String),
    #[error("connection timeout")]
    ConnectTimeout,
    #[error("connection termination: {0}")]
    Reset(String),
    /// A circuit breaker refused the request (no connection, no room to wait).
    #[error("overflow")]
    Overflow,
}

pub struct HostPool {
    target: Target,
    idle_h1: Mutex<Vec<IdleH1>>,
    h2: tokio::sync::Mutex<Option<(http2::SendRequest<Body>, Option<SocketAddr>)>>,
    /// Woken when an HTTP/1.1 connection comes back idle, for requests
    /// pending on a connection.
    idle_returned: Notify,
}

/// An idle HTTP/1.1 connection and what limits its reuse.
struct IdleH1 {
    sender: http1::SendRequest<Body>,
    meta: ConnMeta,
    since: Instant,
}

/// What a pooled HTTP/1.1 connection carries along.
#[derive(Debug, Clone, Copy)]
struct ConnMeta {
    /// Requests this connection has carried.
    served: u32,
    /// Its local address (Envoy's `UPSTREAM_LOCAL_ADDRESS`).
    local: Option<SocketAddr>,
}

/// The local address of the upstream connection that carried a response,
/// in the response's extensions.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamLocal(pub SocketAddr);

/// Per-cluster settings for one request through a host's pool.
#[derive(Debug, Clone, Copy)]
pub struct SendOptions<'a> {
    pub connect_timeout: Duration,
    /// The circuit breakers of the request's priority.
    pub resources: &'a Arc<Resources>,
    /// 0 is unlimited.
    pub max_requests_per_connection: u32,
    pub idle_timeout: Option<Duration>,
    /// TLS to the host, from the cluster's (or the matching) transport socket.
    pub tls: Option<&'a UpstreamTls>,
}

impl std::fmt::Debug for HostPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostPool")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl HostPool {
    pub fn new(target: Target) -> Arc<Self> {
        Arc::new(Self {
            target,
            idle_h1: Mutex::new(Vec::new()),
            h2: tokio::sync::Mutex::new(None),
            idle_returned: Notify::new(),
        })
    }

    pub fn idle_connections(&self) -> usize {
        self.idle_h1.lock().map(|v| v.len()).unwrap_or(0)
    }

    /// A TCP connection, with TLS on top when the host's transport asks.
    async fn connect(
        &self,
        timeout: Duration,
        tls: Option<&UpstreamTls>,
    ) -> Result<(UpstreamIo, Option<SocketAddr>), UpstreamError> {
        let tcp = self.connect_tcp(timeout).await?;
        let local = tcp.local_addr().ok();
        let Some(tls) = tls else {
            return Ok((UpstreamIo::Plain(tcp), local));
        };
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(&tls.config));
        // Envoy's connect timeout covers the TLS handshake too.
        let stream = tokio::time::timeout(timeout, connector.connect(tls.server_name.clone(), tcp))
            .await
            .map_err(|_| UpstreamError::ConnectTimeout)?
            .map_err(|e| UpstreamError::Connect(format!("TLS error: {e}")))?;
        Ok((UpstreamIo::Tls(Box::new(stream)), local))
    }

    async fn connect_tcp(&self, timeout: Duration) -> Result<TcpStream, UpstreamError> {
        let connect = async {
            match &self.target {
                Target::Ip(addr) => TcpStream::connect(addr).await,
                Target::Dns { host, port } => TcpStream::connect((host.as_str(), *port)).await,
            }
        };
        let stream = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| UpstreamError::ConnectTimeout)?
            .map_err(|e| UpstreamError::Connect(e.to_string()))?;
        // Requests are small and latency matters more than packet count.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// Sends one request. HTTP/1.1 requests carry an origin-form URI and a
    /// Host header; HTTP/2 requests an absolute URI (it becomes `:authority`).
    pub async fn send(
        self: &Arc<Self>,
        req: Request<Body>,
        version: Version,
        opts: SendOptions<'_>,
    ) -> Result<Response<Body>, UpstreamError> {
        match version {
            Version::Http1 => self.send_h1(req, opts).await,
            Version::Http2 => self.send_h2(req, opts).await,
        }
    }

    fn take_idle_h1(
        &self,
        idle_timeout: Option<Duration>,
    ) -> Option<(http1::SendRequest<Body>, ConnMeta)> {
        let mut idle = self.idle_h1.lock().ok()?;
        while let Some(c) = idle.pop() {
            let expired = idle_timeout.is_some_and(|t| c.since.elapsed() >= t);
            if !expired && c.sender.is_ready() {
                return Some((c.sender, c.meta));
            }
        }
        None
    }

    fn return_h1(
        &self,
        sender: http1::SendRequest<Body>,
        meta: ConnMeta,
        idle_timeout: Option<Duration>,
    ) {
        if let Ok(mut idle) = self.idle_h1.lock() {
            // One clock read for the whole list: this runs after every
            // request, and `elapsed()` per idle connection made it a clock
            // read per pooled connection.
            let now = Instant::now();
            // Drop connections that sat idle too long (closing them).
            if let Some(t) = idle_timeout {
                idle.retain(|c| now.saturating_duration_since(c.since) < t);
            }
            if idle.len() < MAX_IDLE_H1 {
                idle.push(IdleH1 {
                    sender,
                    meta,
                    since: now,
                });
            }
        }
        self.idle_returned.notify_waiters();
    }

    /// An HTTP/1.1 connection for one request: an idle one, a new one if the
    /// connection breaker allows, or else wait as a pending request (if the
    /// pending breaker allows) until one of those becomes possible.
    async fn h1_connection(
        &self,
        opts: &SendOptions<'_>,
    ) -> Result<(http1::SendRequest<Body>, ConnMeta), UpstreamError> {
        if let Some(c) = self.take_idle_h1(opts.idle_timeout) {
            return Ok(c);
        }
        // From here on the request waits for a connection: a pending request.
        let _pending = opts
            .resources
            .try_pending()
            .ok_or(UpstreamError::Overflow)?;
        loop {
            let idle = self.idle_returned.notified();
            let freed = opts.resources.connection_freed.notified();
            tokio::pin!(idle, freed);
            idle.as_mut().enable();
            freed.as_mut().enable();
            if let Some(c) = self.take_idle_h1(opts.idle_timeout) {
                return Ok(c);
            }
            if let Some(permit) = opts.resources.try_connection() {
                let (stream, local) = self.connect(opts.connect_timeout, opts.tls).await?;
                let (sender, conn) = http1::Builder::new()
                    .handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| UpstreamError::Connect(e.to_string()))?;
                tokio::spawn(async move {
                    if let Err(e) = conn.with_upgrades().await {
                        tracing::debug!(error = %e, "upstream http/1.1 connection ended");
                    }
                    // The connection breaker counts open connections.
                    drop(permit);
                });
                return Ok((sender, ConnMeta { served: 0, local }));
            }
            tokio::select! {
                _ = idle => {}
                _ = freed => {}
            }
        }
    }

    async fn send_h1(
        self: &Arc<Self>,
        req: Request<Body>,
        opts: SendOptions<'_>,
    ) -> Result<Response<Body>, UpstreamError> {
        let (mut sender, meta) = self.h1_connection(&opts).await?;
        // Envoy checks max_requests when a request is given its connection,
        // so a request that waited as pending may still overflow here.
        let Some(permit) = opts.resources.try_request() else {
            self.return_h1(sender, meta, opts.idle_timeout);
            return Err(UpstreamError::Overflow);
        };
        let mut resp = sender.send_request(req).await.map_err(reset_error)?;
        if let Some(local) = meta.local {
            resp.extensions_mut().insert(UpstreamLocal(local));
        }
        let meta = ConnMeta {
            served: meta.served.saturating_add(1),
            ..meta
        };
        let served = meta.served;
        // A connection that reached max_requests_per_connection is closed
        // (dropped) instead of returned to the pool.
        let reusable =
            opts.max_requests_per_connection == 0 || served < opts.max_requests_per_connection;
        let pool = Arc::downgrade(self);
        Ok(resp.map(|body| {
            PooledBody {
                inner: body,
                _permit: permit,
                sender: reusable.then_some(sender),
                meta,
                idle_timeout: opts.idle_timeout,
                pool,
            }
            .boxed()
        }))
    }

    async fn send_h2(
        &self,
        req: Request<Body>,
        opts: SendOptions<'_>,
    ) -> Result<Response<Body>, UpstreamError> {
        let (mut sender, local) = {
            let mut slot = self.h2.lock().await;
            match slot.as_ref() {
                Some((s, local)) if !s.is_closed() => (s.clone(), *local),
                _ => {
                    let permit = match opts.resources.try_connection() {
                        Some(p) => p,
                        None => {
                            // Wait, as a pending request, for a connection slot.
                            let _pending = opts
                                .resources
                                .try_pending()
                                .ok_or(UpstreamError::Overflow)?;
                            loop {
                                let freed = opts.resources.connection_freed.notified();
                                tokio::pin!(freed);
                                freed.as_mut().enable();
                                if let Some(p) = opts.resources.try_connection() {
                                    break p;
                                }
                                freed.await;
                            }
                        }
                    };
                    let (stream, local) = self.connect(opts.connect_timeout, opts.tls).await?;
                    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                        .handshake(TokioIo::new(stream))
                        .await
                        .map_err(|e| UpstreamError::Connect(e.to_string()))?;
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(error = %e, "upstream http/2 connection ended");
                        }
                        drop(permit);
                    });
                    *slot = Some((sender.clone(), local));
                    (sender, local)
                }
            }
        };
        sender.ready().await.map_err(reset_error)?;
        let permit = opts
            .resources
            .try_request()
            .ok_or(UpstreamError::Overflow)?;
        let mut resp = sender.send_request(req).await.map_err(reset_error)?;
        if let Some(local) = local {
            resp.extensions_mut().insert(UpstreamLocal(local));
        }
        Ok(resp.map(|b| crate::body::guarded(crate::body::incoming(b), permit)))
    }
}

fn reset_error(e: hyper::Error) -> UpstreamError {
    UpstreamError::Reset(e.to_string())
}

/// A response body that hands its HTTP/1.1 connection back to the pool once
/// the response has been read to the end.
struct PooledBody {
    inner: Incoming,
    /// The max_requests breaker counts the request until its response ends.
    _permit: Permit,
    sender: Option<http1::SendRequest<Body>>,
    meta: ConnMeta,
    idle_timeout: Option<Duration>,
    pool: Weak<HostPool>,
}

impl PooledBody {
    fn release(&mut self) {
        if let (Some(mut sender), Some(pool)) = (self.sender.take(), self.pool.upgrade()) {
            // The connection becomes ready only after its task has seen the
            // end of the message, which happens after we saw it; wait for that
            // off the request path.
            let (meta, idle_timeout) = (self.meta, self.idle_timeout);
            tokio::spawn(async move {
                if sender.ready().await.is_ok() {
                    pool.return_h1(sender, meta, idle_timeout);
                }
            });
        }
    }
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.release(),
            Poll::Ready(Some(Err(_))) => this.sender = None,
            _ => {}
        }
        polled.map_err(|e| Box::new(e) as BoxError)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An upstream connection's byte stream: plain TCP or TLS over TCP.
pub(crate) enum UpstreamIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl tokio::io::AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
