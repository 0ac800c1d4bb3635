//! VirtualService HTTP routes → Envoy routes, following Istio's translation
//! (pilot/pkg/networking/core/route): one Envoy route per applicable match
//! (all sharing the same action), route destinations as (weighted) clusters,
//! Istio's route defaults (no timeout, 2 retries), fault and CORS as
//! per-route filter configuration.

use std::collections::BTreeMap;

use api::Object;
use api::networking::virtual_service::{
    CorsPolicy, HttpFaultInjection, HttpMatchRequest, HttpRedirect, HttpRetry, HttpRoute,
    UnmatchedPreflights,
};
use api::networking::{
    Destination, HeaderOperations, StringMatch, StringMatchKind, VirtualService,
};
use envoy_types::pb::envoy::config::core::v3::{
    DataSource, HeaderValue, HeaderValueOption, RuntimeFractionalPercent, data_source,
    header_value_option::HeaderAppendAction,
};
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, HeaderMatcher, QueryParameterMatcher, RedirectAction, RetryPolicy, Route,
    RouteAction, RouteMatch, WeightedCluster, header_matcher, query_parameter_matcher,
    redirect_action, retry_policy, route, route_action, route_match, weighted_cluster,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{FaultDelay, fault_delay};
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy as EnvoyCors;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
    FaultAbort, HttpFault, fault_abort,
};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::r#type::matcher::v3::RegexMatchAndSubstitute;
use envoy_types::pb::google::protobuf::Any;

use crate::cluster::{hash_policy, outbound_name};
use crate::context::{PushContext, gateway_key, labels_match};
use crate::node::ProxyNode;
use crate::{Diagnostic, pb};

pub const FAULT_FILTER: &str = "envoy.filters.http.fault";
pub const CORS_FILTER: &str = "envoy.filters.http.cors";
pub const ROUTER_FILTER: &str = "envoy.filters.http.router";

/// Where routes are being built: for which proxy, gateway and port.
#[derive(Clone, Copy)]
pub(crate) struct RouteScope<'a> {
    pub ctx: &'a PushContext,
    pub node: &'a ProxyNode,
    /// `mesh` for sidecars, `namespace/name` of the gateway otherwise.
    pub gateway: &'a str,
    /// The service port (sidecar) or server port (gateway) being served.
    pub port: u32,
}

/// The Envoy routes of a VirtualService's `http` section.
pub(crate) fn virtual_service_routes(
    scope: RouteScope<'_>,
    obj: &Object,
    vs: &VirtualService,
    diags: &mut Vec<Diagnostic>,
) -> Vec<Route> {
    let origin = format!("VirtualService {}", obj.key());
    let mut routes = Vec::new();
    for (i, http) in vs.http.iter().enumerate() {
        let field = format!("spec.http[{i}]");
        if let Some(delegate) = &http.delegate {
            let ns = delegate.namespace.as_deref().unwrap_or(obj.namespace());
            let Some((dobj, dvs)) = scope.ctx.delegate(&delegate.name, ns) else {
                diags.push(Diagnostic::new(
                    &origin,
                    format!("{field}.delegate"),
                    format!("delegate VirtualService {ns}/{} not found", delegate.name),
                ));
                continue;
            };
            let dorigin = format!("VirtualService {}", dobj.key());
            for (j, dhttp) in dvs.http.iter().enumerate() {
                let merged = merge_delegate(http, dhttp);
                let dfield = format!("spec.http[{j}]");
                routes.extend(http_route(
                    scope,
                    dobj.namespace(),
                    &merged,
                    &dorigin,
                    &dfield,
                    diags,
                ));
            }
            continue;
        }
        routes.extend(http_route(
            scope,
            obj.namespace(),
            http,
            &origin,
            &field,
            diags,
        ));
    }
    routes
}

