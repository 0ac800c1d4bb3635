//! `security.istio.io` rules (Istio: `ValidatePeerAuthentication`,
//! `ValidateAuthorizationPolicy`, `ValidateRequestAuthentication`,
//! `security.ValidateAttribute` and friends), each finding at its field.

use super::{Report, checks, shared};
use crate::security::{
    Action, AuthorizationPolicy, JwtRule, PeerAuthentication, PolicyTargetReference,
    RequestAuthentication, Source, WorkloadSelector,
};

/// `when` keys Istio knows, by how their name is matched.
const EXACT_KEYS: &[&str] = &[
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.serviceAccount",
    "source.principal",
    "source.trustDomain",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "destination.ip",
    "destination.port",
    "connection.sni",
];

pub(crate) fn validate_peer_authentication(pa: &PeerAuthentication, r: &mut Report) {
    selector(r, pa.selector.as_ref(), "PeerAuthentication");
    if let Some(ports) = &pa.port_level_mtls {
        if pa.is_namespace_wide() {
            r.err(
                "spec.portLevelMtls",
                "a namespace- or mesh-wide PeerAuthentication (no selector labels) cannot have port-level mTLS",
            );
        }
        if ports.is_empty() {
            r.err(
                "spec.portLevelMtls",
                "port-level mTLS, when set, needs at least one port",
            );
        }
        for port in ports.keys() {
            r.check(format!("spec.portLevelMtls.{port}"), checks::port(*port));
        }
    }
}

pub(crate) fn validate_authorization_policy(ap: &AuthorizationPolicy, r: &mut Report) {
    one_selector_kind(
        r,
        ap.selector.as_ref(),
        ap.target_ref.as_ref(),
        &ap.target_refs,
    );
    selector(r, ap.selector.as_ref(), "AuthorizationPolicy");
    target_refs(r, ap.target_ref.as_ref(), &ap.target_refs);

    let action = ap.action();
    let no_rules = ap.rules().is_empty();
    match action {
        Action::Custom => {
            if no_rules {
                r.err(
                    "spec.rules",
                    "a CUSTOM policy without rules is never triggered; add an empty rule `{}` to apply it to every request",
                );
            } else if ap.provider.as_ref().is_none_or(|p| p.name.is_empty()) {
                r.err(
                    "spec.provider.name",
                    "a CUSTOM policy needs provider.name (a MeshConfig extensionProviders entry)",
                );
            }
            custom_restrictions(ap, r);
        }
        Action::Deny if no_rules => r.err(
            "spec.rules",
            "a DENY policy without rules is never triggered; add an empty rule `{}` to deny every request",
        ),
        _ => {}
    }
    if ap.provider.is_some() && action != Action::Custom {
        r.err(
            "spec.provider",
            format!(
                "provider is only allowed with action CUSTOM, not {}",
                action.as_str()
            ),
        );
    }

    for (i, rule) in ap.rules().iter().enumerate() {
        let rp = format!("spec.rules[{i}]");
        let mut tcp_in_from = false;
        let mut tcp_in_to = false;
        let from_given = rule.from.as_ref().is_some_and(|f| !f.is_empty());
        let to_given = rule.to.as_ref().is_some_and(|t| !t.is_empty());
        if rule.from.as_ref().is_some_and(Vec::is_empty) {
            r.err(format!("{rp}.from"), "`from`, when set, must not be empty");
        }
        for (j, from) in rule.from.iter().flatten().enumerate() {
            let fp = format!("{rp}.from[{j}].source");
            let Some(src) = &from.source else {
                r.err(fp, "`source` is required");
                continue;
            };
            if source(r, &fp, src) {
                tcp_in_from = true;
            }
        }
        if rule.to.as_ref().is_some_and(Vec::is_empty) {
            r.err(format!("{rp}.to"), "`to`, when set, must not be empty");
        }
        for (j, to) in rule.to.iter().flatten().enumerate() {
            let op_path = format!("{rp}.to[{j}].operation");
            let Some(op) = &to.operation else {
                r.err(op_path, "`operation` is required");
                continue;
            };
            if op.is_empty() {
                r.err(&op_path, "`operation` must set at least one field");
            }
            for (field, values) in [("ports", &op.ports), ("notPorts", &op.not_ports)] {
                for (k, v) in values.iter().enumerate() {
                    r.check(format!("{op_path}.{field}[{k}]"), port_value(v));
                }
            }
            for (field, values) in [
                ("hosts", &op.hosts),
                ("notHosts", &op.not_hosts),
                ("methods", &op.methods),
                ("notMethods", &op.not_methods),
                ("paths", &op.paths),
                ("notPaths", &op.not_paths),
            ] {
                non_empty_values(r, &format!("{op_path}.{field}"), values);
            }
            for (field, values) in [("paths", &op.paths), ("notPaths", &op.not_paths)] {
                for (k, v) in values.iter().enumerate() {
                    r.check(format!("{op_path}.{field}[{k}]"), path_template(v));
                }
            }
            if !op.ports.is_empty() || !op.not_ports.is_empty() {
                tcp_in_to = true;
            }
        }
        for (k, cond) in rule.when.iter().enumerate() {
            let wp = format!("{rp}.when[{k}]");
            if cond.key.is_empty() {
                r.err(format!("{wp}.key"), "`key` is required");
                continue;
            }
            if cond.values.is_empty() && cond.not_values.is_empty() {
                r.err(
                    &wp,
                    format!("condition {:?} needs `values` or `notValues`", cond.key),
                );
                continue;
            }
            if let Err(m) = attribute_key(&cond.key) {
                r.err(format!("{wp}.key"), m);
                continue;
            }
            for (field, values) in [("values", &cond.values), ("notValues", &cond.not_values)] {
                for (n, v) in values.iter().enumerate() {
                    r.check(format!("{wp}.{field}[{n}]"), attribute_value(&cond.key, v));
                }
            }
        }
        if action == Action::Deny
            && ((from_given && !to_given && !tcp_in_from) || (to_given && !tcp_in_to))
        {
            r.warn(
                &rp,
                "this DENY rule uses only HTTP attributes: it denies all traffic to TCP ports the policy applies to; name the ports explicitly",
            );
        }
    }
}

