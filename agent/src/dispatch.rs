//! One decoded request → one built-in action. The match on [`Request`] is the whole
//! list of what a caller can make this agent do.

use std::sync::Arc;

use handover_common::proto::{
    Failure, FailureKind, PROTOCOL_VERSION, Progress, Reply, Request, RequestFrame, Response,
    status::StatusReport,
};
use tokio::sync::mpsc;

use crate::Agent;

/// Who sent a request: a coordinator over QUIC, or a local operator.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A coordinator, by its certificate's name.
    Coordinator(String),
    /// Someone with access to the control socket on this host.
    Local,
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Coordinator(name) => write!(f, "coordinator {name}"),
            Caller::Local => f.write_str("local operator"),
        }
    }
}

/// Pushes progress to the caller while an action runs.
#[derive(Clone)]
pub struct Reporter {
    tx: mpsc::Sender<Response>,
}

impl Reporter {
    /// A reporter writing into `tx`.
    pub fn new(tx: mpsc::Sender<Response>) -> Self {
        Reporter { tx }
    }

    /// Sends progress; `false` once the caller has gone away, so long waits can stop.
    pub async fn progress(&self, progress: Progress) -> bool {
        self.tx.send(Response::Progress(progress)).await.is_ok()
    }

    /// Whether the caller has gone away.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Runs `frame` and returns its final response. Progress goes through `reporter`.
pub async fn handle(
    agent: &Arc<Agent>,
    caller: &Caller,
    frame: RequestFrame,
    reporter: &Reporter,
) -> Response {
    if frame.version != PROTOCOL_VERSION {
        return Response::Failed(Failure::new(
            FailureKind::VersionMismatch,
            format!(
                "caller speaks protocol v{}, this agent v{}: upgrade the older side",
                frame.version, PROTOCOL_VERSION
            ),
        ));
    }
    if let Err(bad) = frame.check_strings() {
        return Response::Failed(Failure::new(FailureKind::BadRequest, bad.to_string()));
    }
    tracing::debug!(%caller, request = ?frame.request, "request");
    // Checked, not held, for the action: a long drain wait must not block an
    // operator's `undrain` or the holder's own lease renewals.
    if frame.request.changes_host()
        && let Err(failure) = agent
            .lease
            .lock()
            .await
            .admit(frame.rollout.as_deref(), caller)
    {
        return Response::Failed(failure);
    }
    let result = match frame.request {
        Request::Lease(req) => agent.lease.lock().await.handle(req).map(Reply::Lease),
        Request::CheckHealth(check) => crate::probe::check_health(agent, check)
            .await
            .map(Reply::Health),
        Request::Status => Ok(Reply::Status(Box::new(status(agent).await))),
        Request::Drain(req) => crate::drain::handle(agent, caller, req, reporter)
            .await
            .map(Reply::Drain),
        Request::Lb(req) => crate::haproxy::handle(agent, caller, req, reporter)
            .await
            .map(Reply::Lb),
        Request::Deploy(req) => crate::deploy::handle(agent, caller, req, reporter)
            .await
            .map(Reply::Deploy),
    };
    match result {
        Ok(reply) => Response::Done(reply),
        Err(failure) => {
            tracing::info!(%caller, %failure, "request failed");
            Response::Failed(failure)
        }
    }
}

/// The status report: host figures plus each configured feature's state.
pub async fn status(agent: &Arc<Agent>) -> StatusReport {
    let host = agent.host.lock().await.sample();
    StatusReport {
        name: agent.config.name.to_string(),
        version: handover_common::VERSION.to_string(),
        uptime_secs: agent.started.elapsed().as_secs(),
        host,
        drain: crate::drain::status(agent).await,
        release: crate::deploy::status(agent).await,
        lb: crate::haproxy::status(agent).await,
    }
}

/// How long a caller has to send its request after opening a stream.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves one exchange on one stream (QUIC or control socket): read one request
/// frame, run it, write progress and the final response.
///
/// A frame that is too large, truncated, undecodable or followed by trailing bytes
/// gets a `BadRequest` answer and ends this stream only; the caller's other streams
/// and other callers are unaffected.
pub async fn serve_exchange<R, W>(
    agent: &Arc<Agent>,
    caller: &Caller,
    recv: &mut R,
    send: &mut W,
) -> Result<(), handover_common::wire::WireError>
where
    R: tokio::io::AsyncRead + Unpin + ?Sized,
    W: tokio::io::AsyncWrite + Unpin + ?Sized,
{
    use handover_common::wire;

    let frame = match tokio::time::timeout(
        REQUEST_TIMEOUT,
        wire::read_frame::<_, RequestFrame>(recv),
    )
    .await
    {
        Ok(Ok(Some(frame))) => frame,
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(e)) => {
            tracing::warn!(%caller, error = %e, "refused a malformed request");
            let failure = Failure::new(
                FailureKind::BadRequest,
                format!("{e}; a stream carries one handover/1 request frame"),
            );
            let _ = wire::write_frame(send, &Response::Failed(failure)).await;
            return Err(e);
        }
        Err(_) => {
            let failure = Failure::new(
                FailureKind::BadRequest,
                format!("no request within {}s", REQUEST_TIMEOUT.as_secs()),
            );
            let _ = wire::write_frame(send, &Response::Failed(failure)).await;
            return Ok(());
        }
    };

    let (tx, mut rx) = mpsc::channel(32);
    let reporter = Reporter::new(tx.clone());
    let task_agent = agent.clone();
    let task_caller = caller.clone();
    // The action runs in its own task: a caller that disconnects mid-deploy must not
    // cancel it half-way. Long waits watch `Reporter::is_closed` to stop early.
    tokio::spawn(async move {
        let response = handle(&task_agent, &task_caller, frame, &reporter).await;
        let _ = tx.send(response).await;
    });
    while let Some(response) = rx.recv().await {
        let last = !matches!(response, Response::Progress(_));
        wire::write_frame(send, &response).await?;
        if last {
            return Ok(());
        }
    }
    let failure = Failure::new(
        FailureKind::Internal,
        "the action ended without an answer (see the agent's log)",
    );
    wire::write_frame(send, &Response::Failed(failure)).await
}
