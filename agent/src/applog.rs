//! The app server's error log (runbook step 17: watch the logs during the bake).
//!
//! Each call reads what the log gained since the caller's [`LogCursor`] and counts
//! the lines that match one of `[app] error_patterns` (plain substrings; by default
//! Apache's error levels). The agent keeps nothing between calls:
//!
//! * a cursor names the file by device and inode, so a rotated log (a new file at
//!   the path) or a truncated one (shorter than the cursor) is read again from its
//!   start, and the answer says so (`restarted`);
//! * only whole lines are read: a line still being written stays for the next call;
//! * one call reads at most [`READ_LIMIT`] bytes, so a huge log cannot stall the
//!   agent; the answer says when more is waiting (`more`).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use handover_common::proto::applog::{AppLogReport, AppLogRequest, LogCursor};
use handover_common::proto::{Failure, FailureKind};

use crate::Agent;

/// The most one call reads.
pub const READ_LIMIT: u64 = 4 * 1024 * 1024;

/// How many of the last error lines an answer carries.
pub const LAST_LINES: usize = 5;

/// Longest error line an answer carries, in characters; the rest is cut.
pub const LINE_CHARS: usize = 300;

/// The default `[app] error_log`.
pub fn default_error_log() -> PathBuf {
    PathBuf::from("/var/log/apache2/error.log")
}

/// The default `[app] error_patterns`: Apache's error levels as its log writes
/// them (`[Thu Dec 03 14:00:00.000 2026] [php:error] ...`).
pub fn default_error_patterns() -> Vec<String> {
    [":error]", ":crit]", ":alert]", ":emerg]"]
        .map(String::from)
        .to_vec()
}

/// Runs an app log request.
pub async fn handle(agent: &Arc<Agent>, req: AppLogRequest) -> Result<AppLogReport, Failure> {
    let app = agent.config.app.as_ref().ok_or_else(|| {
        Failure::new(
            FailureKind::NotConfigured,
            format!(
                "{} has no [app] section, so its error log cannot be read: add `[app] listen = \"ADDR:PORT\"` \
                 and `error_log = \"/var/log/apache2/error.log\"` to its agent config",
                agent.config.name
            ),
        )
    })?;
    let AppLogRequest::Errors { since } = req;
    let path = app.error_log.clone();
    let patterns = app.error_patterns.clone();
    tokio::task::spawn_blocking(move || read_errors(&path, &patterns, since, READ_LIMIT))
        .await
        .map_err(|e| {
            Failure::new(
                FailureKind::Internal,
                format!("reading the error log stopped: {e}"),
            )
        })?
}

/// Reads the error lines `path` gained since `since` (see the module
/// documentation), at most `limit` bytes.
pub fn read_errors(
    path: &Path,
    patterns: &[String],
    since: Option<LogCursor>,
    limit: u64,
) -> Result<AppLogReport, Failure> {
    let unreadable = |e: std::io::Error| {
        Failure::new(
            FailureKind::Failed,
            format!(
                "the app's error log {} (`[app] error_log` in the agent config) cannot be read: {e}; \
                 set error_log to the file the app server writes its errors to",
                path.display()
            ),
        )
    };
    let mut file = File::open(path).map_err(unreadable)?;
    let meta = file.metadata().map_err(unreadable)?;
    let (dev, ino, len) = (meta.dev(), meta.ino(), meta.len());
    let here = |offset| LogCursor { dev, ino, offset };
    let Some(since) = since else {
        return Ok(report(here(len), 0, VecDeque::new(), false, false));
    };
    let same_file = since.dev == dev && since.ino == ino && since.offset <= len;
    let start = if same_file { since.offset } else { 0 };
    file.seek(SeekFrom::Start(start)).map_err(unreadable)?;
    let mut buf = Vec::new();
    file.take(limit).read_to_end(&mut buf).map_err(unreadable)?;
    let full = buf.len() as u64 >= limit;
    let used = whole_lines(&buf, full);
    let (errors, last) = count_errors(&buf[..used], patterns);
    let offset = start + used as u64;
    Ok(report(
        here(offset),
        errors,
        last,
        !same_file,
        offset < len && full,
    ))
}

/// How many bytes of `buf` are whole lines. A line longer than a whole read
/// (`full` and no newline at all) is taken as it is, so the cursor always moves.
fn whole_lines(buf: &[u8], full: bool) -> usize {
    match buf.iter().rposition(|&b| b == b'\n') {
        Some(i) => i + 1,
        None if full => buf.len(),
        None => 0,
    }
}

/// The lines of `text` matching a pattern: how many, and the last few.
fn count_errors(text: &[u8], patterns: &[String]) -> (u64, VecDeque<String>) {
    let mut errors = 0;
    let mut last = VecDeque::with_capacity(LAST_LINES);
    for line in text.split(|&b| b == b'\n') {
        let line = String::from_utf8_lossy(line);
        if !patterns.iter().any(|p| line.contains(p.as_str())) {
            continue;
        }
        errors += 1;
        if last.len() == LAST_LINES {
            last.pop_front();
        }
        last.push_back(shorten(line.trim_end()));
    }
    (errors, last)
}

fn shorten(line: &str) -> String {
    match line.char_indices().nth(LINE_CHARS) {
        Some((cut, _)) => format!("{} [line cut]", &line[..cut]),
        None => line.to_string(),
    }
}

