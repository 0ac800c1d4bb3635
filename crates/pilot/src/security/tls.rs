//! TLS on both sides of a sidecar, in the shape istiod gives it.
//!
//! **Upstream** (`cluster_tls.go`): a DestinationRule `tls` wins (DISABLE,
//! SIMPLE, MUTUAL, ISTIO_MUTUAL); without one, auto mTLS gives mesh
//! services Istio's `transport_socket_matches`: `tlsMode-istio` (ISTIO_MUTUAL
//! for endpoints whose metadata says `tlsMode: istio`) then
//! `tlsMode-disabled` (plaintext). ISTIO_MUTUAL presents the workload
//! certificate (SDS `default`), verifies the peer against the trust bundle
//! (SDS `ROOTCA`) and the destination's SPIFFE ids, sends SNI
//! `outbound_.<port>_.<subset>_.<host>` and ALPN `istio-peer-exchange`,
//! `istio` (plus `h2` on HTTP/2 clusters).
//!
//! **Downstream** (`authn/utils`, `filterchain_options.go`): per
//! PeerAuthentication mode, the filter chain matches of Istio's inbound
//! listeners and a `DownstreamTlsContext` requiring a client certificate.
//!
//! SDS secrets come from the `sds-grpc` cluster of the bootstrap (Istio's
//! agent; Trellis' proxy serves `default` and `ROOTCA` itself), exactly as
//! istiod writes the config source. DestinationRule SIMPLE/MUTUAL
//! certificates from files are given to the proxy as file data sources
//! (istiod relays them through its agent's SDS, which a stock Envoy does
//! not have).

use api::networking::destination_rule::{ClientTlsMode, ClientTlsSettings};
use api::security::MtlsMode;
use envoy_types::pb::envoy::config::core::v3::{
    ApiConfigSource, ApiVersion, ConfigSource, DataSource, GrpcService, TransportSocket,
    api_config_source, config_source, data_source, grpc_service, transport_socket,
};
use envoy_types::pb::envoy::config::listener::v3::FilterChainMatch;
use envoy_types::pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
    SubjectAltNameMatcher, TlsCertificate, TlsParameters, UpstreamTlsContext, common_tls_context,
    subject_alt_name_matcher::SanType, tls_parameters::TlsProtocol,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use envoy_types::pb::google::protobuf::{Struct, Value, value};

use crate::context::PushContext;
use crate::pb;

