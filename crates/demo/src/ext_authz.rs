//! An external authorizer with the behaviour of Istio's sample `ext-authz`
//! server: `envoy.service.auth.v3.Authorization/Check` over gRPC and the
//! plain HTTP check, each on its own port.
//!
//! A request is allowed when it carries `x-ext-authz: allow`; a request
//! without that header is allowed only when `--ext-authz-allow-service-account`
//! is set and the source principal names that service account. Otherwise it
//! is denied with 403 and a body saying why. Either way the answer sets
//! `x-ext-authz-check-result: allowed|denied` and
//! `x-ext-authz-check-received` (what the authorizer received, as compact
//! JSON without port numbers so that answers can be compared) and
//! `x-ext-authz-additional-header-override`.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue as HeaderValueProto, HeaderValueOption, QueryParameter, address,
    header_value_option,
};
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
    attribute_context, check_response,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::protobuf::{Struct, Value as PbValue, value::Kind};
use envoy_types::pb::google::rpc::Status;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::{Frames, RespBody, full, grpc_frame, grpc_messages};

pub const CHECK_HEADER: &str = "x-ext-authz";
pub const ALLOWED_VALUE: &str = "allow";
pub const RESULT_HEADER: &str = "x-ext-authz-check-result";
pub const RECEIVED_HEADER: &str = "x-ext-authz-check-received";
pub const OVERRIDE_HEADER: &str = "x-ext-authz-additional-header-override";
const OVERRIDE_GRPC_VALUE: &str = "grpc-additional-header-override-value";
const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";
/// Envoy refuses headers of 60 KiB and more; longer echoes are replaced.
const MAX_ECHO: usize = 60_000;
/// gRPC PERMISSION_DENIED.
const PERMISSION_DENIED: i32 = 7;

pub fn deny_body() -> String {
    format!(
        "denied by ext_authz for not found header `{CHECK_HEADER}: {ALLOWED_VALUE}` in the request"
    )
}

/// What decides a check.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Requests without the check header are allowed when the source
    /// principal ends with `/sa/<this>`.
    pub allow_service_account: Option<String>,
    /// Test hook: an allowed gRPC check whose request carries
    /// `x-ext-authz-mutate: <JSON>` answers with the mutations it describes
    /// (see [`mutations`]).
    pub test_mutations: bool,
}

impl Policy {
    fn allows(&self, check_header: Option<&str>, principal: &str) -> bool {
        match check_header {
            Some(v) => v == ALLOWED_VALUE,
            None => self
                .allow_service_account
                .as_deref()
                .is_some_and(|sa| !sa.is_empty() && principal.ends_with(&format!("/sa/{sa}"))),
        }
    }
}

/// Header values may only carry visible ASCII: anything else becomes `?`.
fn header_text(s: &str) -> HeaderValue {
    let s = if s.len() > MAX_ECHO { "<too-long>" } else { s };
    let clean: String = s
        .chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .collect();
    HeaderValue::from_str(&clean).unwrap_or_else(|_| HeaderValue::from_static("?"))
}

fn sorted_headers(h: &HeaderMap) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for name in h.keys() {
        let joined = h
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(",");
        out.insert(name.as_str().to_owned(), joined);
    }
    out
}

async fn serve<F, Fut>(listener: TcpListener, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<RespBody>> + Send + 'static,
{
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("ext-authz accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler(req).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder.serve_connection(TokioIo::new(stream), svc).await {
                tracing::debug!("ext-authz connection: {e}");
            }
        });
    }
}

/// Serves the HTTP check on `listener` forever.
pub async fn serve_http(listener: TcpListener, policy: Arc<Policy>) {
    serve(listener, move |req| {
        let policy = Arc::clone(&policy);
        async move { http_check(req, &policy).await }
    })
    .await;
}

/// Serves the gRPC check on `listener` forever (HTTP/2 prior knowledge).
pub async fn serve_grpc(listener: TcpListener, policy: Arc<Policy>) {
    serve(listener, move |req| {
        let policy = Arc::clone(&policy);
        async move { grpc_check(req, &policy).await }
    })
    .await;
}

