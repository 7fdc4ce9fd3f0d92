-- Version 1 of the PostgreSQL schema: the SQLite schema at its version 7 (store/sqlite/schema.rs),
-- column for column. Times are milliseconds since the Unix epoch (BIGINT), ids are text.

CREATE TABLE jobs (
    id               TEXT PRIMARY KEY,
    kind             TEXT NOT NULL,
    domain           TEXT NOT NULL,
    target_kind      TEXT NOT NULL,
    target_value     TEXT NOT NULL,
    must_change      BOOLEAN NOT NULL,
    unlock           BOOLEAN NOT NULL,
    client           TEXT NOT NULL,
    state            TEXT NOT NULL,
    secret           BYTEA,            -- sealed (AES-256-GCM), NULL once the job is final
    created_ms       BIGINT NOT NULL,
    updated_ms       BIGINT NOT NULL,
    dispatched_ms    BIGINT,
    finished_ms      BIGINT,
    not_before_ms    BIGINT NOT NULL DEFAULT 0,
    lease_holder     TEXT,
    lease_expires_ms BIGINT,
    agent            TEXT,
    attempts         INTEGER NOT NULL DEFAULT 0,
    error_code       TEXT,
    error_message    TEXT,
    directory_code   TEXT,
    account_dn       TEXT,
    verified         BOOLEAN,
    pwd_last_set     BIGINT,
    enforce_history  BOOLEAN NOT NULL DEFAULT FALSE,
    generate_length  INTEGER,
    generate_mode    TEXT,
    recipient_key    BYTEA,
    password_matches BOOLEAN,
    account_state    TEXT,             -- JSON
    notes            TEXT,             -- JSON array
    result_secret    BYTEA,            -- sealed box, or sealed with the store key; NULL once read
    result_secret_encoding TEXT,
    secret_retrieved_ms BIGINT,
    parent_id        TEXT,
    account_key      TEXT,             -- domain/target_kind:value, lower case; NULL for batches
    taken_over       BOOLEAN NOT NULL DEFAULT FALSE  -- a claim took over a lapsed lease
);
CREATE INDEX jobs_claimable ON jobs (domain, state, created_ms);
CREATE INDEX jobs_lease_holder ON jobs (lease_holder);
CREATE INDEX jobs_client_id ON jobs (client, id);
CREATE INDEX jobs_parent ON jobs (parent_id, state);
CREATE INDEX jobs_account ON jobs (account_key, state, created_ms);

CREATE TABLE api_clients (
    name         TEXT PRIMARY KEY,
    token_sha256 BYTEA NOT NULL UNIQUE,
    created_ms   BIGINT NOT NULL,
    scopes       TEXT              -- JSON Scopes; NULL = everything
);

CREATE TABLE idempotency_keys (
    client      TEXT NOT NULL,
    key         TEXT NOT NULL,
    body_sha256 BYTEA NOT NULL,
    job_id      TEXT NOT NULL,
    created_ms  BIGINT NOT NULL,
    PRIMARY KEY (client, key)
);

CREATE TABLE webhooks (
    client     TEXT PRIMARY KEY REFERENCES api_clients (name) ON DELETE CASCADE,
    url        TEXT NOT NULL,
    events     TEXT NOT NULL,   -- JSON array of event names
    secret     BYTEA NOT NULL,  -- the signing secret, sealed with the store key
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);
CREATE TABLE webhook_deliveries (
    id              TEXT PRIMARY KEY,   -- the event id, stable across attempts
    client          TEXT NOT NULL,
    job_id          TEXT NOT NULL,
    event           TEXT NOT NULL,
    state           TEXT NOT NULL,      -- pending, delivered, failed
    attempts        INTEGER NOT NULL DEFAULT 0,
    created_ms      BIGINT NOT NULL,
    next_attempt_ms BIGINT NOT NULL,
    finished_ms     BIGINT,
    payload         TEXT,               -- the body, fixed by the first attempt
    error           TEXT,
    UNIQUE (job_id, event)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (state, next_attempt_ms);
CREATE INDEX webhook_deliveries_client ON webhook_deliveries (client, created_ms);
CREATE TABLE webhook_attempts (
    delivery_id TEXT NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt     INTEGER NOT NULL,
    at_ms       BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL,
    status      INTEGER,                -- the receiver's HTTP status; NULL without an answer
    error       TEXT,
    PRIMARY KEY (delivery_id, attempt)
);

-- The outbox: whichever statement makes a job final enqueues its event in the same transaction.
CREATE FUNCTION jobs_final_webhook() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_deliveries (id, client, job_id, event, state, created_ms, next_attempt_ms)
    SELECT 'evt_' || replace(gen_random_uuid()::text, '-', ''), w.client, NEW.id, 'job.' || NEW.state,
           'pending', NEW.updated_ms, NEW.updated_ms
      FROM webhooks w
     WHERE w.client = NEW.client
       AND EXISTS (SELECT 1 FROM jsonb_array_elements_text(w.events::jsonb) e WHERE e = 'job.' || NEW.state)
    ON CONFLICT (job_id, event) DO NOTHING;
    RETURN NULL;
END;
$$;
CREATE TRIGGER jobs_final_webhook AFTER UPDATE OF state ON jobs
    FOR EACH ROW
    WHEN (NEW.state IN ('succeeded', 'failed') AND OLD.state NOT IN ('succeeded', 'failed'))
    EXECUTE FUNCTION jobs_final_webhook();

CREATE TABLE lifecycle_requests (
    task_processing_result_id TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL,
    workflow_id      TEXT NOT NULL,
    task_id          TEXT NOT NULL,
    subject_id       TEXT NOT NULL,
    display_name     TEXT NOT NULL,
    workflow_name    TEXT NOT NULL,
    body_sha256      BYTEA NOT NULL,
    stage            TEXT NOT NULL,
    job_id           TEXT UNIQUE,
    delivery         TEXT,
    delivery_detail  TEXT,
    outcome          TEXT,
    outcome_reason   TEXT,
    resume_attempts  INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms  BIGINT NOT NULL DEFAULT 0,
    link_id          TEXT UNIQUE,
    link_proof       BYTEA,
    link_expires_ms  BIGINT,
    link_claimed_ms  BIGINT,
    link_views       INTEGER NOT NULL DEFAULT 0,
    created_ms       BIGINT NOT NULL,
    updated_ms       BIGINT NOT NULL
);
CREATE INDEX lifecycle_stage ON lifecycle_requests (stage, next_attempt_ms);
