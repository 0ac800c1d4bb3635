//! WorkloadEntry and WorkloadGroup rules (Istio: `validateWorkloadEntry`,
//! `ValidateWorkloadGroup`, `validateReadinessProbe`).

use std::collections::BTreeSet;

use super::{Report, checks, shared};
use crate::networking::workload_entry::WorkloadEntry;
use crate::networking::workload_group::WorkloadGroup;

/// `service_ports`: the port names of the enclosing ServiceEntry, when the
/// entry is one of its endpoints. `allow_fqdn`: DNS names allowed as address.
pub(crate) fn entry(
    r: &mut Report,
    path: &str,
    we: &WorkloadEntry,
    service_ports: Option<&BTreeSet<&str>>,
    allow_fqdn: bool,
) {
    let addr = we.address.as_str();
    if addr.is_empty() {
        match &we.network {
            Some(n) if !n.is_empty() => r.warn(
                format!("{path}.address"),
                format!("address is unset (network {n:?})"),
            ),
            _ => {
                r.err(format!("{path}.address"), "address is required");
                return;
            }
        }
    }
    let unix = addr.starts_with(checks::UNIX_PREFIX);
    if let Some(sock) = addr.strip_prefix(checks::UNIX_PREFIX) {
        r.check(format!("{path}.address"), checks::unix_address(sock));
        if !we.ports.is_empty() {
            r.err(
                format!("{path}.ports"),
                "unix socket endpoints cannot have ports",
            );
        }
    } else if !addr.is_empty() && !checks::is_ip(addr) {
        if !allow_fqdn {
            r.err(
                format!("{path}.address"),
                format!("{addr:?} is not a valid IP address"),
            );
        } else if checks::fqdn(addr).is_err() {
            r.err(
                format!("{path}.address"),
                format!("{addr:?} is neither an IP address nor a DNS name"),
            );
        }
    }
    for (name, port) in &we.ports {
        let pp = format!("{path}.ports.{name}");
        if let Some(sp) = service_ports
            && !sp.contains(name.as_str())
        {
            r.err(
                &pp,
                format!("port name {name:?} is not one of the ServiceEntry's ports"),
            );
        }
        r.check(&pp, checks::port_name(name));
        r.check(&pp, checks::port(*port));
    }
    shared::labels(r, &format!("{path}.labels"), &we.labels);
    if unix && service_ports.is_some_and(|sp| sp.len() != 1) {
        r.err(
            format!("{path}.address"),
            "unix socket endpoints need exactly one service port",
        );
    }
}

pub(crate) fn validate_entry(we: &WorkloadEntry, r: &mut Report) {
    entry(r, "spec", we, None, true);
}

pub(crate) fn validate_group(wg: &WorkloadGroup, r: &mut Report) {
    if wg.template.is_none() {
        r.err("spec.template", "template is required");
        return;
    }
    if let Some(m) = &wg.metadata {
        shared::labels(r, "spec.metadata.labels", &m.labels);
    }
    let Some(probe) = &wg.probe else { return };
    let p = "spec.probe";
    for (field, v) in [
        ("periodSeconds", probe.period_seconds),
        ("initialDelaySeconds", probe.initial_delay_seconds),
        ("timeoutSeconds", probe.timeout_seconds),
        ("successThreshold", probe.success_threshold),
        ("failureThreshold", probe.failure_threshold),
    ] {
        if let Some(v) = v
            && v < 0
        {
            r.err(
                format!("{p}.{field}"),
                format!("{field} {v} must not be negative"),
            );
        }
    }
    let methods = [
        probe.http_get.is_some(),
        probe.tcp_socket.is_some(),
        probe.exec.is_some(),
        probe.grpc.is_some(),
    ];
    match methods.iter().filter(|b| **b).count() {
        0 => r.err(p, "a probe needs one of httpGet, tcpSocket, exec or grpc"),
        1 => {}
        _ => r.err(p, "only one of httpGet, tcpSocket, exec or grpc may be set"),
    }
    if let Some(h) = &probe.http_get {
        r.check(format!("{p}.httpGet.port"), checks::port(h.port));
        if let Some(s) = &h.scheme
            && !s.is_empty()
            && s != "HTTP"
            && s != "HTTPS"
        {
            r.err(
                format!("{p}.httpGet.scheme"),
                "scheme must be HTTP or HTTPS",
            );
        }
        for (i, hh) in h.http_headers.iter().enumerate() {
            let ok = !hh.name.is_empty()
                && hh
                    .name
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-');
            if !ok {
                r.err(
                    format!("{p}.httpGet.httpHeaders[{i}].name"),
                    format!("{:?} is not a valid probe header name", hh.name),
                );
            }
        }
    }
    if let Some(t) = &probe.tcp_socket {
        r.check(format!("{p}.tcpSocket.port"), checks::port(t.port));
    }
    if let Some(e) = &probe.exec
        && e.command.is_empty()
    {
        r.err(format!("{p}.exec.command"), "exec needs a command");
    }
}
