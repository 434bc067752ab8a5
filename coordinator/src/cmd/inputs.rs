//! `handover inputs set | show | history | diff | export | import | revert`: the
//! deployment inputs, versioned (runbook steps 5–6). The decisions live in
//! `crate::inputs`; this module parses arguments and prints.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use handover_common::names::InputKey;
use serde::Serialize;

use crate::config::CoordinatorConfig;
use crate::inputs::{self, Change, Difference, Inputs, InputsVersion, Saved, Source, Version};
use crate::journal::{Journal, format_ms};
use crate::output::Table;

/// `handover inputs …`.
#[derive(Subcommand)]
pub enum InputsCommand {
    /// Set inputs (and --unset others): a new version, unless nothing changes.
    #[command(group = clap::ArgGroup::new("what").required(true).multiple(true).args(["assignments", "unset"]))]
    Set {
        /// KEY=VALUE pairs (split at the first '='; the value may hold anything but NUL).
        #[arg(value_name = "KEY=VALUE")]
        assignments: Vec<String>,
        /// Remove this key (repeatable).
        #[arg(long, value_name = "KEY")]
        unset: Vec<InputKey>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the inputs of the current version (or of --version N).
    Show {
        /// The version to show.
        #[arg(long)]
        version: Option<u64>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List every version: when, who, why, how many keys.
    History {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// What changed from version A to version B: added, removed, changed keys.
    Diff {
        /// The older version.
        a: u64,
        /// The newer version.
        b: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the current version (or --version N) as CSV: `key,value` lines.
    Export {
        /// CSV, the one export format (the runbook's "Download CSV").
        #[arg(long, required = true)]
        csv: bool,
        /// The version to export.
        #[arg(long)]
        version: Option<u64>,
    },
    /// Make the inputs exactly those of a CSV file (as `export --csv` writes it;
    /// `-` reads standard input): a new version, unless nothing changes.
    Import {
        /// The CSV file.
        #[arg(long = "csv", value_name = "FILE", required = true)]
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make a new version equal to version N.
    Revert {
        /// The version to go back to.
        version: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs an `inputs` command against the journal where the config keeps it.
pub fn run(config: &CoordinatorConfig, command: InputsCommand) -> anyhow::Result<ExitCode> {
    let journal = Journal::open(config)?;
    match command {
        InputsCommand::Set {
            assignments,
            unset,
            json,
        } => {
            let set = assignments
                .iter()
                .map(|a| inputs::parse_assignment(a))
                .collect::<Result<Vec<_>, _>>()?;
            let change = Change { set, unset };
            let saved =
                inputs::change(&journal, Source::Set, |current| Ok(change.apply(current)?))?;
            print_saved(&saved, json)
        }
        InputsCommand::Show { version, json } => show(&journal, version.map(Version), json),
        InputsCommand::History { json } => history(&journal, json),
        InputsCommand::Diff { a, b, json } => diff(&journal, Version(a), Version(b), json),
        InputsCommand::Export { csv: _, version } => export(&journal, version.map(Version)),
        InputsCommand::Import { file, json } => {
            let imported = read_csv(&file)?;
            let source = Source::Import {
                file: if file.as_os_str() == "-" {
                    "standard input".into()
                } else {
                    file.display().to_string()
                },
            };
            let saved = inputs::change(&journal, source, |_| Ok(imported.clone()))?;
            print_saved(&saved, json)
        }
        InputsCommand::Revert { version, json } => {
            print_saved(&inputs::revert(&journal, Version(version))?, json)
        }
    }
}

/// A CSV file (or standard input) as inputs, or an error naming the file, the
/// line and the fix.
fn read_csv(file: &PathBuf) -> anyhow::Result<Inputs> {
    let mut bytes = Vec::new();
    if file.as_os_str() == "-" {
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("cannot read the CSV from standard input")?;
    } else {
        bytes = std::fs::read(file)
            .with_context(|| format!("cannot read the CSV file {}", file.display()))?;
    }
    inputs::from_csv(&bytes)
        .with_context(|| format!("{} is not inputs CSV (nothing was stored)", file.display()))
}

/// One version as `--json` prints it.
#[derive(Serialize)]
struct VersionJson<'a> {
    version: Version,
    time: String,
    who: &'a str,
    source: String,
    inputs: &'a Inputs,
}

impl<'a> VersionJson<'a> {
    fn of(v: &'a InputsVersion) -> Self {
        VersionJson {
            version: v.version,
            time: format_ms(v.time_ms),
            who: &v.who,
            source: v.source.to_string(),
            inputs: &v.inputs,
        }
    }
}

fn print_saved(saved: &Saved, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        #[derive(Serialize)]
        struct Out<'a> {
            changed: bool,
            version: Option<Version>,
            changes: &'a [Difference],
        }
        let out = match saved {
            Saved::New(v, changes) => Out {
                changed: true,
                version: Some(v.version),
                changes,
            },
            Saved::Unchanged(version) => Out {
                changed: false,
                version: *version,
                changes: &[],
            },
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    match saved {
        Saved::New(v, changes) => {
            println!("inputs version {} saved ({})", v.version, v.source);
            for change in changes {
                println!("  {change}");
            }
        }
        Saved::Unchanged(Some(v)) => {
            println!("no change: version {v} already holds these inputs; no new version made")
        }
        Saved::Unchanged(None) => {
            println!("no change: no inputs are saved yet, and none are asked for; no version made")
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The version asked for, or the current one; None when none was ever saved.
fn pick(journal: &Journal, version: Option<Version>) -> anyhow::Result<Option<InputsVersion>> {
    match version {
        Some(n) => inputs::version(journal, n).map(Some),
        None => inputs::current(journal),
    }
}

fn show(journal: &Journal, version: Option<Version>, json: bool) -> anyhow::Result<ExitCode> {
    let Some(v) = pick(journal, version)? else {
        if json {
            println!("null");
        } else {
            println!("no inputs saved yet: `handover inputs set KEY=VALUE` makes version 1");
        }
        return Ok(ExitCode::SUCCESS);
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&VersionJson::of(&v))?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "inputs version {} ({}, {}, {})",
        v.version,
        format_ms(v.time_ms),
        v.who,
        v.source
    );
    let mut table = Table::new(&["KEY", "VALUE"]);
    for (key, value) in &v.inputs {
        // Quoted and escaped: a value is data, not terminal control.
        table.row(vec![key.to_string(), format!("{value:?}")]);
    }
    print!("{}", table.render());
    Ok(ExitCode::SUCCESS)
}

fn history(journal: &Journal, json: bool) -> anyhow::Result<ExitCode> {
    let all = inputs::history(journal)?;
    if json {
        let lines: Vec<VersionJson<'_>> = all.iter().map(VersionJson::of).collect();
        println!("{}", serde_json::to_string_pretty(&lines)?);
        return Ok(ExitCode::SUCCESS);
    }
    if all.is_empty() {
        println!("no inputs saved yet: `handover inputs set KEY=VALUE` makes version 1");
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&["VERSION", "TIME", "WHO", "KEYS", "SOURCE"]);
    for v in &all {
        table.row(vec![
            v.version.to_string(),
            format_ms(v.time_ms),
            v.who.clone(),
            v.inputs.len().to_string(),
            v.source.to_string(),
        ]);
    }
    print!("{}", table.render());
    Ok(ExitCode::SUCCESS)
}

fn diff(journal: &Journal, a: Version, b: Version, json: bool) -> anyhow::Result<ExitCode> {
    let all = inputs::history(journal)?;
    let get = |n: Version| inputs::find(&all, n).map(|v| &v.inputs);
    let changes = inputs::diff(get(a)?, get(b)?);
    if json {
        println!("{}", serde_json::to_string_pretty(&changes)?);
    } else if changes.is_empty() {
        println!("versions {a} and {b} hold the same inputs");
    } else {
        for change in &changes {
            println!("{change}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn export(journal: &Journal, version: Option<Version>) -> anyhow::Result<ExitCode> {
    let map = pick(journal, version)?
        .map(|v| v.inputs)
        .unwrap_or_default();
    let csv = inputs::to_csv(&map)?;
    let mut out = std::io::stdout().lock();
    out.write_all(&csv)
        .and_then(|()| out.flush())
        .context("cannot write the CSV to standard output")?;
    Ok(ExitCode::SUCCESS)
}
