//! The load-balancing part of a `Cluster` resource, validated and with Envoy's defaults.

use envoy_types::pb::envoy::config::cluster::v3::Cluster as ClusterProto;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    self, LbPolicy, common_lb_config::LocalityConfigSpecifier, ring_hash_lb_config::HashFunction,
};

/// Envoy's `healthy_panic_threshold` default, in percent.
pub(crate) const DEFAULT_PANIC_THRESHOLD: u64 = 50;
/// `RingHashLbConfig.minimum_ring_size` default.
pub(crate) const DEFAULT_MIN_RING_SIZE: u64 = 1024;
/// `RingHashLbConfig.maximum_ring_size` default, also the most either may be set to.
pub(crate) const MAX_RING_SIZE: u64 = 8 * 1024 * 1024;
/// `MaglevLbConfig.table_size` default (the paper's recommended prime).
pub(crate) const DEFAULT_MAGLEV_TABLE_SIZE: u64 = 65537;
/// The largest `MaglevLbConfig.table_size` Envoy's validation accepts.
pub(crate) const MAX_MAGLEV_TABLE_SIZE: u64 = 5_000_011;

/// How hosts are picked.
#[derive(Debug, Clone, PartialEq)]
pub enum Policy {
    /// `ROUND_ROBIN` (and `CLUSTER_PROVIDED` for clusters that are not ORIGINAL_DST).
    RoundRobin,
    LeastRequest {
        /// `least_request_lb_config.choice_count`, default 2.
        choice_count: u32,
        /// `active_request_bias`, default 1.0 (invalid values fall back to 1.0 as in Envoy).
        active_request_bias: f64,
        /// Whether the bias was configured: Envoy then always uses weighted selection.
        bias_configured: bool,
    },
    Random,
    RingHash {
        min_ring_size: u64,
        max_ring_size: u64,
        hash_function: RingHashFunction,
    },
    Maglev {
        table_size: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingHashFunction {
    XxHash,
    MurmurHash2,
}

/// The compiled load-balancing configuration of a cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct LbConfig {
    pub policy: Policy,
    /// `common_lb_config.healthy_panic_threshold`, rounded to a whole percent as Envoy
    /// does (0 disables panic mode).
    pub healthy_panic_threshold: u64,
    /// `common_lb_config.locality_weighted_lb_config` is set.
    pub locality_weighted: bool,
    /// `common_lb_config.consistent_hashing_lb_config.use_hostname_for_hashing`.
    pub use_hostname_for_hashing: bool,
    /// `consistent_hashing_lb_config.hash_balance_factor` (bounded loads); 0 is off.
    pub hash_balance_factor: u32,
}

impl Default for LbConfig {
    fn default() -> Self {
        Self {
            policy: Policy::RoundRobin,
            healthy_panic_threshold: DEFAULT_PANIC_THRESHOLD,
            locality_weighted: false,
            use_hostname_for_hashing: false,
            hash_balance_factor: 0,
        }
    }
}

impl LbConfig {
    /// Validates the cluster's `lb_policy`, `lb_config` and `common_lb_config`. Errors
    /// name the offending field (relative to the cluster).
    pub fn compile(proto: &ClusterProto) -> Result<Self, (String, String)> {
        let err = |field: &str, msg: String| Err((field.to_string(), msg));
        if proto.load_balancing_policy.is_some() {
            return err(
                "load_balancing_policy",
                "typed load balancing policies are not supported yet; use lb_policy".into(),
            );
        }
        let lb_policy = LbPolicy::try_from(proto.lb_policy).map_err(|_| {
            (
                "lb_policy".to_string(),
                format!("unknown load balancing policy {}", proto.lb_policy),
            )
        })?;
        let policy = match lb_policy {
            LbPolicy::RoundRobin | LbPolicy::ClusterProvided => Policy::RoundRobin,
            LbPolicy::Random => Policy::Random,
            LbPolicy::LeastRequest => {
                let c = match &proto.lb_config {
                    Some(cluster::LbConfig::LeastRequestLbConfig(c)) => Some(c),
                    _ => None,
                };
                let choice_count = c.and_then(|c| c.choice_count).map_or(2, |v| v.value);
                if choice_count < 2 {
                    return err(
                        "least_request_lb_config.choice_count",
                        format!("must be at least 2, got {choice_count}"),
                    );
                }
                let bias = c.and_then(|c| c.active_request_bias.as_ref());
                // Envoy warns and uses 1.0 for a negative or NaN bias.
                let active_request_bias = bias
                    .map(|b| b.default_value)
                    .filter(|b| *b >= 0.0)
                    .unwrap_or(1.0);
                Policy::LeastRequest {
                    choice_count,
                    active_request_bias,
                    bias_configured: bias.is_some(),
                }
            }
            LbPolicy::RingHash => {
                let c = match &proto.lb_config {
                    Some(cluster::LbConfig::RingHashLbConfig(c)) => Some(c),
                    _ => None,
                };
                let min_ring_size = c
                    .and_then(|c| c.minimum_ring_size)
                    .map_or(DEFAULT_MIN_RING_SIZE, |v| v.value);
                let max_ring_size = c
                    .and_then(|c| c.maximum_ring_size)
                    .map_or(MAX_RING_SIZE, |v| v.value);
                if min_ring_size > MAX_RING_SIZE {
                    return err(
                        "ring_hash_lb_config.minimum_ring_size",
                        format!("must be at most {MAX_RING_SIZE}, got {min_ring_size}"),
                    );
                }
                if max_ring_size > MAX_RING_SIZE {
                    return err(
                        "ring_hash_lb_config.maximum_ring_size",
                        format!("must be at most {MAX_RING_SIZE}, got {max_ring_size}"),
                    );
                }
                if min_ring_size > max_ring_size {
                    return err(
                        "ring_hash_lb_config.minimum_ring_size",
                        format!(
                            "ring hash: minimum_ring_size ({min_ring_size}) > maximum_ring_size \
                             ({max_ring_size})"
                        ),
                    );
                }
                let hash_function = match c.map(|c| HashFunction::try_from(c.hash_function)) {
                    None | Some(Ok(HashFunction::XxHash)) => RingHashFunction::XxHash,
                    Some(Ok(HashFunction::MurmurHash2)) => RingHashFunction::MurmurHash2,
                    Some(Err(_)) => {
                        return err(
                            "ring_hash_lb_config.hash_function",
                            "unknown hash function".into(),
                        );
                    }
                };
                Policy::RingHash {
                    min_ring_size,
                    max_ring_size,
                    hash_function,
                }
            }
            LbPolicy::Maglev => {
                let table_size = match &proto.lb_config {
                    Some(cluster::LbConfig::MaglevLbConfig(c)) => c.table_size.map(|v| v.value),
                    _ => None,
                }
                .unwrap_or(DEFAULT_MAGLEV_TABLE_SIZE);
                if table_size > MAX_MAGLEV_TABLE_SIZE {
                    return err(
                        "maglev_lb_config.table_size",
                        format!("must be at most {MAX_MAGLEV_TABLE_SIZE}, got {table_size}"),
                    );
                }
                // Envoy's primality check lets 1 through and then divides by zero; refuse it.
                if table_size < 2 || !is_prime(table_size) {
                    return err(
                        "maglev_lb_config.table_size",
                        format!("the table size of maglev must be prime number, got {table_size}"),
                    );
                }
                Policy::Maglev { table_size }
            }
            other => {
                return err(
                    "lb_policy",
                    format!("{} is not supported", other.as_str_name()),
                );
            }
        };
        let mut cfg = Self {
            policy,
            ..Self::default()
        };
        if let Some(common) = &proto.common_lb_config {
            if let Some(p) = &common.healthy_panic_threshold {
                if !(0.0..=100.0).contains(&p.value) {
                    return err(
                        "common_lb_config.healthy_panic_threshold.value",
                        format!("must be between 0 and 100, got {}", p.value),
                    );
                }
                // PROTOBUF_PERCENT_TO_ROUNDED_INTEGER_OR_DEFAULT(..., 100, 50)
                cfg.healthy_panic_threshold = p.value.round() as u64;
            }
            cfg.locality_weighted = matches!(
                common.locality_config_specifier,
                Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(_))
            );
            // Zone-aware routing needs a local cluster (`cluster_manager.local_cluster_name`),
            // which the proxy never has: Envoy then routes as if it were off.
            if let Some(ch) = &common.consistent_hashing_lb_config {
                cfg.use_hostname_for_hashing = ch.use_hostname_for_hashing;
                if let Some(f) = ch.hash_balance_factor {
                    if f.value < 100 {
                        return err(
                            "common_lb_config.consistent_hashing_lb_config.hash_balance_factor",
                            format!("must be at least 100, got {}", f.value),
                        );
                    }
                    cfg.hash_balance_factor = f.value;
                }
            }
        }
        Ok(cfg)
    }

