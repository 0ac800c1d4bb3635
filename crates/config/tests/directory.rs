//! DirectorySource and load_dir with real files in temporary directories.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use config::{ConfigSnapshot, ConfigSource, DEFAULT_DEBOUNCE, DirectorySource, load_dir};

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!(
            "trellis-config-{name}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }

    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let path = self.0.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&path, text).expect("write");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn set_mtime(path: &Path, at: std::time::SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(at))
        .expect("set mtime");
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn keys(s: &ConfigSnapshot) -> Vec<String> {
    s.objects
        .iter()
        .map(|o| format!("{} {}", o.kind, o.key()))
        .collect()
}

const SE_DNS: &str = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: ext, namespace: default}\nspec:\n  hosts: [api.example.com]\n  ports: [{number: 443, name: tls, protocol: TLS}]\n  resolution: DNS\n";

#[test]
fn bookinfo_directory_loads_and_builds_the_registry() {
    let dir = TempDir::new("bookinfo");
    let manifest = std::fs::read_to_string(repo_root().join("examples/bookinfo/workloads.yaml"))
        .expect("examples/bookinfo/workloads.yaml");
    dir.write("workloads.yaml", &manifest);
    let dr = Path::new("/work/shared/compat/istio/bookinfo/destination-rule-all.yaml");
    let have_dr = dr.exists();
    if have_dr {
        let text = std::fs::read_to_string(dr).expect("read compat file");
        dir.write("istio/destination-rule-all.yaml", &text);
    }
    dir.write("istio/egress/external.yml", SE_DNS);
    dir.write("notes.txt", "not configuration");
    dir.write(".hidden/ignored.yaml", "kind: [broken");
    // File times are coarse (files written in one tick share an mtime), so
    // give each file its own, a second apart, in the order asserted below.
    let base = std::time::SystemTime::now() - Duration::from_secs(60);
    let order = [
        "workloads.yaml",
        "istio/destination-rule-all.yaml",
        "istio/egress/external.yml",
    ];
    for (i, rel) in order.iter().enumerate() {
        let path = dir.0.join(rel);
        if path.exists() {
            set_mtime(&path, base + Duration::from_secs(i as u64));
        }
    }

    let snap = load_dir(&dir.0);
    assert!(snap.errors.is_empty(), "{:#?}", snap.errors);
    assert_eq!(snap.generation, 1);
    let k = keys(&snap);
    // Files are read oldest first: workloads.yaml (documents in file order),
    // then the DestinationRules, then the ServiceEntry.
    assert_eq!(
        k.first().map(String::as_str),
        Some("Service default/productpage")
    );
    assert!(k.contains(&"Workload default/ratings-v1".to_string()));
    assert_eq!(
        k.last().map(String::as_str),
        Some("ServiceEntry default/ext")
    );
    if have_dr {
        assert!(k.contains(&"DestinationRule default/productpage".to_string()));
    }

    let (manifest, diags) = registry::LocalManifest::from_objects(&snap.objects);
    assert!(diags.is_empty(), "{diags:?}");
    assert_eq!(manifest.services.len(), 4);
    assert_eq!(manifest.workloads.len(), 6);
    let workloads =
        registry::assign_ports(&manifest.workloads, 22000, &Default::default()).expect("ports");
    let (reg, diags) = registry::Registry::build(&snap.objects, &workloads, "cluster.local");
    assert!(diags.is_empty(), "{diags:?}");
    assert_eq!(reg.services.len(), 5);
    let reviews = reg
        .resolve_host("reviews", "default", "cluster.local")
        .expect("reviews");
    let v2 = BTreeMap::from([("version".to_string(), "v2".to_string())]);
    let eps: Vec<_> = reg.endpoints(&reviews.hostname, 9080, &v2).collect();
    assert_eq!(eps.len(), 1);
    assert_eq!(eps[0].workload_name, "reviews-v2");
}

#[test]
fn bad_objects_are_reported_with_file_and_field_and_left_out() {
    let dir = TempDir::new("bad");
    let bad = dir.write(
        "bad.yaml",
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: nohosts}\nspec: {hosts: [], ports: [{number: 80, name: http}]}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: ok}\nspec: {host: ok}\n---\napiVersion: local.trellis.dev/v1alpha1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{name: http, port: 99999}]}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: typo}\nspec: {hosts: [a], htp: []}\n",
    );
    let broken = dir.write("broken.yaml", "a: [unclosed\n---\n");
    dir.write("good.json", r#"{"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "gw"}, "spec": {"selector": {"istio": "ingressgateway"}, "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]}}"#);
    let again = dir.write("dup/again.yaml", "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: ok}\nspec: {host: other}\n");
    // Written last, by a clear margin (file times are coarse).
    set_mtime(
        &again,
        std::time::SystemTime::now() + Duration::from_secs(5),
    );

    let snap = load_dir(&dir.0);
    assert_eq!(
        keys(&snap),
        ["DestinationRule default/ok", "Gateway default/gw"]
    );
    let bad = bad.display().to_string();
    let broken = broken.display().to_string();
    let e = &snap.errors;
    assert_eq!(e.len(), 4, "{e:#?}");
    // bad.yaml (the load error, then validation errors in document order),
    // then broken.yaml; files are read oldest first.
    assert!(
        e[0].starts_with(&format!(
            "{bad}:15: VirtualService default/typo: spec.htp: unknown field"
        )),
        "{e:#?}"
    );
    assert_eq!(
        e[1],
        format!(
            "{bad}: ServiceEntry default/nohosts: spec.hosts: a ServiceEntry needs at least one host"
        )
    );
    assert_eq!(
        e[2],
        format!(
            "{bad}: Service default/web: spec.ports[0].port: port 99999 is not between 1 and 65535"
        )
    );
    assert!(
        e[3].starts_with(&format!("{broken}:1: invalid YAML")),
        "{e:#?}"
    );
    // dup/again.yaml was written last, so its DestinationRule replaces the
    // one in bad.yaml (as a later `kubectl apply` would), with a warning.
    let w = &snap.warnings;
    assert!(
        w.iter().any(|w| w
            .contains("again.yaml: DestinationRule default/ok: metadata.name: also defined in")
            && w.contains("bad.yaml")),
        "{w:#?}"
    );
    let dr = snap
        .objects
        .iter()
        .find(|o| o.kind == "DestinationRule")
        .expect("dr");
    assert!(dr.origin.ends_with("again.yaml"), "{}", dr.origin);
}

