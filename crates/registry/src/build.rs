//! Building the [`Registry`] from configuration objects and the resolved
//! local workloads.

use std::collections::BTreeMap;

use api::networking::WorkloadEntry;
use api::networking::service_entry::{
    Location as SeLocation, Resolution as SeResolution, ServiceEntry,
};
use api::{Object, Spec};

use crate::local::{self, LocalObject, LocalService, ResolvedWorkload, selector_matches};
use crate::model::{
    Diagnostic, Endpoint, Location, Origin, Registry, Resolution, Service, ServicePort,
};
use crate::protocol::select_protocol;

/// Annotation restricting a platform service's visibility (as on a
/// Kubernetes Service).
pub const EXPORT_TO_ANNOTATION: &str = "networking.istio.io/exportTo";
/// Endpoint label carrying the TLS mode (`istio` = has a sidecar / mTLS).
pub const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";

fn origin_of(object: &Object) -> Origin {
    Origin {
        kind: object.kind.clone(),
        namespace: object.metadata.namespace.clone(),
        name: object.metadata.name.clone(),
        file: object.origin.clone(),
    }
}

fn diag(origin: &Origin, message: impl Into<String>) -> Diagnostic {
    Diagnostic {
        origin: origin.clone(),
        message: message.into(),
    }
}

/// A WorkloadEntry object (or a ServiceEntry inline endpoint) with where it
/// came from.
struct Instance<'a> {
    name: &'a str,
    namespace: &'a str,
    entry: &'a WorkloadEntry,
}

/// Istio's TLS mode of a WorkloadEntry: the `security.istio.io/tlsMode`
/// label if set, else `istio` when it names a service account.
fn entry_has_sidecar(entry: &WorkloadEntry) -> bool {
    match entry.labels.get(TLS_MODE_LABEL) {
        Some(mode) => mode == "istio",
        None => entry
            .service_account
            .as_deref()
            .is_some_and(|s| !s.is_empty()),
    }
}

/// The endpoint of a WorkloadEntry-shaped instance for `port`: the entry's
/// port override by port name, else the port's target.
fn entry_endpoint(
    entry: &WorkloadEntry,
    port: &ServicePort,
    namespace: &str,
    workload_name: &str,
) -> Endpoint {
    Endpoint {
        address: entry.address.clone(),
        port: entry
            .ports
            .get(&port.name)
            .copied()
            .unwrap_or(port.target_port),
        labels: entry.labels.clone(),
        locality: entry.locality.clone().unwrap_or_default(),
        network: entry.network.clone().unwrap_or_default(),
        // Envoy needs a weight of at least 1; 0 means unset in Istio.
        weight: entry.weight.filter(|w| *w > 0).unwrap_or(1),
        service_account: entry.service_account.clone().unwrap_or_default(),
        namespace: namespace.to_string(),
        workload_name: workload_name.to_string(),
        healthy: true,
        has_sidecar: entry_has_sidecar(entry),
    }
}

struct Builder<'a> {
    registry: Registry,
    diags: Vec<Diagnostic>,
    instances: Vec<Instance<'a>>,
    workloads: Vec<&'a ResolvedWorkload>,
}

impl<'a> Builder<'a> {
    /// Inserts `service`; a hostname already taken keeps its first owner.
    fn insert(&mut self, service: Service) -> bool {
        if let Some(first) = self.registry.services.get(&service.hostname) {
            let message = format!(
                "host {:?} is already declared by {} {}/{} ({}); this declaration is ignored",
                service.hostname,
                first.origin.kind,
                first.origin.namespace,
                first.origin.name,
                first.origin.file
            );
            self.diags.push(diag(&service.origin, message));
            return false;
        }
        self.registry
            .services
            .insert(service.hostname.clone(), service);
        true
    }

    /// Local workloads and WorkloadEntries in `namespace` matching `selector`,
    /// as endpoints of every port of `service`.
    fn selected_endpoints(
        &mut self,
        service: &Service,
        namespace: &str,
        selector: &BTreeMap<String, String>,
    ) {
        for port in &service.ports {
            let mut eps = Vec::new();
            for w in &self.workloads {
                if w.namespace != namespace || !selector_matches(selector, &w.labels) {
                    continue;
                }
                match w.endpoint(port.target_port) {
                    Some(ep) => eps.push(ep),
                    None => self.diags.push(diag(
                        &service.origin,
                        format!(
                            "workload {}/{} is selected but does not serve target port {} (port {})",
                            w.namespace, w.name, port.target_port, port.number
                        ),
                    )),
                }
            }
            for inst in &self.instances {
                if inst.namespace == namespace && selector_matches(selector, &inst.entry.labels) {
                    eps.push(entry_endpoint(inst.entry, port, namespace, inst.name));
                }
            }
            self.registry
                .endpoints
                .insert((service.hostname.clone(), port.number), eps);
        }
    }

