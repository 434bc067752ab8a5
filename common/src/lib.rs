//! What the Handover coordinator and agents must agree on.
//!
//! * [`proto`]: the request the coordinator (or a local operator) sends, and the
//!   responses an agent streams back. One enum per direction, versioned.
//! * [`wire`]: how those messages travel: length-prefixed bincode frames with a hard
//!   size limit checked *before* anything is allocated.
//! * [`tls`]: rustls + quinn configurations for both sides; mutual TLS against the
//!   private CA, with the peer's role and name checked during the handshake.
//! * [`pki`]: the private CA and certificate issuance behind `handover ca`.
//! * [`names`]: validated newtypes for every string that can reach a command line,
//!   a path or the HAProxy runtime API.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod aws;
pub mod duration;
pub mod join;
pub mod names;
pub mod pki;
pub mod proto;
pub mod tls;
pub mod toml_error;
pub mod wire;

/// The version of this build, reported by agents in `status`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Default UDP port agents listen on.
pub const DEFAULT_PORT: u16 = 7443;

/// Whether log lines on stderr may carry colour: only on a terminal (journald,
/// log files, pipes and CI get plain text) and never when `NO_COLOR` is set.
/// Both binaries' loggers ask this.
pub fn stderr_wants_colour() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

#[cfg(feature = "cli-docs")]
pub mod clidocs;
