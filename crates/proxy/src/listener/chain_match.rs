//! Filter chain selection with Envoy's precedence: at each criterion, in
//! order, the most specific value that matches wins, and chains that leave
//! the criterion empty are the fallback.

use std::net::{IpAddr, SocketAddr};

use envoy_types::pb::envoy::config::core::v3::CidrRange;

use crate::cidr::Cidr;
use envoy_types::pb::envoy::config::listener::v3::{
    FilterChainMatch, filter_chain_match::ConnectionSourceType,
};

/// What is known about a connection when a filter chain is chosen.
#[derive(Debug, Default, Clone)]
pub struct ConnectionFacts {
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
    pub server_name: Option<String>,
    /// "tls" or "raw_buffer".
    pub transport_protocol: &'static str,
    pub application_protocols: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct ChainMatch {
    destination_port: Option<u16>,
    prefix_ranges: Vec<Cidr>,
    server_names: Vec<String>,
    transport_protocol: Option<String>,
    application_protocols: Vec<String>,
    direct_source_prefix_ranges: Vec<Cidr>,
    source_type: i32,
    source_prefix_ranges: Vec<Cidr>,
    source_ports: Vec<u16>,
}

fn cidrs(list: &[CidrRange], field: &str) -> Result<Vec<Cidr>, (String, String)> {
    list.iter()
        .enumerate()
        .map(|(i, c)| Cidr::parse(c).map_err(|m| (format!("{field}[{i}]"), m)))
        .collect()
}

impl ChainMatch {
    pub fn compile(m: Option<&FilterChainMatch>) -> Result<Self, (String, String)> {
        let Some(m) = m else {
            return Ok(Self::default());
        };
        if !m.address_suffix.is_empty() || m.suffix_len.is_some() {
            return Err(("address_suffix".into(), "not supported".into()));
        }
        let destination_port = match m.destination_port.map(|v| v.value) {
            None => None,
            Some(p) => Some(u16::try_from(p).map_err(|_| {
                (
                    "destination_port".to_string(),
                    format!("{p} is out of range"),
                )
            })?),
        };
        for (i, n) in m.server_names.iter().enumerate() {
            if n.contains('*') && !(n.starts_with("*.") && n.matches('*').count() == 1) {
                return Err((
                    format!("server_names[{i}]"),
                    format!("'{n}': only a leading '*.' wildcard is allowed"),
                ));
            }
        }
        Ok(Self {
            destination_port,
            prefix_ranges: cidrs(&m.prefix_ranges, "prefix_ranges")?,
            server_names: m
                .server_names
                .iter()
                .map(|s| s.to_ascii_lowercase())
                .collect(),
            transport_protocol: Some(m.transport_protocol.clone()).filter(|s| !s.is_empty()),
            application_protocols: m.application_protocols.clone(),
            direct_source_prefix_ranges: cidrs(
                &m.direct_source_prefix_ranges,
                "direct_source_prefix_ranges",
            )?,
            source_type: m.source_type,
            source_prefix_ranges: cidrs(&m.source_prefix_ranges, "source_prefix_ranges")?,
            source_ports: m
                .source_ports
                .iter()
                .filter_map(|p| u16::try_from(*p).ok())
                .collect(),
        })
    }

