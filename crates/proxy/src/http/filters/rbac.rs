//! `envoy.filters.http.rbac`: allows or denies each request with the RBAC
//! engine (see [`crate::rbac`]). A denial is a local 403 `RBAC: access
//! denied` (response code details
//! `rbac_access_denied_matched_policy[<policy>|none]`). `RBACPerRoute` in
//! `typed_per_filter_config` replaces the filter's rules for a route; an
//! empty one disables the filter there.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::{
    Rbac as RbacProto, RbacPerRoute,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use crate::rbac::{DynamicMetadata, Engine, Engines, Input, RbacStats, Verdict};

pub const TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
pub const PER_ROUTE_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute";
/// The dynamic metadata namespace the filter writes (shadow results).
pub const METADATA_NAMESPACE: &str = "envoy.filters.http.rbac";

/// Compiled per-route configurations, by their serialized bytes: a route
/// table is immutable, so each distinct config is compiled once.
const PER_ROUTE_CACHE_LIMIT: usize = 1024;

/// A route's compiled rules, or why they do not compile.
type CompiledPerRoute = Arc<Result<Engines, String>>;

#[derive(Debug)]
pub struct RbacFilter {
    engines: Engines,
    pub rules_stat_prefix: String,
    pub stats: Arc<RbacStats>,
    per_route: Mutex<HashMap<Vec<u8>, CompiledPerRoute>>,
}

/// What the filter decided for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Continue,
    /// Answer 403; the response code details.
    Deny(String),
}

fn prefixed(prefix: &str, field: &str) -> String {
    if field.is_empty() {
        prefix.to_string()
    } else {
        format!("{prefix}.{field}")
    }
}

fn engines(p: &RbacProto) -> Result<Engines, (String, String)> {
    if p.matcher.is_some() && p.rules.is_none() {
        return Err((
            "matcher".into(),
            "the unified matcher API is not supported; use rules".into(),
        ));
    }
    if p.shadow_matcher.is_some() && p.shadow_rules.is_none() {
        return Err((
            "shadow_matcher".into(),
            "the unified matcher API is not supported; use shadow_rules".into(),
        ));
    }
    let enforced = p
        .rules
        .as_ref()
        .map(Engine::compile)
        .transpose()
        .map_err(|(f, m)| (prefixed("rules", &f), m))?;
    let shadow = p
        .shadow_rules
        .as_ref()
        .map(Engine::compile)
        .transpose()
        .map_err(|(f, m)| (prefixed("shadow_rules", &f), m))?;
    Ok(Engines {
        enforced,
        shadow,
        shadow_stat_prefix: p.shadow_rules_stat_prefix.clone(),
    })
}

impl RbacFilter {
    /// Compiles the filter config; errors carry a field path inside it.
    pub fn compile(any: &Any) -> Result<Self, (String, String)> {
        let p = RbacProto::decode(any.value.as_slice())
            .map_err(|e| (String::new(), format!("invalid RBAC: {e}")))?;
        Ok(Self {
            engines: engines(&p)?,
            rules_stat_prefix: p.rules_stat_prefix.clone(),
            stats: Arc::default(),
            per_route: Mutex::new(HashMap::new()),
        })
    }

    /// Counters as Envoy names them under `http.<stat_prefix>.`.
    pub fn stat_values(&self, hcm_stat_prefix: &str) -> Vec<(String, u64)> {
        self.stats
            .named(&self.rules_stat_prefix, &self.engines.shadow_stat_prefix)
            .into_iter()
            .map(|(k, v)| (format!("http.{hcm_stat_prefix}.rbac.{k}"), v))
            .collect()
    }

    /// Compiles an `RBACPerRoute` (validation of route configurations).
    pub fn compile_per_route(any: &Any) -> Result<Engines, (String, String)> {
        if any.type_url != PER_ROUTE_TYPE_URL {
            return Err((
                String::new(),
                format!(
                    "expected {PER_ROUTE_TYPE_URL} for the RBAC filter, got '{}'",
                    any.type_url
                ),
            ));
        }
        let p = RbacPerRoute::decode(any.value.as_slice())
            .map_err(|e| (String::new(), format!("invalid RBACPerRoute: {e}")))?;
        match &p.rbac {
            // No rules for the route: RBAC is off there.
            None => Ok(Engines::default()),
            Some(r) => engines(r).map_err(|(f, m)| (prefixed("rbac", &f), m)),
        }
    }

    fn per_route_engines(&self, any: &Any) -> CompiledPerRoute {
        let Ok(mut cache) = self.per_route.lock() else {
            return Arc::new(Err("per-route cache poisoned".into()));
        };
        if let Some(e) = cache.get(&any.value) {
            return Arc::clone(e);
        }
        let compiled = Arc::new(
            Self::compile_per_route(any)
                .map_err(|(f, m)| if f.is_empty() { m } else { format!("{f}: {m}") }),
        );
        if cache.len() >= PER_ROUTE_CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(any.value.clone(), Arc::clone(&compiled));
        compiled
    }

    /// Evaluates the request (route-level rules first when the route has
    /// them) and records shadow results and the log hint in `metadata`.
    pub fn check(
        &self,
        per_route: Option<&Any>,
        input: &Input<'_>,
        metadata: &mut DynamicMetadata,
    ) -> Outcome {
        let route_engines;
        let engines = match per_route {
            Some(any) => {
                route_engines = self.per_route_engines(any);
                match route_engines.as_ref() {
                    Ok(e) => e,
                    Err(msg) => {
                        // Envoy would have rejected this route configuration;
                        // failing closed is the safe reading.
                        tracing::error!(error = %msg, "invalid RBACPerRoute; denying the request");
                        return Outcome::Deny(crate::rbac::response_detail("none"));
                    }
                }
            }
            None => &self.engines,
        };
        match engines.run(input, &self.stats, METADATA_NAMESPACE, metadata) {
            Verdict::Allow => Outcome::Continue,
            Verdict::Deny(policy) => Outcome::Deny(crate::rbac::response_detail(&policy)),
        }
    }
}
