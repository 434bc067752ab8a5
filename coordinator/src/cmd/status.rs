//! `handover status`: ask every agent (or those named) how its host is.
//!
//! Rows are printed as hosts answer (issue 14: one unreachable host held the
//! whole table for its timeout), so a slow host never hides the others; errors,
//! the load balancers' section and the exit status follow once all have answered.
//! `--json` prints one array in inventory order at the end, as before.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use futures::StreamExt;
use handover_common::proto::status::StatusReport;
use serde::Serialize;

use crate::config::{CoordinatorConfig, HostEntry};
use crate::fleet::{Fleet, calls};
use crate::output::{bytes, padded_line, short_duration};

/// One host's line of `status --json`.
#[derive(Debug, Serialize)]
pub(crate) struct HostStatus {
    /// Inventory name.
    pub name: String,
    /// Inventory roles.
    pub roles: Vec<String>,
    /// Whether the agent answered.
    pub reachable: bool,
    /// Why not, when it did not.
    pub error: Option<String>,
    /// What it said, when it did.
    pub report: Option<StatusReport>,
}

const HEADER: [&str; 11] = [
    "HOST",
    "ROLES",
    "REACHABLE",
    "VERSION",
    "UPTIME",
    "LOAD",
    "MEMORY",
    "DRAINED",
    "SESSIONS",
    "APACHE(B/I)",
    "RELEASE",
];

/// Asks the hosts, giving each `timeout`, and prints one row per host as it
/// answers; exit status 1 if any failed.
pub async fn run(
    config: &CoordinatorConfig,
    names: &[String],
    json: bool,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let hosts = config.select(names)?;
    let mut fleet = Fleet::new(config)?;
    fleet.set_host_deadline(timeout);
    let widths = column_widths(&hosts);
    let mut out = std::io::stdout().lock();
    if !json {
        out.write_all(padded_line(&HEADER.map(String::from), &widths).as_bytes())?;
    }
    let mut statuses: Vec<Option<HostStatus>> = hosts.iter().map(|_| None).collect();
    let mut answers = fleet.ask_each_as_answered(&hosts, |_| calls::status());
    while let Some((i, result)) = answers.next().await {
        let status = to_status(&hosts[i], result);
        if !json {
            out.write_all(padded_line(&row(&status), &widths).as_bytes())?;
            out.flush()?;
        }
        statuses[i] = Some(status);
    }
    drop(answers);
    fleet.close().await;
    let statuses: Vec<HostStatus> = statuses.into_iter().flatten().collect();
    let failed = statuses.iter().filter(|s| !s.reachable).count();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&statuses)?)?;
    } else {
        out.write_all(after_rows(&statuses).as_bytes())?;
    }
    Ok(if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn to_status(
    host: &HostEntry,
    result: Result<Box<StatusReport>, crate::fleet::FleetError>,
) -> HostStatus {
    let roles = host.roles.iter().map(|r| r.to_string()).collect();
    match result {
        Ok(report) => HostStatus {
            name: host.name.to_string(),
            roles,
            reachable: true,
            error: None,
            report: Some(*report),
        },
        Err(e) => HostStatus {
            name: host.name.to_string(),
            roles,
            reachable: false,
            error: Some(e.to_string()),
            report: None,
        },
    }
}

/// Column widths chosen before any host answers: the names and roles are known
/// from the inventory, the other columns get room for their usual values (a
/// longer value pushes its row's tail right rather than holding every row back).
fn column_widths(hosts: &[HostEntry]) -> Vec<usize> {
    let widest = |cells: &mut dyn Iterator<Item = usize>| cells.max().unwrap_or(0);
    let name = widest(&mut hosts.iter().map(|h| h.name.as_str().chars().count()));
    let roles = widest(&mut hosts.iter().map(|h| roles_cell(h).chars().count()));
    // VERSION 0.1.0, UPTIME "23h 59m", LOAD "0.00", MEMORY "1234M/7890M", DRAINED "no".
    let usual = [0, 0, 0, 7, 7, 4, 11, 0, 0, 0, 0];
    HEADER
        .iter()
        .zip(usual)
        .enumerate()
        .map(|(i, (h, u))| {
            let by_inventory = match i {
                0 => name,
                1 => roles,
                _ => 0,
            };
            h.chars().count().max(u).max(by_inventory)
        })
        .collect()
}

fn roles_cell(host: &HostEntry) -> String {
    if host.roles.is_empty() {
        "-".into()
    } else {
        let roles: Vec<String> = host.roles.iter().map(|r| r.to_string()).collect();
        roles.join(",")
    }
}

/// One host's row of the table.
fn row(s: &HostStatus) -> Vec<String> {
    let roles = if s.roles.is_empty() {
        "-".into()
    } else {
        s.roles.join(",")
    };
    match &s.report {
        Some(r) => [
            s.name.clone(),
            roles,
            "yes".into(),
            r.version.clone(),
            short_duration(r.uptime_secs),
            format!("{:.2}", r.host.load[0]),
            format!(
                "{}/{}",
                bytes(r.host.memory_used),
                bytes(r.host.memory_total)
            ),
        ]
        .into_iter()
        .chain(crate::cmd::drain::status_cells(r))
        .chain([release_cell(r)])
        .collect(),
        None => vec![s.name.clone(), roles, "NO".into()],
    }
}

/// What follows the rows: the load balancers' section, then why each
/// unreachable host is (in inventory order).
fn after_rows(statuses: &[HostStatus]) -> String {
    let mut out = crate::lb::render_status_section(
        statuses
            .iter()
            .filter_map(|s| Some((s.name.as_str(), s.report.as_ref()?.lb.as_ref()?))),
    );
    for s in statuses.iter().filter(|s| !s.reachable) {
        out.push_str(&format!(
            "error: {}: {}\n",
            s.name,
            s.error.as_deref().unwrap_or("?")
        ));
    }
    out
}

/// "v2 1a2b3c4" for the current release; "-" without `[deploy]` or a release.
fn release_cell(r: &StatusReport) -> String {
    match r.release.as_ref().and_then(|d| d.current.as_ref()) {
        Some(c) => format!("{} {}", c.rev, c.short_sha()),
        None => "-".into(),
    }
}
