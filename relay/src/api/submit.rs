//! What every job-creating endpoint shares: the domain and target of the request, and queueing the
//! job durably.

use crate::audit::{Event, Kind};
use axum::Json;
use axum::http::{HeaderMap, StatusCode};
use pwrelay_shared::domain::DomainName;
use pwrelay_shared::secret::SecretString;
use serde::{Deserialize, Serialize};
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::{IntoParams, ToSchema};

use super::ApiState;
use super::error::ApiError;
use crate::jobs::{JobId, NewJob, Target};
use crate::store::{ApiClient, Insertion, Operation};

/// AD's upper bound on a password (MS-SAMR).
pub(super) const MAX_PASSWORD_CHARS: usize = 256;
/// Upper bound on a target identifier.
const MAX_TARGET_CHARS: usize = 1024;

/// The request header that makes a job-creating request safe to retry.
pub(super) const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// The account a job is about: exactly one of the fields.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(min_properties = 1, max_properties = 1)]
pub(super) struct TargetRequest {
    /// userPrincipalName: `jane.doe@corp.example.com`.
    #[schema(
        nullable = false,
        min_length = 1,
        max_length = 1024,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*@[^\u0000-\u001f\u007f-\u009f]*$"
    )]
    upn: Option<String>,
    /// sAMAccountName (the pre-Windows 2000 logon name): `jdoe`.
    #[schema(
        nullable = false,
        min_length = 1,
        max_length = 1024,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    sam_account_name: Option<String>,
    /// objectGUID, with or without braces.
    #[schema(nullable = false, format = "uuid")]
    object_guid: Option<String>,
    /// Distinguished name: `CN=Jane Doe,OU=Staff,DC=corp,DC=example,DC=com`.
    #[schema(
        nullable = false,
        min_length = 1,
        max_length = 1024,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    dn: Option<String>,
}

/// The answer to a job-creating request: the job is on disk and queued.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct JobAccepted {
    /// The job (for a reconciliation, the batch); read it with `GET /v1/jobs/{id}`.
    job_id: JobId,
    /// Whether an agent serving the job's domain is connected right now.
    agent_connected: bool,
}

/// What every job-creating route answers: 202, the replay header, the job.
pub(super) type Accepted = (StatusCode, HeaderMap, Json<JobAccepted>);

/// The `Idempotency-Key` request header, documented on every job-creating route with
/// `params(IdempotencyKey)`.
#[derive(Debug)]
pub(super) enum IdempotencyKey {}

impl IntoParams for IdempotencyKey {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let schema = ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(255))
            .pattern(Some("^[!-~]{1,255}$"));
        vec![
            ParameterBuilder::new()
                .name(IDEMPOTENCY_KEY)
                .parameter_in(ParameterIn::Header)
                .description(Some(
                    "1-255 visible ASCII characters. The same key with the same body answers with the original job \
                     (and `Idempotent-Replayed: true`); the same key with another body gets 409.",
                ))
                .schema(Some(schema))
                .build(),
        ]
    }
}

impl TargetRequest {
    /// A target given by its userPrincipalName (a CSV upload's `upn` column).
    pub(super) fn upn(upn: String) -> Self {
        Self { upn: Some(upn), sam_account_name: None, object_guid: None, dn: None }
    }

    /// The target, or an error naming `at` (the request field this target is) as the field at fault.
    pub(super) fn validate(self, at: &str) -> Result<Target, ApiError> {
        let mut given = Vec::new();
        if let Some(v) = self.upn {
            given.push(Target::Upn(v));
        }
        if let Some(v) = self.sam_account_name {
            given.push(Target::SamAccountName(v));
        }
        if let Some(v) = self.object_guid {
            let guid = uuid::Uuid::parse_str(v.trim().trim_matches(['{', '}'])).map_err(|_| {
                ApiError::invalid_request("target.object_guid must be a GUID like 0f3a9a3e-7e1c-4a49-9b8e-2f4b1c1d2e3f")
                    .field(format!("{at}.object_guid"))
            })?;
            given.push(Target::ObjectGuid(guid));
        }
        if let Some(v) = self.dn {
            given.push(Target::Dn(v));
        }
        let target = match <[Target; 1]>::try_from(given) {
            Ok([target]) => target,
            Err(_) => {
                return Err(ApiError::invalid_request(
                    "target must have exactly one of upn, sam_account_name, object_guid, dn",
                )
                .field(at));
            }
        };
        let value = target.value();
        let field = format!("{at}.{}", target.kind());
        if value.trim().is_empty() {
            return Err(ApiError::invalid_request(format!("target.{} is empty", target.kind())).field(field));
        }
        if value.chars().count() > MAX_TARGET_CHARS || value.chars().any(char::is_control) {
            return Err(ApiError::invalid_request(format!(
                "target.{} must be at most {MAX_TARGET_CHARS} characters without control characters",
                target.kind()
            ))
            .field(field));
        }
        if matches!(target, Target::Upn(_)) && !value.contains('@') {
            return Err(ApiError::invalid_request("target.upn must look like user@domain").field(field));
        }
        Ok(target)
    }
}

/// Whether `client`'s scopes cover `domain` (a client without domain scopes has them all).
pub(super) fn covers(client: &ApiClient, domain: &DomainName) -> bool {
    client.scopes.domains.as_ref().is_none_or(|scoped| scoped.contains(domain))
}

