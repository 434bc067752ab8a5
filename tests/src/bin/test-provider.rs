//! The surge tests' command provider (issue 12), implementing the provider
//! contract the README documents, on loopback:
//!
//! * `launch`: stdin `{"like": HOST, "count": N, "inputs": {...}}`; starts N app
//!   hosts (Apache + agent with a certificate from the test CA, v1 deployed) on
//!   free 127.0.1.N addresses, like the fixture's own ([`start_app_host`]); stdout
//!   a JSON list of `{"name", "address", "app"}`. The hosts keep running after
//!   this process exits. With `"join": {"ca_hash", "tokens"}` on stdin, each host
//!   boots as a cloud boots one with join user data instead: Apache and
//!   `handover-agent join` with one of the tokens, no certificate, no release
//!   ([`start_joining_app_host`]), and Apache once a release is deployed (a
//!   detached `serve-when-deployed HOST_DIR` of this program); `misbehave/join`
//!   holding `wrong-ca-hash` makes them pin a CA hash that is not the CA's,
//!   `foreign-token` gives them a token of the CA that the launch did not carry.
//! * `terminate NAME...`: stops those hosts (names also accepted as a JSON list on
//!   stdin when no argument is given); terminating one twice is fine. The
//!   fixture's own app hosts are this cloud's too: they can be terminated.
//! * `array disable|enable|update`: records the call, nothing else.
//!
//! Every call is appended to `<state>/calls.log`, which the tests read. A file
//! `<state>/misbehave/<op>` holding `hang`, `fail` or `garbage` makes that
//! operation hang, exit 3 with a message on stderr, or print non-JSON.
//!
//! `<state>` is the directory the surge fixture made (`--state DIR`): it holds
//! `kit.json`, what every app host is built from.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use handover_tests::enroll::{
    handed_token, pinned_hash, serve_once_deployed, start_joining_app_host,
};
use handover_tests::ports::host_ip;
use handover_tests::surge::{
    AppHostFiles, HostKit, LaunchedHost, PROVIDER_FIRST_IP, PROVIDER_LAST_IP, start_app_host,
    stop_processes_under,
};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