/// The source fields and `when` keys Istio does not support with CUSTOM.
fn custom_restrictions(ap: &AuthorizationPolicy, r: &mut Report) {
    for (i, rule) in ap.rules().iter().enumerate() {
        for (j, from) in rule.from.iter().flatten().enumerate() {
            let Some(s) = &from.source else { continue };
            let fp = format!("spec.rules[{i}].from[{j}].source");
            for (field, values) in [
                ("namespaces", &s.namespaces),
                ("notNamespaces", &s.not_namespaces),
                ("serviceAccounts", &s.service_accounts),
                ("notServiceAccounts", &s.not_service_accounts),
                ("trustDomains", &s.trust_domains),
                ("notTrustDomains", &s.not_trust_domains),
                ("principals", &s.principals),
                ("notPrincipals", &s.not_principals),
                ("requestPrincipals", &s.request_principals),
                ("notRequestPrincipals", &s.not_request_principals),
            ] {
                if !values.is_empty() {
                    r.err(
                        format!("{fp}.{field}"),
                        format!("{field} is not supported with action CUSTOM"),
                    );
                }
            }
        }
        for (k, cond) in rule.when.iter().enumerate() {
            let key = cond.key.as_str();
            if matches!(
                key,
                "source.namespace"
                    | "source.serviceAccount"
                    | "source.trustDomain"
                    | "source.principal"
            ) || key.starts_with("request.auth.")
            {
                r.err(
                    format!("spec.rules[{i}].when[{k}].key"),
                    format!("{key} is not supported with action CUSTOM"),
                );
            }
        }
    }
}

