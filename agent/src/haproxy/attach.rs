//! Attach (runbook step 11): put an app host into rotation in every target backend
//! and wait until HAProxy reports it UP after a fresh health check.
//!
//! Per backend the host is [`place`]d — a free slot, a dynamic server, or the
//! server already carrying it — recorded in the membership first (so a crash
//! half-way is finished by the reconciler), then applied: the check is made fresh
//! (drain → `health down` → ready), and [`UpWait`] waits for exactly UP.

use std::net::SocketAddr;
use std::time::Duration;

use handover_common::names::{BackendName, HostName};
use handover_common::proto::lb::{LbReply, ServerKind, ServerState, StatusKind};
use handover_common::proto::{Failure, FailureKind};

use super::balancer::{Balancer, server_path};
use super::config::HaproxyConfig;
use super::membership::{Member, Membership};
use super::show::Stat;
use super::wait::{Target, UpWait};
use crate::caller::Reporter;

/// Where the host goes in one backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Already carried there, UP and wanted ready: nothing to change.
    Serving(Member),
    /// Carried there but not UP or not wanted ready (a resume, or it was drained):
    /// applied again through the same fresh check. `present`: HAProxy still has
    /// the server (a dynamic server is gone after a reload).
    Again {
        /// The member, now wanted ready.
        member: Member,
        /// Whether HAProxy has the server.
        present: bool,
    },
    /// Not a member yet.
    New(Member),
}

impl Placement {
    /// The member carrying the host after this placement.
    pub fn member(&self) -> &Member {
        match self {
            Placement::Serving(m) | Placement::Again { member: m, .. } | Placement::New(m) => m,
        }
    }
}

/// Attach `server` at `app`: fill a slot or add a dynamic server, make the check
/// fresh, and wait until HAProxy reports it UP in every target backend.
pub async fn attach(
    lb: &Balancer<'_>,
    server: &HostName,
    app: SocketAddr,
    backend: Option<&BackendName>,
    timeout: Option<Duration>,
    reporter: &Reporter,
) -> Result<LbReply, Failure> {
    let backends = lb.target_backends(backend)?;
    let targets = put_in_rotation(lb, server, app, &backends).await?;
    let timeout = timeout.unwrap_or(lb.config.attach_timeout);
    let fresh: Vec<String> = targets.iter().map(|t| t.backend.clone()).collect();
    let started = std::time::Instant::now();
    UpWait::new(server.clone(), targets, timeout)
        .run(lb, reporter)
        .await?;
    let waited = checks_wait(lb.config, started.elapsed());
    let mut servers = lb.stats_of_host(server).await?;
    for s in servers.iter_mut().filter(|s| fresh.contains(&s.backend)) {
        s.fresh_check = Some(waited);
    }
    Ok(LbReply::Servers(servers))
}

/// The part of the wait for UP that HAProxy's own config asked for: `rise`
/// fresh checks `inter` apart. The agent reads HAProxy every [`super::balancer::POLL`],
/// so it sees UP up to that much late; when its `[haproxy]` names both `rise`
/// and `inter`, the wait is capped at `rise` × `inter` and the rest stays
/// Handover's own time.
pub fn checks_wait(config: &HaproxyConfig, waited: Duration) -> Duration {
    match (config.check_rise, config.check_inter) {
        (Some(rise), Some(inter)) => waited.min(inter.saturating_mul(rise)),
        _ => waited,
    }
}

/// Places, records and applies `server` in every backend, holding the membership
/// lock throughout; returns the servers to wait for.
async fn put_in_rotation(
    lb: &Balancer<'_>,
    server: &HostName,
    app: SocketAddr,
    backends: &[BackendName],
) -> Result<Vec<Target>, Failure> {
    let mut members = lb.members().await?;
    let stat = lb.read_stat().await?;
    for b in backends {
        check_backend_exists(&stat, b.as_str())?;
    }
    lb.adopt(&mut members, &stat, server, Some(app))?;
    let mut targets = Vec::new();
    for b in backends.iter().map(BackendName::as_str) {
        let placement = place(lb.config, &stat, members.get(), b, server, app)?;
        let member = placement.member().clone();
        // Each change is recorded before it is made: if the agent dies half-way,
        // the reconciler finishes it.
        match placement {
            Placement::Serving(_) => {}
            Placement::Again { present, .. } => {
                members.get().insert(b, server.clone(), member.clone());
                members.save()?;
                lb.apply(b, &member, present).await?;
            }
            Placement::New(_) => {
                members.get().insert(b, server.clone(), member.clone());
                members.save()?;
                if let Err(e) = lb.apply(b, &member, false).await {
                    members.get().remove(b, server);
                    members.save()?;
                    if member.kind == ServerKind::Slot {
                        let bs = server_path(b, &member.haproxy_name);
                        let _ = lb.set_admin_state(&bs, ServerState::Maint).await;
                    }
                    return Err(e);
                }
                tracing::info!(%server, backend = b, haproxy_name = %member.haproxy_name, %app, "attached; waiting for a fresh UP");
            }
        }
        targets.push(Target::of(b, &member));
    }
    Ok(targets)
}

