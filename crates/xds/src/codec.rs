//! Envoy's YAML/JSON configuration format ⇄ prost messages.
//!
//! Envoy reads bootstrap files and prints `/config_dump` in the proto3 JSON
//! mapping. prost-generated types have no JSON support, so every conversion
//! goes through `prost_reflect::DynamicMessage` using the descriptors in
//! [`crate::descriptors`] and then to the envoy-types struct via the binary
//! encoding, which both sides agree on by construction.

use std::path::{Path, PathBuf};

use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use prost::{Message, Name};
use prost_reflect::{DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions};

use crate::descriptors;

/// Where an input came from, for error messages.
const INLINE: &str = "<inline>";

/// Errors from parsing or rendering Envoy configuration. Every variant
/// renders as one line naming the input and, where known, the field path.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: invalid YAML/JSON: {message}")]
    Syntax { origin: String, message: String },
    #[error("{origin}: message type {name} is not in the Envoy descriptor pool")]
    UnknownMessage { origin: String, name: String },
    #[error("{origin}: {field}: unknown type URL {type_url:?} (not an Envoy v3 message)")]
    UnknownTypeUrl {
        origin: String,
        field: String,
        type_url: String,
    },
    #[error("{origin}: {field}: {message}")]
    Field {
        origin: String,
        field: String,
        message: String,
    },
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
    #[error("cannot decode {name}: {source}")]
    Decode {
        name: String,
        source: prost::DecodeError,
    },
    #[error("expected a resource of type {expected}, got {actual}")]
    TypeMismatch { expected: String, actual: String },
    #[error("cannot render {name} as JSON: {message}")]
    Render { name: String, message: String },
}

/// Reads an Envoy bootstrap (`.yaml`, `.yml` or `.json`) the way Envoy's
/// `--config-path` does.
pub fn bootstrap_from_path(path: &Path) -> Result<Bootstrap, CodecError> {
    let text = std::fs::read_to_string(path).map_err(|source| CodecError::Io {
        path: path.to_owned(),
        source,
    })?;
    let origin = path.display().to_string();
    let is_json = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let value = if is_json {
        serde_json::from_str(&text).map_err(|e| CodecError::Syntax {
            origin: origin.clone(),
            message: one_line(&e.to_string()),
        })?
    } else {
        // `.yaml`, `.yml` and anything else: YAML is a superset of JSON.
        yaml_to_value(&text, &origin)?
    };
    decode_value(value, &Bootstrap::full_name(), &origin)
}

/// Parses one message of type `full_name` from YAML (or JSON) text.
pub fn message_from_yaml_str<M: Message + Default>(
    text: &str,
    full_name: &str,
) -> Result<M, CodecError> {
    let value = yaml_to_value(text, INLINE)?;
    decode_value(value, full_name, INLINE)
}

/// Parses one message of type `full_name` from an already parsed JSON value.
pub fn message_from_json_value<M: Message + Default>(
    value: serde_json::Value,
    full_name: &str,
) -> Result<M, CodecError> {
    decode_value(value, full_name, INLINE)
}

/// Parses a proto3-JSON `Any` (an object with `"@type"`) into a packed `Any`.
pub fn any_from_json_value(
    value: serde_json::Value,
    origin: &str,
) -> Result<prost_types::Any, CodecError> {
    let type_url = value
        .get("@type")
        .and_then(|t| t.as_str())
        .ok_or_else(|| CodecError::Invalid {
            origin: origin.to_owned(),
            message: "resource has no \"@type\"".into(),
        })?
        .to_owned();
    let dynamic = dynamic_from_value(value, "google.protobuf.Any", origin)?;
    let any: prost_types::Any = dynamic
        .transcode_to()
        .map_err(|source| CodecError::Decode {
            name: "google.protobuf.Any".into(),
            source,
        })?;
    debug_assert_eq!(any.type_url, type_url);
    Ok(any)
}

/// Renders a message in Envoy's `/config_dump` shape: proto3 JSON with the
/// proto (snake_case) field names and `Any` shown with `"@type"`.
pub fn to_json<M: Message + Name>(msg: &M) -> Result<serde_json::Value, CodecError> {
    let desc = descriptor(&M::full_name(), INLINE)?;
    render(desc, &msg.encode_to_vec())
}

/// Renders a packed resource like [`to_json`], resolving its type URL.
pub fn any_to_json(any: &prost_types::Any) -> Result<serde_json::Value, CodecError> {
    let desc = descriptor("google.protobuf.Any", INLINE)?;
    render(desc, &any.encode_to_vec())
}

