//! Jobs: what a client asked for, where it is in its life, and how it ended.
//!
//! A job moves `queued → dispatched → succeeded | failed`. `dispatched` means an agent holds a
//! lease on it; when the lease lapses or the agent disconnects, the job returns to `queued` and is
//! delivered again. The password of a job is kept sealed (see [`crate::seal`]) and erased as soon as
//! the job is final.

pub mod events;

use std::fmt;
use std::str::FromStr;

use pwrelay_proto::agent::v1 as pb;
use pwrelay_shared::domain::DomainName;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{AdditionalProperties, KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};
use uuid::Uuid;

/// A job's id (UUID v7, so ids sort by creation time).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct JobId(Uuid);

impl JobId {
    /// A new, time-ordered id.
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for JobId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

impl Serialize for JobId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl utoipa::PartialSchema for JobId {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::Custom("uuid".into())))
            .description(Some("A job's id: a UUID v7, so ids sort by creation time."))
            .examples([serde_json::json!("0190c5d6-4f1e-7a3b-9c2d-5e6f7a8b9c0d")])
            .into()
    }
}

impl utoipa::ToSchema for JobId {}

/// Defines an enum stored and shown as snake_case text. Its OpenAPI schema is a string enum whose
/// description lists every value with its doc comment, so the doc comments are the API reference.
macro_rules! text_enum {
    ($(#[doc = $doc:literal])* $name:ident { $($(#[doc = $vdoc:literal])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[doc = $doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
        pub enum $name { $($(#[doc = $vdoc])* $variant),+ }

        impl $name {
            /// The stored and displayed form.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }

            /// Parses the stored form.
            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some(Self::$variant),)+ _ => None }
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                let description = concat!($($doc, "\n",)* "\n", $("- `", $text, "`:", $($vdoc, " ",)* "\n",)+);
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .enum_values(Some([$($text),+]))
                    .description(Some(description.trim_start()))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

text_enum! {
    /// What a job does.
    JobKind {
        /// Set a caller-supplied password.
        SetPassword = "set_password",
        /// The agent generates a compliant password, sets it and returns it once.
        GeneratePassword = "generate_password",
        /// Check whether a password binds; change nothing.
        Verify = "verify",
        /// Clear a lockout; change no password.
        Unlock = "unlock",
        /// Reset to the seed-derived value (the salt stays on the agent).
        Reconcile = "reconcile",
        /// A batch of reconcile jobs; never sent to an agent, it ends when its children have.
        ReconcileBatch = "reconcile_batch",
    }
}

impl JobKind {
    /// The wire form for the agent.
    pub fn to_proto(self) -> pb::JobKind {
        match self {
            Self::SetPassword => pb::JobKind::SetPassword,
            Self::GeneratePassword => pb::JobKind::GeneratePassword,
            Self::Verify => pb::JobKind::Verify,
            Self::Unlock => pb::JobKind::Unlock,
            Self::Reconcile | Self::ReconcileBatch => pb::JobKind::Reconcile,
        }
    }
}

text_enum! {
    /// Kinds of generated passwords.
    GenerateMode {
        /// All character classes.
        Random = "random",
        /// No look-alike characters, grouped for reading aloud.
        Friendly = "friendly",
        /// Words with a digit and a symbol.
        Passphrase = "passphrase",
    }
}

/// How the agent generates a password.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, ToSchema)]
pub struct GenerateSpec {
    /// Characters (at least; raised to the account's policy minimum).
    pub length: u32,
    /// The kind.
    pub mode: GenerateMode,
}

text_enum! {
    /// How a returned secret is to be read.
    SecretEncoding {
        /// A libsodium sealed box to the requester's X25519 public key.
        SealedBox = "sealed_box",
        /// The password itself (kept sealed with the store key until it is read).
        Plaintext = "plaintext",
    }
}

/// A secret a job returns (a generated password), as the store keeps it.
#[derive(Clone, PartialEq, Eq)]
pub struct ResultSecret {
    /// How to read `bytes` once opened.
    pub encoding: SecretEncoding,
    /// A sealed box as the agent made it, or the password sealed with the store key.
    pub bytes: Vec<u8>,
}

impl fmt::Debug for ResultSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ResultSecret({}, [redacted])", self.encoding.as_str())
    }
}

/// The account's state as the agent read it after the job.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, serde::Deserialize, ToSchema)]
pub struct AccountState {
    /// Locked out.
    pub locked_out: bool,
    /// Must change the password at next logon.
    pub must_change_password: bool,
    /// Disabled.
    pub disabled: bool,
    /// The password never expires.
    pub password_never_expires: bool,
}

text_enum! {
    /// Where a job is in its life.
    JobState {
        /// Waiting for an agent of its domain.
        Queued = "queued",
        /// Leased to an agent.
        Dispatched = "dispatched",
        /// Done as asked.
        Succeeded = "succeeded",
        /// Ended without the change; see the job's error.
        Failed = "failed",
    }
}

impl JobState {
    /// Whether the job can no longer change.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

text_enum! {
    /// Why a job failed: the codes API clients branch on.
    ErrorCode {
        /// The password does not meet the AD policy: refused by the DC (with `directory_code`) or by
        /// the agent's pre-check (without).
        PolicyViolation = "policy_violation",
        /// The agent's service account lacks the right to change this account.
        AccessDenied = "access_denied",
        /// No account matches the target.
        AccountNotFound = "account_not_found",
        /// Several accounts match the target.
        AmbiguousAccount = "ambiguous_account",
        /// No domain controller could be reached.
        DirectoryUnavailable = "directory_unavailable",
        /// The target is outside the agent's configured scope.
        OutOfScope = "out_of_scope",
        /// The target is a protected account.
        ProtectedAccount = "protected_account",
        /// The change was written but did not read back as expected.
        VerificationFailed = "verification_failed",
        /// The agent could not make sense of the job.
        InvalidJob = "invalid_job",
        /// The agent does not support this kind of job.
        UnsupportedJob = "unsupported_job",
        /// The agent does not serve this domain.
        UnknownDomain = "unknown_domain",
        /// Another directory error; the message has the DC's text.
        DirectoryError = "directory_error",
        /// The job was cancelled.
        Cancelled = "cancelled",
        /// The request conflicts with the account's state (must_change on a never-expiring password).
        AccountStateConflict = "account_state_conflict",
        /// The agent's banned-password check refused the password before touching the directory.
        PasswordRejected = "password_rejected",
        /// No agent finished the job in its allowed number of deliveries.
        DeliveryExhausted = "delivery_exhausted",
        /// The job waited longer than its time to live.
        Expired = "expired",
        /// Some jobs of a batch failed; see its children.
        PartialFailure = "partial_failure",
        /// An agent reported a failure this relay does not know.
        Unknown = "unknown",
    }
}

impl ErrorCode {
    /// Maps the agent's failure code.
    pub fn from_proto(code: pb::FailureCode) -> Self {
        use pb::FailureCode as F;
        match code {
            F::PolicyViolation => Self::PolicyViolation,
            F::AccessDenied => Self::AccessDenied,
            F::AccountNotFound => Self::AccountNotFound,
            F::AmbiguousAccount => Self::AmbiguousAccount,
            F::DirectoryUnavailable => Self::DirectoryUnavailable,
            F::InvalidJob => Self::InvalidJob,
            F::UnsupportedJob => Self::UnsupportedJob,
            F::OutOfScope => Self::OutOfScope,
            F::ProtectedAccount => Self::ProtectedAccount,
            F::VerificationFailed => Self::VerificationFailed,
            F::UnknownDomain => Self::UnknownDomain,
            F::DirectoryError => Self::DirectoryError,
            F::Cancelled => Self::Cancelled,
            F::AccountStateConflict => Self::AccountStateConflict,
            F::PasswordRejected => Self::PasswordRejected,
            F::Unspecified => Self::Unknown,
        }
    }
}

/// The account a job is about.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Target {
    /// userPrincipalName.
    Upn(String),
    /// sAMAccountName.
    SamAccountName(String),
    /// objectGUID.
    ObjectGuid(Uuid),
    /// Distinguished name.
    Dn(String),
}

impl Target {
    /// The stored kind name (also the API field name).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Upn(_) => "upn",
            Self::SamAccountName(_) => "sam_account_name",
            Self::ObjectGuid(_) => "object_guid",
            Self::Dn(_) => "dn",
        }
    }

    /// The stored value.
    pub fn value(&self) -> String {
        match self {
            Self::Upn(v) | Self::SamAccountName(v) | Self::Dn(v) => v.clone(),
            Self::ObjectGuid(g) => g.hyphenated().to_string(),
        }
    }

    /// Rebuilds a target from its stored kind and value.
    pub fn from_parts(kind: &str, value: String) -> Option<Self> {
        Some(match kind {
            "upn" => Self::Upn(value),
            "sam_account_name" => Self::SamAccountName(value),
            "object_guid" => Self::ObjectGuid(Uuid::parse_str(&value).ok()?),
            "dn" => Self::Dn(value),
            _ => return None,
        })
    }

    /// The wire form for the agent.
    pub fn to_proto(&self) -> pb::Target {
        use pb::target::By;
        let by = match self {
            Self::Upn(v) => By::Upn(v.clone()),
            Self::SamAccountName(v) => By::SamAccountName(v.clone()),
            Self::ObjectGuid(g) => By::ObjectGuid(g.hyphenated().to_string()),
            Self::Dn(v) => By::Dn(v.clone()),
        };
        pb::Target { by: Some(by) }
    }
}

impl utoipa::PartialSchema for Target {
    fn schema() -> RefOr<Schema> {
        let property =
            |description: &str| ObjectBuilder::new().schema_type(Type::String).description(Some(description));
        ObjectBuilder::new()
            .description(Some("The account: exactly one of its properties."))
            .property("upn", property("userPrincipalName, like jane.doe@corp.example.com."))
            .property("sam_account_name", property("sAMAccountName (pre-Windows 2000 logon name)."))
            .property(
                "object_guid",
                property("objectGUID in its text form.").format(Some(SchemaFormat::Custom("uuid".into()))),
            )
            .property("dn", property("Distinguished name."))
            .min_properties(Some(1))
            .max_properties(Some(1))
            .additional_properties(Some(AdditionalProperties::FreeForm(false)))
            .into()
    }
}

impl utoipa::ToSchema for Target {}

impl Serialize for Target {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(1))?;
        map.serialize_entry(self.kind(), &self.value())?;
        map.end()
    }
}

