//! `trellis demo-app`: a small test workload.
//!
//! * HTTP/1.1 and h2c (prior knowledge) on every `--http-port`: answers every request
//!   with a JSON echo of what it saw (see [`handle`]), steerable with `x-demo-*` headers.
//! * gRPC (hand-written framing, no protoc) on the same port:
//!   `/trellis.demo.Echo/Echo` and `/trellis.demo.Echo/ServerStream`.
//! * HTTP Upgrade (e.g. WebSocket): answered `101`, then the raw connection echoes bytes.
//! * TCP line echo on `--tcp-port`: `<service>/<version>: <line>\n`.
//! * Downstream calls (`--call`), optionally through an HTTP proxy (`--proxy`),
//!   forwarding the tracing headers like the Bookinfo applications do.
//!
//! Every HTTP response carries `x-demo-service: <service>/<version>`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
};
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

pub mod ext_authz;

/// Command line of `trellis demo-app` (flatten it into the binary's subcommand).
#[derive(clap::Args, Debug, Clone)]
pub struct DemoConfig {
    /// Service name reported in answers and in `x-demo-service`.
    #[arg(long, default_value = "demo")]
    pub service: String,
    /// Version reported in answers and in `x-demo-service`.
    #[arg(long = "version", default_value = "v1")]
    pub version: String,
    /// HTTP/1.1 + h2c + gRPC port(s); repeatable or comma separated.
    #[arg(long = "http-port", default_values_t = [8080u16], value_delimiter = ',')]
    pub http_port: Vec<u16>,
    /// Optional TCP line-echo port.
    #[arg(long = "tcp-port")]
    pub tcp_port: Option<u16>,
    /// Address to listen on.
    #[arg(long = "listen-addr", default_value = "127.0.0.1")]
    pub listen_addr: IpAddr,
    /// Downstream URL(s) to GET on every request; answers are included in `calls`.
    #[arg(long = "call")]
    pub call: Vec<String>,
    /// HTTP proxy (`http://host:port`) for downstream calls (absolute-form requests).
    #[arg(long = "proxy")]
    pub proxy: Option<String>,
    /// Also serve the HTTP check of an external authorizer (Istio's sample
    /// ext-authz behaviour, see [`ext_authz`]) on this port.
    #[arg(long = "ext-authz-http-port")]
    pub ext_authz_http_port: Option<u16>,
    /// Also serve the gRPC check (`envoy.service.auth.v3.Authorization`) on this port.
    #[arg(long = "ext-authz-grpc-port")]
    pub ext_authz_grpc_port: Option<u16>,
    /// The authorizer also allows requests without `x-ext-authz` whose
    /// source principal names this service account (gRPC check only).
    #[arg(long = "ext-authz-allow-service-account")]
    pub ext_authz_allow_service_account: Option<String>,
    /// Test hook of the gRPC check: an allowed request's
    /// `x-ext-authz-mutate: <JSON>` becomes header and query mutations.
    #[arg(long = "ext-authz-test-mutations")]
    pub ext_authz_test_mutations: bool,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            service: "demo".into(),
            version: "v1".into(),
            http_port: vec![8080],
            tcp_port: None,
            listen_addr: IpAddr::from([127, 0, 0, 1]),
            call: Vec::new(),
            proxy: None,
            ext_authz_http_port: None,
            ext_authz_grpc_port: None,
            ext_authz_allow_service_account: None,
            ext_authz_test_mutations: false,
        }
    }
}

impl DemoConfig {
    fn ident(&self) -> String {
        format!("{}/{}", self.service, self.version)
    }
}

/// Headers forwarded to downstream calls (what the Bookinfo applications propagate).
const FORWARDED_HEADERS: &[&str] = &[
    "x-request-id",
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "x-ot-span-context",
    "x-cloud-trace-context",
    "grpc-trace-bin",
    "sw8",
    "end-user",
    "user-agent",
];

pub(crate) type RespBody = BoxBody<Bytes, Infallible>;