/// A delegate's route under its root route: the root's matches combined
/// with the delegate's (the delegate's conditions win where both set one).
fn merge_delegate(root: &HttpRoute, delegate: &HttpRoute) -> HttpRoute {
    let mut merged = delegate.clone();
    if root.matches.is_empty() {
        return merged;
    }
    let delegate_matches = if delegate.matches.is_empty() {
        vec![HttpMatchRequest::default()]
    } else {
        delegate.matches.clone()
    };
    merged.matches = root
        .matches
        .iter()
        .flat_map(|r| {
            delegate_matches.iter().map(move |d| {
                let mut m = d.clone();
                m.uri = d.uri.clone().or_else(|| r.uri.clone());
                m.scheme = d.scheme.clone().or_else(|| r.scheme.clone());
                m.method = d.method.clone().or_else(|| r.method.clone());
                m.authority = d.authority.clone().or_else(|| r.authority.clone());
                m.port = d.port.or(r.port);
                m.ignore_uri_case = d.ignore_uri_case.or(r.ignore_uri_case);
                m.source_namespace = d
                    .source_namespace
                    .clone()
                    .or_else(|| r.source_namespace.clone());
                for (k, v) in &r.headers {
                    m.headers.entry(k.clone()).or_insert_with(|| v.clone());
                }
                for (k, v) in &r.query_params {
                    m.query_params.entry(k.clone()).or_insert_with(|| v.clone());
                }
                for (k, v) in &r.without_headers {
                    m.without_headers
                        .entry(k.clone())
                        .or_insert_with(|| v.clone());
                }
                for (k, v) in &r.source_labels {
                    m.source_labels
                        .entry(k.clone())
                        .or_insert_with(|| v.clone());
                }
                if m.gateways.is_empty() {
                    m.gateways.clone_from(&r.gateways);
                }
                m
            })
        })
        .collect();
    // Root-level policies apply where the delegate sets none.
    merged.timeout = delegate.timeout.or(root.timeout);
    if merged.retries.is_none() {
        merged.retries.clone_from(&root.retries);
    }
    if merged.fault.is_none() {
        merged.fault.clone_from(&root.fault);
    }
    if merged.cors_policy.is_none() {
        merged.cors_policy.clone_from(&root.cors_policy);
    }
    if merged.headers.is_none() {
        merged.headers.clone_from(&root.headers);
    }
    merged
}

/// One HTTP route: an Envoy route per applicable match, same action.
fn http_route(
    scope: RouteScope<'_>,
    vs_ns: &str,
    http: &HttpRoute,
    origin: &str,
    field: &str,
    diags: &mut Vec<Diagnostic>,
) -> Vec<Route> {
    let matches: Vec<Option<&HttpMatchRequest>> = if http.matches.is_empty() {
        vec![None]
    } else {
        http.matches
            .iter()
            .filter(|m| match_applies(scope, vs_ns, m))
            .map(Some)
            .collect()
    };
    if matches.is_empty() {
        return Vec::new();
    }
    let template = route_template(scope, vs_ns, http, origin, field, diags);
    matches
        .into_iter()
        .map(|m| {
            let mut r = template.clone();
            r.r#match = Some(route_match(m));
            if let Some(name) = m.and_then(|m| m.name.as_deref()) {
                r.name = match &http.name {
                    Some(route_name) => format!("{route_name}.{name}"),
                    None => name.to_owned(),
                };
            }
            r
        })
        .collect()
}

/// Whether a match can apply to this proxy, gateway and port at all.
/// (Istio drops matches on source labels/namespace the proxy does not have,
/// on other gateways, and on other ports.)
fn match_applies(scope: RouteScope<'_>, vs_ns: &str, m: &HttpMatchRequest) -> bool {
    if !labels_match(&m.source_labels, &scope.node.labels) {
        return false;
    }
    if m.source_namespace
        .as_deref()
        .is_some_and(|ns| ns != scope.node.namespace)
    {
        return false;
    }
    if !m.gateways.is_empty()
        && !m
            .gateways
            .iter()
            .any(|g| gateway_key(g, vs_ns) == scope.gateway)
    {
        return false;
    }
    m.port.is_none_or(|p| p == scope.port)
}

