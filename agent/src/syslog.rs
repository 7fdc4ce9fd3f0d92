//! Audit events to syslog: RFC 5424 messages on a local Unix datagram socket (`/dev/log` by
//! default, where rsyslog and journald listen), written by hand (one format, no crate needed).
//!
//! `<PRI>1 TIMESTAMP HOSTNAME pwrelay-agent PROCID MSGID [pwrelay@32473 event_id="N"] JSON`:
//! the facility is `audit.syslog_facility` (default `authpriv`), the severity `warning` for
//! refusals and failures and `notice` for the rest; MSGID is the event's name, and the message
//! is the event's JSON line. (32473 is the enterprise number RFC 5612 sets aside for examples.)

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

/// Syslog facilities `audit.syslog_facility` accepts, with their codes (RFC 5424 §6.2.1).
pub const FACILITIES: &[(&str, u8)] = &[
    ("auth", 4),
    ("daemon", 3),
    ("authpriv", 10),
    ("local0", 16),
    ("local1", 17),
    ("local2", 18),
    ("local3", 19),
    ("local4", 20),
    ("local5", 21),
    ("local6", 22),
    ("local7", 23),
];

/// `[audit]`'s syslog settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogConfig {
    /// The datagram socket (`audit.syslog_socket`).
    pub socket: PathBuf,
    /// The facility code (`audit.syslog_facility`).
    pub facility: u8,
}

/// The sender: one unbound datagram socket, each message sent to the configured path (so a
/// restarted syslog daemon is reached again without reconnecting).
#[derive(Debug)]
pub struct Syslog {
    config: SyslogConfig,
    hostname: String,
    socket: std::io::Result<UnixDatagram>,
}

impl Syslog {
    /// A sender for `config`.
    pub fn new(config: &SyslogConfig) -> Self {
        let socket = UnixDatagram::unbound().and_then(|s| {
            // A stuck daemon must not stop the jobs: a message waits at most this long.
            s.set_write_timeout(Some(Duration::from_secs(2)))?;
            Ok(s)
        });
        Self { config: config.clone(), hostname: hostname(), socket }
    }

    /// Sends one event's message (blocking, at most 2 s).
    pub fn send(&self, event_id: u32, name: &str, json: &[u8]) -> std::io::Result<()> {
        let socket = self.socket.as_ref().map_err(|e| std::io::Error::new(e.kind(), e.to_string()))?;
        let message = self.format(event_id, name, json, &timestamp());
        socket.send_to(&message, &self.config.socket).map(drop)
    }

    fn format(&self, event_id: u32, name: &str, json: &[u8], time: &str) -> Vec<u8> {
        let priority = u32::from(self.config.facility) * 8 + severity(event_id);
        let mut message = format!(
            "<{priority}>1 {time} {} pwrelay-agent {} {} [pwrelay@32473 event_id=\"{event_id}\"] ",
            self.hostname,
            std::process::id(),
            header_field(name, 32),
        )
        .into_bytes();
        message.extend_from_slice(json);
        message
    }
}

/// `warning` (4) for refusals and failures, `notice` (5) for the rest.
fn severity(event_id: u32) -> u32 {
    match event_id {
        4110..=4116 | 10016 | 10017 => 4,
        _ => 5,
    }
}

/// A header field as RFC 5424 allows it: printable US-ASCII without spaces, at most `max`
/// characters, `-` when empty.
fn header_field(text: &str, max: usize) -> String {
    let field: String = text.chars().filter(|c| c.is_ascii_graphic()).take(max).collect();
    if field.is_empty() { "-".to_owned() } else { field }
}

fn hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    header_field(name.trim(), 255)
}

fn timestamp() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "-".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_has_the_rfc_5424_header_and_the_json_line() {
        let syslog = Syslog::new(&SyslogConfig { socket: "/nonexistent".into(), facility: 10 });
        let message = syslog.format(4112, "refused protected account", b"{\"event_id\":4112}", "2026-12-01T10:00:00Z");
        let text = String::from_utf8(message).expect("utf-8");
        let pid = std::process::id();
        assert_eq!(
            text,
            format!(
                "<84>1 2026-12-01T10:00:00Z {} pwrelay-agent {pid} refusedprotectedaccount [pwrelay@32473 event_id=\"4112\"] {{\"event_id\":4112}}",
                syslog.hostname
            )
        );
        assert!(syslog.send(4100, "x", b"{}").is_err(), "no socket there");
    }
}
