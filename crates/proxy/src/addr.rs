//! Conversions from Envoy `core.v3.Address` to socket addresses.

use std::net::{IpAddr, SocketAddr};

use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address, socket_address};

/// Where a socket address points: an IP we can connect to directly, or a host
/// name that the cluster's DNS discovery resolves.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    Ip(SocketAddr),
    Dns { host: String, port: u16 },
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ip(a) => write!(f, "{a}"),
            Self::Dns { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

fn socket_address(addr: &Address) -> Result<&SocketAddress, String> {
    match &addr.address {
        Some(address::Address::SocketAddress(sa)) => Ok(sa),
        Some(address::Address::Pipe(_)) => Err("pipe addresses are not supported".into()),
        Some(address::Address::EnvoyInternalAddress(_)) => {
            Err("internal addresses are not supported".into())
        }
        None => Err("address is required".into()),
    }
}

fn port(sa: &SocketAddress) -> Result<u16, String> {
    match &sa.port_specifier {
        Some(socket_address::PortSpecifier::PortValue(p)) => {
            u16::try_from(*p).map_err(|_| format!("port {p} is out of range"))
        }
        Some(socket_address::PortSpecifier::NamedPort(n)) => {
            Err(format!("named port '{n}' is not supported"))
        }
        None => Err("port_value is required".into()),
    }
}

/// A listener address must be a literal IP (Envoy does not resolve names for binds).
pub fn listen_addr(addr: &Address) -> Result<SocketAddr, String> {
    let sa = socket_address(addr)?;
    if sa.protocol != socket_address::Protocol::Tcp as i32 {
        return Err("only TCP listeners are supported".into());
    }
    let ip: IpAddr = sa
        .address
        .parse()
        .map_err(|_| format!("'{}' is not an IP address", sa.address))?;
    Ok(SocketAddr::new(ip, port(sa)?))
}

/// An upstream endpoint address: an IP, or a name when the cluster resolves DNS.
pub fn endpoint_target(addr: &Address, allow_dns: bool) -> Result<Target, String> {
    let sa = socket_address(addr)?;
    let port = port(sa)?;
    match sa.address.parse::<IpAddr>() {
        Ok(ip) => Ok(Target::Ip(SocketAddr::new(ip, port))),
        Err(_) if allow_dns && !sa.address.is_empty() => Ok(Target::Dns {
            host: sa.address.clone(),
            port,
        }),
        Err(_) => Err(format!(
            "'{}' is not an IP address (use a DNS cluster type for names)",
            sa.address
        )),
    }
}

/// Envoy's textual form of an address in admin output and headers: `ip:port`, `[v6]:port`.
pub fn format(addr: &SocketAddr) -> String {
    addr.to_string()
}
