//! Stand-alone demo workload, same flags as `trellis demo-app`
//! (used by tests/e2e until the `trellis` binary provides the subcommand).
use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "demo-app", disable_version_flag = true)]
struct Cli {
    #[command(flatten)]
    demo: demo::DemoConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    demo::run(Cli::parse().demo).await
}
