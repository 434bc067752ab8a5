//! The coordinator's UDP socket, with a receive buffer large enough for the
//! answers of many agents arriving at once (issue 14: 6,627 receive-buffer errors
//! in a `status` of 300 agents with the OS default of 208 KiB).

use std::net::{SocketAddr, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

/// The receive buffer asked for: 1,000 handshakes' flights (~5 KB each) and more.
pub const RECV_BUFFER: usize = 8 << 20;

/// A bound UDP socket and, when the OS gave it a smaller receive buffer than
/// asked, what to tell the operator.
pub struct Bound {
    /// The socket, ready for a QUIC endpoint.
    pub socket: UdpSocket,
    /// The warning, if the buffer was capped.
    pub capped: Option<String>,
}

/// Binds `addr` with a receive buffer of [`RECV_BUFFER`] bytes, or as much as
/// the OS allows.
pub fn bind(addr: SocketAddr) -> std::io::Result<Bound> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Refused sizes are capped, not errors, on Linux; elsewhere an error here
    // leaves the default, which is still a working socket.
    let _ = socket.set_recv_buffer_size(RECV_BUFFER);
    let got = socket.recv_buffer_size().unwrap_or(0);
    socket.bind(&addr.into())?;
    Ok(Bound {
        socket: socket.into(),
        capped: capped_warning(RECV_BUFFER, got),
    })
}

/// The warning for a buffer of `got` bytes when `asked` were asked for. Linux
/// reports twice what it grants (the doubling covers its bookkeeping), so `got`
/// is compared as it reports it.
fn capped_warning(asked: usize, got: usize) -> Option<String> {
    if got >= asked {
        return None;
    }
    Some(format!(
        "the OS capped this coordinator's UDP receive buffer at {} KiB ({} KiB asked): answers from many agents at once may be lost and retried. Raise the cap with `sudo sysctl -w net.core.rmem_max={asked}` (and in /etc/sysctl.d/ to keep it)",
        got >> 10,
        asked >> 10
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capped_buffer_warning_names_the_sysctl_that_raises_it() {
        let warning = capped_warning(8 << 20, 425_984).expect("capped");
        assert!(warning.contains("416 KiB"), "{warning}");
        assert!(warning.contains("net.core.rmem_max=8388608"), "{warning}");
        assert_eq!(capped_warning(8 << 20, 16 << 20), None);
        assert_eq!(capped_warning(8 << 20, 8 << 20), None);
    }
}
