//! Servers a surge rollout's provider launches with join tokens (issue 15): the
//! test provider boots them as a cloud would with join user data — Apache and
//! `handover-agent join` (its token in the environment, the CA pinned by hash),
//! no certificate — and the coordinator enrolls them. Also: the switch that makes
//! the provider pin a wrong CA hash, the coordinator's `[enroll]` key, and a
//! fresh joining agent to replay a token with.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::agents::{Coordinator, bin};
use crate::apache::Apache;
use crate::ports::free_udp_port;
use crate::surge::{AppHostFiles, HostKit};
use crate::workdir::write_public;

/// The file in a launched host's directory holding what its "user data" got:
/// `HANDOVER_JOIN_TOKEN=...` and `CA_HASH=...` lines (mode 0600), as a cloud
/// keeps user data with the instance.
pub const USER_DATA: &str = "user-data";

/// `<provider dir>/misbehave/join` holding this makes the test provider start
/// its join agents pinning a CA hash that is not the CA's.
pub const WRONG_CA_HASH: &str = "wrong-ca-hash";

/// A CA hash no CA has.
const NOBODYS_CA_HASH: &str =
    "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// A running `handover-agent join` with no certificate yet; killed on drop
/// (the test provider forgets it instead: the host outlives the launch call).
pub struct JoinAgent {
    /// Inventory name.
    pub name: String,
    /// Its QUIC address.
    pub addr: SocketAddr,
    /// Its directory.
    pub home: PathBuf,
    /// Its log (stderr).
    pub log: PathBuf,
    child: Child,
}

impl JoinAgent {
    /// Writes `home/agent.toml` (credentials under `home/tls/`, none there yet,
    /// then `sections`) and starts `handover-agent join --ca-hash CA_HASH` with
    /// the token in `HANDOVER_JOIN_TOKEN`. Does not wait: it waits to be enrolled.
    pub fn start(
        home: &Path,
        name: &str,
        ip: Ipv4Addr,
        token: &str,
        ca_hash: &str,
        sections: &str,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(home)?;
        let addr = SocketAddr::new(IpAddr::V4(ip), free_udp_port(ip)?);
        let mut text = crate::config::AgentConfig {
            name: name.to_owned(),
            listen: addr,
            ca: home.join("tls/ca.pem"),
            cert: home.join("tls/agent.pem"),
            key: home.join("tls/agent.key"),
            state_dir: home.join("state"),
            control_socket: home.join("control.sock"),
        }
        .render();
        text.push_str(sections);
        let config = home.join("agent.toml");
        std::fs::write(&config, text)?;
        let log = home.join("agent.log");
        let child = Command::new(bin("handover-agent"))
            .arg("--config")
            .arg(&config)
            .args(["join", "--ca-hash", ca_hash])
            .env("HANDOVER_JOIN_TOKEN", token)
            .env("HANDOVER_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting handover-agent join")?;
        Ok(JoinAgent {
            name: name.to_owned(),
            addr,
            home: home.to_owned(),
            log,
            child,
        })
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (30 s at most) until it serves its control socket: enrolled and
    /// running. An agent that exits first is an error carrying its log.
    pub fn wait_serving(&mut self) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!("agent exited with {status}: {}", self.log_text());
            }
            if std::os::unix::net::UnixStream::connect(self.home.join("control.sock")).is_ok() {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        anyhow::bail!("agent never served after enrolling: {}", self.log_text())
    }

    /// Whether it holds a certificate.
    pub fn has_certificate(&self) -> bool {
        self.home.join("tls/agent.pem").exists()
    }

    /// Leaves the process running after this value is gone.
    pub fn detach(self) {
        std::mem::forget(self);
    }
}