/// Checks one `source`; returns whether it uses a field that applies to TCP.
fn source(r: &mut Report, fp: &str, s: &Source) -> bool {
    let identity = !s.principals.is_empty()
        || !s.not_principals.is_empty()
        || !s.namespaces.is_empty()
        || !s.not_namespaces.is_empty();
    if identity && (!s.service_accounts.is_empty() || !s.not_service_accounts.is_empty()) {
        r.err(
            fp,
            "serviceAccounts cannot be combined with principals or namespaces",
        );
    }
    if s.is_empty() {
        r.err(fp, "`source` must set at least one field");
    }
    for (field, values) in [
        ("ipBlocks", &s.ip_blocks),
        ("notIpBlocks", &s.not_ip_blocks),
        ("remoteIpBlocks", &s.remote_ip_blocks),
        ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
    ] {
        for (k, v) in values.iter().enumerate() {
            r.check(format!("{fp}.{field}[{k}]"), ip_or_cidr(v));
        }
    }
    for (field, values) in [
        ("principals", &s.principals),
        ("notPrincipals", &s.not_principals),
        ("requestPrincipals", &s.request_principals),
        ("notRequestPrincipals", &s.not_request_principals),
        ("namespaces", &s.namespaces),
        ("notNamespaces", &s.not_namespaces),
    ] {
        non_empty_values(r, &format!("{fp}.{field}"), values);
        for (k, v) in values.iter().enumerate() {
            let stars = v.matches('*').count();
            let inner = stars > 0 && v != "*" && !v.starts_with('*') && !v.ends_with('*');
            if stars > 1 || inner {
                r.warn(
                    format!("{fp}.{field}[{k}]"),
                    format!(
                        "{v:?}: only a leading or trailing `*` is a wildcard; the other `*` are matched literally"
                    ),
                );
            }
        }
    }
    for (field, values) in [
        ("principals", &s.principals),
        ("notPrincipals", &s.not_principals),
    ] {
        for (k, v) in values.iter().enumerate() {
            if v.starts_with("spiffe://") {
                r.warn(
                    format!("{fp}.{field}[{k}]"),
                    format!(
                        "{v:?}: principals are written without the spiffe:// prefix, which is added"
                    ),
                );
            }
        }
    }
    for (field, values) in [
        ("serviceAccounts", &s.service_accounts),
        ("notServiceAccounts", &s.not_service_accounts),
    ] {
        if values.len() > 16 {
            r.err(format!("{fp}.{field}"), "at most 16 service accounts");
        }
        for (k, v) in values.iter().enumerate() {
            r.check(format!("{fp}.{field}[{k}]"), service_account(v));
        }
    }
    for (field, values) in [
        ("trustDomains", &s.trust_domains),
        ("notTrustDomains", &s.not_trust_domains),
    ] {
        for (k, v) in values.iter().enumerate() {
            let p = format!("{fp}.{field}[{k}]");
            r.check(&p, wildcard_value(v));
            if v.contains('/') {
                r.err(p, format!("trust domain {v:?} must not contain '/'"));
            }
        }
    }
    !s.principals.is_empty()
        || !s.not_principals.is_empty()
        || !s.namespaces.is_empty()
        || !s.not_namespaces.is_empty()
        || !s.ip_blocks.is_empty()
        || !s.not_ip_blocks.is_empty()
        || !s.remote_ip_blocks.is_empty()
        || !s.not_remote_ip_blocks.is_empty()
        || !s.service_accounts.is_empty()
        || !s.not_service_accounts.is_empty()
}

pub(crate) fn validate_request_authentication(ra: &RequestAuthentication, r: &mut Report) {
    one_selector_kind(
        r,
        ra.selector.as_ref(),
        ra.target_ref.as_ref(),
        &ra.target_refs,
    );
    selector(r, ra.selector.as_ref(), "RequestAuthentication");
    target_refs(r, ra.target_ref.as_ref(), &ra.target_refs);
    for (i, rule) in ra.jwt_rules.iter().enumerate() {
        jwt_rule(r, &format!("spec.jwtRules[{i}]"), rule);
    }
}

