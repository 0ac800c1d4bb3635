//! Envoy (v3 xDS) route tables compiled for the data path.
//!
//! [`RouteTable::compile`] turns a `RouteConfiguration` into an immutable, `Send + Sync`
//! structure; [`RouteTable::find`] selects virtual host, route and cluster per request
//! without allocating in the common case (hosts are lowercased on the stack, paths and
//! headers are compared in place, regexes are compiled once). Semantics follow Envoy 1.40.
//!
//! # Implemented
//! * **Virtual hosts**: exact → suffix wildcard (longest first) → prefix wildcard (longest
//!   first) → `*`; case-insensitive; port kept in the host unless
//!   `ignore_port_in_host_matching`; duplicate domains and a second `*` are rejected;
//!   `vhost_header`; `require_tls` (synthetic 301 to https, no header mutations).
//! * **Route match**: `prefix`, `path`, `safe_regex` (full match), `path_separated_prefix`,
//!   `connect_matcher`, `case_sensitive`, `headers` (all HeaderMatcher variants,
//!   `invert_match`, `treat_missing_header_as_empty`, multi-values joined with `,`,
//!   pseudo-headers `:authority`/`:path`/`:method`/`:scheme`), `query_parameters`
//!   (first value, not URL-decoded), `cookies`, `grpc`, `runtime_fraction` (default value
//!   only: `random % D < N`). Path matching ignores query and fragment;
//!   `ignore_path_parameters_in_path_matching` cuts the path at the first `;`.
//! * **Route action**: `cluster`, `cluster_header`, `weighted_clusters` (incl. per-cluster
//!   `cluster_header`, header mutations, `host_rewrite_literal`, `typed_per_filter_config`,
//!   `random_value_specifier.header_name`), `cluster_not_found_response_code`,
//!   `prefix_rewrite`, `regex_rewrite`, `host_rewrite_literal`/`auto_host_rewrite`/
//!   `host_rewrite_header`/`host_rewrite_path_regex`, `append_x_forwarded_host`, `timeout`
//!   (15s default, 0 disables), `idle_timeout`, `request_mirror_policies` (most specific
//!   non-empty level wins), `hash_policy` (see [`HashPolicy`]). Exposed raw for the proxy: `retry_policy`/`hedge_policy`
//!   (route, else virtual host), `max_stream_duration`, `upgrade_configs`
//!   and the whole `RouteAction` (`priority`, `rate_limits`, `max_grpc_timeout`,
//!   `metadata_match`, `cors`, `flush_timeout`, `early_data_policy`, ...).
//! * **Redirect**: every field except `path_rewrite` (see [`Redirect`] for port rules).
//! * **Direct response**: status 200..599, body from inline string/bytes, file or
//!   environment variable (read at compile time), limited by
//!   `max_direct_response_body_size_bytes` (4096 default).
//! * **Header mutations** at weighted-cluster, route, virtual-host and route-configuration
//!   level with `append_action`, legacy `append`, `keep_empty_value`, removals, and Envoy
//!   command operators (see [`Variable`], [`OTHER_OPERATORS`]); `%%` escapes `%`.
//!   `most_specific_header_mutations_wins`. `internal_only_headers` is exposed.
//!
//! # Rejected as unsupported ([`RouteError::Unsupported`])
//! `vhds`, `cluster_specifier_plugins`, `route_specifiers` (all levels),
//! `VirtualHost.matcher`, `retry_policy_typed_config` (route and virtual host),
//! `Route.filter_action`, match `path_match_policy`/`tls_context`/`dynamic_metadata`/
//! `filter_state`, `StringMatcher.custom`, `RouteAction.cluster_specifier_plugin`/
//! `inline_cluster_specifier_plugin`/`path_rewrite_policy`/`path_rewrite`/`host_rewrite`
//! (formatter variant)/`internal_redirect_policy`/`internal_redirect_action:
//! HANDLE_INTERNAL_REDIRECT`, `weighted_clusters.use_hash_policy: true`,
//! `RedirectAction.path_rewrite`, `DirectResponseAction.body_format`, and unknown
//! command operators in header values.
//!
//! # Ignored (tuning/observability only)
//! `metadata`, `decorator` (exposed), `tracing`, `stat_prefix`, `virtual_clusters`,
//! `per_request_buffer_limit_bytes`, `request_body_buffer_limit`, runtime keys
//! (`runtime_key`, `runtime_key_prefix`; we have no runtime), `validate_clusters` (exposed),
//! `weighted_clusters.total_weight` (deprecated; the sum of weights is used).

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod action;
mod domain;
mod error;
mod format;
mod hash_policy;
mod headers;
mod matcher;
mod redirect;
mod request;
mod rewrite;
mod string_match;
mod table;

pub use action::{
    Action, ClusterChoice, ClusterSpecifier, ClusterTarget, DEFAULT_MAX_DIRECT_RESPONSE_BODY,
    DEFAULT_ROUTE_TIMEOUT, Forward, HostRewrite, MirrorPolicy, Weighted, WeightedClusterEntry,
};
pub use error::RouteError;
pub use format::{FormatContext, OTHER_OPERATORS, Variable};
pub use hash_policy::{Downstream, HashPolicy, RequestHash, generated_cookie_value};
pub use headers::{AppendAction, HeaderMutations};
pub use matcher::Fraction;
pub use redirect::Redirect;
pub use request::RequestView;
pub use rewrite::RegexSubstitution;
pub use table::{RouteEntry, RouteTable, Selected, TlsRequirement, VirtualHostEntry};

#[cfg(test)]
mod tests;
