//! AuthorizationPolicy → Envoy RBAC, as istiod's `security/authz` builds it.
//!
//! **Filters.** Policies of one action share one RBAC filter: AUDIT
//! (`LOG`), DENY, ALLOW, in that order, after the CUSTOM pair and
//! jwt_authn (see [`super::WorkloadSecurity`]). Each rule is one RBAC
//! policy named `ns[<ns>]-policy[<name>]-rule[<i>]`; a policy without rules
//! is one policy that never matches. Dry-run policies
//! (`istio.io/dry-run: "true"`) go to `shadow_rules`
//! (`istio_dry_run_allow_` / `istio_dry_run_deny_` stats).
//!
//! **CUSTOM.** Istio's shadow-rule trick, which a stock Envoy supports: an
//! RBAC filter with the CUSTOM rules as DENY `shadow_rules` records the
//! matched policy in dynamic metadata (`istio_ext_authz_shadow_effective_
//! policy_id`, policy names prefixed `istio-ext-authz-<provider>-`), and the
//! ext_authz filter that follows runs only when that metadata names its
//! provider (`filter_enabled_metadata`). TCP chains get the pair only for
//! gRPC providers. An unknown or invalid provider, or more than one
//! provider on a workload (Istio's default), turns the CUSTOM rules into a
//! DENY RBAC filter (fail closed).
//!
//! **Rules.** A rule is permissions (one per `to`, AND of its fields and of
//! the `when` keys about the destination) × principals (one per `from`, AND
//! of its fields and of the other `when` keys), with Istio's matchers:
//! principals → `authenticated.principal_name` on `spiffe://...` (`*`
//! prefix/suffix/presence), namespaces → `.*/ns/<ns>/.*`, service accounts
//! and trust domains → SPIFFE regexes, `ipBlocks` → `direct_remote_ip`,
//! `remoteIpBlocks` → `remote_ip`, request principals, audiences,
//! presenters and claims → metadata of `envoy.filters.http.jwt_authn`
//! (`iss` and `sub` of the payload matched separately), hosts →
//! `:authority` (case-insensitive), methods → `:method`, paths →
//! `url_path` (or a URI template for `{*}`/`{**}`), ports →
//! `destination_port`.
//!
//! **Failing closed.** A value that cannot be translated (bad CIDR or port)
//! drops the whole rule of an ALLOW policy (it then allows less) and only
//! that value of a DENY, AUDIT or CUSTOM rule (a condition left without
//! values disappears, so the rule matches more). On TCP chains, HTTP-only
//! fields do the same: the ALLOW rule is dropped, the DENY condition
//! disappears. A rule that cannot be read at all (unknown `when` key)
//! is dropped from ALLOW and becomes match-everything in the other actions
//! (istiod drops it from every action; never allowing more than the policy
//! says is the rule here).

use std::collections::{BTreeMap, BTreeSet};

use api::Object;
use api::mesh_config::{EnvoyExtAuthzGrpc, EnvoyExtAuthzHttp};
use api::security::{Action, AuthorizationPolicy, Rule};
use envoy_types::pb::envoy::config::core::v3::{
    ApiVersion, CidrRange, GrpcService, HeaderValue, HttpUri, TypedExtensionConfig, grpc_service,
    http_uri,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, filter};
use envoy_types::pb::envoy::config::rbac::v3::{
    Permission, Policy, Principal, SourcedMetadata, permission, principal, rbac,
};
use envoy_types::pb::envoy::config::route::v3::{HeaderMatcher, header_matcher};
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3 as http_ext_authz;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as EnvoyHttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::ext_authz::v3 as tcp_ext_authz;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as EnvoyNetworkRbac;
use envoy_types::pb::envoy::extensions::path::r#match::uri_template::v3::UriTemplateMatchConfig;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    ListMatcher, ListStringMatcher, MetadataMatcher, OrMatcher, PathMatcher, StringMatcher,
    ValueMatcher, list_matcher, metadata_matcher, path_matcher, string_matcher, value_matcher,
};
use envoy_types::pb::envoy::r#type::v3::{HttpStatus, StatusCode};

use super::det;
use super::jwt::{JWT_FILTER, PAYLOAD_KEY};
use crate::Diagnostic;
use crate::cluster::outbound_name;
use crate::context::PushContext;
use crate::node::ProxyNode;
use crate::pb;

/// HTTP RBAC filter name (also its dynamic metadata namespace).
pub const HTTP_RBAC_FILTER: &str = "envoy.filters.http.rbac";
/// Network RBAC filter name.
pub const NETWORK_RBAC_FILTER: &str = "envoy.filters.network.rbac";
pub const HTTP_EXT_AUTHZ_FILTER: &str = "envoy.filters.http.ext_authz";
pub const NETWORK_EXT_AUTHZ_FILTER: &str = "envoy.filters.network.ext_authz";
/// Stat prefix of network RBAC and ext_authz filters.
pub const TCP_STAT_PREFIX: &str = "tcp.";
pub const DRY_RUN_ALLOW_PREFIX: &str = "istio_dry_run_allow_";
pub const DRY_RUN_DENY_PREFIX: &str = "istio_dry_run_deny_";
pub const EXT_AUTHZ_SHADOW_PREFIX: &str = "istio_ext_authz_";
/// Prefix of CUSTOM policy names.
pub const EXT_AUTHZ_POLICY_PREFIX: &str = "istio-ext-authz";
/// Suffix of CUSTOM rules turned into DENY rules.
pub const BAD_CUSTOM_SUFFIX: &str = "-deny-due-to-bad-CUSTOM-action";
/// Default ext_authz timeout (Istio: 600s).
const EXT_AUTHZ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// Every RBAC (and ext_authz) filter one workload needs.
#[derive(Debug, Clone, Default)]
pub struct Builder {
    custom_http: Vec<HttpFilter>,
    custom_tcp: Vec<Filter>,
    local_http: Vec<HttpFilter>,
    local_tcp: Vec<Filter>,
}

impl Builder {
    /// Builds the filters for `policies` (already selected for the workload).
    pub fn new(
        ctx: &PushContext,
        node: &ProxyNode,
        policies: &[(&Object, &AuthorizationPolicy)],
        diags: &mut Vec<Diagnostic>,
    ) -> Self {
        let by_action = |a: Action| -> Vec<(&Object, &AuthorizationPolicy)> {
            policies
                .iter()
                .filter(|(_, p)| p.action() == a)
                .copied()
                .collect()
        };
        let bundle = super::trust_domains(ctx);
        let mut out = Self::default();
        for (action, prefix) in [
            (Action::Audit, ""),
            (Action::Deny, DRY_RUN_DENY_PREFIX),
            (Action::Allow, DRY_RUN_ALLOW_PREFIX),
        ] {
            let list = by_action(action);
            if list.is_empty() {
                continue;
            }
            for for_tcp in [false, true] {
                // Diagnostics once, from the HTTP pass.
                let mut sink = Vec::new();
                let d = if for_tcp { &mut sink } else { &mut *diags };
                let built = build_rules(&list, action, for_tcp, &bundle, d);
                let (rules, shadow) = built.split();
                let shadow_prefix = if shadow.is_some() { prefix } else { "" };
                if for_tcp {
                    out.local_tcp
                        .push(network_rbac(rules, shadow, shadow_prefix));
                } else {
                    out.local_http.push(http_rbac(rules, shadow, shadow_prefix));
                }
            }
        }
        let custom = by_action(Action::Custom);
        if !custom.is_empty() {
            out.build_custom(ctx, node, &custom, &bundle, diags);
        }
        out
    }

