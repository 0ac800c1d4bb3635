//! `trellis`: one binary for the mesh's roles. This file only wires the CLI
//! to the crates that do the work.

use std::path::PathBuf;
use std::time::Duration;

mod xds_serve;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Parser, Debug)]
#[command(name = "trellis", version, about = "Trellis service mesh")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the data-plane proxy from an Envoy bootstrap (static resources and/or ADS).
    Proxy(ProxyArgs),
    /// Run the demo workload: an HTTP/gRPC/TCP echo server that can call other services.
    DemoApp(demo::DemoConfig),
    /// Serve the xDS resources of a YAML file over ADS (testing and debugging).
    XdsServe(xds_serve::XdsServeArgs),
}

/// Flags follow Envoy's where they overlap, so Trellis drops in where Envoy runs.
#[derive(clap::Args, Debug)]
struct ProxyArgs {
    /// Path to the bootstrap (YAML or JSON), as Envoy's `-c`.
    #[arg(short = 'c', long = "config-path")]
    config_path: PathBuf,
    /// Log level: trace, debug, info, warn, error, critical, off.
    #[arg(short = 'l', long = "log-level", default_value = "info")]
    log_level: String,
    /// Seconds listeners drain on update, removal and shutdown.
    #[arg(long = "drain-time-s", default_value_t = 600)]
    drain_time_s: u64,
    /// Overrides `node.id`.
    #[arg(long = "service-node")]
    service_node: Option<String>,
    /// Overrides `node.cluster`.
    #[arg(long = "service-cluster")]
    service_cluster: Option<String>,
    /// Worker threads (default: one per core).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Accepted for Envoy compatibility; Trellis has no shared memory.
    #[arg(long = "base-id", hide = true)]
    base_id: Option<u64>,
    /// Accepted for Envoy compatibility; Trellis does not hot-restart.
    #[arg(long = "disable-hot-restart", hide = true)]
    disable_hot_restart: bool,
}

/// Envoy's level names mapped onto tracing's.
fn level_filter(level: &str) -> Result<EnvFilter, String> {
    let l = match level {
        "trace" | "debug" | "info" | "warn" | "error" | "off" => level,
        "warning" => "warn",
        "critical" => "error",
        other => return Err(format!("unknown log level '{other}'")),
    };
    EnvFilter::try_new(format!("{l},h2=warn,hyper=warn,tower=warn")).map_err(|e| e.to_string())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // One crypto provider for every TLS user in the process (rustls, tonic).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    match cli.command {
        Command::Proxy(args) => run_proxy(args),
        Command::DemoApp(cfg) => {
            init_logs("info")?;
            runtime(None)?.block_on(demo::run(cfg))
        }
        Command::XdsServe(args) => {
            init_logs("info")?;
            runtime(Some(1))?.block_on(xds_serve::run(args))
        }
    }
}

fn init_logs(
    level: &str,
) -> anyhow::Result<reload::Handle<EnvFilter, tracing_subscriber::Registry>> {
    let filter = level_filter(level).map_err(anyhow::Error::msg)?;
    let (filter, handle) = reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false),
        )
        .init();
    Ok(handle)
}

fn runtime(threads: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.enable_all();
    if let Some(n) = threads {
        b.worker_threads(n.max(1));
    }
    Ok(b.build()?)
}

fn run_proxy(args: ProxyArgs) -> anyhow::Result<()> {
    let handle = init_logs(&args.log_level)?;
    let set_level: proxy::admin::LogLevelFn = Box::new(move |level| {
        let f = level_filter(level)?;
        handle.reload(f).map_err(|e| e.to_string())
    });
    let opts = proxy::ProxyOptions {
        config_path: args.config_path,
        drain_time: Duration::from_secs(args.drain_time_s),
        service_node: args.service_node,
        service_cluster: args.service_cluster,
    };
    let _ = (args.base_id, args.disable_hot_restart);
    let result = runtime(args.concurrency)?.block_on(proxy::run(opts, Some(set_level)));
    if let Err(e) = &result {
        // A bad bootstrap is reported as one clear line, not a backtrace.
        eprintln!("trellis proxy: {e:#}");
        std::process::exit(1);
    }
    result
}
