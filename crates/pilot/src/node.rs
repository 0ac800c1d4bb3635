//! Who is asking: an Envoy `Node` read the way istiod reads it.
//!
//! Istio node ids are `<type>~<ip>~<pod>.<namespace>~<namespace>.svc.<suffix>`
//! and the metadata carries `NAMESPACE`, `LABELS`, `SERVICE_ACCOUNT`,
//! `INSTANCE_IPS` and `WORKLOAD_NAME`. Trellis adds local-mode keys for
//! proxies that run without traffic capture (`trellis up` on one machine).

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};

/// `TRELLIS_OUTBOUND_PORT`: the port of the sidecar's outbound HTTP-proxy
/// listener that the application sends to.
pub const META_OUTBOUND_PORT: &str = "TRELLIS_OUTBOUND_PORT";
/// `TRELLIS_INBOUND_PORTS`: service targetPort → sidecar inbound listener port.
pub const META_INBOUND_PORTS: &str = "TRELLIS_INBOUND_PORTS";
/// `TRELLIS_APP_PORTS`: service targetPort → the port the application listens on.
pub const META_APP_PORTS: &str = "TRELLIS_APP_PORTS";
/// `TRELLIS_LOCAL`: `true` for a gateway that binds 127.0.0.1 (no capture).
pub const META_LOCAL: &str = "TRELLIS_LOCAL";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeKind {
    Sidecar,
    /// An ingress/egress gateway (`router~`).
    Router,
    Waypoint,
}

/// Trellis local mode: the proxy has no traffic capture, the application
/// talks to explicit local ports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct LocalPorts {
    /// Outbound HTTP-proxy listener port (sidecars).
    pub outbound: Option<u32>,
    /// Service targetPort → inbound listener port.
    pub inbound: BTreeMap<u32, u32>,
    /// Service targetPort → application port.
    pub app: BTreeMap<u32, u32>,
}

/// A connected proxy, as the translator needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyNode {
    pub kind: NodeKind,
    /// The full node id.
    pub id: String,
    /// The IP of the id (`sidecar~<ip>~...`).
    pub ip: String,
    pub pod_name: String,
    pub namespace: String,
    /// `<namespace>.svc.<suffix>`.
    pub dns_domain: String,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    pub instance_ips: Vec<String>,
    pub workload_name: String,
    /// `Some` in Trellis local mode, `None` in capture mode (15001/15006).
    pub local: Option<LocalPorts>,
}

impl ProxyNode {
    /// Reads an Istio-style node.
    pub fn from_node(node: &Node) -> Result<Self, String> {
        let parts: Vec<&str> = node.id.split('~').collect();
        if parts.len() != 4 {
            return Err(format!(
                "node id {:?}: expected <type>~<ip>~<pod>.<namespace>~<namespace>.svc.<domain>",
                node.id
            ));
        }
        let kind = match parts[0] {
            "sidecar" => NodeKind::Sidecar,
            "router" => NodeKind::Router,
            "waypoint" => NodeKind::Waypoint,
            other => {
                return Err(format!(
                    "node id {:?}: unknown proxy type {other:?}",
                    node.id
                ));
            }
        };
        let empty = Struct::default();
        let meta = node.metadata.as_ref().unwrap_or(&empty);
        let (pod_name, id_namespace) = match parts[2].split_once('.') {
            Some((pod, ns)) => (pod.to_owned(), ns.to_owned()),
            None => (parts[2].to_owned(), String::new()),
        };
        let namespace = meta_string(meta, "NAMESPACE")
            .filter(|s| !s.is_empty())
            .or_else(|| (!id_namespace.is_empty()).then_some(id_namespace))
            .or_else(|| parts[3].split('.').next().map(str::to_owned))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| api::defaults::DEFAULT_NAMESPACE.to_owned());
        let labels = match meta.fields.get("LABELS").and_then(|v| v.kind.as_ref()) {
            Some(Kind::StructValue(s)) => s
                .fields
                .iter()
                .filter_map(|(k, v)| scalar_string(v).map(|v| (k.clone(), v)))
                .collect(),
            None | Some(Kind::NullValue(_)) => BTreeMap::new(),
            Some(_) => return Err("node metadata LABELS: expected a struct".into()),
        };
        let instance_ips = match meta
            .fields
            .get("INSTANCE_IPS")
            .and_then(|v| v.kind.as_ref())
        {
            Some(Kind::StringValue(s)) => split_list(s),
            Some(Kind::ListValue(l)) => l.values.iter().filter_map(scalar_string).collect(),
            _ => Vec::new(),
        };
        let local = read_local(kind, meta)?;
        Ok(Self {
            kind,
            id: node.id.clone(),
            ip: parts[1].to_owned(),
            pod_name,
            namespace,
            dns_domain: parts[3].to_owned(),
            labels,
            service_account: meta_string(meta, "SERVICE_ACCOUNT").unwrap_or_default(),
            instance_ips,
            workload_name: meta_string(meta, "WORKLOAD_NAME").unwrap_or_default(),
            local,
        })
    }

    /// A sidecar in `namespace` with `labels`, for tests and tools.
    pub fn sidecar(namespace: &str, labels: &[(&str, &str)], local: Option<LocalPorts>) -> Self {
        Self {
            kind: NodeKind::Sidecar,
            id: format!("sidecar~127.0.0.1~pod.{namespace}~{namespace}.svc.cluster.local"),
            ip: "127.0.0.1".into(),
            pod_name: "pod".into(),
            namespace: namespace.into(),
            dns_domain: format!("{namespace}.svc.cluster.local"),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            service_account: "default".into(),
            instance_ips: vec!["127.0.0.1".into()],
            workload_name: String::new(),
            local,
        }
    }

    /// Whether the proxy runs in Trellis local mode (no capture).
    pub fn is_local(&self) -> bool {
        self.local.is_some()
    }
}

