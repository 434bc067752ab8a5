//! A minimal HTTP/1.1 client over `std::net::TcpStream`.
//!
//! Hand-written on purpose: tests need exact control over connections (keep one
//! open, reuse it, send or withhold the persistence cookie) and must see every
//! failure (reset, timeout, 5xx) as it is, which a full client would retry or hide.
//! Only GET, `Content-Length`, chunked and read-to-close bodies are supported.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context as _, bail};

/// Connect timeout; loopback connects either succeed at once or are refused.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Read/write timeout per request; a hung server is a failure, not a hang.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest body accepted; test pages are tiny.
const MAX_BODY: usize = 1 << 20;

/// The name of HAProxy's persistence cookie in harness configs.
pub const COOKIE_NAME: &str = "SERVERID";

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Header names lower-cased, in order received.
    pub headers: Vec<(String, String)>,
    /// Body as (lossy) UTF-8.
    pub body: String,
    /// Whether the server will close the connection after this response.
    pub close: bool,
}

impl Response {
    /// First header value named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Value of the `SERVERID` cookie HAProxy set in this response, if any.
    pub fn server_cookie(&self) -> Option<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k == "set-cookie")
            .find_map(|(_, v)| {
                let first = v.split(';').next()?.trim();
                let (name, value) = first.split_once('=')?;
                (name == COOKIE_NAME).then(|| value.to_owned())
            })
    }

    /// Which server answered: the trimmed body of the harness pages
    /// (`index.html` is `<host name>\n`). Empty body reads as `status-<code>`.
    pub fn served_by(&self) -> String {
        let b = self.body.trim();
        if b.is_empty() {
            format!("status-{}", self.status)
        } else {
            b.to_owned()
        }
    }

    /// 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// One client connection that can carry several requests (keep-alive).
#[derive(Debug)]
pub struct Conn {
    reader: BufReader<TcpStream>,
    host: String,
}

impl Conn {
    /// Connects to `addr`, which must be a loopback address.
    pub fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        anyhow::ensure!(
            addr.ip().is_loopback(),
            "harness traffic may only go to loopback, not {addr}"
        );
        let s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
            .with_context(|| format!("connect {addr}"))?;
        s.set_read_timeout(Some(IO_TIMEOUT))
            .context("set_read_timeout")?;
        s.set_write_timeout(Some(IO_TIMEOUT))
            .context("set_write_timeout")?;
        s.set_nodelay(true).context("set_nodelay")?;
        Ok(Self {
            reader: BufReader::new(s),
            host: addr.to_string(),
        })
    }

    /// The local address of the connection (which client port HAProxy sees).
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.reader.get_ref().local_addr().context("local_addr")
    }

    /// Sends `GET path`, optionally with the persistence cookie, and reads the reply.
    /// `keep_alive = false` asks the server to close afterwards.
    pub fn get(
        &mut self,
        path: &str,
        cookie: Option<&str>,
        keep_alive: bool,
    ) -> anyhow::Result<Response> {
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: handover-tests\r\n",
            self.host
        );
        if let Some(c) = cookie {
            req.push_str(&format!("Cookie: {COOKIE_NAME}={c}\r\n"));
        }
        if !keep_alive {
            req.push_str("Connection: close\r\n");
        }
        req.push_str("\r\n");
        self.reader
            .get_mut()
            .write_all(req.as_bytes())
            .context("send request")?;
        self.read_response()
    }

    fn read_line(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).context("read")?;
        if n == 0 {
            bail!("connection closed by peer");
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    }

    fn read_response(&mut self) -> anyhow::Result<Response> {
        let status_line = self.read_line().context("read status line")?;
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default().to_owned();
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {status_line:?}"))?;
        let mut headers = Vec::new();
        loop {
            let line = self.read_line().context("read header")?;
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.to_ascii_lowercase())
        };
        let conn_hdr = get("connection").unwrap_or_default();
        let mut close = conn_hdr.contains("close")
            || (version == "HTTP/1.0" && !conn_hdr.contains("keep-alive"));
        let mut body = Vec::new();
        if let Some(len) = get("content-length") {
            let len: usize = len.parse().context("bad content-length")?;
            anyhow::ensure!(len <= MAX_BODY, "body too large: {len}");
            body.resize(len, 0);
            self.reader.read_exact(&mut body).context("read body")?;
        } else if get("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
            loop {
                let size_line = self.read_line().context("read chunk size")?;
                let size =
                    usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                        .with_context(|| format!("bad chunk size {size_line:?}"))?;
                if size == 0 {
                    // Trailers until the empty line.
                    while !self.read_line()?.is_empty() {}
                    break;
                }
                anyhow::ensure!(body.len() + size <= MAX_BODY, "body too large");
                let start = body.len();
                body.resize(start + size, 0);
                self.reader
                    .read_exact(&mut body[start..])
                    .context("read chunk")?;
                self.read_line().context("read chunk end")?;
            }
        } else if status != 204 && status != 304 {
            (&mut self.reader)
                .take(MAX_BODY as u64)
                .read_to_end(&mut body)
                .context("read body to close")?;
            close = true;
        }
        Ok(Response {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            close,
        })
    }
}

/// One request on a fresh connection that is closed afterwards.
pub fn get(addr: SocketAddr, path: &str, cookie: Option<&str>) -> anyhow::Result<Response> {
    Conn::connect(addr)?.get(path, cookie, false)
}
