//! Shared fixtures: a hand-built Bookinfo registry and small lookups into
//! generated resources.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, VirtualHost, route, route_action,
};
use pilot::{Generated, LocalPorts, ProxyNode, PushContext};
use registry::{Endpoint, Location, Origin, Protocol, Registry, Resolution, Service, ServicePort};

pub fn service(name: &str, ns: &str, ports: &[(u32, Protocol)]) -> Service {
    Service {
        hostname: format!("{name}.{ns}.svc.cluster.local"),
        namespace: ns.into(),
        aliases: vec![name.into(), format!("{name}.{ns}")],
        ports: ports
            .iter()
            .map(|(n, p)| ServicePort {
                name: "http".into(),
                number: *n,
                protocol: p.clone(),
                target_port: *n,
            })
            .collect(),
        location: Location::MeshInternal,
        resolution: Resolution::Static,
        addresses: Vec::new(),
        export_to: Vec::new(),
        origin: Origin::default(),
    }
}

pub fn endpoint(address: &str, port: u32, labels: &[(&str, &str)], locality: &str) -> Endpoint {
    Endpoint {
        address: address.into(),
        port,
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect(),
        locality: locality.into(),
        network: String::new(),
        weight: 1,
        service_account: "default".into(),
        namespace: "default".into(),
        workload_name: labels
            .iter()
            .find(|(k, _)| *k == "app")
            .map(|(_, v)| {
                format!(
                    "{v}-{}",
                    labels
                        .iter()
                        .find(|(k, _)| *k == "version")
                        .map_or("v1", |(_, v)| v)
                )
            })
            .unwrap_or_default(),
        healthy: true,
        has_sidecar: true,
    }
}

/// productpage, details, reviews (v1, v2, v3) and ratings on 9080 in `default`.
pub fn bookinfo_registry() -> Registry {
    let mut reg = Registry::default();
    let mut ip = 10;
    for (name, versions) in [
        ("productpage", &["v1"][..]),
        ("details", &["v1"][..]),
        ("reviews", &["v1", "v2", "v3"][..]),
        ("ratings", &["v1"][..]),
    ] {
        let svc = service(name, "default", &[(9080, Protocol::Http)]);
        let eps = versions
            .iter()
            .map(|v| {
                ip += 1;
                let zone = if *v == "v3" {
                    "us-east/zone-b/"
                } else {
                    "us-east/zone-a/"
                };
                endpoint(
                    &format!("10.0.0.{ip}"),
                    9080,
                    &[("app", name), ("version", v)],
                    zone,
                )
            })
            .collect();
        reg.endpoints.insert((svc.hostname.clone(), 9080), eps);
        reg.services.insert(svc.hostname.clone(), svc);
    }
    reg
}

pub fn parse(yaml: &str) -> Vec<api::Object> {
    let (objects, errors) = api::parse_documents(yaml, "test.yaml");
    assert!(errors.is_empty(), "{errors:?}");
    objects
}

pub fn ctx(yaml: &str) -> PushContext {
    ctx_with(yaml, bookinfo_registry(), api::MeshConfig::default())
}

pub fn ctx_with(yaml: &str, reg: Registry, mesh: api::MeshConfig) -> PushContext {
    PushContext::new(parse(yaml), Arc::new(reg), mesh)
}

pub fn local_ports() -> LocalPorts {
    LocalPorts {
        outbound: Some(15101),
        inbound: BTreeMap::from([(9080, 15102)]),
        app: BTreeMap::from([(9080, 19080)]),
    }
}

/// A local-mode sidecar of productpage in `default`.
pub fn productpage() -> ProxyNode {
    let mut n = ProxyNode::sidecar(
        "default",
        &[("app", "productpage"), ("version", "v1")],
        Some(local_ports()),
    );
    n.workload_name = "productpage-v1".into();
    n
}

pub fn generate(node: &ProxyNode, ctx: &PushContext) -> Generated {
    pilot::generate(node, ctx).expect("generate")
}

pub fn vhost<'a>(g: &'a Generated, route_config: &str, name: &str) -> &'a VirtualHost {
    let rc = g
        .route(route_config)
        .unwrap_or_else(|| panic!("no route config {route_config}"));
    rc.virtual_hosts
        .iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| {
            panic!(
                "no vhost {name} in {:?}",
                rc.virtual_hosts.iter().map(|v| &v.name).collect::<Vec<_>>()
            )
        })
}

pub fn action(r: &Route) -> &RouteAction {
    match &r.action {
        Some(route::Action::Route(a)) => a,
        other => panic!("not a route action: {other:?}"),
    }
}

pub fn cluster_of(r: &Route) -> &str {
    match &action(r).cluster_specifier {
        Some(route_action::ClusterSpecifier::Cluster(c)) => c,
        other => panic!("not a single cluster: {other:?}"),
    }
}

pub fn weighted(r: &Route) -> Vec<(String, u32)> {
    match &action(r).cluster_specifier {
        Some(route_action::ClusterSpecifier::WeightedClusters(w)) => w
            .clusters
            .iter()
            .map(|c| (c.name.clone(), c.weight.as_ref().map_or(0, |w| w.value)))
            .collect(),
        other => panic!("not weighted clusters: {other:?}"),
    }
}

pub fn decode<M: prost::Message + Default>(any: &envoy_types::pb::google::protobuf::Any) -> M {
    M::decode(any.value.as_slice()).expect("decode")
}

pub const REVIEWS: &str = "reviews.default.svc.cluster.local";
pub const RATINGS: &str = "ratings.default.svc.cluster.local";
