//! The store contract: one set of tests, run through the traits only against every backend.
//!
//! Each test is a function of `&dyn Store`; [`contract!`] makes one `#[tokio::test]` of it per
//! backend (`store::tests::sqlite::NAME`, `store::tests::postgres::NAME`). SQLite runs on a fresh
//! file per test. PostgreSQL runs on a fresh database per test when `PWRELAY_TEST_POSTGRES_URL`
//! names a server whose user may create databases (`deploy/dev/postgres.sh start` prints one);
//! without it the PostgreSQL tests pass after saying once, on the terminal, that they were skipped.

use std::sync::Arc;
use std::time::Duration;

use pwrelay_shared::domain::DomainName;
use uuid::Uuid;

use super::Purged;
use super::lifecycle::{CalloutInsertion, LinkClaim, LinkState, NewRequest, ResumeResult, Stage};
use super::{
    Cancellation, ClaimDemand, ClaimPolicy, Completion, Insertion, JobFilter, Operation, Scopes, SecretTake, Store,
    StoreError,
};
use crate::jobs::{
    ErrorCode, GenerateMode, GenerateSpec, JobError, JobId, JobKind, JobOptions, JobState, JobSuccess, NewJob, Outcome,
    ResultSecret, SecretEncoding, Target, Timestamp,
};
use crate::lifecycle::callout::Callout;
use crate::webhooks::{AfterAttempt, Attempt, DeliveryFilter, DeliveryState, StoredWebhook, WebhookEvent};

/// A store under test and whatever must live as long as it.
pub(crate) struct Backend {
    pub(crate) store: Arc<dyn Store>,
    _keep: Box<dyn std::any::Any + Send>,
}

pub(crate) fn sqlite() -> Backend {
    let dir = tempfile::tempdir().expect("dir");
    let store = super::sqlite::SqliteStore::open(&dir.path().join("relay.db")).expect("open");
    Backend { store: Arc::new(store), _keep: Box::new(dir) }
}

/// A fresh database on the test server, or `None` when `PWRELAY_TEST_POSTGRES_URL` is not set.
pub(crate) async fn postgres() -> Option<Backend> {
    let server = super::postgres::testing::server()?;
    let config = super::postgres::testing::fresh_database(&server).await;
    let store = super::postgres::PostgresStore::open(&config).await.expect("open");
    Some(Backend { store: Arc::new(store), _keep: Box::new(()) })
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let backend = super::sqlite();
                    super::$name(backend.store.as_ref()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(backend) = super::postgres().await else { return };
                    super::$name(backend.store.as_ref()).await;
                }
            )*
        }
    };
}

/// Two replicas on one database (one SQLite file, one PostgreSQL database opened twice), each with
/// its own replica id, and whatever must live as long as they.
pub(crate) struct Replicas {
    a: Arc<dyn Store>,
    b: Arc<dyn Store>,
    _keep: Box<dyn std::any::Any + Send>,
}

fn sqlite_replicas() -> Replicas {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("relay.db");
    let a = super::sqlite::SqliteStore::open(&path).expect("open");
    let b = super::sqlite::SqliteStore::open(&path).expect("open again");
    Replicas { a: Arc::new(a), b: Arc::new(b), _keep: Box::new(dir) }
}

async fn postgres_replicas() -> Option<Replicas> {
    let server = super::postgres::testing::server()?;
    let config = super::postgres::testing::fresh_database(&server).await;
    let a = super::postgres::PostgresStore::open(&config).await.expect("open");
    let b = super::postgres::PostgresStore::open(&config).await.expect("open again");
    Some(Replicas { a: Arc::new(a), b: Arc::new(b), _keep: Box::new(()) })
}

/// Like [`contract!`], for tests of two replicas sharing one store.
macro_rules! replica_contract {
    ($($name:ident),* $(,)?) => {
        mod sqlite_replicas {
            $(
                #[tokio::test]
                async fn $name() {
                    let r = super::sqlite_replicas();
                    super::$name(r.a.as_ref(), r.b.as_ref()).await;
                }
            )*
        }
        mod postgres_replicas {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(r) = super::postgres_replicas().await else { return };
                    super::$name(r.a.as_ref(), r.b.as_ref()).await;
                }
            )*
        }
    };
}

replica_contract!(
    replicas_are_alive_while_they_beat_and_gone_when_they_retire,
    a_delivery_is_claimed_by_one_replica_until_its_claim_expires,
    a_new_hire_is_delivered_by_the_replica_holding_its_key_and_reissued_once_when_it_dies,
    a_link_s_rate_limit_is_counted_across_replicas,
    sweeps_run_at_once_on_two_replicas_do_the_work_once,
);

contract!(
    claims_only_the_holders_domains_and_each_job_once,
    one_claim_serves_several_holders_each_from_its_domains_within_its_limit,
    a_batch_whose_children_finish_at_once_settles_once,
    lapsed_leases_are_taken_over_only_after_the_write_timeout,
    results_are_fenced_by_holder_and_attempt,
    renewals_are_fenced_and_keep_the_lease,
    one_account_has_one_attempt_at_a_time_in_acceptance_order,
    a_job_the_agent_never_started_is_claimable_at_once,
    final_outcomes_are_recorded_once,
    retryable_failures_requeue_with_back_off,
    overdue_jobs_expire_unless_an_agent_may_still_write,
    a_generated_password_is_handed_out_once,
    a_generated_password_that_never_arrived_is_lost_not_pending,
    an_idempotency_key_finds_the_first_job_and_refuses_another_body,
    idempotency_keys_are_forgotten_after_their_time,
    listings_filter_and_page_a_clients_own_jobs,
    only_queued_jobs_can_be_cancelled,
    batches_settle_with_their_children,
    finished_jobs_are_purged_after_retention_but_not_an_open_batchs_children,
    clients_are_unique_found_by_token_rotated_and_revoked,
    a_job_becoming_final_enqueues_one_delivery_for_its_subscribed_client,
    only_subscribed_events_are_enqueued_and_expiry_and_batches_count,
    attempts_are_logged_retries_wait_and_the_first_body_is_kept,
    revoking_a_client_removes_its_webhook_and_pending_deliveries_lose_it,
    a_callout_is_stored_once_per_task_processing_result,
    a_new_hire_moves_through_its_stages_and_its_link_is_claimed_once,
    a_failed_new_hire_loses_its_ciphertext_and_expired_links_are_erased,
    the_store_is_ready,
    gauges_count_the_queue_by_domain_and_the_outbox_by_state,
    recent_failures_are_counted_by_domain_and_error_code,
    a_client_is_found_by_name_until_it_is_revoked,
);

// ---- test data

fn policy() -> ClaimPolicy {
    ClaimPolicy {
        lease: Duration::from_secs(60),
        write_timeout: Duration::from_secs(15),
        max_attempts: 3,
        time_to_live: Duration::from_secs(3600),
    }
}

fn d(name: &str) -> DomainName {
    DomainName::parse(name).expect("domain")
}

fn new_job(domain: &str) -> NewJob {
    NewJob {
        id: JobId::generate(),
        kind: JobKind::SetPassword,
        domain: d(domain),
        target: Target::Upn("a@b.c".into()),
        options: JobOptions { must_change: true, unlock: false, enforce_history: false },
        client: "pam".into(),
        sealed_secret: Some(vec![1, 2, 3]),
        generate: None,
        recipient_key: None,
        parent_id: None,
    }
}

fn user_job(domain: &str, upn: &str) -> NewJob {
    NewJob { target: Target::Upn(upn.into()), ..new_job(domain) }
}

fn client_job(client: &str, kind: JobKind, parent: Option<JobId>) -> NewJob {
    NewJob {
        kind,
        target: Target::Upn("a@a.test".into()),
        options: JobOptions::default(),
        client: client.into(),
        sealed_secret: None,
        parent_id: parent,
        ..new_job("a.test")
    }
}

fn ok() -> Outcome {
    Outcome::Succeeded(
        JobSuccess { account_dn: "CN=a".into(), verified: true, pwd_last_set: 1, ..JobSuccess::default() },
        None,
    )
}

fn failed(code: ErrorCode, retryable: bool) -> Outcome {
    Outcome::Failed { error: JobError { code, message: "no".into(), directory_code: None }, retryable }
}

fn ids(leased: &[crate::jobs::LeasedJob]) -> Vec<JobId> {
    leased.iter().map(|l| l.job.job_id).collect()
}

async fn state(store: &dyn Store, id: JobId) -> JobState {
    store.job(id).await.expect("read").expect("exists").state
}

fn hook(events: &[WebhookEvent]) -> StoredWebhook {
    StoredWebhook {
        url: "https://siem.example.com/hooks".into(),
        events: events.iter().copied().collect(),
        sealed_secret: vec![1, 2, 3],
    }
}

async fn two_clients(store: &dyn Store) {
    store.add_client("pam", [1; 32], &Scopes::default()).await.expect("client");
    store.add_client("other", [2; 32], &Scopes::default()).await.expect("client");
}

// ---- jobs and leases

async fn claims_only_the_holders_domains_and_each_job_once(store: &dyn Store) {
    let a = new_job("a.test");
    let a_id = a.id;
    store.insert_job(a).await.expect("insert");
    store.insert_job(new_job("b.test")).await.expect("insert");
    assert!(store.claim(&[], "h1", "agent-a", 10, policy()).await.expect("claim").is_empty());
    let leased = store.claim(&[d("a.test")], "h1", "agent-a", 10, policy()).await.expect("claim");
    assert_eq!(ids(&leased), vec![a_id]);
    assert_eq!(leased[0].sealed_secret.as_deref(), Some(&[1u8, 2, 3][..]));
    assert_eq!((leased[0].job.state, leased[0].job.attempts), (JobState::Dispatched, 1));
    assert_eq!(leased[0].job.agent.as_deref(), Some("agent-a"));
    assert!(!leased[0].earlier_attempt_unresolved);
    assert!(leased[0].lease_deadline_unix_ms > Timestamp::now().0 + 50_000);
    assert!(store.claim(&[d("a.test")], "h2", "agent-a2", 10, policy()).await.expect("claim").is_empty());
}

