//! Compiled route actions.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source::Specifier};
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, HedgePolicy, RetryPolicy, RouteAction, WeightedCluster,
    route_action::{
        self, ClusterNotFoundResponseCode, ClusterSpecifier as PbClusterSpecifier,
        HostRewriteSpecifier, InternalRedirectAction, RequestMirrorPolicy,
    },
    weighted_cluster::{RandomValueSpecifier, cluster_weight},
};
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration};
use http::{HeaderName, StatusCode};

use crate::error::{Result, RouteError};
use crate::hash_policy::HashPolicy;
use crate::headers::HeaderMutations;
use crate::matcher::Fraction;
use crate::redirect::Redirect;
use crate::request::{RequestView, header_name, strip_query_and_fragment};
use crate::rewrite::{PathRewrite, RegexSubstitution};

/// Envoy's route timeout when `timeout` is unset.
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);
/// Envoy's default `max_direct_response_body_size_bytes`.
pub const DEFAULT_MAX_DIRECT_RESPONSE_BODY: u32 = 4096;

/// What to do with a matched request.
#[derive(Debug, Clone)]
pub enum Action {
    Forward(Box<Forward>),
    Redirect(Redirect),
    Direct {
        status: StatusCode,
        body: Option<Bytes>,
    },
    /// Envoy's `non_forwarding_action`: the route matches but the router does not forward
    /// (used with filters that terminate the request themselves).
    NonForwarding,
}

/// One entry of `weighted_clusters`.
#[derive(Debug, Clone)]
pub struct WeightedClusterEntry {
    pub target: ClusterTarget,
    pub weight: u32,
    pub request_headers: HeaderMutations,
    pub response_headers: HeaderMutations,
    pub host_rewrite_literal: Option<String>,
    pub typed_per_filter_config: HashMap<String, Any>,
}

/// A cluster given by name or read from a request header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterTarget {
    Name(String),
    /// Cluster named by the first value of this request header. A missing header yields an
    /// empty cluster name, which the proxy must treat as "cluster not found" and answer
    /// with `Forward::cluster_not_found_response_code` (503 by default; the proto comment
    /// mentioning 404 predates that setting).
    Header(HeaderName),
}

impl ClusterTarget {
    fn resolve<'a>(&'a self, req: &RequestView<'_>) -> Cow<'a, str> {
        match self {
            Self::Name(n) => Cow::Borrowed(n),
            Self::Header(h) => Cow::Owned(
                req.first_header(h)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default(),
            ),
        }
    }
}

/// Weighted clusters, compiled.
#[derive(Debug, Clone)]
pub struct Weighted {
    pub clusters: Vec<WeightedClusterEntry>,
    /// Sum of weights; > 0 and <= u32::MAX (Envoy's limits).
    pub total: u64,
    /// `random_value_specifier.header_name`: a u64 in this header replaces the random value.
    pub random_header: Option<HeaderName>,
}

impl Weighted {
    /// Envoy's pick: `random % total` falls into one cluster's cumulative weight interval.
    pub fn pick(&self, random: u64) -> &WeightedClusterEntry {
        let selected = random % self.total;
        let mut end = 0u64;
        for c in &self.clusters {
            end += u64::from(c.weight);
            if selected < end {
                return c;
            }
        }
        // Unreachable when total == sum of weights (guaranteed at compile); fall back to the
        // last entry rather than panic.
        &self.clusters[self.clusters.len() - 1]
    }

    fn random_for(&self, req: &RequestView<'_>, random: u64) -> u64 {
        self.random_header
            .as_ref()
            .and_then(|h| req.first_header(h))
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(random)
    }
}

/// `cluster_specifier` of a route action.
#[derive(Debug, Clone)]
pub enum ClusterSpecifier {
    Cluster(String),
    Header(HeaderName),
    Weighted(Weighted),
}

/// The upstream cluster chosen for a request.
#[derive(Debug, Clone)]
pub struct ClusterChoice<'a> {
    /// Empty if it came from a missing header (see [`ClusterTarget::Header`]).
    pub name: Cow<'a, str>,
    pub weighted: Option<&'a WeightedClusterEntry>,
}

