//! The proxy's side of certificate issuance: a fresh key pair and a CSR for
//! its SPIFFE id, and when to ask again.
//!
//! The private key is generated where it is used and never leaves the proxy;
//! only the CSR (public key + requested SAN, signed by the key to prove
//! possession) travels to the CA.

use std::time::{Duration, SystemTime};

use rand::Rng as _;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::spiffe::SpiffeId;

/// Fraction of the lifetime at which a certificate is renewed (Istio and
/// ztunnel renew at half life).
const REFRESH_AT_FRACTION: f64 = 0.5;
/// Spread of the renewal time, as a fraction of the lifetime either side, so
/// that proxies started together do not all hit the CA at the same instant.
const REFRESH_JITTER_FRACTION: f64 = 0.1;

/// A key pair and the CSR that asks for a certificate over it.
pub struct WorkloadCsr {
    key: KeyPair,
    csr_pem: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    #[error("cannot generate the ECDSA P-256 key pair: {0}")]
    KeyGeneration(rcgen::Error),
    #[error("cannot build the CSR: {0}")]
    Request(rcgen::Error),
}

impl WorkloadCsr {
    /// Generates an ECDSA P-256 key and a CSR whose only SAN is `id`'s URI
    /// and whose subject is empty, as Istio's agent sends.
    pub fn generate(id: &SpiffeId) -> Result<Self, CsrError> {
        let key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(CsrError::KeyGeneration)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(
            id.to_uri().try_into().map_err(CsrError::Request)?,
        )];
        let csr = params.serialize_request(&key).map_err(CsrError::Request)?;
        let csr_pem = csr.pem().map_err(CsrError::Request)?;
        Ok(Self { key, csr_pem })
    }

    /// The CSR to send to the CA.
    pub fn csr_pem(&self) -> &str {
        &self.csr_pem
    }

    /// The private key as PKCS#8 PEM, for SDS or a file the proxy reads.
    pub fn private_key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The private key for a rustls config.
    pub fn private_key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }
}

impl std::fmt::Debug for WorkloadCsr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadCsr")
            .field("csr_pem", &self.csr_pem)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// When to renew a certificate valid from `not_before` to `not_after`: at
/// half its lifetime, moved by a random ±10% of the lifetime, and never
/// before `now` (an overdue certificate is renewed at once).
pub fn refresh_at(not_before: SystemTime, not_after: SystemTime, now: SystemTime) -> SystemTime {
    let unit = rand::rng().random_range(-1.0..=1.0);
    refresh_at_with_jitter(not_before, not_after, now, unit)
}

/// [`refresh_at`] with the random draw given: `jitter` in `[-1, 1]` scales the
/// ±10% spread. Values outside are clamped.
pub fn refresh_at_with_jitter(
    not_before: SystemTime,
    not_after: SystemTime,
    now: SystemTime,
    jitter: f64,
) -> SystemTime {
    let Ok(lifetime) = not_after.duration_since(not_before) else {
        return now;
    };
    let jitter = if jitter.is_nan() {
        0.0
    } else {
        jitter.clamp(-1.0, 1.0)
    };
    let fraction = REFRESH_AT_FRACTION + REFRESH_JITTER_FRACTION * jitter;
    let offset = Duration::from_secs_f64(lifetime.as_secs_f64() * fraction);
    let at = not_before.checked_add(offset).unwrap_or(not_after);
    at.max(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn csr_carries_the_spiffe_uri_and_a_p256_key() {
        let id = SpiffeId::new("cluster.local", "default", "reviews").expect("id");
        let csr = WorkloadCsr::generate(&id).expect("csr");
        assert!(
            csr.csr_pem()
                .starts_with("-----BEGIN CERTIFICATE REQUEST-----")
        );
        let parsed = rcgen::CertificateSigningRequestParams::from_pem(csr.csr_pem())
            .expect("CSR parses and its signature verifies");
        assert_eq!(
            parsed.params.subject_alt_names,
            vec![SanType::URI(
                "spiffe://cluster.local/ns/default/sa/reviews"
                    .try_into()
                    .expect("ia5")
            )]
        );
        assert_eq!(parsed.public_key.algorithm(), &PKCS_ECDSA_P256_SHA256);
        assert!(csr.private_key_pem().contains("PRIVATE KEY"));
        assert!(!format!("{csr:?}").contains("PRIVATE KEY"));
    }

    fn assert_close(actual: SystemTime, expected: SystemTime) {
        let diff = actual
            .duration_since(expected)
            .or_else(|e| Ok::<_, ()>(e.duration()))
            .expect("infallible");
        assert!(
            diff < Duration::from_millis(1),
            "{actual:?} vs {expected:?}"
        );
    }

    #[test]
    fn refresh_is_at_half_life_within_ten_percent() {
        let nb = SystemTime::UNIX_EPOCH + 1000 * HOUR;
        let na = nb + 24 * HOUR;
        assert_close(refresh_at_with_jitter(nb, na, nb, 0.0), nb + 12 * HOUR);
        let earliest = nb + HOUR * 24 * 4 / 10;
        let latest = nb + HOUR * 24 * 6 / 10;
        assert_close(refresh_at_with_jitter(nb, na, nb, -1.0), earliest);
        assert_close(refresh_at_with_jitter(nb, na, nb, 5.0), latest);
        for _ in 0..100 {
            let at = refresh_at(nb, na, nb);
            assert!(
                at >= earliest - Duration::from_millis(1)
                    && at <= latest + Duration::from_millis(1),
                "{at:?}"
            );
        }
    }

    #[test]
    fn refresh_is_never_in_the_past() {
        let nb = SystemTime::UNIX_EPOCH + 1000 * HOUR;
        let na = nb + 24 * HOUR;
        let late = nb + 20 * HOUR;
        assert_eq!(refresh_at(nb, na, late), late);
        let expired = na + HOUR;
        assert_eq!(refresh_at(nb, na, expired), expired);
        // A nonsensical window (not_after before not_before): renew now.
        assert_eq!(refresh_at(na, nb, nb), nb);
    }
}
