//! `envoy.filters.http.jwt_authn`: verifies JSON Web Tokens as Envoy does.
//!
//! The first rule whose route match fits the request (or the route's
//! `PerRouteConfig`) names a requirement: a provider, `requires_any`,
//! `requires_all`, `allow_missing`, `allow_missing_or_failed`. Tokens are
//! taken from the provider's locations, parsed, checked for issuer, time
//! (with clock skew), audiences, subject and lifetime, then their signature
//! against the provider's key set (inline, or fetched from a cluster).
//! A verified token can be forwarded (`forward_payload_header`,
//! `claim_to_headers`) and its payload is written to dynamic metadata
//! (`payload_in_metadata`) for later filters such as RBAC.
//!
//! Failures answer 401 with jwt_verify_lib's message and a
//! `www-authenticate: Bearer realm="<scheme>://<host><path>"` header
//! (`, error="invalid_token"` unless the token is missing); audiences not
//! allowed answer 403.

mod extract;
mod fetch;
mod jwks;
mod jwt;
mod status;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source::Specifier};
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, Route, RouteConfiguration, VirtualHost, route::Action as RouteAction,
};
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{
    JwtAuthentication, JwtProvider, JwtRequirement, PerRouteConfig, jwt_provider,
    jwt_requirement::RequiresType, per_route_config::RequirementSpecifier,
    requirement_rule::RequirementType,
};
use envoy_types::pb::google::protobuf::Any;
use futures::future::BoxFuture;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use prost::Message;
use serde_json::{Map, Value};

pub use jwks::Jwks;
pub use jwt::{Audiences, Jwt};
pub use status::Status;

use crate::matcher::StringMatch;
use crate::rbac::DynamicMetadata;
use crate::snapshot::SharedSnapshot;
use extract::{Extractor, Location, Token};
use fetch::Remote;

pub const TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication";
pub const PER_ROUTE_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig";
/// The dynamic metadata namespace verified payloads are written to.
pub const METADATA_NAMESPACE: &str = "envoy.filters.http.jwt_authn";

const DEFAULT_CLOCK_SKEW: u64 = 60;
/// Envoy cuts the path in the `www-authenticate` realm at 256 bytes.
const MAX_REALM_PATH: usize = 256;

type Error = (String, String);

fn at(prefix: &str, (field, msg): Error) -> Error {
    if field.is_empty() {
        (prefix.to_string(), msg)
    } else {
        (format!("{prefix}.{field}"), msg)
    }
}

#[derive(Debug)]
enum Keys {
    /// `local_jwks`; `None` when it is empty (tokens then fail with
    /// "Jwks doesn't have any valid public key").
    Local(Option<Arc<Jwks>>),
    Remote(Arc<Remote>),
}

#[derive(Debug)]
struct Provider {
    issuer: String,
    audiences: Audiences,
    subjects: Option<StringMatch>,
    /// `require_expiration` / `max_lifetime`: `Some(None)` requires an
    /// expiration, `Some(Some(d))` also bounds the remaining lifetime.
    max_lifetime: Option<Option<Duration>>,
    forward: bool,
    forward_payload_header: Option<HeaderName>,
    pad_forward_payload_header: bool,
    payload_in_metadata: String,
    header_in_metadata: String,
    failed_status_in_metadata: String,
    space_delimited_claims: Vec<String>,
    clock_skew: u64,
    claim_to_headers: Vec<(HeaderName, Vec<String>)>,
    keys: Keys,
}

#[derive(Debug)]
enum Verifier {
    Provider {
        provider: Arc<Provider>,
        /// `provider_and_audiences`: replaces the provider's audiences.
        audiences: Option<Audiences>,
        extractor: Extractor,
    },
    /// `allow_missing` / `allow_missing_or_failed`: tokens of every provider.
    AllowMissing {
        extractor: Extractor,
        allow_failed: bool,
    },
    Any {
        children: Vec<Self>,
        allow_missing_or_failed: bool,
        allow_missing: bool,
    },
    All(Vec<Self>),
    AllowAll,
}

