//! Rules several kinds share: exportTo, gateway references, destinations,
//! header operations, retries, label maps.

use std::collections::{BTreeMap, BTreeSet};

use super::Report;
use super::checks;
use crate::networking::virtual_service::HttpRetry;
use crate::networking::{Destination, Headers};

/// `exportTo`: `.`, `*`, `~` (ServiceEntry only) or namespace names; no
/// duplicates; `*` and `~` only alone.
pub(crate) fn export_to(
    r: &mut Report,
    path: &str,
    namespace: &str,
    export_to: &[String],
    service_entry: bool,
) {
    let mut seen = BTreeSet::new();
    for (i, e) in export_to.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let key = if e == "." { namespace } else { e.as_str() };
        if !seen.insert(key.to_string()) {
            if key != e {
                r.err(
                    p,
                    format!("\".\" and the object's namespace {namespace:?} are the same entry"),
                );
            } else {
                r.err(p, format!("{e:?} is listed more than once"));
            }
            continue;
        }
        let valid =
            e == "." || e == "*" || (e == "~" && service_entry) || checks::is_dns1123_label(e);
        if !valid {
            r.err(
                p,
                format!(
                    "{e:?} is not \".\", \"*\"{} or a namespace name",
                    if service_entry { ", \"~\"" } else { "" }
                ),
            );
        }
    }
    if export_to.len() > 1 {
        if seen.contains("*") {
            r.err(
                path,
                "\"*\" (everyone) cannot be combined with other entries",
            );
        }
        if seen.contains("~") {
            r.err(path, "\"~\" (no one) cannot be combined with other entries");
        }
    }
}

/// Gateway references in `gateways`: `mesh`, `name`, `ns/name`.
pub(crate) fn gateway_names(r: &mut Report, path: &str, names: &[String]) {
    for (i, g) in names.iter().enumerate() {
        let p = format!("{path}[{i}]");
        match g.split_once('/') {
            None => {
                if let Some((name, ns)) = g.split_once('.') {
                    r.warn(
                        &p,
                        format!(
                            "{g:?} uses the legacy name.namespace form; prefer \"{}/{}\"",
                            ns.split('.').next().unwrap_or(ns),
                            name
                        ),
                    );
                }
                r.check(p, checks::fqdn(g));
            }
            Some((ns, name)) => {
                if ns.is_empty() || name.is_empty() {
                    r.err(&p, "namespace and gateway name must both be non-empty");
                }
                if !checks::is_dns1123_label(ns) {
                    r.err(
                        &p,
                        format!("namespace {ns:?} is not a valid namespace name"),
                    );
                }
                if !checks::is_dns1123_label(name) {
                    r.err(&p, format!("gateway name {name:?} is not a valid name"));
                }
            }
        }
    }
}

pub(crate) fn subset_name(name: &str) -> checks::Check {
    if name.is_empty() {
        return Err("subset name must not be empty".into());
    }
    if !checks::is_dns1123_label(name) {
        return Err(format!("subset name {name:?} must be a DNS-1123 label"));
    }
    Ok(())
}

/// A destination: host required (not `*`), subset a DNS label, valid port.
pub(crate) fn destination(r: &mut Report, path: &str, d: &Destination) {
    if d.host.is_empty() {
        r.err(format!("{path}.host"), "destination host is required");
    } else if d.host == "*" {
        r.err(format!("{path}.host"), "destination host cannot be \"*\"");
    } else {
        r.check(format!("{path}.host"), checks::wildcard_domain(&d.host));
    }
    if let Some(s) = &d.subset {
        r.check(format!("{path}.subset"), subset_name(s));
    }
    if let Some(p) = &d.port {
        r.check(format!("{path}.port.number"), checks::port(p.number));
    }
}

/// Header manipulation rules (request set/add may target the authority).
pub(crate) fn headers(r: &mut Report, path: &str, h: &Headers) {
    if let Some(req) = &h.request {
        for (op, map) in [("set", &req.set), ("add", &req.add)] {
            for (name, value) in map {
                let p = format!("{path}.request.{op}.{name}");
                r.check(&p, checks::request_set_header_name(name));
                r.check(&p, checks::header_value(value));
            }
        }
        for (i, name) in req.remove.iter().enumerate() {
            r.check(
                format!("{path}.request.remove[{i}]"),
                checks::header_operation_name(name),
            );
        }
    }
    if let Some(resp) = &h.response {
        for (op, map) in [("set", &resp.set), ("add", &resp.add)] {
            for (name, value) in map {
                let p = format!("{path}.response.{op}.{name}");
                r.check(&p, checks::header_operation_name(name));
                r.check(&p, checks::header_value(value));
            }
        }
        for (i, name) in resp.remove.iter().enumerate() {
            r.check(
                format!("{path}.response.remove[{i}]"),
                checks::header_operation_name(name),
            );
        }
    }
}

/// Envoy's `x-envoy-retry-on` / `x-envoy-retry-grpc-on` conditions.
const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "envoy-ratelimited",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// Retry policy: attempts >= 0, nothing else when attempts is 0, valid
/// durations and retryOn conditions (names or HTTP status codes).
pub(crate) fn http_retry(r: &mut Report, path: &str, retry: &HttpRetry) {
    let attempts = retry.attempts.unwrap_or(0);
    if attempts < 0 {
        r.err(
            format!("{path}.attempts"),
            format!("attempts {attempts} must not be negative"),
        );
    }
    if attempts == 0
        && (retry.per_try_timeout.is_some()
            || retry.retry_on.is_some()
            || retry.retry_remote_localities.is_some())
    {
        r.err(
            format!("{path}.attempts"),
            "retries are disabled (attempts is 0) yet other retry settings are set",
        );
    }
    if let Some(d) = retry.per_try_timeout {
        r.check(format!("{path}.perTryTimeout"), checks::duration(d));
    }
    if let Some(d) = retry.backoff {
        r.check(format!("{path}.backoff"), checks::duration(d));
    }
    if let Some(on) = &retry.retry_on {
        for cond in on.split(',') {
            let is_status = cond.parse::<u16>().is_ok_and(|c| (100..=599).contains(&c));
            if !is_status && !RETRY_ON.contains(&cond) {
                r.err(
                    format!("{path}.retryOn"),
                    format!("{cond:?} is not a retry condition Envoy knows"),
                );
            }
        }
    }
}

/// Kubernetes label syntax for a label map at `path`.
pub(crate) fn labels(r: &mut Report, path: &str, map: &BTreeMap<String, String>) {
    for (k, m) in checks::labels(map) {
        r.err(format!("{path}.{k}"), m);
    }
}

/// Workload selector labels at `path`; warns when empty.
pub(crate) fn selector(r: &mut Report, path: &str, map: &BTreeMap<String, String>, what: &str) {
    for (k, m) in checks::selector_labels(map) {
        r.err(format!("{path}.{k}"), m);
    }
    if map.is_empty() {
        r.warn(path, format!("workload selector has no labels; the {what} applies to every workload in the namespace"));
    }
}
