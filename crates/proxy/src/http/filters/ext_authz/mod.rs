//! `envoy.filters.http.ext_authz`: asks an external authorization service,
//! over gRPC (`envoy.service.auth.v3.Authorization/Check`) or plain HTTP,
//! whether a request may proceed, before it is routed upstream.
//!
//! * OK: the service's header mutations apply to the request (and, on
//!   success, to the response), then the chain continues.
//! * Denied: a local reply with the service's status (403 by default),
//!   headers and body; response flag `UAEX`, details `ext_authz_denied`.
//! * Error (unreachable, timeout, HTTP 5xx, gRPC failure): the request
//!   continues when `failure_mode_allow` is set (optionally marked with
//!   `x-envoy-auth-failure-mode-allowed: true`), otherwise a local reply
//!   with `status_on_error` (403), `UAEX`, details `ext_authz_error`.
//!
//! The filter runs only when `filter_enabled` and `filter_enabled_metadata`
//! say so (Istio's CUSTOM action gates it on the RBAC shadow result), and
//! not on routes whose `ExtAuthzPerRoute` disables it. Calls go through the
//! proxy's own clusters (endpoints, load balancing, pools, TLS).

mod body;
mod check;
mod config;
mod grpc_client;
mod http_client;
mod response;
mod upstream;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use envoy_types::pb::google::protobuf::Any;
use http::{HeaderMap, Response, StatusCode};

use crate::body::Body;
use crate::listener::peer::PeerIdentity;
use crate::rbac::DynamicMetadata;
use crate::snapshot::SharedSnapshot;

pub use config::PER_ROUTE_TYPE_URL;
use config::{Config, PerRoute, Service};
pub(crate) use config::{check_api_version, compile_enabled_metadata};
pub use response::HeaderMutation;
use response::{AuthzResponse, CheckStatus};

pub const TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz";
/// The dynamic metadata namespace the filter writes (the service's metadata).
pub const METADATA_NAMESPACE: &str = "envoy.filters.http.ext_authz";
/// Response code details, as Envoy names them.
pub const DETAILS_DENIED: &str = "ext_authz_denied";
pub const DETAILS_ERROR: &str = "ext_authz_error";

/// The compiled filter.
#[derive(Debug)]
pub struct ExtAuthz {
    config: Config,
    pub stats: Arc<Stats>,
}

/// Envoy's `ext_authz.*` counters.
#[derive(Debug, Default)]
pub struct Stats {
    pub ok: AtomicU64,
    pub denied: AtomicU64,
    pub error: AtomicU64,
    pub failure_mode_allowed: AtomicU64,
    pub disabled: AtomicU64,
}

/// What the filter sees of one request.
pub struct Request<'a> {
    pub parts: &'a mut http::request::Parts,
    /// Replaced by an equivalent body when the filter buffered it.
    pub body: &'a mut Body,
    pub authority: &'a str,
    /// Path with query, as received.
    pub path: &'a str,
    pub scheme: &'a str,
    /// The downstream connection's peer and local addresses.
    pub remote: SocketAddr,
    pub local: SocketAddr,
    pub peer: Option<&'a PeerIdentity>,
    pub requested_server_name: Option<&'a str>,
    pub metadata: &'a mut DynamicMetadata,
    pub snapshot: &'a SharedSnapshot,
    /// Local replies take gRPC form for gRPC requests.
    pub grpc: bool,
}

/// What the filter decided.
#[derive(Debug)]
pub enum Verdict {
    /// Go on; these mutations apply to the response headers later.
    Continue(Vec<HeaderMutation>),
    /// Answer now with this local reply.
    Respond {
        response: Response<Body>,
        details: &'static str,
        /// Whether to set the `UAEX` response flag.
        unauthorized: bool,
    },
}

impl ExtAuthz {
    /// Compiles the filter config; errors carry a field path inside it.
    pub fn compile(any: &Any) -> Result<Self, (String, String)> {
        Ok(Self {
            config: Config::compile(any)?,
            stats: Arc::default(),
        })
    }

