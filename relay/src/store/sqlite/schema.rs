//! The SQLite schema: version 1 and the migrations after it, recorded in `PRAGMA user_version`.
//! Version 7 is PostgreSQL's `0001_schema.sql`, 8 its `0002_agents.sql`, 9 its `0003_replicas.sql`;
//! 10 is an index of SQLite's own (PostgreSQL settles batches by id); 11 is PostgreSQL's
//! `0004_enrollment.sql`, 12 its `0005_audit.sql`, 13 its `0006_claim_order.sql`, 14 its
//! `0007_open_job_indexes.sql` (the indexes of open jobs). Version 1 is created only in a new
//! database, so that a later migration can drop what it made.

/// Schema version written to `PRAGMA user_version`.
pub(super) const SCHEMA_VERSION: i64 = 14;

/// Statements that bring a database from version `n` to `n + 1`, in order (index 0: 1 → 2,
/// index 1: 2 → 3, ...).
pub(super) const MIGRATIONS: &[&str] = &[
    "
ALTER TABLE jobs ADD COLUMN enforce_history INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN generate_length INTEGER;
ALTER TABLE jobs ADD COLUMN generate_mode TEXT;
ALTER TABLE jobs ADD COLUMN recipient_key BLOB;
ALTER TABLE jobs ADD COLUMN password_matches INTEGER;
ALTER TABLE jobs ADD COLUMN account_state TEXT;   -- JSON
ALTER TABLE jobs ADD COLUMN notes TEXT;           -- JSON array
ALTER TABLE jobs ADD COLUMN result_secret BLOB;   -- sealed box, or sealed with the store key; NULL once read
ALTER TABLE jobs ADD COLUMN result_secret_encoding TEXT;
ALTER TABLE jobs ADD COLUMN secret_retrieved_ms INTEGER;
",
    "
ALTER TABLE api_clients ADD COLUMN scopes TEXT;   -- JSON Scopes; NULL = everything
CREATE TABLE IF NOT EXISTS idempotency_keys (
    client      TEXT NOT NULL,
    key         TEXT NOT NULL,
    body_sha256 BLOB NOT NULL,
    job_id      TEXT NOT NULL,
    created_ms  INTEGER NOT NULL,
    PRIMARY KEY (client, key)
);
CREATE INDEX IF NOT EXISTS jobs_client_id ON jobs (client, id);
",
    "
ALTER TABLE jobs ADD COLUMN parent_id TEXT;
CREATE INDEX IF NOT EXISTS jobs_parent ON jobs (parent_id, state);
",
    "
CREATE TABLE IF NOT EXISTS webhooks (
    client     TEXT PRIMARY KEY REFERENCES api_clients (name) ON DELETE CASCADE,
    url        TEXT NOT NULL,
    events     TEXT NOT NULL,   -- JSON array of event names
    secret     BLOB NOT NULL,   -- the signing secret, sealed with the store key
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id              TEXT PRIMARY KEY,   -- the event id, stable across attempts
    client          TEXT NOT NULL,
    job_id          TEXT NOT NULL,
    event           TEXT NOT NULL,
    state           TEXT NOT NULL,      -- pending, delivered, failed
    attempts        INTEGER NOT NULL DEFAULT 0,
    created_ms      INTEGER NOT NULL,
    next_attempt_ms INTEGER NOT NULL,
    finished_ms     INTEGER,
    payload         TEXT,               -- the body, fixed by the first attempt
    error           TEXT,
    UNIQUE (job_id, event)
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (state, next_attempt_ms);
CREATE INDEX IF NOT EXISTS webhook_deliveries_client ON webhook_deliveries (client, created_ms);
CREATE TABLE IF NOT EXISTS webhook_attempts (
    delivery_id TEXT NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt     INTEGER NOT NULL,
    at_ms       INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    status      INTEGER,                -- the receiver's HTTP status; NULL without an answer
    error       TEXT,
    PRIMARY KEY (delivery_id, attempt)
);
-- The outbox: whichever statement makes a job final enqueues its event in the same transaction.
CREATE TRIGGER IF NOT EXISTS jobs_final_webhook AFTER UPDATE OF state ON jobs
WHEN NEW.state IN ('succeeded', 'failed') AND OLD.state NOT IN ('succeeded', 'failed')
BEGIN
    INSERT OR IGNORE INTO webhook_deliveries (id, client, job_id, event, state, created_ms, next_attempt_ms)
    SELECT 'evt_' || lower(hex(randomblob(16))), w.client, NEW.id, 'job.' || NEW.state, 'pending',
           NEW.updated_ms, NEW.updated_ms
      FROM webhooks w
     WHERE w.client = NEW.client
       AND EXISTS (SELECT 1 FROM json_each(w.events) e WHERE e.value = 'job.' || NEW.state);
END;
",
    LIFECYCLE,
    "
ALTER TABLE jobs ADD COLUMN account_key TEXT;   -- domain/target_kind:value, lower case; NULL for batches
ALTER TABLE jobs ADD COLUMN taken_over INTEGER NOT NULL DEFAULT 0;  -- a claim took over a lapsed lease: an earlier attempt may have written
UPDATE jobs SET account_key = domain || '/' || target_kind || ':' || lower(target_value)
 WHERE kind != 'reconcile_batch';
CREATE INDEX IF NOT EXISTS jobs_account ON jobs (account_key, state, created_ms);
",
    AGENTS,
    REPLICAS,
    BATCH_INDEX,
    ENROLLMENT,
    AUDIT,
    CLAIM_ORDER,
    OPEN_JOB_INDEXES,
];

/// Enrollment tokens and the deny list of revoked agents (migration 10 → 11; PostgreSQL's
/// `0004_enrollment.sql`).
const ENROLLMENT: &str = "
CREATE TABLE IF NOT EXISTS enrollment_tokens (
    id            TEXT PRIMARY KEY,   -- hexadecimal: the token's id
    secret_sha256 BLOB NOT NULL,      -- the token's secret is never stored
    agent         TEXT NOT NULL,      -- the name the certificate will carry
    domains       TEXT NOT NULL,      -- JSON array: the domains it will carry
    created_ms    INTEGER NOT NULL,
    expires_ms    INTEGER NOT NULL,
    used_ms       INTEGER,            -- set once, by the enrollment that used it
    used_by       TEXT                -- the address that used it
);
CREATE TABLE IF NOT EXISTS agent_revocations (
    agent      TEXT PRIMARY KEY,
    revoked_ms INTEGER NOT NULL       -- the agent's certificates issued before this are refused
);
";

/// The audit trail (migration 11 → 12; PostgreSQL's `0005_audit.sql`).
const AUDIT: &str = "
CREATE TABLE IF NOT EXISTS audit_events (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms    INTEGER NOT NULL,
    event_id INTEGER NOT NULL,   -- the stable id (docs/audit-events.md)
    event    TEXT NOT NULL,      -- the stable name
    replica  TEXT NOT NULL,      -- the replica that recorded it, or 'cli'
    client   TEXT,
    agent    TEXT,
    domain   TEXT,
    job_id   TEXT,
    address  TEXT,
    details  TEXT NOT NULL       -- JSON object
);
CREATE INDEX IF NOT EXISTS audit_events_at ON audit_events (at_ms);
CREATE INDEX IF NOT EXISTS audit_events_job ON audit_events (job_id) WHERE job_id IS NOT NULL;
";

/// The claimable jobs in claim order (migration 12 → 13; PostgreSQL's `0006_claim_order.sql`). A
/// claim walks the queued and the lapsed jobs of a domain by `(created_ms, id)` and stops at its
/// limit; `jobs_claimable` lacks the id, so jobs accepted in the same millisecond (every child of
/// a reconciliation) had to be sorted first, all of them.
const CLAIM_ORDER: &str = "
CREATE INDEX IF NOT EXISTS jobs_claim_order ON jobs (domain, state, created_ms, id);
";

/// The indexes of open jobs (migration 13 → 14; PostgreSQL's `0007_open_job_indexes.sql`). The
/// claim order and the accounts are searched for queued and dispatched jobs only, so their indexes
/// hold only those: a job that becomes final leaves them instead of moving within them, and they
/// stay the size of the backlog, not of every job kept. The condition is written as an `OR`
/// because SQLite proves that a query's `state = 'queued'` implies `state = 'queued' OR ...`, not
/// that it implies an `IN` list; the queries that use these indexes name a state, or this same
/// `OR`. The leases are found by holder (a revocation) among dispatched jobs only, by a range on
/// the holder. `jobs_claimable` goes: it is a prefix of `jobs_claim_order` that nothing searched,
/// as `0006_claim_order.sql` dropped it.
const OPEN_JOB_INDEXES: &str = "
DROP INDEX IF EXISTS jobs_claimable;
DROP INDEX IF EXISTS jobs_claim_order;
CREATE INDEX jobs_claim_order ON jobs (domain, state, created_ms, id)
 WHERE state = 'queued' OR state = 'dispatched';
DROP INDEX IF EXISTS jobs_account;
CREATE INDEX jobs_account ON jobs (account_key, state, created_ms)
 WHERE state = 'queued' OR state = 'dispatched';
DROP INDEX IF EXISTS jobs_lease_holder;
CREATE INDEX jobs_leased ON jobs (lease_holder) WHERE state = 'dispatched';
";

/// The batches by state (migration 9 → 10). Every transaction that can change a child's state
/// settles the open batches (`SETTLE_BATCHES` in `jobs.rs`); without this index each such
/// statement read every row of `jobs`, so a claim and a result cost time in proportion to all the
/// jobs kept. With it they read the open batches only.
const BATCH_INDEX: &str = "
CREATE INDEX IF NOT EXISTS jobs_batch_state ON jobs (state) WHERE kind = 'reconcile_batch';
";

/// Several relay replicas on one database (migration 8 → 9; PostgreSQL's `0003_replicas.sql`).
/// An SQLite store has one process, so its claims are trivially its own, but it keeps the same
/// columns and the same rules.
const REPLICAS: &str = "
CREATE TABLE IF NOT EXISTS replicas (
    id           TEXT PRIMARY KEY,
    started_ms   INTEGER NOT NULL,
    heartbeat_ms INTEGER NOT NULL
);
ALTER TABLE jobs ADD COLUMN finished_by TEXT;                   -- the replica that recorded the final result
ALTER TABLE webhook_deliveries ADD COLUMN claimed_by TEXT;
ALTER TABLE webhook_deliveries ADD COLUMN claimed_until_ms INTEGER;
ALTER TABLE lifecycle_requests ADD COLUMN claimed_by TEXT;
ALTER TABLE lifecycle_requests ADD COLUMN claimed_until_ms INTEGER;
ALTER TABLE lifecycle_requests ADD COLUMN key_replica TEXT;     -- the replica delivering the link
ALTER TABLE lifecycle_requests ADD COLUMN reissues INTEGER NOT NULL DEFAULT 0;
ALTER TABLE lifecycle_requests ADD COLUMN link_window_ms INTEGER;  -- the per-link rate limit's window
ALTER TABLE lifecycle_requests ADD COLUMN link_requests INTEGER NOT NULL DEFAULT 0;
";

/// Version 1, which every database starts from.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id               TEXT PRIMARY KEY,
    kind             TEXT NOT NULL,
    domain           TEXT NOT NULL,
    target_kind      TEXT NOT NULL,
    target_value     TEXT NOT NULL,
    must_change      INTEGER NOT NULL,
    unlock           INTEGER NOT NULL,
    client           TEXT NOT NULL,
    state            TEXT NOT NULL,
    secret           BLOB,            -- sealed (AES-256-GCM), NULL once the job is final
    created_ms       INTEGER NOT NULL,
    updated_ms       INTEGER NOT NULL,
    dispatched_ms    INTEGER,
    finished_ms      INTEGER,
    not_before_ms    INTEGER NOT NULL DEFAULT 0,
    lease_holder     TEXT,
    lease_expires_ms INTEGER,
    agent            TEXT,
    attempts         INTEGER NOT NULL DEFAULT 0,
    error_code       TEXT,
    error_message    TEXT,
    directory_code   TEXT,
    account_dn       TEXT,
    verified         INTEGER,
    pwd_last_set     INTEGER
);
CREATE INDEX IF NOT EXISTS jobs_claimable ON jobs (domain, state, created_ms);
CREATE INDEX IF NOT EXISTS jobs_lease_holder ON jobs (lease_holder);
CREATE TABLE IF NOT EXISTS api_clients (
    name         TEXT PRIMARY KEY,
    token_sha256 BLOB NOT NULL UNIQUE,
    created_ms   INTEGER NOT NULL
);
";

