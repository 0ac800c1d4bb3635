//! Where tokens are found (Envoy's `Extractor`): headers (with a value
//! prefix), query parameters and cookies; by default `Authorization: Bearer`
//! and the `access_token` parameter. Each location remembers which issuers
//! may use it.

use std::collections::{BTreeMap, HashSet};

use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::JwtProvider;
use http::{HeaderMap, HeaderName};

/// Issuers that configured a location; a provider without issuer allows all.
#[derive(Debug, Clone, Default)]
pub(super) struct IssuerChecker {
    allow_all: bool,
    issuers: HashSet<String>,
}

impl IssuerChecker {
    fn add(&mut self, issuer: &str) {
        if issuer.is_empty() {
            self.allow_all = true;
        } else {
            self.issuers.insert(issuer.to_string());
        }
    }

    pub(super) fn allows(&self, issuer: &str) -> bool {
        self.allow_all || self.issuers.contains(issuer)
    }
}

#[derive(Debug, Clone)]
struct HeaderLocation {
    name: HeaderName,
    prefix: String,
    issuers: IssuerChecker,
}

#[derive(Debug, Clone, Default)]
pub(super) struct Extractor {
    /// By `name + prefix`, as Envoy's ordered map.
    headers: BTreeMap<String, HeaderLocation>,
    params: BTreeMap<String, IssuerChecker>,
    cookies: BTreeMap<String, IssuerChecker>,
    sanitize: Vec<HeaderName>,
}

/// Where a token was found, for removing it after verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Location {
    Header(HeaderName),
    Param,
    Cookie,
}

#[derive(Debug, Clone)]
pub(super) struct Token<'e> {
    pub(super) value: String,
    pub(super) issuers: &'e IssuerChecker,
    pub(super) location: Location,
}

/// RFC 4648 §5 characters plus the dot.
fn jwt_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

/// Envoy's `extractJWT`: the run of JWT characters after `after`, or the
/// whole value when there is none.
fn extract_jwt(value: &str, after: usize) -> &str {
    let rest = &value[after..];
    let Some(start) = rest.find(jwt_char) else {
        return value;
    };
    let tail = &rest[start..];
    match tail.find(|c: char| !jwt_char(c)) {
        Some(end) => &tail[..end],
        None => tail,
    }
}

/// Percent-decoding as Envoy's `PercentEncoding::decode` (`+` stays `+`).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// Envoy's `parseAndDecodeQueryString`: the first value of each name.
fn query_params(path: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(q) = path.split_once('?').map(|(_, q)| q) else {
        return out;
    };
    let q = q.split('#').next().unwrap_or("");
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.entry(percent_decode(k))
            .or_insert_with(|| percent_decode(v));
    }
    out
}

/// Envoy's `parseCookies`: `name=value` pairs of every `cookie` header;
/// the first one wins and surrounding double quotes are dropped.
fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    for h in headers.get_all(http::header::COOKIE) {
        let Ok(s) = h.to_str() else {
            continue;
        };
        for part in s.split(';') {
            let part = part.trim_start_matches(' ');
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            if k == name {
                let v = if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
                    &v[1..v.len() - 1]
                } else {
                    v
                };
                return Some(v.to_string());
            }
        }
    }
    None
}

