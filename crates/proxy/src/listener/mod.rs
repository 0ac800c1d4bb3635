//! Listeners: what a `Listener` resource compiles to, and the manager that
//! binds, accepts, picks a filter chain and runs it.

pub mod chain_match;
pub mod inspect;
mod manager;
pub mod network_ext_authz;
pub mod network_rbac;
pub mod original_dst;
pub mod peer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::transport_socket;
use envoy_types::pb::envoy::config::listener::v3::{
    FilterChain, Listener, filter, listener_filter,
};

pub use manager::ListenerManager;

use crate::addr;
use crate::duration::duration_or;
use crate::error::{ConfigError, ErrorScope};
use crate::http::HcmConfig;
use crate::tcp_proxy::TcpProxy;
use crate::tls::{self, Secrets, TlsError};
use chain_match::ChainMatch;

const TLS_INSPECTOR: &str = "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector";
const HTTP_INSPECTOR: &str = "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector";
const ORIGINAL_DST: &str = "envoy.extensions.filters.listener.original_dst.v3.OriginalDst";

/// The network filter that ends a chain.
#[derive(Debug)]
pub enum Terminal {
    Http(Arc<HcmConfig>),
    Tcp(Arc<TcpProxy>),
}

#[derive(Debug)]
pub struct CompiledChain {
    pub name: String,
    pub matcher: ChainMatch,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// `envoy.filters.network.rbac` filters before the terminal, in order.
    pub network_rbac: Vec<Arc<crate::rbac::network::NetworkRbac>>,
    /// `envoy.filters.network.ext_authz` filters, run after the RBAC ones.
    pub network_ext_authz: Vec<Arc<network_ext_authz::NetworkExtAuthz>>,
    pub terminal: Terminal,
}

#[derive(Debug)]
pub struct ListenerConfig {
    pub name: String,
    pub address: SocketAddr,
    pub bind_to_port: bool,
    pub use_original_dst: bool,
    pub tls_inspector: bool,
    pub http_inspector: bool,
    pub original_dst_filter: bool,
    pub inspect_timeout: Duration,
    pub chains: Vec<CompiledChain>,
    pub matchers: Vec<ChainMatch>,
    pub default_chain: Option<CompiledChain>,
    pub proto: Listener,
}

/// What a listener waits for before it can serve (Envoy's warming).
#[derive(Debug, Default)]
pub struct Dependencies {
    pub routes: Vec<String>,
    pub secrets: Vec<String>,
}

impl ListenerConfig {
    /// Compiles a listener. `Ok(Err(missing))` means the listener is valid but
    /// waits for an SDS secret.
    pub fn compile(
        proto: &Listener,
        secrets: &Secrets,
    ) -> Result<Result<Self, String>, ConfigError> {
        let scope = ErrorScope::new("listener", &proto.name);
        if proto.name.is_empty() {
            return Err(scope.err("name", "must not be empty"));
        }
        let address = proto
            .address
            .as_ref()
            .ok_or_else(|| scope.err("address", "is required"))?;
        let address = addr::listen_addr(address).map_err(|m| scope.err("address", m))?;
        if proto.filter_chain_matcher.is_some() {
            return Err(scope.err(
                "filter_chain_matcher",
                "the unified matcher API is not supported; use filter_chain_match",
            ));
        }
        let mut tls_inspector = false;
        let mut http_inspector = false;
        let mut original_dst_filter = false;
        for (i, lf) in proto.listener_filters.iter().enumerate() {
            let field = format!("listener_filters[{i}]");
            let type_url = match &lf.config_type {
                Some(listener_filter::ConfigType::TypedConfig(any)) => {
                    any.type_url.rsplit('/').next().unwrap_or("")
                }
                _ => return Err(scope.err(format!("{field}.typed_config"), "is required")),
            };
            match type_url {
                TLS_INSPECTOR => tls_inspector = true,
                HTTP_INSPECTOR => http_inspector = true,
                ORIGINAL_DST => original_dst_filter = true,
                other => {
                    return Err(scope.err(
                        format!("{field}.typed_config"),
                        format!("unsupported listener filter type '{other}'"),
                    ));
                }
            }
        }
        let mut chains = Vec::with_capacity(proto.filter_chains.len());
        let mut seen_matches: Vec<Vec<u8>> = Vec::new();
        for (i, fc) in proto.filter_chains.iter().enumerate() {
            let field = format!("filter_chains[{i}]");
            let key =
                prost::Message::encode_to_vec(&fc.filter_chain_match.clone().unwrap_or_default());
            if seen_matches.contains(&key) {
                return Err(scope.err(
                    format!("{field}.filter_chain_match"),
                    "multiple filter chains with the same matching rules are defined",
                ));
            }
            seen_matches.push(key);
            match compile_chain(fc, &scope, &field, secrets)? {
                Ok(c) => chains.push(c),
                Err(missing) => return Ok(Err(missing)),
            }
        }
        let default_chain = match &proto.default_filter_chain {
            None => None,
            Some(fc) => match compile_chain(fc, &scope, "default_filter_chain", secrets)? {
                Ok(c) => Some(c),
                Err(missing) => return Ok(Err(missing)),
            },
        };
        if chains.is_empty() && default_chain.is_none() {
            return Err(scope.err("filter_chains", "at least one filter chain is required"));
        }
        // Tracing names and kinds its spans by the listener's direction.
        for c in chains.iter().chain(default_chain.iter()) {
            if let Terminal::Http(hcm) = &c.terminal {
                hcm.set_traffic_direction(proto.traffic_direction);
            }
        }
        let matchers = chains.iter().map(|c| c.matcher.clone()).collect();
        Ok(Ok(Self {
            name: proto.name.clone(),
            address,
            bind_to_port: proto.bind_to_port.map(|b| b.value).unwrap_or(true),
            use_original_dst: proto.use_original_dst.map(|b| b.value).unwrap_or(false),
            tls_inspector,
            http_inspector,
            original_dst_filter,
            // Envoy: 0 disables the timeout (Istio sets it so).
            inspect_timeout: match duration_or(
                proto.listener_filters_timeout.as_ref(),
                Duration::from_secs(15),
            ) {
                d if d.is_zero() => Duration::from_secs(365 * 24 * 3600),
                d => d,
            },
            chains,
            matchers,
            default_chain,
            proto: proto.clone(),
        }))
    }

