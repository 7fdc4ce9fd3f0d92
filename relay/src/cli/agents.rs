//! `pwrelay agents`: the known agents, read from the store the relay configuration names (the
//! same on every replica): list them, show one, forget one that is gone; make an enrollment
//! token and revoke an agent (`enrollment.rs`).

use crate::audit::{Event, Kind};
use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::{Value, json};

use super::{EXIT_CONFIG, EXIT_FAILURE, current_thread_runtime};
use crate::config::{Config, Overrides};
use crate::jobs::Timestamp;
use crate::store::agents::Forgetting;
use crate::store::{AgentState, AgentThresholds, KnownAgent};

/// Exit code of `show` and `forget` for an agent the store does not know.
const EXIT_UNKNOWN: u8 = 2;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum AgentsCommand {
    /// List every known agent: state (connected, down, stale), domains, last seen, DC health.
    ///
    /// An agent is connected while its stream to some relay replica is open and it was heard from
    /// within agents.down_after_seconds, down after that, and stale once it has not been heard from
    /// for agents.stale_after_days.
    List {
        /// Print JSON (an array of agents) instead of a table.
        #[arg(long)]
        json: bool,
        /// The relay configuration (for [store] and [agents]).
        #[arg(long, env = "PWRELAY_CONFIG", default_value = "/etc/pwrelay/relay.toml")]
        config: PathBuf,
    },
    /// Show one agent: its state, stream (replica, peer), certificate, DC health and job counts.
    Show {
        /// The agent's name (from its certificate).
        name: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// The relay configuration (for [store] and [agents]).
        #[arg(long, env = "PWRELAY_CONFIG", default_value = "/etc/pwrelay/relay.toml")]
        config: PathBuf,
    },
    /// Print a one-time enrollment token for a new agent (once; the store keeps only its hash).
    ///
    /// On the member server: `pwrelay-agent enroll --relay https://RELAY:7443 --token TOKEN --out DIR`.
    /// The certificate it buys names the agent and domains given here; the token also pins this
    /// relay's CA, so the agent needs no copied ca.pem.
    EnrollToken(super::enrollment::EnrollTokenArgs),
    /// Revoke an agent: its open streams close within seconds on every replica, its certificates
    /// issued until now are refused, and its leased jobs are released.
    Revoke {
        /// The agent's name (from its certificate).
        name: String,
        /// The relay configuration (for [store]).
        #[arg(long, env = "PWRELAY_CONFIG", default_value = "/etc/pwrelay/relay.toml")]
        config: PathBuf,
    },
    /// Remove an agent that is gone from the known agents (it is recorded anew if it connects).
    ///
    /// A connected agent is not removed unless --force is given; revoke its certificate first if
    /// it must not come back.
    Forget {
        /// The agent's name (from its certificate).
        name: String,
        /// Remove it even while it is connected (it reappears with its next heartbeat).
        #[arg(long)]
        force: bool,
        /// The relay configuration (for [store] and [agents]).
        #[arg(long, env = "PWRELAY_CONFIG", default_value = "/etc/pwrelay/relay.toml")]
        config: PathBuf,
    },
}

