//! The agent's merged metrics endpoint, Istio's 15020 `/stats/prometheus`:
//! one scrape target per pod carrying the proxy's metrics (from its admin
//! `/stats/prometheus`), the application's own metrics (when it exposes
//! them, Istio's `prometheus.io/port` and `path` annotations), and the
//! agent's. Also `/healthz/ready`, the proxy's readiness.
//!
//! A source that fails is left out (and counted) rather than failing the
//! scrape: Prometheus then still sees the others.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// How long one source may take.
const SOURCE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct MergedMetrics {
    /// `host:port` of the proxy's admin server.
    pub admin: SocketAddr,
    /// `http://127.0.0.1:<port><path>` of the application's metrics.
    pub app: Option<String>,
}

#[derive(Debug, Default)]
struct Counters {
    scrapes: AtomicU64,
    app_failures: AtomicU64,
    proxy_failures: AtomicU64,
}

/// Serves on `listener` until the process ends.
pub fn serve(listener: TcpListener, cfg: MergedMetrics) {
    let cfg = Arc::new(cfg);
    let counters = Arc::new(Counters::default());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let cfg = Arc::clone(&cfg);
            let counters = Arc::clone(&counters);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let cfg = Arc::clone(&cfg);
                    let counters = Arc::clone(&counters);
                    async move { Ok::<_, std::convert::Infallible>(handle(req, &cfg, &counters).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}

async fn handle(
    req: Request<Incoming>,
    cfg: &MergedMetrics,
    c: &Counters,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, ctype: &'static str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut()
            .insert(header::CONTENT_TYPE, http::HeaderValue::from_static(ctype));
        r
    };
    match req.uri().path() {
        "/stats/prometheus" | "/metrics" => {
            c.scrapes.fetch_add(1, Ordering::Relaxed);
            let admin = format!("http://{}/stats/prometheus", cfg.admin);
            let (proxy, app) = tokio::join!(fetch(&admin), async {
                match &cfg.app {
                    Some(url) => Some(fetch(url).await),
                    None => None,
                }
            });
            let mut out = String::new();
            match proxy {
                Ok(text) => push(&mut out, &text),
                Err(e) => {
                    c.proxy_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, "merged metrics: proxy scrape failed");
                }
            }
            if let Some(app) = app {
                match app {
                    Ok(text) => push(&mut out, &text),
                    Err(e) => {
                        c.app_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(error = %e, "merged metrics: application scrape failed");
                    }
                }
            }
            out.push_str(&agent_metrics(c));
            reply(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                out,
            )
        }
        "/healthz/ready" => {
            let ready = fetch(&format!("http://{}/ready", cfg.admin)).await.is_ok();
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            reply(status, "text/plain", String::new())
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

fn push(out: &mut String, text: &str) {
    out.push_str(text);
    if !text.ends_with('\n') && !text.is_empty() {
        out.push('\n');
    }
}

fn agent_metrics(c: &Counters) -> String {
    let mut s = String::new();
    for (name, help, v) in [
        (
            "trellis_agent_scrapes_total",
            "Scrapes of the merged metrics endpoint.",
            &c.scrapes,
        ),
        (
            "trellis_agent_app_scrape_failures_total",
            "Scrapes in which the application's metrics could not be read.",
            &c.app_failures,
        ),
        (
            "trellis_agent_proxy_scrape_failures_total",
            "Scrapes in which the proxy's metrics could not be read.",
            &c.proxy_failures,
        ),
    ] {
        s.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
            v.load(Ordering::Relaxed)
        ));
    }
    s
}

/// GET `url` (plain HTTP on this host); the body when the status is 200.
async fn fetch(url: &str) -> Result<String, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{url}: no host"))?
        .clone();
    let work = async {
        let stream = tokio::net::TcpStream::connect(authority.as_str())
            .await
            .map_err(|e| format!("{authority}: {e}"))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header(header::HOST, authority.as_str())
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
        if resp.status() != StatusCode::OK {
            return Err(format!("{url}: status {}", resp.status()));
        }
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        String::from_utf8(body.to_vec()).map_err(|_| format!("{url}: not UTF-8"))
    };
    tokio::time::timeout(SOURCE_TIMEOUT, work)
        .await
        .map_err(|_| format!("{url}: timed out"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-route HTTP server on a real socket: what a proxy admin or an
    /// application serves.
    async fn server(path: &'static str, body: &'static str) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = l.local_addr().unwrap_or_else(|e| panic!("{e}"));
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<Incoming>| async move {
                            let status = if req.uri().path() == path {
                                StatusCode::OK
                            } else {
                                StatusCode::NOT_FOUND
                            };
                            let mut r =
                                Response::new(Full::new(Bytes::from_static(body.as_bytes())));
                            *r.status_mut() = status;
                            Ok::<_, std::convert::Infallible>(r)
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        addr
    }

    /// Serves merged metrics for `admin` and `app` and scrapes it once.
    async fn scrape_merged(admin: SocketAddr, app: String) -> String {
        let l = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let merged = l.local_addr().unwrap_or_else(|e| panic!("{e}"));
        serve(
            l,
            MergedMetrics {
                admin,
                app: Some(app),
            },
        );
        fetch(&format!("http://{merged}/stats/prometheus"))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test]
    async fn merges_proxy_app_and_agent_metrics_and_survives_a_dead_app() {
        let admin = server("/stats/prometheus", "istio_requests_total{a=\"b\"} 3\n").await;
        let app = server("/metrics", "app_hits 7").await;
        let text = scrape_merged(admin, format!("http://{app}/metrics")).await;
        assert!(text.contains("istio_requests_total{a=\"b\"} 3\n"), "{text}");
        assert!(text.contains("app_hits 7\n"), "{text}");
        assert!(text.contains("trellis_agent_scrapes_total 1\n"), "{text}");

        // The application is gone: the proxy's metrics are still served.
        let text = scrape_merged(admin, "http://127.0.0.1:1/metrics".into()).await;
        assert!(text.contains("istio_requests_total"), "{text}");
        assert!(
            text.contains("trellis_agent_app_scrape_failures_total 1\n"),
            "{text}"
        );
    }
}
