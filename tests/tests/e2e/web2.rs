//! Issue 16, second part: `handover web` reachable from other hosts only over
//! HTTPS with a `web` certificate of the fleet's CA, read only by holders of a
//! `viewer` certificate or the token, checked with a real TLS client (curl).

use std::net::SocketAddr;
use std::path::Path;

use handover_tests::agents::{Coordinator, HostSpec, Pki, bin, output_text};
use handover_tests::ports::{free_tcp_port, host_ip};
use handover_tests::web2::{Fetched, SecurePage, curl, with_cert};

/// A coordinator config whose one host does not answer (the page needs none).
fn quiet_coordinator(dir: &Path, pki: &Pki, n: u8) -> Coordinator {
    let host = HostSpec {
        name: "web-1".into(),
        address: SocketAddr::from((host_ip(n), 9)),
        roles: vec!["app".into()],
        app: None,
        extra: String::new(),
    };
    Coordinator::write(&dir.join("ops"), pki, "ops", &[host]).expect("config")
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
/// client without one is refused in the handshake; the page will not start on
/// an agent's certificate.
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