#[derive(Debug, Default)]
pub struct JwtStats {
    pub allowed: AtomicU64,
    pub denied: AtomicU64,
}

#[derive(Debug)]
pub struct JwtAuthn {
    /// By name; also the order issuers are looked up in.
    providers: BTreeMap<String, Arc<Provider>>,
    /// The rules' matches as a route table (one route per rule, named by
    /// its index), for Envoy's route-match semantics.
    rule_table: Option<route::RouteTable>,
    rule_verifiers: Vec<Option<Arc<Verifier>>>,
    requirement_map: HashMap<String, Arc<Verifier>>,
    all_requirement_names: String,
    bypass_cors_preflight: bool,
    strip_failure_response: bool,
    pub stats: JwtStats,
}

/// The parts of a request the filter reads and changes.
#[derive(Debug)]
pub struct JwtRequest<'a> {
    pub headers: &'a mut HeaderMap,
    /// `:path` with the query.
    pub path: &'a str,
    pub method: &'a Method,
    pub authority: &'a str,
    /// The scheme routing uses, for rule matching.
    pub scheme: &'a str,
}

/// A local reply the filter asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub status: http::StatusCode,
    pub body: String,
    pub www_authenticate: Option<String>,
    /// Envoy's response code details.
    pub details: String,
}

fn read_data_source(ds: &DataSource) -> Result<String, String> {
    match &ds.specifier {
        Some(Specifier::Filename(f)) => {
            std::fs::read_to_string(f).map_err(|e| format!("cannot read '{f}': {e}"))
        }
        Some(Specifier::InlineString(s)) => Ok(s.clone()),
        Some(Specifier::InlineBytes(b)) => Ok(String::from_utf8_lossy(b).into_owned()),
        Some(Specifier::EnvironmentVariable(v)) => {
            std::env::var(v).map_err(|_| format!("environment variable '{v}' is not set"))
        }
        None => Ok(String::new()),
    }
}

fn header_name(name: &str, field: &str) -> Result<HeaderName, Error> {
    if name.is_empty() {
        return Err((field.to_string(), "must not be empty".into()));
    }
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| (field.to_string(), format!("invalid header name '{name}'")))
}

