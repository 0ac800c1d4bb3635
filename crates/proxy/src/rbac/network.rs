//! `envoy.filters.network.rbac`: decides once, when the first bytes arrive
//! from the downstream (ONE_TIME_ON_FIRST_BYTE), whether the connection may
//! go on; a denied connection is closed, after `delay_deny` if set.
//! Header matchers see no headers here (Envoy passes an empty header map).

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::{
    Rbac as NetworkRbacProto, rbac::EnforcementType,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use super::{DynamicMetadata, Engine, Engines, Input, RbacStats, Verdict};

pub const TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";
pub const FILTER_NAME: &str = "envoy.filters.network.rbac";

#[derive(Debug)]
pub struct NetworkRbac {
    pub stat_prefix: String,
    engines: Engines,
    pub delay_deny: Option<Duration>,
    pub stats: Arc<RbacStats>,
}

impl NetworkRbac {
    /// Compiles the filter; errors carry a field path inside the config.
    pub fn compile(any: &Any) -> Result<Self, (String, String)> {
        let p = NetworkRbacProto::decode(any.value.as_slice())
            .map_err(|e| (String::new(), format!("invalid RBAC: {e}")))?;
        if p.stat_prefix.is_empty() {
            return Err(("stat_prefix".into(), "must not be empty".into()));
        }
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
        match EnforcementType::try_from(p.enforcement_type) {
            Ok(EnforcementType::OneTimeOnFirstByte) => {}
            Ok(EnforcementType::Continuous) => {
                // Without protocol filters emitting metadata the decision
                // cannot change after the first byte: same outcome.
            }
            Err(_) => return Err(("enforcement_type".into(), "unknown enforcement type".into())),
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
        let delay_deny = p
            .delay_deny
            .as_ref()
            .map(|d| {
                if d.seconds < 0 || d.nanos < 0 {
                    Err(("delay_deny".to_string(), "must not be negative".to_string()))
                } else {
                    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
                }
            })
            .transpose()?
            .filter(|d| !d.is_zero());
        Ok(Self {
            stat_prefix: p.stat_prefix,
            engines: Engines {
                enforced,
                shadow,
                shadow_stat_prefix: p.shadow_rules_stat_prefix,
            },
            delay_deny,
            stats: Arc::default(),
        })
    }

    /// Counters as Envoy names them: `<stat_prefix>.rbac.allowed`, ...
    pub fn stat_values(&self) -> Vec<(String, u64)> {
        let root = self.stat_prefix.trim_end_matches('.');
        self.stats
            .named("", &self.engines.shadow_stat_prefix)
            .into_iter()
            .map(|(k, v)| (format!("{root}.rbac.{k}"), v))
            .collect()
    }

    /// Whether the connection may proceed.
    pub fn allows(&self, input: &Input<'_>, metadata: &mut DynamicMetadata) -> bool {
        match self.engines.run(input, &self.stats, FILTER_NAME, metadata) {
            Verdict::Allow => true,
            Verdict::Deny(policy) => {
                tracing::debug!(
                    stat_prefix = %self.stat_prefix,
                    details = %super::response_detail(&policy),
                    "RBAC denied the connection"
                );
                false
            }
        }
    }
}

fn prefixed(prefix: &str, field: &str) -> String {
    if field.is_empty() {
        prefix.to_string()
    } else {
        format!("{prefix}.{field}")
    }
}
