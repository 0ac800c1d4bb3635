//! TLS of gateway servers: the `DownstreamTlsContext` of a terminating
//! server (SIMPLE, MUTUAL, OPTIONAL_MUTUAL, ISTIO_MUTUAL) and the SDS
//! secrets its `credentialName` refers to.
//!
//! As istiod's `BuildListenerTLSContext`: ALPN `h2`, `http/1.1`; client
//! certificates required for MUTUAL and ISTIO_MUTUAL; `credentialName` as
//! SDS `kubernetes://<name>` (and `kubernetes://<name>-cacert`, or
//! `caCertCredentialName`, for the CA that verifies clients); certificate
//! files otherwise; ISTIO_MUTUAL with the workload certificate and the mesh
//! roots; `minProtocolVersion`, `maxProtocolVersion`, `cipherSuites` and
//! `ecdhCurves` for SIMPLE and MUTUAL.
//!
//! Istio's gateways get `kubernetes://` secrets from istiod through their
//! agent; here the control plane serves them itself over ADS (the proxy's
//! own SDS socket only has the workload certificate), read from the
//! Kubernetes `Secret`s of the gateway's namespace in the registry.

use std::collections::BTreeMap;

use api::networking::gateway::{ServerTlsMode, ServerTlsSettings, TlsProtocol};
use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, Secret,
    TlsCertificate, TlsParameters, certificate_validation_context, common_tls_context, secret,
    tls_parameters,
};

use crate::security::tls::{SDS_DEFAULT, SDS_ROOT, san_matcher, sds_secret};
use crate::{Diagnostic, pb};

/// The SDS name prefix of credentials istiod reads from Kubernetes.
pub const KUBERNETES_PREFIX: &str = "kubernetes://";
/// The suffix of a credential's CA resource.
pub const CA_SUFFIX: &str = "-cacert";

/// ALPN of terminated gateway servers.
const ALPN_HTTP: &[&str] = &["h2", "http/1.1"];
/// ALPN of an ISTIO_MUTUAL server proxying TCP (peer metadata exchange).
const ALPN_TCP_MX: &[&str] = &["istio-peer-exchange", "h2", "http/1.1"];

/// The secrets a gateway's listeners refer to, collected while building
/// them and served over ADS.
#[derive(Debug, Default)]
pub(crate) struct SecretSet {
    pub secrets: BTreeMap<String, Secret>,
}

/// Why a server's TLS cannot be set up (the server is left out).
#[derive(Debug)]
pub(crate) struct MissingCredential(pub String);

