//! Sessions on the app port: established TCP connections whose local address and
//! port are `[app] listen`, IPv4 and IPv6, counted per remote address.
//!
//! The kernel is asked through netlink `sock_diag` (one `inet_diag` dump per
//! address family, established sockets only); where netlink is unavailable
//! (a restricted container), `/proc/net/tcp` and `/proc/net/tcp6` are parsed
//! instead. IPv4-mapped IPv6 addresses (a v6 wildcard socket accepting v4 clients)
//! are folded into IPv4, so `listen = "127.0.1.1:80"` matches either way. A listen
//! address of `0.0.0.0` or `::` matches the port on every local address.
//!
//! These calls block; run them on a blocking thread.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use handover_common::proto::drain::{Holder, SessionCount};

/// One established connection: (local, remote).
pub type Connection = (SocketAddr, SocketAddr);

/// Why sessions could not be counted.
#[derive(Debug, thiserror::Error)]
pub enum SessionsError {
    /// Both sources failed.
    #[error(
        "cannot count connections: netlink sock_diag failed ({netlink}) and so did /proc/net/tcp ({proc})"
    )]
    Unavailable {
        /// The netlink error.
        netlink: String,
        /// The /proc error.
        proc: String,
    },
    /// A /proc/net/tcp line was not in the kernel's format.
    #[error("unexpected line in {file}: {line:?}")]
    Malformed {
        /// Which file.
        file: &'static str,
        /// The line.
        line: String,
    },
}

/// Counts established connections to `listen`.
pub fn count(listen: SocketAddr) -> Result<SessionCount, SessionsError> {
    match netlink::established() {
        Ok(conns) => Ok(tally(listen, &conns, "netlink")),
        Err(netlink_error) => match proc_established() {
            Ok(conns) => Ok(tally(listen, &conns, "/proc/net/tcp")),
            Err(proc_error) => Err(SessionsError::Unavailable {
                netlink: netlink_error.to_string(),
                proc: proc_error.to_string(),
            }),
        },
    }
}

/// Counts through `/proc/net/tcp*` only (the fallback; public for tests).
pub fn count_from_proc(listen: SocketAddr) -> Result<SessionCount, SessionsError> {
    Ok(tally(listen, &proc_established()?, "/proc/net/tcp"))
}

/// Counts through netlink only (public for tests).
pub fn count_from_netlink(listen: SocketAddr) -> std::io::Result<SessionCount> {
    Ok(tally(listen, &netlink::established()?, "netlink"))
}

/// Keeps the connections to `listen` and groups them by remote address, most
/// connections first.
pub fn tally(listen: SocketAddr, conns: &[Connection], source: &str) -> SessionCount {
    let want_ip = listen.ip().to_canonical();
    let mut per_remote: BTreeMap<IpAddr, u32> = BTreeMap::new();
    for (local, remote) in conns {
        let local_ip = local.ip().to_canonical();
        if local.port() == listen.port() && (want_ip.is_unspecified() || local_ip == want_ip) {
            *per_remote.entry(remote.ip().to_canonical()).or_default() += 1;
        }
    }
    let mut holders: Vec<Holder> = per_remote
        .into_iter()
        .map(|(remote, connections)| Holder {
            remote,
            connections,
        })
        .collect();
    holders.sort_by(|a, b| {
        b.connections
            .cmp(&a.connections)
            .then(a.remote.cmp(&b.remote))
    });
    SessionCount {
        total: holders.iter().map(|h| h.connections).sum(),
        holders,
        source: source.to_owned(),
    }
}

fn proc_established() -> Result<Vec<Connection>, SessionsError> {
    let mut conns = Vec::new();
    let mut errors = Vec::new();
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        match std::fs::read_to_string(file) {
            Ok(text) => conns.extend(parse_proc_net_tcp(&text, v6, file)?),
            Err(e) => errors.push(format!("{file}: {e}")),
        }
    }
    // A host without IPv6 has no tcp6; only both missing is a failure.
    if errors.len() == 2 {
        return Err(SessionsError::Unavailable {
            netlink: "not tried".into(),
            proc: errors.join("; "),
        });
    }
    Ok(conns)
}

