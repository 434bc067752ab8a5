//! `handover-provider-aws`: Handover's provider for AWS (issue 15). The surge
//! runbook's "clone a server", "terminate", "disable / update / enable the
//! server array" on EC2 and an Auto Scaling group, speaking the coordinator's
//! command-provider contract:
//!
//! - `launch`: stdin `{"like", "count", "inputs", "join"?}`, stdout a JSON list of
//!   `{"name", "address", "app"}`;
//! - `terminate NAME...`;
//! - `array disable|update|enable`.
//!
//! Settings come from the plan's `[aws]` section: as JSON in
//! `HANDOVER_AWS_SETTINGS` when the coordinator runs it, or `--plan FILE` by hand.
//! It is its own crate so that neither the agent nor the coordinator carries the
//! AWS SDK. See docs/aws.md.

mod array;
mod clients;
mod errors;
mod instances;
mod launch;
mod settings;
mod tags;
mod terminate;
mod userdata;

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use handover_common::names::HostName;

/// Clones, terminates and holds still EC2 servers for a Handover surge rollout.
#[derive(Parser)]
#[command(name = "handover-provider-aws", version)]
struct Cli {
    /// Read the settings from this surge plan's [aws] section (by hand; the
    /// coordinator passes them in HANDOVER_AWS_SETTINGS).
    #[arg(long, value_name = "PLAN.toml")]
    plan: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Launch clones of a server: stdin {"like": HOST, "count": N, "inputs": {...},
    /// "join": {"ca_hash": ..., "tokens": [...]}}; stdout [{"name", "address", "app"}].
    Launch,
    /// Terminate servers of this fleet by name (or instance id).
    Terminate {
        /// The servers.
        #[arg(required = true)]
        names: Vec<HostName>,
    },
    /// The Auto Scaling group ([aws] group).
    Array {
        /// disable, update or enable.
        action: ArrayAction,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ArrayAction {
    /// Suspend the processes that launch, terminate or replace instances.
    Disable,
    /// A new launch template version with the revision and inputs, made the group's.
    Update,
    /// Resume the processes `disable` suspended.
    Enable,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("handover-provider-aws: cannot start: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("handover-provider-aws: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = settings::load(cli.plan.as_deref())?;
    let revision = settings.revision.clone();
    match cli.command {
        Command::Launch => {
            // Read stdin before any call: a bad request changes nothing.
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading stdin")?;
            let request = launch::LaunchRequest::parse(&text)?;
            let aws = clients::connect(settings.aws).await?;
            let servers = launch::launch(&aws, &request, revision.as_deref()).await?;
            println!("{}", serde_json::to_string(&servers)?);
            Ok(())
        }
        Command::Terminate { names } => {
            let aws = clients::connect(settings.aws).await?;
            terminate::terminate(&aws, &names).await
        }
        Command::Array { action } => {
            let aws = clients::connect(settings.aws).await?;
            match action {
                ArrayAction::Disable => array::disable(&aws).await,
                ArrayAction::Update => array::update(&aws, revision.as_deref()).await,
                ArrayAction::Enable => array::enable(&aws).await,
            }
        }
    }
}
