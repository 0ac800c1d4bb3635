//! Runs listeners: binds sockets, accepts, hands `use_original_dst`
//! connections to the listener for their original address, and drains old
//! connections when a listener is updated or removed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};

use super::chain_match::ConnectionFacts;
use super::peer::PeerIdentity;
use super::{CompiledChain, ListenerConfig, Terminal, inspect, original_dst};
use crate::drain::{self, DrainSignal, DrainWatch};
use crate::http::server::serve_connection;
use crate::http::service::ConnInfo;
use crate::snapshot::SharedSnapshot;

/// One version of a listener's configuration and the connections it accepted.
struct Generation {
    config: Arc<ListenerConfig>,
    drain: DrainWatch,
}

#[derive(Debug, Default)]
pub struct ListenerStats {
    pub downstream_cx_total: AtomicU64,
    pub downstream_cx_active: AtomicU64,
}

struct Running {
    current: Arc<ArcSwap<Generation>>,
    signal: DrainSignal,
    accept_task: Option<tokio::task::JoinHandle<()>>,
    stats: Arc<ListenerStats>,
}

type Handoff = HashMap<SocketAddr, Arc<ArcSwap<Generation>>>;

pub struct ListenerManager {
    snapshot: SharedSnapshot,
    running: Mutex<HashMap<String, Running>>,
    handoff: Arc<ArcSwap<Handoff>>,
    drain_time: Duration,
}

impl std::fmt::Debug for ListenerManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerManager").finish_non_exhaustive()
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        // Envoy's default (ipv4_compat false): an IPv6 listener takes IPv6 only.
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

impl ListenerManager {
    pub fn new(snapshot: SharedSnapshot, drain_time: Duration) -> Self {
        Self {
            snapshot,
            running: Mutex::new(HashMap::new()),
            handoff: Arc::default(),
            drain_time,
        }
    }

    /// Names and configs of the active listeners, for admin output.
    pub fn active(&self) -> Vec<(Arc<ListenerConfig>, Arc<ListenerStats>)> {
        let Ok(running) = self.running.lock() else {
            return vec![];
        };
        let mut v: Vec<_> = running
            .values()
            .map(|r| (Arc::clone(&r.current.load().config), Arc::clone(&r.stats)))
            .collect();
        v.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        v
    }

