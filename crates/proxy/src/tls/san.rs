//! Subject-alternative-name checks of a peer certificate, as Envoy's
//! `match_typed_subject_alt_names` (and the older `match_subject_alt_names`)
//! define them: the certificate passes when any of its SANs satisfies any
//! matcher of the same type.

use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, subject_alt_name_matcher::SanType,
};
use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

use crate::matcher::StringMatch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dns,
    Uri,
    Email,
    Ip,
    /// The deprecated untyped matchers apply to every kind.
    Any,
}

#[derive(Debug, Clone)]
pub(crate) struct SanMatcher {
    kind: Kind,
    matcher: StringMatch,
}

/// Compiles the SAN matchers of a validation context.
pub(crate) fn compile(
    vc: &CertificateValidationContext,
) -> Result<Vec<SanMatcher>, (String, String)> {
    let mut out = Vec::new();
    for (i, m) in vc.match_typed_subject_alt_names.iter().enumerate() {
        let field = format!("match_typed_subject_alt_names[{i}]");
        let kind = match SanType::try_from(m.san_type) {
            Ok(SanType::Dns) => Kind::Dns,
            Ok(SanType::Uri) => Kind::Uri,
            Ok(SanType::Email) => Kind::Email,
            Ok(SanType::IpAddress) => Kind::Ip,
            Ok(SanType::OtherName) => {
                return Err((
                    format!("{field}.san_type"),
                    "OTHER_NAME is not supported".into(),
                ));
            }
            _ => return Err((format!("{field}.san_type"), "a SAN type is required".into())),
        };
        let matcher = m
            .matcher
            .as_ref()
            .ok_or_else(|| (format!("{field}.matcher"), "is required".to_string()))
            .and_then(|sm| StringMatch::compile(sm).map_err(|e| (format!("{field}.matcher"), e)))?;
        out.push(SanMatcher { kind, matcher });
    }
    #[allow(deprecated)]
    for (i, sm) in vc.match_subject_alt_names.iter().enumerate() {
        let matcher =
            StringMatch::compile(sm).map_err(|e| (format!("match_subject_alt_names[{i}]"), e))?;
        out.push(SanMatcher {
            kind: Kind::Any,
            matcher,
        });
    }
    Ok(out)
}

/// Whether the end-entity certificate has a SAN some matcher accepts.
pub(crate) fn matches(cert: &CertificateDer<'_>, matchers: &[SanMatcher]) -> bool {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return false;
    };
    let Ok(Some(san)) = parsed.subject_alternative_name() else {
        return false;
    };
    san.value.general_names.iter().any(|name| {
        let (kind, value) = match name {
            GeneralName::DNSName(v) => (Kind::Dns, (*v).to_string()),
            GeneralName::URI(v) => (Kind::Uri, (*v).to_string()),
            GeneralName::RFC822Name(v) => (Kind::Email, (*v).to_string()),
            GeneralName::IPAddress(bytes) => match ip_string(bytes) {
                Some(ip) => (Kind::Ip, ip),
                None => return false,
            },
            _ => return false,
        };
        matchers.iter().any(|m| {
            (m.kind == kind || m.kind == Kind::Any) && {
                if kind == Kind::Dns {
                    dns_matches(&m.matcher, &value)
                } else {
                    m.matcher.matches(&value)
                }
            }
        })
    })
}

/// An exact matcher accepts a wildcard DNS SAN covering its name, as
/// Envoy's `dnsNameMatch` does (`*.example.com` covers `a.example.com`).
fn dns_matches(m: &StringMatch, san: &str) -> bool {
    if m.matches(san) {
        return true;
    }
    if let (StringMatch::Exact(want, _), Some(suffix)) = (m, san.strip_prefix('*')) {
        return suffix.starts_with('.')
            && want.len() > suffix.len()
            && want.ends_with(suffix)
            && !want[..want.len() - suffix.len()].contains('.');
    }
    false
}

fn ip_string(bytes: &[u8]) -> Option<String> {
    match bytes.len() {
        4 => {
            let b: [u8; 4] = bytes.try_into().ok()?;
            Some(std::net::Ipv4Addr::from(b).to_string())
        }
        16 => {
            let b: [u8; 16] = bytes.try_into().ok()?;
            Some(std::net::Ipv6Addr::from(b).to_string())
        }
        _ => None,
    }
}

/// A client-certificate verifier that, after the chain checks, requires a
/// SAN some matcher accepts (Istio's trust-domain check on inbound mTLS).
#[derive(Debug)]
pub(crate) struct ClientSanVerifier {
    inner: std::sync::Arc<dyn rustls::server::danger::ClientCertVerifier>,
    sans: Vec<SanMatcher>,
}

impl ClientSanVerifier {
    pub(crate) fn new(
        inner: std::sync::Arc<dyn rustls::server::danger::ClientCertVerifier>,
        sans: Vec<SanMatcher>,
    ) -> Self {
        Self { inner, sans }
    }
}

impl rustls::server::danger::ClientCertVerifier for ClientSanVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if !matches(end_entity, &self.sans) {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::r#type::matcher::v3::{
        StringMatcher, string_matcher::MatchPattern,
    };

    fn exact(s: &str) -> StringMatch {
        StringMatch::compile(&StringMatcher {
            match_pattern: Some(MatchPattern::Exact(s.into())),
            ..Default::default()
        })
        .expect("matcher")
    }

    #[test]
    fn wildcard_dns_sans_cover_one_label() {
        assert!(dns_matches(&exact("a.example.com"), "*.example.com"));
        assert!(!dns_matches(&exact("a.b.example.com"), "*.example.com"));
        assert!(!dns_matches(&exact("example.com"), "*.example.com"));
        assert!(dns_matches(&exact("example.com"), "example.com"));
    }
}
