//! The control plane's TLS endpoint (Istio's 15012): the CA's
//! `CreateCertificate` API and ADS, both over TLS with a serving certificate
//! the mesh CA issues to the control plane itself. Proxies verify it against
//! the mesh root; a client certificate, when presented, must chain to the
//! mesh trust bundle.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use identity::MeshCa;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use xds::SnapshotCache;

/// Names the serving certificate answers to (Istio's istiod names, and loopback).
const SERVING_NAMES: &[&str] = &[
    "istiod.istio-system.svc",
    "istiod.istio-system.svc.cluster.local",
    "localhost",
];

/// How often the serving certificate is re-issued (it lives 24 h).
const SERVING_CERT_REFRESH: Duration = Duration::from_secs(6 * 3600);

fn serving_config(ca: &MeshCa) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let ips = [
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ];
    let (chain, key) = ca.issue_serving_cert(SERVING_NAMES, &ips)?;
    let certs = identity::x509::certs_from_pem(&chain)?;
    let key =
        <rustls::pki_types::PrivateKeyDer as rustls::pki_types::pem::PemObject>::from_pem_slice(
            key.as_bytes(),
        )
        .map_err(|e| anyhow::anyhow!("serving key: {e}"))?;
    let provider = identity::tls::crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for root in ca.trust_bundle() {
        roots.add(root.clone())?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::clone(&provider),
    )
    .allow_unauthenticated()
    .build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A TLS connection handed to tonic.
struct Conn(TlsStream<TcpStream>);

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// Serves the CA and ADS over TLS on `listener` until the runtime stops.
pub async fn serve_secure(
    listener: TcpListener,
    ca: Arc<MeshCa>,
    cache: Arc<SnapshotCache>,
) -> anyhow::Result<()> {
    let config = Arc::new(ArcSwap::new(serving_config(&ca)?));
    {
        let (config, ca) = (Arc::clone(&config), Arc::clone(&ca));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SERVING_CERT_REFRESH).await;
                match serving_config(&ca) {
                    Ok(c) => config.store(c),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot renew the control plane's serving certificate")
                    }
                }
            }
        });
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Conn>>(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed on the secure endpoint");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(config.load_full());
            let tx = tx.clone();
            // Handshakes run apart so a slow client cannot hold up the others.
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(Conn(tls))).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    tonic::transport::Server::builder()
        .add_service(identity::CertificateService::new(ca))
        .add_service(xds::server::service(cache))
        .serve_with_incoming(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?;
    Ok(())
}
