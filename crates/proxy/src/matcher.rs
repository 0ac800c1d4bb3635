//! Envoy's `StringMatcher`, compiled once.

use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern};

#[derive(Debug, Clone)]
pub enum StringMatch {
    Exact(String, bool),
    Prefix(String, bool),
    Suffix(String, bool),
    Contains(String, bool),
    Regex(regex::Regex),
}

impl StringMatch {
    pub fn compile(m: &StringMatcher) -> Result<Self, String> {
        let ic = m.ignore_case;
        let fold = |s: &str| {
            if ic {
                s.to_ascii_lowercase()
            } else {
                s.to_string()
            }
        };
        match &m.match_pattern {
            Some(MatchPattern::Exact(s)) => Ok(Self::Exact(fold(s), ic)),
            Some(MatchPattern::Prefix(s)) => Ok(Self::Prefix(fold(s), ic)),
            Some(MatchPattern::Suffix(s)) => Ok(Self::Suffix(fold(s), ic)),
            Some(MatchPattern::Contains(s)) => Ok(Self::Contains(fold(s), ic)),
            Some(MatchPattern::SafeRegex(r)) => regex::Regex::new(&format!("^(?:{})$", r.regex))
                .map(Self::Regex)
                .map_err(|e| format!("invalid regex: {e}")),
            Some(MatchPattern::Custom(_)) => Err("custom string matchers are not supported".into()),
            None => Err("a match pattern is required".into()),
        }
    }

    pub fn matches(&self, value: &str) -> bool {
        fn cmp(value: &str, ic: bool, f: impl Fn(&str) -> bool) -> bool {
            if ic {
                f(&value.to_ascii_lowercase())
            } else {
                f(value)
            }
        }
        match self {
            Self::Exact(s, ic) => cmp(value, *ic, |v| v == s),
            Self::Prefix(s, ic) => cmp(value, *ic, |v| v.starts_with(s.as_str())),
            Self::Suffix(s, ic) => cmp(value, *ic, |v| v.ends_with(s.as_str())),
            Self::Contains(s, ic) => cmp(value, *ic, |v| v.contains(s.as_str())),
            Self::Regex(r) => r.is_match(value),
        }
    }
}
