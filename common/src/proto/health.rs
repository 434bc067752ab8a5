//! Checking a release on its own host before it is attached: the health-check
//! file lives outside the release and cannot tell a broken release from a good
//! one, so the agent fetches a path served *from the release* on its app address,
//! `rise` times in a row.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Why a health path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("health path {path:?} {why} (e.g. \"/health.html\")")]
pub struct BadHealthPath {
    /// The refused text (possibly truncated).
    pub path: String,
    /// The rule it broke, phrased as the fix.
    pub why: &'static str,
}

/// A URL path safe to put in a request line: `/`, then visible ASCII only, no
/// fragment, and no `.` or `..` segment (the check must fetch what the plan names,
/// not whatever a web server makes of a climb out of it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HealthPath(String);

impl HealthPath {
    /// Validates `path`.
    pub fn new(path: impl Into<String>) -> Result<Self, BadHealthPath> {
        let path = path.into();
        match health_path_fault(&path) {
            Some(why) => Err(BadHealthPath {
                path: path.chars().take(80).collect(),
                why,
            }),
            None => Ok(HealthPath(path)),
        }
    }

    /// The path.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn health_path_fault(path: &str) -> Option<&'static str> {
    if !path.starts_with('/') {
        return Some("must start with '/'");
    }
    if path.len() > 1024 {
        return Some("is too long (at most 1024 characters)");
    }
    if !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Some(
            "must hold no spaces, control or non-ASCII characters: percent-encode them (a space is %20)",
        );
    }
    if path.contains('#') {
        return Some("must not hold a '#' fragment: a client never sends it");
    }
    let only_path = path.split('?').next().unwrap_or(path);
    if only_path.split('/').any(|seg| seg == "." || seg == "..") {
        return Some("must not hold '.' or '..' segments: name the file itself");
    }
    None
}

impl TryFrom<String> for HealthPath {
    type Error = BadHealthPath;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<HealthPath> for String {
    fn from(p: HealthPath) -> String {
        p.0
    }
}

impl std::fmt::Display for HealthPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why an expected HTTP status was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "HTTP status {0} does not exist, so no answer could ever match it: give one from 100 to 599 (e.g. 200)"
)]
pub struct BadHttpStatus(pub u16);

/// An HTTP status code a server can answer: 100–599.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u16", into = "u16")]
pub struct HttpStatus(u16);

impl HttpStatus {
    /// 200 OK.
    pub const OK: HttpStatus = HttpStatus(200);

    /// Validates `code`.
    pub fn new(code: u16) -> Result<Self, BadHttpStatus> {
        if (100..=599).contains(&code) {
            Ok(HttpStatus(code))
        } else {
            Err(BadHttpStatus(code))
        }
    }

    /// The code.
    pub fn get(self) -> u16 {
        self.0
    }
}

impl TryFrom<u16> for HttpStatus {
    type Error = BadHttpStatus;
    fn try_from(code: u16) -> Result<Self, Self::Error> {
        Self::new(code)
    }
}

impl From<HttpStatus> for u16 {
    fn from(s: HttpStatus) -> u16 {
        s.0
    }
}

impl std::fmt::Display for HttpStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The shortest time between two health checks, on both sides: `interval = "0s"`
/// once made 1,144 checks in 2 s.
pub const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// Check the app on this host: GET `path`, expect `expect`, `rise` times in a row,
/// one every `interval`, giving up after `timeout`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// Path served from the release.
    pub path: HealthPath,
    /// Expected status code.
    pub expect: HttpStatus,
    /// Consecutive passes required.
    pub rise: u32,
    /// Time between checks.
    pub interval: Duration,
    /// Give up after this long.
    pub timeout: Duration,
}

/// The check passed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReport {
    /// Checks made in all.
    pub checks: u32,
    /// The last status line.
    pub last: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_paths_are_one_plain_request_target() {
        for ok in [
            "/health.html",
            "/",
            "/VERSION",
            "/a/b.c?full=1",
            "/x%20y",
            "/a/..b",
        ] {
            assert!(HealthPath::new(ok).is_ok(), "{ok}");
        }
        for (bad, rule) in [
            ("health.html", "start with '/'"),
            ("/a b/../x", "no spaces"),
            ("/a/../x", "'..' segments"),
            ("/a/./x", "'..' segments"),
            ("/..", "'..' segments"),
            ("/x#top", "fragment"),
            ("/é", "non-ASCII"),
            ("/a\r\nHost: evil", "control"),
        ] {
            let err = HealthPath::new(bad).expect_err(bad).to_string();
            assert!(err.contains(rule), "{bad:?}: {err}");
        }
    }

    #[test]
    fn deserializing_a_health_path_validates() {
        let bad: Result<HealthPath, _> = serde_json::from_str("\"/a/../b\"");
        assert!(bad.is_err());
    }

    #[test]
    fn http_statuses_are_ones_a_server_can_send() {
        assert_eq!(HttpStatus::new(200).map(HttpStatus::get), Ok(200));
        for bad in [0, 99, 600, 65535] {
            assert!(HttpStatus::new(bad).is_err(), "{bad}");
        }
        let bad: Result<HttpStatus, _> = serde_json::from_str("0");
        assert!(bad.is_err());
    }
}
