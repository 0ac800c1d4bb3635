//! Parsing a JWT (JWS compact form) the way jwt_verify_lib does, and its
//! time and audience checks.

use base64::Engine as _;
use serde_json::{Map, Value};

use super::status::Status;

/// Algorithms jwt_verify_lib implements; anything else (`none` included)
/// is rejected before any key is looked at.
const IMPLEMENTED: [&str; 13] = [
    "ES256", "ES384", "ES512", "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256",
    "PS384", "PS512", "EdDSA",
];

#[derive(Debug, Clone)]
pub struct Jwt {
    pub alg: String,
    pub kid: String,
    pub header: Map<String, Value>,
    pub payload: Map<String, Value>,
    /// The payload segment as received (base64url, no padding).
    pub payload_b64: String,
    pub iss: String,
    pub sub: String,
    pub audiences: Vec<String>,
    pub nbf: u64,
    pub exp: u64,
    pub signature: Vec<u8>,
    /// `header.payload`, what the signature covers.
    pub signed: String,
}

/// absl's `WebSafeBase64Unescape`: base64url, padding optional.
pub(super) fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    LENIENT.decode(s).ok()
}

enum Find<'a> {
    Ok(&'a Value),
    Missing,
}

fn find<'a>(m: &'a Map<String, Value>, name: &str) -> Find<'a> {
    match m.get(name) {
        Some(v) => Find::Ok(v),
        None => Find::Missing,
    }
}

/// A string field: missing is fine (empty), another type is an error.
fn string_field(m: &Map<String, Value>, name: &str) -> Result<String, ()> {
    match find(m, name) {
        Find::Missing => Ok(String::new()),
        Find::Ok(Value::String(s)) => Ok(s.clone()),
        Find::Ok(_) => Err(()),
    }
}

enum NumErr {
    WrongType,
    OutOfRange,
}

/// jwt_verify_lib's `GetUInt64`: a JSON number (any double) truncated.
fn u64_field(m: &Map<String, Value>, name: &str) -> Result<u64, NumErr> {
    match find(m, name) {
        Find::Missing => Ok(0),
        Find::Ok(Value::Number(n)) => {
            let f = n.as_f64().ok_or(NumErr::WrongType)?;
            if f < 0.0 || f >= u64::MAX as f64 {
                return Err(NumErr::OutOfRange);
            }
            Ok(f as u64)
        }
        Find::Ok(_) => Err(NumErr::WrongType),
    }
}

fn json_object(bytes: &[u8]) -> Option<Map<String, Value>> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    }
}

impl Jwt {
    pub fn parse(token: &str) -> Result<Self, Status> {
        let parts: Vec<&str> = token.split('.').filter(|p| !p.is_empty()).collect();
        let [h, p, s] = parts.as_slice() else {
            return Err(Status::JwtBadFormat);
        };
        let header_bytes = b64url_decode(h).ok_or(Status::JwtHeaderParseErrorBadBase64)?;
        let header = json_object(&header_bytes).ok_or(Status::JwtHeaderParseErrorBadJson)?;
        let alg = match header.get("alg") {
            Some(Value::String(a)) => a.clone(),
            _ => return Err(Status::JwtHeaderBadAlg),
        };
        if !IMPLEMENTED.contains(&alg.as_str()) {
            return Err(Status::JwtHeaderNotImplementedAlg);
        }
        let kid = string_field(&header, "kid").map_err(|()| Status::JwtHeaderBadKid)?;
        let payload_bytes = b64url_decode(p).ok_or(Status::JwtPayloadParseErrorBadBase64)?;
        let payload = json_object(&payload_bytes).ok_or(Status::JwtPayloadParseErrorBadJson)?;
        let iss =
            string_field(&payload, "iss").map_err(|()| Status::JwtPayloadParseErrorIssNotString)?;
        let sub =
            string_field(&payload, "sub").map_err(|()| Status::JwtPayloadParseErrorSubNotString)?;
        u64_field(&payload, "iat").map_err(|e| match e {
            NumErr::WrongType => Status::JwtPayloadParseErrorIatNotInteger,
            NumErr::OutOfRange => Status::JwtPayloadParseErrorIatOutOfRange,
        })?;
        let nbf = u64_field(&payload, "nbf").map_err(|e| match e {
            NumErr::WrongType => Status::JwtPayloadParseErrorNbfNotInteger,
            NumErr::OutOfRange => Status::JwtPayloadParseErrorNbfOutOfRange,
        })?;
        let exp = u64_field(&payload, "exp").map_err(|e| match e {
            NumErr::WrongType => Status::JwtPayloadParseErrorExpNotInteger,
            NumErr::OutOfRange => Status::JwtPayloadParseErrorExpOutOfRange,
        })?;
        string_field(&payload, "jti").map_err(|()| Status::JwtPayloadParseErrorJtiNotString)?;
        let audiences = match payload.get("aud") {
            None => Vec::new(),
            Some(Value::String(a)) => vec![a.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or(Status::JwtPayloadParseErrorAudNotString)?,
            Some(_) => return Err(Status::JwtPayloadParseErrorAudNotString),
        };
        let signature = b64url_decode(s).ok_or(Status::JwtSignatureParseErrorBadBase64)?;
        Ok(Self {
            alg,
            kid,
            header,
            payload,
            payload_b64: (*p).to_string(),
            iss,
            sub,
            audiences,
            nbf,
            exp,
            signature,
            signed: format!("{h}.{p}"),
        })
    }

    /// `nbf` and `exp` with the clock skew allowance.
    pub fn verify_time(&self, now: u64, clock_skew: u64) -> Result<(), Status> {
        if now.saturating_add(clock_skew) < self.nbf {
            return Err(Status::JwtNotYetValid);
        }
        if self.exp != 0 && now > self.exp.saturating_add(clock_skew) {
            return Err(Status::JwtExpired);
        }
        Ok(())
    }
}

/// jwt_verify_lib's `CheckAudience`: `http(s)://` and a trailing `/` are
/// ignored on both sides; no configured audience allows any.
#[derive(Debug, Clone, Default)]
pub struct Audiences(Vec<String>);

fn sanitize_audience(aud: &str) -> &str {
    if aud.is_empty() {
        return aud;
    }
    let mut s = aud;
    if let Some(rest) = s.strip_prefix("http://") {
        s = rest;
    } else if let Some(rest) = s.strip_prefix("https://") {
        s = rest;
    }
    if aud.ends_with('/') {
        s = s.strip_suffix('/').unwrap_or(s);
    }
    s
}

impl Audiences {
    pub fn new(configured: &[String]) -> Self {
        Self(
            configured
                .iter()
                .map(|a| sanitize_audience(a).to_string())
                .collect(),
        )
    }

