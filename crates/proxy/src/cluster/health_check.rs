//! Active health checking.

/// Per-host active health-check state.
#[derive(Debug, Default)]
pub struct HostHealthCheck {}