/// The request's domain, if this relay serves it and the client's scopes cover it. The refusal
/// is the same for a domain the relay does not serve and for one outside the client's scopes, so
/// a scoped client cannot probe which other domains the relay serves; it names neither the domain
/// asked for nor any domain the client's scopes do not cover.
pub(super) fn served_domain(state: &ApiState, client: &ApiClient, domain: &str) -> Result<DomainName, ApiError> {
    let domain = DomainName::parse(domain)
        .map_err(|_| ApiError::invalid_request("domain must be a DNS name like corp.example.com").field("domain"))?;
    if !state.domains.contains(&domain) || !covers(client, &domain) {
        let yours: Vec<&str> = state.domains.iter().filter(|d| covers(client, d)).map(DomainName::as_str).collect();
        let message = match yours.as_slice() {
            [] => "unknown domain; this relay serves none this API client may use".to_owned(),
            served => format!("unknown domain; this API client can use {}", served.join(", ")),
        };
        return Err(ApiError::invalid_request(message).field("domain"));
    }
    Ok(domain)
}

/// Refuses an empty, over-long or control-character password.
pub(super) fn check_password(field: &str, password: &SecretString) -> Result<(), ApiError> {
    if password.is_empty() {
        return Err(ApiError::invalid_request(format!("{field} is empty")).field(field));
    }
    if password.char_count() > MAX_PASSWORD_CHARS {
        return Err(
            ApiError::invalid_request(format!("{field} is longer than {MAX_PASSWORD_CHARS} characters")).field(field)
        );
    }
    if password.expose_secret().chars().any(char::is_control) {
        return Err(ApiError::invalid_request(format!("{field} contains control characters")).field(field));
    }
    Ok(())
}

/// Refuses a request the client's scopes do not allow, naming the missing scope.
pub(super) fn authorize(client: &ApiClient, operation: Operation, domain: &DomainName) -> Result<(), ApiError> {
    match client.scopes.missing(operation, domain) {
        None => Ok(()),
        Some(scope) => Err(ApiError::forbidden(format!(
            "API client {} lacks the scope {scope}; an operator can grant it with `pwrelay clients scopes {}`",
            client.name, client.name
        ))
        .missing_scope(scope)),
    }
}

/// The `Idempotency-Key` header, if sent: 1-255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else { return Ok(None) };
    let key =
        value.to_str().ok().filter(|k| !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()));
    key.map(|k| Some(k.to_owned())).ok_or_else(|| {
        ApiError::invalid_request("Idempotency-Key must be 1-255 visible ASCII characters").field(IDEMPOTENCY_KEY)
    })
}

/// Seals `password` (when given) for the job, stores the job and wakes the agents; answers 202.
/// With an `Idempotency-Key`, a repeat of the same request answers with the original job and a
/// different request with the same key gets 409.
pub(super) async fn queue(
    state: &ApiState,
    client: &ApiClient,
    headers: &HeaderMap,
    body_sha256: [u8; 32],
    mut job: NewJob,
    password: Option<&SecretString>,
) -> Result<Accepted, ApiError> {
    if let Some(password) = password {
        job.sealed_secret =
            Some(state.sealer.seal(&job.id.to_string(), password).map_err(|e| ApiError::unavailable(&e))?);
    }
    queue_all(state, client, headers, body_sha256, vec![job]).await
}

/// Stores `jobs` (the first one is the one the client gets back: a single job, or a batch before
/// its children) in one transaction, honouring an `Idempotency-Key`; answers 202.
pub(super) async fn queue_all(
    state: &ApiState,
    client: &ApiClient,
    headers: &HeaderMap,
    body_sha256: [u8; 32],
    jobs: Vec<NewJob>,
) -> Result<Accepted, ApiError> {
    let key = idempotency_key(headers)?;
    let Some(first) = jobs.first() else { return Err(ApiError::invalid_request("nothing to do")) };
    let (id, kind, domain, count): (JobId, _, _, _) = (first.id, first.kind, first.domain.clone(), jobs.len());
    let created: Vec<_> = jobs.iter().map(|job| (job.id, job.kind, job.parent_id)).collect();
    let inserted = state
        .store
        .insert_jobs_once(jobs, key.map(|k| (k, state.sealer.fingerprint(&body_sha256))))
        .await
        .map_err(|e| ApiError::unavailable(&e))?;
    let mut reply_headers = HeaderMap::new();
    let id = match inserted {
        Insertion::Created => {
            state.events.job_queued();
            for (job, kind, parent) in created {
                state.metrics.job_accepted(kind, 1);
                let event = Event::new(Kind::JobCreated).client(&client.name).domain(&domain).job_of_kind(job, kind);
                state.audit.record(match parent {
                    Some(parent) => event.detail("batch_id", parent.to_string()),
                    None => event,
                });
            }
            tracing::info!(job_id = %id, kind = kind.as_str(), client = %client.name, %domain, jobs = count, "job queued");
            id
        }
        Insertion::Replayed(original) => {
            reply_headers.insert("idempotent-replayed", axum::http::HeaderValue::from_static("true"));
            original
        }
        Insertion::KeyConflict(original) => {
            return Err(ApiError::conflict(format!(
                "this Idempotency-Key was used for job {original} with a different request; use a new key"
            ))
            .field(IDEMPOTENCY_KEY)
            .job(original));
        }
    };
    let agent_connected = state.registry.serves(&domain).await;
    Ok((StatusCode::ACCEPTED, reply_headers, Json(JobAccepted { job_id: id, agent_connected })))
}
