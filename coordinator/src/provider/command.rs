//! `[surge] provider = "command"`: executables with a JSON contract, run
//! directly (never through a shell), with a timeout.
//!
//! - `launch`: stdin `{"like": HOST, "count": N, "inputs": {KEY: VALUE}}`, plus
//!   `"join": {"ca_hash": "sha256:...", "tokens": ["ID.SECRET", ...]}` (one
//!   single-use token per server) when the coordinator enrolls the servers it
//!   launches (`[surge] enroll = true`); stdout a JSON list of `{"name",
//!   "address", "app"}`, one per server.
//! - `terminate NAME...`: the names as arguments, and as a JSON list on stdin.
//! - `array disable|enable|update`.
//!
//! Each gets the plan's inputs as `HANDOVER_INPUT_<KEY>` environment variables.
//! A non-zero exit fails the step with the command's stderr; so do a timeout
//! (the command is killed) and output that is not the JSON asked for.

use std::process::Stdio;
use std::time::Duration;

use handover_common::names::HostName;
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use super::{ArrayCommand, Launched};
use crate::surge_plan::{Executable, Inputs};

/// Why a provider call failed: every message names the provider command and the
/// runbook step it served.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// It could not be started.
    #[error("provider {step} ({exe}) could not be run: {why}")]
    Spawn {
        /// The runbook step.
        step: &'static str,
        /// The executable.
        exe: String,
        /// The OS's reason.
        why: String,
    },
    /// It ran past its timeout and was killed.
    #[error(
        "provider {step} ({exe}) did not finish within {}: killed it; raise [provider] timeout if it needs longer{}",
        handover_common::duration::format(*timeout),
        tail(stderr)
    )]
    Timeout {
        /// The runbook step.
        step: &'static str,
        /// The executable.
        exe: String,
        /// The limit.
        timeout: Duration,
        /// What it wrote to stderr so far (not kept: a killed pipe is lost).
        stderr: String,
    },
    /// It exited non-zero.
    #[error("provider {step} ({exe}) failed ({status}){}", tail(stderr))]
    Failed {
        /// The runbook step.
        step: &'static str,
        /// The executable.
        exe: String,
        /// Its exit status.
        status: String,
        /// Its stderr.
        stderr: String,
    },
    /// Its stdout is not what the contract asks for.
    #[error("provider {step} ({exe}) printed {why}; stdout was: {stdout:?}")]
    Malformed {
        /// The runbook step.
        step: &'static str,
        /// The executable.
        exe: String,
        /// What is wrong with it.
        why: String,
        /// The start of stdout.
        stdout: String,
    },
}

fn tail(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(10);
    if lines.is_empty() {
        String::new()
    } else {
        format!(": {}", lines[start..].join(" | "))
    }
}

/// One call of a provider executable.
pub struct Call<'a> {
    /// The runbook step it serves (`launch`, `terminate`, `array disable`...).
    pub step: &'static str,
    /// The executable.
    pub exe: &'a Executable,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its stdin.
    pub stdin: Vec<u8>,
    /// The plan's inputs, as `HANDOVER_INPUT_<KEY>`.
    pub inputs: &'a Inputs,
    /// How long it may run.
    pub timeout: Duration,
}

/// Runs `call` and returns its stdout.
pub async fn run(call: Call<'_>) -> Result<String, ProviderError> {
    let exe = call.exe.to_string();
    let step = call.step;
    let mut command = tokio::process::Command::new(call.exe.path());
    command
        .args(call.exe.args())
        .args(&call.args)
        .envs(call.exe.env().iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (key, value) in call.inputs {
        command.env(key.env_name(), value);
    }
    let mut child = command.spawn().map_err(|e| ProviderError::Spawn {
        step,
        exe: exe.clone(),
        why: e.to_string(),
    })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its stdin is not an error.
        let _ = stdin.write_all(&call.stdin).await;
    }
    let output = match tokio::time::timeout(call.timeout, child.wait_with_output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => {
            return Err(ProviderError::Spawn {
                step,
                exe,
                why: e.to_string(),
            });
        }
        Err(_) => {
            return Err(ProviderError::Timeout {
                step,
                exe,
                timeout: call.timeout,
                stderr: String::new(),
            });
        }
    };
    if !output.status.success() {
        return Err(ProviderError::Failed {
            step,
            exe,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `launch`'s stdin.
#[derive(Serialize)]
struct LaunchRequest<'a> {
    like: &'a HostName,
    count: usize,
    inputs: &'a Inputs,
    #[serde(skip_serializing_if = "Option::is_none")]
    join: Option<&'a LaunchJoin>,
}

/// `launch`'s `join`: how each new server enrolls (`handover-agent join
/// --ca-hash CA_HASH` with `HANDOVER_JOIN_TOKEN` set to one of `tokens`, in its
/// user data). The secrets exist only here and on the provider's stdin; Debug
/// does not show them.
#[derive(Clone, Serialize)]
pub struct LaunchJoin {
    /// The CA's hash, `sha256:...`, the new servers pin.
    pub ca_hash: String,
    /// One single-use token per server, `ID.SECRET`.
    pub tokens: Vec<String>,
}

impl std::fmt::Debug for LaunchJoin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "LaunchJoin {{ ca_hash: {}, tokens: {} (secrets hidden) }}",
            self.ca_hash,
            self.tokens.len()
        )
    }
}

