//! The user data of a launched server when the coordinator sent join tokens:
//! a shell script (cloud-init runs it at first boot) that names the agent as the
//! provider reported it and starts `handover-agent join` with the server's own
//! single-use token. No key or certificate ever travels in user data: the agent
//! makes its key on the host and the coordinator issues its certificate.

use handover_common::join::CaHash;
use handover_common::names::HostName;
use handover_common::pki::tokens::JoinToken;

/// Where the AMI keeps the agent's config (the packages' default).
pub const AGENT_CONFIG: &str = "/etc/handover/agent.toml";

/// The script for server `name` with `token`, pinning the CA by `ca`.
///
/// Every value in it was validated by its type (a host name, a token of
/// `[a-z0-9.]`, `sha256:` and hex), so nothing needs shell quoting.
pub fn render(name: &HostName, token: &JoinToken, ca: &CaHash) -> String {
    format!(
        r#"#!/bin/sh
# Written by handover-provider-aws (docs/aws.md): enroll this server's agent as
# {name} with its single-use join token. The token is refused once used or expired.
set -eu
sed -i 's/^name *=.*/name = "{name}"/' {AGENT_CONFIG}
HANDOVER_JOIN_TOKEN={token} nohup handover-agent join --config {AGENT_CONFIG} --ca-hash {ca} >>/var/log/handover-agent-join.log 2>&1 &
"#,
        token = token.reveal(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_names_the_agent_and_runs_join_with_the_token_and_ca_hash() {
        let name = HostName::new("shop-0a1b2c3d").expect("name");
        let token: JoinToken = "abc123.0123456789abcdef".parse().expect("token");
        let ca: CaHash = format!("sha256:{}", "ab".repeat(32)).parse().expect("hash");
        let script = render(&name, &token, &ca);
        assert!(script.starts_with("#!/bin/sh\n"), "{script}");
        assert!(
            script.contains(
                r#"sed -i 's/^name *=.*/name = "shop-0a1b2c3d"/' /etc/handover/agent.toml"#
            ),
            "{script}"
        );
        assert!(
            script.contains(&format!(
                "HANDOVER_JOIN_TOKEN=abc123.0123456789abcdef nohup handover-agent join --config /etc/handover/agent.toml --ca-hash sha256:{}",
                "ab".repeat(32)
            )),
            "{script}"
        );
        // The shell must parse it.
        let out = std::process::Command::new("sh")
            .args(["-n", "-c", &script])
            .output()
            .expect("sh");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
