//! `networking.istio.io` kinds, typed as Istio's YAML spells them.
//!
//! Optional scalars are `Option`s so that "unset" (which often means an
//! Istio default, see [`crate::defaults`]) stays distinguishable from a
//! value. Unknown fields are rejected, as Istio's CRD schemas do.

pub mod common;
pub mod destination_rule;
pub mod gateway;
pub mod service_entry;
pub mod sidecar;
pub mod virtual_service;
pub mod workload_entry;
pub mod workload_group;

pub use common::{
    Destination, HeaderOperations, Headers, Percent, PortSelector, StringMatch, StringMatchKind,
    WorkloadSelector,
};
pub use destination_rule::DestinationRule;
pub use gateway::Gateway;
pub use service_entry::ServiceEntry;
pub use sidecar::Sidecar;
pub use virtual_service::VirtualService;
pub use workload_entry::WorkloadEntry;
pub use workload_group::WorkloadGroup;

/// The API group of these kinds.
pub const GROUP: &str = "networking.istio.io";
