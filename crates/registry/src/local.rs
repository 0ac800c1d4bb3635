//! The local workload manifest used by `trellis up`: a whole mesh on one
//! machine, without Kubernetes and without root.
//!
//! Two kinds in their own API group (so they never clash with Istio or
//! Kubernetes kinds), written next to the Istio YAML and loaded by the same
//! loader (they arrive as [`Spec::Unsupported`] objects):
//!
//! ```yaml
//! apiVersion: local.trellis.dev/v1alpha1
//! kind: Service            # the Kubernetes Service role
//! metadata: {name: reviews, namespace: default}
//! spec:
//!   selector: {app: reviews}
//!   ports: [{name: http, port: 9080, targetPort: 9080}]
//! ---
//! apiVersion: local.trellis.dev/v1alpha1
//! kind: Workload           # one instance (the Pod role)
//! metadata: {name: reviews-v2, labels: {app: reviews, version: v2}}
//! spec:
//!   serviceAccount: bookinfo-reviews
//!   demo: {service: reviews, version: v2, calls: ["http://ratings:9080/ratings"]}
//! ```
//!
//! [`LocalManifest::from_objects`] reads them, [`assign_ports`] gives every
//! workload its ports on 127.0.0.1 ([`ResolvedWorkload`]), and
//! [`crate::Registry::build`] turns services and resolved workloads into
//! registry entries.
//!
//! Local-mode convention: a workload's registry endpoint for a service port
//! is `127.0.0.1:<inbound_ports[targetPort]>` (its sidecar's inbound
//! listener, `has_sidecar: true`); the sidecar forwards to
//! `127.0.0.1:<app_ports[targetPort]>`, where the application listens. The
//! application sends its outbound calls to its sidecar's HTTP proxy port
//! `127.0.0.1:<outbound_port>`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use api::{Object, Severity, Spec, Validation, ValidationError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::{Diagnostic, Endpoint, Origin, Protocol};
use crate::protocol::select_protocol;

/// API group of the local manifest kinds.
pub const GROUP: &str = "local.trellis.dev";
/// The one API version of the local manifest kinds.
pub const API_VERSION: &str = "local.trellis.dev/v1alpha1";
/// Kind of a local service.
pub const KIND_SERVICE: &str = "Service";
/// Kind of a local workload.
pub const KIND_WORKLOAD: &str = "Workload";
/// Address every local workload and sidecar listens on.
pub const LOCAL_ADDRESS: &str = "127.0.0.1";
/// Service account of a workload that names none (as in Kubernetes).
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// True when `object` belongs to the local manifest API group (whatever its
/// kind or version; [`parse_object`] rejects the ones it does not know).
pub fn is_local(object: &Object) -> bool {
    object.group() == GROUP
}

// ---------------------------------------------------------------------------
// Specs as written
// ---------------------------------------------------------------------------

/// `spec` of a local `Service`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LocalServiceSpec {
    /// Labels a workload must carry (all of them) to back the service. Empty
    /// selects nothing (as a Kubernetes Service without selector).
    pub selector: BTreeMap<String, String>,
    pub ports: Vec<LocalServicePort>,
}

/// One port of a local `Service`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LocalServicePort {
    /// Port name; its prefix selects the protocol when `protocol` and
    /// `appProtocol` are unset (`http`, `http-web`, `grpc`, `tcp-db`, ...).
    pub name: String,
    /// The service port clients call.
    pub port: u32,
    /// The workload port that receives the traffic; `port` when unset.
    pub target_port: Option<u32>,
    /// Istio protocol name (`HTTP`, `HTTP2`, `GRPC`, `TCP`, `TLS`, `HTTPS`...).
    /// Note: unlike a Kubernetes Service, this is the application protocol.
    pub protocol: Option<String>,
    /// Kubernetes-style `appProtocol` (`http`, `kubernetes.io/h2c`, ...).
    pub app_protocol: Option<String>,
}

impl LocalServicePort {
    /// `targetPort`, defaulting to `port`.
    pub fn target(&self) -> u32 {
        self.target_port.filter(|t| *t != 0).unwrap_or(self.port)
    }

    /// The protocol by Istio's selection rules ([`crate::protocol`]).
    pub fn protocol(&self) -> Protocol {
        select_protocol(
            self.protocol.as_deref(),
            self.app_protocol.as_deref(),
            &self.name,
        )
    }
}

/// `spec.demo` of a local `Workload`: run `trellis demo-app`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DemoSpec {
    /// `--service`; defaults to the workload's `app` label, else its name.
    pub service: Option<String>,
    /// `--version`; defaults to the workload's `version` label, else `v1`.
    pub version: Option<String>,
    /// `--call` URLs, e.g. `http://ratings:9080/ratings`.
    pub calls: Vec<String>,
}

/// `spec` of a local `Workload` (without `ports`, which is read by hand to
/// accept both a list and a map).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
struct WorkloadSpecRaw {
    service_account: Option<String>,
    demo: Option<DemoSpec>,
    command: Vec<String>,
    env: BTreeMap<String, String>,
    working_dir: Option<String>,
    locality: Option<String>,
    ports: Option<Value>,
}

