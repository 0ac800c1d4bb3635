use std::net::SocketAddr;
use std::time::{Duration, UNIX_EPOCH};

use envoy_types::pb::envoy::config::accesslog::v3::AccessLogFilter;
use http::{HeaderMap, HeaderValue};

use super::format::{DEFAULT_FORMAT, JsonNode, Template};
use super::*;
use crate::http::flags::Flag;

fn addr(s: &str) -> SocketAddr {
    s.parse()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}

fn entry() -> Entry {
    let mut e = Entry::connection(
        addr("10.0.0.1:5555"),
        addr("127.0.0.1:8080"),
        UNIX_EPOCH + Duration::new(1_795_316_850, 602_363_000),
    );
    let mut req = HeaderMap::new();
    req.insert("user-agent", HeaderValue::from_static("curl/8"));
    req.insert("x-request-id", HeaderValue::from_static("rid"));
    e.request_headers = Some(req);
    let mut resp = HeaderMap::new();
    resp.insert(
        "x-envoy-upstream-service-time",
        HeaderValue::from_static("3"),
    );
    e.response_headers = Some(resp);
    e.method = Some("GET".into());
    e.path = Some("/p?q".into());
    e.authority = Some("svc".into());
    e.scheme = Some("http");
    e.protocol = Some("HTTP/1.1");
    e.response_code = Some(503);
    e.response_code_details = Some("via_upstream".into());
    e.flags.set(Flag::UpstreamRetryLimitExceeded);
    e.flags.set(Flag::UpstreamConnectionFailure);
    e.bytes_received = 5;
    e.bytes_sent = 121;
    e.duration = Some(Duration::from_millis(24));
    e.request_duration = Some(Duration::from_millis(1));
    e.upstream_host = Some("127.0.0.1:1".into());
    e.upstream_cluster = Some("dead".into());
    e.route_name = Some("r1".into());
    e.connection_id = 7;
    e
}

fn text(fmt: &str, e: &Entry) -> String {
    match Template::parse(fmt) {
        Ok(t) => t.format_text(e, false),
        Err(m) => format!("ERR {m}"),
    }
}

#[test]
fn default_format_matches_envoy() {
    assert_eq!(
        text(DEFAULT_FORMAT, &entry()),
        "[2026-11-22T03:07:30.602Z] \"GET /p?q HTTP/1.1\" 503 URX,UF 5 121 24 3 \"-\" \"curl/8\" \"rid\" \"svc\" \"127.0.0.1:1\"\n"
    );
}

#[test]
fn operators() {
    let e = entry();
    let cases = [
        (
            "%RESPONSE_FLAGS_LONG%",
            "UpstreamRetryLimitExceeded,UpstreamConnectionFailure",
        ),
        ("%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", "/p?q"),
        ("%REQ(USER-AGENT):3%", "cur"),
        (
            "%REQ(:METHOD)% %REQ(:AUTHORITY)% %REQ(:SCHEME)%",
            "GET svc http",
        ),
        ("%RESP(X-NOPE)% %TRAILER(GRPC-STATUS)%", "- -"),
        (
            "%REQUEST_DURATION% %RESPONSE_DURATION% %RESPONSE_TX_DURATION%",
            "1 - -",
        ),
        (
            "%UPSTREAM_CLUSTER% %UPSTREAM_CLUSTER_RAW% %ROUTE_NAME%",
            "dead dead r1",
        ),
        (
            "%UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %UPSTREAM_REMOTE_PORT%",
            "127.0.0.1 1",
        ),
        (
            "%DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
            "10.0.0.1:5555 10.0.0.1",
        ),
        (
            "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%",
            "10.0.0.1:5555 127.0.0.1",
        ),
        ("%DOWNSTREAM_LOCAL_PORT% %CONNECTION_ID%", "8080 7"),
        (
            "%DOWNSTREAM_PEER_URI_SAN% %DOWNSTREAM_TLS_VERSION% %REQUESTED_SERVER_NAME%",
            "- - -",
        ),
        (
            "%UPSTREAM_LOCAL_ADDRESS% %UPSTREAM_TRANSPORT_FAILURE_REASON%",
            "- -",
        ),
        (
            "%CONNECTION_TERMINATION_DETAILS% %RESPONSE_CODE_DETAILS%",
            "- via_upstream",
        ),
        ("%START_TIME(%s)% 100%% %STREAM_ID%", "1795316850 100% rid"),
        ("%DYNAMIC_METADATA(ns:k)%", "-"),
    ];
    for (fmt, want) in cases {
        assert_eq!(text(fmt, &e), want, "{fmt}");
    }
    let mut md = DynamicMetadata::default();
    let mut fields = serde_json::Map::new();
    fields.insert("k".into(), serde_json::json!("v"));
    fields.insert("n".into(), serde_json::json!({"x": 1}));
    md.merge("ns", fields);
    let mut e = entry();
    e.dynamic_metadata = Some(md);
    assert_eq!(
        text("%DYNAMIC_METADATA(ns:k)% %DYNAMIC_METADATA(ns:n)%", &e),
        "v {\"x\":1}"
    );
}