fn wait_for(
    rx: &mut tokio::sync::watch::Receiver<Arc<ConfigSnapshot>>,
    within: Duration,
    what: impl Fn(&ConfigSnapshot) -> bool,
) -> Arc<ConfigSnapshot> {
    let deadline = Instant::now() + within;
    loop {
        let snap = rx.borrow_and_update().clone();
        if what(&snap) {
            return snap;
        }
        assert!(
            Instant::now() < deadline,
            "condition not met within {within:?}; last snapshot: {:?} {:?}",
            keys(&snap),
            snap.errors
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn watcher_picks_up_new_changed_and_removed_files_within_a_second() {
    let dir = TempDir::new("watch");
    dir.write("a.yaml", "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: a}\nspec: {host: a}\n");
    let source = DirectorySource::start(dir.0.clone(), DEFAULT_DEBOUNCE).expect("start");
    let mut rx = source.subscribe();
    let first = rx.borrow_and_update().clone();
    assert_eq!(first.generation, 1);
    assert_eq!(keys(&first), ["DestinationRule default/a"]);

    // A file dropped into a new subdirectory.
    let start = Instant::now();
    let added = dir.write("sub/se.yaml", SE_DNS);
    let snap = wait_for(&mut rx, Duration::from_secs(1), |s| s.objects.len() == 2);
    assert!(start.elapsed() < Duration::from_secs(1));
    assert_eq!(snap.generation, 2);
    assert_eq!(
        keys(&snap),
        ["DestinationRule default/a", "ServiceEntry default/ext"]
    );

    // A change that breaks an object: reported, the rest keeps working.
    dir.write("a.yaml", "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: a}\nspec: {host: a, subsets: [{name: v1, labels: {version: v1}}, {name: v1}]}\n");
    let snap = wait_for(&mut rx, Duration::from_secs(1), |s| !s.errors.is_empty());
    assert_eq!(keys(&snap), ["ServiceEntry default/ext"]);
    assert!(
        snap.errors[0].contains("a.yaml: DestinationRule default/a: spec.subsets"),
        "{:?}",
        snap.errors
    );
    assert_eq!(snap.generation, 3);

    // Removal.
    std::fs::remove_file(&added).expect("remove");
    let snap = wait_for(&mut rx, Duration::from_secs(1), |s| s.objects.is_empty());
    assert_eq!(snap.generation, 4);

    // Touching without a change publishes nothing new.
    dir.write(
        "a.yaml",
        &std::fs::read_to_string(dir.0.join("a.yaml")).expect("read"),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(!rx.has_changed().expect("source alive"));
    assert_eq!(source.current().generation, 4);
}

#[tokio::test]
async fn subscribers_are_woken_by_changes() {
    let dir = TempDir::new("async");
    let source = DirectorySource::start(dir.0.clone(), Duration::from_millis(50)).expect("start");
    let mut rx = source.subscribe();
    assert!(rx.borrow_and_update().objects.is_empty());
    dir.write("x.yml", SE_DNS);
    tokio::time::timeout(Duration::from_secs(1), rx.changed())
        .await
        .expect("within a second")
        .expect("source alive");
    assert_eq!(rx.borrow().objects.len(), 1);
}

#[test]
fn start_fails_on_a_missing_directory() {
    let dir = TempDir::new("missing");
    let missing = dir.0.join("nope");
    assert!(DirectorySource::start(missing.clone(), DEFAULT_DEBOUNCE).is_err());
    let snap = load_dir(&missing);
    assert!(snap.objects.is_empty());
    assert!(
        snap.errors[0].contains("cannot read directory"),
        "{:?}",
        snap.errors
    );
}

#[test]
fn tls_secrets_are_kept_and_broken_ones_rejected_with_their_field() {
    let dir = TempDir::new("secrets");
    dir.write(
        "secrets.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: good, namespace: istio-system}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n    -----BEGIN CERTIFICATE-----\n    AAAA\n    -----END CERTIFICATE-----\n  tls.key: |\n    -----BEGIN PRIVATE KEY-----\n    AAAA\n    -----END PRIVATE KEY-----\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: bad, namespace: istio-system}\ntype: kubernetes.io/tls\ndata: {tls.crt: '!!!'}\n",
    );
    let s = load_dir(&dir.0);
    assert_eq!(keys(&s), ["Secret istio-system/good"], "{:?}", s.errors);
    assert_eq!(s.errors.len(), 1, "{:?}", s.errors);
    let e = &s.errors[0];
    assert!(
        e.contains("secrets.yaml") && e.contains("istio-system/bad") && e.contains("data.tls.crt"),
        "{e}"
    );
}