/// The downstream TLS context of a terminating server, or why it cannot be
/// built (a `credentialName` with no usable Secret in `namespace`).
pub(crate) fn server_context(
    tls: &ServerTlsSettings,
    namespace: &str,
    registry: &registry::Registry,
    tcp_server: bool,
    secrets: &mut SecretSet,
) -> Result<DownstreamTlsContext, MissingCredential> {
    let mode = tls.mode();
    let alpn = if tcp_server && mode == ServerTlsMode::IstioMutual {
        ALPN_TCP_MX
    } else {
        ALPN_HTTP
    };
    let require_client = matches!(mode, ServerTlsMode::Mutual | ServerTlsMode::IstioMutual);
    let validate_client = require_client || mode == ServerTlsMode::OptionalMutual;
    let mut common = CommonTlsContext {
        alpn_protocols: alpn.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    };
    let sans: Vec<_> = tls
        .subject_alt_names
        .iter()
        .map(|s| san_matcher(s))
        .collect();
    let credentials: Vec<&String> = if tls.credential_names.is_empty() {
        tls.credential_name
            .iter()
            .filter(|c| !c.is_empty())
            .collect()
    } else {
        tls.credential_names.iter().collect()
    };
    if mode == ServerTlsMode::IstioMutual {
        common.tls_certificate_sds_secret_configs = vec![sds_secret(SDS_DEFAULT)];
        common.validation_context_type = Some(
            common_tls_context::ValidationContextType::CombinedValidationContext(
                common_tls_context::CombinedCertificateValidationContext {
                    default_validation_context: Some(CertificateValidationContext {
                        match_typed_subject_alt_names: sans,
                        ..Default::default()
                    }),
                    validation_context_sds_secret_config: Some(sds_secret(SDS_ROOT)),
                    ..Default::default()
                },
            ),
        );
    } else if let Some(first) = credentials.first() {
        for name in &credentials {
            let secret = keypair_secret(name, namespace, registry)?;
            common
                .tls_certificate_sds_secret_configs
                .push(ads_config(&secret.name));
            secrets.secrets.insert(secret.name.clone(), secret);
        }
        if validate_client {
            let ca_name = tls
                .ca_cert_credential_name
                .clone()
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| format!("{first}{CA_SUFFIX}"));
            let secret = ca_secret(&ca_name, namespace, registry)?;
            let mut default = CertificateValidationContext {
                match_typed_subject_alt_names: sans,
                verify_certificate_spki: tls.verify_certificate_spki.clone(),
                verify_certificate_hash: tls.verify_certificate_hash.clone(),
                ..Default::default()
            };
            if tls.insecure_skip_verify == Some(true) {
                default.trust_chain_verification =
                    certificate_validation_context::TrustChainVerification::AcceptUntrusted as i32;
            }
            common.validation_context_type = Some(
                common_tls_context::ValidationContextType::CombinedValidationContext(
                    common_tls_context::CombinedCertificateValidationContext {
                        default_validation_context: Some(default),
                        validation_context_sds_secret_config: Some(ads_config(&secret.name)),
                        ..Default::default()
                    },
                ),
            );
            secrets.secrets.insert(secret.name.clone(), secret);
        } else if !sans.is_empty() {
            common.validation_context_type = Some(
                common_tls_context::ValidationContextType::ValidationContext(
                    CertificateValidationContext {
                        match_typed_subject_alt_names: sans,
                        ..Default::default()
                    },
                ),
            );
        }
    } else {
        // Certificate files on the gateway's file system.
        let pairs: Vec<(&str, &str)> = if tls.tls_certificates.is_empty() {
            match (
                nonempty(&tls.server_certificate),
                nonempty(&tls.private_key),
            ) {
                (Some(c), Some(k)) => vec![(c, k)],
                _ => Vec::new(),
            }
        } else {
            tls.tls_certificates
                .iter()
                .filter_map(|t| Some((nonempty(&t.server_certificate)?, nonempty(&t.private_key)?)))
                .collect()
        };
        if pairs.is_empty() {
            return Err(MissingCredential(
                "no credentialName and no serverCertificate/privateKey".to_owned(),
            ));
        }
        common.tls_certificates = pairs
            .into_iter()
            .map(|(c, k)| TlsCertificate {
                certificate_chain: Some(file(c)),
                private_key: Some(file(k)),
                ..Default::default()
            })
            .collect();
        let ca = nonempty(&tls.ca_certificates).or_else(|| {
            tls.tls_certificates
                .iter()
                .find_map(|t| nonempty(&t.ca_certificates))
        });
        if validate_client || !sans.is_empty() {
            let mut vc = CertificateValidationContext {
                trusted_ca: ca.map(file),
                match_typed_subject_alt_names: sans,
                verify_certificate_spki: tls.verify_certificate_spki.clone(),
                verify_certificate_hash: tls.verify_certificate_hash.clone(),
                crl: nonempty(&tls.ca_crl).map(file),
                ..Default::default()
            };
            if validate_client && vc.trusted_ca.is_none() {
                return Err(MissingCredential(
                    "MUTUAL needs caCertificates to verify clients with".to_owned(),
                ));
            }
            if tls.insecure_skip_verify == Some(true) {
                vc.trust_chain_verification =
                    certificate_validation_context::TrustChainVerification::AcceptUntrusted as i32;
            }
            common.validation_context_type =
                Some(common_tls_context::ValidationContextType::ValidationContext(vc));
        }
    }
    if matches!(
        mode,
        ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual
    ) {
        apply_server_settings(tls, &mut common);
    }
    Ok(DownstreamTlsContext {
        common_tls_context: Some(common),
        require_client_certificate: Some(pb::boolv(require_client)),
        ..Default::default()
    })
}

