//! Dynamic metadata: what filters of one request leave for the filters after
//! them (jwt_authn's verified payload for RBAC), and Envoy's
//! `MetadataMatcher` over it.
//!
//! Values follow `google.protobuf.Struct` semantics: every number is a double.

use envoy_types::pb::envoy::r#type::matcher::v3::{
    DoubleMatcher, ListMatcher, MetadataMatcher as MetadataMatcherProto, StringMatcher,
    ValueMatcher as ValueMatcherProto, double_matcher, list_matcher,
    metadata_matcher::path_segment::Segment, value_matcher,
};
use serde_json::{Map, Value};

use crate::matcher::StringMatch;

/// Per-request dynamic metadata: filter namespace → a struct of fields.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DynamicMetadata {
    namespaces: Map<String, Value>,
}

impl DynamicMetadata {
    /// Envoy's `setDynamicMetadata`: merges `fields` into the namespace,
    /// replacing fields of the same name.
    pub fn merge(&mut self, namespace: &str, fields: Map<String, Value>) {
        let entry = self
            .namespaces
            .entry(namespace.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(existing) = entry {
            existing.extend(fields);
        } else {
            *entry = Value::Object(fields);
        }
    }

    /// One namespace, if any filter wrote to it.
    pub fn namespace(&self, namespace: &str) -> Option<&Map<String, Value>> {
        self.namespaces.get(namespace).and_then(Value::as_object)
    }

    /// The value at `path` inside `namespace` (Envoy's `metadataValue`):
    /// `None` when a key is missing or a step is not a struct.
    pub fn value(&self, namespace: &str, path: &[String]) -> Option<&Value> {
        let mut current = self.namespaces.get(namespace)?;
        for key in path {
            current = current.as_object()?.get(key)?;
        }
        Some(current)
    }

    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty()
    }
}

/// A compiled `envoy.type.matcher.v3.MetadataMatcher`.
#[derive(Debug, Clone)]
pub struct MetadataMatcher {
    filter: String,
    path: Vec<String>,
    value: ValueMatcher,
    invert: bool,
}

#[derive(Debug, Clone)]
enum ValueMatcher {
    Null,
    Double(DoubleMatch),
    String(StringMatch),
    Bool(bool),
    Present(bool),
    ListOneOf(Box<Self>),
    Or(Vec<Self>),
}

#[derive(Debug, Clone, Copy)]
enum DoubleMatch {
    Range(f64, f64),
    Exact(f64),
}

/// Compiles a `StringMatcher` with Envoy's validation (non-empty prefix,
/// suffix and contains; a pattern is required).
pub fn compile_string_matcher(m: &StringMatcher) -> Result<StringMatch, String> {
    use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
    match &m.match_pattern {
        Some(MatchPattern::Prefix(s)) if s.is_empty() => {
            return Err("prefix: must not be empty".into());
        }
        Some(MatchPattern::Suffix(s)) if s.is_empty() => {
            return Err("suffix: must not be empty".into());
        }
        Some(MatchPattern::Contains(s)) if s.is_empty() => {
            return Err("contains: must not be empty".into());
        }
        _ => {}
    }
    StringMatch::compile(m)
}

impl MetadataMatcher {
    pub fn compile(m: &MetadataMatcherProto) -> Result<Self, (String, String)> {
        if m.filter.is_empty() {
            return Err(("filter".into(), "must not be empty".into()));
        }
        if m.path.is_empty() {
            return Err((
                "path".into(),
                "at least one path segment is required".into(),
            ));
        }
        let mut path = Vec::with_capacity(m.path.len());
        for (i, seg) in m.path.iter().enumerate() {
            match &seg.segment {
                Some(Segment::Key(k)) if !k.is_empty() => path.push(k.clone()),
                _ => {
                    return Err((
                        format!("path[{i}].key"),
                        "a non-empty key is required".into(),
                    ));
                }
            }
        }
        let value = m
            .value
            .as_ref()
            .ok_or_else(|| ("value".to_string(), "is required".to_string()))?;
        let value = compile_value(value).map_err(|(f, e)| (join("value", &f), e))?;
        Ok(Self {
            filter: m.filter.clone(),
            path,
            value,
            invert: m.invert,
        })
    }

