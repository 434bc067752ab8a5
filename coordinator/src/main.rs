//! `handover`: the coordinator's command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use handover::cmd;
use handover::config::{CoordinatorConfig, DEFAULT_CONFIG};

/// Zero-downtime upgrades of application servers behind HAProxy.
#[derive(Parser)]
#[command(name = "handover", version, about, long_about = None,
    after_help = handover_common::clidocs::after_help("handover"))]
struct Cli {
    /// Coordinator config (inventory and credentials).
    #[arg(long, global = true, default_value = DEFAULT_CONFIG, env = "HANDOVER_CONFIG")]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Manage the private CA and issue certificates.
    #[command(subcommand)]
    Ca(cmd::ca::CaCommand),
    /// Give a host waiting with a join token (`handover-agent join`) its certificate.
    Enroll {
        /// The host's inventory name (its certificate's name).
        host: handover_common::names::HostName,
        /// Where its agent listens: IP or IP:PORT (default port 7443).
        #[arg(long, value_parser = parse_agent_address)]
        address: std::net::SocketAddr,
        /// The CA directory holding the token store.
        #[arg(long)]
        dir: PathBuf,
        /// How long to keep dialling a host that is still booting.
        #[arg(long, default_value = "2m", value_parser = handover_common::duration::parse)]
        wait: std::time::Duration,
    },
    /// Show every host (or those named): reachable, version, uptime, load, memory.
    Status {
        /// Hosts to ask (default: the whole inventory).
        hosts: Vec<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Give each host this long to complete its handshake (retries included) and
        /// this long to answer; a host silent past it is reported unreachable, and
        /// never holds back the others' rows.
        #[arg(long, default_value = "5s", value_parser = handover_common::duration::parse)]
        timeout: std::time::Duration,
    },
    /// Attach app hosts to every load balancer (or those named) and wait until each reports them UP after a fresh health check.
    Attach {
        /// App hosts to attach.
        #[arg(required = true)]
        hosts: Vec<String>,
        /// Only these load balancers (default: every `lb` host).
        #[arg(long = "lb")]
        lbs: Vec<String>,
        /// How long to wait for UP (default: each agent's attach_timeout).
        #[arg(long, value_parser = handover_common::duration::parse)]
        timeout: Option<std::time::Duration>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Detach app hosts from the load balancers; refused while they still have sessions.
    Detach {
        /// App hosts to detach.
        #[arg(required = true)]
        hosts: Vec<String>,
        /// Only these load balancers (default: every `lb` host).
        #[arg(long = "lb")]
        lbs: Vec<String>,
        /// Cut remaining sessions instead of refusing.
        #[arg(long)]
        force: bool,
        /// How long to wait for sessions to end (default: each agent's detach_timeout).
        #[arg(long, value_parser = handover_common::duration::parse)]
        timeout: Option<std::time::Duration>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Set app hosts' admin state in the load balancers: HOST... ready|drain|maint.
    LbState {
        /// App hosts, then the state.
        #[arg(required = true, num_args = 2.., value_name = "HOST... STATE")]
        args: Vec<String>,
        /// Only these load balancers (default: every `lb` host).
        #[arg(long = "lb")]
        lbs: Vec<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Take hosts out of rotation (remove their health-check file); --wait until idle.
    Drain {
        /// Hosts to drain.
        #[arg(required = true)]
        hosts: Vec<String>,
        /// Wait until no session is left on every host, showing the count as it falls.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this long (the hosts stay drained).
        #[arg(long, default_value = "10m", value_parser = handover_common::duration::parse)]
        timeout: std::time::Duration,
        /// With --wait: idle means no session for this long (default: each agent's quiet_period).
        #[arg(long, value_parser = handover_common::duration::parse)]
        quiet: Option<std::time::Duration>,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Put hosts back in rotation: restore their health-check file byte for byte.
    Undrain {
        /// Hosts to undrain.
        #[arg(required = true)]
        hosts: Vec<String>,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Apply a revision on hosts: fetch, new release, hooks, switch (no LB steps).
    Deploy {
        /// Hosts to deploy to.
        #[arg(required = true)]
        hosts: Vec<String>,
        /// Repository URL, exactly as in the agents' allowed_repos.
        #[arg(long)]
        repo: handover_common::names::RepoUrl,
        /// Branch, tag or commit id.
        #[arg(long = "ref", allow_hyphen_values = true)]
        rev: handover_common::names::Revision,
        /// An agent hook to run in the new release before the switch.
        #[arg(long = "hook")]
        hooks: Vec<handover_common::names::HookName>,
        /// Switch hosts even while in service (UP in a load balancer, health-check
        /// file present).
        #[arg(long, conflicts_with = "drain")]
        force: bool,
        /// The safe path for hosts in service, one at a time: drain, wait for
        /// sessions to end, deploy, undrain.
        #[arg(long)]
        drain: bool,
        /// With --drain: how long to wait for a host's sessions to end.
        #[arg(long, default_value = "10m", value_parser = handover_common::duration::parse)]
        drain_timeout: std::time::Duration,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List a host's releases.
    Releases {
        /// The host.
        host: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Switch hosts back to their previous release (or a named one).
    #[command(group = clap::ArgGroup::new("target").required(true).args(["previous", "release"]))]
    Activate {
        /// Hosts to switch.
        #[arg(required = true)]
        hosts: Vec<String>,
        /// The release that was current before the last switch (skipping releases
        /// that failed a check).
        #[arg(long)]
        previous: bool,
        /// A release by name (see `handover releases HOST`).
        #[arg(long)]
        release: Option<handover_common::names::ReleaseName>,
        /// Switch hosts even while in service (UP in a load balancer, health-check
        /// file present).
        #[arg(long, conflicts_with = "drain")]
        force: bool,
        /// The safe path for hosts in service, one at a time: drain, wait for
        /// sessions to end, activate, undrain.
        #[arg(long)]
        drain: bool,
        /// With --drain: how long to wait for a host's sessions to end.
        #[arg(long, default_value = "10m", value_parser = handover_common::duration::parse)]
        drain_timeout: std::time::Duration,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run one of the agents' [hooks] on hosts: `handover hook HOST... NAME`.
    #[command(override_usage = "handover hook [--json] [--input KEY=VALUE]... HOST... NAME")]
    Hook {
        /// Hosts, then the hook's name.
        #[arg(required = true, num_args = 2.., value_name = "HOST_THEN_NAME")]
        args: Vec<String>,
        /// An input the hook gets as the environment variable HANDOVER_INPUT_KEY
        /// (repeatable; KEY in upper case, e.g. APP_ENV=production).
        #[arg(long = "input", value_name = "KEY=VALUE", value_parser = cmd::deploy::parse_input)]
        inputs: Vec<(handover_common::names::InputKey, String)>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Validate a rollout plan against the inventory and print its steps with the
    /// capacity (servers UP in every LB) after each.
    Plan {
        /// The plan file.
        plan: PathBuf,
        /// Do not ask the agents to resolve the revision (check the file only).
        #[arg(long)]
        offline: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a rollout plan: wave by wave, drain → wait → detach → deploy → verify → attach.
    Rollout {
        /// The plan file.
        plan: PathBuf,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
        /// Take the hosts even if a (stale) lease of another rollout holds them.
        #[arg(long)]
        break_lease: bool,
    },
    /// Finish a rollout that was interrupted (coordinator killed, SSH dropped).
    /// Refused while another process still runs it.
    Resume {
        /// The rollout id (default: the one unfinished rollout).
        rollout: Option<String>,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
        /// If another process still holds the rollout, wait until it is provably
        /// gone (its lock free on this bastion, its leases expired), then carry on.
        #[arg(long, conflicts_with = "break_lease")]
        takeover: bool,
        /// Take the hosts now even if another process's lease holds them.
        #[arg(long)]
        break_lease: bool,
        /// A surge rollout's migration was under way when its coordinator
        /// stopped, and you checked it finished: record it done (never run twice).
        #[arg(long)]
        migrated: bool,
    },
    /// Put the hosts of a rollout back on the release they had before it.
    Rollback {
        /// The rollout id (default: the newest rollout).
        rollout: Option<String>,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
        /// Take the hosts even if a (stale) lease of another rollout holds them.
        #[arg(long)]
        break_lease: bool,
    },
    /// List the rollouts in the journal.
    History {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one rollout's steps: what ran, when, and how it ended.
    Show {
        /// The rollout id.
        rollout: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Print where its time went instead: per wave, each step's time split into
        /// the waits the plan asked for, sessions ending and Handover's own time.
        #[arg(long)]
        timings: bool,
    },
    /// Deployment inputs, versioned: set, show, history, diff, export/import CSV, revert.
    #[command(subcommand)]
    Inputs(cmd::inputs::InputsCommand),
    /// Serve a read-only live page of the fleet and the current or last rollout.
    Web(handover::web::WebArgs),
    /// Move the journal between stores: export it as JSON lines, import an export.
    #[command(subcommand)]
    Journal(cmd::journal::JournalCommand),
}

/// The README, whose config reference the section-5 man pages are made from.
const README: &str = include_str!("../../README.md");

/// handover.toml(5) and handover-plan(5), for `handover generate man`.
fn file_pages() -> Vec<handover_common::clidocs::FilePage> {
    use handover_common::clidocs::{FilePage, markdown_section};
    let section = |heading: &str| markdown_section(README, heading).unwrap_or("").to_string();
    vec![
        FilePage {
            name: "handover.toml",
            about: "the Handover coordinator's credentials and inventory",
            source: "README.md, section \"### Coordinator: `handover.toml`\"",
            markdown: section("### Coordinator: `handover.toml`"),
            see_also: &["handover(1)", "handover-plan(5)", "agent.toml(5)"],
        },
        FilePage {
            name: "handover-plan",
            about: "a Handover rollout plan (any TOML file given to handover plan, rollout)",
            source: "README.md, section \"### Rollout plan\"",
            markdown: section("### Rollout plan"),
            see_also: &[
                "handover-plan(1)",
                "handover-rollout(1)",
                "handover.toml(5)",
            ],
        },
    ]
}

fn main() -> ExitCode {
    // `generate completions|man` for packaging; kept out of `Cli` so it stays out
    // of the completions and the man pages it writes (--help names it at its end).
    if let Some(code) = handover_common::clidocs::intercept::<Cli>(&file_pages()) {
        return code;
    }
    let cli = Cli::parse();
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("handover: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("handover: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `IP` or `IP:PORT` (the agent's default port when none is given).
fn parse_agent_address(text: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    text.parse::<std::net::IpAddr>()
        .map(|ip| std::net::SocketAddr::new(ip, handover_common::DEFAULT_PORT))
        .map_err(|_| format!("{text:?} is not an address: give IP or IP:PORT"))
}

/// Logs to stderr, warnings and up unless `HANDOVER_LOG` says otherwise; colour
/// only on a terminal.
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("HANDOVER_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(handover_common::stderr_wants_colour())
        .init();
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let load = || CoordinatorConfig::load(&cli.config);
    match cli.command {
        Command::Ca(command) => {
            cmd::ca::run(command)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status {
            hosts,
            json,
            timeout,
        } => cmd::status::run(&load()?, &hosts, json, timeout).await,
        Command::Journal(command) => cmd::journal::run(&load()?, command).await,
        Command::Enroll {
            host,
            address,
            dir,
            wait,
        } => cmd::enroll::run(&load()?, host, address, dir, wait).await,
        Command::Deploy {
            hosts,
            repo,
            rev,
            hooks,
            force,
            drain,
            drain_timeout,
            json,
        } => {
            let in_service = cmd::deploy::in_service(force, drain, drain_timeout);
            cmd::deploy::deploy(&load()?, &hosts, repo, rev, hooks, in_service, json).await
        }
        Command::Releases { host, json } => cmd::deploy::releases(&load()?, &host, json).await,
        Command::Activate {
            hosts,
            release,
            force,
            drain,
            drain_timeout,
            json,
            ..
        } => {
            let in_service = cmd::deploy::in_service(force, drain, drain_timeout);
            cmd::deploy::activate(&load()?, &hosts, release, in_service, json).await
        }
        Command::Hook { args, inputs, json } => {
            cmd::deploy::hook(&load()?, &args, inputs.into_iter().collect(), json).await
        }
        command @ (Command::Attach { .. } | Command::Detach { .. } | Command::LbState { .. }) => {
            run_lb(command, &load()?).await
        }
        Command::Drain {
            hosts,
            wait,
            timeout,
            quiet,
            json,
        } => {
            let options = cmd::drain::DrainOptions {
                wait,
                timeout,
                quiet,
                json,
            };
            cmd::drain::drain(&load()?, &hosts, &options).await
        }
        Command::Undrain { hosts, json } => cmd::drain::undrain(&load()?, &hosts, json).await,
        Command::Inputs(command) => cmd::inputs::run(&load()?, command),
        Command::Web(args) => {
            // Refused before the config is read: the flags alone decide.
            handover::web::check_args(&args)?;
            handover::web::run(load()?, args).await?;
            Ok(ExitCode::SUCCESS)
        }
        command => run_rollout(command, load).await,
    }
}

/// `attach`, `detach`, `lb-state`: runbook steps 11 and 14 by hand.
async fn run_lb(command: Command, config: &CoordinatorConfig) -> anyhow::Result<ExitCode> {
    match command {
        Command::Attach {
            hosts,
            lbs,
            timeout,
            json,
        } => cmd::lb::run(config, cmd::lb::Action::Attach, &hosts, &lbs, timeout, json).await,
        Command::Detach {
            hosts,
            lbs,
            force,
            timeout,
            json,
        } => {
            let action = cmd::lb::Action::Detach { force };
            cmd::lb::run(config, action, &hosts, &lbs, timeout, json).await
        }
        Command::LbState {
            mut args,
            lbs,
            json,
        } => {
            let state = args
                .pop()
                .unwrap_or_default()
                .parse()
                .map_err(anyhow::Error::msg)?;
            let action = cmd::lb::Action::State(state);
            cmd::lb::run(config, action, &args, &lbs, None, json).await
        }
        // `run` routes only the load-balancer commands here.
        _ => anyhow::bail!("internal error: not a load-balancer command"),
    }
}

/// `plan`, `rollout`, `resume`, `rollback`, `history`, `show`: the rollout engine.
async fn run_rollout(
    command: Command,
    load: impl Fn() -> anyhow::Result<CoordinatorConfig>,
) -> anyhow::Result<ExitCode> {
    match command {
        Command::Plan {
            plan,
            offline,
            json,
        } => cmd::rollout::plan(&load()?, &plan, offline, json).await,
        Command::Rollout {
            plan,
            yes,
            json,
            break_lease,
        } => cmd::rollout::rollout(load()?, &plan, yes, json, break_lease).await,
        Command::Resume {
            rollout,
            json,
            takeover,
            break_lease,
            migrated,
        } => {
            use cmd::rollout::Takeover;
            let takeover = match (takeover, break_lease) {
                (_, true) => Takeover::Break,
                (true, false) => Takeover::Wait,
                (false, false) => Takeover::Refuse,
            };
            cmd::rollout::resume(load()?, rollout.as_deref(), json, takeover, migrated).await
        }
        Command::Rollback {
            rollout,
            yes,
            json,
            break_lease,
        } => cmd::rollout::rollback(load()?, rollout.as_deref(), yes, json, break_lease).await,
        Command::History { json } => cmd::rollout::history(&load()?, json),
        Command::Show {
            rollout,
            json,
            timings: true,
        } => cmd::rollout::show_timings(&load()?, &rollout, json),
        Command::Show { rollout, json, .. } => cmd::rollout::show(&load()?, &rollout, json),
        // `run` routes every other command here.
        _ => anyhow::bail!("internal error: not a rollout command"),
    }
}
