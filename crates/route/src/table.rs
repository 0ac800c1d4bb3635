//! The compiled route table: virtual hosts, routes, and the three header-mutation levels.

use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::route::v3::{
    Decorator, Route, RouteConfiguration, VirtualHost, route::Action as PbAction,
    virtual_host::TlsRequirementType,
};
use envoy_types::pb::google::protobuf::Any;
use http::{HeaderMap, HeaderName};

use crate::action::{
    Action, ClusterChoice, DEFAULT_MAX_DIRECT_RESPONSE_BODY, ForwardInputs, MirrorPolicy,
    compile_direct, compile_forward, compile_mirrors, compile_redirect_action,
};
use crate::domain::DomainIndex;
use crate::error::{Result, RouteError};
use crate::format::FormatContext;
use crate::headers::{HeaderMutations, Side};
use crate::matcher::RouteMatcher;
use crate::redirect::Redirect;
use crate::request::{RequestView, header_name};

/// `VirtualHost.require_tls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsRequirement {
    None,
    /// Redirect to https unless the request is internal (`x-envoy-internal: true`).
    ExternalOnly,
    All,
}

/// A compiled route.
#[derive(Debug, Clone)]
pub struct RouteEntry {
    pub name: String,
    pub action: Action,
    pub request_headers: HeaderMutations,
    pub response_headers: HeaderMutations,
    pub typed_per_filter_config: HashMap<String, Any>,
    pub decorator: Option<Decorator>,
    /// The raw route, for fields not compiled here (tracing, metadata, ...).
    pub proto: Route,
    /// `None` only for the synthetic `require_tls` redirect.
    matcher: Option<RouteMatcher>,
}

impl RouteEntry {
    /// The upstream `:path` after `prefix_rewrite`/`regex_rewrite`, or `None` if the route
    /// does not rewrite. `path` is the original `:path` with its query string, which is
    /// preserved. (The proxy should then set `x-envoy-original-path`, as Envoy's router.)
    pub fn rewritten_path(&self, path: &str) -> Option<String> {
        let Action::Forward(f) = &self.action else {
            return None;
        };
        let prefix_len = self
            .matcher
            .as_ref()
            .and_then(|m| m.path.matched_prefix_len());
        f.path_rewrite.as_ref()?.apply(path, prefix_len)
    }

    /// True for the redirect Envoy synthesises for `require_tls`. Envoy applies no header
    /// mutations to it; [`RouteTable::apply_request_headers`] and
    /// [`RouteTable::apply_response_headers`] honour that.
    /// Whether the route rewrites the path at all (Envoy then records the
    /// original path even when this request's path comes out unchanged).
    pub fn has_path_rewrite(&self) -> bool {
        matches!(&self.action, Action::Forward(f) if f.path_rewrite.is_some())
    }

    pub fn is_tls_redirect(&self) -> bool {
        self.matcher.is_none()
    }
}

/// A compiled virtual host.
#[derive(Debug, Clone)]
pub struct VirtualHostEntry {
    pub name: String,
    pub domains: Vec<String>,
    pub routes: Vec<RouteEntry>,
    pub request_headers: HeaderMutations,
    pub response_headers: HeaderMutations,
    pub require_tls: TlsRequirement,
    pub typed_per_filter_config: HashMap<String, Any>,
    /// The raw virtual host with `routes` cleared (they live in `routes[..].proto`), for
    /// fields not compiled here (rate_limits, cors, include_request_attempt_count, ...).
    pub proto: VirtualHost,
    tls_redirect: Option<RouteEntry>,
}

/// The result of a route lookup.
#[derive(Debug, Clone)]
pub struct Selected<'a> {
    pub virtual_host: &'a VirtualHostEntry,
    pub route: &'a RouteEntry,
    /// For `Action::Forward`: the chosen cluster (weighted pick and `cluster_header`
    /// resolved with the same random value used for matching, as Envoy does).
    pub cluster: Option<ClusterChoice<'a>>,
}

