use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair,
    KeyPair, RSA_PKCS1_SHA256, RSA_PKCS1_SHA384, RSA_PKCS1_SHA512, RSA_PSS_SHA256, RSA_PSS_SHA384,
    RSA_PSS_SHA512, RsaEncoding, RsaKeyPair,
};
use base64::Engine as _;
use serde_json::Value;

use super::*;

pub(crate) fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Reads `SEQUENCE { INTEGER n, INTEGER e }` (PKCS#1 RSAPublicKey).
fn rsa_components(der: &[u8]) -> (Vec<u8>, Vec<u8>) {
    fn tlv(b: &[u8]) -> (u8, &[u8], &[u8]) {
        let tag = b[0];
        let (len, hdr) = if b[1] < 0x80 {
            (b[1] as usize, 2)
        } else {
            let n = (b[1] & 0x7f) as usize;
            let mut l = 0usize;
            for x in &b[2..2 + n] {
                l = (l << 8) | *x as usize;
            }
            (l, 2 + n)
        };
        (tag, &b[hdr..hdr + len], &b[hdr + len..])
    }
    let (_, seq, _) = tlv(der);
    let (_, n, rest) = tlv(seq);
    let (_, e, _) = tlv(rest);
    (strip_zeros(n).to_vec(), strip_zeros(e).to_vec())
}

/// A signing key for tests and its JWK.
pub(crate) enum TestKey {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair, &'static str),
    Ed(Ed25519KeyPair),
    Hmac(Vec<u8>),
}

impl TestKey {
    pub(crate) fn rsa() -> Self {
        Self::Rsa(RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("rsa"))
    }
    pub(crate) fn p256() -> Self {
        Self::Ec(
            EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("ec"),
            "P-256",
        )
    }
    pub(crate) fn p384() -> Self {
        Self::Ec(
            EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING).expect("ec"),
            "P-384",
        )
    }
    pub(crate) fn ed25519() -> Self {
        Self::Ed(Ed25519KeyPair::generate().expect("ed"))
    }

    pub(crate) fn jwk(&self, kid: &str) -> Value {
        match self {
            Self::Rsa(k) => {
                let (n, e) = rsa_components(k.public_key().as_ref());
                serde_json::json!({"kty": "RSA", "kid": kid, "n": b64(&n), "e": b64(&e)})
            }
            Self::Ec(k, crv) => {
                let point = k.public_key().as_ref();
                let len = (point.len() - 1) / 2;
                serde_json::json!({"kty": "EC", "kid": kid, "crv": crv,
                    "x": b64(&point[1..1 + len]), "y": b64(&point[1 + len..])})
            }
            Self::Ed(k) => {
                serde_json::json!({"kty": "OKP", "kid": kid, "crv": "Ed25519",
                    "x": b64(k.public_key().as_ref())})
            }
            Self::Hmac(s) => serde_json::json!({"kty": "oct", "kid": kid, "k": b64(s)}),
        }
    }

    pub(crate) fn sign(&self, alg: &str, input: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match self {
            Self::Rsa(k) => {
                let enc: &'static dyn RsaEncoding = match alg {
                    "RS384" => &RSA_PKCS1_SHA384,
                    "RS512" => &RSA_PKCS1_SHA512,
                    "PS256" => &RSA_PSS_SHA256,
                    "PS384" => &RSA_PSS_SHA384,
                    "PS512" => &RSA_PSS_SHA512,
                    _ => &RSA_PKCS1_SHA256,
                };
                let mut sig = vec![0; k.public_modulus_len()];
                k.sign(enc, &rng, input, &mut sig).expect("sign");
                sig
            }
            Self::Ec(k, _) => k.sign(&rng, input).expect("sign").as_ref().to_vec(),
            Self::Ed(k) => k.sign(input).as_ref().to_vec(),
            Self::Hmac(s) => {
                let algo = match alg {
                    "HS384" => hmac::HMAC_SHA384,
                    "HS512" => hmac::HMAC_SHA512,
                    _ => hmac::HMAC_SHA256,
                };
                hmac::sign(&hmac::Key::new(algo, s), input)
                    .as_ref()
                    .to_vec()
            }
        }
    }

    /// A signed compact JWT.
    pub(crate) fn token(&self, header: &Value, payload: &Value) -> String {
        let alg = header["alg"].as_str().unwrap_or("RS256");
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(payload.to_string().as_bytes())
        );
        let sig = self.sign(alg, input.as_bytes());
        format!("{input}.{}", b64(&sig))
    }
}

pub(crate) fn jwks_json(keys: &[Value]) -> String {
    serde_json::json!({ "keys": keys }).to_string()
}