fn render(desc: MessageDescriptor, bytes: &[u8]) -> Result<serde_json::Value, CodecError> {
    let name = desc.full_name().to_owned();
    let dynamic = DynamicMessage::decode(desc, bytes).map_err(|source| CodecError::Decode {
        name: name.clone(),
        source,
    })?;
    let options = SerializeOptions::new().use_proto_field_name(true);
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| CodecError::Render {
            name,
            message: one_line(&e.to_string()),
        })
}

/// YAML text → JSON value. An empty document is an empty message, as in Envoy.
fn yaml_to_value(text: &str, origin: &str) -> Result<serde_json::Value, CodecError> {
    if text.trim().is_empty() {
        return Ok(serde_json::Value::Object(Default::default()));
    }
    serde_saphyr::from_str::<serde_json::Value>(text).map_err(|e| {
        // saphyr appends a multi-line source snippet; its first line already
        // says what and where ("line 1 column 7: unclosed bracket").
        let full = e.to_string();
        let first = full
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("syntax error");
        CodecError::Syntax {
            origin: origin.to_owned(),
            message: first.trim_start_matches("error: ").to_owned(),
        }
    })
}

fn descriptor(full_name: &str, origin: &str) -> Result<MessageDescriptor, CodecError> {
    descriptors::message(full_name).ok_or_else(|| CodecError::UnknownMessage {
        origin: origin.to_owned(),
        name: full_name.to_owned(),
    })
}

fn decode_value<M: Message + Default>(
    value: serde_json::Value,
    full_name: &str,
    origin: &str,
) -> Result<M, CodecError> {
    let dynamic = dynamic_from_value(value, full_name, origin)?;
    M::decode(dynamic.encode_to_vec().as_slice()).map_err(|source| CodecError::Decode {
        name: full_name.to_owned(),
        source,
    })
}

/// Envoy (protobuf C++) accepts `{"@type": ".../google.protobuf.Empty"}`
/// with no `value`, the natural way to write a filter without config;
/// prost-reflect wants the well-known-type form `"value": {}`. Add it.
fn fill_empty_any_values(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            let is_empty_any = map
                .get("@type")
                .and_then(|t| t.as_str())
                .is_some_and(|t| t.ends_with("/google.protobuf.Empty"));
            if is_empty_any && !map.contains_key("value") {
                map.insert(
                    "value".into(),
                    serde_json::Value::Object(Default::default()),
                );
            }
            for v in map.values_mut() {
                fill_empty_any_values(v);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(fill_empty_any_values),
        _ => {}
    }
}

fn dynamic_from_value(
    value: serde_json::Value,
    full_name: &str,
    origin: &str,
) -> Result<DynamicMessage, CodecError> {
    let desc = descriptor(full_name, origin)?;
    let mut value = value;
    fill_empty_any_values(&mut value);
    // prost-reflect reports an unknown "@type" without saying where it was,
    // so check them all first and name the field path ourselves.
    check_type_urls(&value, &mut String::new(), origin)?;
    let mut track = serde_path_to_error::Track::new();
    let de = serde_path_to_error::Deserializer::new(value, &mut track);
    DynamicMessage::deserialize_with_options(desc, de, &DeserializeOptions::new()).map_err(|e| {
        let path = track.path().to_string();
        CodecError::Field {
            origin: origin.to_owned(),
            field: if path.is_empty() || path == "?" {
                "(top level)".into()
            } else {
                path
            },
            message: one_line(&e.to_string()),
        }
    })
}

fn check_type_urls(
    value: &serde_json::Value,
    path: &mut String,
    origin: &str,
) -> Result<(), CodecError> {
    match value {
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::String(url)) = map.get("@type")
                && descriptors::message_for_type_url(url).is_none()
            {
                return Err(CodecError::UnknownTypeUrl {
                    origin: origin.to_owned(),
                    field: if path.is_empty() {
                        "(top level)".into()
                    } else {
                        path.clone()
                    },
                    type_url: url.clone(),
                });
            }
            for (key, child) in map {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                check_type_urls(child, path, origin)?;
                path.truncate(len);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                check_type_urls(child, path, origin)?;
                path.truncate(len);
            }
        }
        _ => {}
    }
    Ok(())
}

/// Keeps error messages on one line for logs and NACK details.
fn one_line(s: &str) -> String {
    s.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::type_url;
    use envoy_types::pb::envoy::config::listener::v3::Listener;

    const BOOTSTRAP: &str = r#"
node: { id: "sidecar~10.0.0.1~a.default~default.svc.cluster.local", cluster: a }
admin:
  address: { socket_address: { address: 127.0.0.1, port_value: 15000 } }
static_resources:
  listeners:
  - name: http
    address: { socket_address: { address: 0.0.0.0, portValue: 8080 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config: { name: local, virtual_hosts: [ { name: all, domains: ["*"], routes: [ { match: { prefix: "/" }, route: { cluster: backend, timeout: 1.5s } } ] } ] }
          http_filters:
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
  clusters:
  - name: backend
    connect_timeout: 5s
    type: STATIC
    load_assignment:
      cluster_name: backend
      endpoints: [ { lb_endpoints: [ { endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 9000 } } } } ] } ]