/// A compiled `RouteConfiguration`. Immutable, `Send + Sync`; share it with `Arc`.
#[derive(Debug)]
pub struct RouteTable {
    name: String,
    virtual_hosts: Vec<VirtualHostEntry>,
    domains: DomainIndex,
    request_headers: HeaderMutations,
    response_headers: HeaderMutations,
    most_specific_header_mutations_wins: bool,
    internal_only_headers: Vec<HeaderName>,
    vhost_header: Option<HeaderName>,
    ignore_path_parameters: bool,
    typed_per_filter_config: HashMap<String, Any>,
    validate_clusters: Option<bool>,
}

impl RouteTable {
    pub fn compile(rc: &RouteConfiguration) -> Result<Self, RouteError> {
        if rc.vhds.is_some() {
            return Err(RouteError::unsupported("vhds"));
        }
        if !rc.cluster_specifier_plugins.is_empty() {
            return Err(RouteError::unsupported("cluster_specifier_plugins"));
        }
        if !rc.route_specifiers.is_empty() {
            return Err(RouteError::unsupported("route_specifiers"));
        }
        let max_body = rc
            .max_direct_response_body_size_bytes
            .map_or(DEFAULT_MAX_DIRECT_RESPONSE_BODY, |v| v.value);
        let rc_mirrors = compile_mirrors(&rc.request_mirror_policies, "request_mirror_policies")?;
        let mut domains = DomainIndex::new(rc.ignore_port_in_host_matching);
        let mut virtual_hosts = Vec::with_capacity(rc.virtual_hosts.len());
        for (i, vh) in rc.virtual_hosts.iter().enumerate() {
            let field = format!("virtual_hosts[{i}]");
            let entry = compile_vhost(vh, &field, max_body, &rc_mirrors)?;
            for (j, d) in vh.domains.iter().enumerate() {
                domains.insert(d, i, &format!("{field}.domains[{j}]"))?;
            }
            virtual_hosts.push(entry);
        }
        let internal_only_headers = rc
            .internal_only_headers
            .iter()
            .enumerate()
            .map(|(i, h)| header_name(h, &format!("internal_only_headers[{i}]")))
            .collect::<Result<_>>()?;
        let vhost_header = (!rc.vhost_header.is_empty())
            .then(|| header_name(&rc.vhost_header, "vhost_header"))
            .transpose()?;
        Ok(Self {
            name: rc.name.clone(),
            virtual_hosts,
            domains,
            request_headers: HeaderMutations::compile(
                "",
                "request_headers_to_add",
                &rc.request_headers_to_add,
                "request_headers_to_remove",
                &rc.request_headers_to_remove,
            )
            .map_err(strip_leading_dot)?,
            response_headers: HeaderMutations::compile(
                "",
                "response_headers_to_add",
                &rc.response_headers_to_add,
                "response_headers_to_remove",
                &rc.response_headers_to_remove,
            )
            .map_err(strip_leading_dot)?,
            most_specific_header_mutations_wins: rc.most_specific_header_mutations_wins,
            internal_only_headers,
            vhost_header,
            ignore_path_parameters: rc.ignore_path_parameters_in_path_matching,
            typed_per_filter_config: rc.typed_per_filter_config.clone(),
            validate_clusters: rc.validate_clusters.map(|b| b.value),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn virtual_hosts(&self) -> &[VirtualHostEntry] {
        &self.virtual_hosts
    }

    /// Headers the connection manager must strip from external requests.
    pub fn internal_only_headers(&self) -> &[HeaderName] {
        &self.internal_only_headers
    }

    /// Route-configuration-level per-filter config.
    pub fn typed_per_filter_config(&self) -> &HashMap<String, Any> {
        &self.typed_per_filter_config
    }

    /// `validate_clusters` as configured (`None`: Envoy's default, false for RDS).
    pub fn validate_clusters(&self) -> Option<bool> {
        self.validate_clusters
    }

    /// Finds the virtual host and the first matching route. `random` feeds
    /// `runtime_fraction` and the weighted-cluster pick. `None` means Envoy would answer 404.
    pub fn find(&self, req: &RequestView<'_>, random: u64) -> Option<Selected<'_>> {
        let host = match &self.vhost_header {
            Some(h) => req
                .headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
            None => req.authority,
        };
        let vh = &self.virtual_hosts[self.domains.find(host)?];
        if let Some(tls) = &vh.tls_redirect {
            let insecure = req.scheme != "https";
            let external = || {
                req.headers
                    .get("x-envoy-internal")
                    .is_none_or(|v| v.as_bytes() != b"true")
            };
            let redirect = match vh.require_tls {
                TlsRequirement::All => insecure,
                TlsRequirement::ExternalOnly => insecure && external(),
                TlsRequirement::None => false,
            };
            if redirect {
                return Some(Selected {
                    virtual_host: vh,
                    route: tls,
                    cluster: None,
                });
            }
        }
        let path = if self.ignore_path_parameters {
            req.path.find(';').map_or(req.path, |i| &req.path[..i])
        } else {
            req.path
        };
        let route = vh.routes.iter().find(|r| {
            r.matcher
                .as_ref()
                .is_some_and(|m| m.matches(req, path, random))
        })?;
        let cluster = match &route.action {
            Action::Forward(f) => Some(f.cluster.resolve(req, random)),
            _ => None,
        };
        Some(Selected {
            virtual_host: vh,
            route,
            cluster,
        })
    }

    /// Applies request header mutations in Envoy's order: the weighted cluster's first, then
    /// route, virtual host, route configuration (reversed when
    /// `most_specific_header_mutations_wins`, so the route's are applied last).
    pub fn apply_request_headers(
        &self,
        selected: &Selected<'_>,
        headers: &mut HeaderMap,
        ctx: &dyn FormatContext,
    ) {
        self.apply(selected, headers, ctx, Side::Request);
    }

    /// Same order as [`Self::apply_request_headers`], for the response.
    pub fn apply_response_headers(
        &self,
        selected: &Selected<'_>,
        headers: &mut HeaderMap,
        ctx: &dyn FormatContext,
    ) {
        self.apply(selected, headers, ctx, Side::Response);
    }

    fn apply(
        &self,
        selected: &Selected<'_>,
        headers: &mut HeaderMap,
        ctx: &dyn FormatContext,
        side: Side,
    ) {
        if selected.route.is_tls_redirect() {
            return;
        }
        if let Some(w) = selected.cluster.as_ref().and_then(|c| c.weighted) {
            match side {
                Side::Request => w.request_headers.apply(headers, side, ctx),
                Side::Response => w.response_headers.apply(headers, side, ctx),
            }
        }
        let (route, vh) = (selected.route, selected.virtual_host);
        let mut levels = match side {
            Side::Request => [
                &route.request_headers,
                &vh.request_headers,
                &self.request_headers,
            ],
            Side::Response => [
                &route.response_headers,
                &vh.response_headers,
                &self.response_headers,
            ],
        };
        if self.most_specific_header_mutations_wins {
            levels.reverse();
        }
        for level in levels {
            level.apply(headers, side, ctx);
        }
    }
}

/// Route-configuration-level fields have no parent path; drop the leading `.`.
fn strip_leading_dot(e: RouteError) -> RouteError {
    match e {
        RouteError::Invalid { field, reason } => RouteError::Invalid {
            field: field.trim_start_matches('.').to_string(),
            reason,
        },
        RouteError::InvalidRegex { field, source } => RouteError::InvalidRegex {
            field: field.trim_start_matches('.').to_string(),
            source,
        },
        RouteError::Unsupported { field } => RouteError::Unsupported {
            field: field.trim_start_matches('.').to_string(),
        },
    }
}

fn compile_vhost(
    vh: &VirtualHost,
    field: &str,
    max_body: u32,
    rc_mirrors: &Arc<[MirrorPolicy]>,
) -> Result<VirtualHostEntry> {
    let f = |name: &str| format!("{field}.{name}");
    if vh.name.is_empty() {
        return Err(RouteError::invalid(f("name"), "must not be empty"));
    }
    if vh.domains.is_empty() {
        return Err(RouteError::invalid(
            f("domains"),
            "must have at least one domain",
        ));
    }
    if vh.matcher.is_some() {
        return Err(RouteError::unsupported(f("matcher")));
    }
    if !vh.route_specifiers.is_empty() {
        return Err(RouteError::unsupported(f("route_specifiers")));
    }
    if vh.retry_policy_typed_config.is_some() {
        return Err(RouteError::unsupported(f("retry_policy_typed_config")));
    }
    let require_tls = match TlsRequirementType::try_from(vh.require_tls) {
        Ok(TlsRequirementType::None) => TlsRequirement::None,
        Ok(TlsRequirementType::ExternalOnly) => TlsRequirement::ExternalOnly,
        Ok(TlsRequirementType::All) => TlsRequirement::All,
        Err(_) => {
            return Err(RouteError::invalid(f("require_tls"), "unknown value"));
        }
    };
    let mirrors = if vh.request_mirror_policies.is_empty() {
        rc_mirrors.clone()
    } else {
        compile_mirrors(&vh.request_mirror_policies, &f("request_mirror_policies"))?
    };
    let inputs = ForwardInputs {
        inherited_mirrors: &mirrors,
        vhost_retry: vh.retry_policy.as_ref(),
        vhost_hedge: vh.hedge_policy.as_ref(),
    };
    let routes = vh
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| compile_route(r, &format!("{field}.routes[{i}]"), max_body, &inputs))
        .collect::<Result<Vec<_>>>()?;
    let tls_redirect = (require_tls != TlsRequirement::None).then(|| RouteEntry {
        name: String::new(),
        action: Action::Redirect(Redirect::tls()),
        request_headers: HeaderMutations::default(),
        response_headers: HeaderMutations::default(),
        typed_per_filter_config: HashMap::new(),
        decorator: None,
        proto: Route::default(),
        matcher: None,
    });
    let mut proto = vh.clone();
    proto.routes.clear();
    Ok(VirtualHostEntry {
        name: vh.name.clone(),
        domains: vh.domains.clone(),
        routes,
        request_headers: HeaderMutations::compile(
            field,
            "request_headers_to_add",
            &vh.request_headers_to_add,
            "request_headers_to_remove",
            &vh.request_headers_to_remove,
        )?,
        response_headers: HeaderMutations::compile(
            field,
            "response_headers_to_add",
            &vh.response_headers_to_add,
            "response_headers_to_remove",
            &vh.response_headers_to_remove,
        )?,
        require_tls,
        typed_per_filter_config: vh.typed_per_filter_config.clone(),
        proto,
        tls_redirect,
    })
}

fn compile_route(
    r: &Route,
    field: &str,
    max_body: u32,
    inputs: &ForwardInputs<'_>,
) -> Result<RouteEntry> {
    let f = |name: &str| format!("{field}.{name}");
    if !r.route_specifiers.is_empty() {
        return Err(RouteError::unsupported(f("route_specifiers")));
    }
    let m = r
        .r#match
        .as_ref()
        .ok_or_else(|| RouteError::invalid(f("match"), "is required"))?;
    let matcher = RouteMatcher::compile(m, &f("match"))?;
    let prefix_len = matcher.path.matched_prefix_len();
    let action = match &r.action {
        Some(PbAction::Route(a)) => {
            Action::Forward(Box::new(compile_forward(a, inputs, &f("route"))?))
        }
        Some(PbAction::Redirect(red)) => compile_redirect_action(red, prefix_len, &f("redirect"))?,
        Some(PbAction::DirectResponse(d)) => compile_direct(d, max_body, &f("direct_response"))?,
        Some(PbAction::NonForwardingAction(_)) => Action::NonForwarding,
        Some(PbAction::FilterAction(_)) => {
            return Err(RouteError::unsupported(f("filter_action")));
        }
        None => {
            return Err(RouteError::invalid(
                field,
                "one of route, redirect, direct_response, non_forwarding_action is required",
            ));
        }
    };
    Ok(RouteEntry {
        name: r.name.clone(),
        action,
        request_headers: HeaderMutations::compile(
            field,
            "request_headers_to_add",
            &r.request_headers_to_add,
            "request_headers_to_remove",
            &r.request_headers_to_remove,
        )?,
        response_headers: HeaderMutations::compile(
            field,
            "response_headers_to_add",
            &r.response_headers_to_add,
            "response_headers_to_remove",
            &r.response_headers_to_remove,
        )?,
        typed_per_filter_config: r.typed_per_filter_config.clone(),
        decorator: r.decorator.clone(),
        proto: r.clone(),
        matcher: Some(matcher),
    })
}