/// How to apply a password write.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, ToSchema)]
pub struct JobOptions {
    /// Require a change at next logon.
    pub must_change: bool,
    /// Clear a lockout.
    pub unlock: bool,
    /// Apply password history to the reset (policy hints control).
    pub enforce_history: bool,
}

/// Why a job failed.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, ToSchema)]
pub struct JobError {
    /// The class of failure.
    pub code: ErrorCode,
    /// What happened, including the DC's reason text.
    pub message: String,
    /// The leading hex code of the DC's diagnostic, when there is one (`0000052D`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub directory_code: Option<String>,
}

/// What a successful job reported.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Default, ToSchema)]
pub struct JobSuccess {
    /// The account the job was about.
    pub account_dn: String,
    /// Whether the agent read the change back.
    pub verified: bool,
    /// pwdLastSet as read back (0 = must change at next logon).
    pub pwd_last_set: i64,
    /// For verification jobs: whether the password is the account's current one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_matches: Option<bool>,
    /// The account's state after the job.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_state: Option<AccountState>,
    /// Remarks from the agent.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// How a job ended, as an agent reports it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Outcome {
    /// Done; generating jobs also return their password.
    Succeeded(JobSuccess, Option<ResultSecret>),
    /// Not done; `retryable` failures go back to the queue while attempts remain.
    Failed {
        /// Why.
        error: JobError,
        /// Whether trying again later may succeed.
        retryable: bool,
    },
}

