//! B3 propagation as Envoy's Zipkin tracer reads and writes it.
//!
//! - Multi-header: `x-b3-traceid` (16 or 32 hex), `x-b3-spanid` (16 hex),
//!   optional `x-b3-parentspanid`, `x-b3-sampled` (`1` or `true` is sampled,
//!   anything else is not).
//! - Single header `b3`: `traceid-spanid[-sampled[-parentspanid]]`, or just
//!   the sampling state (`0`, `1`, `d`). When the request came with `b3`,
//!   the context goes on in `b3` (and only there).
//! - The sampled state a request brings is obeyed; without one the
//!   connection manager's decision applies.
//! - A context that does not parse makes no span and is forwarded untouched.

use http::{HeaderMap, HeaderName, HeaderValue};

use super::context::hex;

static B3: HeaderName = HeaderName::from_static("b3");
static X_B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
static X_B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
static X_B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
static X_B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");

/// A trace id: 64-bit ids live in the low 8 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TraceId {
    pub(crate) bytes: [u8; 16],
    pub(crate) wide: bool,
}

impl TraceId {
    pub(crate) fn hex(&self) -> String {
        if self.wide {
            hex(&self.bytes)
        } else {
            hex(&self.bytes[8..])
        }
    }
}

/// A parent context from B3 headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct B3Context {
    pub(crate) trace_id: TraceId,
    pub(crate) span_id: [u8; 8],
    pub(crate) parent_id: Option<[u8; 8]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Extracted {
    /// No context (maybe a sampling state): a new trace.
    Absent,
    Valid(B3Context),
    /// Present but malformed: no span.
    Invalid,
}

/// The sampled state the request asks for, if it says.
pub(crate) fn sampled(headers: &HeaderMap) -> Option<bool> {
    if let Some(b3) = headers.get(&B3) {
        let b3 = b3.as_bytes();
        let pos = match b3.len() {
            1 => 0,
            35 | 52 => 34,
            51 | 68 => 50,
            _ => return None,
        };
        return match b3[pos] {
            b'1' | b'd' => Some(true),
            b'0' => Some(false),
            _ => None,
        };
    }
    let v = headers.get(&X_B3_SAMPLED)?;
    Some(v == "1" || v == "true")
}

pub(crate) fn extract(headers: &HeaderMap) -> Extracted {
    if let Some(b3) = headers.get(&B3) {
        return match b3.to_str().ok().map(parse_single) {
            Some(Ok(Some(c))) => Extracted::Valid(c),
            Some(Ok(None)) => Extracted::Absent,
            _ => Extracted::Invalid,
        };
    }
    let (Some(t), Some(s)) = (headers.get(&X_B3_TRACE_ID), headers.get(&X_B3_SPAN_ID)) else {
        return Extracted::Absent;
    };
    let parsed = (|| {
        let trace_id = trace_id(t.to_str().ok()?)?;
        let span_id = id64(s.to_str().ok()?)?;
        let parent_id = match headers.get(&X_B3_PARENT_SPAN_ID) {
            Some(p) => Some(id64(p.to_str().ok()?)?),
            None => None,
        };
        Some(B3Context {
            trace_id,
            span_id,
            parent_id,
        })
    })();
    parsed.map_or(Extracted::Invalid, Extracted::Valid)
}

/// `Ok(None)`: only a sampling state.
fn parse_single(v: &str) -> Result<Option<B3Context>, ()> {
    if v.len() == 1 {
        return Ok(None);
    }
    let mut parts = v.split('-');
    let trace_id = trace_id(parts.next().ok_or(())?).ok_or(())?;
    let span_id = id64(parts.next().ok_or(())?).ok_or(())?;
    let parent_id = match (parts.next(), parts.next()) {
        (Some(s), p) if s.len() == 1 => match p {
            Some(p) => Some(id64(p).ok_or(())?),
            None => None,
        },
        (None, None) => None,
        _ => return Err(()),
    };
    if parts.next().is_some() {
        return Err(());
    }
    Ok(Some(B3Context {
        trace_id,
        span_id,
        parent_id,
    }))
}

fn trace_id(s: &str) -> Option<TraceId> {
    let mut bytes = [0u8; 16];
    let wide = match s.len() {
        16 => {
            bytes[8..].copy_from_slice(&id64(s)?);
            false
        }
        32 => {
            bytes[..8].copy_from_slice(&id64(&s[..16])?);
            bytes[8..].copy_from_slice(&id64(&s[16..])?);
            true
        }
        _ => return None,
    };
    Some(TraceId { bytes, wide })
}

