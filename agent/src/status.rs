//! `pwrelay-agent status`: asks the running agent's health listener (`GET /status`) what it
//! sees and prints it for the admin on the member server: the relay link, the certificate and
//! when it expires, each DC at the last bind check, and the recent jobs (without accounts).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

/// How long the agent gets to answer.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Certificates closer than this to expiry are flagged.
const EXPIRY_WARNING_DAYS: i64 = 14;

/// What `/status` answers.
#[derive(Debug, Deserialize)]
pub struct Status {
    version: String,
    started_unix: i64,
    now_unix: i64,
    ready: bool,
    relay: Relay,
    certificate: Option<Certificate>,
    directories: std::collections::BTreeMap<String, Directory>,
    jobs_running: i64,
    results_unacknowledged: i64,
    recent_jobs: Vec<RecentJob>,
}

impl Status {
    /// Whether the agent reports itself ready.
    pub fn ready(&self) -> bool {
        self.ready
    }
}

#[derive(Debug, Deserialize)]
struct Relay {
    connected: bool,
    connected_since_unix: Option<i64>,
    last_error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Certificate {
    agent: String,
    domains: Vec<String>,
    expires_unix: i64,
}

#[derive(Debug, Deserialize)]
struct Directory {
    bind_ok: bool,
    detail: String,
    dcs: Vec<Dc>,
}

#[derive(Debug, Deserialize)]
struct Dc {
    url: String,
    ok: bool,
    error: String,
}

#[derive(Debug, Deserialize)]
struct RecentJob {
    job_id: String,
    kind: String,
    outcome: String,
    finished_unix: i64,
    seconds: f64,
}

/// Why the status could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// Nothing answered, or not with a status.
    #[error(
        "no agent answers at http://{addr}/status ({reason}); is it running (systemctl status pwrelay-agent), and \
         is health.listen in its configuration this address?"
    )]
    Unreachable {
        /// The address asked.
        addr: SocketAddr,
        /// What went wrong.
        reason: String,
    },
}

/// Reads the status of the agent whose health listener is at `addr`: parsed, and as it came.
pub async fn fetch(addr: SocketAddr) -> Result<(Status, String), StatusError> {
    let unreachable = |reason: String| StatusError::Unreachable { addr, reason };
    let client =
        reqwest::Client::builder().timeout(TIMEOUT).no_proxy().build().map_err(|e| unreachable(e.to_string()))?;
    let response = client.get(format!("http://{addr}/status")).send().await.map_err(|e| unreachable(e.to_string()))?;
    if !response.status().is_success() {
        return Err(unreachable(format!("HTTP {}", response.status())));
    }
    let raw = response.text().await.map_err(|e| unreachable(e.to_string()))?;
    let status = serde_json::from_str(&raw).map_err(|e| unreachable(format!("not a pwrelay-agent status: {e}")))?;
    Ok((status, raw))
}

/// The status as text for a terminal.
pub fn render(status: &Status, addr: SocketAddr) -> String {
    let now = status.now_unix;
    let mut out = String::new();
    let verdict = if status.ready { "READY" } else { "NOT READY" };
    let _ =
        writeln!(out, "pwrelay-agent {} at {addr}: {verdict} (up {})", status.version, span(now - status.started_unix));
    let relay = match (status.relay.connected, status.relay.connected_since_unix) {
        (true, Some(since)) => format!("connected for {}", span(now - since)),
        (true, None) => "connected".to_owned(),
        (false, _) => match &status.relay.last_error {
            Some(error) => format!("NOT CONNECTED: {error}"),
            None => "NOT CONNECTED (connecting)".to_owned(),
        },
    };
    let _ = writeln!(out, "relay        {relay}");
    match &status.certificate {
        Some(c) => {
            let left = c.expires_unix - now;
            let flag = if left <= 0 {
                "  EXPIRED"
            } else if left < EXPIRY_WARNING_DAYS * 86_400 {
                "  RENEW SOON"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "certificate  agent {} for {}; expires {} ({}){flag}",
                c.agent,
                c.domains.join(", "),
                timestamp(c.expires_unix),
                if left > 0 { format!("in {}", span(left)) } else { format!("{} ago", span(-left)) }
            );
        }
        None => {
            let _ = writeln!(out, "certificate  unreadable");
        }
    }
    for (domain, directory) in &status.directories {
        let state =
            if directory.bind_ok { "bind ok".to_owned() } else { format!("BIND FAILING: {}", directory.detail) };
        let _ = writeln!(out, "domain       {domain}: {state}");
        for dc in &directory.dcs {
            if dc.ok {
                let _ = writeln!(out, "  ok    {}", dc.url);
            } else {
                let _ = writeln!(out, "  FAIL  {}: {}", dc.url, dc.error);
            }
        }
    }
    if status.directories.is_empty() {
        let _ = writeln!(out, "domains      not checked yet");
    }
    let _ = writeln!(
        out,
        "jobs         {} running, {} results waiting for the relay's acknowledgement",
        status.jobs_running, status.results_unacknowledged
    );
    if status.recent_jobs.is_empty() {
        let _ = writeln!(out, "recent jobs  none since the agent started");
    } else {
        let _ = writeln!(out, "recent jobs  (newest first)");
        for job in status.recent_jobs.iter().rev() {
            let _ = writeln!(
                out,
                "  {}  {:<18} {:<24} {:>7.2} s  {}",
                timestamp(job.finished_unix),
                job.kind,
                job.outcome,
                job.seconds,
                job.job_id
            );
        }
    }
    out
}

/// `2026-12-01 12:03:01 UTC`.
fn timestamp(unix: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(unix) {
        Ok(at) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            at.year(),
            u8::from(at.month()),
            at.day(),
            at.hour(),
            at.minute(),
            at.second()
        ),
        Err(_) => unix.to_string(),
    }
}

/// `3d 4h`, `2h 5m`, `4m 10s`, `9s`.
fn span(seconds: i64) -> String {
    let s = seconds.max(0);
    let (days, hours, minutes, secs) = (s / 86_400, s % 86_400 / 3_600, s % 3_600 / 60, s % 60);
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{secs}s"),
        (0, 0, _) => format!("{minutes}m {secs}s"),
        (0, _, _) => format!("{hours}h {minutes}m"),
        _ => format!("{days}d {hours}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_at_a_glance() {
        assert_eq!(span(9), "9s");
        assert_eq!(span(250), "4m 10s");
        assert_eq!(span(7_500), "2h 5m");
        assert_eq!(span(3 * 86_400 + 4 * 3_600 + 7), "3d 4h");
        assert_eq!(span(-5), "0s");
        assert_eq!(timestamp(0), "1970-01-01 00:00:00 UTC");
    }
}
