//! Field-level checks shared by the kind validators. Each returns the
//! problem as a message, or `Ok`; callers attach the field path.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use crate::duration::IstioDuration;
use crate::networking::Percent;

pub(crate) type Check = Result<(), String>;

/// Longest DNS-1123 label.
pub(crate) const DNS1123_LABEL_MAX: usize = 63;

/// A DNS-1123 label: alphanumerics and `-`, not starting/ending with `-`.
pub(crate) fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= DNS1123_LABEL_MAX
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// A label that may carry a leading wildcard: `*`, `*foo`, `*-foo`, `foo`.
pub(crate) fn is_wildcard_dns1123_label(s: &str) -> bool {
    if s == "*" {
        return true;
    }
    if s.len() > DNS1123_LABEL_MAX {
        return false;
    }
    let rest = s
        .strip_prefix("*-")
        .or_else(|| s.strip_prefix('*'))
        .unwrap_or(s);
    is_dns1123_label(rest)
}

fn dns_preconditions(name: &str) -> Check {
    if name.is_empty() {
        return Err("domain name must not be empty".into());
    }
    if name.len() > 255 {
        return Err(format!(
            "domain name {name:?} is longer than 255 characters"
        ));
    }
    Ok(())
}

fn dns_labels(domain: &str, whole: &str) -> Check {
    let parts: Vec<&str> = domain.split('.').collect();
    let last = parts[parts.len() - 1];
    if !last.is_empty() && last.bytes().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "domain name {whole:?} has an all-numeric top-level label {last:?}"
        ));
    }
    for (i, label) in parts.iter().enumerate() {
        if i == parts.len() - 1 && label.is_empty() {
            return Ok(()); // trailing dot
        }
        if !is_dns1123_label(label) {
            return Err(format!(
                "domain name {whole:?} has an invalid label {label:?}"
            ));
        }
    }
    Ok(())
}

/// A fully qualified (or short) DNS name without wildcards.
pub(crate) fn fqdn(name: &str) -> Check {
    dns_preconditions(name)?;
    dns_labels(name, name)
}

/// A DNS name whose first label may be a wildcard (`*.example.com`, `*`).
pub(crate) fn wildcard_domain(name: &str) -> Check {
    dns_preconditions(name)?;
    let (first, rest) = match name.split_once('.') {
        Some((f, r)) => (f, Some(r)),
        None => (name, None),
    };
    if !is_wildcard_dns1123_label(first) {
        return Err(format!(
            "domain name {name:?} has an invalid label {first:?}"
        ));
    }
    match rest {
        Some(rest) => dns_labels(rest, name),
        None => Ok(()),
    }
}

/// Wildcards only as the whole first label (`*.foo.com`, not `*foo.com`).
pub(crate) fn no_partial_wildcard(host: &str) -> Check {
    if host.contains('*') && host != "*" && !host.starts_with("*.") {
        return Err(format!(
            "partial wildcard {host:?} is not allowed; use `*` or a leading `*.`"
        ));
    }
    Ok(())
}

pub(crate) fn port(n: u32) -> Check {
    if (1..=65535).contains(&n) {
        Ok(())
    } else {
        Err(format!("port number {n} is outside 1..65535"))
    }
}

pub(crate) fn ip(addr: &str) -> Check {
    addr.parse::<IpAddr>()
        .map(|_| ())
        .map_err(|_| format!("{addr:?} is not a valid IP address"))
}

pub(crate) fn is_ip(addr: &str) -> bool {
    addr.parse::<IpAddr>().is_ok()
}

/// An IP address or a CIDR block.
pub(crate) fn ip_subnet(s: &str) -> Check {
    match s.split_once('/') {
        Some((addr, bits)) => {
            let bad = || format!("{s:?} is not a valid CIDR block");
            let ip: IpAddr = addr.parse().map_err(|_| bad())?;
            let bits: u8 = bits.parse().map_err(|_| bad())?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            if bits > max || addr.contains('/') {
                return Err(bad());
            }
            Ok(())
        }
        None => ip(s),
    }
}

/// A unix socket path (after `unix://`): absolute, not a directory, or
/// an abstract socket (`@name`).
pub(crate) fn unix_address(path: &str) -> Check {
    if path.is_empty() {
        return Err("unix socket address must not be empty".into());
    }
    if path.starts_with('@') {
        return Ok(());
    }
    if !path.starts_with('/') || path.ends_with('/') {
        return Err(format!("{path:?} is not an absolute path to a socket file"));
    }
    Ok(())
}

pub(crate) const UNIX_PREFIX: &str = "unix://";

fn label_key(k: &str) -> Check {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix
        && (p.is_empty() || p.len() > 253 || !p.split('.').all(is_dns1123_label))
    {
        return Err(format!("label key {k:?} has an invalid prefix"));
    }
    if !is_qualified_name(name) || name.len() > DNS1123_LABEL_MAX {
        return Err(format!("label key {k:?} is invalid"));
    }
    Ok(())
}

