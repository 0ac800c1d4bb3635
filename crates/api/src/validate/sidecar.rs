//! Sidecar rules (Istio: `ValidateSidecar`,
//! `validateSidecarOutboundTrafficPolicy`).

use std::collections::{BTreeMap, BTreeSet};

use super::checks::{self, Protocol};
use super::{Report, destination_rule, gateway, shared};
use crate::networking::gateway::{Port, ServerTlsMode};
use crate::networking::sidecar::{CaptureMode, OutboundTrafficPolicyMode, Sidecar};

fn port_and_bind(
    r: &mut Report,
    path: &str,
    port: &Port,
    bind: &str,
    capture: Option<CaptureMode>,
    egress: bool,
) {
    if !port.name.is_empty() {
        r.check(format!("{path}.port.name"), checks::port_name(&port.name));
    }
    r.check(
        format!("{path}.port.protocol"),
        checks::protocol(&port.protocol),
    );
    if port.target_port.is_some_and(|t| t > 0) {
        r.err(
            format!("{path}.port.targetPort"),
            "targetPort has no effect on Sidecars",
        );
    }
    if egress && port.number == 0 {
        match bind.strip_prefix(checks::UNIX_PREFIX) {
            None => r.err(
                format!("{path}.bind"),
                "port 0 needs a unix:// socket bind address",
            ),
            Some(sock) => r.check(format!("{path}.bind"), checks::unix_address(sock)),
        }
        if !matches!(
            capture,
            None | Some(CaptureMode::Default | CaptureMode::None)
        ) {
            r.err(
                format!("{path}.captureMode"),
                "unix socket listeners need captureMode DEFAULT or NONE",
            );
        }
        return;
    }
    r.check(format!("{path}.port.number"), checks::port(port.number));
    if !bind.is_empty() {
        r.check(format!("{path}.bind"), checks::ip(bind));
    }
}