/// Runs all listeners of `cfg` until ctrl-c (or until the future is dropped).
pub async fn run(cfg: DemoConfig) -> anyhow::Result<()> {
    let cfg = Arc::new(cfg);
    let mut tasks = tokio::task::JoinSet::new();
    for port in &cfg.http_port {
        let addr = SocketAddr::new(cfg.listen_addr, *port);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("bind http {addr}: {e}"))?;
        eprintln!(
            "demo-app {} listening http={}",
            cfg.ident(),
            listener.local_addr()?
        );
        tasks.spawn(serve_on(listener, cfg.clone()));
    }
    if let Some(port) = cfg.tcp_port {
        let addr = SocketAddr::new(cfg.listen_addr, port);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("bind tcp {addr}: {e}"))?;
        eprintln!(
            "demo-app {} listening tcp={}",
            cfg.ident(),
            listener.local_addr()?
        );
        tasks.spawn(serve_tcp_on(listener, cfg.clone()));
    }
    ext_authz::bind(
        cfg.listen_addr,
        cfg.ext_authz_http_port,
        cfg.ext_authz_grpc_port,
        ext_authz::Policy {
            allow_service_account: cfg.ext_authz_allow_service_account.clone(),
            test_mutations: cfg.ext_authz_test_mutations,
        },
        &mut tasks,
    )
    .await?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => { r?; }
        _ = tasks.join_next() => { anyhow::bail!("a listener stopped unexpectedly"); }
    }
    tasks.abort_all();
    Ok(())
}

struct Ctx {
    cfg: Arc<DemoConfig>,
    instance: String,
    direct: Client<HttpConnector, Full<Bytes>>,
    proxied: Option<Client<ProxyConnector, Full<Bytes>>>,
}

/// Serves HTTP/1.1, h2c, gRPC and upgrades on `listener` forever.
pub async fn serve_on(listener: TcpListener, cfg: Arc<DemoConfig>) {
    let instance = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let direct = Client::builder(TokioExecutor::new()).build_http();
    let proxied = cfg.proxy.as_ref().map(|p| {
        let uri: Uri = p.parse().unwrap_or_default();
        let authority = uri
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_else(|| p.clone());
        Client::builder(TokioExecutor::new()).build(ProxyConnector { addr: authority })
    });
    let ctx = Arc::new(Ctx {
        cfg,
        instance,
        direct,
        proxied,
    });
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let ctx = ctx.clone();
                async move { Ok::<_, Infallible>(handle(req, ctx).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!("connection: {e}");
            }
        });
    }
}

/// Serves the TCP line echo on `listener` forever.
pub async fn serve_tcp_on(listener: TcpListener, cfg: Arc<DemoConfig>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let ident = cfg.ident();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut lines = BufReader::new(r);
            let mut line = Vec::new();
            loop {
                line.clear();
                match lines.read_until(b'\n', &mut line).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&line);
                        let text = text.trim_end_matches(['\n', '\r']);
                        let reply = format!("{ident}: {text}\n");
                        if w.write_all(reply.as_bytes()).await.is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = w.shutdown().await;
        });
    }
}

pub(crate) fn full(b: impl Into<Bytes>) -> RespBody {
    Full::new(b.into()).boxed()
}

fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "unknown",
    }
}

