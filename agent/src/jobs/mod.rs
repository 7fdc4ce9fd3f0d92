//! Carrying out one job: validate it, find the domain, do the directory work, build the result.
//!
//! The password arrives in the proto message; it is moved into a [`SecretString`] at once and the
//! message field is left empty.

use std::collections::BTreeMap;
use std::sync::Arc;

use pwrelay_proto::agent::v1 as pb;
use pwrelay_proto::agent::v1::FailureCode;
use pwrelay_shared::domain::DomainName;
use pwrelay_shared::secret::SecretString;

use crate::directory::{AccountTarget, Directory, DirectoryError, WriteOptions};

/// The directories of every served domain.
pub type Directories = Arc<BTreeMap<DomainName, Directory>>;

/// Carries out `job` and returns its result.
#[tracing::instrument(skip_all, fields(job_id = %job.id, domain = %job.domain, attempt = job.attempt))]
pub async fn execute(directories: &Directories, mut job: pb::Job) -> pb::JobResult {
    let id = job.id.clone();
    let outcome = match run(directories, &mut job).await {
        Ok(success) => {
            tracing::info!(account = %success.account_dn, verified = success.verified, "password set");
            pb::job_result::Outcome::Success(success)
        }
        Err(error) => {
            tracing::warn!(code = ?error.code, error = %error.message, "job failed");
            pb::job_result::Outcome::Failure(error.to_proto())
        }
    };
    pb::JobResult { job_id: id, outcome: Some(outcome) }
}

async fn run(directories: &Directories, job: &mut pb::Job) -> Result<pb::JobSuccess, DirectoryError> {
    let password = match job.secret.take().and_then(|s| s.material) {
        Some(pb::secret_material::Material::Password(mut text)) => SecretString::take_from(&mut text),
        _ => SecretString::default(),
    };
    let kind = pb::JobKind::try_from(job.kind).unwrap_or(pb::JobKind::Unspecified);
    if kind != pb::JobKind::SetPassword {
        return Err(DirectoryError::new(
            FailureCode::UnsupportedJob,
            format!("this agent (version {}) does not carry out {kind:?} jobs", env!("CARGO_PKG_VERSION")),
        ));
    }
    let directory = DomainName::parse(&job.domain).ok().and_then(|d| directories.get(&d)).ok_or_else(|| {
        DirectoryError::new(FailureCode::UnknownDomain, format!("this agent does not serve {}", job.domain))
    })?;
    let lease_left = job.lease_deadline_unix_ms - now_unix_ms();
    if lease_left <= 0 {
        return Err(DirectoryError {
            retryable: true,
            ..DirectoryError::new(FailureCode::DirectoryUnavailable, "the job's lease ended before it could start")
        });
    }
    let target = AccountTarget::from_proto(job.target.take().and_then(|t| t.by))?;
    if password.is_empty() {
        return Err(DirectoryError::new(FailureCode::InvalidJob, "the job carries no password"));
    }
    let options = job.options.unwrap_or_default();
    let written = directory
        .set_password(&target, &password, WriteOptions { must_change: options.must_change, unlock: options.unlock })
        .await?;
    if !written.verified {
        return Err(DirectoryError::new(
            FailureCode::VerificationFailed,
            format!(
                "the password was written to {} on {} but pwdLastSet reads back {} (expected {})",
                written.dn,
                written.dc_url,
                written.pwd_last_set,
                if options.must_change { "0" } else { "a time" }
            ),
        ));
    }
    Ok(pb::JobSuccess {
        account_dn: written.dn,
        verified: true,
        pwd_last_set: written.pwd_last_set,
        sealed_secret: Vec::new(),
    })
}

fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
