//! Envoy substitution format strings as used in header values (`%DOWNSTREAM_REMOTE_ADDRESS%`,
//! `%REQ(x-foo)%`, ...). Compiled once into literal/variable segments; resolution goes
//! through [`FormatContext`], which the proxy implements.
//!
//! Envoy parses header values with its access-log formatter, so a lone `%` that does not
//! start a valid `%COMMAND%` is a configuration error, and `%%` is a literal `%`.

use std::borrow::Cow;

use http::HeaderMap;

use crate::error::{Result, RouteError};
use crate::request::HeaderKey;

/// A command operator whose value comes from the stream, not from headers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Variable {
    DownstreamRemoteAddress,
    DownstreamRemoteAddressWithoutPort,
    DownstreamLocalAddress,
    DownstreamLocalAddressWithoutPort,
    UpstreamHost,
    Hostname,
    Protocol,
    /// `%START_TIME%` or `%START_TIME(format)%`; the argument is the strftime-style format.
    StartTime(Option<Box<str>>),
    /// Any other argument-less operator from [`OTHER_OPERATORS`], by its Envoy name.
    Other(&'static str),
}

/// Argument-less Envoy operators accepted in addition to the dedicated [`Variable`] variants.
/// The proxy may resolve them or return `None` (which formats as an empty string).
pub const OTHER_OPERATORS: &[&str] = &[
    "DOWNSTREAM_REMOTE_PORT",
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS",
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT",
    "DOWNSTREAM_DIRECT_REMOTE_PORT",
    "DOWNSTREAM_LOCAL_PORT",
    "DOWNSTREAM_TLS_VERSION",
    "DOWNSTREAM_PEER_URI_SAN",
    "DOWNSTREAM_LOCAL_URI_SAN",
    "DOWNSTREAM_PEER_SUBJECT",
    "DOWNSTREAM_LOCAL_SUBJECT",
    "DOWNSTREAM_PEER_ISSUER",
    "DOWNSTREAM_PEER_FINGERPRINT_256",
    "DOWNSTREAM_PEER_SERIAL",
    "DOWNSTREAM_PEER_CERT",
    "UPSTREAM_REMOTE_ADDRESS",
    "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT",
    "UPSTREAM_REMOTE_PORT",
    "UPSTREAM_LOCAL_ADDRESS",
    "UPSTREAM_CLUSTER",
    "UPSTREAM_TRANSPORT_FAILURE_REASON",
    "REQUESTED_SERVER_NAME",
    "ROUTE_NAME",
    "VIRTUAL_CLUSTER_NAME",
    "STREAM_ID",
    "CONNECTION_ID",
    "UNIQUE_ID",
    "RESPONSE_CODE",
    "RESPONSE_FLAGS",
    "RESPONSE_CODE_DETAILS",
    "DURATION",
    "REQUEST_DURATION",
    "BYTES_RECEIVED",
    "BYTES_SENT",
];

/// Resolves command operators for one request. Returning `None` means "no value", which
/// Envoy's header formatter renders as an empty string.
pub trait FormatContext {
    fn variable(&self, var: &Variable) -> Option<Cow<'_, str>>;

    /// `%REQ(name)%` when the request headers are not at hand (response-side mutations),
    /// and always for pseudo-headers (`:authority`, `:path`, ...). `name` is lowercase.
    fn request_header(&self, _name: &str) -> Option<Cow<'_, str>> {
        None
    }

    /// `%RESP(name)%` when the response headers are not at hand (request-side mutations).
    fn response_header(&self, _name: &str) -> Option<Cow<'_, str>> {
        None
    }
}

/// A context that resolves nothing (all variables format as empty).
impl FormatContext for () {
    fn variable(&self, _var: &Variable) -> Option<Cow<'_, str>> {
        None
    }
}

#[derive(Debug, Clone)]
struct HeaderRef {
    main: HeaderKey,
    main_name: Box<str>,
    alt: Option<(HeaderKey, Box<str>)>,
    max_len: Option<usize>,
}

#[derive(Debug, Clone)]
enum Segment {
    Literal(Box<str>),
    Var(Variable, Option<usize>),
    Req(HeaderRef),
    Resp(HeaderRef),
}

/// What a formatter may read while formatting.
pub(crate) struct FormatEnv<'a> {
    pub(crate) ctx: &'a dyn FormatContext,
    pub(crate) request: Option<&'a HeaderMap>,
    pub(crate) response: Option<&'a HeaderMap>,
}

/// A compiled format string.
#[derive(Debug, Clone)]
pub(crate) struct Formatter {
    segments: Vec<Segment>,
}