async fn one_claim_serves_several_holders_each_from_its_domains_within_its_limit(store: &dyn Store) {
    let mut a_jobs = Vec::new();
    for n in 0..6 {
        let job = user_job("a.test", &format!("u{n}@a.test"));
        a_jobs.push(job.id);
        store.insert_job(job).await.expect("insert");
    }
    let mut b_jobs = Vec::new();
    for n in 0..3 {
        let job = user_job("b.test", &format!("u{n}@b.test"));
        b_jobs.push(job.id);
        store.insert_job(job).await.expect("insert");
    }
    // Two jobs of one account: only the older is a candidate while it is unfinished.
    let later = user_job("a.test", "u0@a.test");
    let later_id = later.id;
    store.insert_job(later).await.expect("insert");
    let demand = |holder: &str, domains: &[&str], limit| ClaimDemand {
        holder: holder.into(),
        agent: holder.into(),
        domains: domains.iter().map(|name| d(name)).collect(),
        limit,
    };
    let leased = store
        .claim_for(
            vec![demand("h1", &["a.test"], 2), demand("h2", &["a.test", "b.test"], 10), demand("h3", &["c.test"], 5)],
            policy(),
        )
        .await
        .expect("claim");
    assert_eq!(leased.len(), 3, "one answer per demand");
    assert_eq!(leased[0].len(), 2, "h1 gets its limit");
    assert!(leased[0].iter().all(|l| l.job.domain == d("a.test")));
    assert!(leased[1].iter().all(|l| l.job.domain == d("a.test") || l.job.domain == d("b.test")));
    assert!(leased[2].is_empty(), "nothing in c.test");
    let mut all: Vec<JobId> = leased.iter().flat_map(|jobs| ids(jobs)).collect();
    assert_eq!(all.len(), 9, "every claimable job once, the later job of u0 not yet");
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 9, "no job leased twice");
    assert!(!all.contains(&later_id));
    for jobs in &leased {
        assert!(
            jobs.windows(2).all(|w| (w[0].job.created_at, w[0].job.job_id) <= (w[1].job.created_at, w[1].job.job_id))
        );
    }
    // Holders take turns: the oldest job of a.test goes to the first holder serving it.
    assert_eq!(leased[0][0].job.job_id, a_jobs[0]);
    assert!(
        store.claim_for(vec![demand("h4", &["a.test", "b.test"], 10)], policy()).await.expect("claim")[0].is_empty()
    );
    assert_eq!(store.complete(a_jobs[0], "h1", 1, ok()).await.expect("complete"), Completion::Finished);
    let next = store.claim_for(vec![demand("h4", &["a.test"], 10)], policy()).await.expect("claim");
    assert_eq!(ids(&next[0]), vec![later_id], "the account is free once its older job is final");
    assert_eq!(b_jobs.len(), 3);
}

async fn a_batch_whose_children_finish_at_once_settles_once(store: &dyn Store) {
    two_clients(store).await;
    assert!(store.set_webhook("pam", &hook(&WebhookEvent::ALL)).await.expect("set"));
    let batch = client_job("pam", JobKind::ReconcileBatch, None);
    let batch_id = batch.id;
    let mut jobs = vec![batch];
    for n in 0..40 {
        jobs.push(NewJob {
            target: Target::Upn(format!("c{n}@a.test")),
            ..client_job("pam", JobKind::Reconcile, Some(batch_id))
        });
    }
    store.insert_jobs_once(jobs, None).await.expect("insert");
    let leased = store.claim(&[d("a.test")], "h", "agent", 64, policy()).await.expect("claim");
    assert_eq!(leased.len(), 40);
    let mut chunks: Vec<Vec<(JobId, u32, Outcome)>> = std::iter::repeat_with(Vec::new).take(4).collect();
    for (n, lease) in leased.iter().enumerate() {
        chunks[n % 4].push((lease.job.job_id, lease.job.attempts, ok()));
    }
    let finish = |chunk: Vec<(JobId, u32, Outcome)>| async move {
        for (id, attempt, outcome) in chunk {
            assert_eq!(store.complete(id, "h", attempt, outcome).await.expect("complete"), Completion::Finished);
        }
    };
    let mut chunks = chunks.into_iter();
    let mut next = || chunks.next().unwrap_or_default();
    // Four writers at once: on PostgreSQL four connections, each child its own transaction.
    tokio::join!(finish(next()), finish(next()), finish(next()), finish(next()));
    assert_eq!(state(store, batch_id).await, JobState::Succeeded);
    let due = store.claim_deliveries(100, Duration::ZERO).await.expect("due");
    assert_eq!(due.iter().filter(|d| d.job_id == batch_id).count(), 1, "the batch's event is queued once");
    assert_eq!(due.len(), 41);
}

async fn lapsed_leases_are_taken_over_only_after_the_write_timeout(store: &dyn Store) {
    let short =
        ClaimPolicy { lease: Duration::ZERO, write_timeout: Duration::from_millis(200), max_attempts: 3, ..policy() };
    let job = new_job("a.test");
    let id = job.id;
    store.insert_job(job).await.expect("insert");
    assert_eq!(store.claim(&[d("a.test")], "h1", "x", 1, short).await.expect("claim").len(), 1);
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(
        store.claim(&[d("a.test")], "h2", "y", 1, short).await.expect("claim").is_empty(),
        "the first holder may still be writing"
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    let taken = store.claim(&[d("a.test")], "h2", "y", 1, short).await.expect("claim");
    assert_eq!(taken.len(), 1, "a lease lapsed past the write timeout is taken over");
    assert!(taken[0].earlier_attempt_unresolved, "and the new attempt knows the last one may have written");
    assert_eq!((taken[0].job.job_id, taken[0].job.attempts), (id, 2));
    tokio::time::sleep(Duration::from_millis(250)).await;
    store.claim(&[d("a.test")], "h3", "z", 1, short).await.expect("claim");
    tokio::time::sleep(Duration::from_millis(250)).await;
    // attempts are now 3 = max_attempts: the next claim fails the job instead of leasing it
    assert!(store.claim(&[d("a.test")], "h4", "v", 1, short).await.expect("claim").is_empty());
    let job = store.job(id).await.expect("read").expect("exists");
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.error.map(|e| e.code), Some(ErrorCode::DeliveryExhausted));
}

async fn results_are_fenced_by_holder_and_attempt(store: &dyn Store) {
    let short = ClaimPolicy { lease: Duration::ZERO, write_timeout: Duration::ZERO, ..policy() };
    let job = new_job("a.test");
    let id = job.id;
    store.insert_job(job).await.expect("insert");
    store.claim(&[d("a.test")], "h1", "x", 1, short).await.expect("claim");
    assert_eq!(store.complete(id, "h2", 1, ok()).await.expect("complete"), Completion::Stale, "not the holder");
    assert_eq!(store.complete(id, "h1", 2, ok()).await.expect("complete"), Completion::Stale, "not the attempt");
    tokio::time::sleep(Duration::from_millis(5)).await;
    store.claim(&[d("a.test")], "h2", "y", 1, short).await.expect("take over");
    // The first attempt reports late: it changes nothing, not even a retryable requeue.
    assert_eq!(store.complete(id, "h1", 1, ok()).await.expect("complete"), Completion::Stale);
    let retry = failed(ErrorCode::DirectoryUnavailable, true);
    assert_eq!(store.complete(id, "h1", 1, retry).await.expect("complete"), Completion::Stale);
    assert_eq!(state(store, id).await, JobState::Dispatched);
    assert_eq!(store.complete(id, "h2", 2, ok()).await.expect("complete"), Completion::Finished);
    assert_eq!(store.complete(id, "h2", 2, ok()).await.expect("again"), Completion::Duplicate);
    assert_eq!(store.complete(id, "h1", 1, ok()).await.expect("late"), Completion::Stale);
    assert_eq!(store.complete(JobId::generate(), "h1", 1, ok()).await.expect("unknown"), Completion::Unknown);
}

async fn renewals_are_fenced_and_keep_the_lease(store: &dyn Store) {
    let short = ClaimPolicy { lease: Duration::ZERO, write_timeout: Duration::ZERO, ..policy() };
    let (a, b) = (user_job("a.test", "a@a.test"), user_job("a.test", "b@a.test"));
    let (a_id, b_id) = (a.id, b.id);
    store.insert_job(a).await.expect("insert");
    store.insert_job(b).await.expect("insert");
    assert_eq!(store.claim(&[d("a.test")], "h1", "x", 2, short).await.expect("claim").len(), 2);
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(store.renew("h1", vec![], Duration::from_secs(60)).await.expect("renew"), vec![]);
    // a is renewed (even though it lapsed: nobody took it over); b is not named and lapses.
    let renewed = store.renew("h1", vec![(a_id, 1), (b_id, 7)], Duration::from_secs(60)).await.expect("renew");
    assert_eq!(renewed, vec![(a_id, 1)], "only the current attempt renews");
    assert_eq!(store.renew("h2", vec![(a_id, 1)], Duration::from_secs(60)).await.expect("renew"), vec![]);
    let taken = store.claim(&[d("a.test")], "h2", "y", 2, short).await.expect("claim");
    assert_eq!(ids(&taken), vec![b_id], "a's lease holds");
    assert_eq!(store.renew("h1", vec![(b_id, 1)], Duration::from_secs(60)).await.expect("renew"), vec![]);
}

async fn one_account_has_one_attempt_at_a_time_in_acceptance_order(store: &dyn Store) {
    let policy = ClaimPolicy { lease: Duration::ZERO, write_timeout: Duration::from_millis(200), ..policy() };
    let first = user_job("a.test", "Jane@A.test");
    let second = user_job("a.test", "jane@a.test");
    let other = user_job("a.test", "joe@a.test");
    let (first_id, second_id, other_id) = (first.id, second.id, other.id);
    for job in [first, second, other] {
        store.insert_job(job).await.expect("insert");
    }
    let leased = store.claim(&[d("a.test")], "h1", "x", 10, policy).await.expect("claim");
    assert_eq!(ids(&leased), vec![first_id, other_id]);
    // The first attempt's lease lapsed, but it may still be writing: the account stays held.
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(store.claim(&[d("a.test")], "h2", "y", 10, policy).await.expect("claim").is_empty());
    assert_eq!(store.complete(first_id, "h1", 1, ok()).await.expect("complete"), Completion::Finished);
    let next = store.claim(&[d("a.test")], "h2", "y", 10, policy).await.expect("claim");
    assert_eq!(ids(&next), vec![second_id]);
}

async fn a_job_the_agent_never_started_is_claimable_at_once(store: &dyn Store) {
    let job = new_job("a.test");
    let id = job.id;
    store.insert_job(job).await.expect("insert");
    store.claim(&[d("a.test")], "h1", "x", 1, policy()).await.expect("claim");
    let not_started = failed(ErrorCode::NotStarted, true);
    assert_eq!(store.complete(id, "h1", 1, not_started).await.expect("complete"), Completion::Requeued);
    let again = store.claim(&[d("a.test")], "h2", "y", 1, policy()).await.expect("claim");
    assert_eq!(again.iter().map(|l| (l.job.job_id, l.job.attempts)).collect::<Vec<_>>(), vec![(id, 2)]);
}

