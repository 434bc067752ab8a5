//! `handover-agent`: the daemon (`run`) and the local operator's commands, which
//! talk to the running daemon through its control socket.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use handover_agent::Agent;
use handover_agent::config::{AgentConfig, DEFAULT_CONFIG};
use handover_agent::control::{self, ControlSocket};
use handover_agent::deploy;
use handover_agent::server::QuicServer;
use handover_common::proto::{Reply, Request};

/// The Handover agent: the local authority on one host.
#[derive(Parser)]
#[command(name = "handover-agent", version, about, long_about = None,
    after_help = handover_common::clidocs::after_help("handover-agent"))]
struct Cli {
    /// Agent config file.
    #[arg(long, global = true, default_value = DEFAULT_CONFIG, env = "HANDOVER_AGENT_CONFIG")]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: serve coordinators over QUIC and operators on the control socket.
    Run,
    /// Show this host's state, asked of the running daemon.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Take this host out of rotation: remove its health-check file (idempotent).
    Drain {
        /// Then wait until no session is left, printing the count as it falls.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this long (the host stays drained).
        #[arg(long, default_value = "10m", value_parser = handover_common::duration::parse)]
        timeout: std::time::Duration,
        /// With --wait: idle means no session for this long (default: `[app] quiet_period`).
        #[arg(long, value_parser = handover_common::duration::parse)]
        quiet: Option<std::time::Duration>,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Put this host back in rotation: restore its health-check file byte for byte.
    Undrain {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Apply a revision: fetch, export a new release, run hooks, switch `current`.
    Deploy {
        /// Repository URL, exactly as in [deploy] allowed_repos.
        #[arg(long)]
        repo: handover_common::names::RepoUrl,
        /// Branch, tag or commit id.
        #[arg(long = "ref", allow_hyphen_values = true)]
        rev: handover_common::names::Revision,
        /// An agent hook (from [hooks]) to run in the new release before the switch.
        #[arg(long = "hook")]
        hooks: Vec<handover_common::names::HookName>,
        /// Switch even while this host is in service (health-check file present);
        /// the safe way is `drain --wait`, deploy, `undrain`.
        #[arg(long)]
        force: bool,
    },
    /// List the releases on this host.
    Releases {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Switch `current` to another release (rollback).
    #[command(group = clap::ArgGroup::new("target").required(true).args(["release", "previous"]))]
    Activate {
        /// The release to switch to (see `releases`).
        release: Option<handover_common::names::ReleaseName>,
        /// Switch back to the release that was current before the last switch
        /// (skipping releases that failed a check).
        #[arg(long)]
        previous: bool,
        /// Switch even while this host is in service (health-check file present);
        /// the safe way is `drain --wait`, activate, `undrain`.
        #[arg(long)]
        force: bool,
    },
    /// Run one of this agent's [hooks] by name.
    Hook {
        /// The hook's name.
        name: handover_common::names::HookName,
    },
    /// Enroll with a join token, then run the daemon: make this host's key, wait
    /// for a coordinator of the pinned CA to issue its certificate (`handover
    /// enroll`), write it, serve. On a host already enrolled, just run.
    Join {
        /// The join token, ID.SECRET, from `handover ca token create` (or the
        /// HANDOVER_JOIN_TOKEN environment variable, which `ps` does not show).
        #[arg(long, env = "HANDOVER_JOIN_TOKEN", hide_env_values = true)]
        token: handover_common::pki::tokens::JoinToken,
        /// The CA's hash, sha256:..., from `handover ca token create`.
        #[arg(long)]
        ca_hash: handover_common::join::CaHash,
    },
}

/// The README and the HAProxy guide, whose config reference and haproxy.cfg the
/// agent.toml(5) man page is made from.
const README: &str = include_str!("../../README.md");
const HAPROXY_GUIDE: &str = include_str!("../../docs/haproxy.md");

/// agent.toml(5), for `handover-agent generate man`.
fn file_pages() -> Vec<handover_common::clidocs::FilePage> {
    use handover_common::clidocs::{FilePage, markdown_section};
    let keys = markdown_section(README, "### Agent: `/etc/handover/agent.toml`").unwrap_or("");
    let lb = markdown_section(HAPROXY_GUIDE, "## A complete haproxy.cfg").unwrap_or("");
    let markdown = if keys.is_empty() || lb.is_empty() {
        String::new()
    } else {
        format!("{keys}\n#### Load-balancer hosts: `[haproxy]` and haproxy.cfg\n\n{lb}")
    };
    vec![FilePage {
        name: "agent.toml",
        about: "the Handover agent's configuration, /etc/handover/agent.toml",
        source: "README.md \"### Agent: `/etc/handover/agent.toml`\" and docs/haproxy.md \"## A complete haproxy.cfg\"",
        markdown,
        see_also: &["handover-agent(1)", "handover.toml(5)", "handover-plan(5)"],
    }]
}

fn main() -> ExitCode {
    // `generate completions|man` for packaging; kept out of `Cli` so it stays out
    // of the completions and the man pages it writes (--help names it at its end).
    if let Some(code) = handover_common::clidocs::intercept::<Cli>(&file_pages()) {
        return code;
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("handover-agent: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run_command(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("handover-agent: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `handover-agent status`: what the running agent reports about this host.
async fn print_status(config: &AgentConfig, json: bool) -> anyhow::Result<()> {
    let reply = control::call(&config.control_socket, Request::Status, |_| {}).await?;
    let Reply::Status(report) = reply else {
        anyhow::bail!("the agent answered status with {reply:?}");
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("name      {}", report.name);
        println!("version   {}", report.version);
        println!("uptime    {}s", report.uptime_secs);
        println!(
            "load      {:.2} {:.2} {:.2}",
            report.host.load[0], report.host.load[1], report.host.load[2]
        );
        println!(
            "memory    {} / {} MiB (agent RSS {} KiB)",
            report.host.memory_used >> 20,
            report.host.memory_total >> 20,
            report.host.agent_rss >> 10
        );
        if let Some(drain) = &report.drain {
            print!("{}", handover_agent::drain::cli::status_lines(drain));
        }
        if let Some(lb) = &report.lb {
            print!("{}", handover_agent::haproxy::cli::status_lines(lb));
        }
    }
    Ok(())
}

async fn run_command(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run => {
            init_logging();
            run_daemon(&cli.config).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json } => {
            let config = AgentConfig::load(&cli.config)?;
            print_status(&config, json).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Drain {
            wait,
            timeout,
            quiet,
            json,
        } => {
            let config = AgentConfig::load(&cli.config)?;
            handover_agent::drain::cli::drain(
                &config.control_socket,
                config.name.as_str(),
                wait,
                timeout,
                quiet,
                json,
            )
            .await
        }
        Command::Undrain { json } => {
            let config = AgentConfig::load(&cli.config)?;
            handover_agent::drain::cli::undrain(&config.control_socket, config.name.as_str(), json)
                .await
        }
        Command::Deploy {
            repo,
            rev,
            hooks,
            force,
        } => {
            let config = AgentConfig::load(&cli.config)?;
            deploy::cli::deploy(&config.control_socket, repo, rev, hooks, force).await
        }
        Command::Releases { json } => {
            let config = AgentConfig::load(&cli.config)?;
            deploy::cli::releases(&config.control_socket, json).await
        }
        Command::Activate { release, force, .. } => {
            let config = AgentConfig::load(&cli.config)?;
            deploy::cli::activate(&config.control_socket, release, force).await
        }
        Command::Hook { name } => {
            let config = AgentConfig::load(&cli.config)?;
            deploy::cli::hook(&config.control_socket, name).await
        }
        Command::Join { token, ca_hash } => {
            init_logging();
            handover_common::tls::install_crypto_provider();
            let config = AgentConfig::load(&cli.config)?;
            if handover_agent::join::enrolled(&config) {
                tracing::info!(
                    "already enrolled ({} exists): serving",
                    config.cert.display()
                );
            } else {
                handover_agent::join::join(&config, &token, ca_hash).await?;
            }
            run_daemon(&cli.config).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Logs to stderr; colour only on a terminal (journald and log files get plain
/// text) and never when `NO_COLOR` is set.
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("HANDOVER_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(handover_common::stderr_wants_colour())
        .init();
}

async fn run_daemon(config_path: &std::path::Path) -> anyhow::Result<()> {
    handover_common::tls::install_crypto_provider();
    let config = AgentConfig::load(config_path)?;
    explain_missing_credentials(&config);
    let creds = config.credentials()?;
    let stop_requested = wait_for_signal()?;
    config.ensure_state_dir()?;
    let agent = Agent::new(config);
    deploy::recover(&agent).context("cleaning up after an interrupted deploy")?;
    let quic = QuicServer::bind(&agent, creds)?;
    let control = ControlSocket::bind(
        &agent.config.control_socket,
        control::Access::new(agent.config.control_group.clone()),
    )
    .await?;
    let metrics = match &agent.config.metrics {
        Some(m) => Some(handover_agent::metrics::serve::MetricsServer::bind(m.listen).await?),
        None => None,
    };
    if let Some(m) = &metrics {
        let addr = m.local_addr().context("reading the metrics address")?;
        tracing::info!(%addr, "serving metrics on http://{addr}/metrics");
    }
    tracing::info!(
        name = %agent.config.name,
        listen = %quic.local_addr().context("reading the bound address")?,
        control = %agent.config.control_socket.display(),
        "agent ready"
    );
    // systemd (Type=notify) holds dependent units until the sockets are bound.
    notify_systemd(sd_notify::NotifyState::Ready);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let quic_task = tokio::spawn(quic.run(agent.clone(), stopped(stop_rx.clone())));
    let metrics_task =
        metrics.map(|m| tokio::spawn(m.run(agent.clone(), stopped(stop_rx.clone()))));
    let control_task = tokio::spawn(control.run(agent.clone(), stopped(stop_rx)));
    handover_agent::haproxy::spawn_reconciler(&agent);

    stop_requested.await;
    tracing::info!("shutting down");
    notify_systemd(sd_notify::NotifyState::Stopping);
    let _ = stop_tx.send(true);
    let _ = quic_task.await;
    let _ = control_task.await;
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Installs the SIGTERM and SIGINT handlers now and returns the wait for either.
/// Installed before READY=1: a `systemctl stop` right after start must be a clean
/// shutdown, not the default SIGTERM death.
fn wait_for_signal() -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// Tells systemd about a state change; does nothing when not started by systemd
/// (`NOTIFY_SOCKET` unset). A failure is logged, never fatal: the agent serves anyway.
fn notify_systemd(state: sd_notify::NotifyState<'_>) {
    if let Err(e) = sd_notify::notify(&[state]) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

/// Logs what to run when the CA, certificate or key is not on this host yet: a
/// freshly installed package has a config but no credentials.
fn explain_missing_credentials(config: &AgentConfig) {
    let missing: Vec<String> = [&config.ca, &config.cert, &config.key]
        .into_iter()
        .filter(|p| !p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if !missing.is_empty() {
        tracing::error!(
            "missing {}: on the host holding the CA run `handover ca issue --dir CA_DIR --role agent --name {} --print-install` and copy the files it names to this host",
            missing.join(", "),
            config.name
        );
    }
}
