//! Who may read the page, and over what.
//!
//! On loopback the page may be plain HTTP (reach it through an SSH tunnel).
//! Anywhere else it is HTTPS with a `web` certificate of the fleet's CA, and
//! every reader proves who they are: a `viewer` client certificate of the same
//! CA, checked in the handshake (an agent's or a coordinator's certificate is
//! refused there), or the bearer token of `--token-file`. A browser that shows
//! the token once (`/?token=T`) gets a cookie derived from it, so the token does
//! not stay in the address bar or the history.
//!
//! Tokens are compared in constant time: each side is passed through HMAC with a
//! key made at start, and the tags compared by ring (`hmac::verify`).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use handover_common::names::Role;
use handover_common::pki;
use handover_common::tls::{self, CredentialFiles, Credentials};
use ring::hmac;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// The cookie a browser keeps after showing the token once.
pub const COOKIE: &str = "handover_web";
/// What the cookie's value is an HMAC of (keyed by the token).
const COOKIE_MESSAGE: &[u8] = b"handover web session v1";
/// The shortest token accepted from a file.
const MIN_TOKEN: usize = 16;
/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes under way at once; more wait to be accepted.
const HANDSHAKES: usize = 64;

/// Whether an address is loopback: 127.0.0.0/8 and ::1 (an IPv4-mapped
/// loopback too). Only the host itself can reach these, so they may be plain
/// HTTP; every other address, 0.0.0.0 and :: included, needs TLS and readers
/// who prove who they are.
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// Refuses a listen address the page may not serve with these settings, naming
/// the flags to add. Checked before anything is read or bound.
pub fn check_listen(addr: SocketAddr, tls: bool) -> anyhow::Result<()> {
    if is_loopback(addr.ip()) || tls {
        return Ok(());
    }
    let port = addr.port();
    bail!(
        "handover web binds only to loopback for plain HTTP, and {addr} is reachable from other hosts: \
         serve HTTPS there with --tls-cert FILE --tls-key FILE (from `handover ca issue --role web --name NAME --dns NAME --ip IP`), \
         and readers bring a viewer certificate (`handover ca issue --role viewer --name PERSON`) or the token of --token-file FILE; \
         or use --listen 127.0.0.1:{port} and reach it through an SSH tunnel (ssh -L {port}:127.0.0.1:{port} BASTION)"
    )
}

/// The bearer token, held as what is needed to check one.
pub struct Token {
    /// Made at start: both sides of a comparison go through it.
    check: hmac::Key,
    /// The HMAC of the real token under `check`.
    expected: hmac::Tag,
    /// Keyed by the token: signs and checks the cookie.
    session: hmac::Key,
}

/// Never prints the token (nor what it is checked with).
impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(hidden)")
    }
}

impl Token {
    /// A token from its text.
    pub fn new(text: &str) -> anyhow::Result<Self> {
        let rng = ring::rand::SystemRandom::new();
        let check = hmac::Key::generate(hmac::HMAC_SHA256, &rng)
            .map_err(|_| anyhow::anyhow!("no randomness from the system"))?;
        let expected = hmac::sign(&check, text.as_bytes());
        Ok(Token {
            check,
            expected,
            session: hmac::Key::new(hmac::HMAC_SHA256, text.as_bytes()),
        })
    }

    /// Whether `presented` is the token (constant time).
    pub fn matches(&self, presented: &str) -> bool {
        // hmac::verify computes HMAC(check, presented) and compares it with the
        // real token's tag in constant time.
        hmac::verify(&self.check, presented.as_bytes(), self.expected.as_ref()).is_ok()
    }

    /// The cookie value a browser gets for the token.
    pub fn cookie_value(&self) -> String {
        hex(hmac::sign(&self.session, COOKIE_MESSAGE).as_ref())
    }

