//! ADS client ⇄ server round trips over real sockets, for both protocols.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use tokio::sync::oneshot;
use xds::client::{self, AdsClientConfig, AdsHandle, AdsProtocol, ResourceSink};
use xds::server::{SnapshotCache, serve_listener};
use xds::snapshot::{Resources, Snapshot};
use xds::type_url::{self, CLUSTER, LISTENER, ROUTE};

/// Records what the client delivers; rejects any set containing a name
/// starting with "bad".
#[derive(Default)]
struct Sink {
    current: Mutex<BTreeMap<String, Resources>>,
    /// (type, version, names) per apply call, in order.
    applies: Mutex<Vec<(String, String, Vec<String>)>>,
}

impl ResourceSink for Sink {
    fn apply(&self, type_url: &str, version: &str, resources: &Resources) -> Result<(), String> {
        let names: Vec<String> = resources.keys().cloned().collect();
        self.applies.lock().expect("lock").push((
            type_url.to_owned(),
            version.to_owned(),
            names.clone(),
        ));
        if let Some(bad) = names.iter().find(|n| n.starts_with("bad")) {
            return Err(format!("rejected {bad}"));
        }
        self.current
            .lock()
            .expect("lock")
            .insert(type_url.to_owned(), resources.clone());
        Ok(())
    }
}

impl Sink {
    fn names(&self, t: &str) -> Option<Vec<String>> {
        self.current
            .lock()
            .expect("lock")
            .get(t)
            .map(|r| r.keys().cloned().collect())
    }
    fn get(&self, t: &str, name: &str) -> Option<prost_types::Any> {
        self.current
            .lock()
            .expect("lock")
            .get(t)
            .and_then(|r| r.get(name).cloned())
    }
    fn apply_count(&self, t: &str) -> usize {
        self.applies
            .lock()
            .expect("lock")
            .iter()
            .filter(|a| a.0 == t)
            .count()
    }
}

fn cluster(name: &str, timeout_s: i64) -> prost_types::Any {
    type_url::pack(&Cluster {
        name: name.into(),
        connect_timeout: Some(envoy_types::pb::google::protobuf::Duration {
            seconds: timeout_s,
            nanos: 0,
        }),
        ..Default::default()
    })
}

fn listener(name: &str) -> prost_types::Any {
    type_url::pack(&Listener {
        name: name.into(),
        ..Default::default()
    })
}

fn route(name: &str, tag: &str) -> prost_types::Any {
    type_url::pack(&RouteConfiguration {
        name: name.into(),
        internal_only_headers: vec![tag.into()],
        ..Default::default()
    })
}

fn set(items: &[prost_types::Any]) -> Resources {
    items
        .iter()
        .map(|a| {
            (
                type_url::resource_name(a.clone()).expect("name").0,
                a.clone(),
            )
        })
        .collect()
}

fn snapshot(
    clusters: &[prost_types::Any],
    listeners: &[prost_types::Any],
    routes: &[prost_types::Any],
) -> Snapshot {
    let mut s = Snapshot::new();
    s.set_hashed(CLUSTER, set(clusters));
    s.set_hashed(LISTENER, set(listeners));
    s.set_hashed(ROUTE, set(routes));
    s
}

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(addr: SocketAddr, cache: Arc<SnapshotCache>) -> Self {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            if let Err(e) = serve_listener(listener, cache, async move {
                let _ = rx.await;
            })
            .await
            {
                panic!("server failed: {e}");
            }
        });
        Self {
            addr,
            stop: Some(stop),
            task,
        }
    }

    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(5), &mut self.task)
            .await
            .expect("server stops within 5s")
            .expect("server task");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn start_client(
    addr: SocketAddr,
    node_id: &str,
    protocol: AdsProtocol,
    sink: Arc<Sink>,
) -> (AdsHandle, tokio::task::JoinHandle<()>) {
    let node = Node {
        id: node_id.into(),
        cluster: "test".into(),
        ..Default::default()
    };
    let mut config =
        AdsClientConfig::from_uri(&format!("http://{addr}"), node, protocol).expect("config");
    config.backoff_base = Duration::from_millis(50);
    config.backoff_max = Duration::from_millis(200);
    client::spawn(config, sink)
}

/// Polls `cond` until true, failing the test after 5 s.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn strs(v: &[&str]) -> Option<Vec<String>> {
    Some(v.iter().map(|s| (*s).to_owned()).collect())
}

