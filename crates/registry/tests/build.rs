//! Registry building from real manifests: Bookinfo (local services and
//! workloads), ServiceEntries (DNS, inline endpoints, workloadSelector over
//! WorkloadEntries and local workloads), conflicts and bad entries.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use api::{Object, load};
use registry::{
    LocalManifest, Location, Protocol, Registry, Resolution, ResolvedWorkload, Runner, assign_ports,
};

const SUFFIX: &str = "cluster.local";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn parse(text: &str, origin: &str) -> Vec<Object> {
    let (objects, errors) = load::parse_documents(text, origin);
    assert!(errors.is_empty(), "{errors:?}");
    objects
}

/// Objects -> manifest -> ports -> registry, as `trellis up` does.
fn up(objects: &[Object]) -> (Registry, Vec<ResolvedWorkload>, Vec<String>) {
    let (manifest, mut diags) = LocalManifest::from_objects(objects);
    let workloads = assign_ports(&manifest.workloads, 21000, &BTreeSet::new()).expect("ports");
    let (registry, more) = Registry::build(objects, &workloads, SUFFIX);
    diags.extend(more);
    (
        registry,
        workloads,
        diags.iter().map(ToString::to_string).collect(),
    )
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn bookinfo_manifest_and_destination_rules() {
    let manifest = repo_root().join("examples/bookinfo/workloads.yaml");
    let (mut objects, errors) = load::load_file(&manifest);
    assert!(errors.is_empty(), "{errors:?}");
    let dr_path = Path::new("/work/shared/compat/istio/bookinfo/destination-rule-all.yaml");
    let have_dr = dr_path.exists();
    if have_dr {
        let (drs, errors) = load::load_file(dr_path);
        assert!(errors.is_empty(), "{errors:?}");
        objects.extend(drs);
    } else {
        eprintln!(
            "skipping DestinationRule checks: {} is absent",
            dr_path.display()
        );
    }
    for o in &objects {
        assert!(registry::local::validate(o).is_ok(), "{o:?}");
        assert!(api::validate(o).is_ok(), "{o:?}");
    }

    let (registry, workloads, diags) = up(&objects);
    assert!(diags.is_empty(), "{diags:?}");
    let names: Vec<&str> = workloads.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "details-v1",
            "productpage-v1",
            "ratings-v1",
            "reviews-v1",
            "reviews-v2",
            "reviews-v3"
        ]
    );
    let hosts: Vec<&str> = registry.services.keys().map(String::as_str).collect();
    assert_eq!(
        hosts,
        [
            "details.default.svc.cluster.local",
            "productpage.default.svc.cluster.local",
            "ratings.default.svc.cluster.local",
            "reviews.default.svc.cluster.local"
        ]
    );

    let reviews = registry
        .resolve_host("reviews", "default", SUFFIX)
        .expect("reviews");
    assert_eq!(
        reviews.aliases,
        ["reviews", "reviews.default", "reviews.default.svc"]
    );
    assert_eq!(reviews.location, Location::MeshInternal);
    assert_eq!(reviews.resolution, Resolution::Static);
    assert_eq!(reviews.export_to, ["*"]);
    assert_eq!(reviews.origin.file, manifest.display().to_string());
    let port = reviews.port(9080).expect("port 9080");
    assert_eq!(port.protocol, Protocol::Http);
    assert_eq!(port.target_port, 9080);

    let all = BTreeMap::new();
    let eps: Vec<_> = registry.endpoints(&reviews.hostname, 9080, &all).collect();
    assert_eq!(eps.len(), 3);
    for (ep, version) in eps.iter().zip(["v1", "v2", "v3"]) {
        let w = workloads
            .iter()
            .find(|w| w.name == format!("reviews-{version}"))
            .expect("workload");
        assert_eq!(ep.address, "127.0.0.1");
        assert_eq!(ep.port, u32::from(w.inbound_ports[&9080]));
        assert_ne!(w.inbound_ports[&9080], w.app_ports[&9080]);
        assert_eq!(
            ep.labels,
            labels(&[("app", "reviews"), ("version", version)])
        );
        assert_eq!(ep.service_account, "bookinfo-reviews");
        assert_eq!(ep.workload_name, w.name);
        assert!(ep.has_sidecar && ep.healthy);
    }
    for host in ["productpage", "details", "ratings"] {
        let svc = registry.resolve_host(host, "default", SUFFIX).expect(host);
        let eps: Vec<_> = registry.endpoints(&svc.hostname, 9080, &all).collect();
        assert_eq!(eps.len(), 1, "{host}");
        assert_eq!(eps[0].labels["version"], "v1");
    }

    // Every DestinationRule subset selects exactly one Bookinfo workload.
    if have_dr {
        let mut subsets = 0;
        for o in &objects {
            let api::Spec::DestinationRule(dr) = &o.spec else {
                continue;
            };
            let svc = registry
                .resolve_host(&dr.host, o.namespace(), SUFFIX)
                .expect("dr host in registry");
            for s in &dr.subsets {
                let n = registry.endpoints(&svc.hostname, 9080, &s.labels).count();
                // Bookinfo here has v1 of everything and reviews v1..v3
                // (no details-v2, ratings-v2*).
                let expect = usize::from(s.name == "v1" || svc.hostname.starts_with("reviews."));
                assert_eq!(n, expect, "{} subset {}", dr.host, s.name);
                subsets += 1;
            }
        }
        assert!(subsets >= 7, "{subsets}");
    }

    // What `trellis up` runs for productpage.
    let pp = workloads
        .iter()
        .find(|w| w.name == "productpage-v1")
        .expect("productpage");
    let args = pp.demo_args().expect("demo");
    let proxy = format!("http://127.0.0.1:{}", pp.outbound_port);
    let app = pp.app_ports[&9080].to_string();
    let expected: Vec<&str> = vec![
        "--service",
        "productpage",
        "--version",
        "v1",
        "--listen-addr",
        "127.0.0.1",
        "--http-port",
        &app,
        "--proxy",
        &proxy,
        "--call",
        "http://details:9080/details/0",
        "--call",
        "http://reviews:9080/reviews/0",
    ];
    assert_eq!(args, expected);
    assert_eq!(
        pp.node_id(SUFFIX),
        "sidecar~127.0.0.1~productpage-v1.default~default.svc.cluster.local"
    );
    assert_eq!(
        pp.spiffe_id("cluster.local"),
        "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
    );
    // All ports distinct.
    let mut all_ports = BTreeSet::new();
    for w in &workloads {
        for p in [w.admin_port, w.outbound_port]
            .into_iter()
            .chain(w.app_ports.values().copied())
            .chain(w.inbound_ports.values().copied())
        {
            assert!(all_ports.insert(p), "port {p} assigned twice");
        }
    }
}

