//! `pwrelay clients webhook`: a client's webhook (URL, events, signing secret) and its delivery
//! log. The signing secret is shown once, when it is made; the store keeps it sealed with the
//! store key.

use crate::audit::{Event, Kind};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;

use super::{EXIT_CONFIG, EXIT_FAILURE, current_thread_runtime};
use crate::config::Config;
use crate::seal::Sealer;
use crate::webhooks::signature::WebhookSecret;
use crate::webhooks::{DeliveryFilter, DeliveryRecord, DeliveryState, StoredWebhook, WebhookEvent, WebhookUrl};

/// Largest page of the delivery log.
const MAX_LOG: usize = 500;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum WebhookCommand {
    /// Create or change a client's webhook. A new webhook gets a signing secret, printed once;
    /// changing one keeps its secret unless --rotate-secret is given.
    Set {
        /// The client's name.
        name: String,
        /// Where to POST events: https://, or http:// to the loopback interface.
        #[arg(long)]
        url: String,
        /// An event to send: job.succeeded, job.failed (repeatable; default: both).
        #[arg(long = "event")]
        events: Vec<String>,
        /// Make a new signing secret (printed once); the old one stops being used at once.
        #[arg(long)]
        rotate_secret: bool,
        /// The relay configuration (for store.path, store.key_file and [webhooks]).
        #[arg(long, env = "PWRELAY_CONFIG", default_value = "/etc/pwrelay/relay.toml")]
        config: PathBuf,
    },
    /// Remove a client's webhook; deliveries not yet made are given up.
    Remove {
        /// The client's name.
        name: String,
        /// The relay configuration (for store.path).
        #[arg(long, env = "PWRELAY_CONFIG", default_value = "/etc/pwrelay/relay.toml")]
        config: PathBuf,
    },
    /// Show a client's webhook and its delivery log (newest first, every attempt).
    Deliveries {
        /// The client's name.
        name: String,
        /// Only deliveries in this state: pending, delivered, failed.
        #[arg(long)]
        state: Option<String>,
        /// At most this many deliveries (1-500).
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print JSON (the shape of GET /v1/webhooks/deliveries).
        #[arg(long)]
        json: bool,
        /// The relay configuration (for store.path).
        #[arg(long, env = "PWRELAY_CONFIG", default_value = "/etc/pwrelay/relay.toml")]
        config: PathBuf,
    },
}

impl WebhookCommand {
    /// The client named and the configuration file given.
    pub(super) fn client_and_config(&self) -> (String, PathBuf) {
        match self {
            Self::Set { name, config, .. } | Self::Remove { name, config } | Self::Deliveries { name, config, .. } => {
                (name.clone(), config.clone())
            }
        }
    }
}