/// The bootstrap cluster serving SDS (Istio's agent socket).
pub const SDS_CLUSTER: &str = "sds-grpc";
/// The workload certificate's SDS name.
pub const SDS_DEFAULT: &str = "default";
/// The trust bundle's SDS name.
pub const SDS_ROOT: &str = "ROOTCA";
/// Transport socket names.
pub const TLS_SOCKET: &str = "envoy.transport_sockets.tls";
pub const RAW_BUFFER_SOCKET: &str = "envoy.transport_sockets.raw_buffer";
/// Endpoint metadata namespace read by `transport_socket_matches`.
pub const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";
/// Istio's endpoint TLS mode key and its mesh value.
pub const TLS_MODE_KEY: &str = "tlsMode";
pub const TLS_MODE_ISTIO: &str = "istio";
/// ALPN an Istio client offers in-mesh.
pub const ALPN_IN_MESH: &[&str] = &["istio-peer-exchange", "istio"];
pub const ALPN_IN_MESH_H2: &[&str] = &["istio-peer-exchange", "istio", "h2"];
/// ALPN values an Istio client may offer in-mesh; inbound mTLS chains
/// match any of them (`allIstioMtlsALPNs`).
pub const ALPN_ALL_ISTIO_MTLS: &[&str] = &[
    "istio",
    "istio-peer-exchange",
    "istio-http/1.0",
    "istio-http/1.1",
    "istio-h2",
];
/// Where SIMPLE/MUTUAL without `caCertificates` find the system roots
/// (istiod's agent reads the system bundle for them).
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Server ciphers of mesh mTLS (Istio's `SupportedCiphers`).
pub const SUPPORTED_CIPHERS: &[&str] = &[
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-GCM-SHA256",
];

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// An SDS secret from the `sds-grpc` cluster, as istiod writes it for the
/// workload certificate and the trust bundle.
pub fn sds_secret(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_owned(),
        sds_config: Some(ConfigSource {
            config_source_specifier: Some(config_source::ConfigSourceSpecifier::ApiConfigSource(
                ApiConfigSource {
                    api_type: api_config_source::ApiType::Grpc as i32,
                    set_node_on_first_message_only: true,
                    transport_api_version: ApiVersion::V3 as i32,
                    grpc_services: vec![GrpcService {
                        target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                            grpc_service::EnvoyGrpc {
                                cluster_name: SDS_CLUSTER.to_owned(),
                                ..Default::default()
                            },
                        )),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            )),
            resource_api_version: ApiVersion::V3 as i32,
            initial_fetch_timeout: Some(pb::duration(std::time::Duration::ZERO)),
            ..Default::default()
        }),
    }
}

/// An SDS secret served over ADS by the control plane (DestinationRule
/// `credentialName`, Istio's `kubernetes://<name>`).
fn ads_secret(name: &str) -> SdsSecretConfig {
    let name = if name.contains("://") {
        name.to_owned()
    } else {
        format!("kubernetes://{name}")
    };
    SdsSecretConfig {
        name,
        sds_config: Some(pb::ads()),
    }
}

fn exact(s: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::Exact(s.to_owned())),
        ignore_case: false,
    }
}

/// A subject alternative name matcher of the SAN type the name looks like:
/// URI (`spiffe://...`, any `scheme://`), IP address, e-mail, else DNS.
/// (Istio writes untyped `match_subject_alt_names`, which Envoy has
/// deprecated; the typed form matches the same certificates for these.)
pub fn san_matcher(name: &str) -> SubjectAltNameMatcher {
    let san_type = if name.contains("://") {
        SanType::Uri
    } else if name.parse::<std::net::IpAddr>().is_ok() {
        SanType::IpAddress
    } else if name.contains('@') {
        SanType::Email
    } else {
        SanType::Dns
    };
    SubjectAltNameMatcher {
        san_type: san_type as i32,
        matcher: Some(exact(name)),
        ..Default::default()
    }
}

fn upstream_tls_params() -> TlsParameters {
    TlsParameters {
        tls_minimum_protocol_version: TlsProtocol::TlSv12 as i32,
        tls_maximum_protocol_version: TlsProtocol::TlSv13 as i32,
        ..Default::default()
    }
}

/// ISTIO_MUTUAL: the workload certificate, the trust bundle and the peer's
/// SPIFFE ids; SNI and ALPN as Istio sends them.
pub fn istio_mutual(sni: &str, sans: &[String], http2: bool) -> UpstreamTlsContext {
    UpstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_params: Some(upstream_tls_params()),
            tls_certificate_sds_secret_configs: vec![sds_secret(SDS_DEFAULT)],
            validation_context_type: Some(
                common_tls_context::ValidationContextType::CombinedValidationContext(
                    common_tls_context::CombinedCertificateValidationContext {
                        default_validation_context: Some(CertificateValidationContext {
                            match_typed_subject_alt_names: sans
                                .iter()
                                .map(|s| san_matcher(s))
                                .collect(),
                            ..Default::default()
                        }),
                        validation_context_sds_secret_config: Some(sds_secret(SDS_ROOT)),
                        ..Default::default()
                    },
                ),
            ),
            alpn_protocols: strings(if http2 { ALPN_IN_MESH_H2 } else { ALPN_IN_MESH }),
            ..Default::default()
        }),
        sni: sni.to_owned(),
        ..Default::default()
    }
}

fn file(path: &str) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::Filename(path.to_owned())),
        ..Default::default()
    }
}