impl Provider {
    fn compile(name: &str, p: &JwtProvider) -> Result<Self, Error> {
        for (i, h) in p.from_headers.iter().enumerate() {
            header_name(&h.name, &format!("from_headers[{i}].name"))?;
        }
        let forward_payload_header = if p.forward_payload_header.is_empty() {
            None
        } else {
            Some(header_name(
                &p.forward_payload_header,
                "forward_payload_header",
            )?)
        };
        let mut claim_to_headers = Vec::new();
        for (i, c) in p.claim_to_headers.iter().enumerate() {
            let h = header_name(
                &c.header_name,
                &format!("claim_to_headers[{i}].header_name"),
            )?;
            let path: Vec<String> = if !c.claim_path.is_empty() {
                if !c.claim_name.is_empty() {
                    return Err((
                        format!("claim_to_headers[{i}]"),
                        "exactly one of claim_name and claim_path must be set".into(),
                    ));
                }
                c.claim_path.iter().map(|s| s.key.clone()).collect()
            } else if c.claim_name.is_empty() {
                return Err((
                    format!("claim_to_headers[{i}].claim_name"),
                    "must not be empty".into(),
                ));
            } else {
                c.claim_name.split('.').map(str::to_string).collect()
            };
            claim_to_headers.push((h, path));
        }
        let subjects = p
            .subjects
            .as_ref()
            .map(crate::rbac::metadata::compile_string_matcher)
            .transpose()
            .map_err(|e| ("subjects".to_string(), e))?;
        let max_lifetime = match (&p.max_lifetime, p.require_expiration) {
            (Some(d), _) => {
                if d.seconds < 0 || d.nanos < 0 {
                    return Err(("max_lifetime".into(), "must not be negative".into()));
                }
                Some(Some(Duration::new(d.seconds as u64, d.nanos as u32)))
            }
            (None, true) => Some(None),
            (None, false) => None,
        };
        let keys = match &p.jwks_source_specifier {
            Some(jwt_provider::JwksSourceSpecifier::LocalJwks(ds)) => {
                let text = read_data_source(ds).map_err(|e| ("local_jwks".to_string(), e))?;
                if text.is_empty() {
                    Keys::Local(None)
                } else {
                    let jwks = Jwks::parse(&text).map_err(|e| {
                        (
                            "local_jwks".to_string(),
                            format!(
                                "Provider '{name}' in jwt_authn config has invalid local jwks: {e}"
                            ),
                        )
                    })?;
                    Keys::Local(Some(Arc::new(jwks)))
                }
            }
            Some(jwt_provider::JwksSourceSpecifier::RemoteJwks(r)) => Keys::Remote(Arc::new(
                Remote::compile(r).map_err(|e| at("remote_jwks", e))?,
            )),
            None => {
                return Err((
                    String::new(),
                    "one of remote_jwks or local_jwks is required".into(),
                ));
            }
        };
        Ok(Self {
            issuer: p.issuer.clone(),
            audiences: Audiences::new(&p.audiences),
            subjects,
            max_lifetime,
            forward: p.forward,
            forward_payload_header,
            pad_forward_payload_header: p.pad_forward_payload_header,
            payload_in_metadata: p.payload_in_metadata.clone(),
            header_in_metadata: p.header_in_metadata.clone(),
            failed_status_in_metadata: p.failed_status_in_metadata.clone(),
            space_delimited_claims: p
                .normalize_payload_in_metadata
                .as_ref()
                .map(|n| n.space_delimited_claims.clone())
                .unwrap_or_default(),
            clock_skew: if p.clock_skew_seconds > 0 {
                u64::from(p.clock_skew_seconds)
            } else {
                DEFAULT_CLOCK_SKEW
            },
            claim_to_headers,
            keys,
        })
    }
}

struct Builder<'a> {
    protos: &'a HashMap<String, JwtProvider>,
    providers: &'a BTreeMap<String, Arc<Provider>>,
}

impl Builder<'_> {
    fn provider(&self, name: &str) -> Result<(Arc<Provider>, &JwtProvider), Error> {
        match (self.providers.get(name), self.protos.get(name)) {
            (Some(p), Some(proto)) => Ok((Arc::clone(p), proto)),
            _ => Err((
                String::new(),
                format!("Required provider ['{name}'] is not configured."),
            )),
        }
    }

    fn all_providers(&self) -> Extractor {
        let mut names: Vec<&String> = self.protos.keys().collect();
        names.sort();
        Extractor::for_providers(names.into_iter().filter_map(|n| self.protos.get(n)))
    }

    fn build(&self, r: &JwtRequirement) -> Result<Verifier, Error> {
        Ok(match &r.requires_type {
            Some(RequiresType::ProviderName(name)) => {
                let (provider, proto) = self.provider(name).map_err(|e| at("provider_name", e))?;
                Verifier::Provider {
                    provider,
                    audiences: None,
                    extractor: Extractor::for_providers([proto]),
                }
            }
            Some(RequiresType::ProviderAndAudiences(pa)) => {
                let (provider, proto) = self
                    .provider(&pa.provider_name)
                    .map_err(|e| at("provider_and_audiences.provider_name", e))?;
                Verifier::Provider {
                    provider,
                    audiences: if pa.audiences.is_empty() {
                        None
                    } else {
                        Some(Audiences::new(&pa.audiences))
                    },
                    extractor: Extractor::for_providers([proto]),
                }
            }
            Some(RequiresType::RequiresAny(list)) => {
                let mut children = Vec::new();
                let (mut allow_missing_or_failed, mut allow_missing) = (false, false);
                for (i, c) in list.requirements.iter().enumerate() {
                    match &c.requires_type {
                        Some(RequiresType::AllowMissingOrFailed(_)) => {
                            allow_missing_or_failed = true;
                        }
                        Some(RequiresType::AllowMissing(_)) => allow_missing = true,
                        _ => children.push(
                            self.build(c)
                                .map_err(|e| at(&format!("requires_any.requirements[{i}]"), e))?,
                        ),
                    }
                }
                if children.is_empty() && (allow_missing_or_failed || allow_missing) {
                    children.push(Verifier::AllowMissing {
                        extractor: self.all_providers(),
                        allow_failed: allow_missing_or_failed,
                    });
                }
                Verifier::Any {
                    children,
                    allow_missing_or_failed,
                    allow_missing,
                }
            }
            Some(RequiresType::RequiresAll(list)) => Verifier::All(
                list.requirements
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        self.build(c)
                            .map_err(|e| at(&format!("requires_all.requirements[{i}]"), e))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            Some(RequiresType::AllowMissingOrFailed(_)) => Verifier::AllowMissing {
                extractor: self.all_providers(),
                allow_failed: true,
            },
            Some(RequiresType::AllowMissing(_)) => Verifier::AllowMissing {
                extractor: self.all_providers(),
                allow_failed: false,
            },
            Some(RequiresType::ExtractOnlyWithoutValidation(_)) => {
                return Err((
                    "extract_only_without_validation".into(),
                    "is not supported".into(),
                ));
            }
            None => Verifier::AllowAll,
        })
    }
}

