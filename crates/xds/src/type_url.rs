//! xDS type URLs and helpers to move between `Any` and concrete messages.
//!
//! Consumers of this crate see resources as `prost_types::Any`; envoy-types
//! has its own generated `google.protobuf.Any` on the wire. The two are the
//! same message, so conversion is a field move.

use prost::{Message, Name};

use crate::codec::CodecError;

/// `envoy.config.listener.v3.Listener` (LDS).
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// `envoy.config.route.v3.RouteConfiguration` (RDS).
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// `envoy.config.cluster.v3.Cluster` (CDS).
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// `envoy.config.endpoint.v3.ClusterLoadAssignment` (EDS).
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/// `envoy.extensions.transport_sockets.tls.v3.Secret` (SDS).
pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
/// `envoy.config.route.v3.ScopedRouteConfiguration` (SRDS).
pub const SCOPED_ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.ScopedRouteConfiguration";
/// `envoy.config.route.v3.VirtualHost` (VHDS).
pub const VIRTUAL_HOST: &str = "type.googleapis.com/envoy.config.route.v3.VirtualHost";
/// `envoy.service.runtime.v3.Runtime` (RTDS).
pub const RUNTIME: &str = "type.googleapis.com/envoy.service.runtime.v3.Runtime";
/// `envoy.service.discovery.v3.Resource`, the optional wrapper around a resource.
pub const RESOURCE_WRAPPER: &str = "type.googleapis.com/envoy.service.discovery.v3.Resource";

/// The order Envoy applies updates in (so that a listener never refers to a
/// cluster it has not seen): CDS, EDS, LDS, RDS, then the rest.
pub const APPLY_ORDER: &[&str] = &[
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    SECRET,
    SCOPED_ROUTE,
    VIRTUAL_HOST,
    RUNTIME,
];

/// Whether a type is subscribed as a wildcard by default (LDS and CDS): the
/// client receives every resource of the type, not a named subset.
pub fn is_wildcard(type_url: &str) -> bool {
    matches!(type_url, LISTENER | CLUSTER)
}

/// Short, conventional name of an xDS type for logs and status ("LDS", ...).
pub fn short_name(type_url: &str) -> &str {
    match type_url {
        LISTENER => "LDS",
        ROUTE => "RDS",
        CLUSTER => "CDS",
        ENDPOINT => "EDS",
        SECRET => "SDS",
        SCOPED_ROUTE => "SRDS",
        VIRTUAL_HOST => "VHDS",
        RUNTIME => "RTDS",
        other => other.rsplit_once('/').map_or(other, |(_, n)| n),
    }
}

/// Decodes an `Any` into a concrete message after checking its type URL.
pub fn decode_any<M: Message + Name + Default>(any: &prost_types::Any) -> Result<M, CodecError> {
    let expected = M::type_url();
    if type_name(&any.type_url) != M::full_name() {
        return Err(CodecError::TypeMismatch {
            expected,
            actual: any.type_url.clone(),
        });
    }
    M::decode(any.value.as_slice()).map_err(|source| CodecError::Decode {
        name: M::full_name(),
        source,
    })
}

/// Packs a message into an `Any` with the standard `type.googleapis.com/` prefix.
pub fn pack<M: Message + Name>(msg: &M) -> prost_types::Any {
    prost_types::Any {
        type_url: M::type_url(),
        value: msg.encode_to_vec(),
    }
}

/// The message name part of a type URL (everything after the last `/`).
pub fn type_name(type_url: &str) -> &str {
    type_url.rsplit_once('/').map_or(type_url, |(_, n)| n)
}

/// envoy-types' wire `Any` → `prost_types::Any`.
pub fn from_wire(any: envoy_types::pb::google::protobuf::Any) -> prost_types::Any {
    prost_types::Any {
        type_url: any.type_url,
        value: any.value,
    }
}

/// `prost_types::Any` → envoy-types' wire `Any`.
pub fn to_wire(any: prost_types::Any) -> envoy_types::pb::google::protobuf::Any {
    envoy_types::pb::google::protobuf::Any {
        type_url: any.type_url,
        value: any.value,
    }
}

/// Every xDS resource type Trellis serves keeps its name in field 1 (checked by
/// a test against the descriptors), so decoding only that field is enough to
/// name a resource without paying for a full decode.
#[derive(Clone, PartialEq, Message)]
struct NameOnly {
    #[prost(string, tag = "1")]
    name: String,
}

/// The name of a state-of-the-world resource, and the resource itself with
/// any `envoy.service.discovery.v3.Resource` wrapper removed.
pub fn resource_name(any: prost_types::Any) -> Result<(String, prost_types::Any), CodecError> {
    if any.type_url == RESOURCE_WRAPPER {
        let wrapped =
            envoy_types::pb::envoy::service::discovery::v3::Resource::decode(any.value.as_slice())
                .map_err(|source| CodecError::Decode {
                    name: "envoy.service.discovery.v3.Resource".into(),
                    source,
                })?;
        let inner = wrapped
            .resource
            .map(from_wire)
            .ok_or_else(|| CodecError::Invalid {
                origin: "resource".into(),
                message: format!("Resource wrapper {:?} carries no resource", wrapped.name),
            })?;
        if !wrapped.name.is_empty() {
            return Ok((wrapped.name, inner));
        }
        return resource_name(inner);
    }
    let name = NameOnly::decode(any.value.as_slice())
        .map_err(|source| CodecError::Decode {
            name: type_name(&any.type_url).to_owned(),
            source,
        })?
        .name;
    Ok((name, any))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::descriptors;

    #[test]
    fn name_is_field_one_for_all_resource_types() {
        for (url, field) in [
            (LISTENER, "name"),
            (ROUTE, "name"),
            (CLUSTER, "name"),
            (ENDPOINT, "cluster_name"),
            (SECRET, "name"),
            (SCOPED_ROUTE, "name"),
            (VIRTUAL_HOST, "name"),
            (RUNTIME, "name"),
        ] {
            let desc = descriptors::message_for_type_url(url);
            let number = desc
                .and_then(|d| d.get_field_by_name(field))
                .map(|f| f.number());
            assert_eq!(number, Some(1), "{url}.{field}");
        }
    }

    #[test]
    fn names_plain_and_wrapped_resources() {
        use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
        let cla = ClusterLoadAssignment {
            cluster_name: "outbound|80||a.default.svc.cluster.local".into(),
            ..Default::default()
        };
        let any = pack(&cla);
        let (name, same) = resource_name(any.clone()).expect("plain");
        assert_eq!(name, cla.cluster_name);
        assert_eq!(same, any);

        let wrapped = envoy_types::pb::envoy::service::discovery::v3::Resource {
            name: "alias".into(),
            resource: Some(to_wire(any.clone())),
            ..Default::default()
        };
        let wrapped_any = prost_types::Any {
            type_url: RESOURCE_WRAPPER.into(),
            value: wrapped.encode_to_vec(),
        };
        let (name, inner) = resource_name(wrapped_any).expect("wrapped");
        assert_eq!(name, "alias");
        assert_eq!(inner, any);
        let back: ClusterLoadAssignment = decode_any(&inner).expect("decode");
        assert_eq!(back, cla);
        assert!(
            decode_any::<envoy_types::pb::envoy::config::cluster::v3::Cluster>(&inner).is_err()
        );
    }
}