    /// CUSTOM filters for HTTP chains (RBAC shadow + ext_authz per provider).
    pub fn custom_http(&self) -> Vec<HttpFilter> {
        self.custom_http.clone()
    }

    /// AUDIT, DENY and ALLOW RBAC filters for HTTP chains.
    pub fn local_http(&self) -> Vec<HttpFilter> {
        self.local_http.clone()
    }

    /// CUSTOM filters for TCP chains (gRPC providers only).
    pub fn custom_tcp(&self) -> Vec<Filter> {
        self.custom_tcp.clone()
    }

    /// AUDIT, DENY and ALLOW network RBAC filters for TCP chains.
    pub fn local_tcp(&self) -> Vec<Filter> {
        self.local_tcp.clone()
    }

    fn build_custom(
        &mut self,
        ctx: &PushContext,
        node: &ProxyNode,
        policies: &[(&Object, &AuthorizationPolicy)],
        bundle: &[String],
        diags: &mut Vec<Diagnostic>,
    ) {
        let mut by_provider: BTreeMap<String, Vec<(&Object, &AuthorizationPolicy)>> =
            BTreeMap::new();
        for p in policies {
            let name =
                p.1.provider
                    .as_ref()
                    .map(|p| p.name.clone())
                    .unwrap_or_default();
            by_provider.entry(name).or_default().push(*p);
        }
        let several = by_provider.len() > 1;
        if several {
            diags.push(Diagnostic::new(
                "",
                "",
                format!(
                    "workload {}/{}: CUSTOM policies name several providers ({}); only one per workload is supported, so their rules deny",
                    node.namespace,
                    node.workload_name,
                    by_provider.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        for (provider, list) in &by_provider {
            for for_tcp in [false, true] {
                let mut sink = Vec::new();
                let d = if for_tcp { &mut sink } else { &mut *diags };
                let built = build_custom_rules(list, provider, for_tcp, bundle, d);
                let resolved = if several {
                    Err(String::new())
                } else {
                    resolve_provider(ctx, node, provider)
                };
                match resolved {
                    Err(m) => {
                        if !m.is_empty() && !for_tcp {
                            for (obj, _) in list {
                                diags.push(Diagnostic::new(
                                    super::object_name("AuthorizationPolicy", obj),
                                    "spec.provider.name",
                                    format!("{m}; the policy's rules deny instead"),
                                ));
                            }
                        }
                        let deny = bad_custom_deny(&built);
                        if for_tcp {
                            self.custom_tcp.push(network_rbac(Some(deny), None, ""));
                        } else {
                            self.custom_http.push(http_rbac(Some(deny), None, ""));
                        }
                    }
                    Ok(resolved) => {
                        // Enforced CUSTOM rules are shadow rules (they only
                        // mark requests for ext_authz); dry-run ones are
                        // the rules, as istiod arranges them.
                        let (enforce, dry) = built.split();
                        let rules = dry.filter(|r| !r.policies.is_empty());
                        let shadow = enforce;
                        if for_tcp {
                            let Some(tcp) = resolved.tcp(provider) else {
                                continue; // HTTP providers do not apply to TCP
                            };
                            self.custom_tcp.push(network_rbac(
                                rules,
                                shadow,
                                EXT_AUTHZ_SHADOW_PREFIX,
                            ));
                            self.custom_tcp.push(Filter {
                                name: NETWORK_EXT_AUTHZ_FILTER.to_owned(),
                                config_type: Some(filter::ConfigType::TypedConfig(pb::any(&tcp))),
                            });
                        } else {
                            self.custom_http.push(http_rbac(
                                rules,
                                shadow,
                                EXT_AUTHZ_SHADOW_PREFIX,
                            ));
                            self.custom_http.push(HttpFilter {
                                name: HTTP_EXT_AUTHZ_FILTER.to_owned(),
                                config_type: Some(http_filter::ConfigType::TypedConfig(pb::any(
                                    &resolved.http(provider),
                                ))),
                                ..Default::default()
                            });
                        }
                    }
                }
            }
        }
    }
}

/// Enforced and dry-run rules of one action.
struct Built {
    action: i32,
    enforce: Option<BTreeMap<String, Policy>>,
    dry_run: Option<BTreeMap<String, Policy>>,
}

impl Built {
    /// `(enforced, dry-run)` rules.
    fn split(self) -> (Option<det::Rules>, Option<det::Rules>) {
        let action = self.action;
        let wrap = move |p: BTreeMap<String, Policy>| det::Rules {
            action,
            policies: p,
        };
        (self.enforce.map(wrap), self.dry_run.map(wrap))
    }
}

fn rbac_action(action: Action) -> rbac::Action {
    match action {
        Action::Allow => rbac::Action::Allow,
        Action::Audit => rbac::Action::Log,
        Action::Deny | Action::Custom => rbac::Action::Deny,
    }
}

fn is_dry_run(obj: &Object, diags: &mut Vec<Diagnostic>) -> bool {
    match obj
        .metadata
        .annotations
        .get(api::validate::DRY_RUN_ANNOTATION)
    {
        None => false,
        Some(v) => api::validate::parse_bool(v).unwrap_or_else(|| {
            diags.push(Diagnostic::new(
                super::object_name("AuthorizationPolicy", obj),
                format!("metadata.annotations.{}", api::validate::DRY_RUN_ANNOTATION),
                format!("{v:?} is not a boolean; the policy is enforced"),
            ));
            false
        }),
    }
}

/// `ns[<ns>]-policy[<name>]-rule[<i>]`, prefixed for CUSTOM policies.
pub fn policy_name(namespace: &str, name: &str, rule: usize, provider: Option<&str>) -> String {
    let prefix = match provider {
        Some(p) if !p.is_empty() => format!("{EXT_AUTHZ_POLICY_PREFIX}-{p}-"),
        Some(_) => format!("{EXT_AUTHZ_POLICY_PREFIX}-"),
        None => String::new(),
    };
    format!("{prefix}ns[{namespace}]-policy[{name}]-rule[{rule}]")
}

fn build_rules(
    policies: &[(&Object, &AuthorizationPolicy)],
    action: Action,
    for_tcp: bool,
    bundle: &[String],
    diags: &mut Vec<Diagnostic>,
) -> Built {
    build_named(policies, action, for_tcp, bundle, None, diags)
}

fn build_custom_rules(
    policies: &[(&Object, &AuthorizationPolicy)],
    provider: &str,
    for_tcp: bool,
    bundle: &[String],
    diags: &mut Vec<Diagnostic>,
) -> Built {
    build_named(
        policies,
        Action::Custom,
        for_tcp,
        bundle,
        Some(provider),
        diags,
    )
}

fn build_named(
    policies: &[(&Object, &AuthorizationPolicy)],
    action: Action,
    for_tcp: bool,
    bundle: &[String],
    provider: Option<&str>,
    diags: &mut Vec<Diagnostic>,
) -> Built {
    let mut enforce: Option<BTreeMap<String, Policy>> = None;
    let mut dry_run: Option<BTreeMap<String, Policy>> = None;
    for (obj, ap) in policies {
        // Dry-run CUSTOM policies (rejected by validation) still mark
        // requests for ext_authz, as in istiod.
        let target = if is_dry_run(obj, diags) {
            dry_run.get_or_insert_with(BTreeMap::new)
        } else {
            enforce.get_or_insert_with(BTreeMap::new)
        };
        let ns = obj.namespace();
        let name = obj.name();
        let origin = super::object_name("AuthorizationPolicy", obj);
        for (i, rule) in ap.rules().iter().enumerate() {
            let pname = policy_name(ns, name, i, provider);
            match translate_rule(rule, ns, bundle, for_tcp, action) {
                Ok(Some(p)) => {
                    target.insert(pname, p);
                }
                Ok(None) => {} // an ALLOW rule that cannot apply (TCP)
                Err(m) => {
                    if action == Action::Allow {
                        diags.push(Diagnostic::new(
                            &origin,
                            format!("spec.rules[{i}]"),
                            format!("{m}; the rule is dropped (allows nothing)"),
                        ));
                    } else {
                        diags.push(Diagnostic::new(
                            &origin,
                            format!("spec.rules[{i}]"),
                            format!("{m}; the rule matches every request instead"),
                        ));
                        target.insert(pname, match_all());
                    }
                }
            }
        }
        if ap.rules().is_empty() {
            target.insert(policy_name(ns, name, 0, provider), match_never());
        }
    }
    Built {
        action: rbac_action(action) as i32,
        enforce,
        dry_run,
    }
}

fn match_never() -> Policy {
    Policy {
        permissions: vec![perm_not(perm_any())],
        principals: vec![princ_not(princ_any())],
        ..Default::default()
    }
}

fn match_all() -> Policy {
    Policy {
        permissions: vec![perm_any()],
        principals: vec![princ_any()],
        ..Default::default()
    }
}

/// The DENY rules replacing the rules of an unusable CUSTOM provider.
fn bad_custom_deny(built: &Built) -> det::Rules {
    let mut policies = BTreeMap::new();
    for p in [&built.enforce, &built.dry_run].into_iter().flatten() {
        for (k, v) in p {
            policies.insert(format!("{k}{BAD_CUSTOM_SUFFIX}"), v.clone());
        }
    }
    det::Rules {
        action: rbac::Action::Deny as i32,
        policies,
    }
}

fn http_rbac(rules: Option<det::Rules>, shadow: Option<det::Rules>, prefix: &str) -> HttpFilter {
    let config = det::HttpRbac {
        rules,
        shadow_rules_stat_prefix: if shadow.is_some() {
            prefix.to_owned()
        } else {
            String::new()
        },
        shadow_rules: shadow,
    };
    HttpFilter {
        name: HTTP_RBAC_FILTER.to_owned(),
        config_type: Some(http_filter::ConfigType::TypedConfig(det::any_as::<
            EnvoyHttpRbac,
        >(&config))),
        ..Default::default()
    }
}

fn network_rbac(rules: Option<det::Rules>, shadow: Option<det::Rules>, prefix: &str) -> Filter {
    let config = det::NetworkRbac {
        rules,
        stat_prefix: TCP_STAT_PREFIX.to_owned(),
        shadow_rules_stat_prefix: if shadow.is_some() {
            prefix.to_owned()
        } else {
            String::new()
        },
        shadow_rules: shadow,
    };
    Filter {
        name: NETWORK_RBAC_FILTER.to_owned(),
        config_type: Some(filter::ConfigType::TypedConfig(det::any_as::<
            EnvoyNetworkRbac,
        >(&config))),
    }
}

// ---------------------------------------------------------------------------
// Rule model
// ---------------------------------------------------------------------------

/// What one rule condition is about (Istio's generators).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attr {
    // Permission side.
    DestIp,
    DestPort,
    Sni,
    EnvoyFilter,
    Host,
    Path,
    Method,
    // Principal side.
    SrcIp,
    RemoteIp,
    SrcNamespace,
    SrcTrustDomain,
    SrcServiceAccount,
    SrcPrincipal,
    RequestPrincipal,
    Audiences,
    Presenter,
    RequestHeader,
    RequestClaims,
}

impl Attr {
    /// Conditions matched on the whole value list at once.
    fn extended(self) -> bool {
        matches!(
            self,
            Self::RequestPrincipal
                | Self::Audiences
                | Self::Presenter
                | Self::RequestClaims
                | Self::EnvoyFilter
        )
    }
}

#[derive(Debug, Clone)]
struct Item {
    attr: Attr,
    key: String,
    values: Vec<String>,
    not_values: Vec<String>,
}

#[derive(Debug, Clone, Default)]
struct ItemList(Vec<Item>);

impl ItemList {
    fn push_back(&mut self, attr: Attr, key: &str, values: &[String], not_values: &[String]) {
        if values.is_empty() && not_values.is_empty() {
            return;
        }
        self.0.push(Item {
            attr,
            key: key.to_owned(),
            values: values.to_vec(),
            not_values: not_values.to_vec(),
        });
    }

    fn push_front(&mut self, attr: Attr, key: &str, values: &[String], not_values: &[String]) {
        if values.is_empty() && not_values.is_empty() {
            return;
        }
        self.0.insert(
            0,
            Item {
                attr,
                key: key.to_owned(),
                values: values.to_vec(),
                not_values: not_values.to_vec(),
            },
        );
    }
}

/// Why a value or a rule could not be translated.
#[derive(Debug)]
enum GenError {
    /// HTTP-only attribute on a TCP chain.
    HttpOnly(String),
    Invalid(String),
}

impl GenError {
    fn message(self) -> String {
        match self {
            Self::HttpOnly(m) | Self::Invalid(m) => m,
        }
    }
}

/// One rule → one RBAC policy. `Ok(None)`: an ALLOW rule that cannot apply
/// on this (TCP) chain. `Err`: the rule cannot be read (or, for ALLOW, one
/// of its values cannot be translated).
fn translate_rule(
    rule: &Rule,
    policy_ns: &str,
    bundle: &[String],
    for_tcp: bool,
    action: Action,
) -> Result<Option<Policy>, String> {
    let mut base_perm = ItemList::default();
    let mut base_princ = ItemList::default();
    for cond in &rule.when {
        let k = cond.key.as_str();
        let (attr, permission) = match k {
            "destination.ip" => (Attr::DestIp, true),
            "destination.port" => (Attr::DestPort, true),
            "connection.sni" => (Attr::Sni, true),
            _ if k.starts_with("experimental.envoy.filters.") => (Attr::EnvoyFilter, true),
            "source.ip" => (Attr::SrcIp, false),
            "remote.ip" => (Attr::RemoteIp, false),
            "source.namespace" => (Attr::SrcNamespace, false),
            "source.trustDomain" => (Attr::SrcTrustDomain, false),
            "source.serviceAccount" => (Attr::SrcServiceAccount, false),
            "source.principal" => (Attr::SrcPrincipal, false),
            "request.auth.principal" => (Attr::RequestPrincipal, false),
            "request.auth.audiences" => (Attr::Audiences, false),
            "request.auth.presenter" => (Attr::Presenter, false),
            _ if k.starts_with("request.headers") => (Attr::RequestHeader, false),
            _ if k.starts_with("request.auth.claims") => (Attr::RequestClaims, false),
            _ => return Err(format!("unknown `when` key {k:?}")),
        };
        let list = if permission {
            &mut base_perm
        } else {
            &mut base_princ
        };
        list.push_back(attr, k, &cond.values, &cond.not_values);
    }

    let mut principals = Vec::new();
    for from in rule.from.iter().flatten() {
        let mut merged = base_princ.clone();
        if let Some(s) = &from.source {
            merged.push_front(Attr::SrcIp, "source.ip", &s.ip_blocks, &s.not_ip_blocks);
            merged.push_front(
                Attr::RemoteIp,
                "remote.ip",
                &s.remote_ip_blocks,
                &s.not_remote_ip_blocks,
            );
            merged.push_front(
                Attr::SrcNamespace,
                "source.namespace",
                &s.namespaces,
                &s.not_namespaces,
            );
            merged.push_front(
                Attr::SrcTrustDomain,
                "source.trustDomain",
                &s.trust_domains,
                &s.not_trust_domains,
            );
            merged.push_front(
                Attr::SrcServiceAccount,
                "source.serviceAccount",
                &s.service_accounts,
                &s.not_service_accounts,
            );
            merged.push_front(
                Attr::RequestPrincipal,
                "request.auth.principal",
                &s.request_principals,
                &s.not_request_principals,
            );
            merged.push_front(
                Attr::SrcPrincipal,
                "source.principal",
                &s.principals,
                &s.not_principals,
            );
        }
        principals.push(merged);
    }
    if principals.is_empty() {
        principals.push(base_princ);
    }
    let mut permissions = Vec::new();
    for to in rule.to.iter().flatten() {
        let mut merged = base_perm.clone();
        if let Some(o) = &to.operation {
            merged.push_front(Attr::DestPort, "destination.port", &o.ports, &o.not_ports);
            merged.push_front(Attr::Path, "request.url_path", &o.paths, &o.not_paths);
            merged.push_front(Attr::Method, "request.method", &o.methods, &o.not_methods);
            merged.push_front(Attr::Host, "request.host", &o.hosts, &o.not_hosts);
        }
        permissions.push(merged);
    }
    if permissions.is_empty() {
        permissions.push(base_perm);
    }

    // Trust domain migration (Istio's MigrateTrustDomain).
    for list in &mut principals {
        for item in &mut list.0 {
            match item.attr {
                Attr::SrcPrincipal => {
                    item.values = replace_trust_domains(&item.values, bundle);
                    item.not_values = replace_trust_domains(&item.not_values, bundle);
                }
                Attr::SrcTrustDomain => {
                    item.values = expand_trust_domains(&item.values, bundle);
                    item.not_values = expand_trust_domains(&item.not_values, bundle);
                }
                _ => {}
            }
        }
    }

    let allow = action == Action::Allow;
    let mut out = Policy::default();
    for list in &permissions {
        match and_permission(list, policy_ns, for_tcp, allow) {
            Ok(p) => out.permissions.push(p),
            Err(GenError::HttpOnly(_)) if allow => return Ok(None),
            Err(e) => return Err(e.message()),
        }
    }
    for list in &principals {
        match and_principal(list, policy_ns, for_tcp, allow) {
            Ok(p) => out.principals.push(p),
            Err(GenError::HttpOnly(_)) if allow => return Ok(None),
            Err(e) => return Err(e.message()),
        }
    }
    Ok(Some(out))
}

/// Istio's `checkError`: ALLOW propagates (the rule is dropped), the other
/// actions ignore the value (the condition widens).
fn check<T>(r: Result<T, GenError>, allow: bool) -> Result<Option<T>, GenError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if allow => Err(e),
        Err(_) => Ok(None),
    }
}

fn and_permission(
    list: &ItemList,
    ns: &str,
    for_tcp: bool,
    allow: bool,
) -> Result<Permission, GenError> {
    let mut and = Vec::new();
    for item in &list.0 {
        if item.attr.extended() {
            if !item.values.is_empty()
                && let Some(p) = check(ext_permission(item, &item.values, for_tcp), allow)?
            {
                and.push(p);
            }
            if !item.not_values.is_empty()
                && let Some(p) = check(ext_permission(item, &item.not_values, for_tcp), allow)?
            {
                and.push(perm_not(p));
            }
        } else {
            let mut or = Vec::new();
            for v in &item.values {
                if let Some(p) = check(permission_for(item, v, ns, for_tcp), allow)? {
                    or.push(p);
                }
            }
            if !or.is_empty() {
                and.push(perm_or(or));
            }
            let mut or = Vec::new();
            for v in &item.not_values {
                if let Some(p) = check(permission_for(item, v, ns, for_tcp), allow)? {
                    or.push(p);
                }
            }
            if !or.is_empty() {
                and.push(perm_not(perm_or(or)));
            }
        }
    }
    if and.is_empty() {
        and.push(perm_any());
    }
    Ok(perm_and(and))
}

fn and_principal(
    list: &ItemList,
    ns: &str,
    for_tcp: bool,
    allow: bool,
) -> Result<Principal, GenError> {
    let mut and = Vec::new();
    for item in &list.0 {
        if item.attr.extended() {
            if !item.values.is_empty()
                && let Some(p) = check(ext_principal(item, &item.values, for_tcp), allow)?
            {
                and.push(p);
            }
            if !item.not_values.is_empty()
                && let Some(p) = check(ext_principal(item, &item.not_values, for_tcp), allow)?
            {
                and.push(princ_not(p));
            }
        } else {
            let mut or = Vec::new();
            for v in &item.values {
                if let Some(p) = check(principal_for(item, v, ns, for_tcp), allow)? {
                    or.push(p);
                }
            }
            if !or.is_empty() {
                and.push(princ_or(or));
            }
            let mut or = Vec::new();
            for v in &item.not_values {
                if let Some(p) = check(principal_for(item, v, ns, for_tcp), allow)? {
                    or.push(p);
                }
            }
            if !or.is_empty() {
                and.push(princ_not(princ_or(or)));
            }
        }
    }
    if and.is_empty() {
        and.push(princ_any());
    }
    Ok(princ_and(and))
}

fn http_only(item: &Item, for_tcp: bool) -> Result<(), GenError> {
    if for_tcp {
        Err(GenError::HttpOnly(format!("{:?} is HTTP only", item.key)))
    } else {
        Ok(())
    }
}

fn permission_for(item: &Item, v: &str, _ns: &str, for_tcp: bool) -> Result<Permission, GenError> {
    let rule = match item.attr {
        Attr::DestIp => permission::Rule::DestinationIp(cidr(v)?),
        Attr::DestPort => permission::Rule::DestinationPort(port(v)?),
        Attr::Sni => permission::Rule::RequestedServerName(string_matcher_with_prefix(v, "")),
        Attr::EnvoyFilter => {
            permission::Rule::SourcedMetadata(sourced(envoy_filter_matcher(&item.key, v)?))
        }
        Attr::Host => {
            http_only(item, for_tcp)?;
            permission::Rule::Header(header_matcher(":authority", v, true))
        }
        Attr::Method => {
            http_only(item, for_tcp)?;
            permission::Rule::Header(header_matcher(":method", v, false))
        }
        Attr::Path => {
            http_only(item, for_tcp)?;
            if v.contains("{*}") || v.contains("{**}") {
                permission::Rule::UriTemplate(TypedExtensionConfig {
                    name: "uri-template".to_owned(),
                    typed_config: Some(pb::any(&UriTemplateMatchConfig {
                        path_template: v.replace("{**}", "**").replace("{*}", "*"),
                    })),
                })
            } else {
                permission::Rule::UrlPath(PathMatcher {
                    rule: Some(path_matcher::Rule::Path(string_matcher_with_prefix(v, ""))),
                })
            }
        }
        other => {
            return Err(GenError::Invalid(format!(
                "{other:?} is not a destination attribute"
            )));
        }
    };
    Ok(Permission { rule: Some(rule) })
}

fn principal_for(item: &Item, v: &str, ns: &str, for_tcp: bool) -> Result<Principal, GenError> {
    let id = match item.attr {
        Attr::SrcIp => principal::Identifier::DirectRemoteIp(cidr(v)?),
        Attr::RemoteIp => principal::Identifier::RemoteIp(cidr(v)?),
        Attr::SrcNamespace => {
            let parts: Vec<String> = v.split('*').map(quote_meta).collect();
            authenticated(regex_matcher(&format!(".*/ns/{}/.*", parts.join(".*"))))
        }
        Attr::SrcServiceAccount => {
            let (sa_ns, sa) = v.split_once('/').unwrap_or((ns, v));
            authenticated(regex_matcher(&format!(
                "spiffe://.+/ns/{}/(.+/|)sa/{}(/.+)?",
                quote_meta(sa_ns),
                quote_meta(sa)
            )))
        }
        Attr::SrcTrustDomain => authenticated(if v == "*" {
            prefix_matcher(super::SPIFFE_PREFIX)
        } else if !v.contains('*') {
            prefix_matcher(&format!("{}{v}/", super::SPIFFE_PREFIX))
        } else {
            let (a, b) = v.split_once('*').unwrap_or((v, ""));
            regex_matcher(&format!(
                "spiffe://{}[^/]*{}/.*",
                quote_meta(a),
                quote_meta(b)
            ))
        }),
        Attr::SrcPrincipal => authenticated(string_matcher_with_prefix(v, super::SPIFFE_PREFIX)),
        Attr::RequestHeader => {
            http_only(item, for_tcp)?;
            let name = bracketed(&item.key["request.headers".len()..])?;
            principal::Identifier::Header(header_matcher(&name, v, false))
        }
        other => {
            return Err(GenError::Invalid(format!(
                "{other:?} is not a source attribute"
            )));
        }
    };
    Ok(Principal {
        identifier: Some(id),
    })
}

fn ext_permission(item: &Item, values: &[String], _for_tcp: bool) -> Result<Permission, GenError> {
    match item.attr {
        Attr::EnvoyFilter => {
            let (filter, key) = envoy_filter_key(&item.key)?;
            let matchers = values
                .iter()
                .map(
                    |v| match v.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
                        Some(inner) => ValueMatcher {
                            match_pattern: Some(value_matcher::MatchPattern::ListMatch(Box::new(
                                ListMatcher {
                                    match_pattern: Some(list_matcher::MatchPattern::OneOf(
                                        Box::new(string_value_matcher(string_matcher_with_prefix(
                                            inner, "",
                                        ))),
                                    )),
                                },
                            ))),
                        },
                        None => string_value_matcher(string_matcher_with_prefix(v, "")),
                    },
                )
                .collect();
            Ok(Permission {
                rule: Some(permission::Rule::SourcedMetadata(sourced(
                    metadata_matcher(&filter, &[&key], or_value_matcher(matchers)),
                ))),
            })
        }
        other => Err(GenError::Invalid(format!(
            "{other:?} is not a destination attribute"
        ))),
    }
}

