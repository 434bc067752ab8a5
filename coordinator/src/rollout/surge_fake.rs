//! The scripted fleet's surge actions (see [`super::fake`]): the db host's
//! hooks counted, standby hosts as new servers, the array's state, a failing
//! `[db] check` and a 5xx burst during the bake on demand.

use handover_common::names::HostName;

use super::facts::Facts;
use super::fake::{NEW, World};
use super::ops::Done;
use super::steps::Step;
use super::surge::SurgeAction;

/// Does surge action `a` of `step` to the world, as the agents and the
/// standby provider would (idempotently).
pub fn act(
    w: &mut World,
    a: &SurgeAction,
    step: &Step,
    facts: &Facts,
    done: &mut Done,
) -> anyhow::Result<()> {
    use SurgeAction::*;
    let _ = facts;
    let hosts: &[HostName] = &step.hosts;
    match a {
        BackupDatabase => {
            w.backups += 1;
            done.learned.surge.backup = Some(format!("{{\"path\": \"/b/{}\"}}", w.backups));
        }
        MigrateDatabase => w.migrations += 1,
        LaunchNewServers { .. }
        | EnrollNewServers { .. }
        | RunSystemHooks { .. }
        | SaveInputs
        | UpdateArray => {}
        DeployRevision { .. } => {
            for h in hosts {
                if w.release[h] != NEW {
                    w.release.insert(h.clone(), NEW.into());
                    *w.builds.entry(h.clone()).or_default() += 1;
                }
            }
        }
        VerifyNewServers { .. } => {
            if let Some(h) = hosts.iter().find(|h| w.db_check_fails.contains(*h)) {
                anyhow::bail!("new server {h} failed the [db] check");
            }
        }
        DisableArray => {
            w.array_enabled = false;
            done.learned.surge.array_disabled = true;
        }
        EnableArray => w.array_enabled = true,
        AttachNewServers | ReattachOldServers => {
            for h in hosts {
                w.drained.remove(h);
                w.attached.insert(h.clone());
            }
        }
        RemoveHealthCheckFileOnOld | DrainNewServers => {
            for h in hosts {
                w.drained.insert(h.clone());
            }
        }
        WaitForSessionsToEndOnOld => {}
        DetachOldServers | DetachNewServers => {
            for h in hosts {
                if !w.drained.contains(h) {
                    w.cut.insert(h.clone());
                }
                w.attached.remove(h);
            }
            done.learned.surge.detached_ms = Some(1);
        }
        SmokeCheckAndBake => {
            if w.burst {
                anyhow::bail!("bake: {} answered 5xx past the threshold", hosts[0]);
            }
        }
        TerminateOldServers | TerminateNewServers => {
            for h in hosts {
                anyhow::ensure!(!w.attached.contains(h), "{h} retired while attached");
                w.drained.insert(h.clone());
                w.retired.insert(h.clone());
            }
        }
    }
    Ok(())
}
