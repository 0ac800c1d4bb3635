//! `RedirectAction`, and the synthetic redirect Envoy uses for `require_tls`.
//!
//! Envoy builds the Location as `scheme://host[port]path`:
//! * scheme: `scheme_redirect`, else `https` if `https_redirect`, else the request's scheme.
//! * host: `host_redirect` if set; otherwise the request host, from which the port is dropped
//!   when `port_redirect` is set, or when the scheme changes and the port was the default
//!   one of the *original* scheme (`:80` for http, `:443` for https). A non-default port is
//!   kept (`http://a:8080` → `https://a:8080`).
//! * port: `:<port_redirect>` if set.
//! * path: `path_redirect` (its own query, if any, replaces the request's and is never
//!   stripped), or the request path after `prefix_rewrite`/`regex_rewrite`; a leading `/`
//!   is ensured; `strip_query` then removes the query unless it came from `path_redirect`.

use envoy_types::pb::envoy::config::route::v3::{
    RedirectAction,
    redirect_action::{PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier},
};
use http::StatusCode;

use crate::error::{Result, RouteError};
use crate::request::RequestView;
use crate::rewrite::{PathRewrite, RegexSubstitution};

#[derive(Debug, Clone)]
enum RedirectPath {
    Keep,
    Replace { path: Box<str>, has_query: bool },
    Rewrite(PathRewrite),
}

/// A compiled redirect.
#[derive(Debug, Clone)]
pub struct Redirect {
    scheme: Option<Box<str>>,
    host: Option<Box<str>>,
    /// Already formatted as `:<port>`.
    port: Option<Box<str>>,
    path: RedirectPath,
    strip_query: bool,
    code: StatusCode,
    matched_prefix_len: Option<usize>,
}

impl Redirect {
    pub(crate) fn compile(
        r: &RedirectAction,
        matched_prefix_len: Option<usize>,
        field: &str,
    ) -> Result<Self> {
        let scheme = match &r.scheme_rewrite_specifier {
            Some(SchemeRewriteSpecifier::SchemeRedirect(s)) if !s.is_empty() => {
                Some(s.as_str().into())
            }
            Some(SchemeRewriteSpecifier::HttpsRedirect(true)) => Some("https".into()),
            _ => None,
        };
        let path = match &r.path_rewrite_specifier {
            None => RedirectPath::Keep,
            Some(PathRewriteSpecifier::PathRedirect(p)) if p.is_empty() => RedirectPath::Keep,
            Some(PathRewriteSpecifier::PathRedirect(p)) => RedirectPath::Replace {
                path: p.as_str().into(),
                has_query: p.contains('?'),
            },
            Some(PathRewriteSpecifier::PrefixRewrite(p)) if p.is_empty() => RedirectPath::Keep,
            Some(PathRewriteSpecifier::PrefixRewrite(p)) => {
                RedirectPath::Rewrite(PathRewrite::Prefix(p.as_str().into()))
            }
            Some(PathRewriteSpecifier::RegexRewrite(rr)) => {
                RedirectPath::Rewrite(PathRewrite::Regex(RegexSubstitution::compile(
                    rr,
                    &format!("{field}.regex_rewrite"),
                )?))
            }
            Some(PathRewriteSpecifier::PathRewrite(_)) => {
                return Err(RouteError::unsupported(format!("{field}.path_rewrite")));
            }
        };
        let code = match RedirectResponseCode::try_from(r.response_code) {
            Ok(RedirectResponseCode::MovedPermanently) => StatusCode::MOVED_PERMANENTLY,
            Ok(RedirectResponseCode::Found) => StatusCode::FOUND,
            Ok(RedirectResponseCode::SeeOther) => StatusCode::SEE_OTHER,
            Ok(RedirectResponseCode::TemporaryRedirect) => StatusCode::TEMPORARY_REDIRECT,
            Ok(RedirectResponseCode::PermanentRedirect) => StatusCode::PERMANENT_REDIRECT,
            Err(_) => {
                return Err(RouteError::invalid(
                    format!("{field}.response_code"),
                    format!("unknown value {}", r.response_code),
                ));
            }
        };
        Ok(Self {
            scheme,
            host: (!r.host_redirect.is_empty()).then(|| r.host_redirect.as_str().into()),
            port: (r.port_redirect != 0).then(|| format!(":{}", r.port_redirect).into()),
            path,
            strip_query: r.strip_query,
            code,
            matched_prefix_len,
        })
    }