fn ext_principal(item: &Item, values: &[String], for_tcp: bool) -> Result<Principal, GenError> {
    http_only(item, for_tcp)?;
    let metadata = |m: MetadataMatcher| Principal {
        identifier: Some(principal::Identifier::SourcedMetadata(sourced(m))),
    };
    match item.attr {
        Attr::RequestPrincipal => {
            let mut or: Vec<Principal> = values
                .iter()
                .map(|v| {
                    let (iss, sub) = request_principal_matchers(v);
                    princ_and(vec![
                        metadata(jwt_claim_matcher("iss", iss)),
                        metadata(jwt_claim_matcher("sub", sub)),
                    ])
                })
                .collect();
            Ok(if or.len() == 1 {
                or.remove(0)
            } else {
                princ_or(or)
            })
        }
        Attr::Audiences => Ok(metadata(jwt_claims_list_matcher(&["aud"], values))),
        Attr::Presenter => Ok(metadata(jwt_claims_list_matcher(&["azp"], values))),
        Attr::RequestClaims => {
            let claims = nested_bracketed(&item.key["request.auth.claims".len()..])?;
            let refs: Vec<&str> = claims.iter().map(String::as_str).collect();
            Ok(metadata(jwt_claims_list_matcher(&refs, values)))
        }
        other => Err(GenError::Invalid(format!(
            "{other:?} is not a source attribute"
        ))),
    }
}

