//! `RouteAction.hash_policy`, compiled: the request hash that consistent-hashing load
//! balancers (ring hash, Maglev) use to pick a host.
//!
//! Semantics follow Envoy's `Http::HashPolicyImpl` (`source/common/http/hash_policy.cc`):
//!
//! * policies are evaluated in order; each hash `h` that a policy produces is folded in as
//!   `acc = rotl(acc, 1) ^ h` (the first one as `0 ^ h`);
//! * after a `terminal` policy, evaluation stops if *any* hash has been produced so far;
//! * `header`: every value of the header, each `regex_rewrite`n if configured, sorted
//!   bytewise and hashed as one concatenation with xxHash64 (seed 0);
//! * `cookie`: xxHash64 of the cookie's value. When the cookie is absent and `ttl` is set,
//!   a value is generated from the downstream connection (`hex(xxHash64(remote + local))`,
//!   addresses as `ip:port`), hashed, and a `Set-Cookie` for it is returned for the
//!   response (`name="value"; Max-Age=ttl; Path=path; attributes...; HttpOnly`);
//! * `connection_properties.source_ip`: xxHash64 of the downstream IP without port
//!   (`source_ip: false` adds no policy at all, as in Envoy);
//! * `query_parameter`: xxHash64 of the first value of the parameter (not URL-decoded; a
//!   parameter without `=` has the empty value);
//! * `filter_state`: accepted, never produces a hash (the proxy keeps no hashable filter
//!   state objects, so Envoy's lookup would find nothing either).

use std::fmt::Write as _;
use std::net::SocketAddr;

use envoy_types::pb::envoy::config::route::v3::route_action::{
    HashPolicy as PbHashPolicy, hash_policy::PolicySpecifier,
};
use xxhash_rust::xxh64::{Xxh64, xxh64};

use crate::error::{Result, RouteError};
use crate::matcher::cookie_value;
use crate::request::{HeaderKey, RequestView};
use crate::rewrite::RegexSubstitution;

/// A compiled list of hash policies. Empty when the route has none.
#[derive(Debug, Clone, Default)]
pub struct HashPolicy {
    methods: Vec<Method>,
}

#[derive(Debug, Clone)]
struct Method {
    kind: Kind,
    terminal: bool,
}

#[derive(Debug, Clone)]
enum Kind {
    Header {
        key: HeaderKey,
        rewrite: Option<RegexSubstitution>,
    },
    Cookie(CookieSpec),
    SourceIp,
    QueryParameter(Box<str>),
    FilterState,
}

#[derive(Debug, Clone)]
struct CookieSpec {
    name: String,
    path: String,
    /// `ttl` in whole seconds (Envoy drops the nanos); `None` never generates a cookie.
    ttl: Option<i64>,
    attributes: Vec<(String, String)>,
}

/// The downstream connection's addresses, for `source_ip` and generated cookies.
#[derive(Debug, Clone, Copy)]
pub struct Downstream {
    pub remote: SocketAddr,
    pub local: SocketAddr,
}

/// What evaluating the hash policies produced for one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestHash {
    /// `None` when no policy produced a value (the balancer then uses a random one).
    pub hash: Option<u64>,
    /// `Set-Cookie` header values the response must carry (generated cookies).
    pub set_cookies: Vec<String>,
}

