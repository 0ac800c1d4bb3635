//! `security.istio.io` kinds (`v1` and `v1beta1` share one schema), typed as
//! Istio's YAML spells them: [`PeerAuthentication`], [`AuthorizationPolicy`]
//! and [`RequestAuthentication`].
//!
//! Unknown fields are rejected, as Istio's CRD schemas do. Lists that Istio
//! distinguishes by presence (`rules`, `from`, `to`) are `Option<Vec<_>>` so
//! that `rules: []` stays different from no `rules` at all.

pub mod authorization_policy;
pub mod peer_authentication;
pub mod request_authentication;

use std::collections::BTreeMap;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

pub use authorization_policy::{
    Action, AuthorizationPolicy, Condition, ExtensionProviderRef, Operation, Rule, RuleFrom,
    RuleTo, Source,
};
pub use peer_authentication::{MtlsMode, MutualTls, PeerAuthentication};
pub use request_authentication::{ClaimToHeader, JwtHeader, JwtRule, RequestAuthentication};

/// The API group of these kinds.
pub const GROUP: &str = "security.istio.io";

/// `selector` of the security kinds (`istio.type.v1beta1.WorkloadSelector`):
/// the workload's labels must contain every `matchLabels` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct WorkloadSelector {
    pub match_labels: BTreeMap<String, String>,
}

/// `targetRef` / `targetRefs` (`istio.type.v1beta1.PolicyTargetReference`):
/// attaches a policy to a Gateway API gateway, a Service or a ServiceEntry
/// (waypoints) instead of selecting workloads by label.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PolicyTargetReference {
    pub group: String,
    pub kind: String,
    pub name: String,
    pub namespace: String,
}

/// A list of strings where YAML numbers are also accepted and kept as
/// their decimal text (`ports: [8080]` as well as `ports: ["8080"]`).
pub(crate) fn lenient_strings<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct ListVisitor;

    impl<'de> Visitor<'de> for ListVisitor {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list of strings")
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(LenientString(s)) = seq.next_element()? {
                out.push(s);
            }
            Ok(out)
        }
    }

    d.deserialize_any(ListVisitor)
}

/// A string, or a number written as its decimal text.
struct LenientString(String);

impl<'de> Deserialize<'de> for LenientString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;

        impl Visitor<'_> for V {
            type Value = LenientString;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(LenientString(v.to_owned()))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(LenientString(v.to_string()))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(LenientString(v.to_string()))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(LenientString(v.to_string()))
            }
        }

        d.deserialize_any(V)
    }
}
