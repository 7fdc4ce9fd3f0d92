//! One claim loop per replica: the agent sessions register their demand (holder, agent, domains,
//! free room) and receive the jobs leased to them over a channel; the loop claims for all of them
//! at once ([`JobStore::claim_for`](crate::store::JobStore::claim_for), one transaction).
//!
//! The loop is woken by [`JobEvents::job_queued`] (this replica's, and on PostgreSQL the other
//! replicas' by LISTEN/NOTIFY), by a session whose room grew (one of its jobs ended, so the next
//! job of that account may be claimable), and by one timer (`link.claim_interval_ms`) for what no
//! event announces: lapsed leases and back-offs that ended. It claims again as long as some demand
//! got everything it asked for. A demand that got less marks its domains *drained*: the loop claims
//! for a drained domain again only after the next event or tick, or once a stream serving it freed
//! room. So an idle stream costs nothing per tick but its place in one claim, and a busy relay
//! claims for every stream with room in one transaction.
//!
//! A job leased to a stream that ended before the job reached it is given back at once
//! (`not_started`): the agent never saw it.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pwrelay_shared::domain::DomainName;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::jobs::events::JobEvents;
use crate::jobs::{ErrorCode, JobError, JobId, LeasedJob, Outcome};
use crate::store::{ClaimDemand, ClaimPolicy, Completion, Store};

/// How long the loop waits after a failed claim before it claims again.
const RETRY_AFTER_ERROR: Duration = Duration::from_millis(500);

/// The replica's claim loop and the sessions' demands.
#[derive(Debug)]
pub struct Dispatcher {
    store: Arc<dyn Store>,
    events: Arc<JobEvents>,
    policy: ClaimPolicy,
    interval: Duration,
    slots: Mutex<HashMap<u64, Arc<Slot>>>,
    next_slot: AtomicU64,
    wake: Notify,
}

/// One session's demand, as the loop sees it.
#[derive(Debug)]
struct Slot {
    holder: String,
    agent: String,
    domains: Vec<DomainName>,
    /// The session's free room: its most in flight less what it holds.
    free: AtomicUsize,
    /// Jobs leased to it and sent on `jobs` that it has not taken in yet.
    outstanding: AtomicUsize,
    /// Its room grew since the last claim: its domains are worth another look.
    freed: AtomicBool,
    jobs: mpsc::UnboundedSender<LeasedJob>,
}

impl Slot {
    fn room(&self) -> usize {
        self.free.load(Ordering::Acquire).saturating_sub(self.outstanding.load(Ordering::Acquire))
    }
}

/// A session's registration: where its jobs arrive, and how it tells its room. Dropping it
/// withdraws the demand.
#[derive(Debug)]
pub(super) struct Demand {
    dispatcher: Arc<Dispatcher>,
    id: u64,
    slot: Arc<Slot>,
    jobs: mpsc::UnboundedReceiver<LeasedJob>,
}

impl Dispatcher {
    /// A dispatcher claiming for its sessions with `policy`, unwoken every `interval`.
    pub fn new(store: Arc<dyn Store>, events: Arc<JobEvents>, policy: ClaimPolicy, interval: Duration) -> Self {
        Self {
            store,
            events,
            policy,
            interval,
            slots: Mutex::new(HashMap::new()),
            next_slot: AtomicU64::new(0),
            wake: Notify::new(),
        }
    }

    /// Registers a session's demand; it has no room until [`Demand::set_free`].
    pub(super) fn register(self: &Arc<Self>, holder: String, agent: String, domains: Vec<DomainName>) -> Demand {
        let (sender, jobs) = mpsc::unbounded_channel();
        let slot = Arc::new(Slot {
            holder,
            agent,
            domains,
            free: AtomicUsize::new(0),
            outstanding: AtomicUsize::new(0),
            freed: AtomicBool::new(false),
            jobs: sender,
        });
        let id = self.next_slot.fetch_add(1, Ordering::Relaxed);
        self.lock_slots().insert(id, Arc::clone(&slot));
        Demand { dispatcher: Arc::clone(self), id, slot, jobs }
    }

