//! Envoy's role-based access control (`envoy.config.rbac.v3.RBAC`): the
//! policy engine shared by the HTTP filter (`envoy.filters.http.rbac`) and
//! the network filter (`envoy.filters.network.rbac`).
//!
//! A request matches a policy when any of its permissions and any of its
//! principals match. Policies are tried in name order (Envoy keeps them in a
//! sorted map), so the first matching name is the "effective policy".
//! `ALLOW` lets through only matching requests, `DENY` stops matching ones,
//! `LOG` never denies but marks the request for access logging.

pub mod header;
mod matchers;
pub mod metadata;
pub mod network;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};

use envoy_types::pb::envoy::config::rbac::v3::{Rbac, rbac::Action as ActionProto};
use serde_json::{Map, Value};

pub use header::HttpView;
pub use metadata::DynamicMetadata;

use crate::listener::peer::PeerIdentity;
use matchers::{Permission, Principal};

/// Everything a policy can look at.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// The request, for the HTTP filter; `None` for the network filter.
    pub http: Option<HttpView<'a>>,
    /// The downstream connection's local (destination) address.
    pub local: SocketAddr,
    /// The downstream connection's peer.
    pub direct_remote: SocketAddr,
    /// The downstream address after x-forwarded-for processing.
    pub remote: IpAddr,
    /// Whether the downstream connection is TLS ("authenticated").
    pub tls: bool,
    /// The verified client certificate, when one was presented.
    pub peer: Option<&'a PeerIdentity>,
    /// SNI, as the TLS inspector saw it; empty without one.
    pub requested_server_name: &'a str,
    pub metadata: &'a DynamicMetadata,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
    Log,
}

#[derive(Debug)]
struct Policy {
    permissions: Vec<Permission>,
    principals: Vec<Principal>,
}

/// A compiled `envoy.config.rbac.v3.RBAC`.
#[derive(Debug)]
pub struct Engine {
    action: Action,
    /// Sorted by name.
    policies: Vec<(String, Policy)>,
}

/// What one engine decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<'e> {
    pub allowed: bool,
    /// The first matching policy (by name), if any.
    pub policy: Option<&'e str>,
}