/// The known agents (migration 7 → 8; PostgreSQL's `0002_agents.sql`).
const AGENTS: &str = "
CREATE TABLE IF NOT EXISTS agents (
    name            TEXT PRIMARY KEY,          -- from the agent's certificate
    domains         TEXT NOT NULL,             -- JSON array: the domains its last stream serves
    version         TEXT NOT NULL,
    cert_serial     TEXT NOT NULL,             -- hexadecimal
    cert_expires_ms INTEGER NOT NULL,
    first_seen_ms   INTEGER NOT NULL,
    last_seen_ms    INTEGER NOT NULL,
    connected       INTEGER NOT NULL,          -- 1 while the stream below is open
    replica         TEXT NOT NULL,             -- the relay replica of its last stream
    stream          TEXT NOT NULL,             -- that stream's id
    peer            TEXT,                      -- address:port it connected from
    opened_ms       INTEGER NOT NULL,          -- when that stream opened
    directories     TEXT NOT NULL DEFAULT '[]', -- JSON: the DC health of its last heartbeat
    jobs_in_flight  INTEGER NOT NULL DEFAULT 0,
    jobs_done       INTEGER NOT NULL DEFAULT 0,
    jobs_failed     INTEGER NOT NULL DEFAULT 0
);
";

/// The new-hire tables (migration 5 → 6).
const LIFECYCLE: &str = "
CREATE TABLE IF NOT EXISTS lifecycle_requests (
    task_processing_result_id TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL,
    workflow_id      TEXT NOT NULL,
    task_id          TEXT NOT NULL,
    subject_id       TEXT NOT NULL,
    display_name     TEXT NOT NULL,
    workflow_name    TEXT NOT NULL,
    body_sha256      BLOB NOT NULL,
    stage            TEXT NOT NULL,
    job_id           TEXT UNIQUE,
    delivery         TEXT,
    delivery_detail  TEXT,
    outcome          TEXT,
    outcome_reason   TEXT,
    resume_attempts  INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms  INTEGER NOT NULL DEFAULT 0,
    link_id          TEXT UNIQUE,
    link_proof       BLOB,
    link_expires_ms  INTEGER,
    link_claimed_ms  INTEGER,
    link_views       INTEGER NOT NULL DEFAULT 0,
    created_ms       INTEGER NOT NULL,
    updated_ms       INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS lifecycle_stage ON lifecycle_requests (stage, next_attempt_ms);
";
