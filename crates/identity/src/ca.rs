//! The mesh CA: signs workload CSRs into short-lived SPIFFE certificates.
//!
//! # Where the signing key comes from
//!
//! [`MeshCa::load_or_create`] looks at one directory (see [`layout`] for the
//! files):
//!
//! 1. Istio's `cacerts` layout (`ca-cert.pem`, `ca-key.pem`,
//!    `cert-chain.pem`, `root-cert.pem`): an intermediate CA plugged in by the
//!    operator, usually under a corporate or multi-cluster root. Issued chains
//!    are the leaf followed by `cert-chain.pem`; the trust bundle is
//!    `root-cert.pem`.
//! 2. A self-signed root written earlier by this CA (same names, without
//!    `cert-chain.pem`).
//! 3. Nothing: a new ECDSA P-256 root (CA:TRUE, ten years, `O=<trust domain>`)
//!    is generated and written there, so a restart keeps the same root and
//!    existing workload certificates stay valid.
//!
//! # Issued certificates
//!
//! As Istio's CA issues them (`security/pkg/pki/util/generate_cert.go`): empty
//! subject, the SPIFFE id as the only (critical) URI SAN, key usage
//! digitalSignature + keyEncipherment, EKU serverAuth + clientAuth, CA:FALSE,
//! a random 128-bit serial, not-before backdated by two minutes
//! (`ClockSkewGracePeriod`) so peers with a slightly slow clock accept it, and
//! not-after at the requested TTL (24 h when none is asked), capped at 90
//! days and at the signing certificate's own expiry.
//!
//! # Rotating the root
//!
//! Workloads trust every root in the trust bundle (`root-cert.pem`), which is
//! what makes a root change possible without a flag day:
//!
//! 1. **Trust the new root.** Append the new root to `root-cert.pem` (old
//!    first, new second) and restart or reload the CA. It keeps signing with
//!    the old key, but every certificate response and SDS `ROOTCA` push now
//!    carries both roots. Wait until every proxy has renewed once (half the
//!    workload TTL, 12 h by default) so all of them trust both.
//! 2. **Sign with the new root.** Replace `ca-cert.pem` and `ca-key.pem` (and
//!    `cert-chain.pem` for an intermediate) with the new signer, keeping both
//!    roots in `root-cert.pem`. New leaves chain to the new root; leaves still
//!    carrying the old chain verify against the old root, which everyone
//!    still trusts. Wait until every old leaf has been renewed or expired
//!    (the longest TTL handed out, 24 h by default).
//! 3. **Drop the old root** from `root-cert.pem` and reload.
//!
//! A self-signed CA checks that `root-cert.pem` contains its own `ca-cert.pem`,
//! and a plugged-in CA that its chain leads to a root in the bundle, so a
//! step done out of order is refused at load time rather than discovered as
//! failing handshakes.

pub mod layout;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber, SubjectPublicKeyInfo,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer as _;

use crate::spiffe::{self, SpiffeId, SpiffeIdError};
use crate::token::{TokenError, TokenKey};
use crate::x509;

/// Workload certificate TTL when the request asks for none (Istio
/// `DEFAULT_WORKLOAD_CERT_TTL`).
pub const DEFAULT_WORKLOAD_CERT_TTL: Duration = Duration::from_secs(24 * 3600);
/// Longest workload certificate TTL handed out (Istio `MAX_WORKLOAD_CERT_TTL`).
pub const MAX_WORKLOAD_CERT_TTL: Duration = Duration::from_secs(90 * 24 * 3600);
/// How far not-before is backdated (Istio `ClockSkewGracePeriod`).
pub const CLOCK_SKEW_GRACE: Duration = Duration::from_secs(120);

/// Where the CA's signing key came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaOrigin {
    /// Istio `cacerts` layout: an operator-provided intermediate.
    PluggedIn,
    /// A self-signed root this CA generated on an earlier start.
    SelfSignedLoaded,
    /// A self-signed root generated on this start.
    SelfSignedGenerated,
}

/// The mesh certificate authority.
pub struct MeshCa {
    trust_domain: String,
    origin: CaOrigin,
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    signing_not_after: SystemTime,
    /// `cert-chain.pem`, one PEM per certificate; empty for a self-signed root.
    chain_pem: Vec<String>,
    trust_bundle: Vec<CertificateDer<'static>>,
    trust_bundle_pem: String,
    default_ttl: Duration,
    max_ttl: Duration,
    tokens: TokenKey,
}

