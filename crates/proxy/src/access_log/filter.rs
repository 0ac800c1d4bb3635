//! `AccessLogFilter`: which finished streams are logged.

use envoy_types::pb::envoy::config::accesslog::v3::{
    AccessLogFilter, ComparisonFilter, access_log_filter::FilterSpecifier, comparison_filter,
};
use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;

use super::Entry;
use crate::http::flags::{Flag, ResponseFlags};
use crate::rbac::header::{HeaderMatcher, HttpView};

#[derive(Debug, Clone, Copy)]
pub(crate) enum Cmp {
    Eq,
    Ge,
    Le,
    Ne,
}

#[derive(Debug)]
pub(crate) enum Filter {
    Status(Cmp, u64),
    Duration(Cmp, u64),
    NotHealthCheck,
    /// Sampled: `numerator` out of `denominator`.
    Runtime {
        numerator: u64,
        denominator: u64,
    },
    And(Vec<Self>),
    Or(Vec<Self>),
    Header(HeaderMatcher),
    /// Any of these flags; empty means any flag at all.
    ResponseFlag(Vec<Flag>),
    /// Envoy's CEL extension filter.
    Cel(expr::Expr),
}

type Error = (String, String);

fn comparison(c: Option<&ComparisonFilter>) -> Result<(Cmp, u64), Error> {
    let c = c.ok_or_else(|| (".comparison".to_string(), "is required".to_string()))?;
    let op = match comparison_filter::Op::try_from(c.op) {
        Ok(comparison_filter::Op::Eq) => Cmp::Eq,
        Ok(comparison_filter::Op::Ge) => Cmp::Ge,
        Ok(comparison_filter::Op::Le) => Cmp::Le,
        Ok(comparison_filter::Op::Ne) => Cmp::Ne,
        Err(_) => return Err((".comparison.op".into(), format!("unknown op {}", c.op))),
    };
    let value = c
        .value
        .as_ref()
        .ok_or_else(|| (".comparison.value".to_string(), "is required".to_string()))?;
    Ok((op, u64::from(value.default_value)))
}

fn cmp(op: Cmp, actual: u64, want: u64) -> bool {
    match op {
        Cmp::Eq => actual == want,
        Cmp::Ge => actual >= want,
        Cmp::Le => actual <= want,
        Cmp::Ne => actual != want,
    }
}

