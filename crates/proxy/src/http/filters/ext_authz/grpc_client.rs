//! `grpc_service`: the check as a unary gRPC call,
//! `envoy.service.auth.v3.Authorization/Check`, over HTTP/2 to the cluster.
//! A failed call (transport, timeout, non-OK gRPC status) is a check error;
//! a `CheckResponse` with status OK allows, any other status denies.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse, check_response};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, header};
use prost::Message;

use super::check::from_struct;
use super::response::{AuthzResponse, CheckStatus, Target, mutation};
use super::upstream::{self, Answer, CallError};
use crate::body;
use crate::cluster::Version;
use crate::snapshot::SharedSnapshot;

const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

#[derive(Debug)]
pub(super) struct GrpcClient {
    pub cluster: String,
    /// `:authority` of the calls (`envoy_grpc.authority`, else the cluster name).
    pub authority: String,
    pub timeout: Option<Duration>,
    pub metadata: Vec<(HeaderName, HeaderValue)>,
}

/// A gRPC length-prefixed message (uncompressed).
pub(super) fn frame(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + msg.len());
    b.put_u8(0);
    b.put_u32(msg.len() as u32);
    b.put_slice(msg);
    b.freeze()
}

/// The one message of a unary response body.
pub(super) fn unframe(body: &[u8]) -> Result<&[u8], String> {
    if body.len() < 5 {
        return Err("truncated gRPC message".into());
    }
    if body[0] != 0 {
        return Err("compressed gRPC messages are not supported".into());
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    body.get(5..5 + len)
        .ok_or_else(|| "truncated gRPC message".to_string())
}

/// gRPC's `grpc-timeout`: at most 8 digits and a unit.
fn grpc_timeout(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 100_000_000 {
        format!("{ms}m")
    } else {
        format!("{}S", d.as_secs().min(99_999_999))
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<i32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

impl GrpcClient {
    fn request(&self, check: &CheckRequest) -> Result<Request<body::Body>, String> {
        let uri = format!("http://{}{CHECK_PATH}", self.authority);
        let mut req = Request::new(body::full(frame(&check.encode_to_vec())));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = uri.parse().map_err(|e| format!("{e}"))?;
        *req.version_mut() = http::Version::HTTP_2;
        let h = req.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        if let Some(t) = self.timeout
            && let Ok(v) = HeaderValue::from_str(&grpc_timeout(t))
        {
            h.insert("grpc-timeout", v);
        }
        for (k, v) in &self.metadata {
            h.append(k.clone(), v.clone());
        }
        Ok(req)
    }

    /// Where the check goes and the call that carries it.
    pub(super) fn prepare(
        &self,
        snapshot: &SharedSnapshot,
        check: &CheckRequest,
    ) -> Result<(upstream::Target, Request<body::Body>), CallError> {
        let target = upstream::target(snapshot, &self.cluster, Some(Version::Http2))?;
        let req = self.request(check).map_err(CallError::Request)?;
        Ok((target, req))
    }
}

/// The authorization decision a call's answer carries.
pub(super) fn read(answer: &Answer) -> Result<AuthzResponse, CallError> {
    decode(answer).map(response)
}

/// The `CheckResponse` of a successful call.
pub(super) fn decode(answer: &Answer) -> Result<CheckResponse, CallError> {
    if answer.status != StatusCode::OK {
        return Err(CallError::Protocol(format!(
            "HTTP status {}",
            answer.status
        )));
    }
    // Trailers-only answers carry the status in the headers.
    let status = answer
        .trailers
        .as_ref()
        .and_then(grpc_status)
        .or_else(|| grpc_status(&answer.headers))
        .ok_or_else(|| CallError::Protocol("no grpc-status".into()))?;
    if status != 0 {
        return Err(CallError::Protocol(format!("grpc-status {status}")));
    }
    let msg = unframe(&answer.body).map_err(CallError::Protocol)?;
    CheckResponse::decode(msg).map_err(|e| CallError::Protocol(e.to_string()))
}

/// Envoy's reading of a `CheckResponse`.
pub(super) fn response(msg: CheckResponse) -> AuthzResponse {
    let code = msg.status.as_ref().map_or(0, |s| s.code);
    let http_status = |s: &Option<envoy_types::pb::envoy::r#type::v3::HttpStatus>| {
        s.as_ref()
            .and_then(|s| u16::try_from(s.code).ok())
            .filter(|c| *c > 0)
            .and_then(|c| StatusCode::from_u16(c).ok())
    };
    let mut resp;
    match (code, msg.http_response) {
        (0, ok) => {
            resp = AuthzResponse::new(CheckStatus::Ok);
            if let Some(check_response::HttpResponse::OkResponse(ok)) = ok {
                resp.request_headers = ok
                    .headers
                    .iter()
                    .filter_map(|o| mutation(o, Target::Request))
                    .collect();
                resp.response_headers = ok
                    .response_headers_to_add
                    .iter()
                    .filter_map(|o| mutation(o, Target::Response))
                    .collect();
                resp.headers_to_remove = ok.headers_to_remove.clone();
                resp.query_to_set = ok
                    .query_parameters_to_set
                    .iter()
                    .map(|q| (q.key.clone(), q.value.clone()))
                    .collect();
                resp.query_to_remove = ok.query_parameters_to_remove.clone();
                #[allow(deprecated)]
                if let Some(md) = &ok.dynamic_metadata {
                    resp.dynamic_metadata = Some(from_struct(md));
                }
            }
        }
        (_, Some(check_response::HttpResponse::ErrorResponse(e))) => {
            resp = AuthzResponse::new(CheckStatus::Error);
            resp.status_code = http_status(&e.status);
            resp.body = e.body;
            resp.local_headers = local_headers(&e.headers);
        }
        (_, denied) => {
            resp = AuthzResponse::new(CheckStatus::Denied);
            if let Some(check_response::HttpResponse::DeniedResponse(d)) = denied {
                resp.status_code = http_status(&d.status);
                resp.body = d.body;
                resp.local_headers = local_headers(&d.headers);
            }
        }
    }
    if resp.dynamic_metadata.is_none()
        && let Some(md) = &msg.dynamic_metadata
    {
        resp.dynamic_metadata = Some(from_struct(md));
    }
    resp
}

fn local_headers(
    opts: &[envoy_types::pb::envoy::config::core::v3::HeaderValueOption],
) -> Vec<(HeaderName, HeaderValue)> {
    opts.iter()
        .filter_map(|o| mutation(o, Target::Response))
        .map(|m| (m.name, m.value))
        .collect()
}