    fn local_service(&mut self, svc: &LocalService, domain_suffix: &str) {
        let origin = svc.registry_origin();
        let export_to = svc
            .annotations
            .get(EXPORT_TO_ANNOTATION)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| vec!["*".to_string()]);
        let service = Service {
            hostname: svc.hostname(domain_suffix),
            namespace: svc.namespace.clone(),
            aliases: svc.aliases(),
            ports: svc
                .spec
                .ports
                .iter()
                .map(|p| ServicePort {
                    name: p.name.clone(),
                    number: p.port,
                    protocol: p.protocol(),
                    target_port: p.target(),
                })
                .collect(),
            location: Location::MeshInternal,
            resolution: Resolution::Static,
            addresses: Vec::new(),
            export_to,
            origin,
        };
        if self.insert(service.clone()) {
            self.selected_endpoints(&service, &svc.namespace, &svc.spec.selector);
        }
    }

    fn service_entry(&mut self, object: &Object, se: &ServiceEntry) {
        let origin = origin_of(object);
        let namespace = object.namespace();
        let resolution = match se.resolution() {
            SeResolution::None => Resolution::None,
            SeResolution::Static => Resolution::Static,
            SeResolution::Dns => Resolution::Dns,
            SeResolution::DnsRoundRobin => Resolution::DnsRoundRobin,
            SeResolution::DynamicDns => {
                self.diags.push(diag(
                    &origin,
                    "resolution DYNAMIC_DNS is not supported; ServiceEntry skipped",
                ));
                return;
            }
        };
        let location = match se.location() {
            SeLocation::MeshExternal => Location::MeshExternal,
            SeLocation::MeshInternal => Location::MeshInternal,
        };
        let mut ports = Vec::new();
        for p in &se.ports {
            if p.number == 0 || p.number > 65535 {
                self.diags.push(diag(
                    &origin,
                    format!("port {} ({:?}) is invalid and skipped", p.number, p.name),
                ));
                continue;
            }
            let protocol = select_protocol(
                Some(p.protocol.as_str()).filter(|s| !s.is_empty()),
                None,
                &p.name,
            );
            ports.push(ServicePort {
                name: p.name.clone(),
                number: p.number,
                protocol,
                target_port: p.target_port.filter(|t| *t != 0).unwrap_or(p.number),
            });
        }
        let export_to = if se.export_to.is_empty() {
            vec!["*".to_string()]
        } else {
            se.export_to.clone()
        };
        let inline: Vec<&WorkloadEntry> = se
            .endpoints
            .iter()
            .filter(|ep| {
                if ep.address.is_empty() {
                    self.diags
                        .push(diag(&origin, "an endpoint without address is skipped"));
                    false
                } else {
                    true
                }
            })
            .collect();
        for host in &se.hosts {
            if host.is_empty() || host == "*" {
                self.diags.push(diag(
                    &origin,
                    format!("host {host:?} is invalid and skipped"),
                ));
                continue;
            }
            let service = Service {
                hostname: host.clone(),
                namespace: namespace.to_string(),
                aliases: Vec::new(),
                ports: ports.clone(),
                location,
                resolution,
                addresses: se.addresses.clone(),
                export_to: export_to.clone(),
                origin: origin.clone(),
            };
            if !self.insert(service.clone()) {
                continue;
            }
            if let Some(sel) = &se.workload_selector {
                self.selected_endpoints(&service, namespace, &sel.labels);
                continue;
            }
            for port in &service.ports {
                let eps: Vec<Endpoint> = if !inline.is_empty() {
                    inline
                        .iter()
                        .map(|ep| entry_endpoint(ep, port, namespace, ""))
                        .collect()
                } else if matches!(resolution, Resolution::Dns | Resolution::DnsRoundRobin)
                    && !host.starts_with('*')
                {
                    // DNS without endpoints: the host itself is the endpoint.
                    vec![Endpoint {
                        address: host.clone(),
                        port: port.target_port,
                        labels: BTreeMap::new(),
                        locality: String::new(),
                        network: String::new(),
                        weight: 1,
                        service_account: String::new(),
                        namespace: namespace.to_string(),
                        workload_name: String::new(),
                        healthy: true,
                        has_sidecar: false,
                    }]
                } else {
                    Vec::new()
                };
                self.registry
                    .endpoints
                    .insert((host.clone(), port.number), eps);
            }
        }
    }
}

