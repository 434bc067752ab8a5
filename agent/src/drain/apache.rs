//! Apache mod_status, machine-readable form (`/server-status?auto`).
//!
//! The output is `Key: value` lines whose set and order change with the MPM,
//! `ExtendedStatus` and the Apache version, so it is parsed by key, never by line
//! position: a field Apache did not print stays `None`. A known numeric field
//! with a value that is not a number, or a body with no mod_status key at all
//! (an HTML page, an error page), is an [`ApacheError`], never a panic or a zero.
//!
//! It is fetched with a minimal HTTP/1.0 GET over a Tokio `TcpStream`: the URL
//! comes from the agent's own config, is plain HTTP on the host itself, and the
//! answer is a few hundred bytes, so an HTTP client crate would add far more than
//! it saves.

use std::collections::BTreeMap;
use std::time::Duration;

use handover_common::proto::drain::ApacheFigures;
use serde::Deserialize;

/// Why mod_status could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApacheError {
    /// The body has no mod_status key at all.
    #[error(
        "not mod_status ?auto output ({0}): check that `[app] status_url` ends in /server-status?auto"
    )]
    NotModStatus(String),
    /// A field that must be a number is not.
    #[error("mod_status field {key:?} has the non-numeric value {value:?}")]
    BadValue {
        /// The key.
        key: String,
        /// Its value.
        value: String,
    },
    /// The HTTP exchange failed.
    #[error("GET {url}: {why}")]
    Http {
        /// The URL.
        url: String,
        /// What went wrong.
        why: String,
    },
}

/// Everything mod_status `?auto` reports that Handover uses; `None` = not printed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModStatus {
    /// `ServerMPM` (event, worker, prefork).
    pub server_mpm: Option<String>,
    /// `Total Accesses` (ExtendedStatus).
    pub total_accesses: Option<u64>,
    /// `Total kBytes` (ExtendedStatus).
    pub total_kbytes: Option<u64>,
    /// `ReqPerSec` (ExtendedStatus).
    pub req_per_sec: Option<f64>,
    /// `ServerUptimeSeconds`.
    pub uptime_secs: Option<u64>,
    /// `BusyWorkers`.
    pub busy_workers: Option<u32>,
    /// `IdleWorkers`.
    pub idle_workers: Option<u32>,
    /// `GracefulWorkers` (2.4.41+).
    pub graceful_workers: Option<u32>,
    /// `ConnsTotal` (event MPM).
    pub conns_total: Option<u32>,
    /// `ConnsAsyncWriting` (event MPM).
    pub conns_async_writing: Option<u32>,
    /// `ConnsAsyncKeepAlive` (event MPM).
    pub conns_async_keep_alive: Option<u32>,
    /// `ConnsAsyncClosing` (event MPM).
    pub conns_async_closing: Option<u32>,
    /// `Scoreboard`: one character per worker slot.
    pub scoreboard: Option<String>,
}

impl ModStatus {
    /// The subset the drain display and status carry.
    pub fn figures(&self) -> ApacheFigures {
        ApacheFigures {
            busy_workers: self.busy_workers,
            idle_workers: self.idle_workers,
            graceful_workers: self.graceful_workers,
            conns_total: self.conns_total,
            conns_keep_alive: self.conns_async_keep_alive,
            total_accesses: self.total_accesses,
        }
    }
}

/// Parses a `?auto` body.
pub fn parse(body: &str) -> Result<ModStatus, ApacheError> {
    if body.trim_start().starts_with('<') {
        return Err(ApacheError::NotModStatus(
            "got HTML; the URL lacks ?auto or is not mod_status".into(),
        ));
    }
    // A body cut short may end inside a line ("BusyWork"): only complete lines count.
    let complete = match body.rfind('\n') {
        Some(end) if !body.ends_with('\n') => &body[..end],
        None if !body.is_empty() => "",
        _ => body,
    };
    let fields: BTreeMap<&str, &str> = complete
        .lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect();

    let text = |key: &str| fields.get(key).map(|v| v.to_string());
    fn number<T: std::str::FromStr>(
        fields: &BTreeMap<&str, &str>,
        key: &str,
    ) -> Result<Option<T>, ApacheError> {
        match fields.get(key) {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| ApacheError::BadValue {
                key: key.to_owned(),
                value: v.to_string(),
            }),
        }
    }
    let status = ModStatus {
        server_mpm: text("ServerMPM"),
        total_accesses: number(&fields, "Total Accesses")?,
        total_kbytes: number(&fields, "Total kBytes")?,
        req_per_sec: number(&fields, "ReqPerSec")?,
        uptime_secs: number(&fields, "ServerUptimeSeconds")?,
        busy_workers: number(&fields, "BusyWorkers")?,
        idle_workers: number(&fields, "IdleWorkers")?,
        graceful_workers: number(&fields, "GracefulWorkers")?,
        conns_total: number(&fields, "ConnsTotal")?,
        conns_async_writing: number(&fields, "ConnsAsyncWriting")?,
        conns_async_keep_alive: number(&fields, "ConnsAsyncKeepAlive")?,
        conns_async_closing: number(&fields, "ConnsAsyncClosing")?,
        scoreboard: text("Scoreboard"),
    };
    if status == ModStatus::default() && !fields.contains_key("ServerVersion") {
        let first: String = body.lines().next().unwrap_or("").chars().take(60).collect();
        return Err(ApacheError::NotModStatus(format!(
            "no mod_status field; it starts with {first:?}"
        )));
    }
    Ok(status)
}