    /// Whether the chain needs to know SNI or ALPN (so the listener must run the TLS inspector).
    pub fn needs_tls_facts(&self) -> bool {
        !self.server_names.is_empty() || self.transport_protocol.as_deref() == Some("tls")
    }
}

/// Keeps only the candidates with the best score; `None` scores are
/// non-matching and dropped. Returns false when nothing is left.
fn narrow<T>(cands: &mut Vec<(usize, &T)>, score: impl Fn(&T) -> Option<i32>) -> bool {
    let best = cands.iter().filter_map(|(_, c)| score(c)).max();
    match best {
        None => {
            cands.clear();
            false
        }
        Some(b) => {
            cands.retain(|(_, c)| score(c) == Some(b));
            true
        }
    }
}

fn cidr_score(ranges: &[Cidr], ip: Option<IpAddr>) -> Option<i32> {
    if ranges.is_empty() {
        return Some(-1);
    }
    let ip = ip?;
    ranges
        .iter()
        .filter(|c| c.contains(&ip))
        .map(|c| i32::from(c.len))
        .max()
}

fn server_name_score(names: &[String], sni: Option<&str>) -> Option<i32> {
    if names.is_empty() {
        return Some(-1);
    }
    let sni = sni?.to_ascii_lowercase();
    let mut best = None;
    for n in names {
        let score = if *n == sni {
            // Exact beats any wildcard.
            Some(i32::MAX)
        } else if let Some(suffix) = n.strip_prefix('*') {
            sni.ends_with(suffix).then_some(suffix.len() as i32)
        } else {
            None
        };
        best = best.max(score);
    }
    best
}

/// Scores one criterion of a chain: higher is more specific, `None` is no match.
type Criterion<'a> = dyn Fn(&ChainMatch) -> Option<i32> + 'a;

/// Picks the index of the matching chain among `chains`.
pub fn select(chains: &[ChainMatch], facts: &ConnectionFacts) -> Option<usize> {
    let mut cands: Vec<(usize, &ChainMatch)> = chains.iter().enumerate().collect();
    let local_ip = facts.local.map(|a| a.ip());
    let remote_ip = facts.remote.map(|a| a.ip());
    let local_port = facts.local.map(|a| a.port());
    let steps: [&Criterion<'_>; 9] = [
        &|c| match c.destination_port {
            None => Some(0),
            Some(p) => (Some(p) == local_port).then_some(1),
        },
        &|c| cidr_score(&c.prefix_ranges, local_ip),
        &|c| server_name_score(&c.server_names, facts.server_name.as_deref()),
        &|c| match &c.transport_protocol {
            None => Some(0),
            Some(t) => (t == facts.transport_protocol).then_some(1),
        },
        &|c| {
            if c.application_protocols.is_empty() {
                Some(0)
            } else {
                c.application_protocols
                    .iter()
                    .any(|p| facts.application_protocols.contains(p))
                    .then_some(1)
            }
        },
        &|c| cidr_score(&c.direct_source_prefix_ranges, remote_ip),
        &|c| match ConnectionSourceType::try_from(c.source_type) {
            Ok(ConnectionSourceType::SameIpOrLoopback) => {
                let local = remote_ip.is_some_and(|r| r.is_loopback() || Some(r) == local_ip);
                local.then_some(1)
            }
            Ok(ConnectionSourceType::External) => {
                let local = remote_ip.is_some_and(|r| r.is_loopback() || Some(r) == local_ip);
                (!local).then_some(1)
            }
            _ => Some(0),
        },
        &|c| cidr_score(&c.source_prefix_ranges, remote_ip),
        &|c| {
            if c.source_ports.is_empty() {
                Some(0)
            } else {
                facts
                    .remote
                    .is_some_and(|r| c.source_ports.contains(&r.port()))
                    .then_some(1)
            }
        },
    ];
    for step in steps {
        if !narrow(&mut cands, step) {
            return None;
        }
    }
    cands.first().map(|(i, _)| *i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::UInt32Value;

    fn m(f: impl FnOnce(&mut FilterChainMatch)) -> ChainMatch {
        let mut p = FilterChainMatch::default();
        f(&mut p);
        ChainMatch::compile(Some(&p)).expect("valid match")
    }

    fn facts(local: &str, sni: Option<&str>) -> ConnectionFacts {
        ConnectionFacts {
            local: local.parse().ok(),
            remote: "10.0.0.9:5555".parse().ok(),
            server_name: sni.map(str::to_string),
            transport_protocol: if sni.is_some() { "tls" } else { "raw_buffer" },
            application_protocols: vec![],
        }
    }

    #[test]
    fn destination_port_beats_catch_all() {
        let chains = vec![
            ChainMatch::default(),
            m(|p| p.destination_port = Some(UInt32Value { value: 9080 })),
        ];
        assert_eq!(select(&chains, &facts("10.0.0.1:9080", None)), Some(1));
        assert_eq!(select(&chains, &facts("10.0.0.1:8000", None)), Some(0));
    }

    #[test]
    fn longest_prefix_wins() {
        let cidr = |a: &str, l: u32| CidrRange {
            address_prefix: a.into(),
            prefix_len: Some(UInt32Value { value: l }),
        };
        let chains = vec![
            m(|p| p.prefix_ranges = vec![cidr("10.0.0.0", 8)]),
            m(|p| p.prefix_ranges = vec![cidr("10.0.0.0", 24)]),
        ];
        assert_eq!(select(&chains, &facts("10.0.0.1:80", None)), Some(1));
        assert_eq!(select(&chains, &facts("10.1.0.1:80", None)), Some(0));
        assert_eq!(select(&chains, &facts("192.168.0.1:80", None)), None);
    }

    #[test]
    fn exact_server_name_beats_wildcard_and_wildcard_beats_none() {
        let chains = vec![
            m(|p| p.server_names = vec!["*.example.com".into()]),
            m(|p| p.server_names = vec!["api.example.com".into()]),
            ChainMatch::default(),
        ];
        assert_eq!(
            select(&chains, &facts("10.0.0.1:443", Some("api.example.com"))),
            Some(1)
        );
        assert_eq!(
            select(&chains, &facts("10.0.0.1:443", Some("www.example.com"))),
            Some(0)
        );
        assert_eq!(
            select(&chains, &facts("10.0.0.1:443", Some("other.org"))),
            Some(2)
        );
        assert_eq!(select(&chains, &facts("10.0.0.1:443", None)), Some(2));
    }

    #[test]
    fn transport_protocol_and_alpn() {
        let chains = vec![
            m(|p| p.transport_protocol = "tls".into()),
            m(|p| {
                p.transport_protocol = "raw_buffer".into();
                p.application_protocols = vec!["http/1.1".into(), "h2c".into()];
            }),
            m(|p| p.transport_protocol = "raw_buffer".into()),
        ];
        let mut f = facts("10.0.0.1:80", None);
        assert_eq!(select(&chains, &f), Some(2));
        f.application_protocols = vec!["h2c".into()];
        assert_eq!(select(&chains, &f), Some(1));
        assert_eq!(select(&chains, &facts("10.0.0.1:80", Some("x"))), Some(0));
    }
}
