//! Handshake floods, built sans-IO with quinn-proto so a test chooses exactly how
//! far each handshake goes: QUIC Initial packets (ClientHellos) sent from chosen
//! loopback addresses, answered or not, to prove the agent's admission limits
//! (issue 13, hole 2) against the real QUIC stack.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::BytesMut;
use quinn_proto::{ConnectionHandle, DatagramEvent, Endpoint, EndpointConfig};

/// One attacker: a UDP socket on `source` and a client endpoint of its own.
struct Attacker {
    socket: UdpSocket,
    endpoint: Endpoint,
    source: IpAddr,
}

impl Attacker {
    fn bind(source: IpAddr) -> anyhow::Result<Self> {
        let socket = UdpSocket::bind(SocketAddr::new(source, 0))
            .with_context(|| format!("bind a UDP socket on {source}"))?;
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        let endpoint = Endpoint::new(Arc::new(EndpointConfig::default()), None, false, None);
        Ok(Attacker {
            socket,
            endpoint,
            source,
        })
    }

    /// Starts a handshake and sends its first flight (the ClientHello).
    fn hello(
        &mut self,
        config: &quinn::ClientConfig,
        target: SocketAddr,
        name: &str,
    ) -> anyhow::Result<(ConnectionHandle, quinn_proto::Connection)> {
        let (handle, mut conn) = self
            .endpoint
            .connect(Instant::now(), config.clone(), target, name)
            .context("start a handshake")?;
        self.flush(&mut conn)?;
        Ok((handle, conn))
    }

    /// Sends whatever `conn` has to send now.
    fn flush(&self, conn: &mut quinn_proto::Connection) -> anyhow::Result<()> {
        let mut buf = Vec::new();
        while let Some(t) = conn.poll_transmit(Instant::now(), 1, &mut buf) {
            self.socket
                .send_to(&buf[..t.size], t.destination)
                .context("send a datagram")?;
            buf.clear();
        }
        Ok(())
    }
}

/// Sends `count` bare ClientHellos to `target`, spread over `sources`, and never
/// reads an answer: what a spoofing attacker can do (issue 13 saw about 100 of these
/// every 30 s refuse every new `handover status`).
pub fn bare_hellos(
    config: &quinn::ClientConfig,
    sources: &[IpAddr],
    target: SocketAddr,
    name: &str,
    count: usize,
) -> anyhow::Result<()> {
    let mut attackers = sources
        .iter()
        .map(|ip| Attacker::bind(*ip))
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(!attackers.is_empty(), "no source address");
    for i in 0..count {
        let n = attackers.len();
        let attacker = &mut attackers[i % n];
        // The connection is dropped unanswered: nothing more is ever sent for it.
        attacker.hello(config, target, name)?;
    }
    Ok(())
}

/// Handshakes from `source` that answer the agent's first packet (a Retry, when
/// the agent validates addresses) and then stall: the client never sends its
/// Finished, so the agent holds a half-open connection. What an attacker who can
/// receive at its address does. Returns how many handshakes got an answer.
pub fn stalled_handshakes(
    config: &quinn::ClientConfig,
    source: IpAddr,
    target: SocketAddr,
    name: &str,
    count: usize,
) -> anyhow::Result<usize> {
    let mut attacker = Attacker::bind(source)?;
    let mut conns = Vec::new();
    for _ in 0..count {
        let (handle, conn) = attacker.hello(config, target, name)?;
        conns.push((handle, conn, false));
    }
    // Feed each connection exactly one datagram from the agent, then stop
    // listening to it; quiet for a while means every answer is in.
    let mut answered = 0;
    let mut buf = vec![0u8; 65536];
    let mut response = Vec::new();
    let mut quiet_since = Instant::now();
    while answered < count && quiet_since.elapsed() < Duration::from_secs(5) {
        let (n, from) = match attacker.socket.recv_from(&mut buf) {
            Ok(got) => got,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => return Err(e).context("receive"),
        };
        quiet_since = Instant::now();
        let event = attacker.endpoint.handle(
            Instant::now(),
            from,
            Some(attacker.source),
            None,
            BytesMut::from(&buf[..n]),
            &mut response,
        );
        let Some(DatagramEvent::ConnectionEvent(handle, event)) = event else {
            continue;
        };
        let Some((_, conn, done)) = conns.iter_mut().find(|(h, _, _)| *h == handle) else {
            continue;
        };
        if *done {
            continue;
        }
        *done = true;
        answered += 1;
        conn.handle_event(event);
        attacker.flush(conn)?;
    }
    Ok(answered)
}
