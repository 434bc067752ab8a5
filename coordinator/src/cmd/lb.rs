//! `handover attach|detach|lb-state`: app hosts in and out of every load balancer.

use std::process::ExitCode;
use std::time::Duration;

use handover_common::names::HostName;
use handover_common::proto::Progress;
use handover_common::proto::lb::{LbReply, ServerState};

use crate::config::CoordinatorConfig;
use crate::fleet::Fleet;
use crate::lb::{self, LbOutcome};
use crate::output::Table;

/// Which LB action.
pub enum Action {
    /// Attach and wait for UP.
    Attach,
    /// Detach (with `force`: cutting sessions).
    Detach {
        /// Cut remaining sessions.
        force: bool,
    },
    /// Set an admin state.
    State(ServerState),
}

/// Runs `action` for `hosts` on the LBs named in `lbs` (all when empty).
pub async fn run(
    config: &CoordinatorConfig,
    action: Action,
    hosts: &[String],
    lbs: &[String],
    timeout: Option<Duration>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    if hosts.is_empty() {
        anyhow::bail!("name at least one app host");
    }
    let hosts = config.select(hosts)?;
    let lbs = lb::lb_hosts(config, lbs)?;
    let fleet = Fleet::new(config)?;
    let show = |lb: &HostName, p: &Progress| {
        if let Some(line) = lb::describe_progress(p) {
            eprintln!("{lb}: {line}");
        }
    };
    let outcomes = match action {
        Action::Attach => lb::attach(&fleet, &lbs, &hosts, timeout, &show).await?,
        Action::Detach { force } => lb::detach(&fleet, &lbs, &hosts, force, timeout, &show).await,
        Action::State(state) => lb::set_state(&fleet, &lbs, &hosts, state, &show).await,
    };
    fleet.close().await;
    let failed = outcomes.iter().filter(|o| o.result.is_err()).count();
    if json {
        println!("{}", serde_json::to_string_pretty(&outcomes)?);
    } else {
        print!("{}", render(&outcomes));
    }
    Ok(if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn render(outcomes: &[LbOutcome]) -> String {
    let mut table = Table::new(&[
        "HOST", "LB", "BACKEND", "SERVER", "STATUS", "CHECK", "SCUR", "QCUR",
    ]);
    let mut errors = Vec::new();
    for o in outcomes {
        match &o.result {
            Ok(LbReply::Servers(servers)) => {
                for s in servers {
                    table.row(vec![
                        o.host.to_string(),
                        o.lb.to_string(),
                        s.backend.clone(),
                        s.haproxy_name.clone(),
                        s.status.clone(),
                        s.check_status.clone(),
                        s.scur.to_string(),
                        s.qcur.to_string(),
                    ]);
                }
            }
            Ok(LbReply::Detached(removed)) if removed.is_empty() => {
                table.row(vec![
                    o.host.to_string(),
                    o.lb.to_string(),
                    "-".into(),
                    "-".into(),
                    "not attached".into(),
                ]);
            }
            Ok(LbReply::Detached(removed)) => {
                for r in removed {
                    let status = if r.sessions_cut > 0 {
                        format!("detached ({} sessions cut)", r.sessions_cut)
                    } else {
                        "detached".into()
                    };
                    table.row(vec![
                        o.host.to_string(),
                        o.lb.to_string(),
                        r.backend.to_string(),
                        r.haproxy_name.clone(),
                        status,
                    ]);
                }
            }
            Err(e) => {
                table.row(vec![
                    o.host.to_string(),
                    o.lb.to_string(),
                    "-".into(),
                    "-".into(),
                    "FAILED".into(),
                ]);
                errors.push(format!("{} on {}: {e}", o.host, o.lb));
            }
        }
    }
    let mut out = table.render();
    for e in errors {
        out.push_str(&format!("error: {e}\n"));
    }
    out
}
