//! VirtualService rules (Istio: `ValidateVirtualService`, `virtualservice.go`).

use std::collections::BTreeMap;

use super::checks::{self, Check};
use super::{Report, shared};
use crate::networking::StringMatch;
use crate::networking::virtual_service::{
    CorsPolicy, HttpFaultInjection, HttpRoute, HttpRouteDestination, RouteDestination, TcpRoute,
    TlsRoute, VirtualService,
};

const CORS_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE", "*",
];

/// Does the VirtualService bind to anything other than the mesh?
fn binds_gateway(vs: &VirtualService) -> bool {
    vs.gateways
        .iter()
        .any(|g| g != crate::defaults::MESH_GATEWAY)
}

pub(crate) fn validate(namespace: &str, vs: &VirtualService, r: &mut Report) {
    let delegate = vs.hosts.is_empty();
    if delegate {
        if !vs.gateways.is_empty() {
            r.err(
                "spec.gateways",
                "a delegate VirtualService (no hosts) cannot name gateways",
            );
        }
        if !vs.tls.is_empty() {
            r.err(
                "spec.tls",
                "a delegate VirtualService (no hosts) cannot have tls routes",
            );
        }
        if !vs.tcp.is_empty() {
            r.err(
                "spec.tcp",
                "a delegate VirtualService (no hosts) cannot have tcp routes",
            );
        }
    }
    shared::gateway_names(r, "spec.gateways", &vs.gateways);
    let to_gateway = binds_gateway(vs);
    let to_mesh = vs.gateways.is_empty() || !to_gateway;

    if !to_gateway {
        for (i, http) in vs.http.iter().enumerate() {
            for (j, m) in http.matches.iter().enumerate() {
                for (field, map) in [
                    ("headers", &m.headers),
                    ("withoutHeaders", &m.without_headers),
                ] {
                    for key in map.keys().filter(|k| k.starts_with("@request.auth.claims")) {
                        r.err(
                            format!("spec.http[{i}].match[{j}].{field}.{key}"),
                            "routing on JWT claims is only supported on gateways",
                        );
                    }
                }
            }
        }
    }

    let mut hosts_valid = true;
    for (i, host) in vs.hosts.iter().enumerate() {
        let p = format!("spec.hosts[{i}]");
        match checks::wildcard_domain(host) {
            Err(e) if !(checks::is_ip(host) || (to_gateway && is_auto_sni(host, vs))) => {
                r.err(p, e);
                hosts_valid = false;
            }
            Ok(()) if to_mesh && host == "*" => {
                r.err(
                    p,
                    "host \"*\" is not allowed for a VirtualService bound to the mesh",
                );
                hosts_valid = false;
            }
            _ => {}
        }
    }
    if hosts_valid {
        for i in 0..vs.hosts.len() {
            for j in i + 1..vs.hosts.len() {
                if checks::hosts_overlap(&vs.hosts[i], &vs.hosts[j]) {
                    r.err(
                        format!("spec.hosts[{j}]"),
                        format!("hosts {:?} and {:?} overlap", vs.hosts[i], vs.hosts[j]),
                    );
                }
            }
        }
    }

    if vs.http.is_empty() && vs.tcp.is_empty() && vs.tls.is_empty() {
        r.err(
            "spec",
            "at least one of http, tcp or tls routes is required",
        );
    }
    for (i, http) in vs.http.iter().enumerate() {
        http_route(r, &format!("spec.http[{i}]"), http, delegate);
    }
    for (i, tls) in vs.tls.iter().enumerate() {
        tls_route(r, &format!("spec.tls[{i}]"), tls, vs);
    }
    for (i, tcp) in vs.tcp.iter().enumerate() {
        tcp_route(r, &format!("spec.tcp[{i}]"), tcp);
    }
    shared::export_to(r, "spec.exportTo", namespace, &vs.export_to, false);
}

/// `outbound_.<port>_._.<host>` SNI names used with AUTO_PASSTHROUGH.
fn is_auto_sni(host: &str, vs: &VirtualService) -> bool {
    if vs.tls.is_empty() || !host.starts_with("outbound_") {
        return false;
    }
    let parts: Vec<&str> = host.split('_').collect();
    parts.len() >= 4
        && parts[1]
            .trim_matches('.')
            .bytes()
            .any(|b| b.is_ascii_digit())
        && parts[3]
            .trim_matches('.')
            .bytes()
            .any(|b| b.is_ascii_alphabetic())
}

