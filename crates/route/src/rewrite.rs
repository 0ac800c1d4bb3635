//! Path rewriting shared by route actions and redirects.
//!
//! * `prefix_rewrite` replaces the part of the path the route matched: the configured
//!   prefix/path length for prefix, path and path_separated_prefix routes, the whole path
//!   (without query) for regex routes. The query string is kept.
//! * `regex_rewrite` runs RE2-style `GlobalReplace` over the path without query/fragment
//!   and keeps the rest. Substitutions use RE2 syntax: `\0`..`\9` and `\\`.

use envoy_types::pb::envoy::r#type::matcher::v3::RegexMatchAndSubstitute;

use crate::error::{Result, RouteError};
use crate::string_match::search_regex;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(Box<str>),
    Group(usize),
}

/// A compiled `RegexMatchAndSubstitute`.
#[derive(Debug, Clone)]
pub struct RegexSubstitution {
    re: regex::Regex,
    parts: Vec<Part>,
}

impl RegexSubstitution {
    pub(crate) fn compile(m: &RegexMatchAndSubstitute, field: &str) -> Result<Self> {
        let pattern = m
            .pattern
            .as_ref()
            .ok_or_else(|| RouteError::invalid(format!("{field}.pattern"), "is required"))?;
        let re = search_regex(pattern, &format!("{field}.pattern"))?;
        let parts = parse_substitution(&m.substitution, re.captures_len() - 1)
            .map_err(|reason| RouteError::invalid(format!("{field}.substitution"), reason))?;
        Ok(Self { re, parts })
    }

    /// Replaces every non-overlapping match in `input`.
    pub fn replace_all(&self, input: &str) -> String {
        let mut out = String::with_capacity(input.len());
        let mut last = 0;
        for caps in self.re.captures_iter(input) {
            let Some(whole) = caps.get(0) else { continue };
            out.push_str(&input[last..whole.start()]);
            for part in &self.parts {
                match part {
                    Part::Literal(s) => out.push_str(s),
                    Part::Group(g) => {
                        if let Some(m) = caps.get(*g) {
                            out.push_str(m.as_str());
                        }
                    }
                }
            }
            last = whole.end();
        }
        out.push_str(&input[last..]);
        out
    }
}

/// RE2 rewrite strings: `\N` (one digit) inserts group N, `\\` is a backslash, anything else
/// after `\` is invalid. Referencing a group the regex does not have is rejected (RE2 would
/// refuse to rewrite at runtime, so failing at load is the useful behaviour).
fn parse_substitution(s: &str, groups: usize) -> std::result::Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut lit = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            lit.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => lit.push('\\'),
            Some(d) if d.is_ascii_digit() => {
                let n = (d as u8 - b'0') as usize;
                if n > groups {
                    return Err(format!(
                        "substitution requests group \\{n}, but the regex has only {groups} capture group(s)"
                    ));
                }
                if !lit.is_empty() {
                    parts.push(Part::Literal(std::mem::take(&mut lit).into()));
                }
                parts.push(Part::Group(n));
            }
            Some(other) => return Err(format!("invalid rewrite escape \\{other}")),
            None => return Err("substitution ends with a lone backslash".into()),
        }
    }
    if !lit.is_empty() {
        parts.push(Part::Literal(lit.into()));
    }
    Ok(parts)
}

/// Path rewrite configured on a route action or redirect.
#[derive(Debug, Clone)]
pub(crate) enum PathRewrite {
    Prefix(Box<str>),
    Regex(RegexSubstitution),
}

impl PathRewrite {
    /// `matched_prefix_len`: see `PathMatch::matched_prefix_len`.
    pub(crate) fn apply(&self, path: &str, matched_prefix_len: Option<usize>) -> Option<String> {
        let no_query_len = path.find(['?', '#']).unwrap_or(path.len());
        match self {
            Self::Prefix(new) => {
                let n = matched_prefix_len.unwrap_or(no_query_len);
                // Guard against a mismatch between the matched route and the path given.
                if n > path.len() || !path.is_char_boundary(n) {
                    return None;
                }
                let mut out = String::with_capacity(path.len() - n + new.len());
                out.push_str(new);
                out.push_str(&path[n..]);
                Some(out)
            }
            Self::Regex(r) => {
                let mut out = r.replace_all(&path[..no_query_len]);
                out.push_str(&path[no_query_len..]);
                Some(out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher;

    fn subst(pattern: &str, substitution: &str) -> RegexSubstitution {
        RegexSubstitution::compile(
            &RegexMatchAndSubstitute {
                pattern: Some(RegexMatcher {
                    regex: pattern.into(),
                    engine_type: None,
                }),
                substitution: substitution.into(),
            },
            "r",
        )
        .unwrap()
    }

    #[test]
    fn envoy_doc_examples() {
        let s = subst(r"^/service/([^/]+)(/.*)$", r"\2/instance/\1");
        assert_eq!(s.replace_all("/service/foo/v1/api"), "/v1/api/instance/foo");
        let s = subst("one", "two");
        assert_eq!(
            s.replace_all("/xxx/one/yyy/one/zzz"),
            "/xxx/two/yyy/two/zzz"
        );
        let s = subst(r"^(.*?)one(.*)$", r"\1two\2");
        assert_eq!(
            s.replace_all("/xxx/one/yyy/one/zzz"),
            "/xxx/two/yyy/one/zzz"
        );
        let s = subst("(?i)/xxx/", "/yyy/");
        assert_eq!(s.replace_all("/aaa/XxX/bbb"), "/aaa/yyy/bbb");
    }

    #[test]
    fn whole_match_and_escaped_backslash() {
        let s = subst("a+", r"[\0]\\");
        assert_eq!(s.replace_all("xaay"), r"x[aa]\y");
    }

    #[test]
    fn invalid_substitutions_are_rejected() {
        for bad in [r"\1", r"\x", "\\"] {
            let e = RegexSubstitution::compile(
                &RegexMatchAndSubstitute {
                    pattern: Some(RegexMatcher {
                        regex: "abc".into(),
                        engine_type: None,
                    }),
                    substitution: bad.into(),
                },
                "f",
            )
            .unwrap_err();
            assert_eq!(e.field(), "f.substitution", "{bad}");
        }
    }

    #[test]
    fn prefix_rewrite_keeps_the_query() {
        let p = PathRewrite::Prefix("/v2".into());
        assert_eq!(p.apply("/v1/users?x=1", Some(3)).unwrap(), "/v2/users?x=1");
        // Regex-matched routes replace the whole path but keep the query.
        assert_eq!(p.apply("/v1/users?x=1", None).unwrap(), "/v2?x=1");
    }

    #[test]
    fn prefix_rewrite_trailing_slash_pitfall_from_the_docs() {
        // match prefix "/prefix/" + rewrite "/"  => "/prefix/etc" -> "/etc"
        let p = PathRewrite::Prefix("/".into());
        assert_eq!(
            p.apply("/prefix/etc", Some("/prefix/".len())).unwrap(),
            "/etc"
        );
        // match prefix "/prefix" + rewrite "/"  => "/prefix/etc" -> "//etc"
        assert_eq!(
            p.apply("/prefix/etc", Some("/prefix".len())).unwrap(),
            "//etc"
        );
    }

    #[test]
    fn regex_rewrite_only_touches_the_path_part() {
        let p = PathRewrite::Regex(subst("o", "0"));
        assert_eq!(p.apply("/foo?o=o#o", None).unwrap(), "/f00?o=o#o");
    }
}
