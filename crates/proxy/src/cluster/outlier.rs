//! Outlier detection (passive health checking).

/// Per-host outlier-detection counters and ejection state.
#[derive(Debug, Default)]
pub struct HostOutlier {}
