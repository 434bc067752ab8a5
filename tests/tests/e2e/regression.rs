//! One test per bug fixed from now on, each named after what it guards and
//! carrying, in its doc comment, the issue that found it. Write the test first, see
//! it fail, then fix the code.

#[allow(unused_imports)]
use handover_tests::fleet;

// --- quic ---

mod quic {
    use std::net::{IpAddr, Ipv4Addr};

    use handover_tests::agents::{
        AgentProcess, AgentSpec, Coordinator, HostSpec, Pki, output_text,
    };
    use handover_tests::{flood, rawquic};

    /// One agent (no app) and a coordinator config naming it `web-1`.
    struct OneAgent {
        _serial: handover_tests::fleet::SerialGuard,
        _dir: tempfile::TempDir,
        pki: Pki,
        agent: AgentProcess,
        coordinator: Coordinator,
    }

    /// With `crl`, the agent loads the CA's revocation list (`ca init` writes one).
    fn one_agent(ip: Ipv4Addr, crl: bool) -> OneAgent {
        let serial = handover_tests::fleet::serial();
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::init(&dir.path().join("pki")).expect("ca init");
        let extra = if crl {
            format!(
                "crl = {:?}\n",
                pki.dir.join("crl.pem").display().to_string()
            )
        } else {
            String::new()
        };
        let agent = AgentProcess::start(
            dir.path(),
            &pki,
            AgentSpec {
                name: "web-1",
                ip,
                extra,
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
        let f = one_agent(Ipv4Addr::new(127, 0, 1, 41), false);
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
        let f = one_agent(Ipv4Addr::new(127, 0, 1, 42), false);
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
            let reason = conn.closed().await.to_string();
            // Close politely, so the agent frees the slots now, not at idle timeout.
            for (ep, conn) in held {
                conn.close(0u32.into(), b"done");
                ep.wait_idle().await;
            }
            anyhow::Ok(reason)
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

    fn handover_in(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
        std::process::Command::new(handover_tests::agents::bin("handover"))
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run handover")
    }

    /// A refusal is an exit with a message, never a panic (exit code 101).
    fn assert_refused(out: &std::process::Output, says: &str) {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && out.status.code() != Some(101),
            "expected a clean refusal: {}",
            output_text(out)
        );
        assert!(
            stderr.contains(says),
            "expected {says:?} in: {}",
            output_text(out)
        );
        assert!(!stderr.contains("panicked"), "{}", output_text(out));
    }

    /// Issue 13, hole 5: `handover ca issue --name ca` replaced the CA's own files
    /// with a leaf (the CA key was lost), and `issue` overwrote leaves silently.
    #[test]
    fn ca_issue_never_replaces_the_ca_and_replaces_a_leaf_only_when_told() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        let out = handover_in(dir, &["ca", "init", "--dir", "pki"]);
        assert!(out.status.success(), "{}", output_text(&out));
        let ca_key = std::fs::read(dir.join("pki/ca.key")).expect("ca key");
        let ca_pem = std::fs::read(dir.join("pki/ca.pem")).expect("ca cert");
        for force in [false, true] {
            let mut args = vec![
                "ca",
                "issue",
                "--dir",
                "pki",
                "--role",
                "coordinator",
                "--name",
                "ca",
            ];
            if force {
                args.push("--force");
            }
            assert_refused(&handover_in(dir, &args), "would replace the CA's own");
        }
        assert_eq!(
            ca_key,
            std::fs::read(dir.join("pki/ca.key")).expect("ca key")
        );
        assert_eq!(
            ca_pem,
            std::fs::read(dir.join("pki/ca.pem")).expect("ca cert")
        );

        let issue = [
            "ca", "issue", "--dir", "pki", "--role", "agent", "--name", "web-1",
        ];
        assert!(handover_in(dir, &issue).status.success());
        let key = std::fs::read(dir.join("pki/web-1.key")).expect("key");
        assert_refused(&handover_in(dir, &issue), "--renew");
        assert_eq!(key, std::fs::read(dir.join("pki/web-1.key")).expect("key"));
        let mut forced = issue.to_vec();
        forced.push("--force");
        assert!(handover_in(dir, &forced).status.success());
        assert_ne!(key, std::fs::read(dir.join("pki/web-1.key")).expect("key"));
    }

    /// Issue 13, hole 12: `ca init`/`ca issue --days 4294967295` panicked, and
    /// `ca init --days 0` and `--dns '*.evil'` were accepted.
    #[test]
    fn ca_arguments_out_of_range_are_refused_without_a_panic() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        for days in ["0", "4294967295"] {
            assert_refused(
                &handover_in(dir, &["ca", "init", "--dir", "pki", "--days", days]),
                "must be valid for 1 to",
            );
            assert!(!dir.join("pki/ca.pem").exists());
        }
        assert!(
            handover_in(dir, &["ca", "init", "--dir", "pki"])
                .status
                .success()
        );
        let issue = [
            "ca",
            "issue",
            "--dir",
            "pki",
            "--role",
            "coordinator",
            "--name",
            "ops",
        ];
        for days in ["0", "366", "4294967295"] {
            let mut args = issue.to_vec();
            args.extend(["--days", days]);
            assert_refused(&handover_in(dir, &args), "--days");
        }
        let mut args = issue.to_vec();
        args.extend(["--dns", "*.evil"]);
        assert_refused(&handover_in(dir, &args), "wildcards are not allowed");
        let mut args = issue.to_vec();
        args[7] = "10";
        assert_refused(&handover_in(dir, &args), "DNS name");
        assert!(!dir.join("pki/ops.pem").exists() && !dir.join("pki/10.pem").exists());
    }

