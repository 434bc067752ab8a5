//! The surge demo: the runbook itself on a local fleet (see the binary's docs).

use std::time::Duration;

use handover_tests::monitor::UpReport;
use handover_tests::scenario::{AppHost, BACKEND};
use handover_tests::sessions::{PinnedSessions, SessionOptions, SessionReport};
use handover_tests::surge::{ProviderKind, SurgeFleet, SurgeOptions};
use handover_tests::traffic::{Traffic, TrafficOptions, TrafficReport};

use super::{interrupted, step};

/// Runs the demo; `Ok(true)` when nothing failed and no session was cut.
pub fn run() -> anyhow::Result<bool> {
    step(
        "starting a fleet on loopback: web-1..web-3 (Apache + agent, in HAProxy), \
         web-4..web-6 (standby), db-1 (sqlite + agent), lb-1 (HAProxy + agent)",
    );
    let fleet = SurgeFleet::start(SurgeOptions::default())?;
    interrupted()?;
    println!("    work dir:  {}", fleet.dir().display());
    println!("    HAProxy:   http://{}/", fleet.frontend());
    for (host, what) in fleet
        .apps
        .iter()
        .map(|h| (h, "in HAProxy"))
        .chain(fleet.standby.iter().map(|h| (h, "standby")))
    {
        println!(
            "    {}:     Apache on {}, release {}, {what}",
            host.name,
            host.apache.addr(),
            host.version()
        );
    }
    println!("    db-1:      {}", fleet.db.db.display());
    println!("    config:    {}", fleet.coordinator.config.display());

    let plan_text = fleet.surge_plan(ProviderKind::Standby, "v2", "");
    let plan = fleet.write_plan("plan.toml", &plan_text)?;
    step(&format!("the rollout plan ({})", plan.display()));
    print!("{plan_text}");
    step("handover plan plan.toml");
    let out = fleet
        .coordinator
        .run(&["plan", &plan.display().to_string()]);
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));

    step(
        "clients start: 3 keep-alive clients through HAProxy, and 3 long sessions \
         pinned to the old servers by HAProxy's persistence cookie",
    );
    let load = Traffic::start(
        fleet.frontend(),
        TrafficOptions {
            clients: 3,
            pause: Duration::from_millis(20),
            max_duration: Duration::from_secs(600),
            ..TrafficOptions::default()
        },
    )?;
    let sessions = PinnedSessions::start(
        fleet.frontend(),
        fleet.haproxy.admin_socket(),
        SessionOptions {
            sessions: 3,
            pause: Duration::from_millis(200),
            // Served for ~2 s more once their server drains, then the users leave.
            after_drain: 10,
            max_duration: Duration::from_secs(600),
            backend: BACKEND.to_owned(),
        },
    )?;
    std::thread::sleep(Duration::from_millis(500));

    interrupted()?;
    step("handover rollout plan.toml --yes");
    let status = fleet
        .coordinator
        .command(&["rollout", &plan.display().to_string(), "--yes"])
        .status()?;
    std::thread::sleep(Duration::from_millis(500));
    // Sessions still running were not cut; those that ended said why.
    let sessions = sessions.stop();
    let report = load.stop();
    let capacity = fleet.check_capacity();

    step("what the clients, the sessions and HAProxy saw");
    let seen = what_was_seen(&fleet, &report, &sessions, &capacity)?;
    let migrations = fleet.migrate_runs()?;
    let backups = fleet.backups()?.len();
    println!("    db-1: {backups} backup(s), migrate ran {migrations} time(s)");
    step("handover history");
    let out = fleet.coordinator.run(&["history"]);
    print!("{}", String::from_utf8_lossy(&out.stdout));

    let new_on_v2 = fleet.standby.iter().all(|h| h.version() == "v2");
    let old_out = fleet.apps.iter().all(|h| !seen.up.contains(&h.name));
    println!("\n{}", seen.summary());
    let good = status.success()
        && seen.nobody_noticed()
        && new_on_v2
        && old_out
        && migrations == 1
        && backups == 1;
    if good {
        step(
            "done: the standby hosts serve v2, the old servers are back in the pool, no request failed, no session was cut",
        );
    } else {
        step("the demo did not go as it should: see above");
    }
    Ok(good)
}

/// What the clients, the pinned sessions and HAProxy saw, printed as it is read.
pub struct Seen {
    ok: u64,
    failed: u64,
    cut: usize,
    capacity_kept: bool,
    /// The hosts HAProxy has UP at the end.
    pub up: Vec<String>,
}

impl Seen {
    /// The demo's last line.
    pub fn summary(&self) -> String {
        format!(
            "requests: {} ok, {} failed; sessions cut: {}",
            self.ok, self.failed, self.cut
        )
    }

    /// No request failed, no session was cut, capacity was kept at every sample.
    pub fn nobody_noticed(&self) -> bool {
        self.failed == 0 && self.cut == 0 && self.capacity_kept
    }
}

/// Prints each failure, each pinned session's story, the capacity and who is in
/// HAProxy and on which release now.
pub fn what_was_seen(
    fleet: &SurgeFleet,
    report: &TrafficReport,
    sessions: &[SessionReport],
    capacity: &anyhow::Result<UpReport>,
) -> anyhow::Result<Seen> {
    let session_ok: u64 = sessions.iter().map(|s| s.ok).sum();
    let session_failed: u64 = sessions.iter().map(|s| s.failed).sum();
    for f in &report.failures {
        println!("    failed: {f}");
    }
    for (i, s) in sessions.iter().enumerate() {
        println!(
            "    session {i}: pinned to {} ({}), {} requests served, {} while it drained{}",
            name_of(fleet, &s.server),
            s.cookie,
            s.ok,
            s.while_draining,
            s.cut
                .as_deref()
                .map(|c| format!(", CUT: {c}"))
                .unwrap_or_default()
        );
    }
    match capacity {
        Ok(up) => println!(
            "    fewest servers UP in {BACKEND} at any 100 ms sample: {} (3 needed, {} samples)",
            up.min_up.get(BACKEND).copied().unwrap_or(0),
            up.samples
        ),
        Err(e) => println!("    capacity: {e:#}"),
    }
    let up: Vec<String> = fleet
        .up_addresses()?
        .iter()
        .map(|a| name_of(fleet, a))
        .collect();
    println!("    in HAProxy now: {}", up.join(", "));
    for h in fleet.apps.iter().chain(&fleet.standby) {
        println!("    {} runs {}", h.name, h.version());
    }
    Ok(Seen {
        ok: report.ok + session_ok,
        failed: report.failed + session_failed,
        cut: sessions.iter().filter(|s| s.cut.is_some()).count(),
        capacity_kept: capacity.is_ok(),
        up,
    })
}

/// The host whose Apache is at `addr` (as HAProxy writes it), else `addr`.
fn name_of(fleet: &SurgeFleet, addr: &str) -> String {
    fleet
        .apps
        .iter()
        .chain(&fleet.standby)
        .find(|h: &&AppHost| h.apache.addr().to_string() == addr)
        .map(|h| h.name.clone())
        .unwrap_or_else(|| addr.to_owned())
}