/// What [`user_tls`] decided besides the context.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct UserTlsExtras {
    /// Set SNI from the request's `:authority` (no `sni` configured).
    pub auto_sni: bool,
    /// Verify the certificate against that SNI (no `subjectAltNames`).
    pub auto_san_validation: bool,
}

/// SIMPLE and MUTUAL from a DestinationRule: certificates from files (or
/// `credentialName` over SDS), the system roots when `caCertificates` is
/// unset, no verification with `insecureSkipVerify`. `sans` are the
/// subject alt names to verify (the rule's, or a ServiceEntry's).
pub fn user_tls(
    tls: &ClientTlsSettings,
    sans: &[String],
    http2: bool,
) -> (UpstreamTlsContext, UserTlsExtras, Vec<String>) {
    let mut problems = Vec::new();
    let insecure = tls.insecure_skip_verify == Some(true);
    let sni = tls.sni.clone().unwrap_or_default();
    let mut common = CommonTlsContext {
        tls_params: Some(upstream_tls_params()),
        ..Default::default()
    };
    let mutual = tls.mode() == ClientTlsMode::Mutual;
    if let Some(cred) = tls.credential_name.as_deref().filter(|c| !c.is_empty()) {
        if mutual {
            common.tls_certificate_sds_secret_configs = vec![ads_secret(cred)];
        }
        if !insecure {
            common.validation_context_type = Some(
                common_tls_context::ValidationContextType::CombinedValidationContext(
                    common_tls_context::CombinedCertificateValidationContext {
                        default_validation_context: Some(CertificateValidationContext {
                            match_typed_subject_alt_names: sans
                                .iter()
                                .map(|s| san_matcher(s))
                                .collect(),
                            ..Default::default()
                        }),
                        validation_context_sds_secret_config: Some(ads_secret(&format!(
                            "{cred}-cacert"
                        ))),
                        ..Default::default()
                    },
                ),
            );
        }
    } else {
        if mutual {
            match (
                tls.client_certificate.as_deref().filter(|s| !s.is_empty()),
                tls.private_key.as_deref().filter(|s| !s.is_empty()),
            ) {
                (Some(cert), Some(key)) => {
                    common.tls_certificates = vec![TlsCertificate {
                        certificate_chain: Some(file(cert)),
                        private_key: Some(file(key)),
                        ..Default::default()
                    }];
                }
                _ => problems.push(
                    "MUTUAL needs clientCertificate and privateKey (or credentialName); no client certificate is presented"
                        .to_owned(),
                ),
            }
        }
        common.validation_context_type = Some(
            common_tls_context::ValidationContextType::ValidationContext(if insecure {
                CertificateValidationContext::default()
            } else {
                CertificateValidationContext {
                    trusted_ca: Some(file(
                        tls.ca_certificates
                            .as_deref()
                            .filter(|s| !s.is_empty())
                            .unwrap_or(SYSTEM_CA_BUNDLE),
                    )),
                    match_typed_subject_alt_names: sans.iter().map(|s| san_matcher(s)).collect(),
                    crl: tls.ca_crl.as_deref().filter(|s| !s.is_empty()).map(file),
                    ..Default::default()
                }
            }),
        );
    }
    if http2 {
        common.alpn_protocols = vec!["h2".to_owned()];
    }
    let extras = UserTlsExtras {
        auto_sni: sni.is_empty(),
        auto_san_validation: sni.is_empty() && sans.is_empty() && !insecure,
    };
    (
        UpstreamTlsContext {
            common_tls_context: Some(common),
            sni,
            ..Default::default()
        },
        extras,
        problems,
    )
}

/// `envoy.transport_sockets.tls` with an upstream context.
pub fn upstream_socket(ctx: &UpstreamTlsContext) -> TransportSocket {
    TransportSocket {
        name: TLS_SOCKET.to_owned(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pb::any(ctx))),
    }
}

/// `envoy.transport_sockets.raw_buffer`.
pub fn raw_buffer_socket() -> TransportSocket {
    TransportSocket {
        name: RAW_BUFFER_SOCKET.to_owned(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pb::any(
            &RawBuffer::default(),
        ))),
    }
}

