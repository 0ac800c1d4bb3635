//! Compiled `envoy.type.matcher.v3.StringMatcher` / `RegexMatcher`.
//!
//! Matching works on bytes: header values may carry obs-text (non-UTF-8) and Envoy matches
//! them byte-wise, so converting to `&str` first would both allocate and change behaviour.

use envoy_types::pb::envoy::r#type::matcher::v3::{
    RegexMatcher, StringMatcher, string_matcher::MatchPattern,
};

use crate::error::{Result, RouteError};

/// Compiles an Envoy `RegexMatcher` for *full* matching (Envoy's `RegexMatcher` semantics:
/// the whole input must match, not a substring).
pub(crate) fn full_match_regex(m: &RegexMatcher, field: &str) -> Result<regex::bytes::Regex> {
    // Validate the user's pattern on its own first, so the error message refers to the
    // pattern as written rather than to our anchoring wrapper.
    regex::bytes::Regex::new(&m.regex).map_err(|e| RouteError::regex(field, e))?;
    regex::bytes::Regex::new(&format!(r"\A(?:{})\z", m.regex))
        .map_err(|e| RouteError::regex(field, e))
}

/// Compiles a regex used for search/replace (unanchored, like RE2::GlobalReplace).
pub(crate) fn search_regex(m: &RegexMatcher, field: &str) -> Result<regex::Regex> {
    regex::Regex::new(&m.regex).map_err(|e| RouteError::regex(field, e))
}

#[derive(Debug, Clone)]
enum Pattern {
    Exact(Box<[u8]>),
    Prefix(Box<[u8]>),
    Suffix(Box<[u8]>),
    Contains(Box<[u8]>),
    Regex(regex::bytes::Regex),
}

/// A compiled string matcher. When `ignore_case` is set the pattern is stored lowercased
/// and compared with ASCII case folding (as Envoy does), so matching never allocates.
#[derive(Debug, Clone)]
pub(crate) struct StringMatch {
    pattern: Pattern,
    ignore_case: bool,
}

impl StringMatch {
    pub(crate) fn compile(m: &StringMatcher, field: &str) -> Result<Self> {
        let ic = m.ignore_case;
        let fold = |s: &str| -> Box<[u8]> {
            if ic {
                s.to_ascii_lowercase().into_bytes().into_boxed_slice()
            } else {
                s.as_bytes().into()
            }
        };
        // Envoy's proto validation requires non-empty prefix/suffix/contains.
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
        let pattern = match &m.match_pattern {
            Some(MatchPattern::Exact(s)) => Pattern::Exact(fold(s)),
            Some(MatchPattern::Prefix(s)) => {
                non_empty(s, "prefix")?;
                Pattern::Prefix(fold(s))
            }
            Some(MatchPattern::Suffix(s)) => {
                non_empty(s, "suffix")?;
                Pattern::Suffix(fold(s))
            }
            Some(MatchPattern::Contains(s)) => {
                non_empty(s, "contains")?;
                Pattern::Contains(fold(s))
            }
            // ignore_case has no effect on regexes in Envoy; `(?i)` is the way to do that.
            Some(MatchPattern::SafeRegex(r)) => {
                Pattern::Regex(full_match_regex(r, &format!("{field}.safe_regex"))?)
            }
            Some(MatchPattern::Custom(_)) => {
                return Err(RouteError::unsupported(format!("{field}.custom")));
            }
            None => {
                return Err(RouteError::invalid(
                    field,
                    "one of exact, prefix, suffix, safe_regex, contains is required",
                ));
            }
        };
        Ok(Self {
            pattern,
            ignore_case: ic,
        })
    }

    pub(crate) fn exact(s: &str) -> Self {
        Self {
            pattern: Pattern::Exact(s.as_bytes().into()),
            ignore_case: false,
        }
    }

    pub(crate) fn prefix(s: &str) -> Self {
        Self {
            pattern: Pattern::Prefix(s.as_bytes().into()),
            ignore_case: false,
        }
    }

    pub(crate) fn suffix(s: &str) -> Self {
        Self {
            pattern: Pattern::Suffix(s.as_bytes().into()),
            ignore_case: false,
        }
    }

