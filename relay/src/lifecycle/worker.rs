//! Moves lifecycle requests along their stages (see [`super`]). One loop picks due requests; a
//! delivery, which retries with back-off, runs as its own task so it holds nobody up.

use crate::audit::{Event, Kind};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use pwrelay_shared::domain::DomainName;
use pwrelay_shared::secret::{SecretBytes, SecretString};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::config::{LinkChannel, UsernameChannel};
use super::{CLIENT, Lifecycle, PROOF_CONTEXT};
use crate::delivery::templates::render;
use crate::graph::{GraphError, GraphUser, OperationStatus};
use crate::jobs::{GenerateMode, GenerateSpec, JobId, JobKind, JobOptions, NewJob, Target, Timestamp};
use crate::store::Insertion;
use crate::store::lifecycle::{LifecycleRequest, ResumeResult, Stage};

/// How often the worker looks even without a signal.
const TICK: Duration = Duration::from_secs(2);
/// How long a claim on a request lasts: a step's Graph calls (20 s timeout each) fit within it,
/// so another replica takes a request over only when its replica died mid-step.
const CLAIM_LEASE: Duration = Duration::from_secs(60);
/// How often the ciphertexts of expired, unclaimed links are erased.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// Graph `resume` calls before giving up (about 2 h with the back-off).
const RESUME_ATTEMPTS: u32 = 12;
/// Longest wait between two tries.
const MAX_BACKOFF: Duration = Duration::from_secs(900);
/// Tries to record a delivery's result before leaving it to the next start.
const RECORD_ATTEMPTS: u32 = 5;
/// A request whose Graph lookup keeps failing fails after this long.
const RESOLVE_GIVE_UP: Duration = Duration::from_secs(3600);

pub(super) async fn run(lifecycle: Arc<Lifecycle>, cancel: CancellationToken, tracker: TaskTracker) {
    let delivering = Arc::new(Mutex::new(HashSet::new()));
    let mut changed = lifecycle.events.changed();
    let mut swept_at: Option<std::time::Instant> = None;
    loop {
        match lifecycle.store.claim_requests(CLAIM_LEASE, 50).await {
            Ok(due) => {
                for request in due {
                    step(&lifecycle, request, &delivering, &cancel, &tracker).await;
                }
            }
            Err(error) => tracing::error!(%error, "reading lifecycle requests failed"),
        }
        // Expired links are refused by their time already; erasing their ciphertexts can wait for
        // the next sweep instead of taking the store's write lock on every job change.
        if swept_at.is_none_or(|at| at.elapsed() >= SWEEP_INTERVAL) {
            swept_at = Some(std::time::Instant::now());
            match lifecycle.store.expire_links().await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(count = n, "unclaimed links expired; their ciphertexts are erased");
                    lifecycle.audit.record(Event::new(Kind::LinksExpired).detail("count", n));
                }
                Err(error) => tracing::error!(%error, "erasing the ciphertexts of expired links failed"),
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = lifecycle.wake.notified() => {}
            _ = changed.changed() => {}
            () = tokio::time::sleep(TICK) => {}
        }
    }
}

async fn step(
    lifecycle: &Arc<Lifecycle>,
    request: LifecycleRequest,
    delivering: &Arc<Mutex<HashSet<Uuid>>>,
    cancel: &CancellationToken,
    tracker: &TaskTracker,
) {
    let id = request.task_processing_result_id;
    let key_here = request.key_holder.as_deref() == Some(lifecycle.store.replica().as_str());
    let result = match request.stage {
        Stage::Resolving => resolve(lifecycle, &request).await,
        // Claimed although another replica recorded the result: that replica is gone, and the
        // link key with it.
        Stage::Applying if request.job_state.as_deref() == Some("succeeded") && !key_here => {
            key_lost(lifecycle, &request).await
        }
        Stage::Applying => applied(lifecycle, &request, delivering, cancel, tracker).await,
        // Claimed only when the replica sending the link is gone.
        Stage::Delivering => key_lost(lifecycle, &request).await,
        Stage::Resuming => resume(lifecycle, &request).await,
        Stage::Done | Stage::ResumeFailed => Ok(()),
    };
    if let Err(error) = result {
        tracing::error!(task_processing_result = %id, %error, "lifecycle step failed; it is tried again");
    }
}