impl HashPolicy {
    /// Compiles `RouteAction.hash_policy`; `field` names the list for errors.
    pub fn compile(policies: &[PbHashPolicy], field: &str) -> Result<Self> {
        let mut methods = Vec::with_capacity(policies.len());
        for (i, p) in policies.iter().enumerate() {
            let pf = format!("{field}[{i}]");
            let kind = match &p.policy_specifier {
                None => {
                    return Err(RouteError::invalid(
                        pf,
                        "one of header, cookie, connection_properties, query_parameter, \
                         filter_state is required",
                    ));
                }
                Some(PolicySpecifier::Header(h)) => {
                    let hf = format!("{pf}.header.header_name");
                    let key = header_key(&h.header_name, &hf)?;
                    let rewrite = h
                        .regex_rewrite
                        .as_ref()
                        .map(|r| {
                            RegexSubstitution::compile(r, &format!("{pf}.header.regex_rewrite"))
                        })
                        .transpose()?;
                    Kind::Header { key, rewrite }
                }
                Some(PolicySpecifier::Cookie(c)) => {
                    if c.name.is_empty() {
                        return Err(RouteError::invalid(
                            format!("{pf}.cookie.name"),
                            "must not be empty",
                        ));
                    }
                    let mut attributes = Vec::with_capacity(c.attributes.len());
                    for (j, a) in c.attributes.iter().enumerate() {
                        let af = format!("{pf}.cookie.attributes[{j}]");
                        if a.name.is_empty() || a.name.len() > 16384 || has_ctl(&a.name) {
                            return Err(RouteError::invalid(
                                format!("{af}.name"),
                                "must be a non-empty header-safe string of at most 16384 bytes",
                            ));
                        }
                        if a.value.len() > 16384 || has_ctl(&a.value) {
                            return Err(RouteError::invalid(
                                format!("{af}.value"),
                                "must be a header-safe string of at most 16384 bytes",
                            ));
                        }
                        attributes.push((a.name.clone(), a.value.clone()));
                    }
                    Kind::Cookie(CookieSpec {
                        name: c.name.clone(),
                        path: c.path.clone(),
                        ttl: c.ttl.as_ref().map(|d| d.seconds),
                        attributes,
                    })
                }
                // Envoy adds no hash method for `source_ip: false`.
                Some(PolicySpecifier::ConnectionProperties(c)) if !c.source_ip => continue,
                Some(PolicySpecifier::ConnectionProperties(_)) => Kind::SourceIp,
                Some(PolicySpecifier::QueryParameter(q)) => {
                    if q.name.is_empty() {
                        return Err(RouteError::invalid(
                            format!("{pf}.query_parameter.name"),
                            "must not be empty",
                        ));
                    }
                    Kind::QueryParameter(q.name.as_str().into())
                }
                Some(PolicySpecifier::FilterState(f)) => {
                    if f.key.is_empty() {
                        return Err(RouteError::invalid(
                            format!("{pf}.filter_state.key"),
                            "must not be empty",
                        ));
                    }
                    Kind::FilterState
                }
            };
            methods.push(Method {
                kind,
                terminal: p.terminal,
            });
        }
        Ok(Self { methods })
    }

    /// True when there is no policy: the request has no hash.
    pub fn is_empty(&self) -> bool {
        self.methods.is_empty()
    }

    /// Evaluates the policies for one request. `downstream` is `None` when the request
    /// has no downstream connection (then `source_ip` and cookie generation yield nothing).
    pub fn generate(&self, req: &RequestView<'_>, downstream: Option<Downstream>) -> RequestHash {
        let mut out = RequestHash::default();
        for m in &self.methods {
            if let Some(h) = m.evaluate(req, downstream, &mut out.set_cookies) {
                // Rotating the old value keeps duplicate rules from cancelling out.
                out.hash = Some(out.hash.map_or(0, |old| old.rotate_left(1)) ^ h);
            }
            if m.terminal && out.hash.is_some() {
                break;
            }
        }
        out
    }
}