    pub fn matches(&self, metadata: &DynamicMetadata) -> bool {
        let value = metadata.value(&self.filter, &self.path);
        self.value.matches(value) != self.invert
    }
}

fn join(prefix: &str, field: &str) -> String {
    if field.is_empty() {
        prefix.to_string()
    } else {
        format!("{prefix}.{field}")
    }
}

fn compile_value(v: &ValueMatcherProto) -> Result<ValueMatcher, (String, String)> {
    use value_matcher::MatchPattern;
    Ok(match &v.match_pattern {
        Some(MatchPattern::NullMatch(_)) => ValueMatcher::Null,
        Some(MatchPattern::DoubleMatch(d)) => ValueMatcher::Double(compile_double(d)?),
        Some(MatchPattern::StringMatch(s)) => ValueMatcher::String(
            compile_string_matcher(s).map_err(|e| ("string_match".to_string(), e))?,
        ),
        Some(MatchPattern::BoolMatch(b)) => ValueMatcher::Bool(*b),
        Some(MatchPattern::PresentMatch(b)) => ValueMatcher::Present(*b),
        Some(MatchPattern::ListMatch(l)) => compile_list(l)?,
        Some(MatchPattern::OrMatch(o)) => {
            if o.value_matchers.len() < 2 {
                return Err((
                    "or_match.value_matchers".into(),
                    "at least two matchers are required".into(),
                ));
            }
            let mut out = Vec::with_capacity(o.value_matchers.len());
            for (i, m) in o.value_matchers.iter().enumerate() {
                out.push(
                    compile_value(m).map_err(|(f, e)| {
                        (join(&format!("or_match.value_matchers[{i}]"), &f), e)
                    })?,
                );
            }
            ValueMatcher::Or(out)
        }
        None => return Err((String::new(), "a match pattern is required".into())),
    })
}

fn compile_double(d: &DoubleMatcher) -> Result<DoubleMatch, (String, String)> {
    match &d.match_pattern {
        Some(double_matcher::MatchPattern::Range(r)) => Ok(DoubleMatch::Range(r.start, r.end)),
        Some(double_matcher::MatchPattern::Exact(x)) => Ok(DoubleMatch::Exact(*x)),
        None => Err(("double_match".into(), "a match pattern is required".into())),
    }
}

fn compile_list(l: &ListMatcher) -> Result<ValueMatcher, (String, String)> {
    match &l.match_pattern {
        Some(list_matcher::MatchPattern::OneOf(v)) => Ok(ValueMatcher::ListOneOf(Box::new(
            compile_value(v).map_err(|(f, e)| (join("list_match.one_of", &f), e))?,
        ))),
        None => Err(("list_match".into(), "a match pattern is required".into())),
    }
}

