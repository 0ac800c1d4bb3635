//! `trellis-proxy`: the data plane alone, with exactly the flags of
//! `trellis proxy`. A sidecar runs this rather than the multi-purpose
//! `trellis` binary because the kernel maps executable pages in 64 KiB
//! fault-around windows: in a binary that interleaves the proxy with the
//! control plane, CLI tools and demo app, those windows drag unrelated code
//! into every sidecar's RSS.

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "trellis-proxy",
    version,
    about = "Trellis data-plane proxy (the same flags as `trellis proxy`)"
)]
struct Cli {
    #[command(flatten)]
    args: trellis_proxy::ProxyArgs,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // One crypto provider for every TLS user in the process (rustls, tonic).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    trellis_proxy::run_proxy(cli.args, "trellis-proxy")
}