    /// Validates an `ExtAuthzPerRoute` (route configuration loading).
    pub fn check_per_route(any: &Any) -> Result<(), (String, String)> {
        PerRoute::compile(any).map(|_| ())
    }

    /// Counters as Envoy names them under `http.<stat_prefix>.`.
    pub fn stat_values(&self, hcm_stat_prefix: &str) -> Vec<(String, u64)> {
        let base = if self.config.stat_prefix.is_empty() {
            format!("http.{hcm_stat_prefix}.ext_authz.")
        } else {
            format!(
                "http.{hcm_stat_prefix}.ext_authz.{}.",
                self.config.stat_prefix
            )
        };
        let s = &self.stats;
        [
            ("ok", &s.ok),
            ("denied", &s.denied),
            ("error", &s.error),
            ("failure_mode_allowed", &s.failure_mode_allowed),
            ("disabled", &s.disabled),
        ]
        .into_iter()
        .map(|(k, v)| (format!("{base}{k}"), v.load(Ordering::Relaxed)))
        .collect()
    }

    /// Runs the filter for one request. `per_route` is the most specific
    /// `ExtAuthzPerRoute`; `less_specific` the virtual host's, whose
    /// context extensions the route's extend and override.
    pub async fn run(
        &self,
        per_route: Option<&Any>,
        less_specific: Option<&Any>,
        req: Request<'_>,
    ) -> Verdict {
        let mut route = match per_route.map(PerRoute::compile) {
            None => PerRoute::default(),
            Some(Ok(r)) => r,
            Some(Err((f, m))) => {
                // Envoy would have refused this route configuration; failing
                // closed is the safe reading.
                tracing::error!(field = %f, error = %m, "invalid ExtAuthzPerRoute; denying the request");
                return self.error_reply(&req, None);
            }
        };
        if let Some(Ok(outer)) = less_specific.map(PerRoute::compile) {
            let mut merged = outer.context_extensions;
            merged.extend(std::mem::take(&mut route.context_extensions));
            route.context_extensions = merged;
        }
        if route.disabled {
            return Verdict::Continue(Vec::new());
        }
        if !self.config.enabled(req.metadata, rand::random()) {
            self.stats.disabled.fetch_add(1, Ordering::Relaxed);
            if self.config.deny_at_disable {
                return self.error_reply(&req, None);
            }
            return Verdict::Continue(Vec::new());
        }
        self.check(route, req).await
    }