fn string_match(r: &mut Report, path: &str, m: &StringMatch, allow_empty_prefix: bool) {
    if m.set_count() > 1 {
        r.err(path, "only one of exact, prefix or regex may be set");
    }
    if let Some(p) = &m.prefix
        && p.is_empty()
        && !allow_empty_prefix
    {
        r.err(format!("{path}.prefix"), "prefix match must not be empty");
    }
    if let Some(re) = &m.regex {
        r.check(format!("{path}.regex"), checks::regex(re));
    }
}

fn http_route(r: &mut Report, path: &str, http: &HttpRoute, in_delegate: bool) {
    // What the rule does: exactly one of route / redirect / directResponse
    // (or delegate in a root VirtualService).
    if let Some(d) = &http.delegate {
        if in_delegate {
            r.err(
                format!("{path}.delegate"),
                "a delegate VirtualService cannot delegate again",
            );
        }
        if http.redirect.is_some() {
            r.err(
                format!("{path}.redirect"),
                "a delegating rule cannot also redirect",
            );
        }
        if !http.route.is_empty() {
            r.err(
                format!("{path}.route"),
                "a delegating rule cannot also have route destinations",
            );
        }
        if d.name.is_empty() {
            r.err(format!("{path}.delegate.name"), "delegate name is required");
        } else if !checks::is_dns1123_label(&d.name) && checks::fqdn(&d.name).is_err() {
            r.err(
                format!("{path}.delegate.name"),
                format!("{:?} is not a valid VirtualService name", d.name),
            );
        }
        if let Some(ns) = &d.namespace
            && !checks::is_dns1123_label(ns)
        {
            r.err(
                format!("{path}.delegate.namespace"),
                format!("{ns:?} is not a valid namespace name"),
            );
        }
        for (j, m) in http.matches.iter().enumerate() {
            let mp = format!("{path}.match[{j}]");
            for (field, sm) in [
                ("uri", &m.uri),
                ("scheme", &m.scheme),
                ("method", &m.method),
                ("authority", &m.authority),
            ] {
                if sm.as_ref().is_some_and(|s| s.regex.is_some()) {
                    r.err(
                        format!("{mp}.{field}"),
                        "regex matches are not supported on delegating rules",
                    );
                }
            }
            for (field, map) in [
                ("headers", &m.headers),
                ("queryParams", &m.query_params),
                ("withoutHeaders", &m.without_headers),
            ] {
                for (k, sm) in map {
                    if sm.regex.is_some() {
                        r.err(
                            format!("{mp}.{field}.{k}"),
                            "regex matches are not supported on delegating rules",
                        );
                    }
                }
            }
        }
    } else if http.redirect.is_some() {
        for (field, set) in [
            ("route", !http.route.is_empty()),
            ("fault", http.fault.is_some()),
            ("rewrite", http.rewrite.is_some()),
            ("directResponse", http.direct_response.is_some()),
        ] {
            if set {
                r.err(
                    format!("{path}.{field}"),
                    format!("a rule cannot have both redirect and {field}"),
                );
            }
        }
    } else if http.direct_response.is_some() {
        for (field, set) in [
            ("route", !http.route.is_empty()),
            ("fault", http.fault.is_some()),
            ("rewrite", http.rewrite.is_some()),
        ] {
            if set {
                r.err(
                    format!("{path}.{field}"),
                    format!("a rule cannot have both directResponse and {field}"),
                );
            }
        }
    } else if http.route.is_empty() {
        r.err(path, "one of route, redirect or directResponse is required");
    }
    if http.mirror.is_some() && !http.mirrors.is_empty() {
        r.err(
            format!("{path}.mirrors"),
            "mirror and mirrors cannot both be set",
        );
    }

    for (j, m) in http.matches.iter().enumerate() {
        let mp = format!("{path}.match[{j}]");
        for (k, sm) in &m.headers {
            r.check(format!("{mp}.headers.{k}"), checks::match_header_name(k));
            string_match(r, &format!("{mp}.headers.{k}"), sm, false);
        }
        for (k, sm) in &m.without_headers {
            r.check(
                format!("{mp}.withoutHeaders.{k}"),
                checks::match_header_name(k),
            );
            // `regex: "*"` means "present", not an RE2 pattern.
            if sm.regex.as_deref() != Some("*") {
                string_match(r, &format!("{mp}.withoutHeaders.{k}"), sm, false);
            }
        }
        if let Some(uri) = &m.uri {
            string_match(r, &format!("{mp}.uri"), uri, true);
        }
        for (field, sm) in [
            ("scheme", &m.scheme),
            ("method", &m.method),
            ("authority", &m.authority),
        ] {
            if let Some(sm) = sm {
                string_match(r, &format!("{mp}.{field}"), sm, false);
            }
        }
        for (k, sm) in &m.query_params {
            string_match(r, &format!("{mp}.queryParams.{k}"), sm, false);
        }
        if let Some(port) = m.port
            && port != 0
        {
            r.check(format!("{mp}.port"), checks::port(port));
        }
        shared::labels(r, &format!("{mp}.sourceLabels"), &m.source_labels);
        shared::gateway_names(r, &format!("{mp}.gateways"), &m.gateways);
        if let Some(ns) = &m.source_namespace
            && !ns.is_empty()
            && !checks::is_dns1123_label(ns)
        {
            r.err(
                format!("{mp}.sourceNamespace"),
                format!("{ns:?} is not a valid namespace name"),
            );
        }
    }

    if let Some(h) = &http.headers {
        shared::headers(r, &format!("{path}.headers"), h);
    }
    if let Some(cors) = &http.cors_policy {
        cors_policy(r, &format!("{path}.corsPolicy"), cors);
    }
    if let Some(fault) = &http.fault {
        fault_injection(r, &format!("{path}.fault"), fault);
    }
    if let Some(p) = http.mirror_percent {
        if p > 100 {
            r.err(
                format!("{path}.mirrorPercent"),
                format!("mirrorPercent {p} is above 100"),
            );
        }
        r.warn(
            format!("{path}.mirrorPercent"),
            "mirrorPercent is deprecated; use mirrorPercentage",
        );
    }
    if let Some(p) = &http.mirror_percentage
        && !(0.0..=100.0).contains(&p.value)
    {
        r.err(
            format!("{path}.mirrorPercentage.value"),
            format!("mirrorPercentage {} is outside 0..100", p.value),
        );
    }
    if let Some(m) = &http.mirror {
        shared::destination(r, &format!("{path}.mirror"), m);
    }
    for (i, m) in http.mirrors.iter().enumerate() {
        let mp = format!("{path}.mirrors[{i}]");
        match &m.destination {
            None => r.err(
                format!("{mp}.destination"),
                "mirror destination is required",
            ),
            Some(d) => shared::destination(r, &format!("{mp}.destination"), d),
        }
        if let Some(p) = &m.percentage
            && !(0.0..=100.0).contains(&p.value)
        {
            r.err(
                format!("{mp}.percentage.value"),
                format!("mirror percentage {} is outside 0..100", p.value),
            );
        }
    }
    redirect(r, path, http);
    if let Some(dr) = &http.direct_response {
        let dp = format!("{path}.directResponse");
        let size = dr.body.as_ref().map_or(0, |b| {
            b.string.as_ref().map_or(0, String::len)
                + b.bytes.as_ref().map_or(0, |s| s.len() * 3 / 4)
        });
        if let Some(b) = &dr.body
            && b.string.is_some()
            && b.bytes.is_some()
        {
            r.err(
                format!("{dp}.body"),
                "only one of string or bytes may be set",
            );
        }
        if size > 1024 * 1024 {
            r.err(
                format!("{dp}.body"),
                "direct response bodies must be under 1MB",
            );
        } else if size > 100 * 1024 {
            r.warn(
                format!("{dp}.body"),
                "large direct response bodies slow down configuration pushes",
            );
        }
        r.check(format!("{dp}.status"), http_status(dr.status as i64));
    }
    if let Some(retry) = &http.retries {
        shared::http_retry(r, &format!("{path}.retries"), retry);
    }
    if let Some(rw) = &http.rewrite {
        let rp = format!("{path}.rewrite");
        if rw.uri.is_some() && rw.uri_regex_rewrite.is_some() {
            r.err(&rp, "only one of uri or uriRegexRewrite may be set");
        }
        if rw.uri.is_none() && rw.uri_regex_rewrite.is_none() && rw.authority.is_none() {
            r.err(
                &rp,
                "rewrite needs at least one of uri, uriRegexRewrite or authority",
            );
        }
        if let Some(rr) = &rw.uri_regex_rewrite {
            if rr.pattern.is_empty() || rr.rewrite.is_empty() {
                r.err(
                    format!("{rp}.uriRegexRewrite"),
                    "uriRegexRewrite needs both match and rewrite",
                );
            } else {
                r.check(
                    format!("{rp}.uriRegexRewrite.match"),
                    checks::regex(&rr.pattern),
                );
            }
        }
    }
    authority_once(r, path, http);
    http_destinations(r, &format!("{path}.route"), &http.route);
    if let Some(t) = http.timeout {
        r.check(format!("{path}.timeout"), checks::duration(t));
    }
    if http.websocket_upgrade.is_some() {
        r.warn(
            format!("{path}.websocketUpgrade"),
            "websocketUpgrade is no longer part of Istio's API and is ignored",
        );
    }
}

