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
    let l =
        TcpListener::bind(SocketAddrV4::new(ip, 0)).with_context(|| format!("bind {ip}:0/tcp"))?;
    Ok(l.local_addr().context("local_addr")?.port())
}

/// A UDP port that was free on `ip` a moment ago (for agents' QUIC endpoints).
pub fn free_udp_port(ip: Ipv4Addr) -> anyhow::Result<u16> {
    anyhow::ensure!(ip.is_loopback(), "{ip} is not a loopback address");
    let s =
        UdpSocket::bind(SocketAddrV4::new(ip, 0)).with_context(|| format!("bind {ip}:0/udp"))?;
    Ok(s.local_addr().context("local_addr")?.port())
}

/// Number of ESTABLISHED TCP sockets whose *local* address is `addr` (i.e. the
/// server side of connections to a listener on `addr`), read from /proc/net/tcp.
///
/// That is what a host agent counts as "sessions on the app port"; tests use it to
/// see idle keep-alive connections that HAProxy's `scur` does not show.
pub fn established_connections(addr: std::net::SocketAddr) -> anyhow::Result<usize> {
    let std::net::SocketAddr::V4(want) = addr else {
        anyhow::bail!("only IPv4 is supported: {addr}");
    };
    let table = std::fs::read_to_string("/proc/net/tcp").context("read /proc/net/tcp")?;
    let mut n = 0;
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(state)) = (f.get(1), f.get(3)) else {
            continue;
        };
        if *state != "01" {
            continue;
        }
        let Some((ip_hex, port_hex)) = local.split_once(':') else {
            continue;
        };
        // The kernel prints the network-order address as a native u32.
        let ip = u32::from_str_radix(ip_hex, 16).map(|v| Ipv4Addr::from(v.to_ne_bytes()));
        let port = u16::from_str_radix(port_hex, 16);
        if let (Ok(ip), Ok(port)) = (ip, port)
            && ip == *want.ip()
            && port == want.port()
        {
            n += 1;
        }
    }
    Ok(n)
}