/// A signed workload certificate and what a proxy needs to use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCert {
    /// Leaf first, then the intermediates up to (for a plugged-in CA,
    /// including) the root; one certificate per element.
    pub cert_chain_pem: Vec<String>,
    /// Every root the mesh trusts, concatenated PEM.
    pub trust_bundle_pem: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl IssuedCert {
    pub fn leaf_pem(&self) -> &str {
        self.cert_chain_pem.first().map_or("", String::as_str)
    }

    /// The chain as one PEM file (leaf first), as Envoy's
    /// `tls_certificate.certificate_chain` wants it.
    pub fn chain_pem(&self) -> String {
        self.cert_chain_pem.concat()
    }

    /// The `cert_chain` of Istio's `IstioCertificateResponse`: the chain, then
    /// the whole trust bundle as the last element.
    pub fn istio_cert_chain(&self) -> Vec<String> {
        let mut out = self.cert_chain_pem.clone();
        out.push(self.trust_bundle_pem.clone());
        out
    }
}

/// Why the CA could not start. Each names the file or directory at fault.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{}: {problem}", path.display())]
    File { path: PathBuf, problem: String },
    #[error("{}: incomplete CA directory: {problem}", dir.display())]
    IncompleteLayout { dir: PathBuf, problem: String },
    #[error("invalid trust domain: {0}")]
    InvalidTrustDomain(#[from] SpiffeIdError),
    #[error("cannot generate the self-signed root CA: {0}")]
    Generate(String),
    #[error(transparent)]
    Token(#[from] TokenError),
}

impl CaError {
    fn file(path: &Path, problem: impl std::fmt::Display) -> Self {
        Self::File {
            path: path.to_owned(),
            problem: problem.to_string(),
        }
    }
}

/// Why a CSR was not signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("CSR is not a PEM-encoded PKCS#10 request: {0}")]
    Malformed(String),
    #[error("CSR signature does not verify with its own public key")]
    BadSignature,
    #[error("CSR public key is not supported (ECDSA, RSA or Ed25519 expected): {0}")]
    UnsupportedKey(String),
    #[error("the caller is {allowed} but the CSR asks for URI SANs [{}]; a workload may only request its own identity", requested.join(", "))]
    IdentityMismatch {
        allowed: String,
        requested: Vec<String>,
    },
    #[error("identity {id} is outside this CA's trust domain {trust_domain}")]
    ForeignTrustDomain { id: String, trust_domain: String },
    #[error("the signing CA certificate expired; replace the CA's certificates")]
    SigningCertExpired,
    #[error("signing failed: {0}")]
    Internal(String),
}

impl SignError {
    /// True when the caller asked for an identity it may not have, as
    /// opposed to sending a broken request or hitting a CA fault.
    pub fn is_permission_denied(&self) -> bool {
        matches!(
            self,
            Self::IdentityMismatch { .. } | Self::ForeignTrustDomain { .. }
        )
    }

    /// True when the request itself is broken.
    pub fn is_invalid_request(&self) -> bool {
        matches!(
            self,
            Self::Malformed(_) | Self::BadSignature | Self::UnsupportedKey(_)
        )
    }
}

impl MeshCa {
    /// Loads the CA from `dir` (Istio `cacerts` layout or a self-signed root
    /// written before), or generates and writes a new self-signed root there.
    pub fn load_or_create(dir: &Path, trust_domain: &str) -> Result<Self, CaError> {
        spiffe::validate_trust_domain(trust_domain)?;
        let material = layout::load_or_create(dir, trust_domain)?;
        let cert_path = dir.join(layout::CA_CERT_FILE);
        let parsed =
            x509::parse(&material.signing_cert).map_err(|e| CaError::file(&cert_path, e))?;
        let signing_not_after: SystemTime = parsed.validity().not_after.to_datetime().into();
        let issuer = Issuer::from_ca_cert_der(&material.signing_cert, material.signing_key)
            .map_err(|e| CaError::file(&cert_path, e))?;
        let trust_bundle_pem = material
            .trust_bundle
            .iter()
            .map(|c| x509::cert_to_pem(c))
            .collect();
        let ca = Self {
            trust_domain: trust_domain.to_owned(),
            origin: material.origin,
            dir: dir.to_owned(),
            issuer,
            signing_not_after,
            chain_pem: material
                .chain
                .iter()
                .map(|c| x509::cert_to_pem(c))
                .collect(),
            trust_bundle: material.trust_bundle,
            trust_bundle_pem,
            default_ttl: DEFAULT_WORKLOAD_CERT_TTL,
            max_ttl: MAX_WORKLOAD_CERT_TTL,
            tokens: TokenKey::generate()?,
        };
        tracing::info!(
            dir = %dir.display(),
            trust_domain,
            origin = ?ca.origin,
            roots = ca.trust_bundle.len(),
            "mesh CA ready"
        );
        Ok(ca)
    }

