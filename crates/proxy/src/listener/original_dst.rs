//! The address a connection was sent to before iptables REDIRECT changed it
//! (SO_ORIGINAL_DST), as Istio's capture relies on.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

const SO_ORIGINAL_DST: libc::c_int = 80;
const IP6T_SO_ORIGINAL_DST: libc::c_int = 80;

/// Returns `None` when the connection was not redirected (or the kernel has
/// no conntrack entry for it).
pub fn original_dst(stream: &tokio::net::TcpStream) -> Option<SocketAddr> {
    let local = stream.local_addr().ok()?;
    let fd = stream.as_raw_fd();
    let addr = if local.is_ipv4() {
        get_v4(fd)
    } else {
        get_v6(fd).or_else(|| get_v4(fd))
    }?;
    // Without a redirect the kernel reports the local address itself.
    Some(addr)
}

#[allow(unsafe_code)]
fn get_v4(fd: libc::c_int) -> Option<SocketAddr> {
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: `addr` is a properly sized, writable sockaddr_in and `len` holds
    // its size; the kernel writes at most `len` bytes. `fd` is a live socket
    // owned by the caller's TcpStream for the duration of the call.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_IP,
            SO_ORIGINAL_DST,
            (&raw mut addr).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return None;
    }
    let ip = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
    Some(SocketAddr::V4(SocketAddrV4::new(
        ip,
        u16::from_be(addr.sin_port),
    )))
}

#[allow(unsafe_code)]
fn get_v6(fd: libc::c_int) -> Option<SocketAddr> {
    let mut addr: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    // SAFETY: as in `get_v4`, with a sockaddr_in6 buffer of the size passed.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_IPV6,
            IP6T_SO_ORIGINAL_DST,
            (&raw mut addr).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return None;
    }
    let ip = Ipv6Addr::from(addr.sin6_addr.s6_addr);
    Some(SocketAddr::V6(SocketAddrV6::new(
        ip,
        u16::from_be(addr.sin6_port),
        addr.sin6_flowinfo,
        addr.sin6_scope_id,
    )))
}