// ---------------------------------------------------------------------------
// Parsed objects
// ---------------------------------------------------------------------------

/// A local `Service`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalService {
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// The file it came from.
    pub origin: String,
    pub spec: LocalServiceSpec,
}

impl LocalService {
    /// `<name>.<namespace>.svc.<domain_suffix>`.
    pub fn hostname(&self, domain_suffix: &str) -> String {
        format!("{}.{}.svc.{domain_suffix}", self.name, self.namespace)
    }

    /// `<name>`, `<name>.<namespace>`, `<name>.<namespace>.svc`.
    pub fn aliases(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            format!("{}.{}", self.name, self.namespace),
            format!("{}.{}.svc", self.name, self.namespace),
        ]
    }

    /// Whether a workload in `namespace` with `labels` backs this service.
    pub fn selects(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        namespace == self.namespace && selector_matches(&self.spec.selector, labels)
    }

    pub fn registry_origin(&self) -> Origin {
        Origin {
            kind: KIND_SERVICE.into(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            file: self.origin.clone(),
        }
    }
}

/// How `trellis up` starts a workload's application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Runner {
    /// `trellis demo-app --service <service> --version <version> --call ...`.
    Demo {
        service: String,
        version: String,
        calls: Vec<String>,
    },
    /// An arbitrary command (argv), started with the workload's environment.
    Command {
        argv: Vec<String>,
        working_dir: Option<String>,
    },
    /// Nothing is started: the application is run by the user and listens
    /// on the workload's (fixed) app ports.
    External,
}

/// A local `Workload`: one instance of an application and its sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalWorkload {
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    /// The file it came from.
    pub origin: String,
    /// Plain name (`bookinfo-reviews`); `default` when unset.
    pub service_account: String,
    pub runner: Runner,
    /// Extra environment for the application (wins over what `trellis up` sets).
    pub env: BTreeMap<String, String>,
    /// `region/zone/subzone`, possibly empty.
    pub locality: String,
    /// Target (container) port -> fixed local app port, 0 = assign one. When
    /// the manifest lists no ports these are the target ports of every local
    /// Service / ServiceEntry (workloadSelector) selecting the workload.
    pub ports: BTreeMap<u32, u16>,
    /// Target ports that selecting services declare with a non-HTTP
    /// protocol (TCP, TLS, ...): a demo app serves them with its TCP echo.
    pub tcp_targets: BTreeSet<u32>,
    /// The TCP service ports of the manifest: without capture, the
    /// application reaches each through a local port of its sidecar.
    pub tcp_upstreams: Vec<TcpUpstream>,
}

/// A TCP port of a local Service, as a workload's sidecar exposes it
/// locally (there is no capture to find the destination otherwise).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TcpUpstream {
    pub service: String,
    pub namespace: String,
    pub port: u32,
}

impl TcpUpstream {
    /// `<service>.<namespace>.svc.<domain_suffix>`.
    pub fn hostname(&self, domain_suffix: &str) -> String {
        format!("{}.{}.svc.{domain_suffix}", self.service, self.namespace)
    }

    /// The environment variable that tells the application where the
    /// sidecar listens for it: `TRELLIS_TCP_<SERVICE>_<NAMESPACE>_<PORT>`.
    pub fn env_name(&self) -> String {
        let clean = |s: &str| -> String {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_uppercase()
                    } else {
                        '_'
                    }
                })
                .collect()
        };
        format!(
            "TRELLIS_TCP_{}_{}_{}",
            clean(&self.service),
            clean(&self.namespace),
            self.port
        )
    }
}

/// One local object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalObject {
    Service(LocalService),
    Workload(LocalWorkload),
}

/// A problem in a local object, at a field path (`spec.ports[0].port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

fn ferr(path: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        path: path.into(),
        message: message.into(),
    }
}