fn report(
    cursor: LogCursor,
    errors: u64,
    last: VecDeque<String>,
    restarted: bool,
    more: bool,
) -> AppLogReport {
    AppLogReport {
        cursor,
        errors,
        last: last.into(),
        restarted,
        more,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const ERR: &str = "[Thu Dec 03 14:00:00.1 2026] [php:error] [pid 7] boom\n";
    const INFO: &str = "[Thu Dec 03 14:00:00.2 2026] [mpm_event:notice] [pid 1] resuming\n";

    fn append(path: &Path, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open");
        f.write_all(text.as_bytes()).expect("write");
    }

    fn read(path: &Path, since: Option<LogCursor>) -> AppLogReport {
        read_errors(path, &default_error_patterns(), since, READ_LIMIT).expect("reads")
    }

    #[test]
    fn a_first_call_takes_a_cursor_at_the_end_and_counts_nothing_old() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("error.log");
        append(&log, ERR);
        let first = read(&log, None);
        assert_eq!(first.errors, 0);
        assert_eq!(first.cursor.offset, ERR.len() as u64);
        append(&log, INFO);
        append(&log, ERR);
        append(&log, &ERR.replace(":error]", ":crit]"));
        let next = read(&log, Some(first.cursor));
        assert_eq!(next.errors, 2);
        assert_eq!(next.last.len(), 2);
        assert!(next.last[1].contains(":crit]"), "{:?}", next.last);
        assert!(!next.restarted && !next.more);
        assert_eq!(read(&log, Some(next.cursor)).errors, 0);
    }

    #[test]
    fn a_line_still_being_written_waits_for_the_next_call() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("error.log");
        std::fs::write(&log, "").expect("empty");
        let start = read(&log, None).cursor;
        append(&log, &ERR[..20]);
        let partial = read(&log, Some(start));
        assert_eq!(partial.errors, 0);
        assert_eq!(partial.cursor.offset, 0);
        append(&log, &ERR[20..]);
        let whole = read(&log, Some(partial.cursor));
        assert_eq!(whole.errors, 1);
        assert_eq!(whole.cursor.offset, ERR.len() as u64);
    }

    #[test]
    fn a_rotated_log_is_read_from_the_start_of_the_new_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("error.log");
        append(&log, &INFO.repeat(10));
        let before = read(&log, None).cursor;
        std::fs::rename(&log, dir.path().join("error.log.1")).expect("rotate");
        append(&log, ERR);
        let after = read(&log, Some(before));
        assert!(after.restarted);
        assert_eq!(after.errors, 1);
        assert_eq!(after.cursor.offset, ERR.len() as u64);
        assert_ne!(after.cursor.ino, before.ino);
    }

    #[test]
    fn a_truncated_log_is_read_from_its_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("error.log");
        append(&log, &INFO.repeat(10));
        let before = read(&log, None).cursor;
        std::fs::write(&log, ERR).expect("truncate and write");
        let after = read(&log, Some(before));
        assert!(after.restarted);
        assert_eq!(after.errors, 1);
    }

    #[test]
    fn one_call_reads_at_most_its_limit_and_says_more_is_waiting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("error.log");
        std::fs::write(&log, "").expect("empty");
        let start = read(&log, None).cursor;
        append(&log, &ERR.repeat(10));
        let limit = (ERR.len() * 3 + 5) as u64;
        let patterns = default_error_patterns();
        let mut cursor = start;
        let mut total = 0;
        let mut calls = 0;
        loop {
            let r = read_errors(&log, &patterns, Some(cursor), limit).expect("reads");
            total += r.errors;
            cursor = r.cursor;
            calls += 1;
            if !r.more {
                break;
            }
            assert_eq!(r.errors, 3);
        }
        assert_eq!(total, 10);
        assert_eq!(calls, 4);
        // One line longer than a whole read still moves the cursor.
        let long = format!("[x:error] {}\n", "y".repeat(100));
        append(&log, &long);
        let r = read_errors(&log, &patterns, Some(cursor), 50).expect("reads");
        assert_eq!(r.cursor.offset, cursor.offset + 50);
        assert_eq!(r.errors, 1);
    }

    #[test]
    fn patterns_are_the_agents_own_and_long_lines_are_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("error.log");
        std::fs::write(&log, "").expect("empty");
        let start = read(&log, None).cursor;
        append(&log, "PHP Fatal error: x\n");
        append(&log, &format!("[a:emerg] {}\n", "z".repeat(1000)));
        assert_eq!(read(&log, Some(start)).errors, 1);
        let fatal = ["Fatal".to_string()];
        let r = read_errors(&log, &fatal, Some(start), READ_LIMIT).expect("reads");
        assert_eq!(r.errors, 1);
        let r = read(&log, Some(start));
        assert!(r.last[0].ends_with("[line cut]"), "{:?}", r.last);
        assert!(r.last[0].len() < 400);
    }

    #[test]
    fn a_missing_log_names_the_key_to_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err =
            read_errors(&dir.path().join("nope.log"), &[], None, READ_LIMIT).expect_err("missing");
        assert!(err.message.contains("[app] error_log"), "{}", err.message);
        assert!(err.message.contains("nope.log"), "{}", err.message);
    }
}