fn id64(s: &str) -> Option<[u8; 8]> {
    if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(s, 16).ok().map(u64::to_be_bytes)
}

/// Writes the context for the next hop, in the form the request came in.
pub(crate) fn inject(
    headers: &mut HeaderMap,
    trace_id: &TraceId,
    span_id: &[u8; 8],
    parent_id: Option<&[u8; 8]>,
    sampled: bool,
) {
    let flag = if sampled { "1" } else { "0" };
    if headers.contains_key(&B3) {
        let mut v = format!("{}-{}-{flag}", trace_id.hex(), hex(span_id));
        if let Some(p) = parent_id {
            v.push('-');
            v.push_str(&hex(p));
        }
        if let Ok(v) = HeaderValue::from_str(&v) {
            headers.insert(B3.clone(), v);
        }
        return;
    }
    let mut set = |name: &HeaderName, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name.clone(), v);
        }
    };
    set(&X_B3_TRACE_ID, trace_id.hex());
    set(&X_B3_SPAN_ID, hex(span_id));
    if let Some(p) = parent_id {
        set(&X_B3_PARENT_SPAN_ID, hex(p));
    }
    set(&X_B3_SAMPLED, flag.to_string());
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(*k, HeaderValue::from_static(v));
        }
        m
    }

    const T: &str = "463ac35c9f6413ad48485a3953bb6124";
    const S: &str = "a2fb4a1d1a96d312";

    #[test]
    fn multi_headers() {
        let m = h(&[
            ("x-b3-traceid", T),
            ("x-b3-spanid", S),
            ("x-b3-sampled", "1"),
        ]);
        let Extracted::Valid(c) = extract(&m) else {
            panic!()
        };
        assert_eq!(c.trace_id.hex(), T);
        assert_eq!(hex(&c.span_id), S);
        assert_eq!(c.parent_id, None);
        assert_eq!(sampled(&m), Some(true));
        let short = h(&[
            ("x-b3-traceid", "463ac35c9f6413ad"),
            ("x-b3-spanid", S),
            ("x-b3-parentspanid", "1111111111111111"),
            ("x-b3-sampled", "0"),
        ]);
        let Extracted::Valid(c) = extract(&short) else {
            panic!()
        };
        assert_eq!(c.trace_id.hex(), "463ac35c9f6413ad");
        assert_eq!(hex(&c.parent_id.unwrap()), "1111111111111111");
        assert_eq!(sampled(&short), Some(false));
        assert_eq!(
            extract(&h(&[("x-b3-traceid", "zz"), ("x-b3-spanid", S)])),
            Extracted::Invalid
        );
        assert_eq!(extract(&h(&[("x-b3-traceid", T)])), Extracted::Absent);
        assert_eq!(sampled(&h(&[])), None);
    }

    #[test]
    fn single_header() {
        let m = h(&[("b3", "463ac35c9f6413ad48485a3953bb6124-a2fb4a1d1a96d312-0")]);
        assert!(matches!(extract(&m), Extracted::Valid(_)));
        assert_eq!(sampled(&m), Some(false));
        let m = h(&[(
            "b3",
            "463ac35c9f6413ad48485a3953bb6124-a2fb4a1d1a96d312-d-1111111111111111",
        )]);
        let Extracted::Valid(c) = extract(&m) else {
            panic!()
        };
        assert_eq!(hex(&c.parent_id.unwrap()), "1111111111111111");
        assert_eq!(sampled(&m), Some(true));
        assert_eq!(extract(&h(&[("b3", "1")])), Extracted::Absent);
        assert_eq!(sampled(&h(&[("b3", "1")])), Some(true));
        assert_eq!(extract(&h(&[("b3", "nonsense-x")])), Extracted::Invalid);
    }

    #[test]
    fn inject_keeps_the_incoming_form() {
        let mut m = h(&[("b3", "1")]);
        let t = trace_id(T).unwrap();
        let s = id64(S).unwrap();
        inject(&mut m, &t, &s, None, true);
        assert_eq!(m.get("b3").unwrap(), &format!("{T}-{S}-1").as_str());
        assert!(!m.contains_key("x-b3-traceid"));
        let mut m = HeaderMap::new();
        inject(&mut m, &t, &s, Some(&s), false);
        assert_eq!(m.get("x-b3-traceid").unwrap(), T);
        assert_eq!(m.get("x-b3-parentspanid").unwrap(), S);
        assert_eq!(m.get("x-b3-sampled").unwrap(), "0");
    }
}
