//! The request as seen by the router, plus zero-allocation helpers to read it.

use std::borrow::Cow;

use http::{HeaderMap, HeaderName, Method};

use crate::error::{Result, RouteError};

/// A borrowed view of the request used for route selection.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// `:authority` (HTTP/2+) or `Host` (HTTP/1), as received (port included, if any).
    pub authority: &'a str,
    /// The full `:path`, including any query string.
    pub path: &'a str,
    pub method: &'a Method,
    /// Regular headers. Pseudo-headers are taken from the fields of this struct.
    pub headers: &'a HeaderMap,
    /// The scheme Envoy reasons with: the `x-forwarded-proto` value the connection manager
    /// settled on (`"http"` / `"https"`). Used by `require_tls` and redirects.
    pub scheme: &'a str,
}

impl<'a> RequestView<'a> {
    /// The path with query string and fragment removed (Envoy's `removeQueryAndFragment`).
    pub fn path_without_query(&self) -> &'a str {
        strip_query_and_fragment(self.path)
    }

    /// The query string (without `?`, up to any `#`), if present.
    pub fn query(&self) -> Option<&'a str> {
        let q = &self.path[self.path.find('?')? + 1..];
        Some(q.find('#').map_or(q, |i| &q[..i]))
    }

    /// First value of a regular header, if present.
    pub(crate) fn first_header(&self, name: &HeaderName) -> Option<&'a [u8]> {
        self.headers.get(name).map(http::HeaderValue::as_bytes)
    }

    /// Value of a header as Envoy's matchers see it: pseudo-headers come from the view,
    /// and multiple values of one header are joined with `,` (Envoy's
    /// `getAllOfHeaderAsString`). Only the multi-value case allocates.
    pub(crate) fn header_for_match(&self, key: &HeaderKey) -> Option<Cow<'a, [u8]>> {
        match key {
            HeaderKey::Pseudo(p) => self.pseudo(p).map(|s| Cow::Borrowed(s.as_bytes())),
            HeaderKey::Name(name) => {
                let mut values = self.headers.get_all(name).iter();
                let first = values.next()?;
                match values.next() {
                    None => Some(Cow::Borrowed(first.as_bytes())),
                    Some(second) => {
                        let mut joined = first.as_bytes().to_vec();
                        for v in std::iter::once(second).chain(values) {
                            joined.push(b',');
                            joined.extend_from_slice(v.as_bytes());
                        }
                        Some(Cow::Owned(joined))
                    }
                }
            }
            HeaderKey::Never => None,
        }
    }

    pub(crate) fn pseudo(&self, name: &str) -> Option<&'a str> {
        match name {
            ":authority" => Some(self.authority),
            ":path" => Some(self.path),
            ":method" => Some(self.method.as_str()),
            ":scheme" => Some(self.scheme),
            _ => None,
        }
    }
}

/// Envoy's `PathUtil::removeQueryAndFragment`.
pub(crate) fn strip_query_and_fragment(path: &str) -> &str {
    match path.find(['?', '#']) {
        Some(i) => &path[..i],
        None => path,
    }
}

/// A header reference from config, resolved once at compile time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HeaderKey {
    /// `:authority`, `:path`, `:method`, `:scheme` (and other `:`-names, which never match).
    Pseudo(Box<str>),
    Name(HeaderName),
    /// `host`: Envoy stores the HTTP/1 `Host` header as `:authority`, so a matcher on the
    /// literal name `host` never sees a value there. We mirror that.
    Never,
}

impl HeaderKey {
    pub(crate) fn parse(name: &str, field: &str) -> Result<Self> {
        if name.is_empty() {
            return Err(RouteError::invalid(field, "header name must not be empty"));
        }
        if name.starts_with(':') {
            return Ok(Self::Pseudo(name.to_ascii_lowercase().into()));
        }
        if name.eq_ignore_ascii_case("host") {
            return Ok(Self::Never);
        }
        header_name(name, field).map(Self::Name)
    }
}

pub(crate) fn header_name(name: &str, field: &str) -> Result<HeaderName> {
    // `from_bytes` lowercases, matching Envoy's LowerCaseString.
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| RouteError::invalid(field, format!("invalid header name {name:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiple_header_values_are_joined_with_comma_for_matching() {
        let mut headers = HeaderMap::new();
        headers.append("x-a", "1".parse().unwrap());
        headers.append("x-a", "2".parse().unwrap());
        let req = RequestView {
            authority: "h",
            path: "/p?q=1#f",
            method: &Method::GET,
            headers: &headers,
            scheme: "http",
        };
        let key = HeaderKey::parse("X-A", "f").unwrap();
        assert_eq!(req.header_for_match(&key).unwrap().as_ref(), b"1,2");
        assert_eq!(req.path_without_query(), "/p");
        assert_eq!(req.query(), Some("q=1"));
        let m = HeaderKey::parse(":method", "f").unwrap();
        assert_eq!(req.header_for_match(&m).unwrap().as_ref(), b"GET");
    }
}
