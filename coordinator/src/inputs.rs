//! Deployment inputs, versioned (runbook steps 5–6: "save the deployment inputs
//! before changing them", then set the new ones).
//!
//! The inputs are a map of [`InputKey`] to a value. Every change is a new numbered
//! version (1, 2, …) in the journal with its time, who made it and why (`set`,
//! `import FILE`, `revert 3`, `plan FILE for rollout ID`) and the *whole* map, so
//! any version can be shown, diffed, exported as CSV or reverted to without
//! replaying others. A change that changes nothing makes no version.
//!
//! A rollout records its own version before it starts ([`record_for_rollout`]):
//! the plan's `[inputs]` override the keys of the current version, other keys are
//! kept. That version is made even when nothing changed, so `inputs history` tells
//! which inputs every rollout ran with, and `resume` finds the same version again
//! by the rollout's id instead of reading inputs that were changed since.
//!
//! Inputs reach hooks and providers as the environment variables
//! `HANDOVER_INPUT_<KEY>` ([`InputKey::env_name`]), values passed as data, never through a
//! shell. Values are any UTF-8 text except NUL (no environment variable can carry
//! it), at most [`MAX_VALUE_BYTES`] bytes.
//!
//! The pure part (what a change makes of a map, diffs, CSV) is separate from the
//! store, which only reads and appends serialized records through [`Journal`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use handover_common::names::InputKey;
use serde::{Deserialize, Serialize};

use crate::journal::{Journal, now_ms};

/// The inputs: key → value, in key order.
pub type Inputs = BTreeMap<InputKey, String>;

/// The shape of the inputs records this version writes; a record of a newer
/// format is refused by name rather than misread.
pub const FORMAT: u32 = 1;

/// The longest value kept, in bytes: inputs are settings, not files (a hook that
/// needs a big blob reads it from a path given as an input).
pub const MAX_VALUE_BYTES: usize = 8192;

/// The most keys one version holds.
pub const MAX_KEYS: usize = 1000;

/// A version number: 1 for the first inputs ever saved, then 2, 3, …
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Version(pub u64);

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Why a version was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Source {
    /// `handover inputs set`.
    Set,
    /// `handover inputs import --csv FILE`.
    Import {
        /// The file, as given.
        file: String,
    },
    /// `handover inputs revert N`.
    Revert {
        /// The version whose map this one repeats.
        to: Version,
    },
    /// A rollout's plan, before the rollout started.
    Plan {
        /// The plan file.
        plan: PathBuf,
        /// The rollout's id.
        rollout: String,
    },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Set => f.write_str("set"),
            Source::Import { file } => write!(f, "import {file}"),
            Source::Revert { to } => write!(f, "revert {to}"),
            Source::Plan { plan, rollout } => {
                write!(f, "plan {} for rollout {rollout}", plan.display())
            }
        }
    }
}

/// One version as journaled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputsVersion {
    /// The record's format ([`FORMAT`]).
    pub format: u32,
    /// Its number.
    pub version: Version,
    /// When it was made (ms since epoch).
    pub time_ms: u64,
    /// Who made it: `user@bastion`.
    pub who: String,
    /// Why.
    pub source: Source,
    /// The whole map.
    pub inputs: Inputs,
}

