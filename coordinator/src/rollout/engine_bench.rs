//! A rollout's journal, plan and scripted fleet, for the engine's unit tests (in-place
//! and surge): the runner is built as `rollout` or `resume` builds it, and runs with
//! tokio's paused clock.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::*;
use crate::rollout::fake::Fake;

pub(super) struct Bench {
    pub(super) dir: tempfile::TempDir,
    pub(super) plan: Plan,
    pub(super) fake: Arc<Fake>,
    pub(super) id: String,
}

impl Bench {
    /// A journaled, not yet started rollout of `plan` against a fleet scripted from it.
    pub(super) fn with_plan(plan: Plan) -> Self {
        let fake = Arc::new(Fake::new(&plan));
        // The journal syncs every write: in memory when the host offers it.
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .expect("tempdir");
        let record = new_record(std::path::Path::new("plan.toml"), String::new());
        let id = record.id.clone();
        Journal::new(dir.path())
            .save_rollout(&record)
            .expect("journal");
        Bench {
            dir,
            plan,
            fake,
            id,
        }
    }

    pub(super) fn journal(&self) -> Journal {
        Journal::new(self.dir.path())
    }

    /// The rollout's record as journaled now.
    pub(super) fn record(&self) -> RolloutRecord {
        self.journal()
            .rollout(&self.id)
            .expect("read")
            .expect("record")
    }

    /// A runner for the journaled record, as `rollout` or `resume` makes it.
    pub(super) fn runner(&self, resume: bool) -> Runner {
        let mut record = self.record();
        if resume {
            record = to_resume(record).expect("resumable");
        }
        Runner {
            journal: self.journal(),
            plan: self.plan.clone(),
            record,
            ui: Arc::new(Ui::new(true)),
            actions: self.fake.clone(),
        }
    }

    /// Runs until the end, or until a scripted crash (then `None`).
    pub(super) async fn run(&self, resume: bool) -> Option<anyhow::Result<RolloutState>> {
        let (_itx, irx) = watch::channel(0u32);
        let (_ltx, lrx) = watch::channel(None);
        let mut runner = self.runner(resume);
        tokio::time::timeout(Duration::from_secs(24 * 3600), runner.run_phases(irx, lrx))
            .await
            .ok()
    }
}