/// The replica holding the request's link key died before the link went out: nobody can open a
/// link to the password it set. The request gets a fresh job (a fresh password) once; the
/// second time it fails and the workflow is told.
async fn key_lost(lifecycle: &Lifecycle, request: &LifecycleRequest) -> StepResult {
    let id = request.task_processing_result_id;
    if request.reissues == 0 {
        let reason = "the relay replica holding the link key stopped before the link was sent; a fresh password \
                      is set";
        if lifecycle.store.reissue(id, reason).await? {
            let holder = request.key_holder.as_deref().unwrap_or("none");
            tracing::warn!(
                task_processing_result = %id,
                replica = holder,
                stage = request.stage.as_str(),
                "the relay replica holding the link key is gone; a fresh initial password is set"
            );
            lifecycle.audit.record(
                Event::new(Kind::NewHireReissued)
                    .detail("task_processing_result", id.to_string())
                    .detail("key_replica", holder)
                    .detail("stage", request.stage.as_str()),
            );
            lifecycle.wake();
        }
        return Ok(());
    }
    fail(
        lifecycle,
        request,
        "the password was set twice, and both times the relay replica holding its link key stopped before sending \
         it; run the workflow task again",
    )
    .await
}

type StepResult = Result<(), crate::store::StoreError>;

async fn fail(lifecycle: &Lifecycle, request: &LifecycleRequest, reason: &str) -> StepResult {
    tracing::warn!(
        task_processing_result = %request.task_processing_result_id,
        subject = %request.subject_id,
        reason,
        "new-hire request failed; the workflow is told"
    );
    lifecycle.audit.record(
        Event::new(Kind::NewHireFailed)
            .detail("task_processing_result", request.task_processing_result_id.to_string())
            .untrusted("subject", &request.subject_id.to_string())
            .untrusted("reason", reason),
    );
    lifecycle.store.set_outcome(request.task_processing_result_id, false, reason).await?;
    lifecycle.wake();
    Ok(())
}

/// What the person's account is, from Graph.
struct Identity {
    domain: DomainName,
    target: Target,
}

fn identity(user: &GraphUser, served: &[DomainName]) -> Result<Identity, String> {
    let Some(domain_text) = user.domain_name.as_deref().filter(|d| !d.is_empty()) else {
        return Err("the user has no on-premises identity (onPremisesDomainName is empty): cloud-only users cannot \
            get an AD password; scope the workflow to synced users"
            .into());
    };
    let domain = DomainName::parse(domain_text).map_err(|e| format!("onPremisesDomainName {domain_text:?}: {e}"))?;
    if !served.contains(&domain) {
        return Err(format!("the user's domain {domain} is not in this relay's domains"));
    }
    let target = match (&user.object_guid, &user.sam_account_name) {
        (Some(guid), _) => Target::ObjectGuid(*guid),
        (None, Some(sam)) if !sam.is_empty() => Target::SamAccountName(sam.clone()),
        _ => {
            return Err("the user has neither onPremisesImmutableId (objectGUID) nor onPremisesSamAccountName".into());
        }
    };
    Ok(Identity { domain, target })
}

/// Who receives what, read from Graph when it is needed.
struct Contacts {
    user: GraphUser,
    link_to: String,
    manager: Option<(String, String)>,
}