/// `minProtocolVersion`, `maxProtocolVersion`, `cipherSuites`, `ecdhCurves`.
fn apply_server_settings(tls: &ServerTlsSettings, common: &mut CommonTlsContext) {
    let convert = |p: TlsProtocol| match p {
        TlsProtocol::TlsAuto => tls_parameters::TlsProtocol::TlsAuto,
        TlsProtocol::TlsV1_0 => tls_parameters::TlsProtocol::TlSv10,
        TlsProtocol::TlsV1_1 => tls_parameters::TlsProtocol::TlSv11,
        TlsProtocol::TlsV1_2 => tls_parameters::TlsProtocol::TlSv12,
        TlsProtocol::TlsV1_3 => tls_parameters::TlsProtocol::TlSv13,
    };
    let mut params = TlsParameters::default();
    if let Some(min) = tls
        .min_protocol_version
        .filter(|p| *p != TlsProtocol::TlsAuto)
    {
        params.tls_minimum_protocol_version = convert(min) as i32;
    }
    if let Some(max) = tls
        .max_protocol_version
        .filter(|p| *p != TlsProtocol::TlsAuto)
    {
        params.tls_maximum_protocol_version = convert(max) as i32;
    }
    params.cipher_suites = tls.cipher_suites.clone();
    params.ecdh_curves = tls.ecdh_curves.clone();
    if params != TlsParameters::default() {
        common.tls_params = Some(params);
    }
}

fn nonempty(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.is_empty())
}

fn file(path: &str) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::Filename(path.to_owned())),
        ..Default::default()
    }
}

fn inline(bytes: &[u8]) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(bytes.to_vec())),
        ..Default::default()
    }
}

/// An SDS secret from the control plane over ADS.
fn ads_config(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_owned(),
        sds_config: Some(pb::ads()),
    }
}

/// `kubernetes://<name>`; a credential naming a namespace
/// (`<namespace>/<name>`) keeps it.
fn resource_name(credential: &str) -> String {
    if credential.contains("://") {
        credential.to_owned()
    } else {
        format!("{KUBERNETES_PREFIX}{credential}")
    }
}

/// The Secret object a credential refers to: `<name>` in the gateway's
/// namespace, or `<namespace>/<name>`.
fn lookup<'a>(
    credential: &str,
    namespace: &str,
    registry: &'a registry::Registry,
) -> Option<&'a registry::secret::TlsCredential> {
    let plain = credential
        .strip_prefix(KUBERNETES_PREFIX)
        .unwrap_or(credential);
    let key = if plain.contains('/') {
        plain.to_owned()
    } else {
        format!("{namespace}/{plain}")
    };
    registry.credentials.get(&key)
}

fn keypair_secret(
    credential: &str,
    namespace: &str,
    registry: &registry::Registry,
) -> Result<Secret, MissingCredential> {
    let Some(cred) = lookup(credential, namespace, registry) else {
        return Err(MissingCredential(format!(
            "credentialName {credential:?}: no Secret {namespace}/{credential}"
        )));
    };
    let (Some(chain), Some(key)) = (&cred.cert_chain, &cred.private_key) else {
        return Err(MissingCredential(format!(
            "credentialName {credential:?}: Secret {} has no certificate and key",
            cred.key()
        )));
    };
    Ok(Secret {
        name: resource_name(credential),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: Some(inline(chain)),
            private_key: Some(inline(key)),
            ..Default::default()
        })),
    })
}

