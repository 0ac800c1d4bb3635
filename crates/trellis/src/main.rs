//! `trellis`: one binary for the mesh's roles. This file only wires the CLI
//! to the crates that do the work.

mod control_plane;
mod up;
mod xds_serve;

use clap::{Parser, Subcommand};
// The proxy's CLI lives in `trellis-proxy`, shared with the data-plane-only
// binary of that name, so both take exactly the same flags.
use trellis_proxy::{ProxyArgs, init_logs, run_proxy, runtime};

#[derive(Parser, Debug)]
#[command(name = "trellis", version, about = "Trellis service mesh")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the data-plane proxy from an Envoy bootstrap (static resources and/or ADS).
    Proxy(Box<ProxyArgs>),
    /// Run the demo workload: an HTTP/gRPC/TCP echo server that can call other services.
    DemoApp(demo::DemoConfig),
    /// Serve the xDS resources of a YAML file over ADS (testing and debugging).
    XdsServe(xds_serve::XdsServeArgs),
    /// Run the control plane: Istio YAML from a directory, served over ADS.
    ControlPlane(control_plane::ControlPlaneArgs),
    /// Run a whole mesh on this machine: control plane, gateway, sidecars, workloads.
    Up(up::UpArgs),
    /// Check Istio YAML the way istioctl analyze does; non-zero exit on errors.
    Analyze(ctl::AnalyzeArgs),
    /// Every proxy connected to the control plane and its sync state.
    ProxyStatus(ctl::ProxyStatusArgs),
    /// What one proxy holds: listeners, routes, clusters, endpoints, secrets.
    ProxyConfig(ctl::ProxyConfigArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // One crypto provider for every TLS user in the process (rustls, tonic).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    match cli.command {
        Command::Proxy(args) => run_proxy(*args, "trellis proxy"),
        Command::DemoApp(cfg) => {
            init_logs("info")?;
            runtime(None)?.block_on(demo::run(cfg))
        }
        Command::XdsServe(args) => {
            init_logs("info")?;
            runtime(Some(1))?.block_on(xds_serve::run(args))
        }
        Command::ControlPlane(args) => {
            init_logs("info")?;
            runtime(None)?.block_on(control_plane::run(args))
        }
        Command::Up(args) => {
            init_logs("info")?;
            runtime(None)?.block_on(up::run(args))
        }
        Command::Analyze(args) => {
            std::process::exit(ctl::analyze::run(&args, &mut std::io::stdout())?)
        }
        Command::ProxyStatus(args) => {
            std::process::exit(ctl::status::run(&args, &mut std::io::stdout())?)
        }
        Command::ProxyConfig(args) => {
            std::process::exit(ctl::proxy_config::run(&args, &mut std::io::stdout())?)
        }
    }
}
