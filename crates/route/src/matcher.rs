//! Compiled `RouteMatch`: path specifier plus headers, query parameters, cookies, gRPC and
//! runtime fraction. All criteria must hold (logical AND).

use envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent;
use envoy_types::pb::envoy::config::route::v3::{
    CookieMatcher, HeaderMatcher, QueryParameterMatcher, RouteMatch,
    header_matcher::HeaderMatchSpecifier, query_parameter_matcher::QueryParameterMatchSpecifier,
    route_match::PathSpecifier,
};
use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;
use http::{HeaderName, Method};

use crate::error::{Result, RouteError};
use crate::request::{HeaderKey, RequestView, strip_query_and_fragment};
use crate::string_match::{StringMatch, full_match_regex};

/// How the route's path specifier matches; also decides what `prefix_rewrite` replaces.
#[derive(Debug, Clone)]
pub(crate) enum PathMatch {
    Prefix(Box<str>),
    Exact(Box<str>),
    Regex(regex::bytes::Regex),
    SeparatedPrefix(Box<str>),
    Connect,
}

impl PathMatch {
    /// Length of the request-path prefix that `prefix_rewrite` replaces. `None` means the
    /// whole path without query (regex and CONNECT routes).
    pub(crate) fn matched_prefix_len(&self) -> Option<usize> {
        match self {
            Self::Prefix(p) | Self::Exact(p) | Self::SeparatedPrefix(p) => Some(p.len()),
            Self::Regex(_) | Self::Connect => None,
        }
    }
}

#[derive(Debug, Clone)]
enum HeaderCheck {
    Value(StringMatch),
    Range { start: i64, end: i64 },
    Present(bool),
}

#[derive(Debug, Clone)]
struct HeaderMatch {
    key: HeaderKey,
    check: HeaderCheck,
    invert: bool,
    missing_as_empty: bool,
}

#[derive(Debug, Clone)]
struct QueryMatch {
    name: Box<str>,
    /// `None`: presence check.
    value: Option<StringMatch>,
}

#[derive(Debug, Clone)]
struct CookieMatch {
    name: Box<str>,
    value: StringMatch,
    invert: bool,
}

/// A fraction N/D evaluated as Envoy's `featureEnabled`: `random % D < N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fraction {
    pub numerator: u64,
    pub denominator: u64,
}

impl Fraction {
    pub(crate) fn compile(r: &RuntimeFractionalPercent, field: &str) -> Result<Self> {
        let d = r
            .default_value
            .as_ref()
            .ok_or_else(|| RouteError::invalid(format!("{field}.default_value"), "is required"))?;
        let denominator = match DenominatorType::try_from(d.denominator) {
            Ok(DenominatorType::Hundred) => 100,
            Ok(DenominatorType::TenThousand) => 10_000,
            Ok(DenominatorType::Million) => 1_000_000,
            Err(_) => {
                return Err(RouteError::invalid(
                    format!("{field}.default_value.denominator"),
                    format!("unknown value {}", d.denominator),
                ));
            }
        };
        Ok(Self {
            numerator: u64::from(d.numerator),
            denominator,
        })
    }

    pub fn enabled(&self, random: u64) -> bool {
        random % self.denominator < self.numerator
    }
}

#[derive(Debug, Clone)]
pub(crate) struct RouteMatcher {
    pub(crate) path: PathMatch,
    case_sensitive: bool,
    headers: Vec<HeaderMatch>,
    query: Vec<QueryMatch>,
    cookies: Vec<CookieMatch>,
    runtime: Option<Fraction>,
    grpc: bool,
}

