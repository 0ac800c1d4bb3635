//! RequestAuthentication → `envoy.filters.http.jwt_authn`, as istiod's
//! `convertToEnvoyJwtConfig` builds it:
//!
//! - every JWT rule of every applicable policy, sorted by issuer, becomes
//!   provider `origins-<i>`, with the verified payload written to dynamic
//!   metadata (`payload_in_metadata: payload`) for RBAC to match
//!   `requestPrincipals`, `request.auth.*` and claims;
//! - a request without a token passes (AuthorizationPolicy decides), one
//!   with an invalid token is rejected: `requires_any [provider,
//!   allow_missing]` for one provider; for several, `requires_any [each
//!   provider, requires_all [requires_any [provider_i, allow_missing] ...]]`.
//!
//! Keys: `jwks` inline as `local_jwks`; `jwksUri` as `remote_jwks` fetched
//! by the proxy through the outbound cluster of the URI's host and port
//! (istiod's Envoy-fetch mode; istiod's default fetches the keys itself,
//! which a translator without network access cannot). A rule with neither
//! gets a key nobody holds, so its tokens are rejected (istiod's fallback).

use std::collections::BTreeMap;

use api::Object;
use api::security::{JwtRule, RequestAuthentication};
use envoy_types::pb::envoy::config::core::v3::{DataSource, HttpUri, data_source, http_uri};
use envoy_types::pb::envoy::config::route::v3::{RouteMatch, route_match};
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{
    JwtAuthentication, JwtClaimToHeader, JwtHeader, JwtProvider, JwtRequirement,
    JwtRequirementAndList, JwtRequirementOrList, RemoteJwks, RequirementRule, jwt_provider,
    jwt_requirement, requirement_rule,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};

use super::det;
use crate::Diagnostic;
use crate::cluster::outbound_name;
use crate::context::PushContext;
use crate::pb;

/// The filter's name (also the dynamic metadata namespace RBAC reads).
pub const JWT_FILTER: &str = "envoy.filters.http.jwt_authn";
/// The metadata key holding the verified payload.
pub const PAYLOAD_KEY: &str = "payload";
/// JWKS fetch timeout when a rule sets none (Istio: 5s).
const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long fetched keys are cached (Istio: 5m).
const CACHE_DURATION: std::time::Duration = std::time::Duration::from_secs(300);
/// Claims always read as space-separated lists.
const SPACE_DELIMITED: &[&str] = &["permission", "scope"];
/// A public key whose private half was discarded: tokens of an issuer
/// without usable keys verify against it and fail.
const UNUSABLE_JWKS: &str = r#"{"keys":[{"kty":"RSA","alg":"RS256","use":"sig","kid":"trellis-unusable","e":"AQAB","n":"rf8YAL0PnWsF8b2Role_6jwbwVRmEbHO3YJ2fcT9bTYjhvlwloWUo1BWPhcZDI2Sg7j7GGL7tLnQBB54McrpytzmzWnxJVVyu-sWB_hDPlr2zPNnFBVsgmugwdltpojBJeBcDU7xf__AO9Vjd7ycBnwHvRoObbJii0dmLlJm7UOd1sj1eEgg8183lZT0c7fe2MEqmXWhLtMGaEBud0Nw_cNwwzoHqwucycZYcT7IUA0QLqm2Ve2g38ggY7eLWF9TtW1gTu9hcq_-jIkuK992iI1AGFbCVmHgeTrAtY38GMySF38-_fpJMddqt_0LQw6zu8QXMc0o0a6Rr1s3YOd4PQ"}]}"#;

/// The jwt_authn filter for `policies` (`None` without JWT rules).
/// `clear_route_cache` is set on gateways (Istio: every proxy but sidecars).
pub fn filter(
    ctx: &PushContext,
    policies: &[(&Object, &RequestAuthentication)],
    clear_route_cache: bool,
    diags: &mut Vec<Diagnostic>,
) -> Option<HttpFilter> {
    let mut rules: Vec<(&Object, usize, &JwtRule)> = policies
        .iter()
        .flat_map(|(obj, ra)| ra.jwt_rules.iter().enumerate().map(|(i, r)| (*obj, i, r)))
        .collect();
    if rules.is_empty() {
        return None;
    }
    rules.sort_by(|a, b| a.2.issuer.cmp(&b.2.issuer));
    let mut providers = BTreeMap::new();
    let mut inner_and = Vec::new();
    let mut outer_or = Vec::new();
    for (i, (obj, idx, rule)) in rules.iter().enumerate() {
        let name = format!("origins-{i}");
        let origin = super::object_name("RequestAuthentication", obj);
        let field = format!("spec.jwtRules[{idx}]");
        providers.insert(
            name.clone(),
            provider(ctx, rule, clear_route_cache, &origin, &field, diags),
        );
        inner_and.push(requires_any(vec![
            provider_requirement(&name),
            JwtRequirement {
                requires_type: Some(jwt_requirement::RequiresType::AllowMissing(
                    Default::default(),
                )),
            },
        ]));
        outer_or.push(provider_requirement(&name));
    }
    let requires = if inner_and.len() == 1 {
        inner_and.remove(0)
    } else {
        outer_or.push(JwtRequirement {
            requires_type: Some(jwt_requirement::RequiresType::RequiresAll(
                JwtRequirementAndList {
                    requirements: inner_and,
                },
            )),
        });
        requires_any(outer_or)
    };
    let config = det::JwtAuthentication {
        providers,
        rules: vec![RequirementRule {
            r#match: Some(RouteMatch {
                path_specifier: Some(route_match::PathSpecifier::Prefix("/".to_owned())),
                ..Default::default()
            }),
            requirement_type: Some(requirement_rule::RequirementType::Requires(requires)),
        }],
        bypass_cors_preflight: true,
    };
    Some(HttpFilter {
        name: JWT_FILTER.to_owned(),
        config_type: Some(http_filter::ConfigType::TypedConfig(det::any_as::<
            JwtAuthentication,
        >(&config))),
        ..Default::default()
    })
}

