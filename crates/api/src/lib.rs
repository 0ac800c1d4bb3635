//! Istio configuration object model for Trellis.
//!
//! Trellis reads Istio's own YAML unchanged. This crate turns that YAML into
//! typed Rust values and checks them the way Istio's admission webhook does:
//!
//! - [`load`]: multi-document YAML (`---`, `kind: List`) to [`Object`]s.
//!   Every object keeps its metadata, kind, apiVersion and the file it came
//!   from. Unknown fields in a known Istio kind are rejected with their field
//!   path; kinds Trellis does not model (a Kubernetes `Service`, say) are kept
//!   as [`Spec::Unsupported`].
//! - [`networking`]: `networking.istio.io` kinds (VirtualService,
//!   DestinationRule, Gateway, ServiceEntry, WorkloadEntry, WorkloadGroup,
//!   Sidecar), fully typed.
//! - [`security`]: `security.istio.io` kinds (PeerAuthentication,
//!   AuthorizationPolicy, RequestAuthentication), fully typed.
//! - [`telemetry`]: `telemetry.istio.io` Telemetry, typed.
//! - [`object::Spec`]: `extensions.istio.io` kinds are carried loosely (a
//!   JSON value) for now.
//! - [`validate`]: semantic validation with messages naming file, object and
//!   field (`file: Kind ns/name: spec.http[0].route[1].weight: message`).
//! - [`mesh_config`]: MeshConfig with Istio's defaults.
//! - [`defaults`]: documented Istio defaults that translators apply.
//! - [`duration`]: Istio/Go style durations (`"1s"`, `"0.5s"`, `"1h2m"`).

pub mod defaults;
pub mod duration;
pub mod load;
pub mod mesh_config;
pub mod networking;
pub mod object;
pub mod security;
pub mod telemetry;
pub mod validate;

pub use duration::IstioDuration;
pub use load::{LoadError, parse_documents};
pub use mesh_config::MeshConfig;
pub use object::{Metadata, Object, Spec};
pub use validate::{Severity, Validation, ValidationError, validate};
