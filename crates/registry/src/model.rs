//! Registry data types. Plain data: built once per configuration change and
//! shared immutably (`Arc<Registry>`) by every push.

use std::collections::BTreeMap;

/// Application protocol of a service port, as Istio names them
/// (`HTTP`, `HTTP2`, `GRPC`, `TCP`, `TLS`, `HTTPS`, `MONGO`...). Unknown
/// names are kept as `Other` and treated as TCP.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    Https,
    Tls,
    Tcp,
    Other(String),
}

impl Protocol {
    /// Whether traffic on the port is routed at L7 (HTTP route tables).
    pub fn is_http(&self) -> bool {
        matches!(self, Self::Http | Self::Http2 | Self::Grpc)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub name: String,
    pub number: u32,
    pub protocol: Protocol,
    /// The port on the workload that receives this service port's traffic
    /// (Kubernetes `targetPort`, ServiceEntry `targetPort`); `number` if unset.
    pub target_port: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    MeshInternal,
    MeshExternal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// Endpoints are known addresses (EDS).
    Static,
    /// Pass through to the original destination.
    None,
    /// Endpoints are host names resolved by the proxy (STRICT_DNS).
    Dns,
    /// One host name, connection-level DNS (LOGICAL_DNS).
    DnsRoundRobin,
}

/// Where a registry entry came from, for diagnostics.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Origin {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub file: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    /// Fully qualified host, e.g. `reviews.default.svc.cluster.local` or
    /// `api.example.com` (ServiceEntry hosts are taken as written).
    pub hostname: String,
    pub namespace: String,
    /// Short names that resolve to this service from inside its namespace,
    /// e.g. `reviews`, `reviews.default` (for route `domains`).
    pub aliases: Vec<String>,
    pub ports: Vec<ServicePort>,
    pub location: Location,
    pub resolution: Resolution,
    /// VIPs / CIDRs (ServiceEntry `addresses`).
    pub addresses: Vec<String>,
    /// `exportTo` as written (`*` when unset).
    pub export_to: Vec<String>,
    pub origin: Origin,
}

impl Service {
    pub fn port(&self, number: u32) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.number == number)
    }
}

/// One instance of a service on one service port.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// IP address, or a host name for DNS resolution.
    pub address: String,
    /// The port to connect to on the instance (the service port's target).
    pub port: u32,
    pub labels: BTreeMap<String, String>,
    /// `region/zone/subzone`, possibly empty.
    pub locality: String,
    pub network: String,
    pub weight: u32,
    pub service_account: String,
    pub namespace: String,
    pub workload_name: String,
    pub healthy: bool,
    /// True when the instance runs a sidecar (auto-mTLS decides on this).
    pub has_sidecar: bool,
}

/// A problem found while building the registry (the entry is skipped, the
/// rest is built).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub origin: Origin,
    pub message: String,
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} {}/{}: {}",
            self.origin.file,
            self.origin.kind,
            self.origin.namespace,
            self.origin.name,
            self.message
        )
    }
}

/// Services and their endpoints, keyed by hostname and service port number.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Registry {
    pub services: BTreeMap<String, Service>,
    pub endpoints: BTreeMap<(String, u32), Vec<Endpoint>>,
    /// TLS credentials from Kubernetes Secrets, by `namespace/name`
    /// (gateway `credentialName`s).
    pub credentials: BTreeMap<String, crate::secret::TlsCredential>,
    /// Local mode: per workload (`namespace/name`), the sidecar's local TCP
    /// listener port for each (service host, service port).
    pub local_tcp_outbound: BTreeMap<String, Vec<(String, u32, u16)>>,
}

impl Registry {
    pub fn service(&self, hostname: &str) -> Option<&Service> {
        self.services.get(hostname)
    }

    /// Endpoints of `hostname` on service port `port`, optionally restricted to
    /// the ones whose labels contain all of `subset_labels`.
    pub fn endpoints<'a>(
        &'a self,
        hostname: &str,
        port: u32,
        subset_labels: &'a BTreeMap<String, String>,
    ) -> impl Iterator<Item = &'a Endpoint> + 'a {
        self.endpoints
            .get(&(hostname.to_string(), port))
            .into_iter()
            .flatten()
            .filter(move |e| {
                subset_labels
                    .iter()
                    .all(|(k, v)| e.labels.get(k) == Some(v))
            })
    }

    /// Resolves a host as written in a VirtualService/DestinationRule in
    /// `namespace` (`reviews`, `reviews.default`, FQDN) to a registry hostname.
    pub fn resolve_host(
        &self,
        host: &str,
        namespace: &str,
        domain_suffix: &str,
    ) -> Option<&Service> {
        if let Some(s) = self.services.get(host) {
            return Some(s);
        }
        let dots = host.matches('.').count();
        let candidate = match dots {
            0 => format!("{host}.{namespace}.svc.{domain_suffix}"),
            1 => format!("{host}.svc.{domain_suffix}"),
            _ => return None,
        };
        self.services.get(&candidate)
    }
}