/// The HTTP check: any method and path; the request's headers decide.
pub async fn http_check(req: Request<Incoming>, policy: &Policy) -> Response<RespBody> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let host = parts
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let received = json!({
        "method": parts.method.as_str(),
        "host": host,
        "path": parts.uri.path_and_query().map_or("/", |p| p.as_str()),
        "headers": sorted_headers(&parts.headers),
        "body": String::from_utf8_lossy(&body),
    })
    .to_string();
    let check = parts
        .headers
        .get(CHECK_HEADER)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let allowed = policy.allows(check.as_deref(), "");
    tracing::info!(allowed, %received, "ext-authz HTTP check");
    let override_value = parts
        .headers
        .get(OVERRIDE_HEADER)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static(""));
    let mut resp = if allowed {
        Response::new(full(Bytes::new()))
    } else {
        let mut r = Response::new(full(deny_body()));
        *r.status_mut() = StatusCode::FORBIDDEN;
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    };
    let h = resp.headers_mut();
    h.insert(
        RESULT_HEADER,
        HeaderValue::from_static(if allowed { "allowed" } else { "denied" }),
    );
    h.insert(OVERRIDE_HEADER, override_value);
    h.insert(RECEIVED_HEADER, header_text(&received));
    resp
}

fn address_json(p: Option<&attribute_context::Peer>) -> Value {
    let Some(p) = p else {
        return Value::Null;
    };
    // Ports are left out: they differ from one connection to the next.
    let ip = match p.address.as_ref().and_then(|a| a.address.as_ref()) {
        Some(address::Address::SocketAddress(s)) => s.address.clone(),
        _ => String::new(),
    };
    json!({"address": ip, "principal": p.principal, "service": p.service})
}

fn struct_json(s: &Struct) -> Value {
    Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value_json(v)))
            .collect(),
    )
}

fn value_json(v: &PbValue) -> Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::NumberValue(n)) => json!(n),
        Some(Kind::StringValue(s)) => json!(s),
        Some(Kind::BoolValue(b)) => json!(b),
        Some(Kind::StructValue(s)) => struct_json(s),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(value_json).collect()),
    }
}

/// What a gRPC check received, as compact JSON with sorted keys.
pub fn received_json(attrs: &AttributeContext) -> String {
    let http = attrs.request.as_ref().and_then(|r| r.http.as_ref());
    let http = http.map_or(Value::Null, |h| {
        json!({
            "method": h.method,
            "host": h.host,
            "path": h.path,
            "scheme": h.scheme,
            "protocol": h.protocol,
            "headers": h.headers.iter().collect::<BTreeMap<_, _>>(),
            "body": h.body,
            "raw_body": String::from_utf8_lossy(&h.raw_body),
        })
    });
    let metadata: BTreeMap<&String, Value> = attrs
        .metadata_context
        .as_ref()
        .map(|m| {
            m.filter_metadata
                .iter()
                .map(|(k, v)| (k, struct_json(v)))
                .collect()
        })
        .unwrap_or_default();
    json!({
        "source": address_json(attrs.source.as_ref()),
        "destination": address_json(attrs.destination.as_ref()),
        "http": http,
        "context_extensions": attrs.context_extensions.iter().collect::<BTreeMap<_, _>>(),
        "metadata_context": metadata,
    })
    .to_string()
}

/// The test hook's header.
pub const MUTATE_HEADER: &str = "x-ext-authz-mutate";

/// A `HeaderValueOption` from `{"key", "value", "append"?: bool, "action"?: "ADD_IF_ABSENT"...}`.
fn option_of(v: &Value) -> Option<HeaderValueOption> {
    let mut o = header(v.get("key")?.as_str()?, v.get("value")?.as_str()?);
    #[allow(deprecated)]
    if let Some(b) = v.get("append").and_then(Value::as_bool) {
        o.append = Some(envoy_types::pb::google::protobuf::BoolValue { value: b });
    }
    if let Some(a) = v.get("action").and_then(Value::as_str) {
        o.append_action = header_value_option::HeaderAppendAction::from_str_name(a)? as i32;
    }
    Some(o)
}