    /// Whether host selection uses the request's hash (ring hash and Maglev): only then
    /// does the router evaluate the route's hash policy, as Envoy does.
    pub fn uses_hash(&self) -> bool {
        matches!(self.policy, Policy::RingHash { .. } | Policy::Maglev { .. })
    }
}

/// Trial division; table sizes are at most [`MAX_MAGLEV_TABLE_SIZE`].
fn is_prime(n: u64) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n.is_multiple_of(2) {
        return false;
    }
    let mut f = 3;
    while f * f <= n {
        if n.is_multiple_of(f) {
            return false;
        }
        f += 2;
    }
    true
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{
        CommonLbConfig, LeastRequestLbConfig, MaglevLbConfig, RingHashLbConfig,
        common_lb_config::{ConsistentHashingLbConfig, LocalityWeightedLbConfig},
    };
    use envoy_types::pb::envoy::config::core::v3::RuntimeDouble;
    use envoy_types::pb::envoy::r#type::v3::Percent;
    use envoy_types::pb::google::protobuf::{UInt32Value, UInt64Value};

    fn proto(policy: LbPolicy, lb: Option<cluster::LbConfig>) -> ClusterProto {
        ClusterProto {
            name: "c".into(),
            lb_policy: policy as i32,
            lb_config: lb,
            ..Default::default()
        }
    }

    fn field_of(p: &ClusterProto) -> String {
        LbConfig::compile(p).unwrap_err().0
    }

    #[test]
    fn defaults() {
        let c = LbConfig::compile(&proto(LbPolicy::RoundRobin, None)).unwrap();
        assert_eq!(c, LbConfig::default());
        let c = LbConfig::compile(&proto(LbPolicy::LeastRequest, None)).unwrap();
        assert_eq!(
            c.policy,
            Policy::LeastRequest {
                choice_count: 2,
                active_request_bias: 1.0,
                bias_configured: false
            }
        );
        let c = LbConfig::compile(&proto(LbPolicy::RingHash, None)).unwrap();
        assert_eq!(
            c.policy,
            Policy::RingHash {
                min_ring_size: 1024,
                max_ring_size: 8_388_608,
                hash_function: RingHashFunction::XxHash
            }
        );
        assert!(c.uses_hash());
        let c = LbConfig::compile(&proto(LbPolicy::Maglev, None)).unwrap();
        assert_eq!(c.policy, Policy::Maglev { table_size: 65537 });
        assert_eq!(c.healthy_panic_threshold, 50);
    }

    #[test]
    fn invalid_configs_name_the_field() {
        let ring = |min: Option<u64>, max: Option<u64>| {
            proto(
                LbPolicy::RingHash,
                Some(cluster::LbConfig::RingHashLbConfig(RingHashLbConfig {
                    minimum_ring_size: min.map(|value| UInt64Value { value }),
                    maximum_ring_size: max.map(|value| UInt64Value { value }),
                    hash_function: 0,
                })),
            )
        };
        assert_eq!(
            field_of(&ring(Some(2048), Some(1024))),
            "ring_hash_lb_config.minimum_ring_size"
        );
        assert_eq!(
            field_of(&ring(None, Some(MAX_RING_SIZE + 1))),
            "ring_hash_lb_config.maximum_ring_size"
        );
        assert_eq!(
            field_of(&ring(Some(MAX_RING_SIZE + 1), None)),
            "ring_hash_lb_config.minimum_ring_size"
        );
        assert!(LbConfig::compile(&ring(Some(8), Some(8))).is_ok());
        let maglev = |t: u64| {
            proto(
                LbPolicy::Maglev,
                Some(cluster::LbConfig::MaglevLbConfig(MaglevLbConfig {
                    table_size: Some(UInt64Value { value: t }),
                })),
            )
        };
        for bad in [0, 1, 4, 65536, 5_000_013] {
            assert_eq!(
                field_of(&maglev(bad)),
                "maglev_lb_config.table_size",
                "{bad}"
            );
        }
        for good in [2, 3, 7, 65537, 5_000_011] {
            assert!(LbConfig::compile(&maglev(good)).is_ok(), "{good}");
        }
        let mut p = proto(LbPolicy::RoundRobin, None);
        p.lb_policy = 99;
        assert_eq!(field_of(&p), "lb_policy");
        p.lb_policy = LbPolicy::LoadBalancingPolicyConfig as i32;
        assert_eq!(field_of(&p), "lb_policy");
        let lr = proto(
            LbPolicy::LeastRequest,
            Some(cluster::LbConfig::LeastRequestLbConfig(
                LeastRequestLbConfig {
                    choice_count: Some(UInt32Value { value: 1 }),
                    ..Default::default()
                },
            )),
        );
        assert_eq!(field_of(&lr), "least_request_lb_config.choice_count");
        let mut p = proto(LbPolicy::RoundRobin, None);
        p.common_lb_config = Some(CommonLbConfig {
            healthy_panic_threshold: Some(Percent { value: 101.0 }),
            ..Default::default()
        });
        assert_eq!(
            field_of(&p),
            "common_lb_config.healthy_panic_threshold.value"
        );
    }

    #[test]
    fn common_and_policy_options() {
        let mut p = proto(
            LbPolicy::LeastRequest,
            Some(cluster::LbConfig::LeastRequestLbConfig(
                LeastRequestLbConfig {
                    choice_count: Some(UInt32Value { value: 5 }),
                    active_request_bias: Some(RuntimeDouble {
                        default_value: 0.5,
                        runtime_key: String::new(),
                    }),
                    slow_start_config: None,
                },
            )),
        );
        p.common_lb_config = Some(CommonLbConfig {
            healthy_panic_threshold: Some(Percent { value: 33.5 }),
            locality_config_specifier: Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(
                LocalityWeightedLbConfig {},
            )),
            consistent_hashing_lb_config: Some(ConsistentHashingLbConfig {
                use_hostname_for_hashing: true,
                hash_balance_factor: Some(UInt32Value { value: 150 }),
            }),
            ..Default::default()
        });
        let c = LbConfig::compile(&p).unwrap();
        assert_eq!(
            c.policy,
            Policy::LeastRequest {
                choice_count: 5,
                active_request_bias: 0.5,
                bias_configured: true
            }
        );
        assert_eq!(c.healthy_panic_threshold, 34);
        assert!(c.locality_weighted && c.use_hostname_for_hashing);
        assert_eq!(c.hash_balance_factor, 150);
    }
}
