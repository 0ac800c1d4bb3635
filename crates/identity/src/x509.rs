//! The few X.509 and PEM operations the rest of the crate shares: splitting
//! PEM bundles, re-encoding DER as PEM, and reading the URI SANs and validity
//! window of a certificate.
//!
//! Kept in one place so that the CA, the TLS verifiers and the proxy's
//! rotation logic read certificates the same way.

use std::time::SystemTime;

use base64::Engine as _;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer as _;

use crate::spiffe::SpiffeId;

/// Why a PEM bundle or certificate could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum X509Error {
    #[error("invalid PEM: {0}")]
    Pem(String),
    #[error("no CERTIFICATE block in PEM")]
    NoCertificate,
    #[error("invalid X.509 certificate: {0}")]
    Certificate(String),
}

/// Every `CERTIFICATE` block of a PEM bundle, in order. Other block kinds
/// (keys, comments) are skipped; an empty result is an error because every
/// caller needs at least one certificate.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, X509Error> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| X509Error::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(X509Error::NoCertificate);
    }
    for cert in &certs {
        parse(cert)?;
    }
    Ok(certs)
}

/// DER certificate to a PEM block ending in a newline, 64 columns as
/// OpenSSL and Go write it.
pub fn cert_to_pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 60);
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// The URI SANs of a certificate, in order.
pub fn uri_sans(cert_der: &[u8]) -> Result<Vec<String>, X509Error> {
    let cert = parse(cert_der)?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| X509Error::Certificate(format!("subjectAltName: {e}")))?;
    Ok(san
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some((*uri).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

/// The SPIFFE id of a workload certificate: its only URI SAN, if that parses.
/// A certificate with several URI SANs names no single workload, so it gets
/// `None` rather than whichever came first.
pub fn spiffe_id(cert_der: &[u8]) -> Option<SpiffeId> {
    let uris = uri_sans(cert_der).ok()?;
    match uris.as_slice() {
        [uri] => uri.parse().ok(),
        _ => None,
    }
}

/// `(not_before, not_after)` of a certificate.
pub fn validity(cert_der: &[u8]) -> Result<(SystemTime, SystemTime), X509Error> {
    let cert = parse(cert_der)?;
    let validity = cert.validity();
    Ok((
        validity.not_before.to_datetime().into(),
        validity.not_after.to_datetime().into(),
    ))
}

pub(crate) fn parse(der: &[u8]) -> Result<X509Certificate<'_>, X509Error> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| X509Error::Certificate(e.to_string()))?;
    if !rest.is_empty() {
        return Err(X509Error::Certificate(format!(
            "{} trailing bytes after the certificate",
            rest.len()
        )));
    }
    Ok(cert)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_pem_without_certificates() {
        assert_eq!(certs_from_pem(""), Err(X509Error::NoCertificate));
        assert!(matches!(
            certs_from_pem("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
            Err(X509Error::Certificate(_))
        ));
    }

    #[test]
    fn pem_round_trip() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::URI(
            "spiffe://td/ns/a/sa/b".try_into().expect("ia5"),
        )];
        let cert = params.self_signed(&key).expect("cert");
        let pem = cert_to_pem(cert.der());
        let certs = certs_from_pem(&pem).expect("parse");
        assert_eq!(certs, vec![cert.der().clone()]);
        assert_eq!(
            spiffe_id(&certs[0]).map(|id| id.to_string()).as_deref(),
            Some("spiffe://td/ns/a/sa/b")
        );
    }
}