fn check(key: &TestKey, alg: &str) -> Status {
    let jwks = Jwks::parse(&jwks_json(&[key.jwk("k1")])).expect("jwks");
    let t = key.token(
        &serde_json::json!({"alg": alg, "kid": "k1"}),
        &serde_json::json!({"iss": "i"}),
    );
    jwks.verify(&Jwt::parse(&t).expect("parses"))
}

#[test]
fn every_algorithm_verifies() {
    let rsa = TestKey::rsa();
    for alg in ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"] {
        assert_eq!(check(&rsa, alg), Status::Ok, "{alg}");
    }
    assert_eq!(check(&TestKey::p256(), "ES256"), Status::Ok);
    assert_eq!(check(&TestKey::p384(), "ES384"), Status::Ok);
    assert_eq!(check(&TestKey::ed25519(), "EdDSA"), Status::Ok);
    let h = TestKey::Hmac(b"0123456789abcdef0123456789abcdef".to_vec());
    for alg in ["HS256", "HS384", "HS512"] {
        assert_eq!(check(&h, alg), Status::Ok, "{alg}");
    }
}

#[test]
fn tampering_and_wrong_keys_fail() {
    let rsa = TestKey::rsa();
    let jwks = Jwks::parse(&jwks_json(&[rsa.jwk("k1")])).expect("jwks");
    let t = rsa.token(
        &serde_json::json!({"alg": "RS256"}),
        &serde_json::json!({"sub": "alice"}),
    );
    // Another payload under the same signature.
    let mut parts: Vec<&str> = t.split('.').collect();
    let forged = b64(br#"{"sub":"admin"}"#);
    parts[1] = &forged;
    let forged = parts.join(".");
    assert_eq!(
        jwks.verify(&Jwt::parse(&forged).expect("parses")),
        Status::JwtVerificationFail
    );
    // A kid the set does not have.
    let t = rsa.token(
        &serde_json::json!({"alg": "RS256", "kid": "other"}),
        &serde_json::json!({}),
    );
    assert_eq!(
        jwks.verify(&Jwt::parse(&t).expect("parses")),
        Status::JwksKidAlgMismatch
    );
    // Signed by another key.
    let t = TestKey::rsa().token(&serde_json::json!({"alg": "RS256"}), &serde_json::json!({}));
    assert_eq!(
        jwks.verify(&Jwt::parse(&t).expect("parses")),
        Status::JwtVerificationFail
    );
}

#[test]
fn hs256_with_the_rsa_public_key_as_secret_is_refused() {
    let rsa = TestKey::rsa();
    let jwk = rsa.jwk("k1");
    let jwks = Jwks::parse(&jwks_json(std::slice::from_ref(&jwk))).expect("jwks");
    // The classic key-confusion attack: HMAC keyed with the public modulus.
    let secret = b64url_decode(jwk["n"].as_str().expect("n")).expect("n");
    let t =
        TestKey::Hmac(secret).token(&serde_json::json!({"alg": "HS256"}), &serde_json::json!({}));
    assert_eq!(
        jwks.verify(&Jwt::parse(&t).expect("parses")),
        Status::JwtVerificationFail
    );
    // With `alg` on the key, the key is not even considered.
    let mut with_alg = jwk;
    with_alg["alg"] = "RS256".into();
    let jwks = Jwks::parse(&jwks_json(&[with_alg])).expect("jwks");
    assert_eq!(
        jwks.verify(&Jwt::parse(&t).expect("parses")),
        Status::JwksKidAlgMismatch
    );
}

#[test]
fn key_set_parsing_follows_jwt_verify_lib() {
    assert!(Jwks::parse("not json").is_err());
    assert!(Jwks::parse(r#"{"foo": 1}"#).is_err());
    assert!(Jwks::parse(r#"{"keys": 1}"#).is_err());
    assert!(Jwks::parse(r#"{"keys": []}"#).is_err());
    // Bad keys are skipped as long as one is good.
    let good = TestKey::p256().jwk("k");
    let set = serde_json::json!({"keys": [{"kty": "RSA"}, {"kty": "XYZ"}, good]});
    assert_eq!(Jwks::parse(&set.to_string()).expect("jwks").keys.len(), 1);
    // An EC point that is not on the curve.
    let bad = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256",
        "x": b64(&[1; 32]), "y": b64(&[2; 32])}]});
    assert!(Jwks::parse(&bad.to_string()).is_err());
    // alg and crv must agree.
    let mut k = TestKey::p256().jwk("k");
    k["alg"] = "ES384".into();
    assert!(Jwks::parse(&jwks_json(&[k])).is_err());
}

#[test]
fn ecdsa_der_encoding_handles_high_bits() {
    let der = ecdsa_der(&[0x80, 1], &[0, 0, 5]);
    assert_eq!(der, [0x30, 8, 2, 3, 0, 0x80, 1, 2, 1, 5]);
}