fn string_value(s: &str) -> Value {
    Value {
        kind: Some(value::Kind::StringValue(s.to_owned())),
    }
}

/// `{tlsMode: istio}`: the match of the `tlsMode-istio` socket and the
/// metadata of endpoints that run a sidecar.
pub fn istio_tls_mode_struct() -> Struct {
    Struct {
        fields: [(TLS_MODE_KEY.to_owned(), string_value(TLS_MODE_ISTIO))]
            .into_iter()
            .collect(),
    }
}

/// Istio's auto-mTLS socket matches: mTLS to endpoints labelled
/// `tlsMode: istio`, plaintext to the others.
pub fn auto_mtls_matches(
    ctx: &UpstreamTlsContext,
) -> Vec<envoy_types::pb::envoy::config::cluster::v3::cluster::TransportSocketMatch> {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::TransportSocketMatch;
    vec![
        TransportSocketMatch {
            name: format!("tlsMode-{TLS_MODE_ISTIO}"),
            r#match: Some(istio_tls_mode_struct()),
            transport_socket: Some(upstream_socket(ctx)),
        },
        TransportSocketMatch {
            name: "tlsMode-disabled".to_owned(),
            r#match: Some(Struct::default()),
            transport_socket: Some(raw_buffer_socket()),
        },
    ]
}

/// The `envoy.transport_socket_match` metadata of an endpoint with a sidecar.
pub fn endpoint_tls_metadata() -> envoy_types::pb::envoy::config::core::v3::Metadata {
    envoy_types::pb::envoy::config::core::v3::Metadata {
        filter_metadata: [(TRANSPORT_SOCKET_MATCH.to_owned(), istio_tls_mode_struct())]
            .into_iter()
            .collect(),
        ..Default::default()
    }
}

/// Istio's inbound mTLS context: the workload certificate, client
/// certificates required and verified against the trust bundle and the
/// mesh trust domains; ALPN `h2`, `http/1.1` for HTTP chains and
/// `istio-peer-exchange`, `h2`, `http/1.1` for TCP chains.
pub fn downstream_mtls(ctx: &PushContext, http: bool) -> DownstreamTlsContext {
    let mesh_tls = ctx.mesh().mesh_mtls.as_ref();
    let min = match mesh_tls.and_then(|m| m.min_protocol_version.as_deref()) {
        Some("TLSV1_3") => TlsProtocol::TlSv13,
        _ => TlsProtocol::TlSv12,
    };
    let ciphers = match mesh_tls.map(|m| &m.cipher_suites) {
        Some(c) if !c.is_empty() => c.clone(),
        _ => strings(SUPPORTED_CIPHERS),
    };
    let alpn: &[&str] = if http {
        &["h2", "http/1.1"]
    } else {
        &["istio-peer-exchange", "h2", "http/1.1"]
    };
    DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_params: Some(TlsParameters {
                tls_minimum_protocol_version: min as i32,
                tls_maximum_protocol_version: TlsProtocol::TlSv13 as i32,
                cipher_suites: ciphers,
                ..Default::default()
            }),
            alpn_protocols: strings(alpn),
            tls_certificate_sds_secret_configs: vec![sds_secret(SDS_DEFAULT)],
            validation_context_type: Some(
                common_tls_context::ValidationContextType::CombinedValidationContext(
                    common_tls_context::CombinedCertificateValidationContext {
                        default_validation_context: Some(CertificateValidationContext {
                            match_typed_subject_alt_names: super::trust_domains(ctx)
                                .iter()
                                .map(|td| SubjectAltNameMatcher {
                                    san_type: SanType::Uri as i32,
                                    matcher: Some(StringMatcher {
                                        match_pattern: Some(string_matcher::MatchPattern::Prefix(
                                            format!("{}{td}/", super::SPIFFE_PREFIX),
                                        )),
                                        ignore_case: false,
                                    }),
                                    ..Default::default()
                                })
                                .collect(),
                            ..Default::default()
                        }),
                        validation_context_sds_secret_config: Some(sds_secret(SDS_ROOT)),
                        ..Default::default()
                    },
                ),
            ),
            ..Default::default()
        }),
        require_client_certificate: Some(pb::boolv(true)),
        ..Default::default()
    }
}