fn route_error_field(e: &route::RouteError) -> String {
    e.to_string().replace("virtual_hosts[0].routes[", "rules[")
}

impl JwtAuthn {
    /// Compiles the filter config; errors carry a field path inside it.
    pub fn compile(any: &Any) -> Result<Self, Error> {
        let cfg = JwtAuthentication::decode(any.value.as_slice())
            .map_err(|e| (String::new(), format!("invalid JwtAuthentication: {e}")))?;
        let mut providers = BTreeMap::new();
        for (name, p) in &cfg.providers {
            let compiled =
                Provider::compile(name, p).map_err(|e| at(&format!("providers[\"{name}\"]"), e))?;
            providers.insert(name.clone(), Arc::new(compiled));
        }
        let b = Builder {
            protos: &cfg.providers,
            providers: &providers,
        };
        let mut names: Vec<&String> = cfg.requirement_map.keys().collect();
        names.sort();
        let all_requirement_names = names
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let mut requirement_map = HashMap::new();
        for name in names {
            let v = b
                .build(&cfg.requirement_map[name])
                .map_err(|e| at(&format!("requirement_map[\"{name}\"]"), e))?;
            requirement_map.insert(name.clone(), Arc::new(v));
        }
        let mut routes = Vec::with_capacity(cfg.rules.len());
        let mut rule_verifiers = Vec::with_capacity(cfg.rules.len());
        for (i, rule) in cfg.rules.iter().enumerate() {
            let Some(m) = &rule.r#match else {
                return Err((format!("rules[{i}].match"), "is required".into()));
            };
            routes.push(Route {
                name: i.to_string(),
                r#match: Some(m.clone()),
                action: Some(RouteAction::DirectResponse(DirectResponseAction {
                    status: 200,
                    ..Default::default()
                })),
                ..Default::default()
            });
            rule_verifiers.push(match &rule.requirement_type {
                Some(RequirementType::Requires(r)) => Some(Arc::new(
                    b.build(r).map_err(|e| at(&format!("rules[{i}].requires"), e))?,
                )),
                Some(RequirementType::RequirementName(name)) => {
                    Some(Arc::clone(requirement_map.get(name).ok_or_else(|| {
                        (
                            format!("rules[{i}].requirement_name"),
                            format!(
                                "Wrong requirement_name: {name}. It should be one of [{all_requirement_names}]"
                            ),
                        )
                    })?))
                }
                None => None,
            });
        }
        let rule_table = if routes.is_empty() {
            None
        } else {
            let rc = RouteConfiguration {
                name: "jwt_authn_rules".into(),
                virtual_hosts: vec![VirtualHost {
                    name: "rules".into(),
                    domains: vec!["*".into()],
                    routes,
                    ..Default::default()
                }],
                ..Default::default()
            };
            Some(
                route::RouteTable::compile(&rc)
                    .map_err(|e| ("rules".to_string(), route_error_field(&e)))?,
            )
        };
        Ok(Self {
            providers,
            rule_table,
            rule_verifiers,
            requirement_map,
            all_requirement_names,
            bypass_cors_preflight: cfg.bypass_cors_preflight,
            strip_failure_response: cfg.strip_failure_response,
            stats: JwtStats::default(),
        })
    }

    /// Checks a `PerRouteConfig` (validation of route configurations).
    pub fn check_per_route(any: &Any) -> Result<(), Error> {
        decode_per_route(any).map(|_| ())
    }

    fn find_rule_verifier(&self, req: &JwtRequest<'_>) -> Option<Arc<Verifier>> {
        let table = self.rule_table.as_ref()?;
        let view = route::RequestView {
            authority: req.authority,
            path: req.path,
            method: req.method,
            headers: req.headers,
            scheme: req.scheme,
        };
        let selected = table.find(&view, rand::random())?;
        let i: usize = selected.route.name.parse().ok()?;
        self.rule_verifiers.get(i).cloned().flatten()
    }

    fn deny(&self, status: Status, realm: &str) -> Denial {
        self.stats.denied.fetch_add(1, Ordering::Relaxed);
        let code = if status == Status::JwtAudienceNotAllowed {
            http::StatusCode::FORBIDDEN
        } else {
            http::StatusCode::UNAUTHORIZED
        };
        let details = format!(
            "jwt_authn_access_denied{{{}}}",
            status.message().replace(char::is_whitespace, "_")
        );
        if self.strip_failure_response {
            return Denial {
                status: code,
                body: String::new(),
                www_authenticate: None,
                details,
            };
        }
        let mut value = format!("Bearer realm=\"{realm}\"");
        if status != Status::JwtMissed {
            value.push_str(", error=\"invalid_token\"");
        }
        Denial {
            status: code,
            body: status.message().to_string(),
            www_authenticate: Some(value),
            details,
        }
    }

    /// Runs the filter for one request.
    pub async fn run(
        &self,
        per_route: Option<&Any>,
        req: JwtRequest<'_>,
        metadata: &mut DynamicMetadata,
        snapshot: &SharedSnapshot,
    ) -> Result<(), Denial> {
        if self.bypass_cors_preflight && is_cors_preflight(req.method, req.headers) {
            self.stats.allowed.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let verifier = match per_route {
            Some(any) => match decode_per_route(any) {
                Ok(PerRoute::Disabled) => None,
                Ok(PerRoute::Name(name)) => match self.requirement_map.get(&name) {
                    Some(v) => Some(Arc::clone(v)),
                    None => {
                        let msg = format!(
                            "Wrong requirement_name: {name}. It should be one of [{}]",
                            self.all_requirement_names
                        );
                        self.stats.denied.fetch_add(1, Ordering::Relaxed);
                        return Err(Denial {
                            status: http::StatusCode::FORBIDDEN,
                            body: if self.strip_failure_response {
                                String::new()
                            } else {
                                format!("Failed JWT authentication: {msg}")
                            },
                            www_authenticate: None,
                            details: format!(
                                "jwt_authn_access_denied{{{}}}",
                                msg.replace(char::is_whitespace, "_")
                            ),
                        });
                    }
                },
                Err((_, e)) => {
                    tracing::error!(error = %e, "invalid jwt_authn PerRouteConfig; denying");
                    return Err(self.deny(Status::JwtVerificationFail, ""));
                }
            },
            None => self.find_rule_verifier(&req),
        };
        let Some(verifier) = verifier else {
            self.stats.allowed.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        };
        let realm = original_uri(&req);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut ctx = Ctx {
            headers: req.headers,
            path: req.path,
            extracted: Map::new(),
            config: self,
            snapshot,
            now,
        };
        let status = verify(&verifier, &mut ctx).await;
        if !ctx.extracted.is_empty() {
            metadata.merge(METADATA_NAMESPACE, std::mem::take(&mut ctx.extracted));
        }
        if status == Status::Ok {
            self.stats.allowed.fetch_add(1, Ordering::Relaxed);
            Ok(())
        } else {
            Err(self.deny(status, &realm))
        }
    }

    /// `findByIssuer`: the first provider with the issuer, else the first
    /// without one.
    fn find_by_issuer(&self, iss: &str) -> Option<&Arc<Provider>> {
        self.providers
            .values()
            .find(|p| p.issuer == iss)
            .or_else(|| {
                if iss.is_empty() {
                    None
                } else {
                    self.providers.values().find(|p| p.issuer.is_empty())
                }
            })
    }
}

