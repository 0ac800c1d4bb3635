//! `xds.type.v3.TypedStruct`: an extension config as a `google.protobuf.Struct`
//! tagged with the type URL of the message it stands for.
//!
//! Istio configures its own extensions (`istio.stats`,
//! `istio.metadata_exchange`) this way. A stock Envoy does not know those
//! types; marked `is_optional`, the filters are skipped there, while the
//! Trellis proxy implements them. envoy-types does not ship the proto, so the
//! message is declared here and its descriptor added to the pool
//! ([`crate::descriptors`]) for the JSON/YAML codec and `/config_dump`.

use envoy_types::pb::google::protobuf::{Any, Struct};
use prost::Message;

/// The type URLs under which a TypedStruct travels (the `udpa` one is its
/// older name, still accepted by Envoy).
pub const TYPE_URL: &str = "type.googleapis.com/xds.type.v3.TypedStruct";
pub const UDPA_TYPE_URL: &str = "type.googleapis.com/udpa.type.v1.TypedStruct";

#[derive(Clone, PartialEq, Message)]
pub struct TypedStruct {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<Struct>,
}

impl prost::Name for TypedStruct {
    const NAME: &'static str = "TypedStruct";
    const PACKAGE: &'static str = "xds.type.v3";

    fn type_url() -> String {
        TYPE_URL.to_owned()
    }
}

/// Wraps `value` as a TypedStruct standing for the message `type_url`.
///
/// The bytes are deterministic: `Struct` keeps its fields in a hash map, so
/// prost would encode them in a different order each time, and a control
/// plane that versions resources by content hash would push them again
/// and again. Fields are written sorted by key instead.
pub fn pack(type_url: &str, value: Struct) -> Any {
    let mut buf = Vec::new();
    prost::encoding::string::encode(1, &type_url.to_owned(), &mut buf);
    let body = sorted_struct(&value);
    prost::encoding::encode_key(2, prost::encoding::WireType::LengthDelimited, &mut buf);
    prost::encoding::encode_varint(body.len() as u64, &mut buf);
    buf.extend_from_slice(&body);
    Any {
        type_url: TYPE_URL.to_owned(),
        value: buf,
    }
}

/// `Struct` encoded with its fields sorted by key (recursively).
pub fn sorted_struct(s: &Struct) -> Vec<u8> {
    use prost::encoding::{WireType, encode_key, encode_varint};
    let mut out = Vec::new();
    let mut keys: Vec<&String> = s.fields.keys().collect();
    keys.sort();
    for k in keys {
        let Some(v) = s.fields.get(k) else { continue };
        let mut entry = Vec::new();
        prost::encoding::string::encode(1, k, &mut entry);
        let value = sorted_value(v);
        encode_key(2, WireType::LengthDelimited, &mut entry);
        encode_varint(value.len() as u64, &mut entry);
        entry.extend_from_slice(&value);
        encode_key(1, WireType::LengthDelimited, &mut out);
        encode_varint(entry.len() as u64, &mut out);
        out.extend_from_slice(&entry);
    }
    out
}

fn sorted_value(v: &envoy_types::pb::google::protobuf::Value) -> Vec<u8> {
    use envoy_types::pb::google::protobuf::value::Kind;
    use prost::encoding::{WireType, encode_key, encode_varint};
    let nested = |tag: u32, body: Vec<u8>, out: &mut Vec<u8>| {
        encode_key(tag, WireType::LengthDelimited, out);
        encode_varint(body.len() as u64, out);
        out.extend_from_slice(&body);
    };
    let mut out = Vec::new();
    match &v.kind {
        Some(Kind::StructValue(s)) => nested(5, sorted_struct(s), &mut out),
        Some(Kind::ListValue(l)) => {
            let mut body = Vec::new();
            for item in &l.values {
                nested(1, sorted_value(item), &mut body);
            }
            nested(6, body, &mut out);
        }
        // Scalars have no map inside: prost's own encoding is stable.
        _ => v.encode(&mut out).unwrap_or_default(),
    }
    out
}