fn http_status(status: i64) -> Check {
    if (200..=599).contains(&status) {
        Ok(())
    } else {
        Err(format!("HTTP status {status} is outside 200..599"))
    }
}

/// The authority may be rewritten in one place only.
fn authority_once(r: &mut Report, path: &str, http: &HttpRoute) {
    let mut sources: Vec<String> = Vec::new();
    if http
        .rewrite
        .as_ref()
        .and_then(|rw| rw.authority.as_ref())
        .is_some()
    {
        sources.push("rewrite.authority".into());
    }
    if let Some(req) = http.headers.as_ref().and_then(|h| h.request.as_ref()) {
        for (op, map) in [("set", &req.set), ("add", &req.add)] {
            for k in map.keys() {
                if k.eq_ignore_ascii_case(":authority") || k.eq_ignore_ascii_case("host") {
                    sources.push(format!("headers.request.{op}.{k}"));
                }
            }
        }
    }
    if sources.len() > 1 {
        r.err(
            format!("{path}.{}", sources[1]),
            format!("the authority is already rewritten by {}", sources[0]),
        );
    }
}

fn redirect(r: &mut Report, path: &str, http: &HttpRoute) {
    let Some(rd) = &http.redirect else { return };
    let p = format!("{path}.redirect");
    if rd.uri.is_some() && rd.prefix_rewrite.is_some() {
        r.err(&p, "only one of uri or prefixRewrite may be set");
        return;
    }
    if rd.prefix_rewrite.is_some()
        && http
            .matches
            .iter()
            .any(|m| m.uri.as_ref().is_some_and(|u| u.prefix.is_none()))
    {
        r.err(
            format!("{p}.prefixRewrite"),
            "prefixRewrite needs every uri match to be a prefix match",
        );
        return;
    }
    if rd.uri.is_none()
        && rd.prefix_rewrite.is_none()
        && rd.authority.is_none()
        && rd.port.is_none()
        && rd.derive_port.is_none()
        && rd.scheme.is_none()
    {
        r.err(
            &p,
            "redirect needs at least one of uri, prefixRewrite, authority, scheme or port",
        );
        return;
    }
    if rd.port.is_some() && rd.derive_port.is_some() {
        r.err(&p, "only one of port or derivePort may be set");
    }
    if let Some(code) = rd.redirect_code
        && code != 0
        && !(300..=399).contains(&code)
    {
        r.err(
            format!("{p}.redirectCode"),
            format!("redirect code {code} is not a 3xx status"),
        );
    }
    if let Some(s) = &rd.scheme
        && s != "http"
        && s != "https"
    {
        r.err(
            format!("{p}.scheme"),
            format!("redirect scheme {s:?} must be \"http\" or \"https\""),
        );
    }
    if let Some(port) = rd.port
        && port > 0
    {
        r.check(format!("{p}.port"), checks::port(port));
    }
}

