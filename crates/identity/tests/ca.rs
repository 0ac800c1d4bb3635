//! The CA end to end: directories on disk, Istio's `cacerts` layout, the
//! gRPC certificate API over a real socket, and mTLS handshakes between
//! workloads holding the certificates it issued.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use identity::ca::layout::{CA_CERT_FILE, CA_KEY_FILE, CERT_CHAIN_FILE, ROOT_CERT_FILE};
use identity::{
    CaOrigin, CertificateService, MeshCa, MeshCredentials, SpiffeId, WorkloadCsr, client_config,
    peer_spiffe_id, request_certificate, server_config,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256, RsaKeySize,
};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tonic::Code;
use tonic::transport::{Channel, Endpoint, Server};

const TD: &str = "cluster.local";

fn id(sa: &str) -> SpiffeId {
    SpiffeId::new(TD, "default", sa).expect("valid id")
}

fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    identity::x509::certs_from_pem(pem).expect("PEM certificates")
}

/// Verifies `chain` (leaf first) against `bundle_pem` the way a mesh peer
/// does: webpki, client-auth purpose, at `now`.
fn verify_chain(chain: &[CertificateDer<'static>], bundle_pem: &str) -> Result<(), rustls::Error> {
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs(bundle_pem));
    assert!(added > 0);
    let verifier = WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        identity::tls::crypto_provider(),
    )
    .build()
    .expect("verifier");
    verifier
        .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
        .map(|_| ())
}

/// What a workload holds after asking the CA: its key and what came back.
fn credentials(ca: &MeshCa, who: &SpiffeId) -> MeshCredentials {
    let csr = WorkloadCsr::generate(who).expect("csr");
    let issued = ca
        .sign_csr(csr.csr_pem(), who, Duration::from_secs(3600))
        .expect("signed");
    MeshCredentials::from_pem(
        &issued.chain_pem(),
        &csr.private_key_pem(),
        &issued.trust_bundle_pem,
    )
    .expect("credentials")
}

/// Writes Istio's `cacerts` layout into `dir`: a P-256 root and an RSA
/// intermediate it signed (Istio's own tooling makes RSA CAs), with
/// `cert-chain.pem` = intermediate + root as `tools/certs` writes it.
fn write_istio_cacerts(dir: &Path) -> String {
    let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("root key");
    let mut root_params = CertificateParams::default();
    root_params.distinguished_name = rcgen::DistinguishedName::new();
    root_params
        .distinguished_name
        .push(DnType::OrganizationName, "Istio");
    root_params
        .distinguished_name
        .push(DnType::CommonName, "Root CA");
    root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let root = root_params.self_signed(&root_key).expect("root");
    let root_issuer = Issuer::from_params(&root_params, &root_key);

    let int_key = KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_2048).expect("rsa key");
    let mut int_params = CertificateParams::default();
    int_params.distinguished_name = rcgen::DistinguishedName::new();
    int_params
        .distinguished_name
        .push(DnType::OrganizationName, "Istio");
    int_params
        .distinguished_name
        .push(DnType::CommonName, "Intermediate CA");
    int_params
        .distinguished_name
        .push(DnType::LocalityName, "cluster1");
    int_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    int_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    int_params.use_authority_key_identifier_extension = true;
    let intermediate = int_params
        .signed_by(&int_key, &root_issuer)
        .expect("intermediate");

    fs::write(dir.join(CA_CERT_FILE), intermediate.pem()).expect("write");
    fs::write(dir.join(CA_KEY_FILE), int_key.serialize_pem()).expect("write");
    fs::write(
        dir.join(CERT_CHAIN_FILE),
        format!("{}{}", intermediate.pem(), root.pem()),
    )
    .expect("write");
    fs::write(dir.join(ROOT_CERT_FILE), root.pem()).expect("write");
    root.pem()
}