    /// Issue 13, hole 4: there was no revocation; a lost coordinator certificate
    /// could command every agent for 825 days. Now `ca revoke` writes a CRL that
    /// agents load (`crl`) and re-read: the revoked certificate is refused at the
    /// handshake, its open connections are closed, others still work, and a
    /// renewed certificate works again.
    #[test]
    fn a_revoked_coordinator_certificate_is_refused_by_the_agent() {
        let f = one_agent(Ipv4Addr::new(127, 0, 1, 43), true);
        let pki = &f.pki;
        let other = Coordinator::write(
            &f.agent.config.parent().expect("home").join("ops2"),
            pki,
            "ops2",
            &[HostSpec::of(&f.agent, &["app"])],
        )
        .expect("second coordinator");
        let (ok, json) = f.coordinator.status_json(&[]).expect("status");
        assert!(ok, "before revocation: {json}");

        // A connection opened before the revocation, kept open.
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let cert = pki.dir.join("ops.pem");
        let key = pki.dir.join("ops.key");
        let (_ep, open) = rt
            .block_on(async {
                let config = rawquic::client_config(&pki.ca(), Some((&cert, &key)))?;
                let (ep, conn) = rawquic::connect(config, f.agent.addr, "web-1").await?;
                rawquic::request(&conn, handover_common::proto::Request::Status).await?;
                anyhow::Ok((ep, conn))
            })
            .expect("connection before revocation");

        let out = handover_in(&pki.dir, &["ca", "revoke", "--dir", ".", "--name", "ops"]);
        assert!(out.status.success(), "{}", output_text(&out));
        let printed = String::from_utf8_lossy(&out.stdout);
        assert!(printed.contains("revoked ops serial"), "{printed}");
        assert!(
            printed.contains("crl = "),
            "the hint names the config line: {printed}"
        );

        // The agent re-reads its crl every few seconds: poll, bounded.
        let mut refused = None;
        for _ in 0..40 {
            let (ok, json) = f.coordinator.status_json(&[]).expect("status");
            if !ok {
                refused = Some(json);
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        let json = refused.expect("the agent never refused the revoked certificate");
        let error = json[0]["error"].as_str().unwrap_or_default().to_string();
        assert!(
            error.contains("revoked"),
            "the refusal does not say why: {error}"
        );
        let closed = rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(10), open.closed()).await
        });
        let closed = closed.expect("the open connection of the revoked certificate stayed open");
        assert!(closed.to_string().contains("revoked"), "{closed}");
        let log = f.agent.log_text();
        assert!(log.contains("revocation list"), "{log}");

