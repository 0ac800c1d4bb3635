//! Envoy's `config.route.v3.HeaderMatcher` as RBAC uses it
//! (`HeaderUtility::matchHeaders`), with the route crate's semantics:
//! pseudo-headers come from the request line, several values of one header
//! are joined with `,`, a header named `host` never has a value (Envoy keeps
//! it as `:authority`), and a missing header fails a value match whatever
//! `invert_match` says.

use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher as HeaderMatcherProto, header_matcher::HeaderMatchSpecifier,
};
use http::{HeaderMap, HeaderName};

use super::metadata::compile_string_matcher;
use crate::matcher::StringMatch;

/// What header matchers look at: the request line and the headers. The
/// network filter has none (Envoy hands it an empty header map).
#[derive(Debug, Clone, Copy)]
pub struct HttpView<'a> {
    pub authority: &'a str,
    /// `:path` as received, query included.
    pub path: &'a str,
    pub method: &'a str,
    pub scheme: &'a str,
    pub headers: &'a HeaderMap,
}

#[derive(Debug, Clone)]
enum Key {
    Pseudo(String),
    Name(HeaderName),
    Never,
}

#[derive(Debug, Clone)]
enum Check {
    Value(StringMatch),
    Range { start: i64, end: i64 },
    Present(bool),
}

#[derive(Debug, Clone)]
pub struct HeaderMatcher {
    key: Key,
    check: Check,
    invert: bool,
    missing_as_empty: bool,
}

impl HeaderMatcher {
    #[allow(deprecated)]
    pub fn compile(h: &HeaderMatcherProto) -> Result<Self, (String, String)> {
        let key = if h.name.is_empty() {
            return Err(("name".into(), "must not be empty".into()));
        } else if h.name.starts_with(':') {
            Key::Pseudo(h.name.to_ascii_lowercase())
        } else if h.name.eq_ignore_ascii_case("host") {
            Key::Never
        } else {
            Key::Name(HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| {
                (
                    "name".to_string(),
                    format!("invalid header name {:?}", h.name),
                )
            })?)
        };
        let non_empty = |s: &str, field: &str| -> Result<(), (String, String)> {
            if s.is_empty() {
                Err((field.to_string(), "must not be empty".into()))
            } else {
                Ok(())
            }
        };
        let literal =
            |pattern: envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern| {
                StringMatch::compile(
                    &envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher {
                        match_pattern: Some(pattern),
                        ignore_case: false,
                    },
                )
            };
        use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern as P;
        let check = match &h.header_match_specifier {
            None => Check::Present(true),
            Some(HeaderMatchSpecifier::PresentMatch(b)) => Check::Present(*b),
            Some(HeaderMatchSpecifier::ExactMatch(s)) => {
                Check::Value(literal(P::Exact(s.clone())).map_err(|e| ("exact_match".into(), e))?)
            }
            Some(HeaderMatchSpecifier::PrefixMatch(s)) => {
                non_empty(s, "prefix_match")?;
                Check::Value(literal(P::Prefix(s.clone())).map_err(|e| ("prefix_match".into(), e))?)
            }
            Some(HeaderMatchSpecifier::SuffixMatch(s)) => {
                non_empty(s, "suffix_match")?;
                Check::Value(literal(P::Suffix(s.clone())).map_err(|e| ("suffix_match".into(), e))?)
            }
            Some(HeaderMatchSpecifier::ContainsMatch(s)) => {
                non_empty(s, "contains_match")?;
                Check::Value(
                    literal(P::Contains(s.clone())).map_err(|e| ("contains_match".into(), e))?,
                )
            }
            Some(HeaderMatchSpecifier::SafeRegexMatch(r)) => Check::Value(
                literal(P::SafeRegex(r.clone())).map_err(|e| ("safe_regex_match".into(), e))?,
            ),
            Some(HeaderMatchSpecifier::RangeMatch(r)) => Check::Range {
                start: r.start,
                end: r.end,
            },
            Some(HeaderMatchSpecifier::StringMatch(s)) => Check::Value(
                compile_string_matcher(s).map_err(|e| ("string_match".to_string(), e))?,
            ),
        };
        Ok(Self {
            key,
            check,
            invert: h.invert_match,
            missing_as_empty: h.treat_missing_header_as_empty,
        })
    }

    pub fn matches(&self, req: Option<&HttpView<'_>>) -> bool {
        let value: Option<std::borrow::Cow<'_, str>> = req.and_then(|r| value_of(r, &self.key));
        if let Check::Present(want) = self.check {
            return (value.is_some() == want) != self.invert;
        }
        let value: &str = match &value {
            Some(v) => v,
            None if self.missing_as_empty => "",
            None => return false,
        };
        let mut m = self.check.matches(value);
        // Like the route matcher (Envoy 1.40): with a repeated header, any
        // single value may also satisfy a value check.
        if !m && let (Key::Name(name), Some(r)) = (&self.key, req) {
            let values = r.headers.get_all(name);
            if values.iter().nth(1).is_some() {
                m = values
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .any(|v| self.check.matches(v));
            }
        }
        m != self.invert
    }
}

impl Check {
    fn matches(&self, value: &str) -> bool {
        match self {
            Self::Value(sm) => sm.matches(value),
            Self::Range { start, end } => {
                value.parse::<i64>().is_ok_and(|n| n >= *start && n < *end)
            }
            Self::Present(_) => true,
        }
    }
}

fn value_of<'a>(r: &HttpView<'a>, key: &Key) -> Option<std::borrow::Cow<'a, str>> {
    use std::borrow::Cow;
    match key {
        Key::Pseudo(p) => match p.as_str() {
            ":authority" => Some(Cow::Borrowed(r.authority)),
            ":path" => Some(Cow::Borrowed(r.path)),
            ":method" => Some(Cow::Borrowed(r.method)),
            ":scheme" => Some(Cow::Borrowed(r.scheme)),
            _ => None,
        },
        Key::Name(name) => {
            let mut values = r.headers.get_all(name).iter();
            let first = values.next()?;
            let first = String::from_utf8_lossy(first.as_bytes());
            match values.next() {
                None => Some(first),
                Some(second) => {
                    let mut joined = first.into_owned();
                    for v in std::iter::once(second).chain(values) {
                        joined.push(',');
                        joined.push_str(&String::from_utf8_lossy(v.as_bytes()));
                    }
                    Some(Cow::Owned(joined))
                }
            }
        }
        Key::Never => None,
    }
}

/// Envoy's `PathMatcher`: a string matcher on `:path` without query and
/// fragment.
#[derive(Debug, Clone)]
pub struct PathMatch(StringMatch);

impl PathMatch {
    pub fn compile(
        p: &envoy_types::pb::envoy::r#type::matcher::v3::PathMatcher,
    ) -> Result<Self, (String, String)> {
        use envoy_types::pb::envoy::r#type::matcher::v3::path_matcher::Rule;
        match &p.rule {
            Some(Rule::Path(sm)) => compile_string_matcher(sm)
                .map(Self)
                .map_err(|e| ("path".to_string(), e)),
            None => Err(("path".into(), "is required".into())),
        }
    }

    pub fn matches(&self, req: Option<&HttpView<'_>>) -> bool {
        let Some(r) = req else {
            return false;
        };
        let path = match r.path.find(['?', '#']) {
            Some(i) => &r.path[..i],
            None => r.path,
        };
        self.0.matches(path)
    }
}