/// Istio's split of a request principal `<iss>/<sub>` (at the last `/`)
/// into separate `iss` and `sub` matchers, with its wildcard rules.
fn request_principal_matchers(value: &str) -> (StringMatcher, StringMatcher) {
    let any = || regex_matcher(".+");
    let (found, iss, sub) = match value.rfind('/') {
        Some(i) => (true, &value[..i], &value[i + 1..]),
        None => (false, value, ""),
    };
    if value == "*" {
        (any(), any())
    } else if let Some(rest) = value.strip_prefix('*') {
        if found {
            let iss_m = if iss == "*" {
                any()
            } else {
                suffix_matcher(iss.trim_start_matches('*'))
            };
            (iss_m, exact_matcher(sub))
        } else {
            (any(), suffix_matcher(rest))
        }
    } else if let Some(rest) = value.strip_suffix('*') {
        if found {
            let sub_m = if sub == "*" {
                any()
            } else {
                prefix_matcher(sub.trim_end_matches('*'))
            };
            (exact_matcher(iss), sub_m)
        } else {
            (prefix_matcher(rest), any())
        }
    } else {
        (exact_matcher(iss), exact_matcher(sub))
    }
}

// ---------------------------------------------------------------------------
// Trust domains
// ---------------------------------------------------------------------------