/// A job as a client and the store see it (never with its secret).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Job {
    /// Id.
    pub job_id: JobId,
    /// Kind.
    pub kind: JobKind,
    /// AD domain.
    #[schema(value_type = String, example = "corp.example.com")]
    pub domain: DomainName,
    /// Target account.
    pub target: Target,
    /// Options.
    pub options: JobOptions,
    /// State.
    pub state: JobState,
    /// The API client that created it.
    #[serde(skip)]
    pub client: String,
    /// When it was accepted (RFC 3339).
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
    /// When it was last leased to an agent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dispatched_at: Option<Timestamp>,
    /// When it became final.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    /// The agent that holds or finished it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// How many times it was leased.
    pub attempts: u32,
    /// Why it failed, or why its last attempt failed while it waits for another.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
    /// What it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<JobSuccess>,
    /// For generating jobs: how the password is generated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generate: Option<GenerateSpec>,
    /// For generating jobs: whether the password can still be read once from `/v1/jobs/{id}/secret`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretStatus>,
    /// For a job that is part of a batch: the batch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<JobId>,
    /// For a batch: how many of its jobs are in each state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
}

/// Counts of a batch's jobs by state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct Progress {
    /// All jobs of the batch.
    pub total: u32,
    /// Waiting for an agent.
    pub queued: u32,
    /// With an agent.
    pub dispatched: u32,
    /// Done.
    pub succeeded: u32,
    /// Failed.
    pub failed: u32,
}

