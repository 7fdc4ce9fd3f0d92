//! `POST /v1/reconciliations`: reset a list of accounts to their seed-derived values. The request
//! becomes one batch job with a child job per account; the batch's `progress` counts them and it
//! ends when they all have.
//!
//! JSON `{"domain", "targets": [{"upn": ...}, ...], "unlock"?}`, or a CSV upload
//! (`Content-Type: text/csv`, `?domain=`) whose header row has a `upn` column. The CSV is read
//! with the `csv` crate (quoted fields, embedded separators and quotes, `,` `;` or tab as the
//! separator, as spreadsheet exports write them, a UTF-8 byte order mark), and each of its UPNs
//! is checked exactly like a JSON target.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use pwrelay_shared::domain::DomainName;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::auth::Authenticated;
use super::body::read_body;
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
    /// The AD DNS domain: one of the relay's `domains` that the client's scopes cover (the operator
    /// knows them; `GET /readyz` with a token lists them). Any other domain is refused with 422
    /// `invalid_request` (`details.field` = `domain`), whose message lists the ones the client may use.
    #[schema(
        example = "corp.example.com",
        max_length = 253,
        pattern = r"^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?$"
    )]
    domain: String,
    /// The accounts, 1-1000.
    #[schema(min_items = 1, max_items = 1000)]
    targets: Vec<TargetRequest>,
    /// Also clear each account's lockout.
    #[serde(default)]
    unlock: bool,
}

/// The query of a CSV upload (checked for a JSON body too, and not used: the body has both).
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct CsvQuery {
    /// With `Content-Type: text/csv`, required: the AD DNS domain of the accounts (as a JSON
    /// body's `domain`). OpenAPI cannot make a query parameter required for one content type only.
    #[param(
        max_length = 253,
        pattern = r"^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?$"
    )]
    domain: Option<String>,
    /// With `Content-Type: text/csv`: also clear each account's lockout.
    #[serde(default)]
    unlock: bool,
}

/// The body of a CSV upload as the document states it: a header row that is just `upn`, then one
/// UPN per row (1-1000). The server reads more than this (other columns, quoted fields, `;` or tab
/// separators, blank rows, as spreadsheets write them); the pattern is the plain form every
/// client can send.
pub(super) enum CsvUpload {}

impl utoipa::PartialSchema for CsvUpload {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some(
                "A header row with a `upn` column (any case; other columns are ignored; `,`, `;` or tab separated; \
                 an optional UTF-8 byte order mark), then one account per row: a UPN with an `@`, at most 1024 \
                 characters, no control characters. Needs `?domain=`.",
            ))
            .pattern(Some(
                r#"^\ufeff?[Uu][Pp][Nn]\r?\n([^\u0000-\u0020\u007f-\u009f,;"@]+@[^\u0000-\u0020\u007f-\u009f,;"]+\r?\n){1,1000}$"#,
            ))
            .into()
    }
}