fn is_qualified_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// Kubernetes label syntax for keys and values. Returns one message per
/// bad entry, with the key.
pub(crate) fn labels(map: &BTreeMap<String, String>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (k, v) in map {
        if let Err(e) = label_key(k) {
            out.push((k.clone(), e));
        }
        if !v.is_empty() && (!is_qualified_name(v) || v.len() > DNS1123_LABEL_MAX) {
            out.push((k.clone(), format!("label value {v:?} is invalid")));
        }
    }
    out
}

/// Workload selector labels: no empty keys, no wildcards.
pub(crate) fn selector_labels(map: &BTreeMap<String, String>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (k, v) in map {
        if k.is_empty() {
            out.push((
                k.clone(),
                "selector label keys must not be empty".to_string(),
            ));
        }
        if k.contains('*') || v.contains('*') {
            out.push((
                k.clone(),
                format!("selector {k}={v} uses a wildcard, which is not supported"),
            ));
        }
    }
    out
}

/// An RE2 regular expression, as Envoy will compile it.
pub(crate) fn regex(re: &str) -> Check {
    if re.is_empty() {
        return Err("regex must not be empty".into());
    }
    if re.len() > 1024 {
        return Err("regex is longer than the 1024 characters allowed".into());
    }
    regex::Regex::new(re).map(|_| ()).map_err(|e| {
        format!(
            "invalid RE2 regex: {}",
            e.to_string()
                .lines()
                .last()
                .unwrap_or("syntax error")
                .trim()
        )
    })
}

/// Istio's duration rule: at least 1ms, millisecond precision.
pub(crate) fn duration(d: IstioDuration) -> Check {
    let d = d.get();
    if d < Duration::from_millis(1) {
        return Err(format!(
            "duration {} must be at least 1ms",
            crate::duration::format(d)
        ));
    }
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        return Err(format!(
            "duration {} is finer than millisecond precision",
            crate::duration::format(d)
        ));
    }
    Ok(())
}

/// A fractional percentage: 0, or within [0.0001, 100].
pub(crate) fn percentage(p: &Percent) -> Check {
    let v = p.value;
    if !(0.0..=100.0).contains(&v) || (v > 0.0 && v < 0.0001) {
        return Err(format!(
            "percentage {v} must be 0 or between 0.0001 and 100"
        ));
    }
    Ok(())
}

pub(crate) fn int_percent(v: i32) -> Check {
    if (0..=100).contains(&v) {
        Ok(())
    } else {
        Err(format!("percentage {v} is outside 0..100"))
    }
}

fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// An HTTP header name (RFC 7230 token).
pub(crate) fn header_name(name: &str) -> Check {
    if name.is_empty() {
        return Err("header name must not be empty".into());
    }
    if !name.bytes().all(is_tchar) {
        return Err(format!("{name:?} is not a valid header name"));
    }
    Ok(())
}

/// A header name in a match: a token, an HTTP/2 pseudo header, or a JWT
/// claim reference (`@request.auth.claims.x`).
pub(crate) fn match_header_name(name: &str) -> Check {
    if name.starts_with("@request.auth.claims") {
        return Ok(());
    }
    if matches!(
        name,
        ":method" | ":scheme" | ":authority" | ":path" | ":status"
    ) {
        return Ok(());
    }
    header_name(name)
}

/// A header that may be set or added on requests (`:authority`/`host` are
/// allowed; other pseudo headers are not).
pub(crate) fn request_set_header_name(name: &str) -> Check {
    if name.is_empty() {
        return Err("header name must not be empty".into());
    }
    if name.starts_with(':') && !name.eq_ignore_ascii_case(":authority") {
        return Err(format!(
            "header {name:?} cannot be modified: pseudo headers (\":\" prefix) are reserved"
        ));
    }
    Ok(())
}

/// A header that may be removed, or modified on responses.
pub(crate) fn header_operation_name(name: &str) -> Check {
    if name.is_empty() {
        return Err("header name must not be empty".into());
    }
    if name.eq_ignore_ascii_case("host") {
        return Err(format!("header {name:?} cannot be modified here"));
    }
    if name.starts_with(':') {
        return Err(format!(
            "header {name:?} cannot be modified: pseudo headers (\":\" prefix) are reserved"
        ));
    }
    Ok(())
}

/// A header value for Envoy: no control characters; `%` starts a
/// `%VARIABLE%` (or `%VAR(args)%`) or is escaped as `%%`.
pub(crate) fn header_value(value: &str) -> Check {
    if value.bytes().any(|c| (c < 0x20 && c != b'\t') || c == 0x7f) {
        return Err(format!(
            "header value {value:?} contains control characters"
        ));
    }
    let b = value.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if i + 1 >= b.len() {
                return Err(format!("header value {value:?} has an unescaped %"));
            }
            if b[i + 1] == b'%' {
                i += 2;
                continue;
            }
            // variable: up to the closing %, allowing (...) arguments
            let mut j = i + 1;
            let mut depth = 0i32;
            let mut in_str = false;
            while j < b.len() {
                match b[j] {
                    b'"' if depth > 0 => in_str = !in_str,
                    b'(' if !in_str => depth += 1,
                    b')' if !in_str => depth -= 1,
                    b'%' if depth <= 0 && !in_str => break,
                    _ => {}
                }
                j += 1;
            }
            if j >= b.len() {
                return Err(format!(
                    "header value {value:?} has an unterminated %VARIABLE%"
                ));
            }
            i = j + 1;
        } else {
            i += 1;
        }
    }
    Ok(())
}