    /// RDS names and SDS secrets this listener needs before it can serve.
    pub fn dependencies(proto: &Listener) -> Dependencies {
        let mut deps = Dependencies::default();
        let all = proto
            .filter_chains
            .iter()
            .chain(proto.default_filter_chain.iter());
        for fc in all {
            for f in &fc.filters {
                if let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type
                    && any.type_url == crate::http::hcm::TYPE_URL
                    && let Ok(hcm) = <envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager as prost::Message>::decode(any.value.as_slice())
                    && let Some(envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier::Rds(rds)) = hcm.route_specifier
                {
                    deps.routes.push(rds.route_config_name);
                }
            }
            if let Some(ts) = &fc.transport_socket
                && let Some(transport_socket::ConfigType::TypedConfig(any)) = &ts.config_type
                && any.type_url == tls::DOWNSTREAM_TLS_CONTEXT
            {
                deps.secrets.extend(tls::secret_names(any));
            }
        }
        deps
    }

    /// The chain for a connection, falling back to the default chain.
    pub fn select(&self, facts: &chain_match::ConnectionFacts) -> Option<&CompiledChain> {
        match chain_match::select(&self.matchers, facts) {
            Some(i) => self.chains.get(i),
            None => self.default_chain.as_ref(),
        }
    }

    /// Envoy validates the clusters named by inline route configurations
    /// (`validate_clusters` defaults to true unless the routes come from RDS):
    /// a route to a cluster that does not exist rejects the listener.
    pub fn check_route_clusters(&self, exists: &dyn Fn(&str) -> bool) -> Result<(), ConfigError> {
        let scope = ErrorScope::new("listener", &self.name);
        for chain in self.chains.iter().chain(self.default_chain.iter()) {
            let Terminal::Http(hcm) = &chain.terminal else {
                continue;
            };
            let crate::http::hcm::RouteSource::Inline(table) = &hcm.routes else {
                continue;
            };
            if table.validate_clusters() == Some(false) {
                continue;
            }
            for name in route_clusters(table) {
                if !exists(name) {
                    return Err(
                        scope.err("route_config", format!("route: unknown cluster '{name}'"))
                    );
                }
            }
        }
        Ok(())
    }

    pub fn needs_tls_inspection(&self) -> bool {
        self.tls_inspector
    }
}

