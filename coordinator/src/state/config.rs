//! `[state]` of handover.toml: which store holds the journal and the deploy lock.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The store, parsed from `[state]` (absent: redb in state_dir).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawState")]
pub enum Backend {
    /// `journal.redb` and lock files in this bastion's state_dir.
    #[default]
    Redb,
    /// An etcd cluster shared by every bastion with the same config.
    Etcd(EtcdConfig),
}

/// Where the etcd cluster is and which part of it is ours.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EtcdConfig {
    /// `http://HOST:PORT` or `https://HOST:PORT`, one per member.
    pub endpoints: Vec<String>,
    /// Every key handover writes starts with this ("/handover/prod").
    pub prefix: String,
    /// etcd's CA certificate (PEM), for https endpoints.
    pub ca: Option<PathBuf>,
    /// A client certificate and its key (PEM), when etcd asks for one.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// `[state]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    backend: Option<String>,
    endpoints: Option<Vec<String>>,
    prefix: Option<String>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

impl TryFrom<RawState> for Backend {
    type Error = String;

    fn try_from(raw: RawState) -> Result<Self, String> {
        match raw.backend.as_deref().unwrap_or("redb") {
            "redb" => {
                let etcd_only = [
                    ("endpoints", raw.endpoints.is_some()),
                    ("prefix", raw.prefix.is_some()),
                    ("ca", raw.ca.is_some()),
                    ("cert", raw.cert.is_some()),
                    ("key", raw.key.is_some()),
                ];
                match etcd_only.iter().find(|(_, set)| *set) {
                    Some((name, _)) => Err(format!(
                        "[state] {name} is for backend = \"etcd\": add that line, or remove {name}"
                    )),
                    None => Ok(Backend::Redb),
                }
            }
            "etcd" => Ok(Backend::Etcd(etcd(raw)?)),
            other => Err(format!(
                "[state] backend = {other:?} is not known: write \"redb\" (the default, in state_dir) or \"etcd\""
            )),
        }
    }
}

fn etcd(raw: RawState) -> Result<EtcdConfig, String> {
    let endpoints = raw.endpoints.unwrap_or_default();
    if endpoints.is_empty() {
        return Err(
            "[state] backend = \"etcd\" needs endpoints = [\"http://HOST:2379\", ...], one per etcd member".into(),
        );
    }
    for e in &endpoints {
        check_endpoint(e)?;
    }
    let https = endpoints
        .iter()
        .filter(|e| e.starts_with("https://"))
        .count();
    if https != 0 && https != endpoints.len() {
        return Err(
            "[state] endpoints mix http:// and https://: use one scheme for every member".into(),
        );
    }
    let prefix = raw.prefix.ok_or(
        "[state] backend = \"etcd\" needs prefix = \"/handover/NAME\": the keys handover may write (one prefix per fleet)",
    )?;
    check_prefix(&prefix)?;
    let identity = match (raw.cert, raw.key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => return Err("[state] cert and key go together: set both (etcd's client certificate and its key), or neither".into()),
    };
    if https == 0 && (raw.ca.is_some() || identity.is_some()) {
        return Err("[state] ca, cert and key are for https:// endpoints: write the endpoints with https://, or remove them".into());
    }
    if https != 0 && raw.ca.is_none() {
        return Err("[state] https:// endpoints need ca = \"PATH\": the CA certificate (PEM) that signed etcd's".into());
    }
    Ok(EtcdConfig {
        endpoints,
        prefix,
        ca: raw.ca,
        identity,
    })
}

fn check_endpoint(e: &str) -> Result<(), String> {
    let rest = e
        .strip_prefix("http://")
        .or_else(|| e.strip_prefix("https://"))
        .ok_or_else(|| {
            format!("[state] endpoint {e:?} has no scheme: write it like \"http://10.0.0.5:2379\"")
        })?;
    let port_ok = rest
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0));
    if !port_ok || rest.contains('/') {
        return Err(format!(
            "[state] endpoint {e:?} is not SCHEME://HOST:PORT: write it like \"http://10.0.0.5:2379\""
        ));
    }
    Ok(())
}