impl Drop for JoinAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Boots app host `name` under `parent` as a cloud would from an image with
/// join user data: the same agent sections as the fixture's hosts, and
/// `handover-agent join` with `token` pinning `ca_hash` — no certificate and no
/// release yet (the rollout deploys one; [`serve_once_deployed`] starts its
/// Apache then). `<parent>/<name>/user-data` keeps the token, as a cloud keeps an
/// instance's user data.
pub fn start_joining_app_host(
    kit: &HostKit,
    parent: &Path,
    name: &str,
    ip: Ipv4Addr,
    token: &str,
    ca_hash: &str,
) -> anyhow::Result<(JoinAgent, AppHostFiles)> {
    let files = AppHostFiles::prepare(kit, parent, name, ip)?;
    let user_data = files.home.join(USER_DATA);
    write_public(
        &user_data,
        &format!("HANDOVER_JOIN_TOKEN={token}\nCA_HASH={ca_hash}\n"),
    )?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&user_data, std::fs::Permissions::from_mode(0o600))?;
    let agent = JoinAgent::start(&files.home, name, ip, token, ca_hash, &files.agent_sections)?;
    Ok((agent, files))
}

/// Waits (up to `within`) until a release is deployed on the host (`www/current`
/// exists: Apache refuses a missing DocumentRoot), then starts its Apache — as
/// the image's web server would come up serving the deployed app.
pub fn serve_once_deployed(files: &AppHostFiles, within: Duration) -> anyhow::Result<Apache> {
    let deadline = Instant::now() + within;
    while !files.root.join("current").is_dir() {
        if Instant::now() > deadline {
            anyhow::bail!(
                "{}: no release deployed in {} within {within:?}",
                files.name,
                files.root.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    files.start_apache()
}

/// `<provider dir>/misbehave/join` holding this makes the test provider give
/// its join agents a token of the CA that the coordinator did not make for the
/// launch (made with `handover ca token create`, as an operator would).
pub const FOREIGN_TOKEN: &str = "foreign-token";

/// What `<provider dir>/misbehave/join` says (empty: behave).
fn join_switch(provider_dir: &Path) -> String {
    std::fs::read_to_string(provider_dir.join("misbehave/join"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// The CA hash the provider pins: `ca_hash`, or one no CA has when the switch
/// says [`WRONG_CA_HASH`].
pub fn pinned_hash(provider_dir: &Path, ca_hash: &str) -> String {
    if join_switch(provider_dir) == WRONG_CA_HASH {
        NOBODYS_CA_HASH.to_owned()
    } else {
        ca_hash.to_owned()
    }
}

/// The token the provider hands a server: `token`, or a fresh one of the CA in
/// `pki_dir` that the launch did not carry when the switch says
/// [`FOREIGN_TOKEN`].
pub fn handed_token(provider_dir: &Path, pki_dir: &Path, token: &str) -> anyhow::Result<String> {
    if join_switch(provider_dir) != FOREIGN_TOKEN {
        return Ok(token.to_owned());
    }
    let out = crate::agents::handover(&[
        "ca",
        "token",
        "create",
        "--dir",
        &pki_dir.to_string_lossy(),
        "--json",
    ])?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    json["token"]
        .as_str()
        .map(str::to_owned)
        .context("`handover ca token create --json` printed no token")
}

/// Makes the test provider misbehave with its join agents from now on:
/// [`WRONG_CA_HASH`] or [`FOREIGN_TOKEN`].
pub fn join_misbehaves(provider_dir: &Path, how: &str) -> anyhow::Result<()> {
    let dir = provider_dir.join("misbehave");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("join"), how)?;
    Ok(())
}

/// The token in a launched host's user data.
pub fn user_data_token(host_dir: &Path) -> anyhow::Result<String> {
    let path = host_dir.join(USER_DATA);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    text.lines()
        .find_map(|l| l.strip_prefix("HANDOVER_JOIN_TOKEN="))
        .map(str::to_owned)
        .with_context(|| format!("{} holds no HANDOVER_JOIN_TOKEN", path.display()))
}

/// Adds `[enroll] ca_dir = PKI` (and `wait`) to the coordinator's handover.toml.
pub fn enable_enroll(coordinator: &Coordinator, pki_dir: &Path, wait: &str) -> anyhow::Result<()> {
    let mut text = std::fs::read_to_string(&coordinator.config)?;
    text.push_str(&format!(
        "\n[enroll]\nca_dir = {:?}\nwait = {wait:?}\n",
        pki_dir.display().to_string()
    ));
    std::fs::write(&coordinator.config, text)?;
    Ok(())
}