    /// The redirect Envoy issues for `require_tls`: https, 301, everything else kept.
    pub(crate) fn tls() -> Self {
        Self {
            scheme: Some("https".into()),
            host: None,
            port: None,
            path: RedirectPath::Keep,
            strip_query: false,
            code: StatusCode::MOVED_PERMANENTLY,
            matched_prefix_len: None,
        }
    }

    pub fn status(&self) -> StatusCode {
        self.code
    }

    /// Status code and `Location` value for this request.
    pub fn location(&self, req: &RequestView<'_>) -> (StatusCode, String) {
        let scheme = self.scheme.as_deref().unwrap_or(req.scheme);
        let port = self.port.as_deref().unwrap_or("");
        let host = match &self.host {
            Some(h) => h,
            None => request_host(req, scheme, !port.is_empty()),
        };

        let mut from_path_redirect_query = false;
        let path: std::borrow::Cow<'_, str> = match &self.path {
            RedirectPath::Keep => req.path.into(),
            RedirectPath::Replace { path, has_query } => {
                if *has_query {
                    from_path_redirect_query = true;
                    (&**path).into()
                } else {
                    match req.path.find('?') {
                        Some(q) => format!("{path}{}", &req.path[q..]).into(),
                        None => (&**path).into(),
                    }
                }
            }
            RedirectPath::Rewrite(rw) => rw
                .apply(req.path, self.matched_prefix_len)
                .map_or(req.path.into(), Into::into),
        };
        let mut path = if path.starts_with('/') {
            path
        } else {
            format!("/{path}").into()
        };
        if self.strip_query
            && !from_path_redirect_query
            && let Some(q) = path.find('?')
        {
            path = match path {
                std::borrow::Cow::Borrowed(p) => p[..q].into(),
                std::borrow::Cow::Owned(mut p) => {
                    p.truncate(q);
                    p.into()
                }
            };
        }
        (self.code, format!("{scheme}://{host}{port}{path}"))
    }
}

