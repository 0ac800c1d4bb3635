//! The agent's workload certificate, as Istio's pilot-agent manages it: a
//! key generated here (it never leaves the process), a CSR for the
//! workload's SPIFFE id sent to the mesh CA (`CreateCertificate` over TLS,
//! authenticated by the workload's token), and renewal at about half of the
//! certificate's life. The result becomes the SDS secrets Istio's xDS names:
//! `default` (certificate and key) and `ROOTCA` (the trust bundle).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source::Specifier};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, secret,
};
use hyper_util::rt::TokioIo;
use identity::SpiffeId;
use rustls::pki_types::ServerName;
use tokio::sync::watch;

/// SDS name of the workload certificate.
pub const DEFAULT_SECRET: &str = "default";
/// SDS name of the trust bundle.
pub const ROOT_SECRET: &str = "ROOTCA";

/// Where and how to ask the CA.
#[derive(Clone)]
pub struct CaClient {
    /// `host:port` of the CA's gRPC endpoint (Istio's 15012).
    address: String,
    tls: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
    token: String,
    id: SpiffeId,
    ttl: Duration,
}

impl std::fmt::Debug for CaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaClient")
            .field("address", &self.address)
            .field("id", &self.id.to_string())
            .finish_non_exhaustive()
    }
}

/// A certificate the CA issued, with its key.
#[derive(Debug, Clone)]
pub struct WorkloadCert {
    pub chain_pem: String,
    pub key_pem: String,
    pub root_pem: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl WorkloadCert {
    /// The SDS secrets Istio's xDS refers to.
    pub fn secrets(&self) -> Vec<Secret> {
        let inline = |s: &str| DataSource {
            specifier: Some(Specifier::InlineString(s.to_string())),
            ..Default::default()
        };
        vec![
            Secret {
                name: DEFAULT_SECRET.into(),
                r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                    certificate_chain: Some(inline(&self.chain_pem)),
                    private_key: Some(inline(&self.key_pem)),
                    ..Default::default()
                })),
            },
            Secret {
                name: ROOT_SECRET.into(),
                r#type: Some(secret::Type::ValidationContext(
                    CertificateValidationContext {
                        trusted_ca: Some(inline(&self.root_pem)),
                        ..Default::default()
                    },
                )),
            },
        ]
    }
}

impl CaClient {
    /// `address` is `host:port` (an `https://` prefix is accepted); the CA's
    /// serving certificate must chain to a root in `root_pem_path`.
    pub fn new(
        address: &str,
        root_pem_path: &Path,
        token: String,
        id: SpiffeId,
        ttl: Duration,
    ) -> anyhow::Result<Self> {
        let address = address
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let host = address
            .rsplit_once(':')
            .map(|(h, _)| h.trim_matches(['[', ']']))
            .ok_or_else(|| anyhow::anyhow!("CA address '{address}' needs a port"))?;
        let server_name = ServerName::try_from(host.to_string())
            .map_err(|e| anyhow::anyhow!("CA address '{address}': {e}"))?;
        let pem = std::fs::read(root_pem_path)
            .with_context(|| format!("cannot read CA root {}", root_pem_path.display()))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.with_context(|| format!("{}: invalid PEM", root_pem_path.display()))?;
            roots
                .add(cert)
                .with_context(|| format!("{}: bad root certificate", root_pem_path.display()))?;
        }
        let mut tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        // gRPC over TLS negotiates HTTP/2 with ALPN.
        tls.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            address,
            tls: Arc::new(tls),
            server_name,
            token,
            id,
            ttl,
        })
    }

    async fn channel(&self) -> anyhow::Result<tonic::transport::Channel> {
        let address = self.address.clone();
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(&self.tls));
        let name = self.server_name.clone();
        // TLS is done here rather than by tonic, so that it uses our rustls
        // provider and trust roots.
        let connector = tower::service_fn(move |_: http::Uri| {
            let (address, tls, name) = (address.clone(), tls.clone(), name.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect(&address).await?;
                let stream = tls.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        });
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.address))?
            .connect_timeout(Duration::from_secs(5))
            .connect_with_connector(connector)
            .await
            .with_context(|| format!("cannot reach the CA at {}", self.address))
    }

    /// Generates a key and CSR and has the CA sign it.
    pub async fn fetch(&self) -> anyhow::Result<WorkloadCert> {
        let csr = identity::csr::WorkloadCsr::generate(&self.id)?;
        let channel = self.channel().await?;
        let chain =
            identity::grpc::request_certificate(channel, &self.token, csr.csr_pem(), self.ttl)
                .await
                .map_err(|s| anyhow::anyhow!("the CA refused {}: {}", self.id, s.message()))?;
        // Istio's answer: the chain, then the trust bundle last.
        let (root, certs) = chain
            .split_last()
            .filter(|(_, certs)| !certs.is_empty())
            .ok_or_else(|| anyhow::anyhow!("the CA answered without a certificate"))?;
        let leaf = identity::x509::certs_from_pem(&certs[0])?;
        let first = leaf
            .first()
            .ok_or_else(|| anyhow::anyhow!("the CA answered with an empty leaf"))?;
        let (not_before, not_after) = identity::x509::validity(first.as_ref())?;
        Ok(WorkloadCert {
            chain_pem: certs.concat(),
            key_pem: csr.private_key_pem(),
            root_pem: root.clone(),
            not_before,
            not_after,
        })
    }

    /// Renews `current` at about half its life, forever; every new
    /// certificate is published on `tx`. A failed renewal is retried with
    /// back-off while the old certificate is still valid.
    pub fn spawn_rotation(self, current: &WorkloadCert, tx: watch::Sender<Vec<Secret>>) {
        let mut not_before = current.not_before;
        let mut not_after = current.not_after;
        tokio::spawn(async move {
            let mut backoff = Duration::from_secs(1);
            loop {
                let at = identity::csr::refresh_at(not_before, not_after, SystemTime::now());
                let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
                tokio::time::sleep(wait).await;
                match self.fetch().await {
                    Ok(cert) => {
                        tracing::info!(id = %self.id, not_after = ?cert.not_after, "workload certificate rotated");
                        not_before = cert.not_before;
                        not_after = cert.not_after;
                        backoff = Duration::from_secs(1);
                        if tx.send(cert.secrets()).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?backoff, "certificate renewal failed");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                        // Try again soon: move the refresh point to now.
                        not_before = SystemTime::now();
                        not_after = not_before;
                    }
                }
            }
        });
    }
}
