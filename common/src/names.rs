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
    ($(#[$doc:meta])* $ty:ident, $what:literal, $max:expr $(, $extra:path)?) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $ty(String);

        impl $ty {
            /// Validates and wraps `value`.
            pub fn new(value: impl Into<String>) -> Result<Self, InvalidName> {
                let value = value.into();
                check_simple($what, &value, $max)?;
                $($extra($what, &value)?;)?
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
    63,
    check_dialable
);

simple_name!(
    /// A deployment input's key (`[inputs]` in a plan, `handover inputs set KEY=VALUE`):
    /// it reaches hooks and providers as the environment variable
    /// `HANDOVER_INPUT_<KEY>`, so it must be a name every shell and `env` accept.
    InputKey,
    "input key",
    64,
    check_env_name
);

impl InputKey {
    /// `HANDOVER_INPUT_<KEY>`: the one spelling of the environment variable under
    /// which hooks (on the agent) and providers (on the bastion) see this input.
    pub fn env_name(&self) -> String {
        format!("HANDOVER_INPUT_{}", self.0)
    }
}

/// An environment variable's name: `[A-Z0-9_]`, not starting with a digit. Lower
/// case is refused rather than folded, so `app_env` and `APP_ENV` can never be two
/// keys that reach a hook as one variable.
fn check_env_name(what: &'static str, value: &str) -> Result<(), InvalidName> {
    let ok = value
        .bytes()
        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if !ok || value.as_bytes()[0].is_ascii_digit() {
        return Err(invalid(
            what,
            value,
            "use upper-case letters, digits and '_' only, not starting with a digit (e.g. APP_ENV)",
        ));
    }
    Ok(())
}

/// A host name is what the coordinator hands TLS as the server name it dials, so
/// it must be a DNS name TLS accepts: `10` passed the simple rule but no
/// coordinator could ever dial it (issue 13). DNS refuses a name whose last label
/// is a number (it would read as an IP address) and labels that end in `-`.
fn check_dialable(what: &'static str, value: &str) -> Result<(), InvalidName> {
    if value.ends_with('.') {
        return Err(invalid(what, value, "it must not end with '.'"));
    }
    if rustls_pki_types::DnsName::try_from(value).is_err() {
        return Err(invalid(
            what,
            value,
            "it must be a DNS name: no label may end with '-', and the last label must not be a number (use a name such as web-10, not 10)",
        ));
    }
    Ok(())
}

/// An extra DNS name in a certificate (`handover ca issue --dns`): an exact name,
/// never a wildcard, so a certificate stands for the hosts it names and no others.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DnsName(String);

impl DnsName {
    /// Validates and wraps `value`.
    pub fn new(value: impl Into<String>) -> Result<Self, InvalidName> {
        let value = value.into();
        const WHAT: &str = "DNS name";
        if value.contains('*') {
            return Err(invalid(
                WHAT,
                &value,
                "wildcards are not allowed: list each name with its own --dns",
            ));
        }
        if value.is_empty()
            || !value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
        {
            return Err(invalid(
                WHAT,
                &value,
                "use only letters, digits, '.' and '-'",
            ));
        }
        check_dialable(WHAT, &value)?;
        Ok(DnsName(value))
    }

    /// The validated text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for DnsName {
    type Error = InvalidName;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<DnsName> for String {
    fn from(name: DnsName) -> String {
        name.0
    }
}

impl std::str::FromStr for DnsName {
    type Err = InvalidName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for DnsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DnsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

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

simple_name!(
    /// A rollout's id (`r-20261203-112233-ab12`), as a lease and every call of the
    /// rollout carry it. It reaches the agent's log, its lease file and other
    /// operators' error messages, so it follows the host-name rule.
    RolloutId,
    "rollout id",
    64
);

/// Who runs a rollout, as a lease names it ("ops (alice@bastion)"): free text
/// for people, shown in other operators' terminals and the agent's log, so no
/// control characters (a terminal escape would rewrite their screen) and short.
pub fn check_lease_owner(value: &str) -> Result<(), InvalidName> {
    const WHAT: &str = "lease owner";
    if value.trim().is_empty() {
        return Err(invalid(WHAT, value, "it must not be empty"));
    }
    if value.len() > 200 {
        return Err(invalid(WHAT, value, "it is too long (200 bytes at most)"));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(
            WHAT,
            value,
            "it must not contain control characters (newlines, escapes)",
        ));
    }
    Ok(())
}

/// What a certificate entitles its holder to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// An agent on a host: accepts requests, serves over QUIC.
    Agent,
    /// An operator's coordinator: dials agents.
    Coordinator,
    /// `handover web` on a bastion: serves the read-only page over HTTPS. A TLS
    /// server certificate that neither agents nor coordinators accept.
    Web,
    /// A person's browser (or script) reading `handover web`: a TLS client
    /// certificate that `handover web` accepts and agents refuse.
    Viewer,
}

impl Role {
    /// The word used on the command line and inside certificates.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Coordinator => "coordinator",
            Role::Web => "web",
            Role::Viewer => "viewer",
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
            "web" => Ok(Role::Web),
            "viewer" => Ok(Role::Viewer),
            _ => Err(invalid(
                "role",
                s,
                "use \"agent\", \"coordinator\", \"web\" (the page's server) or \"viewer\" (a browser)",
            )),
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

/// A git revision to deploy: a branch, a tag or a commit id (7–40 hex digits).
///
/// It follows `git check-ref-format`'s rules and refuses anything git could read
/// as an option, so it can be placed on a git command line (after
/// `--end-of-options`, as a second guard) and inside `refs/tags/…`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Revision(String);

impl Revision {
    /// Validates and wraps `value`.
    pub fn new(value: impl Into<String>) -> Result<Self, InvalidName> {
        let value = value.into();
        check_revision(&value)?;
        Ok(Self(value))
    }

    /// The validated text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether it could be a (possibly abbreviated) commit id: 7–40 hex digits.
    pub fn is_commit_id(&self) -> bool {
        is_commit_id(&self.0)
    }
}

/// 7–40 hexadecimal digits.
pub fn is_commit_id(value: &str) -> bool {
    (7..=40).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_hexdigit())
}

fn check_revision(value: &str) -> Result<(), InvalidName> {
    const WHAT: &str = "revision";
    let bad = |why| Err(invalid(WHAT, value, why));
    if value.is_empty() {
        return bad("it must not be empty: give a branch, a tag or a commit id");
    }
    if value.len() > 255 {
        return bad("it is too long (at most 255 characters)");
    }
    if value.starts_with('-') {
        return bad(
            "it must not start with '-' (git would read it as an option): give a branch, a tag or a commit id",
        );
    }
    if value
        .bytes()
        .any(|b| b.is_ascii_control() || b == b' ' || !b.is_ascii())
    {
        return bad("it must not contain spaces, control or non-ASCII characters");
    }
    if value
        .bytes()
        .any(|b| matches!(b, b'~' | b'^' | b':' | b'?' | b'*' | b'[' | b'\\'))
    {
        return bad(
            "it must not contain any of ~ ^ : ? * [ \\ (git ref-name rules): name the branch, tag or commit itself",
        );
    }
    if value.contains("..") {
        return bad(
            "it must not contain '..' (a range or a parent directory): name one branch, tag or commit",
        );
    }
    if value.contains("@{") || value == "@" {
        return bad(
            "it must not contain '@{' or be '@' (reflog syntax): name a branch, tag or commit",
        );
    }
    if value.starts_with('/') || value.ends_with('/') || value.contains("//") {
        return bad("it must not start or end with '/' or contain '//'");
    }
    if value.ends_with('.') {
        return bad("it must not end with '.'");
    }
    for part in value.split('/') {
        if part.starts_with('.') {
            return bad("no part between '/' may start with '.'");
        }
        if part.ends_with(".lock") {
            return bad("no part between '/' may end with '.lock'");
        }
    }
    Ok(())
}

impl TryFrom<String> for Revision {
    type Error = InvalidName;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<Revision> for String {
    fn from(rev: Revision) -> String {
        rev.0
    }
}

impl std::str::FromStr for Revision {
    type Err = InvalidName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

simple_name!(
    /// A release directory's name under `releases/`: `<UTC time>-<short sha>`, e.g.
    /// `20261126T050301Z-1a2b3c4`. One plain path component (no `/`, no `..`, no
    /// leading `-` or `.`), so joining it to `releases/` stays inside.
    ReleaseName,
    "release name",
    64
);

/// A repository URL as the operator wrote it in `allowed_repos`; requests are
/// compared with that list exactly, character for character.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RepoUrl(String);

impl RepoUrl {
    /// Validates and wraps `value`.
    pub fn new(value: impl Into<String>) -> Result<Self, InvalidName> {
        let value = value.into();
        const WHAT: &str = "repository URL";
        if value.is_empty() {
            return Err(invalid(WHAT, &value, "it must not be empty"));
        }
        if value.len() > 1024 {
            return Err(invalid(
                WHAT,
                &value,
                "it is too long (at most 1024 characters)",
            ));
        }
        if value.starts_with('-') {
            return Err(invalid(
                WHAT,
                &value,
                "it must not start with '-' (git would read it as an option): give the URL as listed in allowed_repos",
            ));
        }
        if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(
                WHAT,
                &value,
                "it must not contain spaces or control characters",
            ));
        }
        Ok(Self(value))
    }

    /// The validated text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RepoUrl {
    type Error = InvalidName;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<RepoUrl> for String {
    fn from(url: RepoUrl) -> String {
        url.0
    }
}

impl std::str::FromStr for RepoUrl {
    type Err = InvalidName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for RepoUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RepoUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod revision_tests {
    use super::*;

    #[test]
    fn revisions_accept_branches_tags_and_commit_ids() {
        for ok in [
            "v1",
            "main",
            "release/2026-11",
            "feature/x_y.z",
            "1a2b3c4",
            "0123456789abcdef0123456789abcdef01234567",
            "refs/tags/v1",
        ] {
            assert!(Revision::new(ok).is_ok(), "{ok}");
        }
        assert!(
            Revision::new("1a2b3c4")
                .map(|r| r.is_commit_id())
                .unwrap_or(false)
        );
        assert!(
            !Revision::new("v1")
                .map(|r| r.is_commit_id())
                .unwrap_or(true)
        );
    }

    #[test]
    fn revisions_refuse_options_ranges_and_paths() {
        for bad in [
            "--upload-pack=touch /tmp/x",
            "-h",
            "--output=x",
            "a..b",
            "a b",
            "../x",
            "",
            "a\nb",
            "a\0b",
            "a~1",
            "a^",
            "a:b",
            "a?",
            "a*",
            "a[b",
            "a\\b",
            "a@{1}",
            "@",
            "/a",
            "a/",
            "a//b",
            "a.",
            ".a",
            "a/.b",
            "a.lock",
            "a.lock/b",
            "vé",
        ] {
            let err = Revision::new(bad).expect_err(bad);
            assert!(!err.why.is_empty(), "{bad:?} needs a reason");
        }
    }

    #[test]
    fn refusals_name_the_rule() {
        let err = Revision::new("--upload-pack=touch /tmp/x").expect_err("refused");
        assert!(err.to_string().contains("must not start with '-'"), "{err}");
        let err = Revision::new("a..b").expect_err("refused");
        assert!(err.to_string().contains("'..'"), "{err}");
    }

    #[test]
    fn release_names_are_one_plain_component() {
        assert!(ReleaseName::new("20261126T050301Z-1a2b3c4").is_ok());
        for bad in [
            "../x",
            "a/b",
            "-h",
            "--output=x",
            ".x",
            "a..b",
            "a b",
            "",
            ".",
        ] {
            assert!(ReleaseName::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn repo_urls_refuse_options_and_whitespace() {
        assert!(RepoUrl::new("file:///srv/git/app.git").is_ok());
        assert!(RepoUrl::new("https://git.example.com/app.git").is_ok());
        for bad in ["--upload-pack=touch /tmp/x", "-h", "a b", "a\nb", ""] {
            assert!(RepoUrl::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn deserializing_a_revision_validates() {
        let bad: Result<Revision, _> = serde_json::from_str("\"--output=x\"");
        assert!(bad.is_err());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_accept_what_dns_and_haproxy_accept() {
        for ok in [
            "web-1",
            "db.internal",
            "a",
            "WEB_2",
            "web-10",
            "10a",
            "dc-2.web-1",
        ] {
            assert!(HostName::new(ok).is_ok(), "{ok}");
        }
    }

    /// Issue 13: `10` was a valid host name that no coordinator could dial, since
    /// TLS refuses it as a server name.
    #[test]
    fn host_names_must_be_dialable_dns_names() {
        for bad in [
            "10",
            "127.0.1.1",
            "web.10",
            "0x1f",
            "web-",
            "web-.dc",
            "web.",
        ] {
            let err = HostName::new(bad).expect_err(bad);
            assert!(
                err.why.contains("DNS name") || err.why.contains("end with '.'"),
                "{bad}: {err}"
            );
            assert!(
                rustls_pki_types::ServerName::try_from(bad).is_err()
                    || bad.parse::<std::net::IpAddr>().is_ok()
                    || bad.ends_with('.'),
                "{bad} would have been dialable after all"
            );
        }
        for ok in ["web-1", "WEB_2", "dc-2.web-1"] {
            let name = HostName::new(ok).expect(ok);
            assert!(
                matches!(
                    rustls_pki_types::ServerName::try_from(name.as_str()),
                    Ok(rustls_pki_types::ServerName::DnsName(_))
                ),
                "{ok} is a host name TLS cannot dial"
            );
        }
    }

    #[test]
    fn certificate_dns_names_refuse_wildcards_and_non_names() {
        let err = DnsName::new("*.evil").expect_err("wildcard");
        assert!(
            err.to_string().contains("wildcards are not allowed"),
            "{err}"
        );
        for bad in [
            "",
            "a b",
            "web_1.example",
            "10",
            "-x.example",
            "a..b",
            "x/y",
        ] {
            assert!(DnsName::new(bad).is_err(), "{bad:?}");
        }
        for ok in ["web-1.example.com", "localhost", "web-1"] {
            assert!(DnsName::new(ok).is_ok(), "{ok}");
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

    /// Issue 13: lease owner and rollout strings reached the agent unchecked.
    #[test]
    fn rollout_ids_and_lease_owners_refuse_what_could_mislead_a_reader() {
        assert!(RolloutId::new("r-20261203-112233-ab12").is_ok());
        for bad in ["", "-x", "r 1", "r\n1", "r\u{1b}[2J", "../lease"] {
            assert!(RolloutId::new(bad).is_err(), "{bad:?}");
        }
        assert!(check_lease_owner("ops (alice@bastion)").is_ok());
        assert!(check_lease_owner("opérateur (zoë@bastion)").is_ok());
        for bad in ["", "   ", "ops\nFAKE LOG LINE", "ops\u{1b}[2J"] {
            assert!(check_lease_owner(bad).is_err(), "{bad:?}");
        }
        assert!(check_lease_owner(&"x".repeat(201)).is_err());
    }
}

#[cfg(test)]
mod input_key_tests {
    use super::InputKey;

    #[test]
    fn input_keys_are_environment_names() {
        assert!(InputKey::new("APP_ENV").is_ok());
        assert!(InputKey::new("DB_2").is_ok());
        for bad in ["app_env", "2FAST", "A-B", "A.B", "", "A B", "A=B"] {
            assert!(InputKey::new(bad).is_err(), "{bad:?} accepted");
        }
    }
}
