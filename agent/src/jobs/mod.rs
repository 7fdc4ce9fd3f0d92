//! Carrying out one job: answer redeliveries from the journal, validate the job, do the directory
//! work for its kind, record the outcome in the journal and the audit log, build the result.
//!
//! A password arrives in the proto message; it is moved into a [`SecretString`] at once and the
//! message field is left empty.
//!
//! Generate and initial-password jobs share one path: the target is admitted, a password is
//! generated for its effective policy (random by default for generate, friendly for an initial
//! password), written and read back. A generated password leaves sealed to the requester's key
//! or over the link; an initial password leaves only encrypted under a fresh AES-256-GCM key
//! ([`seal`]) that travels next to it in the result, for the one-time link to the new hire.

pub mod journal;
pub mod lease;
pub mod precheck;
pub mod seal;

use std::collections::BTreeMap;
use std::sync::Arc;

use pwrelay_proto::agent::v1 as pb;
use pwrelay_proto::agent::v1::FailureCode;
use pwrelay_shared::domain::DomainName;
use pwrelay_shared::password::{GenerateMode, GenerateOptions};
use pwrelay_shared::secret::SecretString;
use zeroize::Zeroizing;

use crate::audit::{self, AuditLog, Event};
use crate::directory::{AccountTarget, Applied, Directory, DirectoryError, WriteGate, WriteOptions};
use journal::{Journal, Recorded};
use lease::JobLease;
use precheck::PasswordPrecheck;

/// What every job needs.
#[derive(Debug)]
pub struct JobContext {
    /// The directories of every served domain.
    pub directories: BTreeMap<DomainName, Directory>,
    /// Finished jobs, for redeliveries.
    pub journal: Journal,
    /// The audit log.
    pub audit: AuditLog,
    prechecks: BTreeMap<DomainName, PasswordPrecheck>,
    /// The last [`RECENT_JOBS`] jobs carried out, newest last.
    recent: std::sync::Mutex<std::collections::VecDeque<RecentJob>>,
}

/// How many finished jobs `/status` shows.
pub const RECENT_JOBS: usize = 20;

/// A finished job as `/status` shows it: no account, no secret.
#[derive(Debug, Clone, PartialEq)]
pub struct RecentJob {
    /// The job id.
    pub job_id: String,
    /// The kind, in lower case (`set_password`).
    pub kind: String,
    /// `succeeded`, or the failure code in lower case.
    pub outcome: String,
    /// When it finished (Unix seconds).
    pub finished_unix: i64,
    /// How long it took.
    pub seconds: f64,
}

impl JobContext {
    /// The context for `directories`, with each domain's password pre-check built from its configuration.
    pub fn new(directories: BTreeMap<DomainName, Directory>, journal: Journal, audit: AuditLog) -> Self {
        let prechecks = directories
            .iter()
            .map(|(domain, directory)| (domain.clone(), PasswordPrecheck::new(&directory.config().password_check)))
            .collect();
        Self { directories, journal, audit, prechecks, recent: std::sync::Mutex::default() }
    }

    /// The last [`RECENT_JOBS`] jobs carried out, newest last.
    pub fn recent(&self) -> Vec<RecentJob> {
        self.recent.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).iter().cloned().collect()
    }

    fn finished(&self, job: RecentJob) {
        crate::metrics::metrics().job_finished(
            &job.kind,
            &job.outcome,
            std::time::Duration::from_secs_f64(job.seconds),
        );
        // Single pushes and pops: a panicked holder leaves the ring consistent.
        let mut recent = self.recent.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if recent.len() == RECENT_JOBS {
            recent.pop_front();
        }
        recent.push_back(job);
    }
}

/// Shared job context.
pub type Jobs = Arc<JobContext>;

/// Carries out `job` under the lease it arrived with and returns its result.
pub async fn execute(context: &JobContext, job: pb::Job) -> pb::JobResult {
    let lease = JobLease::granted(job.attempt, lease_duration(&job), None);
    execute_leased(context, job, &lease).await
}

