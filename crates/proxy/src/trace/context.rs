//! W3C trace context (`traceparent` / `tracestate`) as Envoy's OpenTelemetry
//! tracer reads and writes it.
//!
//! Envoy's reading is stricter in some ways and looser in others than the
//! W3C text, and the proxy must agree with it hop by hop:
//! - the header must be exactly 55 characters with four `-`-separated hex
//!   fields of 2/32/16/2 characters; any version is accepted (even `ff`), and
//!   the outgoing header is always written as version `00`;
//! - an all-zero trace id or parent id makes the header invalid;
//! - only the sampled bit of the flags is kept (`03` goes out as `01`);
//! - hex is accepted in either case and written in lower case;
//! - only the first `tracestate` header is read.
//!
//! An invalid `traceparent` is not replaced: Envoy then traces nothing for
//! the request and forwards the header untouched.

use http::{HeaderMap, HeaderName, HeaderValue};

pub(crate) static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub(crate) static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

const TRACEPARENT_LEN: usize = 55;

/// A trace id and span id pair, with the sampled flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

/// What the request's `traceparent` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Parent {
    /// No `traceparent`: a new trace starts here.
    Absent,
    /// A valid parent, with the `tracestate` that came with it ("" if none).
    Valid {
        context: SpanContext,
        tracestate: String,
    },
    /// Present but unusable: no span, nothing injected.
    Invalid,
}

/// Reads the parent context of a request.
pub(crate) fn extract(headers: &HeaderMap) -> Parent {
    let Some(value) = headers.get(&TRACEPARENT) else {
        return Parent::Absent;
    };
    let Some(context) = value.to_str().ok().and_then(parse_traceparent) else {
        return Parent::Invalid;
    };
    let tracestate = headers
        .get(&TRACESTATE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    Parent::Valid {
        context,
        tracestate,
    }
}

/// Parses a `traceparent` value by Envoy's rules (see the module comment).
pub fn parse_traceparent(value: &str) -> Option<SpanContext> {
    if value.len() != TRACEPARENT_LEN {
        return None;
    }
    let mut parts = value.split('-');
    let (version, trace_id, span_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || version.len() != 2
        || trace_id.len() != 32
        || span_id.len() != 16
        || flags.len() != 2
    {
        return None;
    }
    hex_decode::<1>(version)?;
    let trace_id = hex_decode::<16>(trace_id)?;
    let span_id = hex_decode::<8>(span_id)?;
    let [flags] = hex_decode::<1>(flags)?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(SpanContext {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
    })
}

/// `00-<trace id>-<span id>-<01|00>`.
pub fn format_traceparent(trace_id: &[u8; 16], span_id: &[u8; 8], sampled: bool) -> String {
    let mut out = String::with_capacity(TRACEPARENT_LEN);
    out.push_str("00-");
    push_hex(&mut out, trace_id);
    out.push('-');
    push_hex(&mut out, span_id);
    out.push_str(if sampled { "-01" } else { "-00" });
    out
}

/// Writes `traceparent` and `tracestate` for the next hop. Envoy sets
/// `tracestate` even when it is empty, so an empty header goes out too.
pub(crate) fn inject(headers: &mut HeaderMap, context: &SpanContext, tracestate: &str) {
    let tp = format_traceparent(&context.trace_id, &context.span_id, context.sampled);
    if let Ok(v) = HeaderValue::from_str(&tp) {
        headers.insert(TRACEPARENT.clone(), v);
    }
    if let Ok(v) = HeaderValue::from_str(tracestate) {
        headers.insert(TRACESTATE.clone(), v);
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    push_hex(&mut out, bytes);
    out
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
}

fn hex_decode<const N: usize>(s: &str) -> Option<[u8; N]> {
    let bytes = s.as_bytes();
    if bytes.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// A fresh, non-zero id.
pub(crate) fn random_id<const N: usize>() -> [u8; N] {
    loop {
        let id: [u8; N] = rand::random();
        if id != [0; N] {
            return id;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn parses_a_valid_header() {
        let c = parse_traceparent(TP).unwrap();
        assert_eq!(hex(&c.trace_id), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(hex(&c.span_id), "b7ad6b7169203331");
        assert!(c.sampled);
    }

    #[test]
    fn flags_keep_only_the_sampled_bit() {
        let c = parse_traceparent(&TP.replace("-01", "-03")).unwrap();
        assert!(c.sampled);
        let c = parse_traceparent(&TP.replace("-01", "-02")).unwrap();
        assert!(!c.sampled);
        assert_eq!(
            format_traceparent(&c.trace_id, &c.span_id, true),
            TP.to_string()
        );
    }

    #[test]
    fn any_version_is_accepted_as_envoy_does() {
        assert!(parse_traceparent(&TP.replacen("00", "ff", 1)).is_some());
        assert!(parse_traceparent(&TP.replacen("00", "01", 1)).is_some());
        assert!(parse_traceparent(&TP.replacen("00", "0g", 1)).is_none());
    }

    #[test]
    fn upper_case_hex_is_accepted_and_written_lower() {
        let c = parse_traceparent(&TP.to_uppercase()).unwrap();
        assert_eq!(format_traceparent(&c.trace_id, &c.span_id, c.sampled), TP);
    }

    #[test]
    fn invalid_headers() {
        for bad in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331_01",
            "000-af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319x-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333--01",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
    }

    #[test]
    fn extract_reads_the_first_tracestate() {
        let mut h = HeaderMap::new();
        assert_eq!(extract(&h), Parent::Absent);
        h.insert(&TRACEPARENT, HeaderValue::from_static("nope"));
        assert_eq!(extract(&h), Parent::Invalid);
        h.insert(&TRACEPARENT, HeaderValue::from_static(TP));
        h.append(&TRACESTATE, HeaderValue::from_static("a=1"));
        h.append(&TRACESTATE, HeaderValue::from_static("b=2"));
        match extract(&h) {
            Parent::Valid { tracestate, .. } => assert_eq!(tracestate, "a=1"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn inject_sets_an_empty_tracestate() {
        let mut h = HeaderMap::new();
        let c = parse_traceparent(TP).unwrap();
        inject(
            &mut h,
            &SpanContext {
                sampled: false,
                ..c
            },
            "",
        );
        assert_eq!(
            h.get(&TRACEPARENT).unwrap(),
            &TP.replace("-01", "-00").as_str()
        );
        assert_eq!(h.get(&TRACESTATE).unwrap(), "");
    }
}
