//! Istio's certificate API, `istio.v1.auth.IstioCertificateService/CreateCertificate`,
//! so that pilot-agent, ztunnel and the Trellis proxy can all get
//! certificates from the Trellis CA.
//!
//! The messages are written by hand from istio/api `security/v1alpha1/ca.proto`
//! (field 2, the old `subject_id`, is gone upstream and left unused here):
//!
//! ```proto
//! message IstioCertificateRequest {
//!   string csr = 1;
//!   int64 validity_duration = 3;          // seconds
//!   google.protobuf.Struct metadata = 4;
//! }
//! message IstioCertificateResponse {
//!   repeated string cert_chain = 1;       // leaf first, root last
//! }
//! ```
//!
//! The caller authenticates with `authorization: Bearer <token>` (see
//! [`crate::token`]); the token decides the only identity it may be issued.
//! As in Istio's server, the response holds one certificate per element for
//! the chain and the whole trust bundle, unsplit, as the last element.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::body::Body;
use tonic::codegen::BoxFuture;
use tonic::metadata::MetadataValue;
use tonic::server::{NamedService, UnaryService};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::ca::MeshCa;
use crate::spiffe::SpiffeId;

pub const SERVICE_NAME: &str = "istio.v1.auth.IstioCertificateService";
const METHOD_NAME: &str = "CreateCertificate";
const CREATE_CERTIFICATE_PATH: &str = "/istio.v1.auth.IstioCertificateService/CreateCertificate";

#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateRequest {
    /// PEM-encoded PKCS#10 certificate request.
    #[prost(string, tag = "1")]
    pub csr: String,
    /// Requested validity in seconds; zero or negative means the CA default.
    #[prost(int64, tag = "3")]
    pub validity_duration: i64,
    /// Opaque node metadata (Istio: WorkloadName, WorkloadIP, ClusterID,
    /// ImpersonatedIdentity). Accepted and ignored: a token-authenticated
    /// caller cannot impersonate.
    #[prost(message, optional, tag = "4")]
    pub metadata: Option<prost_types::Struct>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateResponse {
    /// PEM certificates: leaf first, root(s) last.
    #[prost(string, repeated, tag = "1")]
    pub cert_chain: Vec<String>,
}

/// The gRPC service; add it to a `tonic::transport::Server`.
#[derive(Clone, Debug)]
pub struct CertificateService {
    ca: Arc<MeshCa>,
}

impl CertificateService {
    pub fn new(ca: Arc<MeshCa>) -> Self {
        Self { ca }
    }

    /// `CreateCertificate` without the HTTP/2 framing.
    pub fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let caller = self.authenticate(&request)?;
        let request = request.into_inner();
        let ttl = Duration::from_secs(u64::try_from(request.validity_duration).unwrap_or(0));
        let issued = self.ca.sign_csr(&request.csr, &caller, ttl).map_err(|e| {
            tracing::warn!(%caller, error = %e, "refused certificate request");
            if e.is_permission_denied() {
                Status::permission_denied(e.to_string())
            } else if e.is_invalid_request() {
                Status::invalid_argument(e.to_string())
            } else {
                Status::internal(e.to_string())
            }
        })?;
        tracing::info!(%caller, not_after = ?issued.not_after, "issued workload certificate");
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: issued.istio_cert_chain(),
        }))
    }

    fn authenticate<T>(&self, request: &Request<T>) -> Result<SpiffeId, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .ok_or_else(|| Status::unauthenticated("missing authorization: Bearer <token>"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|value| {
                let (scheme, token) = value.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .ok_or_else(|| {
                Status::unauthenticated("authorization header is not of the form: Bearer <token>")
            })?;
        self.ca.verify_token(token).map_err(|e| {
            tracing::warn!(error = %e, "rejected bearer token on certificate request");
            Status::unauthenticated(format!("invalid bearer token: {e}"))
        })
    }
}

impl NamedService for CertificateService {
    const NAME: &'static str = SERVICE_NAME;
}

impl tower::Service<http::Request<Body>> for CertificateService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if req.uri().path() != CREATE_CERTIFICATE_PATH {
            return Box::pin(async move { Ok(Status::unimplemented("").into_http()) });
        }
        let method = CreateCertificate(self.clone());
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.unary(method, req).await)
        })
    }
}

struct CreateCertificate(CertificateService);

impl UnaryService<IstioCertificateRequest> for CreateCertificate {
    type Response = IstioCertificateResponse;
    type Future = std::future::Ready<Result<Response<Self::Response>, Status>>;

    fn call(&mut self, request: Request<IstioCertificateRequest>) -> Self::Future {
        // Signing one ECDSA certificate takes microseconds; no need to leave
        // the runtime thread.
        std::future::ready(self.0.create_certificate(request))
    }
}

/// Asks the CA at `channel` to sign `csr_pem`, authenticating with `token`.
/// Returns Istio's `cert_chain`: leaf first, trust bundle last.
pub async fn request_certificate(
    channel: Channel,
    token: &str,
    csr_pem: &str,
    ttl: Duration,
) -> Result<Vec<String>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("CA is not reachable: {e}")))?;
    let mut request = Request::new(IstioCertificateRequest {
        csr: csr_pem.to_owned(),
        validity_duration: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
        metadata: None,
    });
    let bearer = MetadataValue::try_from(format!("Bearer {token}"))
        .map_err(|_| Status::invalid_argument("token is not a valid header value"))?;
    request.metadata_mut().insert("authorization", bearer);
    request
        .extensions_mut()
        .insert(tonic::GrpcMethod::new(SERVICE_NAME, METHOD_NAME));
    let response: Response<IstioCertificateResponse> = grpc
        .unary(
            request,
            http::uri::PathAndQuery::from_static(CREATE_CERTIFICATE_PATH),
            tonic_prost::ProstCodec::default(),
        )
        .await?;
    Ok(response.into_inner().cert_chain)
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    #[test]
    fn wire_format_matches_istio_field_numbers() {
        let req = IstioCertificateRequest {
            csr: "x".into(),
            validity_duration: 60,
            metadata: Some(prost_types::Struct::default()),
        };
        // csr: field 1 length-delimited (0x0a), validity_duration: field 3
        // varint (0x18), metadata: field 4 length-delimited (0x22).
        assert_eq!(req.encode_to_vec(), vec![0x0a, 1, b'x', 0x18, 60, 0x22, 0]);
        let resp = IstioCertificateResponse {
            cert_chain: vec!["a".into(), "b".into()],
        };
        assert_eq!(resp.encode_to_vec(), vec![0x0a, 1, b'a', 0x0a, 1, b'b']);
    }
}