    pub fn allows(&self, token_audiences: &[String]) -> bool {
        if self.0.is_empty() {
            return true;
        }
        token_audiences
            .iter()
            .any(|a| self.0.iter().any(|c| c == sanitize_audience(a)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(v: &Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    }

    fn token(header: Value, payload: Value) -> String {
        format!("{}.{}.c2ln", enc(&header), enc(&payload))
    }

    #[test]
    fn parses_claims() {
        let t = token(
            serde_json::json!({"alg": "RS256", "kid": "k1"}),
            serde_json::json!({"iss": "i", "sub": "s", "aud": ["a", "b"], "exp": 10.7, "nbf": 5}),
        );
        let jwt = Jwt::parse(&t).expect("parses");
        assert_eq!((jwt.alg.as_str(), jwt.kid.as_str()), ("RS256", "k1"));
        assert_eq!((jwt.iss.as_str(), jwt.sub.as_str()), ("i", "s"));
        assert_eq!(jwt.audiences, ["a", "b"]);
        assert_eq!((jwt.nbf, jwt.exp), (5, 10));
        assert_eq!(jwt.signature, b"sig");
    }

    #[test]
    fn rejects_like_jwt_verify_lib() {
        let p = serde_json::json!({"iss": "i"});
        assert_eq!(Jwt::parse("a.b").err(), Some(Status::JwtBadFormat));
        assert_eq!(
            Jwt::parse("a..b.c").err(),
            Some(Status::JwtHeaderParseErrorBadBase64)
        );
        assert_eq!(
            Jwt::parse(&token(serde_json::json!({"alg": "none"}), p.clone())).err(),
            Some(Status::JwtHeaderNotImplementedAlg)
        );
        assert_eq!(
            Jwt::parse(&token(serde_json::json!({"typ": "JWT"}), p.clone())).err(),
            Some(Status::JwtHeaderBadAlg)
        );
        assert_eq!(
            Jwt::parse(&token(serde_json::json!({"alg": "RS256", "kid": 1}), p)).err(),
            Some(Status::JwtHeaderBadKid)
        );
        assert_eq!(
            Jwt::parse(&token(
                serde_json::json!({"alg": "RS256"}),
                serde_json::json!({"exp": "soon"})
            ))
            .err(),
            Some(Status::JwtPayloadParseErrorExpNotInteger)
        );
        assert_eq!(
            Jwt::parse(&token(
                serde_json::json!({"alg": "RS256"}),
                serde_json::json!({"aud": [1]})
            ))
            .err(),
            Some(Status::JwtPayloadParseErrorAudNotString)
        );
    }

    #[test]
    fn time_window_uses_clock_skew() {
        let t = token(
            serde_json::json!({"alg": "RS256"}),
            serde_json::json!({"exp": 1000, "nbf": 900}),
        );
        let jwt = Jwt::parse(&t).expect("parses");
        assert_eq!(jwt.verify_time(1000, 60), Ok(()));
        assert_eq!(jwt.verify_time(1060, 60), Ok(()));
        assert_eq!(jwt.verify_time(1061, 60), Err(Status::JwtExpired));
        assert_eq!(jwt.verify_time(840, 60), Ok(()));
        assert_eq!(jwt.verify_time(839, 60), Err(Status::JwtNotYetValid));
    }

    #[test]
    fn audiences_ignore_scheme_and_trailing_slash() {
        let a = Audiences::new(&["https://api.example.com/".into()]);
        assert!(a.allows(&["api.example.com".into()]));
        assert!(a.allows(&["http://api.example.com".into()]));
        assert!(!a.allows(&["other".into()]));
        assert!(!a.allows(&[]));
        assert!(Audiences::new(&[]).allows(&[]));
    }
}