/// Whether `labels` carry every `selector` pair. An empty selector selects
/// nothing.
pub fn selector_matches(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

fn check_port(errors: &mut Vec<FieldError>, path: String, n: u32) {
    if !(1..=65535).contains(&n) {
        errors.push(ferr(path, format!("port {n} is not between 1 and 65535")));
    }
}

fn typed<T: DeserializeOwned>(raw: &Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(raw).map_err(|e| {
        let p = e.path().to_string();
        let path = if p == "." {
            "spec".to_string()
        } else {
            format!("spec.{p}")
        };
        ferr(path, e.inner().to_string())
    })
}

/// Parses one object of the local API group. `None` when the object is not
/// in the group; `Some(Err(..))` lists every problem with its field path.
pub fn parse_object(object: &Object) -> Option<Result<LocalObject, Vec<FieldError>>> {
    if !is_local(object) {
        return None;
    }
    Some(parse_local(object))
}

fn parse_local(object: &Object) -> Result<LocalObject, Vec<FieldError>> {
    if object.api_version != API_VERSION {
        return Err(vec![ferr(
            "apiVersion",
            format!(
                "unsupported apiVersion {:?}; expected {API_VERSION}",
                object.api_version
            ),
        )]);
    }
    let empty = serde_json::Map::new();
    let doc = match &object.spec {
        Spec::Unsupported(Value::Object(doc)) => doc,
        Spec::Unsupported(_) => return Err(vec![ferr("", "document is not a mapping")]),
        // Loaded by something other than `api::load`: only the spec is there.
        _ => &empty,
    };
    let mut errors = Vec::new();
    if let Some(extra) = doc.keys().find(|k| {
        !matches!(
            k.as_str(),
            "apiVersion" | "kind" | "metadata" | "spec" | "status"
        )
    }) {
        errors.push(ferr(extra.clone(), format!("unknown field `{extra}`")));
    }
    let meta = &object.metadata;
    if meta.name.is_empty() {
        errors.push(ferr("metadata.name", "name is required"));
    } else if !is_dns1123_subdomain(&meta.name) {
        errors.push(ferr(
            "metadata.name",
            format!(
                "{:?} is not a valid name (lowercase alphanumerics, '-' and '.')",
                meta.name
            ),
        ));
    }
    if !is_dns1123_label(&meta.namespace) {
        errors.push(ferr(
            "metadata.namespace",
            format!("{:?} is not a valid namespace", meta.namespace),
        ));
    }
    let spec = match doc.get("spec") {
        None | Some(Value::Null) => Value::Object(serde_json::Map::new()),
        Some(v @ Value::Object(_)) => v.clone(),
        Some(_) => {
            errors.push(ferr("spec", "spec must be a mapping"));
            return Err(errors);
        }
    };
    let parsed = match object.kind.as_str() {
        KIND_SERVICE => parse_service(object, &spec, &mut errors).map(LocalObject::Service),
        KIND_WORKLOAD => parse_workload(object, &spec, &mut errors).map(LocalObject::Workload),
        other => {
            errors.push(ferr(
                "kind",
                format!("unknown kind {other:?} in {GROUP}; expected Service or Workload"),
            ));
            None
        }
    };
    match parsed {
        Some(obj) if errors.is_empty() => Ok(obj),
        _ => Err(errors),
    }
}

fn parse_service(
    object: &Object,
    raw: &Value,
    errors: &mut Vec<FieldError>,
) -> Option<LocalService> {
    let spec: LocalServiceSpec = match typed(raw) {
        Ok(s) => s,
        Err(e) => {
            errors.push(e);
            return None;
        }
    };
    if spec.ports.is_empty() {
        errors.push(ferr("spec.ports", "a Service needs at least one port"));
    }
    let mut names = BTreeSet::new();
    let mut numbers = BTreeSet::new();
    for (i, p) in spec.ports.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        check_port(errors, format!("{path}.port"), p.port);
        if let Some(t) = p.target_port {
            check_port(errors, format!("{path}.targetPort"), t);
        }
        if p.name.is_empty() {
            if spec.ports.len() > 1 {
                errors.push(ferr(
                    format!("{path}.name"),
                    "a name is required when a Service has several ports",
                ));
            }
        } else if !is_dns1123_label(&p.name) {
            errors.push(ferr(
                format!("{path}.name"),
                format!("{:?} is not a valid port name", p.name),
            ));
        }
        if !p.name.is_empty() && !names.insert(p.name.as_str()) {
            errors.push(ferr(
                format!("{path}.name"),
                format!("port name {:?} is already defined", p.name),
            ));
        }
        if !numbers.insert(p.port) {
            errors.push(ferr(
                format!("{path}.port"),
                format!("port {} is already defined", p.port),
            ));
        }
        if let Some(proto) = p.protocol.as_deref().filter(|s| !s.is_empty())
            && crate::protocol::parse_protocol(proto).is_none()
        {
            errors.push(ferr(
                format!("{path}.protocol"),
                format!(
                    "unknown protocol {proto:?}; expected one of HTTP, HTTP2, GRPC, GRPC-WEB, HTTPS, TLS, TCP, MONGO, MYSQL, REDIS, UDP"
                ),
            ));
        }
    }
    for (k, v) in &spec.selector {
        if k.is_empty() {
            errors.push(ferr("spec.selector", "label keys must not be empty"));
        }
        if v.len() > 63 {
            errors.push(ferr(
                format!("spec.selector.{k}"),
                "label values are at most 63 characters",
            ));
        }
    }
    Some(LocalService {
        name: object.metadata.name.clone(),
        namespace: object.metadata.namespace.clone(),
        labels: object.metadata.labels.clone(),
        annotations: object.metadata.annotations.clone(),
        origin: object.origin.clone(),
        spec,
    })
}