fn default_endpoint(r: &mut Report, path: &str, ep: &str) {
    if let Some(sock) = ep.strip_prefix(checks::UNIX_PREFIX) {
        r.check(path, checks::unix_address(sock));
        return;
    }
    let Some((host, port)) = ep.rsplit_once(':') else {
        r.err(path, format!("{ep:?} is not host:port"));
        return;
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if !matches!(host, "" | "127.0.0.1" | "0.0.0.0" | "::1" | "::") {
        r.err(path, "defaultEndpoint must be 127.0.0.1:<port>, 0.0.0.0:<port>, [::1]:<port>, [::]:<port>, unix://<path> or unset");
    }
    match port.parse::<u32>() {
        Ok(p) => r.check(path, checks::port(p)),
        Err(_) => r.err(
            path,
            format!("defaultEndpoint port {port:?} is not a number"),
        ),
    }
}

pub(crate) fn validate(namespace: &str, sc: &Sidecar, r: &mut Report) {
    if let Some(sel) = &sc.workload_selector {
        shared::selector(r, "spec.workloadSelector.labels", &sel.labels, "Sidecar");
    }
    if sc.egress.is_empty()
        && sc.ingress.is_empty()
        && sc.outbound_traffic_policy.is_none()
        && sc.inbound_connection_pool.is_none()
    {
        r.err("spec", "a Sidecar needs at least one of ingress, egress, outboundTrafficPolicy or inboundConnectionPool");
        return;
    }
    let mut ports = BTreeSet::new();
    for (i, ing) in sc.ingress.iter().enumerate() {
        let p = format!("spec.ingress[{i}]");
        let Some(port) = &ing.port else {
            r.err(format!("{p}.port"), "ingress listeners need a port");
            continue;
        };
        port_and_bind(
            r,
            &p,
            port,
            ing.bind.as_deref().unwrap_or(""),
            ing.capture_mode,
            false,
        );
        if !ports.insert(port.number) {
            r.err(
                format!("{p}.port.number"),
                format!("port {} is used by another ingress listener", port.number),
            );
        }
        if let Some(ep) = &ing.default_endpoint
            && !ep.is_empty()
        {
            default_endpoint(r, &format!("{p}.defaultEndpoint"), ep);
        }
        if let Some(tls) = &ing.tls {
            let tp = format!("{p}.tls");
            for (field, present) in [
                ("subjectAltNames", !tls.subject_alt_names.is_empty()),
                ("httpsRedirect", tls.https_redirect == Some(true)),
                ("credentialName", tls.credential_name.is_some()),
                ("credentialNames", !tls.credential_names.is_empty()),
                ("tlsCertificates", !tls.tls_certificates.is_empty()),
            ] {
                if present {
                    r.err(
                        format!("{tp}.{field}"),
                        format!("{field} is not supported on sidecar ingress"),
                    );
                }
            }
            if matches!(
                tls.mode(),
                ServerTlsMode::IstioMutual | ServerTlsMode::AutoPassthrough
            ) {
                r.err(
                    format!("{tp}.mode"),
                    "ISTIO_MUTUAL and AUTO_PASSTHROUGH cannot be used on sidecar ingress",
                );
            }
            if !Protocol::parse(&port.protocol).is_tls() {
                r.err(&tp, "only HTTPS and TLS ports can have TLS settings");
            }
            gateway::server_tls(r, &tp, tls);
        }
        if let Some(cp) = &ing.connection_pool {
            destination_rule::connection_pool(r, &format!("{p}.connectionPool"), cp);
            if cp.http.is_some() && !Protocol::parse(&port.protocol).is_http() {
                r.warn(
                    format!("{p}.connectionPool.http"),
                    "HTTP pool settings on a non-HTTP port; only tcp settings apply",
                );
            }
        }
    }
    if let Some(cp) = &sc.inbound_connection_pool {
        destination_rule::connection_pool(r, "spec.inboundConnectionPool", cp);
    }

    let mut ports = BTreeSet::new();
    let mut sockets = BTreeSet::new();
    let mut catch_all = false;
    for (i, eg) in sc.egress.iter().enumerate() {
        let p = format!("spec.egress[{i}]");
        match &eg.port {
            None => {
                if catch_all {
                    r.err(
                        format!("{p}.port"),
                        "only one egress listener may omit the port",
                    );
                    continue;
                }
                if i + 1 == sc.egress.len() {
                    catch_all = true;
                } else {
                    r.err(
                        format!("{p}.port"),
                        "the egress listener without a port must be the last one",
                    );
                }
            }
            Some(port) => {
                let bind = eg.bind.as_deref().unwrap_or("");
                port_and_bind(r, &p, port, bind, eg.capture_mode, true);
                if port.number == 0 {
                    if !sockets.insert(bind.to_string()) {
                        r.err(format!("{p}.bind"), "unix socket binds must be unique");
                    }
                } else if !ports.insert(port.number) {
                    r.err(
                        format!("{p}.port.number"),
                        format!("port {} is used by another egress listener", port.number),
                    );
                }
            }
        }
        if eg.hosts.is_empty() {
            r.err(
                format!("{p}.hosts"),
                "egress listeners need at least one host",
            );
            continue;
        }
        let mut by_ns: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (j, h) in eg.hosts.iter().enumerate() {
            let hp = format!("{p}.hosts[{j}]");
            if let Some((ns, host)) = h.split_once('/')
                && !ns.starts_with('~')
            {
                let ns = if ns == "." { namespace } else { ns };
                let set = by_ns.entry(ns.to_string()).or_default();
                if (host != "*" && (set.contains(host) || set.contains("*")))
                    || (host == "*" && !set.is_empty())
                {
                    r.warn(&hp, format!("egress host {h:?} is already covered"));
                }
                set.insert(host.to_string());
            }
            gateway::namespaced_host(r, &hp, h, false);
        }
        if by_ns.get("*").is_some_and(|s| s.contains("*")) && by_ns.len() != 1 {
            r.warn(
                format!("{p}.hosts"),
                "\"*/*\" already selects everything; other hosts are redundant",
            );
        }
    }

    if let Some(otp) = &sc.outbound_traffic_policy
        && let Some(proxy) = &otp.egress_proxy
    {
        let p = "spec.outboundTrafficPolicy.egressProxy";
        if otp.mode.unwrap_or_default() != OutboundTrafficPolicyMode::AllowAny {
            r.err(p, "egressProxy needs outboundTrafficPolicy mode ALLOW_ANY");
            return;
        }
        r.check(format!("{p}.host"), checks::fqdn(&proxy.host));
        if proxy.port.is_none() {
            r.err(format!("{p}.port"), "egressProxy needs a port");
            return;
        }
        shared::destination(r, p, proxy);
    }
}
