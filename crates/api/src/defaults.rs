//! Istio's documented defaults, for translators to apply where a field is
//! unset. The object model keeps "unset" as `None`; these constants say
//! what "unset" means.

use std::time::Duration;

/// Namespace of an object whose metadata has none.
pub const DEFAULT_NAMESPACE: &str = "default";
/// MeshConfig `rootNamespace`.
pub const ROOT_NAMESPACE: &str = "istio-system";
/// MeshConfig `trustDomain`.
pub const TRUST_DOMAIN: &str = "cluster.local";
/// Retry attempts on an HTTP route without a `retries` policy.
pub const RETRY_ATTEMPTS: u32 = 2;
/// `retryOn` conditions on an HTTP route without one.
pub const RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";
/// Whether retries go to hosts in other localities by default.
pub const RETRY_REMOTE_LOCALITIES: bool = false;
/// Route timeout when unset: none (the route waits indefinitely).
pub const ROUTE_TIMEOUT: Option<Duration> = None;
/// Redirect status when `redirectCode` is unset.
pub const REDIRECT_CODE: u32 = 301;
/// Mirroring percentage when neither `mirrorPercentage` nor `mirrorPercent` is set.
pub const MIRROR_PERCENTAGE: f64 = 100.0;
/// Connect timeout of upstream clusters (MeshConfig `connectTimeout`).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Outlier detection ejection sweep interval.
pub const OUTLIER_INTERVAL: Duration = Duration::from_secs(10);
/// Outlier detection base ejection time.
pub const OUTLIER_BASE_EJECTION_TIME: Duration = Duration::from_secs(30);
/// Outlier detection maximum ejection percent.
pub const OUTLIER_MAX_EJECTION_PERCENT: u32 = 10;
/// Auto mTLS on by default (MeshConfig `enableAutoMtls`).
pub const ENABLE_AUTO_MTLS: bool = true;
/// MeshConfig `outboundTrafficPolicy.mode`.
pub const OUTBOUND_TRAFFIC_POLICY: &str = "ALLOW_ANY";
/// PeerAuthentication mode when none applies.
pub const PEER_AUTHENTICATION_MODE: &str = "PERMISSIVE";
/// The gateway name that means "all sidecars".
pub const MESH_GATEWAY: &str = "mesh";
/// Workload certificate lifetime.
pub const WORKLOAD_CERT_TTL: Duration = Duration::from_secs(24 * 3600);
/// Protocol sniffing timeout (MeshConfig `protocolDetectionTimeout`).
pub const PROTOCOL_DETECTION_TIMEOUT: Duration = Duration::from_millis(0);

/// gRPC status names in code order (index = code), as VirtualService
/// `fault.abort.grpcStatus` may name them.
pub const GRPC_STATUS_NAMES: &[&str] = &[
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];
