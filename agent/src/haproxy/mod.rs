//! HAProxy runtime API on `lb` hosts (runbook steps 11, 13, 14).
//!
//! [`Balancer`] owns this host's HAProxy: the runtime socket and the membership
//! (which app host sits on which HAProxy server, kept in state_dir). Each request
//! is one short module that asks it, and a request passes each file once:
//!
//! * [`adopt`]: plain `server` lines of haproxy.cfg become their host's.
//! * [`attach`]: place the host, make the check fresh, wait for UP ([`wait`]).
//! * [`detach`]: wait for sessions to end ([`wait`]), then take the host out.
//! * [`state`]: an attached host's admin state.
//! * [`stats`]: what HAProxy reports for the hosts, and the `status` part.
//! * [`reconcile`]: re-applies the membership after HAProxy reloads.
//! * [`cli`]: how the load balancer reads in `handover-agent status`.
//!
//! Below the balancer: [`runtime`] (one command per connection, answers checked),
//! [`show`] (`show stat` / `show info` read by header name), [`membership`] (the
//! file), [`config`] (`[haproxy]`).

pub mod adopt;
pub mod attach;
pub mod balancer;
pub mod cli;
pub mod config;
pub mod detach;
pub mod membership;
pub mod reconcile;
pub mod runtime;
pub mod show;
pub mod state;
pub mod stats;
pub mod wait;

use std::sync::Arc;

use handover_common::proto::Failure;
use handover_common::proto::lb::{LbReply, LbRequest, LbStatus};

pub use balancer::{Balancer, LbState};
pub use config::HaproxyConfig;

use crate::Agent;
use crate::caller::{Caller, Reporter};

/// Runs an HAProxy request.
pub async fn handle(
    agent: &Arc<Agent>,
    caller: &Caller,
    req: LbRequest,
    reporter: &Reporter,
) -> Result<LbReply, Failure> {
    let lb = Balancer::of(agent)?;
    tracing::info!(%caller, ?req, "lb request");
    match req {
        LbRequest::Attach {
            server,
            app,
            backend,
            timeout,
        } => attach::attach(&lb, &server, app, backend.as_ref(), timeout, reporter).await,
        LbRequest::Detach {
            server,
            force,
            timeout,
        } => detach::detach(&lb, &server, force, timeout, reporter).await,
        LbRequest::SetState {
            server,
            state,
            timeout,
        } => state::set_state(&lb, &server, state, timeout, reporter).await,
        LbRequest::Stats { servers } => stats::stats(&lb, &servers).await,
    }
}

/// The load-balancer part of `status` (`None` when this host is not an LB).
pub async fn status(agent: &Arc<Agent>) -> Option<LbStatus> {
    let lb = Balancer::of(agent).ok()?;
    Some(stats::status(&lb, agent.lb.reloads_seen()).await)
}

/// Starts the reconcile loop when `[haproxy]` is configured.
pub fn spawn_reconciler(agent: &Arc<Agent>) {
    if agent.config.haproxy.is_some() {
        tokio::spawn(reconcile::run(agent.clone()));
    }
}