impl ToSchema for CsvUpload {}

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
        (inline(CsvUpload) = "text/csv", example = json!("upn\njane.doe@corp.example.com\njohn.roe@corp.example.com\n")),
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
    // Checked for either body, so a malformed query is never silently ignored.
    let Query(query) = query.map_err(|e| ApiError::query(&e, "domain, unlock"))?;
    if query.domain.as_deref().is_some_and(|d| DomainName::parse(d).is_err()) {
        return Err(ApiError::invalid_request("domain must be a DNS name like corp.example.com").field("domain"));
    }
    let (domain, targets, unlock, sha256) = if is_csv {
        let domain = query
            .domain
            .ok_or_else(|| ApiError::invalid_request("a CSV upload needs ?domain=AD_DOMAIN").field("domain"))?;
        let bytes = read_body(body, state.max_body_bytes.max(MAX_BATCH * 300)).await?;
        let sha256 = sha2::Digest::finalize(sha2::Digest::chain_update(sha2::Sha256::default(), &bytes)).into();
        (domain, csv_targets(&bytes)?, query.unlock, sha256)
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
    let domain = served_domain(&state, &client, &domain)?;
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

/// The accounts of a CSV upload: its header row names a `upn` column (any case); every other
/// row is one account, checked as a JSON target is (`targets[i].upn` names the row at fault,
/// `i` counting from the first row after the header).
fn csv_targets(bytes: &[u8]) -> Result<Vec<Target>, ApiError> {
    let text = std::str::from_utf8(bytes).map_err(|_| ApiError::invalid_request("the CSV is not UTF-8"))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(separator(text))
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let header = reader.headers().map_err(|_| ApiError::invalid_request("the CSV header row cannot be read"))?;
    if header.iter().all(str::is_empty) {
        return Err(ApiError::invalid_request("the CSV is empty"));
    }
    let column = header
        .iter()
        .position(|name| name.eq_ignore_ascii_case("upn"))
        .ok_or_else(|| ApiError::invalid_request("the CSV header has no upn column"))?;
    let mut targets = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let line = i + 2;
        let record = record
            .map_err(|_| ApiError::invalid_request(format!("CSV line {line} cannot be read")).field("targets"))?;
        if record.iter().all(str::is_empty) {
            continue;
        }
        if targets.len() == MAX_BATCH {
            return Err(
                ApiError::invalid_request(format!("at most {MAX_BATCH} accounts per reconciliation")).field("targets")
            );
        }
        let at = format!("targets[{}]", targets.len());
        let upn = record.get(column).unwrap_or_default().to_owned();
        let target = TargetRequest::upn(upn).validate(&at).map_err(|e| e.prefixed(&format!("CSV line {line}: ")))?;
        targets.push(target);
    }
    Ok(targets)
}

/// The separator of a CSV text: whichever of `,` `;` and tab its header row has most of outside
/// quotes (`;` is what spreadsheets write where `,` is the decimal mark).
fn separator(text: &str) -> u8 {
    let header = text.lines().next().unwrap_or_default();
    let mut quoted = false;
    let mut counts = [(b',', 0usize), (b';', 0), (b'\t', 0)];
    for byte in header.bytes() {
        match byte {
            b'"' => quoted = !quoted,
            _ if quoted => {}
            other => {
                if let Some(entry) = counts.iter_mut().find(|(separator, _)| *separator == other) {
                    entry.1 += 1;
                }
            }
        }
    }
    // Ties (a one-column file) go to the first: `,`.
    counts.iter().fold((b',', 0), |best, &(separator, n)| if n > best.1 { (separator, n) } else { best }).0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upns(csv: &str) -> Result<Vec<String>, ApiError> {
        csv_targets(csv.as_bytes()).map(|targets| targets.iter().map(Target::value).collect())
    }

    #[test]
    fn csv_upns_are_read_from_their_column() {
        let csv = "\u{feff}name,UPN\n\"Doe, Jane\",jane@corp.test\nBob,bob@corp.test\n\n";
        assert_eq!(upns(csv).expect("valid"), ["jane@corp.test", "bob@corp.test"]);
        let semicolons =
            "\u{feff}\"Name\";\"UPN\";\"Note\"\r\n\"Doe; Jane\";\"jane@corp.test\";\"said \"\"hi\"\"\"\r\n";
        assert_eq!(upns(semicolons).expect("valid"), ["jane@corp.test"]);
        assert_eq!(upns("upn\tname\njane@corp.test\tJane\n").expect("tabs"), ["jane@corp.test"]);
        assert_eq!(upns("upn\njane@corp.test\n").expect("one column"), ["jane@corp.test"]);
        assert!(upns("name\nx\n").is_err());
        assert!(upns("").is_err());
    }

    #[test]
    fn csv_targets_are_checked_like_json_ones() {
        let refused = |csv: String| {
            let error = upns(&csv).expect_err("refused");
            assert_eq!(error.code(), super::super::error::ApiErrorCode::InvalidRequest, "{csv:?}");
            error
        };
        refused("upn\nnot-an-upn\n".into());
        refused("upn\n\"a\u{0}b@corp.test\"\n".into());
        refused("upn\n\"a\u{1b}[2Kb@corp.test\"\n".into());
        let long = refused(format!("upn\nok@corp.test\n{}@corp.test\n", "x".repeat(10_000)));
        assert!(long.message().starts_with("CSV line 3: ") && long.message().len() < 200, "{}", long.message());
        let many: String =
            std::iter::once("upn\n".to_owned()).chain((0..=MAX_BATCH).map(|i| format!("u{i}@corp.test\n"))).collect();
        refused(many);
    }
}