/// Fills an OK answer from the test hook's JSON: `headers` and
/// `response_headers_to_add` (lists of header options), `headers_to_remove`,
/// `query_set` (object) and `query_remove` (list).
pub fn mutations(ok: &mut OkHttpResponse, spec: &str) {
    let Ok(v) = serde_json::from_str::<Value>(spec) else {
        return;
    };
    let list = |k: &str| {
        v.get(k)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    ok.headers
        .extend(list("headers").iter().filter_map(option_of));
    ok.response_headers_to_add
        .extend(list("response_headers_to_add").iter().filter_map(option_of));
    ok.headers_to_remove.extend(
        list("headers_to_remove")
            .iter()
            .filter_map(|s| s.as_str().map(str::to_owned)),
    );
    if let Some(q) = v.get("query_set").and_then(Value::as_object) {
        ok.query_parameters_to_set
            .extend(q.iter().filter_map(|(k, v)| {
                Some(QueryParameter {
                    key: k.clone(),
                    value: v.as_str()?.to_owned(),
                })
            }));
    }
    ok.query_parameters_to_remove.extend(
        list("query_remove")
            .iter()
            .filter_map(|s| s.as_str().map(str::to_owned)),
    );
}

fn header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValueProto {
            key: key.to_owned(),
            value: value.to_owned(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The decision for one `CheckRequest`.
pub fn decide(req: &CheckRequest, policy: &Policy) -> CheckResponse {
    let attrs = req.attributes.clone().unwrap_or_default();
    let check = attrs
        .request
        .as_ref()
        .and_then(|r| r.http.as_ref())
        .and_then(|h| h.headers.get(CHECK_HEADER))
        .map(String::as_str);
    let principal = attrs.source.as_ref().map_or("", |s| s.principal.as_str());
    let allowed = policy.allows(check, principal);
    let received = received_json(&attrs);
    tracing::info!(allowed, %received, "ext-authz gRPC check");
    let received = header_text(&received)
        .to_str()
        .unwrap_or_default()
        .to_owned();
    let result = if allowed { "allowed" } else { "denied" };
    let headers = vec![
        header(RESULT_HEADER, result),
        header(RECEIVED_HEADER, &received),
        header(OVERRIDE_HEADER, OVERRIDE_GRPC_VALUE),
    ];
    if allowed {
        let mut ok = OkHttpResponse {
            headers,
            ..Default::default()
        };
        if policy.test_mutations
            && let Some(spec) = attrs
                .request
                .as_ref()
                .and_then(|r| r.http.as_ref())
                .and_then(|h| h.headers.get(MUTATE_HEADER))
        {
            mutations(&mut ok, spec);
        }
        CheckResponse {
            status: Some(Status::default()),
            http_response: Some(check_response::HttpResponse::OkResponse(ok)),
            ..Default::default()
        }
    } else {
        CheckResponse {
            status: Some(Status {
                code: PERMISSION_DENIED,
                ..Default::default()
            }),
            http_response: Some(check_response::HttpResponse::DeniedResponse(
                DeniedHttpResponse {
                    status: Some(HttpStatus { code: 403 }),
                    headers,
                    body: deny_body(),
                },
            )),
            ..Default::default()
        }
    }
}

/// The gRPC check: one unary `Check` call per request.
pub async fn grpc_check(req: Request<Incoming>, policy: &Policy) -> Response<RespBody> {
    let trailers_only = |code: u32, msg: &str| {
        let mut r = Response::new(full(Bytes::new()));
        let h = r.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", HeaderValue::from(code));
        if let Ok(v) = HeaderValue::from_str(msg) {
            h.insert("grpc-message", v);
        }
        r
    };
    if req.method() != Method::POST || req.uri().path() != CHECK_PATH {
        return trailers_only(12, "unknown method");
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let Some(msg) = grpc_messages(&body).into_iter().next() else {
        return trailers_only(13, "no request message");
    };
    let check = match CheckRequest::decode(msg) {
        Ok(c) => c,
        Err(e) => return trailers_only(13, &format!("invalid CheckRequest: {e}")),
    };
    let answer = decide(&check, policy).encode_to_vec();
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let frames = VecDeque::from([Frame::data(grpc_frame(&answer)), Frame::trailers(trailers)]);
    let mut resp = Response::new(BoxBody::new(Frames(frames)));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    resp
}

/// Binds and serves the ports `cfg` asks for.
pub async fn bind(
    listen: std::net::IpAddr,
    http_port: Option<u16>,
    grpc_port: Option<u16>,
    policy: Policy,
    tasks: &mut tokio::task::JoinSet<()>,
) -> anyhow::Result<()> {
    let policy = Arc::new(policy);
    if let Some(port) = http_port {
        let addr = SocketAddr::new(listen, port);
        let l = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("bind ext-authz http {addr}: {e}"))?;
        eprintln!("demo-app ext-authz listening http={}", l.local_addr()?);
        tasks.spawn(serve_http(l, Arc::clone(&policy)));
    }
    if let Some(port) = grpc_port {
        let addr = SocketAddr::new(listen, port);
        let l = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("bind ext-authz grpc {addr}: {e}"))?;
        eprintln!("demo-app ext-authz listening grpc={}", l.local_addr()?);
        tasks.spawn(serve_grpc(l, policy));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};

    fn check_with(headers: &[(&str, &str)]) -> CheckRequest {
        CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(Request {
                    http: Some(HttpRequest {
                        headers: headers
                            .iter()
                            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                            .collect(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }
    }

    fn result_of(resp: &CheckResponse) -> Option<String> {
        let headers = match resp.http_response.as_ref()? {
            check_response::HttpResponse::OkResponse(o) => &o.headers,
            check_response::HttpResponse::DeniedResponse(d) => &d.headers,
            check_response::HttpResponse::ErrorResponse(e) => &e.headers,
        };
        headers
            .iter()
            .filter_map(|h| h.header.as_ref())
            .find(|h| h.key == RESULT_HEADER)
            .map(|h| h.value.clone())
    }

    #[test]
    fn allows_only_with_the_check_header() {
        let p = Policy::default();
        let ok = decide(&check_with(&[(CHECK_HEADER, "allow")]), &p);
        assert_eq!(ok.status.as_ref().map(|s| s.code), Some(0));
        assert_eq!(result_of(&ok).as_deref(), Some("allowed"));
        for headers in [&[][..], &[(CHECK_HEADER, "deny")][..]] {
            let denied = decide(&check_with(headers), &p);
            assert_eq!(
                denied.status.as_ref().map(|s| s.code),
                Some(PERMISSION_DENIED)
            );
            assert_eq!(result_of(&denied).as_deref(), Some("denied"));
            match denied.http_response {
                Some(check_response::HttpResponse::DeniedResponse(d)) => {
                    assert_eq!(d.status.map(|s| s.code), Some(403));
                    assert!(d.body.contains(CHECK_HEADER));
                }
                other => panic!("not a denial: {other:?}"),
            }
        }
    }

    #[test]
    fn service_account_rule_applies_only_without_the_header() {
        let p = Policy {
            allow_service_account: Some("a".into()),
            ..Policy::default()
        };
        assert!(p.allows(None, "spiffe://cluster.local/ns/default/sa/a"));
        assert!(!p.allows(None, "spiffe://cluster.local/ns/default/sa/b"));
        assert!(!p.allows(Some("no"), "spiffe://cluster.local/ns/default/sa/a"));
        assert!(!Policy::default().allows(None, "spiffe://x/ns/default/sa/a"));
    }

    #[test]
    fn test_hook_mutations() {
        let mut ok = OkHttpResponse::default();
        mutations(
            &mut ok,
            r#"{"headers":[{"key":"a","value":"1","append":true},{"key":"b","value":"2","action":"ADD_IF_ABSENT"}],
                "response_headers_to_add":[{"key":"r","value":"3"}],"headers_to_remove":["x"],
                "query_set":{"q":"1"},"query_remove":["d"]}"#,
        );
        assert_eq!(ok.headers.len(), 2);
        assert_eq!(ok.headers[1].append_action, 1);
        assert_eq!(ok.response_headers_to_add.len(), 1);
        assert_eq!(ok.headers_to_remove, ["x"]);
        assert_eq!(ok.query_parameters_to_set.len(), 1);
        assert_eq!(ok.query_parameters_to_remove, ["d"]);
    }

    #[test]
    fn echo_is_header_safe() {
        assert_eq!(header_text("a\u{e9}b\n").to_str().ok(), Some("a?b?"));
        assert_eq!(
            header_text(&"x".repeat(MAX_ECHO + 1)).to_str().ok(),
            Some("<too-long>")
        );
    }
}
