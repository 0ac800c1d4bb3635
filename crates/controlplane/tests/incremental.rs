//! Incremental pushes against full generation: after every kind of change,
//! what each connected proxy holds must equal what a full push would give
//! it, and an endpoint-only change must leave every other type untouched.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use xds::client::{AdsClientConfig, AdsProtocol, ResourceSink};
use xds::type_url::{CLUSTER, ENDPOINT, LISTENER, ROUTE};

struct NullSink;

impl ResourceSink for NullSink {
    fn apply(
        &self,
        _: &str,
        _: &str,
        _: &BTreeMap<String, prost_types::Any>,
    ) -> Result<(), String> {
        Ok(())
    }
}

fn string_value(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    }
}

/// An Istio sidecar (capture mode) in `default` with address `ip`.
fn sidecar(ip: &str, app: &str) -> Node {
    let mut labels = Struct::default();
    labels.fields.insert("app".into(), string_value(app));
    let mut meta = Struct::default();
    for (k, v) in [
        ("NAMESPACE", "default"),
        ("SERVICE_ACCOUNT", app),
        ("WORKLOAD_NAME", app),
        ("INSTANCE_IPS", ip),
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
        id: format!("sidecar~{ip}~{app}-1.default~default.svc.cluster.local"),
        metadata: Some(meta),
        ..Default::default()
    }
}

fn service_entry(name: &str, resolution: &str, endpoints: &[&str]) -> String {
    let mut s = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  hosts: [{name}.default.svc.cluster.local]\n  location: MESH_INTERNAL\n  resolution: {resolution}\n  ports:\n  - {{number: 8080, name: http, protocol: HTTP}}\n  endpoints:\n"
    );
    for (i, a) in endpoints.iter().enumerate() {
        let version = if i % 2 == 0 { "v1" } else { "v2" };
        s.push_str(&format!(
            "  - address: {a}\n    labels: {{app: {name}, version: {version}}}\n    serviceAccount: {name}\n"
        ));
    }
    s
}

const RULE: &str = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: a\n  namespace: default\nspec:\n  host: a.default.svc.cluster.local\n  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}\n";

fn write(dir: &Path, file: &str, text: &str) {
    std::fs::write(dir.join(file), text).expect("write config");
}