/// Where a job's returned secret is.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SecretStatus {
    /// Not returned yet (the job is not finished).
    Pending,
    /// Ready to be read once.
    Available,
    /// Read, and erased from the relay.
    Retrieved,
}

/// A new job, ready to be stored. `sealed_secret` is the password sealed by [`crate::seal`].
#[derive(Debug)]
pub struct NewJob {
    /// Id.
    pub id: JobId,
    /// Kind.
    pub kind: JobKind,
    /// AD domain.
    pub domain: DomainName,
    /// Target account.
    pub target: Target,
    /// Options.
    pub options: JobOptions,
    /// The creating API client.
    pub client: String,
    /// The sealed secret (opaque ciphertext).
    pub sealed_secret: Option<Vec<u8>>,
    /// For generating jobs.
    pub generate: Option<GenerateSpec>,
    /// For generating jobs: the requester's X25519 public key to seal the password to.
    pub recipient_key: Option<Vec<u8>>,
    /// The batch this job belongs to.
    pub parent_id: Option<JobId>,
}

/// A job leased to an agent, with its sealed secret.
#[derive(Debug)]
pub struct LeasedJob {
    /// The job.
    pub job: Job,
    /// The sealed secret.
    pub sealed_secret: Option<Vec<u8>>,
    /// The requester's public key, for generating jobs.
    pub recipient_key: Option<Vec<u8>>,
    /// Lease end, Unix milliseconds.
    pub lease_deadline_unix_ms: i64,
}

/// A point in time, milliseconds since the Unix epoch; shown as RFC 3339.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// Now.
    pub fn now() -> Self {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Self(ms)
    }

    /// RFC 3339 text, UTC, millisecond precision.
    pub fn to_rfc3339(self) -> String {
        let nanos = i128::from(self.0) * 1_000_000;
        time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
            .ok()
            .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
            .unwrap_or_else(|| self.0.to_string())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl utoipa::PartialSchema for Timestamp {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .description(Some("RFC 3339, UTC, millisecond precision."))
            .into()
    }
}

impl utoipa::ToSchema for Timestamp {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_round_trip_through_their_stored_form() {
        let guid = Uuid::parse_str("0f3a9a3e-7e1c-4a49-9b8e-2f4b1c1d2e3f").expect("uuid");
        for t in [
            Target::Upn("a@b.c".into()),
            Target::SamAccountName("jdoe".into()),
            Target::ObjectGuid(guid),
            Target::Dn("CN=x,DC=y".into()),
        ] {
            assert_eq!(Target::from_parts(t.kind(), t.value()), Some(t.clone()));
        }
        assert_eq!(Target::from_parts("email", "x".into()), None);
    }

    #[test]
    fn states_and_codes_round_trip() {
        for s in [JobState::Queued, JobState::Dispatched, JobState::Succeeded, JobState::Failed] {
            assert_eq!(JobState::parse(s.as_str()), Some(s));
        }
        assert_eq!(ErrorCode::parse("policy_violation"), Some(ErrorCode::PolicyViolation));
        assert_eq!(ErrorCode::from_proto(pb::FailureCode::AccountNotFound), ErrorCode::AccountNotFound);
    }

    #[test]
    fn timestamps_render_as_rfc3339() {
        assert_eq!(Timestamp(0).to_rfc3339(), "1970-01-01T00:00:00Z");
        assert_eq!(Timestamp(1_500).to_rfc3339(), "1970-01-01T00:00:01.5Z");
    }
}