/// The lease a job arrived with: its duration, or (from a relay that sends none) the time until
/// its deadline on the relay's clock.
pub fn lease_duration(job: &pb::Job) -> std::time::Duration {
    match job.lease_duration_ms {
        0 => std::time::Duration::from_millis(u64::try_from(job.lease_deadline_unix_ms - now_unix_ms()).unwrap_or(0)),
        ms => std::time::Duration::from_millis(ms),
    }
}

/// Carries out `job` and returns its result, naming the attempt `lease` holds when it ends. Every
/// directory write asks `lease` first ([`lease::JobLease::admit_write`]).
#[tracing::instrument(skip_all, fields(job_id = %job.id, domain = %job.domain, attempt = job.attempt))]
pub async fn execute_leased(context: &JobContext, mut job: pb::Job, lease: &JobLease) -> pb::JobResult {
    let started = std::time::Instant::now();
    let kind = pb::JobKind::try_from(job.kind).unwrap_or(pb::JobKind::Unspecified);
    let mut event = Event {
        job_id: job.id.clone(),
        kind: kind.as_str_name().trim_start_matches("JOB_KIND_").to_ascii_lowercase(),
        domain: job.domain.clone(),
        target: target_text(job.target.as_ref()),
        attempt: job.attempt,
        ..Event::default()
    };
    match context.journal.lookup(&job.id) {
        Some(Recorded::Answer(mut previous)) => {
            tracing::info!("job already finished; answering from the journal");
            context.audit.record(&Event { event_id: audit::ids::REPLAYED, event: "job_replayed", ..event }).await;
            // The same application, reported under the attempt that asks now.
            previous.attempt = lease.attempt();
            return previous;
        }
        Some(Recorded::Reissue) => {
            // The earlier attempt set a password that only its lost result carried (in plaintext
            // over the link, or with the key that opens it): nobody can ever read it, so this
            // attempt replaces it with a fresh one.
            let (event_id, name) = match kind {
                pb::JobKind::GeneratePassword => {
                    (audit::ids::GENERATED_PASSWORD_REISSUED, "generated_password_reissued")
                }
                _ => (audit::ids::INITIAL_PASSWORD_REISSUED, "initial_password_reissued"),
            };
            tracing::info!("generated password redelivered; its earlier result never arrived, issuing a fresh one");
            context.audit.record(&Event { event_id, event: name, ..event.clone() }).await;
        }
        None if job.earlier_attempt_unresolved && writes(kind) => {
            // Another agent (or this one before a restart) held the job and went silent: it may
            // have written. The write below is the job's again, and is said to be.
            tracing::info!("an earlier attempt lapsed unreported; applying the job again");
            context
                .audit
                .record(&Event { event_id: audit::ids::ATTEMPT_REISSUED, event: "attempt_reissued", ..event.clone() })
                .await;
        }
        None => {}
    }
    context.audit.record(&Event { event_id: audit::ids::JOB_RECEIVED, event: "job_received", ..event.clone() }).await;
    let outcome = match run(context, kind, &mut job, &event, lease).await {
        Ok(Done { applied, secret, secret_key }) => {
            tracing::info!(account = %applied.account.dn, verified = applied.verified, "job done");
            let (sealed_secret, secret_encoding) = secret.unwrap_or((Vec::new(), pb::SecretEncoding::None));
            event.account_dn.clone_from(&applied.account.dn);
            event.dc.clone_from(&applied.dc_url);
            let (event_id, name) = match kind {
                pb::JobKind::Unlock => (audit::ids::ACCOUNT_UNLOCKED, "account_unlocked"),
                pb::JobKind::Verify => {
                    event.password_matches = Some(applied.password_matches);
                    (audit::ids::PASSWORD_VERIFIED, "password_verified")
                }
                pb::JobKind::Reconcile => (audit::ids::RECONCILED, "password_reconciled"),
                pb::JobKind::GeneratePassword => (audit::ids::GENERATED, "password_generated"),
                pb::JobKind::InitialPassword => (audit::ids::INITIAL_PASSWORD_SET, "initial_password_set"),
                _ => (audit::ids::PASSWORD_SET, "password_set"),
            };
            context.audit.record(&Event { event_id, event: name, ..event }).await;
            pb::job_result::Outcome::Success(pb::JobSuccess {
                account_dn: applied.account.dn.clone(),
                verified: applied.verified,
                pwd_last_set: applied.account.pwd_last_set,
                sealed_secret,
                secret_encoding: secret_encoding as i32,
                password_matches: applied.password_matches,
                account_state: Some(applied.account.state()),
                notes: applied.notes,
                // The key leaves zeroizing memory only for the result message itself.
                secret_key: secret_key.map(|key| key.to_vec()).unwrap_or_default(),
            })
        }
        Err(error) => {
            tracing::warn!(code = ?error.code, error = %error.message, "job failed");
            let (event_id, name) = match error.code {
                FailureCode::OutOfScope => (audit::ids::OUT_OF_SCOPE, "refused_out_of_scope"),
                FailureCode::ProtectedAccount => (audit::ids::PROTECTED_ACCOUNT, "refused_protected_account"),
                FailureCode::AccountStateConflict => (audit::ids::STATE_CONFLICT, "refused_state_conflict"),
                // Refused by the agent's own AD-policy check (the DC's refusals carry its code).
                FailureCode::PolicyViolation if error.directory_code.is_none() => {
                    (audit::ids::PASSWORD_REJECTED, "refused_password_policy")
                }
                FailureCode::InvalidJob | FailureCode::UnsupportedJob | FailureCode::UnknownDomain => {
                    (audit::ids::INVALID_JOB, "refused_invalid_job")
                }
                FailureCode::NotStarted => (audit::ids::NOT_STARTED, "job_not_started"),
                _ => (audit::ids::JOB_FAILED, "job_failed"),
            };
            event.code = error.code.as_str_name().trim_start_matches("FAILURE_CODE_").to_ascii_lowercase();
            event.message.clone_from(&error.message);
            context.audit.record(&Event { event_id, event: name, ..event }).await;
            pb::job_result::Outcome::Failure(error.to_proto())
        }
    };
    let outcome_name = match &outcome {
        pb::job_result::Outcome::Success(_) => "succeeded".to_owned(),
        pb::job_result::Outcome::Failure(failure) => {
            failure.code().as_str_name().trim_start_matches("FAILURE_CODE_").to_ascii_lowercase()
        }
    };
    context.finished(RecentJob {
        job_id: job.id.clone(),
        kind: kind.as_str_name().trim_start_matches("JOB_KIND_").to_ascii_lowercase(),
        outcome: outcome_name,
        finished_unix: unix_seconds(),
        seconds: started.elapsed().as_secs_f64(),
    });
    let result = pb::JobResult { job_id: job.id.clone(), outcome: Some(outcome), attempt: lease.attempt() };
    if let Err(error) = context.journal.record(&result).await {
        tracing::error!(%error, path = %context.journal.path().display(), "job could not be journaled; a redelivery would apply it again");
    }
    result
}

