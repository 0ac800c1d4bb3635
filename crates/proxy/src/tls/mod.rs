//! TLS contexts (with certificates inline, from files, or from SDS secrets)
//! turned into rustls configurations: downstream here, upstream in
//! [`client`]. All TLS goes through rustls with the aws-lc-rs provider.

pub mod client;
mod san;

use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source::Specifier};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, Secret, TlsCertificate,
    common_tls_context::ValidationContextType, secret, tls_parameters::TlsProtocol,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub const DOWNSTREAM_TLS_CONTEXT: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
pub const RAW_BUFFER: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer";

pub type Secrets = HashMap<String, Secret>;

/// Why a TLS context cannot be built. `MissingSecret` means "not yet": the
/// listener warms until SDS delivers it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("waiting for SDS secret '{0}'")]
    MissingSecret(String),
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> TlsError {
    TlsError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn read_source(ds: Option<&DataSource>, field: &str) -> Result<Vec<u8>, TlsError> {
    match ds.and_then(|d| d.specifier.as_ref()) {
        Some(Specifier::Filename(f)) => {
            std::fs::read(f).map_err(|e| invalid(field, format!("cannot read '{f}': {e}")))
        }
        Some(Specifier::InlineBytes(b)) => Ok(b.clone()),
        Some(Specifier::InlineString(s)) => Ok(s.as_bytes().to_vec()),
        Some(Specifier::EnvironmentVariable(v)) => std::env::var(v)
            .map(String::into_bytes)
            .map_err(|_| invalid(field, format!("environment variable '{v}' is not set"))),
        None => Err(invalid(field, "a data source is required")),
    }
}

fn certs_and_key(
    tc: &TlsCertificate,
    field: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let chain = read_source(
        tc.certificate_chain.as_ref(),
        &format!("{field}.certificate_chain"),
    )?;
    let key = read_source(tc.private_key.as_ref(), &format!("{field}.private_key"))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut chain.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| {
            invalid(
                format!("{field}.certificate_chain"),
                format!("invalid PEM: {e}"),
            )
        })?;
    if certs.is_empty() {
        return Err(invalid(
            format!("{field}.certificate_chain"),
            "no certificate found",
        ));
    }
    let key = rustls_pemfile::private_key(&mut key.as_slice())
        .map_err(|e| invalid(format!("{field}.private_key"), format!("invalid PEM: {e}")))?
        .ok_or_else(|| invalid(format!("{field}.private_key"), "no private key found"))?;
    Ok((certs, key))
}

fn tls_certificate(
    common: &CommonTlsContext,
    secrets: &Secrets,
) -> Result<TlsCertificate, TlsError> {
    if let Some(tc) = common.tls_certificates.first() {
        return Ok(tc.clone());
    }
    if let Some(sds) = common.tls_certificate_sds_secret_configs.first() {
        return match secrets.get(&sds.name).and_then(|s| s.r#type.as_ref()) {
            Some(secret::Type::TlsCertificate(tc)) => Ok(tc.clone()),
            Some(_) => Err(invalid(
                "common_tls_context.tls_certificate_sds_secret_configs[0]",
                format!("secret '{}' is not a TLS certificate", sds.name),
            )),
            None => Err(TlsError::MissingSecret(sds.name.clone())),
        };
    }
    Err(invalid(
        "common_tls_context.tls_certificates",
        "a certificate is required",
    ))
}

fn validation_context(
    common: &CommonTlsContext,
    secrets: &Secrets,
) -> Result<Option<CertificateValidationContext>, TlsError> {
    match &common.validation_context_type {
        None => Ok(None),
        Some(ValidationContextType::ValidationContext(v)) => Ok(Some(v.clone())),
        Some(ValidationContextType::ValidationContextSdsSecretConfig(sds)) => {
            match secrets.get(&sds.name).and_then(|s| s.r#type.as_ref()) {
                Some(secret::Type::ValidationContext(v)) => Ok(Some(v.clone())),
                Some(_) => Err(invalid(
                    "common_tls_context.validation_context_sds_secret_config",
                    format!("secret '{}' is not a validation context", sds.name),
                )),
                None => Err(TlsError::MissingSecret(sds.name.clone())),
            }
        }
        Some(ValidationContextType::CombinedValidationContext(c)) => {
            let field = "common_tls_context.combined_validation_context";
            let sds = c
                .validation_context_sds_secret_config
                .as_ref()
                .ok_or_else(|| {
                    invalid(
                        format!("{field}.validation_context_sds_secret_config"),
                        "is required",
                    )
                })?;
            let dynamic = match secrets.get(&sds.name).and_then(|s| s.r#type.as_ref()) {
                Some(secret::Type::ValidationContext(v)) => v,
                Some(_) => {
                    return Err(invalid(
                        format!("{field}.validation_context_sds_secret_config"),
                        format!("secret '{}' is not a validation context", sds.name),
                    ));
                }
                None => return Err(TlsError::MissingSecret(sds.name.clone())),
            };
            // Envoy merges the SDS context over the default one.
            let mut merged = c.default_validation_context.clone().unwrap_or_default();
            if dynamic.trusted_ca.is_some() {
                merged.trusted_ca.clone_from(&dynamic.trusted_ca);
            }
            merged
                .match_typed_subject_alt_names
                .extend(dynamic.match_typed_subject_alt_names.iter().cloned());
            #[allow(deprecated)]
            merged
                .match_subject_alt_names
                .extend(dynamic.match_subject_alt_names.iter().cloned());
            Ok(Some(merged))
        }
        Some(_) => Err(invalid(
            "common_tls_context.validation_context_certificate_provider",
            "certificate providers are not supported",
        )),
    }
}

