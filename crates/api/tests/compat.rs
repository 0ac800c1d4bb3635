//! Every file of the Istio compatibility corpus loads and validates
//! cleanly (Istio accepts them all), yielding the expected kinds.

use std::path::{Path, PathBuf};

use api::security::MtlsMode;
use api::{Spec, load, validate};

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/compat/istio");

/// File (relative to the corpus) and the kinds it yields, in order.
const FILES: &[(&str, &[&str])] = &[
    (
        "bookinfo/bookinfo-gateway.yaml",
        &["Gateway", "VirtualService"],
    ),
    (
        "bookinfo/certmanager-gateway.yaml",
        &["Gateway", "VirtualService"],
    ),
    (
        "bookinfo/destination-rule-all-mtls.yaml",
        &[
            "DestinationRule",
            "DestinationRule",
            "DestinationRule",
            "DestinationRule",
        ],
    ),
    (
        "bookinfo/destination-rule-all.yaml",
        &[
            "DestinationRule",
            "DestinationRule",
            "DestinationRule",
            "DestinationRule",
        ],
    ),
    (
        "bookinfo/destination-rule-reviews.yaml",
        &["DestinationRule"],
    ),
    (
        "bookinfo/egress-rule-google-apis.yaml",
        &["ServiceEntry", "VirtualService", "DestinationRule"],
    ),
    (
        "bookinfo/fault-injection-details-v1.yaml",
        &["VirtualService", "DestinationRule"],
    ),
    (
        "bookinfo/productpage_envoy_ratelimit.yaml",
        &["EnvoyFilter", "EnvoyFilter"],
    ),
    (
        "bookinfo/virtual-service-all-v1.yaml",
        &[
            "VirtualService",
            "VirtualService",
            "VirtualService",
            "VirtualService",
        ],
    ),
    (
        "bookinfo/virtual-service-details-v2.yaml",
        &["VirtualService"],
    ),
    (
        "bookinfo/virtual-service-ratings-db.yaml",
        &["VirtualService", "VirtualService"],
    ),
    (
        "bookinfo/virtual-service-ratings-mysql-vm.yaml",
        &["VirtualService", "VirtualService"],
    ),
    (
        "bookinfo/virtual-service-ratings-mysql.yaml",
        &["VirtualService", "VirtualService"],
    ),
    (
        "bookinfo/virtual-service-ratings-test-abort.yaml",
        &["VirtualService"],
    ),
    (
        "bookinfo/virtual-service-ratings-test-delay.yaml",
        &["VirtualService"],
    ),
    (
        "bookinfo/virtual-service-reviews-50-v3.yaml",
        &["VirtualService"],
    ),
    (
        "bookinfo/virtual-service-reviews-80-20.yaml",
        &["VirtualService"],
    ),
    (
        "bookinfo/virtual-service-reviews-90-10.yaml",
        &["VirtualService"],
    ),
    (
        "bookinfo/virtual-service-reviews-jason-v2-v3.yaml",
        &["VirtualService"],
    ),
    (
        "bookinfo/virtual-service-reviews-test-v2.yaml",
        &["VirtualService"],
    ),
    (
        "bookinfo/virtual-service-reviews-v2-v3.yaml",
        &["VirtualService"],
    ),
    (
        "bookinfo/virtual-service-reviews-v3.yaml",
        &["VirtualService"],
    ),
    ("config/authn.yaml", &["PeerAuthentication"]),
    (
        "config/byon.yaml",
        &[
            "ServiceEntry",
            "VirtualService",
            "ServiceEntry",
            "ServiceEntry",
        ],
    ),
    (
        "config/destination-rule-all.yaml",
        &["ServiceEntry", "DestinationRule"],
    ),
    ("config/destination-rule-fqdn.yaml", &["DestinationRule"]),
    (
        "config/destination-rule-locality.yaml",
        &["DestinationRule"],
    ),
    (
        "config/destination-rule-passthrough.yaml",
        &["DestinationRule"],
    ),
    (
        "config/destination-rule-ssl.yaml",
        &["DestinationRule", "DestinationRule"],
    ),
    ("config/egressgateway.yaml", &["Gateway"]),
    (
        "config/external_services.yaml",
        &[
            "ServiceEntry",
            "DestinationRule",
            "ServiceEntry",
            "ServiceEntry",
            "ServiceEntry",
        ],
    ),
    ("config/gateway-all.yaml", &["Gateway"]),
    ("config/gateway-tcp-a.yaml", &["Gateway"]),
    ("config/ingress.yaml", &["Gateway", "VirtualService"]),
    ("config/ingressgateway.yaml", &["Gateway"]),
    (
        "config/none.yaml",
        &[
            "Sidecar",
            "Service",
            "Deployment",
            "Deployment",
            "ServiceEntry",
            "ServiceEntry",
            "ServiceEntry",
            "ServiceEntry",
            "ServiceEntry",
            "ServiceEntry",
            "ServiceEntry",
            "ServiceEntry",
            "VirtualService",
        ],
    ),
    ("config/peer-authn-strict.yaml", &["PeerAuthentication"]),
    ("config/rule-content-route.yaml", &["VirtualService"]),
    (
        "config/rule-default-route-append-headers.yaml",
        &["ServiceEntry", "VirtualService"],
    ),
    (
        "config/rule-default-route-cors-policy.yaml",
        &["ServiceEntry", "VirtualService"],
    ),
    (
        "config/rule-default-route.yaml",
        &["ServiceEntry", "VirtualService", "VirtualService"],
    ),
    (
        "config/rule-fault-injection.yaml",
        &["ServiceEntry", "DestinationRule", "VirtualService"],
    ),
    ("config/rule-ingressgateway.yaml", &["VirtualService"]),
    (
        "config/rule-redirect-injection.yaml",
        &["ServiceEntry", "VirtualService"],
    ),
    (
        "config/rule-regex-route.yaml",
        &["ServiceEntry", "DestinationRule", "VirtualService"],
    ),
    (
        "config/rule-route-via-egressgateway.yaml",
        &["VirtualService"],
    ),
    (
        "config/rule-websocket-route.yaml",
        &[
            "ServiceEntry",
            "DestinationRule",
            "VirtualService",
            "VirtualService",
        ],
    ),
    (
        "config/rule-weighted-route.yaml",
        &["ServiceEntry", "DestinationRule", "VirtualService"],
    ),
    (
        "config/se-example-gw.yaml",
        &[
            "Sidecar",
            "ServiceEntry",
            "ServiceEntry",
            "Gateway",
            "VirtualService",
        ],
    ),
    (
        "config/se-example.yaml",
        &[
            "Sidecar",
            "ServiceEntry",
            "ServiceEntry",
            "DestinationRule",
            "ServiceEntry",
            "VirtualService",
            "ServiceEntry",
            "ServiceEntry",
            "ServiceEntry",
        ],
    ),
    ("config/static-weighted-se.yaml", &["ServiceEntry"]),
    ("config/virtual-service-all.yaml", &["VirtualService"]),
];