/// Input the operator (or a plan, or a CSV file) gave that cannot be stored.
/// Each message names the key (or line) and the fix; nothing was stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadInput {
    /// Not `KEY=VALUE`.
    #[error("{arg:?} is not KEY=VALUE: write it like APP_ENV=production")]
    NotAssignment {
        /// The argument as given.
        arg: String,
    },
    /// The key is not an environment name.
    #[error(transparent)]
    Key(#[from] handover_common::names::InvalidName),
    /// The value holds a NUL.
    #[error(
        "the value of {key} contains a NUL byte, which no environment variable can carry: remove it"
    )]
    Nul {
        /// The key.
        key: InputKey,
    },
    /// The value is too long.
    #[error(
        "the value of {key} is {len} bytes, more than the {MAX_VALUE_BYTES} an input may hold: shorten it, or put the data in a file and give its path as the input"
    )]
    TooLong {
        /// The key.
        key: InputKey,
        /// Its length in bytes.
        len: usize,
    },
    /// Too many keys.
    #[error("{count} inputs is more than the {MAX_KEYS} a version may hold: unset some")]
    TooMany {
        /// How many there would be.
        count: usize,
    },
    /// Set twice in one change, to different values.
    #[error("{key} is given twice with different values: give it once")]
    Twice {
        /// The key.
        key: InputKey,
    },
    /// Set and unset in one change.
    #[error("{key} is both set and unset: give one of the two")]
    SetAndUnset {
        /// The key.
        key: InputKey,
    },
    /// Unset but not set.
    #[error("{key} is not set, so it cannot be unset: `handover inputs show` lists the keys")]
    NotSet {
        /// The key.
        key: InputKey,
    },
    /// A CSV file that is not `key,value` lines.
    #[error("{0}")]
    Csv(String),
}

/// Checks a value: any UTF-8 text (the type says so) but NUL, at most
/// [`MAX_VALUE_BYTES`] bytes.
pub fn check_value(key: &InputKey, value: &str) -> Result<(), BadInput> {
    if value.contains('\0') {
        return Err(BadInput::Nul { key: key.clone() });
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(BadInput::TooLong {
            key: key.clone(),
            len: value.len(),
        });
    }
    Ok(())
}

/// Checks every value of a map and its size.
pub fn check_inputs(inputs: &Inputs) -> Result<(), BadInput> {
    if inputs.len() > MAX_KEYS {
        return Err(BadInput::TooMany {
            count: inputs.len(),
        });
    }
    inputs.iter().try_for_each(|(k, v)| check_value(k, v))
}

/// `KEY=VALUE` (split at the first `=`: a value may hold more) as typed at the
/// command line.
pub fn parse_assignment(arg: &str) -> Result<(InputKey, String), BadInput> {
    let (key, value) = arg.split_once('=').ok_or_else(|| BadInput::NotAssignment {
        arg: arg.chars().take(80).collect(),
    })?;
    let key = InputKey::new(key)?;
    check_value(&key, value)?;
    Ok((key, value.to_owned()))
}

/// What `inputs set` asks of the current map: these keys set, those removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    /// Keys to set, in the order given.
    pub set: Vec<(InputKey, String)>,
    /// Keys to remove.
    pub unset: Vec<InputKey>,
}

impl Change {
    /// The map `current` becomes, or why the change is refused (then nothing is
    /// stored). Unsetting a key that is not set is refused: it is almost always a
    /// typo, and a silent no-op would hide it.
    pub fn apply(&self, current: &Inputs) -> Result<Inputs, BadInput> {
        let mut next = current.clone();
        let mut given: BTreeMap<&InputKey, &str> = BTreeMap::new();
        for (key, value) in &self.set {
            check_value(key, value)?;
            if given.insert(key, value).is_some_and(|v| v != value) {
                return Err(BadInput::Twice { key: key.clone() });
            }
            next.insert(key.clone(), value.clone());
        }
        for key in &self.unset {
            if given.contains_key(key) {
                return Err(BadInput::SetAndUnset { key: key.clone() });
            }
            if !current.contains_key(key) {
                return Err(BadInput::NotSet { key: key.clone() });
            }
            next.remove(key);
        }
        check_inputs(&next)?;
        Ok(next)
    }
}

/// The plan's `[inputs]` over the current map: the plan's keys win, others stay.
pub fn overlay(current: &Inputs, plan: &Inputs) -> Inputs {
    let mut out = current.clone();
    out.extend(plan.iter().map(|(k, v)| (k.clone(), v.clone())));
    out
}

