//! `trellis xds-serve`: serves the xDS resources of one YAML file over ADS
//! (state-of-the-world and delta) and reloads them when the file changes.
//! For tests and debugging: the same resources can drive Envoy and Trellis.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use xds::server::SnapshotCache;

#[derive(clap::Args, Debug)]
pub(crate) struct XdsServeArgs {
    /// YAML file with `resources: [ {"@type": ..., ...}, ... ]`.
    #[arg(long)]
    pub(crate) resources: PathBuf,
    /// Address to serve ADS on.
    #[arg(long, default_value = "127.0.0.1:15010")]
    pub(crate) listen: SocketAddr,
}

fn load(path: &Path) -> anyhow::Result<xds::snapshot::Snapshot> {
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    xds::snapshot::snapshot_from_yaml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

pub(crate) async fn run(args: XdsServeArgs) -> anyhow::Result<()> {
    let cache = SnapshotCache::new();
    cache.set_default_snapshot(load(&args.resources)?);
    let watched = Arc::clone(&cache);
    let path = args.resources.clone();
    tokio::spawn(async move {
        let mut last = modified(&path);
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = modified(&path);
            if now == last {
                continue;
            }
            last = now;
            match load(&path) {
                Ok(s) => {
                    watched.set_default_snapshot(s);
                    tracing::info!(file = %path.display(), "resources reloaded");
                }
                // A bad file is reported and the previous resources keep serving.
                Err(e) => tracing::warn!(error = %e, "keeping previous resources"),
            }
        }
    });
    tracing::info!(listen = %args.listen, file = %args.resources.display(), "serving xDS");
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    xds::server::serve(args.listen, cache, shutdown).await?;
    Ok(())
}