fn versions(cp: &controlplane::ControlPlane, id: &str) -> BTreeMap<String, String> {
    cp.cache()
        .snapshot_for(id)
        .map(|s| {
            s.types()
                .map(|(t, ts)| (t.to_owned(), ts.version.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits (20 s at most) until every proxy of `ids` has ACKed what it holds.
async fn wait_synced(cp: &controlplane::ControlPlane, ids: &[String]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !cp.all_synced(ids) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            cp.unsynced_report(ids)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_pushes_equal_full_generation() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "a.yaml",
        &service_entry("a", "STATIC", &["10.1.0.1", "10.1.0.2"]),
    );
    write(
        dir.path(),
        "b.yaml",
        &service_entry("b", "STATIC", &["10.2.0.1", "10.0.0.9"]),
    );
    write(
        dir.path(),
        "c.yaml",
        &service_entry("c", "DNS", &["c1.example.com"]),
    );
    write(dir.path(), "dr.yaml", RULE);
    let cp = controlplane::ControlPlane::new(Vec::new(), api::MeshConfig::default());
    let generation = std::cell::Cell::new(0);
    // Rewrites one file (or none) and hands the directory to the control
    // plane as the watcher would.
    let reload = |cp: &controlplane::ControlPlane, file: Option<(&str, &str)>| {
        if let Some((file, text)) = file {
            write(dir.path(), file, text);
        }
        let mut snap = config::load_dir(dir.path());
        assert!(snap.errors.is_empty(), "{:?}", snap.errors);
        generation.set(generation.get() + 1);
        snap.generation = generation.get();
        cp.update_config(&snap);
    };
    let change = |cp: &controlplane::ControlPlane, file: &str, text: &str| {
        reload(cp, Some((file, text)));
    };
    reload(&cp, None);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let cache = Arc::clone(cp.cache());
    let server = tokio::spawn(xds::server::serve_listener(
        listener,
        cache,
        std::future::pending(),
    ));
    // Clients of nothing in particular, and one that is an instance of `b`.
    // A replica of the client shares its translation (same generation key).
    let nodes = [
        sidecar("10.0.0.1", "client"),
        sidecar("10.0.0.9", "b"),
        sidecar("10.0.0.2", "client"),
    ];
    let mut handles = Vec::new();
    for node in &nodes {
        let config = AdsClientConfig::from_uri(
            &format!("http://{addr}"),
            node.clone(),
            AdsProtocol::StateOfTheWorld,
        )
        .expect("config");
        let (handle, task) = xds::client::spawn(config, Arc::new(NullSink));
        // What Envoy asks for once it has clusters and listeners.
        let snapshot = cp.full_snapshot(node).expect("snapshot");
        for t in [ENDPOINT, ROUTE] {
            let names = snapshot
                .get(t)
                .map(|ts| ts.resources.keys().cloned().collect())
                .unwrap_or_default();
            handle.set_interest(t, names);
        }
        handles.push((handle, task));
    }
    let ids: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
    wait_synced(&cp, &ids).await;
    let check = |cp: &controlplane::ControlPlane, what: &str| {
        for node in &nodes {
            let held = cp.cache().snapshot_for(&node.id).expect("snapshot");
            let full = cp.full_snapshot(node).expect("full");
            assert!(
                *held == full,
                "{what}: {} holds what a full push would not give it",
                node.id
            );
        }
    };
    check(&cp, "first push");

    // An endpoint of `a` moves: only EDS changes, for every proxy.
    let before: Vec<_> = ids.iter().map(|id| versions(&cp, id)).collect();
    let pushes = |cp: &controlplane::ControlPlane, kind: &str| {
        cp.metrics().proxy_pushes().get(kind).copied().unwrap_or(0)
    };
    let (full, eds) = (pushes(&cp, "full"), pushes(&cp, "endpoints"));
    change(
        &cp,
        "a.yaml",
        &service_entry("a", "STATIC", &["10.1.0.1", "10.1.0.3"]),
    );
    check(&cp, "endpoint of a moved");
    assert_eq!(pushes(&cp, "full"), full, "no full push");
    assert_eq!(pushes(&cp, "endpoints"), eds + 3, "incremental pushes");
    for (id, before) in ids.iter().zip(&before) {
        let after = versions(&cp, id);
        for t in [CLUSTER, LISTENER, ROUTE] {
            assert_eq!(after.get(t), before.get(t), "{id}: {t} must not change");
        }
        assert_ne!(
            after.get(ENDPOINT),
            before.get(ENDPOINT),
            "{id}: EDS must change"
        );
    }

    // The same configuration again: nothing changes.
    let before: Vec<_> = ids.iter().map(|id| versions(&cp, id)).collect();
    reload(&cp, None);
    let after: Vec<_> = ids.iter().map(|id| versions(&cp, id)).collect();
    assert_eq!(before, after);

    // An instance of `b` that is the second proxy moves away: its inbound
    // side changes (full push), the other proxy's only EDS.
    let (full, eds) = (pushes(&cp, "full"), pushes(&cp, "endpoints"));
    change(
        &cp,
        "b.yaml",
        &service_entry("b", "STATIC", &["10.2.0.1", "10.2.0.2"]),
    );
    check(&cp, "own instance moved");
    assert_eq!(pushes(&cp, "full"), full + 1, "the instance's proxy");
    assert_eq!(pushes(&cp, "endpoints"), eds + 2, "the other proxies");

    // A DNS service's endpoints live in its cluster: a full push.
    let before = versions(&cp, &ids[0]);
    change(
        &cp,
        "c.yaml",
        &service_entry("c", "DNS", &["c2.example.com"]),
    );
    check(&cp, "DNS endpoint changed");
    assert_ne!(versions(&cp, &ids[0]).get(CLUSTER), before.get(CLUSTER));

    // A new service account behind `a` changes its clusters' SANs.
    change(
        &cp,
        "a.yaml",
        &service_entry("a", "STATIC", &["10.1.0.1", "10.1.0.3"]).replacen(
            "serviceAccount: a\n",
            "serviceAccount: other\n",
            1,
        ),
    );
    check(&cp, "service account changed");

    // Every proxy ACKs what it holds.
    wait_synced(&cp, &ids).await;
    for (handle, task) in handles {
        handle.shutdown();
        let _ = task.await;
    }
    server.abort();
}
