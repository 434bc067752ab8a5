//! How the load balancer reads in `handover-agent status`: HAProxy's identity, then
//! what it reports for every server of the managed backends — the same figures
//! the engine judges capacity and drains by.

use handover_common::proto::lb::LbStatus;

/// The `haproxy` lines of `status`, ending with a newline.
pub fn status_lines(status: &LbStatus) -> String {
    let mut out = match &status.haproxy {
        Some(info) => format!(
            "haproxy   {} (pid {}, up {}s) at {}; reloads seen {}\n",
            info.version, info.pid, info.uptime_secs, status.socket, status.reloads_seen
        ),
        None => format!("haproxy   at {}\n", status.socket),
    };
    if let Some(e) = &status.error {
        out.push_str(&format!("          cannot read HAProxy: {e}\n"));
    }
    if status.servers.is_empty() {
        if status.error.is_none() {
            out.push_str("          no servers in the managed backends\n");
        }
        return out;
    }
    let mut rows = vec![
        [
            "BACKEND", "SERVER", "HOST", "STATUS", "CHECK", "SCUR", "QCUR", "ADDR",
        ]
        .map(String::from),
    ];
    for s in &status.servers {
        rows.push([
            s.backend.clone(),
            s.haproxy_name.clone(),
            s.host.as_ref().map_or("-".into(), |h| h.to_string()),
            s.status.clone(),
            dash_if_empty(&s.check_status),
            s.scur.to_string(),
            s.qcur.to_string(),
            dash_if_empty(&s.addr),
        ]);
    }
    let widths: Vec<usize> = (0..8)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(&format!("  {}\n", cells.join("  ").trim_end()));
    }
    out
}

fn dash_if_empty(text: &str) -> String {
    if text.is_empty() {
        "-".into()
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use handover_common::names::HostName;
    use handover_common::proto::lb::{HaproxyInfo, ServerKind, ServerStats};

    use super::*;

    fn server(name: &str, host: Option<&str>, status: &str, scur: u64) -> ServerStats {
        ServerStats {
            backend: "be_app".into(),
            host: host.map(|h| HostName::new(h).expect("valid")),
            haproxy_name: name.into(),
            kind: ServerKind::Slot,
            addr: if host.is_some() {
                "127.0.1.41:8080".into()
            } else {
                String::new()
            },
            status: status.into(),
            scur,
            qcur: 0,
            stot: 9,
            check_status: "L7OK".into(),
            hrsp_5xx: 0,
            fresh_check: None,
        }
    }

    #[test]
    fn status_shows_each_server_with_its_state_and_sessions() {
        let status = LbStatus {
            socket: "/run/haproxy/admin.sock".into(),
            haproxy: Some(HaproxyInfo {
                version: "2.6.12".into(),
                pid: 42,
                uptime_secs: 7,
            }),
            error: None,
            servers: vec![
                server("slot1", Some("web-1"), "UP", 3),
                server("slot2", None, "MAINT", 0),
            ],
            reloads_seen: 1,
        };
        let text = status_lines(&status);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "haproxy   2.6.12 (pid 42, up 7s) at /run/haproxy/admin.sock; reloads seen 1"
        );
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            [
                "BACKEND", "SERVER", "HOST", "STATUS", "CHECK", "SCUR", "QCUR", "ADDR"
            ]
        );
        assert_eq!(
            lines[2].split_whitespace().collect::<Vec<_>>(),
            [
                "be_app",
                "slot1",
                "web-1",
                "UP",
                "L7OK",
                "3",
                "0",
                "127.0.1.41:8080"
            ]
        );
        assert_eq!(
            lines[3].split_whitespace().collect::<Vec<_>>(),
            ["be_app", "slot2", "-", "MAINT", "L7OK", "0", "0", "-"]
        );
    }

    #[test]
    fn an_unreachable_haproxy_says_why() {
        let status = LbStatus {
            socket: "/run/haproxy/admin.sock".into(),
            haproxy: None,
            error: Some("cannot reach HAProxy's runtime API".into()),
            servers: Vec::new(),
            reloads_seen: 0,
        };
        assert_eq!(
            status_lines(&status),
            "haproxy   at /run/haproxy/admin.sock\n          cannot read HAProxy: cannot reach HAProxy's runtime API\n"
        );
    }
}