/// Istio's `ReplaceTrustDomainAliases`: a principal in the mesh's trust
/// domain, an alias or `cluster.local` (meaning "ours") is written for
/// every trust domain of the mesh.
fn replace_trust_domains(principals: &[String], bundle: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in principals {
        let parts: Vec<&str> = p.split('/').collect();
        if parts.len() != 5 || parts[0] == "*" {
            out.push(p.clone());
            continue;
        }
        let td = parts[0];
        if bundle.iter().any(|b| b == td) || td == api::defaults::TRUST_DOMAIN {
            let mut these: Vec<String> = Vec::new();
            for b in bundle {
                let replaced = match td.strip_prefix('*') {
                    Some(suffix) if b.ends_with(suffix) => p.clone(),
                    _ => format!("{b}/{}", parts[1..].join("/")),
                };
                if !these.contains(&replaced) {
                    these.push(replaced);
                }
            }
            out.extend(these);
        } else {
            out.push(p.clone());
        }
    }
    out
}

/// Istio's `ExpandTrustDomainAliases`.
fn expand_trust_domains(values: &[String], bundle: &[String]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for v in values {
        let expanded: Vec<&String> = if bundle.contains(v) {
            bundle.iter().collect()
        } else {
            vec![v]
        };
        for e in expanded {
            if seen.insert(e.clone()) {
                out.push(e.clone());
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Matchers
// ---------------------------------------------------------------------------

fn perm_any() -> Permission {
    Permission {
        rule: Some(permission::Rule::Any(true)),
    }
}

fn perm_and(rules: Vec<Permission>) -> Permission {
    Permission {
        rule: Some(permission::Rule::AndRules(permission::Set { rules })),
    }
}

fn perm_or(rules: Vec<Permission>) -> Permission {
    Permission {
        rule: Some(permission::Rule::OrRules(permission::Set { rules })),
    }
}

fn perm_not(p: Permission) -> Permission {
    Permission {
        rule: Some(permission::Rule::NotRule(Box::new(p))),
    }
}

fn princ_any() -> Principal {
    Principal {
        identifier: Some(principal::Identifier::Any(true)),
    }
}

fn princ_and(ids: Vec<Principal>) -> Principal {
    Principal {
        identifier: Some(principal::Identifier::AndIds(principal::Set { ids })),
    }
}

fn princ_or(ids: Vec<Principal>) -> Principal {
    Principal {
        identifier: Some(principal::Identifier::OrIds(principal::Set { ids })),
    }
}

fn princ_not(p: Principal) -> Principal {
    Principal {
        identifier: Some(principal::Identifier::NotId(Box::new(p))),
    }
}

fn authenticated(m: StringMatcher) -> principal::Identifier {
    principal::Identifier::Authenticated(principal::Authenticated {
        principal_name: Some(m),
    })
}

fn exact_matcher(s: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::Exact(s.to_owned())),
        ignore_case: false,
    }
}

fn prefix_matcher(s: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::Prefix(s.to_owned())),
        ignore_case: false,
    }
}

