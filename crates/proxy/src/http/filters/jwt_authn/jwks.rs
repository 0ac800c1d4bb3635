//! JSON Web Key Sets and signature verification with aws-lc-rs, following
//! jwt_verify_lib: which keys are accepted, how a key is chosen (`kid` and
//! `alg` when both sides carry them), and what a failure is called.
//!
//! Key confusion cannot happen: only `oct` keys are ever used as HMAC
//! secrets, and an RSA key only verifies `RS*`/`PS*` signatures, so an
//! `HS256` token "signed" with a public RSA key fails.

use aws_lc_rs::{hmac, signature};
use serde_json::{Map, Value};

use super::jwt::{Jwt, b64url_decode};
use super::status::Status;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Curve {
    P256,
    P384,
    P521,
}

impl Curve {
    fn coordinate_len(self) -> usize {
        match self {
            Self::P256 => 32,
            Self::P384 => 48,
            Self::P521 => 66,
        }
    }
}

#[derive(Clone)]
enum Key {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// The uncompressed point `04 || X || Y`.
    Ec {
        curve: Curve,
        point: Vec<u8>,
    },
    Oct(Vec<u8>),
    Ed25519(Vec<u8>),
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material (HMAC secrets).
        f.write_str(match self {
            Self::Rsa { .. } => "RSA",
            Self::Ec { .. } => "EC",
            Self::Oct(_) => "oct",
            Self::Ed25519(_) => "OKP",
        })
    }
}

#[derive(Debug, Clone)]
struct Jwk {
    kid: String,
    alg: String,
    key: Key,
}

/// A parsed key set with at least one usable key.
#[derive(Debug, Clone)]
pub struct Jwks {
    keys: Vec<Jwk>,
}

const X509_PREFIX: &str = "-----BEGIN CERTIFICATE-----\n";
const X509_SUFFIX: &str = "\n-----END CERTIFICATE-----\n";

fn get_str<'a>(m: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, ()> {
    match m.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(()),
    }
}

fn required_str<'a>(m: &'a Map<String, Value>, name: &str, what: &str) -> Result<&'a str, String> {
    match get_str(m, name) {
        Ok(Some(s)) => Ok(s),
        Ok(None) => Err(format!("[{name}] field is missing for {what}")),
        Err(()) => Err(format!("[{name}] field is not string for {what}")),
    }
}

/// BN_bin2bn semantics: leading zero bytes do not matter.
fn strip_zeros(b: &[u8]) -> &[u8] {
    let i = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[i..]
}