const USAGE: &str = "usage: handover-test-provider --state DIR (launch | terminate NAME... | array disable|enable|update | serve-when-deployed HOST_DIR)";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("handover-test-provider: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run() -> anyhow::Result<()> {
    // The coordinator runs this for a fleet test that holds the fleet lock.
    handover_tests::fleet::lock_held_by_parent();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (state, rest) = match args.as_slice() {
        [flag, dir, rest @ ..] if flag == "--state" => (PathBuf::from(dir), rest),
        _ => bail!("{USAGE}"),
    };
    let Some((op, names)) = rest.split_first() else {
        bail!("{USAGE}");
    };
    match op.as_str() {
        "launch" => {
            let mut stdin = String::new();
            std::io::stdin().read_to_string(&mut stdin)?;
            // Not quoted back: it may carry join tokens.
            let request: LaunchRequest =
                serde_json::from_str(&stdin).context("launch: stdin is not the launch request")?;
            // The tokens are secrets: the log says only how many came.
            let join = request
                .join
                .as_ref()
                .map(|j| format!(" join={}", j.tokens.len()))
                .unwrap_or_default();
            record(
                &state,
                &format!(
                    "launch like={} count={} inputs={}{join}",
                    request.like,
                    request.count,
                    request.inputs.keys().cloned().collect::<Vec<_>>().join(",")
                ),
            )?;
            misbehave(&state, "launch")?;
            if let Some(j) = &request.join
                && j.tokens.len() != request.count
            {
                bail!(
                    "launch: {} join token(s) for {} server(s): one per server is the contract",
                    j.tokens.len(),
                    request.count
                );
            }
            // One at a time: launched.json and the addresses are shared.
            let _lock = lock(&state)?;
            let launched = launch(&state, request.count, request.join.as_ref())?;
            println!("{}", serde_json::to_string(&launched)?);
        }
        "terminate" => {
            let names = if names.is_empty() {
                let mut stdin = String::new();
                std::io::stdin().read_to_string(&mut stdin)?;
                serde_json::from_str(&stdin).with_context(|| {
                    format!(
                        "terminate: no names as arguments, and stdin is no JSON list: {stdin:?}"
                    )
                })?
            } else {
                names.to_vec()
            };
            record(&state, &format!("terminate {}", names.join(" ")))?;
            misbehave(&state, "terminate")?;
            let _lock = lock(&state)?;
            terminate(&state, &names)?;
        }
        "array" => {
            let [command] = names else {
                bail!("{USAGE}");
            };
            if !["disable", "enable", "update"].contains(&command.as_str()) {
                bail!("array: unknown command {command:?}; {USAGE}");
            }
            record(&state, &format!("array {command}"))?;
            misbehave(&state, "array")?;
        }
        "serve-when-deployed" => {
            let [dir] = names else {
                bail!("{USAGE}");
            };
            let path = Path::new(dir).join("apache.json");
            let files: AppHostFiles = serde_json::from_str(
                &std::fs::read_to_string(&path)
                    .with_context(|| format!("read {}", path.display()))?,
            )?;
            let _apache = serve_once_deployed(&files, std::time::Duration::from_secs(900))?;
            // Serves until terminate (or the fixture) stops this process and Apache.
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
        other => bail!("unknown operation {other:?}; {USAGE}"),
    }
    Ok(())
}

/// `launch`'s stdin.
#[derive(Deserialize)]
struct LaunchRequest {
    like: String,
    count: usize,
    #[serde(default)]
    inputs: BTreeMap<String, String>,
    /// Present when the coordinator enrolls the servers it launches.
    #[serde(default)]
    join: Option<Join>,
}

/// `launch`'s `join`: the CA hash to pin and one single-use token per server.
#[derive(Deserialize)]
struct Join {
    ca_hash: String,
    tokens: Vec<String>,
}

/// One entry of `launch`'s stdout.
#[derive(Serialize)]
struct Launched {
    name: String,
    address: String,
    app: std::net::SocketAddr,
}

fn launch(state: &Path, count: usize, join: Option<&Join>) -> anyhow::Result<Vec<Launched>> {
    let kit = HostKit::load(state)?;
    let mut all = LaunchedHost::load_all(state)?;
    let parent = state.join("hosts");
    std::fs::create_dir_all(&parent)?;
    let mut out = Vec::new();
    for i in 0..count {
        let used: Vec<String> = all.iter().map(|h| h.name.clone()).collect();
        let n = (PROVIDER_FIRST_IP..=PROVIDER_LAST_IP)
            .find(|n| !used.contains(&format!("web-{n}")))
            .context("no free 127.0.1.N left for a new host")?;
        let name = format!("web-{n}");
        let (address, app) = match join {
            Some(j) => {
                let hash = pinned_hash(state, &j.ca_hash);
                let token = handed_token(state, &kit.pki, &j.tokens[i])?;
                let (agent, files) =
                    start_joining_app_host(&kit, &parent, &name, host_ip(n), &token, &hash)?;
                serve_when_deployed(state, &files)?;
                let out = (
                    agent.addr.to_string(),
                    std::net::SocketAddr::from((files.ip, files.port)),
                );
                // Outlives this process, as below.
                agent.detach();
                out
            }
            None => {
                let host = start_app_host(&kit, &parent, &name, host_ip(n))?;
                let out = (host.agent.addr.to_string(), host.apache.addr());
                // The host outlives this process: its Apache and agent are not
                // stopped here (terminate, or the fixture's drop, stops them).
                std::mem::forget(host);
                out
            }
        };
        let entry = LaunchedHost {
            name: name.clone(),
            address,
            app,
            dir: parent.join(&name),
            terminated: false,
        };
        out.push(Launched {
            name,
            address: entry.address.clone(),
            app: entry.app,
        });
        all.push(entry);
        LaunchedHost::save_all(state, &all)?;
    }
    Ok(out)
}

/// Starts `serve-when-deployed` for a joining host, detached: its Apache comes
/// up once the rollout deployed a release there.
fn serve_when_deployed(state: &Path, files: &AppHostFiles) -> anyhow::Result<()> {
    std::fs::write(
        files.home.join("apache.json"),
        serde_json::to_string_pretty(files)?,
    )?;
    let log = std::fs::File::create(files.home.join("serve-when-deployed.log"))?;
    std::process::Command::new(std::env::current_exe()?)
        .arg("--state")
        .arg(state)
        .arg("serve-when-deployed")
        .arg(&files.home)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting serve-when-deployed")?;
    Ok(())
}

fn terminate(state: &Path, names: &[String]) -> anyhow::Result<()> {
    let mut all = LaunchedHost::load_all(state)?;
    let fleet_hosts = HostKit::load(state)?.fleet_hosts;
    for name in names {
        // The fixture's own app servers (the old ones, after a handover).
        if let Some(dir) = fleet_hosts.as_ref().map(|d| d.join(name))
            && !all.iter().any(|h| &h.name == name)
            && valid_host_dir(name)
            && dir.is_dir()
        {
            stop_processes_under(&dir)?;
            continue;
        }
        let Some(host) = all.iter_mut().find(|h| &h.name == name) else {
            bail!("terminate: {name} was not launched by this provider");
        };
        stop_processes_under(&host.dir)?;
        host.terminated = true;
        LaunchedHost::save_all(state, &all)?;
    }
    Ok(())
}

/// A name that is one directory (no `/`, not `.` or `..`).
fn valid_host_dir(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/')
}

/// Appends one line to `calls.log`.
fn record(state: &Path, line: &str) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(state.join("calls.log"))?;
    writeln!(f, "{line}")?;
    Ok(())
}

/// Misbehaves as `<state>/misbehave/<op>` says, if it exists.
fn misbehave(state: &Path, op: &str) -> anyhow::Result<()> {
    let Ok(how) = std::fs::read_to_string(state.join("misbehave").join(op)) else {
        return Ok(());
    };
    match how.trim() {
        "hang" => {
            std::thread::sleep(std::time::Duration::from_secs(3600));
            Ok(())
        }
        "fail" => {
            eprintln!("test provider: {op} failed on purpose (the fixture asked it to)");
            std::process::exit(3);
        }
        "garbage" => {
            println!("this is not JSON {{");
            std::process::exit(0);
        }
        other => bail!("unknown misbehaviour {other:?} for {op}"),
    }
}

fn lock(state: &Path) -> anyhow::Result<Flock<std::fs::File>> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(state.join("provider.lock"))?;
    Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| anyhow::anyhow!("flock: {e}"))
}
