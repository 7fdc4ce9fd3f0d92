//! The jobs: each test account gets a sequence of rotations of every kind, one after another (the
//! next only once the previous is final), paced over the fault phase. What each job was, how it
//! ended and which password it set (chosen here, or read back from the relay once) is recorded
//! for the checks at the end.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use crypto_box::SecretKey;
use pwrelay_shared::testkit::TestUser;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::json;
use tokio::time::Instant;

use crate::api::{Api, Reply};

/// A job's kind, as the harness asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Kind {
    /// `POST /v1/rotations` with a caller-supplied password.
    Set,
    /// `generate` with a `recipient_public_key`: the password comes back as a sealed box.
    GenerateSealed,
    /// `generate` without a key: the password comes back in plaintext.
    GeneratePlain,
    /// A new hire's initial password (the lifecycle callout and the one-time link).
    Initial,
}

impl Kind {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Set => "set",
            Self::GenerateSealed => "generate (sealed box)",
            Self::GeneratePlain => "generate (plaintext)",
            Self::Initial => "initial password",
        }
    }

    pub(crate) fn generated(self) -> bool {
        matches!(self, Self::GenerateSealed | Self::GeneratePlain)
    }

    /// Whether the relay hands the password out (at `/secret`, or through the one-time link).
    pub(crate) fn returns_password(self) -> bool {
        self != Self::Set
    }
}

/// What became of a generated password at `GET /v1/jobs/{id}/secret`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SecretOutcome {
    /// The job returns no password (a set job, or a job that failed).
    NotExpected,
    /// Read once; the second read was refused.
    ReadOnce,
    /// Read, and handed out again on a second read.
    ReadTwice,
    /// Never handed out, for the reason given (e.g. 409 long after the job succeeded).
    Missing(String),
    /// A new hire's request ended `failed` and the workflow was told why (e.g. the link key,
    /// held in memory only, was lost in a relay restart): declared, not counted as a loss.
    Declared(String),
    /// A read reached the relay but its answer was lost to a fault, and the password is gone
    /// since (410): at most once, by design; not counted as a loss.
    LostInTransit,
}

/// One job of one account.
#[derive(Debug, Clone)]
pub(crate) struct JobRecord {
    pub(crate) kind: Kind,
    pub(crate) id: Option<String>,
    /// `succeeded` or `failed` once final.
    pub(crate) state: Option<String>,
    pub(crate) error_code: Option<String>,
    /// The password the job set, when known: chosen by the harness, or read back once.
    pub(crate) password: Option<String>,
    pub(crate) secret: SecretOutcome,
    /// Why the harness gave up on it, when it did.
    pub(crate) note: Option<String>,
}

impl JobRecord {
    pub(crate) fn succeeded(&self) -> bool {
        self.state.as_deref() == Some("succeeded")
    }
    pub(crate) fn is_final(&self) -> bool {
        matches!(self.state.as_deref(), Some("succeeded" | "failed"))
    }
}

/// One account's run.
#[derive(Debug, Clone)]
pub(crate) struct AccountRun {
    pub(crate) user: TestUser,
    pub(crate) planned: usize,
    pub(crate) jobs: Vec<JobRecord>,
}

/// Counters the progress lines print.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    pub(crate) submitted: AtomicUsize,
    pub(crate) succeeded: AtomicUsize,
    pub(crate) failed: AtomicUsize,
}

impl Progress {
    pub(crate) fn line(&self) -> String {
        let (s, ok, failed) = (
            self.submitted.load(Ordering::Relaxed),
            self.succeeded.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        );
        format!("jobs: {s} submitted, {ok} succeeded, {failed} failed, {} open", s.saturating_sub(ok + failed))
    }
}

/// When the workers pace their jobs and when they must stop.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Schedule {
    /// Until then, jobs are spread out; afterwards they follow one another at once.
    pub(crate) phase_end: Instant,
    /// No job is submitted or waited for after it.
    pub(crate) hard_deadline: Instant,
    /// The longest mean pause before a job during the fault phase.
    pub(crate) mean_think: Duration,
}

/// Everything a worker shares with the others.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) api: Api,
    pub(crate) domain: String,
    pub(crate) seed: u64,
    /// The requester's key for sealed-box generate jobs (only the harness holds the private part).
    pub(crate) recipient: SecretKey,
    pub(crate) progress: Arc<Progress>,
    pub(crate) schedule: Schedule,
}

/// A password AD accepts (length, three classes) that no banned-word check refuses.
fn chosen_password(rng: &mut StdRng) -> String {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let body: String = (0..18).map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())])).collect();
    format!("Fs!{body}-9q")
}