/// A job's outcome: what it did, the secret it returns (generated passwords only) and, for an
/// initial password, the key that opens it.
struct Done {
    applied: Applied,
    secret: Option<(Vec<u8>, pb::SecretEncoding)>,
    secret_key: Option<Zeroizing<[u8; seal::KEY_LEN]>>,
}

impl From<Applied> for Done {
    fn from(applied: Applied) -> Self {
        Self { applied, secret: None, secret_key: None }
    }
}

async fn run(
    context: &JobContext,
    kind: pb::JobKind,
    job: &mut pb::Job,
    event: &Event,
    lease: &JobLease,
) -> Result<Done, DirectoryError> {
    let (password, recipient) = match job.secret.take().and_then(|s| s.material) {
        Some(pb::secret_material::Material::Password(mut text)) => (SecretString::take_from(&mut text), None),
        Some(pb::secret_material::Material::RecipientPublicKey(key)) => (SecretString::default(), Some(key)),
        None => (SecretString::default(), None),
    };
    let directory = DomainName::parse(&job.domain).ok().and_then(|d| context.directories.get(&d)).ok_or_else(|| {
        DirectoryError::new(FailureCode::UnknownDomain, format!("this agent does not serve {}", job.domain))
    })?;
    if !lease.is_held() {
        return Err(lease::not_started("the job's lease ended before it could start; nothing was done".into()));
    }
    let target = AccountTarget::from_proto(job.target.take().and_then(|t| t.by))?;
    let options = job.options.unwrap_or_default();
    match kind {
        pb::JobKind::SetPassword => {
            if password.is_empty() {
                return Err(DirectoryError::new(FailureCode::InvalidJob, "the job carries no password"));
            }
            let write = WriteOptions {
                must_change: options.must_change,
                unlock: options.unlock,
                enforce_history: options.enforce_history,
            };
            let mut prepared = directory.prepare_write(&target, write.must_change).await?;
            let precheck = context
                .prechecks
                .get(directory.domain())
                .map(|p| p.check(&prepared.policy, &prepared.account, &password));
            match precheck {
                Some(Ok(outcome)) => {
                    record_precheck(context, event, &prepared.account.dn, outcome.events, None).await;
                    prepared.notes.extend(outcome.notes);
                }
                Some(Err((error, events))) => {
                    record_precheck(context, event, &prepared.account.dn, events, Some(&error)).await;
                    return Err(error);
                }
                None => {}
            }
            let applied = match directory.write(prepared, &password, write, lease).await {
                // An earlier attempt whose answer was lost may have set this very password, which
                // history now refuses: then the job is done.
                Err(refused) if history_refusal(&refused, write) && job.attempt > 1 => {
                    match directory.verify(&target, &password).await {
                        Ok(mut current) if current.password_matches => {
                            tracing::info!(
                                "the password is already the account's: an earlier attempt of this job set it"
                            );
                            current.password_matches = false;
                            current.notes.push("an earlier attempt of this job had already set the password".into());
                            current
                        }
                        _ => return Err(refused),
                    }
                }
                other => other?,
            };
            require_verified(applied, options.must_change).map(Done::from)
        }
        pb::JobKind::Reconcile => {
            let reconcile = directory.config().reconcile.as_ref().ok_or_else(|| {
                DirectoryError::new(
                    FailureCode::InvalidJob,
                    format!("reconciliation is not configured for {} on this agent ([domains.reconcile])", job.domain),
                )
            })?;
            let prepared = directory.prepare_write(&target, false).await?;
            let upn = prepared.account.upn.clone().ok_or_else(|| {
                DirectoryError::new(
                    FailureCode::InvalidJob,
                    format!("{} has no userPrincipalName to derive its password from", prepared.account.dn),
                )
            })?;
            let derived = pwrelay_shared::derive::derive(&upn, &reconcile.salt, &reconcile.params)
                .map_err(|e| DirectoryError::new(FailureCode::InvalidJob, format!("derivation failed: {e}")))?;
            let write = WriteOptions { must_change: false, unlock: options.unlock, enforce_history: false };
            let applied = directory.write(prepared, &derived, write, lease).await?;
            require_verified(applied, false).map(Done::from)
        }
        pb::JobKind::GeneratePassword => {
            let recipient = match recipient.as_deref() {
                Some(key) => Some(<[u8; 32]>::try_from(key).map(crypto_box::PublicKey::from).map_err(|_| {
                    DirectoryError::new(FailureCode::InvalidJob, "the recipient public key must be 32 bytes (X25519)")
                })?),
                None => None,
            };
            let write =
                WriteOptions { must_change: options.must_change, unlock: options.unlock, enforce_history: false };
            let (applied, generated) =
                generate_and_set(context, directory, &target, job.generate, GenerateMode::Random, write, false, lease)
                    .await?;
            // The password is set: from here on a failure to return it must not hide that.
            let secret = match recipient {
                Some(key) => match seal::sealed_box(&key, &generated) {
                    Some(sealed) => (sealed, pb::SecretEncoding::SealedBox),
                    None => {
                        return Err(DirectoryError::new(
                            FailureCode::VerificationFailed,
                            format!("the password of {} was set but could not be sealed", applied.account.dn),
                        ));
                    }
                },
                None => (generated.expose_secret().as_bytes().to_vec(), pb::SecretEncoding::Plaintext),
            };
            Ok(Done { applied, secret: Some(secret), secret_key: None })
        }
        pb::JobKind::InitialPassword => {
            let write =
                WriteOptions { must_change: options.must_change, unlock: options.unlock, enforce_history: false };
            // An initial password is for an account nobody has used yet: a workflow run for anyone
            // else must not become a way to take over their account.
            let (applied, generated) =
                generate_and_set(context, directory, &target, job.generate, GenerateMode::Friendly, write, true, lease)
                    .await?;
            // The password is set: from here on a failure to return it must not hide that. A
            // redelivery of the job sets a fresh one (see the journal).
            let Some((sealed, key)) = seal::aes_256_gcm(&generated) else {
                return Err(DirectoryError::new(
                    FailureCode::VerificationFailed,
                    format!("the initial password of {} was set but could not be encrypted", applied.account.dn),
                ));
            };
            Ok(Done { applied, secret: Some((sealed, pb::SecretEncoding::Aes256Gcm)), secret_key: Some(key) })
        }
        pb::JobKind::Unlock => {
            let applied = directory.unlock(&target, lease).await?;
            if !applied.verified {
                return Err(DirectoryError::new(
                    FailureCode::VerificationFailed,
                    format!("lockoutTime of {} was cleared but the DC still reports it locked out", applied.account.dn),
                ));
            }
            Ok(applied.into())
        }
        pb::JobKind::Verify => {
            if password.is_empty() {
                return Err(DirectoryError::new(FailureCode::InvalidJob, "the job carries no password to verify"));
            }
            directory.verify(&target, &password).await.map(Done::from)
        }
        other => Err(DirectoryError::new(
            FailureCode::UnsupportedJob,
            format!(
                "this agent (version {}) does not carry out {} jobs",
                env!("CARGO_PKG_VERSION"),
                other.as_str_name()
            ),
        )),
    }
}