impl Formatter {
    pub(crate) fn compile(input: &str, field: &str) -> Result<Self> {
        let mut segments = Vec::new();
        let mut literal = String::new();
        let mut rest = input;
        while let Some(pos) = rest.find('%') {
            literal.push_str(&rest[..pos]);
            rest = &rest[pos..];
            if rest.starts_with("%%") {
                literal.push('%');
                rest = &rest[2..];
                continue;
            }
            let (segment, consumed) = parse_command(rest).ok_or_else(|| {
                RouteError::invalid(
                    field,
                    format!(
                        "invalid format string {input:?}: no valid command at position {}",
                        input.len() - rest.len()
                    ),
                )
            })?;
            let segment = segment.map_err(|reason| RouteError::invalid(field, reason))?;
            if !literal.is_empty() {
                segments.push(Segment::Literal(std::mem::take(&mut literal).into()));
            }
            segments.push(segment);
            rest = &rest[consumed..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            segments.push(Segment::Literal(literal.into()));
        }
        Ok(Self { segments })
    }

    /// `Some` if the format string has no operators (the common case, resolved for free).
    pub(crate) fn as_literal(&self) -> Option<&str> {
        match self.segments.as_slice() {
            [] => Some(""),
            [Segment::Literal(s)] => Some(s),
            _ => None,
        }
    }

    pub(crate) fn format<'s>(&'s self, env: &FormatEnv<'_>) -> Cow<'s, str> {
        if let Some(lit) = self.as_literal() {
            return Cow::Borrowed(lit);
        }
        let mut out = String::new();
        for seg in &self.segments {
            match seg {
                Segment::Literal(s) => out.push_str(s),
                Segment::Var(v, max) => {
                    if let Some(val) = env.ctx.variable(v) {
                        out.push_str(truncate(&val, *max));
                    }
                }
                Segment::Req(h) => {
                    if let Some(val) = lookup(h, env.request, |n| env.ctx.request_header(n)) {
                        out.push_str(truncate(&val, h.max_len));
                    }
                }
                Segment::Resp(h) => {
                    if let Some(val) = lookup(h, env.response, |n| env.ctx.response_header(n)) {
                        out.push_str(truncate(&val, h.max_len));
                    }
                }
            }
        }
        Cow::Owned(out)
    }
}

fn lookup<'a>(
    h: &HeaderRef,
    map: Option<&'a HeaderMap>,
    fallback: impl Fn(&str) -> Option<Cow<'a, str>>,
) -> Option<Cow<'a, str>> {
    let one = |key: &HeaderKey, name: &str| -> Option<Cow<'a, str>> {
        match (key, map) {
            (HeaderKey::Name(n), Some(map)) => {
                map.get(n).map(|v| String::from_utf8_lossy(v.as_bytes()))
            }
            (HeaderKey::Never, Some(_)) => None,
            _ => fallback(name),
        }
    };
    one(&h.main, &h.main_name).or_else(|| h.alt.as_ref().and_then(|(k, n)| one(k, n)))
}

/// Truncates to at most `max` bytes without splitting a UTF-8 character.
fn truncate(s: &str, max: Option<usize>) -> &str {
    match max {
        Some(max) if s.len() > max => {
            let mut end = max;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            &s[..end]
        }
        _ => s,
    }
}

/// Parses `%NAME(args):N%` at the start of `s`. Returns `None` if the text is not shaped
/// like a command at all, `Some(Err)` if it is but the command is unknown/invalid.
#[allow(clippy::type_complexity)]
fn parse_command(s: &str) -> Option<(std::result::Result<Segment, String>, usize)> {
    let b = s.as_bytes();
    let mut i = 1;
    while i < b.len() && (b[i].is_ascii_uppercase() || b[i].is_ascii_digit() || b[i] == b'_') {
        i += 1;
    }
    if i == 1 {
        return None;
    }
    let name = &s[1..i];
    let mut arg = None;
    if b.get(i) == Some(&b'(') {
        let close = s[i..].find(')')? + i;
        arg = Some(&s[i + 1..close]);
        i = close + 1;
    }
    let mut max_len = None;
    if b.get(i) == Some(&b':') {
        let start = i + 1;
        let mut j = start;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        if j == start {
            return None;
        }
        max_len = Some(s[start..j].parse::<usize>().ok()?);
        i = j;
    }
    if b.get(i) != Some(&b'%') {
        return None;
    }
    Some((command(name, arg, max_len), i + 1))
}

