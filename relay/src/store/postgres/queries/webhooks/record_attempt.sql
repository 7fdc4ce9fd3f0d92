-- One attempt of a delivery, in the log.
INSERT INTO webhook_attempts (delivery_id, attempt, at_ms, duration_ms, status, error)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (delivery_id, attempt) DO UPDATE SET at_ms = excluded.at_ms, duration_ms = excluded.duration_ms,
    status = excluded.status, error = excluded.error