impl Jwks {
    /// Parses a JWKS document (or Google's `{"kid": "<x509 PEM>"}` form).
    pub fn parse(text: &str) -> Result<Self, String> {
        let doc: Map<String, Value> = match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(m)) => m,
            _ => return Err("Jwks is an invalid JSON".into()),
        };
        let Some(keys) = doc.get("keys") else {
            if is_x509_map(&doc) {
                return Self::from_x509_map(&doc);
            }
            return Err("Jwks does not have [keys] field".into());
        };
        let Value::Array(items) = keys else {
            return Err("[keys] in Jwks is not an array".into());
        };
        let mut out = Vec::new();
        let mut first_error = None;
        for item in items {
            let Value::Object(m) = item else {
                continue;
            };
            match parse_jwk(m) {
                Ok(k) => out.push(k),
                Err(e) => {
                    // jwt_verify_lib keeps the first error.
                    first_error.get_or_insert(e);
                }
            }
        }
        if out.is_empty() {
            return Err(
                first_error.unwrap_or_else(|| "Jwks doesn't have any valid public key".into())
            );
        }
        Ok(Self { keys: out })
    }

    fn from_x509_map(doc: &Map<String, Value>) -> Result<Self, String> {
        let mut keys = Vec::new();
        for (kid, v) in doc {
            let pem = v.as_str().unwrap_or_default();
            let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
                .map_err(|_| "X509 parse pubkey fails".to_string())?;
            let cert = pem
                .parse_x509()
                .map_err(|_| "X509 parse pubkey fails".to_string())?;
            let Ok(x509_parser::public_key::PublicKey::RSA(rsa)) = cert.public_key().parsed()
            else {
                return Err("X509 parse pubkey internal fails: get pubkey".into());
            };
            keys.push(Jwk {
                kid: kid.clone(),
                alg: String::new(),
                key: Key::Rsa {
                    n: strip_zeros(rsa.modulus).to_vec(),
                    e: strip_zeros(rsa.exponent).to_vec(),
                },
            });
        }
        Ok(Self { keys })
    }

    /// `verifyJwtWithoutTimeChecking`: the first key whose `kid` and `alg`
    /// fit (when both sides name them) and whose signature checks out.
    pub fn verify(&self, jwt: &Jwt) -> Status {
        let signed = jwt.signed.as_bytes();
        let mut kid_alg_matched = false;
        for jwk in &self.keys {
            if !jwt.kid.is_empty() && !jwk.kid.is_empty() && jwk.kid != jwt.kid {
                continue;
            }
            if !jwk.alg.is_empty() && jwk.alg != jwt.alg {
                continue;
            }
            kid_alg_matched = true;
            match &jwk.key {
                Key::Ec { curve, point } => {
                    if verify_ec(*curve, point, &jwt.alg, signed, &jwt.signature) {
                        return Status::Ok;
                    }
                }
                Key::Rsa { n, e } => {
                    if verify_rsa(n, e, &jwt.alg, signed, &jwt.signature) {
                        return Status::Ok;
                    }
                }
                Key::Oct(k) => {
                    let algo = match jwt.alg.as_str() {
                        "HS384" => hmac::HMAC_SHA384,
                        "HS512" => hmac::HMAC_SHA512,
                        _ => hmac::HMAC_SHA256,
                    };
                    if hmac::verify(&hmac::Key::new(algo, k), signed, &jwt.signature).is_ok() {
                        return Status::Ok;
                    }
                }
                Key::Ed25519(x) => {
                    // As jwt_verify_lib: any algorithm is checked as EdDSA
                    // against an OKP key, and a wrong length ends the search.
                    if jwt.signature.len() != 64 {
                        return Status::JwtEd25519SignatureWrongLength;
                    }
                    if signature::UnparsedPublicKey::new(&signature::ED25519, x)
                        .verify(signed, &jwt.signature)
                        .is_ok()
                    {
                        return Status::Ok;
                    }
                }
            }
        }
        if kid_alg_matched {
            Status::JwtVerificationFail
        } else {
            Status::JwksKidAlgMismatch
        }
    }
}

fn is_x509_map(doc: &Map<String, Value>) -> bool {
    !doc.is_empty()
        && doc.iter().all(|(k, v)| {
            !k.is_empty()
                && v.as_str()
                    .is_some_and(|s| s.starts_with(X509_PREFIX) && s.ends_with(X509_SUFFIX))
        })
}

fn parse_jwk(m: &Map<String, Value>) -> Result<Jwk, String> {
    let kty = match get_str(m, "kty") {
        Ok(Some(k)) => k.to_string(),
        Ok(None) => return Err("[kty] is missing in [keys]".into()),
        Err(()) => return Err("[kty] is bad in [keys]".into()),
    };
    let kid = get_str(m, "kid")
        .ok()
        .flatten()
        .unwrap_or_default()
        .to_string();
    let alg = get_str(m, "alg")
        .ok()
        .flatten()
        .unwrap_or_default()
        .to_string();
    let key = match kty.as_str() {
        "EC" => parse_ec(m, &alg)?,
        "RSA" => parse_rsa(m, &alg)?,
        "oct" => parse_oct(m, &alg)?,
        "OKP" => parse_okp(m, &alg)?,
        _ => return Err("[kty] is not supported in [keys]".into()),
    };
    Ok(Jwk { kid, alg, key })
}