fn command(
    name: &str,
    arg: Option<&str>,
    max_len: Option<usize>,
) -> std::result::Result<Segment, String> {
    let no_arg = |v: Variable| -> std::result::Result<Segment, String> {
        match arg {
            None => Ok(Segment::Var(v, max_len)),
            Some(_) => Err(format!("operator {name} takes no argument")),
        }
    };
    match name {
        "REQ" | "RESP" => {
            let arg = arg.ok_or_else(|| format!("operator {name} requires (header)"))?;
            let (main, alt) = match arg.split_once('?') {
                Some((m, a)) => (m, Some(a)),
                None => (arg, None),
            };
            let key = |n: &str| {
                HeaderKey::parse(n, "").map_err(|_| format!("invalid header name {n:?} in {name}"))
            };
            let h = HeaderRef {
                main: key(main)?,
                main_name: main.to_ascii_lowercase().into(),
                alt: match alt {
                    Some(a) => Some((key(a)?, a.to_ascii_lowercase().into())),
                    None => None,
                },
                max_len,
            };
            Ok(if name == "REQ" {
                Segment::Req(h)
            } else {
                Segment::Resp(h)
            })
        }
        "START_TIME" => Ok(Segment::Var(
            Variable::StartTime(arg.map(Into::into)),
            max_len,
        )),
        "DOWNSTREAM_REMOTE_ADDRESS" => no_arg(Variable::DownstreamRemoteAddress),
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => {
            no_arg(Variable::DownstreamRemoteAddressWithoutPort)
        }
        "DOWNSTREAM_LOCAL_ADDRESS" => no_arg(Variable::DownstreamLocalAddress),
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => {
            no_arg(Variable::DownstreamLocalAddressWithoutPort)
        }
        "UPSTREAM_HOST" => no_arg(Variable::UpstreamHost),
        "HOSTNAME" => no_arg(Variable::Hostname),
        "PROTOCOL" => no_arg(Variable::Protocol),
        other => match OTHER_OPERATORS.iter().find(|o| **o == other) {
            Some(o) => no_arg(Variable::Other(o)),
            None => Err(format!("unsupported command operator %{other}%")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Ctx;
    impl FormatContext for Ctx {
        fn variable(&self, var: &Variable) -> Option<Cow<'_, str>> {
            match var {
                Variable::DownstreamRemoteAddressWithoutPort => Some("10.0.0.1".into()),
                Variable::StartTime(Some(f)) => Some(format!("t[{f}]").into()),
                Variable::Other("UPSTREAM_CLUSTER") => Some("backend".into()),
                _ => None,
            }
        }
        fn request_header(&self, name: &str) -> Option<Cow<'_, str>> {
            (name == ":path").then_some(Cow::Borrowed("/x"))
        }
    }

    fn fmt(s: &str, req: Option<&HeaderMap>) -> String {
        let f = Formatter::compile(s, "v").unwrap();
        f.format(&FormatEnv {
            ctx: &Ctx,
            request: req,
            response: None,
        })
        .into_owned()
    }

    #[test]
    fn literals_and_escaped_percent() {
        assert_eq!(fmt("plain", None), "plain");
        assert_eq!(fmt("100%%", None), "100%");
        assert!(
            Formatter::compile("plain", "v")
                .unwrap()
                .as_literal()
                .is_some()
        );
    }

    #[test]
    fn variables_resolve_through_the_context() {
        assert_eq!(
            fmt(
                "ip=%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%;c=%UPSTREAM_CLUSTER%",
                None
            ),
            "ip=10.0.0.1;c=backend"
        );
        assert_eq!(fmt("%START_TIME(%s)%", None), "t[%s]");
        // Unresolved operators format as empty, as Envoy's header formatter does.
        assert_eq!(fmt("[%HOSTNAME%]", None), "[]");
    }

    #[test]
    fn req_reads_headers_with_fallback_and_truncation() {
        let mut h = HeaderMap::new();
        h.insert("x-b", "bravo".parse().unwrap());
        assert_eq!(fmt("%REQ(X-A?X-B)%", Some(&h)), "bravo");
        assert_eq!(fmt("%REQ(x-b):2%", Some(&h)), "br");
        assert_eq!(fmt("%REQ(:path)%", Some(&h)), "/x");
        assert_eq!(fmt("%REQ(x-missing)%", Some(&h)), "");
    }

    #[test]
    fn unknown_or_malformed_operators_are_errors() {
        for bad in ["%NOPE%", "50%", "%REQ%", "%HOSTNAME(x)%", "%lower%"] {
            let e = Formatter::compile(bad, "f.value").unwrap_err();
            assert_eq!(e.field(), "f.value", "{bad}");
        }
    }
}