fn jwt_rule(r: &mut Report, p: &str, rule: &JwtRule) {
    for (i, a) in rule.audiences.iter().enumerate() {
        if a.is_empty() {
            r.err(format!("{p}.audiences[{i}]"), "audience must not be empty");
        }
    }
    if rule.issuer.is_empty() && rule.jwks_uri.is_empty() {
        r.err(
            format!("{p}.issuer"),
            "issuer is required (or at least jwksUri)",
        );
    } else if rule.issuer.is_empty() {
        r.warn(
            format!("{p}.issuer"),
            "no issuer: tokens of any issuer signed by these keys are accepted",
        );
    }
    if !rule.jwks_uri.is_empty() {
        r.check(format!("{p}.jwksUri"), jwks_uri(&rule.jwks_uri));
    }
    if !rule.jwks.is_empty() {
        match jwks(&rule.jwks) {
            Err(m) => r.err(format!("{p}.jwks"), m),
            Ok(true) => r.warn(
                format!("{p}.jwks"),
                "the key set contains private key material; only public keys are needed to verify tokens",
            ),
            Ok(false) => {}
        }
    }
    for (i, h) in rule.from_headers.iter().enumerate() {
        if h.name.is_empty() {
            r.err(
                format!("{p}.fromHeaders[{i}].name"),
                "header name must not be empty",
            );
        }
    }
    for (i, q) in rule.from_params.iter().enumerate() {
        if q.is_empty() {
            r.err(
                format!("{p}.fromParams[{i}]"),
                "query parameter name must not be empty",
            );
        }
    }
    for (i, c) in rule.from_cookies.iter().enumerate() {
        if c.is_empty() {
            r.err(
                format!("{p}.fromCookies[{i}]"),
                "cookie name must not be empty",
            );
        }
    }
    for (i, c) in rule.output_claim_to_headers.iter().enumerate() {
        let cp = format!("{p}.outputClaimToHeaders[{i}]");
        if c.claim.is_empty() {
            r.err(format!("{cp}.claim"), "claim must not be empty");
        }
        if c.header.is_empty() {
            r.err(format!("{cp}.header"), "header must not be empty");
        } else if !c
            .header
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            r.err(
                format!("{cp}.header"),
                format!("{:?} is not a valid header name", c.header),
            );
        }
    }
    if let Some(t) = rule.timeout {
        r.check(format!("{p}.timeout"), checks::duration(t));
    }
}

fn selector(r: &mut Report, sel: Option<&WorkloadSelector>, what: &str) {
    if let Some(sel) = sel {
        shared::selector(r, "spec.selector.matchLabels", &sel.match_labels, what);
    }
}

fn one_selector_kind(
    r: &mut Report,
    sel: Option<&WorkloadSelector>,
    target_ref: Option<&PolicyTargetReference>,
    target_refs: &[PolicyTargetReference],
) {
    let set = usize::from(sel.is_some())
        + usize::from(target_ref.is_some())
        + usize::from(!target_refs.is_empty());
    if set > 1 {
        r.err(
            "spec",
            "only one of selector, targetRef and targetRefs may be set",
        );
    }
}

fn target_refs(
    r: &mut Report,
    target_ref: Option<&PolicyTargetReference>,
    target_refs: &[PolicyTargetReference],
) {
    let all = target_ref
        .map(|t| ("spec.targetRef".to_owned(), t))
        .into_iter()
        .chain(
            target_refs
                .iter()
                .enumerate()
                .map(|(i, t)| (format!("spec.targetRefs[{i}]"), t)),
        );
    for (p, t) in all {
        if t.name.is_empty() {
            r.err(format!("{p}.name"), "name is required");
        }
        if !t.namespace.is_empty() {
            r.err(
                format!("{p}.namespace"),
                "namespace must not be set: cross-namespace references are not supported",
            );
        }
        let group = if t.group.is_empty() {
            "core"
        } else {
            t.group.as_str()
        };
        let allowed = matches!(
            (group, t.kind.as_str()),
            ("core", "Service")
                | ("networking.istio.io", "ServiceEntry")
                | ("gateway.networking.k8s.io", "Gateway" | "GatewayClass")
        );
        if !allowed {
            r.err(
                format!("{p}.kind"),
                format!(
                    "{}/{} cannot be targeted; use a Service, ServiceEntry, Gateway or GatewayClass",
                    t.group, t.kind
                ),
            );
        }
    }
}

fn non_empty_values(r: &mut Report, path: &str, values: &[String]) {
    for (i, v) in values.iter().enumerate() {
        if v.is_empty() {
            r.err(format!("{path}[{i}]"), "empty values are not allowed");
        }
    }
}

