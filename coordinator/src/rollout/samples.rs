//! What a running rollout journals for the people watching it (`handover web`),
//! once a second: the fewest servers UP in any backend of any load balancer, and
//! for every host whose sessions are being waited out, what the drain wait knows
//! (who holds it, its sessions, when it should be idle).
//!
//! The page is a separate process that may be opened at any time, so it reads
//! these from the journal: its charts start where the rollout started, and the
//! drain facts are the coordinator's own, not guessed in the browser. A sample
//! that cannot be read or written is skipped: watching never stops a rollout.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use handover_common::proto::lb::{LbReply, LbRequest, ServerStats};
use serde::{Deserialize, Serialize};

use crate::config::HostEntry;
use crate::drain_wait::{Hold, HostProgress};
use crate::fleet::{Fleet, calls};
use crate::journal::{FORMAT, Journal, now_ms};

/// The journal collection of samples, keyed `ID/TTTTTTTTTTTTTTTT` (ms, padded so
/// key order is time order).
pub const SAMPLES: &str = "samples";
/// How often a sample is taken.
pub const EVERY: Duration = Duration::from_secs(1);

/// One moment of a rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// The record's format.
    pub format: u32,
    /// When (ms since epoch).
    pub t_ms: u64,
    /// The fewest servers UP in any backend of any LB (None: no LB answered).
    pub up: Option<usize>,
    /// Hosts whose sessions are being waited out, by name.
    pub drains: Vec<DrainFacts>,
}

/// What the drain wait knows of one host (runbook step 13).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrainFacts {
    /// The host.
    pub host: String,
    /// Sessions that hold it, as its agent counts them (not the LBs' pooled
    /// connections); None before its agent's first sample.
    pub sessions: Option<u32>,
    /// Who holds it, short: "ADDR (N connections)", "LB BACKEND/SERVER".
    pub holders: Vec<String>,
    /// What holds it, as the terminal says it.
    pub holds: Vec<String>,
    /// When it should be idle, from now: the quiet period left once nothing
    /// holds it, plus the time its sessions should take at the rate they fell
    /// (None while they do not fall).
    pub idle_in_ms: Option<u64>,
    /// Since the wait began.
    pub elapsed_ms: u64,
    /// The wait found it idle (the last sample of this host's wait).
    #[serde(default)]
    pub idle: bool,
}

