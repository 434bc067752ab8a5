//! A scripted fleet for the engine's unit tests: hosts with a release, a health
//! file and LB membership, each action done to them as the real agents do it
//! (idempotently), faults injected at a chosen step, and the fewest servers UP
//! ever seen — so every decision of the engine is tested with no process.

use std::collections::{BTreeMap, BTreeSet};
use std::mem::{Discriminant, discriminant};
use std::sync::Mutex;

use futures::future::LocalBoxFuture;
use handover_common::names::{HostName, ReleaseName};

use super::facts::Facts;
use super::ops::{Actions, Done, Outputs, Unreachable};
use super::steps::{Action, Step};
use crate::plan::Plan;

/// The release every host starts on, and the one the plan brings.
pub const OLD: &str = "20260101T000000Z-aaaaaaa";
/// The plan's release.
pub const NEW: &str = "20260202T000000Z-bbbbbbb";

/// What goes wrong, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The step fails (a broken release, a drain timeout...).
    Fail,
    /// The host does not answer.
    Unreachable,
    /// The coordinator dies before the step acts: the call never returns.
    CrashBefore,
    /// The coordinator dies after the step acted, before it was journaled.
    CrashAfter,
}

/// The fleet as the fake holds it.
#[derive(Debug, Default)]
pub struct World {
    /// Each host's current release.
    pub release: BTreeMap<HostName, String>,
    /// Hosts whose health file is away.
    pub drained: BTreeSet<HostName>,
    /// Hosts in the load balancer.
    pub attached: BTreeSet<HostName>,
    /// New releases built per host.
    pub builds: BTreeMap<HostName, usize>,
    /// Hosts with the plan's release staged.
    pub staged: BTreeSet<HostName>,
    /// Every step run: its action and first host.
    pub log: Vec<(Action, HostName)>,
    /// The fewest servers UP seen after any action.
    pub min_up: usize,
    /// Steps started so far (for faults by position).
    pub calls: usize,
    /// Surge: backups and migrations run on the db host.
    pub backups: usize,
    /// See `backups`.
    pub migrations: usize,
    /// Surge: hosts terminated or handed back to the standby pool.
    pub retired: BTreeSet<HostName>,
    /// Surge: whether the server array is enabled.
    pub array_enabled: bool,
    /// Surge: new servers whose `[db] check` fails.
    pub db_check_fails: BTreeSet<HostName>,
    /// Surge: the bake sees a 5xx burst.
    pub burst: bool,
    /// Surge: hosts that took traffic while the old ones still had sessions
    /// (detached with sessions: must stay empty).
    pub cut: BTreeSet<HostName>,
}

impl World {
    fn up(&self) -> usize {
        self.attached.difference(&self.drained).count()
    }
}

/// A fault: at the `at`-th call, or at an action on a host, once.
#[derive(Debug, Clone)]
pub enum Trigger {
    /// The n-th step run (from 0).
    Call(usize),
    /// This action on this host.
    Step(Discriminant<Action>, HostName),
    /// This surge action (any host).
    Surge(Discriminant<super::surge::SurgeAction>),
}

/// The scripted fleet.
pub struct Fake {
    min_healthy: usize,
    /// What the hosts look like now.
    pub world: Mutex<World>,
    faults: Mutex<Vec<(Trigger, Fault)>>,
}

/// The host named `name`.
pub fn host(name: &str) -> HostName {
    HostName::new(name.to_string()).expect("host name")
}

/// A plan over `n` app hosts (web-1..) behind one LB; `rollout` is appended to
/// the `[rollout]` section.
pub fn plan(n: usize, rollout: &str) -> Plan {
    let mut inv = String::from("ca = \"a\"\ncert = \"b\"\nkey = \"c\"\nstate_dir = \"d\"\n");
    for i in 1..=n {
        inv.push_str(&format!(
            "[[hosts]]\nname = \"web-{i}\"\naddress = \"127.0.1.{i}:7443\"\nroles = [\"app\"]\napp = \"127.0.1.{i}:80\"\n"
        ));
    }
    inv.push_str("[[hosts]]\nname = \"lb-1\"\naddress = \"127.0.1.99:7443\"\nroles = [\"lb\"]\n");
    let config = toml::from_str(&inv).expect("inventory");
    let text = format!(
        "strategy = \"in-place\"\nroles = [\"app\"]\n[revision]\nrepo = \"file:///r.git\"\nref = \"v2\"\n[rollout]\n{rollout}\n"
    );
    Plan::parse(&text, &config).expect("plan")
}

/// A surge plan over `n` app hosts (web-1..) with `n` standby hosts after
/// them, one LB and a db host; `extra` is appended to the plan.
pub fn surge_plan(n: usize, extra: &str) -> Plan {
    let mut inv = String::from("ca = \"a\"\ncert = \"b\"\nkey = \"c\"\nstate_dir = \"d\"\n");
    for i in 1..=2 * n {
        inv.push_str(&format!(
            "[[hosts]]\nname = \"web-{i}\"\naddress = \"127.0.1.{i}:7443\"\nroles = [\"app\"]\napp = \"127.0.1.{i}:80\"\nstandby = {}\n",
            i > n
        ));
    }
    inv.push_str("[[hosts]]\nname = \"lb-1\"\naddress = \"127.0.1.99:7443\"\nroles = [\"lb\"]\n");
    inv.push_str("[[hosts]]\nname = \"db-1\"\naddress = \"127.0.1.98:7443\"\nroles = [\"db\"]\n");
    let config = toml::from_str(&inv).expect("inventory");
    let text = format!(
        "strategy = \"surge\"\nroles = [\"app\"]\n[revision]\nrepo = \"file:///r.git\"\nref = \"v2\"\n{extra}\n"
    );
    Plan::parse(&text, &config).expect("plan")
}

