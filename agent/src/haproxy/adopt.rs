//! Adoption: an existing fleet's servers, declared as plain `server` lines in
//! haproxy.cfg, become the agent's to drain, detach and attach, without the
//! operator attaching them again first (issue 12, "Existing fleets").
//!
//! Automatic, by the one fact both sides already share: a server of a managed
//! backend that is not a `server-template` slot and not another host's member is
//! host H's when its name is H (the inventory name), or, when the request carries
//! H's app address (attach), when it has that address. The first request about H
//! (stats, detach, state, attach) records it in the membership as a
//! [`ServerKind::Config`] member with the address and admin state HAProxy has now;
//! HAProxy itself is not changed by adopting. A server that could be H's in two
//! ways, or whose name says H but whose address is not H's, is refused by name:
//! the operator fixes haproxy.cfg or the inventory, nothing is guessed.
//!
//! A config server cannot leave HAProxy's config, so detaching one keeps it in the
//! membership in maintenance: a reload (which brings it back enabled from
//! haproxy.cfg) is put right by the reconciler, and attaching it again keeps its
//! config line's settings (cookie, check). See docs/haproxy.md.

use std::net::SocketAddr;

use handover_common::names::HostName;
use handover_common::proto::lb::{ServerKind, ServerState, StatusKind};
use handover_common::proto::{Failure, FailureKind};

use super::config::HaproxyConfig;
use super::membership::{Member, Membership};
use super::show::{ServerRow, Stat};

/// The server of `backend` that is `host`'s by name (or by `app`, when known) and
/// not yet a member, as the member it becomes; `None` when `host` is a member
/// there already or no server is its.
pub fn find(
    config: &HaproxyConfig,
    stat: &Stat,
    members: &Membership,
    backend: &str,
    host: &HostName,
    app: Option<SocketAddr>,
) -> Result<Option<Member>, Failure> {
    if members.get(backend, host).is_some() {
        return Ok(None);
    }
    let app_text = app.map(|a| a.to_string());
    let candidates: Vec<&ServerRow> = stat
        .servers
        .iter()
        .filter(|r| r.backend == backend && !config.is_slot(&r.server))
        .filter(|r| members.host_of(backend, &r.server).is_none())
        .filter(|r| r.server == host.as_str() || app_text.as_deref() == Some(r.addr.as_str()))
        .collect();
    let row = match candidates.as_slice() {
        [] => return Ok(None),
        [row] => *row,
        [a, b, ..] => {
            let (named, at) = if a.server == host.as_str() {
                (a, b)
            } else {
                (b, a)
            };
            return Err(refused(format!(
                "backend {backend} has two servers that could be {host}'s: {} (by name) and {} (at its address {}): rename one in haproxy.cfg so one server is {host}'s",
                named.server, at.server, at.addr
            )));
        }
    };
    adopted(backend, host, app, row).map(Some)
}

/// The member `row` becomes for `host`, or why it cannot be adopted.
fn adopted(
    backend: &str,
    host: &HostName,
    app: Option<SocketAddr>,
    row: &ServerRow,
) -> Result<Member, Failure> {
    let bs = format!("{backend}/{}", row.server);
    let address: SocketAddr = row.addr.parse().map_err(|_| {
        refused(format!(
            "{bs} would be {host}'s, but HAProxy reports its address as {:?}: give it an IP:PORT in haproxy.cfg",
            row.addr
        ))
    })?;
    if let Some(app) = app
        && app != address
    {
        return Err(refused(format!(
            "{bs} is named {host} but is at {address}, while the inventory says {host}'s app is at {app}: make haproxy.cfg and [[hosts]] app in handover.toml agree"
        )));
    }
    let status = StatusKind::parse(&row.status);
    if status == StatusKind::NoCheck {
        return Err(refused(format!(
            "{bs} ({host}) has no health check: Handover drains a server through its check (`http-check disable-on-404`); add `check` to its `server` line in haproxy.cfg and reload"
        )));
    }
    Ok(Member {
        haproxy_name: row.server.clone(),
        kind: ServerKind::Config,
        app: address,
        state: admin_state(status),
    })
}

/// The admin state a server is in now: NOLB (health file gone) and DOWN are
/// HAProxy's health view; the admin state is still ready.
fn admin_state(status: StatusKind) -> ServerState {
    match status {
        StatusKind::Maint => ServerState::Maint,
        StatusKind::Drain => ServerState::Drain,
        _ => ServerState::Ready,
    }
}

fn refused(message: String) -> Failure {
    Failure::new(FailureKind::Refused, message)
}