/// Protocols Istio knows (case-insensitive), see `protocol.Parse`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http,
    Http2,
    HttpProxy,
    Grpc,
    GrpcWeb,
    Https,
    Tls,
    Tcp,
    Udp,
    Mongo,
    Redis,
    Mysql,
    Unsupported,
}

impl Protocol {
    pub(crate) fn parse(s: &str) -> Self {
        match s.to_ascii_lowercase().as_str() {
            "http" => Self::Http,
            "http2" => Self::Http2,
            "http_proxy" => Self::HttpProxy,
            "grpc" => Self::Grpc,
            "grpc-web" => Self::GrpcWeb,
            "https" => Self::Https,
            "tls" => Self::Tls,
            "tcp" => Self::Tcp,
            "udp" => Self::Udp,
            "mongo" => Self::Mongo,
            "redis" => Self::Redis,
            "mysql" => Self::Mysql,
            _ => Self::Unsupported,
        }
    }
    pub(crate) fn is_http(self) -> bool {
        matches!(
            self,
            Self::Http | Self::Http2 | Self::HttpProxy | Self::Grpc | Self::GrpcWeb
        )
    }
    pub(crate) fn is_tls(self) -> bool {
        matches!(self, Self::Https | Self::Tls)
    }
    pub(crate) fn is_tcp(self) -> bool {
        matches!(
            self,
            Self::Tcp | Self::Https | Self::Tls | Self::Mongo | Self::Redis | Self::Mysql
        )
    }
}

/// A port protocol: empty (sniffed) or one Istio knows.
pub(crate) fn protocol(p: &str) -> Check {
    if !p.is_empty() && Protocol::parse(p) == Protocol::Unsupported {
        return Err(format!("protocol {p:?} is not supported"));
    }
    Ok(())
}

pub(crate) fn port_name(name: &str) -> Check {
    if is_dns1123_label(name) {
        Ok(())
    } else {
        Err(format!("port name {name:?} must be a DNS-1123 label"))
    }
}

/// Does host pattern `a` overlap host pattern `b` (either may be wildcarded)?
pub(crate) fn hosts_overlap(a: &str, b: &str) -> bool {
    if a == "*" || b == "*" {
        return true;
    }
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (None, None) => a.eq_ignore_ascii_case(b),
        (Some(sa), None) => b.len() > sa.len() && ends_with_ci(b, sa),
        (None, Some(sb)) => a.len() > sb.len() && ends_with_ci(a, sb),
        (Some(sa), Some(sb)) => ends_with_ci(sa, sb) || ends_with_ci(sb, sa),
    }
}

/// Is host pattern `inner` entirely covered by pattern `outer`?
pub(crate) fn host_subset_of(inner: &str, outer: &str) -> bool {
    if outer == "*" {
        return true;
    }
    match (inner.strip_prefix('*'), outer.strip_prefix('*')) {
        (None, None) => inner.eq_ignore_ascii_case(outer),
        (None, Some(so)) => inner.len() > so.len() && ends_with_ci(inner, so),
        (Some(si), Some(so)) => ends_with_ci(si, so),
        (Some(_), None) => false,
    }
}

fn ends_with_ci(s: &str, suffix: &str) -> bool {
    s.len() >= suffix.len()
        && s.is_char_boundary(s.len() - suffix.len())
        && s[s.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains() {
        assert!(wildcard_domain("*.foo.com").is_ok());
        assert!(wildcard_domain("*").is_ok());
        assert!(wildcard_domain("reviews").is_ok());
        assert!(wildcard_domain("foo.*.com").is_err());
        assert!(wildcard_domain("a..b").is_err());
        assert!(wildcard_domain("foo.123").is_err());
        assert!(fqdn("*.foo.com").is_err());
        assert!(fqdn("istio.io.").is_ok());
    }

    #[test]
    fn host_relations() {
        assert!(hosts_overlap("*.foo.com", "a.foo.com"));
        assert!(hosts_overlap("*.com", "*.foo.com"));
        assert!(!hosts_overlap("a.foo.com", "b.foo.com"));
        assert!(host_subset_of("a.foo.com", "*.foo.com"));
        assert!(!host_subset_of("*.foo.com", "a.foo.com"));
    }

    #[test]
    fn header_values() {
        assert!(header_value("100%%").is_ok());
        assert!(header_value("%HOSTNAME%").is_ok());
        assert!(header_value("a %REQ(x-y)% b").is_ok());
        assert!(header_value("abc%123").is_err());
        assert!(header_value("bad\nvalue").is_err());
    }

    #[test]
    fn subnets() {
        assert!(ip_subnet("10.0.0.0/8").is_ok());
        assert!(ip_subnet("2001:db8::/32").is_ok());
        assert!(ip_subnet("10.0.0.0/33").is_err());
        assert!(ip_subnet("nope").is_err());
    }
}
