//! Control-plane scale benchmark (`bench/run --scenarios controlplane`).
//!
//! ```text
//! cargo build --release -p controlplane --example scale
//! target/release/examples/scale --services 1000 --endpoints 5 --proxies 100 --changes 20
//! ```
//!
//! Two processes, so that the control plane's memory and CPU are its own:
//!
//! - **the control plane** (`scale server --dir DIR`, this binary re-executed;
//!   or `trellis control-plane --config DIR` with `--cp-bin PATH`): loads the
//!   generated Istio YAML with `config::load_dir` (parsing and validation
//!   count), builds a `controlplane::ControlPlane` and serves ADS with
//!   `xds::server::serve_listener`, exactly as `trellis control-plane` does.
//!   An endpoint change is a line on its stdin: the server edits the
//!   ServiceEntry object in its snapshot and calls `update_config` from a
//!   tokio task (as `trellis control-plane`'s watcher task does). With
//!   `--cp-bin` the change is a rewrite of that ServiceEntry's file instead
//!   (so the figure includes the directory watcher's poll + debounce + reload).
//! - **the proxies** (this process): `--proxies` real `xds::client` instances
//!   on one tokio runtime, each an Istio sidecar node in namespace `default`
//!   (capture mode: no `TRELLIS_*` keys) with its own pod name and IP. Each
//!   subscribes like Envoy: CDS and LDS wildcard, then EDS for the EDS
//!   clusters it received and RDS for the route names of its listeners'
//!   HttpConnectionManager `rds` config.
//!
//! Configuration: `--services` ServiceEntries (`MESH_INTERNAL`, `STATIC`,
//! one HTTP port 8080, `--endpoints` inline endpoints each), one file each.
//!
//! Figures (one JSON object, the last line of stdout; progress on stderr):
//! - `first_push_s`: from the moment the clients start connecting until the
//!   control plane has recorded, for every proxy, an ACK of the latest CDS,
//!   EDS, LDS and RDS version it sent;
//! - `endpoint_change_p50_ms` / `_p99_ms`: for each of `--changes` endpoint
//!   changes (one endpoint address of one ServiceEntry), per proxy, the time
//!   from the change request until that proxy's sink received the
//!   ClusterLoadAssignment with the new address; percentiles over all
//!   (change, proxy) pairs; `endpoint_change_all_*` are per change, until the
//!   last proxy had it;
//! - `cp_rss_mb`: the control plane's VmRSS with every proxy synced (after
//!   the changes); `_idle` before any proxy connected, `_peak` its VmHWM;
//! - `xds_bytes_*`: serialized resource bytes the proxies received (the
//!   changed ones; for SotW LDS and CDS every resource of a response) and
//!   `cp_write_bytes_*`: bytes the control plane process wrote (`wchar` of
//!   `/proc/PID/io`: gRPC framing and HTTP/2 included).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use prost::Message;
use xds::client::{AdsClientConfig, AdsHandle, AdsProtocol, ResourceSink};
use xds::type_url;

const PORT: u32 = 8080;
const TYPES: [&str; 4] = [
    type_url::CLUSTER,
    type_url::ENDPOINT,
    type_url::LISTENER,
    type_url::ROUTE,
];

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("server") {
        return server(&Args::parse(&args[1..])?);
    }
    driver(&Args::parse(&args)?)
}

// ------------------------------------------------------------------ arguments

struct Args(HashMap<String, String>);

impl Args {
    fn parse(args: &[String]) -> anyhow::Result<Self> {
        let mut map = HashMap::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let Some(key) = a.strip_prefix("--") else {
                bail!("unexpected argument {a:?}");
            };
            if let Some((k, v)) = key.split_once('=') {
                map.insert(k.to_owned(), v.to_owned());
            } else {
                let v = it.next().ok_or_else(|| anyhow!("--{key} needs a value"))?;
                map.insert(key.to_owned(), v.clone());
            }
        }
        Ok(Self(map))
    }

    fn str(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn num<T: std::str::FromStr>(&self, key: &str, default: T) -> anyhow::Result<T> {
        match self.0.get(key) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| anyhow!("--{key}: not a number: {v:?}")),
        }
    }
}

