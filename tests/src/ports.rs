//! Loopback addresses per simulated host and free ports on them.
//!
//! Each simulated host gets its own address 127.0.1.N (Linux routes all of 127/8 to
//! `lo`, no setup needed), so per-host connection counts are meaningful. Ports are
//! always taken free from the kernel, never fixed, so test binaries running at the
//! same time cannot collide on a port; fleet tests are additionally serialized across
//! processes by [`crate::fleet::serial`].

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};

use anyhow::Context as _;

/// The loopback address of simulated host `n`: 127.0.1.n.
pub fn host_ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 1, n)
}

/// A TCP port that was free on `ip` a moment ago (bind port 0, read it, drop).
///
/// There is a small window before the caller binds it; callers that spawn servers
/// retry with a new port when the bind fails.
pub fn free_tcp_port(ip: Ipv4Addr) -> anyhow::Result<u16> {
    anyhow::ensure!(ip.is_loopback(), "{ip} is not a loopback address");
    let l = TcpListener::bind(SocketAddrV4::new(ip, 0))
        .with_context(|| format!("bind {ip}:0/tcp"))?;
    Ok(l.local_addr().context("local_addr")?.port())
}

/// A UDP port that was free on `ip` a moment ago (for agents' QUIC endpoints).
pub fn free_udp_port(ip: Ipv4Addr) -> anyhow::Result<u16> {
    anyhow::ensure!(ip.is_loopback(), "{ip} is not a loopback address");
    let s =
        UdpSocket::bind(SocketAddrV4::new(ip, 0)).with_context(|| format!("bind {ip}:0/udp"))?;
    Ok(s.local_addr().context("local_addr")?.port())
}