impl RouteMatcher {
    pub(crate) fn compile(m: &RouteMatch, field: &str) -> Result<Self> {
        let unsupported = |name: &str| Err(RouteError::unsupported(format!("{field}.{name}")));
        if m.tls_context.is_some() {
            return unsupported("tls_context");
        }
        if !m.dynamic_metadata.is_empty() {
            return unsupported("dynamic_metadata");
        }
        if !m.filter_state.is_empty() {
            return unsupported("filter_state");
        }
        let case_sensitive = m.case_sensitive.is_none_or(|b| b.value);
        let path = match &m.path_specifier {
            Some(PathSpecifier::Prefix(p)) => PathMatch::Prefix(p.as_str().into()),
            Some(PathSpecifier::Path(p)) => PathMatch::Exact(p.as_str().into()),
            Some(PathSpecifier::SafeRegex(r)) => {
                PathMatch::Regex(full_match_regex(r, &format!("{field}.safe_regex"))?)
            }
            Some(PathSpecifier::ConnectMatcher(_)) => PathMatch::Connect,
            Some(PathSpecifier::PathSeparatedPrefix(p)) => {
                // Proto rule `^[^?#]+[^?#/]$`.
                let ok = !p.is_empty() && !p.contains(['?', '#']) && !p.ends_with('/');
                if !ok {
                    return Err(RouteError::invalid(
                        format!("{field}.path_separated_prefix"),
                        "must be non-empty, contain no '?' or '#', and not end with '/'",
                    ));
                }
                PathMatch::SeparatedPrefix(p.as_str().into())
            }
            Some(PathSpecifier::PathMatchPolicy(_)) => return unsupported("path_match_policy"),
            None => {
                return Err(RouteError::invalid(
                    field,
                    "one of prefix, path, safe_regex, connect_matcher, path_separated_prefix is required",
                ));
            }
        };
        let headers = m
            .headers
            .iter()
            .enumerate()
            .map(|(i, h)| compile_header(h, &format!("{field}.headers[{i}]")))
            .collect::<Result<_>>()?;
        let query = m
            .query_parameters
            .iter()
            .enumerate()
            .map(|(i, q)| compile_query(q, &format!("{field}.query_parameters[{i}]")))
            .collect::<Result<_>>()?;
        let cookies = m
            .cookies
            .iter()
            .enumerate()
            .map(|(i, c)| compile_cookie(c, &format!("{field}.cookies[{i}]")))
            .collect::<Result<_>>()?;
        let runtime = m
            .runtime_fraction
            .as_ref()
            .map(|r| Fraction::compile(r, &format!("{field}.runtime_fraction")))
            .transpose()?;
        Ok(Self {
            path,
            case_sensitive,
            headers,
            query,
            cookies,
            runtime,
            grpc: m.grpc.is_some(),
        })
    }

    /// `path` is the request path as matchers see it (after optional path-parameter
    /// stripping), still including the query.
    pub(crate) fn matches(&self, req: &RequestView<'_>, path: &str, random: u64) -> bool {
        // Cheapest and most selective first; the result is a pure AND so order is free.
        self.path_matches(req, path)
            && self.runtime.is_none_or(|f| f.enabled(random))
            && (!self.grpc || is_grpc(req))
            && self.headers.iter().all(|h| h.matches(req))
            && self.query_matches(req)
            && self.cookies.iter().all(|c| c.matches(req))
    }

    fn path_matches(&self, req: &RequestView<'_>, path: &str) -> bool {
        let path = strip_query_and_fragment(path);
        let cs = self.case_sensitive;
        match &self.path {
            PathMatch::Prefix(p) => starts_with(path, p, cs),
            PathMatch::Exact(p) => path.len() == p.len() && starts_with(path, p, cs),
            PathMatch::Regex(re) => re.is_match(path.as_bytes()),
            PathMatch::SeparatedPrefix(p) => {
                starts_with(path, p, cs)
                    && (path.len() == p.len() || path.as_bytes()[p.len()] == b'/')
            }
            PathMatch::Connect => *req.method == Method::CONNECT,
        }
    }

    fn query_matches(&self, req: &RequestView<'_>) -> bool {
        if self.query.is_empty() {
            return true;
        }
        let query = req.query().unwrap_or("");
        self.query.iter().all(|q| {
            // Envoy considers only the first occurrence of a key and does not URL-decode.
            let Some(value) = first_query_value(query, &q.name) else {
                return false;
            };
            q.value.as_ref().is_none_or(|m| m.matches(value.as_bytes()))
        })
    }
}