enum PerRoute {
    Disabled,
    Name(String),
}

fn decode_per_route(any: &Any) -> Result<PerRoute, Error> {
    if any.type_url != PER_ROUTE_TYPE_URL {
        return Err((
            String::new(),
            format!(
                "expected {PER_ROUTE_TYPE_URL} for the jwt_authn filter, got '{}'",
                any.type_url
            ),
        ));
    }
    let p = PerRouteConfig::decode(any.value.as_slice())
        .map_err(|e| (String::new(), format!("invalid PerRouteConfig: {e}")))?;
    match p.requirement_specifier {
        Some(RequirementSpecifier::Disabled(true)) => Ok(PerRoute::Disabled),
        Some(RequirementSpecifier::RequirementName(n)) if !n.is_empty() => Ok(PerRoute::Name(n)),
        Some(RequirementSpecifier::Disabled(false)) => {
            Err(("disabled".into(), "must be true".into()))
        }
        _ => Err((
            "requirement_specifier".into(),
            "one of disabled or requirement_name is required".into(),
        )),
    }
}

fn is_cors_preflight(method: &Method, headers: &HeaderMap) -> bool {
    let non_empty = |name: &str| headers.get(name).is_some_and(|v| !v.is_empty());
    method == Method::OPTIONS && non_empty("origin") && non_empty("access-control-request-method")
}

