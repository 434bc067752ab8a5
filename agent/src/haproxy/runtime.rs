//! A client for HAProxy's runtime API: one command per connection (HAProxy's
//! non-interactive mode answers and closes), over the admin unix socket or
//! `ipv4@ADDR:PORT`.
//!
//! Commands are built only from validated names ([`Command`]), and every answer is
//! checked against what success looks like for that command: HAProxy reports most
//! errors as plain text on a "successful" connection.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How long one command may take, connect to last byte.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// Answers larger than this are refused (a `show stat` of 1000 servers is ~500 KiB).
const MAX_ANSWER: u64 = 16 << 20;

/// Where the runtime API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `stats socket /run/haproxy/admin.sock level admin`.
    Unix(PathBuf),
    /// `stats socket ipv4@127.0.0.1:9999 level admin`.
    Tcp(SocketAddr),
}

impl Endpoint {
    /// Parses `ipv4@ADDR:PORT`, `unix@PATH` or a plain path.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(addr) = text.strip_prefix("ipv4@") {
            return addr.parse().map(Endpoint::Tcp).map_err(|_| {
                format!("invalid HAProxy socket {text:?}: write ipv4@127.0.0.1:9999")
            });
        }
        let path = text.strip_prefix("unix@").unwrap_or(text);
        if path.is_empty() {
            return Err("empty HAProxy socket: give the admin socket's path".into());
        }
        Ok(Endpoint::Unix(PathBuf::from(path)))
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "ipv4@{a}"),
        }
    }
}

/// Why a runtime API command failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Nothing listens there.
    #[error(
        "cannot reach HAProxy's runtime API at {endpoint}: {source} — is HAProxy running with `stats socket {endpoint} level admin`? (fix `[haproxy] socket` in the agent config)"
    )]
    Unreachable {
        /// The endpoint.
        endpoint: String,
        /// What connect said.
        source: std::io::Error,
    },
    /// The exchange broke or took too long.
    #[error("HAProxy's runtime API at {endpoint} did not answer `{command}`: {why}")]
    Io {
        /// The endpoint.
        endpoint: String,
        /// The command sent.
        command: String,
        /// What happened.
        why: String,
    },
    /// HAProxy answered with an error.
    #[error("HAProxy refused `{command}`: {answer}")]
    Refused {
        /// The command sent.
        command: String,
        /// HAProxy's answer, trimmed.
        answer: String,
    },
}

impl RuntimeError {
    /// HAProxy's own answer, when it refused.
    pub fn answer(&self) -> Option<&str> {
        match self {
            RuntimeError::Refused { answer, .. } => Some(answer),
            _ => None,
        }
    }
}

/// What a successful answer to a command looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Nothing at all (`enable server`, `set server ... state`).
    Empty,
    /// Starts with this text (`show stat` → `# `, `add server` → `New server`).
    Prefix(&'static str),
    /// Any text containing one of these.
    OneOf(&'static [&'static str]),
}

/// One runtime API command, assembled from checked words only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    text: String,
    expect: Expect,
}

impl Command {
    /// A command from words. Each word must be a single token of the runtime API's
    /// safe alphabet: the guard that keeps `;` or a newline from starting a second
    /// command, whatever the caller passed.
    pub fn new(words: &[&str], expect: Expect) -> Result<Self, RuntimeError> {
        for w in words {
            let ok = !w.is_empty()
                && w.bytes().all(|b| {
                    b.is_ascii_alphanumeric()
                        || matches!(b, b'.' | b'_' | b'-' | b'/' | b':' | b'[' | b']')
                });
            if !ok {
                return Err(RuntimeError::Refused {
                    command: words.join(" ").escape_debug().to_string(),
                    answer: format!(
                        "not sent: {w:?} is not a plain name or address (letters, digits, '.', '_', '-', ':', '[', ']')"
                    ),
                });
            }
        }
        Ok(Command {
            text: words.join(" "),
            expect,
        })
    }

    /// The command line (without the newline).
    pub fn text(&self) -> &str {
        &self.text
    }

