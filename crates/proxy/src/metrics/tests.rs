use std::collections::BTreeMap;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};

use super::*;
use crate::http::flags::{Flag, ResponseFlags};

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn reviews() -> Workload {
    Workload::from_parts(
        Some("reviews-v1"),
        Some("default"),
        &labels(&[("app", "reviews"), ("version", "v1")]),
        Some("bookinfo-reviews"),
        None,
        None,
    )
}

#[test]
fn reporter_from_prefix_and_cluster() {
    assert_eq!(
        Reporter::of("inbound_0.0.0.0_9080", None),
        Reporter::Destination
    );
    assert_eq!(Reporter::of("virtualInbound", None), Reporter::Destination);
    assert_eq!(
        Reporter::of("x", Some("inbound|9080||")),
        Reporter::Destination
    );
    assert_eq!(
        Reporter::of(
            "outbound_0.0.0.0_http",
            Some("outbound|9080||reviews.default.svc.cluster.local")
        ),
        Reporter::Source
    );
    assert_eq!(Reporter::of("ingress_http", None), Reporter::Source);
}

#[test]
fn outbound_cluster_names() {
    let s = Service::from_cluster("outbound|9080||reviews.default.svc.cluster.local");
    assert_eq!(s.host, "reviews.default.svc.cluster.local");
    assert_eq!(s.name, "reviews");
    assert_eq!(s.namespace, "default");
    let s = Service::from_cluster("outbound|9080|v2|reviews.bookinfo.svc.cluster.local");
    assert_eq!(
        (s.name.as_str(), s.namespace.as_str()),
        ("reviews", "bookinfo")
    );
    // A ServiceEntry host: its own name, namespace unknown.
    let s = Service::from_cluster("outbound|443||httpbin.org");
    assert_eq!(
        (s.host.as_str(), s.name.as_str(), s.namespace.as_str()),
        ("httpbin.org", "httpbin.org", "unknown")
    );
    let s = Service::from_cluster("PassthroughCluster");
    assert_eq!(
        (s.host.as_str(), s.name.as_str()),
        ("PassthroughCluster", "PassthroughCluster")
    );
    for c in ["", "outbound|9080||", "outbound|9080", "inbound|9080||"] {
        assert_eq!(Service::from_cluster(c), Service::unknown(), "{c}");
    }
}

#[test]
fn inbound_authority() {
    let s = Service::from_authority("reviews:9080", "default");
    assert_eq!(s.host, "reviews.default.svc.cluster.local");
    assert_eq!(
        (s.name.as_str(), s.namespace.as_str()),
        ("reviews", "default")
    );
    let s = Service::from_authority("Reviews.other", "default");
    assert_eq!(s.host, "reviews.other.svc.cluster.local");
    let s = Service::from_authority("reviews.other.svc.corp.example:80", "default");
    assert_eq!(s.host, "reviews.other.svc.corp.example");
    assert_eq!(s.namespace, "other");
    for a in [
        "10.0.0.1:9080",
        "[::1]:80",
        "www.example.com",
        "",
        "a b",
        "x..y",
    ] {
        assert_eq!(
            Service::from_authority(a, "default"),
            Service::unknown(),
            "{a}"
        );
    }
}

#[test]
fn canonical_defaults() {
    let w = reviews();
    assert_eq!(w.canonical_service, "reviews");
    assert_eq!(w.canonical_revision, "v1");
    assert_eq!(
        w.principal,
        "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
    );
    assert_eq!(w.cluster, "Kubernetes");
    let w = Workload::from_parts(
        Some("web-7f9"),
        Some("ns1"),
        &labels(&[
            ("service.istio.io/canonical-name", "frontend"),
            ("service.istio.io/canonical-revision", "r3"),
            ("app", "web"),
        ]),
        Some("sa"),
        Some("example.org"),
        Some("east"),
    );
    assert_eq!(
        (w.canonical_service.as_str(), w.canonical_revision.as_str()),
        ("frontend", "r3")
    );
    assert_eq!((w.app.as_str(), w.version.as_str()), ("web", "unknown"));
    assert_eq!(w.principal, "spiffe://example.org/ns/ns1/sa/sa");
    assert_eq!(w.cluster, "east");
    let w = Workload::from_parts(
        Some("db"),
        Some("ns1"),
        &labels(&[
            ("app.kubernetes.io/name", "pg"),
            ("app.kubernetes.io/version", "16"),
        ]),
        None,
        None,
        None,
    );
    assert_eq!(
        (w.canonical_service.as_str(), w.canonical_revision.as_str()),
        ("pg", "16")
    );
    assert_eq!((w.app.as_str(), w.version.as_str()), ("pg", "16"));
    assert_eq!(w.principal, "unknown");
    let w = Workload::from_parts(Some("db"), None, &BTreeMap::new(), Some("sa"), None, None);
    assert_eq!(
        (w.canonical_service.as_str(), w.canonical_revision.as_str()),
        ("db", "latest")
    );
    assert_eq!(
        (w.namespace.as_str(), w.principal.as_str()),
        ("unknown", "unknown")
    );
    assert_eq!(Workload::from_node(&Node::default()), Workload::default());
}

