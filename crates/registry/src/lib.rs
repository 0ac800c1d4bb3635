//! The service registry: what services exist, on which ports, and which
//! endpoints (workload instances) back them.
//!
//! Sources, in the order Istio gives them precedence:
//! - platform services: Kubernetes `Service`s, or in local mode the services
//!   of the workload manifest (`local`), selecting workloads by labels;
//! - `ServiceEntry` (hosts, ports, resolution, inline endpoints, or a
//!   `workloadSelector` over `WorkloadEntry`s and local workloads);
//! - `WorkloadEntry` (an instance with labels, address, locality, network).
//!
//! The translator (crate `pilot`) reads the registry through [`Registry`]'s
//! query methods only; how it is built stays behind [`Registry::build`].
//!
//! - [`model`]: the registry data types.
//! - [`local`]: the local workload manifest of `trellis up` (kinds
//!   `local.trellis.dev/v1alpha1` `Service` and `Workload`), port assignment.
//! - [`secret`]: TLS credentials from Kubernetes `Secret`s (gateway
//!   `credentialName`).
//! - [`protocol`]: Istio's protocol selection (explicit, `appProtocol`, port
//!   name prefix).
//! - `Registry::build` (module `build`): objects + resolved workloads to a
//!   registry, with diagnostics.

mod build;
pub mod local;
pub mod model;
pub mod protocol;
pub mod secret;

pub use build::{EXPORT_TO_ANNOTATION, TLS_MODE_LABEL};
pub use local::{
    LocalManifest, LocalService, LocalWorkload, ResolvedWorkload, Runner, TcpUpstream, assign_ports,
};
pub use model::*;