impl Filter {
    /// Compiles a filter; errors carry the sub-field path (`.status_code_filter...`).
    pub(crate) fn compile(f: &AccessLogFilter) -> Result<Self, Error> {
        let nested = |name: &str, e: Error| (format!(".{name}{}", e.0), e.1);
        Ok(match &f.filter_specifier {
            Some(FilterSpecifier::StatusCodeFilter(s)) => {
                let (op, v) = comparison(s.comparison.as_ref())
                    .map_err(|e| nested("status_code_filter", e))?;
                Self::Status(op, v)
            }
            Some(FilterSpecifier::DurationFilter(d)) => {
                let (op, v) =
                    comparison(d.comparison.as_ref()).map_err(|e| nested("duration_filter", e))?;
                Self::Duration(op, v)
            }
            Some(FilterSpecifier::NotHealthCheckFilter(_)) => Self::NotHealthCheck,
            Some(FilterSpecifier::RuntimeFilter(r)) => {
                // Runtime overrides do not exist here: the default applies.
                let (numerator, denominator) = match &r.percent_sampled {
                    Some(p) => (
                        u64::from(p.numerator),
                        match DenominatorType::try_from(p.denominator) {
                            Ok(DenominatorType::TenThousand) => 10_000,
                            Ok(DenominatorType::Million) => 1_000_000,
                            _ => 100,
                        },
                    ),
                    // Envoy's default without percent_sampled: 0%.
                    None => (0, 100),
                };
                Self::Runtime {
                    numerator,
                    denominator,
                }
            }
            Some(FilterSpecifier::AndFilter(a)) => Self::And(
                a.filters
                    .iter()
                    .enumerate()
                    .map(|(i, f)| {
                        Self::compile(f).map_err(|e| nested(&format!("and_filter.filters[{i}]"), e))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            Some(FilterSpecifier::OrFilter(o)) => Self::Or(
                o.filters
                    .iter()
                    .enumerate()
                    .map(|(i, f)| {
                        Self::compile(f).map_err(|e| nested(&format!("or_filter.filters[{i}]"), e))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            Some(FilterSpecifier::HeaderFilter(h)) => {
                let header = h.header.as_ref().ok_or_else(|| {
                    (
                        ".header_filter.header".to_string(),
                        "is required".to_string(),
                    )
                })?;
                Self::Header(
                    HeaderMatcher::compile(header)
                        .map_err(|(at, m)| (format!(".header_filter.header.{at}"), m))?,
                )
            }
            Some(FilterSpecifier::ResponseFlagFilter(r)) => {
                let mut flags = Vec::new();
                for (i, name) in r.flags.iter().enumerate() {
                    let flag = Flag::from_code(name).ok_or_else(|| {
                        (
                            format!(".response_flag_filter.flags[{i}]"),
                            format!("value must be in list of response flags (got '{name}')"),
                        )
                    })?;
                    flags.push(flag);
                }
                Self::ResponseFlag(flags)
            }
            Some(FilterSpecifier::TraceableFilter(_)) => {
                return Err((
                    ".traceable_filter".into(),
                    "tracing is not supported".into(),
                ));
            }
            Some(FilterSpecifier::GrpcStatusFilter(_)) => {
                return Err((".grpc_status_filter".into(), "is not supported".into()));
            }
            Some(FilterSpecifier::ExtensionFilter(x)) => {
                use envoy_types::pb::envoy::config::accesslog::v3::extension_filter::ConfigType;
                match &x.config_type {
                    Some(ConfigType::TypedConfig(any))
                        if any.type_url.rsplit('/').next() == Some(super::cel::TYPE) =>
                    {
                        Self::Cel(
                            super::cel::compile(any).map_err(|(f, m)| {
                                (format!(".extension_filter.typed_config{f}"), m)
                            })?,
                        )
                    }
                    _ => {
                        return Err((
                            ".extension_filter".into(),
                            "only the CEL extension filter is supported".into(),
                        ));
                    }
                }
            }
            Some(FilterSpecifier::MetadataFilter(_)) => {
                return Err((".metadata_filter".into(), "is not supported".into()));
            }
            Some(FilterSpecifier::LogTypeFilter(_)) => {
                return Err((".log_type_filter".into(), "is not supported".into()));
            }
            None => return Err((String::new(), "a filter is required".into())),
        })
    }

    pub(crate) fn matches(&self, e: &Entry) -> bool {
        match self {
            Self::Status(op, v) => cmp(*op, u64::from(e.response_code.unwrap_or(0)), *v),
            Self::Duration(op, v) => {
                let d = e.duration.map_or(0, |d| d.as_millis() as u64);
                cmp(*op, d, *v)
            }
            // This proxy answers no health checks itself.
            Self::NotHealthCheck => true,
            Self::Runtime {
                numerator,
                denominator,
            } => {
                *numerator >= *denominator
                    || (*numerator > 0 && rand::random_range(0..*denominator) < *numerator)
            }
            Self::And(fs) => fs.iter().all(|f| f.matches(e)),
            Self::Or(fs) => fs.iter().any(|f| f.matches(e)),
            Self::Header(m) => {
                let empty = http::HeaderMap::new();
                let view = HttpView {
                    authority: e.authority.as_deref().unwrap_or(""),
                    path: e.path.as_deref().unwrap_or(""),
                    method: e.method.as_deref().unwrap_or(""),
                    scheme: e.scheme.unwrap_or(""),
                    headers: e.request_headers.as_ref().unwrap_or(&empty),
                };
                m.matches(Some(&view))
            }
            Self::ResponseFlag(flags) => flag_match(&e.flags, flags),
            Self::Cel(x) => super::cel::matches(x, e),
        }
    }
}

fn flag_match(have: &ResponseFlags, want: &[Flag]) -> bool {
    if want.is_empty() {
        return !have.is_empty();
    }
    want.iter().any(|f| have.has(*f))
}
