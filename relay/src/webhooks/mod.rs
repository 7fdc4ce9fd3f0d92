//! Outbound webhooks: every API client can have one subscription (an https URL, the events it
//! wants, a signing secret), and is told about each of its jobs that becomes final.
//!
//! The mechanism is a transactional outbox. A trigger on the `jobs` table (schema v5, see
//! [`crate::store::sqlite`]) inserts a pending delivery, in the same transaction, whenever a job of
//! a subscribed client reaches `succeeded` or `failed`, whichever store call got it there
//! (a result, a cancellation, expiry, exhausted deliveries, a batch settling). The [`worker`] sends
//! pending deliveries, signed ([`signature`]), retries failed ones with jittered exponential
//! back-off up to `webhooks.max_attempts` or `webhooks.max_age_hours`, and records every attempt in
//! the delivery log. Deliveries are at least once: a receiver dedupes by the event id, which a
//! delivery keeps across its retries, as it keeps its body.
//!
//! Every final job is an event, batch members included (each is a rotation), and the batch itself
//! once all its members are final.

pub mod signature;
pub mod worker;

use std::collections::BTreeSet;
use std::fmt;

use serde::Serialize;

use crate::jobs::{JobId, JobState, Timestamp};

/// What a subscription can be told about.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum WebhookEvent {
    /// A job ended as asked (`state = succeeded`).
    JobSucceeded,
    /// A job ended without the change (`state = failed`, with its `error`).
    JobFailed,
}

impl WebhookEvent {
    /// Every event, the default of a subscription.
    pub const ALL: [Self; 2] = [Self::JobSucceeded, Self::JobFailed];

    /// The name used in subscriptions, payloads and the `Pwrelay-Event` header.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::JobSucceeded => "job.succeeded",
            Self::JobFailed => "job.failed",
        }
    }

    /// Parses an event name.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == text)
    }

    /// The event of a job that reached `state`, if it is final.
    pub fn for_state(state: JobState) -> Option<Self> {
        match state {
            JobState::Succeeded => Some(Self::JobSucceeded),
            JobState::Failed => Some(Self::JobFailed),
            JobState::Queued | JobState::Dispatched => None,
        }
    }
}

impl Serialize for WebhookEvent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Why a webhook URL is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WebhookUrlError {
    /// Not an absolute http(s) URL with a host.
    #[error("the webhook URL must be an absolute https:// URL with a host")]
    Invalid,
    /// Plain http to a host other than the loopback interface.
    #[error(
        "the webhook URL must use https:// (http:// is allowed only to 127.0.0.1, [::1] or localhost, \
         or with webhooks.dangerous_allow_http = true)"
    )]
    Insecure,
    /// Credentials in the URL would be stored and shown in the delivery log.
    #[error("the webhook URL must not carry a user name or password; authenticate with the signature")]
    Credentials,
}

/// A validated webhook URL: https, or http to the loopback interface (or anywhere, when
/// `dangerous_allow_http` is set).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct WebhookUrl(reqwest::Url);

impl WebhookUrl {
    /// Parses and checks `text`.
    pub fn parse(text: &str, dangerous_allow_http: bool) -> Result<Self, WebhookUrlError> {
        let url = reqwest::Url::parse(text).map_err(|_| WebhookUrlError::Invalid)?;
        let host = url.host_str().ok_or(WebhookUrlError::Invalid)?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(WebhookUrlError::Credentials);
        }
        match url.scheme() {
            "https" => {}
            "http" if dangerous_allow_http => {}
            "http" => {
                let ip = host.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>();
                let loopback = host.eq_ignore_ascii_case("localhost") || ip.is_ok_and(|ip| ip.is_loopback());
                if !loopback {
                    return Err(WebhookUrlError::Insecure);
                }
            }
            _ => return Err(WebhookUrlError::Invalid),
        }
        Ok(Self(url))
    }

    /// The URL.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The URL for a request.
    pub fn url(&self) -> &reqwest::Url {
        &self.0
    }
}

/// A client's webhook as the store keeps it: the signing secret sealed with the store key.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredWebhook {
    /// Where deliveries are POSTed (validated when it was set).
    pub url: String,
    /// The events that create deliveries.
    pub events: BTreeSet<WebhookEvent>,
    /// The signing secret, sealed for [`secret_context`] of the client.
    pub sealed_secret: Vec<u8>,
}

impl fmt::Debug for StoredWebhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredWebhook").field("url", &self.url).field("events", &self.events).finish_non_exhaustive()
    }
}

/// The associated data a client's signing secret is sealed with, so a sealed secret copied onto
/// another client does not open.
pub fn secret_context(client: &str) -> String {
    format!("webhook:{client}")
}