#[test]
fn self_signed_ca_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = MeshCa::load_or_create(dir.path(), TD).expect("CA");
    assert_eq!(ca.origin(), CaOrigin::SelfSignedGenerated);
    let csr = WorkloadCsr::generate(&id("reviews")).expect("csr");
    let before_restart = ca
        .sign_csr(csr.csr_pem(), &id("reviews"), Duration::ZERO)
        .expect("signed");

    let restarted = MeshCa::load_or_create(dir.path(), TD).expect("reload");
    assert_eq!(restarted.origin(), CaOrigin::SelfSignedLoaded);
    assert_eq!(restarted.trust_bundle_pem(), ca.trust_bundle_pem());
    // A certificate issued before the restart is still trusted after it.
    verify_chain(
        &certs(&before_restart.chain_pem()),
        restarted.trust_bundle_pem(),
    )
    .expect("old leaf verifies against the reloaded bundle");
}

#[test]
fn istio_cacerts_layout_signs_as_the_intermediate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root_pem = write_istio_cacerts(dir.path());
    let ca = MeshCa::load_or_create(dir.path(), TD).expect("CA from cacerts");
    assert_eq!(ca.origin(), CaOrigin::PluggedIn);
    assert_eq!(ca.trust_bundle_pem(), root_pem);

    let csr = WorkloadCsr::generate(&id("productpage")).expect("csr");
    let issued = ca
        .sign_csr(csr.csr_pem(), &id("productpage"), Duration::ZERO)
        .expect("signed");
    // leaf + cert-chain.pem (intermediate, root).
    assert_eq!(issued.cert_chain_pem.len(), 3);
    let chain_pem = fs::read_to_string(dir.path().join(CERT_CHAIN_FILE)).expect("chain");
    assert_eq!(issued.cert_chain_pem[1..].concat(), chain_pem);
    assert_eq!(issued.trust_bundle_pem, root_pem);

    let chain = certs(&issued.chain_pem());
    assert_eq!(peer_spiffe_id(&chain), Some(id("productpage")));
    verify_chain(&chain, &root_pem).expect("leaf chains to the plugged-in root");
    // Without the intermediate the leaf does not verify: the chain matters.
    assert!(verify_chain(&chain[..1], &root_pem).is_err());

    // A cert-chain.pem that does not start with ca-cert.pem is refused.
    fs::write(dir.path().join(CERT_CHAIN_FILE), &root_pem).expect("write");
    let message = MeshCa::load_or_create(dir.path(), TD)
        .expect_err("broken chain")
        .to_string();
    assert!(message.contains(CERT_CHAIN_FILE), "{message}");
}

#[test]
fn root_rotation_keeps_old_leaves_trusted() {
    let old_dir = tempfile::tempdir().expect("tempdir");
    let old = MeshCa::load_or_create(old_dir.path(), TD).expect("old CA");
    let old_leaf = {
        let csr = WorkloadCsr::generate(&id("a")).expect("csr");
        old.sign_csr(csr.csr_pem(), &id("a"), Duration::ZERO)
            .expect("signed")
    };

    // Step 2 of the rotation: sign with the new root, trust both.
    let new_dir = tempfile::tempdir().expect("tempdir");
    let new = MeshCa::load_or_create(new_dir.path(), TD).expect("new root");
    let both = format!("{}{}", old.trust_bundle_pem(), new.trust_bundle_pem());
    fs::write(new_dir.path().join(ROOT_CERT_FILE), &both).expect("write");
    let rotated = MeshCa::load_or_create(new_dir.path(), TD).expect("rotated CA");
    assert_eq!(rotated.trust_bundle().len(), 2);

    let csr = WorkloadCsr::generate(&id("b")).expect("csr");
    let new_leaf = rotated
        .sign_csr(csr.csr_pem(), &id("b"), Duration::ZERO)
        .expect("signed");
    verify_chain(&certs(&new_leaf.chain_pem()), &both).expect("new leaf trusted");
    verify_chain(&certs(&old_leaf.chain_pem()), &both).expect("old leaf still trusted");
    // Step 3: once the old root is dropped, old leaves are not.
    assert!(verify_chain(&certs(&old_leaf.chain_pem()), new.trust_bundle_pem()).is_err());
}