/// Everything but the match: action, headers, per-filter config.
fn route_template(
    scope: RouteScope<'_>,
    vs_ns: &str,
    http: &HttpRoute,
    origin: &str,
    field: &str,
    diags: &mut Vec<Diagnostic>,
) -> Route {
    let mut r = Route {
        name: http.name.clone().unwrap_or_default(),
        ..Default::default()
    };
    r.action = Some(if let Some(redirect) = &http.redirect {
        route::Action::Redirect(redirect_action(redirect))
    } else if let Some(direct) = &http.direct_response {
        let body = direct.body.as_ref().and_then(|b| {
            if let Some(s) = &b.string {
                Some(data_source::Specifier::InlineString(s.clone()))
            } else if let Some(bytes) = &b.bytes {
                match pb::base64_decode(bytes) {
                    Some(v) => Some(data_source::Specifier::InlineBytes(v)),
                    None => {
                        diags.push(Diagnostic::new(
                            origin,
                            format!("{field}.directResponse.body.bytes"),
                            "not valid base64; body dropped",
                        ));
                        None
                    }
                }
            } else {
                None
            }
        });
        route::Action::DirectResponse(DirectResponseAction {
            status: direct.status,
            body: body.map(|s| DataSource {
                specifier: Some(s),
                ..Default::default()
            }),
            ..Default::default()
        })
    } else {
        route::Action::Route(route_action(
            scope, vs_ns, http, &mut r, origin, field, diags,
        ))
    });
    if let Some(headers) = &http.headers {
        add_route_headers(headers, &mut r);
    }
    if let Some(fault) = &http.fault {
        r.typed_per_filter_config.insert(
            FAULT_FILTER.to_owned(),
            pb::any(&fault_config(fault, origin, field, diags)),
        );
    }
    if let Some(cors) = &http.cors_policy {
        r.typed_per_filter_config
            .insert(CORS_FILTER.to_owned(), pb::any(&cors_config(cors)));
    }
    r
}

fn route_action(
    scope: RouteScope<'_>,
    vs_ns: &str,
    http: &HttpRoute,
    r: &mut Route,
    origin: &str,
    field: &str,
    diags: &mut Vec<Diagnostic>,
) -> RouteAction {
    let mut action = RouteAction::default();
    let timeout = pb::duration(http.timeout.map(|t| t.get()).unwrap_or_default());
    // Istio: no route timeout unless set (0s disables Envoy's 15s default).
    action.timeout = Some(timeout);
    // As Istio does for Envoy: the grpc-timeout header is capped by the same
    // value (max_stream_duration is only for proxyless gRPC).
    #[allow(deprecated)]
    {
        action.max_grpc_timeout = Some(timeout);
    }
    action.retry_policy = retry_policy(scope.ctx, http.retries.as_ref());

    let dests: Vec<_> = http
        .route
        .iter()
        .filter_map(|d| d.destination.as_ref().map(|dest| (d, dest)))
        .collect();
    let weighted: Vec<_> = if dests.len() == 1 {
        dests.iter().map(|(d, dest)| (*d, *dest, 100u32)).collect()
    } else {
        dests
            .iter()
            .filter_map(|(d, dest)| {
                let w = u32::try_from(d.weight.unwrap_or(0)).unwrap_or(0);
                (w > 0).then_some((*d, *dest, w))
            })
            .collect()
    };
    let mut hash: Option<Vec<_>> = None;
    match weighted.as_slice() {
        [] => {
            diags.push(Diagnostic::new(
                origin,
                format!("{field}.route"),
                "no destination with a positive weight; requests get 503",
            ));
            action.cluster_specifier = Some(route_action::ClusterSpecifier::Cluster(
                crate::cluster::BLACKHOLE_CLUSTER.to_owned(),
            ));
        }
        [(d, dest, _)] => {
            let (name, host, port, subset) = destination_cluster(scope, vs_ns, dest);
            hash = Some(hash_policy(scope.node, scope.ctx, &host, port, &subset));
            action.cluster_specifier = Some(route_action::ClusterSpecifier::Cluster(name));
            // A lone destination's header operations apply to the route.
            if let Some(h) = &d.headers {
                add_route_headers(h, r);
            }
        }
        many => {
            let clusters = many
                .iter()
                .map(|(d, dest, w)| {
                    let (name, host, port, subset) = destination_cluster(scope, vs_ns, dest);
                    let h = hash_policy(scope.node, scope.ctx, &host, port, &subset);
                    // Hash policies apply only when every destination agrees.
                    hash = match hash.take() {
                        None => Some(h),
                        Some(prev) if prev == h => Some(prev),
                        Some(_) => Some(Vec::new()),
                    };
                    let mut cw = weighted_cluster::ClusterWeight {
                        name,
                        weight: Some(pb::u32v(*w)),
                        ..Default::default()
                    };
                    if let Some(h) = &d.headers {
                        if let Some(req) = &h.request {
                            add_header_ops(
                                req,
                                &mut cw.request_headers_to_add,
                                &mut cw.request_headers_to_remove,
                            );
                        }
                        if let Some(resp) = &h.response {
                            add_header_ops(
                                resp,
                                &mut cw.response_headers_to_add,
                                &mut cw.response_headers_to_remove,
                            );
                        }
                    }
                    cw
                })
                .collect();
            action.cluster_specifier = Some(route_action::ClusterSpecifier::WeightedClusters(
                WeightedCluster {
                    clusters,
                    ..Default::default()
                },
            ));
        }
    }
    action.hash_policy = hash.unwrap_or_default();

    if let Some(rewrite) = &http.rewrite {
        if let Some(uri) = &rewrite.uri {
            action.prefix_rewrite.clone_from(uri);
        }
        if let Some(re) = &rewrite.uri_regex_rewrite {
            action.regex_rewrite = Some(RegexMatchAndSubstitute {
                pattern: Some(pb::regex(&re.pattern)),
                substitution: re.rewrite.clone(),
            });
        }
        if let Some(authority) = &rewrite.authority {
            action.host_rewrite_specifier = Some(
                route_action::HostRewriteSpecifier::HostRewriteLiteral(authority.clone()),
            );
        }
    }

    // Mirrors: `mirror` + `mirrorPercentage`/`mirrorPercent`, then `mirrors`.
    if let Some(dest) = &http.mirror {
        let fraction = if let Some(p) = http.mirror_percentage {
            pb::percent_million(p.value)
        } else if let Some(p) = http.mirror_percent {
            pb::percent_hundred(p)
        } else {
            pb::percent_million(api::defaults::MIRROR_PERCENTAGE)
        };
        action
            .request_mirror_policies
            .push(mirror(scope, vs_ns, dest, fraction));
    }
    for m in &http.mirrors {
        if let Some(dest) = &m.destination {
            let fraction = pb::percent_million(
                m.percentage
                    .map_or(api::defaults::MIRROR_PERCENTAGE, |p| p.value),
            );
            action
                .request_mirror_policies
                .push(mirror(scope, vs_ns, dest, fraction));
        }
    }
    action
}