/// `envoy.transport_sockets.tls` with a downstream context.
pub fn downstream_socket(ctx: &DownstreamTlsContext) -> TransportSocket {
    TransportSocket {
        name: TLS_SOCKET.to_owned(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pb::any(ctx))),
    }
}

/// One inbound filter chain variant: its match and whether it terminates
/// mesh mTLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainOption {
    /// `"tls"`, `"raw_buffer"`.
    pub transport_protocol: &'static str,
    pub application_protocols: &'static [&'static str],
    /// Terminate mTLS with [`downstream_mtls`].
    pub mtls: bool,
    /// Suffix of the chain name (`""`, `"mtls"`, `"tls"`).
    pub suffix: &'static str,
}

const MTLS_HTTP_ANY_ALPN: ChainOption = ChainOption {
    transport_protocol: "tls",
    application_protocols: ALPN_ALL_ISTIO_MTLS,
    mtls: true,
    suffix: "mtls",
};
const PLAINTEXT: ChainOption = ChainOption {
    transport_protocol: "raw_buffer",
    application_protocols: &[],
    mtls: false,
    suffix: "",
};
/// DISABLE: whatever arrives, as it arrives. (istiod matches `raw_buffer`
/// and turns the TLS inspector off for such ports, so TLS is passed
/// through too; without the inspector dependency, no transport match.)
const ANY_PLAINTEXT: ChainOption = ChainOption {
    transport_protocol: "",
    application_protocols: &[],
    mtls: false,
    suffix: "",
};
const PLAIN_TLS: ChainOption = ChainOption {
    transport_protocol: "tls",
    application_protocols: &[],
    mtls: false,
    suffix: "tls",
};
const MTLS_ONLY: ChainOption = ChainOption {
    transport_protocol: "tls",
    application_protocols: &[],
    mtls: true,
    suffix: "mtls",
};

/// Istio's inbound filter chain options for a port by mode and protocol:
/// - STRICT: one mTLS chain (`transport_protocol: tls`);
/// - PERMISSIVE: mTLS for clients offering an Istio ALPN, and plaintext
///   (`raw_buffer`; TCP ports also pass other TLS through untouched);
/// - DISABLE: plaintext only (no TLS termination).
pub fn chain_options(mode: MtlsMode, http: bool) -> Vec<ChainOption> {
    match (mode, http) {
        (MtlsMode::Strict, _) => vec![MTLS_ONLY],
        (MtlsMode::Disable, _) => vec![ANY_PLAINTEXT],
        (_, true) => vec![MTLS_HTTP_ANY_ALPN, PLAINTEXT],
        (_, false) => vec![MTLS_HTTP_ANY_ALPN, PLAIN_TLS, PLAINTEXT],
    }
}

impl ChainOption {
    /// The chain's match, on `port` when given (`None`: matches anything).
    pub fn filter_chain_match(&self, port: Option<u32>) -> Option<FilterChainMatch> {
        let m = FilterChainMatch {
            destination_port: port.map(pb::u32v),
            transport_protocol: self.transport_protocol.to_owned(),
            application_protocols: strings(self.application_protocols),
            ..Default::default()
        };
        (m != FilterChainMatch::default()).then_some(m)
    }

    /// `base` with the option's suffix (`inbound|9080||mtls`).
    pub fn chain_name(&self, base: &str) -> String {
        if self.suffix.is_empty() {
            base.to_owned()
        } else if base.ends_with('|') {
            format!("{base}{}", self.suffix)
        } else {
            format!("{base}-{}", self.suffix)
        }
    }
}