/// Envoy's `buildOriginalUri`: `x-forwarded-proto://host` and the path (cut
/// at 256 bytes).
fn original_uri(req: &JwtRequest<'_>) -> String {
    let proto = req
        .headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut cut = req.path.len().min(MAX_REALM_PATH);
    while !req.path.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{proto}://{}{}", req.authority, &req.path[..cut])
}

struct Ctx<'a, 'r> {
    headers: &'r mut HeaderMap,
    path: &'r str,
    /// Payloads and headers for dynamic metadata.
    extracted: Map<String, Value>,
    config: &'a JwtAuthn,
    snapshot: &'a SharedSnapshot,
    now: u64,
}

fn verify<'a, 'c, 'r>(v: &'a Verifier, ctx: &'c mut Ctx<'a, 'r>) -> BoxFuture<'c, Status>
where
    'a: 'c,
    'r: 'c,
{
    Box::pin(async move {
        match v {
            Verifier::AllowAll => Status::Ok,
            Verifier::Provider {
                provider,
                audiences,
                extractor,
            } => {
                extractor.sanitize(ctx.headers);
                let tokens: Vec<OwnedToken> = own(extractor.extract(ctx.headers, ctx.path));
                authenticate(
                    Some(provider),
                    audiences.as_ref(),
                    false,
                    false,
                    tokens,
                    ctx,
                )
                .await
            }
            Verifier::AllowMissing {
                extractor,
                allow_failed,
            } => {
                extractor.sanitize(ctx.headers);
                let tokens = own(extractor.extract(ctx.headers, ctx.path));
                authenticate(None, None, *allow_failed, true, tokens, ctx).await
            }
            Verifier::All(children) => {
                for c in children {
                    let s = verify(c, ctx).await;
                    if s != Status::Ok {
                        return s;
                    }
                }
                Status::Ok
            }
            Verifier::Any {
                children,
                allow_missing_or_failed,
                allow_missing,
            } => {
                let mut statuses = Vec::with_capacity(children.len());
                for c in children {
                    let s = verify(c, ctx).await;
                    if s == Status::Ok {
                        return Status::Ok;
                    }
                    statuses.push(s);
                }
                // Envoy prefers a "real" error over a missing token or an
                // unknown issuer, and the last one among equals.
                let mut last = Status::JwtMissed;
                for s in statuses {
                    if (s != Status::JwtMissed && s != Status::JwtUnknownIssuer)
                        || last == Status::JwtMissed
                    {
                        last = s;
                    }
                }
                if *allow_missing_or_failed || (*allow_missing && last == Status::JwtMissed) {
                    Status::Ok
                } else {
                    last
                }
            }
        }
    })
}

