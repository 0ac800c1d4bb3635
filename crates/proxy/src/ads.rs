//! Connects the configuration store to the management server over ADS.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use xds::client::{AdsClientConfig, AdsProtocol, ResourceSink};

use crate::admin::AdminState;
use crate::bootstrap::{AdsProtocol as BootstrapProtocol, AdsTarget};
use crate::store::{CLUSTER, ConfigStore, LISTENER};

/// How long the proxy waits for the first CDS and LDS before it reports
/// ready anyway (Envoy's `initial_fetch_timeout` default).
const INITIAL_FETCH_TIMEOUT: Duration = Duration::from_secs(15);

struct StoreSink(Arc<ConfigStore>);

impl ResourceSink for StoreSink {
    fn apply(
        &self,
        type_url: &str,
        version: &str,
        resources: &BTreeMap<String, prost_types::Any>,
    ) -> Result<(), String> {
        let mut raw = BTreeMap::new();
        for (name, any) in resources {
            if any.type_url != type_url {
                return Err(format!(
                    "resource '{name}' has type '{}' in a {type_url} response",
                    any.type_url
                ));
            }
            raw.insert(name.clone(), any.value.clone());
        }
        let result = self.0.apply(type_url, version, &raw);
        match &result {
            Ok(()) => tracing::info!(
                type_url = xds::type_url::short_name(type_url),
                version,
                count = raw.len(),
                "xDS update applied"
            ),
            Err(e) => {
                tracing::warn!(type_url = xds::type_url::short_name(type_url), version, error = %e, "xDS update rejected")
            }
        }
        result
    }
}

pub(crate) fn start(
    target: AdsTarget,
    node: Node,
    store: Arc<ConfigStore>,
    admin: Arc<AdminState>,
) -> anyhow::Result<()> {
    let protocol = match target.protocol {
        BootstrapProtocol::StateOfTheWorld => AdsProtocol::StateOfTheWorld,
        BootstrapProtocol::Delta => AdsProtocol::Delta,
    };
    let mut config = AdsClientConfig::from_uri(&target.uri, node, protocol)
        .map_err(|e| anyhow::anyhow!("ADS server '{}': {e}", target.uri))?;
    // The ADS cluster's transport socket, built like any cluster's (with the
    // agent's workload certificate when it names SDS secrets).
    config.tls = target.cluster.as_deref().and_then(|name| {
        let snapshot = store.snapshot().load();
        let tls = snapshot
            .clusters
            .get(name)?
            .all_hosts
            .first()?
            .tls
            .clone()?;
        Some(xds::client::TlsSettings {
            config: Arc::clone(&tls.config),
            server_name: tls.server_name.clone(),
        })
    });
    if config.tls.is_some() {
        tracing::info!(uri = %target.uri, "ADS over TLS");
    }
    let (handle, _task) = xds::client::spawn(config, Arc::new(StoreSink(Arc::clone(&store))));
    let interest = handle.clone();
    store.set_interest_fn(Box::new(move |type_url: &str, names: BTreeSet<String>| {
        interest.set_interest(type_url, names);
    }));
    let mut status = handle.watch_status();
    let _ = admin.xds.set(status.clone());
    tokio::spawn(async move {
        // Keep the client alive for the life of the process: dropping every
        // handle stops it.
        let _handle = handle;
        let initial = async {
            loop {
                {
                    let s = status.borrow();
                    let acked = |t: &str| {
                        s.types
                            .get(t)
                            .is_some_and(|t| !t.acked_version.is_empty() || t.last_update.is_some())
                    };
                    if acked(CLUSTER) && acked(LISTENER) {
                        return;
                    }
                }
                if status.changed().await.is_err() {
                    return;
                }
            }
        };
        if tokio::time::timeout(INITIAL_FETCH_TIMEOUT, initial)
            .await
            .is_err()
        {
            tracing::warn!("initial xDS fetch timed out; serving with what arrived");
        }
        admin.ready.store(true, Ordering::Relaxed);
        std::future::pending::<()>().await;
    });
    Ok(())
}