// ------------------------------------------------------------------ configuration

fn service_name(i: usize) -> String {
    format!("svc-{i:04}")
}

fn hostname(i: usize) -> String {
    format!("{}.default.svc.cluster.local", service_name(i))
}

fn cluster_name(i: usize) -> String {
    format!("outbound|{PORT}||{}", hostname(i))
}

/// Endpoint `j` of service `i`: distinct addresses in 172.16.0.0/12.
fn endpoint_address(i: usize, j: usize, per_service: usize) -> String {
    let n = i * per_service + j + 1;
    format!("172.{}.{}.{}", 16 + (n >> 16), (n >> 8) & 255, n & 255)
}

/// The address endpoint 0 gets in change `c` (100.64.0.0/10, never a generated one).
fn changed_address(c: usize) -> String {
    format!("100.64.{}.{}", c / 250, c % 250 + 1)
}

fn service_entry_yaml(i: usize, endpoints: &[String]) -> String {
    let name = service_name(i);
    let mut s = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  hosts:\n  - {}\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports:\n  - number: {PORT}\n    name: http\n    protocol: HTTP\n  endpoints:\n",
        hostname(i)
    );
    for a in endpoints {
        s.push_str(&format!(
            "  - address: {a}\n    labels:\n      app: {name}\n"
        ));
    }
    s
}

fn write_service(dir: &Path, i: usize, endpoints: &[String]) -> anyhow::Result<()> {
    // Atomic replace; the temporary name is hidden, so the watcher skips it.
    let tmp = dir.join(format!(".se-{i:04}.tmp"));
    std::fs::write(&tmp, service_entry_yaml(i, endpoints))?;
    std::fs::rename(&tmp, dir.join(format!("se-{i:04}.yaml")))?;
    Ok(())
}

fn endpoints_of(i: usize, per_service: usize) -> Vec<String> {
    (0..per_service)
        .map(|j| endpoint_address(i, j, per_service))
        .collect()
}

// ------------------------------------------------------------------ server process

/// `scale server --dir DIR`: the control plane in its own process. Prints
/// `ready port=..` then answers one line per command on stdin.
fn server(args: &Args) -> anyhow::Result<()> {
    let dir = PathBuf::from(args.str("dir").ok_or_else(|| anyhow!("--dir"))?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let t = Instant::now();
    let mut snapshot = Arc::new(config::load_dir(&dir));
    let load_ms = ms(t.elapsed());
    if let Some(e) = snapshot.errors.first() {
        bail!("{} configuration errors, first: {e}", snapshot.errors.len());
    }
    let cp = controlplane::ControlPlane::new(Vec::new(), api::MeshConfig::default());
    let update_ms = rt.block_on(update(&cp, &snapshot))?;
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let port = listener.local_addr()?.port();
    let cache = Arc::clone(cp.cache());
    rt.spawn(async move {
        if let Err(e) = xds::server::serve_listener(listener, cache, std::future::pending()).await {
            eprintln!("xDS server stopped: {e}");
        }
    });
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "ready port={port} objects={} load_ms={load_ms:.1} update_ms={update_ms:.1}",
        snapshot.objects.len()
    )?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["change", name, addr] => {
                let snap = Arc::make_mut(&mut snapshot);
                let obj = snap
                    .objects
                    .iter_mut()
                    .find(|o| o.kind == "ServiceEntry" && o.metadata.name == *name)
                    .ok_or_else(|| anyhow!("no ServiceEntry {name}"))?;
                let api::Spec::ServiceEntry(se) = &mut obj.spec else {
                    bail!("{name} is not a ServiceEntry");
                };
                let ep = se
                    .endpoints
                    .first_mut()
                    .ok_or_else(|| anyhow!("{name} has no endpoints"))?;
                (*addr).clone_into(&mut ep.address);
                snap.generation += 1;
                let update_ms = rt.block_on(update(&cp, &snapshot))?;
                writeln!(out, "changed update_ms={update_ms:.2}")?;
            }
            ["synced"] => {
                let n = cp
                    .cache()
                    .status()
                    .iter()
                    .filter(|s| s.connected && TYPES.iter().all(|t| type_synced(s, t)))
                    .count();
                writeln!(out, "synced {n}")?;
            }
            ["quit"] => break,
            _ => writeln!(out, "error unknown command {line:?}")?,
        }
        out.flush()?;
    }
    Ok(())
}