    fn lock_slots(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Slot>>> {
        // The map stays consistent even if a holder of the lock panicked: every change is one call.
        self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Claims for the registered sessions whenever woken, until `cancel`.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut queued = self.events.queued();
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut drained = BTreeSet::new();
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                changed = queued.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    drained.clear();
                }
                () = self.wake.notified() => {}
                _ = tick.tick() => drained.clear(),
            }
            if !self.claim_rounds(&mut drained).await {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(RETRY_AFTER_ERROR) => {}
                }
            }
        }
    }

    /// Claims for every demand with room in a domain not drained, again as long as one got all it
    /// asked for. False when the store failed.
    async fn claim_rounds(&self, drained: &mut BTreeSet<DomainName>) -> bool {
        loop {
            let asking = self.asking(drained);
            if asking.is_empty() {
                return true;
            }
            let demands = asking
                .iter()
                .map(|(slot, room)| ClaimDemand {
                    holder: slot.holder.clone(),
                    agent: slot.agent.clone(),
                    domains: slot.domains.clone(),
                    limit: *room,
                })
                .collect();
            let leased = match self.store.claim_for(demands, self.policy).await {
                Ok(leased) => leased,
                Err(error) => {
                    tracing::error!(%error, "claiming jobs for the agent streams failed; trying again");
                    return false;
                }
            };
            let mut filled = false;
            for ((slot, asked), jobs) in asking.iter().zip(leased) {
                if jobs.len() < *asked {
                    drained.extend(slot.domains.iter().cloned());
                } else {
                    filled = true;
                }
                slot.outstanding.fetch_add(jobs.len(), Ordering::AcqRel);
                for job in jobs {
                    if let Err(mpsc::error::SendError(job)) = slot.jobs.send(job) {
                        slot.outstanding.fetch_sub(1, Ordering::AcqRel);
                        self.give_back(&slot.holder, job.job.job_id, job.job.attempts).await;
                    }
                }
            }
            if !filled {
                return true;
            }
        }
    }

    /// The demands with room in a domain not drained, with their room; a demand whose room grew
    /// takes its domains off `drained` first.
    fn asking(&self, drained: &mut BTreeSet<DomainName>) -> Vec<(Arc<Slot>, usize)> {
        let slots = self.lock_slots();
        for slot in slots.values() {
            if slot.freed.swap(false, Ordering::AcqRel) {
                for domain in &slot.domains {
                    drained.remove(domain);
                }
            }
        }
        slots
            .values()
            .filter_map(|slot| {
                let room = slot.room();
                (room > 0 && slot.domains.iter().any(|d| !drained.contains(d))).then(|| (Arc::clone(slot), room))
            })
            .collect()
    }

    /// Releases a job leased to a stream that ended before it took the job in: the agent never
    /// saw it, so it is claimable again at once.
    async fn give_back(&self, holder: &str, id: JobId, attempt: u32) {
        let outcome = Outcome::Failed {
            error: JobError {
                code: ErrorCode::NotStarted,
                message: "the agent stream it was leased to ended before the job reached it".into(),
                directory_code: None,
            },
            retryable: true,
        };
        match self.store.complete(id, holder, attempt, outcome).await {
            Ok(Completion::Requeued) => {
                tracing::info!(job_id = %id, attempt, "job leased to a stream that ended; queued again");
                self.events.job_queued();
            }
            Ok(other) => {
                tracing::info!(job_id = %id, attempt, completion = ?other, "job leased to a stream that ended")
            }
            Err(error) => tracing::warn!(
                job_id = %id,
                %error,
                "a job leased to a stream that ended could not be given back; it is claimable once its lease lapses"
            ),
        }
    }
}

impl Demand {
    /// Sets the session's free room; more room than before wakes the loop.
    pub(super) fn set_free(&self, free: usize) {
        if self.slot.free.swap(free, Ordering::AcqRel) < free {
            self.slot.freed.store(true, Ordering::Release);
            self.dispatcher.wake.notify_one();
        }
    }

    /// The next job leased to this session. Call [`Self::taken`] once it is counted in the
    /// session's room.
    pub(super) async fn next(&mut self) -> Option<LeasedJob> {
        self.jobs.recv().await
    }

    /// A job leased to this session already waiting, if any.
    pub(super) fn try_next(&mut self) -> Option<LeasedJob> {
        self.jobs.try_recv().ok()
    }

    /// `count` received jobs are in the session's room now ([`Self::set_free`] was called).
    pub(super) fn taken(&self, count: usize) {
        self.slot.outstanding.fetch_sub(count, Ordering::AcqRel);
    }

    /// Withdraws the demand and gives back every job leased to it that it did not take in.
    pub(super) async fn close(mut self) {
        self.dispatcher.lock_slots().remove(&self.id);
        self.jobs.close();
        while let Ok(job) = self.jobs.try_recv() {
            self.dispatcher.give_back(&self.slot.holder, job.job.job_id, job.job.attempts).await;
        }
    }

