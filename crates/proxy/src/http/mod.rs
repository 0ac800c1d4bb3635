//! The HTTP connection manager: downstream HTTP/1.1 and HTTP/2, the filter
//! chain, routing and forwarding to upstream clusters.

pub mod filters;
pub mod flags;
pub(crate) mod grpc_frames;
pub mod hcm;
pub mod local_reply;
pub(crate) mod log;
pub(crate) mod retry;
mod router;
pub mod server;
pub mod service;

pub use hcm::HcmConfig;
