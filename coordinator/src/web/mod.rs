//! `handover web`: a read-only page of the fleet and the current or last rollout,
//! updated live by server-sent events.
//!
//! Everything on it comes from the journal (the rollout and its steps) and from
//! the agents' `status` (hosts, LB servers), read once a second by one poller
//! whose snapshot every browser shares; none of it from HAProxy's own page. The
//! page never changes the fleet: only GET and HEAD are served, anything else is
//! answered 405. Without TLS it binds only to loopback (reach it from elsewhere
//! through an SSH tunnel).

pub mod snapshot;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use axum::Router;
use axum::extract::State;
use axum::http::{Method, StatusCode, header};
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

/// Refuses an address the page may not be served on without TLS, naming the fix.
pub fn check_listen(addr: SocketAddr) -> anyhow::Result<()> {
    if !addr.ip().is_loopback() {
        bail!(
            "handover web serves plain HTTP, so it binds only to loopback, not {addr}: use --listen 127.0.0.1:{port} and reach it from your desk through an SSH tunnel (ssh -L {port}:127.0.0.1:{port} BASTION)",
            port = addr.port()
        );
    }
    Ok(())
}

/// Serves the page on `listen` until interrupted.
pub async fn run(config: CoordinatorConfig, listen: SocketAddr) -> anyhow::Result<()> {
    check_listen(listen)?;
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
    eprintln!("handover web: serving http://{addr}/ (read-only; Ctrl-C stops)");
    let serve = axum::serve(listener, router(rx)).with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    });
    // The poller runs beside the server in this task (the fleet's fan-out is
    // not `Send`-friendly enough for a spawned task), and ends with it.
    tokio::select! {
        served = serve => served.context("serving the page"),
        () = poll(config, tx) => Ok(()),
    }
}

/// The routes: the page, its data, its live stream; 405 for anything mutating.
pub fn router(rx: watch::Receiver<Arc<Snapshot>>) -> Router {
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/api/state", get(state))
        .route("/events", get(events))
        .fallback(fallback)
        .with_state(rx)
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
    let mut journal = Snapshot {
        version: snapshot::VERSION,
        ..Snapshot::default()
    };
    loop {
        // A journal that cannot be read this time (held by a writer for long)
        // keeps what was read last, rather than blanking the page.
        if let Some(read) = gather_journal(&config).await {
            journal = read;
        }
        let mut snapshot = journal.clone();
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
        snapshot.history = history.iter().copied().collect();
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

/// The latest rollout, its steps and events (the journal is read off the async
/// threads: it may wait for the rollout's own writes).
async fn gather_journal(config: &Arc<CoordinatorConfig>) -> Option<Snapshot> {
    let config = config.clone();
    let read = tokio::task::spawn_blocking(move || -> anyhow::Result<Snapshot> {
        let journal = Journal::new(&config.state_dir);
        let mut snapshot = Snapshot {
            version: snapshot::VERSION,
            ..Snapshot::default()
        };
        let Some(record) = journal.rollouts()?.into_iter().max_by_key(|r| r.created_ms) else {
            return Ok(snapshot);
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
        Ok(snapshot)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain HTTP only on loopback; the refusal names the fix (issue 16).
    #[test]
    fn a_non_loopback_address_is_refused_with_the_fix() {
        for ok in ["127.0.0.1:8080", "[::1]:8080", "127.0.1.5:0"] {
            check_listen(ok.parse().expect("addr")).expect(ok);
        }
        for bad in ["0.0.0.0:8080", "10.1.2.3:8080", "[::]:8080"] {
            let err = check_listen(bad.parse().expect("addr")).expect_err(bad);
            assert!(
                err.to_string().contains("ssh -L 8080:127.0.0.1:8080"),
                "{err}"
            );
        }
    }
}