async fn serve_ca(ca: Arc<MeshCa>) -> Channel {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        Server::builder()
            .add_service(CertificateService::new(ca))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect")
}

#[tokio::test]
async fn grpc_create_certificate_authenticates_and_authorizes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Arc::new(MeshCa::load_or_create(dir.path(), TD).expect("CA"));
    let channel = serve_ca(ca.clone()).await;
    let reviews = id("reviews");
    let token = ca.issue_token(&reviews);
    let csr = WorkloadCsr::generate(&reviews).expect("csr");

    // The right token for the right identity: leaf first, root bundle last.
    let chain = request_certificate(
        channel.clone(),
        &token,
        csr.csr_pem(),
        Duration::from_secs(3600),
    )
    .await
    .expect("certificate");
    assert_eq!(chain.len(), 2);
    assert_eq!(
        chain.last().map(String::as_str),
        Some(ca.trust_bundle_pem())
    );
    assert!(chain.iter().all(|pem| pem.ends_with('\n')));
    let leaf = certs(&chain[0]);
    assert_eq!(peer_spiffe_id(&leaf), Some(reviews.clone()));
    let (not_before, not_after) = identity::x509::validity(&leaf[0]).expect("validity");
    let lifetime = not_after.duration_since(not_before).expect("ordered");
    assert!(
        lifetime <= Duration::from_secs(3600 + 120 + 2),
        "{lifetime:?}"
    );
    verify_chain(&leaf, ca.trust_bundle_pem()).expect("issued chain verifies");

    // No token at all.
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.expect("ready");
    let status = grpc
        .unary::<_, identity::grpc::IstioCertificateResponse, _>(
            tonic::Request::new(identity::grpc::IstioCertificateRequest {
                csr: csr.csr_pem().to_owned(),
                validity_duration: 0,
                metadata: None,
            }),
            http::uri::PathAndQuery::from_static(
                "/istio.v1.auth.IstioCertificateService/CreateCertificate",
            ),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // A token this CA did not issue.
    let stranger_dir = tempfile::tempdir().expect("tempdir");
    let stranger = MeshCa::load_or_create(stranger_dir.path(), TD).expect("other CA");
    let status = request_certificate(
        channel.clone(),
        &stranger.issue_token(&reviews),
        csr.csr_pem(),
        Duration::ZERO,
    )
    .await
    .expect_err("foreign token");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let status = request_certificate(channel.clone(), "garbage", csr.csr_pem(), Duration::ZERO)
        .await
        .expect_err("garbage token");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // reviews' token asking for ratings' identity.
    let ratings_csr = WorkloadCsr::generate(&id("ratings")).expect("csr");
    let status = request_certificate(
        channel.clone(),
        &token,
        ratings_csr.csr_pem(),
        Duration::ZERO,
    )
    .await
    .expect_err("wrong identity");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status
            .message()
            .contains("spiffe://cluster.local/ns/default/sa/ratings"),
        "{}",
        status.message()
    );

    // A CSR that is not one.
    let status = request_certificate(channel, &token, "not a csr", Duration::ZERO)
        .await
        .expect_err("bad csr");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}

/// How one mTLS exchange went, seen from each side.
struct Exchange {
    /// The client identity the server saw, or why the server gave up.
    server: Result<Option<SpiffeId>, String>,
    /// Whether the client got its echo back, or why it gave up.
    client: Result<(), String>,
}

/// One mTLS exchange over loopback TCP: the client sends four bytes and the
/// server echoes them.
async fn handshake(
    server: &MeshCredentials,
    client: &MeshCredentials,
    client_expects: &[SpiffeId],
) -> Exchange {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    let acceptor = TlsAcceptor::from(Arc::new(server_config(server).expect("server config")));
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let peer = peer_spiffe_id(tls.get_ref().1.peer_certificates().unwrap_or_default());
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        tls.write_all(&buf).await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(peer)
    });

    let connector = TlsConnector::from(Arc::new(
        client_config(client, client_expects).expect("client config"),
    ));
    let client_result = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        // The name only fills SNI; the verifier checks the SPIFFE id.
        let name =
            ServerName::try_from("reviews.default.svc.cluster.local").map_err(|e| e.to_string())?;
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        assert_eq!(&buf, b"ping");
        Ok::<_, String>(())
    }
    .await;
    let server_result = match tokio::time::timeout(Duration::from_secs(10), server_task).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(join.to_string()),
        Err(_) => Err("server timed out".to_owned()),
    };
    Exchange {
        server: server_result,
        client: client_result,
    }
}