#[test]
fn workload_from_node_metadata() {
    let sv = |s: &str| Value {
        kind: Some(Kind::StringValue(s.into())),
    };
    let mut label_fields = HashMap::new();
    label_fields.insert("app".to_string(), sv("reviews"));
    label_fields.insert("version".to_string(), sv("v1"));
    let mut fields = HashMap::new();
    fields.insert("NAMESPACE".to_string(), sv("default"));
    fields.insert("WORKLOAD_NAME".to_string(), sv("reviews-v1"));
    fields.insert("SERVICE_ACCOUNT".to_string(), sv("bookinfo-reviews"));
    fields.insert(
        "LABELS".to_string(),
        Value {
            kind: Some(Kind::StructValue(Struct {
                fields: label_fields.into_iter().collect(),
            })),
        },
    );
    let node = Node {
        metadata: Some(Struct {
            fields: fields.into_iter().collect(),
        }),
        ..Default::default()
    };
    assert_eq!(Workload::from_node(&node), reviews());
}

#[test]
fn spiffe_ids() {
    assert_eq!(
        spiffe_namespace("spiffe://cluster.local/ns/default/sa/bookinfo-productpage"),
        Some("default")
    );
    assert_eq!(spiffe_namespace("spiffe://td/ns//sa/x"), None);
    assert_eq!(spiffe_namespace("spiffe://td/ns/a"), None);
    assert_eq!(spiffe_namespace("https://td/ns/a/sa/b"), None);
    assert_eq!(spiffe_namespace("client.example.com"), None);
}

/// One parsed exposition sample.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the text format back, checking every line's shape and that each
/// family is contiguous under its TYPE line.
fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    let mut types: Vec<String> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE line");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            assert!(!types.contains(&name.to_string()), "family {name} split");
            types.push(name.to_string());
            continue;
        }
        assert!(!line.starts_with('#'), "{line}");
        let (series, value) = line.rsplit_once(' ').expect("value");
        let value: f64 = value.parse().expect("number");
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("closing brace");
                (name.to_string(), parse_labels(body))
            }
        };
        let family = types.last().expect("sample before TYPE");
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|b| b == family))
            .unwrap_or(&name);
        assert_eq!(base, family, "{line}");
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

fn parse_labels(body: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let mut chars = body.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        assert_eq!(chars.next(), Some('"'));
        let mut v = String::new();
        loop {
            match chars.next().expect("unterminated value") {
                '\\' => match chars.next() {
                    Some('n') => v.push('\n'),
                    Some(c) => v.push(c),
                    None => panic!("dangling escape"),
                },
                '"' => break,
                c => v.push(c),
            }
        }
        assert!(m.insert(key, v).is_none());
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    m
}

fn find<'a>(samples: &'a [Sample], name: &str, want: &[(&str, &str)]) -> Vec<&'a Sample> {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            want.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect()
}

const LABELS: [&str; 25] = [
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_canonical_service",
    "source_canonical_revision",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_cluster",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
];

fn sample<'a>(prefix: &'a str, cluster: &'a str, code: u16, ms: u64) -> HttpSample<'a> {
    HttpSample {
        prefix,
        cluster: Some(cluster),
        authority: Some("reviews:9080"),
        peer_principal: None,
        peer_workload: None,
        stats: None,
        grpc: false,
        code,
        grpc_status: None,
        flags: ResponseFlags::default(),
        request_bytes: 0,
        response_bytes: 300,
        request_messages: 0,
        response_messages: 0,
        duration: Duration::from_millis(ms),
    }
}