/// `[app] status_url`: where mod_status answers, validated when the config loads.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct StatusUrl {
    url: String,
    host: String,
    port: u16,
    path: String,
}

impl TryFrom<String> for StatusUrl {
    type Error = String;

    fn try_from(url: String) -> Result<Self, String> {
        let hint = "write it like \"http://127.0.0.1/server-status?auto\"";
        let Some(rest) = url.strip_prefix("http://") else {
            return Err(format!(
                "status_url {url:?} must be plain http:// (mod_status is read on the host itself); {hint}"
            ));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if path.contains(|c: char| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "status_url {url:?} has spaces or control characters; {hint}"
            ));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| {
                format!("status_url {url:?}: unclosed '[' in the address; {hint}")
            })?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        let port = match port {
            None => 80,
            Some(p) => p
                .parse()
                .map_err(|_| format!("status_url {url:?}: bad port {p:?}; {hint}"))?,
        };
        if host.is_empty() || host.contains('@') {
            return Err(format!("status_url {url:?} has no usable host; {hint}"));
        }
        Ok(StatusUrl {
            host: host.to_owned(),
            port,
            path: path.to_owned(),
            url,
        })
    }
}

impl std::fmt::Display for StatusUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

/// GETs and parses mod_status, within `timeout`.
pub async fn fetch(url: &StatusUrl, timeout: Duration) -> Result<ModStatus, ApacheError> {
    let http = |why: String| ApacheError::Http {
        url: url.url.clone(),
        why,
    };
    let body = tokio::time::timeout(timeout, get(url))
        .await
        .map_err(|_| {
            http(format!(
                "no answer within {}",
                handover_common::duration::format(timeout)
            ))
        })?
        .map_err(http)?;
    parse(&body)
}

async fn get(url: &StatusUrl) -> Result<String, String> {
    // The caller bounds the time; this bound only keeps a stuck socket from
    // outliving it.
    let answer =
        crate::http::get(&url.host, url.port, &url.path, Duration::from_secs(3600)).await?;
    if answer.status != 200 {
        return Err(format!(
            "answered {:?}: is mod_status enabled and allowed from this host?",
            answer.status_line
        ));
    }
    Ok(answer.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/mod_status")
            .join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn event_mpm_with_extended_status() {
        let s = parse(&fixture("event.txt")).expect("event fixture parses");
        assert_eq!(s.server_mpm.as_deref(), Some("event"));
        assert_eq!(s.busy_workers, Some(1));
        assert_eq!(s.idle_workers, Some(74));
        assert_eq!(s.graceful_workers, Some(0));
        assert_eq!(s.conns_total, Some(0));
        assert_eq!(s.conns_async_keep_alive, Some(0));
        assert_eq!(s.total_accesses, Some(6));
        assert!(s.req_per_sec.is_some());
        assert_eq!(s.scoreboard.as_ref().map(|b| b.contains('W')), Some(true));
    }

    #[test]
    fn prefork_has_no_async_connection_fields() {
        let s = parse(&fixture("prefork.txt")).expect("prefork fixture parses");
        assert_eq!(s.server_mpm.as_deref(), Some("prefork"));
        assert_eq!(s.busy_workers, Some(1));
        assert_eq!(s.idle_workers, Some(4));
        assert_eq!(s.total_accesses, Some(0));
        assert_eq!(s.conns_total, None);
        assert_eq!(s.conns_async_keep_alive, None);
    }

    #[test]
    fn without_extended_status_the_counters_stay_absent() {
        let s = parse(&fixture("no-extended.txt")).expect("fixture parses");
        assert_eq!(s.total_accesses, None);
        assert_eq!(s.req_per_sec, None);
        assert_eq!(s.busy_workers, Some(1));
        assert_eq!(s.idle_workers, Some(74));
    }

    #[test]
    fn a_truncated_body_keeps_the_complete_lines_only() {
        let s = parse(&fixture("truncated.txt")).expect("fixture parses");
        assert_eq!(s.total_accesses, Some(6));
        // The cut line "BusyWork" and everything after it are absent, not zero.
        assert_eq!(s.busy_workers, None);
        assert_eq!(s.idle_workers, None);
    }

    #[test]
    fn garbage_is_an_error_value() {
        for body in [
            fixture("garbage.txt"),
            "".into(),
            "<html><body>It works</body></html>".into(),
        ] {
            assert!(
                matches!(parse(&body), Err(ApacheError::NotModStatus(_))),
                "{body:?}"
            );
        }
        assert_eq!(
            parse("BusyWorkers: many\nIdleWorkers: 3\n"),
            Err(ApacheError::BadValue {
                key: "BusyWorkers".into(),
                value: "many".into()
            })
        );
    }

    #[test]
    fn status_urls_are_checked_when_the_config_loads() {
        let ok = StatusUrl::try_from("http://127.0.1.1:8080/server-status?auto".to_string())
            .expect("valid");
        assert_eq!(
            (ok.host.as_str(), ok.port, ok.path.as_str()),
            ("127.0.1.1", 8080, "/server-status?auto")
        );
        let v6 = StatusUrl::try_from("http://[::1]/server-status?auto".to_string()).expect("v6");
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 80));
        for bad in [
            "https://127.0.0.1/server-status?auto",
            "127.0.0.1/server-status",
            "http://127.0.0.1:http/x",
            "http:///x",
            "http://[::1/x",
        ] {
            assert!(StatusUrl::try_from(bad.to_string()).is_err(), "{bad}");
        }
    }
}
