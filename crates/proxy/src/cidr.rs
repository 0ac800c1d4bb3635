//! CIDR ranges from Envoy's `core.v3.CidrRange`.

use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3::CidrRange;

#[derive(Debug, Clone)]
pub struct Cidr {
    ip: IpAddr,
    pub len: u8,
}

impl Cidr {
    pub fn parse(c: &CidrRange) -> Result<Self, String> {
        let ip: IpAddr = c
            .address_prefix
            .parse()
            .map_err(|_| format!("'{}' is not an IP address", c.address_prefix))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let len = c.prefix_len.map(|v| v.value).unwrap_or(0);
        if len > max {
            return Err(format!("prefix_len {len} is longer than {max}"));
        }
        Ok(Self { ip, len: len as u8 })
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        let ip = match (ip, &self.ip) {
            (IpAddr::V6(v6), IpAddr::V4(_)) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => return false,
            },
            _ => *ip,
        };
        match (&self.ip, ip) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = if self.len == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(self.len))
                };
                u32::from(*net) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = if self.len == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(self.len))
                };
                u128::from(*net) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}