#[test]
fn service_entry_dns_resolution() {
    let objects = parse(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: external-api, namespace: default}
spec:
  hosts: [api.example.com, www.example.com]
  location: MESH_EXTERNAL
  ports:
  - {number: 443, name: tls, protocol: TLS}
  - {number: 80, name: http-plain}
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: data}
spec:
  hosts: [db.internal]
  location: MESH_INTERNAL
  ports: [{number: 5432, name: tcp-pg, protocol: TCP, targetPort: 15432}]
  resolution: DNS_ROUND_ROBIN
  endpoints: [{address: db1.example.net, locality: us-east/a, weight: 3}]
  exportTo: ["."]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: passthrough}
spec:
  hosts: [legacy.example.org]
  addresses: [192.168.10.0/24]
  ports: [{number: 8443, name: https, protocol: HTTPS}]
"#,
        "se.yaml",
    );
    let (registry, _, diags) = up(&objects);
    assert!(diags.is_empty(), "{diags:?}");
    let none = BTreeMap::new();

    let api = registry.service("api.example.com").expect("api");
    assert_eq!(api.resolution, Resolution::Dns);
    assert_eq!(api.location, Location::MeshExternal);
    assert!(api.aliases.is_empty());
    assert_eq!(api.port(443).expect("443").protocol, Protocol::Tls);
    assert_eq!(api.port(80).expect("80").protocol, Protocol::Http);
    assert_eq!(api.origin.kind, "ServiceEntry");
    assert_eq!(api.origin.file, "se.yaml");
    let eps: Vec<_> = registry.endpoints("api.example.com", 443, &none).collect();
    assert_eq!(eps.len(), 1);
    assert_eq!(
        (eps[0].address.as_str(), eps[0].port),
        ("api.example.com", 443)
    );
    assert!(!eps[0].has_sidecar);
    let www: Vec<_> = registry.endpoints("www.example.com", 80, &none).collect();
    assert_eq!(
        (www[0].address.as_str(), www[0].port),
        ("www.example.com", 80)
    );

    let db = registry.service("db.internal").expect("db");
    assert_eq!(db.resolution, Resolution::DnsRoundRobin);
    assert_eq!(db.location, Location::MeshInternal);
    assert_eq!(db.namespace, "data");
    assert_eq!(db.export_to, ["."]);
    let eps: Vec<_> = registry.endpoints("db.internal", 5432, &none).collect();
    assert_eq!(eps.len(), 1);
    assert_eq!(eps[0].address, "db1.example.net");
    assert_eq!(eps[0].port, 15432);
    assert_eq!(eps[0].locality, "us-east/a");
    assert_eq!(eps[0].weight, 3);

    let legacy = registry.service("legacy.example.org").expect("legacy");
    assert_eq!(legacy.resolution, Resolution::None);
    assert_eq!(legacy.addresses, ["192.168.10.0/24"]);
    assert_eq!(
        registry
            .endpoints("legacy.example.org", 8443, &none)
            .count(),
        0
    );
    assert!(
        registry
            .endpoints
            .contains_key(&("legacy.example.org".to_string(), 8443))
    );
}

