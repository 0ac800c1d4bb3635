//! The control plane's debug and monitoring endpoints (Istio's 15014):
//! `/ready`, `/metrics` (Prometheus, [`crate::metrics`]), `/debug/syncz` (every proxy's sync state, the contract
//! `trellis proxy-status` reads) and `/debug/configz` (rejected objects).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use envoy_types::pb::google::protobuf::{Struct, Value as PbValue, value::Kind};
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};

use crate::ControlPlane;

pub async fn serve_debug(
    listener: tokio::net::TcpListener,
    cp: Arc<ControlPlane>,
) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let cp = Arc::clone(&cp);
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let cp = Arc::clone(&cp);
                async move { Ok::<_, Infallible>(handle(&cp, &req)) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

fn handle(cp: &ControlPlane, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/ready" => respond(StatusCode::OK, "text/plain", "ready\n".into()),
        "/metrics" | "/stats/prometheus" => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            cp.metrics().render(&cp.cache().status(), cp.config_sizes()),
        ),
        "/debug/syncz" => respond(StatusCode::OK, "application/json", pretty(&syncz(cp))),
        "/debug/configz" => {
            let s = cp.status();
            let v = json!({"generation": s.generation, "errors": s.errors, "warnings": s.warnings});
            respond(StatusCode::OK, "application/json", pretty(&v))
        }
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "endpoints: /ready /metrics /debug/syncz /debug/configz\n".into(),
        ),
    }
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// One entry per proxy the server has seen, in the shape `proxy-status` reads.
fn syncz(cp: &ControlPlane) -> Value {
    let cache = cp.cache();
    let nodes = cache.known_nodes();
    let mut out = Vec::new();
    for node in nodes {
        let status = cache.node_status(&node.id);
        let metadata = node
            .metadata
            .as_ref()
            .map(struct_json)
            .unwrap_or(Value::Null);
        let admin = metadata
            .get("TRELLIS_ADMIN_PORT")
            .and_then(|p| {
                p.as_str()
                    .map(str::to_string)
                    .or_else(|| p.as_f64().map(|f| (f as u64).to_string()))
            })
            .map(|p| format!("127.0.0.1:{p}"));
        let types: serde_json::Map<String, Value> = status
            .as_ref()
            .map(|s| {
                s.types
                    .iter()
                    .map(|(t, ts)| {
                        let nack = ts.last_nack.as_ref().map(|n| {
                            json!({"message": n.message, "nonce": n.nonce, "at": xds::timestamp::rfc3339(n.at)})
                        });
                        (
                            t.clone(),
                            json!({
                                "sent_version": ts.sent_version,
                                "sent_nonce": ts.sent_nonce,
                                "acked_version": ts.acked_version,
                                "last_nack": nack,
                            }),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(json!({
            "node_id": node.id,
            "connected": status.as_ref().is_some_and(|s| s.connected),
            "protocol": status.as_ref().map(|s| format!("{:?}", s.protocol)),
            "metadata": metadata,
            "admin": admin,
            "types": types,
        }));
    }
    Value::Array(out)
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
        Some(Kind::NullValue(_)) | None => Value::Null,
        Some(Kind::NumberValue(n)) => json!(n),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::StructValue(s)) => struct_json(s),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(value_json).collect()),
    }
}