/// Generates a password for the target that meets its effective policy and passes the
/// banned-password evaluation (`spec`, with `default_mode` when it names none), writes it and
/// requires the read-back to show it applied.
#[expect(clippy::too_many_arguments, reason = "one call site per generating kind, each naming every input")]
async fn generate_and_set(
    context: &JobContext,
    directory: &Directory,
    target: &AccountTarget,
    spec: Option<pb::GenerateOptions>,
    default_mode: GenerateMode,
    write: WriteOptions,
    first_sign_in_only: bool,
    gate: &dyn WriteGate,
) -> Result<(Applied, SecretString), DirectoryError> {
    let spec = spec.unwrap_or_default();
    let mode = match pb::GenerateMode::try_from(spec.mode).unwrap_or(pb::GenerateMode::Unspecified) {
        pb::GenerateMode::Friendly => GenerateMode::Friendly,
        pb::GenerateMode::Passphrase => GenerateMode::Passphrase,
        pb::GenerateMode::Random => GenerateMode::Random,
        pb::GenerateMode::Unspecified => default_mode,
    };
    let defaults = GenerateOptions::default();
    let length = match spec.length {
        0 => defaults.length,
        n => usize::try_from(n).unwrap_or(usize::MAX).min(pwrelay_shared::policy::MAX_PASSWORD_CHARS),
    };
    let prepared = directory.prepare_write(target, write.must_change).await?;
    if first_sign_in_only && prepared.account.signed_in {
        return Err(DirectoryError::new(
            FailureCode::AccountStateConflict,
            format!(
                "{} has signed in before: an initial password is only set on accounts nobody has used yet; reset \
                 a used account with a rotation",
                prepared.account.dn
            ),
        ));
    }
    let precheck = context
        .prechecks
        .get(directory.domain())
        .ok_or_else(|| DirectoryError::new(FailureCode::UnknownDomain, "no password check for this domain"))?;
    let generated =
        precheck.generate(&prepared.policy, &prepared.account, &GenerateOptions { mode, length, ..defaults })?;
    let applied = require_verified(directory.write(prepared, &generated, write, gate).await?, write.must_change)?;
    Ok((applied, generated))
}

