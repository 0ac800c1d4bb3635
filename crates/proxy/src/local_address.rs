//! The proxy's own address, as Envoy's `local_info` has it: the first
//! non-loopback IPv4 address of the host. Envoy records it in
//! x-forwarded-for when the peer is on loopback (e.g. an app behind its
//! sidecar), and in the headers of requests it originates itself.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::LazyLock;

static LOCAL_V4: LazyLock<IpAddr> = LazyLock::new(|| {
    if_addrs::get_if_addrs()
        .ok()
        .and_then(|addrs| {
            addrs.into_iter().find_map(|a| match a.ip() {
                IpAddr::V4(v4) if !v4.is_loopback() && !v4.is_link_local() => Some(IpAddr::V4(v4)),
                _ => None,
            })
        })
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
});

pub(crate) fn ipv4() -> IpAddr {
    *LOCAL_V4
}
