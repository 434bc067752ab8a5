//! `status`: this host's figures plus each configured feature's state.

use std::sync::Arc;

use handover_common::proto::status::StatusReport;

use crate::Agent;

/// The status report: host figures plus each configured feature's state.
pub async fn report(agent: &Arc<Agent>) -> StatusReport {
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
