//! Where a surge rollout's new servers come from, and where the old ones go:
//! external executables with a JSON contract ([`command`]), or the inventory's
//! standby pool ([`standby`]).

pub mod aws;
pub mod command;
pub mod standby;

use serde::{Deserialize, Serialize};

use handover_common::names::HostName;

/// A server a provider launched: what the coordinator needs to dial its agent
/// and to attach it to the load balancers (`launch`'s stdout, one per server).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Launched {
    /// Its name: must equal the name in its agent's certificate.
    pub name: HostName,
    /// Its agent's address, "HOST:PORT".
    pub address: String,
    /// The app server as the load balancers reach it, "ADDR:PORT".
    pub app: std::net::SocketAddr,
}

/// What the server array is told (runbook steps 10, 15, 16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArrayCommand {
    /// Stop autoscaling while the servers are swapped.
    Disable,
    /// Point the array's template at the new servers.
    Update,
    /// Autoscaling back on.
    Enable,
}

impl ArrayCommand {
    /// The argument the `array` executable gets.
    pub fn as_str(self) -> &'static str {
        match self {
            ArrayCommand::Disable => "disable",
            ArrayCommand::Update => "update",
            ArrayCommand::Enable => "enable",
        }
    }
}