fn mirror(
    scope: RouteScope<'_>,
    vs_ns: &str,
    dest: &Destination,
    fraction: envoy_types::pb::envoy::r#type::v3::FractionalPercent,
) -> route_action::RequestMirrorPolicy {
    route_action::RequestMirrorPolicy {
        cluster: destination_cluster(scope, vs_ns, dest).0,
        runtime_fraction: Some(RuntimeFractionalPercent {
            default_value: Some(fraction),
            runtime_key: String::new(),
        }),
        trace_sampled: Some(pb::boolv(false)),
        ..Default::default()
    }
}

/// `(cluster name, host, port, subset)` of a route destination. The port is
/// the destination's, else the service's only port, else the port served.
pub(crate) fn destination_cluster(
    scope: RouteScope<'_>,
    vs_ns: &str,
    dest: &Destination,
) -> (String, String, u32, String) {
    let host = scope.ctx.resolve_host(&dest.host, vs_ns);
    let port = match dest.port {
        Some(p) if p.number != 0 => p.number,
        _ => match scope
            .ctx
            .registry()
            .service(&host)
            .map(|s| s.ports.as_slice())
        {
            Some([only]) => only.number,
            _ => scope.port,
        },
    };
    let subset = dest.subset.clone().unwrap_or_default();
    (outbound_name(port, &subset, &host), host, port, subset)
}