/// Runbook step 3: `count` servers like `like`. The answer must list exactly
/// `count` servers, each name once.
pub async fn launch(
    exe: &Executable,
    like: &HostName,
    count: usize,
    inputs: &Inputs,
    join: Option<&LaunchJoin>,
    timeout: Duration,
) -> Result<Vec<Launched>, ProviderError> {
    let request = LaunchRequest {
        like,
        count,
        inputs,
        join,
    };
    let stdin = serde_json::to_vec(&request).unwrap_or_default();
    let secrets = join.map(|j| j.tokens.as_slice()).unwrap_or_default();
    let stdout = run(Call {
        step: "launch",
        exe,
        args: Vec::new(),
        stdin,
        inputs,
        timeout,
    })
    .await
    .map_err(|e| redact(e, secrets))?;
    parse_launched(exe, &stdout, count).map_err(|e| redact(e, secrets))
}

/// A provider that echoes its stdin into an error must not get a join token
/// into the journal or onto the screen: each token's secret is blanked out of
/// what the error quotes.
fn redact(mut error: ProviderError, tokens: &[String]) -> ProviderError {
    let blank = |text: &mut String| {
        for token in tokens {
            if let Some((id, secret)) = token.split_once('.')
                && !secret.is_empty()
            {
                *text = text
                    .replace(token.as_str(), &format!("{id}.<secret>"))
                    .replace(secret, "<secret>");
            }
        }
    };
    match &mut error {
        ProviderError::Timeout { stderr, .. } | ProviderError::Failed { stderr, .. } => {
            blank(stderr)
        }
        ProviderError::Malformed { stdout, .. } => blank(stdout),
        ProviderError::Spawn { .. } => {}
    }
    error
}

/// `launch`'s stdout, checked against the contract.
pub fn parse_launched(
    exe: &Executable,
    stdout: &str,
    count: usize,
) -> Result<Vec<Launched>, ProviderError> {
    let malformed = |why: String| ProviderError::Malformed {
        step: "launch",
        exe: exe.to_string(),
        why,
        stdout: stdout.chars().take(300).collect(),
    };
    let servers: Vec<Launched> = serde_json::from_str(stdout.trim()).map_err(|e| {
        malformed(format!(
            "no JSON list of {{\"name\", \"address\", \"app\"}} on stdout ({e})"
        ))
    })?;
    if servers.len() != count {
        return Err(malformed(format!(
            "{} server(s) where {count} were asked for",
            servers.len()
        )));
    }
    let mut names = std::collections::BTreeSet::new();
    if let Some(s) = servers.iter().find(|s| !names.insert(&s.name)) {
        return Err(malformed(format!("the name {} twice", s.name)));
    }
    Ok(servers)
}

/// Runbook step 18 (and a failed new server): terminate `names`.
pub async fn terminate(
    exe: &Executable,
    names: &[HostName],
    inputs: &Inputs,
    timeout: Duration,
) -> Result<(), ProviderError> {
    let stdin = serde_json::to_vec(names).unwrap_or_default();
    run(Call {
        step: "terminate",
        exe,
        args: names.iter().map(ToString::to_string).collect(),
        stdin,
        inputs,
        timeout,
    })
    .await
    .map(|_| ())
}

