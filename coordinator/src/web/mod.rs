//! `handover web`: a read-only page of the fleet and the current or last rollout,
//! updated live by server-sent events.
//!
//! Everything on it comes from the journal (the rollout and its steps) and from
//! the agents' `status` (hosts, LB servers), read once a second by one poller
//! whose snapshot every browser shares; none of it from HAProxy's own page. The
//! page never changes the fleet: only GET and HEAD are served, anything else is
//! answered 405. Without TLS it binds only to loopback (reach it from elsewhere
//! through an SSH tunnel); see [`access`] for HTTPS and who may read it.

pub mod access;
pub mod snapshot;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use access::{Access, Admit, Peer, Shown};
use anyhow::Context;
use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use tokio::sync::watch;

use crate::config::{CoordinatorConfig, HostEntry};
use crate::fleet::{Fleet, calls};
use crate::journal::{Journal, now_ms};
use snapshot::Snapshot;

/// The default address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// How often the journal and the agents are read.
const POLL: Duration = Duration::from_secs(1);
/// Chart points kept (one a second: 30 minutes).
const HISTORY: usize = 1800;
/// Journal events shown.
const EVENTS: usize = 30;

const PAGE: &str = include_str!("page.html");

/// `handover web`'s flags.
#[derive(Debug, Clone, clap::Args)]
pub struct WebArgs {
    /// Address to serve on. Loopback (127.0.0.0/8, ::1) may be plain HTTP; any
    /// other address needs --tls-cert and --tls-key.
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Serve HTTPS with this certificate (`handover ca issue --role web`, with
    /// the names browsers use for the bastion as --dns/--ip). Readers then need a
    /// viewer certificate of the fleet's CA (handover.toml's `ca`) or the token.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The key of --tls-cert (mode 0600).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Also admit readers who show the token in this file (mode 0600; made,
    /// random, when missing): `Authorization: Bearer TOKEN`, or `/?token=TOKEN`
    /// once in a browser, which then keeps a cookie.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Refuse the viewer certificates this revocation list revokes (the
    /// crl.pem `handover ca revoke` writes; read at start).
    #[arg(long, requires = "tls_cert")]
    pub crl: Option<PathBuf>,
}

/// Refuses flags the page may not be served with, naming the fix; checked
/// before the config is read or anything bound.
pub fn check_args(args: &WebArgs) -> anyhow::Result<()> {
    access::check_listen(args.listen, args.tls_cert.is_some())
}

/// Serves the page as `args` say until interrupted.
pub async fn run(config: CoordinatorConfig, args: WebArgs) -> anyhow::Result<()> {
    check_args(&args)?;
    let token = match &args.token_file {
        Some(path) => {
            let (token, made) = access::load_or_make_token(path)?;
            if made {
                eprintln!(
                    "handover web: made a new token in {} (readable by you only); readers show it as `Authorization: Bearer TOKEN` or open /?token=TOKEN once",
                    path.display()
                );
            }
            Some(token)
        }
        None => None,
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(access::server_config(
            &config.ca,
            (cert, key),
            args.crl.as_deref(),
            token.is_some(),
        )?),
        _ => None,
    };
    let listen = args.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}: pick a free port with --listen"))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let empty = Snapshot {
        version: snapshot::VERSION,
        ..Snapshot::default()
    };
    let (tx, rx) = watch::channel(Arc::new(empty));
    let config = Arc::new(config);
    let access = Arc::new(Access {
        tls: tls.is_some(),
        token,
    });
    let app = router(rx, access).into_make_service_with_connect_info::<Peer>();
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    // The poller runs beside the server in this task (the fleet's fan-out is
    // not `Send`-friendly enough for a spawned task), and ends with it.
    match tls {
        Some(tls) => {
            eprintln!(
                "handover web: serving https://{addr}/ (read-only; viewer certificates{}; Ctrl-C stops)",
                if args.token_file.is_some() {
                    " or the token"
                } else {
                    " only"
                }
            );
            let listener = access::TlsListener::new(listener, tls).context("serving HTTPS")?;
            let serve = axum::serve(listener, app).with_graceful_shutdown(stop);
            tokio::select! {
                served = serve => served.context("serving the page"),
                () = poll(config, tx) => Ok(()),
            }
        }
        None => {
            eprintln!("handover web: serving http://{addr}/ (read-only; Ctrl-C stops)");
            let serve = axum::serve(listener, app).with_graceful_shutdown(stop);
            tokio::select! {
                served = serve => served.context("serving the page"),
                () = poll(config, tx) => Ok(()),
            }
        }
    }
}

