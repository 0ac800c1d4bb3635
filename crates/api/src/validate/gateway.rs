//! Gateway rules (Istio: `ValidateGateway`, `validateServer`,
//! `validateTLSOptions`, `ValidateNamespaceSlashWildcardHostname`).

use std::collections::BTreeSet;

use super::Report;
use super::checks::{self, Protocol};
use crate::networking::gateway::{Gateway, Server, ServerTlsMode, ServerTlsSettings, TlsProtocol};

pub(crate) fn validate(name: &str, gw: &Gateway, r: &mut Report) {
    if !checks::is_dns1123_label(name) {
        r.err(
            "metadata.name",
            format!("gateway name {name:?} must be a DNS-1123 label (no dots)"),
        );
    }
    if gw.servers.is_empty() {
        r.err("spec.servers", "a gateway needs at least one server");
    }
    let mut port_names = BTreeSet::new();
    for (i, s) in gw.servers.iter().enumerate() {
        let p = format!("spec.servers[{i}]");
        server(r, &p, s);
        if let Some(port) = &s.port {
            if !port_names.insert(port.name.as_str()) {
                r.err(
                    format!("{p}.port.name"),
                    format!("port name {:?} is used by another server", port.name),
                );
            }
            if !Protocol::parse(&port.protocol).is_http()
                && s.tls
                    .as_ref()
                    .is_some_and(|t| t.https_redirect == Some(true))
            {
                r.warn(
                    format!("{p}.tls.httpsRedirect"),
                    "httpsRedirect only has an effect on HTTP servers",
                );
            }
        }
    }
}

/// A `host` or `namespace/host` entry of a Gateway server or Sidecar egress.
pub(crate) fn namespaced_host(r: &mut Report, path: &str, host: &str, gateway: bool) {
    let host_part = match host.split_once('/') {
        None if gateway => host,
        None => {
            r.err(path, "host must have the form namespace/dnsName");
            return;
        }
        Some((ns, h)) => {
            if ns.is_empty() || h.is_empty() {
                r.err(path, "namespace and host must both be non-empty");
            }
            let ns_ok = if gateway {
                ns == "*" || ns == "." || checks::is_dns1123_label(ns)
            } else {
                let ns = ns.strip_prefix('~').unwrap_or(ns);
                ns.is_empty() || ns == "*" || ns == "." || checks::is_dns1123_label(ns)
            };
            if !ns_ok {
                r.err(
                    path,
                    format!("{ns:?} is not a valid namespace (a name, \"*\" or \".\")"),
                );
            }
            h
        }
    };
    if host_part != "*" && !host_part.contains('.') {
        r.err(
            path,
            format!("{host_part:?} is a short name; use a fully qualified name"),
        );
    }
    if let Err(e) = checks::wildcard_domain(host_part)
        && !(gateway && checks::is_ip(host_part))
    {
        r.err(path, e);
    }
    r.check(path, checks::no_partial_wildcard(host_part));
}

fn server(r: &mut Report, path: &str, s: &Server) {
    if s.hosts.is_empty() {
        r.err(format!("{path}.hosts"), "a server needs at least one host");
    }
    for (i, h) in s.hosts.iter().enumerate() {
        namespaced_host(r, &format!("{path}.hosts[{i}]"), h, true);
    }
    let bind = s.bind.as_deref().unwrap_or("");
    let mut port_ok = false;
    match &s.port {
        None => r.err(format!("{path}.port"), "port is required"),
        Some(port) => {
            let before = r.errors.len();
            let pp = format!("{path}.port");
            if Protocol::parse(&port.protocol) == Protocol::Unsupported {
                r.err(
                    format!("{pp}.protocol"),
                    format!("protocol {:?} is not one of HTTP, HTTPS, HTTP2, GRPC, GRPC-WEB, TLS, TCP, MONGO, REDIS, MYSQL", port.protocol),
                );
            }
            if port.number > 0 || !bind.starts_with(checks::UNIX_PREFIX) {
                r.check(format!("{pp}.number"), checks::port(port.number));
            }
            if port.target_port.is_some_and(|t| t > 0) {
                r.err(
                    format!("{pp}.targetPort"),
                    "targetPort has no effect on gateways",
                );
            }
            if port.name.is_empty() {
                r.err(format!("{pp}.name"), "port name is required");
            }
            port_ok = r.errors.len() == before;
        }
    }
    if let Some(path_part) = bind.strip_prefix(checks::UNIX_PREFIX) {
        r.check(format!("{path}.bind"), checks::unix_address(path_part));
        if s.port.as_ref().is_some_and(|p| p.number != 0) {
            r.err(
                format!("{path}.port.number"),
                "port number must be 0 with a unix socket bind",
            );
        }
    } else if !bind.is_empty() {
        r.check(format!("{path}.bind"), checks::ip(bind));
    }
    if let Some(tls) = &s.tls {
        server_tls(r, &format!("{path}.tls"), tls);
    }
    if port_ok && let Some(port) = &s.port {
        let proto = Protocol::parse(&port.protocol);
        match &s.tls {
            None if proto.is_tls() => {
                r.err(
                    format!("{path}.tls"),
                    format!("{} servers need TLS settings", port.protocol.to_uppercase()),
                );
            }
            Some(tls) if !proto.is_tls() => {
                if proto.is_http() {
                    let redirect_only = tls.mode() == ServerTlsMode::Passthrough
                        && tls.ca_certificates.is_none()
                        && tls.private_key.is_none()
                        && tls.server_certificate.is_none();
                    if !redirect_only {
                        r.err(
                            format!("{path}.tls"),
                            "plain-text HTTP servers can only set tls.httpsRedirect",
                        );
                    }
                } else {
                    r.err(
                        format!("{path}.tls"),
                        "only HTTPS and TLS servers can have TLS settings",
                    );
                }
            }
            _ => {}
        }
    }
}

