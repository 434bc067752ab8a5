//! TOML errors the way an operator needs them: the line and the key at fault.
//! Every config file and plan goes through [`describe`] (what serde refused) or
//! [`describe_at`] (what a check across keys refused), so they all read alike.

use toml::de::{DeTable, DeValue};

/// `line 5 (ref = "-x"): [revision] ref: invalid revision ...`.
pub fn describe(text: &str, err: &toml::de::Error) -> String {
    let message = match key_of(err) {
        Some(key) => format!("{key}: {}", err.message().trim()),
        None => err.message().trim().to_string(),
    };
    match err.span() {
        Some(span) => at(text, span.start, &message),
        None => message,
    }
}

/// The key at fault as a plan reads it, `[rollout] quiet` or `strategy`: toml
/// shows its key path only in an error without the input.
fn key_of(err: &toml::de::Error) -> Option<String> {
    let mut bare = err.clone();
    bare.set_input(None);
    let shown = bare.to_string();
    let path = shown.lines().rev().find_map(|l| {
        l.strip_prefix("in `")
            .and_then(|rest| rest.strip_suffix('`'))
    })?;
    Some(match path.rsplit_once('.') {
        Some((table, key)) => format!("[{table}] {key}"),
        None => path.to_string(),
    })
}

/// `line 9 (min_healthy = 3): ...` for the key at `path` (table names, keys, and
/// array indexes as digits: `["hosts", "2"]`). A key left out (its default was
/// used) points at its table's header; a table left out, at nothing.
pub fn describe_at(text: &str, path: &[&str], message: &str) -> String {
    match locate(text, path) {
        Some(start) => at(text, start, message),
        None => message.to_string(),
    }
}

/// Where the value at `path` starts in `text` (or the deepest part of it present).
fn locate(text: &str, path: &[&str]) -> Option<usize> {
    let root = DeTable::parse(text).ok()?;
    let root = DeValue::Table(root.into_inner());
    let mut value = &root;
    let mut found = None;
    for part in path {
        let next = match value {
            DeValue::Array(_) => value.get(part.parse::<usize>().ok()?),
            _ => value.get(*part),
        };
        let Some(next) = next else { break };
        found = Some(next.span().start);
        value = next.get_ref();
    }
    found
}

fn at(text: &str, offset: usize, message: &str) -> String {
    let Some(before) = text.get(..offset.min(text.len())) else {
        return message.to_string();
    };
    let line_no = before.matches('\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
    format!("line {line_no} ({line}): {message}")
}

#[cfg(test)]
mod tests {
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Config {
        name: String,
    }

    #[test]
    fn names_the_line_at_fault() {
        let text = "name = \"web-1\"\nnmae = \"x\"\n";
        let err = toml::from_str::<Config>(text).expect_err("typo");
        let described = super::describe(text, &err);
        assert!(
            described.starts_with("line 2 (nmae = \"x\")"),
            "{described}"
        );
        assert!(described.contains("unknown field `nmae`"), "{described}");
    }

    #[test]
    fn points_a_check_across_keys_at_its_key() {
        let text = "a = 1\n[rollout]\nbatch = 2\nmin_healthy = 3\n[[hosts]]\nname = \"x\"\n[[hosts]]\nname = \"y\"\n";
        let d = super::describe_at(text, &["rollout", "min_healthy"], "too many");
        assert_eq!(d, "line 4 (min_healthy = 3): too many");
        let d = super::describe_at(text, &["hosts", "1", "name"], "twice");
        assert_eq!(d, "line 8 (name = \"y\"): twice");
        let d = super::describe_at(text, &["health", "rise"], "left out");
        assert_eq!(d, "left out");
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Plan {
        revision: Revision,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Revision {
        #[serde(rename = "ref")]
        reference: crate::names::Revision,
    }

    #[test]
    fn names_the_key_a_value_was_refused_for() {
        let text = "[revision]\nref = \"-x\"\n";
        let err = toml::from_str::<Plan>(text).expect_err("bad ref");
        let described = super::describe(text, &err);
        assert!(
            described.starts_with("line 2 (ref = \"-x\"): [revision] ref: invalid revision"),
            "{described}"
        );
    }
}