fn cors_policy(r: &mut Report, path: &str, cors: &CorsPolicy) {
    for (i, o) in cors.allow_origins.iter().enumerate() {
        let p = format!("{path}.allowOrigins[{i}]");
        let value = o
            .exact
            .as_deref()
            .or(o.prefix.as_deref())
            .or(o.regex.as_deref())
            .unwrap_or("");
        if value.is_empty() {
            r.err(
                &p,
                "an allowed origin needs a non-empty exact, prefix or regex",
            );
            continue;
        }
        string_match(r, &p, o, false);
    }
    for (i, m) in cors.allow_methods.iter().enumerate() {
        if !CORS_METHODS.contains(&m.as_str()) {
            r.err(
                format!("{path}.allowMethods[{i}]"),
                format!("{m:?} is not an HTTP method CORS supports"),
            );
        }
    }
    for (field, list) in [
        ("allowHeaders", &cors.allow_headers),
        ("exposeHeaders", &cors.expose_headers),
    ] {
        for (i, h) in list.iter().enumerate() {
            if h != "*" {
                r.check(format!("{path}.{field}[{i}]"), checks::header_name(h));
            }
        }
    }
    if let Some(age) = cors.max_age {
        r.check(format!("{path}.maxAge"), checks::duration(age));
        if age.get().subsec_nanos() != 0 {
            r.err(
                format!("{path}.maxAge"),
                "maxAge is only precise to whole seconds",
            );
        }
    }
}

