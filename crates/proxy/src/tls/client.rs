//! Upstream TLS: an `UpstreamTlsContext` turned into a rustls client
//! configuration, with Envoy's verification rules.
//!
//! Envoy does not check the server's name against SNI; it verifies the
//! chain against `trusted_ca` (when set) and then the SAN matchers. Without a
//! validation context the server's certificate is not verified at all, as in
//! Envoy; SAN matchers without `trusted_ca` are refused (Envoy calls that
//! insecure and rejects the cluster).

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{TransportSocket, transport_socket::ConfigType};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, TlsCertificate, UpstreamTlsContext, secret,
};
use prost::Message;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

use super::san::{self, SanMatcher};
use super::{
    RAW_BUFFER, Secrets, TlsError, certs_and_key, invalid, provider, trusted_roots,
    validation_context, validation_secret_name, versions,
};

pub const UPSTREAM_TLS_CONTEXT: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";

/// What a TLS connection to an upstream needs.
#[derive(Debug)]
pub struct UpstreamTls {
    pub config: Arc<rustls::ClientConfig>,
    /// The name sent as SNI (and given to rustls); a placeholder with SNI
    /// disabled when the context sets none.
    pub server_name: ServerName<'static>,
}

/// What a transport socket asks for upstream.
#[derive(Debug, Clone, PartialEq)]
pub enum Transport {
    Plaintext,
    Tls(Box<UpstreamTlsContext>),
}

impl Transport {
    /// Checks a transport socket's type; the TLS material is checked when
    /// its secrets are known ([`Transport::build`]).
    pub fn from_proto(ts: Option<&TransportSocket>) -> Result<Self, TlsError> {
        let Some(ts) = ts else {
            return Ok(Self::Plaintext);
        };
        let any = match &ts.config_type {
            Some(ConfigType::TypedConfig(any)) => any,
            None => return Ok(Self::Plaintext),
        };
        match any.type_url.as_str() {
            RAW_BUFFER => Ok(Self::Plaintext),
            UPSTREAM_TLS_CONTEXT => UpstreamTlsContext::decode(any.value.as_slice())
                .map(|c| Self::Tls(Box::new(c)))
                .map_err(|e| invalid("typed_config", format!("invalid UpstreamTlsContext: {e}"))),
            other => Err(invalid(
                "typed_config",
                format!("upstream transport socket '{other}' is not supported"),
            )),
        }
    }

    /// SDS secrets this transport needs before it can be built.
    pub fn secret_names(&self) -> Vec<String> {
        let Self::Tls(ctx) = self else {
            return Vec::new();
        };
        let Some(common) = &ctx.common_tls_context else {
            return Vec::new();
        };
        let mut names: Vec<String> = common
            .tls_certificate_sds_secret_configs
            .iter()
            .map(|s| s.name.clone())
            .collect();
        names.extend(validation_secret_name(common));
        names
    }

    pub fn build(&self, secrets: &Secrets) -> Result<Option<Arc<UpstreamTls>>, TlsError> {
        match self {
            Self::Plaintext => Ok(None),
            Self::Tls(ctx) => client_config(ctx, secrets).map(|t| Some(Arc::new(t))),
        }
    }
}

fn client_certificate(
    common: &CommonTlsContext,
    secrets: &Secrets,
) -> Result<Option<TlsCertificate>, TlsError> {
    if let Some(tc) = common.tls_certificates.first() {
        return Ok(Some(tc.clone()));
    }
    let Some(sds) = common.tls_certificate_sds_secret_configs.first() else {
        return Ok(None);
    };
    match secrets.get(&sds.name).and_then(|s| s.r#type.as_ref()) {
        Some(secret::Type::TlsCertificate(tc)) => Ok(Some(tc.clone())),
        Some(_) => Err(invalid(
            "common_tls_context.tls_certificate_sds_secret_configs[0]",
            format!("secret '{}' is not a TLS certificate", sds.name),
        )),
        None => Err(TlsError::MissingSecret(sds.name.clone())),
    }
}

fn client_config(ctx: &UpstreamTlsContext, secrets: &Secrets) -> Result<UpstreamTls, TlsError> {
    let common = ctx.common_tls_context.clone().unwrap_or_default();
    let provider = provider();
    let (roots, sans) = match validation_context(&common, secrets)? {
        Some(vc) => {
            let sans = san::compile(&vc).map_err(|(f, m)| {
                invalid(format!("common_tls_context.validation_context.{f}"), m)
            })?;
            (trusted_roots(&vc)?, sans)
        }
        None => (None, Vec::new()),
    };
    if roots.is_none() && !sans.is_empty() {
        return Err(invalid(
            "common_tls_context.validation_context",
            "SAN-based verification of peer certificates without trusted CA is insecure and not allowed",
        ));
    }
    let chain = match roots {
        Some(roots) => Some(
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                .build()
                .map_err(|e| invalid("common_tls_context.validation_context", e.to_string()))?,
        ),
        None => None,
    };
    let verifier = Arc::new(PeerVerifier {
        chain,
        sans,
        provider: Arc::clone(&provider),
    });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions(&common, 12)?)
        .map_err(|e| invalid("common_tls_context.tls_params", e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match client_certificate(&common, secrets)? {
        Some(tc) => {
            let (certs, key) = certs_and_key(&tc, "common_tls_context.tls_certificates[0]")?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| invalid("common_tls_context.tls_certificates[0]", e.to_string()))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = common
        .alpn_protocols
        .iter()
        .map(|p| p.as_bytes().to_vec())
        .collect();
    let server_name = if ctx.sni.is_empty() {
        config.enable_sni = false;
        ServerName::try_from("upstream.invalid").map_err(|e| invalid("sni", e.to_string()))?
    } else {
        ServerName::try_from(ctx.sni.clone())
            .map_err(|e| invalid("sni", format!("'{}': {e}", ctx.sni)))?
    };
    Ok(UpstreamTls {
        config: Arc::new(config),
        server_name,
    })
}

/// Envoy's upstream certificate checks: the chain (when trust anchors are
/// configured), not the name, then the SAN matchers.
#[derive(Debug)]
struct PeerVerifier {
    chain: Option<Arc<WebPkiServerVerifier>>,
    sans: Vec<SanMatcher>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(chain) = &self.chain {
            match chain.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ) {
                // The name check comes after the chain check in webpki, so
                // this error means the chain itself is good.
                Ok(_)
                | Err(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                )) => {}
                Err(e) => return Err(e),
            }
        }
        if !self.sans.is_empty() && !san::matches(end_entity, &self.sans) {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