impl Engine {
    /// Compiles rules; errors carry a field path relative to the message.
    pub fn compile(rules: &Rbac) -> Result<Self, (String, String)> {
        let action = match ActionProto::try_from(rules.action) {
            Ok(ActionProto::Allow) => Action::Allow,
            Ok(ActionProto::Deny) => Action::Deny,
            Ok(ActionProto::Log) => Action::Log,
            Err(_) => {
                return Err(("action".into(), format!("unknown action {}", rules.action)));
            }
        };
        let mut names: Vec<&String> = rules.policies.keys().collect();
        names.sort();
        let mut policies = Vec::with_capacity(names.len());
        for name in names {
            let p = &rules.policies[name];
            let field = format!("policies[\"{name}\"]");
            if p.condition.is_some() || p.checked_condition.is_some() {
                return Err((
                    format!("{field}.condition"),
                    "CEL conditions are not supported".into(),
                ));
            }
            if p.permissions.is_empty() {
                return Err((
                    format!("{field}.permissions"),
                    "at least one permission is required".into(),
                ));
            }
            if p.principals.is_empty() {
                return Err((
                    format!("{field}.principals"),
                    "at least one principal is required".into(),
                ));
            }
            let permissions = p
                .permissions
                .iter()
                .enumerate()
                .map(|(i, x)| {
                    Permission::compile(x)
                        .map_err(|(f, m)| (join(&format!("{field}.permissions[{i}]"), &f), m))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let principals = p
                .principals
                .iter()
                .enumerate()
                .map(|(i, x)| {
                    Principal::compile(x)
                        .map_err(|(f, m)| (join(&format!("{field}.principals[{i}]"), &f), m))
                })
                .collect::<Result<Vec<_>, _>>()?;
            policies.push((
                name.clone(),
                Policy {
                    permissions,
                    principals,
                },
            ));
        }
        Ok(Self { action, policies })
    }

    pub fn action(&self) -> Action {
        self.action
    }

    /// The first policy (in name order) that the input matches.
    pub fn matching_policy(&self, input: &Input<'_>) -> Option<&str> {
        self.policies
            .iter()
            .find(|(_, p)| {
                p.permissions.iter().any(|x| x.matches(input))
                    && p.principals.iter().any(|x| x.matches(input))
            })
            .map(|(name, _)| name.as_str())
    }

    pub fn evaluate(&self, input: &Input<'_>) -> Decision<'_> {
        let policy = self.matching_policy(input);
        let allowed = match self.action {
            Action::Allow => policy.is_some(),
            Action::Deny => policy.is_none(),
            Action::Log => true,
        };
        Decision { allowed, policy }
    }
}

fn join(prefix: &str, field: &str) -> String {
    if field.is_empty() {
        prefix.to_string()
    } else {
        format!("{prefix}.{field}")
    }
}

/// Counters of one RBAC filter, named as Envoy names them.
#[derive(Debug, Default)]
pub struct RbacStats {
    pub allowed: AtomicU64,
    pub denied: AtomicU64,
    pub shadow_allowed: AtomicU64,
    pub shadow_denied: AtomicU64,
}

impl RbacStats {
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Envoy's counter names: the enforced ones under `rules_prefix`, the
    /// shadow ones under `shadow_prefix` (both already ending in `.` or
    /// empty), relative to the filter's `...rbac.` root.
    pub fn named(&self, rules_prefix: &str, shadow_prefix: &str) -> Vec<(String, u64)> {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            (format!("{rules_prefix}allowed"), load(&self.allowed)),
            (format!("{rules_prefix}denied"), load(&self.denied)),
            (
                format!("{shadow_prefix}shadow_allowed"),
                load(&self.shadow_allowed),
            ),
            (
                format!("{shadow_prefix}shadow_denied"),
                load(&self.shadow_denied),
            ),
        ]
    }

    pub fn snapshot(&self) -> [(&'static str, u64); 4] {
        [
            ("allowed", self.allowed.load(Ordering::Relaxed)),
            ("denied", self.denied.load(Ordering::Relaxed)),
            (
                "shadow_allowed",
                self.shadow_allowed.load(Ordering::Relaxed),
            ),
            ("shadow_denied", self.shadow_denied.load(Ordering::Relaxed)),
        ]
    }
}

/// The enforced and shadow engines of one filter, and what running them
/// does besides deciding: stats and dynamic metadata.
#[derive(Debug, Default)]
pub struct Engines {
    pub enforced: Option<Engine>,
    pub shadow: Option<Engine>,
    pub shadow_stat_prefix: String,
}

/// The outcome of a filter's evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Denied; the effective policy (`none` when no policy matched), for
    /// the response code details.
    Deny(String),
}

impl Engines {
    /// Runs the shadow engine (stats and metadata only), then the enforced
    /// one. Metadata is written under `namespace` (the filter's name).
    pub fn run(
        &self,
        input: &Input<'_>,
        stats: &RbacStats,
        namespace: &str,
        out: &mut DynamicMetadata,
    ) -> Verdict {
        let mut writes: Vec<(String, Map<String, Value>)> = Vec::new();
        if let Some(shadow) = &self.shadow {
            let d = shadow.evaluate(input);
            let result = if d.allowed {
                RbacStats::bump(&stats.shadow_allowed);
                "allowed"
            } else {
                RbacStats::bump(&stats.shadow_denied);
                "denied"
            };
            let mut fields = Map::new();
            if let Some(p) = d.policy {
                fields.insert(
                    format!("{}shadow_effective_policy_id", self.shadow_stat_prefix),
                    Value::String(p.to_string()),
                );
            }
            fields.insert(
                format!("{}shadow_engine_result", self.shadow_stat_prefix),
                Value::String(result.into()),
            );
            writes.push((namespace.to_string(), fields));
        }
        let verdict = match &self.enforced {
            None => Verdict::Allow,
            Some(engine) => {
                let d = engine.evaluate(input);
                if engine.action() == Action::Log {
                    let mut fields = Map::new();
                    fields.insert("access_log_hint".into(), Value::Bool(d.policy.is_some()));
                    writes.push(("envoy.common".into(), fields));
                }
                if d.allowed {
                    RbacStats::bump(&stats.allowed);
                    Verdict::Allow
                } else {
                    RbacStats::bump(&stats.denied);
                    Verdict::Deny(d.policy.unwrap_or("none").to_string())
                }
            }
        };
        for (ns, fields) in writes {
            out.merge(&ns, fields);
        }
        verdict
    }
}

/// Envoy's response code details for a denial: whitespace in the policy
/// name becomes `_`.
pub fn response_detail(policy: &str) -> String {
    let sanitized: String = policy
        .chars()
        .map(|c| if c.is_whitespace() { '_' } else { c })
        .collect();
    format!("rbac_access_denied_matched_policy[{sanitized}]")
}

#[cfg(test)]
mod tests;
