//! `handover journal export | import`: moves a journal between stores (redb in a
//! state_dir, etcd), e.g. to start keeping it on etcd, or to resume on another
//! backend a rollout that began on this one.
//!
//! The format is JSON lines, versioned by its first line:
//! `{"handover_journal":1}`, then one line per record:
//! `{"collection":"rollouts","key":"r-...","record":{...}}`. Records are the
//! journal's own JSON, carried verbatim, so any collection moves (the rollouts,
//! their steps, and whatever other collections a version keeps).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;
use serde::{Deserialize, Serialize};

use crate::config::CoordinatorConfig;
use crate::journal::{INPUTS, Journal, ROLLOUTS, STANDBY, STEPS};
use crate::state::Holder;

/// The export format this version writes and reads.
pub const EXPORT_VERSION: u32 = 1;

/// The collections an export carries, in the order an import writes them.
const COLLECTIONS: [&str; 4] = [ROLLOUTS, STEPS, INPUTS, STANDBY];

/// `handover journal ...`
#[derive(Debug, Subcommand)]
pub enum JournalCommand {
    /// Write every journal record as versioned JSON lines (to stdout, or --out FILE).
    Export {
        /// Write here instead of stdout (refused if it exists).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Read an export into this config's journal (under its deploy lock).
    Import {
        /// The export file.
        file: PathBuf,
    },
}

#[derive(Serialize, Deserialize)]
struct Header {
    handover_journal: u32,
}

#[derive(Serialize, Deserialize)]
struct Line {
    collection: String,
    key: String,
    record: serde_json::Value,
}

/// Runs a `journal` subcommand.
pub async fn run(config: &CoordinatorConfig, command: JournalCommand) -> anyhow::Result<ExitCode> {
    let journal = Journal::open(config)?;
    match command {
        JournalCommand::Export { out } => {
            let count = match &out {
                Some(path) => {
                    let file = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(path)
                        .with_context(|| {
                            format!("cannot create {}: it must not exist yet", path.display())
                        })?;
                    let mut w = std::io::BufWriter::new(file);
                    let n = export(&journal, &mut w)?;
                    w.flush()?;
                    n
                }
                None => export(&journal, &mut std::io::stdout().lock())?,
            };
            eprintln!(
                "handover: exported {count} records from the {}",
                journal.describe()
            );
        }
        JournalCommand::Import { file } => {
            let count = import_file(&journal, &file)?;
            eprintln!(
                "handover: imported {count} records into the {}",
                journal.describe()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes every record of `journal`; returns how many.
pub fn export(journal: &Journal, w: &mut impl Write) -> anyhow::Result<usize> {
    serde_json::to_writer(
        &mut *w,
        &Header {
            handover_journal: EXPORT_VERSION,
        },
    )?;
    writeln!(w)?;
    let mut count = 0;
    for collection in COLLECTIONS {
        for (key, bytes) in journal.records(collection, "")? {
            let record = serde_json::from_slice(&bytes).with_context(|| {
                format!("journal record {collection}/{key} is not JSON: it is damaged")
            })?;
            let line = Line {
                collection: collection.to_owned(),
                key,
                record,
            };
            serde_json::to_writer(&mut *w, &line)?;
            writeln!(w)?;
            count += 1;
        }
    }
    Ok(count)
}

/// Reads `path` whole and checks it before writing any record.
fn import_file(journal: &Journal, path: &Path) -> anyhow::Result<usize> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot read the export {}", path.display()))?;
    let lines = parse(std::io::BufReader::new(file))
        .with_context(|| format!("{} is not a handover journal export", path.display()))?;
    let holder = Holder::this("journal-import", &format!("import of {}", path.display()));
    let _lock = journal.try_lock(&holder)?.map_err(anyhow::Error::new)?;
    for line in &lines {
        if journal
            .records(&line.collection, &line.key)?
            .iter()
            .any(|(k, _)| *k == line.key)
        {
            bail!(
                "{}/{} is already in the {}: nothing more was imported (import into an empty journal, or remove that rollout's records)",
                line.collection,
                line.key,
                journal.describe()
            );
        }
    }
    for line in &lines {
        journal.write(
            &line.collection,
            &line.key,
            &serde_json::to_vec(&line.record)?,
        )?;
    }
    Ok(lines.len())
}

/// The records of an export, every line checked.
fn parse(r: impl BufRead) -> anyhow::Result<Vec<Line>> {
    let mut lines = r.lines();
    let first = lines
        .next()
        .ok_or_else(|| anyhow::anyhow!("it is empty"))??;
    let header: Header =
        serde_json::from_str(&first).context("line 1 is not {\"handover_journal\":VERSION}")?;
    if header.handover_journal != EXPORT_VERSION {
        bail!(
            "it is export format {}; this version reads format {EXPORT_VERSION}: import it with the version that exported it",
            header.handover_journal
        );
    }
    let mut out = Vec::new();
    for (n, line) in lines.enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed: Line = serde_json::from_str(&line)
            .with_context(|| format!("line {} is not a journal record", n + 2))?;
        if !COLLECTIONS.contains(&parsed.collection.as_str()) {
            bail!(
                "line {}: collection {:?} is not one this version keeps ({})",
                n + 2,
                parsed.collection,
                COLLECTIONS.join(", ")
            );
        }
        if parsed.key.is_empty() || parsed.key.contains("..") {
            bail!("line {}: key {:?} is not a journal key", n + 2, parsed.key);
        }
        out.push(parsed);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::StepOutcome;
    use crate::rollout::steps::Phase;

    #[test]
    fn an_export_imports_into_an_empty_journal_and_reads_the_same() {
        let a = tempfile::tempdir().expect("tempdir");
        let from = Journal::new(a.path());
        let record = serde_json::json!({"format": 2, "id": "r-1"});
        from.write(ROLLOUTS, "r-1", &serde_json::to_vec(&record).expect("json"))
            .expect("write");
        from.step_started("r-1", Phase::Forward, 0, "drain web-1")
            .expect("start");
        from.step_ended(
            "r-1",
            Phase::Forward,
            0,
            StepOutcome::Ok,
            Default::default(),
        )
        .expect("end");
        let mut text = Vec::new();
        assert_eq!(export(&from, &mut text).expect("export"), 2);
        let b = tempfile::tempdir().expect("tempdir");
        let file = b.path().join("export.jsonl");
        std::fs::write(&file, &text).expect("write export");
        let to = Journal::new(&b.path().join("state"));
        assert_eq!(import_file(&to, &file).expect("import"), 2);
        let steps = to.steps("r-1").expect("steps");
        assert!(to.step_done(&steps, Phase::Forward, 0));
        // Twice is refused, naming the record, and writes nothing.
        let err = format!("{:#}", import_file(&to, &file).expect_err("twice"));
        assert!(err.contains("rollouts/r-1 is already"), "{err}");
    }

    #[test]
    fn a_file_of_another_format_or_shape_is_refused_by_line() {
        let cases = [
            ("", "empty"),
            ("{\"handover_journal\":9}\n", "format 9"),
            ("{\"x\":1}\n", "line 1"),
            (
                "{\"handover_journal\":1}\n{\"collection\":\"rollouts\"}\n",
                "line 2",
            ),
            (
                "{\"handover_journal\":1}\n{\"collection\":\"secrets\",\"key\":\"k\",\"record\":{}}\n",
                "\"secrets\" is not one",
            ),
        ];
        for (text, says) in cases {
            let err = format!("{:#}", parse(text.as_bytes()).err().expect(text));
            assert!(err.contains(says), "{text:?} should say {says}: {err}");
        }
    }
}
