//! Issue 16, second part: `handover web` reachable from other hosts only over
//! HTTPS with a `web` certificate of the fleet's CA, read only by holders of a
//! `viewer` certificate or the token, checked with a real TLS client (curl).

use std::path::Path;

use handover_tests::agents::{Coordinator, Pki, bin, output_text};
use handover_tests::ports::{free_tcp_port, host_ip};
use handover_tests::web2::{Fetched, SecurePage, curl, with_cert};

/// A coordinator config whose one host does not answer (the page needs none).
fn quiet_coordinator(dir: &Path, pki: &Pki, n: u8) -> Coordinator {
    Coordinator::with_one_quiet_host(dir, pki, host_ip(n)).expect("config")
}

fn get(page: &SecurePage, ca: &Path, extra: &[String], path: &str) -> Fetched {
    let mut args = vec!["--cacert".to_owned(), ca.display().to_string()];
    args.extend(extra.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    curl(&args, &page.url(path)).expect("curl runs")
}

/// `handover web --listen 0.0.0.0:PORT` without TLS is refused before anything
/// is read or bound, naming the flags to add; with --tls-cert but no --tls-key
/// clap refuses it too.
#[test]
fn a_reachable_address_without_tls_is_refused_naming_the_flags() {
    let port = free_tcp_port(std::net::Ipv4Addr::LOCALHOST).expect("port");
    let listen = format!("0.0.0.0:{port}");
    let out = std::process::Command::new(bin("handover"))
        .args(["web", "--listen", &listen])
        .output()
        .expect("run handover");
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    for flag in ["--tls-cert", "--tls-key", "--role viewer", "--token-file"] {
        assert!(text.contains(flag), "the refusal names {flag}: {text}");
    }
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "something listens on {port} after the refusal"
    );
    let out = std::process::Command::new(bin("handover"))
        .args(["web", "--listen", &listen, "--tls-cert", "web.pem"])
        .output()
        .expect("run handover");
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains("--tls-key"),
        "{}",
        output_text(&out)
    );
}