/// Runs a webhook command for the client `name` (already checked) with the loaded `config`.
pub(super) fn run(command: WebhookCommand, name: &str, config: &Config) -> ExitCode {
    let result = match command {
        WebhookCommand::Set { url, events, rotate_secret, .. } => {
            let url = match WebhookUrl::parse(&url, config.webhooks.dangerous_allow_http) {
                Ok(url) => url,
                Err(e) => return usage(&format!("--url: {e}")),
            };
            let events = match parse_events(&events) {
                Ok(events) => events,
                Err(message) => return usage(&message),
            };
            set(config, name, &url, events, rotate_secret)
        }
        WebhookCommand::Remove { .. } => remove(config, name),
        WebhookCommand::Deliveries { state, limit, json, .. } => {
            let state = match state.as_deref().map(|s| DeliveryState::parse(s).ok_or(s)).transpose() {
                Ok(state) => state,
                Err(s) => return usage(&format!("--state {s:?}: use pending, delivered or failed")),
            };
            if !(1..=MAX_LOG).contains(&limit) {
                return usage(&format!("--limit must be 1-{MAX_LOG}"));
            }
            deliveries(config, name, DeliveryFilter { state, limit }, json)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn usage(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(EXIT_CONFIG)
}

fn parse_events(names: &[String]) -> Result<BTreeSet<WebhookEvent>, String> {
    if names.is_empty() {
        return Ok(WebhookEvent::ALL.into_iter().collect());
    }
    names
        .iter()
        .map(|name| {
            WebhookEvent::parse(name).ok_or_else(|| format!("--event {name:?}: use job.succeeded or job.failed"))
        })
        .collect()
}

fn event_list(events: &BTreeSet<WebhookEvent>) -> String {
    events.iter().map(|e| e.as_str()).collect::<Vec<_>>().join(", ")
}

fn set(
    config: &Config,
    name: &str,
    url: &WebhookUrl,
    events: BTreeSet<WebhookEvent>,
    rotate_secret: bool,
) -> anyhow::Result<()> {
    let sealer = Sealer::from_key_file(&config.store.key_file)?;
    let new_secret = current_thread_runtime()?.block_on(async {
        let (store, recorder) = super::open_audited(config).await?;
        let existing = store.webhook(name).await?;
        let (sealed_secret, new_secret) = match existing {
            Some(existing) if !rotate_secret => (existing.sealed_secret, None),
            _ => {
                let secret =
                    WebhookSecret::generate().map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
                (sealer.seal(&crate::webhooks::secret_context(name), secret.expose_secret())?, Some(secret))
            }
        };
        let webhook = StoredWebhook { url: url.as_str().to_owned(), events: events.clone(), sealed_secret };
        if !store.set_webhook(name, &webhook).await? {
            anyhow::bail!("no API client named {name:?}; add it with `pwrelay clients add {name}`");
        }
        let event = Event::new(Kind::WebhookSet)
            .client(name)
            .detail("url_host", url.url().host_str().unwrap_or_default())
            .detail("events", events.iter().map(|e| e.as_str()).collect::<Vec<_>>())
            .detail("secret_rotated", new_secret.is_some());
        recorder.record(event).await?;
        Ok(new_secret)
    })?;
    eprintln!("API client {name:?} webhook: POST {} on {}", url.as_str(), event_list(&events));
    match new_secret {
        Some(secret) => {
            eprintln!("Its signing secret is shown only now; give it to the receiver to verify Pwrelay-Signature:");
            println!("{}", secret.expose_secret().expose_secret());
        }
        None => eprintln!("The signing secret is unchanged (--rotate-secret makes a new one)."),
    }
    Ok(())
}

fn remove(config: &Config, name: &str) -> anyhow::Result<()> {
    let removed = current_thread_runtime()?.block_on(async {
        let (store, recorder) = super::open_audited(config).await?;
        let removed = store.remove_webhook(name).await?;
        if removed {
            recorder.record(Event::new(Kind::WebhookRemoved).client(name)).await?;
        }
        Ok::<_, anyhow::Error>(removed)
    })?;
    if !removed {
        anyhow::bail!("API client {name:?} has no webhook");
    }
    eprintln!("API client {name:?} webhook removed; deliveries not yet made are given up");
    Ok(())
}

fn deliveries(config: &Config, name: &str, filter: DeliveryFilter, json: bool) -> anyhow::Result<()> {
    let (webhook, log) = current_thread_runtime()?.block_on(async {
        let store = crate::store::open(&config.store).await?;
        Ok::<_, anyhow::Error>((store.webhook(name).await?, store.deliveries(name, filter).await?))
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&crate::webhooks::log_json(webhook.as_ref(), &log))?);
        return Ok(());
    }
    match &webhook {
        Some(webhook) => println!("webhook: POST {} on {}", webhook.url, event_list(&webhook.events)),
        None => println!("webhook: none"),
    }
    if log.is_empty() {
        println!("no deliveries");
    }
    for delivery in &log {
        print_delivery(delivery);
    }
    Ok(())
}

fn print_delivery(d: &DeliveryRecord) {
    let when = match d.state {
        DeliveryState::Pending => d.next_attempt_at.map(|t| format!(", next attempt {}", t.to_rfc3339())),
        _ => d.finished_at.map(|t| format!(" {}", t.to_rfc3339())),
    };
    println!(
        "{}  {}  {}  job {}  {}{}",
        d.created_at.to_rfc3339(),
        d.event_id,
        d.event.as_str(),
        d.job_id,
        d.state.as_str(),
        when.unwrap_or_default()
    );
    for a in &d.attempts {
        let status = a.status.map_or_else(|| "no answer".to_owned(), |s| format!("HTTP {s}"));
        let error = a.error.as_deref().map(|e| format!("  {e}")).unwrap_or_default();
        println!("    #{} {}  {}  {} ms{}", a.attempt, a.at.to_rfc3339(), status, a.duration_ms, error);
    }
    if let (DeliveryState::Failed, Some(error)) = (d.state, &d.error) {
        println!("    given up: {error}");
    }
}