impl Fake {
    /// Every host of `plan` on [`OLD`], attached and serving; a surge plan's
    /// standby hosts on [`OLD`] too, drained and detached.
    pub fn new(plan: &Plan) -> Self {
        let hosts: Vec<HostName> = plan.hosts.iter().map(|h| h.name.clone()).collect();
        let standby: Vec<HostName> = super::surge::new_names(plan, None);
        let world = World {
            release: hosts
                .iter()
                .chain(&standby)
                .map(|h| (h.clone(), OLD.to_string()))
                .collect(),
            attached: hosts.iter().cloned().collect(),
            drained: standby.iter().cloned().collect(),
            min_up: hosts.len(),
            array_enabled: true,
            ..World::default()
        };
        Fake {
            min_healthy: plan.file.rollout.min_healthy.get(),
            world: Mutex::new(world),
            faults: Mutex::new(Vec::new()),
        }
    }

    /// Injects `fault` where `trigger` says (once).
    pub fn inject(&self, trigger: Trigger, fault: Fault) {
        self.faults.lock().expect("faults").push((trigger, fault));
    }

    /// The world, for assertions.
    pub fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.world.lock().expect("world")
    }

    fn fault_for(&self, call: usize, step: &Step) -> Option<Fault> {
        let mut faults = self.faults.lock().expect("faults");
        let i = faults.iter().position(|(t, _)| match t {
            Trigger::Call(n) => *n == call,
            Trigger::Step(d, h) => *d == discriminant(&step.action) && step.hosts.contains(h),
            Trigger::Surge(d) => {
                matches!(&step.action, Action::Surge(a) if discriminant(a) == *d)
            }
        })?;
        Some(faults.remove(i).1)
    }

    /// Does `step` to the world, as the agents would.
    fn act(&self, step: &Step, facts: &Facts) -> anyhow::Result<Done> {
        let mut w = self.world();
        let mut done = Done::default();
        if let Action::Surge(a) = &step.action {
            super::surge_fake::act(&mut w, a, step, facts, &mut done)?;
            w.min_up = w.min_up.min(w.up());
            return Ok(done);
        }
        for h in &step.hosts {
            match &step.action {
                Action::EnsureCapacity => {
                    let without = w
                        .attached
                        .difference(&w.drained)
                        .filter(|x| !step.hosts.contains(x))
                        .count();
                    anyhow::ensure!(without >= self.min_healthy, "capacity: {without} UP");
                }
                Action::RemoveHealthCheckFile => {
                    w.drained.insert(h.clone());
                }
                Action::WaitForSessionsToEnd | Action::VerifyHealth | Action::Pause(_) => {}
                Action::DetachFromLoadBalancers => {
                    w.attached.remove(h);
                }
                Action::RecordCurrentRelease => {
                    if !facts.knows(h) {
                        let current = ReleaseName::new(w.release[h].clone())?;
                        done.learned.before.insert(h.clone(), Some(current));
                    }
                }
                Action::ApplyRevision => {
                    if w.release[h] != NEW {
                        w.release.insert(h.clone(), NEW.into());
                        *w.builds.entry(h.clone()).or_default() += 1;
                    }
                }
                Action::ActivatePreviousRelease => {
                    if let Some(before) = facts.release_before(h) {
                        w.release.insert(h.clone(), before.to_string());
                    }
                }
                Action::RestoreHealthCheckFile => {
                    w.drained.remove(h);
                }
                Action::AttachToLoadBalancers => {
                    w.attached.insert(h.clone());
                }
                Action::StageRelease => {
                    w.staged.insert(h.clone());
                }
                Action::Surge(_) => {}
            }
        }
        w.min_up = w.min_up.min(w.up());
        done.outputs = Outputs::new();
        Ok(done)
    }
}

impl Actions for Fake {
    fn run<'a>(
        &'a self,
        step: &'a Step,
        facts: &'a Facts,
    ) -> LocalBoxFuture<'a, anyhow::Result<Done>> {
        Box::pin(async move {
            let call = {
                let mut w = self.world();
                w.calls += 1;
                // Steps on no host (the array, the inputs) are logged as the coordinator's.
                let first = step
                    .hosts
                    .first()
                    .cloned()
                    .unwrap_or_else(|| host("coordinator"));
                w.log.push((step.action.clone(), first));
                w.calls - 1
            };
            let fault = self.fault_for(call, step);
            match fault {
                Some(Fault::Fail) => anyhow::bail!("scripted failure"),
                Some(Fault::Unreachable) => {
                    return Err(Unreachable(format!("{:?}: no answer", step.hosts.first())).into());
                }
                Some(Fault::CrashBefore) => std::future::pending().await,
                Some(Fault::CrashAfter) => {
                    let _ = self.act(step, facts);
                    std::future::pending().await
                }
                None => {}
            }
            if let Action::Pause(d) = step.action {
                tokio::time::sleep(d).await;
            }
            if let Action::Surge(super::surge::SurgeAction::SmokeCheckAndBake) = step.action {
                tokio::time::sleep(std::time::Duration::from_secs(10)).await;
            }
            self.act(step, facts)
        })
    }
}
