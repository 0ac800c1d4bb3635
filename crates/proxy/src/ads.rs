//! Connects the configuration store to the management server over ADS.

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;

use crate::admin::AdminState;
use crate::bootstrap::AdsTarget;
use crate::store::ConfigStore;

pub(crate) fn start(target: AdsTarget, node: Node, store: Arc<ConfigStore>, admin: Arc<AdminState>) {
    let _ = (target, node, store, admin);
    tracing::warn!("ADS client not wired yet");
}
