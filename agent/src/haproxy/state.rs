//! Set state: an attached host's admin state (ready, drain, maint) in every
//! managed backend it is in. `ready` from maintenance would read UP at once
//! without a check, so there the check is made fresh and waited for, as attach
//! does.

use std::time::Duration;

use handover_common::names::HostName;
use handover_common::proto::lb::{LbReply, ServerState, StatusKind};
use handover_common::proto::{Failure, FailureKind};

use super::balancer::{Balancer, server_path};
use super::show::ServerRow;
use super::wait::{Target, UpWait};
use crate::caller::Reporter;

/// Set `server`'s admin state in every managed backend it is in.
pub async fn set_state(
    lb: &Balancer<'_>,
    server: &HostName,
    state: ServerState,
    timeout: Option<Duration>,
    reporter: &Reporter,
) -> Result<LbReply, Failure> {
    let fresh = change_state(lb, server, state).await?;
    if !fresh.is_empty() {
        let timeout = timeout.unwrap_or(lb.config.attach_timeout);
        UpWait::new(server.clone(), fresh, timeout)
            .run(lb, reporter)
            .await?;
    }
    Ok(LbReply::Servers(lb.stats_of_host(server).await?))
}

/// Records and applies the state, holding the membership lock; returns the
/// servers whose check was made fresh (to wait for).
async fn change_state(
    lb: &Balancer<'_>,
    server: &HostName,
    state: ServerState,
) -> Result<Vec<Target>, Failure> {
    let mut members = lb.members().await?;
    let stat = lb.read_stat().await?;
    lb.adopt(&mut members, &stat, server, None)?;
    let carried = members.get().of_host(server);
    if carried.is_empty() {
        return Err(Failure::new(
            FailureKind::BadRequest,
            format!(
                "{server} is not attached to this load balancer: attach it first (handover attach {server})"
            ),
        ));
    }
    let mut fresh = Vec::new();
    for (backend, member) in carried {
        members.get().set_state(&backend, server, state);
        members.save()?;
        let bs = server_path(&backend, &member.haproxy_name);
        if needs_fresh_check(state, stat.server(&backend, &member.haproxy_name)) {
            lb.make_check_fresh(&bs).await?;
            fresh.push(Target::of(&backend, &member));
        } else {
            lb.set_admin_state(&bs, state).await?;
        }
    }
    Ok(fresh)
}

/// From maintenance, `ready` means UP at once without a check: only then is the
/// check made fresh. From drain the server kept being checked, so its status is
/// already honest.
fn needs_fresh_check(state: ServerState, row: Option<&ServerRow>) -> bool {
    state == ServerState::Ready
        && row.is_some_and(|r| StatusKind::parse(&r.status) == StatusKind::Maint)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::haproxy::show::parse_stat;

    #[test]
    fn only_ready_from_maintenance_makes_the_check_fresh() {
        let stat = parse_stat(
            "# pxname,svname,qcur,scur,stot,status\nweb,slot1,0,0,0,MAINT\nweb,slot2,0,0,0,DRAIN\n",
        )
        .expect("valid");
        let maint = stat.server("web", "slot1");
        let drain = stat.server("web", "slot2");
        assert!(needs_fresh_check(ServerState::Ready, maint));
        assert!(!needs_fresh_check(ServerState::Ready, drain));
        assert!(!needs_fresh_check(ServerState::Drain, maint));
        assert!(!needs_fresh_check(ServerState::Ready, None));
    }
}
