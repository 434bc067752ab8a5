//! The app server's error log (runbook step 17: "test the site, watch the logs").
//!
//! During a bake the coordinator asks each new server's agent, again and again, how
//! many error lines its `[app] error_log` gained since the last answer. The agent
//! keeps no state per caller: each answer carries a [`LogCursor`] that the caller
//! hands back with its next question. A cursor names the file by device and inode,
//! so a rotated or truncated log is read again from its start instead of being
//! skipped or misread.

use serde::{Deserialize, Serialize};

/// App log requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AppLogRequest {
    /// Count the error lines written since `since` (from the end of the file as it
    /// is now when `None`: a first call only takes a cursor, it counts nothing old).
    Errors {
        /// Where the previous answer stopped.
        since: Option<LogCursor>,
    },
}

/// A position in one log file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogCursor {
    /// The file's device number.
    pub dev: u64,
    /// The file's inode number.
    pub ino: u64,
    /// The byte offset of the first line not read yet.
    pub offset: u64,
}

/// Answer to [`AppLogRequest::Errors`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppLogReport {
    /// Where to continue next time.
    pub cursor: LogCursor,
    /// Error lines (lines matching one of the agent's `[app] error_patterns`) read
    /// by this call.
    pub errors: u64,
    /// The last few of those lines, each shortened if long.
    pub last: Vec<String>,
    /// The file was rotated or truncated since `since`: counting restarted at the
    /// start of the file that is there now.
    pub restarted: bool,
    /// The read stopped at the agent's per-call limit: more is waiting, ask again.
    pub more: bool,
}
