-- What follows an attempt of a pending delivery; the body is fixed by the first one.
UPDATE webhook_deliveries SET state = $2, attempts = coalesce($3, attempts),
       next_attempt_ms = coalesce($4, next_attempt_ms), finished_ms = $5, error = $6,
       payload = coalesce(payload, $7)
 WHERE id = $1 AND state = 'pending'
