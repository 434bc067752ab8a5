//! A file a hook reports having made (runbook step 1: the database snapshot).
//!
//! A hook reports it on the last line of its stdout, as one JSON object:
//!
//! ```text
//! {"path": "/var/backups/app/2026-12-03T14:00:00.sqlite3", "size": 40960, "sha256": "9f86d0…"}
//! ```
//!
//! The agent does not take the hook's word for it: the file must exist, be a
//! regular file, and have that size and that SHA-256, or the hook failed (a backup
//! that is not on disk as reported is no backup). A last line that is not a JSON
//! object is ordinary output, so hooks that report nothing need not care; a JSON
//! object that is not a report (a key missing, misspelt or of the wrong type) is an
//! error, since it is almost surely a report gone wrong.

use std::io::Read;
use std::path::Path;

use handover_common::proto::deploy::HookArtifact;
use handover_common::proto::{Failure, FailureKind};

const EXAMPLE: &str = r#"{"path": "/abs/file", "size": BYTES, "sha256": "64 hex digits"}"#;

/// The artifact `hook` reported on its last stdout line `last`, if it reported
/// one; not checked against the disk yet (see [`verify`]).
pub fn parse(hook: &str, last: Option<&str>) -> Result<Option<HookArtifact>, Failure> {
    let Some(line) = last else {
        return Ok(None);
    };
    let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
        return Ok(None);
    };
    if !value.is_object() {
        return Ok(None);
    }
    let mut artifact: HookArtifact = serde_json::from_value(value).map_err(|e| {
        bad_report(
            hook,
            format_args!("is a JSON object but not an artifact report ({e})"),
        )
    })?;
    if !Path::new(&artifact.path).is_absolute() {
        return Err(bad_report(
            hook,
            format_args!("names the path {:?}, which is not absolute", artifact.path),
        ));
    }
    let hex = artifact.sha256.len() == 64 && artifact.sha256.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex {
        return Err(bad_report(hook, "has a sha256 that is not 64 hex digits"));
    }
    artifact.sha256.make_ascii_lowercase();
    Ok(Some(artifact))
}

fn bad_report(hook: &str, why: impl std::fmt::Display) -> Failure {
    Failure::new(
        FailureKind::Failed,
        format!(
            "hook {hook}: its last output line {why}; a hook reports a file it made as one JSON line {EXAMPLE}, \
             or prints something that is not a JSON object last"
        ),
    )
}

/// Checks the reported file on disk: it exists, is a regular file, and its size
/// and SHA-256 are the reported ones; says which differs if not. Reads the whole
/// file, so call it off the async runtime's threads.
pub fn verify(hook: &str, artifact: &HookArtifact) -> Result<(), Failure> {
    let failed = |why: String| {
        Failure::new(
            FailureKind::Failed,
            format!(
                "hook {hook} reported the file {} but {why}: the hook failed (its report does not match the disk)",
                artifact.path
            ),
        )
    };
    let path = Path::new(&artifact.path);
    let meta = std::fs::metadata(path).map_err(|e| failed(format!("it cannot be read ({e})")))?;
    if !meta.is_file() {
        return Err(failed("it is not a regular file".into()));
    }
    if meta.len() != artifact.size {
        return Err(failed(format!(
            "its size differs: reported {} bytes, the file has {}",
            artifact.size,
            meta.len()
        )));
    }
    let actual = sha256_file(path).map_err(|e| failed(format!("it cannot be read ({e})")))?;
    if actual != artifact.sha256 {
        return Err(failed(format!(
            "its sha256 differs: reported {}, the file's is {actual}",
            artifact.sha256
        )));
    }
    Ok(())
}

/// The SHA-256 of a file, lower-case hex.
fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(ctx
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The artifact a hook reported on its last stdout line, checked against the disk.
pub async fn checked(hook: &str, last: Option<&str>) -> Result<Option<HookArtifact>, Failure> {
    let Some(artifact) = parse(hook, last)? else {
        return Ok(None);
    };
    let hook = hook.to_string();
    tokio::task::spawn_blocking(move || verify(&hook, &artifact).map(|()| artifact))
        .await
        .map_err(|e| {
            Failure::new(
                FailureKind::Internal,
                format!("checking a hook's artifact stopped: {e}"),
            )
        })?
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_SHA: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const ABC_SHA: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    fn report(path: &Path, size: u64, sha: &str) -> String {
        serde_json::json!({"path": path, "size": size, "sha256": sha}).to_string()
    }

    #[test]
    fn ordinary_output_is_no_artifact() {
        for last in [
            None,
            Some("backup done"),
            Some("42"),
            Some("[1, 2]"),
            Some("{not json"),
        ] {
            assert_eq!(
                parse("backup", last).expect("not a report"),
                None,
                "{last:?}"
            );
        }
    }

    #[test]
    fn a_json_object_that_is_not_a_report_is_an_error() {
        for last in [
            r#"{"path": "/x", "size": 3}"#,
            r#"{"path": "/x", "size": "3", "sha256": "00"}"#,
            r#"{"path": "/x", "size": 3, "sha256": "00", "extra": 1}"#,
        ] {
            let err = parse("backup", Some(last)).expect_err(last);
            assert!(err.message.contains("hook backup"), "{}", err.message);
            assert!(
                err.message.contains("not an artifact report"),
                "{}",
                err.message
            );
        }
        let relative = format!(r#"{{"path": "x.db", "size": 3, "sha256": "{ABC_SHA}"}}"#);
        let err = parse("backup", Some(&relative)).expect_err("relative");
        assert!(err.message.contains("not absolute"), "{}", err.message);
        let short = r#"{"path": "/x.db", "size": 3, "sha256": "abc"}"#;
        let err = parse("backup", Some(short)).expect_err("short sha");
        assert!(err.message.contains("64 hex"), "{}", err.message);
    }

    #[test]
    fn a_report_matching_the_disk_is_the_artifact() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("b.db");
        std::fs::write(&file, "abc").expect("write");
        let line = report(&file, 3, &ABC_SHA.to_uppercase());
        let artifact = parse("backup", Some(&line))
            .expect("parses")
            .expect("a report");
        assert_eq!(artifact.sha256, ABC_SHA);
        verify("backup", &artifact).expect("matches");
    }

    #[test]
    fn a_report_that_does_not_match_the_disk_says_what_differs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("b.db");
        std::fs::write(&file, "abc").expect("write");
        let check = |line: String| {
            let artifact = parse("backup", Some(&line))
                .expect("parses")
                .expect("a report");
            verify("backup", &artifact).expect_err("differs").message
        };
        let msg = check(report(&file, 4, ABC_SHA));
        assert!(
            msg.contains("size differs: reported 4 bytes, the file has 3"),
            "{msg}"
        );
        let msg = check(report(&file, 3, EMPTY_SHA));
        assert!(msg.contains("sha256 differs"), "{msg}");
        assert!(msg.contains(ABC_SHA), "{msg}");
        let msg = check(report(&dir.path().join("missing.db"), 3, ABC_SHA));
        assert!(msg.contains("cannot be read"), "{msg}");
        let msg = check(report(dir.path(), 3, ABC_SHA));
        assert!(msg.contains("not a regular file"), "{msg}");
    }
}