impl Method {
    fn evaluate(
        &self,
        req: &RequestView<'_>,
        downstream: Option<Downstream>,
        set_cookies: &mut Vec<String>,
    ) -> Option<u64> {
        match &self.kind {
            Kind::Header { key, rewrite } => {
                let mut values: Vec<Vec<u8>> = match key {
                    HeaderKey::Pseudo(p) => vec![req.pseudo(p)?.as_bytes().to_vec()],
                    HeaderKey::Name(name) => req
                        .headers
                        .get_all(name)
                        .iter()
                        .map(|v| v.as_bytes().to_vec())
                        .collect(),
                    HeaderKey::Never => return None,
                };
                if values.is_empty() {
                    return None;
                }
                if let Some(r) = rewrite {
                    for v in &mut values {
                        *v = r.replace_all(&String::from_utf8_lossy(v)).into_bytes();
                    }
                }
                // The same hash whatever the order of the values.
                values.sort();
                let mut h = Xxh64::new(0);
                for v in &values {
                    h.update(v);
                }
                Some(h.digest())
            }
            Kind::Cookie(c) => {
                if let Some(v) = cookie_value(req, &c.name).filter(|v| !v.is_empty()) {
                    return Some(xxh64(v, 0));
                }
                let ttl = c.ttl?;
                let d = downstream?;
                let value = generated_cookie_value(d);
                set_cookies.push(set_cookie(c, &value, ttl));
                Some(xxh64(value.as_bytes(), 0))
            }
            Kind::SourceIp => {
                let ip = downstream?.remote.ip().to_string();
                Some(xxh64(ip.as_bytes(), 0))
            }
            Kind::QueryParameter(name) => {
                let q = req.query()?;
                let v = q.split('&').find_map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (k == &**name).then_some(v)
                })?;
                Some(xxh64(v.as_bytes(), 0))
            }
            Kind::FilterState => None,
        }
    }
}

/// Envoy's generated cookie value: `Hex::uint64ToHex(xxHash64(remote + local))`, the
/// addresses written as `ip:port` (`[v6]:port`), 16 lowercase hex digits.
pub fn generated_cookie_value(d: Downstream) -> String {
    let key = format!("{}{}", d.remote, d.local);
    format!("{:016x}", xxh64(key.as_bytes(), 0))
}

/// Envoy's `Utility::makeSetCookieValue(name, value, path, ttl, httponly = true, attrs)`.
fn set_cookie(c: &CookieSpec, value: &str, ttl: i64) -> String {
    let mut s = format!("{}=\"{value}\"", c.name);
    if ttl != 0 {
        let _ = write!(s, "; Max-Age={ttl}");
    }
    if !c.path.is_empty() {
        let _ = write!(s, "; Path={}", c.path);
    }
    for (name, val) in &c.attributes {
        if val.is_empty() {
            let _ = write!(s, "; {name}");
        } else {
            let _ = write!(s, "; {name}={val}");
        }
    }
    s.push_str("; HttpOnly");
    s
}

fn has_ctl(s: &str) -> bool {
    s.bytes().any(|b| matches!(b, 0 | b'\r' | b'\n'))
}