/// The inner type URL and value of a TypedStruct `Any`; `None` when `any`
/// is something else. A malformed TypedStruct is an `Err`.
pub fn unpack(any: &Any) -> Option<Result<(String, Struct), prost::DecodeError>> {
    if any.type_url != TYPE_URL && any.type_url != UDPA_TYPE_URL {
        return None;
    }
    Some(
        TypedStruct::decode(any.value.as_slice())
            .map(|t| (t.type_url, t.value.unwrap_or_default())),
    )
}

/// The message name of a type URL (everything after the last `/`).
pub fn message_name(type_url: &str) -> &str {
    type_url.rsplit('/').next().unwrap_or(type_url)
}

/// The descriptor of `typed_struct.proto` (and of its `udpa` twin), built by
/// hand because envoy-types does not ship the file.
pub(crate) fn file_descriptors() -> Vec<prost_types::FileDescriptorProto> {
    use prost_types::field_descriptor_proto::{Label, Type};
    use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorProto};
    let file = |name: &str, package: &str| FileDescriptorProto {
        name: Some(name.to_owned()),
        package: Some(package.to_owned()),
        dependency: vec!["google/protobuf/struct.proto".to_owned()],
        message_type: vec![DescriptorProto {
            name: Some("TypedStruct".to_owned()),
            field: vec![
                FieldDescriptorProto {
                    name: Some("type_url".to_owned()),
                    number: Some(1),
                    label: Some(Label::Optional as i32),
                    r#type: Some(Type::String as i32),
                    json_name: Some("typeUrl".to_owned()),
                    ..Default::default()
                },
                FieldDescriptorProto {
                    name: Some("value".to_owned()),
                    number: Some(2),
                    label: Some(Label::Optional as i32),
                    r#type: Some(Type::Message as i32),
                    type_name: Some(".google.protobuf.Struct".to_owned()),
                    json_name: Some("value".to_owned()),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }],
        syntax: Some("proto3".to_owned()),
        ..Default::default()
    };
    vec![
        file("xds/type/v3/typed_struct.proto", "xds.type.v3"),
        file("udpa/type/v1/typed_struct.proto", "udpa.type.v1"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::{Value, value::Kind};

    #[test]
    fn pack_and_unpack_round_trip() {
        let mut s = Struct::default();
        s.fields.insert(
            "disable_host_header_fallback".into(),
            Value {
                kind: Some(Kind::BoolValue(true)),
            },
        );
        let any = pack("type.googleapis.com/stats.PluginConfig", s.clone());
        let Some(Ok((url, value))) = unpack(&any) else {
            panic!("not a TypedStruct");
        };
        assert_eq!(url, "type.googleapis.com/stats.PluginConfig");
        assert_eq!(value, s);
        assert_eq!(message_name(&url), "stats.PluginConfig");
    }

    #[test]
    fn packing_is_deterministic_and_decodes() {
        // Each map gets its own hasher seed, so iteration order differs.
        let build = || {
            let mut inner = Struct::default();
            for k in ["z", "a", "m", "b", "y", "c"] {
                inner.fields.insert(
                    k.into(),
                    Value {
                        kind: Some(Kind::NumberValue(1.5)),
                    },
                );
            }
            let mut s = Struct::default();
            for k in ["q", "w", "e", "r", "t"] {
                s.fields.insert(
                    k.into(),
                    Value {
                        kind: Some(Kind::StructValue(inner.clone())),
                    },
                );
            }
            s
        };
        let first = pack("t", build());
        for _ in 0..20 {
            assert_eq!(pack("t", build()), first);
        }
        let Some(Ok((_, back))) = unpack(&first) else {
            panic!("decodes");
        };
        assert_eq!(back, build());
    }

    #[test]
    fn other_types_are_not_typed_structs() {
        let any = Any {
            type_url: "type.googleapis.com/google.protobuf.Struct".into(),
            value: vec![],
        };
        assert!(unpack(&any).is_none());
    }

    #[test]
    fn the_codec_renders_a_typed_struct_as_json() {
        let mut s = Struct::default();
        s.fields.insert(
            "a".into(),
            Value {
                kind: Some(Kind::StringValue("b".into())),
            },
        );
        let any = pack("type.googleapis.com/io.istio.http.peer_metadata.Config", s);
        let json = crate::codec::to_json(&any).expect("renders");
        assert_eq!(json["@type"], TYPE_URL);
        assert_eq!(json["value"]["a"], "b");
    }
}