fn suffix_matcher(s: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::Suffix(s.to_owned())),
        ignore_case: false,
    }
}

fn regex_matcher(re: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::SafeRegex(pb::regex(re))),
        ignore_case: false,
    }
}

/// Istio's `StringMatcherWithPrefix`: `*` → presence (`.+`), `*x` → suffix
/// (a regex when there is a prefix to keep), `x*` → prefix, else exact.
fn string_matcher_with_prefix(v: &str, prefix: &str) -> StringMatcher {
    if v == "*" {
        regex_matcher(".+")
    } else if let Some(rest) = v.strip_prefix('*') {
        if prefix.is_empty() {
            suffix_matcher(rest)
        } else {
            regex_matcher(&format!("{}.*{}", quote_meta(prefix), quote_meta(rest)))
        }
    } else if let Some(rest) = v.strip_suffix('*') {
        prefix_matcher(&format!("{prefix}{rest}"))
    } else {
        exact_matcher(&format!("{prefix}{v}"))
    }
}

/// Istio's `HeaderMatcher` / `HostMatcher` (`ignore_case` for hosts).
fn header_matcher(name: &str, v: &str, ignore_case: bool) -> HeaderMatcher {
    let spec = if v == "*" {
        header_matcher::HeaderMatchSpecifier::PresentMatch(true)
    } else {
        let pattern = if let Some(rest) = v.strip_prefix('*') {
            string_matcher::MatchPattern::Suffix(rest.to_owned())
        } else if let Some(rest) = v.strip_suffix('*') {
            string_matcher::MatchPattern::Prefix(rest.to_owned())
        } else {
            string_matcher::MatchPattern::Exact(v.to_owned())
        };
        header_matcher::HeaderMatchSpecifier::StringMatch(StringMatcher {
            match_pattern: Some(pattern),
            ignore_case,
        })
    };
    HeaderMatcher {
        name: name.to_owned(),
        header_match_specifier: Some(spec),
        ..Default::default()
    }
}

/// Dynamic metadata (Envoy's replacement of the deprecated `metadata`
/// field Istio still writes; same matching).
fn sourced(m: MetadataMatcher) -> SourcedMetadata {
    SourcedMetadata {
        metadata_matcher: Some(m),
        ..Default::default()
    }
}

fn string_value_matcher(m: StringMatcher) -> ValueMatcher {
    ValueMatcher {
        match_pattern: Some(value_matcher::MatchPattern::StringMatch(m)),
    }
}

fn or_value_matcher(mut matchers: Vec<ValueMatcher>) -> ValueMatcher {
    if matchers.len() == 1 {
        return matchers.remove(0);
    }
    ValueMatcher {
        match_pattern: Some(value_matcher::MatchPattern::OrMatch(OrMatcher {
            value_matchers: matchers,
        })),
    }
}

fn metadata_matcher(filter: &str, path: &[&str], value: ValueMatcher) -> MetadataMatcher {
    MetadataMatcher {
        filter: filter.to_owned(),
        path: path
            .iter()
            .map(|k| metadata_matcher::PathSegment {
                segment: Some(metadata_matcher::path_segment::Segment::Key(
                    (*k).to_owned(),
                )),
            })
            .collect(),
        value: Some(value),
        ..Default::default()
    }
}

/// One claim of the verified JWT payload (`iss`, `sub`).
fn jwt_claim_matcher(claim: &str, m: StringMatcher) -> MetadataMatcher {
    metadata_matcher(JWT_FILTER, &[PAYLOAD_KEY, claim], string_value_matcher(m))
}

/// A (possibly nested, possibly list-valued) claim equal to one of
/// `values`: the claim itself, or one element of it when it is a list.
fn jwt_claims_list_matcher(claims: &[&str], values: &[String]) -> MetadataMatcher {
    let value = or_value_matcher(
        values
            .iter()
            .map(|v| string_value_matcher(string_matcher_with_prefix(v, "")))
            .collect(),
    );
    let list = ValueMatcher {
        match_pattern: Some(value_matcher::MatchPattern::ListMatch(Box::new(
            ListMatcher {
                match_pattern: Some(list_matcher::MatchPattern::OneOf(Box::new(value.clone()))),
            },
        ))),
    };
    let mut path = vec![PAYLOAD_KEY];
    path.extend_from_slice(claims);
    metadata_matcher(
        JWT_FILTER,
        &path,
        ValueMatcher {
            match_pattern: Some(value_matcher::MatchPattern::OrMatch(OrMatcher {
                value_matchers: vec![list, value],
            })),
        },
    )
}

fn envoy_filter_key(key: &str) -> Result<(String, String), GenError> {
    let trimmed = key
        .strip_prefix("experimental.")
        .unwrap_or(key)
        .trim_end_matches(']');
    match trimmed.split_once('[') {
        Some((filter, k)) if !filter.is_empty() && !k.is_empty() => {
            Ok((filter.to_owned(), k.to_owned()))
        }
        _ => Err(GenError::Invalid(format!("invalid key {key:?}"))),
    }
}

fn envoy_filter_matcher(key: &str, v: &str) -> Result<MetadataMatcher, GenError> {
    let (filter, k) = envoy_filter_key(key)?;
    let value = match v.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
        Some(inner) => ValueMatcher {
            match_pattern: Some(value_matcher::MatchPattern::ListMatch(Box::new(
                ListMatcher {
                    match_pattern: Some(list_matcher::MatchPattern::OneOf(Box::new(
                        string_value_matcher(string_matcher_with_prefix(inner, "")),
                    ))),
                },
            ))),
        },
        None => string_value_matcher(string_matcher_with_prefix(v, "")),
    };
    Ok(metadata_matcher(&filter, &[&k], value))
}