/// The routes: the page, its data, its live stream; 405 for anything mutating.
pub fn router(rx: watch::Receiver<Arc<Snapshot>>, access: Arc<Access>) -> Router {
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/api/state", get(state))
        .route("/events", get(events))
        .fallback(fallback)
        .with_state(rx)
        .layer(axum::middleware::from_fn_with_state(access, guard))
}

/// Before any route: a mutating method is refused (405) whoever asks, then
/// the reader must be admitted ([`Access::admit`]).
async fn guard(State(access): State<Arc<Access>>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    if method != Method::GET && method != Method::HEAD {
        return read_only(method);
    }
    // Decided before the await: the request's borrows must not be held across it.
    match admit(&access, &request) {
        Admit::Yes => next.run(request).await,
        Admit::SetCookie { location, cookie } => (
            StatusCode::SEE_OTHER,
            [(header::LOCATION, location), (header::SET_COOKIE, cookie)],
        )
            .into_response(),
        Admit::No(why) => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer realm=\"handover web\"")],
            format!("handover web: {why}\n"),
        )
            .into_response(),
    }
}

/// What the request shows of its reader, judged by `access`.
fn admit(access: &Access, request: &Request) -> Admit {
    let header = |name| request.headers().get(name).and_then(|v| v.to_str().ok());
    let viewer = request
        .extensions()
        .get::<ConnectInfo<Peer>>()
        .and_then(|c| c.0.viewer.as_deref());
    access.admit(&Shown {
        viewer,
        authorization: header(header::AUTHORIZATION),
        cookie: header(header::COOKIE),
        path: request.uri().path(),
        query: request.uri().query(),
    })
}

async fn fallback(method: Method) -> Response {
    if method == Method::GET || method == Method::HEAD {
        return (StatusCode::NOT_FOUND, "not found: the page is at /\n").into_response();
    }
    read_only(method)
}

/// Every method but GET and HEAD, on every path.
fn read_only(method: Method) -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::ALLOW, "GET, HEAD")],
        format!("{method} refused: handover web is read-only; change the fleet with the handover command\n"),
    )
        .into_response()
}

