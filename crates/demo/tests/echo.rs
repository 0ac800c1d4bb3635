//! demo-app over real sockets on 127.0.0.1.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use bytes::Bytes;
use demo::DemoConfig;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn start(service: &str, version: &str, call: Vec<String>, proxy: Option<String>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let cfg = DemoConfig {
        service: service.into(),
        version: version.into(),
        call,
        proxy,
        ..DemoConfig::default()
    };
    tokio::spawn(demo::serve_on(listener, Arc::new(cfg)));
    addr
}

async fn raw(addr: &str, request: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

fn json_body(resp: &str) -> serde_json::Value {
    let body = resp.split_once("\r\n\r\n").unwrap().1;
    serde_json::from_str(body).unwrap()
}

#[tokio::test]
async fn http1_echo_and_steering_headers() {
    let addr = start("ratings", "v2", vec![], None).await;
    let resp = raw(
        &addr,
        "POST /p?q=1 HTTP/1.1\r\nHost: ratings\r\nX-Demo-Status: 418\r\nx-demo-response-header: x-a=1\r\nX-Multi: a\r\nX-Multi: b\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 418"), "{resp}");
    let lower = resp.to_ascii_lowercase();
    assert!(
        lower.contains("\r\nx-demo-service: ratings/v2\r\n"),
        "{resp}"
    );
    assert!(lower.contains("\r\nx-a: 1\r\n"), "{resp}");
    let j = json_body(&resp);
    assert_eq!(j["service"], "ratings");
    assert_eq!(j["path"], "/p?q=1");
    assert_eq!(j["method"], "POST");
    assert_eq!(j["protocol"], "HTTP/1.1");
    assert_eq!(j["body"], "abc");
    assert_eq!(j["headers"]["x-multi"], "a,b");
    assert_eq!(j["instance"], addr);

    let resp = raw(
        &addr,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        resp.starts_with("HTTP/1.1 200") && resp.ends_with("ok"),
        "{resp}"
    );
}

#[tokio::test]
async fn h2c_and_grpc_trailers() {
    let addr = start("echo", "v1", vec![], None).await;
    let io = TokioIo::new(TcpStream::connect(&addr).await.unwrap());
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    tokio::spawn(conn);

    let req = http::Request::get(format!("http://{addr}/h2"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let j: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(j["protocol"], "HTTP/2");

    let frame = Bytes::from_static(b"\x00\x00\x00\x00\x05hello");
    let req = http::Request::post(format!("http://{addr}/trellis.demo.Echo/ServerStream"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(frame.clone()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.headers()["x-demo-service"], "echo/v1");
    let collected = resp.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(
        collected.to_bytes(),
        [frame.clone(), frame.clone(), frame.clone()].concat()
    );

    let req = http::Request::post(format!("http://{addr}/trellis.demo.Echo/Echo"))
        .header("content-type", "application/grpc")
        .header("x-demo-grpc-status", "14")
        .body(Full::new(frame))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.headers()["grpc-status"], "14");
}

#[tokio::test]
async fn upgrade_echoes_raw_bytes() {
    let addr = start("ws", "v1", vec![], None).await;
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0);
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    s.write_all(b"ping-123").await.unwrap();
    let mut got = [0u8; 8];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"ping-123");
}

#[tokio::test]
async fn tcp_line_echo() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = DemoConfig {
        service: "db".into(),
        version: "v3".into(),
        ..DemoConfig::default()
    };
    tokio::spawn(demo::serve_tcp_on(listener, Arc::new(cfg)));
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"one\ntwo\n").await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert_eq!(out, "db/v3: one\ndb/v3: two\n");
}

#[tokio::test]
async fn downstream_calls_direct_and_via_proxy() {
    let leaf = start("details", "v1", vec![], None).await;
    let front = start(
        "productpage",
        "v1",
        vec![format!("http://{leaf}/details/0")],
        None,
    )
    .await;
    let resp = raw(&front, "GET / HTTP/1.1\r\nHost: pp\r\nx-request-id: rid-1\r\nend-user: jason\r\nx-not-forwarded: 1\r\nConnection: close\r\n\r\n").await;
    let j = json_body(&resp);
    let c = &j["calls"][0];
    assert_eq!(c["service"], "details");
    assert_eq!(c["path"], "/details/0");
    assert_eq!(c["headers"]["x-request-id"], "rid-1");
    assert_eq!(c["headers"]["end-user"], "jason");
    assert!(c["headers"].get("x-not-forwarded").is_none());

    // "--proxy": every call is sent in absolute form to the proxy address, whatever the URL's host.
    let via = start(
        "reviews",
        "v1",
        vec!["http://reviews.invalid:9080/reviews/1".into()],
        Some(format!("http://{leaf}")),
    )
    .await;
    let resp = raw(
        &via,
        "GET / HTTP/1.1\r\nHost: r\r\nConnection: close\r\n\r\n",
    )
    .await;
    let j = json_body(&resp);
    let c = &j["calls"][0];
    assert_eq!(c["service"], "details", "{j}");
    assert_eq!(c["host"], "reviews.invalid:9080");
    assert_eq!(c["path"], "/reviews/1");
}