    async fn check(&self, route: PerRoute, req: Request<'_>) -> Verdict {
        let buffering = route.buffer_settings(self.config.with_request_body);
        let body = match buffering {
            Some(settings) => match body::buffer(req.body, settings).await {
                Ok(b) => b,
                Err(body::TooLarge) => {
                    let mut response = crate::http::local_reply::reply(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "Payload Too Large",
                        req.grpc,
                    );
                    // The rest of the body is left unread: an HTTP/1
                    // connection cannot carry another request.
                    if req.parts.version < http::Version::HTTP_2 {
                        response.headers_mut().insert(
                            http::header::CONNECTION,
                            http::HeaderValue::from_static("close"),
                        );
                    }
                    return Verdict::Respond {
                        response,
                        details: "request_payload_too_large",
                        unauthorized: false,
                    };
                }
            },
            None => None,
        };
        let check_request = check::build(&self.config, &route, &req, body.as_ref());
        // Only owned values cross the await: the call and its deadline.
        let prepared = match &self.config.service {
            Service::Grpc(g) => g.prepare(req.snapshot, &check_request),
            Service::Http(h) => h.prepare(req.snapshot, &check_request),
        };
        let result = match prepared {
            Ok((target, request)) => {
                upstream::call_within(self.config.service.timeout(), target, request).await
            }
            Err(e) => Err(e),
        };
        let result = result.and_then(|answer| match &self.config.service {
            Service::Grpc(_) => grpc_client::read(&answer),
            Service::Http(h) => Ok(h.response(answer)),
        });
        let resp = match result {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "ext_authz call failed");
                AuthzResponse::error()
            }
        };
        self.apply(resp, req)
    }

    fn apply(&self, resp: AuthzResponse, req: Request<'_>) -> Verdict {
        if let Some(md) = &resp.dynamic_metadata
            && self.config.ingest_metadata
            && !md.is_empty()
        {
            req.metadata.merge(METADATA_NAMESPACE, md.clone());
        }
        match resp.status {
            CheckStatus::Ok => {
                self.stats.ok.fetch_add(1, Ordering::Relaxed);
                response::apply_to_request(&resp, req.parts);
                Verdict::Continue(resp.response_headers)
            }
            CheckStatus::Denied => {
                self.stats.denied.fetch_add(1, Ordering::Relaxed);
                let status = resp.status_code.unwrap_or(StatusCode::FORBIDDEN);
                let body = self.config.limit_denied_body(&resp.body);
                Verdict::Respond {
                    response: response::local_reply(status, body, &resp.local_headers, req.grpc),
                    details: DETAILS_DENIED,
                    unauthorized: true,
                }
            }
            CheckStatus::Error => {
                self.stats.error.fetch_add(1, Ordering::Relaxed);
                if self.config.failure_mode_allow {
                    self.stats
                        .failure_mode_allowed
                        .fetch_add(1, Ordering::Relaxed);
                    if self.config.failure_mode_allow_header_add {
                        req.parts.headers.append(
                            "x-envoy-auth-failure-mode-allowed",
                            http::HeaderValue::from_static("true"),
                        );
                    }
                    return Verdict::Continue(Vec::new());
                }
                self.error_reply(&req, Some(&resp))
            }
        }
    }

    /// The local reply for errors: `status_on_error`, or what the service's
    /// `error_response` asked for.
    fn error_reply(&self, req: &Request<'_>, resp: Option<&AuthzResponse>) -> Verdict {
        let (status, body, headers) = match resp {
            Some(r) => (
                r.status_code.unwrap_or(self.config.status_on_error),
                r.body.as_str(),
                r.local_headers.as_slice(),
            ),
            None => (self.config.status_on_error, "", &[][..]),
        };
        Verdict::Respond {
            response: response::local_reply(status, body, headers, req.grpc),
            details: DETAILS_ERROR,
            unauthorized: true,
        }
    }
}

/// A gRPC authorization service on its own, for the network filter
/// (`envoy.filters.network.ext_authz`), which has no HTTP request to mutate.
#[derive(Debug)]
pub struct GrpcAuthorizer(grpc_client::GrpcClient);

/// What a network check decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    Denied,
    Error,
}

impl GrpcAuthorizer {
    /// Compiles a `GrpcService`; errors name the field under `field`.
    pub fn compile(
        g: &envoy_types::pb::envoy::config::core::v3::GrpcService,
        field: &str,
    ) -> Result<Self, (String, String)> {
        config::compile_grpc(g, field).map(Self)
    }

    pub async fn check(
        &self,
        snapshot: &SharedSnapshot,
        request: &envoy_types::pb::envoy::service::auth::v3::CheckRequest,
    ) -> Decision {
        // As in the HTTP filter, only owned values cross the await.
        let prepared = self.0.prepare(snapshot, request);
        let result = match prepared {
            Ok((target, req)) => upstream::call_within(self.0.timeout, target, req).await,
            Err(e) => Err(e),
        };
        match result.and_then(|answer| grpc_client::read(&answer)) {
            Ok(r) => match r.status {
                CheckStatus::Ok => Decision::Allowed,
                CheckStatus::Denied => Decision::Denied,
                CheckStatus::Error => Decision::Error,
            },
            Err(e) => {
                tracing::debug!(error = %e, "network ext_authz call failed");
                Decision::Error
            }
        }
    }
}

/// A check request's `Peer` for a socket address.
pub fn peer(
    addr: SocketAddr,
    principal: String,
) -> envoy_types::pb::envoy::service::auth::v3::attribute_context::Peer {
    envoy_types::pb::envoy::service::auth::v3::attribute_context::Peer {
        address: Some(check::socket_address(addr)),
        principal,
        ..Default::default()
    }
}

/// Applies the mutations an OK check left for the response.
pub fn apply_response_headers(headers: &mut HeaderMap, mutations: &[HeaderMutation]) {
    response::apply_mutations(headers, mutations);
}