async fn final_outcomes_are_recorded_once(store: &dyn Store) {
    let (good, bad) = (user_job("a.test", "good@a.test"), user_job("a.test", "bad@a.test"));
    let (good_id, bad_id) = (good.id, bad.id);
    store.insert_job(good).await.expect("insert");
    store.insert_job(bad).await.expect("insert");
    store.claim(&[d("a.test")], "h1", "x", 2, policy()).await.expect("claim");
    let success = Outcome::Succeeded(
        JobSuccess {
            account_dn: "CN=good".into(),
            verified: true,
            pwd_last_set: 42,
            notes: vec!["unlocked".into()],
            ..JobSuccess::default()
        },
        None,
    );
    assert_eq!(store.complete(good_id, "h1", 1, success.clone()).await.expect("complete"), Completion::Finished);
    assert_eq!(store.complete(good_id, "h1", 1, success).await.expect("complete"), Completion::Duplicate);
    let refused = failed(ErrorCode::PolicyViolation, false);
    assert_eq!(store.complete(bad_id, "h1", 1, refused).await.expect("complete"), Completion::Finished);
    assert_eq!(store.complete(bad_id, "h1", 1, ok()).await.expect("complete"), Completion::Duplicate);
    let good = store.job(good_id).await.expect("read").expect("exists");
    assert_eq!(good.state, JobState::Succeeded);
    let result = good.result.expect("result");
    assert_eq!((result.account_dn.as_str(), result.verified, result.pwd_last_set), ("CN=good", true, 42));
    assert_eq!(result.notes, vec!["unlocked".to_owned()]);
    assert!(good.finished_at.is_some() && good.error.is_none());
    let bad = store.job(bad_id).await.expect("read").expect("exists");
    assert_eq!(bad.state, JobState::Failed);
    assert_eq!(bad.error.map(|e| e.code), Some(ErrorCode::PolicyViolation));
    assert!(bad.result.is_none());
}

async fn retryable_failures_requeue_with_back_off(store: &dyn Store) {
    let job = new_job("a.test");
    let id = job.id;
    store.insert_job(job).await.expect("insert");
    store.claim(&[d("a.test")], "h1", "x", 1, policy()).await.expect("claim");
    let failure = failed(ErrorCode::DirectoryUnavailable, true);
    assert_eq!(store.complete(id, "h1", 1, failure).await.expect("complete"), Completion::Requeued);
    let job = store.job(id).await.expect("read").expect("exists");
    assert_eq!(job.state, JobState::Queued);
    assert_eq!(job.error.map(|e| e.code), Some(ErrorCode::DirectoryUnavailable), "the last error is kept");
    assert!(store.claim(&[d("a.test")], "h2", "x", 1, policy()).await.expect("claim").is_empty(), "backing off");
    // With no attempt left, the next claim fails it at once instead of after the back-off.
    let last = ClaimPolicy { max_attempts: 1, ..policy() };
    assert!(store.claim(&[d("a.test")], "h2", "x", 1, last).await.expect("claim").is_empty());
    let job = store.job(id).await.expect("read").expect("exists");
    assert_eq!(job.state, JobState::Failed);
    let error = job.error.expect("error");
    assert_eq!(error.code, ErrorCode::DeliveryExhausted);
    assert!(error.message.contains("jobs.max_attempts") && error.message.contains("last error"), "{}", error.message);
}

async fn overdue_jobs_expire_unless_an_agent_may_still_write(store: &dyn Store) {
    let held = user_job("a.test", "held@a.test");
    let held_id = held.id;
    store.insert_job(held).await.expect("insert");
    store.claim(&[d("a.test")], "h1", "x", 1, policy()).await.expect("claim");
    let job = new_job("a.test");
    let id = job.id;
    store.insert_job(job).await.expect("insert");
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(store.expire_overdue(policy()).await.expect("expire"), 0, "nothing is older than an hour");
    let overdue = ClaimPolicy { time_to_live: Duration::ZERO, ..policy() };
    assert_eq!(store.expire_overdue(overdue).await.expect("expire"), 1, "not the job an agent holds");
    let job = store.job(id).await.expect("read").expect("exists");
    assert_eq!(job.error.map(|e| e.code), Some(ErrorCode::Expired));
    assert_eq!(state(store, held_id).await, JobState::Dispatched);
    // Past its time to live, a queued job is not leased either.
    let late = new_job("b.test");
    store.insert_job(late).await.expect("insert");
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(store.claim(&[d("b.test")], "h1", "x", 1, overdue).await.expect("claim").is_empty());
}

fn generating(domain: &str) -> NewJob {
    NewJob {
        kind: JobKind::GeneratePassword,
        sealed_secret: None,
        generate: Some(GenerateSpec { length: 20, mode: GenerateMode::Random }),
        recipient_key: Some(vec![7; 32]),
        ..new_job(domain)
    }
}

async fn a_generated_password_is_handed_out_once(store: &dyn Store) {
    let job = generating("a.test");
    let id = job.id;
    store.insert_job(job).await.expect("insert");
    let leased = store.claim(&[d("a.test")], "h1", "x", 1, policy()).await.expect("claim");
    assert_eq!(leased[0].recipient_key.as_deref(), Some(&[7u8; 32][..]));
    assert_eq!(leased[0].job.generate.map(|g| (g.length, g.mode)), Some((20, GenerateMode::Random)));
    let secret = ResultSecret { encoding: SecretEncoding::SealedBox, bytes: vec![4, 5, 6] };
    let done = Outcome::Succeeded(JobSuccess { account_dn: "CN=a".into(), ..JobSuccess::default() }, Some(secret));
    assert_eq!(store.complete(id, "h1", 1, done).await.expect("complete"), Completion::Finished);
    assert_eq!(store.take_secret(id, "other").await.expect("take"), SecretTake::NotFound, "not this client's");
    assert_eq!(
        store.take_secret(id, "pam").await.expect("take"),
        SecretTake::Taken(ResultSecret { encoding: SecretEncoding::SealedBox, bytes: vec![4, 5, 6] })
    );
    assert_eq!(store.take_secret(id, "pam").await.expect("take"), SecretTake::AlreadyTaken);
    let plain = new_job("a.test");
    let plain_id = plain.id;
    store.insert_job(plain).await.expect("insert");
    assert_eq!(store.take_secret(plain_id, "pam").await.expect("take"), SecretTake::NoSecret);
}

async fn a_generated_password_that_never_arrived_is_lost_not_pending(store: &dyn Store) {
    let job = generating("a.test");
    let id = job.id;
    store.insert_job(job).await.expect("insert");
    assert_eq!(store.take_secret(id, "pam").await.expect("take"), SecretTake::NotReady);
    store.claim(&[d("a.test")], "h1", "x", 1, policy()).await.expect("claim");
    assert_eq!(store.complete(id, "h1", 1, ok()).await.expect("complete"), Completion::Finished);
    // Final, and no password came with it: never "not finished".
    assert_eq!(store.take_secret(id, "pam").await.expect("take"), SecretTake::Lost);
}

async fn an_idempotency_key_finds_the_first_job_and_refuses_another_body(store: &dyn Store) {
    let first = new_job("a.test");
    let first_id = first.id;
    let key = |hash: u8| Some(("key-1".to_owned(), [hash; 32]));
    assert_eq!(store.insert_jobs_once(vec![first], key(1)).await.expect("insert"), Insertion::Created);
    let again = new_job("a.test");
    let again_id = again.id;
    assert_eq!(store.insert_jobs_once(vec![again], key(1)).await.expect("insert"), Insertion::Replayed(first_id));
    assert!(store.job(again_id).await.expect("read").is_none(), "a replay stores nothing");
    assert_eq!(
        store.insert_jobs_once(vec![new_job("a.test")], key(2)).await.expect("insert"),
        Insertion::KeyConflict(first_id)
    );
    let other_client = NewJob { client: "other".into(), ..new_job("a.test") };
    assert_eq!(store.insert_jobs_once(vec![other_client], key(2)).await.expect("insert"), Insertion::Created);
    assert_eq!(store.insert_jobs_once(vec![], None).await.expect("nothing"), Insertion::Created);
}