    /// Whether a cookie value is this token's (constant time).
    pub fn cookie_matches(&self, value: &str) -> bool {
        unhex(value).is_some_and(|tag| hmac::verify(&self.session, COOKIE_MESSAGE, &tag).is_ok())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Reads the token in `path`, or makes one there (mode 0600) when there is no
/// such file. Refuses a file others may read, and a token too short to guess.
pub fn load_or_make_token(path: &Path) -> anyhow::Result<(Token, bool)> {
    if !path.exists() {
        let rng = ring::rand::SystemRandom::new();
        let mut bytes = [0u8; 32];
        ring::rand::SecureRandom::fill(&rng, &mut bytes)
            .map_err(|_| anyhow::anyhow!("no randomness from the system"))?;
        let text = hex(&bytes);
        pki::write_private(path, format!("{text}\n").as_bytes())
            .with_context(|| format!("cannot write a new token to {}", path.display()))?;
        return Ok((Token::new(&text)?, true));
    }
    pki::check_private_key_mode(path).context("the token file")?;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the token file {}", path.display()))?;
    let text = text.trim();
    if text.len() < MIN_TOKEN || !text.chars().all(|c| c.is_ascii_graphic()) {
        bail!(
            "the token in {} must be at least {MIN_TOKEN} printable characters without spaces: remove the file and handover web makes a random one",
            path.display()
        );
    }
    Ok((Token::new(text)?, false))
}

/// How the page is served and who may read it.
pub struct Access {
    /// HTTPS (and then viewer certificates) or plain HTTP.
    pub tls: bool,
    /// The bearer token, when `--token-file` is given.
    pub token: Option<Token>,
}

/// What a request may do.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Serve it.
    Yes,
    /// The token came in the query: set the cookie and send the browser to
    /// the same path without it.
    SetCookie {
        /// Where to go.
        location: String,
        /// The cookie header's value.
        cookie: String,
    },
    /// 401: say how to get in.
    No(String),
}

/// What a request shows of itself.
pub struct Shown<'a> {
    /// The name in a verified viewer certificate, if it came with one.
    pub viewer: Option<&'a str>,
    /// The `Authorization` header.
    pub authorization: Option<&'a str>,
    /// The `Cookie` header.
    pub cookie: Option<&'a str>,
    /// The request's path.
    pub path: &'a str,
    /// The request's query.
    pub query: Option<&'a str>,
}

impl Access {
    /// Whether `request` may read the page.
    pub fn admit(&self, request: &Shown<'_>) -> Admit {
        if request.viewer.is_some() {
            return Admit::Yes;
        }
        let Some(token) = &self.token else {
            // Without a token, TLS made a viewer certificate mandatory in the
            // handshake; plain HTTP is loopback only.
            return if self.tls {
                Admit::No("a viewer certificate is required".into())
            } else {
                Admit::Yes
            };
        };
        if let Some(bearer) = request
            .authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            && token.matches(bearer.trim())
        {
            return Admit::Yes;
        }
        let cookies = request.cookie.unwrap_or("").split(';').map(str::trim);
        if cookies
            .filter_map(|c| c.strip_prefix(COOKIE)?.strip_prefix('='))
            .any(|v| token.cookie_matches(v))
        {
            return Admit::Yes;
        }
        let query = request.query.unwrap_or("");
        if let Some(shown) = query.split('&').find_map(|p| p.strip_prefix("token="))
            && token.matches(shown)
        {
            let secure = if self.tls { "; Secure" } else { "" };
            return Admit::SetCookie {
                location: request.path.to_owned(),
                cookie: format!(
                    "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict{secure}",
                    token.cookie_value()
                ),
            };
        }
        Admit::No(if self.tls {
            "show a viewer certificate or the page's token (Authorization: Bearer TOKEN, or open /?token=TOKEN once)".into()
        } else {
            "show the page's token (Authorization: Bearer TOKEN, or open /?token=TOKEN once)".into()
        })
    }
}

/// What `handover web` knows of a connection: the viewer its certificate names.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    /// The name in its verified viewer certificate.
    pub viewer: Option<String>,
}

impl Connected<IncomingStream<'_, TcpListener>> for Peer {
    fn connect_info(_: IncomingStream<'_, TcpListener>) -> Self {
        Peer::default()
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        let (_, conn) = stream.io().get_ref();
        // The handshake's verifier accepted only a viewer certificate of our CA.
        let viewer = conn
            .peer_certificates()
            .and_then(tls::identity_of_chain)
            .filter(|id| id.role == Role::Viewer)
            .map(|id| id.name.to_string());
        Peer { viewer }
    }
}

/// The server's TLS settings: its `web` certificate and key, the CA that
/// issued viewer certificates, the revocation list that withdraws some, and
/// whether a token may stand in for one.
pub fn server_config(
    ca: &Path,
    (cert, key): (&Path, &Path),
    crl: Option<&Path>,
    token: bool,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    tls::install_crypto_provider();
    let mut creds = Credentials::load(&CredentialFiles { ca, cert, key }, Role::Web)
        .context("cannot serve the page over HTTPS")?;
    if let Some(crl) = crl {
        creds = creds
            .with_crl(crl)
            .context("cannot serve the page over HTTPS")?;
    }
    let config =
        tls::web_server_config(creds, token).context("cannot serve the page over HTTPS")?;
    Ok(Arc::new(config))
}