fn parse_ec(m: &Map<String, Value>, alg: &str) -> Result<Key, String> {
    if !alg.is_empty() && !alg.starts_with("ES") {
        return Err("[alg] is not started with [ES] for an EC key".into());
    }
    let crv = get_str(m, "crv")
        .map_err(|()| "[crv] field is not string for an EC key".to_string())?
        .unwrap_or_default();
    if !alg.is_empty()
        && !crv.is_empty()
        && !matches!(
            (alg, crv),
            ("ES256", "P-256") | ("ES384", "P-384") | ("ES512", "P-521")
        )
    {
        return Err("[crv] field specified is not compatible with [alg] for an EC key".into());
    }
    let crv = if alg.is_empty() && crv.is_empty() {
        "P-256"
    } else {
        crv
    };
    let curve = if alg == "ES256" || crv == "P-256" {
        Curve::P256
    } else if alg == "ES384" || crv == "P-384" {
        Curve::P384
    } else if alg == "ES512" || crv == "P-521" {
        Curve::P521
    } else {
        return Err("[crv] or [alg] field is not supported for an EC key".into());
    };
    let x = required_str(m, "x", "an EC key")?;
    let y = required_str(m, "y", "an EC key")?;
    let (Some(x), Some(y)) = (b64url_decode(x), b64url_decode(y)) else {
        return Err("Jwks EC [x] or [y] field is an invalid Base64.".into());
    };
    let len = curve.coordinate_len();
    let (x, y) = (strip_zeros(&x), strip_zeros(&y));
    if x.len() > len || y.len() > len {
        return Err("Jwks EC [x] and [y] fields have a parse error.".into());
    }
    let mut point = vec![0x04];
    point.extend(std::iter::repeat_n(0, len - x.len()));
    point.extend_from_slice(x);
    point.extend(std::iter::repeat_n(0, len - y.len()));
    point.extend_from_slice(y);
    let check: &'static dyn signature::VerificationAlgorithm = match curve {
        Curve::P256 => &signature::ECDSA_P256_SHA256_ASN1,
        Curve::P384 => &signature::ECDSA_P384_SHA384_ASN1,
        Curve::P521 => &signature::ECDSA_P521_SHA512_ASN1,
    };
    if signature::ParsedPublicKey::new(check, &point).is_err() {
        return Err("Jwks EC [x] and [y] fields have a parse error.".into());
    }
    Ok(Key::Ec { curve, point })
}

fn parse_rsa(m: &Map<String, Value>, alg: &str) -> Result<Key, String> {
    if !alg.is_empty() && !alg.starts_with("RS") && !alg.starts_with("PS") {
        return Err("[alg] is not started with [RS] or [PS] for an RSA key".into());
    }
    let n = required_str(m, "n", "a RSA key")?;
    let e = required_str(m, "e", "a RSA key")?;
    let bad = || "Jwks RSA [n] or [e] field is missing or has a parse error".to_string();
    let n = b64url_decode(n).ok_or_else(bad)?;
    let e = b64url_decode(e).ok_or_else(bad)?;
    let (n, e) = (strip_zeros(&n).to_vec(), strip_zeros(&e).to_vec());
    // Non-standard exponents are refused early, as jwt_verify_lib does.
    if e != [3] && e != [1, 0, 1] {
        return Err(bad());
    }
    Ok(Key::Rsa { n, e })
}

fn parse_oct(m: &Map<String, Value>, alg: &str) -> Result<Key, String> {
    if !alg.is_empty() && !matches!(alg, "HS256" | "HS384" | "HS512") {
        return Err("[alg] does not start with [HS] for an HMAC key".into());
    }
    let k = required_str(m, "k", "an HMAC key")?;
    match b64url_decode(k) {
        Some(k) if !k.is_empty() => Ok(Key::Oct(k)),
        _ => Err("Jwks Oct key is an invalid Base64".into()),
    }
}

