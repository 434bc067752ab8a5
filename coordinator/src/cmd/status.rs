//! `handover status`: ask every agent (or those named) how its host is.

use std::process::ExitCode;

use handover_common::proto::status::StatusReport;
use serde::Serialize;

use crate::config::{CoordinatorConfig, HostEntry};
use crate::fleet::{Fleet, calls};
use crate::output::{Table, bytes, short_duration};

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

/// Asks the hosts and prints one row per host; exit status 1 if any failed.
pub async fn run(
    config: &CoordinatorConfig,
    names: &[String],
    json: bool,
) -> anyhow::Result<ExitCode> {
    let hosts = config.select(names)?;
    let fleet = Fleet::new(config)?;
    let results = fleet.ask_each(&hosts, |_| calls::status()).await;
    fleet.close().await;
    let statuses: Vec<HostStatus> = results
        .into_iter()
        .map(|(host, result)| to_status(&host, result))
        .collect();
    let failed = statuses.iter().filter(|s| !s.reachable).count();
    if json {
        println!("{}", serde_json::to_string_pretty(&statuses)?);
    } else {
        print!("{}", render(&statuses));
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

fn render(statuses: &[HostStatus]) -> String {
    let mut table = Table::new(&[
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
    ]);
    let mut errors = Vec::new();
    for s in statuses {
        let roles = if s.roles.is_empty() {
            "-".into()
        } else {
            s.roles.join(",")
        };
        match &s.report {
            Some(r) => table.row(
                [
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
            ),
            None => {
                table.row(vec![s.name.clone(), roles, "NO".into()]);
                errors.push(format!("{}: {}", s.name, s.error.as_deref().unwrap_or("?")));
            }
        }
    }
    let mut out = table.render();
    out.push_str(&crate::lb::render_status_section(
        statuses
            .iter()
            .filter_map(|s| Some((s.name.as_str(), s.report.as_ref()?.lb.as_ref()?))),
    ));
    for e in errors {
        out.push_str(&format!("error: {e}\n"));
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
