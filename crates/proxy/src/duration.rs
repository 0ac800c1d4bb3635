//! Protobuf durations as `std::time::Duration`.

use std::time::Duration;

use envoy_types::pb::google::protobuf::Duration as PbDuration;

/// Negative durations clamp to zero; validation of ranges is the caller's.
pub(crate) fn to_std(d: &PbDuration) -> Duration {
    let secs = u64::try_from(d.seconds).unwrap_or(0);
    let nanos = u32::try_from(d.nanos).unwrap_or(0);
    Duration::new(secs, nanos)
}

pub(crate) fn duration_or(d: Option<&PbDuration>, default: Duration) -> Duration {
    d.map(to_std).unwrap_or(default)
}

/// Envoy's convention for timeouts: unset means `default`, zero means disabled.
pub(crate) fn timeout_or(d: Option<&PbDuration>, default: Option<Duration>) -> Option<Duration> {
    match d.map(to_std) {
        None => default,
        Some(z) if z.is_zero() => None,
        Some(v) => Some(v),
    }
}