fn provider_requirement(name: &str) -> JwtRequirement {
    JwtRequirement {
        requires_type: Some(jwt_requirement::RequiresType::ProviderName(name.to_owned())),
    }
}

fn requires_any(requirements: Vec<JwtRequirement>) -> JwtRequirement {
    JwtRequirement {
        requires_type: Some(jwt_requirement::RequiresType::RequiresAny(
            JwtRequirementOrList { requirements },
        )),
    }
}

fn provider(
    ctx: &PushContext,
    rule: &JwtRule,
    clear_route_cache: bool,
    origin: &str,
    field: &str,
    diags: &mut Vec<Diagnostic>,
) -> JwtProvider {
    let mut claims: Vec<String> = rule.space_delimited_claims.clone();
    claims.extend(SPACE_DELIMITED.iter().map(|s| (*s).to_owned()));
    claims.sort();
    claims.dedup();
    let timeout = rule.timeout.map_or(DEFAULT_TIMEOUT, |t| t.get());
    let jwks = if !rule.jwks.is_empty() {
        local_jwks(&rule.jwks)
    } else if !rule.jwks_uri.is_empty() {
        match remote_cluster(ctx, &rule.jwks_uri) {
            Ok((cluster, found)) => {
                if !found {
                    diags.push(Diagnostic::new(
                        origin,
                        format!("{field}.jwksUri"),
                        format!(
                            "no service for {:?}: the proxy cannot fetch the keys (cluster {cluster}); add a ServiceEntry for the host",
                            rule.jwks_uri
                        ),
                    ));
                }
                jwt_provider::JwksSourceSpecifier::RemoteJwks(RemoteJwks {
                    http_uri: Some(HttpUri {
                        uri: rule.jwks_uri.clone(),
                        timeout: Some(pb::duration(timeout)),
                        http_upstream_type: Some(http_uri::HttpUpstreamType::Cluster(cluster)),
                    }),
                    cache_duration: Some(pb::duration(CACHE_DURATION)),
                    ..Default::default()
                })
            }
            Err(m) => {
                diags.push(Diagnostic::new(
                    origin,
                    format!("{field}.jwksUri"),
                    format!("{m}; tokens of this issuer are rejected"),
                ));
                local_jwks(UNUSABLE_JWKS)
            }
        }
    } else {
        diags.push(Diagnostic::new(
            origin,
            field,
            "neither jwks nor jwksUri: keys cannot be discovered from the issuer here; tokens of this issuer are rejected",
        ));
        local_jwks(UNUSABLE_JWKS)
    };
    JwtProvider {
        issuer: rule.issuer.clone(),
        audiences: rule.audiences.clone(),
        forward: rule.forward_original_token,
        forward_payload_header: rule.output_payload_to_header.clone(),
        payload_in_metadata: PAYLOAD_KEY.to_owned(),
        normalize_payload_in_metadata: Some(jwt_provider::NormalizePayload {
            space_delimited_claims: claims,
        }),
        clear_route_cache,
        claim_to_headers: rule
            .output_claim_to_headers
            .iter()
            .map(|c| JwtClaimToHeader {
                header_name: c.header.clone(),
                claim_name: c.claim.clone(),
                ..Default::default()
            })
            .collect(),
        from_headers: rule
            .from_headers
            .iter()
            .map(|h| JwtHeader {
                name: h.name.clone(),
                value_prefix: h.prefix.clone(),
            })
            .collect(),
        from_params: rule.from_params.clone(),
        from_cookies: rule.from_cookies.clone(),
        jwks_source_specifier: Some(jwks),
        ..Default::default()
    }
}

fn local_jwks(text: &str) -> jwt_provider::JwksSourceSpecifier {
    jwt_provider::JwksSourceSpecifier::LocalJwks(DataSource {
        specifier: Some(data_source::Specifier::InlineString(text.to_owned())),
        ..Default::default()
    })
}

/// The outbound cluster of a JWKS URI's host and port (80 for http, 443 for
/// https), and whether the registry has that service port.
fn remote_cluster(ctx: &PushContext, uri: &str) -> Result<(String, bool), String> {
    let (rest, default_port) = if let Some(r) = uri.strip_prefix("https://") {
        (r, 443)
    } else if let Some(r) = uri.strip_prefix("http://") {
        (r, 80)
    } else {
        return Err(format!("jwksUri {uri:?} is not http(s)"));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((h, p)) => (h, p.strip_prefix(':')),
            None => return Err(format!("jwksUri {uri:?} has a malformed host")),
        },
        None => match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        },
    };
    let port = match port {
        Some(p) => p
            .parse::<u32>()
            .map_err(|_| format!("jwksUri {uri:?} has an invalid port"))?,
        None => default_port,
    };
    if host.is_empty() {
        return Err(format!("jwksUri {uri:?} has no host"));
    }
    let found = ctx
        .registry()
        .service(host)
        .is_some_and(|s| s.port(port).is_some());
    Ok((outbound_name(port, "", host), found))
}