/// `[name]` → `name`.
fn bracketed(s: &str) -> Result<String, GenError> {
    s.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .map(str::to_owned)
        .ok_or_else(|| GenError::Invalid(format!("expected [<name>], found {s:?}")))
}

/// `[a][b]` → `[a, b]`; `[a.b]` stays one name (Istio's
/// `extractNameInNestedBrackets`).
fn nested_bracketed(s: &str) -> Result<Vec<String>, GenError> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'[' {
            return bracketed(s).map(|n| vec![n]);
        }
        let Some(end) = b[i + 1..]
            .iter()
            .position(|c| *c == b']' || *c == b'[')
            .map(|p| p + i + 1)
            .filter(|&e| b[e] == b']')
        else {
            return bracketed(s).map(|n| vec![n]);
        };
        out.push(s[i + 1..end].to_owned());
        i = end + 1;
    }
    if out.is_empty() {
        return bracketed(s).map(|n| vec![n]);
    }
    Ok(out)
}

fn cidr(v: &str) -> Result<CidrRange, GenError> {
    let bad = || GenError::Invalid(format!("{v:?} is not an IP address or CIDR block"));
    let (addr, len) = match v.split_once('/') {
        Some((a, l)) => (a, Some(l.parse::<u32>().map_err(|_| bad())?)),
        None => (v, None),
    };
    let ip: std::net::IpAddr = addr.parse().map_err(|_| bad())?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = len.unwrap_or(max);
    if len > max {
        return Err(bad());
    }
    Ok(CidrRange {
        address_prefix: ip.to_string(),
        prefix_len: Some(pb::u32v(len)),
    })
}

fn port(v: &str) -> Result<u32, GenError> {
    v.parse::<u32>()
        .ok()
        .filter(|p| *p <= 65535)
        .ok_or_else(|| GenError::Invalid(format!("{v:?} is not a port number")))
}

/// Go's `regexp.QuoteMeta`.
fn quote_meta(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

// ---------------------------------------------------------------------------
// ext_authz
// ---------------------------------------------------------------------------

/// A usable CUSTOM provider: its kind and the cluster it calls.
struct Resolved<'a> {
    hostname: String,
    cluster: String,
    http: Option<&'a EnvoyExtAuthzHttp>,
    grpc: Option<&'a EnvoyExtAuthzGrpc>,
}

/// Finds the provider in MeshConfig and its service among what the proxy
/// sees (a cluster the proxy lacks would make Envoy reject the filter).
fn resolve_provider<'a>(
    ctx: &'a PushContext,
    node: &ProxyNode,
    name: &str,
) -> Result<Resolved<'a>, String> {
    let provider = ctx
        .mesh()
        .extension_provider(name)
        .ok_or_else(|| format!("no MeshConfig extensionProviders entry named {name:?}"))?;
    let (service, port, status) = match (
        &provider.envoy_ext_authz_http,
        &provider.envoy_ext_authz_grpc,
    ) {
        (Some(h), _) => (&h.service, h.port, &h.status_on_error),
        (None, Some(g)) => (&g.service, g.port, &g.status_on_error),
        (None, None) => {
            return Err(format!(
                "extension provider {name:?} is not envoyExtAuthzHttp or envoyExtAuthzGrpc"
            ));
        }
    };
    let own = ext_index_path(ctx, name);
    if let Some(m) = ctx
        .mesh()
        .validate()
        .into_iter()
        .find(|(p, _)| *p == own || p.starts_with(&format!("{own}.")))
    {
        return Err(format!(
            "extension provider {name:?} is invalid: {}: {}",
            m.0, m.1
        ));
    }
    if !status.is_empty() && status_code(status).is_none() {
        return Err(format!(
            "extension provider {name:?}: statusOnError {status:?} is not a status Envoy knows"
        ));
    }
    let (ns, host) = match service.split_once('/') {
        Some((ns, h)) => (ns, h),
        None => ("", service.as_str()),
    };
    let svc = ctx
        .registry()
        .service(host)
        .or_else(|| {
            (!ns.is_empty())
                .then(|| ctx.registry().resolve_host(host, ns, ctx.domain_suffix()))
                .flatten()
        })
        .filter(|s| ns.is_empty() || ns == "*" || s.namespace == ns)
        .ok_or_else(|| {
            format!("extension provider {name:?}: service {service:?} is not in the registry")
        })?;
    if svc.port(port).is_none() {
        return Err(format!(
            "extension provider {name:?}: service {} has no port {port}",
            svc.hostname
        ));
    }
    let visible = ctx.sidecar_services(node).iter().any(|(s, ports)| {
        s.hostname == svc.hostname && ports.as_ref().is_none_or(|p| p.contains(&port))
    }) || (node.kind != crate::node::NodeKind::Sidecar
        && ctx
            .visible_services(&node.namespace)
            .any(|s| s.hostname == svc.hostname));
    if !visible {
        return Err(format!(
            "extension provider {name:?}: service {} is not visible to this proxy (exportTo / Sidecar egress)",
            svc.hostname
        ));
    }
    Ok(Resolved {
        hostname: svc.hostname.clone(),
        cluster: outbound_name(port, "", &svc.hostname),
        http: provider.envoy_ext_authz_http.as_ref(),
        grpc: provider.envoy_ext_authz_grpc.as_ref(),
    })
}

fn ext_index_path(ctx: &PushContext, name: &str) -> String {
    let i = ctx
        .mesh()
        .extension_providers
        .iter()
        .position(|p| p.name == name)
        .unwrap_or(usize::MAX);
    format!("extensionProviders[{i}]")
}

fn status_code(s: &str) -> Option<HttpStatus> {
    let code: i32 = s.parse().ok()?;
    StatusCode::try_from(code)
        .ok()
        .map(|c| HttpStatus { code: c as i32 })
}

/// ext_authz runs when the CUSTOM RBAC shadow rules matched a policy of
/// `provider`.
fn filter_enabled_metadata(rbac_filter: &str, provider: &str) -> MetadataMatcher {
    metadata_matcher(
        rbac_filter,
        &[&format!(
            "{EXT_AUTHZ_SHADOW_PREFIX}shadow_effective_policy_id"
        )],
        string_value_matcher(prefix_matcher(&format!(
            "{EXT_AUTHZ_POLICY_PREFIX}-{provider}"
        ))),
    )
}

/// Istio's header lists: `x*` prefix, `*x` suffix, else exact; case-insensitive.
fn header_list(headers: &[String]) -> Option<ListStringMatcher> {
    (!headers.is_empty()).then(|| ListStringMatcher {
        patterns: headers
            .iter()
            .map(|h| StringMatcher {
                match_pattern: Some(if let Some(rest) = h.strip_prefix('*') {
                    string_matcher::MatchPattern::Suffix(rest.to_owned())
                } else if let Some(rest) = h.strip_suffix('*') {
                    string_matcher::MatchPattern::Prefix(rest.to_owned())
                } else {
                    string_matcher::MatchPattern::Exact(h.clone())
                }),
                ignore_case: true,
            })
            .collect(),
    })
}

fn body(
    b: Option<&api::mesh_config::ExtAuthzRequestBody>,
) -> Option<http_ext_authz::BufferSettings> {
    b.map(|b| http_ext_authz::BufferSettings {
        max_request_bytes: b.max_request_bytes,
        allow_partial_message: b.allow_partial_message,
        pack_as_bytes: b.pack_as_bytes,
    })
}