/// Decides where `server` at `app` goes in `backend`, from `show stat` and the
/// membership: the member already carrying it, else a free slot when the backend
/// has slots, else a dynamic server named after the host.
pub fn place(
    config: &HaproxyConfig,
    stat: &Stat,
    members: &Membership,
    backend: &str,
    server: &HostName,
    app: SocketAddr,
) -> Result<Placement, Failure> {
    if let Some(existing) = members.get(backend, server) {
        if existing.app != app && existing.kind == ServerKind::Config {
            return Err(Failure::new(
                FailureKind::Refused,
                format!(
                    "{server} is {backend}/{} of haproxy.cfg at {}, not {app}: make haproxy.cfg and [[hosts]] app in handover.toml agree",
                    existing.haproxy_name, existing.app
                ),
            ));
        }
        if existing.app != app {
            return Err(Failure::new(
                FailureKind::Refused,
                format!(
                    "{server} is attached to {backend} at {}, not {app}: detach it first (handover detach {server})",
                    existing.app
                ),
            ));
        }
        let row = stat.server(backend, &existing.haproxy_name);
        let up = row.is_some_and(|r| StatusKind::parse(&r.status) == StatusKind::Up);
        if up && existing.state == ServerState::Ready {
            return Ok(Placement::Serving(existing.clone()));
        }
        let member = Member {
            state: ServerState::Ready,
            ..existing.clone()
        };
        return Ok(Placement::Again {
            member,
            present: row.is_some(),
        });
    }
    let has_slots = stat
        .servers
        .iter()
        .any(|r| r.backend == backend && config.is_slot(&r.server));
    let (haproxy_name, kind) = if has_slots {
        (free_slot(config, stat, members, backend)?, ServerKind::Slot)
    } else if stat.server(backend, server.as_str()).is_some() {
        return Err(Failure::new(
            FailureKind::Refused,
            format!(
                "backend {backend} already has a server named {server} that this agent did not add: it is left alone; remove it from haproxy.cfg or rename the host"
            ),
        ));
    } else {
        (server.to_string(), ServerKind::Dynamic)
    };
    Ok(Placement::New(Member {
        haproxy_name,
        kind,
        app,
        state: ServerState::Ready,
    }))
}

/// The lowest-numbered free slot: ours to take only if no member holds it and it
/// sits in MAINT (anything else was enabled by someone else, and is not ours).
fn free_slot(
    config: &HaproxyConfig,
    stat: &Stat,
    members: &Membership,
    backend: &str,
) -> Result<String, Failure> {
    stat.servers
        .iter()
        .filter(|r| r.backend == backend)
        .filter_map(|r| config.slot_number(&r.server).map(|n| (n, r)))
        .filter(|(_, r)| members.host_of(backend, &r.server).is_none())
        .filter(|(_, r)| StatusKind::parse(&r.status) == StatusKind::Maint)
        .min_by_key(|(n, _)| *n)
        .map(|(_, r)| r.server.clone())
        .ok_or_else(|| {
            Failure::new(
                FailureKind::Failed,
                format!(
                    "every {p}N slot of backend {backend} is taken: detach a server, or raise the count in `server-template {p}` in haproxy.cfg",
                    p = config.slot_prefix
                ),
            )
        })
}

