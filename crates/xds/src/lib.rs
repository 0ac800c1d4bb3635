//! Envoy xDS v3 for Trellis.
//!
//! - [`descriptors`]: the compiled descriptor pool of Envoy's v3 protos
//!   (reflection for everything JSON/YAML).
//! - [`codec`]: Envoy YAML/JSON (bootstrap files, resources) to envoy-types
//!   messages and back to `/config_dump`-style JSON.
//! - [`type_url`]: xDS type URLs, `Any` packing/unpacking, resource naming.
//! - [`snapshot`]: versioned resource sets per type, and a YAML loader for them.
//! - [`client`]: the ADS client a proxy runs (SotW and delta, ACK/NACK,
//!   reconnect with backoff).
//! - [`server`]: a generic ADS server over a per-node snapshot cache, used by
//!   the control plane and the test harness.

pub mod client;
pub mod codec;
pub mod descriptors;
pub mod server;
pub mod snapshot;
pub mod timestamp;
pub mod type_url;
pub mod typed_struct;

pub use client::{AdsClientConfig, AdsHandle, AdsProtocol, ClientStatus, ResourceSink, TypeStatus};
pub use codec::CodecError;
pub use server::{ProxySyncStatus, SnapshotCache};
pub use snapshot::{Resources, Snapshot, snapshot_from_yaml};