/// Over HTTPS with a token: no credentials → 401; a viewer certificate → the
/// page, its state and its event stream; the token as a bearer header, or
/// once in the address (traded for a cookie) → the page; an agent's, a
/// coordinator's or another CA's viewer certificate → refused in the
/// handshake; every mutating method → 405 whoever asks; and the server's
/// certificate is the `web` one (a client trusting another CA refuses it).
#[test]
fn over_https_only_viewers_and_the_token_get_in() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::init(&dir.path().join("pki")).expect("CA");
    let ip = host_ip(171);
    let coordinator = quiet_coordinator(dir.path(), &pki, 172);
    let (web_cert, web_key) = pki.issue("web", "bastion", &[ip.into()]).expect("web cert");
    let (viewer_cert, viewer_key) = pki.issue("viewer", "alice", &[]).expect("viewer");
    let (agent_cert, agent_key) = pki.issue("agent", "web-9", &[ip.into()]).expect("agent");
    let ops = (pki.dir.join("ops.pem"), pki.dir.join("ops.key"));
    let other = Pki::init(&dir.path().join("other-pki")).expect("other CA");
    let (stranger_cert, stranger_key) = other.issue("viewer", "mallory", &[]).expect("viewer");
    let token_file = dir.path().join("web.token");
    let page = SecurePage::start(
        &coordinator,
        ip,
        dir.path(),
        (&web_cert, &web_key),
        &["--token-file", &token_file.display().to_string()],
    )
    .expect("handover web starts over HTTPS");
    let token = std::fs::read_to_string(&token_file).expect("the token was made");
    let token = token.trim();
    let ca = pki.ca();

    let nobody = get(&page, &ca, &[], "/api/state");
    assert_eq!(nobody.status, Some(401), "{nobody:?}");
    assert!(
        nobody
            .text
            .contains("viewer certificate or the page's token"),
        "{nobody:?}"
    );

    let viewer = with_cert(&viewer_cert, &viewer_key);
    let state = get(&page, &ca, &viewer, "/api/state");
    assert_eq!(state.status, Some(200), "{state:?}\n{}", page.log_text());
    assert!(state.text.contains("\"version\":1"), "{state:?}");
    let html = get(&page, &ca, &viewer, "/");
    assert_eq!(html.status, Some(200));
    assert!(html.text.contains("<title>Handover</title>"), "{html:?}");
    let mut stream_args = viewer.clone();
    stream_args.extend(["-N".into(), "--max-time".into(), "3".into()]);
    let stream = get(&page, &ca, &stream_args, "/events");
    assert!(
        stream.text.contains("text/event-stream") && stream.text.contains("event: state\ndata: {"),
        "the event stream works over HTTPS for a viewer: {stream:?}"
    );

    // The bundle a browser imports (as `ca issue --role viewer` says) works too.
    let p12 = dir.path().join("alice.p12");
    let out = std::process::Command::new("openssl")
        .args(["pkcs12", "-export", "-passout", "pass:pw", "-name", "alice"])
        .arg("-in")
        .arg(&viewer_cert)
        .arg("-inkey")
        .arg(&viewer_key)
        .arg("-certfile")
        .arg(&ca)
        .arg("-out")
        .arg(&p12)
        .output()
        .expect("run openssl");
    assert!(out.status.success(), "{}", output_text(&out));
    let bundle = vec![
        "--cert-type".to_owned(),
        "P12".into(),
        "--cert".into(),
        format!("{}:pw", p12.display()),
    ];
    assert_eq!(get(&page, &ca, &bundle, "/api/state").status, Some(200));

    let bearer = vec!["-H".to_owned(), format!("Authorization: Bearer {token}")];
    assert_eq!(get(&page, &ca, &bearer, "/api/state").status, Some(200));
    let wrong = vec!["-H".to_owned(), format!("Authorization: Bearer {token}x")];
    assert_eq!(get(&page, &ca, &wrong, "/api/state").status, Some(401));
    let once = get(&page, &ca, &[], &format!("/?token={token}"));
    assert_eq!(once.status, Some(303), "{once:?}");
    let cookie = once
        .text
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .unwrap_or_else(|| panic!("a cookie is set: {once:?}"));
    assert!(!cookie.contains(token), "the cookie is not the token");
    let with_cookie = vec!["-H".to_owned(), format!("Cookie: {cookie}")];
    assert_eq!(
        get(&page, &ca, &with_cookie, "/api/state").status,
        Some(200)
    );

    for (who, (cert, key)) in [
        ("an agent", (&agent_cert, &agent_key)),
        ("a coordinator", (&ops.0, &ops.1)),
        ("another CA's viewer", (&stranger_cert, &stranger_key)),
    ] {
        let refused = get(&page, &ca, &with_cert(cert, key), "/api/state");
        assert_eq!(
            refused.status, None,
            "{who} is refused in the handshake: {refused:?}"
        );
    }
    let log = page.log_text();
    assert!(
        log.contains("coordinator ops, but only a viewer may connect here"),
        "the refusal is logged with its reason (an agent's certificate is refused \
         earlier, by webpki: it is for servers only): {log}"
    );

    for method in ["POST", "PUT", "PATCH", "DELETE"] {
        for creds in [&viewer, &bearer, &vec![]] {
            let mut args = creds.clone();
            args.extend(["-X".into(), method.into()]);
            let answer = get(&page, &ca, &args, "/api/state");
            assert_eq!(answer.status, Some(405), "{method}: {answer:?}");
        }
    }

    let distrust = curl(
        &["--cacert", &other.ca().display().to_string()],
        &page.url("/api/state"),
    )
    .expect("curl");
    assert_eq!(distrust.status, None, "{distrust:?}");
    assert!(distrust.error.contains("certificate"), "{distrust:?}");
}