fn check_backend_exists(stat: &Stat, backend: &str) -> Result<(), Failure> {
    if stat.has_backend(backend) {
        Ok(())
    } else {
        Err(Failure::new(
            FailureKind::Failed,
            format!(
                "HAProxy has no backend {backend:?} (it has: {}): fix `[haproxy] backend` in the agent config or haproxy.cfg",
                stat.backends.join(", ")
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::haproxy::show::parse_stat;

    /// Issue 14: the wait for a fresh UP is reported as HAProxy's checks, but
    /// never more than `rise` × `inter` when the agent knows both (the agent's
    /// own polling delay beyond that is not the LB config's wait).
    #[test]
    fn the_checks_wait_is_capped_at_rise_times_inter_when_known() {
        let mut c = config();
        let waited = Duration::from_millis(480);
        assert_eq!(checks_wait(&c, waited), waited, "unknown: as measured");
        c.check_rise = Some(2);
        c.check_inter = Some(Duration::from_millis(200));
        assert_eq!(checks_wait(&c, waited), Duration::from_millis(400));
        assert_eq!(
            checks_wait(&c, Duration::from_millis(350)),
            Duration::from_millis(350)
        );
    }

    const HEADER: &str = "# pxname,svname,qcur,scur,stot,status,check_status,hrsp_5xx,addr\n";

    fn config() -> HaproxyConfig {
        toml::from_str("socket = \"/run/haproxy.sock\"\nbackend = \"web\"\n").expect("valid")
    }

    fn stat(rows: &[&str]) -> Stat {
        parse_stat(&format!("{HEADER}{}\n", rows.join("\n"))).expect("valid stat")
    }

    fn host(name: &str) -> HostName {
        HostName::new(name).expect("valid")
    }

    fn app() -> SocketAddr {
        "127.0.1.1:8080".parse().expect("addr")
    }

    fn member(name: &str, kind: ServerKind, state: ServerState) -> Member {
        Member {
            haproxy_name: name.into(),
            kind,
            app: app(),
            state,
        }
    }

    const SLOTS: &[&str] = &[
        "web,slot10,0,0,0,MAINT,,0,",
        "web,slot2,0,0,0,UP,L7OK,0,127.0.1.9:80",
        "web,slot3,0,0,0,MAINT,,0,",
        "web,BACKEND,0,0,0,UP,,0,",
    ];

    #[test]
    fn a_new_host_takes_the_lowest_free_slot_in_maintenance() {
        let placed = place(
            &config(),
            &stat(SLOTS),
            &Membership::default(),
            "web",
            &host("web-1"),
            app(),
        );
        assert_eq!(
            placed,
            Ok(Placement::New(member(
                "slot3",
                ServerKind::Slot,
                ServerState::Ready
            )))
        );
        let mut members = Membership::default();
        members.insert(
            "web",
            host("web-2"),
            member("slot3", ServerKind::Slot, ServerState::Ready),
        );
        let placed = place(
            &config(),
            &stat(SLOTS),
            &members,
            "web",
            &host("web-1"),
            app(),
        );
        assert_eq!(
            placed.map(|p| p.member().haproxy_name.clone()),
            Ok("slot10".into())
        );
        members.insert(
            "web",
            host("web-3"),
            member("slot10", ServerKind::Slot, ServerState::Ready),
        );
        let full = place(
            &config(),
            &stat(SLOTS),
            &members,
            "web",
            &host("web-1"),
            app(),
        )
        .expect_err("slot2 is someone else's");
        assert!(full.message.contains("server-template slot"), "{full}");
    }

    #[test]
    fn without_slots_a_dynamic_server_named_after_the_host_unless_the_name_is_taken() {
        let dyn_backend = stat(&["dyn,web-2,0,0,0,UP,L7OK,0,", "dyn,BACKEND,0,0,0,UP,,0,"]);
        let placed = place(
            &config(),
            &dyn_backend,
            &Membership::default(),
            "dyn",
            &host("web-1"),
            app(),
        );
        assert_eq!(
            placed,
            Ok(Placement::New(member(
                "web-1",
                ServerKind::Dynamic,
                ServerState::Ready
            )))
        );
        let clash = place(
            &config(),
            &dyn_backend,
            &Membership::default(),
            "dyn",
            &host("web-2"),
            app(),
        )
        .expect_err("not ours");
        assert_eq!(clash.kind, FailureKind::Refused);
    }

    #[test]
    fn a_member_up_and_ready_is_left_serving_otherwise_it_is_applied_again() {
        let mut members = Membership::default();
        let serving = member("slot2", ServerKind::Slot, ServerState::Ready);
        members.insert("web", host("web-1"), serving.clone());
        let up = stat(&["web,slot2,0,0,0,UP,L7OK,0,127.0.1.1:8080"]);
        assert_eq!(
            place(&config(), &up, &members, "web", &host("web-1"), app()),
            Ok(Placement::Serving(serving.clone()))
        );
        let drained = member("slot2", ServerKind::Slot, ServerState::Drain);
        members.insert("web", host("web-1"), drained);
        let nolb = stat(&["web,slot2,0,0,0,UP,L7OK,0,127.0.1.1:8080"]);
        assert_eq!(
            place(&config(), &nolb, &members, "web", &host("web-1"), app()),
            Ok(Placement::Again {
                member: serving,
                present: true
            })
        );
        let dynamic = member("web-1", ServerKind::Dynamic, ServerState::Ready);
        members.insert("dyn", host("web-1"), dynamic.clone());
        assert_eq!(
            place(
                &config(),
                &stat(&[]),
                &members,
                "dyn",
                &host("web-1"),
                app()
            ),
            Ok(Placement::Again {
                member: dynamic,
                present: false
            }),
            "a dynamic server lost in a reload is added again"
        );
        let elsewhere = place(
            &config(),
            &up,
            &members,
            "web",
            &host("web-1"),
            "127.0.1.1:9".parse().expect("addr"),
        )
        .expect_err("another address");
        assert!(elsewhere.message.contains("detach it first"), "{elsewhere}");
    }

    #[test]
    fn a_backend_haproxy_lacks_is_named_with_those_it_has() {
        let err = check_backend_exists(&stat(SLOTS), "api").expect_err("missing");
        assert!(err.message.contains("\"api\" (it has: web)"), "{err}");
    }
}