async fn idempotency_keys_are_forgotten_after_their_time(store: &dyn Store) {
    let first = new_job("a.test");
    let first_id = first.id;
    let key = || Some(("key-old".to_owned(), [5; 32]));
    assert_eq!(store.insert_jobs_once(vec![first], key()).await.expect("insert"), Insertion::Created);
    assert_eq!(store.purge_idempotency_keys(Duration::from_secs(3600)).await.expect("purge"), 0, "not an hour old");
    assert_eq!(
        store.insert_jobs_once(vec![new_job("a.test")], key()).await.expect("insert"),
        Insertion::Replayed(first_id)
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(store.purge_idempotency_keys(Duration::from_millis(1)).await.expect("purge"), 1);
    assert_eq!(
        store.insert_jobs_once(vec![new_job("a.test")], key()).await.expect("insert"),
        Insertion::Created,
        "a forgotten key makes a new job"
    );
    assert!(store.job(first_id).await.expect("read").is_some(), "the job itself stays");
}

async fn listings_filter_and_page_a_clients_own_jobs(store: &dyn Store) {
    let mut ids = Vec::new();
    for domain in ["a.test", "b.test", "a.test"] {
        let job = new_job(domain);
        ids.push(job.id);
        store.insert_job(job).await.expect("insert");
    }
    store.insert_job(NewJob { client: "other".into(), ..new_job("a.test") }).await.expect("insert");
    store.claim(&[d("b.test")], "h1", "x", 1, policy()).await.expect("claim");
    let all = JobFilter { limit: 10, ..JobFilter::default() };
    let listed = |filter: JobFilter| async move {
        store.list_jobs("pam", filter).await.expect("list").into_iter().map(|j| j.job_id).collect::<Vec<_>>()
    };
    assert_eq!(listed(all.clone()).await, ids, "oldest first, only the client's own");
    assert_eq!(listed(JobFilter { limit: 2, ..all.clone() }).await, ids[..2]);
    assert_eq!(listed(JobFilter { after: Some(ids[0]), ..all.clone() }).await, ids[1..]);
    assert_eq!(listed(JobFilter { domain: Some(d("a.test")), ..all.clone() }).await, vec![ids[0], ids[2]]);
    assert_eq!(listed(JobFilter { state: Some(JobState::Dispatched), ..all.clone() }).await, vec![ids[1]]);
    let future = Timestamp(Timestamp::now().0 + 60_000);
    assert!(listed(JobFilter { since: Some(future), ..all }).await.is_empty());
}

async fn only_queued_jobs_can_be_cancelled(store: &dyn Store) {
    let (queued, held) = (user_job("a.test", "q@a.test"), user_job("b.test", "h@b.test"));
    let (queued_id, held_id) = (queued.id, held.id);
    store.insert_job(queued).await.expect("insert");
    store.insert_job(held).await.expect("insert");
    store.claim(&[d("b.test")], "h1", "x", 1, policy()).await.expect("claim");
    assert_eq!(store.cancel(queued_id, "other").await.expect("cancel"), Cancellation::NotFound);
    assert_eq!(store.cancel(queued_id, "pam").await.expect("cancel"), Cancellation::Cancelled);
    assert_eq!(store.cancel(queued_id, "pam").await.expect("cancel"), Cancellation::AlreadyFinal);
    assert_eq!(store.cancel(held_id, "pam").await.expect("cancel"), Cancellation::InProgress);
    let cancelled = store.job(queued_id).await.expect("read").expect("exists");
    assert_eq!(cancelled.error.map(|e| e.code), Some(ErrorCode::Cancelled));
    assert!(store.claim(&[d("a.test")], "h1", "x", 1, policy()).await.expect("claim").is_empty());
}

async fn batches_settle_with_their_children(store: &dyn Store) {
    let batch = NewJob { kind: JobKind::ReconcileBatch, ..client_job("pam", JobKind::ReconcileBatch, None) };
    let batch_id = batch.id;
    let child =
        |upn: &str| NewJob { target: Target::Upn(upn.into()), ..client_job("pam", JobKind::Reconcile, Some(batch_id)) };
    let (one, two) = (child("one@a.test"), child("two@a.test"));
    let (one_id, two_id) = (one.id, two.id);
    store.insert_jobs_once(vec![batch, one, two], None).await.expect("insert");
    let leased = store.claim(&[d("a.test")], "h1", "x", 10, policy()).await.expect("claim");
    assert_eq!(ids(&leased), vec![one_id, two_id], "a batch itself is never leased");
    let batch = store.job(batch_id).await.expect("read").expect("exists");
    assert_eq!(batch.state, JobState::Dispatched);
    let progress = batch.progress.expect("progress");
    assert_eq!((progress.total, progress.dispatched), (2, 2));
    store.complete(one_id, "h1", 1, ok()).await.expect("complete");
    assert_eq!(state(store, batch_id).await, JobState::Dispatched);
    store.complete(two_id, "h1", 1, failed(ErrorCode::PolicyViolation, false)).await.expect("complete");
    let batch = store.job(batch_id).await.expect("read").expect("exists");
    assert_eq!(batch.state, JobState::Failed);
    let error = batch.error.expect("error");
    assert_eq!(error.code, ErrorCode::PartialFailure);
    assert!(error.message.starts_with("1 of 2 accounts failed"), "{}", error.message);
    let progress = batch.progress.expect("progress");
    assert_eq!((progress.succeeded, progress.failed), (1, 1));
    assert_eq!(
        store.list_jobs("pam", JobFilter { limit: 10, ..JobFilter::default() }).await.expect("list")[1].parent_id,
        Some(batch_id)
    );
}

async fn finished_jobs_are_purged_after_retention_but_not_an_open_batchs_children(store: &dyn Store) {
    let single = new_job("a.test");
    let single_id = single.id;
    let open = new_job("a.test");
    let open_id = open.id;
    let batch = NewJob { kind: JobKind::ReconcileBatch, ..client_job("pam", JobKind::ReconcileBatch, None) };
    let batch_id = batch.id;
    let child =
        |upn: &str| NewJob { target: Target::Upn(upn.into()), ..client_job("pam", JobKind::Reconcile, Some(batch_id)) };
    let (one, two) = (child("one@b.test"), child("two@b.test"));
    let (one_id, two_id) = (one.id, two.id);
    store.insert_job(single).await.expect("insert");
    store.insert_job(open).await.expect("insert");
    store.insert_jobs_once(vec![batch, one, two], None).await.expect("insert");
    store.claim(&[d("a.test")], "h1", "x", 1, policy()).await.expect("claim");
    store.complete(single_id, "h1", 1, ok()).await.expect("complete");
    store.claim(&[d("a.test")], "h1", "x", 10, policy()).await.expect("claim");
    store.complete(one_id, "h1", 1, ok()).await.expect("complete");
    let nothing = store.purge_finished(Duration::from_secs(3600)).await.expect("purge");
    assert_eq!(nothing, Purged::default(), "nothing ended an hour ago");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let purged = store.purge_finished(Duration::from_millis(1)).await.expect("purge");
    assert_eq!(purged.jobs, 1, "the finished single job only: {purged:?}");
    assert!(store.job(single_id).await.expect("read").is_none());
    assert!(store.job(one_id).await.expect("read").is_some(), "its batch is still open");
    assert!(store.job(open_id).await.expect("read").is_some(), "not final");
    store.complete(two_id, "h1", 1, ok()).await.expect("complete");
    assert!(store.job(batch_id).await.expect("read").is_some_and(|b| b.state == JobState::Succeeded));
    tokio::time::sleep(Duration::from_millis(5)).await;
    let purged = store.purge_finished(Duration::from_millis(1)).await.expect("purge");
    assert_eq!(purged.jobs, 3, "the batch with both children: {purged:?}");
    for id in [batch_id, one_id, two_id] {
        assert!(store.job(id).await.expect("read").is_none());
    }
}

// ---- clients

async fn clients_are_unique_found_by_token_rotated_and_revoked(store: &dyn Store) {
    let scopes = Scopes {
        domains: Some([d("a.test")].into_iter().collect()),
        operations: Some([Operation::Verify, Operation::Lifecycle].into_iter().collect()),
    };
    store.add_client("pam", [9; 32], &scopes).await.expect("client");
    store.add_client("plain", [8; 32], &Scopes::default()).await.expect("client");
    assert!(matches!(store.add_client("pam", [7; 32], &Scopes::default()).await, Err(StoreError::ClientExists(_))));
    let found = store.client_by_token([9; 32]).await.expect("read").expect("found");
    assert_eq!((found.name.as_str(), &found.scopes), ("pam", &scopes));
    assert_eq!(store.client_by_token([8; 32]).await.expect("read").map(|c| c.scopes), Some(Scopes::default()));
    assert_eq!(store.client_by_token([7; 32]).await.expect("read"), None);
    assert!(store.rotate_client_token("pam", [6; 32]).await.expect("rotate"));
    assert!(!store.rotate_client_token("nobody", [5; 32]).await.expect("rotate"));
    assert_eq!(store.client_by_token([9; 32]).await.expect("read"), None, "the old token stops working");
    assert_eq!(store.client_by_token([6; 32]).await.expect("read").map(|c| c.name), Some("pam".into()));
    let narrower = Scopes { domains: None, operations: Some([Operation::Audit].into_iter().collect()) };
    assert!(store.set_client_scopes("pam", &narrower).await.expect("set scopes"));
    assert!(!store.set_client_scopes("nobody", &narrower).await.expect("set scopes"));
    assert_eq!(store.client_by_token([6; 32]).await.expect("read").map(|c| c.scopes), Some(narrower));
    assert!(store.revoke_client("pam").await.expect("revoke"));
    assert!(!store.revoke_client("pam").await.expect("revoke"));
    assert_eq!(store.client_by_token([6; 32]).await.expect("read"), None);
}

async fn a_client_is_found_by_name_until_it_is_revoked(store: &dyn Store) {
    let scopes = Scopes {
        domains: Some([d("a.test")].into_iter().collect()),
        operations: Some([Operation::Status].into_iter().collect()),
    };
    store.add_client("ops", [9; 32], &scopes).await.expect("client");
    store.add_client("plain", [8; 32], &Scopes::default()).await.expect("client");
    let found = store.client_by_name("ops").await.expect("read").expect("found");
    assert_eq!((found.name.as_str(), &found.scopes), ("ops", &scopes));
    assert_eq!(store.client_by_name("plain").await.expect("read").map(|c| c.scopes), Some(Scopes::default()));
    assert_eq!(store.client_by_name("nobody").await.expect("read"), None);
    assert_eq!(store.client_by_name("OPS").await.expect("read"), None, "names are exact");
    assert!(store.rotate_client_token("ops", [7; 32]).await.expect("rotate"));
    assert_eq!(store.client_by_name("ops").await.expect("read").map(|c| c.name), Some("ops".into()));
    assert!(store.revoke_client("ops").await.expect("revoke"));
    assert_eq!(store.client_by_name("ops").await.expect("read"), None, "a revoked client is gone at once");
}

// ---- webhooks

async fn a_job_becoming_final_enqueues_one_delivery_for_its_subscribed_client(store: &dyn Store) {
    two_clients(store).await;
    assert!(store.set_webhook("pam", &hook(&WebhookEvent::ALL)).await.expect("set"));
    assert!(!store.set_webhook("nobody", &hook(&WebhookEvent::ALL)).await.expect("set"), "no such client");
    assert_eq!(store.webhook("pam").await.expect("read"), Some(hook(&WebhookEvent::ALL)));
    let (done, cancelled, unsubscribed) = (
        client_job("pam", JobKind::SetPassword, None),
        client_job("pam", JobKind::Verify, None),
        client_job("other", JobKind::SetPassword, None),
    );
    let (done_id, cancelled_id) = (done.id, cancelled.id);
    for j in [done, cancelled, unsubscribed] {
        store.insert_job(j).await.expect("insert");
    }
    assert!(store.claim_deliveries(10, Duration::ZERO).await.expect("due").is_empty(), "nothing is final yet");
    assert_eq!(store.next_delivery_due().await.expect("next"), None);
    store.claim(&[d("a.test")], "h", "agent", 1, policy()).await.expect("claim");
    assert_eq!(store.complete(done_id, "h", 1, ok()).await.expect("complete"), Completion::Finished);
    assert_eq!(store.complete(done_id, "h", 1, ok()).await.expect("again"), Completion::Duplicate);
    store.cancel(cancelled_id, "pam").await.expect("cancel");
    let due = store.claim_deliveries(10, Duration::ZERO).await.expect("due");
    let mut events: Vec<_> = due.iter().map(|d| (d.job_id, d.event)).collect();
    events.sort();
    let mut expected = vec![(done_id, WebhookEvent::JobSucceeded), (cancelled_id, WebhookEvent::JobFailed)];
    expected.sort();
    assert_eq!(events, expected, "one delivery per final job of the subscribed client");
    assert!(due.iter().all(|d| d.client == "pam" && d.attempts == 0 && d.payload.is_none()));
    assert!(due.iter().all(|d| d.event_id.starts_with("evt_") && d.event_id.len() == 36));
    assert_ne!(due[0].event_id, due[1].event_id);
    assert_eq!(due[0].webhook.as_ref().map(|w| w.url.as_str()), Some("https://siem.example.com/hooks"));
    assert!(store.next_delivery_due().await.expect("next").is_some_and(|at| at.0 <= Timestamp::now().0));
    assert_eq!(store.claim_deliveries(1, Duration::ZERO).await.expect("due").len(), 1, "the limit holds");
}

async fn only_subscribed_events_are_enqueued_and_expiry_and_batches_count(store: &dyn Store) {
    two_clients(store).await;
    store.set_webhook("pam", &hook(&[WebhookEvent::JobSucceeded])).await.expect("set");
    let cancelled = client_job("pam", JobKind::SetPassword, None);
    let cancelled_id = cancelled.id;
    store.insert_job(cancelled).await.expect("insert");
    store.cancel(cancelled_id, "pam").await.expect("cancel");
    assert!(store.claim_deliveries(10, Duration::ZERO).await.expect("due").is_empty(), "job.failed is not subscribed");

    store.set_webhook("pam", &hook(&WebhookEvent::ALL)).await.expect("replace");
    let batch = client_job("pam", JobKind::ReconcileBatch, None);
    let children =
        [client_job("pam", JobKind::Reconcile, Some(batch.id)), client_job("pam", JobKind::Reconcile, Some(batch.id))];
    let batch_id = batch.id;
    let jobs: Vec<NewJob> = std::iter::once(batch).chain(children).collect();
    store.insert_jobs_once(jobs, None).await.expect("insert");
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        store.expire_overdue(ClaimPolicy { time_to_live: Duration::ZERO, ..policy() }).await.expect("expire"),
        2
    );
    let due = store.claim_deliveries(10, Duration::ZERO).await.expect("due");
    assert_eq!(due.len(), 3, "both members and the settled batch: {due:?}");
    assert!(due.iter().any(|d| d.job_id == batch_id && d.event == WebhookEvent::JobFailed));
}