/// Over HTTPS without a token the viewer certificate is the only way in: a
/// client without one is refused in the handshake, and with `--crl` one that
/// `ca revoke` revoked; the page will not start on an agent's certificate.
#[test]
fn over_https_without_a_token_a_viewer_certificate_is_required() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::init(&dir.path().join("pki")).expect("CA");
    let ip = host_ip(173);
    let coordinator = quiet_coordinator(dir.path(), &pki, 174);
    let (web_cert, web_key) = pki.issue("web", "bastion", &[ip.into()]).expect("web cert");
    let (viewer_cert, viewer_key) = pki.issue("viewer", "bob", &[]).expect("viewer");
    let page = SecurePage::start(&coordinator, ip, dir.path(), (&web_cert, &web_key), &[])
        .expect("handover web starts over HTTPS");
    let ca = pki.ca();
    let nobody = get(&page, &ca, &[], "/api/state");
    assert_eq!(nobody.status, None, "refused in the handshake: {nobody:?}");
    let viewer = get(
        &page,
        &ca,
        &with_cert(&viewer_cert, &viewer_key),
        "/api/state",
    );
    assert_eq!(viewer.status, Some(200), "{viewer:?}");

    // Revoked, and the page started with the CA's list: bob is refused.
    let out = std::process::Command::new(bin("handover"))
        .args([
            "ca",
            "revoke",
            "--dir",
            &pki.dir.display().to_string(),
            "--name",
            "bob",
        ])
        .output()
        .expect("run handover ca revoke");
    assert!(out.status.success(), "{}", output_text(&out));
    let crl = pki.dir.join("crl.pem").display().to_string();
    let strict = SecurePage::start(
        &coordinator,
        ip,
        dir.path(),
        (&web_cert, &web_key),
        &["--crl", &crl],
    )
    .expect("handover web starts with the CRL");
    let revoked = get(
        &strict,
        &ca,
        &with_cert(&viewer_cert, &viewer_key),
        "/api/state",
    );
    assert_eq!(
        revoked.status, None,
        "a revoked viewer is refused: {revoked:?}"
    );
    assert!(
        strict.log_text().contains("Revoked"),
        "{}",
        strict.log_text()
    );

    let (agent_cert, agent_key) = pki.issue("agent", "web-8", &[ip.into()]).expect("agent");
    let port = free_tcp_port(ip).expect("port");
    let out = coordinator.run(&[
        "web",
        "--listen",
        &format!("{ip}:{port}"),
        "--tls-cert",
        &agent_cert.display().to_string(),
        "--tls-key",
        &agent_key.display().to_string(),
    ]);
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("--role web"), "{text}");
}

/// What the test reads off the page opened mid-rollout.
const READ_DRAIN: &str = r#"
  const row = document.querySelector('tr[data-host="web-1"]');
  const facts = row ? row.querySelector(".drainfacts") : null;
  const countdown = row ? row.querySelector(".countdown") : null;
  return {
    state: document.getElementById("rollout-state").textContent,
    historyFirst: document.body.dataset.historyFirst || "",
    historyFrom: document.getElementById("history-from").textContent,
    holders: facts ? facts.dataset.holders : null,
    text: facts ? facts.textContent : null,
    seconds: countdown ? countdown.dataset.seconds || null : null,
  };
"#;