/// Where a delivery is in its life.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum DeliveryState {
    /// Not yet accepted by the receiver; another attempt is due at `next_attempt_at`.
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// Given up: attempts or age exhausted, or the subscription was removed.
    Failed,
}

impl DeliveryState {
    /// The stored and displayed form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }

    /// Parses the stored form.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Pending, Self::Delivered, Self::Failed].into_iter().find(|s| s.as_str() == text)
    }
}

impl Serialize for DeliveryState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A delivery whose next attempt is due, with what the worker needs to make it.
#[derive(Clone, Debug)]
pub struct DueDelivery {
    /// The event id (stable across attempts).
    pub event_id: String,
    /// The API client whose job it is.
    pub client: String,
    /// The job that became final.
    pub job_id: JobId,
    /// Which event.
    pub event: WebhookEvent,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the job became final (the delivery was created).
    pub created_at: Timestamp,
    /// The body, fixed by the first attempt.
    pub payload: Option<String>,
    /// The client's webhook now; `None` when it was removed since.
    pub webhook: Option<StoredWebhook>,
}

/// One attempt in the delivery log.
#[derive(Clone, PartialEq, Eq, Debug, Serialize)]
pub struct Attempt {
    /// 1 for the first attempt.
    pub attempt: u32,
    /// When the request started.
    pub at: Timestamp,
    /// How long until the answer (or the failure).
    pub duration_ms: u64,
    /// The receiver's HTTP status, when it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Why the attempt did not deliver (no answer, or a non-2xx status).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What follows an attempt.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum AfterAttempt {
    /// The receiver took it.
    Delivered,
    /// Try again at this time.
    RetryAt(Timestamp),
    /// Stop trying, for this reason (shown in the delivery log).
    GiveUp(String),
}

/// A delivery and its attempts, as the delivery log shows it (no secret, no body).
#[derive(Clone, Debug, Serialize)]
pub struct DeliveryRecord {
    /// The event id (the `Pwrelay-Event-Id` header).
    pub event_id: String,
    /// Which event.
    pub event: WebhookEvent,
    /// The job.
    pub job_id: JobId,
    /// Where it is.
    pub state: DeliveryState,
    /// When the job became final.
    pub created_at: Timestamp,
    /// For a pending delivery: when the next attempt is due.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<Timestamp>,
    /// When it was delivered or given up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    /// Why it was given up, when it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Every attempt, oldest first.
    pub attempts: Vec<Attempt>,
}

/// Which deliveries the log returns.
#[derive(Clone, Copy, Debug)]
pub struct DeliveryFilter {
    /// Only this state.
    pub state: Option<DeliveryState>,
    /// At most this many, newest first.
    pub limit: usize,
}

/// The delivery log as `GET /v1/webhooks/deliveries` and `pwrelay clients webhook deliveries
/// --json` show it: the webhook (URL and events, never the secret) and the deliveries.
pub fn log_json(webhook: Option<&StoredWebhook>, deliveries: &[DeliveryRecord]) -> serde_json::Value {
    serde_json::json!({
        "webhook": webhook.map(|w| serde_json::json!({ "url": w.url, "events": w.events })),
        "deliveries": deliveries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_https_except_to_loopback() {
        assert!(WebhookUrl::parse("https://siem.example.com/hooks/pwrelay", false).is_ok());
        for loopback in ["http://127.0.0.1:8080/x", "http://[::1]/x", "http://localhost:9/x"] {
            assert!(WebhookUrl::parse(loopback, false).is_ok(), "{loopback}");
        }
        assert_eq!(WebhookUrl::parse("http://siem.example.com/x", false), Err(WebhookUrlError::Insecure));
        assert!(WebhookUrl::parse("http://siem.example.com/x", true).is_ok(), "with dangerous_allow_http");
        assert_eq!(WebhookUrl::parse("ftp://siem.example.com/x", true), Err(WebhookUrlError::Invalid));
        assert_eq!(WebhookUrl::parse("/hooks", false), Err(WebhookUrlError::Invalid));
        assert_eq!(WebhookUrl::parse("https://u:p@siem.example.com/", false), Err(WebhookUrlError::Credentials));
    }

    #[test]
    fn events_round_trip_and_follow_final_states() {
        for event in WebhookEvent::ALL {
            assert_eq!(WebhookEvent::parse(event.as_str()), Some(event));
        }
        assert_eq!(WebhookEvent::for_state(JobState::Failed), Some(WebhookEvent::JobFailed));
        assert_eq!(WebhookEvent::for_state(JobState::Dispatched), None);
        assert_eq!(WebhookEvent::parse("job.queued"), None);
    }
}
