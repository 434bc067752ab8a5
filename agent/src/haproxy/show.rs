//! `show stat` and `show info`, read by header name: column positions change
//! between HAProxy versions, names do not.

use std::collections::HashMap;

use handover_common::names::HostName;
use handover_common::proto::lb::{HaproxyInfo, ServerKind, ServerStats};

/// One server row of `show stat` (FRONTEND/BACKEND rows are skipped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerRow {
    /// Backend name (`pxname`).
    pub backend: String,
    /// Server name (`svname`).
    pub server: String,
    /// `addr`, "ADDR:PORT" (empty when HAProxy does not report it).
    pub addr: String,
    /// `status` text.
    pub status: String,
    /// Requests in flight.
    pub scur: u64,
    /// Queued requests.
    pub qcur: u64,
    /// Sessions so far.
    pub stot: u64,
    /// Last check result.
    pub check_status: String,
    /// 5xx answers.
    pub hrsp_5xx: u64,
}

impl ServerRow {
    /// The row as callers see it: named by the `host` it carries, if ours.
    pub fn stats(&self, host: Option<&HostName>, kind: ServerKind) -> ServerStats {
        ServerStats {
            backend: self.backend.clone(),
            host: host.cloned(),
            haproxy_name: self.server.clone(),
            kind,
            addr: self.addr.clone(),
            status: self.status.clone(),
            scur: self.scur,
            qcur: self.qcur,
            stot: self.stot,
            check_status: self.check_status.clone(),
            hrsp_5xx: self.hrsp_5xx,
            fresh_check: None,
        }
    }
}

/// Why `show stat` could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("cannot read HAProxy's `show stat`: {0}")]
pub struct StatError(String);

/// What `show stat` says about servers, and which backends exist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stat {
    /// Every server row.
    pub servers: Vec<ServerRow>,
    /// Every backend (a backend without servers has only its BACKEND row).
    pub backends: Vec<String>,
}

impl Stat {
    /// The row of `server` in `backend`.
    pub fn server(&self, backend: &str, server: &str) -> Option<&ServerRow> {
        self.servers
            .iter()
            .find(|r| r.backend == backend && r.server == server)
    }

    /// Whether `backend` exists.
    pub fn has_backend(&self, backend: &str) -> bool {
        self.backends.iter().any(|b| b == backend)
    }
}

/// Parses `show stat` CSV; the first line is `# pxname,svname,...`.
pub fn parse_stat(csv: &str) -> Result<Stat, StatError> {
    let mut lines = csv.lines();
    let header = lines
        .next()
        .and_then(|l| l.strip_prefix("# "))
        .ok_or_else(|| StatError("no `# pxname,...` header".into()))?;
    let cols: HashMap<&str, usize> = header.split(',').enumerate().map(|(i, n)| (n, i)).collect();
    let col = |name: &str| {
        cols.get(name)
            .copied()
            .ok_or_else(|| StatError(format!("no `{name}` column")))
    };
    let (px, sv, status, scur, qcur, stot) = (
        col("pxname")?,
        col("svname")?,
        col("status")?,
        col("scur")?,
        col("qcur")?,
        col("stot")?,
    );
    let (check, h5xx, addr) = (
        col("check_status").ok(),
        col("hrsp_5xx").ok(),
        col("addr").ok(),
    );
    let mut rows = Vec::new();
    let mut backends = Vec::new();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split(',').collect();
        let get = |i: usize| f.get(i).copied().unwrap_or("");
        let num = |i: usize| get(i).parse::<u64>().unwrap_or(0);
        let server = get(sv);
        if server == "BACKEND" {
            backends.push(get(px).to_string());
        }
        if server == "FRONTEND" || server == "BACKEND" || server.is_empty() {
            continue;
        }
        rows.push(ServerRow {
            backend: get(px).to_string(),
            server: server.to_string(),
            addr: addr.map(get).unwrap_or("").to_string(),
            status: get(status).to_string(),
            scur: num(scur),
            qcur: num(qcur),
            stot: num(stot),
            check_status: check.map(get).unwrap_or("").to_string(),
            hrsp_5xx: h5xx.map(num).unwrap_or(0),
        });
    }
    Ok(Stat {
        servers: rows,
        backends,
    })
}

/// The running HAProxy process, as `show info` names it. A reload changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcessId {
    /// `Pid`.
    pub pid: u32,
    /// `Start_time_sec` (or now − `Uptime_sec` where absent), to tell a reused pid.
    pub started: u64,
}

/// Parses `show info` into the identity of the serving process and its info.
pub fn parse_info(text: &str) -> Result<(ProcessId, HaproxyInfo), StatError> {
    let fields: HashMap<&str, &str> = text
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect();
    let pid = fields
        .get("Pid")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| StatError("`show info` has no Pid".into()))?;
    let uptime_secs = fields
        .get("Uptime_sec")
        .and_then(|u| u.parse().ok())
        .unwrap_or(0);
    let started = fields
        .get("Start_time_sec")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            // Rounded to 10 s so two readings of one process agree.
            now.saturating_sub(uptime_secs) / 10 * 10
        });
    let info = HaproxyInfo {
        version: fields.get("Version").unwrap_or(&"?").to_string(),
        pid,
        uptime_secs,
    };
    Ok((ProcessId { pid, started }, info))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trimmed from HAProxy 2.6.12's `show stat`, with the columns shuffled to prove
    /// they are read by name.
    const STAT: &str = "# svname,pxname,qcur,scur,stot,status,check_status,hrsp_5xx,addr\n\
        FRONTEND,fe,,0,10,OPEN,,0,\n\
        slot1,web,0,2,40,UP,L7OK,1,127.0.1.1:8080\n\
        slot2,web,0,0,0,MAINT,,0,0.0.0.0:0\n\
        web-3,dyn,1,0,5,DOWN 1/2,L7OK,0,127.0.1.3:8080\n\
        BACKEND,web,0,2,40,UP,,1,\n";

    #[test]
    fn columns_are_read_by_name() {
        let stat = parse_stat(STAT).expect("parses");
        assert_eq!(stat.backends, vec!["web".to_string()]);
        let rows = stat.servers;
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].backend, "web");
        assert_eq!(rows[0].server, "slot1");
        assert_eq!((rows[0].scur, rows[0].stot, rows[0].hrsp_5xx), (2, 40, 1));
        assert_eq!(rows[0].addr, "127.0.1.1:8080");
        assert_eq!(rows[2].status, "DOWN 1/2");
        assert_eq!(rows[2].qcur, 1);
    }

    #[test]
    fn a_missing_column_is_named() {
        let err = parse_stat("# pxname,svname,status\nweb,s1,UP\n").expect_err("no scur");
        assert!(err.to_string().contains("`scur`"), "{err}");
        assert!(parse_stat("Unknown command\n").is_err());
    }

    #[test]
    fn info_gives_the_process_identity() {
        let text = "Name: HAProxy\nVersion: 2.6.12-1+deb12u4\nPid: 17176\nUptime_sec: 33\nStart_time_sec: 1795669384\n";
        let (id, info) = parse_info(text).expect("parses");
        assert_eq!(
            id,
            ProcessId {
                pid: 17176,
                started: 1795669384
            }
        );
        assert_eq!(info.version, "2.6.12-1+deb12u4");
    }
}
