//! Wire-compatible stand-ins for the Envoy messages that carry protobuf
//! maps, with `BTreeMap`s instead of `HashMap`s.
//!
//! prost encodes a `HashMap` in its (randomised) iteration order, so two
//! pushes of the same RBAC or JWT configuration would produce different
//! bytes, different content-hash versions and needless xDS updates. These
//! messages use the same field numbers and types as Envoy's, so the bytes
//! decode as the real types (tests decode them with `envoy_types`), but map
//! entries are written in key order.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::rbac::v3::Policy;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{
    JwtProvider, RequirementRule,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Name;

/// `envoy.config.rbac.v3.RBAC` (action, policies).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Rules {
    /// `envoy.config.rbac.v3.RBAC.Action`.
    #[prost(int32, tag = "1")]
    pub(crate) action: i32,
    #[prost(btree_map = "string, message", tag = "2")]
    pub(crate) policies: BTreeMap<String, Policy>,
}

/// `envoy.extensions.filters.http.rbac.v3.RBAC`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct HttpRbac {
    #[prost(message, optional, tag = "1")]
    pub(crate) rules: Option<Rules>,
    #[prost(message, optional, tag = "2")]
    pub(crate) shadow_rules: Option<Rules>,
    #[prost(string, tag = "3")]
    pub(crate) shadow_rules_stat_prefix: String,
}

/// `envoy.extensions.filters.network.rbac.v3.RBAC`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct NetworkRbac {
    #[prost(message, optional, tag = "1")]
    pub(crate) rules: Option<Rules>,
    #[prost(message, optional, tag = "2")]
    pub(crate) shadow_rules: Option<Rules>,
    #[prost(string, tag = "3")]
    pub(crate) stat_prefix: String,
    #[prost(string, tag = "5")]
    pub(crate) shadow_rules_stat_prefix: String,
}

/// `envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct JwtAuthentication {
    #[prost(btree_map = "string, message", tag = "1")]
    pub(crate) providers: BTreeMap<String, JwtProvider>,
    #[prost(message, repeated, tag = "2")]
    pub(crate) rules: Vec<RequirementRule>,
    #[prost(bool, tag = "4")]
    pub(crate) bypass_cors_preflight: bool,
}

/// Packs `msg` as an `Any` of the Envoy type `T` it stands in for.
pub(crate) fn any_as<T: Name>(msg: &impl prost::Message) -> Any {
    Any {
        type_url: T::type_url(),
        value: msg.encode_to_vec(),
    }
}