/// One key's difference between two versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "change", rename_all = "kebab-case")]
pub enum Difference {
    /// In the second only.
    Added {
        /// The key.
        key: InputKey,
        /// Its value.
        value: String,
    },
    /// In the first only.
    Removed {
        /// The key.
        key: InputKey,
        /// Its value.
        value: String,
    },
    /// In both, with other values.
    Changed {
        /// The key.
        key: InputKey,
        /// Its value in the first.
        from: String,
        /// Its value in the second.
        to: String,
    },
}

impl fmt::Display for Difference {
    /// One line; values quoted and escaped (`{:?}`), so a value holding a newline
    /// or a terminal escape prints as data.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Difference::Added { key, value } => write!(f, "+ {key} = {value:?}"),
            Difference::Removed { key, value } => write!(f, "- {key} = {value:?}"),
            Difference::Changed { key, from, to } => write!(f, "~ {key}: {from:?} -> {to:?}"),
        }
    }
}

/// What changes from `a` to `b`, in key order.
pub fn diff(a: &Inputs, b: &Inputs) -> Vec<Difference> {
    let keys: BTreeSet<&InputKey> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter_map(|key| match (a.get(key), b.get(key)) {
            (None, Some(value)) => Some(Difference::Added {
                key: key.clone(),
                value: value.clone(),
            }),
            (Some(value), None) => Some(Difference::Removed {
                key: key.clone(),
                value: value.clone(),
            }),
            (Some(from), Some(to)) if from != to => Some(Difference::Changed {
                key: key.clone(),
                from: from.clone(),
                to: to.clone(),
            }),
            _ => None,
        })
        .collect()
}

/// The CSV header: the runbook's "Download CSV" columns.
const CSV_HEADER: [&str; 2] = ["key", "value"];

/// The inputs as CSV: a `key,value` header, then one record a key, quoted where
/// a value needs it (commas, quotes, line breaks), lines ending in `\n`.
pub fn to_csv(inputs: &Inputs) -> anyhow::Result<Vec<u8>> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(CSV_HEADER)?;
    for (key, value) in inputs {
        writer.write_record([key.as_str(), value.as_str()])?;
    }
    writer
        .into_inner()
        .map_err(|e| anyhow::anyhow!("cannot write CSV: {}", e.error()))
}

/// Inputs from CSV as [`to_csv`] writes it (and spreadsheets save it: a UTF-8 BOM
/// and CRLF line ends are fine). Every key once; the file is the whole map.
pub fn from_csv(bytes: &[u8]) -> Result<Inputs, BadInput> {
    let bad = |line: u64, why: String| BadInput::Csv(format!("line {line}: {why}"));
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(bytes);
    let mut inputs = Inputs::new();
    let mut record = csv::ByteRecord::new();
    let mut first = true;
    loop {
        let more = reader.read_byte_record(&mut record).map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            match e.kind() {
                csv::ErrorKind::UnequalLengths { len, .. } => bad(
                    line,
                    format!("{len} field(s); each line is key,value: put a value that holds a comma, quote or line break in double quotes"),
                ),
                _ => bad(line, e.to_string()),
            }
        })?;
        if !more {
            break;
        }
        let line = record.position().map_or(0, |p| p.line());
        let fields: Vec<&str> = record
            .iter()
            .map(std::str::from_utf8)
            .collect::<Result<_, _>>()
            .map_err(|_| bad(line, "not UTF-8 text: save the file as UTF-8".into()))?;
        if std::mem::take(&mut first) {
            let header: Vec<&str> = fields
                .iter()
                .map(|f| f.trim_start_matches('\u{feff}'))
                .collect();
            if header != CSV_HEADER {
                return Err(bad(
                    line,
                    format!(
                        "the header is {header:?}; the first line must be key,value (as `handover inputs export --csv` writes it)"
                    ),
                ));
            }
            continue;
        }
        let [key, value] = fields.as_slice() else {
            return Err(bad(
                line,
                format!("{} field(s); each line is key,value", fields.len()),
            ));
        };
        let key = InputKey::new(*key).map_err(|e| bad(line, e.to_string()))?;
        check_value(&key, value).map_err(|e| bad(line, e.to_string()))?;
        if inputs.insert(key.clone(), (*value).to_owned()).is_some() {
            return Err(bad(
                line,
                format!("{key} is listed twice: keep one line per key"),
            ));
        }
    }
    check_inputs(&inputs)?;
    Ok(inputs)
}