#[test]
fn exposition_round_trip() {
    let m = Metrics::new(reviews());
    let pp = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage";
    for ms in [3, 7, 700] {
        m.record_http(&HttpSample {
            peer_principal: Some(pp),
            ..sample("inbound_0.0.0.0_9080", "inbound|9080||", 200, ms)
        });
    }
    let mut uh = ResponseFlags::default();
    uh.set(Flag::NoHealthyUpstream);
    m.record_http(&HttpSample {
        flags: uh,
        grpc: true,
        grpc_status: Some(14),
        ..sample(
            "outbound_0.0.0.0_http",
            "outbound|9080||ratings.default.svc.cluster.local",
            503,
            1,
        )
    });
    m.tcp_opened(
        "outbound_0.0.0.0_27017",
        "outbound|27017||mongo.db.svc.cluster.local",
        None,
    );
    m.tcp_closed(
        "outbound_0.0.0.0_27017",
        "outbound|27017||mongo.db.svc.cluster.local",
        None,
        ResponseFlags::default(),
        10,
        20,
    );
    let mut text = String::new();
    m.render(&mut text);
    let samples = parse(&text);

    let inbound = find(
        &samples,
        "istio_requests_total",
        &[("reporter", "destination")],
    );
    assert_eq!(inbound.len(), 1);
    let l = &inbound[0].labels;
    assert_eq!(inbound[0].value, 3.0);
    for k in LABELS {
        assert!(l.contains_key(k), "missing {k}");
    }
    assert_eq!(l.len(), 25);
    let expect = [
        ("source_principal", pp),
        ("source_workload_namespace", "default"),
        ("source_workload", "unknown"),
        ("source_app", "unknown"),
        ("source_canonical_service", "unknown"),
        ("destination_workload", "reviews-v1"),
        ("destination_workload_namespace", "default"),
        ("destination_app", "reviews"),
        ("destination_version", "v1"),
        ("destination_canonical_service", "reviews"),
        ("destination_canonical_revision", "v1"),
        (
            "destination_principal",
            "spiffe://cluster.local/ns/default/sa/bookinfo-reviews",
        ),
        ("destination_service", "reviews.default.svc.cluster.local"),
        ("destination_service_name", "reviews"),
        ("destination_service_namespace", "default"),
        ("destination_cluster", "Kubernetes"),
        ("request_protocol", "http"),
        ("response_code", "200"),
        ("grpc_response_status", ""),
        ("response_flags", "-"),
        ("connection_security_policy", "mutual_tls"),
    ];
    for (k, v) in expect {
        assert_eq!(l.get(k).map(String::as_str), Some(v), "{k}");
    }

    let outbound = find(&samples, "istio_requests_total", &[("reporter", "source")]);
    assert_eq!(outbound.len(), 1);
    let l = &outbound[0].labels;
    let expect = [
        ("source_workload", "reviews-v1"),
        (
            "source_principal",
            "spiffe://cluster.local/ns/default/sa/bookinfo-reviews",
        ),
        ("destination_workload", "unknown"),
        ("destination_service", "ratings.default.svc.cluster.local"),
        ("destination_service_name", "ratings"),
        ("request_protocol", "grpc"),
        ("response_code", "503"),
        ("grpc_response_status", "14"),
        ("response_flags", "UH"),
        ("connection_security_policy", "unknown"),
    ];
    for (k, v) in expect {
        assert_eq!(l.get(k).map(String::as_str), Some(v), "{k}");
    }

    // Histogram: cumulative buckets, +Inf = count, sum in milliseconds.
    let d = [("reporter", "destination")];
    let buckets = find(&samples, "istio_request_duration_milliseconds_bucket", &d);
    assert_eq!(buckets.len(), BUCKETS.len() + 1);
    let le = |v: &str| {
        buckets
            .iter()
            .find(|s| s.labels.get("le").map(String::as_str) == Some(v))
            .map(|s| s.value)
    };
    assert_eq!(le("1"), Some(0.0));
    assert_eq!(le("5"), Some(1.0));
    assert_eq!(le("10"), Some(2.0));
    assert_eq!(le("500"), Some(2.0));
    assert_eq!(le("1000"), Some(3.0));
    assert_eq!(le("+Inf"), Some(3.0));
    let sum = find(&samples, "istio_request_duration_milliseconds_sum", &d);
    assert_eq!(sum[0].value, 710.0);
    let count = find(&samples, "istio_request_duration_milliseconds_count", &d);
    assert_eq!(count[0].value, 3.0);
    let resp = find(&samples, "istio_response_bytes_sum", &d);
    assert_eq!(resp[0].value, 900.0);
    let req = find(
        &samples,
        "istio_request_bytes_bucket",
        &[("reporter", "destination"), ("le", "0.5")],
    );
    assert_eq!(req[0].value, 3.0);

    let tcp = [("destination_service", "mongo.db.svc.cluster.local")];
    let one = |name: &str| {
        let v = find(&samples, name, &tcp);
        assert_eq!(v.len(), 1, "{name}");
        assert_eq!(
            v[0].labels.get("request_protocol").map(String::as_str),
            Some("tcp")
        );
        assert!(!v[0].labels.contains_key("response_code"));
        v[0].value
    };
    assert_eq!(one("istio_tcp_received_bytes_total"), 10.0);
    assert_eq!(one("istio_tcp_sent_bytes_total"), 20.0);
    assert_eq!(one("istio_tcp_connections_opened_total"), 1.0);
    assert_eq!(one("istio_tcp_connections_closed_total"), 1.0);
}

