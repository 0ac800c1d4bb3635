//! Semantic validation of loaded objects, modelled on Istio's admission
//! webhook (`pkg/config/validation` in istio/istio): the same rules, in
//! Trellis' own words, each reported with the field path it concerns.
//!
//! Errors mean Istio would reject the object; warnings mean Istio would
//! accept it but flag it (deprecated fields, likely mistakes).

mod checks;
mod destination_rule;
mod gateway;
mod security;
mod service_entry;
mod shared;
mod sidecar;
mod telemetry;
mod virtual_service;
mod workload;

use std::fmt;

use crate::object::{Object, Spec};

/// Whether a finding rejects the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One finding about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// The file the object came from.
    pub origin: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// Field path, e.g. `spec.http[0].route[1].weight`.
    pub path: String,
    pub message: String,
    pub severity: Severity,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} {}/{}: {}: {}",
            self.origin, self.kind, self.namespace, self.name, self.path, self.message
        )?;
        if self.severity == Severity::Warning {
            f.write_str(" (warning)")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationError {}

/// The outcome of validating one object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validation {
    pub errors: Vec<ValidationError>,
    pub warnings: Vec<ValidationError>,
}

impl Validation {
    /// True when there is no error (warnings allowed).
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Collects findings with paths while a validator walks a spec.
#[derive(Default)]
pub(crate) struct Report {
    pub(crate) errors: Vec<(String, String)>,
    pub(crate) warnings: Vec<(String, String)>,
}

impl Report {
    pub(crate) fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push((path.into(), message.into()));
    }

    pub(crate) fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.warnings.push((path.into(), message.into()));
    }

    /// Records `check`'s failure, if any, at `path`.
    pub(crate) fn check(&mut self, path: impl Into<String>, check: checks::Check) {
        if let Err(m) = check {
            self.err(path, m);
        }
    }
}

/// Annotations users may not set (Istio rejects objects carrying them).
const FORBIDDEN_ANNOTATIONS: &[&str] = &[
    "istio.io/alwaysReject",
    "internal.istio.io/parent-namespace",
    "internal.istio.io/parent-names",
];

/// The annotation that puts an AuthorizationPolicy in dry-run (shadow) mode.
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

/// Go's `strconv.ParseBool`, which Istio uses for annotation values.
pub fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// Validates one object. Kinds without a validator yet (loosely typed or
/// unsupported ones) validate clean.
pub fn validate(object: &Object) -> Validation {
    let mut r = Report::default();
    for a in FORBIDDEN_ANNOTATIONS {
        if object.metadata.annotations.contains_key(*a) {
            r.err(
                format!("metadata.annotations.{a}"),
                "this annotation may not be set by users",
            );
        }
    }
    if let Some(value) = object.metadata.annotations.get(DRY_RUN_ANNOTATION) {
        let path = format!("metadata.annotations.{DRY_RUN_ANNOTATION}");
        match &object.spec {
            Spec::AuthorizationPolicy(ap) => {
                if !matches!(
                    ap.action(),
                    crate::security::Action::Allow | crate::security::Action::Deny
                ) {
                    r.err(
                        &path,
                        format!(
                            "dry-run is only supported with action ALLOW or DENY, not {}",
                            ap.action().as_str()
                        ),
                    );
                }
                if parse_bool(value).is_none() {
                    r.err(path, format!("{value:?} is not a boolean"));
                }
            }
            _ => r.err(
                path,
                "only AuthorizationPolicy supports the dry-run annotation",
            ),
        }
    }
    let ns = object.namespace();
    match &object.spec {
        Spec::VirtualService(vs) => virtual_service::validate(ns, vs, &mut r),
        Spec::DestinationRule(dr) => destination_rule::validate(ns, dr, &mut r),
        Spec::Gateway(gw) => gateway::validate(object.name(), gw, &mut r),
        Spec::ServiceEntry(se) => service_entry::validate(ns, se, &mut r),
        Spec::WorkloadEntry(we) => workload::validate_entry(we, &mut r),
        Spec::WorkloadGroup(wg) => workload::validate_group(wg, &mut r),
        Spec::Sidecar(sc) => sidecar::validate(ns, sc, &mut r),
        Spec::PeerAuthentication(pa) => security::validate_peer_authentication(pa, &mut r),
        Spec::AuthorizationPolicy(ap) => security::validate_authorization_policy(ap, &mut r),
        Spec::RequestAuthentication(ra) => security::validate_request_authentication(ra, &mut r),
        Spec::Telemetry(t) => telemetry::validate_telemetry(t, &mut r),
        _ => {}
    }
    let make = |(path, message): (String, String), severity| ValidationError {
        origin: object.origin.clone(),
        kind: object.kind.clone(),
        namespace: object.metadata.namespace.clone(),
        name: object.metadata.name.clone(),
        path,
        message,
        severity,
    };
    Validation {
        errors: r
            .errors
            .into_iter()
            .map(|e| make(e, Severity::Error))
            .collect(),
        warnings: r
            .warnings
            .into_iter()
            .map(|e| make(e, Severity::Warning))
            .collect(),
    }
}

/// Validates many objects, returning only the errors.
pub fn validate_all<'a>(objects: impl IntoIterator<Item = &'a Object>) -> Vec<ValidationError> {
    objects
        .into_iter()
        .flat_map(|o| validate(o).errors)
        .collect()
}