/// Runs `planned` jobs for `user`, one after another.
pub(crate) async fn run_account(shared: Arc<Shared>, index: usize, user: TestUser, planned: usize) -> AccountRun {
    let mut rng = StdRng::seed_from_u64(shared.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(index as u64));
    let schedule = shared.schedule;
    let mut jobs = Vec::with_capacity(planned);
    for n in 0..planned {
        let now = Instant::now();
        if now >= schedule.hard_deadline {
            break;
        }
        if now < schedule.phase_end {
            // Spread what is left of this account's jobs over what is left of the phase (faults
            // make jobs slow), so that jobs keep running while faults are injected.
            let left = schedule.phase_end - now;
            let share = left.mul_f64(0.7 / (planned - n) as f64).min(schedule.mean_think);
            tokio::time::sleep(share.mul_f64(rng.random_range(0.0..2.0)).min(left)).await;
        }
        let kind = match rng.random_range(0..10) {
            0..4 => Kind::Set,
            4..7 => Kind::GenerateSealed,
            _ => Kind::GeneratePlain,
        };
        let mode = if rng.random_bool(0.5) { "random" } else { "friendly" };
        let (body, password) = match kind {
            Kind::Set => {
                let password = chosen_password(&mut rng);
                (
                    json!({ "domain": shared.domain, "target": { "upn": user.upn }, "password": password }),
                    Some(password),
                )
            }
            Kind::GenerateSealed => {
                let public = base64::engine::general_purpose::STANDARD.encode(shared.recipient.public_key().as_bytes());
                (
                    json!({ "domain": shared.domain, "target": { "upn": user.upn },
                            "generate": { "length": 20, "mode": mode }, "recipient_public_key": public }),
                    None,
                )
            }
            Kind::GeneratePlain | Kind::Initial => (
                json!({ "domain": shared.domain, "target": { "upn": user.upn }, "generate": { "length": 20, "mode": mode } }),
                None,
            ),
        };
        let key = format!("fault-{}-{index}-{n}", shared.seed);
        let mut record = JobRecord {
            kind,
            id: None,
            state: None,
            error_code: None,
            password,
            secret: SecretOutcome::NotExpected,
            note: None,
        };
        match shared.api.submit("/v1/rotations", &key, &body, schedule.hard_deadline).await {
            Ok(id) => record.id = Some(id),
            Err(why) => {
                record.note = Some(why);
                jobs.push(record);
                break;
            }
        }
        shared.progress.submitted.fetch_add(1, Ordering::Relaxed);
        let id = record.id.clone().unwrap_or_default();
        let job = shared.api.wait_final(&id, schedule.hard_deadline).await;
        let state = job["state"].as_str().unwrap_or_default().to_owned();
        record.error_code = job["error"]["code"].as_str().map(str::to_owned);
        if state != "succeeded" && state != "failed" {
            record.note = Some(format!("still {state:?} at the deadline"));
            jobs.push(record);
            break;
        }
        record.state = Some(state);
        if record.succeeded() {
            shared.progress.succeeded.fetch_add(1, Ordering::Relaxed);
            if kind.generated() {
                let (outcome, password) = read_secret(&shared, &id).await;
                record.secret = outcome;
                record.password = password;
            }
        } else {
            shared.progress.failed.fetch_add(1, Ordering::Relaxed);
        }
        jobs.push(record);
    }
    AccountRun { user, planned, jobs }
}

/// How long a succeeded generate job's password may stay unreadable (409) before it counts as lost.
const SECRET_GRACE: Duration = Duration::from_secs(20);

/// Reads a succeeded generate job's password once (opening a sealed box with the harness's key),
/// then checks that a second read is refused.
async fn read_secret(shared: &Shared, id: &str) -> (SecretOutcome, Option<String>) {
    let path = format!("/v1/jobs/{id}/secret");
    let grace_end = Instant::now() + SECRET_GRACE;
    // Whether a read may have reached the relay without its answer reaching us.
    let mut maybe_taken = false;
    let body = loop {
        // Longer than any pause of the relay, so that a pause never loses an answer.
        match shared.api.get_once(&path, Duration::from_secs(60)).await {
            Reply::Answered(200, body) => break body,
            Reply::Answered(409, _) if Instant::now() < grace_end => {}
            Reply::Answered(409, _) => {
                return (SecretOutcome::Missing(format!("409 for {SECRET_GRACE:?} after the job succeeded")), None);
            }
            Reply::Answered(410, _) if maybe_taken => return (SecretOutcome::LostInTransit, None),
            Reply::Answered(410, _) => return (SecretOutcome::Missing("410 before any read".into()), None),
            Reply::Answered(503, _) => {}
            Reply::Answered(status, reply) => return (SecretOutcome::Missing(format!("{status}: {reply}")), None),
            Reply::Unanswered(why) => {
                // A refused connection never reached the relay; anything later may have.
                if !why.contains("onnect") {
                    maybe_taken = true;
                }
            }
        }
        if Instant::now() >= shared.schedule.hard_deadline + SECRET_GRACE {
            return (SecretOutcome::Missing("the relay never answered the read".into()), None);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let password = match body["encoding"].as_str() {
        Some("plaintext") => body["password"].as_str().map(str::to_owned),
        Some("sealed_box") => body["sealed_box"]
            .as_str()
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .and_then(|sealed| shared.recipient.unseal(&sealed).ok())
            .and_then(|plain| String::from_utf8(plain).ok()),
        _ => None,
    };
    let Some(password) = password else {
        return (SecretOutcome::Missing("the answer holds no password that opens".into()), None);
    };
    // Exactly once: a second read must be refused.
    for _ in 0..20 {
        match shared.api.get_once(&path, Duration::from_secs(60)).await {
            Reply::Answered(200, _) => return (SecretOutcome::ReadTwice, Some(password)),
            Reply::Answered(503, _) | Reply::Unanswered(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            Reply::Answered(_, _) => return (SecretOutcome::ReadOnce, Some(password)),
        }
    }
    (SecretOutcome::ReadOnce, Some(password))
}