/// Runbook steps 10, 15, 16: the server array.
pub async fn array(
    exe: &Executable,
    command: ArrayCommand,
    inputs: &Inputs,
    timeout: Duration,
) -> Result<(), ProviderError> {
    let step = match command {
        ArrayCommand::Disable => "array disable",
        ArrayCommand::Update => "array update",
        ArrayCommand::Enable => "array enable",
    };
    run(Call {
        step,
        exe,
        args: vec![command.as_str().to_string()],
        stdin: Vec::new(),
        inputs,
        timeout,
    })
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use handover_common::names::InputKey;

    use super::*;

    fn script(dir: &tempfile::TempDir, name: &str, body: &str) -> Executable {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        serde_json::from_value(serde_json::json!(path.to_str().expect("utf-8"))).expect("exe")
    }

    fn inputs() -> Inputs {
        Inputs::from([(
            InputKey::new("APP_ENV").expect("key"),
            "prod; rm -rf /".into(),
        )])
    }

    fn web1() -> HostName {
        HostName::new("web-1".to_string()).expect("host")
    }

    #[tokio::test]
    async fn launch_passes_the_request_and_inputs_as_data_and_reads_the_servers() {
        let dir = tempfile::tempdir().expect("dir");
        // Echoes back what it got: stdin's `like` and the input, unexpanded.
        let exe = script(
            &dir,
            "launch",
            r#"read req; printf '%s' "$HANDOVER_INPUT_APP_ENV" > "$(dirname "$0")/env"; printf '%s' "$req" > "$(dirname "$0")/req"
echo '[{"name":"web-9","address":"127.0.1.9:7443","app":"127.0.1.9:80"}]'"#,
        );
        let got = launch(&exe, &web1(), 1, &inputs(), None, Duration::from_secs(10))
            .await
            .expect("launched");
        assert_eq!(got[0].name.as_str(), "web-9");
        let env = std::fs::read_to_string(dir.path().join("env")).expect("env");
        assert_eq!(env, "prod; rm -rf /");
        let req: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("req")).expect("req"))
                .expect("json");
        assert_eq!(req["like"], "web-1");
        assert_eq!(req["count"], 1);
        assert_eq!(req["inputs"]["APP_ENV"], "prod; rm -rf /");
        assert!(req.get("join").is_none(), "no join unless enrolling: {req}");
        let join = LaunchJoin {
            ca_hash: format!("sha256:{}", "ab".repeat(32)),
            tokens: vec!["abc123.0123456789abcdef".into()],
        };
        launch(
            &exe,
            &web1(),
            1,
            &inputs(),
            Some(&join),
            Duration::from_secs(10),
        )
        .await
        .expect("launched");
        let req: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("req")).expect("req"))
                .expect("json");
        assert_eq!(req["join"]["ca_hash"], join.ca_hash.as_str());
        assert_eq!(req["join"]["tokens"][0], "abc123.0123456789abcdef");
        assert!(!format!("{join:?}").contains("0123456789abcdef"));
    }

    #[tokio::test]
    async fn a_failing_hanging_or_garbled_provider_is_a_clear_error_naming_it_and_the_step() {
        let dir = tempfile::tempdir().expect("dir");
        let failing = script(&dir, "fail", "echo 'quota exceeded in zone b' >&2; exit 3");
        let err = launch(
            &failing,
            &web1(),
            1,
            &inputs(),
            None,
            Duration::from_secs(10),
        )
        .await
        .expect_err("fails")
        .to_string();
        assert!(
            err.contains("provider launch")
                && err.contains("fail")
                && err.contains("quota exceeded"),
            "{err}"
        );
        let hanging = script(&dir, "hang", "exec sleep 30");
        let err = array(
            &hanging,
            ArrayCommand::Disable,
            &inputs(),
            Duration::from_millis(300),
        )
        .await
        .expect_err("times out")
        .to_string();
        assert!(
            err.contains("provider array disable") && err.contains("did not finish"),
            "{err}"
        );
        let garbled = script(&dir, "garbled", "echo 'launched ok!'");
        let err = launch(
            &garbled,
            &web1(),
            1,
            &inputs(),
            None,
            Duration::from_secs(10),
        )
        .await
        .expect_err("malformed")
        .to_string();
        assert!(
            err.contains("provider launch")
                && err.contains("no JSON list")
                && err.contains("launched ok!"),
            "{err}"
        );
        let short = script(&dir, "short", "echo '[]'");
        let err = launch(&short, &web1(), 2, &inputs(), None, Duration::from_secs(10))
            .await
            .expect_err("too few")
            .to_string();
        assert!(err.contains("0 server(s) where 2"), "{err}");
    }

    #[tokio::test]
    async fn a_provider_echoing_its_stdin_does_not_put_a_join_token_in_the_error() {
        let dir = tempfile::tempdir().expect("dir");
        let join = LaunchJoin {
            ca_hash: format!("sha256:{}", "ab".repeat(32)),
            tokens: vec!["abc123.0123456789abcdef".into()],
        };
        let failing = script(&dir, "echo-fail", "cat >&2; exit 1");
        let err = launch(
            &failing,
            &web1(),
            1,
            &inputs(),
            Some(&join),
            Duration::from_secs(10),
        )
        .await
        .expect_err("fails")
        .to_string();
        assert!(err.contains("abc123.<secret>"), "{err}");
        assert!(!err.contains("0123456789abcdef"), "{err}");
        let garbled = script(&dir, "echo-out", "cat");
        let err = launch(
            &garbled,
            &web1(),
            1,
            &inputs(),
            Some(&join),
            Duration::from_secs(10),
        )
        .await
        .expect_err("malformed")
        .to_string();
        assert!(!err.contains("0123456789abcdef"), "{err}");
    }

    #[tokio::test]
    async fn terminate_gets_the_names_as_arguments() {
        let dir = tempfile::tempdir().expect("dir");
        let exe = script(&dir, "term", r#"echo "$@" > "$(dirname "$0")/args""#);
        terminate(&exe, &[web1()], &inputs(), Duration::from_secs(10))
            .await
            .expect("terminated");
        let args = std::fs::read_to_string(dir.path().join("args")).expect("args");
        assert_eq!(args.trim(), "web-1");
    }
}
