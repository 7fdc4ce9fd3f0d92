//! `pwrelay audit list`: the audit trail the relay keeps in its store, as every replica recorded
//! it, with the filters of `GET /v1/audit`.

use std::path::PathBuf;
use std::process::ExitCode;

use super::{EXIT_CONFIG, EXIT_FAILURE, current_thread_runtime};
use crate::config::{Config, Overrides};
use crate::store::AuditFilter;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum AuditCommand {
    /// Print stored audit events as JSON lines, oldest first.
    List {
        /// Only events at or after this RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Only events before this RFC 3339 time.
        #[arg(long)]
        until: Option<String>,
        /// Only this event: its id (5001) or name (job.created).
        #[arg(long)]
        event: Option<String>,
        /// Only events of this API client.
        #[arg(long)]
        client: Option<String>,
        /// Only events of this agent.
        #[arg(long)]
        agent: Option<String>,
        /// Only events of this job.
        #[arg(long)]
        job: Option<String>,
        /// At most this many events.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// The relay configuration (for the store).
        #[arg(long, env = "PWRELAY_CONFIG", default_value = "/etc/pwrelay/relay.toml")]
        config: PathBuf,
    },
}

pub(crate) fn run(command: AuditCommand) -> ExitCode {
    let AuditCommand::List { since, until, event, client, agent, job, limit, config } = command;
    let config = match Config::load(&config, &Overrides::default()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("invalid configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let parsed = (|| {
        Ok::<_, String>(AuditFilter {
            since: since
                .as_deref()
                .map(|t| {
                    crate::api::audit::parse_time(t).ok_or("--since: use an RFC 3339 time like 2026-11-22T08:00:00Z")
                })
                .transpose()?,
            until: until
                .as_deref()
                .map(|t| {
                    crate::api::audit::parse_time(t).ok_or("--until: use an RFC 3339 time like 2026-11-22T08:00:00Z")
                })
                .transpose()?,
            event_id: None,
            event: None,
            client,
            agent,
            job_id: job,
            domains: None,
            after: None,
            limit: limit.max(1),
        })
    })();
    let parsed = parsed.and_then(|mut filter| {
        if let Some(text) = event.as_deref() {
            crate::api::audit::event_filter(text)
                .ok_or("--event: use an event id or name from docs/audit-events.md")?
                .apply(&mut filter);
        }
        Ok(filter)
    });
    let filter = match parsed {
        Ok(filter) => filter,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let listed = current_thread_runtime().and_then(|runtime| {
        runtime.block_on(async {
            let store = crate::store::open(&config.store).await?;
            let mut filter = filter;
            let mut left = filter.limit;
            while left > 0 {
                filter.limit = left.min(500);
                let page = store.audit_events(&filter).await?;
                for record in &page {
                    println!("{}", serde_json::to_string(record)?);
                }
                left = left.saturating_sub(page.len());
                match page.last() {
                    Some(last) if page.len() == filter.limit => filter.after = last.seq,
                    _ => break,
                }
            }
            Ok::<_, anyhow::Error>(())
        })
    });
    match listed {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