fn names(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

async fn sync_update_remove(protocol: AdsProtocol) {
    let node = format!("sidecar~10.0.0.1~sync-{protocol:?}.default~default.svc.cluster.local");
    let cache = SnapshotCache::new();
    cache.set_snapshot(
        &node,
        snapshot(
            &[cluster("c1", 1), cluster("c2", 1)],
            &[listener("l1")],
            &[],
        ),
    );
    let server = Server::start("127.0.0.1:0".parse().expect("addr"), cache.clone()).await;
    let sink = Arc::new(Sink::default());
    let (handle, task) = start_client(server.addr, &node, protocol, sink.clone());

    eventually("initial sync", || {
        sink.names(CLUSTER) == strs(&["c1", "c2"]) && sink.names(LISTENER) == strs(&["l1"])
    })
    .await;
    // Clusters are applied before listeners, as Envoy does.
    let order: Vec<String> = sink
        .applies
        .lock()
        .expect("lock")
        .iter()
        .map(|a| a.0.clone())
        .collect();
    assert_eq!(
        order.first().map(String::as_str),
        Some(CLUSTER),
        "{order:?}"
    );
    let cds_version = cache
        .snapshot_for(&node)
        .and_then(|s| s.get(CLUSTER).map(|t| t.version.clone()))
        .expect("version");
    eventually("server sees ACK", || {
        cache.node_status(&node).is_some_and(|s| {
            s.connected
                && s.protocol == protocol
                && s.types
                    .get(CLUSTER)
                    .is_some_and(|t| t.acked_version == cds_version)
        })
    })
    .await;
    assert_eq!(
        handle
            .status()
            .types
            .get(CLUSTER)
            .map(|t| t.acked_version.clone()),
        Some(cds_version)
    );
    assert!(handle.status().connected);

    // Update c1, remove c2, add c3; listeners unchanged.
    let lds_applies = sink.apply_count(LISTENER);
    cache.set_snapshot(
        &node,
        snapshot(
            &[cluster("c1", 7), cluster("c3", 1)],
            &[listener("l1")],
            &[],
        ),
    );
    eventually("update", || sink.names(CLUSTER) == strs(&["c1", "c3"])).await;
    assert_eq!(sink.get(CLUSTER, "c1"), Some(cluster("c1", 7)));
    assert_eq!(
        sink.apply_count(LISTENER),
        lds_applies,
        "unchanged type is not re-sent"
    );

    // Remove every listener.
    cache.set_snapshot(&node, snapshot(&[cluster("c1", 7)], &[], &[]));
    eventually("removal", || {
        sink.names(CLUSTER) == strs(&["c1"]) && sink.names(LISTENER) == strs(&[])
    })
    .await;

    handle.shutdown();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("client stops")
        .expect("client task");
    eventually("server sees disconnect", || {
        cache.node_status(&node).is_some_and(|s| !s.connected)
    })
    .await;
    server.shutdown().await;
}

async fn nack_keeps_old_set(protocol: AdsProtocol) {
    let node = format!("nack-{protocol:?}");
    let cache = SnapshotCache::new();
    cache.set_snapshot(&node, snapshot(&[cluster("c1", 1)], &[], &[]));
    let server = Server::start("127.0.0.1:0".parse().expect("addr"), cache.clone()).await;
    let sink = Arc::new(Sink::default());
    let (handle, _task) = start_client(server.addr, &node, protocol, sink.clone());
    eventually("initial sync", || sink.names(CLUSTER) == strs(&["c1"])).await;
    let good = cache
        .snapshot_for(&node)
        .and_then(|s| s.get(CLUSTER).map(|t| t.version.clone()))
        .expect("v");
    eventually("ACK", || {
        cache.node_status(&node).is_some_and(|s| {
            s.types
                .get(CLUSTER)
                .is_some_and(|t| t.acked_version == good)
        })
    })
    .await;

    cache.set_snapshot(
        &node,
        snapshot(&[cluster("c1", 2), cluster("bad-cluster", 1)], &[], &[]),
    );
    eventually("server sees NACK", || {
        cache.node_status(&node).is_some_and(|s| {
            s.types.get(CLUSTER).is_some_and(|t| {
                t.last_nack
                    .as_ref()
                    .is_some_and(|n| n.message == "rejected bad-cluster")
            })
        })
    })
    .await;
    let status = cache.node_status(&node).expect("status");
    assert_eq!(
        status.types.get(CLUSTER).map(|t| t.acked_version.clone()),
        Some(good.clone()),
        "ACKed version unchanged"
    );
    assert_eq!(sink.names(CLUSTER), strs(&["c1"]));
    assert_eq!(
        sink.get(CLUSTER, "c1"),
        Some(cluster("c1", 1)),
        "old set kept"
    );
    let client_status = handle.status();
    let cds = client_status.types.get(CLUSTER).expect("cds status");
    assert_eq!(cds.last_nack.as_deref(), Some("rejected bad-cluster"));
    assert_eq!(cds.acked_version, good);

    // A fixed snapshot is accepted again.
    cache.set_snapshot(&node, snapshot(&[cluster("c1", 3)], &[], &[]));
    eventually("recovery", || {
        sink.get(CLUSTER, "c1") == Some(cluster("c1", 3))
    })
    .await;
    eventually("nack cleared", || {
        handle
            .status()
            .types
            .get(CLUSTER)
            .is_some_and(|t| t.last_nack.is_none())
    })
    .await;
    handle.shutdown();
    server.shutdown().await;
}

async fn named_interest(protocol: AdsProtocol) {
    let node = format!("interest-{protocol:?}");
    let cache = SnapshotCache::new();
    let routes = [route("r1", "a"), route("r2", "a"), route("r3", "a")];
    cache.set_snapshot(&node, snapshot(&[], &[listener("l1")], &routes));
    let server = Server::start("127.0.0.1:0".parse().expect("addr"), cache.clone()).await;
    let sink = Arc::new(Sink::default());
    let (handle, _task) = start_client(server.addr, &node, protocol, sink.clone());
    eventually("LDS", || sink.names(LISTENER) == strs(&["l1"])).await;
    assert_eq!(sink.names(ROUTE), None, "no RDS before interest");

    handle.set_interest(ROUTE, names(&["r1"]));
    eventually("r1", || sink.names(ROUTE) == strs(&["r1"])).await;
    handle.set_interest(ROUTE, names(&["r1", "r2"]));
    eventually("r1+r2", || sink.names(ROUTE) == strs(&["r1", "r2"])).await;

    handle.set_interest(ROUTE, names(&["r2"]));
    if protocol == AdsProtocol::StateOfTheWorld {
        eventually("r2 only", || sink.names(ROUTE) == strs(&["r2"])).await;
    } else {
        eventually("server drops r1", || {
            cache
                .node_status(&node)
                .is_some_and(|s| s.types.get(ROUTE).is_some_and(|t| !t.sent_nonce.is_empty()))
        })
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Changes to routes we no longer want (r1) or never wanted (r3) are not delivered.
    cache.set_snapshot(
        &node,
        snapshot(
            &[],
            &[listener("l1")],
            &[route("r1", "b"), route("r2", "b"), route("r3", "b")],
        ),
    );
    eventually("r2 updated", || {
        sink.get(ROUTE, "r2") == Some(route("r2", "b"))
    })
    .await;
    assert_eq!(sink.names(ROUTE), strs(&["r2"]));
    handle.shutdown();
    server.shutdown().await;
}

async fn reconnect_keeps_state(protocol: AdsProtocol) {
    let node = format!("reconnect-{protocol:?}");
    let snap = snapshot(&[cluster("c1", 1)], &[listener("l1")], &[route("r1", "a")]);
    let cache = SnapshotCache::new();
    cache.set_snapshot(&node, snap.clone());
    let server = Server::start("127.0.0.1:0".parse().expect("addr"), cache.clone()).await;
    let addr = server.addr;
    let sink = Arc::new(Sink::default());
    let (handle, _task) = start_client(addr, &node, protocol, sink.clone());
    handle.set_interest(ROUTE, names(&["r1"]));
    eventually("initial sync", || {
        sink.names(ROUTE) == strs(&["r1"]) && sink.names(CLUSTER) == strs(&["c1"])
    })
    .await;
    let applies_before = sink.applies.lock().expect("lock").len();

    server.shutdown().await;
    eventually("client notices", || !handle.status().connected).await;
    // Let a few reconnect attempts fail against the closed port.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        sink.names(CLUSTER),
        strs(&["c1"]),
        "config kept while disconnected"
    );
    assert!(handle.status().last_error.is_some());

    // A fresh control plane (new cache) on the same port with the same config.
    let cache2 = SnapshotCache::new();
    cache2.set_snapshot(&node, snap);
    let server2 = Server::start(addr, cache2.clone()).await;
    eventually("reconnected", || {
        handle.status().connected && handle.status().streams == 2
    })
    .await;
    eventually("new server has the node in sync", || {
        cache2.node_status(&node).is_some_and(|s| {
            s.connected
                && [CLUSTER, LISTENER, ROUTE].iter().all(|t| {
                    s.types.get(*t).is_some_and(|t| {
                        !t.sent_nonce.is_empty() && (t.acked_version == t.sent_version)
                    })
                })
        })
    })
    .await;
    let applies = sink.applies.lock().expect("lock").clone();
    assert!(
        applies.iter().all(|(_, _, n)| !n.is_empty()),
        "never applied an empty set: {applies:?}"
    );
    if protocol == AdsProtocol::Delta {
        // initial_resource_versions told the server what we had: nothing re-sent.
        assert_eq!(applies.len(), applies_before, "{applies:?}");
    }
    assert_eq!(sink.names(ROUTE), strs(&["r1"]));

    // And the new server can push updates.
    cache2.set_snapshot(
        &node,
        snapshot(&[cluster("c1", 9)], &[listener("l1")], &[route("r1", "z")]),
    );
    eventually("update after reconnect", || {
        sink.get(ROUTE, "r1") == Some(route("r1", "z"))
            && sink.get(CLUSTER, "c1") == Some(cluster("c1", 9))
    })
    .await;
    handle.shutdown();
    server2.shutdown().await;
}

#[tokio::test]
async fn sotw_sync_update_remove() {
    sync_update_remove(AdsProtocol::StateOfTheWorld).await;
}

#[tokio::test]
async fn delta_sync_update_remove() {
    sync_update_remove(AdsProtocol::Delta).await;
}

#[tokio::test]
async fn sotw_nack_keeps_old_set() {
    nack_keeps_old_set(AdsProtocol::StateOfTheWorld).await;
}

#[tokio::test]
async fn delta_nack_keeps_old_set() {
    nack_keeps_old_set(AdsProtocol::Delta).await;
}

#[tokio::test]
async fn sotw_named_interest() {
    named_interest(AdsProtocol::StateOfTheWorld).await;
}

#[tokio::test]
async fn delta_named_interest() {
    named_interest(AdsProtocol::Delta).await;
}

#[tokio::test]
async fn sotw_reconnect_keeps_state() {
    reconnect_keeps_state(AdsProtocol::StateOfTheWorld).await;
}

#[tokio::test]
async fn delta_reconnect_keeps_state() {
    reconnect_keeps_state(AdsProtocol::Delta).await;
}

/// A SotW push of a named type (RDS here, EDS alike) carries only the
/// resources that changed; the client keeps the ones it omits, as Envoy does.
#[tokio::test]
async fn sotw_named_push_carries_only_changes() {
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
    use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;

    let node_id = "partial";
    let cache = SnapshotCache::new();
    let v1 = [route("r1", "a"), route("r2", "a"), route("r3", "a")];
    cache.set_snapshot(node_id, snapshot(&[], &[listener("l1")], &v1));
    let server = Server::start("127.0.0.1:0".parse().expect("addr"), cache.clone()).await;

    // On the wire, with a raw stream.
    let mut raw = AggregatedDiscoveryServiceClient::connect(format!("http://{}", server.addr))
        .await
        .expect("connect");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let request = |nonce: &str, version: &str| DiscoveryRequest {
        node: Some(Node {
            id: node_id.into(),
            ..Default::default()
        }),
        type_url: ROUTE.into(),
        resource_names: vec!["r1".into(), "r2".into()],
        response_nonce: nonce.into(),
        version_info: version.into(),
        ..Default::default()
    };
    tx.send(request("", "")).expect("send");
    let mut responses = raw
        .stream_aggregated_resources(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    let first = responses.message().await.expect("recv").expect("response");
    assert_eq!(first.resources.len(), 2, "a request is answered in full");
    tx.send(request(&first.nonce, &first.version_info))
        .expect("ack");

    let v2 = [route("r1", "a"), route("r2", "b"), route("r3", "b")];
    cache.set_snapshot(node_id, snapshot(&[], &[listener("l1")], &v2));
    let push = responses.message().await.expect("recv").expect("response");
    let pushed: Vec<String> = push
        .resources
        .into_iter()
        .map(|a| {
            type_url::resource_name(type_url::from_wire(a))
                .expect("name")
                .0
        })
        .collect();
    assert_eq!(
        pushed,
        vec!["r2".to_owned()],
        "only the changed watched route"
    );
    assert_ne!(push.version_info, first.version_info);
    drop(tx);

    // Through the client: the omitted r1 stays.
    let sink = Arc::new(Sink::default());
    let (handle, _task) = start_client(
        server.addr,
        node_id,
        AdsProtocol::StateOfTheWorld,
        sink.clone(),
    );
    handle.set_interest(ROUTE, names(&["r1", "r2"]));
    eventually("r1+r2", || sink.names(ROUTE) == strs(&["r1", "r2"])).await;
    let v3 = [route("r1", "a"), route("r2", "c"), route("r3", "b")];
    cache.set_snapshot(node_id, snapshot(&[], &[listener("l1")], &v3));
    eventually("r2 updated", || {
        sink.get(ROUTE, "r2") == Some(route("r2", "c"))
    })
    .await;
    assert_eq!(sink.get(ROUTE, "r1"), Some(route("r1", "a")));
    handle.shutdown();
    server.shutdown().await;
}
