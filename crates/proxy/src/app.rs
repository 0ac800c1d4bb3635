//! Wires the proxy together: bootstrap, configuration store, listeners,
//! admin, the ADS client, and the shutdown sequence.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;

use crate::admin::{self, AdminState, LogLevelFn};
use crate::bootstrap;
use crate::listener::ListenerManager;
use crate::snapshot::SharedSnapshot;
use crate::store::ConfigStore;

/// Where the bootstrap comes from.
#[derive(Debug, Clone)]
pub enum BootstrapSource {
    /// An Envoy bootstrap file (`-c`).
    File(PathBuf),
    /// Built by the agent from a workload's identity.
    Built(Box<envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap>),
}

impl std::fmt::Display for BootstrapSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(p) => write!(f, "{}", p.display()),
            Self::Built(_) => f.write_str("agent bootstrap"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ProxyOptions {
    pub bootstrap: BootstrapSource,
    /// How long listeners drain on update, removal and shutdown.
    pub drain_time: Duration,
    pub service_node: Option<String>,
    pub service_cluster: Option<String>,
    /// Secrets the agent provides (the workload certificate), current value
    /// and rotations.
    pub local_secrets: Option<tokio::sync::watch::Receiver<Vec<Secret>>>,
}

pub async fn run(opts: ProxyOptions, set_log_level: Option<LogLevelFn>) -> anyhow::Result<()> {
    let mut bootstrap = match &opts.bootstrap {
        BootstrapSource::File(path) => bootstrap::load(path)?,
        BootstrapSource::Built(b) => (**b).clone(),
    };
    {
        let node = bootstrap.node.get_or_insert_with(Default::default);
        if let Some(id) = &opts.service_node {
            node.id = id.clone();
        }
        if let Some(cluster) = &opts.service_cluster {
            node.cluster = cluster.clone();
        }
        node.user_agent_name = "trellis".into();
    }
    {
        let node = bootstrap.node.clone().unwrap_or_default();
        crate::metrics::global().set_workload(crate::metrics::Workload::from_node(&node));
        crate::metrics::peer::set_own(&node);
    }
    crate::trace::set_local_info(&bootstrap);
    let admin_addr = bootstrap::admin_address(&bootstrap)?;
    let ads = bootstrap::ads_target(&bootstrap)?;

    let snapshot = SharedSnapshot::default();
    let manager = ListenerManager::new(Arc::clone(&snapshot), opts.drain_time);
    let store = Arc::new(ConfigStore::new(snapshot, manager));
    let statics = bootstrap.static_resources.clone().unwrap_or_default();
    store
        .load_static(statics.listeners, statics.clusters, statics.secrets)
        .map_err(|e| anyhow::anyhow!("invalid static_resources in {}: {e}", opts.bootstrap))?;
    if let Some(mut rx) = opts.local_secrets.clone() {
        // Before ADS starts, so these names are never asked of the control plane.
        let current = rx.borrow_and_update().clone();
        store
            .set_local_secrets(current)
            .map_err(|e| anyhow::anyhow!("workload certificate: {e}"))?;
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let secrets = rx.borrow_and_update().clone();
                if let Err(e) = store.set_local_secrets(secrets) {
                    tracing::error!(error = %e, "rotated certificate not applied");
                }
            }
        });
    }

    let state = Arc::new(AdminState {
        store: Arc::clone(&store),
        bootstrap: bootstrap.clone(),
        ready: AtomicBool::new(ads.is_none()),
        healthcheck_failed: AtomicBool::new(false),
        shutdown: tokio::sync::Notify::new(),
        set_log_level,
        started: SystemTime::now(),
        xds: std::sync::OnceLock::new(),
    });
    if let Some(addr) = admin_addr {
        let listener_state = Arc::clone(&state);
        // Bind errors surface at startup rather than in a background task.
        let std_listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("cannot bind admin address {addr}"))?;
        drop(std_listener);
        tokio::spawn(async move {
            if let Err(e) = admin::serve(addr, listener_state).await {
                tracing::error!(error = %e, "admin server stopped");
            }
        });
    }
    if let Some(target) = ads {
        crate::ads::start(
            target,
            bootstrap.node.clone().unwrap_or_default(),
            Arc::clone(&store),
            Arc::clone(&state),
        )?;
    }
    tracing::info!(config = %opts.bootstrap, "trellis proxy started");

    wait_for_shutdown(&state).await;
    tracing::info!(drain_time = ?opts.drain_time, "draining listeners");
    state.ready.store(false, Ordering::Relaxed);
    store.listener_manager().drain_all(opts.drain_time).await;
    tracing::info!("shutdown complete");
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM, naming which arrived.
pub async fn shutdown_signal() -> &'static str {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "interrupt",
        _ = term => "SIGTERM",
    }
}

async fn wait_for_shutdown(state: &AdminState) {
    tokio::select! {
        signal = shutdown_signal() => tracing::info!(signal, "shutting down"),
        _ = state.shutdown.notified() => tracing::info!("/quitquitquit received"),
    }
}
