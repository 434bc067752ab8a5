//! One test per bug fixed from now on, each named after what it guards and
//! carrying, in its doc comment, the issue that found it. Write the test first, see
//! it fail, then fix the code.

#[allow(unused_imports)]
use handover_tests::fleet;

// --- quic ---

mod quic {
    use std::net::{IpAddr, Ipv4Addr};

    use handover_tests::agents::{AgentProcess, AgentSpec, Coordinator, HostSpec, Pki};
    use handover_tests::{flood, rawquic};

    /// One agent (no app) and a coordinator config naming it `web-1`.
    struct OneAgent {
        _serial: handover_tests::fleet::SerialGuard,
        _dir: tempfile::TempDir,
        pki: Pki,
        agent: AgentProcess,
        coordinator: Coordinator,
    }

    fn one_agent(ip: Ipv4Addr, extra: &str) -> OneAgent {
        let serial = handover_tests::fleet::serial();
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::init(&dir.path().join("pki")).expect("ca init");
        let agent = AgentProcess::start(
            dir.path(),
            &pki,
            AgentSpec {
                name: "web-1",
                ip,
                extra: extra.to_string(),
            },
        )
        .expect("agent starts");
        let coordinator = Coordinator::write(
            &dir.path().join("ops"),
            &pki,
            "ops",
            &[HostSpec::of(&agent, &["app"])],
        )
        .expect("coordinator config");
        OneAgent {
            _serial: serial,
            _dir: dir,
            pki,
            agent,
            coordinator,
        }
    }

    fn attacker(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, 3, n))
    }

    /// Issue 13, hole 2: anyone could lock coordinators out without a certificate.
    /// Bare ClientHellos (spoofable: the sender never reads an answer) and
    /// handshakes that stall after proving their address each took one of the 64
    /// connection slots for the 30 s idle timeout; about 100 of them refused every
    /// new `handover status`, with an empty reason. Now unvalidated addresses get a
    /// Retry and hold nothing, stalled handshakes are bounded per source, and only
    /// authenticated connections count against the connection limit.
    #[test]
    fn a_handshake_flood_does_not_lock_coordinators_out() {
        let f = one_agent(Ipv4Addr::new(127, 0, 1, 41), "");
        let (ok, json) = f.coordinator.status_json(&[]).expect("status");
        assert!(ok, "status before the flood: {json}");

        let config = rawquic::client_config(&f.pki.ca(), None).expect("client config");
        let spoofed: Vec<IpAddr> = (1..=10).map(attacker).collect();
        flood::bare_hellos(&config, &spoofed, f.agent.addr, "web-1", 300).expect("bare hellos");
        let answered = flood::stalled_handshakes(&config, attacker(20), f.agent.addr, "web-1", 40)
            .expect("stalled handshakes");
        assert!(answered > 0, "the agent answered no handshake at all");

        let (ok, json) = f.coordinator.status_json(&[]).expect("status");
        assert!(ok, "status during the flood: {json}");
        assert_eq!(json[0]["reachable"], true, "{json}");

        // The per-source limit refused the excess, and the log says why.
        let log = f.agent.log_text();
        assert!(
            log.contains("handshakes pending from 127.0.3.20"),
            "no refusal with a reason in the agent log:\n{log}"
        );
    }

    /// Issue 13, hole 2: a refusal says why. With every coordinator slot taken by
    /// authenticated connections, the next coordinator is closed with a reason that
    /// names the limit (it used to get an empty one), and the agent logs it.
    #[test]
    fn a_coordinator_over_the_connection_limit_is_told_why() {
        let f = one_agent(Ipv4Addr::new(127, 0, 1, 42), "");
        let cert = f.pki.dir.join("ops.pem");
        let key = f.pki.dir.join("ops.key");
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let reason = rt.block_on(async {
            let config = rawquic::client_config(&f.pki.ca(), Some((&cert, &key)))?;
            let mut held = Vec::new();
            for _ in 0..64 {
                let (ep, conn) = rawquic::connect(config.clone(), f.agent.addr, "web-1").await?;
                // A request proves the connection was admitted, not just handshaken.
                rawquic::request(&conn, handover_common::proto::Request::Status).await?;
                held.push((ep, conn));
            }
            let (_ep, conn) = rawquic::connect(config, f.agent.addr, "web-1").await?;
            anyhow::Ok(conn.closed().await.to_string())
        });
        let reason = reason.expect("64 connections");
        assert!(
            reason.contains("coordinator connections are already open"),
            "the 65th coordinator was not told why: {reason}"
        );
        let log = f.agent.log_text();
        assert!(
            log.contains("coordinator connections are already open"),
            "{log}"
        );
        drop(rt);
        let (ok, json) = f.coordinator.status_json(&[]).expect("status");
        assert!(ok, "status once the connections are gone: {json}");
    }
}
