-- Several relay replicas on one database (SQLite version 9 mirrors the tables; the notifications
-- exist only here, since an SQLite store has one process).

-- Every running relay process, with a heartbeat: a replica whose heartbeat is older than
-- store::replicas::DEAD_AFTER is dead, and the work it held in memory is re-issued.
CREATE TABLE replicas (
    id           TEXT PRIMARY KEY,
    started_ms   BIGINT NOT NULL,
    heartbeat_ms BIGINT NOT NULL
);

-- The replica that recorded a job's final result: an initial password's link key is in its memory.
ALTER TABLE jobs ADD COLUMN finished_by TEXT;

-- The outbox is claimed: one replica sends a delivery, until its claim expires.
ALTER TABLE webhook_deliveries ADD COLUMN claimed_by TEXT;
ALTER TABLE webhook_deliveries ADD COLUMN claimed_until_ms BIGINT;

-- New-hire requests are claimed too; key_replica is the replica delivering the link (set when it
-- opens the link; only it finishes the delivery while it is alive); reissues counts fresh jobs made
-- after the replica holding the key died (at most one).
ALTER TABLE lifecycle_requests ADD COLUMN claimed_by TEXT;
ALTER TABLE lifecycle_requests ADD COLUMN claimed_until_ms BIGINT;
ALTER TABLE lifecycle_requests ADD COLUMN key_replica TEXT;
ALTER TABLE lifecycle_requests ADD COLUMN reissues INTEGER NOT NULL DEFAULT 0;
-- The per-link rate limit, counted here so that it holds across replicas: requests in the
-- window that started at link_window_ms.
ALTER TABLE lifecycle_requests ADD COLUMN link_window_ms BIGINT;
ALTER TABLE lifecycle_requests ADD COLUMN link_requests INTEGER NOT NULL DEFAULT 0;

-- Wake-ups across replicas: every change of a job's state is announced on the channel
-- pwrelay_jobs ('queued': a job may have become claimable, 'changed': a job changed). NOTIFY is
-- sent at commit and folds repeats within a transaction, so a batch insert sends one of each.
CREATE FUNCTION jobs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- A final job frees the next job of its account, so it counts as 'queued' too.
    IF NEW.state IN ('queued', 'succeeded', 'failed') THEN
        PERFORM pg_notify('pwrelay_jobs', 'queued');
    END IF;
    PERFORM pg_notify('pwrelay_jobs', 'changed');
    RETURN NULL;
END;
$$;
CREATE TRIGGER jobs_notify AFTER INSERT OR UPDATE OF state ON jobs
    FOR EACH ROW EXECUTE FUNCTION jobs_notify();
