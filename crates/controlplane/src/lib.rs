//! The control plane (Istio's istiod role): configuration from a
//! [`config::ConfigSource`] and the local workload manifest becomes a
//! [`registry::Registry`] and a [`pilot::PushContext`]; every connected proxy
//! gets the resources `pilot` generates for it over ADS, and again whenever
//! the configuration changes. Unchanged resources keep their versions, so a
//! change reaches only the proxies (and, on delta, the resources) it affects.
//! A change that only moves endpoints rebuilds only the ClusterLoadAssignments
//! it touches, and state-of-the-world pushes of them carry only those.

mod debug;
mod incremental;
pub mod metrics;
mod push;
mod secure;

pub use debug::serve_debug;
pub use push::ControlPlane;
pub use secure::serve_secure;