        // Another coordinator is unaffected; a renewed certificate works again.
        let (ok, json) = other.status_json(&[]).expect("status");
        assert!(ok, "a coordinator that was not revoked: {json}");
        let out = handover_in(
            &pki.dir,
            &["ca", "issue", "--dir", ".", "--renew", "--name", "ops"],
        );
        assert!(out.status.success(), "{}", output_text(&out));
        let (ok, json) = f.coordinator.status_json(&[]).expect("status");
        assert!(ok, "after renewal: {json}");
    }

    /// Issue 18 (polish): an inventory name that does not match the agent's
    /// certificate gave rustls' raw text (CertNotValidForName). Now the error says
    /// which name the certificate has, and both fixes.
    #[test]
    fn a_misnamed_host_is_told_which_name_its_certificate_has() {
        let f = one_agent(Ipv4Addr::new(127, 0, 1, 44), false);
        let mut host = HostSpec::of(&f.agent, &["app"]);
        host.name = "web-9".into();
        let c =
            Coordinator::write(&f.pki.dir.join("ops-9"), &f.pki, "ops9", &[host]).expect("config");
        let (ok, json) = c.status_json(&[]).expect("status");
        assert!(!ok);
        let error = json[0]["error"].as_str().unwrap_or_default();
        for says in [
            "certificate is for \"web-1\"",
            "name = \"web-1\"",
            "handover ca issue --role agent --name web-9",
        ] {
            assert!(error.contains(says), "{says:?} missing from: {error}");
        }
        assert!(
            !error.contains("NotValidForName"),
            "raw rustls text: {error}"
        );
    }

    /// Issue 13, hole 12: lease owner and rollout strings reached the agent
    /// unchecked (its log, its lease file, other operators' messages). A frame
    /// carrying a forged log line or a terminal escape is refused, nothing kept.
    #[test]
    fn lease_strings_that_are_not_plain_text_are_refused_on_the_wire() {
        use handover_common::proto::lease::LeaseRequest;
        use handover_common::proto::{FailureKind, Request, Response};
        let f = one_agent(Ipv4Addr::new(127, 0, 1, 45), false);
        let cert = f.pki.dir.join("ops.pem");
        let key = f.pki.dir.join("ops.key");
        let acquire = |rollout: &str, owner: &str| {
            Request::Lease(LeaseRequest::Acquire {
                rollout: rollout.into(),
                owner: owner.into(),
                ttl_secs: 60,
                break_existing: false,
            })
        };
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let answers = rt
            .block_on(async {
                let config = rawquic::client_config(&f.pki.ca(), Some((&cert, &key)))?;
                let (_ep, conn) = rawquic::connect(config, f.agent.addr, "web-1").await?;
                let mut answers = Vec::new();
                for request in [
                    acquire("r-1\nWARN forged log line", "ops"),
                    acquire("r-1", "ops\u{1b}[2J"),
                    acquire("-r", "ops"),
                ] {
                    answers.push(rawquic::request(&conn, request).await?);
                }
                anyhow::Ok(answers)
            })
            .expect("exchanges");
        for responses in &answers {
            assert!(
                matches!(responses.as_slice(), [Response::Failed(f)] if f.kind == FailureKind::BadRequest),
                "expected one BadRequest, got {responses:?}"
            );
        }
        assert!(
            !f.agent.state_dir.join("lease.json").exists(),
            "a refused lease request left a lease behind"
        );
        assert!(!f.agent.log_text().contains("forged log line"));
    }
}