fn parse_ports(v: Option<&Value>, errors: &mut Vec<FieldError>) -> Option<BTreeMap<u32, u16>> {
    let as_u32 = |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
    let mut out = BTreeMap::new();
    match v {
        None | Some(Value::Null) => return None,
        Some(Value::Array(list)) => {
            for (i, item) in list.iter().enumerate() {
                let path = format!("spec.ports[{i}]");
                match as_u32(item) {
                    Some(n) => {
                        check_port(errors, path, n);
                        out.insert(n, 0);
                    }
                    None => errors.push(ferr(path, "must be a port number")),
                }
            }
        }
        Some(Value::Object(map)) => {
            for (k, v) in map {
                let path = format!("spec.ports.{k}");
                let Ok(target) = k.parse::<u32>() else {
                    errors.push(ferr(path, "keys must be port numbers"));
                    continue;
                };
                check_port(errors, path.clone(), target);
                let local = match v {
                    Value::Null => Some(0),
                    v => as_u32(v).and_then(|n| u16::try_from(n).ok()),
                };
                match local {
                    Some(local) => {
                        out.insert(target, local);
                    }
                    None => errors.push(ferr(
                        path,
                        "value must be a local port number (0 to let trellis assign one)",
                    )),
                }
            }
        }
        Some(_) => errors.push(ferr(
            "spec.ports",
            "must be a list of ports or a map of port to local port",
        )),
    }
    Some(out)
}

fn parse_workload(
    object: &Object,
    raw: &Value,
    errors: &mut Vec<FieldError>,
) -> Option<LocalWorkload> {
    let spec: WorkloadSpecRaw = match typed(raw) {
        Ok(s) => s,
        Err(e) => {
            errors.push(e);
            return None;
        }
    };
    let labels = object.metadata.labels.clone();
    let ports = parse_ports(spec.ports.as_ref(), errors).unwrap_or_default();
    let service_account = spec
        .service_account
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_SERVICE_ACCOUNT.to_string());
    if !is_dns1123_subdomain(&service_account) {
        errors.push(ferr(
            "spec.serviceAccount",
            format!("{service_account:?} is not a valid service account name"),
        ));
    }
    let runner = match (spec.demo, spec.command.is_empty()) {
        (Some(_), false) => {
            errors.push(ferr(
                "spec.command",
                "only one of demo or command may be set",
            ));
            return None;
        }
        (Some(demo), true) => {
            for (i, c) in demo.calls.iter().enumerate() {
                if !(c.starts_with("http://") || c.starts_with("https://")) {
                    errors.push(ferr(
                        format!("spec.demo.calls[{i}]"),
                        format!("{c:?} is not an http:// URL"),
                    ));
                }
            }
            Runner::Demo {
                service: demo
                    .service
                    .filter(|s| !s.is_empty())
                    .or_else(|| labels.get("app").cloned())
                    .unwrap_or_else(|| object.metadata.name.clone()),
                version: demo
                    .version
                    .filter(|s| !s.is_empty())
                    .or_else(|| labels.get("version").cloned())
                    .unwrap_or_else(|| "v1".into()),
                calls: demo.calls,
            }
        }
        (None, false) => {
            if spec.command[0].is_empty() {
                errors.push(ferr("spec.command[0]", "the program must not be empty"));
            }
            Runner::Command {
                argv: spec.command,
                working_dir: spec.working_dir,
            }
        }
        (None, true) => Runner::External,
    };
    for k in spec.env.keys() {
        if k.is_empty() || k.contains('=') {
            errors.push(ferr(
                format!("spec.env.{k}"),
                "invalid environment variable name",
            ));
        }
    }
    if matches!(runner, Runner::External) && ports.values().any(|p| *p == 0) {
        errors.push(ferr(
            "spec.ports",
            "a workload without demo or command is run by you: give every port a fixed local port ({9080: 9080})",
        ));
    }
    Some(LocalWorkload {
        name: object.metadata.name.clone(),
        namespace: object.metadata.namespace.clone(),
        labels,
        origin: object.origin.clone(),
        service_account,
        runner,
        env: spec.env,
        locality: spec.locality.unwrap_or_default(),
        ports,
        tcp_targets: BTreeSet::new(),
        tcp_upstreams: Vec::new(),
    })
}

/// Validates a local object the way `api::validate` does Istio kinds (errors
/// with field paths). Objects outside the local group validate clean.
pub fn validate(object: &Object) -> Validation {
    let mut v = Validation::default();
    if let Some(Err(errors)) = parse_object(object) {
        v.errors = errors
            .into_iter()
            .map(|e| ValidationError {
                origin: object.origin.clone(),
                kind: object.kind.clone(),
                namespace: object.metadata.namespace.clone(),
                name: object.metadata.name.clone(),
                path: e.path,
                message: e.message,
                severity: Severity::Error,
            })
            .collect();
    }
    v
}

fn object_origin(object: &Object) -> Origin {
    Origin {
        kind: object.kind.clone(),
        namespace: object.metadata.namespace.clone(),
        name: object.metadata.name.clone(),
        file: object.origin.clone(),
    }
}

// ---------------------------------------------------------------------------
// The manifest
// ---------------------------------------------------------------------------

/// The local services and workloads of a configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalManifest {
    /// In object order.
    pub services: Vec<LocalService>,
    /// Sorted by namespace, then name.
    pub workloads: Vec<LocalWorkload>,
}