    /// Replaces the in-memory token secret, e.g. with one persisted so that
    /// tokens handed out survive a CA restart.
    pub fn with_token_key(mut self, key: TokenKey) -> Self {
        self.tokens = key;
        self
    }

    /// Overrides the TTL used when a request asks for none (or zero).
    pub fn with_default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = ttl;
        self
    }

    /// Overrides the cap on requested TTLs.
    pub fn with_max_ttl(mut self, ttl: Duration) -> Self {
        self.max_ttl = ttl;
        self
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn origin(&self) -> CaOrigin {
        self.origin
    }

    /// The directory the CA was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every trusted root, concatenated PEM (several during a root rotation).
    pub fn trust_bundle_pem(&self) -> &str {
        &self.trust_bundle_pem
    }

    /// Every trusted root, DER.
    pub fn trust_bundle(&self) -> &[CertificateDer<'static>] {
        &self.trust_bundle
    }

    /// The token that lets a workload obtain certificates for `id`.
    pub fn issue_token(&self, id: &SpiffeId) -> String {
        self.tokens.issue(id)
    }

    /// The identity a bearer token entitles its holder to.
    pub fn verify_token(&self, token: &str) -> Result<SpiffeId, TokenError> {
        self.tokens.verify(token)
    }

    /// Signs `csr_pem` for `identity`, the caller's authenticated identity.
    ///
    /// The CSR must be validly self-signed and its URI SANs must be exactly
    /// `identity`; DNS, IP and email SANs in it are ignored, as is its subject:
    /// the certificate carries only what the CA decides. A zero `ttl` means
    /// the default (24 h); longer than the maximum (90 days) is capped.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        identity: &SpiffeId,
        ttl: Duration,
    ) -> Result<IssuedCert, SignError> {
        let public_key = self.check_csr(csr_pem, identity)?;
        let now = SystemTime::now();
        if now >= self.signing_not_after {
            return Err(SignError::SigningCertExpired);
        }
        let ttl = if ttl.is_zero() {
            self.default_ttl
        } else {
            ttl.min(self.max_ttl)
        };
        let not_after = now
            .checked_add(ttl)
            .map_or(self.signing_not_after, |t| t.min(self.signing_not_after));
        let not_before = now.checked_sub(CLOCK_SKEW_GRACE).unwrap_or(now);
        self.issue(&public_key, identity, not_before, not_after)
    }

    /// Test-only: signs with an arbitrary validity window (e.g. one already
    /// over) and none of the TTL policy.
    #[cfg(any(test, feature = "testing"))]
    #[doc(hidden)]
    pub fn sign_csr_with_validity(
        &self,
        csr_pem: &str,
        identity: &SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<IssuedCert, SignError> {
        let public_key = self.check_csr(csr_pem, identity)?;
        self.issue(&public_key, identity, not_before, not_after)
    }

    /// A serving certificate for the control plane itself (the CA and xDS
    /// endpoint on 15012): DNS and IP SANs, a fresh key that never leaves
    /// this process, the default TTL. Returns `(chain PEM, key PEM)`.
    pub fn issue_serving_cert(
        &self,
        dns_names: &[&str],
        ips: &[std::net::IpAddr],
    ) -> Result<(String, String), SignError> {
        let internal = |e: rcgen::Error| SignError::Internal(e.to_string());
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(internal)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = dns_names
            .iter()
            .map(|d| Ok(SanType::DnsName((*d).try_into()?)))
            .chain(ips.iter().map(|ip| Ok(SanType::IpAddress(*ip))))
            .collect::<Result<_, rcgen::Error>>()
            .map_err(internal)?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number =
            Some(random_serial().map_err(|e| SignError::Internal(e.to_string()))?);
        let now = SystemTime::now();
        params.not_before = now.checked_sub(CLOCK_SKEW_GRACE).unwrap_or(now).into();
        params.not_after = now
            .checked_add(self.default_ttl)
            .map_or(self.signing_not_after, |t| t.min(self.signing_not_after))
            .into();
        let cert = params.signed_by(&key, &self.issuer).map_err(internal)?;
        let mut chain = x509::cert_to_pem(cert.der());
        for c in &self.chain_pem {
            chain.push_str(c);
        }
        Ok((chain, key.serialize_pem()))
    }

    /// Parses and verifies the CSR and checks it asks for `identity` only.
    fn check_csr(
        &self,
        csr_pem: &str,
        identity: &SpiffeId,
    ) -> Result<SubjectPublicKeyInfo, SignError> {
        if identity.trust_domain() != self.trust_domain {
            return Err(SignError::ForeignTrustDomain {
                id: identity.to_string(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
            .map_err(|e| SignError::Malformed(e.to_string()))?;
        let (rest, csr) = X509CertificationRequest::from_der(der.as_ref())
            .map_err(|e| SignError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(SignError::Malformed("trailing bytes after the CSR".into()));
        }
        csr.verify_signature()
            .map_err(|_| SignError::BadSignature)?;

        let requested: Vec<String> = csr
            .requested_extensions()
            .into_iter()
            .flatten()
            .filter_map(|ext| match ext {
                ParsedExtension::SubjectAlternativeName(san) => Some(san),
                _ => None,
            })
            .flat_map(|san| san.general_names.iter())
            .filter_map(|name| match name {
                GeneralName::URI(uri) => Some((*uri).to_owned()),
                _ => None,
            })
            .collect();
        let allowed = identity.to_uri();
        if requested != [allowed.as_str()] {
            return Err(SignError::IdentityMismatch { allowed, requested });
        }

        SubjectPublicKeyInfo::from_der(csr.certification_request_info.subject_pki.raw)
            .map_err(|e| SignError::UnsupportedKey(e.to_string()))
    }

    fn issue(
        &self,
        public_key: &SubjectPublicKeyInfo,
        identity: &SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<IssuedCert, SignError> {
        let internal = |e: rcgen::Error| SignError::Internal(e.to_string());
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(
            identity.to_uri().try_into().map_err(internal)?,
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number =
            Some(random_serial().map_err(|e| SignError::Internal(e.to_string()))?);
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        let cert = params
            .signed_by(public_key, &self.issuer)
            .map_err(internal)?;

        let (not_before, not_after) =
            x509::validity(cert.der()).map_err(|e| SignError::Internal(e.to_string()))?;
        let mut cert_chain_pem = Vec::with_capacity(1 + self.chain_pem.len());
        cert_chain_pem.push(x509::cert_to_pem(cert.der()));
        cert_chain_pem.extend(self.chain_pem.iter().cloned());
        tracing::debug!(%identity, ?not_after, "issued workload certificate");
        Ok(IssuedCert {
            cert_chain_pem,
            trust_bundle_pem: self.trust_bundle_pem.clone(),
            not_before,
            not_after,
        })
    }
}

impl std::fmt::Debug for MeshCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshCa")
            .field("trust_domain", &self.trust_domain)
            .field("origin", &self.origin)
            .field("dir", &self.dir)
            .field("signing_not_after", &self.signing_not_after)
            .field("roots", &self.trust_bundle.len())
            .finish_non_exhaustive()
    }
}

/// A random positive 128-bit serial, as Istio's `genSerialNum`. The top byte
/// is kept in 0x40..0x7f so the DER INTEGER is always 16 bytes and positive.
pub(crate) fn random_serial() -> Result<SerialNumber, aws_lc_rs::error::Unspecified> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes)?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

#[cfg(test)]
mod tests {
    use std::fs;

    use x509_parser::extensions::ParsedExtension;

    use super::layout::{CA_CERT_FILE, CA_KEY_FILE, CERT_CHAIN_FILE, ROOT_CERT_FILE};
    use super::*;
    use crate::csr::WorkloadCsr;

    const TD: &str = "cluster.local";

    fn id(sa: &str) -> SpiffeId {
        SpiffeId::new(TD, "default", sa).expect("valid id")
    }

    fn new_ca() -> (tempfile::TempDir, MeshCa) {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = MeshCa::load_or_create(dir.path(), TD).expect("CA");
        (dir, ca)
    }

    fn leaf_der(issued: &IssuedCert) -> CertificateDer<'static> {
        x509::certs_from_pem(issued.leaf_pem())
            .expect("leaf parses")
            .remove(0)
    }

    #[test]
    fn generates_a_root_once_and_reloads_it() {
        let (dir, ca) = new_ca();
        assert_eq!(ca.origin(), CaOrigin::SelfSignedGenerated);
        assert_eq!(ca.trust_bundle().len(), 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(dir.path().join(CA_KEY_FILE))
                .expect("key file")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let root_der = &ca.trust_bundle()[0];
        let root = x509::parse(root_der).expect("root parses");
        assert!(root.is_ca());
        assert_eq!(root.subject().to_string(), "O=cluster.local");
        assert_eq!(
            root.public_key().algorithm.algorithm,
            x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
        );
        let (not_before, not_after) = x509::validity(root_der).expect("validity");
        let ten_years = Duration::from_secs(3650 * 24 * 3600);
        let lifetime = not_after.duration_since(not_before).expect("ordered");
        assert!(lifetime >= ten_years && lifetime <= ten_years + Duration::from_secs(600));

        let reloaded = MeshCa::load_or_create(dir.path(), TD).expect("reload");
        assert_eq!(reloaded.origin(), CaOrigin::SelfSignedLoaded);
        assert_eq!(reloaded.trust_bundle_pem(), ca.trust_bundle_pem());
    }

    #[test]
    fn issued_leaf_looks_like_istios() {
        let (_dir, ca) = new_ca();
        let csr = WorkloadCsr::generate(&id("reviews")).expect("csr");
        let before = SystemTime::now();
        let issued = ca
            .sign_csr(csr.csr_pem(), &id("reviews"), Duration::from_secs(3600))
            .expect("signed");
        assert_eq!(
            issued.cert_chain_pem.len(),
            1,
            "self-signed root: leaf only"
        );
        assert_eq!(issued.trust_bundle_pem, ca.trust_bundle_pem());
        assert_eq!(
            issued.istio_cert_chain().last(),
            Some(&issued.trust_bundle_pem)
        );

        let der = leaf_der(&issued);
        let cert = x509::parse(&der).expect("leaf");
        assert!(cert.subject().as_raw().len() <= 2, "empty subject");
        assert!(!cert.is_ca());
        let mut saw = Vec::new();
        for ext in cert.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::SubjectAlternativeName(san) => {
                    assert!(ext.critical, "SAN is critical when the subject is empty");
                    assert_eq!(san.general_names.len(), 1);
                    saw.push("san");
                }
                ParsedExtension::KeyUsage(ku) => {
                    assert!(ku.digital_signature() && ku.key_encipherment());
                    assert!(!ku.key_cert_sign());
                    saw.push("ku");
                }
                ParsedExtension::ExtendedKeyUsage(eku) => {
                    assert!(eku.server_auth && eku.client_auth);
                    saw.push("eku");
                }
                ParsedExtension::BasicConstraints(bc) => {
                    assert!(!bc.ca);
                    saw.push("bc");
                }
                _ => {}
            }
        }
        saw.sort_unstable();
        assert_eq!(saw, ["bc", "eku", "ku", "san"]);
        assert_eq!(x509::spiffe_id(&der), Some(id("reviews")));

        // Backdated by the clock-skew grace, valid for the requested hour.
        let backdate = before
            .duration_since(issued.not_before)
            .expect("not_before is in the past");
        assert!(backdate >= CLOCK_SKEW_GRACE - Duration::from_secs(1));
        assert!(backdate <= CLOCK_SKEW_GRACE + Duration::from_secs(5));
        let lifetime = issued
            .not_after
            .duration_since(issued.not_before)
            .expect("ordered");
        assert!(
            lifetime.abs_diff(Duration::from_secs(3600) + CLOCK_SKEW_GRACE)
                <= Duration::from_secs(2),
            "{lifetime:?}"
        );
        assert_eq!(
            x509::validity(&der).expect("validity"),
            (issued.not_before, issued.not_after)
        );
    }

    #[test]
    fn ttl_defaults_to_a_day_and_is_capped_at_ninety_days() {
        let (_dir, ca) = new_ca();
        let csr = WorkloadCsr::generate(&id("a")).expect("csr");
        let lifetime = |ttl| {
            let issued = ca.sign_csr(csr.csr_pem(), &id("a"), ttl).expect("signed");
            issued
                .not_after
                .duration_since(issued.not_before)
                .expect("ordered")
                - CLOCK_SKEW_GRACE
        };
        let close = |a: Duration, b: Duration| a.abs_diff(b) <= Duration::from_secs(2);
        assert!(close(lifetime(Duration::ZERO), DEFAULT_WORKLOAD_CERT_TTL));
        assert!(close(
            lifetime(Duration::from_secs(365 * 24 * 3600)),
            MAX_WORKLOAD_CERT_TTL
        ));
        let short = ca.with_max_ttl(Duration::from_secs(600));
        let issued = short
            .sign_csr(csr.csr_pem(), &id("a"), Duration::from_secs(3600))
            .expect("signed");
        let lifetime = issued
            .not_after
            .duration_since(issued.not_before)
            .expect("ordered");
        assert!(close(lifetime, Duration::from_secs(600) + CLOCK_SKEW_GRACE));
    }

    #[test]
    fn refuses_csrs_for_other_identities() {
        let (_dir, ca) = new_ca();
        let csr = WorkloadCsr::generate(&id("ratings")).expect("csr");
        let err = ca
            .sign_csr(csr.csr_pem(), &id("reviews"), Duration::ZERO)
            .expect_err("must not sign ratings for reviews");
        assert!(err.is_permission_denied());
        let message = err.to_string();
        assert!(
            message.contains("spiffe://cluster.local/ns/default/sa/reviews")
                && message.contains("spiffe://cluster.local/ns/default/sa/ratings"),
            "{message}"
        );

        let foreign = SpiffeId::new("other.domain", "default", "reviews").expect("id");
        let csr = WorkloadCsr::generate(&foreign).expect("csr");
        let err = ca
            .sign_csr(csr.csr_pem(), &foreign, Duration::ZERO)
            .expect_err("foreign trust domain");
        assert!(matches!(err, SignError::ForeignTrustDomain { .. }), "{err}");

        // A CSR that asks for its own identity plus another one.
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![
            SanType::URI(id("reviews").to_uri().try_into().expect("ia5")),
            SanType::URI(id("admin").to_uri().try_into().expect("ia5")),
        ];
        let pem = params
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem");
        let err = ca
            .sign_csr(&pem, &id("reviews"), Duration::ZERO)
            .expect_err("extra identity");
        assert!(matches!(err, SignError::IdentityMismatch { .. }), "{err}");

        // No SAN at all.
        let pem = CertificateParams::default()
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem");
        let err = ca
            .sign_csr(&pem, &id("reviews"), Duration::ZERO)
            .expect_err("no identity");
        assert!(matches!(err, SignError::IdentityMismatch { .. }), "{err}");
    }

    #[test]
    fn refuses_broken_csrs() {
        let (_dir, ca) = new_ca();
        let err = ca
            .sign_csr("not a csr", &id("a"), Duration::ZERO)
            .expect_err("garbage");
        assert!(err.is_invalid_request(), "{err}");

        // Flip a byte inside the signature (the last bytes of the DER).
        let csr = WorkloadCsr::generate(&id("a")).expect("csr");
        let mut der = CertificateSigningRequestDer::from_pem_slice(csr.csr_pem().as_bytes())
            .expect("pem")
            .as_ref()
            .to_vec();
        let last = der.len() - 3;
        der[last] ^= 0x01;
        let tampered = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &der)
        );
        assert_eq!(
            ca.sign_csr(&tampered, &id("a"), Duration::ZERO),
            Err(SignError::BadSignature)
        );
    }

    #[test]
    fn incomplete_or_inconsistent_directories_are_refused_with_the_file_named() {
        let (dir, ca) = new_ca();
        let path = dir.path();
        let cert = fs::read_to_string(path.join(CA_CERT_FILE)).expect("cert");
        let key = fs::read_to_string(path.join(CA_KEY_FILE)).expect("key");
        drop(ca);

        // cert-chain.pem without the rest of the cacerts layout.
        let only_chain = tempfile::tempdir().expect("tempdir");
        fs::write(only_chain.path().join(CERT_CHAIN_FILE), &cert).expect("write");
        let err = MeshCa::load_or_create(only_chain.path(), TD).expect_err("incomplete");
        let message = err.to_string();
        assert!(
            message.contains(CA_CERT_FILE) && message.contains(CA_KEY_FILE),
            "{message}"
        );
        assert!(
            !only_chain.path().join(CA_KEY_FILE).exists(),
            "nothing generated over it"
        );

        // A certificate without its key.
        let no_key = tempfile::tempdir().expect("tempdir");
        fs::write(no_key.path().join(CA_CERT_FILE), &cert).expect("write");
        let message = MeshCa::load_or_create(no_key.path(), TD)
            .expect_err("no key")
            .to_string();
        assert!(message.contains("ca-key.pem missing"), "{message}");

        // Only a trust bundle.
        let only_root = tempfile::tempdir().expect("tempdir");
        fs::write(only_root.path().join(ROOT_CERT_FILE), &cert).expect("write");
        assert!(matches!(
            MeshCa::load_or_create(only_root.path(), TD),
            Err(CaError::IncompleteLayout { .. })
        ));

        // A corrupt certificate.
        let corrupt = tempfile::tempdir().expect("tempdir");
        fs::write(corrupt.path().join(CA_CERT_FILE), "garbage").expect("write");
        fs::write(corrupt.path().join(CA_KEY_FILE), &key).expect("write");
        let err = MeshCa::load_or_create(corrupt.path(), TD).expect_err("corrupt");
        assert!(
            matches!(&err, CaError::File { path, .. } if path.ends_with(CA_CERT_FILE)),
            "{err}"
        );

        // A key that belongs to another certificate.
        let (_other_dir, other) = new_ca();
        let mismatched = tempfile::tempdir().expect("tempdir");
        fs::write(
            mismatched.path().join(CA_CERT_FILE),
            other.trust_bundle_pem(),
        )
        .expect("write");
        fs::write(mismatched.path().join(CA_KEY_FILE), &key).expect("write");
        let err = MeshCa::load_or_create(mismatched.path(), TD).expect_err("mismatch");
        assert!(
            matches!(&err, CaError::File { path, problem } if path.ends_with(CA_KEY_FILE) && problem.contains("does not match")),
            "{err}"
        );

        // A trust bundle that leaves out the signing root.
        let stale_bundle = tempfile::tempdir().expect("tempdir");
        fs::write(stale_bundle.path().join(CA_CERT_FILE), &cert).expect("write");
        fs::write(stale_bundle.path().join(CA_KEY_FILE), &key).expect("write");
        fs::write(
            stale_bundle.path().join(ROOT_CERT_FILE),
            other.trust_bundle_pem(),
        )
        .expect("write");
        let err = MeshCa::load_or_create(stale_bundle.path(), TD).expect_err("stale bundle");
        assert!(
            matches!(&err, CaError::File { path, .. } if path.ends_with(ROOT_CERT_FILE)),
            "{err}"
        );

        assert!(matches!(
            MeshCa::load_or_create(dir.path(), "Not A Domain"),
            Err(CaError::InvalidTrustDomain(_))
        ));
    }

    #[test]
    fn a_trust_bundle_may_hold_several_roots() {
        let (dir, ca) = new_ca();
        let (_new_dir, new_root) = new_ca();
        let bundle = format!("{}{}", ca.trust_bundle_pem(), new_root.trust_bundle_pem());
        fs::write(dir.path().join(ROOT_CERT_FILE), &bundle).expect("write");
        let rotating = MeshCa::load_or_create(dir.path(), TD).expect("reload");
        assert_eq!(rotating.trust_bundle().len(), 2);
        assert_eq!(rotating.trust_bundle_pem(), bundle);
        let csr = WorkloadCsr::generate(&id("a")).expect("csr");
        let issued = rotating
            .sign_csr(csr.csr_pem(), &id("a"), Duration::ZERO)
            .expect("signed");
        assert_eq!(issued.trust_bundle_pem, bundle);
        assert_eq!(issued.istio_cert_chain().len(), 2);
    }
}
