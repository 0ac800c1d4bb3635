//! `envoy.filters.network.ext_authz`: before a TCP chain's terminal filter
//! proxies anything, asks a gRPC authorization service
//! (`envoy.service.auth.v3.Authorization/Check`, source and destination
//! peers only) whether the connection may proceed, and closes it when
//! denied, or on errors unless `failure_mode_allow`. Like Envoy it decides
//! on the first data, after the network RBAC filters, so that
//! `filter_enabled_metadata` sees their shadow results: Istio's CUSTOM
//! action for TCP is network RBAC shadow rules followed by this filter.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use envoy_types::pb::envoy::extensions::filters::network::ext_authz::v3::ExtAuthz as Proto;
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, attribute_context,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use crate::http::filters::ext_authz::{
    Decision, GrpcAuthorizer, check_api_version, compile_enabled_metadata, peer,
};
use crate::listener::peer::PeerIdentity;
use crate::rbac::DynamicMetadata;
use crate::rbac::metadata::MetadataMatcher;
use crate::snapshot::SharedSnapshot;

pub const TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.network.ext_authz.v3.ExtAuthz";

/// Envoy's `ext_authz.<stat_prefix>.*` counters of the network filter.
#[derive(Debug, Default)]
pub struct Stats {
    pub total: AtomicU64,
    pub ok: AtomicU64,
    pub denied: AtomicU64,
    pub error: AtomicU64,
    pub failure_mode_allowed: AtomicU64,
    pub disabled: AtomicU64,
}

#[derive(Debug)]
pub struct NetworkExtAuthz {
    authorizer: GrpcAuthorizer,
    failure_mode_allow: bool,
    filter_enabled_metadata: Option<MetadataMatcher>,
    include_tls_session: bool,
    stat_prefix: String,
    pub stats: Stats,
}

/// What the filter knows of the downstream connection.
#[derive(Debug, Clone, Copy)]
pub struct Connection<'a> {
    pub remote: SocketAddr,
    pub local: SocketAddr,
    pub peer: Option<&'a PeerIdentity>,
    pub sni: Option<&'a str>,
}

fn refuse(cond: bool, field: &str, why: &str) -> Result<(), (String, String)> {
    if cond {
        Err((field.to_string(), why.to_string()))
    } else {
        Ok(())
    }
}

impl NetworkExtAuthz {
    /// Compiles the filter config; errors carry a field path inside it.
    pub fn compile(any: &Any) -> Result<Self, (String, String)> {
        let p = Proto::decode(any.value.as_slice())
            .map_err(|e| (String::new(), format!("invalid ExtAuthz: {e}")))?;
        refuse(
            p.include_peer_certificate,
            "include_peer_certificate",
            "sending the peer certificate to the authorization service is not supported",
        )?;
        refuse(
            !p.bootstrap_metadata_labels_key.is_empty(),
            "bootstrap_metadata_labels_key",
            "destination labels from node metadata are not supported",
        )?;
        refuse(
            p.send_tls_alert_on_denial,
            "send_tls_alert_on_denial",
            "TLS alerts on denial are not supported",
        )?;
        refuse(
            !p.metadata_context_namespaces.is_empty(),
            "metadata_context_namespaces",
            "metadata context is not supported by the network filter",
        )?;
        check_api_version(p.transport_api_version)?;
        let grpc = p
            .grpc_service
            .as_ref()
            .ok_or_else(|| ("grpc_service".to_string(), "is required".to_string()))?;
        let filter_enabled_metadata = compile_enabled_metadata(p.filter_enabled_metadata.as_ref())?;
        Ok(Self {
            authorizer: GrpcAuthorizer::compile(grpc, "grpc_service")?,
            failure_mode_allow: p.failure_mode_allow,
            filter_enabled_metadata,
            include_tls_session: p.include_tls_session,
            stat_prefix: p.stat_prefix.clone(),
            stats: Stats::default(),
        })
    }

    /// Counters as Envoy names them (`ext_authz.<stat_prefix>.*`).
    pub fn stat_values(&self) -> Vec<(String, u64)> {
        let s = &self.stats;
        [
            ("total", &s.total),
            ("ok", &s.ok),
            ("denied", &s.denied),
            ("error", &s.error),
            ("failure_mode_allowed", &s.failure_mode_allowed),
            ("disabled", &s.disabled),
        ]
        .into_iter()
        .map(|(k, v)| {
            (
                format!("ext_authz.{}.{k}", self.stat_prefix),
                v.load(Ordering::Relaxed),
            )
        })
        .collect()
    }