impl ClusterSpecifier {
    /// Resolves the cluster. `random` must be the same value used for route matching
    /// (Envoy uses one random value per request for both).
    pub fn resolve<'a>(&'a self, req: &RequestView<'_>, random: u64) -> ClusterChoice<'a> {
        match self {
            Self::Cluster(n) => ClusterChoice {
                name: Cow::Borrowed(n),
                weighted: None,
            },
            Self::Header(h) => ClusterChoice {
                name: ClusterTarget::Header(h.clone())
                    .resolve(req)
                    .into_owned()
                    .into(),
                weighted: None,
            },
            Self::Weighted(w) => {
                let entry = w.pick(w.random_for(req, random));
                ClusterChoice {
                    name: entry.target.resolve(req),
                    weighted: Some(entry),
                }
            }
        }
    }
}

/// Host header rewrite of a route action.
#[derive(Debug, Clone)]
pub enum HostRewrite {
    Literal(String),
    /// `auto_host_rewrite`: the proxy replaces Host with the chosen upstream host's hostname.
    Auto,
    /// First value of this request header; an empty/missing value leaves Host unchanged.
    Header(HeaderName),
    /// Substitution on the path without query and fragment.
    PathRegex(RegexSubstitution),
}

/// A request mirroring policy.
#[derive(Debug, Clone)]
pub struct MirrorPolicy {
    pub target: ClusterTarget,
    pub fraction: Option<Fraction>,
    pub trace_sampled: Option<bool>,
    pub disable_shadow_host_suffix_append: bool,
    pub host_rewrite_literal: Option<String>,
    /// Raw proto, for `request_headers_mutations` (not compiled here).
    pub proto: RequestMirrorPolicy,
}

/// A compiled forwarding action (`route`).
#[derive(Debug, Clone)]
pub struct Forward {
    pub cluster: ClusterSpecifier,
    pub cluster_not_found_response_code: StatusCode,
    pub(crate) path_rewrite: Option<PathRewrite>,
    pub host_rewrite: Option<HostRewrite>,
    pub append_x_forwarded_host: bool,
    /// Upstream timeout: `None` means disabled (configured as 0). Unset defaults to 15s.
    pub timeout: Option<Duration>,
    /// Raw per-route idle timeout: `None` unset, `Some(ZERO)` disables the HCM one too.
    pub idle_timeout: Option<Duration>,
    /// Effective mirror policies: the most specific non-empty list among route, virtual
    /// host and route configuration (Envoy does not merge them).
    pub mirror_policies: Arc<[MirrorPolicy]>,
    /// Effective retry policy: the route's, else the virtual host's.
    pub retry_policy: Option<RetryPolicy>,
    /// Effective hedge policy: the route's, else the virtual host's.
    pub hedge_policy: Option<HedgePolicy>,
    pub hash_policy: Vec<route_action::HashPolicy>,
    /// `hash_policy`, compiled: the request hash for consistent-hashing balancers.
    pub hash: HashPolicy,
    pub max_stream_duration: Option<route_action::MaxStreamDuration>,
    pub upgrade_configs: Vec<route_action::UpgradeConfig>,
    /// The raw action for everything else (priority, rate_limits, max_grpc_timeout, ...).
    pub proto: RouteAction,
}

impl Forward {
    /// Clusters to mirror this request to. `random` decides `runtime_fraction`.
    pub fn mirrors<'a>(
        &'a self,
        req: &'a RequestView<'_>,
        random: u64,
    ) -> impl Iterator<Item = (&'a MirrorPolicy, Cow<'a, str>)> + 'a {
        self.mirror_policies.iter().filter_map(move |p| {
            if !p.fraction.is_none_or(|f| f.enabled(random)) {
                return None;
            }
            // A header-named mirror with no header does not mirror (documented by Envoy).
            let name = p.target.resolve(req);
            (!name.is_empty()).then_some((p, name))
        })
    }

    /// The new Host value, if any rewrite applies. Route-level rewrites win over a weighted
    /// cluster's `host_rewrite_literal` (Envoy applies the cluster's first, then the
    /// route's). `Auto` is reported as `None`: the proxy handles it (see `host_rewrite`).
    pub fn rewritten_host<'a>(
        &'a self,
        req: &RequestView<'a>,
        cluster: Option<&'a WeightedClusterEntry>,
    ) -> Option<Cow<'a, str>> {
        let route_level = match &self.host_rewrite {
            Some(HostRewrite::Literal(h)) => Some(Cow::Borrowed(h.as_str())),
            Some(HostRewrite::Header(h)) => req
                .first_header(h)
                .filter(|v| !v.is_empty())
                .map(String::from_utf8_lossy),
            Some(HostRewrite::PathRegex(r)) => Some(Cow::Owned(
                r.replace_all(strip_query_and_fragment(req.path)),
            )),
            Some(HostRewrite::Auto) | None => None,
        };
        route_level.or_else(|| {
            cluster
                .and_then(|c| c.host_rewrite_literal.as_deref())
                .map(Cow::Borrowed)
        })
    }
}