async fn contacts(lifecycle: &Lifecycle, request: &LifecycleRequest) -> Result<Result<Contacts, String>, GraphError> {
    let user = lifecycle.graph.user(&request.tenant_id, request.subject_id).await?;
    let link_to = match lifecycle.config.link_channel {
        LinkChannel::Sms => user.mobile_phone.clone().filter(|p| !p.trim().is_empty()),
        LinkChannel::Email => user.other_mails.first().cloned(),
    };
    let Some(link_to) = link_to else {
        return Ok(Err(match lifecycle.config.link_channel {
            LinkChannel::Sms => "the user has no mobilePhone to send the link to".into(),
            LinkChannel::Email => "the user has no otherMails address to send the link to".into(),
        }));
    };
    let manager = match lifecycle.config.username_channel {
        UsernameChannel::None => None,
        UsernameChannel::ManagerEmail => match lifecycle.graph.manager(&request.tenant_id, request.subject_id).await? {
            Some(m) => match m.mail.filter(|m| !m.is_empty()) {
                Some(mail) => Some((m.display_name, mail)),
                None => return Ok(Err("the user's manager has no mail address for the username".into())),
            },
            None => return Ok(Err("the user has no manager to send the username to".into())),
        },
    };
    Ok(Ok(Contacts { user, link_to, manager }))
}

fn backoff(first: Duration, attempt: u32) -> Duration {
    first.saturating_mul(1u32 << attempt.min(16)).min(MAX_BACKOFF)
}

async fn resolve(lifecycle: &Lifecycle, request: &LifecycleRequest) -> StepResult {
    let id = request.task_processing_result_id;
    let checked = match contacts(lifecycle, request).await {
        Ok(Ok(c)) => identity(&c.user, &lifecycle.domains).map(|i| (i, c)),
        Ok(Err(reason)) => Err(reason),
        Err(GraphError::NotFound(_)) => Err(format!("user {} does not exist in Entra", request.subject_id)),
        Err(e) if e.is_retryable() && request.created_at.0 + ms(RESOLVE_GIVE_UP) > Timestamp::now().0 => {
            // Back off with the request's age: a quarter of it, between first_retry and the cap.
            let age = Duration::from_millis(u64::try_from(Timestamp::now().0 - request.created_at.0).unwrap_or(0));
            let wait = (age / 4).clamp(lifecycle.config.first_retry, MAX_BACKOFF);
            let at = Timestamp::now().0 + ms(wait);
            tracing::warn!(task_processing_result = %id, error = %e, "Graph lookup failed; trying again");
            return lifecycle.store.postpone(id, at, &e.to_string()).await;
        }
        Err(e) => Err(e.to_string()),
    };
    let (identity, contacts) = match checked {
        Ok(found) => found,
        Err(reason) => return fail(lifecycle, request, &reason).await,
    };
    let job = NewJob {
        id: JobId::generate(),
        kind: JobKind::InitialPassword,
        domain: identity.domain,
        target: identity.target,
        options: JobOptions {
            must_change: lifecycle.config.must_change(request.workflow_id),
            unlock: true,
            enforce_history: false,
        },
        client: CLIENT.into(),
        sealed_secret: None,
        generate: Some(GenerateSpec { length: lifecycle.config.password_length, mode: GenerateMode::Friendly }),
        recipient_key: None,
        parent_id: None,
    };
    // The idempotency key makes a retry after a crash find the job made the first time; a
    // re-issued request (its first password's link key was lost) gets a job of its own.
    let name = match request.reissues {
        0 => format!("lifecycle:{id}"),
        n => format!("lifecycle:{id}:reissue-{n}"),
    };
    let key = (name, Sha256::digest(id.as_bytes()).into());
    let (new_id, kind, domain, account) = (job.id, job.kind, job.domain.clone(), job.target.value());
    let job_id = match lifecycle.store.insert_jobs_once(vec![job], Some(key)).await? {
        Insertion::Created => {
            lifecycle.metrics.job_accepted(kind, 1);
            new_id
        }
        Insertion::Replayed(existing) | Insertion::KeyConflict(existing) => existing,
    };
    lifecycle.store.set_applying(id, job_id).await?;
    lifecycle.events.job_queued();
    let username = contacts.user.upn.as_deref().unwrap_or_default();
    tracing::info!(
        task_processing_result = %id,
        job_id = %job_id,
        domain = %domain,
        account = %account,
        username,
        "initial password job queued"
    );
    lifecycle.audit.record(
        Event::new(Kind::NewHireJobCreated)
            .client(crate::lifecycle::CLIENT)
            .domain(&domain)
            .job_of_kind(job_id, crate::jobs::JobKind::InitialPassword)
            .detail("task_processing_result", id.to_string())
            .untrusted("account", &account.to_string())
            .untrusted("username", username),
    );
    Ok(())
}