fn starts_with(path: &str, prefix: &str, case_sensitive: bool) -> bool {
    let (p, x) = (path.as_bytes(), prefix.as_bytes());
    p.len() >= x.len()
        && if case_sensitive {
            &p[..x.len()] == x
        } else {
            p[..x.len()].eq_ignore_ascii_case(x)
        }
}

/// Envoy's `Grpc::Common::hasGrpcContentType`.
fn is_grpc(req: &RequestView<'_>) -> bool {
    let Some(ct) = req.first_header(&http::header::CONTENT_TYPE) else {
        return false;
    };
    const GRPC: &[u8] = b"application/grpc";
    ct.starts_with(GRPC) && matches!(ct.get(GRPC.len()), None | Some(b'+') | Some(b';'))
}

fn first_query_value<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

impl HeaderMatch {
    fn matches(&self, req: &RequestView<'_>) -> bool {
        let value = req.header_for_match(&self.key);
        if let HeaderCheck::Present(want) = self.check {
            return (value.is_some() == want) != self.invert;
        }
        let value: &[u8] = match &value {
            Some(v) => v,
            // A missing header fails the match regardless of invert_match, unless it is
            // to be treated as empty.
            None if self.missing_as_empty => b"",
            None => return false,
        };
        let mut m = self.check.matches(value);
        // Envoy 1.40 (observed in the differential suite): with a repeated
        // header, a value check also succeeds when any single value matches,
        // not only the comma-joined whole.
        if !m && let HeaderKey::Name(name) = &self.key {
            let values = req.headers.get_all(name);
            if values.iter().nth(1).is_some() {
                m = values.iter().any(|v| self.check.matches(v.as_bytes()));
            }
        }
        m != self.invert
    }
}

impl HeaderCheck {
    fn matches(&self, value: &[u8]) -> bool {
        match self {
            Self::Value(sm) => sm.matches(value),
            Self::Range { start, end } => std::str::from_utf8(value)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
                .is_some_and(|n| n >= *start && n < *end),
            Self::Present(_) => true,
        }
    }
}

// The deprecated HeaderMatcher variants are still valid xDS and Envoy honours them.
#[allow(deprecated)]
fn compile_header(h: &HeaderMatcher, field: &str) -> Result<HeaderMatch> {
    let key = HeaderKey::parse(&h.name, &format!("{field}.name"))?;
    let non_empty = |s: &str, name: &str| -> Result<()> {
        if s.is_empty() {
            Err(RouteError::invalid(
                format!("{field}.{name}"),
                "must not be empty",
            ))
        } else {
            Ok(())
        }
    };
    let check = match &h.header_match_specifier {
        // No specifier means a presence match.
        None => HeaderCheck::Present(true),
        Some(HeaderMatchSpecifier::PresentMatch(b)) => HeaderCheck::Present(*b),
        Some(HeaderMatchSpecifier::ExactMatch(s)) => HeaderCheck::Value(StringMatch::exact(s)),
        Some(HeaderMatchSpecifier::PrefixMatch(s)) => {
            non_empty(s, "prefix_match")?;
            HeaderCheck::Value(StringMatch::prefix(s))
        }
        Some(HeaderMatchSpecifier::SuffixMatch(s)) => {
            non_empty(s, "suffix_match")?;
            HeaderCheck::Value(StringMatch::suffix(s))
        }
        Some(HeaderMatchSpecifier::ContainsMatch(s)) => {
            non_empty(s, "contains_match")?;
            HeaderCheck::Value(StringMatch::contains(s))
        }
        Some(HeaderMatchSpecifier::SafeRegexMatch(r)) => HeaderCheck::Value(StringMatch::regex(
            full_match_regex(r, &format!("{field}.safe_regex_match"))?,
        )),
        Some(HeaderMatchSpecifier::RangeMatch(r)) => HeaderCheck::Range {
            start: r.start,
            end: r.end,
        },
        Some(HeaderMatchSpecifier::StringMatch(s)) => {
            HeaderCheck::Value(StringMatch::compile(s, &format!("{field}.string_match"))?)
        }
    };
    Ok(HeaderMatch {
        key,
        check,
        invert: h.invert_match,
        missing_as_empty: h.treat_missing_header_as_empty,
    })
}