async fn state(State(rx): State<watch::Receiver<Arc<Snapshot>>>) -> Response {
    let snapshot = rx.borrow().clone();
    match serde_json::to_string(&*snapshot) {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// A `state` event with the whole snapshot now and on every change.
async fn events(
    State(rx): State<watch::Receiver<Arc<Snapshot>>>,
) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
    let stream = futures::stream::unfold((rx, true), |(mut rx, first)| async move {
        if !first && rx.changed().await.is_err() {
            return None;
        }
        let snapshot = rx.borrow_and_update().clone();
        let data = serde_json::to_string(&*snapshot).unwrap_or_default();
        Some((Ok(Event::default().event("state").data(data)), (rx, false)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// Reads the journal and the agents once a second and publishes the snapshot.
async fn poll(config: Arc<CoordinatorConfig>, tx: watch::Sender<Arc<Snapshot>>) {
    let fleet = match Fleet::new(&config) {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::error!("cannot reach the agents: {e:#}");
            None
        }
    };
    let hosts = config.select(&[]).unwrap_or_default();
    let mut history = std::collections::VecDeque::new();
    let mut journal = JournalRead {
        snapshot: Snapshot {
            version: snapshot::VERSION,
            ..Snapshot::default()
        },
        samples: Vec::new(),
    };
    loop {
        // A journal that cannot be read this time (held by a writer for long)
        // keeps what was read last, rather than blanking the page.
        if let Some(read) = gather_journal(&config).await {
            journal = read;
        }
        let mut snapshot = journal.snapshot.clone();
        if let Some(fleet) = &fleet {
            let answers = ask_agents(fleet, &hosts).await;
            (snapshot.hosts, snapshot.lb_servers) = snapshot::fleet(&answers);
        }
        snapshot.generated_ms = now_ms();
        history.push_back(snapshot::sample(
            snapshot.generated_ms,
            &snapshot.hosts,
            &snapshot.lb_servers,
        ));
        if history.len() > HISTORY {
            history.pop_front();
        }
        // The rollout's own samples, since it started, when it journaled
        // them; what this page saw otherwise (a rollout of an older version).
        if journal.samples.is_empty() {
            snapshot.history = history.iter().copied().collect();
            snapshot.history_from = "page";
        } else {
            snapshot.history = snapshot::history(&journal.samples, HISTORY);
            snapshot.history_from = "journal";
            let running = snapshot
                .rollout
                .as_ref()
                .is_some_and(|r| r.state == "running" || r.state == "rolling-back");
            if running {
                let latest = journal.samples.last();
                snapshot::attach_drains(&mut snapshot.hosts, latest, snapshot.generated_ms);
            }
        }
        if tx.send(Arc::new(snapshot)).is_err() {
            return;
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn ask_agents(
    fleet: &Fleet,
    hosts: &[HostEntry],
) -> Vec<(String, Vec<String>, snapshot::Answer)> {
    let results = fleet.ask_each(hosts, |_| calls::status()).await;
    results
        .into_iter()
        .map(|(host, result)| {
            let roles = host.roles.iter().map(|r| r.to_string()).collect();
            let answer = result.map(|r| *r).map_err(|e| e.to_string());
            (host.name.to_string(), roles, answer)
        })
        .collect()
}

/// What the journal says of the latest rollout.
struct JournalRead {
    /// Its record, steps and events.
    snapshot: Snapshot,
    /// The samples it journaled for this page, oldest first.
    samples: Vec<crate::rollout::samples::Sample>,
}

/// The latest rollout, its steps, events and samples (the journal is read off
/// the async threads: it may wait for the rollout's own writes).
async fn gather_journal(config: &Arc<CoordinatorConfig>) -> Option<JournalRead> {
    let config = config.clone();
    let read = tokio::task::spawn_blocking(move || -> anyhow::Result<JournalRead> {
        // Where the config keeps it: state_dir, or etcd (`[state]`).
        let journal = Journal::open(&config)?;
        let mut snapshot = Snapshot {
            version: snapshot::VERSION,
            ..Snapshot::default()
        };
        let Some(record) = journal.rollouts()?.into_iter().max_by_key(|r| r.created_ms) else {
            return Ok(JournalRead {
                snapshot,
                samples: Vec::new(),
            });
        };
        let plan = crate::plan::Plan::parse(&record.plan_text, &config).ok();
        let planned: Vec<String> = plan
            .as_ref()
            .map(|p| {
                crate::rollout::steps::in_place(p)
                    .iter()
                    .map(|s| s.title(p))
                    .collect()
            })
            .unwrap_or_default();
        let journaled = journal.steps(&record.id)?;
        let running = record.state.is_unfinished();
        snapshot.steps = snapshot::steps(&planned, &journaled, running);
        snapshot.events = snapshot::events(&journaled, EVENTS);
        snapshot.rollout = Some(snapshot::rollout(&record, plan.as_ref()));
        let samples = crate::rollout::samples::read(&journal, &record.id)?;
        Ok(JournalRead { snapshot, samples })
    });
    match read.await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            tracing::warn!("cannot read the journal: {e:#}");
            None
        }
        Err(e) => {
            tracing::error!("journal reader failed: {e}");
            None
        }
    }
}
