-- Forgets idempotency keys taken before $1 (jobs.idempotency_hours).
DELETE FROM idempotency_keys WHERE created_ms < $1