/// A token detached from the extractor's borrow of the headers.
struct OwnedToken {
    value: String,
    issuers: extract::IssuerChecker,
    location: Location,
}

fn own(tokens: Vec<Token<'_>>) -> Vec<OwnedToken> {
    tokens
        .into_iter()
        .map(|t| OwnedToken {
            value: t.value,
            issuers: t.issuers.clone(),
            location: t.location,
        })
        .collect()
}

/// Envoy's `Authenticator`: every token must verify, unless failures or
/// missing tokens are allowed; tokens are taken from the last found.
async fn authenticate(
    provider: Option<&Arc<Provider>>,
    audiences: Option<&Audiences>,
    allow_failed: bool,
    allow_missing: bool,
    mut tokens: Vec<OwnedToken>,
    ctx: &mut Ctx<'_, '_>,
) -> Status {
    let finish = |status: Status| {
        if allow_failed || (allow_missing && status == Status::JwtMissed) {
            Status::Ok
        } else {
            status
        }
    };
    let Some(mut token) = tokens.pop() else {
        record_failure(provider.map(Arc::as_ref), Status::JwtMissed, ctx);
        return finish(Status::JwtMissed);
    };
    loop {
        let (status, used) = verify_token(provider, audiences, &token, ctx).await;
        if status != Status::Ok {
            record_failure(used.as_deref().or(provider.map(Arc::as_ref)), status, ctx);
        }
        if (status != Status::Ok && !allow_failed && !allow_missing) || tokens.is_empty() {
            return finish(status);
        }
        match tokens.pop() {
            Some(t) => token = t,
            None => return finish(status),
        }
    }
}

fn record_failure(provider: Option<&Provider>, status: Status, ctx: &mut Ctx<'_, '_>) {
    let key = match provider {
        Some(p) => p.failed_status_in_metadata.clone(),
        None if ctx.config.providers.len() == 1 => ctx
            .config
            .providers
            .values()
            .next()
            .map(|p| p.failed_status_in_metadata.clone())
            .unwrap_or_default(),
        None => String::new(),
    };
    if key.is_empty() {
        return;
    }
    let mut fields = Map::new();
    fields.insert("code".into(), Value::from(status as u8));
    fields.insert("message".into(), Value::from(status.message()));
    ctx.extracted.insert(key, Value::Object(fields));
}

