//! Connections to one upstream host: HTTP/1.1 keep-alive reuse and one
//! multiplexed HTTP/2 connection.
//!
//! A pool belongs to a host, and a host outlives cluster updates that keep it,
//! so connections survive EDS and CDS changes that do not remove the endpoint.

use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::addr::Target;
use crate::body::{Body, BoxError};

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
}

pub struct HostPool {
    target: Target,
    idle_h1: Mutex<Vec<http1::SendRequest<Body>>>,
    h2: tokio::sync::Mutex<Option<http2::SendRequest<Body>>>,
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
        })
    }

    pub fn idle_connections(&self) -> usize {
        self.idle_h1.lock().map(|v| v.len()).unwrap_or(0)
    }

    async fn connect(&self, timeout: Duration) -> Result<TcpStream, UpstreamError> {
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
        connect_timeout: Duration,
    ) -> Result<Response<Body>, UpstreamError> {
        match version {
            Version::Http1 => self.send_h1(req, connect_timeout).await,
            Version::Http2 => self.send_h2(req, connect_timeout).await,
        }
    }

    fn take_idle_h1(&self) -> Option<http1::SendRequest<Body>> {
        let mut idle = self.idle_h1.lock().ok()?;
        while let Some(sender) = idle.pop() {
            if sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }

    fn return_h1(&self, sender: http1::SendRequest<Body>) {
        if let Ok(mut idle) = self.idle_h1.lock()
            && idle.len() < MAX_IDLE_H1
        {
            idle.push(sender);
        }
    }

    async fn send_h1(
        self: &Arc<Self>,
        req: Request<Body>,
        timeout: Duration,
    ) -> Result<Response<Body>, UpstreamError> {
        let mut sender = match self.take_idle_h1() {
            Some(s) => s,
            None => {
                let stream = self.connect(timeout).await?;
                let (sender, conn) = http1::Builder::new()
                    .handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| UpstreamError::Connect(e.to_string()))?;
                tokio::spawn(async move {
                    if let Err(e) = conn.with_upgrades().await {
                        tracing::debug!(error = %e, "upstream http/1.1 connection ended");
                    }
                });
                sender
            }
        };
        let resp = sender.send_request(req).await.map_err(reset_error)?;
        let pool = Arc::downgrade(self);
        Ok(resp.map(|body| {
            PooledBody {
                inner: body,
                sender: Some(sender),
                pool,
            }
            .boxed()
        }))
    }

    async fn send_h2(
        &self,
        req: Request<Body>,
        timeout: Duration,
    ) -> Result<Response<Body>, UpstreamError> {
        let mut sender = {
            let mut slot = self.h2.lock().await;
            match slot.as_ref() {
                Some(s) if !s.is_closed() => s.clone(),
                _ => {
                    let stream = self.connect(timeout).await?;
                    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                        .handshake(TokioIo::new(stream))
                        .await
                        .map_err(|e| UpstreamError::Connect(e.to_string()))?;
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(error = %e, "upstream http/2 connection ended");
                        }
                    });
                    *slot = Some(sender.clone());
                    sender
                }
            }
        };
        sender.ready().await.map_err(reset_error)?;
        let resp = sender.send_request(req).await.map_err(reset_error)?;
        Ok(resp.map(crate::body::incoming))
    }
}

fn reset_error(e: hyper::Error) -> UpstreamError {
    UpstreamError::Reset(e.to_string())
}

/// A response body that hands its HTTP/1.1 connection back to the pool once
/// the response has been read to the end.
struct PooledBody {
    inner: Incoming,
    sender: Option<http1::SendRequest<Body>>,
    pool: Weak<HostPool>,
}

impl PooledBody {
    fn release(&mut self) {
        if let (Some(mut sender), Some(pool)) = (self.sender.take(), self.pool.upgrade()) {
            // The connection becomes ready only after its task has seen the
            // end of the message, which happens after we saw it; wait for that
            // off the request path.
            tokio::spawn(async move {
                if sender.ready().await.is_ok() {
                    pool.return_h1(sender);
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
