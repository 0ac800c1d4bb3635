//! Serving one downstream connection with hyper: protocol selection per the
//! manager's codec, graceful shutdown when draining, and byte bridges for
//! upgrades and CONNECT.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{Response, StatusCode};
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};

use super::flags::Flag;
use super::hcm::Codec;
use super::local_reply;
use super::service::{self, ConnInfo, RequestState};
use crate::body::{self, Body};
use crate::cluster::{Host, UpstreamError};
use crate::drain::DrainWatch;

type ServiceFuture =
    std::pin::Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

pub async fn serve_connection<IO>(io: IO, info: Arc<ConnInfo>, mut drain: DrainWatch)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let hcm = Arc::clone(&info.hcm);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Generous parser limits so that the connection manager's own checks
        // (with Envoy's 431 reply) decide; hyper's bare 431 is the backstop.
        .max_buf_size((hcm.max_request_headers_bytes + 64 * 1024).clamp(8192, 1 << 20))
        .max_headers(hcm.max_headers_count.saturating_mul(2).saturating_add(100))
        .header_read_timeout(
            hcm.request_headers_timeout
                .unwrap_or(Duration::from_secs(60)),
        );
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(hcm.max_request_headers_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(2_147_483_647)
        .enable_connect_protocol();
    let builder = match hcm.codec {
        Codec::Auto => builder,
        Codec::Http1 => builder.http1_only(),
        Codec::Http2 => builder.http2_only(),
    };
    // Boxed: hyper keeps a slot for the service future in every HTTP/1.1
    // connection for its whole life, so an unboxed future (several KiB: the
    // whole request path) would be paid by every idle keep-alive connection,
    // not only by the ones with a request in flight.
    let svc = service_fn(move |req| -> ServiceFuture {
        let info = Arc::clone(&info);
        Box::pin(async move { Ok::<_, Infallible>(service::handle(info, req).await) })
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(error = %e, "downstream connection ended with an error");
            }
        }
        _ = drain.signaled() => {
            // HTTP/1.1 closes after the response in flight; HTTP/2 sends GOAWAY.
            conn.as_mut().graceful_shutdown();
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "downstream connection ended while draining");
            }
        }
    }
}

/// Joins a downstream and an upstream upgraded connection byte for byte.
pub(super) async fn bridge_upgrade(down: OnUpgrade, up: OnUpgrade) {
    let (down, up) = match tokio::try_join!(down, up) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let mut down = TokioIo::new(down);
    let mut up = TokioIo::new(up);
    if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
        tracing::debug!(error = %e, "upgraded connection ended");
    }
}

/// HTTP CONNECT: opens a TCP connection to the chosen host, answers 200, and
/// bridges the downstream tunnel to it.
pub(super) async fn tunnel_connect(
    parts: &mut http::request::Parts,
    host: &Arc<Host>,
    connect_timeout: Duration,
    state: &mut RequestState,
) -> Result<Response<Body>, Response<Body>> {
    let Some(down) = parts.extensions.remove::<OnUpgrade>() else {
        return Err(local_reply::reply(StatusCode::BAD_REQUEST, "", false));
    };
    let target = host.target.clone();
    let connect = async {
        match &target {
            crate::addr::Target::Ip(a) => tokio::net::TcpStream::connect(a).await,
            crate::addr::Target::Dns { host, port } => {
                tokio::net::TcpStream::connect((host.as_str(), *port)).await
            }
        }
    };
    let upstream = match tokio::time::timeout(connect_timeout, connect).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            state.flags.set(Flag::UpstreamConnectionFailure);
            let text = format!(
                "upstream connect error or disconnect/reset before headers. reset reason: {}",
                UpstreamError::Connect(e.to_string())
            );
            return Err(local_reply::reply(
                StatusCode::SERVICE_UNAVAILABLE,
                &text,
                false,
            ));
        }
        Err(_) => {
            state.flags.set(Flag::UpstreamConnectionFailure);
            return Err(local_reply::reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream connect error or disconnect/reset before headers. reset reason: connection timeout",
                false,
            ));
        }
    };
    tokio::spawn(async move {
        let down = match down.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "CONNECT upgrade failed");
                return;
            }
        };
        let mut down = TokioIo::new(down);
        let mut upstream = upstream;
        let _ = tokio::io::copy_bidirectional(&mut down, &mut upstream).await;
    });
    Ok(Response::new(body::empty()))
}