// --- the store -------------------------------------------------------------

/// Who makes a change: `user@bastion`.
pub fn who() -> String {
    crate::rollout::lease::who()
}

fn decode(number: u64, bytes: &[u8]) -> anyhow::Result<InputsVersion> {
    #[derive(Deserialize)]
    struct Format {
        format: u32,
    }
    let format = serde_json::from_slice::<Format>(bytes)
        .with_context(|| format!("inputs version {number} in the journal is damaged"))?
        .format;
    if format > FORMAT {
        bail!(
            "inputs version {number} in the journal has format {format}, written by a newer handover version; this one reads formats up to {FORMAT}: use the version that wrote it"
        );
    }
    serde_json::from_slice(bytes)
        .with_context(|| format!("inputs version {number} in the journal cannot be read"))
}

fn decode_all(records: &[(u64, Vec<u8>)]) -> anyhow::Result<Vec<InputsVersion>> {
    records.iter().map(|(n, b)| decode(*n, b)).collect()
}

/// Every version, oldest first.
pub fn history(journal: &Journal) -> anyhow::Result<Vec<InputsVersion>> {
    decode_all(&journal.input_records()?)
}

/// The newest version, if any was ever saved.
pub fn current(journal: &Journal) -> anyhow::Result<Option<InputsVersion>> {
    Ok(history(journal)?.pop())
}

/// Version `n`, or an error that says which exist.
pub fn version(journal: &Journal, n: Version) -> anyhow::Result<InputsVersion> {
    let all = history(journal)?;
    find(&all, n).cloned()
}

/// Version `n` of `all`, or an error that says which exist.
pub fn find(all: &[InputsVersion], n: Version) -> anyhow::Result<&InputsVersion> {
    all.iter().find(|v| v.version == n).ok_or_else(|| match all.last() {
        Some(last) => anyhow::anyhow!(
            "there is no inputs version {n}: versions are 1 to {}; `handover inputs history` lists them",
            last.version
        ),
        None => anyhow::anyhow!(
            "there is no inputs version {n}: no inputs were saved yet; `handover inputs set KEY=VALUE` makes version 1"
        ),
    })
}

/// What a change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Saved {
    /// A new version, and what it changed from the one before.
    New(InputsVersion, Vec<Difference>),
    /// Nothing changed; the current version (None: no inputs saved yet).
    Unchanged(Option<Version>),
}

/// Makes the next version from the current map (empty before version 1) with
/// `make`, in one journal transaction; no version when the map stays the same.
/// An error from `make` stores nothing.
pub fn change(
    journal: &Journal,
    source: Source,
    make: impl Fn(&Inputs) -> anyhow::Result<Inputs>,
) -> anyhow::Result<Saved> {
    journal.append_input_record(|number, records| {
        let latest = match records.last() {
            Some((n, bytes)) => Some(decode(*n, bytes)?),
            None => None,
        };
        let empty = Inputs::new();
        let before = latest.as_ref().map_or(&empty, |v| &v.inputs);
        let after = make(before)?;
        check_inputs(&after)?;
        let differences = diff(before, &after);
        if differences.is_empty() {
            return Ok((Saved::Unchanged(latest.map(|v| v.version)), None));
        }
        let record = InputsVersion {
            format: FORMAT,
            version: Version(number),
            time_ms: now_ms(),
            who: who(),
            source: source.clone(),
            inputs: after,
        };
        let bytes = serde_json::to_vec(&record)?;
        Ok((Saved::New(record, differences), Some(bytes)))
    })
}