    fn request(&self, conn: Connection<'_>) -> CheckRequest {
        let principal = conn
            .peer
            .map(|p| {
                p.uri_sans
                    .first()
                    .cloned()
                    .unwrap_or_else(|| p.subject.clone())
            })
            .unwrap_or_default();
        CheckRequest {
            attributes: Some(AttributeContext {
                source: Some(peer(conn.remote, principal)),
                destination: Some(peer(conn.local, String::new())),
                tls_session: (self.include_tls_session && conn.sni.is_some()).then(|| {
                    attribute_context::TlsSession {
                        sni: conn.sni.unwrap_or_default().to_string(),
                    }
                }),
                ..Default::default()
            }),
        }
    }

    /// Whether the connection may go on.
    pub async fn allows(
        &self,
        conn: Connection<'_>,
        metadata: &DynamicMetadata,
        snapshot: &SharedSnapshot,
    ) -> bool {
        if self
            .filter_enabled_metadata
            .as_ref()
            .is_some_and(|m| !m.matches(metadata))
        {
            self.stats.disabled.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        self.stats.total.fetch_add(1, Ordering::Relaxed);
        let request = self.request(conn);
        match self.authorizer.check(snapshot, &request).await {
            Decision::Allowed => {
                self.stats.ok.fetch_add(1, Ordering::Relaxed);
                true
            }
            Decision::Denied => {
                self.stats.denied.fetch_add(1, Ordering::Relaxed);
                false
            }
            Decision::Error => {
                self.stats.error.fetch_add(1, Ordering::Relaxed);
                if self.failure_mode_allow {
                    self.stats
                        .failure_mode_allowed
                        .fetch_add(1, Ordering::Relaxed);
                }
                self.failure_mode_allow
            }
        }
    }
}

/// Runs the chain's network ext_authz filters in order; `false`: close.
pub async fn gate(
    filters: &[std::sync::Arc<NetworkExtAuthz>],
    conn: Connection<'_>,
    metadata: &DynamicMetadata,
    snapshot: &SharedSnapshot,
) -> bool {
    for f in filters {
        if !f.allows(conn, metadata, snapshot).await {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::{GrpcService, grpc_service};
    use prost::Name;

    fn any(p: &Proto) -> Any {
        Any {
            type_url: Proto::type_url(),
            value: p.encode_to_vec(),
        }
    }

    fn proto() -> Proto {
        Proto {
            stat_prefix: "tcp".into(),
            grpc_service: Some(GrpcService {
                target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                    grpc_service::EnvoyGrpc {
                        cluster_name: "authz".into(),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn compiles_and_refuses_unsupported_fields() {
        assert_eq!(
            TYPE_URL,
            format!("type.googleapis.com/{}", Proto::full_name())
        );
        assert!(NetworkExtAuthz::compile(&any(&proto())).is_ok());
        let bad = Proto {
            send_tls_alert_on_denial: true,
            ..proto()
        };
        assert_eq!(
            NetworkExtAuthz::compile(&any(&bad)).err().map(|e| e.0),
            Some("send_tls_alert_on_denial".to_string())
        );
        let none = Proto {
            grpc_service: None,
            ..proto()
        };
        assert_eq!(
            NetworkExtAuthz::compile(&any(&none)).err().map(|e| e.0),
            Some("grpc_service".to_string())
        );
    }

    #[tokio::test]
    async fn unreachable_authorizer_closes_unless_failure_mode_allow() {
        let conn = Connection {
            remote: ([127, 0, 0, 2], 5000).into(),
            local: ([127, 0, 0, 1], 9000).into(),
            peer: None,
            sni: None,
        };
        let snapshot = SharedSnapshot::default();
        let md = DynamicMetadata::default();
        let closed = NetworkExtAuthz::compile(&any(&proto())).expect("config");
        assert!(!closed.allows(conn, &md, &snapshot).await);
        let open = NetworkExtAuthz::compile(&any(&Proto {
            failure_mode_allow: true,
            ..proto()
        }))
        .expect("config");
        assert!(open.allows(conn, &md, &snapshot).await);
        assert!(
            open.stat_values()
                .contains(&("ext_authz.tcp.failure_mode_allowed".to_string(), 1))
        );
    }
}
