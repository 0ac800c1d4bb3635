//! DestinationRule rules (Istio: `ValidateDestinationRule`,
//! `validateTrafficPolicy` and friends, `agent.ValidateTLS`).

use std::collections::BTreeSet;

use super::{Report, checks, shared};
use crate::networking::destination_rule::{
    ClientTlsMode, ClientTlsSettings, ConnectionPoolSettings, DestinationRule, H2UpgradePolicy,
    LoadBalancerSettings, LocalityLbSetting, OutlierDetection, TrafficPolicy,
};

pub(crate) fn validate(namespace: &str, dr: &DestinationRule, r: &mut Report) {
    if dr.host.is_empty() {
        r.err("spec.host", "host is required");
    } else {
        r.check("spec.host", checks::wildcard_domain(&dr.host));
    }
    if let Some(tp) = &dr.traffic_policy {
        traffic_policy(r, "spec.trafficPolicy", namespace, tp);
    }
    let mut names = BTreeSet::new();
    for (i, s) in dr.subsets.iter().enumerate() {
        let p = format!("spec.subsets[{i}]");
        if !names.insert(s.name.as_str()) {
            r.err(
                format!("{p}.name"),
                format!("subset name {:?} is used more than once", s.name),
            );
        }
        r.check(format!("{p}.name"), shared::subset_name(&s.name));
        shared::labels(r, &format!("{p}.labels"), &s.labels);
        if let Some(tp) = &s.traffic_policy {
            traffic_policy(r, &format!("{p}.trafficPolicy"), namespace, tp);
        }
    }
    shared::export_to(r, "spec.exportTo", namespace, &dr.export_to, false);
    if let Some(sel) = &dr.workload_selector {
        shared::selector(
            r,
            "spec.workloadSelector.matchLabels",
            &sel.match_labels,
            "DestinationRule",
        );
        let beyond = dr.export_to.iter().any(|e| e != "." && e != namespace);
        if beyond {
            r.err("spec.exportTo", "a DestinationRule with a workloadSelector can only be exported to its own namespace");
        } else if dr.export_to.len() > 1 {
            r.err(
                "spec.exportTo",
                "a DestinationRule with a workloadSelector can have only one exportTo entry",
            );
        }
    }
}

fn traffic_policy(r: &mut Report, path: &str, namespace: &str, tp: &TrafficPolicy) {
    if tp.is_empty() {
        r.err(path, "a traffic policy needs at least one field");
        return;
    }
    if tp.tunnel.is_some() && tp.proxy_protocol.is_some() {
        r.err(path, "tunnel and proxyProtocol cannot both be set");
        return;
    }
    if let Some(o) = &tp.outlier_detection {
        outlier_detection(r, &format!("{path}.outlierDetection"), o);
    }
    if let Some(cp) = &tp.connection_pool {
        connection_pool(r, &format!("{path}.connectionPool"), cp);
    }
    if let Some(lb) = &tp.load_balancer {
        load_balancer(
            r,
            &format!("{path}.loadBalancer"),
            lb,
            tp.outlier_detection.is_some(),
        );
    }
    if let Some(tls) = &tp.tls {
        client_tls(r, &format!("{path}.tls"), namespace, tls);
    }
    for (i, pl) in tp.port_level_settings.iter().enumerate() {
        let p = format!("{path}.portLevelSettings[{i}]");
        match &pl.port {
            None => r.err(format!("{p}.port"), "a port-level policy needs a port"),
            Some(port) => r.check(format!("{p}.port.number"), checks::port(port.number)),
        }
        if pl.outlier_detection.is_none()
            && pl.connection_pool.is_none()
            && pl.load_balancer.is_none()
            && pl.tls.is_none()
        {
            r.err(&p, "a port-level policy needs at least one of loadBalancer, connectionPool, outlierDetection or tls");
            continue;
        }
        if let Some(o) = &pl.outlier_detection {
            outlier_detection(r, &format!("{p}.outlierDetection"), o);
        }
        if let Some(cp) = &pl.connection_pool {
            connection_pool(r, &format!("{p}.connectionPool"), cp);
        }
        if let Some(lb) = &pl.load_balancer {
            load_balancer(
                r,
                &format!("{p}.loadBalancer"),
                lb,
                pl.outlier_detection.is_some(),
            );
        }
        if let Some(tls) = &pl.tls {
            client_tls(r, &format!("{p}.tls"), namespace, tls);
        }
    }
    if let Some(t) = &tp.tunnel {
        let p = format!("{path}.tunnel");
        if let Some(proto) = &t.protocol
            && proto != "CONNECT"
            && proto != "POST"
        {
            r.err(
                format!("{p}.protocol"),
                "tunnel protocol must be \"CONNECT\" or \"POST\"",
            );
        }
        if checks::fqdn(&t.target_host).is_err() && !checks::is_ip(&t.target_host) {
            r.err(
                format!("{p}.targetHost"),
                format!(
                    "{:?} is neither a DNS name nor an IP address",
                    t.target_host
                ),
            );
        }
        r.check(format!("{p}.targetPort"), checks::port(t.target_port));
    }
    if let Some(rb) = &tp.retry_budget
        && let Some(pct) = rb.percent
        && !(0.0..=100.0).contains(&pct)
    {
        r.err(
            format!("{path}.retryBudget.percent"),
            format!("percent {pct} is outside 0..100"),
        );
    }
}