async fn applied(
    lifecycle: &Arc<Lifecycle>,
    request: &LifecycleRequest,
    delivering: &Arc<Mutex<HashSet<Uuid>>>,
    cancel: &CancellationToken,
    tracker: &TaskTracker,
) -> StepResult {
    let Some(job_id) = request.job_id else { return fail(lifecycle, request, "the request lost its job").await };
    if request.job_state.as_deref() != Some("succeeded") {
        let job = lifecycle.store.job(job_id).await?;
        let reason = job
            .and_then(|j| j.error)
            .map(|e| format!("the agent could not set the password: {} ({})", e.message, e.code.as_str()))
            .unwrap_or_else(|| "the initial password job failed".into());
        return fail(lifecycle, request, &reason).await;
    }
    // The key of the attempt that finished the job (the session put it there before recording it).
    let attempt = lifecycle.store.job(job_id).await?.map_or(0, |job| job.attempts);
    let Some(key) = lifecycle.keys.take(job_id, attempt) else {
        return fail(
            lifecycle,
            request,
            "the password was set but its link key is gone (it was not sent within an hour); run the workflow \
             task again",
        )
        .await;
    };
    let id = request.task_processing_result_id;
    if !delivering.lock().unwrap_or_else(|p| p.into_inner()).insert(id) {
        return Ok(());
    }
    let mut link_id = [0u8; 16];
    if SystemRandom::new().fill(&mut link_id).is_err() {
        return fail(lifecycle, request, "no randomness for the link id").await;
    }
    let link_id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(link_id);
    let proof: [u8; 32] = Sha256::new().chain_update(PROOF_CONTEXT).chain_update(key.expose_secret()).finalize().into();
    let expires = Timestamp(Timestamp::now().0 + ms(lifecycle.config.link_ttl));
    match lifecycle.store.open_link(id, &link_id, proof, expires).await {
        Ok(true) => {}
        Ok(false) => {
            // Another replica took the result over (the agent sent it there again) or the request
            // moved on: that replica sends the link, and this key is dropped.
            delivering.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            return Ok(());
        }
        Err(error) => {
            // Nothing was sent: keep the key for the next try.
            lifecycle.keys.put(job_id, attempt, key);
            delivering.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            return Err(error);
        }
    }
    let lifecycle = Arc::clone(lifecycle);
    let request = request.clone();
    let delivering = Arc::clone(delivering);
    let cancel = cancel.clone();
    tracker.spawn(async move {
        let result = deliver(&lifecycle, &request, &link_id, key, expires, &cancel).await;
        // The messages are out (or failed for good): recording that must not be lost to a busy store.
        for attempt in 1..=RECORD_ATTEMPTS {
            let stored = match &result {
                Ok(detail) => match lifecycle.store.set_delivery(id, "sent", detail).await {
                    Ok(()) => lifecycle.store.set_outcome(id, true, "").await,
                    Err(e) => Err(e),
                },
                Err(reason) => match lifecycle.store.set_delivery(id, "failed", reason).await {
                    Ok(()) => fail(&lifecycle, &request, reason).await,
                    Err(e) => Err(e),
                },
            };
            match stored {
                Ok(()) => break,
                Err(error) => {
                    tracing::error!(task_processing_result = %id, %error, attempt, "recording the delivery failed");
                    tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
                }
            }
        }
        delivering.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        lifecycle.wake();
    });
    Ok(())
}