/// What the page showed of web-1's drain.
#[derive(Default, Debug)]
struct DrainSeen {
    holder: Option<String>,
    countdown: Vec<String>,
    zero: bool,
    first_point_ms: Option<u64>,
    history_from: String,
    final_state: String,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The page's server started while a rollout is under way: its charts start
/// where the rollout started (points from before the server existed, read
/// from the journal), and while the wave waits for web-1's sessions it names
/// the holder the coordinator's drain wait sees and counts down to when web-1
/// should be idle, reaching zero once the held client is let go. Screenshots
/// at desktop and phone width go to target/web-screenshots/.
#[test]
fn a_page_opened_mid_rollout_shows_its_history_and_the_drain_waits_facts() {
    use handover_tests::fleet::hold_connection;
    use handover_tests::scenario::{Scenario, ScenarioOptions};
    use handover_tests::web::{Browser, WebPage};
    use std::time::Duration;

    let s = Scenario::start(ScenarioOptions::default()).expect("fleet starts");
    let web1 = s.app("web-1").apache.addr();
    let mut held =
        Some(hold_connection(web1, "/VERSION", None, Duration::from_secs(120)).expect("hold"));
    let plan = s
        .write_plan(
            "plan.toml",
            &s.in_place_plan("v2", 1, 2)
                .replace("quiet = \"500ms\"", "quiet = \"3s\""),
        )
        .expect("plan");
    let mut rollout = s
        .coordinator
        .command(&["rollout", &plan.display().to_string(), "--yes"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn the rollout");
    // The page's server starts only once the rollout is journaled and has
    // been sampled a few times.
    for _ in 0..200 {
        let out = s.coordinator.run(&["history"]);
        if output_text(&out).contains("running") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(3));
    let opened_ms = now_ms();
    let page = WebPage::start(&s.coordinator, host_ip(175), s.dir()).expect("handover web starts");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let seen = runtime.block_on(async {
        let browser = Browser::start(s.dir(), 1400, 1000)
            .await
            .expect("chromium starts");
        let url = format!("http://{}/", page.addr);
        browser.client.goto(&url).await.expect("open the page");
        let mut seen = DrainSeen::default();
        let mut ended_reads = 0;
        for _ in 0..1200 {
            let v = browser.eval(READ_DRAIN).await.expect("read the page");
            if seen.first_point_ms.is_none() {
                seen.first_point_ms = v["historyFirst"].as_str().and_then(|t| t.parse().ok());
                seen.history_from = v["historyFrom"].as_str().unwrap_or("").to_owned();
            }
            if let Some(holders) = v["holders"].as_str().filter(|h| !h.is_empty())
                && held.is_some()
            {
                seen.holder = Some(holders.to_owned());
                browser
                    .screenshot("drain-facts-desktop-held")
                    .await
                    .expect("screenshot");
                held = None;
            }
            if let Some(secs) = v["seconds"].as_str()
                && held.is_none()
            {
                if seen.countdown.last().map(String::as_str) != Some(secs) {
                    seen.countdown.push(secs.to_owned());
                }
                if secs == "0" && !seen.zero {
                    seen.zero = true;
                    browser
                        .screenshot("drain-facts-desktop-idle")
                        .await
                        .expect("screenshot");
                }
            }
            seen.final_state = v["state"].as_str().unwrap_or("").to_owned();
            if rollout.try_wait().expect("wait").is_some() {
                ended_reads += 1;
                if ended_reads > 8 && seen.final_state != "running" {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let points = browser
            .eval(
                "document.getElementById('chart-up').scrollIntoView(); \
                 return document.querySelectorAll('#chart-up path').length;",
            )
            .await
            .expect("read the chart");
        assert!(
            points.as_u64().is_some_and(|n| n >= 1),
            "the UP chart is drawn"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        browser
            .screenshot("drain-facts-desktop-charts")
            .await
            .expect("screenshot");
        browser
            .client
            .set_window_size(390, 844)
            .await
            .expect("phone width");
        tokio::time::sleep(Duration::from_millis(300)).await;
        browser
            .screenshot("drain-facts-phone-done")
            .await
            .expect("screenshot");
        browser.close().await.expect("close");
        seen
    });
    let _ = rollout.kill();
    drop(held);
    let first = seen.first_point_ms.unwrap_or(u64::MAX);
    assert!(
        first < opened_ms,
        "the charts start before the page's server did ({first} vs {opened_ms}): {seen:?}"
    );
    assert!(seen.history_from.contains("journal"), "{seen:?}");
    let holder = seen.holder.clone().unwrap_or_default();
    assert!(
        holder.contains("(1 connection)"),
        "the drain wait's holder of web-1 is named: {seen:?}"
    );
    assert!(seen.zero, "the countdown reached zero: {seen:?}");
    assert_eq!(seen.final_state, "succeeded", "{}", page.log_text());
}

/// A browser over HTTPS with the token: opened once as `/?token=T`, the page
/// is reached at `/` (the token gone from the address), keeps an HttpOnly
/// cookie that scripts cannot read, and its event stream is live. The browser
/// trusts exactly the page's `web` key (as after importing the CA).
#[test]
fn a_browser_opens_the_https_page_with_the_token_once() {
    use handover_tests::web::Browser;
    use handover_tests::web2::spki_sha256;
    use std::time::Duration;

    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::init(&dir.path().join("pki")).expect("CA");
    let ip = host_ip(177);
    let coordinator = quiet_coordinator(dir.path(), &pki, 178);
    let (web_cert, web_key) = pki.issue("web", "bastion", &[ip.into()]).expect("web cert");
    let token_file = dir.path().join("web.token");
    let page = SecurePage::start(
        &coordinator,
        ip,
        dir.path(),
        (&web_cert, &web_key),
        &["--token-file", &token_file.display().to_string()],
    )
    .expect("handover web starts over HTTPS");
    let token = std::fs::read_to_string(&token_file).expect("token");
    let spki = spki_sha256(&web_cert).expect("spki");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let browser = Browser::start_with(
            dir.path(),
            1200,
            800,
            &[format!("--ignore-certificate-errors-spki-list={spki}")],
        )
        .await
        .expect("chromium starts");
        browser
            .client
            .goto(&page.url(&format!("/?token={}", token.trim())))
            .await
            .expect("open the page");
        let mut last = serde_json::Value::Null;
        for _ in 0..80 {
            last = browser
                .eval(
                    "return { url: location.href, live: document.getElementById('live').className, \
                     hosts: document.querySelectorAll('tr[data-host]').length, cookie: document.cookie };",
                )
                .await
                .unwrap_or(serde_json::Value::Null);
            if last["live"] == "on" && last["hosts"] == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert_eq!(last["live"], "on", "the event stream is live: {last}\n{}", page.log_text());
        assert_eq!(last["hosts"], 1, "{last}");
        assert_eq!(last["url"], page.url("/"), "the token left the address");
        assert_eq!(last["cookie"], "", "the cookie is HttpOnly");
        browser.screenshot("https-token-desktop").await.expect("screenshot");
        browser.close().await.expect("close");
    });
}