/// Istio's retry policy: the mesh default (2 attempts on
/// `connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes`,
/// 503 retriable, other hosts preferred) unless the route sets one;
/// `attempts: 0` disables retries.
pub(crate) fn retry_policy(ctx: &PushContext, retries: Option<&HttpRetry>) -> Option<RetryPolicy> {
    let mut policy = RetryPolicy {
        retry_on: api::defaults::RETRY_ON.to_owned(),
        num_retries: Some(pb::u32v(api::defaults::RETRY_ATTEMPTS)),
        retriable_status_codes: vec![503],
        retry_host_predicate: vec![retry_policy::RetryHostPredicate {
            name: "envoy.retry_host_predicates.previous_hosts".to_owned(),
            config_type: Some(retry_policy::retry_host_predicate::ConfigType::TypedConfig(
                pb::any(&PreviousHostsPredicate {}),
            )),
        }],
        host_selection_retry_max_attempts: 5,
        ..Default::default()
    };
    let Some(retries) = retries.or(ctx.mesh().default_http_retry_policy.as_ref()) else {
        return Some(policy);
    };
    let attempts = retries
        .attempts
        .unwrap_or(api::defaults::RETRY_ATTEMPTS as i32);
    if attempts <= 0 {
        return None;
    }
    policy.num_retries = Some(pb::u32v(attempts as u32));
    if let Some(on) = &retries.retry_on {
        let mut conditions = Vec::new();
        let mut codes = Vec::new();
        for part in on.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match part.parse::<u32>() {
                Ok(code) => codes.push(code),
                Err(_) => conditions.push(part.to_owned()),
            }
        }
        if !codes.is_empty() && !conditions.iter().any(|c| c == "retriable-status-codes") {
            conditions.push("retriable-status-codes".to_owned());
        }
        policy.retry_on = conditions.join(",");
        policy.retriable_status_codes = codes;
    }
    if let Some(t) = retries.per_try_timeout {
        policy.per_try_timeout = Some(pb::duration(t.get()));
    }
    if retries.retry_ignore_previous_hosts == Some(false) {
        policy.retry_host_predicate.clear();
    }
    if let Some(b) = retries.backoff {
        policy.retry_back_off = Some(retry_policy::RetryBackOff {
            base_interval: Some(pb::duration(b.get())),
            ..Default::default()
        });
    }
    Some(policy)
}

fn route_match(m: Option<&HttpMatchRequest>) -> RouteMatch {
    let mut out = RouteMatch {
        path_specifier: Some(route_match::PathSpecifier::Prefix("/".to_owned())),
        ..Default::default()
    };
    let Some(m) = m else {
        return out;
    };
    let ignore_case = m.ignore_uri_case == Some(true);
    if let Some(kind) = m.uri.as_ref().and_then(StringMatch::kind) {
        out.path_specifier = Some(match kind {
            StringMatchKind::Exact(p) => route_match::PathSpecifier::Path(p.to_owned()),
            StringMatchKind::Prefix(p) => route_match::PathSpecifier::Prefix(p.to_owned()),
            StringMatchKind::Regex(re) => {
                route_match::PathSpecifier::SafeRegex(pb::regex(&if ignore_case {
                    format!("(?i){re}")
                } else {
                    re.to_owned()
                }))
            }
        });
        if ignore_case {
            out.case_sensitive = Some(pb::boolv(false));
        }
    }
    for (name, sm) in [
        (":authority", &m.authority),
        (":method", &m.method),
        (":scheme", &m.scheme),
    ] {
        if let Some(sm) = sm {
            out.headers.push(header_matcher(name, sm, false));
        }
    }
    for (name, sm) in &m.headers {
        out.headers.push(header_matcher(name, sm, false));
    }
    for (name, sm) in &m.without_headers {
        out.headers.push(header_matcher(name, sm, true));
    }
    for (name, sm) in &m.query_params {
        out.query_parameters.push(QueryParameterMatcher {
            name: name.clone(),
            query_parameter_match_specifier: Some(match pb::string_matcher(sm) {
                Some(s) => query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(s),
                None => query_parameter_matcher::QueryParameterMatchSpecifier::PresentMatch(true),
            }),
        });
    }
    out
}

/// An empty StringMatch means "header present".
fn header_matcher(name: &str, sm: &StringMatch, invert: bool) -> HeaderMatcher {
    HeaderMatcher {
        name: name.to_owned(),
        invert_match: invert,
        header_match_specifier: Some(match pb::string_matcher(sm) {
            Some(s) => header_matcher::HeaderMatchSpecifier::StringMatch(s),
            None => header_matcher::HeaderMatchSpecifier::PresentMatch(true),
        }),
        ..Default::default()
    }
}

