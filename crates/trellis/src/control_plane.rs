//! `trellis control-plane`: serves a directory of Istio YAML over ADS.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use config::ConfigSource;
use controlplane::ControlPlane;
use registry::local::ResolvedWorkload;

#[derive(clap::Args, Debug)]
pub(crate) struct ControlPlaneArgs {
    /// Directory of Istio YAML (recursive, watched).
    #[arg(long = "config", default_value = ".")]
    pub(crate) config: PathBuf,
    /// Plaintext ADS address.
    #[arg(long = "xds-address", default_value = "127.0.0.1:15010")]
    pub(crate) xds_address: SocketAddr,
    /// Debug and monitoring address (`/debug/syncz`, `/ready`).
    #[arg(long = "debug-address", default_value = "127.0.0.1:15014")]
    pub(crate) debug_address: SocketAddr,
    /// MeshConfig YAML (rootNamespace, outboundTrafficPolicy...).
    #[arg(long = "mesh-config")]
    pub(crate) mesh_config: Option<PathBuf>,
    /// The mesh CA's directory: Istio's `cacerts` layout (ca-cert.pem,
    /// ca-key.pem, root-cert.pem, cert-chain.pem) to plug in your own CA, or
    /// where a self-signed root is created on first start and kept.
    #[arg(long = "ca-dir", default_value = ".trellis/ca")]
    pub(crate) ca_dir: PathBuf,
    /// TLS address of the CA and of xDS (Istio's 15012); "off" disables it.
    #[arg(long = "secure-address", default_value = "127.0.0.1:15012")]
    pub(crate) secure_address: String,
    /// Serve xDS only over TLS (15012): do not open the plaintext address.
    #[arg(long = "no-plaintext-xds")]
    pub(crate) no_plaintext_xds: bool,
}

/// The control plane's tasks and the CA, once started.
pub(crate) struct Started {
    pub(crate) cp: Arc<ControlPlane>,
    pub(crate) ca: Option<Arc<identity::MeshCa>>,
}

pub(crate) fn mesh_config(path: Option<&PathBuf>) -> anyhow::Result<api::MeshConfig> {
    match path {
        None => Ok(api::MeshConfig::default()),
        Some(p) => {
            let text =
                std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            api::MeshConfig::from_yaml(&text, &p.display().to_string())
                .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
        }
    }
}

/// Starts the control plane's tasks and returns it; they run until the runtime stops.
pub(crate) async fn start(
    args: &ControlPlaneArgs,
    workloads: Vec<ResolvedWorkload>,
) -> anyhow::Result<Started> {
    let mesh = mesh_config(args.mesh_config.as_ref())?;
    let trust_domain = mesh.trust_domain.clone();
    let cp = ControlPlane::new(workloads, mesh);
    let source = config::DirectorySource::start(args.config.clone(), Duration::from_millis(100))
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.config.display()))?;
    let mut rx = source.subscribe();
    let watcher = Arc::clone(&cp);
    tokio::spawn(async move {
        // The source's thread lives as long as this task holds it.
        let _source = source;
        loop {
            let snapshot = rx.borrow_and_update().clone();
            watcher.update_config(&snapshot);
            if rx.changed().await.is_err() {
                return;
            }
        }
    });
    if args.no_plaintext_xds {
        tracing::info!("plaintext xDS disabled; proxies use the TLS endpoint");
    } else {
        // Bind now so that a busy port is an error at startup.
        let xds_listener = tokio::net::TcpListener::bind(args.xds_address)
            .await
            .map_err(|e| anyhow::anyhow!("cannot bind xDS address {}: {e}", args.xds_address))?;
        let cache = Arc::clone(cp.cache());
        tokio::spawn(async move {
            if let Err(e) =
                xds::server::serve_listener(xds_listener, cache, std::future::pending()).await
            {
                tracing::error!(error = %e, "xDS server stopped");
            }
        });
    }
    let debug_cp = Arc::clone(&cp);
    let debug_addr = args.debug_address;
    let debug_listener = tokio::net::TcpListener::bind(debug_addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind debug address {debug_addr}: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = controlplane::serve_debug(debug_listener, debug_cp).await {
            tracing::error!(error = %e, "debug server stopped");
        }
    });
    let ca = if args.secure_address == "off" {
        None
    } else {
        let addr: SocketAddr = args
            .secure_address
            .parse()
            .map_err(|e| anyhow::anyhow!("--secure-address {}: {e}", args.secure_address))?;
        let ca = Arc::new(identity::MeshCa::load_or_create(
            &args.ca_dir,
            &trust_domain,
        )?);
        tracing::info!(dir = %args.ca_dir.display(), origin = ?ca.origin(), %trust_domain, "mesh CA ready");
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot bind secure address {addr}: {e}"))?;
        let (ca2, cache) = (Arc::clone(&ca), Arc::clone(cp.cache()));
        tokio::spawn(async move {
            if let Err(e) = controlplane::serve_secure(listener, ca2, cache).await {
                tracing::error!(error = %e, "secure endpoint stopped");
            }
        });
        Some(ca)
    };
    tracing::info!(xds = %args.xds_address, secure = %args.secure_address, debug = %args.debug_address, config = %args.config.display(), "control plane serving");
    Ok(Started { cp, ca })
}

pub(crate) async fn run(args: ControlPlaneArgs) -> anyhow::Result<()> {
    let _started = start(&args, Vec::new()).await?;
    let signal = proxy::shutdown_signal().await;
    tracing::info!(signal, "control plane stopping");
    Ok(())
}