impl LocalManifest {
    /// Reads the local objects among `objects` (others are ignored). Bad or
    /// duplicate objects are skipped with a [`Diagnostic`]. Workloads that
    /// list no ports get the target ports of every local Service and every
    /// ServiceEntry `workloadSelector` (same namespace) that selects them.
    pub fn from_objects(objects: &[Object]) -> (Self, Vec<Diagnostic>) {
        let mut manifest = Self::default();
        let mut diags = Vec::new();
        let mut seen = BTreeSet::new();
        let mut explicit_ports = BTreeSet::new();
        for object in objects {
            let Some(parsed) = parse_object(object) else {
                continue;
            };
            let parsed = match parsed {
                Ok(p) => p,
                Err(errors) => {
                    for e in errors {
                        diags.push(Diagnostic {
                            origin: object_origin(object),
                            message: e.to_string(),
                        });
                    }
                    continue;
                }
            };
            if !seen.insert((object.kind.clone(), object.key())) {
                diags.push(Diagnostic {
                    origin: object_origin(object),
                    message: format!(
                        "{} {} is defined more than once; the first definition is used",
                        object.kind,
                        object.key()
                    ),
                });
                continue;
            }
            match parsed {
                LocalObject::Service(s) => manifest.services.push(s),
                LocalObject::Workload(w) => {
                    if !w.ports.is_empty() {
                        explicit_ports.insert((w.namespace.clone(), w.name.clone()));
                    }
                    manifest.workloads.push(w);
                }
            }
        }
        manifest
            .workloads
            .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));

        // Selectors (namespace, labels, target ports) that may pick
        // workloads, and which of those targets carry TCP.
        let mut selectors: Vec<(&str, &BTreeMap<String, String>, Vec<u32>)> = Vec::new();
        let mut tcp_selectors: Vec<(&str, &BTreeMap<String, String>, Vec<u32>)> = Vec::new();
        let mut tcp_upstreams = Vec::new();
        for s in &manifest.services {
            let targets = s.spec.ports.iter().map(LocalServicePort::target).collect();
            selectors.push((&s.namespace, &s.spec.selector, targets));
            let tcp: Vec<&LocalServicePort> = s
                .spec
                .ports
                .iter()
                .filter(|p| !p.protocol().is_http())
                .collect();
            tcp_selectors.push((
                &s.namespace,
                &s.spec.selector,
                tcp.iter().map(|p| p.target()).collect(),
            ));
            tcp_upstreams.extend(tcp.iter().map(|p| TcpUpstream {
                service: s.name.clone(),
                namespace: s.namespace.clone(),
                port: p.port,
            }));
        }
        tcp_upstreams.sort();
        tcp_upstreams.dedup();
        for o in objects {
            if let Spec::ServiceEntry(se) = &o.spec
                && let Some(sel) = &se.workload_selector
            {
                let targets = se
                    .ports
                    .iter()
                    .map(|p| p.target_port.filter(|t| *t != 0).unwrap_or(p.number))
                    .collect();
                selectors.push((o.namespace(), &sel.labels, targets));
            }
        }
        let derived: Vec<BTreeSet<u32>> = manifest
            .workloads
            .iter()
            .map(|w| {
                selectors
                    .iter()
                    .filter(|(ns, sel, _)| *ns == w.namespace && selector_matches(sel, &w.labels))
                    .flat_map(|(_, _, targets)| targets.iter().copied())
                    .filter(|t| (1..=65535).contains(t))
                    .collect()
            })
            .collect();
        for (w, targets) in manifest.workloads.iter_mut().zip(derived) {
            w.tcp_targets = tcp_selectors
                .iter()
                .filter(|(ns, sel, _)| *ns == w.namespace && selector_matches(sel, &w.labels))
                .flat_map(|(_, _, targets)| targets.iter().copied())
                .collect();
            w.tcp_upstreams = tcp_upstreams.clone();
            if explicit_ports.contains(&(w.namespace.clone(), w.name.clone())) {
                continue;
            }
            w.ports = targets.into_iter().map(|t| (t, 0)).collect();
        }
        (manifest, diags)
    }
}

// ---------------------------------------------------------------------------
// Port assignment
// ---------------------------------------------------------------------------

/// A workload with every port decided, as `trellis up` runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedWorkload {
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    /// Plain name, e.g. `bookinfo-reviews`.
    pub service_account: String,
    /// `region/zone/subzone`, possibly empty.
    pub locality: String,
    /// targetPort -> the local port the application listens on.
    pub app_ports: BTreeMap<u32, u16>,
    /// targetPort -> the sidecar's inbound listener port (the registry
    /// endpoint port).
    pub inbound_ports: BTreeMap<u32, u16>,
    /// The sidecar's outbound HTTP proxy port the application calls through.
    pub outbound_port: u16,
    /// The sidecar's admin port.
    pub admin_port: u16,
    /// The sidecar's Prometheus port (Istio's 15090) and the agent's
    /// merged-metrics port (Istio's 15020).
    pub stats_port: u16,
    pub agent_port: u16,
    /// Target ports served as TCP (see [`LocalWorkload::tcp_targets`]).
    pub tcp_targets: BTreeSet<u32>,
    /// The sidecar's local port for each TCP service port the application
    /// may call (no capture: one listener per destination).
    pub tcp_outbound: Vec<(TcpUpstream, u16)>,
    pub runner: Runner,
    /// Extra environment from the manifest.
    pub env: BTreeMap<String, String>,
    /// The manifest file.
    pub origin: String,
}

