//! Workload identity for Trellis: SPIFFE ids, the mesh CA, and the TLS
//! configs that use its certificates.
//!
//! How a workload gets its identity:
//!
//! 1. `trellis up` (or the control plane) asks the [`MeshCa`] for a bearer
//!    token for the workload's [`SpiffeId`] ([`token`]) and hands it to the
//!    workload's proxy.
//! 2. The proxy generates its own key and a CSR for that id ([`csr`]); the
//!    key never leaves it.
//! 3. It calls Istio's `CreateCertificate` ([`grpc`]) on the control plane
//!    (port 15012) with the token; the CA checks that the CSR asks for exactly
//!    the token's identity and signs it ([`ca`]).
//! 4. The proxy builds its mTLS configs from the chain, its key and the trust
//!    bundle ([`tls`]), and renews at about half life ([`csr::refresh_at`]).
//!
//! All cryptography is aws-lc-rs; nothing here links `ring`.

pub mod ca;
pub mod csr;
pub mod grpc;
pub mod spiffe;
pub mod tls;
pub mod token;
pub mod x509;

pub use ca::{CaError, CaOrigin, IssuedCert, MeshCa, SignError};
pub use csr::{WorkloadCsr, refresh_at};
pub use grpc::{CertificateService, request_certificate};
pub use spiffe::{SpiffeId, SpiffeIdError};
pub use tls::{MeshCredentials, TlsError, client_config, peer_spiffe_id, server_config};
pub use token::{TokenError, TokenKey};