fn check_prefix(prefix: &str) -> Result<(), String> {
    let ok = prefix.len() > 1
        && prefix.starts_with('/')
        && !prefix.ends_with('/')
        && !prefix.contains("//")
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "[state] prefix {prefix:?} is not a key path: write it like \"/handover/prod\" (a leading /, no trailing /, letters, digits, - _ .)"
        ))
    }
}

impl Backend {
    /// Makes the certificate paths relative to the config file's directory.
    pub fn resolve_paths(&mut self, base: &Path) {
        if let Backend::Etcd(e) = self {
            let paths =
                e.ca.iter_mut()
                    .chain(e.identity.iter_mut().flat_map(|(c, k)| [c, k]));
            for p in paths {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Doc {
        #[serde(default)]
        state: Backend,
    }

    fn parse(text: &str) -> Result<Backend, String> {
        toml::from_str::<Doc>(text)
            .map(|d| d.state)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn absent_is_redb_and_etcd_parses_into_its_parts() {
        assert_eq!(parse("").expect("default"), Backend::Redb);
        let etcd = parse(
            "[state]\nbackend = \"etcd\"\nendpoints = [\"https://10.0.0.5:2379\"]\nprefix = \"/handover/prod\"\nca = \"etcd-ca.pem\"\ncert = \"c.pem\"\nkey = \"c.key\"\n",
        )
        .expect("etcd");
        let Backend::Etcd(e) = etcd else {
            panic!("not etcd: {etcd:?}")
        };
        assert_eq!(e.prefix, "/handover/prod");
        assert_eq!(e.identity, Some(("c.pem".into(), "c.key".into())));
    }

    /// Each value that cannot work is refused naming the key and the fix.
    #[test]
    fn refuses_each_value_that_cannot_work_naming_the_key() {
        let etcd = "[state]\nbackend = \"etcd\"\n";
        let ok_ep = "endpoints = [\"http://127.0.0.1:2379\"]\n";
        let ok_prefix = "prefix = \"/handover/prod\"\n";
        let cases = [
            (
                "[state]\nbackend = \"zookeeper\"\n".to_string(),
                "not known",
            ),
            (
                "[state]\nendpoints = [\"http://a:1\"]\n".into(),
                "endpoints is for backend = \"etcd\"",
            ),
            (format!("{etcd}{ok_prefix}"), "needs endpoints"),
            (format!("{etcd}{ok_ep}"), "needs prefix"),
            (
                format!("{etcd}endpoints = [\"127.0.0.1:2379\"]\n{ok_prefix}"),
                "no scheme",
            ),
            (
                format!("{etcd}endpoints = [\"http://127.0.0.1\"]\n{ok_prefix}"),
                "SCHEME://HOST:PORT",
            ),
            (format!("{etcd}{ok_ep}prefix = \"handover\"\n"), "leading /"),
            (
                format!("{etcd}{ok_ep}prefix = \"/handover/\"\n"),
                "no trailing /",
            ),
            (
                format!("{etcd}{ok_ep}{ok_prefix}cert = \"c.pem\"\n"),
                "go together",
            ),
            (
                format!("{etcd}{ok_ep}{ok_prefix}ca = \"ca.pem\"\n"),
                "for https://",
            ),
            (
                format!("{etcd}endpoints = [\"https://a:2379\"]\n{ok_prefix}"),
                "need ca",
            ),
            (
                format!("{etcd}{ok_ep}{ok_prefix}endpoint = \"x\"\n"),
                "unknown field",
            ),
        ];
        for (text, fix) in cases {
            let err = parse(&text).expect_err(&text);
            assert!(err.contains(fix), "should say {fix}: {err}");
        }
    }
}
