//! Spans in Zipkin's v2 JSON form, as Envoy's Zipkin tracer writes them:
//! microsecond `timestamp` and `duration`, the node's cluster as the local
//! service, one closing annotation (`ss` for a server span, `cr` for a
//! client span), and `shared` on a server span that may share its id with
//! the client's.

use std::time::SystemTime;

use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use serde_json::{Map, Value, json};

use super::LocalInfo;
use super::context::hex;
use super::span::SpanData;

fn micros(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

pub(crate) fn to_json(s: &SpanData, local: &LocalInfo) -> Value {
    let start = micros(s.start);
    let end = micros(s.end.unwrap_or_else(SystemTime::now)).max(start);
    let server = s.kind == SpanKind::Server;
    let mut endpoint = Map::new();
    endpoint.insert("serviceName".into(), json!(local.cluster));
    let ip = crate::local_address::ipv4();
    endpoint.insert(
        if ip.is_ipv4() { "ipv4" } else { "ipv6" }.into(),
        json!(ip.to_string()),
    );
    endpoint.insert("port".into(), json!(0));
    let tags: Map<String, Value> = s.tags.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    let mut out = Map::new();
    out.insert("traceId".into(), json!(s.trace_id.hex()));
    out.insert("name".into(), json!(s.name));
    out.insert("id".into(), json!(hex(&s.span_id)));
    if let Some(p) = &s.parent {
        out.insert("parentId".into(), json!(hex(p)));
    }
    out.insert(
        "kind".into(),
        json!(if server { "SERVER" } else { "CLIENT" }),
    );
    out.insert("timestamp".into(), json!(start));
    out.insert("duration".into(), json!(end - start));
    out.insert("localEndpoint".into(), Value::Object(endpoint));
    out.insert(
        "annotations".into(),
        json!([{"timestamp": end, "value": if server { "ss" } else { "cr" }}]),
    );
    out.insert("tags".into(), Value::Object(tags));
    if s.shared {
        out.insert("shared".into(), json!(true));
    }
    Value::Object(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn v2_json() {
        let mut s = super::super::span::tests_support::span();
        s.trace_id.wide = false;
        s.parent = Some([3; 8]);
        s.shared = true;
        s.end = Some(s.start + Duration::from_micros(1500));
        s.tags.push(("k".into(), "v".into()));
        let local = LocalInfo {
            cluster: "svc".into(),
            ..Default::default()
        };
        let j = to_json(&s, &local);
        assert_eq!(j["traceId"], "0101010101010101");
        assert_eq!(j["id"], "0202020202020202");
        assert_eq!(j["parentId"], "0303030303030303");
        assert_eq!(j["kind"], "SERVER");
        assert_eq!(j["duration"], 1500);
        assert_eq!(j["shared"], true);
        assert_eq!(j["tags"]["k"], "v");
        assert_eq!(j["localEndpoint"]["serviceName"], "svc");
        assert_eq!(j["annotations"][0]["value"], "ss");
        assert_eq!(
            j["annotations"][0]["timestamp"].as_u64().unwrap(),
            j["timestamp"].as_u64().unwrap() + 1500
        );
        s.kind = SpanKind::Client;
        s.shared = false;
        let j = to_json(&s, &local);
        assert_eq!(j["annotations"][0]["value"], "cr");
        assert!(j.get("shared").is_none());
    }
}
