//! Envoy's CEL access-log filter (`envoy.access_loggers.extension_filters.cel`),
//! which Istio's Telemetry `accessLogging.filter.expression` becomes: the
//! expression is parsed at load by the `expr` crate (a subset of CEL) and
//! evaluated over a finished stream's [`Entry`].

use envoy_types::pb::envoy::extensions::access_loggers::filters::cel::v3::ExpressionFilter;
use expr::{Attr, Attributes, Expr, Value};
use prost::Message;

use super::Entry;

pub(crate) const TYPE: &str = "envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter";

/// Compiles an `ExpressionFilter`; `Err` is (field, message).
pub(crate) fn compile(
    any: &envoy_types::pb::google::protobuf::Any,
) -> Result<Expr, (String, String)> {
    let f = ExpressionFilter::decode(any.value.as_slice())
        .map_err(|e| (String::new(), format!("invalid ExpressionFilter: {e}")))?;
    if f.cel_config.is_some() {
        return Err((".cel_config".into(), "is not supported".into()));
    }
    expr::parse(&f.expression).map_err(|e| (".expression".into(), e.to_string()))
}

/// An entry as CEL attributes (Envoy's attribute names).
struct View<'a>(&'a Entry);

impl Attributes for View<'_> {
    fn get(&self, a: &Attr) -> Option<Value> {
        let e = self.0;
        let s = |v: Option<&str>| v.map(|v| Value::Str(v.to_string()));
        let header = |h: Option<&http::HeaderMap>| {
            let key = a.key.as_deref()?;
            h?.get(key)
                .and_then(|v| v.to_str().ok())
                .map(|v| Value::Str(v.to_string()))
        };
        let path = e.path.as_deref();
        match a.path.as_str() {
            "request.path" => s(path),
            "request.url_path" => s(path.map(|p| p.split('?').next().unwrap_or(p))),
            "request.host" => s(e.authority.as_deref()),
            "request.method" => s(e.method.as_deref()),
            "request.scheme" => s(e.scheme),
            "request.protocol" => s(e.protocol),
            "request.id" => s(e
                .request_headers
                .as_ref()
                .and_then(|h| h.get("x-request-id")?.to_str().ok())),
            "request.useragent" => s(e
                .request_headers
                .as_ref()
                .and_then(|h| h.get(http::header::USER_AGENT)?.to_str().ok())),
            "request.referer" => s(e
                .request_headers
                .as_ref()
                .and_then(|h| h.get(http::header::REFERER)?.to_str().ok())),
            "request.size" => Some(Value::Int(e.bytes_received as i64)),
            "request.headers" => header(e.request_headers.as_ref()),
            "response.code" => e.response_code.map(|c| Value::Int(i64::from(c))),
            "response.code_details" => s(e.response_code_details.as_deref()),
            "response.size" => Some(Value::Int(e.bytes_sent as i64)),
            "response.headers" => header(e.response_headers.as_ref()),
            "response.grpc_status" => e
                .response_trailers
                .as_ref()
                .or(e.response_headers.as_ref())
                .and_then(|h| h.get("grpc-status")?.to_str().ok()?.parse().ok())
                .map(Value::Int),
            "connection.mtls" => Some(Value::Bool(e.peer.is_some())),
            "connection.requested_server_name" => s(e.requested_server_name.as_deref()),
            "source.address" => Some(Value::Str(e.downstream_remote.ip().to_string())),
            "source.port" => Some(Value::Int(i64::from(e.downstream_remote.port()))),
            "destination.address" => Some(Value::Str(e.downstream_local.ip().to_string())),
            "destination.port" => Some(Value::Int(i64::from(e.downstream_local.port()))),
            "upstream.address" => s(e.upstream_host.as_deref()),
            "xds.cluster_name" => s(e.upstream_cluster.as_deref()),
            "xds.route_name" => s(e.route_name.as_deref()),
            _ => None,
        }
    }
}

/// Whether the CEL filter lets `e` be logged (an evaluation error does not).
pub(crate) fn matches(expr: &Expr, e: &Entry) -> bool {
    expr.matches(&View(e))
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::SystemTime;

    use super::*;

    #[test]
    fn istio_filter_expressions_over_an_entry() {
        let addr: SocketAddr = "127.0.0.1:9080".parse().unwrap_or_else(|_| unreachable!());
        let mut e = Entry::connection(addr, addr, SystemTime::now());
        e.response_code = Some(503);
        e.method = Some("GET".into());
        e.path = Some("/reviews/1?x=1".into());
        let mut h = http::HeaderMap::new();
        h.insert("x-debug", http::HeaderValue::from_static("on"));
        e.request_headers = Some(h);
        let yes = |src: &str| matches(&expr::parse(src).unwrap_or_else(|e| panic!("{e}")), &e);
        assert!(yes("response.code >= 500"));
        assert!(yes("request.url_path == '/reviews/1'"));
        assert!(yes(
            "request.headers['x-debug'] == 'on' && request.method == 'GET'"
        ));
        assert!(!yes("connection.mtls"));
        assert!(!yes("response.headers['absent'] == 'x'"));
    }
}