/// `st` of an established socket in /proc/net/tcp.
const TCP_ESTABLISHED_HEX: &str = "01";

/// Parses the kernel's `/proc/net/tcp` (or `tcp6` with `v6`) text into the
/// established connections it lists. Addresses are hex words in the host's byte
/// order, as the kernel prints them.
pub fn parse_proc_net_tcp(
    text: &str,
    v6: bool,
    file: &'static str,
) -> Result<Vec<Connection>, SessionsError> {
    let malformed = |line: &str| SessionsError::Malformed {
        file,
        line: line.to_owned(),
    };
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(_slot), Some(local), Some(remote), Some(state)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(malformed(line));
        };
        if state != TCP_ESTABLISHED_HEX {
            continue;
        }
        let local = parse_endpoint(local, v6).ok_or_else(|| malformed(line))?;
        let remote = parse_endpoint(remote, v6).ok_or_else(|| malformed(line))?;
        out.push((local, remote));
    }
    Ok(out)
}

fn parse_endpoint(text: &str, v6: bool) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = addr.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = if v6 {
        if addr.len() != 32 {
            return None;
        }
        let mut bytes = [0u8; 16];
        for i in 0..4 {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
        }
        IpAddr::V6(Ipv6Addr::from(bytes))
    } else {
        if addr.len() != 8 {
            return None;
        }
        IpAddr::V4(Ipv4Addr::from(word(0)?))
    };
    Some(SocketAddr::new(ip, port))
}

mod netlink {
    //! One `inet_diag` dump per address family over `NETLINK_SOCK_DIAG`.

    use std::io;
    use std::net::SocketAddr;

    use netlink_packet_core::{
        NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    };
    use netlink_packet_sock_diag::{
        SockDiagMessage,
        constants::{AF_INET, AF_INET6, IPPROTO_TCP},
        inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
    };
    use netlink_sys::{Socket, SocketAddr as NlAddr, protocols::NETLINK_SOCK_DIAG};

    use super::Connection;

    /// Established TCP connections, both families.
    pub fn established() -> io::Result<Vec<Connection>> {
        let socket = Socket::new(NETLINK_SOCK_DIAG)?;
        socket.connect(&NlAddr::new(0, 0))?;
        let mut out = dump(&socket, AF_INET, SocketId::new_v4())?;
        out.extend(dump(&socket, AF_INET6, SocketId::new_v6())?);
        Ok(out)
    }

    fn dump(socket: &Socket, family: u8, socket_id: SocketId) -> io::Result<Vec<Connection>> {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let mut packet = NetlinkMessage::new(
            header,
            SockDiagMessage::InetRequest(InetRequest {
                family,
                protocol: IPPROTO_TCP,
                extensions: ExtensionFlags::empty(),
                states: StateFlags::ESTABLISHED,
                socket_id,
            })
            .into(),
        );
        packet.finalize();
        let mut request = vec![0; packet.buffer_len()];
        packet.serialize(&mut request);
        socket.send(&request, 0)?;

        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let size = socket.recv(&mut &mut buf[..], 0)?;
            if size == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "netlink dump ended early",
                ));
            }
            let mut offset = 0;
            while offset < size {
                let bytes = &buf[offset..size];
                let message = NetlinkMessage::<SockDiagMessage>::deserialize(bytes)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let length = message.header.length as usize;
                match message.payload {
                    NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                        let id = &response.header.socket_id;
                        out.push((
                            SocketAddr::new(id.source_address, id.source_port),
                            SocketAddr::new(id.destination_address, id.destination_port),
                        ));
                    }
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => {
                        return Err(match e.code {
                            Some(code) => io::Error::from_raw_os_error(-code.get()),
                            None => io::Error::other("netlink error without a code"),
                        });
                    }
                    _ => {}
                }
                if length == 0 {
                    break;
                }
                offset += length;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured on an x86-64 (little-endian) host: 127.0.1.1:80 with two clients
    // from 127.0.0.1, one listening socket and one TIME_WAIT.
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0101007F:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0101007F:0050 0100007F:D431 01 00000000:00000000 00:00000000 00000000    33        0 2 1 0000000000000000 20 4 30 10 -1
   2: 0101007F:0050 0100007F:D432 01 00000000:00000000 00:00000000 00000000    33        0 3 1 0000000000000000 20 4 30 10 -1
   3: 0101007F:0050 0100007F:D433 06 00000000:00000000 03:00000F3C 00000000     0        0 0 3 0000000000000000
   4: 0100007F:1F90 0100007F:D434 01 00000000:00000000 00:00000000 00000000     0        0 4 1 0000000000000000 20 4 30 10 -1
