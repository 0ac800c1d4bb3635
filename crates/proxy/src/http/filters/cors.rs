//! `envoy.filters.http.cors`: answers preflight requests and decorates
//! responses to allowed origins, from the `CorsPolicy` of the route or
//! virtual host.

use envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy;
use envoy_types::pb::google::protobuf::Any;
use http::{HeaderMap, HeaderValue, Method, header};
use prost::Message;

use crate::matcher::StringMatch;

#[derive(Debug, Clone)]
pub struct Cors {
    origins: Vec<StringMatch>,
    allow_methods: Option<HeaderValue>,
    allow_headers: Option<HeaderValue>,
    expose_headers: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
    allow_credentials: bool,
    forward_not_matching_preflights: bool,
}

/// What the filter does with a request.
pub enum CorsAction {
    /// Not a CORS request, or not for an allowed origin: pass unchanged.
    Pass,
    /// An allowed preflight: answer locally with these headers.
    Preflight(HeaderMap),
    /// An allowed simple request: add these headers to the response.
    Decorate(HeaderMap),
}

fn opt_value(s: &str) -> Result<Option<HeaderValue>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    HeaderValue::from_str(s)
        .map(Some)
        .map_err(|_| format!("'{s}' is not a valid header value"))
}

impl Cors {
    pub fn compile(any: &Any) -> Result<Self, String> {
        let p = CorsPolicy::decode(any.value.as_slice())
            .map_err(|e| format!("invalid CorsPolicy: {e}"))?;
        let origins = p
            .allow_origin_string_match
            .iter()
            .enumerate()
            .map(|(i, m)| {
                StringMatch::compile(m).map_err(|e| format!("allow_origin_string_match[{i}]: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            origins,
            allow_methods: opt_value(&p.allow_methods)?,
            allow_headers: opt_value(&p.allow_headers)?,
            expose_headers: opt_value(&p.expose_headers)?,
            max_age: opt_value(&p.max_age)?,
            allow_credentials: p.allow_credentials.map(|b| b.value).unwrap_or(false),
            forward_not_matching_preflights: p
                .forward_not_matching_preflights
                .map(|b| b.value)
                .unwrap_or(true),
        })
    }

    pub fn evaluate(&self, method: &Method, headers: &HeaderMap) -> CorsAction {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return CorsAction::Pass;
        };
        let Ok(origin_str) = origin.to_str() else {
            return CorsAction::Pass;
        };
        let preflight = method == Method::OPTIONS
            && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        let allowed = self.origins.iter().any(|m| m.matches(origin_str));
        if !allowed {
            if preflight && !self.forward_not_matching_preflights {
                return CorsAction::Preflight(HeaderMap::new());
            }
            return CorsAction::Pass;
        }
        let mut out = HeaderMap::new();
        out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        if self.allow_credentials {
            out.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if preflight {
            if let Some(v) = &self.allow_methods {
                out.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v.clone());
            }
            if let Some(v) = &self.allow_headers {
                out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
            }
            if let Some(v) = &self.max_age {
                out.insert(header::ACCESS_CONTROL_MAX_AGE, v.clone());
            }
            if let Some(v) = &self.expose_headers {
                out.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
            }
            CorsAction::Preflight(out)
        } else {
            if let Some(v) = &self.expose_headers {
                out.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
            }
            CorsAction::Decorate(out)
        }
    }
}
