//! `envoy.filters.http.fault`: injected delays and aborts, from configuration
//! or (when the config allows it) from request headers.

use std::time::Duration;

use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
    HttpFault, fault_abort::ErrorType,
};
use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
use envoy_types::pb::google::protobuf::Any;
use http::HeaderMap;
use prost::Message;

use super::fraction_hits;
use crate::duration::to_std;

const DELAY_HEADER: &str = "x-envoy-fault-delay-request";
const DELAY_PERCENT_HEADER: &str = "x-envoy-fault-delay-request-percentage";
const ABORT_HEADER: &str = "x-envoy-fault-abort-request";
const ABORT_GRPC_HEADER: &str = "x-envoy-fault-abort-grpc-request";
const ABORT_PERCENT_HEADER: &str = "x-envoy-fault-abort-request-percentage";
const DOWNSTREAM_NODE_HEADER: &str = "x-envoy-downstream-service-node";

#[derive(Debug, Clone)]
enum DelaySource {
    Fixed(Duration),
    Header,
}

#[derive(Debug, Clone)]
enum AbortSource {
    Http(u16),
    Grpc(u32),
    Header,
}

#[derive(Debug, Clone)]
pub struct FaultConfig {
    delay: Option<(DelaySource, Option<FractionalPercent>)>,
    abort: Option<(AbortSource, Option<FractionalPercent>)>,
    upstream_cluster: String,
    downstream_nodes: Vec<String>,
}

/// What the filter decided for one request.
#[derive(Debug, Default)]
pub struct FaultDecision {
    pub delay: Option<Duration>,
    pub abort: Option<Abort>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abort {
    Http(u16),
    Grpc(u32),
}

impl FaultConfig {
    pub fn compile(any: &Any) -> Result<Self, String> {
        let f = HttpFault::decode(any.value.as_slice())
            .map_err(|e| format!("invalid HTTPFault: {e}"))?;
        if !f.headers.is_empty() {
            return Err("headers: fault header matchers are not supported yet".into());
        }
        if f.response_rate_limit.is_some() {
            return Err("response_rate_limit: not supported yet".into());
        }
        let delay = match f.delay {
            None => None,
            Some(d) => {
                let src = match d.fault_delay_secifier {
                    Some(FaultDelaySecifier::FixedDelay(dur)) => DelaySource::Fixed(to_std(&dur)),
                    Some(FaultDelaySecifier::HeaderDelay(_)) => DelaySource::Header,
                    None => return Err("delay: fixed_delay or header_delay is required".into()),
                };
                Some((src, d.percentage))
            }
        };
        let abort = match f.abort {
            None => None,
            Some(a) => {
                let src = match a.error_type {
                    Some(ErrorType::HttpStatus(s)) => {
                        if !(200..600).contains(&s) {
                            return Err(format!("abort.http_status: {s} is not in [200, 600)"));
                        }
                        AbortSource::Http(s as u16)
                    }
                    Some(ErrorType::GrpcStatus(s)) => AbortSource::Grpc(s),
                    Some(ErrorType::HeaderAbort(_)) => AbortSource::Header,
                    None => {
                        return Err(
                            "abort: http_status, grpc_status or header_abort is required".into(),
                        );
                    }
                };
                Some((src, a.percentage))
            }
        };
        Ok(Self {
            delay,
            abort,
            upstream_cluster: f.upstream_cluster,
            downstream_nodes: f.downstream_nodes,
        })
    }

    /// Decides the fault for a request going to `cluster`. `random` draws are
    /// independent for delay and abort, as in Envoy.
    pub fn decide(
        &self,
        headers: &HeaderMap,
        cluster: Option<&str>,
        random: (u64, u64),
    ) -> FaultDecision {
        let mut decision = FaultDecision::default();
        if !self.upstream_cluster.is_empty() && cluster != Some(self.upstream_cluster.as_str()) {
            return decision;
        }
        if !self.downstream_nodes.is_empty() {
            let node = headers
                .get(DOWNSTREAM_NODE_HEADER)
                .and_then(|v| v.to_str().ok());
            if !node.is_some_and(|n| self.downstream_nodes.iter().any(|d| d == n)) {
                return decision;
            }
        }
        if let Some((src, pct)) = &self.delay {
            let pct = effective_percent(
                pct.as_ref(),
                matches!(src, DelaySource::Header),
                headers,
                DELAY_PERCENT_HEADER,
            );
            if fraction_hits(pct.as_ref(), 0, random.0) {
                decision.delay = match src {
                    DelaySource::Fixed(d) => Some(*d),
                    DelaySource::Header => {
                        header_u64(headers, DELAY_HEADER).map(Duration::from_millis)
                    }
                };
            }
        }
        if let Some((src, pct)) = &self.abort {
            let pct = effective_percent(
                pct.as_ref(),
                matches!(src, AbortSource::Header),
                headers,
                ABORT_PERCENT_HEADER,
            );
            if fraction_hits(pct.as_ref(), 0, random.1) {
                decision.abort = match src {
                    AbortSource::Http(s) => Some(Abort::Http(*s)),
                    AbortSource::Grpc(s) => Some(Abort::Grpc(*s)),
                    AbortSource::Header => header_abort(headers),
                };
            }
        }
        decision
    }
}

/// With header-controlled faults, a percentage header may lower (never raise)
/// the configured percentage; unset configured percentage means 100%.
fn effective_percent(
    configured: Option<&FractionalPercent>,
    header_controlled: bool,
    headers: &HeaderMap,
    header: &str,
) -> Option<FractionalPercent> {
    let base = match configured {
        Some(p) => *p,
        None if header_controlled => FractionalPercent {
            numerator: 100,
            denominator: 0,
        },
        None => return None,
    };
    if !header_controlled {
        return Some(base);
    }
    match header_u64(headers, header) {
        Some(n) => {
            let n = u32::try_from(n).unwrap_or(u32::MAX);
            Some(FractionalPercent {
                numerator: n.min(base.numerator),
                denominator: base.denominator,
            })
        }
        None => Some(base),
    }
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

fn header_abort(headers: &HeaderMap) -> Option<Abort> {
    if let Some(s) = header_u64(headers, ABORT_HEADER)
        && (200..600).contains(&s)
    {
        return Some(Abort::Http(s as u16));
    }
    header_u64(headers, ABORT_GRPC_HEADER)
        .and_then(|s| u32::try_from(s).ok())
        .map(Abort::Grpc)
}