impl ResolvedWorkload {
    /// The registry endpoint of this workload for a service port whose
    /// target is `target_port`: `127.0.0.1:<inbound port>`. `None` when the
    /// workload does not serve that port.
    pub fn endpoint(&self, target_port: u32) -> Option<Endpoint> {
        let inbound = self.inbound_ports.get(&target_port)?;
        Some(Endpoint {
            address: LOCAL_ADDRESS.to_string(),
            port: u32::from(*inbound),
            labels: self.labels.clone(),
            locality: self.locality.clone(),
            network: String::new(),
            weight: 1,
            service_account: self.service_account.clone(),
            namespace: self.namespace.clone(),
            workload_name: self.name.clone(),
            healthy: true,
            has_sidecar: true,
        })
    }

    /// Istio's node id for this workload's sidecar:
    /// `sidecar~127.0.0.1~<name>.<ns>~<ns>.svc.<domain_suffix>`.
    pub fn node_id(&self, domain_suffix: &str) -> String {
        format!(
            "sidecar~{LOCAL_ADDRESS}~{}.{}~{}.svc.{domain_suffix}",
            self.name, self.namespace, self.namespace
        )
    }

    /// `spiffe://<trust_domain>/ns/<ns>/sa/<service account>`.
    pub fn spiffe_id(&self, trust_domain: &str) -> String {
        format!(
            "spiffe://{trust_domain}/ns/{}/sa/{}",
            self.namespace, self.service_account
        )
    }

    /// `http://127.0.0.1:<outbound_port>`.
    pub fn proxy_url(&self) -> String {
        format!("http://{LOCAL_ADDRESS}:{}", self.outbound_port)
    }

    /// Arguments after `trellis demo-app` for a demo workload (`None` for
    /// other runners): `--service S --version V --listen-addr 127.0.0.1
    /// --http-port <app ports> --proxy http://127.0.0.1:<outbound> --call ...`.
    pub fn demo_args(&self) -> Option<Vec<String>> {
        let Runner::Demo {
            service,
            version,
            calls,
        } = &self.runner
        else {
            return None;
        };
        let mut args = vec![
            "--service".to_string(),
            service.clone(),
            "--version".to_string(),
            version.clone(),
            "--listen-addr".to_string(),
            LOCAL_ADDRESS.to_string(),
        ];
        let http: Vec<String> = self
            .app_ports
            .iter()
            .filter(|(t, _)| !self.tcp_targets.contains(t))
            .map(|(_, p)| p.to_string())
            .collect();
        let tcp = self
            .app_ports
            .iter()
            .find(|(t, _)| self.tcp_targets.contains(t));
        if !http.is_empty() {
            args.push("--http-port".into());
            args.push(http.join(","));
        } else if tcp.is_some() {
            // A TCP-only demo still runs its HTTP side: on a port of the
            // kernel's choosing, never the default 8080 (the gateway's).
            args.push("--http-port".into());
            args.push("0".into());
        }
        if let Some((_, port)) = tcp {
            args.push("--tcp-port".into());
            args.push(port.to_string());
        }
        args.push("--proxy".into());
        args.push(self.proxy_url());
        for c in calls {
            args.push("--call".into());
            args.push(c.clone());
        }
        Some(args)
    }

    /// The environment of the application process: `PORT` (app port of the
    /// lowest target port), `TRELLIS_APP_PORT_<targetPort>`, `HTTP_PROXY` /
    /// `http_proxy` (the sidecar's outbound proxy), `NO_PROXY` / `no_proxy`
    /// (`localhost,127.0.0.1`), `TRELLIS_WORKLOAD` (`ns/name`), then the
    /// manifest's `env` on top.
    pub fn env_vars(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        if let Some(first) = self.app_ports.values().next() {
            env.insert("PORT".to_string(), first.to_string());
        }
        for (target, local) in &self.app_ports {
            env.insert(format!("TRELLIS_APP_PORT_{target}"), local.to_string());
        }
        let proxy = self.proxy_url();
        env.insert("HTTP_PROXY".into(), proxy.clone());
        env.insert("http_proxy".into(), proxy);
        env.insert("NO_PROXY".into(), "localhost,127.0.0.1".into());
        env.insert("no_proxy".into(), "localhost,127.0.0.1".into());
        env.insert(
            "TRELLIS_WORKLOAD".into(),
            format!("{}/{}", self.namespace, self.name),
        );
        for (u, port) in &self.tcp_outbound {
            env.insert(u.env_name(), format!("{LOCAL_ADDRESS}:{port}"));
        }
        env.extend(self.env.clone());
        env
    }
}

/// Why ports could not be assigned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssignError {
    #[error("no free port left at or above {base} for workload {workload}")]
    Exhausted { base: u16, workload: String },
    #[error("workload {workload} asks for local port {port}, which is {reason}")]
    FixedPortConflict {
        workload: String,
        port: u16,
        reason: String,
    },
}

