//! Envoy's retry policy for the router: which outcomes are retried, how
//! many times, with what back-off, and which host to try next.

use std::time::Duration;

use envoy_types::pb::envoy::config::route::v3::RetryPolicy;
use http::{HeaderMap, StatusCode};

use crate::cluster::UpstreamError;
use crate::duration::to_std;

/// Requests whose body is larger are sent once, without retries (the body
/// would have to be kept for replay).
pub(crate) const RETRY_BODY_LIMIT: usize = 64 * 1024;

const PREVIOUS_HOSTS: &str = "envoy.retry_host_predicates.previous_hosts";

#[derive(Debug, Default, Clone, Copy)]
struct On {
    five_xx: bool,
    gateway_error: bool,
    reset: bool,
    connect_failure: bool,
    refused_stream: bool,
    retriable_4xx: bool,
    retriable_status_codes: bool,
    grpc_cancelled: bool,
    grpc_deadline_exceeded: bool,
    grpc_internal: bool,
    grpc_resource_exhausted: bool,
    grpc_unavailable: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct RetryPlan {
    on: On,
    pub(crate) num_retries: u32,
    pub(crate) per_try_timeout: Option<Duration>,
    base: Duration,
    max: Duration,
    status_codes: Vec<u16>,
    /// Avoid hosts already tried (the previous_hosts predicate).
    pub(crate) avoid_previous_hosts: bool,
    pub(crate) host_selection_attempts: u32,
}

/// The outcome of one attempt, as far as the retry decision goes.
pub(crate) enum Attempt<'a> {
    Failed(&'a UpstreamError),
    Responded {
        status: StatusCode,
        headers: &'a HeaderMap,
    },
}

impl RetryPlan {
    pub(crate) fn new(p: &RetryPolicy) -> Self {
        let mut on = On::default();
        for cond in p.retry_on.split(',').map(str::trim) {
            match cond {
                "5xx" => on.five_xx = true,
                "gateway-error" => on.gateway_error = true,
                "reset" => on.reset = true,
                "connect-failure" => on.connect_failure = true,
                "refused-stream" => on.refused_stream = true,
                "retriable-4xx" => on.retriable_4xx = true,
                "retriable-status-codes" => on.retriable_status_codes = true,
                "cancelled" => on.grpc_cancelled = true,
                "deadline-exceeded" => on.grpc_deadline_exceeded = true,
                "internal" => on.grpc_internal = true,
                "resource-exhausted" => on.grpc_resource_exhausted = true,
                "unavailable" => on.grpc_unavailable = true,
                // Unknown conditions are ignored, as Envoy does.
                _ => {}
            }
        }
        let back_off = p.retry_back_off.as_ref();
        let base = back_off
            .and_then(|b| b.base_interval.as_ref())
            .map(to_std)
            .unwrap_or(Duration::from_millis(25));
        let max = back_off
            .and_then(|b| b.max_interval.as_ref())
            .map(to_std)
            .unwrap_or(base * 10);
        Self {
            on,
            // Envoy retries once when num_retries is unset.
            num_retries: p.num_retries.map(|n| n.value).unwrap_or(1),
            per_try_timeout: p
                .per_try_timeout
                .as_ref()
                .map(to_std)
                .filter(|d| !d.is_zero()),
            base,
            max,
            status_codes: p
                .retriable_status_codes
                .iter()
                .filter_map(|c| u16::try_from(*c).ok())
                .collect(),
            avoid_previous_hosts: p
                .retry_host_predicate
                .iter()
                .any(|h| h.name == PREVIOUS_HOSTS),
            host_selection_attempts: u32::try_from(p.host_selection_retry_max_attempts.max(1))
                .unwrap_or(1),
        }
    }

    /// Whether this outcome calls for another attempt.
    pub(crate) fn should_retry(&self, attempt: &Attempt<'_>) -> bool {
        let on = &self.on;
        match attempt {
            Attempt::Failed(e) => {
                let connect =
                    matches!(e, UpstreamError::Connect(_) | UpstreamError::ConnectTimeout);
                let refused = matches!(e, UpstreamError::Reset(m) if m.contains("refused"));
                on.five_xx
                    || on.gateway_error
                    || on.reset
                    || (connect && on.connect_failure)
                    || (refused && on.refused_stream)
            }
            Attempt::Responded { status, headers } => {
                let code = status.as_u16();
                (on.five_xx && code >= 500)
                    || (on.gateway_error && matches!(code, 502..=504))
                    || (on.retriable_4xx && code == 409)
                    || (on.retriable_status_codes && self.status_codes.contains(&code))
                    || self.grpc_retriable(headers)
            }
        }
    }

    fn grpc_retriable(&self, headers: &HeaderMap) -> bool {
        let Some(code) = headers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u32>().ok())
        else {
            return false;
        };
        let on = &self.on;
        matches!(
            (
                code,
                on.grpc_cancelled,
                on.grpc_deadline_exceeded,
                on.grpc_internal,
                on.grpc_resource_exhausted,
                on.grpc_unavailable
            ),
            (1, true, ..)
                | (4, _, true, ..)
                | (13, _, _, true, ..)
                | (8, _, _, _, true, _)
                | (14, _, _, _, _, true)
        )
    }

    /// Envoy's back-off: exponential from the base interval, capped at the
    /// max, with full jitter.
    pub(crate) fn back_off(&self, retry: u32) -> Duration {
        let exp = self.base.saturating_mul(1u32 << retry.min(16));
        let cap = exp.min(self.max);
        let millis = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX).max(1);
        Duration::from_millis(rand::random_range(0..millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::UInt32Value;

    fn plan(on: &str, codes: &[u32]) -> RetryPlan {
        RetryPlan::new(&RetryPolicy {
            retry_on: on.into(),
            num_retries: Some(UInt32Value { value: 2 }),
            retriable_status_codes: codes.to_vec(),
            ..Default::default()
        })
    }

    fn responded(plan: &RetryPlan, status: u16, grpc: Option<&str>) -> bool {
        let mut h = HeaderMap::new();
        if let Some(g) = grpc {
            h.insert("grpc-status", g.parse().expect("valid"));
        }
        plan.should_retry(&Attempt::Responded {
            status: StatusCode::from_u16(status).expect("valid"),
            headers: &h,
        })
    }

    #[test]
    fn istio_default_policy_retries_connect_failures_503_and_unavailable() {
        let p = plan(
            "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
            &[503],
        );
        assert!(p.should_retry(&Attempt::Failed(&UpstreamError::Connect("refused".into()))));
        assert!(responded(&p, 503, None));
        assert!(!responded(&p, 500, None));
        assert!(responded(&p, 200, Some("14")));
        assert!(!responded(&p, 200, Some("13")));
        assert_eq!(p.num_retries, 2);
    }

    #[test]
    fn five_xx_and_gateway_error() {
        assert!(responded(&plan("5xx", &[]), 500, None));
        assert!(!responded(&plan("gateway-error", &[]), 500, None));
        assert!(responded(&plan("gateway-error", &[]), 504, None));
        assert!(responded(&plan("retriable-4xx", &[]), 409, None));
        assert!(!responded(&plan("retriable-4xx", &[]), 404, None));
    }

    #[test]
    fn back_off_stays_within_the_cap() {
        let p = plan("5xx", &[]);
        for retry in 0..20 {
            assert!(p.back_off(retry) <= Duration::from_millis(250));
        }
    }
}