/// The CA of `<credential>-cacert`: the Secret of that name, else the
/// `ca.crt` of `<credential>` itself (Istio accepts both).
fn ca_secret(
    ca_name: &str,
    namespace: &str,
    registry: &registry::Registry,
) -> Result<Secret, MissingCredential> {
    let own = lookup(ca_name, namespace, registry).filter(|c| c.ca.is_some());
    let base = ca_name
        .strip_suffix(CA_SUFFIX)
        .and_then(|b| lookup(b, namespace, registry))
        .filter(|c| c.ca.is_some());
    let Some(cred) = own.or(base) else {
        return Err(MissingCredential(format!(
            "no CA for client certificates: neither Secret {namespace}/{ca_name} nor {namespace}/{} has ca.crt",
            ca_name.strip_suffix(CA_SUFFIX).unwrap_or(ca_name)
        )));
    };
    let Some(ca) = &cred.ca else {
        return Err(MissingCredential(format!(
            "Secret {} has no ca.crt",
            cred.key()
        )));
    };
    Ok(Secret {
        name: resource_name(ca_name),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                trusted_ca: Some(inline(ca)),
                crl: cred.crl.as_deref().map(inline),
                ..Default::default()
            },
        )),
    })
}

/// The `kubernetes://` secrets the gateway's clusters name (DestinationRule
/// `credentialName`, TLS origination at an egress gateway): served like the
/// servers' ones. A missing one is reported (the cluster waits for it).
pub(crate) fn upstream_secrets(
    clusters: &[envoy_types::pb::envoy::config::cluster::v3::Cluster],
    namespace: &str,
    registry: &registry::Registry,
    secrets: &mut SecretSet,
    diags: &mut Vec<Diagnostic>,
) {
    use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
    use prost::Message as _;
    let mut names = std::collections::BTreeSet::new();
    for c in clusters {
        let sockets = c.transport_socket.iter().chain(
            c.transport_socket_matches
                .iter()
                .filter_map(|m| m.transport_socket.as_ref()),
        );
        for ts in sockets {
            let Some(ConfigType::TypedConfig(any)) = &ts.config_type else {
                continue;
            };
            if !any.type_url.ends_with("UpstreamTlsContext") {
                continue;
            }
            let Ok(utc) = UpstreamTlsContext::decode(any.value.as_slice()) else {
                continue;
            };
            let Some(common) = utc.common_tls_context else {
                continue;
            };
            let mut sds: Vec<SdsSecretConfig> = common.tls_certificate_sds_secret_configs;
            if let Some(common_tls_context::ValidationContextType::CombinedValidationContext(cvc)) =
                common.validation_context_type
            {
                sds.extend(cvc.validation_context_sds_secret_config);
            }
            names.extend(
                sds.into_iter()
                    .filter(|s| s.name.starts_with(KUBERNETES_PREFIX))
                    .map(|s| s.name),
            );
        }
    }
    for name in names {
        let plain = &name[KUBERNETES_PREFIX.len()..];
        let built = if let Some(base) = plain.strip_suffix(CA_SUFFIX) {
            ca_secret(&format!("{base}{CA_SUFFIX}"), namespace, registry)
        } else {
            keypair_secret(plain, namespace, registry)
        };
        match built {
            Ok(secret) => {
                secrets.secrets.insert(secret.name.clone(), secret);
            }
            Err(why) => diags.push(Diagnostic::new(
                "",
                "",
                format!(
                    "DestinationRule credential {name}: {}; its clusters wait for it",
                    why.0
                ),
            )),
        }
    }
}

/// A diagnostic for a server left out.
pub(crate) fn missing(origin: &str, field: &str, why: &MissingCredential) -> Diagnostic {
    Diagnostic::new(
        origin,
        format!("{field}.tls"),
        format!("{}; the server is not served", why.0),
    )
}
