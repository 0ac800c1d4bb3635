//! Istio's protocol selection for service ports.
//!
//! Istio picks a port's application protocol from, in order:
//! 1. an explicit protocol (ServiceEntry `ports[].protocol`; in the local
//!    manifest, `ports[].protocol`);
//! 2. Kubernetes `appProtocol` (`kubernetes.io/h2c` is HTTP2,
//!    `kubernetes.io/ws` HTTP, `kubernetes.io/wss` HTTPS, otherwise an Istio
//!    protocol name);
//! 3. the port name, `<protocol>` or `<protocol>-<suffix>` (`http`,
//!    `http-web`, `grpc-web`, `tcp-db`, ...), case-insensitive.
//!
//! Istio treats an unrecognised port as "sniffed"; the registry model has no
//! such protocol, so it is TCP here (the brief's default).

use crate::model::Protocol;

/// Parses an Istio protocol name (case-insensitive). `None` when the name is
/// not one of Istio's.
pub fn parse_protocol(name: &str) -> Option<Protocol> {
    let upper = name.to_ascii_uppercase();
    Some(match upper.as_str() {
        "HTTP" | "HTTP_PROXY" => Protocol::Http,
        // gRPC-Web rides on HTTP/1.1 or HTTP/2 and is routed at L7.
        "GRPC-WEB" => Protocol::Http,
        "HTTP2" => Protocol::Http2,
        "GRPC" => Protocol::Grpc,
        "HTTPS" => Protocol::Https,
        "TLS" => Protocol::Tls,
        "TCP" => Protocol::Tcp,
        "MONGO" | "MYSQL" | "REDIS" | "UDP" => Protocol::Other(upper),
        _ => return None,
    })
}

/// The protocol a port name implies (`http-web` is HTTP), if any.
pub fn protocol_from_port_name(name: &str) -> Option<Protocol> {
    let lower = name.to_ascii_lowercase();
    if lower == "grpc-web" || lower.starts_with("grpc-web-") {
        return Some(Protocol::Http);
    }
    let prefix = lower.split('-').next().unwrap_or_default();
    parse_protocol(prefix)
}

/// The protocol a Kubernetes `appProtocol` value implies, if any.
pub fn protocol_from_app_protocol(app_protocol: &str) -> Option<Protocol> {
    match app_protocol {
        "kubernetes.io/h2c" => Some(Protocol::Http2),
        "kubernetes.io/ws" => Some(Protocol::Http),
        "kubernetes.io/wss" => Some(Protocol::Https),
        other => parse_protocol(other),
    }
}

/// Istio's protocol selection (see the module docs). An explicit protocol
/// Istio does not know is kept as [`Protocol::Other`]; everything else
/// unrecognised is TCP.
pub fn select_protocol(
    explicit: Option<&str>,
    app_protocol: Option<&str>,
    port_name: &str,
) -> Protocol {
    if let Some(p) = explicit.filter(|p| !p.is_empty()) {
        return parse_protocol(p).unwrap_or_else(|| Protocol::Other(p.to_ascii_uppercase()));
    }
    app_protocol
        .filter(|p| !p.is_empty())
        .and_then(protocol_from_app_protocol)
        .or_else(|| protocol_from_port_name(port_name))
        .unwrap_or(Protocol::Tcp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_selection_rules() {
        assert_eq!(select_protocol(None, None, "http"), Protocol::Http);
        assert_eq!(select_protocol(None, None, "http-web"), Protocol::Http);
        assert_eq!(select_protocol(None, None, "HTTP2-x"), Protocol::Http2);
        assert_eq!(select_protocol(None, None, "grpc-web"), Protocol::Http);
        assert_eq!(select_protocol(None, None, "grpc-api"), Protocol::Grpc);
        assert_eq!(select_protocol(None, None, "tcp-db"), Protocol::Tcp);
        assert_eq!(select_protocol(None, None, "web"), Protocol::Tcp);
        assert_eq!(select_protocol(None, None, ""), Protocol::Tcp);
        assert_eq!(
            select_protocol(None, None, "mongo"),
            Protocol::Other("MONGO".into())
        );
        assert_eq!(
            select_protocol(None, Some("kubernetes.io/h2c"), "web"),
            Protocol::Http2
        );
        assert_eq!(select_protocol(None, Some("grpc"), "http"), Protocol::Grpc);
        assert_eq!(
            select_protocol(Some("https"), None, "http"),
            Protocol::Https
        );
        assert_eq!(
            select_protocol(Some("Weird"), None, "http"),
            Protocol::Other("WEIRD".into())
        );
    }
}