async fn attempts_are_logged_retries_wait_and_the_first_body_is_kept(store: &dyn Store) {
    two_clients(store).await;
    store.set_webhook("pam", &hook(&WebhookEvent::ALL)).await.expect("set");
    let j = client_job("pam", JobKind::SetPassword, None);
    let id = j.id;
    store.insert_job(j).await.expect("insert");
    store.cancel(id, "pam").await.expect("cancel");
    let event_id = store.claim_deliveries(10, Duration::ZERO).await.expect("due")[0].event_id.clone();
    let attempt = |n: u32, status: u16| Attempt {
        attempt: n,
        at: Timestamp::now(),
        duration_ms: 3,
        status: Some(status),
        error: (status >= 300).then(|| format!("the receiver answered HTTP {status}")),
    };
    let now = Timestamp::now();
    store
        .record_delivery(&event_id, Some("first".into()), Some(attempt(1, 500)), AfterAttempt::RetryAt(now))
        .await
        .expect("record");
    let due = store.claim_deliveries(10, Duration::ZERO).await.expect("due");
    assert_eq!((due[0].attempts, due[0].payload.as_deref()), (1, Some("first")));
    let later = Timestamp(Timestamp::now().0 + 60_000);
    store
        .record_delivery(&event_id, Some("second".into()), Some(attempt(2, 503)), AfterAttempt::RetryAt(later))
        .await
        .expect("record");
    assert!(store.claim_deliveries(10, Duration::ZERO).await.expect("due").is_empty(), "the retry is not due yet");
    assert_eq!(store.next_delivery_due().await.expect("next"), Some(later));
    let pending = store.deliveries("pam", DeliveryFilter { state: Some(DeliveryState::Pending), limit: 10 });
    let pending = pending.await.expect("log");
    assert_eq!(pending[0].next_attempt_at, Some(later));
    assert_eq!(pending[0].error.as_deref(), Some("the receiver answered HTTP 503"));
    store
        .record_delivery(&event_id, Some("third".into()), Some(attempt(3, 204)), AfterAttempt::Delivered)
        .await
        .expect("record");
    assert_eq!(store.next_delivery_due().await.expect("next"), None);
    let log = store.deliveries("pam", DeliveryFilter { state: None, limit: 10 }).await.expect("log");
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].state, DeliveryState::Delivered);
    assert_eq!(log[0].attempts.iter().map(|a| a.status).collect::<Vec<_>>(), [Some(500), Some(503), Some(204)]);
    assert!(log[0].finished_at.is_some() && log[0].next_attempt_at.is_none());
    assert!(store.deliveries("other", DeliveryFilter { state: None, limit: 10 }).await.expect("log").is_empty());
    let failed_only = DeliveryFilter { state: Some(DeliveryState::Failed), limit: 10 };
    assert!(store.deliveries("pam", failed_only).await.expect("log").is_empty());
    // A delivery that ended is not changed by a late record.
    store.record_delivery(&event_id, None, None, AfterAttempt::GiveUp("late".into())).await.expect("record");
    let log = store.deliveries("pam", DeliveryFilter { state: None, limit: 10 }).await.expect("log");
    assert_eq!(log[0].state, DeliveryState::Delivered);
    assert_eq!(store.prune_deliveries(Duration::from_secs(3600)).await.expect("prune"), 0);
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(store.prune_deliveries(Duration::ZERO).await.expect("prune"), 1);
    assert!(store.deliveries("pam", DeliveryFilter { state: None, limit: 10 }).await.expect("log").is_empty());
}

async fn revoking_a_client_removes_its_webhook_and_pending_deliveries_lose_it(store: &dyn Store) {
    two_clients(store).await;
    store.set_webhook("pam", &hook(&WebhookEvent::ALL)).await.expect("set");
    let j = client_job("pam", JobKind::SetPassword, None);
    let id = j.id;
    store.insert_job(j).await.expect("insert");
    store.cancel(id, "pam").await.expect("cancel");
    assert!(store.revoke_client("pam").await.expect("revoke"));
    assert_eq!(store.webhook("pam").await.expect("read"), None);
    let due = store.claim_deliveries(10, Duration::ZERO).await.expect("due");
    assert_eq!(due.len(), 1);
    assert!(due[0].webhook.is_none());
    assert!(!store.remove_webhook("pam").await.expect("remove"), "already gone");
    store.set_webhook("other", &hook(&WebhookEvent::ALL)).await.expect("set");
    assert!(store.remove_webhook("other").await.expect("remove"));
}

// ---- new hires

fn callout() -> NewRequest {
    NewRequest {
        callout: Callout {
            task_processing_result_id: Uuid::new_v4(),
            workflow_id: Uuid::new_v4(),
            task_id: Uuid::new_v4(),
            subject_id: Uuid::new_v4(),
            display_name: "Jane Doe".into(),
            workflow_name: "Onboarding".into(),
        },
        tenant_id: "tenant".into(),
        body_sha256: [3; 32],
    }
}

/// A new hire's request applied and its `initial_password` job finished with a ciphertext.
async fn applied(store: &dyn Store) -> (Uuid, JobId) {
    store.heartbeat().await.expect("alive");
    let request = callout();
    let id = request.callout.task_processing_result_id;
    assert_eq!(store.insert_callout(request).await.expect("insert"), CalloutInsertion::Created);
    let job = NewJob {
        kind: JobKind::InitialPassword,
        sealed_secret: None,
        client: crate::lifecycle::CLIENT.into(),
        generate: Some(GenerateSpec { length: 16, mode: GenerateMode::Friendly }),
        ..user_job("a.test", "jane@a.test")
    };
    let job_id = job.id;
    store.insert_job(job).await.expect("insert");
    store.set_applying(id, job_id).await.expect("applying");
    let applying = store.request(id).await.expect("read").expect("exists");
    assert_eq!((applying.stage, applying.job_id), (Stage::Applying, Some(job_id)));
    assert!(
        store.claim_requests(Duration::ZERO, 10).await.expect("due").is_empty(),
        "an applying request waits for its job"
    );
    store.claim(&[d("a.test")], "h1", "x", 1, policy()).await.expect("claim");
    let secret = ResultSecret { encoding: SecretEncoding::Aes256Gcm, bytes: vec![8, 8, 8] };
    let done = Outcome::Succeeded(JobSuccess { account_dn: "CN=jane".into(), ..JobSuccess::default() }, Some(secret));
    assert_eq!(store.complete(job_id, "h1", 1, done).await.expect("complete"), Completion::Finished);
    let due = store.claim_requests(Duration::ZERO, 10).await.expect("due");
    assert_eq!(due.iter().map(|r| r.task_processing_result_id).collect::<Vec<_>>(), vec![id]);
    assert_eq!(due[0].job_state.as_deref(), Some("succeeded"));
    (id, job_id)
}

async fn a_callout_is_stored_once_per_task_processing_result(store: &dyn Store) {
    let request = callout();
    let id = request.callout.task_processing_result_id;
    assert_eq!(store.insert_callout(request.clone()).await.expect("insert"), CalloutInsertion::Created);
    assert_eq!(store.insert_callout(request.clone()).await.expect("insert"), CalloutInsertion::Repeated);
    let changed = NewRequest { body_sha256: [4; 32], ..request.clone() };
    assert_eq!(store.insert_callout(changed).await.expect("insert"), CalloutInsertion::Conflict);
    let stored = store.request(id).await.expect("read").expect("exists");
    assert_eq!(stored.stage, Stage::Resolving);
    assert_eq!((stored.display_name.as_str(), stored.tenant_id.as_str()), ("Jane Doe", "tenant"));
    assert_eq!(stored.workflow_id, request.callout.workflow_id);
    assert!(store.request(Uuid::new_v4()).await.expect("read").is_none());
    assert_eq!(store.claim_requests(Duration::ZERO, 10).await.expect("due").len(), 1, "resolving and due");
    let later = Timestamp::now().0 + 60_000;
    store.postpone(id, later, "graph unreachable").await.expect("postpone");
    assert!(store.claim_requests(Duration::ZERO, 10).await.expect("due").is_empty());
    let postponed = store.request(id).await.expect("read").expect("exists");
    assert_eq!((postponed.next_attempt_ms, postponed.outcome_reason.as_deref()), (later, Some("graph unreachable")));
}

async fn a_new_hire_moves_through_its_stages_and_its_link_is_claimed_once(store: &dyn Store) {
    let (id, job_id) = applied(store).await;
    assert_eq!(store.request_of_job(job_id).await.expect("read").map(|r| r.task_processing_result_id), Some(id));
    let expires = Timestamp(Timestamp::now().0 + 3_600_000);
    assert!(store.open_link(id, "link-1", [5; 32], expires).await.expect("open link"));
    let delivering = store.request(id).await.expect("read").expect("exists");
    assert_eq!((delivering.stage, delivering.delivery.as_deref()), (Stage::Delivering, Some("pending")));
    assert!(store.claim_requests(Duration::ZERO, 10).await.expect("due").is_empty(), "its replica sends the link");
    store.retire().await.expect("retire");
    let orphaned = store.claim_requests(Duration::ZERO, 10).await.expect("due");
    assert_eq!(orphaned.len(), 1, "the replica sending the link is gone");
    assert_eq!(orphaned[0].key_holder.as_deref(), Some(store.replica().as_str()));
    store.heartbeat().await.expect("heartbeat");
    assert_eq!(store.view_link("link-1").await.expect("view"), LinkState::Active { expires, must_change: true });
    assert_eq!(store.view_link("nope").await.expect("view"), LinkState::NotFound);
    assert_eq!(store.claim_link("link-1", [6; 32]).await.expect("claim"), LinkClaim::WrongProof);
    assert_eq!(store.claim_link("nope", [5; 32]).await.expect("claim"), LinkClaim::NotFound);
    assert_eq!(
        store.claim_link("link-1", [5; 32]).await.expect("claim"),
        LinkClaim::Taken { job_id, sealed: vec![8, 8, 8] }
    );
    assert_eq!(store.claim_link("link-1", [5; 32]).await.expect("claim"), LinkClaim::AlreadyUsed);
    assert_eq!(store.view_link("link-1").await.expect("view"), LinkState::Claimed);
    store.set_delivery(id, "sent", "sms").await.expect("delivery");
    store.set_outcome(id, true, "").await.expect("outcome");
    let resuming = store.request(id).await.expect("read").expect("exists");
    assert_eq!((resuming.stage, resuming.outcome.as_deref()), (Stage::Resuming, Some("completed")));
    assert_eq!((resuming.delivery.as_deref(), resuming.delivery_detail.as_deref()), (Some("sent"), Some("sms")));
    assert_eq!(resuming.link_views, 2);
    assert!(resuming.link_claimed_at.is_some());
    let retry_at = Timestamp::now().0 + 60_000;
    store
        .resume_attempted(id, ResumeResult::Retry { at_ms: retry_at, reason: "graph 503".into() })
        .await
        .expect("resume");
    assert!(store.claim_requests(Duration::ZERO, 10).await.expect("due").is_empty(), "the retry is not due");
    store.resume_attempted(id, ResumeResult::Done).await.expect("resume");
    let done = store.request(id).await.expect("read").expect("exists");
    assert_eq!((done.stage, done.resume_attempts), (Stage::Done, 2));
    assert_eq!(done.delivery_detail.as_deref(), Some("sms; resume: graph 503"));
    store.resume_attempted(id, ResumeResult::Done).await.expect("resume");
    assert_eq!(store.request(id).await.expect("read").expect("exists").resume_attempts, 2, "done stays done");
}