/// Audits the banned-password evaluation's decision with its Password Protection filter event.
async fn record_precheck(
    context: &JobContext,
    event: &Event,
    account_dn: &str,
    events: Option<pwrelay_shared::password::EventIds>,
    refusal: Option<&DirectoryError>,
) {
    // An AD-policy refusal (no Password Protection ids) is audited with the job's failure.
    let Some(ids) = events else { return };
    let (event_id, name) = match refusal {
        Some(_) => (ids.filter, "password_protection_refused"),
        None => (ids.filter, "password_protection_passed"),
    };
    context
        .audit
        .record(&Event {
            event_id,
            event: name,
            account_dn: account_dn.to_owned(),
            reason_event_id: ids.reason,
            message: refusal.map(|e| e.message.clone()).unwrap_or_default(),
            ..event.clone()
        })
        .await;
}

fn require_verified(applied: Applied, must_change: bool) -> Result<Applied, DirectoryError> {
    if applied.verified {
        return Ok(applied);
    }
    Err(DirectoryError::new(
        FailureCode::VerificationFailed,
        format!(
            "the password was written to {} on {} but the read-back shows pwdLastSet {} (expected {}){}",
            applied.account.dn,
            applied.dc_url,
            applied.account.pwd_last_set,
            if must_change { "0" } else { "a time" },
            if applied.account.locked_out() { " and the account still locked out" } else { "" }
        ),
    ))
}

