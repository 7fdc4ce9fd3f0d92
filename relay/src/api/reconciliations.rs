//! `POST /v1/reconciliations`: reset a list of accounts to their seed-derived values. The request
//! becomes one batch job with a child job per account; the batch's `progress` counts them and it
//! ends when they all have.
//!
//! JSON `{"domain", "targets": [{"upn": ...}, ...], "unlock"?}`, or a CSV upload
//! (`Content-Type: text/csv`, `?domain=`) whose header row has a `upn` column.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::auth::Authenticated;
use super::error::{ApiError, SubmitErrors};
use super::submit::{Accepted, IdempotencyKey, JobAccepted, TargetRequest, authorize, queue_all, served_domain};
use super::{ApiState, json_body};
use crate::jobs::{JobId, JobKind, JobOptions, NewJob, Target};
use crate::store::Operation;

/// Most accounts one batch may name.
pub(super) const MAX_BATCH: usize = 1000;

/// A reconciliation as JSON: the accounts to reset to their seed-derived values.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ReconciliationRequest {
    /// The AD DNS domain; one of the relay's `domains`.
    #[schema(example = "corp.example.com")]
    domain: String,
    /// The accounts, 1-1000.
    #[schema(min_items = 1, max_items = 1000)]
    targets: Vec<TargetRequest>,
    /// Also clear each account's lockout.
    #[serde(default)]
    unlock: bool,
}

/// The query of a CSV upload (ignored for a JSON body).
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct CsvQuery {
    /// With `Content-Type: text/csv`, required: the AD DNS domain of the accounts.
    domain: Option<String>,
    /// With `Content-Type: text/csv`: also clear each account's lockout.
    #[serde(default)]
    unlock: bool,
}

/// Queue a reconciliation
///
/// Resets accounts to their seed-derived (PAM-known) values: a JSON body, or a CSV upload
/// (`Content-Type: text/csv`, `?domain=`) whose header row has a `upn` column; up to 1,000
/// accounts. The answer is a batch job whose `progress` counts its per-account jobs (each has the
/// batch's id as `parent_id`).
#[utoipa::path(
    post,
    path = "/v1/reconciliations",
    operation_id = "create_reconciliation",
    tag = "jobs",
    request_body(content(
        (ReconciliationRequest = "application/json"),
        (String = "text/csv", example = json!("upn\njane.doe@corp.example.com\njohn.roe@corp.example.com\n")),
    )),
    params(CsvQuery, IdempotencyKey),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "the batch and its jobs are on disk and queued", body = JobAccepted,
            headers(("Idempotent-Replayed" = String, description = "`true` when this is the original job of a repeated Idempotency-Key"))),
        SubmitErrors,
    ),
)]
pub(super) async fn create(
    State(state): State<Arc<ApiState>>,
    Authenticated(client): Authenticated,
    query: Result<Query<CsvQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Accepted, ApiError> {
    let is_csv = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().to_ascii_lowercase().starts_with("text/csv"));
    let (domain, targets, unlock, sha256) = if is_csv {
        let Query(query) = query.map_err(|e| ApiError::invalid_request(format!("{e}; parameters: domain, unlock")))?;
        let domain = query
            .domain
            .ok_or_else(|| ApiError::invalid_request("a CSV upload needs ?domain=AD_DOMAIN").field("domain"))?;
        let bytes = axum::body::to_bytes(body, state.max_body_bytes.max(MAX_BATCH * 300))
            .await
            .map_err(|_| ApiError::too_large(state.max_body_bytes.max(MAX_BATCH * 300)))?;
        let sha256 = sha2::Digest::finalize(sha2::Digest::chain_update(sha2::Sha256::default(), &bytes)).into();
        let text = std::str::from_utf8(&bytes).map_err(|_| ApiError::invalid_request("the CSV is not UTF-8"))?;
        let upns = csv_upns(text)?;
        (domain, upns.into_iter().map(Target::Upn).collect::<Vec<_>>(), query.unlock, sha256)
    } else {
        let parsed =
            json_body::<ReconciliationRequest>(&headers, body, state.max_body_bytes.max(MAX_BATCH * 300)).await?;
        let request = parsed.value;
        let targets = request
            .targets
            .into_iter()
            .enumerate()
            .map(|(i, t)| t.validate(&format!("targets[{i}]")).map_err(|e| e.prefixed(&format!("targets[{i}]: "))))
            .collect::<Result<Vec<_>, _>>()?;
        (request.domain, targets, request.unlock, parsed.sha256)
    };
    let domain = served_domain(&state, &domain)?;
    authorize(&client, Operation::Reconcile, &domain)?;
    if targets.is_empty() {
        return Err(ApiError::invalid_request("name at least one account").field("targets"));
    }
    if targets.len() > MAX_BATCH {
        return Err(
            ApiError::invalid_request(format!("at most {MAX_BATCH} accounts per reconciliation")).field("targets")
        );
    }
    let options = JobOptions { unlock, ..JobOptions::default() };
    let batch = NewJob {
        id: JobId::generate(),
        kind: JobKind::ReconcileBatch,
        domain: domain.clone(),
        target: Target::Dn(format!("{} accounts", targets.len())),
        options,
        client: client.name.clone(),
        sealed_secret: None,
        generate: None,
        recipient_key: None,
        parent_id: None,
    };
    let parent = batch.id;
    let mut jobs = vec![batch];
    jobs.extend(targets.into_iter().map(|target| NewJob {
        id: JobId::generate(),
        kind: JobKind::Reconcile,
        domain: domain.clone(),
        target,
        options,
        client: client.name.clone(),
        sealed_secret: None,
        generate: None,
        recipient_key: None,
        parent_id: Some(parent),
    }));
    queue_all(&state, &client, &headers, sha256, jobs).await
}

/// The `upn` column of a CSV text (header row first; quoted fields allowed).
fn csv_upns(text: &str) -> Result<Vec<String>, ApiError> {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let header = lines.next().ok_or_else(|| ApiError::invalid_request("the CSV is empty"))?;
    let column = fields(header)
        .iter()
        .position(|f| f.trim_start_matches('\u{feff}').eq_ignore_ascii_case("upn"))
        .ok_or_else(|| ApiError::invalid_request("the CSV header has no upn column"))?;
    lines
        .enumerate()
        .map(|(i, line)| {
            let value = fields(line).into_iter().nth(column).unwrap_or_default();
            if value.is_empty() || !value.contains('@') {
                Err(ApiError::invalid_request(format!("CSV line {}: the upn must look like user@domain", i + 2)))
            } else {
                Ok(value)
            }
        })
        .collect()
}

/// Splits one CSV line on commas, honouring double quotes.
fn fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                if let Some(field) = fields.last_mut() {
                    field.push('"');
                }
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(String::new()),
            (c, _) => {
                if let Some(field) = fields.last_mut() {
                    field.push(c);
                }
            }
        }
    }
    fields.into_iter().map(|f| f.trim().to_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_upns_are_read_from_their_column() {
        let csv = "\u{feff}name,UPN\n\"Doe, Jane\",jane@corp.test\nBob,bob@corp.test\n";
        assert_eq!(csv_upns(csv).expect("valid"), ["jane@corp.test", "bob@corp.test"]);
        assert!(csv_upns("name\nx\n").is_err());
        assert!(csv_upns("upn\nnot-an-upn\n").is_err());
        assert!(csv_upns("").is_err());
    }
}