#[test]
fn inbound_without_mtls_and_unknowns() {
    let m = Metrics::new(Workload::default());
    m.record_http(&HttpSample {
        authority: Some("10.1.2.3:8080"),
        ..sample("inbound_0.0.0.0_8080", "inbound|8080||", 404, 0)
    });
    m.record_http(&HttpSample {
        cluster: None,
        ..sample("outbound_0.0.0.0_http", "", 404, 0)
    });
    let mut text = String::new();
    m.render(&mut text);
    let samples = parse(&text);
    let s = find(
        &samples,
        "istio_requests_total",
        &[("reporter", "destination")],
    );
    assert_eq!(s[0].labels["connection_security_policy"], "none");
    assert_eq!(s[0].labels["source_principal"], "unknown");
    assert_eq!(s[0].labels["destination_service"], "unknown");
    assert_eq!(s[0].labels["destination_workload"], "unknown");
    let s = find(&samples, "istio_requests_total", &[("reporter", "source")]);
    assert_eq!(s[0].labels["destination_service"], "unknown");
    assert_eq!(s[0].labels["source_cluster"], "unknown");
}

#[test]
fn series_are_reused_and_capped() {
    let m = Metrics::new(reviews());
    for _ in 0..5 {
        m.record_http(&sample(
            "outbound_x",
            "outbound|80||a.b.svc.cluster.local",
            200,
            1,
        ));
    }
    assert_eq!(m.http.all().len(), 1);
    let clusters: Vec<String> = (0..MAX_SERIES + 5)
        .map(|i| format!("outbound|80||s{i}.ns.svc.cluster.local"))
        .collect();
    for c in &clusters {
        m.record_http(&sample("outbound_x", c, 200, 1));
    }
    assert_eq!(m.http.all().len(), MAX_SERIES);
    assert_eq!(m.dropped.load(Ordering::Relaxed), 6);
}