#[test]
fn bad_formats_are_rejected() {
    for bad in [
        "%NOT_AN_OPERATOR%",
        "%REQ%",
        "%REQ()%",
        "%REQ(a?b?c)%",
        "50%",
        "%START_TIME:3%",
        "%REQ(a):x%",
    ] {
        assert!(Template::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn json_types_and_order() {
    let json: serde_json::Value = serde_json::json!({
        "zeta": "%RESPONSE_CODE%", "alpha": "%BYTES_SENT%", "missing": "%RESP(X-NOPE)%",
        "mixed": "code=%RESPONSE_CODE%", "num": 5, "nested": {"b": "%PROTOCOL%", "a": "%UPSTREAM_LOCAL_ADDRESS%"}
    });
    let s = to_struct(&json);
    let node = JsonNode::compile(&s).unwrap_or_else(|e| panic!("{e}"));
    let out = node.format(&entry(), false).to_string();
    assert_eq!(
        out,
        r#"{"alpha":121,"missing":null,"mixed":"code=503","nested":{"a":null,"b":"HTTP/1.1"},"num":5,"zeta":503}"#
    );
    let omitted = node.format(&entry(), true).to_string();
    assert_eq!(
        omitted,
        r#"{"alpha":121,"mixed":"code=503","nested":{"b":"HTTP/1.1"},"num":5,"zeta":503}"#
    );
}

fn to_struct(v: &serde_json::Value) -> envoy_types::pb::google::protobuf::Struct {
    use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
    fn val(v: &serde_json::Value) -> Value {
        let kind = match v {
            serde_json::Value::String(s) => Kind::StringValue(s.clone()),
            serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
            serde_json::Value::Bool(b) => Kind::BoolValue(*b),
            serde_json::Value::Object(_) => Kind::StructValue(to_struct(v)),
            _ => Kind::NullValue(0),
        };
        Value { kind: Some(kind) }
    }
    let mut s = Struct::default();
    if let serde_json::Value::Object(m) = v {
        for (k, x) in m {
            s.fields.insert(k.clone(), val(x));
        }
    }
    s
}

fn filter(json: serde_json::Value) -> Result<Filter, (String, String)> {
    // The filter protos are plain messages: build them through serde-free struct literals.
    use envoy_types::pb::envoy::config::accesslog::v3::{
        AndFilter, ComparisonFilter, OrFilter, ResponseFlagFilter, StatusCodeFilter,
        access_log_filter::FilterSpecifier,
    };
    use envoy_types::pb::envoy::config::core::v3::RuntimeUInt32;
    fn build(v: &serde_json::Value) -> AccessLogFilter {
        let spec = if let Some(n) = v.get("ge") {
            FilterSpecifier::StatusCodeFilter(StatusCodeFilter {
                comparison: Some(ComparisonFilter {
                    op: 1,
                    value: Some(RuntimeUInt32 {
                        default_value: n.as_u64().unwrap_or_default() as u32,
                        runtime_key: "k".into(),
                    }),
                }),
            })
        } else if let Some(f) = v.get("flags") {
            FilterSpecifier::ResponseFlagFilter(ResponseFlagFilter {
                flags: f
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        } else if let Some(a) = v.get("and") {
            FilterSpecifier::AndFilter(AndFilter {
                filters: a
                    .as_array()
                    .map(|a| a.iter().map(build).collect())
                    .unwrap_or_default(),
            })
        } else if let Some(a) = v.get("or") {
            FilterSpecifier::OrFilter(OrFilter {
                filters: a
                    .as_array()
                    .map(|a| a.iter().map(build).collect())
                    .unwrap_or_default(),
            })
        } else {
            FilterSpecifier::NotHealthCheckFilter(Default::default())
        };
        AccessLogFilter {
            filter_specifier: Some(spec),
        }
    }
    Filter::compile(&build(&json))
}

#[test]
fn filters() {
    let e = entry();
    let ok = |j| {
        filter(j)
            .map(|f| f.matches(&e))
            .unwrap_or_else(|(at, m)| panic!("{at}: {m}"))
    };
    assert!(ok(serde_json::json!({"ge": 400})));
    assert!(!ok(serde_json::json!({"ge": 504})));
    assert!(ok(serde_json::json!({"flags": ["UF"]})));
    assert!(ok(serde_json::json!({"flags": []})));
    assert!(!ok(serde_json::json!({"flags": ["NR"]})));
    assert!(!ok(
        serde_json::json!({"and": [{"ge": 400}, {"flags": ["NR"]}]})
    ));
    assert!(ok(
        serde_json::json!({"or": [{"ge": 504}, {"flags": ["URX"]}, {}]})
    ));
    let bad = filter(serde_json::json!({"and": [{"ge": 1}, {"flags": ["XX"]}]}));
    assert_eq!(
        bad.map(|_| ()).map_err(|(at, _)| at),
        Err(".and_filter.filters[1].response_flag_filter.flags[0]".to_string())
    );
}

fn file_log(path: &str, format: Option<&str>) -> AccessLogProto {
    use envoy_types::pb::envoy::config::core::v3::DataSource;
    use envoy_types::pb::google::protobuf::Any;
    let log_format = format.map(|f| {
        file_access_log::AccessLogFormat::LogFormat(SubstitutionFormatString {
            format: Some(substitution_format_string::Format::TextFormatSource(
                DataSource {
                    specifier: Some(data_source::Specifier::InlineString(f.into())),
                    ..Default::default()
                },
            )),
            ..Default::default()
        })
    });
    let cfg = FileAccessLog {
        path: path.into(),
        access_log_format: log_format,
    };
    AccessLogProto {
        name: "envoy.access_loggers.file".into(),
        filter: None,
        config_type: Some(access_log::ConfigType::TypedConfig(Any {
            type_url: FILE_TYPE.into(),
            value: cfg.encode_to_vec(),
        })),
    }
}

#[test]
fn unknown_operator_is_a_config_error_naming_the_field() {
    let scope = ErrorScope::new("listener", "in");
    let err = compile_list(
        &[
            file_log("/dev/null", None),
            file_log("/dev/null", Some("%BOGUS%")),
        ],
        &scope,
        "access_log",
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(
        err.contains("access_log[1].typed_config.log_format.text_format_source"),
        "{err}"
    );
    assert!(err.contains("BOGUS"), "{err}");
}

#[test]
fn file_sink_writes_lines_and_reopens() {
    let dir = std::env::temp_dir().join(format!("trellis-al-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("a.log");
    let p = path.to_string_lossy().into_owned();
    let scope = ErrorScope::new("listener", "in");
    let logs = compile_list(
        &[file_log(&p, Some("%RESPONSE_CODE% %REQ(:PATH)%\n"))],
        &scope,
        "a",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    log_all(&logs, &entry());
    let read = |path: &std::path::Path| {
        for _ in 0..100 {
            if let Ok(s) = std::fs::read_to_string(path)
                && !s.is_empty()
            {
                return s;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        String::new()
    };
    assert_eq!(read(&path), "503 /p?q\n");
    // Rotation: move the file away, reopen, and the next line goes to a new file.
    let rotated = dir.join("a.log.1");
    let _ = std::fs::rename(&path, &rotated);
    reopen_all();
    log_all(&logs, &entry());
    assert_eq!(read(&path), "503 /p?q\n");
    assert_eq!(read(&rotated), "503 /p?q\n");
    let _ = std::fs::remove_dir_all(&dir);
}