impl Extractor {
    pub(super) fn for_providers<'a>(providers: impl IntoIterator<Item = &'a JwtProvider>) -> Self {
        let mut e = Self::default();
        for p in providers {
            e.add_provider(p);
        }
        e
    }

    fn add_header(&mut self, issuer: &str, name: HeaderName, prefix: &str) {
        let key = format!("{}{prefix}", name.as_str());
        self.headers
            .entry(key)
            .or_insert_with(|| HeaderLocation {
                name,
                prefix: prefix.to_string(),
                issuers: IssuerChecker::default(),
            })
            .issuers
            .add(issuer);
    }

    fn add_provider(&mut self, p: &JwtProvider) {
        for h in &p.from_headers {
            // Names are validated when the filter is compiled.
            if let Ok(name) = HeaderName::from_bytes(h.name.as_bytes()) {
                self.add_header(&p.issuer, name, &h.value_prefix);
            }
        }
        for param in &p.from_params {
            self.params.entry(param.clone()).or_default().add(&p.issuer);
        }
        for cookie in &p.from_cookies {
            self.cookies
                .entry(cookie.clone())
                .or_default()
                .add(&p.issuer);
        }
        if p.from_headers.is_empty() && p.from_params.is_empty() && p.from_cookies.is_empty() {
            self.add_header(&p.issuer, http::header::AUTHORIZATION, "Bearer ");
            self.params
                .entry("access_token".into())
                .or_default()
                .add(&p.issuer);
        }
        if let Ok(h) = HeaderName::from_bytes(p.forward_payload_header.as_bytes()) {
            self.sanitize.push(h);
        }
        for c in &p.claim_to_headers {
            if let Ok(h) = HeaderName::from_bytes(c.header_name.as_bytes()) {
                self.sanitize.push(h);
            }
        }
    }

    /// Removes headers only this filter may set (forwarded payloads and
    /// claims), so a client cannot forge them.
    pub(super) fn sanitize(&self, headers: &mut HeaderMap) {
        for h in &self.sanitize {
            headers.remove(h);
        }
    }

    /// Tokens in Envoy's order: headers, then parameters, then cookies.
    pub(super) fn extract(&self, headers: &HeaderMap, path: &str) -> Vec<Token<'_>> {
        let mut out = Vec::new();
        for loc in self.headers.values() {
            let mut values = headers.get_all(&loc.name).iter();
            let Some(first) = values.next() else {
                continue;
            };
            let mut joined = String::from_utf8_lossy(first.as_bytes()).into_owned();
            for v in values {
                joined.push(',');
                joined.push_str(&String::from_utf8_lossy(v.as_bytes()));
            }
            let value = if loc.prefix.is_empty() {
                joined
            } else {
                let Some(pos) = joined.find(&loc.prefix) else {
                    continue;
                };
                extract_jwt(&joined, pos + loc.prefix.len()).to_string()
            };
            out.push(Token {
                value,
                issuers: &loc.issuers,
                location: Location::Header(loc.name.clone()),
            });
        }
        if !self.params.is_empty() {
            let params = query_params(path);
            for (name, issuers) in &self.params {
                if let Some(v) = params.get(name) {
                    out.push(Token {
                        value: v.clone(),
                        issuers,
                        location: Location::Param,
                    });
                }
            }
        }
        for (name, issuers) in &self.cookies {
            if let Some(v) = cookie_value(headers, name) {
                out.push(Token {
                    value: v,
                    issuers,
                    location: Location::Cookie,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::JwtHeader;

    fn hm(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().expect("value"));
        }
        h
    }

    #[test]
    fn default_locations_are_bearer_and_access_token() {
        let p = JwtProvider {
            issuer: "iss".into(),
            ..Default::default()
        };
        let e = Extractor::for_providers([&p]);
        let h = hm(&[("authorization", "Bearer aaa.bbb.ccc")]);
        let t = e.extract(&h, "/x?access_token=x.y.z");
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].value, "aaa.bbb.ccc");
        assert_eq!(t[0].location, Location::Header(http::header::AUTHORIZATION));
        assert_eq!(t[1].value, "x.y.z");
        assert!(t[0].issuers.allows("iss") && !t[0].issuers.allows("other"));
        // The prefix is case-sensitive and may appear anywhere.
        assert!(
            e.extract(&hm(&[("authorization", "bearer a.b.c")]), "/")
                .is_empty()
        );
        let t = e.extract(&hm(&[("authorization", "Basic x, Bearer a.b.c junk")]), "/");
        assert_eq!(t[0].value, "a.b.c");
    }

    #[test]
    fn custom_header_params_and_cookies() {
        let p = JwtProvider {
            from_headers: vec![JwtHeader {
                name: "x-jwt".into(),
                value_prefix: String::new(),
            }],
            from_params: vec!["tok".into()],
            from_cookies: vec!["session".into()],
            ..Default::default()
        };
        let e = Extractor::for_providers([&p]);
        let h = hm(&[("x-jwt", "h.h.h"), ("cookie", "a=1; session=\"c.c.c\"")]);
        let t = e.extract(&h, "/p?tok=p%2Ep.p&tok=second");
        let values: Vec<_> = t.iter().map(|t| t.value.as_str()).collect();
        assert_eq!(values, ["h.h.h", "p.p.p", "c.c.c"]);
        assert!(t[0].issuers.allows("anyone"));
    }
}
