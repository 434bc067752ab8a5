//! The desired membership of each managed backend: which app host is in it, on
//! which HAProxy server (slot or dynamic), at which address, in which admin state.
//!
//! HAProxy forgets runtime changes on reload; this file is what the agent re-applies
//! afterwards, so it is written atomically (temp file, fsync, rename) before the
//! change it describes is made in HAProxy.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use handover_common::names::HostName;
use handover_common::proto::lb::{ServerKind, ServerState, ServerStats};
use serde::{Deserialize, Serialize};

use super::show::{ProcessId, ServerRow, Stat};

/// File name inside `state_dir`.
pub const FILE_NAME: &str = "haproxy-membership.json";

/// One app host in one backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The HAProxy server carrying it (`slot3`, or the host name).
    pub haproxy_name: String,
    /// Slot or dynamic.
    pub kind: ServerKind,
    /// The app server's address.
    pub app: SocketAddr,
    /// The admin state wanted.
    pub state: ServerState,
}

/// Every managed backend's members, by host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// The HAProxy process this was last applied to; another one means a reload.
    pub applied_to: Option<ProcessId>,
    /// backend → host → member.
    pub backends: BTreeMap<String, BTreeMap<HostName, Member>>,
}

/// Why the membership file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The file is not what this agent wrote.
    #[error(
        "{path} is corrupt ({why}): restore it from a backup, or remove it and re-attach the servers"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        why: String,
    },
}

impl Membership {
    /// Path of the file in `state_dir`.
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(FILE_NAME)
    }

    /// Reads the file; a missing file is an empty membership.
    pub fn load(path: &Path) -> Result<Self, MembershipError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(MembershipError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        serde_json::from_str(&text).map_err(|e| MembershipError::Corrupt {
            path: path.to_owned(),
            why: e.to_string(),
        })
    }

    /// Writes the file atomically: a reader (or a crash) sees the old or the new
    /// content, never a mix.
    pub fn save(&self, path: &Path) -> Result<(), MembershipError> {
        let io = |source| MembershipError::Io {
            path: path.to_owned(),
            source,
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        let text = serde_json::to_vec_pretty(self).map_err(|e| io(std::io::Error::other(e)))?;
        tmp.write_all(&text).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(path).map_err(|e| io(e.error))?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// The member for `host` in `backend`.
    pub fn get(&self, backend: &str, host: &HostName) -> Option<&Member> {
        self.backends.get(backend)?.get(host)
    }

    /// The host carried by HAProxy server `haproxy_name` in `backend`.
    pub fn host_of(&self, backend: &str, haproxy_name: &str) -> Option<(&HostName, &Member)> {
        self.backends
            .get(backend)?
            .iter()
            .find(|(_, m)| m.haproxy_name == haproxy_name)
    }

    /// Records `member` for `host` in `backend`.
    pub fn insert(&mut self, backend: &str, host: HostName, member: Member) {
        self.backends
            .entry(backend.to_string())
            .or_default()
            .insert(host, member);
    }

    /// `host`'s member in every backend it is in, as (backend, member).
    pub fn of_host(&self, host: &HostName) -> Vec<(String, Member)> {
        self.backends
            .iter()
            .filter_map(|(b, m)| m.get(host).map(|member| (b.clone(), member.clone())))
            .collect()
    }

    /// Every host that is a member somewhere, each once.
    pub fn hosts(&self) -> Vec<HostName> {
        let hosts: std::collections::BTreeSet<&HostName> =
            self.backends.values().flat_map(|m| m.keys()).collect();
        hosts.into_iter().cloned().collect()
    }

    /// Records the admin state wanted for `host` in `backend` (if a member there).
    pub fn set_state(&mut self, backend: &str, host: &HostName, state: ServerState) {
        if let Some(m) = self.backends.get_mut(backend).and_then(|m| m.get_mut(host)) {
            m.state = state;
        }
    }

    /// What `show stat` says about `host`'s servers, by this membership.
    pub fn stats_of_host(&self, stat: &Stat, host: &HostName) -> Vec<ServerStats> {
        self.of_host(host)
            .iter()
            .filter_map(|(b, member)| {
                stat.server(b, &member.haproxy_name)
                    .map(|row| row.stats(Some(host), member.kind))
            })
            .collect()
    }

    /// One row of `show stat`, named by the host it carries when it is a member.
    pub fn stats_of_row(&self, row: &ServerRow) -> ServerStats {
        match self.host_of(&row.backend, &row.server) {
            Some((host, member)) => row.stats(Some(host), member.kind),
            None => row.stats(None, ServerKind::Other),
        }
    }

    /// Forgets `host` in `backend`.
    pub fn remove(&mut self, backend: &str, host: &HostName) -> Option<Member> {
        let members = self.backends.get_mut(backend)?;
        let removed = members.remove(host);
        if members.is_empty() {
            self.backends.remove(backend);
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(n: &str) -> HostName {
        HostName::new(n).expect("valid")
    }

    #[test]
    fn survives_a_round_trip_and_a_missing_file_is_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = Membership::path(dir.path());
        assert_eq!(
            Membership::load(&path).expect("missing is fine"),
            Membership::default()
        );
        let mut m = Membership::default();
        m.insert(
            "web",
            host("web-1"),
            Member {
                haproxy_name: "slot1".into(),
                kind: ServerKind::Slot,
                app: "127.0.1.1:80".parse().expect("addr"),
                state: ServerState::Ready,
            },
        );
        m.applied_to = Some(ProcessId { pid: 7, started: 9 });
        m.save(&path).expect("saves");
        let back = Membership::load(&path).expect("loads");
        assert_eq!(back, m);
        assert_eq!(
            back.host_of("web", "slot1").map(|(h, _)| h.as_str()),
            Some("web-1")
        );
        let mut back = back;
        back.remove("web", &host("web-1"));
        assert!(back.backends.is_empty());
    }

    #[test]
    fn a_corrupt_file_is_an_error_not_an_empty_membership() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = Membership::path(dir.path());
        std::fs::write(&path, "{not json").expect("write");
        let err = Membership::load(&path).expect_err("corrupt");
        assert!(err.to_string().contains("re-attach"), "{err}");
    }
}