/// The host a server of `show stat` stands for when nobody adopted it yet: its
/// own name, when that is a valid host name and it is not a slot. `status` and
/// capacity use this, so a plain-config fleet is counted by host before its first
/// request adopts it.
pub fn host_by_name(config: &HaproxyConfig, row: &ServerRow) -> Option<HostName> {
    if config.is_slot(&row.server) {
        return None;
    }
    HostName::new(row.server.as_str()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::haproxy::show::parse_stat;

    fn config() -> HaproxyConfig {
        toml::from_str("socket = \"/run/haproxy.sock\"\nbackend = \"web\"\n").expect("valid")
    }

    fn host(n: &str) -> HostName {
        HostName::new(n).expect("valid")
    }

    fn stat() -> Stat {
        parse_stat(
            "# pxname,svname,qcur,scur,stot,status,addr\n\
             web,web-1,0,3,9,UP,127.0.1.1:80\n\
             web,web-2,0,0,9,NOLB,127.0.1.2:80\n\
             web,app3,0,0,9,MAINT,127.0.1.3:80\n\
             web,slot1,0,0,0,MAINT,127.0.0.1:1\n\
             web,bare,0,0,0,no check,127.0.1.5:80\n\
             web,web-6,0,0,0,UP,127.0.1.9:80\n\
             web,other6,0,0,0,UP,127.0.1.6:80\n",
        )
        .expect("valid")
    }

    fn app(a: &str) -> Option<SocketAddr> {
        Some(a.parse().expect("addr"))
    }

    #[test]
    fn a_plain_server_is_adopted_by_name_with_its_address_and_admin_state() {
        let (c, s, m) = (config(), stat(), Membership::default());
        let web1 = find(&c, &s, &m, "web", &host("web-1"), None).expect("ok");
        assert_eq!(
            web1,
            Some(Member {
                haproxy_name: "web-1".into(),
                kind: ServerKind::Config,
                app: "127.0.1.1:80".parse().expect("addr"),
                state: ServerState::Ready,
            })
        );
        // Drained by its health file: still admin-ready.
        let web2 = find(&c, &s, &m, "web", &host("web-2"), app("127.0.1.2:80")).expect("ok");
        assert_eq!(web2.map(|m| m.state), Some(ServerState::Ready));
        // By address, when the name differs; maintenance is kept.
        let web3 = find(&c, &s, &m, "web", &host("web-3"), app("127.0.1.3:80")).expect("ok");
        assert_eq!(
            web3.map(|m| (m.haproxy_name, m.state)),
            Some(("app3".into(), ServerState::Maint))
        );
        // Not by address alone when the address is not known, never a slot.
        assert_eq!(
            find(&c, &s, &m, "web", &host("web-3"), None).expect("ok"),
            None
        );
        assert_eq!(
            find(&c, &s, &m, "web", &host("slot1"), None).expect("ok"),
            None
        );
        assert_eq!(
            find(&c, &s, &m, "web", &host("web-9"), None).expect("ok"),
            None
        );
    }

    #[test]
    fn a_member_is_not_adopted_again_and_its_server_is_nobody_elses() {
        let (c, s) = (config(), stat());
        let mut m = Membership::default();
        let member = find(&c, &s, &m, "web", &host("web-1"), None)
            .expect("ok")
            .expect("adopted");
        m.insert("web", host("web-1"), member);
        assert_eq!(
            find(&c, &s, &m, "web", &host("web-1"), None).expect("ok"),
            None
        );
        // Another host at web-1's address does not take its server.
        let other = find(&c, &s, &m, "web", &host("web-7"), app("127.0.1.1:80")).expect("ok");
        assert_eq!(other, None);
    }

    #[test]
    fn what_cannot_be_adopted_safely_is_refused_by_name() {
        let (c, s, m) = (config(), stat(), Membership::default());
        let cases = [
            (
                "web-1",
                "127.0.1.7:80",
                "make haproxy.cfg and [[hosts]] app",
            ),
            ("web-6", "127.0.1.6:80", "two servers that could be web-6's"),
            ("bare", "127.0.1.5:80", "add `check`"),
        ];
        for (name, addr, expected) in cases {
            let err = find(&c, &s, &m, "web", &host(name), app(addr)).expect_err("refused");
            assert!(err.message.contains(expected), "{name}: {}", err.message);
            assert_eq!(err.kind, FailureKind::Refused);
        }
    }

    #[test]
    fn status_names_unadopted_plain_servers_by_their_name_but_never_slots() {
        let (c, s) = (config(), stat());
        let named: Vec<Option<HostName>> = s.servers.iter().map(|r| host_by_name(&c, r)).collect();
        assert_eq!(named[0], Some(host("web-1")));
        assert_eq!(named[3], None);
    }
}