/// An IP address or CIDR block (`10.0.0.1`, `10.0.0.0/8`, `2001:db8::/32`).
fn ip_or_cidr(v: &str) -> checks::Check {
    if v.is_empty() {
        return Err("empty values are not allowed".into());
    }
    checks::ip_subnet(v).map_err(|_| {
        if v.contains('/') {
            format!("{v:?} is not a valid CIDR block")
        } else {
            format!("{v:?} is not a valid IP address")
        }
    })
}

/// A port as AuthorizationPolicy writes it: decimal text, at most 65535.
fn port_value(v: &str) -> checks::Check {
    match v.parse::<u32>() {
        Ok(p) if p <= 65535 => Ok(()),
        _ => Err(format!("{v:?} is not a port number (0..65535)")),
    }
}

/// Exact, `prefix*`, `*suffix` or `*`: at most one `*`, at an end.
fn wildcard_value(v: &str) -> checks::Check {
    if v.is_empty() {
        return Err("empty values are not allowed".into());
    }
    let stars = v.matches('*').count();
    if stars > 1 {
        return Err(format!("{v:?}: at most one `*` is allowed"));
    }
    if stars == 1 && v != "*" && !v.starts_with('*') && !v.ends_with('*') {
        return Err(format!("{v:?}: `*` is only allowed at the start or end"));
    }
    Ok(())
}

/// `serviceAccount` or `namespace/serviceAccount`, without wildcards.
fn service_account(v: &str) -> checks::Check {
    if v.is_empty() {
        return Err("empty values are not allowed".into());
    }
    if v.contains('*') {
        return Err(format!(
            "{v:?}: wildcards are not allowed in service accounts"
        ));
    }
    if v.len() > 320 {
        return Err("a service account reference is at most 320 characters".into());
    }
    match v.split_once('/') {
        None => Ok(()),
        Some((ns, sa)) if !ns.is_empty() && !sa.is_empty() && !sa.contains('/') => Ok(()),
        Some(_) => Err(format!(
            "{v:?}: expected `serviceAccount` or `namespace/serviceAccount`"
        )),
    }
}

/// A path: `{*}` and `{**}` templates must be whole segments, `{**}` last,
/// and template paths may use only RFC 3986 path characters.
fn path_template(path: &str) -> checks::Check {
    let template = path.contains("{*}") || path.contains("{**}");
    let mut seen_any = false;
    for seg in path.trim_matches('/').split('/') {
        match seg {
            "{*}" | "{**}" if seen_any => {
                return Err(format!("{path:?}: `{{**}}` must be the last operator"));
            }
            "{*}" => continue,
            "{**}" => {
                seen_any = true;
                continue;
            }
            _ => {}
        }
        if seg.contains(['{', '}']) {
            return Err(format!(
                "{path:?}: `{{` and `}}` are only allowed in `{{*}}` and `{{**}}` segments"
            ));
        }
        let literal = !seg.is_empty()
            && seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~%!$&'()+,;:@=".contains(&b));
        if template && !literal {
            return Err(format!(
                "{path:?}: segment {seg:?} is not a literal allowed in a path template"
            ));
        }
    }
    Ok(())
}

/// `name[key]` (one or more bracketed parts for claims).
fn map_key(key: &str) -> checks::Check {
    match key.find('[') {
        Some(open) if key.ends_with(']') && open > 0 && open < key.len() - 2 => Ok(()),
        _ => Err(format!("{key:?} should have the form name[key]")),
    }
}

/// A `when` key Istio accepts.
pub(crate) fn attribute_key(key: &str) -> checks::Check {
    if EXACT_KEYS.contains(&key) {
        return Ok(());
    }
    if key.starts_with("request.headers")
        || key.starts_with("request.auth.claims")
        || key.starts_with("experimental.envoy.filters.")
    {
        return map_key(key);
    }
    Err(match key {
        "destination.namespace" => {
            "destination.namespace is replaced by the policy's metadata.namespace".into()
        }
        "destination.name" | "destination.user" => {
            format!("{key} is deprecated (only supported in v1alpha1)")
        }
        k if k.starts_with("destination.labels") => {
            "destination.labels is replaced by the workload selector".into()
        }
        k => format!("unknown attribute {k:?}"),
    })
}