/// The clusters a route table names literally (not via request headers).
pub fn route_clusters(table: &route::RouteTable) -> Vec<&str> {
    let mut out = Vec::new();
    for vh in table.virtual_hosts() {
        for r in &vh.routes {
            let route::Action::Forward(f) = &r.action else {
                continue;
            };
            match &f.cluster {
                route::ClusterSpecifier::Cluster(name) => out.push(name.as_str()),
                route::ClusterSpecifier::Weighted(w) => {
                    for c in &w.clusters {
                        if let route::ClusterTarget::Name(name) = &c.target {
                            out.push(name.as_str());
                        }
                    }
                }
                route::ClusterSpecifier::Header(_) => {}
            }
        }
    }
    out
}

fn compile_chain(
    fc: &FilterChain,
    scope: &ErrorScope,
    field: &str,
    secrets: &Secrets,
) -> Result<Result<CompiledChain, String>, ConfigError> {
    let matcher = ChainMatch::compile(fc.filter_chain_match.as_ref())
        .map_err(|(f, m)| scope.err(format!("{field}.filter_chain_match.{f}"), m))?;
    let tls = match &fc.transport_socket {
        None => None,
        Some(ts) => match &ts.config_type {
            Some(transport_socket::ConfigType::TypedConfig(any))
                if any.type_url == tls::DOWNSTREAM_TLS_CONTEXT =>
            {
                match tls::server_config(any, secrets) {
                    Ok(c) => Some(c),
                    Err(TlsError::MissingSecret(name)) => return Ok(Err(name)),
                    Err(TlsError::Invalid { field: f, message }) => {
                        return Err(scope.err(
                            format!("{field}.transport_socket.typed_config.{f}"),
                            message,
                        ));
                    }
                }
            }
            Some(transport_socket::ConfigType::TypedConfig(any))
                if any.type_url == tls::RAW_BUFFER =>
            {
                None
            }
            Some(transport_socket::ConfigType::TypedConfig(any)) => {
                return Err(scope.err(
                    format!("{field}.transport_socket"),
                    format!("unsupported transport socket '{}'", any.type_url),
                ));
            }
            None => {
                return Err(scope.err(
                    format!("{field}.transport_socket.typed_config"),
                    "is required",
                ));
            }
        },
    };
    let mut terminal = None;
    let mut network_rbac = Vec::new();
    let mut network_ext_authz = Vec::new();
    for (i, f) in fc.filters.iter().enumerate() {
        let ffield = format!("{field}.filters[{i}]");
        let any = match &f.config_type {
            Some(filter::ConfigType::TypedConfig(any)) => any,
            _ => return Err(scope.err(format!("{ffield}.typed_config"), "is required")),
        };
        if terminal.is_some() {
            return Err(scope.err(&ffield, "no filter may follow a terminal filter"));
        }
        if any.type_url == crate::rbac::network::TYPE_URL {
            let rbac = crate::rbac::network::NetworkRbac::compile(any).map_err(|(f, m)| {
                let at = if f.is_empty() {
                    format!("{ffield}.typed_config")
                } else {
                    format!("{ffield}.typed_config.{f}")
                };
                scope.err(at, m)
            })?;
            network_rbac.push(Arc::new(rbac));
            continue;
        }
        if any.type_url == network_ext_authz::TYPE_URL {
            let authz = network_ext_authz::NetworkExtAuthz::compile(any).map_err(|(f, m)| {
                let at = if f.is_empty() {
                    format!("{ffield}.typed_config")
                } else {
                    format!("{ffield}.typed_config.{f}")
                };
                scope.err(at, m)
            })?;
            network_ext_authz.push(Arc::new(authz));
            continue;
        }
        terminal = Some(match any.type_url.as_str() {
            crate::http::hcm::TYPE_URL => Terminal::Http(Arc::new(HcmConfig::compile(
                any,
                scope,
                &format!("{ffield}.typed_config"),
            )?)),
            crate::tcp_proxy::TYPE_URL => Terminal::Tcp(Arc::new(TcpProxy::compile(
                any,
                scope,
                &format!("{ffield}.typed_config"),
            )?)),
            other => {
                return Err(scope.err(
                    format!("{ffield}.typed_config"),
                    format!(
                        "unsupported network filter type '{other}' (filter '{}')",
                        f.name
                    ),
                ));
            }
        });
    }
    let terminal = terminal.ok_or_else(|| {
        scope.err(
            format!("{field}.filters"),
            "a terminal filter (http_connection_manager or tcp_proxy) is required",
        )
    })?;
    Ok(Ok(CompiledChain {
        name: fc.name.clone(),
        matcher,
        tls,
        network_rbac,
        network_ext_authz,
        terminal,
    }))
}