fn type_synced(s: &xds::server::ProxySyncStatus, t: &str) -> bool {
    s.types
        .get(t)
        .is_some_and(|t| !t.acked_version.is_empty() && t.acked_version == t.sent_version)
}

/// `update_config` on a runtime worker, as `trellis control-plane` runs it.
async fn update(
    cp: &Arc<controlplane::ControlPlane>,
    snapshot: &Arc<config::ConfigSnapshot>,
) -> anyhow::Result<f64> {
    let cp = Arc::clone(cp);
    let snapshot = Arc::clone(snapshot);
    let took = tokio::spawn(async move {
        let t = Instant::now();
        cp.update_config(&snapshot);
        t.elapsed()
    })
    .await?;
    Ok(ms(took))
}

// ------------------------------------------------------------------ the proxies' side

/// The change being waited for.
#[derive(Clone)]
struct Target {
    generation: u64,
    cluster: String,
    address: String,
    start: Instant,
}

#[derive(Default)]
struct Shared {
    target: Mutex<Option<Target>>,
    /// (change generation, proxy, latency)
    seen: Mutex<Vec<(u64, usize, Duration)>>,
    /// Serialized resource bytes received (see the module docs).
    bytes: AtomicU64,
    delta: AtomicBool,
}

#[derive(Default)]
struct SinkState {
    eds: BTreeSet<String>,
    rds: BTreeSet<String>,
    /// Delta only: per type, resource name → hash of its bytes.
    known: BTreeMap<String, HashMap<String, u64>>,
    counts: BTreeMap<String, usize>,
}

struct Sink {
    proxy: usize,
    shared: Arc<Shared>,
    handle: OnceLock<AdsHandle>,
    state: Mutex<SinkState>,
    seen_generation: AtomicU64,
}

impl Sink {
    fn set_handle(&self, handle: AdsHandle) {
        let _ = self.handle.set(handle);
        if let Ok(state) = self.state.lock() {
            self.push_interest(&state);
        }
    }

    fn push_interest(&self, state: &SinkState) {
        if let Some(h) = self.handle.get() {
            h.set_interest(type_url::ENDPOINT, state.eds.clone());
            h.set_interest(type_url::ROUTE, state.rds.clone());
        }
    }

    fn account(
        &self,
        state: &mut SinkState,
        t: &str,
        resources: &BTreeMap<String, prost_types::Any>,
    ) {
        // On the wire: delta responses and SotW pushes of the named types
        // (EDS, RDS) carry the changed resources, SotW LDS/CDS all of them.
        let all = !self.shared.delta.load(Ordering::Relaxed) && type_url::is_wildcard(t);
        let bytes: usize = if !all {
            let known = state.known.entry(t.to_owned()).or_default();
            let mut changed = 0;
            let mut next = HashMap::with_capacity(resources.len());
            for (name, any) in resources {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                any.value.hash(&mut h);
                let h = h.finish();
                if known.get(name) != Some(&h) {
                    changed += any.value.len();
                }
                next.insert(name.clone(), h);
            }
            *known = next;
            changed
        } else {
            resources.values().map(|a| a.value.len()).sum()
        };
        self.shared.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        state.counts.insert(t.to_owned(), resources.len());
    }
}