#[tokio::test]
async fn mtls_between_workloads_exposes_the_peer_identity() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = MeshCa::load_or_create(dir.path(), TD).expect("CA");
    let server = credentials(&ca, &id("reviews"));
    let client = credentials(&ca, &id("productpage"));

    let exchange = handshake(&server, &client, &[id("ratings"), id("reviews")]).await;
    exchange.client.expect("client side");
    assert_eq!(
        exchange.server.expect("server side"),
        Some(id("productpage"))
    );
}

#[tokio::test]
async fn mtls_through_a_plugged_in_intermediate() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_istio_cacerts(dir.path());
    let ca = MeshCa::load_or_create(dir.path(), TD).expect("CA");
    let server = credentials(&ca, &id("reviews"));
    let client = credentials(&ca, &id("productpage"));
    let exchange = handshake(&server, &client, &[id("reviews")]).await;
    exchange.client.expect("client side");
    assert_eq!(
        exchange.server.expect("server side"),
        Some(id("productpage"))
    );
}

#[tokio::test]
async fn mtls_refuses_the_wrong_server_identity() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = MeshCa::load_or_create(dir.path(), TD).expect("CA");
    let server = credentials(&ca, &id("impostor"));
    let client = credentials(&ca, &id("productpage"));
    let err = handshake(&server, &client, &[id("reviews")])
        .await
        .client
        .expect_err("client must refuse an unexpected server identity");
    assert!(
        err.contains("spiffe://cluster.local/ns/default/sa/impostor")
            && err.contains("spiffe://cluster.local/ns/default/sa/reviews"),
        "{err}"
    );
}

#[tokio::test]
async fn mtls_refuses_a_client_from_another_root() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = MeshCa::load_or_create(dir.path(), TD).expect("CA");
    let other_dir = tempfile::tempdir().expect("tempdir");
    let other = MeshCa::load_or_create(other_dir.path(), TD).expect("other CA");

    let server = credentials(&ca, &id("reviews"));
    // Same identity, but signed by a root the server does not trust; the
    // client itself trusts the server's root so only the server can object.
    let mut client = credentials(&other, &id("productpage"));
    client.trust_bundle = server.trust_bundle.clone();
    let err = handshake(&server, &client, &[id("reviews")])
        .await
        .server
        .expect_err("server must refuse a client from another root");
    // Both roots are named O=cluster.local, so webpki finds the wrong root
    // by name and reports its signature as bad rather than an unknown issuer.
    assert!(err.contains("invalid peer certificate"), "{err}");
}

#[tokio::test]
async fn mtls_refuses_an_expired_client_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = MeshCa::load_or_create(dir.path(), TD).expect("CA");
    let server = credentials(&ca, &id("reviews"));

    let who = id("productpage");
    let csr = WorkloadCsr::generate(&who).expect("csr");
    let now = SystemTime::now();
    let expired = ca
        .sign_csr_with_validity(
            csr.csr_pem(),
            &who,
            now - Duration::from_secs(7200),
            now - Duration::from_secs(3600),
        )
        .expect("signed");
    let client = MeshCredentials::from_pem(
        &expired.chain_pem(),
        &csr.private_key_pem(),
        &expired.trust_bundle_pem,
    )
    .expect("credentials");
    let err = handshake(&server, &client, &[id("reviews")])
        .await
        .server
        .expect_err("server must refuse an expired client certificate");
    assert!(err.to_lowercase().contains("expired"), "{err}");
}