fn parse_okp(m: &Map<String, Value>, alg: &str) -> Result<Key, String> {
    if !alg.is_empty() && alg != "EdDSA" {
        return Err("[alg] is not [EdDSA] for an OKP key".into());
    }
    let crv = required_str(m, "crv", "an OKP key")?;
    if crv != "Ed25519" {
        return Err("[crv] field is not supported for an OKP key".into());
    }
    let x = required_str(m, "x", "an OKP key")?;
    let x =
        b64url_decode(x).ok_or_else(|| "Jwks OKP [x] field is an invalid Base64.".to_string())?;
    if x.len() != 32 {
        return Err("Jwks OKP [x] field is wrong length.".into());
    }
    Ok(Key::Ed25519(x))
}

fn verify_rsa(n: &[u8], e: &[u8], alg: &str, msg: &[u8], sig: &[u8]) -> bool {
    let params: &'static signature::RsaParameters = match alg {
        "RS256" => &signature::RSA_PKCS1_2048_8192_SHA256,
        "RS384" => &signature::RSA_PKCS1_2048_8192_SHA384,
        "RS512" => &signature::RSA_PKCS1_2048_8192_SHA512,
        "PS256" => &signature::RSA_PSS_2048_8192_SHA256,
        "PS384" => &signature::RSA_PSS_2048_8192_SHA384,
        "PS512" => &signature::RSA_PSS_2048_8192_SHA512,
        _ => return false,
    };
    signature::RsaPublicKeyComponents { n, e }
        .verify(params, msg, sig)
        .is_ok()
}

/// Envoy splits the signature in two halves (`r || s`) whatever the curve,
/// hashes with the token's algorithm and verifies with the key's curve.
fn verify_ec(curve: Curve, point: &[u8], alg: &str, msg: &[u8], sig: &[u8]) -> bool {
    use signature::*;
    let algo: &'static EcdsaVerificationAlgorithm = match (curve, alg) {
        (Curve::P256, "ES384") => &ECDSA_P256_SHA384_ASN1,
        (Curve::P256, "ES512") => &ECDSA_P256_SHA512_ASN1,
        (Curve::P256, _) => &ECDSA_P256_SHA256_ASN1,
        (Curve::P384, "ES384") => &ECDSA_P384_SHA384_ASN1,
        (Curve::P384, "ES512") => &ECDSA_P384_SHA512_ASN1,
        (Curve::P384, _) => &ECDSA_P384_SHA256_ASN1,
        (Curve::P521, "ES384") => &ECDSA_P521_SHA384_ASN1,
        (Curve::P521, "ES512") => &ECDSA_P521_SHA512_ASN1,
        (Curve::P521, _) => &ECDSA_P521_SHA256_ASN1,
    };
    let half = sig.len() / 2;
    if half == 0 {
        return false;
    }
    let der = ecdsa_der(&sig[..half], &sig[half..2 * half]);
    UnparsedPublicKey::new(algo, point)
        .verify(msg, &der)
        .is_ok()
}

fn der_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else if len <= 0xff {
        out.extend_from_slice(&[0x81, len as u8]);
    } else {
        out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]);
    }
}

fn der_uint(out: &mut Vec<u8>, v: &[u8]) {
    let v = strip_zeros(v);
    out.push(0x02);
    if v.is_empty() {
        out.extend_from_slice(&[1, 0]);
    } else if v[0] & 0x80 != 0 {
        der_len(out, v.len() + 1);
        out.push(0);
        out.extend_from_slice(v);
    } else {
        der_len(out, v.len());
        out.extend_from_slice(v);
    }
}

fn ecdsa_der(r: &[u8], s: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(r.len() + s.len() + 8);
    der_uint(&mut body, r);
    der_uint(&mut body, s);
    let mut out = vec![0x30];
    der_len(&mut out, body.len());
    out.extend(body);
    out
}

#[cfg(test)]
pub(crate) mod tests;