pub(crate) fn run(command: AgentsCommand) -> ExitCode {
    let path = match &command {
        AgentsCommand::List { config, .. }
        | AgentsCommand::Show { config, .. }
        | AgentsCommand::Forget { config, .. }
        | AgentsCommand::Revoke { config, .. }
        | AgentsCommand::EnrollToken(super::enrollment::EnrollTokenArgs { config, .. }) => config,
    };
    let config = match Config::load(path, &Overrides::default()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("invalid configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let result = current_thread_runtime().and_then(|runtime| runtime.block_on(execute(command, &config)));
    result.unwrap_or_else(|e| {
        eprintln!("error: {e}");
        ExitCode::from(EXIT_FAILURE)
    })
}

async fn execute(command: AgentsCommand, config: &Config) -> anyhow::Result<ExitCode> {
    let store = crate::store::open(&config.store).await?;
    let thresholds = config.agents;
    let now = Timestamp::now();
    match command {
        AgentsCommand::EnrollToken(args) => {
            let recorder = super::Recorder::open(&config.audit, &store)?;
            super::enrollment::enroll_token(&args, config, store.as_ref(), &recorder).await
        }
        AgentsCommand::Revoke { name, .. } => {
            let recorder = super::Recorder::open(&config.audit, &store)?;
            super::enrollment::revoke(&name, store.as_ref(), &recorder).await
        }
        AgentsCommand::List { json, .. } => {
            let agents = store.agents().await?;
            if json {
                let list: Vec<Value> = agents.iter().map(|a| to_json(a, &thresholds, now)).collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print_table(&agents, &thresholds, now);
            }
            Ok(ExitCode::SUCCESS)
        }
        AgentsCommand::Show { name, json, .. } => match store.agent(&name).await? {
            Some(agent) if json => {
                println!("{}", serde_json::to_string_pretty(&to_json(&agent, &thresholds, now))?);
                Ok(ExitCode::SUCCESS)
            }
            Some(agent) => {
                print_agent(&agent, &thresholds, now);
                Ok(ExitCode::SUCCESS)
            }
            None => {
                eprintln!("error: no agent named {name:?} is known (see `pwrelay agents list`)");
                Ok(ExitCode::from(EXIT_UNKNOWN))
            }
        },
        AgentsCommand::Forget { name, force, .. } => {
            let recorder = super::Recorder::open(&config.audit, &store)?;
            let unless = (!force).then(|| thresholds.heard_since(now));
            Ok(match store.forget_agent(&name, unless).await? {
                Forgetting::Forgotten => {
                    let event = Event::new(Kind::AgentForgotten).agent(&name).detail("forced", force);
                    recorder.record(event).await?;
                    eprintln!("agent {name:?} forgotten");
                    ExitCode::SUCCESS
                }
                Forgetting::Connected => {
                    eprintln!(
                        "error: agent {name:?} is connected; stop it first, or pass --force (it is recorded \
                                 again with its next heartbeat)"
                    );
                    ExitCode::from(EXIT_FAILURE)
                }
                Forgetting::Unknown => {
                    eprintln!("error: no agent named {name:?} is known (see `pwrelay agents list`)");
                    ExitCode::from(EXIT_UNKNOWN)
                }
            })
        }
    }
}

/// An agent as `--json` prints it (the shape of `GET /v1/agents`'s agents, unfiltered).
fn to_json(agent: &KnownAgent, thresholds: &AgentThresholds, now: Timestamp) -> Value {
    json!({
        "name": agent.name,
        "state": agent.state(thresholds, now),
        "domains": agent.domains,
        "version": agent.version,
        "certificate": agent.certificate,
        "first_seen": agent.first_seen,
        "last_seen": agent.last_seen,
        "stream": agent.stream,
        "directories": agent.directories,
        "jobs": { "in_flight": agent.jobs_in_flight, "done": agent.jobs_done, "failed": agent.jobs_failed },
    })
}

fn domains(agent: &KnownAgent) -> String {
    agent.domains.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

/// `ok`, or the domains whose DCs did not take the agent's bind.
fn health(agent: &KnownAgent) -> String {
    if agent.directories.is_empty() {
        return "-".into();
    }
    let failing: Vec<String> =
        agent.directories.iter().filter(|d| !d.bind_ok).map(|d| format!("{} failing", d.domain)).collect();
    if failing.is_empty() { "ok".into() } else { failing.join(", ") }
}

fn print_table(agents: &[KnownAgent], thresholds: &AgentThresholds, now: Timestamp) {
    if agents.is_empty() {
        eprintln!("no agent has connected yet");
        return;
    }
    let header = ["NAME", "STATE", "DOMAINS", "LAST SEEN", "VERSION", "DC HEALTH"];
    println!("{:<24} {:<10} {:<32} {:<25} {:<12} {}", header[0], header[1], header[2], header[3], header[4], header[5]);
    for agent in agents {
        println!(
            "{:<24} {:<10} {:<32} {:<25} {:<12} {}",
            agent.name,
            agent.state(thresholds, now).as_str(),
            domains(agent),
            agent.last_seen.to_rfc3339(),
            agent.version,
            health(agent)
        );
    }
}

fn print_agent(agent: &KnownAgent, thresholds: &AgentThresholds, now: Timestamp) {
    let state = agent.state(thresholds, now);
    println!("name:         {}", agent.name);
    println!("state:        {}", state.as_str());
    println!("domains:      {}", domains(agent));
    println!("version:      {}", agent.version);
    println!("first seen:   {}", agent.first_seen.to_rfc3339());
    println!("last seen:    {}", agent.last_seen.to_rfc3339());
    let stream = &agent.stream;
    println!(
        "stream:       {} on replica {} from {}, opened {}{}",
        stream.id,
        stream.replica,
        stream.peer.as_deref().unwrap_or("an unknown address"),
        stream.opened.to_rfc3339(),
        if state == AgentState::Connected { "" } else { " (closed or silent)" }
    );
    println!("certificate:  serial {}, expires {}", agent.certificate.serial, agent.certificate.expires.to_rfc3339());
    println!(
        "jobs:         {} in flight, {} done, {} failed",
        agent.jobs_in_flight, agent.jobs_done, agent.jobs_failed
    );
    if agent.directories.is_empty() {
        println!("directories:  none reported yet");
    }
    for directory in &agent.directories {
        let verdict = if directory.bind_ok { "ok" } else { "failing" };
        println!("directory:    {} {verdict}: {}", directory.domain, directory.detail);
        for dc in &directory.dcs {
            let latency = dc.latency_ms.map(|ms| format!(" in {ms} ms")).unwrap_or_default();
            let verdict = if dc.bind_ok { "bind ok" } else { "bind failed" };
            let detail = if dc.detail.is_empty() { String::new() } else { format!(": {}", dc.detail) };
            println!("  dc:         {} {verdict}{latency}{detail}", dc.name);
        }
    }
}
