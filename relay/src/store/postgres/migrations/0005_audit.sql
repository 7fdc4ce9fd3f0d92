-- The audit trail (SQLite version 12): every replica's events, in the order they were stored.
-- Deleted after audit.retention_days by the sweeper.
CREATE TABLE audit_events (
    seq      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at_ms    BIGINT NOT NULL,
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
CREATE INDEX audit_events_at ON audit_events (at_ms);
CREATE INDEX audit_events_job ON audit_events (job_id) WHERE job_id IS NOT NULL;