    /// Makes the running set equal `wanted`. Binding errors are returned
    /// (the update is NACKed) and leave the running set unchanged for that
    /// listener.
    pub fn reconcile(&self, wanted: Vec<Arc<ListenerConfig>>) -> Result<(), String> {
        let Ok(mut running) = self.running.lock() else {
            return Err("listener manager poisoned".into());
        };
        let mut errors = Vec::new();
        let wanted_names: std::collections::HashSet<String> =
            wanted.iter().map(|c| c.name.clone()).collect();
        for name in running.keys().cloned().collect::<Vec<_>>() {
            if !wanted_names.contains(&name)
                && let Some(r) = running.remove(&name)
            {
                tracing::info!(listener = %name, "removing listener; draining its connections");
                self.retire(r);
            }
        }
        for config in wanted {
            let name = config.name.clone();
            match running.get(&name) {
                Some(r) if Arc::ptr_eq(&r.current.load().config, &config) => {}
                Some(r) if r.current.load().config.proto == config.proto => {
                    // Only its secrets changed (a certificate rotated): new
                    // handshakes use the new ones, nothing drains, as with
                    // Envoy's SDS updates.
                    let drain = r.current.load().drain.clone();
                    r.current.store(Arc::new(Generation { config, drain }));
                    tracing::debug!(listener = %name, "listener secrets updated");
                }
                Some(r)
                    if r.current.load().config.address == config.address
                        && r.current.load().config.bind_to_port == config.bind_to_port =>
                {
                    // Same socket, new configuration: new connections use it,
                    // old ones drain.
                    let (signal, watch) = drain::channel();
                    let old = r.current.swap(Arc::new(Generation {
                        config,
                        drain: watch,
                    }));
                    drop(old);
                    if let Some(r) = running.get_mut(&name) {
                        let old_signal = std::mem::replace(&mut r.signal, signal);
                        self.drain_later(old_signal);
                    }
                    tracing::info!(listener = %name, "listener updated");
                }
                _ => match self.start(Arc::clone(&config)) {
                    Ok(new) => {
                        if let Some(old) = running.insert(name.clone(), new) {
                            self.retire(old);
                        }
                        tracing::info!(listener = %name, address = %config.address, "listener started");
                    }
                    Err(e) => errors.push(format!(
                        "listener '{name}': cannot bind {}: {e}",
                        config.address
                    )),
                },
            }
        }
        let handoff: Handoff = running
            .values()
            .map(|r| (r.current.load().config.address, Arc::clone(&r.current)))
            .collect();
        self.handoff.store(Arc::new(handoff));
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    fn start(&self, config: Arc<ListenerConfig>) -> std::io::Result<Running> {
        let (signal, watch) = drain::channel();
        let current = Arc::new(ArcSwap::from_pointee(Generation {
            config: Arc::clone(&config),
            drain: watch,
        }));
        let stats = Arc::new(ListenerStats::default());
        let accept_task = if config.bind_to_port {
            let listener = bind(config.address)?;
            let current = Arc::clone(&current);
            let snapshot = Arc::clone(&self.snapshot);
            let handoff = Arc::clone(&self.handoff);
            let stats = Arc::clone(&stats);
            Some(tokio::spawn(accept_loop(
                listener, current, snapshot, handoff, stats,
            )))
        } else {
            None
        };
        Ok(Running {
            current,
            signal,
            accept_task,
            stats,
        })
    }

    fn retire(&self, r: Running) {
        if let Some(task) = r.accept_task {
            task.abort();
        }
        self.drain_later(r.signal);
    }

    /// Starts draining; connections that remain after the drain time are
    /// left to close on their own terms (their tasks hold no listener).
    fn drain_later(&self, signal: DrainSignal) {
        signal.start();
        let drain_time = self.drain_time;
        tokio::spawn(async move {
            let _ = tokio::time::timeout(drain_time, signal.finished()).await;
        });
    }

    /// Stops accepting everywhere and waits up to `window` for connections to finish.
    pub async fn drain_all(&self, window: Duration) {
        // The handoff table holds every generation (and its drain watch) too.
        self.handoff.store(Arc::default());
        let signals: Vec<DrainSignal> = match self.running.lock() {
            Ok(mut running) => running
                .drain()
                .map(|(_, r)| {
                    if let Some(t) = r.accept_task {
                        t.abort();
                    }
                    r.signal
                })
                .collect(),
            Err(_) => return,
        };
        for s in &signals {
            s.start();
        }
        let all = futures::future::join_all(signals.iter().map(|s| s.finished()));
        let _ = tokio::time::timeout(window, all).await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    current: Arc<ArcSwap<Generation>>,
    snapshot: SharedSnapshot,
    handoff: Arc<ArcSwap<Handoff>>,
    stats: Arc<ListenerStats>,
) {
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let generation = current.load_full();
        let snapshot = Arc::clone(&snapshot);
        let handoff = handoff.load_full();
        let stats = Arc::clone(&stats);
        stats.downstream_cx_total.fetch_add(1, Ordering::Relaxed);
        stats.downstream_cx_active.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            handle_connection(stream, remote, generation, snapshot, &handoff).await;
            stats.downstream_cx_active.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// The listener that owns an original destination: exact address first,
/// then the wildcard address on the same port.
fn handoff_target(handoff: &Handoff, dst: SocketAddr) -> Option<Arc<Generation>> {
    if let Some(g) = handoff.get(&dst) {
        return Some(g.load_full());
    }
    let any: SocketAddr = if dst.is_ipv4() {
        ([0, 0, 0, 0], dst.port()).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, dst.port()).into()
    };
    handoff.get(&any).map(|g| g.load_full())
}

async fn handle_connection(
    stream: TcpStream,
    remote: SocketAddr,
    mut generation: Arc<Generation>,
    snapshot: SharedSnapshot,
    handoff: &Handoff,
) {
    let Ok(mut local) = stream.local_addr() else {
        return;
    };
    let mut original = None;
    if generation.config.use_original_dst || generation.config.original_dst_filter {
        if let Some(dst) = original_dst::original_dst(&stream) {
            original = Some(dst);
            local = dst;
        }
        if generation.config.use_original_dst
            && let Some(dst) = original
            && let Some(target) = handoff_target(handoff, dst)
            && !Arc::ptr_eq(&target.config, &generation.config)
        {
            generation = target;
        }
    }
    let config = &generation.config;
    let inspection = if config.tls_inspector || config.http_inspector {
        inspect::inspect(
            &stream,
            config.tls_inspector,
            config.http_inspector,
            config.inspect_timeout,
        )
        .await
    } else {
        inspect::Inspection::default()
    };
    let facts = ConnectionFacts {
        local: Some(local),
        remote: Some(remote),
        server_name: inspection.server_name.clone(),
        transport_protocol: if inspection.tls { "tls" } else { "raw_buffer" },
        application_protocols: inspection.alpn.clone(),
    };
    let Some(chain) = config.select(&facts) else {
        tracing::debug!(listener = %config.name, %remote, "no filter chain matched; closing");
        return;
    };
    let drain = generation.drain.clone();
    let sni = inspection.server_name.clone();
    match &chain.tls {
        Some(tls) => {
            let tls_stream = match accept_tls(stream, tls).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(listener = %config.name, %remote, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let peer = PeerIdentity::from_server_connection(tls_stream.get_ref().1).map(Arc::new);
            let down = Downstream {
                remote,
                local,
                tls: true,
                peer,
                sni,
                original,
            };
            run_chain(tls_stream, chain, down, snapshot, drain).await;
        }
        None => {
            let down = Downstream {
                remote,
                local,
                tls: false,
                peer: None,
                sni,
                original,
            };
            run_chain(stream, chain, down, snapshot, drain).await;
        }
    }
}

/// What a filter chain knows about its downstream connection.
struct Downstream {
    remote: SocketAddr,
    local: SocketAddr,
    tls: bool,
    /// The verified client certificate's identity, when one was presented.
    peer: Option<Arc<PeerIdentity>>,
    /// SNI as the TLS inspector read it.
    sni: Option<String>,
    original: Option<SocketAddr>,
}

/// Network filters before the terminal (RBAC), then the terminal.
async fn run_chain<IO>(
    io: IO,
    chain: &CompiledChain,
    down: Downstream,
    snapshot: SharedSnapshot,
    drain: DrainWatch,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    if chain.network_rbac.is_empty() && chain.network_ext_authz.is_empty() {
        run_terminal(io, &chain.terminal, down, snapshot, drain).await;
        return;
    }
    let metadata = crate::rbac::DynamicMetadata::default();
    let input = crate::rbac::Input {
        http: None,
        local: down.local,
        direct_remote: down.remote,
        remote: down.remote.ip(),
        tls: down.tls,
        peer: down.peer.as_deref(),
        requested_server_name: down.sni.as_deref().unwrap_or(""),
        metadata: &metadata,
    };
    let (io, metadata) = match super::network_rbac::gate(io, &chain.network_rbac, input).await {
        Ok(gated) => gated,
        Err(()) => {
            tracing::debug!(remote = %down.remote, "connection closed by network RBAC");
            return;
        }
    };
    let conn = super::network_ext_authz::Connection {
        remote: down.remote,
        local: down.local,
        peer: down.peer.as_deref(),
        sni: down.sni.as_deref(),
    };
    if !super::network_ext_authz::gate(&chain.network_ext_authz, conn, &metadata, &snapshot).await {
        tracing::debug!(remote = %down.remote, "connection closed by network ext_authz");
        return;
    }
    run_terminal(io, &chain.terminal, down, snapshot, drain).await;
}

async fn run_terminal<IO>(
    io: IO,
    terminal: &Terminal,
    down: Downstream,
    snapshot: SharedSnapshot,
    mut drain: DrainWatch,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    match terminal {
        Terminal::Http(hcm) => {
            let info = Arc::new(ConnInfo {
                remote: down.remote,
                local: down.local,
                tls: down.tls,
                peer: down.peer,
                requested_server_name: down.sni,
                hcm: Arc::clone(hcm),
                snapshot,
                connection_id: crate::access_log::next_connection_id(),
            });
            serve_connection(io, info, drain).await;
        }
        Terminal::Tcp(tcp) => {
            let tcp = Arc::clone(tcp);
            // Always built: the Istio TCP metrics read it too.
            let entry = {
                let mut e = crate::access_log::Entry::connection(
                    down.remote,
                    down.local,
                    std::time::SystemTime::now(),
                );
                e.peer = down.peer.clone();
                e.requested_server_name = down.sni.clone();
                e.connection_id = crate::access_log::next_connection_id();
                Some(e)
            };
            tokio::select! {
                _ = tcp.serve(io, &snapshot, down.original, entry) => {}
                // Raw TCP has no graceful close: on drain the connection is
                // left to finish until the drain window ends.
                _ = async { drain.signaled().await; std::future::pending::<()>().await } => {}
            }
        }
    }
}

/// The TLS handshake of a filter chain. A client whose ALPN offer shares
/// nothing with the chain's list is served without ALPN, as Envoy
/// (BoringSSL) does, where rustls alone would refuse the handshake: Istio
/// sidecars offer `istio-peer-exchange`/`istio` to inbound chains that
/// list `h2`/`http/1.1`.
async fn accept_tls<S>(
    stream: S,
    config: &Arc<rustls::ServerConfig>,
) -> std::io::Result<tokio_rustls::server::TlsStream<S>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let start =
        tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
    let offered: Vec<&[u8]> = start
        .client_hello()
        .alpn()
        .map(|it| it.collect())
        .unwrap_or_default();
    let mismatch = !offered.is_empty()
        && !config.alpn_protocols.is_empty()
        && !config
            .alpn_protocols
            .iter()
            .any(|p| offered.contains(&p.as_slice()));
    let config = if mismatch {
        let mut c = (**config).clone();
        c.alpn_protocols.clear();
        Arc::new(c)
    } else {
        Arc::clone(config)
    };
    start.into_stream(config).await
}
