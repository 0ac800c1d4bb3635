//! Caller authentication for local mode (`trellis up`), where there is no
//! Kubernetes service-account token for the CA to review.
//!
//! The CA holds a random secret. When `trellis up` starts a workload it asks
//! the CA for that workload's token and hands it over (environment or file);
//! the proxy presents it as `authorization: Bearer <token>` on
//! `CreateCertificate`, and the CA maps it back to the one identity that
//! workload may be issued. The token is
//! `v1.<base64url(spiffe id)>.<base64url(HMAC-SHA256(secret, domain || id))>`:
//! self-describing, so no table of issued tokens is needed, and unforgeable
//! without the secret. Verification compares tags in constant time.
//!
//! Tokens do not expire; they are valid as long as the secret is, which for an
//! in-memory [`TokenKey`] is the life of the CA process.

use std::fmt;

use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::spiffe::{SpiffeId, SpiffeIdError};

const VERSION: &str = "v1";
/// Domain separation: a tag made for anything else with the same secret can
/// never pass as a token.
const CONTEXT: &[u8] = b"trellis workload token v1\0";
const SECRET_LEN: usize = 32;

/// The CA's token secret.
pub struct TokenKey {
    key: hmac::Key,
}

/// Why a token was refused. The messages do not echo the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is not of the form v1.<identity>.<signature>")]
    Malformed,
    #[error("token signature does not match; it was not issued by this CA")]
    BadSignature,
    #[error("token names an invalid SPIFFE id: {0}")]
    InvalidIdentity(#[from] SpiffeIdError),
    #[error("cannot generate a token secret: the system random generator failed")]
    Random,
}

impl TokenKey {
    /// A fresh random secret from the system CSPRNG.
    pub fn generate() -> Result<Self, TokenError> {
        let mut secret = [0u8; SECRET_LEN];
        aws_lc_rs::rand::fill(&mut secret).map_err(|_| TokenError::Random)?;
        Ok(Self::from_secret(&secret))
    }

    /// A key from a secret kept elsewhere (so tokens survive a CA restart).
    pub fn from_secret(secret: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// The token that authenticates its bearer as `id`.
    pub fn issue(&self, id: &SpiffeId) -> String {
        let uri = id.to_uri();
        let tag = hmac::sign(&self.key, &signed_message(&uri));
        format!(
            "{VERSION}.{}.{}",
            URL_SAFE_NO_PAD.encode(uri.as_bytes()),
            URL_SAFE_NO_PAD.encode(tag.as_ref())
        )
    }

    /// The identity a token was issued for, if this key issued it.
    pub fn verify(&self, token: &str) -> Result<SpiffeId, TokenError> {
        let mut parts = token.split('.');
        let (Some(VERSION), Some(id_b64), Some(tag_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let uri_bytes = URL_SAFE_NO_PAD
            .decode(id_b64)
            .map_err(|_| TokenError::Malformed)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag_b64)
            .map_err(|_| TokenError::Malformed)?;
        let uri = String::from_utf8(uri_bytes).map_err(|_| TokenError::Malformed)?;
        // Check the tag before parsing, so unauthenticated input only ever
        // reaches the HMAC.
        hmac::verify(&self.key, &signed_message(&uri), &tag)
            .map_err(|_| TokenError::BadSignature)?;
        Ok(uri.parse()?)
    }
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey(<redacted>)")
    }
}

fn signed_message(uri: &str) -> Vec<u8> {
    let mut msg = Vec::with_capacity(CONTEXT.len() + uri.len());
    msg.extend_from_slice(CONTEXT);
    msg.extend_from_slice(uri.as_bytes());
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(sa: &str) -> SpiffeId {
        SpiffeId::new("cluster.local", "default", sa).expect("valid id")
    }

    #[test]
    fn issued_token_verifies_to_its_identity() {
        let key = TokenKey::generate().expect("key");
        let token = key.issue(&id("reviews"));
        assert_eq!(key.verify(&token), Ok(id("reviews")));
        assert!(!format!("{key:?}").contains(&token));
    }

    #[test]
    fn tokens_from_another_key_or_tampered_are_refused() {
        let key = TokenKey::generate().expect("key");
        let other = TokenKey::generate().expect("key");
        let token = other.issue(&id("reviews"));
        assert_eq!(key.verify(&token), Err(TokenError::BadSignature));

        // Swap in another identity but keep the signature.
        let mine = key.issue(&id("reviews"));
        let (_, tag) = mine.rsplit_once('.').expect("three parts");
        let forged = format!(
            "v1.{}.{tag}",
            URL_SAFE_NO_PAD.encode(id("ratings").to_uri())
        );
        assert_eq!(key.verify(&forged), Err(TokenError::BadSignature));

        for bad in [
            "",
            "v1",
            "v1.a",
            "v2.a.b",
            "v1.a.b.c",
            "v1.!!.AAAA",
            "Bearer x",
        ] {
            assert_eq!(key.verify(bad), Err(TokenError::Malformed), "{bad}");
        }
    }

    #[test]
    fn same_secret_gives_same_tokens() {
        let a = TokenKey::from_secret(b"0123456789abcdef0123456789abcdef");
        let b = TokenKey::from_secret(b"0123456789abcdef0123456789abcdef");
        assert_eq!(b.verify(&a.issue(&id("x"))), Ok(id("x")));
    }
}