    fn check(&self, answer: String) -> Result<String, RuntimeError> {
        let trimmed = answer.trim();
        let ok = match self.expect {
            Expect::Empty => trimmed.is_empty(),
            Expect::Prefix(p) => trimmed.starts_with(p),
            Expect::OneOf(texts) => texts.iter().any(|t| trimmed.contains(t)),
        };
        if ok {
            Ok(answer)
        } else {
            Err(RuntimeError::Refused {
                command: self.text.clone(),
                answer: if trimmed.is_empty() {
                    "(empty answer)".into()
                } else {
                    trimmed.chars().take(500).collect()
                },
            })
        }
    }
}

/// The runtime API at one endpoint.
#[derive(Debug, Clone)]
pub struct Runtime {
    endpoint: Endpoint,
}

impl Runtime {
    /// A client for `endpoint`.
    pub fn new(endpoint: Endpoint) -> Self {
        Runtime { endpoint }
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Sends `command` on a fresh connection and returns the checked answer.
    pub async fn run(&self, command: &Command) -> Result<String, RuntimeError> {
        let io_err = |why: String| RuntimeError::Io {
            endpoint: self.endpoint.to_string(),
            command: command.text.clone(),
            why,
        };
        let exchange = async {
            match &self.endpoint {
                Endpoint::Unix(path) => {
                    let stream = tokio::net::UnixStream::connect(path)
                        .await
                        .map_err(|source| RuntimeError::Unreachable {
                            endpoint: self.endpoint.to_string(),
                            source,
                        })?;
                    exchange(stream, &command.text)
                        .await
                        .map_err(|e| io_err(e.to_string()))
                }
                Endpoint::Tcp(addr) => {
                    let stream = tokio::net::TcpStream::connect(addr)
                        .await
                        .map_err(|source| RuntimeError::Unreachable {
                            endpoint: self.endpoint.to_string(),
                            source,
                        })?;
                    exchange(stream, &command.text)
                        .await
                        .map_err(|e| io_err(e.to_string()))
                }
            }
        };
        let answer = tokio::time::timeout(COMMAND_TIMEOUT, exchange)
            .await
            .map_err(|_| io_err(format!("no answer within {}s", COMMAND_TIMEOUT.as_secs())))??;
        tracing::debug!(command = %command.text, answer = %answer.trim(), "haproxy");
        command.check(answer)
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    line: &str,
) -> std::io::Result<String> {
    stream.write_all(format!("{line}\n").as_bytes()).await?;
    stream.flush().await?;
    let mut buf = Vec::new();
    (&mut stream)
        .take(MAX_ANSWER + 1)
        .read_to_end(&mut buf)
        .await?;
    if buf.len() as u64 > MAX_ANSWER {
        return Err(std::io::Error::other("answer too large"));
    }
    String::from_utf8(buf).map_err(|_| std::io::Error::other("answer is not UTF-8"))
}

/// The commands the agent uses, each with its success test.
pub mod cmd {
    use std::net::{IpAddr, SocketAddr};

    use super::{Command, Expect, RuntimeError};

    /// `show stat`: the CSV with its `# ` header.
    pub fn show_stat() -> Result<Command, RuntimeError> {
        Command::new(&["show", "stat"], Expect::Prefix("# pxname"))
    }

    /// `show info`.
    pub fn show_info() -> Result<Command, RuntimeError> {
        Command::new(&["show", "info"], Expect::Prefix("Name:"))
    }

    /// `set server B/S addr A port P` (an IPv6 address bare: `addr ::1 port 80`).
    pub fn set_addr(bs: &str, addr: IpAddr, port: u16) -> Result<Command, RuntimeError> {
        let (addr, port) = (addr.to_string(), port.to_string());
        Command::new(
            &["set", "server", bs, "addr", &addr, "port", &port],
            Expect::OneOf(&["IP changed", "no need to change", "port changed"]),
        )
    }

    /// `set server B/S state ready|drain|maint`.
    pub fn set_state(bs: &str, state: &str) -> Result<Command, RuntimeError> {
        Command::new(&["set", "server", bs, "state", state], Expect::Empty)
    }

    /// `set server B/S health down` (only honoured outside maintenance).
    pub fn health_down(bs: &str) -> Result<Command, RuntimeError> {
        Command::new(&["set", "server", bs, "health", "down"], Expect::Empty)
    }

    /// `enable health B/S`.
    pub fn enable_health(bs: &str) -> Result<Command, RuntimeError> {
        Command::new(&["enable", "health", bs], Expect::Empty)
    }

    /// The fresh health check, in order: `state drain`, `health down` (lost in
    /// maintenance, honoured in drain), `state ready`. The server then reads DOWN
    /// and goes UP only after `rise` checks that ran after the change.
    pub fn fresh_check(bs: &str) -> Result<[Command; 3], RuntimeError> {
        Ok([
            set_state(bs, "drain")?,
            health_down(bs)?,
            set_state(bs, "ready")?,
        ])
    }

    /// `add server B/S ADDR:PORT check [ARGS]` (IPv6 in brackets: `[::1]:80`).
    pub fn add_server(
        bs: &str,
        addr: SocketAddr,
        check_args: &[&str],
    ) -> Result<Command, RuntimeError> {
        let addr = addr.to_string();
        let mut words = vec!["add", "server", bs, &addr, "check"];
        words.extend_from_slice(check_args);
        Command::new(&words, Expect::Prefix("New server registered"))
    }

    /// `del server B/S` (only from maintenance, without connections).
    pub fn del_server(bs: &str) -> Result<Command, RuntimeError> {
        Command::new(&["del", "server", bs], Expect::Prefix("Server deleted"))
    }

    /// `shutdown sessions server B/S`.
    pub fn shutdown_sessions(bs: &str) -> Result<Command, RuntimeError> {
        Command::new(&["shutdown", "sessions", "server", bs], Expect::Empty)
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            Endpoint::parse("ipv4@127.0.0.1:9999"),
            Ok(Endpoint::Tcp("127.0.0.1:9999".parse().expect("addr")))
        );
        assert_eq!(
            Endpoint::parse("/run/haproxy/admin.sock"),
            Ok(Endpoint::Unix("/run/haproxy/admin.sock".into()))
        );
        assert!(Endpoint::parse("ipv4@localhost").is_err());
    }

    #[test]
    fn injection_never_reaches_the_socket() {
        for bad in [
            "web/s1;shutdown",
            "web/s1\nshutdown frontend fe",
            "web s1",
            "",
        ] {
            assert!(cmd::set_state(bad, "ready").is_err(), "{bad:?}");
        }
        assert!(cmd::set_state("web/slot1", "ready").is_ok());
    }

    #[test]
    fn answers_are_checked_against_what_success_looks_like() {
        let c = cmd::set_state("web/slot1", "ready").expect("valid");
        assert!(c.check(String::new()).is_ok());
        let err = c.check("No such server.\n".into()).expect_err("error text");
        assert_eq!(err.answer(), Some("No such server."));
        let add = cmd::add_server("dyn/web-1", "127.0.0.1:80".parse().expect("addr"), &[])
            .expect("valid");
        assert!(add.check("New server registered.\n".into()).is_ok());
        assert!(
            add.check("'cookie' option is not accepted for dynamic server\n".into())
                .is_err()
        );
    }

    /// Issue 13, hole 12: an IPv6 app address could not be attached (the brackets
    /// were refused as not a plain name). HAProxy 2.6 takes `[::1]:8080` in
    /// `add server` and a bare `::1` in `set server ... addr`.
    #[test]
    fn ipv6_app_addresses_make_valid_commands() {
        let v6: SocketAddr = "[::1]:8080".parse().expect("addr");
        let add = cmd::add_server("dyn/web-1", v6, &["inter", "200ms"]).expect("valid");
        assert_eq!(
            add.text(),
            "add server dyn/web-1 [::1]:8080 check inter 200ms"
        );
        let set = cmd::set_addr("web/slot1", v6.ip(), v6.port()).expect("valid");
        assert_eq!(set.text(), "set server web/slot1 addr ::1 port 8080");
        let full: SocketAddr = "[2001:db8::7]:80".parse().expect("addr");
        assert_eq!(
            cmd::add_server("dyn/web-1", full, &[])
                .expect("valid")
                .text(),
            "add server dyn/web-1 [2001:db8::7]:80 check"
        );
    }

    #[test]
    fn a_fresh_check_is_drain_then_health_down_then_ready() {
        let texts: Vec<String> = cmd::fresh_check("web/slot1")
            .expect("valid")
            .iter()
            .map(|c| c.text().to_string())
            .collect();
        assert_eq!(
            texts,
            [
                "set server web/slot1 state drain",
                "set server web/slot1 health down",
                "set server web/slot1 state ready"
            ]
        );
    }
}