"#;

    fn write_tmp(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xds-codec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write tmp");
        path
    }

    #[test]
    fn parses_yaml_bootstrap_with_any_durations_and_both_name_styles() {
        let path = write_tmp("ok.yaml", BOOTSTRAP);
        let b = bootstrap_from_path(&path).expect("bootstrap parses");
        let static_resources = b.static_resources.expect("static_resources");
        let cluster = &static_resources.clusters[0];
        assert_eq!(cluster.name, "backend");
        assert_eq!(cluster.connect_timeout.as_ref().map(|d| d.seconds), Some(5));
        let listener = &static_resources.listeners[0];
        let addr = listener.address.as_ref().and_then(|a| a.address.as_ref());
        assert!(format!("{addr:?}").contains("8080"), "{addr:?}");
        let typed = listener.filter_chains[0].filters[0].config_type.as_ref();
        assert!(format!("{typed:?}").contains("HttpConnectionManager"));
    }

    #[test]
    fn json_extension_parses_as_json() {
        let path = write_tmp("ok.json", r#"{"node": {"id": "n1"}}"#);
        let b = bootstrap_from_path(&path).expect("json bootstrap");
        assert_eq!(b.node.map(|n| n.id).as_deref(), Some("n1"));
    }

    fn bad(name: &str, text: &str) -> String {
        let path = write_tmp(name, text);
        let err = bootstrap_from_path(&path)
            .expect_err("must fail")
            .to_string();
        eprintln!("{err}");
        assert!(!err.contains('\n'), "one line: {err}");
        assert!(err.contains(name), "names the file: {err}");
        err
    }

    #[test]
    fn unknown_field_names_path() {
        let err = bad(
            "unknown.yaml",
            "static_resources:\n  clusters:\n  - name: a\n    conect_timeout: 1s\n",
        );
        assert!(
            err.contains("static_resources.clusters[0]") || err.contains("clusters"),
            "{err}"
        );
        assert!(err.contains("conect_timeout"), "{err}");
    }

    #[test]
    fn bad_duration_names_path() {
        let err = bad(
            "duration.yaml",
            "static_resources:\n  clusters:\n  - name: a\n    connect_timeout: 5 seconds\n",
        );
        assert!(err.contains("connect_timeout"), "{err}");
    }

    #[test]
    fn unknown_type_url_is_named() {
        let err = bad(
            "type.yaml",
            "static_resources:\n  listeners:\n  - name: l\n    filter_chains:\n    - filters:\n      - name: x\n        typed_config: { \"@type\": type.googleapis.com/envoy.nope.v3.Nope }\n",
        );
        assert!(
            err.contains("type.googleapis.com/envoy.nope.v3.Nope"),
            "{err}"
        );
        assert!(
            err.contains("static_resources.listeners[0].filter_chains[0].filters[0].typed_config"),
            "{err}"
        );
    }

    #[test]
    fn syntax_error_and_missing_file_are_one_line() {
        bad("syntax.yaml", "node: [unclosed\n");
        let err = bootstrap_from_path(Path::new("/nonexistent/x.yaml")).expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/x.yaml"));
    }

    #[test]
    fn renders_config_dump_shape() {
        let l: Listener = message_from_yaml_str(
            "name: l\naddress: { socket_address: { address: 0.0.0.0, port_value: 80 } }\nfilter_chains: [ { filters: [ { name: t, typed_config: { '@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: s, cluster: c } } ] } ]\n",
            "envoy.config.listener.v3.Listener",
        )
        .expect("listener");
        let json = to_json(&l).expect("render");
        assert_eq!(json["address"]["socket_address"]["port_value"], 80);
        let typed = &json["filter_chains"][0]["filters"][0]["typed_config"];
        assert_eq!(
            typed["@type"],
            "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
        );
        assert_eq!(typed["stat_prefix"], "s");

        let any = type_url::pack(&l);
        let json2 = any_to_json(&any).expect("any");
        assert_eq!(json2["@type"], type_url::LISTENER);
        assert_eq!(json2["name"], "l");

        let back = any_from_json_value(json2, INLINE).expect("round trip");
        assert_eq!(back, any);
    }
}