fn compile_query(q: &QueryParameterMatcher, field: &str) -> Result<QueryMatch> {
    if q.name.is_empty() {
        return Err(RouteError::invalid(
            format!("{field}.name"),
            "must not be empty",
        ));
    }
    let value = match &q.query_parameter_match_specifier {
        Some(QueryParameterMatchSpecifier::StringMatch(s)) => {
            Some(StringMatch::compile(s, &format!("{field}.string_match"))?)
        }
        // Envoy treats `present_match` (true *or* false) and no specifier as "must be present".
        Some(QueryParameterMatchSpecifier::PresentMatch(_)) | None => None,
    };
    Ok(QueryMatch {
        name: q.name.as_str().into(),
        value,
    })
}

fn compile_cookie(c: &CookieMatcher, field: &str) -> Result<CookieMatch> {
    if c.name.is_empty() {
        return Err(RouteError::invalid(
            format!("{field}.name"),
            "must not be empty",
        ));
    }
    let sm = c
        .string_match
        .as_ref()
        .ok_or_else(|| RouteError::invalid(format!("{field}.string_match"), "is required"))?;
    Ok(CookieMatch {
        name: c.name.as_str().into(),
        value: StringMatch::compile(sm, &format!("{field}.string_match"))?,
        invert: c.invert_match,
    })
}

impl CookieMatch {
    fn matches(&self, req: &RequestView<'_>) -> bool {
        let m = cookie_value(req, &self.name).is_some_and(|v| self.value.matches(v));
        m != self.invert
    }
}

/// Envoy's `parseCookieValue`: first cookie of that name across all `Cookie` headers,
/// surrounding double quotes removed.
pub(crate) fn cookie_value<'a>(req: &RequestView<'a>, name: &str) -> Option<&'a [u8]> {
    static COOKIE: HeaderName = http::header::COOKIE;
    for header in req.headers.get_all(&COOKIE) {
        for pair in header.as_bytes().split(|b| *b == b';') {
            let pair = pair.trim_ascii();
            let Some(eq) = pair.iter().position(|b| *b == b'=') else {
                continue;
            };
            if &pair[..eq] == name.as_bytes() {
                let v = &pair[eq + 1..];
                if v.len() >= 2 && v[0] == b'"' && v[v.len() - 1] == b'"' {
                    return Some(&v[1..v.len() - 1]);
                }
                return Some(v);
            }
        }
    }
    None
}

