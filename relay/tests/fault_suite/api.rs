//! The relay's HTTPS API as a PAM uses it, through faults: every call has a timeout, job
//! submissions carry an `Idempotency-Key` so a retry after a lost answer finds the first job,
//! and waits long-poll `GET /v1/jobs/{id}?wait=`. With several relay replicas it spreads its calls
//! over them as a load balancer would: each call goes to the next replica, and to the one after
//! when a replica does not answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use pwrelay_shared::tls::{self, TrustAnchors};
use serde_json::Value;
use tokio::time::Instant;

use crate::deployment::Deployment;

/// An API client of the relay.
#[derive(Debug, Clone)]
pub(crate) struct Api {
    http: reqwest::Client,
    bases: Arc<Vec<String>>,
    next: Arc<AtomicUsize>,
    token: String,
}

/// The answer to one call: status and JSON body, or what went wrong on the way.
#[derive(Debug)]
pub(crate) enum Reply {
    Answered(u16, Value),
    /// No answer: connection refused or reset, or the timeout passed (the relay is down or paused).
    Unanswered(String),
}

impl Api {
    /// The deployment's PAM client.
    pub(crate) fn new(deployment: &Deployment) -> Self {
        Self::with_token(deployment, &deployment.token)
    }

    /// Another API client of the deployment's relay.
    pub(crate) fn with_token(deployment: &Deployment, token: &str) -> Self {
        let anchors = TrustAnchors::from_file(&deployment.ca_file).expect("the relay's CA loads");
        let config = (*tls::https_client(&anchors).expect("an HTTPS client configuration")).clone();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(config)
            .connect_timeout(Duration::from_secs(3))
            .pool_idle_timeout(Duration::from_secs(5))
            .build()
            .expect("an HTTP client");
        let bases = deployment.relays.iter().map(|r| format!("https://127.0.0.1:{}", r.api_port)).collect();
        Self { http, bases: Arc::new(bases), next: Arc::new(AtomicUsize::new(0)), token: token.to_owned() }
    }

    /// Sends the request `make` builds for a base URL to the next replica, and on to the others
    /// while one does not answer.
    async fn spread(&self, make: impl Fn(&str) -> reqwest::RequestBuilder, token: bool, limit: Duration) -> Reply {
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        let mut reply = Reply::Unanswered("no relay".into());
        for n in 0..self.bases.len() {
            let request = make(&self.bases[(first + n) % self.bases.len()]);
            let request = if token { request.bearer_auth(&self.token) } else { request };
            reply = self.send_as_is(request, limit).await;
            // A refused connection is a replica that is down; anything else was (maybe) seen.
            if !matches!(&reply, Reply::Unanswered(why) if why.contains("onnect")) {
                break;
            }
        }
        reply
    }

    async fn send_as_is(&self, request: reqwest::RequestBuilder, limit: Duration) -> Reply {
        match request.timeout(limit).send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                match response.bytes().await {
                    Ok(body) => Reply::Answered(status, serde_json::from_slice(&body).unwrap_or(Value::Null)),
                    Err(e) => Reply::Unanswered(format!("body: {e}")),
                }
            }
            Err(e) => Reply::Unanswered(e.to_string()),
        }
    }

    /// One POST of `body` to `path` with `Idempotency-Key: key`.
    pub(crate) async fn post_once(&self, path: &str, key: &str, body: &Value, limit: Duration) -> Reply {
        let make = |base: &str| self.http.post(format!("{base}{path}")).header("Idempotency-Key", key).json(body);
        self.spread(make, true, limit).await
    }

    /// One POST of the JSON text `body` to `path` with `headers` and without the API token (a
    /// callout, a link claim).
    pub(crate) async fn post_raw(&self, path: &str, body: &[u8], headers: &[(&str, &str)], limit: Duration) -> Reply {
        let make = |base: &str| {
            let mut request =
                self.http.post(format!("{base}{path}")).header("content-type", "application/json").body(body.to_vec());
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            request
        };
        self.spread(make, false, limit).await
    }

    /// One GET of `path`.
    pub(crate) async fn get_once(&self, path: &str, limit: Duration) -> Reply {
        self.spread(|base| self.http.get(format!("{base}{path}")), true, limit).await
    }

    /// Submits a job until the relay answers (retrying with the same idempotency key) or
    /// `deadline` passes. The job id, or why there is none.
    pub(crate) async fn submit(
        &self,
        path: &str,
        key: &str,
        body: &Value,
        deadline: Instant,
    ) -> Result<String, String> {
        loop {
            match self.post_once(path, key, body, Duration::from_secs(15)).await {
                Reply::Answered(202, reply) => {
                    return reply["job_id"].as_str().map(str::to_owned).ok_or_else(|| format!("no job_id in {reply}"));
                }
                // The store may refuse while the relay starts; anything else is a harness error.
                Reply::Answered(503, _) | Reply::Unanswered(_) => {}
                Reply::Answered(status, reply) => return Err(format!("{path} answered {status}: {reply}")),
            }
            if Instant::now() >= deadline {
                return Err("the relay did not accept the job before the deadline".into());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Waits until job `id` is final (`succeeded` or `failed`) or `deadline` passes; the last view
    /// read (null if none).
    pub(crate) async fn wait_final(&self, id: &str, deadline: Instant) -> Value {
        let mut last = Value::Null;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let wait = left.as_secs().clamp(1, 20);
            match self.get_once(&format!("/v1/jobs/{id}?wait={wait}"), Duration::from_secs(wait + 10)).await {
                Reply::Answered(200, job) => {
                    let state = job["state"].as_str().unwrap_or_default().to_owned();
                    last = job;
                    if state == "succeeded" || state == "failed" {
                        return last;
                    }
                }
                Reply::Answered(_, _) | Reply::Unanswered(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
            if Instant::now() >= deadline {
                return last;
            }
        }
    }

    /// Whether the relay answers `/healthz`.
    pub(crate) async fn healthy(&self) -> bool {
        matches!(self.get_once("/healthz", Duration::from_secs(2)).await, Reply::Answered(200, _))
    }
}

/// Whether an agent's `/readyz` answers 200 (relay link up, DC bind works).
pub(crate) async fn agent_ready(health_port: u16) -> bool {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().expect("an HTTP client");
    client.get(format!("http://127.0.0.1:{health_port}/readyz")).send().await.is_ok_and(|r| r.status().as_u16() == 200)
}