fn corpus() -> Option<PathBuf> {
    let dir = Path::new(CORPUS);
    if dir.is_dir() {
        Some(dir.to_path_buf())
    } else {
        eprintln!("skipping: Istio compatibility corpus not found at {CORPUS}");
        None
    }
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read corpus dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(p);
        }
    }
}

#[test]
fn every_corpus_file_is_listed() {
    let Some(dir) = corpus() else { return };
    let mut files = Vec::new();
    yaml_files(&dir, &mut files);
    for f in &files {
        let rel = f
            .strip_prefix(&dir)
            .expect("under corpus")
            .to_string_lossy()
            .replace('\\', "/");
        assert!(
            FILES.iter().any(|(name, _)| *name == rel),
            "{rel} is not in the FILES table"
        );
    }
    assert_eq!(files.len(), FILES.len());
}

#[test]
fn corpus_loads_and_validates() {
    let Some(dir) = corpus() else { return };
    let mut failures = Vec::new();
    let mut objects_total = 0;
    for (name, kinds) in FILES {
        let path = dir.join(name);
        let (objects, errors) = load::load_file(&path);
        for e in &errors {
            failures.push(format!("load: {e}"));
        }
        let got: Vec<&str> = objects.iter().map(|o| o.kind.as_str()).collect();
        if got != *kinds {
            failures.push(format!("{name}: kinds {got:?}, expected {kinds:?}"));
        }
        for o in &objects {
            assert_eq!(o.origin, path.display().to_string());
            assert!(!o.metadata.namespace.is_empty());
            for e in validate(o).errors {
                failures.push(format!("validate: {e}"));
            }
        }
        objects_total += objects.len();
    }
    assert!(
        failures.is_empty(),
        "{} problems:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(objects_total > 100);
}

#[test]
fn corpus_kinds_are_typed_as_expected() {
    let Some(dir) = corpus() else { return };
    let (objects, errors) = load::load_file(&dir.join("config/none.yaml"));
    assert!(errors.is_empty(), "{errors:?}");
    let sidecar = &objects[0];
    assert!(matches!(sidecar.spec, Spec::Sidecar(_)));
    assert_eq!(sidecar.namespace(), "none");
    assert!(
        matches!(objects[1].spec, Spec::Unsupported(_)),
        "a Kubernetes Service is kept, unsupported"
    );
    assert!(objects[1].is_unsupported());

    let (objects, _) = load::load_file(&dir.join("bookinfo/productpage_envoy_ratelimit.yaml"));
    assert!(
        matches!(objects[0].spec, Spec::Other(_)),
        "EnvoyFilter is loosely typed"
    );

    let (objects, _) = load::load_file(&dir.join("config/authn.yaml"));
    assert!(
        matches!(&objects[0].spec, Spec::PeerAuthentication(pa) if pa.mode() == MtlsMode::Permissive)
    );
    let (objects, _) = load::load_file(&dir.join("config/peer-authn-strict.yaml"));
    let Spec::PeerAuthentication(pa) = &objects[0].spec else {
        panic!("not a PeerAuthentication")
    };
    assert_eq!(objects[0].namespace(), "testns");
    assert!(pa.is_namespace_wide());
    assert_eq!(pa.mode(), MtlsMode::Strict);

    let (objects, _) = load::load_file(&dir.join("bookinfo/virtual-service-reviews-80-20.yaml"));
    let Spec::VirtualService(vs) = &objects[0].spec else {
        panic!("not a VirtualService")
    };
    assert_eq!(
        objects[0].namespace(),
        "default",
        "namespace defaults to \"default\""
    );
    let weights: Vec<_> = vs.http[0].route.iter().map(|r| r.weight).collect();
    assert_eq!(weights, vec![Some(80), Some(20)]);

    let (objects, _) = load::load_file(&dir.join("config/rule-fault-injection.yaml"));
    let Spec::VirtualService(vs) = &objects[2].spec else {
        panic!("not a VirtualService")
    };
    let fault = vs.http[0].fault.as_ref().expect("fault");
    let delay = fault.delay.as_ref().expect("delay");
    assert_eq!(
        delay.fixed_delay.map(|d| d.get()),
        Some(std::time::Duration::from_secs(5))
    );
    assert_eq!(delay.percentage.map(|p| p.value), Some(100.0));
    assert_eq!(fault.abort.as_ref().and_then(|a| a.http_status), Some(503));

    let (objects, _) = load::load_file(&dir.join("config/destination-rule-all.yaml"));
    let Spec::DestinationRule(dr) = &objects[1].spec else {
        panic!("not a DestinationRule")
    };
    let tp = dr.traffic_policy.as_ref().expect("traffic policy");
    let od = tp.outlier_detection.as_ref().expect("outlier");
    assert_eq!(
        od.interval.map(|d| d.get()),
        Some(std::time::Duration::from_millis(8))
    );
    assert_eq!(
        od.base_ejection_time.map(|d| d.get()),
        Some(std::time::Duration::from_secs(60))
    );
}

/// Truncating a valid file anywhere must never panic the loader.
#[test]
fn truncated_corpus_never_panics() {
    let Some(dir) = corpus() else { return };
    let mut files = Vec::new();
    yaml_files(&dir, &mut files);
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read");
        let step = (text.len() / 97).max(1);
        let mut cut = 0;
        while cut < text.len() {
            if text.is_char_boundary(cut) {
                let (objects, errors) = load::parse_documents(&text[..cut], "truncated.yaml");
                for o in &objects {
                    let _ = validate(o);
                }
                let _ = errors.iter().map(ToString::to_string).count();
            }
            cut += step;
        }
        // Also drop a prefix: the tail of a document is arbitrary YAML too.
        let mut start = 0;
        while start < text.len() {
            if text.is_char_boundary(start) {
                let (objects, _) = load::parse_documents(&text[start..], "tail.yaml");
                for o in &objects {
                    let _ = validate(o);
                }
            }
            start += step * 3;
        }
    }
}