/// The trust anchors of a validation context, or `None` without `trusted_ca`.
fn trusted_roots(
    vc: &CertificateValidationContext,
) -> Result<Option<rustls::RootCertStore>, TlsError> {
    const FIELD: &str = "common_tls_context.validation_context.trusted_ca";
    if vc.trusted_ca.is_none() {
        return Ok(None);
    }
    let ca = read_source(vc.trusted_ca.as_ref(), FIELD)?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca.as_slice()) {
        let cert = cert.map_err(|e| invalid(FIELD, format!("invalid PEM: {e}")))?;
        roots.add(cert).map_err(|e| invalid(FIELD, e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(invalid(FIELD, "no certificate found"));
    }
    Ok(Some(roots))
}

/// Which TLS versions a context allows. Envoy's defaults: TLS 1.2 minimum;
/// TLS 1.3 maximum for servers, TLS 1.2 for clients.
fn versions(
    common: &CommonTlsContext,
    default_max: u8,
) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, TlsError> {
    let params = common.tls_params.clone().unwrap_or_default();
    let min = match TlsProtocol::try_from(params.tls_minimum_protocol_version) {
        Ok(TlsProtocol::TlsAuto | TlsProtocol::TlSv12) | Err(_) => 12,
        Ok(TlsProtocol::TlSv13) => 13,
        Ok(_) => {
            return Err(invalid(
                "common_tls_context.tls_params.tls_minimum_protocol_version",
                "TLS below 1.2 is not supported",
            ));
        }
    };
    let max = match TlsProtocol::try_from(params.tls_maximum_protocol_version) {
        Ok(TlsProtocol::TlSv12) => 12,
        Ok(TlsProtocol::TlSv13) => 13,
        Ok(TlsProtocol::TlsAuto) | Err(_) => default_max,
        Ok(_) => {
            return Err(invalid(
                "common_tls_context.tls_params.tls_maximum_protocol_version",
                "TLS below 1.2 is not supported",
            ));
        }
    };
    if max < min {
        return Err(invalid(
            "common_tls_context.tls_params",
            "the maximum protocol version is below the minimum",
        ));
    }
    let mut v = Vec::new();
    if min <= 12 && max >= 12 {
        v.push(&rustls::version::TLS12);
    }
    if max >= 13 {
        v.push(&rustls::version::TLS13);
    }
    Ok(v)
}

/// Builds the server configuration for a filter chain's transport socket.
pub fn server_config(any: &Any, secrets: &Secrets) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let ctx = DownstreamTlsContext::decode(any.value.as_slice())
        .map_err(|e| invalid("", format!("invalid DownstreamTlsContext: {e}")))?;
    let common = ctx.common_tls_context.clone().unwrap_or_default();
    let tc = tls_certificate(&common, secrets)?;
    let (certs, key) = certs_and_key(&tc, "common_tls_context.tls_certificates[0]")?;
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&versions(&common, 13)?)
        .map_err(|e| invalid("common_tls_context.tls_params", e.to_string()))?;
    let require_client = ctx
        .require_client_certificate
        .map(|b| b.value)
        .unwrap_or(false);
    let (roots, sans) = match validation_context(&common, secrets)? {
        Some(vc) => {
            let sans = san::compile(&vc).map_err(|(f, m)| {
                invalid(format!("common_tls_context.validation_context.{f}"), m)
            })?;
            (trusted_roots(&vc)?, sans)
        }
        None => (None, Vec::new()),
    };
    let builder = match roots {
        Some(roots) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                Arc::clone(&provider),
            );
            let verifier = if require_client {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier
                .build()
                .map_err(|e| invalid("common_tls_context.validation_context", e.to_string()))?;
            if sans.is_empty() {
                builder.with_client_cert_verifier(verifier)
            } else {
                builder.with_client_cert_verifier(Arc::new(san::ClientSanVerifier::new(
                    verifier, sans,
                )))
            }
        }
        _ if require_client => {
            return Err(invalid(
                "require_client_certificate",
                "requires a validation_context with trusted_ca",
            ));
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| invalid("common_tls_context.tls_certificates[0]", e.to_string()))?;
    config.alpn_protocols = common
        .alpn_protocols
        .iter()
        .map(|p| p.as_bytes().to_vec())
        .collect();
    Ok(Arc::new(config))
}

/// SDS secret names a TLS context depends on.
pub fn secret_names(any: &Any) -> Vec<String> {
    let Ok(ctx) = DownstreamTlsContext::decode(any.value.as_slice()) else {
        return vec![];
    };
    let Some(common) = ctx.common_tls_context else {
        return vec![];
    };
    let mut names: Vec<String> = common
        .tls_certificate_sds_secret_configs
        .iter()
        .map(|s| s.name.clone())
        .collect();
    names.extend(validation_secret_name(&common));
    names
}

fn validation_secret_name(common: &CommonTlsContext) -> Option<String> {
    match &common.validation_context_type {
        Some(ValidationContextType::ValidationContextSdsSecretConfig(s)) => Some(s.name.clone()),
        Some(ValidationContextType::CombinedValidationContext(c)) => c
            .validation_context_sds_secret_config
            .as_ref()
            .map(|s| s.name.clone()),
        _ => None,
    }
}