#[test]
fn workload_entries_selected_by_service_entry_and_local_service() {
    let objects = parse(
        r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm-1, namespace: legacy}
spec:
  address: 10.0.0.5
  ports: {http: 8080}
  labels: {app: billing, version: vm}
  serviceAccount: billing-vm
  locality: eu-west/b
  network: vm-net
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm-2, namespace: legacy}
spec:
  address: 10.0.0.6
  labels: {app: billing, version: vm2}
  weight: 5
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: elsewhere, namespace: other}
spec: {address: 10.9.9.9, labels: {app: billing}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: billing, namespace: legacy}
spec:
  hosts: [billing.legacy.mesh]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 9000}]
  workloadSelector: {labels: {app: billing}}
---
apiVersion: local.trellis.dev/v1alpha1
kind: Workload
metadata: {name: billing-local, namespace: legacy, labels: {app: billing, version: local}}
spec: {demo: {}}
---
apiVersion: local.trellis.dev/v1alpha1
kind: Service
metadata: {name: billing, namespace: legacy}
spec:
  selector: {app: billing}
  ports: [{name: grpc, port: 7070, targetPort: 9000}]
"#,
        "we.yaml",
    );
    let (registry, workloads, diags) = up(&objects);
    assert!(diags.is_empty(), "{diags:?}");
    let local = &workloads[0];
    // Ports derived from the selecting Service and ServiceEntry (both 9000).
    assert_eq!(
        local.inbound_ports.keys().copied().collect::<Vec<_>>(),
        [9000]
    );
    assert_eq!(
        local.runner,
        Runner::Demo {
            service: "billing".into(),
            version: "local".into(),
            calls: vec![]
        }
    );

    let none = BTreeMap::new();
    let eps: Vec<_> = registry
        .endpoints("billing.legacy.mesh", 80, &none)
        .collect();
    let addrs: Vec<(&str, u32)> = eps.iter().map(|e| (e.address.as_str(), e.port)).collect();
    assert_eq!(
        addrs,
        [
            ("127.0.0.1", u32::from(local.inbound_ports[&9000])),
            ("10.0.0.5", 8080),
            ("10.0.0.6", 9000)
        ]
    );
    let vm1 = eps[1];
    assert_eq!(vm1.workload_name, "vm-1");
    assert_eq!(vm1.namespace, "legacy");
    assert_eq!(vm1.service_account, "billing-vm");
    assert_eq!(
        (vm1.locality.as_str(), vm1.network.as_str()),
        ("eu-west/b", "vm-net")
    );
    assert!(vm1.has_sidecar, "a service account means istio TLS mode");
    assert!(!eps[2].has_sidecar);
    assert_eq!(eps[2].weight, 5);
    let subset = labels(&[("version", "vm")]);
    assert_eq!(
        registry
            .endpoints("billing.legacy.mesh", 80, &subset)
            .count(),
        1
    );

    // The local Service selects the same WorkloadEntries (Kubernetes Service
    // + WorkloadEntry in Istio) and the local workload.
    let svc = registry
        .service("billing.legacy.svc.cluster.local")
        .expect("svc");
    assert_eq!(svc.port(7070).expect("7070").protocol, Protocol::Grpc);
    let eps: Vec<_> = registry.endpoints(&svc.hostname, 7070, &none).collect();
    assert_eq!(eps.len(), 3);
    assert_eq!(eps[1].port, 9000, "no `grpc` port override on vm-1");
}

