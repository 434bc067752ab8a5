//! `[haproxy]` in the agent's config: the runtime API socket and the backends this
//! agent manages.

use std::path::{Path, PathBuf};
use std::time::Duration;

use handover_common::names::{BackendName, check_simple};
use serde::Deserialize;

use super::runtime::{Endpoint, Runtime};

/// `[haproxy]`: the runtime API socket and the backends this agent manages.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaproxyConfig {
    /// The admin socket: a path, or `ipv4@ADDR:PORT`.
    pub socket: String,
    /// The backend app servers are attached to.
    pub backend: Option<BackendName>,
    /// Several backends (every attach goes to all of them unless one is named).
    #[serde(default)]
    pub backends: Vec<BackendName>,
    /// Servers named PREFIX + number are `server-template` slots (default `slot`).
    #[serde(default = "default_slot_prefix")]
    pub slot_prefix: String,
    /// How long attach waits for UP.
    #[serde(
        default = "default_timeout",
        with = "handover_common::duration::serde_human"
    )]
    pub attach_timeout: Duration,
    /// How long detach waits for sessions to end.
    #[serde(
        default = "default_timeout",
        with = "handover_common::duration::serde_human"
    )]
    pub detach_timeout: Duration,
    /// How often the agent looks for an HAProxy reload.
    #[serde(
        default = "default_reconcile",
        with = "handover_common::duration::serde_human"
    )]
    pub reconcile_interval: Duration,
    /// Check interval for dynamic servers (they do not inherit `default-server`).
    #[serde(default, with = "handover_common::duration::serde_human_opt")]
    pub check_inter: Option<Duration>,
    /// `rise` for dynamic servers.
    pub check_rise: Option<u32>,
    /// `fall` for dynamic servers.
    pub check_fall: Option<u32>,
}

fn default_slot_prefix() -> String {
    "slot".into()
}
fn default_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_reconcile() -> Duration {
    Duration::from_secs(1)
}

impl HaproxyConfig {
    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        if let Ok(Endpoint::Unix(p)) = Endpoint::parse(&self.socket)
            && p.is_relative()
        {
            self.socket = base.join(p).display().to_string();
        }
    }

    /// Checks what serde cannot: a backend is named, the socket and prefix parse.
    pub fn validate(&self) -> anyhow::Result<()> {
        Endpoint::parse(&self.socket).map_err(|e| anyhow::anyhow!("[haproxy] socket: {e}"))?;
        if self.managed_backends().is_empty() {
            anyhow::bail!(
                "[haproxy]: name the backend app servers go into: `backend = \"web\"` or `backends = [\"web\", \"api\"]`"
            );
        }
        check_simple("slot prefix", &self.slot_prefix, 32)
            .map_err(|e| anyhow::anyhow!("[haproxy] slot_prefix: {e}"))?;
        if self.reconcile_interval < Duration::from_millis(100) {
            anyhow::bail!("[haproxy] reconcile_interval: use at least 100ms");
        }
        Ok(())
    }

    /// `backend` and `backends`, in that order, without repeats.
    pub fn managed_backends(&self) -> Vec<BackendName> {
        let mut all: Vec<BackendName> = self.backend.iter().cloned().collect();
        for b in &self.backends {
            if !all.contains(b) {
                all.push(b.clone());
            }
        }
        all
    }

    /// Whether HAProxy server `name` is one of the `server-template` slots
    /// (the slot prefix followed by digits).
    pub fn is_slot(&self, name: &str) -> bool {
        self.slot_number(name).is_some()
    }

    /// The number of slot `name` (`slot12` → 12), `None` when it is not a slot.
    pub fn slot_number(&self, name: &str) -> Option<u64> {
        name.strip_prefix(self.slot_prefix.as_str())
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .map(|n| n.parse().unwrap_or(u64::MAX))
    }

    /// The `inter`/`rise`/`fall` words for a dynamic server's `add server` (it does
    /// not inherit `default-server`).
    pub fn check_args(&self) -> Vec<String> {
        let inter = self.check_inter.map(|d| format!("{}ms", d.as_millis()));
        let rise = self.check_rise.map(|n| n.to_string());
        let fall = self.check_fall.map(|n| n.to_string());
        let mut args = Vec::new();
        for (word, value) in [("inter", inter), ("rise", rise), ("fall", fall)] {
            if let Some(v) = value {
                args.extend([word.to_string(), v]);
            }
        }
        args
    }

    /// The runtime API client.
    pub fn runtime(&self) -> Runtime {
        // `validate` ran at load; a bad socket here still yields an honest error.
        Runtime::new(
            Endpoint::parse(&self.socket)
                .unwrap_or_else(|_| Endpoint::Unix(PathBuf::from(&self.socket))),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> HaproxyConfig {
        toml::from_str(&format!(
            "socket = \"/run/haproxy.sock\"\nbackend = \"web\"\n{extra}"
        ))
        .expect("valid [haproxy]")
    }

    #[test]
    fn slots_are_prefix_and_digits() {
        let c = config("");
        assert!(c.is_slot("slot1"));
        assert_eq!(c.slot_number("slot12"), Some(12));
        assert!(!c.is_slot("slot"));
        assert!(!c.is_slot("slotx"));
        assert!(!c.is_slot("web-1"));
    }

    #[test]
    fn dynamic_servers_get_the_configured_check_timing() {
        assert!(config("").check_args().is_empty());
        let c = config("check_inter = \"200ms\"\ncheck_rise = 2\ncheck_fall = 1\n");
        assert_eq!(c.check_args(), ["inter", "200ms", "rise", "2", "fall", "1"]);
    }
}