/// Sends the username, then the link. Returns what was sent to whom, or why it failed.
async fn deliver(
    lifecycle: &Lifecycle,
    request: &LifecycleRequest,
    link_id: &str,
    key: SecretBytes,
    expires: Timestamp,
    cancel: &CancellationToken,
) -> Result<String, String> {
    let config = &lifecycle.config;
    let contacts = retry(lifecycle, cancel, "reading the contacts", || async {
        match contacts(lifecycle, request).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(reason)) => Err((reason, false)),
            Err(e) => Err((e.to_string(), e.is_retryable())),
        }
    })
    .await?;
    let user = &contacts.user;
    let username = user.upn.clone().or_else(|| user.sam_account_name.clone()).unwrap_or_default();
    let expires_text =
        expires.to_rfc3339().get(..16).map(|t| format!("{} UTC", t.replace('T', " "))).unwrap_or_default();
    let first_name = user.given_name.clone().unwrap_or_else(|| user.display_name.clone());
    let mut sent = Vec::new();
    let tenant = request.tenant_id.as_str();
    let sender = config.tenant(tenant).and_then(|t| t.mail_sender.clone()).unwrap_or_default();
    if let Some((manager_name, manager_mail)) = &contacts.manager {
        let values = [
            ("manager_name", manager_name.as_str()),
            ("display_name", user.display_name.as_str()),
            ("username", username.as_str()),
            ("organization", config.organization.as_str()),
        ];
        let subject = render(&config.templates.manager_mail_subject, &values);
        let body = render(&config.templates.manager_mail_body, &values);
        retry(lifecycle, cancel, "mailing the username to the manager", || async {
            lifecycle
                .graph
                .send_mail(tenant, &sender, manager_mail, subject.expose_secret(), &body)
                .await
                .map_err(|e| (e.to_string(), e.is_retryable()))
        })
        .await?;
        sent.push(format!("username by mail to the manager {manager_mail}"));
    }
    let link = SecretString::new(format!(
        "{}/r/{link_id}#{}",
        config.public_url,
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.expose_secret())
    ));
    drop(key);
    let values = [
        ("first_name", first_name.as_str()),
        ("display_name", user.display_name.as_str()),
        ("organization", config.organization.as_str()),
        ("expires", expires_text.as_str()),
        ("link", link.expose_secret()),
    ];
    match config.link_channel {
        LinkChannel::Sms => {
            let sms = lifecycle.sms.as_ref().ok_or("no SMS gateway is configured")?;
            let message = render(&config.templates.link_sms, &values);
            retry(lifecycle, cancel, "sending the link by SMS", || async {
                sms.send(&contacts.link_to, &message).await.map_err(|e| (e.to_string(), e.retryable))
            })
            .await?;
            sent.push(format!("link by SMS to {}", mask(&contacts.link_to)));
        }
        LinkChannel::Email => {
            let subject = render(&config.templates.link_mail_subject, &values);
            let body = render(&config.templates.link_mail_body, &values);
            retry(lifecycle, cancel, "mailing the link", || async {
                lifecycle
                    .graph
                    .send_mail(tenant, &sender, &contacts.link_to, subject.expose_secret(), &body)
                    .await
                    .map_err(|e| (e.to_string(), e.is_retryable()))
            })
            .await?;
            sent.push(format!("link by mail to {}", mask(&contacts.link_to)));
        }
    }
    tracing::info!(
        task_processing_result = %request.task_processing_result_id,
        sent = %sent.join(", "),
        "new-hire link and username sent"
    );
    let event = Event::new(Kind::NewHireDelivered)
        .detail("task_processing_result", request.task_processing_result_id.to_string())
        .detail("sent", sent.clone());
    lifecycle.audit.record(match request.job_id {
        Some(job) => event.job(job),
        None => event,
    });
    Ok(sent.join(", "))
}