    /// Gives back a job leased to this session that never reached its agent.
    pub(super) async fn give_back(&self, id: JobId, attempt: u32) {
        self.dispatcher.give_back(&self.slot.holder, id, attempt).await;
    }
}

impl Drop for Demand {
    fn drop(&mut self) {
        self.dispatcher.lock_slots().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::{JobKind, JobOptions, JobState, NewJob, Target};
    use crate::store::sqlite::SqliteStore;

    fn policy() -> ClaimPolicy {
        ClaimPolicy {
            lease: Duration::from_secs(60),
            write_timeout: Duration::from_secs(15),
            max_attempts: 3,
            time_to_live: Duration::from_secs(3600),
        }
    }

    fn job(domain: &str, upn: &str) -> NewJob {
        NewJob {
            id: JobId::generate(),
            kind: JobKind::SetPassword,
            domain: DomainName::parse(domain).expect("domain"),
            target: Target::Upn(upn.into()),
            options: JobOptions::default(),
            client: "pam".into(),
            sealed_secret: Some(vec![1, 2, 3]),
            generate: None,
            recipient_key: None,
            parent_id: None,
        }
    }

    async fn receive(demand: &mut Demand, count: usize) -> Vec<LeasedJob> {
        let mut jobs = Vec::new();
        while jobs.len() < count {
            let next = tokio::time::timeout(Duration::from_secs(5), demand.next()).await;
            jobs.push(next.expect("a job within 5 s").expect("the channel is open"));
        }
        jobs
    }

    /// One loop serves every registered session, each within its room and from its domains only,
    /// and gives back what a session that ended never took in.
    #[tokio::test]
    async fn one_loop_leases_to_every_session_within_its_room_and_takes_back_what_was_not_delivered() {
        let dir = tempfile::tempdir().expect("dir");
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("relay.db")).expect("open"));
        let events = Arc::new(JobEvents::default());
        // A long interval: only events and freed room wake the loop in this test.
        let dispatcher =
            Arc::new(Dispatcher::new(Arc::clone(&store), Arc::clone(&events), policy(), Duration::from_secs(600)));
        let cancel = CancellationToken::new();
        let running = tokio::spawn(Arc::clone(&dispatcher).run(cancel.clone()));
        let a = DomainName::parse("a.test").expect("domain");
        let b = DomainName::parse("b.test").expect("domain");
        let mut first = dispatcher.register("h1".into(), "x".into(), vec![a.clone()]);
        let mut second = dispatcher.register("h2".into(), "y".into(), vec![b.clone()]);
        // Full sessions are asked nothing.
        let full: Vec<Demand> =
            (0..200).map(|n| dispatcher.register(format!("full{n}"), "z".into(), vec![a.clone()])).collect();
        first.set_free(2);
        second.set_free(5);
        let mut a_jobs = Vec::new();
        for n in 0..4 {
            let job = job("a.test", &format!("u{n}@a.test"));
            a_jobs.push(job.id);
            store.insert_job(job).await.expect("insert");
        }
        store.insert_job(job("b.test", "u@b.test")).await.expect("insert");
        events.job_queued();
        let got = receive(&mut first, 2).await;
        assert!(got.iter().all(|l| l.job.domain == a));
        first.set_free(0);
        first.taken(2);
        let other = receive(&mut second, 1).await;
        assert_eq!(other[0].job.domain, b);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(first.try_next().is_none(), "no more than its room");
        assert!(second.try_next().is_none(), "nothing else in its domain");
        // Two of its jobs ended: the loop leases the other two, which the session never takes in.
        first.set_free(2);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let mut dispatched = 0;
            for id in &a_jobs {
                if store.job(*id).await.expect("read").map(|j| j.state) == Some(JobState::Dispatched) {
                    dispatched += 1;
                }
            }
            if dispatched == 4 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "the freed room was not filled");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        first.close().await;
        // Given back by the session as it closed, or by the loop if the leases were still on
        // their way to the channel then.
        let delivered: Vec<JobId> = got.iter().map(|l| l.job.job_id).collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let mut states = Vec::new();
            for id in &a_jobs {
                let job = store.job(*id).await.expect("read").expect("exists");
                states.push((delivered.contains(id), job.state, job.attempts));
            }
            let expected = states.iter().all(|(was_delivered, state, attempts)| {
                *attempts == 1 && *state == if *was_delivered { JobState::Dispatched } else { JobState::Queued }
            });
            if expected {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "delivered jobs stay leased, the others are given back at once: {states:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(full);
        cancel.cancel();
        running.await.expect("the loop ends");
    }
}
