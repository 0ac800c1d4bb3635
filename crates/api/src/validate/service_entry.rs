//! ServiceEntry rules (Istio: `ValidateServiceEntry` plus the CRD's CEL
//! rules).

use std::collections::BTreeSet;

use super::checks::{self, Protocol};
use super::{Report, shared, workload};
use crate::networking::service_entry::{Resolution, ServiceEntry};

pub(crate) fn validate(namespace: &str, se: &ServiceEntry, r: &mut Report) {
    let resolution = se.resolution();
    if let Some(sel) = &se.workload_selector {
        shared::selector(
            r,
            "spec.workloadSelector.labels",
            &sel.labels,
            "ServiceEntry",
        );
        if !se.endpoints.is_empty() {
            r.err(
                "spec.workloadSelector",
                "only one of workloadSelector or endpoints may be set",
            );
        }
    }
    if se.hosts.is_empty() {
        r.err("spec.hosts", "a ServiceEntry needs at least one host");
    }
    for (i, h) in se.hosts.iter().enumerate() {
        let p = format!("spec.hosts[{i}]");
        if h == "*" {
            r.err(p, "host cannot be \"*\"");
            continue;
        }
        r.check(&p, checks::wildcard_domain(h));
        if resolution != Resolution::DynamicDns
            && let Err(e) = checks::no_partial_wildcard(h)
        {
            r.warn(p, e);
        }
    }
    let mut cidr = false;
    for (i, a) in se.addresses.iter().enumerate() {
        cidr |= a.contains('/');
        r.check(format!("spec.addresses[{i}]"), checks::ip_subnet(a));
    }
    if cidr && !matches!(resolution, Resolution::None | Resolution::Static) {
        r.err(
            "spec.addresses",
            "CIDR addresses need resolution NONE or STATIC",
        );
    }

    let mut names = BTreeSet::new();
    let mut numbers = BTreeSet::new();
    for (i, port) in se.ports.iter().enumerate() {
        let p = format!("spec.ports[{i}]");
        if !names.insert(port.name.as_str()) {
            r.err(
                format!("{p}.name"),
                format!("port name {:?} is already defined", port.name),
            );
        }
        if !numbers.insert(port.number) {
            r.err(
                format!("{p}.number"),
                format!("port {} is already defined", port.number),
            );
        }
        if let Some(t) = port.target_port
            && t != 0
        {
            r.check(format!("{p}.targetPort"), checks::port(t));
        }
        r.check(format!("{p}.name"), checks::port_name(&port.name));
        r.check(format!("{p}.protocol"), checks::protocol(&port.protocol));
        r.check(format!("{p}.number"), checks::port(port.number));
    }

    match resolution {
        Resolution::None => {
            if !se.endpoints.is_empty() {
                r.err("spec.endpoints", "resolution NONE cannot have endpoints");
            }
            if se.workload_selector.is_some() {
                r.warn(
                    "spec.workloadSelector",
                    "workloadSelector has no effect with resolution NONE",
                );
            }
        }
        Resolution::Static => {
            for (i, ep) in se.endpoints.iter().enumerate() {
                workload::entry(r, &format!("spec.endpoints[{i}]"), ep, Some(&names), false);
            }
        }
        Resolution::Dns | Resolution::DnsRoundRobin => {
            if se.endpoints.is_empty()
                && let Some((i, e)) = se
                    .hosts
                    .iter()
                    .enumerate()
                    .find_map(|(i, h)| checks::fqdn(h).err().map(|e| (i, e)))
            {
                r.err(
                    format!("spec.hosts[{i}]"),
                    format!("without endpoints, resolution {resolution} needs hosts that are DNS names (wildcards only as a prefix): {e}"),
                );
            }
            if resolution == Resolution::DnsRoundRobin && se.endpoints.len() > 1 {
                r.err(
                    "spec.endpoints",
                    "resolution DNS_ROUND_ROBIN allows at most one endpoint",
                );
            }
            for (i, ep) in se.endpoints.iter().enumerate() {
                let p = format!("spec.endpoints[{i}]");
                if !checks::is_ip(&ep.address) && checks::fqdn(&ep.address).is_err() {
                    r.err(
                        format!("{p}.address"),
                        format!("{:?} is neither an IP address nor a DNS name", ep.address),
                    );
                }
                shared::labels(r, &format!("{p}.labels"), &ep.labels);
                for (name, port) in &ep.ports {
                    let pp = format!("{p}.ports.{name}");
                    if !names.contains(name.as_str()) {
                        r.err(
                            &pp,
                            format!("port name {name:?} is not one of the ServiceEntry's ports"),
                        );
                    }
                    r.check(&pp, checks::port_name(name));
                    r.check(&pp, checks::port(*port));
                }
            }
            if !se.addresses.is_empty()
                && se.hosts.len() > 1
                && se
                    .ports
                    .iter()
                    .any(|p| Protocol::parse(&p.protocol).is_tcp())
            {
                r.warn(
                    "spec.hosts",
                    "several hosts with addresses and a TCP port cannot be told apart",
                );
            }
        }
        Resolution::DynamicDns => {
            for (i, h) in se.hosts.iter().enumerate() {
                if !h.starts_with('*') {
                    r.err(
                        format!("spec.hosts[{i}]"),
                        "resolution DYNAMIC_DNS needs wildcard hosts",
                    );
                }
            }
            if !se.addresses.is_empty() {
                r.err(
                    "spec.addresses",
                    "resolution DYNAMIC_DNS cannot have addresses",
                );
            }
            if !se.endpoints.is_empty() {
                r.err(
                    "spec.endpoints",
                    "resolution DYNAMIC_DNS cannot have endpoints",
                );
            }
            for (i, p) in se.ports.iter().enumerate() {
                let proto = Protocol::parse(&p.protocol);
                if !matches!(
                    proto,
                    Protocol::Http | Protocol::Tls | Protocol::Grpc | Protocol::Http2
                ) {
                    r.err(
                        format!("spec.ports[{i}].protocol"),
                        "resolution DYNAMIC_DNS supports HTTP, HTTP2, GRPC and TLS ports only",
                    );
                }
            }
        }
    }

    if resolution != Resolution::None
        && se.hosts.len() > 1
        && let Some(i) = se.ports.iter().position(|p| {
            let proto = Protocol::parse(&p.protocol);
            !proto.is_http() && !proto.is_tls()
        })
    {
        r.err(
            format!("spec.ports[{i}].protocol"),
            "several hosts need HTTP or TLS ports to be told apart (or resolution NONE)",
        );
    }
    if se
        .ports
        .iter()
        .any(|p| p.protocol.is_empty() || p.protocol.eq_ignore_ascii_case("TCP"))
        && se.addresses.is_empty()
    {
        r.warn(
            "spec.addresses",
            "TCP ports without addresses rely on automatic IP allocation",
        );
    }
    shared::export_to(r, "spec.exportTo", namespace, &se.export_to, true);
}