fn fault_injection(r: &mut Report, path: &str, fault: &HttpFaultInjection) {
    if fault.abort.is_none() && fault.delay.is_none() {
        r.err(path, "fault injection needs an abort, a delay, or both");
    }
    if let Some(a) = &fault.abort {
        let p = format!("{path}.abort");
        if let Some(pct) = &a.percentage {
            r.check(format!("{p}.percentage.value"), checks::percentage(pct));
        }
        let kinds = [
            a.http_status.is_some(),
            a.grpc_status.is_some(),
            a.http2_error.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() > 1 {
            r.err(
                &p,
                "only one of httpStatus, grpcStatus or http2Error may be set",
            );
        }
        if let Some(s) = a.http_status {
            r.check(format!("{p}.httpStatus"), http_status(s.into()));
        } else if let Some(g) = &a.grpc_status {
            if !crate::defaults::GRPC_STATUS_NAMES.contains(&g.as_str()) {
                r.err(
                    format!("{p}.grpcStatus"),
                    format!("{g:?} is not a gRPC status name (such as \"UNAVAILABLE\")"),
                );
            }
        } else if a.http2_error.is_some() {
            r.err(
                format!("{p}.http2Error"),
                "HTTP/2 error aborts are not supported",
            );
        } else {
            r.warn(&p, "abort has no httpStatus or grpcStatus");
        }
    }
    if let Some(d) = &fault.delay {
        let p = format!("{path}.delay");
        if let Some(pct) = &d.percentage {
            r.check(format!("{p}.percentage.value"), checks::percentage(pct));
        }
        if let Some(pct) = d.percent {
            r.check(format!("{p}.percent"), checks::int_percent(pct));
        }
        if d.fixed_delay.is_some() && d.exponential_delay.is_some() {
            r.err(&p, "only one of fixedDelay or exponentialDelay may be set");
        }
        if let Some(fd) = d.fixed_delay {
            r.check(format!("{p}.fixedDelay"), checks::duration(fd));
        } else if let Some(ed) = d.exponential_delay {
            r.check(format!("{p}.exponentialDelay"), checks::duration(ed));
            r.err(
                format!("{p}.exponentialDelay"),
                "exponentialDelay is not supported",
            );
        }
    }
}

fn header_ops_of(d: &HttpRouteDestination) -> Option<&crate::networking::Headers> {
    d.headers.as_ref()
}

fn http_destinations(r: &mut Report, path: &str, routes: &[HttpRouteDestination]) {
    let mut total: i64 = 0;
    for (i, rd) in routes.iter().enumerate() {
        let p = format!("{path}[{i}]");
        match &rd.destination {
            None => r.err(format!("{p}.destination"), "destination is required"),
            Some(d) => shared::destination(r, &format!("{p}.destination"), d),
        }
        if let Some(h) = header_ops_of(rd) {
            shared::headers(r, &format!("{p}.headers"), h);
        }
        let w = rd.weight.unwrap_or(0);
        if w < 0 {
            r.err(
                format!("{p}.weight"),
                format!("weight {w} must not be negative"),
            );
        }
        total += i64::from(w);
    }
    if routes.len() > 1 && total == 0 {
        r.err(
            path,
            "with several destinations, the weights must not all be 0",
        );
    }
}

fn route_destinations(r: &mut Report, path: &str, routes: &[RouteDestination]) {
    let mut total: i64 = 0;
    for (i, rd) in routes.iter().enumerate() {
        let p = format!("{path}[{i}]");
        match &rd.destination {
            None => r.err(format!("{p}.destination"), "destination is required"),
            Some(d) => shared::destination(r, &format!("{p}.destination"), d),
        }
        let w = rd.weight.unwrap_or(0);
        if w < 0 {
            r.err(
                format!("{p}.weight"),
                format!("weight {w} must not be negative"),
            );
        }
        total += i64::from(w);
    }
    if routes.len() > 1 && total == 0 {
        r.err(
            path,
            "with several destinations, the weights must not all be 0",
        );
    }
}

fn l4_common(
    r: &mut Report,
    path: &str,
    subnets: &[String],
    port: Option<u32>,
    labels: &BTreeMap<String, String>,
    gateways: &[String],
) {
    for (i, s) in subnets.iter().enumerate() {
        r.check(
            format!("{path}.destinationSubnets[{i}]"),
            checks::ip_subnet(s),
        );
    }
    if let Some(p) = port
        && p != 0
    {
        r.check(format!("{path}.port"), checks::port(p));
    }
    shared::labels(r, &format!("{path}.sourceLabels"), labels);
    shared::gateway_names(r, &format!("{path}.gateways"), gateways);
}

fn tls_route(r: &mut Report, path: &str, tls: &TlsRoute, vs: &VirtualService) {
    if tls.matches.is_empty() {
        r.err(
            format!("{path}.match"),
            "a TLS route needs at least one match",
        );
    }
    for (j, m) in tls.matches.iter().enumerate() {
        let mp = format!("{path}.match[{j}]");
        if m.sni_hosts.is_empty() {
            r.err(
                format!("{mp}.sniHosts"),
                "a TLS match needs at least one SNI host",
            );
        }
        for (k, sni) in m.sni_hosts.iter().enumerate() {
            let sp = format!("{mp}.sniHosts[{k}]");
            let valid = if binds_gateway(vs) && is_auto_sni(sni, vs) {
                Ok(())
            } else {
                checks::wildcard_domain(sni)
            };
            if let Err(e) = valid {
                if checks::is_ip(sni) {
                    r.warn(
                        sp,
                        format!("SNI {sni:?} is an IP address, which most clients never send"),
                    );
                } else {
                    r.err(sp, e);
                }
                continue;
            }
            if !vs.hosts.iter().any(|h| checks::host_subset_of(sni, h)) {
                r.err(
                    sp,
                    format!(
                        "SNI host {sni:?} is not covered by any of the VirtualService hosts [{}]",
                        vs.hosts.join(", ")
                    ),
                );
            }
        }
        l4_common(
            r,
            &mp,
            &m.destination_subnets,
            m.port,
            &m.source_labels,
            &m.gateways,
        );
    }
    if tls.route.is_empty() {
        r.err(
            format!("{path}.route"),
            "a TLS route needs at least one destination",
        );
    }
    route_destinations(r, &format!("{path}.route"), &tls.route);
}

fn tcp_route(r: &mut Report, path: &str, tcp: &TcpRoute) {
    for (j, m) in tcp.matches.iter().enumerate() {
        let mp = format!("{path}.match[{j}]");
        l4_common(
            r,
            &mp,
            &m.destination_subnets,
            m.port,
            &m.source_labels,
            &m.gateways,
        );
        if let Some(s) = &m.source_subnet {
            r.check(format!("{mp}.sourceSubnet"), checks::ip_subnet(s));
        }
    }
    if tcp.route.is_empty() {
        r.err(
            format!("{path}.route"),
            "a TCP route needs at least one destination",
        );
    }
    route_destinations(r, &format!("{path}.route"), &tcp.route);
}