pub(crate) struct ForwardInputs<'a> {
    pub(crate) inherited_mirrors: &'a Arc<[MirrorPolicy]>,
    pub(crate) vhost_retry: Option<&'a RetryPolicy>,
    pub(crate) vhost_hedge: Option<&'a HedgePolicy>,
}

// Deprecated fields are still honoured/rejected as Envoy does.
#[allow(deprecated)]
pub(crate) fn compile_forward(
    a: &RouteAction,
    inputs: &ForwardInputs<'_>,
    field: &str,
) -> Result<Forward> {
    let f = |name: &str| format!("{field}.{name}");
    let unsupported = |name: &str| Err(RouteError::unsupported(f(name)));
    if a.path_rewrite_policy.is_some() {
        return unsupported("path_rewrite_policy");
    }
    if !a.path_rewrite.is_empty() {
        return unsupported("path_rewrite");
    }
    if a.internal_redirect_policy.is_some() {
        return unsupported("internal_redirect_policy");
    }
    if a.internal_redirect_action == InternalRedirectAction::HandleInternalRedirect as i32 {
        return unsupported("internal_redirect_action");
    }
    if a.retry_policy_typed_config.is_some() {
        return unsupported("retry_policy_typed_config");
    }
    let cluster = match &a.cluster_specifier {
        Some(PbClusterSpecifier::Cluster(c)) if c.is_empty() => {
            return Err(RouteError::invalid(f("cluster"), "must not be empty"));
        }
        Some(PbClusterSpecifier::Cluster(c)) => ClusterSpecifier::Cluster(c.clone()),
        Some(PbClusterSpecifier::ClusterHeader(h)) => {
            if h.is_empty() {
                return Err(RouteError::invalid(
                    f("cluster_header"),
                    "must not be empty",
                ));
            }
            ClusterSpecifier::Header(header_name(h, &f("cluster_header"))?)
        }
        Some(PbClusterSpecifier::WeightedClusters(w)) => {
            ClusterSpecifier::Weighted(compile_weighted(w, &f("weighted_clusters"))?)
        }
        Some(PbClusterSpecifier::ClusterSpecifierPlugin(_)) => {
            return unsupported("cluster_specifier_plugin");
        }
        Some(PbClusterSpecifier::InlineClusterSpecifierPlugin(_)) => {
            return unsupported("inline_cluster_specifier_plugin");
        }
        None => {
            return Err(RouteError::invalid(
                field,
                "one of cluster, cluster_header, weighted_clusters is required",
            ));
        }
    };
    let cluster_not_found_response_code =
        match ClusterNotFoundResponseCode::try_from(a.cluster_not_found_response_code) {
            Ok(ClusterNotFoundResponseCode::ServiceUnavailable) => StatusCode::SERVICE_UNAVAILABLE,
            Ok(ClusterNotFoundResponseCode::NotFound) => StatusCode::NOT_FOUND,
            Ok(ClusterNotFoundResponseCode::InternalServerError) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            Err(_) => {
                return Err(RouteError::invalid(
                    f("cluster_not_found_response_code"),
                    "unknown value",
                ));
            }
        };
    let path_rewrite = match (&a.regex_rewrite, a.prefix_rewrite.is_empty()) {
        (Some(_), false) => {
            return Err(RouteError::invalid(
                field,
                "only one of prefix_rewrite and regex_rewrite may be specified",
            ));
        }
        (Some(r), true) => Some(PathRewrite::Regex(RegexSubstitution::compile(
            r,
            &f("regex_rewrite"),
        )?)),
        (None, false) => Some(PathRewrite::Prefix(a.prefix_rewrite.as_str().into())),
        (None, true) => None,
    };
    let host_rewrite = match &a.host_rewrite_specifier {
        None => None,
        Some(HostRewriteSpecifier::HostRewriteLiteral(h)) if h.is_empty() => None,
        Some(HostRewriteSpecifier::HostRewriteLiteral(h)) => Some(HostRewrite::Literal(h.clone())),
        Some(HostRewriteSpecifier::AutoHostRewrite(b)) => b.value.then_some(HostRewrite::Auto),
        Some(HostRewriteSpecifier::HostRewriteHeader(h)) if h.is_empty() => None,
        Some(HostRewriteSpecifier::HostRewriteHeader(h)) => Some(HostRewrite::Header(header_name(
            h,
            &f("host_rewrite_header"),
        )?)),
        Some(HostRewriteSpecifier::HostRewritePathRegex(r)) => Some(HostRewrite::PathRegex(
            RegexSubstitution::compile(r, &f("host_rewrite_path_regex"))?,
        )),
        Some(HostRewriteSpecifier::HostRewrite(_)) => return unsupported("host_rewrite"),
    };
    let mirror_policies = if a.request_mirror_policies.is_empty() {
        inputs.inherited_mirrors.clone()
    } else {
        compile_mirrors(&a.request_mirror_policies, &f("request_mirror_policies"))?
    };
    let timeout = match &a.timeout {
        None => Some(DEFAULT_ROUTE_TIMEOUT),
        Some(d) => Some(duration(d, &f("timeout"))?).filter(|d| !d.is_zero()),
    };
    let idle_timeout = a
        .idle_timeout
        .as_ref()
        .map(|d| duration(d, &f("idle_timeout")))
        .transpose()?;
    Ok(Forward {
        cluster,
        cluster_not_found_response_code,
        path_rewrite,
        host_rewrite,
        append_x_forwarded_host: a.append_x_forwarded_host,
        timeout,
        idle_timeout,
        mirror_policies,
        retry_policy: a
            .retry_policy
            .clone()
            .or_else(|| inputs.vhost_retry.cloned()),
        hedge_policy: a.hedge_policy.or_else(|| inputs.vhost_hedge.copied()),
        hash_policy: a.hash_policy.clone(),
        hash: HashPolicy::compile(&a.hash_policy, &f("hash_policy"))?,
        max_stream_duration: a.max_stream_duration,
        upgrade_configs: a.upgrade_configs.clone(),
        proto: a.clone(),
    })
}