fn header_str(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// Header map as JSON: lowercase name -> values joined with ",".
fn headers_json(h: &HeaderMap) -> Map<String, Value> {
    let mut out = Map::new();
    for name in h.keys() {
        let joined = h
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(",");
        out.insert(name.as_str().to_owned(), Value::String(joined));
    }
    out
}

async fn handle(mut req: Request<Incoming>, ctx: Arc<Ctx>) -> Response<RespBody> {
    let ident = ctx.cfg.ident();
    let mut resp = handle_inner(&mut req, &ctx).await;
    if let Ok(v) = HeaderValue::from_str(&ident) {
        resp.headers_mut().insert("x-demo-service", v);
    }
    resp
}

async fn handle_inner(req: &mut Request<Incoming>, ctx: &Ctx) -> Response<RespBody> {
    if let Some(ms) =
        header_str(req.headers(), "x-demo-delay-ms").and_then(|s| s.trim().parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    let is_grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if is_grpc && req.method() == Method::POST {
        return grpc(req).await;
    }

    if let Some(proto) = req.headers().get(http::header::UPGRADE).cloned()
        && req.version() <= Version::HTTP_11
        && !proto.as_bytes().eq_ignore_ascii_case(b"h2c")
    {
        return upgrade(req, proto);
    }

    if req.uri().path() == "/healthz" {
        return Response::new(full("ok"));
    }

    let status = header_str(req.headers(), "x-demo-status")
        .and_then(|s| s.trim().parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let extra_headers: Vec<(HeaderName, HeaderValue)> = req
        .headers()
        .get_all("x-demo-response-header")
        .iter()
        .filter_map(|v| {
            let s = v.to_str().ok()?;
            let (n, val) = s.split_once('=')?;
            Some((
                HeaderName::from_bytes(n.trim().as_bytes()).ok()?,
                HeaderValue::from_str(val.trim()).ok()?,
            ))
        })
        .collect();
    let body_size =
        header_str(req.headers(), "x-demo-body-size").and_then(|s| s.trim().parse::<usize>().ok());

    let body = match req.body_mut().collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            return Response::builder()
                .status(StatusCode::BAD_REQUEST)
                .body(full(format!("body error: {e}")))
                .unwrap_or_else(|_| Response::new(full("")));
        }
    };

    let mut builder = Response::builder().status(status);
    for (n, v) in extra_headers {
        builder = builder.header(n, v);
    }

    if let Some(n) = body_size {
        return builder
            .header(http::header::CONTENT_TYPE, "text/plain")
            .body(full(vec![b'a'; n]))
            .unwrap_or_else(|_| Response::new(full("")));
    }

    let mut calls = Vec::new();
    for url in &ctx.cfg.call {
        calls.push(call(ctx, url, req.headers()).await);
    }

    let host =
        header_str(req.headers(), "host").or_else(|| req.uri().authority().map(|a| a.to_string()));
    let answer = json!({
        "service": ctx.cfg.service,
        "version": ctx.cfg.version,
        "instance": ctx.instance,
        "method": req.method().as_str(),
        "path": req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        "host": host,
        "protocol": protocol(req.version()),
        "headers": headers_json(req.headers()),
        "body": String::from_utf8_lossy(&body),
        "calls": calls,
    });
    let mut text = serde_json::to_vec_pretty(&answer).unwrap_or_default();
    text.push(b'\n');
    builder
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(full(text))
        .unwrap_or_else(|_| Response::new(full("")))
}

/// GET `url` (directly or through `--proxy`), forwarding the tracing headers.
async fn call(ctx: &Ctx, url: &str, incoming: &HeaderMap) -> Value {
    let uri: Uri = match url.parse() {
        Ok(u) => u,
        Err(e) => return json!({"url": url, "error": format!("bad url: {e}")}),
    };
    let mut builder = Request::get(uri.clone());
    for name in FORWARDED_HEADERS {
        for v in incoming.get_all(*name) {
            builder = builder.header(*name, v);
        }
    }
    let req = match builder.body(Full::new(Bytes::new())) {
        Ok(r) => r,
        Err(e) => return json!({"url": url, "error": e.to_string()}),
    };
    let fut = async {
        match &ctx.proxied {
            Some(c) => c.request(req).await,
            None => ctx.direct.request(req).await,
        }
    };
    let resp = match tokio::time::timeout(Duration::from_secs(10), fut).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return json!({"url": url, "error": format!("{e:?}")}),
        Err(_) => return json!({"url": url, "error": "timeout"}),
    };
    let status = resp.status().as_u16();
    let service = header_str(resp.headers(), "x-demo-service");
    let body = match resp.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return json!({"url": url, "status": status, "error": e.to_string()}),
    };
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(mut m)) if (200..300).contains(&status) => {
            m.insert("url".into(), Value::String(url.to_owned()));
            m.insert("status".into(), json!(status));
            Value::Object(m)
        }
        _ => json!({
            "url": url,
            "status": status,
            "x-demo-service": service,
            "body": String::from_utf8_lossy(&body),
        }),
    }
}

/// HTTP/1.1 Upgrade: answer 101, then echo raw bytes.
fn upgrade(req: &mut Request<Incoming>, proto: HeaderValue) -> Response<RespBody> {
    let ws_key = req.headers().get("sec-websocket-key").cloned();
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let io = TokioIo::new(upgraded);
                let (mut r, mut w) = tokio::io::split(io);
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            }
            Err(e) => tracing::debug!("upgrade failed: {e}"),
        }
    });
    let mut builder = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::CONNECTION, "upgrade")
        .header(http::header::UPGRADE, proto);
    if let Some(key) = ws_key {
        builder = builder.header("sec-websocket-accept", websocket_accept(key.as_bytes()));
    }
    builder
        .body(full(Bytes::new()))
        .unwrap_or_else(|_| Response::new(full("")))
}