/// Runs `attempt` until it succeeds, fails for good, or the attempts are used up.
async fn retry<T, F, Fut>(
    lifecycle: &Lifecycle,
    cancel: &CancellationToken,
    what: &str,
    mut attempt: F,
) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, (String, bool)>>,
{
    let attempts = lifecycle.config.delivery_attempts;
    for n in 0..attempts {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err((reason, retryable)) if !retryable || n + 1 == attempts => {
                return Err(format!("{what} failed after {} attempt(s): {reason}", n + 1));
            }
            Err((reason, _)) => {
                let wait = backoff(lifecycle.config.first_retry, n);
                tracing::warn!(what, attempt = n + 1, error = %reason, wait_ms = wait.as_millis() as u64, "delivery failed; retrying");
                tokio::select! {
                    () = cancel.cancelled() => return Err(format!("{what} was interrupted by shutdown")),
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
    Err(format!("{what}: no attempt allowed"))
}

async fn resume(lifecycle: &Lifecycle, request: &LifecycleRequest) -> StepResult {
    let id = request.task_processing_result_id;
    let status = if request.outcome.as_deref() == Some("completed") {
        OperationStatus::Completed
    } else {
        OperationStatus::Failed
    };
    let result = lifecycle.graph.resume(&request.tenant_id, request.workflow_id, request.task_id, id, status).await;
    let recorded = match result {
        Ok(()) => {
            tracing::info!(task_processing_result = %id, status = status.as_str(), "workflow resumed");
            lifecycle.audit.record(
                Event::new(Kind::WorkflowResumed)
                    .detail("task_processing_result", id.to_string())
                    .detail("status", status.as_str()),
            );
            ResumeResult::Done
        }
        Err(e) if e.is_retryable() && request.resume_attempts + 1 < RESUME_ATTEMPTS => {
            let wait = backoff(lifecycle.config.first_retry, request.resume_attempts);
            tracing::warn!(task_processing_result = %id, error = %e, "Graph resume failed; trying again");
            ResumeResult::Retry { at_ms: Timestamp::now().0 + ms(wait), reason: e.to_string() }
        }
        Err(e) => {
            tracing::error!(
                task_processing_result = %id,
                error = %e,
                "Graph resume failed for good; finish the task in Entra by hand"
            );
            lifecycle.audit.record(
                Event::new(Kind::WorkflowResumeFailed)
                    .detail("task_processing_result", id.to_string())
                    .untrusted("error", &e.to_string()),
            );
            ResumeResult::GiveUp { reason: e.to_string() }
        }
    };
    lifecycle.store.resume_attempted(id, recorded).await
}

/// `+4915112345678` → `+49151*****678`: enough for an operator, not a full number in logs.
fn mask(address: &str) -> String {
    let chars: Vec<char> = address.chars().collect();
    if let Some(at) = address.find('@') {
        let local: String = address[..at].chars().take(2).collect();
        return format!("{local}***{}", &address[at..]);
    }
    let keep_start = chars.len().min(6);
    let keep_end = chars.len().saturating_sub(keep_start).min(3);
    let hidden = chars.len() - keep_start - keep_end;
    let start: String = chars[..keep_start].iter().collect();
    let end: String = chars[chars.len() - keep_end..].iter().collect();
    format!("{start}{}{end}", "*".repeat(hidden))
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contact_addresses_are_masked() {
        assert_eq!(mask("+4915112345678"), "+49151*****678");
        assert_eq!(mask("jane.private@example.org"), "ja***@example.org");
        assert_eq!(mask("123"), "123");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff(Duration::from_secs(5), 0), Duration::from_secs(5));
        assert_eq!(backoff(Duration::from_secs(5), 3), Duration::from_secs(40));
        assert_eq!(backoff(Duration::from_secs(5), 30), MAX_BACKOFF);
    }
}
