//! One decoded request → one built-in action. The match on [`Request`] is the whole
//! list of what a caller can make this agent do.

use std::sync::Arc;

use handover_common::proto::{
    Failure, FailureKind, PROTOCOL_VERSION, Reply, Request, RequestFrame, Response,
};

use crate::Agent;
use crate::caller::{Caller, Reporter};

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
        Request::CheckHealth(check) => crate::probe::check_health(agent, check, reporter)
            .await
            .map(Reply::Health),
        Request::Status => Ok(Reply::Status(Box::new(crate::status::report(agent).await))),
        Request::Drain(req) => crate::drain::handle(agent, caller, req, reporter)
            .await
            .map(Reply::Drain),
        Request::Lb(req) => crate::haproxy::handle(agent, caller, req, reporter)
            .await
            .map(Reply::Lb),
        Request::Deploy(req) => {
            crate::deploy::handle_in(agent, caller, frame.rollout.as_deref(), req, reporter)
                .await
                .map(Reply::Deploy)
        }
        Request::AppLog(req) => crate::applog::handle(agent, req).await.map(Reply::AppLog),
    };
    match result {
        Ok(reply) => Response::Done(reply),
        Err(failure) => {
            tracing::info!(%caller, %failure, "request failed");
            Response::Failed(failure)
        }
    }
}
