//! Responses the proxy generates itself (no route, no upstream, faults...),
//! in Envoy's shape: `text/plain` bodies, and for gRPC requests a
//! trailers-only response carrying `grpc-status` and `grpc-message`.

use http::{HeaderValue, Response, StatusCode, header};

use crate::body::{self, Body};

pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// Envoy's mapping from an HTTP status to a gRPC status for local replies.
pub fn grpc_status_for(status: StatusCode) -> u32 {
    match status.as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502..=504 => 14,
        _ => 2,
    }
}

pub fn reply(status: StatusCode, text: &str, grpc: bool) -> Response<Body> {
    if grpc {
        return grpc_reply(grpc_status_for(status), text);
    }
    let mut resp = Response::new(if text.is_empty() {
        body::empty()
    } else {
        body::full(text.to_owned())
    });
    *resp.status_mut() = status;
    if !text.is_empty() {
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    resp
}

/// A trailers-only gRPC answer: status 200 with the gRPC status in headers.
pub fn grpc_reply(grpc_status: u32, message: &str) -> Response<Body> {
    let mut resp = Response::new(body::empty());
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from(grpc_status));
    if !message.is_empty()
        && let Ok(v) = HeaderValue::from_str(&percent_encode(message))
    {
        h.insert("grpc-message", v);
    }
    resp
}

/// gRPC's percent-encoding for `grpc-message`.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
