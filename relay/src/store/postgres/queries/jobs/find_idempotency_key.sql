-- The job an idempotency key of a client refers to, and the body it was first used with.
SELECT body_sha256, job_id FROM idempotency_keys WHERE client = $1 AND key = $2