#[cfg(test)]
#[allow(deprecated)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::route::v3::route_match::{
        ConnectMatcher, GrpcRouteMatchOptions,
    };
    use envoy_types::pb::envoy::r#type::matcher::v3::{
        RegexMatcher, StringMatcher, string_matcher::MatchPattern,
    };
    use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, Int64Range};
    use envoy_types::pb::google::protobuf::BoolValue;
    use http::HeaderMap;

    fn rm(ps: PathSpecifier) -> RouteMatch {
        RouteMatch {
            path_specifier: Some(ps),
            ..Default::default()
        }
    }

    fn check(m: &RouteMatch, path: &str, headers: &HeaderMap) -> bool {
        check_with(m, path, headers, &Method::GET, 0)
    }

    fn check_with(
        m: &RouteMatch,
        path: &str,
        headers: &HeaderMap,
        method: &Method,
        random: u64,
    ) -> bool {
        let c = RouteMatcher::compile(m, "m").unwrap();
        let req = RequestView {
            authority: "host",
            path,
            method,
            headers,
            scheme: "http",
        };
        c.matches(&req, path, random)
    }

    fn none() -> HeaderMap {
        HeaderMap::new()
    }

    fn hdrs(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn prefix_ignores_query_and_is_case_sensitive_by_default() {
        let m = rm(PathSpecifier::Prefix("/api".into()));
        assert!(check(&m, "/api/v1?x=1", &none()));
        assert!(check(&m, "/apiary", &none()));
        assert!(!check(&m, "/API/v1", &none()));
        assert!(
            !check(&m, "/ap?i", &none()),
            "query is not part of the path"
        );
        let mut ci = m.clone();
        ci.case_sensitive = Some(BoolValue { value: false });
        assert!(check(&ci, "/API/v1", &none()));
    }

    #[test]
    fn exact_path_ignores_query_and_fragment() {
        let m = rm(PathSpecifier::Path("/a".into()));
        assert!(check(&m, "/a", &none()));
        assert!(check(&m, "/a?b=c", &none()));
        assert!(check(&m, "/a#frag", &none()));
        assert!(!check(&m, "/a/", &none()));
        assert!(!check(&m, "/A", &none()));
    }

    #[test]
    fn safe_regex_is_a_full_match_on_the_path_without_query() {
        let m = rm(PathSpecifier::SafeRegex(RegexMatcher {
            regex: r"/users/\d+".into(),
            engine_type: None,
        }));
        assert!(check(&m, "/users/42?full=1", &none()));
        assert!(!check(&m, "/users/42/x", &none()));
        assert!(!check(&m, "/v1/users/42", &none()));
    }

    #[test]
    fn path_separated_prefix_requires_segment_boundary() {
        let m = rm(PathSpecifier::PathSeparatedPrefix("/api/dev".into()));
        for ok in [
            "/api/dev",
            "/api/dev/",
            "/api/dev/v1",
            "/api/dev?param=true",
            "/api/dev#f",
        ] {
            assert!(check(&m, ok, &none()), "{ok}");
        }
        assert!(!check(&m, "/api/developer", &none()));
        let bad = rm(PathSpecifier::PathSeparatedPrefix("/api/".into()));
        assert!(RouteMatcher::compile(&bad, "m").is_err());
    }

    #[test]
    fn connect_matcher_only_matches_connect() {
        let m = rm(PathSpecifier::ConnectMatcher(ConnectMatcher {}));
        assert!(check_with(&m, "", &none(), &Method::CONNECT, 0));
        assert!(!check_with(&m, "/", &none(), &Method::GET, 0));
    }

    #[test]
    fn header_matchers_all_must_hold() {
        let mut m = rm(PathSpecifier::Prefix("/".into()));
        m.headers = vec![
            HeaderMatcher {
                name: "x-env".into(),
                header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
                    ignore_case: true,
                    match_pattern: Some(MatchPattern::Exact("PROD".into())),
                })),
                ..Default::default()
            },
            HeaderMatcher {
                name: ":method".into(),
                header_match_specifier: Some(HeaderMatchSpecifier::ExactMatch("GET".into())),
                ..Default::default()
            },
        ];
        assert!(check(&m, "/", &hdrs(&[("x-env", "prod")])));
        assert!(!check(&m, "/", &hdrs(&[("x-env", "dev")])));
        assert!(!check(&m, "/", &none()));
    }

    fn one_header(
        spec: Option<HeaderMatchSpecifier>,
        invert: bool,
        missing_empty: bool,
    ) -> RouteMatch {
        let mut m = rm(PathSpecifier::Prefix("/".into()));
        m.headers = vec![HeaderMatcher {
            name: "x-h".into(),
            header_match_specifier: spec,
            invert_match: invert,
            treat_missing_header_as_empty: missing_empty,
        }];
        m
    }

    #[test]
    fn header_without_specifier_is_a_presence_match() {
        let m = one_header(None, false, false);
        assert!(check(&m, "/", &hdrs(&[("x-h", "")])));
        assert!(!check(&m, "/", &none()));
    }

    #[test]
    fn present_match_false_and_invert() {
        let absent = one_header(
            Some(HeaderMatchSpecifier::PresentMatch(false)),
            false,
            false,
        );
        assert!(check(&absent, "/", &none()));
        assert!(!check(&absent, "/", &hdrs(&[("x-h", "1")])));
        let inverted = one_header(Some(HeaderMatchSpecifier::PresentMatch(true)), true, false);
        assert!(check(&inverted, "/", &none()));
    }

    #[test]
    fn inverted_value_match_still_fails_on_missing_header() {
        let m = one_header(
            Some(HeaderMatchSpecifier::ExactMatch("a".into())),
            true,
            false,
        );
        assert!(check(&m, "/", &hdrs(&[("x-h", "b")])));
        assert!(!check(&m, "/", &hdrs(&[("x-h", "a")])));
        assert!(!check(&m, "/", &none()), "missing header is not inverted");
    }

    #[test]
    fn treat_missing_header_as_empty() {
        let re = Some(HeaderMatchSpecifier::SafeRegexMatch(RegexMatcher {
            regex: "^$".into(),
            engine_type: None,
        }));
        assert!(check(&one_header(re.clone(), false, true), "/", &none()));
        assert!(!check(&one_header(re, false, false), "/", &none()));
        let range = Some(HeaderMatchSpecifier::RangeMatch(Int64Range {
            start: 0,
            end: 10,
        }));
        assert!(check(&one_header(range, true, true), "/", &none()));
    }

    #[test]
    fn range_match_is_half_open_and_needs_an_integer() {
        let m = one_header(
            Some(HeaderMatchSpecifier::RangeMatch(Int64Range {
                start: -10,
                end: 0,
            })),
            false,
            false,
        );
        assert!(check(&m, "/", &hdrs(&[("x-h", "-1")])));
        assert!(check(&m, "/", &hdrs(&[("x-h", "-10")])));
        for bad in ["0", "somestring", "10.9", "-1somestring", ""] {
            assert!(!check(&m, "/", &hdrs(&[("x-h", bad)])), "{bad}");
        }
    }

    #[test]
    fn multiple_header_values_are_joined_with_commas() {
        let m = one_header(
            Some(HeaderMatchSpecifier::ExactMatch("a,b".into())),
            false,
            false,
        );
        assert!(check(&m, "/", &hdrs(&[("x-h", "a"), ("x-h", "b")])));
        let m = one_header(
            Some(HeaderMatchSpecifier::SuffixMatch("b".into())),
            false,
            false,
        );
        assert!(check(&m, "/", &hdrs(&[("x-h", "a"), ("x-h", "b")])));
        let m = one_header(
            Some(HeaderMatchSpecifier::ExactMatch("a".into())),
            false,
            false,
        );
        assert!(check(&m, "/", &hdrs(&[("x-h", "a"), ("x-h", "b")])));
    }

    #[test]
    fn prefix_suffix_contains_header_match() {
        let h = hdrs(&[("x-h", "abcdef")]);
        for (spec, want) in [
            (HeaderMatchSpecifier::PrefixMatch("abc".into()), true),
            (HeaderMatchSpecifier::PrefixMatch("bc".into()), false),
            (HeaderMatchSpecifier::SuffixMatch("def".into()), true),
            (HeaderMatchSpecifier::ContainsMatch("cde".into()), true),
            (HeaderMatchSpecifier::ContainsMatch("xyz".into()), false),
        ] {
            assert_eq!(
                check(&one_header(Some(spec.clone()), false, false), "/", &h),
                want,
                "{spec:?}"
            );
        }
        let empty = one_header(
            Some(HeaderMatchSpecifier::PrefixMatch(String::new())),
            false,
            false,
        );
        assert!(RouteMatcher::compile(&empty, "m").is_err());
    }

    #[test]
    fn host_header_matcher_never_sees_a_value_like_envoy() {
        let mut m = rm(PathSpecifier::Prefix("/".into()));
        m.headers = vec![HeaderMatcher {
            name: "host".into(),
            ..Default::default()
        }];
        assert!(!check(&m, "/", &hdrs(&[("host", "a")])));
        m.headers[0].name = ":authority".into();
        assert!(check(&m, "/", &none()));
    }

    fn q(name: &str, spec: Option<QueryParameterMatchSpecifier>) -> QueryParameterMatcher {
        QueryParameterMatcher {
            name: name.into(),
            query_parameter_match_specifier: spec,
        }
    }

    #[test]
    fn query_parameters_first_value_no_decoding() {
        let mut m = rm(PathSpecifier::Prefix("/".into()));
        m.query_parameters = vec![q(
            "debug",
            Some(QueryParameterMatchSpecifier::StringMatch(StringMatcher {
                ignore_case: false,
                match_pattern: Some(MatchPattern::Exact("1".into())),
            })),
        )];
        assert!(check(&m, "/x?a=b&debug=1", &none()));
        assert!(
            !check(&m, "/x?debug=2&debug=1", &none()),
            "first value only"
        );
        assert!(!check(&m, "/x", &none()));
        m.query_parameters[0] = q(
            "v",
            Some(QueryParameterMatchSpecifier::StringMatch(StringMatcher {
                ignore_case: false,
                match_pattern: Some(MatchPattern::Exact("a%20b".into())),
            })),
        );
        assert!(check(&m, "/?v=a%20b", &none()));
    }

    #[test]
    fn query_present_match_ignores_its_boolean() {
        let mut m = rm(PathSpecifier::Prefix("/".into()));
        m.query_parameters = vec![q(
            "flag",
            Some(QueryParameterMatchSpecifier::PresentMatch(false)),
        )];
        assert!(check(&m, "/?flag", &none()));
        assert!(!check(&m, "/?other", &none()));
    }

    #[test]
    fn grpc_matches_grpc_content_types_only() {
        let mut m = rm(PathSpecifier::Prefix("/".into()));
        m.grpc = Some(GrpcRouteMatchOptions {});
        assert!(check(
            &m,
            "/",
            &hdrs(&[("content-type", "application/grpc")])
        ));
        assert!(check(
            &m,
            "/",
            &hdrs(&[("content-type", "application/grpc+proto")])
        ));
        assert!(!check(
            &m,
            "/",
            &hdrs(&[("content-type", "application/grpc-web")])
        ));
        assert!(!check(
            &m,
            "/",
            &hdrs(&[("content-type", "application/json")])
        ));
        assert!(!check(&m, "/", &none()));
    }

    #[test]
    fn runtime_fraction_uses_random_modulo_denominator() {
        let mut m = rm(PathSpecifier::Prefix("/".into()));
        m.runtime_fraction = Some(RuntimeFractionalPercent {
            default_value: Some(FractionalPercent {
                numerator: 30,
                denominator: DenominatorType::Hundred as i32,
            }),
            runtime_key: "ignored".into(),
        });
        assert!(check_with(&m, "/", &none(), &Method::GET, 29));
        assert!(!check_with(&m, "/", &none(), &Method::GET, 30));
        assert!(check_with(&m, "/", &none(), &Method::GET, 129));
    }

    #[test]
    fn cookies_match_and_invert() {
        let mut m = rm(PathSpecifier::Prefix("/".into()));
        m.cookies = vec![CookieMatcher {
            name: "session".into(),
            string_match: Some(StringMatcher {
                ignore_case: false,
                match_pattern: Some(MatchPattern::Prefix("abc".into())),
            }),
            invert_match: false,
        }];
        assert!(check(
            &m,
            "/",
            &hdrs(&[("cookie", "a=1; session=\"abcd\"")])
        ));
        assert!(!check(&m, "/", &hdrs(&[("cookie", "session=zzz")])));
        m.cookies[0].invert_match = true;
        assert!(
            check(&m, "/", &none()),
            "absent cookie matches when inverted"
        );
    }

    #[test]
    fn unsupported_match_fields_are_rejected() {
        let mut m = rm(PathSpecifier::Prefix("/".into()));
        m.tls_context = Some(Default::default());
        let e = RouteMatcher::compile(&m, "virtual_hosts[0].routes[1].match").unwrap_err();
        assert_eq!(e.field(), "virtual_hosts[0].routes[1].match.tls_context");
        assert!(matches!(e, RouteError::Unsupported { .. }));
    }
}