async fn verify_token(
    provider: Option<&Arc<Provider>>,
    audiences: Option<&Audiences>,
    token: &OwnedToken,
    ctx: &mut Ctx<'_, '_>,
) -> (Status, Option<Arc<Provider>>) {
    let jwt = match Jwt::parse(&token.value) {
        Ok(j) => j,
        Err(s) => return (s, None),
    };
    if !token.issuers.allows(&jwt.iss) {
        return (Status::JwtUnknownIssuer, None);
    }
    let p = match provider {
        Some(p) => Arc::clone(p),
        None => match ctx.config.find_by_issuer(&jwt.iss) {
            Some(p) => Arc::clone(p),
            None => return (Status::JwtUnknownIssuer, None),
        },
    };
    if let Err(s) = jwt.verify_time(ctx.now, p.clock_skew) {
        return (s, Some(p));
    }
    if !audiences.unwrap_or(&p.audiences).allows(&jwt.audiences) {
        return (Status::JwtAudienceNotAllowed, Some(p));
    }
    if let Some(m) = &p.subjects
        && !m.matches(&jwt.sub)
    {
        return (Status::JwtVerificationFail, Some(p));
    }
    if let Some(limit) = p.max_lifetime {
        let ok = match (jwt.exp, limit) {
            (0, _) => false,
            (_, None) => true,
            (exp, Some(max)) => {
                Duration::from_secs(exp.saturating_sub(ctx.now)) < max || exp < ctx.now
            }
        };
        if !ok {
            return (Status::JwtExpired, Some(p));
        }
    }
    let keys = match &p.keys {
        Keys::Local(Some(k)) => Arc::clone(k),
        Keys::Local(None) => return (Status::JwksNoValidKeys, Some(p)),
        Keys::Remote(r) => match r.keys(ctx.snapshot).await {
            Some(k) => k,
            None => return (Status::JwksFetchFail, Some(p)),
        },
    };
    let status = keys.verify(&jwt);
    if status != Status::Ok {
        return (status, Some(p));
    }
    handle_good(&p, &jwt, token, ctx);
    (Status::Ok, Some(p))
}

/// jwt_authn's `convertClaimDoubleToString`: integers print as integers,
/// anything else as C's `%f`.
fn number_text(n: &serde_json::Number) -> String {
    if let Some(u) = n.as_u64() {
        return u.to_string();
    }
    let f = n.as_f64().unwrap_or(0.0);
    if f < 0.0 || f >= u64::MAX as f64 || f.fract() != 0.0 {
        format!("{f:.6}")
    } else {
        (f as u64).to_string()
    }
}

fn claim_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(number_text(n)),
        Value::Bool(b) => Some(if *b { "true" } else { "false" }.to_string()),
        Value::Object(_) | Value::Array(_) => {
            Some(base64::engine::general_purpose::STANDARD.encode(v.to_string()))
        }
        Value::Null => None,
    }
}

fn claim_at<'v>(payload: &'v Map<String, Value>, path: &[String]) -> Option<&'v Value> {
    let (last, init) = path.split_last()?;
    let mut cur = payload;
    for k in init {
        cur = cur.get(k)?.as_object()?;
    }
    cur.get(last)
}

fn handle_good(p: &Provider, jwt: &Jwt, token: &OwnedToken, ctx: &mut Ctx<'_, '_>) {
    if let Some(h) = &p.forward_payload_header {
        let mut value = jwt.payload_b64.clone();
        if p.pad_forward_payload_header {
            while !value.len().is_multiple_of(4) {
                value.push('=');
            }
        }
        if let Ok(v) = HeaderValue::from_str(&value) {
            ctx.headers.append(h.clone(), v);
        }
    }
    for (h, path) in &p.claim_to_headers {
        if let Some(text) = claim_at(&jwt.payload, path).and_then(claim_text)
            && !text.is_empty()
            && let Ok(v) = HeaderValue::from_str(&text)
        {
            ctx.headers.append(h.clone(), v);
        }
    }
    if !p.forward
        && let Location::Header(name) = &token.location
    {
        ctx.headers.remove(name);
    }
    if !p.header_in_metadata.is_empty() {
        ctx.extracted.insert(
            p.header_in_metadata.clone(),
            Value::Object(jwt.header.clone()),
        );
    }
    if !p.payload_in_metadata.is_empty() {
        let mut payload = jwt.payload.clone();
        for claim in &p.space_delimited_claims {
            if let Some(Value::String(s)) = jwt.payload.get(claim) {
                let items: Vec<Value> = s
                    .split(' ')
                    .filter(|x| !x.is_empty())
                    .map(|x| Value::String(x.to_string()))
                    .collect();
                payload.insert(claim.clone(), Value::Array(items));
            }
        }
        ctx.extracted
            .insert(p.payload_in_metadata.clone(), Value::Object(payload));
    }
}

#[cfg(test)]
mod tests;