/// Downstream TLS settings (Gateway servers, Sidecar ingress).
pub(crate) fn server_tls(r: &mut Report, path: &str, tls: &ServerTlsSettings) {
    let set = |o: &Option<String>| o.as_ref().is_some_and(|s| !s.is_empty());
    if matches!(
        tls.min_protocol_version,
        Some(TlsProtocol::TlsV1_0 | TlsProtocol::TlsV1_1)
    ) && tls.cipher_suites.is_empty()
    {
        r.warn(
            format!("{path}.minProtocolVersion"),
            "TLS below 1.2 needs compatible cipherSuites set explicitly",
        );
    }
    if let (Some(min), Some(max)) = (tls.min_protocol_version, tls.max_protocol_version)
        && min != TlsProtocol::TlsAuto
        && max != TlsProtocol::TlsAuto
        && min > max
    {
        r.err(
            format!("{path}.minProtocolVersion"),
            "minProtocolVersion is above maxProtocolVersion",
        );
    }
    let mut seen = BTreeSet::new();
    for (i, c) in tls.cipher_suites.iter().enumerate() {
        if !seen.insert(c.as_str()) {
            r.warn(
                format!("{path}.cipherSuites[{i}]"),
                format!("cipher suite {c:?} is listed more than once"),
            );
        }
    }
    if tls.credential_names.len() > 2 {
        r.err(
            format!("{path}.credentialNames"),
            "at most 2 credentialNames may be given",
        );
    }
    if tls.tls_certificates.len() > 2 {
        r.err(
            format!("{path}.tlsCertificates"),
            "at most 2 tlsCertificates may be given",
        );
    }
    let mode = tls.mode();
    if mode == ServerTlsMode::IstioMutual {
        for (field, present) in [
            ("serverCertificate", set(&tls.server_certificate)),
            ("privateKey", set(&tls.private_key)),
            ("caCertificates", set(&tls.ca_certificates)),
            ("tlsCertificates", !tls.tls_certificates.is_empty()),
            ("credentialName", set(&tls.credential_name)),
            ("credentialNames", !tls.credential_names.is_empty()),
        ] {
            if present {
                r.err(
                    format!("{path}.{field}"),
                    format!("ISTIO_MUTUAL uses mesh certificates; {field} cannot be set"),
                );
            }
        }
        return;
    }
    if matches!(
        mode,
        ServerTlsMode::Passthrough | ServerTlsMode::AutoPassthrough
    ) && (set(&tls.ca_crl)
        || set(&tls.server_certificate)
        || set(&tls.private_key)
        || set(&tls.ca_certificates)
        || !tls.tls_certificates.is_empty()
        || set(&tls.credential_name)
        || !tls.credential_names.is_empty())
    {
        r.warn(
            path,
            "passthrough modes do not terminate TLS; the certificate settings are ignored",
        );
    }
    let sources = [
        set(&tls.server_certificate) && set(&tls.private_key),
        set(&tls.credential_name),
        !tls.credential_names.is_empty(),
        !tls.tls_certificates.is_empty(),
    ];
    if sources.iter().filter(|b| **b).count() > 1 {
        r.err(
            path,
            "certificates come from exactly one of credentialName, credentialNames, serverCertificate/privateKey or tlsCertificates",
        );
    }
    let terminating = matches!(
        mode,
        ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual
    );
    if terminating && (set(&tls.credential_name) || !tls.credential_names.is_empty()) {
        return; // certificates come from the credential store
    }
    if terminating {
        let label = if mode == ServerTlsMode::Simple {
            "SIMPLE"
        } else {
            "MUTUAL"
        };
        if mode != ServerTlsMode::Simple && !set(&tls.ca_certificates) {
            r.err(
                format!("{path}.caCertificates"),
                format!("{label} TLS needs a client CA bundle (caCertificates)"),
            );
        }
        if tls.tls_certificates.is_empty() {
            if !set(&tls.server_certificate) {
                r.err(
                    format!("{path}.serverCertificate"),
                    format!("{label} TLS needs a server certificate (or credentialName)"),
                );
            }
            if !set(&tls.private_key) {
                r.err(
                    format!("{path}.privateKey"),
                    format!("{label} TLS needs a private key (or credentialName)"),
                );
            }
        } else {
            for (i, c) in tls.tls_certificates.iter().enumerate() {
                if !set(&c.server_certificate) {
                    r.err(
                        format!("{path}.tlsCertificates[{i}].serverCertificate"),
                        format!("{label} TLS needs a server certificate"),
                    );
                }
                if !set(&c.private_key) {
                    r.err(
                        format!("{path}.tlsCertificates[{i}].privateKey"),
                        format!("{label} TLS needs a private key"),
                    );
                }
            }
        }
    }
    if set(&tls.ca_crl) {
        if set(&tls.credential_name) {
            r.err(
                format!("{path}.caCrl"),
                "with credentialName the CRL must come from the credential",
            );
        }
        if mode == ServerTlsMode::Simple {
            r.err(format!("{path}.caCrl"), "a CRL has no use with SIMPLE TLS");
        }
    }
}