/// `inputs revert N`: a new version whose map is version N's.
pub fn revert(journal: &Journal, to: Version) -> anyhow::Result<Saved> {
    let target = version(journal, to)?.inputs;
    change(journal, Source::Revert { to }, |_| Ok(target.clone()))
}

/// Runbook steps 5–6 for a rollout, called before it starts: records the plan's
/// `[inputs]` over the current version (the plan's keys win, other keys stay) as
/// a version tied to `rollout`, and returns its number and the map hooks and
/// providers get as `HANDOVER_INPUT_<KEY>`.
///
/// A version is made even when nothing changed, so every rollout names its
/// inputs in `inputs history`. Called again for the same rollout (`resume`), it
/// returns that rollout's version as recorded, changing nothing, even if the
/// inputs were changed since. A bad value is refused naming its key, and nothing
/// is stored.
pub fn record_for_rollout(
    journal: &Journal,
    plan_path: &Path,
    plan_inputs: &BTreeMap<InputKey, String>,
    rollout: &str,
) -> anyhow::Result<(Version, Inputs)> {
    check_inputs(plan_inputs).with_context(|| format!("[inputs] of {}", plan_path.display()))?;
    journal.append_input_record(|number, records| {
        let all = decode_all(records)?;
        let recorded = all
            .iter()
            .rev()
            .find(|v| matches!(&v.source, Source::Plan { rollout: r, .. } if r == rollout));
        if let Some(v) = recorded {
            return Ok(((v.version, v.inputs.clone()), None));
        }
        let empty = Inputs::new();
        let current = all.last().map_or(&empty, |v| &v.inputs);
        let inputs = overlay(current, plan_inputs);
        check_inputs(&inputs)?;
        let record = InputsVersion {
            format: FORMAT,
            version: Version(number),
            time_ms: now_ms(),
            who: who(),
            source: Source::Plan {
                plan: plan_path.to_owned(),
                rollout: rollout.to_owned(),
            },
            inputs: inputs.clone(),
        };
        Ok(((record.version, inputs), Some(serde_json::to_vec(&record)?)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> InputKey {
        InputKey::new(k).expect("key")
    }

    fn map(pairs: &[(&str, &str)]) -> Inputs {
        pairs
            .iter()
            .map(|(k, v)| (key(k), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn diff_names_added_removed_and_changed_keys_with_their_values() {
        let a = map(&[("A", "1"), ("B", "2"), ("C", "3")]);
        let b = map(&[("B", "2"), ("C", "three"), ("D", "4")]);
        let lines: Vec<String> = diff(&a, &b).iter().map(|d| d.to_string()).collect();
        assert_eq!(
            lines,
            ["- A = \"1\"", "~ C: \"3\" -> \"three\"", "+ D = \"4\""]
        );
        assert!(diff(&a, &a).is_empty());
    }

    #[test]
    fn a_value_prints_as_data_not_as_terminal_control() {
        let d = Difference::Added {
            key: key("X"),
            value: "a\nFAKE\u{1b}[2J".into(),
        };
        assert_eq!(d.to_string(), "+ X = \"a\\nFAKE\\u{1b}[2J\"");
    }

    #[test]
    fn csv_round_trips_commas_quotes_newlines_and_unicode() {
        let inputs = map(&[
            ("COMMA", "a,b"),
            ("QUOTE", "say \"hi\""),
            ("NEWLINE", "line 1\nline 2\r\nline 3"),
            ("EMPTY", ""),
            ("SPACES", "  padded  "),
            ("UNICODE", "zoë ✓"),
        ]);
        let csv = to_csv(&inputs).expect("csv");
        let text = String::from_utf8(csv.clone()).expect("utf8");
        assert!(text.starts_with("key,value\n"), "{text}");
        assert!(text.contains("COMMA,\"a,b\"\n"), "{text}");
        assert!(text.contains("QUOTE,\"say \"\"hi\"\"\"\n"), "{text}");
        assert_eq!(from_csv(&csv).expect("parse"), inputs);
        // What a spreadsheet saves: a BOM and CRLF line ends.
        let mut excel = b"\xef\xbb\xbfkey,value\r\n".to_vec();
        excel.extend_from_slice(b"A,\"x,y\"\r\nB,2\r\n");
        assert_eq!(
            from_csv(&excel).expect("parse"),
            map(&[("A", "x,y"), ("B", "2")])
        );
        assert_eq!(from_csv(b"key,value\n").expect("empty"), Inputs::new());
    }

    #[test]
    fn bad_csv_is_refused_naming_the_line_and_the_fix() {
        let cases: [(&[u8], &str); 6] = [
            (b"name,val\nA,1\n", "first line must be key,value"),
            (b"key,value\nA,1,2\n", "line 2: 3 field(s)"),
            (
                b"key,value\napp_env,1\n",
                "line 2: invalid input key \"app_env\"",
            ),
            (b"key,value\nA,1\nA,2\n", "line 3: A is listed twice"),
            (b"key,value\nA,\xff\n", "line 2: not UTF-8"),
            (
                b"key,value\nA,\"x\0y\"\n",
                "line 2: the value of A contains a NUL",
            ),
        ];
        for (bytes, expected) in cases {
            let err = from_csv(bytes).expect_err("refused").to_string();
            assert!(err.contains(expected), "{err:?} lacks {expected:?}");
        }
    }

    #[test]
    fn a_change_sets_unsets_and_refuses_what_it_cannot_mean() {
        let current = map(&[("A", "1"), ("B", "2")]);
        let change = Change {
            set: vec![(key("A"), "one".into()), (key("C"), "3".into())],
            unset: vec![key("B")],
        };
        assert_eq!(
            change.apply(&current).expect("ok"),
            map(&[("A", "one"), ("C", "3")])
        );
        let refused = [
            (
                Change {
                    set: vec![(key("A"), "x".into()), (key("A"), "y".into())],
                    unset: vec![],
                },
                "A is given twice",
            ),
            (
                Change {
                    set: vec![(key("A"), "x".into())],
                    unset: vec![key("A")],
                },
                "A is both set and unset",
            ),
            (
                Change {
                    set: vec![],
                    unset: vec![key("Z")],
                },
                "Z is not set",
            ),
            (
                Change {
                    set: vec![(key("A"), "x".repeat(MAX_VALUE_BYTES + 1))],
                    unset: vec![],
                },
                "the value of A is 8193 bytes",
            ),
        ];
        for (change, expected) in refused {
            let err = change.apply(&current).expect_err("refused").to_string();
            assert!(err.contains(expected), "{err:?} lacks {expected:?}");
        }
    }

    #[test]
    fn assignments_split_at_the_first_equals_and_name_a_bad_key() {
        assert_eq!(
            parse_assignment("URL=https://x/?a=b").expect("ok"),
            (key("URL"), "https://x/?a=b".into())
        );
        assert_eq!(
            parse_assignment("EMPTY=").expect("ok"),
            (key("EMPTY"), "".into())
        );
        let err = parse_assignment("APP_ENV").expect_err("no =").to_string();
        assert!(err.contains("not KEY=VALUE"), "{err}");
        let err = parse_assignment("app-env=x")
            .expect_err("bad key")
            .to_string();
        assert!(
            err.contains("\"app-env\"") && err.contains("upper-case"),
            "{err}"
        );
    }

    #[test]
    fn versions_count_up_and_a_no_op_makes_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = Journal::new(dir.path());
        let set = |pairs: &[(&str, &str)]| {
            let change = Change {
                set: pairs.iter().map(|(k, v)| (key(k), (*v).into())).collect(),
                unset: vec![],
            };
            super::change(&journal, Source::Set, |c| Ok(change.apply(c)?)).expect("change")
        };
        assert!(matches!(set(&[("A", "1")]), Saved::New(v, _) if v.version == Version(1)));
        assert!(matches!(set(&[("B", "2")]), Saved::New(v, _) if v.version == Version(2)));
        assert_eq!(set(&[("A", "1")]), Saved::Unchanged(Some(Version(2))));
        // An import of the export changes nothing.
        let csv = to_csv(&current(&journal).expect("read").expect("some").inputs).expect("csv");
        let imported = from_csv(&csv).expect("parse");
        let saved = change(
            &journal,
            Source::Import {
                file: "x.csv".into(),
            },
            |_| Ok(imported.clone()),
        )
        .expect("import");
        assert_eq!(saved, Saved::Unchanged(Some(Version(2))));
        // A refused change stores nothing.
        assert!(change(&journal, Source::Set, |_| bail!("no")).is_err());
        assert_eq!(history(&journal).expect("history").len(), 2);
    }

    #[test]
    fn revert_makes_a_new_version_equal_to_the_old_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = Journal::new(dir.path());
        let to = |m: Inputs| change(&journal, Source::Set, move |_| Ok(m.clone())).expect("set");
        to(map(&[("A", "1")]));
        to(map(&[("A", "2"), ("B", "x")]));
        let Saved::New(v3, differences) = revert(&journal, Version(1)).expect("revert") else {
            panic!("revert made no version");
        };
        assert_eq!((v3.version, &v3.inputs), (Version(3), &map(&[("A", "1")])));
        assert_eq!(v3.source.to_string(), "revert 1");
        assert_eq!(differences.len(), 2);
        // Reverting to what is current changes nothing.
        assert_eq!(
            revert(&journal, Version(1)).expect("revert"),
            Saved::Unchanged(Some(Version(3)))
        );
        let err = format!("{:#}", revert(&journal, Version(9)).expect_err("none"));
        assert!(
            err.contains("no inputs version 9") && err.contains("1 to 3"),
            "{err}"
        );
    }

    #[test]
    fn a_rollout_records_its_plan_over_the_current_inputs_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = Journal::new(dir.path());
        change(&journal, Source::Set, |_| {
            Ok(map(&[("A", "1"), ("B", "2")]))
        })
        .expect("set");
        let plan = map(&[("B", "plan"), ("C", "3")]);
        let (v, inputs) =
            record_for_rollout(&journal, Path::new("p.toml"), &plan, "r-1").expect("record");
        assert_eq!(v, Version(2));
        assert_eq!(inputs, map(&[("A", "1"), ("B", "plan"), ("C", "3")]));
        // Inputs changed meanwhile: resuming r-1 still gets its own version.
        change(&journal, Source::Set, |_| Ok(map(&[("A", "other")]))).expect("set");
        let again = record_for_rollout(&journal, Path::new("p.toml"), &plan, "r-1").expect("again");
        assert_eq!(again, (Version(2), inputs.clone()));
        // Another rollout with no change still gets a version of its own.
        let (v4, same) = record_for_rollout(&journal, Path::new("q.toml"), &Inputs::new(), "r-2")
            .expect("record");
        assert_eq!((v4, same), (Version(4), map(&[("A", "other")])));
        assert_eq!(
            version(&journal, v4).expect("v4").source.to_string(),
            "plan q.toml for rollout r-2"
        );
        // A bad plan value stores nothing.
        let bad = map(&[("A", "x\0")]);
        let err = format!(
            "{:#}",
            record_for_rollout(&journal, Path::new("p.toml"), &bad, "r-3").expect_err("nul")
        );
        assert!(
            err.contains("p.toml") && err.contains("the value of A"),
            "{err}"
        );
        assert_eq!(history(&journal).expect("history").len(), 4);
    }

    #[test]
    fn env_names_carry_the_prefix() {
        assert_eq!(key("APP_ENV").env_name(), "HANDOVER_INPUT_APP_ENV");
    }
}
