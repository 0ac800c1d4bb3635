//! Building the `CheckRequest`: who is calling (source and destination
//! peers), the HTTP request's attributes and the headers the configuration
//! lets through, route context extensions, metadata context, and the body.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::SystemTime;

use envoy_types::pb::envoy::config::core::v3::{
    Address, Metadata, SocketAddress, address, socket_address,
};
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, attribute_context,
};
use envoy_types::pb::google::protobuf::{ListValue, Struct, Timestamp, Value, value::Kind};

use super::Request;
use super::body::Buffered;
use super::config::{Config, PerRoute};

/// Tells the authorization service whether the body it got is partial.
pub(super) const PARTIAL_BODY_HEADER: &str = "x-envoy-auth-partial-body";
/// Envoy's header naming the calling service cluster (`Peer.service`).
const DOWNSTREAM_SERVICE_CLUSTER: &str = "x-envoy-downstream-service-cluster";

pub(super) fn socket_address(a: SocketAddr) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: a.ip().to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                a.port(),
            ))),
            ..Default::default()
        })),
    }
}

/// `:scheme` as Envoy's connection manager sets it: the request's own
/// (HTTP/2, or an HTTP/1 absolute URL), else the sanitized
/// x-forwarded-proto, else the connection's.
pub(super) fn scheme<'a>(req: &'a Request<'_>) -> &'a str {
    if let Some(s) = req.parts.uri.scheme_str() {
        return s;
    }
    match req
        .parts
        .headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
    {
        Some(p) if p.eq_ignore_ascii_case("http") => "http",
        Some(p) if p.eq_ignore_ascii_case("https") => "https",
        _ => req.scheme,
    }
}

/// The request's headers as Envoy's header map holds them when the filter
/// runs: the pseudo-headers, then the rest; a repeated header's values are
/// joined with ",". HTTP/1 `Host` is `:authority` there.
pub(super) fn all_headers(req: &Request<'_>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = vec![
        (":authority".into(), req.authority.to_string()),
        (":path".into(), req.path.to_string()),
        (":method".into(), req.parts.method.as_str().to_string()),
        (":scheme".into(), scheme(req).to_string()),
    ];
    for name in req.parts.headers.keys() {
        // Envoy's codecs keep neither Host (it is `:authority`) nor the
        // connection-level headers of HTTP/1.
        if name == http::header::HOST
            || name == http::header::CONNECTION
            || name.as_str() == "keep-alive"
            || name.as_str() == "proxy-connection"
        {
            continue;
        }
        let joined = req
            .parts
            .headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(",");
        out.push((name.as_str().to_string(), joined));
    }
    out
}

/// The headers the check request carries under this configuration.
pub(super) fn selected_headers(config: &Config, req: &Request<'_>) -> HashMap<String, String> {
    all_headers(req)
        .into_iter()
        .filter(|(k, _)| {
            config.allowed_headers.as_ref().is_none_or(|m| m.matches(k))
                && !config.disallowed_headers.matches(k)
        })
        .collect()
}

pub(super) fn build(
    config: &Config,
    route: &PerRoute,
    req: &Request<'_>,
    body: Option<&Buffered>,
) -> CheckRequest {
    let mut headers = selected_headers(config, req);
    let principal = |p: &crate::listener::peer::PeerIdentity| {
        // Envoy's choice for ext_authz: the first URI SAN, else the subject.
        p.uri_sans
            .first()
            .cloned()
            .unwrap_or_else(|| p.subject.clone())
    };
    let source = attribute_context::Peer {
        address: Some(socket_address(req.remote)),
        principal: req.peer.map(principal).unwrap_or_default(),
        service: req
            .parts
            .headers
            .get(DOWNSTREAM_SERVICE_CLUSTER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
        ..Default::default()
    };
    let destination = attribute_context::Peer {
        address: Some(socket_address(req.local)),
        ..Default::default()
    };
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let mut http_req = attribute_context::HttpRequest {
        id: rand::random::<u64>().to_string(),
        method: req.parts.method.as_str().to_string(),
        path: req.path.to_string(),
        host: req.authority.to_string(),
        scheme: scheme(req).to_string(),
        protocol: crate::http::router::protocol_name(req.parts.version).to_string(),
        size: req
            .parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<i64>().ok())
            .unwrap_or(-1),
        ..Default::default()
    };
    if let Some(b) = body {
        headers.insert(PARTIAL_BODY_HEADER.into(), b.partial.to_string());
        if b.pack_as_bytes {
            http_req.raw_body = b.data.to_vec();
        } else {
            http_req.body = String::from_utf8_lossy(&b.data).into_owned();
        }
    }
    http_req.headers = headers;
    let metadata_context = (!config.metadata_context_namespaces.is_empty()).then(|| {
        let mut md = Metadata::default();
        for ns in &config.metadata_context_namespaces {
            if let Some(fields) = req.metadata.namespace(ns) {
                md.filter_metadata.insert(ns.clone(), to_struct(fields));
            }
        }
        md
    });
    let tls_session =
        (config.include_tls_session && req.requested_server_name.is_some()).then(|| {
            attribute_context::TlsSession {
                sni: req.requested_server_name.unwrap_or_default().to_string(),
            }
        });
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(source),
            destination: Some(destination),
            request: Some(attribute_context::Request {
                time: Some(Timestamp {
                    seconds: now.as_secs() as i64,
                    nanos: now.subsec_nanos() as i32,
                }),
                http: Some(http_req),
            }),
            context_extensions: route.context_extensions.clone(),
            metadata_context,
            tls_session,
            ..Default::default()
        }),
    }
}

pub(super) fn to_struct(fields: &serde_json::Map<String, serde_json::Value>) -> Struct {
    Struct {
        fields: fields
            .iter()
            .map(|(k, v)| (k.clone(), to_value(v)))
            .collect(),
    }
}

fn to_value(v: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    let kind = match v {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(*b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        J::String(s) => Kind::StringValue(s.clone()),
        J::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(to_value).collect(),
        }),
        J::Object(o) => Kind::StructValue(to_struct(o)),
    };
    Value { kind: Some(kind) }
}

pub(super) fn from_struct(s: &Struct) -> serde_json::Map<String, serde_json::Value> {
    s.fields
        .iter()
        .map(|(k, v)| (k.clone(), from_value(v)))
        .collect()
}

fn from_value(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => J::Null,
        Some(Kind::BoolValue(b)) => J::Bool(*b),
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n).map_or(J::Null, J::Number),
        Some(Kind::StringValue(s)) => J::String(s.clone()),
        Some(Kind::ListValue(l)) => J::Array(l.values.iter().map(from_value).collect()),
        Some(Kind::StructValue(s)) => J::Object(from_struct(s)),
    }
}
