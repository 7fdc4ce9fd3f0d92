//! The agent's audit log: append-only JSON lines, one event per decision and per write, with
//! stable event ids. It holds no secret: passwords never reach an event.
//!
//! Each event goes to `STATE_DIR/audit.jsonl` (`[audit] file`, on by default) and/or to syslog
//! (`[audit] syslog`): one RFC 5424 message per event on the local datagram socket
//! (`audit.syslog_socket`, `/dev/log`, where journald listens too), with the event name as
//! MSGID, the event id in structured data, and the JSON line as the message.
//!
//! | id | event |
//! |---|---|
//! | 4100 | job received |
//! | 4101 | password set |
//! | 4102 | account unlocked |
//! | 4103 | password verified (see `password_matches`) |
//! | 4110 | job failed in the directory |
//! | 4111 | refused: account outside the agent's scope |
//! | 4112 | refused: protected account |
//! | 4113 | refused: request conflicts with the account's state |
//! | 4114 | redelivered job answered from the journal (not applied again) |
//! | 4115 | refused: invalid or unsupported job |
//! | 4116 | refused: the password does not meet the AD policy (the agent's pre-check) |
//! | 4117 | password reconciled to the derived value |
//! | 4118 | password generated and set (returned sealed or over the link, never logged) |
//! | 4119 | initial password generated and set (returned encrypted under a fresh key, never logged) |
//! | 4120 | initial password redelivered after a lost result: a fresh one replaces the unread one |
//! | 4121 | generated password (plaintext mode) redelivered after a lost result: a fresh one replaces it |
//! | 4122 | job given back unstarted: too little time left on its lease for a write, or the agent is stopping |
//! | 4123 | job applied again: an earlier attempt lapsed without reporting, and may have written |
//! | 4130 | agent certificate renewed over the link with a fresh key (`message`: its expiry) |
//! | 4131 | agent certificate renewal refused by the relay for good (`message`: why); replace it by hand |
//!
//! The banned-password pre-check's outcomes carry the Entra Password Protection ids: the filter
//! event (10015 pass, 10017 refused, 10025 audit-mode) as `event_id` and the policy reason
//! (30002-30029) as `reason_event_id`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// Stable event ids.
pub mod ids {
    /// Job received.
    pub const JOB_RECEIVED: u32 = 4100;
    /// Password set.
    pub const PASSWORD_SET: u32 = 4101;
    /// Account unlocked.
    pub const ACCOUNT_UNLOCKED: u32 = 4102;
    /// Password verified.
    pub const PASSWORD_VERIFIED: u32 = 4103;
    /// Job failed in the directory.
    pub const JOB_FAILED: u32 = 4110;
    /// Refused: out of scope.
    pub const OUT_OF_SCOPE: u32 = 4111;
    /// Refused: protected account.
    pub const PROTECTED_ACCOUNT: u32 = 4112;
    /// Refused: state conflict.
    pub const STATE_CONFLICT: u32 = 4113;
    /// Answered from the journal.
    pub const REPLAYED: u32 = 4114;
    /// Refused: invalid or unsupported job.
    pub const INVALID_JOB: u32 = 4115;
    /// Refused: the password does not meet the AD policy.
    pub const PASSWORD_REJECTED: u32 = 4116;
    /// Password reconciled.
    pub const RECONCILED: u32 = 4117;
    /// Password generated and set.
    pub const GENERATED: u32 = 4118;
    /// Initial password generated, set and returned encrypted.
    pub const INITIAL_PASSWORD_SET: u32 = 4119;
    /// Initial password redelivered: its earlier result never arrived, a fresh one is issued.
    pub const INITIAL_PASSWORD_REISSUED: u32 = 4120;
    /// Generated password (plaintext mode) redelivered: its earlier result never arrived, so
    /// nobody holds it; a fresh one is generated and set in its place.
    pub const GENERATED_PASSWORD_REISSUED: u32 = 4121;
    /// A job was given back without touching the directory (too little lease left, or stopping).
    pub const NOT_STARTED: u32 = 4122;
    /// An earlier attempt lapsed without reporting (it may have written): this attempt applies
    /// the job again.
    pub const ATTEMPT_REISSUED: u32 = 4123;
    /// The agent certificate was renewed over the link with a fresh key.
    pub const CERTIFICATE_RENEWED: u32 = 4130;
    /// The relay refuses to renew the agent certificate (for good: not signing, or revoked).
    pub const RENEWAL_REFUSED: u32 = 4131;
}

