//! Operations commands of the `trellis` binary, istioctl's in substance:
//!
//! - [`analyze`]: `trellis analyze <dir|files...>` — load, validate and
//!   cross-check configuration files, print Istio-style messages
//!   (`Error [IST0101] (VirtualService default/reviews x.yaml:12 spec...) ...`).
//! - [`status`]: `trellis proxy-status` — per-proxy xDS sync state from the
//!   control plane's `/debug/syncz`.
//! - [`proxy_config`]: `trellis proxy-config <type> <proxy>` — tables of a
//!   proxy's listeners, routes, clusters, endpoints and secrets from its
//!   admin `/config_dump` (Trellis proxy or Envoy).
//!
//! Each command is a `clap::Args` struct and a `run(&args, &mut dyn Write)
//! -> anyhow::Result<i32>` returning the process exit code.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod analyze;
pub mod http;
pub mod proxy_config;
pub mod status;
mod x509;
mod yamlpos;

pub use analyze::AnalyzeArgs;
pub use proxy_config::ProxyConfigArgs;
pub use status::ProxyStatusArgs;

/// Default control-plane monitoring address (Istio's 15014).
pub const DEFAULT_CONTROL_PLANE: &str = "http://127.0.0.1:15014";