/// Whether the DC refused a write under the password policy while history applied to it.
fn history_refusal(error: &DirectoryError, write: WriteOptions) -> bool {
    write.enforce_history && error.code == FailureCode::PolicyViolation && error.directory_code.is_some()
}

/// Whether a job kind writes to the directory.
fn writes(kind: pb::JobKind) -> bool {
    matches!(
        kind,
        pb::JobKind::SetPassword
            | pb::JobKind::GeneratePassword
            | pb::JobKind::InitialPassword
            | pb::JobKind::Reconcile
            | pb::JobKind::Unlock
    )
}

fn target_text(target: Option<&pb::Target>) -> String {
    use pb::target::By;
    match target.and_then(|t| t.by.as_ref()) {
        Some(By::Upn(v)) => format!("upn:{v}"),
        Some(By::SamAccountName(v)) => format!("sam_account_name:{v}"),
        Some(By::ObjectGuid(v)) => format!("object_guid:{v}"),
        Some(By::Dn(v)) => format!("dn:{v}"),
        None => String::new(),
    }
}

/// The wall clock in Unix seconds (for display and metrics only; leases use the monotonic clock).
pub fn unix_seconds() -> i64 {
    now_unix_ms() / 1000
}

fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_dc_policy_refusal_under_history_counts_as_a_history_refusal() {
        let dc_refusal = DirectoryError::from_result("password reset", 19, "0000052D: Constraint violation");
        let history = WriteOptions { enforce_history: true, ..WriteOptions::default() };
        assert!(history_refusal(&dc_refusal, history));
        assert!(!history_refusal(&dc_refusal, WriteOptions::default()), "history did not apply");
        // The agent's own pre-check refusal carries no DC code.
        let precheck = DirectoryError::new(FailureCode::PolicyViolation, "too short");
        assert!(!history_refusal(&precheck, history));
        let unavailable = DirectoryError::unavailable("no DC");
        assert!(!history_refusal(&unavailable, history));
    }
}