impl ValueMatcher {
    /// `None` is an absent value (protobuf's KIND_NOT_SET).
    fn matches(&self, v: Option<&Value>) -> bool {
        match self {
            Self::Null => matches!(v, Some(Value::Null)),
            Self::Double(d) => match v.and_then(Value::as_f64) {
                Some(x) => match d {
                    DoubleMatch::Range(start, end) => *start <= x && x < *end,
                    DoubleMatch::Exact(e) => *e == x,
                },
                None => false,
            },
            Self::String(s) => matches!(v, Some(Value::String(x)) if s.matches(x)),
            Self::Bool(b) => matches!(v, Some(Value::Bool(x)) if x == b),
            Self::Present(p) => *p && v.is_some(),
            Self::ListOneOf(inner) => match v {
                Some(Value::Array(items)) => items.iter().any(|i| inner.matches(Some(i))),
                _ => false,
            },
            Self::Or(all) => all.iter().any(|m| m.matches(v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::r#type::matcher::v3::{
        metadata_matcher::PathSegment, string_matcher::MatchPattern as S,
    };

    fn key(k: &str) -> PathSegment {
        PathSegment {
            segment: Some(Segment::Key(k.into())),
        }
    }

    fn md() -> DynamicMetadata {
        let mut m = DynamicMetadata::default();
        let payload = serde_json::json!({
            "iss": "https://issuer", "sub": "alice", "exp": 1700000000u64,
            "groups": ["dev", "ops"], "admin": true, "nothing": null
        });
        let mut fields = Map::new();
        fields.insert("payload".into(), payload);
        m.merge("envoy.filters.http.jwt_authn", fields);
        m
    }

    fn matcher(path: &[&str], p: value_matcher::MatchPattern, invert: bool) -> MetadataMatcher {
        MetadataMatcher::compile(&MetadataMatcherProto {
            filter: "envoy.filters.http.jwt_authn".into(),
            path: path.iter().map(|k| key(k)).collect(),
            value: Some(ValueMatcherProto {
                match_pattern: Some(p),
            }),
            invert,
        })
        .expect("compiles")
    }

    fn exact(s: &str) -> StringMatcher {
        StringMatcher {
            match_pattern: Some(S::Exact(s.into())),
            ..Default::default()
        }
    }

    #[test]
    fn string_bool_double_list_and_presence() {
        use value_matcher::MatchPattern as V;
        let m = md();
        assert!(matcher(&["payload", "sub"], V::StringMatch(exact("alice")), false).matches(&m));
        assert!(!matcher(&["payload", "sub"], V::StringMatch(exact("bob")), false).matches(&m));
        assert!(matcher(&["payload", "sub"], V::StringMatch(exact("bob")), true).matches(&m));
        assert!(matcher(&["payload", "admin"], V::BoolMatch(true), false).matches(&m));
        assert!(
            matcher(
                &["payload", "exp"],
                V::DoubleMatch(DoubleMatcher {
                    match_pattern: Some(double_matcher::MatchPattern::Exact(1_700_000_000.0))
                }),
                false
            )
            .matches(&m)
        );
        let one_of = V::ListMatch(Box::new(ListMatcher {
            match_pattern: Some(list_matcher::MatchPattern::OneOf(Box::new(
                ValueMatcherProto {
                    match_pattern: Some(V::StringMatch(exact("ops"))),
                },
            ))),
        }));
        assert!(matcher(&["payload", "groups"], one_of, false).matches(&m));
        assert!(matcher(&["payload", "sub"], V::PresentMatch(true), false).matches(&m));
        assert!(!matcher(&["payload", "missing"], V::PresentMatch(true), false).matches(&m));
        assert!(!matcher(&["payload", "missing"], V::PresentMatch(false), false).matches(&m));
        assert!(
            matcher(
                &["payload", "nothing"],
                V::NullMatch(Default::default()),
                false
            )
            .matches(&m)
        );
        // A missing value is not null.
        assert!(
            !matcher(
                &["payload", "missing"],
                V::NullMatch(Default::default()),
                false
            )
            .matches(&m)
        );
        // A path through a non-struct finds nothing.
        assert!(!matcher(&["payload", "sub", "x"], V::PresentMatch(true), false).matches(&m));
    }

    #[test]
    fn bad_matchers_name_the_field() {
        let err = MetadataMatcher::compile(&MetadataMatcherProto {
            filter: "f".into(),
            path: vec![key("a")],
            value: Some(ValueMatcherProto {
                match_pattern: Some(value_matcher::MatchPattern::StringMatch(StringMatcher {
                    match_pattern: Some(S::SafeRegex(
                        envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher {
                            regex: "(".into(),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                })),
            }),
            invert: false,
        })
        .expect_err("invalid regex");
        assert_eq!(err.0, "value.string_match");
    }
}
