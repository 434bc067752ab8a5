//! Checking a release on its own host before it is attached: the health-check
//! file lives outside the release and cannot tell a broken release from a good
//! one, so the agent fetches a path served *from the release* on its app address,
//! `rise` times in a row.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Why a health path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "health path {0:?} must start with '/' and hold no spaces or control characters (e.g. \"/health.html\")"
)]
pub struct BadHealthPath(pub String);

/// A URL path safe to put in a request line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HealthPath(String);

impl HealthPath {
    /// Validates `path`.
    pub fn new(path: impl Into<String>) -> Result<Self, BadHealthPath> {
        let path = path.into();
        if !path.starts_with('/')
            || path.len() > 1024
            || path.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(BadHealthPath(path));
        }
        Ok(HealthPath(path))
    }

    /// The path.
    pub fn as_str(&self) -> &str {
        &self.0
    }
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

/// Check the app on this host: GET `path`, expect `expect`, `rise` times in a row,
/// one every `interval`, giving up after `timeout`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// Path served from the release.
    pub path: HealthPath,
    /// Expected status code.
    pub expect: u16,
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
