//! rustls configurations for mesh mTLS between workloads.
//!
//! All cryptography uses aws-lc-rs, passed explicitly rather than relying on a
//! process-wide default provider, so that no other crate in the binary can
//! change what the mesh negotiates. TLS 1.3 is preferred and 1.2 is the
//! minimum (Envoy peers may still be configured for 1.2).
//!
//! SPIFFE certificates carry no DNS name: a workload is its URI SAN. So the
//! server side requires a client certificate chaining to the trust bundle and
//! leaves authorization to the caller via [`peer_spiffe_id`], and the client
//! side validates the chain with webpki but checks the URI SAN against the
//! identities expected for the destination instead of the hostname.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, OtherError, RootCertStore, ServerConfig,
    SignatureScheme, SupportedProtocolVersion,
};

use crate::spiffe::SpiffeId;
use crate::x509;

/// Preference order: TLS 1.3, then 1.2.
static PROTOCOL_VERSIONS: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// A workload's certificate chain and key, and the roots it trusts.
#[derive(Debug)]
pub struct MeshCredentials {
    /// Leaf first.
    pub cert_chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub trust_bundle: Vec<CertificateDer<'static>>,
}

impl Clone for MeshCredentials {
    fn clone(&self) -> Self {
        Self {
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
            trust_bundle: self.trust_bundle.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate chain: {0}")]
    CertChain(x509::X509Error),
    #[error("trust bundle: {0}")]
    TrustBundle(x509::X509Error),
    #[error("private key: {0}")]
    Key(String),
    #[error("trust bundle: no usable root certificate ({0})")]
    NoRoots(String),
    #[error("a client config needs at least one expected server identity")]
    NoExpectedIdentity,
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

impl MeshCredentials {
    /// From the PEM a proxy gets from the CA (chain, trust bundle) and its
    /// own key.
    pub fn from_pem(
        cert_chain_pem: &str,
        key_pem: &str,
        trust_bundle_pem: &str,
    ) -> Result<Self, TlsError> {
        Ok(Self {
            cert_chain: x509::certs_from_pem(cert_chain_pem).map_err(TlsError::CertChain)?,
            key: PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
                .map_err(|e| TlsError::Key(e.to_string()))?,
            trust_bundle: x509::certs_from_pem(trust_bundle_pem).map_err(TlsError::TrustBundle)?,
        })
    }
}

/// The aws-lc-rs provider every mesh config uses.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Server side of mesh mTLS: presents `creds`' chain and requires a client
/// certificate that chains to the trust bundle. Read the caller's identity
/// with [`peer_spiffe_id`] on the connection's peer certificates.
pub fn server_config(creds: &MeshCredentials) -> Result<ServerConfig, TlsError> {
    let provider = crypto_provider();
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(root_store(creds)?), provider.clone())
            .build()?;
    Ok(ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(creds.cert_chain.clone(), creds.key.clone_key())?)
}

/// Client side of mesh mTLS: presents `creds`' chain, and accepts a server
/// whose chain leads to the trust bundle and whose SPIFFE id is one of
/// `expected_server_ids` (the service accounts behind the destination). The
/// `ServerName` passed to the connector only fills SNI; it is not checked.
pub fn client_config(
    creds: &MeshCredentials,
    expected_server_ids: &[SpiffeId],
) -> Result<ClientConfig, TlsError> {
    let provider = crypto_provider();
    let verifier = SpiffeServerVerifier::new(
        Arc::new(root_store(creds)?),
        provider.clone(),
        expected_server_ids.to_vec(),
    )?;
    Ok(ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(creds.cert_chain.clone(), creds.key.clone_key())?)
}

/// The SPIFFE id of a TLS peer: the only URI SAN of its leaf certificate
/// (the first of `certs`, as rustls' `peer_certificates()` returns them).
pub fn peer_spiffe_id(certs: &[CertificateDer<'_>]) -> Option<SpiffeId> {
    x509::spiffe_id(certs.first()?)
}

fn root_store(creds: &MeshCredentials) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(creds.trust_bundle.iter().cloned());
    if added == 0 {
        return Err(TlsError::NoRoots(format!(
            "{ignored} certificates could not be used as trust anchors"
        )));
    }
    Ok(roots)
}

/// Validates the server's chain with webpki, then its URI SAN against the
/// expected SPIFFE ids in place of the DNS name check.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    expected: Vec<SpiffeId>,
}

impl SpiffeServerVerifier {
    pub fn new(
        roots: Arc<RootCertStore>,
        provider: Arc<CryptoProvider>,
        expected: Vec<SpiffeId>,
    ) -> Result<Self, TlsError> {
        if expected.is_empty() {
            return Err(TlsError::NoExpectedIdentity);
        }
        let inner = WebPkiServerVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(TlsError::Verifier)?;
        Ok(Self { inner, expected })
    }
}

#[derive(thiserror::Error)]
enum IdentityMismatch {
    #[error("server certificate has no single SPIFFE URI SAN")]
    NoSpiffeId,
    #[error("server identity {actual} is not one of the expected [{expected}]")]
    Unexpected { actual: SpiffeId, expected: String },
}

/// rustls renders `CertificateError::Other` with `Debug`; make that the
/// readable message so handshake errors in logs name both identities.
impl std::fmt::Debug for IdentityMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(_) => {}
            // webpki checks the name only after the chain (signatures,
            // validity, EKU, revocation) has verified, so a name mismatch
            // means everything else passed. SPIFFE certificates have no DNS
            // SAN; the URI SAN is checked below instead.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => {}
            Err(e) => return Err(e),
        }
        let mismatch = |e: IdentityMismatch| {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
        };
        let actual =
            x509::spiffe_id(end_entity).ok_or_else(|| mismatch(IdentityMismatch::NoSpiffeId))?;
        if !self.expected.contains(&actual) {
            let expected = self
                .expected
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            return Err(mismatch(IdentityMismatch::Unexpected { actual, expected }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
