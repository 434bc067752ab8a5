//! What a rollout learns about its hosts that later steps need, as types: the
//! release each host had before the rollout switched it. Steps return what they
//! learn; the engine keeps the first answer (a resumed or redone wave must not
//! forget where it came from) and journals it before the step counts as done.

use std::collections::BTreeMap;

use handover_common::names::{HostName, ReleaseName};
use serde::{Deserialize, Serialize};

/// Facts learnt so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "OnDisk")]
pub struct Facts {
    /// The release each host had before the rollout switched it (`None`: it had
    /// none; a host missing here was never about to be switched).
    pub before: BTreeMap<HostName, Option<ReleaseName>>,
    /// What a surge rollout learnt (empty for in-place).
    pub surge: super::surge::SurgeFacts,
}

impl Facts {
    /// Adds what a step learnt; what was known first stays.
    pub fn learn(&mut self, learned: Facts) {
        for (host, release) in learned.before {
            self.before.entry(host).or_insert(release);
        }
        self.surge.learn(learned.surge);
    }

    /// Whether `host` was recorded before a switch.
    pub fn knows(&self, host: &HostName) -> bool {
        self.before.contains_key(host)
    }

    /// The release `host` goes back to, if it had one.
    pub fn release_before(&self, host: &HostName) -> Option<&ReleaseName> {
        self.before.get(host).and_then(Option::as_ref)
    }
}

/// The journal's shapes: typed, or format 1's `{"before/HOST": "RELEASE" | "-"}`.
#[derive(Deserialize)]
#[serde(untagged)]
enum OnDisk {
    Typed(Typed),
    Flat(BTreeMap<String, String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Typed {
    #[serde(default)]
    before: BTreeMap<HostName, Option<ReleaseName>>,
    #[serde(default)]
    surge: super::surge::SurgeFacts,
}

impl From<OnDisk> for Facts {
    fn from(on_disk: OnDisk) -> Facts {
        match on_disk {
            OnDisk::Typed(t) => Facts {
                before: t.before,
                surge: t.surge,
            },
            OnDisk::Flat(map) => Facts {
                before: map
                    .iter()
                    .filter_map(|(k, v)| {
                        let host = HostName::new(k.strip_prefix("before/")?.to_string()).ok()?;
                        let release = ReleaseName::new(v.clone()).ok();
                        Some((host, release))
                    })
                    .collect(),
                surge: Default::default(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(n: &str) -> HostName {
        HostName::new(n.to_string()).expect("host")
    }

    #[test]
    fn the_first_answer_stays_and_old_journals_read_the_same() {
        let rel = |s: &str| ReleaseName::new(s.to_string()).expect("release");
        let mut facts = Facts::default();
        facts.learn(Facts {
            before: BTreeMap::from([(host("web-1"), Some(rel("20260101T000000Z-aaaaaaa")))]),
            ..Facts::default()
        });
        facts.learn(Facts {
            before: BTreeMap::from([
                (host("web-1"), Some(rel("20260102T000000Z-bbbbbbb"))),
                (host("web-2"), None),
            ]),
            ..Facts::default()
        });
        assert_eq!(
            facts.release_before(&host("web-1")),
            Some(&rel("20260101T000000Z-aaaaaaa"))
        );
        assert!(facts.knows(&host("web-2")) && facts.release_before(&host("web-2")).is_none());
        let json = serde_json::to_string(&facts).expect("json");
        assert_eq!(serde_json::from_str::<Facts>(&json).expect("typed"), facts);
        let flat = r#"{"before/web-1": "20260101T000000Z-aaaaaaa", "before/web-2": "-"}"#;
        assert_eq!(
            serde_json::from_str::<Facts>(flat).expect("format 1"),
            facts
        );
    }
}