#[test]
fn conflicts_and_bad_entries_are_diagnosed_not_fatal() {
    let objects = parse(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: first}
spec: {hosts: [dup.example.com], ports: [{number: 80, name: http}], resolution: DNS}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: second}
spec: {hosts: [dup.example.com, other.example.com], ports: [{number: 81, name: http}], resolution: DNS}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: shadow}
spec: {hosts: [web.default.svc.cluster.local], ports: [{number: 80, name: http}], resolution: DNS}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: dyn}
spec: {hosts: ["*.wild.example.com"], ports: [{number: 80, name: http}], resolution: DYNAMIC_DNS}
---
apiVersion: local.trellis.dev/v1alpha1
kind: Service
metadata: {name: web}
spec: {selector: {app: web}, ports: [{name: http, port: 80}]}
---
apiVersion: local.trellis.dev/v1alpha1
kind: Service
metadata: {name: broken}
spec: {selector: {app: web}, ports: [{name: http, port: 0}]}
"#,
        "c.yaml",
    );
    let (registry, _, diags) = up(&objects);
    assert_eq!(
        registry
            .service("dup.example.com")
            .expect("dup")
            .origin
            .name,
        "first"
    );
    assert!(registry.service("other.example.com").is_some());
    assert_eq!(
        registry
            .service("web.default.svc.cluster.local")
            .expect("web")
            .origin
            .kind,
        "Service",
        "the platform service wins over a ServiceEntry"
    );
    assert!(registry.service("*.wild.example.com").is_none());
    assert!(
        registry
            .service("broken.default.svc.cluster.local")
            .is_none()
    );
    assert_eq!(diags.len(), 5, "{diags:#?}");
    assert!(diags.iter().any(|d| d.starts_with("c.yaml: ServiceEntry default/second: host \"dup.example.com\" is already declared by ServiceEntry default/first")), "{diags:#?}");
    assert!(
        diags
            .iter()
            .any(|d| d.contains("ServiceEntry default/shadow"))
    );
    assert!(diags.iter().any(|d| d.contains("DYNAMIC_DNS")));
    // Reported twice: once by the manifest reader, once by the registry.
    assert_eq!(
        diags
            .iter()
            .filter(|d| d.starts_with("c.yaml: Service default/broken: spec.ports[0].port: port 0"))
            .count(),
        2,
        "{diags:#?}"
    );
}