fn dur(r: &mut Report, path: String, d: Option<crate::IstioDuration>) {
    if let Some(d) = d {
        r.check(path, checks::duration(d));
    }
}

fn outlier_detection(r: &mut Report, path: &str, o: &OutlierDetection) {
    dur(r, format!("{path}.baseEjectionTime"), o.base_ejection_time);
    dur(r, format!("{path}.interval"), o.interval);
    if o.consecutive_errors.is_some_and(|c| c != 0) {
        r.warn(
            format!("{path}.consecutiveErrors"),
            "consecutiveErrors is deprecated; use consecutiveGatewayErrors or consecutive5xxErrors",
        );
    }
    if !o.split_external_local_origin_errors.unwrap_or(false)
        && o.consecutive_local_origin_failures.unwrap_or(0) > 0
    {
        r.err(
            format!("{path}.consecutiveLocalOriginFailures"),
            "consecutiveLocalOriginFailures needs splitExternalLocalOriginErrors: true",
        );
    }
    if let Some(p) = o.max_ejection_percent {
        r.check(format!("{path}.maxEjectionPercent"), checks::int_percent(p));
    }
    if let Some(p) = o.min_health_percent {
        r.check(format!("{path}.minHealthPercent"), checks::int_percent(p));
    }
    for (i, c) in o.outlier_detection_http_error_codes.iter().enumerate() {
        if !(100..=599).contains(c) {
            r.err(
                format!("{path}.outlierDetectionHttpErrorCodes[{i}]"),
                format!("{c} is not an HTTP status code"),
            );
        }
    }
}