fn redirect_action(r: &HttpRedirect) -> RedirectAction {
    use redirect_action::{PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier};
    let code = match r.redirect_code.unwrap_or(api::defaults::REDIRECT_CODE) {
        302 => RedirectResponseCode::Found,
        303 => RedirectResponseCode::SeeOther,
        307 => RedirectResponseCode::TemporaryRedirect,
        308 => RedirectResponseCode::PermanentRedirect,
        _ => RedirectResponseCode::MovedPermanently,
    };
    RedirectAction {
        host_redirect: r.authority.clone().unwrap_or_default(),
        port_redirect: r.port.unwrap_or(0),
        response_code: code as i32,
        scheme_rewrite_specifier: r
            .scheme
            .as_ref()
            .map(|s| SchemeRewriteSpecifier::SchemeRedirect(s.clone())),
        path_rewrite_specifier: if let Some(uri) = &r.uri {
            Some(PathRewriteSpecifier::PathRedirect(uri.clone()))
        } else {
            r.prefix_rewrite
                .as_ref()
                .map(|p| PathRewriteSpecifier::PrefixRewrite(p.clone()))
        },
        ..Default::default()
    }
}

/// `set` overwrites, `add` appends, `remove` removes.
/// A VirtualService `headers` block (request and response operations) on a route.
fn add_route_headers(headers: &api::networking::common::Headers, r: &mut Route) {
    if let Some(req) = &headers.request {
        add_header_ops(
            req,
            &mut r.request_headers_to_add,
            &mut r.request_headers_to_remove,
        );
    }
    if let Some(resp) = &headers.response {
        add_header_ops(
            resp,
            &mut r.response_headers_to_add,
            &mut r.response_headers_to_remove,
        );
    }
}

fn add_header_ops(
    ops: &HeaderOperations,
    add: &mut Vec<HeaderValueOption>,
    remove: &mut Vec<String>,
) {
    let option = |k: &String, v: &String, action: HeaderAppendAction| HeaderValueOption {
        header: Some(HeaderValue {
            key: k.clone(),
            value: v.clone(),
            ..Default::default()
        }),
        append_action: action as i32,
        ..Default::default()
    };
    add.extend(
        ops.set
            .iter()
            .map(|(k, v)| option(k, v, HeaderAppendAction::OverwriteIfExistsOrAdd)),
    );
    add.extend(
        ops.add
            .iter()
            .map(|(k, v)| option(k, v, HeaderAppendAction::AppendIfExistsOrAdd)),
    );
    remove.extend(ops.remove.iter().cloned());
}

/// Istio's fault: `percentage` (fractional) per million, deprecated integer
/// `percent` per hundred; unset means no request is affected.
fn fault_config(
    fault: &HttpFaultInjection,
    origin: &str,
    field: &str,
    diags: &mut Vec<Diagnostic>,
) -> HttpFault {
    let mut out = HttpFault::default();
    if let Some(delay) = &fault.delay {
        let percentage = match (delay.percentage, delay.percent) {
            (Some(p), _) => pb::percent_million(p.value),
            (None, Some(p)) => pb::percent_hundred(u32::try_from(p).unwrap_or(0)),
            (None, None) => pb::percent_hundred(0),
        };
        match delay.fixed_delay {
            Some(d) => {
                out.delay = Some(FaultDelay {
                    fault_delay_secifier: Some(fault_delay::FaultDelaySecifier::FixedDelay(
                        pb::duration(d.get()),
                    )),
                    percentage: Some(percentage),
                });
            }
            None => diags.push(Diagnostic::new(
                origin,
                format!("{field}.fault.delay"),
                "only fixedDelay is supported (exponentialDelay is ignored)",
            )),
        }
    }
    if let Some(abort) = &fault.abort {
        let percentage = abort
            .percentage
            .map_or_else(|| pb::percent_hundred(0), |p| pb::percent_million(p.value));
        let error = if let Some(status) = abort.http_status {
            Some(fault_abort::ErrorType::HttpStatus(
                u32::try_from(status).unwrap_or(500),
            ))
        } else if let Some(grpc) = &abort.grpc_status {
            match grpc_code(grpc) {
                Some(code) => Some(fault_abort::ErrorType::GrpcStatus(code)),
                None => {
                    diags.push(Diagnostic::new(
                        origin,
                        format!("{field}.fault.abort.grpcStatus"),
                        format!("unknown gRPC status {grpc:?}"),
                    ));
                    None
                }
            }
        } else {
            diags.push(Diagnostic::new(
                origin,
                format!("{field}.fault.abort"),
                "http2Error aborts are not supported",
            ));
            None
        };
        if let Some(error) = error {
            out.abort = Some(FaultAbort {
                error_type: Some(error),
                percentage: Some(percentage),
                ..Default::default()
            });
        }
    }
    out
}