fn attribute_value(key: &str, v: &str) -> checks::Check {
    if v.is_empty() {
        return Err("empty values are not allowed".into());
    }
    match key {
        "source.ip" | "remote.ip" | "destination.ip" => ip_or_cidr(v),
        "destination.port" => port_value(v),
        "source.serviceAccount" => service_account(v),
        "source.trustDomain" => wildcard_value(v),
        _ => Ok(()),
    }
}

/// `http(s)://host[:port]/...`.
fn jwks_uri(uri: &str) -> checks::Check {
    let rest = uri
        .strip_prefix("https://")
        .or_else(|| uri.strip_prefix("http://"))
        .ok_or_else(|| format!("{uri:?}: only http:// and https:// URIs are supported"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        match v6.split_once(']') {
            Some((h, p)) => (h, p.strip_prefix(':')),
            None => return Err(format!("{uri:?}: malformed IPv6 host")),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(format!("{uri:?}: the URI has no host"));
    }
    if let Some(p) = port
        && !p.parse::<u16>().is_ok_and(|p| p > 0)
    {
        return Err(format!("{uri:?}: invalid port {p:?}"));
    }
    Ok(())
}

/// A JSON Web Key (Set). `Ok(true)` when some key carries private material.
fn jwks(text: &str) -> Result<bool, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("jwks is not valid JSON: {e}"))?;
    let keys: Vec<&serde_json::Value> = match value.get("keys") {
        Some(serde_json::Value::Array(keys)) => keys.iter().collect(),
        Some(_) => return Err("jwks: `keys` must be a list of keys".into()),
        None => vec![&value],
    };
    let mut private = false;
    for (i, key) in keys.iter().enumerate() {
        let Some(obj) = key.as_object() else {
            return Err(format!("jwks: key {i} is not a JSON object"));
        };
        let kty = match obj.get("kty") {
            Some(serde_json::Value::String(k)) => k.as_str(),
            _ => return Err(format!("jwks: key {i} has no `kty`")),
        };
        let required: &[&str] = match kty {
            "RSA" => &["n", "e"],
            "EC" => &["crv", "x", "y"],
            "OKP" => &["crv", "x"],
            "oct" => &["k"],
            other => return Err(format!("jwks: key {i} has unsupported kty {other:?}")),
        };
        for field in required {
            if !obj.get(*field).is_some_and(serde_json::Value::is_string) {
                return Err(format!("jwks: {kty} key {i} is missing `{field}`"));
            }
        }
        private |= kty == "oct" || obj.contains_key("d");
    }
    Ok(private)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_templates() {
        assert!(path_template("/foo/{*}/bar/{**}").is_ok());
        assert!(path_template("/foo/*").is_ok());
        assert!(path_template("/foo/{**}/{*}").is_err());
        assert!(path_template("/foo/{x}").is_err());
        assert!(path_template("/*/baz/{*}").is_err());
    }

    #[test]
    fn keys_and_uris() {
        assert!(attribute_key("request.headers[x-id]").is_ok());
        assert!(attribute_key("request.headers").is_err());
        assert!(attribute_key("request.auth.claims[groups][0]").is_ok());
        assert!(attribute_key("destination.labels[app]").is_err());
        assert!(attribute_key("source.user").is_err());
        assert!(jwks_uri("https://example.com/.well-known/jwks.json").is_ok());
        assert!(jwks_uri("http://[::1]:8080/keys").is_ok());
        assert!(jwks_uri("ftp://example.com").is_err());
        assert!(jwks_uri("https://example.com:0/x").is_err());
    }

    #[test]
    fn key_sets() {
        let rsa = r#"{"keys":[{"kty":"RSA","n":"abc","e":"AQAB"}]}"#;
        assert_eq!(jwks(rsa), Ok(false));
        assert_eq!(jwks(r#"{"kty":"RSA","n":"a","e":"b","d":"c"}"#), Ok(true));
        assert!(jwks("{not json").is_err());
        assert!(jwks(r#"{"keys":[{"n":"a"}]}"#).is_err());
    }
}
