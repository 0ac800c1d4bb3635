//! The Trellis data plane: a proxy driven by Envoy xDS v3.
//!
//! Data flows `listener` (bind, accept, inspect, pick a filter chain) →
//! `http` (connection manager, filters, router) or `tcp_proxy` → `cluster`
//! (hosts, balancing, connection pools). Configuration flows the other way:
//! the bootstrap and the ADS client (`ads`) feed the `store`, which compiles
//! resources and publishes an immutable `snapshot` that requests read.

pub mod access_log;
pub mod addr;
pub mod admin;
mod ads;
pub mod agent;
pub mod agent_metrics;
pub mod app;
pub mod body;
pub mod bootstrap;
pub mod cidr;
pub mod cluster;
pub mod drain;
mod duration;
pub mod error;
pub mod health_stats;
pub mod http;
pub mod listener;
mod local_address;
pub mod matcher;
mod memory;
pub mod metrics;
pub mod rbac;
pub mod snapshot;
pub mod store;
pub mod tcp_proxy;
pub mod tls;
pub mod trace;
pub mod workload_cert;

pub use app::{BootstrapSource, ProxyOptions, run, shutdown_signal};
