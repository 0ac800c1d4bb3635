//! `envoy.filters.http.local_ratelimit`: a token bucket shared by the
//! listener's connections (or one per route, when configured per route).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent;
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit as Proto;
use envoy_types::pb::google::protobuf::Any;
use http::{HeaderName, HeaderValue};
use prost::Message;

use super::fraction_hits;
use crate::duration::to_std;

#[derive(Debug)]
pub struct LocalRateLimit {
    /// `None` when no token bucket is configured: nothing is limited.
    bucket: Option<Mutex<Bucket>>,
    enabled: Option<RuntimeFractionalPercent>,
    enforced: Option<RuntimeFractionalPercent>,
    pub status: http::StatusCode,
    pub response_headers: Vec<(HeaderName, HeaderValue)>,
}

#[derive(Debug)]
struct Bucket {
    max_tokens: u32,
    tokens_per_fill: u32,
    fill_interval: Duration,
    tokens: u32,
    last_fill: Instant,
}

impl Bucket {
    fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last_fill);
        if elapsed >= self.fill_interval {
            let fills = (elapsed.as_nanos() / self.fill_interval.as_nanos().max(1)) as u64;
            let added = fills.saturating_mul(u64::from(self.tokens_per_fill));
            self.tokens = (u64::from(self.tokens) + added).min(u64::from(self.max_tokens)) as u32;
            self.last_fill += self.fill_interval * u32::try_from(fills).unwrap_or(u32::MAX);
        }
        if self.tokens > 0 {
            self.tokens -= 1;
            true
        } else {
            false
        }
    }
}

/// Outcome for one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Over the limit but not enforced: Envoy only counts it.
    Shadow,
    Limit,
}

impl LocalRateLimit {
    pub fn compile(any: &Any) -> Result<Self, String> {
        let p = Proto::decode(any.value.as_slice())
            .map_err(|e| format!("invalid LocalRateLimit: {e}"))?;
        if !p.descriptors.is_empty() || !p.rate_limits.is_empty() {
            return Err(
                "descriptors: descriptor-based local rate limits are not supported yet".into(),
            );
        }
        let bucket = match p.token_bucket {
            None => None,
            Some(tb) => {
                let fill_interval = tb.fill_interval.as_ref().map(to_std).unwrap_or_default();
                if fill_interval < Duration::from_millis(50) {
                    return Err("token_bucket.fill_interval: must be at least 50ms".into());
                }
                Some(Mutex::new(Bucket {
                    max_tokens: tb.max_tokens,
                    tokens_per_fill: tb.tokens_per_fill.map(|v| v.value).unwrap_or(1),
                    fill_interval,
                    tokens: tb.max_tokens,
                    last_fill: Instant::now(),
                }))
            }
        };
        let status = match p.status.as_ref().map(|s| s.code) {
            None | Some(0) => http::StatusCode::TOO_MANY_REQUESTS,
            Some(code) => http::StatusCode::from_u16(code as u16)
                .ok()
                .filter(|s| s.as_u16() >= 400)
                .ok_or_else(|| format!("status: {code} is not an error status"))?,
        };
        let mut response_headers = Vec::new();
        for (i, h) in p.response_headers_to_add.iter().enumerate() {
            let Some(hv) = &h.header else { continue };
            let name = HeaderName::from_bytes(hv.key.as_bytes()).map_err(|_| {
                format!("response_headers_to_add[{i}].header.key: invalid header name")
            })?;
            let value = HeaderValue::from_str(&hv.value).map_err(|_| {
                format!("response_headers_to_add[{i}].header.value: invalid header value")
            })?;
            response_headers.push((name, value));
        }
        Ok(Self {
            bucket,
            enabled: p.filter_enabled,
            enforced: p.filter_enforced,
            status,
            response_headers,
        })
    }

    /// Envoy's defaults: with `filter_enabled` unset the filter does nothing;
    /// with `filter_enforced` unset an over-limit request is only counted.
    pub fn check(&self, random: (u64, u64)) -> Verdict {
        let enabled = self
            .enabled
            .as_ref()
            .is_some_and(|e| fraction_hits(e.default_value.as_ref(), 0, random.0));
        let Some(bucket) = &self.bucket else {
            return Verdict::Allow;
        };
        if !enabled {
            return Verdict::Allow;
        }
        let took = bucket
            .lock()
            .map(|mut b| b.try_take(Instant::now()))
            .unwrap_or(true);
        if took {
            return Verdict::Allow;
        }
        let enforced = self
            .enforced
            .as_ref()
            .is_some_and(|e| fraction_hits(e.default_value.as_ref(), 0, random.1));
        if enforced {
            Verdict::Limit
        } else {
            Verdict::Shadow
        }
    }
}