    pub(crate) fn contains(s: &str) -> Self {
        Self {
            pattern: Pattern::Contains(s.as_bytes().into()),
            ignore_case: false,
        }
    }

    pub(crate) fn regex(re: regex::bytes::Regex) -> Self {
        Self {
            pattern: Pattern::Regex(re),
            ignore_case: false,
        }
    }

    pub(crate) fn matches(&self, value: &[u8]) -> bool {
        let ic = self.ignore_case;
        match &self.pattern {
            Pattern::Exact(p) => eq(value, p, ic),
            Pattern::Prefix(p) => value.len() >= p.len() && eq(&value[..p.len()], p, ic),
            Pattern::Suffix(p) => {
                value.len() >= p.len() && eq(&value[value.len() - p.len()..], p, ic)
            }
            Pattern::Contains(p) => contains(value, p, ic),
            Pattern::Regex(re) => re.is_match(value),
        }
    }
}

/// `pattern` is already lowercased when `ignore_case` is set.
fn eq(value: &[u8], pattern: &[u8], ignore_case: bool) -> bool {
    if ignore_case {
        value.eq_ignore_ascii_case(pattern)
    } else {
        value == pattern
    }
}

fn contains(value: &[u8], pattern: &[u8], ignore_case: bool) -> bool {
    if pattern.is_empty() {
        return true;
    }
    value
        .windows(pattern.len())
        .any(|w| eq(w, pattern, ignore_case))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sm(p: MatchPattern, ignore_case: bool) -> StringMatch {
        StringMatch::compile(
            &StringMatcher {
                ignore_case,
                match_pattern: Some(p),
            },
            "m",
        )
        .unwrap()
    }

    fn re(s: &str) -> RegexMatcher {
        RegexMatcher {
            regex: s.into(),
            engine_type: None,
        }
    }

    #[test]
    fn exact_is_case_sensitive_unless_ignore_case() {
        assert!(sm(MatchPattern::Exact("Foo".into()), false).matches(b"Foo"));
        assert!(!sm(MatchPattern::Exact("Foo".into()), false).matches(b"foo"));
        assert!(sm(MatchPattern::Exact("Foo".into()), true).matches(b"fOO"));
    }

    #[test]
    fn prefix_suffix_contains_with_and_without_case() {
        assert!(sm(MatchPattern::Prefix("ab".into()), false).matches(b"abc"));
        assert!(!sm(MatchPattern::Prefix("ab".into()), false).matches(b"Abc"));
        assert!(sm(MatchPattern::Prefix("AB".into()), true).matches(b"abc"));
        assert!(sm(MatchPattern::Suffix("yz".into()), false).matches(b"xyz"));
        assert!(sm(MatchPattern::Suffix("YZ".into()), true).matches(b"xyz"));
        assert!(!sm(MatchPattern::Suffix("xyz".into()), false).matches(b"yz"));
        assert!(sm(MatchPattern::Contains("cd".into()), false).matches(b"abcdef"));
        assert!(sm(MatchPattern::Contains("CD".into()), true).matches(b"abcdef"));
        assert!(!sm(MatchPattern::Contains("cd".into()), false).matches(b"abCdef"));
    }

    #[test]
    fn safe_regex_must_match_the_whole_value() {
        let m = sm(MatchPattern::SafeRegex(re(r"\d{3}")), false);
        assert!(m.matches(b"123"));
        assert!(!m.matches(b"1234"));
        assert!(!m.matches(b"a123"));
        // Alternation must not escape the anchoring.
        let m = sm(MatchPattern::SafeRegex(re("a|b")), false);
        assert!(!m.matches(b"ab"));
        assert!(m.matches(b"b"));
    }

    #[test]
    fn empty_prefix_and_invalid_regex_are_rejected() {
        let err = StringMatch::compile(
            &StringMatcher {
                ignore_case: false,
                match_pattern: Some(MatchPattern::Prefix(String::new())),
            },
            "x",
        )
        .unwrap_err();
        assert_eq!(err.field(), "x.prefix");
        let err = StringMatch::compile(
            &StringMatcher {
                ignore_case: false,
                match_pattern: Some(MatchPattern::SafeRegex(re("("))),
            },
            "x",
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("x.safe_regex: invalid regex"));
    }
}