/// `header_name` is validated by Envoy only as non-empty without NUL/CR/LF; a name our
/// header map cannot hold can never be present, so it simply never hashes.
fn header_key(name: &str, field: &str) -> Result<HeaderKey> {
    if name.is_empty() || has_ctl(name) {
        return Err(RouteError::invalid(
            field,
            "must be a non-empty header name without NUL, CR or LF",
        ));
    }
    Ok(HeaderKey::parse(name, field).unwrap_or(HeaderKey::Never))
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::{
        ConnectionProperties, Cookie, CookieAttribute, FilterState, Header, QueryParameter,
    };
    use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatchAndSubstitute, RegexMatcher};
    use envoy_types::pb::google::protobuf::Duration as PbDuration;
    use http::{HeaderMap, Method as HttpMethod};

    fn view<'a>(path: &'a str, headers: &'a HeaderMap) -> RequestView<'a> {
        RequestView {
            authority: "example.com",
            path,
            method: &HttpMethod::GET,
            headers,
            scheme: "http",
        }
    }

    fn header(name: &str) -> PbHashPolicy {
        PbHashPolicy {
            policy_specifier: Some(PolicySpecifier::Header(Header {
                header_name: name.into(),
                regex_rewrite: None,
            })),
            terminal: false,
        }
    }

    fn query(name: &str) -> PbHashPolicy {
        PbHashPolicy {
            policy_specifier: Some(PolicySpecifier::QueryParameter(QueryParameter {
                name: name.into(),
            })),
            terminal: false,
        }
    }

    fn source_ip(on: bool) -> PbHashPolicy {
        PbHashPolicy {
            policy_specifier: Some(PolicySpecifier::ConnectionProperties(
                ConnectionProperties { source_ip: on },
            )),
            terminal: false,
        }
    }

    fn cookie(name: &str, ttl: Option<i64>) -> PbHashPolicy {
        PbHashPolicy {
            policy_specifier: Some(PolicySpecifier::Cookie(Cookie {
                name: name.into(),
                ttl: ttl.map(|s| PbDuration {
                    seconds: s,
                    nanos: 0,
                }),
                path: "/p".into(),
                attributes: vec![
                    CookieAttribute {
                        name: "SameSite".into(),
                        value: "Strict".into(),
                    },
                    CookieAttribute {
                        name: "Secure".into(),
                        value: String::new(),
                    },
                ],
            })),
            terminal: false,
        }
    }

    fn hdrs(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn compile(p: &[PbHashPolicy]) -> HashPolicy {
        HashPolicy::compile(p, "hash_policy").unwrap()
    }

    fn downstream() -> Downstream {
        Downstream {
            remote: "10.0.0.1:12345".parse().unwrap(),
            local: "10.0.0.2:8080".parse().unwrap(),
        }
    }

    #[test]
    fn xxhash64_reference_values() {
        // Published xxHash64 test vectors (seed 0).
        assert_eq!(xxh64(b"", 0), 0xef46db3751d8e999);
        assert_eq!(xxh64(b"a", 0), 0xd24ec4f1a98c6e5b);
        assert_eq!(xxh64(b"abc", 0), 0x44bc2cf5ad770999);
    }

    #[test]
    fn header_values_sorted_and_concatenated() {
        let p = compile(&[header("x-user")]);
        let h = hdrs(&[("x-user", "bob")]);
        assert_eq!(
            p.generate(&view("/", &h), None).hash,
            Some(xxh64(b"bob", 0))
        );
        let ab = hdrs(&[("x-user", "b"), ("x-user", "a")]);
        let ba = hdrs(&[("x-user", "a"), ("x-user", "b")]);
        let expect = Some(xxh64(b"ab", 0));
        assert_eq!(p.generate(&view("/", &ab), None).hash, expect);
        assert_eq!(p.generate(&view("/", &ba), None).hash, expect);
        assert_eq!(p.generate(&view("/", &HeaderMap::new()), None).hash, None);
        // Pseudo-headers come from the request view.
        let a = compile(&[header(":authority")]);
        assert_eq!(
            a.generate(&view("/", &HeaderMap::new()), None).hash,
            Some(xxh64(b"example.com", 0))
        );
    }

    #[test]
    fn header_regex_rewrite_applies_before_hashing() {
        let p = compile(&[PbHashPolicy {
            policy_specifier: Some(PolicySpecifier::Header(Header {
                header_name: "x-id".into(),
                regex_rewrite: Some(RegexMatchAndSubstitute {
                    pattern: Some(RegexMatcher {
                        regex: "-[0-9]+$".into(),
                        ..Default::default()
                    }),
                    substitution: String::new(),
                }),
            })),
            terminal: false,
        }]);
        let h = hdrs(&[("x-id", "user-42")]);
        assert_eq!(
            p.generate(&view("/", &h), None).hash,
            Some(xxh64(b"user", 0))
        );
    }

    #[test]
    fn policies_combine_by_rotate_xor_and_terminal_stops() {
        let h = hdrs(&[("x-a", "1"), ("x-b", "2")]);
        let (a, b) = (xxh64(b"1", 0), xxh64(b"2", 0));
        let both = compile(&[header("x-a"), header("x-b")]);
        assert_eq!(
            both.generate(&view("/", &h), None).hash,
            Some(a.rotate_left(1) ^ b)
        );
        // The same rule twice does not cancel out.
        let twice = compile(&[header("x-a"), header("x-a")]);
        assert_eq!(
            twice.generate(&view("/", &h), None).hash,
            Some(a.rotate_left(1) ^ a)
        );
        let mut first = header("x-a");
        first.terminal = true;
        let term = compile(&[first.clone(), header("x-b")]);
        assert_eq!(term.generate(&view("/", &h), None).hash, Some(a));
        // A terminal policy that produced nothing does not stop evaluation...
        let none = hdrs(&[("x-b", "2")]);
        assert_eq!(term.generate(&view("/", &none), None).hash, Some(b));
        // ...but one after an earlier hash does, even if it produced nothing itself.
        let mut missing = header("x-missing");
        missing.terminal = true;
        let p = compile(&[header("x-a"), missing, header("x-b")]);
        assert_eq!(p.generate(&view("/", &h), None).hash, Some(a));
    }

    #[test]
    fn query_parameter_first_value_not_decoded() {
        let p = compile(&[query("u")]);
        let h = HeaderMap::new();
        let hash = |path| p.generate(&view(path, &h), None).hash;
        assert_eq!(hash("/x?a=1&u=a%20b&u=z"), Some(xxh64(b"a%20b", 0)));
        assert_eq!(hash("/x?u"), Some(xxh64(b"", 0)));
        assert_eq!(hash("/x?uu=1"), None);
        assert_eq!(hash("/x"), None);
    }

    #[test]
    fn source_ip_hashes_address_without_port() {
        let p = compile(&[source_ip(true)]);
        let h = HeaderMap::new();
        assert_eq!(
            p.generate(&view("/", &h), Some(downstream())).hash,
            Some(xxh64(b"10.0.0.1", 0))
        );
        assert_eq!(p.generate(&view("/", &h), None).hash, None);
        let v6 = Downstream {
            remote: "[2001:db8::1]:1".parse().unwrap(),
            local: "[::1]:2".parse().unwrap(),
        };
        assert_eq!(
            p.generate(&view("/", &h), Some(v6)).hash,
            Some(xxh64(b"2001:db8::1", 0))
        );
        // `source_ip: false` is no policy at all.
        assert!(compile(&[source_ip(false)]).is_empty());
    }

    #[test]
    fn cookie_present_absent_and_generated() {
        let p = compile(&[cookie("session", Some(3600))]);
        let h = hdrs(&[("cookie", "a=1; session=\"abc\"")]);
        let out = p.generate(&view("/", &h), Some(downstream()));
        assert_eq!(out.hash, Some(xxh64(b"abc", 0)));
        assert!(out.set_cookies.is_empty());

        let none = HeaderMap::new();
        let out = p.generate(&view("/", &none), Some(downstream()));
        let value = format!("{:016x}", xxh64(b"10.0.0.1:1234510.0.0.2:8080", 0));
        assert_eq!(value.len(), 16);
        assert_eq!(out.hash, Some(xxh64(value.as_bytes(), 0)));
        assert_eq!(
            out.set_cookies,
            vec![format!(
                "session=\"{value}\"; Max-Age=3600; Path=/p; SameSite=Strict; Secure; HttpOnly"
            )]
        );

        // Without ttl nothing is generated.
        let p = compile(&[cookie("session", None)]);
        assert_eq!(
            p.generate(&view("/", &none), Some(downstream())),
            RequestHash::default()
        );
        // A zero ttl makes a session cookie (no Max-Age).
        let p = compile(&[cookie("s", Some(0))]);
        let out = p.generate(&view("/", &none), Some(downstream()));
        assert!(out.set_cookies[0].starts_with(&format!("s=\"{value}\"; Path=/p;")));
    }

    #[test]
    fn filter_state_never_hashes_and_invalid_policies_are_rejected() {
        let fs = PbHashPolicy {
            policy_specifier: Some(PolicySpecifier::FilterState(FilterState {
                key: "k".into(),
            })),
            terminal: false,
        };
        let p = compile(&[fs]);
        assert_eq!(p.generate(&view("/", &HeaderMap::new()), None).hash, None);

        let unset = PbHashPolicy::default();
        let e = HashPolicy::compile(&[unset], "route.hash_policy").unwrap_err();
        assert_eq!(e.field(), "route.hash_policy[0]");
        let e = HashPolicy::compile(&[header("")], "hp").unwrap_err();
        assert_eq!(e.field(), "hp[0].header.header_name");
        let e = HashPolicy::compile(&[query("")], "hp").unwrap_err();
        assert_eq!(e.field(), "hp[0].query_parameter.name");
        let e = HashPolicy::compile(&[cookie("", None)], "hp").unwrap_err();
        assert_eq!(e.field(), "hp[0].cookie.name");
    }
}