/// One audit event.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Event {
    /// Stable id (see the module table).
    pub event_id: u32,
    /// Short name of the event.
    pub event: &'static str,
    /// The relay's job id.
    pub job_id: String,
    /// Job kind.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// AD domain.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub domain: String,
    /// The target as the job named it.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub target: String,
    /// The account's DN, once resolved.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub account_dn: String,
    /// The DC that did the work.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub dc: String,
    /// Failure class.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub code: String,
    /// Human-readable detail (never a secret).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Delivery attempt.
    pub attempt: u32,
    /// For verification events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_matches: Option<bool>,
    /// The Password Protection policy reason id (30002-30029) of a pre-check event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason_event_id: Option<u32>,
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    #[serde(flatten)]
    event: &'a Event,
}

/// Where audit events go: the append-only file and/or syslog.
#[derive(Debug, Clone)]
pub struct AuditLog {
    path: PathBuf,
    file: Option<Arc<Mutex<File>>>,
    syslog: Option<Arc<crate::syslog::Syslog>>,
}

impl AuditLog {
    /// Opens (creating, mode 0600) the audit file for appending.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        Ok(Self { path: path.to_owned(), file: Some(Arc::new(Mutex::new(open_append(path)?))), syslog: None })
    }

    /// The sinks `[audit]` names: the file at `path` when `audit.file` is on, and syslog.
    pub fn configured(path: &Path, config: &crate::config::AuditConfig) -> std::io::Result<Self> {
        let file = if config.file { Some(Arc::new(Mutex::new(open_append(path)?))) } else { None };
        let syslog = config.syslog.as_ref().map(|s| Arc::new(crate::syslog::Syslog::new(s)));
        Ok(Self { path: path.to_owned(), file, syslog })
    }

    /// The file (whether or not `audit.file` is on).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `event` and syncs it to disk, on a blocking thread (the sync waits for the disk). A
    /// failure is logged, never fatal to the job.
    pub async fn record(&self, event: &Event) {
        let time =
            time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        let mut line = match serde_json::to_vec(&Line { time, event }) {
            Ok(line) => line,
            Err(error) => {
                tracing::error!(%error, "audit event cannot be encoded");
                return;
            }
        };
        let (file, syslog) = (self.file.clone(), self.syslog.clone());
        let (event_id, name) = (event.event_id, event.event);
        let written = tokio::task::spawn_blocking(move || {
            let sent = syslog.map(|syslog| syslog.send(event_id, name, &line));
            line.push(b'\n');
            let appended = file.map(|file| {
                // Appends are single writes; a panicked holder leaves whole lines behind.
                let mut file = file.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                file.write_all(&line).and_then(|()| file.sync_data())
            });
            (appended, sent)
        })
        .await
        .unwrap_or_else(|e| (Some(Err(std::io::Error::other(e))), None));
        if let (Some(Err(error)), _) = &written {
            tracing::error!(%error, path = %self.path.display(), "audit event could not be written");
        }
        if let (_, Some(Err(error))) = &written {
            tracing::error!(%error, "audit event could not be sent to syslog (audit.syslog_socket)");
        }
    }
}

/// Opens `path` for appending, creating it with mode 0600.
fn open_append(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn events_are_appended_as_json_lines() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path).expect("open");
        log.record(&Event {
            event_id: ids::JOB_RECEIVED,
            event: "job_received",
            job_id: "j1".into(),
            ..Event::default()
        })
        .await;
        drop(log);
        let log = AuditLog::open(&path).expect("reopen appends");
        log.record(&Event {
            event_id: ids::PASSWORD_SET,
            event: "password_set",
            job_id: "j1".into(),
            ..Event::default()
        })
        .await;
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["event_id"], 4100);
        assert_eq!(lines[1]["event"], "password_set");
        assert!(lines[1]["time"].as_str().is_some_and(|t| t.ends_with('Z')));
        assert!(lines[1].get("password_matches").is_none());
    }
}
