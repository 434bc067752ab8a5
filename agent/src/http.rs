//! A minimal HTTP/1.0 GET for what the agent reads on its own host: mod_status and
//! the release's health page. Both URLs come from the agent's own config or a
//! validated path, the answer is capped, and nothing more than a status and a body
//! is needed, so a full HTTP client would be weight without benefit.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest answer read.
const MAX_RESPONSE: u64 = 256 * 1024;

/// An HTTP answer: status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The status line, for messages.
    pub status_line: String,
    /// The body (lossy UTF-8).
    pub body: String,
}

/// GETs `path` from `host:port` within `timeout`; the error text says what failed.
pub async fn get(host: &str, port: u16, path: &str, timeout: Duration) -> Result<Answer, String> {
    tokio::time::timeout(timeout, get_inner(host, port, path))
        .await
        .map_err(|_| {
            format!(
                "no answer within {}",
                handover_common::duration::format(timeout)
            )
        })?
}

async fn get_inner(host: &str, port: u16, path: &str) -> Result<Answer, String> {
    let mut stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let host_header = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {host_header}\r\nUser-Agent: handover-agent\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("cannot send the request: {e}"))?;
    let mut raw = Vec::new();
    (&mut stream)
        .take(MAX_RESPONSE)
        .read_to_end(&mut raw)
        .await
        .map_err(|e| format!("reading the answer: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| "the answer has no HTTP header".to_string())?;
    let status_line = head.lines().next().unwrap_or("").to_owned();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP status line: {status_line:?}"))?;
    Ok(Answer {
        status,
        status_line,
        body: body.to_owned(),
    })
}