/// `Sec-WebSocket-Accept` = base64(sha1(key + GUID)); small self-contained SHA-1.
fn websocket_accept(key: &[u8]) -> String {
    let mut data = key.to_vec();
    data.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64(&sha1(&data))
}

fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut msg = data.to_vec();
    let bit_len = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bit_len.to_be_bytes());
    for chunk in msg.chunks(64) {
        let mut w = [0u32; 80];
        for (i, word) in chunk.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let (mut a, mut b, mut c, mut d, mut e) = (h[0], h[1], h[2], h[3], h[4]);
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6u32),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        h[0] = h[0].wrapping_add(a);
        h[1] = h[1].wrapping_add(b);
        h[2] = h[2].wrapping_add(c);
        h[3] = h[3].wrapping_add(d);
        h[4] = h[4].wrapping_add(e);
    }
    let mut out = [0u8; 20];
    for (i, v) in h.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&v.to_be_bytes());
    }
    out
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if c.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

/// A response body made of a fixed list of frames (data and trailers).
pub(crate) struct Frames(pub(crate) VecDeque<Frame<Bytes>>);

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }
    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

pub(crate) fn grpc_frame(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + msg.len());
    b.put_u8(0);
    b.put_u32(msg.len() as u32);
    b.put_slice(msg);
    b.freeze()
}

/// Splits a gRPC length-prefixed stream into messages (compression flag ignored).
pub(crate) fn grpc_messages(mut buf: &[u8]) -> Vec<Bytes> {
    let mut out = Vec::new();
    while buf.len() >= 5 {
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if buf.len() < 5 + len {
            break;
        }
        out.push(Bytes::copy_from_slice(&buf[5..5 + len]));
        buf = &buf[5 + len..];
    }
    out
}

async fn grpc(req: &mut Request<Incoming>) -> Response<RespBody> {
    let path = req.uri().path().to_owned();
    let forced =
        header_str(req.headers(), "x-demo-grpc-status").and_then(|s| s.trim().parse::<u32>().ok());
    let body = req
        .body_mut()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let base = || {
        Response::builder()
            .status(StatusCode::OK)
            .header(http::header::CONTENT_TYPE, "application/grpc")
    };
    let trailers_only = |code: u32, msg: &str| {
        base()
            .header("grpc-status", code.to_string())
            .header("grpc-message", msg)
            .body(full(Bytes::new()))
            .unwrap_or_else(|_| Response::new(full("")))
    };
    if let Some(code) = forced.filter(|c| *c != 0) {
        return trailers_only(code, "demo-app: forced status");
    }
    let repeat = match path.as_str() {
        "/trellis.demo.Echo/Echo" => 1,
        "/trellis.demo.Echo/ServerStream" => 3,
        _ => return trailers_only(12, &format!("unknown method {path}")),
    };
    let msg = grpc_messages(&body).into_iter().next().unwrap_or_default();
    let mut frames = VecDeque::new();
    for _ in 0..repeat {
        frames.push_back(Frame::data(grpc_frame(&msg)));
    }
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    frames.push_back(Frame::trailers(trailers));
    base()
        .body(BoxBody::new(Frames(frames)))
        .unwrap_or_else(|_| Response::new(full("")))
}

/// Connector that dials the HTTP proxy for every destination and marks the
/// connection as proxied, so the legacy client sends absolute-form requests.
#[derive(Clone)]
struct ProxyConnector {
    addr: String,
}

struct ProxiedConn(TokioIo<TcpStream>);

impl Connection for ProxiedConn {
    fn connected(&self) -> Connected {
        Connected::new().proxy(true)
    }
}

impl hyper::rt::Read for ProxiedConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for ProxiedConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl tower::Service<Uri> for ProxyConnector {
    type Response = ProxiedConn;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<ProxiedConn>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _dst: Uri) -> Self::Future {
        let addr = self.addr.clone();
        Box::pin(async move {
            let s = TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            Ok(ProxiedConn(TokioIo::new(s)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_accept_matches_rfc6455_example() {
        assert_eq!(
            websocket_accept(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn grpc_framing_roundtrip() {
        let f = grpc_frame(b"hello");
        assert_eq!(grpc_messages(&f), vec![Bytes::from_static(b"hello")]);
    }
}