impl ResourceSink for Sink {
    fn apply(
        &self,
        t: &str,
        _version: &str,
        resources: &BTreeMap<String, prost_types::Any>,
    ) -> Result<(), String> {
        let mut state = self.state.lock().map_err(|_| "poisoned".to_owned())?;
        self.account(&mut state, t, resources);
        match t {
            type_url::CLUSTER => {
                let mut eds = BTreeSet::new();
                for (name, any) in resources {
                    let c = Cluster::decode(any.value.as_slice()).map_err(|e| e.to_string())?;
                    let is_eds = matches!(
                        c.cluster_discovery_type,
                        Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::Eds as i32
                    );
                    if is_eds {
                        let service = c
                            .eds_cluster_config
                            .map(|e| e.service_name)
                            .filter(|s| !s.is_empty());
                        eds.insert(service.unwrap_or_else(|| name.clone()));
                    }
                }
                state.eds = eds;
                self.push_interest(&state);
            }
            type_url::LISTENER => {
                let mut rds = BTreeSet::new();
                for any in resources.values() {
                    let l = Listener::decode(any.value.as_slice()).map_err(|e| e.to_string())?;
                    let chains = l.filter_chains.iter().chain(l.default_filter_chain.iter());
                    for f in chains.flat_map(|c| c.filters.iter()) {
                        let Some(ConfigType::TypedConfig(tc)) = &f.config_type else {
                            continue;
                        };
                        if !tc.type_url.ends_with(".HttpConnectionManager") {
                            continue;
                        }
                        let hcm = HttpConnectionManager::decode(tc.value.as_slice())
                            .map_err(|e| e.to_string())?;
                        if let Some(RouteSpecifier::Rds(r)) = hcm.route_specifier {
                            rds.insert(r.route_config_name);
                        }
                    }
                }
                state.rds = rds;
                self.push_interest(&state);
            }
            type_url::ENDPOINT => {
                let target = self.shared.target.lock().ok().and_then(|t| t.clone());
                if let Some(target) = target
                    && target.generation > self.seen_generation.load(Ordering::Relaxed)
                    && let Some(any) = resources.get(&target.cluster)
                {
                    let cla = ClusterLoadAssignment::decode(any.value.as_slice())
                        .map_err(|e| e.to_string())?;
                    if has_address(&cla, &target.address) {
                        let took = target.start.elapsed();
                        self.seen_generation
                            .store(target.generation, Ordering::Relaxed);
                        if let Ok(mut seen) = self.shared.seen.lock() {
                            seen.push((target.generation, self.proxy, took));
                        }
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

fn has_address(cla: &ClusterLoadAssignment, address: &str) -> bool {
    cla.endpoints
        .iter()
        .flat_map(|l| l.lb_endpoints.iter())
        .any(|e| match &e.host_identifier {
            Some(HostIdentifier::Endpoint(ep)) => ep
                .address
                .as_ref()
                .and_then(|a| a.address.as_ref())
                .is_some_and(
                    |a| matches!(a, AddressKind::SocketAddress(s) if s.address == address),
                ),
            _ => false,
        })
}

fn string_value(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    }
}

/// An Istio sidecar node in namespace `default` (capture mode).
fn sidecar_node(i: usize) -> Node {
    let ip = format!("10.0.{}.{}", i / 250, i % 250 + 1);
    let pod = format!("client-{i:04}-7d9f8b6c5-x{i:04}");
    let mut labels = Struct::default();
    labels.fields.insert("app".into(), string_value("client"));
    labels
        .fields
        .insert("pod-template-hash".into(), string_value("7d9f8b6c5"));
    let mut meta = Struct::default();
    for (k, v) in [
        ("NAMESPACE", "default"),
        ("SERVICE_ACCOUNT", "default"),
        ("WORKLOAD_NAME", "client"),
        ("INSTANCE_IPS", ip.as_str()),
        ("ISTIO_VERSION", "1.24.0"),
        ("CLUSTER_ID", "Kubernetes"),
    ] {
        meta.fields.insert(k.into(), string_value(v));
    }
    meta.fields.insert(
        "LABELS".into(),
        Value {
            kind: Some(Kind::StructValue(labels)),
        },
    );
    Node {
        id: format!("sidecar~{ip}~{pod}.default~default.svc.cluster.local"),
        cluster: "client.default".into(),
        metadata: Some(meta),
        ..Default::default()
    }
}

// ------------------------------------------------------------------ control plane process handle

enum ControlPlaneProc {
    /// `scale server`: commands on stdin.
    Example {
        child: Child,
        stdin: ChildStdin,
        stdout: BufReader<ChildStdout>,
    },
    /// `trellis control-plane`: changes through the files, status over HTTP.
    Trellis { child: Child, debug_port: u16 },
}

impl ControlPlaneProc {
    fn pid(&self) -> u32 {
        match self {
            Self::Example { child, .. } | Self::Trellis { child, .. } => child.id(),
        }
    }

    fn command(&mut self, line: &str) -> anyhow::Result<String> {
        let Self::Example { stdin, stdout, .. } = self else {
            bail!("not the example server");
        };
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        let mut reply = String::new();
        if stdout.read_line(&mut reply)? == 0 {
            bail!("control plane exited");
        }
        Ok(reply.trim().to_owned())
    }

    /// Proxies whose every type is ACKed at the version last sent.
    fn synced(&mut self) -> anyhow::Result<usize> {
        match self {
            Self::Example { .. } => {
                let r = self.command("synced")?;
                r.strip_prefix("synced ")
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| anyhow!("bad reply {r:?}"))
            }
            Self::Trellis { debug_port, .. } => {
                let body = http_get(*debug_port, "/debug/syncz")?;
                let v: serde_json::Value = serde_json::from_str(&body)?;
                let n = v
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter(|p| {
                                p["connected"].as_bool() == Some(true)
                                    && TYPES.iter().all(|t| {
                                        let ts = &p["types"][*t];
                                        let acked = ts["acked_version"].as_str().unwrap_or("");
                                        !acked.is_empty()
                                            && Some(acked) == ts["sent_version"].as_str()
                                    })
                            })
                            .count()
                    })
                    .unwrap_or(0);
                Ok(n)
            }
        }
    }

    fn stop(mut self) {
        if let Self::Example { stdin, .. } = &mut self {
            let _ = writeln!(stdin, "quit");
        }
        let (Self::Example { mut child, .. } | Self::Trellis { mut child, .. }) = self;
        for _ in 0..20 {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn http_get(port: u16, path: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let (head, body) = buf
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("bad HTTP response"))?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or(""));
    }
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Ok(dechunk(body));
    }
    Ok(body.to_owned())
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn start_control_plane(
    dir: &Path,
    cp_bin: Option<&str>,
) -> anyhow::Result<(ControlPlaneProc, String)> {
    match cp_bin {
        None => {
            let exe = std::env::current_exe()?;
            let mut child = Command::new(exe)
                .arg("server")
                .arg("--dir")
                .arg(dir)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()?;
            let stdin = child.stdin.take().context("stdin")?;
            let mut stdout = BufReader::new(child.stdout.take().context("stdout")?);
            let mut line = String::new();
            stdout.read_line(&mut line)?;
            let line = line.trim().to_owned();
            if !line.starts_with("ready ") {
                let _ = child.kill();
                bail!("control plane did not start: {line:?}");
            }
            Ok((
                ControlPlaneProc::Example {
                    child,
                    stdin,
                    stdout,
                },
                line,
            ))
        }
        Some(bin) => {
            let (xds_port, debug_port) = (free_port()?, free_port()?);
            let started = Instant::now();
            let child = Command::new(bin)
                .args(["control-plane", "--config"])
                .arg(dir)
                .args(["--xds-address", &format!("127.0.0.1:{xds_port}")])
                .args(["--debug-address", &format!("127.0.0.1:{debug_port}")])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            let proc = ControlPlaneProc::Trellis { child, debug_port };
            while http_get(debug_port, "/ready").is_err() {
                if started.elapsed() > Duration::from_secs(120) {
                    proc.stop();
                    bail!("trellis control-plane not ready after 120 s");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let line = format!(
                "ready port={xds_port} startup_ms={:.1}",
                ms(started.elapsed())
            );
            Ok((proc, line))
        }
    }
}

// ------------------------------------------------------------------ /proc

fn proc_field(pid: u32, file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn rss_mb(pid: u32) -> f64 {
    proc_field(pid, "status", "VmRSS:").unwrap_or(0) as f64 / 1024.0
}

fn hwm_mb(pid: u32) -> f64 {
    proc_field(pid, "status", "VmHWM:").unwrap_or(0) as f64 / 1024.0
}

fn wchar(pid: u32) -> u64 {
    proc_field(pid, "io", "wchar:").unwrap_or(0)
}

/// utime + stime of the whole process, seconds.
fn cpu_s(pid: u32) -> f64 {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some((_, rest)) = text.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ticks as f64 / 100.0 // USER_HZ
}

// ------------------------------------------------------------------ driver

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let k = (sorted.len() - 1) as f64 * p / 100.0;
    let lo = k.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (k - lo as f64)
}

fn round(v: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (v * m).round() / m
}

fn log(msg: &str) {
    eprintln!("[scale] {msg}");
}

fn driver(args: &Args) -> anyhow::Result<()> {
    let services: usize = args.num("services", 1000)?;
    let per_service: usize = args.num("endpoints", 5)?;
    let proxies: usize = args.num("proxies", 100)?;
    let changes: usize = args.num("changes", 20)?;
    let client_threads: usize = args.num("client-threads", 2)?;
    let timeout = Duration::from_secs_f64(args.num("timeout", 300.0)?);
    let protocol = match args.str("protocol").unwrap_or("sotw") {
        "sotw" => AdsProtocol::StateOfTheWorld,
        "delta" => AdsProtocol::Delta,
        other => bail!("--protocol {other}: sotw or delta"),
    };
    let cp_bin = args.str("cp-bin");
    if services == 0 || per_service == 0 || proxies == 0 {
        bail!("--services, --endpoints and --proxies must be > 0");
    }

    let dir = match args.str("dir") {
        Some(d) => PathBuf::from(d),
        None => std::env::temp_dir().join(format!("trellis-cp-scale-{}", std::process::id())),
    };
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let t = Instant::now();
    for i in 0..services {
        write_service(&dir, i, &endpoints_of(i, per_service))?;
    }
    log(&format!(
        "{services} ServiceEntries x {per_service} endpoints written to {} in {:.0} ms",
        dir.display(),
        ms(t.elapsed())
    ));

    let (mut cp, ready) = start_control_plane(&dir, cp_bin)?;
    let result = run(
        &mut cp,
        &ready,
        &dir,
        args,
        services,
        per_service,
        proxies,
        changes,
        client_threads,
        timeout,
        protocol,
    );
    cp.stop();
    if args.str("keep-dir").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let mut out = result?;
    out["services"] = services.into();
    out["endpoints_per_service"] = per_service.into();
    out["proxies"] = proxies.into();
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn run(
    cp: &mut ControlPlaneProc,
    ready: &str,
    dir: &Path,
    args: &Args,
    services: usize,
    per_service: usize,
    proxies: usize,
    changes: usize,
    client_threads: usize,
    timeout: Duration,
    protocol: AdsProtocol,
) -> anyhow::Result<serde_json::Value> {
    let pid = cp.pid();
    log(&format!("control plane pid {pid}: {ready}"));
    let field = |k: &str| {
        ready
            .split_whitespace()
            .find_map(|w| w.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
            .and_then(|v| v.parse::<f64>().ok())
    };
    let port = field("port").ok_or_else(|| anyhow!("no port in {ready:?}"))? as u16;
    std::thread::sleep(Duration::from_millis(500));
    let rss_idle = rss_mb(pid);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(client_threads.max(1))
        .enable_all()
        .build()?;
    let shared = Arc::new(Shared::default());
    shared
        .delta
        .store(protocol == AdsProtocol::Delta, Ordering::Relaxed);
    let uri = format!("http://127.0.0.1:{port}");

    // RSS sampler (max VmRSS every 50 ms).
    let stop_sampler = Arc::new(AtomicBool::new(false));
    let max_rss = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, max) = (Arc::clone(&stop_sampler), Arc::clone(&max_rss));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let kb = proc_field(pid, "status", "VmRSS:").unwrap_or(0);
                max.fetch_max(kb, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    // ---- first push
    let cpu0 = cpu_s(pid);
    let w0 = wchar(pid);
    let start = Instant::now();
    let mut sinks = Vec::with_capacity(proxies);
    let mut handles = Vec::with_capacity(proxies);
    rt.block_on(async {
        for i in 0..proxies {
            let sink = Arc::new(Sink {
                proxy: i,
                shared: Arc::clone(&shared),
                handle: OnceLock::new(),
                state: Mutex::default(),
                seen_generation: AtomicU64::new(0),
            });
            let cfg = AdsClientConfig::from_uri(&uri, sidecar_node(i), protocol)?;
            let (h, _task) = xds::client::spawn(cfg, Arc::clone(&sink) as Arc<dyn ResourceSink>);
            sink.set_handle(h.clone());
            sinks.push(sink);
            handles.push(h);
        }
        anyhow::Ok(())
    })?;
    // Client side: every proxy has ACKed all four types.
    let all_acked = |handles: &[AdsHandle]| {
        handles.iter().all(|h| {
            let s = h.status();
            TYPES
                .iter()
                .all(|t| s.types.get(*t).is_some_and(|t| !t.acked_version.is_empty()))
        })
    };
    let mut last_log = Instant::now();
    while !all_acked(&handles) {
        if start.elapsed() > timeout {
            let done = handles
                .iter()
                .filter(|h| {
                    let s = h.status();
                    TYPES
                        .iter()
                        .all(|t| s.types.get(*t).is_some_and(|t| !t.acked_version.is_empty()))
                })
                .count();
            bail!("first push: only {done}/{proxies} proxies synced after {timeout:?}");
        }
        if last_log.elapsed() > Duration::from_secs(10) {
            last_log = Instant::now();
            let done = handles
                .iter()
                .filter(|h| !h.status().types.is_empty())
                .count();
            log(&format!(
                "first push: {:.0} s, {done} proxies have some config",
                start.elapsed().as_secs_f64()
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let first_push_client = start.elapsed();
    // Control plane side: it has recorded every ACK of the latest version sent.
    while cp.synced()? < proxies {
        if start.elapsed() > timeout {
            bail!("first push: control plane does not see every proxy synced");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let first_push = start.elapsed();
    let cpu_first = cpu_s(pid) - cpu0;
    let write_first = wchar(pid).saturating_sub(w0);
    let bytes_first = shared.bytes.swap(0, Ordering::Relaxed);
    let counts = sinks[0]
        .state
        .lock()
        .map(|s| s.counts.clone())
        .unwrap_or_default();
    log(&format!(
        "first push: {:.3} s (client side {:.3} s), cp CPU {cpu_first:.2} s, resources per proxy {:?}",
        first_push.as_secs_f64(),
        first_push_client.as_secs_f64(),
        counts
            .iter()
            .map(|(t, n)| (type_url::short_name(t).to_owned(), *n))
            .collect::<BTreeMap<_, _>>()
    ));
    std::thread::sleep(Duration::from_millis(500));
    let rss_synced = rss_mb(pid);

    // ---- endpoint changes
    let cpu1 = cpu_s(pid);
    let w1 = wchar(pid);
    let mut per_proxy: Vec<f64> = Vec::new();
    let mut all_done: Vec<f64> = Vec::new();
    let mut update_ms: Vec<f64> = Vec::new();
    let mut missing = 0usize;
    for c in 0..changes {
        let svc = (c * 7919 + 13) % services;
        let address = changed_address(c);
        let generation = c as u64 + 1;
        let target = Target {
            generation,
            cluster: cluster_name(svc),
            address: address.clone(),
            start: Instant::now(),
        };
        if let Ok(mut t) = shared.target.lock() {
            *t = Some(target.clone());
        }
        match cp {
            ControlPlaneProc::Example { .. } => {
                let reply = cp.command(&format!("change {} {address}", service_name(svc)))?;
                let took = reply
                    .strip_prefix("changed update_ms=")
                    .and_then(|v| v.parse::<f64>().ok())
                    .ok_or_else(|| anyhow!("bad reply {reply:?}"))?;
                update_ms.push(took);
            }
            ControlPlaneProc::Trellis { .. } => {
                let mut eps = endpoints_of(svc, per_service);
                eps[0] = address.clone();
                write_service(dir, svc, &eps)?;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let n = shared
                .seen
                .lock()
                .map(|s| s.iter().filter(|(g, _, _)| *g == generation).count())
                .unwrap_or(0);
            if n >= proxies || Instant::now() > deadline {
                if n < proxies {
                    missing += proxies - n;
                    log(&format!(
                        "change {c}: only {n}/{proxies} proxies saw it within 60 s"
                    ));
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let lat: Vec<f64> = shared
            .seen
            .lock()
            .map(|s| {
                s.iter()
                    .filter(|(g, _, _)| *g == generation)
                    .map(|(_, _, d)| ms(*d))
                    .collect()
            })
            .unwrap_or_default();
        if let Some(max) = lat.iter().copied().reduce(f64::max) {
            all_done.push(max);
        }
        per_proxy.extend(lat);
        // Let ACKs land before the next change.
        let settle = Instant::now();
        while cp.synced()? < proxies && settle.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Some(last) = all_done.last() {
            log(&format!(
                "change {c}: {} -> {address}: last proxy after {last:.1} ms{}, cp RSS {:.0} MB",
                service_name(svc),
                update_ms
                    .last()
                    .map(|u| format!(" (update_config {u:.1} ms)"))
                    .unwrap_or_default(),
                rss_mb(pid)
            ));
        }
    }
    let cpu_changes = cpu_s(pid) - cpu1;
    let write_changes = wchar(pid).saturating_sub(w1);
    let bytes_changes = shared.bytes.swap(0, Ordering::Relaxed);
    let rss_after = rss_mb(pid);
    stop_sampler.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let peak = hwm_mb(pid).max(max_rss.load(Ordering::Relaxed) as f64 / 1024.0);
    for h in &handles {
        h.shutdown();
    }
    rt.shutdown_timeout(Duration::from_secs(2));

    per_proxy.sort_by(f64::total_cmp);
    all_done.sort_by(f64::total_cmp);
    update_ms.sort_by(f64::total_cmp);
    let n = changes.max(1) as f64;
    let mut out = serde_json::json!({
        "scenario": "controlplane",
        "proxy": "trellis",
        "protocol": if protocol == AdsProtocol::Delta { "delta" } else { "sotw" },
        "control_plane": if args.str("cp-bin").is_some() { "trellis control-plane (file change: watcher poll + debounce + reload included)" } else { "scale server (controlplane::ControlPlane, update_config per change)" },
        "clients": format!("{proxies} xds::client instances in one process ({client_threads} tokio workers)"),
        "first_push_s": round(first_push.as_secs_f64(), 3),
        "first_push_client_acked_s": round(first_push_client.as_secs_f64(), 3),
        "endpoint_change_p50_ms": round(pct(&per_proxy, 50.0), 2),
        "endpoint_change_p99_ms": round(pct(&per_proxy, 99.0), 2),
        "endpoint_change_max_ms": round(per_proxy.last().copied().unwrap_or(f64::NAN), 2),
        "endpoint_change_all_proxies_p50_ms": round(pct(&all_done, 50.0), 2),
        "endpoint_change_all_proxies_p99_ms": round(pct(&all_done, 99.0), 2),
        "endpoint_changes": changes,
        "endpoint_change_samples": per_proxy.len(),
        "endpoint_change_missing": missing,
        "cp_rss_mb": round(rss_synced, 1),
        "cp_rss_mb_idle": round(rss_idle, 1),
        "cp_rss_mb_after_changes": round(rss_after, 1),
        "cp_rss_mb_peak": round(peak, 1),
        "cp_cpu_s_first_push": round(cpu_first, 2),
        "cp_cpu_s_per_change": round(cpu_changes / n, 3),
        "xds_bytes_first_push": bytes_first,
        "xds_bytes_per_change": (bytes_changes as f64 / n).round(),
        "cp_write_bytes_first_push": write_first,
        "cp_write_bytes_per_change": (write_changes as f64 / n).round(),
        "resources_per_proxy": counts.iter().map(|(t, n)| (type_url::short_name(t).to_owned(), *n)).collect::<BTreeMap<_, _>>(),
    });
    if let Some(v) = field("load_ms") {
        out["cp_config_load_ms"] = round(v, 1).into();
    }
    if let Some(v) = field("update_ms") {
        out["cp_initial_update_config_ms"] = round(v, 1).into();
    }
    if let Some(v) = field("startup_ms") {
        out["cp_startup_ms"] = round(v, 1).into();
    }
    if !update_ms.is_empty() {
        out["update_config_p50_ms"] = round(pct(&update_ms, 50.0), 2).into();
        out["update_config_p99_ms"] = round(pct(&update_ms, 99.0), 2).into();
    }
    Ok(out)
}