fn grpc_code(name: &str) -> Option<u32> {
    name.parse::<u32>().ok().or_else(|| {
        api::defaults::GRPC_STATUS_NAMES
            .iter()
            .position(|c| c.eq_ignore_ascii_case(name))
            .and_then(|i| u32::try_from(i).ok())
    })
}

fn cors_config(c: &CorsPolicy) -> EnvoyCors {
    let mut origins: Vec<_> = c
        .allow_origins
        .iter()
        .filter_map(pb::string_matcher)
        .collect();
    origins.extend(c.allow_origin.iter().filter_map(|o| {
        pb::string_matcher(&StringMatch {
            exact: Some(o.clone()),
            ..Default::default()
        })
    }));
    EnvoyCors {
        allow_origin_string_match: origins,
        allow_methods: c.allow_methods.join(","),
        allow_headers: c.allow_headers.join(","),
        expose_headers: c.expose_headers.join(","),
        max_age: c
            .max_age
            .map(|d| d.get().as_secs().to_string())
            .unwrap_or_default(),
        allow_credentials: c.allow_credentials.map(pb::boolv),
        filter_enabled: Some(RuntimeFractionalPercent {
            default_value: Some(pb::percent_hundred(100)),
            runtime_key: String::new(),
        }),
        forward_not_matching_preflights: match c.unmatched_preflights {
            Some(UnmatchedPreflights::Forward) => Some(pb::boolv(true)),
            Some(UnmatchedPreflights::Ignore) => Some(pb::boolv(false)),
            _ => None,
        },
        ..Default::default()
    }
}

/// The route when no VirtualService applies: everything to `cluster`, with
/// Istio's defaults.
pub(crate) fn default_route(scope: RouteScope<'_>, host: &str, port: u32) -> Route {
    let timeout = pb::duration(std::time::Duration::ZERO);
    Route {
        name: "default".to_owned(),
        r#match: Some(route_match(None)),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(outbound_name(
                port, "", host,
            ))),
            timeout: Some(timeout),
            #[allow(deprecated)]
            max_grpc_timeout: Some(timeout),
            retry_policy: retry_policy(scope.ctx, None),
            hash_policy: hash_policy(scope.node, scope.ctx, host, port, ""),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// The HTTP filter chain Istio gives every HTTP connection manager:
/// fault, CORS, router.
pub(crate) fn http_filters() -> Vec<
    envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter,
> {
    use envoy_types::pb::envoy::extensions::filters::http::cors::v3::Cors;
    use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
        HttpFilter, http_filter,
    };
    let filter = |name: &str, config: Any| HttpFilter {
        name: name.to_owned(),
        config_type: Some(http_filter::ConfigType::TypedConfig(config)),
        ..Default::default()
    };
    vec![
        filter(FAULT_FILTER, pb::any(&HttpFault::default())),
        filter(CORS_FILTER, pb::any(&Cors::default())),
        filter(ROUTER_FILTER, pb::any(&Router::default())),
    ]
}

/// Sorted, deduplicated domains across virtual hosts: Envoy rejects a
/// route table in which two virtual hosts share a domain, so the first
/// virtual host to claim one keeps it.
/// Virtual hosts left without a domain are dropped (Envoy needs one).
pub(crate) fn dedup_domains(
    vhosts: &mut Vec<envoy_types::pb::envoy::config::route::v3::VirtualHost>,
) {
    let mut seen: BTreeMap<String, ()> = BTreeMap::new();
    for vh in vhosts.iter_mut() {
        vh.domains.retain(|d| seen.insert(d.clone(), ()).is_none());
    }
    vhosts.retain(|vh| !vh.domains.is_empty());
}
