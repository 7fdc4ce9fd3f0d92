-- Takes a client's idempotency key for a new job; nothing when it was taken before (a concurrent
-- insert with the same key waits for the first to commit).
INSERT INTO idempotency_keys (client, key, body_sha256, job_id, created_ms) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (client, key) DO NOTHING