impl Resolved<'_> {
    fn grpc_service(&self, timeout: Option<api::IstioDuration>) -> GrpcService {
        GrpcService {
            target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                grpc_service::EnvoyGrpc {
                    cluster_name: self.cluster.clone(),
                    authority: self.hostname.clone(),
                    ..Default::default()
                },
            )),
            timeout: Some(pb::duration(timeout.map_or(EXT_AUTHZ_TIMEOUT, |t| t.get()))),
            ..Default::default()
        }
    }

    fn http(&self, provider: &str) -> http_ext_authz::ExtAuthz {
        let enabled = Some(filter_enabled_metadata(HTTP_RBAC_FILTER, provider));
        if let Some(h) = self.http {
            let allowed = header_list(&h.include_request_headers_in_check)
                .or_else(|| header_list(&h.include_headers_in_check));
            let headers_to_add: Vec<HeaderValue> = h
                .include_additional_headers_in_check
                .iter()
                .map(|(k, v)| HeaderValue {
                    key: k.clone(),
                    value: v.clone(),
                    ..Default::default()
                })
                .collect();
            let response = (!h.headers_to_upstream_on_allow.is_empty()
                || !h.headers_to_downstream_on_deny.is_empty()
                || !h.headers_to_downstream_on_allow.is_empty())
            .then(|| http_ext_authz::AuthorizationResponse {
                allowed_upstream_headers: header_list(&h.headers_to_upstream_on_allow),
                allowed_client_headers: header_list(&h.headers_to_downstream_on_deny),
                allowed_client_headers_on_success: header_list(&h.headers_to_downstream_on_allow),
                ..Default::default()
            });
            http_ext_authz::ExtAuthz {
                status_on_error: status_code(&h.status_on_error),
                failure_mode_allow: h.fail_open,
                clear_route_cache: h.clear_route_cache,
                transport_api_version: ApiVersion::V3 as i32,
                services: Some(http_ext_authz::ext_authz::Services::HttpService(
                    http_ext_authz::HttpService {
                        path_prefix: h.path_prefix.clone(),
                        server_uri: Some(HttpUri {
                            uri: format!("http://{}", self.hostname),
                            timeout: Some(pb::duration(
                                h.timeout.map_or(EXT_AUTHZ_TIMEOUT, |t| t.get()),
                            )),
                            http_upstream_type: Some(http_uri::HttpUpstreamType::Cluster(
                                self.cluster.clone(),
                            )),
                        }),
                        authorization_request: (!headers_to_add.is_empty()).then(|| {
                            #[allow(deprecated)]
                            http_ext_authz::AuthorizationRequest {
                                headers_to_add,
                                ..Default::default()
                            }
                        }),
                        authorization_response: response,
                        ..Default::default()
                    },
                )),
                filter_enabled_metadata: enabled,
                with_request_body: body(h.include_request_body_in_check.as_ref()),
                allowed_headers: allowed,
                ..Default::default()
            }
        } else {
            let g = self.grpc.cloned().unwrap_or_default();
            http_ext_authz::ExtAuthz {
                status_on_error: status_code(&g.status_on_error),
                failure_mode_allow: g.fail_open,
                clear_route_cache: g.clear_route_cache,
                transport_api_version: ApiVersion::V3 as i32,
                services: Some(http_ext_authz::ext_authz::Services::GrpcService(
                    self.grpc_service(g.timeout),
                )),
                filter_enabled_metadata: enabled,
                with_request_body: body(g.include_request_body_in_check.as_ref()),
                ..Default::default()
            }
        }
    }

    fn tcp(&self, provider: &str) -> Option<tcp_ext_authz::ExtAuthz> {
        let g = self.grpc?;
        Some(tcp_ext_authz::ExtAuthz {
            stat_prefix: TCP_STAT_PREFIX.to_owned(),
            failure_mode_allow: g.fail_open,
            transport_api_version: ApiVersion::V3 as i32,
            grpc_service: Some(self.grpc_service(g.timeout)),
            filter_enabled_metadata: Some(filter_enabled_metadata(NETWORK_RBAC_FILTER, provider)),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_principals_split_at_the_last_slash() {
        let (iss, sub) = request_principal_matchers("https://issuer.example/path/user");
        assert_eq!(iss, exact_matcher("https://issuer.example/path"));
        assert_eq!(sub, exact_matcher("user"));
        let (iss, sub) = request_principal_matchers("*");
        assert_eq!((iss, sub), (regex_matcher(".+"), regex_matcher(".+")));
        let (iss, sub) = request_principal_matchers("iss/*");
        assert_eq!((iss, sub), (exact_matcher("iss"), regex_matcher(".+")));
        let (iss, sub) = request_principal_matchers("*/sub");
        assert_eq!((iss, sub), (regex_matcher(".+"), exact_matcher("sub")));
        let (iss, sub) = request_principal_matchers("*@example.com");
        assert_eq!(
            (iss, sub),
            (regex_matcher(".+"), suffix_matcher("@example.com"))
        );
    }

    #[test]
    fn principals_keep_istio_wildcards_under_the_spiffe_prefix() {
        assert_eq!(
            string_matcher_with_prefix("cluster.local/ns/a/sa/b", "spiffe://"),
            exact_matcher("spiffe://cluster.local/ns/a/sa/b")
        );
        assert_eq!(
            string_matcher_with_prefix("cluster.local/ns/a/*", "spiffe://"),
            prefix_matcher("spiffe://cluster.local/ns/a/")
        );
        assert_eq!(
            string_matcher_with_prefix("*/sa/b", "spiffe://"),
            regex_matcher("spiffe://.*/sa/b")
        );
        assert_eq!(
            string_matcher_with_prefix("*", "spiffe://"),
            regex_matcher(".+")
        );
    }

    #[test]
    fn trust_domain_migration() {
        let bundle = vec!["td".to_owned(), "old".to_owned()];
        assert_eq!(
            replace_trust_domains(&["cluster.local/ns/a/sa/b".to_owned()], &bundle),
            ["td/ns/a/sa/b", "old/ns/a/sa/b"]
        );
        assert_eq!(
            replace_trust_domains(
                &["other/ns/a/sa/b".to_owned(), "*/ns/a/sa/b".to_owned()],
                &bundle
            ),
            ["other/ns/a/sa/b", "*/ns/a/sa/b"]
        );
        assert_eq!(
            expand_trust_domains(&["old".to_owned(), "x".to_owned()], &bundle),
            ["td", "old", "x"]
        );
    }

    #[test]
    fn claims_and_cidrs() {
        assert_eq!(
            nested_bracketed("[groups][0]").expect("claims"),
            ["groups", "0"]
        );
        assert_eq!(nested_bracketed("[a.b]").expect("claim"), ["a.b"]);
        assert!(nested_bracketed("groups").is_err());
        assert_eq!(
            cidr("10.0.0.0/8").expect("cidr").prefix_len,
            Some(pb::u32v(8))
        );
        assert_eq!(cidr("::1").expect("ip").prefix_len, Some(pb::u32v(128)));
        assert!(cidr("10.0.0.0/33").is_err());
        assert_eq!(quote_meta("a.b*c"), "a\\.b\\*c");
    }
}