/// Assigns local ports to `workloads`, deterministically: workloads sorted by
/// namespace then name; for each, in order, the admin port, the outbound
/// port, then per target port (ascending) the inbound port and (unless fixed
/// in the manifest) the app port; each the next port from `base` upward that
/// is not in `exclude` and not already used (fixed app ports included).
pub fn assign_ports(
    workloads: &[LocalWorkload],
    base: u16,
    exclude: &BTreeSet<u16>,
) -> Result<Vec<ResolvedWorkload>, AssignError> {
    assign_ports_with(workloads, base, exclude, |_| true)
}

/// [`assign_ports`], also skipping ports for which `available` says false
/// (e.g. a bind probe, to step over ports other programs hold).
pub fn assign_ports_with(
    workloads: &[LocalWorkload],
    base: u16,
    exclude: &BTreeSet<u16>,
    mut available: impl FnMut(u16) -> bool,
) -> Result<Vec<ResolvedWorkload>, AssignError> {
    let mut sorted: Vec<&LocalWorkload> = workloads.iter().collect();
    sorted.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));

    let mut used: BTreeSet<u16> = BTreeSet::new();
    for w in &sorted {
        for &fixed in w.ports.values().filter(|p| **p != 0) {
            let reason = if exclude.contains(&fixed) {
                Some("reserved".to_string())
            } else if !used.insert(fixed) {
                Some("already used by another workload".to_string())
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(AssignError::FixedPortConflict {
                    workload: format!("{}/{}", w.namespace, w.name),
                    port: fixed,
                    reason,
                });
            }
        }
    }

    let mut next = u32::from(base);
    let mut take = |workload: &LocalWorkload| -> Result<u16, AssignError> {
        while next <= 65535 {
            let candidate = next as u16;
            next += 1;
            if candidate != 0
                && !exclude.contains(&candidate)
                && !used.contains(&candidate)
                && available(candidate)
            {
                used.insert(candidate);
                return Ok(candidate);
            }
        }
        Err(AssignError::Exhausted {
            base,
            workload: format!("{}/{}", workload.namespace, workload.name),
        })
    };

    let mut out = Vec::with_capacity(sorted.len());
    for w in sorted {
        let admin_port = take(w)?;
        let outbound_port = take(w)?;
        let mut app_ports = BTreeMap::new();
        let mut inbound_ports = BTreeMap::new();
        for (&target, &fixed) in &w.ports {
            inbound_ports.insert(target, take(w)?);
            let app = if fixed != 0 { fixed } else { take(w)? };
            app_ports.insert(target, app);
        }
        // After every other port, so that meshes without TCP services keep
        // their assignment.
        let mut tcp_outbound = Vec::new();
        for u in &w.tcp_upstreams {
            tcp_outbound.push((u.clone(), take(w)?));
        }
        let stats_port = take(w)?;
        let agent_port = take(w)?;
        out.push(ResolvedWorkload {
            tcp_targets: w.tcp_targets.clone(),
            tcp_outbound,
            name: w.name.clone(),
            namespace: w.namespace.clone(),
            labels: w.labels.clone(),
            service_account: w.service_account.clone(),
            locality: w.locality.clone(),
            app_ports,
            inbound_ports,
            outbound_port,
            admin_port,
            stats_port,
            agent_port,
            runner: w.runner.clone(),
            env: w.env.clone(),
            origin: w.origin.clone(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Vec<Object> {
        let (objects, errors) = api::load::parse_documents(text, "m.yaml");
        assert!(errors.is_empty(), "{errors:?}");
        objects
    }

    #[test]
    fn tcp_service_ports_get_local_listener_ports_and_a_tcp_echo() {
        let objects = load(
            "apiVersion: local.trellis.dev/v1alpha1\nkind: Service\nmetadata: {name: echo}\nspec:\n  selector: {app: echo}\n  ports: [{name: tcp, port: 9000, targetPort: 9001}]\n---\napiVersion: local.trellis.dev/v1alpha1\nkind: Workload\nmetadata: {name: echo-v1, labels: {app: echo}}\nspec: {demo: {}}\n---\napiVersion: local.trellis.dev/v1alpha1\nkind: Workload\nmetadata: {name: web, labels: {app: web}}\nspec: {demo: {}, ports: [8080]}\n",
        );
        let (m, diags) = LocalManifest::from_objects(&objects);
        assert!(diags.is_empty(), "{diags:?}");
        let r = assign_ports(&m.workloads, 30000, &BTreeSet::new()).expect("ports");
        let echo = &r[0];
        assert_eq!(echo.name, "echo-v1");
        assert_eq!(echo.tcp_targets, BTreeSet::from([9001]));
        // admin, outbound, inbound, app, then the TCP listener.
        assert_eq!(echo.tcp_outbound.len(), 1);
        assert_eq!(echo.tcp_outbound[0].1, 30004);
        let args = echo.demo_args().expect("demo");
        let at = |flag: &str| {
            args.iter()
                .position(|a| a == flag)
                .map(|i| args[i + 1].clone())
        };
        assert_eq!(at("--http-port").as_deref(), Some("0"));
        assert_eq!(at("--tcp-port"), Some(echo.app_ports[&9001].to_string()));
        let web = &r[1];
        assert_eq!(
            web.env_vars()
                .get("TRELLIS_TCP_ECHO_DEFAULT_9000")
                .map(String::as_str),
            Some(format!("127.0.0.1:{}", web.tcp_outbound[0].1).as_str())
        );
        assert_eq!(
            web.tcp_outbound[0].0.hostname("cluster.local"),
            "echo.default.svc.cluster.local"
        );
    }

    #[test]
    fn workload_ports_map_with_integer_keys() {
        let objects = load(
            "apiVersion: local.trellis.dev/v1alpha1\nkind: Workload\nmetadata: {name: w, labels: {app: a}}\nspec:\n  command: [python3, app.py]\n  ports: {9080: 0, 9090: 18080}\n",
        );
        let (m, diags) = LocalManifest::from_objects(&objects);
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!(
            m.workloads[0].ports,
            BTreeMap::from([(9080, 0), (9090, 18080)])
        );
        let list = load(
            "apiVersion: local.trellis.dev/v1alpha1\nkind: Workload\nmetadata: {name: w}\nspec: {demo: {}, ports: [9080, 9081]}\n",
        );
        let (m, _) = LocalManifest::from_objects(&list);
        assert_eq!(m.workloads[0].ports, BTreeMap::from([(9080, 0), (9081, 0)]));
        assert_eq!(
            m.workloads[0].runner,
            Runner::Demo {
                service: "w".into(),
                version: "v1".into(),
                calls: vec![]
            }
        );
    }

    #[test]
    fn bad_fields_have_paths() {
        let objects = load(
            "apiVersion: local.trellis.dev/v1alpha1\nkind: Service\nmetadata: {name: s}\nspec:\n  ports: [{name: http, port: 70000}, {name: http, port: 80, protocol: BOGUS}]\n---\napiVersion: local.trellis.dev/v1alpha1\nkind: Workload\nmetadata: {name: w}\nspec: {demo: {}, comand: [x]}\n---\napiVersion: local.trellis.dev/v1\nkind: Workload\nmetadata: {name: w2}\n---\napiVersion: local.trellis.dev/v1alpha1\nkind: Pod\nmetadata: {name: p}\n",
        );
        let paths: Vec<Vec<String>> = objects
            .iter()
            .map(|o| validate(o).errors.into_iter().map(|e| e.path).collect())
            .collect();
        assert_eq!(
            paths,
            vec![
                vec![
                    "spec.ports[0].port".to_string(),
                    "spec.ports[1].name".into(),
                    "spec.ports[1].protocol".into()
                ],
                vec!["spec.comand".into()],
                vec!["apiVersion".into()],
                vec!["kind".into()],
            ]
        );
        let e = &validate(&objects[1]).errors[0];
        assert!(e.message.contains("comand"), "{e}");
        assert!(
            e.to_string()
                .starts_with("m.yaml: Workload default/w: spec.comand: "),
            "{e}"
        );
    }

    fn workload(name: &str, ports: &[(u32, u16)]) -> LocalWorkload {
        LocalWorkload {
            name: name.into(),
            namespace: "default".into(),
            labels: BTreeMap::new(),
            origin: String::new(),
            service_account: "default".into(),
            runner: Runner::External,
            env: BTreeMap::new(),
            locality: String::new(),
            ports: ports.iter().copied().collect(),
            tcp_targets: BTreeSet::new(),
            tcp_upstreams: Vec::new(),
        }
    }

    #[test]
    fn ports_are_deterministic_and_skip_exclusions() {
        let ws = vec![
            workload("b", &[(9080, 0)]),
            workload("a", &[(9080, 0), (9090, 20001)]),
        ];
        let exclude = BTreeSet::from([20002]);
        let r = assign_ports(&ws, 20000, &exclude).expect("ports");
        assert_eq!(r[0].name, "a");
        assert_eq!(r[0].admin_port, 20000);
        assert_eq!(r[0].outbound_port, 20003); // 20001 fixed, 20002 excluded
        assert_eq!(
            r[0].inbound_ports,
            BTreeMap::from([(9080, 20004), (9090, 20006)])
        );
        assert_eq!(
            r[0].app_ports,
            BTreeMap::from([(9080, 20005), (9090, 20001)])
        );
        assert_eq!((r[0].stats_port, r[0].agent_port), (20007, 20008));
        assert_eq!(r[1].admin_port, 20009);
        assert_eq!(r, assign_ports(&ws, 20000, &exclude).expect("again"));

        let clash = vec![workload("a", &[(1, 5000)]), workload("b", &[(1, 5000)])];
        assert!(matches!(
            assign_ports(&clash, 20000, &BTreeSet::new()),
            Err(AssignError::FixedPortConflict { port: 5000, .. })
        ));
        assert!(matches!(
            assign_ports(&ws, 65534, &BTreeSet::new()),
            Err(AssignError::Exhausted { .. })
        ));
    }
}
