//! What an authorization service answered, in one shape for both clients,
//! and how it applies: header mutations on the request (OK), on the
//! response (OK, later), or a local reply (denied, error).

use envoy_types::pb::envoy::config::core::v3::HeaderValueOption;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, header};
use serde_json::{Map, Value};

use crate::body::Body;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CheckStatus {
    Ok,
    Denied,
    Error,
}

/// How one header is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Replace every value (or add).
    Set,
    /// Another value of the same name (or add).
    Add,
    /// Join to the existing value with ","; nothing when there is none.
    AppendToExisting,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMutation {
    pub name: HeaderName,
    pub value: HeaderValue,
    pub action: Action,
}

#[derive(Debug, Clone)]
pub(super) struct AuthzResponse {
    pub status: CheckStatus,
    /// Denied or error reply status, when the service chose one.
    pub status_code: Option<StatusCode>,
    pub body: String,
    /// OK: mutations of the request before it goes upstream.
    pub request_headers: Vec<HeaderMutation>,
    pub headers_to_remove: Vec<String>,
    /// OK: query parameters to set (replace or add) and to remove.
    pub query_to_set: Vec<(String, String)>,
    pub query_to_remove: Vec<String>,
    /// OK: mutations of the response to the client.
    pub response_headers: Vec<HeaderMutation>,
    /// Denied or error: headers of the local reply (each name replaces
    /// what the reply had; repeated names are all kept).
    pub local_headers: Vec<(HeaderName, HeaderValue)>,
    pub dynamic_metadata: Option<Map<String, Value>>,
}

impl AuthzResponse {
    pub(super) fn new(status: CheckStatus) -> Self {
        Self {
            status,
            status_code: None,
            body: String::new(),
            request_headers: Vec::new(),
            headers_to_remove: Vec::new(),
            query_to_set: Vec::new(),
            query_to_remove: Vec::new(),
            response_headers: Vec::new(),
            local_headers: Vec::new(),
            dynamic_metadata: None,
        }
    }

    pub(super) fn error() -> Self {
        Self::new(CheckStatus::Error)
    }
}

/// Where a gRPC check response's header option applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Target {
    /// The request to the upstream (OK `headers`).
    Request,
    /// The response to the client (OK `response_headers_to_add`, denials).
    Response,
}

/// A `HeaderValueOption` from a gRPC check response, read as Envoy reads
/// it: only the (deprecated) `append` matters, `append_action` does not.
/// `append: true` joins the value to an existing request header (and adds
/// nothing when there is none) or adds another response header; anything
/// else replaces. Invalid names or values are dropped, as they could not
/// be sent anyway.
pub(super) fn mutation(o: &HeaderValueOption, target: Target) -> Option<HeaderMutation> {
    let h = o.header.as_ref()?;
    let name = HeaderName::from_bytes(h.key.as_bytes()).ok()?;
    let value = if h.raw_value.is_empty() {
        HeaderValue::from_str(&h.value).ok()?
    } else {
        HeaderValue::from_bytes(&h.raw_value).ok()?
    };
    #[allow(deprecated)]
    let append = o.append.is_some_and(|b| b.value);
    let action = match (append, target) {
        (false, _) => Action::Set,
        (true, Target::Request) => Action::AppendToExisting,
        (true, Target::Response) => Action::Add,
    };
    Some(HeaderMutation {
        name,
        value,
        action,
    })
}

pub(super) fn apply_mutations(headers: &mut HeaderMap, mutations: &[HeaderMutation]) {
    for m in mutations {
        match m.action {
            Action::Set => {
                headers.insert(m.name.clone(), m.value.clone());
            }
            Action::Add => {
                headers.append(m.name.clone(), m.value.clone());
            }
            Action::AppendToExisting => {
                let joined = headers.get(&m.name).and_then(|existing| {
                    let mut v = existing.as_bytes().to_vec();
                    v.push(b',');
                    v.extend_from_slice(m.value.as_bytes());
                    HeaderValue::from_bytes(&v).ok()
                });
                if let Some(v) = joined {
                    headers.insert(m.name.clone(), v);
                }
            }
        }
    }
}

/// Envoy refuses to remove pseudo-headers and Host: the request would be
/// malformed.
fn removable(name: &str) -> bool {
    !name.starts_with(':') && !name.eq_ignore_ascii_case("host")
}

pub(super) fn apply_to_request(resp: &AuthzResponse, parts: &mut http::request::Parts) {
    apply_mutations(&mut parts.headers, &resp.request_headers);
    for name in &resp.headers_to_remove {
        if removable(name)
            && let Ok(n) = HeaderName::from_bytes(name.as_bytes())
        {
            parts.headers.remove(n);
        }
    }
    if resp.query_to_set.is_empty() && resp.query_to_remove.is_empty() {
        return;
    }
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let new = with_query(path_and_query, &resp.query_to_set, &resp.query_to_remove);
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    match new.parse() {
        Ok(pq) => uri.path_and_query = Some(pq),
        Err(e) => tracing::debug!(error = %e, "ext_authz query mutation left an invalid path"),
    }
    parts.uri = http::Uri::from_parts(uri).unwrap_or_default();
}

/// The path with its query parameters set and removed, rebuilt as Envoy
/// does: one value per name (the first), names in sorted order.
pub(super) fn with_query(
    path_and_query: &str,
    set: &[(String, String)],
    remove: &[String],
) -> String {
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let mut params: std::collections::BTreeMap<String, String> = Default::default();
    for p in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        params.entry(k.to_string()).or_insert_with(|| v.to_string());
    }
    for (k, v) in set {
        params.insert(k.clone(), v.clone());
    }
    params.retain(|name, _| !remove.contains(name));
    if params.is_empty() {
        return path.to_string();
    }
    let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{path}?{}", query.join("&"))
}

/// Headers the HTTP layer computes itself; an authorization server's
/// values for them would contradict the reply's framing.
fn framing(name: &HeaderName) -> bool {
    name == header::CONTENT_LENGTH
        || name == header::TRANSFER_ENCODING
        || name == header::CONNECTION
        || name.as_str() == "keep-alive"
}

/// A denial or error reply: Envoy's local reply (text/plain body, or the
/// gRPC trailers-only form) with the service's headers replacing the
/// reply's own.
pub(super) fn local_reply(
    status: StatusCode,
    body: &str,
    headers: &[(HeaderName, HeaderValue)],
    grpc: bool,
) -> Response<Body> {
    let mut resp = crate::http::local_reply::reply(status, body, grpc);
    let h = resp.headers_mut();
    for (name, _) in headers {
        h.remove(name);
    }
    for (name, value) in headers {
        if !framing(name) {
            h.append(name.clone(), value.clone());
        }
    }
    resp
}
