//! Which transport (plaintext or TLS) each upstream host gets.
//!
//! A cluster has a default `transport_socket` and may have
//! `transport_socket_matches`: the first match whose `match` fields all
//! equal the endpoint's `envoy.transport_socket_match` metadata (or, failing
//! that, its locality's) decides. Istio's auto-mTLS is built on this: mesh
//! endpoints carry `tlsMode: istio` and get mTLS, the others plaintext.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster as ClusterProto;
use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::google::protobuf::Struct;
use prost::Message;

use crate::tls::client::{Transport, UpstreamTls};
use crate::tls::{Secrets, TlsError};

/// The filter-metadata key Envoy matches transport sockets on.
const MATCH_KEY: &str = "envoy.transport_socket_match";

#[derive(Debug, Clone)]
pub struct Transports {
    default: Arc<Transport>,
    matches: Vec<(Struct, Arc<Transport>)>,
}

/// The transports of a cluster, built with the current secrets; indexes
/// as [`Transports::select`] returns them.
#[derive(Debug, Clone, Default)]
pub struct BuiltTransports {
    tls: Vec<Option<Arc<UpstreamTls>>>,
    /// Identifies the secrets they were built from: a cluster is rebuilt
    /// (new connections use new certificates) when it changes.
    pub fingerprint: u64,
}

impl BuiltTransports {
    pub fn get(&self, index: usize) -> Option<Arc<UpstreamTls>> {
        self.tls.get(index).cloned().flatten()
    }
}

impl Transports {
    pub fn compile(proto: &ClusterProto) -> Result<Self, (String, String)> {
        let default = Transport::from_proto(proto.transport_socket.as_ref())
            .map_err(|e| field_error("transport_socket", e))?;
        let mut matches = Vec::with_capacity(proto.transport_socket_matches.len());
        for (i, m) in proto.transport_socket_matches.iter().enumerate() {
            let field = format!("transport_socket_matches[{i}].transport_socket");
            let t = Transport::from_proto(m.transport_socket.as_ref())
                .map_err(|e| field_error(&field, e))?;
            matches.push((m.r#match.clone().unwrap_or_default(), Arc::new(t)));
        }
        Ok(Self {
            default: Arc::new(default),
            matches,
        })
    }

    fn all(&self) -> impl Iterator<Item = &Arc<Transport>> {
        std::iter::once(&self.default).chain(self.matches.iter().map(|(_, t)| t))
    }

    /// SDS secrets any of the transports need.
    pub fn secret_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.all().flat_map(|t| t.secret_names()).collect();
        names.sort();
        names.dedup();
        names
    }

    /// Builds every transport. `MissingSecret` means the cluster must warm.
    pub fn build(&self, secrets: &Secrets) -> Result<BuiltTransports, (String, TlsError)> {
        let mut out = Vec::new();
        for (i, t) in self.all().enumerate() {
            let field = if i == 0 {
                "transport_socket".to_string()
            } else {
                format!("transport_socket_matches[{}].transport_socket", i - 1)
            };
            out.push(t.build(secrets).map_err(|e| (field, e))?);
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for name in self.secret_names() {
            if let Some(secret) = secrets.get(&name) {
                name.hash(&mut h);
                secret.encode_to_vec().hash(&mut h);
            }
        }
        Ok(BuiltTransports {
            tls: out,
            fingerprint: h.finish(),
        })
    }

    /// The index (0 = the default transport) for an endpoint with this
    /// metadata, falling back to its locality's.
    pub fn select(&self, endpoint: Option<&Metadata>, locality: Option<&Metadata>) -> usize {
        if self.matches.is_empty() {
            return 0;
        }
        for md in [endpoint, locality].into_iter().flatten() {
            if let Some(fields) = md.filter_metadata.get(MATCH_KEY)
                && let Some(i) = self.matches.iter().position(|(m, _)| subset(m, fields))
            {
                return i + 1;
            }
        }
        // Without metadata an empty `match` still matches (Istio's plaintext fallback).
        self.matches
            .iter()
            .position(|(m, _)| m.fields.is_empty())
            .map_or(0, |i| i + 1)
    }

    /// The transport at `index`, to tell whether a host's transport changed.
    pub fn transport(&self, index: usize) -> &Arc<Transport> {
        if index == 0 {
            &self.default
        } else {
            self.matches
                .get(index - 1)
                .map_or(&self.default, |(_, t)| t)
        }
    }
}

fn subset(want: &Struct, have: &Struct) -> bool {
    want.fields
        .iter()
        .all(|(k, v)| have.fields.get(k) == Some(v))
}

/// A TLS error as the `(field, message)` of a cluster NACK.
pub(crate) fn field_error(field: &str, e: TlsError) -> (String, String) {
    match e {
        TlsError::Invalid { field: f, message } if f.is_empty() => (field.to_string(), message),
        TlsError::Invalid { field: f, message } => (format!("{field}.{f}"), message),
        TlsError::MissingSecret(s) => (field.to_string(), format!("waiting for secret '{s}'")),
    }
}