";
    // ::1 port 8080 from ::1, and a v4-mapped client ::ffff:127.0.1.1 → ::ffff:127.0.0.1.
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F90 00000000000000000000000001000000:A000 01 00000000:00000000 00:00000000 00000000     0        0 5 1 0000000000000000 20 4 30 10 -1
   1: 0000000000000000FFFF00000101007F:0050 0000000000000000FFFF00000100007F:A001 01 00000000:00000000 00:00000000 00000000     0        0 6 1 0000000000000000 20 4 30 10 -1
";

    #[test]
    #[cfg(target_endian = "little")]
    fn parses_proc_net_tcp_and_counts_established_on_the_listen_address() {
        let mut conns = parse_proc_net_tcp(TCP, false, "tcp").expect("tcp");
        conns.extend(parse_proc_net_tcp(TCP6, true, "tcp6").expect("tcp6"));
        assert_eq!(conns.len(), 5, "{conns:?}");

        let app: SocketAddr = "127.0.1.1:80".parse().expect("addr");
        let count = tally(app, &conns, "test");
        // Two v4 clients plus the v4-mapped one on the v6 socket.
        assert_eq!(count.total, 3);
        assert_eq!(
            count.holders,
            vec![Holder {
                remote: "127.0.0.1".parse().expect("ip"),
                connections: 3
            }]
        );

        let v6: SocketAddr = "[::1]:8080".parse().expect("addr");
        assert_eq!(tally(v6, &conns, "test").total, 1);
        // Wildcard: the port on every local address.
        let any: SocketAddr = "0.0.0.0:8080".parse().expect("addr");
        assert_eq!(tally(any, &conns, "test").total, 2);
    }

    #[test]
    fn malformed_proc_lines_are_errors_not_panics() {
        let bad = "header\n   0: zz:0050 0100007F:D431 01 rest\n";
        assert!(matches!(
            parse_proc_net_tcp(bad, false, "tcp"),
            Err(SessionsError::Malformed { .. })
        ));
        assert!(parse_proc_net_tcp("header\n   0: short\n", false, "tcp").is_err());
        assert!(
            parse_proc_net_tcp("header\n", false, "tcp")
                .expect("empty")
                .is_empty()
        );
    }

    #[test]
    fn netlink_and_proc_agree_on_a_live_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let listen = listener.local_addr().expect("addr");
        let _c1 = std::net::TcpStream::connect(listen).expect("connect 1");
        let _c2 = std::net::TcpStream::connect(listen).expect("connect 2");
        let (_s1, _) = listener.accept().expect("accept 1");
        let (_s2, _) = listener.accept().expect("accept 2");
        let via_netlink = count_from_netlink(listen).expect("netlink");
        let via_proc = count_from_proc(listen).expect("proc");
        assert_eq!(via_netlink.total, 2, "{via_netlink:?}");
        assert_eq!(via_proc.total, 2, "{via_proc:?}");
        assert_eq!(via_netlink.holders, via_proc.holders);
        drop((_c1, _s1));
        assert_eq!(count(listen).expect("count").total, 1);
    }
}