#[test]
fn label_escaping() {
    assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    assert_eq!(parse_labels(r#"a="x\"y",b="""#)["a"], "x\"y");
}

#[test]
fn envoy_prometheus_names() {
    let n = |s: &str| crate::admin::prometheus_name(s);
    assert_eq!(
        n("cluster.outbound|9080||reviews.default.svc.cluster.local.upstream_rq_total"),
        (
            "envoy_cluster_upstream_rq_total".to_string(),
            "{envoy_cluster_name=\"outbound|9080||reviews.default.svc.cluster.local\"}".to_string()
        )
    );
    assert_eq!(
        n("cluster.c1.circuit_breakers.default.cx_open"),
        (
            "envoy_cluster_circuit_breakers_default_cx_open".to_string(),
            "{envoy_cluster_name=\"c1\"}".to_string()
        )
    );
    assert_eq!(
        n("listener.127.0.0.1:8080.downstream_cx_total"),
        (
            "envoy_listener_downstream_cx_total".to_string(),
            "{envoy_listener_address=\"127.0.0.1:8080\"}".to_string()
        )
    );
    assert_eq!(
        n("http.inbound_0.0.0.0_9080.rbac.allowed"),
        (
            "envoy_http_rbac_allowed".to_string(),
            "{envoy_http_conn_manager_prefix=\"inbound_0.0.0.0_9080\"}".to_string()
        )
    );
    assert_eq!(
        n("server.live"),
        ("envoy_server_live".to_string(), String::new())
    );
}

/// Cost of the per-request path (a hit: hash, read lock, atomics).
/// `cargo test -p proxy --lib metrics::tests::record_cost -- --ignored --nocapture`
#[test]
#[ignore = "timing, not a check"]
fn record_cost() {
    let m = Metrics::new(reviews());
    let s = HttpSample {
        peer_principal: Some("spiffe://cluster.local/ns/default/sa/bookinfo-productpage"),
        ..sample("inbound_0.0.0.0_9080", "inbound|9080||", 200, 3)
    };
    m.record_http(&s);
    let n = 1_000_000u32;
    let t = std::time::Instant::now();
    for _ in 0..n {
        m.record_http(&s);
    }
    println!("record_http: {:?} per request", t.elapsed() / n);
}

#[test]
fn exchanged_metadata_names_the_peer_on_both_reporters() {
    let m = Metrics::new(reviews());
    let ratings = Arc::new(Workload::from_parts(
        Some("ratings-v1"),
        Some("default"),
        &[("app", "ratings"), ("version", "v1")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        Some("bookinfo-ratings"),
        None,
        None,
    ));
    let mut out = sample(
        "outbound_0.0.0.0_9080",
        "outbound|9080||ratings.default.svc.cluster.local",
        200,
        2,
    );
    out.peer_workload = Some(&ratings);
    m.record_http(&out);
    let pp = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage";
    let productpage = Arc::new(Workload::from_parts(
        Some("productpage-v1"),
        Some("default"),
        &[("app", "productpage"), ("version", "v1")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        Some("someone-else"),
        None,
        None,
    ));
    let mut inb = sample("inbound_0.0.0.0_9080", "inbound|9080||", 200, 2);
    inb.peer_principal = Some(pp);
    inb.peer_workload = Some(&productpage);
    m.record_http(&inb);
    let mut text = String::new();
    m.render(&mut text);
    let line = |reporter: &str| {
        text.lines()
            .find(|l| {
                l.starts_with("istio_requests_total{")
                    && l.contains(&format!("reporter=\"{reporter}\""))
            })
            .unwrap_or_default()
            .to_string()
    };
    let src = line("source");
    assert!(src.contains("destination_workload=\"ratings-v1\""), "{src}");
    assert!(src.contains("destination_app=\"ratings\""), "{src}");
    assert!(src.contains("destination_version=\"v1\""), "{src}");
    let dst = line("destination");
    assert!(dst.contains("source_workload=\"productpage-v1\""), "{dst}");
    assert!(dst.contains("source_app=\"productpage\""), "{dst}");
    // The certificate, not the claim, names the source principal.
    assert!(dst.contains(&format!("source_principal=\"{pp}\"")), "{dst}");
}

#[test]
fn grpc_streams_count_messages() {
    let m = Metrics::new(reviews());
    let mut s = sample(
        "outbound_0.0.0.0_9080",
        "outbound|9080||ratings.default.svc.cluster.local",
        200,
        2,
    );
    s.grpc = true;
    s.grpc_status = Some(0);
    s.request_messages = 3;
    s.response_messages = 5;
    m.record_http(&s);
    m.record_http(&s);
    let mut http = sample(
        "outbound_0.0.0.0_9080",
        "outbound|9080||details.default.svc.cluster.local",
        200,
        2,
    );
    http.request_messages = 9;
    m.record_http(&http);
    let mut text = String::new();
    m.render(&mut text);
    let value = |name: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .map(|l| l.rsplit(' ').next().unwrap_or_default().to_string())
            .collect()
    };
    // Only the gRPC series has message counters.
    assert_eq!(value("istio_request_messages_total"), ["6"]);
    assert_eq!(value("istio_response_messages_total"), ["10"]);
    assert!(text.contains("request_protocol=\"grpc\""));
}