async fn a_failed_new_hire_loses_its_ciphertext_and_expired_links_are_erased(store: &dyn Store) {
    let (failed_id, _) = applied(store).await;
    let expires = Timestamp(Timestamp::now().0 + 3_600_000);
    store.open_link(failed_id, "link-failed", [5; 32], expires).await.expect("open link");
    store.set_outcome(failed_id, false, "no phone").await.expect("outcome");
    assert_eq!(store.view_link("link-failed").await.expect("view"), LinkState::Expired);
    assert_eq!(store.claim_link("link-failed", [5; 32]).await.expect("claim"), LinkClaim::Expired);
    store.resume_attempted(failed_id, ResumeResult::GiveUp { reason: "graph 403".into() }).await.expect("resume");
    let given_up = store.request(failed_id).await.expect("read").expect("exists");
    assert_eq!((given_up.stage, given_up.outcome.as_deref()), (Stage::ResumeFailed, Some("failed")));

    let (expiring_id, _) = applied(store).await;
    let soon = Timestamp(Timestamp::now().0 + 1);
    store.open_link(expiring_id, "link-expiring", [5; 32], soon).await.expect("open link");
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(store.expire_links().await.expect("expire"), 1);
    assert_eq!(store.expire_links().await.expect("expire"), 0);
    assert_eq!(store.claim_link("link-expiring", [5; 32]).await.expect("claim"), LinkClaim::Expired);
}

// ---- gauges

async fn gauges_count_the_queue_by_domain_and_the_outbox_by_state(store: &dyn Store) {
    assert_eq!(store.gauges().await.expect("gauges"), super::StoreGauges::default());
    two_clients(store).await;
    store.set_webhook("pam", &hook(&[WebhookEvent::JobSucceeded])).await.expect("hook");
    let first = user_job("a.test", "one@a.test");
    let created = first.id;
    store.insert_job(first).await.expect("insert");
    store.insert_job(user_job("a.test", "two@a.test")).await.expect("insert");
    store.insert_job(user_job("a.test", "three@a.test")).await.expect("insert");
    store.insert_job(new_job("b.test")).await.expect("insert");
    let leased = store.claim(&[d("a.test")], "h1", "agent-a", 2, policy()).await.expect("claim");
    assert_eq!(leased.len(), 2);
    let done = leased[0].job.job_id;
    assert_eq!(store.complete(done, "h1", 1, ok()).await.expect("complete"), Completion::Finished);

    let gauges = store.gauges().await.expect("gauges");
    let queue: Vec<_> = gauges.queue.iter().map(|q| (q.domain.as_str(), q.queued, q.dispatched)).collect();
    assert_eq!(queue, vec![("a.test", 1, 1), ("b.test", 1, 0)]);
    let oldest = gauges.queue[0].oldest_queued.expect("a queued job");
    let first_created = store.job(created).await.expect("read").expect("job").created_at;
    assert!(oldest >= first_created && oldest <= Timestamp::now(), "{oldest:?}");
    let webhooks: Vec<_> = gauges.webhooks.iter().map(|w| (w.state.as_str(), w.count)).collect();
    assert_eq!(webhooks, vec![("pending", 1)]);
    assert!(gauges.new_hires.is_empty());
}

async fn recent_failures_are_counted_by_domain_and_error_code(store: &dyn Store) {
    let before = Timestamp::now();
    assert!(store.failures_since(before).await.expect("failures").is_empty());
    let jobs = [
        user_job("a.test", "one@a.test"),
        user_job("a.test", "two@a.test"),
        user_job("a.test", "three@a.test"),
        user_job("a.test", "four@a.test"),
        new_job("b.test"),
    ];
    let ids: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
    for job in jobs {
        store.insert_job(job).await.expect("insert");
    }
    let leased = store.claim(&[d("a.test"), d("b.test")], "h1", "agent", 5, policy()).await.expect("claim");
    assert_eq!(leased.len(), 5);
    let outcomes = [
        failed(ErrorCode::PolicyViolation, false),
        failed(ErrorCode::PolicyViolation, false),
        failed(ErrorCode::AccountNotFound, false),
        ok(),
        failed(ErrorCode::PolicyViolation, false),
    ];
    for (id, outcome) in ids.iter().zip(outcomes) {
        assert_eq!(store.complete(*id, "h1", 1, outcome).await.expect("complete"), Completion::Finished);
    }
    // A queued job is no failure.
    store.insert_job(user_job("a.test", "five@a.test")).await.expect("insert");

    let failures: Vec<_> = store
        .failures_since(before)
        .await
        .expect("failures")
        .into_iter()
        .map(|f| (f.domain, f.error_code, f.count))
        .collect();
    let expected =
        [("a.test", "account_not_found", 1), ("a.test", "policy_violation", 2), ("b.test", "policy_violation", 1)];
    assert_eq!(failures, expected.map(|(d, c, n)| (d.to_owned(), c.to_owned(), n)));
    let later = Timestamp(Timestamp::now().0 + 1000);
    assert!(store.failures_since(later).await.expect("failures").is_empty(), "older failures are not counted");
}

async fn the_store_is_ready(store: &dyn Store) {
    store.check().await.expect("ready");
    assert!(!store.location().is_empty());
}

// ---- several replicas

async fn replicas_are_alive_while_they_beat_and_gone_when_they_retire(a: &dyn Store, b: &dyn Store) {
    assert_ne!(a.replica(), b.replica(), "each replica has its own id");
    a.heartbeat().await.expect("a");
    b.heartbeat().await.expect("b");
    b.heartbeat().await.expect("b again");
    let mut both = vec![a.replica().clone(), b.replica().clone()];
    both.sort_by(|x, y| x.as_str().cmp(y.as_str()));
    assert_eq!(a.live_replicas().await.expect("live"), both);
    a.retire().await.expect("retire");
    assert_eq!(b.live_replicas().await.expect("live"), vec![b.replica().clone()]);
}

async fn a_delivery_is_claimed_by_one_replica_until_its_claim_expires(a: &dyn Store, b: &dyn Store) {
    two_clients(a).await;
    a.set_webhook("pam", &hook(&WebhookEvent::ALL)).await.expect("set");
    let mut ids = Vec::new();
    for _ in 0..3 {
        let j = client_job("pam", JobKind::SetPassword, None);
        ids.push(j.id);
        a.insert_job(j).await.expect("insert");
    }
    for id in &ids {
        a.cancel(*id, "pam").await.expect("cancel");
    }
    let lease = Duration::from_secs(60);
    let (held_a, held_b) = tokio::join!(a.claim_deliveries(2, lease), b.claim_deliveries(2, lease));
    let (held_a, held_b) = (held_a.expect("a claims"), held_b.expect("b claims"));
    assert_eq!(held_a.len() + held_b.len(), 3, "every delivery is claimed once: {held_a:?} {held_b:?}");
    let mut claimed: Vec<&str> = held_a.iter().chain(&held_b).map(|d| d.event_id.as_str()).collect();
    claimed.sort_unstable();
    claimed.dedup();
    assert_eq!(claimed.len(), 3, "no delivery is held by both");
    assert!(a.claim_deliveries(10, lease).await.expect("claim").is_empty(), "all are held");
    let next = a.next_delivery_due().await.expect("next").expect("pending");
    assert!(next.0 > Timestamp::now().0 + 50_000, "the next due is when a claim expires: {next:?}");

    // A replica that does not hold a delivery cannot record it; its holder can.
    let (mine, theirs) = match (held_a.first(), held_b.first()) {
        (Some(x), _) => (x.event_id.clone(), (a, b)),
        (None, Some(x)) => (x.event_id.clone(), (b, a)),
        (None, None) => unreachable!("three deliveries were claimed"),
    };
    let (holder, other) = theirs;
    other.record_delivery(&mine, Some("body".into()), None, AfterAttempt::Delivered).await.expect("record");
    let pending = DeliveryFilter { state: Some(DeliveryState::Pending), limit: 10 };
    assert_eq!(a.deliveries("pam", pending).await.expect("log").len(), 3, "not its claim: nothing changed");
    holder.record_delivery(&mine, Some("body".into()), None, AfterAttempt::Delivered).await.expect("record");
    assert_eq!(a.deliveries("pam", pending).await.expect("log").len(), 2, "its holder recorded it");

    // A claim that expired (its replica died mid-attempt) is taken over.
    let j = client_job("pam", JobKind::SetPassword, None);
    let late = j.id;
    a.insert_job(j).await.expect("insert");
    a.cancel(late, "pam").await.expect("cancel");
    let short = a.claim_deliveries(10, Duration::from_millis(1)).await.expect("claim");
    assert_eq!(short.iter().map(|d| d.job_id).collect::<Vec<_>>(), vec![late]);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let taken = b.claim_deliveries(10, lease).await.expect("take over");
    assert_eq!(taken.iter().map(|d| d.job_id).collect::<Vec<_>>(), vec![late], "taken over after it expired");
    a.record_delivery(&taken[0].event_id, None, None, AfterAttempt::Delivered).await.expect("late record");
    let log = a.deliveries("pam", DeliveryFilter { state: None, limit: 10 }).await.expect("log");
    let of_late = log.iter().find(|r| r.job_id == late).expect("late delivery");
    assert_eq!(of_late.state, DeliveryState::Pending, "the replica whose claim expired changes nothing");
}

