//! Envoy's trace decision and its record in `x-request-id`.
//!
//! Envoy's UUID request-id extension stores the reason a request is traced
//! in the UUID's version nibble (character 14 of the 36-character form):
//! `9` sampled, `a` forced by the service (`x-envoy-force-trace`), `b`
//! forced by the client (`x-client-trace-id`), anything else not traced.
//! The next proxy reads it back, so a trace decided once holds for every
//! hop. Random sampling is also keyed on the request id — its first eight
//! hex digits modulo 10000 — so every hop of one request makes the same
//! random choice.
//!
//! The decision, in Envoy's order (`mutateTracingRequestHeader`):
//! 1. no request id, or one whose first 8 characters are not hex: not traced;
//! 2. a request id already marked traced stays traced;
//! 3. otherwise `x-client-trace-id` (subject to `client_sampling`, drawn at
//!    random), then `x-envoy-force-trace`, then `random_sampling` on the id;
//! 4. a traced request is untraced again unless `overall_sampling` (on the id) admits it.
//!
//! Each step that decides rewrites the UUID's nibble (ids that are not 36
//! characters long are left as they are, but the decision still holds for
//! this hop).

use http::{HeaderMap, HeaderName, HeaderValue};

pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub(crate) static X_CLIENT_TRACE_ID: HeaderName = HeaderName::from_static("x-client-trace-id");
pub(crate) static X_ENVOY_FORCE_TRACE: HeaderName = HeaderName::from_static("x-envoy-force-trace");

const UUID_LEN: usize = 36;
const TRACE_BYTE: usize = 14;

/// Why a request is (not) traced; Envoy's `Tracing::Reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    NotTraceable,
    Sampling,
    ServiceForced,
    ClientForced,
}

impl Reason {
    pub fn traced(self) -> bool {
        self != Self::NotTraceable
    }

    fn nibble(self) -> u8 {
        match self {
            Self::Sampling => b'9',
            Self::ServiceForced => b'a',
            Self::ClientForced => b'b',
            Self::NotTraceable => b'4',
        }
    }
}

/// A `FractionalPercent`: `numerator` out of `denominator`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fraction {
    pub numerator: u64,
    pub denominator: u64,
}

impl Fraction {
    pub(crate) const ALL: Self = Self {
        numerator: 100,
        denominator: 100,
    };

    /// Envoy's `evaluateFractionalPercent`: a numerator at or above the
    /// denominator always passes.
    pub(crate) fn admits(self, value: u64) -> bool {
        if self.numerator >= self.denominator {
            return true;
        }
        self.denominator != 0 && value % self.denominator < self.numerator
    }
}

/// The three sampling knobs of `HttpConnectionManager.tracing` (or of a
/// route's `tracing`, which replaces them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sampling {
    pub client: Fraction,
    pub random: Fraction,
    pub overall: Fraction,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            client: Fraction::ALL,
            random: Fraction {
                numerator: 10000,
                denominator: 10000,
            },
            overall: Fraction {
                numerator: 10000,
                denominator: 10000,
            },
        }
    }
}

/// The reason recorded in a request id, if it is a 36-character UUID.
pub(crate) fn reason_in_request_id(id: &[u8]) -> Reason {
    if id.len() != UUID_LEN {
        return Reason::NotTraceable;
    }
    match id[TRACE_BYTE] {
        b'9' => Reason::Sampling,
        b'a' => Reason::ServiceForced,
        b'b' => Reason::ClientForced,
        _ => Reason::NotTraceable,
    }
}

/// The request id with `reason` recorded (`None`: not a 36-character id, left alone).
pub(crate) fn with_reason(id: &[u8], reason: Reason) -> Option<HeaderValue> {
    if id.len() != UUID_LEN {
        return None;
    }
    let mut out = id.to_vec();
    out[TRACE_BYTE] = reason.nibble();
    HeaderValue::from_bytes(&out).ok()
}

/// The request id's first eight characters read as hex (Envoy's `getInteger`).
pub(crate) fn request_id_integer(id: &[u8]) -> Option<u64> {
    let head = id.get(..8)?;
    let text = std::str::from_utf8(head).ok()?;
    if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(text, 16).ok()
}