/// Envoy's `processRequestHost`.
fn request_host<'a>(req: &RequestView<'a>, new_scheme: &str, new_port: bool) -> &'a str {
    let host = req.authority;
    if host.is_empty() {
        return host;
    }
    let port_start = if host.starts_with('[') {
        host.rfind("]:").map(|i| i + 1)
    } else {
        host.rfind(':')
    };
    let Some(i) = port_start else { return host };
    let port = &host[i..];
    let original = req.scheme;
    let mut remove = new_port;
    if new_scheme != original {
        remove |= original == "https" && port == ":443";
        remove |= original == "http" && port == ":80";
    }
    if remove { &host[..i] } else { host }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatchAndSubstitute, RegexMatcher};
    use http::{HeaderMap, Method};

    fn loc(
        r: RedirectAction,
        prefix_len: Option<usize>,
        scheme: &str,
        host: &str,
        path: &str,
    ) -> (u16, String) {
        let red = Redirect::compile(&r, prefix_len, "redirect").unwrap();
        let headers = HeaderMap::new();
        let req = RequestView {
            authority: host,
            path,
            method: &Method::GET,
            headers: &headers,
            scheme,
        };
        let (code, l) = red.location(&req);
        (code.as_u16(), l)
    }

    fn https() -> RedirectAction {
        RedirectAction {
            scheme_rewrite_specifier: Some(SchemeRewriteSpecifier::HttpsRedirect(true)),
            ..Default::default()
        }
    }

    #[test]
    fn https_redirect_drops_default_port_of_original_scheme_only() {
        assert_eq!(
            loc(https(), None, "http", "a.com:80", "/x?y"),
            (301, "https://a.com/x?y".into())
        );
        assert_eq!(
            loc(https(), None, "http", "a.com:8080", "/x"),
            (301, "https://a.com:8080/x".into())
        );
        assert_eq!(
            loc(https(), None, "http", "a.com:443", "/"),
            (301, "https://a.com:443/".into())
        );
        assert_eq!(
            loc(https(), None, "http", "a.com", "/"),
            (301, "https://a.com/".into())
        );
        // Already https: scheme unchanged, so :443 is kept.
        assert_eq!(
            loc(https(), None, "https", "a.com:443", "/"),
            (301, "https://a.com:443/".into())
        );
        assert_eq!(
            loc(https(), None, "http", "[::1]:80", "/"),
            (301, "https://[::1]/".into())
        );
    }

    #[test]
    fn scheme_redirect_to_http_drops_443() {
        let r = RedirectAction {
            scheme_rewrite_specifier: Some(SchemeRewriteSpecifier::SchemeRedirect("http".into())),
            ..Default::default()
        };
        assert_eq!(loc(r, None, "https", "a.com:443", "/p").1, "http://a.com/p");
    }

    #[test]
    fn port_redirect_replaces_request_port() {
        let r = RedirectAction {
            port_redirect: 8443,
            ..Default::default()
        };
        assert_eq!(
            loc(r, None, "http", "a.com:80", "/p").1,
            "http://a.com:8443/p"
        );
    }

    #[test]
    fn host_redirect_replaces_host_and_port() {
        let r = RedirectAction {
            host_redirect: "b.com".into(),
            ..Default::default()
        };
        assert_eq!(
            loc(r, None, "http", "a.com:9000", "/p?q").1,
            "http://b.com/p?q"
        );
    }

    #[test]
    fn path_redirect_query_rules_from_the_docs() {
        let pr = |p: &str, strip: bool| RedirectAction {
            path_rewrite_specifier: Some(PathRewriteSpecifier::PathRedirect(p.into())),
            strip_query: strip,
            ..Default::default()
        };
        assert_eq!(
            loc(
                pr("/new-path-1", false),
                None,
                "http",
                "h",
                "/old-path-1?bar=1"
            )
            .1,
            "http://h/new-path-1?bar=1"
        );
        assert_eq!(
            loc(
                pr("/new-path-2", true),
                None,
                "http",
                "h",
                "/old-path-2?bar=1"
            )
            .1,
            "http://h/new-path-2"
        );
        assert_eq!(
            loc(
                pr("/new-path-3?foo=1", true),
                None,
                "http",
                "h",
                "/old-path-3?bar=1"
            )
            .1,
            "http://h/new-path-3?foo=1"
        );
        assert_eq!(
            loc(pr("no-slash", false), None, "http", "h", "/x").1,
            "http://h/no-slash"
        );
    }

    #[test]
    fn prefix_and_regex_rewrite_in_redirects() {
        let r = RedirectAction {
            path_rewrite_specifier: Some(PathRewriteSpecifier::PrefixRewrite("/new".into())),
            strip_query: true,
            ..Default::default()
        };
        assert_eq!(
            loc(r, Some(4), "http", "h", "/old/a?q=1").1,
            "http://h/new/a"
        );
        let r = RedirectAction {
            path_rewrite_specifier: Some(PathRewriteSpecifier::RegexRewrite(
                RegexMatchAndSubstitute {
                    pattern: Some(RegexMatcher {
                        regex: "^/([^/]+)/(.*)$".into(),
                        engine_type: None,
                    }),
                    substitution: r"/\2/\1".into(),
                },
            )),
            ..Default::default()
        };
        assert_eq!(loc(r, None, "http", "h", "/a/b?q").1, "http://h/b/a?q");
    }

    #[test]
    fn response_codes() {
        for (code, want) in [
            (RedirectResponseCode::MovedPermanently, 301),
            (RedirectResponseCode::Found, 302),
            (RedirectResponseCode::SeeOther, 303),
            (RedirectResponseCode::TemporaryRedirect, 307),
            (RedirectResponseCode::PermanentRedirect, 308),
        ] {
            let r = RedirectAction {
                response_code: code as i32,
                ..Default::default()
            };
            assert_eq!(loc(r, None, "http", "h", "/").0, want);
        }
        let r = RedirectAction {
            response_code: 42,
            ..Default::default()
        };
        assert!(Redirect::compile(&r, None, "x").is_err());
    }

    #[test]
    fn tls_redirect_keeps_everything_but_the_scheme() {
        let red = Redirect::tls();
        let headers = HeaderMap::new();
        let req = RequestView {
            authority: "a.com:80",
            path: "/p?q=1",
            method: &Method::GET,
            headers: &headers,
            scheme: "http",
        };
        assert_eq!(
            red.location(&req),
            (StatusCode::MOVED_PERMANENTLY, "https://a.com/p?q=1".into())
        );
    }
}