/// Connection pool limits (shared with Sidecar ingress).
pub(crate) fn connection_pool(r: &mut Report, path: &str, cp: &ConnectionPoolSettings) {
    if cp.http.is_none() && cp.tcp.is_none() {
        r.err(path, "a connection pool needs tcp or http settings");
        return;
    }
    if let Some(h) = &cp.http {
        let p = format!("{path}.http");
        for (field, v) in [
            ("http1MaxPendingRequests", h.http1_max_pending_requests),
            ("http2MaxRequests", h.http2_max_requests),
            ("maxRequestsPerConnection", h.max_requests_per_connection),
            ("maxRetries", h.max_retries),
            ("maxConcurrentStreams", h.max_concurrent_streams),
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
        dur(r, format!("{p}.idleTimeout"), h.idle_timeout);
        if h.h2_upgrade_policy == Some(H2UpgradePolicy::Upgrade)
            && h.use_client_protocol == Some(true)
        {
            r.err(
                format!("{p}.useClientProtocol"),
                "useClientProtocol cannot be true when h2UpgradePolicy is UPGRADE",
            );
        }
        if let Some(ka) = &h.http2_keep_alive {
            match ka.interval {
                None => r.err(
                    format!("{p}.http2KeepAlive.interval"),
                    "interval is required",
                ),
                Some(d) => r.check(format!("{p}.http2KeepAlive.interval"), checks::duration(d)),
            }
            match ka.timeout {
                None => r.err(format!("{p}.http2KeepAlive.timeout"), "timeout is required"),
                Some(d) => r.check(format!("{p}.http2KeepAlive.timeout"), checks::duration(d)),
            }
        }
    }
    if let Some(t) = &cp.tcp {
        let p = format!("{path}.tcp");
        if let Some(m) = t.max_connections
            && m < 0
        {
            r.err(
                format!("{p}.maxConnections"),
                format!("maxConnections {m} must not be negative"),
            );
        }
        dur(r, format!("{p}.connectTimeout"), t.connect_timeout);
        dur(
            r,
            format!("{p}.maxConnectionDuration"),
            t.max_connection_duration,
        );
        // 0s disables the idle timeout.
        dur(
            r,
            format!("{p}.idleTimeout"),
            t.idle_timeout.filter(|d| d.get().as_millis() != 0),
        );
        if let Some(ka) = &t.tcp_keepalive {
            dur(r, format!("{p}.tcpKeepalive.time"), ka.time);
            dur(r, format!("{p}.tcpKeepalive.interval"), ka.interval);
        }
    }
}

fn is_prime(x: u64) -> bool {
    if x != 0 && x < 4 {
        return true;
    }
    if x.is_multiple_of(2) {
        return false;
    }
    let mut f = 3u64;
    while f.saturating_mul(f) <= x {
        if x.is_multiple_of(f) {
            return false;
        }
        f += 2;
    }
    true
}

fn load_balancer(r: &mut Report, path: &str, lb: &LoadBalancerSettings, has_outlier: bool) {
    let policies = [
        lb.simple.is_some(),
        lb.consistent_hash.is_some(),
        lb.backend_utilization.is_some(),
    ];
    if policies.iter().filter(|b| **b).count() > 1 {
        r.err(
            path,
            "only one of simple, consistentHash or backendUtilization may be set",
        );
    }
    if let Some(ch) = &lb.consistent_hash {
        let p = format!("{path}.consistentHash");
        let keys = [
            ch.http_header_name.is_some(),
            ch.http_cookie.is_some(),
            ch.use_source_ip.is_some(),
            ch.http_query_parameter_name.is_some(),
        ];
        if keys.iter().filter(|b| **b).count() > 1 {
            r.err(&p, "only one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName may be set");
        }
        if ch.ring_hash.is_some() && ch.maglev.is_some() {
            r.err(&p, "only one of ringHash or maglev may be set");
        }
        if let Some(c) = &ch.http_cookie {
            if c.name.is_empty() {
                r.err(format!("{p}.httpCookie.name"), "cookie name is required");
            }
            dur(
                r,
                format!("{p}.httpCookie.ttl"),
                c.ttl.filter(|d| !d.get().is_zero()),
            );
            let mut seen = BTreeSet::new();
            for (i, a) in c.attributes.iter().enumerate() {
                let ap = format!("{p}.httpCookie.attributes[{i}].name");
                if a.name.is_empty() {
                    r.err(ap, "cookie attribute name must not be empty");
                } else if !seen.insert(a.name.as_str()) {
                    r.err(
                        ap,
                        format!("cookie attribute {:?} is listed more than once", a.name),
                    );
                }
            }
        }
        if ch.minimum_ring_size.is_some_and(|m| m != 0) {
            r.warn(
                format!("{p}.minimumRingSize"),
                "minimumRingSize is deprecated; use ringHash.minimumRingSize",
            );
            if ch.ring_hash.is_some() || ch.maglev.is_some() {
                r.err(
                    format!("{p}.minimumRingSize"),
                    "minimumRingSize cannot be combined with ringHash or maglev",
                );
            }
        }
        if let Some(m) = &ch.maglev {
            let size = m.table_size.unwrap_or(0);
            let tp = format!("{p}.maglev.tableSize");
            if size == 0 {
                r.err(tp, "maglev needs a tableSize");
            } else if size >= 5_000_011 {
                r.err(tp, "maglev tableSize must be below 5000011");
            } else if !is_prime(size) {
                r.err(
                    tp,
                    format!("maglev tableSize {size} must be a prime number"),
                );
            }
        }
    }
    if lb.locality_lb_setting.is_some() && lb.zone_aware_lb_setting.is_some() {
        r.err(
            path,
            "only one of localityLbSetting or zoneAwareLbSetting may be set",
        );
    }
    if let Some(l) = &lb.locality_lb_setting {
        locality_lb(r, &format!("{path}.localityLbSetting"), l, has_outlier);
    }
    if let Some(z) = &lb.zone_aware_lb_setting {
        for (i, f) in z.failover.iter().enumerate() {
            if f.from == f.to {
                r.err(
                    format!("{path}.zoneAwareLbSetting.failover[{i}]"),
                    "failover from and to must be different regions",
                );
            }
        }
    }
    if let Some(w) = lb.warmup_duration_secs {
        r.check(format!("{path}.warmupDurationSecs"), checks::duration(w));
    }
    if let Some(w) = &lb.warmup {
        let p = format!("{path}.warmup");
        match w.duration {
            None => r.err(format!("{p}.duration"), "duration is required"),
            Some(d) => r.check(format!("{p}.duration"), checks::duration(d)),
        }
        if let Some(m) = w.minimum_percent
            && !(0.0..=100.0).contains(&m)
        {
            r.err(
                format!("{p}.minimumPercent"),
                format!("minimumPercent {m} is outside 0..100"),
            );
        }
        if let Some(a) = w.aggression
            && a <= 0.0
        {
            r.err(
                format!("{p}.aggression"),
                "aggression must be greater than 0",
            );
        }
    }
}

fn locality(r: &mut Report, path: String, l: &str) {
    let stars = l.matches('*').count();
    if stars > 1 || (stars == 1 && !l.ends_with('*')) {
        r.err(
            &path,
            format!("locality {l:?} may only have one '*', at the end"),
        );
    }
    if l.splitn(3, '/').any(str::is_empty) {
        r.err(
            path,
            format!("locality {l:?} has an empty region, zone or subzone"),
        );
    }
}

fn locality_lb(r: &mut Report, path: &str, l: &LocalityLbSetting, has_outlier: bool) {
    if !l.distribute.is_empty() && !l.failover.is_empty() {
        r.err(path, "distribute and failover cannot both be set");
        return;
    }
    if !l.failover.is_empty() {
        for (i, label) in l.failover_priority.iter().enumerate() {
            if matches!(
                label.as_str(),
                "topology.kubernetes.io/region"
                    | "topology.kubernetes.io/zone"
                    | "topology.istio.io/subzone"
            ) {
                r.err(
                    format!("{path}.failoverPriority[{i}]"),
                    format!("{label:?} cannot be used together with failover"),
                );
            }
        }
    }
    for (i, d) in l.distribute.iter().enumerate() {
        let p = format!("{path}.distribute[{i}]");
        locality(r, format!("{p}.from"), &d.from);
        let mut total: u64 = 0;
        for (loc, w) in &d.to {
            if *w == 0 || *w > 100 {
                r.err(
                    format!("{p}.to.{loc}"),
                    format!("locality weight {w} is outside 1..100"),
                );
            }
            locality(r, format!("{p}.to.{loc}"), loc);
            total += u64::from(*w);
        }
        if total != 100 {
            r.err(
                format!("{p}.to"),
                format!("locality weights add up to {total}, not 100"),
            );
        }
    }
    if (!l.failover.is_empty() || !l.failover_priority.is_empty()) && !has_outlier {
        r.warn(
            path,
            "failover only takes effect with an outlierDetection policy",
        );
    }
    for (i, f) in l.failover.iter().enumerate() {
        let p = format!("{path}.failover[{i}]");
        if f.from == f.to {
            r.err(&p, "failover from and to must be different regions");
        }
        if f.from.contains('/') || f.to.contains('/') {
            r.err(&p, "failover takes regions only, not zones");
        }
        if f.from.contains('*') || f.to.contains('*') {
            r.err(&p, "failover regions cannot contain '*'");
        }
    }
}

/// Upstream TLS settings, consistent with the mode.
pub(crate) fn client_tls(r: &mut Report, path: &str, namespace: &str, tls: &ClientTlsSettings) {
    let mode = tls.mode();
    let set = |o: &Option<String>| o.as_ref().is_some_and(|s| !s.is_empty());
    if let Some(cn) = &tls.credential_name
        && let Some(rest) = cn.strip_prefix("configmap://")
    {
        let ns = rest.split_once('/').map(|(ns, _)| ns);
        if ns.is_some_and(|ns| ns != namespace) {
            r.err(
                format!("{path}.credentialName"),
                format!("configmap:// credentials must be in the object's namespace {namespace:?}"),
            );
        }
    }
    if tls.insecure_skip_verify == Some(true) {
        if mode == ClientTlsMode::Simple
            && (set(&tls.ca_certificates)
                || set(&tls.credential_name)
                || !tls.subject_alt_names.is_empty())
        {
            r.err(path, "insecureSkipVerify cannot be combined with caCertificates, credentialName or subjectAltNames");
        }
        if mode == ClientTlsMode::Mutual
            && (set(&tls.ca_certificates) || !tls.subject_alt_names.is_empty())
        {
            r.err(
                path,
                "insecureSkipVerify cannot be combined with caCertificates or subjectAltNames",
            );
        }
    }
    if matches!(mode, ClientTlsMode::Simple | ClientTlsMode::Mutual) && set(&tls.credential_name) {
        if set(&tls.client_certificate)
            || set(&tls.ca_certificates)
            || set(&tls.private_key)
            || set(&tls.ca_crl)
        {
            r.err(
                format!("{path}.credentialName"),
                "credentialName cannot be combined with clientCertificate, privateKey, caCertificates or caCrl",
            );
        }
        return;
    }
    if mode == ClientTlsMode::Mutual {
        if !set(&tls.client_certificate) {
            r.err(
                format!("{path}.clientCertificate"),
                "MUTUAL mode needs a client certificate (or credentialName)",
            );
        }
        if !set(&tls.private_key) {
            r.err(
                format!("{path}.privateKey"),
                "MUTUAL mode needs a private key (or credentialName)",
            );
        }
    }
}