fn compile_weighted(w: &WeightedCluster, field: &str) -> Result<Weighted> {
    if w.clusters.is_empty() {
        return Err(RouteError::invalid(
            format!("{field}.clusters"),
            "must have at least one cluster",
        ));
    }
    let random_header = match &w.random_value_specifier {
        Some(RandomValueSpecifier::HeaderName(h)) if !h.is_empty() => {
            Some(header_name(h, &format!("{field}.header_name"))?)
        }
        Some(RandomValueSpecifier::UseHashPolicy(b)) if b.value => {
            return Err(RouteError::unsupported(format!("{field}.use_hash_policy")));
        }
        _ => None,
    };
    let mut clusters = Vec::with_capacity(w.clusters.len());
    let mut total: u64 = 0;
    for (i, c) in w.clusters.iter().enumerate() {
        let cf = format!("{field}.clusters[{i}]");
        let target = match (c.name.is_empty(), c.cluster_header.is_empty()) {
            (false, true) => ClusterTarget::Name(c.name.clone()),
            (true, false) => ClusterTarget::Header(header_name(
                &c.cluster_header,
                &format!("{cf}.cluster_header"),
            )?),
            (true, true) => {
                return Err(RouteError::invalid(
                    cf,
                    "at least one of name or cluster_header need to be specified",
                ));
            }
            (false, false) => {
                return Err(RouteError::invalid(
                    cf,
                    "only one of name or cluster_header can be specified",
                ));
            }
        };
        let weight = c.weight.map_or(0, |w| w.value);
        total += u64::from(weight);
        let host_rewrite_literal = match &c.host_rewrite_specifier {
            Some(cluster_weight::HostRewriteSpecifier::HostRewriteLiteral(h)) if !h.is_empty() => {
                Some(h.clone())
            }
            _ => None,
        };
        clusters.push(WeightedClusterEntry {
            target,
            weight,
            request_headers: HeaderMutations::compile(
                &cf,
                "request_headers_to_add",
                &c.request_headers_to_add,
                "request_headers_to_remove",
                &c.request_headers_to_remove,
            )?,
            response_headers: HeaderMutations::compile(
                &cf,
                "response_headers_to_add",
                &c.response_headers_to_add,
                "response_headers_to_remove",
                &c.response_headers_to_remove,
            )?,
            host_rewrite_literal,
            typed_per_filter_config: c.typed_per_filter_config.clone(),
        });
    }
    if total == 0 {
        return Err(RouteError::invalid(
            format!("{field}.clusters"),
            "sum of weights in the weighted_cluster must be greater than 0",
        ));
    }
    if total > u64::from(u32::MAX) {
        return Err(RouteError::invalid(
            format!("{field}.clusters"),
            "sum of weights in the weighted_cluster must not exceed 4294967295",
        ));
    }
    Ok(Weighted {
        clusters,
        total,
        random_header,
    })
}