/// Decides whether the request is traced and records the decision in its
/// `x-request-id`. `force_trace_allowed`: the request is internal, so its
/// `x-envoy-force-trace` counts. `client_draw` is a random number for
/// `client_sampling`.
pub(crate) fn decide(
    headers: &mut HeaderMap,
    sampling: &Sampling,
    force_trace_allowed: bool,
    client_draw: u64,
) -> Reason {
    let Some(id) = headers.get(&X_REQUEST_ID) else {
        return Reason::NotTraceable;
    };
    let Some(n) = request_id_integer(id.as_bytes()) else {
        return Reason::NotTraceable;
    };
    let keyed = n % 10000;
    let mut reason = reason_in_request_id(id.as_bytes());
    let mut record = None;
    if !reason.traced() {
        if headers.contains_key(&X_CLIENT_TRACE_ID) && sampling.client.admits(client_draw) {
            reason = Reason::ClientForced;
        } else if force_trace_allowed && headers.contains_key(&X_ENVOY_FORCE_TRACE) {
            reason = Reason::ServiceForced;
        } else if sampling.random.admits(keyed) {
            reason = Reason::Sampling;
        }
        if reason.traced() {
            record = Some(reason);
        }
    }
    if reason.traced() && !sampling.overall.admits(keyed) {
        reason = Reason::NotTraceable;
        record = Some(reason);
    }
    if let Some(r) = record
        && let Some(id) = headers.get(&X_REQUEST_ID)
        && let Some(v) = with_reason(id.as_bytes(), r)
    {
        headers.insert(X_REQUEST_ID.clone(), v);
    }
    reason
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn pct(p: u64) -> Fraction {
        Fraction {
            numerator: p * 100,
            denominator: 10000,
        }
    }

    fn sampling(random: u64) -> Sampling {
        Sampling {
            random: pct(random),
            ..Sampling::default()
        }
    }

    const ID: &str = "11111111-2222-4333-8444-555555555555";

    #[test]
    fn request_id_nibble() {
        assert_eq!(reason_in_request_id(ID.as_bytes()), Reason::NotTraceable);
        let v = with_reason(ID.as_bytes(), Reason::Sampling).unwrap();
        assert_eq!(v, "11111111-2222-9333-8444-555555555555");
        assert_eq!(reason_in_request_id(v.as_bytes()), Reason::Sampling);
        let v = with_reason(ID.as_bytes(), Reason::ServiceForced).unwrap();
        assert_eq!(reason_in_request_id(v.as_bytes()), Reason::ServiceForced);
        let v = with_reason(ID.as_bytes(), Reason::ClientForced).unwrap();
        assert_eq!(reason_in_request_id(v.as_bytes()), Reason::ClientForced);
        assert_eq!(with_reason(b"short", Reason::Sampling), None);
        assert_eq!(reason_in_request_id(b"short"), Reason::NotTraceable);
    }

    #[test]
    fn integer_from_the_first_eight_hex_digits() {
        assert_eq!(request_id_integer(ID.as_bytes()), Some(0x1111_1111));
        assert_eq!(request_id_integer(b"1234abcd"), Some(0x1234_abcd));
        assert_eq!(request_id_integer(b"not-a-uuid"), None);
        assert_eq!(request_id_integer(b"1234"), None);
    }

    #[test]
    fn random_sampling_is_keyed_on_the_request_id() {
        // 0x11111111 % 10000 = 1153.
        let mut h = headers(&[("x-request-id", ID)]);
        assert_eq!(
            decide(&mut h, &sampling(11), false, 0),
            Reason::NotTraceable
        );
        assert_eq!(h.get("x-request-id").unwrap(), ID);
        assert_eq!(decide(&mut h, &sampling(12), false, 0), Reason::Sampling);
        assert_eq!(
            h.get("x-request-id").unwrap(),
            "11111111-2222-9333-8444-555555555555"
        );
        // Once marked, the next hop keeps it whatever its own sampling.
        assert_eq!(decide(&mut h, &sampling(0), false, 0), Reason::Sampling);
    }

    #[test]
    fn no_or_bad_request_id_is_never_traced() {
        let mut h = headers(&[("x-client-trace-id", "c")]);
        assert_eq!(
            decide(&mut h, &sampling(100), false, 0),
            Reason::NotTraceable
        );
        let mut h = headers(&[("x-request-id", "not-a-uuid"), ("x-client-trace-id", "c")]);
        assert_eq!(
            decide(&mut h, &sampling(100), false, 0),
            Reason::NotTraceable
        );
        // Not a UUID but hex up front: traced, the id left as it is.
        let mut h = headers(&[("x-request-id", "1234abcd")]);
        assert_eq!(decide(&mut h, &sampling(100), false, 0), Reason::Sampling);
        assert_eq!(h.get("x-request-id").unwrap(), "1234abcd");
    }

    #[test]
    fn client_trace_id_forces_within_client_sampling() {
        let mut h = headers(&[("x-request-id", ID), ("x-client-trace-id", "c")]);
        assert_eq!(decide(&mut h, &sampling(0), false, 7), Reason::ClientForced);
        assert_eq!(
            h.get("x-request-id").unwrap(),
            "11111111-2222-b333-8444-555555555555"
        );
        let none = Sampling {
            client: Fraction {
                numerator: 0,
                denominator: 100,
            },
            ..sampling(0)
        };
        let mut h = headers(&[("x-request-id", ID), ("x-client-trace-id", "c")]);
        assert_eq!(decide(&mut h, &none, false, 7), Reason::NotTraceable);
    }

    #[test]
    fn force_trace_only_for_internal_requests() {
        let mut h = headers(&[("x-request-id", ID), ("x-envoy-force-trace", "1")]);
        assert_eq!(decide(&mut h, &sampling(0), false, 0), Reason::NotTraceable);
        assert_eq!(decide(&mut h, &sampling(0), true, 0), Reason::ServiceForced);
        assert_eq!(
            h.get("x-request-id").unwrap(),
            "11111111-2222-a333-8444-555555555555"
        );
    }

    #[test]
    fn overall_sampling_untraces() {
        let s = Sampling {
            overall: pct(0),
            ..sampling(100)
        };
        let mut h = headers(&[("x-request-id", "11111111-2222-9333-8444-555555555555")]);
        assert_eq!(decide(&mut h, &s, false, 0), Reason::NotTraceable);
        assert_eq!(h.get("x-request-id").unwrap(), ID);
    }

    #[test]
    fn fractions() {
        assert!(Fraction::ALL.admits(12345));
        let half = Fraction {
            numerator: 50,
            denominator: 100,
        };
        assert!(half.admits(49) && !half.admits(50) && half.admits(149));
        let zero = Fraction {
            numerator: 0,
            denominator: 100,
        };
        assert!(!zero.admits(0));
    }
}