impl Registry {
    /// Builds the registry from configuration `objects` (any kinds; the ones
    /// that do not describe services are ignored) and the resolved local
    /// workloads of `trellis up` (empty elsewhere). Never fails: a bad or
    /// conflicting entry is skipped with a [`Diagnostic`].
    ///
    /// - local `Service` → `<name>.<ns>.svc.<domain_suffix>` (aliases `<name>`,
    ///   `<name>.<ns>`, `<name>.<ns>.svc`), MeshInternal, Static; endpoints are
    ///   the local workloads and WorkloadEntries of its namespace matching its
    ///   selector;
    /// - `ServiceEntry` → one service per host (as written); endpoints from
    ///   `endpoints`, or `workloadSelector` (WorkloadEntries and local
    ///   workloads of its namespace), or for DNS resolution without either the
    ///   host itself;
    /// - platform (local) services come first, then ServiceEntries in object
    ///   order; a hostname keeps its first declaration.
    ///
    /// Every (hostname, service port) gets an entry in `endpoints`, possibly
    /// empty. Endpoint order: local workloads by namespace/name, then
    /// WorkloadEntries in object order (inline endpoints as written).
    pub fn build(
        objects: &[Object],
        workloads: &[ResolvedWorkload],
        domain_suffix: &str,
    ) -> (Self, Vec<Diagnostic>) {
        let mut sorted: Vec<&ResolvedWorkload> = workloads.iter().collect();
        sorted.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        let mut b = Builder {
            registry: Self::default(),
            diags: Vec::new(),
            instances: Vec::new(),
            workloads: sorted,
        };
        for w in workloads {
            if w.namespace.is_empty() || w.name.is_empty() {
                b.diags.push(Diagnostic {
                    origin: Origin {
                        kind: local::KIND_WORKLOAD.into(),
                        namespace: w.namespace.clone(),
                        name: w.name.clone(),
                        file: w.origin.clone(),
                    },
                    message: "workload without name or namespace".into(),
                });
            }
        }
        for object in objects {
            if let Spec::WorkloadEntry(we) = &object.spec {
                if we.address.is_empty() {
                    b.diags.push(diag(
                        &origin_of(object),
                        "WorkloadEntry without address is skipped",
                    ));
                    continue;
                }
                b.instances.push(Instance {
                    name: object.name(),
                    namespace: object.namespace(),
                    entry: we,
                });
            }
        }
        // Platform services first (Istio prefers them over ServiceEntries).
        let mut seen_local = std::collections::BTreeSet::new();
        for object in objects {
            if object.kind != local::KIND_SERVICE {
                continue;
            }
            match local::parse_object(object) {
                None => {}
                Some(Ok(LocalObject::Service(svc))) => {
                    if seen_local.insert(object.key()) {
                        b.local_service(&svc, domain_suffix);
                    } else {
                        b.diags.push(diag(
                            &origin_of(object),
                            format!(
                                "Service {} is defined more than once; the first definition is used",
                                object.key()
                            ),
                        ));
                    }
                }
                Some(Ok(LocalObject::Workload(_))) => {}
                Some(Err(errors)) => {
                    for e in errors {
                        b.diags.push(diag(&origin_of(object), e.to_string()));
                    }
                }
            }
        }
        for object in objects {
            if let Spec::ServiceEntry(se) = &object.spec {
                b.service_entry(object, se);
            }
        }
        b.registry.credentials = crate::secret::credentials(objects);
        for w in workloads {
            b.registry.local_tcp_outbound.insert(
                format!("{}/{}", w.namespace, w.name),
                w.tcp_outbound
                    .iter()
                    .map(|(u, port)| (u.hostname(domain_suffix), u.port, *port))
                    .collect(),
            );
        }
        (b.registry, b.diags)
    }
}