/// A TCP listener whose connections come out after a good TLS handshake.
/// Handshakes run in their own tasks (at most [`HANDSHAKES`] at once, each
/// bounded by [`HANDSHAKE_TIMEOUT`]), so a slow or refused client holds up
/// nobody; refusals are logged with the reason rustls or our verifier gave.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `listener` (a task on the current runtime).
    pub fn new(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(HANDSHAKES);
        tokio::spawn(accept_loop(listener, TlsAcceptor::from(config), tx));
        Ok(TlsListener { ready, local })
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let permits = Arc::new(Semaphore::new(HANDSHAKES));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait, as axum does.
                tracing::warn!("accepting a connection: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let _ = tx.send((stream, peer)).await;
                }
                Ok(Err(e)) => tracing::warn!("TLS handshake with {peer} refused: {e}"),
                Err(_) => tracing::warn!("TLS handshake with {peer} took too long"),
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(ready) => ready,
            // The accept loop ended (it never does while the listener lives).
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request<'a>(
        authorization: Option<&'a str>,
        cookie: Option<&'a str>,
        query: Option<&'a str>,
    ) -> Shown<'a> {
        Shown {
            viewer: None,
            authorization,
            cookie,
            path: "/",
            query,
        }
    }

    /// Loopback and 127.0.0.0/8 may be plain HTTP; every other address needs
    /// --tls-cert, and the refusal names the flags (issue 16).
    #[test]
    fn a_reachable_address_needs_tls_and_the_refusal_names_the_flags() {
        for ok in [
            "127.0.0.1:8080",
            "[::1]:8080",
            "127.0.1.5:0",
            "[::ffff:127.0.0.1]:80",
        ] {
            check_listen(ok.parse().expect("addr"), false).expect(ok);
        }
        for bad in ["0.0.0.0:8080", "10.1.2.3:8080", "[::]:8080"] {
            let err = check_listen(bad.parse().expect("addr"), false).expect_err(bad);
            let text = err.to_string();
            for flag in [
                "--tls-cert",
                "--tls-key",
                "--token-file",
                "--role viewer",
                "--role web",
            ] {
                assert!(text.contains(flag), "{flag}: {text}");
            }
            check_listen(bad.parse().expect("addr"), true).expect(bad);
        }
    }

    /// The token opens the page as a bearer header, once in the query (which
    /// trades it for a cookie), or as that cookie; nothing else does.
    #[test]
    fn the_token_opens_the_page_and_nothing_else_does() {
        let access = Access {
            tls: true,
            token: Some(Token::new("s3cret-token-of-many-chars").expect("token")),
        };
        let yes = |r: &Shown<'_>| access.admit(r) == Admit::Yes;
        assert!(yes(&request(
            Some("Bearer s3cret-token-of-many-chars"),
            None,
            None
        )));
        assert!(!yes(&request(
            Some("Bearer s3cret-token-of-many-chars!"),
            None,
            None
        )));
        assert!(!yes(&request(
            Some("s3cret-token-of-many-chars"),
            None,
            None
        )));
        assert!(matches!(
            access.admit(&request(None, None, None)),
            Admit::No(_)
        ));
        let Admit::SetCookie { location, cookie } = access.admit(&request(
            None,
            None,
            Some("x=1&token=s3cret-token-of-many-chars"),
        )) else {
            panic!("the token in the query sets the cookie");
        };
        assert_eq!(location, "/");
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("Secure"),
            "{cookie}"
        );
        assert!(
            !cookie.contains("s3cret"),
            "the cookie is not the token: {cookie}"
        );
        let value = cookie.split(';').next().expect("pair").to_owned();
        assert!(yes(&request(None, Some(&format!("a=b; {value}")), None)));
        assert!(!yes(&request(None, Some("handover_web=00ff"), None)));
        assert!(!yes(&request(None, Some("handover_web=zz"), None)));
        assert!(matches!(
            access.admit(&request(None, None, Some("token=wrong"))),
            Admit::No(_)
        ));
        let viewer = Shown {
            viewer: Some("alice"),
            ..request(None, None, None)
        };
        assert!(yes(&viewer));
    }

    /// Plain HTTP on loopback without a token is open (the host's own users);
    /// HTTPS without a token wants a viewer certificate.
    #[test]
    fn without_a_token_tls_wants_a_viewer() {
        let plain = Access {
            tls: false,
            token: None,
        };
        assert_eq!(plain.admit(&request(None, None, None)), Admit::Yes);
        let tls = Access {
            tls: true,
            token: None,
        };
        assert!(matches!(
            tls.admit(&request(None, None, None)),
            Admit::No(_)
        ));
    }

    /// A token file is made when missing (0600, random), refused when others
    /// may read it or when its token is short.
    #[test]
    fn the_token_file_is_made_private_and_checked() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        let (_, made) = load_or_make_token(&path).expect("made");
        assert!(made);
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = std::fs::read_to_string(&path).expect("read");
        let (token, made) = load_or_make_token(&path).expect("read back");
        assert!(!made);
        assert!(token.matches(text.trim()));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = load_or_make_token(&path).expect_err("open file");
        assert!(format!("{err:#}").contains("chmod 600"), "{err:#}");
        std::fs::write(&path, "short\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let err = load_or_make_token(&path).expect_err("short");
        assert!(err.to_string().contains("at least 16"), "{err}");
    }
}