async fn a_new_hire_is_delivered_by_the_replica_holding_its_key_and_reissued_once_when_it_dies(
    a: &dyn Store,
    b: &dyn Store,
) {
    // `applied` finishes the job through `a`: `a` holds the link key.
    let (id, job_id) = applied(a).await;
    b.heartbeat().await.expect("b alive");
    let lease = Duration::from_secs(60);
    assert!(b.claim_requests(lease, 10).await.expect("claim").is_empty(), "b leaves a's request alone");
    let expires = Timestamp(Timestamp::now().0 + 3_600_000);
    assert!(!b.open_link(id, "link-b", [5; 32], expires).await.expect("open"), "only a can open its link");
    let held = a.claim_requests(lease, 10).await.expect("claim");
    assert_eq!(held.iter().map(|r| r.task_processing_result_id).collect::<Vec<_>>(), vec![id]);
    assert_eq!(held[0].key_holder.as_deref(), Some(a.replica().as_str()));
    assert!(a.open_link(id, "link-a", [5; 32], expires).await.expect("open"));
    assert!(b.claim_requests(lease, 10).await.expect("claim").is_empty(), "a is sending the link");

    // `a` dies before the link is out: `b` re-issues the request, once.
    a.retire().await.expect("a stops");
    let orphaned = b.claim_requests(lease, 10).await.expect("claim");
    assert_eq!(orphaned.len(), 1);
    assert_eq!((orphaned[0].stage, orphaned[0].reissues), (Stage::Delivering, 0));
    assert!(!a.reissue(id, "not a's claim").await.expect("reissue"), "only the claiming replica re-issues");
    assert!(b.reissue(id, "a stopped").await.expect("reissue"));
    assert!(!b.reissue(id, "again").await.expect("reissue"), "once");
    let fresh = b.request(id).await.expect("read").expect("exists");
    assert_eq!((fresh.stage, fresh.job_id, fresh.reissues), (Stage::Resolving, None, 1));
    assert_eq!(fresh.delivery_detail.as_deref(), Some("a stopped"));
    assert_eq!(b.view_link("link-a").await.expect("view"), LinkState::NotFound, "the old link is gone");
    let old = b.job(job_id).await.expect("read").expect("old job");
    assert_eq!(old.state, JobState::Succeeded, "the old job stays as it ended");
    assert!(b.request_of_job(job_id).await.expect("read").is_none(), "the request let its old job go");
    let again = b.claim_requests(lease, 10).await.expect("claim");
    assert_eq!(again.len(), 1, "resolving again at once (the re-issue let its claim go)");
}

async fn a_link_s_rate_limit_is_counted_across_replicas(a: &dyn Store, b: &dyn Store) {
    let (id, _) = applied(a).await;
    let expires = Timestamp(Timestamp::now().0 + 3_600_000);
    assert!(a.open_link(id, "link-limited", [5; 32], expires).await.expect("open"));
    let hour = Duration::from_secs(3600);
    assert_eq!(a.count_link_request("link-limited", 3, hour).await.expect("count"), Ok(()));
    assert_eq!(b.count_link_request("link-limited", 3, hour).await.expect("count"), Ok(()));
    assert_eq!(a.count_link_request("link-limited", 3, hour).await.expect("count"), Ok(()));
    let refused = b.count_link_request("link-limited", 3, hour).await.expect("count");
    assert!(matches!(refused, Err(wait) if wait > 3500 && wait <= 3600), "{refused:?}");
    assert_eq!(b.count_link_request("no-such-link", 3, hour).await.expect("count"), Ok(()), "not counted");
    let short = Duration::from_millis(500);
    assert_eq!(a.count_link_request("link-limited", 1, short).await.expect("count"), Err(1), "the same window");
    tokio::time::sleep(short).await;
    assert_eq!(b.count_link_request("link-limited", 1, short).await.expect("count"), Ok(()), "a new window");
    assert_eq!(a.count_link_request("link-limited", 1, short).await.expect("count"), Err(1), "counted in it");
}

async fn sweeps_run_at_once_on_two_replicas_do_the_work_once(a: &dyn Store, b: &dyn Store) {
    two_clients(a).await;
    a.set_webhook("pam", &hook(&WebhookEvent::ALL)).await.expect("set");
    let jobs: Vec<NewJob> = (0..40).map(|_| client_job("pam", JobKind::SetPassword, None)).collect();
    a.insert_jobs_once(jobs, None).await.expect("insert");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let expiring = ClaimPolicy { time_to_live: Duration::ZERO, ..policy() };
    let mut expired = 0;
    for _ in 0..3 {
        let (x, y) = tokio::join!(a.expire_overdue(expiring), b.expire_overdue(expiring));
        expired += x.expect("a sweeps") + y.expect("b sweeps");
    }
    assert_eq!(expired, 40, "each job expired once");
    let due = a.claim_deliveries(100, Duration::ZERO).await.expect("due");
    assert_eq!(due.len(), 40, "one event per expired job");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut purged = Purged::default();
    for _ in 0..3 {
        let (x, y) = tokio::join!(a.purge_finished(Duration::ZERO), b.purge_finished(Duration::ZERO));
        for p in [x.expect("a purges"), y.expect("b purges")] {
            purged.jobs += p.jobs;
        }
    }
    assert_eq!(purged.jobs, 40, "each job deleted once");
}

// ---- known agents

mod agents {
    use super::*;
    use crate::store::agents::{
        AgentCertificate, AgentReport, AgentStream, DcHealth, DirectoryHealth, Forgetting, JobCounts,
    };
    use crate::store::{AgentState, AgentThresholds};

    contract!(
        an_agent_is_recorded_at_hello_and_with_every_heartbeat,
        a_stream_that_ends_leaves_the_agent_down_unless_a_newer_one_is_open,
        connected_domains_are_those_of_agents_heard_from_recently,
        an_agent_is_forgotten_only_when_not_connected_unless_forced,
    );

    fn report(name: &str, stream: &str, seen: i64) -> AgentReport {
        AgentReport {
            name: name.into(),
            domains: vec![d("a.test"), d("b.test")],
            version: "1.2.3".into(),
            certificate: AgentCertificate { serial: "0a1b".into(), expires: Timestamp(9_000_000_000_000) },
            stream: AgentStream {
                replica: "relay-1".into(),
                id: stream.into(),
                peer: Some("10.0.0.5:50123".into()),
                opened: Timestamp(seen),
            },
            seen: Timestamp(seen),
            directories: None,
            jobs_in_flight: 0,
            finished: JobCounts::default(),
        }
    }

    fn health() -> Vec<DirectoryHealth> {
        vec![DirectoryHealth {
            domain: d("a.test"),
            bind_ok: false,
            detail: "ldaps://dc2: connection refused".into(),
            dcs: vec![
                DcHealth { name: "ldaps://dc1".into(), bind_ok: true, detail: String::new(), latency_ms: Some(12) },
                DcHealth {
                    name: "ldaps://dc2".into(),
                    bind_ok: false,
                    detail: "connection refused".into(),
                    latency_ms: None,
                },
            ],
        }]
    }

    const THRESHOLDS: AgentThresholds =
        AgentThresholds { down_after: Duration::from_secs(30), stale_after: Duration::from_secs(10 * 86_400) };

    async fn an_agent_is_recorded_at_hello_and_with_every_heartbeat(store: &dyn Store) {
        let now = Timestamp::now().0;
        store.record_agent(&report("site-a", "s1", now - 5000)).await.expect("hello");
        let hello = store.agent("site-a").await.expect("read").expect("known");
        assert_eq!((hello.first_seen, hello.last_seen), (Timestamp(now - 5000), Timestamp(now - 5000)));
        assert!(hello.connected && hello.directories.is_empty());
        assert_eq!(hello.domains, vec![d("a.test"), d("b.test")]);
        assert_eq!(hello.certificate.serial, "0a1b");
        assert_eq!(hello.stream.peer.as_deref(), Some("10.0.0.5:50123"));
        assert_eq!(hello.state(&THRESHOLDS, Timestamp(now)), AgentState::Connected);

        let beat = AgentReport {
            directories: Some(health()),
            jobs_in_flight: 3,
            finished: JobCounts { done: 4, failed: 1 },
            ..report("site-a", "s1", now)
        };
        store.record_agent(&beat).await.expect("heartbeat");
        store
            .record_agent(&AgentReport { finished: JobCounts { done: 2, failed: 0 }, ..beat.clone() })
            .await
            .expect("again");
        // A hello (no health) keeps the health of the last heartbeat.
        store.record_agent(&report("site-a", "s2", now)).await.expect("hello again");
        let agent = store.agent("site-a").await.expect("read").expect("known");
        assert_eq!(agent.first_seen, Timestamp(now - 5000), "the first sighting is kept");
        assert_eq!(agent.last_seen, Timestamp(now));
        assert_eq!(agent.directories, health());
        assert_eq!((agent.jobs_done, agent.jobs_failed), (6, 1), "counters add up");
        assert_eq!(agent.stream.id, "s2");
        // An older report never moves last_seen back.
        store.record_agent(&report("site-a", "s2", now - 60_000)).await.expect("late");
        assert_eq!(store.agent("site-a").await.expect("read").expect("known").last_seen, Timestamp(now));

        store.record_agent(&report("site-b", "t1", now)).await.expect("other");
        let names: Vec<String> = store.agents().await.expect("list").into_iter().map(|a| a.name).collect();
        assert_eq!(names, ["site-a", "site-b"]);
        assert_eq!(store.agent("nobody").await.expect("read"), None);
    }

    async fn a_stream_that_ends_leaves_the_agent_down_unless_a_newer_one_is_open(store: &dyn Store) {
        let now = Timestamp::now().0;
        store.record_agent(&report("site-a", "s1", now)).await.expect("first stream");
        store.record_agent(&report("site-a", "s2", now)).await.expect("second stream");
        let older = JobCounts { done: 1, failed: 0 };
        assert!(!store.agent_disconnected("site-a", "s1", older).await.expect("end s1"), "s1 is not current");
        let agent = store.agent("site-a").await.expect("read").expect("known");
        assert!(agent.connected, "the newer stream is still open");
        assert_eq!(agent.jobs_done, 1, "the ended stream's counts are kept");
        assert!(store.agent_disconnected("site-a", "s2", JobCounts::default()).await.expect("end s2"));
        let agent = store.agent("site-a").await.expect("read").expect("known");
        assert!(!agent.connected);
        assert_eq!(agent.state(&THRESHOLDS, Timestamp(now)), AgentState::Down);
        assert!(!store.agent_disconnected("nobody", "x", JobCounts::default()).await.expect("unknown"));
        // Silent for longer than stale_after: stale.
        let later = Timestamp(now + 11 * 86_400_000);
        assert_eq!(agent.state(&THRESHOLDS, later), AgentState::Stale);
    }