pub(crate) fn compile_mirrors(
    policies: &[RequestMirrorPolicy],
    field: &str,
) -> Result<Arc<[MirrorPolicy]>> {
    policies
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let pf = format!("{field}[{i}]");
            let target = match (p.cluster.is_empty(), p.cluster_header.is_empty()) {
                (false, true) => ClusterTarget::Name(p.cluster.clone()),
                (true, false) => ClusterTarget::Header(header_name(
                    &p.cluster_header,
                    &format!("{pf}.cluster_header"),
                )?),
                (true, true) => {
                    return Err(RouteError::invalid(
                        pf,
                        "exactly one of cluster and cluster_header must be specified",
                    ));
                }
                (false, false) => {
                    return Err(RouteError::invalid(
                        pf,
                        "only one of cluster and cluster_header can be specified",
                    ));
                }
            };
            let fraction = p
                .runtime_fraction
                .as_ref()
                .map(|r| Fraction::compile(r, &format!("{pf}.runtime_fraction")))
                .transpose()?;
            Ok(MirrorPolicy {
                target,
                fraction,
                trace_sampled: p.trace_sampled.map(|b| b.value),
                disable_shadow_host_suffix_append: p.disable_shadow_host_suffix_append
                    || !p.host_rewrite_literal.is_empty(),
                host_rewrite_literal: (!p.host_rewrite_literal.is_empty())
                    .then(|| p.host_rewrite_literal.clone()),
                proto: p.clone(),
            })
        })
        .collect()
}

pub(crate) fn compile_direct(
    d: &DirectResponseAction,
    max_body: u32,
    field: &str,
) -> Result<Action> {
    if d.body_format.is_some() {
        return Err(RouteError::unsupported(format!("{field}.body_format")));
    }
    let status = u16::try_from(d.status)
        .ok()
        .filter(|s| (200..600).contains(s))
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or_else(|| RouteError::invalid(format!("{field}.status"), "must be in [200, 600)"))?;
    let body = d
        .body
        .as_ref()
        .map(|b| data_source(b, &format!("{field}.body")))
        .transpose()?;
    if let Some(b) = &body
        && b.len() > max_body as usize
    {
        return Err(RouteError::invalid(
            format!("{field}.body"),
            format!(
                "response body size is {} bytes; maximum is {max_body}",
                b.len()
            ),
        ));
    }
    Ok(Action::Direct { status, body })
}

/// Reads a `DataSource` once, at compile time (file and environment variable included).
fn data_source(d: &DataSource, field: &str) -> Result<Bytes> {
    match &d.specifier {
        Some(Specifier::InlineString(s)) => Ok(Bytes::copy_from_slice(s.as_bytes())),
        Some(Specifier::InlineBytes(b)) => Ok(Bytes::copy_from_slice(b)),
        Some(Specifier::Filename(p)) => std::fs::read(p).map(Bytes::from).map_err(|e| {
            RouteError::invalid(
                format!("{field}.filename"),
                format!("cannot read {p:?}: {e}"),
            )
        }),
        Some(Specifier::EnvironmentVariable(v)) => {
            std::env::var(v).map(Bytes::from).map_err(|_| {
                RouteError::invalid(
                    format!("{field}.environment_variable"),
                    format!("environment variable {v:?} is not set"),
                )
            })
        }
        None => Err(RouteError::invalid(field, "a data source is required")),
    }
}

fn duration(d: &PbDuration, field: &str) -> Result<Duration> {
    let secs = u64::try_from(d.seconds).ok();
    let nanos = u32::try_from(d.nanos).ok().filter(|n| *n < 1_000_000_000);
    match (secs, nanos) {
        (Some(s), Some(n)) => Ok(Duration::new(s, n)),
        _ => Err(RouteError::invalid(
            field,
            "must be a non-negative duration",
        )),
    }
}

pub(crate) fn compile_redirect_action(
    r: &envoy_types::pb::envoy::config::route::v3::RedirectAction,
    matched_prefix_len: Option<usize>,
    field: &str,
) -> Result<Action> {
    Ok(Action::Redirect(Redirect::compile(
        r,
        matched_prefix_len,
        field,
    )?))
}