fn read_local(kind: NodeKind, meta: &Struct) -> Result<Option<LocalPorts>, String> {
    let outbound = match meta.fields.get(META_OUTBOUND_PORT) {
        Some(v) => Some(port_value(v).ok_or_else(|| {
            format!("node metadata {META_OUTBOUND_PORT}: expected a port number")
        })?),
        None => None,
    };
    let inbound = port_map(meta, META_INBOUND_PORTS)?;
    let app = port_map(meta, META_APP_PORTS)?;
    let flagged = meta.fields.get(META_LOCAL).is_some_and(|v| match &v.kind {
        Some(Kind::BoolValue(b)) => *b,
        Some(Kind::StringValue(s)) => s.eq_ignore_ascii_case("true"),
        _ => false,
    });
    let any_port = outbound.is_some() || !inbound.is_empty() || !app.is_empty();
    let local = match kind {
        NodeKind::Sidecar => any_port || flagged,
        NodeKind::Router | NodeKind::Waypoint => flagged || any_port,
    };
    Ok(local.then_some(LocalPorts {
        outbound,
        inbound,
        app,
    }))
}

fn port_map(meta: &Struct, key: &str) -> Result<BTreeMap<u32, u32>, String> {
    let Some(value) = meta.fields.get(key) else {
        return Ok(BTreeMap::new());
    };
    let Some(Kind::StructValue(s)) = &value.kind else {
        return Err(format!(
            "node metadata {key}: expected a struct of port → port"
        ));
    };
    s.fields
        .iter()
        .map(|(k, v)| {
            let from = k
                .parse::<u32>()
                .map_err(|_| format!("node metadata {key}: key {k:?} is not a port number"))?;
            let to = port_value(v)
                .ok_or_else(|| format!("node metadata {key}.{k}: expected a port number"))?;
            Ok((from, to))
        })
        .collect()
}

fn port_value(v: &Value) -> Option<u32> {
    match &v.kind {
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && (1.0..=65535.0).contains(n) => {
            Some(*n as u32)
        }
        Some(Kind::StringValue(s)) => s.trim().parse().ok().filter(|p| (1..=65535).contains(p)),
        _ => None,
    }
}

fn meta_string(meta: &Struct, key: &str) -> Option<String> {
    meta.fields.get(key).and_then(scalar_string)
}

fn scalar_string(v: &Value) -> Option<String> {
    match &v.kind {
        Some(Kind::StringValue(s)) => Some(s.clone()),
        Some(Kind::NumberValue(n)) => Some(n.to_string()),
        Some(Kind::BoolValue(b)) => Some(b.to_string()),
        _ => None,
    }
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}