impl DrainFacts {
    /// The facts of one progress report of the drain wait.
    pub fn of(p: &HostProgress<'_>) -> Self {
        let mut holders = Vec::new();
        for hold in p.holds {
            match hold {
                Hold::Direct { holders: who, .. } => {
                    holders.extend(who.iter().map(ToString::to_string));
                }
                Hold::Arriving(s) | Hold::InFlight(s) => {
                    holders.push(format!("{} {}/{}", s.lb, s.backend, s.server));
                }
                Hold::LbUnknown { lb, .. } => holders.push(format!("{lb} (unreadable)")),
                Hold::NotYetQuiet { .. } => {}
            }
        }
        let quiet_left = p.quiet.saturating_sub(p.quiet_for);
        let only_quiet = p
            .holds
            .iter()
            .all(|h| matches!(h, Hold::NotYetQuiet { .. }));
        let idle_in = if only_quiet {
            Some(quiet_left)
        } else {
            p.eta.map(|eta| eta + p.quiet)
        };
        DrainFacts {
            host: p.host.to_string(),
            sessions: p.agent.map(|a| a.blocking),
            holders,
            holds: p.holds.iter().map(ToString::to_string).collect(),
            idle_in_ms: idle_in.map(millis),
            elapsed_ms: millis(p.elapsed),
            idle: false,
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The drain facts of the hosts being waited on now: the drain wait writes,
/// the sampler reads. A host whose wait ended is in the next sample once more
/// (idle, or as it was when the wait gave up), then gone.
#[derive(Debug, Default)]
pub struct Board {
    drains: Mutex<BTreeMap<String, (DrainFacts, bool)>>,
}

impl Board {
    /// The latest facts of a host being waited on.
    pub fn waiting(&self, facts: DrainFacts) {
        if let Ok(mut d) = self.drains.lock() {
            d.insert(facts.host.clone(), (facts, false));
        }
    }

    /// The wait for `host` is over; `idle` when it found the host idle.
    pub fn ended(&self, host: &str, idle: bool) {
        if let Ok(mut d) = self.drains.lock()
            && let Some((facts, ended)) = d.get_mut(host)
        {
            *ended = true;
            if idle {
                facts.idle = true;
                facts.idle_in_ms = Some(0);
                facts.sessions = Some(0);
                facts.holders.clear();
                facts.holds.clear();
            }
        }
    }

    /// Every host being waited on (and those whose wait just ended, once).
    pub fn take(&self) -> Vec<DrainFacts> {
        let Ok(mut d) = self.drains.lock() else {
            return Vec::new();
        };
        let out = d.values().map(|(facts, _)| facts.clone()).collect();
        d.retain(|_, (_, ended)| !*ended);
        out
    }
}

/// The fewest servers UP in any backend of any LB that answered (settled UP
/// only: not `UP 1/3`, not NOLB).
pub fn fewest_up(lbs: &[(String, Vec<ServerStats>)]) -> Option<usize> {
    let mut per_backend: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for (lb, servers) in lbs {
        for s in servers {
            *per_backend.entry((lb, &s.backend)).or_default() +=
                usize::from(s.status.trim() == "UP");
        }
    }
    per_backend.values().copied().min()
}

/// Journals a sample every [`EVERY`] until dropped: it never ends by itself.
pub async fn record(
    fleet: &Fleet,
    lbs: &[HostEntry],
    journal: &Journal,
    rollout: &str,
    board: &Board,
) -> std::convert::Infallible {
    loop {
        sample_once(fleet, lbs, journal, rollout, board).await;
        tokio::time::sleep(EVERY).await;
    }
}

/// Journals one sample now (also once more when the rollout ends, so its
/// charts end where it left the fleet).
pub async fn sample_once(
    fleet: &Fleet,
    lbs: &[HostEntry],
    journal: &Journal,
    rollout: &str,
    board: &Board,
) {
    let up = if lbs.is_empty() {
        None
    } else {
        fewest_up(&read_lbs(fleet, lbs).await)
    };
    let sample = Sample {
        format: FORMAT,
        t_ms: now_ms(),
        up,
        drains: board.take(),
    };
    let journal = journal.clone();
    let key = format!("{rollout}/{:016}", sample.t_ms);
    let written = tokio::task::spawn_blocking(move || {
        let bytes = serde_json::to_vec(&sample)?;
        journal.write(SAMPLES, &key, &bytes)
    })
    .await;
    if let Ok(Err(e)) = written {
        tracing::debug!("a sample for handover web was not journaled: {e:#}");
    }
}

async fn read_lbs(fleet: &Fleet, lbs: &[HostEntry]) -> Vec<(String, Vec<ServerStats>)> {
    fleet
        .ask_each(lbs, |_| calls::lb(LbRequest::Stats { servers: vec![] }))
        .await
        .into_iter()
        .filter_map(|(lb, reply)| match reply {
            Ok(LbReply::Servers(servers)) => Some((lb.name.to_string(), servers)),
            _ => None,
        })
        .collect()
}

/// The samples of `rollout`, oldest first (unreadable ones skipped).
pub fn read(journal: &Journal, rollout: &str) -> anyhow::Result<Vec<Sample>> {
    Ok(journal
        .records(SAMPLES, &format!("{rollout}/"))?
        .into_iter()
        .filter_map(|(_, bytes)| serde_json::from_slice(&bytes).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(backend: &str, status: &str) -> ServerStats {
        serde_json::from_value(serde_json::json!({
            "backend": backend, "host": null, "haproxy_name": "s", "kind": "other",
            "addr": "", "status": status, "scur": 0, "qcur": 0, "stot": 0,
            "check_status": "", "hrsp_5xx": 0
        }))
        .expect("server stats")
    }

    /// The weakest backend of any LB counts, and only settled UP.
    #[test]
    fn the_weakest_backend_is_the_figure() {
        let lbs = vec![
            (
                "lb-1".to_owned(),
                vec![server("a", "UP"), server("a", "UP"), server("b", "UP")],
            ),
            (
                "lb-2".to_owned(),
                vec![
                    server("a", "UP"),
                    server("a", "NOLB"),
                    server("a", "UP 1/3"),
                ],
            ),
        ];
        assert_eq!(fewest_up(&lbs), Some(1));
        assert_eq!(fewest_up(&[]), None);
    }

    fn facts(host: &str) -> DrainFacts {
        DrainFacts {
            host: host.into(),
            sessions: Some(2),
            holders: vec!["127.0.0.1 (2 connections)".into()],
            holds: vec!["2 direct connections".into()],
            idle_in_ms: None,
            elapsed_ms: 100,
            idle: false,
        }
    }

    /// A host whose wait ended is sampled once more, idle (nothing holds it,
    /// nothing left to wait) or as it stood when the wait gave up; then gone.
    #[test]
    fn an_ended_wait_is_sampled_once_more() {
        let board = Board::default();
        board.waiting(facts("web-1"));
        board.waiting(facts("web-2"));
        assert_eq!(board.take().len(), 2);
        board.ended("web-1", true);
        board.ended("web-2", false);
        let last = board.take();
        assert!(last[0].idle && last[0].holders.is_empty() && last[0].idle_in_ms == Some(0));
        assert!(!last[1].idle && last[1].holders.len() == 1);
        assert!(board.take().is_empty());
    }
}
