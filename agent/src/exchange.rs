//! One exchange on one stream (QUIC or the control socket): read one request frame,
//! hand it to [`crate::dispatch`], write its progress and final response.

use std::sync::Arc;

use handover_common::proto::{Failure, FailureKind, RequestFrame, Response};
use tokio::sync::mpsc;

use crate::Agent;
use crate::caller::{Caller, Reporter};
use crate::dispatch::handle;

/// How long a caller has to send its request after opening a stream.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves one exchange on one stream (QUIC or control socket): read one request
/// frame, run it, write progress and the final response.
///
/// When `gone` resolves (the caller's connection closed) the exchange ends: the
/// action is not cancelled, but its [`Reporter`] reads closed, so waits stop.
///
/// A frame that is too large, truncated, undecodable or followed by trailing bytes
/// gets a `BadRequest` answer and ends this stream only; the caller's other streams
/// and other callers are unaffected.
pub async fn serve_exchange<R, W>(
    agent: &Arc<Agent>,
    caller: &Caller,
    recv: &mut R,
    send: &mut W,
    gone: impl std::future::Future<Output = ()>,
) -> Result<(), handover_common::wire::WireError>
where
    R: tokio::io::AsyncRead + Unpin + ?Sized,
    W: tokio::io::AsyncWrite + Unpin + ?Sized,
{
    let Some(frame) = read_request(agent, caller, recv, send).await? else {
        return Ok(());
    };
    let answers = spawn_action(agent, caller, frame);
    relay_answers(caller, answers, send, gone).await
}

/// Reads the one request frame of a stream. None: the stream ended without one,
/// or none came in time (the caller was told); a malformed frame is answered
/// `BadRequest` and returned as the error.
async fn read_request<R, W>(
    agent: &Agent,
    caller: &Caller,
    recv: &mut R,
    send: &mut W,
) -> Result<Option<RequestFrame>, handover_common::wire::WireError>
where
    R: tokio::io::AsyncRead + Unpin + ?Sized,
    W: tokio::io::AsyncWrite + Unpin + ?Sized,
{
    use handover_common::wire;

    let read = tokio::time::timeout(REQUEST_TIMEOUT, wire::read_frame::<_, RequestFrame>(recv));
    match read.await {
        Ok(Ok(frame)) => Ok(frame),
        Ok(Err(e)) => {
            tracing::warn!(%caller, error = %e, "refused a malformed request");
            let failure = Failure::new(
                FailureKind::BadRequest,
                format!("{e}; a stream carries one handover/1 request frame"),
            );
            let response = Response::Failed(failure);
            let kind = crate::metrics::RequestKind::malformed;
            agent
                .metrics
                .request(caller, kind, &response, Default::default());
            let _ = wire::write_frame(send, &response).await;
            Err(e)
        }
        Err(_) => {
            let failure = Failure::new(
                FailureKind::BadRequest,
                format!("no request within {}s", REQUEST_TIMEOUT.as_secs()),
            );
            let _ = wire::write_frame(send, &Response::Failed(failure)).await;
            Ok(None)
        }
    }
}

/// Runs the request in its own task: a caller that disconnects mid-deploy must not
/// cancel it half-way. Long waits watch `Reporter::is_closed` to stop early. The
/// receiver yields progress, then the final response.
fn spawn_action(
    agent: &Arc<Agent>,
    caller: &Caller,
    frame: RequestFrame,
) -> mpsc::Receiver<Response> {
    let (tx, rx) = mpsc::channel(32);
    let reporter = Reporter::new(tx.clone());
    let (agent, caller) = (agent.clone(), caller.clone());
    tokio::spawn(async move {
        let kind = crate::metrics::RequestKind::of(&frame.request);
        let started = std::time::Instant::now();
        let response = handle(&agent, &caller, frame, &reporter).await;
        agent
            .metrics
            .request(&caller, kind, &response, started.elapsed());
        let _ = tx.send(response).await;
    });
    rx
}

/// Writes the action's progress and its final response to the caller, until the
/// final one or until `gone` (the caller's connection closed).
async fn relay_answers<W>(
    caller: &Caller,
    mut answers: mpsc::Receiver<Response>,
    send: &mut W,
    gone: impl std::future::Future<Output = ()>,
) -> Result<(), handover_common::wire::WireError>
where
    W: tokio::io::AsyncWrite + Unpin + ?Sized,
{
    use handover_common::wire;

    tokio::pin!(gone);
    loop {
        let response = tokio::select! {
            response = answers.recv() => response,
            () = &mut gone => {
                tracing::info!(%caller, "caller went away; its waits stop");
                return Ok(());
            }
        };
        let Some(response) = response else { break };
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