    async fn connected_domains_are_those_of_agents_heard_from_recently(store: &dyn Store) {
        let now = Timestamp::now().0;
        store.record_agent(&report("site-a", "s1", now)).await.expect("a");
        store
            .record_agent(&AgentReport { domains: vec![d("c.test")], ..report("site-c", "s3", now - 60_000) })
            .await
            .expect("c, silent");
        store
            .record_agent(&AgentReport { domains: vec![d("e.test")], ..report("site-e", "s5", now) })
            .await
            .expect("e");
        store.agent_disconnected("site-e", "s5", JobCounts::default()).await.expect("e ends");
        let served = store.connected_domains(THRESHOLDS.heard_since(Timestamp(now))).await.expect("domains");
        assert_eq!(served.into_iter().collect::<Vec<_>>(), vec![d("a.test"), d("b.test")]);
    }

    async fn an_agent_is_forgotten_only_when_not_connected_unless_forced(store: &dyn Store) {
        let now = Timestamp::now();
        store.record_agent(&report("site-a", "s1", now.0)).await.expect("a");
        let since = Some(THRESHOLDS.heard_since(now));
        assert_eq!(store.forget_agent("site-a", since).await.expect("forget"), Forgetting::Connected);
        assert!(store.agent("site-a").await.expect("read").is_some(), "a connected agent stays");
        assert_eq!(store.forget_agent("site-a", None).await.expect("force"), Forgetting::Forgotten);
        assert_eq!(store.agent("site-a").await.expect("read"), None);
        assert_eq!(store.forget_agent("site-a", None).await.expect("again"), Forgetting::Unknown);
        store.record_agent(&report("site-b", "s2", now.0)).await.expect("b");
        store.agent_disconnected("site-b", "s2", JobCounts::default()).await.expect("b ends");
        assert_eq!(store.forget_agent("site-b", since).await.expect("forget"), Forgetting::Forgotten, "down");
        // Connected, but silent for longer than down_after: forgettable without force.
        store.record_agent(&report("site-c", "s3", now.0 - 60_000)).await.expect("c");
        assert_eq!(store.forget_agent("site-c", since).await.expect("forget"), Forgetting::Forgotten, "silent");
        assert!(store.agents().await.expect("list").is_empty());
    }
}

// ---- enrollment tokens and revocations

mod enrollment {
    use super::*;
    use crate::store::enrollment::NewEnrollmentToken;
    use pwrelay_shared::domain::AgentName;

    contract!(
        an_enrollment_token_is_used_once_even_by_two_enrollments_at_once,
        an_expired_or_mismatched_token_is_not_used,
        revoking_an_agent_denies_it_and_ends_only_its_leases,
    );

    fn token(id: &str, expires_in_ms: i64) -> NewEnrollmentToken {
        let now = Timestamp::now();
        NewEnrollmentToken {
            id: id.into(),
            secret_sha256: [7; 32],
            agent: AgentName::parse("site-e").expect("name"),
            domains: [d("a.test"), d("b.test")].into(),
            created: now,
            expires: Timestamp(now.0 + expires_in_ms),
        }
    }

    async fn an_enrollment_token_is_used_once_even_by_two_enrollments_at_once(store: &dyn Store) {
        store.add_enrollment_token(&token("t1", 60_000)).await.expect("add");
        let stored = store.enrollment_token("t1").await.expect("read").expect("stored");
        assert_eq!(stored.secret_sha256, vec![7; 32]);
        assert_eq!(stored.agent.as_str(), "site-e");
        assert_eq!(stored.domains, [d("a.test"), d("b.test")].into());
        assert!(stored.used.is_none());
        let now = Timestamp::now();
        let (first, second) = tokio::join!(
            store.use_enrollment_token("t1", &[7; 32], now, "10.0.0.1:1"),
            store.use_enrollment_token("t1", &[7; 32], now, "10.0.0.2:2"),
        );
        let used = [first.expect("use"), second.expect("use")];
        assert_eq!(used.iter().filter(|u| **u).count(), 1, "exactly one of two concurrent uses wins: {used:?}");
        assert!(store.enrollment_token("t1").await.expect("read").expect("kept").used.is_some());
        assert!(!store.use_enrollment_token("t1", &[7; 32], Timestamp::now(), "x").await.expect("use"));
        assert!(store.enrollment_token("nope").await.expect("read").is_none());
    }

    async fn an_expired_or_mismatched_token_is_not_used(store: &dyn Store) {
        store.add_enrollment_token(&token("t2", -1)).await.expect("add");
        assert!(!store.use_enrollment_token("t2", &[7; 32], Timestamp::now(), "x").await.expect("use"), "expired");
        store.add_enrollment_token(&token("t3", 60_000)).await.expect("add");
        assert!(!store.use_enrollment_token("t3", &[8; 32], Timestamp::now(), "x").await.expect("use"), "other hash");
        assert!(store.use_enrollment_token("t3", &[7; 32], Timestamp::now(), "x").await.expect("use"));
    }

    async fn revoking_an_agent_denies_it_and_ends_only_its_leases(store: &dyn Store) {
        let short =
            ClaimPolicy { lease: Duration::from_secs(60), write_timeout: Duration::from_millis(200), ..policy() };
        let (mine, other) = (user_job("a.test", "one@a.test"), user_job("a.test", "two@a.test"));
        let (mine_id, other_id) = (mine.id, other.id);
        store.insert_job(mine).await.expect("insert");
        store.insert_job(other).await.expect("insert");
        assert_eq!(store.claim(&[d("a.test")], "site-r#i1", "site-r", 1, short).await.expect("claim").len(), 1);
        // A name that merely starts with the revoked one keeps its lease.
        assert_eq!(store.claim(&[d("a.test")], "site-r2#i1", "site-r2", 1, short).await.expect("claim").len(), 1);
        let at = Timestamp::now();
        let revoked = store.revoke_agent(&AgentName::parse("site-r").expect("name"), at).await.expect("revoke");
        assert_eq!(revoked.leases_released, 1);
        let list = store.revocations().await.expect("list");
        assert_eq!(list, vec![crate::store::enrollment::Revocation { agent: "site-r".into(), revoked: at }]);
        // Revoking again moves the time on, never back.
        store.revoke_agent(&AgentName::parse("site-r").expect("name"), Timestamp(at.0 - 1000)).await.expect("again");
        assert_eq!(store.revocations().await.expect("list")[0].revoked, at);
        // The released job is claimable once the write timeout has passed; the other is not.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let taken = store.claim(&[d("a.test")], "site-s#i1", "site-s", 10, short).await.expect("claim");
        assert_eq!(ids(&taken), vec![mine_id]);
        assert!(taken[0].earlier_attempt_unresolved, "the revoked agent may have written: the claim says so");
        assert_eq!(state(store, other_id).await, JobState::Dispatched);
    }
}

// ---- the audit trail

mod audit_trail {
    use super::*;
    use crate::audit::AuditRecord;
    use crate::store::AuditFilter;

    contract!(audit_events_are_listed_in_order_by_every_filter, audit_events_past_their_retention_are_deleted_once,);

    fn record(at: i64, event_id: u16, client: Option<&str>, domain: Option<&str>, job: Option<&str>) -> AuditRecord {
        AuditRecord {
            seq: None,
            time: Timestamp(at),
            event_id,
            event: format!("test.{event_id}"),
            replica: "replica-1".into(),
            client: client.map(Into::into),
            agent: (event_id == 5301).then(|| "site-a".into()),
            domain: domain.map(Into::into),
            job_id: job.map(Into::into),
            address: Some("192.0.2.7".into()),
            details: serde_json::json!({ "reason": "x", "count": 2 }),
        }
    }

    fn all() -> AuditFilter {
        AuditFilter { limit: 100, ..AuditFilter::default() }
    }

    async fn audit_events_are_listed_in_order_by_every_filter(store: &dyn Store) {
        let now = Timestamp::now().0;
        let job = JobId::generate().to_string();
        store
            .record_audit(&[
                record(now - 3000, 5101, Some("pam"), None, None),
                record(now - 2000, 5001, Some("pam"), Some("a.test"), Some(&job)),
                record(now - 1000, 5001, Some("other"), Some("b.test"), None),
            ])
            .await
            .expect("record");
        store.record_audit(&[record(now, 5301, None, None, None)]).await.expect("record again");
        let listed = store.audit_events(&all()).await.expect("list");
        assert_eq!(listed.len(), 4);
        let seqs: Vec<i64> = listed.iter().map(|r| r.seq.expect("seq")).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "oldest first: {seqs:?}");
        let first = AuditRecord { seq: None, ..listed[1].clone() };
        assert_eq!(first, record(now - 2000, 5001, Some("pam"), Some("a.test"), Some(&job)), "stored as given");

        let count = |filter: AuditFilter| async move { store.audit_events(&filter).await.expect("list").len() };
        assert_eq!(count(AuditFilter { event_id: Some(5001), ..all() }).await, 2);
        assert_eq!(count(AuditFilter { event: Some("test.5001".into()), ..all() }).await, 2);
        assert_eq!(count(AuditFilter { event_id: Some(99_999), ..all() }).await, 0);
        assert_eq!(count(AuditFilter { event: Some("no.such".into()), ..all() }).await, 0);
        assert_eq!(count(AuditFilter { client: Some("pam".into()), ..all() }).await, 2);
        assert_eq!(count(AuditFilter { agent: Some("site-a".into()), ..all() }).await, 1);
        assert_eq!(count(AuditFilter { job_id: Some(job.clone()), ..all() }).await, 1);
        assert_eq!(count(AuditFilter { since: Some(Timestamp(now - 2000)), ..all() }).await, 3);
        assert_eq!(count(AuditFilter { until: Some(Timestamp(now - 2000)), ..all() }).await, 1);
        assert_eq!(
            count(AuditFilter { domains: Some(vec!["a.test".into()]), ..all() }).await,
            1,
            "scoped: no domainless"
        );
        assert_eq!(count(AuditFilter { domains: Some(vec![]), ..all() }).await, 0);
        let page = store.audit_events(&AuditFilter { limit: 2, ..all() }).await.expect("page");
        let next = store.audit_events(&AuditFilter { after: page[1].seq, limit: 2, ..all() }).await.expect("next");
        assert_eq!(next.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![listed[2].seq, listed[3].seq]);
    }

    async fn audit_events_past_their_retention_are_deleted_once(store: &dyn Store) {
        let now = Timestamp::now().0;
        let day = 86_400_000;
        store
            .record_audit(&[record(now - 3 * day, 5001, None, None, None), record(now - 1000, 5002, None, None, None)])
            .await
            .expect("record");
        assert_eq!(store.purge_audit(Duration::from_secs(2 * 86_400)).await.expect("purge"), 1);
        assert_eq!(store.purge_audit(Duration::from_secs(2 * 86_400)).await.expect("again"), 0, "idempotent");
        let left = store.audit_events(&all()).await.expect("list");
        assert_eq!(left.iter().map(|r| r.event_id).collect::<Vec<_>>(), vec![5002]);
    }
}
