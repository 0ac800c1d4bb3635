//! `http_service`: the check as a plain HTTP request. The authorization
//! server gets the original method, `path_prefix` + path, the original
//! `:authority`, `Content-Length` and the headers the configuration allows
//! (always `Authorization`); `200` allows, `5xx` is an error, anything else
//! denies with the server's status, body and (allowed) headers.

use std::time::Duration;

use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use http::{HeaderName, HeaderValue, Method, Request, Uri, header};
use serde_json::Value;

use super::config::KeyMatcher;
use super::response::{Action, AuthzResponse, CheckStatus, HeaderMutation};
use super::upstream::{self, Answer, CallError};
use crate::body;
use crate::cluster::Version;
use crate::snapshot::SharedSnapshot;

/// Header in which an HTTP authorization server lists request headers to
/// remove (comma separated).
const HEADERS_TO_REMOVE: &str = "x-envoy-auth-headers-to-remove";

/// Which authorization response headers go into a denial.
#[derive(Debug)]
pub(super) enum ClientMatcher {
    /// `allowed_client_headers` unset: all of them (but `:authority`).
    AllButAuthority,
    List(KeyMatcher),
}

impl ClientMatcher {
    fn matches(&self, key: &str) -> bool {
        match self {
            Self::AllButAuthority => key != ":authority",
            Self::List(m) => m.matches(key),
        }
    }
}

#[derive(Debug)]
pub(super) struct HttpClient {
    pub cluster: String,
    pub timeout: Duration,
    pub path_prefix: String,
    pub path_override: String,
    pub headers_to_add: Vec<(HeaderName, HeaderValue)>,
    pub upstream: KeyMatcher,
    pub upstream_append: KeyMatcher,
    pub client: ClientMatcher,
    pub client_on_success: KeyMatcher,
    pub to_metadata: KeyMatcher,
}

impl HttpClient {
    /// The authorization request for a check request (whose headers were
    /// already selected).
    pub(super) fn request(
        &self,
        check: &CheckRequest,
        version: Version,
    ) -> Result<Request<body::Body>, String> {
        let http_req = check
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref())
            .ok_or("no HTTP attributes")?;
        let body_bytes: Vec<u8> = if http_req.raw_body.is_empty() {
            http_req.body.as_bytes().to_vec()
        } else {
            http_req.raw_body.clone()
        };
        let mut method = Method::GET;
        let mut path = String::from("/");
        let mut authority = String::new();
        let mut req = Request::new(body::empty());
        let headers = req.headers_mut();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body_bytes.len()));
        // Sorted so the request is the same whatever the map's order.
        let mut pairs: Vec<(&String, &String)> = http_req.headers.iter().collect();
        pairs.sort();
        for (k, v) in pairs {
            match k.as_str() {
                "content-length" | "host" => {}
                ":method" => {
                    method = Method::from_bytes(v.as_bytes()).map_err(|e| e.to_string())?
                }
                ":path" => {
                    path = if !self.path_override.is_empty() {
                        self.path_override.clone()
                    } else {
                        format!("{}{v}", self.path_prefix)
                    }
                }
                ":authority" => authority = v.clone(),
                k if k.starts_with(':') => {}
                _ => {
                    if let (Ok(n), Ok(v)) = (
                        HeaderName::from_bytes(k.as_bytes()),
                        HeaderValue::from_str(v),
                    ) {
                        headers.append(n, v);
                    }
                }
            }
        }
        // What Envoy's internal HTTP client adds to the requests it makes.
        headers.insert("x-envoy-internal", HeaderValue::from_static("true"));
        headers.insert(
            "x-envoy-expected-rq-timeout-ms",
            HeaderValue::from(self.timeout.as_millis() as u64),
        );
        for (n, v) in &self.headers_to_add {
            headers.insert(n.clone(), v.clone());
        }
        match version {
            Version::Http1 => {
                if let Ok(v) = HeaderValue::from_str(&authority) {
                    headers.insert(header::HOST, v);
                }
                *req.uri_mut() = path.parse::<Uri>().map_err(|e| e.to_string())?;
            }
            Version::Http2 => {
                *req.uri_mut() = format!("http://{authority}{path}")
                    .parse::<Uri>()
                    .map_err(|e| e.to_string())?;
                *req.version_mut() = http::Version::HTTP_2;
            }
        }
        *req.method_mut() = method;
        if !body_bytes.is_empty() {
            *req.body_mut() = body::full(body_bytes);
        }
        Ok(req)
    }

    /// Where the check goes and the request that carries it.
    pub(super) fn prepare(
        &self,
        snapshot: &SharedSnapshot,
        check: &CheckRequest,
    ) -> Result<(upstream::Target, Request<body::Body>), CallError> {
        let target = upstream::target(snapshot, &self.cluster, None)?;
        let req = self
            .request(check, target.version)
            .map_err(CallError::Request)?;
        Ok((target, req))
    }

    /// Envoy's reading of the authorization server's answer.
    pub(super) fn response(&self, mut answer: Answer) -> AuthzResponse {
        // Envoy's internal client answers through its router, which adds
        // this (a denial passes it on to the client).
        if !answer.headers.contains_key("x-envoy-upstream-service-time") {
            answer.headers.insert(
                "x-envoy-upstream-service-time",
                HeaderValue::from(answer.elapsed_ms),
            );
        }
        if answer.status.is_server_error() {
            return AuthzResponse::error();
        }
        let ok = answer.status == http::StatusCode::OK;
        let mut resp = AuthzResponse::new(if ok {
            CheckStatus::Ok
        } else {
            CheckStatus::Denied
        });
        let mut metadata = serde_json::Map::new();
        for (name, value) in &answer.headers {
            let key = name.as_str();
            if key == HEADERS_TO_REMOVE {
                if ok && let Ok(list) = value.to_str() {
                    resp.headers_to_remove.extend(
                        list.split(',')
                            .map(|s| s.trim().to_ascii_lowercase())
                            .filter(|s| !s.is_empty()),
                    );
                }
                continue;
            }
            let m = |action| HeaderMutation {
                name: name.clone(),
                value: value.clone(),
                action,
            };
            if ok {
                if self.upstream.matches(key) {
                    resp.request_headers.push(m(Action::Set));
                }
                if self.upstream_append.matches(key) {
                    resp.request_headers.push(m(Action::Add));
                }
                if self.client_on_success.matches(key) {
                    resp.response_headers.push(m(Action::Add));
                }
            } else if self.client.matches(key) {
                resp.local_headers.push((name.clone(), value.clone()));
            }
            if self.to_metadata.matches(key) {
                metadata.insert(
                    key.to_string(),
                    Value::String(String::from_utf8_lossy(value.as_bytes()).into_owned()),
                );
            }
        }
        if !ok {
            resp.status_code = Some(answer.status);
            resp.body = String::from_utf8_lossy(&answer.body).into_owned();
        }
        if !metadata.is_empty() {
            resp.dynamic_metadata = Some(metadata);
        }
        resp
    }
}
