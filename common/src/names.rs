//! Validated names. Construction rejects bad input, so everything downstream can
//! pass these to a command line, a path or the HAProxy runtime API without
//! re-checking.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: {why}")]
pub struct InvalidName {
    /// What kind of name it was meant to be ("host name", "role", ...).
    pub what: &'static str,
    /// The refused text (possibly truncated).
    pub value: String,
    /// The rule it broke, phrased as the fix.
    pub why: &'static str,
}

fn invalid(what: &'static str, value: &str, why: &'static str) -> InvalidName {
    let value = value.chars().take(80).collect();
    InvalidName { what, value, why }
}

/// Checks the rule shared by host, hook and server names: 1–`max` characters of
/// `[A-Za-z0-9._-]`, starting with a letter or digit, and no `..`.
///
/// That alphabet is what the HAProxy runtime API, a DNS label and a file name all
/// accept without quoting; a leading `-` would read as an option, `..` as a parent
/// directory, and `;` or a newline would inject a second runtime API command.
pub fn check_simple(what: &'static str, value: &str, max: usize) -> Result<(), InvalidName> {
    if value.is_empty() {
        return Err(invalid(what, value, "it must not be empty"));
    }
    if value.len() > max {
        return Err(invalid(what, value, "it is too long"));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(invalid(
            what,
            value,
            "use only letters, digits, '.', '_' and '-'",
        ));
    }
    if !value.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(invalid(what, value, "it must start with a letter or digit"));
    }
    if value.contains("..") {
        return Err(invalid(what, value, "it must not contain '..'"));
    }
    Ok(())
}

macro_rules! simple_name {
    ($(#[$doc:meta])* $ty:ident, $what:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $ty(String);

        impl $ty {
            /// Validates and wraps `value`.
            pub fn new(value: impl Into<String>) -> Result<Self, InvalidName> {
                let value = value.into();
                check_simple($what, &value, $max)?;
                Ok(Self(value))
            }

            /// The validated text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $ty {
            type Error = InvalidName;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::new(value)
            }
        }

        impl From<$ty> for String {
            fn from(name: $ty) -> String {
                name.0
            }
        }

        impl std::str::FromStr for $ty {
            type Err = InvalidName;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

simple_name!(
    /// A host's name: the inventory key, the agent's `name` and its certificate's
    /// name. Also a valid DNS name, so TLS can match it.
    HostName,
    "host name",
    63
);

simple_name!(
    /// The name of a hook in an agent's `[hooks]` table.
    HookName,
    "hook name",
    64
);

simple_name!(
    /// An HAProxy backend's name, as written in the HAProxy config. It reaches the
    /// runtime API, so it follows the same rule as host names.
    BackendName,
    "backend name",
    64
);

/// What a certificate entitles its holder to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// An agent on a host: accepts requests, serves over QUIC.
    Agent,
    /// An operator's coordinator: dials agents.
    Coordinator,
}

impl Role {
    /// The word used on the command line and inside certificates.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Coordinator => "coordinator",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = InvalidName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "agent" => Ok(Role::Agent),
            "coordinator" => Ok(Role::Coordinator),
            _ => Err(invalid("role", s, "use \"agent\" or \"coordinator\"")),
        }
    }
}

/// What a host does in the fleet (inventory `roles`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostRole {
    /// An application server behind the load balancers.
    App,
    /// A load balancer running HAProxy.
    Lb,
    /// A database host (backup and migration hooks).
    Db,
}

impl fmt::Display for HostRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HostRole::App => "app",
            HostRole::Lb => "lb",
            HostRole::Db => "db",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_accept_what_dns_and_haproxy_accept() {
        for ok in ["web-1", "db.internal", "a", "WEB_2", "10"] {
            assert!(HostName::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn host_names_refuse_what_could_inject() {
        for bad in [
            "", "-rf", ".hidden", "a..b", "a b", "a;b", "a\nb", "a/b", "ä", "web-1\0",
        ] {
            assert!(HostName::new(bad).is_err(), "{bad:?}");
        }
        assert!(HostName::new("x".repeat(64)).is_err());
    }

    #[test]
    fn deserializing_validates() {
        let ok: Result<HostName, _> = serde_json::from_str("\"web-1\"");
        assert!(ok.is_ok());
        let bad: Result<HostName, _> = serde_json::from_str("\"--upload-pack=x\"");
        assert!(bad.is_err());
    }
}
