//! `pwrelay agents enroll-token` and `pwrelay agents revoke`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use pwrelay_shared::domain::{AgentName, DomainName};
use pwrelay_shared::enrollment::{EnrollmentToken, ca_fingerprint, fingerprint_text};

use super::{EXIT_CONFIG, Recorder};
use crate::audit::{Event, Kind};
use crate::config::Config;
use crate::jobs::Timestamp;
use crate::store::Store;
use crate::store::enrollment::NewEnrollmentToken;

/// The longest a token may stay usable.
const MAX_TTL: Duration = Duration::from_secs(7 * 86_400);

#[derive(Debug, clap::Args)]
pub(crate) struct EnrollTokenArgs {
    /// The agent's name (letters, digits, '-', '_', '.').
    #[arg(long)]
    pub(crate) name: String,
    /// An AD DNS domain the agent may serve (repeatable; each must be in the relay's domains).
    #[arg(long = "domain", required = true)]
    pub(crate) domains: Vec<String>,
    /// How long the token stays usable: a number with s, m, h or d (at most 7d).
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    pub(crate) ttl: Duration,
    /// The relay configuration (for [store], link.agent_ca_file and [enrollment]).
    #[arg(long, env = "PWRELAY_CONFIG", default_value = "/etc/pwrelay/relay.toml")]
    pub(crate) config: PathBuf,
}

/// `30s`, `15m`, `1h`, `2d`.
fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| format!("{text:?} is not a duration like 30m, 1h or 2d"))?;
    let seconds = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" | "" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    let ttl = Duration::from_secs(seconds);
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err("the time to live must be more than 0 and at most 7d".into());
    }
    Ok(ttl)
}

pub(crate) async fn enroll_token(
    args: &EnrollTokenArgs,
    config: &Config,
    store: &dyn Store,
    recorder: &Recorder,
) -> anyhow::Result<ExitCode> {
    let name = AgentName::parse(&args.name)?;
    let domains =
        args.domains.iter().map(|d| DomainName::parse(d)).collect::<Result<std::collections::BTreeSet<_>, _>>()?;
    if let Some(unserved) = domains.iter().find(|d| !config.domains.contains(d)) {
        eprintln!(
            "error: this relay does not serve {unserved} (its configuration's domains); add it there or drop --domain {unserved}"
        );
        return Ok(ExitCode::from(EXIT_CONFIG));
    }
    if config.enrollment.is_none() {
        eprintln!(
            "error: this relay does not sign agent certificates, so the token could not be used; set [enrollment] \
             issuer_cert_file and issuer_key_file (see deploy/config/relay.full.toml)"
        );
        return Ok(ExitCode::from(EXIT_CONFIG));
    }
    let ca_pem = std::fs::read_to_string(&config.link.agent_ca_file)
        .map_err(|e| anyhow::anyhow!("link.agent_ca_file {}: {e}", config.link.agent_ca_file.display()))?;
    let fingerprint = ca_fingerprint(&ca_pem).ok_or_else(|| {
        anyhow::anyhow!("link.agent_ca_file {} holds no PEM certificate", config.link.agent_ca_file.display())
    })?;
    let token = EnrollmentToken::generate(fingerprint)?;
    let created = Timestamp::now();
    let ttl_ms = i64::try_from(args.ttl.as_millis()).unwrap_or(i64::MAX);
    store
        .add_enrollment_token(&NewEnrollmentToken {
            id: token.id.hex(),
            secret_sha256: token.secret_sha256(),
            agent: name.clone(),
            domains: domains.clone(),
            created,
            expires: Timestamp(created.0.saturating_add(ttl_ms)),
        })
        .await?;
    let names: Vec<&str> = domains.iter().map(DomainName::as_str).collect();
    let event = Event::new(Kind::EnrollTokenCreated)
        .agent(&name)
        .detail("domains", names.clone())
        .detail("token", token.id.hex())
        .detail("ttl_seconds", args.ttl.as_secs());
    recorder.record(event).await?;
    eprintln!(
        "one-time enrollment token for agent {name} ({}), usable for {} s; it pins the relay CA {}.\n\
         On the member server: pwrelay-agent enroll --relay https://RELAY:PORT --token TOKEN --out /etc/pwrelay-agent\n\
         (PORT is the relay's link port, link.listen; 7443 by default). It is shown only now:",
        names.join(", "),
        args.ttl.as_secs(),
        fingerprint_text(&fingerprint)
    );
    println!("{}", token.to_text().expose_secret());
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn revoke(name: &str, store: &dyn Store, recorder: &Recorder) -> anyhow::Result<ExitCode> {
    let name = AgentName::parse(name)?;
    let at = Timestamp::now();
    let revoked = store.revoke_agent(&name, at).await?;
    // Certificates start in whole seconds: once this returns, the second of the revocation is
    // over, so a certificate issued from then on (offline with `pki issue-agent` too, on a host
    // with the same time) starts after it and is not refused by it.
    let rest_of_second = 1000 - at.0.rem_euclid(1000);
    tokio::time::sleep(std::time::Duration::from_millis(u64::try_from(rest_of_second).unwrap_or(1000))).await;
    recorder
        .record(Event::new(Kind::AgentRevoked).agent(&name).detail("leases_released", revoked.leases_released))
        .await?;
    eprintln!(
        "agent {name} revoked: its certificates issued until now are refused, its open streams close within {} s on \
         every replica, {} leased job(s) released (claimable again after link.write_timeout_seconds). Enroll it again \
         with a new token if it should come back.",
        crate::link::revocation::REFRESH_INTERVAL.as_secs(),
        revoked.leases_released
    );
    Ok(ExitCode::SUCCESS)
}
